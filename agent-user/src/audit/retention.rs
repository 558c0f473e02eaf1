//! Retention: deleting the oldest receipts without breaking verification.
//!
//! One atomic, synced `WriteBatch` range-deletes the receipts (and their
//! index entries and checkpoints) before the new first receipt `S`, and
//! stores a signed *start* checkpoint `{S, hash of receipt S-1}`. `verify`
//! then starts the chain at `S` from that hash: the kept receipts still have
//! to link to it, and deleting any of them is still caught.
use rocksdb::{Range, WriteBatch};

use super::{
    log::{Writer, now_ns},
    receipt::{self, Hash, Link},
    sign::CheckpointKind,
    store::{self, CF_CHECKPOINTS, CF_META, CF_RECEIPTS, CF_SESSIONS, START_KEY},
};

impl Writer {
    fn first_seq(&self) -> Option<u64> {
        self.db
            .iterator_cf(
                store::cf(&self.db, CF_RECEIPTS),
                rocksdb::IteratorMode::Start,
            )
            .next()
            .and_then(Result::ok)
            .and_then(|(k, _)| store::key_seq(&k))
    }

    /// Reads a receipt's chain fields and checks its own hash.
    fn link(&self, seq: u64) -> Result<(Link, Hash), String> {
        let value = self
            .db
            .get_pinned_cf(store::cf(&self.db, CF_RECEIPTS), store::seq_key(seq))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("receipt {seq} is missing"))?;
        let (body, stored) =
            receipt::split(&value).ok_or_else(|| format!("receipt {seq} is malformed"))?;
        if receipt::hash_body(body) != *stored {
            return Err(format!("receipt {seq} does not match its hash"));
        }
        let link: Link =
            prost::Message::decode(body).map_err(|_| format!("receipt {seq} does not decode"))?;
        Ok((link, *stored))
    }

    /// The first receipt that the limits keep, if that deletes any.
    pub(super) fn enforce_retention(&mut self) -> Result<Option<u64>, String> {
        let limits = self.config.retention.clone();
        if limits.max_age.is_none() && limits.max_bytes.is_none() {
            return Ok(None);
        }
        let Some(first) = self.first_seq() else {
            return Ok(None);
        };
        let last = self.last_seq();
        let mut keep = first;
        if let Some(age) = limits.max_age {
            let cutoff = now_ns().saturating_sub(age.as_nanos() as u64);
            // Receipt times never decrease (the writer clamps them), so the
            // first young-enough receipt is found by bisection.
            let (mut lo, mut hi) = (first, last);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if self.link(mid)?.0.time_ns >= cutoff {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            keep = keep.max(lo);
        }
        if let Some(max) = limits.max_bytes {
            let receipts = store::cf(&self.db, CF_RECEIPTS);
            // The size estimate covers table files only: flush first.
            self.db.flush_cf(receipts).map_err(|e| e.to_string())?;
            let (from, to) = (store::seq_key(first), store::seq_key(last + 1));
            let size = self
                .db
                .get_approximate_sizes_cf(receipts, &[Range::new(&from, &to)])[0];
            if size > max {
                let count = u128::from(last - first + 1);
                let excess = u128::from(size - max);
                let drop = (excess * count).div_ceil(u128::from(size)) as u64;
                keep = keep.max(first + drop);
            }
        }
        if keep > first {
            self.compact_before(keep)
        } else {
            Ok(None)
        }
    }

    /// Deletes every receipt before `keep` (at most up to the newest).
    pub(super) fn compact_before(&mut self, keep: u64) -> Result<Option<u64>, String> {
        let keep = keep.min(self.last_seq());
        let Some(first) = self.first_seq() else {
            return Ok(None);
        };
        if keep <= first {
            return Ok(None);
        }
        // Refuse to sign over a broken link: the new start must be the real
        // successor of the last receipt deleted.
        let (link, _) = self.link(keep)?;
        let (_, before) = self.link(keep - 1)?;
        if link.prev_hash != before {
            return Err(format!(
                "refusing to delete before {keep}: it does not link to receipt {}; run `agentgate audit verify`",
                keep - 1
            ));
        }

        let mut batch = WriteBatch::default();
        let (zero, end) = (store::seq_key(0), store::seq_key(keep));
        batch.delete_range_cf(store::cf(&self.db, CF_RECEIPTS), zero, end);
        batch.delete_range_cf(store::cf(&self.db, CF_CHECKPOINTS), zero, end);
        // The index is keyed session ‖ seq: one range per session.
        let sessions = store::cf(&self.db, CF_SESSIONS);
        let mut it = self.db.raw_iterator_cf(sessions);
        it.seek_to_first();
        while let Some(key) = it.key() {
            let session = u64::from_be_bytes(key[..8].try_into().map_err(|_| "bad index key")?);
            batch.delete_range_cf(
                sessions,
                store::session_key(session, 0),
                store::session_key(session, keep),
            );
            match session.checked_add(1) {
                Some(next) => it.seek(store::session_key(next, 0)),
                None => break,
            }
        }
        it.status().map_err(|e| e.to_string())?;
        drop(it);
        let time_ns = now_ns().max(self.last_time_ns);
        batch.put_cf(
            store::cf(&self.db, CF_META),
            START_KEY,
            self.signer
                .seal(CheckpointKind::Start, keep, &before, time_ns),
        );
        self.write(batch).map_err(|e| e.to_string())?;
        // Give the space back now: drops the table files wholly inside the
        // deleted range (the rest goes with RocksDB's compactions).
        if let Err(e) = self.db.delete_file_in_range_cf(
            store::cf(&self.db, CF_RECEIPTS),
            store::seq_key(0),
            store::seq_key(keep),
        ) {
            log::warn!("audit log: freeing deleted receipts' files: {e}");
        }
        Ok(Some(keep))
    }
}
