//! Adaptive polling: how long a worker keeps polling before it sleeps.
//!
//! A worker that sleeps in `epoll_wait` pays a wake-up (a context switch, often a
//! cross-CPU interrupt) for the next frame. In request/response traffic the next
//! frame often comes tens of microseconds after the last one: the reply of the pod
//! that was just handed a request, or the client's next request. Polling for a
//! short window before sleeping catches it without the wake-up.
//!
//! The window adapts as KVM's halt-polling does (`halt_poll_ns`): when a worker
//! wakes from sleep for a frame that came within the maximum window of its last
//! work, a longer window would have caught it, so the window doubles (from
//! [`GROW_START`], up to the maximum); when the frame came later than that, polling
//! could not have helped and the window halves, down to zero. A worker with no
//! traffic never polls, and sparse traffic shrinks the window away; only traffic
//! that arrives in quick succession keeps it polling. While polling the worker
//! yields its CPU to any other runnable thread between checks.

use std::time::Duration;

/// The first non-zero window.
pub const GROW_START: Duration = Duration::from_micros(10);

/// The polling window of one worker.
#[derive(Debug, Clone)]
pub struct Spin {
    max: Duration,
    window: Duration,
}

impl Spin {
    /// A window that starts at zero and never exceeds `max` (zero: never poll).
    pub fn new(max: Duration) -> Spin {
        Spin {
            max,
            window: Duration::ZERO,
        }
    }

    /// How long to poll after work before sleeping.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The worker slept and woke for work that came `gap` after its last work.
    pub fn woke(&mut self, gap: Duration) {
        if self.max.is_zero() {
            return;
        }
        if gap <= self.max {
            self.window = (self.window * 2).max(GROW_START).min(self.max);
        } else {
            self.window /= 2;
            if self.window < GROW_START {
                self.window = Duration::ZERO;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(100);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn starts_without_polling() {
        assert_eq!(Spin::new(MAX).window(), Duration::ZERO);
    }

    #[test]
    fn quick_succession_grows_the_window_to_the_maximum() {
        let mut s = Spin::new(MAX);
        let mut seen = Vec::new();
        for _ in 0..6 {
            s.woke(us(40));
            seen.push(s.window().as_micros());
        }
        assert_eq!(seen, [10, 20, 40, 80, 100, 100]);
    }

    #[test]
    fn sparse_traffic_shrinks_the_window_to_zero() {
        let mut s = Spin::new(MAX);
        for _ in 0..5 {
            s.woke(us(30));
        }
        assert_eq!(s.window(), MAX);
        let mut seen = Vec::new();
        for _ in 0..5 {
            s.woke(Duration::from_millis(5));
            seen.push(s.window().as_micros());
        }
        assert_eq!(seen, [50, 25, 12, 0, 0]);
    }

    #[test]
    fn a_zero_maximum_never_polls() {
        let mut s = Spin::new(Duration::ZERO);
        for _ in 0..10 {
            s.woke(Duration::ZERO);
        }
        assert_eq!(s.window(), Duration::ZERO);
    }
}
