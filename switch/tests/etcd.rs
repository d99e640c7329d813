//! weft on etcd, end to end: a real etcd started by the test on 127.0.0.1 (its data in
//! a scratch directory, stopped by PID), weftd nodes in network namespaces reaching
//! it through a bridge on their own loopback, pods pinging across them.
//!
//! These tests need root and etcd (`deploy/setup.sh` installs it); they fail, never
//! skip, without them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use weft_perf::etcd::{Bridge, Etcd};
use weft_perf::netns::{require_root, wait_until};
use weft_perf::probe::{Receiver, Sender};
use weft_perf::topo::{Pod, Underlay};
use weft_perf::weft::{node_name, state_dir, Scratch, WeftNode, WeftOptions};
use weft_proto::{PodRef, Reply, Request, ServicesStatus};

/// The registration TTL the tests run with: short, so that expiry is quick to see.
const TTL_S: u64 = 3;

/// A cluster of weftd nodes on one etcd. Fields drop in order: nodes first, etcd and
/// the namespaces last.
struct Cluster {
    nodes: Vec<Option<WeftNode>>,
    pods: Vec<Option<(Pod, Ipv4Addr)>>,
    bridges: Vec<Option<Bridge>>,
    etcd: Etcd,
    underlay: Underlay,
    scratch: Scratch,
    extra: Vec<String>,
    /// weftd's tunnel mode.
    mode: String,
    /// The registration TTL nodes start with.
    ttl_s: u64,
}

fn weftd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weftd"))
}

impl Cluster {
    /// `hosts` hosts on one segment and an etcd; no node runs yet.
    fn new(tag: &str, hosts: usize, extra: &[&str]) -> Cluster {
        require_root();
        Cluster::on(tag, Underlay::new(tag, hosts).unwrap(), extra)
    }

    /// The hosts of `underlay` and an etcd.
    fn on(tag: &str, underlay: Underlay, extra: &[&str]) -> Cluster {
        require_root();
        let scratch = Scratch::new(tag).unwrap();
        let etcd = Etcd::start(&scratch.path().join("etcd")).unwrap();
        Cluster::with(underlay, scratch, etcd, extra)
    }

    /// `hosts` hosts on one segment and an etcd that speaks TLS only, with a
    /// client certificate for each host's node and for each of `users` (and
    /// root); authentication is not on yet. Nodes reach it with their own
    /// certificates.
    fn secure(tag: &str, hosts: usize, users: &[&str]) -> Cluster {
        require_root();
        let underlay = Underlay::new(tag, hosts).unwrap();
        let names: Vec<String> = underlay.hosts().iter().map(node_name).collect();
        let all: Vec<&str> = (names.iter().map(String::as_str))
            .chain(users.iter().copied())
            .collect();
        let scratch = Scratch::new(tag).unwrap();
        let etcd = Etcd::start_secure(&scratch.path().join("etcd"), &all).unwrap();
        Cluster::with(underlay, scratch, etcd, &[])
    }

    fn with(underlay: Underlay, scratch: Scratch, etcd: Etcd, extra: &[&str]) -> Cluster {
        let hosts = underlay.hosts().len();
        Cluster {
            nodes: (0..hosts).map(|_| None).collect(),
            pods: (0..hosts).map(|_| None).collect(),
            bridges: (0..hosts).map(|_| None).collect(),
            etcd,
            underlay,
            scratch,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            mode: "vxlan".into(),
            ttl_s: TTL_S,
        }
    }

    fn opts(&self) -> WeftOptions {
        let mut extra = vec!["--node-ttl-s".into(), self.ttl_s.to_string()];
        extra.extend(self.extra.iter().cloned());
        WeftOptions {
            binary: weftd(),
            mode: self.mode.clone(),
            workers: 1,
            extra,
        }
    }

    /// Starts weftd on host `i` (and its bridge to etcd, once).
    fn start(&mut self, i: usize) -> &WeftNode {
        if self.bridges[i].is_none() {
            let host = self.underlay.host(i);
            self.bridges[i] = Some(Bridge::new(&host.ns, self.etcd.addr()).unwrap());
        }
        let host = self.underlay.host(i);
        let dir = self.scratch.path();
        let node = match self.etcd.credentials(&node_name(host)) {
            // A secure etcd: reached through the same bridge, with TLS and the
            // node's own certificate.
            Some(c) => {
                let endpoint = format!("https://127.0.0.1:{}", weft_perf::etcd::BRIDGE_PORT);
                let mut store: Vec<String> = ["--store", "etcd", "--etcd-endpoints", &endpoint]
                    .map(str::to_owned)
                    .into();
                for (flag, path) in [
                    ("--etcd-ca", c.ca),
                    ("--etcd-cert", c.cert),
                    ("--etcd-key", c.key),
                ] {
                    store.push(flag.into());
                    store.push(path.display().to_string());
                }
                let ready = Duration::from_secs(20);
                WeftNode::start_with_store(host, dir, &self.opts(), &store, ready)
            }
            None => WeftNode::start_etcd(host, dir, &self.opts()),
        };
        self.nodes[i].insert(node.unwrap())
    }

    fn node(&self, i: usize) -> &WeftNode {
        self.nodes[i].as_ref().expect("a running node")
    }

    /// Attaches a pod on host `i`, as the Kubernetes pod `default/p<i>`.
    fn pod(&mut self, i: usize) -> Ipv4Addr {
        let pod = self.underlay.pod(i, &format!("e{i}")).unwrap();
        let k8s = PodRef {
            namespace: "default".into(),
            name: format!("p{i}"),
        };
        let a = self
            .node(i)
            .attach_as(&pod, &format!("c{i}"), Some(k8s))
            .unwrap();
        self.pods[i] = Some((pod, a.ip));
        a.ip
    }

    fn subnet(&self, i: usize) -> Ipv4Net {
        self.node(i).status().unwrap().pod_subnet.parse().unwrap()
    }

    /// Waits until every running node but `i` lists node `i` as a peer (or, with
    /// `present` false, none does), and returns how long that took.
    fn wait_peers(&self, i: usize, present: bool, timeout: Duration) -> Duration {
        let start = Instant::now();
        let name = node_name(self.underlay.host(i));
        let others: Vec<&WeftNode> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .filter_map(|(_, n)| n.as_ref())
            .collect();
        wait_until(timeout, &format!("peers to list {name}: {present}"), || {
            others
                .iter()
                .all(|n| n.peer_names().unwrap().contains(&name) == present)
        })
        .unwrap_or_else(|e| panic!("{e}:\n{}", self.logs()));
        start.elapsed()
    }

    /// Pings from the pod on `from` to the pod on `to`.
    fn ping(&self, from: usize, to: usize) -> anyhow::Result<String> {
        let (pod, _) = self.pods[from].as_ref().expect("a pod");
        let (_, ip) = self.pods[to].as_ref().expect("a pod");
        pod.ns.ping(ip, 2)
    }

    fn ping_all(&self) {
        let up: Vec<usize> = (0..self.pods.len())
            .filter(|&i| self.pods[i].is_some() && self.nodes[i].is_some())
            .collect();
        for &a in &up {
            for &b in &up {
                if a != b {
                    self.ping(a, b)
                        .unwrap_or_else(|e| panic!("ping {a} -> {b}: {e}\n{}", self.logs()));
                }
            }
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for n in self.nodes.iter().flatten() {
            out += &format!("--- {}\n{}\n", n.name, n.log_text());
        }
        out
    }

    fn subnet_keys(&self) -> Vec<String> {
        self.etcd.keys("/weft/v1/subnets/").unwrap()
    }
}

fn subnet_key(s: Ipv4Net) -> String {
    format!("/weft/v1/subnets/{}-{}", s.network(), s.prefix_len())
}

/// Three nodes claim distinct subnets and reach each other; a fourth joins and is
/// reachable at once; a node killed with SIGKILL leaves every peer after its TTL,
/// and its subnet is not given to the next node that joins.
#[test]
fn nodes_join_claim_subnets_and_leave_when_their_lease_expires() {
    let mut c = Cluster::new("ej", 5, &["--subnet-grace-s", "600"]);
    for i in 0..3 {
        c.start(i);
    }
    let subnets: Vec<Ipv4Net> = (0..3).map(|i| c.subnet(i)).collect();
    for (i, s) in subnets.iter().enumerate() {
        assert_eq!(s.prefix_len(), 24, "{s}");
        assert!(subnets[..i].iter().all(|t| t != s), "{subnets:?}");
    }
    for i in 0..3 {
        c.wait_peers(i, true, Duration::from_secs(5));
        c.pod(i);
    }
    c.ping_all();

    // A fourth node: every other node has it within a second of its start.
    c.start(3);
    let took = c.wait_peers(3, true, Duration::from_secs(1));
    eprintln!("node 3 listed by every peer {took:?} after it answered");
    c.pod(3);
    for i in 0..3 {
        c.ping(i, 3).unwrap();
    }

    // Node 1 dies: its registration expires after the TTL, its subnet stays leased.
    let dead = subnets[1];
    let killed = Instant::now();
    c.nodes[1].take().unwrap().kill().unwrap();
    let gone = c.wait_peers(1, false, Duration::from_secs(TTL_S + 5));
    let since = killed.elapsed();
    eprintln!("node 1 gone from every peer {since:?} after SIGKILL ({gone:?} of waiting)");
    assert!(
        since >= Duration::from_millis(TTL_S * 1000 / 2),
        "removed after {since:?}, before its lease could expire"
    );
    assert!(
        c.subnet_keys().contains(&subnet_key(dead)),
        "{:?}",
        c.subnet_keys()
    );
    // A newcomer gets another subnet.
    c.start(4);
    let new = c.subnet(4);
    assert_ne!(
        new, dead,
        "the dead node's subnet was reused within the grace period"
    );
    assert!(!subnets.contains(&new));
    c.wait_peers(4, true, Duration::from_secs(2));
    c.pod(4);
    c.ping_all();
}

/// Runs `weftd --claim-only` for node `name` against `etcd`.
fn claim(etcd: &Etcd, dir: &Path, name: &str, n: u8, extra: &[&str]) -> std::process::Child {
    Command::new(weftd())
        .args(["--claim-only", "--store", "etcd", "--etcd-endpoints"])
        .arg(etcd.endpoint())
        .args(["--node-name", name])
        .args(["--underlay-ip", &format!("10.250.1.{n}")])
        .arg("--state-dir")
        .arg(dir.join(name))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weftd --claim-only")
}

/// Twenty nodes claiming subnets at once from a cluster CIDR with room for 32 never
/// share one; a subnet becomes free again once the grace after its node's expiry has
/// passed, and not before.
#[test]
fn racing_nodes_never_share_a_subnet_and_an_expired_one_waits_out_its_grace() {
    require_root();
    let scratch = Scratch::new("er").unwrap();
    let etcd = Etcd::start(&scratch.path().join("etcd")).unwrap();
    let cidr = ["--cluster-cidr", "10.244.0.0/19", "--node-ttl-s", "600"];
    let children: Vec<_> = (1..=20)
        .map(|n| claim(&etcd, scratch.path(), &format!("racer-{n}"), n, &cidr))
        .collect();
    let mut won = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success(),
            "racer-{}: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        won.push((format!("racer-{}", i + 1), text.parse::<Ipv4Net>().unwrap()));
    }
    let mut distinct: Vec<Ipv4Net> = won.iter().map(|(_, s)| *s).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 20, "{won:?}");
    // etcd agrees: one lease a subnet, naming the node that printed it.
    assert_eq!(etcd.keys("/weft/v1/subnets/").unwrap().len(), 20);
    for (name, s) in &won {
        let v = etcd.get(&subnet_key(*s)).unwrap().expect("the lease");
        assert!(v.contains(&format!("\"node\":\"{name}\"")), "{s}: {v}");
    }
    // A restarted node takes its own subnet back (its pool remembers it).
    let again = claim(&etcd, scratch.path(), "racer-7", 7, &cidr)
        .wait_with_output()
        .unwrap();
    let again: Ipv4Net = String::from_utf8_lossy(&again.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(again, won[6].1);

    // A node whose registration lasts 2 s, its subnet 3 s more: the lease is still
    // there once the node's registration is gone, and gone after the grace.
    let short = [
        "--cluster-cidr",
        "10.244.0.0/19",
        "--node-ttl-s",
        "2",
        "--subnet-grace-s",
        "3",
    ];
    let out = claim(&etcd, scratch.path(), "brief", 99, &short)
        .wait_with_output()
        .unwrap();
    let brief: Ipv4Net = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let claimed = Instant::now();
    wait_until(
        Duration::from_secs(8),
        "brief's registration to expire",
        || etcd.get("/weft/v1/nodes/brief").unwrap().is_none(),
    )
    .unwrap();
    let key = subnet_key(brief);
    assert!(
        etcd.get(&key).unwrap().is_some(),
        "the subnet went with the node"
    );
    wait_until(
        Duration::from_secs(10),
        "brief's subnet lease to expire",
        || etcd.get(&key).unwrap().is_none(),
    )
    .unwrap();
    assert!(
        claimed.elapsed() >= Duration::from_secs(4),
        "{:?}",
        claimed.elapsed()
    );
}

fn store_state(n: &WeftNode) -> String {
    n.status()
        .unwrap()
        .store
        .map(|s| s.state)
        .unwrap_or_default()
}

/// etcd stopped for 10 s: traffic flows, ADD works, STATUS says degraded. Started
/// again, the nodes recover by themselves and learn of a node that joins. A node cut
/// off from etcd while etcd lives resumes its watch where it stopped.
#[test]
fn the_cluster_outlives_an_etcd_outage_and_resumes_its_watch() {
    let mut c = Cluster::new("eo", 4, &[]);
    for i in 0..2 {
        c.start(i);
        c.pod(i);
    }
    c.wait_peers(0, true, Duration::from_secs(5));
    c.wait_peers(1, true, Duration::from_secs(5));
    c.ping_all();
    let pids: Vec<u32> = (0..2).map(|i| c.node(i).pid()).collect();

    c.etcd.stop().unwrap();
    let stopped = Instant::now();
    for i in 0..2 {
        wait_until(Duration::from_secs(8), "STATUS to say degraded", || {
            store_state(c.node(i)) == "degraded"
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    let status = weft_cli(c.node(0), "status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("store") && l.contains("etcd degraded")),
        "{status}"
    );
    // Pods keep talking, and a new pod is added from node 0's own subnet.
    c.ping(0, 1).unwrap();
    c.ping(1, 0).unwrap();
    let late = c.underlay.pod(0, "eolate").unwrap();
    let a = c.node(0).attach(&late, "late").unwrap();
    assert!(c.subnet(0).contains(&a.ip));
    let (p1, _) = c.pods[1].as_ref().unwrap();
    p1.ns.ping(a.ip, 2).unwrap();
    assert_eq!(
        c.node(1).peer_names().unwrap(),
        [node_name(c.underlay.host(0))]
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
    c.ping(0, 1).unwrap();

    c.etcd.restart().unwrap();
    for i in 0..2 {
        wait_until(Duration::from_secs(15), "STATUS to say ok", || {
            store_state(c.node(i)) == "ok"
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    c.start(2);
    c.pod(2);
    c.wait_peers(2, true, Duration::from_secs(5));
    c.ping_all();

    // Node 0 is cut off from etcd while node 3 joins; reconnected, it catches up
    // from the revision it had.
    c.bridges[0].as_ref().unwrap().set_cut(true);
    c.start(3);
    let n3 = node_name(c.underlay.host(3));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !c.node(0).peer_names().unwrap().contains(&n3),
        "node 0 saw it through a cut"
    );
    c.bridges[0].as_ref().unwrap().set_cut(false);
    c.wait_peers(3, true, Duration::from_secs(8));
    let now: Vec<u32> = (0..2).map(|i| c.node(i).pid()).collect();
    assert_eq!(now, pids, "no weftd restarted");
    assert!(
        c.node(0).log_text().contains("resuming"),
        "{}",
        c.node(0).log_text()
    );
}

/// Bad records are ignored with a log line naming their key; the cluster goes on.
/// NetworkPolicy objects in etcd are enforced like those of a policy directory.
#[test]
fn bad_records_are_ignored_and_policy_objects_in_etcd_are_enforced() {
    let mut c = Cluster::new("eb", 2, &[]);
    for i in 0..2 {
        c.start(i);
        c.pod(i);
    }
    c.wait_peers(1, true, Duration::from_secs(5));
    c.ping_all();
    let s1 = c.subnet(1);
    c.etcd.put("/weft/v1/nodes/bogus", "{not json").unwrap();
    let thief = format!(
        "{{\"name\":\"thief\",\"underlayIp\":\"10.250.0.9\",\"podSubnet\":\"{s1}\",\"vtepMac\":\"02:00:00:00:00:09\",\"mode\":\"vxlan\",\"port\":8472}}"
    );
    c.etcd.put("/weft/v1/nodes/thief", &thief).unwrap();
    c.etcd.put("/weft/v1/subnets/10.244.77.0-24", "[]").unwrap();
    let log_has = |needle: &str| {
        wait_until(Duration::from_secs(5), needle, || {
            c.node(0).log_text().contains(needle)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    };
    log_has("ignoring /weft/v1/nodes/bogus: not a node record");
    log_has("ignoring /weft/v1/nodes/thief: claims subnet");
    assert_eq!(
        c.node(0).peer_names().unwrap(),
        [node_name(c.underlay.host(1))]
    );
    c.ping_all();

    // A policy isolating pod p1 for ingress: nothing reaches it. A new policy
    // record that does not read isolates its namespace, which has no pod here.
    isolate_p1(&c.etcd);
    let broken = "kind: NetworkPolicy\nspec: 7\n";
    c.etcd
        .put("/weft/v1/networkpolicies/other/broken", broken)
        .unwrap();
    wait_until(Duration::from_secs(5), "the policy to cut p0 -> p1", || {
        c.ping(0, 1).is_err()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    c.ping(1, 0)
        .expect("p1's replies are tracked, its own traffic is not isolated");
    log_has("/weft/v1/networkpolicies/other/broken document 0: ");
    log_has("every pod of namespace other is isolated for ingress until it reads");
    c.etcd
        .ctl(&["del", "/weft/v1/networkpolicies/default/deny-db"])
        .unwrap();
    wait_until(Duration::from_secs(5), "p0 -> p1 to pass again", || {
        c.ping(0, 1).is_ok()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    // In the pods' namespace, it isolates both of them for ingress until it goes.
    c.etcd
        .put("/weft/v1/networkpolicies/default/broken", broken)
        .unwrap();
    wait_until(Duration::from_secs(5), "default to be isolated", || {
        c.ping(0, 1).is_err() && c.ping(1, 0).is_err()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let status = weft_cli(c.node(0), "policy status");
    assert!(
        status.contains("state       isolating: the pods of namespace default, other"),
        "{status}"
    );
    c.etcd
        .ctl(&["del", "/weft/v1/networkpolicies/default/broken"])
        .unwrap();
    wait_until(Duration::from_secs(5), "the pods to be open again", || {
        c.ping(0, 1).is_ok() && c.ping(1, 0).is_ok()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

/// A node record of etcd's, as JSON.
fn node_record(name: &str, underlay: &str, subnet: &str, mac: &str) -> String {
    format!(
        "{{\"name\":\"{name}\",\"underlayIp\":\"{underlay}\",\"podSubnet\":\"{subnet}\",\"vtepMac\":\"{mac}\",\"mode\":\"vxlan\",\"port\":8472}}"
    )
}

/// A subnet lease's record, as JSON.
fn lease_record(name: &str, underlay: &str) -> String {
    format!("{{\"node\":\"{name}\",\"underlayIp\":\"{underlay}\"}}")
}

/// Records in etcd that claim what a running node holds must not freeze it on
/// its view. Three are written, each with a node record older than node 0's and a
/// subnet lease newer than node 0's (as anyone with write access to etcd could):
/// `wide`, whose subnet holds node 0's; `twin`, with node 0's underlay address;
/// and `group`, with a multicast underlay address. Each is ignored with a log line
/// naming it; a node that joins afterwards is a peer of node 0, and their pods
/// reach each other (the positive control).
#[test]
fn records_claiming_what_a_node_holds_are_ignored_and_the_rest_of_the_view_applied() {
    let mut c = Cluster::new("eh", 2, &[]);
    let me = c.underlay.host(0).underlay_ip.to_string();
    // The first free /24s are claimed first: node 0's will be inside 10.244.0.0/18.
    let hostile = [
        ("wide", "192.0.2.7", "10.244.0.0/18", "02:00:00:00:77:01"),
        ("twin", me.as_str(), "10.244.200.0/24", "02:00:00:00:77:02"),
        ("group", "224.0.0.5", "10.244.201.0/24", "02:00:00:00:77:03"),
    ];
    for (name, ip, subnet, mac) in hostile {
        let record = node_record(name, ip, subnet, mac);
        c.etcd
            .put(&format!("/weft/v1/nodes/{name}"), &record)
            .unwrap();
    }
    c.start(0);
    let mine = c.subnet(0);
    assert!(
        "10.244.0.0/18".parse::<Ipv4Net>().unwrap().contains(&mine),
        "{mine}"
    );
    for (name, ip, subnet, _) in hostile {
        let key = subnet_key(subnet.parse().unwrap());
        c.etcd.put(&key, &lease_record(name, ip)).unwrap();
    }
    let log_has = |needle: &str| {
        wait_until(Duration::from_secs(5), needle, || {
            c.node(0).log_text().contains(needle)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    };
    log_has("ignoring /weft/v1/nodes/wide: its subnet 10.244.0.0/18 overlaps");
    log_has(&format!(
        "ignoring /weft/v1/nodes/twin: underlay address {me} is another node's"
    ));
    log_has("ignoring /weft/v1/nodes/group: underlay address 224.0.0.5 is multicast");

    // The rest of the view: a node that joins now is node 0's peer, and reached.
    c.start(1);
    c.wait_peers(1, true, Duration::from_secs(5));
    c.wait_peers(0, true, Duration::from_secs(5));
    for i in 0..2 {
        let other = node_name(c.underlay.host(1 - i));
        assert_eq!(c.node(i).peer_names().unwrap(), [other], "{}", c.logs());
    }
    c.pod(0);
    c.pod(1);
    c.ping_all();
    let log = c.node(0).log_text();
    assert!(!log.contains("keeping the previous peers"), "{log}");
}

/// The etcdctl commands of the block of `deploy/STORE.md` that sets up per-node
/// roles, each as its arguments, in order.
fn documented_role_commands() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/STORE.md"))
        .expect("deploy/STORE.md");
    let block = doc
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("etcdctl role add weft-node-$NODE"))
        .expect("the block of per-node roles in deploy/STORE.md");
    block
        .lines()
        .map(|l| l.split(" # ").next().unwrap_or(l).trim())
        .filter(|l| l.starts_with("etcdctl "))
        .map(|l| l.trim_start_matches("etcdctl ").to_owned())
        .collect()
}

/// Per-node credentials, as `deploy/STORE.md` sets them up: etcd with client
/// certificates and authentication on, each node a user (its certificate's CN)
/// whose role reads the prefix and writes only its own record and the subnet
/// leases. The nodes join, claim their subnets and reach each other with those
/// roles (the positive control); a node's credentials are refused writing the
/// other's record, revoking the other's registration lease, and writing a policy
/// object, which the policy writer can, and its policy is enforced.
#[test]
fn per_node_roles_suffice_and_keep_a_node_off_others_records_and_policy() {
    let mut c = Cluster::secure("er", 2, &["policy-writer", "stranger"]);
    let names: Vec<String> = c.underlay.hosts().iter().map(node_name).collect();
    let commands = documented_role_commands();
    assert!(commands.iter().any(|l| l == "auth enable"), "{commands:?}");
    for line in &commands {
        let each: Vec<&str> = match line.contains("$NODE") {
            true => names.iter().map(String::as_str).collect(),
            false => vec![""],
        };
        for name in each {
            let line = line.replace("$NODE", name);
            let args: Vec<&str> = line.split_whitespace().collect();
            c.etcd
                .ctl(&args)
                .unwrap_or_else(|e| panic!("{line}: {e:#}"));
        }
    }
    // Authentication is on: a certificate of the CA whose CN is no user of
    // etcd's gets nothing.
    let stranger = c.etcd.ctl_as("stranger", &["get", "--prefix", "/weft/v1/"]);
    let e = stranger.expect_err("a stranger's read").to_string();
    assert!(e.contains("permission denied"), "{e}");

    for i in 0..2 {
        c.start(i);
    }
    c.wait_peers(0, true, Duration::from_secs(10));
    c.wait_peers(1, true, Duration::from_secs(10));
    c.pod(0);
    c.pod(1);
    c.ping_all();

    let (me, other) = (names[0].as_str(), names[1].as_str());
    let denied = |what: &str, args: &[&str]| {
        let e = c.etcd.ctl_as(me, args).expect_err(what).to_string();
        assert!(e.contains("permission denied"), "{what}: {e}");
    };
    let record = format!("/weft/v1/nodes/{other}");
    denied("writing another node's record", &["put", &record, "{}"]);
    denied("deleting another node's record", &["del", &record]);
    let lease = c.etcd.ctl(&["get", &record, "-w", "fields"]).unwrap();
    let lease: i64 = (lease.lines())
        .find_map(|l| l.strip_prefix("\"Lease\" : "))
        .and_then(|l| l.trim().parse().ok())
        .expect("the record's lease");
    denied(
        "revoking another node's registration",
        &["lease", "revoke", &format!("{lease:x}")],
    );
    let policy = "/weft/v1/networkpolicies/default/deny-db";
    denied("writing a policy object", &["put", policy, "{}"]);
    // What the role does allow: reading every record.
    let listed = c
        .etcd
        .ctl_as(me, &["get", "--prefix", "--keys-only", "/weft/v1/nodes/"]);
    assert!(listed.unwrap().contains(&record));
    assert_eq!(c.node(0).peer_names().unwrap(), [other]);

    // The policy writer's policy: p1 isolated for ingress, and enforced.
    let pod = "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"p1\",\"namespace\":\"default\",\"labels\":{\"app\":\"db\"}}}";
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-db, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Ingress]\n";
    let writer = |key: &str, value: &str| {
        c.etcd
            .ctl_as("policy-writer", &["put", "--", key, value])
            .unwrap_or_else(|e| panic!("{key}: {e:#}"));
    };
    writer("/weft/v1/pods/default/p1", pod);
    writer(policy, deny);
    wait_until(Duration::from_secs(5), "the policy to cut p0 -> p1", || {
        c.ping(0, 1).is_err()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(
        c.etcd
            .ctl_as(me, &["get", "--print-value-only", policy])
            .unwrap()
            .contains("deny-db"),
        "nodes read the policy objects"
    );
}

/// Writes pod `default/p1` to etcd with the label `app: db`, and the policy
/// `default/deny-db`, which isolates it for ingress and allows nothing in.
fn isolate_p1(etcd: &Etcd) {
    let pod = "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"p1\",\"namespace\":\"default\",\"labels\":{\"app\":\"db\"}}}";
    etcd.put("/weft/v1/pods/default/p1", pod).unwrap();
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-db, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Ingress]\n";
    etcd.put("/weft/v1/networkpolicies/default/deny-db", deny)
        .unwrap();
}

/// Frames node `n`'s pods' ingress policy dropped.
fn policy_drops(n: &WeftNode) -> u64 {
    n.drops("policy_ingress").unwrap()
}

/// Two nodes on etcd, each with its pod, pod `default/p1` (on node 1) isolated for
/// ingress by `default/deny-db`, which node 1 has saved in its view; a receiver of
/// datagrams on p1, which got some before the policy (so that its count would
/// show a leak), and how many it got by the time the policy was saved.
fn p1_isolated_and_saved(tag: &str) -> (Cluster, Receiver, u64) {
    let mut c = Cluster::new(tag, 2, &[]);
    // Node 1's registration outlives its restart, so node 0 goes on sending to it.
    c.ttl_s = 60;
    for i in 0..2 {
        c.start(i);
        c.pod(i);
    }
    c.wait_peers(0, true, Duration::from_secs(5));
    c.wait_peers(1, true, Duration::from_secs(5));
    c.ping_all();
    let received = Receiver::start(&c.pods[1].as_ref().unwrap().0.ns);
    let probe = send_to_p1(&c);
    wait_until(Duration::from_secs(5), "a datagram to reach p1", || {
        received.count() > 0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    probe.finish();

    isolate_p1(&c.etcd);
    wait_until(Duration::from_secs(5), "the policy to cut p0 -> p1", || {
        c.ping(0, 1).is_err()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let saved = state_dir(c.underlay.host(1), c.scratch.path()).join("view.json");
    // The saver writes at most once a period: the policy is on disk within one.
    let period = weft_switch::control::saved::PERIOD + Duration::from_secs(5);
    wait_until(period, "node 1 to save the policy", || {
        std::fs::read_to_string(&saved).is_ok_and(|t| t.contains("deny-db"))
    })
    .unwrap();
    let before = received.count();
    (c, received, before)
}

/// Datagrams from p0 to p1, every 5 ms.
fn send_to_p1(c: &Cluster) -> Sender {
    let p1_ip = c.pods[1].as_ref().unwrap().1;
    Sender::start(&c.pods[0].as_ref().unwrap().0.ns, p1_ip)
}

/// After node 1's restart, with `sender` sending to p1 all along: its policy drops
/// p0's datagrams, none of which reached p1 since `before`; and once `deny-db`
/// goes from etcd, node 1 follows the store and they arrive.
fn p1_got_nothing_until_the_policy_went(
    c: &Cluster,
    received: &Receiver,
    before: u64,
    sender: Sender,
) {
    let n1 = c.node(1);
    wait_until(
        Duration::from_secs(10),
        "node 1 to drop p0's datagrams",
        || policy_drops(n1) > 0,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    std::thread::sleep(Duration::from_secs(1));
    let sent = sender.finish();
    let leaked = received.count() - before;
    eprintln!(
        "{sent} datagrams sent, {leaked} received, {} dropped by policy on node 1",
        policy_drops(n1)
    );
    assert!(sent > 200, "only {sent} datagrams sent");
    assert_eq!(
        leaked,
        0,
        "datagrams reached the isolated pod\n{}",
        c.logs()
    );

    c.etcd
        .ctl(&["del", "/weft/v1/networkpolicies/default/deny-db"])
        .unwrap();
    let probe = send_to_p1(c);
    wait_until(
        Duration::from_secs(5),
        "p0's datagrams to reach p1 again",
        || received.count() > before,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    probe.finish();
}

/// Policy does not fail open across a restart. Node 1, whose pod a NetworkPolicy in
/// etcd isolates, restarts while it cannot reach etcd, with node 0's pod sending to
/// that pod all along: it starts from the view it saved (and says so), its pod
/// receives nothing, and once etcd is back it reads the store again.
#[test]
fn a_node_restarted_while_etcd_is_unreachable_keeps_its_policy_from_the_saved_view() {
    let (mut c, received, before) = p1_isolated_and_saved("es");
    let sender = send_to_p1(&c);

    c.bridges[1].as_ref().unwrap().set_cut(true);
    c.nodes[1].take().unwrap().stop().unwrap();
    c.start(1);
    let n1 = c.node(1);
    let log = n1.log_text();
    assert!(
        log.contains("store etcd unreachable at boot: starting from the view saved at")
            && log.contains("(2 nodes, 1 policies)"),
        "{log}"
    );
    let store = n1.status().unwrap().store.unwrap();
    assert_eq!(store.state, "degraded", "{store:?}");
    assert!(store.from_saved.is_some(), "{store:?}");
    let status = weft_cli(n1, "status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("store") && l.contains("from the view saved at")),
        "{status}"
    );
    // Node 0's datagrams reach node 1, whose policy drops them.
    wait_until(
        Duration::from_secs(10),
        "node 1 to drop p0's datagrams",
        || policy_drops(n1) > 0,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    std::thread::sleep(Duration::from_secs(2));

    c.bridges[1].as_ref().unwrap().set_cut(false);
    wait_until(Duration::from_secs(20), "node 1 to read etcd again", || {
        let s = n1.status().unwrap().store.unwrap();
        s.state == "ok" && s.from_saved.is_none()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(
        n1.log_text()
            .contains("store etcd read: its view replaces the one saved at"),
        "{}",
        n1.log_text()
    );
    p1_got_nothing_until_the_policy_went(&c, &received, before, sender);
}

/// A known policy that stops reading keeps its last good version, across a
/// restart too. Node 1 restarts, etcd reachable, while `deny-db`'s record no
/// longer reads, with node 0's pod sending to p1 all along: node 1 takes the
/// version its saved view holds, says so, and p1 receives nothing; p1's own
/// traffic, which no policy isolates, flows again after the restart.
#[test]
fn a_node_restarted_while_a_policy_record_does_not_read_keeps_its_last_good_version() {
    let (mut c, received, before) = p1_isolated_and_saved("ek");
    let sender = send_to_p1(&c);

    c.nodes[1].take().unwrap().stop().unwrap();
    c.etcd
        .put(
            "/weft/v1/networkpolicies/default/deny-db",
            "kind: NetworkPolicy\nspec: 7\n",
        )
        .unwrap();
    c.start(1);
    let n1 = c.node(1);
    let log = n1.log_text();
    assert!(
        log.contains("/weft/v1/networkpolicies/default/deny-db document 0: ")
            && log.contains("its last good version stays in force"),
        "{log}"
    );
    let status = weft_cli(n1, "policy status");
    assert!(
        status.contains("state       enforcing, with the last good version")
            && status.contains("default/deny-db"),
        "{status}"
    );
    assert_eq!(n1.status().unwrap().store.unwrap().state, "ok");
    c.ping(1, 0).expect("p1's own traffic is not isolated");
    p1_got_nothing_until_the_policy_went(&c, &received, before, sender);
}

/// A node that cannot reach etcd as it starts, and has no saved view to start
/// from, starts with every pod isolated for ingress, and says so: its pods reach
/// nothing of each other, though the node still reaches them. Once etcd is read
/// (it holds no policy), they do.
#[test]
fn a_node_with_no_saved_view_isolates_every_pod_while_etcd_is_unreachable() {
    let mut c = Cluster::new("en", 1, &[]);
    c.start(0);
    let p0 = c.pod(0);
    let q = c.underlay.pod(0, "enq").unwrap();
    let k8s = PodRef {
        namespace: "default".into(),
        name: "q".into(),
    };
    let q_ip = c.node(0).attach_as(&q, "cq", Some(k8s)).unwrap().ip;
    q.ns.ping(p0, 2).unwrap();
    let state = state_dir(c.underlay.host(0), c.scratch.path());
    let saved = state.join("view.json");
    wait_until(Duration::from_secs(5), "the view to be saved", || {
        saved.exists()
    })
    .unwrap();
    c.nodes[0].take().unwrap().stop().unwrap();
    c.bridges[0].as_ref().unwrap().set_cut(true);
    std::fs::remove_file(&saved).unwrap();
    c.start(0);
    let n0 = c.node(0);
    let log = n0.log_text();
    let why = format!(
        "store etcd unreachable at boot, and no saved view in {}: every pod is isolated for ingress until the store is read",
        state.display()
    );
    assert!(log.contains(&why), "{log}");
    let isolating = "isolating: every pod, for ingress (no good policy yet)";
    assert_eq!(n0.status().unwrap().policy.as_deref(), Some(isolating));
    assert!(q.ns.ping(p0, 2).is_err(), "q reached p0");
    let (p0_pod, _) = c.pods[0].as_ref().unwrap();
    assert!(p0_pod.ns.ping(q_ip, 2).is_err(), "p0 reached q");
    (c.underlay.host(0).ns)
        .ping(p0, 2)
        .expect("the node reaches its pod");

    c.bridges[0].as_ref().unwrap().set_cut(false);
    wait_until(Duration::from_secs(20), "node 0 to read etcd", || {
        n0.status().unwrap().policy.as_deref() == Some("enforcing")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    q.ns.ping(p0, 2).expect("q reaches p0");
}

/// What a capture on one wire port saw.
#[derive(Debug, Default)]
struct Seen {
    /// UDP datagrams to or from the VXLAN port, by (source, destination).
    vxlan: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Plain IPv4 (no tunnel) between pod addresses, by (source, destination).
    plain: Vec<(Ipv4Addr, Ipv4Addr)>,
}

/// Captures every frame through interface `ifname` of `ns` while `f` runs.
fn capture(ns: &weft_perf::netns::Netns, ifname: &str, f: impl FnOnce()) -> Seen {
    use std::os::fd::{FromRawFd, OwnedFd};
    let name = std::ffi::CString::new(ifname).unwrap();
    let fd = weft_perf::weft::in_netns(ns, || {
        // SAFETY: plain socket(2) and bind(2) calls on a fresh descriptor, with a
        // sockaddr_ll that lives across the call.
        unsafe {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                i32::from(proto),
            );
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let rc = libc::bind(fd, std::ptr::addr_of!(sll).cast(), len);
            assert_eq!(
                rc,
                0,
                "binding to {ifname:?}: {}",
                std::io::Error::last_os_error()
            );
            OwnedFd::from_raw_fd(fd)
        }
    })
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let file = std::fs::File::from(fd);
            let mut seen = Seen::default();
            let mut buf = vec![0u8; 65536];
            let ip = |b: &[u8], at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
            loop {
                match std::io::Read::read(&mut &file, &mut buf) {
                    Ok(n) if n >= 14 + 28 && buf[12..14] == [0x08, 0x00] => {
                        let b = &buf[..n];
                        let (src, dst) = (ip(b, 26), ip(b, 30));
                        let ihl = usize::from(b[14] & 0x0f) * 4;
                        let udp_dst = b.get(14 + ihl + 2..14 + ihl + 4);
                        if b[23] == 17 && udp_dst == Some(&8472u16.to_be_bytes()[..]) {
                            seen.vxlan.push((src, dst));
                        } else if src.octets()[..2] == [10, 244] && dst.octets()[..2] == [10, 244] {
                            seen.plain.push((src, dst));
                        }
                    }
                    Ok(_) => {}
                    Err(_) if stop.load(std::sync::atomic::Ordering::SeqCst) => return seen,
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
    };
    f();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    reader.join().unwrap()
}

/// Direct routing beside VXLAN: hosts 0 and 1 share a segment and send their pods'
/// packets unencapsulated, through host routes weftd installs; host 2, behind a
/// router, is reached through the tunnel by both. Source addresses are the pods'.
#[test]
fn direct_routing_on_a_shared_segment_and_the_tunnel_beyond_it() {
    require_root();
    let underlay = Underlay::with_segments("ed", &[2, 1]).unwrap();
    let mut c = Cluster::on("ed", underlay, &["--direct-routing", "true"]);
    for i in 0..3 {
        c.start(i);
        c.pod(i);
    }
    for i in 0..3 {
        c.wait_peers(i, true, Duration::from_secs(5));
    }
    let infos = |i: usize| match c.node(i).ok(&weft_proto::Request::Peers).unwrap() {
        weft_proto::Reply::Peers { peers } => peers,
        other => panic!("{other:?}"),
    };
    let paths: Vec<(String, String)> = infos(0)
        .into_iter()
        .map(|p| (p.name, p.path))
        .filter(|(n, _)| n.starts_with("node"))
        .collect();
    assert_eq!(
        paths,
        [
            (
                "node-1".to_owned(),
                "direct via 10.250.0.2 dev eth0".to_owned()
            ),
            ("node-2".to_owned(), "vxlan".to_owned())
        ]
    );
    // The CLI shows the same paths.
    let table = weft_cli(c.node(0), "peers");
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{table}"))
            .to_owned()
    };
    assert!(table.lines().next().unwrap().contains("PATH"), "{table}");
    assert!(
        row("node-1").contains("direct via 10.250.0.2 dev eth0"),
        "{table}"
    );
    assert!(row("node-2").contains("vxlan"), "{table}");
    let s1 = c.subnet(1);
    let routes = c
        .underlay
        .host(0)
        .ns
        .ip(&["route", "show", "proto", "119"])
        .unwrap();
    assert_eq!(
        routes.trim(),
        format!("{s1} via 10.250.0.2 dev eth0"),
        "{routes}"
    );

    let pod_ip = |i: usize| c.pods[i].as_ref().unwrap().1;
    let (h0, h1) = (
        c.underlay.host(0).underlay_ip,
        c.underlay.host(1).underlay_ip,
    );
    let h2 = c.underlay.host(2).underlay_ip;
    let seen = capture(c.underlay.wire(), "p0", || c.ping_all());
    eprintln!(
        "on the wire: {} VXLAN, {} plain",
        seen.vxlan.len(),
        seen.plain.len()
    );
    let local_vxlan = seen
        .vxlan
        .iter()
        .filter(|(s, d)| [h0, h1].contains(s) && [h0, h1].contains(d))
        .count();
    assert_eq!(
        local_vxlan, 0,
        "VXLAN between hosts on one segment: {seen:?}"
    );
    for pair in [(pod_ip(0), pod_ip(1)), (pod_ip(1), pod_ip(0))] {
        assert!(
            seen.plain.contains(&pair),
            "no plain {pair:?} on the wire: {seen:?}"
        );
    }
    assert!(
        seen.vxlan.iter().any(|(s, d)| *s == h0 && *d == h2)
            && seen.vxlan.iter().any(|(s, d)| *s == h2 && *d == h0),
        "host 2 is not reached through the tunnel: {seen:?}"
    );
    // Node 1 dies: its route goes with it once its registration expires.
    c.nodes[1].take().unwrap().kill().unwrap();
    c.wait_peers(1, false, Duration::from_secs(TTL_S + 5));
    wait_until(Duration::from_secs(2), "the direct route to go", || {
        c.underlay
            .host(0)
            .ns
            .ip(&["route", "show", "proto", "119"])
            .unwrap()
            .trim()
            .is_empty()
    })
    .unwrap();
    c.ping(0, 2).unwrap();
}

/// `weft-perf join` works end to end: two timed joins on its own etcd, each
/// answered by the new node (the figures are for the harness to report, not to check).
#[test]
fn join_timing_harness_runs() {
    require_root();
    let settings = weft_perf::join::JoinSettings {
        joins: 2,
        weftd: weftd(),
        mode: "vxlan".into(),
    };
    let mut seen = Vec::new();
    let report = weft_perf::join::measure(&settings, &mut |n, _| seen.push(n)).unwrap();
    assert_eq!(seen, [1, 2]);
    assert_eq!(report.latencies_us.len(), 2);
    assert!(report.latencies_us.iter().all(|&us| us > 0), "{report:?}");
}

/// A node cut off from etcd for longer than its TTL loses its registration (every
/// peer drops it) and registers again, on the subnet it runs on, once it is back:
/// its pods keep their addresses and are reachable again, with no restart.
#[test]
fn a_node_partitioned_past_its_ttl_registers_again_on_its_subnet() {
    let mut c = Cluster::new("ep", 2, &[]);
    for i in 0..2 {
        c.start(i);
        c.pod(i);
    }
    c.wait_peers(1, true, Duration::from_secs(5));
    c.ping_all();
    let subnet = c.subnet(1);
    let pid = c.node(1).pid();
    c.bridges[1].as_ref().unwrap().set_cut(true);
    // Its lease runs out: node 0 drops it.
    c.wait_peers(1, false, Duration::from_secs(TTL_S + 5));
    c.bridges[1].as_ref().unwrap().set_cut(false);
    c.wait_peers(1, true, Duration::from_secs(10));
    assert_eq!(c.subnet(1), subnet, "the node keeps its subnet");
    let record = c
        .etcd
        .get(&format!("/weft/v1/nodes/{}", node_name(c.underlay.host(1))));
    assert!(
        record.unwrap().unwrap().contains(&subnet.to_string()),
        "registered on its own subnet"
    );
    assert!(
        c.subnet_keys().contains(&subnet_key(subnet)),
        "{:?}",
        c.subnet_keys()
    );
    assert!(
        c.node(1).log_text().contains("registering again"),
        "{}",
        c.node(1).log_text()
    );
    assert_eq!(c.node(1).pid(), pid, "no restart");
    c.ping_all();
}

/// What the `weft` CLI prints for `what` against `node`.
fn weft_cli(node: &WeftNode, what: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("--socket")
        .arg(&node.socket)
        .args(what.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .expect("running weft");
    assert!(out.status.success(), "weft {what}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Encryption over etcd: each node publishes its public key in its record and
/// takes its peers' from theirs, so two nodes with `encryption = "required"` and no
/// peers file reach each other, sealed.
#[test]
fn encrypted_nodes_take_their_keys_from_etcd() {
    let mut c = Cluster::new("etcdenc", 2, &["--encryption", "required"]);
    c.mode = "sleeve".into();
    c.start(0);
    c.start(1);
    c.wait_peers(0, true, Duration::from_secs(10));
    c.wait_peers(1, true, Duration::from_secs(10));
    c.pod(0);
    c.pod(1);
    c.ping(0, 1)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    c.ping(1, 0)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    for i in 0..2 {
        let peers = c.node(i).peers().unwrap();
        let s = peers[0].session.as_ref().expect("a session row");
        assert_eq!(s.state, "established", "node {i}: {s:?}");
    }
}

/// The Services a node shows (`weft services`), once `ok` holds of them.
fn services_when(c: &Cluster, what: &str, ok: impl Fn(&ServicesStatus) -> bool) -> ServicesStatus {
    let mut last = None;
    wait_until(Duration::from_secs(10), what, || {
        match c.node(0).ok(&Request::Services) {
            Ok(Reply::Services(s)) => {
                let good = ok(&s);
                last = Some(s);
                good
            }
            _ => false,
        }
    })
    .unwrap_or_else(|e| panic!("{e}: {last:#?}\n{}", c.logs()));
    last.expect("a reply")
}

/// The Service `default/web` (ClusterIP 10.96.0.10, affinity 60 s, ports http
/// and dns), and the records of the Services test, by key: `web`; its slice, with
/// endpoints ready on node `me`, serving and terminating elsewhere, and on
/// 127.0.0.1, 169.254.169.254 and in the Service CIDR; garbage; a Service with
/// 101 ports; a slice of namespace `evil` labelled `web`.
fn service_records(me: &str) -> (&'static str, Vec<(&'static str, String)>) {
    let web = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP",
                 "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                 "ports": [{"name": "http", "port": 80, "targetPort": "web"},
                           {"name": "dns", "port": 53, "protocol": "UDP"}]}}"#;
    let slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-a, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nendpoints:\n\
         - {{addresses: [10.244.1.5], nodeName: {me}}}\n\
         - {{addresses: [10.244.2.5], conditions: {{ready: false, serving: true, terminating: true}}}}\n\
         - {{addresses: [127.0.0.1]}}\n- {{addresses: [169.254.169.254]}}\n- {{addresses: [10.96.0.5]}}\n\
         ports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]\n"
    );
    let ports: Vec<String> = (1..=101)
        .map(|i| format!(r#"{{"name": "p{i}", "port": {i}}}"#))
        .collect();
    let huge = format!(
        r#"{{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "huge", "namespace": "default"}}, "spec": {{"clusterIP": "10.96.0.11", "ports": [{}]}}}}"#,
        ports.join(", ")
    );
    let evil = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
        metadata: {name: web-x, namespace: evil, labels: {kubernetes.io/service-name: web}}\n\
        addressType: IPv4\nendpoints: [{addresses: [10.244.9.9]}]\n\
        ports: [{name: http, port: 8080}]\n"
        .to_owned();
    let puts = vec![
        ("/weft/v1/services/default/web", web.to_owned()),
        ("/weft/v1/endpointslices/default/web-a", slice),
        ("/weft/v1/services/default/junk", "{not json".to_owned()),
        ("/weft/v1/services/default/huge", huge),
        ("/weft/v1/endpointslices/evil/web-x", evil),
    ];
    (web, puts)
}

/// Checks the ports of `default/web` as [`service_records`] makes them: http
/// with affinity, its ready local endpoint and its serving-terminating one, at
/// the slice's numbers; dns over UDP.
fn assert_web_ports(s: &ServicesStatus) {
    let http = s
        .ports
        .iter()
        .find(|p| p.name == "default/web:http")
        .expect("http");
    assert_eq!(http.frontend, "10.96.0.10:80/TCP");
    assert_eq!(http.affinity_s, Some(60));
    let endpoints: Vec<(&str, &str, bool)> = (http.endpoints.iter())
        .map(|e| (e.address.as_str(), e.state.as_str(), e.local))
        .collect();
    assert_eq!(
        endpoints,
        [
            ("10.244.1.5:8080", "ready", true),
            ("10.244.2.5:8080", "serving-terminating", false)
        ]
    );
    let dns = s
        .ports
        .iter()
        .find(|p| p.name == "default/web:dns")
        .expect("dns");
    assert_eq!(dns.frontend, "10.96.0.10:53/UDP");
    assert_eq!(dns.endpoints[0].address, "10.244.1.5:5353");
}

/// Services and EndpointSlices in etcd, beside policy's objects: compiled into
/// the node's table (`weft services`), following changes key by key. Hostile
/// records, as anyone with write access to etcd could put them, are refused
/// with a clear reason naming them: endpoints on 127.0.0.1, 169.254.169.254
/// and inside the Service CIDR (log lines naming the EndpointSlice), a record
/// that is not JSON, a Service with more ports than weft takes, a slice in
/// another namespace labelled with this Service's name. The good Service and
/// its good endpoints work beside them (the positive control), and none of it
/// isolates a pod.
#[test]
fn services_in_etcd_are_compiled_and_hostile_records_are_refused_by_name() {
    let mut c = Cluster::new("esv", 1, &["--service-cidr", "10.96.0.0/12"]);
    c.start(0);
    let me = node_name(c.underlay.host(0));
    let (web, puts) = service_records(&me);
    for (key, value) in &puts {
        c.etcd.put(key, value).unwrap();
    }
    let s = services_when(&c, "the Services compiled", |s| {
        s.ports.len() == 2 && s.bad.len() == 2 && s.slices == 2
    });
    assert_eq!(s.source, "etcd");
    assert_eq!(s.service_cidr.as_deref(), Some("10.96.0.0/12"));
    assert_web_ports(&s);
    assert_eq!(
        s.refused,
        [
            "EndpointSlice default/web-a: 10.96.0.5 refused: inside the Service CIDR",
            "EndpointSlice default/web-a: 127.0.0.1 refused: a loopback address",
            "EndpointSlice default/web-a: 169.254.169.254 refused: a link-local address",
        ]
    );
    assert!(
        s.bad[0].starts_with("Service default/huge (/weft/v1/services/default/huge): 101 ports"),
        "{s:#?}"
    );
    assert!(
        s.bad[1].starts_with("Service default/junk (/weft/v1/services/default/junk): not JSON"),
        "{s:#?}"
    );
    // The other namespace's slice feeds nothing of default's.
    assert_eq!(s.slices, 2);
    assert!(!format!("{s:?}").contains("10.244.9.9"), "{s:#?}");
    let log = c.node(0).log_text();
    for line in [
        "services: EndpointSlice default/web-a: 127.0.0.1 refused: a loopback address",
        "etcd: ignoring Service default/junk (/weft/v1/services/default/junk): not JSON",
    ] {
        assert!(log.contains(line), "{line}\n{log}");
    }
    let policy = weft_cli(c.node(0), "policy status");
    assert!(!policy.contains("isolating"), "{policy}");
    let shown = weft_cli(c.node(0), "services");
    assert!(
        shown.contains("10.96.0.10:80/TCP default/web:http (affinity ClientIP 60s)"),
        "{shown}"
    );
    assert!(shown.contains("10.244.1.5:8080"), "{shown}");

    // A change is one key's: the slice goes, and so do the endpoints; the junk
    // record is mended, and reads.
    c.etcd
        .ctl(&["del", "/weft/v1/endpointslices/default/web-a"])
        .unwrap();
    let mended = web
        .replace("\"web\"", "\"junk\"")
        .replace("10.96.0.10", "10.96.0.12");
    c.etcd
        .put("/weft/v1/services/default/junk", &mended)
        .unwrap();
    let s = services_when(&c, "the slice gone and junk mended", |s| {
        s.ports.len() == 4 && s.bad.len() == 1
    });
    assert!(s.ports.iter().all(|p| p.endpoints.is_empty()), "{s:#?}");
    assert!(s.refused.is_empty(), "{s:#?}");
}

/// The pod on host `i`.
fn pod_of(c: &Cluster, i: usize) -> &Pod {
    &c.pods[i].as_ref().expect("a pod").0
}

/// The ClusterIP of the saved-view Services test's `default/web`.
const SAVED_WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

/// What a raw request (bytes as any client could send them) to `node`'s
/// control socket is answered.
fn raw_request(node: &WeftNode, body: &str) -> weft_proto::Response {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&node.socket).expect("the socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let env: weft_proto::ResponseEnvelope = serde_json::from_slice(&answer)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&answer)));
    env.response
}

/// Services survive a restart with etcd unreachable. Node 0 (`services =
/// "switch"`) holds the Service `default/web`, whose endpoint is its pod q, and
/// its pod p0 reaches q through the ClusterIP. Restarted while its way to etcd
/// is cut, it translates the ClusterIP by the view it saved: p0 reaches q
/// through it again, `weft services` shows the saved Service, and `weft policy
/// explain` follows the ClusterIP to q (and refuses hostile requests with why,
/// beside the good one). As the control, an address of the Service CIDR that no
/// Service holds stays refused. Once etcd is back, its view replaces the saved
/// one.
#[test]
fn a_node_restarted_while_etcd_is_unreachable_translates_cluster_ips_from_the_saved_view() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use weft_perf::probe::{probe, serve, Proto};

    let mut c = Cluster::new(
        "esvs",
        1,
        &["--services", "switch", "--service-cidr", "10.96.0.0/12"],
    );
    c.start(0);
    c.pod(0);
    let q = c.underlay.pod(0, "esq").unwrap();
    let k8s = PodRef {
        namespace: "default".into(),
        name: "q".into(),
    };
    let q_ip = c.node(0).attach_as(&q, "cq", Some(k8s)).unwrap().ip;
    let stop = Arc::new(AtomicBool::new(false));
    let servers = serve(&q, q_ip, &stop);
    let me = node_name(c.underlay.host(0));
    let web = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}}"#;
    let slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-a, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nendpoints: [{{addresses: [{q_ip}], nodeName: {me}}}]\n\
         ports: [{{name: http, port: 80}}]\n"
    );
    c.etcd.put("/weft/v1/services/default/web", web).unwrap();
    c.etcd
        .put("/weft/v1/endpointslices/default/web-a", &slice)
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "p0 to reach q through the ClusterIP",
        || probe(pod_of(&c, 0), SAVED_WEB_IP, Proto::Tcp, 80),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let saved = state_dir(c.underlay.host(0), c.scratch.path()).join("view.json");
    let period = weft_switch::control::saved::PERIOD + Duration::from_secs(5);
    wait_until(period, "node 0 to save the Service", || {
        std::fs::read_to_string(&saved).is_ok_and(|t| t.contains("10.96.0.20"))
    })
    .unwrap();

    c.nodes[0].take().unwrap().stop().unwrap();
    c.bridges[0].as_ref().unwrap().set_cut(true);
    c.start(0);
    let n0 = c.node(0);
    let log = n0.log_text();
    assert!(
        log.contains("store etcd unreachable at boot: ClusterIPs translate by the saved view's 1 Services and 1 EndpointSlices"),
        "{log}"
    );
    assert_eq!(n0.status().unwrap().store.unwrap().state, "degraded");
    let shown = weft_cli(n0, "services");
    assert!(
        shown.contains("source      the etcd view saved at")
            && shown.contains("10.96.0.20:80/TCP default/web:http")
            && shown.contains(&format!("{q_ip}:80")),
        "{shown}"
    );
    wait_until(
        Duration::from_secs(10),
        "p0 to reach q through the saved ClusterIP",
        || probe(pod_of(&c, 0), SAVED_WEB_IP, Proto::Tcp, 80),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // The control: what no Service holds is refused still.
    assert!(!probe(
        pod_of(&c, 0),
        Ipv4Addr::new(10, 96, 0, 99),
        Proto::Tcp,
        80
    ));

    let explained = weft_cli(
        n0,
        "policy explain default/p0 10.96.0.20 TCP 80 --src-port 40000",
    );
    assert!(
        explained.starts_with("allowed")
            && explained.contains(&format!(
                "service default/web:http at 10.96.0.20:80/TCP: translated, given endpoint {q_ip}:80"
            )),
        "{explained}"
    );
    let json = weft_cli(n0, "--json policy explain default/p0 10.96.0.20 TCP 80");
    let reply: Reply = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let Reply::Explained(e) = reply else {
        panic!("{json}");
    };
    let svc = e.service.expect("the Service part");
    assert_eq!(svc.endpoints.len(), 1, "{svc:#?}");
    assert!(
        svc.endpoints[0].usable && svc.endpoints[0].allowed,
        "{svc:#?}"
    );
    // Hostile requests, through the socket as any client could write them.
    let ask = |dst: &str, port: &str| {
        format!(
            r#"{{"version": 1, "verb": "policy_explain", "src": "default/p0", "dst": "{dst}", "protocol": "TCP", "port": {port}}}"#
        )
    };
    assert!(matches!(
        raw_request(n0, &ask("10.96.0.20", "80")),
        weft_proto::Response::Ok(Reply::Explained(_))
    ));
    for (dst, port, why) in [
        ("10.96.0.20", "70000", "70000"),
        ("10.96.0.20", "-1", "-1"),
        ("fd00::20", "80", "IPv6 address"),
        ("10.96.0.20", "0", "port 0 is not 1 to 65535"),
    ] {
        match raw_request(n0, &ask(dst, port)) {
            weft_proto::Response::Error(e) => assert!(e.message.contains(why), "{e:?}"),
            other => panic!("{dst} {port}: {other:?}"),
        }
    }
    let unknown = weft_cli(n0, "policy explain default/p0 10.96.0.99 TCP 80");
    assert!(
        unknown.starts_with("denied") && unknown.contains("no Service holds 10.96.0.99"),
        "{unknown}"
    );

    c.bridges[0].as_ref().unwrap().set_cut(false);
    wait_until(Duration::from_secs(20), "node 0 to read etcd again", || {
        let s = n0.status().unwrap().store.unwrap();
        s.state == "ok" && s.from_saved.is_none()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let s = services_when(&c, "the store's Services", |s| s.source == "etcd");
    assert_eq!(s.ports.len(), 1, "{s:#?}");
    assert!(probe(pod_of(&c, 0), SAVED_WEB_IP, Proto::Tcp, 80));
    stop.store(true, Ordering::Relaxed);
    for t in servers {
        let _ = t.join();
    }
}
