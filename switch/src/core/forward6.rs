//! IPv6 on a dual-stack node: Neighbour Discovery answered by the switch, and IPv6
//! packets routed between the node's pods, its host port, and its peers through
//! the tunnel.
//!
//! As with ARP, the switch answers a Neighbour Solicitation for every address it
//! routes with its router MAC, so nothing is flooded and a pod's neighbours are all
//! the switch. Pods get their address and default route by netlink, so the switch
//! sends no Router Advertisement and ignores Router Solicitations. A pod may send
//! only from its own address; Neighbour and Router Advertisements and Redirects
//! from a pod are dropped as spoofed, and the unspecified source is admitted only
//! for a Neighbour Solicitation (duplicate address detection), which is not
//! answered.
//!
//! A peer's IPv6 subnet is reached through the tunnel (VXLAN or sleeve), whatever
//! the peer's IPv4 path; a peer may send only from its IPv6 subnet, and only to
//! this node's pods and gateway.
//!
//! NetworkPolicy judges IPv6 as it does IPv4 (`super::enforce`), with IPv6
//! addresses and blocks and a connection table of its own, once a packet is
//! routed. What is not here yet, and is dropped rather than half done: IPv6 to a
//! peer that is reached by direct routing or not at all (answered as
//! unreachable).

use std::net::Ipv6Addr;

use weft_encap::ethernet::{self, ethertype};
use weft_encap::icmpv6::{self, kind};
use weft_encap::ipv6::{self, next_header};
use weft_encap::{tcp, udp};

use super::flow::Flow;
use super::{Core, Ctx, Frame, Ingress, Offload, Sink, HEADROOM};
use crate::tables::counters::DropReason;
use crate::tables::{Node6, PeerPath, PortKind, Tables};

/// The smallest MTU of an IPv6 link (RFC 8200 §5): an ICMPv6 error is at most this.
const MIN_MTU: usize = 1280;

/// The facts of a validated IPv6 packet that routing needs.
#[derive(Debug, Clone, Copy)]
struct Facts6 {
    total_len: usize,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    /// The upper layer's protocol and its offset in the packet.
    protocol: u8,
    l4: usize,
    /// Not the first fragment, or an ICMPv6 error: no error may answer it.
    error_exempt: bool,
    /// It is a fragment.
    fragment: bool,
    /// The IPv6 header, extension headers and TCP (with options) or UDP header: what
    /// every segment of a super-frame repeats.
    headers_len: usize,
}

impl Facts6 {
    fn of(ip: &ipv6::Packet<&[u8]>) -> Result<Facts6, DropReason> {
        let payload = ip.payload();
        let upper =
            ipv6::upper_layer(ip.next_header(), payload).map_err(|_| DropReason::Malformed)?;
        let rest = &payload[upper.offset..];
        let first = upper.fragment.is_none_or(|f| f.offset == 0);
        let is_error = upper.protocol == next_header::ICMPV6
            && first
            && rest.first().is_some_and(|&t| icmpv6::is_error(t));
        let l4 = match upper.protocol {
            next_header::UDP => udp::HEADER_LEN,
            _ => tcp::Packet::new_checked(rest).map_or(0, |t| t.header_len()),
        };
        Ok(Facts6 {
            total_len: ip.total_len(),
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            hop_limit: ip.hop_limit(),
            protocol: upper.protocol,
            l4: ipv6::HEADER_LEN + upper.offset,
            error_exempt: !first || is_error,
            fragment: upper.fragment.is_some(),
            headers_len: (ipv6::HEADER_LEN + upper.offset + l4)
                .max(ipv6::HEADER_LEN + tcp::HEADER_LEN),
        })
    }
}

/// Where an IPv6 packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop6 {
    /// Out of port `k` (0: the host port).
    Port(usize),
    /// Through the tunnel to peer `j`.
    Peer(usize),
    /// Nowhere: answered with a destination unreachable of this code.
    Unreachable(u8),
    /// Nowhere, silently: a peer's packet for anything but this node.
    NoRelay,
}

/// Destination unreachable codes (RFC 4443 §3.1).
const NO_ROUTE: u8 = 0;
const ADMIN_PROHIBITED: u8 = 1;
const ADDRESS_UNREACHABLE: u8 = 3;

/// Whether a partial checksum the port left for the switch (NEEDS_CSUM) is where
/// the packet's own TCP or UDP header puts it; see the IPv4 twin in `ingress`.
fn partial_checksum_in_place6(f: &Facts6, offload: &Offload) -> bool {
    let l4 = ethernet::HEADER_LEN + f.l4;
    let (start, at) = (usize::from(offload.csum_start), offload.csum_offset);
    match f.protocol {
        _ if f.fragment => false,
        next_header::TCP => start == l4 && at == 16,
        next_header::UDP => start == l4 && at == 6,
        _ => start >= l4,
    }
}

/// The route of a packet with `f` from `from` on node `t` (whose IPv6 is `v6`).
fn route6(t: &Tables, v6: &Node6, from: Ingress, f: &Facts6) -> Hop6 {
    let dst = f.dst;
    let hop = if dst == v6.gateway {
        Hop6::Port(0)
    } else if let Some(k) = t.port_by_ip6(dst) {
        Hop6::Port(k)
    } else if v6.subnet.contains(&dst) {
        Hop6::Unreachable(ADDRESS_UNREACHABLE)
    } else if let Some(j) = t.peer_by_ip6(dst) {
        match t.peers[j].path {
            PeerPath::Tunnel => Hop6::Peer(j),
            // Direct routing does not carry IPv6 yet.
            PeerPath::Direct { .. } | PeerPath::Unreachable(_) => Hop6::Unreachable(NO_ROUTE),
        }
    } else if v6.cluster.contains(&dst) {
        Hop6::Unreachable(NO_ROUTE)
    } else {
        match from {
            Ingress::Port(i) if t.ports[i].kind == PortKind::Host => Hop6::Unreachable(NO_ROUTE),
            // A pod's packet for outside the cluster, or an error to a source there.
            Ingress::Port(_) | Ingress::Icmp(_) => Hop6::Port(0),
            Ingress::Peer(_) => Hop6::NoRelay,
        }
    };
    let from_host = matches!(from, Ingress::Port(i) if t.ports[i].kind == PortKind::Host);
    match (from, hop) {
        (Ingress::Peer(_), Hop6::Peer(_)) => Hop6::NoRelay,
        // A peer takes from this node only its gateway's and pods' addresses; what
        // the host forwards from elsewhere would be dropped there, so it is refused
        // here (there is no IPv6 masquerade).
        (_, Hop6::Peer(_)) if from_host && f.src != v6.gateway => {
            Hop6::Unreachable(ADMIN_PROHIBITED)
        }
        _ => hop,
    }
}

/// Why an IPv6 packet from `from` may not enter, if it may not.
fn inadmissible6(t: &Tables, v6: &Node6, from: Ingress, f: &Facts6) -> Option<DropReason> {
    let spoofed = match from {
        Ingress::Port(i) => {
            let port = &t.ports[i];
            match port.kind {
                PortKind::Pod => port.ip6 != Some(f.src),
                // The node sends to pods from its gateway address; what it forwards
                // comes from outside the cluster.
                PortKind::Host => f.src != v6.gateway && v6.cluster.contains(&f.src),
            }
        }
        // A peer sends from its own IPv6 subnet (its pods, and its gateway).
        Ingress::Peer(j) => t.peers[j].subnet6.is_none_or(|s| !s.contains(&f.src)),
        Ingress::Icmp(_) => false,
    };
    if spoofed || f.src.is_unspecified() || f.src.is_multicast() || is_link_local(f.src) {
        return Some(DropReason::Spoofed);
    }
    if f.dst.is_multicast() || is_link_local(f.dst) || f.dst.is_unspecified() {
        return Some(DropReason::Multicast);
    }
    None
}

/// Whether `ip` is link-local (fe80::/10), never routed.
fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// Whether an ICMPv6 message of type `t` is Neighbour Discovery or multicast
/// listener signalling: link-local, for the switch, never forwarded.
fn is_link_signalling(t: u8) -> bool {
    matches!(
        t,
        kind::ROUTER_SOLICIT
            | kind::ROUTER_ADVERT
            | kind::NEIGHBOR_SOLICIT
            | kind::NEIGHBOR_ADVERT
            | kind::REDIRECT
            | MLD_QUERY
            | MLD_REPORT
            | MLD_DONE
            | MLD2_REPORT
    )
}

/// Multicast Listener Discovery (RFC 2710, RFC 3810).
const MLD_QUERY: u8 = 130;
const MLD_REPORT: u8 = 131;
const MLD_DONE: u8 = 132;
const MLD2_REPORT: u8 = 143;

impl Core {
    /// An IPv6 frame from `from`: a port, a peer (decapsulated), or an ICMPv6 error
    /// the switch generated.
    pub(super) fn forward6<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        from: Ingress,
        offload: &Offload,
        frame: Frame<'_>,
    ) {
        let t = cx.tables;
        let Some(v6) = t.node.v6 else {
            return self.drop_at(cx, from, DropReason::Unsupported);
        };
        let ip_start = frame.start + ethernet::HEADER_LEN;
        let parsed = (frame.bytes())
            .and_then(|b| ipv6::Packet::new_checked(&b[ethernet::HEADER_LEN..]).ok())
            .ok_or(DropReason::Malformed)
            .and_then(|ip| Facts6::of(&ip));
        let f = match parsed {
            Ok(f) if offload.needs_csum && !partial_checksum_in_place6(&f, offload) => {
                return self.drop_at(cx, from, DropReason::Malformed)
            }
            Ok(f) => f,
            Err(reason) => return self.drop_at(cx, from, reason),
        };
        let packet = &frame.buf[ip_start..ip_start + f.total_len];
        if f.protocol == next_header::ICMPV6 && !f.error_exempt {
            let t = packet.get(f.l4).copied().unwrap_or(0);
            match from {
                Ingress::Port(i) if is_link_signalling(t) => {
                    return self.ndp(cx, i, &v6, &f, packet)
                }
                // The link of a peer is the tunnel: nothing on it asks the switch.
                _ if is_link_signalling(t) => {
                    return self.drop_at(cx, from, DropReason::NdpIgnored)
                }
                _ => {}
            }
        }
        if let Some(reason) = inadmissible6(t, &v6, from, &f) {
            return self.drop_at(cx, from, reason);
        }
        let hop = match route6(t, &v6, from, &f) {
            Hop6::Port(k) if from == Ingress::Port(k) => {
                return self.drop_at(cx, from, DropReason::HostLoop)
            }
            Hop6::NoRelay => return self.drop_at(cx, from, DropReason::NoRelay),
            Hop6::Unreachable(code) => {
                self.drop_at(cx, from, DropReason::NoRoute);
                let error = icmpv6::Repr::DestUnreachable { code };
                return self.icmp6_error(cx, from, &v6, &f, packet, error);
            }
            hop => hop,
        };
        self.pass6(cx, from, hop, &v6, offload, frame, &f);
    }

    /// Takes an admitted, routed IPv6 packet from `from` to `hop`: policy, hop
    /// limit, MTU, offloads, and out.
    #[allow(clippy::too_many_arguments)]
    fn pass6<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        from: Ingress,
        hop: Hop6,
        v6: &Node6,
        offload: &Offload,
        mut frame: Frame<'_>,
        f: &Facts6,
    ) {
        let t = cx.tables;
        let ip_start = frame.start + ethernet::HEADER_LEN;
        let out = match hop {
            Hop6::Port(k) => Some(k),
            _ => None,
        };
        let packet = &frame.buf[ip_start..ip_start + f.total_len];
        let facts = || Flow::of6(&ipv6::Packet::new_unchecked(packet));
        if let Err((port, reason)) = self.policy6(cx, from, out, (f.src, f.dst), facts) {
            return t.ports[port].counters.discard(self.worker, reason);
        }
        // The switch's own errors, and packets for the gateway, are not routed here.
        let routed = f.dst != v6.gateway && !matches!(from, Ingress::Icmp(_));
        if routed && f.hop_limit <= 1 {
            self.drop_at(cx, from, DropReason::TtlExceeded);
            let packet = &frame.buf[ip_start..ip_start + f.total_len];
            let error = icmpv6::Repr::TimeExceeded { code: 0 };
            return self.icmp6_error(cx, from, v6, f, packet, error);
        }
        let mtu = t.node.pod_mtu as usize;
        if offload.is_gso() && usize::from(offload.gso_size) + f.headers_len > mtu {
            return self.drop_at(cx, from, DropReason::TooBig);
        }
        if !offload.is_gso() && f.total_len > mtu {
            self.drop_at(cx, from, DropReason::TooBig);
            let packet = &frame.buf[ip_start..ip_start + f.total_len];
            let error = icmpv6::Repr::PacketTooBig { mtu: mtu as u32 };
            return self.icmp6_error(cx, from, v6, f, packet, error);
        }
        if routed {
            let packet = &mut frame.buf[ip_start..ip_start + f.total_len];
            let mut ip = ipv6::Packet::new_unchecked(packet);
            let hops = ip.hop_limit() - 1;
            ip.set_hop_limit(hops);
        }
        let (start, len) = (frame.start, ethernet::HEADER_LEN + f.total_len);
        let k = match hop {
            Hop6::Port(k) => k,
            Hop6::Peer(j) => {
                let frame = frame.reframe(start, len);
                return self.encapsulate(cx, j, offload, frame, ethertype::IPV6);
            }
            // `forward6` sends nothing else here.
            Hop6::Unreachable(_) | Hop6::NoRelay => {
                return self.drop_at(cx, from, DropReason::NoRoute)
            }
        };
        let dst = &t.ports[k];
        let out = &mut frame.buf[start..start + len];
        let router = t.node.router_mac.0;
        ethernet::emit_header(out, dst.mac.0, router, ethertype::IPV6);
        self.deliver(cx, from, k, offload, out);
    }

    /// Neighbour Discovery and multicast listener messages from port `i`: a
    /// solicitation for an address the switch routes is answered; the rest is
    /// dropped, advertisements and redirects from a pod as spoofed.
    fn ndp<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        i: usize,
        v6: &Node6,
        f: &Facts6,
        packet: &[u8],
    ) {
        let port = &cx.tables.ports[i];
        let drop = |reason| port.counters.discard(self.worker, reason);
        let msg = &packet[f.l4..];
        let Ok(icmp) = icmpv6::Packet::new_checked(msg) else {
            return drop(DropReason::Malformed);
        };
        if !icmp.verify_checksum(&f.src, &f.dst) {
            return drop(DropReason::BadChecksum);
        }
        let t = icmp.msg_type();
        if matches!(t, MLD_QUERY | MLD_REPORT | MLD_DONE | MLD2_REPORT) {
            return drop(DropReason::Multicast);
        }
        let from_pod = port.kind == PortKind::Pod;
        if from_pod
            && matches!(
                t,
                kind::NEIGHBOR_ADVERT | kind::ROUTER_ADVERT | kind::REDIRECT
            )
        {
            return drop(DropReason::Spoofed);
        }
        // RFC 4861 §7.1.1: only from the link itself.
        if !icmpv6::ndp_from_link(f.hop_limit) {
            return drop(DropReason::Malformed);
        }
        let target = match icmpv6::Repr::parse(&icmp) {
            Ok(icmpv6::Repr::NeighborSolicit { target, .. }) => target,
            Ok(_) => return drop(DropReason::NdpIgnored),
            Err(_) => return drop(DropReason::Malformed),
        };
        // Duplicate address detection: the pod's addresses are unique by IPAM.
        if f.src.is_unspecified() {
            return drop(DropReason::NdpIgnored);
        }
        // The asker's own addresses, and what is on its own side, are not the
        // switch's to answer for.
        let own = target == f.src
            || (from_pod && port.ip6 == Some(target))
            || (!from_pod && (target == v6.gateway || !v6.cluster.contains(&target)));
        if own || target.is_multicast() || is_link_local(target) || target.is_unspecified() {
            return drop(DropReason::NdpIgnored);
        }
        if from_pod && port.ip6 != Some(f.src) && !is_link_local(f.src) {
            return drop(DropReason::Spoofed);
        }
        self.advertise(cx, i, target, f.src);
    }

    /// Answers a solicitation for `target` from `asker` on port `i` with the router
    /// MAC, sent to the port's MAC.
    fn advertise<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        i: usize,
        target: Ipv6Addr,
        asker: Ipv6Addr,
    ) {
        let advert = icmpv6::Repr::NeighborAdvert {
            router: true,
            solicited: true,
            override_: true,
            target,
            lladdr: Some(cx.tables.node.router_mac.0),
        };
        // Hop limit 255: the link's own (RFC 4861 §7.1.2).
        self.send_icmp6(cx, i, (target, asker, 255), &advert);
    }

    /// Sends the ICMPv6 error `error` about `orig` (from `from`) back to its
    /// source, from the gateway address, routed like any other packet, within the
    /// worker's limit. Errors never answer errors, later fragments, or sources that
    /// cannot be answered.
    fn icmp6_error<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        from: Ingress,
        v6: &Node6,
        f: &Facts6,
        orig: &[u8],
        error: icmpv6::Repr,
    ) {
        if f.error_exempt || f.src.is_unspecified() || f.src.is_multicast() || f.src == v6.gateway {
            return;
        }
        if !self.icmp_limit.take(cx.now) {
            return self.drop_at(cx, from, DropReason::IcmpLimited);
        }
        let fixed = error.buffer_len();
        let quoted = &orig[..orig.len().min(MIN_MTU - ipv6::HEADER_LEN - fixed)];
        let mut buf = std::mem::take(&mut self.icmp);
        let len = emit_icmp6(
            &mut buf[HEADROOM..],
            (v6.gateway, f.src, 64),
            &error,
            quoted,
        );
        // Its drops count on `from`; as an error, it is never answered by another.
        let frame = Frame::new(&mut buf, HEADROOM, len);
        self.forward6(cx, Ingress::Icmp(from.cause()), &Offload::PLAIN, frame);
        self.icmp = buf;
    }

    /// Sends the ICMPv6 message `msg` from `src` to `dst` with hop limit `hops`
    /// straight out of port `i`, to its MAC from the router MAC: link signalling,
    /// which is not routed.
    fn send_icmp6<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        i: usize,
        addrs: (Ipv6Addr, Ipv6Addr, u8),
        msg: &icmpv6::Repr,
    ) {
        let t = cx.tables;
        let port = &t.ports[i];
        let mut buf = std::mem::take(&mut self.icmp);
        let frame = &mut buf[HEADROOM..];
        let len = emit_icmp6(frame, addrs, msg, &[]);
        let router = t.node.router_mac.0;
        ethernet::emit_header(frame, port.mac.0, router, ethertype::IPV6);
        cx.sink.to_port(port, &Offload::PLAIN, &frame[..len]);
        self.icmp = buf;
    }
}

/// Writes an Ethernet frame (its MACs left for the way out) holding the ICMPv6
/// message `msg`, followed by `tail` (an error's quoted packet), from `src` to
/// `dst` with hop limit `hops`, at the start of `buf`; returns its length. `buf`
/// holds an IPv6 packet of the minimum MTU.
fn emit_icmp6(
    buf: &mut [u8],
    (src, dst, hops): (Ipv6Addr, Ipv6Addr, u8),
    msg: &icmpv6::Repr,
    tail: &[u8],
) -> usize {
    let fixed = msg.buffer_len();
    let len = fixed + tail.len();
    ethernet::Frame::new_unchecked(&mut *buf).set_ethertype(ethertype::IPV6);
    let ip = ethernet::HEADER_LEN;
    ipv6::Repr {
        src,
        dst,
        next_header: next_header::ICMPV6,
        payload_len: len as u16,
        hop_limit: hops,
        traffic_class: 0,
    }
    .emit(&mut buf[ip..]);
    let body = &mut buf[ip + ipv6::HEADER_LEN..ip + ipv6::HEADER_LEN + len];
    msg.emit(body);
    body[fixed..].copy_from_slice(tail);
    icmpv6::Packet::new_unchecked(body).fill_checksum(&src, &dst);
    ip + ipv6::HEADER_LEN + len
}
