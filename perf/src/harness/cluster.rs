//! The cluster every system runs on, and the per-system plumbing put onto it and taken
//! off again between systems.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::scrape::{Scraper, METRICS_PORT};
use super::{netpol_load, svc, Settings, System, Tools};
use crate::cni::{self, Network, Verb};
use crate::netns::wait_until;
use crate::pidfile::{PidFile, RUN_DIR};
use crate::topo::{self, direct, kernel_vxlan, Host, Pod, Underlay};
use crate::weft::{node_key, peers_toml, write_atomic, PeerNode, Scratch, WeftNode, WeftOptions};

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
    /// its own); then waits until pods reach each other across hosts.
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
        for (h, host) in hosts.iter().enumerate() {
            let mut ips = Vec::new();
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
            }
            self.ips.push(ips);
        }
        if self.system.has_policy() {
            self.write_policy()?;
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
                )),
                _ => None,
            });
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

    /// Waits until pod `j` of host 0 reaches pod `j` of every other host.
    fn wait_reachable(&self) -> Result<()> {
        for h in 1..self.ips.len() {
            for j in 0..self.cluster.pods_per_host() {
                let from = self.cluster.pod(0, j);
                let to = self.ips[h][j];
                let mut last = None;
                let reached = wait_until(REACH_TIMEOUT, "a pod to reach another host", || {
                    let r =
                        from.ns
                            .run(&["ping", "-n", "-q", "-c", "1", "-W", "1", &to.to_string()]);
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
            }
        }
        Ok(())
    }

    /// The system.
    pub fn system(&self) -> System {
        self.system
    }

    /// The cluster it is plumbed onto.
    pub fn cluster(&self) -> &'c Cluster {
        self.cluster
    }

    /// The address of pod `j` of host `h`.
    pub fn ip(&self, h: usize, j: usize) -> Ipv4Addr {
        self.ips[h][j]
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
/// pods at `mtu`, no masquerading. Its state lives under `dir`.
fn reference_network(tools: &Tools, host: &Host, mtu: u32, dir: &Path) -> Network {
    let [a, b, c, _] = host.pod_subnet.network().octets();
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
                "ranges": [[{
                    "subnet": host.pod_subnet.to_string(),
                    "rangeStart": Ipv4Addr::new(a, b, c, REFERENCE_RANGE_START).to_string(),
                    "rangeEnd": Ipv4Addr::new(a, b, c, 254).to_string(),
                    "gateway": host.gateway.to_string(),
                }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
            },
        }),
    }
}
