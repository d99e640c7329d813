//! NetworkPolicy in the core, in simulated time: replies through the connection
//! table, expiry on the simulated clock, a full table, a policy change cutting a
//! connection, and real TCP between smoltcp pods through isolated ports.

use std::net::Ipv4Addr;
use std::time::Duration;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint};
use weft_switch::core::flowlog::{Direction, Verdict};
use weft_switch::netpol::compile::{CompiledRule, Origin, PodRules, RuleSet};
use weft_switch::sim::{from_pod, udp, Ip, Sim, CONNTRACK_MAX};
use weft_switch::tables::counters::DropReason;
use weft_switch::tables::TunnelMode;

const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);

/// Isolated for ingress, with no rule: nothing may open a connection to the pod.
fn deny_ingress() -> PodRules {
    PodRules {
        ingress: Some(RuleSet::default()),
        egress: None,
        selected_by: vec![("x/deny".into(), true, false)],
    }
}

/// Isolated both ways; ingress allows everyone, egress nothing.
fn deny_egress() -> PodRules {
    PodRules {
        ingress: Some(RuleSet {
            rules: vec![CompiledRule {
                origin: Origin {
                    policy: "x/in".into(),
                    rule: 0,
                },
                peers: None,
                ports: None,
            }],
        }),
        egress: Some(RuleSet::default()),
        selected_by: vec![("x/in".into(), true, true)],
    }
}

fn pair() -> Sim {
    Sim::new(TunnelMode::Sleeve, &[&[A], &[B]])
}

/// Sends one UDP datagram from pod `from` (index) to `to` with the given ports and
/// returns whether it reached the other pod.
fn udp_once(sim: &mut Sim, from: usize, to: Ipv4Addr, sport: u16, dport: u16) -> bool {
    let src = sim.pods[from].ip;
    let packet = Ip::udp(src, to).packet(&udp(sport, dport, 20));
    let frame = from_pod(sim, from, &packet);
    let target = sim.pod(to);
    sim.take_rx(target);
    sim.pod_frame(from, &frame);
    sim.flush();
    sim.deliver_wire();
    !sim.take_rx(target).is_empty()
}

fn drops(sim: &Sim, p: usize, reason: DropReason) -> u64 {
    sim.port_counters(p).dropped(reason)
}

#[test]
fn a_reply_passes_where_ingress_is_denied_and_a_new_connection_does_not() {
    let mut sim = pair();
    let (a, b) = (sim.pod(A), sim.pod(B));
    sim.set_rules(a, Some(deny_ingress()));
    // A opens: its egress is not isolated, so it passes and is tracked.
    assert!(udp_once(&mut sim, a, B, 40_000, 53));
    // B's reply reaches A through the connection table.
    assert!(udp_once(&mut sim, b, A, 53, 40_000));
    // B opening a connection of its own to A does not.
    assert!(!udp_once(&mut sim, b, A, 53, 40_001));
    assert_eq!(drops(&sim, a, DropReason::PolicyIngress), 1);
    // Egress isolation holds replies the same way, on the other side.
    let mut sim = pair();
    sim.set_rules(b, Some(deny_egress()));
    assert!(udp_once(&mut sim, a, B, 40_000, 53), "ingress allows all");
    assert!(udp_once(&mut sim, b, A, 53, 40_000), "the reply leaves B");
    assert!(!udp_once(&mut sim, b, A, 53, 40_009), "B opens nothing");
    assert_eq!(drops(&sim, b, DropReason::PolicyEgress), 1);
}

#[test]
fn an_entry_expires_on_the_simulated_clock() {
    let mut sim = pair();
    let (a, b) = (sim.pod(A), sim.pod(B));
    sim.set_rules(a, Some(deny_ingress()));
    assert!(udp_once(&mut sim, a, B, 40_000, 53));
    // Unreplied UDP lives 30 s; a reply at 29 s passes and makes it 180 s.
    sim.set_time(sim.time() + Duration::from_secs(29));
    assert!(udp_once(&mut sim, b, A, 53, 40_000));
    sim.set_time(sim.time() + Duration::from_secs(179));
    assert!(udp_once(&mut sim, b, A, 53, 40_000));
    // Silent for 181 s: gone, and B's next datagram is a new connection, refused.
    sim.set_time(sim.time() + Duration::from_secs(181));
    assert!(!udp_once(&mut sim, b, A, 53, 40_000));
    assert_eq!(drops(&sim, a, DropReason::PolicyIngress), 1);
}

/// Whether a UDP reply from `server` to `client` on the ports of `client`'s
/// datagram `sport` → 53 gets through: whether the connection is still tracked.
fn answered(sim: &mut Sim, server: usize, client: Ipv4Addr, sport: u16) -> bool {
    udp_once(sim, server, client, 53, sport)
}

/// A flood of new connections from one pod to a server whose egress isolation lets
/// only replies out: the flood churns its own share of the table (half of it), so
/// another pod still connects, and its connections stay tracked; a pod whose every
/// connection is established is refused beyond its share, and counted; and a full
/// table makes room for a newcomer from the pod holding the most.
#[test]
fn a_flood_from_one_pod_churns_its_own_share_of_the_table() {
    const C: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
    const S: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
    const D: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 8);
    let max = 8;
    let mut sim = Sim::with_conntrack_max(TunnelMode::Vxlan, &[&[A, C, S, D], &[B]], max);
    let (a, c, s, d) = (sim.pod(A), sim.pod(C), sim.pod(S), sim.pod(D));
    sim.set_rules(s, Some(deny_egress()));
    for port in 0..20 {
        assert!(udp_once(&mut sim, a, S, 41_000 + port, 53), "flow {port}");
    }
    // The flood's oldest connections gave up their places to its newest.
    assert!(!answered(&mut sim, s, A, 41_000));
    assert!(answered(&mut sim, s, A, 41_019));
    // C opens as many as its share, and every one is answered.
    for port in 0..4 {
        assert!(
            udp_once(&mut sim, c, S, 42_000 + port, 53),
            "C's flow {port}"
        );
    }
    for port in 0..4 {
        assert!(answered(&mut sim, s, C, 42_000 + port), "C's flow {port}");
    }
    assert_eq!(drops(&sim, c, DropReason::ConntrackShare), 0);
    // C's connections go on (established); now at its share, C is refused a fifth.
    for port in 0..4 {
        assert!(udp_once(&mut sim, c, S, 42_000 + port, 53));
    }
    assert!(!udp_once(&mut sim, c, S, 42_004, 53));
    assert_eq!(drops(&sim, c, DropReason::ConntrackShare), 1);
    // The table is full (A's four and C's four): D, holding none, takes the place of
    // one of A's, whose connections are not established; A, holding more than D,
    // takes nobody's place but its own.
    assert!(udp_once(&mut sim, d, S, 43_000, 53));
    assert!(answered(&mut sim, s, D, 43_000));
    assert!(udp_once(&mut sim, a, S, 41_100, 53));
    assert!(answered(&mut sim, s, D, 43_000));
    for port in 0..4 {
        assert!(answered(&mut sim, s, C, 42_000 + port), "C's flow {port}");
    }
    assert_eq!(drops(&sim, a, DropReason::ConntrackShare), 0);
    assert_eq!(drops(&sim, s, DropReason::ConntrackFull), 0);
    assert!(CONNTRACK_MAX > max);
}

#[test]
fn a_policy_change_cuts_a_connection_it_no_longer_allows() {
    let mut sim = pair();
    let (a, b) = (sim.pod(A), sim.pod(B));
    // B takes anything, A can reach B.
    sim.set_rules(b, Some(deny_egress()));
    assert!(udp_once(&mut sim, a, B, 40_000, 53));
    assert!(udp_once(&mut sim, b, A, 53, 40_000));
    // B now denies all ingress: the next packet of the running connection is dropped,
    // either way.
    sim.set_rules(
        b,
        Some(PodRules {
            egress: Some(RuleSet::default()),
            ..deny_ingress()
        }),
    );
    assert!(!udp_once(&mut sim, a, B, 40_000, 53));
    assert!(!udp_once(&mut sim, b, A, 53, 40_000));
    // The first packet was judged again and cut; the connection is forgotten, so the
    // reply is a new connection from B, which its egress refuses.
    assert_eq!(drops(&sim, b, DropReason::PolicyIngress), 1);
    assert_eq!(drops(&sim, b, DropReason::PolicyEgress), 1);
    // The flow log of B's node holds each verdict, in order: the connection
    // allowed by x/in's rule 0 (its packets after that are not judged again),
    // then, under the new rules, the same connection denied at B's ingress (B
    // isolated by x/deny) and B's new one denied at its egress.
    let node = sim.pods[b].node;
    let verdicts: Vec<(u16, u16, Verdict)> = (sim.nodes[node].flows.drain().into_iter())
        .map(|r| (r.key.ports().0, r.key.ports().1, r.verdict))
        .collect();
    let [(40_000, 53, allowed), (40_000, 53, cut), (53, 40_000, refused)] = &verdicts[..] else {
        panic!("{verdicts:#?}");
    };
    let rule = Origin {
        policy: "x/in".into(),
        rule: 0,
    };
    assert_eq!(
        allowed,
        &Verdict::Allowed {
            egress: None,
            ingress: Some(rule),
            from_node: false,
        }
    );
    // Both refusals are B's, and name its port under the policy in force.
    let b_port = sim.pods[b].port as u32;
    let generation = sim.nodes[node].tables.policy_generation;
    assert_eq!(
        cut,
        &Verdict::Denied {
            direction: Direction::Ingress,
            isolated: Some((b_port, generation)),
        }
    );
    assert_eq!(
        refused,
        &Verdict::Denied {
            direction: Direction::Egress,
            isolated: Some((b_port, generation)),
        }
    );
}

/// Real TCP from A to B through B's ingress isolation with a rule for A only, and
/// the handshake back through the table.
#[test]
fn tcp_connects_through_an_isolated_pod_and_replies_come_back() {
    let mut sim = pair();
    let (a, b) = (sim.pod(A), sim.pod(B));
    let only_a = PodRules {
        ingress: Some(RuleSet {
            rules: vec![CompiledRule {
                origin: Origin {
                    policy: "x/a-only".into(),
                    rule: 0,
                },
                peers: None,
                ports: None,
            }],
        }),
        egress: Some(RuleSet::default()),
        selected_by: vec![("x/a-only".into(), true, true)],
    };
    sim.set_rules(b, Some(only_a));
    let server = listen(&mut sim, b, 80);
    let client = connect(&mut sim, a, B, 80);
    let done = sim.run_until(2_000, |s| {
        s.pods[a].sockets.get::<tcp::Socket<'_>>(client).may_send()
            && s.pods[b].sockets.get::<tcp::Socket<'_>>(server).may_recv()
    });
    assert!(done.is_some(), "{}", sim.drops_report());
    // B cannot open a connection back to A: its egress allows nothing.
    let back = connect(&mut sim, b, A, 81);
    sim.run_until(200, |_| false);
    assert!(!sim.pods[b].sockets.get::<tcp::Socket<'_>>(back).may_send());
    assert!(
        drops(&sim, b, DropReason::PolicyEgress) >= 1,
        "{}",
        sim.drops_report()
    );
}

fn listen(sim: &mut Sim, p: usize, port: u16) -> SocketHandle {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 4096]),
        tcp::SocketBuffer::new(vec![0; 4096]),
    );
    s.listen(port).unwrap();
    sim.pods[p].sockets.add(s)
}

fn connect(sim: &mut Sim, p: usize, to: Ipv4Addr, port: u16) -> SocketHandle {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 4096]),
        tcp::SocketBuffer::new(vec![0; 4096]),
    );
    let pod = &mut sim.pods[p];
    let remote = IpEndpoint::new(IpAddress::Ipv4(to), port);
    s.connect(pod.iface.context(), remote, 49_152 + port)
        .unwrap();
    pod.sockets.add(s)
}

/// An ICMP error about a tracked connection reaches the isolated pod; one about no
/// connection of it does not.
#[test]
fn icmp_errors_about_a_tracked_connection_pass() {
    let mut sim = pair();
    let (a, b) = (sim.pod(A), sim.pod(B));
    sim.set_rules(a, Some(deny_ingress()));
    assert!(udp_once(&mut sim, a, B, 40_000, 53));
    // B answers with "port unreachable", quoting A's datagram.
    let error = |sim: &Sim, sport: u16| {
        let quoted = Ip::udp(A, B).packet(&udp(sport, 53, 20));
        let mut icmp = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted[..28]);
        let sum = !weft_switch::sim::ones_sum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut ip = Ip::udp(B, A);
        ip.proto = 1;
        from_pod(sim, b, &ip.packet(&icmp))
    };
    let frame = error(&sim, 40_000);
    sim.take_rx(a);
    sim.pod_frame(b, &frame);
    sim.flush();
    sim.deliver_wire();
    assert_eq!(sim.take_rx(a).len(), 1, "{}", sim.drops_report());
    // About a connection A never made: dropped.
    let frame = error(&sim, 40_777);
    sim.pod_frame(b, &frame);
    sim.flush();
    sim.deliver_wire();
    assert!(sim.take_rx(a).is_empty());
    assert_eq!(drops(&sim, a, DropReason::PolicyIngress), 1);
    // An error quoting the tracked connection, but sent to A when A did not send the
    // quoted packet (it quotes B → A): dropped, whatever it quotes.
    let forged = {
        let quoted = Ip::udp(B, A).packet(&udp(53, 40_000, 20));
        let mut icmp = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted[..28]);
        let sum = !weft_switch::sim::ones_sum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut ip = Ip::udp(B, A);
        ip.proto = 1;
        from_pod(&sim, b, &ip.packet(&icmp))
    };
    sim.pod_frame(b, &forged);
    sim.flush();
    sim.deliver_wire();
    assert!(sim.take_rx(a).is_empty());
    assert_eq!(drops(&sim, a, DropReason::PolicyIngress), 2);
}

/// The node reaches its isolated pods from its own addresses, and the switch's own
/// ICMP errors reach them; other traffic through the host port is judged by its
/// source like any other.
#[test]
fn the_node_is_its_own_addresses_and_the_switchs_errors_pass() {
    let mut sim = pair();
    let a = sim.pod(A);
    sim.set_rules(a, Some(deny_ingress()));
    let host_to_a = |src: Ipv4Addr| {
        let packet = Ip::udp(src, A).packet(&udp(7, 53, 20));
        weft_switch::sim::eth(
            weft_switch::sim::router_mac(0),
            weft_switch::mac::MacAddr::for_ip(weft_switch::sim::gateway(0)),
            weft_switch::sim::ETHERTYPE_IPV4,
            &packet,
        )
    };
    let from_gateway = host_to_a(weft_switch::sim::gateway(0));
    sim.host_frame(0, &from_gateway);
    sim.flush();
    assert_eq!(sim.take_rx(a).len(), 1, "{}", sim.drops_report());
    let from_elsewhere = host_to_a(Ipv4Addr::new(192, 168, 7, 7));
    sim.host_frame(0, &from_elsewhere);
    sim.flush();
    assert!(sim.take_rx(a).is_empty());
    assert_eq!(drops(&sim, a, DropReason::PolicyIngress), 1);
    // A datagram to an address no node owns gets the switch's "host unreachable".
    let lost = Ip::udp(A, Ipv4Addr::new(10, 244, 99, 1)).packet(&udp(9, 9, 20));
    let frame = from_pod(&sim, a, &lost);
    sim.pod_frame(a, &frame);
    sim.flush();
    let back = sim.take_rx(a);
    assert_eq!(back.len(), 1, "{}", sim.drops_report());
    assert_eq!(back[0][14 + 20], 3, "an ICMP destination unreachable");
}

/// A connection from outside the cluster, through the host port, to a pod that
/// policy then isolates for ingress: the pod's reply to it goes out of the host
/// port, but not to the node, so it is judged as the client's connection, and cut.
#[test]
fn a_reply_to_an_outside_client_is_not_the_nodes_after_a_change() {
    let mut sim = pair();
    let a = sim.pod(A);
    let open = PodRules {
        ingress: Some(RuleSet {
            rules: vec![CompiledRule {
                origin: Origin {
                    policy: "x/open".into(),
                    rule: 0,
                },
                peers: None,
                ports: None,
            }],
        }),
        egress: None,
        selected_by: vec![("x/open".into(), true, false)],
    };
    sim.set_rules(a, Some(open));
    let client = Ipv4Addr::new(192, 168, 7, 7);
    let packet = Ip::udp(client, A).packet(&udp(7, 53, 20));
    let frame = weft_switch::sim::eth(
        weft_switch::sim::router_mac(0),
        weft_switch::mac::MacAddr::for_ip(weft_switch::sim::gateway(0)),
        weft_switch::sim::ETHERTYPE_IPV4,
        &packet,
    );
    sim.host_frame(0, &frame);
    sim.flush();
    assert_eq!(sim.take_rx(a).len(), 1, "{}", sim.drops_report());
    let reply = Ip::udp(A, client).packet(&udp(53, 7, 20));
    let reply = from_pod(&sim, a, &reply);
    sim.pod_frame(a, &reply);
    sim.flush();
    assert_eq!(
        sim.out.host_rx[0].len(),
        1,
        "the reply under the open policy"
    );
    sim.out.host_rx[0].clear();
    sim.set_rules(a, Some(deny_ingress()));
    sim.pod_frame(a, &reply);
    sim.flush();
    assert!(
        sim.out.host_rx[0].is_empty(),
        "the reply to an outside client passed as the node's"
    );
    assert_eq!(drops(&sim, a, DropReason::PolicyIngress), 1);
}

/// An ICMP message of type `kind` (an echo request 8, its reply 0) with echo
/// identifier `ident`, and a correct checksum.
fn echo(kind: u8, ident: u16) -> Vec<u8> {
    let mut icmp = vec![kind, 0, 0, 0];
    icmp.extend_from_slice(&ident.to_be_bytes());
    icmp.extend_from_slice(&[0, 1, b'w', b'e', b'f', b't']);
    let sum = !weft_switch::sim::ones_sum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    icmp
}

/// Sends the ICMP message `icmp` from pod `from` to `to`; whether it arrived.
fn icmp_once(sim: &mut Sim, from: usize, to: Ipv4Addr, icmp: &[u8]) -> bool {
    let ip = Ip {
        proto: 1,
        ..Ip::udp(sim.pods[from].ip, to)
    };
    let frame = from_pod(sim, from, &ip.packet(icmp));
    let target = sim.pod(to);
    sim.take_rx(target);
    sim.pod_frame(from, &frame);
    sim.flush();
    sim.deliver_wire();
    !sim.take_rx(target).is_empty()
}

/// An attack: A, isolated for ingress, pings B. B's echo reply comes back (the
/// positive control), but the identifier opens nothing else: neither an echo
/// request from B with it, nor a reply from a third pod C that A never pinged.
#[test]
fn a_peer_cannot_ride_an_isolated_pods_echo_identifier() {
    const C: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 6);
    let mut sim = Sim::new(TunnelMode::Sleeve, &[&[A], &[B, C]]);
    let (a, b, c) = (sim.pod(A), sim.pod(B), sim.pod(C));
    sim.set_rules(a, Some(deny_ingress()));
    assert!(icmp_once(&mut sim, a, B, &echo(8, 7)), "A pings B");
    assert!(
        icmp_once(&mut sim, b, A, &echo(0, 7)),
        "B's reply reaches A"
    );
    assert!(
        !icmp_once(&mut sim, b, A, &echo(8, 7)),
        "an echo request from B on A's identifier"
    );
    assert!(
        !icmp_once(&mut sim, c, A, &echo(0, 7)),
        "a reply from C, which A never pinged"
    );
    assert!(
        !icmp_once(&mut sim, b, A, &echo(13, 7)),
        "another ICMP query from B"
    );
    assert_eq!(drops(&sim, a, DropReason::PolicyIngress), 3);
    // The reply still passes after the attempts, and A's next ping as well.
    assert!(icmp_once(&mut sim, b, A, &echo(0, 7)));
    assert!(icmp_once(&mut sim, a, B, &echo(8, 8)));
    assert!(icmp_once(&mut sim, b, A, &echo(0, 8)));
}

/// A reply judged again after a policy change is refused as its connection's
/// first packet would be: by B's ingress, and counted on B's port, though B is the
/// reply's source; the flow log names B's port too.
#[test]
fn a_reply_refused_after_a_change_is_blamed_on_the_pod_that_refused_it() {
    let mut sim = pair();
    let (a, b) = (sim.pod(A), sim.pod(B));
    sim.set_rules(b, Some(deny_egress()));
    assert!(udp_once(&mut sim, a, B, 40_000, 53));
    let node = sim.pods[b].node;
    sim.nodes[node].flows.drain();
    sim.set_rules(b, Some(deny_ingress()));
    // B answers first: the connection, A to B, is judged again, and B's ingress
    // no longer admits it.
    assert!(!udp_once(&mut sim, b, A, 53, 40_000));
    assert_eq!(drops(&sim, b, DropReason::PolicyIngress), 1);
    let generation = sim.nodes[node].tables.policy_generation;
    let verdicts: Vec<Verdict> = (sim.nodes[node].flows.drain().into_iter())
        .map(|r| r.verdict)
        .collect();
    assert_eq!(
        verdicts,
        [Verdict::Denied {
            direction: Direction::Ingress,
            isolated: Some((sim.pods[b].port as u32, generation)),
        }]
    );
}
