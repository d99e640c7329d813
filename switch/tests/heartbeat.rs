//! Heartbeats and peer health in simulated time: the simulation's clock jumps from
//! one timer or arrival to the next, and its links can be cut, slowed and made lossy.

use std::net::Ipv4Addr;
use std::time::Duration;

use weft_encap::sleeve;
use weft_switch::sim::{Link, Sim};
use weft_switch::tables::health::PeerState;
use weft_switch::tables::TunnelMode;

const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const BEAT: Duration = Duration::from_millis(100);

fn pair(mode: TunnelMode) -> Sim {
    Sim::with_heartbeats(mode, &[&[A], &[B]], BEAT)
}

fn cut() -> Link {
    Link {
        up: false,
        ..Link::default()
    }
}

fn both(sim: &Sim) -> (PeerState, PeerState) {
    (sim.health(0, 1).state, sim.health(1, 0).state)
}

fn lost_link_goes_down_and_a_healed_one_comes_back(mode: TunnelMode) {
    let mut sim = pair(mode);
    sim.run_for(BEAT * 3);
    assert_eq!(both(&sim), (PeerState::Up, PeerState::Up), "{mode:?}");
    let h = sim.health(0, 1);
    assert!(h.beats_sent >= 3 && h.echoes_received >= 3, "{h:?}");
    assert_eq!(h.beats_received, h.beats_sent, "{h:?}");
    assert_eq!(
        h.features,
        sleeve::FEATURE_CHUNKS | sleeve::FEATURE_ECHO,
        "{h:?}"
    );
    // No latency on the simulated wire: the round trip takes no time at all.
    assert_eq!(h.rtt, Some(Duration::ZERO), "{h:?}");

    // The link is cut: both sides call the other down within three intervals.
    sim.set_link(0, 1, cut());
    sim.run_for(BEAT * 2);
    assert_eq!(
        both(&sim),
        (PeerState::Up, PeerState::Up),
        "still within 3 intervals"
    );
    sim.run_for(BEAT + Duration::from_millis(1));
    assert_eq!(both(&sim), (PeerState::Down, PeerState::Down), "{mode:?}");
    assert!(sim.out.lost > 0, "the cut link lost the heartbeats");

    // Healed: the next heartbeat brings both back up.
    sim.set_link(0, 1, Link::default());
    sim.run_for(BEAT);
    assert_eq!(both(&sim), (PeerState::Up, PeerState::Up), "{mode:?}");
    // Nothing was dropped uncounted: every heartbeat that arrived was answered.
    let h = sim.health(1, 0);
    assert_eq!(h.echoes_sent, h.beats_received, "{h:?}");
    assert_eq!(sim.total_drops(), 0, "{}", sim.drops_report());
}

#[test]
fn sleeve_lost_link_goes_down_and_a_healed_one_comes_back() {
    lost_link_goes_down_and_a_healed_one_comes_back(TunnelMode::Sleeve);
}

#[test]
fn vxlan_lost_link_goes_down_and_a_healed_one_comes_back() {
    lost_link_goes_down_and_a_healed_one_comes_back(TunnelMode::Vxlan);
}

#[test]
fn a_peer_that_never_answers_is_unknown_over_vxlan_and_down_over_the_sleeve() {
    for (mode, silent) in [
        (TunnelMode::Vxlan, PeerState::Unknown),
        (TunnelMode::Sleeve, PeerState::Down),
    ] {
        let mut sim = pair(mode);
        // Nothing passes between the nodes: to node 0, node 1 is as silent as a
        // kernel VXLAN node, which neither sends weft heartbeats nor answers them.
        sim.set_link(0, 1, cut());
        sim.run_for(BEAT * 10);
        let h = sim.health(0, 1);
        assert_eq!(h.state, silent, "{mode:?}");
        assert_eq!((h.beats_received, h.echoes_received), (0, 0), "{mode:?}");
        assert!(h.beats_sent >= 10, "{h:?}");
        assert_eq!(sim.health(1, 0).state, silent, "{mode:?}");
        // A peer just added is unknown, whatever the mode, until 3 intervals pass.
        let fresh = pair(mode);
        assert_eq!(fresh.health(0, 1).state, PeerState::Unknown, "{mode:?}");
    }
}

#[test]
fn round_trips_follow_the_links_latency() {
    let mut sim = pair(TunnelMode::Sleeve);
    sim.set_link(
        0,
        1,
        Link {
            latency: Duration::from_millis(7),
            ..Link::default()
        },
    );
    sim.run_for(BEAT * 2);
    assert_eq!(sim.health(0, 1).rtt, Some(Duration::from_millis(14)));
    assert_eq!(sim.health(0, 1).state, PeerState::Up);
}

#[test]
fn a_lossy_link_loses_some_beats_and_the_peer_stays_up() {
    let mut sim = pair(TunnelMode::Sleeve);
    sim.set_link(
        0,
        1,
        Link {
            loss: 0.3,
            ..Link::default()
        },
    );
    sim.run_for(BEAT * 40);
    let h = sim.health(0, 1);
    assert_eq!(h.state, PeerState::Up, "{h:?}");
    assert!(sim.out.lost > 0, "a 30 % loss lost nothing");
    assert!(
        h.echoes_received < h.beats_sent && h.echoes_received > h.beats_sent / 4,
        "{h:?}"
    );
}

#[test]
fn a_link_mtu_loses_what_is_larger() {
    let mut sim = Sim::new(TunnelMode::Vxlan, &[&[A], &[B]]);
    sim.link_mut(0, 1).mtu = Some(100);
    let frame = weft_switch::sim::from_pod(
        &sim,
        0,
        &weft_switch::sim::Ip::udp(A, B).packet(&weft_switch::sim::udp(1000, 2000, 200)),
    );
    sim.pod_frame(0, &frame);
    sim.flush();
    assert_eq!(sim.out.stats.datagrams, 1);
    assert!(
        sim.out.wire.is_empty(),
        "the datagram is larger than the link's MTU"
    );
    assert_eq!(sim.out.lost, 1);
}

/// A round of heartbeats is spread over the interval: half way through it, about
/// half the peers have had theirs, and every one has one a round.
#[test]
fn a_round_is_spread_over_the_interval() {
    const NODES: usize = 21;
    let pods: Vec<[Ipv4Addr; 1]> = (0..NODES)
        .map(|n| [Ipv4Addr::new(10, 244, n as u8 + 1, 5)])
        .collect();
    let layout: Vec<&[Ipv4Addr]> = pods.iter().map(|p| &p[..]).collect();
    let mut sim = Sim::with_heartbeats(TunnelMode::Sleeve, &layout, BEAT);
    let sent =
        |sim: &Sim| -> Vec<u64> { (1..NODES).map(|m| sim.health(0, m).beats_sent).collect() };
    sim.run_for(BEAT / 2 - Duration::from_millis(1));
    let half: u64 = sent(&sim).iter().sum();
    let peers = (NODES - 1) as u64;
    assert!(
        half >= peers / 4 && half <= peers * 3 / 4,
        "{half} of {peers} peers had a heartbeat half way through the round"
    );
    // One interval on, the first round is done and the second half way.
    sim.run_for(BEAT);
    let sent_now = sent(&sim);
    assert!(sent_now.iter().all(|&n| n == 1 || n == 2), "{sent_now:?}");
    let total: u64 = sent_now.iter().sum();
    assert!(
        total >= peers + half - 2 && total <= peers + half + 2,
        "{sent_now:?}"
    );
    sim.run_for(BEAT);
    assert!(
        sent(&sim).iter().all(|&n| n == 2 || n == 3),
        "{:?}",
        sent(&sim)
    );
    // Every node's heartbeats were answered: all peers are up.
    assert!((1..NODES).all(|m| sim.health(0, m).state == PeerState::Up));
}
