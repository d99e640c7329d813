//! The tests, run on one plumbed system, and the numbers they collect across rounds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::cluster::POD_IFNAME;
use super::{IpFamily, Plumbing, ResultRow, RrIdle, Settings, System, Test};
use crate::cni::Verb;
use crate::procfs::{ksoftirqd_pids, process_cpu_seconds, process_cpu_time, process_rss_bytes};
use crate::topo::Pod;
use crate::traffic::{tcp_crr, tcp_rr, tcp_streams, udp_blast, Flow};
use crate::wake::{wakeup_cost, CpuLatencyHold};

/// How long a TCP stream or round trip may stall before the test fails.
const STALL: Duration = Duration::from_secs(10);

/// Streams of the `tcp4` test.
const TCP4_STREAMS: usize = 4;

/// UDP payload of the `udp64` test.
const UDP_PAYLOAD: usize = 64;

/// Upper bound on datagrams one `udp64` run sends, per second of duration.
const UDP_MAX_PER_SECOND: u64 = 20_000_000;

/// Wake-up samples taken before each `rr` run (each after 200 µs idle: about 0.3 s).
const WAKE_SAMPLES: usize = 1000;

/// Upper bound on round trips one `rr` run makes, per second of duration.
const RR_MAX_PER_SECOND: u64 = 2_000_000;
/// The most connections `crr` opens per second of its duration: far above what this
/// machine does, a bound on the count all the same.
const CRR_MAX_PER_SECOND: u64 = 100_000;

/// The `mem` test's burst of round trips before the idle window: long enough for the
/// workers' adaptive polling window to grow to its largest.
pub(super) const MEM_BURST: Duration = Duration::from_millis(500);

/// The pause between the `mem` test's burst and its idle window.
pub(super) const MEM_SETTLE: Duration = Duration::from_millis(500);

/// The `mem` test's idle window, over which weftd's CPU time is measured.
pub(super) const MEM_IDLE: Duration = Duration::from_secs(3);

/// Everything measured so far.
#[derive(Debug, Default)]
pub(super) struct Data {
    /// Each run's value of each (system, test, metric).
    runs: BTreeMap<(System, Test, &'static str), Vec<f64>>,
    /// Every CNI call's latency, pooled over the rounds, per (system, verb).
    cni: BTreeMap<(System, &'static str), Vec<Duration>>,
}

impl Data {
    pub(super) fn push(&mut self, system: System, test: Test, metric: &'static str, value: f64) {
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
                    if let Some(why) = test.not_measured_on(system) {
                        row.note = Some(format!("not measured: {why}"));
                        rows.push(row);
                        continue;
                    }
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
/// returns a one-line summary. An IPv6 test runs its IPv4 twin's traffic between the
/// pods' IPv6 addresses.
pub(super) fn run_test(
    data: &mut Data,
    plumbing: &Plumbing<'_>,
    test: Test,
    round: usize,
    settings: &Settings,
) -> Result<String> {
    let system = plumbing.system();
    let family = test.ip_family();
    let d = settings.duration;
    match test.v4_twin() {
        Test::Tcp1 | Test::Cpu => tcp1_round(data, plumbing, test, settings),
        Test::Tcp4 => {
            let t = tcp_streams(&tcp4_flows(plumbing, family)?, d, STALL)?;
            data.push(system, test, "throughput", t.gbit_per_s());
            Ok(format!("{:7.2} Gbit/s", t.gbit_per_s()))
        }
        Test::Tcp1Iperf3 | Test::Tcp4Iperf3 => {
            let flows = match test {
                Test::Tcp1Iperf3 => vec![first_flow(plumbing, family)?],
                _ => tcp4_flows(plumbing, family)?,
            };
            let gbit = iperf3_streams(&flows, d)?;
            data.push(system, test, "throughput", gbit);
            Ok(format!("{gbit:7.2} Gbit/s (iperf3)"))
        }
        Test::Udp64 => udp64_round(data, plumbing, test, settings),
        Test::Rr => rr_round(data, plumbing, test, settings),
        Test::Crr => crr_round(data, plumbing, settings),
        Test::Cni => cni_round(data, plumbing, settings.cni_pods_in_round(round)),
        Test::Mem => mem_round(data, plumbing, settings.mem_pods),
        Test::Svc10 | Test::Svc1k | Test::Svc10k => {
            super::svc::round(data, plumbing, test, settings)
        }
        v6 => bail!("{v6} has no IPv4 twin to run"),
    }
}

/// The flow of `tcp1`: host 0's first pod to host 1's, over `family`.
fn first_flow<'c>(plumbing: &Plumbing<'c>, family: IpFamily) -> Result<Flow<'c>> {
    let cluster = plumbing.cluster();
    Ok(Flow {
        client: &cluster.pod(0, 0).ns,
        server: &cluster.pod(1, 0).ns,
        server_ip: plumbing.addr(1, 0, family)?,
    })
}

/// `tcp1` (or `tcp1-v6`): one stream between host 0's and host 1's first pods; with
/// the `cpu` test in the run (and `test` over IPv4), the CPU time around it too. For
/// `test` = `cpu` (a run without `tcp1`), only the CPU time is recorded.
fn tcp1_round(
    data: &mut Data,
    plumbing: &Plumbing<'_>,
    test: Test,
    settings: &Settings,
) -> Result<String> {
    let system = plumbing.system();
    let family = test.ip_family();
    let with_cpu = settings.tests.contains(&Test::Cpu) && family == IpFamily::V4;
    let pids = plumbing.weftd_pids();
    let all = all_cpu_pids(plumbing);
    let weft_before = cpu_seconds(&pids)?;
    let total_before = cpu_seconds(&all)?;
    let t = tcp_streams(&[first_flow(plumbing, family)?], settings.duration, STALL)?;
    let total = cpu_seconds(&all)? - total_before;
    let weft = cpu_seconds(&pids)? - weft_before;
    let gb = t.bytes as f64 / 1e9;
    ensure!(gb > 0.0, "the transfer carried nothing");
    let mut line = String::new();
    if test != Test::Cpu {
        data.push(system, test, "throughput", t.gbit_per_s());
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

/// `udp64` (or `udp64-v6`): 64-byte UDP datagrams from host 0's first pod to host
/// 1's, as fast as the sender goes. Over IPv6 the payload stays 64 bytes, so each
/// packet is 20 bytes longer.
fn udp64_round(
    data: &mut Data,
    plumbing: &Plumbing<'_>,
    test: Test,
    settings: &Settings,
) -> Result<String> {
    let system = plumbing.system();
    let cluster = plumbing.cluster();
    let (a, b) = (cluster.pod(0, 0), cluster.pod(1, 0));
    let to = plumbing.addr(1, 0, test.ip_family())?;
    let d = settings.duration;
    let max = UDP_MAX_PER_SECOND.saturating_mul(d.as_secs_f64().ceil().max(1.0) as u64);
    let u = udp_blast(&a.ns, &b.ns, to, UDP_PAYLOAD, d, max)?;
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

/// Keeps idle CPUs out of deep sleep while it lives, if `settings` ask for it: every
/// system's round trips run on the same machine state (see `RrIdle`).
pub(super) fn awake(settings: &Settings) -> Result<Option<CpuLatencyHold>> {
    Ok(match settings.rr_idle {
        RrIdle::Poll => Some(CpuLatencyHold::acquire()?),
        RrIdle::Sleep => None,
    })
}

/// `rr` (or `rr-v6`): 1-byte round trips between host 0's and host 1's first pods.
fn rr_round(
    data: &mut Data,
    plumbing: &Plumbing<'_>,
    test: Test,
    settings: &Settings,
) -> Result<String> {
    let system = plumbing.system();
    let cluster = plumbing.cluster();
    let (a, b) = (cluster.pod(0, 0), cluster.pod(1, 0));
    let to = plumbing.addr(1, 0, test.ip_family())?;
    let d = settings.duration;
    let _awake = awake(settings)?;
    let wake = wakeup_cost(WAKE_SAMPLES)?;
    let max = RR_MAX_PER_SECOND.saturating_mul(d.as_secs_f64().ceil().max(1.0) as u64);
    let h = tcp_rr(&a.ns, &b.ns, to, d, max, STALL)?;
    ensure!(!h.is_empty(), "no round trip completed");
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let wake_us = wake.as_secs_f64() * 1e6;
    data.push(system, test, "p50", us(0.50));
    data.push(system, test, "p99", us(0.99));
    data.push(system, test, "p99.9", us(0.999));
    data.push(system, test, "wake p50", wake_us);
    Ok(format!(
        "p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  ({} round trips; idle CPUs {}, \
         a wake-up {wake_us:.1} µs)",
        us(0.50),
        us(0.99),
        us(0.999),
        h.len(),
        settings.rr_idle,
    ))
}

/// `crr`: TCP connections one after another between host 0's and host 1's first pods.
fn crr_round(data: &mut Data, plumbing: &Plumbing<'_>, settings: &Settings) -> Result<String> {
    let (system, test) = (plumbing.system(), Test::Crr);
    let cluster = plumbing.cluster();
    let (a, b) = (cluster.pod(0, 0), cluster.pod(1, 0));
    let d = settings.duration;
    let _awake = awake(settings)?;
    let max = CRR_MAX_PER_SECOND.saturating_mul(d.as_secs_f64().ceil().max(1.0) as u64);
    let r = tcp_crr(&a.ns, &b.ns, plumbing.ip(1, 0), d, max, STALL)?;
    ensure!(r.connections > 0, "no connection completed");
    let us = |q: f64| r.times.value_at_quantile(q) as f64 / 1e3;
    data.push(system, test, "rate", r.per_second());
    data.push(system, test, "p50", us(0.50));
    data.push(system, test, "p99", us(0.99));
    Ok(format!(
        "{:.0} connections/s  p50 {:.1} µs  p99 {:.1} µs  ({} connections)",
        r.per_second(),
        us(0.50),
        us(0.99),
        r.connections
    ))
}

/// The streams of `tcp4` (or `tcp4-v6`): [`TCP4_STREAMS`] flows from host 0's pods
/// to host 1's over `family`, pod `i % pods` to pod `i % pods`.
fn tcp4_flows<'c>(plumbing: &Plumbing<'c>, family: IpFamily) -> Result<Vec<Flow<'c>>> {
    let cluster = plumbing.cluster();
    let m = cluster.pods_per_host();
    (0..TCP4_STREAMS)
        .map(|i| {
            Ok(Flow {
                client: &cluster.pod(0, i % m).ns,
                server: &cluster.pod(1, i % m).ns,
                server_ip: plumbing.addr(1, i % m, family)?,
            })
        })
        .collect()
}

/// Runs `flows` with iperf3 at once for `d`: one iperf3 test per distinct pod pair,
/// with as many parallel streams as `flows` has for that pair, so the load matches
/// what [`tcp_streams`] puts on the same flows. Returns the summed Gbit/s.
fn iperf3_streams(flows: &[Flow<'_>], d: Duration) -> Result<f64> {
    let mut pairs: Vec<(Flow<'_>, usize)> = Vec::new();
    for f in flows {
        match pairs
            .iter_mut()
            .find(|(p, _)| std::ptr::eq(p.client, f.client) && p.server_ip == f.server_ip)
        {
            Some((_, n)) => *n += 1,
            None => pairs.push((*f, 1)),
        }
    }
    std::thread::scope(|s| {
        let runs: Vec<_> = pairs
            .iter()
            .map(|(f, n)| {
                s.spawn(move || crate::iperf::tcp(f.client, f.server, f.server_ip, *n, d))
            })
            .collect();
        let mut gbit = 0.0;
        for run in runs {
            let t = run
                .join()
                .map_err(|_| anyhow::anyhow!("an iperf3 run panicked"))??;
            gbit += t.gbit_per_s();
        }
        Ok(gbit)
    })
}

/// The processes whose CPU time counts as a system's work: the weft daemons, this
/// process (the traffic generator's threads, with the kernel's work in their system
/// calls) and the ksoftirqd threads (the rest of the kernel's).
pub(super) fn all_cpu_pids(plumbing: &Plumbing<'_>) -> Vec<u32> {
    let mut all = plumbing.weftd_pids();
    all.push(std::process::id());
    all.extend(ksoftirqd_pids());
    all
}

/// Sums the CPU seconds of the processes `pids`.
pub(super) fn cpu_seconds(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&p| process_cpu_seconds(p)).sum()
}

/// CNI ADD of `pod` (a fresh namespace) on its host through the system's CNI plugin,
/// as a kubelet calls it; checks the address is in the host's subnet. `attached`
/// records the pod as soon as the plugin has attached it, for [`release`].
fn cni_add<'p>(
    plumbing: &Plumbing<'_>,
    pod: &'p Pod,
    attached: &mut Vec<&'p Pod>,
) -> Result<Duration> {
    let host = &plumbing.cluster().underlay().hosts()[pod.host];
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
    if plumbing.dual_stack() {
        let subnet6 = crate::weft::pod_subnet6(host);
        let ip6 = out.ipv6()?;
        ensure!(
            ip6.is_some_and(|ip6| subnet6.contains(&ip6)),
            "ADD of {id} on a dual-stack system gave IPv6 address {ip6:?}, not one in \
             host {}'s IPv6 subnet {subnet6}",
            pod.host
        );
    }
    Ok(out.elapsed)
}

/// CNI DEL of the first pod of `attached`, which it leaves once detached.
fn cni_del_first(plumbing: &Plumbing<'_>, attached: &mut Vec<&Pod>) -> Result<Duration> {
    let pod = *attached.first().context("no pod attached")?;
    let host = &plumbing.cluster().underlay().hosts()[pod.host];
    let network = plumbing.network(pod.host).context("CNI network")?;
    let id = super::cluster::container_id(pod);
    let out = network.call(Verb::Del, &host.ns, &id, &pod.ns.path(), POD_IFNAME)?;
    attached.remove(0);
    Ok(out.elapsed)
}

/// After a failure: CNI DEL of every pod still `attached`, errors ignored, so that
/// nothing is left attached when their namespaces go.
fn release(plumbing: &Plumbing<'_>, attached: Vec<&Pod>) {
    let hosts = plumbing.cluster().underlay().hosts();
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
            add.push(cni_add(plumbing, pod, &mut attached)?);
        }
        while !attached.is_empty() {
            crate::stop::check()?;
            del.push(cni_del_first(plumbing, &mut attached)?);
        }
        Ok(())
    })();
    // After a failure, release what is still attached before the namespaces go.
    release(plumbing, attached);
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

/// Attaches `n` fresh pods to host 0's weftd through weft-cni (as [`cni_round`] does),
/// then, with all of them attached, measures that weftd's idle CPU (its CPU time over
/// [`MEM_IDLE`] without traffic, [`MEM_SETTLE`] after a [`MEM_BURST`] of round trips
/// between two pods) and its resident memory; then detaches them all again.
fn mem_round(data: &mut Data, plumbing: &Plumbing<'_>, n: usize) -> Result<String> {
    let system = plumbing.system();
    let cluster = plumbing.cluster();
    let (Some(node), Some(_)) = (plumbing.node(0), plumbing.network(0)) else {
        return Ok("n/a".into());
    };
    let pid = node.pid();
    let started = Instant::now();
    let pods = (0..n)
        .map(|i| Pod::new(0, &format!("m{i}")))
        .collect::<Result<Vec<_>>>()?;
    let mut attached = Vec::with_capacity(n);
    let result = (|| -> Result<(u64, f64, u64)> {
        for pod in &pods {
            crate::stop::check()?;
            cni_add(plumbing, pod, &mut attached)?;
        }
        crate::stop::check()?;
        let (a, b) = (cluster.pod(0, 0), cluster.pod(1, 0));
        let max = RR_MAX_PER_SECOND.saturating_mul(MEM_BURST.as_secs().max(1));
        let burst = tcp_rr(&a.ns, &b.ns, plumbing.ip(1, 0), MEM_BURST, max, STALL)?;
        ensure!(!burst.is_empty(), "no round trip completed in the burst");
        sleep_unless_stopped(MEM_SETTLE)?;
        let cpu_before = process_cpu_time(pid)?;
        let window = Instant::now();
        sleep_unless_stopped(MEM_IDLE)?;
        let cpu = process_cpu_time(pid)?.saturating_sub(cpu_before);
        let idle = percent_of_core(cpu, window.elapsed());
        let rss = process_rss_bytes(pid)?;
        while !attached.is_empty() {
            crate::stop::check()?;
            cni_del_first(plumbing, &mut attached)?;
        }
        Ok((rss, idle, burst.len()))
    })();
    // After a failure, release what is still attached before the namespaces go.
    release(plumbing, attached);
    let (rss, idle, round_trips) = result?;
    data.push(system, Test::Mem, "rss", mib(rss));
    data.push(system, Test::Mem, "idle cpu", idle);
    Ok(format!(
        "{n} pods on host 0's weftd: rss {:.1} MiB, idle cpu {idle:.3}% of a core \
         (over {:.0} s, {:.1} s after {round_trips} round trips) ({:.1} s)",
        mib(rss),
        MEM_IDLE.as_secs_f64(),
        MEM_SETTLE.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ))
}

/// Sleeps for `d`, failing early with "interrupted" if an interrupt asks the run to stop.
fn sleep_unless_stopped(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    loop {
        crate::stop::check()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// `cpu` time used over `wall` time, as percent of one core.
fn percent_of_core(cpu: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
}

/// `bytes` in MiB.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
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

    #[test]
    fn mem_units() {
        let s = Duration::from_secs;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(percent_of_core(Duration::from_millis(30), s(3)), 1.0));
        assert!(close(
            percent_of_core(Duration::from_micros(300), s(3)),
            0.01
        ));
        assert!(close(percent_of_core(s(6), s(3)), 200.0));
        assert_eq!(percent_of_core(Duration::ZERO, s(3)), 0.0);
        assert_eq!(percent_of_core(s(1), Duration::ZERO), 0.0);
        assert_eq!(mib(21 * 1024 * 1024 + 512 * 1024), 21.5);
        assert_eq!(mib(0), 0.0);
    }

    #[test]
    fn v6_rows_say_not_measured_on_systems_without_ipv6() {
        let settings = Settings {
            systems: vec![System::KernelVxlan, System::Direct],
            tests: vec![Test::Udp64, Test::Udp64V6],
            ..Settings::default()
        };
        let mut data = Data::default();
        for (test, pps) in [(Test::Udp64, 0.08), (Test::Udp64V6, 0.07)] {
            data.push(System::KernelVxlan, test, "received", pps);
            data.push(System::KernelVxlan, test, "loss", 0.0);
        }
        data.push(System::Direct, Test::Udp64, "received", 0.1);
        data.push(System::Direct, Test::Udp64, "loss", 0.0);
        let rows = data.rows(&settings);
        assert_eq!(rows.len(), 8);
        let find = |system: &str, test: &str| {
            rows.iter()
                .find(|r| r.system == system && r.test == test && r.metric == "received")
                .unwrap_or_else(|| panic!("no row {system} {test}: {rows:?}"))
        };
        assert_eq!(find("kernel-vxlan", "udp64-v6").value, Some(0.07));
        assert_eq!(find("direct", "udp64").value, Some(0.1));
        let skipped = find("direct", "udp64-v6");
        assert_eq!(skipped.value, None);
        assert!(skipped.runs.is_empty());
        let note = skipped.note.as_deref().unwrap_or_default();
        assert!(
            note.starts_with("not measured: no IPv6 between hosts"),
            "{note}"
        );
        // Rows follow Test::ALL: each IPv6 variant after its IPv4 test.
        let order: Vec<&str> = rows.iter().map(|r| r.test.as_str()).collect();
        assert_eq!(order[..4], ["udp64"; 4]);
        assert_eq!(order[4..], ["udp64-v6"; 4]);
    }

    #[test]
    fn mem_rows_take_medians_and_kernel_systems_are_not_applicable() {
        let settings = Settings {
            systems: vec![System::WeftVxlan, System::KernelVxlan],
            tests: vec![Test::Mem],
            ..Settings::default()
        };
        let mut data = Data::default();
        for (rss, idle) in [(20.0, 0.05), (22.0, 0.5), (21.0, 0.1)] {
            data.push(System::WeftVxlan, Test::Mem, "rss", rss);
            data.push(System::WeftVxlan, Test::Mem, "idle cpu", idle);
        }
        let rows = data.rows(&settings);
        let find = |system: &str, metric: &str| {
            rows.iter()
                .find(|r| r.system == system && r.test == "mem" && r.metric == metric)
                .unwrap_or_else(|| panic!("no row {system} {metric}: {rows:?}"))
        };
        let rss = find("weft-vxlan", "rss");
        assert_eq!((rss.value, rss.unit.as_str()), (Some(21.0), "MiB"));
        assert_eq!(rss.runs, [20.0, 22.0, 21.0]);
        let idle = find("weft-vxlan", "idle cpu");
        assert_eq!((idle.value, idle.unit.as_str()), (Some(0.1), "%"));
        for metric in ["rss", "idle cpu"] {
            let row = find("kernel-vxlan", metric);
            assert_eq!(row.value, None);
            assert!(row.runs.is_empty());
            assert!(
                row.note
                    .as_deref()
                    .is_some_and(|n| n.starts_with("not applicable")),
                "{row:?}"
            );
        }
        assert_eq!(rows.len(), 4);
    }
}
