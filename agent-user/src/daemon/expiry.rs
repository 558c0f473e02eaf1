//! Time runs out: grants lapse, sessions pass their TTL; and, now and then,
//! the files the rules protect are looked up again by identity and records
//! lost to a full ring buffer are reported by session.
use std::{collections::HashMap, sync::Arc, time::Duration};

use agent_common::SessionId;

use super::shared::Shared;
use crate::sessions::Ended;

/// Every this many ticks (10 s), the files the rules protect are looked
/// up again by identity: a key created or replaced since is known soon.
const KNOWN_INODES_EVERY: u32 = 20;

/// Past its TTL a session may do nothing more: the kernel refuses every
/// call of its processes from then on (and the daemon refuses what only it
/// judges). The session stays listed, marked expired, until it is ended.
pub async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut ticks: u32 = 0;
    let mut lost_reported: HashMap<SessionId, u64> = HashMap::new();
    loop {
        tick.tick().await;
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(KNOWN_INODES_EVERY) {
            shared.lock().enforcer.refresh_known_inodes();
        }
        let now = std::time::SystemTime::now();
        let mut guard = shared.lock();
        let st = &mut *guard;
        for g in st.referrals.expire(now) {
            for s in st.registry.chain(g.session) {
                st.enforcer.revoke(s, g.id);
            }
            log::info!(
                "grant {} of session {} expired: referral {} is refused again",
                g.id,
                g.session,
                g.referral
            );
        }
        for s in st.registry.iter() {
            let lost = st.enforcer.lost(s.id);
            let reported = lost_reported.entry(s.id).or_insert(0);
            if lost > *reported {
                warn_lost(s.id, lost - *reported, lost);
                *reported = lost;
            }
        }
        lost_reported.retain(|id, _| st.registry.get(*id).is_some());
        let mut changed = false;
        for s in st.registry.iter_mut() {
            if s.ended.is_some() || s.expires.is_none_or(|e| e > now) {
                continue;
            }
            s.ended = Some(Ended::Expired);
            changed = true;
            match st.enforcer.expire(s.id, false) {
                Ok(()) => log::warn!(
                    "session {} expired (TTL): every further call of its processes is refused",
                    s.id
                ),
                Err(e) => log::error!("session {}: marking it expired: {e}", s.id),
            }
        }
        if changed {
            st.persist(&shared.facts);
        }
    }
}

/// Says that `new` more records of a session's calls (`total` so far) were
/// lost to a full ring buffer.
pub(super) fn warn_lost(session: SessionId, new: u64, total: u64) {
    log::warn!(
        "session {session}: {new} record(s) of its calls lost (ring buffer full; {total} in all): \
         the kernel judged those calls alone, and the daemon never saw them"
    );
}
