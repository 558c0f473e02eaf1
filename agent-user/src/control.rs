//! The control socket: prost messages in length-delimited frames over a unix
//! socket, with the caller identified by the kernel (SO_PEERCRED), never by
//! what it claims.
use std::path::Path;

use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

pub const DEFAULT_SOCKET: &str = "/run/agentgate/agentgate.sock";

/// The agent socket beside a control socket: what processes inside a
/// session may reach (to open a delegated session or declare a tool call,
/// requests that can only narrow them). The shipped baseline refuses
/// sessions a connect to the control socket itself.
pub fn agent_socket(control: &Path) -> std::path::PathBuf {
    control.with_file_name("agent.sock")
}

/// Which socket a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Socket {
    /// Operators and launchers, outside every session.
    Control,
    /// Processes inside a session.
    Agent,
}
/// Larger frames are refused: no request needs more.
pub const MAX_FRAME: usize = 1 << 20;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(oneof = "request::Body", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub body: Option<request::Body>,
}

pub mod request {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        #[prost(message, tag = "1")]
        OpenSession(super::OpenSession),
        #[prost(message, tag = "2")]
        Status(super::StatusRequest),
        #[prost(message, tag = "3")]
        ListSessions(super::ListSessions),
        #[prost(message, tag = "4")]
        EndSession(super::EndSession),
        #[prost(message, tag = "5")]
        ListReferrals(super::ListReferrals),
        #[prost(message, tag = "6")]
        AnswerReferral(super::AnswerReferral),
        #[prost(message, tag = "7")]
        ActionBegin(super::ActionBegin),
        #[prost(message, tag = "8")]
        ActionEnd(super::ActionEnd),
        #[prost(message, tag = "9")]
        ShowSession(super::ShowSession),
    }
}

/// From the agent runtime, inside its session: a tool call begins. Until it
/// ends, the session's calls are attributed to it and must also be inside
/// the tool's scope (the profile's `tools:`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ActionBegin {
    #[prost(string, tag = "1")]
    pub tool: String,
    /// The tool's parameters, as the runtime passes them (for the record).
    #[prost(string, tag = "2")]
    pub params: String,
    /// Why the agent calls it (for the record).
    #[prost(string, tag = "3")]
    pub rationale: String,
}

/// From inside the session: the tool call `id` is over.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ActionEnd {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ShowSession {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListReferrals {}

/// A human's answer to a referral. Only a caller outside every session, and
/// root or the session's owner, may give one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnswerReferral {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(bool, tag = "2")]
    pub approve: bool,
    /// How long the grant lasts.
    #[prost(uint64, tag = "3")]
    pub for_secs: u64,
    /// Grant everything under the path, not just the path.
    #[prost(bool, tag = "4")]
    pub prefix: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReferralInfo {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub session: u64,
    #[prost(string, tag = "3")]
    pub intent: String,
    #[prost(string, tag = "4")]
    pub kind: String,
    #[prost(string, tag = "5")]
    pub target: String,
    #[prost(string, tag = "6")]
    pub rule: String,
    #[prost(string, tag = "7")]
    pub reason: String,
    #[prost(uint64, tag = "8")]
    pub age_secs: u64,
    #[prost(string, tag = "9")]
    pub state: String,
    #[prost(uint32, tag = "10")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Referrals {
    #[prost(message, repeated, tag = "1")]
    pub referrals: Vec<ReferralInfo>,
}

/// Put the calling process (which must be `pid`) into a new session.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OpenSession {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(string, tag = "2")]
    pub profile: String,
    #[prost(string, tag = "3")]
    pub intent: String,
    #[prost(string, tag = "4")]
    pub workspace: String,
    #[prost(uint64, tag = "5")]
    pub ttl_secs: u64,
    /// The command the session will run (for the record).
    #[prost(string, repeated, tag = "6")]
    pub command: Vec<String>,
    /// The human the agent acts for, when the launcher knows better than its
    /// uid (SUDO_USER).
    #[prost(string, tag = "7")]
    pub principal: String,
    /// The launcher's `$HOME`: what `~` means in rules, besides the
    /// account's home.
    #[prost(string, tag = "8")]
    pub home: String,
    /// Intent tags that rules can match (`session: {intent: [...]}`).
    #[prost(string, repeated, tag = "9")]
    pub intent_tags: Vec<String>,
    /// The program the session runs, resolved as exec will find it: the
    /// agent's identity (the daemon hashes the file).
    #[prost(string, tag = "10")]
    pub program: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListSessions {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EndSession {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(oneof = "response::Body", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    pub body: Option<response::Body>,
}

pub mod response {
    #[derive(Clone, PartialEq, prost::Oneof)]
    #[expect(
        clippy::large_enum_variant,
        reason = "one reply per control request; boxing would leak into prost's API"
    )]
    pub enum Body {
        #[prost(string, tag = "1")]
        Error(String),
        #[prost(message, tag = "2")]
        SessionOpened(super::SessionOpened),
        #[prost(message, tag = "3")]
        Status(super::Status),
        #[prost(message, tag = "4")]
        Sessions(super::Sessions),
        #[prost(message, tag = "5")]
        Done(super::Done),
        #[prost(message, tag = "6")]
        Referrals(super::Referrals),
        #[prost(message, tag = "7")]
        ActionStarted(super::ActionStarted),
        #[prost(message, tag = "8")]
        SessionDetail(super::SessionDetail),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ActionStarted {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// Everything the daemon knows about one session.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionDetail {
    #[prost(message, optional, tag = "1")]
    pub info: Option<SessionInfo>,
    #[prost(string, repeated, tag = "2")]
    pub intent_tags: Vec<String>,
    #[prost(string, tag = "3")]
    pub agent_exe: String,
    /// Hex SHA-256 of the agent's binary when the session opened.
    #[prost(string, tag = "4")]
    pub agent_sha256: String,
    /// The session and those it was delegated from, innermost first.
    #[prost(uint64, repeated, tag = "5")]
    pub chain: Vec<u64>,
    /// Sessions opened from this one.
    #[prost(uint64, repeated, tag = "6")]
    pub children: Vec<u64>,
    /// Live processes tagged with it.
    #[prost(uint32, repeated, tag = "7")]
    pub pids: Vec<u32>,
    /// Labels it holds.
    #[prost(string, repeated, tag = "8")]
    pub labels: Vec<String>,
    #[prost(double, tag = "9")]
    pub drift_score: f64,
    /// Why it may do nothing more (`expired`, `drifted`), or empty.
    #[prost(string, tag = "10")]
    pub ended: String,
    /// The tool call in progress: id, tool, params, rationale.
    #[prost(uint64, tag = "11")]
    pub action_id: u64,
    #[prost(string, tag = "12")]
    pub action_tool: String,
    #[prost(string, tag = "13")]
    pub action_params: String,
    #[prost(string, tag = "14")]
    pub action_rationale: String,
    /// Tools its profile declares scopes for.
    #[prost(string, repeated, tag = "15")]
    pub tools: Vec<String>,
    /// Referrals of the session still waiting for a human.
    #[prost(uint32, tag = "16")]
    pub pending_referrals: u32,
    /// The agent's seccomp state when it started (`procs::Seccomp`).
    #[prost(string, tag = "17")]
    pub confinement: String,
    /// Records of its calls lost to a full ring buffer (never seen by the
    /// daemon; the kernel's verdict stood alone).
    #[prost(uint64, tag = "18")]
    pub records_lost: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionOpened {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The daemon's pid, which the session's seccomp layer refuses signals to.
    #[prost(uint32, tag = "2")]
    pub daemon_pid: u32,
    /// Whether the daemon runs in lsm mode (the layer leaves to its hooks
    /// what they refuse).
    #[prost(bool, tag = "3")]
    pub lsm: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Done {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(string, tag = "1")]
    pub mode: String,
    /// Why this mode, and what it guarantees.
    #[prost(string, tag = "2")]
    pub mode_detail: String,
    #[prost(string, repeated, tag = "3")]
    pub programs: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    pub counters: Vec<HookCounters>,
    #[prost(uint32, tag = "5")]
    pub sessions: u32,
    #[prost(uint64, tag = "6")]
    pub events_read: u64,
    #[prost(uint64, tag = "7")]
    pub events_malformed: u64,
    /// What the kernel probe found, one line per program type.
    #[prost(string, repeated, tag = "8")]
    pub probe: Vec<String>,
    /// Processes the daemon's process cache holds.
    #[prost(uint64, tag = "9")]
    pub cached_processes: u64,
    /// Files the rules protect that the kernel knows by inode.
    #[prost(uint64, tag = "10")]
    pub known_inodes: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HookCounters {
    #[prost(string, tag = "1")]
    pub hook: String,
    #[prost(uint64, tag = "2")]
    pub seen: u64,
    #[prost(uint64, tag = "3")]
    pub emitted: u64,
    #[prost(uint64, tag = "4")]
    pub dropped: u64,
    /// Calls the kernel refused or killed.
    #[prost(uint64, tag = "5")]
    pub blocked: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sessions {
    #[prost(message, repeated, tag = "1")]
    pub sessions: Vec<SessionInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionInfo {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
    #[prost(uint32, tag = "3")]
    pub uid: u32,
    #[prost(string, tag = "4")]
    pub principal: String,
    #[prost(string, tag = "5")]
    pub profile: String,
    #[prost(string, tag = "6")]
    pub intent: String,
    #[prost(string, tag = "7")]
    pub workspace: String,
    #[prost(uint64, tag = "8")]
    pub created_unix: u64,
    #[prost(uint64, tag = "9")]
    pub expires_unix: u64,
    #[prost(string, repeated, tag = "10")]
    pub command: Vec<String>,
    /// The session it was opened from (0: none).
    #[prost(uint64, tag = "11")]
    pub parent: u64,
}

pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the agentgate daemon is not running (no socket at {0}); start it with `sudo agentgate daemon` or `cargo xtask run`"
    )]
    NotRunning(String),
    #[error("cannot reach the daemon at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent an unreadable reply: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the daemon closed the connection without replying")]
    Closed,
    #[error("the daemon refused: {0}")]
    Refused(String),
    #[error(
        "the agentgate daemon at {0} does not answer (stopped or hung?): no reply in {REPLY_TIMEOUT:?}; `agentgate status` from a root shell, or restart it"
    )]
    NoAnswer(String),
}

/// How long a client waits for the daemon's reply. Every request is
/// answered in milliseconds; a daemon that takes longer is stopped
/// (`kill -STOP`) or hung, and a launcher must not hang with it.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One request, one response, within [`REPLY_TIMEOUT`].
pub async fn call(socket: &Path, body: request::Body) -> Result<response::Body, ClientError> {
    let path = socket.display().to_string();
    tokio::time::timeout(REPLY_TIMEOUT, exchange(socket, &path, body))
        .await
        .map_err(|_| ClientError::NoAnswer(path.clone()))?
}

async fn exchange(
    socket: &Path,
    path: &str,
    body: request::Body,
) -> Result<response::Body, ClientError> {
    let path = path.to_owned();
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.clone())
            }
            _ => ClientError::Connect {
                path: path.clone(),
                source,
            },
        })?;
    let mut framed = Framed::new(stream, codec());
    let req = Request { body: Some(body) };
    framed
        .send(bytes::Bytes::from(prost::Message::encode_to_vec(&req)))
        .await?;
    let frame = framed.next().await.ok_or(ClientError::Closed)??;
    let resp: Response = prost::Message::decode(frame.freeze())?;
    match resp.body {
        Some(response::Body::Error(msg)) => Err(ClientError::Refused(msg)),
        Some(body) => Ok(body),
        None => Err(ClientError::Closed),
    }
}
