//! Heartbeats: on a timer, one worker sends every peer a heartbeat; any worker that
//! receives one answers with an echo, and any worker that receives an echo reports the
//! round-trip time. What is heard is reported through the sink, which keeps each
//! peer's health; the control plane decides from it whether a peer is up.
//!
//! On the sleeve a heartbeat is a sleeve datagram of its own; over VXLAN it rides in
//! an Ethernet frame of ethertype 0x88b5 (SLEEVE.md, "Heartbeats over VXLAN").

use std::net::SocketAddrV4;
use std::time::Duration;

use weft_encap::ethernet::{self, ethertype};
use weft_encap::sleeve::{self, Datagram, Heartbeat, NodeId};
use weft_encap::vxlan;

use super::sleeve::FEATURES;
use super::{Core, Ctx, Report, Sink, Time};
use crate::tables::counters::DropReason;
use crate::tables::TunnelMode;

/// A heartbeat or echo datagram: a sleeve header and the 16-byte body.
const BEAT_LEN: usize = sleeve::HEADER_LEN + sleeve::HEARTBEAT_LEN;

/// The same over VXLAN: VXLAN and Ethernet headers first.
const VXLAN_BEAT_LEN: usize = vxlan::HEADER_LEN + ethernet::HEADER_LEN + BEAT_LEN;

/// The lane heartbeats and echoes leave from.
const BEAT_LANE: usize = 0;

/// The heartbeat timer of one worker (a no-op for the others).
pub(super) struct Heartbeats {
    interval: Option<Duration>,
    next: Option<Time>,
    /// Heartbeats sent so far to each peer, by underlay address.
    sent: Vec<(SocketAddrV4, u64)>,
}

impl Heartbeats {
    /// Heartbeats every `interval`, the first at once; none if `None`.
    pub(super) fn new(interval: Option<Duration>) -> Heartbeats {
        Heartbeats {
            interval,
            next: interval.map(|_| Time::ZERO),
            sent: Vec::new(),
        }
    }

    /// When the next round is due.
    pub(super) fn next(&self) -> Option<Time> {
        self.next
    }

    /// Sends a heartbeat to every peer of the snapshot if a round is due.
    pub(super) fn handle_timeout<S: Sink + ?Sized>(&mut self, cx: &mut Ctx<'_, S>) {
        let (Some(interval), Some(next)) = (self.interval, self.next) else {
            return;
        };
        if cx.now < next {
            return;
        }
        let peers = &cx.tables.peers;
        self.sent
            .retain(|(addr, _)| peers.iter().any(|p| p.addr == *addr));
        for (j, peer) in peers.iter().enumerate().filter(|(_, p)| p.beats) {
            let sequence = match self.sent.iter_mut().find(|(addr, _)| *addr == peer.addr) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    self.sent.push((peer.addr, 1));
                    1
                }
            };
            let beat = Heartbeat {
                sequence,
                sent_micros: cx.now.as_micros(),
            };
            send_beat(cx, j, sleeve::Kind::Heartbeat, beat);
            cx.sink.report(Report::BeatSent { peer: j });
        }
        self.next = Some(cx.now + interval);
    }
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
