//! The control and agent sockets: who may ask what, and how long a caller
//! may hold a connection.
use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;

use super::{handlers, shared::Shared};
use crate::control::{self, Request, Response, Socket, request, response};

/// Connections one user may hold open at once, per socket. Any local user
/// may connect; past this, that user's new callers are told to retry, and
/// other users (root among them) are still served.
pub const MAX_CONNECTIONS_PER_USER: usize = 16;
/// A connection that sends no request for this long is closed: a stopped
/// or hostile client must not hold a slot forever.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds a socket. Any local user may connect (to open a session for their
/// own process); the handler decides per request from the peer's
/// credentials. A live socket means another daemon: refuse to steal it.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another agentgate daemon is running (socket {} answers)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    socket: Socket,
) -> anyhow::Result<()> {
    let open = Arc::new(Mutex::new(HashMap::<u32, usize>::new()));
    loop {
        let (stream, _) = listener.accept().await?;
        let Ok(uid) = stream.peer_cred().map(|c| c.uid()) else {
            continue;
        };
        let Some(slot) = Slot::take(&open, uid) else {
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &shared, socket).await {
                log::warn!("{socket:?} connection: {e:#}");
            }
            drop(slot);
        });
    }
}

/// One of a user's connections, given back when dropped.
struct Slot {
    open: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl Slot {
    fn take(open: &Arc<Mutex<HashMap<u32, usize>>>, uid: u32) -> Option<Slot> {
        let mut counts = open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(uid).or_default();
        if *n >= MAX_CONNECTIONS_PER_USER {
            return None;
        }
        *n += 1;
        Some(Slot {
            open: open.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

async fn refuse_busy(stream: UnixStream) {
    let mut framed = Framed::new(stream, control::codec());
    // Read the request first: a reply the caller has not asked for yet
    // would meet a closed socket when it sends.
    let _ = tokio::time::timeout(IDLE_TIMEOUT, framed.next()).await;
    let body = response::Body::Error(format!(
        "busy: your user holds {MAX_CONNECTIONS_PER_USER} connections to agentgate already; \
         close some and try again"
    ));
    let _ = tokio::time::timeout(IDLE_TIMEOUT, framed.send(encode(body))).await;
}

fn encode(body: response::Body) -> bytes::Bytes {
    bytes::Bytes::from(prost::Message::encode_to_vec(&Response {
        body: Some(body),
    }))
}

/// The peer as the kernel reports it (SO_PEERCRED), never as it claims.
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
}

async fn connection(stream: UnixStream, shared: &Shared, socket: Socket) -> anyhow::Result<()> {
    let cred = stream.peer_cred().context("reading peer credentials")?;
    let peer = Peer {
        pid: cred
            .pid()
            .and_then(|p| u32::try_from(p).ok())
            .context("peer has no pid")?,
        uid: cred.uid(),
    };
    let mut framed = Framed::new(stream, control::codec());
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, framed.next()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(_) => bail!("pid {}: idle for {IDLE_TIMEOUT:?}, closed", peer.pid),
        };
        let reply = match frame {
            Ok(bytes) => match <Request as prost::Message>::decode(bytes.freeze()) {
                Ok(req) => answer(req, &peer, shared, socket),
                Err(e) => response::Body::Error(format!("malformed request: {e}")),
            },
            // Oversized or broken frame: answer once and hang up.
            Err(e) => {
                let body = response::Body::Error(format!("malformed frame: {e}"));
                let _ = tokio::time::timeout(IDLE_TIMEOUT, framed.send(encode(body))).await;
                return Ok(());
            }
        };
        tokio::time::timeout(IDLE_TIMEOUT, framed.send(encode(reply)))
            .await
            .with_context(|| format!("pid {} does not read its reply", peer.pid))??;
    }
}

/// Who may ask what. A process inside a session must not steer its own
/// guard: the control socket serves it nothing. The agent socket serves
/// only processes inside a session, and only what can narrow them: a
/// delegated session, a tool call.
fn answer(req: Request, peer: &Peer, shared: &Shared, socket: Socket) -> response::Body {
    let session = shared.lock().session_of(peer.pid);
    let narrowing = matches!(
        req.body,
        Some(
            request::Body::OpenSession(_)
                | request::Body::ActionBegin(_)
                | request::Body::ActionEnd(_)
        )
    );
    match (socket, session) {
        (Socket::Control, Some(session)) => response::Body::Error(format!(
            "refused: the caller (pid {}) is inside session {session}",
            peer.pid
        )),
        (Socket::Agent, None) => response::Body::Error(format!(
            "refused: the agent socket serves processes inside its session (the caller, pid {}, \
             is in none): use the control socket",
            peer.pid
        )),
        (Socket::Agent, Some(session)) if !narrowing => response::Body::Error(format!(
            "refused: inside session {session}, only delegated sessions and tool calls are served"
        )),
        _ => handlers::handle(req, peer, shared),
    }
}
