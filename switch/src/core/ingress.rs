//! Frames coming in: from a port (IPv4 or ARP), or from a peer through the tunnel
//! (VXLAN or sleeve, decapsulated here), on their way to [`forward`](super::forward).

use std::net::SocketAddr;

use weft_encap::ethernet::{self, ethertype};
use weft_encap::sleeve::{self, Datagram, NodeId};
use weft_encap::vxlan;

use super::{Core, Ctx, Frame, Ingress, Offload, Report, Sink};
use crate::tables::counters::DropReason;
use crate::tables::TunnelMode;

impl Core {
    /// A frame from port `i`.
    pub(super) fn ingress_port<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        i: usize,
        offload: &Offload,
        frame: Frame<'_>,
    ) {
        let port = &cx.tables.ports[i];
        port.counters.rx(self.worker, frame.len);
        let Some(eth) = frame
            .bytes()
            .and_then(|b| ethernet::Frame::new_checked(b).ok())
        else {
            return port.counters.discard(self.worker, DropReason::Malformed);
        };
        match eth.ethertype() {
            ethertype::IPV4 => self.forward(cx, Ingress::Port(i), offload, frame),
            ethertype::ARP => {
                let (start, len) = (frame.start, frame.len);
                self.arp(cx, i, &mut frame.buf[start..start + len]);
            }
            _ => port.counters.discard(self.worker, DropReason::Unsupported),
        }
    }

    /// A datagram from the tunnel socket, from `from`.
    pub(super) fn ingress_tunnel<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        from: SocketAddr,
        datagram: Frame<'_>,
    ) {
        let t = cx.tables;
        let peer = match from {
            SocketAddr::V4(a) => t.peer_by_ip(*a.ip()),
            SocketAddr::V6(_) => None,
        };
        let Some(j) = peer else {
            t.tunnel.rx(self.worker, datagram.len);
            return t.tunnel.discard(self.worker, DropReason::UnknownPeer);
        };
        let counters = &t.peers[j].counters;
        counters.rx(self.worker, datagram.len);
        if datagram.bytes().is_none() {
            return counters.discard(self.worker, DropReason::Malformed);
        }
        match t.node.mode {
            TunnelMode::Vxlan => self.decap_vxlan(cx, j, datagram),
            TunnelMode::Sleeve => self.decap_sleeve(cx, j, from, datagram),
        }
    }

    /// A VXLAN datagram from peer `j`: an IPv4 frame to forward, or a heartbeat.
    fn decap_vxlan<S: Sink + ?Sized>(&mut self, cx: &mut Ctx<'_, S>, j: usize, mut d: Frame<'_>) {
        let counters = &cx.tables.peers[j].counters;
        let bytes = d.bytes().unwrap_or_default();
        let inner = match vxlan::parse(bytes) {
            Ok((repr, _)) if repr.vni != cx.tables.node.vni => {
                return counters.discard(self.worker, DropReason::WrongVni)
            }
            Ok((_, inner)) => ethernet::Frame::new_unchecked(inner),
            Err(_) => return counters.discard(self.worker, DropReason::BadEncap),
        };
        match inner.ethertype() {
            ethertype::IPV4 => {
                let start = d.start + vxlan::HEADER_LEN;
                let len = d.len - vxlan::HEADER_LEN;
                self.forward(cx, Ingress::Peer(j), &Offload::PLAIN, d.reframe(start, len));
            }
            ethertype::WEFT_CONTROL => match sleeve::parse(inner.payload()) {
                Ok(control) if control.sender() != NodeId(cx.tables.peers[j].vtep_mac.0) => {
                    counters.discard(self.worker, DropReason::WrongSender)
                }
                Ok(control) => {
                    // `parse` checked the header is there.
                    let features = sleeve::Packet::new_unchecked(inner.payload()).features();
                    cx.sink.report(Report::Features { peer: j, features });
                    self.control(cx, j, features, &control);
                }
                Err(_) => counters.discard(self.worker, DropReason::BadEncap),
            },
            _ => counters.discard(self.worker, DropReason::Unsupported),
        }
    }

    /// A sleeve datagram from peer `j` at `from`.
    fn decap_sleeve<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        j: usize,
        from: SocketAddr,
        d: Frame<'_>,
    ) {
        let peer = &cx.tables.peers[j];
        let bytes = d.bytes().unwrap_or_default();
        let parsed = match sleeve::parse(bytes) {
            Ok(parsed) => parsed,
            Err(_) => return peer.counters.discard(self.worker, DropReason::BadEncap),
        };
        if parsed.sender() != NodeId(peer.vtep_mac.0) {
            return peer.counters.discard(self.worker, DropReason::WrongSender);
        }
        // `parse` checked the header is there.
        let features = sleeve::Packet::new_unchecked(bytes).features();
        cx.sink.report(Report::Features { peer: j, features });
        match parsed {
            Datagram::Frames { .. } => self.records(cx, j, d),
            Datagram::Chunk { chunk, .. } => {
                // The chunk borrows the datagram; the join copies it out at once.
                let (repr, data) = (chunk.repr, chunk.data);
                self.join(cx, j, from, &repr, data);
            }
            Datagram::Heartbeat { .. } | Datagram::Echo { .. } => {
                self.control(cx, j, features, &parsed)
            }
        }
    }

    /// Forwards every record of a frames datagram from peer `j`, in order. Each
    /// record is framed as Ethernet where its header ends: the record's ethertype
    /// already sits where Ethernet's goes, and the MAC addresses, written on the way
    /// out, go over the record's length and the tail of the record before it, which
    /// has been delivered.
    fn records<S: Sink + ?Sized>(&mut self, cx: &mut Ctx<'_, S>, j: usize, mut d: Frame<'_>) {
        let (start, len) = (d.start, d.len);
        let mut cursor = sleeve::RecordCursor::new();
        loop {
            // `parse` validated every record, so the walk covers them all.
            let Some(record) = cursor.next(&d.buf[start..start + len]) else {
                return;
            };
            if record.ethertype != ethertype::IPV4 {
                cx.tables.peers[j]
                    .counters
                    .discard(self.worker, DropReason::Unsupported);
                continue;
            }
            let eth = start + record.payload.start - ethernet::HEADER_LEN;
            let eth_len = record.payload.len() + ethernet::HEADER_LEN;
            self.forward(
                cx,
                Ingress::Peer(j),
                &Offload::PLAIN,
                d.reframe(eth, eth_len),
            );
        }
    }
}
