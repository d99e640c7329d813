//! weft on the Kubernetes store, end to end: weftd nodes in network namespaces
//! take their subnets from their Nodes' podCIDRs, publish their annotations, and
//! follow Nodes, Pods, Namespaces, NetworkPolicies, Services and EndpointSlices.
//!
//! The API server is `weft_perf::apiserver`, a fixture of the project's own (no
//! real API server can be installed on these machines): it serves list/watch
//! over HTTPS as the API server does, inside the first host's namespace, with
//! literal JSON objects written here as kubelet and the controllers would write
//! them. The RBAC of `deploy/kubernetes/` is checked against what it logged.
//!
//! These tests need root (they create namespaces); they fail, never skip,
//! without it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_perf::apiserver::http::{bind_in, Server};
use weft_perf::apiserver::{Kind, KINDS};
use weft_perf::netns::{require_root, wait_until};
use weft_perf::probe::{probe, serve, Proto, Receiver, Sender};
use weft_perf::topo::{Pod, Underlay};
use weft_perf::weft::{
    node_name, pod_subnet6, write_atomic, Scratch, WeftNode, WeftOptions, CLUSTER_CIDR_V6,
};
use weft_proto::{PodRef, Reply, Request};

/// The token weftd presents; the fixture refuses any other.
const TOKEN: &str = "weft-test-token";
/// The fixture's port, on the first host's underlay address.
const API_PORT: u16 = 6443;
/// How long anything the API server says may take to reach every node: generous,
/// as the figures belong in the benchmark.
const SETTLE: Duration = Duration::from_secs(30);

fn kind(name: &str) -> Kind {
    *KINDS.iter().find(|k| k.kind == name).expect("a kind")
}

/// A pod of a test: its namespace, name, host, netns and address.
struct Member {
    ns: String,
    name: String,
    host: usize,
    pod: Pod,
    ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack node.
    ip6: Option<Ipv6Addr>,
}

/// weftd nodes on the fixture. Fields drop in order: servers and nodes first,
/// the fixture, then the namespaces.
struct Kube {
    stop: Arc<AtomicBool>,
    servers: Vec<std::thread::JoinHandle<()>>,
    nodes: Vec<Option<WeftNode>>,
    members: Vec<Member>,
    api: Server,
    kubeconfig: PathBuf,
    underlay: Underlay,
    scratch: Scratch,
}

impl Drop for Kube {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
    }
}

/// A Node as kubelet registers it and the controller manager gives it a podCIDR
/// (none, with `cidr` empty).
fn node_object(name: &str, cidr: &str, ip: Ipv4Addr) -> Value {
    let mut node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name},
                     "creationTimestamp": "2026-12-07T00:00:00Z"},
        "spec": {},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip.to_string()},
                          {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": "2026-12-07T00:00:00Z",
                            "lastTransitionTime": "2026-12-07T00:00:00Z"}],
            "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320368}]
        }
    });
    if !cidr.is_empty() {
        node["spec"] = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
    }
    node
}

/// A Pod as kubelet reports it running at `ip` on `node`, serving the e2e
/// suite's ports.
fn pod_object(ns: &str, name: &str, node: &str, ip: Ipv4Addr, labels: &Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels,
                     "uid": format!("uid-{ns}-{name}"),
                     "creationTimestamp": "2026-12-07T00:00:00Z"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "agnhost",
            "ports": [{"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
                      {"name": "serve-81-tcp", "containerPort": 81, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn namespace_object(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, "ns": name}}})
}

fn policy_object(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns, "generation": 1}, "spec": spec})
}

impl Kube {
    /// `hosts` hosts and the fixture; no Node and no weftd yet.
    fn new(tag: &str, hosts: usize) -> Kube {
        require_root();
        let underlay = Underlay::new(tag, hosts).expect("underlay");
        let scratch = Scratch::new(tag).expect("scratch");
        let host = underlay.host(0);
        let addr = SocketAddr::from((host.underlay_ip, API_PORT));
        let api = Server::start_with(addr, TOKEN, bind_in(host.ns.path())).expect("the fixture");
        let kubeconfig = scratch.path().join("kubeconfig");
        write_atomic(&kubeconfig, &api.kubeconfig(TOKEN)).unwrap();
        Kube {
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
            nodes: (0..hosts).map(|_| None).collect(),
            members: Vec::new(),
            api,
            kubeconfig,
            underlay,
            scratch,
        }
    }

    /// Registers host `i`'s Node, with its pod subnet as the podCIDR.
    fn put_node(&self, i: usize) {
        let h = self.underlay.host(i);
        let n = node_object(&node_name(h), &h.pod_subnet.to_string(), h.underlay_ip);
        self.api.put(kind("Node"), n);
    }

    /// Starts weftd on host `i`.
    fn start(&mut self, i: usize) -> &WeftNode {
        self.start_with(i, &[])
    }

    /// Starts weftd on host `i` with the further flags `extra`.
    fn start_with(&mut self, i: usize, extra: &[&str]) -> &WeftNode {
        let h = self.underlay.host(i);
        let node = self
            .try_start(i, extra)
            .unwrap_or_else(|e| panic!("weftd on host {} ({}): {e:#}", i, h.index));
        self.nodes[i].insert(node)
    }

    /// Starts weftd on host `i` with the further flags `extra`, or says why not.
    fn try_start(&self, i: usize, extra: &[&str]) -> anyhow::Result<WeftNode> {
        let opts = WeftOptions {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_weftd")),
            mode: "vxlan".into(),
            workers: 1,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let h = self.underlay.host(i);
        WeftNode::start_kube(h, &self.kubeconfig, self.scratch.path(), &opts)
    }

    fn node(&self, i: usize) -> &WeftNode {
        self.nodes[i].as_ref().expect("a running node")
    }

    fn running(&self) -> impl Iterator<Item = &WeftNode> {
        self.nodes.iter().flatten()
    }

    /// Attaches pod `ns/name` on host `host`, serving, and reports it to the API
    /// server with `labels`, as kubelet would.
    fn attach(&mut self, host: usize, ns: &str, name: &str, labels: Value) -> Ipv4Addr {
        let pod = self
            .underlay
            .pod(host, &format!("{ns}{name}"))
            .expect("pod netns");
        let k8s = PodRef {
            namespace: ns.into(),
            name: name.into(),
        };
        let id = format!("{ns}-{name}");
        let a = self
            .node(host)
            .attach_as(&pod, &id, Some(k8s))
            .expect("attach");
        self.servers.extend(serve(&pod, a.ip, &self.stop));
        let node = node_name(self.underlay.host(host));
        self.api
            .put(kind("Pod"), pod_object(ns, name, &node, a.ip, &labels));
        self.members.push(Member {
            ns: ns.into(),
            name: name.into(),
            host,
            pod,
            ip: a.ip,
            ip6: a.ipv6.map(|v6| v6.ip),
        });
        a.ip
    }

    fn member(&self, ns: &str, name: &str) -> &Member {
        (self.members.iter())
            .find(|m| m.ns == ns && m.name == name)
            .expect("a member")
    }

    /// Relabels pod `ns/name` in the API server.
    fn relabel(&self, ns: &str, name: &str, labels: Value) {
        let m = self.member(ns, name);
        let node = node_name(self.underlay.host(m.host));
        self.api
            .put(kind("Pod"), pod_object(ns, name, &node, m.ip, &labels));
    }

    fn logs(&self) -> String {
        self.running()
            .map(|n| format!("--- {}\n{}\n", n.name, n.log_text()))
            .collect()
    }

    /// Waits until `ok` holds on every running node.
    fn on_every_node(&self, what: &str, ok: impl Fn(&WeftNode) -> bool) {
        self.on_every_node_within(SETTLE, what, ok);
    }

    /// Waits up to `limit` until `ok` holds on every running node.
    fn on_every_node_within(&self, limit: Duration, what: &str, ok: impl Fn(&WeftNode) -> bool) {
        wait_until(limit, what, || self.running().all(&ok))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    fn peer_names(&self, i: usize) -> Vec<String> {
        self.node(i).peer_names().unwrap_or_default()
    }

    /// The object counts `weft status` shows for node `n`.
    fn objects(n: &WeftNode) -> BTreeMap<String, usize> {
        let store = n.status().ok().and_then(|s| s.store);
        store
            .map(|s| s.objects.into_iter().collect())
            .unwrap_or_default()
    }

    /// Probes every pair on TCP port 80 until the result is the truth table
    /// `expect(from, to)` (a pod always reaches itself), within [`SETTLE`];
    /// panics with both grids if it never is.
    fn check(&self, what: &str, expect: impl Fn(&Member, &Member) -> bool) {
        let pairs: Vec<(&Member, &Member)> = (self.members.iter())
            .flat_map(|f| self.members.iter().map(move |t| (f, t)))
            .collect();
        let want: Vec<bool> = (pairs.iter())
            .map(|(f, t)| std::ptr::eq(*f, *t) || expect(f, t))
            .collect();
        let deadline = Instant::now() + SETTLE;
        loop {
            let got: Vec<bool> = std::thread::scope(|s| {
                let probes: Vec<_> = (pairs.iter())
                    .map(|(f, t)| s.spawn(move || probe(&f.pod, t.ip, Proto::Tcp, 80)))
                    .collect();
                probes.into_iter().map(|p| p.join().unwrap()).collect()
            });
            if got == want {
                return;
            }
            if Instant::now() > deadline {
                let grid = |cells: &[bool]| -> String {
                    let mut out = String::new();
                    for (i, f) in self.members.iter().enumerate() {
                        out += &format!("{:>4}/{:<4}", f.ns, f.name);
                        for j in 0..self.members.len() {
                            let k = i * self.members.len() + j;
                            let mark = if cells[k] == want[k] { "" } else { "!" };
                            out += &format!(" {}{mark}", if cells[k] { "." } else { "X" });
                        }
                        out += "\n";
                    }
                    out
                };
                panic!(
                    "{what}: the probes never matched the truth table (rows from, columns to; X denied, ! wrong)\nexpected:\n{}got:\n{}{}",
                    grid(&want),
                    grid(&got),
                    self.logs()
                );
            }
        }
    }

    /// The ids of the NetworkPolicies node `n` has in force, and its errors.
    fn in_force(n: &WeftNode) -> (Vec<String>, Vec<String>) {
        match n.ok(&Request::PolicyStatus) {
            Ok(Reply::PolicyStatus(s)) => {
                let mut ids: Vec<String> = s.policies.into_iter().map(|p| p.id).collect();
                ids.sort();
                (ids, s.errors)
            }
            other => panic!("{other:?}"),
        }
    }
}

/// (verb, resource with its group) pairs a ClusterRole in `deploy/kubernetes/`
/// grants, read from the manifest.
fn granted() -> BTreeSet<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/rbac.yaml"
    );
    let text = std::fs::read_to_string(path).expect("rbac.yaml");
    let mut out = BTreeSet::new();
    for doc in yaml_serde::Deserializer::from_str(&text) {
        let doc: Value = serde::Deserialize::deserialize(doc).expect("YAML");
        if doc["kind"] != "ClusterRole" {
            continue;
        }
        for rule in doc["rules"].as_array().expect("rules") {
            let strings = |k: &str| -> Vec<String> {
                (rule[k].as_array().into_iter().flatten())
                    .map(|v| v.as_str().expect("a string").to_owned())
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        let r = match group.as_str() {
                            "" => resource.clone(),
                            g => format!("{g}/{resource}"),
                        };
                        out.insert((verb, r));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn nodes_take_their_podcidr_peer_through_node_objects_and_rbac_is_what_they_use() {
    let mut k = Kube::new("kn", 4);
    for i in 0..3 {
        k.put_node(i);
    }
    // A Node whose annotation is bad, and one with no podCIDR: each skipped, named.
    let mut bad = node_object(
        "bad-annotation",
        "10.244.200.0/24",
        Ipv4Addr::new(10, 250, 0, 200),
    );
    bad["metadata"]["annotations"] = json!({"weft.dev/vtep-mac": "not-a-mac"});
    k.api.put(kind("Node"), bad);
    k.api.put(
        kind("Node"),
        node_object("no-cidr", "", Ipv4Addr::new(10, 250, 0, 201)),
    );
    for i in 0..3 {
        k.start(i);
    }
    for i in 0..3 {
        let h = k.underlay.host(i);
        let status = k.node(i).status().unwrap();
        assert_eq!(status.pod_subnet, h.pod_subnet.to_string(), "podCIDR");
        let store = status.store.expect("a store");
        assert_eq!(store.kind, "kubernetes");
        // What the node published, and kubelet's Ready beside weft's condition.
        let node = k
            .api
            .with_state(|s| s.get(kind("Node"), "", &node_name(h)).cloned());
        let node = node.expect("the Node");
        let a = &node["metadata"]["annotations"];
        assert_eq!(
            a["weft.dev/underlay-ip"],
            h.underlay_ip.to_string(),
            "{node}"
        );
        assert_eq!(a["weft.dev/mode"], "vxlan");
        assert_eq!(a["weft.dev/port"], "8472");
    }
    k.on_every_node("the conditions set", |n| {
        let node = k
            .api
            .with_state(|s| s.get(kind("Node"), "", &n.name).cloned());
        let conditions = node
            .map(|n| n["status"]["conditions"].clone())
            .unwrap_or_default();
        let of = |t: &str| {
            (conditions.as_array().into_iter().flatten())
                .find(|c| c["type"] == t)
                .map(|c| c["status"].clone())
        };
        of("NetworkUnavailable") == Some(json!("False")) && of("Ready") == Some(json!("True"))
    });
    k.on_every_node("two peers each", |n| n.peer_names().unwrap().len() == 2);
    let log = k.logs();
    assert!(
        log.contains("skipping Node bad-annotation") && log.contains("not-a-mac"),
        "{log}"
    );
    assert!(
        log.contains("skipping Node no-cidr") && log.contains("podCIDR"),
        "{log}"
    );
    for i in 0..3 {
        k.attach(i, "default", &format!("p{i}"), json!({"app": "p"}));
    }
    ping_all(&k);

    // A fourth node joins: reachable with no restart of the others.
    k.put_node(3);
    k.start(3);
    k.attach(3, "default", "p3", json!({"app": "p"}));
    let fourth = node_name(k.underlay.host(3));
    k.on_every_node("every node to list the fourth", |n| {
        n.name == fourth || n.peer_names().unwrap().contains(&fourth)
    });
    ping_all(&k);
    assert!(
        k.running()
            .all(|n| Kube::objects(n).get("nodes") == Some(&6)),
        "{:?}",
        Kube::objects(k.node(0))
    );

    // The fourth Node is deleted: it leaves every peer.
    k.api.delete(kind("Node"), "", &fourth);
    for i in 0..3 {
        wait_until(SETTLE, "the deleted Node to leave", || {
            !k.peer_names(i).contains(&fourth)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", k.logs()));
    }

    // RBAC: exactly what weftd asked for, nothing it did not.
    let asked: BTreeSet<(String, String)> = (k.api.log().into_iter())
        .map(|l| (l.verb.to_owned(), l.resource))
        .collect();
    assert!(
        !asked.iter().any(|(verb, _)| verb == "unserved"),
        "{asked:?}"
    );
    let rbac = granted();
    let missing: Vec<_> = asked.difference(&rbac).collect();
    let unused: Vec<_> = rbac.difference(&asked).collect();
    assert!(
        missing.is_empty(),
        "requests rbac.yaml does not grant: {missing:?}"
    );
    assert!(unused.is_empty(), "grants weftd never used: {unused:?}");
}

/// Pings every pair of the test's pods.
fn ping_all(k: &Kube) {
    for a in &k.members {
        for b in &k.members {
            if !std::ptr::eq(a, b) {
                a.pod
                    .ns
                    .ping(b.ip, 2)
                    .unwrap_or_else(|e| panic!("ping {} -> {}: {e}\n{}", a.name, b.name, k.logs()));
            }
        }
    }
}

/// Namespaces x, y and z, pods a, b and c in each, on three nodes: the upstream
/// e2e suite's layout.
fn netpol_cluster(tag: &str) -> Kube {
    let mut k = Kube::new(tag, 3);
    for i in 0..3 {
        k.put_node(i);
    }
    for ns in ["x", "y", "z"] {
        k.api.put(kind("Namespace"), namespace_object(ns));
    }
    for i in 0..3 {
        k.start(i);
    }
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        for (p, name) in ["a", "b", "c"].iter().enumerate() {
            k.attach((n + p) % 3, ns, name, json!({"pod": name}));
        }
    }
    k
}

#[test]
fn network_policy_from_api_objects_follows_labels_deletion_and_reused_addresses() {
    let k = netpol_cluster("kp");
    k.check("no policy", |_, _| true);

    // x/a takes ingress only from pods labelled pod=b in namespaces labelled ns=y.
    let spec = json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                               "podSelector": {"matchLabels": {"pod": "b"}}}]}]});
    k.api
        .put(kind("NetworkPolicy"), policy_object("x", "allow-yb", spec));
    let only_yb =
        |f: &Member, t: &Member| !(t.ns == "x" && t.name == "a") || (f.ns == "y" && f.name == "b");
    k.check("x/a from y/b only", only_yb);
    k.on_every_node("the policy in force", |n| {
        Kube::in_force(n).0 == ["x/allow-yb"]
    });

    // y/b is relabelled: it no longer matches.
    k.relabel("y", "b", json!({"pod": "bb"}));
    let none_in = |_: &Member, t: &Member| !(t.ns == "x" && t.name == "a");
    k.check("y/b relabelled", none_in);

    // A finished pod labelled pod=b in y holds y/a's address (y/a runs on
    // another node than x/a: a pod attached on x/a's own node is known there by
    // its attachment, whatever the API says): finished, it matches nothing, so
    // y/a gets no access through it.
    let ya = k.member("y", "a");
    assert_ne!(ya.host, k.member("x", "a").host);
    let mut ghost = pod_object("y", "old", "node-1", ya.ip, &json!({"pod": "b"}));
    ghost["status"]["phase"] = json!("Succeeded");
    // Newer than y/a: of two running pods on one address, the newer holds it.
    ghost["metadata"]["creationTimestamp"] = json!("2026-12-07T01:00:00Z");
    k.api.put(kind("Pod"), ghost.clone());
    std::thread::sleep(Duration::from_secs(2));
    k.check("a finished pod on y/a's address", none_in);
    // The same object running would match: the check above is not vacuous.
    ghost["status"]["phase"] = json!("Running");
    k.api.put(kind("Pod"), ghost);
    let ya_in = |f: &Member, t: &Member| none_in(f, t) || (f.ns == "y" && f.name == "a");
    k.check("a running pod on y/a's address", ya_in);
    // And deleted, it is gone.
    k.api.delete(kind("Pod"), "y", "old");
    k.check("the pod deleted", none_in);

    // A NetworkPolicy the API server should have refused, new: it isolates every
    // pod of its namespace for ingress, is named in the log and the status, and
    // nothing else changes.
    let bad = json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Near"}]}}]}]});
    k.api.put(
        kind("NetworkPolicy"),
        policy_object("z", "bad", bad.clone()),
    );
    let z_closed = |f: &Member, t: &Member| none_in(f, t) && t.ns != "z";
    k.check("a new bad policy in z", z_closed);
    k.on_every_node("the bad policy reported", |n| {
        let (ids, errors) = Kube::in_force(n);
        ids == ["x/allow-yb"]
            && errors.iter().any(|e| {
                e.contains("networkpolicies/z/bad")
                    && e.contains("namespace z is isolated for ingress")
            })
    });
    let log = k.logs();
    assert!(
        log.contains("NetworkPolicy z/bad does not read") && log.contains("Near"),
        "{log}"
    );
    // Read, it applies as written: z/a takes ingress from z/b only.
    let good = json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]});
    k.api
        .put(kind("NetworkPolicy"), policy_object("z", "bad", good));
    let za_from_zb = |f: &Member, t: &Member| {
        none_in(f, t) && (!(t.ns == "z" && t.name == "a") || (f.ns == "z" && f.name == "b"))
    };
    k.check("the policy read", za_from_zb);
    // Broken again, the version that read stays in force.
    k.api
        .put(kind("NetworkPolicy"), policy_object("z", "bad", bad));
    k.on_every_node("the last good version kept", |n| {
        let (ids, errors) = Kube::in_force(n);
        ids == ["x/allow-yb", "z/bad"]
            && errors
                .iter()
                .any(|e| e.contains("its last good version stays in force"))
    });
    k.check("the last good version kept", za_from_zb);
}

/// Services and EndpointSlices as the controllers write them.
fn service_object(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "x"},
           "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                    "selector": {"app": name},
                    "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}})
}

fn slice_object(service: &str, ip: Ipv4Addr) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-abc12"), "namespace": "x",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true},
                          "nodeName": "node-1"}],
           "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]})
}

/// Two nodes, namespace x, pods `pods` (host, name, labelled pod=name), and
/// the policy x/b-from-`from`: x/b takes ingress from pods labelled pod=`from`
/// only.
fn two_nodes(tag: &str, pods: &[(usize, &str)], from: &str) -> Kube {
    let mut k = Kube::new(tag, 2);
    k.put_node(0);
    k.put_node(1);
    k.api.put(kind("Namespace"), namespace_object("x"));
    k.start(0);
    k.start(1);
    for (host, name) in pods {
        k.attach(*host, "x", name, json!({ "pod": name }));
    }
    let spec = json!({"podSelector": {"matchLabels": {"pod": "b"}},
                      "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": from}}}]}]});
    let name = format!("b-from-{from}");
    k.api
        .put(kind("NetworkPolicy"), policy_object("x", &name, spec));
    k
}

#[test]
fn an_outage_keeps_traffic_policy_and_add_and_the_relist_drops_what_went_meanwhile() {
    let mut k = two_nodes("ko", &[(0, "a"), (1, "b"), (1, "c")], "a");
    let policy = |f: &Member, t: &Member| t.name != "b" || f.name == "a";
    k.check("before the outage", policy);
    for s in ["web", "db"] {
        let b = k.member("x", "b").ip;
        k.api.put(
            kind("Service"),
            service_object(
                s,
                if s == "web" {
                    "10.96.0.10"
                } else {
                    "10.96.0.11"
                },
            ),
        );
        k.api.put(kind("EndpointSlice"), slice_object(s, b));
    }
    let held = |n: &WeftNode, services: usize| {
        let o = Kube::objects(n);
        o.get("services") == Some(&services) && o.get("endpointslices") == Some(&services)
    };
    k.on_every_node("two Services held", |n| held(n, 2));

    // The API server goes for 10 s. Meanwhile a Service, its slice and a pod
    // are deleted, and the history is compacted.
    let gone = Instant::now();
    k.api.pause();
    k.api.with_state(|s| {
        s.delete(kind("Service"), "x", "db");
        s.delete(kind("EndpointSlice"), "x", "db-abc12");
        s.delete(kind("Pod"), "x", "c");
        s.compact();
    });
    k.on_every_node("the store degraded", |n| {
        n.status()
            .is_ok_and(|s| s.store.is_some_and(|st| st.state == "degraded"))
    });
    // Traffic flows, policy holds, and ADD works from the node's subnet.
    k.check("during the outage", policy);
    let d = k.attach(1, "x", "d", json!({"pod": "d"}));
    let subnet: ipnet::Ipv4Net = k.underlay.host(1).pod_subnet;
    assert!(subnet.contains(&d), "{d} from {subnet}");
    // Its Pod is in the API server, which is gone: weftd has not heard of it, so
    // it is judged by no labels at all, and isolated both ways until it is.
    let a = &k.member("x", "a").pod;
    assert!(
        !probe(a, d, Proto::Tcp, 80),
        "a pod not listed yet is isolated"
    );
    assert!(!probe(
        &k.member("x", "d").pod,
        k.member("x", "a").ip,
        Proto::Tcp,
        80
    ));
    let left = Duration::from_secs(10).saturating_sub(gone.elapsed());
    std::thread::sleep(left);
    k.api.resume().expect("the fixture back");

    // Back, with compacted history: a relist, and what went meanwhile is gone.
    // A watch retries within 30 s (the backoff's cap), and counts as working
    // after 10 s with no error.
    k.on_every_node_within(Duration::from_secs(90), "the store back", |n| {
        n.status()
            .is_ok_and(|s| s.store.is_some_and(|st| st.state == "ok"))
    });
    k.on_every_node("the deleted Service gone", |n| held(n, 1));
    k.on_every_node("the deleted pod gone", |n| {
        Kube::objects(n).get("pods") == Some(&3)
    });
    // x/d, listed now, is judged as its labels say; x/c, whose Pod was deleted
    // while it stays attached, is isolated both ways.
    k.check("after the outage", |f, t| {
        policy(f, t) && f.name != "c" && t.name != "c"
    });
}

/// A dual-stack cluster on the API server: each node takes the IPv6 range of its
/// Node's podCIDRs beside the IPv4 one, learns its peers' from their Nodes, and
/// pods reach each other over IPv6 across nodes. A node told the cluster is
/// dual-stack whose Node has no IPv6 range refuses to start, and says why.
#[test]
fn dual_stack_nodes_take_both_podcidrs_and_carry_ipv6_across() {
    let mut k = Kube::new("kd6", 3);
    for i in 0..3 {
        let h = k.underlay.host(i);
        let mut n = node_object(&node_name(h), &h.pod_subnet.to_string(), h.underlay_ip);
        // Host 2's Node is IPv4-only.
        if i < 2 {
            let cidrs = [h.pod_subnet.to_string(), pod_subnet6(h).to_string()];
            n["spec"]["podCIDRs"] = json!(cidrs);
        }
        k.api.put(kind("Node"), n);
    }
    let dual = ["--cluster-cidr-v6", CLUSTER_CIDR_V6];
    for i in 0..2 {
        k.start_with(i, &dual);
    }
    let err = k.try_start(2, &dual).expect_err("no IPv6 podCIDR");
    assert!(format!("{err:#}").contains("no IPv6 range"), "{err:#}");
    k.on_every_node("one peer each", |n| n.peer_names().unwrap().len() == 1);
    // Pods the API server lists (a pod it does not is isolated both ways).
    let mut pods = Vec::new();
    for i in 0..2 {
        k.attach(i, "default", &format!("d{i}"), json!({"app": "d"}));
        let m = k.members.last().expect("a member");
        let v6 = m.ip6.expect("an IPv6 address");
        assert!(pod_subnet6(k.underlay.host(i)).contains(&v6), "{v6}");
        pods.push((i, v6));
    }
    let ns = |i: usize| &k.members[i].pod.ns;
    let why = || {
        let reasons = ["no_route", "spoofed", "policy_ingress", "policy_egress"];
        let drops: Vec<_> = (k.running())
            .map(|n| reasons.map(|r| (r, n.drops(r).unwrap_or(0))))
            .collect();
        format!("drops {drops:?}\n{}", k.logs())
    };
    // The peer's IPv6 subnet comes from its Node, as it is published.
    wait_until(SETTLE, "IPv6 across the nodes", || {
        ns(0).ping(pods[1].1, 1).is_ok()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", why()));
    ns(1)
        .ping(pods[0].1, 2)
        .unwrap_or_else(|e| panic!("{e}\n{}", why()));
}

#[test]
fn a_node_with_pods_of_another_subnet_refuses_to_start_and_says_why() {
    let mut k = Kube::new("km", 1);
    k.put_node(0);
    k.start(0);
    k.attach(0, "x", "a", json!({"pod": "a"}));
    let held = k.underlay.host(0).pod_subnet;
    k.nodes[0].take().expect("weftd").stop().expect("stopped");
    // The Node comes back with another podCIDR (moved from the etcd store, or
    // re-registered) while the pod still holds its address of the old one.
    let name = node_name(k.underlay.host(0));
    let ip = k.underlay.host(0).underlay_ip;
    k.api
        .put(kind("Node"), node_object(&name, "10.244.99.0/24", ip));
    let h = k.underlay.host(0);
    let opts = WeftOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_weftd")),
        mode: "vxlan".into(),
        workers: 1,
        extra: Vec::new(),
    };
    let err = WeftNode::start_kube(h, &k.kubeconfig, k.scratch.path(), &opts)
        .expect_err("weftd refuses the new podCIDR");
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!("hold addresses of {held}"))
            && text.contains("10.244.99.0/24")
            && text.contains("drain"),
        "{text}"
    );
    // Nothing of it is left: no host port.
    assert!(h.ns.ip(&["link", "show", "weft0"]).is_err());
}

/// A node restarted while the API server is gone starts from the view it saved:
/// its policy (x/b stays closed to x/a's datagrams throughout), and its Services
/// (`weft services` shows x/web from the saved view), until the API server is
/// back.
#[test]
fn a_node_restarted_while_the_api_server_is_gone_keeps_its_policy() {
    // x/b takes ingress from nothing but pods labelled pod=c, of which there are
    // none.
    let mut k = two_nodes("kr", &[(0, "a"), (1, "b")], "c");
    let closed = |_: &Member, t: &Member| t.name != "b";
    k.check("x/b closed", closed);
    let b = k.member("x", "b").ip;
    k.api
        .put(kind("Service"), service_object("web", "10.96.0.10"));
    k.api.put(kind("EndpointSlice"), slice_object("web", b));
    // Let the node save the view it has in force, Services and all (at most
    // once a period).
    let saved = weft_perf::weft::state_dir(k.underlay.host(1), k.scratch.path()).join("view.json");
    let period = weft_switch::control::saved::PERIOD + Duration::from_secs(5);
    wait_until(period, "node 1 to save the Service", || {
        std::fs::read_to_string(&saved).is_ok_and(|t| t.contains("10.96.0.10"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", k.logs()));

    // A client on x/a sends to x/b throughout; x/b counts what arrives.
    let received = Receiver::start(&k.member("x", "b").pod.ns);
    let sender = Sender::start(&k.member("x", "a").pod.ns, k.member("x", "b").ip);

    // The API server goes; node 1's weftd is restarted while it is gone.
    k.api.pause();
    k.nodes[1].take().expect("weftd").stop().expect("stopped");
    let node = k.start(1);
    let status = node.status().unwrap();
    let store = status.store.expect("a store");
    assert_eq!(store.state, "degraded", "{store:?}");
    assert!(store.from_saved.is_some(), "{store:?}");
    let log = node.log_text();
    assert!(
        log.contains("unreachable at boot: starting from the view saved at"),
        "{log}"
    );
    assert_eq!(
        Kube::in_force(node).0,
        ["x/b-from-c"],
        "the saved policy is in force"
    );
    let Ok(Reply::Services(shown)) = node.ok(&Request::Services) else {
        panic!("no Services answer");
    };
    assert!(
        shown.source.starts_with("the kubernetes view saved at"),
        "{shown:#?}"
    );
    let endpoints: Vec<&str> = (shown.ports.iter())
        .flat_map(|p| p.endpoints.iter().map(|e| e.address.as_str()))
        .collect();
    assert_eq!(endpoints, [format!("{b}:8080").as_str()], "{shown:#?}");
    std::thread::sleep(Duration::from_secs(3));
    k.api.resume().expect("the fixture back");
    // A watch retries within 30 s (the backoff's cap), and counts as working
    // after 10 s with no error.
    k.on_every_node_within(Duration::from_secs(90), "the store back", |n| {
        n.status().is_ok_and(|s| {
            s.store
                .is_some_and(|st| st.state == "ok" && st.from_saved.is_none())
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        received.count(),
        0,
        "x/b received datagrams it denies\n{}",
        k.logs()
    );
    // The datagrams do arrive where policy lets them: the count above could
    // have been otherwise.
    k.api.delete(kind("NetworkPolicy"), "x", "b-from-c");
    wait_until(SETTLE, "datagrams once the policy is gone", || {
        received.count() > 0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", k.logs()));
    let sent = sender.finish();
    assert!(sent > 100, "the client sent {sent}");
    k.check("after the restart, with no policy", |_, _| true);
}

/// Puts, as the API server would serve them: Service `x/web` (a named
/// targetPort, `internalTrafficPolicy: Local`) and its slice, with endpoints
/// ready on node `me`, serving and terminating elsewhere, not ready, and on
/// 127.0.0.1 and 169.254.169.254; a Service whose spec is no spec; one with 101
/// ports; a slice of namespace `evil` labelled `web`.
fn put_hostile_services(k: &Kube, me: &str) {
    let mut web = service_object("web", "10.96.0.10");
    web["spec"]["ports"][0]["targetPort"] = json!("serve-80-tcp");
    web["spec"]["internalTrafficPolicy"] = json!("Local");
    k.api.put(kind("Service"), web);
    let mut slice = slice_object("web", Ipv4Addr::new(10, 244, 1, 5));
    slice["endpoints"] = json!([
        {"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": me},
        {"addresses": ["10.244.2.5"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        {"addresses": ["10.244.2.6"], "conditions": {"ready": false}},
        {"addresses": ["127.0.0.1"]},
        {"addresses": ["169.254.169.254"]}
    ]);
    k.api.put(kind("EndpointSlice"), slice);
    let mut junk = service_object("junk", "10.96.0.11");
    junk["spec"] = json!("not a spec");
    k.api.put(kind("Service"), junk);
    let mut huge = service_object("huge", "10.96.0.12");
    huge["spec"]["ports"] = (1..=101)
        .map(|i| json!({"name": format!("p{i}"), "port": i}))
        .collect();
    k.api.put(kind("Service"), huge);
    let mut evil = slice_object("web", Ipv4Addr::new(10, 244, 9, 9));
    evil["metadata"]["namespace"] = json!("evil");
    k.api.put(kind("EndpointSlice"), evil);
}

/// Services and EndpointSlices from the API server compiled into the node's
/// table (`weft services`), following changes. Objects the API server should
/// have refused, as a fixture (or a compromised controller) can serve them, are
/// left out and named, never failing the page they came in: a spec that is no
/// spec, a Service with more ports than weft takes; endpoints on 127.0.0.1 and
/// 169.254.169.254 are refused with their slice named; a slice in another
/// namespace labelled with this Service's name feeds it nothing. The good
/// Service and endpoints beside them are used (the positive control).
#[test]
fn services_from_the_api_server_are_compiled_and_hostile_ones_refused_by_name() {
    let mut k = Kube::new("ksv", 1);
    k.put_node(0);
    k.start(0);
    let me = node_name(k.underlay.host(0));
    put_hostile_services(&k, &me);

    let services = |n: &WeftNode| match n.ok(&Request::Services) {
        Ok(Reply::Services(s)) => Some(s),
        _ => None,
    };
    k.on_every_node("the Services compiled", |n| {
        services(n).is_some_and(|s| s.services == 1 && s.slices == 2 && s.bad.len() == 2)
    });
    let s = services(k.node(0)).expect("services");
    assert_eq!(s.source, "kubernetes");
    assert_eq!(s.ports.len(), 1, "{s:#?}");
    let web = &s.ports[0];
    assert_eq!(
        (web.name.as_str(), web.frontend.as_str()),
        ("x/web:http", "10.96.0.10:80/TCP")
    );
    assert!(web.internal_local && web.affinity_s.is_none());
    let endpoints: Vec<(&str, &str, bool)> = (web.endpoints.iter())
        .map(|e| (e.address.as_str(), e.state.as_str(), e.local))
        .collect();
    assert_eq!(
        endpoints,
        [
            ("10.244.1.5:8080", "ready", true),
            ("10.244.2.5:8080", "serving-terminating", false)
        ]
    );
    assert_eq!(
        s.refused,
        [
            "EndpointSlice x/web-abc12: 127.0.0.1 refused: a loopback address",
            "EndpointSlice x/web-abc12: 169.254.169.254 refused: a link-local address",
        ]
    );
    assert!(
        s.bad[0].starts_with("Service x/huge (services/x/huge): 101 ports"),
        "{s:#?}"
    );
    assert!(
        s.bad[1].starts_with("Service x/junk (services/x/junk): spec: "),
        "{s:#?}"
    );
    assert!(!format!("{s:?}").contains("10.244.9.9"), "{s:#?}");
    let log = k.node(0).log_text();
    assert!(
        log.contains("kubernetes: ignoring Service x/junk: spec: "),
        "{log}"
    );
    assert!(
        log.contains("services: EndpointSlice x/web-abc12: 127.0.0.1 refused"),
        "{log}"
    );

    // The slice goes: so do the endpoints.
    k.api.delete(kind("EndpointSlice"), "x", "web-abc12");
    k.on_every_node("the endpoints gone", |n| {
        services(n).is_some_and(|s| s.slices == 1 && s.ports[0].endpoints.is_empty())
    });
}
