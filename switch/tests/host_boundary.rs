//! The host boundary in memory: Services through a host that translates them as
//! kube-proxy does (`weft_switch::sim::nat`), and what the host port admits. Real TCP
//! between smoltcp pods, both tunnel modes, simulated time.

use std::net::Ipv4Addr;
use std::time::Duration;

use smoltcp::wire::IpAddress;
use weft_switch::core::Time;
use weft_switch::mac::MacAddr;
use weft_switch::netpol::compile::{PodRules, RuleSet};
use weft_switch::sim::nat::Service;
use weft_switch::sim::tcp::Transfer;
use weft_switch::sim::*;
use weft_switch::tables::counters::DropReason;
use weft_switch::tables::{PeerPath, TunnelMode};

/// Pod A, on node 0.
const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
/// Pod A2, also on node 0.
const A2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
/// Pod B, on node 1.
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
/// Inside the cluster CIDR, but no node holds it.
const NOWHERE: Ipv4Addr = Ipv4Addr::new(10, 244, 99, 9);
/// Outside the cluster.
const WORLD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// ClusterIPs, each with one endpoint: B (another node), A2 (A's node), A (itself).
const TO_B: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TO_A2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const TO_A: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
/// A second ClusterIP whose endpoint is B.
const ALSO_TO_B: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);

const STEP_LIMIT: u64 = 5_000;

weft_switch::both_modes!(
    tcp_to_a_cluster_ip_returns_through_the_host,
    udp_to_a_cluster_ip_is_answered_from_the_cluster_ip,
    an_error_about_a_translated_packet_goes_through_the_host,
    policy_judges_the_endpoint_of_a_service_connection,
    the_host_port_admits_only_what_the_host_forwards,
    a_peer_that_routes_here_directly_passes_the_host_port,
    a_direct_peer_that_tunnels_back_is_sent_through_the_host,
    services_work_when_one_node_routes_directly_and_the_other_tunnels_back,
    host_flows_expire_with_their_connections,
    the_fragments_of_a_reply_follow_their_first_to_the_host,
    tcp_is_handed_only_from_its_first_packet,
    a_handed_back_connection_does_not_capture_a_direct_one_on_the_same_ports,
    a_spoofed_source_gets_no_error_from_the_switch,
    a_new_connection_on_a_closed_ones_ports_lives_as_established,
    services_sharing_an_endpoint_take_one_client_port_in_turn,
    a_syn_handed_back_on_another_port_is_known_by_its_sequence_number,
);

/// A, A2 on node 0, B on node 1; node 0's host translates the three ClusterIPs.
fn cluster(mode: TunnelMode) -> Sim {
    let mut sim = Sim::new(mode, &[&[A, A2], &[B]]);
    let host = sim.host_nat(0);
    for (vip, ep) in [(TO_B, B), (TO_A2, A2), (TO_A, A)] {
        host.add_service(Service {
            vip,
            port: 80,
            proto: 6,
            endpoints: vec![(ep, 8080)],
        });
        host.add_service(Service {
            vip,
            port: 53,
            proto: 17,
            endpoints: vec![(ep, 5353)],
        });
    }
    sim
}

fn host_frame(n: usize, packet: &[u8]) -> Vec<u8> {
    eth(
        router_mac(n),
        MacAddr::for_ip(gateway(n)),
        ETHERTYPE_IPV4,
        packet,
    )
}

/// The source and destination address and ports of the UDP packets in `frames`.
fn udp_endpoints(frames: &[Vec<u8>]) -> Vec<(Ipv4Addr, u16, Ipv4Addr, u16)> {
    frames
        .iter()
        .map(|f| {
            let ip = &f[ETH_HLEN..];
            let port = |at: usize| u16::from_be_bytes([ip[at], ip[at + 1]]);
            (
                Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
                port(20),
                Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
                port(22),
            )
        })
        .collect()
}

/// Sends 256 KiB from A to `vip`:80, whose endpoint `server` listens on 8080, and
/// checks it arrived whole from `seen_as`; the port the endpoint saw the client on.
fn service_transfer(
    sim: &mut Sim,
    vip: Ipv4Addr,
    server: Ipv4Addr,
    seen_as: Ipv4Addr,
    seed: u64,
) -> u16 {
    let (a, to) = (sim.pod(A), sim.pod(server));
    let data = pseudo_random(seed, 256 << 10);
    let mut x = Transfer::start_via(sim, a, (vip.into(), 80), to, 8080, data);
    let steps = sim.run_until(STEP_LIMIT, |sim| x.pump(sim));
    let (c, s) = x.states(sim);
    let what = format!("{:?} TCP {A} -> {vip} (endpoint {server})", sim.mode);
    assert!(
        steps.is_some(),
        "{what} stalled: sent {}, received {}, client {c}, server {s}; {}",
        x.sent,
        x.received,
        sim.drops_report()
    );
    assert_eq!(x.first_mismatch, None, "{what}: bytes differ");
    assert_eq!(x.received, 256 << 10, "{what}");
    assert_eq!(
        x.server_saw.map(|e| e.addr),
        Some(IpAddress::Ipv4(seen_as)),
        "{what}: the endpoint sees the client as it should"
    );
    let port = x.server_saw.map_or(0, |e| e.port);
    x.remove(sim);
    port
}

fn tcp_to_a_cluster_ip_returns_through_the_host(mode: TunnelMode) {
    let mut sim = cluster(mode);
    // The endpoint on another node, on this node, and the client itself (which
    // kube-proxy masquerades, so it sees the gateway).
    service_transfer(&mut sim, TO_B, B, A, 1);
    service_transfer(&mut sim, TO_A2, A2, A, 2);
    service_transfer(&mut sim, TO_A, A, gateway(0), 3);
    let stats = sim.nodes[0].host_flows.stats();
    // The two connections the host handed back with A's address; the hairpin one
    // came back from the gateway, whose replies go to the host anyway.
    assert_eq!(stats.returned_total, 2, "{mode:?}: {stats:?}");
    assert!(stats.handed >= 1, "{mode:?}: {stats:?}");
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
    // Pod to pod traffic the host never saw keeps its direct path.
    let (a, b) = (sim.pod(A), sim.pod(B));
    let before = sim.hosts[0].as_ref().expect("a host").translated;
    let to_hosts = sim.out.stats.to_hosts;
    let mut x = Transfer::start(&mut sim, a, b, 9000, pseudo_random(4, 64 << 10));
    assert!(sim.run_until(STEP_LIMIT, |sim| x.pump(sim)).is_some());
    assert_eq!(
        sim.out.stats.to_hosts, to_hosts,
        "{mode:?}: direct flow went to the host"
    );
    assert_eq!(sim.hosts[0].as_ref().expect("a host").translated, before);
}

fn udp_to_a_cluster_ip_is_answered_from_the_cluster_ip(mode: TunnelMode) {
    for (vip, server) in [(TO_B, B), (TO_A2, A2)] {
        let mut sim = cluster(mode);
        let (a, s) = (sim.pod(A), sim.pod(server));
        let ask = Ip::udp(A, vip).packet(&udp(40_053, 53, 30));
        sim.pod_frame(a, &from_pod(&sim, a, &ask));
        sim.flush();
        sim.run_hosts();
        sim.deliver_wire();
        let got = sim.take_rx(s);
        assert_eq!(
            udp_endpoints(&got),
            [(A, 40_053, server, 5353)],
            "{mode:?}: the endpoint gets the question from the client's address"
        );
        let answer = Ip::udp(server, A).packet(&udp(5353, 40_053, 90));
        sim.pod_frame(s, &from_pod(&sim, s, &answer));
        sim.flush();
        sim.deliver_wire();
        sim.run_hosts();
        let got = sim.take_rx(a);
        assert_eq!(
            udp_endpoints(&got),
            [(vip, 53, A, 40_053)],
            "{mode:?}: the answer from {server} reaches A as from the ClusterIP {vip}"
        );
        assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
    }
}

/// The ICMP error `from` sends about `quoted` (the IPv4 packet it answers).
fn port_unreachable(from: Ipv4Addr, to: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted[..28]);
    let sum = !ones_sum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    Ip {
        proto: 1,
        ..Ip::udp(from, to)
    }
    .packet(&icmp)
}

fn an_error_about_a_translated_packet_goes_through_the_host(mode: TunnelMode) {
    let mut sim = cluster(mode);
    let (a, b) = (sim.pod(A), sim.pod(B));
    let ask = Ip::udp(A, TO_B).packet(&udp(40_054, 53, 30));
    sim.pod_frame(a, &from_pod(&sim, a, &ask));
    sim.flush();
    sim.run_hosts();
    sim.deliver_wire();
    let got = sim.take_rx(b);
    assert_eq!(got.len(), 1, "{mode:?}");
    // B has nothing on 5353: its kernel answers with an error about the packet it
    // got, which the host must see to translate.
    let error = port_unreachable(B, A, &got[0][ETH_HLEN..]);
    sim.pod_frame(b, &from_pod(&sim, b, &error));
    sim.flush();
    sim.deliver_wire();
    assert_eq!(
        sim.take_rx(a).len(),
        0,
        "{mode:?}: the error went straight to A"
    );
    assert_eq!(
        sim.out.host_rx[0].len(),
        1,
        "{mode:?}: the error goes to node 0's host"
    );
}

fn policy_judges_the_endpoint_of_a_service_connection(mode: TunnelMode) {
    let mut sim = cluster(mode);
    let a2 = sim.pod(A2);
    sim.set_rules(
        a2,
        Some(PodRules {
            ingress: Some(RuleSet::default()),
            egress: None,
            selected_by: vec![("x/deny".into(), true, false)],
        }),
    );
    let a = sim.pod(A);
    let mut x = Transfer::start_via(&mut sim, a, (TO_A2.into(), 80), a2, 8080, vec![1; 100]);
    assert_eq!(sim.run_until(300, |sim| x.pump(sim)), None, "{mode:?}");
    assert!(
        sim.port_counters(a2).dropped(DropReason::PolicyIngress) > 0,
        "{mode:?}: the isolated endpoint refuses A's connection through the ClusterIP: {}",
        sim.drops_report()
    );
}

fn the_host_port_admits_only_what_the_host_forwards(mode: TunnelMode) {
    let mut sim = Sim::new(mode, &[&[A, A2], &[B]]);
    let (a, a2) = (sim.pod(A), sim.pod(A2));
    let send = |sim: &mut Sim, src: Ipv4Addr, sport: u16| {
        let p = Ip::udp(src, A).packet(&udp(sport, 9, 10));
        sim.host_frame(0, &host_frame(0, &p));
        sim.flush();
        sim.take_rx(a).len()
    };
    // What the host legitimately forwards: the world, the node, a translated reply.
    for src in [WORLD, gateway(0), *underlay(0).ip(), TO_B] {
        assert_eq!(send(&mut sim, src, 1), 1, "{mode:?}: from {src}");
    }
    // Pod addresses the host never had a flow of: spoofed.
    for src in [A2, B, NOWHERE, gateway(1)] {
        assert_eq!(send(&mut sim, src, 1), 0, "{mode:?}: from {src}");
    }
    assert_eq!(
        sim.host_counters(0).dropped(DropReason::Spoofed),
        4,
        "{mode:?}: {}",
        sim.drops_report()
    );
    // A2 sends to the world from port 7777: the host may hand that flow back (a
    // DNAT keeps the source), from that port only.
    let out = Ip::udp(A2, WORLD).packet(&udp(7777, 53, 10));
    sim.pod_frame(a2, &from_pod(&sim, a2, &out));
    sim.flush();
    assert_eq!(
        send(&mut sim, A2, 7777),
        1,
        "{mode:?}: A2's flow handed back"
    );
    assert_eq!(send(&mut sim, A2, 7778), 0, "{mode:?}: another port of A2");
    // The handed flow lasts seconds; the connection handed back, as long as the
    // host's tracker keeps an unanswered UDP flow (30 s, and a margin).
    sim.set_time(sim.time() + Duration::from_secs(6));
    sim.handle_timeouts();
    assert_eq!(send(&mut sim, A2, 7777), 1, "{mode:?}: handed back before");
    sim.set_time(sim.time() + Duration::from_secs(36));
    sim.handle_timeouts();
    assert_eq!(send(&mut sim, A2, 7777), 0, "{mode:?}: expired");
    assert_eq!(sim.host_counters(0).dropped(DropReason::Spoofed), 6);
}

fn a_peer_that_routes_here_directly_passes_the_host_port(mode: TunnelMode) {
    let mut sim = Sim::new(mode, &[&[A], &[B]]);
    let a = sim.pod(A);
    let from_b = Ip::udp(B, A).packet(&udp(1, 9, 10));
    sim.host_frame(0, &host_frame(0, &from_b));
    sim.flush();
    assert_eq!(
        sim.take_rx(a).len(),
        0,
        "{mode:?}: B through the host, tunnelled peer"
    );
    // Node 1 routes to node 0 directly while node 0 tunnels back.
    sim.set_peer(0, 1, |p| p.via_host = true);
    sim.host_frame(0, &host_frame(0, &from_b));
    sim.flush();
    assert_eq!(
        sim.take_rx(a).len(),
        1,
        "{mode:?}: B through the host, direct peer"
    );
    // Its replies go back through the tunnel: this node's host has no route to
    // node 1's pods but through the host port, and node 1 sends what it gets through
    // the tunnel from a peer it routes to directly through its own host.
    let reply = Ip::udp(A, B).packet(&udp(9, 1, 10));
    sim.pod_frame(a, &from_pod(&sim, a, &reply));
    sim.flush();
    assert!(
        sim.out.host_rx[0].is_empty(),
        "{mode:?}: the reply went to the host"
    );
    assert_eq!(sim.out.wire.len(), 1, "{mode:?}: the reply tunnels back");
    // Both ways: node 0 routes to node 1 directly too.
    sim.set_peer(0, 1, |p| {
        p.via_host = false;
        p.path = PeerPath::Direct {
            dev: "eth0".into(),
            node_via_tunnel: false,
        };
    });
    sim.host_frame(0, &host_frame(0, &from_b));
    sim.flush();
    assert_eq!(
        sim.take_rx(a).len(),
        1,
        "{mode:?}: B through the host, both direct"
    );
    assert_eq!(sim.host_counters(0).dropped(DropReason::Spoofed), 1);
}

fn a_direct_peer_that_tunnels_back_is_sent_through_the_host(mode: TunnelMode) {
    let mut sim = Sim::new(mode, &[&[A], &[B]]);
    let (a, b) = (sim.pod(A), sim.pod(B));
    sim.set_peer(0, 1, |p| {
        p.path = PeerPath::Direct {
            dev: "eth0".into(),
            node_via_tunnel: false,
        }
    });
    // B's packet comes through the tunnel (node 1 tunnels back), and node 0 sends
    // its own to node 1 through its host: so does B's, for the host to see it.
    let p = Ip::udp(B, A).packet(&udp(1, 9, 10));
    sim.pod_frame(b, &from_pod(&sim, b, &p));
    sim.flush();
    sim.deliver_wire();
    assert_eq!(sim.take_rx(a).len(), 0, "{mode:?}");
    assert_eq!(
        sim.out.host_rx[0].len(),
        1,
        "{mode:?}: {}",
        sim.drops_report()
    );
    // The peer node's own packet (from its `weft0` address) too: with no tunnel
    // route for that address here (Services not in the switch), A's answer leaves
    // through the host, which must have seen the request.
    sim.out.host_rx[0].clear();
    let own = Ip::udp(gateway(1), A).packet(&udp(1, 9, 10));
    sim.host_frame(1, &host_frame(1, &own));
    sim.flush();
    sim.deliver_wire();
    assert_eq!(
        sim.take_rx(a).len(),
        0,
        "{mode:?}: the node's own, straight in"
    );
    assert_eq!(
        sim.out.host_rx[0].len(),
        1,
        "{mode:?}: the node's own, through the host: {}",
        sim.drops_report()
    );
}

fn host_flows_expire_with_their_connections(mode: TunnelMode) {
    let mut sim = cluster(mode);
    service_transfer(&mut sim, TO_B, B, A, 7);
    let s = sim.nodes[0].host_flows.stats();
    assert!(s.returning >= 1 && s.handed >= 1, "{mode:?}: {s:?}");
    // A closed TCP connection goes within 125 s, as the host's tracker lets it go
    // (TIME_WAIT, and a margin); the sweep takes it out.
    let end = sim.time() + Duration::from_secs(130);
    while sim.time() < end {
        sim.set_time(sim.time() + Duration::from_secs(1));
        sim.handle_timeouts();
    }
    let s = sim.nodes[0].host_flows.stats();
    assert_eq!((s.returning, s.handed), (0, 0), "{mode:?}: {s:?}");
    assert!(sim.time() > Time::ZERO);
}

/// Node 0 routes to node 1 directly, node 1 tunnels back (the hosts' direct route
/// goes one way only). A Service's connection from A on node 0 to its endpoint B on
/// node 1, and a direct one, both complete: node 0's host forwards to node 1's host,
/// node 1 admits A's address from its host port, B's replies tunnel back, and node 0
/// sends them through its host, which undoes its translation.
fn services_work_when_one_node_routes_directly_and_the_other_tunnels_back(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_peer(0, 1, |p| {
        p.path = PeerPath::Direct {
            dev: "eth0".into(),
            node_via_tunnel: false,
        }
    });
    sim.set_peer(1, 0, |p| p.via_host = true);
    sim.host_nat(0).route_direct(subnet(1), 1);
    sim.host_nat(1);
    service_transfer(&mut sim, TO_B, B, A, 11);
    let (a, b) = (sim.pod(A), sim.pod(B));
    let mut x = Transfer::start(&mut sim, a, b, 9001, pseudo_random(12, 64 << 10));
    assert!(
        sim.run_until(STEP_LIMIT, |sim| x.pump(sim)).is_some(),
        "{mode:?}: direct TCP in the mixed setup: {}",
        sim.drops_report()
    );
    assert_eq!(
        sim.host_counters(1).dropped(DropReason::Spoofed),
        0,
        "{mode:?}: {}",
        sim.drops_report()
    );
}

/// A first fragment of B's UDP answer goes to the host (it answers a Service
/// connection); the later fragments, which carry no ports, go the same way.
fn the_fragments_of_a_reply_follow_their_first_to_the_host(mode: TunnelMode) {
    let mut sim = cluster(mode);
    let (a, a2) = (sim.pod(A), sim.pod(A2));
    let ask = Ip::udp(A, TO_A2).packet(&udp(40_055, 53, 30));
    sim.pod_frame(a, &from_pod(&sim, a, &ask));
    sim.flush();
    sim.run_hosts();
    assert_eq!(sim.take_rx(a2).len(), 1, "{mode:?}");
    // A2's answer in two fragments: the first with the UDP header, then the rest.
    let body = udp(5353, 40_055, 1200);
    let mut first = Ip {
        df: false,
        ..Ip::udp(A2, A)
    }
    .packet(&body[..800]);
    first[6] |= 0x20; // more fragments
    fix_ipv4_checksum(&mut first);
    let later = Ip {
        df: false,
        frag_offset: 100,
        ..Ip::udp(A2, A)
    }
    .packet(&body[800..]);
    sim.out.host_rx[0].clear();
    for p in [&first, &later] {
        sim.pod_frame(a2, &from_pod(&sim, a2, p));
    }
    sim.flush();
    assert_eq!(
        sim.take_rx(a).len(),
        0,
        "{mode:?}: a fragment went straight to A"
    );
    assert_eq!(
        sim.out.host_rx[0].len(),
        2,
        "{mode:?}: both fragments to the host"
    );
}

/// Only a TCP connection's first packet lets the host hand a pod's port back: a
/// pod's answer to the node (a probe, say) does not open its port to whatever comes
/// through the host with its address.
fn tcp_is_handed_only_from_its_first_packet(mode: TunnelMode) {
    let mut sim = Sim::new(mode, &[&[A, A2], &[B]]);
    let (a, a2) = (sim.pod(A), sim.pod(A2));
    let tcp = tcp_packet;
    const SYN: u8 = 0x02;
    const SYN_ACK: u8 = 0x12;
    // A2 answers the node's probe from its server port: SYN-ACK to the gateway.
    sim.pod_frame(
        a2,
        &from_pod(&sim, a2, &tcp(A2, 8080, gateway(0), 50_000, SYN_ACK)),
    );
    sim.flush();
    // Something through the host with A2's address and that port: refused.
    sim.host_frame(0, &host_frame(0, &tcp(A2, 8080, A, 80, SYN)));
    sim.flush();
    assert_eq!(sim.take_rx(a).len(), 0, "{mode:?}");
    assert_eq!(sim.host_counters(0).dropped(DropReason::Spoofed), 1);
    // A2 opening a connection to a ClusterIP from port 41000: the host may hand it
    // back, DNATed.
    sim.pod_frame(a2, &from_pod(&sim, a2, &tcp(A2, 41_000, TO_A, 80, SYN)));
    sim.flush();
    sim.host_frame(0, &host_frame(0, &tcp(A2, 41_000, A, 8080, SYN)));
    sim.flush();
    assert_eq!(sim.take_rx(a).len(), 1, "{mode:?}: {}", sim.drops_report());
}

/// A Service connection A:p → TO_A2 → A2:8080 closes; A then opens A:p → A2:8080
/// directly, on the very ports the host's translation used. Its replies must reach
/// A directly, not go to the host as answers of the old connection.
fn a_handed_back_connection_does_not_capture_a_direct_one_on_the_same_ports(mode: TunnelMode) {
    let mut sim = cluster(mode);
    service_transfer(&mut sim, TO_A2, A2, A, 21);
    // sim::tcp's client port is 40000 + the server's port: the same 5-tuple again.
    let (a, a2) = (sim.pod(A), sim.pod(A2));
    let mut x = Transfer::start(&mut sim, a, a2, 8080, pseudo_random(22, 32 << 10));
    assert!(
        sim.run_until(STEP_LIMIT, |sim| x.pump(sim)).is_some(),
        "{mode:?}: the direct connection on the old connection's ports stalled: {}",
        sim.drops_report()
    );
    x.remove(&mut sim);
    // And a Service connection on those ports again goes through the host.
    service_transfer(&mut sim, TO_A2, A2, A, 23);
}

/// A TCP segment with `flags` and sequence number 0 from `src`:`sport` to
/// `dst`:`dport`.
fn tcp_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    tcp_seq((src, sport), (dst, dport), flags, 0)
}

/// A TCP segment with `flags` and sequence number `seq` from `src` to `dst`.
fn tcp_seq(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8, seq: u32) -> Vec<u8> {
    let ((src, sport), (dst, dport)) = (src, dst);
    let mut seg = vec![0u8; 20];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dport.to_be_bytes());
    seg[4..8].copy_from_slice(&seq.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = flags;
    Ip {
        proto: 6,
        ..Ip::udp(src, dst)
    }
    .packet(&seg)
}

/// A packet through the host with a forged pod source that the switch would refuse
/// (its TTL runs out) gets no ICMP error: it is counted as spoofed, and the pod
/// whose address it bore hears nothing.
fn a_spoofed_source_gets_no_error_from_the_switch(mode: TunnelMode) {
    let mut sim = Sim::new(mode, &[&[A, A2], &[B]]);
    let a2 = sim.pod(A2);
    let p = Ip {
        ttl: 1,
        ..Ip::udp(A2, B)
    }
    .packet(&udp(1, 9, 10));
    sim.host_frame(0, &host_frame(0, &p));
    sim.flush();
    assert_eq!(sim.take_rx(a2).len(), 0, "{mode:?}: an error went to A2");
    assert_eq!(sim.host_counters(0).dropped(DropReason::Spoofed), 1);
    assert_eq!(sim.host_counters(0).dropped(DropReason::TtlExceeded), 0);
    // From the world, the same refusal is answered, as a router does.
    let w = Ip {
        ttl: 1,
        ..Ip::udp(WORLD, B)
    }
    .packet(&udp(1, 9, 10));
    sim.host_frame(0, &host_frame(0, &w));
    sim.flush();
    assert_eq!(
        sim.out.host_rx[0].len(),
        1,
        "{mode:?}: the time-exceeded to the world"
    );
}

/// A translated connection closes; a new one on the same ports, through the host
/// again, is a connection of its own: established, it lives a day, not the closing
/// one's two minutes.
fn a_new_connection_on_a_closed_ones_ports_lives_as_established(mode: TunnelMode) {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const SYN_ACK: u8 = 0x12;
    const FIN_ACK: u8 = 0x11;
    let mut sim = Sim::new(mode, &[&[A, A2], &[B]]);
    let (a, a2) = (sim.pod(A), sim.pod(A2));
    let from_host = |sim: &mut Sim, flags| {
        let p = tcp_packet(A2, 41_000, A, 8080, flags);
        sim.host_frame(0, &host_frame(0, &p));
        sim.flush();
    };
    for round in 0..2 {
        // A2 opens to a ClusterIP, the host hands it back DNATed to A, A answers.
        let syn = tcp_packet(A2, 41_000, TO_A, 80, SYN);
        sim.pod_frame(a2, &from_pod(&sim, a2, &syn));
        sim.flush();
        sim.out.host_rx[0].clear();
        from_host(&mut sim, SYN);
        assert_eq!(
            sim.take_rx(a).len(),
            1,
            "{mode:?} round {round}: {}",
            sim.drops_report()
        );
        let answer = tcp_packet(A, 8080, A2, 41_000, SYN_ACK);
        sim.pod_frame(a, &from_pod(&sim, a, &answer));
        sim.flush();
        from_host(&mut sim, ACK);
        assert_eq!(
            sim.out.host_rx[0].len(),
            1,
            "{mode:?} round {round}: the answer"
        );
        sim.out.host_rx[0].clear();
        if round == 0 {
            from_host(&mut sim, FIN_ACK);
            sim.set_time(sim.time() + Duration::from_secs(10));
            sim.handle_timeouts();
            let _ = sim.take_rx(a);
        }
    }
    let _ = sim.take_rx(a);
    // Idle for longer than a closing connection lives: A's next segment still goes
    // to the host, which still has the connection.
    sim.set_time(sim.time() + Duration::from_secs(200));
    sim.handle_timeouts();
    let data = tcp_packet(A, 8080, A2, 41_000, ACK);
    sim.pod_frame(a, &from_pod(&sim, a, &data));
    sim.flush();
    assert_eq!(
        sim.out.host_rx[0].len(),
        1,
        "{mode:?}: the reply after 200 s idle"
    );
}

/// Two ClusterIPs share endpoint B, and A connects to each in turn from the same port
/// (sim::tcp's client port) while the host still tracks the first connection: the
/// host's NAT gives the second another source port (its reply tuple would be the
/// first's), and the switch admits the SYN it hands back on that port, which bears
/// the sequence number A sent.
fn services_sharing_an_endpoint_take_one_client_port_in_turn(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.host_nat(0).add_service(Service {
        vip: ALSO_TO_B,
        port: 80,
        proto: 6,
        endpoints: vec![(B, 8080)],
    });
    let first = service_transfer(&mut sim, TO_B, B, A, 31);
    assert_eq!(first, 40_000 + 8080, "{mode:?}: no clash yet");
    let second = service_transfer(&mut sim, ALSO_TO_B, B, A, 32);
    assert_ne!(
        second, first,
        "{mode:?}: the host rewrote the client's port"
    );
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
    assert_eq!(
        sim.nodes[0].host_flows.stats().returned_total,
        2,
        "{mode:?}"
    );
}

/// What the host port admits of a SYN with a pod's source: the pod's own SYN (its
/// address and sequence number, which NAT keeps), on the port the pod sent it from
/// or on another that the host's NAT gave it, for a few seconds. What a machine
/// behind the host could forge with the pod's address is refused: a SYN with another
/// sequence number, on the pod's port or on another; the sequence number under
/// another pod's address; a segment that opens nothing; the sequence number once the
/// pod's SYN is old. And the answer to a SYN that no NAT made does not come back
/// from the host.
fn a_syn_handed_back_on_another_port_is_known_by_its_sequence_number(mode: TunnelMode) {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const SYN_ACK: u8 = 0x12;
    const ISN: u32 = 0x5eed_1234;
    let mut sim = Sim::new(mode, &[&[A, A2], &[B]]);
    let (a, a2) = (sim.pod(A), sim.pod(A2));
    let syn = tcp_seq((A2, 41_000), (TO_A, 80), SYN, ISN);
    sim.pod_frame(a2, &from_pod(&sim, a2, &syn));
    sim.flush();
    let back = |sim: &mut Sim, src: (Ipv4Addr, u16), flags: u8, seq: u32| {
        let p = tcp_seq(src, (A, 8080), flags, seq);
        sim.host_frame(0, &host_frame(0, &p));
        sim.flush();
        sim.take_rx(a).len()
    };
    let forgeries = [
        (
            "the pod's port, another sequence number",
            (A2, 41_000),
            SYN,
            ISN ^ 1,
        ),
        (
            "another port and sequence number",
            (A2, 52_000),
            SYN,
            ISN + 1,
        ),
        ("another pod's address", (B, 52_000), SYN, ISN),
        ("no SYN", (A2, 52_000), ACK, ISN),
    ];
    for (what, src, flags, seq) in forgeries {
        assert_eq!(back(&mut sim, src, flags, seq), 0, "{mode:?}: {what}");
    }
    let spoofed = |sim: &Sim| sim.host_counters(0).dropped(DropReason::Spoofed);
    assert_eq!(spoofed(&sim), 4, "{mode:?}: {}", sim.drops_report());
    // The pod's SYN with its port rewritten, and the connection's next segment.
    assert_eq!(
        back(&mut sim, (A2, 52_000), SYN, ISN),
        1,
        "{mode:?}: rewritten"
    );
    assert_eq!(
        back(&mut sim, (A2, 52_000), ACK, ISN + 1),
        1,
        "{mode:?}: its ACK"
    );
    // A's answer goes to the host, to have the NAT undone. Sent back as it is (no
    // NAT made that SYN: a forger did), it is refused: a forger that hit the
    // sequence number gets no answer through the switch.
    let answer = tcp_seq((A, 8080), (A2, 52_000), SYN_ACK, 7);
    sim.out.host_rx[0].clear();
    let _ = sim.take_rx(a2);
    sim.pod_frame(a, &from_pod(&sim, a, &answer));
    sim.flush();
    assert_eq!(
        sim.out.host_rx[0].len(),
        1,
        "{mode:?}: A's answer to the host"
    );
    sim.host_frame(0, &host_frame(0, &answer));
    sim.flush();
    assert_eq!(
        sim.take_rx(a2).len(),
        0,
        "{mode:?}: the answer, untranslated"
    );
    // The connection's SYN again (a retransmission): admitted. The sequence
    // number on any other ports, even the pod's own: refused, for the first
    // connection handed back with it took it.
    assert_eq!(
        back(&mut sim, (A2, 52_000), SYN, ISN),
        1,
        "{mode:?}: retransmitted"
    );
    assert_eq!(back(&mut sim, (A2, 41_000), SYN, ISN), 0, "{mode:?}: taken");
    assert_eq!(back(&mut sim, (A2, 52_002), SYN, ISN), 0, "{mode:?}: taken");
    // The four forgeries, the answer sent back untranslated, the two taken.
    assert_eq!(spoofed(&sim), 7, "{mode:?}: {}", sim.drops_report());
    // The pod's SYN is seconds old: its sequence number opens nothing new.
    sim.set_time(sim.time() + Duration::from_secs(6));
    sim.handle_timeouts();
    assert_eq!(
        back(&mut sim, (A2, 52_001), SYN, ISN),
        0,
        "{mode:?}: expired"
    );
    assert_eq!(spoofed(&sim), 8, "{mode:?}: {}", sim.drops_report());
}
