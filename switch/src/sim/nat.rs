//! A node's host as kube-proxy leaves it, for the simulation: Services translated
//! to endpoints (DNAT), the hairpin masquerade when a client reaches itself, and a
//! connection table that undoes both on the replies. Like the kernel's, the table
//! reverses only what passes through the host: a reply that reaches its client by
//! another way keeps the endpoint's address, and the client's TCP refuses it. And
//! like the kernel's, it keeps reply tuples unique by giving a new connection another
//! source port where its reply tuple would be an older connection's.
//!
//! What comes out of the host goes to another node's host where a direct route says
//! so (direct routing), back into the switch through the host port when it is for
//! the cluster CIDR, and to the node itself (or the world) otherwise.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{fix_ipv4_checksum, ones_sum};

/// A connection's addresses and ports, one way: (source, source port, destination,
/// destination port, protocol).
pub type Tuple = (Ipv4Addr, u16, Ipv4Addr, u16, u8);

fn reverse(t: Tuple) -> Tuple {
    (t.2, t.3, t.0, t.1, t.4)
}

/// A ClusterIP Service: `vip:port` over `proto`, and its endpoints.
#[derive(Debug, Clone)]
pub struct Service {
    /// The ClusterIP.
    pub vip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// TCP (6) or UDP (17).
    pub proto: u8,
    /// The endpoints, picked in turn for new connections.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// The host of one simulated node.
#[derive(Debug)]
pub struct HostNat {
    gateway: Ipv4Addr,
    cluster: Ipv4Net,
    services: Vec<Service>,
    /// Translated connections: the tuple the client sent, and what it became.
    conns: Vec<(Tuple, Tuple)>,
    turn: usize,
    /// IPv4 packets the host kept: for the node itself or routed to the world.
    pub to_node: Vec<Vec<u8>>,
    /// Packets of translated connections the host saw, both ways.
    pub translated: u64,
    /// Direct routes: a peer's pod subnet, and the peer's node.
    direct: Vec<(Ipv4Net, usize)>,
}

/// Where the host sends a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// Back into the switch, through the host port.
    Back(Vec<u8>),
    /// To node `n`'s host, by a direct route.
    ToNode(usize, Vec<u8>),
    /// Nowhere else: the host kept it (see [`HostNat::to_node`]).
    Kept,
}

impl HostNat {
    /// The host of a node whose gateway address is `gateway`, in a cluster of pod
    /// range `cluster`, with no Services yet.
    pub fn new(gateway: Ipv4Addr, cluster: Ipv4Net) -> HostNat {
        HostNat {
            gateway,
            cluster,
            services: Vec::new(),
            conns: Vec::new(),
            turn: 0,
            to_node: Vec::new(),
            translated: 0,
            direct: Vec::new(),
        }
    }

    /// Routes `subnet` to node `n`'s host, as direct routing's host route does.
    pub fn route_direct(&mut self, subnet: Ipv4Net, n: usize) {
        self.direct.push((subnet, n));
    }

    /// Adds a Service.
    pub fn add_service(&mut self, service: Service) {
        self.services.push(service);
    }

    /// Takes an IPv4 packet the switch (or another node's host) handed to the host,
    /// and says where it goes.
    pub fn route(&mut self, packet: &[u8]) -> Routed {
        let mut p = packet.to_vec();
        if let Some(t) = tuple(&p) {
            if let Some(out) = self.translate(t) {
                rewrite(&mut p, out);
                self.translated += 1;
            }
        }
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        if let Some((_, n)) = self.direct.iter().find(|(net, _)| net.contains(&dst)) {
            return Routed::ToNode(*n, p);
        }
        if self.cluster.contains(&dst) && dst != self.gateway {
            Routed::Back(p)
        } else {
            self.to_node.push(p);
            Routed::Kept
        }
    }

    /// What a packet of tuple `t` becomes, if the host translates it.
    fn translate(&mut self, t: Tuple) -> Option<Tuple> {
        for (orig, xlat) in &self.conns {
            if t == reverse(*xlat) {
                return Some(reverse(*orig));
            }
            if t == *orig {
                return Some(*xlat);
            }
        }
        let svc = self
            .services
            .iter()
            .find(|s| (s.vip, s.port, s.proto) == (t.2, t.3, t.4))?;
        let (ep, ep_port) = svc.endpoints[self.turn % svc.endpoints.len()];
        self.turn += 1;
        // kube-proxy's KUBE-SEP masquerades a client that reaches itself.
        let src = if ep == t.0 { self.gateway } else { t.0 };
        let sport = self.free_source_port(src, t.1, (ep, ep_port, t.4))?;
        let xlat = (src, sport, ep, ep_port, t.4);
        self.conns.push((t, xlat));
        Some(xlat)
    }

    /// The source port a new connection from `src`:`port` to `to` keeps, or takes
    /// instead, as Linux's NAT does: no two connections may have one reply tuple, so
    /// a client port reused towards another Service of the same endpoint, while the
    /// host still tracks the first connection (here: ever), gets the lowest free
    /// port from 1024. None when every port is taken (the packet goes on
    /// untranslated, where Linux would drop it).
    fn free_source_port(&self, src: Ipv4Addr, port: u16, to: (Ipv4Addr, u16, u8)) -> Option<u16> {
        let taken = |p: u16| {
            self.conns
                .iter()
                .any(|(_, x)| *x == (src, p, to.0, to.1, to.2))
        };
        std::iter::once(port)
            .chain(1024..=u16::MAX)
            .find(|&p| !taken(p))
    }
}

/// The tuple of a TCP or UDP packet.
fn tuple(p: &[u8]) -> Option<Tuple> {
    let ihl = usize::from(p.first()? & 0x0f) * 4;
    let proto = *p.get(9)?;
    if !matches!(proto, 6 | 17) || p.len() < ihl + 4 {
        return None;
    }
    let port = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
    Some((
        Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        port(ihl),
        Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        port(ihl + 2),
        proto,
    ))
}

/// Writes tuple `t` into packet `p` and recomputes its checksums.
fn rewrite(p: &mut [u8], t: Tuple) {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    p[12..16].copy_from_slice(&t.0.octets());
    p[16..20].copy_from_slice(&t.2.octets());
    p[ihl..ihl + 2].copy_from_slice(&t.1.to_be_bytes());
    p[ihl + 2..ihl + 4].copy_from_slice(&t.3.to_be_bytes());
    fix_ipv4_checksum(p);
    let at = ihl + if t.4 == 6 { 16 } else { 6 };
    if t.4 == 17 && p[at..at + 2] == [0, 0] {
        // A UDP checksum of 0 says there is none.
        return;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    p[at..at + 2].fill(0);
    let l4_len = total - ihl;
    let mut pseudo = Vec::with_capacity(12 + l4_len);
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, t.4]);
    pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[ihl..total]);
    let sum = !ones_sum(&pseudo);
    let sum = if sum == 0 && t.4 == 17 { 0xffff } else { sum };
    p[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}
