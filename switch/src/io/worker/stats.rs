//! What a worker's loop did: time spent in batches and the batches' sizes, for the
//! metrics. Each worker writes only its own, with one relaxed store per counter
//! per batch; the control plane reads them when it is scraped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The batch sizes' histogram buckets: a batch of `n` frames read counts in the
/// first bucket whose bound is at least `n`, and past the last in `+Inf`.
pub const BATCH_BOUNDS: [u64; 10] = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256];

/// One worker's loop counters.
#[derive(Debug, Default)]
pub struct LoopStats {
    busy_ns: AtomicU64,
    batches: AtomicU64,
    frames: AtomicU64,
    /// Batches by size: one per bound, then `+Inf`.
    buckets: [AtomicU64; BATCH_BOUNDS.len() + 1],
}

/// Adds `n` to a counter that only its worker writes.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl LoopStats {
    /// Counts one batch that read `frames` frames and took `busy`.
    pub fn batch(&self, busy: Duration, frames: u64) {
        bump(
            &self.busy_ns,
            u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX),
        );
        bump(&self.batches, 1);
        bump(&self.frames, frames);
        let bucket = BATCH_BOUNDS.partition_point(|&bound| bound < frames);
        bump(&self.buckets[bucket], 1);
    }

    /// The counters now.
    pub fn snapshot(&self) -> LoopSnapshot {
        LoopSnapshot {
            busy: Duration::from_nanos(self.busy_ns.load(Relaxed)),
            batches: self.batches.load(Relaxed),
            frames: self.frames.load(Relaxed),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
        }
    }
}

/// A worker's loop counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopSnapshot {
    /// Time spent serving batches (the rest of the time it polled or slept).
    pub busy: Duration,
    /// Batches served.
    pub batches: u64,
    /// Frames read in them.
    pub frames: u64,
    /// Batches by size, per bucket of [`BATCH_BOUNDS`] then `+Inf` (not cumulative).
    pub buckets: [u64; BATCH_BOUNDS.len() + 1],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch counts in the first bucket at least its size; past the last, in +Inf.
    #[test]
    fn batches_fall_in_their_buckets() {
        let s = LoopStats::default();
        for frames in [0, 1, 3, 4, 5, 256, 257, 10_000] {
            s.batch(Duration::from_micros(10), frames);
        }
        let snap = s.snapshot();
        assert_eq!(snap.batches, 8);
        assert_eq!(snap.frames, 1 + 3 + 4 + 5 + 256 + 257 + 10_000);
        assert_eq!(snap.busy, Duration::from_micros(80));
        //                    0  1  2  4  8 16 32 64 128 256 +Inf
        assert_eq!(snap.buckets, [1, 1, 0, 2, 1, 0, 0, 0, 0, 1, 2]);
    }
}
