//! One handler per request. The server has already decided that the caller
//! may ask; each handler checks what only it can (ownership, the caller's
//! own session) and does its work under the one state lock.
mod action;
mod referral;
mod session;
mod status;

pub use referral::install_grant;

use super::{server::Peer, shared::Shared};
use crate::control::{self, Request, request, response};

pub fn handle(req: Request, peer: &Peer, shared: &Shared) -> response::Body {
    let error = |e: anyhow::Error| response::Body::Error(format!("{e:#}"));
    let done =
        |r: anyhow::Result<()>| r.map_or_else(error, |()| response::Body::Done(control::Done {}));
    match req.body {
        Some(request::Body::OpenSession(open)) => {
            session::open(open, peer, shared).map_or_else(error, |id| {
                response::Body::SessionOpened(control::SessionOpened {
                    id,
                    daemon_pid: std::process::id(),
                    lsm: shared.facts.mode == "lsm",
                })
            })
        }
        Some(request::Body::Status(_)) => response::Body::Status(status::status(shared)),
        Some(request::Body::ListSessions(_)) => response::Body::Sessions(session::list(shared)),
        Some(request::Body::EndSession(end)) => done(session::end(end.id, peer, shared)),
        Some(request::Body::ShowSession(show)) => {
            session::show(show.id, shared).map_or_else(error, response::Body::SessionDetail)
        }
        Some(request::Body::ListReferrals(_)) => response::Body::Referrals(referral::list(shared)),
        Some(request::Body::AnswerReferral(a)) => done(referral::answer(a, peer, shared)),
        Some(request::Body::ActionBegin(a)) => action::begin(a, peer, shared)
            .map_or_else(error, |id| {
                response::Body::ActionStarted(control::ActionStarted { id })
            }),
        Some(request::Body::ActionEnd(a)) => done(action::end(a.id, peer, shared)),
        None => response::Body::Error("malformed request: empty".into()),
    }
}
