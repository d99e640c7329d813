//! The forwarding snapshot: everything a worker reads per packet.
//!
//! The control plane builds a new [`Tables`] whenever a port or peer comes or goes and
//! swaps it in atomically; workers load the current one once per batch. Nothing in
//! here is mutated after it is built, except the counters and each peer's health,
//! which are atomics that the workers' sinks write.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use weft_encap::vxlan::Vni;

pub mod counters;
pub mod fib;
pub mod health;
pub mod maglev;
pub mod prefixes;
pub mod services;

use crate::core::{Report, Time};
use crate::mac::MacAddr;
use crate::netpol::compile::PodRules;
use crate::tables::counters::Counters;
use crate::tables::fib::{Fib, NextHop, U32Hasher};
use crate::tables::health::PeerHealth;
use crate::tables::prefixes::PrefixSet;

/// How frames to peer nodes are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelMode {
    /// VXLAN (RFC 7348), interoperable with the Linux kernel's VXLAN device.
    Vxlan,
    /// weft's own UDP framing, several frames per datagram.
    Sleeve,
}

/// Bytes the tunnels take from the underlay MTU: VXLAN's over IPv4 (outer IPv4 20 +
/// UDP 8 + VXLAN 8 + inner Ethernet 14). Sleeve needs 44 of them; pods get the same
/// MTU in both modes.
pub const TUNNEL_OVERHEAD: u32 = weft_encap::vxlan::IPV4_OVERHEAD as u32;

impl fmt::Display for TunnelMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TunnelMode::Vxlan => "vxlan",
            TunnelMode::Sleeve => "sleeve",
        })
    }
}

/// This node's identity and addressing, fixed for the daemon's lifetime.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name.
    pub name: String,
    /// The MAC the switch answers ARP with and sends tunnel frames from (the VTEP MAC).
    pub router_mac: MacAddr,
    /// The node's pod subnet.
    pub subnet: Ipv4Net,
    /// The gateway address of the pod subnet, held by the host port.
    pub gateway: Ipv4Addr,
    /// The node's underlay address.
    pub underlay: Ipv4Addr,
    /// The whole cluster's pod range.
    pub cluster: Ipv4Net,
    /// Tunnel framing.
    pub mode: TunnelMode,
    /// VXLAN network identifier.
    pub vni: Vni,
    /// The MTU of pod interfaces (and of the host port).
    pub pod_mtu: u32,
    /// The largest UDP payload the underlay carries without fragmentation.
    pub max_datagram: usize,
    /// How often worker 0 sends every peer a heartbeat.
    pub heartbeat: Duration,
    /// The node's IPv6 addressing, on a dual-stack node.
    pub v6: Option<Node6>,
}

/// A dual-stack node's IPv6 addressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node6 {
    /// The node's IPv6 pod subnet.
    pub subnet: Ipv6Net,
    /// Its gateway address (`::1` of the subnet), answered for by the switch.
    pub gateway: Ipv6Addr,
    /// The whole cluster's IPv6 pod range.
    pub cluster: Ipv6Net,
}

/// A port's identity: a slot that workers index by, and a generation that tells a
/// reused slot from its previous owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortId {
    /// Dense slot number.
    pub slot: u32,
    /// Incremented each time the slot is reused.
    pub generation: u32,
}

/// What a port connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// The node itself (`weft0`).
    Host,
    /// A pod's interface.
    Pod,
}

/// A port as the datapath sees it.
#[derive(Debug, Clone)]
pub struct PortEntry {
    /// Its identity.
    pub id: PortId,
    /// Host or pod.
    pub kind: PortKind,
    /// The interface name (in its own netns).
    pub name: String,
    /// The MAC of the interface: frames to the port are sent to it.
    pub mac: MacAddr,
    /// The pod's address (the gateway, for the host port).
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, on a dual-stack node (none for the host port).
    pub ip6: Option<Ipv6Addr>,
    /// The container id, for pods.
    pub container_id: Option<String>,
    /// The Kubernetes pod, for pods whose CNI args named it: the metrics' labels.
    pub pod: Option<weft_proto::PodRef>,
    /// The netns path, for pods.
    pub netns: Option<String>,
    /// How many queues the port has; queue `q` belongs to worker `q`.
    pub queues: u16,
    /// Whether the port takes offload metadata (a TAP does; an AF_XDP port sends
    /// complete frames, so the switch does not merge frames for it).
    pub offloads: bool,
    /// Whether the port also takes UDP super-frames (USO: a TAP on Linux 6.2+), so
    /// the switch merges UDP datagrams for it too.
    pub uso: bool,
    /// Traffic counters.
    pub counters: Arc<Counters>,
    /// The pod's NetworkPolicy rules, if some policy selects it.
    pub policy: Option<Arc<PodRules>>,
}

/// A peer node as the datapath sees it.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    /// Node name.
    pub name: String,
    /// Underlay address and tunnel port.
    pub addr: SocketAddrV4,
    /// The node's pod subnet.
    pub subnet: Ipv4Net,
    /// Its IPv6 pod subnet, which this node routes to it through the tunnel (on a
    /// dual-stack node, and a peer that has one).
    pub subnet6: Option<Ipv6Net>,
    /// Its VTEP MAC (also its sleeve sender id).
    pub vtep_mac: MacAddr,
    /// Traffic counters.
    pub counters: Arc<Counters>,
    /// Its liveness and what its datagrams said it can receive.
    pub health: Arc<PeerHealth>,
    /// How its pods are reached.
    pub path: PeerPath,
    /// Whether it gets heartbeats: its pods are reached through the tunnel.
    pub beats: bool,
    /// Whether its pods' traffic may reach this node through the host rather than
    /// the tunnel: it routes to this node directly, though this node tunnels back
    /// (its segment or its settings differ). The host port then admits its pod
    /// subnet. A peer whose path is [`PeerPath::Direct`] is admitted by its route.
    pub via_host: bool,
}

/// The gateway address of a pod subnet: its first address, held by its node's host
/// port.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The gateway address of an IPv6 pod subnet: its `::1`, held by its node's host
/// port.
pub fn gateway6_of(subnet: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()) + 1)
}

/// How a peer's pods are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPath {
    /// Through the tunnel.
    Tunnel,
    /// With no encapsulation: frames go to the host port, and the host routes the
    /// peer's subnet via the peer's underlay address on interface `dev`.
    Direct {
        /// The host's interface to the peer.
        dev: String,
        /// Whether the peer node's own address in its subnet (its `weft0`'s) is
        /// reached through the tunnel, as are the peer's pods from this node's
        /// `weft0` address: with Services in the switch, where the two nodes share
        /// a tunnel. A node's connection to a ClusterIP leaves from that address,
        /// translated by its switch; the host, which routes the peer's pods, could
        /// neither take the translated packet back (its own address coming in) nor
        /// bring the answer to the switch to be translated back.
        node_via_tunnel: bool,
    },
    /// Not at all, and why (the peer is off this node's segment and there is no
    /// common tunnel).
    Unreachable(String),
}

/// Problems that make a set of ports and peers impossible to route.
#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    /// A peer's subnet overlaps this node's or another peer's.
    #[error("pod subnet {subnet} of peer {peer} overlaps {other}")]
    Overlap {
        /// The peer.
        peer: String,
        /// Its subnet.
        subnet: Ipv4Net,
        /// What it overlaps.
        other: String,
    },
    /// A peer's subnet is outside the cluster CIDR.
    #[error("pod subnet {subnet} of peer {peer} is outside the cluster CIDR {cluster}")]
    OutsideCluster {
        /// The peer.
        peer: String,
        /// Its subnet.
        subnet: Ipv4Net,
        /// The cluster CIDR.
        cluster: Ipv4Net,
    },
    /// A peer's IPv6 subnet is outside this node's IPv6 range (or this node has
    /// none), or overlaps this node's or another peer's.
    #[error("IPv6 pod subnet {subnet} of peer {peer} cannot be routed: {why}")]
    Subnet6 {
        /// The peer.
        peer: String,
        /// Its IPv6 subnet.
        subnet: Ipv6Net,
        /// Why.
        why: String,
    },
    /// Two peers share an underlay address.
    #[error("peers {a} and {b} share the underlay address {addr}")]
    DuplicateUnderlay {
        /// One peer.
        a: String,
        /// The other.
        b: String,
        /// The address.
        addr: Ipv4Addr,
    },
}

/// Peers by underlay address, with the FIB's multiplicative hasher: every tunnel
/// send counts itself on its peer through this map (the addresses are the store's,
/// not a map size an attacker chooses).
type PeerMap = HashMap<u32, usize, BuildHasherDefault<U32Hasher>>;

/// One immutable forwarding snapshot.
#[derive(Debug)]
pub struct Tables {
    /// This node.
    pub node: Arc<NodeConfig>,
    /// Ports; index 0 is the host port.
    pub ports: Vec<PortEntry>,
    /// Peer nodes.
    pub peers: Vec<PeerEntry>,
    /// The routing table.
    pub fib: Fib,
    /// Counters for tunnel datagrams that belong to no known peer.
    pub tunnel: Arc<Counters>,
    /// The policy set the ports' rules come from; connections allowed under an older
    /// one are judged again.
    pub policy_generation: u32,
    /// The ClusterIP Services the switch translates (`services = "switch"`), or none
    /// (kube-proxy's: nothing is translated).
    pub services: Option<Arc<services::Services>>,
    by_slot: Vec<Option<(u32, u32)>>,
    peer_by_ip: PeerMap,
    /// The ports by their IPv6 address.
    by_ip6: HashMap<Ipv6Addr, usize>,
    /// The peers' IPv6 subnets as (first, last address, peer), by first address.
    /// The control plane keeps them disjoint ([`screen6`]).
    ///
    /// [`screen6`]: crate::control::store::screen::screen6
    subnets6: Vec<(u128, u128, usize)>,
}

/// Checks that peer `p`'s subnet lies in the cluster CIDR and overlaps neither this
/// node's nor any of `before`'s (the subnets of the peers before it, with their
/// indices in `peers`).
fn check_subnet(
    node: &NodeConfig,
    peers: &[PeerEntry],
    before: &PrefixSet<usize>,
    p: &PeerEntry,
) -> Result<(), TablesError> {
    if p.subnet.contains(&node.subnet) || node.subnet.contains(&p.subnet) {
        return Err(TablesError::Overlap {
            peer: p.name.clone(),
            subnet: p.subnet,
            other: format!("this node's subnet {}", node.subnet),
        });
    }
    if !node.cluster.contains(&p.subnet) {
        return Err(TablesError::OutsideCluster {
            peer: p.name.clone(),
            subnet: p.subnet,
            cluster: node.cluster,
        });
    }
    match before.overlapping(p.subnet) {
        Some((_, &q)) => Err(TablesError::Overlap {
            peer: p.name.clone(),
            subnet: p.subnet,
            other: format!("peer {}'s subnet {}", peers[q].name, peers[q].subnet),
        }),
        None => Ok(()),
    }
}

/// The IPv6 subnets of `peers` as (first, last address, peer), by first address,
/// once each lies in this node's IPv6 range, clear of its subnet and of each
/// other's (the control plane screens them so: this is the snapshot's own check).
fn subnets6_of(
    node: &NodeConfig,
    peers: &[PeerEntry],
) -> Result<Vec<(u128, u128, usize)>, TablesError> {
    let refuse = |j: usize, why: String| TablesError::Subnet6 {
        peer: peers[j].name.clone(),
        subnet: peers[j].subnet6.expect("a peer with an IPv6 subnet"),
        why,
    };
    let mut subnets6 = Vec::new();
    for (j, s) in (peers.iter().enumerate()).filter_map(|(j, p)| p.subnet6.map(|s| (j, s))) {
        match node.v6 {
            None => return Err(refuse(j, "this node has no IPv6".into())),
            Some(v6)
                if !v6.cluster.contains(&s) || v6.subnet.contains(&s) || s.contains(&v6.subnet) =>
            {
                let why = format!("not in {} clear of {}", v6.cluster, v6.subnet);
                return Err(refuse(j, why));
            }
            Some(_) => subnets6.push((u128::from(s.network()), u128::from(s.broadcast()), j)),
        }
    }
    subnets6.sort_unstable();
    if let Some(w) = subnets6.windows(2).find(|w| w[1].0 <= w[0].1) {
        return Err(refuse(
            w[1].2,
            format!("it overlaps {}'s", peers[w[0].2].name),
        ));
    }
    Ok(subnets6)
}

impl Tables {
    /// Builds a snapshot: `host` first, then `pods`, and the routes they imply.
    pub fn build(
        node: Arc<NodeConfig>,
        host: PortEntry,
        pods: impl IntoIterator<Item = PortEntry>,
        peers: Vec<PeerEntry>,
        tunnel: Arc<Counters>,
    ) -> Result<Tables, TablesError> {
        let mut ports = vec![host];
        ports.extend(pods);
        let mut routes = vec![
            ("0.0.0.0/0".parse().expect("valid"), NextHop::Host),
            (node.cluster, NextHop::Unreachable),
            (node.subnet, NextHop::Unreachable),
            (Ipv4Net::from(node.gateway), NextHop::Host),
        ];
        let mut peer_by_ip = PeerMap::default();
        let mut subnets = PrefixSet::default();
        for (j, p) in peers.iter().enumerate() {
            check_subnet(&node, &peers, &subnets, p)?;
            subnets.insert(p.subnet, j);
            let underlay = *p.addr.ip();
            if let Some(prev) = peer_by_ip.insert(u32::from(underlay), j) {
                return Err(TablesError::DuplicateUnderlay {
                    a: peers[prev].name.clone(),
                    b: p.name.clone(),
                    addr: underlay,
                });
            }
            match p.path {
                PeerPath::Tunnel => {
                    routes.push((p.subnet, NextHop::Peer(j)));
                    // The peer node itself is reached through the tunnel, so replies
                    // to a pod come back the way the request went and the host sees
                    // no asymmetric route.
                    routes.push((Ipv4Net::from(underlay), NextHop::Peer(j)));
                }
                // The host has a route for the subnet via the peer, and reaches the
                // peer itself on its own; the peer's gateway address goes through
                // the tunnel with Services in the switch (see [`PeerPath::Direct`]).
                PeerPath::Direct {
                    node_via_tunnel, ..
                } => {
                    routes.push((p.subnet, NextHop::Host));
                    if node_via_tunnel {
                        routes.push((Ipv4Net::from(gateway_of(p.subnet)), NextHop::Peer(j)));
                    }
                }
                PeerPath::Unreachable(_) => routes.push((p.subnet, NextHop::Unreachable)),
            }
        }
        let mut by_slot: Vec<Option<(u32, u32)>> = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let slot = port.id.slot as usize;
            if by_slot.len() <= slot {
                by_slot.resize(slot + 1, None);
            }
            by_slot[slot] = Some((port.id.generation, i as u32));
            if port.kind == PortKind::Pod {
                routes.push((Ipv4Net::from(port.ip), NextHop::Local(i)));
            }
        }
        let by_ip6 = (ports.iter().enumerate())
            .filter_map(|(i, p)| p.ip6.map(|ip| (ip, i)))
            .collect();
        let subnets6 = subnets6_of(&node, &peers)?;
        Ok(Tables {
            node,
            ports,
            peers,
            fib: Fib::new(routes),
            tunnel,
            policy_generation: 0,
            services: None,
            by_slot,
            peer_by_ip,
            by_ip6,
            subnets6,
        })
    }

    /// The index in `ports` of the port with this id, if it is in this snapshot.
    #[inline]
    pub fn port_index(&self, id: PortId) -> Option<usize> {
        match self.by_slot.get(id.slot as usize) {
            Some(Some((generation, i))) if *generation == id.generation => Some(*i as usize),
            _ => None,
        }
    }

    /// The index in `peers` of the peer with this underlay address.
    #[inline]
    pub fn peer_by_ip(&self, ip: Ipv4Addr) -> Option<usize> {
        self.peer_by_ip.get(&u32::from(ip)).copied()
    }

    /// The port whose pod holds the IPv6 address `ip`.
    pub fn port_by_ip6(&self, ip: Ipv6Addr) -> Option<usize> {
        self.by_ip6.get(&ip).copied()
    }

    /// The peer whose IPv6 subnet holds `ip`.
    pub fn peer_by_ip6(&self, ip: Ipv6Addr) -> Option<usize> {
        let ip = u128::from(ip);
        let after = self.subnets6.partition_point(|&(first, _, _)| first <= ip);
        let &(_, last, j) = self.subnets6.get(after.checked_sub(1)?)?;
        (ip <= last).then_some(j)
    }

    /// How long a round of heartbeats to this snapshot's peers takes (see
    /// [`health::beat_round`]): what the peers' health is judged on.
    pub fn beat_round(&self) -> Duration {
        health::beat_round(self.node.heartbeat, self.peers.len())
    }

    /// Records what a core reported ([`Report`]) in the peers' health, at `now`.
    pub fn apply(&self, now: Time, report: Report) {
        let peer = match report {
            Report::Features { peer, .. }
            | Report::BeatReceived { peer }
            | Report::Echoed { peer, .. }
            | Report::BeatSent { peer }
            | Report::EchoSent { peer } => peer,
        };
        let Some(h) = self.peers.get(peer).map(|p| &p.health) else {
            return;
        };
        match report {
            Report::Features { features, .. } => h.set_features(features),
            Report::BeatReceived { .. } => h.beat_received(now),
            Report::Echoed { rtt, .. } => h.echoed(now, rtt),
            Report::BeatSent { .. } => h.beat_sent(),
            Report::EchoSent { .. } => h.echo_sent(),
        }
    }

    /// A route's next hop, described for people.
    pub fn describe(&self, hop: NextHop) -> String {
        match hop {
            NextHop::Local(i) => format!(
                "pod {} ({})",
                self.ports[i].container_id.as_deref().unwrap_or("?"),
                self.ports[i].name
            ),
            NextHop::Host => "host".into(),
            NextHop::Peer(j) => format!("peer {}", self.peers[j].name),
            NextHop::Unreachable => "unreachable".into(),
        }
    }
}
