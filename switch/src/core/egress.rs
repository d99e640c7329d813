//! Frames going out: to a local port, or encapsulated for a peer. The wire carries
//! complete packets: a super-frame is cut into segments (one GSO send) or, to a weft
//! peer on the sleeve, sent whole as chunks; a checksum the pod left to "hardware"
//! is completed.

use weft_encap::ethernet::{self, ethertype};
use weft_encap::sleeve::{self, NodeId};
use weft_encap::virtio::GsoType;
use weft_encap::{gro, gso, vxlan};

use super::{lane_of, sleeve::FEATURES, Core, Ctx, Frame, Ingress, Offload, Sink};
use crate::tables::counters::DropReason;
use crate::tables::fib::NextHop;
use crate::tables::{PortEntry, TunnelMode};

/// Largest run of segments one super-frame becomes (64 KiB in 512-byte segments,
/// each with its headers and a tunnel header).
pub(super) const SEGMENT_BUF: usize = 512 * 1024;

/// Whether `port` takes the super-frame `frame` (under `offload`) whole: a UDP one
/// only where its TAP takes USO, in as many datagrams as its kernel allows. A port
/// without offloads (AF_XDP) cuts whatever it is given itself.
fn takes_super_frame(port: &PortEntry, offload: &Offload, frame: &[u8]) -> bool {
    if offload.gso_type != GsoType::UdpL4 || !port.offloads {
        return true;
    }
    let payload = frame.len().saturating_sub(usize::from(offload.hdr_len));
    port.uso && payload.div_ceil(usize::from(offload.gso_size).max(1)) <= gro::UDP_MAX_SEGMENTS
}

/// Whether the Ethernet frame `frame` is a whole UDP datagram (over IPv4 or IPv6).
fn is_udp(frame: &[u8]) -> bool {
    gro::Flow::of(frame).is_some_and(|f| f.is_udp())
}

impl Core {
    /// Sends a routed frame to `hop`.
    pub(super) fn egress<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        from: Ingress,
        hop: NextHop,
        offload: &Offload,
        frame: Frame<'_>,
    ) {
        let t = cx.tables;
        let port = match hop {
            NextHop::Local(p) => p,
            NextHop::Host => 0,
            NextHop::Peer(j) => return self.encapsulate(cx, j, offload, frame, ethertype::IPV4),
            // `decide` routes nothing here; drop it rather than trust that.
            NextHop::Unreachable => return self.drop_at(cx, from, DropReason::NoRoute),
        };
        let bytes = &mut frame.buf[frame.start..frame.start + frame.len];
        ethernet::emit_header(
            bytes,
            t.ports[port].mac.0,
            t.node.router_mac.0,
            ethertype::IPV4,
        );
        self.deliver(cx, from, port, offload, bytes);
    }

    /// Sends `bytes`, a routed frame from `from` with its Ethernet header written,
    /// out of port `port`: merged with its flow for a pod where that saves writes,
    /// cut where the port cannot take a super-frame whole.
    pub(super) fn deliver<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        from: Ingress,
        port: usize,
        offload: &Offload,
        bytes: &mut [u8],
    ) {
        let t = cx.tables;
        match from {
            // A super-frame (a pod's or the host's, or a joined sleeve one) goes as it
            // is, after whatever of its flow is being merged, where the port takes it.
            _ if offload.is_gso() => {
                self.coalescers.emit_flow(cx, port, bytes);
                if !takes_super_frame(&t.ports[port], offload, bytes) {
                    return self.cut_for_port(cx, port, offload, bytes);
                }
                cx.sink.to_port(&t.ports[port], offload, bytes);
            }
            // From a tunnel: merged into super-frames for the pod. A port without
            // offloads (AF_XDP) would only cut a merged frame up again.
            Ingress::Peer(_) if t.ports[port].offloads => self.coalescers.coalesce(cx, port, bytes),
            // From a port (a pod, or the host through its port): a UDP flow's
            // datagrams are merged too, for a port that takes USO, so that they cost
            // one write per run instead of one each. This is what lets direct routing
            // carry small datagrams: the host hands them over one at a time.
            Ingress::Port(_) if t.ports[port].uso && is_udp(bytes) => {
                // A pod leaves its datagrams' checksums to the device; a merged run and
                // a datagram sent alone both need whole ones.
                if offload.needs_csum {
                    let (start, at) = (offload.csum_start.into(), offload.csum_offset.into());
                    if gso::complete_checksum(bytes, start, at).is_err() {
                        return self.drop_at(cx, from, DropReason::Malformed);
                    }
                }
                self.coalescers.coalesce(cx, port, bytes);
            }
            _ => cx.sink.to_port(&t.ports[port], offload, bytes),
        }
    }

    /// Writes the super-frame `frame` to port `port`, which cannot take it whole, as
    /// the frames it stands for.
    fn cut_for_port<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        port: usize,
        offload: &Offload,
        frame: &[u8],
    ) {
        let p = &cx.tables.ports[port];
        let mut out = std::mem::take(&mut self.segments);
        match gso::segment(frame, offload, &mut out, 0) {
            Ok(segs) => {
                for f in segs.frames(&out) {
                    cx.sink.to_port(p, &Offload::PLAIN, f);
                }
            }
            Err(_) => p.counters.discard(self.worker, DropReason::Malformed),
        }
        self.segments = out;
    }

    /// Encapsulates `frame`, an IPv4 or IPv6 packet (by `ethertype`) behind an
    /// Ethernet header, for peer `j`.
    pub(super) fn encapsulate<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        j: usize,
        offload: &Offload,
        frame: Frame<'_>,
        ethertype: u16,
    ) {
        let t = cx.tables;
        let peer = &t.peers[j];
        let (eth, len) = (frame.start, frame.len);
        if eth < vxlan::HEADER_LEN {
            // Only frames from ports (which have headroom) and ICMP errors go to peers.
            return peer.counters.discard(self.worker, DropReason::Malformed);
        }
        let buf = frame.buf;
        // Flannel's addressing: inner frame from our VTEP MAC to theirs.
        let inner = &mut buf[eth..eth + len];
        ethernet::emit_header(inner, peer.vtep_mac.0, t.node.router_mac.0, ethertype);
        let lane = lane_of(inner);
        if offload.is_gso() {
            return self.encapsulate_super(cx, j, lane, offload, &buf[eth..eth + len]);
        }
        if offload.needs_csum {
            let (start, at) = (
                usize::from(offload.csum_start),
                usize::from(offload.csum_offset),
            );
            if gso::complete_checksum(inner, start, at).is_err() {
                return peer.counters.discard(self.worker, DropReason::Malformed);
            }
        }
        match t.node.mode {
            TunnelMode::Vxlan => {
                let start = eth - vxlan::HEADER_LEN;
                vxlan::emit_header(&mut buf[start..eth], t.node.vni);
                cx.sink.to_peer(peer, lane, &buf[start..eth + len]);
            }
            TunnelMode::Sleeve => {
                let payload = &buf[eth + ethernet::HEADER_LEN..eth + len];
                self.sleeve
                    .push(cx, self.worker, j, lane, ethertype, payload);
            }
        }
    }

    /// Sends super-frame `frame` to peer `j`: whole, as sleeve chunks, to a peer that
    /// joins them, else cut into wire-sized segments.
    fn encapsulate_super<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        j: usize,
        lane: usize,
        offload: &Offload,
        frame: &[u8],
    ) {
        let t = cx.tables;
        let peer = &t.peers[j];
        // Peers join chunks of IPv4 super-frames only.
        let ipv4 = ethernet::Frame::new_unchecked(frame).ethertype() == ethertype::IPV4;
        let whole = t.node.mode == TunnelMode::Sleeve
            && ipv4
            && peer.health.joins_chunks()
            && offload.needs_csum
            && !offload.gso_ecn
            && gso::super_frame_header(frame, offload.gso_type, offload.gso_size).is_ok();
        if whole && self.send_chunks(cx, j, lane, offload, frame) {
            return;
        }
        let headroom = match t.node.mode {
            TunnelMode::Vxlan => vxlan::HEADER_LEN,
            TunnelMode::Sleeve => 0,
        };
        let mut out = std::mem::take(&mut self.segments);
        match gso::segment(frame, offload, &mut out, headroom) {
            Err(_) => peer.counters.discard(self.worker, DropReason::Malformed),
            Ok(segs) if t.node.mode == TunnelMode::Vxlan => {
                let last = segs
                    .count()
                    .checked_sub(1)
                    .and_then(|i| segs.datagram_range(i));
                for r in (0..segs.count()).filter_map(|i| segs.datagram_range(i)) {
                    vxlan::emit_header(&mut out[r.start..r.start + headroom], t.node.vni);
                }
                if let Some(last) = last {
                    cx.sink
                        .to_peer_run(peer, lane, &out[..last.end], segs.stride());
                }
            }
            Ok(segs) => {
                let ethertype = ethernet::Frame::new_unchecked(frame).ethertype();
                for r in (0..segs.count()).filter_map(|i| segs.frame_range(i)) {
                    let payload = &out[r.start + ethernet::HEADER_LEN..r.end];
                    self.sleeve
                        .push(cx, self.worker, j, lane, ethertype, payload);
                }
            }
        }
        self.segments = out;
    }

    /// Sends the super-frame `frame` (whose virtio-net header `offload` was checked by
    /// [`gso::super_frame_header`]) to peer `j` as sleeve chunks, in one GSO run.
    /// Returns `false`, having sent nothing, if it does not fit the scratch buffer.
    fn send_chunks<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        j: usize,
        lane: usize,
        offload: &Offload,
        frame: &[u8],
    ) -> bool {
        let t = cx.tables;
        let stride = t.node.max_datagram.min(usize::from(u16::MAX));
        let Some(per_chunk) = stride
            .checked_sub(sleeve::CHUNK_OVERHEAD)
            .filter(|&n| n > 0)
        else {
            return false;
        };
        let payload = &frame[ethernet::HEADER_LEN..];
        let (Ok(total), count) = (
            u16::try_from(payload.len()),
            payload.len().div_ceil(per_chunk),
        ) else {
            return false;
        };
        let last = payload
            .len()
            .saturating_sub(count.saturating_sub(1) * per_chunk);
        let end = count.saturating_sub(1) * stride + sleeve::CHUNK_OVERHEAD + last;
        if count == 0 || end > self.segments.len() {
            return false;
        }
        // Frames of this flow waiting in a sleeve batch go first.
        self.sleeve.send_pending(cx, j, lane);
        let frame_id = (self.worker as u32) << 24 | (self.frames_out & 0x00ff_ffff);
        self.frames_out = self.frames_out.wrapping_add(1);
        let sender = NodeId(t.node.router_mac.0);
        for (i, data) in payload.chunks(per_chunk).enumerate() {
            let at = i * stride;
            let d = &mut self.segments[at..at + sleeve::CHUNK_OVERHEAD + data.len()];
            sleeve::emit_header(d, sleeve::Kind::Chunk, sender, FEATURES);
            sleeve::ChunkRepr {
                frame_id,
                total,
                offset: (i * per_chunk) as u16,
                ethertype: ethertype::IPV4,
                gso_type: offload.gso_type.to_wire(),
                gso_size: offload.gso_size,
            }
            .emit(&mut d[sleeve::HEADER_LEN..]);
            d[sleeve::CHUNK_OVERHEAD..].copy_from_slice(data);
        }
        cx.sink
            .to_peer_run(&t.peers[j], lane, &self.segments[..end], stride);
        true
    }
}
