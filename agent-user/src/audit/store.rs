//! The RocksDB layout of the audit log, and read-only access to it.
//!
//! `<state-dir>/audit` holds four column families:
//!
//! | family        | key                              | value                         |
//! | ------------- | -------------------------------- | ----------------------------- |
//! | `receipts`    | seq (u64 big-endian)             | sealed [`Receipt`](super::receipt::Receipt) |
//! | `sessions`    | session id (BE) ‖ seq (BE)       | empty: the per-session index  |
//! | `checkpoints` | seq (BE)                         | signed periodic checkpoint    |
//! | `meta`        | `start`                          | signed start checkpoint (after retention) |
//!
//! Big-endian keys make RocksDB's byte order the sequence order.
use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, DB, DBCompressionType, Options, ReadOptions};
use thiserror::Error;

pub const CF_RECEIPTS: &str = "receipts";
pub const CF_SESSIONS: &str = "sessions";
pub const CF_CHECKPOINTS: &str = "checkpoints";
pub const CF_META: &str = "meta";
pub const COLUMN_FAMILIES: [&str; 4] = [CF_RECEIPTS, CF_SESSIONS, CF_CHECKPOINTS, CF_META];
/// Key of the start checkpoint in `meta`.
pub const START_KEY: &[u8] = b"start";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("audit store {path}: {source}")]
    Db {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("no audit log at {0} (has the daemon run with this --state-dir?)")]
    Missing(PathBuf),
    #[error("cannot make a scratch directory for reading {path}: {source}")]
    Scratch {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the RocksDB of a state directory lives.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("audit")
}

pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn key_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

pub fn session_key(session: u64, seq: u64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&session.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_open_files(-1);
    opts
}

fn descriptors() -> Vec<ColumnFamilyDescriptor> {
    COLUMN_FAMILIES
        .iter()
        .map(|name| {
            let mut cf = Options::default();
            if *name == CF_RECEIPTS {
                cf.set_compression_type(DBCompressionType::Lz4);
            }
            ColumnFamilyDescriptor::new(*name, cf)
        })
        .collect()
}

pub(crate) fn open_primary(path: &Path) -> Result<DB, StoreError> {
    DB::open_cf_descriptors(&db_options(), path, descriptors()).map_err(|source| StoreError::Db {
        path: path.to_owned(),
        source,
    })
}

/// Read-only view of an audit store, safe while the daemon writes to it: a
/// RocksDB *secondary* instance (its scratch directory is removed on drop).
pub struct Reader {
    db: DB,
    path: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Reader {
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let path = db_path(state_dir);
        if !path.join("CURRENT").exists() {
            return Err(StoreError::Missing(path));
        }
        let scratch = tempfile::Builder::new()
            .prefix("agentgate-audit-read.")
            .tempdir()
            .map_err(|source| StoreError::Scratch {
                path: path.clone(),
                source,
            })?;
        let mut opts = db_options();
        opts.create_if_missing(false);
        opts.create_missing_column_families(false);
        let db = DB::open_cf_descriptors_as_secondary(
            &opts,
            &path,
            &scratch.path().to_path_buf(),
            descriptors(),
        )
        .map_err(|source| StoreError::Db {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            db,
            path,
            _scratch: scratch,
        })
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn db_error(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }
}

/// Read options for a full scan: large readahead, not filling the cache.
pub(crate) fn scan_options() -> ReadOptions {
    let mut ro = ReadOptions::default();
    ro.set_readahead_size(4 << 20);
    ro.fill_cache(false);
    ro
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    // The families are created on open (create_missing_column_families) and
    // named in every open call, so they are always there.
    db.cf_handle(name)
        .unwrap_or_else(|| panic!("column family {name} is opened with the store"))
}
