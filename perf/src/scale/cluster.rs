//! The cluster `weft-perf scale` feeds one weftd: nodes, namespaces, pods and
//! NetworkPolicies, made the same way every time from the sizes asked for, as
//! Kubernetes JSON; and the churn that follows, from a seeded generator.
//!
//! Node `i` has the pod subnet `100.64.0.0/10`'s `i`-th /24 and an underlay
//! address in [`FAKE_UNDERLAY`], which the run routes into a sink: nothing answers
//! there, and no neighbour entry is made per node. Pods are spread over the nodes
//! and namespaces round-robin, each with an address of its node's subnet. Each
//! namespace has [`APPS`] apps; policy `q` selects one app of one namespace and
//! admits two tiers of its namespace on the named port `http`, and the namespaces
//! of one team on TCP 443.
//!
//! The probe objects are apart: namespace [`PROBE_NS`], a pod of this node
//! ([`PROBE_TARGET`]) selected by policy `probe`, which admits pods labelled
//! `probe=in` on TCP 80, and a pod of node 0 ([`PROBE_SOURCE`]) whose label an
//! update flips between `in` and `out`. Each flip changes the rules of a pod on
//! this node, which is what a probe waits for.

use std::net::Ipv4Addr;

use anyhow::{ensure, Result};
use ipnet::Ipv4Net;
use serde_json::{json, Value};

/// The cluster CIDR of every scale run: room for 16,384 nodes' /24s.
pub const CLUSTER_CIDR: &str = "100.64.0.0/10";
/// Where the fake nodes' underlay addresses are.
pub const FAKE_UNDERLAY: &str = "10.251.0.0/16";
/// The tunnel port of every node (VXLAN's).
pub const PORT: u16 = 8472;
/// Apps per namespace.
pub const APPS: usize = 20;
/// Teams: namespace `k` is team `t(k % TEAMS)`.
pub const TEAMS: usize = 10;
/// The probe's namespace.
pub const PROBE_NS: &str = "scale-probe";
/// The pod on the node under test that the probe policy selects.
pub const PROBE_TARGET: &str = "probe-target";
/// The pod of node 0 whose label the probes flip.
pub const PROBE_SOURCE: &str = "probe-source";
/// The port the probe policy admits.
pub const PROBE_PORT: u16 = 80;
/// The most nodes: the /24s of the cluster CIDR, less some for the node under test.
pub const MAX_NODES: usize = 16_000;
/// The most pods per node: the addresses of a /24 from .2, less the churn's and
/// the probe's.
pub const MAX_PODS_PER_NODE: usize = 240;

/// The sizes of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sizes {
    /// Nodes besides the one under test.
    pub nodes: usize,
    /// Pods on them.
    pub pods: usize,
    /// NetworkPolicies.
    pub policies: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Pods attached on the node under test (the probe's target is one of them).
    pub local_pods: usize,
}

impl Sizes {
    /// Checks the sizes can be laid out.
    pub fn check(&self) -> Result<()> {
        ensure!(
            (1..=MAX_NODES).contains(&self.nodes),
            "--nodes must be 1 to {MAX_NODES}"
        );
        ensure!(self.namespaces >= 1, "--namespaces must be at least 1");
        ensure!(
            self.pods <= self.nodes * MAX_PODS_PER_NODE,
            "--pods: at most {MAX_PODS_PER_NODE} a node"
        );
        ensure!(
            (1..=200).contains(&self.local_pods),
            "--local-pods must be 1 to 200"
        );
        Ok(())
    }
}

/// A fake node: its name, underlay address, pod subnet and VTEP MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeNode {
    /// `scale-<i>`.
    pub name: String,
    /// In [`FAKE_UNDERLAY`].
    pub underlay: Ipv4Addr,
    /// The `i`-th /24 of [`CLUSTER_CIDR`].
    pub subnet: Ipv4Net,
    /// `0a:57:00:00:hi:lo`: unicast, locally administered.
    pub mac: String,
}

/// Fake node `i` (below [`MAX_NODES`]).
pub fn fake_node(i: usize) -> FakeNode {
    let n = i as u32;
    FakeNode {
        name: format!("scale-{i}"),
        underlay: Ipv4Addr::new(10, 251, (i / 250) as u8, (i % 250) as u8 + 1),
        subnet: subnet(i),
        mac: format!("0a:57:00:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
    }
}

/// The `i`-th /24 of the cluster CIDR.
pub fn subnet(i: usize) -> Ipv4Net {
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + ((i as u32) << 8);
    Ipv4Net::new(base.into(), 24).unwrap_or_default()
}

/// Host `n` of `subnet` (`n` from 1).
fn host(subnet: Ipv4Net, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + n as u32)
}

/// Namespace `k`'s name.
pub fn namespace_name(k: usize) -> String {
    format!("ns-{k}")
}

/// A Kubernetes object: its kind, namespace ("" for cluster-scoped), name and JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// `Node`, `Namespace`, `Pod` or `NetworkPolicy`.
    pub kind: &'static str,
    /// Its namespace, or "".
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The object as the API reference shows it.
    pub json: Value,
}

/// A Namespace.
pub fn namespace(name: &str, labels: Value) -> Object {
    Object {
        kind: "Namespace",
        namespace: String::new(),
        name: name.to_owned(),
        json: json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}
        }),
    }
}

/// A running Pod on `node` at `ip`, serving `http` on 8080.
pub fn pod(ns: &str, name: &str, node: &str, ip: Ipv4Addr, labels: Value) -> Object {
    Object {
        kind: "Pod",
        namespace: ns.to_owned(),
        name: name.to_owned(),
        json: json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [{
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
                }]
            },
            "status": {
                "phase": "Running",
                "podIP": ip.to_string(),
                "podIPs": [{"ip": ip.to_string()}]
            }
        }),
    }
}

/// A NetworkPolicy of `ns` selecting `selector`, with `ingress` rules.
pub fn policy(ns: &str, name: &str, selector: Value, ingress: Value) -> Object {
    Object {
        kind: "NetworkPolicy",
        namespace: ns.to_owned(),
        name: name.to_owned(),
        json: json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": selector, "policyTypes": ["Ingress"], "ingress": ingress}
        }),
    }
}

/// Pod `p`'s labels, at generation `generation` (churn changes it).
fn pod_labels(sizes: &Sizes, p: usize, generation: u64) -> Value {
    let tier = ["web", "api", "db"][(p + generation as usize) % 3];
    json!({
        "app": format!("a{}", (p / sizes.namespaces) % APPS),
        "tier": tier,
        "gen": generation.to_string()
    })
}

/// Pod `p` of the cluster, at label generation `generation`.
pub fn cluster_pod(sizes: &Sizes, p: usize, generation: u64) -> Object {
    let node = fake_node(p % sizes.nodes);
    let ip = host(node.subnet, 2 + p / sizes.nodes);
    let ns = namespace_name(p % sizes.namespaces);
    let labels = pod_labels(sizes, p, generation);
    pod(&ns, &format!("pod-{p}"), &node.name, ip, labels)
}

/// Policy `q` of the cluster.
pub fn cluster_policy(sizes: &Sizes, q: usize) -> Object {
    let ns = namespace_name(q % sizes.namespaces);
    let app = format!("a{}", (q / sizes.namespaces) % APPS);
    policy(
        &ns,
        &format!("pol-{q}"),
        json!({"matchLabels": {"app": app}}),
        json!([
            {
                "from": [{"podSelector": {"matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["web", "api"]}
                ]}}],
                "ports": [{"protocol": "TCP", "port": "http"}]
            },
            {
                "from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", q % TEAMS)}}}],
                "ports": [{"protocol": "TCP", "port": 443}]
            }
        ]),
    )
}

/// The local pods' names and namespaces: the probe's target, then `local-<j>` in
/// namespace `j % namespaces`, app `a0` (selected by policy `j % namespaces` when
/// there is one).
pub fn local_pod_refs(sizes: &Sizes) -> Vec<(String, String)> {
    let mut out = vec![(PROBE_NS.to_owned(), PROBE_TARGET.to_owned())];
    for j in 1..sizes.local_pods {
        out.push((namespace_name(j % sizes.namespaces), format!("local-{j}")));
    }
    out
}

/// The store objects of the local pods, on node `me`, with no address yet: a
/// local pod's address is its attachment's, which weftd gives it later.
pub fn local_pods(sizes: &Sizes, me: &str) -> Vec<Object> {
    local_pod_refs(sizes)
        .into_iter()
        .enumerate()
        .map(|(j, (ns, name))| {
            let labels = match j {
                0 => json!({"app": PROBE_TARGET}),
                _ => json!({"app": "a0", "tier": "db"}),
            };
            let mut o = pod(&ns, &name, me, Ipv4Addr::UNSPECIFIED, labels);
            o.json["status"] = json!({"phase": "Pending"});
            o
        })
        .collect()
}

/// The probe's source pod, with `probe` labelled `in` or `out`.
pub fn probe_source(admitted: bool) -> Object {
    let ip = host(subnet(0), 250);
    let labels = json!({"probe": if admitted { "in" } else { "out" }});
    pod(PROBE_NS, PROBE_SOURCE, &fake_node(0).name, ip, labels)
}

/// The probe's namespace and policy.
pub fn probe_objects() -> Vec<Object> {
    vec![
        namespace(PROBE_NS, json!({"team": "probe"})),
        policy(
            PROBE_NS,
            "probe",
            json!({"matchLabels": {"app": PROBE_TARGET}}),
            json!([{
                "from": [{"podSelector": {"matchLabels": {"probe": "in"}}}],
                "ports": [{"protocol": "TCP", "port": PROBE_PORT}]
            }]),
        ),
    ]
}

/// Every namespace, pod and policy of the cluster, with the probe's and the local
/// pods' (on node `me`); the nodes are apart, as each store writes them its way.
pub fn objects(sizes: &Sizes, me: &str) -> impl Iterator<Item = Object> {
    let s = *sizes;
    let namespaces = (0..s.namespaces).map(|k| {
        let labels = json!({"team": format!("t{}", k % TEAMS)});
        namespace(&namespace_name(k), labels)
    });
    let pods = (0..s.pods).map(move |p| cluster_pod(&s, p, 0));
    let policies = (0..s.policies).map(move |q| cluster_policy(&s, q));
    let probe = probe_objects().into_iter().chain([probe_source(false)]);
    namespaces
        .chain(pods)
        .chain(policies)
        .chain(probe)
        .chain(local_pods(&s, me))
}

/// What a weftd should hold once it has the whole cluster, with `attached` of the
/// local pods attached: (namespaces, known pods, policies). A known pod has an
/// address: the cluster's pods and the probe's source have one from the store,
/// the local pods from their attachments.
pub fn expected_counts(sizes: &Sizes, attached: usize) -> (usize, usize, usize) {
    (
        sizes.namespaces + 1,
        sizes.pods + 1 + attached,
        sizes.policies + 1,
    )
}

/// One change to the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Creates or replaces an object.
    Put(Object),
    /// Deletes a Pod.
    DeletePod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// A small, seeded generator (splitmix64): the same churn every run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// The churn: pods added, deleted and relabelled, in the proportions of a busy
/// cluster (a rolling update is mostly adds and deletes; controllers relabel).
#[derive(Debug, Clone)]
pub struct Churn {
    sizes: Sizes,
    rng: Rng,
    /// Pods added by the churn and not deleted since, by number.
    added: Vec<usize>,
    next_added: usize,
    /// Each cluster pod's label generation.
    generation: Vec<u64>,
}

impl Churn {
    /// The churn of the cluster of `sizes`.
    pub fn new(sizes: Sizes, seed: u64) -> Churn {
        Churn {
            sizes,
            rng: Rng::new(seed),
            added: Vec::new(),
            next_added: 0,
            generation: vec![0; sizes.pods],
        }
    }

    /// A pod the churn adds: number `k`, on a node and in a namespace by `k`.
    fn added_pod(&self, k: usize) -> Object {
        let s = &self.sizes;
        let node = fake_node(k % s.nodes);
        // Addresses above the cluster's pods' and below the probe's.
        let slot = 249 - (k / s.nodes) % 8;
        let labels = json!({"app": format!("a{}", k % APPS), "tier": "web", "gen": "0"});
        let ns = namespace_name(k % s.namespaces);
        pod(
            &ns,
            &format!("churn-{k}"),
            &node.name,
            host(node.subnet, slot),
            labels,
        )
    }

    /// The next update.
    pub fn next_update(&mut self) -> Update {
        let roll = self.rng.below(10);
        if roll < 3 || self.sizes.pods == 0 {
            let k = self.next_added;
            self.next_added += 1;
            self.added.push(k);
            return Update::Put(self.added_pod(k));
        }
        if roll < 6 && !self.added.is_empty() {
            let i = self.rng.below(self.added.len());
            let k = self.added.swap_remove(i);
            let pod = self.added_pod(k);
            return Update::DeletePod {
                namespace: pod.namespace,
                name: pod.name,
            };
        }
        // Relabel a pod of the cluster: its tier moves on.
        let p = self.rng.below(self.sizes.pods);
        self.generation[p] += 1;
        Update::Put(cluster_pod(&self.sizes, p, self.generation[p]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> Sizes {
        Sizes {
            nodes: 20,
            pods: 200,
            policies: 20,
            namespaces: 4,
            local_pods: 3,
        }
    }

    #[test]
    fn nodes_have_distinct_subnets_addresses_and_macs() {
        let nodes: Vec<FakeNode> = (0..MAX_NODES).step_by(7).map(fake_node).collect();
        let set = |f: &dyn Fn(&FakeNode) -> String| {
            nodes
                .iter()
                .map(f)
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        assert_eq!(set(&|n| n.subnet.to_string()), nodes.len());
        assert_eq!(set(&|n| n.underlay.to_string()), nodes.len());
        assert_eq!(set(&|n| n.mac.clone()), nodes.len());
        let cluster: Ipv4Net = CLUSTER_CIDR.parse().unwrap();
        let fake: Ipv4Net = FAKE_UNDERLAY.parse().unwrap();
        for n in &nodes {
            assert!(
                cluster.contains(&n.subnet) && fake.contains(&n.underlay),
                "{n:?}"
            );
        }
        assert_eq!(fake_node(257).mac, "0a:57:00:00:01:01");
    }

    #[test]
    fn the_cluster_has_what_its_sizes_say() {
        let s = sizes();
        let all: Vec<Object> = objects(&s, "node-0").collect();
        let count = |kind| all.iter().filter(|o| o.kind == kind).count();
        let (namespaces, pods, policies) = expected_counts(&s, 0);
        assert_eq!(count("Namespace"), namespaces);
        assert_eq!(count("Pod"), pods + s.local_pods);
        assert_eq!(count("NetworkPolicy"), policies);
        let pod = cluster_pod(&s, 45, 0);
        assert_eq!(pod.namespace, "ns-1");
        assert_eq!(pod.json["status"]["podIP"], "100.64.5.4");
        assert_eq!(pod.json["spec"]["nodeName"], "scale-5");
    }

    #[test]
    fn churn_adds_deletes_and_relabels_deterministically() {
        let mut a = Churn::new(sizes(), 7);
        let mut b = Churn::new(sizes(), 7);
        let updates: Vec<Update> = (0..300).map(|_| a.next_update()).collect();
        assert!(updates
            .iter()
            .zip((0..300).map(|_| b.next_update()))
            .all(|(x, y)| *x == y));
        let deletes = updates
            .iter()
            .filter(|u| matches!(u, Update::DeletePod { .. }))
            .count();
        let adds = updates
            .iter()
            .filter(|u| matches!(u, Update::Put(o) if o.name.starts_with("churn-")))
            .count();
        assert!(
            deletes > 30 && adds > 30 && adds + deletes < 280,
            "{adds} {deletes}"
        );
    }
}
