//! Services, egress and the host port under the rules kube-proxy writes, with real
//! kernels: weftd nodes in network namespaces, kube-proxy's iptables or nftables rules
//! loaded on every node (`weft_perf::kubeproxy`, with `iptables-restore` and `nft`),
//! the reference `portmap` plugin for a hostPort, a world beyond the nodes' router that
//! has no route to pods, and an attacker on the underlay with a raw socket.
//!
//! Every datapath (VXLAN, sleeve, direct routing, encrypted sleeve) runs under both of
//! kube-proxy's modes. Each case is a TCP exchange and a UDP request and reply, each
//! side checking what the other sent; the server answers with the address it saw.
//!
//! These tests need root (they create namespaces); they fail, never skip, without it.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use weft_perf::cni::{Network, Verb, REFERENCE_PLUGIN_DIR};
use weft_perf::kubeproxy::{self, Endpoint, Protocol, Service, TrafficPolicy};
use weft_perf::netns::{veth, wait_until, Netns};
use weft_perf::topo::{Pod, Underlay};
use weft_perf::weft::{in_netns, peers_toml, write_atomic, Cluster, PeerNode, Scratch, WeftNode};
use weft_proto::{PodRef, Reply, Request};

mod support;
use support::*;

/// The underlay's router (on the wire namespace's bridge) and the world behind it.
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 254);
const WORLD_GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const WORLD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// A machine on the nodes' segment that is no node.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 99);
/// The ClusterIPs.
const TO_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TO_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const TO_SELF: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const NODEPORT_CLUSTER: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
const NODEPORT_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 14);
const TO_PROTECTED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 15);
/// Service ports, and node ports (TCP and UDP alike).
const SVC_TCP: u16 = 80;
const SVC_UDP: u16 = 53;
const NP_CLUSTER: u16 = 30080;
const NP_LOCAL: u16 = 30081;
const HOST_PORT: u16 = 31000;
/// The port the spoofing test aims at.
const SPOOF_PORT: u16 = 9999;
const SPOOFS: u64 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KubeProxy {
    Iptables,
    Nftables,
}

#[test]
fn vxlan_under_kube_proxy_iptables() {
    services(VXLAN, KubeProxy::Iptables);
}

#[test]
fn vxlan_under_kube_proxy_nftables() {
    services(VXLAN, KubeProxy::Nftables);
}

#[test]
fn sleeve_under_kube_proxy_iptables() {
    services(SLEEVE, KubeProxy::Iptables);
}

#[test]
fn sleeve_under_kube_proxy_nftables() {
    services(SLEEVE, KubeProxy::Nftables);
}

#[test]
fn direct_routing_under_kube_proxy_iptables() {
    services(DIRECT, KubeProxy::Iptables);
}

#[test]
fn direct_routing_under_kube_proxy_nftables() {
    services(DIRECT, KubeProxy::Nftables);
}

#[test]
fn encrypted_sleeve_under_kube_proxy_iptables() {
    services(ENCRYPTED, KubeProxy::Iptables);
}

#[test]
fn encrypted_sleeve_under_kube_proxy_nftables() {
    services(ENCRYPTED, KubeProxy::Nftables);
}

/// weft's nftables table: installed at start, replaced whole by a restart after a
/// crash (no rule twice), removed at a clean stop, with no other table touched.
#[test]
fn the_masquerade_table_comes_and_goes_with_weftd() {
    let scratch = Scratch::new("svtpol").expect("a scratch directory");
    let opts = options(VXLAN, scratch.path());
    let mut c = Cluster::new("svt", 1, 0, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    let ns = &c.underlay.host(0).ns;
    // Somebody else's table, which weftd must leave alone.
    load(
        ns,
        &["nft", "-f", "-"],
        "table ip other {\n  chain c {\n    type nat hook postrouting priority 0;\n  }\n}\n",
    );
    let listed = |ns: &Netns| ns.run(&["nft", "list", "table", "ip", "weft"]);
    let table = listed(ns).expect("weft's table");
    let count = |needle: &str| table.matches(needle).count();
    assert_eq!(count("ip saddr 10.244.0.0/16 ip daddr != {"), 1, "{table}");
    assert_eq!(count("masquerade fully-random"), 1, "{table}");
    assert_eq!(count("10.96.0.0/16"), 1, "{table}");
    assert_eq!(
        count("ip daddr 10.250.0.1 udp dport 8472 notrack"),
        1,
        "{table}"
    );
    assert_eq!(
        count("ip saddr 10.250.0.1 udp dport 8472 notrack"),
        1,
        "{table}"
    );
    let node = c.nodes.pop().expect("a node");
    node.kill().expect("a crash");
    let restarted = weft_perf::weft::WeftNode::start(
        c.underlay.host(0),
        &c.scratch.path().join("peers.toml"),
        c.scratch.path(),
        &opts,
    )
    .expect("a restart");
    let ns = &c.underlay.host(0).ns;
    assert_eq!(listed(ns).expect("weft's table"), table, "replaced whole");
    restarted.stop().expect("a clean stop");
    assert!(listed(ns).is_err(), "the table is gone after a clean stop");
    assert!(
        ns.run(&["nft", "list", "table", "ip", "other"]).is_ok(),
        "another table stays"
    );
}

/// The mixed setup: node 0 routes to node 1 directly, node 1 tunnels back (a peers
/// file that declares node 0's direct routing only). A pod on node 0 reaches a
/// ClusterIP whose endpoint is on node 1 and the endpoint directly, both ways of the
/// host, and nothing is refused as spoofed.
#[test]
fn one_node_routes_directly_the_other_tunnels_back() {
    let tag = "svm";
    let underlay = Underlay::new(tag, 2).expect("the underlay");
    let scratch = Scratch::new(tag).expect("a scratch directory");
    let peers = scratch.path().join("peers.toml");
    let mut nodes: Vec<PeerNode> = underlay.hosts().iter().map(PeerNode::of).collect();
    nodes[0].direct_routing = Some(true);
    write_atomic(&peers, &peers_toml(&nodes)).expect("the peers file");
    let policy = Scratch::new("svmpol").expect("a policy directory");
    let mut node_opts = options(VXLAN, policy.path());
    let plain = node_opts.clone();
    node_opts
        .extra
        .extend(["--direct-routing".into(), "true".into()]);
    for h in underlay.hosts() {
        for key in ["all", "eth0"] {
            h.ns.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "2")
                .unwrap();
        }
    }
    let n0 = WeftNode::start(underlay.host(0), &peers, scratch.path(), &node_opts).expect("node 0");
    let n1 = WeftNode::start(underlay.host(1), &peers, scratch.path(), &plain).expect("node 1");
    let path = |n: &WeftNode| n.peers().expect("peers")[0].path.clone();
    assert!(path(&n0).starts_with("direct via"), "{}", path(&n0));
    assert_eq!(path(&n1), "vxlan");
    let (a, b) = (underlay.pod(0, "a").unwrap(), underlay.pod(1, "b").unwrap());
    let a_ip = n0.attach(&a, "svm-a").expect("attach").ip;
    let b_ip = n1.attach(&b, "svm-b").expect("attach").ip;
    let mut servers = Servers::new();
    servers.serve(&b.ns, b_ip);
    let vip = TO_REMOTE;
    let services = [Protocol::Tcp, Protocol::Udp].map(|protocol| Service {
        name: "default/mixed".into(),
        port_name: format!("{protocol:?}").to_lowercase(),
        protocol,
        cluster_ip: vip,
        port: if protocol == Protocol::Tcp {
            SVC_TCP
        } else {
            SVC_UDP
        },
        node_port: None,
        external_traffic_policy: TrafficPolicy::Cluster,
        endpoints: vec![Endpoint {
            ip: b_ip,
            port: if protocol == Protocol::Tcp {
                TCP_PORT
            } else {
                UDP_PORT
            },
            local: false,
        }],
    });
    let node = kubeproxy::Node {
        cluster_cidr: weft_perf::weft::CLUSTER_CIDR.parse().unwrap(),
        node_ips: vec![underlay.host(0).underlay_ip],
    };
    load(
        &underlay.host(0).ns,
        &["iptables-restore", "--noflush"],
        &kubeproxy::iptables_restore(&node, &services),
    );
    let logs = || format!("{}\n{}", n0.log_text(), n1.log_text());
    for (what, to) in [
        ("ClusterIP", (vip, (SVC_TCP, SVC_UDP))),
        ("pod", (b_ip, (TCP_PORT, UDP_PORT))),
    ] {
        let tcp = tcp_exchange(&a.ns, SocketAddr::from((to.0, to.1 .0)));
        let udp = udp_exchange(&a.ns, SocketAddr::from((to.0, to.1 .1)));
        for r in [tcp, udp] {
            let answer = r.unwrap_or_else(|e| panic!("A → {what}: {e}\n{}", logs()));
            assert_eq!(answer.seen, a_ip, "{what}: no NAT");
        }
    }
    for n in [&n0, &n1] {
        let host = match n.ok(&Request::Ports).expect("ports") {
            Reply::Ports { ports } => ports.into_iter().find(|p| p.kind == "host").unwrap(),
            other => panic!("{other:?}"),
        };
        let spoofed = host.counters.drops.iter().find(|(r, _)| r == "spoofed");
        assert_eq!(spoofed, None, "{}: {:?}", n.name, host.counters);
    }
    drop(servers);
    drop((n0, n1));
}

// ---------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------

/// A cluster under kube-proxy's rules, its world, its attacker and its servers.
/// Fields drop in order: servers, then the cluster, then the outer namespaces.
struct Lab {
    servers: Servers,
    cluster: Cluster,
    /// Node 1's pod that an ingress policy protects: only node 0's pod 0 may open
    /// connections to it.
    protected: (Pod, Ipv4Addr),
    world: Netns,
    attacker: Netns,
    _policy: Scratch,
    kp: KubeProxy,
}

/// Runs `argv` in `ns` with `input` on its standard input.
fn load(ns: &Netns, argv: &[&str], input: &str) {
    let mut child = ns
        .cmd(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?} in {}: {}\n{input}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn new(d: Datapath, kp: KubeProxy) -> Lab {
        let tag = format!(
            "sv{}{}",
            d.tag,
            if kp == KubeProxy::Iptables { "i" } else { "n" }
        );
        let policy = Scratch::new(&format!("{tag}pol")).expect("a policy directory");
        let opts = options(d, policy.path());
        let underlay = Underlay::new(&tag, d.hosts).expect("the underlay");
        let (world, attacker) = outside(&underlay, &tag);
        let cluster =
            Cluster::on(underlay, &tag, 2, &opts).unwrap_or_else(|e| panic!("the cluster: {e:#}"));
        let pod = cluster.underlay.pod(1, "prot").expect("a pod");
        let k8s = PodRef {
            namespace: "default".into(),
            name: "protected".into(),
        };
        let att = cluster.nodes[1]
            .attach_as(&pod, &format!("{tag}-protected"), Some(k8s))
            .expect("attach");
        let mut lab = Lab {
            servers: Servers::new(),
            cluster,
            protected: (pod, att.ip),
            world,
            attacker,
            _policy: policy,
            kp,
        };
        protect(&lab.cluster, lab._policy.path(), lab.protected.1);
        lab.load_kube_proxy();
        lab.portmap(Verb::Add);
        for h in 0..d.hosts {
            for p in 0..2 {
                lab.servers
                    .serve(&lab.cluster.pod(h, p).ns, lab.cluster.ip(h, p));
            }
        }
        lab.servers.serve(&lab.protected.0.ns, lab.protected.1);
        lab.servers.serve(&lab.world, WORLD);
        lab
    }

    /// The Services, as kube-proxy would have them on node `h`.
    fn services(&self, h: usize) -> Vec<Service> {
        let c = &self.cluster;
        let hosts = c.nodes.len();
        let ep = |node: usize, ip: Ipv4Addr, port: u16| Endpoint {
            ip,
            port,
            local: node == h,
        };
        let mut out = Vec::new();
        let mut add =
            |name: &str, vip, node_port: [Option<u16>; 2], etp, eps: &[(usize, Ipv4Addr)]| {
                for (proto, port, target, np) in [
                    (Protocol::Tcp, SVC_TCP, TCP_PORT, node_port[0]),
                    (Protocol::Udp, SVC_UDP, UDP_PORT, node_port[1]),
                ] {
                    out.push(Service {
                        name: format!("default/{name}"),
                        port_name: format!("{proto:?}").to_lowercase(),
                        protocol: proto,
                        cluster_ip: vip,
                        port,
                        node_port: np,
                        external_traffic_policy: etp,
                        endpoints: eps.iter().map(|(n, ip)| ep(*n, *ip, target)).collect(),
                    });
                }
            };
        // The endpoints on the other nodes: two of them with three nodes.
        let remote: Vec<(usize, Ipv4Addr)> = (1..hosts).map(|n| (n, c.ip(n, 0))).collect();
        let none = [None, None];
        add("remote", TO_REMOTE, none, TrafficPolicy::Cluster, &remote);
        add(
            "local",
            TO_LOCAL,
            none,
            TrafficPolicy::Cluster,
            &[(0, c.ip(0, 1))],
        );
        add(
            "self",
            TO_SELF,
            none,
            TrafficPolicy::Cluster,
            &[(0, c.ip(0, 0))],
        );
        let np = [Some(NP_CLUSTER), Some(NP_CLUSTER)];
        add(
            "np-cluster",
            NODEPORT_CLUSTER,
            np,
            TrafficPolicy::Cluster,
            &[(1, c.ip(1, 1))],
        );
        let np = [Some(NP_LOCAL), Some(NP_LOCAL)];
        add(
            "np-local",
            NODEPORT_LOCAL,
            np,
            TrafficPolicy::Local,
            &[(0, c.ip(0, 1))],
        );
        add(
            "protected",
            TO_PROTECTED,
            none,
            TrafficPolicy::Cluster,
            &[(1, self.protected.1)],
        );
        out
    }

    /// Loads kube-proxy's rules on every node.
    fn load_kube_proxy(&self) {
        for (h, host) in self.cluster.underlay.hosts().iter().enumerate() {
            let node = kubeproxy::Node {
                cluster_cidr: weft_perf::weft::CLUSTER_CIDR.parse().unwrap(),
                node_ips: vec![host.underlay_ip],
            };
            let services = self.services(h);
            match self.kp {
                KubeProxy::Iptables => load(
                    &host.ns,
                    &["iptables-restore", "--noflush"],
                    &kubeproxy::iptables_restore(&node, &services),
                ),
                KubeProxy::Nftables => load(
                    &host.ns,
                    &["nft", "-f", "-"],
                    &kubeproxy::nft_ruleset(&node, &services),
                ),
            }
        }
    }

    /// Runs the reference portmap plugin for node 0's pod 1: hostPort [`HOST_PORT`]
    /// to its TCP server, as a runtime chains it after weft-cni.
    fn portmap(&self, verb: Verb) {
        let (pod, ip) = (self.cluster.pod(0, 1), self.cluster.ip(0, 1));
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "weft",
            "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": HOST_PORT, "containerPort": TCP_PORT, "protocol": "tcp"},
                {"hostPort": HOST_PORT, "containerPort": UDP_PORT, "protocol": "udp"},
            ]},
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": pod.ns.path()}],
                "ips": [{"address": format!("{ip}/24"), "interface": 0}],
            },
        });
        let net = Network {
            plugin_dir: REFERENCE_PLUGIN_DIR.into(),
            config,
        };
        let host = &self.cluster.underlay.host(0).ns;
        net.call(verb, host, "portmap-pod", &pod.ns.path(), "eth0")
            .unwrap_or_else(|e| panic!("portmap {verb:?}: {e:#}"));
    }

    fn logs(&self) -> String {
        let mut s = self.cluster.logs();
        for h in self.cluster.underlay.hosts() {
            let rules = match self.kp {
                KubeProxy::Iptables => h.ns.run(&["iptables-save"]),
                KubeProxy::Nftables => h.ns.run(&["nft", "list", "ruleset"]),
            };
            s += &format!(
                "--- rules of {}\n{}\n",
                h.ns.name(),
                rules.unwrap_or_default()
            );
        }
        s
    }

    /// Both exchanges from `ns` to `vip` (the Service ports, or `ports`): the
    /// address the servers saw the client as, and which servers answered.
    fn exchange_with(
        &self,
        what: &str,
        ns: &Netns,
        vip: Ipv4Addr,
        ports: (u16, u16),
    ) -> [Answer; 2] {
        let tcp = tcp_exchange(ns, SocketAddr::from((vip, ports.0)));
        let udp = udp_exchange(ns, SocketAddr::from((vip, ports.1)));
        match (tcp, udp) {
            (Ok(a), Ok(b)) => [a, b],
            (t, u) => panic!("{what}: TCP {t:?}, UDP {u:?}\n{}", self.logs()),
        }
    }

    /// [`Lab::exchange_with`], for the address the servers saw the client as.
    fn exchange(&self, what: &str, ns: &Netns, vip: Ipv4Addr, ports: (u16, u16)) -> [Ipv4Addr; 2] {
        self.exchange_with(what, ns, vip, ports).map(|a| a.seen)
    }

    /// The host port's counters and host flows on node `h`.
    fn host_port(&self, h: usize) -> weft_proto::PortInfo {
        match self.cluster.nodes[h].ok(&Request::Ports).expect("ports") {
            Reply::Ports { ports } => ports
                .into_iter()
                .find(|p| p.kind == "host")
                .expect("a host port"),
            other => panic!("{other:?}"),
        }
    }

    /// The drops of `reason` on node `h`'s port at `ip`.
    fn port_drops(&self, h: usize, ip: Ipv4Addr, reason: &str) -> u64 {
        port_drops(&self.cluster.nodes[h], ip, reason)
    }
}

/// The world and the attacker around `underlay`: the wire namespace becomes the
/// nodes' router (10.250.0.254) to a world namespace (198.18.0.2) that has no route
/// to pods; every host gets a default route through it, as real nodes have. The
/// attacker is one more machine on the nodes' segment.
fn outside(underlay: &Underlay, tag: &str) -> (Netns, Netns) {
    let wire = underlay.wire();
    wire.ip(&["addr", "add", &format!("{ROUTER}/24"), "dev", "br0"])
        .expect("the router's address");
    wire.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
    let world = Netns::new(&format!("{tag}wo")).expect("the world");
    veth(wire, "world", &world, "eth0").expect("the world's link");
    wire.ip(&["addr", "add", &format!("{WORLD_GW}/24"), "dev", "world"])
        .unwrap();
    wire.link_up("world").unwrap();
    world
        .ip(&["addr", "add", &format!("{WORLD}/24"), "dev", "eth0"])
        .unwrap();
    world.link_up("eth0").unwrap();
    world
        .ip(&["route", "add", "default", "via", &WORLD_GW.to_string()])
        .unwrap();
    for h in underlay.hosts() {
        h.ns.ip(&["route", "add", "default", "via", &ROUTER.to_string()])
            .expect("a default route");
        // systemd's default: loose reverse-path filtering.
        for key in ["all", "eth0"] {
            h.ns.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "2")
                .unwrap();
        }
    }
    let attacker = Netns::new(&format!("{tag}at")).expect("the attacker");
    veth(wire, "atk", &attacker, "eth0").expect("the attacker's link");
    wire.ip(&["link", "set", "dev", "atk", "master", "br0", "up"])
        .unwrap();
    attacker
        .ip(&["addr", "add", &format!("{ATTACKER}/24"), "dev", "eth0"])
        .unwrap();
    attacker.link_up("eth0").unwrap();
    (world, attacker)
}

// ---------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------

fn services(d: Datapath, kp: KubeProxy) {
    let lab = Lab::new(d, kp);
    let c = &lab.cluster;
    let (client, client_ip) = (&c.pod(0, 0).ns, c.ip(0, 0));
    let node0 = c.underlay.host(0);
    let node0_addrs = [node0.gateway, node0.underlay_ip];
    let svc = (SVC_TCP, SVC_UDP);

    // A pod to a ClusterIP whose endpoints are on other nodes (two of them with three
    // nodes, picked by kube-proxy's statistic rule): the endpoint sees the pod.
    let mut reached = std::collections::BTreeSet::new();
    for _ in 0..if d.hosts > 2 { 24 } else { 2 } {
        let answers =
            lab.exchange_with("pod → ClusterIP, remote endpoints", client, TO_REMOTE, svc);
        for a in answers {
            assert_eq!(a.seen, client_ip);
            reached.insert(a.server);
        }
    }
    let remote: std::collections::BTreeSet<Ipv4Addr> = (1..d.hosts).map(|h| c.ip(h, 0)).collect();
    assert_eq!(
        reached, remote,
        "every remote endpoint answered, and only they"
    );

    // The endpoint on the client's own node, and the client itself (kube-proxy
    // masquerades that hairpin to the node's address).
    let seen = lab.exchange("pod → ClusterIP, local endpoint", client, TO_LOCAL, svc);
    assert_eq!(seen, [client_ip; 2]);
    let seen = lab.exchange("pod → ClusterIP, itself", client, TO_SELF, svc);
    assert!(seen.iter().all(|s| node0_addrs.contains(s)), "{seen:?}");

    // The node itself to a ClusterIP.
    let seen = lab.exchange("node → ClusterIP", &node0.ns, TO_REMOTE, svc);
    assert!(seen.iter().all(|s| node0_addrs.contains(s)), "{seen:?}");

    // From outside: a NodePort with externalTrafficPolicy Cluster (masqueraded, the
    // endpoint on another node) and Local (source kept, the endpoint on this node),
    // and the hostPort of node 0's pod 1 through portmap.
    let at_node0 = node0.underlay_ip;
    let seen = lab.exchange(
        "world → NodePort (Cluster)",
        &lab.world,
        at_node0,
        (NP_CLUSTER, NP_CLUSTER),
    );
    assert!(seen.iter().all(|s| node0_addrs.contains(s)), "{seen:?}");
    let seen = lab.exchange(
        "world → NodePort (Local)",
        &lab.world,
        at_node0,
        (NP_LOCAL, NP_LOCAL),
    );
    assert_eq!(
        seen, [WORLD; 2],
        "externalTrafficPolicy Local keeps the client's address"
    );
    let seen = lab.exchange(
        "world → hostPort",
        &lab.world,
        at_node0,
        (HOST_PORT, HOST_PORT),
    );
    assert_eq!(seen, [WORLD; 2], "portmap keeps the client's address");

    // Egress: the world has no route to pods, so only the masquerade brings answers.
    let seen = lab.exchange("pod → world", client, WORLD, (TCP_PORT, UDP_PORT));
    assert_eq!(seen, [node0.underlay_ip; 2], "the world sees the node");
    // Nothing between pods is rewritten.
    let seen = lab.exchange("pod → pod", client, c.ip(1, 0), (TCP_PORT, UDP_PORT));
    assert_eq!(seen, [client_ip; 2]);

    // The host port counted the connections it handed back.
    let host = lab.host_port(0);
    let flows = host.host_flows.expect("the host port's flows");
    assert!(flows.returned_total >= 2, "{flows:?}");

    policy_on_the_endpoint(&lab);
    if !d.direct {
        spoofing_through_the_host(&lab);
    }
    lab.portmap(Verb::Del);
}

/// NetworkPolicy on the endpoint judges a ClusterIP connection by the client pod's
/// own address, which kube-proxy keeps: the allowed pod gets through, another pod of
/// the same node does not.
fn policy_on_the_endpoint(lab: &Lab) {
    let c = &lab.cluster;
    let seen = lab.exchange(
        "allowed pod → protected ClusterIP",
        &c.pod(0, 0).ns,
        TO_PROTECTED,
        (SVC_TCP, SVC_UDP),
    );
    assert_eq!(seen, [c.ip(0, 0); 2]);
    let before = lab.port_drops(1, lab.protected.1, "policy_ingress");
    let denied = tcp_exchange(&c.pod(0, 1).ns, SocketAddr::from((TO_PROTECTED, SVC_TCP)));
    assert!(
        denied.is_err(),
        "another pod reached the protected one: {denied:?}"
    );
    let after = lab.port_drops(1, lab.protected.1, "policy_ingress");
    assert!(after > before, "the refusal is counted: {before} → {after}");
}

/// A raw-socket sender on the underlay spoofs the allowed pod's address towards the
/// protected pod through node 1's host: nothing arrives, and the host port's
/// `spoofed` rises by exactly the number sent. With its own address, towards an open
/// pod, it is delivered.
fn spoofing_through_the_host(lab: &Lab) {
    let c = &lab.cluster;
    let node1 = c.underlay.host(1);
    lab.attacker
        .ip(&[
            "route",
            "add",
            &node1.pod_subnet.to_string(),
            "via",
            &node1.underlay_ip.to_string(),
        ])
        .unwrap();
    let mut counters = Servers::new();
    let at_protected = counters.count(&lab.protected.0.ns, SPOOF_PORT);
    let at_open = counters.count(&c.pod(1, 1).ns, SPOOF_PORT);
    let spoofed = |h: usize| {
        lab.host_port(h)
            .counters
            .drops
            .iter()
            .find(|(r, _)| r == "spoofed")
            .map_or(0, |(_, n)| *n)
    };
    let before = spoofed(1);
    let raw = in_netns(&lab.attacker, || {
        socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )
    })
    .unwrap()
    .expect("a raw socket");
    let send = |src: Ipv4Addr, dst: Ipv4Addr| {
        let packet = udp_packet(src, dst, SPOOF_PORT);
        raw.send_to(&packet, &SocketAddr::from((dst, 0)).into())
            .expect("a raw send");
    };
    for _ in 0..SPOOFS {
        send(c.ip(0, 0), lab.protected.1);
    }
    // The positive control, after the spoofs: once it has arrived, so would have they.
    for _ in 0..SPOOFS {
        send(ATTACKER, c.ip(1, 1));
    }
    wait_until(Duration::from_secs(5), "the control's datagrams", || {
        at_open.load(Ordering::Relaxed) == SPOOFS
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {} arrived\n{}",
            at_open.load(Ordering::Relaxed),
            lab.logs()
        )
    });
    wait_until(Duration::from_secs(2), "the spoofed count", || {
        spoofed(1) - before == SPOOFS
    })
    .unwrap_or_else(|e| panic!("{e}: spoofed {} → {}", before, spoofed(1)));
    assert_eq!(
        at_protected.load(Ordering::Relaxed),
        0,
        "a spoofed datagram arrived"
    );
}

/// An IPv4 UDP datagram from `src` to `dst`:`port` with a checksum, as a raw socket
/// with IP_HDRINCL sends it.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let payload = b"spoof";
    let udp_len = 8 + payload.len();
    let mut p = vec![0u8; 20 + udp_len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = !ones(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&port.to_be_bytes());
    p[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[20..]);
    let sum = !ones(&pseudo);
    p[26..28].copy_from_slice(&sum.to_be_bytes());
    p
}

fn ones(data: &[u8]) -> u16 {
    let mut acc: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

// ---------------------------------------------------------------------------------
// Two Services, one endpoint, one client port
// ---------------------------------------------------------------------------------

/// Two ClusterIPs with one endpoint between them.
const SHARING: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 96, 0, 20), Ipv4Addr::new(10, 96, 0, 21)];
/// The port the client binds for its connections to both.
const CLIENT_PORT: u16 = 40_000;

#[test]
fn services_sharing_an_endpoint_under_kube_proxy_iptables() {
    services_sharing_an_endpoint(KubeProxy::Iptables);
}

#[test]
fn services_sharing_an_endpoint_under_kube_proxy_nftables() {
    services_sharing_an_endpoint(KubeProxy::Nftables);
}

/// Two ClusterIPs share one endpoint under kube-proxy's rules, and a pod connects to
/// the first, then to the second, from the same port. The host still tracks the
/// first connection (TIME_WAIT), whose reply tuple (endpoint → pod:port) the second
/// would have too: Linux's NAT gives the second connection another source port,
/// which the endpoint sees. The switch takes the SYN the host hands back on that
/// port for the pod's own (its sequence number is the one the pod sent), the
/// connection completes, and nothing is refused as spoofed.
fn services_sharing_an_endpoint(kp: KubeProxy) {
    let tag = if kp == KubeProxy::Iptables {
        "svqi"
    } else {
        "svqn"
    };
    let policy = Scratch::new(&format!("{tag}pol")).expect("a policy directory");
    let c = Cluster::new(tag, 2, 1, &options(VXLAN, policy.path()))
        .unwrap_or_else(|e| panic!("the cluster: {e:#}"));
    let (client, client_ip, endpoint) = (&c.pod(0, 0).ns, c.ip(0, 0), c.ip(1, 0));
    let node0 = &c.underlay.host(0).ns;
    let services = SHARING.map(|vip| Service {
        name: format!("default/shared-{}", vip.octets()[3]),
        port_name: "tcp".into(),
        protocol: Protocol::Tcp,
        cluster_ip: vip,
        port: SVC_TCP,
        node_port: None,
        external_traffic_policy: TrafficPolicy::Cluster,
        endpoints: vec![Endpoint {
            ip: endpoint,
            port: TCP_PORT,
            local: false,
        }],
    });
    let node = kubeproxy::Node {
        cluster_cidr: weft_perf::weft::CLUSTER_CIDR.parse().unwrap(),
        node_ips: vec![c.underlay.host(0).underlay_ip],
    };
    match kp {
        KubeProxy::Iptables => load(
            node0,
            &["iptables-restore", "--noflush"],
            &kubeproxy::iptables_restore(&node, &services),
        ),
        KubeProxy::Nftables => load(
            node0,
            &["nft", "-f", "-"],
            &kubeproxy::nft_ruleset(&node, &services),
        ),
    }
    let _server = PeerEcho::serve(&c.pod(1, 0).ns, TCP_PORT);
    let spoofed = || c.nodes[0].drops("spoofed").expect("the drops");
    let before = spoofed();
    let diagnose = |what: &str, e: String| -> ! {
        let table = node0.run(&["cat", "/proc/net/nf_conntrack"]);
        panic!(
            "{what}: {e}\nrefused as spoofed: {}\nnode 0's connection tracker:\n{}\n{}",
            spoofed() - before,
            table.unwrap_or_else(|e| format!("{e:#}")),
            c.logs()
        )
    };
    let to = |vip| SocketAddr::from((vip, SVC_TCP));
    let first = connect_from(client, CLIENT_PORT, to(SHARING[0]))
        .unwrap_or_else(|e| diagnose("the first Service", e));
    assert_eq!(
        first,
        SocketAddr::from((client_ip, CLIENT_PORT)),
        "no clash yet"
    );
    let second = connect_from(client, CLIENT_PORT, to(SHARING[1]))
        .unwrap_or_else(|e| diagnose("the second Service, same client port", e));
    assert_eq!(second.ip(), client_ip, "the endpoint sees the pod");
    // The case under test: without the rewrite, this test shows nothing.
    assert_ne!(
        second.port(),
        CLIENT_PORT,
        "the host's NAT kept the client's port; the tuples did not clash"
    );
    assert_eq!(spoofed(), before, "nothing refused as spoofed");
}

/// A TCP server that answers every connection with the address it saw the client as
/// (`ip:port`), and closes it; stopped on drop.
struct PeerEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PeerEcho {
    fn serve(ns: &Netns, port: u16) -> PeerEcho {
        let listener = in_netns(ns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
            .expect("the namespace")
            .expect("a TCP listener");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, from)) => {
                        let _ = c.write_all(format!("{from}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        PeerEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `ns`, bound to `port` (SO_REUSEADDR), to a [`PeerEcho`] at `to`:
/// the address it saw the client as.
fn connect_from(ns: &Netns, port: u16, to: SocketAddr) -> Result<SocketAddr, String> {
    use socket2::{Domain, Socket, Type};
    let socket = in_netns(ns, || -> std::io::Result<TcpStream> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(socket2::Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
        s.connect_timeout(&to.into(), PROBE)?;
        Ok(s.into())
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("TCP connect from port {port} to {to}: {e}"))?;
    socket.set_read_timeout(Some(PROBE)).unwrap();
    let mut line = String::new();
    BufReader::new(&socket)
        .read_line(&mut line)
        .map_err(|e| format!("TCP answer from {to}: {e}"))?;
    line.trim_end()
        .parse()
        .map_err(|_| format!("{to} answered {line:?}"))
}
