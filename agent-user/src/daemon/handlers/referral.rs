//! Referrals a human answers, and the grants an approval puts in force.
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

use crate::{
    control,
    daemon::{server::Peer, shared::Shared},
    enforce::Enforcer,
    referrals::Grant,
    sessions::Registry,
};

/// Installs a grant in the session that asked and in the sessions it was
/// delegated from: each of them judges the call, so each must let it
/// through — for this one target, for the grant's time.
pub fn install_grant(
    registry: &Registry,
    enforcer: &mut Enforcer,
    g: &Grant,
) -> anyhow::Result<()> {
    for id in registry.chain(g.session) {
        let Some(s) = registry.get(id) else {
            continue;
        };
        enforcer.grant(id, g.id, &s.grant_rules(&g.target, g.access, g.rule()))?;
    }
    Ok(())
}

pub fn list(shared: &Shared) -> control::Referrals {
    let st = shared.lock();
    let now = SystemTime::now();
    control::Referrals {
        referrals: st
            .referrals
            .all()
            .map(|r| control::ReferralInfo {
                id: r.id,
                session: r.session,
                intent: st
                    .registry
                    .get(r.session)
                    .map(|s| s.spec.intent.clone())
                    .unwrap_or_default(),
                kind: r.kind.into(),
                target: r.target.clone(),
                rule: r.rule.clone(),
                reason: r.reason.clone(),
                age_secs: now.duration_since(r.created).unwrap_or_default().as_secs(),
                state: r.state.name().into(),
                pid: r.pid,
            })
            .collect(),
    }
}

/// A human's answer. The caller is outside every session (the server
/// checks that) and must be root or the session's owner.
pub fn answer(a: control::AnswerReferral, peer: &Peer, shared: &Shared) -> anyhow::Result<()> {
    let mut guard = shared.lock();
    let st = &mut *guard;
    let r = st
        .referrals
        .get(a.id)
        .with_context(|| format!("no referral {}", a.id))?;
    let session = st
        .registry
        .get(r.session)
        .with_context(|| format!("session {} of referral {} has ended", r.session, a.id))?;
    if peer.uid != 0 && peer.uid != session.spec.uid {
        bail!(
            "only root or the session's owner (uid {}) may answer referral {}",
            session.spec.uid,
            a.id
        );
    }
    let approve = a
        .approve
        .then(|| (Duration::from_secs(a.for_secs.max(1)), a.prefix));
    let grant: Option<Grant> = st
        .referrals
        .answer(a.id, approve, SystemTime::now())
        .map_err(anyhow::Error::msg)?;
    let Some(g) = grant else {
        log::info!("referral {} rejected by uid {}", a.id, peer.uid);
        return Ok(());
    };
    install_grant(&st.registry, &mut st.enforcer, &g)
        .context("installing the grant in the kernel")?;
    log::warn!(
        "referral {} approved by uid {} for {}s{}: grant {} for session {}",
        a.id,
        peer.uid,
        a.for_secs.max(1),
        if a.prefix { " (prefix)" } else { "" },
        g.id,
        g.session
    );
    Ok(())
}
