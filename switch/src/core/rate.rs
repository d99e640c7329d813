//! A token bucket on the time passed in: the switch's ICMP errors, as Linux limits
//! its own (`icmp_msgs_per_sec`, `icmp_msgs_burst`), and the sleeve's handshakes per
//! source.

use super::Time;

/// A token, in the billionths the bucket counts: one nanosecond at `PER_SECOND`
/// tokens a second adds `PER_SECOND` of them, in whole numbers.
const TOKEN: u64 = 1_000_000_000;

/// At most `BURST` events at once, and `PER_SECOND` a second sustained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket<const PER_SECOND: u64, const BURST: u64> {
    /// Tokens left, in billionths.
    tokens: u64,
    /// When they were last counted.
    at: Time,
}

impl<const PER_SECOND: u64, const BURST: u64> TokenBucket<PER_SECOND, BURST> {
    /// A full bucket at `now`.
    pub fn full(now: Time) -> Self {
        TokenBucket {
            tokens: BURST * TOKEN,
            at: now,
        }
    }

    /// Takes a token at `now`, after adding those the time since the last call
    /// earned; false if none is left. A `now` earlier than the last earns nothing.
    pub fn take(&mut self, now: Time) -> bool {
        let elapsed = u64::try_from(now.saturating_since(self.at).as_nanos()).unwrap_or(u64::MAX);
        self.tokens = (self.tokens)
            .saturating_add(elapsed.saturating_mul(PER_SECOND))
            .min(BURST * TOKEN);
        self.at = self.at.max(now);
        if self.tokens >= TOKEN {
            self.tokens -= TOKEN;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn granted<const R: u64, const B: u64>(
        b: &mut TokenBucket<R, B>,
        n: usize,
        now: Time,
    ) -> usize {
        (0..n).filter(|_| b.take(now)).count()
    }

    #[test]
    fn a_burst_then_the_rate_on_the_clock_passed_in() {
        let start = Time::ZERO + Duration::from_secs(7);
        let mut b = TokenBucket::<1000, 50>::full(start);
        assert_eq!(granted(&mut b, 80, start), 50);
        // 10 ms earn 10 tokens; half a millisecond earns half of one, kept.
        assert_eq!(granted(&mut b, 80, start + Duration::from_millis(10)), 10);
        let later = start + Duration::from_micros(10_500);
        assert_eq!(granted(&mut b, 1, later), 0);
        assert_eq!(granted(&mut b, 1, later + Duration::from_micros(500)), 1);
        // A clock that goes back earns nothing, and does not move the bucket's.
        assert_eq!(granted(&mut b, 1, start), 0);
        assert_eq!(granted(&mut b, 5, later + Duration::from_millis(3)), 2);
        // A long silence refills it to the burst, no more.
        let much_later = start + Duration::from_secs(3600);
        assert_eq!(granted(&mut b, 80, much_later), 50);
    }

    #[test]
    fn sustained_demand_gets_the_rate() {
        let mut b = TokenBucket::<20, 5>::full(Time::ZERO);
        let mut total = 0;
        for ms in 0..=10_000u64 {
            total += granted(&mut b, 3, Time::ZERO + Duration::from_millis(ms));
        }
        // The burst, then 20 a second for 10 s.
        assert_eq!(total, 5 + 200);
    }
}
