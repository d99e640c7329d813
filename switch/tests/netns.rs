//! weftd in network namespaces: real TAP ports, real kernel TCP, real tunnels.
//!
//! These tests need root (they create namespaces); they fail, never skip, without it.
//! Each builds its own underlay and pods with unique names and tears everything down
//! on drop, also when an assertion fails.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use weft_encap::sleeve::seal::is_sealed;
use weft_perf::netns::{require_root, wait_until, Netns};
use weft_perf::topo::{kernel_vxlan, Offload, Pod, Underlay};
use weft_perf::traffic::{tcp_transfer, udp_verified, Pattern};
use weft_perf::weft::{
    in_netns, kernel_peer, peers_toml, write_atomic, Cluster, PeerNode, Scratch, WeftNode,
    WeftOptions,
};
use weft_proto::{AttachRequest, Attachment, PeerInfo, Reply, Request, Response};

const STALL: Duration = Duration::from_secs(30);
/// The verified transfer of the datapath tests: 1 GB, both tunnel modes.
const BIG_TRANSFER: u64 = 1_000_000_000;

fn options(mode: &str, extra: &[&str]) -> WeftOptions {
    WeftOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_weftd")),
        mode: mode.into(),
        workers: 2,
        extra: extra.iter().map(|s| s.to_string()).collect(),
    }
}

fn drops(p: &PeerInfo, reason: &str) -> u64 {
    p.counters
        .drops
        .iter()
        .find(|(r, _)| r == reason)
        .map_or(0, |(_, n)| *n)
}

/// Pings, node↔pod, no NAT, and a 1 GB transfer across hosts, in one tunnel mode.
fn datapath(mode: &str) {
    datapath_with(mode, "tap");
}

/// [`datapath`] with every pod on a port of type `port`.
fn datapath_with(mode: &str, port: &str) {
    let opts = options(mode, &["--pod-port", port]);
    let c = Cluster::new(&format!("dp{}{}", &mode[..1], &port[..1]), 2, 2, &opts)
        .expect("the cluster starts");
    for (_, a) in c.pods.iter().flatten() {
        assert_eq!(a.port.as_str(), port, "{a:?}");
    }
    let ping = |h: usize, p: usize, dst: Ipv4Addr| {
        c.pod(h, p)
            .ns
            .ping(dst, 2)
            .unwrap_or_else(|e| panic!("pod {h}/{p} → {dst}: {e:#}\n{}", c.logs()))
    };
    // Same host, across hosts, both directions.
    ping(0, 0, c.ip(0, 1));
    ping(0, 0, c.ip(1, 0));
    ping(1, 1, c.ip(0, 1));
    // Node → local pod, node → remote pod, pod → its gateway, pod → remote node.
    let (h0, h1) = (c.underlay.host(0), c.underlay.host(1));
    h0.ns.ping(c.ip(0, 0), 2).expect("node 0 → its pod");
    h0.ns.ping(c.ip(1, 1), 2).expect("node 0 → pod on node 1");
    ping(0, 0, h0.gateway);
    ping(0, 1, h1.underlay_ip);

    // No NAT: the server sees the client pod's own address, and a node's traffic
    // arrives from the node's own address on the pod network.
    let t = tcp_transfer(&c.pod(1, 0).ns, c.ip(1, 0), &c.pod(0, 0).ns, 1 << 20, STALL)
        .expect("pod → pod");
    assert_eq!(
        t.peer.ip(),
        IpAddr::V4(c.ip(0, 0)),
        "pod source address rewritten"
    );
    let t = tcp_transfer(&c.pod(1, 1).ns, c.ip(1, 1), &h0.ns, 1 << 20, STALL).expect("node → pod");
    assert_eq!(t.peer.ip(), IpAddr::V4(h0.gateway));
    let t =
        tcp_transfer(&h1.ns, h1.underlay_ip, &c.pod(0, 1).ns, 1 << 20, STALL).expect("pod → node");
    assert_eq!(
        t.peer.ip(),
        IpAddr::V4(c.ip(0, 1)),
        "pod → remote node was NATed"
    );

    // 1 GB across hosts, every byte verified: the pods' TCP hands weft super-frames,
    // segmented (VXLAN and sleeve) and coalesced again on the way in.
    let t = tcp_transfer(
        &c.pod(1, 1).ns,
        c.ip(1, 1),
        &c.pod(0, 0).ns,
        BIG_TRANSFER,
        STALL,
    )
    .unwrap_or_else(|e| panic!("1 GB transfer: {e:#}\n{}", c.logs()));
    eprintln!(
        "{mode}: 1 GB pod→pod across hosts at {:.2} Gbit/s",
        t.gbit_per_s()
    );

    // UDP both ways across hosts, every datagram checked; a TAP pod takes bursts of a
    // flow merged into UDP super-frames.
    udp_across_hosts(&c, port == "tap" && kernel_takes_uso());

    // The tunnel counters saw it.
    let peers = c.peers(0).expect("peers");
    let p1 = peers
        .iter()
        .find(|p| p.name == "node-1")
        .expect("node-1 listed");
    assert!(p1.counters.tx_bytes > BIG_TRANSFER, "{p1:?}");
    assert_eq!(drops(p1, "bad_encap"), 0, "{p1:?}");
    // And the heartbeats: the peer answers, so it is up, with a round-trip time and
    // the features it announced.
    let h = p1.health.as_ref().expect("a peer has health");
    assert_eq!(h.state, "up", "{p1:?}");
    assert!(h.rtt_us.is_some() && h.echoes_received >= 1, "{p1:?}");
    assert!(h.features.contains(&"echo".to_owned()), "{p1:?}");
}

/// Datagrams `udp_across_hosts` sends each way: 64 bursts of 64.
const UDP_BURSTS: (usize, usize) = (64, 64);

/// Whether this kernel's TAPs take UDP super-frames (USO came to TUN/TAP in 6.2).
fn kernel_takes_uso() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (6, 2)
}

/// Frames `dev` in `ns` has received: for a TAP, one per write weftd made to it (a
/// pod's `eth0`, or the host port `weft0`).
fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    let out = ns
        .run(&[
            "cat",
            &format!("/sys/class/net/{dev}/statistics/rx_packets"),
        ])
        .unwrap_or_else(|e| panic!("{dev} rx_packets: {e:#}"));
    out.trim().parse().expect("a count")
}

/// UDP between pods on different hosts, both ways, each datagram's length, bytes and
/// order checked ([`udp_verified`]), in bursts of 64, 1000, 1422 (the largest a pod
/// MTU of 1450 carries) and 300-byte datagrams. With `merged`, the receiving pod's
/// `eth0` must have taken fewer than half as many writes as datagrams: weftd wrote
/// bursts of one flow as UDP super-frames (USO), which its kernel cut back up.
fn udp_across_hosts(c: &Cluster, merged: bool) {
    let sizes = [64, 1000, 1422, 300];
    for ((fh, fp), (th, tp)) in [((0, 0), (1, 0)), ((1, 1), (0, 1))] {
        let (from, to) = (c.pod(fh, fp), c.pod(th, tp));
        let before = rx_packets(&to.ns, "eth0");
        let n = udp_verified(&from.ns, &to.ns, c.ip(th, tp), &sizes, UDP_BURSTS, STALL)
            .unwrap_or_else(|e| panic!("UDP {fh}/{fp} → {th}/{tp}: {e:#}\n{}", c.logs()));
        let writes = rx_packets(&to.ns, "eth0") - before;
        assert_eq!(n, (UDP_BURSTS.0 * UDP_BURSTS.1) as u64);
        eprintln!("UDP {fh}/{fp} → {th}/{tp}: {n} datagrams verified in {writes} writes");
        if merged {
            assert!(
                writes < n / 2,
                "{n} datagrams took {writes} writes: not merged"
            );
        }
    }
}

/// Direct routing carries UDP both ways, every datagram checked, merged at both ends
/// where the kernel's TAPs take USO: the sending weftd writes a pod's bursts to the
/// host port as UDP super-frames (fewer writes than datagrams on `weft0`), the host
/// routes them unencapsulated, and the receiving weftd hands them to the pod merged.
/// Before, each datagram was a write of its own at both ends, and direct routing lost
/// two thirds of a 64-byte flood.
#[test]
fn direct_routing_merges_udp_both_ways() {
    direct_routing_udp(true);
}

/// The same with USO turned off (`--tap-uso false`), as on kernels before 6.2: every
/// datagram still arrives, each in a write of its own.
#[test]
fn direct_routing_udp_without_uso() {
    direct_routing_udp(false);
}

fn direct_routing_udp(uso: bool) {
    require_root();
    let flag = if uso { "true" } else { "false" };
    let tag = if uso { "udpd" } else { "udpn" };
    let c = Cluster::new(tag, 2, 2, &options("direct", &["--tap-uso", flag]))
        .expect("the cluster starts");
    // Neighbours resolved first, as in any cluster: a burst into an unresolved
    // neighbour loses what its queue cannot hold, whatever the switch does.
    for ((fh, fp), (th, tp)) in [((0, 0), (1, 0)), ((1, 1), (0, 1))] {
        (c.pod(fh, fp).ns.ping(c.ip(th, tp), 1))
            .unwrap_or_else(|e| panic!("ping {fh}/{fp} → {th}/{tp}: {e:#}\n{}", c.logs()));
    }
    let merged = uso && kernel_takes_uso();
    let weft0 = |h: usize| rx_packets(&c.underlay.host(h).ns, "weft0");
    let before = weft0(0) + weft0(1);
    udp_across_hosts(&c, merged);
    let writes = weft0(0) + weft0(1) - before;
    let n = 2 * (UDP_BURSTS.0 * UDP_BURSTS.1) as u64;
    eprintln!("direct, USO {flag}: {n} datagrams sent in {writes} writes to the hosts' weft0");
    if merged {
        assert!(
            writes < n / 2,
            "{n} datagrams took {writes} writes to weft0"
        );
    } else {
        assert!(writes >= n, "{n} datagrams in {writes} writes without USO");
    }
}

/// A peer whose weftd stops answers no heartbeat: it goes down, and comes back up
/// with a new weftd.
fn peer_health(mode: &str) {
    let opts = options(mode, &["--heartbeat-ms", "100"]);
    let mut c =
        Cluster::new(&format!("hb{}", &mode[..1]), 2, 0, &opts).expect("the cluster starts");
    let state = |c: &Cluster| -> String {
        let peers = c.peers(0).expect("peers");
        let p = peers.iter().find(|p| p.name == "node-1").expect("node-1");
        p.health.as_ref().expect("health").state.clone()
    };
    wait_until(Duration::from_secs(10), "node-1 to be up", || {
        state(&c) == "up"
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let stopped = c
        .nodes
        .pop()
        .expect("node 1")
        .stop()
        .expect("stopping weftd");
    assert!(stopped.success(), "{stopped}");
    wait_until(Duration::from_secs(10), "node-1 to be down", || {
        state(&c) == "down"
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let peers = c.scratch.path().join("peers.toml");
    let node = WeftNode::start(c.underlay.host(1), &peers, c.scratch.path(), &opts)
        .expect("weftd starts again");
    c.nodes.push(node);
    wait_until(Duration::from_secs(10), "node-1 to be up again", || {
        state(&c) == "up"
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

#[test]
fn vxlan_peer_health() {
    peer_health("vxlan");
}

#[test]
fn sleeve_peer_health() {
    peer_health("sleeve");
}

#[test]
fn vxlan_datapath() {
    datapath("vxlan");
}

#[test]
fn vxlan_datapath_afxdp() {
    datapath_with("vxlan", "afxdp");
}

#[test]
fn sleeve_datapath_afxdp() {
    datapath_with("sleeve", "afxdp");
}

#[test]
fn sleeve_datapath() {
    datapath("sleeve");
}

/// Ports with a single queue: frames from the other worker reach them through the
/// handoff rings.
#[test]
fn single_queue_ports_use_the_rings() {
    let c = Cluster::new("ring", 2, 2, &options("vxlan", &["--port-queues", "1"]))
        .expect("the cluster starts");
    c.pod(0, 0)
        .ns
        .ping(c.ip(1, 0), 3)
        .expect("ping across hosts");
    c.pod(0, 0)
        .ns
        .ping(c.ip(0, 1), 3)
        .expect("ping on one host");
    for (h, p) in [(0, 1), (1, 1)] {
        let t = tcp_transfer(
            &c.pod(h, p).ns,
            c.ip(h, p),
            &c.pod(1 - h, 0).ns,
            20_000_000,
            STALL,
        )
        .unwrap_or_else(|e| panic!("transfer to {h}/{p}: {e:#}\n{}", c.logs()));
        assert_eq!(t.bytes, 20_000_000);
    }
}

fn send_from(ns: &Netns, src: Ipv4Addr, dst: SocketAddr, payloads: &[Vec<u8>]) {
    let sock = in_netns(ns, || UdpSocket::bind((src, 0)))
        .expect("enter netns")
        .expect("bind UDP");
    for p in payloads {
        sock.send_to(p, dst).expect("send");
    }
}

/// Malformed tunnel datagrams are counted and dropped; forwarding goes on.
fn bad_input(mode: &str) {
    let c = Cluster::new(&format!("bad{}", &mode[..1]), 2, 1, &options(mode, &[]))
        .expect("the cluster starts");
    let (h0, h1) = (c.underlay.host(0), c.underlay.host(1));
    let dst = SocketAddr::from((h0.underlay_ip, 8472));
    let mut garbage = vec![0u8; 200];
    Pattern::new(3).fill(&mut garbage);
    let mut bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x08, 0, 0],   // truncated header
        vec![0u8; 8 + 60],  // no I flag / sleeve version 0
        garbage.clone(),    // garbage
        vec![0xff; 60_000], // oversized, fragmented
        [&[0x08, 0, 0, 0, 0, 0, 0x07, 0][..], &[0u8; 60]].concat(), // VXLAN, wrong VNI
        [&[1u8, 1, 0, 0][..], &[9u8; 6], &[0, 0, 0, 40, 8, 0]].concat(), // sleeve, short record
        [&[1u8, 7, 0, 0][..], &[0u8; 8]].concat(), // sleeve, unknown kind
        [&[1u8, 1, 0, 1][..], &[0u8; 8]].concat(), // sleeve, sealed flag
    ];
    for i in 0..50u8 {
        let mut g = garbage.clone();
        g[0] = i;
        g.truncate(usize::from(i) * 3 + 1);
        bad.push(g);
    }
    send_from(&h1.ns, h1.underlay_ip, dst, &bad);
    // The same from an address that is not a peer.
    h1.ns
        .ip(&["addr", "add", "10.250.0.200/24", "dev", "eth0"])
        .expect("second address");
    send_from(&h1.ns, "10.250.0.200".parse().unwrap(), dst, &bad[..5]);

    let sent = bad.len() as u64;
    wait_until(Duration::from_secs(5), "drops to be counted", || {
        let peers = c.peers(0).expect("peers");
        let p1 = peers.iter().find(|p| p.name == "node-1").unwrap();
        let unknown = peers.iter().find(|p| p.name.starts_with('(')).unwrap();
        drops(unknown, "unknown_peer") >= 5
            && p1.counters.drops.iter().map(|(_, n)| n).sum::<u64>() >= sent
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", c.peers(0).expect("peers")));
    let peers = c.peers(0).expect("peers");
    let p1 = peers.iter().find(|p| p.name == "node-1").unwrap();
    assert!(drops(p1, "bad_encap") > 0, "{p1:?}");
    // Still forwarding, both ways.
    c.pod(0, 0)
        .ns
        .ping(c.ip(1, 0), 2)
        .expect("ping after bad input");
    c.pod(1, 0)
        .ns
        .ping(c.ip(0, 0), 2)
        .expect("ping after bad input");
    assert!(!c.logs().contains("panicked"), "{}", c.logs());
}

#[test]
fn vxlan_bad_input() {
    bad_input("vxlan");
}

#[test]
fn sleeve_bad_input() {
    bad_input("sleeve");
}

/// weftd on host 0 and the Linux kernel's VXLAN, set up as flannel does, on host 1.
#[test]
fn kernel_vxlan_interop() {
    kernel_vxlan_interop_with("tap");
}

/// [`kernel_vxlan_interop`] from a pod on an AF_XDP port.
#[test]
fn kernel_vxlan_interop_afxdp() {
    kernel_vxlan_interop_with("afxdp");
}

fn kernel_vxlan_interop_with(port: &str) {
    require_root();
    let tag = format!("interop{}", &port[..1]);
    let underlay = Underlay::new(&tag, 2).expect("underlay");
    let scratch = Scratch::new(&tag).unwrap();
    let (h0, h1) = (underlay.host(0), underlay.host(1));
    let (kernel, peers) = kernel_peer(&underlay, scratch.path(), false).expect("kernel VXLAN");
    assert_eq!(h0.tx_offload().unwrap(), Offload::On);
    let opts = options("vxlan", &["--pod-port", port]);
    let node = WeftNode::start(h0, &peers, scratch.path(), &opts).expect("weftd");
    let a = underlay.pod(0, "a").unwrap();
    let b = underlay.pod(1, "b").unwrap();
    let att = node.attach(&a, "interop-a").expect("attach");
    assert_eq!(att.port.as_str(), port);
    let b_ip = h1.pod_ip(2);
    kernel_vxlan::attach_pod(h1, &b, b_ip).expect("kernel pod");

    let logs = || node.log_text();
    a.ns.ping(b_ip, 3)
        .unwrap_or_else(|e| panic!("weft pod → kernel pod: {e:#}\n{}", logs()));
    b.ns.ping(att.ip, 3)
        .unwrap_or_else(|e| panic!("kernel pod → weft pod: {e:#}\n{}", logs()));
    let t = tcp_transfer(&b.ns, b_ip, &a.ns, 50_000_000, STALL).expect("TCP weft → kernel");
    assert_eq!(t.peer.ip(), IpAddr::V4(att.ip));
    let t = tcp_transfer(&a.ns, att.ip, &b.ns, 50_000_000, STALL).expect("TCP kernel → weft");
    assert_eq!(t.peer.ip(), IpAddr::V4(b_ip));
    // UDP both ways, each datagram checked. The kernel sends each datagram through
    // its VXLAN on its own, so how many weftd finds together to merge depends on
    // timing: only the datagrams are checked here (the datapath tests check merging).
    let sizes = [64, 1422, 500];
    let before = rx_packets(&a.ns, "eth0");
    let n =
        udp_verified(&b.ns, &a.ns, att.ip, &sizes, UDP_BURSTS, STALL).expect("UDP kernel → weft");
    let writes = rx_packets(&a.ns, "eth0") - before;
    eprintln!("UDP kernel → weft: {n} datagrams verified in {writes} writes");
    udp_verified(&a.ns, &b.ns, b_ip, &sizes, UDP_BURSTS, STALL).expect("UDP weft → kernel");
    // The kernel node itself reaches the weft pod, too.
    h1.ns.ping(att.ip, 2).expect("kernel node → weft pod");
    // A kernel node never answers weft's heartbeats: unknown, not down.
    let kernel_health = || match node.ok(&Request::Peers).expect("peers") {
        Reply::Peers { peers } => peers
            .into_iter()
            .find(|p| p.name == kernel.name)
            .and_then(|p| p.health)
            .expect("the kernel node's health"),
        other => panic!("{other:?}"),
    };
    wait_until(
        Duration::from_secs(10),
        "heartbeats to the kernel node",
        || kernel_health().heartbeats_sent >= 4,
    )
    .unwrap();
    let h = kernel_health();
    assert_eq!(
        (h.state.as_str(), h.echoes_received),
        ("unknown", 0),
        "{h:?}"
    );
    drop(node);
}

/// An AF_XDP pod and a TAP pod on one host, and across hosts: pings and verified
/// TCP both ways (a TAP pod's super-frames are cut into segments for the AF_XDP one).
#[test]
fn mixed_tap_and_afxdp_pods() {
    use weft_proto::PortType;
    let c = Cluster::new("mixed", 2, 0, &options("vxlan", &[])).expect("the cluster starts");
    let mut pods = Vec::new();
    for (h, port) in [
        (0, PortType::Afxdp),
        (0, PortType::Tap),
        (1, PortType::Afxdp),
        (1, PortType::Tap),
    ] {
        let pod = c.underlay.pod(h, &format!("m{}", pods.len())).unwrap();
        let att = c.nodes[h]
            .attach_with(&pod, &format!("mixed-{}", pods.len()), None, Some(port))
            .expect("attach");
        assert_eq!(att.port, port);
        pods.push((pod, att));
    }
    for (i, j) in [(0, 1), (1, 0), (0, 3), (3, 0), (1, 2), (2, 1)] {
        let (src, dst) = (&pods[i], &pods[j]);
        src.0
            .ns
            .ping(dst.1.ip, 2)
            .unwrap_or_else(|e| panic!("{i} → {j}: {e:#}\n{}", c.logs()));
        let t = tcp_transfer(&dst.0.ns, dst.1.ip, &src.0.ns, 20_000_000, STALL)
            .unwrap_or_else(|e| panic!("TCP {i} → {j}: {e:#}\n{}", c.logs()));
        assert_eq!(t.peer.ip(), IpAddr::V4(src.1.ip), "{i} → {j}");
    }
    for (i, (pod, _)) in pods.iter().enumerate() {
        c.nodes[i / 2]
            .detach(&format!("mixed-{i}"), Some(&pod.ns))
            .expect("detach");
    }
}

/// What weftd `pid` holds of AF_XDP: its BPF program and map descriptors, its
/// sockets of any kind, and its locked memory.
fn afxdp_footprint(pid: u32) -> (usize, usize, String) {
    let mut bpf = 0;
    let mut sockets = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
    {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.display().to_string();
        bpf += usize::from(target.starts_with("anon_inode:bpf"));
        sockets += usize::from(target.starts_with("socket:"));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let locked = status
        .lines()
        .filter(|l| l.starts_with("VmLck") || l.starts_with("VmPin"))
        .collect::<Vec<_>>()
        .join(" ");
    (bpf, sockets, locked)
}

/// 50 attach/detach cycles of AF_XDP pods leave no XDP program, veth, socket, BPF
/// object or locked memory behind.
#[test]
fn afxdp_attach_detach_cycles_leave_nothing() {
    let c = Cluster::new("xcycle", 1, 0, &options("vxlan", &["--pod-port", "afxdp"]))
        .expect("the cluster starts");
    let node = &c.nodes[0];
    let host = c.underlay.host(0);
    let before = afxdp_footprint(node.pid());
    let maps = || -> Vec<String> {
        let text = std::fs::read_to_string(format!("/proc/{}/maps", node.pid())).unwrap();
        text.lines().map(str::to_owned).collect()
    };
    let maps_before = maps();
    let size = |l: &str| {
        let (a, b) = l.split(' ').next()?.split_once('-')?;
        Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
    };
    let pod = c.underlay.pod(0, "x").unwrap();
    for i in 0..50 {
        let id = format!("xcycle-{i}");
        let att = node.attach(&pod, &id).expect("attach");
        assert_eq!(att.port.as_str(), "afxdp");
        let end = weft_switch::control::host::host_end_name(&id, "eth0");
        assert!(host.ns.ip(&["link", "show", &end]).is_ok(), "{end} made");
        if i % 10 == 0 {
            pod.ns
                .ping(host.gateway, 1)
                .expect("the pod reaches its gateway");
            let (bpf, _, _) = afxdp_footprint(node.pid());
            assert_eq!(bpf, before.0 + 2, "the pod's program and map");
        }
        assert_eq!(node.detach(&id, Some(&pod.ns)).unwrap(), Some(att.ip));
        assert!(pod.ns.ip(&["link", "show", "eth0"]).is_err(), "eth0 left");
        assert!(host.ns.ip(&["link", "show", &end]).is_err(), "{end} left");
    }
    let after = afxdp_footprint(node.pid());
    assert_eq!(after.0, before.0, "BPF descriptors after 50 cycles");
    assert_eq!(after.2, before.2, "locked memory after 50 cycles");
    // weftd's own sockets come and go (netlink, the control socket's clients); two
    // XDP sockets leaked per cycle would be 100.
    assert!(
        after.1 <= before.1 + 4,
        "sockets {} → {}",
        before.1,
        after.1
    );
    // UMEMs and ring mappings are unmapped: no mapping of a UMEM's size, or of an
    // XDP socket, is new. (Threads' allocator arenas may add others.)
    let new: Vec<String> = maps()
        .into_iter()
        .filter(|l| !maps_before.contains(l))
        .filter(|l| l.contains("xdp") || l.contains("socket") || size(l) == Some(4 << 20))
        .collect();
    assert!(new.is_empty(), "mappings left: {new:#?}");
    // No program of ours is attached anywhere in the host's namespace.
    let links = host.ns.ip(&["-d", "link", "show"]).unwrap();
    assert!(!links.contains("xdp"), "{links}");
}

/// A pod MTU above one page (underlay 9000, pod 8950): every frame an AF_XDP port
/// receives from its pod or sends to it spans three 4 KiB UMEM frames
/// (`XDP_USE_SG`). Unfragmented jumbo pings and TCP, on one host and across hosts.
#[test]
fn afxdp_jumbo_frames_span_umem_frames() {
    require_root();
    let underlay = Underlay::with_mtu("jumbo", 2, 9000).expect("underlay");
    let opts = options("vxlan", &["--pod-port", "afxdp"]);
    let c = Cluster::on(underlay, "jumbo", 2, &opts).expect("the cluster starts");
    let mtu = c
        .pod(0, 0)
        .ns
        .run(&["cat", "/sys/class/net/eth0/mtu"])
        .unwrap();
    assert_eq!(mtu.trim(), "8950", "the pod MTU");
    for (h, p) in [(0, 1), (1, 0)] {
        let dst = c.ip(h, p).to_string();
        // 8900 bytes of ICMP data, 8928 on the wire: one IP packet, DF set.
        let ping = [
            "ping", "-n", "-q", "-c", "3", "-W", "1", "-i", "0.2", "-M", "do",
        ];
        let args: Vec<&str> = ping.iter().copied().chain(["-s", "8900", &dst]).collect();
        c.pod(0, 0)
            .ns
            .run(&args)
            .unwrap_or_else(|e| panic!("jumbo ping to {dst}: {e:#}\n{}", c.logs()));
        for (from, to) in [((0, 0), (h, p)), ((h, p), (0, 0))] {
            let t = tcp_transfer(
                &c.pod(to.0, to.1).ns,
                c.ip(to.0, to.1),
                &c.pod(from.0, from.1).ns,
                50_000_000,
                STALL,
            )
            .unwrap_or_else(|e| panic!("TCP {from:?} → {to:?}: {e:#}\n{}", c.logs()));
            assert_eq!(t.peer.ip(), IpAddr::V4(c.ip(from.0, from.1)));
        }
    }
}

/// weftd without CAP_IPC_LOCK and CAP_SYS_RESOURCE, under a 64 KiB RLIMIT_MEMLOCK,
/// cannot pin a 4 MiB UMEM. With `afxdp-fallback` the pod gets a TAP port; without,
/// the ADD fails with the reason, and leaves no veth, program, address or record.
#[test]
fn afxdp_memory_limit_falls_back_or_fails_cleanly() {
    require_root();
    let wrap = Scratch::new("xlimw").expect("scratch dir");
    let weftd = wrap.path().join("weftd-limited");
    let script = format!(
        "#!/bin/sh\nexec prlimit --memlock=65536:65536 setpriv \
         --inh-caps=-ipc_lock,-sys_resource --bounding-set=-ipc_lock,-sys_resource \
         -- {} \"$@\"\n",
        env!("CARGO_BIN_EXE_weftd")
    );
    std::fs::write(&weftd, script).unwrap();
    let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&weftd, exec).unwrap();
    for fallback in [true, false] {
        let flag = if fallback { "true" } else { "false" };
        let mut opts = options("vxlan", &["--pod-port", "afxdp", "--afxdp-fallback", flag]);
        opts.binary = weftd.clone();
        let c =
            Cluster::new(&format!("xlim{}", &flag[..1]), 1, 0, &opts).expect("the cluster starts");
        let node = &c.nodes[0];
        let host = c.underlay.host(0);
        let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap();
        let eff = u64::from_str_radix(eff.trim(), 16).unwrap();
        const CAP_IPC_LOCK: u32 = 14; // linux/capability.h
        assert_eq!(eff & (1 << CAP_IPC_LOCK), 0, "weftd has CAP_IPC_LOCK");
        let before = afxdp_footprint(node.pid());
        let pod = c.underlay.pod(0, "x").unwrap();
        let end = weft_switch::control::host::host_end_name("xlim-1", "eth0");
        let got = node.attach(&pod, "xlim-1");
        assert!(host.ns.ip(&["link", "show", &end]).is_err(), "{end} left");
        assert_eq!(afxdp_footprint(node.pid()).0, before.0, "BPF objects left");
        if fallback {
            let att = got.unwrap_or_else(|e| panic!("fallback attach: {e:#}\n{}", c.logs()));
            assert_eq!(att.port, weft_proto::PortType::Tap);
            pod.ns
                .ping(host.gateway, 1)
                .expect("the TAP pod reaches its gateway");
            assert!(
                c.logs().contains("falling back to a TAP port"),
                "{}",
                c.logs()
            );
            assert_eq!(node.detach("xlim-1", Some(&pod.ns)).unwrap(), Some(att.ip));
        } else {
            let err = format!("{:#}", got.expect_err("the ADD fails without fallback"));
            assert!(
                err.contains("RLIMIT_MEMLOCK") && err.contains("CAP_IPC_LOCK"),
                "{err}"
            );
            assert!(pod.ns.ip(&["link", "show", "eth0"]).is_err(), "eth0 left");
            // No address or record held: DEL finds nothing to release, and the
            // daemon counts no pod; a TAP pod still works.
            assert_eq!(node.detach("xlim-1", Some(&pod.ns)).unwrap(), None);
            assert_eq!(node.status().unwrap().pods, 0);
            let tap = node
                .attach_with(&pod, "xlim-2", None, Some(weft_proto::PortType::Tap))
                .expect("a TAP pod after the failure");
            pod.ns
                .ping(host.gateway, 1)
                .expect("the TAP pod reaches its gateway");
            assert_eq!(node.detach("xlim-2", Some(&pod.ns)).unwrap(), Some(tap.ip));
        }
    }
}

/// Detach removes the interface and releases the address, and is idempotent.
#[test]
fn detach_cleans_up_and_repeats() {
    let c = Cluster::new("detach", 1, 0, &options("vxlan", &[])).expect("the cluster starts");
    let node = &c.nodes[0];
    let pod = c.underlay.pod(0, "x").unwrap();
    let att = node.attach(&pod, "det-1").expect("attach");
    // Attach is idempotent for the same container and netns...
    assert_eq!(node.attach(&pod, "det-1").expect("attach again"), att);
    // ...but not when it asks for another address than the one held.
    let other = Ipv4Addr::from(u32::from(att.ip) + 10);
    match node
        .call(&Request::Attach(AttachRequest {
            container_id: "det-1".into(),
            netns: pod.ns.path().display().to_string(),
            ifname: "eth0".into(),
            requested_ip: Some(other),
            requested_ip6: None,
            pod: None,
            port: None,
        }))
        .unwrap()
    {
        Response::Error(e) => assert!(e.message.contains("already holds"), "{e:?}"),
        ok => panic!("a repeated attach with another address succeeded: {ok:?}"),
    }
    match node.ok(&Request::Status).unwrap() {
        Reply::Status(s) => assert!(s.ready, "{s:?}"),
        other => panic!("{other:?}"),
    }
    assert!(pod.ns.ip(&["link", "show", "eth0"]).is_ok());
    assert_eq!(node.detach("det-1", Some(&pod.ns)).unwrap(), Some(att.ip));
    wait_until(Duration::from_secs(5), "eth0 to disappear", || {
        pod.ns.ip(&["link", "show", "eth0"]).is_err()
    })
    .unwrap();
    assert_eq!(
        node.detach("det-1", Some(&pod.ns)).unwrap(),
        None,
        "second detach"
    );
    // A pod whose netns is gone detaches cleanly, and its address is released.
    let gone = c.underlay.pod(0, "y").unwrap();
    let att2 = node.attach(&gone, "det-2").expect("attach");
    let path = gone.ns.path();
    drop(gone);
    assert!(!path.exists());
    match node
        .call(&Request::Check(weft_proto::CheckRequest {
            container_id: "det-2".into(),
            ifname: "eth0".into(),
            netns: path.display().to_string(),
        }))
        .unwrap()
    {
        Response::Error(e) => assert_eq!(e.kind, weft_proto::ErrorKind::CheckFailed, "{e:?}"),
        ok => panic!("check of a pod whose netns is gone passed: {ok:?}"),
    }
    assert_eq!(node.detach("det-2", None).unwrap(), Some(att2.ip));
    // Bad requests are refused with a reason, and nothing is left allocated.
    let missing = node.call(&Request::Attach(AttachRequest {
        container_id: "det-3".into(),
        netns: "/run/netns/does-not-exist".into(),
        ifname: "eth0".into(),
        requested_ip: None,
        requested_ip6: None,
        pod: None,
        port: None,
    }));
    match missing.unwrap() {
        Response::Error(e) => assert!(e.message.contains("does-not-exist"), "{e:?}"),
        ok => panic!("attach into a missing netns succeeded: {ok:?}"),
    }
    match node.ok(&Request::Status).unwrap() {
        Reply::Status(s) => assert_eq!(s.pods, 0),
        other => panic!("{other:?}"),
    }
}

/// The peers file is reloaded on change: tunnels come and go without a restart.
#[test]
fn peers_file_reload() {
    require_root();
    let underlay = Underlay::new("reload", 2).unwrap();
    let scratch = Scratch::new("reload").unwrap();
    let nodes: Vec<PeerNode> = underlay.hosts().iter().map(PeerNode::of).collect();
    let full = peers_toml(&nodes);
    let only_self = peers_toml(&nodes[..1]);
    let peers0 = scratch.path().join("peers0.toml");
    let peers1 = scratch.path().join("peers1.toml");
    write_atomic(&peers0, &only_self).unwrap();
    write_atomic(&peers1, &full).unwrap();
    let n0 = WeftNode::start(
        underlay.host(0),
        &peers0,
        scratch.path(),
        &options("sleeve", &[]),
    )
    .unwrap();
    let n1 = WeftNode::start(
        underlay.host(1),
        &peers1,
        scratch.path(),
        &options("sleeve", &[]),
    )
    .unwrap();
    let a = underlay.pod(0, "a").unwrap();
    let b = underlay.pod(1, "b").unwrap();
    n0.attach(&a, "rl-a").unwrap();
    let bb = n1.attach(&b, "rl-b").unwrap();
    assert!(a.ns.ping(bb.ip, 1).is_err(), "node 0 has no peer yet");
    write_atomic(&peers0, &full).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the new peer to carry traffic",
        || a.ns.ping(bb.ip, 1).is_ok(),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", n0.log_text()));
    write_atomic(&peers0, &only_self).unwrap();
    wait_until(Duration::from_secs(10), "the removed peer to stop", || {
        a.ns.ping(bb.ip, 1).is_err()
    })
    .unwrap();
    write_atomic(&peers0, &full).unwrap();
    wait_until(Duration::from_secs(10), "the peer to return", || {
        a.ns.ping(bb.ip, 1).is_ok()
    })
    .unwrap();
    // A broken file is refused and the last good peers stay.
    write_atomic(&peers0, "this is [not toml").unwrap();
    wait_until(
        Duration::from_secs(10),
        "the broken file to be noticed",
        || n0.log_text().contains("keeping the previous peers"),
    )
    .unwrap();
    a.ns.ping(bb.ip, 2).expect("peers kept after a broken file");
}

/// SIGTERM: the workers stop, the host port and the socket are removed. Pods keep
/// their interface and address, and a restarted daemon carries their traffic again
/// without a new attach; the same after a crash (SIGKILL).
#[test]
fn restart_keeps_pods() {
    restart_keeps_pods_with("tap");
}

/// [`restart_keeps_pods`] with AF_XDP ports: the veth stays, the new weftd binds new
/// sockets and replaces the program.
#[test]
fn restart_keeps_afxdp_pods() {
    restart_keeps_pods_with("afxdp");
}

fn restart_keeps_pods_with(port: &str) {
    let opts = options("vxlan", &["--pod-port", port]);
    let mut c =
        Cluster::new(&format!("restart{}", &port[..1]), 2, 1, &opts).expect("the cluster starts");
    let peers = c.scratch.path().join("peers.toml");
    let (a, b) = (c.ip(0, 0), c.ip(1, 0));
    c.pod(0, 0).ns.ping(b, 1).expect("ping before restart");
    let host = c.underlay.host(0);
    for crash in [false, true] {
        let node = c.nodes.remove(0);
        let socket = node.socket.clone();
        if crash {
            node.kill().expect("SIGKILL");
        } else {
            let status = node.stop().expect("stop");
            assert!(status.success(), "weftd exited with {status}");
            assert!(!socket.exists(), "control socket left behind");
            assert!(
                host.ns.ip(&["link", "show", "weft0"]).is_err(),
                "weft0 left behind"
            );
        }
        let eth0 = c
            .pod(0, 0)
            .ns
            .ip(&["-4", "addr", "show", "eth0"])
            .expect("pod keeps eth0");
        assert!(eth0.contains(&a.to_string()), "{eth0}");
        let node = WeftNode::start(host, &peers, c.scratch.path(), &opts).expect("restart");
        c.nodes.insert(0, node);
        wait_until(Duration::from_secs(10), "traffic to resume", || {
            c.pod(1, 0).ns.ping(a, 1).is_ok()
        })
        .unwrap_or_else(|e| panic!("crash={crash}: {e:#}\n{}", c.logs()));
        c.pod(0, 0).ns.ping(b, 2).expect("ping after restart");
        match c.nodes[0].ok(&Request::Status).unwrap() {
            Reply::Status(s) => assert_eq!(s.pods, 1, "crash={crash}"),
            other => panic!("{other:?}"),
        }
    }
    // Detach after a restart still removes the persistent interface.
    let prefix = format!("restart{}", &port[..1]);
    c.nodes[0]
        .detach(&format!("{prefix}-0-0"), Some(&c.pod(0, 0).ns))
        .expect("detach");
    assert!(
        c.pod(0, 0).ns.ip(&["link", "show", "eth0"]).is_err(),
        "eth0 left behind"
    );
}

/// Attachments whose pod vanished while the daemon was down are released at start.
#[test]
fn restart_releases_vanished_pods() {
    let mut c = Cluster::new("vanish", 1, 2, &options("sleeve", &[])).expect("the cluster starts");
    let peers = c.scratch.path().join("peers.toml");
    let gone_ip = c.ip(0, 1);
    c.nodes.remove(0).stop().expect("stop");
    let (gone, _) = c.pods[0].remove(1);
    drop(gone);
    let node = WeftNode::start(
        c.underlay.host(0),
        &peers,
        c.scratch.path(),
        &options("sleeve", &[]),
    )
    .unwrap();
    match node.ok(&Request::Status).unwrap() {
        Reply::Status(s) => assert_eq!(s.pods, 1),
        other => panic!("{other:?}"),
    }
    // Its address is free again: a new pod may ask for it.
    let pod = c.underlay.pod(0, "n").unwrap();
    let att = match node
        .ok(&Request::Attach(AttachRequest {
            container_id: "vanish-new".into(),
            netns: pod.ns.path().display().to_string(),
            ifname: "eth0".into(),
            requested_ip: Some(gone_ip),
            requested_ip6: None,
            pod: None,
            port: None,
        }))
        .expect("attach with the released address")
    {
        Reply::Attached(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(att.ip, gone_ip);
    c.nodes.push(node);
    c.pods[0].push((pod, att));
}

/// `kill -9` in the middle of an attach storm, then a restart: no address is held
/// twice, and GC returns every address that is not in use.
#[test]
fn crash_during_attach_storm() {
    use std::collections::HashSet;
    use weft_proto::{AttachmentKey, DetachRequest, GcRequest};

    let mut c = Cluster::new("storm", 1, 0, &options("vxlan", &[])).expect("the cluster starts");
    let peers = c.scratch.path().join("peers.toml");
    let pods: Vec<Pod> = (0..40)
        .map(|i| c.underlay.pod(0, &format!("s{i}")).unwrap())
        .collect();
    let socket = c.nodes[0].socket.clone();
    let weftd = c.nodes[0].pid() as libc::pid_t;
    let answered = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for (i, pod) in pods.iter().enumerate() {
            let (socket, answered) = (&socket, &answered);
            s.spawn(move || {
                let req = Request::Attach(AttachRequest {
                    container_id: format!("storm-{i}"),
                    netns: pod.ns.path().display().to_string(),
                    ifname: "eth0".into(),
                    requested_ip: None,
                    requested_ip6: None,
                    pod: None,
                    port: None,
                });
                if let Ok(Response::Ok(Reply::Attached(a))) =
                    weft_proto::call(socket, &req, Duration::from_secs(20))
                {
                    let mut answered = answered.lock().unwrap();
                    answered.push((i, a.ip));
                    // Part of the storm has landed: crash now, from the thread that
                    // saw it, so the rest is surely cut short.
                    if answered.len() == 5 {
                        // SAFETY: kill has no memory-safety preconditions; `weftd` is
                        // our unreaped child, reaped below.
                        unsafe { libc::kill(weftd, libc::SIGKILL) };
                    }
                }
            });
        }
        wait_until(Duration::from_secs(20), "some attaches to complete", || {
            answered.lock().unwrap().len() >= 5
        })
        .unwrap();
        c.nodes.remove(0).kill().expect("reaping the killed weftd");
    });
    let answered = answered.into_inner().unwrap();
    assert!(
        answered.len() < pods.len(),
        "the crash came too late to test anything"
    );

    let node = WeftNode::start(
        c.underlay.host(0),
        &peers,
        c.scratch.path(),
        &options("vxlan", &[]),
    )
    .unwrap();
    let ports = match node.ok(&Request::Ports).unwrap() {
        Reply::Ports { ports } => ports,
        other => panic!("{other:?}"),
    };
    let ips: Vec<Ipv4Addr> = ports
        .iter()
        .filter(|p| p.kind == "pod")
        .filter_map(|p| p.ip)
        .collect();
    let unique: HashSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), ips.len(), "an address is held twice: {ips:?}");
    // Every answered attach survived the crash with the address it was given.
    for (i, ip) in &answered {
        let port = ports
            .iter()
            .find(|p| p.container_id.as_deref() == Some(&format!("storm-{i}")));
        assert_eq!(
            port.and_then(|p| p.ip),
            Some(*ip),
            "storm-{i} lost its address"
        );
    }
    // The runtime's view: only the answered attaches exist. GC releases the rest.
    let valid: Vec<AttachmentKey> = answered
        .iter()
        .map(|(i, _)| AttachmentKey {
            container_id: format!("storm-{i}"),
            ifname: "eth0".into(),
        })
        .collect();
    node.ok(&Request::Gc(GcRequest { valid })).expect("gc");
    match node.ok(&Request::Status).unwrap() {
        Reply::Status(s) => assert_eq!(s.pods, answered.len()),
        other => panic!("{other:?}"),
    }
    // The runtime also DELs each failed ADD (containerd and podman tear a sandbox
    // down that way), which deletes an interface weftd made but had not recorded yet
    // when it died.
    for (i, pod) in pods.iter().enumerate() {
        if !answered.iter().any(|(j, _)| *j == i) {
            let req = Request::Detach(DetachRequest {
                container_id: format!("storm-{i}"),
                ifname: "eth0".into(),
                netns: Some(pod.ns.path().display().to_string()),
            });
            node.ok(&req).expect("DEL of a failed ADD");
        }
    }
    // Pods that never got an answer have no interface left, and every other address
    // can be handed out again: the pool holds exactly the answered ones.
    for (i, pod) in pods.iter().enumerate() {
        let has = pod.ns.ip(&["link", "show", "eth0"]).is_ok();
        let want = answered.iter().any(|(j, _)| *j == i);
        assert_eq!(
            has, want,
            "storm-{i}: interface present {has}, attach answered {want}"
        );
    }
    let extra = c.underlay.pod(0, "after").unwrap();
    let fresh = node.attach(&extra, "storm-after").expect("attach after GC");
    assert!(!answered.iter().any(|(_, ip)| *ip == fresh.ip));
    c.nodes.push(node);
    drop(pods);
}

/// A plaintext sleeve heartbeat as `node` sends one.
fn plaintext_beat(node: &PeerNode) -> Vec<u8> {
    let mut beat = vec![1u8, 2, 0, 0];
    beat.extend_from_slice(&node.vtep_mac.0);
    beat.extend_from_slice(&[0x03, 0]);
    beat.extend_from_slice(&[0; 16]);
    beat
}

/// The source address and UDP payload of a captured Ethernet frame that is a
/// tunnel datagram (IPv4, UDP to port 8472).
fn tunnel_payload(frame: &[u8]) -> Option<(Ipv4Addr, &[u8])> {
    let ip = frame.get(14..)?;
    let ipv4 = frame.get(12..14)? == [0x08, 0x00];
    let header = usize::from(ip.first()? & 0x0f) * 4;
    let udp = ip.get(header..)?;
    if !ipv4 || *ip.get(9)? != 17 || udp.get(2..4)? != 8472u16.to_be_bytes() {
        return None;
    }
    let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
    Some((Ipv4Addr::from(src), udp.get(8..)?))
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Two nodes with `encryption = "required"`: 1 GB of TCP each way with its bytes
/// verified, both sessions established, and an underlay capture during a marked
/// UDP exchange shows sealed sleeve datagrams and no byte of the pods' payload.
#[test]
fn encrypted_sleeve_carries_1gb_and_shows_no_plaintext() {
    let opts = options("sleeve", &["--encryption", "required"]);
    let c = Cluster::new("enc", 2, 1, &opts).expect("the cluster starts");
    let (a, b) = (c.ip(0, 0), c.ip(1, 0));
    c.pod(0, 0)
        .ns
        .ping(b, 3)
        .expect("ping across an encrypted sleeve");
    for (from, to, ip) in [((0, 0), (1, 0), b), ((1, 0), (0, 0), a)] {
        let t = tcp_transfer(
            &c.pod(to.0, to.1).ns,
            ip,
            &c.pod(from.0, from.1).ns,
            BIG_TRANSFER,
            STALL,
        )
        .unwrap_or_else(|e| panic!("1 GB {from:?} → {to:?}: {e:#}\n{}", c.logs()));
        assert_eq!(t.bytes, BIG_TRANSFER);
    }
    for h in 0..2 {
        let peers = c.peers(h).expect("peers");
        let s = peers[0].session.as_ref().expect("a session row");
        assert_eq!(s.state, "established", "{s:?}");
        assert!(s.handshakes >= 1 && s.key_age_s.is_some(), "{s:?}");
        assert_eq!(
            drops(&peers[0], "seal_refused"),
            0,
            "{:?}",
            peers[0].counters
        );
        assert_eq!(drops(&peers[0], "plaintext"), 0);
    }
    // A marked exchange, captured on host 1's underlay.
    let marker = b"weft-plaintext-marker-0123456789";
    let capture = weft_perf::weft::Capture::start(&c.underlay.host(1).ns, "eth0", 10_000).unwrap();
    let rx = in_netns(&c.pod(1, 0).ns, || UdpSocket::bind((b, 0)))
        .unwrap()
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let dst = rx.local_addr().unwrap();
    let tx = in_netns(&c.pod(0, 0).ns, || UdpSocket::bind((a, 0)))
        .unwrap()
        .unwrap();
    let mut got = 0;
    let mut buf = [0u8; 2048];
    for _ in 0..20 {
        tx.send_to(&marker.repeat(8), dst).unwrap();
        if rx.recv(&mut buf).is_ok_and(|n| contains(&buf[..n], marker)) {
            got += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let frames = capture.finish();
    assert!(got >= 18, "only {got} of 20 marked datagrams arrived");
    assert!(
        frames.iter().all(|f| !contains(f, marker)),
        "plaintext on the underlay"
    );
    // The marked datagrams crossed as sealed sleeve datagrams: UDP to port 8472
    // whose sleeve header has the SEALED flag.
    let sealed = frames
        .iter()
        .filter_map(|f| tunnel_payload(f))
        .filter(|(_, d)| is_sealed(d))
        .count();
    assert!(
        sealed >= 20,
        "{sealed} sealed datagrams in {} frames",
        frames.len()
    );
}

/// A node whose key its peer does not hold cannot get a frame through: its
/// handshakes are refused and its pods reach nothing, while the pair with the
/// right keys talk. Plaintext injected from its address is dropped and counted.
#[test]
fn a_node_with_the_wrong_key_cannot_inject() {
    require_root();
    let underlay = Underlay::new("enck", 3).expect("underlay");
    let scratch = Scratch::new("enck").expect("scratch dir");
    let opts = options("sleeve", &["--encryption", "required"]);
    let mut nodes: Vec<PeerNode> = underlay.hosts().iter().map(PeerNode::of).collect();
    for (n, h) in nodes.iter_mut().zip(underlay.hosts()) {
        n.public_key = Some(weft_perf::weft::node_key(&opts.binary, h, scratch.path()).unwrap());
    }
    // Nodes 0 and 1 believe node 2 has another key than its own.
    let mut believed = nodes.clone();
    believed[2].public_key = Some("11".repeat(32));
    let believed_path = scratch.path().join("peers-01.toml");
    write_atomic(&believed_path, &peers_toml(&believed)).unwrap();
    let true_path = scratch.path().join("peers-2.toml");
    write_atomic(&true_path, &peers_toml(&nodes)).unwrap();
    let mut weftds = Vec::new();
    for (i, h) in underlay.hosts().iter().enumerate() {
        let peers = if i == 2 { &true_path } else { &believed_path };
        weftds.push(WeftNode::start(h, peers, scratch.path(), &opts).expect("weftd"));
    }
    let mut pods = Vec::new();
    for (i, node) in weftds.iter().enumerate() {
        let pod = underlay.pod(i, "p").unwrap();
        let att = node.attach(&pod, &format!("enck-{i}")).expect("attach");
        pods.push((pod, att));
    }
    let logs = || {
        weftds
            .iter()
            .map(WeftNode::log_text)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let capture = weft_perf::weft::Capture::start(&underlay.host(1).ns, "eth0", 2_000).unwrap();
    pods[0]
        .0
        .ns
        .ping(pods[1].1.ip, 2)
        .unwrap_or_else(|e| panic!("0 → 1: {e:#}\n{}", logs()));
    let frames = capture.finish();
    assert!(
        pods[2].0.ns.ping(pods[0].1.ip, 3).is_err(),
        "node 2 got through"
    );
    // Plaintext from node 2's address: a sleeve heartbeat, as any node sends.
    let host2 = underlay.host(2);
    let node0 = SocketAddr::from((underlay.host(0).underlay_ip, 8472));
    let beats = vec![plaintext_beat(&nodes[2]); 5];
    send_from(&host2.ns, host2.underlay_ip, node0, &beats);
    let row = wait_for_peer(&weftds[0], "node-2", |p| drops(p, "plaintext") >= 5);
    assert!(drops(&row, "handshake_refused") >= 1, "{:?}", row.counters);
    let s = row.session.expect("a session row");
    assert_ne!(s.state, "established", "{s:?}");
    // A sealed datagram node 0 sent node 1, replayed from node 2's host, and the
    // same with one byte changed: both refused by node 1, and counted.
    let sealed: Vec<u8> = frames
        .iter()
        .filter_map(|f| tunnel_payload(f))
        .find(|(src, d)| *src == underlay.host(0).underlay_ip && is_sealed(d))
        .map(|(_, d)| d.to_vec())
        .expect("a sealed datagram from node 0 on host 1's wire");
    let node1 = SocketAddr::from((underlay.host(1).underlay_ip, 8472));
    let mut tampered = sealed.clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 0x80;
    send_from(&host2.ns, host2.underlay_ip, node1, &[sealed, tampered]);
    wait_for_peer(&weftds[1], "node-2", |p| drops(p, "seal_refused") >= 2);
    drop(pods);
}

/// `encryption = "on"` next to a node without encryption (no key in the peers
/// file): the two talk in plaintext both ways, and the encrypted node's row of the
/// other says it has no key. A third node with a key talks sealed to the first,
/// and plaintext claiming to come from it is dropped.
#[test]
fn encryption_on_talks_plaintext_only_to_a_node_without_a_key() {
    require_root();
    let underlay = Underlay::new("enco", 3).expect("underlay");
    let scratch = Scratch::new("enco").expect("scratch dir");
    let on = options("sleeve", &["--encryption", "on"]);
    let off = options("sleeve", &[]);
    let mut nodes: Vec<PeerNode> = underlay.hosts().iter().map(PeerNode::of).collect();
    for i in [0, 2] {
        let key = weft_perf::weft::node_key(&on.binary, underlay.host(i), scratch.path());
        nodes[i].public_key = Some(key.unwrap());
    }
    let peers = scratch.path().join("peers.toml");
    write_atomic(&peers, &peers_toml(&nodes)).unwrap();
    let weftds: Vec<WeftNode> = [&on, &off, &on]
        .iter()
        .zip(underlay.hosts())
        .map(|(o, h)| WeftNode::start(h, &peers, scratch.path(), o).expect("weftd"))
        .collect();
    let pods: Vec<(Pod, Attachment)> = (0..3)
        .map(|i| {
            let pod = underlay.pod(i, "p").unwrap();
            let att = weftds[i]
                .attach(&pod, &format!("enco-{i}"))
                .expect("attach");
            (pod, att)
        })
        .collect();
    for (i, j) in [(0, 1), (1, 0), (0, 2), (2, 0)] {
        let t = tcp_transfer(
            &pods[j].0.ns,
            pods[j].1.ip,
            &pods[i].0.ns,
            10_000_000,
            STALL,
        )
        .unwrap_or_else(|e| panic!("{i} → {j}: {e:#}"));
        assert_eq!(t.bytes, 10_000_000);
    }
    let row = wait_for_peer(&weftds[0], "node-1", |p| p.session.is_some());
    assert_eq!(row.session.as_ref().unwrap().state, "no key");
    assert_eq!(drops(&row, "plaintext"), 0);
    let row = wait_for_peer(&weftds[0], "node-2", |p| p.session.is_some());
    assert_eq!(row.session.as_ref().unwrap().state, "established");
    // Plaintext from node 2's address and id: node 0 holds its key, so drops it.
    let host2 = underlay.host(2);
    let node0 = SocketAddr::from((underlay.host(0).underlay_ip, 8472));
    let beats = vec![plaintext_beat(&nodes[2]); 3];
    send_from(&host2.ns, host2.underlay_ip, node0, &beats);
    wait_for_peer(&weftds[0], "node-2", |p| drops(p, "plaintext") >= 3);
    drop(pods);
}

/// Waits (bounded) until `node`'s row of peer `name` satisfies `ok`, and returns it.
fn wait_for_peer(node: &WeftNode, name: &str, ok: impl Fn(&PeerInfo) -> bool) -> PeerInfo {
    let row = || {
        let peers = node.peers().expect("peers");
        peers
            .into_iter()
            .find(|p| p.name == name)
            .expect("the peer's row")
    };
    let _ = wait_until(Duration::from_secs(5), "the peer's counters", || ok(&row()));
    let r = row();
    assert!(
        ok(&r),
        "{name}: {:?} {:?}\n{}",
        r.counters,
        r.session,
        node.log_text()
    );
    r
}
