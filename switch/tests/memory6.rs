//! IPv6 through the switching core in memory, without root: simulated dual-stack
//! nodes whose smoltcp pods hold an address of each family (see `weft_switch::sim`).
//! Real TCP over IPv6 crosses the tunnel in both modes, Neighbour Discovery
//! included; hand-built datagrams check what a peer may send over IPv6, and that
//! the errors the switch answers with go back through the tunnel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::wire::IpAddress;
use std::sync::Arc;
use weft_encap::icmpv6;
use weft_encap::ipv6::{self, next_header};
use weft_encap::{ethernet, sleeve, vxlan};
use weft_switch::core::flowlog::{Direction, Verdict};
use weft_switch::mac::MacAddr;
use weft_switch::netpol::compile::{compile, LocalPod, Origin, PodRules, RuleSet};
use weft_switch::netpol::manifest;
use weft_switch::netpol::model::PolicyModel;
use weft_switch::sim::tcp::Transfer;
use weft_switch::sim::*;
use weft_switch::tables::counters::DropReason;
use weft_switch::tables::{NodeConfig, Tables, TablesError, TunnelMode};

/// Pod A, on node 0.
const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
/// Pod A2, also on node 0.
const A2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
/// Pod B, on node 1.
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
/// Pod C, on node 2.
const C: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 5);

/// Steps after which a TCP transfer counts as stalled (5 simulated seconds).
const TRANSFER_STEP_LIMIT: u64 = 5_000;

weft_switch::both_modes!(
    tcp6_across_nodes_both_directions,
    tcp6_between_pods_of_one_node_stays_off_the_wire,
    ping6_across_nodes_decrements_the_hop_limit_once,
    peers_may_send_ipv6_only_from_their_own_subnet,
    ipv6_from_a_peer_is_for_this_node_only,
    unroutable_ipv6_from_a_peer_is_answered_through_the_tunnel,
    neighbour_discovery_from_a_peer_is_not_answered,
    ipv6_policy_judges_ipv6_addresses_and_lets_replies_back,
    tcp6_leaves_a_pod_isolated_for_ingress_and_its_replies_return,
    icmpv6_errors_about_a_tracked_connection_pass,
    hop_limit_exceeded_from_a_peer_is_answered_through_the_tunnel,
    the_host_reaches_peers_only_from_its_gateway_address,
    an_ipv4_only_node_takes_no_ipv6_from_a_peer,
);

fn three_nodes(mode: TunnelMode) -> Sim {
    Sim::new(mode, &[&[A, A2], &[B], &[C]])
}

/// Sends `len` pseudo-random bytes over TCP/IPv6 from pod `from` to pod `to`, and
/// checks that they all arrived intact, from the sender's own IPv6 address, and
/// that both ends closed cleanly.
fn transfer6(sim: &mut Sim, from: usize, to: usize, port: u16, len: usize, seed: u64) {
    let x = Transfer::start6(sim, from, to, port, pseudo_random(seed, len));
    let (client, server) = (ip6_of(sim.pods[from].ip), ip6_of(sim.pods[to].ip));
    let what = format!("{:?} TCP [{client}] -> [{server}]", sim.mode);
    x.finish(sim, TRANSFER_STEP_LIMIT, IpAddress::Ipv6(client), &what);
}

fn tcp6_across_nodes_both_directions(mode: TunnelMode) {
    let mut sim = three_nodes(mode);
    let (a, b) = (sim.pod(A), sim.pod(B));
    transfer6(&mut sim, a, b, 5001, 2 << 20, 1);
    let crossed = sim.out.stats.datagrams;
    assert!(
        crossed > (2 << 20) / 1472,
        "{mode:?}: 2 MiB cannot cross in {crossed} datagrams"
    );
    // What crossed the tunnel reached the pod merged (GRO over IPv6).
    assert!(
        sim.out.stats.super_frames > 0,
        "{mode:?}: nothing was coalesced"
    );
    transfer6(&mut sim, b, a, 5002, 2 << 20, 2);
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
    let longest = sim.out.stats.longest_datagram;
    assert!(
        longest <= MAX_DATAGRAM,
        "{mode:?}: a {longest}-byte datagram exceeds the underlay's {MAX_DATAGRAM}"
    );
}

fn tcp6_between_pods_of_one_node_stays_off_the_wire(mode: TunnelMode) {
    let mut sim = three_nodes(mode);
    let (a, a2) = (sim.pod(A), sim.pod(A2));
    transfer6(&mut sim, a, a2, 6001, 256 << 10, 3);
    // Heartbeats aside (none here), nothing left the node.
    assert_eq!(sim.out.stats.datagrams, 0, "{mode:?}");
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
}

/// An IPv6 packet from `src` to `dst` with hop limit `hops` carrying `payload`
/// under `next`.
fn packet6(src: Ipv6Addr, dst: Ipv6Addr, hops: u8, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; ipv6::HEADER_LEN + payload.len()];
    ipv6::Repr {
        src,
        dst,
        next_header: next,
        payload_len: payload.len() as u16,
        hop_limit: hops,
        traffic_class: 0,
    }
    .emit(&mut p);
    p[ipv6::HEADER_LEN..].copy_from_slice(payload);
    p
}

/// An ICMPv6 message `msg` followed by `tail`, from `src` to `dst`, checksummed.
fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, hops: u8, msg: &icmpv6::Repr, tail: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8; msg.buffer_len() + tail.len()];
    msg.emit(&mut body);
    body[msg.buffer_len()..].copy_from_slice(tail);
    icmpv6::Packet::new_unchecked(&mut body[..]).fill_checksum(&src, &dst);
    packet6(src, dst, hops, next_header::ICMPV6, &body)
}

fn echo6(src: Ipv6Addr, dst: Ipv6Addr, hops: u8, seq: u16) -> Vec<u8> {
    let echo = icmpv6::Repr::EchoRequest { ident: 7, seq };
    icmp6(src, dst, hops, &echo, b"weft ping6 payload")
}

/// The tunnel datagram node `from` sends to node `to` carrying the IPv6 packet
/// `packet`.
fn datagram6(mode: TunnelMode, from: usize, to: usize, packet: &[u8]) -> Vec<u8> {
    match mode {
        TunnelMode::Vxlan => {
            let mut d = vec![0; vxlan::HEADER_LEN];
            vxlan::emit_header(&mut d, vxlan::Vni::new(1).unwrap());
            d.extend(eth(
                router_mac(to),
                router_mac(from),
                ETHERTYPE_IPV6,
                packet,
            ));
            d
        }
        TunnelMode::Sleeve => {
            let mut d = vec![0; 65_536];
            let sender = sleeve::NodeId(router_mac(from).0);
            let mut w = sleeve::FramesWriter::new(&mut d, sender, 0).unwrap();
            assert!(w.try_push(ETHERTYPE_IPV6, packet));
            let n = w.finish();
            d.truncate(n);
            d
        }
    }
}

fn from_node(n: usize) -> SocketAddr {
    SocketAddr::V4(underlay(n))
}

/// The IPv6 packets in what node `from` sent node `to` over the wire.
fn wire6(sim: &mut Sim, mode: TunnelMode, from: usize, to: usize) -> Vec<Vec<u8>> {
    let sent: Vec<_> = sim.out.wire.drain(..).collect();
    let mut packets = Vec::new();
    for d in sent
        .iter()
        .filter(|d| d.from.ip() == from_node(from).ip() && d.to.ip() == from_node(to).ip())
    {
        match mode {
            TunnelMode::Vxlan => {
                let (_, inner) = vxlan::parse(&d.bytes).expect("a VXLAN datagram");
                let frame = ethernet::Frame::new_checked(inner).expect("a frame");
                assert_eq!(frame.src(), router_mac(from).0);
                assert_eq!(frame.dst(), router_mac(to).0);
                if frame.ethertype() == ETHERTYPE_IPV6 {
                    packets.push(frame.payload().to_vec());
                }
            }
            TunnelMode::Sleeve => {
                let mut cursor = sleeve::RecordCursor::new();
                while let Some(r) = cursor.next(&d.bytes) {
                    if r.ethertype == ETHERTYPE_IPV6 {
                        packets.push(d.bytes[r.payload].to_vec());
                    }
                }
            }
        }
    }
    packets
}

fn ping6_across_nodes_decrements_the_hop_limit_once(mode: TunnelMode) {
    let mut sim = three_nodes(mode);
    let (a, b) = (sim.pod(A), sim.pod(B));
    let (mac_a, mac_b) = (sim.pods[a].mac, sim.pods[b].mac);
    let ping = echo6(ip6_of(A), ip6_of(B), 64, 1);
    sim.pod_frame(a, &eth(router_mac(0), mac_a, ETHERTYPE_IPV6, &ping));
    sim.flush();
    let sent = wire6(&mut sim, mode, 0, 1);
    assert_eq!(sent.len(), 1, "{mode:?}: one packet through the tunnel");
    let mut expected = ping.clone();
    expected[7] = 63;
    assert_eq!(sent[0], expected, "{mode:?}: only the hop limit changes");
    sim.tunnel_in(1, from_node(0), &datagram6(mode, 0, 1, &sent[0]));
    sim.flush();
    let mut delivered = expected.clone();
    delivered[7] = 62;
    assert_eq!(
        sim.take_rx(b),
        vec![eth(mac_b, router_mac(1), ETHERTYPE_IPV6, &delivered)],
        "{mode:?}: delivered to B from the router MAC, one hop per node"
    );
    assert_eq!(sim.total_drops(), 0, "{mode:?}: {}", sim.drops_report());
}

fn peers_may_send_ipv6_only_from_their_own_subnet(mode: TunnelMode) {
    let mut sim = three_nodes(mode);
    let a = sim.pod(A);
    let forged = [
        // Node 2's pod, from node 1.
        ip6_of(C),
        // This node's own pod and gateway.
        ip6_of(A2),
        gateway6(0),
        // Outside the cluster, link-local, unspecified.
        "2001:db8::1".parse().unwrap(),
        "fe80::1".parse().unwrap(),
        Ipv6Addr::UNSPECIFIED,
    ];
    for src in forged {
        let d = datagram6(mode, 1, 0, &echo6(src, ip6_of(A), 64, 1));
        sim.tunnel_in(0, from_node(1), &d);
    }
    sim.flush();
    assert!(
        sim.take_rx(a).is_empty(),
        "{mode:?}: a forged source got in"
    );
    let c = sim.peer_counters(0, 1);
    assert_eq!(
        c.dropped(DropReason::Spoofed),
        forged.len() as u64,
        "{mode:?}: {}",
        sim.drops_report()
    );
    assert!(
        sim.out.wire.is_empty(),
        "{mode:?}: no error answers a forgery"
    );
    // The peer's own pod and gateway get in.
    for src in [ip6_of(B), gateway6(1)] {
        let d = datagram6(mode, 1, 0, &echo6(src, ip6_of(A), 64, 2));
        sim.tunnel_in(0, from_node(1), &d);
    }
    sim.flush();
    assert_eq!(sim.take_rx(a).len(), 2, "{mode:?}: {}", sim.drops_report());
}

fn ipv6_from_a_peer_is_for_this_node_only(mode: TunnelMode) {
    let mut sim = three_nodes(mode);
    let c = sim.pod(C);
    // Through node 0 to node 2's pod, and to outside the cluster: no relaying.
    for dst in [ip6_of(C), "2001:db8::9".parse().unwrap()] {
        let d = datagram6(mode, 1, 0, &echo6(ip6_of(B), dst, 64, 1));
        sim.tunnel_in(0, from_node(1), &d);
    }
    sim.flush();
    assert!(sim.out.wire.is_empty(), "{mode:?}: node 0 relayed");
    assert!(sim.take_rx(c).is_empty());
    let counters = sim.peer_counters(0, 1);
    assert_eq!(
        counters.dropped(DropReason::NoRelay),
        2,
        "{mode:?}: {}",
        sim.drops_report()
    );
}

fn unroutable_ipv6_from_a_peer_is_answered_through_the_tunnel(mode: TunnelMode) {
    let mut sim = three_nodes(mode);
    let nobody = ip6_of(Ipv4Addr::new(10, 244, 1, 99));
    let ping = echo6(ip6_of(B), nobody, 64, 5);
    sim.tunnel_in(0, from_node(1), &datagram6(mode, 1, 0, &ping));
    sim.flush();
    let back = wire6(&mut sim, mode, 0, 1);
    assert_eq!(back.len(), 1, "{mode:?}: {}", sim.drops_report());
    let ip = ipv6::Packet::new_checked(&back[0][..]).expect("IPv6");
    assert_eq!((ip.src_addr(), ip.dst_addr()), (gateway6(0), ip6_of(B)));
    assert_eq!(ip.next_header(), next_header::ICMPV6);
    let msg = icmpv6::Packet::new_checked(ip.payload()).expect("ICMPv6");
    assert!(msg.verify_checksum(&gateway6(0), &ip6_of(B)));
    assert_eq!(
        icmpv6::Repr::parse(&msg).expect("an error"),
        icmpv6::Repr::DestUnreachable { code: 3 },
        "{mode:?}: address unreachable"
    );
    assert_eq!(&ip.payload()[8..], &ping[..], "{mode:?}: the packet quoted");
    // The error that comes back to node 1 reaches its pod.
    let b = sim.pod(B);
    sim.tunnel_in(1, from_node(0), &datagram6(mode, 0, 1, &back[0]));
    sim.flush();
    assert_eq!(sim.take_rx(b).len(), 1, "{mode:?}: {}", sim.drops_report());
}

fn neighbour_discovery_from_a_peer_is_not_answered(mode: TunnelMode) {
    let mut sim = three_nodes(mode);
    let solicit = icmpv6::Repr::NeighborSolicit {
        target: ip6_of(A),
        source: Some(router_mac(1).0),
    };
    let advert = icmpv6::Repr::NeighborAdvert {
        router: true,
        solicited: false,
        override_: true,
        target: ip6_of(A),
        lladdr: Some(MacAddr([2, 0, 0, 0, 0, 0x66]).0),
    };
    let group: Ipv6Addr = "ff02::1:ff01:5".parse().unwrap();
    for (msg, dst) in [(solicit, group), (advert, ip6_of(A))] {
        let p = icmp6(ip6_of(B), dst, 255, &msg, &[]);
        sim.tunnel_in(0, from_node(1), &datagram6(mode, 1, 0, &p));
    }
    sim.flush();
    assert!(
        sim.out.wire.is_empty(),
        "{mode:?}: answered over the tunnel"
    );
    assert!(sim.take_rx(sim.pod(A)).is_empty());
    let c = sim.peer_counters(0, 1);
    assert_eq!(
        c.dropped(DropReason::NdpIgnored),
        2,
        "{mode:?}: {}",
        sim.drops_report()
    );
}

/// Pod `p`'s rules as NetworkPolicy `spec` (in namespace `default`, selecting pods
/// labelled `app: a`) compiles them, with pods a, a2, b and c of that namespace
/// (labelled by name) at their addresses of both families, a and a2 attached here.
fn compiled_rules(spec: &str, p: Ipv4Addr) -> PodRules {
    let pod = |name: &str, ip: Ipv4Addr| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {name}}}}}\n\
             status: {{podIPs: [{{ip: '{ip}'}}, {{ip: '{}'}}]}}\n",
            ip6_of(ip)
        )
    };
    let text = [pod("a", A), pod("a2", A2), pod("b", B), pod("c", C)].concat()
        + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
           metadata: {name: p, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: a}}\n"
        + spec;
    let mut model = PolicyModel::default();
    manifest::read("p.yaml", &text, &mut model).unwrap_or_else(|e| panic!("{e:?}"));
    let local = [("a", A), ("a2", A2)].map(|(name, ip)| LocalPod {
        ip,
        ip6: Some(ip6_of(ip)),
        namespace: "default".into(),
        name: name.into(),
    });
    let compiled = compile(&model, &local);
    (*compiled.by_ip[&p]).clone()
}

/// Sends an echo request with identifier `ident` from pod address `src` to `dst`:
/// from a pod of node 0 through its port, or from another node's pod through the
/// tunnel. Returns whether pod `to` received it.
fn ping6_once(sim: &mut Sim, src: Ipv4Addr, dst: Ipv4Addr, ident: u16, kind: u8) -> bool {
    let msg = match kind {
        icmpv6::kind::ECHO_REPLY => icmpv6::Repr::EchoReply { ident, seq: 1 },
        _ => icmpv6::Repr::EchoRequest { ident, seq: 1 },
    };
    let packet = icmp6(ip6_of(src), ip6_of(dst), 64, &msg, b"policy");
    send6(sim, src, dst, &packet)
}

/// Sends IPv6 `packet` from pod address `src` (on node 0, or another node) to pod
/// `dst`, and returns whether `dst`'s pod received it (whatever the wire carried
/// is dropped, and the pod's queue emptied).
fn send6(sim: &mut Sim, src: Ipv4Addr, dst: Ipv4Addr, packet: &[u8]) -> bool {
    let mode = sim.mode;
    let node = |ip: Ipv4Addr| usize::from(ip.octets()[2]) - 1;
    let to = sim.pod(dst);
    sim.take_rx(to);
    if node(src) == 0 {
        let from = sim.pod(src);
        let mac = sim.pods[from].mac;
        sim.pod_frame(from, &eth(router_mac(0), mac, ETHERTYPE_IPV6, packet));
    } else {
        let d = datagram6(mode, node(src), node(dst), packet);
        sim.tunnel_in(node(dst), from_node(node(src)), &d);
    }
    sim.flush();
    let got = if node(dst) == 0 {
        !sim.take_rx(to).is_empty()
    } else {
        !wire6(sim, mode, 0, node(dst)).is_empty()
    };
    sim.out.wire.clear();
    got
}

/// NetworkPolicy judges IPv6 by IPv6 addresses: an IPv6 `ipBlock` admits its
/// addresses only, a pod selector reaches pods at their IPv6 address, and the
/// IPv6 connection table lets replies back where ingress is refused.
fn ipv6_policy_judges_ipv6_addresses_and_lets_replies_back(mode: TunnelMode) {
    let mut sim = three_nodes(mode);
    let spec = format!(
        "  ingress:\n  - from: [{{ipBlock: {{cidr: '{}/128'}}}}]\n  \
         egress:\n  - to: [{{podSelector: {{matchExpressions: [{{key: app, operator: In, values: [b, a2]}}]}}}}]\n",
        ip6_of(B)
    );
    let (a, echo, reply) = (
        sim.pod(A),
        icmpv6::kind::ECHO_REQUEST,
        icmpv6::kind::ECHO_REPLY,
    );
    sim.set_rules(a, Some(compiled_rules(&spec, A)));
    let dropped = |sim: &Sim, r| sim.port_counters(a).dropped(r);
    // In: from the block's one address only.
    assert!(
        ping6_once(&mut sim, B, A, 1, echo),
        "{mode:?}: B is in the block"
    );
    assert!(!ping6_once(&mut sim, A2, A, 2, echo), "{mode:?}: A2 is not");
    assert!(!ping6_once(&mut sim, C, A, 3, echo), "{mode:?}: nor C");
    assert_eq!(dropped(&sim, DropReason::PolicyIngress), 2, "{mode:?}");
    // Out: to the pods the selector names, found by their IPv6 addresses.
    assert!(
        ping6_once(&mut sim, A, B, 4, echo),
        "{mode:?}: A may reach B"
    );
    assert!(!ping6_once(&mut sim, A, C, 5, echo), "{mode:?}: but not C");
    assert_eq!(dropped(&sim, DropReason::PolicyEgress), 1, "{mode:?}");
    // A2's answer to A's ping passes, though A2 may not open a connection to A:
    // the same identifier the other way, and only as an answer.
    assert!(ping6_once(&mut sim, A, A2, 6, echo), "{mode:?}");
    assert!(
        ping6_once(&mut sim, A2, A, 6, reply),
        "{mode:?}: the answer"
    );
    assert!(
        !ping6_once(&mut sim, A2, A, 6, echo),
        "{mode:?}: a request on it"
    );
    assert!(
        !ping6_once(&mut sim, A2, A, 7, reply),
        "{mode:?}: an answer to nothing"
    );
    assert_eq!(dropped(&sim, DropReason::PolicyIngress), 4, "{mode:?}");
    // The flow log holds each verdict with its IPv6 addresses: B's ping allowed
    // by the policy's ingress rule 0, A2's refused at A's ingress, A's to C at
    // its egress.
    let records = sim.nodes[0].flows.drain();
    let verdict = |src: Ipv4Addr, dst: Ipv4Addr, ident: u16| {
        let ends = (IpAddr::from(ip6_of(src)), IpAddr::from(ip6_of(dst)));
        (records.iter())
            .find(|r| r.key.addrs() == ends && r.key.ports().0 == ident)
            .map(|r| r.verdict.clone())
    };
    let rule0 = Origin {
        policy: "default/p".into(),
        rule: 0,
    };
    let by_rule0 = |v| matches!(v, Some(Verdict::Allowed { ingress: Some(o), .. }) if o == rule0);
    assert!(by_rule0(verdict(B, A, 1)), "{mode:?}: {records:#?}");
    let denied = |v, d| matches!(v, Some(Verdict::Denied { direction, .. }) if direction == d);
    assert!(
        denied(verdict(A2, A, 2), Direction::Ingress),
        "{records:#?}"
    );
    assert!(denied(verdict(A, C, 5), Direction::Egress), "{records:#?}");
    // Once no policy selects it, A takes IPv6 from anyone again.
    sim.set_rules(a, None);
    assert!(ping6_once(&mut sim, C, A, 8, echo), "{mode:?}");
}

/// TCP over IPv6 out of a pod that no one may open a connection to: its
/// connections' replies come back through the IPv6 connection table, across the
/// tunnel and on the node, while a connection to it is refused.
fn tcp6_leaves_a_pod_isolated_for_ingress_and_its_replies_return(mode: TunnelMode) {
    let mut sim = three_nodes(mode);
    let (a, a2, b) = (sim.pod(A), sim.pod(A2), sim.pod(B));
    sim.set_rules(a, Some(deny_ingress()));
    transfer6(&mut sim, a, b, 8080, 60_000, 11);
    transfer6(&mut sim, a, a2, 8081, 20_000, 12);
    let refused = sim.port_counters(a).dropped(DropReason::PolicyIngress);
    assert_eq!(refused, 0, "{mode:?}: a reply was refused");
    // The node reaches it from its gateway address through the host port; from
    // any other address there, it does not.
    let host_mac = sim.nodes[0].tables.ports[0].mac;
    let outside: Ipv6Addr = "2001:db8::7".parse().unwrap();
    for (src, passes) in [(gateway6(0), true), (outside, false)] {
        let ping = echo6(src, ip6_of(A), 64, 5);
        sim.host_frame(0, &eth(router_mac(0), host_mac, ETHERTYPE_IPV6, &ping));
        sim.flush();
        let got = sim.take_rx(a).len();
        assert_eq!(got, usize::from(passes), "{mode:?}: from {src}");
    }
    assert_eq!(
        sim.port_counters(a).dropped(DropReason::PolicyIngress),
        1,
        "{mode:?}"
    );
    // A SYN from B to A is refused, and counted on A.
    let syn = tcp_syn6(ip6_of(B), ip6_of(A), 40_000, 22);
    assert!(
        !send6(&mut sim, B, A, &syn),
        "{mode:?}: B opened a connection to A"
    );
    assert_eq!(
        sim.port_counters(a).dropped(DropReason::PolicyIngress),
        2,
        "{mode:?}"
    );
}

/// An ICMPv6 error reaches a pod isolated for ingress when it quotes a packet of
/// a connection the pod opened, and is refused when it quotes anything else.
fn icmpv6_errors_about_a_tracked_connection_pass(mode: TunnelMode) {
    let mut sim = three_nodes(mode);
    let a = sim.pod(A);
    sim.set_rules(a, Some(deny_ingress()));
    // A UDP datagram from A to B, with hop limit `hops`, from port `sport`.
    let datagram = |hops, sport, len| {
        let d = udp(sport, 53, len);
        packet6(ip6_of(A), ip6_of(B), hops, next_header::UDP, &d)
    };
    let sent = datagram(64, 5353, 12);
    assert!(send6(&mut sim, A, B, &sent), "{mode:?}: A's datagram left");
    let unreachable = icmpv6::Repr::DestUnreachable { code: 4 };
    let error = icmp6(ip6_of(B), ip6_of(A), 64, &unreachable, &sent);
    assert!(
        send6(&mut sim, B, A, &error),
        "{mode:?}: the error about it was refused"
    );
    let other = datagram(64, 5354, 12);
    let forged = icmp6(ip6_of(B), ip6_of(A), 64, &unreachable, &other);
    assert!(
        !send6(&mut sim, B, A, &forged),
        "{mode:?}: an error about nothing passed"
    );
    // Errors quote as much of a packet as fits, not the whole of a large one:
    // a quote cut short of its header's length is read as far as it goes.
    let large = datagram(64, 5355, 1300);
    assert!(
        send6(&mut sim, A, B, &large),
        "{mode:?}: A's large datagram left"
    );
    let too_big = icmpv6::Repr::PacketTooBig { mtu: 1280 };
    let cut = icmp6(ip6_of(B), ip6_of(A), 64, &too_big, &large[..200]);
    assert!(
        send6(&mut sim, B, A, &cut),
        "{mode:?}: the error quoting part of it was refused"
    );
    // The switch's own error about a large packet (its hop limit spent) quotes
    // 1,232 bytes of it, and goes back to the isolated pod.
    let spent = datagram(1, 5356, 1300);
    sim.take_rx(a);
    send6(&mut sim, A, B, &spent);
    let back = sim.take_rx(a);
    assert_eq!(back.len(), 1, "{mode:?}: no time exceeded came back");
    assert_eq!(
        sim.port_counters(a).dropped(DropReason::PolicyIngress),
        1,
        "{mode:?}"
    );
}

/// A TCP SYN from `src`:`sport` to `dst`:`dport`, checksummed.
fn tcp_syn6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut seg = vec![0u8; 20];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dport.to_be_bytes());
    seg[4..8].copy_from_slice(&1u32.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = 0x02;
    seg[14..16].copy_from_slice(&64_000u16.to_be_bytes());
    let sum = weft_encap::checksum::combine(
        ipv6::pseudo_header(&src, &dst, next_header::TCP, 20),
        weft_encap::checksum::sum(&seg),
    );
    seg[16..18].copy_from_slice(&(!sum).to_be_bytes());
    packet6(src, dst, 64, next_header::TCP, &seg)
}

/// Rules isolating a pod for ingress, allowing nothing in.
fn deny_ingress() -> PodRules {
    PodRules {
        ingress: Some(RuleSet::default()),
        egress: None,
        selected_by: vec![("x/deny".into(), true, false)],
    }
}

fn hop_limit_exceeded_from_a_peer_is_answered_through_the_tunnel(mode: TunnelMode) {
    let mut sim = three_nodes(mode);
    let ping = echo6(ip6_of(B), ip6_of(A), 1, 9);
    sim.tunnel_in(0, from_node(1), &datagram6(mode, 1, 0, &ping));
    sim.flush();
    assert!(sim.take_rx(sim.pod(A)).is_empty());
    let back = wire6(&mut sim, mode, 0, 1);
    assert_eq!(back.len(), 1, "{mode:?}: {}", sim.drops_report());
    let ip = ipv6::Packet::new_checked(&back[0][..]).expect("IPv6");
    assert_eq!((ip.src_addr(), ip.dst_addr()), (gateway6(0), ip6_of(B)));
    let msg = icmpv6::Packet::new_checked(ip.payload()).expect("ICMPv6");
    assert_eq!(
        icmpv6::Repr::parse(&msg).expect("an error"),
        icmpv6::Repr::TimeExceeded { code: 0 },
        "{mode:?}"
    );
    assert_eq!(sim.peer_counters(0, 1).dropped(DropReason::TtlExceeded), 1);
}

/// The host's IPv6 to a peer's pod leaves only from the node's gateway address:
/// the peer would drop any other source, and nothing masquerades IPv6.
fn the_host_reaches_peers_only_from_its_gateway_address(mode: TunnelMode) {
    let mut sim = three_nodes(mode);
    let host_mac = sim.nodes[0].tables.ports[0].mac;
    let outside: Ipv6Addr = "2001:db8::7".parse().unwrap();
    for src in [gateway6(0), outside] {
        let p = echo6(src, ip6_of(B), 64, 1);
        sim.host_frame(0, &eth(router_mac(0), host_mac, ETHERTYPE_IPV6, &p));
    }
    sim.flush();
    let sent = wire6(&mut sim, mode, 0, 1);
    assert_eq!(sent.len(), 1, "{mode:?}: {}", sim.drops_report());
    assert_eq!(
        ipv6::Packet::new_checked(&sent[0][..]).unwrap().src_addr(),
        gateway6(0)
    );
    // The other is answered: administratively prohibited.
    let answer = sim.out.host_rx[0].pop().expect("an answer to the host");
    let ip = ipv6::Packet::new_checked(&answer[14..]).expect("IPv6");
    assert_eq!(ip.dst_addr(), outside);
    let msg = icmpv6::Packet::new_checked(ip.payload()).expect("ICMPv6");
    assert_eq!(
        icmpv6::Repr::parse(&msg).expect("an error"),
        icmpv6::Repr::DestUnreachable { code: 1 }
    );
}

/// The snapshot's own check of peers' IPv6 subnets (the control plane screens
/// them first): one over this node's, over another peer's, or outside the
/// cluster's IPv6 range cannot be built.
#[test]
fn a_snapshot_refuses_ipv6_subnets_it_cannot_route() {
    let sim = three_nodes(TunnelMode::Vxlan);
    let t = &sim.nodes[0].tables;
    let outside = "fd99:0:0:1::/64".parse().unwrap();
    // A range around node 2's subnet (and node 1's own), clear of node 0's.
    let around: ipnet::Ipv6Net = "fd00:10:244:2::/63".parse().unwrap();
    assert!(around.contains(&subnet6(2)) && !around.contains(&subnet6(0)));
    for bad in [subnet6(0), subnet6(2), outside, around] {
        let mut peers = t.peers.clone();
        // Peer 0 is node 1; node 2 is peer 1.
        peers[0].subnet6 = Some(bad);
        let ports = t.ports[1..].iter().cloned();
        let built = Tables::build(
            t.node.clone(),
            t.ports[0].clone(),
            ports,
            peers,
            t.tunnel.clone(),
        );
        assert!(
            matches!(built, Err(TablesError::Subnet6 { .. })),
            "{bad}: {built:?}"
        );
    }
    // A node without IPv6 takes no peer IPv6 subnet at all.
    let node = Arc::new(NodeConfig {
        v6: None,
        ..(*t.node).clone()
    });
    let ports = t.ports[1..].iter().cloned();
    let built = Tables::build(
        node,
        t.ports[0].clone(),
        ports,
        t.peers.clone(),
        t.tunnel.clone(),
    );
    assert!(
        matches!(built, Err(TablesError::Subnet6 { .. })),
        "{built:?}"
    );
}

/// A node without IPv6 drops what a peer sends it over IPv6, counted, and answers
/// nothing.
fn an_ipv4_only_node_takes_no_ipv6_from_a_peer(mode: TunnelMode) {
    let mut sim = three_nodes(mode);
    let t = &sim.nodes[0].tables;
    let node = Arc::new(NodeConfig {
        v6: None,
        ..(*t.node).clone()
    });
    let mut peers = t.peers.clone();
    for p in &mut peers {
        p.subnet6 = None;
    }
    let ports = t.ports[1..].iter().cloned();
    let v4_only = Tables::build(node, t.ports[0].clone(), ports, peers, t.tunnel.clone());
    sim.nodes[0].tables = v4_only.expect("an IPv4-only snapshot");
    let ping = echo6(ip6_of(B), ip6_of(A), 64, 1);
    sim.tunnel_in(0, from_node(1), &datagram6(mode, 1, 0, &ping));
    sim.flush();
    assert!(sim.take_rx(sim.pod(A)).is_empty());
    assert!(sim.out.wire.is_empty(), "{mode:?}: answered");
    let c = sim.peer_counters(0, 1);
    assert_eq!(
        c.dropped(DropReason::Unsupported),
        1,
        "{mode:?}: {}",
        sim.drops_report()
    );
}
