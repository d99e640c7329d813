//! `weft-cni` against a real weftd, with pods in network namespaces: what ADD sets up,
//! CHECK, the kinds of DEL runtimes send, GC, STATUS, and 100 concurrent pods.
//!
//! These need root (they create namespaces) and fail, never skip, without it. weftd must
//! be built next to weft-cni (`cargo test --workspace` does it).

mod support;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{cni, env_for, VERSIONS};
use weft_cni::proto::{self, PortInfo, Reply, Request};
use weft_perf::netns::{require_root, wait_until};
use weft_perf::topo::{Pod, Underlay};
use weft_perf::weft::{peers_toml, write_atomic, PeerNode, Scratch, WeftNode, WeftOptions};

/// weftd, built next to this plugin.
fn weftd() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_weft-cni")).with_file_name("weftd");
    assert!(
        path.exists(),
        "{} is missing: build it first: cargo build -p weft-switch",
        path.display()
    );
    path
}

/// One host running weftd. Fields drop in order: the daemon first, then the underlay.
struct Node {
    weft: Option<WeftNode>,
    underlay: Underlay,
    scratch: Scratch,
}

impl Node {
    fn start(tag: &str) -> Node {
        require_root();
        let underlay = Underlay::new(tag, 1).expect("underlay");
        let scratch = Scratch::new(tag).expect("scratch dir");
        let peers = scratch.path().join("peers.toml");
        write_atomic(&peers, &peers_toml(&[PeerNode::of(underlay.host(0))])).expect("peers file");
        let opts = WeftOptions {
            binary: weftd(),
            mode: "vxlan".into(),
            workers: 2,
            extra: vec![],
        };
        let weft =
            WeftNode::start(underlay.host(0), &peers, scratch.path(), &opts).expect("weftd starts");
        Node {
            weft: Some(weft),
            underlay,
            scratch,
        }
    }

    fn weft(&self) -> &WeftNode {
        self.weft.as_ref().expect("weftd was stopped")
    }

    /// The daemon's socket path (also after it stopped).
    fn socket(&self) -> PathBuf {
        self.scratch.path().join("node-0.sock")
    }

    fn conf(&self, version: &str, extra: Value) -> String {
        support::conf(version, &self.socket(), extra)
    }

    fn pod(&self, name: &str) -> Pod {
        self.underlay.pod(0, name).expect("pod netns")
    }

    fn ok(&self, request: &Request) -> Reply {
        self.weft()
            .ok(request)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.weft().log_text()))
    }

    fn status(&self) -> proto::Status {
        match self.ok(&Request::Status) {
            Reply::Status(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    fn pod_ports(&self) -> Vec<PortInfo> {
        match self.ok(&Request::Ports) {
            Reply::Ports { ports } => ports.into_iter().filter(|p| p.kind == "pod").collect(),
            other => panic!("{other:?}"),
        }
    }

    /// ADD `pod` as container `id` with `args` in CNI_ARGS and `extra` config keys.
    fn add(&self, pod: &Pod, id: &str, version: &str, args: &str, extra: Value) -> support::Out {
        let netns = netns(pod);
        let mut env = env_for("ADD", id, &netns, "eth0");
        let args = format!("IgnoreUnknown=1;K8S_POD_NAME={};{args}", pod.name);
        env.push(("CNI_ARGS", &args));
        cni(&env, &self.conf(version, extra))
    }

    /// ADD that must succeed; returns the result.
    fn add_ok(&self, pod: &Pod, id: &str, version: &str) -> Value {
        self.add(pod, id, version, "", json!({})).ok()
    }

    fn del(&self, id: &str, netns: &str, version: &str, extra: Value) -> support::Out {
        cni(
            &env_for("DEL", id, netns, "eth0"),
            &self.conf(version, extra),
        )
    }

    fn check(&self, pod: &Pod, id: &str, version: &str, prev: &Value) -> support::Out {
        let netns = netns(pod);
        cni(
            &env_for("CHECK", id, &netns, "eth0"),
            &self.conf(version, json!({"prevResult": prev})),
        )
    }
}

fn netns(pod: &Pod) -> String {
    pod.ns.path().display().to_string()
}

/// The address of an ADD result, without prefix.
fn ip_of(result: &Value) -> Ipv4Addr {
    weft_perf::cni::first_ip(result).unwrap()
}

/// `ip addr` of eth0 in `pod`, or `None` if it has no eth0.
fn eth0(pod: &Pod) -> Option<String> {
    pod.ns.ip(&["-o", "addr", "show", "dev", "eth0"]).ok()
}

fn assert_gone(pod: &Pod) {
    wait_until(Duration::from_secs(5), "eth0 to disappear", || {
        eth0(pod).is_none()
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", eth0(pod)));
}

#[test]
fn add_check_del_in_every_version() {
    let node = Node::start("cnivers");
    let status = node.status();
    for (i, v) in VERSIONS.into_iter().enumerate() {
        let pod = node.pod(&format!("v{i}"));
        let id = format!("version-{i}");
        let r = node.add_ok(&pod, &id, v);
        // The result, in this version's format.
        assert_eq!(r["cniVersion"], v);
        let iface = &r["interfaces"][0];
        assert_eq!(iface["name"], "eth0");
        assert_eq!(iface["sandbox"], netns(&pod).as_str());
        assert_eq!(
            iface.get("mtu").and_then(Value::as_u64),
            (v == "1.1.0").then_some(u64::from(status.mtu)),
            "{r}"
        );
        let ip = &r["ips"][0];
        assert_eq!(
            ip.get("version").and_then(Value::as_str),
            (v < "1.0.0").then_some("4"),
            "{r}"
        );
        assert_eq!(ip["gateway"], "10.244.1.1");
        assert_eq!(ip["interface"], 0);
        assert!(ip["address"].as_str().unwrap().ends_with("/24"), "{r}");
        assert_eq!(
            r["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}])
        );
        // What is really in the pod.
        let addr = ip_of(&r);
        assert!(
            status.pod_subnet == "10.244.1.0/24" && addr.octets()[..3] == [10, 244, 1],
            "{addr}"
        );
        let link = pod
            .ns
            .ip(&["-o", "link", "show", "dev", "eth0"])
            .expect("eth0 exists in the pod");
        assert!(
            link.contains(iface["mac"].as_str().unwrap()),
            "{link} vs {r}"
        );
        assert!(link.contains(&format!("mtu {}", status.mtu)), "{link}");
        assert!(eth0(&pod).unwrap().contains(&format!("{addr}/24")));
        let routes = pod.ns.ip(&["route", "show", "default"]).unwrap();
        assert!(routes.contains("via 10.244.1.1 dev eth0"), "{routes}");
        // ADD again (a runtime retry) gives the same answer.
        assert_eq!(node.add_ok(&pod, &id, v), r);
        if v >= "0.4.0" {
            assert_eq!(node.check(&pod, &id, v, &r).ok(), Value::Null);
        }
        assert_eq!(
            node.del(&id, &netns(&pod), v, json!({"prevResult": r}))
                .ok(),
            Value::Null
        );
        assert_gone(&pod);
        assert_eq!(
            node.del(&id, &netns(&pod), v, json!({})).ok(),
            Value::Null,
            "second DEL"
        );
        if v == "1.1.0" {
            let status = cni(&[("CNI_COMMAND", "STATUS")], &node.conf(v, json!({})));
            assert_eq!(status.ok(), Value::Null);
            let gc = cni(
                &[("CNI_COMMAND", "GC")],
                &node.conf(v, json!({"cni.dev/valid-attachments": []})),
            );
            assert_eq!(gc.ok(), Value::Null);
        }
    }
    assert_eq!(node.status().pods, 0);
}

#[test]
fn requested_addresses_are_honoured() {
    let node = Node::start("cnireq");
    let (a, b, c) = (node.pod("a"), node.pod("b"), node.pod("c"));
    // IP= in CNI_ARGS (podman --ip).
    let r = node
        .add(&a, "req-a", "1.0.0", "IP=10.244.1.77", json!({}))
        .ok();
    assert_eq!(r["ips"][0]["address"], "10.244.1.77/24");
    assert!(eth0(&a).unwrap().contains("10.244.1.77/24"));
    // runtimeConfig.ips (podman network reload, the `ips` capability).
    let r = node
        .add(
            &b,
            "req-b",
            "0.4.0",
            "",
            json!({"runtimeConfig": {"ips": ["10.244.1.78/24"]}}),
        )
        .ok();
    assert_eq!(r["ips"][0]["address"], "10.244.1.78/24");
    assert!(eth0(&b).unwrap().contains("10.244.1.78/24"));
    // An address another pod holds, one outside the node's subnet, a netns that does
    // not exist: refused with what was wrong, and nothing is left allocated.
    let msg = node
        .add(&c, "req-c", "1.0.0", "IP=10.244.1.77", json!({}))
        .err(101);
    assert!(msg.contains("10.244.1.77"), "{msg}");
    let msg = node
        .add(&c, "req-c", "1.0.0", "IP=10.244.9.9", json!({}))
        .err(101);
    assert!(msg.contains("10.244.9.9"), "{msg}");
    let gone = "/run/netns/weft-cni-test-does-not-exist";
    let env = env_for("ADD", "req-d", gone, "eth0");
    let msg = cni(&env, &node.conf("1.0.0", json!({}))).err(101);
    assert!(msg.contains(gone), "{msg}");
    assert!(eth0(&c).is_none());
    assert_eq!(node.status().pods, 2);
    let held: HashSet<_> = node.pod_ports().iter().filter_map(|p| p.ip).collect();
    assert_eq!(
        held,
        HashSet::from([Ipv4Addr::new(10, 244, 1, 77), Ipv4Addr::new(10, 244, 1, 78)])
    );
    // A repeated ADD that asks for another address than the pod holds.
    let msg = node
        .add(&b, "req-b", "1.0.0", "IP=10.244.1.79", json!({}))
        .err(101);
    assert!(
        msg.contains("10.244.1.79") && msg.contains("10.244.1.78"),
        "{msg}"
    );
    // .77 is free again once its pod is deleted.
    node.del("req-a", &netns(&a), "1.0.0", json!({})).ok();
    let r = node
        .add(&c, "req-c", "1.0.0", "IP=10.244.1.77", json!({}))
        .ok();
    assert_eq!(r["ips"][0]["address"], "10.244.1.77/24");
}

#[test]
fn check_fails_when_eth0_is_deleted() {
    let node = Node::start("cnicheck");
    let pod = node.pod("a");
    let r = node.add_ok(&pod, "chk-a", "1.0.0");
    assert_eq!(node.check(&pod, "chk-a", "1.0.0", &r).ok(), Value::Null);
    // A prevResult that does not match what weftd set up.
    let mut other = r.clone();
    other["ips"][0]["address"] = json!("10.244.1.250/24");
    let msg = node.check(&pod, "chk-a", "1.0.0", &other).err(100);
    assert!(msg.contains("10.244.1.250"), "{msg}");
    // A container that was never added.
    let msg = node.check(&pod, "chk-never", "1.0.0", &r).err(100);
    assert!(msg.contains("chk-never"), "{msg}");
    // Someone deletes the pod's interface behind weft's back.
    pod.ns.ip(&["link", "del", "eth0"]).expect("delete eth0");
    let msg = node.check(&pod, "chk-a", "1.1.0", &r).err(100);
    assert!(msg.contains("eth0") && msg.contains("missing"), "{msg}");
    // DEL still cleans up, and the daemon carries on.
    assert_eq!(
        node.del("chk-a", &netns(&pod), "1.0.0", json!({"prevResult": r}))
            .ok(),
        Value::Null
    );
    assert_eq!(node.status().pods, 0);
    let again = node.add_ok(&pod, "chk-b", "1.0.0");
    assert_eq!(node.check(&pod, "chk-b", "1.0.0", &again).ok(), Value::Null);
    // The pod's netns is gone.
    let path = netns(&pod);
    drop(pod);
    let env = env_for("CHECK", "chk-b", &path, "eth0");
    let msg = cni(&env, &node.conf("1.0.0", json!({"prevResult": again}))).err(100);
    assert!(msg.contains(&path), "{msg}");
    node.del("chk-b", &path, "1.0.0", json!({})).ok();
    assert_eq!(node.status().pods, 0);
}

#[test]
fn every_kind_of_del_releases_the_address() {
    let node = Node::start("cnidel");
    let spare: Vec<Pod> = (0..3).map(|i| node.pod(&format!("s{i}"))).collect();
    let reuse = |i: usize, ip: Ipv4Addr| {
        let r = node.add(
            &spare[i],
            &format!("del-reuse-{i}"),
            "1.0.0",
            &format!("IP={ip}"),
            json!({}),
        );
        assert_eq!(ip_of(&r.ok()), ip, "the address was not released");
    };

    // DEL twice, as the spec allows.
    let a = node.pod("a");
    let ra = node.add_ok(&a, "del-a", "0.4.0");
    node.del("del-a", &netns(&a), "0.4.0", json!({"prevResult": ra}))
        .ok();
    node.del("del-a", &netns(&a), "0.4.0", json!({"prevResult": ra}))
        .ok();
    assert_gone(&a);
    reuse(0, ip_of(&ra));

    // containerd at sandbox removal: CNI_NETNS="" and no prevResult.
    let b = node.pod("b");
    let rb = node.add_ok(&b, "del-b", "1.0.0");
    node.del("del-b", "", "1.0.0", json!({})).ok();
    assert_gone(&b);
    reuse(1, ip_of(&rb));
    node.del("del-b", "", "1.0.0", json!({})).ok();

    // The netns is already gone.
    let c = node.pod("c");
    let rc = node.add_ok(&c, "del-c", "1.1.0");
    let path = netns(&c);
    drop(c);
    assert!(!Path::new(&path).exists());
    node.del("del-c", &path, "1.1.0", json!({"prevResult": rc}))
        .ok();
    reuse(2, ip_of(&rc));

    // A container weftd never saw.
    node.del("del-never", "/run/netns/never", "1.0.0", json!({}))
        .ok();

    // An interface an ADD left behind without a record (weftd died after making it
    // and before its allocation was durable): DEL deletes it by name, as it bears
    // the alias weft gives what it makes (an eth0 without it would stay).
    let d = node.pod("d");
    d.ns.ip(&["tuntap", "add", "dev", "eth0", "mode", "tap"])
        .expect("a stray eth0");
    d.ns.ip(&["link", "set", "eth0", "alias", "weft:del-stray"])
        .expect("weft's alias");
    assert!(eth0(&d).is_some());
    node.del("del-stray", &netns(&d), "1.0.0", json!({})).ok();
    assert_gone(&d);
    assert_eq!(node.status().pods, 3, "only the three re-added pods remain");
}

#[test]
fn gc_releases_what_is_not_listed() {
    let node = Node::start("cnigc");
    let pods: Vec<Pod> = ["a", "b", "c", "d"].iter().map(|n| node.pod(n)).collect();
    let ids = ["gc-a", "gc-b", "gc-c", "gc-d"];
    let ips: Vec<Ipv4Addr> = (0..3)
        .map(|i| ip_of(&node.add_ok(&pods[i], ids[i], "1.1.0")))
        .collect();
    let keep = |ids: &[&str]| -> Value {
        ids.iter()
            .map(|id| json!({"containerID": id, "ifname": "eth0"}))
            .collect()
    };
    let gc = |key: &str, list: Value| {
        let out = cni(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
            &node.conf("1.1.0", json!({ key: list })),
        );
        assert_eq!(out.ok(), Value::Null);
    };
    // b is not listed (and a stale entry for a pod weftd never had is harmless).
    gc(
        "cni.dev/valid-attachments",
        keep(&["gc-a", "gc-c", "gc-unknown"]),
    );
    assert_gone(&pods[1]);
    assert!(eth0(&pods[0]).is_some() && eth0(&pods[2]).is_some());
    assert_eq!(node.status().pods, 2);
    let rd = node
        .add(
            &pods[3],
            "gc-d",
            "1.1.0",
            &format!("IP={}", ips[1]),
            json!({}),
        )
        .ok();
    assert_eq!(ip_of(&rd), ips[1], "b's address was not released");
    // The older key, as libcni also sends it.
    gc("cni.dev/attachments", keep(&["gc-a"]));
    assert_gone(&pods[2]);
    assert_gone(&pods[3]);
    assert_eq!(node.status().pods, 1);
    gc("cni.dev/valid-attachments", json!([]));
    assert_gone(&pods[0]);
    assert_eq!(node.status().pods, 0);
    let rb = node
        .add(
            &pods[1],
            "gc-b2",
            "1.1.0",
            &format!("IP={}", ips[0]),
            json!({}),
        )
        .ok();
    assert_eq!(ip_of(&rb), ips[0]);
}

#[test]
fn status_follows_the_daemon() {
    let mut node = Node::start("cnistat");
    let status = || cni(&[("CNI_COMMAND", "STATUS")], &node.conf("1.1.0", json!({})));
    assert_eq!(status().ok(), Value::Null);
    let pod = node.pod("a");
    let r = node.add_ok(&pod, "st-a", "1.1.0");
    node.weft.take().unwrap().stop().expect("weftd stops");
    let out = cni(&[("CNI_COMMAND", "STATUS")], &node.conf("1.1.0", json!({})));
    assert!(out.err(50).contains(&node.socket().display().to_string()));
    node.add(&pod, "st-b", "1.1.0", "", json!({})).err(11);
    node.del("st-a", &netns(&pod), "1.1.0", json!({"prevResult": r}))
        .err(11);
    node.del("st-a", "", "1.1.0", json!({})).err(11);
    node.check(&pod, "st-a", "1.1.0", &r).err(11);
    let gc = cni(
        &[("CNI_COMMAND", "GC")],
        &node.conf("1.1.0", json!({"cni.dev/valid-attachments": []})),
    );
    gc.err(11);
}

/// Runs `f(i)` for `0..n` on `n` threads at once and returns the results in order.
fn parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let f = &f;
                s.spawn(move || f(i))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    })
}

#[test]
fn hundred_concurrent_adds_and_dels() {
    const N: usize = 100;
    let node = Node::start("cni100");
    let pods: Vec<Pod> = (0..N).map(|i| node.pod(&format!("c{i}"))).collect();
    let id = |i: usize| format!("storm-{i:03}");
    // A generous bound, as weftd attaches one pod at a time; below the test's own
    // kill at RUN_BOUND, so the plugin's bound is the one that acts.
    let slow = json!({"timeout": support::RUN_BOUND.as_secs() - 10});

    let start = Instant::now();
    let results = parallel(N, |i| node.add(&pods[i], &id(i), "1.0.0", "", slow.clone()));
    let add_time = start.elapsed();
    let ips: Vec<Ipv4Addr> = results.iter().map(|r| ip_of(&r.ok())).collect();
    let distinct: HashSet<_> = ips.iter().copied().collect();
    assert_eq!(distinct.len(), N, "duplicate addresses: {ips:?}");
    for (i, pod) in pods.iter().enumerate() {
        let addr = eth0(pod).unwrap_or_else(|| panic!("pod {i} has no eth0"));
        assert!(addr.contains(&format!("{}/24", ips[i])), "pod {i}: {addr}");
    }
    let ports: HashSet<_> = node.pod_ports().iter().filter_map(|p| p.ip).collect();
    assert_eq!(ports, distinct);

    let start = Instant::now();
    let dels = parallel(N, |i| {
        node.del(&id(i), &netns(&pods[i]), "1.0.0", slow.clone())
    });
    let del_time = start.elapsed();
    for d in &dels {
        d.ok();
    }
    assert_eq!(node.status().pods, 0);
    assert!(node.pod_ports().is_empty());
    for pod in &pods {
        assert_gone(pod);
    }
    // Every address is free: new containers get each of them when they ask.
    let again = parallel(N, |i| {
        node.add(
            &pods[i],
            &format!("again-{i:03}"),
            "1.1.0",
            &format!("IP={}", ips[i]),
            slow.clone(),
        )
    });
    for (i, r) in again.iter().enumerate() {
        assert_eq!(ip_of(&r.ok()), ips[i]);
    }
    eprintln!(
        "{N} concurrent ADDs in {add_time:?}, {N} concurrent DELs in {del_time:?}; slowest ADD {:?}, slowest DEL {:?}",
        results.iter().map(|r| r.elapsed).max().unwrap(),
        dels.iter().map(|r| r.elapsed).max().unwrap()
    );
}
