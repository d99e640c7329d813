//! The cluster every system runs on, and the per-system plumbing put onto it and taken
//! off again between systems.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::scrape::{Scraper, METRICS_PORT};
use super::{netpol_load, svc, IpFamily, Settings, System, Tools};
use crate::cni::{self, Network, Verb};
use crate::netns::wait_until;
use crate::pidfile::{PidFile, RUN_DIR};
use crate::topo::{self, direct, kernel_vxlan, Host, Pod, Underlay};
use crate::weft::{
    node_key, peers_toml, pod_subnet6, write_atomic, PeerNode, Scratch, WeftNode, WeftOptions,
    CLUSTER_CIDR_V6,
};

/// The interface name every pod gets.
pub const POD_IFNAME: &str = "eth0";

/// Seconds weft-cni may wait for weftd (the config's `timeout`).
const WEFT_CNI_TIMEOUT_S: u64 = 10;

/// How long a freshly plumbed system may take to carry its first ping.
const REACH_TIMEOUT: Duration = Duration::from_secs(10);

/// First host-local address of the reference plugins' range, above the static pods.
const REFERENCE_RANGE_START: u8 = 128;

/// Hosts joined by an underlay, pods on each, and this run's pid file.
#[derive(Debug)]
pub struct Cluster {
    pods: Vec<Vec<Pod>>,
    underlay: Underlay,
    pidfile: Mutex<PidFile>,
}

impl Cluster {
    /// Builds `settings.hosts` hosts on an underlay of `settings.mtu`, with
    /// `settings.pods` pod namespaces each (no interfaces yet).
    pub fn build(settings: &Settings) -> Result<Cluster> {
        let pidfile = PidFile::create(Path::new(RUN_DIR))?;
        let underlay = Underlay::with_options(
            "perf",
            settings.hosts,
            settings.mtu,
            settings.underlay_offload,
        )?;
        let mut pods = Vec::with_capacity(settings.hosts);
        for h in 0..settings.hosts {
            let host_pods = (0..settings.pods)
                .map(|j| underlay.pod(h, &format!("h{h}p{j}")))
                .collect::<Result<Vec<_>>>()?;
            pods.push(host_pods);
        }
        Ok(Cluster {
            pods,
            underlay,
            pidfile: Mutex::new(pidfile),
        })
    }

    /// The underlay and its hosts.
    pub fn underlay(&self) -> &Underlay {
        &self.underlay
    }

    /// Pod `j` of host `h`.
    ///
    /// # Panics
    /// If there is no such pod.
    pub fn pod(&self, h: usize, j: usize) -> &Pod {
        &self.pods[h][j]
    }

    /// Pods per host.
    pub fn pods_per_host(&self) -> usize {
        self.pods[0].len()
    }

    /// Names of every namespace of the cluster.
    pub fn netns_names(&self) -> Vec<String> {
        let mut names = self.underlay.netns_names();
        names.extend(self.pods.iter().flatten().map(|p| p.ns.name().to_owned()));
        names
    }

    fn pidfile(&self) -> std::sync::MutexGuard<'_, PidFile> {
        self.pidfile.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One system plumbed onto a [`Cluster`]: every pod attached and reachable. [`down`]
/// takes it off in order; dropping it without `down` (after a failure) removes what it
/// can without asking weftd.
///
/// [`down`]: Plumbing::down
#[derive(Debug)]
pub struct Plumbing<'c> {
    cluster: &'c Cluster,
    system: System,
    /// Each pod's address, `[host][pod]`.
    ips: Vec<Vec<Ipv4Addr>>,
    /// Each pod's IPv6 address, `[host][pod]`, on a dual-stack system (else empty).
    ips6: Vec<Vec<Ipv6Addr>>,
    /// Whether the system runs dual stack ([`Settings::dual_stack_on`]).
    dual: bool,
    /// The CNI network a runtime on each host would use (none for `direct`).
    networks: Vec<Option<Network>>,
    /// Scrapers of the nodes' `/metrics` (`--alt-scrape-ms`), stopped before them.
    scrapers: Vec<Scraper>,
    nodes: Vec<WeftNode>,
    kernel: bool,
    scratch: Scratch,
}

impl<'c> Plumbing<'c> {
    /// The weftd flags that make the system what it is, beyond its mode.
    fn weftd_flags(&self) -> Vec<String> {
        let system = self.system;
        if system.has_policy() {
            return vec![
                "--policy-dir".into(),
                self.policy_dir().display().to_string(),
            ];
        }
        match system {
            // The Service CIDR keeps ClusterIPs out of the egress masquerade, as in a
            // cluster under kube-proxy.
            System::WeftIptables => vec!["--service-cidr".into(), svc::SERVICE_CIDR.into()],
            System::WeftSwitch => vec![
                "--services".into(),
                "switch".into(),
                "--service-cidr".into(),
                svc::SERVICE_CIDR.into(),
                "--policy-dir".into(),
                self.policy_dir().display().to_string(),
            ],
            // Every system gives its pods the same MTU, the tunnels' (see
            // `direct::mtu`), so that all move the same packets.
            System::WeftDirect | System::WeftDirectAlt => {
                let mtu = direct::mtu(&self.cluster.underlay.hosts()[0]);
                vec!["--pod-mtu".into(), mtu.to_string()]
            }
            s if s.is_afxdp() => vec!["--pod-port".into(), "afxdp".into()],
            s if s.is_encrypted() => vec!["--encryption".into(), "required".into()],
            _ => vec![],
        }
    }

    /// Writes the peers file of the cluster's weftds (`binary`), with every node's
    /// public key if the system is encrypted, and returns its path.
    fn write_peers(&self, binary: &Path) -> Result<PathBuf> {
        let hosts = self.cluster.underlay.hosts();
        let peers = self.scratch.path().join("peers.toml");
        let mut list: Vec<PeerNode> = hosts.iter().map(PeerNode::of).collect();
        if self.dual {
            for (n, h) in list.iter_mut().zip(hosts) {
                n.pod_subnet_v6 = Some(pod_subnet6(h));
            }
        }
        if self.system.is_encrypted() {
            for (n, h) in list.iter_mut().zip(hosts) {
                n.public_key = Some(node_key(binary, h, self.scratch.path())?);
            }
        }
        write_atomic(&peers, &peers_toml(&list))?;
        Ok(peers)
    }

    /// Plumbs `system` onto `cluster`: starts weftd on every host and attaches every pod
    /// through weft-cni, or configures the kernel baseline and attaches every pod with
    /// `ip` (the fixtures' way; the `cni` test times the reference plugins on pods of
    /// its own); then waits until pods reach each other across hosts. A system that
    /// runs dual stack in this run ([`Settings::dual_stack_on`]) gives every pod an
    /// IPv6 address too, and pods reach each other over both families.
    pub fn up(
        cluster: &'c Cluster,
        system: System,
        tools: &Tools,
        settings: &Settings,
    ) -> Result<Plumbing<'c>> {
        let mut p = Plumbing {
            cluster,
            system,
            ips: Vec::new(),
            ips6: Vec::new(),
            dual: settings.dual_stack_on(system),
            networks: Vec::new(),
            scrapers: Vec::new(),
            nodes: Vec::new(),
            kernel: false,
            scratch: Scratch::new("perf")?,
        };
        match system.weft_mode() {
            Some(mode) => p.up_weft(mode, tools, settings)?,
            None => p.up_kernel(tools)?,
        }
        p.wait_reachable()?;
        Ok(p)
    }

    /// Starts weftd in `mode` on every host and attaches every pod through weft-cni.
    fn up_weft(&mut self, mode: &str, tools: &Tools, settings: &Settings) -> Result<()> {
        let hosts = self.cluster.underlay.hosts();
        let binary = match (self.system.is_alt(), &tools.weftd_alt) {
            (true, Some(alt)) => alt.clone(),
            _ => tools.weftd.clone(),
        };
        let peers = self.write_peers(&binary)?;
        let mut extra = self.weftd_flags();
        if self.dual {
            // Each node's own --pod-subnet-v6 follows (`WeftNode::launch`).
            extra.extend(["--cluster-cidr-v6".into(), CLUSTER_CIDR_V6.into()]);
        }
        let alt = self.system.is_alt();
        if alt {
            extra.extend(tools.alt_flags.iter().cloned());
        }
        let scrape = tools.alt_scrape.filter(|_| alt);
        if scrape.is_some() {
            extra.extend(["--metrics-addr".into(), format!("0.0.0.0:{METRICS_PORT}")]);
        }
        let opts = WeftOptions {
            binary,
            mode: mode.into(),
            workers: settings
                .weft_workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            extra,
        };
        if self.system.has_policy() || self.system == System::WeftSwitch {
            std::fs::create_dir_all(self.policy_dir())?;
        }
        for host in hosts {
            let node =
                WeftNode::start_isolated(host, &peers, self.scratch.path(), &opts, &mut |pid| {
                    self.cluster.pidfile().add(pid)
                })?;
            self.networks.push(Some(weft_network(tools, &node.socket)?));
            self.nodes.push(node);
            if let Some(every) = scrape {
                let addr = std::net::SocketAddr::from((host.underlay_ip, METRICS_PORT));
                self.scrapers
                    .push(Scraper::start(host.ns.path(), addr, every)?);
            }
        }
        self.attach_weft_pods()?;
        if self.system.has_policy() {
            self.write_policy()?;
        }
        Ok(())
    }

    /// Attaches every pod through weft-cni, and records the addresses it got (the
    /// IPv6 one too on a dual-stack system).
    fn attach_weft_pods(&mut self) -> Result<()> {
        let hosts = self.cluster.underlay.hosts();
        for (h, host) in hosts.iter().enumerate() {
            let (mut ips, mut ips6) = (Vec::new(), Vec::new());
            for j in 0..self.cluster.pods_per_host() {
                let pod = self.cluster.pod(h, j);
                let network = self.networks[h].as_ref().context("weft network")?;
                let out = network.call_as(
                    Verb::Add,
                    &host.ns,
                    &container_id(pod),
                    &pod.ns.path(),
                    POD_IFNAME,
                    Some((netpol_load::NAMESPACE, &pod.name)),
                )?;
                ips.push(out.first_ip()?);
                if self.dual {
                    let ip6 = out.ipv6()?.with_context(|| {
                        format!("weft-cni gave pod {} no IPv6 address", pod.name)
                    })?;
                    ips6.push(ip6);
                }
            }
            self.ips.push(ips);
            if self.dual {
                self.ips6.push(ips6);
            }
        }
        Ok(())
    }

    /// Configures the kernel baseline (VXLAN or routing) and attaches every pod with `ip`.
    fn up_kernel(&mut self, tools: &Tools) -> Result<()> {
        let hosts = self.cluster.underlay.hosts();
        self.kernel = true;
        let attach = match self.system {
            s if s.is_kernel_vxlan() => {
                kernel_vxlan::mesh(&self.cluster.underlay)?;
                kernel_vxlan::attach_pod
            }
            _ => {
                direct::mesh(&self.cluster.underlay)?;
                direct::attach_pod
            }
        };
        for (h, host) in hosts.iter().enumerate() {
            let mut ips = Vec::new();
            for j in 0..self.cluster.pods_per_host() {
                let ip = host.pod_ip(static_pod_number(j)?);
                attach(host, self.cluster.pod(h, j), ip)?;
                ips.push(ip);
            }
            self.ips.push(ips);
            self.networks.push(match self.system {
                s if s.is_kernel_vxlan() => Some(reference_network(
                    tools,
                    host,
                    kernel_vxlan::mtu(host),
                    self.scratch.path(),
                    self.dual,
                )),
                _ => None,
            });
        }
        if self.dual {
            self.add_kernel_ipv6()?;
        }
        Ok(())
    }

    /// Gives the kernel's VXLAN hosts IPv6 towards every other host, and each pod
    /// attached already its IPv6 address, [`static_pod_ip6`]. All pods are attached
    /// over IPv4 first, so that their link-local addresses pass duplicate address
    /// detection together rather than one after another.
    fn add_kernel_ipv6(&mut self) -> Result<()> {
        let hosts = self.cluster.underlay.hosts();
        for host in hosts {
            let remotes: Vec<kernel_vxlan::RemoteNode6> = (hosts.iter())
                .filter(|h| h.index != host.index)
                .map(|h| kernel_vxlan::RemoteNode6 {
                    subnet: pod_subnet6(h),
                    vtep_mac: kernel_vxlan::vtep_mac(h.index),
                })
                .collect();
            kernel_vxlan::add_ipv6(host, pod_subnet6(host), &remotes)?;
        }
        for (h, host) in hosts.iter().enumerate() {
            let mut ips6 = Vec::new();
            for j in 0..self.cluster.pods_per_host() {
                let ip6 = static_pod_ip6(pod_subnet6(host), j)?;
                kernel_vxlan::attach_pod6(self.cluster.pod(h, j), pod_subnet6(host), ip6)?;
                ips6.push(ip6);
            }
            self.ips6.push(ips6);
        }
        Ok(())
    }

    /// Writes the `weft-*-policy` manifests for the pods attached, and waits until
    /// every node has them in force.
    fn write_policy(&self) -> Result<()> {
        let mut pods = Vec::new();
        for (h, ips) in self.ips.iter().enumerate() {
            for (j, ip) in ips.iter().enumerate() {
                pods.push(netpol_load::PerfPod {
                    name: self.cluster.pod(h, j).name.clone(),
                    ip: *ip,
                    ip6: self.ip6(h, j),
                    server: h == 1,
                });
            }
        }
        let file = self.policy_dir().join("perf.yaml");
        write_atomic(&file, &netpol_load::manifests(&pods))?;
        netpol_load::wait_in_force(&self.nodes, pods.len())
    }

    /// The directory weftd reads NetworkPolicies and Services from, for the systems
    /// that have one.
    pub fn policy_dir(&self) -> PathBuf {
        self.scratch.path().join("policy")
    }

    /// Waits until pod `j` of host 0 reaches pod `j` of every other host (over
    /// IPv6 too on a dual-stack system).
    fn wait_reachable(&self) -> Result<()> {
        let families: &[IpFamily] = if self.dual {
            &[IpFamily::V4, IpFamily::V6]
        } else {
            &[IpFamily::V4]
        };
        for h in 1..self.ips.len() {
            for j in 0..self.cluster.pods_per_host() {
                for &family in families {
                    self.wait_reaches(j, (h, j), family)?;
                }
            }
        }
        Ok(())
    }

    /// Waits until pod `from` of host 0 pings pod `j` of host `h` over `family`.
    fn wait_reaches(&self, from: usize, (h, j): (usize, usize), family: IpFamily) -> Result<()> {
        let from = self.cluster.pod(0, from);
        let to = self.addr(h, j, family)?.to_string();
        let mut last = None;
        let reached = wait_until(REACH_TIMEOUT, "a pod to reach another host", || {
            let r = from
                .ns
                .run(&["ping", "-n", "-q", "-c", "1", "-W", "1", &to]);
            let ok = r.is_ok();
            last = r.err();
            ok
        });
        if let Err(e) = reached {
            bail!(
                "{}: pod {} cannot reach {to} on host {h}: {e}; last ping: {}",
                self.system,
                from.name,
                last.map(|e| format!("{e:#}")).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The system.
    pub fn system(&self) -> System {
        self.system
    }

    /// Whether the system runs dual stack in this run: its pods have IPv6 addresses.
    pub fn dual_stack(&self) -> bool {
        self.dual
    }

    /// The cluster it is plumbed onto.
    pub fn cluster(&self) -> &'c Cluster {
        self.cluster
    }

    /// The address of pod `j` of host `h`.
    pub fn ip(&self, h: usize, j: usize) -> Ipv4Addr {
        self.ips[h][j]
    }

    /// The IPv6 address of pod `j` of host `h`, on a dual-stack system.
    pub fn ip6(&self, h: usize, j: usize) -> Option<Ipv6Addr> {
        self.ips6.get(h).and_then(|ips| ips.get(j)).copied()
    }

    /// The address of `family` of pod `j` of host `h`; fails for IPv6 on a system
    /// that does not run dual stack in this run.
    pub fn addr(&self, h: usize, j: usize, family: IpFamily) -> Result<IpAddr> {
        match family {
            IpFamily::V4 => Ok(self.ip(h, j).into()),
            IpFamily::V6 => self.ip6(h, j).map(IpAddr::from).with_context(|| {
                format!(
                    "{}: pod {j} of host {h} has no IPv6 address (the system does not run \
                     dual stack in this run)",
                    self.system
                )
            }),
        }
    }

    /// The CNI network of host `h`, for systems whose pods a CNI plugin attaches.
    pub fn network(&self, h: usize) -> Option<&Network> {
        self.networks.get(h).and_then(Option::as_ref)
    }

    /// Process ids of the weftd daemons (none for the kernel systems).
    pub fn weftd_pids(&self) -> Vec<u32> {
        self.nodes.iter().map(WeftNode::pid).collect()
    }

    /// The weftd on host `h`, if this is a weft system.
    pub fn node(&self, h: usize) -> Option<&WeftNode> {
        self.nodes.get(h)
    }

    /// Takes the system off the cluster in order: detaches every pod (CNI DEL through
    /// weft-cni for weft, removing the veths for the kernel), then stops weftd or
    /// removes the kernel's devices and routes.
    pub fn down(mut self) -> Result<()> {
        let hosts = self.cluster.underlay.hosts();
        if !self.nodes.is_empty() {
            for (h, host) in hosts.iter().enumerate() {
                let network = self.networks[h].as_ref().context("weft network")?;
                for j in 0..self.cluster.pods_per_host() {
                    let pod = self.cluster.pod(h, j);
                    network.call(
                        Verb::Del,
                        &host.ns,
                        &container_id(pod),
                        &pod.ns.path(),
                        POD_IFNAME,
                    )?;
                }
            }
            for node in std::mem::take(&mut self.nodes) {
                let pid = node.pid();
                let status = node.stop()?;
                self.cluster.pidfile().remove(pid)?;
                if !status.success() {
                    bail!("weftd (pid {pid}) exited with {status} when stopped");
                }
            }
        }
        if self.kernel {
            self.kernel = false;
            for pod in self.pods() {
                topo::detach_pod(pod)?;
            }
            self.unmesh()?;
        }
        Ok(())
    }

    /// Every traffic pod of the cluster.
    fn pods(&self) -> impl Iterator<Item = &Pod> {
        let hosts = self.cluster.underlay.hosts().len();
        (0..hosts).flat_map(move |h| {
            (0..self.cluster.pods_per_host()).map(move |j| self.cluster.pod(h, j))
        })
    }

    /// Removes the kernel system's routes, devices and bridges.
    fn unmesh(&self) -> Result<()> {
        match self.system {
            s if s.is_kernel_vxlan() => kernel_vxlan::unmesh(&self.cluster.underlay),
            _ => direct::unmesh(&self.cluster.underlay),
        }
    }
}

impl Drop for Plumbing<'_> {
    fn drop(&mut self) {
        if self.nodes.is_empty() && !self.kernel {
            return;
        }
        // After a failure: remove the pods' interfaces directly (weftd may be the
        // thing that failed), then stop the daemons or remove the kernel's devices.
        for pod in self.pods() {
            if let Err(e) = topo::detach_pod(pod) {
                eprintln!("weft-perf: teardown: {e:#}");
            }
        }
        for node in std::mem::take(&mut self.nodes) {
            let pid = node.pid();
            drop(node);
            let _ = self.cluster.pidfile().remove(pid);
        }
        if self.kernel {
            if let Err(e) = self.unmesh() {
                eprintln!("weft-perf: teardown of {}: {e:#}", self.system);
            }
        }
    }
}

/// The container id a pod is attached under.
pub fn container_id(pod: &Pod) -> String {
    format!("weft-perf-{}", pod.ns.name())
}

/// The host address number of static pod `j` (2, 3, …).
fn static_pod_number(j: usize) -> Result<u8> {
    u8::try_from(j + 2)
        .ok()
        .filter(|n| *n < REFERENCE_RANGE_START)
        .with_context(|| format!("pod {j} does not fit below the CNI test's range"))
}

/// The IPv6 address of static pod `j` in a host's IPv6 subnet `subnet6` on a
/// dual-stack kernel system: the subnet's network address plus the pod's host number,
/// as its IPv4 address is ([`static_pod_number`]): `fd00:10:244:<n>::2` beside
/// `10.244.<n>.2`.
pub fn static_pod_ip6(subnet6: ipnet::Ipv6Net, j: usize) -> Result<Ipv6Addr> {
    let n = static_pod_number(j)?;
    Ok(Ipv6Addr::from(
        u128::from(subnet6.network()) + u128::from(n),
    ))
}

/// The weft network: weft-cni, asking the weftd at `socket`.
fn weft_network(tools: &Tools, socket: &Path) -> Result<Network> {
    let plugin_type = tools
        .weft_cni
        .file_name()
        .and_then(|n| n.to_str())
        .context("the weft-cni path has no file name")?;
    let plugin_dir = tools
        .weft_cni
        .parent()
        .context("the weft-cni path has no directory")?;
    Ok(Network {
        plugin_dir: plugin_dir.to_owned(),
        config: json!({
            "cniVersion": cni::CNI_VERSION,
            "name": "weft-perf",
            "type": plugin_type,
            "socket": socket,
            "timeout": WEFT_CNI_TIMEOUT_S,
        }),
    })
}

/// The flannel-style reference network of `host`: the `bridge` plugin on `cni0` as the
/// gateway, `host-local` addresses from the host's subnet (above the static pods),
/// pods at `mtu`, no masquerading; with `dual`, an IPv6 address from the host's IPv6
/// subnet too (above the static pods likewise). Its state lives under `dir`.
fn reference_network(tools: &Tools, host: &Host, mtu: u32, dir: &Path, dual: bool) -> Network {
    let [a, b, c, _] = host.pod_subnet.network().octets();
    let mut ranges = vec![json!([{
        "subnet": host.pod_subnet.to_string(),
        "rangeStart": Ipv4Addr::new(a, b, c, REFERENCE_RANGE_START).to_string(),
        "rangeEnd": Ipv4Addr::new(a, b, c, 254).to_string(),
        "gateway": host.gateway.to_string(),
    }])];
    let mut routes = vec![json!({ "dst": "0.0.0.0/0" })];
    if dual {
        let subnet6 = pod_subnet6(host);
        let nth = |n: u128| Ipv6Addr::from(u128::from(subnet6.network()) + n).to_string();
        ranges.push(json!([{
            "subnet": subnet6.to_string(),
            "rangeStart": nth(u128::from(REFERENCE_RANGE_START)),
            "rangeEnd": nth(0xffff),
            "gateway": nth(1),
        }]));
        routes.push(json!({ "dst": "::/0" }));
    }
    Network {
        plugin_dir: tools.reference_cni.clone(),
        config: json!({
            "cniVersion": cni::CNI_VERSION,
            "name": "weft-perf-bridge",
            "type": "bridge",
            "bridge": topo::POD_BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": false,
            "mtu": mtu,
            "ipam": {
                "type": "host-local",
                "dataDir": dir.join(format!("host-local-{}", host.index)),
                "ranges": ranges,
                "routes": routes,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_pods_ipv6_addresses_mirror_their_ipv4_ones() {
        let subnet6: ipnet::Ipv6Net = "fd00:10:244:1::/64".parse().unwrap();
        let ip = |j| static_pod_ip6(subnet6, j).unwrap().to_string();
        assert_eq!(ip(0), "fd00:10:244:1::2");
        assert_eq!(ip(1), "fd00:10:244:1::3");
        assert_eq!(ip(99), "fd00:10:244:1::65");
        // Pods whose IPv4 number would reach the CNI test's range are refused alike.
        assert!(static_pod_ip6(subnet6, usize::from(REFERENCE_RANGE_START) - 2).is_err());
    }
}
