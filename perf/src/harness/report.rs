//! The report: the machine, the settings, one row per (system, test, metric) with its
//! median and every run; rendered as a table or written as JSON.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::measure::{MEM_BURST, MEM_IDLE, MEM_SETTLE};
use super::{Better, Settings, System, Test};
use crate::procfs::Machine;

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
}

impl Report {
    /// A report of `results`, measured with `settings` on this machine.
    pub fn new(settings: &Settings, results: Vec<ResultRow>) -> Report {
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
            },
            results,
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
        if systems.iter().any(|x| x == baseline) {
            let _ = writeln!(
                out,
                "(x.xx) = ratio to {baseline}; ^ higher is better, v lower is better"
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
        out.push('\n');
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
                    .find(baseline, test.name(), metric.name)
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
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for line in &lines {
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
    fn numbers_keep_three_digits() {
        assert_eq!(number(1234.6), "1235");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(1.2345), "1.23");
        assert_eq!(number(0.012345), "0.012");
    }
}
