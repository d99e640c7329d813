//! The report: the machine, the settings, one row per (system, test, metric) with its
//! median and every run; rendered as a table or written as JSON.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::measure::{MEM_BURST, MEM_IDLE, MEM_SETTLE};
use super::{Better, IpFamily, RrIdle, Settings, System, Test};
use crate::procfs::Machine;
use crate::topo::Offload;

/// One number of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    /// The system (`weft-vxlan`…).
    pub system: String,
    /// The test (`tcp1`…).
    pub test: String,
    /// The metric within the test (`throughput`, `p99`…).
    pub metric: String,
    /// The median over the runs (for `cni`, the percentile over every call); `null`
    /// where the metric does not apply to the system.
    pub value: Option<f64>,
    /// The unit of `value` and `runs`.
    pub unit: String,
    /// Each round's value, in order.
    pub runs: Vec<f64>,
    /// Why there is no value, where there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The settings as the report records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Systems, in visiting order.
    pub systems: Vec<String>,
    /// Tests, in running order.
    pub tests: Vec<String>,
    /// Seconds per traffic test.
    pub duration_s: f64,
    /// Rounds.
    pub repeat: usize,
    /// Hosts.
    pub hosts: usize,
    /// Pods per host.
    pub pods_per_host: usize,
    /// Underlay MTU.
    pub underlay_mtu: u32,
    /// Pod MTU.
    pub pod_mtu: u32,
    /// CNI ADD/DEL pairs per system.
    pub cni_pods: usize,
    /// Pods the `mem` test attaches to host 0's weftd at once (0 in reports older than
    /// the test).
    #[serde(default)]
    pub mem_pods: usize,
    /// weftd worker threads (`null`: one per core).
    pub weft_workers: Option<usize>,
    /// The hosts' underlay transmit offloads, `on` or `off` (`off` in reports older than
    /// the setting: their underlays had it off).
    #[serde(default = "off")]
    pub underlay_offload: String,
    /// What idle CPUs did during `rr`: `poll` or `sleep` (`sleep` in older reports).
    #[serde(default = "sleep")]
    pub rr_idle: String,
}

fn off() -> String {
    Offload::Off.name().into()
}

fn sleep() -> String {
    RrIdle::Sleep.name().into()
}

/// Largest difference between weft-perf's generator and iperf3 on the same flows that
/// the report lets pass without a warning, as a share of weft-perf's figure.
pub const CROSS_CHECK_TOLERANCE: f64 = 0.20;

/// weft-perf's generator against iperf3 on one system and test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossCheck {
    /// The system.
    pub system: String,
    /// weft-perf's test (`tcp1`, `tcp4`).
    pub test: String,
    /// Its median throughput, Gbit/s.
    pub weft_perf: f64,
    /// The iperf3 test's median throughput on the same flows, Gbit/s.
    pub iperf3: f64,
    /// `iperf3 / weft_perf`.
    pub ratio: f64,
    /// Whether the two differ by more than [`CROSS_CHECK_TOLERANCE`].
    pub disagree: bool,
}

/// A whole run's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The weft-perf version.
    pub version: String,
    /// What ran.
    pub settings: RunSettings,
    /// The numbers.
    pub results: Vec<ResultRow>,
    /// The generators compared, where the run had both a test and its iperf3 twin.
    pub cross_checks: Vec<CrossCheck>,
}

impl Report {
    /// A report of `results`, measured with `settings` on this machine.
    pub fn new(settings: &Settings, results: Vec<ResultRow>) -> Report {
        let cross_checks = cross_checks(&results);
        Report {
            machine: Machine::describe(),
            version: env!("CARGO_PKG_VERSION").into(),
            settings: RunSettings {
                systems: settings.systems.iter().map(|s| s.name().into()).collect(),
                tests: settings.tests.iter().map(|t| t.name().into()).collect(),
                duration_s: settings.duration.as_secs_f64(),
                repeat: settings.repeat,
                hosts: settings.hosts,
                pods_per_host: settings.pods,
                underlay_mtu: settings.mtu,
                pod_mtu: settings.mtu - crate::topo::kernel_vxlan::OVERHEAD,
                cni_pods: settings.cni_pods,
                mem_pods: settings.mem_pods,
                weft_workers: settings.weft_workers,
                underlay_offload: settings.underlay_offload.name().into(),
                rr_idle: settings.rr_idle.name().into(),
            },
            results,
            cross_checks,
        }
    }

    /// The row of (`system`, `test`, `metric`), if the report has it.
    pub fn find(&self, system: &str, test: &str, metric: &str) -> Option<&ResultRow> {
        self.results
            .iter()
            .find(|r| r.system == system && r.test == test && r.metric == metric)
    }

    /// Writes the report as pretty-printed JSON to `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// The report as a text table: a row per metric, a column per system, each value
    /// with its ratio to `kernel-vxlan`.
    pub fn table(&self) -> String {
        let mut out = self.preamble();
        out.push('\n');
        out.push_str(&aligned(&self.grid()));
        out.push_str(&self.cross_check_lines());
        out
    }

    /// The lines above the table: the setup, and what each test's figures mean.
    fn preamble(&self) -> String {
        let systems = &self.settings.systems;
        let baseline = System::BASELINE.name();
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} hosts x {} pods, underlay MTU {} (pods {}), {} round{} of {} s per test, systems interleaved; medians",
            s.hosts,
            s.pods_per_host,
            s.underlay_mtu,
            s.pod_mtu,
            s.repeat,
            if s.repeat == 1 { "" } else { "s" },
            s.duration_s
        );
        let _ = writeln!(
            out,
            "underlay offload {}{}",
            s.underlay_offload,
            if s.underlay_offload == Offload::On.name() {
                " (checksum, TSO and tunnel segmentation on the hosts' eth0, as real NICs have them)"
            } else {
                " (the hosts' eth0 checksum and segment in software: slower than real NICs)"
            }
        );
        let svc = s.tests.iter().any(|t| is_svc(t));
        let plain = s.tests.iter().any(|t| !is_svc(t));
        let svc_baseline = Test::Svc10.baseline().name();
        for (used, base) in [(plain, baseline), (svc, svc_baseline)] {
            if used && systems.iter().any(|x| x == base) {
                let tests = if base == svc_baseline {
                    " (svc tests)"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "(x.xx) = ratio to {base}{tests}; ^ higher is better, v lower is better"
                );
            }
        }
        out.push_str(&self.test_notes());
        out
    }

    /// What the figures of the tests that ran mean, a line each.
    fn test_notes(&self) -> String {
        let baseline = System::BASELINE.name();
        let s = &self.settings;
        let mut out = String::new();
        if s.tests
            .iter()
            .any(|t| t == Test::Rr.name() || t == Test::Crr.name() || is_svc(t))
        {
            let why = if s.rr_idle == RrIdle::Poll.name() {
                "idle CPUs poll for every system (a PM QoS CPU latency request of 0), so \
                 wake-ups cost the same whatever else runs: weftd's own polling would \
                 otherwise keep the vCPUs awake, and speed up every wake-up, for weft only"
            } else {
                "idle CPUs sleep as the machine chooses, so a system that polls (weftd) \
                 also speeds up the wake-ups of the generator and the kernel"
            };
            let _ = writeln!(
                out,
                "rr: 1-byte TCP ping-pong; {why}; wake p50 = a futex wake-up of a thread \
                 on another CPU, measured just before the round trips"
            );
        }
        if s.tests.iter().any(|t| t == Test::Cni.name()) {
            let _ = writeln!(
                out,
                "cni: percentiles over all {} pods per system; weft-* through weft-cni, \
                 {baseline} through bridge + host-local",
                s.cni_pods
            );
        }
        if s.tests.iter().any(|t| t == Test::Cpu.name()) {
            let _ = writeln!(
                out,
                "cpu: around tcp1; weftd = the weft daemons, total = weftd + the traffic \
                 generator's threads (with the kernel's work in their system calls) + ksoftirqd"
            );
        }
        if s.tests.iter().any(|t| t == Test::Mem.name()) {
            let _ = writeln!(
                out,
                "mem: host 0's weftd with {} pods attached through weft-cni; rss = its VmRSS, \
                 idle cpu = its CPU time over {} s without traffic ({} s after {} s of rr), \
                 as % of one core",
                s.mem_pods,
                MEM_IDLE.as_secs_f64(),
                MEM_SETTLE.as_secs_f64(),
                MEM_BURST.as_secs_f64()
            );
        }
        if s.tests.iter().any(|t| is_svc(t)) {
            let _ = writeln!(
                out,
                "svc*: that many Services, each its own ClusterIP and endpoints (a port of its own on each of host 1's pods); \
                 {} clients on host 0's pods connect (1 byte each way, the \
                 server closes) to every ClusterIP in turn: rate, and cpu = weftd + the \
                 clients and servers + ksoftirqd per connection, failed = connections not \
                 done within 1 s (counted, not retried); rr p50 over {} connections spread \
                 over the Services; load = rules or manifests generated and written, to the first \
                 connection through the first and last ClusterIP",
                super::svc::CLIENTS,
                super::svc::RR_CONNECTIONS
            );
        }
        if !self.cross_checks.is_empty() {
            let _ = writeln!(
                out,
                "*-iperf3: the same flows with iperf3 as the generator, a check on weft-perf's own"
            );
        }
        out.push_str(&self.v6_note());
        out
    }

    /// What the `*-v6` tests' figures mean, and on which systems they are not
    /// measured, if the run had any.
    fn v6_note(&self) -> String {
        let s = &self.settings;
        let v6 = |t: &String| {
            t.parse::<Test>()
                .is_ok_and(|t| t.ip_family() == IpFamily::V6)
        };
        if !s.tests.iter().any(v6) {
            return String::new();
        }
        let systems = || s.systems.iter().filter_map(|x| x.parse::<System>().ok());
        let dual: Vec<&str> = systems()
            .filter(|x| x.carries_ipv6())
            .map(System::name)
            .collect();
        let without: Vec<&str> = systems()
            .filter(|x| !x.carries_ipv6())
            .map(System::name)
            .collect();
        let mut out = format!(
            "*-v6: the same traffic between the pods' IPv6 addresses (fd00:10:244:<n>::/64 \
             beside each host's IPv4 /24; the kernel's flannel.1 and weft's tunnels carry it \
             over the IPv4 underlay); ratios are to {}'s own -v6 figures; udp64-v6 sends the \
             same 64-byte payloads, in packets 20 bytes longer (112 bytes of IPv6 against 92 \
             of IPv4); {} ran dual stack for every test of this run",
            System::BASELINE.name(),
            dual.join(", ")
        );
        if !without.is_empty() {
            let _ = write!(
                out,
                "; n/a on {}: not measured, no IPv6 between hosts",
                without.join(", ")
            );
        }
        out.push('\n');
        out
    }

    /// The table's cells: a header, then a row per metric some system has.
    fn grid(&self) -> Vec<Vec<String>> {
        let systems = &self.settings.systems;
        let mut lines: Vec<Vec<String>> = Vec::new();
        let mut header = vec!["test".to_string(), "metric".into(), "unit".into()];
        header.extend(systems.iter().cloned());
        lines.push(header);
        for test in Test::ALL {
            for metric in test.metrics() {
                let cells: Vec<Option<&ResultRow>> = systems
                    .iter()
                    .map(|sys| self.find(sys, test.name(), metric.name))
                    .collect();
                if cells.iter().all(Option::is_none) {
                    continue;
                }
                let base = self
                    .find(test.baseline().name(), test.name(), metric.name)
                    .and_then(|r| r.value)
                    .filter(|v| *v > 0.0);
                let arrow = match metric.better {
                    Better::Higher => "^",
                    Better::Lower => "v",
                };
                let mut line = vec![
                    test.name().to_string(),
                    metric.name.to_string(),
                    format!("{} {arrow}", metric.unit),
                ];
                for cell in cells {
                    line.push(match cell.and_then(|r| r.value) {
                        None => "n/a".into(),
                        Some(v) => match base {
                            Some(b) => format!("{} ({:.2}x)", number(v), v / b),
                            None => number(v),
                        },
                    });
                }
                lines.push(line);
            }
        }
        lines
    }

    /// The generators' cross-check, if there is one.
    fn cross_check_lines(&self) -> String {
        let mut out = String::new();
        if !self.cross_checks.is_empty() {
            out.push_str("\ngenerator cross-check (iperf3 / weft-perf on the same flows):\n");
            for c in &self.cross_checks {
                let _ = writeln!(
                    out,
                    "  {:<13} {:<5} weft-perf {} Gbit/s, iperf3 {} Gbit/s: {:.2}x{}",
                    c.system,
                    c.test,
                    number(c.weft_perf),
                    number(c.iperf3),
                    c.ratio,
                    if c.disagree {
                        format!(
                            "  WARNING: the generators differ by more than {:.0}%",
                            CROSS_CHECK_TOLERANCE * 100.0
                        )
                    } else {
                        String::new()
                    }
                );
            }
        }
        out
    }
}

/// Whether `test` names one of the Services tests.
fn is_svc(test: &str) -> bool {
    Test::ALL
        .iter()
        .any(|t| t.name() == test && t.services().is_some())
}

/// `lines` as columns: the first three left-aligned, the values right-aligned.
fn aligned(lines: &[Vec<String>]) -> String {
    let mut out = String::new();
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in lines {
        let mut text = String::new();
        for (c, cell) in line.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c < 3 {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            } else {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            }
            text.push_str("  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// Each (system, test) that has both weft-perf's figure and its iperf3 twin's.
fn cross_checks(results: &[ResultRow]) -> Vec<CrossCheck> {
    let value = |system: &str, test: Test| {
        results
            .iter()
            .find(|r| r.system == system && r.test == test.name() && r.metric == "throughput")
            .and_then(|r| r.value)
    };
    let mut out = Vec::new();
    for twin in Test::ALL {
        let Some(test) = twin.cross_checks() else {
            continue;
        };
        for system in System::ALL {
            let (Some(ours), Some(iperf3)) =
                (value(system.name(), test), value(system.name(), twin))
            else {
                continue;
            };
            if ours <= 0.0 {
                continue;
            }
            let ratio = iperf3 / ours;
            out.push(CrossCheck {
                system: system.name().into(),
                test: test.name().into(),
                weft_perf: ours,
                iperf3,
                ratio,
                disagree: (ratio - 1.0).abs() > CROSS_CHECK_TOLERANCE,
            });
        }
    }
    out
}

/// A value with about three significant digits.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, test: &str, metric: &str, value: Option<f64>) -> ResultRow {
        ResultRow {
            system: system.into(),
            test: test.into(),
            metric: metric.into(),
            value,
            unit: "Gbit/s".into(),
            runs: value.into_iter().collect(),
            note: None,
        }
    }

    #[test]
    fn table_shows_ratios_to_the_baseline() {
        let settings = Settings {
            systems: vec![System::WeftVxlan, System::KernelVxlan],
            tests: vec![Test::Tcp1, Test::Cpu],
            ..Settings::default()
        };
        let report = Report::new(
            &settings,
            vec![
                row("weft-vxlan", "tcp1", "throughput", Some(5.0)),
                row("kernel-vxlan", "tcp1", "throughput", Some(10.0)),
                row("weft-vxlan", "cpu", "weftd", Some(0.5)),
                row("kernel-vxlan", "cpu", "weftd", None),
            ],
        );
        let t = report.table();
        assert!(t.contains("5.00 (0.50x)"), "{t}");
        assert!(t.contains("10.0 (1.00x)"), "{t}");
        assert!(t.contains("n/a"), "{t}");
        assert!(t.contains("0.500"), "{t}");
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["machine"].is_object());
        assert_eq!(json["results"][0]["value"], 5.0);
        assert!(json["results"][3]["value"].is_null());
    }

    #[test]
    fn v6_rows_have_their_own_baseline_and_say_where_they_were_not_measured() {
        let settings = Settings {
            systems: vec![System::WeftVxlan, System::KernelVxlan, System::Direct],
            tests: vec![Test::Tcp1, Test::Tcp1V6],
            ..Settings::default()
        };
        let mut skipped = row("direct", "tcp1-v6", "throughput", None);
        skipped.note = Some("not measured: no IPv6 between hosts".into());
        let report = Report::new(
            &settings,
            vec![
                row("weft-vxlan", "tcp1", "throughput", Some(8.0)),
                row("kernel-vxlan", "tcp1", "throughput", Some(10.0)),
                row("direct", "tcp1", "throughput", Some(20.0)),
                row("weft-vxlan", "tcp1-v6", "throughput", Some(6.0)),
                row("kernel-vxlan", "tcp1-v6", "throughput", Some(12.0)),
                skipped,
            ],
        );
        let t = report.table();
        let line = |test: &str| {
            t.lines()
                .find(|l| l.starts_with(&format!("{test} ")))
                .unwrap_or_else(|| panic!("no {test} line in {t}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            line("tcp1")[4..],
            ["8.00", "(0.80x)", "10.0", "(1.00x)", "20.0", "(2.00x)"]
        );
        assert_eq!(
            line("tcp1-v6")[4..],
            ["6.00", "(0.50x)", "12.0", "(1.00x)", "n/a"]
        );
        assert!(t.contains("*-v6: the same traffic"), "{t}");
        assert!(t.contains("112 bytes of IPv6 against 92"), "{t}");
        assert!(
            t.contains("weft-vxlan, kernel-vxlan ran dual stack for every test"),
            "{t}"
        );
        assert!(
            t.contains("n/a on direct: not measured, no IPv6 between hosts"),
            "{t}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["results"][5]["note"],
            "not measured: no IPv6 between hosts"
        );
        // An IPv4 run says nothing of IPv6.
        let v4 = Report::new(&Settings::default(), Vec::new());
        assert!(!v4.table().contains("-v6"));
    }

    #[test]
    fn table_explains_and_shows_the_mem_metrics() {
        let settings = Settings {
            systems: vec![System::WeftSleeve, System::KernelVxlan],
            tests: vec![Test::Mem],
            mem_pods: 42,
            ..Settings::default()
        };
        let mut rss = row("weft-sleeve", "mem", "rss", Some(21.5));
        rss.unit = "MiB".into();
        let mut idle = row("weft-sleeve", "mem", "idle cpu", Some(0.0123));
        idle.unit = "%".into();
        let report = Report::new(
            &settings,
            vec![
                rss,
                idle,
                row("kernel-vxlan", "mem", "rss", None),
                row("kernel-vxlan", "mem", "idle cpu", None),
            ],
        );
        let t = report.table();
        assert!(
            t.contains("mem: host 0's weftd with 42 pods attached"),
            "{t}"
        );
        assert!(
            t.contains("over 3 s without traffic (0.5 s after 0.5 s of rr)"),
            "{t}"
        );
        let line = |metric: &str| {
            t.lines()
                .find(|l| l.starts_with("mem ") && l.contains(metric))
                .unwrap_or_else(|| panic!("no {metric} line in {t}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(line("rss"), ["mem", "rss", "MiB", "v", "21.5", "n/a"]);
        assert_eq!(
            line("idle cpu"),
            ["mem", "idle", "cpu", "%", "v", "0.012", "n/a"]
        );
        assert!(!t.contains("cni:") && !t.contains("cpu: around"), "{t}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["settings"]["mem_pods"], 42);
        assert_eq!(json["settings"]["tests"][0], "mem");
        assert_eq!(json["results"][1]["metric"], "idle cpu");
        assert_eq!(json["results"][1]["unit"], "%");
    }

    #[test]
    fn cross_checks_pair_each_test_with_its_iperf3_twin_and_warn_past_20_percent() {
        let settings = Settings {
            systems: vec![System::WeftSleeve, System::KernelVxlan, System::Direct],
            tests: vec![Test::Tcp1, Test::Tcp1Iperf3, Test::Tcp4, Test::Tcp4Iperf3],
            ..Settings::default()
        };
        let report = Report::new(
            &settings,
            vec![
                row("weft-sleeve", "tcp1", "throughput", Some(5.0)),
                row("weft-sleeve", "tcp1-iperf3", "throughput", Some(5.9)),
                row("kernel-vxlan", "tcp1", "throughput", Some(10.0)),
                row("kernel-vxlan", "tcp1-iperf3", "throughput", Some(7.9)),
                row("weft-sleeve", "tcp4", "throughput", Some(6.0)),
                row("weft-sleeve", "tcp4-iperf3", "throughput", Some(4.7)),
                // No weft-perf figure for direct: nothing to compare.
                row("direct", "tcp4-iperf3", "throughput", Some(9.0)),
            ],
        );
        let got: Vec<(&str, &str, bool)> = report
            .cross_checks
            .iter()
            .map(|c| (c.system.as_str(), c.test.as_str(), c.disagree))
            .collect();
        assert_eq!(
            got,
            [
                ("weft-sleeve", "tcp1", false),
                ("kernel-vxlan", "tcp1", true),
                ("weft-sleeve", "tcp4", true),
            ]
        );
        assert!((report.cross_checks[0].ratio - 1.18).abs() < 1e-9);
        let t = report.table();
        let warnings = t.lines().filter(|l| l.contains("WARNING")).count();
        assert_eq!(warnings, 2, "{t}");
        assert!(
            t.contains("kernel-vxlan  tcp1  weft-perf 10.0 Gbit/s, iperf3 7.90 Gbit/s: 0.79x"),
            "{t}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["cross_checks"][1]["disagree"], true);
        assert_eq!(json["settings"]["underlay_offload"], "on");
    }

    #[test]
    fn old_reports_read_as_offload_off_and_sleeping_cpus() {
        let old = serde_json::json!({
            "systems": ["weft-vxlan"], "tests": ["tcp1"], "duration_s": 2.0, "repeat": 3,
            "hosts": 2, "pods_per_host": 2, "underlay_mtu": 1500, "pod_mtu": 1450,
            "cni_pods": 200, "weft_workers": null
        });
        let s: RunSettings = serde_json::from_value(old).unwrap();
        assert_eq!(
            (s.underlay_offload.as_str(), s.rr_idle.as_str()),
            ("off", "sleep")
        );
    }

    #[test]
    fn numbers_keep_three_digits() {
        assert_eq!(number(1234.6), "1235");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(1.2345), "1.23");
        assert_eq!(number(0.012345), "0.012");
    }
}
