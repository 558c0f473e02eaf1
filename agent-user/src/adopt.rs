//! A daemon that starts where an earlier one left pins takes over its
//! sessions: the saved registry says what each session is, the kernel's
//! maps say which processes are still in it and which labels it has earned.
//! Sessions are compiled again against the current policy and put back in
//! force before the control socket opens.
use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use agent_common::{ProcTag, SessionId, SessionPolicy};
use anyhow::Context;
use aya::maps::{HashMap as BpfHashMap, Map, MapData};

use crate::{
    enforce::Enforcer,
    engine::SessionHistory,
    loader::Loaded,
    pins::Generation,
    policy::{self, PolicySet},
    sessions::{Drift, Ended, Registry, Session},
    state::{self, Saved},
};

type Tags = BpfHashMap<MapData, u32, ProcTag>;

/// The saved registry, read before anything is loaded. A file that cannot be
/// read stops the start: the pinned programs keep enforcing the sessions'
/// last rules meanwhile.
pub fn saved_sessions(state_dir: &Path) -> anyhow::Result<Option<Saved>> {
    state::load(state_dir).context(
        "reading the saved sessions (the pinned programs keep enforcing their last rules \
         meanwhile; fix the file or move it aside to start without those sessions: their \
         processes then keep their last rules until `agentgate unload`)",
    )
}

fn pinned_hash<K: aya::Pod, V: aya::Pod>(
    g: &Generation,
    name: &str,
) -> anyhow::Result<BpfHashMap<MapData, K, V>> {
    let path = g.map(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    BpfHashMap::try_from(Map::HashMap(data))
        .with_context(|| format!("{}: its layout differs from this version's", path.display()))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// What the kernel still knows of the sessions.
#[derive(Default)]
struct KernelState {
    /// Tags of live processes.
    tags: Vec<(u32, ProcTag)>,
    labels: HashMap<SessionId, u64>,
}

impl KernelState {
    fn sessions(&self) -> HashSet<SessionId> {
        self.tags.iter().map(|(_, t)| t.session).collect()
    }

    fn read_tags(&mut self, tags: &Tags) {
        self.tags.extend(
            tags.iter()
                .filter_map(Result::ok)
                .filter(|(pid, _)| alive(*pid)),
        );
    }

    fn read_previous(&mut self, g: &Generation) -> anyhow::Result<()> {
        self.read_tags(&pinned_hash(g, "TAGS")?);
        let labels: BpfHashMap<MapData, SessionId, u64> = pinned_hash(g, "SESSION_LABELS")?;
        for (id, l) in labels.iter().filter_map(Result::ok) {
            *self.labels.entry(id).or_default() |= l;
        }
        // The labels its daemon decided, where its policy values have this
        // version's layout (older objects kept them in SESSION_LABELS).
        if let Ok(policy) = pinned_hash::<SessionId, SessionPolicy>(g, "SESSION_POLICY") {
            for (id, p) in policy.iter().filter_map(Result::ok) {
                *self.labels.entry(id).or_default() |= p.labels;
            }
        }
        Ok(())
    }
}

/// Copies the live tags of the earlier generations into `tags`, pass after
/// pass until one finds nothing new. A process forked during a pass by a
/// parent not yet copied is tagged in the old map only; once a pass copies
/// nothing, every tagged process is in the new map, and the new programs tag
/// whatever they fork from then on.
fn carry_tags(from: &[&Generation], tags: &mut Tags) -> anyhow::Result<usize> {
    let mut carried = 0;
    for _ in 0..16 {
        let mut old = KernelState::default();
        for g in from {
            old.read_tags(&pinned_hash(g, "TAGS")?);
        }
        let mut copied = 0;
        for (pid, tag) in &old.tags {
            if tags.get(pid, 0).is_err() {
                tags.insert(pid, tag, 0)
                    .with_context(|| format!("carrying the tag of pid {pid} over"))?;
                copied += 1;
            }
        }
        carried += copied;
        if copied == 0 {
            return Ok(carried);
        }
    }
    anyhow::bail!("the tags did not settle after 16 passes (a fork storm?)")
}

/// Restores the saved sessions into `registry` and the kernel, carries an
/// earlier object's tags over and removes its pins.
pub fn restore(
    saved: Option<Saved>,
    set: &PolicySet,
    loaded: &Loaded,
    tags: &mut Tags,
    enforcer: &mut Enforcer,
    registry: &mut Registry,
) -> anyhow::Result<()> {
    let mut kernel = KernelState::default();
    if loaded.adopted {
        kernel.read_tags(tags);
    }
    let mut readable = Vec::new();
    for g in &loaded.previous {
        match kernel.read_previous(g) {
            Ok(()) => readable.push(g),
            Err(e) => log::error!(
                "upgrade: cannot carry the sessions of {} over ({e:#}): its programs stay \
                 attached and keep enforcing; `agentgate unload` removes everything",
                g.dir.display()
            ),
        }
    }
    let live = kernel.sessions();
    let saved = saved.unwrap_or_default();
    // The kernel's label masks are in the bits the earlier daemon saved; the
    // policy's labels keep those bits (before anything is installed).
    enforcer.adopt_labels(&saved.labels);
    let names: Vec<String> = set.labels().iter().map(|(n, _)| n.to_owned()).collect();
    enforcer
        .use_labels(&names)
        .context("giving the policy's labels their kernel bits")?;
    let mut restored = HashSet::new();
    for s in &saved.sessions {
        if !live.contains(&s.id) {
            log::info!(
                "session {} ({:?}) not restored: its processes are gone",
                s.id,
                s.intent
            );
            continue;
        }
        let ctx = s.context();
        let compiled = match policy::compile_session(set, &ctx)
            .and_then(|c| Ok((c, policy::compile_tools(set, &ctx)?)))
        {
            Ok(c) => c,
            Err(e) => {
                log::error!(
                    "session {} (profile {:?}) no longer compiles against the policy: {e:#}; its \
                     processes keep the rules they had",
                    s.id,
                    s.profile
                );
                continue;
            }
        };
        let (compiled, tools) = compiled;
        // A tool call in progress does not survive the restart: the session
        // is judged by its own rules until the runtime begins another.
        enforcer
            .install(
                s.id,
                &compiled.kernel,
                &policy::kernel_tools(&tools),
                s.parent,
            )
            .with_context(|| format!("session {}: installing its rules", s.id))?;
        let ended = s.ended();
        if let Some(e) = ended {
            enforcer
                .expire(s.id, e == Ended::Drifted)
                .with_context(|| format!("session {}: marking it ended", s.id))?;
        }
        // Adopted maps kept the labels where they were (install keeps the
        // daemon's); an earlier object's go over as the daemon's.
        if !loaded.adopted
            && let Some(bits) = kernel.labels.get(&s.id)
        {
            enforcer
                .carry_labels(s.id, *bits)
                .with_context(|| format!("session {}: restoring its labels", s.id))?;
        }
        let labels = enforcer.labels(s.id);
        let mut history = SessionHistory::new();
        history.add_labels(labels);
        registry.restore(Session {
            id: s.id,
            spec: s.spec(),
            created: s.created(),
            expires: s.expires(),
            ctx,
            compiled,
            tools,
            action: None,
            last_action: None,
            history,
            ended,
            drift: Drift::default(),
        });
        restored.insert(s.id);
    }
    let orphans: Vec<SessionId> = live.difference(&restored).copied().collect();
    if !orphans.is_empty() {
        log::warn!(
            "tagged processes of session(s) {orphans:?} are alive but not restored: they keep the \
             rules the kernel holds for them"
        );
    }
    if loaded.adopted {
        let n = enforcer.sweep(|id| live.contains(&id));
        log::info!(
            "restart: adopted the pinned maps and programs of this same object under {} (they \
             never stopped); {} session(s) restored, {} stale rule entries removed",
            loaded.generation.dir.display(),
            restored.len(),
            n
        );
    }
    if loaded.previous.is_empty() {
        if !loaded.adopted {
            log::info!(
                "fresh start: no earlier pins; maps and links pinned under {}",
                loaded.generation.dir.display()
            );
        }
        return Ok(());
    }
    // The new programs are attached and the sessions' rules installed: the
    // tags go over, then the old programs come out. Until then both judge.
    let carried = carry_tags(&readable, tags)?;
    for g in readable {
        if !orphans.is_empty() {
            log::warn!(
                "upgrade: {} stays attached for the sessions not restored",
                g.dir.display()
            );
            continue;
        }
        match g.remove() {
            Ok(()) => log::info!("upgrade: removed the old pins {}", g.dir.display()),
            Err(e) => log::error!("upgrade: removing {}: {e}", g.dir.display()),
        }
    }
    log::info!(
        "upgrade: earlier pins were of a different object; loaded fresh maps under {}, carried \
         {carried} tag(s) over, {} session(s) restored",
        loaded.generation.dir.display(),
        restored.len()
    );
    Ok(())
}
