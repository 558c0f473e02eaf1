//! Opening, listing, showing and ending sessions.
use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_common::{MAX_CHAIN, ProcTag, SessionId};
use anyhow::{Context, bail};

use crate::{
    control,
    daemon::{
        server::Peer,
        shared::{Shared, State},
    },
    policy::{self, SessionContext},
    procs,
    referrals::State as ReferralState,
    sessions::{Ended, NewSession, Registry, Session},
    users,
};

/// Sessions one session may have opened, directly or not.
const MAX_DELEGATED: usize = 256;

/// The session a new one is delegated from, as far as the new one is
/// concerned.
struct Delegation {
    id: SessionId,
    principal: String,
    /// What is left of its lifetime: the new session's is no longer.
    left: Option<Duration>,
}

fn delegating(id: SessionId, registry: &Registry) -> anyhow::Result<Delegation> {
    let s = registry
        .get(id)
        .with_context(|| format!("the caller's session {id} is not known"))?;
    if s.ended.is_some() {
        bail!("session {id} has ended: it cannot open sessions");
    }
    let depth = registry.chain(id).len();
    if depth >= MAX_CHAIN {
        bail!(
            "session {id} is already {depth} sessions deep in delegation; at most {MAX_CHAIN} \
             sessions judge a call"
        );
    }
    // Sessions take kernel map entries: a session may not crowd out others
    // by opening sessions without end.
    let opened = registry.descendants(id).len();
    if opened >= MAX_DELEGATED {
        bail!(
            "session {id} has opened {opened} sessions already (at most {MAX_DELEGATED}); end some \
             with `agentgate sessions end` from outside"
        );
    }
    let now = SystemTime::now();
    Ok(Delegation {
        id,
        principal: s.spec.principal.clone(),
        left: s
            .expires
            .map(|e| e.duration_since(now).unwrap_or(Duration::from_secs(1))),
    })
}

/// The human a session acts for. A delegated session keeps its parent's.
/// Otherwise the caller's own user, unless the caller is root: only root
/// may name someone else (`sudo agentgate exec` sends `SUDO_USER`).
fn principal(claimed: String, own: String, peer: &Peer, delegation: Option<&Delegation>) -> String {
    if let Some(d) = delegation {
        return d.principal.clone();
    }
    if claimed.is_empty() || claimed == own {
        return own;
    }
    if peer.uid == 0 {
        return claimed;
    }
    log::warn!(
        "pid {} (uid {}) claimed principal {claimed:?}: only root may name another user; the \
         session acts for {own}",
        peer.pid,
        peer.uid
    );
    own
}

pub fn open(open: control::OpenSession, peer: &Peer, shared: &Shared) -> anyhow::Result<SessionId> {
    if open.pid != peer.pid {
        bail!(
            "a process may only open a session for itself (asked for pid {}, caller is {})",
            open.pid,
            peer.pid
        );
    }
    let (start_ns, ppid) = procs::start_and_ppid(peer.pid)?;
    let requested_ttl = (open.ttl_secs > 0).then(|| Duration::from_secs(open.ttl_secs));
    // Outside the lock: the user database may be a network service.
    let (own_name, own_home) = users::name_and_home(peer.uid);
    let mut guard = shared.lock();
    let st = &mut *guard;
    // Opened from inside a session: a delegated session, judged by its own
    // scope and by every session it was delegated from.
    let delegation = match st.session_of(peer.pid) {
        None => None,
        Some(p) => Some(delegating(p, &st.registry)?),
    };
    let principal = principal(open.principal, own_name, peer, delegation.as_ref());
    let set = st.engine.policy().clone();
    let Some(profile) = set.profile(&open.profile) else {
        bail!(
            "no profile {:?} in the policy (profiles: {})",
            open.profile,
            set.profiles()
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    // The session lives as long as asked, and never longer than its profile
    // allows.
    let parent_left = delegation.as_ref().and_then(|d| d.left);
    let ttl = [requested_ttl, profile.ttl, parent_left]
        .into_iter()
        .flatten()
        .min();
    let mut homes: Vec<PathBuf> = Vec::new();
    if !open.home.is_empty() {
        homes.push(PathBuf::from(&open.home));
    }
    if let Some(home) = own_home
        && !homes.contains(&home)
    {
        homes.push(home);
    }
    let home_refs: Vec<&Path> = homes.iter().map(PathBuf::as_path).collect();
    let ctx = SessionContext::new(
        &open.profile,
        Path::new(&open.workspace),
        &home_refs,
        peer.uid,
        open.intent_tags.clone(),
    )
    .with_context(|| format!("workspace {:?}", open.workspace))?;
    let compiled = policy::compile_session(&set, &ctx)
        .with_context(|| format!("compiling profile {:?}", open.profile))?;
    let tools = policy::compile_tools(&set, &ctx)
        .with_context(|| format!("compiling the tools of profile {:?}", open.profile))?;
    let parent = delegation.as_ref().map_or(0, |d| d.id);
    let id = st.registry.next_id();
    // The rules go into the kernel before the pid is tagged: the session's
    // first call is already judged by them.
    st.enforcer
        .install(id, &compiled.kernel, &policy::kernel_tools(&tools), parent)
        .context("installing the session's rules in the kernel")?;
    let session = st.registry.open(
        NewSession {
            pid: peer.pid,
            uid: peer.uid,
            principal,
            profile: open.profile,
            intent: open.intent,
            workspace: open.workspace,
            command: open.command,
            ttl,
            // What the caller says it will run; the kernel's word replaces
            // it at the session's first exec (see `Judge`).
            agent_exe: open.program,
            agent_sha256: Vec::new(),
            confinement: String::new(),
            parent,
        },
        ctx,
        compiled,
        tools,
    );
    debug_assert_eq!(session.id, id);
    let tag = ProcTag {
        session: id,
        start_ns,
        ppid,
        _pad: 0,
    };
    if let Err(e) = st.tags.insert(peer.pid, tag, 0) {
        st.registry.remove(id);
        st.enforcer.remove(id);
        bail!("cannot tag pid {}: {e}", peer.pid);
    }
    st.persist(&shared.facts);
    log::info!(
        "session {id} opened for pid {} (uid {}){}: {:?}",
        peer.pid,
        peer.uid,
        if parent != 0 {
            format!(" from inside session {parent}")
        } else {
            String::new()
        },
        st.registry.get(id).map(|s| &s.spec.intent)
    );
    Ok(id)
}

/// Ends a session and every session opened from it. Their processes go
/// back to the session this one was opened from, if any; else they are
/// untagged.
pub fn end(id: SessionId, peer: &Peer, shared: &Shared) -> anyhow::Result<()> {
    let mut guard = shared.lock();
    let st = &mut *guard;
    let session = st
        .registry
        .get(id)
        .with_context(|| format!("no session {id}"))?;
    if peer.uid != 0 && peer.uid != session.spec.uid {
        bail!(
            "only root or the session's owner (uid {}) may end session {id}",
            session.spec.uid
        );
    }
    let parent = Some(session.spec.parent).filter(|p| st.registry.get(*p).is_some());
    let mut ending = st.registry.descendants(id);
    ending.push(id);
    let pids: Vec<(u32, ProcTag)> = st
        .tags
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, t)| ending.contains(&t.session))
        .collect();
    // A session opened inside another hands its processes back to it. A
    // top-level session's leftovers are killed, not untagged: an untagged
    // process may read anything, and a tag whose session is gone is judged
    // by nothing. Their tags go when they exit.
    let mut killed = 0usize;
    for (pid, tag) in pids {
        match parent {
            Some(p) => {
                let _ = st.tags.insert(pid, ProcTag { session: p, ..tag }, 0);
            }
            None => {
                let same = || st.tags.get(&pid, 0).is_ok_and(|t| t == tag);
                match procs::signal_if(pid, libc::SIGKILL, same) {
                    Ok(true) => killed += 1,
                    Ok(false) => {}
                    Err(e) => log::error!("session {id}: killing leftover pid {pid}: {e}"),
                }
            }
        }
    }
    // Grants of the ending sessions also live in the sessions they were
    // delegated from: take them out there before the sessions go.
    let grants: Vec<(SessionId, u64)> = st
        .referrals
        .grants()
        .filter(|g| ending.contains(&g.session))
        .map(|g| (g.session, g.id))
        .collect();
    for (session, grant) in grants {
        for id in st.registry.chain(session) {
            st.enforcer.revoke(id, grant);
        }
    }
    for s in &ending {
        // Reported once more here: the session may end between two ticks.
        let lost = st.enforcer.lost(*s);
        if lost != 0 {
            crate::daemon::expiry::warn_lost(*s, lost, lost);
        }
        st.enforcer.remove(*s);
        st.referrals.forget_session(*s);
        st.registry.remove(*s);
    }
    st.persist(&shared.facts);
    log::info!(
        "session {id} ended by uid {}{}{}",
        peer.uid,
        if ending.len() > 1 {
            format!(" with the {} session(s) opened from it", ending.len() - 1)
        } else {
            String::new()
        },
        match parent {
            Some(p) => format!("; its processes are back in session {p}"),
            None => format!("; {killed} leftover process(es) killed"),
        }
    );
    Ok(())
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn info(s: &Session) -> control::SessionInfo {
    let spec = s.spec.clone();
    control::SessionInfo {
        id: s.id,
        pid: spec.pid,
        uid: spec.uid,
        principal: spec.principal,
        profile: spec.profile,
        intent: spec.intent,
        workspace: spec.workspace,
        created_unix: unix_secs(s.created),
        expires_unix: s.expires.map(unix_secs).unwrap_or(0),
        command: spec.command,
        parent: spec.parent,
    }
}

pub fn list(shared: &Shared) -> control::Sessions {
    control::Sessions {
        sessions: shared.lock().registry.iter().map(info).collect(),
    }
}

pub fn show(id: SessionId, shared: &Shared) -> anyhow::Result<control::SessionDetail> {
    let st = shared.lock();
    let s = st
        .registry
        .get(id)
        .with_context(|| format!("no session {id}"))?;
    Ok(detail(&st, s))
}

fn detail(st: &State, s: &Session) -> control::SessionDetail {
    let id = s.id;
    let labels = st.enforcer.labels(id) | s.history.labels();
    let mut pids: Vec<u32> = st
        .tags
        .iter()
        .filter_map(Result::ok)
        .filter(|(pid, t)| t.session == id && Path::new(&format!("/proc/{pid}")).exists())
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    let pending = st
        .referrals
        .all()
        .filter(|r| r.session == id && r.state == ReferralState::Pending)
        .count();
    let action = s.action.clone();
    control::SessionDetail {
        info: Some(info(s)),
        intent_tags: s.ctx.intent_tags.clone(),
        agent_exe: s.spec.agent_exe.clone(),
        agent_sha256: s
            .spec
            .agent_sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        confinement: s.spec.confinement.clone(),
        records_lost: st.enforcer.lost(id),
        chain: st.registry.chain(id),
        children: st
            .registry
            .iter()
            .filter(|c| c.spec.parent == id)
            .map(|c| c.id)
            .collect(),
        pids,
        labels: st
            .engine
            .policy()
            .labels()
            .names(labels)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        drift_score: s.drift.score(),
        ended: match s.ended {
            Some(Ended::Expired) => "expired".into(),
            Some(Ended::Drifted) => "drifted".into(),
            None => String::new(),
        },
        action_id: action.as_ref().map_or(0, |a| a.id),
        action_tool: action.as_ref().map(|a| a.tool.clone()).unwrap_or_default(),
        action_params: action
            .as_ref()
            .map(|a| a.params.clone())
            .unwrap_or_default(),
        action_rationale: action.map(|a| a.rationale).unwrap_or_default(),
        tools: s.tools.iter().map(|(n, _)| n.clone()).collect(),
        pending_referrals: pending as u32,
    }
}
