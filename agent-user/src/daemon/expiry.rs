//! Time runs out: grants lapse, sessions pass their TTL; and the files
//! the rules protect are looked up again by identity now and then.
use std::{sync::Arc, time::Duration};

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
