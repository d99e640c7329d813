//! Frames coming in: from a port (IPv4 or ARP), or from a peer through the tunnel
//! (VXLAN or sleeve, decapsulated here), on their way to [`forward`](super::forward).

use std::net::SocketAddr;

use weft_encap::ethernet::{self, ethertype};
use weft_encap::sleeve::{self, Datagram, NodeId};
use weft_encap::{ipv4, vxlan};

use super::{Core, Ctx, Frame, Ingress, Offload, Report, Sink};
use crate::tables::counters::DropReason;
use crate::tables::TunnelMode;

/// Whether the partial checksum of the IPv4 packet `ip` (its frame's offload header
/// says NEEDS_CSUM) is where the packet's own headers put it: TCP's or UDP's checksum
/// field, or at least past the IP header for another protocol; and never in a
/// fragment, which a kernel checksums whole before it cuts.
///
/// The switch completes such checksums itself (before a tunnel, an AF_XDP port, or
/// merging datagrams), writing where the header says. A pod that pointed it at its
/// ports could otherwise have the switch rewrite them after policy and Services had
/// judged the packet.
fn partial_checksum_in_place(ip: &[u8], offload: &Offload) -> bool {
    let (Some(&vihl), Some(&proto), Some(frag)) = (ip.first(), ip.get(9), ip.get(6..8)) else {
        return false;
    };
    let l4 = ethernet::HEADER_LEN + usize::from(vihl & 0x0f) * 4;
    let fragment = u16::from_be_bytes([frag[0], frag[1]]) & 0x3fff != 0;
    // The checksum fields' offsets in the TCP and UDP headers (RFC 9293, RFC 768).
    const TCP_CHECKSUM: u16 = 16;
    const UDP_CHECKSUM: u16 = 6;
    let (start, at) = (usize::from(offload.csum_start), offload.csum_offset);
    match proto {
        _ if fragment => false,
        ipv4::protocol::TCP => start == l4 && at == TCP_CHECKSUM,
        ipv4::protocol::UDP => start == l4 && at == UDP_CHECKSUM,
        _ => start >= l4,
    }
}

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
            ethertype::IPV4
                if offload.needs_csum && !partial_checksum_in_place(eth.payload(), offload) =>
            {
                port.counters.discard(self.worker, DropReason::Malformed);
            }
            ethertype::IPV4 => self.forward(cx, Ingress::Port(i), offload, frame),
            ethertype::IPV6 => self.forward6(cx, Ingress::Port(i), offload, frame),
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

    /// A VXLAN datagram from peer `j`: an IPv4 or IPv6 frame to forward, or a
    /// heartbeat.
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
            ethertype::IPV6 => {
                let start = d.start + vxlan::HEADER_LEN;
                let len = d.len - vxlan::HEADER_LEN;
                self.forward6(cx, Ingress::Peer(j), &Offload::PLAIN, d.reframe(start, len));
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
            let eth = start + record.payload.start - ethernet::HEADER_LEN;
            let eth_len = record.payload.len() + ethernet::HEADER_LEN;
            let (from, frame) = (Ingress::Peer(j), d.reframe(eth, eth_len));
            match record.ethertype {
                ethertype::IPV4 => self.forward(cx, from, &Offload::PLAIN, frame),
                ethertype::IPV6 => self.forward6(cx, from, &Offload::PLAIN, frame),
                _ => cx.tables.peers[j]
                    .counters
                    .discard(self.worker, DropReason::Unsupported),
            }
        }
    }
}
