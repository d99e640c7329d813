//! The tests, run on one plumbed system, and the numbers they collect across rounds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::cluster::POD_IFNAME;
use super::{Plumbing, ResultRow, Settings, System, Test};
use crate::cni::Verb;
use crate::procfs::{ksoftirqd_pids, process_cpu_seconds};
use crate::topo::Pod;
use crate::traffic::{tcp_rr, tcp_streams, udp_blast, Flow};

/// How long a TCP stream or round trip may stall before the test fails.
const STALL: Duration = Duration::from_secs(10);

/// Streams of the `tcp4` test.
const TCP4_STREAMS: usize = 4;

/// UDP payload of the `udp64` test.
const UDP_PAYLOAD: usize = 64;

/// Upper bound on datagrams one `udp64` run sends, per second of duration.
const UDP_MAX_PER_SECOND: u64 = 20_000_000;

/// Upper bound on round trips one `rr` run makes, per second of duration.
const RR_MAX_PER_SECOND: u64 = 2_000_000;

/// Everything measured so far.
#[derive(Debug, Default)]
pub(super) struct Data {
    /// Each run's value of each (system, test, metric).
    runs: BTreeMap<(System, Test, &'static str), Vec<f64>>,
    /// Every CNI call's latency, pooled over the rounds, per (system, verb).
    cni: BTreeMap<(System, &'static str), Vec<Duration>>,
}

impl Data {
    fn push(&mut self, system: System, test: Test, metric: &'static str, value: f64) {
        self.runs
            .entry((system, test, metric))
            .or_default()
            .push(value);
    }

    /// The report rows: the median of each metric's runs; for `cni`, the percentiles
    /// over every call of every round (each round's own are its runs).
    pub(super) fn rows(&self, settings: &Settings) -> Vec<ResultRow> {
        let mut rows = Vec::new();
        for test in Test::ALL.into_iter().filter(|t| settings.tests.contains(t)) {
            for metric in test.metrics() {
                for &system in &settings.systems {
                    let mut row = ResultRow {
                        system: system.name().into(),
                        test: test.name().into(),
                        metric: metric.name.into(),
                        value: None,
                        unit: metric.unit.into(),
                        runs: Vec::new(),
                        note: None,
                    };
                    if let Some(why) = test.not_applicable(system, metric.name) {
                        row.note = Some(format!("not applicable: {why}"));
                        rows.push(row);
                        continue;
                    }
                    row.runs = self
                        .runs
                        .get(&(system, test, metric.name))
                        .cloned()
                        .unwrap_or_default();
                    row.value = if test == Test::Cni {
                        let (verb, p) = cni_metric(metric.name);
                        self.cni
                            .get(&(system, verb))
                            .map(|all| millis(percentile(all, p)))
                    } else {
                        median(&row.runs)
                    };
                    if row.value.is_none() {
                        row.note = Some("not measured".into());
                    }
                    rows.push(row);
                }
            }
        }
        rows
    }
}

/// The verb and percentile a `cni` metric name stands for.
fn cni_metric(name: &str) -> (&'static str, f64) {
    let verb = if name.starts_with("ADD") {
        "ADD"
    } else {
        "DEL"
    };
    let p = if name.ends_with("p99") { 99.0 } else { 50.0 };
    (verb, p)
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The nearest-rank `p`th percentile of `samples`.
///
/// # Panics
/// If `samples` is empty.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `test` on `plumbing` in round `round`, records its numbers in `data`, and
/// returns a one-line summary.
pub(super) fn run_test(
    data: &mut Data,
    plumbing: &Plumbing<'_>,
    test: Test,
    round: usize,
    settings: &Settings,
) -> Result<String> {
    let system = plumbing.system();
    let cluster = plumbing.cluster();
    let (a, b) = (cluster.pod(0, 0), cluster.pod(1, 0));
    let b_ip = plumbing.ip(1, 0);
    let d = settings.duration;
    let secs = d.as_secs_f64().ceil() as u64;
    match test {
        Test::Tcp1 | Test::Cpu => {
            let with_cpu = settings.tests.contains(&Test::Cpu);
            let pids = plumbing.weftd_pids();
            let mut all = pids.clone();
            all.push(std::process::id());
            all.extend(ksoftirqd_pids());
            let weft_before = cpu_seconds(&pids)?;
            let total_before = cpu_seconds(&all)?;
            let flow = Flow {
                client: &a.ns,
                server: &b.ns,
                server_ip: b_ip,
            };
            let t = tcp_streams(&[flow], d, STALL)?;
            let total = cpu_seconds(&all)? - total_before;
            let weft = cpu_seconds(&pids)? - weft_before;
            let gb = t.bytes as f64 / 1e9;
            ensure!(gb > 0.0, "the transfer carried nothing");
            let mut line = String::new();
            if test == Test::Tcp1 {
                data.push(system, Test::Tcp1, "throughput", t.gbit_per_s());
                line = format!("{:7.2} Gbit/s", t.gbit_per_s());
            }
            if with_cpu {
                data.push(system, Test::Cpu, "total", total / gb);
                line += &format!("  total {:.2} CPU s/GB", total / gb);
                if !pids.is_empty() {
                    data.push(system, Test::Cpu, "weftd", weft / gb);
                    line += &format!("  weftd {:.2} CPU s/GB", weft / gb);
                }
            }
            Ok(line)
        }
        Test::Tcp4 => {
            let m = cluster.pods_per_host();
            let flows: Vec<Flow<'_>> = (0..TCP4_STREAMS)
                .map(|i| Flow {
                    client: &cluster.pod(0, i % m).ns,
                    server: &cluster.pod(1, i % m).ns,
                    server_ip: plumbing.ip(1, i % m),
                })
                .collect();
            let t = tcp_streams(&flows, d, STALL)?;
            data.push(system, test, "throughput", t.gbit_per_s());
            Ok(format!("{:7.2} Gbit/s", t.gbit_per_s()))
        }
        Test::Udp64 => {
            let max = UDP_MAX_PER_SECOND.saturating_mul(secs.max(1));
            let u = udp_blast(&a.ns, &b.ns, b_ip, UDP_PAYLOAD, d, max)?;
            ensure!(u.received > 0, "no datagram arrived (sent {})", u.sent);
            data.push(system, test, "received", u.received_pps() / 1e6);
            data.push(system, test, "loss", u.loss_percent());
            Ok(format!(
                "{:7.3} Mpps received, {:.1}% lost (sent {})",
                u.received_pps() / 1e6,
                u.loss_percent(),
                u.sent
            ))
        }
        Test::Rr => {
            let max = RR_MAX_PER_SECOND.saturating_mul(secs.max(1));
            let h = tcp_rr(&a.ns, &b.ns, b_ip, d, max, STALL)?;
            ensure!(!h.is_empty(), "no round trip completed");
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
            data.push(system, test, "p50", us(0.50));
            data.push(system, test, "p99", us(0.99));
            data.push(system, test, "p99.9", us(0.999));
            Ok(format!(
                "p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  ({} round trips)",
                us(0.50),
                us(0.99),
                us(0.999),
                h.len()
            ))
        }
        Test::Cni => cni_round(data, plumbing, settings.cni_pods_in_round(round)),
    }
}

/// Sums the CPU seconds of the processes `pids`.
fn cpu_seconds(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&p| process_cpu_seconds(p)).sum()
}

/// Attaches `n` fresh pods (spread over the hosts) through the system's CNI plugin, one
/// after another as a kubelet does, then detaches them all, timing every call.
fn cni_round(data: &mut Data, plumbing: &Plumbing<'_>, n: usize) -> Result<String> {
    let system = plumbing.system();
    let cluster = plumbing.cluster();
    if plumbing.network(0).is_none() || n == 0 {
        return Ok("n/a".into());
    }
    let hosts = cluster.underlay().hosts();
    let started = Instant::now();
    let pods = (0..n)
        .map(|i| Pod::new(i % hosts.len(), &format!("c{i}")))
        .collect::<Result<Vec<_>>>()?;
    let mut add = Vec::with_capacity(n);
    let mut del = Vec::with_capacity(n);
    let mut attached = Vec::with_capacity(n);
    let result = (|| -> Result<()> {
        for pod in &pods {
            crate::stop::check()?;
            let host = &hosts[pod.host];
            let network = plumbing.network(pod.host).context("CNI network")?;
            let id = super::cluster::container_id(pod);
            let out = network.call(Verb::Add, &host.ns, &id, &pod.ns.path(), POD_IFNAME)?;
            attached.push(pod);
            let ip = out.first_ip()?;
            ensure!(
                host.pod_subnet.contains(&ip),
                "ADD of {id} gave {ip}, outside host {}'s subnet {}",
                pod.host,
                host.pod_subnet
            );
            add.push(out.elapsed);
        }
        while let Some(&pod) = attached.first() {
            crate::stop::check()?;
            let host = &hosts[pod.host];
            let network = plumbing.network(pod.host).context("CNI network")?;
            let id = super::cluster::container_id(pod);
            let out = network.call(Verb::Del, &host.ns, &id, &pod.ns.path(), POD_IFNAME)?;
            attached.remove(0);
            del.push(out.elapsed);
        }
        Ok(())
    })();
    // After a failure, release what is still attached before the namespaces go.
    for pod in attached {
        if let Some(network) = plumbing.network(pod.host) {
            let id = super::cluster::container_id(pod);
            let _ = network.call(
                Verb::Del,
                &hosts[pod.host].ns,
                &id,
                &pod.ns.path(),
                POD_IFNAME,
            );
        }
    }
    result?;
    for (verb, samples) in [("ADD", &add), ("DEL", &del)] {
        data.push(
            system,
            Test::Cni,
            metric_name(verb, 50.0),
            millis(percentile(samples, 50.0)),
        );
        data.push(
            system,
            Test::Cni,
            metric_name(verb, 99.0),
            millis(percentile(samples, 99.0)),
        );
        data.cni
            .entry((system, verb))
            .or_default()
            .extend(samples.iter().copied());
    }
    Ok(format!(
        "{n} pods: ADD p50 {:.1} ms p99 {:.1} ms, DEL p50 {:.1} ms p99 {:.1} ms ({:.1} s)",
        millis(percentile(&add, 50.0)),
        millis(percentile(&add, 99.0)),
        millis(percentile(&del, 50.0)),
        millis(percentile(&del, 99.0)),
        started.elapsed().as_secs_f64()
    ))
}

fn metric_name(verb: &str, p: f64) -> &'static str {
    match (verb, p >= 99.0) {
        ("ADD", false) => "ADD p50",
        ("ADD", true) => "ADD p99",
        (_, false) => "DEL p50",
        (_, true) => "DEL p99",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
        let ms = |n: u64| Duration::from_millis(n);
        let v: Vec<Duration> = (1..=200).map(ms).collect();
        assert_eq!(percentile(&v, 50.0), ms(100));
        assert_eq!(percentile(&v, 99.0), ms(198));
        assert_eq!(percentile(&[ms(5)], 99.0), ms(5));
        assert_eq!(cni_metric("ADD p99"), ("ADD", 99.0));
        assert_eq!(cni_metric("DEL p50"), ("DEL", 50.0));
        assert_eq!(metric_name("DEL", 99.0), "DEL p99");
    }
}
