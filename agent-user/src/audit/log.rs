//! The writer: one thread owns the store, gives out sequence numbers, chains
//! and commits.
//!
//! **Group commit.** Appends queue up while the previous batch is being
//! synced; the writer takes everything queued (up to `max_batch`), writes it
//! as one RocksDB `WriteBatch` with `sync = true` (WAL fsync'd), and only then
//! answers each append. An acknowledged receipt is on disk and survives
//! `kill -9` and power loss (as far as the disk honours fsync); an
//! unacknowledged one may or may not be there after a crash, and if it is, it
//! is chained correctly. A lone append costs one fsync; under load many
//! appends share one.
//!
//! **Recovery.** On open the writer reads the last stored receipt, checks its
//! own hash and continues the chain from it (or from the start checkpoint
//! left by retention). Receipts after the last checkpoint are signed by a new
//! checkpoint straight away.
use std::{
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::mpsc,
    task::{Context, Poll},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};
use thiserror::Error;
use tokio::sync::oneshot;

use super::{
    receipt::{self, GENESIS, Hash, Link, Record},
    sign::{CheckpointKind, KeyError, Signer, Verifier},
    store::{self, CF_CHECKPOINTS, CF_META, CF_RECEIPTS, CF_SESSIONS, START_KEY, StoreError},
};

/// How often to sign, how much to batch, what to keep.
#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    /// Sign a checkpoint after this many receipts…
    pub checkpoint_every: u64,
    /// …or after this long with unsigned receipts, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Most appends committed with one sync.
    pub max_batch: usize,
    /// Appends waiting for the writer; `submit` blocks when it is full.
    pub queue: usize,
    pub retention: Retention,
}

impl Config {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            checkpoint_every: 1024,
            checkpoint_interval: Duration::from_secs(5),
            max_batch: 4096,
            queue: 65536,
            retention: Retention::default(),
        }
    }
}

/// Retention limits, checked every `check_every`. Deleting keeps at least the
/// newest receipt.
#[derive(Clone, Debug)]
pub struct Retention {
    /// Approximate on-disk size of the receipts (RocksDB's estimate of the
    /// live key range after a flush, compressed).
    pub max_bytes: Option<u64>,
    /// Receipts older than this are deleted.
    pub max_age: Option<Duration>,
    pub check_every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_bytes: None,
            max_age: None,
            check_every: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Error)]
pub enum OpenError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "audit store {path}: the last receipt ({seq}) is damaged ({problem}); run `agentgate audit verify` and move the store aside"
    )]
    Damaged {
        path: PathBuf,
        seq: u64,
        problem: String,
    },
    #[error("cannot start the audit writer thread: {0}")]
    Thread(std::io::Error),
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum AppendError {
    #[error("the audit log is closed")]
    Closed,
    #[error("audit log write failed: {0}")]
    Write(String),
    #[error("the audit log stopped after a failed write ({0}); restart the daemon")]
    Failed(String),
}

/// A durable receipt: its sequence number and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipted {
    pub seq: u64,
    pub hash: Hash,
}

type Reply<T> = oneshot::Sender<Result<T, AppendError>>;

enum Command {
    // Boxed: a record is far larger than the other commands.
    Append(Box<Record>, Reply<Receipted>),
    Checkpoint(Reply<Option<u64>>),
    Retention(Reply<Option<u64>>),
    CompactBefore(u64, Reply<Option<u64>>),
}

/// An append on its way to disk: `.await` it in async code, or [`wait`]
/// (blocking) elsewhere.
///
/// [`wait`]: Pending::wait
#[derive(Debug)]
pub struct Pending<T = Receipted>(oneshot::Receiver<Result<T, AppendError>>);

impl<T> Pending<T> {
    /// Blocks until the writer answers. Must not be called from inside an
    /// async runtime (use `.await` there).
    pub fn wait(self) -> Result<T, AppendError> {
        self.0.blocking_recv().unwrap_or(Err(AppendError::Closed))
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, AppendError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(AppendError::Closed)))
    }
}

/// The audit log, open for appending. Dropping it drains the queue, signs a
/// last checkpoint and closes the store.
pub struct AuditLog {
    tx: Option<mpsc::SyncSender<Command>>,
    writer: Option<thread::JoinHandle<()>>,
    verifier: Verifier,
}

impl AuditLog {
    pub fn open(config: Config) -> Result<Self, OpenError> {
        let signer = Signer::load_or_create(&config.state_dir)?;
        let verifier = signer.verifier();
        let writer = Writer::recover(config.clone(), signer)?;
        let (tx, rx) = mpsc::sync_channel(config.queue);
        let handle = thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(OpenError::Thread)?;
        Ok(Self {
            tx: Some(tx),
            writer: Some(handle),
            verifier,
        })
    }

    /// The key that signs this log's checkpoints.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    fn send<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Pending<T> {
        let (reply, rx) = oneshot::channel();
        if let Some(tx) = &self.tx {
            // A send error means the writer is gone; the dropped reply then
            // reads as Closed.
            let _ = tx.send(make(reply));
        }
        Pending(rx)
    }

    /// Queues a decision. Blocks only while the queue is full (the disk is the
    /// bottleneck). The receipt is durable when the returned [`Pending`]
    /// resolves to `Ok`.
    pub fn submit(&self, record: Record) -> Pending {
        self.send(|reply| Command::Append(Box::new(record), reply))
    }

    /// Appends and waits until the receipt is durable.
    pub fn append(&self, record: Record) -> Result<Receipted, AppendError> {
        self.submit(record).wait()
    }

    /// Signs a checkpoint now (if anything is unsigned); returns its seq.
    pub fn checkpoint(&self) -> Pending<Option<u64>> {
        self.send(Command::Checkpoint)
    }

    /// Applies the retention limits now; returns the new first seq if
    /// receipts were deleted.
    pub fn enforce_retention(&self) -> Pending<Option<u64>> {
        self.send(Command::Retention)
    }

    /// Deletes the receipts before `seq` (never the newest one) and signs the
    /// new start; returns the new first seq if anything was deleted.
    pub fn compact_before(&self, seq: u64) -> Pending<Option<u64>> {
        self.send(move |reply| Command::CompactBefore(seq, reply))
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(handle) = self.writer.take() {
            if handle.join().is_err() {
                log::error!("the audit writer thread panicked");
            }
        }
    }
}

pub(super) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) db: DB,
    pub(super) path: PathBuf,
    pub(super) signer: Signer,
    pub(super) config: Config,
    /// Sequence number of the next receipt.
    pub(super) next_seq: u64,
    /// Hash of the last receipt (of the last deleted one, or zeros).
    pub(super) prev: Hash,
    pub(super) last_time_ns: u64,
    /// Newest receipt covered by a periodic checkpoint (0: none).
    pub(super) signed_seq: u64,
    /// Set after a failed write: the chain state in memory may no longer
    /// match the disk, so nothing more is appended.
    failed: Option<String>,
    sync: WriteOptions,
    next_checkpoint: Instant,
    next_retention: Instant,
}

/// A stored key and value.
type KeyValue = (Box<[u8]>, Box<[u8]>);

fn last_entry(db: &DB, cf: &str) -> Option<KeyValue> {
    db.iterator_cf(store::cf(db, cf), IteratorMode::End)
        .next()
        .and_then(Result::ok)
}

impl Writer {
    fn recover(config: Config, signer: Signer) -> Result<Self, OpenError> {
        let path = store::db_path(&config.state_dir);
        let db = store::open_primary(&path)?;
        let damaged = |seq, problem: &str| OpenError::Damaged {
            path: path.clone(),
            seq,
            problem: problem.to_owned(),
        };
        let (next_seq, prev, last_time_ns) = match last_entry(&db, CF_RECEIPTS) {
            Some((key, value)) => {
                let seq = store::key_seq(&key).ok_or_else(|| damaged(0, "bad key"))?;
                let (body, stored) =
                    receipt::split(&value).ok_or_else(|| damaged(seq, "no hash"))?;
                if receipt::hash_body(body) != *stored {
                    return Err(damaged(seq, "hash mismatch"));
                }
                let link: Link =
                    prost::Message::decode(body).map_err(|_| damaged(seq, "undecodable"))?;
                if link.seq != seq {
                    return Err(damaged(seq, "stored under another seq"));
                }
                (seq + 1, *stored, link.time_ns)
            }
            None => match db.get_cf(store::cf(&db, CF_META), START_KEY) {
                Ok(Some(start)) => {
                    let cp = signer
                        .verifier()
                        .open(&start)
                        .map_err(|e| damaged(0, &format!("start checkpoint: {e}")))?;
                    let hash = Hash::try_from(cp.hash.as_slice())
                        .map_err(|_| damaged(cp.seq, "start checkpoint hash"))?;
                    (cp.seq, hash, cp.time_ns)
                }
                Ok(None) => (1, GENESIS, 0),
                Err(source) => return Err(StoreError::Db { path, source }.into()),
            },
        };
        let signed_seq = last_entry(&db, CF_CHECKPOINTS)
            .and_then(|(k, _)| store::key_seq(&k))
            .unwrap_or(0);
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let now = Instant::now();
        let mut writer = Self {
            db,
            path,
            signer,
            next_checkpoint: now + config.checkpoint_interval,
            next_retention: now + config.retention.check_every,
            config,
            next_seq,
            prev,
            last_time_ns,
            signed_seq,
            failed: None,
            sync,
        };
        writer
            .checkpoint_now()
            .map_err(|e| OpenError::Store(writer.db_error(e)))?;
        Ok(writer)
    }

    pub(super) fn db_error(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }

    pub(super) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub(super) fn write(&self, batch: WriteBatch) -> Result<(), rocksdb::Error> {
        self.db.write_opt(batch, &self.sync)
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut commands = Vec::with_capacity(self.config.max_batch);
        loop {
            let deadline = self.next_checkpoint.min(self.next_retention);
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(first) => {
                    commands.push(first);
                    while commands.len() < self.config.max_batch {
                        match rx.try_recv() {
                            Ok(c) => commands.push(c),
                            Err(_) => break,
                        }
                    }
                    self.handle(&mut commands);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if let Err(e) = self.checkpoint_now() {
                        log::error!("audit log: last checkpoint failed: {e}");
                    }
                    return;
                }
            }
            self.timers();
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        if now >= self.next_checkpoint {
            self.next_checkpoint = now + self.config.checkpoint_interval;
            if let Err(e) = self.checkpoint_now() {
                log::error!("audit log: checkpoint failed: {e}");
            }
        }
        if now >= self.next_retention {
            self.next_retention = now + self.config.retention.check_every;
            match self.enforce_retention() {
                Ok(Some(start)) => {
                    log::info!("audit log: retention: the log now starts at {start}")
                }
                Ok(None) => {}
                Err(e) => log::error!("audit log: retention: {e}"),
            }
        }
    }

    fn handle(&mut self, commands: &mut Vec<Command>) {
        let mut appends = Vec::with_capacity(commands.len());
        for command in commands.drain(..) {
            match command {
                Command::Append(record, reply) => appends.push((*record, reply)),
                Command::Checkpoint(reply) => {
                    self.commit(&mut appends);
                    let r = self.checkpoint_now();
                    let _ = reply.send(r.map_err(|e| AppendError::Write(e.to_string())));
                }
                Command::Retention(reply) => {
                    self.commit(&mut appends);
                    let _ = reply.send(self.enforce_retention().map_err(AppendError::Write));
                }
                Command::CompactBefore(seq, reply) => {
                    self.commit(&mut appends);
                    let _ = reply.send(self.compact_before(seq).map_err(AppendError::Write));
                }
            }
        }
        self.commit(&mut appends);
    }

    /// Writes the queued appends with one sync, then answers them.
    fn commit(&mut self, appends: &mut Vec<(Record, Reply<Receipted>)>) {
        if appends.is_empty() {
            return;
        }
        if let Some(why) = &self.failed {
            for (_, reply) in appends.drain(..) {
                let _ = reply.send(Err(AppendError::Failed(why.clone())));
            }
            return;
        }
        let receipts = store::cf(&self.db, CF_RECEIPTS);
        let sessions = store::cf(&self.db, CF_SESSIONS);
        let checkpoints = store::cf(&self.db, CF_CHECKPOINTS);
        let time_ns = now_ns().max(self.last_time_ns);
        let mut batch = WriteBatch::default();
        let mut seq = self.next_seq;
        let mut prev = self.prev;
        let mut signed = self.signed_seq;
        let mut replies = Vec::with_capacity(appends.len());
        for (record, reply) in appends.drain(..) {
            let session = record.session.id;
            let (bytes, hash) = receipt::seal(&record.into_receipt(seq, time_ns, &prev));
            batch.put_cf(receipts, store::seq_key(seq), bytes);
            batch.put_cf(sessions, store::session_key(session, seq), []);
            if seq - signed >= self.config.checkpoint_every {
                let cp = self
                    .signer
                    .seal(CheckpointKind::Periodic, seq, &hash, time_ns);
                batch.put_cf(checkpoints, store::seq_key(seq), cp);
                signed = seq;
            }
            replies.push((reply, Receipted { seq, hash }));
            prev = hash;
            seq += 1;
        }
        match self.write(batch) {
            Ok(()) => {
                self.next_seq = seq;
                self.prev = prev;
                self.signed_seq = signed;
                self.last_time_ns = time_ns;
                for (reply, done) in replies {
                    let _ = reply.send(Ok(done));
                }
            }
            Err(e) => {
                let why = e.to_string();
                log::error!("audit log {}: write failed: {why}", self.path.display());
                self.failed = Some(why.clone());
                for (reply, _) in replies {
                    let _ = reply.send(Err(AppendError::Write(why.clone())));
                }
            }
        }
    }

    /// Signs the newest receipt if it is not signed yet.
    fn checkpoint_now(&mut self) -> Result<Option<u64>, rocksdb::Error> {
        let last = self.last_seq();
        if self.failed.is_some() || last <= self.signed_seq {
            return Ok(None);
        }
        let time_ns = now_ns().max(self.last_time_ns);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            store::cf(&self.db, CF_CHECKPOINTS),
            store::seq_key(last),
            self.signer
                .seal(CheckpointKind::Periodic, last, &self.prev, time_ns),
        );
        self.write(batch)?;
        self.signed_seq = last;
        Ok(Some(last))
    }
}
