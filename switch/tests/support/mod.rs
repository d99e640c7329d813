//! Fixtures shared by the root tests of Services with real kernels (`services.rs`,
//! under kube-proxy's rules; `switch_services.rs`, translated in the switch): the
//! datapaths, weftd's options, echo servers that answer with the address they saw,
//! and the probes that talk to them.
//!
//! Each test crate that declares `mod support;` uses part of it only.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use weft_perf::netns::{wait_until, Netns};
use weft_perf::weft::{in_netns, write_atomic, Cluster, WeftNode, WeftOptions};
use weft_proto::{Reply, Request};

/// weftd's `--service-cidr`, which every ClusterIP of the tests is in.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Every pod, and the world, serves TCP and UDP on these.
pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;

/// How long a probe waits for a connection or an answer.
pub const PROBE: Duration = Duration::from_secs(3);
/// How long a server keeps a TCP connection that sends nothing.
const IDLE: Duration = Duration::from_secs(300);
/// A datapath: weftd's mode and flags, and how many nodes.
#[derive(Debug, Clone, Copy)]
pub struct Datapath {
    /// A letter for the namespaces' names.
    pub tag: &'static str,
    /// `--mode`.
    pub mode: &'static str,
    /// Further flags.
    pub extra: &'static [&'static str],
    /// How many nodes.
    pub hosts: usize,
    /// Whether a peer's pods legitimately come through the host (direct routing):
    /// then spoofing them through the host is not told apart from them.
    pub direct: bool,
}

/// The VXLAN tunnel, on three nodes (so that a Service has two remote endpoints).
pub const VXLAN: Datapath = Datapath {
    tag: "x",
    mode: "vxlan",
    extra: &[],
    hosts: 3,
    direct: false,
};
/// The sleeve (UDP) tunnel.
pub const SLEEVE: Datapath = Datapath {
    tag: "s",
    mode: "sleeve",
    extra: &[],
    hosts: 2,
    direct: false,
};
/// Direct routing between nodes of one segment.
pub const DIRECT: Datapath = Datapath {
    tag: "d",
    mode: "vxlan",
    extra: &["--direct-routing", "true"],
    hosts: 2,
    direct: true,
};
/// The sleeve, encrypted.
pub const ENCRYPTED: Datapath = Datapath {
    tag: "e",
    mode: "sleeve",
    extra: &["--encryption", "required"],
    hosts: 2,
    direct: false,
};

/// weftd's options for `d`, with the Service CIDR and `policy_dir` as its policy
/// directory.
pub fn options(d: Datapath, policy_dir: &Path) -> WeftOptions {
    let mut extra: Vec<String> = d.extra.iter().map(|s| s.to_string()).collect();
    extra.extend([
        "--service-cidr".into(),
        SERVICE_CIDR.into(),
        "--policy-dir".into(),
        policy_dir.display().to_string(),
    ]);
    WeftOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_weftd")),
        mode: d.mode.into(),
        workers: 2,
        extra,
    }
}

/// Echo servers that answer `ping N` with `pong N <the address they saw> <their own
/// address>`, stopped on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The answer to `request` from a client at `from` to `me`, if it is a well-formed
/// ping.
fn answer(request: &str, from: SocketAddr, me: Option<SocketAddr>) -> Option<String> {
    let nonce: u64 = request.trim_end().strip_prefix("ping ")?.parse().ok()?;
    let me = me.map_or("?".into(), |a| a.ip().to_string());
    Some(format!("pong {nonce} {} {me}\n", from.ip()))
}

/// Answers every ping of the TCP connection `c` from `from`, until the client
/// closes it, sends something else, or is idle for [`IDLE`]: a test may hold a
/// connection open across a change and exchange on it again.
fn serve_connection(c: &TcpStream, from: SocketAddr) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(IDLE));
    let me = c.local_addr().ok();
    let mut reader = BufReader::new(c.take(0));
    loop {
        // A line is at most 64 bytes: no client makes the server buffer more.
        reader.get_mut().set_limit(64);
        let mut line = String::new();
        let answered = match reader.read_line(&mut line) {
            Ok(n) if n > 0 => answer(&line, from, me).map(|a| (&*c).write_all(a.as_bytes())),
            _ => None,
        };
        if !matches!(answered, Some(Ok(()))) {
            return;
        }
    }
}

impl Servers {
    /// No server yet.
    pub fn new() -> Servers {
        Servers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    /// Serves TCP on [`TCP_PORT`] (every address) and UDP on [`UDP_PORT`] (at `ip`,
    /// which the answers name) in `ns`.
    pub fn serve(&mut self, ns: &Netns, ip: Ipv4Addr) {
        let any = Ipv4Addr::UNSPECIFIED;
        let tcp = in_netns(ns, || TcpListener::bind((any, TCP_PORT)))
            .expect("the namespace")
            .expect("a TCP listener");
        tcp.set_nonblocking(true).unwrap();
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((c, from)) = tcp.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                std::thread::spawn(move || serve_connection(&c, from));
            }
        }));
        let udp = in_netns(ns, || UdpSocket::bind((ip, UDP_PORT)))
            .expect("the namespace")
            .expect("a UDP socket");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut b) {
                    let request = String::from_utf8_lossy(&b[..n]).into_owned();
                    if let Some(a) = answer(&request, from, udp.local_addr().ok()) {
                        let _ = udp.send_to(a.as_bytes(), from);
                    }
                }
            }
        }));
    }

    /// Counts UDP datagrams arriving on `port` in `ns`.
    pub fn count(&mut self, ns: &Netns, port: u16) -> Arc<AtomicU64> {
        let udp = in_netns(ns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
            .expect("the namespace")
            .expect("a UDP socket");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let n = Arc::new(AtomicU64::new(0));
        let (stop, seen) = (self.stop.clone(), n.clone());
        self.threads.push(std::thread::spawn(move || {
            let mut b = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                if udp.recv_from(&mut b).is_ok() {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        n
    }
}

static NONCE: AtomicU64 = AtomicU64::new(1);

/// What a server answered: the address it saw the client as, and its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub seen: Ipv4Addr,
    pub server: Ipv4Addr,
}

/// Checks an answer to `ping nonce`.
pub fn check_answer(answer: &str, nonce: u64, to: SocketAddr) -> Result<Answer, String> {
    let bad = || format!("{to} answered {answer:?} to ping {nonce}");
    let mut words = answer.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("pong"), Some(n), Some(seen), Some(server)) if n == nonce.to_string() => Ok(Answer {
            seen: seen.parse().map_err(|_| bad())?,
            server: server.parse().map_err(|_| bad())?,
        }),
        _ => Err(bad()),
    }
}

/// A TCP exchange from `ns` with `to`; the address the server saw the client as.
pub fn tcp_exchange(ns: &Netns, to: SocketAddr) -> Result<Answer, String> {
    let c = in_netns(ns, || TcpStream::connect_timeout(&to, PROBE))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("TCP connect to {to}: {e}"))?;
    ping(&c, to)
}

/// A ping on the TCP connection `c` to `to`, and its answer: the address the
/// server saw the client as, and its own.
pub fn ping(c: &TcpStream, to: SocketAddr) -> Result<Answer, String> {
    let nonce = NONCE.fetch_add(1, Ordering::Relaxed);
    c.set_read_timeout(Some(PROBE)).unwrap();
    let mut c = c;
    c.write_all(format!("ping {nonce}\n").as_bytes())
        .map_err(|e| format!("TCP send to {to}: {e}"))?;
    let mut line = String::new();
    BufReader::new(c)
        .read_line(&mut line)
        .map_err(|e| format!("TCP answer from {to}: {e}"))?;
    check_answer(&line, nonce, to)
}

/// A UDP request and reply from `ns` to `to` (a connected socket: an answer from any
/// other address is not taken); the address the server saw the client as.
pub fn udp_exchange(ns: &Netns, to: SocketAddr) -> Result<Answer, String> {
    udp_ping(&udp_socket(ns, to)?, to)
}

/// A UDP socket of `ns` connected to `to`.
pub fn udp_socket(ns: &Netns, to: SocketAddr) -> Result<UdpSocket, String> {
    let s = in_netns(ns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    s.connect(to).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(PROBE / 3)).unwrap();
    Ok(s)
}

/// A UDP request on `s` (connected to `to`) and its answer, in up to three tries.
pub fn udp_ping(s: &UdpSocket, to: SocketAddr) -> Result<Answer, String> {
    let mut last = String::from("no answer");
    for _ in 0..3 {
        let nonce = NONCE.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = s.send(format!("ping {nonce}").as_bytes()) {
            last = format!("UDP send to {to}: {e}");
            continue;
        }
        let mut b = [0u8; 64];
        match s.recv(&mut b) {
            Ok(n) => return check_answer(&String::from_utf8_lossy(&b[..n]), nonce, to),
            Err(e) => last = format!("UDP answer from {to}: {e}"),
        }
    }
    Err(last)
}

/// The policy, in `dir`'s `policy.yaml`: the pod at `protected` takes connections
/// from node 0's pod 0 only (node 0's pod 1 is another pod, labelled apart). Waits
/// until every node of `cluster` has it in force.
pub fn protect(cluster: &Cluster, dir: &Path, protected: Ipv4Addr) {
    let pod = |name: &str, role: &str, ip: Ipv4Addr| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  \
             labels:\n    role: {role}\nstatus:\n  podIP: {ip}\n"
        )
    };
    let docs = [
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n".to_owned(),
        pod("client", "client", cluster.ip(0, 0)),
        pod("other", "other", cluster.ip(0, 1)),
        pod("protected", "protected", protected),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: protect\n  \
         namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      role: protected\n  \
         ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          role: client\n"
            .to_owned(),
    ];
    write_atomic(&dir.join("policy.yaml"), &docs.join("---\n")).expect("the policy");
    for (h, node) in cluster.nodes.iter().enumerate() {
        wait_until(
            Duration::from_secs(10),
            "the policy in force",
            || match node.ok(&Request::PolicyStatus) {
                Ok(Reply::PolicyStatus(s)) => {
                    s.errors.is_empty() && s.policies.iter().any(|p| p.id == "default/protect")
                }
                _ => false,
            },
        )
        .unwrap_or_else(|e| panic!("node {h}: {e}\n{}", cluster.logs()));
    }
}

/// The drops of `reason` on `node`'s port at `ip`.
pub fn port_drops(node: &WeftNode, ip: Ipv4Addr, reason: &str) -> u64 {
    match node.ok(&Request::Ports).expect("ports") {
        Reply::Ports { ports } => ports
            .into_iter()
            .filter(|p| p.ip == Some(ip))
            .flat_map(|p| p.counters.drops)
            .filter(|(r, _)| r == reason)
            .map(|(_, n)| n)
            .sum(),
        other => panic!("{other:?}"),
    }
}
