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
    /// Processes in the process cache.
    pub cached_processes: AtomicU64,
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

pub async fn run(
    ring: RingBuf<MapData>,
    stats: Arc<ReaderStats>,
    mut sink: impl EventSink,
) -> anyhow::Result<()> {
    let mut ring = readable_fd(ring)?;
    let mut cache = ProcessCache::default();
    loop {
        let mut guard = ring.readable_mut().await?;
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            stats.read.fetch_add(1, Ordering::Relaxed);
            match events::decode(&item) {
                Ok(raw) => {
                    drop(item);
                    sink.event(cache.enrich(raw));
                }
                Err(e) => {
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                    log::warn!("dropping a malformed kernel record: {e}");
                }
            }
        }
        sink.drained();
        cache.sweep();
        stats
            .cached_processes
            .store(cache.len() as u64, Ordering::Relaxed);
        guard.clear_ready();
    }
}
