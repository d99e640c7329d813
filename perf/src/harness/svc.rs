//! The `svc*` tests: TCP connections and round trips through ClusterIPs, with 10, 1,000
//! or 10,000 Services defined, on the systems that translate them ([`ServiceProxy`]).
//!
//! Every system gets the same Services from one definition ([`define`]): Service `i`
//! of a set of `n` has its own ClusterIP ([`cluster_ip`]) and port 80, and for
//! endpoints every pod of host 1 on a port of its own ([`target_port`]). kube-proxy's
//! rules for them ([`crate::kubeproxy`]) are loaded on every node for the iptables
//! and nftables systems; `weft+switch` reads the same Services as Service and
//! EndpointSlice manifests ([`manifests`]) from its policy directory. The endpoint
//! pods are the same for every count, and so are the servers (one process a pod), so
//! what grows with the count is only the rule set, or the switch's Service table,
//! that each new connection is looked up in.
//!
//! Each Service has endpoints of its own (a port of its own on the shared pods), as
//! Services in a cluster mostly do. With one endpoint port for all, a client port
//! reused towards another ClusterIP would meet, in the host's connection tracker, the
//! connection in TIME_WAIT that it left to the same endpoint, and Linux resolves that
//! clash by rewriting the client's source port: a case worth its own test
//! (`services_sharing_an_endpoint_*` in `switch/tests/services.rs`), not one to make
//! every connection of a rate test depend on.
//!
//! The clients (several threads over host 0's pods) take the ClusterIPs in turn, so a
//! run reaches every Service, not only those at the head of kube-proxy's chain, whose
//! cost grows with a rule's position. The sets of different sizes have disjoint
//! ClusterIPs, so a set answering shows that it, not the one before, is in force.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::measure::{all_cpu_pids, awake, cpu_seconds, Data};
use super::{Plumbing, ServiceProxy, Settings, Test};
use crate::kubeproxy::{self, Endpoint, Protocol, Service, TrafficPolicy};
use crate::netns::{wait_until, Netns};
use crate::traffic::{crr_once, tcp_crr_spread, tcp_rr_spread, EchoServers};
use crate::weft::{in_netns, node_name, write_atomic, CLUSTER_CIDR};

/// The Service CIDR of the Services systems (weftd's `service-cidr`).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The first address of [`SERVICE_CIDR`].
const SERVICE_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);

/// Addresses in [`SERVICE_CIDR`].
const SERVICE_ADDRESSES: usize = 1 << 16;

/// Every Service's port.
pub const SERVICE_PORT: u16 = 80;

/// The endpoints' port of Service 0; Service `i`'s is `i` above it. With 10,000
/// Services they stay below Linux's ephemeral ports (32768 up), the clients'.
const TARGET_BASE: u16 = 20_000;

/// The most Services a test may define: their target ports must stay below the
/// ephemeral range.
const MAX_SERVICES: usize = 12_000;

/// The Kubernetes namespace of the Services.
const NAMESPACE: &str = "perf";

/// The name of the Services' one port.
const PORT_NAME: &str = "http";

/// Client threads opening connections at once, spread over host 0's pods: enough to
/// keep both of this machine's vCPUs busy while each waits on its round trips.
pub const CLIENTS: usize = 4;

/// Connections the round trips take in turn, spread over the Services.
pub const RR_CONNECTIONS: usize = 8;

/// How long a round trip may stall before the test fails, or a server waits for a
/// client's byte.
const STALL: Duration = Duration::from_secs(10);

/// How long a connection of the rate test may take before it counts as failed (its
/// SYN, lost once, would be sent again after 1 s).
const GIVE_UP: Duration = Duration::from_secs(1);

/// The longest loading a set of Services may take, to the first connection through
/// both its first and its last ClusterIP.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// How long one readiness probe's connection may take.
const PROBE: Duration = Duration::from_millis(500);

/// The most connections a run opens per second of its duration (a bound, far above
/// what this machine does).
const MAX_CONNECTIONS_PER_SECOND: u64 = 100_000;

/// The most round trips a run makes per second of its duration.
const MAX_ROUND_TRIPS_PER_SECOND: u64 = 2_000_000;

/// The file of the policy directory that holds `weft+switch`'s Services.
const MANIFEST: &str = "services.yaml";

/// A pod that serves every Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// Its host.
    pub host: usize,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// The ClusterIP of Service `i` of a set of `n`: the `n + i`th address of
/// [`SERVICE_CIDR`], so that sets of different sizes (10, 1,000, 10,000) do not share
/// an address.
///
/// # Panics
/// If `n + i` is outside the Service CIDR.
pub fn cluster_ip(n: usize, i: usize) -> Ipv4Addr {
    assert!(
        n + i < SERVICE_ADDRESSES,
        "Service {i} of {n} is outside {SERVICE_CIDR}"
    );
    Ipv4Addr::from(u32::from(SERVICE_BASE) + (n + i) as u32)
}

/// The endpoints' port of Service `i` (its `targetPort`).
///
/// # Panics
/// If `i` is not below [`MAX_SERVICES`].
pub fn target_port(i: usize) -> u16 {
    assert!(i < MAX_SERVICES, "Service {i}: at most {MAX_SERVICES}");
    TARGET_BASE + i as u16
}

/// The `n` Services of a test as kube-proxy on host `on_host` sees them: each a TCP
/// port 80 with every backend as an endpoint on its [`target_port`].
pub fn define(n: usize, backends: &[Backend], on_host: usize) -> Vec<Service> {
    (0..n)
        .map(|i| Service {
            name: format!("{NAMESPACE}/svc-{i}"),
            port_name: PORT_NAME.into(),
            protocol: Protocol::Tcp,
            cluster_ip: cluster_ip(n, i),
            port: SERVICE_PORT,
            node_port: None,
            external_traffic_policy: TrafficPolicy::Cluster,
            endpoints: (backends.iter())
                .map(|b| Endpoint {
                    ip: b.ip,
                    port: target_port(i),
                    local: b.host == on_host,
                })
                .collect(),
        })
        .collect()
}

/// `services` as the API server holds them, YAML documents for weftd's policy
/// directory: per Service a `v1` Service and, per target port, a ready
/// `discovery.k8s.io/v1` EndpointSlice; `node` names each endpoint's node.
pub fn manifests(services: &[Service], node: impl Fn(Ipv4Addr) -> String) -> String {
    let mut out = String::new();
    for s in services {
        let (ns, name) = s.name.split_once('/').unwrap_or(("default", &s.name));
        let proto = match s.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        let mut by_port: BTreeMap<u16, Vec<&Endpoint>> = BTreeMap::new();
        for e in &s.endpoints {
            by_port.entry(e.port).or_default().push(e);
        }
        let target = by_port.keys().next().copied().unwrap_or(s.port);
        let port = format!("name: {}, protocol: {proto}", s.port_name);
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{clusterIP: {}, ports: [{{{port}, port: {}, targetPort: {target}}}]}}\n---\n",
            s.cluster_ip, s.port
        );
        for (target, eps) in by_port {
            let endpoints: Vec<String> = (eps.iter())
                .map(|e| {
                    let node = node(e.ip);
                    format!(
                        "{{addresses: [{}], conditions: {{ready: true}}, nodeName: {node}}}",
                        e.ip
                    )
                })
                .collect();
            let _ = write!(
                out,
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: {name}-{target}, namespace: {ns}, \
                 labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\n\
                 endpoints: [{}]\nports: [{{{port}, port: {target}}}]\n---\n",
                endpoints.join(", ")
            );
        }
    }
    out
}

/// `argv` that loads kube-proxy's iptables rules, read from standard input.
const IPTABLES_RESTORE: &[&str] = &["iptables-restore", "--noflush"];

/// `argv` that loads kube-proxy's nftables table, read from standard input.
const NFT: &[&str] = &["nft", "-f", "-"];

/// A set of Services in force on a system's nodes, taken out again by
/// [`Loaded::unload`] or, after a failure, on drop.
struct Loaded<'p, 'c> {
    plumbing: &'p Plumbing<'c>,
    proxy: ServiceProxy,
    n: usize,
    backends: &'p [Backend],
    /// Whether it is still in force.
    live: bool,
}

impl<'p, 'c> Loaded<'p, 'c> {
    /// Puts `n` Services with `backends` in force through `proxy`, and waits until a
    /// client on host 0 connects through the first and the last ClusterIP. Returns
    /// them and how long that took.
    fn load(
        plumbing: &'p Plumbing<'c>,
        proxy: ServiceProxy,
        n: usize,
        backends: &'p [Backend],
    ) -> Result<(Loaded<'p, 'c>, Duration)> {
        let start = Instant::now();
        let loaded = Loaded {
            plumbing,
            proxy,
            n,
            backends,
            live: true,
        };
        match proxy {
            ServiceProxy::Switch => loaded.write_manifests()?,
            _ => loaded.on_every_node(false)?,
        }
        let client = &plumbing.cluster().pod(0, 0).ns;
        let ends = [0, n - 1].map(|i| SocketAddr::from((cluster_ip(n, i), SERVICE_PORT)));
        let what = format!("{n} Services to take connections");
        wait_until(LOAD_TIMEOUT, &what, || {
            let through = || ends.iter().all(|a| crr_once(*a, PROBE).is_ok());
            crate::stop::requested() || in_netns(client, through).unwrap_or(false)
        })?;
        crate::stop::check()?;
        Ok((loaded, start.elapsed()))
    }

    /// Writes the Services into the policy directory every weftd reads.
    fn write_manifests(&self) -> Result<()> {
        let hosts = self.plumbing.cluster().underlay().hosts();
        let node = |ip: Ipv4Addr| {
            let b = self.backends.iter().find(|b| b.ip == ip);
            b.map(|b| node_name(&hosts[b.host])).unwrap_or_default()
        };
        let text = manifests(&define(self.n, self.backends, 0), node);
        write_atomic(&self.plumbing.policy_dir().join(MANIFEST), &text)
    }

    /// Loads kube-proxy's rules (or, with `undo`, takes them out) on every node at once.
    fn on_every_node(&self, undo: bool) -> Result<()> {
        let hosts = self.plumbing.cluster().underlay().hosts();
        let cluster_cidr = CLUSTER_CIDR.parse().context("the cluster CIDR")?;
        std::thread::scope(|s| {
            let runs: Vec<_> = (hosts.iter().enumerate())
                .map(|(h, host)| {
                    s.spawn(move || {
                        let services = define(self.n, self.backends, h);
                        let node = kubeproxy::Node {
                            cluster_cidr,
                            node_ips: vec![host.underlay_ip],
                        };
                        let (argv, text) = match (self.proxy, undo) {
                            (ServiceProxy::Iptables, false) => (
                                IPTABLES_RESTORE,
                                kubeproxy::iptables_restore(&node, &services),
                            ),
                            (ServiceProxy::Iptables, true) => {
                                (IPTABLES_RESTORE, kubeproxy::iptables_cleanup(&services))
                            }
                            (_, false) => (NFT, kubeproxy::nft_ruleset(&node, &services)),
                            (_, true) => (NFT, kubeproxy::nft_cleanup()),
                        };
                        host.ns.run_with_input(argv, &text)
                    })
                })
                .collect();
            for run in runs {
                run.join()
                    .map_err(|_| anyhow::anyhow!("loading rules panicked"))??;
            }
            Ok(())
        })
    }

    /// Takes the Services out of force.
    fn unload(mut self) -> Result<()> {
        self.take_out()
    }

    fn take_out(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.live) {
            return Ok(());
        }
        match self.proxy {
            ServiceProxy::Switch => {
                let file = self.plumbing.policy_dir().join(MANIFEST);
                std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))
            }
            _ => self.on_every_node(true),
        }
    }
}

impl Drop for Loaded<'_, '_> {
    fn drop(&mut self) {
        if let Err(e) = self.take_out() {
            eprintln!("weft-perf: taking the Services out: {e:#}");
        }
    }
}

/// What one round of a `svc*` test measured.
struct Figures {
    rate: f64,
    connections: u64,
    rr_p50_us: f64,
    round_trips: u64,
    cpu_us_per_conn: f64,
    failed: u64,
    load: Duration,
}

/// One round of `test` (a `svc*` test) on `plumbing`: the Services loaded, echo servers
/// on host 1's pods, connections from [`CLIENTS`] threads over host 0's pods taking
/// every ClusterIP in turn (their rate, and the CPU of weftd, the clients, the servers and
/// ksoftirqd per connection), then round trips over [`RR_CONNECTIONS`] connections
/// spread over the Services; the Services taken out again.
pub(super) fn round(
    data: &mut Data,
    plumbing: &Plumbing<'_>,
    test: Test,
    settings: &Settings,
) -> Result<String> {
    let system = plumbing.system();
    let (Some(proxy), Some(n)) = (system.service_proxy(), test.services()) else {
        return Ok("n/a".into());
    };
    let f = measure_services(plumbing, proxy, n, settings)?;
    data.push(system, test, "rate", f.rate);
    data.push(system, test, "rr p50", f.rr_p50_us);
    data.push(system, test, "cpu", f.cpu_us_per_conn);
    data.push(system, test, "failed", f.failed as f64);
    data.push(system, test, "load", f.load.as_secs_f64());
    Ok(format!(
        "{n} Services: {:.0} connections/s ({} connections, {} failed), {:.1} µs of CPU \
         each, rr p50 {:.1} µs ({} round trips), loaded in {:.2} s",
        f.rate,
        f.connections,
        f.failed,
        f.cpu_us_per_conn,
        f.rr_p50_us,
        f.round_trips,
        f.load.as_secs_f64()
    ))
}

/// The measurements of [`round`] with `n` Services through `proxy`.
fn measure_services(
    plumbing: &Plumbing<'_>,
    proxy: ServiceProxy,
    n: usize,
    settings: &Settings,
) -> Result<Figures> {
    let cluster = plumbing.cluster();
    let m = cluster.pods_per_host();
    let backends: Vec<Backend> = (0..m)
        .map(|j| Backend {
            host: 1,
            ip: plumbing.ip(1, j),
        })
        .collect();
    let pods: Vec<(&Netns, Ipv4Addr)> = (0..m)
        .map(|j| (&cluster.pod(1, j).ns, plumbing.ip(1, j)))
        .collect();
    let ports: Vec<u16> = (0..n).map(target_port).collect();
    // The servers are this program, in another mode (see `EchoServers`).
    let me = std::env::current_exe().context("finding weft-perf's own path")?;
    let servers = EchoServers::start(&me, &pods, &ports, STALL)?;
    let (loaded, load) = Loaded::load(plumbing, proxy, n, &backends)?;
    let targets: Vec<SocketAddr> = (0..n)
        .map(|i| SocketAddr::from((cluster_ip(n, i), SERVICE_PORT)))
        .collect();
    let clients: Vec<&Netns> = (0..CLIENTS).map(|c| &cluster.pod(0, c % m).ns).collect();
    let d = settings.duration;
    let seconds = d.as_secs_f64().ceil().max(1.0) as u64;
    let _awake = awake(settings)?;
    let mut pids = all_cpu_pids(plumbing);
    pids.extend(servers.pids());
    let cpu_before = cpu_seconds(&pids)?;
    let crr = tcp_crr_spread(
        &clients,
        &targets,
        d,
        MAX_CONNECTIONS_PER_SECOND.saturating_mul(seconds),
        GIVE_UP,
    )?;
    let cpu = cpu_seconds(&pids)? - cpu_before;
    ensure!(crr.connections > 0, "no connection completed");
    let rr = tcp_rr_spread(
        clients[0],
        &targets,
        RR_CONNECTIONS,
        (d, MAX_ROUND_TRIPS_PER_SECOND.saturating_mul(seconds)),
        GIVE_UP,
    )?;
    ensure!(!rr.is_empty(), "no round trip completed");
    loaded.unload()?;
    servers.stop()?;
    Ok(Figures {
        rate: crr.per_second(),
        connections: crr.connections,
        rr_p50_us: rr.value_at_quantile(0.5) as f64 / 1e3,
        round_trips: rr.len(),
        cpu_us_per_conn: cpu / crr.connections as f64 * 1e6,
        failed: crr.failed,
        load,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Vec<Backend> {
        [2, 3]
            .map(|last| Backend {
                host: 1,
                ip: Ipv4Addr::new(10, 244, 1, last),
            })
            .to_vec()
    }

    #[test]
    fn sets_of_each_size_have_their_own_cluster_ips_in_the_service_cidr() {
        let cidr: ipnet::Ipv4Net = SERVICE_CIDR.parse().unwrap();
        let mut all = std::collections::HashSet::new();
        for n in [10, 1_000, 10_000] {
            for i in 0..n {
                let ip = cluster_ip(n, i);
                assert!(cidr.contains(&ip) && ip != cidr.network(), "{ip}");
                assert!(all.insert(ip), "{ip} in two sets");
            }
        }
        assert_eq!(cluster_ip(10, 0), Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(cluster_ip(10_000, 9_999), Ipv4Addr::new(10, 96, 78, 31));
    }

    #[test]
    fn every_node_sees_the_same_services_with_its_own_endpoints_local() {
        let (on_0, on_1) = (define(3, &backends(), 0), define(3, &backends(), 1));
        assert_eq!(on_0.len(), 3);
        for (a, b) in on_0.iter().zip(&on_1) {
            assert_eq!(
                (&a.name, a.cluster_ip, a.port),
                (&b.name, b.cluster_ip, b.port)
            );
            assert!(a.endpoints.iter().all(|e| !e.local));
            assert!(b.endpoints.iter().all(|e| e.local));
            assert_eq!(a.endpoints.len(), 2);
        }
        let names: std::collections::HashSet<_> = on_0.iter().map(|s| &s.name).collect();
        assert_eq!(names.len(), 3);
        let ports: Vec<u16> = on_0.iter().map(|s| s.endpoints[1].port).collect();
        assert_eq!(ports, [20_000, 20_001, 20_002]);
        assert!(target_port(MAX_SERVICES - 1) < 32_768);
    }

    #[test]
    fn manifests_hold_a_service_and_a_ready_slice_each() {
        let services = define(2, &backends(), 0);
        let text = manifests(&services, |ip| format!("node-of-{ip}"));
        let docs: Vec<&str> = text.split("---\n").filter(|d| !d.is_empty()).collect();
        assert_eq!(docs.len(), 4, "{text}");
        assert!(docs[0].contains("kind: Service\nmetadata: {name: svc-0, namespace: perf}"));
        assert!(docs[0].contains(
            "spec: {clusterIP: 10.96.0.2, ports: [{name: http, protocol: TCP, port: 80, \
             targetPort: 20000}]}"
        ));
        assert!(docs[1].starts_with("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"));
        assert!(docs[1].contains("labels: {kubernetes.io/service-name: svc-0}"));
        assert!(docs[1].contains(
            "{addresses: [10.244.1.3], conditions: {ready: true}, nodeName: node-of-10.244.1.3}"
        ));
        assert!(docs[1].contains("ports: [{name: http, protocol: TCP, port: 20000}]"));
        assert!(docs[3].contains("name: svc-1-20001"));
    }
}
