//! The core's notion of time: a monotonic timestamp the caller passes in.
//!
//! The core never reads a clock. The I/O layer reads the system's monotonic clock
//! once per batch ([`crate::io::clock`]); the simulation moves its own. Both hand
//! the core a [`Time`], nanoseconds since an epoch of the caller's choosing (the
//! daemon's start, or zero in a simulation), so timers, timeouts and the
//! timestamps heartbeats carry mean the same in both.

use std::ops::{Add, AddAssign};
use std::time::Duration;

/// A point on a monotonic clock, in nanoseconds since the clock's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(u64);

impl Time {
    /// The epoch.
    pub const ZERO: Time = Time(0);

    /// The time `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole microseconds since the epoch (what a heartbeat carries).
    pub const fn as_micros(self) -> u64 {
        self.0 / 1_000
    }

    /// The time `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Time {
        Time(micros.saturating_mul(1_000))
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    fn add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_micros(5);
        assert_eq!(t.as_nanos(), 5_000);
        assert_eq!((t + Duration::from_micros(3)).as_micros(), 8);
        assert_eq!(t.saturating_since(Time::ZERO), Duration::from_micros(5));
        assert_eq!(Time::ZERO.saturating_since(t), Duration::ZERO);
        assert_eq!(
            Time::from_nanos(u64::MAX) + Duration::from_secs(1),
            Time::from_nanos(u64::MAX)
        );
    }
}
