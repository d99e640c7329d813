//! ClusterIP Services translated in the switch (`services = "switch"`), in the
//! simulation: real TCP (smoltcp) and hand-built frames through the core, the
//! endpoint local, on another node, or the client itself; affinity; endpoints
//! leaving; refusals; policy on the endpoint; and the attacks on the translation,
//! each beside its positive control.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use smoltcp::wire::IpAddress;
use weft_switch::mac::MacAddr;
use weft_switch::netpol::compile::{PodRules, RuleSet};
use weft_switch::services::{Endpoint, Frontend, Protocol, Readiness, ServicePort};
use weft_switch::sim::tcp::Transfer;
use weft_switch::sim::*;
use weft_switch::tables::counters::DropReason;
use weft_switch::tables::{PeerPath, TunnelMode};

/// Pods A and A2 on node 0; B, B2 and B3 on node 1.
const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const A2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const B2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 6);
const B3: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
/// ClusterIPs.
const TO_B: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TO_A2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const TO_A: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const TO_MANY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const TO_NONE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// In the Service CIDR, held by no Service.
const UNKNOWN: Ipv4Addr = Ipv4Addr::new(10, 96, 9, 9);
/// Steps after which a transfer counts as stalled.
const STEP_LIMIT: u64 = 5_000;

fn cluster(mode: TunnelMode) -> Sim {
    Sim::new(mode, &[&[A, A2], &[B, B2, B3]])
}

/// A Service port at `ip`:`port` over `protocol`, whose ready endpoints are
/// `endpoints` on their `target` port.
fn service(
    ip: Ipv4Addr,
    port: u16,
    protocol: Protocol,
    target: u16,
    endpoints: &[Ipv4Addr],
) -> ServicePort {
    let mut endpoints: Vec<Endpoint> = (endpoints.iter())
        .map(|&ip| Endpoint {
            ip,
            port: target,
            readiness: Readiness::Ready,
            local: false,
        })
        .collect();
    endpoints.sort();
    ServicePort {
        frontend: Frontend { ip, port, protocol },
        name: Arc::from(format!("default/svc-{ip}:{port}")),
        endpoints,
        affinity: None,
        internal_local: false,
    }
}

/// The usual Services: one per pod, on port 80 to 8080 (TCP) and 53 to 5353 (UDP).
fn services() -> Vec<ServicePort> {
    let mut ports = Vec::new();
    for (vip, to) in [(TO_B, B), (TO_A2, A2), (TO_A, A)] {
        ports.push(service(vip, 80, Protocol::Tcp, 8080, &[to]));
        ports.push(service(vip, 53, Protocol::Udp, 5353, &[to]));
    }
    ports.push(service(TO_NONE, 80, Protocol::Tcp, 8080, &[]));
    ports.push(service(TO_NONE, 53, Protocol::Udp, 5353, &[]));
    ports.sort_by_key(|p| p.frontend);
    ports
}

// ---- Hand-built packets, with checksums of their own ----

/// The transport checksum of `l4` from `src` to `dst` in protocol `proto`.
fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut data = Vec::new();
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&[0, proto]);
    data.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    data.extend_from_slice(l4);
    !ones_sum(&data)
}

/// A TCP segment from `src` to `dst` with `flags` (0x02 SYN, 0x10 ACK).
fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src.1.to_be_bytes());
    t[2..4].copy_from_slice(&dst.1.to_be_bytes());
    t[7] = 1;
    t[12] = 0x50;
    t[13] = flags;
    t[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    let c = l4_checksum(src.0, dst.0, 6, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    Ip {
        proto: 6,
        ..Ip::udp(src.0, dst.0)
    }
    .packet(&t)
}

/// A UDP datagram from `src` to `dst`, with a checksum.
fn udp_to(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut u = udp(src.1, dst.1, 0);
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    let c = l4_checksum(src.0, dst.0, 17, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    Ip::udp(src.0, dst.0).packet(&u)
}

/// An IPv4 packet as a pod received it: its addresses, ports and protocol, after
/// checking that its IPv4 and transport checksums hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Got {
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    proto: u8,
}

fn got(frame: &[u8]) -> Got {
    let p = &frame[ETH_HLEN..];
    assert_eq!(ones_sum(&p[..20]), 0xffff, "the IPv4 checksum holds");
    let (src, dst) = (
        Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        Ipv4Addr::new(p[16], p[17], p[18], p[19]),
    );
    let l4 = &p[20..usize::from(u16::from_be_bytes([p[2], p[3]]))];
    if matches!(p[9], 6 | 17) {
        let at = if p[9] == 6 { 16 } else { 6 };
        let mut zeroed = l4.to_vec();
        zeroed[at..at + 2].fill(0);
        let want = l4_checksum(src, dst, p[9], &zeroed);
        let have = u16::from_be_bytes([l4[at], l4[at + 1]]);
        assert!(
            have == want || (p[9] == 17 && have == 0xffff && want == 0),
            "the transport checksum holds: {have:#x} {want:#x}"
        );
    }
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    Got {
        src: (src, port(0)),
        dst: (dst, port(2)),
        proto: p[9],
    }
}

/// Pod `p` sends `packet`; the frames every pod then received, by pod.
fn send(sim: &mut Sim, p: usize, packet: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let frame = from_pod(sim, p, packet);
    sim.pod_frame(p, &frame);
    sim.flush();
    sim.deliver_wire();
    (0..sim.pods.len()).map(|q| sim.take_rx(q)).collect()
}

/// Pod `p` sends `packet`, which exactly one pod receives: that pod, and what it got.
fn send_one(sim: &mut Sim, p: usize, packet: &[u8]) -> (usize, Got) {
    let rx = send(sim, p, packet);
    let at: Vec<usize> = (0..rx.len()).filter(|&q| !rx[q].is_empty()).collect();
    assert_eq!(
        at.len(),
        1,
        "one pod receives it: {at:?}; {}",
        sim.drops_report()
    );
    assert_eq!(rx[at[0]].len(), 1);
    (at[0], got(&rx[at[0]][0]))
}

// ---- Real TCP through a ClusterIP ----

/// Sends 64 KiB from A to `vip`:80, whose endpoint `server` listens on 8080, and
/// checks that it arrived whole, from `seen_as`.
fn transfer(sim: &mut Sim, vip: Ipv4Addr, server: Ipv4Addr, seen_as: Ipv4Addr, seed: u64) {
    let (a, to) = (sim.pod(A), sim.pod(server));
    let data = pseudo_random(seed, 64 << 10);
    let mut x = Transfer::start_via(sim, a, (vip.into(), 80), to, 8080, data);
    let steps = sim.run_until(STEP_LIMIT, |sim| x.pump(sim));
    let what = format!("{:?} TCP {A} -> {vip} (endpoint {server})", sim.mode);
    assert!(steps.is_some(), "{what} stalled: {}", sim.drops_report());
    assert_eq!(x.first_mismatch, None, "{what}");
    assert_eq!(x.received, 64 << 10, "{what}");
    assert_eq!(
        x.server_saw.map(|e| e.addr),
        Some(IpAddress::Ipv4(seen_as)),
        "{what}"
    );
    x.remove(sim);
}

fn tcp_through_a_cluster_ip_to_a_remote_local_and_hairpin_endpoint(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&services());
    // The endpoint sees the client's own address: no SNAT.
    transfer(&mut sim, TO_B, B, A, 1);
    transfer(&mut sim, TO_A2, A2, A, 2);
    // Hairpin: the client reaches itself, seeing the connection come from the
    // Service's address.
    transfer(&mut sim, TO_A, A, TO_A, 3);
    assert_eq!(sim.total_drops(), 0, "{}", sim.drops_report());
}

fn a_connection_outlives_its_endpoint(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&services());
    let (a, b) = (sim.pod(A), sim.pod(B));
    let data = pseudo_random(9, 256 << 10);
    let mut x = Transfer::start_via(&mut sim, a, (TO_B.into(), 80), b, 8080, data);
    // Established, and part of the way.
    let started = sim.run_until(STEP_LIMIT, |sim| {
        x.pump(sim);
        x.received > 0
    });
    assert!(started.is_some(), "{mode:?}: {}", sim.drops_report());
    assert!(x.received < 256 << 10);
    // B leaves the Service: its TCP connection keeps its translation, both ways.
    let mut without_b = services();
    for p in &mut without_b {
        p.endpoints.retain(|e| e.ip != B);
    }
    sim.set_services(&without_b);
    assert!(
        sim.run_until(STEP_LIMIT, |sim| x.pump(sim)).is_some(),
        "{mode:?}: the connection ends cleanly: {}",
        sim.drops_report()
    );
    assert_eq!(x.first_mismatch, None);
    x.remove(&mut sim);
    // A new connection is refused at once.
    let syn = tcp((A, 41_000), (TO_B, 80), 0x02);
    let rx = send(&mut sim, a, &syn);
    assert_eq!(rx[a].len(), 1, "{mode:?}: A is told");
    assert_eq!(sim.port_counters(a).dropped(DropReason::ServiceRefused), 1);
}

// ---- Hand-built: UDP, the node, refusals ----

fn udp_is_translated_and_its_replies_translated_back(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&services());
    let (a, b, a2) = (sim.pod(A), sim.pod(B), sim.pod(A2));
    for (vip, to, p) in [(TO_B, B, b), (TO_A2, A2, a2)] {
        let (at, q) = send_one(&mut sim, a, &udp_to((A, 33_000), (vip, 53), b"query"));
        assert_eq!((at, q.src, q.dst), (p, (A, 33_000), (to, 5353)), "{mode:?}");
        let (at, r) = send_one(&mut sim, p, &udp_to((to, 5353), (A, 33_000), b"answer"));
        assert_eq!((at, r.src, r.dst), (a, (vip, 53), (A, 33_000)), "{mode:?}");
    }
    // The hairpin's datagram comes from the Service; its answer goes back as from it.
    let (at, q) = send_one(&mut sim, a, &udp_to((A, 33_001), (TO_A, 53), b"query"));
    assert_eq!(
        (at, q.src, q.dst),
        (a, (TO_A, 33_001), (A, 5353)),
        "{mode:?}"
    );
    let (at, r) = send_one(&mut sim, a, &udp_to((A, 5353), (TO_A, 33_001), b"answer"));
    assert_eq!((at, r.src, r.dst), (a, (TO_A, 53), (A, 33_001)), "{mode:?}");
    assert_eq!(sim.total_drops(), 0, "{}", sim.drops_report());
}

fn the_node_reaches_a_cluster_ip_through_its_host_port(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&services());
    let b = sim.pod(B);
    let from_host = |sim: &mut Sim, src: Ipv4Addr| {
        let query = udp_to((src, 34_000), (TO_B, 53), b"query");
        let gw = MacAddr::for_ip(gateway(0));
        sim.host_frame(0, &eth(router_mac(0), gw, ETHERTYPE_IPV4, &query));
        sim.flush();
        sim.deliver_wire();
        sim.take_rx(b)
    };
    // A pod's address forged on the host port (a machine routing through the
    // node): no translation, dropped as spoofed.
    assert!(from_host(&mut sim, A2).is_empty(), "{mode:?}");
    assert_eq!(sim.host_counters(0).dropped(DropReason::Spoofed), 1);
    // Control: the node's own address.
    let rx = from_host(&mut sim, gateway(0));
    assert_eq!(rx.len(), 1, "{mode:?}: {}", sim.drops_report());
    assert_eq!(got(&rx[0]).dst, (B, 5353));
    send(
        &mut sim,
        b,
        &udp_to((B, 5353), (gateway(0), 34_000), b"answer"),
    );
    let host = std::mem::take(&mut sim.out.host_rx[0]);
    assert_eq!(host.len(), 1, "{mode:?}: {}", sim.drops_report());
    assert_eq!(got(&host[0]).src, (TO_B, 53), "{mode:?}");
}

/// The node resolves ClusterIPs on its host port (its route for the Service CIDR is
/// on the link, as for pods): the switch answers for every address of the Service
/// CIDR, held by a Service or not, with its router MAC. Controls: an address beyond
/// the cluster, which the host routes itself, stays unanswered, and so does a
/// ClusterIP where the switch translates no Services.
fn the_node_resolves_cluster_ips_on_its_host_port(mode: TunnelMode) {
    let hmac = MacAddr::for_ip(gateway(0));
    let ask = |sim: &mut Sim, target: Ipv4Addr| {
        let request = arp(1, hmac, gateway(0), MacAddr([0; 6]), target);
        sim.host_frame(0, &eth(MacAddr::BROADCAST, hmac, ETHERTYPE_ARP, &request));
        sim.flush();
        std::mem::take(&mut sim.out.host_rx[0])
    };
    let mut sim = cluster(mode);
    sim.set_services(&services());
    for target in [TO_B, UNKNOWN] {
        let rx = ask(&mut sim, target);
        assert_eq!(rx.len(), 1, "{mode:?}: {target}: {}", sim.drops_report());
        let want = arp(2, router_mac(0), target, hmac, gateway(0));
        assert_eq!(
            &rx[0][ETH_HLEN..ETH_HLEN + 28],
            &want[..],
            "{mode:?}: {target}"
        );
    }
    assert!(
        ask(&mut sim, Ipv4Addr::new(198, 18, 0, 2)).is_empty(),
        "{mode:?}"
    );
    assert_eq!(sim.host_counters(0).dropped(DropReason::ArpIgnored), 1);
    let mut without = cluster(mode);
    assert!(ask(&mut without, TO_B).is_empty(), "{mode:?}");
    assert_eq!(without.host_counters(0).dropped(DropReason::ArpIgnored), 1);
}

/// Under direct routing the node reaches a ClusterIP whose endpoint a direct peer
/// holds: its translated query goes through the tunnel (the host, which routes the
/// peer's pods, cannot take back a packet from its own address), and the endpoint's
/// answer to the node's gateway address comes back through the tunnel, translated.
/// Control: the endpoint's packets to a pod of the node still go through its host.
fn the_node_reaches_a_cluster_ip_on_a_direct_peer(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&services());
    for (n, m) in [(0, 1), (1, 0)] {
        sim.set_peer(n, m, |p| {
            p.path = PeerPath::Direct {
                dev: "eth0".into(),
                node_via_tunnel: true,
            }
        });
    }
    let (a, b) = (sim.pod(A), sim.pod(B));
    let query = udp_to((gateway(0), 34_000), (TO_B, 53), b"query");
    let gw = MacAddr::for_ip(gateway(0));
    sim.host_frame(0, &eth(router_mac(0), gw, ETHERTYPE_IPV4, &query));
    sim.flush();
    sim.deliver_wire();
    let rx = sim.take_rx(b);
    assert_eq!(rx.len(), 1, "{mode:?}: {}", sim.drops_report());
    assert_eq!(got(&rx[0]).src, (gateway(0), 34_000));
    assert_eq!(got(&rx[0]).dst, (B, 5353));
    send(
        &mut sim,
        b,
        &udp_to((B, 5353), (gateway(0), 34_000), b"answer"),
    );
    let host = std::mem::take(&mut sim.out.host_rx[0]);
    assert_eq!(host.len(), 1, "{mode:?}: {}", sim.drops_report());
    assert_eq!(got(&host[0]).src, (TO_B, 53), "{mode:?}");
    assert_eq!(sim.total_drops(), 0, "{}", sim.drops_report());
    // Control: B to pod A goes to node 1's host, which routes it directly.
    let rx = send(&mut sim, b, &udp_to((B, 5353), (A, 34_000), b"direct"));
    assert!(rx[a].is_empty(), "{mode:?}");
    assert_eq!(std::mem::take(&mut sim.out.host_rx[1]).len(), 1, "{mode:?}");
}

fn a_service_without_endpoints_is_refused_at_once(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&services());
    let a = sim.pod(A);
    // (packet, reason, ICMP code, sent from)
    for (packet, reason, code, from) in [
        (
            tcp((A, 41_000), (TO_NONE, 80), 0x02),
            DropReason::ServiceRefused,
            3,
            TO_NONE,
        ),
        (
            udp_to((A, 41_000), (TO_NONE, 53), b"q"),
            DropReason::ServiceRefused,
            3,
            TO_NONE,
        ),
        (
            udp_to((A, 41_000), (TO_B, 54), b"q"),
            DropReason::ServiceUnknown,
            3,
            TO_B,
        ),
        (
            udp_to((A, 41_000), (UNKNOWN, 53), b"q"),
            DropReason::ServiceUnknown,
            1,
            gateway(0),
        ),
    ] {
        let before = sim.port_counters(a).dropped(reason);
        let rx = send(&mut sim, a, &packet);
        assert_eq!(rx[a].len(), 1, "{mode:?}: A is told at once");
        let icmp = &rx[a][0][ETH_HLEN..];
        assert_eq!(
            (icmp[20], icmp[21]),
            (3, code),
            "{mode:?}: port or host unreachable"
        );
        assert_eq!(&icmp[12..16], &from.octets(), "{mode:?}");
        // It quotes the packet as A sent it, to the ClusterIP.
        assert_eq!(&icmp[28 + 16..28 + 20], &packet[16..20]);
        assert_eq!(sim.port_counters(a).dropped(reason), before + 1);
        assert!(rx.iter().enumerate().all(|(q, f)| q == a || f.is_empty()));
    }
    // The node, whose address is the gateway's, is told too.
    let query = udp_to((gateway(0), 41_000), (TO_NONE, 53), b"q");
    let gw = MacAddr::for_ip(gateway(0));
    sim.host_frame(0, &eth(router_mac(0), gw, ETHERTYPE_IPV4, &query));
    sim.flush();
    let host = std::mem::take(&mut sim.out.host_rx[0]);
    assert_eq!(host.len(), 1, "{mode:?}: {}", sim.drops_report());
    let icmp = &host[0][ETH_HLEN..];
    assert_eq!(
        (icmp[20], icmp[21], &icmp[12..16]),
        (3, 3, &TO_NONE.octets()[..])
    );
}

fn internal_local_without_a_local_endpoint_drops(mode: TunnelMode) {
    let mut sim = cluster(mode);
    let mut local = service(TO_MANY, 53, Protocol::Udp, 5353, &[B]);
    local.internal_local = true;
    sim.set_services(&[local]);
    let (a, b2) = (sim.pod(A), sim.pod(B2));
    let rx = send(&mut sim, a, &udp_to((A, 1000), (TO_MANY, 53), b"q"));
    assert!(rx.iter().all(Vec::is_empty), "{mode:?}: dropped, no answer");
    assert_eq!(sim.port_counters(a).dropped(DropReason::ServiceNoLocal), 1);
    // Control: on B's node, the endpoint is local.
    let (at, q) = send_one(&mut sim, b2, &udp_to((B2, 1000), (TO_MANY, 53), b"q"));
    assert_eq!((at, q.dst), (sim.pod(B), (B, 5353)), "{mode:?}");
}

/// An SCTP packet (an INIT chunk) from `src` to `dst`, with its CRC32c.
fn sctp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src.1.to_be_bytes());
    p.extend_from_slice(&dst.1.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&[
        1, 0, 0, 20, 0, 0, 0, 7, 0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1,
    ]);
    let crc = crc32c::crc32c(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    Ip {
        proto: 132,
        ..Ip::udp(src.0, dst.0)
    }
    .packet(&p)
}

fn sctp_is_translated_with_its_crc(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&[service(TO_B, 3868, Protocol::Sctp, 3869, &[B])]);
    let (a, b) = (sim.pod(A), sim.pod(B));
    let rx = send(&mut sim, a, &sctp((A, 5000), (TO_B, 3868)));
    assert_eq!(rx[b].len(), 1, "{mode:?}: {}", sim.drops_report());
    let p = &rx[b][0][ETH_HLEN..];
    assert_eq!(ones_sum(&p[..20]), 0xffff);
    assert_eq!(&p[16..20], &B.octets());
    let mut l4 = p[20..].to_vec();
    assert_eq!(&l4[2..4], &3869u16.to_be_bytes());
    let crc = u32::from_le_bytes([l4[8], l4[9], l4[10], l4[11]]);
    l4[8..12].fill(0);
    assert_eq!(crc, crc32c::crc32c(&l4), "{mode:?}: the CRC32c holds");
    // The answer comes back from the Service.
    let rx = send(&mut sim, b, &sctp((B, 3869), (A, 5000)));
    let p = &rx[a][0][ETH_HLEN..];
    assert_eq!(
        (&p[12..16], &p[20..22]),
        (&TO_B.octets()[..], &3868u16.to_be_bytes()[..])
    );
}

/// A TCP segment from A to `dst` with `payload` bytes, as a TAP hands it over with
/// its checksum left partial (the pseudo-header's sum), and the offload metadata.
fn partial_tcp(dst: (Ipv4Addr, u16), payload: usize) -> (Vec<u8>, weft_switch::io::port::Offload) {
    let mut p = tcp((A, 42_000), dst, 0x10);
    p.extend((0..payload).map(|i| i as u8));
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut p);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&A.octets());
    pseudo.extend_from_slice(&dst.0.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(total - 20).to_be_bytes());
    p[36..38].copy_from_slice(&ones_sum(&pseudo).to_be_bytes());
    let offload = weft_switch::io::port::Offload {
        needs_csum: true,
        csum_start: (ETH_HLEN + 20) as u16,
        csum_offset: 16,
        ..weft_switch::io::port::Offload::PLAIN
    };
    (p, offload)
}

fn partial_checksums_and_super_frames_are_translated(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&services());
    let (a, a2, b) = (sim.pod(A), sim.pod(A2), sim.pod(B));
    // A partial checksum, to a local endpoint: completed by A2's "kernel", right.
    let (p, offload) = partial_tcp((TO_A2, 80), 100);
    sim.port_frame_with(0, sim.pods[a].port, &offload, &from_pod(&sim, a, &p));
    sim.flush();
    let rx = sim.take_rx(a2);
    assert_eq!(rx.len(), 1, "{mode:?}: {}", sim.drops_report());
    assert_eq!(got(&rx[0]).dst, (A2, 8080));
    // A 30 KB TSO super-frame, to an endpoint on node 1: cut for the wire, each
    // segment translated with its checksums right.
    let (p, offload) = partial_tcp((TO_B, 80), 30_000);
    let offload = weft_switch::io::port::Offload {
        gso_type: weft_encap::virtio::GsoType::TcpV4,
        gso_size: 1360,
        hdr_len: (ETH_HLEN + 40) as u16,
        ..offload
    };
    sim.port_frame_with(0, sim.pods[a].port, &offload, &from_pod(&sim, a, &p));
    sim.flush();
    sim.deliver_wire();
    let rx = sim.take_rx(b);
    assert!(
        rx.len() >= 30_000 / 1360,
        "{mode:?}: {} frames; {}",
        rx.len(),
        sim.drops_report()
    );
    for f in &rx {
        assert_eq!(got(f).dst, (B, 8080), "{mode:?}");
    }
}

fn an_endpoint_outside_the_cluster_is_reached_through_the_host(mode: TunnelMode) {
    // The `kubernetes` Service's endpoints are the API servers' own addresses.
    const API: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
    let mut sim = cluster(mode);
    sim.set_services(&[service(TO_MANY, 443, Protocol::Tcp, 6443, &[API])]);
    let a = sim.pod(A);
    send(&mut sim, a, &tcp((A, 43_000), (TO_MANY, 443), 0x02));
    let host = std::mem::take(&mut sim.out.host_rx[0]);
    assert_eq!(host.len(), 1, "{mode:?}: {}", sim.drops_report());
    assert_eq!(got(&host[0]).dst, (API, 6443));
    // The host hands the answer back through weft0: A sees it from the Service.
    let answer = tcp((API, 6443), (A, 43_000), 0x12);
    let gw = MacAddr::for_ip(gateway(0));
    sim.host_frame(0, &eth(router_mac(0), gw, ETHERTYPE_IPV4, &answer));
    sim.flush();
    let rx = sim.take_rx(a);
    assert_eq!(rx.len(), 1, "{mode:?}: {}", sim.drops_report());
    assert_eq!(got(&rx[0]).src, (TO_MANY, 443), "{mode:?}");
}

// ---- Choosing endpoints ----

/// The endpoint (pod) each of `sports` lands on, as new UDP flows from A to
/// `TO_MANY`:53.
fn landings(sim: &mut Sim, sports: impl IntoIterator<Item = u16>) -> Vec<usize> {
    let a = sim.pod(A);
    (sports.into_iter())
        .map(|s| send_one(sim, a, &udp_to((A, s), (TO_MANY, 53), b"q")).0)
        .collect()
}

fn affinity_holds_a_client_to_one_endpoint(mode: TunnelMode) {
    let ends = [B, B2, B3];
    // Control: without affinity, a hundred flows spread.
    let mut control = cluster(mode);
    control.set_services(&[service(TO_MANY, 53, Protocol::Udp, 5353, &ends)]);
    let spread = landings(&mut control, 1000..1100);
    let mut used = spread.clone();
    used.sort_unstable();
    used.dedup();
    assert_eq!(used.len(), 3, "{mode:?}: {spread:?}");
    // With affinity, they land on one.
    let mut sim = cluster(mode);
    let mut sticky = service(TO_MANY, 53, Protocol::Udp, 5353, &ends);
    sticky.affinity = Some(Duration::from_secs(10));
    sim.set_services(&[sticky]);
    let held = landings(&mut sim, 1000..1100);
    assert!(held.iter().all(|&p| p == held[0]), "{mode:?}: {held:?}");
    // New flows whose own hash goes elsewhere (as the control shows).
    let mut elsewhere = (5000..6000).filter(|&s| landings(&mut control, [s]) != [held[0]]);
    let (fresh, late) = (elsewhere.next().unwrap(), elsewhere.next().unwrap());
    // While the client's last connection is younger than the timeout, affinity wins.
    sim.set_time(sim.time() + Duration::from_secs(9));
    assert_eq!(
        landings(&mut sim, [fresh]),
        [held[0]],
        "{mode:?}: still fresh"
    );
    // Idle longer than the timeout, the client's flow goes where its hash says.
    sim.set_time(sim.time() + Duration::from_secs(12));
    let want = landings(&mut control, [late]);
    assert_eq!(landings(&mut sim, [late]), want, "{mode:?}: expired");
}

/// How many of `flows` new flows land elsewhere once endpoint B3 of `ends` leaves,
/// and the least that must (those that were on B3).
fn moved_by_removal(mode: TunnelMode, ends: &[Ipv4Addr], flows: u16) -> (usize, usize) {
    let mut before = cluster(mode);
    before.set_services(&[service(TO_MANY, 53, Protocol::Udp, 5353, ends)]);
    // The same change as a node sees it: the table before, then the one after.
    let mut after = cluster(mode);
    after.set_services(&[service(TO_MANY, 53, Protocol::Udp, 5353, ends)]);
    let rest: Vec<Ipv4Addr> = ends.iter().copied().filter(|&e| e != B3).collect();
    after.set_services(&[service(TO_MANY, 53, Protocol::Udp, 5353, &rest)]);
    let b3 = before.pod(B3);
    let x = landings(&mut before, 3000..3000 + flows);
    let y = landings(&mut after, 3000..3000 + flows);
    let moved = x.iter().zip(&y).filter(|(p, q)| p != q).count();
    let minimum = x.iter().filter(|&&p| p == b3).count();
    (moved, minimum)
}

fn removing_an_endpoint_moves_few_flows_and_flushes_its_udp(mode: TunnelMode) {
    let ends = [B, B2, B3];
    let mut sim = cluster(mode);
    sim.set_services(&[service(TO_MANY, 53, Protocol::Udp, 5353, &ends)]);
    let (b3, flows) = (sim.pod(B3), 1000..1200);
    let first = landings(&mut sim, flows.clone());
    assert!(first.contains(&b3));
    sim.set_services(&[service(TO_MANY, 53, Protocol::Udp, 5353, &[B, B2])]);
    let again = landings(&mut sim, flows);
    for (i, (p, q)) in first.iter().zip(&again).enumerate() {
        match *p == b3 {
            // Flushed: the flow moved at its next datagram.
            true => assert_ne!(*q, b3, "{mode:?}: flow {i}"),
            // The others keep their endpoint.
            false => assert_eq!(p, q, "{mode:?}: flow {i}"),
        }
    }
    // New flows: Maglev moves those of the endpoint that left, and few others.
    let (moved, minimum) = moved_by_removal(mode, &ends, 600);
    eprintln!(
        "{mode:?}: 1 of 3 endpoints removed: {moved} of 600 new flows moved, minimum {minimum}"
    );
    assert!(
        moved >= minimum && moved <= minimum + 600 / 50,
        "moved {moved}, minimum {minimum}"
    );
}

fn tcp_connections_keep_their_endpoint_when_it_leaves(mode: TunnelMode) {
    let mut sim = cluster(mode);
    let ends = [B, B2, B3];
    let mut port = service(TO_MANY, 80, Protocol::Tcp, 8080, &ends);
    sim.set_services(&[port.clone()]);
    let a = sim.pod(A);
    let open: Vec<usize> = (1000..1060)
        .map(|s| send_one(&mut sim, a, &tcp((A, s), (TO_MANY, 80), 0x02)).0)
        .collect();
    port.endpoints.retain(|e| e.ip != B3);
    sim.set_services(&[port]);
    for (i, s) in (1000..1060).enumerate() {
        let (at, _) = send_one(&mut sim, a, &tcp((A, s), (TO_MANY, 80), 0x10));
        assert_eq!(at, open[i], "{mode:?}: connection {i} stays");
    }
}

/// A client that reuses the ports of a connection that closed opens a new one: once
/// the closed one's endpoint has left, the new SYN goes to a live endpoint, and its
/// reply is translated back. Control: a connection still open keeps the endpoint
/// that left, even for its SYN sent again.
fn a_reopened_connection_avoids_an_endpoint_that_left(mode: TunnelMode) {
    let mut sim = cluster(mode);
    let mut port = service(TO_MANY, 80, Protocol::Tcp, 8080, &[B, B2, B3]);
    sim.set_services(&[port.clone()]);
    let (a, b3) = (sim.pod(A), sim.pod(B3));
    let syn = |s: u16| tcp((A, s), (TO_MANY, 80), 0x02);
    // Two connections on B3: the client resets one, the other stays open.
    let on_b3: Vec<u16> = (1000..2000)
        .filter(|&s| send_one(&mut sim, a, &syn(s)).0 == b3)
        .take(2)
        .collect();
    let (closed, open) = (on_b3[0], on_b3[1]);
    let rst = tcp((A, closed), (TO_MANY, 80), 0x04);
    assert_eq!(
        send_one(&mut sim, a, &rst).0,
        b3,
        "{mode:?}: the RST follows"
    );
    port.endpoints.retain(|e| e.ip != B3);
    sim.set_services(&[port]);
    assert_eq!(send_one(&mut sim, a, &syn(open)).0, b3, "{mode:?}: kept");
    let (at, to) = send_one(&mut sim, a, &syn(closed));
    assert_ne!(at, b3, "{mode:?}: the reopened connection avoids B3");
    assert_eq!(to.src, (A, closed), "{mode:?}");
    assert_eq!(to.dst.1, 8080, "{mode:?}");
    let reply = tcp((to.dst.0, 8080), (A, closed), 0x12);
    let (back, got) = send_one(&mut sim, at, &reply);
    assert_eq!(
        (back, got.src),
        (a, (TO_MANY, 80)),
        "{mode:?}: translated back"
    );
}

// ---- Policy ----

fn policy_judges_the_endpoint(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&services());
    let (a, a2) = (sim.pod(A), sim.pod(A2));
    let deny = || PodRules {
        ingress: Some(RuleSet::default()),
        egress: None,
        selected_by: vec![("x/deny".into(), true, false)],
    };
    sim.set_rules(a2, Some(deny()));
    let rx = send(&mut sim, a, &udp_to((A, 5000), (TO_A2, 53), b"q"));
    assert!(rx.iter().all(Vec::is_empty), "{mode:?}");
    assert_eq!(sim.port_counters(a2).dropped(DropReason::PolicyIngress), 1);
    // Egress isolation of the client, likewise, against the endpoint.
    sim.set_rules(a2, None);
    sim.set_rules(
        a,
        Some(PodRules {
            ingress: None,
            egress: Some(RuleSet::default()),
            selected_by: vec![("x/deny".into(), false, true)],
        }),
    );
    let rx = send(&mut sim, a, &udp_to((A, 5001), (TO_A2, 53), b"q"));
    assert!(rx.iter().all(Vec::is_empty), "{mode:?}");
    assert_eq!(sim.port_counters(a).dropped(DropReason::PolicyEgress), 1);
    // Control: without rules it passes.
    sim.set_rules(a, None);
    let (at, _) = send_one(&mut sim, a, &udp_to((A, 5002), (TO_A2, 53), b"q"));
    assert_eq!(at, a2);
}

// ---- Attacks, each with its control ----

fn a_spoofed_source_is_not_translated(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&services());
    let (a, b) = (sim.pod(A), sim.pod(B));
    let rx = send(&mut sim, a, &udp_to((A2, 6000), (TO_B, 53), b"q"));
    assert!(rx.iter().all(Vec::is_empty), "{mode:?}");
    assert_eq!(sim.port_counters(a).dropped(DropReason::Spoofed), 1);
    // No translation was recorded for the forged source: B's answer to it is not
    // given the Service's address.
    let (_, r) = send_one(&mut sim, b, &udp_to((B, 5353), (A2, 6000), b"a"));
    assert_eq!(r.src, (B, 5353), "{mode:?}");
    // Control: from A's own address.
    let (at, _) = send_one(&mut sim, a, &udp_to((A, 6000), (TO_B, 53), b"q"));
    assert_eq!(at, b);
}

fn an_endpoint_cannot_speak_as_the_service_for_a_flow_it_does_not_hold(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&[service(TO_MANY, 53, Protocol::Udp, 5353, &[B, A2])]);
    let a = sim.pod(A);
    let (holder, q) = send_one(&mut sim, a, &udp_to((A, 7000), (TO_MANY, 53), b"q"));
    let holder_ip = q.dst.0;
    let other = if holder_ip == B { A2 } else { B };
    let other_pod = sim.pod(other);
    // The other endpoint, on the flow's ports: not translated.
    let (_, r) = send_one(&mut sim, other_pod, &udp_to((other, 5353), (A, 7000), b"x"));
    assert_eq!(r.src, (other, 5353), "{mode:?}");
    // The endpoint itself, from another port: not translated.
    let (_, r) = send_one(
        &mut sim,
        holder,
        &udp_to((holder_ip, 5354), (A, 7000), b"x"),
    );
    assert_eq!(r.src, (holder_ip, 5354), "{mode:?}");
    // Control: the endpoint's answer is.
    let (_, r) = send_one(
        &mut sim,
        holder,
        &udp_to((holder_ip, 5353), (A, 7000), b"x"),
    );
    assert_eq!(r.src, (TO_MANY, 53), "{mode:?}");
}

fn truncated_and_fragmented_packets_are_not_translated(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&services());
    let (a, b) = (sim.pod(A), sim.pod(B));
    let short_tcp = Ip {
        proto: 6,
        ..Ip::udp(A, TO_B)
    }
    .packet(&tcp((A, 1), (TO_B, 80), 0x02)[20..30]);
    let short_udp = Ip::udp(A, TO_B).packet(&[0x9c, 0x40, 0, 53]);
    for p in [short_tcp, short_udp] {
        assert!(send(&mut sim, a, &p).iter().all(Vec::is_empty), "{mode:?}");
    }
    assert_eq!(sim.port_counters(a).dropped(DropReason::Malformed), 2);
    let mut first = udp_to((A, 8000), (TO_B, 53), b"fragment");
    first[6] |= 0x20; // more fragments
    first[6] &= !0x40;
    fix_ipv4_checksum(&mut first);
    assert!(
        send(&mut sim, a, &first).iter().all(Vec::is_empty),
        "{mode:?}"
    );
    assert_eq!(
        sim.port_counters(a)
            .dropped(DropReason::ServiceUntranslatable),
        1
    );
    // Control: the whole datagram is translated.
    let (at, _) = send_one(&mut sim, a, &udp_to((A, 8000), (TO_B, 53), b"whole"));
    assert_eq!(at, b);
}

/// An ICMP port unreachable from `from` to `to` quoting `quoted`.
fn port_unreachable(from: Ipv4Addr, to: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![3, 3, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&quoted[..28]);
    let c = !ones_sum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    Ip {
        proto: 1,
        ..Ip::udp(from, to)
    }
    .packet(&m)
}

/// The ICMP error in `frame`: its source, and the destination of the packet it
/// quotes, once its checksum and the quoted header's hold.
fn icmp_about(frame: &[u8]) -> (Ipv4Addr, (Ipv4Addr, u16)) {
    let p = &frame[ETH_HLEN..];
    assert_eq!(ones_sum(&p[..20]), 0xffff);
    assert_eq!(ones_sum(&p[20..]), 0xffff, "the ICMP checksum holds");
    let q = &p[28..];
    assert_eq!(
        ones_sum(&q[..20]),
        0xffff,
        "the quoted header's checksum holds"
    );
    let quoted = Ipv4Addr::new(q[16], q[17], q[18], q[19]);
    (
        Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        (quoted, u16::from_be_bytes([q[22], q[23]])),
    )
}

fn icmp_errors_about_a_translated_flow_are_translated_back(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&services());
    let (a, b, b2) = (sim.pod(A), sim.pod(B), sim.pod(B2));
    let rx = send(&mut sim, a, &udp_to((A, 9000), (TO_B, 53), b"q"));
    let seen = rx[b][0][ETH_HLEN..].to_vec();
    // From the endpoint: A sees it from the Service, about its packet to it.
    let error = send(&mut sim, b, &port_unreachable(B, A, &seen));
    assert_eq!(error[a].len(), 1, "{mode:?}");
    assert_eq!(icmp_about(&error[a][0]), (TO_B, (TO_B, 53)), "{mode:?}");
    // From anyone else (a router on the path, another pod): its quote translated,
    // its own source kept, so it cannot pass for the Service.
    let error = send(&mut sim, b2, &port_unreachable(B2, A, &seen));
    assert_eq!(icmp_about(&error[a][0]), (B2, (TO_B, 53)), "{mode:?}");
    // Control: an error about A's direct flow to B passes as it is.
    let direct = udp_to((A, 9001), (B, 5353), b"q");
    send(&mut sim, a, &direct);
    let error = send(&mut sim, b, &port_unreachable(B, A, &direct));
    assert_eq!(icmp_about(&error[a][0]), (B, (B, 5353)), "{mode:?}");
    // An error A sends about the Service's answer goes to the ClusterIP: dropped.
    let answer = udp_to((TO_B, 53), (A, 9000), b"a");
    let before = sim.port_counters(a).dropped(DropReason::ServiceUnknown);
    let rx = send(&mut sim, a, &port_unreachable(A, TO_B, &answer));
    assert!(rx.iter().all(Vec::is_empty), "{mode:?}");
    assert_eq!(
        sim.port_counters(a).dropped(DropReason::ServiceUnknown),
        before + 1
    );
}

fn a_flood_of_new_flows_churns_only_its_own(mode: TunnelMode) {
    let mut sim = cluster(mode);
    sim.set_services(&services());
    let (a, a2, b) = (sim.pod(A), sim.pod(A2), sim.pod(B));
    // A holds its share of node 0's table (half of it: two entries a flow).
    // A2, the control, opens its flows first.
    for s in 0..20 {
        let (at, _) = send_one(&mut sim, a2, &udp_to((A2, 20_000 + s), (TO_B, 53), b"q"));
        assert_eq!(at, b, "{mode:?}");
    }
    // A opens twice the flows its share of node 0's table holds (half the table,
    // two entries a flow): every one is translated, each taking the place of one
    // of A's own oldest.
    let share = CONNTRACK_MAX / 2 / 2;
    for s in 0..(2 * share) as u16 {
        let (at, _) = send_one(&mut sim, a, &udp_to((A, 10_000 + s), (TO_B, 53), b"q"));
        assert_eq!(at, b, "{mode:?}");
    }
    // A holds no more than its share of the table: A2's entries and A's share.
    let live = sim.nodes[0].core.service_entries();
    assert!(
        live <= (CONNTRACK_MAX / 2 + 40) as u64,
        "{mode:?}: {live} entries"
    );
    let answer =
        |sim: &mut Sim, to: (Ipv4Addr, u16)| send_one(sim, b, &udp_to((B, 5353), to, b"a")).1.src;
    // A's newest flow kept its translation...
    let newest = (A, 10_000 + 2 * share as u16 - 1);
    assert_eq!(answer(&mut sim, newest), (TO_B, 53), "{mode:?}");
    // ...and A2's flows all kept theirs.
    for s in 0..20 {
        assert_eq!(
            answer(&mut sim, (A2, 20_000 + s)),
            (TO_B, 53),
            "{mode:?}: flow {s}"
        );
    }
}

weft_switch::both_modes!(
    tcp_through_a_cluster_ip_to_a_remote_local_and_hairpin_endpoint,
    a_connection_outlives_its_endpoint,
    udp_is_translated_and_its_replies_translated_back,
    sctp_is_translated_with_its_crc,
    partial_checksums_and_super_frames_are_translated,
    an_endpoint_outside_the_cluster_is_reached_through_the_host,
    the_node_reaches_a_cluster_ip_through_its_host_port,
    the_node_resolves_cluster_ips_on_its_host_port,
    the_node_reaches_a_cluster_ip_on_a_direct_peer,
    a_service_without_endpoints_is_refused_at_once,
    internal_local_without_a_local_endpoint_drops,
    affinity_holds_a_client_to_one_endpoint,
    removing_an_endpoint_moves_few_flows_and_flushes_its_udp,
    tcp_connections_keep_their_endpoint_when_it_leaves,
    a_reopened_connection_avoids_an_endpoint_that_left,
    policy_judges_the_endpoint,
    a_spoofed_source_is_not_translated,
    an_endpoint_cannot_speak_as_the_service_for_a_flow_it_does_not_hold,
    truncated_and_fragmented_packets_are_not_translated,
    icmp_errors_about_a_translated_flow_are_translated_back,
    a_flood_of_new_flows_churns_only_its_own,
);
