//! Limits on handshake work: a token bucket per source address, a load meter that
//! says when to ask for cookies, and the cookies themselves.
//!
//! Under load a node processes only initiations whose mac2 is keyed by the cookie
//! of their source address, and answers the others with a cookie reply instead of
//! a Diffie-Hellman: a flood from forged addresses costs it an HMAC each.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use weft_encap::sleeve::handshake::{self, CookieRepr, Initiation, Repr, MAC_LEN};

use super::handshake::{check_mac2, mac};
use super::{Dest, Endpoint, Transmit};
use crate::core::rate::TokenBucket;
use crate::core::time::Time;

/// A cookie is good for this long, and the cookie secret rotates as often.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(120);

/// Initiations a source address may have processed per second, sustained.
pub const INITIATIONS_PER_SECOND: u64 = 20;
/// ...and in a burst.
pub const INITIATION_BURST: u64 = 5;
/// Source addresses the limiter tracks; beyond, it forgets them all and starts over
/// (a flood from many addresses meets the cookie check first).
const MAX_SOURCES: usize = 4096;

/// Initiations per second (from all sources) above which the node is under load
/// and answers initiations without a valid mac2 with a cookie reply.
pub const LOAD_THRESHOLD: u64 = 32;

/// One source's initiations.
type Bucket = TokenBucket<INITIATIONS_PER_SECOND, INITIATION_BURST>;

/// A token bucket per source address, refilled by the time passed in.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<Ipv4Addr, Bucket>,
}

impl RateLimiter {
    /// Takes a token for `addr` at `now`; false if it has none left.
    pub fn allow(&mut self, addr: Ipv4Addr, now: Time) -> bool {
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&addr) {
            self.buckets.clear();
        }
        let bucket = self.buckets.entry(addr).or_insert(Bucket::full(now));
        bucket.take(now)
    }
}

/// Counts initiations over the last second, in two half-second buckets.
#[derive(Debug, Default)]
pub struct LoadMeter {
    /// The bucket's start and its count, and the previous bucket's count.
    start: Time,
    now_count: u64,
    prev_count: u64,
}

const HALF: Duration = Duration::from_millis(500);

impl LoadMeter {
    fn roll(&mut self, now: Time) {
        let since = now.saturating_since(self.start);
        if since >= HALF * 2 {
            self.prev_count = 0;
            self.now_count = 0;
            self.start = now;
        } else if since >= HALF {
            self.prev_count = self.now_count;
            self.now_count = 0;
            self.start += HALF;
        }
    }

    /// Counts one initiation at `now`.
    pub fn record(&mut self, now: Time) {
        self.roll(now);
        self.now_count += 1;
    }

    /// Whether more than [`LOAD_THRESHOLD`] initiations came in the last second.
    pub fn under_load(&mut self, now: Time) -> bool {
        self.roll(now);
        self.now_count + self.prev_count > LOAD_THRESHOLD
    }
}

/// A new random cookie secret.
pub(super) fn new_secret(rng: &SystemRandom) -> hmac::Key {
    hmac::Key::generate(hmac::HMAC_SHA256, rng).expect("the system's random source")
}

/// The cookie of `addr` under `secret`: what mac2 must be keyed with.
pub(super) fn cookie_for(secret: &hmac::Key, addr: SocketAddrV4) -> [u8; MAC_LEN] {
    let mut data = [0u8; 6];
    data[..4].copy_from_slice(&addr.ip().octets());
    data[4..].copy_from_slice(&addr.port().to_be_bytes());
    mac(secret, &data)
}

impl Endpoint {
    /// Whether the initiation `m` from `from` may cost a Diffie-Hellman now: under
    /// load it needs a valid mac2 (else a cookie reply goes back), and every source
    /// has a rate.
    pub(super) fn admit(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        m: &Initiation<&[u8]>,
        sender_index: u32,
    ) -> bool {
        if now.saturating_since(self.cookie_rotated) >= COOKIE_LIFETIME {
            self.cookie_secret = new_secret(&self.rng);
            self.cookie_rotated = now;
        }
        self.load.record(now);
        if self.load.under_load(now) {
            let cookie = cookie_for(&self.cookie_secret, from);
            if !check_mac2(&cookie, m.mac2_input(), &m.mac2()) {
                let mut nonce = [0u8; handshake::NONCE_LEN];
                self.rng
                    .fill(&mut nonce)
                    .expect("the system's random source");
                let sealed = self.own_macs.seal_cookie(nonce, &cookie, &m.mac1());
                let mut reply = vec![0; handshake::COOKIE_LEN];
                Repr::Cookie(CookieRepr {
                    sender: self.cfg.node,
                    features: 0,
                    receiver: sender_index,
                    nonce,
                    sealed,
                })
                .emit(&mut reply);
                self.out.push_back(Transmit {
                    to: Dest::Addr(from),
                    datagram: reply,
                });
                return false;
            }
        }
        self.limiter.allow(*from.ip(), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut l = RateLimiter::default();
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let t = Time::from_nanos(1_000_000_000);
        let granted = (0..20).filter(|_| l.allow(a, t)).count() as u64;
        assert_eq!(granted, INITIATION_BURST);
        // Another source is not held back by the first.
        assert!(l.allow(Ipv4Addr::new(10, 0, 0, 2), t));
        // One second later: the rate's worth, capped at the burst.
        let t2 = t + Duration::from_secs(1);
        let granted = (0..40).filter(|_| l.allow(a, t2)).count() as u64;
        assert_eq!(granted, INITIATION_BURST.min(INITIATIONS_PER_SECOND));
        let t3 = t2 + Duration::from_millis(100);
        assert_eq!((0..10).filter(|_| l.allow(a, t3)).count(), 2);
    }

    #[test]
    fn load_is_the_last_second() {
        let mut m = LoadMeter::default();
        let t = Time::from_nanos(5_000_000_000);
        for _ in 0..=LOAD_THRESHOLD {
            m.record(t);
        }
        assert!(m.under_load(t));
        assert!(m.under_load(t + Duration::from_millis(700)));
        assert!(!m.under_load(t + Duration::from_millis(1200)));
    }
}
