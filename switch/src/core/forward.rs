//! Routing one IPv4 packet: validate it, decide what happens to it, and act.
//!
//! [`decide`] is a pure function of the snapshot, where the packet came from and
//! what its header says; it is the one place a routing verdict is made, as a chain
//! of checks: admission (spoofing, broadcast), the route, the TTL, the MTU. A packet
//! it forwards then meets the two steps that keep state: the host boundary
//! ([`super::host`]: what the host port admits, and which replies return through the
//! host) and NetworkPolicy ([`super::enforce`]: the connection table).

use std::net::Ipv4Addr;

use weft_encap::{ethernet, icmpv4, ipv4, tcp, udp};

use super::flow::LazyFlow;
use super::icmp::IcmpError;
use super::service::{Refusal, Rewrite};
use super::{Core, Ctx, Frame, Ingress, Offload, Sink};
use crate::tables::counters::DropReason;
use crate::tables::fib::NextHop;
use crate::tables::{gateway_of, PeerPath, PortKind, Tables};

/// The facts of a validated IPv4 header that routing needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts {
    /// The IP packet's length, without link padding.
    pub total_len: usize,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub dont_fragment: bool,
    /// Not the first fragment, or an ICMP error: no ICMP error may answer it.
    pub error_exempt: bool,
    /// The IPv4 and TCP (with options) or UDP header bytes, which every segment of
    /// a super-frame repeats; at least the 40 of IPv4 and TCP without options, where
    /// they cannot be read (segmentation then refuses the frame).
    pub headers_len: usize,
}

impl Facts {
    fn of(ip: &ipv4::Packet<&[u8]>) -> Facts {
        let payload = ip.payload();
        let first = ip.frag_offset() == 0;
        let is_icmp_error = ip.protocol() == ipv4::protocol::ICMP
            && first
            && payload.first().is_some_and(|&t| icmpv4::is_error_type(t));
        let l4 = match ip.protocol() {
            ipv4::protocol::UDP => udp::HEADER_LEN,
            _ => tcp::Packet::new_checked(payload).map_or(0, |t| t.header_len()),
        };
        Facts {
            total_len: ip.total_len(),
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            ttl: ip.ttl(),
            dont_fragment: ip.dont_fragment(),
            error_exempt: !first || is_icmp_error,
            headers_len: (ip.header_len() + l4).max(ipv4::HEADER_LEN + tcp::HEADER_LEN),
        }
    }
}

/// What happens to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// It is dropped.
    Drop(DropReason),
    /// It is dropped and its source told why.
    Refuse(DropReason, IcmpError),
    /// It goes to `hop`, its TTL decremented if it is routed through this node.
    Forward { hop: NextHop, decrement_ttl: bool },
}

/// The verdict on a packet with `facts` and offload `offload` from `from`.
pub(super) fn decide(t: &Tables, from: Ingress, offload: &Offload, facts: &Facts) -> Verdict {
    if let Some(reason) = inadmissible(t, from, facts) {
        return Verdict::Drop(reason);
    }
    let hop = match (
        from,
        t.fib.lookup(facts.dst).unwrap_or(NextHop::Unreachable),
    ) {
        // A peer this node routes to directly, but which tunnels back (its segment
        // or settings differ): its pods' packets go through the host, as this
        // node's own to that peer do, so that the host sees both directions of
        // what it translated. Not the peer node's own (from its gateway address)
        // where that address is reached through the tunnel (Services in the
        // switch): this node answers it through the tunnel too. Without that
        // route the answer leaves through the host, so the packet must as well.
        (Ingress::Peer(j), NextHop::Local(_))
            if matches!(t.peers[j].path, PeerPath::Direct { node_via_tunnel, .. }
                if !node_via_tunnel || facts.src != gateway_of(t.peers[j].subnet)) =>
        {
            NextHop::Host
        }
        // The node's own packet (its connection to a ClusterIP, translated) to a
        // pod of a peer the host routes directly: the host cannot take it back (its
        // own address would come in from `weft0`), so it goes through the tunnel,
        // as the peer's answers to this node's gateway address come back.
        (Ingress::Port(i), NextHop::Host)
            if t.ports[i].kind == PortKind::Host && facts.src == t.node.gateway =>
        {
            tunnel_to_direct_peer(t, facts.dst).unwrap_or(NextHop::Host)
        }
        (_, hop) => hop,
    };
    match (from, hop) {
        (Ingress::Peer(_), NextHop::Peer(_)) => return Verdict::Drop(DropReason::NoRelay),
        (Ingress::Port(i), NextHop::Host) if t.ports[i].kind == PortKind::Host => {
            return Verdict::Drop(DropReason::HostLoop)
        }
        (_, NextHop::Unreachable) => {
            return Verdict::Refuse(DropReason::NoRoute, IcmpError::HostUnreachable)
        }
        _ => {}
    }
    // Packets for the gateway address are for the node itself, not forwarded: no
    // router hop, no TTL decrement (as the kernel's bridge gateway behaves).
    let routed = !matches!(from, Ingress::Icmp(_)) && facts.dst != t.node.gateway;
    if routed && facts.ttl <= 1 {
        return Verdict::Refuse(DropReason::TtlExceeded, IcmpError::TtlExceeded);
    }
    let mtu = t.node.pod_mtu as usize;
    // A super-frame is larger by design: its segments, each `gso_size` bytes of
    // payload under a copy of its IPv4 and TCP/UDP headers, must fit the pod's MTU,
    // and they are cut before they leave.
    if offload.is_gso() && usize::from(offload.gso_size) + facts.headers_len > mtu {
        return Verdict::Drop(DropReason::TooBig);
    }
    if !offload.is_gso() && facts.total_len > mtu {
        return match facts.dont_fragment {
            true => Verdict::Refuse(DropReason::TooBig, IcmpError::FragNeeded(mtu as u16)),
            false => Verdict::Drop(DropReason::TooBig),
        };
    }
    Verdict::Forward {
        hop,
        decrement_ttl: routed,
    }
}

/// The tunnel to the direct peer whose subnet holds `dst`, if this node's `weft0`
/// reaches it that way ([`PeerPath::Direct`]).
fn tunnel_to_direct_peer(t: &Tables, dst: Ipv4Addr) -> Option<NextHop> {
    let shares_tunnel = |p: &PeerPath| {
        matches!(
            p,
            PeerPath::Direct {
                node_via_tunnel: true,
                ..
            }
        )
    };
    (t.peers.iter())
        .position(|p| shares_tunnel(&p.path) && p.subnet.contains(&dst))
        .map(NextHop::Peer)
}

/// Why a packet may not enter at all, if it may not.
pub(super) fn inadmissible(t: &Tables, from: Ingress, facts: &Facts) -> Option<DropReason> {
    // A pod sends from its own address only; a peer node from its pod subnet or its
    // own underlay address (its host's traffic to a pod leaves from the subnet's
    // gateway).
    let spoofed = match from {
        Ingress::Port(i) => t.ports[i].kind == PortKind::Pod && facts.src != t.ports[i].ip,
        Ingress::Peer(j) => {
            let peer = &t.peers[j];
            !peer.subnet.contains(&facts.src) && facts.src != *peer.addr.ip()
        }
        Ingress::Icmp(_) => false,
    };
    if spoofed {
        return Some(DropReason::Spoofed);
    }
    let dst = facts.dst;
    if dst.is_multicast() || dst.is_broadcast() || dst == t.node.subnet.broadcast() {
        return Some(DropReason::Multicast);
    }
    None
}

/// The facts of the IPv4 packet in the Ethernet frame `frame`, once it is whole and
/// its header checksum right.
fn parse(frame: &Frame<'_>) -> Result<Facts, DropReason> {
    frame
        .bytes()
        .and_then(|b| b.get(ethernet::HEADER_LEN..))
        .ok_or(DropReason::Malformed)
        .and_then(|b| ipv4::Packet::new_checked(b).map_err(|_| DropReason::Malformed))
        .and_then(|ip| match ip.verify_checksum() {
            true => Ok(Facts::of(&ip)),
            false => Err(DropReason::BadChecksum),
        })
}

/// Where a packet [`decide`] forwards goes, and what is left to do to it.
#[derive(Debug, Clone, Copy)]
struct Pass {
    hop: NextHop,
    decrement_ttl: bool,
    /// A Service translation's rewrite left for after policy (a hairpin's source).
    then: Option<Rewrite>,
}

impl Core {
    /// Routes the IPv4 packet in the Ethernet frame `frame`.
    pub(super) fn forward<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        from: Ingress,
        offload: &Offload,
        frame: Frame<'_>,
    ) {
        let ip_start = frame.start + ethernet::HEADER_LEN;
        let mut facts = match parse(&frame) {
            Ok(facts) => facts,
            Err(reason) => return self.drop_at(cx, from, reason),
        };
        let mut then = None;
        let packet = &frame.buf[ip_start..ip_start + facts.total_len];
        let services = match self.service_gate(cx, from, &facts, packet) {
            Ok(services) => services,
            Err(reason) => return self.drop_at(cx, from, reason),
        };
        if let Some(services) = services {
            let packet = &mut frame.buf[ip_start..ip_start + facts.total_len];
            match self.service_in(cx, services, packet, offload) {
                Ok(after) => then = after,
                Err(Refusal::Drop(reason)) => return self.drop_at(cx, from, reason),
                Err(Refusal::Refuse(reason, error)) => {
                    self.drop_at(cx, from, reason);
                    let quoted = &frame.buf[ip_start..ip_start + facts.total_len];
                    return self.icmp_error(cx, from, quoted, &facts, error);
                }
            }
            let packet = &frame.buf[ip_start..ip_start + facts.total_len];
            facts = Facts::of(&ipv4::Packet::new_unchecked(packet));
        }
        match decide(cx.tables, from, offload, &facts) {
            Verdict::Drop(reason) => self.drop_at(cx, from, reason),
            Verdict::Refuse(_, _)
                if matches!(from, Ingress::Port(i) if cx.tables.ports[i].kind == PortKind::Host)
                    && !self.host_admits(
                        cx,
                        &ipv4::Packet::new_unchecked(
                            &frame.buf[ip_start..ip_start + facts.total_len],
                        ),
                    ) =>
            {
                self.drop_at(cx, from, DropReason::Spoofed)
            }
            Verdict::Refuse(reason, error) => {
                self.drop_at(cx, from, reason);
                let quoted = &frame.buf[ip_start..ip_start + facts.total_len];
                self.icmp_error(cx, from, quoted, &facts, error);
            }
            Verdict::Forward { hop, decrement_ttl } => {
                let pass = Pass {
                    hop,
                    decrement_ttl,
                    then,
                };
                self.pass(cx, from, pass, offload, frame, &facts);
            }
        }
    }

    /// Takes a packet [`decide`] forwards past the host boundary, policy and the
    /// rewrites of Services, and sends it.
    fn pass<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        from: Ingress,
        pass: Pass,
        offload: &Offload,
        mut frame: Frame<'_>,
        facts: &Facts,
    ) {
        let ip_start = frame.start + ethernet::HEADER_LEN;
        let ip = ipv4::Packet::new_unchecked(&frame.buf[ip_start..ip_start + facts.total_len]);
        let mut flow = LazyFlow::new(&ip);
        let hop = match self.host_boundary(cx, from, pass.hop, &mut flow) {
            Ok(hop) => hop,
            Err(reason) => return self.drop_at(cx, from, reason),
        };
        if let Err((port, reason)) = self.policy(cx, from, hop, &mut flow) {
            return cx.tables.ports[port].counters.discard(self.worker, reason);
        }
        // A reply from a Service's endpoint gets the Service's address back.
        let then = pass.then.or_else(|| self.service_reply(cx, hop, &mut flow));
        let packet = &mut frame.buf[ip_start..ip_start + facts.total_len];
        if let Some(Err(reason)) = then.map(|t| t.apply(packet, offload)) {
            return self.drop_at(cx, from, reason);
        }
        if pass.decrement_ttl {
            ipv4::Packet::new_unchecked(packet).decrement_ttl();
        }
        // Ethernet pads short frames; the IP total length is the truth.
        let len = ethernet::HEADER_LEN + facts.total_len;
        let start = frame.start;
        self.egress(cx, from, hop, offload, frame.reframe(start, len));
    }
}
