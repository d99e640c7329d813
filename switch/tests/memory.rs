//! The switching core tested in memory, without root: two (or more) simulated nodes,
//! smoltcp stacks standing in as pods, a simulated wire and simulated time (see
//! `weft_switch::sim`). Real TCP runs through the core in both tunnel modes; hand-built
//! frames and datagrams check ARP, ICMP errors, anti-spoofing, malformed input and
//! the sleeve's batching byte by byte.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use proptest::prelude::*;
use smoltcp::socket::udp;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet, IpAddress, IpEndpoint,
    IpProtocol, Ipv4Packet, TcpPacket,
};
use weft_encap::{sleeve, vxlan};
use weft_switch::core::{JOINS, LANES};
use weft_switch::mac::MacAddr;
use weft_switch::tables::counters::{DropReason, Snapshot};
use weft_switch::tables::{PortKind, TunnelMode};

use weft_switch::sim::tcp::Transfer;
use weft_switch::sim::*;

/// Pod A, on node 0.
const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
/// Pod A2, also on node 0.
const A2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
/// Pod B, on node 1.
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
/// Inside the cluster CIDR, but no node holds it.
const NOWHERE: Ipv4Addr = Ipv4Addr::new(10, 244, 99, 9);

/// Steps after which a TCP transfer counts as stalled (5 simulated seconds; a clean
/// 4 MiB transfer takes well under a hundred).
const TRANSFER_STEP_LIMIT: u64 = 5_000;

/// Two nodes: A and A2 on node 0, B on node 1.
fn two_nodes(mode: TunnelMode) -> Sim {
    Sim::new(mode, &[&[A, A2], &[B]])
}

/// Two nodes that have heard from each other, so each knows what the other's
/// sleeve can receive (chunks).
fn two_nodes_introduced(mode: TunnelMode) -> Sim {
    let mut sim = two_nodes(mode);
    let (a, b) = (sim.pod(A), sim.pod(B));
    for (from, src, to, dst) in [(a, A, b, B), (b, B, a, A)] {
        let p = Ip::udp(src, dst).packet(&udp(1, 2, 20));
        sim.pod_frame(from, &from_pod(&sim, from, &p));
        sim.flush();
        sim.deliver_wire();
        assert_eq!(sim.take_rx(to).len(), 1, "introduction delivered");
    }
    sim
}

weft_switch::both_modes!(
    one_flow_keeps_one_source_port_and_flows_spread,
    super_frames_cross_the_tunnel,
    super_frames_whose_segments_overflow_the_mtu_are_refused,
    tcp_across_nodes_both_directions,
    tcp_between_pods_of_one_node_stays_off_the_wire,
    arp_from_smoltcp_is_answered_with_the_router_mac,
    arp_replies_are_exact,
    ttl_exceeded_comes_from_the_gateway_that_dropped_it,
    unroutable_cluster_addresses_get_host_unreachable,
    oversized_packets_get_fragmentation_needed,
    no_icmp_error_about_an_icmp_error_or_a_fragment,
    spoofed_sources_are_dropped_without_reflection,
    broadcast_and_multicast_are_not_flooded,
    datagrams_from_unknown_underlay_addresses_are_dropped,
    peers_may_only_send_from_their_own_subnet,
    malformed_datagrams_are_counted,
    forwarding_rewrites_only_macs_ttl_and_checksum,
    tcp_headers_arrive_unchanged_but_for_ttl,
    host_port_and_peer_underlay_routes,
    small_frames_to_a_peer_before_flush,
    udp_datagrams_reach_a_pod_merged_and_arrive_whole,
    udp_super_frames_reach_a_pod_without_uso_cut,
    udp_datagrams_from_ports_are_merged,
    partial_checksums_out_of_place_are_dropped,
    single_datagram_flows_do_not_crowd_out_runs,
    ten_nodes_more_peers_than_sleeve_slots,
);

// ---------------------------------------------------------------------------------
// TCP through the switch
// ---------------------------------------------------------------------------------

/// Sends `len` pseudo-random bytes over TCP from pod `from` to pod `to`, and checks
/// that they all arrived intact, from the sender's own address, and that both ends
/// closed cleanly.
fn transfer(sim: &mut Sim, from: usize, to: usize, port: u16, len: usize, seed: u64) {
    let x = Transfer::start(sim, from, to, port, pseudo_random(seed, len));
    let client = sim.pods[from].ip;
    let what = format!("{:?} TCP {client} -> {}", sim.mode, sim.pods[to].ip);
    x.finish(sim, TRANSFER_STEP_LIMIT, IpAddress::Ipv4(client), &what);
}

fn tcp_across_nodes_both_directions(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let (a, b) = (sim.pod(A), sim.pod(B));
    transfer(&mut sim, a, b, 5001, 4 << 20, 1);
    let after_one = sim.out.stats;
    assert!(
        after_one.datagrams > 4 * 1024 * 1024 / 1472,
        "{mode:?}: 4 MiB cannot cross in {} datagrams",
        after_one.datagrams
    );
    transfer(&mut sim, b, a, 5002, 4 << 20, 2);

    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
    let stats = sim.out.stats;
    assert!(
        stats.longest_datagram <= MAX_DATAGRAM,
        "{mode:?}: a {}-byte datagram exceeds the underlay's {MAX_DATAGRAM}",
        stats.longest_datagram
    );
    // Full-size segments make datagrams of exactly the underlay's size in VXLAN
    // (8 + 14 + 1450); the sleeve carries one in 12 + 4 + 1450.
    // The sleeve may also pack two shorter segments into up to 1472 bytes.
    let full = match mode {
        TunnelMode::Vxlan => MAX_DATAGRAM,
        TunnelMode::Sleeve => 1466,
    };
    assert!(
        stats.longest_datagram >= full,
        "{mode:?}: no full-size datagram: longest {}",
        stats.longest_datagram
    );
    assert_eq!(
        stats.to_hosts, 0,
        "{mode:?}: pod traffic leaked to a host port"
    );

    // The counters agree with what the simulation saw, and the wire lost nothing.
    for p in [a, b] {
        let c = sim.port_counters(p);
        assert_eq!(
            c.rx_packets, sim.pods[p].frames_sent,
            "{mode:?}: rx counter of pod {}",
            sim.pods[p].ip
        );
    }
    let pods_tx: u64 = (0..sim.pods.len())
        .map(|p| sim.port_counters(p).tx_packets)
        .sum();
    assert_eq!(
        pods_tx, stats.port_writes,
        "{mode:?}: pod tx counters (one per write)"
    );
    assert!(stats.super_frames > 0, "{mode:?}: nothing was coalesced");
    let (ab, ba) = (sim.peer_counters(0, 1), sim.peer_counters(1, 0));
    assert_eq!(
        (ab.tx_packets, ab.tx_bytes),
        (ba.rx_packets, ba.rx_bytes),
        "{mode:?}: node 0 -> node 1 tunnel counters"
    );
    assert_eq!(
        (ba.tx_packets, ba.tx_bytes),
        (ab.rx_packets, ab.rx_bytes),
        "{mode:?}: node 1 -> node 0 tunnel counters"
    );
    assert_eq!(
        ab.tx_packets + ba.tx_packets,
        stats.datagrams,
        "{mode:?}: tunnel tx counters"
    );
    assert_eq!(ab.tx_bytes + ba.tx_bytes, stats.datagram_bytes);
}

fn tcp_between_pods_of_one_node_stays_off_the_wire(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let (a, a2) = (sim.pod(A), sim.pod(A2));
    transfer(&mut sim, a, a2, 5003, 1 << 20, 3);
    transfer(&mut sim, a2, a, 5004, 1 << 20, 4);
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
    let stats = sim.out.stats;
    assert_eq!(
        stats.datagrams, 0,
        "{mode:?}: same-node traffic used the tunnel"
    );
    assert!(stats.to_pods > 1000, "{mode:?}: {stats:?}");
    assert_eq!(stats.to_hosts, 0);
    for (n, m) in [(0, 1), (1, 0)] {
        let c = sim.peer_counters(n, m);
        assert_eq!(
            (c.rx_packets, c.tx_packets),
            (0, 0),
            "{mode:?}: node {n}'s tunnel to node {m} carried same-node traffic"
        );
    }
    let b = sim.pod(B);
    assert_eq!(
        sim.port_counters(b),
        Snapshot::default(),
        "{mode:?}: pod B saw traffic"
    );
}

// ---------------------------------------------------------------------------------
// ARP
// ---------------------------------------------------------------------------------

fn udp_socket(port: u16) -> udp::Socket<'static> {
    let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]);
    let mut s = udp::Socket::new(buf(), buf());
    s.bind(port).expect("bind");
    s
}

/// Sends one UDP datagram through smoltcp from pod `from` to pod `to` and waits for it.
fn udp_exchange(sim: &mut Sim, from: usize, to: usize, port: u16) {
    let dst = IpEndpoint::new(IpAddress::Ipv4(sim.pods[to].ip), port);
    let rx = sim.pods[to].sockets.add(udp_socket(port));
    let tx = sim.pods[from].sockets.add(udp_socket(port + 1));
    sim.pods[from]
        .sockets
        .get_mut::<udp::Socket<'_>>(tx)
        .send_slice(b"ping", dst)
        .expect("send");
    // smoltcp sends at most one ARP request per second per interface, so a second
    // resolution waits up to a simulated second.
    let got = sim.run_until(3_000, |sim| {
        sim.pods[to]
            .sockets
            .get_mut::<udp::Socket<'_>>(rx)
            .can_recv()
    });
    assert!(
        got.is_some(),
        "UDP {} -> {} never arrived; {}",
        sim.pods[from].ip,
        sim.pods[to].ip,
        sim.drops_report()
    );
    let s = sim.pods[to].sockets.get_mut::<udp::Socket<'_>>(rx);
    let (data, meta) = s.recv().expect("a datagram");
    assert_eq!(data, b"ping");
    assert_eq!(meta.endpoint.addr, IpAddress::Ipv4(sim.pods[from].ip));
}

/// The ARP replies in the capture log sent to pod `p`: (sender MAC, sender IP).
fn arp_replies_to(sim: &Sim, p: usize) -> Vec<(MacAddr, Ipv4Addr)> {
    let pod = &sim.pods[p];
    sim.out
        .log
        .iter()
        .filter_map(|e| match e {
            Event::ToPort { ip, frame, .. }
                if *ip == pod.ip && frame[12..14] == ETHERTYPE_ARP.to_be_bytes() =>
            {
                let a = &frame[ETH_HLEN..];
                assert_eq!(a[6..8], [0, 2], "the switch sent an ARP that is no reply");
                let mut mac = [0; 6];
                mac.copy_from_slice(&a[8..14]);
                Some((MacAddr(mac), Ipv4Addr::new(a[14], a[15], a[16], a[17])))
            }
            _ => None,
        })
        .collect()
}

fn arp_from_smoltcp_is_answered_with_the_router_mac(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    sim.out.capture = true;
    let (a, a2, b) = (sim.pod(A), sim.pod(A2), sim.pod(B));
    // A resolves its gateway (B is off-link), B its own; A resolves A2 directly (on-link).
    udp_exchange(&mut sim, a, b, 7000);
    udp_exchange(&mut sim, b, a, 7002);
    udp_exchange(&mut sim, a, a2, 7004);
    let mut to_a = arp_replies_to(&sim, a);
    to_a.sort();
    assert_eq!(
        to_a,
        vec![(router_mac(0), gateway(0)), (router_mac(0), A2)],
        "{mode:?}: ARP replies to pod A"
    );
    assert_eq!(
        arp_replies_to(&sim, b),
        vec![(router_mac(1), gateway(1))],
        "{mode:?}: ARP replies to pod B"
    );
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
}

fn arp_replies_are_exact(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let a = sim.pod(A);
    let amac = sim.pods[a].mac;
    let zero = MacAddr([0; 6]);
    let request = |target: Ipv4Addr| {
        eth(
            MacAddr::BROADCAST,
            amac,
            ETHERTYPE_ARP,
            &arp(1, amac, A, zero, target),
        )
    };
    // Answered: the gateway, a remote pod, a pod on the same node, an unused address of
    // the node's subnet and an address outside the cluster: the switch routes them all.
    for target in [
        gateway(0),
        B,
        A2,
        Ipv4Addr::new(10, 244, 1, 77),
        Ipv4Addr::new(8, 8, 8, 8),
    ] {
        sim.pod_frame(a, &request(target));
        let rx = sim.take_rx(a);
        let expect = eth(
            amac,
            router_mac(0),
            ETHERTYPE_ARP,
            &arp(2, router_mac(0), target, amac, A),
        );
        assert_eq!(rx, vec![expect], "{mode:?}: ARP reply for {target}");
    }
    // A request padded to Ethernet's 60-byte minimum gets a reply of the same length.
    let mut padded = request(B);
    padded.resize(60, 0);
    sim.pod_frame(a, &padded);
    let rx = sim.take_rx(a);
    assert_eq!(rx.len(), 1, "{mode:?}: padded request");
    assert_eq!(rx[0].len(), 60);
    assert_eq!(
        rx[0][..42],
        eth(
            amac,
            router_mac(0),
            ETHERTYPE_ARP,
            &arp(2, router_mac(0), B, amac, A)
        )[..]
    );
    let answered = sim.port_counters(a).tx_packets;
    assert_eq!(answered, 6, "{mode:?}: tx counter of pod A's port");

    // Ignored: the pod's own address, a gratuitous ARP, a reply, a non-Ethernet ARP.
    let ignored = [
        request(A),
        eth(
            MacAddr::BROADCAST,
            amac,
            ETHERTYPE_ARP,
            &arp(1, amac, A, zero, A),
        ),
        eth(
            router_mac(0),
            amac,
            ETHERTYPE_ARP,
            &arp(2, amac, A, router_mac(0), B),
        ),
        {
            let mut f = request(B);
            f[ETH_HLEN + 1] = 6; // hardware type 6 (IEEE 802)
            f
        },
    ];
    for f in &ignored {
        sim.pod_frame(a, f);
    }
    // Malformed: shorter than an ARP packet.
    sim.pod_frame(a, &request(B)[..ETH_HLEN + 20]);
    // Unsupported: LLDP. (IPv6 is routed on a dual-stack node, as the simulated
    // ones are: a garbage IPv6 header is malformed.)
    sim.pod_frame(a, &eth(router_mac(0), amac, 0x88cc, &[0x60; 40]));
    // From the host port: pods are answered for, addresses the host owns are not.
    let hmac = MacAddr::for_ip(gateway(0));
    let host_req = |t| {
        eth(
            MacAddr::BROADCAST,
            hmac,
            ETHERTYPE_ARP,
            &arp(1, hmac, gateway(0), zero, t),
        )
    };
    sim.host_frame(0, &host_req(A));
    sim.host_frame(0, &host_req(Ipv4Addr::new(8, 8, 8, 8)));
    sim.flush();

    assert!(
        sim.take_rx(a).is_empty(),
        "{mode:?}: ignored ARP got an answer"
    );
    let c = sim.port_counters(a);
    assert_eq!(
        c.dropped(DropReason::ArpIgnored),
        4,
        "{mode:?}: {}",
        sim.drops_report()
    );
    assert_eq!(
        c.dropped(DropReason::Malformed),
        1,
        "{mode:?}: {}",
        sim.drops_report()
    );
    assert_eq!(
        c.dropped(DropReason::Unsupported),
        1,
        "{mode:?}: {}",
        sim.drops_report()
    );
    assert_eq!(
        sim.out.host_rx[0],
        vec![eth(
            hmac,
            router_mac(0),
            ETHERTYPE_ARP,
            &arp(2, router_mac(0), A, hmac, gateway(0))
        )],
        "{mode:?}: ARP replies to the host port"
    );
    assert_eq!(sim.host_counters(0).dropped(DropReason::ArpIgnored), 1);
    assert!(sim.out.wire.is_empty(), "{mode:?}: ARP crossed the tunnel");
}

// ---------------------------------------------------------------------------------
// ICMP errors
// ---------------------------------------------------------------------------------

/// Checks that `frame`, sent to pod `p`, is an ICMP error from `from` of this type and
/// code quoting `quoted` (the offending packet as the erring router saw it); returns
/// the ICMP message.
fn check_icmp_error(
    sim: &Sim,
    p: usize,
    frame: &[u8],
    from: Ipv4Addr,
    kind: u8,
    code: u8,
    quoted: &[u8],
) -> Vec<u8> {
    let pod = &sim.pods[p];
    let e = EthernetFrame::new_checked(frame).expect("an Ethernet frame");
    assert_eq!(
        e.dst_addr(),
        EthernetAddress(pod.mac.0),
        "ICMP error: Ethernet destination"
    );
    assert_eq!(
        e.src_addr(),
        EthernetAddress(router_mac(pod.node).0),
        "ICMP error: Ethernet source"
    );
    assert_eq!(e.ethertype(), EthernetProtocol::Ipv4);
    let ip = Ipv4Packet::new_checked(e.payload()).expect("an IPv4 packet");
    assert!(ip.verify_checksum(), "ICMP error: bad IPv4 header checksum");
    assert_eq!(ip.src_addr(), from, "ICMP error: source address");
    assert_eq!(ip.dst_addr(), pod.ip, "ICMP error: destination address");
    assert_eq!(ip.next_header(), IpProtocol::Icmp);
    assert!(
        ip.total_len() <= 576,
        "ICMP error of {} bytes (RFC 1812: 576)",
        ip.total_len()
    );
    assert_eq!(frame.len(), ETH_HLEN + usize::from(ip.total_len()));
    let icmp = Icmpv4Packet::new_checked(ip.payload()).expect("an ICMP message");
    assert!(icmp.verify_checksum(), "ICMP error: bad ICMP checksum");
    let msg = ip.payload().to_vec();
    assert_eq!((msg[0], msg[1]), (kind, code), "ICMP error: type and code");
    let n = quoted.len().min(576 - 28);
    assert_eq!(msg[8..], quoted[..n], "ICMP error: quoted packet");
    msg
}

fn ttl_exceeded_comes_from_the_gateway_that_dropped_it(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let (a, a2, b) = (sim.pod(A), sim.pod(A2), sim.pod(B));

    // TTL 1 towards a remote pod: node 0 cannot forward it.
    let p1 = Ip {
        ttl: 1,
        ..Ip::udp(A, B)
    }
    .packet(&udp(1000, 2000, 32));
    sim.pod_frame(a, &from_pod(&sim, a, &p1));
    sim.flush();
    assert!(
        sim.out.wire.is_empty(),
        "{mode:?}: a TTL 1 packet was tunnelled"
    );
    let rx = sim.take_rx(a);
    assert_eq!(rx.len(), 1, "{mode:?}: one time-exceeded expected");
    check_icmp_error(&sim, a, &rx[0], gateway(0), 11, 0, &p1);
    assert_eq!(sim.port_counters(a).dropped(DropReason::TtlExceeded), 1);

    // TTL 1 towards a pod of the same node.
    let p2 = Ip {
        ttl: 1,
        ..Ip::udp(A, A2)
    }
    .packet(&udp(1000, 2000, 32));
    sim.pod_frame(a, &from_pod(&sim, a, &p2));
    sim.flush();
    let rx = sim.take_rx(a);
    assert_eq!(rx.len(), 1, "{mode:?}: one time-exceeded expected");
    check_icmp_error(&sim, a, &rx[0], gateway(0), 11, 0, &p2);
    assert!(sim.take_rx(a2).is_empty());

    // TTL 2: node 0 forwards it with TTL 1, node 1 drops it and answers through the
    // tunnel, from its own gateway address, quoting the packet as it received it.
    let p3 = Ip {
        ttl: 2,
        ..Ip::udp(A, B)
    }
    .packet(&udp(1000, 2000, 600));
    sim.pod_frame(a, &from_pod(&sim, a, &p3));
    sim.flush();
    assert_eq!(sim.out.wire.len(), 1, "{mode:?}: node 0 must forward TTL 2");
    sim.deliver_wire();
    assert!(
        sim.take_rx(b).is_empty(),
        "{mode:?}: B got a packet whose TTL ran out"
    );
    assert_eq!(
        sim.out.wire.len(),
        1,
        "{mode:?}: node 1's error must go back by tunnel"
    );
    sim.deliver_wire();
    let rx = sim.take_rx(a);
    assert_eq!(
        rx.len(),
        1,
        "{mode:?}: one time-exceeded expected from node 1"
    );
    check_icmp_error(&sim, a, &rx[0], gateway(1), 11, 0, &with_ttl(&p3, 1));
    assert_eq!(sim.peer_counters(1, 0).dropped(DropReason::TtlExceeded), 1);
    assert_eq!(sim.port_counters(a).dropped(DropReason::TtlExceeded), 2);
}

/// The outer source port (lane) is a hash of the inner flow: every datagram of a flow
/// leaves from one lane, flows spread over lanes, and the receiver takes datagrams
/// from any source port of a peer.
fn one_flow_keeps_one_source_port_and_flows_spread(mode: TunnelMode) {
    use std::collections::{BTreeMap, BTreeSet};
    let mut sim = two_nodes(mode);
    sim.out.capture = true;
    let (a, b) = (sim.pod(A), sim.pod(B));
    const FLOWS: u16 = 64;
    for round in 0..3 {
        for port in 0..FLOWS {
            let p = Ip::udp(A, B).packet(&udp(30_000 + port, 5201, 100 + round));
            sim.pod_frame(a, &from_pod(&sim, a, &p));
        }
        // One batch: in sleeve, many flows share the batch but not a datagram's lane.
        sim.flush();
        sim.deliver_wire();
    }
    assert_eq!(
        sim.take_rx(b).len(),
        3 * FLOWS as usize,
        "{mode:?}: all arrive"
    );
    let mut lanes: BTreeMap<u16, BTreeSet<usize>> = BTreeMap::new();
    for ev in &sim.out.log {
        if let Event::ToPeer {
            node: 0,
            lane,
            datagram,
            ..
        } = ev
        {
            for p in inner_packets(mode, 0, 1, datagram) {
                let src_port = u16::from_be_bytes([p[20], p[21]]);
                lanes.entry(src_port).or_default().insert(*lane);
            }
        }
    }
    assert_eq!(lanes.len(), FLOWS as usize);
    for (flow, used) in &lanes {
        assert_eq!(
            used.len(),
            1,
            "{mode:?}: flow {flow} left from lanes {used:?}"
        );
    }
    let spread: BTreeSet<usize> = lanes.values().flatten().copied().collect();
    assert!(
        spread.len() >= LANES * 3 / 4,
        "{mode:?}: {FLOWS} flows used only lanes {spread:?}"
    );
    assert_eq!(sim.total_drops(), 0, "{}", sim.drops_report());
}

/// A TCP super-frame as pod `p`'s kernel hands it to its TAP (TSO): `payload` bytes
/// from `seq` to `dst`, the TCP checksum field holding the pseudo-header sum.
fn tso_frame(
    sim: &Sim,
    p: usize,
    dst: Ipv4Addr,
    seq: u32,
    payload: &[u8],
    gso_size: u16,
) -> (weft_switch::io::port::Offload, Vec<u8>) {
    tso_frame_with_options(sim, p, dst, seq, payload, gso_size, &[])
}

/// [`tso_frame`] with TCP options (a multiple of 4 bytes).
fn tso_frame_with_options(
    sim: &Sim,
    p: usize,
    dst: Ipv4Addr,
    seq: u32,
    payload: &[u8],
    gso_size: u16,
    options: &[u8],
) -> (weft_switch::io::port::Offload, Vec<u8>) {
    let src = sim.pods[p].ip;
    let tcp_header = 20 + options.len();
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = ((tcp_header / 4) as u8) << 4;
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&64_000u16.to_be_bytes());
    tcp.extend_from_slice(options);
    let tcp_len = (tcp_header + payload.len()) as u16;
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&tcp_len.to_be_bytes());
    tcp[16..18].copy_from_slice(&ones_sum(&pseudo).to_be_bytes());
    tcp.extend_from_slice(payload);
    let ip = Ip {
        proto: 6,
        ..Ip::udp(src, dst)
    };
    let frame = from_pod(sim, p, &ip.packet(&tcp));
    let offload = weft_switch::io::port::Offload {
        needs_csum: true,
        gso_type: weft_encap::virtio::GsoType::TcpV4,
        gso_size,
        hdr_len: (ETH_HLEN + 20 + tcp_header) as u16,
        csum_start: 34,
        csum_offset: 16,
        ..weft_switch::io::port::Offload::PLAIN
    };
    (offload, frame)
}

/// The TCP payloads of the IPv4 frames `frames`, each checked: checksums, TTL.
fn tcp_payloads(frames: &[Vec<u8>], ttl: u8) -> Vec<u8> {
    let mut data = Vec::new();
    for f in frames {
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        let p = Ipv4Packet::new_checked(e.payload()).unwrap();
        assert!(p.verify_checksum(), "IPv4 checksum");
        assert_eq!(p.hop_limit(), ttl);
        let t = TcpPacket::new_checked(p.payload()).unwrap();
        assert!(
            t.verify_checksum(
                &IpAddress::Ipv4(p.src_addr()),
                &IpAddress::Ipv4(p.dst_addr())
            ),
            "TCP checksum"
        );
        data.extend_from_slice(t.payload());
    }
    data
}

/// A 60 000-byte TSO super-frame crosses to a pod on another node: VXLAN cuts it into
/// packets and the receiver coalesces them; the sleeve carries it whole in chunks
/// and the receiving pod is handed one super-frame. Either way the pod's kernel gets
/// every byte, in order, with good checksums.
fn super_frames_cross_the_tunnel(mode: TunnelMode) {
    let mut sim = two_nodes_introduced(mode);
    let (a, b) = (sim.pod(A), sim.pod(B));
    let payload = pseudo_random(7, 60_000);
    let (offload, frame) = tso_frame(&sim, a, B, 1000, &payload, 1398);
    sim.port_frame_with(0, sim.pods[a].port, &offload, &frame);
    sim.flush();
    let datagrams = sim.out.wire.len();
    match mode {
        TunnelMode::Vxlan => assert_eq!(datagrams, 60_000usize.div_ceil(1398)),
        TunnelMode::Sleeve => {
            let per_chunk = MAX_DATAGRAM - sleeve::CHUNK_OVERHEAD;
            assert_eq!(datagrams, (60_000usize + 40).div_ceil(per_chunk));
            for d in &sim.out.wire {
                assert!(d.bytes.len() <= MAX_DATAGRAM);
                assert!(matches!(
                    sleeve::parse(&d.bytes),
                    Ok(sleeve::Datagram::Chunk { .. })
                ));
            }
        }
    }
    let before = sim.out.stats.super_frames;
    sim.deliver_wire();
    assert!(
        sim.out.stats.super_frames > before,
        "{mode:?}: the pod was handed no super-frame"
    );
    if mode == TunnelMode::Sleeve {
        assert_eq!(
            sim.out.stats.super_frames - before,
            1,
            "one whole super-frame"
        );
    }
    let rx = sim.take_rx(b);
    assert_eq!(tcp_payloads(&rx, 62), payload, "{mode:?}");
    assert_eq!(sim.total_drops(), 0, "{}", sim.drops_report());
}

/// A super-frame's segments each carry its IPv4 and TCP headers, options included:
/// one whose segments would not fit the pod MTU is refused, whatever its headers.
fn super_frames_whose_segments_overflow_the_mtu_are_refused(mode: TunnelMode) {
    let mut sim = two_nodes_introduced(mode);
    let (a, b) = (sim.pod(A), sim.pod(B));
    let payload = pseudo_random(4, 10_000);
    // NOP, NOP, timestamps: 12 bytes, as Linux sends on every segment.
    let timestamps = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    let mtu = POD_MTU as u16;
    for (options, gso_size, fits) in [
        (&[][..], mtu - 40, true),
        (&[][..], mtu - 39, false),
        (&timestamps[..], mtu - 52, true),
        (&timestamps[..], mtu - 40, false),
    ] {
        let before = sim.port_counters(a).dropped(DropReason::TooBig);
        let (o, f) = tso_frame_with_options(&sim, a, B, 1, &payload, gso_size, options);
        sim.port_frame_with(0, sim.pods[a].port, &o, &f);
        sim.flush();
        let refused = sim.port_counters(a).dropped(DropReason::TooBig) - before;
        assert_eq!(
            refused,
            u64::from(!fits),
            "{mode:?}: {} option bytes, gso_size {gso_size}",
            options.len()
        );
        sim.deliver_wire();
        let delivered = tcp_payloads(&sim.take_rx(b), 62);
        assert_eq!(delivered, if fits { payload.clone() } else { vec![] });
    }
    assert_eq!(sim.total_drops(), 2, "{}", sim.drops_report());
}

#[test]
fn sleeve_chunks_lost_or_out_of_order_lose_only_their_frame() {
    let mut sim = two_nodes_introduced(TunnelMode::Sleeve);
    let (a, b) = (sim.pod(A), sim.pod(B));
    let payload = pseudo_random(9, 20_000);
    let send = |sim: &mut Sim, seq: u32| {
        let (offload, frame) = tso_frame(sim, a, B, seq, &payload, 1398);
        sim.port_frame_with(0, sim.pods[a].port, &offload, &frame);
        sim.flush();
        assert!(sim.out.wire.len() >= 3);
    };
    // A chunk lost in the middle.
    send(&mut sim, 1);
    sim.out.wire.remove(1);
    sim.deliver_wire();
    assert!(sim.take_rx(b).is_empty());
    assert_eq!(sim.peer_counters(1, 0).dropped(DropReason::ChunkLost), 1);
    // Two chunks swapped.
    send(&mut sim, 1);
    sim.out.wire.swap(1, 2);
    sim.deliver_wire();
    assert!(sim.take_rx(b).is_empty());
    assert_eq!(sim.peer_counters(1, 0).dropped(DropReason::ChunkLost), 2);
    // The first chunk lost: the rest are strays, the frame counted once.
    send(&mut sim, 1);
    sim.out.wire.remove(0);
    sim.deliver_wire();
    assert!(sim.take_rx(b).is_empty());
    assert_eq!(sim.peer_counters(1, 0).dropped(DropReason::ChunkLost), 3);
    // The next frame arrives whole.
    send(&mut sim, 1);
    sim.deliver_wire();
    assert_eq!(tcp_payloads(&sim.take_rx(b), 62), payload);
}

#[test]
fn sleeve_super_frames_arriving_interleaved_both_join() {
    let mut sim = two_nodes_introduced(TunnelMode::Sleeve);
    let (a, a2, b) = (sim.pod(A), sim.pod(A2), sim.pod(B));
    let (one, two) = (pseudo_random(1, 30_000), pseudo_random(2, 30_000));
    let (o1, f1) = tso_frame(&sim, a, B, 1, &one, 1398);
    let (o2, f2) = tso_frame(&sim, a2, B, 1, &two, 1398);
    sim.port_frame_with(0, sim.pods[a].port, &o1, &f1);
    sim.flush();
    let first: Vec<_> = sim.out.wire.drain(..).collect();
    sim.port_frame_with(0, sim.pods[a2].port, &o2, &f2);
    sim.flush();
    let second: Vec<_> = sim.out.wire.drain(..).collect();
    // Chunk by chunk, alternately, as two senders' bursts can meet on the way.
    for (x, y) in first.into_iter().zip(second) {
        sim.out.wire.push_back(x);
        sim.out.wire.push_back(y);
    }
    sim.deliver_wire();
    let rx = sim.take_rx(b);
    let from = |ip: Ipv4Addr| -> Vec<Vec<u8>> {
        rx.iter()
            .filter(|f| f[26..30] == ip.octets())
            .cloned()
            .collect()
    };
    assert_eq!(tcp_payloads(&from(A), 62), one);
    assert_eq!(tcp_payloads(&from(A2), 62), two);
    assert_eq!(sim.out.stats.super_frames, 2, "both joined whole");
    assert_eq!(sim.total_drops(), 0, "{}", sim.drops_report());
}

#[test]
fn sleeve_chunks_go_only_to_a_peer_that_announces_it_joins_them() {
    let mut sim = two_nodes(TunnelMode::Sleeve);
    let (a, b) = (sim.pod(A), sim.pod(B));
    let payload = pseudo_random(5, 20_000);
    let chunks_sent = |sim: &mut Sim| -> bool {
        let (o, f) = tso_frame(sim, a, B, 1, &payload, 1398);
        sim.port_frame_with(0, sim.pods[a].port, &o, &f);
        sim.flush();
        let chunks = sim
            .out
            .wire
            .iter()
            .all(|d| matches!(sleeve::parse(&d.bytes), Ok(sleeve::Datagram::Chunk { .. })));
        sim.deliver_wire();
        assert_eq!(
            tcp_payloads(&sim.take_rx(b), 62),
            payload,
            "delivered either way"
        );
        chunks
    };
    // Node 1 has not been heard from: its super-frames are cut into records.
    assert!(!chunks_sent(&mut sim));
    // A datagram from an older node 1, without the CHUNKS feature.
    let older = |sim: &mut Sim| {
        let p = Ip::udp(B, A).packet(&udp(1, 2, 20));
        sim.tunnel_in(
            0,
            SocketAddr::V4(underlay(1)),
            &sleeve_datagram(router_mac(1), &[], &[&p]),
        );
        sim.flush();
        assert_eq!(sim.take_rx(a).len(), 1);
    };
    older(&mut sim);
    assert!(!chunks_sent(&mut sim));
    // Node 1 speaks for itself: it joins chunks.
    let p = Ip::udp(B, A).packet(&udp(1, 2, 20));
    sim.pod_frame(b, &from_pod(&sim, b, &p));
    sim.flush();
    sim.deliver_wire();
    assert_eq!(sim.take_rx(a).len(), 1);
    assert!(chunks_sent(&mut sim));
    // It restarts on the older release: back to records.
    older(&mut sim);
    assert!(!chunks_sent(&mut sim));
    assert_eq!(sim.total_drops(), 0, "{}", sim.drops_report());
}

#[test]
fn sleeve_super_frames_beyond_the_join_slots_lose_only_the_ones_crowded_out() {
    let mut sim = two_nodes_introduced(TunnelMode::Sleeve);
    let (a, b) = (sim.pod(A), sim.pod(B));
    let payload = pseudo_random(3, 30_000);
    // More super-frames than a worker joins at once, arriving chunk by chunk in turn.
    let n = JOINS + 4;
    let bursts: Vec<Vec<_>> = (0..n)
        .map(|i| {
            let (o, f) = tso_frame(&sim, a, B, 1 + i as u32, &payload, 1398);
            sim.port_frame_with(0, sim.pods[a].port, &o, &f);
            sim.flush();
            sim.out.wire.drain(..).collect()
        })
        .collect();
    let chunks = bursts[0].len();
    for c in 0..chunks {
        for burst in &bursts {
            sim.out.wire.push_back(burst[c].clone());
        }
    }
    let before = sim.out.stats.super_frames;
    sim.deliver_wire();
    // The first frames' slots went to the last ones; the rest of a crowded-out frame
    // is ignored, not allowed to crowd out another in turn.
    assert_eq!(
        sim.out.stats.super_frames - before,
        JOINS as u64,
        "frames joined"
    );
    assert_eq!(tcp_payloads(&sim.take_rx(b), 62), payload.repeat(JOINS));
    assert_eq!(
        sim.peer_counters(1, 0).dropped(DropReason::ChunkLost),
        (n - JOINS) as u64,
        "each lost frame counted once"
    );
}

#[test]
fn sleeve_chunks_of_a_bad_super_frame_are_refused() {
    let mut sim = two_nodes(TunnelMode::Sleeve);
    let b = sim.pod(B);
    // A well-formed chunk whose joined payload is not the TCP super-frame it claims.
    let mut d = vec![0u8; sleeve::CHUNK_OVERHEAD + 100];
    sleeve::emit_header(
        &mut d,
        sleeve::Kind::Chunk,
        sleeve::NodeId(router_mac(0).0),
        sleeve::FEATURE_CHUNKS,
    );
    sleeve::ChunkRepr {
        frame_id: 1,
        total: 100,
        offset: 0,
        ethertype: 0x0800,
        gso_type: weft_encap::virtio::GSO_TCPV4,
        gso_size: 1000,
    }
    .emit(&mut d[sleeve::HEADER_LEN..]);
    let udp = Ip::udp(A, B).packet(&udp(1, 2, 72));
    d[sleeve::CHUNK_OVERHEAD..].copy_from_slice(&udp);
    sim.tunnel_in(1, SocketAddr::V4(underlay(0)), &d);
    sim.flush();
    assert!(sim.take_rx(b).is_empty());
    assert_eq!(sim.peer_counters(1, 0).dropped(DropReason::BadEncap), 1);
}

fn unroutable_cluster_addresses_get_host_unreachable(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let a = sim.pod(A);
    // No node holds 10.244.99.0/24; node 0 holds 10.244.1.77's subnet but no pod has it.
    for (n, dst) in [(1, NOWHERE), (2, Ipv4Addr::new(10, 244, 1, 77))] {
        let p = Ip::udp(A, dst).packet(&udp(1000, 2000, 100));
        sim.pod_frame(a, &from_pod(&sim, a, &p));
        sim.flush();
        assert!(sim.out.wire.is_empty(), "{mode:?}: {dst} was tunnelled");
        let rx = sim.take_rx(a);
        assert_eq!(rx.len(), 1, "{mode:?}: one unreachable expected for {dst}");
        check_icmp_error(&sim, a, &rx[0], gateway(0), 3, 1, &p);
        assert_eq!(sim.port_counters(a).dropped(DropReason::NoRoute), n);
    }
    // Node 1's subnet, but no pod there: node 1 answers through the tunnel.
    let p = Ip::udp(A, Ipv4Addr::new(10, 244, 2, 77)).packet(&udp(1000, 2000, 100));
    sim.pod_frame(a, &from_pod(&sim, a, &p));
    sim.flush();
    sim.deliver_wire();
    sim.deliver_wire();
    let rx = sim.take_rx(a);
    assert_eq!(
        rx.len(),
        1,
        "{mode:?}: one unreachable expected from node 1"
    );
    check_icmp_error(&sim, a, &rx[0], gateway(1), 3, 1, &with_ttl(&p, 63));
    assert_eq!(sim.peer_counters(1, 0).dropped(DropReason::NoRoute), 1);
}

fn oversized_packets_get_fragmentation_needed(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let (a, b) = (sim.pod(A), sim.pod(B));
    let sized = |total: usize, df: bool| {
        Ip {
            df,
            ..Ip::udp(A, B)
        }
        .packet(&udp(1, 2, total - 28))
    };

    // Exactly the MTU crosses.
    let fits = sized(POD_MTU as usize, true);
    sim.pod_frame(a, &from_pod(&sim, a, &fits));
    sim.flush();
    sim.deliver_wire();
    let rx = sim.take_rx(b);
    assert_eq!(
        rx.len(),
        1,
        "{mode:?}: a packet of exactly the MTU must cross"
    );
    assert_eq!(rx[0][ETH_HLEN..], with_ttl(&fits, 62)[..]);

    // One byte more with DF: fragmentation needed, next-hop MTU 1450.
    for total in [POD_MTU as usize + 1, 1500, 9000] {
        let big = sized(total, true);
        sim.pod_frame(a, &from_pod(&sim, a, &big));
        sim.flush();
        assert!(sim.out.wire.is_empty(), "{mode:?}: {total} bytes tunnelled");
        let rx = sim.take_rx(a);
        assert_eq!(
            rx.len(),
            1,
            "{mode:?}: one frag-needed expected for {total} bytes"
        );
        let msg = check_icmp_error(&sim, a, &rx[0], gateway(0), 3, 4, &big);
        assert_eq!(msg[4..6], [0, 0], "unused field");
        assert_eq!(
            u16::from_be_bytes([msg[6], msg[7]]),
            1450,
            "{mode:?}: next-hop MTU"
        );
    }
    // Without DF it is dropped silently (the switch does not fragment).
    sim.pod_frame(a, &from_pod(&sim, a, &sized(1500, false)));
    sim.flush();
    assert!(
        sim.take_rx(a).is_empty(),
        "{mode:?}: error for a packet without DF"
    );
    assert!(sim.out.wire.is_empty());
    assert_eq!(sim.port_counters(a).dropped(DropReason::TooBig), 4);

    // A packet over the MTU arriving through the tunnel (a peer with a larger MTU)
    // is refused the same way, and the error goes back through the tunnel.
    let big = Ip {
        df: true,
        ..Ip::udp(B, A)
    }
    .packet(&udp(1, 2, 1500 - 28));
    sim.tunnel_in(0, node1(), &datagram_from_node1(mode, &[&big]));
    sim.flush();
    assert!(
        sim.take_rx(a).is_empty(),
        "{mode:?}: oversized packet delivered"
    );
    assert_eq!(sim.peer_counters(0, 1).dropped(DropReason::TooBig), 1);
    assert_eq!(
        sim.out.wire.len(),
        1,
        "{mode:?}: frag-needed back to node 1"
    );
    sim.deliver_wire();
    let rx = sim.take_rx(b);
    assert_eq!(rx.len(), 1, "{mode:?}: B gets the frag-needed");
    let msg = check_icmp_error(&sim, b, &rx[0], gateway(0), 3, 4, &big);
    assert_eq!(u16::from_be_bytes([msg[6], msg[7]]), 1450);
}

/// A worker sends at most 1,000 ICMP errors a second, in bursts of 50, on the
/// clock passed in; the rest are counted as `icmp_limited` on the port the packets
/// came from. Paced at that rate, every packet is answered.
#[test]
fn icmp_errors_are_rate_limited_per_worker() {
    let mut sim = two_nodes(TunnelMode::Vxlan);
    let a = sim.pod(A);
    let frame = from_pod(&sim, a, &Ip::udp(A, NOWHERE).packet(&udp(1000, 2000, 20)));
    let answers = |sim: &mut Sim, n: usize| {
        for _ in 0..n {
            sim.pod_frame(a, &frame);
        }
        sim.flush();
        sim.take_rx(a).len()
    };
    let limited = |sim: &Sim| sim.port_counters(a).dropped(DropReason::IcmpLimited);
    assert_eq!(answers(&mut sim, 200), 50);
    assert_eq!(limited(&sim), 150);
    assert_eq!(sim.port_counters(a).dropped(DropReason::NoRoute), 200);
    for i in 0..100 {
        sim.set_time(sim.time() + std::time::Duration::from_millis(1));
        assert_eq!(answers(&mut sim, 1), 1, "paced packet {i}");
    }
    assert_eq!(limited(&sim), 150);
    // A second's silence refills the burst, no more.
    sim.set_time(sim.time() + std::time::Duration::from_secs(1));
    assert_eq!(answers(&mut sim, 200), 50);
    assert_eq!(limited(&sim), 300);
}

fn no_icmp_error_about_an_icmp_error_or_a_fragment(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let (a, b) = (sim.pod(A), sim.pod(B));
    // An ICMP destination-unreachable with TTL 1 towards a remote pod.
    let mut icmp = vec![3, 1, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&Ip::udp(B, A).packet(&udp(1, 2, 8)));
    let sum = !ones_sum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let error = Ip {
        ttl: 1,
        proto: 1,
        ..Ip::udp(A, B)
    }
    .packet(&icmp);
    // A non-first fragment with TTL 1, and one to nowhere.
    let frag = Ip {
        ttl: 1,
        df: false,
        frag_offset: 100,
        ..Ip::udp(A, B)
    }
    .packet(&[0; 64]);
    let frag_nowhere = Ip {
        df: false,
        frag_offset: 100,
        ..Ip::udp(A, NOWHERE)
    }
    .packet(&[0; 64]);
    for p in [&error, &frag, &frag_nowhere] {
        sim.pod_frame(a, &from_pod(&sim, a, p));
    }
    sim.flush();
    assert!(
        sim.take_rx(a).is_empty(),
        "{mode:?}: an ICMP error answered an exempt packet"
    );
    assert!(sim.out.wire.is_empty());
    assert!(sim.take_rx(b).is_empty());
    let c = sim.port_counters(a);
    assert_eq!(
        c.dropped(DropReason::TtlExceeded),
        2,
        "{mode:?}: {}",
        sim.drops_report()
    );
    assert_eq!(
        c.dropped(DropReason::NoRoute),
        1,
        "{mode:?}: {}",
        sim.drops_report()
    );
    // An ICMP echo request is no error: it does get an answer.
    let mut echo = vec![8, 0, 0, 0, 0, 1, 0, 1];
    let sum = !ones_sum(&echo);
    echo[2..4].copy_from_slice(&sum.to_be_bytes());
    let ping = Ip {
        ttl: 1,
        proto: 1,
        ..Ip::udp(A, B)
    }
    .packet(&echo);
    sim.pod_frame(a, &from_pod(&sim, a, &ping));
    sim.flush();
    let rx = sim.take_rx(a);
    assert_eq!(rx.len(), 1, "{mode:?}: a TTL 1 ping gets a time-exceeded");
    check_icmp_error(&sim, a, &rx[0], gateway(0), 11, 0, &ping);
}

// ---------------------------------------------------------------------------------
// Anti-spoofing
// ---------------------------------------------------------------------------------

fn spoofed_sources_are_dropped_without_reflection(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let (a, a2, b) = (sim.pod(A), sim.pod(A2), sim.pod(B));
    let spoofs = [
        Ip::udp(A2, B),                // a neighbour's address
        Ip::udp(B, A2),                // a remote pod's address
        Ip::udp(*underlay(0).ip(), B), // the node's own address
        Ip::udp(gateway(0), B),        // the gateway
        Ip {
            ttl: 1,
            ..Ip::udp(A2, B)
        }, // would cause a time-exceeded to A2
        Ip::udp(A2, NOWHERE),          // would cause an unreachable to A2
        Ip::udp(Ipv4Addr::UNSPECIFIED, B),
    ];
    for ip in &spoofs {
        sim.pod_frame(a, &from_pod(&sim, a, &ip.packet(&udp(1, 2, 16))));
    }
    sim.flush();
    assert!(
        sim.out.wire.is_empty(),
        "{mode:?}: a spoofed packet was tunnelled"
    );
    for p in [a, a2, b] {
        assert!(
            sim.take_rx(p).is_empty(),
            "{mode:?}: pod {} got a spoofed packet or its error",
            sim.pods[p].ip
        );
    }
    assert!(sim.out.host_rx[0].is_empty());
    let c = sim.port_counters(a);
    assert_eq!(
        c.dropped(DropReason::Spoofed),
        spoofs.len() as u64,
        "{mode:?}: {}",
        sim.drops_report()
    );
    assert_eq!(
        sim.total_drops(),
        spoofs.len() as u64,
        "{mode:?}: {}",
        sim.drops_report()
    );
    // The pod's own address still works.
    let ok = Ip::udp(A, B).packet(&udp(1, 2, 16));
    sim.pod_frame(a, &from_pod(&sim, a, &ok));
    sim.flush();
    sim.deliver_wire();
    assert_eq!(
        sim.take_rx(b).len(),
        1,
        "{mode:?}: genuine packet after spoofed ones"
    );
}

fn broadcast_and_multicast_are_not_flooded(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let a = sim.pod(A);
    let dsts = [
        Ipv4Addr::new(10, 244, 1, 255),
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(224, 0, 0, 251),
        Ipv4Addr::new(239, 1, 2, 3),
    ];
    for dst in dsts {
        let p = Ip::udp(A, dst).packet(&udp(5353, 5353, 20));
        let mut f = from_pod(&sim, a, &p);
        f[..6].copy_from_slice(&[0xff; 6]);
        sim.pod_frame(a, &f);
    }
    sim.flush();
    for p in 0..sim.pods.len() {
        assert!(
            sim.take_rx(p).is_empty(),
            "{mode:?}: pod {} got a broadcast or an error about one",
            sim.pods[p].ip
        );
    }
    assert!(sim.out.wire.is_empty() && sim.out.host_rx[0].is_empty());
    assert_eq!(
        sim.port_counters(a).dropped(DropReason::Multicast),
        dsts.len() as u64,
        "{mode:?}: {}",
        sim.drops_report()
    );
    // The broadcast address of another node's subnet is dropped by that node.
    let p = Ip::udp(A, Ipv4Addr::new(10, 244, 2, 255)).packet(&udp(1, 2, 20));
    sim.pod_frame(a, &from_pod(&sim, a, &p));
    sim.flush();
    sim.deliver_wire();
    assert!(sim.take_rx(sim.pod(B)).is_empty());
    assert!(
        sim.out.wire.is_empty(),
        "{mode:?}: an error about a broadcast"
    );
    assert_eq!(sim.peer_counters(1, 0).dropped(DropReason::Multicast), 1);
}

// ---------------------------------------------------------------------------------
// Tunnel input
// ---------------------------------------------------------------------------------

/// A well-formed datagram from node 1 to node 0 carrying `packets` (IPv4).
fn datagram_from_node1(mode: TunnelMode, packets: &[&[u8]]) -> Vec<u8> {
    match mode {
        TunnelMode::Vxlan => {
            assert_eq!(packets.len(), 1, "VXLAN carries one frame");
            let mut d = vec![0; vxlan::HEADER_LEN];
            vxlan::emit_header(&mut d, vxlan::Vni::new(1).unwrap());
            d.extend(eth(
                router_mac(0),
                router_mac(1),
                ETHERTYPE_IPV4,
                packets[0],
            ));
            d
        }
        TunnelMode::Sleeve => sleeve_datagram(router_mac(1), &[], packets),
    }
}

/// A sleeve frames datagram from `sender` with the given raw records, then IPv4 ones.
fn sleeve_datagram(sender: MacAddr, raw: &[(u16, Vec<u8>)], packets: &[&[u8]]) -> Vec<u8> {
    let mut d = vec![0; 65_536];
    let mut w = sleeve::FramesWriter::new(&mut d, sleeve::NodeId(sender.0), 0).unwrap();
    for (ethertype, payload) in raw {
        assert!(w.try_push(*ethertype, payload));
    }
    for p in packets {
        assert!(w.try_push(ETHERTYPE_IPV4, p));
    }
    let n = w.finish();
    d.truncate(n);
    d
}

fn node1() -> SocketAddr {
    SocketAddr::V4(underlay(1))
}

fn datagrams_from_unknown_underlay_addresses_are_dropped(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let a = sim.pod(A);
    let good = datagram_from_node1(mode, &[&Ip::udp(B, A).packet(&udp(1, 2, 16))]);
    let strangers = [
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(10, 250, 0, 99),
            TUNNEL_PORT,
        )),
        SocketAddr::V4(SocketAddrV4::new(*underlay(0).ip(), TUNNEL_PORT)),
        "[fe80::1]:8472".parse().unwrap(),
    ];
    for from in strangers {
        sim.tunnel_in(0, from, &good);
    }
    sim.flush();
    assert!(
        sim.take_rx(a).is_empty(),
        "{mode:?}: delivered a datagram from a stranger"
    );
    let t = sim.tunnel_counters(0);
    assert_eq!(
        t.dropped(DropReason::UnknownPeer),
        3,
        "{mode:?}: {}",
        sim.drops_report()
    );
    assert_eq!(t.rx_packets, 3);
    assert_eq!(sim.peer_counters(0, 1).rx_packets, 0);
    // The same bytes from the real peer, on any source port, are delivered.
    sim.tunnel_in(
        0,
        SocketAddr::V4(SocketAddrV4::new(*underlay(1).ip(), 40_123)),
        &good,
    );
    sim.flush();
    assert_eq!(
        sim.take_rx(a).len(),
        1,
        "{mode:?}: the peer's datagram was not delivered"
    );
}

/// A peer node speaks for its pod subnet and its own underlay address, nothing else:
/// a datagram claiming a local pod's (or a third node's) source is dropped.
fn peers_may_only_send_from_their_own_subnet(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let a = sim.pod(A);
    let spoofs = [
        A2,
        gateway(0),
        Ipv4Addr::new(10, 244, 7, 7),
        Ipv4Addr::new(8, 8, 8, 8),
    ];
    for src in spoofs {
        let d = datagram_from_node1(mode, &[&Ip::udp(src, A).packet(&udp(1, 2, 16))]);
        sim.tunnel_in(0, node1(), &d);
    }
    sim.flush();
    assert!(
        sim.take_rx(a).is_empty(),
        "{mode:?}: a spoofed tunnel packet was delivered"
    );
    assert_eq!(
        sim.peer_counters(0, 1).dropped(DropReason::Spoofed),
        spoofs.len() as u64,
        "{mode:?}: {}",
        sim.drops_report()
    );
    // Its own pods, its gateway and its underlay address are fine.
    for src in [B, gateway(1), *underlay(1).ip()] {
        let d = datagram_from_node1(mode, &[&Ip::udp(src, A).packet(&udp(1, 2, 16))]);
        sim.tunnel_in(0, node1(), &d);
    }
    sim.flush();
    assert_eq!(sim.take_rx(a).len(), 3, "{mode:?}: {}", sim.drops_report());
}

fn malformed_datagrams_are_counted(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let pkt = Ip::udp(B, A).packet(&udp(1, 2, 16));
    let mut bad_sum = pkt.clone();
    bad_sum[10] ^= 0xff;
    let relay = Ip::udp(B, Ipv4Addr::new(10, 244, 2, 6)).packet(&udp(1, 2, 16));
    let good = datagram_from_node1(mode, &[&pkt]);
    let garbage = vec![0x55; 64];

    let mut cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
        ("empty", vec![], DropReason::BadEncap),
        ("garbage", garbage, DropReason::BadEncap),
        ("truncated header", good[..5].to_vec(), DropReason::BadEncap),
        (
            "bad inner IPv4 checksum",
            datagram_from_node1(mode, &[&bad_sum]),
            DropReason::BadChecksum,
        ),
        (
            "relay to the peer's own subnet",
            datagram_from_node1(mode, &[&relay]),
            DropReason::NoRelay,
        ),
    ];
    match mode {
        TunnelMode::Vxlan => {
            let with = |f: &dyn Fn(&mut Vec<u8>)| {
                let mut d = good.clone();
                f(&mut d);
                d
            };
            cases.extend([
                ("no I flag", with(&|d| d[0] = 0), DropReason::BadEncap),
                (
                    "inner frame too short",
                    good[..vxlan::HEADER_LEN + 10].to_vec(),
                    DropReason::BadEncap,
                ),
                ("VNI 2", with(&|d| d[6] = 2), DropReason::WrongVni),
                (
                    "inner ARP",
                    with(&|d| {
                        d[vxlan::HEADER_LEN + 12..vxlan::HEADER_LEN + 14]
                            .copy_from_slice(&ETHERTYPE_ARP.to_be_bytes())
                    }),
                    DropReason::Unsupported,
                ),
                (
                    "a sleeve datagram",
                    sleeve_datagram(router_mac(1), &[], &[&pkt]),
                    DropReason::BadEncap,
                ),
                (
                    "inner IPv4 truncated",
                    good[..good.len() - 10].to_vec(),
                    DropReason::Malformed,
                ),
            ]);
        }
        TunnelMode::Sleeve => {
            let with = |f: &dyn Fn(&mut Vec<u8>)| {
                let mut d = good.clone();
                f(&mut d);
                d
            };
            cases.extend([
                ("version 2", with(&|d| d[0] = 2), DropReason::BadEncap),
                ("unknown kind", with(&|d| d[1] = 9), DropReason::BadEncap),
                ("sealed flag", with(&|d| d[3] = 1), DropReason::BadEncap),
                (
                    "no records",
                    good[..sleeve::HEADER_LEN].to_vec(),
                    DropReason::BadEncap,
                ),
                (
                    "truncated record",
                    good[..good.len() - 1].to_vec(),
                    DropReason::BadEncap,
                ),
                (
                    "record longer than the datagram",
                    with(&|d| d[12] = 0xff),
                    DropReason::BadEncap,
                ),
                (
                    "wrong sender id",
                    sleeve_datagram(router_mac(5), &[], &[&pkt]),
                    DropReason::WrongSender,
                ),
                (
                    "our own sender id",
                    sleeve_datagram(router_mac(0), &[], &[&pkt]),
                    DropReason::WrongSender,
                ),
                (
                    "LLDP record",
                    sleeve_datagram(router_mac(1), &[(0x88cc, vec![0x60; 40])], &[]),
                    DropReason::Unsupported,
                ),
                (
                    "IPv6 record with a payload length past it",
                    sleeve_datagram(router_mac(1), &[(ETHERTYPE_IPV6, vec![0x60; 40])], &[]),
                    DropReason::Malformed,
                ),
                (
                    "empty IPv4 record",
                    sleeve_datagram(router_mac(1), &[(ETHERTYPE_IPV4, vec![])], &[]),
                    DropReason::Malformed,
                ),
                (
                    "a VXLAN datagram",
                    {
                        let mut d = vec![0; 8];
                        vxlan::emit_header(&mut d, vxlan::Vni::new(1).unwrap());
                        d.extend(eth(router_mac(0), router_mac(1), ETHERTYPE_IPV4, &pkt));
                        d
                    },
                    DropReason::BadEncap,
                ),
            ]);
        }
    }
    for (what, bytes, reason) in &cases {
        let before = sim.peer_counters(0, 1);
        sim.tunnel_in(0, node1(), bytes);
        sim.flush();
        let after = sim.peer_counters(0, 1);
        assert_eq!(
            after.dropped(*reason) - before.dropped(*reason),
            1,
            "{mode:?}, {what}: expected one {} drop; {}",
            reason.name(),
            sim.drops_report()
        );
        assert_eq!(
            after.drops.iter().sum::<u64>() - before.drops.iter().sum::<u64>(),
            1,
            "{mode:?}, {what}: counted more than once; {}",
            sim.drops_report()
        );
        for p in 0..sim.pods.len() {
            assert!(
                sim.take_rx(p).is_empty(),
                "{mode:?}, {what}: delivered to a pod"
            );
        }
        assert!(
            sim.out.host_rx[0].is_empty(),
            "{mode:?}, {what}: delivered to the host"
        );
        assert!(
            sim.out.wire.is_empty(),
            "{mode:?}, {what}: sent something back"
        );
    }
    // A sleeve heartbeat is not an error, and delivers nothing.
    if mode == TunnelMode::Sleeve {
        let mut d = [0u8; 28];
        let n = sleeve::emit_heartbeat(
            &mut d,
            sleeve::NodeId(router_mac(1).0),
            0,
            sleeve::Heartbeat {
                sequence: 7,
                sent_micros: 123,
            },
        );
        sim.tunnel_in(0, node1(), &d[..n]);
        sim.flush();
        assert_eq!(
            sim.total_drops(),
            cases.len() as u64,
            "heartbeat: {}",
            sim.drops_report()
        );
        assert!(sim.out.wire.is_empty() && sim.take_rx(0).is_empty());
    }
    // And a good datagram still goes through.
    sim.tunnel_in(0, node1(), &good);
    sim.flush();
    let a = sim.pod(A);
    assert_eq!(
        sim.take_rx(a).len(),
        1,
        "{mode:?}: good datagram after bad ones"
    );
}

/// Sleeve records are delivered, each Ethernet header written in place over the bytes
/// before its record; short and foreign records in between change nothing.
#[test]
fn sleeve_records_are_delivered_in_place() {
    let mut sim = two_nodes(TunnelMode::Sleeve);
    let (a, a2, b) = (sim.pod(A), sim.pod(A2), sim.pod(B));
    let p1 = Ip::udp(B, A).packet(&udp(1, 1, 3));
    let p2 = Ip::udp(B, A2).packet(&udp(2, 2, 200));
    let p3 = Ip {
        ttl: 1,
        ..Ip::udp(B, A)
    }
    .packet(&udp(3, 3, 10));
    let p4 = Ip::udp(B, A).packet(&udp(4, 4, 0));
    let p5 = Ip::udp(B, A2).packet(&udp(5, 5, 1000));
    let mut d = sleeve_datagram(router_mac(1), &[], &[&p1]);
    // Raw records: empty IPv4, a 3-byte LLDP one, then the rest.
    let more = sleeve_datagram(
        router_mac(1),
        &[(ETHERTYPE_IPV4, vec![]), (0x88cc, vec![1, 2, 3])],
        &[&p2, &p3, &p4, &p5],
    );
    d.extend_from_slice(&more[sleeve::HEADER_LEN..]);
    assert!(sleeve::parse(&d).is_ok(), "test datagram must be valid");
    sim.tunnel_in(0, node1(), &d);
    sim.flush();
    let macs: Vec<MacAddr> = sim.pods.iter().map(|p| p.mac).collect();
    let expect =
        |pod: usize, p: &[u8]| eth(macs[pod], router_mac(0), ETHERTYPE_IPV4, &with_ttl(p, 63));
    // Each record is its own UDP flow, and flows may pass each other on the way to
    // a pod: p1 waits in a coalescer until the batch ends, while p4, which has no
    // payload to merge, goes at once. Within a flow nothing is ever reordered.
    assert_eq!(
        sim.take_rx(a),
        vec![expect(a, &p4), expect(a, &p1)],
        "frames to A"
    );
    assert_eq!(
        sim.take_rx(a2),
        vec![expect(a2, &p2), expect(a2, &p5)],
        "frames to A2"
    );
    let c = sim.peer_counters(0, 1);
    assert_eq!(
        c.dropped(DropReason::Malformed),
        1,
        "{}",
        sim.drops_report()
    );
    assert_eq!(
        c.dropped(DropReason::Unsupported),
        1,
        "{}",
        sim.drops_report()
    );
    assert_eq!(
        c.dropped(DropReason::TtlExceeded),
        1,
        "{}",
        sim.drops_report()
    );
    // The time-exceeded for p3 goes back to B through the tunnel.
    assert_eq!(sim.out.wire.len(), 1);
    sim.deliver_wire();
    let rx = sim.take_rx(b);
    assert_eq!(rx.len(), 1);
    check_icmp_error(&sim, b, &rx[0], gateway(0), 11, 0, &p3);
}

// ---------------------------------------------------------------------------------
// What forwarding changes
// ---------------------------------------------------------------------------------

/// The inner IPv4 packets of a datagram node `from` sent to node `to`, checking the
/// encapsulation.
fn inner_packets(mode: TunnelMode, from: usize, to: usize, d: &[u8]) -> Vec<Vec<u8>> {
    try_inner_packets(mode, from, to, d).unwrap_or_else(|e| panic!("{mode:?}: {e}"))
}

fn try_inner_packets(
    mode: TunnelMode,
    from: usize,
    to: usize,
    d: &[u8],
) -> Result<Vec<Vec<u8>>, String> {
    match mode {
        TunnelMode::Vxlan => {
            let (repr, inner) = vxlan::parse(d).map_err(|e| format!("not VXLAN: {e}"))?;
            if repr.vni.get() != 1 {
                return Err(format!("VNI {}", repr.vni.get()));
            }
            let expect = eth(router_mac(to), router_mac(from), ETHERTYPE_IPV4, &[]);
            if inner[..ETH_HLEN] != expect[..] {
                return Err(format!(
                    "inner Ethernet header {:02x?}, expected {expect:02x?} \
                     (peer VTEP MAC, our VTEP MAC, IPv4)",
                    &inner[..ETH_HLEN]
                ));
            }
            Ok(vec![inner[ETH_HLEN..].to_vec()])
        }
        TunnelMode::Sleeve => match sleeve::parse(d).map_err(|e| format!("not sleeve: {e}"))? {
            sleeve::Datagram::Frames { sender, frames } => {
                if sender.0 != router_mac(from).0 {
                    return Err(format!("sleeve sender id {sender:?}"));
                }
                frames
                    .map(|f| match f.ethertype {
                        ETHERTYPE_IPV4 => Ok(f.payload.to_vec()),
                        other => Err(format!("record ethertype {other:#06x}")),
                    })
                    .collect()
            }
            other => Err(format!("a heartbeat where frames were expected: {other:?}")),
        },
    }
}

fn forwarding_rewrites_only_macs_ttl_and_checksum(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let (a, a2, b) = (sim.pod(A), sim.pod(A2), sim.pod(B));
    let p = Ip::udp(A, B).packet(&udp(4242, 53, 300));
    // The frame A sends may be padded or addressed to any MAC: only the packet counts.
    let mut f = from_pod(&sim, a, &p);
    f.extend_from_slice(&[0xee; 7]);
    sim.pod_frame(a, &f);
    sim.flush();
    assert_eq!(sim.out.wire.len(), 1, "{mode:?}");
    let d = sim.out.wire[0].clone();
    assert_eq!(
        d.from.ip(),
        IpAddr::V4(*underlay(0).ip()),
        "from node 0, any lane"
    );
    assert_eq!(d.to, SocketAddr::V4(underlay(1)));
    let inner = inner_packets(mode, 0, 1, &d.bytes);
    assert_eq!(
        inner,
        vec![with_ttl(&p, 63)],
        "{mode:?}: the packet on the wire"
    );
    let on_wire = Ipv4Packet::new_checked(&inner[0][..]).unwrap();
    assert!(on_wire.verify_checksum(), "{mode:?}: checksum on the wire");
    sim.deliver_wire();
    let rx = sim.take_rx(b);
    assert_eq!(
        rx,
        vec![eth(
            sim.pods[b].mac,
            router_mac(1),
            ETHERTYPE_IPV4,
            &with_ttl(&p, 62)
        )],
        "{mode:?}: the frame B receives"
    );

    // A header with options (IHL 6: a NOP and an end-of-options list) keeps them.
    let mut o = Ip::udp(A, B).packet(&udp(4242, 53, 40));
    o.splice(20..20, [1, 0, 0, 0]);
    o[0] = 0x46;
    let total = o.len() as u16;
    o[2..4].copy_from_slice(&total.to_be_bytes());
    o[10..12].fill(0);
    let sum = !ones_sum(&o[..24]);
    o[10..12].copy_from_slice(&sum.to_be_bytes());
    sim.pod_frame(a, &from_pod(&sim, a, &o));
    sim.flush();
    sim.deliver_wire();
    let rx = sim.take_rx(b);
    assert_eq!(
        rx.len(),
        1,
        "{mode:?}: packet with options; {}",
        sim.drops_report()
    );
    let got = &rx[0][ETH_HLEN..];
    assert_eq!(got[8], 62);
    assert_eq!(
        ones_sum(&got[..24]),
        0xffff,
        "{mode:?}: checksum over options"
    );
    assert_eq!(
        (&got[..8], &got[9..10], &got[12..]),
        (&o[..8], &o[9..10], &o[12..])
    );

    // Same node: one hop.
    let q = Ip::udp(A, A2).packet(&udp(4242, 53, 1));
    sim.pod_frame(a, &from_pod(&sim, a, &q));
    sim.flush();
    assert_eq!(
        sim.take_rx(a2),
        vec![eth(
            sim.pods[a2].mac,
            router_mac(0),
            ETHERTYPE_IPV4,
            &with_ttl(&q, 63)
        )]
    );
    assert!(sim.out.wire.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The incremental checksum update after the TTL decrement agrees with a full
    /// recomputation, for any header (RFC 1624's corner cases included).
    #[test]
    fn ttl_decrement_keeps_the_checksum_right(
        ttl in 2u8..=255,
        tos in any::<u8>(),
        id in any::<u16>(),
        flags in prop_oneof![Just(0u16), Just(0x4000), Just(0x2000)],
        proto in any::<u8>(),
        payload_len in 0usize..64,
        zero_sum in any::<bool>(),
    ) {
        let mut sim = two_nodes(TunnelMode::Vxlan);
        let (a, a2) = (sim.pod(A), sim.pod(A2));
        let mut p = Ip { ttl, proto, ..Ip::udp(A, A2) }.packet(&vec![0xab; payload_len]);
        p[1] = tos;
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6..8].copy_from_slice(&flags.to_be_bytes());
        fix_ipv4_checksum(&mut p);
        if zero_sum {
            // Choose the id so that the header sums to 0xffff without its checksum:
            // the checksum field is then 0x0000, the corner case of RFC 1624 that the
            // older incremental formula (RFC 1141) gets wrong.
            p[4..6].fill(0);
            p[10..12].fill(0);
            let s = ones_sum(&p[..20]);
            p[4..6].copy_from_slice(&(!s).to_be_bytes());
            fix_ipv4_checksum(&mut p);
            prop_assert_eq!(&p[10..12], &[0u8, 0][..]);
        }
        sim.pod_frame(a, &from_pod(&sim, a, &p));
        let rx = sim.take_rx(a2);
        prop_assert_eq!(rx.len(), 1, "{}", sim.drops_report());
        let got = &rx[0][ETH_HLEN..];
        prop_assert_eq!(got[8], ttl - 1);
        prop_assert_eq!(ones_sum(&got[..20]), 0xffff, "header checksum invalid: {:02x?}", &got[..20]);
        prop_assert_eq!(&got[..8], &p[..8]);
        prop_assert_eq!(&got[9..10], &p[9..10]);
        prop_assert_eq!(&got[12..], &p[12..]);
    }
}

fn tcp_headers_arrive_unchanged_but_for_ttl(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    sim.out.capture = true;
    let (a, b) = (sim.pod(A), sim.pod(B));
    transfer(&mut sim, a, b, 5005, 256 * 1024, 5);
    let mut seen = [0usize; 2];
    for e in &sim.out.log {
        let Event::ToPort {
            node,
            kind: PortKind::Pod,
            ip,
            mac,
            frame,
        } = e
        else {
            continue;
        };
        if frame[12..14] != ETHERTYPE_IPV4.to_be_bytes() {
            continue;
        }
        let f = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(f.dst_addr(), EthernetAddress(mac.0));
        assert_eq!(f.src_addr(), EthernetAddress(router_mac(*node).0));
        let p = Ipv4Packet::new_checked(f.payload()).unwrap();
        assert!(
            p.verify_checksum(),
            "{mode:?}: bad checksum in a frame to {ip}"
        );
        assert_eq!(p.dst_addr(), *ip);
        let (src, i) = if *ip == B { (A, 0) } else { (B, 1) };
        assert_eq!(
            p.src_addr(),
            src,
            "{mode:?}: source rewritten (NAT?) in a frame to {ip}"
        );
        assert_eq!(p.hop_limit(), 62, "{mode:?}: two routed hops: TTL 64 - 2");
        assert_eq!(p.next_header(), IpProtocol::Tcp);
        seen[i] += 1;
    }
    assert!(
        seen[0] > 180 && seen[1] > 0,
        "{mode:?}: frames seen {seen:?}"
    );
    for ev in &sim.out.log {
        if let Event::ToPeer {
            node, to, datagram, ..
        } = ev
        {
            let peer = sim.node_at(SocketAddr::V4(*to)).unwrap();
            for p in inner_packets(mode, *node, peer, datagram) {
                let p = Ipv4Packet::new_checked(&p[..]).unwrap();
                assert!(p.verify_checksum());
                assert_eq!(p.hop_limit(), 63, "{mode:?}: one routed hop on the wire");
            }
        }
    }
}

fn host_port_and_peer_underlay_routes(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let (a, b) = (sim.pod(A), sim.pod(B));
    let host0 = MacAddr::for_ip(gateway(0));
    // Outside the cluster: to the host port, source kept (the host may NAT, not us).
    let out = Ip::udp(A, Ipv4Addr::new(8, 8, 8, 8)).packet(&udp(1, 53, 20));
    sim.pod_frame(a, &from_pod(&sim, a, &out));
    // The gateway address itself is the host: delivered, not routed (TTL kept).
    let to_gw = Ip::udp(A, gateway(0)).packet(&udp(1, 53, 20));
    sim.pod_frame(a, &from_pod(&sim, a, &to_gw));
    sim.flush();
    assert_eq!(
        std::mem::take(&mut sim.out.host_rx[0]),
        vec![
            eth(host0, router_mac(0), ETHERTYPE_IPV4, &with_ttl(&out, 63)),
            eth(host0, router_mac(0), ETHERTYPE_IPV4, &to_gw),
        ],
        "{mode:?}: frames to node 0's host port"
    );
    // From the host to a pod, local and remote.
    let h1 = Ip::udp(gateway(0), A).packet(&udp(1, 2, 20));
    let h2 = Ip::udp(gateway(0), B).packet(&udp(1, 2, 20));
    sim.host_frame(0, &eth(router_mac(0), host0, ETHERTYPE_IPV4, &h1));
    sim.host_frame(0, &eth(router_mac(0), host0, ETHERTYPE_IPV4, &h2));
    sim.flush();
    sim.deliver_wire();
    assert_eq!(
        sim.take_rx(a),
        vec![eth(
            sim.pods[a].mac,
            router_mac(0),
            ETHERTYPE_IPV4,
            &with_ttl(&h1, 63)
        )]
    );
    assert_eq!(
        sim.take_rx(b),
        vec![eth(
            sim.pods[b].mac,
            router_mac(1),
            ETHERTYPE_IPV4,
            &with_ttl(&h2, 62)
        )]
    );
    // A pod reaches the other node by its underlay address through the tunnel, so the
    // node's reply comes back the same way.
    let to_node0 = Ip::udp(B, *underlay(0).ip()).packet(&udp(1, 2, 20));
    sim.pod_frame(b, &from_pod(&sim, b, &to_node0));
    sim.flush();
    assert_eq!(
        sim.out.wire.len(),
        1,
        "{mode:?}: to node 0's underlay address"
    );
    sim.deliver_wire();
    assert_eq!(
        sim.out.host_rx[0],
        vec![eth(
            host0,
            router_mac(0),
            ETHERTYPE_IPV4,
            &with_ttl(&to_node0, 62)
        )],
        "{mode:?}: pod B -> node 0"
    );
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
}

// ---------------------------------------------------------------------------------
// Batching
// ---------------------------------------------------------------------------------

/// A pod whose TAP takes no USO (a kernel before 6.2) gets a UDP flow datagram by
/// datagram, also when its sender's kernel handed a UDP super-frame to a sleeve
/// peer that carried it whole: the receiving switch cuts it up.
fn udp_super_frames_reach_a_pod_without_uso_cut(mode: TunnelMode) {
    let mut sim = two_nodes_introduced(mode);
    let (a, b) = (sim.pod(A), sim.pod(B));
    sim.set_uso(a, false);
    let sent: Vec<Vec<u8>> = (0..20u8)
        .map(|i| checked_udp((B, A), (4000, 53), 100 + u16::from(i), 500, i))
        .collect();
    // One datagram at a time from the pod, then the same as one USO super-frame.
    for p in &sent {
        sim.pod_frame(b, &from_pod(&sim, b, p));
    }
    let payload: Vec<u8> = sent.iter().flat_map(|p| p[28..].to_vec()).collect();
    let (offload, frame) = uso_frame(&sim, b, A, &payload, 500);
    sim.port_frame_with(1, sim.pods[b].port, &offload, &frame);
    let merged_before = sim.out.stats.super_frames;
    sim.flush();
    sim.deliver_wire();
    assert_eq!(
        sim.out.stats.super_frames, merged_before,
        "{mode:?}: no UDP super-frame reaches A"
    );
    let rx = sim.take_rx(a);
    assert_eq!(rx.len(), 40, "{mode:?}: {}", sim.drops_report());
    for (got, p) in rx.iter().zip(sent.iter().chain(&sent)) {
        assert_eq!(got[14 + 20..14 + 24], p[20..24], "{mode:?}: ports");
        assert_eq!(got[14 + 28..], p[28..], "{mode:?}: payload");
    }
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
}

/// A USO super-frame from pod `p` to `dst` (ports 4000 to 53, IPv4 id 100), as its
/// TAP hands it over: `payload` to be cut into `gso_size`-byte datagrams.
fn uso_frame(
    sim: &Sim,
    p: usize,
    dst: Ipv4Addr,
    payload: &[u8],
    gso_size: u16,
) -> (weft_switch::io::port::Offload, Vec<u8>) {
    let src = sim.pods[p].ip;
    let len = (8 + payload.len()) as u16;
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&len.to_be_bytes());
    let mut udp = Vec::with_capacity(usize::from(len));
    udp.extend_from_slice(&4000u16.to_be_bytes());
    udp.extend_from_slice(&53u16.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&ones_sum(&pseudo).to_be_bytes());
    udp.extend_from_slice(payload);
    let mut packet = Ip::udp(src, dst).packet(&udp);
    packet[4..6].copy_from_slice(&100u16.to_be_bytes());
    fix_ipv4_checksum(&mut packet);
    let offload = weft_switch::io::port::Offload {
        needs_csum: true,
        gso_type: weft_encap::virtio::GsoType::UdpL4,
        gso_size,
        hdr_len: (ETH_HLEN + 28) as u16,
        csum_start: 34,
        csum_offset: 6,
        ..weft_switch::io::port::Offload::PLAIN
    };
    (offload, from_pod(sim, p, &packet))
}

/// A UDP/IPv4 packet from `src` to `dst` with a correct UDP checksum, IPv4
/// identification `id` and `len` payload bytes that start at `first`.
fn checked_udp(
    (src, dst): (Ipv4Addr, Ipv4Addr),
    ports: (u16, u16),
    id: u16,
    len: usize,
    first: u8,
) -> Vec<u8> {
    let mut d = udp(ports.0, ports.1, len);
    for (i, b) in d[8..].iter_mut().enumerate() {
        *b = first.wrapping_add(i as u8);
    }
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(d.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&d);
    let sum = match !ones_sum(&pseudo) {
        0 => 0xffff,
        s => s,
    };
    d[6..8].copy_from_slice(&sum.to_be_bytes());
    let mut p = Ip::udp(src, dst).packet(&d);
    p[4..6].copy_from_slice(&id.to_be_bytes());
    fix_ipv4_checksum(&mut p);
    p
}

/// Datagrams of one UDP flow that come through the tunnel together reach the pod's
/// port as one USO super-frame (one write), which its kernel cuts back into the very
/// datagrams that were sent, in order; another flow in between keeps its own.
fn udp_datagrams_reach_a_pod_merged_and_arrive_whole(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let (a, b) = (sim.pod(A), sim.pod(B));
    // 40 datagrams of 100 bytes and a shorter last one, and a second flow's 3, each
    // flow numbering its datagrams as a connected socket does (with DF, cutting a
    // merged frame numbers them from its first, as the kernel's GSO does).
    let mut sent = Vec::new();
    for i in 0..41u8 {
        let len = if i == 40 { 37 } else { 100 };
        sent.push(checked_udp((B, A), (4000, 53), 100 + u16::from(i), len, i));
        if i % 16 == 0 {
            let id = 900 + u16::from(i / 16);
            sent.push(checked_udp((B, A), (4001, 53), id, 100, 200 + i));
        }
    }
    for p in &sent {
        sim.pod_frame(b, &from_pod(&sim, b, p));
    }
    let writes_before = sim.out.stats.port_writes;
    let merged_before = sim.out.stats.super_frames;
    sim.flush();
    sim.deliver_wire();
    let writes = sim.out.stats.port_writes - writes_before;
    assert!(
        sim.out.stats.super_frames - merged_before >= 2,
        "{mode:?}: both flows reach A merged"
    );
    assert!(
        writes <= 4,
        "{mode:?}: {writes} writes to A for 44 datagrams"
    );
    let rx = sim.take_rx(a);
    let of_flow = |frames: &[Vec<u8>], port: u16| -> Vec<Vec<u8>> {
        frames
            .iter()
            .filter(|f| f[14 + 20..14 + 22] == port.to_be_bytes())
            .cloned()
            .collect()
    };
    let expected: Vec<Vec<u8>> = sent
        .iter()
        .map(|p| {
            eth(
                sim.pods[a].mac,
                router_mac(0),
                ETHERTYPE_IPV4,
                &with_ttl(p, 62),
            )
        })
        .collect();
    assert_eq!(rx.len(), expected.len(), "{mode:?}: every datagram arrives");
    for port in [4000, 4001] {
        assert_eq!(
            of_flow(&rx, port),
            of_flow(&expected, port),
            "{mode:?}: flow from port {port}, byte for byte and in order"
        );
    }
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
}

/// `packet` (UDP/IPv4 with a whole checksum) from pod `p` as its TAP hands it over
/// when the pod's kernel leaves the checksum to the device: the field holds the
/// pseudo-header's sum, and the offload header says where to finish it.
fn with_partial_checksum(
    sim: &Sim,
    p: usize,
    packet: &[u8],
) -> (weft_switch::io::port::Offload, Vec<u8>) {
    let mut packet = packet.to_vec();
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&packet[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&packet[24..26]);
    packet[26..28].copy_from_slice(&ones_sum(&pseudo).to_be_bytes());
    let offload = weft_switch::io::port::Offload {
        needs_csum: true,
        csum_start: 34,
        csum_offset: 6,
        ..weft_switch::io::port::Offload::PLAIN
    };
    (offload, from_pod(sim, p, &packet))
}

/// A UDP flow's datagrams from a port reach their port merged, as those from a
/// tunnel do: one write per run instead of one per datagram. That holds from a pod of
/// the same node, which leaves its checksums to its TAP, to a pod, from the host's
/// port to a pod (what direct routing's traffic comes through), and from a pod to the
/// host's port. What the receiving kernel cuts back out is byte for byte what was
/// sent, whole checksums included; so is a datagram that goes alone, and so is every
/// datagram to a port that takes no USO, which gets them one by one.
fn udp_datagrams_from_ports_are_merged(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let (a, a2) = (sim.pod(A), sim.pod(A2));
    let host0 = MacAddr::for_ip(gateway(0));
    let from_a2: Vec<Vec<u8>> = (0..30u8)
        .map(|i| checked_udp((A2, A), (4000, 53), 100 + u16::from(i), 100, i))
        .collect();
    let lone = checked_udp((A2, A), (4001, 53), 7, 60, 9);
    let from_host: Vec<Vec<u8>> = (0..20u8)
        .map(|i| checked_udp((gateway(0), A), (5000, 53), 300 + u16::from(i), 200, i))
        .collect();
    let to_host: Vec<Vec<u8>> = (0..25u8)
        .map(|i| checked_udp((A, gateway(0)), (6000, 53), 500 + u16::from(i), 80, i))
        .collect();
    let send = |sim: &mut Sim| {
        let (writes, merged) = (sim.out.stats.port_writes, sim.out.stats.super_frames);
        for p in from_a2.iter().chain([&lone]) {
            let (offload, frame) = with_partial_checksum(sim, a2, p);
            sim.port_frame_with(0, sim.pods[a2].port, &offload, &frame);
        }
        for p in &from_host {
            sim.host_frame(0, &eth(router_mac(0), host0, ETHERTYPE_IPV4, p));
        }
        for p in &to_host {
            let (offload, frame) = with_partial_checksum(sim, a, p);
            sim.port_frame_with(0, sim.pods[a].port, &offload, &frame);
        }
        sim.flush();
        let writes = sim.out.stats.port_writes - writes;
        (writes, sim.out.stats.super_frames - merged)
    };
    let (writes, merged) = send(&mut sim);
    assert_eq!(merged, 3, "{mode:?}: A2's, the host's and A's flows merged");
    assert_eq!(
        writes, 4,
        "{mode:?}: three runs and the lone datagram, for 76 datagrams"
    );
    let to_a: Vec<Vec<u8>> = from_a2
        .iter()
        .chain([&lone])
        .chain(&from_host)
        .map(|p| {
            eth(
                sim.pods[a].mac,
                router_mac(0),
                ETHERTYPE_IPV4,
                &with_ttl(p, 63),
            )
        })
        .collect();
    let at_host: Vec<Vec<u8>> = to_host
        .iter()
        .map(|p| eth(host0, router_mac(0), ETHERTYPE_IPV4, p))
        .collect();
    let by_flow = |mut frames: Vec<Vec<u8>>| {
        // Flows keep their order; between flows the merged runs may come in any.
        frames.sort_by_key(|f| u16::from_be_bytes([f[14 + 20], f[14 + 21]]));
        frames
    };
    assert_eq!(
        by_flow(sim.take_rx(a)),
        by_flow(to_a.clone()),
        "{mode:?}: to A"
    );
    assert_eq!(
        std::mem::take(&mut sim.out.host_rx[0]),
        at_host,
        "{mode:?}: to the host"
    );
    // Ports without USO get the same datagrams one by one, every one whole.
    sim.set_uso(a, false);
    sim.set_host_uso(0, false);
    let (writes, merged) = send(&mut sim);
    assert_eq!(
        (writes, merged),
        (76, 0),
        "{mode:?}: without USO: {}",
        sim.drops_report()
    );
    assert_eq!(
        by_flow(sim.take_rx(a)),
        by_flow(to_a),
        "{mode:?}: to A, no USO"
    );
    assert_eq!(sim.out.host_rx[0], at_host, "{mode:?}: to the host, no USO");
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
}

/// A pod's partial checksum must sit where its own headers put it. The switch
/// completes partial checksums itself (before a tunnel, an AF_XDP port, a merged
/// run), writing where the offload header says: one pointed at the destination port
/// would have it rewrite a port that policy and Services had already judged. Such a
/// frame is dropped as malformed, to a local pod and to a peer, and so is a fragment
/// that claims a partial checksum; the same datagram with its checksum in place goes
/// through.
fn partial_checksums_out_of_place_are_dropped(mode: TunnelMode) {
    let mut sim = two_nodes_introduced(mode);
    let (a, a2, b) = (sim.pod(A), sim.pod(A2), sim.pod(B));
    let to_a = checked_udp((A2, A), (4000, 53), 1, 100, 0);
    let to_b = checked_udp((A, B), (4000, 53), 2, 100, 0);
    let mut fragment = checked_udp((A, B), (4000, 53), 3, 100, 0);
    fragment[6] |= 0x20; // more fragments
    fix_ipv4_checksum(&mut fragment);
    let cases = [
        (a2, &to_a, 34, 2),    // the destination port
        (a2, &to_a, 14, 6),    // inside the IP header
        (a, &to_b, 34, 2),     // through the tunnel
        (a, &to_b, 36, 4),     // the UDP checksum, reached from elsewhere
        (a, &fragment, 34, 6), // in place, but a fragment
    ];
    for (i, &(p, packet, start, at)) in cases.iter().enumerate() {
        let (mut offload, frame) = with_partial_checksum(&sim, p, packet);
        (offload.csum_start, offload.csum_offset) = (start, at);
        let before = sim.port_counters(p).dropped(DropReason::Malformed);
        sim.port_frame_with(0, sim.pods[p].port, &offload, &frame);
        sim.flush();
        sim.deliver_wire();
        let dropped = sim.port_counters(p).dropped(DropReason::Malformed) - before;
        assert_eq!(dropped, 1, "{mode:?}: case {i} not dropped as malformed");
    }
    assert!(
        sim.take_rx(a).is_empty() && sim.take_rx(b).is_empty(),
        "{mode:?}"
    );
    // In place, both go through, checksums completed.
    for (p, packet, to) in [(a2, &to_a, a), (a, &to_b, b)] {
        let (offload, frame) = with_partial_checksum(&sim, p, packet);
        sim.port_frame_with(0, sim.pods[p].port, &offload, &frame);
        sim.flush();
        sim.deliver_wire();
        let rx = sim.take_rx(to);
        assert_eq!(rx.len(), 1, "{mode:?}: {}", sim.drops_report());
        assert_eq!(
            rx[0][14 + 20..],
            packet[20..],
            "{mode:?}: the datagram, whole"
        );
    }
}

/// Flows of one datagram each (DNS queries, say) do not keep a flow of many from
/// being merged: a UDP flow takes a coalescer that holds a single datagram, whose
/// datagram then goes alone, as it would have anyway. A coalescer building a run is
/// never taken from it: with every one busy with a run, another flow's datagram goes
/// out at once, and the runs stay whole.
fn single_datagram_flows_do_not_crowd_out_runs(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let (a, a2) = (sim.pod(A), sim.pod(A2));
    let send = |sim: &mut Sim, packets: &[Vec<u8>]| {
        let merged = sim.out.stats.super_frames;
        for p in packets {
            sim.pod_frame(a2, &from_pod(sim, a2, p));
        }
        sim.flush();
        (sim.take_rx(a), sim.out.stats.super_frames - merged)
    };
    // Eight one-datagram flows, then a flow of 30.
    let mut packets: Vec<Vec<u8>> = (0..8u16)
        .map(|i| checked_udp((A2, A), (3000 + i, 53), i, 40, 0))
        .collect();
    packets.extend((0..30u8).map(|i| checked_udp((A2, A), (4000, 53), 100 + u16::from(i), 100, i)));
    let (rx, merged) = send(&mut sim, &packets);
    assert_eq!(rx.len(), 38, "{mode:?}: {}", sim.drops_report());
    assert_eq!(merged, 1, "{mode:?}: the flow of 30 merged");
    // Four runs being built, then a fifth flow: it goes alone, the four stay runs.
    let mut packets = Vec::new();
    for round in 0..3u8 {
        for f in 0..4u16 {
            let id = 200 + f * 10 + u16::from(round);
            packets.push(checked_udp((A2, A), (5000 + f, 53), id, 100, round));
        }
    }
    packets.push(checked_udp((A2, A), (6000, 53), 300, 100, 0));
    let (rx, merged) = send(&mut sim, &packets);
    assert_eq!(rx.len(), 13, "{mode:?}: {}", sim.drops_report());
    assert_eq!(merged, 4, "{mode:?}: the four runs whole");
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
}

fn small_frames_to_a_peer_before_flush(mode: TunnelMode) {
    let mut sim = two_nodes(mode);
    let (a, b) = (sim.pod(A), sim.pod(B));
    // One flow, so one lane: the sleeve packs it into one datagram.
    let packets: Vec<Vec<u8>> = (0..5u16)
        .map(|i| Ip::udp(A, B).packet(&udp(100, 200, 10 * usize::from(i))))
        .collect();
    for p in &packets {
        sim.pod_frame(a, &from_pod(&sim, a, p));
    }
    let decremented: Vec<Vec<u8>> = packets.iter().map(|p| with_ttl(p, 63)).collect();
    match mode {
        TunnelMode::Vxlan => {
            assert_eq!(sim.out.wire.len(), 5, "VXLAN sends each frame at once");
            let inner: Vec<Vec<u8>> = sim
                .out
                .wire
                .iter()
                .flat_map(|d| inner_packets(mode, 0, 1, &d.bytes))
                .collect();
            assert_eq!(inner, decremented);
            sim.flush();
            assert_eq!(sim.out.wire.len(), 5, "VXLAN has nothing to flush");
        }
        TunnelMode::Sleeve => {
            assert!(
                sim.out.wire.is_empty(),
                "the sleeve holds frames until flush"
            );
            sim.flush();
            assert_eq!(
                sim.out.wire.len(),
                1,
                "the sleeve sends one datagram for five small frames"
            );
            let d = &sim.out.wire[0].bytes;
            assert_eq!(
                inner_packets(mode, 0, 1, d),
                decremented,
                "the records, in order"
            );
            let size: usize = sleeve::HEADER_LEN
                + packets
                    .iter()
                    .map(|p| sleeve::record_len(p.len()))
                    .sum::<usize>();
            assert_eq!(d.len(), size);
            assert_eq!(sim.peer_counters(0, 1).tx_packets, 1);
        }
    }
    sim.deliver_wire();
    let expect: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| {
            eth(
                sim.pods[b].mac,
                router_mac(1),
                ETHERTYPE_IPV4,
                &with_ttl(p, 62),
            )
        })
        .collect();
    assert_eq!(
        sim.take_rx(b),
        expect,
        "{mode:?}: B receives them all, in order"
    );

    // Frames (of one flow) that do not fit together are split over datagrams of at
    // most 1472 bytes.
    let big: Vec<Vec<u8>> = (0..3u16)
        .map(|_| Ip::udp(A, B).packet(&udp(7, 9, 700 - 28)))
        .collect();
    for p in &big {
        sim.pod_frame(a, &from_pod(&sim, a, p));
    }
    sim.flush();
    let sizes: Vec<usize> = sim.out.wire.iter().map(|d| d.bytes.len()).collect();
    let records: Vec<usize> = sim
        .out
        .wire
        .iter()
        .map(|d| inner_packets(mode, 0, 1, &d.bytes).len())
        .collect();
    match mode {
        TunnelMode::Vxlan => assert_eq!(records, vec![1, 1, 1]),
        TunnelMode::Sleeve => {
            assert_eq!(records, vec![2, 1], "700-byte packets: two per datagram");
            assert_eq!(sizes, vec![12 + 2 * 704, 12 + 704]);
        }
    }
    assert!(
        sizes.iter().all(|&s| s <= MAX_DATAGRAM),
        "{mode:?}: {sizes:?}"
    );
    sim.deliver_wire();
    assert_eq!(sim.take_rx(b).len(), 3, "{mode:?}");
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
}

fn ten_nodes_more_peers_than_sleeve_slots(mode: TunnelMode) {
    let ips: Vec<[Ipv4Addr; 1]> = (0..10u8)
        .map(|n| [Ipv4Addr::new(10, 244, n + 1, 5)])
        .collect();
    let layout: Vec<&[Ipv4Addr]> = ips.iter().map(|p| &p[..]).collect();
    let mut sim = Sim::new(mode, &layout);
    let src = ips[0][0];
    let s = sim.pod(src);
    // Two rounds of one packet to each of the nine peers, in one batch.
    let mut sent = vec![Vec::new(); 10];
    for round in 0..2u16 {
        for (m, dst) in ips.iter().enumerate().skip(1) {
            let p = Ip::udp(src, dst[0]).packet(&udp(round, m as u16, m));
            sim.pod_frame(s, &from_pod(&sim, s, &p));
            sent[m].push(p);
        }
    }
    sim.flush();
    let n = sim.out.wire.len();
    match mode {
        TunnelMode::Vxlan => assert_eq!(n, 18),
        // Nine peers and eight batches under construction: the ninth peer flushes
        // all eight, so this pattern gains nothing from batching, but loses nothing.
        TunnelMode::Sleeve => assert!(
            (9..=18).contains(&n),
            "{n} datagrams for 18 frames to 9 peers"
        ),
    }
    for d in &sim.out.wire {
        let to = sim.node_at(d.to).expect("a node");
        for p in inner_packets(mode, 0, to, &d.bytes) {
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            assert_eq!(
                dst, ips[to][0],
                "{mode:?}: a packet for {dst} was sent to node {to}"
            );
        }
    }
    sim.deliver_wire();
    for (m, dst) in ips.iter().enumerate().skip(1) {
        let p = sim.pod(dst[0]);
        let expect: Vec<Vec<u8>> = sent[m]
            .iter()
            .map(|q| {
                eth(
                    sim.pods[p].mac,
                    router_mac(m),
                    ETHERTYPE_IPV4,
                    &with_ttl(q, 62),
                )
            })
            .collect();
        assert_eq!(
            sim.take_rx(p),
            expect,
            "{mode:?}: pod {} receives its two packets in order",
            dst[0]
        );
    }
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
}

// ---------------------------------------------------------------------------------
// Arbitrary input
// ---------------------------------------------------------------------------------

/// Addresses that exercise every route and every special case.
const ADDRS: [Ipv4Addr; 15] = [
    A,
    A2,
    B,
    Ipv4Addr::new(10, 244, 1, 1),
    Ipv4Addr::new(10, 244, 2, 1),
    NOWHERE,
    Ipv4Addr::new(10, 244, 1, 77),
    Ipv4Addr::new(10, 244, 2, 77),
    Ipv4Addr::new(10, 244, 1, 255),
    Ipv4Addr::BROADCAST,
    Ipv4Addr::new(224, 0, 0, 1),
    Ipv4Addr::new(8, 8, 8, 8),
    Ipv4Addr::new(10, 250, 0, 1),
    Ipv4Addr::new(10, 250, 0, 2),
    Ipv4Addr::UNSPECIFIED,
];

/// One input to the switch: where it enters and how its bytes are shaped.
#[derive(Debug, Clone)]
struct Input {
    /// 0..3: ports of node 0 (host, A, A2); 3..5: ports of node 1 (host, B);
    /// 5: node 0's tunnel from node 1; 6: node 0's tunnel from a stranger;
    /// 7: node 1's tunnel from node 0.
    target: u8,
    /// 0: `bytes` as they are; 1: an IPv4 packet (in an Ethernet frame, or a VXLAN
    /// or sleeve datagram for tunnel targets) with the fields below and `bytes` as
    /// payload; 2: that packet with one bit flipped and its tail cut.
    shape: u8,
    /// Source and destination, as indices into `ADDRS`.
    src: usize,
    dst: usize,
    ttl: u8,
    proto: u8,
    df: bool,
    /// Bits or'ed into the flags and fragment offset word.
    frag: u16,
    /// Wrong VNI or wrong sender id, for tunnel targets.
    bad_tunnel: bool,
    /// Which bit to flip (and, for tunnels, which encapsulation: even is VXLAN).
    corrupt_at: usize,
    /// How many bytes to cut.
    cut: usize,
    bytes: Vec<u8>,
}

fn input() -> impl Strategy<Value = Input> {
    (
        (
            0u8..8,
            0u8..3,
            0..ADDRS.len(),
            0..ADDRS.len(),
            prop_oneof![Just(0u8), Just(1), Just(2), any::<u8>()],
        ),
        (
            prop_oneof![Just(1u8), Just(6), Just(17), any::<u8>()],
            any::<bool>(),
            prop_oneof![Just(0u16), Just(0x2000), Just(5)],
            prop::bool::weighted(0.1),
        ),
        (
            any::<usize>(),
            any::<usize>(),
            prop::collection::vec(any::<u8>(), 0..1600),
        ),
    )
        .prop_map(
            |(
                (target, shape, src, dst, ttl),
                (proto, df, frag, bad_tunnel),
                (corrupt_at, cut, bytes),
            )| Input {
                target,
                shape,
                src,
                dst,
                ttl,
                proto,
                df,
                frag,
                bad_tunnel,
                corrupt_at,
                cut,
                bytes,
            },
        )
}

impl Input {
    /// The bytes this input hands to the switch.
    fn build(&self) -> Vec<u8> {
        let packet = || {
            let mut p = Ip {
                src: ADDRS[self.src],
                dst: ADDRS[self.dst],
                ttl: self.ttl,
                proto: self.proto,
                df: self.df,
                frag_offset: 0,
            }
            .packet(&self.bytes);
            p[6] |= (self.frag >> 8) as u8;
            p[7] |= self.frag as u8;
            fix_ipv4_checksum(&mut p);
            if self.shape == 2 {
                let i = self.corrupt_at % p.len();
                p[i] ^= 1 << (self.corrupt_at % 8);
                p.truncate(p.len() - self.cut % (p.len() + 1));
            }
            p
        };
        let tunnel = self.target >= 5;
        match (self.shape, tunnel) {
            (0, _) => self.bytes.clone(),
            (_, false) => eth(
                router_mac(0),
                MacAddr::for_ip(ADDRS[self.src]),
                ETHERTYPE_IPV4,
                &packet(),
            ),
            (_, true) => {
                let (to, from) = if self.target == 7 { (1, 0) } else { (0, 1) };
                // Both encapsulations, whatever the mode: the wrong one must be refused.
                if self.corrupt_at & 1 == 0 {
                    let mut d = vec![0; 8];
                    let vni = if self.bad_tunnel { 2 } else { 1 };
                    vxlan::emit_header(&mut d, vxlan::Vni::new(vni).unwrap());
                    d.extend(eth(
                        router_mac(to),
                        router_mac(from),
                        ETHERTYPE_IPV4,
                        &packet(),
                    ));
                    d
                } else {
                    let sender = if self.bad_tunnel {
                        router_mac(7)
                    } else {
                        router_mac(from)
                    };
                    let p = packet();
                    let mut d = sleeve_datagram(sender, &[], &[&p, &p]);
                    if self.shape == 2 {
                        d.truncate(d.len() - self.cut % 9);
                    }
                    d
                }
            }
        }
    }
}

/// Checks everything the switch sent: well-formed, addressed as it must be, within
/// the MTU and the underlay's datagram size.
fn check_outputs(sim: &Sim) -> Result<(), TestCaseError> {
    for e in &sim.out.log {
        match e {
            Event::ToPort {
                node,
                kind,
                ip,
                mac,
                frame,
            } => {
                prop_assert!(frame.len() >= ETH_HLEN, "runt frame to {}", ip);
                prop_assert_eq!(&frame[6..12], &router_mac(*node).0[..], "Ethernet source");
                match u16::from_be_bytes([frame[12], frame[13]]) {
                    ETHERTYPE_IPV4 => {
                        prop_assert_eq!(&frame[..6], &mac.0[..], "Ethernet destination");
                        let p = Ipv4Packet::new_checked(&frame[ETH_HLEN..]);
                        prop_assert!(p.is_ok(), "bad IPv4 to {}: {:02x?}", ip, frame);
                        let p = p.unwrap();
                        prop_assert!(p.verify_checksum(), "bad IPv4 checksum to {}", ip);
                        prop_assert_eq!(frame.len(), ETH_HLEN + usize::from(p.total_len()));
                        prop_assert!(u32::from(p.total_len()) <= POD_MTU);
                        // Only a packet for the node itself (the gateway address) is
                        // delivered rather than routed, so only it may keep TTL 0.
                        prop_assert!(
                            p.hop_limit() >= 1
                                || (*kind == PortKind::Host && p.dst_addr() == gateway(*node))
                        );
                        if *kind == PortKind::Pod {
                            prop_assert_eq!(p.dst_addr(), *ip, "a pod got another's packet");
                        }
                    }
                    ETHERTYPE_ARP => {
                        prop_assert!(frame.len() >= 42);
                        prop_assert_eq!(&frame[20..22], &[0u8, 2][..], "ARP op");
                        prop_assert_eq!(&frame[22..28], &router_mac(*node).0[..], "ARP sender MAC");
                    }
                    other => prop_assert!(false, "ethertype {:#06x} sent to {}", other, ip),
                }
            }
            Event::ToPeer {
                node, to, datagram, ..
            } => {
                prop_assert!(
                    datagram.len() <= MAX_DATAGRAM,
                    "{}-byte datagram",
                    datagram.len()
                );
                let peer = sim.node_at(SocketAddr::V4(*to));
                prop_assert!(peer.is_some(), "datagram to {}", to);
                let inner = try_inner_packets(sim.mode, *node, peer.unwrap(), datagram);
                prop_assert!(inner.is_ok(), "{:?}: {:?}", inner, datagram);
                for p in inner.unwrap() {
                    let p = Ipv4Packet::new_checked(&p[..]);
                    prop_assert!(p.is_ok() && p.unwrap().verify_checksum(), "bad inner IPv4");
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary frames and datagrams never panic the switch, and whatever it sends in
    /// answer is well-formed.
    #[test]
    fn arbitrary_input_never_panics(sleeve in any::<bool>(), inputs in prop::collection::vec(input(), 1..6)) {
        let mode = if sleeve { TunnelMode::Sleeve } else { TunnelMode::Vxlan };
        let mut sim = two_nodes(mode);
        sim.out.capture = true;
        let stranger = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 8472));
        for i in &inputs {
            let bytes = i.build();
            match i.target {
                0..=2 => sim.port_frame(0, usize::from(i.target), &bytes),
                3 | 4 => sim.port_frame(1, usize::from(i.target - 3), &bytes),
                5 => sim.tunnel_in(0, node1(), &bytes),
                6 => sim.tunnel_in(0, stranger, &bytes),
                _ => sim.tunnel_in(1, SocketAddr::V4(underlay(0)), &bytes),
            }
        }
        sim.flush();
        // Whatever crossed the wire goes on; replies to replies too, a bounded number of times.
        for _ in 0..3 {
            sim.deliver_wire();
        }
        check_outputs(&sim)?;
    }

    /// Any sequence of well-framed sleeve chunks, whatever their ids, offsets,
    /// lengths, segmentation and contents, never panics the joiner, and what it
    /// delivers is well-formed.
    #[test]
    fn arbitrary_chunks_never_panic(
        chunks in prop::collection::vec(
            (0u32..3, 0u16..3000, 0u16..3000, 1usize..1400, any::<u8>(), any::<u16>(), 0u16..4, any::<u8>()),
            1..24,
        ),
    ) {
        let mut sim = two_nodes(TunnelMode::Sleeve);
        sim.out.capture = true;
        for (frame_id, total, offset, len, gso_type, gso_size, lane, fill) in chunks {
            let mut d = vec![fill; sleeve::CHUNK_OVERHEAD + len];
            sleeve::emit_header(
        &mut d,
        sleeve::Kind::Chunk,
        sleeve::NodeId(router_mac(0).0),
        sleeve::FEATURE_CHUNKS,
    );
            sleeve::ChunkRepr { frame_id, total, offset, ethertype: 0x0800, gso_type, gso_size }
                .emit(&mut d[sleeve::HEADER_LEN..]);
            let from = SocketAddrV4::new(*underlay(0).ip(), LANE_PORT_BASE + lane);
            sim.tunnel_in(1, SocketAddr::V4(from), &d);
        }
        sim.flush();
        check_outputs(&sim)?;
    }

    /// Raw bytes of any length straight into both entry points.
    #[test]
    fn raw_bytes_never_panic(sleeve in any::<bool>(), port in 0usize..3, bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mode = if sleeve { TunnelMode::Sleeve } else { TunnelMode::Vxlan };
        let mut sim = two_nodes(mode);
        sim.out.capture = true;
        sim.port_frame(0, port, &bytes);
        sim.tunnel_in(0, node1(), &bytes);
        sim.tunnel_in(1, SocketAddr::V4(underlay(0)), &bytes);
        sim.flush();
        sim.deliver_wire();
        check_outputs(&sim)?;
    }
}
