//! The decisions a worker's poll loop makes, apart from the loop: which worker a
//! frame is handed to, which workers to wake at the end of a batch, how long to
//! block in `epoll_wait`, whether to run a batch at all, when worker 0 runs the
//! handshake timers, and when a worker that has not gone round its loop is stalled. Pure functions of what they are given, time included, so
//! they are tested here without threads, sockets or clocks.

use std::time::Duration;

use crate::core::Time;

/// The most workers a node runs: the wake-up set is one bit per worker.
pub const MAX_WORKERS: usize = 64;

/// The worker that writes a frame for a port with `queues` queues, sent by worker
/// `from` of `workers`. A port's queues belong to workers `0..queues` (at least
/// one, at most every worker); senders are spread over them by their own index,
/// so each sender always hands a port's frames to the same owner (the frames of a
/// flow keep their order).
pub fn handoff_owner(from: usize, queues: u16, workers: usize) -> usize {
    let owners = usize::from(queues).clamp(1, workers.max(1));
    from % owners
}

/// The workers to wake at the end of a batch: those that were handed frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wakes(u64);

impl Wakes {
    /// Marks worker `w` (below [`MAX_WORKERS`]) to be woken.
    pub fn add(&mut self, w: usize) {
        debug_assert!(w < MAX_WORKERS, "worker {w} of at most {MAX_WORKERS}");
        self.0 |= 1 << (w % MAX_WORKERS);
    }
}

impl Iterator for Wakes {
    type Item = usize;

    /// The next worker to wake, lowest first.
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let w = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(w)
    }
}

/// The longest a worker waits in `epoll_wait`: it goes round its loop at least this
/// often, and says so ([`stalled`]), even with nothing to do.
pub const LIVENESS_TICK: Duration = Duration::from_secs(1);

/// How long a worker may go without going round its loop before the daemon counts
/// it stalled, and so not ready: several ticks, so that a busy machine's scheduling
/// does not count.
pub const STALL: Duration = Duration::from_secs(5);

/// How long the poll may block: not at all while the worker polls (fds left over
/// from the last batch, or inside the polling window after work), else until its
/// next timer, and a [`LIVENESS_TICK`] at most. The clock is read only if needed.
pub fn poll_timeout(
    polling: bool,
    next_timer: Option<Time>,
    now: impl FnOnce() -> Time,
) -> Duration {
    match (polling, next_timer) {
        (true, _) => Duration::ZERO,
        (false, Some(at)) => at.saturating_since(now()).min(LIVENESS_TICK),
        (false, None) => LIVENESS_TICK,
    }
}

/// Whether a worker last seen going round its loop at `seen` is stalled at `now`.
pub fn stalled(seen: Time, now: Time) -> bool {
    now.saturating_since(seen) > STALL
}

/// Whether a poll's return calls for a batch: an fd is ready, fds are left over,
/// or a timer is due. Otherwise the worker yields and polls again.
pub fn runs_batch(events: bool, left_over: bool, now: Time, next_timer: Option<Time>) -> bool {
    events || left_over || next_timer.is_some_and(|at| now >= at)
}

/// How often worker 0 asks the endpoint again when its handshake timers are due.
pub const SEAL_RECHECK: Duration = Duration::from_secs(1);

/// When worker 0 runs the endpoint's handshake timers: when they are due as it
/// last asked, and at least every [`SEAL_RECHECK`], since a handshake another
/// worker starts moves them without telling it (the poll loop takes no lock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealClock {
    /// When the timers are due, as last asked.
    due: Option<Time>,
    /// When the endpoint was last asked.
    asked: Time,
}

impl SealClock {
    /// Whether worker `worker` runs the timers now: only worker 0, and only if the
    /// node seals.
    pub fn runs(&self, worker: usize, seals: bool, now: Time) -> bool {
        worker == 0
            && seals
            && (self.due.is_some_and(|at| now >= at)
                || now.saturating_since(self.asked) >= SEAL_RECHECK)
    }

    /// Records that the timers ran at `now`, and are next due at `due`.
    pub fn ran(&mut self, now: Time, due: Option<Time>) {
        self.due = due;
        self.asked = now;
    }

    /// When the timers are next due, for the poll's timeout.
    pub fn due(&self) -> Option<Time> {
        self.due
    }

    /// The next moment [`SealClock::runs`] says yes (for a simulation's clock):
    /// when the timers are due, or at the next recheck.
    pub fn next_run(&self) -> Time {
        let recheck = self.asked + SEAL_RECHECK;
        self.due.map_or(recheck, |due| due.min(recheck))
    }
}

/// The worker's next timer: the core's, or the handshakes'.
pub fn next_timer(core: Option<Time>, seal: Option<Time>) -> Option<Time> {
    core.into_iter().chain(seal).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Time {
        Time::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn a_sender_hands_a_ports_frames_to_one_owner_among_its_queues() {
        // Two queues among four workers: workers 0 and 2 hand to 0, 1 and 3 to 1.
        let owners: Vec<usize> = (0..4).map(|w| handoff_owner(w, 2, 4)).collect();
        assert_eq!(owners, [0, 1, 0, 1]);
        // A queue per worker: each writes its own (the frame waits in its inbox
        // while its queue lends frames).
        assert!((0..4).all(|w| handoff_owner(w, 4, 4) == w));
        // No queues said (0) means one; more queues than workers mean all workers.
        assert!((0..4).all(|w| handoff_owner(w, 0, 4) == 0));
        assert_eq!(handoff_owner(3, 16, 4), 3);
        // No workers is no division by zero.
        assert_eq!(handoff_owner(5, 2, 0), 0);
    }

    #[test]
    fn every_worker_marked_is_woken_once_lowest_first() {
        let mut w = Wakes::default();
        assert_eq!(w.next(), None);
        for i in [5, 0, 63, 5] {
            w.add(i);
        }
        assert_eq!(w.collect::<Vec<_>>(), [0, 5, 63]);
    }

    #[test]
    fn the_poll_blocks_until_the_next_timer_or_a_tick_unless_polling() {
        let never = || -> Time { panic!("the clock is read while polling") };
        assert_eq!(poll_timeout(true, Some(at(50)), never), Duration::ZERO);
        assert_eq!(
            poll_timeout(false, Some(at(50)), || at(10)),
            Duration::from_millis(40)
        );
        // A timer in the past: do not block.
        assert_eq!(poll_timeout(false, Some(at(50)), || at(60)), Duration::ZERO);
        // No timer, or a distant one: a liveness tick.
        assert_eq!(poll_timeout(false, None, never), LIVENESS_TICK);
        assert_eq!(
            poll_timeout(false, Some(at(60_000)), || at(10)),
            LIVENESS_TICK
        );
    }

    #[test]
    fn a_worker_is_stalled_once_it_misses_several_ticks() {
        assert!(STALL >= LIVENESS_TICK * 3);
        let seen = at(10_000);
        assert!(!stalled(seen, seen));
        assert!(!stalled(seen, seen + STALL));
        assert!(stalled(seen, seen + STALL + Duration::from_millis(1)));
        // A reading from before the worker's last round is no stall.
        assert!(!stalled(seen, at(0)));
    }

    #[test]
    fn a_batch_runs_for_events_left_overs_or_a_due_timer() {
        assert!(runs_batch(true, false, at(0), None));
        assert!(runs_batch(false, true, at(0), None));
        assert!(runs_batch(false, false, at(50), Some(at(50))));
        assert!(!runs_batch(false, false, at(49), Some(at(50))));
        assert!(!runs_batch(false, false, at(49), None));
    }

    #[test]
    fn worker_0_runs_the_handshake_timers_when_due_and_every_recheck() {
        let mut c = SealClock::default();
        // At the start: never asked, and the recheck is due at once.
        assert!(c.runs(0, true, at(1_000)));
        assert!(!c.runs(1, true, at(1_000)), "only worker 0");
        assert!(!c.runs(0, false, at(1_000)), "only if the node seals");
        c.ran(at(1_000), Some(at(1_300)));
        assert_eq!(c.due(), Some(at(1_300)));
        assert!(!c.runs(0, true, at(1_200)));
        assert!(c.runs(0, true, at(1_300)), "due");
        c.ran(at(1_300), None);
        assert_eq!(c.next_run(), at(2_300));
        assert!(!c.runs(0, true, at(2_299)));
        assert!(c.runs(0, true, at(2_300)), "the recheck");
        c.ran(at(2_300), Some(at(2_500)));
        assert_eq!(c.next_run(), at(2_500));
    }

    #[test]
    fn the_next_timer_is_the_earlier_one() {
        assert_eq!(next_timer(Some(at(5)), Some(at(3))), Some(at(3)));
        assert_eq!(next_timer(None, Some(at(3))), Some(at(3)));
        assert_eq!(next_timer(Some(at(5)), None), Some(at(5)));
        assert_eq!(next_timer(None, None), None);
    }
}
