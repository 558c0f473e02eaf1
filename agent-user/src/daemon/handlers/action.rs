//! Tool calls, declared by the agent runtime inside its session: the
//! session's calls are attributed to the tool and, when the profile
//! declares a scope for it, must be inside that scope too (the kernel
//! judges them by both until the call ends).
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};

use crate::{
    control,
    daemon::{server::Peer, shared::Shared},
    output, policy,
    sessions::Action,
};

static NEXT_ACTION: AtomicU64 = AtomicU64::new(1);

pub fn begin(a: control::ActionBegin, peer: &Peer, shared: &Shared) -> anyhow::Result<u64> {
    let mut guard = shared.lock();
    let st = &mut *guard;
    let Some(id) = st.session_of(peer.pid) else {
        bail!(
            "action messages come from the agent runtime inside its session (the caller, pid {}, \
             is in none): run `agentgate action begin` under `agentgate exec`",
            peer.pid
        );
    };
    if a.tool.is_empty() || !policy::valid_name(&a.tool) {
        bail!(
            "bad tool name {:?} (letters, digits, `-`, `_` and `.`)",
            a.tool
        );
    }
    let s = st
        .registry
        .get_mut(id)
        .with_context(|| format!("session {id} is not known"))?;
    if let Some(open) = &s.action {
        bail!(
            "tool call {} ({}) of session {id} is still open: end it first",
            open.id,
            open.tool
        );
    }
    let scoped = s.tools.iter().any(|(n, _)| *n == a.tool);
    st.enforcer
        .set_tool(id, scoped.then_some(a.tool.as_str()))
        .context("putting the tool's scope in force")?;
    let action = Action {
        id: NEXT_ACTION.fetch_add(1, Ordering::Relaxed),
        tool: a.tool,
        params: a.params,
        rationale: a.rationale,
        started_ns: output::boot_ns(),
    };
    log::info!(
        "session {id}: tool call {} begins: {} {} ({}){}",
        action.id,
        action.tool,
        action.params,
        action.rationale,
        if scoped {
            ""
        } else {
            "; the profile declares no scope for this tool: attributed, not narrowed"
        }
    );
    let aid = action.id;
    s.action = Some(action);
    Ok(aid)
}

pub fn end(action: u64, peer: &Peer, shared: &Shared) -> anyhow::Result<()> {
    let mut guard = shared.lock();
    let st = &mut *guard;
    let Some(id) = st.session_of(peer.pid) else {
        bail!(
            "action messages come from the agent runtime inside its session (the caller, pid {}, \
             is in none)",
            peer.pid
        );
    };
    let s = st
        .registry
        .get_mut(id)
        .with_context(|| format!("session {id} is not known"))?;
    match &s.action {
        Some(a) if a.id == action => {}
        Some(a) => bail!(
            "tool call {action} is not the one in progress in session {id} ({} is)",
            a.id
        ),
        None => bail!("session {id} has no tool call in progress"),
    }
    st.enforcer
        .set_tool(id, None)
        .context("taking the tool's scope out")?;
    let Some(a) = s.action.take() else {
        unreachable!("checked above");
    };
    log::info!("session {id}: tool call {} ({}) ends", a.id, a.tool);
    s.last_action = Some((a, output::boot_ns()));
    Ok(())
}
