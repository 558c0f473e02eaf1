//! `audit export`: JSON lines, plain and OCSF, filtered by session and time.
use agentgate::audit::{
    Reader,
    export::{Filter, Format, export},
};
use serde_json::Value;

use crate::common::filled;

fn lines(dir: &std::path::Path, filter: Filter, format: Format) -> Vec<Value> {
    let mut out = Vec::new();
    let n = export(&Reader::open(dir).unwrap(), &filter, format, &mut out).unwrap();
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, n);
    lines
}

#[test]
fn json_has_every_receipt_with_its_chain() {
    let dir = filled(30);
    let all = lines(dir.path(), Filter::default(), Format::Json);
    assert_eq!(all.len(), 30);
    assert_eq!(all[0]["seq"], 1);
    assert_eq!(all[0]["prev_hash"], "0".repeat(64));
    for w in all.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
    }
    assert_eq!(all[4]["decision"]["verdict"], "deny");
    assert_eq!(all[4]["session"]["principal"], "alice");
    assert_eq!(all[4]["process"]["exec_id"], "1005:123456794");
}

#[test]
fn session_and_since_filters() {
    let dir = filled(40);
    // record(n) for the n-th append (1-based) is in session 1 + n % 4.
    let s2 = lines(
        dir.path(),
        Filter {
            session: Some(2),
            ..Filter::default()
        },
        Format::Json,
    );
    assert_eq!(s2.len(), 10);
    assert!(s2.iter().all(|r| r["session"]["id"] == 2));
    let seqs: Vec<u64> = s2.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));

    let all = lines(dir.path(), Filter::default(), Format::Json);
    let t = all[20]["time_ns"].as_u64().unwrap();
    let since = lines(
        dir.path(),
        Filter {
            since_ns: Some(t),
            ..Filter::default()
        },
        Format::Json,
    );
    assert!(!since.is_empty());
    assert!(since.iter().all(|r| r["time_ns"].as_u64().unwrap() >= t));
    assert!(
        lines(
            dir.path(),
            Filter {
                since_ns: Some(u64::MAX),
                ..Filter::default()
            },
            Format::Json
        )
        .is_empty()
    );
}

#[test]
fn ocsf_classes_by_action() {
    let dir = filled(6);
    let all = lines(dir.path(), Filter::default(), Format::Ocsf);
    // seq n carries record(n): n % 3 == 0 exec, 1 open, 2 connect.
    let by_seq = |n: usize| &all[n - 1];
    assert_eq!(by_seq(3)["class_uid"], 1007);
    assert_eq!(by_seq(3)["type_uid"], 100701);
    assert_eq!(by_seq(3)["process"]["file"]["path"], "/usr/bin/tool3");
    assert_eq!(by_seq(4)["class_uid"], 1001);
    assert_eq!(by_seq(4)["activity_id"], 14);
    assert_eq!(by_seq(4)["file"]["path"], "/home/alice/.ssh/id_4");
    assert_eq!(by_seq(5)["class_uid"], 4001);
    assert_eq!(by_seq(5)["dst_endpoint"]["ip"], "10.0.0.5");
    assert_eq!(by_seq(5)["dst_endpoint"]["port"], 443);
    // record(5) is a deny: blocked, failure; record(4) an allow.
    assert_eq!(by_seq(5)["action_id"], 2);
    assert_eq!(by_seq(5)["disposition_id"], 2);
    assert_eq!(by_seq(5)["status_id"], 2);
    assert_eq!(by_seq(4)["action_id"], 1);
    assert_eq!(by_seq(4)["disposition_id"], 1);
    assert_eq!(by_seq(5)["unmapped"]["aarm_outcome"], "forbidden");
    assert_eq!(by_seq(5)["metadata"]["sequence"], 5);
    assert_eq!(by_seq(5)["actor"]["user"]["name"], "alice");
}
