//! weftd under faults and floods, in network namespaces: a worker that panics takes
//! the daemon down, and a restart resumes its pods; a SYN flood from one pod leaves
//! the others their room in the connection tables.
//!
//! These tests need root (they create namespaces); they fail, never skip, without it.
//! Each builds its own underlay and pods with unique names and tears everything down
//! on drop, also when an assertion fails.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use weft_perf::netns::wait_until;
use weft_perf::probe::{probe, serve, Proto};
use weft_perf::topo::{Pod, Underlay};
use weft_perf::weft::{
    in_netns, peers_toml, write_atomic, Cluster, PeerNode, Scratch, WeftNode, WeftOptions,
};
use weft_proto::{PodRef, Reply, Request};

fn options(extra: &[&str]) -> WeftOptions {
    WeftOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_weftd")),
        mode: "vxlan".into(),
        workers: 2,
        extra: extra.iter().map(|s| s.to_string()).collect(),
    }
}

/// Longer than a worker may go without going round its loop before the daemon is
/// not ready (`io::worker::plan::STALL`).
const PAST_A_STALL: Duration = Duration::from_secs(6);

/// The frames after which weftd's test hook makes a worker panic.
const PANIC_AFTER: &str = "50";

/// How long a daemon whose worker panicked may take to exit, from the first frame
/// of the traffic that makes it panic: the bound on a live test, not a measurement.
const DIES_WITHIN: Duration = Duration::from_secs(20);

/// Sends `n` small UDP datagrams from `pod` to `dst` (port 9: nobody answers).
fn send_udp(pod: &Pod, dst: Ipv4Addr, n: usize) {
    in_netns(&pod.ns, || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("a UDP socket");
        for i in 0..n {
            // An ICMP error to an earlier datagram may refuse one: no matter.
            let _ = socket.send_to(&(i as u32).to_be_bytes(), (dst, 9));
        }
    })
    .expect("the pod's namespace");
}

/// A worker made to panic (weftd's test hook) aborts weftd, non-zero, as soon as it
/// panics: its tunnel socket's share of the flows is not left to be lost. The pods
/// keep their TAP and address, and weftd started again (without the hook) resumes
/// them. First, the positive control: idle for longer than a stall, every worker
/// still goes round its loop, and the daemon is ready.
#[test]
fn a_panicking_worker_takes_the_daemon_down_and_a_restart_resumes_the_pods() {
    let opts = options(&[]);
    let mut c = Cluster::new("deadwk", 2, 1, &opts).expect("the cluster starts");
    let peers = c.scratch.path().join("peers.toml");
    let (a, b) = (c.ip(0, 0), c.ip(1, 0));
    c.pod(0, 0).ns.ping(b, 1).expect("ping before the panic");
    std::thread::sleep(PAST_A_STALL);
    let status = c.nodes[0].status().expect("status");
    assert!(status.ready, "{status:?}");
    assert!(status.stalled_workers.is_empty(), "{status:?}");

    let host = c.underlay.host(0);
    let node = c.nodes.remove(0);
    assert!(node.stop().expect("stop").success());
    let hook = [("WEFT_TEST_PANIC_WORKER_AFTER", PANIC_AFTER)];
    let mut node = WeftNode::start_env(host, &peers, c.scratch.path(), &opts, &hook)
        .expect("weftd with the test hook");
    let began = Instant::now();
    let exit = loop {
        send_udp(c.pod(0, 0), b, 20);
        if let Some(exit) = node.wait_exit(Duration::from_millis(50)).expect("waiting") {
            break exit;
        }
        assert!(
            began.elapsed() < DIES_WITHIN,
            "weftd still runs after its worker was asked to panic:\n{}",
            node.log_text()
        );
    };
    eprintln!(
        "weftd ended ({exit}) {:?} after the traffic began",
        began.elapsed()
    );
    let log = node.log_text();
    assert_eq!(exit.signal(), Some(libc::SIGABRT), "{exit}\n{log}");
    assert!(
        log.contains("WEFT_TEST_PANIC_WORKER_AFTER=50 asks it to panic"),
        "{log}"
    );
    assert!(log.contains("panicked: weftd aborts"), "{log}");

    let eth0 = (c.pod(0, 0).ns.ip(&["-4", "addr", "show", "eth0"])).expect("the pod keeps eth0");
    assert!(eth0.contains(&a.to_string()), "{eth0}");
    let node = WeftNode::start(host, &peers, c.scratch.path(), &opts).expect("weftd again");
    c.nodes.insert(0, node);
    wait_until(Duration::from_secs(10), "traffic to resume", || {
        c.pod(1, 0).ns.ping(a, 1).is_ok()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    c.pod(0, 0).ns.ping(b, 2).expect("ping after the restart");
    let status = c.nodes[0].status().expect("status");
    assert_eq!(status.pods, 1, "{status:?}");
    assert!(status.ready, "{status:?}");
}

/// A raw TCP SYN from `src`, port `sport`, to `dst`.
fn syn(src: Ipv4Addr, sport: u16, dst: SocketAddrV4) -> Vec<u8> {
    let mut tcp = etherparse::TcpHeader::new(sport, dst.port(), u32::from(sport) << 16, 64_240);
    tcp.syn = true;
    tcp.checksum = tcp
        .calc_checksum_ipv4_raw(src.octets(), dst.ip().octets(), &[])
        .expect("an empty payload fits");
    tcp.to_bytes().to_vec()
}

/// Floods `dst` with TCP SYNs from `pod` (address `src`) on a raw socket, each from
/// another source port, in bursts of 50 every 10 ms, never completing a handshake
/// (the pod's kernel resets each one the server answers): until `stop`, or `max`
/// were sent. Returns how many were.
fn syn_flood(pod: &Pod, src: Ipv4Addr, dst: SocketAddrV4, max: u64, stop: &AtomicBool) -> u64 {
    let raw = in_netns(&pod.ns, || {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))
    })
    .expect("the pod's namespace")
    .expect("a raw socket");
    let to = SocketAddr::V4(dst).into();
    let mut sent = 0u64;
    while sent < max && !stop.load(Ordering::Relaxed) {
        for _ in 0..50 {
            let sport = 1024 + (sent % 60_000) as u16;
            if raw.send_to(&syn(src, sport, dst), &to).is_ok() {
                sent += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    sent
}

/// One node with NetworkPolicy in force on a server pod, so that the connections
/// to it are tracked, in tables of 16 a worker.
struct Flooded {
    node: WeftNode,
    pods: Vec<(Pod, Ipv4Addr)>,
    stop: Arc<AtomicBool>,
    servers: Vec<std::thread::JoinHandle<()>>,
    _underlay: Underlay,
    _scratch: Scratch,
}

impl Drop for Flooded {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
    }
}

/// The flooded node's pods: the server, the flood's source, and two clients.
const PODS: [&str; 4] = ["server", "flood", "c1", "c2"];

impl Flooded {
    fn new() -> Flooded {
        let underlay = Underlay::new("synfl", 1).expect("underlay");
        let scratch = Scratch::new("synfl").expect("scratch");
        let policy = scratch.path().join("policy");
        std::fs::create_dir_all(&policy).unwrap();
        let peers = scratch.path().join("peers.toml");
        let host = underlay.host(0);
        write_atomic(&peers, &peers_toml(&[PeerNode::of(host)])).unwrap();
        let dir = policy.display().to_string();
        let opts = options(&["--policy-dir", &dir, "--conntrack-max", "16"]);
        let node = WeftNode::start(host, &peers, scratch.path(), &opts).expect("weftd");
        let mut pods = Vec::new();
        for name in PODS {
            let pod = underlay.pod(0, name).expect("pod netns");
            let k8s = PodRef {
                namespace: "x".into(),
                name: name.into(),
            };
            let att = node
                .attach_as(&pod, &format!("synfl-{name}"), Some(k8s))
                .expect("attach");
            pods.push((pod, att.ip));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let servers = serve(&pods[0].0, pods[0].1, &stop);
        let flooded = Flooded {
            node,
            pods,
            stop,
            servers,
            _underlay: underlay,
            _scratch: scratch,
        };
        flooded.isolate_the_server(&policy);
        flooded
    }

    /// Puts a policy in force that selects the server and lets every pod connect.
    fn isolate_the_server(&self, dir: &std::path::Path) {
        let mut objects =
            String::from("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n");
        for (name, (_, ip)) in PODS.iter().zip(&self.pods) {
            objects += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{pod: {name}}}}}\nstatus: {{podIP: {ip}}}\n"
            );
        }
        write_atomic(&dir.join("objects.yaml"), &objects).unwrap();
        let policy = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: server}}\n  ingress: [{}]\n";
        write_atomic(&dir.join("policy.yaml"), policy).unwrap();
        wait_until(Duration::from_secs(10), "the policy in force", || {
            matches!(
                self.node.ok(&Request::PolicyStatus),
                Ok(Reply::PolicyStatus(s)) if s.pods == PODS.len() && s.policies.len() == 1
            )
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.node.log_text()));
    }

    fn drops(&self, pod: usize, reason: &str) -> u64 {
        let Ok(Reply::Ports { ports }) = self.node.ok(&Request::Ports) else {
            panic!("no ports from weftd");
        };
        let ip = self.pods[pod].1;
        let port = ports
            .iter()
            .find(|p| p.ip == Some(ip))
            .expect("the pod's port");
        (port.counters.drops.iter())
            .find(|(r, _)| r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// Many more unanswered SYNs from one pod than the connection tables hold (16 a
/// worker, 2 workers) leave the other pods their room: while the flood goes on,
/// each opens TCP connections to the server it floods, and none of the server's
/// new connections is refused for a full table; the flood only churns its own
/// share, which the eviction counter shows. Before it, the positive control: the
/// clients connect.
#[test]
fn a_syn_flood_from_one_pod_leaves_room_for_the_others() {
    let f = Flooded::new();
    let server = SocketAddrV4::new(f.pods[0].1, 80);
    for client in [2, 3] {
        assert!(
            probe(&f.pods[client].0, *server.ip(), Proto::Tcp, 80),
            "{}",
            PODS[client]
        );
    }
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let connected = std::thread::scope(|s| {
        s.spawn(|| {
            let n = syn_flood(&f.pods[1].0, f.pods[1].1, server, 50_000, &stop);
            sent.store(n, Ordering::Relaxed);
        });
        // Let the flood fill its share of both workers' tables first.
        std::thread::sleep(Duration::from_millis(500));
        let connected: Vec<bool> = (0..20)
            .map(|i| probe(&f.pods[2 + i % 2].0, *server.ip(), Proto::Tcp, 80))
            .collect();
        stop.store(true, Ordering::Relaxed);
        connected
    });
    let sent = sent.load(Ordering::Relaxed);
    let status = f.node.status().expect("status");
    let conntrack = status.conntrack.expect("the connection tables' counters");
    eprintln!("{sent} SYNs; {conntrack:?}; connections {connected:?}");
    assert!(sent > 16 * 2 * 10, "the flood sent {sent} SYNs");
    let ports = f.node.ok(&Request::Ports);
    assert!(
        connected.iter().all(|c| *c),
        "{connected:?}\n{ports:#?}\n{}",
        f.node.log_text()
    );
    assert!(conntrack.evicted > 0, "{conntrack:?}");
    assert_eq!(f.drops(0, "conntrack_full"), 0);
}
