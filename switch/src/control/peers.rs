//! Peers: the other nodes of the cluster, as the store lists them, with the counters
//! and health this node keeps for each.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use weft_proto as proto;

use crate::control::config::{Encryption, Mode, ServicesMode, Settings};
use crate::control::daemon::Daemon;
use crate::control::error::DaemonError;
use crate::control::routes::{DirectRoute, RouteTo};
use crate::control::store::screen::{screen, screen6, Own, Said};
use crate::control::store::{ClusterView, NodeEntry};
use crate::io::clock;
use crate::tables::counters::Counters;
use crate::tables::health::{feature_names, PeerHealth};
use crate::tables::{NodeConfig, PeerEntry, PeerPath, TunnelMode};
use weft_encap::sleeve::NodeId;

/// How this node may reach node `n`, given how the host reaches `n`'s underlay
/// address (`route`, looked up only when direct routing is on).
///
/// Direct when both ends route directly and the host reaches `n` on a link, with no
/// gateway (flannel's test for `DirectRouting`); else the tunnel, when both run the
/// same one; else not at all. Only a tunnelled peer gets heartbeats: they measure
/// the tunnel, and a direct peer's traffic does not use it.
pub(crate) fn path_to(settings: &Settings, n: &NodeEntry, route: Option<&RouteTo>) -> PeerPath {
    let theirs = n.mode.unwrap_or(settings.tunnel.mode);
    let their_direct = routes_directly(settings, n);
    let tunnel = settings
        .tunnel
        .mode
        .tunnel()
        .filter(|t| theirs.tunnel() == Some(*t));
    if settings.tunnel.direct_routing && their_direct {
        match route {
            Some(r) if r.gateway.is_none() && r.dev != settings.host.port => {
                let services = settings.host.services == ServicesMode::Switch;
                return PeerPath::Direct {
                    dev: r.dev.clone(),
                    node_via_tunnel: services && tunnel.is_some(),
                };
            }
            _ if tunnel.is_some() => {}
            Some(r) => {
                let via = r.gateway.map_or(String::new(), |g| format!("via {g} "));
                return PeerPath::Unreachable(format!(
                    "not on this node's segment (the host reaches it {via}dev {}), and no common tunnel",
                    r.dev
                ));
            }
            None => {
                return PeerPath::Unreachable(
                    "the host has no route to its underlay address, and no common tunnel".into(),
                )
            }
        }
    }
    match tunnel {
        Some(_) => PeerPath::Tunnel,
        None if theirs == Mode::Direct || settings.tunnel.mode == Mode::Direct => {
            PeerPath::Unreachable(format!(
                "it runs {theirs} and this node {}{}: direct routing needs both ends, and one has no tunnel",
                settings.tunnel.mode,
                if settings.tunnel.direct_routing { " with direct routing" } else { "" }
            ))
        }
        None => PeerPath::Unreachable(format!("it runs {theirs}, this node {}", settings.tunnel.mode)),
    }
}

/// Whether node `n` routes directly to the peers on its segment, as its record (or
/// the peers file) says; a node that does not say runs as this one does.
fn routes_directly(settings: &Settings, n: &NodeEntry) -> bool {
    n.mode.unwrap_or(settings.tunnel.mode) == Mode::Direct
        || n.direct_routing.unwrap_or(settings.tunnel.direct_routing)
}

/// Whether node `n`'s pods may reach this node through its host while this node
/// tunnels to `n` (`path`): `n` routes directly, and is on this node's segment (the
/// host reaches it, by `route`, on a link with no gateway). Never under required
/// encryption: then nothing from a tunnelled peer's subnet passes unsealed.
fn reaches_us_through_the_host(
    settings: &Settings,
    n: &NodeEntry,
    path: &PeerPath,
    route: Option<&RouteTo>,
) -> bool {
    *path == PeerPath::Tunnel
        && settings.encryption.mode != Encryption::Required
        && routes_directly(settings, n)
        && route.is_some_and(|r| r.gateway.is_none() && r.dev != settings.host.port)
}

/// The peer entries of `nodes` (every node but this one), reached as [`path_to`]
/// says, with `route_to` telling how the host reaches an address. A peer that did not
/// change keeps its counters and health from `old` (found by name and address, in
/// a map: a view of thousands of nodes is applied in linear time).
pub(crate) fn peer_entries(
    settings: &Settings,
    nodes: &[NodeEntry],
    old: &[PeerEntry],
    route_to: &dyn Fn(Ipv4Addr) -> Option<RouteTo>,
) -> Vec<PeerEntry> {
    let mut by_name: HashMap<(&str, SocketAddrV4), &PeerEntry> = HashMap::with_capacity(old.len());
    for p in old {
        by_name.entry((p.name.as_str(), p.addr)).or_insert(p);
    }
    nodes
        .iter()
        .filter(|n| n.name != settings.node_name)
        .map(|n| {
            let addr = SocketAddrV4::new(n.underlay_ip, settings.tunnel.port);
            let kept = by_name.get(&(n.name.as_str(), addr)).copied();
            let route = (settings.tunnel.direct_routing || routes_directly(settings, n))
                .then(|| route_to(n.underlay_ip))
                .flatten();
            let path = path_to(settings, n, route.as_ref());
            let beats = path == PeerPath::Tunnel;
            let via_host = reaches_us_through_the_host(settings, n, &path, route.as_ref());
            PeerEntry {
                name: n.name.clone(),
                addr,
                subnet: n.pod_subnet,
                subnet6: n.pod_subnet_v6,
                vtep_mac: n.vtep_mac,
                counters: kept.map_or_else(
                    || Arc::new(Counters::new(settings.datapath.workers)),
                    |p| p.counters.clone(),
                ),
                health: kept.map_or_else(
                    || Arc::new(PeerHealth::new(clock::now())),
                    |p| p.health.clone(),
                ),
                path,
                beats,
                via_host,
            }
        })
        .collect()
}

/// The nodes of `nodes` that this node (`node`) can take as peers, and itself
/// ([`screen`]): a node that overlaps its subnet, has its underlay address or
/// VTEP MAC, or claims what an earlier node holds is left out, so that no
/// record, however stale or hostile, keeps the rest of a view from being put in
/// force. What is left out is logged through `said`: once while it stays out,
/// within a budget.
pub(crate) fn usable_nodes(
    node: &NodeConfig,
    nodes: &[NodeEntry],
    said: &mut Said,
) -> Vec<NodeEntry> {
    let own = Own {
        name: node.name.clone(),
        subnet: node.subnet,
        underlay: node.underlay,
        vtep_mac: node.router_mac,
    };
    let (mut kept, mut left_out) = screen(nodes.to_vec(), node.cluster, Some(&own));
    let own6 = node.v6.map(|v6| (v6.subnet, v6.cluster));
    let peers = kept.iter_mut().filter(|n| n.name != node.name);
    left_out.extend(screen6(peers, own6));
    for line in said.lines(std::time::Instant::now(), &left_out) {
        log::warn!("cluster store: {line}");
    }
    kept
}

/// Whether the peers `nodes` make depend on the host's routes (direct routing
/// here, or a node that routes directly): then the same nodes may make other
/// peers when the routes change. Otherwise a peer is a function of its node, and
/// a view with the nodes in force (most views: a pod or a policy changed) is
/// applied without building thousands of peer entries to compare them.
fn needs_routes(settings: &Settings, nodes: &[NodeEntry]) -> bool {
    settings.tunnel.direct_routing || nodes.iter().any(|n| routes_directly(settings, n))
}

/// How `weft peers` shows a path.
fn describe(p: &PeerEntry, mode: TunnelMode) -> String {
    match &p.path {
        PeerPath::Tunnel => mode.to_string(),
        PeerPath::Direct { dev, .. } => format!("direct via {} dev {dev}", p.addr.ip()),
        PeerPath::Unreachable(why) => format!("none: {why}"),
    }
}

impl Daemon {
    /// Applies a new view of the cluster from the store: its peers, and its policy
    /// objects if it has them. Returns whether the peers changed.
    ///
    /// The peers go first: a policy set that cannot be put in force must not keep
    /// nodes that joined or left from being seen. A view the store has not read
    /// since the node started is a placeholder, and changes nothing: the view in
    /// force (saved by an earlier run, or none) stays until the store is read.
    pub fn apply_view(&self, view: &ClusterView) -> Result<bool, DaemonError> {
        if !self.store.synced() {
            log::debug!("cluster store: not read yet; the view in force stays");
            return Ok(false);
        }
        let changed = self.apply_peers(view)?;
        if let Some(policy) = &view.policy {
            self.apply_store_policy(policy)?;
        }
        if let Some(services) = &view.services {
            self.apply_services(services.clone(), self.store.kind(), false);
        }
        let was_saved = self.from_saved.lock().take();
        if let Some(at) = was_saved {
            log::info!(
                "store {} read: its view replaces the one saved at {at}",
                self.store.kind()
            );
            self.save_view(&self.state.lock());
        }
        Ok(changed)
    }

    /// Gives the encrypted sleeve's endpoint the peers' public keys: every other
    /// node with one. A node whose key changed starts its sessions afresh; one that
    /// left or lost its key has them ended.
    pub(crate) fn sync_crypto_peers(&self, nodes: &[NodeEntry]) {
        let Some(sealer) = &self.sealer else {
            return;
        };
        let mut ep = sealer.endpoint();
        let me = NodeId(self.node.router_mac.0);
        let keyed: HashMap<NodeId, [u8; 32]> = nodes
            .iter()
            .filter(|n| n.name != self.node.name)
            .filter_map(|n| Some((NodeId(n.vtep_mac.0), n.public_key?.0)))
            .filter(|(id, _)| *id != me)
            .collect();
        for gone in ep.peer_nodes() {
            if !keyed.contains_key(&gone) {
                ep.remove_peer(gone);
            }
        }
        for (id, key) in keyed {
            ep.set_peer(id, key);
        }
    }

    fn apply_peers(&self, view: &ClusterView) -> Result<bool, DaemonError> {
        {
            let state = self.state.lock();
            if *state.nodes == view.nodes && !needs_routes(&self.settings, &view.nodes) {
                // The peers in force stand: most views are of a pod or a policy
                // that changed. The view read is saved, as any is.
                self.save_view(&state);
                return Ok(false);
            }
        }
        let usable = usable_nodes(&self.node, &view.nodes, &mut self.left_out.lock());
        self.sync_crypto_peers(&usable);
        let mut state = self.state.lock();
        let route_to = |ip| self.route_to(ip);
        let peers = peer_entries(&self.settings, &usable, &state.peers, &route_to);
        let same = peers.len() == state.peers.len()
            && peers.iter().zip(&state.peers).all(|(a, b)| {
                a.name == b.name
                    && a.addr == b.addr
                    && a.subnet == b.subnet
                    && a.subnet6 == b.subnet6
                    && a.vtep_mac == b.vtep_mac
                    && a.path == b.path
                    && a.beats == b.beats
            });
        if same {
            state.nodes = Arc::new(view.nodes.clone());
            self.save_view(&state);
            return Ok(false);
        }
        let old = std::mem::replace(&mut state.peers, peers);
        if let Err(e) = self.publish(&mut state) {
            state.peers = old;
            return Err(e);
        }
        state.nodes = Arc::new(view.nodes.clone());
        self.save_view(&state);
        self.sync_direct_routes(&state.peers);
        let names: Vec<&str> = state.peers.iter().map(|p| p.name.as_str()).collect();
        log::info!("peers now: {}", names.join(", "));
        Ok(true)
    }

    /// How the host reaches `ip`, or `None` if it does not, or cannot say.
    pub(crate) fn route_to(&self, ip: Ipv4Addr) -> Option<RouteTo> {
        match self.host.route_to(ip) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("direct routing: looking up the route to {ip}: {e}");
                None
            }
        }
    }

    /// Makes the host's direct routes those of `peers`' direct paths (none without
    /// direct routing: a previous run's are removed). A failure is logged: those
    /// peers stay unreachable until the next change puts it right.
    pub(crate) fn sync_direct_routes(&self, peers: &[PeerEntry]) {
        let wanted: Vec<DirectRoute> = peers
            .iter()
            .filter_map(|p| match &p.path {
                PeerPath::Direct { .. } => {
                    let r = self.route_to(*p.addr.ip())?;
                    Some(DirectRoute {
                        subnet: p.subnet,
                        via: *p.addr.ip(),
                        oif: r.oif,
                    })
                }
                _ => None,
            })
            .collect();
        match self.host.sync_direct_routes(&wanted) {
            Ok(removed) if self.settings.tunnel.direct_routing || removed > 0 => log::info!(
                "direct routing: {} host routes, {removed} removed",
                wanted.len()
            ),
            Ok(_) => {}
            Err(e) => log::error!("direct routing: setting the host's routes: {e}"),
        }
    }

    /// Rereads the store and applies it. Returns whether anything changed.
    pub fn reload_peers(&self) -> Result<bool, DaemonError> {
        let view = self.store.load()?;
        self.apply_view(&view)
    }

    /// The peers as the control protocol shows them, and a last row for datagrams
    /// from no known peer.
    pub(crate) fn peer_infos(&self) -> Vec<proto::PeerInfo> {
        let tables = self.tables();
        let now = clock::now();
        let answers_always = self.node.mode == TunnelMode::Sleeve;
        // Health is judged on heartbeat rounds, longer than the interval for a
        // node with very many peers.
        let round = tables.beat_round();
        let mut out: Vec<_> = tables
            .peers
            .iter()
            .map(|p| {
                let h = p.health.snapshot(now, round, answers_always);
                let micros =
                    |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
                proto::PeerInfo {
                    name: p.name.clone(),
                    underlay: *p.addr.ip(),
                    pod_subnet: p.subnet.to_string(),
                    pod_subnet_v6: p.subnet6.map(|s| s.to_string()),
                    vtep_mac: p.vtep_mac.to_string(),
                    path: describe(p, self.node.mode),
                    counters: p.counters.snapshot().to_proto(),
                    health: Some(proto::PeerHealth {
                        state: h.state.name().into(),
                        last_heard_us: h.last_heard.map(micros),
                        rtt_us: h.rtt.map(micros),
                        features: feature_names(h.features),
                        heartbeats_sent: h.beats_sent,
                        heartbeats_received: h.beats_received,
                        echoes_sent: h.echoes_sent,
                        echoes_received: h.echoes_received,
                    }),
                    session: self.session_info(now, p),
                }
            })
            .collect();
        out.push(proto::PeerInfo {
            name: "(unknown senders)".into(),
            underlay: Ipv4Addr::UNSPECIFIED,
            pod_subnet: String::new(),
            pod_subnet_v6: None,
            vtep_mac: String::new(),
            path: String::new(),
            counters: tables.tunnel.snapshot().to_proto(),
            health: None,
            session: None,
        });
        out
    }

    /// `peer`'s encrypted session as the protocol shows it; none with encryption off.
    fn session_info(&self, now: crate::core::Time, peer: &PeerEntry) -> Option<proto::PeerSession> {
        let sealer = self.sealer.as_ref()?;
        let ep = sealer.endpoint();
        let Some(st) = ep.status(now, NodeId(peer.vtep_mac.0)) else {
            return Some(proto::PeerSession {
                state: "no key".into(),
                key_age_s: None,
                cipher: None,
                handshakes: 0,
                rekeys: 0,
                handshake_failures: 0,
                queue_drops: 0,
            });
        };
        Some(proto::PeerSession {
            state: match st.state {
                crate::crypto::State::Idle => "idle",
                crate::crypto::State::Handshaking => "handshaking",
                crate::crypto::State::Established => "established",
            }
            .into(),
            key_age_s: st.key_age.map(|d| d.as_secs()),
            cipher: st.cipher.map(|c| c.to_string()),
            handshakes: st.handshakes,
            rekeys: st.rekeys,
            handshake_failures: st.handshake_failures,
            queue_drops: st.queue_drops,
        })
    }
}

#[cfg(test)]
mod tests {
    use ipnet::Ipv4Net;
    use proptest::prelude::*;

    use super::*;
    use crate::control::config::Options;
    use crate::control::daemon::{host_port, node_config};
    use crate::mac::MacAddr;
    use crate::tables::Tables;

    fn settings(direct_routing: bool) -> Settings {
        let mut o = Options {
            node_name: Some("me".into()),
            underlay_ip: Some(Ipv4Addr::new(10, 250, 0, 1)),
            pod_subnet: Some("10.244.1.0/24".parse().unwrap()),
            cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
            ..Options::default()
        };
        o.tunnel.direct_routing = Some(direct_routing);
        o.resolve().expect("settings")
    }

    fn node(name: &str, n: u8, mode: Option<Mode>) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            underlay_ip: Ipv4Addr::new(10, 250, 0, n),
            pod_subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            pod_subnet_v6: None,
            vtep_mac: MacAddr::from_name(name),
            mode,
            direct_routing: None,
            public_key: None,
        }
    }

    /// The forwarding snapshot of `settings`' node with `nodes` as the store
    /// listed them, screened or not.
    fn tables_of(
        settings: &Settings,
        nodes: &[NodeEntry],
        screened: bool,
    ) -> Result<Tables, crate::tables::TablesError> {
        let mac = MacAddr::from_name(&settings.node_name);
        let joined = crate::control::store::Joined {
            subnet: settings.pod_subnet.expect("a pod subnet"),
            subnet6: settings.ipv6.and_then(|v6| v6.subnet),
        };
        let node = Arc::new(node_config(settings, joined, mac));
        let usable = match screened {
            true => usable_nodes(&node, nodes, &mut Said::default()),
            false => nodes.to_vec(),
        };
        let peers = peer_entries(settings, &usable, &[], &|_| None);
        let (host, _) = host_port(settings, &node);
        let counters = Arc::new(Counters::new(1));
        Tables::build(node, host, [], peers, counters)
    }

    /// A view holding a node that overlaps this node's subnet, one with its
    /// underlay address and one with a multicast underlay makes no snapshot as
    /// it is (the node would freeze on the view before); screened, it makes one
    /// with every other peer in it.
    #[test]
    fn a_hostile_node_in_a_view_leaves_the_rest_of_it_usable() {
        let s = settings(false);
        let mut wide = node("wide", 9, None);
        wide.pod_subnet = "10.244.0.0/23".parse().unwrap();
        let mut twin = node("twin", 5, None);
        twin.underlay_ip = s.underlay_ip;
        let mut group = node("group", 6, None);
        group.underlay_ip = Ipv4Addr::new(224, 0, 0, 5);
        let nodes = vec![
            wide,
            twin,
            group,
            node("me", 1, None),
            node("good", 3, None),
        ];
        let err = tables_of(&s, &nodes, false).unwrap_err();
        assert!(
            err.to_string().contains("overlaps this node's subnet"),
            "{err}"
        );
        let t = tables_of(&s, &nodes, true).expect("a snapshot");
        let names: Vec<&str> = t.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["good"]);
        assert!(t.peer_by_ip(s.underlay_ip).is_none());
    }

    prop_compose! {
        /// A node in a small corner of the address space, often overlapping this
        /// node (10.244.1.0/24 on 10.250.0.1), another node, or outside the
        /// cluster, with an underlay address that is often unusable.
        fn arb_node()(
            name in 0u8..16,
            net in 0u32..16,
            len in 20u8..=28,
            outside in proptest::bool::weighted(0.1),
            ip in prop_oneof![
                (1u8..8).prop_map(|n| Ipv4Addr::new(10, 250, 0, n)),
                Just(Ipv4Addr::new(127, 0, 0, 1)),
                Just(Ipv4Addr::new(224, 0, 0, 5)),
                Just(Ipv4Addr::new(10, 244, 1, 1)),
                Just(Ipv4Addr::BROADCAST),
            ],
            mac in 0u8..8,
        ) -> NodeEntry {
            let base = if outside { 0x0af5_0000 } else { 0x0af4_0000 };
            let subnet = Ipv4Net::new(Ipv4Addr::from(base + (net << 8)), len).unwrap().trunc();
            NodeEntry {
                pod_subnet: subnet,
                pod_subnet_v6: None,
                underlay_ip: ip,
                vtep_mac: match mac {
                    0 => MacAddr::from_name("me"),
                    m => MacAddr([2, 0, 0, 0, 0, m]),
                },
                ..node(&format!("n{name}"), 2, None)
            }
        }
    }

    proptest::proptest! {
        /// Whatever a store lists, the screened view makes a snapshot.
        #[test]
        fn every_screened_view_makes_a_snapshot(
            nodes in proptest::collection::vec(arb_node(), 0..24),
        ) {
            let s = settings(false);
            let t = tables_of(&s, &nodes, true);
            prop_assert!(t.is_ok(), "{:?}", t.err());
        }
    }

    /// Only a view whose peers may hang on the host's routes is built into
    /// peers again when its nodes are those in force.
    #[test]
    fn only_direct_routing_needs_the_routes() {
        let nodes = vec![node("me", 1, None), node("b", 2, None)];
        assert!(!needs_routes(&settings(false), &nodes));
        assert!(needs_routes(&settings(true), &nodes));
        let mut direct = nodes.clone();
        direct[1].mode = Some(Mode::Direct);
        assert!(needs_routes(&settings(false), &direct));
        let mut routes_directly = nodes;
        routes_directly[1].direct_routing = Some(true);
        assert!(needs_routes(&settings(false), &routes_directly));
    }
}
