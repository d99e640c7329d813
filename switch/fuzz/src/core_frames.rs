//! The switch core's input: frames from pods and from the host port, and
//! datagrams from the tunnel, hostile, on a simulated two-node dual-stack
//! cluster (`weft_switch::sim`), with one pod isolated by a NetworkPolicy that
//! judges both families.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use arbitrary::{Arbitrary, Unstructured};
use weft_encap::{sleeve, virtio, vxlan};
use weft_switch::core::Offload;
use weft_switch::netpol::{compile, manifest, model::PolicyModel};
use weft_switch::sim::{self, Event, Ip, Sim};
use weft_switch::tables::{PortKind, TunnelMode};

/// Pod A, on node 0: pod B lets it in on TCP port 80.
const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
/// Pod A2, also on node 0.
const A2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
/// Pod B, on node 1: isolated both ways.
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
/// The port B admits A on.
const B_PORT: u16 = 80;

/// The pods, their labels and B's policy: in from A on TCP 80, nothing out.
const POLICY: &str = "
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: default, labels: {app: a}}
status: {podIPs: [{ip: 10.244.1.5}, {ip: 'fd00:10:244:1::5'}]}
---
kind: Pod
apiVersion: v1
metadata: {name: a2, namespace: default, labels: {app: a2}}
status: {podIPs: [{ip: 10.244.1.6}, {ip: 'fd00:10:244:1::6'}]}
---
kind: Pod
apiVersion: v1
metadata: {name: b, namespace: default, labels: {app: b}}
status: {podIPs: [{ip: 10.244.2.5}, {ip: 'fd00:10:244:2::5'}]}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: b, namespace: default}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
    ports: [{protocol: TCP, port: 80}]
";

/// The cluster and what is done to it.
#[derive(Debug, Arbitrary)]
struct Input {
    sleeve: bool,
    heartbeats: bool,
    ops: Vec<Op>,
}

/// One thing that happens to the cluster.
#[derive(Debug, Arbitrary)]
enum Op {
    /// What a pod's TAP read: a virtio-net header (`vnet`), then a frame.
    PodRaw { pod: u8, vnet: bool, bytes: Vec<u8> },
    /// An IPv4 packet a pod sends to its gateway's MAC.
    PodPacket { pod: u8, packet: Packet },
    /// A frame from a node's host port.
    HostRaw { node: bool, bytes: Vec<u8> },
    /// An IPv4 packet from a node's host port.
    HostPacket { node: bool, packet: Packet },
    /// A datagram on a node's tunnel socket.
    TunnelRaw {
        node: bool,
        from: From,
        bytes: Vec<u8>,
    },
    /// A well-framed datagram from a node's peer (VXLAN or sleeve frames).
    TunnelPackets {
        node: bool,
        from_port: u16,
        packets: Vec<Packet>,
    },
    /// An IPv6 packet a pod sends to its gateway's MAC.
    PodPacket6 { pod: u8, packet: Packet6 },
    /// An IPv6 packet from a node's host port.
    HostPacket6 { node: bool, packet: Packet6 },
    /// A well-framed datagram of IPv6 packets from a node's peer.
    TunnelPackets6 {
        node: bool,
        from_port: u16,
        packets: Vec<Packet6>,
    },
    /// The batch ends.
    Flush,
    /// The wire delivers what has arrived.
    Deliver,
    /// Time passes, in milliseconds, and the timers run.
    Advance(u16),
}

/// Where a tunnel datagram comes from.
#[derive(Debug, Arbitrary)]
enum From {
    /// The peer node, from any port.
    Peer(u16),
    /// The receiving node itself.
    Itself,
    /// An address that is no node.
    Stranger(u32, u16),
    /// An IPv6 address.
    V6,
}

/// An address a packet may carry.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Addr {
    A,
    A2,
    B,
    Gateway(bool),
    Underlay(bool),
    Nowhere,
    Any(u32),
}

impl Addr {
    fn ip(self) -> Ipv4Addr {
        match self {
            Addr::A => A,
            Addr::A2 => A2,
            Addr::B => B,
            Addr::Gateway(n) => sim::gateway(usize::from(n)),
            Addr::Underlay(n) => *sim::underlay(usize::from(n)).ip(),
            Addr::Nowhere => Ipv4Addr::new(10, 244, 99, 9),
            Addr::Any(ip) => Ipv4Addr::from(ip),
        }
    }
}

/// An IPv4 packet, from fields.
#[derive(Debug, Arbitrary)]
struct Packet {
    src: Addr,
    dst: Addr,
    ttl: u8,
    df: bool,
    frag_offset: u16,
    l4: L4,
    payload: Vec<u8>,
}

/// Its layer 4 header.
#[derive(Debug, Arbitrary)]
enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    Icmp { kind: u8, code: u8, rest: u32 },
    Other(u8),
}

/// A TCP header with no options (checksum not filled).
fn tcp_header(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h
}

/// An ICMP or ICMPv6 header: type, code, no checksum, then `rest`.
fn icmp_header(kind: u8, code: u8, rest: u32) -> Vec<u8> {
    let mut h = vec![kind, code, 0, 0];
    h.extend_from_slice(&rest.to_be_bytes());
    h
}

impl Packet {
    /// The packet's bytes: a header with a right checksum, its layer 4 header,
    /// its payload.
    fn bytes(&self) -> Vec<u8> {
        let (proto, mut l4) = match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => (6, tcp_header(sport, dport, flags)),
            L4::Udp { sport, dport } => (17, sim::udp(sport, dport, 0)),
            L4::Icmp { kind, code, rest } => (1, icmp_header(kind, code, rest)),
            L4::Other(proto) => (proto, Vec::new()),
        };
        l4.extend_from_slice(&self.payload);
        Ip {
            src: self.src.ip(),
            dst: self.dst.ip(),
            ttl: self.ttl,
            proto,
            df: self.df,
            frag_offset: self.frag_offset,
        }
        .packet(&l4)
    }
}

impl Addr {
    /// The address as an IPv6 packet carries it: a pod's or a gateway's IPv6
    /// address, an underlay host as an outside address, or anything, within
    /// the cluster's range or not.
    fn ip6(self) -> Ipv6Addr {
        match self {
            Addr::A | Addr::A2 | Addr::B | Addr::Nowhere => sim::ip6_of(self.ip()),
            Addr::Gateway(n) => sim::gateway6(usize::from(n)),
            Addr::Underlay(n) => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(n)),
            Addr::Any(ip) => {
                let cluster = u128::from(sim::gateway6(0)) & !u128::from(u64::MAX);
                Ipv6Addr::from(cluster ^ u128::from(ip) << 32 ^ u128::from(ip))
            }
        }
    }
}

/// An IPv6 packet, from fields: extension headers, then an upper layer.
#[derive(Debug, Arbitrary)]
struct Packet6 {
    src: Addr,
    dst: Addr,
    /// Taken as is, or, if set, any address at all.
    wild_src: Option<u128>,
    hops: u8,
    extensions: Vec<Extension>,
    l4: L46,
    payload: Vec<u8>,
}

/// An extension header.
#[derive(Debug, Arbitrary)]
enum Extension {
    /// Hop-by-hop or destination options, of `len` 8-byte units beyond the first.
    Options { hop_by_hop: bool, len: u8 },
    /// A fragment header.
    Fragment { offset: u16, more: bool, ident: u32 },
}

/// Its upper layer.
#[derive(Debug, Arbitrary)]
enum L46 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        kind: u8,
        code: u8,
        rest: u32,
    },
    /// An ICMPv6 error quoting `quoted`, cut to `cut` bytes.
    Error {
        kind: u8,
        quoted: Box<Packet6>,
        cut: u16,
    },
    Other(u8),
}

impl Packet6 {
    /// The packet's bytes (upper-layer checksums are not filled: the switch
    /// does not check them).
    fn bytes(&self) -> Vec<u8> {
        let (next, mut upper) = match &self.l4 {
            L46::Tcp {
                sport,
                dport,
                flags,
            } => (6, tcp_header(*sport, *dport, *flags)),
            L46::Udp { sport, dport } => (17, sim::udp(*sport, *dport, 0)),
            L46::Icmp { kind, code, rest } => (58, icmp_header(*kind, *code, *rest)),
            L46::Error { kind, quoted, cut } => {
                let mut h = vec![kind % 5, 0, 0, 0, 0, 0, 5, 0];
                let inner = quoted.bytes();
                h.extend_from_slice(&inner[..inner.len().min(usize::from(*cut))]);
                (58, h)
            }
            L46::Other(next) => (*next, Vec::new()),
        };
        upper.extend_from_slice(&self.payload);
        let mut body = Vec::new();
        let mut first = next;
        for (k, ext) in self.extensions.iter().take(4).enumerate().rev() {
            let follows = first;
            let header = match *ext {
                Extension::Options { hop_by_hop, len } => {
                    first = if hop_by_hop && k == 0 { 0 } else { 60 };
                    let mut h = vec![0u8; 8 * (1 + usize::from(len % 4))];
                    h[0] = follows;
                    h[1] = len % 4;
                    h
                }
                Extension::Fragment {
                    offset,
                    more,
                    ident,
                } => {
                    first = 44;
                    let word = (offset << 3) | u16::from(more);
                    let mut h = vec![follows, 0];
                    h.extend_from_slice(&word.to_be_bytes());
                    h.extend_from_slice(&ident.to_be_bytes());
                    h
                }
            };
            body.splice(0..0, header);
        }
        body.extend_from_slice(&upper);
        let src = self.wild_src.map_or(self.src.ip6(), Ipv6Addr::from);
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
        p[4..6].copy_from_slice(&len.to_be_bytes());
        p[6] = first;
        p[7] = self.hops;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&self.dst.ip6().octets());
        p.extend_from_slice(&body[..body.len().min(usize::from(len))]);
        p
    }

    /// The source it carries.
    fn src(&self) -> Ipv6Addr {
        self.wild_src.map_or(self.src.ip6(), Ipv6Addr::from)
    }
}

/// Runs the operations of `data` on a two-node cluster, checking what each
/// one makes the switches send.
///
/// Panics if anything panics (the simulation itself refuses a frame for a
/// port no pod owns, a UDP super-frame for a port that takes none, and a
/// super-frame that does not segment), if a frame or datagram is not counted
/// once where it came in, if a switch sends to a port or peer it does not
/// have, or a datagram longer than the underlay carries, if a pod gets a frame
/// that is not its own, if a spoofed packet from a pod or a datagram from a
/// stranger causes any send, or if pod B gets a packet its policy denies.
pub fn core_frames(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mode = match input.sleeve {
        true => TunnelMode::Sleeve,
        false => TunnelMode::Vxlan,
    };
    let layout: &[&[Ipv4Addr]] = &[&[A, A2], &[B]];
    let mut sim = match input.heartbeats {
        true => Sim::with_heartbeats(mode, layout, std::time::Duration::from_millis(100)),
        false => Sim::new(mode, layout),
    };
    isolate_b(&mut sim);
    sim.out.capture = true;
    for op in &input.ops {
        run(&mut sim, op);
    }
}

/// Gives pod B the rules [`POLICY`] compiles to.
fn isolate_b(sim: &mut Sim) {
    let mut model = PolicyModel::default();
    manifest::read("policy.yaml", POLICY, &mut model).expect("the policy reads");
    let local: Vec<compile::LocalPod> = model
        .pods
        .iter()
        .map(|p| compile::LocalPod {
            ip: p.ip.expect("an address"),
            ip6: p.ip6,
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        })
        .collect();
    let compiled = compile::compile(&model, &local);
    let b = sim.pod(B);
    let rules = compiled.by_ip.get(&B).expect("B is isolated");
    sim.set_rules(b, Some((**rules).clone()));
}

/// The most bytes the simulation's receive buffer takes.
const MAX_FRAME: usize = 65_536;

/// Runs one operation and checks what it sent.
fn run(sim: &mut Sim, op: &Op) {
    let rx_before = received(sim);
    let mut quiet = false;
    let mut counted = None;
    match op {
        Op::PodRaw { pod, vnet, bytes } => {
            let p = usize::from(*pod) % sim.pods.len();
            let bytes = &bytes[..bytes.len().min(MAX_FRAME)];
            let (offload, frame) = match vnet {
                true => match virtio::parse(bytes) {
                    Ok(parsed) => parsed,
                    Err(_) => return,
                },
                false => (Offload::PLAIN, bytes),
            };
            let (n, port) = (sim.pods[p].node, sim.pods[p].port);
            sim.pods[p].frames_sent += 1;
            sim.port_frame_with(n, port, &offload, frame);
            counted = Some(Where::Port(n, port));
        }
        Op::PodPacket { pod, packet } => {
            let p = usize::from(*pod) % sim.pods.len();
            let frame = sim::from_pod(sim, p, &packet.bytes());
            quiet = packet.src.ip() != sim.pods[p].ip;
            sim.pod_frame(p, &frame[..frame.len().min(MAX_FRAME)]);
            counted = Some(Where::Port(sim.pods[p].node, sim.pods[p].port));
        }
        Op::HostRaw { node, bytes } => {
            let n = usize::from(*node);
            sim.host_frame(n, &bytes[..bytes.len().min(MAX_FRAME)]);
            counted = Some(Where::Port(n, 0));
        }
        Op::HostPacket { node, packet } => {
            let ethertype = sim::ETHERTYPE_IPV4;
            counted = Some(host_packet(
                sim,
                usize::from(*node),
                ethertype,
                &packet.bytes(),
            ));
        }
        Op::TunnelRaw { node, from, bytes } => {
            let n = usize::from(*node);
            let (addr, known) = source(n, from);
            quiet = !known;
            sim.tunnel_in(n, addr, &bytes[..bytes.len().min(MAX_FRAME)]);
            counted = Some(Where::Tunnel(n));
        }
        Op::TunnelPackets {
            node,
            from_port,
            packets,
        } => {
            let packets: Vec<Vec<u8>> = packets.iter().map(Packet::bytes).collect();
            let (n, ethertype) = (usize::from(*node), sim::ETHERTYPE_IPV4);
            counted = Some(tunnel_packets(sim, n, *from_port, ethertype, &packets));
        }
        Op::PodPacket6 { pod, packet } => {
            let p = usize::from(*pod) % sim.pods.len();
            let bytes = packet.bytes();
            let mac = sim.pods[p].mac;
            let frame = sim::eth(
                sim::router_mac(sim.pods[p].node),
                mac,
                sim::ETHERTYPE_IPV6,
                &bytes,
            );
            // Only the pod's own address sends (NDP from the unspecified address
            // is answered by nothing either).
            quiet = packet.src() != sim::ip6_of(sim.pods[p].ip);
            sim.pod_frame(p, &frame[..frame.len().min(MAX_FRAME)]);
            counted = Some(Where::Port(sim.pods[p].node, sim.pods[p].port));
        }
        Op::HostPacket6 { node, packet } => {
            let ethertype = sim::ETHERTYPE_IPV6;
            counted = Some(host_packet(
                sim,
                usize::from(*node),
                ethertype,
                &packet.bytes(),
            ));
        }
        Op::TunnelPackets6 {
            node,
            from_port,
            packets,
        } => {
            let packets: Vec<Vec<u8>> = packets.iter().map(Packet6::bytes).collect();
            let (n, ethertype) = (usize::from(*node), sim::ETHERTYPE_IPV6);
            counted = Some(tunnel_packets(sim, n, *from_port, ethertype, &packets));
        }
        Op::Flush => sim.flush(),
        Op::Deliver => sim.deliver_wire(),
        Op::Advance(ms) => {
            let until = sim.time() + std::time::Duration::from_millis(u64::from(*ms));
            while sim.advance(until) {}
        }
    }
    check_counted(sim, &rx_before, counted);
    check_sends(sim, quiet);
}

/// Sends `packet` of `ethertype` from node `n`'s host port (from the host's
/// MAC); where it came in.
fn host_packet(sim: &mut Sim, n: usize, ethertype: u16, packet: &[u8]) -> Where {
    let host = sim.nodes[n].tables.ports[0].mac;
    let frame = sim::eth(sim::router_mac(n), host, ethertype, packet);
    sim.host_frame(n, &frame[..frame.len().min(MAX_FRAME)]);
    Where::Port(n, 0)
}

/// Sends `packets` of `ethertype`, framed, from node `n`'s peer (from port
/// `from_port`) to node `n`; where it came in.
fn tunnel_packets(
    sim: &mut Sim,
    n: usize,
    from_port: u16,
    ethertype: u16,
    packets: &[Vec<u8>],
) -> Where {
    let from = SocketAddr::V4(SocketAddrV4::new(*sim::underlay(1 - n).ip(), from_port));
    let datagram = framed_bytes(sim.mode, 1 - n, n, ethertype, packets);
    sim.tunnel_in(n, from, &datagram[..datagram.len().min(MAX_FRAME)]);
    Where::Tunnel(n)
}

/// Where a frame or datagram came in.
#[derive(Debug, Clone, Copy)]
enum Where {
    /// Node `.0`'s port `.1`.
    Port(usize, usize),
    /// Node `.0`'s tunnel socket.
    Tunnel(usize),
}

/// What every node has counted as received: per port, then per peer and the
/// tunnel.
fn received(sim: &Sim) -> Vec<Vec<u64>> {
    (0..sim.nodes.len())
        .map(|n| {
            sim.all_counters(n)
                .iter()
                .map(|(_, s)| s.rx_packets)
                .collect()
        })
        .collect()
}

/// The one input was counted as received once, where it came in, and nothing
/// else was.
fn check_counted(sim: &Sim, before: &[Vec<u64>], at: Option<Where>) {
    let after = received(sim);
    for (n, (b, a)) in before.iter().zip(&after).enumerate() {
        let grown: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        let total: u64 = a.iter().sum::<u64>() - b.iter().sum::<u64>();
        match at {
            Some(Where::Port(m, port)) if m == n => {
                assert_eq!((grown.as_slice(), total), (&[port][..], 1), "node {n} rx");
            }
            Some(Where::Tunnel(m)) if m == n => {
                let ports = sim.nodes[n].tables.ports.len();
                assert!(grown.len() == 1 && grown[0] >= ports, "node {n}: {grown:?}");
                assert_eq!(total, 1, "node {n}: one datagram counted once");
            }
            // The wire and the timers move datagrams: counted where they land.
            _ if at.is_none() => {}
            _ => assert!(grown.is_empty(), "node {n} counted another node's input"),
        }
    }
}

/// The datagram from node `m` to node `n` that carries `packets` of `ethertype`:
/// one VXLAN frame (the first packet), or a sleeve frames datagram of all that fit.
fn framed_bytes(
    mode: TunnelMode,
    m: usize,
    n: usize,
    ethertype: u16,
    packets: &[Vec<u8>],
) -> Vec<u8> {
    match mode {
        TunnelMode::Vxlan => {
            let mut d = vec![0; vxlan::HEADER_LEN];
            vxlan::emit_header(&mut d, vxlan::Vni::new(1).expect("a VNI"));
            let packet = packets.first().cloned().unwrap_or_default();
            let (to, from) = (sim::router_mac(n), sim::router_mac(m));
            d.extend(sim::eth(to, from, ethertype, &packet));
            d
        }
        TunnelMode::Sleeve => {
            let mut d = vec![0; MAX_FRAME];
            let sender = sleeve::NodeId(sim::router_mac(m).0);
            let mut w = sleeve::FramesWriter::new(&mut d, sender, weft_switch::core::FEATURES)
                .expect("room for a header");
            for p in packets {
                if !w.try_push(ethertype, p) {
                    break;
                }
            }
            let len = w.finish();
            d.truncate(len);
            d
        }
    }
}

/// The address a datagram to node `n` comes from, and whether it is a peer's.
fn source(n: usize, from: &From) -> (SocketAddr, bool) {
    let v4 = |ip, port| SocketAddr::V4(SocketAddrV4::new(ip, port));
    match *from {
        From::Peer(port) => (v4(*sim::underlay(1 - n).ip(), port), true),
        From::Itself => (SocketAddr::V4(sim::underlay(n)), false),
        From::Stranger(ip, port) => {
            let ip = Ipv4Addr::from(ip);
            let peer = ip == *sim::underlay(1 - n).ip();
            (v4(ip, port), peer)
        }
        From::V6 => ("[fe80::1]:8472".parse().expect("an address"), false),
    }
}

/// Checks what the last operation sent, and forgets it.
fn check_sends(sim: &mut Sim, quiet: bool) {
    let log = std::mem::take(&mut sim.out.log);
    assert!(
        !quiet || log.is_empty(),
        "a spoofed frame or a stranger's datagram caused {log:?}"
    );
    for event in &log {
        match event {
            Event::ToPort {
                node,
                kind,
                ip,
                mac,
                frame,
            } => {
                let t = &sim.nodes[*node].tables;
                let known = t
                    .ports
                    .iter()
                    .any(|p| p.kind == *kind && p.ip == *ip && p.mac == *mac);
                assert!(known, "node {node} sent to a port it does not have: {ip}");
                if *kind == PortKind::Pod {
                    check_to_pod(*ip, mac.0, frame);
                }
            }
            Event::ToPeer {
                node, to, datagram, ..
            } => {
                let t = &sim.nodes[*node].tables;
                assert!(
                    t.peers.iter().any(|p| p.addr == *to),
                    "node {node} sent to {to}"
                );
                assert!(
                    datagram.len() <= sim::MAX_DATAGRAM,
                    "a {}-byte datagram",
                    datagram.len()
                );
            }
        }
    }
}

/// An IPv4 frame for the pod at `ip` with MAC `mac` is addressed to it, and,
/// for pod B, allowed by its policy. (ARP replies go back to whatever MAC
/// asked, on the asker's own port.)
fn check_to_pod(ip: Ipv4Addr, mac: [u8; 6], frame: &[u8]) {
    if frame.get(12..14) == Some(&sim::ETHERTYPE_IPV6.to_be_bytes()) {
        return check_to_pod6(sim::ip6_of(ip), mac, frame);
    }
    if frame.get(12..14) != Some(&sim::ETHERTYPE_IPV4.to_be_bytes()) {
        return;
    }
    assert_eq!(
        frame.get(..6),
        Some(&mac[..]),
        "a frame for {ip} to another MAC"
    );
    let packet = &frame[sim::ETH_HLEN..];
    let Some(header) = packet.get(..20) else {
        panic!("a runt IPv4 frame for {ip}");
    };
    let (src, dst) = (ip_at(header, 12), ip_at(header, 16));
    assert_eq!(dst, ip, "a packet for {dst} delivered to pod {ip}");
    if ip == B {
        assert!(allowed_into_b(packet, src), "B's policy let in {packet:?}");
    }
}

/// An IPv6 frame for the pod at `ip` with MAC `mac` is addressed to it (or, a
/// Neighbour Advertisement of the switch's, to where the pod asked from) and,
/// for pod B, allowed by its policy.
fn check_to_pod6(ip: Ipv6Addr, mac: [u8; 6], frame: &[u8]) {
    assert_eq!(
        frame.get(..6),
        Some(&mac[..]),
        "a frame for {ip} to another MAC"
    );
    let packet = &frame[sim::ETH_HLEN..];
    let Some(header) = packet.get(..40) else {
        panic!("a runt IPv6 frame for {ip}");
    };
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&header[at..at + 16]);
        Ipv6Addr::from(a)
    };
    let (src, dst) = (addr(8), addr(24));
    let upper = weft_encap::ipv6::upper_layer(header[6], &packet[40..]);
    let icmp_type = upper
        .ok()
        .filter(|u| u.protocol == 58 && u.fragment.is_none_or(|f| f.offset == 0))
        .and_then(|u| packet.get(40 + u.offset).copied());
    let advert = icmp_type == Some(136) && src == sim::gateway6(usize::from(ip == b6()));
    assert!(
        dst == ip || advert,
        "a packet for {dst} delivered to pod {ip}"
    );
    if ip == b6() {
        assert!(
            allowed_into_b6(packet, src, upper.ok(), icmp_type),
            "B's policy let in {packet:?}"
        );
    }
}

/// Pod B's IPv6 address.
fn b6() -> Ipv6Addr {
    sim::ip6_of(B)
}

/// Whether B's policy lets in IPv6 `packet` from `src` (its upper layer
/// `upper`, an ICMPv6 message of type `icmp_type`): TCP to port 80 from A's IPv6
/// address, whole or a first fragment (a later one has no port, and B's only
/// rule names one); what node 1 sends from its gateway address (or its
/// Neighbour Advertisements); or an ICMPv6 error, which passes on other grounds.
fn allowed_into_b6(
    packet: &[u8],
    src: Ipv6Addr,
    upper: Option<weft_encap::ipv6::UpperLayer>,
    icmp_type: Option<u8>,
) -> bool {
    let from_node = src == sim::gateway6(1);
    let error = icmp_type.is_some_and(|t| t < 128);
    let to_b_port = upper.is_some_and(|u| {
        let first = u.fragment.is_none_or(|f| f.offset == 0);
        let dport = packet.get(40 + u.offset + 2..40 + u.offset + 4);
        u.protocol == 6 && first && dport == Some(&B_PORT.to_be_bytes()[..])
    });
    from_node || error || (src == sim::ip6_of(A) && to_b_port)
}

fn ip_at(header: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(header[at], header[at + 1], header[at + 2], header[at + 3])
}

/// Whether B's policy lets in `packet` from `src`: TCP to port 80 from A; or
/// what a node sends itself (from a gateway or underlay address), or an ICMP
/// error, which pass on other grounds (probes, and errors about tracked
/// connections).
fn allowed_into_b(packet: &[u8], src: Ipv4Addr) -> bool {
    let from_node = (0..2).any(|n| src == sim::gateway(n) || src == *sim::underlay(n).ip());
    let proto = packet[9];
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let first_fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff == 0;
    let dport = packet
        .get(header_len + 2..header_len + 4)
        .map(|p| u16::from_be_bytes([p[0], p[1]]));
    let icmp_error = proto == 1
        && first_fragment
        && packet
            .get(header_len)
            .is_some_and(|t| matches!(t, 3 | 4 | 5 | 11 | 12));
    let to_b_port = !first_fragment || dport == Some(B_PORT);
    from_node || icmp_error || (src == A && proto == 6 && to_b_port)
}
