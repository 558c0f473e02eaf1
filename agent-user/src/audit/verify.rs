//! Offline verification: every link and every signature, first problem by
//! sequence number.
//!
//! What it proves: every stored receipt is unchanged, none is missing,
//! reordered or inserted between the start and the last one, and every
//! checkpoint was signed by the given key over the hash the chain has at that
//! point; a checkpoint beyond the last receipt shows the tail was cut.
//! What it cannot prove: that receipts after the last checkpoint were not cut
//! together with nothing signed after them. Checkpoints every N receipts or T
//! seconds bound that window.
use std::collections::BTreeMap;

use thiserror::Error;

use super::{
    receipt::{self, GENESIS, Hash, Link},
    sign::{Checkpoint, CheckpointKind, Verifier},
    store::{self, CF_CHECKPOINTS, CF_META, CF_RECEIPTS, Reader, START_KEY, StoreError},
};

/// What is wrong at one sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    #[error("changed: its contents do not match its hash")]
    Changed,
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("missing (the next stored receipt is {next})")]
    Missing { next: u64 },
    #[error("reordered: the receipt stored under {seq} says it is receipt {found}")]
    Reordered { seq: u64, found: u64 },
    #[error(
        "does not link to receipt {prev}: receipt {prev} was changed or replaced, or this one was"
    )]
    BrokenLink { prev: u64 },
    #[error("precedes the start of the log ({start}, set by retention)")]
    BeforeStart { start: u64 },
    #[error("does not match the signed checkpoint at {seq}")]
    CheckpointMismatch { seq: u64 },
    #[error("truncated: the log ends at {last} but a signed checkpoint covers up to {signed}")]
    Truncated { last: u64, signed: u64 },
    #[error("{what}: bad signature ({why})")]
    BadSignature { what: &'static str, why: String },
}

/// The first bad sequence number and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct Failure {
    pub seq: u64,
    pub problem: Problem,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.problem {
            Problem::BadSignature { .. } => {
                write!(f, "checkpoint at receipt {}: {}", self.seq, self.problem)
            }
            _ => write!(f, "receipt {}: {}", self.seq, self.problem),
        }
    }
}

#[derive(Debug, Error)]
pub enum VerifyError {
    #[error(transparent)]
    Bad(#[from] Failure),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A clean store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// First and last receipt (None: empty log).
    pub range: Option<(u64, u64)>,
    pub receipts: u64,
    pub checkpoints: u64,
    /// Newest receipt fixed by a signature.
    pub signed_up_to: Option<u64>,
    /// Where retention made the log start (None: it starts at 1).
    pub start: Option<u64>,
}

fn fail(seq: u64, problem: Problem) -> Failure {
    Failure { seq, problem }
}

pub fn verify(reader: &Reader, key: &Verifier) -> Result<Verified, VerifyError> {
    let db = reader.db();
    let mut report = Verified::default();

    // The start: 1 from zeros, or the signed start checkpoint.
    let (mut expect, mut prev) = (1u64, GENESIS);
    if let Some(stored) = db
        .get_cf(store::cf(db, CF_META), START_KEY)
        .map_err(|e| reader.db_error(e))?
    {
        let claimed = prost::Message::decode(stored.as_slice()).map_or(0, |cp: Checkpoint| cp.seq);
        let cp = key.open(&stored).map_err(|e| {
            fail(
                claimed,
                Problem::BadSignature {
                    what: "start checkpoint",
                    why: e.to_string(),
                },
            )
        })?;
        let hash = Hash::try_from(cp.hash.as_slice())
            .map_err(|_| fail(cp.seq, Problem::Malformed("start checkpoint hash")))?;
        if cp.kind != CheckpointKind::Start as i32 {
            return Err(fail(cp.seq, Problem::Malformed("start checkpoint kind")).into());
        }
        (expect, prev) = (cp.seq, hash);
        report.start = Some(cp.seq);
    }

    // Every checkpoint's signature; the first bad one by seq is kept until
    // the receipts before it have been checked.
    let mut signed: BTreeMap<u64, Hash> = BTreeMap::new();
    let mut bad_checkpoint: Option<Failure> = None;
    for item in db.iterator_cf(store::cf(db, CF_CHECKPOINTS), rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(|e| reader.db_error(e))?;
        let seq = store::key_seq(&k).unwrap_or(0);
        let checked = key
            .open(&v)
            .map_err(|e| Problem::BadSignature {
                what: "checkpoint",
                why: e.to_string(),
            })
            .and_then(|cp| {
                if cp.seq != seq || cp.kind != CheckpointKind::Periodic as i32 {
                    return Err(Problem::Malformed("checkpoint stored under another seq"));
                }
                Hash::try_from(cp.hash.as_slice())
                    .map_err(|_| Problem::Malformed("checkpoint hash"))
            });
        match checked {
            Ok(hash) => {
                signed.insert(seq, hash);
            }
            Err(problem) => {
                bad_checkpoint.get_or_insert(fail(seq, problem));
                break;
            }
        }
    }
    report.checkpoints = signed.len() as u64;
    let first_problem = |found: Failure, bad_checkpoint: Option<Failure>| match bad_checkpoint {
        Some(cp) if cp.seq < found.seq => cp,
        _ => found,
    };

    // The chain.
    let mut it = db.raw_iterator_cf_opt(store::cf(db, CF_RECEIPTS), store::scan_options());
    it.seek_to_first();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let check = || -> Result<Hash, Failure> {
            let Some(seq) = store::key_seq(k) else {
                return Err(fail(
                    expect,
                    Problem::Malformed("a key is not a sequence number"),
                ));
            };
            if seq < expect {
                let start = report.start.unwrap_or(1);
                return Err(fail(seq, Problem::BeforeStart { start }));
            }
            if seq > expect {
                return Err(fail(expect, Problem::Missing { next: seq }));
            }
            let (body, stored) =
                receipt::split(v).ok_or_else(|| fail(seq, Problem::Malformed("no hash field")))?;
            if receipt::hash_body(body) != *stored {
                return Err(fail(seq, Problem::Changed));
            }
            let link: Link = prost::Message::decode(body)
                .map_err(|_| fail(seq, Problem::Malformed("does not decode")))?;
            if link.seq != seq {
                return Err(fail(
                    seq,
                    Problem::Reordered {
                        seq,
                        found: link.seq,
                    },
                ));
            }
            if link.prev_hash != prev {
                return Err(fail(seq, Problem::BrokenLink { prev: seq - 1 }));
            }
            if signed.get(&seq).is_some_and(|h| h != stored) {
                return Err(fail(seq, Problem::CheckpointMismatch { seq }));
            }
            Ok(*stored)
        };
        match check() {
            Ok(hash) => {
                prev = hash;
                report.receipts += 1;
                report.range = Some((report.range.map_or(expect, |r| r.0), expect));
                expect += 1;
            }
            Err(found) => return Err(first_problem(found, bad_checkpoint).into()),
        }
        if bad_checkpoint.as_ref().is_some_and(|cp| cp.seq < expect) {
            break;
        }
        it.next();
    }
    it.status().map_err(|e| reader.db_error(e))?;
    if let Some(cp) = bad_checkpoint {
        return Err(cp.into());
    }

    let last = expect - 1;
    if let Some((&newest, _)) = signed.range(expect..).next_back() {
        return Err(fail(
            expect,
            Problem::Truncated {
                last,
                signed: newest,
            },
        )
        .into());
    }
    report.signed_up_to = signed.range(..expect).next_back().map(|(s, _)| *s);
    Ok(report)
}
