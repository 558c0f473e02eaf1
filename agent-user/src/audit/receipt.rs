//! Receipts: the prost messages stored for every decision, and the hash that
//! chains them.
//!
//! A stored receipt is the prost encoding of [`Receipt`]. Its last field is
//! `hash` (tag 15, the highest tag), so the stored bytes are always
//! `body ‖ 0x7a 0x20 ‖ hash`, where `body` is the encoding of the same receipt
//! with `hash` empty. The hash covers exactly those body bytes, the previous
//! receipt's hash included (`prev_hash`, tag 7):
//!
//! `hash = SHA-256("agentgate.receipt.v1\0" ‖ body)`
//!
//! Hashing the stored bytes themselves, not a re-encoding of the decoded
//! message, means any change to a stored byte is a hash mismatch, and the
//! chain does not depend on an encoder producing the same bytes twice.
use ring::digest;

/// Hash of a receipt (and `prev_hash` of the first receipt: all zeros).
pub type Hash = [u8; 32];
pub const GENESIS: Hash = [0; 32];

const DOMAIN: &[u8] = b"agentgate.receipt.v1\0";
/// Field key of `Receipt::hash`: tag 15, wire type 2 (length-delimited).
const HASH_KEY: u8 = (15 << 3) | 2;

/// What the daemon decided, as the kernel or the engine enforced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Verdict {
    Unspecified = 0,
    Allow = 1,
    /// Allowed, and worth recording.
    Audit = 2,
    /// Denied now (EACCES); a referral is pending for a human.
    Refer = 3,
    Deny = 4,
    /// Denied and the process killed.
    Kill = 5,
}

/// The AARM outcome class behind the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Outcome {
    Unspecified = 0,
    /// Explicitly forbidden by a rule.
    Forbidden = 1,
    /// Approved by context: inside the session's declared intent.
    ContextAllow = 2,
    /// The session's history makes it suspicious.
    ContextDeny = 3,
    /// Ambiguous: escalated to a human.
    Refer = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ActionKind {
    Unspecified = 0,
    Exec = 1,
    Open = 2,
    Connect = 3,
    /// Anything else the daemon judges (e.g. a session-level action).
    Other = 4,
    /// A change to the file system other than an open: `Action::op` says
    /// which.
    Change = 5,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Unspecified => "unspecified",
            Verdict::Allow => "allow",
            Verdict::Audit => "audit",
            Verdict::Refer => "refer",
            Verdict::Deny => "deny",
            Verdict::Kill => "kill",
        }
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Unspecified => "unspecified",
            Outcome::Forbidden => "forbidden",
            Outcome::ContextAllow => "context-allow",
            Outcome::ContextDeny => "context-deny",
            Outcome::Refer => "refer",
        }
    }
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Unspecified => "unspecified",
            ActionKind::Exec => "exec",
            ActionKind::Open => "open",
            ActionKind::Connect => "connect",
            ActionKind::Other => "other",
            ActionKind::Change => "change",
        }
    }
}

/// The program acting as the agent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Agent {
    #[prost(string, tag = "1")]
    pub exe: String,
    /// SHA-256 of the executable, when known (empty otherwise).
    #[prost(bytes = "vec", tag = "2")]
    pub sha256: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Session {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The human the agent acts for.
    #[prost(string, tag = "2")]
    pub principal: String,
    #[prost(message, optional, tag = "3")]
    pub agent: Option<Agent>,
    /// What the agent was asked to do.
    #[prost(string, tag = "4")]
    pub intent: String,
    /// Who delegated to whom, the principal first (e.g. `alice`,
    /// `claude`, `sub-agent`).
    #[prost(string, repeated, tag = "5")]
    pub delegation: Vec<String>,
    #[prost(string, tag = "6")]
    pub profile: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Process {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    /// With `pid`, the exec id: identifies the process across pid reuse.
    #[prost(uint64, tag = "2")]
    pub start_ns: u64,
    #[prost(string, tag = "3")]
    pub exe: String,
    #[prost(string, repeated, tag = "4")]
    pub argv: Vec<String>,
    #[prost(uint32, tag = "5")]
    pub uid: u32,
    #[prost(uint32, tag = "6")]
    pub ppid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Action {
    #[prost(enumeration = "ActionKind", tag = "1")]
    pub kind: i32,
    /// Path executed, opened or changed, or the address connected to.
    #[prost(string, tag = "2")]
    pub target: String,
    /// The agent runtime's tool call it was made in (0: none declared).
    #[prost(uint64, tag = "3")]
    pub tool_call: u64,
    #[prost(string, tag = "4")]
    pub tool: String,
    /// A change's op (`rename`, `unlink`, …); empty for other kinds.
    #[prost(string, tag = "5")]
    pub op: String,
    /// A change's second path: a rename's or a link's new name, a
    /// symlink's contents (empty when the op has none).
    #[prost(string, tag = "6")]
    pub to: String,
}

impl Action {
    /// What was done, in one word: the change's op, else the kind.
    pub fn verb(&self) -> &str {
        if self.op.is_empty() {
            ActionKind::try_from(self.kind)
                .unwrap_or(ActionKind::Unspecified)
                .as_str()
        } else {
            &self.op
        }
    }

    /// The target, `target -> to` when there is a second path.
    pub fn target_text(&self) -> String {
        if self.to.is_empty() {
            self.target.clone()
        } else {
            format!("{} -> {}", self.target, self.to)
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Decision {
    #[prost(enumeration = "Verdict", tag = "1")]
    pub verdict: i32,
    #[prost(enumeration = "Outcome", tag = "2")]
    pub outcome: i32,
    /// The rule that decided (empty: the profile's default).
    #[prost(string, tag = "3")]
    pub rule: String,
    #[prost(string, tag = "4")]
    pub reason: String,
    /// Hash of the compiled policy in force.
    #[prost(bytes = "vec", tag = "5")]
    pub policy_hash: Vec<u8>,
}

/// One decision, as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Receipt {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Wall-clock time the log took the decision, ns since the Unix epoch.
    #[prost(uint64, tag = "2")]
    pub time_ns: u64,
    #[prost(message, optional, tag = "3")]
    pub session: Option<Session>,
    #[prost(message, optional, tag = "4")]
    pub process: Option<Process>,
    #[prost(message, optional, tag = "5")]
    pub action: Option<Action>,
    #[prost(message, optional, tag = "6")]
    pub decision: Option<Decision>,
    #[prost(bytes = "vec", tag = "7")]
    pub prev_hash: Vec<u8>,
    /// Empty while hashing; see the module documentation.
    #[prost(bytes = "vec", tag = "15")]
    pub hash: Vec<u8>,
}

/// The fields of a stored receipt that the chain needs, decoded without
/// touching the rest (prost skips the other fields): what `verify` reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Link {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(uint64, tag = "2")]
    pub time_ns: u64,
    #[prost(bytes = "vec", tag = "7")]
    pub prev_hash: Vec<u8>,
}

/// What the daemon knows about one decision: the input of
/// [`crate::audit::AuditLog::append`]. The log adds the sequence number, the
/// time and the chain.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub session: Session,
    pub process: Process,
    pub action: Action,
    pub decision: Decision,
}

impl Record {
    pub fn into_receipt(self, seq: u64, time_ns: u64, prev_hash: &Hash) -> Receipt {
        Receipt {
            seq,
            time_ns,
            session: Some(self.session),
            process: Some(self.process),
            action: Some(self.action),
            decision: Some(self.decision),
            prev_hash: prev_hash.to_vec(),
            hash: Vec::new(),
        }
    }
}

pub fn hash_body(body: &[u8]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(DOMAIN);
    ctx.update(body);
    let mut out = GENESIS;
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Encodes `receipt` (whose `hash` must be empty) and seals it: returns the
/// bytes to store and the receipt's hash.
pub fn seal(receipt: &Receipt) -> (Vec<u8>, Hash) {
    debug_assert!(receipt.hash.is_empty(), "sealing a sealed receipt");
    let mut bytes = prost::Message::encode_to_vec(receipt);
    let hash = hash_body(&bytes);
    bytes.reserve(2 + hash.len());
    bytes.extend_from_slice(&[HASH_KEY, hash.len() as u8]);
    bytes.extend_from_slice(&hash);
    (bytes, hash)
}

/// Splits stored bytes into the hashed body and the stored hash; `None` when
/// they do not end in a 32-byte hash field.
pub fn split(stored: &[u8]) -> Option<(&[u8], &Hash)> {
    let body_len = stored.len().checked_sub(2 + 32)?;
    let (body, trailer) = stored.split_at(body_len);
    if trailer[0] != HASH_KEY || trailer[1] != 32 {
        return None;
    }
    Some((body, trailer[2..].try_into().ok()?))
}

/// Renders bytes as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// Parses hex (either case); `None` on odd length or a non-hex digit.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.chunks(2)
        .map(|p| Some((digit(p[0])? << 4) | digit(p[1])?))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use prost::Message;

    use super::*;

    pub(crate) fn sample(n: u64) -> Record {
        Record {
            session: Session {
                id: 7 + n % 3,
                principal: "alice".into(),
                agent: Some(Agent {
                    exe: "/usr/bin/claude".into(),
                    sha256: vec![0xab; 32],
                }),
                intent: "fix the failing test".into(),
                delegation: vec!["alice".into(), "claude".into()],
                profile: "coding-agent".into(),
            },
            process: Process {
                pid: 4242,
                start_ns: 1_000_000 + n,
                exe: "/usr/bin/curl".into(),
                argv: vec!["curl".into(), "https://example.com".into()],
                uid: 1000,
                ppid: 4241,
            },
            action: Action {
                kind: ActionKind::Exec as i32,
                target: format!("/usr/bin/curl#{n}"),
                ..Default::default()
            },
            decision: Decision {
                verdict: Verdict::Deny as i32,
                outcome: Outcome::Forbidden as i32,
                rule: "no-network-tools".into(),
                reason: "curl is not part of the intent".into(),
                policy_hash: vec![0xcd; 32],
            },
        }
    }

    #[test]
    fn sealed_bytes_are_the_prost_encoding_with_the_hash() {
        let receipt = sample(1).into_receipt(1, 99, &GENESIS);
        let (stored, hash) = seal(&receipt);
        let decoded = Receipt::decode(stored.as_slice()).unwrap();
        assert_eq!(decoded.hash, hash);
        assert_eq!(
            Receipt {
                hash: hash.to_vec(),
                ..receipt.clone()
            }
            .encode_to_vec(),
            stored
        );
        let (body, stored_hash) = split(&stored).unwrap();
        assert_eq!(*stored_hash, hash);
        assert_eq!(hash_body(body), hash);
        assert_eq!(body, receipt.encode_to_vec());
    }

    #[test]
    fn any_changed_byte_changes_the_hash() {
        let (stored, hash) = seal(&sample(1).into_receipt(1, 99, &GENESIS));
        let (body, _) = split(&stored).unwrap();
        for i in 0..body.len() {
            let mut changed = body.to_vec();
            changed[i] ^= 1;
            assert_ne!(hash_body(&changed), hash, "byte {i}");
        }
    }

    #[test]
    fn the_previous_hash_is_covered() {
        let a = seal(&sample(1).into_receipt(2, 99, &GENESIS)).1;
        let b = seal(&sample(1).into_receipt(2, 99, &[1; 32])).1;
        assert_ne!(a, b);
    }

    #[test]
    fn link_reads_the_chain_fields_only() {
        let (stored, _) = seal(&sample(3).into_receipt(5, 77, &[9; 32]));
        let (body, _) = split(&stored).unwrap();
        let link = Link::decode(body).unwrap();
        assert_eq!((link.seq, link.time_ns), (5, 77));
        assert_eq!(link.prev_hash, vec![9; 32]);
    }

    #[test]
    fn split_refuses_bytes_without_the_hash_trailer() {
        assert!(split(b"short").is_none());
        let (mut stored, _) = seal(&sample(1).into_receipt(1, 1, &GENESIS));
        let n = stored.len();
        stored[n - 34] = 0x12;
        assert!(split(&stored).is_none());
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0, 0xff, 0x1a]), "00ff1a");
        assert_eq!(unhex("00FF1a"), Some(vec![0, 0xff, 0x1a]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
