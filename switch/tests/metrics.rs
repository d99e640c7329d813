//! `/metrics` under a real Prometheus (Debian's `prometheus`, which
//! `deploy/setup.sh` installs): two weftd nodes in network namespaces serve their
//! metrics on their underlay addresses, a Prometheus the test starts in node 0's
//! namespace scrapes both every second, pods send a known number of datagrams, and
//! Prometheus's HTTP API must give those counts under the right pod and peer
//! labels. A detached pod's series must go. The endpoint is attacked too: idle
//! connections, slow requests and oversized heads from a pod must not keep the
//! node's scraper out or stall weftd.
//!
//! These tests need root (they create namespaces); they fail, never skip, without it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use weft_perf::harness::scrape;
use weft_perf::netns::{wait_until, ChildGuard, Netns};
use weft_perf::topo::Underlay;
use weft_perf::weft::{in_netns, in_netns_at, write_atomic, Cluster};
use weft_proto::{PodRef, Reply, Request};

mod support;
use support::*;

/// The port every node serves `/metrics` on.
const METRICS_PORT: u16 = 9402;
/// The datagrams node 0's client sends to node 1's protected pod.
const DATAGRAMS: u64 = 300;
/// Each one's IP packet, which the tunnel carries (the sleeve without the
/// Ethernet header): IPv4 and UDP headers and 8 bytes of payload.
const PACKET_LEN: u64 = 20 + 8 + 8;

/// A Prometheus started by the test, stopped on drop.
struct Prometheus {
    /// The namespace it runs in, by path.
    ns: PathBuf,
    addr: SocketAddr,
    _child: ChildGuard,
}

/// One series of an instant query's answer: its labels and value.
type Sample = (BTreeMap<String, String>, f64);

impl Prometheus {
    /// Starts Prometheus in `ns`, listening on `addr`, scraping `targets` every
    /// second; its config and data live in `dir`.
    fn start(ns: &Netns, dir: &Path, addr: SocketAddr, targets: &[SocketAddr]) -> Result<Self> {
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: weft\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let file = dir.join("prometheus.yml");
        write_atomic(&file, &config)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let mut cmd = ns.cmd("prometheus");
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = ChildGuard::spawn(&mut cmd)?;
        let p = Prometheus {
            ns: ns.path(),
            addr,
            _child: child,
        };
        wait_until(Duration::from_secs(30), "Prometheus ready", || {
            p.get("/-/ready").is_ok_and(|(status, _)| status == 200)
        })
        .with_context(|| std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default())?;
        Ok(p)
    }

    /// GETs `path` from Prometheus.
    fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(&self.ns, self.addr, path, Duration::from_secs(5))
    }

    /// Runs the instant query `promql`.
    fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let (status, body) = self.get(&format!("/api/v1/query?query={}", encode(promql)))?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("{promql}: HTTP {status}: {body}"))?;
        if v["status"] != "success" {
            bail!("{promql}: {body}");
        }
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        result
            .iter()
            .map(|s| {
                let labels = (s["metric"].as_object())
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = (s["value"][1].as_str())
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| anyhow!("{promql}: no value in {s}"))?;
                Ok((labels, value))
            })
            .collect()
    }

    /// The one value `promql` gives, once it gives exactly one.
    fn one(&self, promql: &str) -> Result<f64> {
        match self.query(promql)?.as_slice() {
            [(_, v)] => Ok(*v),
            other => bail!("{promql}: {} series: {other:?}", other.len()),
        }
    }

    /// Waits until `promql` gives one value that `ok` accepts, and returns it.
    fn wait_for(&self, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let mut last = Err(anyhow!("not asked yet"));
        let done = wait_until(Duration::from_secs(20), promql, || {
            last = self.one(promql);
            last.as_ref().is_ok_and(|v| ok(*v))
        });
        done.unwrap_or_else(|e| panic!("{e}: last answer {last:?}"));
        last.expect("an answer")
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An HTTP/1.1 GET of `path` from `addr`, in `ns`, closing after the answer.
fn http_get(ns: &Path, addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    Ok(in_netns_at(ns, || scrape::http_get(addr, path, timeout))??)
}

/// A lab: two nodes serving `/metrics`, node 0 with a client and another pod, node 1
/// with the protected pod, and the policy that protects it; and Prometheus.
struct Lab {
    cluster: Cluster,
    policy: weft_perf::weft::Scratch,
    prometheus: Prometheus,
}

/// The Kubernetes pods the lab's pods are, by host and index.
fn pod_ref(h: usize, p: usize) -> PodRef {
    let name = match (h, p) {
        (0, 0) => "client",
        (0, _) => "other",
        _ => "protected",
    };
    PodRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

impl Lab {
    fn new(tag: &str, extra: &[&str]) -> Lab {
        let policy = weft_perf::weft::Scratch::new(&format!("{tag}pol")).expect("a directory");
        let mut opts = options(SLEEVE, policy.path());
        opts.extra
            .extend(["--metrics-addr".into(), format!("0.0.0.0:{METRICS_PORT}")]);
        opts.extra.extend(extra.iter().map(|s| s.to_string()));
        let underlay = Underlay::new(tag, 2).expect("the underlay");
        let mut cluster = Cluster::on(underlay, tag, 0, &opts).expect("the cluster");
        cluster.pods.clear();
        for (h, count) in [(0, 2), (1, 1)] {
            let mut pods = Vec::new();
            for p in 0..count {
                let pod = cluster
                    .underlay
                    .pod(h, &format!("{tag}{h}{p}"))
                    .expect("a pod");
                let id = format!("{tag}-{h}-{p}");
                let att = (cluster.nodes[h].attach_as(&pod, &id, Some(pod_ref(h, p))))
                    .unwrap_or_else(|e| panic!("attach {id}: {e}\n{}", cluster.logs()));
                pods.push((pod, att));
            }
            cluster.pods.push(pods);
        }
        protect(&cluster, policy.path(), cluster.ip(1, 0));
        let hosts = cluster.underlay.hosts();
        let targets: Vec<SocketAddr> = (hosts.iter())
            .map(|h| SocketAddr::from((h.underlay_ip, METRICS_PORT)))
            .collect();
        let listen = SocketAddr::from((hosts[0].underlay_ip, 9090));
        let prometheus = Prometheus::start(&hosts[0].ns, cluster.scratch.path(), listen, &targets)
            .unwrap_or_else(|e| panic!("Prometheus: {e:#}"));
        Lab {
            cluster,
            policy,
            prometheus,
        }
    }

    /// Node `h`'s `instance` label.
    fn instance(&self, h: usize) -> String {
        format!(
            "{}:{METRICS_PORT}",
            self.cluster.underlay.hosts()[h].underlay_ip
        )
    }

    /// A port counter of node `h`'s pod `p`, as the control socket says now.
    fn port_counter(&self, h: usize, p: usize, which: fn(&weft_proto::Counters) -> u64) -> u64 {
        let ip = self.cluster.ip(h, p);
        match self.cluster.nodes[h].ok(&Request::Ports).expect("ports") {
            Reply::Ports { ports } => (ports.iter())
                .find(|port| port.ip == Some(ip))
                .map(|port| which(&port.counters))
                .expect("the pod's port"),
            other => panic!("{other:?}"),
        }
    }
}

/// Sends [`DATAGRAMS`] datagrams from node 0's client to the protected pod, which
/// counts them, and waits until it has them all.
fn send_known_datagrams(lab: &Lab) {
    let mut servers = Servers::new();
    let to = SocketAddr::from((lab.cluster.ip(1, 0), UDP_PORT));
    let got = servers.count(&lab.cluster.pod(1, 0).ns, UDP_PORT);
    let client = &lab.cluster.pod(0, 0).ns;
    let udp = in_netns(client, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("the namespace")
        .expect("a socket");
    for i in 0..DATAGRAMS {
        udp.send_to(&i.to_be_bytes(), to).expect("sent");
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    wait_until(Duration::from_secs(10), "every datagram", || {
        got.load(Ordering::Relaxed) == DATAGRAMS
    })
    .unwrap_or_else(|e| panic!("{e}: {} of {DATAGRAMS}", got.load(Ordering::Relaxed)));
}

/// Prometheus scrapes both nodes: the pods' and the peers' counts are those sent,
/// under the pods' namespace and name and the peers' names; the nodes' own series
/// are there; and a detached pod's series go.
#[test]
fn prometheus_sees_pods_and_peers_by_name() {
    // Encrypted, so that the sessions' series are there too.
    let lab = Lab::new("mp", &["--encryption", "required"]);
    send_known_datagrams(&lab);
    // And a connection the policy denies.
    let mut servers = Servers::new();
    servers.serve(&lab.cluster.pod(1, 0).ns, lab.cluster.ip(1, 0));
    let protected = SocketAddr::from((lab.cluster.ip(1, 0), TCP_PORT));
    assert!(tcp_exchange(&lab.cluster.pod(0, 1).ns, protected).is_err());
    let p = &lab.prometheus;
    let (i0, i1) = (lab.instance(0), lab.instance(1));
    // The client's port received the datagrams (and its ARP and neighbour
    // traffic, which the control socket counts too).
    let rx = lab.port_counter(0, 0, |c| c.rx_packets);
    assert!(rx >= DATAGRAMS, "{rx} frames from the client");
    let q = format!(
        "weft_port_rx_packets_total{{instance='{i0}',pod_namespace='default',pod_name='client',kind='pod'}}"
    );
    let seen = p.wait_for(&q, |v| v >= DATAGRAMS as f64);
    assert!(
        seen <= (rx + 5) as f64,
        "{seen} in Prometheus, {rx} at the node"
    );
    // The protected pod's port wrote them merged into USO super-frames where its
    // TAP takes them (as the kernel counts a GSO packet once): its count is the
    // node's own, whatever that is.
    let tx = lab.port_counter(1, 0, |c| c.tx_packets);
    let q = format!("weft_port_tx_packets_total{{instance='{i1}',pod_name='protected'}}");
    p.wait_for(&q, |v| v >= tx as f64 && v > 0.0);
    // Node 0 sent them to node 1, and node 1 received them from node 0: in bytes,
    // for the tunnel's datagrams go merged too (each carries the whole packet).
    let (n0, n1) = (&lab.cluster.nodes[0].name, &lab.cluster.nodes[1].name);
    let least = (DATAGRAMS * PACKET_LEN) as f64;
    let q = format!("weft_peer_tx_bytes_total{{instance='{i0}',peer='{n1}'}}");
    p.wait_for(&q, |v| v >= least);
    let q = format!("weft_peer_rx_bytes_total{{instance='{i1}',peer='{n0}'}}");
    p.wait_for(&q, |v| v >= least);
    p.wait_for(
        &format!("weft_peer_up{{instance='{i0}',peer='{n1}'}}"),
        |v| v == 1.0,
    );
    p.wait_for(
        &format!("weft_peer_heartbeat_rtt_seconds{{instance='{i1}',peer='{n0}'}}"),
        |v| v > 0.0 && v < 1.0,
    );
    // Drops per peer come in classes, all of them, none of them reasons.
    let classes = p
        .query(&format!(
            "weft_peer_drops_total{{instance='{i0}',peer='{n1}'}}"
        ))
        .expect("drops");
    assert_eq!(classes.len(), 6, "{classes:?}");
    // The control plane's own: two ADDs on node 0, a ready node, its workers.
    let adds = format!(
        "weft_cni_request_duration_seconds_count{{instance='{i0}',verb='add',result='ok'}}"
    );
    p.wait_for(&adds, |v| v == 2.0);
    p.wait_for(&format!("weft_ready{{instance='{i1}'}}"), |v| v == 1.0);
    p.wait_for(
        &format!("count(weft_worker_busy_seconds_total{{instance='{i0}'}})"),
        |v| v == 2.0,
    );
    p.wait_for(
        &format!("sum(weft_worker_batch_frames_count{{instance='{i1}'}})"),
        |v| v > 0.0,
    );
    p.wait_for(&format!("weft_pods{{instance='{i0}'}}"), |v| v == 2.0);
    p.wait_for("count(weft_build_info)", |v| v == 2.0);
    let q = format!(
        "weft_port_drops_total{{instance='{i1}',pod_name='protected',reason='policy_ingress'}}"
    );
    p.wait_for(&q, |v| v >= 1.0);
    let q = format!("weft_encryption_session_established{{instance='{i0}',peer='{n1}'}}");
    p.wait_for(&q, |v| v == 1.0);
    let q = format!("weft_encryption_handshakes_total{{instance='{i1}',peer='{n0}'}}");
    p.wait_for(&q, |v| v >= 1.0);
    every_dashboard_panel_has_data(p);
    // The other pod leaves: its series go from the next scrape.
    lab.cluster.nodes[0]
        .detach("mp-0-1", Some(&lab.cluster.pod(0, 1).ns))
        .expect("detached");
    let q = format!("weft_port_rx_packets_total{{instance='{i0}',pod_name='other'}}");
    wait_until(
        Duration::from_secs(15),
        "the detached pod's series gone",
        || p.query(&q).is_ok_and(|r| r.is_empty()),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", p.query(&q)));
    p.wait_for(&format!("weft_pods{{instance='{i0}'}}"), |v| v == 1.0);
    drop(lab.policy);
}

/// The Grafana dashboard in `deploy/grafana` is valid JSON, and every query of
/// every panel (over all nodes) gives data from the lab's Prometheus.
fn every_dashboard_panel_has_data(p: &Prometheus) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/weft-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("an expression");
            // The dashboard's node variable, with every node chosen.
            let promql = expr.replace("$node", ".*");
            let mut last = Ok(Vec::new());
            let has = wait_until(Duration::from_secs(20), title, || {
                last = p.query(&promql);
                last.as_ref().is_ok_and(|r| !r.is_empty())
            });
            has.unwrap_or_else(|e| panic!("{title}: {promql}: {e}: {last:?}"));
        }
    }
}

/// The endpoint under attack from a pod: hundreds of idle connections, requests
/// whose head trickles in, and a head larger than allowed. Another source (the
/// peer node) still scrapes it, the control socket still answers, the slow
/// connections are closed after the head timeout, and the oversized head is
/// refused.
#[test]
fn metrics_endpoint_shrugs_off_idle_and_slow_clients() {
    let lab = Lab::new("ma", &[]);
    let node0 = SocketAddr::from((lab.cluster.underlay.hosts()[0].underlay_ip, METRICS_PORT));
    let attacker = lab.cluster.pod(0, 1).ns.path();
    // Idle connections and trickling heads, from the pod (through the host port).
    let held = in_netns_at(&attacker, || {
        let mut held = Vec::new();
        for i in 0..300 {
            let Ok(mut s) = TcpStream::connect_timeout(&node0, Duration::from_secs(2)) else {
                continue;
            };
            if i % 2 == 0 {
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ");
            }
            held.push(s);
        }
        held
    })
    .expect("the pod's namespace");
    assert!(!held.is_empty(), "the attacker got no connection at all");
    // And from many addresses at once: 20 more on the peer node's underlay
    // interface, 4 idle connections from each, more than the endpoint's bound.
    let peer_host = &lab.cluster.underlay.hosts()[1];
    let extra: Vec<Ipv4Addr> = (0..20)
        .map(|i| Ipv4Addr::new(10, 250, 0, 100 + i))
        .collect();
    for ip in &extra {
        (peer_host.ns)
            .run(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])
            .expect("an address");
    }
    let crowd = in_netns_at(&peer_host.ns.path(), || {
        let mut held = Vec::new();
        for ip in &extra {
            for _ in 0..4 {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .expect("a socket");
                s.bind(&SocketAddr::from((*ip, 0)).into()).expect("bound");
                if s.connect_timeout(&node0.into(), Duration::from_secs(2))
                    .is_ok()
                {
                    held.push(TcpStream::from(s));
                }
            }
        }
        held
    })
    .expect("the peer's namespace");
    assert_eq!(crowd.len(), 80, "the crowd connected");
    // The node's scraper, from elsewhere, is served meanwhile.
    let peer = &peer_host.ns.path();
    let started = Instant::now();
    let (status, body) =
        http_get(peer, node0, "/metrics", Duration::from_secs(5)).expect("scraped");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("weft_build_info"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        lab.cluster.nodes[0]
            .status()
            .expect("the control socket")
            .ready
    );
    // Prometheus (node 0's own address) kept scraping through it all: `up` was
    // 1 at every scrape of the last 10 s.
    std::thread::sleep(Duration::from_secs(3));
    let q = format!("min_over_time(up{{instance='{}'}}[10s])", lab.instance(0));
    lab.prometheus.wait_for(&q, |v| v == 1.0);
    drop(crowd);
    // The attacker's connections are closed once the head timeout passes.
    let closed_by = Instant::now() + Duration::from_secs(12);
    let mut open = 0;
    for mut s in held {
        let left = closed_by.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .expect("a timeout");
        let mut b = [0u8; 512];
        loop {
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(_) => {
                    open += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(open, 0, "connections still open after the head timeout");
    // A head larger than allowed is refused, not buffered.
    let big = in_netns_at(&attacker, || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&node0, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
        let filler = format!("X-Fill: {}\r\n", "a".repeat(1000));
        for _ in 0..64 {
            if s.write_all(filler.as_bytes()).is_err() {
                break;
            }
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        Ok(out)
    })
    .expect("the namespace")
    .expect("a connection");
    assert!(
        big.starts_with("HTTP/1.1 431"),
        "an oversized head was not refused: {big:.80}"
    );
    // Other paths and methods are refused.
    let (status, _) = http_get(peer, node0, "/debug", Duration::from_secs(5)).expect("answered");
    assert_eq!(status, 404);
}

/// Runs the `weft` CLI against node `h`'s socket with `args`, and gives its output.
fn weft(lab: &Lab, h: usize, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("--socket")
        .arg(&lab.cluster.nodes[h].socket)
        .args(args)
        .output()
        .expect("weft runs");
    assert!(
        out.status.success(),
        "weft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// `weft flows` shows an allowed connection with the rule that allowed it and a
/// denied one with the policy that isolates its pod, filters by pod and verdict,
/// and follows new flows as JSON lines; the switch records them only while asked.
/// The nodes log JSON, and every line of a CNI ADD carries its container id.
#[test]
fn flow_log_names_rules_and_policies_and_logs_are_json() {
    let lab = Lab::new("mf", &["--log-format", "json"]);
    let protected = SocketAddr::from((lab.cluster.ip(1, 0), TCP_PORT));
    let mut servers = Servers::new();
    servers.serve(&lab.cluster.pod(1, 0).ns, lab.cluster.ip(1, 0));
    // Nothing is recorded before anyone asks.
    tcp_exchange(&lab.cluster.pod(0, 0).ns, protected).expect("the client is allowed");
    assert_eq!(
        weft(&lab, 1, &["flows"]),
        "",
        "recorded while no one listened"
    );
    // Now someone has asked: the next connections are recorded.
    tcp_exchange(&lab.cluster.pod(0, 0).ns, protected).expect("the client is allowed");
    let refused = tcp_exchange(&lab.cluster.pod(0, 1).ns, protected);
    assert!(refused.is_err(), "the other pod got through: {refused:?}");
    let shown = weft(&lab, 1, &["flows", "--pod", "default/protected"]);
    let allowed: Vec<&str> = shown.lines().filter(|l| l.contains("ALLOWED")).collect();
    let denied: Vec<&str> = shown.lines().filter(|l| l.contains("DENIED")).collect();
    assert!(
        allowed.iter().any(|l| l.contains("default/client:")
            && l.contains("-> default/protected:8080")
            && l.contains("tcp")
            && l.contains("ingress: default/protect rule 0")),
        "{shown}"
    );
    assert!(
        denied.iter().any(|l| l.contains("default/other:")
            && l.contains("ingress: no rule of default/protect allows it")),
        "{shown}"
    );
    let only_denied = weft(&lab, 1, &["flows", "--verdict", "denied"]);
    assert!(
        !only_denied.is_empty() && !only_denied.contains("ALLOWED"),
        "{only_denied}"
    );
    assert_eq!(weft(&lab, 1, &["flows", "--pod", "default/nobody"]), "");
    // --follow prints new flows as they come, and with --last 0 none before.
    let before = match lab.cluster.nodes[1].ok(&Request::Flows(weft_proto::FlowsRequest {
        after: u64::MAX,
        ..Default::default()
    })) {
        Ok(Reply::Flows { flows, last }) if flows.is_empty() => last,
        other => panic!("{other:?}"),
    };
    assert!(before > 0);
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("--socket")
        .arg(&lab.cluster.nodes[1].socket)
        .args([
            "--json",
            "flows",
            "--follow",
            "--verdict",
            "denied",
            "--last",
            "0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("weft flows --follow");
    let stdout = follow.stdout.take().expect("its output");
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            lines.push(line);
        }
        lines
    });
    std::thread::sleep(Duration::from_millis(700));
    let _ = tcp_exchange(&lab.cluster.pod(0, 1).ns, protected);
    let seen = wait_until(Duration::from_secs(10), "the follower's line", || {
        weft(&lab, 1, &["flows", "--verdict", "denied"])
            .lines()
            .count()
            > only_denied.lines().count()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let _ = follow.kill();
    let _ = follow.wait();
    seen.expect("a new denial");
    let followed = lines.join().expect("the reader");
    assert!(!followed.is_empty(), "--follow printed nothing");
    for line in &followed {
        let f: weft_proto::FlowInfo = serde_json::from_str(line).expect("a flow per line");
        assert!(
            f.seq > before,
            "{line} was recorded before the follower started"
        );
        assert_eq!(f.verdict, "denied", "{line}");
        assert_eq!(
            f.src.pod.as_ref().map(|p| p.name.as_str()),
            Some("other"),
            "{line}"
        );
    }
    // The logs: JSON, line by line; an ADD's lines carry its container id.
    let log = lab.cluster.nodes[1].log_text();
    let mut adds = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
        if v["span"]["verb"] == "add" {
            let id = v["span"]["container_id"].as_str().unwrap_or_default();
            assert_eq!(id, "mf-1-0", "{line}");
            assert_eq!(v["span"]["pod"], "default/protected", "{line}");
            adds.push(
                v["fields"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    assert!(
        adds.iter().any(|m| m.starts_with("add done")),
        "{adds:?}\n{log}"
    );
}
