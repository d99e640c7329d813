//! The encrypted sleeve in memory: the daemon's seal stage (`crypto::stage`) between
//! each simulated node's core and the wire, with the nodes' endpoints doing real
//! Noise handshakes, in simulated time. Forwarding, handshakes, rekeys, loss,
//! reordering and simultaneous handshakes are tested together, as quinn tests its
//! connections; and the stage's decisions one by one.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use weft_encap::sleeve::{self, handshake, seal, NodeId};
use weft_switch::control::config::Encryption;
use weft_switch::crypto::{self, State};
use weft_switch::sim::tcp::Transfer;
use weft_switch::sim::*;
use weft_switch::tables::counters::DropReason;

/// Pod A, on node 0.
const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
/// Pod B, on node 1.
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
/// Pod C, on node 2.
const C: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 5);

/// Steps (simulated milliseconds) a transfer may take at most.
const STEP_LIMIT: u64 = 60_000;

fn node_id(n: usize) -> NodeId {
    NodeId(router_mac(n).0)
}

fn status(sim: &Sim, n: usize, m: usize) -> crypto::PeerStatus {
    let now = sim.time();
    sim.sealer(n)
        .endpoint()
        .status(now, node_id(m))
        .expect("a peer with a key")
}

/// Every datagram node `n` put on the wire (with `capture` on) is sealed or a
/// handshake message: nothing of a pod's crosses in the clear.
fn assert_nothing_in_the_clear(sim: &Sim) {
    for e in &sim.out.log {
        if let Event::ToPeer { node, datagram, .. } = e {
            assert!(
                seal::is_sealed(datagram) || handshake::is_handshake(datagram),
                "node {node} sent a plain datagram: {:?}",
                sleeve::parse(datagram)
            );
            assert!(datagram.len() <= MAX_DATAGRAM, "{} bytes", datagram.len());
        }
    }
}

/// Sends one hand-built UDP datagram from pod `from` to `to` (no flush).
fn udp_from(sim: &mut Sim, from: usize, to: Ipv4Addr, sport: u16, len: usize) {
    let ip = sim.pods[from].ip;
    let packet = Ip::udp(ip, to).packet(&udp(sport, 9000, len));
    let frame = from_pod(sim, from, &packet);
    sim.pod_frame(from, &frame);
}

#[test]
fn a_transfer_crosses_sealed_after_one_handshake() {
    let mut sim = Sim::encrypted(&[&[A], &[B]], Encryption::Required);
    sim.out.capture = true;
    let (a, b) = (sim.pod(A), sim.pod(B));
    let data = pseudo_random(1, 512 << 10);
    let mut x = Transfer::start(&mut sim, a, b, 9000, data);
    assert!(
        sim.run_until(STEP_LIMIT, |sim| x.pump(sim)).is_some(),
        "{}",
        sim.drops_report()
    );
    assert_eq!(x.first_mismatch, None);
    assert_eq!(sim.total_drops(), 0, "{}", sim.drops_report());
    assert_nothing_in_the_clear(&sim);
    let kinds = |kind| {
        (sim.out.log.iter())
            .filter(|e| matches!(e, Event::ToPeer { datagram, .. } if handshake::is_handshake(datagram) && datagram[1] == kind))
            .count()
    };
    assert_eq!(kinds(handshake::KIND_INITIATION), 1, "one initiation");
    assert_eq!(kinds(handshake::KIND_RESPONSE), 1, "one response");
    for (n, m) in [(0, 1), (1, 0)] {
        let st = status(&sim, n, m);
        assert_eq!(st.state, State::Established, "node {n}: {st:?}");
        assert_eq!(st.handshakes, 1, "node {n}: {st:?}");
    }
    // The pods' segments were cut to the MTU the seal leaves them.
    assert!(sim.out.stats.longest_datagram <= MAX_DATAGRAM);
}

/// A datagram each way every 100 ms for 400 simulated seconds: the sessions rekey
/// three times over (every 120 s), and not one datagram is lost or refused.
#[test]
fn rekeys_lose_nothing_in_either_direction() {
    let mut sim = Sim::encrypted(&[&[A], &[B]], Encryption::Required);
    let (a, b) = (sim.pod(A), sim.pod(B));
    let rounds = 4_000;
    let (mut at_a, mut at_b) = (0, 0);
    for i in 0..rounds {
        udp_from(&mut sim, a, B, 1000 + (i % 7) as u16, 200);
        udp_from(&mut sim, b, A, 2000 + (i % 5) as u16, 300);
        sim.flush();
        sim.run_for(Duration::from_millis(100));
        at_b += sim.take_rx(b).len();
        at_a += sim.take_rx(a).len();
    }
    assert_eq!((at_a, at_b), (rounds, rounds), "{}", sim.drops_report());
    assert_eq!(sim.total_drops(), 0, "{}", sim.drops_report());
    let (ab, ba) = (status(&sim, 0, 1), status(&sim, 1, 0));
    // The first handshake and three rekeys, each counted on both sides.
    assert!(ab.handshakes >= 4 && ba.handshakes >= 4, "{ab:?} {ba:?}");
    assert_eq!(ab.handshake_failures + ba.handshake_failures, 0);
    assert!(ab.key_age.unwrap() < crypto::REJECT_AFTER_TIME);
}

/// Both nodes send first, at the same instant: two handshakes cross on the wire,
/// each side ends up sending on a session, and everything queued arrives.
#[test]
fn simultaneous_handshakes_deliver_what_waited() {
    let mut sim = Sim::encrypted(&[&[A], &[B]], Encryption::Required);
    sim.set_link(
        0,
        1,
        Link {
            latency: Duration::from_millis(10),
            ..Link::default()
        },
    );
    let (a, b) = (sim.pod(A), sim.pod(B));
    for i in 0..10 {
        udp_from(&mut sim, a, B, 1000 + i, 100);
        udp_from(&mut sim, b, A, 2000 + i, 100);
    }
    sim.flush();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.take_rx(b).len(), 10, "{}", sim.drops_report());
    assert_eq!(sim.take_rx(a).len(), 10, "{}", sim.drops_report());
    for (n, m) in [(0, 1), (1, 0)] {
        assert_eq!(status(&sim, n, m).state, State::Established);
    }
    // And the sessions carry traffic on from there, both ways.
    for i in 0..5 {
        udp_from(&mut sim, a, B, 3000 + i, 100);
        udp_from(&mut sim, b, A, 4000 + i, 100);
    }
    sim.flush();
    sim.run_for(Duration::from_secs(1));
    assert_eq!((sim.take_rx(a).len(), sim.take_rx(b).len()), (5, 5));
    assert_eq!(sim.total_drops(), 0, "{}", sim.drops_report());
}

/// Nothing refused by a node's seal stage, on any node, for these reasons.
fn assert_nothing_refused(sim: &Sim) {
    for reason in [
        DropReason::SealRefused,
        DropReason::HandshakeRefused,
        DropReason::Plaintext,
        DropReason::NoSession,
    ] {
        let refused: u64 = (0..sim.nodes.len())
            .flat_map(|n| sim.all_counters(n))
            .map(|(_, s)| s.dropped(reason))
            .sum();
        assert_eq!(refused, 0, "{reason:?}: {}", sim.drops_report());
    }
}

/// Up to 30 ms of jitter on a 5 ms link: 500 sealed datagrams sent 0.1 ms apart
/// overtake each other on the wire. The replay window takes every one of them, in
/// the order they come, and refuses none.
///
/// (TCP is not used here: a smoltcp client whose FIN arrived ahead of its last
/// segment never sends the FIN again, with or without encryption, so a transfer
/// over a reordering link can stall in FIN-WAIT-1.)
#[test]
fn reordered_sealed_datagrams_are_all_taken() {
    let mut sim = Sim::encrypted(&[&[A], &[B]], Encryption::Required);
    sim.set_link(
        0,
        1,
        Link {
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(30),
            ..Link::default()
        },
    );
    let (a, b) = (sim.pod(A), sim.pod(B));
    udp_from(&mut sim, a, B, 999, 100);
    sim.flush();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.take_rx(b).len(), 1, "{}", sim.drops_report());
    for i in 0..500 {
        udp_from(&mut sim, a, B, 1000 + i, 100);
        sim.flush();
        sim.run_for(Duration::from_micros(100));
    }
    sim.run_for(Duration::from_secs(1));
    let ports: Vec<u16> = (sim.take_rx(b).iter())
        .map(|f| u16::from_be_bytes([f[ETH_HLEN + 20], f[ETH_HLEN + 21]]))
        .collect();
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1000..1500).collect::<Vec<_>>(),
        "{}",
        sim.drops_report()
    );
    assert_ne!(ports, sorted, "nothing was reordered");
    assert_nothing_refused(&sim);
}

/// A fifth of the datagrams lost, handshake messages among them: initiations are
/// sent again until one is answered, datagrams sent meanwhile wait in the queue,
/// and whatever the link did not lose arrives; the stages refuse nothing.
#[test]
fn loss_makes_handshakes_retry_and_refuses_nothing() {
    let mut sim = Sim::encrypted(&[&[A], &[B], &[C]], Encryption::Required);
    sim.out.capture = true;
    let lossy = Link {
        latency: Duration::from_millis(2),
        jitter: Duration::from_millis(4),
        loss: 0.2,
        ..Link::default()
    };
    for (n, m) in [(0, 1), (0, 2), (1, 2)] {
        sim.set_link(n, m, lossy);
    }
    let (a, b, c) = (sim.pod(A), sim.pod(B), sim.pod(C));
    let rounds = 1_000;
    let mut received = 0;
    for i in 0..rounds {
        let port = 1000 + (i % 50) as u16;
        udp_from(&mut sim, a, B, port, 100);
        udp_from(&mut sim, b, C, port, 100);
        udp_from(&mut sim, c, A, port, 100);
        sim.flush();
        sim.run_for(Duration::from_millis(50));
        received += [a, b, c]
            .map(|p| sim.take_rx(p).len())
            .iter()
            .sum::<usize>();
    }
    // Every datagram arrived, or the link lost it (or a handshake message it
    // waited for), or it found the handshake's queue full while initiations were
    // lost and sent again: dropped as it came, counted as `no_session`.
    let mut queue_drops = 0;
    for (n, m) in [(0, 1), (1, 2), (2, 0)] {
        let st = status(&sim, n, m);
        assert_eq!(st.state, State::Established, "{n} to {m}: {st:?}");
        assert_eq!(st.handshake_failures, 0, "{n} to {m}: {st:?}");
        assert_eq!(
            sim.peer_counters(n, m).dropped(DropReason::NoSession),
            st.queue_drops
        );
        queue_drops += st.queue_drops as usize;
    }
    assert!(sim.out.lost > 0);
    // Three pairs of nodes, one handshake each at the least: more initiations
    // mean some were lost and sent again.
    assert!(initiations(&sim) > 3, "{} initiations", initiations(&sim));
    assert!(received + queue_drops + sim.out.lost as usize >= rounds * 3);
    assert!(
        received > rounds * 3 / 2,
        "{received}: {}",
        sim.drops_report()
    );
    // The stages refused nothing that arrived.
    for reason in [
        DropReason::SealRefused,
        DropReason::HandshakeRefused,
        DropReason::Plaintext,
    ] {
        let refused: u64 = (0..3)
            .flat_map(|n| sim.all_counters(n))
            .map(|(_, s)| s.dropped(reason))
            .sum();
        assert_eq!(refused, 0, "{reason:?}: {}", sim.drops_report());
    }
}

/// An initiation the link lost is sent again when it is due, REKEY_TIMEOUT after
/// it was sent: worker 0 learns of a handshake the send path started only at its
/// next recheck of the endpoint's timers, and still runs the retry on time.
#[test]
fn a_lost_initiation_is_sent_again_on_time() {
    let mut sim = Sim::encrypted(&[&[A], &[B]], Encryption::Required);
    sim.out.capture = true;
    let (a, b) = (sim.pod(A), sim.pod(B));
    sim.set_link(
        0,
        1,
        Link {
            up: false,
            ..Link::default()
        },
    );
    sim.run_for(Duration::from_millis(1500));
    udp_from(&mut sim, a, B, 1000, 64);
    sim.flush();
    sim.set_link(0, 1, Link::default());
    sim.run_for(crypto::REKEY_TIMEOUT - Duration::from_millis(1));
    assert!(sim.take_rx(b).is_empty(), "a retry before REKEY_TIMEOUT");
    sim.run_for(Duration::from_millis(10));
    assert_eq!(sim.take_rx(b).len(), 1, "{}", sim.drops_report());
    assert_eq!(initiations(&sim), 2);
}

/// Initiations on the wire, with `capture` on.
fn initiations(sim: &Sim) -> usize {
    (sim.out.log.iter())
        .filter(|e| {
            matches!(e, Event::ToPeer { datagram, .. }
                if handshake::is_handshake(datagram) && datagram[1] == handshake::KIND_INITIATION)
        })
        .count()
}

/// The stage's decisions about what arrives, one by one: plaintext from a node
/// with a key, a handshake kind that does not parse, a forged sealed datagram, a
/// replay; and, with encryption on rather than required, plaintext from a node
/// with no key passes.
#[test]
fn the_stage_refuses_what_it_must_and_counts_why() {
    let mut sim = Sim::encrypted(&[&[A], &[B]], Encryption::Required);
    sim.out.capture = true;
    let (a, b) = (sim.pod(A), sim.pod(B));
    udp_from(&mut sim, a, B, 1000, 64);
    sim.flush();
    sim.run_for(Duration::from_millis(10));
    assert_eq!(sim.take_rx(b).len(), 1, "{}", sim.drops_report());
    let from_0 = SocketAddr::V4(SocketAddrV4::new(*underlay(0).ip(), LANE_PORT_BASE));
    let sealed: Vec<u8> = (sim.out.log.iter())
        .rev()
        .find_map(|e| match e {
            Event::ToPeer { datagram, .. } if seal::is_sealed(datagram) && datagram.len() > 100 => {
                Some(datagram.clone())
            }
            _ => None,
        })
        .expect("a sealed datagram with the pod's frame");
    let dropped = |sim: &Sim, reason| sim.peer_counters(1, 0).dropped(reason);

    // A replay of that datagram: refused by the replay window.
    sim.tunnel_in(1, from_0, &sealed);
    assert_eq!(dropped(&sim, DropReason::SealRefused), 1);
    // Its counter moved on past the window, so that only the AEAD can refuse it
    // (the seal header is authenticated).
    let mut forged = sealed.clone();
    forged[sleeve::HEADER_LEN + 4..sleeve::HEADER_LEN + 12]
        .copy_from_slice(&(1u64 << 40).to_be_bytes());
    sim.tunnel_in(1, from_0, &forged);
    assert_eq!(dropped(&sim, DropReason::SealRefused), 2);
    // The pod's frame as node 0 would send it in the clear.
    let mut plain = vec![0u8; 2048];
    let frame = from_pod(&sim, a, &Ip::udp(A, B).packet(&udp(1, 2, 10)));
    let mut w = sleeve::FramesWriter::new(&mut plain, node_id(0), 0).unwrap();
    assert!(w.try_push(0x0800, &frame[ETH_HLEN..]));
    let len = w.finish();
    sim.tunnel_in(1, from_0, &plain[..len]);
    assert_eq!(dropped(&sim, DropReason::Plaintext), 1);
    // A datagram that says it is an initiation but is not one.
    let mut junk = plain[..len].to_vec();
    junk[1] = handshake::KIND_INITIATION;
    sim.tunnel_in(1, from_0, &junk);
    assert_eq!(dropped(&sim, DropReason::BadEncap), 1);
    sim.flush();
    assert!(sim.take_rx(b).is_empty(), "none of it reached the pod");

    // Encryption on: a node whose key this node does not have may talk in the
    // clear; one whose key it has may not.
    let mut on = Sim::encrypted(&[&[A], &[B]], Encryption::On);
    let b = on.pod(B);
    on.sealer(1).endpoint().remove_peer(node_id(0));
    on.tunnel_in(1, from_0, &plain[..len]);
    on.flush();
    assert_eq!(on.take_rx(b).len(), 1, "{}", on.drops_report());
    on.sealer(1)
        .endpoint()
        .set_peer(node_id(0), static_key(0).public());
    on.tunnel_in(1, from_0, &plain[..len]);
    assert_eq!(on.peer_counters(1, 0).dropped(DropReason::Plaintext), 1);
}

/// What leaves for a peer: with `required`, nothing goes to a peer with no key
/// (counted as `no_session`); with `on`, it goes in the clear. A handshake that
/// never completes drops what waited for it, counted, and the next datagram starts
/// another.
#[test]
fn the_stage_sends_only_what_it_may() {
    for (encryption, delivered) in [(Encryption::Required, 0), (Encryption::On, 1)] {
        let mut sim = Sim::encrypted(&[&[A], &[B]], encryption);
        sim.out.capture = true;
        let (a, b) = (sim.pod(A), sim.pod(B));
        // Neither node has the other's key.
        sim.sealer(0).endpoint().remove_peer(node_id(1));
        sim.sealer(1).endpoint().remove_peer(node_id(0));
        udp_from(&mut sim, a, B, 1000, 64);
        sim.flush();
        sim.run_for(Duration::from_millis(10));
        assert_eq!(sim.take_rx(b).len(), delivered, "{encryption:?}");
        let no_session = sim.peer_counters(0, 1).dropped(DropReason::NoSession);
        assert_eq!(no_session, 1 - delivered as u64, "{encryption:?}");
    }

    let mut sim = Sim::encrypted(&[&[A], &[B]], Encryption::Required);
    let (a, b) = (sim.pod(A), sim.pod(B));
    sim.set_link(
        0,
        1,
        Link {
            up: false,
            ..Link::default()
        },
    );
    for i in 0..40 {
        // One batch each: in one batch, the sleeve would pack them in a datagram.
        udp_from(&mut sim, a, B, 1000 + i, 64);
        sim.flush();
    }
    // Queued up to the limit; the rest dropped as they come.
    let st = status(&sim, 0, 1);
    assert_eq!(st.queue_drops, 40 - crypto::QUEUE_MAX as u64, "{st:?}");
    sim.run_for(crypto::REKEY_ATTEMPT_TIME + Duration::from_secs(1));
    let st = status(&sim, 0, 1);
    assert_eq!(st.state, State::Idle, "{st:?}");
    assert_eq!(
        st.queue_drops, 40,
        "the queue went with the attempt: {st:?}"
    );
    assert_eq!(st.handshake_failures, 1, "{st:?}");
    // The link comes back: the next datagram starts a handshake and gets through.
    sim.set_link(0, 1, Link::default());
    udp_from(&mut sim, a, B, 2000, 64);
    sim.flush();
    sim.run_for(Duration::from_millis(50));
    assert_eq!(sim.take_rx(b).len(), 1, "{}", sim.drops_report());
}
