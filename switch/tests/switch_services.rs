//! ClusterIP Services translated in the switch (`services = "switch"`), with real
//! kernels and no kube-proxy: weftd nodes in network namespaces, started with
//! `--services switch --service-cidr`, read Services and EndpointSlices as manifests
//! from their policy directory, and the pods' own TCP and UDP stacks talk through
//! the ClusterIPs to echo servers that answer with the address they saw. No
//! iptables or nftables rule for a Service is loaded anywhere.
//!
//! Every datapath (VXLAN, sleeve, direct routing, encrypted sleeve) runs every case
//! on one lab: a pod to a ClusterIP whose endpoint is remote, local or the pod
//! itself, and the node to one; NetworkPolicy on the endpoint; a Service without
//! endpoints; session affinity beside its control; a client port reused towards a
//! second ClusterIP of the same endpoint; and an endpoint removed, with the flows
//! Maglev moved counted against the minimum.
//!
//! These tests need root (they create namespaces); they fail, never skip, without it.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::ops::Range;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use weft_perf::netns::{wait_until, Netns};
use weft_perf::topo::Pod;
use weft_perf::weft::{in_netns, node_name, write_atomic, Cluster, Scratch};
use weft_proto::{PodRef, Reply, Request, ServicesStatus};
use weft_switch::tables::maglev::{size_for, Maglev};

mod support;
use support::*;

/// The ClusterIPs.
const TO_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TO_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const TO_SELF: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
/// A second Service of [`TO_LOCAL`]'s endpoint.
const TO_ALIAS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
const TO_PROTECTED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 15);
/// Three endpoints, one of which leaves.
const TO_MANY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// The same three endpoints with `sessionAffinity: ClientIP`, and without.
const TO_STICKY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
const TO_SPREAD: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 22);
/// A Service whose EndpointSlice lists no endpoint.
const TO_NONE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// Every Service's ports, to [`TCP_PORT`] and [`UDP_PORT`].
const SVC_TCP: u16 = 80;
const SVC_UDP: u16 = 53;

/// Connections from one client to each of the affinity test's Services.
const AFFINITY_CONNECTIONS: u16 = 100;
/// New TCP connections counted before and after an endpoint leaves, each from a
/// source port of its own, the same both times.
const FLOWS: u16 = 300;
/// The first of their source ports: below Linux's ephemeral range (32768 up), so no
/// other socket of the client takes one.
const FLOW_PORT: u16 = 20_000;
/// The first source port of the affinity test's connections, a hundred to each
/// Service, each from a port of its own.
const AFFINITY_PORT: u16 = 21_000;
/// Source ports each used towards [`TO_LOCAL`], then [`TO_ALIAS`].
const REUSED_PORT: u16 = 22_000;
/// How many: a port shows the clash only where the two connections are written by
/// different workers and the endpoint's answers read by the first (about one in
/// four with two workers), so forty miss it with odds near 1e-5.
const REUSED: u16 = 40;
/// Connections held open while an endpoint leaves.
const HELD: usize = 12;
/// How long weftd may take to put a changed manifest in force.
const APPLY: Duration = Duration::from_secs(15);

#[test]
fn vxlan_services_in_the_switch() {
    services_in_the_switch(VXLAN);
}

#[test]
fn sleeve_services_in_the_switch() {
    services_in_the_switch(SLEEVE);
}

#[test]
fn direct_routing_services_in_the_switch() {
    services_in_the_switch(DIRECT);
}

#[test]
fn encrypted_sleeve_services_in_the_switch() {
    services_in_the_switch(ENCRYPTED);
}

fn services_in_the_switch(d: Datapath) {
    let lab = Lab::new(d);
    translated(&lab);
    policy_on_the_endpoint(&lab);
    no_endpoints(&lab);
    affinity(&lab);
    a_port_reused_towards_another_cluster_ip(&lab);
    an_endpoint_leaves(&lab);
}

// ---------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------

/// A Service as the tests write it: TCP [`SVC_TCP`] to [`TCP_PORT`] and UDP
/// [`SVC_UDP`] to [`UDP_PORT`] at `vip`, with its endpoints, each on its node.
#[derive(Debug, Clone)]
struct Svc {
    /// Its name in the `default` namespace (its slice's is `<name>-1`).
    name: &'static str,
    /// Its ClusterIP.
    vip: Ipv4Addr,
    /// `sessionAffinity: ClientIP`, with the default timeout.
    affinity: bool,
    /// Its ready endpoints: each a host and a pod's address.
    endpoints: Vec<(usize, Ipv4Addr)>,
}

impl Svc {
    /// The Service as the API server holds it: a `v1` Service and a ready
    /// `discovery.k8s.io/v1` EndpointSlice, for weftd's policy directory; `node`
    /// names host `h`'s node.
    fn manifest(&self, node: impl Fn(usize) -> String) -> String {
        let (name, vip) = (self.name, self.vip);
        let affinity = match self.affinity {
            true => "  sessionAffinity: ClientIP\n",
            false => "",
        };
        let endpoints: String = match self.endpoints.is_empty() {
            true => " []\n".into(),
            false => (self.endpoints.iter())
                .map(|(h, ip)| {
                    let node = node(*h);
                    format!(
                        "\n- {{addresses: [{ip}], conditions: {{ready: true}}, nodeName: {node}}}"
                    )
                })
                .chain(["\n".into()])
                .collect(),
        };
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  clusterIP: {vip}\n{affinity}  ports:\n\
             \x20 - {{name: tcp, protocol: TCP, port: {SVC_TCP}, targetPort: {TCP_PORT}}}\n\
             \x20 - {{name: udp, protocol: UDP, port: {SVC_UDP}, targetPort: {UDP_PORT}}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata:\n  name: {name}-1\n  namespace: default\n  \
             labels: {{kubernetes.io/service-name: {name}}}\n\
             addressType: IPv4\nendpoints:{endpoints}ports:\n\
             - {{name: tcp, protocol: TCP, port: {TCP_PORT}}}\n\
             - {{name: udp, protocol: UDP, port: {UDP_PORT}}}\n---\n"
        )
    }

    /// Its ports as `weft services` shows them in force: each frontend with its
    /// endpoints' addresses.
    fn in_force(&self) -> [(String, BTreeSet<String>); 2] {
        let at = |port: u16| (self.endpoints.iter()).map(move |(_, ip)| format!("{ip}:{port}"));
        [
            (
                format!("{}:{SVC_TCP}/TCP", self.vip),
                at(TCP_PORT).collect(),
            ),
            (
                format!("{}:{SVC_UDP}/UDP", self.vip),
                at(UDP_PORT).collect(),
            ),
        ]
    }
}

/// The ports a node has in force, as [`Svc::in_force`] gives them.
fn in_force(s: &ServicesStatus) -> BTreeSet<(String, BTreeSet<String>)> {
    (s.ports.iter())
        .map(|p| {
            let endpoints = p.endpoints.iter().map(|e| e.address.clone()).collect();
            (p.frontend.clone(), endpoints)
        })
        .collect()
}

/// A cluster translating Services in its switches, its servers, and the pod its
/// policy protects. Fields drop in order: servers, then the cluster, then the rest.
struct Lab {
    servers: Servers,
    cluster: Cluster,
    /// Node 1's pod that an ingress policy protects: only node 0's pod 0 may open
    /// connections to it.
    protected: (Pod, Ipv4Addr),
    policy: Scratch,
}

impl Lab {
    fn new(d: Datapath) -> Lab {
        let tag = format!("sw{}", d.tag);
        let policy = Scratch::new(&format!("{tag}pol")).expect("a policy directory");
        let mut opts = options(d, policy.path());
        opts.extra.extend(["--services".into(), "switch".into()]);
        let cluster =
            Cluster::new(&tag, d.hosts, 2, &opts).unwrap_or_else(|e| panic!("the cluster: {e:#}"));
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
            policy,
        };
        for h in 0..d.hosts {
            for p in 0..2 {
                let pod = lab.cluster.pod(h, p);
                lab.servers.serve(&pod.ns, lab.cluster.ip(h, p));
            }
        }
        lab.servers.serve(&lab.protected.0.ns, lab.protected.1);
        protect(&lab.cluster, lab.policy.path(), lab.protected.1);
        lab.put_in_force(&lab.services(None));
        lab
    }

    /// The three endpoints of [`TO_MANY`], [`TO_STICKY`] and [`TO_SPREAD`]: one on
    /// node 0, two on node 1.
    fn three(&self) -> Vec<(usize, Ipv4Addr)> {
        let c = &self.cluster;
        vec![(0, c.ip(0, 1)), (1, c.ip(1, 0)), (1, c.ip(1, 1))]
    }

    /// The endpoint of [`TO_MANY`] that leaves.
    fn leaving(&self) -> Ipv4Addr {
        self.cluster.ip(1, 1)
    }

    /// The Services; [`TO_MANY`] without `gone`, if it has left.
    fn services(&self, gone: Option<Ipv4Addr>) -> Vec<Svc> {
        let c = &self.cluster;
        let svc = |name, vip, affinity, endpoints| Svc {
            name,
            vip,
            affinity,
            endpoints,
        };
        let remote = (1..c.nodes.len()).map(|h| (h, c.ip(h, 0))).collect();
        let mut many = self.three();
        many.retain(|(_, ip)| Some(*ip) != gone);
        vec![
            svc("remote", TO_REMOTE, false, remote),
            svc("local", TO_LOCAL, false, vec![(0, c.ip(0, 1))]),
            svc("self", TO_SELF, false, vec![(0, c.ip(0, 0))]),
            svc("alias", TO_ALIAS, false, vec![(0, c.ip(0, 1))]),
            svc(
                "protected",
                TO_PROTECTED,
                false,
                vec![(1, self.protected.1)],
            ),
            svc("many", TO_MANY, false, many),
            svc("sticky", TO_STICKY, true, self.three()),
            svc("spread", TO_SPREAD, false, self.three()),
            svc("none", TO_NONE, false, Vec::new()),
        ]
    }

    /// Writes `services` into the policy directory, and waits until every node has
    /// them in force, as `weft services` shows them, with nothing refused or left
    /// out.
    fn put_in_force(&self, services: &[Svc]) {
        let hosts = self.cluster.underlay.hosts();
        let text: String = (services.iter())
            .map(|s| s.manifest(|h| node_name(&hosts[h])))
            .collect();
        let file = self.policy.path().join("services.yaml");
        write_atomic(&file, &text).expect("the Services' manifests");
        let want: BTreeSet<_> = services.iter().flat_map(Svc::in_force).collect();
        for (h, node) in self.cluster.nodes.iter().enumerate() {
            let mut last = None;
            let done = wait_until(APPLY, "the Services in force", || {
                let Ok(Reply::Services(s)) = node.ok(&Request::Services) else {
                    return false;
                };
                let done = in_force(&s) == want && s.refused.is_empty() && s.bad.is_empty();
                last = Some(s);
                done
            });
            done.unwrap_or_else(|e| panic!("node {h}: {e}: {last:#?}\n{}", self.logs()));
        }
    }

    /// Every daemon's log, and every node's routes, for a failure message.
    fn logs(&self) -> String {
        let mut s = self.cluster.logs();
        for (h, node) in self
            .cluster
            .underlay
            .hosts()
            .iter()
            .zip(&self.cluster.nodes)
        {
            let routes = h.ns.run(&["ip", "route"]).unwrap_or_default();
            let ports = match node.ok(&Request::Ports) {
                Ok(Reply::Ports { ports }) => (ports.iter())
                    .map(|p| format!("{:?} {:?}: {:?}\n", p.kind, p.ip, p.counters))
                    .collect(),
                other => format!("{other:?}"),
            };
            s += &format!("--- routes and ports of {}\n{routes}{ports}\n", h.ns.name());
        }
        s
    }

    /// A TCP exchange and a UDP one from `ns` to the Service at `vip`: the
    /// answers.
    fn exchange(&self, what: &str, ns: &Netns, vip: Ipv4Addr) -> [Answer; 2] {
        let tcp = tcp_exchange(ns, SocketAddr::from((vip, SVC_TCP)));
        let udp = udp_exchange(ns, SocketAddr::from((vip, SVC_UDP)));
        match (tcp, udp) {
            (Ok(a), Ok(b)) => [a, b],
            (t, u) => panic!("{what}: TCP {t:?}, UDP {u:?}\n{}", self.logs()),
        }
    }

    /// The endpoint that answers each of new TCP connections from `ns` to `to`,
    /// one from each of `ports`.
    fn answered(&self, ns: &Netns, to: SocketAddr, ports: Range<u16>) -> Vec<Ipv4Addr> {
        let all = || {
            ports
                .map(|port| from_port(port, to).map(|a| a.server))
                .collect::<Result<Vec<_>, String>>()
        };
        in_netns(ns, all)
            .expect("the namespace")
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }
}

/// A TCP exchange with `to` from source port `port` of this thread's namespace,
/// closed with a reset, which leaves no TIME_WAIT behind: the port may be used again
/// at once.
fn from_port(port: u16, to: SocketAddr) -> Result<Answer, String> {
    let opened = || -> std::io::Result<TcpStream> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
        s.connect_timeout(&to.into(), PROBE)?;
        s.set_linger(Some(Duration::ZERO))?;
        Ok(s.into())
    };
    let c = opened().map_err(|e| format!("TCP from port {port} to {to}: {e}"))?;
    ping(&c, to)
}

// ---------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------

/// A pod to ClusterIPs whose endpoints are remote, local and the pod itself, and the
/// node to ClusterIPs: TCP and UDP, with the address each endpoint saw.
fn translated(lab: &Lab) {
    let c = &lab.cluster;
    let (client, client_ip) = (&c.pod(0, 0).ns, c.ip(0, 0));
    let node0 = c.underlay.host(0);

    // Remote endpoints (two of them with three nodes, chosen by the flow's hash):
    // each sees the client pod's own address, no SNAT.
    let remote: BTreeSet<Ipv4Addr> = (1..c.nodes.len()).map(|h| c.ip(h, 0)).collect();
    let mut reached = BTreeSet::new();
    for _ in 0..if remote.len() > 1 { 24 } else { 2 } {
        for a in lab.exchange("pod → ClusterIP, remote endpoints", client, TO_REMOTE) {
            assert_eq!(a.seen, client_ip, "no SNAT");
            reached.insert(a.server);
        }
    }
    assert_eq!(
        reached, remote,
        "every remote endpoint answered, and only they"
    );

    let local = Answer {
        seen: client_ip,
        server: c.ip(0, 1),
    };
    let answers = lab.exchange("pod → ClusterIP, local endpoint", client, TO_LOCAL);
    assert_eq!(answers, [local; 2], "no SNAT");

    // Hairpin: the switch gives the connection the ClusterIP as its source (the
    // pod's own address would be a martian to its stack).
    let hairpin = Answer {
        seen: TO_SELF,
        server: client_ip,
    };
    let answers = lab.exchange("pod → ClusterIP, itself", client, TO_SELF);
    assert_eq!(answers, [hairpin; 2], "the pod sees the Service");

    // The node, through weft0 (which routes the Service CIDR), from its address
    // there.
    for (what, vip) in [
        ("node → ClusterIP, remote endpoint", TO_REMOTE),
        ("node → ClusterIP, local endpoint", TO_LOCAL),
    ] {
        for a in lab.exchange(what, &node0.ns, vip) {
            assert_eq!(a.seen, node0.gateway, "{what}: the node's address on weft0");
            let endpoints = if vip == TO_LOCAL {
                [local.server].into()
            } else {
                remote.clone()
            };
            assert!(endpoints.contains(&a.server), "{what}: {a:?}");
        }
    }
}

/// NetworkPolicy on the endpoint judges a ClusterIP connection by the client pod's
/// own address: the admitted pod gets through, another pod of the same node does
/// not (and that pod reaches an unprotected Service: the control).
fn policy_on_the_endpoint(lab: &Lab) {
    let c = &lab.cluster;
    let (admitted, other) = (&c.pod(0, 0).ns, &c.pod(0, 1).ns);
    let want = Answer {
        seen: c.ip(0, 0),
        server: lab.protected.1,
    };
    let answers = lab.exchange("admitted pod → protected ClusterIP", admitted, TO_PROTECTED);
    assert_eq!(answers, [want; 2]);
    let control = lab.exchange("other pod → unprotected ClusterIP", other, TO_REMOTE);
    assert!(control.iter().all(|a| a.seen == c.ip(0, 1)), "{control:?}");

    let drops = || port_drops(&c.nodes[1], lab.protected.1, "policy_ingress");
    let before = drops();
    let tcp = tcp_exchange(other, SocketAddr::from((TO_PROTECTED, SVC_TCP)));
    assert!(
        tcp.is_err(),
        "the other pod reached the protected one: {tcp:?}"
    );
    let udp = udp_exchange(other, SocketAddr::from((TO_PROTECTED, SVC_UDP)));
    assert!(
        udp.is_err(),
        "the other pod reached the protected one: {udp:?}"
    );
    let after = drops();
    assert!(
        after > before,
        "the refusals are counted: {before} → {after}"
    );
}

/// A Service without endpoints is refused at once: a TCP connect fails with
/// ECONNREFUSED or EHOSTUNREACH (not a timeout), from a pod and from the node, and a
/// connected UDP socket hears the ICMP error as ECONNREFUSED.
fn no_endpoints(lab: &Lab) {
    let c = &lab.cluster;
    for (who, ns) in [("pod", &c.pod(0, 0).ns), ("node", &c.underlay.host(0).ns)] {
        let to = SocketAddr::from((TO_NONE, SVC_TCP));
        let connect = in_netns(ns, || TcpStream::connect_timeout(&to, PROBE));
        match connect.expect("the namespace") {
            Ok(_) => panic!("{who}: a Service without endpoints took a connection"),
            Err(e) => assert!(
                e.kind() == ErrorKind::ConnectionRefused
                    || e.raw_os_error() == Some(libc::EHOSTUNREACH),
                "{who} → ClusterIP without endpoints: {e} ({:?})\n{}",
                e.kind(),
                lab.logs()
            ),
        }
        let to = SocketAddr::from((TO_NONE, SVC_UDP));
        let heard = in_netns(ns, || udp_error(to)).expect("the namespace");
        assert_eq!(
            heard.map_err(|e| e.kind()),
            Err(ErrorKind::ConnectionRefused),
            "{who}: UDP to a ClusterIP without endpoints\n{}",
            lab.logs()
        );
    }
}

/// What a UDP socket of this thread's namespace, connected to `to`, hears after a
/// datagram: an answer's length, or the error the ICMP answer left on it.
fn udp_error(to: SocketAddr) -> std::io::Result<usize> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.connect(to)?;
    s.set_read_timeout(Some(PROBE))?;
    s.send(b"ping 1")?;
    s.recv(&mut [0u8; 64])
}

/// `sessionAffinity: ClientIP`: a hundred TCP connections from one client land on
/// one of three endpoints; without affinity (the control, same endpoints) they
/// spread. The two sets of connections take source ports of their own: see
/// [`AFFINITY_PORT`].
fn affinity(lab: &Lab) {
    let client = &lab.cluster.pod(0, 0).ns;
    let (first, n) = (AFFINITY_PORT, AFFINITY_CONNECTIONS);
    let to = |vip| SocketAddr::from((vip, SVC_TCP));
    let sticky: BTreeSet<_> = lab
        .answered(client, to(TO_STICKY), first..first + n)
        .into_iter()
        .collect();
    assert_eq!(sticky.len(), 1, "with affinity: {sticky:?}");
    let spread: BTreeSet<_> = (lab.answered(client, to(TO_SPREAD), first + n..first + 2 * n))
        .into_iter()
        .collect();
    assert!(spread.len() > 1, "without affinity: {spread:?}");
}

/// A client port used towards one ClusterIP and, once that connection is closed,
/// towards another of the same endpoint: the endpoint sees the same client address
/// and port both times, and the second connection's answers come from the second
/// ClusterIP. (The closed connection's translation may linger in the table of the
/// worker that reads the endpoint's answers, while the new one is written by
/// another: over [`REUSED`] ports, some are.)
fn a_port_reused_towards_another_cluster_ip(lab: &Lab) {
    let client = &lab.cluster.pod(0, 0).ns;
    let reached = |vip| {
        let to = SocketAddr::from((vip, SVC_TCP));
        let ports = REUSED_PORT..REUSED_PORT + REUSED;
        lab.answered(client, to, ports)
    };
    let endpoint = lab.cluster.ip(0, 1);
    assert!(reached(TO_LOCAL).iter().all(|&s| s == endpoint));
    assert!(reached(TO_ALIAS).iter().all(|&s| s == endpoint));
}

/// An endpoint leaves its Service (its EndpointSlice rewritten): new connections
/// avoid it, the connections held open (to every endpoint) stay up, a UDP flow that
/// was on it goes to another, and of [`FLOWS`] new connections, each from the same
/// source port before and after, Maglev moves those that were on the endpoint and
/// few others.
fn an_endpoint_leaves(lab: &Lab) {
    let c = &lab.cluster;
    let (client, client_ip) = (&c.pod(0, 0).ns, c.ip(0, 0));
    let gone = lab.leaving();
    let to = SocketAddr::from((TO_MANY, SVC_TCP));
    let held: Vec<(TcpStream, Ipv4Addr)> = (0..HELD)
        .map(|i| {
            let c = in_netns(client, || TcpStream::connect_timeout(&to, PROBE))
                .expect("the namespace")
                .unwrap_or_else(|e| panic!("held connection {i}: {e}"));
            let a = ping(&c, to).unwrap_or_else(|e| panic!("held connection {i}: {e}"));
            (c, a.server)
        })
        .collect();
    assert!(held.iter().any(|(_, s)| *s != gone), "one held elsewhere");
    let udp = udp_flow_to(lab, gone);
    let before = lab.answered(client, to, FLOW_PORT..FLOW_PORT + FLOWS);
    assert!(before.contains(&gone), "a flow on the endpoint that leaves");

    lab.put_in_force(&lab.services(Some(gone)));
    let after = lab.answered(client, to, FLOW_PORT..FLOW_PORT + FLOWS);
    assert!(
        !after.contains(&gone),
        "a new connection went to the endpoint that left"
    );
    let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
    let minimum = before.iter().filter(|&&x| x == gone).count();
    let ends: Vec<Ipv4Addr> = lab.three().into_iter().map(|(_, ip)| ip).collect();
    let (mean, bound) = extra_moves(&ends, gone, before.len() - minimum);
    eprintln!(
        "1 of 3 endpoints left: {moved} of {FLOWS} flows moved, minimum {minimum}, \
         {} beyond it (expected {mean:.1}, bound {bound})",
        moved - minimum
    );
    assert!(moved - minimum <= bound, "moved {moved}, minimum {minimum}");

    // The UDP flow on the endpoint that left was forgotten: its next datagram goes
    // to a live endpoint.
    let to_udp = SocketAddr::from((TO_MANY, SVC_UDP));
    let next = udp_ping(&udp, to_udp).unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(next.seen, client_ip);
    assert_ne!(
        next.server, gone,
        "the UDP flow still goes to the endpoint that left"
    );
    for (i, (c, server)) in held.iter().enumerate() {
        let a = ping(c, to).unwrap_or_else(|e| panic!("held connection {i}: {e}"));
        let want = Answer {
            seen: client_ip,
            server: *server,
        };
        assert_eq!(a, want, "held connection {i} keeps its endpoint");
    }
}

/// A UDP socket of node 0's pod 0, connected to [`TO_MANY`], whose flow goes to
/// `endpoint` (new flows from fresh ports until one does).
fn udp_flow_to(lab: &Lab, endpoint: Ipv4Addr) -> UdpSocket {
    let (client, to) = (
        &lab.cluster.pod(0, 0).ns,
        SocketAddr::from((TO_MANY, SVC_UDP)),
    );
    for _ in 0..100 {
        let s = udp_socket(client, to).expect("a UDP socket");
        let a = udp_ping(&s, to).unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
        if a.server == endpoint {
            return s;
        }
    }
    panic!("no UDP flow of 100 went to {endpoint}");
}

/// How many of `others` new flows, none of them on `gone`, the removal of `gone`
/// from `ends` may move: their expected number, and a bound.
///
/// A flow's hash, keyed by weftd's random seed, picks a slot of the port's Maglev
/// table uniformly, so a flow that was not on `gone` sits on one of the slots `gone`
/// did not own, and moves if that slot changed owner. The extra moves are thus
/// binomial, with `p` the share of those slots that changed between the two tables
/// (of one size: weftd keeps a port's size while it fits), computed here. By
/// Chernoff's bound, `P(X >= μ + t) <= exp(-t² / (2(μ + t/3)))`, which for
/// `t = 6√μ + 7` stays below 1e-4 whatever `μ` (its exponent is least at `μ = 0`:
/// 10.5): a failure is a table that moves more than Maglev's, not bad luck.
fn extra_moves(ends: &[Ipv4Addr], gone: Ipv4Addr, others: usize) -> (f64, usize) {
    let mut before: Vec<(Ipv4Addr, u16)> = ends.iter().map(|&ip| (ip, TCP_PORT)).collect();
    before.sort_unstable();
    let after: Vec<(Ipv4Addr, u16)> = before.iter().copied().filter(|e| e.0 != gone).collect();
    let m = size_for(before.len());
    let table = |ends: &[(Ipv4Addr, u16)]| {
        Maglev::with_size(ends, m)
            .expect("a table")
            .expect("endpoints")
    };
    let (a, b) = (table(&before), table(&after));
    let owners = (a.slots().iter().zip(b.slots()))
        .map(|(x, y)| (before[usize::from(*x)], after[usize::from(*y)]))
        .filter(|(x, _)| x.0 != gone);
    let (kept, changed) = owners.fold((0usize, 0usize), |(k, c), (x, y)| {
        (k + 1, c + usize::from(x != y))
    });
    let mean = others as f64 * changed as f64 / kept as f64;
    (mean, (mean + 6.0 * mean.sqrt() + 7.0).floor() as usize)
}
