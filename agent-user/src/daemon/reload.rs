//! The policy in force: loaded at start, reloaded on SIGHUP or when a file
//! changes, put in force only if every file and every session compiles.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context;

use super::{handlers::install_grant, shared::Shared};
use crate::{
    engine::Engine,
    policy::{self, PolicySet},
};

/// Where policies come from when `--policy` is not given.
pub fn default_paths() -> Vec<PathBuf> {
    let etc = PathBuf::from("/etc/agentgate/policies");
    if etc.is_dir() {
        return vec![etc];
    }
    vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")]
}

/// Loads and checks the policy files: every error, with its place.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Arc<PolicySet>> {
    policy::load(paths).map(Arc::new).map_err(|diags| {
        let all: Vec<String> = diags.iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "{} error(s) in the policy ({}):\n  {}",
            all.len(),
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            all.join("\n  ")
        )
    })
}

/// Reloads on SIGHUP and when a policy file changes (polled: editors
/// replace files in ways inotify watches miss).
pub async fn watch(shared: Arc<Shared>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        log::error!("cannot watch SIGHUP: policy reloads only on file change");
        return;
    };
    let paths = &shared.facts.policy_paths;
    let mut seen = stamp(paths);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        let why = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = tick.tick() => {
                let now = stamp(paths);
                if now == seen {
                    continue;
                }
                seen = now;
                "a policy file changed"
            }
        };
        match reload(&shared) {
            Ok(n) => log::info!("policy reloaded ({why}): in force for {n} session(s)"),
            Err(e) => log::error!(
                "policy reload ({why}) refused, the previous policy stays in force: {e:#}"
            ),
        }
    }
}

/// Names and modification times of the policy files, to notice changes.
fn stamp(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut out = Vec::new();
    for p in paths {
        let entries: Vec<PathBuf> = if p.is_dir() {
            std::fs::read_dir(p)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default()
        } else {
            vec![p.clone()]
        };
        for e in entries {
            let mtime = std::fs::metadata(&e).and_then(|m| m.modified()).ok();
            out.push((e, mtime));
        }
    }
    out.sort();
    out
}

/// Checks the policy files and, only if every file and every session's
/// compilation is good, puts the new policy in force everywhere at once.
/// The files are read outside the lock; compiling and installing happen
/// under it, so that no session opens or ends half-way.
fn reload(shared: &Shared) -> anyhow::Result<usize> {
    let set = load(&shared.facts.policy_paths)?;
    let mut guard = shared.lock();
    let st = &mut *guard;
    let mut compiled = Vec::new();
    for s in st.registry.iter() {
        let what = || format!("session {} (profile {})", s.id, s.ctx.profile);
        let c = policy::compile_session(&set, &s.ctx).with_context(what)?;
        let tools = policy::compile_tools(&set, &s.ctx).with_context(what)?;
        compiled.push((s.id, s.spec.parent, c, tools));
    }
    let old = st.engine.policy().clone();
    st.enforcer
        .use_labels(&label_names(&set))
        .context("giving the policy's labels their kernel bits")?;
    for (id, parent, c, tools) in &compiled {
        if let Err(e) = st
            .enforcer
            .install(*id, &c.kernel, &policy::kernel_tools(tools), *parent)
        {
            let _ = st.enforcer.use_labels(&label_names(&old));
            return Err(e).with_context(|| format!("session {id}: installing its rules"));
        }
    }
    let mut compiled: std::collections::HashMap<_, _> = compiled
        .into_iter()
        .map(|(id, _, c, t)| (id, (c, t)))
        .collect();
    for s in st.registry.iter_mut() {
        if let Some((c, t)) = compiled.remove(&s.id) {
            s.compiled = c;
            s.tools = t;
        }
        // The kernel's masks keep their bits (`Enforcer::use_labels`): only
        // the daemon's own record is renumbered.
        s.history = s.history.carry_over(&old, &set);
    }
    for g in st.referrals.grants() {
        install_grant(&st.registry, &mut st.enforcer, g)
            .with_context(|| format!("session {}: re-installing grant {}", g.session, g.id))?;
    }
    st.engine = Arc::new(Engine::new(set));
    st.persist(&shared.facts);
    Ok(st.registry.len())
}

/// The policy's label names in bit order.
fn label_names(set: &PolicySet) -> Vec<String> {
    set.labels().iter().map(|(n, _)| n.to_owned()).collect()
}
