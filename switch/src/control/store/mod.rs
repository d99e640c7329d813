//! Where a node learns the cluster: which nodes exist, their underlay addresses, pod
//! subnets and VTEP MACs, and (from a distributed store) the objects NetworkPolicy is
//! judged on. The store is behind [`ClusterStore`], so the daemon works the same on
//! the embedded default (a static file, [`file::FileStore`]) and on etcd
//! ([`etcd::EtcdStore`]).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::control::config::{ConfigError, Mode, NodeConfigError};
use crate::control::keys::PublicKey;
use crate::mac::MacAddr;
use crate::netpol::last_good::Unread;
use crate::netpol::model::PolicyModel;
use crate::services::model::ServiceModel;
use crate::tables::prefixes::PrefixSet;

pub mod etcd;
pub mod file;
pub mod kube;
pub mod screen;

/// What a node settled with its store as it joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// Its pod subnet.
    pub subnet: Ipv4Net,
    /// Its IPv6 pod subnet, on a dual-stack node.
    pub subnet6: Option<Ipv6Net>,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeEntry {
    /// Node name.
    pub name: String,
    /// Underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Pod subnet.
    pub pod_subnet: Ipv4Net,
    /// Its IPv6 pod subnet, on a dual-stack node (the peers file's `pod-subnet-v6`,
    /// or the IPv6 one of its Node's `spec.podCIDRs`; the etcd store carries none
    /// yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_subnet_v6: Option<Ipv6Net>,
    /// VTEP MAC.
    pub vtep_mac: MacAddr,
    /// How it reaches its peers; `None` where the store does not say (a peers file
    /// may leave it out): as this node does.
    pub mode: Option<Mode>,
    /// Whether it takes traffic with no tunnel from peers on its segment; `None`:
    /// as this node does.
    pub direct_routing: Option<bool>,
    /// Its static public key, for the encrypted sleeve; `None` if the store does
    /// not have it.
    pub public_key: Option<PublicKey>,
}

/// The longest node name: a Kubernetes node name is a DNS subdomain.
pub const MAX_NAME_LEN: usize = 253;

/// Checks what any store says of a node against what can work in `cluster`: a
/// subnet of it (not all of it, not smaller than a /30), a unicast underlay
/// address outside it ([`check_underlay`]), a unicast VTEP MAC. Errors say why.
pub fn check_node(
    pod_subnet: Ipv4Net,
    underlay_ip: Ipv4Addr,
    vtep_mac: MacAddr,
    cluster: Ipv4Net,
) -> Result<(), String> {
    let s = pod_subnet;
    if s != s.trunc() || !cluster.contains(&s) || s == cluster || s.prefix_len() > 30 {
        return Err(format!(
            "pod subnet {s} is no subnet of the cluster CIDR {cluster}"
        ));
    }
    if cluster.contains(&underlay_ip) {
        return Err(format!(
            "underlay address {underlay_ip} is inside the cluster CIDR {cluster}"
        ));
    }
    check_underlay(underlay_ip)?;
    if vtep_mac.is_multicast() {
        return Err(format!("VTEP MAC {vtep_mac} is a group address"));
    }
    Ok(())
}

/// Checks that `ip` can be a peer's underlay address: one host, reached by
/// unicast. Tunnel datagrams and direct routes go to it, so a record that named
/// "this network" (0.0.0.0/8), loopback (127.0.0.0/8, this node itself),
/// multicast (224.0.0.0/4), the reserved class E (240.0.0.0/4) or the broadcast
/// address would have the switch send pods' frames to this host, to every host,
/// or nowhere. Link-local addresses (169.254.0.0/16) are refused too: no router
/// forwards them, no Kubernetes node is addressed by one, and the cloud metadata
/// service lives there (169.254.169.254), which pod traffic must never be
/// pointed at.
pub fn check_underlay(ip: Ipv4Addr) -> Result<(), String> {
    let what = if ip.octets()[0] == 0 {
        "in \"this network\" (0.0.0.0/8)"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_link_local() {
        "link-local"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_broadcast() {
        "the broadcast address"
    } else if ip.octets()[0] >= 240 {
        "reserved (240.0.0.0/4)"
    } else {
        return Ok(());
    };
    Err(format!(
        "underlay address {ip} is {what}: a node's must be unicast"
    ))
}

/// What the nodes taken so far hold, so that a later node claiming any of it is
/// refused: the older node keeps its subnet, underlay address and VTEP MAC. Each
/// check is logarithmic in the nodes taken ([`PrefixSet`] for the subnets).
#[derive(Debug, Default)]
pub struct Claims {
    /// Taken subnets, with their holders' names.
    subnets: PrefixSet<String>,
    ips: HashSet<Ipv4Addr>,
    macs: HashSet<MacAddr>,
}

impl Claims {
    /// Why `e` cannot be taken beside the nodes taken so far, if it cannot. Where
    /// several taken subnets overlap its own, one of them is named.
    pub fn conflict(&self, e: &NodeEntry) -> Option<String> {
        let s = e.pod_subnet;
        if let Some((held, name)) = self.subnets.overlapping(s) {
            Some(format!("its subnet {s} overlaps {name}'s {held}"))
        } else if self.ips.contains(&e.underlay_ip) {
            Some(format!(
                "underlay address {} is another node's",
                e.underlay_ip
            ))
        } else if self.macs.contains(&e.vtep_mac) {
            Some(format!("VTEP MAC {} is another node's", e.vtep_mac))
        } else {
            None
        }
    }

    /// Records what `e` holds.
    pub fn take(&mut self, e: &NodeEntry) {
        self.subnets.insert(e.pod_subnet, e.name.clone());
        self.ips.insert(e.underlay_ip);
        self.macs.insert(e.vtep_mac);
    }
}

/// NetworkPolicy's objects as a distributed store holds them: one object a record.
#[derive(Debug, Clone, Default)]
pub struct StorePolicy {
    /// The objects of every good record.
    pub model: PolicyModel,
    /// The records that do not read, each with the object it is (named by its
    /// key) and why: the daemon keeps their last good versions in force, or
    /// isolates for ingress ([`crate::netpol::last_good`]).
    pub unread: Vec<Unread>,
    /// The store's revision when this was read: a new one is a new set.
    pub revision: i64,
}

/// The cluster as a store sees it at one moment.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Every node, this one included.
    pub nodes: Vec<NodeEntry>,
    /// The policy objects, for a store that holds them; `None` leaves policy to the
    /// policy directory.
    pub policy: Option<Arc<StorePolicy>>,
    /// The Services and EndpointSlices, for a store that holds them; `None` leaves
    /// them to the policy directory.
    pub services: Option<Arc<ServiceModel>>,
}

/// What a node tells the store of itself as it joins.
#[derive(Debug, Clone)]
pub struct Joining {
    /// Node name.
    pub name: String,
    /// Underlay address.
    pub underlay_ip: Ipv4Addr,
    /// VTEP MAC.
    pub vtep_mac: MacAddr,
    /// Its mode.
    pub mode: Mode,
    /// Whether it takes direct-routed traffic.
    pub direct_routing: bool,
    /// Its static public key, with encryption on.
    pub public_key: Option<PublicKey>,
    /// What the node can receive (heartbeat features, by name).
    pub features: Vec<String>,
    /// The cluster CIDR.
    pub cluster: Ipv4Net,
    /// The subnet the node wants: its configured one, or the one it held before.
    pub wanted: Option<Ipv4Net>,
    /// The cluster's IPv6 pod range, on a dual-stack node.
    pub cluster6: Option<Ipv6Net>,
    /// Its IPv6 pod subnet on a dual-stack node: the configured one (the file
    /// store), or the one its pods held before (for a start while the store is
    /// down).
    pub subnet6: Option<Ipv6Net>,
    /// Whether only `wanted` will do: it was configured, or addresses of it are
    /// still held by pods here. Otherwise a lost subnet is replaced by a new one.
    pub strict: bool,
    /// Where the node keeps durable state.
    pub state_dir: PathBuf,
}

/// Why a store could not be read or joined.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The static file is unreadable or invalid.
    #[error(transparent)]
    File(#[from] ConfigError),
    /// etcd could not be reached or refused a request.
    #[error("etcd: {0}")]
    Etcd(String),
    /// The Kubernetes API server could not be reached or refused a request.
    #[error("kubernetes: {0}")]
    Kubernetes(String),
    /// The store's records and this node's settings disagree.
    #[error("{0}")]
    Conflict(String),
    /// No free subnet is left in the cluster CIDR.
    #[error("no free /{len} is left in the cluster CIDR {cluster}")]
    Exhausted {
        /// The cluster CIDR.
        cluster: Ipv4Net,
        /// The subnet size asked for.
        len: u8,
    },
}

/// Whether the store is reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// It is, and the view is current.
    Ok,
    /// It is not: forwarding goes on with the last view, pods are added from the
    /// node's own subnet, and the store is retried.
    Degraded {
        /// Since when.
        since: Instant,
        /// The last error.
        why: String,
    },
}

/// What a new view of the cluster is handed to.
pub type OnChange = Box<dyn Fn(ClusterView) + Send + Sync>;

/// A source of the cluster's membership.
pub trait ClusterStore: Send + Sync + std::fmt::Debug {
    /// The store's kind, for logs and STATUS.
    fn kind(&self) -> &'static str;

    /// Joins the cluster as `me` and returns this node's pod subnets: settled with
    /// the store (claimed, or taken back) and registered. Called once, as the daemon
    /// starts and before its address pools open; it blocks.
    fn join(&self, me: &Joining) -> Result<Joined, StoreError>;

    /// The cluster now.
    fn load(&self) -> Result<ClusterView, StoreError>;

    /// Watches the store on the control plane's runtime and calls `on_change` with
    /// every new view, until the task is aborted. A view that cannot be read is
    /// logged and skipped: the last good one stays in force.
    fn watch(self: Arc<Self>, on_change: OnChange) -> tokio::task::JoinHandle<()>;

    /// Whether the store is reachable now.
    fn health(&self) -> StoreHealth {
        StoreHealth::Ok
    }

    /// Whether the view [`ClusterStore::load`] returns now was read from the store
    /// since this process started, rather than an empty placeholder: a store that
    /// was unreachable as the node joined is not, until it is reached (for the
    /// Kubernetes store: until every kind was listed once). A store read in place
    /// (the peers file, none) always is.
    fn synced(&self) -> bool {
        true
    }

    /// How many objects of each kind the store holds, for a store that mirrors
    /// the API server's objects.
    fn objects(&self) -> Vec<(&'static str, usize)> {
        Vec::new()
    }
}

/// A store with no nodes at all: a single node with no peers, on its configured
/// subnet.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoStore;

impl ClusterStore for NoStore {
    fn kind(&self) -> &'static str {
        "none"
    }

    fn join(&self, me: &Joining) -> Result<Joined, StoreError> {
        let subnet = me.wanted.ok_or(StoreError::File(
            NodeConfigError::Missing("pod-subnet").into(),
        ))?;
        Ok(Joined {
            subnet,
            subnet6: me.subnet6,
        })
    }

    fn load(&self) -> Result<ClusterView, StoreError> {
        Ok(ClusterView::default())
    }

    fn watch(self: Arc<Self>, _on_change: OnChange) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(name: &str, subnet: &str, ip: u8, mac: u8) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            underlay_ip: Ipv4Addr::new(192, 0, 2, ip),
            pod_subnet: subnet.parse().unwrap(),
            pod_subnet_v6: None,
            vtep_mac: MacAddr([2, 0, 0, 0, 0, mac]),
            mode: None,
            direct_routing: None,
            public_key: None,
        }
    }

    /// The check as it was: every taken node's subnet, one by one.
    fn linear(taken: &[NodeEntry], e: &NodeEntry) -> Option<String> {
        let s = e.pod_subnet;
        if let Some(n) = taken
            .iter()
            .find(|n| n.pod_subnet.contains(&s) || s.contains(&n.pod_subnet))
        {
            Some(format!(
                "its subnet {s} overlaps {}'s {}",
                n.name, n.pod_subnet
            ))
        } else if taken.iter().any(|n| n.underlay_ip == e.underlay_ip) {
            Some(format!(
                "underlay address {} is another node's",
                e.underlay_ip
            ))
        } else if taken.iter().any(|n| n.vtep_mac == e.vtep_mac) {
            Some(format!("VTEP MAC {} is another node's", e.vtep_mac))
        } else {
            None
        }
    }

    #[test]
    fn subnets_held_holding_or_equal_overlap_and_neighbours_do_not() {
        let mut c = Claims::default();
        c.take(&entry("a", "10.244.1.0/24", 1, 1));
        c.take(&entry("b", "10.244.4.0/22", 2, 2));
        let why = |s: &str| c.conflict(&entry("new", s, 9, 9));
        assert_eq!(why("10.244.0.0/24"), None);
        assert_eq!(why("10.244.2.0/23"), None);
        assert_eq!(why("10.244.8.0/24"), None);
        assert_eq!(
            why("10.244.1.0/24").unwrap(),
            "its subnet 10.244.1.0/24 overlaps a's 10.244.1.0/24"
        );
        // Held by a taken subnet.
        assert!(why("10.244.6.128/25")
            .unwrap()
            .contains("b's 10.244.4.0/22"));
        // Holding a taken one, which starts later.
        assert!(why("10.244.0.0/23").unwrap().contains("a's 10.244.1.0/24"));
        assert!(why("10.244.0.0/16").unwrap().contains("overlaps"));
        assert!(why("0.0.0.0/0").unwrap().contains("overlaps"));
    }

    #[test]
    fn addresses_and_macs_of_older_nodes_are_refused() {
        let mut c = Claims::default();
        c.take(&entry("a", "10.244.1.0/24", 1, 1));
        let ip = c.conflict(&entry("b", "10.244.2.0/24", 1, 2)).unwrap();
        assert_eq!(ip, "underlay address 192.0.2.1 is another node's");
        let mac = c.conflict(&entry("b", "10.244.2.0/24", 2, 1)).unwrap();
        assert_eq!(mac, "VTEP MAC 02:00:00:00:00:01 is another node's");
        assert_eq!(c.conflict(&entry("b", "10.244.2.0/24", 2, 2)), None);
    }

    /// A node taken with no check (a node's own, which the etcd view always
    /// keeps) may overlap others: later checks still see every taken subnet.
    #[test]
    fn a_subnet_taken_unchecked_still_holds_what_it_overlaps() {
        let mut c = Claims::default();
        c.take(&entry("a", "10.244.1.0/24", 1, 1));
        c.take(&entry("me", "10.244.0.0/16", 2, 2));
        let why = c.conflict(&entry("n", "10.244.9.0/24", 3, 3)).unwrap();
        assert!(why.contains("me's 10.244.0.0/16"), "{why}");
    }

    prop_compose! {
        /// A node in a small corner of the address space, so that subnets,
        /// addresses and MACs collide often.
        fn arb_entry()(
            addr in 0u32..4096,
            len in 18u8..=30,
            ip in 0u8..24,
            mac in 0u8..24,
            n in 0u32..1000,
        ) -> NodeEntry {
            let net = Ipv4Net::new(Ipv4Addr::from(0x0af4_0000 + (addr << 4)), len)
                .unwrap()
                .trunc();
            NodeEntry {
                pod_subnet: net,
                pod_subnet_v6: None,
                ..entry(&format!("n{n}"), "10.244.0.0/24", ip, mac)
            }
        }
    }

    proptest! {
        /// The ordered check gives the verdict the linear one gave, node after
        /// node; for an overlap it names a taken subnet that does overlap.
        #[test]
        fn claims_agree_with_the_linear_check(
            nodes in proptest::collection::vec((arb_entry(), any::<bool>()), 0..60),
        ) {
            let mut claims = Claims::default();
            let mut taken: Vec<NodeEntry> = Vec::new();
            for (e, unchecked) in nodes {
                let old = linear(&taken, &e);
                let new = claims.conflict(&e);
                prop_assert_eq!(old.is_some(), new.is_some(), "{:?} {:?}", old, new);
                if let (Some(old), Some(new)) = (&old, &new) {
                    if old.starts_with("its subnet") {
                        let named = taken
                            .iter()
                            .any(|n| new.ends_with(&format!(" {}'s {}", n.name, n.pod_subnet))
                                && (n.pod_subnet.contains(&e.pod_subnet)
                                    || e.pod_subnet.contains(&n.pod_subnet)));
                        prop_assert!(named, "{} names no overlapping node", new);
                    } else {
                        prop_assert_eq!(old, new);
                    }
                }
                if new.is_none() || unchecked {
                    claims.take(&e);
                    taken.push(e);
                }
            }
        }
    }
}
