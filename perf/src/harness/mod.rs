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

    /// Whether the system carries IPv6 between pods of different hosts, so that the
    /// `*-v6` tests can run on it: weft's VXLAN and sleeve (sealed or not, either
    /// build, TAP or AF_XDP pod ports, with NetworkPolicy or without) and the
    /// kernel's VXLAN. Not direct routing (weft's or the kernel's), or the Services
    /// systems (their kube-proxy rules and weft's Services are IPv4 only).
    pub fn carries_ipv6(self) -> bool {
        matches!(
            self,
            System::WeftVxlan
                | System::WeftSleeve
                | System::WeftSleeveEnc
                | System::WeftVxlanAlt
                | System::WeftSleeveAlt
                | System::WeftSleeveEncAlt
                | System::WeftAfxdpVxlan
                | System::WeftAfxdpSleeve
                | System::WeftVxlanPolicy
                | System::WeftSleevePolicy
                | System::WeftVxlanPolicyAlt
                | System::KernelVxlan
        )
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
    /// `tcp1` between the pods' IPv6 addresses (a dual-stack cluster).
    Tcp1V6,
    /// TCP throughput pod→pod across hosts, four streams.
    Tcp4,
    /// `tcp4` between the pods' IPv6 addresses.
    Tcp4V6,
    /// `tcp1` with iperf3 as the generator: a cross-check of weft-perf's own.
    Tcp1Iperf3,
    /// `tcp4` with iperf3 as the generator.
    Tcp4Iperf3,
    /// UDP, 64-byte payloads, as fast as the sender goes: received packets/s and loss.
    Udp64,
    /// `udp64` between the pods' IPv6 addresses: the same 64-byte payloads, in
    /// packets 20 bytes longer (IPv6's header is 40 bytes, IPv4's 20).
    Udp64V6,
    /// 1-byte TCP ping-pong round-trip latency, with the CPUs kept out of idle sleep for
    /// every system ([`RrIdle`]), and the cross-CPU wake-up cost measured beside it.
    Rr,
    /// `rr` between the pods' IPv6 addresses.
    RrV6,
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
    /// Every test, in report order (each IPv6 variant after its IPv4 test).
    pub const ALL: [Test; 17] = [
        Test::Tcp1,
        Test::Tcp1V6,
        Test::Tcp4,
        Test::Tcp4V6,
        Test::Tcp1Iperf3,
        Test::Tcp4Iperf3,
        Test::Udp64,
        Test::Udp64V6,
        Test::Rr,
        Test::RrV6,
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

    /// The IPv6 variants of the traffic tests, the default tests of `--family 6`.
    pub const V6: [Test; 4] = [Test::Tcp1V6, Test::Tcp4V6, Test::Udp64V6, Test::RrV6];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Test::Tcp1 => "tcp1",
            Test::Tcp1V6 => "tcp1-v6",
            Test::Tcp4 => "tcp4",
            Test::Tcp4V6 => "tcp4-v6",
            Test::Tcp1Iperf3 => "tcp1-iperf3",
            Test::Tcp4Iperf3 => "tcp4-iperf3",
            Test::Udp64 => "udp64",
            Test::Udp64V6 => "udp64-v6",
            Test::Rr => "rr",
            Test::RrV6 => "rr-v6",
            Test::Crr => "crr",
            Test::Cni => "cni",
            Test::Cpu => "cpu",
            Test::Mem => "mem",
            Test::Svc10 => "svc10",
            Test::Svc1k => "svc1k",
            Test::Svc10k => "svc10k",
        }
    }

    /// The address family the test's traffic takes between the pods (IPv4 for the
    /// tests that carry none of their own).
    pub fn ip_family(self) -> IpFamily {
        match self {
            Test::Tcp1V6 | Test::Tcp4V6 | Test::Udp64V6 | Test::RrV6 => IpFamily::V6,
            _ => IpFamily::V4,
        }
    }

    /// The IPv4 test an IPv6 variant repeats over IPv6; any other test itself.
    pub fn v4_twin(self) -> Test {
        match self {
            Test::Tcp1V6 => Test::Tcp1,
            Test::Tcp4V6 => Test::Tcp4,
            Test::Udp64V6 => Test::Udp64,
            Test::RrV6 => Test::Rr,
            t => t,
        }
    }

    /// Whether the test sends traffic of one family between pods (the tests
    /// `--family` sorts: all but cni, cpu, mem and the Services tests).
    pub fn is_pod_traffic(self) -> bool {
        !matches!(self, Test::Cni | Test::Cpu | Test::Mem) && self.services().is_none()
    }

    /// Why the test is not run on `system` at all, if it is not: an IPv6 test on a
    /// system that does not carry IPv6 between hosts (see [`System::carries_ipv6`]).
    /// Its rows then say "not measured" rather than show another family's numbers.
    pub fn not_measured_on(self, system: System) -> Option<&'static str> {
        (self.ip_family() == IpFamily::V6 && !system.carries_ipv6())
            .then_some(NO_IPV6_BETWEEN_HOSTS)
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
            Test::Tcp1
            | Test::Tcp1V6
            | Test::Tcp4
            | Test::Tcp4V6
            | Test::Tcp1Iperf3
            | Test::Tcp4Iperf3 => TCP,
            Test::Udp64 | Test::Udp64V6 => UDP,
            Test::Rr | Test::RrV6 => RR,
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

/// Why an IPv6 test is not run on a system: the note its rows carry.
pub const NO_IPV6_BETWEEN_HOSTS: &str = "no IPv6 between hosts on this system (the *-v6 tests \
     run on weft-vxlan, weft-sleeve, weft-sleeve-enc, the AF_XDP systems, the -alt builds and \
     kernel-vxlan)";

/// The address family a test's traffic takes between the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    /// The pods' IPv4 addresses.
    V4,
    /// The pods' IPv6 addresses (the cluster runs dual stack).
    V6,
}

/// `--family`: which family's traffic tests a run does when `--tests` does not name
/// them, and which of them `--tests` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 only: [`Test::DEFAULT`], exactly the tests of a run before IPv6. The
    /// default.
    V4,
    /// IPv6 only: the IPv6 variants of the traffic tests, [`Test::V6`].
    V6,
    /// Both: every default test, each traffic test with an IPv6 variant followed by
    /// it, so that both families' ratios to their own kernel baseline come from one
    /// run.
    Dual,
}

impl Family {
    /// `4`, `6` or `dual`, as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "4",
            Family::V6 => "6",
            Family::Dual => "dual",
        }
    }

    /// The tests a run does unless `--tests` names them.
    pub fn default_tests(self) -> Vec<Test> {
        match self {
            Family::V4 => Test::DEFAULT.to_vec(),
            Family::V6 => Test::V6.to_vec(),
            Family::Dual => Test::DEFAULT
                .into_iter()
                .flat_map(|t| std::iter::once(t).chain(v6_variant(t)))
                .collect(),
        }
    }

    /// Fails if `tests` (named by `--tests`) hold pod traffic of a family this one
    /// leaves out, saying which test and what to do.
    pub fn check(self, tests: &[Test]) -> Result<()> {
        for &t in tests.iter().filter(|t| t.is_pod_traffic()) {
            match (self, t.ip_family()) {
                (Family::V4, IpFamily::V6) => bail!(
                    "--family 4 runs IPv4 traffic only, but --tests names the IPv6 test \
                     {t}: give --family 6 or dual, or leave --family out"
                ),
                (Family::V6, IpFamily::V4) => bail!(
                    "--family 6 runs IPv6 traffic only, but --tests names the IPv4 test \
                     {t} ({}): give --family dual, or leave --family out",
                    match v6_variant(t) {
                        Some(v6) => format!("its IPv6 variant is {v6}"),
                        None => "it has no IPv6 variant".into(),
                    }
                ),
                _ => {}
            }
        }
        Ok(())
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Family {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Family> {
        match s {
            "4" => Ok(Family::V4),
            "6" => Ok(Family::V6),
            "dual" => Ok(Family::Dual),
            _ => bail!("--family {s:?} is none of 4, 6 and dual"),
        }
    }
}

/// The IPv6 variant of the traffic test `t`, if it has one.
fn v6_variant(t: Test) -> Option<Test> {
    Test::V6.into_iter().find(|v| v.v4_twin() == t && *v != t)
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

/// The tests of a run: `list` (`--tests`), checked against `family` if that is
/// given, or else `family`'s default tests (IPv4's without a family).
pub fn select_tests(list: Option<&str>, family: Option<Family>) -> Result<Vec<Test>> {
    match list {
        Some(list) => {
            let tests = parse_list::<Test>(list)?;
            if let Some(family) = family {
                family.check(&tests)?;
            }
            Ok(tests)
        }
        None => Ok(family.unwrap_or(Family::V4).default_tests()),
    }
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
        self.validate_ipv6()
    }

    /// Fails on IPv6 tests that no system of the run could measure.
    fn validate_ipv6(&self) -> Result<()> {
        let v6: Vec<Test> = (self.tests.iter().copied())
            .filter(|t| t.ip_family() == IpFamily::V6)
            .collect();
        if v6.is_empty() || self.systems.iter().any(|s| s.carries_ipv6()) {
            return Ok(());
        }
        bail!(
            "the IPv6 tests ({}) need a system that carries IPv6 between hosts, and none \
             of {} does: add weft-vxlan, weft-sleeve, weft-sleeve-enc or kernel-vxlan",
            names(&v6),
            names(&self.systems)
        )
    }

    /// Whether the run has an IPv6 test, and so runs its IPv6-capable systems dual
    /// stack (every test of the run then sees dual-stack pods on them).
    pub fn dual_stack(&self) -> bool {
        self.tests.iter().any(|t| t.ip_family() == IpFamily::V6)
    }

    /// Whether `system` runs dual stack in this run: it has an IPv6 test and the
    /// system carries IPv6 between hosts.
    pub fn dual_stack_on(&self, system: System) -> bool {
        self.dual_stack() && system.carries_ipv6()
    }

    /// The tests `system` runs, in order, each round: the traffic tests, then `cpu`
    /// on its own if `tcp1` does not carry it, `cni` and `mem`; less the tests not
    /// measured on it ([`Test::not_measured_on`]).
    pub fn steps(&self, system: System) -> Vec<Test> {
        let has = |t: Test| self.tests.contains(&t);
        let mut steps: Vec<Test> = (self.tests.iter().copied())
            .filter(|t| !matches!(t, Test::Cni | Test::Cpu | Test::Mem))
            .collect();
        if has(Test::Cpu) && !has(Test::Tcp1) {
            steps.push(Test::Cpu);
        }
        steps.extend([Test::Cni, Test::Mem].into_iter().filter(|&t| has(t)));
        steps.retain(|t| t.not_measured_on(system).is_none());
        steps
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
///
/// A system none of whose tests is measured on it ([`Test::not_measured_on`]: only
/// IPv6 tests, on a system without IPv6 between hosts) is not set up at all.
pub fn run_on(
    cluster: &Cluster,
    settings: &Settings,
    tools: &Tools,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Report> {
    let steps: Vec<(System, Vec<Test>)> = (settings.systems.iter())
        .map(|&s| (s, settings.steps(s)))
        .collect();
    let per_round: usize = (steps.iter())
        .filter(|(_, tests)| !tests.is_empty())
        .map(|(_, tests)| 1 + tests.len())
        .sum();
    progress(Event::Steps((settings.repeat * per_round) as u64));
    for (system, tests) in &steps {
        let skipped: Vec<Test> = (settings.tests.iter().copied())
            .filter(|t| t.not_measured_on(*system).is_some())
            .collect();
        if !skipped.is_empty() {
            progress(Event::Note(format!(
                "{system}: {} not measured: {NO_IPV6_BETWEEN_HOSTS}{}",
                names(&skipped),
                if tests.is_empty() { "; not set up" } else { "" }
            )));
        }
    }
    let mut data = measure::Data::default();
    let on = On {
        cluster,
        settings,
        tools,
    };
    for round in 0..settings.repeat {
        for (system, tests) in steps.iter().filter(|(_, t)| !t.is_empty()) {
            on.run_system(&mut data, *system, tests, round, progress)?;
        }
    }
    Ok(Report::new(settings, data.rows(settings)))
}

/// What a run runs on: the cluster, the settings and the programs.
struct On<'a> {
    cluster: &'a Cluster,
    settings: &'a Settings,
    tools: &'a Tools,
}

impl On<'_> {
    /// Sets `system` up on the cluster, runs `tests` on it in round `round`, and
    /// takes it down again.
    fn run_system(
        &self,
        data: &mut measure::Data,
        system: System,
        tests: &[Test],
        round: usize,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<()> {
        let (cluster, settings, tools) = (self.cluster, self.settings, self.tools);
        crate::stop::check()?;
        progress(Event::Start {
            round,
            system,
            what: "setting up",
        });
        let plumbing = Plumbing::up(cluster, system, tools, settings)
            .with_context(|| format!("setting up {system} (round {})", round + 1))?;
        progress(Event::Done);
        for &test in tests {
            crate::stop::check()?;
            progress(Event::Start {
                round,
                system,
                what: test.name(),
            });
            let line = measure::run_test(data, &plumbing, test, round, settings)
                .with_context(|| format!("{system}: {test} (round {})", round + 1))?;
            progress(Event::Note(format!(
                "round {} {system:<13} {test:<6} {line}",
                round + 1
            )));
            progress(Event::Done);
        }
        plumbing
            .down()
            .with_context(|| format!("tearing down {system} (round {})", round + 1))
    }
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
    fn families_parse_and_choose_the_default_tests() {
        assert_eq!("4".parse::<Family>().unwrap(), Family::V4);
        assert_eq!("6".parse::<Family>().unwrap(), Family::V6);
        assert_eq!("dual".parse::<Family>().unwrap(), Family::Dual);
        for bad in ["", "5", "v6", "both"] {
            let e = bad.parse::<Family>().unwrap_err().to_string();
            assert!(e.contains("none of 4, 6 and dual"), "{e}");
        }
        // 4, and no --family at all, are exactly the tests of a run before IPv6.
        assert_eq!(Family::V4.default_tests(), Test::DEFAULT);
        assert_eq!(select_tests(None, None).unwrap(), Test::DEFAULT);
        assert_eq!(Settings::default().tests, Test::DEFAULT);
        assert!(!Settings::default().dual_stack());
        assert_eq!(
            select_tests(None, Some(Family::V6)).unwrap(),
            parse_list::<Test>("tcp1-v6,tcp4-v6,udp64-v6,rr-v6").unwrap()
        );
        let dual = Family::Dual.default_tests();
        let names: Vec<&str> = dual.iter().map(|t| t.name()).collect();
        assert_eq!(
            names,
            [
                "tcp1", "tcp1-v6", "tcp4", "tcp4-v6", "udp64", "udp64-v6", "rr", "rr-v6", "crr",
                "cni", "cpu", "mem"
            ]
        );
    }

    #[test]
    fn the_v6_tests_are_named_and_mirror_their_ipv4_twins() {
        for t in Test::ALL {
            assert_eq!(t.name().parse::<Test>().unwrap(), t);
        }
        assert_eq!(
            parse_list::<Test>("tcp1-v6, rr-v6,tcp1,rr-v6").unwrap(),
            [Test::Tcp1V6, Test::RrV6, Test::Tcp1]
        );
        for (v6, v4) in [
            (Test::Tcp1V6, Test::Tcp1),
            (Test::Tcp4V6, Test::Tcp4),
            (Test::Udp64V6, Test::Udp64),
            (Test::RrV6, Test::Rr),
        ] {
            assert_eq!(v6.ip_family(), IpFamily::V6);
            assert_eq!(v6.v4_twin(), v4);
            assert_eq!(v6.metrics(), v4.metrics());
            assert_eq!(v6.baseline(), System::KernelVxlan);
            assert!(v6.is_pod_traffic() && v4.is_pod_traffic());
            assert_eq!(v6_variant(v4), Some(v6));
            assert_eq!(v6.name(), format!("{}-v6", v4.name()));
        }
        assert_eq!(v6_variant(Test::Crr), None);
        assert!(Test::ALL
            .iter()
            .filter(|t| !Test::V6.contains(t))
            .all(|t| t.ip_family() == IpFamily::V4 && t.v4_twin() == *t));
        assert!(!Test::Cni.is_pod_traffic() && !Test::Svc10.is_pod_traffic());
        let e = "tcp1-v4".parse::<Test>().unwrap_err().to_string();
        assert!(e.contains("rr-v6"), "the error lists the tests: {e}");
    }

    #[test]
    fn tests_named_must_be_of_the_family_given() {
        let e = select_tests(Some("tcp1,tcp1-v6"), Some(Family::V4))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--family 4") && e.contains("tcp1-v6"), "{e}");
        let e = select_tests(Some("tcp1-v6,tcp4"), Some(Family::V6))
            .unwrap_err()
            .to_string();
        assert!(e.contains("IPv4 test tcp4") && e.contains("tcp4-v6"), "{e}");
        let e = select_tests(Some("crr"), Some(Family::V6))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no IPv6 variant"), "{e}");
        // Tests of no family go with any; dual takes both; no --family, anything.
        assert!(select_tests(Some("rr-v6,cni,mem,cpu"), Some(Family::V6)).is_ok());
        assert!(select_tests(Some("cni,tcp1"), Some(Family::V4)).is_ok());
        assert!(select_tests(Some("tcp1,tcp1-v6,crr"), Some(Family::Dual)).is_ok());
        assert_eq!(
            select_tests(Some("rr,rr-v6"), None).unwrap(),
            [Test::Rr, Test::RrV6]
        );
        assert!(select_tests(Some("tcp1,nope"), None).is_err());
    }

    #[test]
    fn systems_without_ipv6_between_hosts_skip_the_v6_tests() {
        let carry = [
            System::WeftVxlan,
            System::WeftSleeve,
            System::WeftSleeveEnc,
            System::WeftVxlanAlt,
            System::WeftSleeveAlt,
            System::WeftSleeveEncAlt,
            System::WeftAfxdpVxlan,
            System::WeftAfxdpSleeve,
            System::WeftVxlanPolicy,
            System::WeftSleevePolicy,
            System::WeftVxlanPolicyAlt,
            System::KernelVxlan,
        ];
        for system in System::ALL {
            assert_eq!(system.carries_ipv6(), carry.contains(&system), "{system}");
            for t in Test::ALL {
                let skipped = t.not_measured_on(system).is_some();
                assert_eq!(
                    skipped,
                    t.ip_family() == IpFamily::V6 && !carry.contains(&system)
                );
            }
        }
        for no in [
            System::Direct,
            System::WeftDirect,
            System::KernelVxlanIptables,
            System::WeftSwitch,
        ] {
            let why = Test::RrV6.not_measured_on(no).unwrap();
            assert!(why.starts_with("no IPv6 between hosts"), "{why}");
        }
        let settings = Settings {
            systems: vec![System::WeftVxlan, System::Direct, System::KernelVxlan],
            tests: Family::Dual.default_tests(),
            ..Settings::default()
        };
        settings.validate().unwrap();
        assert!(settings.dual_stack());
        assert!(settings.dual_stack_on(System::WeftVxlan));
        assert!(settings.dual_stack_on(System::KernelVxlan));
        assert!(!settings.dual_stack_on(System::Direct));
        // Direct runs the IPv4 tests, cpu around tcp1, then cni and mem.
        assert_eq!(
            settings.steps(System::Direct),
            parse_list::<Test>("tcp1,tcp4,udp64,rr,crr,cni,mem").unwrap()
        );
        assert_eq!(
            settings.steps(System::WeftVxlan),
            parse_list::<Test>("tcp1,tcp1-v6,tcp4,tcp4-v6,udp64,udp64-v6,rr,rr-v6,crr,cni,mem")
                .unwrap()
        );
        // Only IPv6 tests: a system without IPv6 has nothing to run (and is not set up).
        let v6 = Settings {
            tests: Test::V6.to_vec(),
            ..settings.clone()
        };
        assert!(v6.steps(System::Direct).is_empty());
        assert_eq!(v6.steps(System::KernelVxlan), Test::V6);
    }

    #[test]
    fn ipv4_runs_keep_their_steps_and_ipv6_tests_need_a_system_that_carries_them() {
        let v4 = Settings::default();
        assert!(!v4.dual_stack());
        for system in System::ALL {
            assert!(!v4.dual_stack_on(system));
            assert_eq!(
                v4.steps(system),
                parse_list::<Test>("tcp1,tcp4,udp64,rr,crr,cni,mem").unwrap()
            );
        }
        let cpu_alone = Settings {
            tests: parse_list("cpu,rr,cni").unwrap(),
            ..Settings::default()
        };
        assert_eq!(
            cpu_alone.steps(System::Direct),
            [Test::Rr, Test::Cpu, Test::Cni]
        );
        let only_direct = Settings {
            systems: vec![System::Direct, System::WeftDirect],
            tests: vec![Test::Tcp1, Test::Tcp1V6],
            ..Settings::default()
        };
        let e = only_direct.validate().unwrap_err().to_string();
        assert!(
            e.contains("tcp1-v6") && e.contains("carries IPv6") && e.contains("weft-direct"),
            "{e}"
        );
        let with_kernel = Settings {
            systems: vec![System::Direct, System::KernelVxlan],
            ..only_direct
        };
        with_kernel.validate().unwrap();
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
