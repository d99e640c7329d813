//! Probes: an update that changes a local pod's rules, timed from its write to the
//! moment weftd's verdict follows it; and the churn, with probes beside it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use weft_proto::{ExplainRequest, Reply, Request};

use super::cluster::{self, Churn, Update, PROBE_NS, PROBE_PORT, PROBE_SOURCE, PROBE_TARGET};
use super::feed::Feeder;
use super::{median, ChurnReport, ScaleSettings};
use crate::procfs;
use crate::weft::WeftNode;

/// The pause between two probes beside the churn.
const PROBE_GAP: Duration = Duration::from_millis(100);

/// Probe latencies.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Probes.
    pub count: usize,
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank), in milliseconds.
    pub p99_ms: f64,
    /// The longest, in milliseconds.
    pub max_ms: f64,
    /// The poll interval, in milliseconds: with one query's time, the resolution.
    pub poll_ms: f64,
    /// One query's median time, in milliseconds.
    pub query_ms: f64,
}

/// The `q` quantile of `v`, nearest rank.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    let rank = (q * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

impl Latency {
    fn of(ms: &[f64], poll: Duration, query_ms: &[f64]) -> Latency {
        Latency {
            count: ms.len(),
            p50_ms: quantile(ms, 0.5),
            p99_ms: quantile(ms, 0.99),
            max_ms: quantile(ms, 1.0),
            poll_ms: poll.as_secs_f64() * 1e3,
            query_ms: median(query_ms),
        }
    }

    /// One line for a terminal.
    pub fn summary(&self) -> String {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} probes (poll {:.1} ms, a query {:.2} ms)",
            self.p50_ms, self.p99_ms, self.max_ms, self.count, self.poll_ms, self.query_ms
        )
    }
}

/// Flips the probe source's label and waits for weftd's verdict to follow.
pub(super) struct Prober<'a> {
    node: &'a WeftNode,
    feeder: &'a dyn Feeder,
    poll: Duration,
    timeout: Duration,
    /// Whether the probe policy admits the source now.
    admitted: bool,
    query_ms: Vec<f64>,
}

impl<'a> Prober<'a> {
    /// A prober; weftd must deny the source now, as the cluster was written.
    pub(super) fn new(
        node: &'a WeftNode,
        feeder: &'a dyn Feeder,
        poll: Duration,
        timeout: Duration,
    ) -> Result<Prober<'a>> {
        let mut p = Prober {
            node,
            feeder,
            poll,
            timeout,
            admitted: false,
            query_ms: Vec::new(),
        };
        if p.allowed()? {
            bail!(
                "weftd allows the probe source before any probe: the probe policy is not in force"
            );
        }
        Ok(p)
    }

    /// weftd's verdict on the probe source reaching the target on the probe port.
    fn allowed(&mut self) -> Result<bool> {
        let t = Instant::now();
        let reply = self.node.ok(&Request::PolicyExplain(ExplainRequest {
            src: format!("{PROBE_NS}/{PROBE_SOURCE}"),
            dst: format!("{PROBE_NS}/{PROBE_TARGET}"),
            protocol: "TCP".into(),
            port: Some(PROBE_PORT),
            src_port: None,
        }))?;
        self.query_ms.push(t.elapsed().as_secs_f64() * 1e3);
        match reply {
            Reply::Explained(e) => Ok(e.allowed),
            other => bail!("unexpected reply to explain: {other:?}"),
        }
    }

    /// One probe: the time from the write to the verdict that follows it.
    pub(super) fn flip(&mut self) -> Result<Duration> {
        let want = !self.admitted;
        let t0 = Instant::now();
        self.feeder
            .apply(&Update::Put(cluster::probe_source(want)))?;
        loop {
            if self.allowed()? == want {
                self.admitted = want;
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > self.timeout {
                bail!(
                    "weftd did not follow a probe within {:?} (it still says {})",
                    self.timeout,
                    if want { "denied" } else { "allowed" }
                );
            }
            std::thread::sleep(self.poll);
        }
    }

    /// `n` probes one after another.
    pub(super) fn run(&mut self, n: usize) -> Result<Latency> {
        self.query_ms.clear();
        let mut ms = Vec::with_capacity(n);
        for _ in 0..n {
            ms.push(self.flip()?.as_secs_f64() * 1e3);
        }
        Ok(Latency::of(&ms, self.poll, &self.query_ms))
    }
}

/// Streams the churn at the rate asked for, bounded in count and time, with probes
/// beside it; then one last probe, after which weftd has every update. `idle` is
/// weftd's idle CPU, in cores.
pub(super) fn churn(
    settings: &ScaleSettings,
    prober: &mut Prober<'_>,
    idle: f64,
) -> Result<ChurnReport> {
    let pid = prober.node.pid();
    let feeder = prober.feeder;
    let mut gen = Churn::new(settings.sizes, settings.seed);
    let updates: Vec<Update> = (0..settings.churn).map(|_| gen.next_update()).collect();
    let written = AtomicUsize::new(0);
    let rate = settings.churn_rate.max(0.001);
    prober.query_ms.clear();
    let cpu0 = procfs::process_cpu_time(pid)?;
    let t0 = Instant::now();
    let (stream, probes) = std::thread::scope(|s| {
        let stream = s.spawn(|| -> Result<()> {
            let end = t0 + settings.churn_time;
            for (i, u) in updates.iter().enumerate() {
                let at = t0 + Duration::from_secs_f64(i as f64 / rate);
                if at > end {
                    break;
                }
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                feeder.apply(u).context("a churn update")?;
                written.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        let mut ms = Vec::new();
        let mut failed = None;
        while !stream.is_finished() && failed.is_none() {
            match prober.flip() {
                Ok(d) => ms.push(d.as_secs_f64() * 1e3),
                Err(e) => failed = Some(e),
            }
            std::thread::sleep(PROBE_GAP);
        }
        let stream = stream
            .join()
            .unwrap_or_else(|_| bail!("the churn panicked"));
        (stream, failed.map_or(Ok(ms), Err))
    });
    stream?;
    let mut ms = probes?;
    // The last probe comes after every churn update: when weftd has it, it has them.
    let last = prober.flip()?;
    ms.push(last.as_secs_f64() * 1e3);
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = (procfs::process_cpu_time(pid)? - cpu0).as_secs_f64();
    let updates = written.load(Ordering::Relaxed);
    let total = (updates + ms.len()) as f64;
    let per_1000 = |cpu: f64| {
        if total > 0.0 {
            cpu / total * 1000.0
        } else {
            0.0
        }
    };
    Ok(ChurnReport {
        updates,
        probe_updates: ms.len(),
        seconds,
        rate: settings.churn_rate,
        cpu_seconds: cpu,
        cpu_per_1000: per_1000(cpu),
        cpu_per_1000_net: per_1000((cpu - idle * seconds).max(0.0)),
        probes: Latency::of(&ms, prober.poll, &prober.query_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
    }
}
