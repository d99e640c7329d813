//! What heartbeats cost an idle weftd: the same weftd with thousands of peers and
//! with none, in one invocation, each measured over the same span, in alternation.
//!
//! The peers are fake nodes of a peers file; their underlay addresses are routed
//! into a sink ([`super::sink`]), so every heartbeat is sent for real, leaves the
//! namespace's stack, and is dropped with no neighbour entry made per peer.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde::Serialize;

use super::cluster::{fake_node, subnet, CLUSTER_CIDR, FAKE_UNDERLAY, MAX_NODES};
use super::{median, sink, Sink};
use crate::netns::wait_until;
use crate::procfs;
use crate::topo::Underlay;
use crate::weft::{write_atomic, Scratch, WeftNode, WeftOptions};

/// What the measurement does.
#[derive(Debug, Clone)]
pub struct IdleSettings {
    /// The weftd binary.
    pub weftd: std::path::PathBuf,
    /// Peers of the busy weftd.
    pub peers: usize,
    /// The span each weftd is measured over.
    pub span: Duration,
    /// How long a weftd settles after its start before it is measured.
    pub settle: Duration,
    /// Rounds; each measures both weftds.
    pub rounds: usize,
    /// weftd's heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// Where the peers' underlay addresses lead.
    pub sink: Sink,
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Peers of the busy weftd.
    pub peers: usize,
    /// Seconds each measurement spans.
    pub span_seconds: f64,
    /// The heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// CPU with the peers, in % of one core, each round.
    pub with_peers_percent: Vec<f64>,
    /// CPU with no peer, in % of one core, each round.
    pub no_peers_percent: Vec<f64>,
    /// Heartbeats sent each second with the peers (from `weft peers`).
    pub beats_per_second: f64,
    /// Sends that failed, over the measurements with the peers.
    pub send_errors: u64,
    /// Where the heartbeats went.
    pub sink: Sink,
}

impl IdleReport {
    /// The median with the peers, less the median with none, in % of a core.
    pub fn heartbeat_percent(&self) -> f64 {
        median(&self.with_peers_percent) - median(&self.no_peers_percent)
    }

    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let with = median(&self.with_peers_percent);
        let none = median(&self.no_peers_percent);
        format!(
            "idle weftd over {:.0} s, heartbeat every {} ms, into a {:?} sink, medians of {} rounds:\n\
             {} peers: {with:.3} % of a core ({:.0} heartbeats/s, {} send errors)\n\
             0 peers: {none:.3} % of a core\n\
             heartbeats: {:.3} % of a core ({:.2}x the weftd with no peers)\n",
            self.span_seconds,
            self.heartbeat_ms,
            self.sink,
            self.with_peers_percent.len(),
            self.peers,
            self.beats_per_second,
            self.send_errors,
            self.heartbeat_percent(),
            if none > 0.0 { with / none } else { f64::NAN },
        )
    }
}

/// A peers file of fake nodes `0..n`.
fn peers_file(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let f = fake_node(i);
        out += &format!(
            "[[node]]\nname = \"{}\"\nunderlay-ip = \"{}\"\npod-subnet = \"{}\"\nvtep-mac = \"{}\"\n\n",
            f.name, f.underlay, f.subnet, f.mac
        );
    }
    out
}

/// One weftd with `peers` peers, measured idle: its CPU in % of a core, the
/// heartbeats it sent a second, and its failed sends.
fn one(
    settings: &IdleSettings,
    underlay: &Underlay,
    scratch: &Scratch,
    peers: usize,
) -> Result<(f64, f64, u64)> {
    let host = underlay.host(0);
    let file = scratch.path().join(format!("peers-{peers}.toml"));
    write_atomic(&file, &peers_file(peers))?;
    let opts = WeftOptions {
        binary: settings.weftd.clone(),
        mode: "vxlan".into(),
        workers: 1,
        extra: vec![
            "--cluster-cidr".into(),
            CLUSTER_CIDR.into(),
            "--heartbeat-ms".into(),
            settings.heartbeat_ms.to_string(),
        ],
    };
    let store = [
        "--pod-subnet".to_owned(),
        subnet(MAX_NODES).to_string(),
        "--peers".to_owned(),
        file.display().to_string(),
    ];
    let ready = Duration::from_secs(60);
    let node = WeftNode::start_with_store(host, scratch.path(), &opts, &store, ready)?;
    wait_until(ready, "weftd's peers", || {
        node.status().is_ok_and(|s| s.peers == peers)
    })?;
    std::thread::sleep(settings.settle);
    let sent = |node: &WeftNode| -> Result<(u64, u64)> {
        let rows = node.peers()?;
        let beats = rows
            .iter()
            .filter_map(|p| p.health.as_ref())
            .map(|h| h.heartbeats_sent);
        let errors = rows
            .iter()
            .flat_map(|p| &p.counters.drops)
            .filter(|(why, _)| why == "tx_error");
        Ok((beats.sum(), errors.map(|(_, n)| n).sum()))
    };
    let before = sent(&node)?;
    let pid = node.pid();
    let cpu0 = procfs::process_cpu_time(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(settings.span);
    let cpu = (procfs::process_cpu_time(pid)? - cpu0).as_secs_f64();
    let secs = t0.elapsed().as_secs_f64();
    let after = sent(&node)?;
    node.stop()?;
    let rate = (after.0 - before.0) as f64 / secs;
    Ok((cpu / secs * 100.0, rate, after.1 - before.1))
}

/// Measures the heartbeats' idle cost.
pub fn measure(settings: &IdleSettings, note: &mut dyn FnMut(String)) -> Result<IdleReport> {
    ensure!(
        (1..=MAX_NODES).contains(&settings.peers),
        "--peers must be 1 to {MAX_NODES}"
    );
    let scratch = Scratch::new("perf")?;
    let underlay = Underlay::new("id", 1)?;
    sink(&underlay.host(0).ns, FAKE_UNDERLAY, settings.sink)?;
    let mut report = IdleReport {
        peers: settings.peers,
        span_seconds: settings.span.as_secs_f64(),
        heartbeat_ms: settings.heartbeat_ms,
        with_peers_percent: Vec::new(),
        no_peers_percent: Vec::new(),
        beats_per_second: 0.0,
        send_errors: 0,
        sink: settings.sink,
    };
    let mut rates = Vec::new();
    for round in 0..settings.rounds.max(1) {
        let (none, ..) = one(settings, &underlay, &scratch, 0)?;
        let (with, rate, errors) = one(settings, &underlay, &scratch, settings.peers)?;
        note(format!(
            "round {}: {} peers {with:.3} %, 0 peers {none:.3} % ({rate:.0} heartbeats/s)",
            round + 1,
            settings.peers
        ));
        report.no_peers_percent.push(none);
        report.with_peers_percent.push(with);
        report.send_errors += errors;
        rates.push(rate);
    }
    report.beats_per_second = median(&rates);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_file_lists_every_fake_node() {
        let text = peers_file(3);
        assert_eq!(text.matches("[[node]]").count(), 3);
        assert!(text.contains("name = \"scale-2\"\nunderlay-ip = \"10.251.0.3\""));
        assert!(text.contains("pod-subnet = \"100.64.2.0/24\""));
        assert_eq!(peers_file(0), "");
    }
}
