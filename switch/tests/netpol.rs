//! NetworkPolicy end to end, in the layout of the upstream Kubernetes netpol e2e
//! suite: namespaces x, y and z, pods a, b and c in each, spread over two hosts
//! running weftd, each pod serving TCP and UDP on ports 80 and 81. The cluster is
//! dual-stack: each scenario writes manifests into the policy directory both nodes
//! watch, waits until both have them in force, probes every pair of pods over IPv4
//! and over IPv6, and compares each family with the expected truth table, which a
//! failure prints as a grid.
//!
//! These tests need root (they create namespaces); they fail, never skip, without it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_perf::netns::{require_root, wait_until};
use weft_perf::probe::{probe, serve, Proto, Receiver, Sender, PROBE};
use weft_perf::topo::{Pod, Underlay};
use weft_perf::weft::{
    in_netns, peers_toml, pod_subnet6, write_atomic, PeerNode, Scratch, WeftNode, WeftOptions,
    CLUSTER_CIDR_V6,
};
use weft_proto::{PodRef, Reply, Request};

/// One scenario at a time: each probes 81 pairs at once.
static SERIAL: Mutex<()> = Mutex::new(());

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

/// A pod of the layout: its namespace, name, host and addresses.
struct Member {
    ns: &'static str,
    name: &'static str,
    host: usize,
    pod: Pod,
    ip: Ipv4Addr,
    ip6: Ipv6Addr,
}

/// An address family the probes go over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Member {
    /// Its address of `family`.
    fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ip.into(),
            Family::V6 => self.ip6.into(),
        }
    }
}

/// The cluster: two dual-stack weftd on VXLAN, nine pods, their servers, the policy
/// directory.
struct Netpol {
    members: Vec<Member>,
    nodes: Vec<WeftNode>,
    stop: Arc<AtomicBool>,
    servers: Vec<std::thread::JoinHandle<()>>,
    policy_dir: PathBuf,
    underlay: Underlay,
    /// How the nodes run, and their peers file: to restart one.
    opts: WeftOptions,
    peers: PathBuf,
    scratch: Scratch,
    /// Labels each pod has now, written into `pods.yaml`.
    labels: BTreeMap<(&'static str, &'static str), Vec<(String, String)>>,
}

impl Drop for Netpol {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
    }
}

impl Netpol {
    fn new(tag: &str) -> Netpol {
        require_root();
        let underlay = Underlay::new(tag, 2).expect("underlay");
        let scratch = Scratch::new(tag).expect("scratch");
        let policy_dir = scratch.path().join("policy");
        std::fs::create_dir_all(&policy_dir).unwrap();
        let peers = scratch.path().join("peers.toml");
        let list: Vec<PeerNode> = (underlay.hosts().iter())
            .map(|h| PeerNode {
                pod_subnet_v6: Some(pod_subnet6(h)),
                ..PeerNode::of(h)
            })
            .collect();
        write_atomic(&peers, &peers_toml(&list)).unwrap();
        let opts = WeftOptions {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_weftd")),
            mode: "vxlan".into(),
            workers: 2,
            extra: vec![
                "--policy-dir".into(),
                policy_dir.display().to_string(),
                "--cluster-cidr-v6".into(),
                CLUSTER_CIDR_V6.into(),
            ],
        };
        let nodes: Vec<WeftNode> = underlay
            .hosts()
            .iter()
            .map(|h| WeftNode::start(h, &peers, scratch.path(), &opts).expect("weftd"))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mut members = Vec::new();
        let mut servers = Vec::new();
        for (n, ns) in NAMESPACES.iter().enumerate() {
            for (k, name) in PODS.iter().enumerate() {
                let host = (n + k) % 2;
                let pod = underlay
                    .pod(host, &format!("{ns}{name}"))
                    .expect("pod netns");
                let k8s = PodRef {
                    namespace: (*ns).into(),
                    name: (*name).into(),
                };
                let att = nodes[host]
                    .attach_as(&pod, &format!("{tag}-{ns}-{name}"), Some(k8s))
                    .expect("attach");
                let ip6 = att.ipv6.expect("a dual-stack pod").ip;
                servers.extend(serve(&pod, att.ip, &stop));
                servers.extend(serve(&pod, ip6, &stop));
                members.push(Member {
                    ns,
                    name,
                    host,
                    pod,
                    ip: att.ip,
                    ip6,
                });
            }
        }
        let labels = members
            .iter()
            .map(|m| ((m.ns, m.name), vec![("pod".to_owned(), m.name.to_owned())]))
            .collect();
        let c = Netpol {
            members,
            nodes,
            stop,
            servers,
            policy_dir,
            underlay,
            opts,
            peers,
            scratch,
            labels,
        };
        c.write_objects();
        c
    }

    /// Writes the namespaces and pods (labels, named ports, addresses).
    fn write_objects(&self) {
        let mut text = String::new();
        for ns in NAMESPACES {
            text += &format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n");
        }
        for m in &self.members {
            let labels: Vec<String> = self.labels[&(m.ns, m.name)]
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            text += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {}, labels: {{{}}}}}\n\
                 spec: {{containers: [{{name: c, ports: [{{name: serve-80-tcp, containerPort: 80}}, \
                 {{name: serve-81-tcp, containerPort: 81}}, {{name: serve-80-udp, containerPort: 80, protocol: UDP}}, \
                 {{name: serve-81-udp, containerPort: 81, protocol: UDP}}]}}]}}\n\
                 status: {{podIP: {}, podIPs: [{{ip: {}}}, {{ip: '{}'}}]}}\n",
                m.name,
                m.ns,
                labels.join(", "),
                m.ip,
                m.ip,
                m.ip6
            );
        }
        write_atomic(&self.policy_dir.join("objects.yaml"), &text).unwrap();
    }

    fn member(&self, ns: &str, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.ns == ns && m.name == name)
            .unwrap()
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.name, n.log_text()))
            .collect()
    }

    /// What node `h` has in force: policy ids, and any error.
    fn in_force(&self, h: usize) -> (Vec<String>, Vec<String>, usize) {
        match self.nodes[h]
            .ok(&Request::PolicyStatus)
            .expect("policy status")
        {
            Reply::PolicyStatus(s) => {
                let mut ids: Vec<String> = s.policies.into_iter().map(|p| p.id).collect();
                ids.sort();
                (ids, s.errors, s.pods)
            }
            other => panic!("{other:?}"),
        }
    }

    /// Stops node `h` (SIGTERM), runs `meanwhile`, and starts it again on the
    /// same state directory: its pods' ports are reopened.
    fn restart(&mut self, h: usize, meanwhile: impl FnOnce(&Netpol)) {
        self.nodes.remove(h).stop().expect("weftd stops");
        meanwhile(self);
        let host = self.underlay.host(h);
        let node = WeftNode::start(host, &self.peers, self.scratch.path(), &self.opts);
        self.nodes.insert(h, node.expect("weftd starts again"));
    }

    /// Node `h`'s `weft policy status`.
    fn policy_status(&self, h: usize) -> weft_proto::PolicyStatus {
        match self.nodes[h]
            .ok(&Request::PolicyStatus)
            .expect("policy status")
        {
            Reply::PolicyStatus(s) => s,
            other => panic!("{other:?}"),
        }
    }

    /// Waits until `ok` holds of every node's policy status.
    fn wait_status(&self, what: &str, ok: impl Fn(&weft_proto::PolicyStatus) -> bool) {
        for h in 0..self.nodes.len() {
            wait_until(Duration::from_secs(10), what, || ok(&self.policy_status(h)))
                .unwrap_or_else(|e| {
                    panic!(
                        "{e}: node {h}: {:?}\n{}",
                        self.policy_status(h),
                        self.logs()
                    )
                });
        }
    }

    /// Puts `policies` (YAML documents) in force on both nodes and waits until they
    /// are.
    fn apply(&self, policies: &str) {
        write_atomic(&self.policy_dir.join("policies.yaml"), policies).unwrap();
        let mut want: Vec<String> = policies
            .split("\n---")
            .filter_map(|doc| {
                let name = doc.lines().find_map(|l| l.trim().strip_prefix("name: "))?;
                let ns = doc
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("namespace: "))
                    .unwrap_or("default");
                doc.contains("kind: NetworkPolicy")
                    .then(|| format!("{ns}/{name}"))
            })
            .collect();
        want.sort();
        for h in 0..self.nodes.len() {
            wait_until(
                Duration::from_secs(10),
                "the policies to be in force",
                || {
                    let (ids, errors, pods) = self.in_force(h);
                    assert!(errors.is_empty(), "{errors:?}");
                    ids == want && pods == 9
                },
            )
            .unwrap_or_else(|e| {
                panic!(
                    "{e}: node {h} has {:?}, want {want:?}\n{}",
                    self.in_force(h),
                    self.logs()
                )
            });
        }
    }

    /// Probes every pair on `proto`/`port` over both families at once and compares
    /// each with `expect(from, to)`; panics with both grids if they differ.
    fn check(
        &self,
        what: &str,
        proto: Proto,
        port: u16,
        expect: impl Fn(&Member, &Member) -> bool,
    ) {
        self.check_each(what, proto, port, |f, t, _| expect(f, t));
    }

    /// Like [`Netpol::check`], with a truth table per family, `expect(from, to,
    /// family)`.
    fn check_each(
        &self,
        what: &str,
        proto: Proto,
        port: u16,
        expect: impl Fn(&Member, &Member, Family) -> bool,
    ) {
        let pairs: Vec<(&Member, &Member, Family)> = [Family::V4, Family::V6]
            .into_iter()
            .flat_map(|fam| {
                let all = self.members.iter();
                all.flat_map(move |f| self.members.iter().map(move |t| (f, t, fam)))
            })
            .collect();
        let got: Vec<bool> = std::thread::scope(|s| {
            let probes: Vec<_> = (pairs.iter())
                .map(|(f, t, fam)| s.spawn(move || probe(&f.pod, t.addr(*fam), proto, port)))
                .collect();
            probes.into_iter().map(|p| p.join().unwrap()).collect()
        });
        // A pod reaches itself over its own loopback, never through the switch: as
        // the upstream suite does, self-connections are allowed whatever the policy.
        let want: Vec<bool> = (pairs.iter())
            .map(|(f, t, fam)| std::ptr::eq(*f, *t) || expect(f, t, *fam))
            .collect();
        let n = self.members.len() * self.members.len();
        for (k, fam) in [Family::V4, Family::V6].into_iter().enumerate() {
            let (got, want) = (&got[k * n..(k + 1) * n], &want[k * n..(k + 1) * n]);
            if got != want {
                panic!(
                    "{what} ({proto:?} {port} over {fam:?}): the probes differ from the truth table\n{}\n{}",
                    grid("expected", &self.members, want, want),
                    grid("got (X marks a wrong cell)", &self.members, got, want)
                );
            }
        }
    }
}

/// The truth table as a grid: rows are sources, columns destinations.
fn grid(title: &str, members: &[Member], cells: &[bool], truth: &[bool]) -> String {
    let names: Vec<String> = members
        .iter()
        .map(|m| format!("{}/{}", m.ns, m.name))
        .collect();
    let mut out = format!("{title}:\n      {}\n", names.join(" "));
    for (i, from) in names.iter().enumerate() {
        out += &format!("{from:<5}");
        for j in 0..members.len() {
            let k = i * members.len() + j;
            let mark = match (cells[k], cells[k] == truth[k]) {
                (_, false) => "X",
                (true, true) => ".",
                (false, true) => "-",
            };
            out += &format!("   {mark}");
        }
        out += "\n";
    }
    out + "(. reaches, - does not)\n"
}

fn policy(name: &str, ns: &str, spec: &str) -> String {
    format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}\n")
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn isolation_and_selectors() {
    let _serial = lock();
    let c = Netpol::new("npsel");
    c.check("no policy", Proto::Tcp, 80, |_, _| true);

    c.apply(&policy(
        "deny-ingress",
        "x",
        "  podSelector: {}\n  policyTypes: [Ingress]",
    ));
    c.check("default deny ingress in x", Proto::Tcp, 80, |_, t| {
        t.ns != "x"
    });

    c.apply(&policy(
        "deny-egress",
        "x",
        "  podSelector: {}\n  policyTypes: [Egress]",
    ));
    c.check("default deny egress in x", Proto::Tcp, 80, |f, _| {
        f.ns != "x"
    });

    let allow_all = policy(
        "deny-ingress",
        "x",
        "  podSelector: {}\n  policyTypes: [Ingress]",
    ) + &policy("allow-all", "x", "  podSelector: {}\n  ingress: [{}]");
    c.apply(&allow_all);
    c.check("allow all in x", Proto::Tcp, 80, |_, _| true);

    let from_b = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]";
    c.apply(&policy("from-b", "x", from_b));
    c.check("x/a from pods b of x", Proto::Tcp, 80, |f, t| {
        !(t.ns == "x" && t.name == "a") || (f.ns == "x" && f.name == "b")
    });

    let from_y = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]";
    c.apply(&policy("from-y", "x", from_y));
    c.check("x/a from namespace y", Proto::Tcp, 80, |f, t| {
        !(t.ns == "x" && t.name == "a") || f.ns == "y"
    });

    let and = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}]";
    c.apply(&policy("and", "x", and));
    c.check("x/a from pods c of y (AND)", Proto::Tcp, 80, |f, t| {
        !(t.ns == "x" && t.name == "a") || (f.ns == "y" && f.name == "c")
    });

    let or = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: c}}}]";
    c.apply(&policy("or", "x", or));
    c.check(
        "x/a from namespace y or pods c of x (OR)",
        Proto::Tcp,
        80,
        |f, t| !(t.ns == "x" && t.name == "a") || f.ns == "y" || (f.ns == "x" && f.name == "c"),
    );

    // Host 1's pods over IPv4, but not z/b (which lives on host 1); host 0's over
    // IPv6, but not y/b (on host 0). A block holds its own family's addresses only.
    let zb = c.member("z", "b").ip;
    let yb6 = c.member("y", "b").ip6;
    let cidr = c.underlay.host(1).pod_subnet;
    let cidr6 = pod_subnet6(c.underlay.host(0));
    let block = format!(
        "  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: {cidr}, except: [{zb}/32]}}}}, \
         {{ipBlock: {{cidr: '{cidr6}', except: ['{yb6}/128']}}}}]"
    );
    c.apply(&policy("block", "x", &block));
    c.check_each(
        "x/a from host 1's IPv4 except z/b, and host 0's IPv6 except y/b",
        Proto::Tcp,
        80,
        |f, t, fam| {
            !(t.ns == "x" && t.name == "a")
                || match fam {
                    Family::V4 => f.host == 1 && f.ip != zb,
                    Family::V6 => f.host == 0 && f.ip6 != yb6,
                }
        },
    );
}

#[test]
fn ports_and_protocols() {
    let _serial = lock();
    let c = Netpol::new("npport");
    let is_xa = |t: &Member| t.ns == "x" && t.name == "a";
    let on = |ports: &str| {
        format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - ports: {ports}")
    };

    c.apply(&policy("named", "x", &on("[{port: serve-81-tcp}]")));
    c.check("named port 81: 80 is closed", Proto::Tcp, 80, |_, t| {
        !is_xa(t)
    });
    c.check("named port 81: 81 is open", Proto::Tcp, 81, |_, _| true);

    c.apply(&policy("range", "x", &on("[{port: 81, endPort: 90}]")));
    c.check("endPort 81-90: 80 is closed", Proto::Tcp, 80, |_, t| {
        !is_xa(t)
    });
    c.check("endPort 81-90: 81 is open", Proto::Tcp, 81, |_, _| true);

    c.apply(&policy("udp", "x", &on("[{protocol: UDP, port: 80}]")));
    c.check("UDP only: TCP 80 closed", Proto::Tcp, 80, |_, t| !is_xa(t));
    c.check("UDP only: UDP 80 open", Proto::Udp, 80, |_, _| true);
    c.check("UDP only: UDP 81 closed", Proto::Udp, 81, |_, t| !is_xa(t));

    c.apply(&policy("sctp", "x", &on("[{protocol: SCTP, port: 80}]")));
    c.check("SCTP is not TCP", Proto::Tcp, 80, |_, t| !is_xa(t));

    let egress = "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: 80}]";
    c.apply(&policy("egress-80", "x", egress));
    c.check("x/a egress to TCP 80", Proto::Tcp, 80, |_, _| true);
    c.check("x/a egress: TCP 81 closed", Proto::Tcp, 81, |f, _| {
        !is_xa(f)
    });
}

#[test]
fn unions_label_changes_running_connections_and_the_node() {
    let _serial = lock();
    let mut c = Netpol::new("npdyn");
    let is_xa = |t: &Member| t.ns == "x" && t.name == "a";
    let two = policy(
        "from-b",
        "x",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]",
    ) + &policy(
        "from-z",
        "x",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]",
    );
    c.apply(&two);
    c.check("the union of two policies", Proto::Tcp, 80, |f, t| {
        !is_xa(t) || (f.ns == "x" && f.name == "b") || f.ns == "z"
    });

    // x/b loses its label: the running policy no longer admits it.
    c.labels
        .insert(("x", "b"), vec![("pod".into(), "bb".into())]);
    c.write_objects();
    let xa = c.member("x", "a");
    let xb = c.member("x", "b");
    wait_until(Duration::from_secs(10), "the label change", || {
        !probe(&xb.pod, xa.ip, Proto::Tcp, 80)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    c.check("after x/b's label changed", Proto::Tcp, 80, |f, t| {
        !is_xa(t) || f.ns == "z"
    });

    // A connection from y/a runs; a policy that denies it cuts it within a second.
    c.apply(&policy("all", "x", "  podSelector: {}\n  ingress: [{}]"));
    let ya = c.member("y", "a");
    let mut conn = in_netns(&ya.pod.ns, || {
        TcpStream::connect_timeout(&SocketAddr::from((xa.ip, 81)), PROBE)
    })
    .unwrap()
    .expect("y/a connects to x/a");
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let ping = |conn: &mut TcpStream| {
        let mut b = [0u8; 1];
        conn.write_all(b"!").is_ok() && matches!(conn.read(&mut b), Ok(1))
    };
    assert!(ping(&mut conn), "the connection works before the change");
    c.apply(&policy(
        "deny",
        "x",
        "  podSelector: {}\n  policyTypes: [Ingress]",
    ));
    let cut_at = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "the running connection to be cut",
        || !ping(&mut conn),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    eprintln!("cut {:?} after the policy was in force", cut_at.elapsed());

    // Under default deny, each node still reaches its own pods, over both families.
    for m in c.members.iter().filter(|m| m.ns == "x") {
        for fam in [Family::V4, Family::V6] {
            let host = c.underlay.host(m.host);
            let reached = in_netns(&host.ns, || {
                TcpStream::connect_timeout(&SocketAddr::from((m.addr(fam), 80)), PROBE)
            })
            .unwrap()
            .is_ok();
            let who = format!("node {} → its pod {}/{}", m.host, m.ns, m.name);
            assert!(reached, "{who} over {fam:?}");
        }
    }
    // `weft policy` on a node: the pod and an explanation.
    let status = Path::new(env!("CARGO_BIN_EXE_weft"));
    let out = std::process::Command::new(status)
        .arg("--socket")
        .arg(&c.nodes[xa.host].socket)
        .args(["policy", "explain", "y/a", "x/a", "TCP", "80"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("denied") && text.contains("x/deny"),
        "{text}"
    );
}

/// x/a takes TCP 80 from x/b only: what the restart test keeps in force.
fn xa_from_xb() -> String {
    policy(
        "xa-from-xb",
        "x",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 80}]",
    )
}

/// Policy across a restart: node 0, where x/a runs, restarts while the policy
/// file no longer reads as YAML, and y/a (on node 1) sends datagrams to x/a every
/// 5 ms throughout. Node 0 starts from the last good set it saved: nothing
/// reaches x/a, from the first datagram on, while x/b's TCP to x/a (which the set
/// allows) and y/a's to y/b (which no policy isolates) work again after the
/// restart. Once the file reads again, its set is in force and the datagrams
/// arrive: the receiver would have counted any that got through.
#[test]
fn a_node_restarted_with_a_broken_policy_dir_keeps_its_last_good_policy() {
    let _serial = lock();
    let mut c = Netpol::new("nprst");
    let (xa, ya) = (c.member("x", "a"), c.member("y", "a"));
    assert_eq!((xa.host, ya.host), (0, 1));
    let xa_ip = xa.ip;
    let received = Receiver::start(&xa.pod.ns);
    let probe_sender = Sender::start(&ya.pod.ns, xa_ip);
    wait_until(Duration::from_secs(5), "a datagram to reach x/a", || {
        received.count() > 0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    probe_sender.finish();

    c.apply(&xa_from_xb());
    let saved = weft_perf::weft::state_dir(c.underlay.host(0), c.scratch.path()).join("view.json");
    let period = weft_switch::control::saved::PERIOD + Duration::from_secs(5);
    wait_until(period, "node 0 to save the policy", || {
        std::fs::read_to_string(&saved).is_ok_and(|t| t.contains("xa-from-xb"))
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let before = received.count();
    let sender = Sender::start(&c.member("y", "a").pod.ns, xa_ip);

    c.restart(0, |c| {
        let broken = xa_from_xb().replace("ingress:", "ingress: [");
        write_atomic(&c.policy_dir.join("policies.yaml"), &broken).unwrap();
    });
    let log = c.nodes[0].log_text();
    assert!(
        log.contains("policies.yaml document 0: not YAML")
            && log.contains("nothing of the last good set is removed until it reads"),
        "{log}"
    );
    let status = c.policy_status(0);
    let ids: Vec<&str> = status.policies.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["x/xa-from-xb"], "{status:?}");
    assert!(
        status
            .state
            .starts_with("enforcing, with the last good version"),
        "{status:?}"
    );
    assert_eq!(status.errors.len(), 1, "{status:?}");
    // y/a's datagrams reach node 0 again, whose policy drops them.
    wait_until(
        Duration::from_secs(10),
        "node 0 to drop y/a's datagrams",
        || c.nodes[0].drops("policy_ingress").unwrap() > 0,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // What the set allows works again, and so does a pod no policy isolates.
    let (xb, yb) = (c.member("x", "b"), c.member("y", "b"));
    assert_eq!(yb.host, 0);
    assert!(
        probe(&xb.pod, xa_ip, Proto::Tcp, 80),
        "x/b -> x/a TCP 80\n{}",
        c.logs()
    );
    assert!(
        probe(&c.member("y", "a").pod, yb.ip, Proto::Tcp, 80),
        "y/a -> y/b"
    );
    assert!(
        !probe(&c.member("y", "a").pod, xa_ip, Proto::Tcp, 80),
        "y/a -> x/a"
    );
    std::thread::sleep(Duration::from_secs(1));
    let leaked = received.count() - before;

    // The file reads again, with no policy: the datagrams arrive.
    write_atomic(&c.policy_dir.join("policies.yaml"), "").unwrap();
    wait_until(
        Duration::from_secs(10),
        "y/a's datagrams to reach x/a again",
        || received.count() > before + leaked,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let sent = sender.finish();
    eprintln!(
        "{sent} datagrams sent, {leaked} received through the restart, {} dropped by policy on node 0",
        c.nodes[0].drops("policy_ingress").unwrap()
    );
    assert!(sent > 200, "only {sent} datagrams sent");
    assert_eq!(
        leaked,
        0,
        "datagrams reached the isolated pod\n{}",
        c.logs()
    );
    assert_eq!(c.policy_status(0).state, "enforcing");
}

/// A NetworkPolicy that does not read: new, it isolates every pod of its
/// namespace for ingress (and nothing else: x's pods still reach the others, y
/// and z are open), and says so; read, it applies as written; broken again, its
/// last good version stays in force.
#[test]
fn a_new_policy_that_does_not_read_isolates_its_namespace_for_ingress() {
    let _serial = lock();
    let c = Netpol::new("npbad");
    let spec =
        |port: &str| format!("  podSelector: {{}}\n  ingress:\n  - ports: [{{port: {port}}}]");
    let file = c.policy_dir.join("policies.yaml");
    write_atomic(&file, &policy("web", "x", &spec("0"))).unwrap();
    c.wait_status("x isolated", |s| {
        s.state
            .starts_with("isolating: the pods of namespace x, for ingress")
            && s.errors.iter().any(|e| {
                e.contains("port 0")
                    && e.contains("every pod of namespace x is isolated for ingress")
            })
    });
    assert!(
        c.logs().contains("namespace x is isolated for ingress"),
        "{}",
        c.logs()
    );
    c.check(
        "a new policy in x that does not read",
        Proto::Tcp,
        80,
        |_, t| t.ns != "x",
    );

    // Read: x's pods take TCP 80 from anyone, and nothing else.
    write_atomic(&file, &policy("web", "x", &spec("80"))).unwrap();
    c.wait_status("the policy read", |s| {
        s.state == "enforcing" && s.errors.is_empty() && s.policies.len() == 1
    });
    c.check("the policy read: TCP 80 into x", Proto::Tcp, 80, |_, _| {
        true
    });
    c.check("the policy read: UDP 80 into x", Proto::Udp, 80, |_, t| {
        t.ns != "x"
    });

    // Broken again: the version that read stays in force.
    write_atomic(&file, &policy("web", "x", &spec("0"))).unwrap();
    c.wait_status("the last good version kept", |s| {
        s.state.starts_with("enforcing, with the last good version")
            && s.errors
                .iter()
                .any(|e| e.contains("its last good version stays in force"))
            && s.policies.len() == 1
    });
    c.check("kept: TCP 80 into x", Proto::Tcp, 80, |_, _| true);
    c.check("kept: UDP 80 into x", Proto::Udp, 80, |_, t| t.ns != "x");
}
