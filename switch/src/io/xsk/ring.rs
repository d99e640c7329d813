//! The single-producer, single-consumer rings an AF_XDP socket shares with the
//! kernel: fill and tx, which user space produces into, and rx and completion, which
//! it consumes from.
//!
//! Each ring is a power-of-two array of entries (`u64` UMEM addresses for fill and
//! completion, [`libc::xdp_desc`] for rx and tx) beside a free-running `u32` producer
//! index, a consumer index and a flags word, at the offsets `XDP_MMAP_OFFSETS`
//! reports. The producer writes entries, then publishes its index with release
//! ordering; the consumer loads that index with acquire ordering, reads the entries,
//! then publishes its own index with release ordering, which hands the slots back.
//! The kernel does the same on its side (`smp_load_acquire`/`smp_store_release` in
//! `net/xdp/xsk_queue.h`).
//!
//! Both sides cache the other's index and look at the shared one only when the cache
//! holds fewer slots (producer) or entries (consumer) than a batch asks for, so a
//! batch costs at most one atomic load and one store. Work goes in three steps, each a type:
//! - [`Producer::produce`] acquires up to `n` free slots as a [`Produce`], which takes
//!   the data with [`Produce::push`], and releases what was pushed when dropped;
//! - [`Consumer::consume`] acquires up to `n` filled entries as a [`Consume`], an
//!   iterator over the data, and releases what was taken when dropped.
//!
//! The same [`Producer`] and [`Consumer`] work over any [`RingMem`]: the kernel's
//! mapping, or a ring on the heap ([`RingMem::heap`]), where a `Producer` and a
//! `Consumer` play both sides. The tests drive such pairs against a `VecDeque`.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The wake-up flag in a ring's flags word (`XDP_RING_NEED_WAKEUP`): the kernel
/// sleeps until user space kicks it (`sendto` for tx, `recvfrom` or `poll` for fill).
pub const NEED_WAKEUP: u32 = libc::XDP_RING_NEED_WAKEUP;

/// Why ring memory cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The size is zero or not a power of two.
    #[error("a ring holds a power of two of entries, not {0}")]
    BadSize(u32),
}

/// Where one ring lives: its indices, flags and entries, and whatever keeps that
/// memory alive.
pub struct RingMem<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    entries: NonNull<T>,
    mask: u32,
    /// The mapping (or heap block) the pointers point into.
    _owner: Arc<dyn Any + Send + Sync>,
}

// SAFETY: the pointers are into memory `_owner` keeps alive; a RingMem is moved into
// exactly one Producer or Consumer, and the ring protocol keeps the two sides to
// disjoint slots, with indices accessed atomically.
unsafe impl<T: Send> Send for RingMem<T> {}

impl<T> std::fmt::Debug for RingMem<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingMem")
            .field("size", &(self.mask + 1))
            .finish_non_exhaustive()
    }
}

impl<T> RingMem<T> {
    /// A ring in memory mapped from an AF_XDP socket: `base` is the mapping, `off` the
    /// ring's offsets in it as `XDP_MMAP_OFFSETS` gives them, `size` its entries.
    ///
    /// # Safety
    /// `base` must point to a live mapping of at least `off.desc + size *
    /// size_of::<T>()` bytes, kept alive by `owner`, laid out as `off` says, with the
    /// index and flags words 4-byte aligned and the entries aligned for `T`. `size`
    /// must be the size the ring was configured with, and `T` its entry type (`u64`
    /// for fill and completion, `xdp_desc` for rx and tx), valid for any bytes. At
    /// most one `RingMem` may exist per ring, and it must be given the role user
    /// space has on that ring: a [`Producer`] for fill and tx, a [`Consumer`] for rx
    /// and completion.
    pub unsafe fn mapped(
        base: NonNull<u8>,
        off: &libc::xdp_ring_offset,
        size: u32,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> Result<RingMem<T>, RingError> {
        check_size(size)?;
        // SAFETY: the offsets lie within the mapping, by the caller's promise.
        let at = |o: u64| unsafe { base.add(o as usize) };
        Ok(RingMem {
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            entries: at(off.desc).cast(),
            mask: size - 1,
            _owner: owner,
        })
    }

    /// The number of entries.
    pub fn size(&self) -> u32 {
        self.mask + 1
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: valid and aligned for the ring's life (see `mapped` and `heap`).
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.flags.as_ref() }
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: `index & mask` is below the ring's size, so the slot is in bounds.
        unsafe { self.entries.as_ptr().add((index & self.mask) as usize) }
    }
}

fn check_size(size: u32) -> Result<(), RingError> {
    if size.is_power_of_two() {
        Ok(())
    } else {
        Err(RingError::BadSize(size))
    }
}

/// A ring on the heap, for a [`Producer`] and a [`Consumer`] to share.
struct Heap<T> {
    producer: AtomicU32,
    consumer: AtomicU32,
    flags: AtomicU32,
    entries: Box<[std::cell::UnsafeCell<T>]>,
}

// SAFETY: the entries are only reached through a RingMem, whose protocol keeps the
// producer and the consumer to disjoint slots.
unsafe impl<T: Send> Sync for Heap<T> {}

impl<T: Copy + Default + Send + 'static> RingMem<T> {
    /// Two views of one ring of `size` entries on the heap, whose indices both start
    /// at `start` (a ring's indices run free and wrap, so a start near `u32::MAX`
    /// shows the wrap soon): one to produce into, one to consume from.
    pub fn heap(size: u32, start: u32) -> Result<(Producer<T>, Consumer<T>), RingError> {
        check_size(size)?;
        let heap = Arc::new(Heap {
            producer: AtomicU32::new(start),
            consumer: AtomicU32::new(start),
            flags: AtomicU32::new(0),
            entries: (0..size)
                .map(|_| std::cell::UnsafeCell::new(T::default()))
                .collect(),
        });
        let view = || RingMem {
            producer: NonNull::from(&heap.producer),
            consumer: NonNull::from(&heap.consumer),
            flags: NonNull::from(&heap.flags),
            // UnsafeCell<T> has T's layout; the block lives as long as `heap`.
            entries: NonNull::new(std::cell::UnsafeCell::raw_get(heap.entries.as_ptr()))
                .expect("a boxed slice"),
            mask: size - 1,
            _owner: heap.clone() as Arc<dyn Any + Send + Sync>,
        };
        Ok((Producer::new(view()), Consumer::new(view())))
    }
}

/// The side of a ring that fills slots.
#[derive(Debug)]
pub struct Producer<T> {
    mem: RingMem<T>,
    /// The next slot to fill.
    cached_prod: u32,
    /// The consumer's index as last seen, plus the size: slots up to it are free.
    cached_cons: u32,
}

impl<T: Copy> Producer<T> {
    /// The producer side of `mem`, from the indices it holds now.
    pub fn new(mem: RingMem<T>) -> Producer<T> {
        let cached_prod = mem.producer().load(Ordering::Relaxed);
        let cached_cons = mem
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(mem.size());
        Producer {
            mem,
            cached_prod,
            cached_cons,
        }
    }

    /// Free slots, at most `want`: the cache is refreshed only if it has fewer.
    fn free(&mut self, want: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= want {
            return want;
        }
        // Acquire: the consumer has finished reading the slots it handed back.
        self.cached_cons = self
            .mem
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.mem.size());
        self.cached_cons.wrapping_sub(self.cached_prod).min(want)
    }

    /// Acquires up to `max` free slots to fill; maybe none.
    pub fn produce(&mut self, max: u32) -> Produce<'_, T> {
        let room = self.free(max);
        Produce {
            ring: self,
            room,
            filled: 0,
        }
    }

    /// Whether the consumer (the kernel) waits for a wake-up to look at the ring.
    ///
    /// Read after a batch is released. As in libxdp, the load is not ordered after
    /// the index store; the kernel sets the flag before it looks at the ring a last
    /// time, so a wake-up missed here is caught by the caller's next batch or its
    /// poll timeout, never lost for good.
    pub fn needs_wakeup(&self) -> bool {
        self.mem.flags().load(Ordering::Relaxed) & NEED_WAKEUP != 0
    }

    /// Slots filled and not yet taken by the consumer, as last seen.
    pub fn in_flight(&self) -> u32 {
        self.mem
            .size()
            .wrapping_sub(self.cached_cons.wrapping_sub(self.cached_prod))
    }

    /// The number of slots.
    pub fn size(&self) -> u32 {
        self.mem.size()
    }
}

/// Slots acquired from a [`Producer`]. What is pushed is released to the consumer
/// when this is dropped, in one index store.
#[derive(Debug)]
pub struct Produce<'r, T: Copy> {
    ring: &'r mut Producer<T>,
    room: u32,
    filled: u32,
}

impl<T: Copy> Produce<'_, T> {
    /// Slots still free in this batch.
    pub fn room(&self) -> u32 {
        self.room - self.filled
    }

    /// Fills the next slot with `v`; gives `v` back if the batch is full.
    pub fn push(&mut self, v: T) -> Result<(), T> {
        if self.filled == self.room {
            return Err(v);
        }
        let index = self.ring.cached_prod.wrapping_add(self.filled);
        // SAFETY: the slot is free: it lies between the producer index and the
        // consumer's (plus the size), so the consumer does not read it until the
        // index store in `drop` publishes it.
        unsafe { self.ring.mem.slot(index).write(v) };
        self.filled += 1;
        Ok(())
    }

    /// Slots filled so far.
    pub fn filled(&self) -> u32 {
        self.filled
    }
}

impl<T: Copy> Drop for Produce<'_, T> {
    fn drop(&mut self) {
        if self.filled > 0 {
            self.ring.cached_prod = self.ring.cached_prod.wrapping_add(self.filled);
            // Release: the entries are written before the consumer can see them.
            self.ring
                .mem
                .producer()
                .store(self.ring.cached_prod, Ordering::Release);
        }
    }
}

/// The side of a ring that empties slots.
#[derive(Debug)]
pub struct Consumer<T> {
    mem: RingMem<T>,
    /// The producer's index as last seen: entries before it are filled.
    cached_prod: u32,
    /// The next entry to take.
    cached_cons: u32,
}

impl<T: Copy> Consumer<T> {
    /// The consumer side of `mem`, from the indices it holds now.
    pub fn new(mem: RingMem<T>) -> Consumer<T> {
        let cached_cons = mem.consumer().load(Ordering::Relaxed);
        let cached_prod = mem.producer().load(Ordering::Acquire);
        Consumer {
            mem,
            cached_prod,
            cached_cons,
        }
    }

    /// Filled entries, at most `want`: the cache is refreshed only if it has fewer.
    fn filled(&mut self, want: u32) -> u32 {
        let mut n = self.cached_prod.wrapping_sub(self.cached_cons);
        if n < want {
            // Acquire: the producer's entries are visible before its index.
            self.cached_prod = self.mem.producer().load(Ordering::Acquire);
            n = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        n.min(want)
    }

    /// The number of entries.
    pub fn size(&self) -> u32 {
        self.mem.size()
    }

    /// Acquires up to `max` filled entries to read; maybe none.
    pub fn consume(&mut self, max: u32) -> Consume<'_, T> {
        let len = self.filled(max);
        Consume {
            ring: self,
            len,
            taken: 0,
        }
    }

    /// Sets or clears the wake-up flag, as the kernel does on the rings it
    /// consumes; for a heap ring's tests.
    #[cfg(test)]
    fn set_needs_wakeup(&self, on: bool) {
        let flags = self.mem.flags();
        if on {
            flags.fetch_or(NEED_WAKEUP, Ordering::Relaxed);
        } else {
            flags.fetch_and(!NEED_WAKEUP, Ordering::Relaxed);
        }
    }
}

/// Entries acquired from a [`Consumer`], read in order as an iterator. Those taken
/// are released to the producer when this is dropped, in one index store.
#[derive(Debug)]
pub struct Consume<'r, T: Copy> {
    ring: &'r mut Consumer<T>,
    len: u32,
    taken: u32,
}

impl<T: Copy> Iterator for Consume<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.taken == self.len {
            return None;
        }
        let index = self.ring.cached_cons.wrapping_add(self.taken);
        // SAFETY: the entry is filled: it lies before the producer index loaded with
        // acquire ordering, and the producer does not reuse it until the index store
        // in `drop` hands it back.
        let v = unsafe { self.ring.mem.slot(index).read() };
        self.taken += 1;
        Some(v)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.len - self.taken) as usize;
        (left, Some(left))
    }
}

impl<T: Copy> ExactSizeIterator for Consume<'_, T> {}

impl<T: Copy> Drop for Consume<'_, T> {
    fn drop(&mut self) {
        if self.taken > 0 {
            self.ring.cached_cons = self.ring.cached_cons.wrapping_add(self.taken);
            // Release: the entries are read before the producer may overwrite them.
            self.ring
                .mem
                .consumer()
                .store(self.ring.cached_cons, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn sizes_are_powers_of_two() {
        assert_eq!(
            RingMem::<u64>::heap(0, 0).unwrap_err(),
            RingError::BadSize(0)
        );
        assert_eq!(
            RingMem::<u64>::heap(6, 0).unwrap_err(),
            RingError::BadSize(6)
        );
        assert!(RingMem::<u64>::heap(1, 0).is_ok());
        assert!(RingMem::<u64>::heap(2048, 0).is_ok());
    }

    #[test]
    fn a_full_ring_takes_nothing_until_the_consumer_releases() {
        let (mut p, mut c) = RingMem::<u64>::heap(4, u32::MAX - 1).unwrap();
        {
            let mut batch = p.produce(8);
            assert_eq!(batch.room(), 4);
            for v in 0..4 {
                batch.push(v).unwrap();
            }
            assert_eq!(batch.push(9), Err(9));
        }
        assert_eq!(p.in_flight(), 4);
        assert_eq!(p.produce(1).room(), 0);
        // Two granted, one taken: only the one taken is released.
        let mut batch = c.consume(2);
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.next(), Some(0));
        drop(batch);
        assert_eq!(p.produce(4).room(), 1, "one entry was taken");
        assert_eq!(c.consume(8).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(c.consume(8).len(), 0);
    }

    #[test]
    fn the_wakeup_flag_is_the_consumers_to_set() {
        let (p, c) = RingMem::<u64>::heap(8, 0).unwrap();
        assert!(!p.needs_wakeup());
        c.set_needs_wakeup(true);
        assert!(p.needs_wakeup());
        c.set_needs_wakeup(false);
        assert!(!p.needs_wakeup());
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Produce up to `max`, pushing `push` of them (at most what was granted).
        Produce { max: u32, push: u32 },
        /// Consume up to `max`, reading `take` of them.
        Consume { max: u32, take: u32 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..40u32, 0..40u32).prop_map(|(max, push)| Op::Produce { max, push }),
            (0..40u32, 0..40u32).prop_map(|(max, take)| Op::Consume { max, take }),
        ]
    }

    proptest! {
        /// Any interleaving of batches, from any start of the indices (across their
        /// wrap too), gives what a bounded FIFO gives: each entry once, in order, and
        /// a producer never granted more than the free slots.
        #[test]
        fn rings_behave_as_a_bounded_fifo(
            size_log in 0..6u32,
            start in prop_oneof![Just(0u32), Just(u32::MAX - 20), any::<u32>()],
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let size = 1 << size_log;
            let (mut p, mut c) = RingMem::<u64>::heap(size, start).unwrap();
            let mut oracle = VecDeque::new();
            // Not 0, the heap ring's initial bytes: a read of a slot never written
            // shows.
            let mut next = 1u64;
            for op in ops {
                match op {
                    Op::Produce { max, push } => {
                        let mut batch = p.produce(max);
                        let free = size - oracle.len() as u32;
                        prop_assert_eq!(batch.room(), max.min(free));
                        for _ in 0..push.min(batch.room()) {
                            prop_assert!(batch.push(next).is_ok());
                            oracle.push_back(next);
                            next += 1;
                        }
                        prop_assert!(batch.room() > 0 || batch.push(u64::MAX).is_err());
                    }
                    Op::Consume { max, take } => {
                        let batch = c.consume(max);
                        prop_assert_eq!(batch.len(), (max as usize).min(oracle.len()));
                        let got: Vec<u64> = batch.take(take as usize).collect();
                        let want: Vec<u64> = oracle.drain(..got.len()).collect();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert!(p.in_flight() as usize >= oracle.len());
                prop_assert!(p.in_flight() <= size);
            }
            let rest: Vec<u64> = c.consume(u32::MAX).collect();
            prop_assert_eq!(rest, Vec::from(oracle));
        }
    }

    /// Entries are published when their batch is released, not as they are pushed;
    /// slots come back when the consumer's batch is released, not as it reads.
    #[test]
    fn batches_publish_and_release_on_drop() {
        let (mut p, mut c) = RingMem::<u64>::heap(4, u32::MAX).unwrap();
        let mut batch = p.produce(4);
        batch.push(1).unwrap();
        batch.push(2).unwrap();
        assert_eq!(c.consume(4).len(), 0, "pushed but not released");
        drop(batch);
        {
            let mut p_batch = p.produce(4);
            assert_eq!(p_batch.room(), 2);
            p_batch.push(3).unwrap();
            p_batch.push(4).unwrap();
        }
        let mut read = c.consume(4);
        assert_eq!(read.next(), Some(1));
        assert_eq!(read.next(), Some(2));
        assert_eq!(p.produce(4).room(), 0, "read but not released");
        drop(read);
        assert_eq!(p.produce(4).room(), 2);
        assert_eq!(p.in_flight(), 2);
        assert_eq!(c.consume(4).collect::<Vec<_>>(), [3, 4]);
    }

    /// A producer and a consumer on two threads, as user space and the kernel are:
    /// every entry arrives once and in order through a ring much smaller than the run.
    #[test]
    fn two_threads_pass_every_entry_in_order() {
        const N: u64 = 200_000;
        // Bounds the run if one side stops early: the other then fails, not hangs.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let (mut p, mut c) = RingMem::<u64>::heap(64, u32::MAX - 1000).unwrap();
        let producer = std::thread::spawn(move || {
            let mut next = 0;
            while next < N {
                assert!(std::time::Instant::now() < deadline, "the consumer stopped");
                let mut batch = p.produce(16);
                while next < N && batch.push(next).is_ok() {
                    next += 1;
                }
                drop(batch);
                std::hint::spin_loop();
            }
        });
        let mut want = 0;
        while want < N {
            assert!(std::time::Instant::now() < deadline, "the producer stopped");
            for v in c.consume(32) {
                assert_eq!(v, want);
                want += 1;
            }
            std::hint::spin_loop();
        }
        producer.join().unwrap();
        assert_eq!(c.consume(1).len(), 0);
    }
}
