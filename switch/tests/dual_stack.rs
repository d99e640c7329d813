//! Dual stack in network namespaces: pods get an IPv6 address beside their IPv4
//! one, the switch answers Neighbour Solicitations and routes IPv6 between pods,
//! the node and other nodes (over VXLAN and the sleeve, and to the Linux kernel's
//! VXLAN), and refuses what a pod forges.
//!
//! These tests need root (they create namespaces); they fail, never skip, without it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use weft_perf::netns::{require_root, wait_until};
use weft_perf::topo::{kernel_vxlan, Underlay};
use weft_perf::traffic::tcp_transfer;
use weft_perf::weft::{
    in_netns, kernel_peer, peers_toml, pod_subnet6, write_atomic, Cluster, PeerNode, Scratch,
    WeftNode, WeftOptions, CLUSTER_CIDR_V6,
};
use weft_proto::{CheckRequest, ErrorKind, Request, Response};

const STALL: Duration = Duration::from_secs(30);

fn options(extra: &[&str]) -> WeftOptions {
    options_in("vxlan", extra)
}

fn options_in(mode: &str, extra: &[&str]) -> WeftOptions {
    WeftOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_weftd")),
        mode: mode.into(),
        workers: 2,
        extra: extra.iter().map(|s| s.to_string()).collect(),
    }
}

/// Host 0's IPv6 pod subnet and the cluster's.
const SUBNET6: &str = "fd00:10:244:1::/64";
const CLUSTER6: &str = "fd00:10:244::/56";
const GATEWAY6: &str = "fd00:10:244:1::1";

fn dual_stack(tag: &str) -> Cluster {
    let opts = options(&["--pod-subnet-v6", SUBNET6, "--cluster-cidr-v6", CLUSTER6]);
    Cluster::new(tag, 1, 2, &opts).expect("the cluster starts")
}

fn ip6(c: &Cluster, p: usize) -> Ipv6Addr {
    c.pods[0][p].1.ipv6.expect("an IPv6 address").ip
}

/// ping6 between pods, to the gateway and from the node; TCP over IPv6 between pods
/// and from the node, with no NAT; IPv4 still works beside it.
#[test]
fn pods_on_one_node_talk_ipv6() {
    let c = dual_stack("ds1");
    let (a, b) = (ip6(&c, 0), ip6(&c, 1));
    assert_eq!(a.to_string(), "fd00:10:244:1::2");
    assert_eq!(b.to_string(), "fd00:10:244:1::3");
    let gateway: Ipv6Addr = GATEWAY6.parse().unwrap();
    let att = &c.pods[0][0].1;
    assert_eq!(att.ipv6.unwrap().gateway, gateway);
    let ping = |p: usize, dst: Ipv6Addr| {
        c.pod(0, p)
            .ns
            .ping(dst, 2)
            .unwrap_or_else(|e| panic!("pod {p} → {dst}: {e:#}\n{}", c.logs()))
    };
    ping(0, b);
    ping(1, a);
    ping(0, gateway);
    let h0 = c.underlay.host(0);
    h0.ns.ping(b, 2).expect("node → pod over IPv6");
    c.pod(0, 0).ns.ping(c.ip(0, 1), 2).expect("IPv4 still");
    // A verified transfer, pod → pod and node → pod: the pods' TCP hands the
    // switch TSO6 super-frames, which go to the other TAP whole.
    let t = tcp_transfer(&c.pod(0, 1).ns, b, &c.pod(0, 0).ns, 64 << 20, STALL)
        .unwrap_or_else(|e| panic!("pod → pod over IPv6: {e:#}\n{}", c.logs()));
    assert_eq!(t.peer.ip(), IpAddr::V6(a), "the pod's own source address");
    let t = tcp_transfer(&c.pod(0, 0).ns, a, &h0.ns, 8 << 20, STALL).expect("node → pod");
    assert_eq!(
        t.peer.ip(),
        IpAddr::V6(gateway),
        "the node's own gateway address"
    );
    // To an address of the node's subnet that no pod holds: unreachable at once.
    let out = c
        .pod(0, 0)
        .ns
        .run(&["ping", "-n", "-c", "1", "-W", "2", "fd00:10:244:1::99"]);
    let text = format!("{out:?}");
    assert!(text.contains("Unreachable") || out.is_err(), "{text}");
    assert!(c.nodes[0].drops("no_route").unwrap() >= 1);
    // CHECK looks at both families on the interface: it passes, then fails once
    // the pod's IPv6 address is gone.
    let check = || {
        let req = Request::Check(CheckRequest {
            container_id: "ds1-0-0".into(),
            ifname: "eth0".into(),
            netns: c.pod(0, 0).ns.path().display().to_string(),
        });
        c.nodes[0].call(&req).expect("an answer")
    };
    assert!(matches!(check(), Response::Ok(_)), "{:?}", check());
    let addr = format!("{a}/64");
    c.pod(0, 0)
        .ns
        .ip(&["-6", "addr", "del", &addr, "dev", "eth0"])
        .expect("deleted");
    match check() {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::CheckFailed, "{e:?}");
            assert!(e.message.contains(&format!("{a}/64 is missing")), "{e:?}");
        }
        ok => panic!("CHECK passed without the IPv6 address: {ok:?}"),
    }
}

/// ping6 and verified TCP over IPv6 between pods of two nodes, both ways, through
/// the tunnel in `mode`, and from a node to the other node's pod: no NAT, and the
/// hop limit taken once per node.
fn pods_on_two_nodes_talk_ipv6(mode: &str, port: &str) {
    let tag = format!("ds{}{}", &mode[..1], &port[..1]);
    let opts = options_in(
        mode,
        &["--cluster-cidr-v6", CLUSTER_CIDR_V6, "--pod-port", port],
    );
    let c = Cluster::new(&tag, 2, 1, &opts).expect("the cluster starts");
    let ip6 = |h: usize| c.pods[h][0].1.ipv6.expect("an IPv6 address").ip;
    let (a, b) = (ip6(0), ip6(1));
    assert!(pod_subnet6(c.underlay.host(1)).contains(&b), "{b}");
    // `weft peers` and `weft status` show the IPv6 subnets.
    let peer = &c.peers(0).expect("peers")[0];
    let s1 = pod_subnet6(c.underlay.host(1)).to_string();
    assert_eq!(peer.pod_subnet_v6.as_deref(), Some(s1.as_str()), "{peer:?}");
    let status = c.nodes[1].status().expect("status");
    assert_eq!(status.pod_subnet_v6.as_deref(), Some(s1.as_str()));
    let logs = || c.logs();
    c.pod(0, 0)
        .ns
        .ping(b, 2)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    c.pod(1, 0).ns.ping(a, 2).expect("pod 1 → pod 0");
    c.underlay
        .host(0)
        .ns
        .ping(b, 2)
        .expect("node 0 → pod of node 1");
    let t = tcp_transfer(&c.pod(1, 0).ns, b, &c.pod(0, 0).ns, 32 << 20, STALL)
        .unwrap_or_else(|e| panic!("TCP over IPv6 across nodes: {e:#}\n{}", logs()));
    assert_eq!(t.peer.ip(), IpAddr::V6(a), "the pod's own source address");
    let t = tcp_transfer(&c.pod(0, 0).ns, a, &c.pod(1, 0).ns, 32 << 20, STALL)
        .unwrap_or_else(|e| panic!("TCP over IPv6 back: {e:#}\n{}", logs()));
    assert_eq!(t.peer.ip(), IpAddr::V6(b));
    // IPv4 beside it.
    c.pod(0, 0).ns.ping(c.ip(1, 0), 2).expect("IPv4 still");
    // The peers file takes node 1's IPv6 subnet away: node 0 stops routing it
    // while it runs (and would take its sources as spoofed), IPv4 stays.
    let mut nodes: Vec<PeerNode> = c.underlay.hosts().iter().map(PeerNode::of).collect();
    nodes[0].pod_subnet_v6 = Some(pod_subnet6(c.underlay.host(0)));
    let peers = c.scratch.path().join("peers.toml");
    write_atomic(&peers, &peers_toml(&nodes)).expect("the peers file");
    wait_until(
        Duration::from_secs(10),
        "node 0 to drop node 1's IPv6 subnet",
        || {
            let node1 = &c.nodes[1].name;
            (c.peers(0)).is_ok_and(|p| {
                p.iter()
                    .any(|p| &p.name == node1 && p.pod_subnet_v6.is_none())
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert!(
        c.pod(0, 0).ns.ping(b, 1).is_err(),
        "IPv6 still routed to node 1"
    );
    c.pod(0, 0).ns.ping(c.ip(1, 0), 2).expect("IPv4 still");
}

#[test]
fn pods_on_two_nodes_talk_ipv6_over_vxlan() {
    pods_on_two_nodes_talk_ipv6("vxlan", "tap");
}

#[test]
fn pods_on_two_nodes_talk_ipv6_over_the_sleeve() {
    pods_on_two_nodes_talk_ipv6("sleeve", "tap");
}

/// The same from pods on AF_XDP ports, which take whole frames: the switch cuts
/// the other side's super-frames and completes their checksums.
#[test]
fn afxdp_pods_on_two_nodes_talk_ipv6() {
    pods_on_two_nodes_talk_ipv6("vxlan", "afxdp");
}

/// weftd on host 0 and the Linux kernel's VXLAN on host 1, as flannel sets it up,
/// carrying IPv6 pod traffic over the IPv4 underlay both ways: ping6, verified TCP,
/// and the kernel node itself to the weft pod.
#[test]
fn kernel_vxlan_carries_ipv6_pod_traffic() {
    require_root();
    let underlay = Underlay::new("ds6k", 2).expect("underlay");
    let scratch = Scratch::new("ds6k").unwrap();
    let (h0, h1) = (underlay.host(0), underlay.host(1));
    let (_, peers) = kernel_peer(&underlay, scratch.path(), true).expect("kernel VXLAN");
    let s1 = pod_subnet6(h1);
    let opts = options(&["--cluster-cidr-v6", CLUSTER_CIDR_V6]);
    let node = WeftNode::start(h0, &peers, scratch.path(), &opts).expect("weftd");
    let a = underlay.pod(0, "a").unwrap();
    let b = underlay.pod(1, "b").unwrap();
    let att = node.attach(&a, "ds6k-a").expect("attach");
    let a6 = att.ipv6.expect("an IPv6 address").ip;
    kernel_vxlan::attach_pod(h1, &b, h1.pod_ip(2)).expect("kernel pod");
    let b6 = Ipv6Addr::from(u128::from(s1.network()) + 2);
    kernel_vxlan::attach_pod6(&b, s1, b6).expect("kernel pod's IPv6");
    let logs = || {
        let kernel = ["route", "neigh", "addr"].map(|what| h1.ns.ip(&["-6", what]));
        let pod = b.ns.ip(&["-6", "addr"]);
        let peers = node.peers();
        format!(
            "{}\nkernel: {kernel:#?}\npod: {pod:?}\npeers: {peers:#?}",
            node.log_text()
        )
    };
    a.ns.ping(b6, 3)
        .unwrap_or_else(|e| panic!("weft pod → kernel pod: {e:#}\n{}", logs()));
    b.ns.ping(a6, 3)
        .unwrap_or_else(|e| panic!("kernel pod → weft pod: {e:#}\n{}", logs()));
    let t = tcp_transfer(&b.ns, b6, &a.ns, 50_000_000, STALL).expect("TCP weft → kernel");
    assert_eq!(t.peer.ip(), IpAddr::V6(a6));
    let t = tcp_transfer(&a.ns, a6, &b.ns, 50_000_000, STALL).expect("TCP kernel → weft");
    assert_eq!(t.peer.ip(), IpAddr::V6(b6));
    // The kernel node itself, from its VTEP address in its subnet.
    h1.ns.ping(a6, 2).expect("kernel node → weft pod");
    drop(node);
}

/// A pod that sends from an address not its own, or advertises a neighbour it is
/// not, is dropped and counted; the other pod hears nothing of it.
#[test]
fn forged_ipv6_sources_and_advertisements_are_dropped() {
    let c = dual_stack("ds2");
    let (a, b) = (ip6(&c, 0), ip6(&c, 1));
    let pod0 = &c.pod(0, 0).ns;
    // Warm the neighbour caches so the forged packets go straight out.
    pod0.ping(b, 1).expect("pod 0 → pod 1");
    let before = c.nodes[0].drops("spoofed").unwrap();
    // An unused address of the subnet, and one of another node's, as sources.
    let receiver = in_netns(&c.pod(0, 1).ns, || UdpSocket::bind((b, 7000)))
        .unwrap()
        .expect("a receiver");
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    for forged in ["fd00:10:244:1::99", "fd00:10:244:2::5"] {
        pod0.run(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{forged}/128"),
            "dev",
            "eth0",
            "nodad",
        ])
        .ok();
        let sent = in_netns(pod0, || -> std::io::Result<()> {
            let s = UdpSocket::bind((forged.parse::<Ipv6Addr>().unwrap(), 0))?;
            for _ in 0..5 {
                s.send_to(b"forged", SocketAddr::new(IpAddr::V6(b), 7000))?;
            }
            Ok(())
        })
        .unwrap();
        sent.unwrap_or_else(|e| panic!("sending from {forged}: {e}"));
    }
    let mut buf = [0u8; 64];
    assert!(
        receiver.recv_from(&mut buf).is_err(),
        "a forged datagram arrived"
    );
    // The switch counts a drop once its worker has read the frame: waited for.
    let spoofed = || c.nodes[0].drops("spoofed").unwrap();
    let counted = wait_until(Duration::from_secs(5), "10 spoofed drops", || {
        spoofed() >= before + 10
    });
    counted.unwrap_or_else(|e| panic!("{e}: {} counted\n{}", spoofed() - before, c.logs()));
    // An unsolicited Neighbour Advertisement claiming pod 1's address.
    let before = spoofed();
    in_netns(pod0, || advertise(b))
        .unwrap()
        .expect("an advertisement sent");
    wait_until(
        Duration::from_secs(5),
        "the advertisement dropped as spoofed",
        || spoofed() > before,
    )
    .unwrap();
    // Pod 1 still reaches pod 0 over IPv6, and pod 0 its own address.
    c.pod(0, 1)
        .ns
        .ping(a, 2)
        .expect("pod 1 → pod 0 after the forgeries");
}

/// Default deny ingress for the pods of namespace `default` (those the fixture
/// attaches, which have no names).
const DENY_INGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
    metadata: {name: deny, namespace: default}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";

/// IPv6 from the node's gateway address is the node's, which policy always
/// admits, only when the node sent it: Linux forwards IPv6 whose source is one of
/// its own addresses (unlike IPv4), so weftd's policy-routing rules refuse to
/// forward a copy forged on the underlay. Without them (removed here) the forgery
/// passes; a clean stop removes them.
#[test]
fn forged_ipv6_from_the_gateway_address_does_not_pass_for_the_node() {
    let policy = Scratch::new("ds7pol").expect("a policy directory");
    write_atomic(&policy.path().join("deny.yaml"), DENY_INGRESS).unwrap();
    let dir = policy.path().display().to_string();
    let opts = options(&["--cluster-cidr-v6", CLUSTER_CIDR_V6, "--policy-dir", &dir]);
    let mut c = Cluster::new("ds7", 2, 1, &opts).expect("the cluster starts");
    let (h0, h1) = (c.underlay.host(0), c.underlay.host(1));
    let pod6 = c.pods[0][0].1.ipv6.expect("an IPv6 address").ip;
    let gateway6 = Ipv6Addr::from(u128::from(pod_subnet6(h0).network()) + 1);
    // weft's three rules, under its route protocol (which iproute2 6.1 prints,
    // but does not filter on).
    let weft_rules = || {
        let text = h0.ns.run(&["ip", "-6", "rule", "show"]).expect("ip rule");
        text.lines().filter(|l| l.ends_with(" proto 119")).count()
    };
    assert_eq!(weft_rules(), 3);
    // The node reaches its isolated pod from its gateway address.
    h0.ns
        .ping(pod6, 2)
        .unwrap_or_else(|e| panic!("node → pod: {e:#}\n{}", c.logs()));
    // Host 1, on the underlay, sends to the pod from node 0's gateway address,
    // through node 0, which forwards IPv6 as a dual-stack node does.
    h0.ns
        .run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        .unwrap();
    let mac0 = h0.ns.run(&["cat", "/sys/class/net/eth0/address"]).unwrap();
    let (pod, gw) = (pod6.to_string(), format!("{gateway6}/128"));
    for argv in [
        vec!["ip", "-6", "addr", "add", &gw, "dev", "eth0", "nodad"],
        vec!["ip", "-6", "route", "add", &pod, "dev", "eth0"],
        vec![
            "ip",
            "-6",
            "neigh",
            "replace",
            &pod,
            "lladdr",
            mac0.trim(),
            "dev",
            "eth0",
        ],
    ] {
        h1.ns.run(&argv).expect("the forger's set-up");
    }
    let receiver = in_netns(&c.pod(0, 0).ns, || UdpSocket::bind((pod6, 7001)))
        .unwrap()
        .expect("a receiver");
    receiver
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let forge = || {
        in_netns(&h1.ns, || -> std::io::Result<()> {
            let s = UdpSocket::bind((gateway6, 0))?;
            for _ in 0..3 {
                s.send_to(b"forged", SocketAddr::new(IpAddr::V6(pod6), 7001))?;
            }
            Ok(())
        })
        .unwrap()
        .expect("the forged datagrams sent");
    };
    let mut buf = [0u8; 16];
    forge();
    assert!(
        receiver.recv_from(&mut buf).is_err(),
        "a forgery passed for the node"
    );
    // The rules are what stops it: a rule of the operator's before them that
    // looks the forger's source up in the main table lets the forgery through.
    let bypass = ["from", gw.as_str(), "lookup", "main", "priority", "8000"];
    let rule = |verb: &str, args: &[&str]| {
        let argv = [&["ip", "-6", "rule", verb][..], args].concat();
        h0.ns.run(&argv).expect("ip rule")
    };
    rule("add", &bypass);
    forge();
    let (n, _) = receiver
        .recv_from(&mut buf)
        .expect("past the rules, the forgery passes");
    assert_eq!(&buf[..n], b"forged");
    rule("del", &bypass);
    // A clean stop removes weft's rules, and no one else's (one of the
    // operator's at a priority weft uses stays).
    let operators = ["from", "2001:db8::1", "prohibit", "priority", "9002"];
    rule("add", &operators);
    let node = c.nodes.remove(0);
    node.stop().expect("weftd stops");
    assert_eq!(weft_rules(), 0);
    assert!(rule("show", &[]).contains("9002:\tfrom 2001:db8::1"));
}

/// Sends, from the calling thread's namespace, an unsolicited Neighbour
/// Advertisement for `target` to all nodes on `eth0`, with the hop limit 255 that
/// makes it valid on a link.
fn advertise(target: Ipv6Addr) -> std::io::Result<()> {
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let hops: libc::c_int = 255;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let p = (&hops as *const libc::c_int).cast();
        libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, p, len);
        // Type 136, override flag, the target, and a target link-layer option.
        let mut msg = [0u8; 32];
        msg[0] = 136;
        msg[4] = 0x20;
        msg[8..24].copy_from_slice(&target.octets());
        msg[24..26].copy_from_slice(&[2, 1]);
        msg[26..32].copy_from_slice(&[0x02, 0xba, 0xd0, 0, 0, 1]);
        let mut to: libc::sockaddr_in6 = std::mem::zeroed();
        to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        to.sin6_addr.s6_addr = "ff02::1".parse::<Ipv6Addr>().unwrap().octets();
        to.sin6_scope_id = libc::if_nametoindex(c"eth0".as_ptr());
        let sent = libc::sendto(
            fd,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&to as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if sent < 0 {
            return Err(err);
        }
    }
    Ok(())
}
