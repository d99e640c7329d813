//! Nodes as the Kubernetes store reads and writes them: what weftd publishes on
//! its own Node as annotations, and what it makes of every Node it watches. Pure
//! functions of the objects, so they are tested with no API server.
//!
//! A node's pod subnet is its `spec.podCIDR` (the controller manager's, as
//! flannel's kube subnet manager uses it). Its underlay address is its
//! `weft.dev/underlay-ip` annotation, or else its first InternalIP. The other
//! annotations say what peers need and only weftd on that node knows: the VTEP
//! MAC, the mode, direct routing, the tunnel port, the features and the public
//! key. A Node with none of them has no weftd running yet; one with a bad value
//! is skipped with why, and the others are used.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;

use crate::control::config::Mode;
use crate::control::keys::PublicKey;
use crate::control::store::{check_node, Claims, Joining, NodeEntry};
use crate::mac::MacAddr;

/// The prefix of every annotation weftd writes.
pub const PREFIX: &str = "weft.dev/";

/// The annotations' names, after [`PREFIX`].
pub mod key {
    /// The underlay address (default: the node's first InternalIP).
    pub const UNDERLAY_IP: &str = "weft.dev/underlay-ip";
    /// The VTEP MAC, also the sleeve sender id.
    pub const VTEP_MAC: &str = "weft.dev/vtep-mac";
    /// vxlan, sleeve or direct.
    pub const MODE: &str = "weft.dev/mode";
    /// true or false.
    pub const DIRECT_ROUTING: &str = "weft.dev/direct-routing";
    /// The tunnel's UDP port.
    pub const PORT: &str = "weft.dev/port";
    /// What the node can receive, comma-separated.
    pub const FEATURES: &str = "weft.dev/features";
    /// Its static public key, 64 hex digits, with encryption on.
    pub const PUBLIC_KEY: &str = "weft.dev/public-key";
    /// Every one of them.
    pub const ALL: [&str; 7] = [
        UNDERLAY_IP,
        VTEP_MAC,
        MODE,
        DIRECT_ROUTING,
        PORT,
        FEATURES,
        PUBLIC_KEY,
    ];
}

/// The annotations node `j` publishes on its Node, with its tunnel on `port`.
pub fn annotations(j: &Joining, port: u16) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([
        (key::UNDERLAY_IP.to_owned(), j.underlay_ip.to_string()),
        (key::VTEP_MAC.to_owned(), j.vtep_mac.to_string()),
        (key::MODE.to_owned(), j.mode.to_string()),
        (key::DIRECT_ROUTING.to_owned(), j.direct_routing.to_string()),
        (key::PORT.to_owned(), port.to_string()),
        (key::FEATURES.to_owned(), j.features.join(",")),
    ]);
    if let Some(k) = j.public_key {
        a.insert(key::PUBLIC_KEY.to_owned(), k.to_string());
    }
    a
}

/// A Node that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The Node's name.
    pub node: String,
    /// Its resourceVersion (to log each bad version once).
    pub resource_version: String,
    /// Why.
    pub why: String,
}

/// What a node makes of the Nodes it watches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodesView {
    /// The nodes it can use, oldest first.
    pub nodes: Vec<NodeEntry>,
    /// The Nodes it cannot, with why.
    pub skipped: Vec<Skipped>,
}

fn annotation<'n>(node: &'n Node, key: &str) -> Option<&'n str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The first InternalIP (IPv4) of the Node's status.
fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    addresses
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// The Node's IPv4 pod range: the IPv4 one of `spec.podCIDRs` (a dual-stack
/// Node lists one of each family, IPv6 first on an IPv6-primary cluster), else
/// `spec.podCIDR`.
pub fn pod_cidr(node: &Node) -> Option<&str> {
    let spec = node.spec.as_ref()?;
    let v4 = (spec.pod_cidrs.iter().flatten())
        .find(|c| c.parse::<Ipv4Net>().is_ok())
        .map(String::as_str);
    v4.or(spec.pod_cidr.as_deref())
}

/// The Node's IPv6 pod range: the IPv6 one of `spec.podCIDRs`, on a dual-stack
/// cluster.
pub fn pod_cidr6(node: &Node) -> Option<&str> {
    let spec = node.spec.as_ref()?;
    (spec.pod_cidrs.iter().flatten())
        .find(|c| c.parse::<Ipv6Net>().is_ok())
        .map(String::as_str)
}

/// Parses annotation `key` with `parse`, naming it in the error.
fn parsed<T>(
    node: &Node,
    key: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    annotation(node, key)
        .map(|v| parse(v).map_err(|e| format!("annotation {key}={v:?}: {e}")))
        .transpose()
}

/// What `node` says of itself, checked as an etcd record is: a subnet of
/// `cluster`, an underlay address outside it, a unicast VTEP MAC, and the tunnel
/// port `port` (unless it routes directly). Errors say why.
pub fn node_entry(node: &Node, cluster: Ipv4Net, port: u16) -> Result<NodeEntry, String> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let cidr =
        pod_cidr(node).ok_or("has no spec.podCIDR yet (the controller manager gives it one)")?;
    let pod_subnet: Ipv4Net = cidr
        .parse()
        .map_err(|e| format!("spec.podCIDR {cidr:?}: {e}"))?;
    let vtep_mac = parsed(node, key::VTEP_MAC, |v| {
        v.parse::<MacAddr>().map_err(|e| e.to_string())
    })?
    .ok_or("has no weft annotations: weftd has not joined from it yet")?;
    let underlay_ip = parsed(node, key::UNDERLAY_IP, |v| {
        v.parse::<Ipv4Addr>().map_err(|e| e.to_string())
    })?
    .or_else(|| internal_ip(node))
    .ok_or("has no underlay address: no annotation and no IPv4 InternalIP")?;
    check_node(pod_subnet, underlay_ip, vtep_mac, cluster)?;
    let mode = parsed(node, key::MODE, |v| v.parse::<Mode>())?;
    let direct_routing = parsed(node, key::DIRECT_ROUTING, |v| {
        v.parse::<bool>().map_err(|e| e.to_string())
    })?;
    let their_port = parsed(node, key::PORT, |v| {
        v.parse::<u16>().map_err(|e| e.to_string())
    })?;
    if mode != Some(Mode::Direct) && their_port.is_some_and(|p| p != port) {
        let p = their_port.unwrap_or(port);
        return Err(format!("its tunnel port is {p}, this node's {port}"));
    }
    let public_key = parsed(node, key::PUBLIC_KEY, |v| {
        v.parse::<PublicKey>().map_err(|e| e.to_string())
    })?;
    Ok(NodeEntry {
        name,
        underlay_ip,
        pod_subnet,
        // Checked against this node's IPv6 range where peers are made (`screen6`).
        pod_subnet_v6: pod_cidr6(node).and_then(|c| c.parse().ok()),
        vtep_mac,
        mode,
        direct_routing,
        public_key,
    })
}

/// The Nodes as node `me` sees them: each one [`node_entry`] takes, oldest first
/// (by creation, then name), unless its subnet overlaps, or its underlay address
/// or VTEP MAC is, an older node's. This node's own Node is always used when it
/// parses: the daemon checks itself.
pub fn nodes_view<'n>(
    nodes: impl IntoIterator<Item = &'n Node>,
    me: &str,
    cluster: Ipv4Net,
    port: u16,
) -> NodesView {
    let mut sorted: Vec<&Node> = nodes.into_iter().collect();
    sorted.sort_by(|a, b| {
        let created = |n: &Node| n.metadata.creation_timestamp.clone().map(|t| t.0);
        (created(a), &a.metadata.name).cmp(&(created(b), &b.metadata.name))
    });
    // This node first: an older node never pushes it out of its own view.
    sorted.sort_by_key(|n| n.metadata.name.as_deref() != Some(me));
    let mut view = NodesView::default();
    let mut claims = Claims::default();
    for node in sorted {
        let name = node.metadata.name.clone().unwrap_or_default();
        let skip = |why: String| Skipped {
            node: name.clone(),
            resource_version: node.metadata.resource_version.clone().unwrap_or_default(),
            why,
        };
        let entry = match node_entry(node, cluster, port) {
            Ok(e) => e,
            Err(why) => {
                view.skipped.push(skip(why));
                continue;
            }
        };
        if let Some(why) = claims.conflict(&entry) {
            view.skipped.push(skip(why));
            continue;
        }
        claims.take(&entry);
        view.nodes.push(entry);
    }
    view
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const PORT: u16 = 8472;

    fn cluster() -> Ipv4Net {
        "10.244.0.0/16".parse().unwrap()
    }

    /// A Node as the API reference shows one, with weft's annotations.
    fn node(name: &str, cidr: &str, ip: &str, mac: &str, created: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "resourceVersion": "7", "creationTimestamp": created,
                         "annotations": {"weft.dev/vtep-mac": mac, "weft.dev/mode": "vxlan",
                                         "weft.dev/direct-routing": "false",
                                         "weft.dev/port": "8472", "weft.dev/features": "chunks,echo"}},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "Hostname", "address": name},
                                     {"type": "InternalIP", "address": ip}]}
        }))
        .unwrap()
    }

    /// A dual-stack Node's podCIDRs list one range of each family, in either order
    /// (IPv6 first on an IPv6-primary cluster): each family's is found.
    #[test]
    fn a_dual_stack_node_gives_a_subnet_of_each_family() {
        let mut n = node(
            "n1",
            "10.244.1.0/24",
            "192.168.0.1",
            "02:00:00:00:00:01",
            "2026-01-01T00:00:00Z",
        );
        for order in [
            ["10.244.1.0/24", "fd00:10:244:1::/64"],
            ["fd00:10:244:1::/64", "10.244.1.0/24"],
        ] {
            let spec = n.spec.as_mut().unwrap();
            spec.pod_cidrs = Some(order.iter().map(|c| c.to_string()).collect());
            spec.pod_cidr = Some(order[0].to_string());
            assert_eq!(pod_cidr(&n), Some("10.244.1.0/24"));
            assert_eq!(pod_cidr6(&n), Some("fd00:10:244:1::/64"));
            let e = node_entry(&n, cluster(), PORT).unwrap();
            assert_eq!(e.pod_subnet, "10.244.1.0/24".parse().unwrap());
            assert_eq!(e.pod_subnet_v6, Some("fd00:10:244:1::/64".parse().unwrap()));
        }
        // An IPv4-only Node has none; a garbage entry is none, not an error.
        let spec = n.spec.as_mut().unwrap();
        spec.pod_cidrs = Some(vec!["10.244.1.0/24".into(), "fd00::zz/64".into()]);
        assert_eq!(pod_cidr6(&n), None);
        assert_eq!(node_entry(&n, cluster(), PORT).unwrap().pod_subnet_v6, None);
    }

    fn annotate(mut n: Node, key: &str, value: Option<&str>) -> Node {
        let a = n.metadata.annotations.get_or_insert_with(BTreeMap::new);
        match value {
            Some(v) => a.insert(key.to_owned(), v.to_owned()),
            None => a.remove(key),
        };
        n
    }

    #[test]
    fn a_node_reads_back_what_it_published() {
        let j = Joining {
            name: "a".into(),
            underlay_ip: "192.168.0.1".parse().unwrap(),
            vtep_mac: "02:00:00:00:00:01".parse().unwrap(),
            mode: Mode::Sleeve,
            direct_routing: true,
            public_key: Some(PublicKey([7; 32])),
            features: vec!["chunks".into(), "echo".into()],
            cluster: cluster(),
            wanted: None,
            cluster6: None,
            subnet6: None,
            strict: false,
            state_dir: "/nonexistent".into(),
        };
        let mut n = node(
            "a",
            "10.244.1.0/24",
            "192.168.9.9",
            "02:00:00:00:00:09",
            "2026-12-07T00:00:00Z",
        );
        n.metadata.annotations = Some(annotations(&j, PORT));
        let e = node_entry(&n, cluster(), PORT).unwrap();
        assert_eq!(
            e.underlay_ip, j.underlay_ip,
            "the annotation over the InternalIP"
        );
        assert_eq!(
            (e.vtep_mac, e.mode, e.direct_routing),
            (j.vtep_mac, Some(Mode::Sleeve), Some(true))
        );
        assert_eq!(e.public_key, j.public_key);
        assert_eq!(e.pod_subnet, "10.244.1.0/24".parse::<Ipv4Net>().unwrap());
        assert!(annotations(&j, PORT).keys().all(|k| k.starts_with(PREFIX)));
    }

    #[test]
    fn each_bad_or_missing_field_is_skipped_with_why() {
        let good = node(
            "a",
            "10.244.1.0/24",
            "192.168.0.1",
            "02:00:00:00:00:01",
            "2026-12-07T00:00:00Z",
        );
        assert_eq!(
            node_entry(&good, cluster(), PORT).unwrap().underlay_ip,
            "192.168.0.1".parse::<Ipv4Addr>().unwrap()
        );
        let mut no_cidr = good.clone();
        no_cidr.spec.as_mut().unwrap().pod_cidr = None;
        no_cidr.spec.as_mut().unwrap().pod_cidrs = None;
        let cases: Vec<(Node, &str)> = vec![
            (no_cidr, "no spec.podCIDR"),
            (
                annotate(good.clone(), key::VTEP_MAC, None),
                "no weft annotations",
            ),
            (
                annotate(good.clone(), key::VTEP_MAC, Some("01:00:5e:00:00:01")),
                "group address",
            ),
            (
                annotate(good.clone(), key::VTEP_MAC, Some("nonsense")),
                "weft.dev/vtep-mac",
            ),
            (
                annotate(good.clone(), key::UNDERLAY_IP, Some("10.244.3.1")),
                "inside the cluster CIDR",
            ),
            (
                annotate(good.clone(), key::UNDERLAY_IP, Some("127.0.0.1")),
                "127.0.0.1 is a loopback address",
            ),
            (
                annotate(good.clone(), key::UNDERLAY_IP, Some("224.0.0.5")),
                "224.0.0.5 is multicast",
            ),
            (
                annotate(good.clone(), key::UNDERLAY_IP, Some("169.254.169.254")),
                "169.254.169.254 is link-local",
            ),
            (
                annotate(good.clone(), key::UNDERLAY_IP, Some("255.255.255.255")),
                "broadcast",
            ),
            (
                annotate(good.clone(), key::UNDERLAY_IP, Some("::1")),
                "weft.dev/underlay-ip",
            ),
            (
                annotate(good.clone(), key::MODE, Some("carrier-pigeon")),
                "weft.dev/mode",
            ),
            (
                annotate(good.clone(), key::DIRECT_ROUTING, Some("yes")),
                "weft.dev/direct-routing",
            ),
            (
                annotate(good.clone(), key::PORT, Some("4789")),
                "tunnel port is 4789",
            ),
            (
                annotate(good.clone(), key::PORT, Some("99999")),
                "weft.dev/port",
            ),
            (
                annotate(good.clone(), key::PUBLIC_KEY, Some("abc")),
                "weft.dev/public-key",
            ),
            (
                node(
                    "b",
                    "10.245.0.0/24",
                    "192.168.0.2",
                    "02:00:00:00:00:02",
                    "2026-12-07T00:00:00Z",
                ),
                "no subnet of",
            ),
            (
                node(
                    "b",
                    "10.244.1.1/24",
                    "192.168.0.2",
                    "02:00:00:00:00:02",
                    "2026-12-07T00:00:00Z",
                ),
                "no subnet of",
            ),
            (
                node(
                    "b",
                    "garbage",
                    "192.168.0.2",
                    "02:00:00:00:00:02",
                    "2026-12-07T00:00:00Z",
                ),
                "spec.podCIDR",
            ),
        ];
        for (n, why) in cases {
            let err = node_entry(&n, cluster(), PORT).unwrap_err();
            assert!(err.contains(why), "{err:?} does not say {why:?}");
        }
        // Dual stack, IPv6 first: the IPv4 range is the one.
        let mut dual = good.clone();
        let spec = dual.spec.as_mut().unwrap();
        spec.pod_cidr = Some("fd00:10:244:1::/64".into());
        spec.pod_cidrs = Some(vec!["fd00:10:244:1::/64".into(), "10.244.1.0/24".into()]);
        assert_eq!(
            node_entry(&dual, cluster(), PORT)
                .unwrap()
                .pod_subnet
                .to_string(),
            "10.244.1.0/24"
        );
        // No annotation and no InternalIP: no underlay address.
        let mut bare = good.clone();
        bare.status = None;
        assert!(node_entry(&bare, cluster(), PORT)
            .unwrap_err()
            .contains("no underlay"));
        // A direct-routing node's port does not matter.
        let direct = annotate(
            annotate(good, key::MODE, Some("direct")),
            key::PORT,
            Some("1"),
        );
        assert!(node_entry(&direct, cluster(), PORT).is_ok());
    }

    #[test]
    fn the_older_node_keeps_what_two_claim_and_this_node_keeps_its_own() {
        let t1 = "2026-12-07T00:00:01Z";
        let t2 = "2026-12-07T00:00:02Z";
        let nodes = vec![
            node(
                "young",
                "10.244.1.0/25",
                "192.168.0.9",
                "02:00:00:00:00:09",
                t2,
            ),
            node(
                "old",
                "10.244.1.0/24",
                "192.168.0.1",
                "02:00:00:00:00:01",
                t1,
            ),
            node(
                "samemac",
                "10.244.5.0/24",
                "192.168.0.5",
                "02:00:00:00:00:01",
                t2,
            ),
            node(
                "sameip",
                "10.244.6.0/24",
                "192.168.0.1",
                "02:00:00:00:00:06",
                t2,
            ),
            node(
                "fine",
                "10.244.2.0/24",
                "192.168.0.2",
                "02:00:00:00:00:02",
                t2,
            ),
            node(
                "broken",
                "10.244.3.0/24",
                "192.168.0.3",
                "ff:ff:ff:ff:ff:ff",
                t1,
            ),
        ];
        let v = nodes_view(&nodes, "fine", cluster(), PORT);
        let used: Vec<_> = v.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(used, ["fine", "old"]);
        let skipped: Vec<_> = v.skipped.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(skipped, ["broken", "sameip", "samemac", "young"]);
        assert!(v
            .skipped
            .iter()
            .all(|s| s.resource_version == "7" && !s.why.is_empty()));
        // Seen from "young", it keeps its own subnet and "old" is the one skipped.
        let v = nodes_view(&nodes, "young", cluster(), PORT);
        assert_eq!(v.nodes[0].name, "young");
        assert!(v
            .skipped
            .iter()
            .any(|s| s.node == "old" && s.why.contains("overlaps")));
    }
}
