//! Reads the kernel's ring buffer: decode, enrich, hand on.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    events::{self, Event},
    procs::ProcessCache,
};

/// What the reader has seen, for `agentgate status`.
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub read: AtomicU64,
    /// Records that failed to decode: a version skew between the daemon and
    /// pinned programs, never expected. Counted and logged, not fatal.
    pub malformed: AtomicU64,
    /// LSM mode: second `file_open` calls of one open on a stacked
    /// filesystem, folded into the first (see [`StackedOpenEcho`]).
    pub coalesced: AtomicU64,
}

/// On overlayfs (and other stacking filesystems) one open(2) runs the LSM
/// `file_open` hook twice: for the overlay file and again for the backing
/// file it opens underneath (6.1 has no FMODE_BACKING to tell them apart).
/// Both carry the same path. This drops the echo: an open record of the same
/// thread, path, flags and verdict within a millisecond of the previous one.
#[derive(Default)]
pub struct StackedOpenEcho {
    last: Option<(u32, u64, i64, u8, Vec<u8>)>,
}

impl StackedOpenEcho {
    const WINDOW_NS: u64 = 1_000_000;

    pub fn is_echo(&mut self, raw: &events::RawEvent) -> bool {
        if raw.kind != agent_common::EventKind::Open {
            return false;
        }
        let h = &raw.header;
        let echo = self
            .last
            .as_ref()
            .is_some_and(|(tid, t, flags, verdict, path)| {
                *tid == h.tid
                    && h.time_ns.saturating_sub(*t) < Self::WINDOW_NS
                    && *flags == h.arg1
                    && *verdict == h.verdict
                    && *path == raw.path
            });
        self.last = (!echo).then(|| (h.tid, h.time_ns, h.arg1, h.verdict, raw.path.clone()));
        echo
    }
}

/// Registers a map or logger fd with tokio for read readiness.
pub fn readable_fd<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `T` owns its fd (an aya map or perf/ring buffer), which stays
    // open and unchanged until the AsyncFd, and with it `T`, is dropped.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// Where decoded events go.
pub trait EventSink {
    fn event(&mut self, event: Event);
    /// Called when the ring buffer is drained: a place to flush output.
    fn drained(&mut self);
}

/// `lsm`: the programs report opens from the LSM hook (see
/// [`StackedOpenEcho`]); syscall tracepoints fire once per call and need no
/// folding.
pub async fn run(
    ring: RingBuf<MapData>,
    stats: Arc<ReaderStats>,
    lsm: bool,
    mut sink: impl EventSink,
) -> anyhow::Result<()> {
    let mut ring = readable_fd(ring)?;
    let mut cache = ProcessCache::default();
    let mut echo = StackedOpenEcho::default();
    loop {
        let mut guard = ring.readable_mut().await?;
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            stats.read.fetch_add(1, Ordering::Relaxed);
            match events::decode(&item) {
                Ok(raw) => {
                    drop(item);
                    if lsm && echo.is_echo(&raw) {
                        stats.coalesced.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    sink.event(cache.enrich(raw));
                }
                Err(e) => {
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                    log::warn!("dropping a malformed kernel record: {e}");
                }
            }
        }
        sink.drained();
        guard.clear_ready();
    }
}
