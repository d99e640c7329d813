//! The benchmark harness: one cluster of hosts and pods in network namespaces, every
//! system plumbed onto it in turn (rounds interleave the systems: A B C D, A B C D…),
//! the tests run on each, and a [`Report`] of medians.
//!
//! The systems share the hosts and the pods. Between systems only the plumbing changes:
//! weftd and the pods' interfaces (attached by weft-cni) or the kernel's devices and the
//! pods' veths; nothing else in the namespaces is touched.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

mod cluster;
mod measure;
pub mod netpol_load;
pub mod plot;
pub mod report;
pub mod scrape;
pub mod svc;

pub use cluster::{Cluster, Plumbing};
pub use report::{Report, ResultRow};

use crate::topo::{self, Offload, MAX_HOSTS};

/// A pod network under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum System {
    /// weftd with VXLAN tunnels.
    WeftVxlan,
    /// weftd with sleeve tunnels.
    WeftSleeve,
    /// The Linux VXLAN device, set up as flannel's vxlan backend does.
    KernelVxlan,
    /// Plain routes over the underlay, no overlay (flannel's host-gw): the limit.
    Direct,
    /// weftd in direct mode: the same host routes, weftd installing them, and pods'
    /// frames through weft's switch and the host port.
    WeftDirect,
    /// `weft-vxlan` with the other weftd build (`--weftd-alt`), to compare two builds
    /// in one run.
    WeftVxlanAlt,
    /// `weft-sleeve` with the other weftd build.
    WeftSleeveAlt,
    /// `weft-vxlan` with host 1's pods selected by 100 NetworkPolicies of 1,000
    /// rules in all ([`netpol_load`]).
    WeftVxlanPolicy,
    /// `weft-sleeve` likewise.
    WeftSleevePolicy,
    /// `weft-vxlan-policy` with the other weftd build, or its flags
    /// (`--alt-flags`): the flow log's A/B, whose verdicts need policy.
    WeftVxlanPolicyAlt,
    /// `weft-vxlan` with every pod on an AF_XDP port (a veth served by AF_XDP
    /// sockets) instead of a TAP.
    WeftAfxdpVxlan,
    /// `weft-sleeve` likewise.
    WeftAfxdpSleeve,
    /// `weft-sleeve` with `encryption = "required"`: every datagram between the
    /// nodes sealed (pods get the sleeve's MTU less the seal's 28 bytes).
    WeftSleeveEnc,
    /// `weft-sleeve-enc` with the other weftd build.
    WeftSleeveEncAlt,
    /// `weft-direct` with the other weftd build.
    WeftDirectAlt,
    /// `kernel-vxlan` with kube-proxy's iptables rules for the `svc*` tests' Services on
    /// every node.
    KernelVxlanIptables,
    /// `kernel-vxlan` with kube-proxy's nftables rules (verdict maps) likewise.
    KernelVxlanNftables,
    /// `weft-vxlan` with kube-proxy's iptables rules on every node: ClusterIP traffic
    /// goes through the host, as under kube-proxy in a cluster.
    WeftIptables,
    /// `weft-vxlan` with `services = "switch"`: the switch translates ClusterIPs, the
    /// Services given to weftd as manifests in its policy directory.
    WeftSwitch,
}

/// What translates ClusterIPs on a system's nodes, for the `svc*` tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceProxy {
    /// kube-proxy's iptables mode (`iptables-restore`).
    Iptables,
    /// kube-proxy's nftables mode (`nft -f`).
    Nftables,
    /// weftd itself (`services = "switch"`).
    Switch,
}

impl System {
    /// Every system, in report order.
    pub const ALL: [System; 19] = [
        System::WeftVxlan,
        System::WeftSleeve,
        System::WeftSleeveEnc,
        System::WeftDirect,
        System::WeftAfxdpVxlan,
        System::WeftAfxdpSleeve,
        System::WeftVxlanAlt,
        System::WeftSleeveAlt,
        System::WeftSleeveEncAlt,
        System::WeftDirectAlt,
        System::WeftVxlanPolicy,
        System::WeftSleevePolicy,
        System::WeftVxlanPolicyAlt,
        System::KernelVxlan,
        System::Direct,
        System::KernelVxlanIptables,
        System::KernelVxlanNftables,
        System::WeftIptables,
        System::WeftSwitch,
    ];

    /// The systems of the `svc*` tests, baseline first.
    pub const SERVICES: [System; 4] = [
        System::KernelVxlanIptables,
        System::KernelVxlanNftables,
        System::WeftIptables,
        System::WeftSwitch,
    ];

    /// The systems a run compares unless told otherwise: all but the other build's.
    pub const DEFAULT: [System; 5] = [
        System::WeftVxlan,
        System::WeftSleeve,
        System::WeftDirect,
        System::KernelVxlan,
        System::Direct,
    ];

    /// The system the report's ratios are relative to (but see [`Test::baseline`]).
    pub const BASELINE: System = System::KernelVxlan;

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            System::WeftVxlan => "weft-vxlan",
            System::WeftSleeve => "weft-sleeve",
            System::KernelVxlan => "kernel-vxlan",
            System::Direct => "direct",
            System::WeftDirect => "weft-direct",
            System::WeftVxlanAlt => "weft-vxlan-alt",
            System::WeftSleeveAlt => "weft-sleeve-alt",
            System::WeftVxlanPolicy => "weft-vxlan-policy",
            System::WeftSleevePolicy => "weft-sleeve-policy",
            System::WeftVxlanPolicyAlt => "weft-vxlan-policy-alt",
            System::WeftAfxdpVxlan => "weft-afxdp-vxlan",
            System::WeftAfxdpSleeve => "weft-afxdp-sleeve",
            System::WeftSleeveEnc => "weft-sleeve-enc",
            System::WeftSleeveEncAlt => "weft-sleeve-enc-alt",
            System::WeftDirectAlt => "weft-direct-alt",
            System::KernelVxlanIptables => "kernel-vxlan+iptables",
            System::KernelVxlanNftables => "kernel-vxlan+nftables",
            System::WeftIptables => "weft+iptables",
            System::WeftSwitch => "weft+switch",
        }
    }

    /// weftd's `--mode` for the weft systems.
    pub fn weft_mode(self) -> Option<&'static str> {
        match self {
            System::WeftVxlan
            | System::WeftVxlanAlt
            | System::WeftVxlanPolicy
            | System::WeftVxlanPolicyAlt
            | System::WeftAfxdpVxlan
            | System::WeftIptables
            | System::WeftSwitch => Some("vxlan"),
            System::WeftSleeve
            | System::WeftSleeveAlt
            | System::WeftSleevePolicy
            | System::WeftAfxdpSleeve
            | System::WeftSleeveEnc
            | System::WeftSleeveEncAlt => Some("sleeve"),
            System::WeftDirect | System::WeftDirectAlt => Some("direct"),
            System::KernelVxlan
            | System::KernelVxlanIptables
            | System::KernelVxlanNftables
            | System::Direct => None,
        }
    }

    /// Whether the system's datapath is the kernel's VXLAN device.
    pub fn is_kernel_vxlan(self) -> bool {
        matches!(
            self,
            System::KernelVxlan | System::KernelVxlanIptables | System::KernelVxlanNftables
        )
    }

    /// What translates ClusterIPs for the `svc*` tests, if the system has Services.
    pub fn service_proxy(self) -> Option<ServiceProxy> {
        match self {
            System::KernelVxlanIptables | System::WeftIptables => Some(ServiceProxy::Iptables),
            System::KernelVxlanNftables => Some(ServiceProxy::Nftables),
            System::WeftSwitch => Some(ServiceProxy::Switch),
            _ => None,
        }
    }

    /// Whether the system runs with NetworkPolicies on host 1's pods.
    pub fn has_policy(self) -> bool {
        matches!(
            self,
            System::WeftVxlanPolicy | System::WeftSleevePolicy | System::WeftVxlanPolicyAlt
        )
    }

    /// Whether the system's pods are on AF_XDP ports.
    pub fn is_afxdp(self) -> bool {
        matches!(self, System::WeftAfxdpVxlan | System::WeftAfxdpSleeve)
    }

    /// Whether the system seals the sleeve.
    pub fn is_encrypted(self) -> bool {
        matches!(self, System::WeftSleeveEnc | System::WeftSleeveEncAlt)
    }

    /// Whether the system runs the other weftd build (`--weftd-alt`).
    pub fn is_alt(self) -> bool {
        matches!(
            self,
            System::WeftVxlanAlt
                | System::WeftSleeveAlt
                | System::WeftSleeveEncAlt
                | System::WeftDirectAlt
                | System::WeftVxlanPolicyAlt
        )
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for System {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<System> {
        System::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .with_context(|| {
                format!(
                    "unknown system {s:?}; the systems are {}",
                    names(&System::ALL)
                )
            })
    }
}

/// A measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Test {
    /// TCP throughput pod→pod across hosts, one stream.
    Tcp1,
    /// TCP throughput pod→pod across hosts, four streams.
    Tcp4,
    /// `tcp1` with iperf3 as the generator: a cross-check of weft-perf's own.
    Tcp1Iperf3,
    /// `tcp4` with iperf3 as the generator.
    Tcp4Iperf3,
    /// UDP, 64-byte payloads, as fast as the sender goes: received packets/s and loss.
    Udp64,
    /// 1-byte TCP ping-pong round-trip latency, with the CPUs kept out of idle sleep for
    /// every system ([`RrIdle`]), and the cross-CPU wake-up cost measured beside it.
    Rr,
    /// TCP connections pod→pod across hosts, one after another, each with one byte
    /// each way (netperf's TCP_CRR): the rate and each connection's time, with the
    /// CPUs kept out of idle sleep as for `rr`. New per-connection state shows here.
    Crr,
    /// CNI ADD and DEL latency.
    Cni,
    /// CPU seconds per GB carried, measured around the `tcp1` transfer: `weftd` counts
    /// the weft daemons; `total` adds the traffic generator's threads (the kernel's
    /// TCP/IP work happens mostly in their system calls) and the ksoftirqd threads (the
    /// rest of it), so it compares all systems.
    Cpu,
    /// weftd's footprint with many pods attached (host 0's daemon, `--mem-pods` pods
    /// attached through weft-cni): its resident memory, and its CPU use while no traffic
    /// flows, measured just after a short burst of traffic (so the workers' adaptive
    /// polling window has grown), as percent of one core.
    Mem,
    /// Services: 10 defined, each with a ClusterIP and two endpoints on host 1's
    /// pods; connections and round trips from host 0's pods spread over every
    /// ClusterIP ([`svc`]). Only on the systems with a [`ServiceProxy`].
    Svc10,
    /// `svc10` with 1,000 Services.
    Svc1k,
    /// `svc10` with 10,000 Services.
    Svc10k,
}

impl Test {
    /// Every test, in report order.
    pub const ALL: [Test; 13] = [
        Test::Tcp1,
        Test::Tcp4,
        Test::Tcp1Iperf3,
        Test::Tcp4Iperf3,
        Test::Udp64,
        Test::Rr,
        Test::Crr,
        Test::Cni,
        Test::Cpu,
        Test::Mem,
        Test::Svc10,
        Test::Svc1k,
        Test::Svc10k,
    ];

    /// The tests a run does unless told otherwise: all but the iperf3 cross-checks and
    /// the Services tests (which need their own systems).
    pub const DEFAULT: [Test; 8] = [
        Test::Tcp1,
        Test::Tcp4,
        Test::Udp64,
        Test::Rr,
        Test::Crr,
        Test::Cni,
        Test::Cpu,
        Test::Mem,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Test::Tcp1 => "tcp1",
            Test::Tcp4 => "tcp4",
            Test::Tcp1Iperf3 => "tcp1-iperf3",
            Test::Tcp4Iperf3 => "tcp4-iperf3",
            Test::Udp64 => "udp64",
            Test::Rr => "rr",
            Test::Crr => "crr",
            Test::Cni => "cni",
            Test::Cpu => "cpu",
            Test::Mem => "mem",
            Test::Svc10 => "svc10",
            Test::Svc1k => "svc1k",
            Test::Svc10k => "svc10k",
        }
    }

    /// For a Services test, how many Services it defines.
    pub fn services(self) -> Option<usize> {
        match self {
            Test::Svc10 => Some(10),
            Test::Svc1k => Some(1_000),
            Test::Svc10k => Some(10_000),
            _ => None,
        }
    }

    /// The system the test's ratios are relative to: for the Services tests, kube-proxy's
    /// iptables rules on the kernel's VXLAN (what most clusters run), otherwise
    /// [`System::BASELINE`].
    pub fn baseline(self) -> System {
        match self.services() {
            Some(_) => System::KernelVxlanIptables,
            None => System::BASELINE,
        }
    }

    /// For an iperf3 test, the weft-perf test it cross-checks.
    pub fn cross_checks(self) -> Option<Test> {
        match self {
            Test::Tcp1Iperf3 => Some(Test::Tcp1),
            Test::Tcp4Iperf3 => Some(Test::Tcp4),
            _ => None,
        }
    }

    /// The metrics the test reports.
    pub fn metrics(self) -> &'static [Metric] {
        use Better::{Higher, Lower};
        const fn m(name: &'static str, unit: &'static str, better: Better) -> Metric {
            Metric { name, unit, better }
        }
        const TCP: &[Metric] = &[m("throughput", "Gbit/s", Higher)];
        const UDP: &[Metric] = &[m("received", "Mpps", Higher), m("loss", "%", Lower)];
        const RR: &[Metric] = &[
            m("p50", "µs", Lower),
            m("p99", "µs", Lower),
            m("p99.9", "µs", Lower),
            m("wake p50", "µs", Lower),
        ];
        const CRR: &[Metric] = &[
            m("rate", "conn/s", Higher),
            m("p50", "µs", Lower),
            m("p99", "µs", Lower),
        ];
        const CNI: &[Metric] = &[
            m("ADD p50", "ms", Lower),
            m("ADD p99", "ms", Lower),
            m("DEL p50", "ms", Lower),
            m("DEL p99", "ms", Lower),
        ];
        const CPU: &[Metric] = &[m("weftd", "CPU s/GB", Lower), m("total", "CPU s/GB", Lower)];
        const MEM: &[Metric] = &[m("rss", "MiB", Lower), m("idle cpu", "%", Lower)];
        const SVC: &[Metric] = &[
            m("rate", "conn/s", Higher),
            m("rr p50", "µs", Lower),
            m("cpu", "µs/conn", Lower),
            m("failed", "conn", Lower),
            m("load", "s", Lower),
        ];
        match self {
            Test::Tcp1 | Test::Tcp4 | Test::Tcp1Iperf3 | Test::Tcp4Iperf3 => TCP,
            Test::Udp64 => UDP,
            Test::Rr => RR,
            Test::Crr => CRR,
            Test::Cni => CNI,
            Test::Cpu => CPU,
            Test::Mem => MEM,
            Test::Svc10 | Test::Svc1k | Test::Svc10k => SVC,
        }
    }

    /// Why `metric` of this test does not apply to `system`, if it does not.
    pub fn not_applicable(self, system: System, metric: &str) -> Option<&'static str> {
        if self.services().is_some() && system.service_proxy().is_none() {
            return Some(
                "no Services on this system: the svc tests run on kernel-vxlan+iptables, \
                 kernel-vxlan+nftables, weft+iptables and weft+switch",
            );
        }
        match (self, system) {
            (Test::Cpu, s) if s.weft_mode().is_none() && metric == "weftd" => {
                Some("no weft process; `total` compares every system")
            }
            (Test::Mem, s) if s.weft_mode().is_none() => {
                Some("no weft process; the kernel's datapath has no process of its own to measure")
            }
            (Test::Cni, System::Direct) => {
                Some("the same bridge + host-local plugins as kernel-vxlan")
            }
            _ => None,
        }
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Test {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Test> {
        Test::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .with_context(|| format!("unknown test {s:?}; the tests are {}", names(&Test::ALL)))
    }
}

/// What idle CPUs do while `rr` runs.
///
/// A round trip on an idle machine costs mostly wake-ups, and a wake-up costs what the
/// woken CPU's idle state costs to leave: on this kind of VM a halted vCPU takes about
/// 100–200 µs to wake, a polling one about 15 µs. weftd's adaptive polling keeps the
/// vCPUs awake while it carries traffic, which speeds up every wake-up on the machine,
/// the generator's and the kernel's too, so without a rule for idle CPUs `rr` would
/// compare sleep depths, not datapaths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RrIdle {
    /// For every system, idle CPUs poll instead of halting: weft-perf holds a PM QoS
    /// CPU latency request of 0 (`/dev/cpu_dma_latency`), under which the kernel's
    /// cpuidle governors pick the polling state. The default.
    Poll,
    /// Idle CPUs do what the machine's cpuidle governor chooses.
    Sleep,
}

impl RrIdle {
    /// `poll` or `sleep`.
    pub fn name(self) -> &'static str {
        match self {
            RrIdle::Poll => "poll",
            RrIdle::Sleep => "sleep",
        }
    }
}

impl fmt::Display for RrIdle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RrIdle {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<RrIdle> {
        match s {
            "poll" => Ok(RrIdle::Poll),
            "sleep" => Ok(RrIdle::Sleep),
            _ => bail!("--rr-idle {s:?} is neither \"poll\" nor \"sleep\""),
        }
    }
}

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Larger is better (throughput).
    Higher,
    /// Smaller is better (latency, loss, CPU).
    Lower,
}

/// One number a test reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Its name within the test (`throughput`, `p99`…).
    pub name: &'static str,
    /// Its unit.
    pub unit: &'static str,
    /// Which way it improves.
    pub better: Better,
}

fn names<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a comma-separated list of systems or tests, keeping the given order.
pub fn parse_list<T: FromStr<Err = anyhow::Error> + PartialEq>(list: &str) -> Result<Vec<T>> {
    let mut out: Vec<T> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let x = item.parse()?;
        if !out.contains(&x) {
            out.push(x);
        }
    }
    ensure!(!out.is_empty(), "the list {list:?} names nothing");
    Ok(out)
}

/// Most pods per host (their addresses must leave room for the CNI test's pods).
pub const MAX_PODS_PER_HOST: usize = 100;

/// Most CNI test pods on one host in one round (the reference plugins' range holds 127).
pub const MAX_CNI_PODS_PER_HOST_ROUND: usize = 120;

/// Addresses weftd hands out in a host's /24 pod subnet (`.2` to `.254`): the `mem`
/// test's pods and the host's own pods must fit in them together.
pub const POD_ADDRESSES_PER_HOST: usize = 253;

/// What a run measures and on what.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Systems, in the order each round visits them.
    pub systems: Vec<System>,
    /// Tests, in the order each system runs them.
    pub tests: Vec<Test>,
    /// How long each traffic test runs.
    pub duration: Duration,
    /// Rounds; each visits every system once.
    pub repeat: usize,
    /// Hosts.
    pub hosts: usize,
    /// Pods per host.
    pub pods: usize,
    /// Underlay MTU; pods get 50 less.
    pub mtu: u32,
    /// CNI ADD/DEL pairs per system over the whole run (split across rounds).
    pub cni_pods: usize,
    /// Pods the `mem` test attaches to host 0's weftd at once, in every round.
    pub mem_pods: usize,
    /// weftd worker threads (`None`: weftd's default, one per core).
    pub weft_workers: Option<usize>,
    /// The hosts' underlay transmit offloads (on, as real NICs have them).
    pub underlay_offload: Offload,
    /// What idle CPUs do during `rr`.
    pub rr_idle: RrIdle,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            systems: System::DEFAULT.to_vec(),
            tests: Test::DEFAULT.to_vec(),
            duration: Duration::from_secs(2),
            repeat: 3,
            hosts: 2,
            pods: 2,
            mtu: topo::DEFAULT_MTU,
            cni_pods: 200,
            mem_pods: 100,
            weft_workers: None,
            underlay_offload: Offload::On,
            rr_idle: RrIdle::Poll,
        }
    }
}

impl Settings {
    /// Fails on settings that cannot be run, saying which and why.
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.systems.is_empty(), "no system to run");
        ensure!(!self.tests.is_empty(), "no test to run");
        ensure!(self.repeat >= 1, "--repeat must be at least 1");
        ensure!(
            (2..=MAX_HOSTS).contains(&self.hosts),
            "--hosts must be 2 to {MAX_HOSTS}: the tests cross hosts"
        );
        ensure!(
            (1..=MAX_PODS_PER_HOST).contains(&self.pods),
            "--pods must be 1 to {MAX_PODS_PER_HOST}"
        );
        ensure!(
            (1280..=65535).contains(&self.mtu),
            "--mtu must be 1280 to 65535 (pods get 50 less)"
        );
        ensure!(
            self.duration >= Duration::from_millis(100)
                && self.duration <= Duration::from_secs(3600),
            "--duration must be 0.1 to 3600 seconds"
        );
        if self.tests.contains(&Test::Cni) {
            ensure!(self.cni_pods >= 1, "--cni-pods must be at least 1");
            let per_host = self.cni_pods.div_ceil(self.repeat).div_ceil(self.hosts);
            ensure!(
                per_host <= MAX_CNI_PODS_PER_HOST_ROUND,
                "--cni-pods {} puts {per_host} pods on a host in one round; at most \
                 {MAX_CNI_PODS_PER_HOST_ROUND} fit (raise --repeat or --hosts)",
                self.cni_pods
            );
        }
        if self.tests.contains(&Test::Mem) {
            ensure!(self.mem_pods >= 1, "--mem-pods must be at least 1");
            ensure!(
                self.pods + self.mem_pods <= POD_ADDRESSES_PER_HOST,
                "--mem-pods {} and --pods {} need {} addresses on host 0; its pod subnet \
                 has {POD_ADDRESSES_PER_HOST}",
                self.mem_pods,
                self.pods,
                self.pods + self.mem_pods
            );
        }
        if let Some(w) = self.weft_workers {
            ensure!((1..=64).contains(&w), "--weft-workers must be 1 to 64");
        }
        Ok(())
    }

    /// The number of CNI test pods in round `round` (the total split as evenly as can be).
    pub fn cni_pods_in_round(&self, round: usize) -> usize {
        self.cni_pods / self.repeat + usize::from(round < self.cni_pods % self.repeat)
    }
}

/// The programs a run uses.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The weftd binary.
    pub weftd: PathBuf,
    /// Another weftd build, for the `*-alt` systems.
    pub weftd_alt: Option<PathBuf>,
    /// Further flags for the `*-alt` systems' weftd (`--alt-flags`).
    pub alt_flags: Vec<String>,
    /// Serve `/metrics` on the `*-alt` systems' weftd and scrape it this often
    /// (`--alt-scrape-ms`).
    pub alt_scrape: Option<Duration>,
    /// The weft-cni plugin binary (its file name is the config's `type`).
    pub weft_cni: PathBuf,
    /// The directory of the reference `bridge` and `host-local` plugins.
    pub reference_cni: PathBuf,
}

impl Tools {
    /// Fails unless the binaries the settings need exist, saying how to get them.
    pub fn check(&self, settings: &Settings) -> Result<()> {
        let weft = settings.systems.iter().any(|s| s.weft_mode().is_some());
        if weft {
            for (what, path, flag) in [
                ("weftd", &self.weftd, "--weftd"),
                ("weft-cni", &self.weft_cni, "--weft-cni"),
            ] {
                if !path.is_file() {
                    bail!(
                        "{what} not found at {}: build it with `cargo build --release --bins` \
                         or pass {flag}",
                        path.display()
                    );
                }
            }
        }
        if settings.systems.iter().any(|s| s.is_alt()) {
            // Without another build, the alt systems run this one with other
            // settings (--alt-flags, --alt-scrape-ms); with neither, they would be
            // the same system twice.
            let other_settings = !self.alt_flags.is_empty() || self.alt_scrape.is_some();
            match &self.weftd_alt {
                Some(alt) if alt.is_file() => {}
                Some(alt) => bail!("the other weftd build is not at {}", alt.display()),
                None if other_settings => {}
                None => bail!(
                    "the weft-*-alt systems run the weftd given by --weftd-alt, or this one \
                     with --alt-flags or --alt-scrape-ms"
                ),
            }
        }
        if settings.tests.iter().any(|t| t.cross_checks().is_some()) {
            crate::iperf::check_installed()?;
        }
        let kernel_vxlan = settings.systems.iter().any(|s| s.is_kernel_vxlan());
        if settings.tests.contains(&Test::Cni) && kernel_vxlan {
            for plugin in ["bridge", "host-local"] {
                let path = self.reference_cni.join(plugin);
                if !path.is_file() {
                    bail!(
                        "the reference CNI plugin {} is missing: install Debian's \
                         containernetworking-plugins (deploy/setup.sh does), or leave out \
                         the cni test",
                        path.display()
                    );
                }
            }
        }
        Ok(())
    }
}

/// What the harness tells its caller while it runs.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// The run has this many steps (a system set up, or a test run, in one round).
    Steps(u64),
    /// A step starts.
    Start {
        /// The round, 0-based.
        round: usize,
        /// The system.
        system: System,
        /// What is being done.
        what: &'a str,
    },
    /// A step ended.
    Done,
    /// A line worth showing (a measurement's result).
    Note(String),
}

/// Runs `settings` on a fresh cluster and returns the report; `progress` hears about
/// each step. Everything built is torn down before it returns, also on failure and on
/// interruption ([`crate::stop`]).
pub fn run(
    settings: &Settings,
    tools: &Tools,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Report> {
    settings.validate()?;
    tools.check(settings)?;
    let cluster = Cluster::build(settings)?;
    run_on(&cluster, settings, tools, progress)
}

/// Like [`run`], on a cluster the caller built with [`Cluster::build`].
pub fn run_on(
    cluster: &Cluster,
    settings: &Settings,
    tools: &Tools,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Report> {
    let traffic: Vec<Test> = settings
        .tests
        .iter()
        .copied()
        .filter(|t| !matches!(t, Test::Cni | Test::Cpu | Test::Mem))
        .collect();
    let cni = settings.tests.contains(&Test::Cni);
    let mem = settings.tests.contains(&Test::Mem);
    let cpu_alone = settings.tests.contains(&Test::Cpu) && !traffic.contains(&Test::Tcp1);
    let per_system =
        1 + traffic.len() + usize::from(cni) + usize::from(mem) + usize::from(cpu_alone);
    progress(Event::Steps(
        (settings.repeat * settings.systems.len() * per_system) as u64,
    ));
    let mut data = measure::Data::default();
    for round in 0..settings.repeat {
        for &system in &settings.systems {
            crate::stop::check()?;
            progress(Event::Start {
                round,
                system,
                what: "setting up",
            });
            let plumbing = Plumbing::up(cluster, system, tools, settings)
                .with_context(|| format!("setting up {system} (round {})", round + 1))?;
            progress(Event::Done);
            let mut steps: Vec<Test> = traffic.clone();
            if cpu_alone {
                steps.push(Test::Cpu);
            }
            if cni {
                steps.push(Test::Cni);
            }
            if mem {
                steps.push(Test::Mem);
            }
            for test in steps {
                crate::stop::check()?;
                progress(Event::Start {
                    round,
                    system,
                    what: test.name(),
                });
                let line = measure::run_test(&mut data, &plumbing, test, round, settings)
                    .with_context(|| format!("{system}: {test} (round {})", round + 1))?;
                progress(Event::Note(format!(
                    "round {} {system:<13} {test:<6} {line}",
                    round + 1
                )));
                progress(Event::Done);
            }
            plumbing
                .down()
                .with_context(|| format!("tearing down {system} (round {})", round + 1))?;
        }
    }
    Ok(Report::new(settings, data.rows(settings)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_is_a_default_test_with_two_metrics() {
        let settings = Settings::default();
        assert!(settings.tests.contains(&Test::Mem));
        assert_eq!(settings.mem_pods, 100);
        assert_eq!("mem".parse::<Test>().unwrap(), Test::Mem);
        assert_eq!(
            parse_list::<Test>("cni, mem,mem").unwrap(),
            [Test::Cni, Test::Mem]
        );
        let names: Vec<_> = Test::Mem.metrics().iter().map(|m| m.name).collect();
        assert_eq!(names, ["rss", "idle cpu"]);
        assert!(Test::Mem
            .metrics()
            .iter()
            .all(|m| m.better == Better::Lower));
        for system in System::ALL {
            let weft = system.weft_mode().is_some();
            for m in Test::Mem.metrics() {
                assert_eq!(Test::Mem.not_applicable(system, m.name).is_none(), weft);
            }
        }
    }

    #[test]
    fn the_other_builds_systems_are_named_off_by_default_and_need_their_binary() {
        assert_eq!(
            parse_list::<System>(
                "weft-vxlan-alt,weft-sleeve-alt,weft-sleeve-enc-alt,weft-direct-alt"
            )
            .unwrap(),
            [
                System::WeftVxlanAlt,
                System::WeftSleeveAlt,
                System::WeftSleeveEncAlt,
                System::WeftDirectAlt
            ]
        );
        assert_eq!(System::WeftDirectAlt.weft_mode(), Some("direct"));
        assert!(System::WeftSleeveEncAlt.is_encrypted());
        assert!(System::DEFAULT.iter().all(|s| !s.is_alt()));
        assert_eq!(Settings::default().systems, System::DEFAULT);
        assert_eq!(System::WeftSleeveAlt.weft_mode(), Some("sleeve"));
        let settings = Settings {
            systems: vec![System::WeftVxlanAlt],
            tests: vec![Test::Rr],
            ..Settings::default()
        };
        let here = std::env::current_exe().unwrap();
        let tools = Tools {
            weftd: here.clone(),
            weftd_alt: None,
            alt_flags: Vec::new(),
            alt_scrape: None,
            weft_cni: here.clone(),
            reference_cni: here.clone(),
        };
        let e = tools.check(&settings).unwrap_err().to_string();
        assert!(e.contains("--weftd-alt"), "{e}");
        let missing = Tools {
            weftd_alt: Some("/nonexistent/weftd".into()),
            ..tools.clone()
        };
        assert!(missing.check(&settings).is_err());
        let flags = Tools {
            alt_flags: vec!["--flow-log".into(), "true".into()],
            ..tools.clone()
        };
        flags.check(&settings).unwrap();
        let scraped = Tools {
            alt_scrape: Some(Duration::from_secs(1)),
            ..tools.clone()
        };
        scraped.check(&settings).unwrap();
        let given = Tools {
            weftd_alt: Some(here),
            ..tools
        };
        given.check(&settings).unwrap();
    }

    #[test]
    fn mem_pods_must_fit_in_host_0s_subnet() {
        let with = |pods: usize, mem_pods: usize, tests: Vec<Test>| Settings {
            pods,
            mem_pods,
            tests,
            ..Settings::default()
        };
        assert!(with(2, 100, vec![Test::Mem]).validate().is_ok());
        assert!(with(100, 153, vec![Test::Mem]).validate().is_ok());
        let e = with(100, 154, vec![Test::Mem]).validate().unwrap_err();
        assert!(e.to_string().contains("254 addresses"), "{e}");
        assert!(with(2, 0, vec![Test::Mem]).validate().is_err());
        // Without the mem test, --mem-pods does not matter.
        assert!(with(2, 0, vec![Test::Rr]).validate().is_ok());
        assert!(Settings::default().validate().is_ok());
    }
}
