//! Verdicts for operators: to journald through the native protocol, or as
//! JSON lines on stdout where there is no journal (containers).
//!
//! Which verdicts: deny, kill, refer and audit always; allow only when asked
//! (`log_allow`), since allows are most of the traffic.
//!
//! Priorities (syslog levels, what `journalctl -p` filters on):
//!
//! | verdict | priority    | why                                          |
//! | ------- | ----------- | -------------------------------------------- |
//! | kill    | 2 crit      | a process was killed: act now                |
//! | deny    | 4 warning   | something was stopped                        |
//! | refer   | 5 notice    | a human has to decide (`agentgate approve`)  |
//! | audit   | 5 notice    | allowed, flagged by policy for the record    |
//! | allow   | 6 info      |                                              |
//!
//! Fields: SESSION, PRINCIPAL, AGENT (and AGENT_SHA256 when known), INTENT,
//! PROFILE, ACTION, TARGET, DECISION, OUTCOME, RULE, REASON, POLICY_HASH,
//! PID, EXEC_ID, EXE, ARGV, RECEIPT (the audit sequence number, when the
//! receipt is durable), MESSAGE, SYSLOG_IDENTIFIER=agentgate, PRIORITY; for
//! ACTION=change also OP (`rename`, `unlink`, …) and, for an op with a second
//! path, TO (a rename's or a link's new name, a symlink's contents).
//! E.g. `journalctl -t agentgate DECISION=deny SESSION=7`,
//! `journalctl -t agentgate OP=rename TO=/home/u/.bashrc`.
pub mod protocol;

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use serde_json::Value;
use thiserror::Error;

pub use self::protocol::{DEFAULT_SOCKET, Entry, Journal};
use crate::audit::{ActionKind, Outcome, Record, Verdict, receipt::hex};

pub const SYSLOG_IDENTIFIER: &str = "agentgate";

/// `--log json|journald|auto`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Json,
    Journald,
    /// journald when its socket exists, else JSON lines on stdout.
    Auto,
}

#[derive(Debug, Error)]
pub enum JournalError {
    #[error(
        "--log journald: no journal socket at {0} (is systemd-journald running? use --log json in containers)"
    )]
    NoSocket(PathBuf),
    #[error("sending to the journal at {path}: {source}")]
    Send { path: PathBuf, source: io::Error },
    #[error("writing a JSON verdict line: {0}")]
    Write(io::Error),
}

enum Output {
    Journald(Journal),
    Json(Mutex<Box<dyn Write + Send>>),
}

/// Where verdicts go. Cheap to share (`&Sink` from many tasks).
pub struct Sink {
    output: Output,
    log_allow: bool,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("kind", &self.kind())
            .field("log_allow", &self.log_allow)
            .finish()
    }
}

pub fn priority(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Kill => 2,
        Verdict::Deny => 4,
        Verdict::Refer | Verdict::Audit => 5,
        Verdict::Allow | Verdict::Unspecified => 6,
    }
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn verdict_of(r: &Record) -> Verdict {
    Verdict::try_from(r.decision.verdict).unwrap_or(Verdict::Unspecified)
}

/// One readable line: what, to what, by whom, why.
pub fn message(r: &Record) -> String {
    let outcome = Outcome::try_from(r.decision.outcome).unwrap_or(Outcome::Unspecified);
    let rule = if r.decision.rule.is_empty() {
        "default"
    } else {
        &r.decision.rule
    };
    let mut m = format!(
        "{} {} {} by pid {} ({}) in session {}",
        verdict_of(r).as_str(),
        r.action.verb(),
        r.action.target_text(),
        r.process.pid,
        r.process.exe,
        r.session.id,
    );
    if !r.session.principal.is_empty() {
        m.push_str(&format!(" for {}", r.session.principal));
    }
    m.push_str(&format!(": rule {rule} ({})", outcome.as_str()));
    if !r.decision.reason.is_empty() {
        m.push_str(&format!(": {}", r.decision.reason));
    }
    m
}

/// The journal entry for a verdict.
pub fn entry(r: &Record, receipt: Option<u64>) -> Entry {
    let verdict = verdict_of(r);
    let kind = ActionKind::try_from(r.action.kind).unwrap_or(ActionKind::Unspecified);
    let outcome = Outcome::try_from(r.decision.outcome).unwrap_or(Outcome::Unspecified);
    let mut e = Entry::new();
    e.field("MESSAGE", message(r))
        .field("PRIORITY", priority(verdict).to_string())
        .field("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER)
        .field("SESSION", r.session.id.to_string())
        .field("PRINCIPAL", &r.session.principal)
        .field("INTENT", &r.session.intent)
        .field("PROFILE", &r.session.profile)
        .field("ACTION", kind.as_str())
        .field("TARGET", &r.action.target)
        .field("DECISION", verdict.as_str())
        .field("OUTCOME", outcome.as_str())
        .field("RULE", &r.decision.rule)
        .field("REASON", &r.decision.reason)
        .field("POLICY_HASH", hex(&r.decision.policy_hash))
        .field("PID", r.process.pid.to_string())
        .field(
            "EXEC_ID",
            format!("{}:{}", r.process.pid, r.process.start_ns),
        )
        .field("EXE", &r.process.exe)
        .field("ARGV", r.process.argv.join(" "));
    if let Some(agent) = &r.session.agent {
        e.field("AGENT", &agent.exe);
        if !agent.sha256.is_empty() {
            e.field("AGENT_SHA256", hex(&agent.sha256));
        }
    }
    if !r.action.op.is_empty() {
        e.field("OP", &r.action.op);
    }
    if !r.action.to.is_empty() {
        e.field("TO", &r.action.to);
    }
    if r.action.tool_call != 0 {
        e.field("TOOL_CALL", r.action.tool_call.to_string());
        e.field("TOOL", &r.action.tool);
    }
    if r.session.delegation.len() > 2 {
        e.field("DELEGATION", r.session.delegation.join(" > "));
    }
    if let Some(seq) = receipt {
        e.field("RECEIPT", seq.to_string());
    }
    e
}

/// The JSON line for a verdict: the receipt's JSON form (see
/// `agentgate audit export --json`) plus time, message and receipt number.
pub fn json_line(r: &Record, receipt: Option<u64>) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("type".into(), "verdict".into());
    m.insert(
        "time".into(),
        humantime::format_rfc3339_micros(SystemTime::now())
            .to_string()
            .into(),
    );
    m.insert("message".into(), message(r).into());
    if let Some(seq) = receipt {
        m.insert("receipt".into(), seq.into());
    }
    m.extend(r.to_json());
    Value::Object(m)
}

impl Sink {
    /// The sink `--log` asks for. `socket` is journald's socket (normally
    /// [`DEFAULT_SOCKET`]); JSON goes to stdout.
    pub fn open(target: LogTarget, socket: &Path, log_allow: bool) -> Result<Self, JournalError> {
        let journald = || -> Result<Self, JournalError> {
            let journal = Journal::new(socket).map_err(|source| JournalError::Send {
                path: socket.to_owned(),
                source,
            })?;
            Ok(Self {
                output: Output::Journald(journal),
                log_allow,
            })
        };
        match target {
            LogTarget::Journald if is_socket(socket) => journald(),
            LogTarget::Journald => Err(JournalError::NoSocket(socket.to_owned())),
            LogTarget::Auto if is_socket(socket) => journald(),
            LogTarget::Auto | LogTarget::Json => Ok(Self::json(Box::new(io::stdout()), log_allow)),
        }
    }

    /// JSON lines to `out`.
    pub fn json(out: Box<dyn Write + Send>, log_allow: bool) -> Self {
        Self {
            output: Output::Json(Mutex::new(out)),
            log_allow,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.output {
            Output::Journald(_) => "journald",
            Output::Json(_) => "json",
        }
    }

    /// Reports a verdict; `receipt` is its audit sequence number once
    /// durable. Returns whether it was sent (allows are skipped unless
    /// `log_allow`).
    pub fn verdict(&self, r: &Record, receipt: Option<u64>) -> Result<bool, JournalError> {
        if verdict_of(r) == Verdict::Allow && !self.log_allow {
            return Ok(false);
        }
        match &self.output {
            Output::Journald(j) => {
                j.send(&entry(r, receipt))
                    .map_err(|source| JournalError::Send {
                        path: j.path().to_owned(),
                        source,
                    })?
            }
            Output::Json(out) => {
                let mut line = serde_json::to_vec(&json_line(r, receipt))
                    .map_err(|e| JournalError::Write(e.into()))?;
                line.push(b'\n');
                // A poisoned lock only means another writer panicked mid-line;
                // the writer itself is still usable.
                let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                out.write_all(&line)
                    .and_then(|()| out.flush())
                    .map_err(JournalError::Write)?;
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::receipt::tests::sample;

    /// A `Write` the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn priorities_follow_severity() {
        assert_eq!(priority(Verdict::Kill), 2);
        assert_eq!(priority(Verdict::Deny), 4);
        assert_eq!(priority(Verdict::Refer), 5);
        assert_eq!(priority(Verdict::Allow), 6);
    }

    #[test]
    fn json_sink_writes_one_line_per_verdict_and_skips_allows() {
        let buf = Shared::default();
        let sink = Sink::json(Box::new(buf.clone()), false);
        let deny = sample(1);
        let mut allow = sample(2);
        allow.decision.verdict = Verdict::Allow as i32;
        assert!(sink.verdict(&deny, Some(12)).unwrap());
        assert!(!sink.verdict(&allow, None).unwrap());
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["decision"]["verdict"], "deny");
        assert_eq!(lines[0]["decision"]["outcome"], "forbidden");
        assert_eq!(lines[0]["session"]["principal"], "alice");
        assert_eq!(lines[0]["receipt"], 12);
        assert!(
            lines[0]["message"]
                .as_str()
                .unwrap()
                .starts_with("deny exec /usr/bin/curl")
        );
        assert!(lines[0]["action"].get("op").is_none());

        let all = Sink::json(Box::new(Shared::default()), true);
        assert!(all.verdict(&allow, None).unwrap());
    }

    #[test]
    fn entry_has_the_documented_fields() {
        let text = String::from_utf8_lossy(entry(&sample(1), Some(3)).as_bytes()).into_owned();
        for field in [
            "SESSION=8",
            "PRINCIPAL=alice",
            "AGENT=/usr/bin/claude",
            "INTENT=fix the failing test",
            "ACTION=exec",
            "TARGET=/usr/bin/curl#1",
            "DECISION=deny",
            "OUTCOME=forbidden",
            "RULE=no-network-tools",
            "PID=4242",
            "EXE=/usr/bin/curl",
            "SYSLOG_IDENTIFIER=agentgate",
            "PRIORITY=4",
            "RECEIPT=3",
        ] {
            assert!(
                text.lines().any(|l| l == field),
                "{field} missing in {text}"
            );
        }
    }

    #[test]
    fn a_change_names_its_op_and_both_paths() {
        let mut r = sample(1);
        r.action = crate::audit::Action {
            kind: ActionKind::Change as i32,
            target: "/tmp/x".into(),
            op: "rename".into(),
            to: "/home/u/.bashrc".into(),
            ..Default::default()
        };
        let text = String::from_utf8_lossy(entry(&r, None).as_bytes()).into_owned();
        for field in [
            "ACTION=change",
            "OP=rename",
            "TARGET=/tmp/x",
            "TO=/home/u/.bashrc",
        ] {
            assert!(
                text.lines().any(|l| l == field),
                "{field} missing in {text}"
            );
        }
        assert!(
            message(&r).starts_with("deny rename /tmp/x -> /home/u/.bashrc by pid 4242"),
            "{}",
            message(&r)
        );
        let line = json_line(&r, None);
        assert_eq!(line["action"]["op"], "rename");
        assert_eq!(line["action"]["to"], "/home/u/.bashrc");
        // Other calls have neither.
        let text = String::from_utf8_lossy(entry(&sample(1), None).as_bytes()).into_owned();
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("OP=") || l.starts_with("TO="))
        );
    }

    #[test]
    fn journald_target_without_a_socket_is_an_error_and_auto_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("socket");
        assert!(matches!(
            Sink::open(LogTarget::Journald, &none, false),
            Err(JournalError::NoSocket(_))
        ));
        assert_eq!(
            Sink::open(LogTarget::Auto, &none, false).unwrap().kind(),
            "json"
        );
        let _server = std::os::unix::net::UnixDatagram::bind(&none).unwrap();
        assert_eq!(
            Sink::open(LogTarget::Auto, &none, false).unwrap().kind(),
            "journald"
        );
    }
}
