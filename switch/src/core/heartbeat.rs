//! Heartbeats: on a timer, one worker sends every peer a heartbeat; any worker that
//! receives one answers with an echo, and any worker that receives an echo reports the
//! round-trip time. What is heard is reported through the sink, which keeps each
//! peer's health; the control plane decides from it whether a peer is up.
//!
//! A round (every peer once) is spread over the interval: a cursor walks the peer
//! table, and each wake-up sends the share of peers due by then, in at most
//! [`SHARES`] shares a round, so a node with thousands of peers sends some dozens
//! of heartbeats at a time instead of a burst of thousands. Per peer it costs one
//! datagram and no lookup: the sequence number is the peer's own count of
//! heartbeats sent, from its health. A round of more than
//! [`crate::tables::health::MAX_BEATS_PER_SECOND`] peers takes longer than the
//! interval ([`crate::tables::health::beat_round`]).
//!
//! On the sleeve a heartbeat is a sleeve datagram of its own; over VXLAN it rides in
//! an Ethernet frame of ethertype 0x88b5 (SLEEVE.md, "Heartbeats over VXLAN").

use std::time::Duration;

use weft_encap::ethernet::{self, ethertype};
use weft_encap::sleeve::{self, Datagram, Heartbeat, NodeId};
use weft_encap::vxlan;

use super::sleeve::FEATURES;
use super::{Core, Ctx, Report, Sink, Time};
use crate::tables::counters::DropReason;
use crate::tables::health::beat_round;
use crate::tables::TunnelMode;

/// A heartbeat or echo datagram: a sleeve header and the 16-byte body.
const BEAT_LEN: usize = sleeve::HEADER_LEN + sleeve::HEARTBEAT_LEN;

/// The same over VXLAN: VXLAN and Ethernet headers first.
const VXLAN_BEAT_LEN: usize = vxlan::HEADER_LEN + ethernet::HEADER_LEN + BEAT_LEN;

/// The lane heartbeats and echoes leave from.
const BEAT_LANE: usize = 0;

/// The most shares a round is sent in: a share every twentieth of the round (50 ms
/// for the default second), so the worker wakes at most that often for them.
pub const SHARES: u32 = 20;

/// The heartbeat timer of one worker (a no-op for the others).
pub(super) struct Heartbeats {
    interval: Option<Duration>,
    /// When the next share is due.
    next: Option<Time>,
    /// When the round under way began (set by its first share).
    round: Option<Time>,
    /// The index in the peer table of the round's next peer. A snapshot replaced
    /// during a round moves the peers under it: a peer may then miss that round or
    /// have two heartbeats in it, as if its heartbeat had been lost or delayed.
    cursor: usize,
}

impl Heartbeats {
    /// Heartbeats every `interval`, the first at once; none if `None`.
    pub(super) fn new(interval: Option<Duration>) -> Heartbeats {
        Heartbeats {
            interval,
            next: interval.map(|_| Time::ZERO),
            round: None,
            cursor: 0,
        }
    }

    /// When the next share is due.
    pub(super) fn next(&self) -> Option<Time> {
        self.next
    }

    /// Sends the share of the round that is due: the peers whose even place in the
    /// round has come. The round's first share goes at once.
    pub(super) fn handle_timeout<S: Sink + ?Sized>(&mut self, cx: &mut Ctx<'_, S>) {
        let (Some(interval), Some(next)) = (self.interval, self.next) else {
            return;
        };
        if cx.now < next {
            return;
        }
        let round = *self.round.get_or_insert(cx.now);
        let n = cx.tables.peers.len();
        let interval = beat_round(interval, n);
        let due = due_by(n, interval, cx.now.saturating_since(round));
        for j in self.cursor..due {
            let peer = &cx.tables.peers[j];
            if !peer.beats {
                continue;
            }
            let beat = Heartbeat {
                sequence: peer.health.beats_sent() + 1,
                sent_micros: cx.now.as_micros(),
            };
            send_beat(cx, j, sleeve::Kind::Heartbeat, beat);
            cx.sink.report(Report::BeatSent { peer: j });
        }
        self.cursor = self.cursor.max(due);
        if self.cursor >= n {
            // The next round begins an interval after this one did, or now if this
            // one ran late by more than that.
            let start = round + interval;
            let start = if start < cx.now { cx.now } else { start };
            self.round = Some(start);
            self.cursor = 0;
            self.next = Some(start);
        } else {
            let at = round + interval.mul_f64(self.cursor as f64 / n as f64);
            self.next = Some(at.max(cx.now + interval / SHARES));
        }
    }
}

/// How many of a round's `n` peers are due `elapsed` into a round of `interval`:
/// peer `j`'s place is `j / n` of the interval, so the first is due at once and all
/// of them by the end.
fn due_by(n: usize, interval: Duration, elapsed: Duration) -> usize {
    if elapsed >= interval || interval.is_zero() {
        return n;
    }
    let share = n as u128 * elapsed.as_nanos() / interval.as_nanos();
    (share as usize + 1).min(n)
}

/// Sends a heartbeat or an echo carrying `beat` to peer `j`.
fn send_beat<S: Sink + ?Sized>(cx: &mut Ctx<'_, S>, j: usize, kind: sleeve::Kind, beat: Heartbeat) {
    let t = cx.tables;
    let peer = &t.peers[j];
    let me = NodeId(t.node.router_mac.0);
    let mut buf = [0u8; VXLAN_BEAT_LEN];
    let datagram = match t.node.mode {
        TunnelMode::Sleeve => &mut buf[..BEAT_LEN],
        TunnelMode::Vxlan => {
            vxlan::emit_header(&mut buf, t.node.vni);
            let eth = &mut buf[vxlan::HEADER_LEN..];
            ethernet::emit_header(eth, peer.vtep_mac.0, me.0, ethertype::WEFT_CONTROL);
            &mut buf[..]
        }
    };
    let body = datagram.len() - BEAT_LEN;
    match kind {
        sleeve::Kind::Echo => sleeve::emit_echo(&mut datagram[body..], me, FEATURES, beat),
        _ => sleeve::emit_heartbeat(&mut datagram[body..], me, FEATURES, beat),
    };
    cx.sink.to_peer(peer, BEAT_LANE, datagram);
}

impl Core {
    /// A heartbeat or an echo from peer `j`, whose header announced `features`
    /// (already reported by the caller).
    pub(super) fn control<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        j: usize,
        features: u8,
        datagram: &Datagram<'_>,
    ) {
        match *datagram {
            Datagram::Heartbeat { heartbeat, .. } => {
                cx.sink.report(Report::BeatReceived { peer: j });
                if features & sleeve::FEATURE_ECHO != 0 {
                    send_beat(cx, j, sleeve::Kind::Echo, heartbeat);
                    cx.sink.report(Report::EchoSent { peer: j });
                }
            }
            Datagram::Echo { heartbeat, .. } => {
                let sent = Time::from_micros(heartbeat.sent_micros);
                let rtt = cx.now.saturating_since(sent);
                cx.sink.report(Report::Echoed { peer: j, rtt });
            }
            // Frames and chunks are not control datagrams, and have no place in a
            // VXLAN control frame.
            Datagram::Frames { .. } | Datagram::Chunk { .. } => cx.tables.peers[j]
                .counters
                .discard(self.worker, DropReason::BadEncap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_round_is_due_in_even_shares() {
        assert_eq!(due_by(0, SECOND, Duration::ZERO), 0);
        assert_eq!(due_by(1, SECOND, Duration::ZERO), 1);
        assert_eq!(due_by(5000, SECOND, Duration::ZERO), 1);
        assert_eq!(due_by(5000, SECOND, Duration::from_millis(10)), 51);
        assert_eq!(due_by(5000, SECOND, Duration::from_millis(500)), 2501);
        assert_eq!(due_by(5000, SECOND, Duration::from_millis(999)), 4996);
        assert_eq!(due_by(5000, SECOND, SECOND), 5000);
        assert_eq!(due_by(5000, SECOND, SECOND * 7), 5000);
        assert_eq!(due_by(3, Duration::ZERO, Duration::ZERO), 3);
        // Never more than all, never fewer than before.
        let mut last = 0;
        for ms in 0..=1000 {
            let due = due_by(777, SECOND, Duration::from_millis(ms));
            assert!(due >= last && due <= 777);
            last = due;
        }
        assert_eq!(last, 777);
    }
}
