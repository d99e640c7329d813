//! What is known of each peer's liveness and abilities, learned from its datagrams.
//!
//! The core never writes here: it reports what it saw ([`crate::core::Report`]) and the
//! worker's sink applies the report. The control plane reads it to show `weft peers`
//! and to decide a peer's state. A [`PeerHealth`] outlives snapshots, as a peer's
//! counters do, so a rebuilt table keeps what was learned.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Duration;

use weft_encap::sleeve;

use crate::core::Time;

/// Heartbeat intervals without a word from a peer after which it is down.
pub const MISSED_BEATS_DOWN: u32 = 3;

/// The most heartbeats a node sends a second. Each is a datagram through the
/// kernel's UDP stack (about 5 µs of CPU on a small VM): a node with more peers
/// than this spreads a round (every peer once) over more than its interval.
pub const MAX_BEATS_PER_SECOND: u32 = 1_000;

/// How long one round of heartbeats to `peers` peers takes, with heartbeats due
/// every `interval`: the interval, or longer for more than
/// [`MAX_BEATS_PER_SECOND`] peers (5 s for 5,000). A peer's health is judged on
/// its rounds: down after [`MISSED_BEATS_DOWN`] of them in silence.
pub fn beat_round(interval: Duration, peers: usize) -> Duration {
    let budget = Duration::from_secs(1) * u32::try_from(peers).unwrap_or(u32::MAX);
    interval.max(budget / MAX_BEATS_PER_SECOND)
}

/// A peer's state, as `weft peers` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// A heartbeat or an echo came within the last [`MISSED_BEATS_DOWN`] intervals.
    Up,
    /// It answered before (or it is a sleeve peer, which always answers) and has been
    /// silent for [`MISSED_BEATS_DOWN`] intervals.
    Down,
    /// Never heard from yet: just added, or a VXLAN peer that may be a kernel node,
    /// which never answers weft's heartbeats.
    Unknown,
}

impl PeerState {
    /// The state's name in the CLI and the control protocol.
    pub fn name(self) -> &'static str {
        match self {
            PeerState::Up => "up",
            PeerState::Down => "down",
            PeerState::Unknown => "unknown",
        }
    }
}

/// Liveness and features of one peer. Written by the workers' sinks with relaxed
/// atomics, read by the control plane.
#[derive(Debug)]
pub struct PeerHealth {
    /// When the peer entered this node's tables.
    since: Time,
    /// When its last heartbeat or echo came, in nanoseconds; 0 for never.
    last_heard: AtomicU64,
    /// The last round-trip time an echo measured, in nanoseconds plus one; 0 for none
    /// yet.
    rtt: AtomicU64,
    /// The features byte of its latest sleeve header.
    features: AtomicU8,
    beats_sent: AtomicU64,
    beats_received: AtomicU64,
    echoes_sent: AtomicU64,
    echoes_received: AtomicU64,
}

/// What a peer's health looks like at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// The state at the moment asked about.
    pub state: PeerState,
    /// How long ago it was last heard from, if ever.
    pub last_heard: Option<Duration>,
    /// The last round-trip time measured, if any.
    pub rtt: Option<Duration>,
    /// The feature bits it announced.
    pub features: u8,
    /// Heartbeats this node sent it.
    pub beats_sent: u64,
    /// Heartbeats it sent this node.
    pub beats_received: u64,
    /// Echoes this node sent it.
    pub echoes_sent: u64,
    /// Echoes of this node's heartbeats it sent back.
    pub echoes_received: u64,
}

impl PeerHealth {
    /// A peer first seen at `since`, not heard from yet.
    pub fn new(since: Time) -> PeerHealth {
        PeerHealth {
            since,
            last_heard: AtomicU64::new(0),
            rtt: AtomicU64::new(0),
            features: AtomicU8::new(0),
            beats_sent: AtomicU64::new(0),
            beats_received: AtomicU64::new(0),
            echoes_sent: AtomicU64::new(0),
            echoes_received: AtomicU64::new(0),
        }
    }

    /// The features byte of the peer's latest sleeve header.
    #[inline]
    pub fn features(&self) -> u8 {
        self.features.load(Relaxed)
    }

    /// Whether the peer joins sleeve chunks, so super-frames may go to it whole.
    #[inline]
    pub fn joins_chunks(&self) -> bool {
        self.features() & sleeve::FEATURE_CHUNKS != 0
    }

    /// Records the features byte of a datagram from the peer; writes only on a
    /// change, so workers receiving from one peer do not contend for its cache line.
    #[inline]
    pub fn set_features(&self, features: u8) {
        if self.features() != features {
            self.features.store(features, Relaxed);
        }
    }

    /// The peer was heard from (a heartbeat or an echo) at `now`.
    pub fn heard(&self, now: Time) {
        // 0 means never: a heartbeat at the epoch itself counts as 1 ns after it.
        self.last_heard.store(now.as_nanos().max(1), Relaxed);
    }

    /// An echo of this node's heartbeat came back after `rtt`.
    pub fn echoed(&self, now: Time, rtt: Duration) {
        self.heard(now);
        self.echoes_received.fetch_add(1, Relaxed);
        let nanos = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX - 1);
        self.rtt.store(nanos + 1, Relaxed);
    }

    /// A heartbeat from the peer came at `now`.
    pub fn beat_received(&self, now: Time) {
        self.heard(now);
        self.beats_received.fetch_add(1, Relaxed);
    }

    /// Heartbeats this node sent the peer so far.
    #[inline]
    pub fn beats_sent(&self) -> u64 {
        self.beats_sent.load(Relaxed)
    }

    /// This node sent the peer a heartbeat.
    pub fn beat_sent(&self) {
        self.beats_sent.fetch_add(1, Relaxed);
    }

    /// This node answered one of the peer's heartbeats.
    pub fn echo_sent(&self) {
        self.echoes_sent.fetch_add(1, Relaxed);
    }

    /// The peer's health at `now`, for heartbeats every `interval`. A VXLAN peer that
    /// has never answered stays unknown (it may be a kernel node); a sleeve peer that
    /// has not answered within [`MISSED_BEATS_DOWN`] intervals of being added is down.
    pub fn snapshot(&self, now: Time, interval: Duration, answers_always: bool) -> HealthSnapshot {
        let silence = interval * MISSED_BEATS_DOWN;
        let last = self.last_heard.load(Relaxed);
        let last_heard = (last != 0).then(|| now.saturating_since(Time::from_nanos(last)));
        let state = match last_heard {
            Some(ago) if ago <= silence => PeerState::Up,
            Some(_) => PeerState::Down,
            None if answers_always && now.saturating_since(self.since) > silence => PeerState::Down,
            None => PeerState::Unknown,
        };
        let rtt = self.rtt.load(Relaxed);
        HealthSnapshot {
            state,
            last_heard,
            rtt: rtt.checked_sub(1).map(Duration::from_nanos),
            features: self.features(),
            beats_sent: self.beats_sent.load(Relaxed),
            beats_received: self.beats_received.load(Relaxed),
            echoes_sent: self.echoes_sent.load(Relaxed),
            echoes_received: self.echoes_received.load(Relaxed),
        }
    }
}

/// The names of the feature bits in `features`, as `weft peers` shows them.
pub fn feature_names(features: u8) -> Vec<String> {
    let mut names = Vec::new();
    for bit in 0..8u8 {
        let mask = 1 << bit;
        if features & mask == 0 {
            continue;
        }
        names.push(match mask {
            sleeve::FEATURE_CHUNKS => "chunks".to_owned(),
            sleeve::FEATURE_ECHO => "echo".to_owned(),
            _ => format!("bit{bit}"),
        });
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn at(secs: u64) -> Time {
        Time::ZERO + Duration::from_secs(secs)
    }

    #[test]
    fn states_follow_what_was_heard() {
        let h = PeerHealth::new(at(10));
        // Never heard: unknown at first; a sleeve peer goes down after 3 intervals.
        assert_eq!(h.snapshot(at(12), SECOND, true).state, PeerState::Unknown);
        assert_eq!(h.snapshot(at(14), SECOND, true).state, PeerState::Down);
        assert_eq!(h.snapshot(at(100), SECOND, false).state, PeerState::Unknown);
        h.beat_received(at(20));
        let s = h.snapshot(at(22), SECOND, false);
        assert_eq!(s.state, PeerState::Up);
        assert_eq!(s.last_heard, Some(2 * SECOND));
        assert_eq!((s.beats_received, s.echoes_received), (1, 0));
        // Silent for more than 3 intervals: down, VXLAN or not.
        assert_eq!(h.snapshot(at(24), SECOND, false).state, PeerState::Down);
        h.echoed(at(30), Duration::from_micros(250));
        let s = h.snapshot(at(30), SECOND, false);
        assert_eq!(s.state, PeerState::Up);
        assert_eq!(s.rtt, Some(Duration::from_micros(250)));
        assert_eq!(s.echoes_received, 1);
    }

    #[test]
    fn a_round_takes_the_interval_or_the_budget() {
        assert_eq!(beat_round(SECOND, 0), SECOND);
        assert_eq!(beat_round(SECOND, 1_000), SECOND);
        assert_eq!(beat_round(SECOND, 5_000), SECOND * 5);
        assert_eq!(beat_round(SECOND * 10, 5_000), SECOND * 10);
        assert_eq!(beat_round(Duration::ZERO, 10), Duration::from_millis(10));
    }

    #[test]
    fn features_are_named() {
        let h = PeerHealth::new(Time::ZERO);
        assert!(!h.joins_chunks());
        h.set_features(sleeve::FEATURE_CHUNKS | sleeve::FEATURE_ECHO | 0x80);
        assert!(h.joins_chunks());
        assert_eq!(feature_names(h.features()), ["chunks", "echo", "bit7"]);
        assert!(feature_names(0).is_empty());
    }
}
