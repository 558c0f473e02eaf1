//! `agentgate audit export`: receipts as JSON lines, plain or OCSF.
//!
//! OCSF (schema 1.1.0) classes, by what was acted on:
//!
//! | action  | class                          | activity    |
//! | ------- | ------------------------------ | ----------- |
//! | exec    | 1007 Process Activity (cat. 1) | 1 Launch    |
//! | open    | 1001 File System Activity (1)  | 14 Open     |
//! | connect | 4001 Network Activity (cat. 4) | 1 Open      |
//! | change  | 1001 File System Activity      | by its op, below |
//! | other   | 1007 Process Activity          | 99 Other    |
//!
//! | change op                     | activity       |
//! | ----------------------------- | -------------- |
//! | mkdir, mknod, symlink, link   | 1 Create       |
//! | truncate                      | 3 Update       |
//! | unlink, rmdir                 | 4 Delete       |
//! | rename                        | 5 Rename       |
//! | chmod, chown                  | 7 Set Security |
//!
//! A change's `file` is its object (a link's or a rename's source, a
//! symlink's new name); the new name of a rename or a link is its
//! `file_result`. chmod and chown are Set Security, not Set Attributes:
//! mode bits and owner say who may reach the file, which is what OCSF
//! keeps apart as security (its Set Attributes is for times, flags and the
//! like). A symlink's contents, which OCSF has no place for, are under
//! `unmapped.to`.
//!
//! A decision is an access-control outcome, which OCSF carries in
//! `action_id` (1 Allowed / 2 Denied) and `disposition_id` (1 Allowed,
//! 17 Logged for `audit`, 2 Blocked for deny, refer and kill); `status_id` is
//! 1 Success when the call went ahead, 2 Failure when it was stopped. The
//! AARM outcome, rule, reason, policy hash, intent, delegation chain and the
//! receipt's hashes, which OCSF has no place for, are under `unmapped`.
use std::{
    io::{self, Write},
    net::SocketAddr,
    time::{Duration, UNIX_EPOCH},
};

use agent_common::FileOp;
use agentgate_policy::event::file_op_named;
use serde_json::{Map, Value, json};
use thiserror::Error;

use super::{
    receipt::{
        self, Action, ActionKind, Decision, Outcome, Process, Receipt, Record, Session, Verdict,
    },
    store::{self, CF_RECEIPTS, CF_SESSIONS, Reader, StoreError},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Ocsf,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    pub session: Option<u64>,
    /// Receipts at or after this time (ns since the Unix epoch).
    pub since_ns: Option<u64>,
}

#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("receipt {0} does not decode; run `agentgate audit verify`")]
    Decode(u64),
    #[error("writing the export: {0}")]
    Io(#[from] io::Error),
}

pub fn rfc3339(time_ns: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(time_ns)).to_string()
}

fn verdict(d: &Decision) -> Verdict {
    Verdict::try_from(d.verdict).unwrap_or(Verdict::Unspecified)
}

fn outcome(d: &Decision) -> Outcome {
    Outcome::try_from(d.outcome).unwrap_or(Outcome::Unspecified)
}

fn kind(a: &Action) -> ActionKind {
    ActionKind::try_from(a.kind).unwrap_or(ActionKind::Unspecified)
}

/// The decision fields as one JSON object (the form of `export --json` and
/// of the daemon's `--log json` verdict lines).
pub fn record_json(s: &Session, p: &Process, a: &Action, d: &Decision) -> Map<String, Value> {
    let agent = s.agent.as_ref().map(|g| {
        json!({
            "exe": g.exe,
            "sha256": (!g.sha256.is_empty()).then(|| receipt::hex(&g.sha256)),
        })
    });
    let mut m = Map::new();
    m.insert(
        "session".into(),
        json!({
            "id": s.id,
            "principal": s.principal,
            "agent": agent,
            "intent": s.intent,
            "delegation": s.delegation,
            "profile": s.profile,
        }),
    );
    m.insert(
        "process".into(),
        json!({
            "pid": p.pid,
            "start_ns": p.start_ns,
            "exec_id": format!("{}:{}", p.pid, p.start_ns),
            "exe": p.exe,
            "argv": p.argv,
            "uid": p.uid,
            "ppid": p.ppid,
        }),
    );
    let mut action = json!({ "kind": kind(a).as_str(), "target": a.target });
    if !a.op.is_empty() {
        action["op"] = a.op.clone().into();
    }
    if !a.to.is_empty() {
        action["to"] = a.to.clone().into();
    }
    m.insert("action".into(), action);
    m.insert(
        "decision".into(),
        json!({
            "verdict": verdict(d).as_str(),
            "outcome": outcome(d).as_str(),
            "rule": d.rule,
            "reason": d.reason,
            "policy_hash": receipt::hex(&d.policy_hash),
        }),
    );
    m
}

impl Record {
    pub fn to_json(&self) -> Map<String, Value> {
        record_json(&self.session, &self.process, &self.action, &self.decision)
    }
}

fn parts(r: &Receipt) -> (Session, Process, Action, Decision) {
    (
        r.session.clone().unwrap_or_default(),
        r.process.clone().unwrap_or_default(),
        r.action.clone().unwrap_or_default(),
        r.decision.clone().unwrap_or_default(),
    )
}

pub fn receipt_json(r: &Receipt) -> Value {
    let (s, p, a, d) = parts(r);
    let mut m = Map::new();
    m.insert("seq".into(), r.seq.into());
    m.insert("time".into(), rfc3339(r.time_ns).into());
    m.insert("time_ns".into(), r.time_ns.into());
    m.extend(record_json(&s, &p, &a, &d));
    m.insert("prev_hash".into(), receipt::hex(&r.prev_hash).into());
    m.insert("hash".into(), receipt::hex(&r.hash).into());
    Value::Object(m)
}

/// OCSF's `network_endpoint` for a connect target.
fn endpoint(target: &str) -> Value {
    match target.parse::<SocketAddr>() {
        Ok(addr) => json!({ "ip": addr.ip().to_string(), "port": addr.port() }),
        Err(_) => json!({ "name": target }),
    }
}

/// OCSF's File System Activity `activity_id` and name for a change's op
/// (see the module documentation).
fn change_activity(op: &str) -> (u32, &'static str) {
    match file_op_named(op) {
        Some(FileOp::Mkdir | FileOp::Mknod | FileOp::Symlink | FileOp::Link | FileOp::Create) => {
            (1, "Create")
        }
        Some(FileOp::Unlink | FileOp::Rmdir) => (4, "Delete"),
        Some(FileOp::Rename) => (5, "Rename"),
        Some(FileOp::Truncate) => (3, "Update"),
        Some(FileOp::Chmod | FileOp::Chown) => (7, "Set Security"),
        None => (99, "Other"),
    }
}

/// OCSF's file `type_id` of what a change acts on, where the op says it:
/// 2 Folder, 7 Symbolic Link, else 0 Unknown (a rename or an unlink may
/// act on any kind of file).
fn changed_file_type(op: Option<FileOp>) -> u32 {
    match op {
        Some(FileOp::Mkdir | FileOp::Rmdir) => 2,
        Some(FileOp::Symlink) => 7,
        _ => 0,
    }
}

pub fn receipt_ocsf(r: &Receipt) -> Value {
    let (s, p, a, d) = parts(r);
    let v = verdict(&d);
    let (class_uid, class_name, category_uid, category_name, activity_id, activity_name) =
        match kind(&a) {
            ActionKind::Exec => (1007, "Process Activity", 1, "System Activity", 1, "Launch"),
            ActionKind::Open => (
                1001,
                "File System Activity",
                1,
                "System Activity",
                14,
                "Open",
            ),
            ActionKind::Connect => (4001, "Network Activity", 4, "Network Activity", 1, "Open"),
            ActionKind::Change => {
                let (id, name) = change_activity(&a.op);
                (1001, "File System Activity", 1, "System Activity", id, name)
            }
            ActionKind::Other | ActionKind::Unspecified => {
                (1007, "Process Activity", 1, "System Activity", 99, "Other")
            }
        };
    let stopped = matches!(v, Verdict::Deny | Verdict::Refer | Verdict::Kill);
    let (severity_id, severity) = match v {
        Verdict::Kill => (4, "High"),
        Verdict::Deny => (3, "Medium"),
        Verdict::Refer => (2, "Low"),
        Verdict::Allow | Verdict::Audit | Verdict::Unspecified => (1, "Informational"),
    };
    let (disposition_id, disposition) = match v {
        Verdict::Allow => (1, "Allowed"),
        Verdict::Audit => (17, "Logged"),
        Verdict::Deny | Verdict::Refer | Verdict::Kill => (2, "Blocked"),
        Verdict::Unspecified => (0, "Unknown"),
    };
    let actor_process = json!({
        "pid": p.pid,
        "uid": format!("{}:{}", p.pid, p.start_ns),
        "file": { "path": p.exe, "type_id": 1 },
        "user": { "uid": p.uid.to_string() },
    });
    let mut e = Map::new();
    for (k, val) in [
        ("class_uid", json!(class_uid)),
        ("class_name", json!(class_name)),
        ("category_uid", json!(category_uid)),
        ("category_name", json!(category_name)),
        ("activity_id", json!(activity_id)),
        ("activity_name", json!(activity_name)),
        ("type_uid", json!(class_uid * 100 + activity_id)),
        ("time", json!(r.time_ns / 1_000_000)),
        ("severity_id", json!(severity_id)),
        ("severity", json!(severity)),
        ("status_id", json!(if stopped { 2 } else { 1 })),
        ("status", json!(if stopped { "Failure" } else { "Success" })),
        ("status_detail", json!(d.reason)),
        ("action_id", json!(if stopped { 2 } else { 1 })),
        ("action", json!(if stopped { "Denied" } else { "Allowed" })),
        ("disposition_id", json!(disposition_id)),
        ("disposition", json!(disposition)),
        (
            "message",
            json!(format!("{} {} {}", v.as_str(), a.verb(), a.target_text())),
        ),
        (
            "metadata",
            json!({
                "version": "1.1.0",
                "product": { "name": "agentgate", "vendor_name": "agentgate" },
                "log_name": "agentgate-audit",
                "uid": r.seq.to_string(),
                "sequence": r.seq,
            }),
        ),
        (
            "actor",
            json!({
                "user": { "name": s.principal },
                "session": { "uid": s.id.to_string() },
                "process": actor_process,
            }),
        ),
    ] {
        e.insert(k.into(), val);
    }
    match kind(&a) {
        ActionKind::Exec => {
            e.insert(
                "process".into(),
                json!({
                    "pid": p.pid,
                    "file": { "path": a.target, "type_id": 1 },
                    "cmd_line": p.argv.join(" "),
                }),
            );
        }
        ActionKind::Open => {
            e.insert("file".into(), json!({ "path": a.target, "type_id": 1 }));
        }
        ActionKind::Change => {
            let op = file_op_named(&a.op);
            e.insert(
                "file".into(),
                json!({ "path": a.target, "type_id": changed_file_type(op) }),
            );
            if matches!(op, Some(FileOp::Rename | FileOp::Link)) {
                e.insert(
                    "file_result".into(),
                    json!({ "path": a.to, "type_id": changed_file_type(op) }),
                );
            }
        }
        ActionKind::Connect => {
            e.insert("dst_endpoint".into(), endpoint(&a.target));
        }
        ActionKind::Other | ActionKind::Unspecified => {
            e.insert("process".into(), actor_process);
        }
    }
    e.insert(
        "unmapped".into(),
        json!({
            "verdict": v.as_str(),
            "aarm_outcome": outcome(&d).as_str(),
            "rule": d.rule,
            "policy_hash": receipt::hex(&d.policy_hash),
            "intent": s.intent,
            "profile": s.profile,
            "delegation": s.delegation,
            "agent": s.agent.as_ref().map(|g| json!({
                "exe": g.exe,
                "sha256": receipt::hex(&g.sha256),
            })),
            "target": a.target,
            "op": (!a.op.is_empty()).then_some(&a.op),
            "to": (!a.to.is_empty()).then_some(&a.to),
            "receipt_hash": receipt::hex(&r.hash),
            "prev_hash": receipt::hex(&r.prev_hash),
        }),
    );
    Value::Object(e)
}

/// Writes the receipts that pass `filter`, one JSON object a line; returns
/// how many.
pub fn export(
    reader: &Reader,
    filter: &Filter,
    format: Format,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    let db = reader.db();
    let receipts = store::cf(db, CF_RECEIPTS);
    let mut written = 0;
    let mut emit = |seq: u64, bytes: &[u8]| -> Result<(), ExportError> {
        let r: Receipt = prost::Message::decode(bytes).map_err(|_| ExportError::Decode(seq))?;
        if filter.since_ns.is_some_and(|t| r.time_ns < t) {
            return Ok(());
        }
        let line = match format {
            Format::Json => receipt_json(&r),
            Format::Ocsf => receipt_ocsf(&r),
        };
        serde_json::to_writer(&mut *out, &line).map_err(io::Error::from)?;
        out.write_all(b"\n")?;
        written += 1;
        Ok(())
    };
    match filter.session {
        None => {
            let mut it = db.raw_iterator_cf_opt(receipts, store::scan_options());
            it.seek_to_first();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                emit(store::key_seq(k).unwrap_or(0), v)?;
                it.next();
            }
            it.status().map_err(|e| reader.db_error(e))?;
        }
        Some(session) => {
            let mut it = db.raw_iterator_cf(store::cf(db, CF_SESSIONS));
            it.seek(store::session_key(session, 0));
            while let Some(k) = it.key() {
                if k.get(..8) != Some(&session.to_be_bytes()[..]) {
                    break;
                }
                let seq = store::key_seq(&k[8..]).unwrap_or(0);
                // An index entry whose receipt retention removed meanwhile
                // is skipped.
                if let Some(v) = db
                    .get_pinned_cf(receipts, store::seq_key(seq))
                    .map_err(|e| reader.db_error(e))?
                {
                    emit(seq, &v)?;
                }
                it.next();
            }
            it.status().map_err(|e| reader.db_error(e))?;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::receipt::{GENESIS, tests::sample};

    fn change(op: &str, target: &str, to: &str) -> Receipt {
        let mut r = sample(1);
        r.action = Action {
            kind: ActionKind::Change as i32,
            target: target.into(),
            op: op.into(),
            to: to.into(),
            ..Default::default()
        };
        r.into_receipt(1, 1, &GENESIS)
    }

    #[test]
    fn changes_are_file_system_activity_by_their_op() {
        for (op, activity) in [
            ("mkdir", 1),
            ("mknod", 1),
            ("symlink", 1),
            ("link", 1),
            ("truncate", 3),
            ("unlink", 4),
            ("rmdir", 4),
            ("rename", 5),
            ("chmod", 7),
            ("chown", 7),
        ] {
            let e = receipt_ocsf(&change(op, "/work/ws/a", ""));
            assert_eq!(e["class_uid"], 1001, "{op}");
            assert_eq!(e["activity_id"], activity, "{op}");
            assert_eq!(e["type_uid"], 100100 + activity, "{op}");
            assert_eq!(e["file"]["path"], "/work/ws/a", "{op}");
        }
        let e = receipt_ocsf(&change("rename", "/tmp/x", "/home/u/.bashrc"));
        assert_eq!(e["activity_name"], "Rename");
        assert_eq!(e["file_result"]["path"], "/home/u/.bashrc");
        assert_eq!(e["message"], "deny rename /tmp/x -> /home/u/.bashrc");
        assert_eq!(e["unmapped"]["op"], "rename");
        // A symlink's contents are no file of the call.
        let e = receipt_ocsf(&change("symlink", "/work/ws/s", "/etc/shadow"));
        assert_eq!(e["file"]["type_id"], 7);
        assert!(e.get("file_result").is_none());
        assert_eq!(e["unmapped"]["to"], "/etc/shadow");
    }

    #[test]
    fn json_names_a_changes_op_and_second_path_only_for_changes() {
        let j = receipt_json(&change("link", "/home/u/.ssh/id_rsa", "/work/ws/k"));
        assert_eq!(j["action"]["kind"], "change");
        assert_eq!(j["action"]["op"], "link");
        assert_eq!(j["action"]["target"], "/home/u/.ssh/id_rsa");
        assert_eq!(j["action"]["to"], "/work/ws/k");
        let j = receipt_json(&sample(1).into_receipt(1, 1, &GENESIS));
        assert!(j["action"].get("op").is_none() && j["action"].get("to").is_none());
    }
}
