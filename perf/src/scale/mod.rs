//! `weft-perf scale`: one real weftd fed a large cluster through its store, then a
//! stream of pod churn (issue 27, part 5).
//!
//! One host namespace runs weftd; a store holds the cluster: a real etcd (bridged
//! into the namespace, as `join` does) or the Kubernetes API server fixture
//! (listening inside the namespace). The cluster is [`cluster`]'s: thousands of
//! fake nodes whose underlay addresses are routed into a sink ([`sink`]: a veth
//! that drops everything, through one gateway, so no neighbour entry is made per
//! node and heartbeats cost what they cost), pods, namespaces and policies. A run:
//!
//! 1. writes the cluster into the store, in bulk ([`feed`]);
//! 2. starts weftd and times it from its start to a complete view: every node a
//!    peer, and the policy set holding every namespace, pod and policy (`STATUS`
//!    and `POLICY STATUS`, polled); again for each `--starts`, the median counts;
//! 3. attaches the local pods (one is the probe's target) and reads weftd's RSS;
//! 4. measures weftd's idle CPU (it sends its peers heartbeats), once it has
//!    settled ([`IDLE_SETTLE`]);
//! 5. probes, quietly: an update that changes a local pod's rules (the probe
//!    source's label, which the probe policy admits or not), then `POLICY
//!    EXPLAIN` every `--poll` until weftd's verdict follows; the time from the
//!    write to the verdict, whose resolution is the poll interval plus one query;
//! 6. streams the churn ([`cluster::Churn`]: pods added, deleted, relabelled) at
//!    `--churn-rate`, bounded in count and time, with probes running beside it,
//!    and a last probe after it: once weftd has that, it has every update before
//!    it. weftd's CPU over that span, per 1,000 updates, with and without its idle
//!    CPU taken off.
//!
//! [`idle`] measures the heartbeats alone: weftd idle with thousands of peers
//! against the same weftd with none.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use weft_proto::{PodRef, Reply, Request};

use crate::netns::{wait_until, Netns};
use crate::procfs;
use crate::topo::{Host, Pod, Underlay};
use crate::weft::{node_name, Scratch, WeftNode, WeftOptions};

pub mod cluster;
pub mod feed;
pub mod idle;
mod probe;

use cluster::{Sizes, CLUSTER_CIDR, FAKE_UNDERLAY};
use feed::{EtcdFeeder, Feeder, KubeFeeder};
pub use probe::Latency;
use probe::Prober;

/// How long weftd settles before its idle CPU is measured: longer than the saved
/// view's period, so its last write after the start is over.
pub const IDLE_SETTLE: Duration = Duration::from_secs(12);

/// The store a run feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// etcd, with weft's key layout.
    Etcd,
    /// The Kubernetes API server (the fixture).
    Kubernetes,
}

impl std::str::FromStr for StoreKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<StoreKind> {
        match s {
            "etcd" => Ok(StoreKind::Etcd),
            "kubernetes" => Ok(StoreKind::Kubernetes),
            _ => bail!("--store {s:?}: etcd or kubernetes"),
        }
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct ScaleSettings {
    /// The cluster's sizes.
    pub sizes: Sizes,
    /// The store.
    pub store: StoreKind,
    /// The weftd binary.
    pub weftd: PathBuf,
    /// weftd's worker threads.
    pub workers: usize,
    /// Times weftd is started on the fed store, each timed to a complete view.
    pub starts: usize,
    /// The longest a start may take to a complete view.
    pub view_timeout: Duration,
    /// Seconds of idle CPU measured.
    pub idle: Duration,
    /// Probes with no churn.
    pub probes: usize,
    /// How often a probe asks weftd.
    pub poll: Duration,
    /// The longest a probe waits.
    pub probe_timeout: Duration,
    /// Churn updates, at most.
    pub churn: usize,
    /// Churn updates a second.
    pub churn_rate: f64,
    /// The longest the churn runs.
    pub churn_time: Duration,
    /// The churn's seed.
    pub seed: u64,
    /// Where the fake nodes' underlay addresses lead.
    pub sink: Sink,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    /// The store.
    pub store: StoreKind,
    /// The cluster's sizes.
    pub sizes: Sizes,
    /// Records written into the store.
    pub records: usize,
    /// Seconds the bulk write took.
    pub feed_seconds: f64,
    /// Each start: seconds from weftd's start until it answered on its socket.
    pub answer_seconds: Vec<f64>,
    /// Each start: seconds from weftd's start to its complete view.
    pub view_seconds: Vec<f64>,
    /// Attaching each local pod, in milliseconds (on the first start).
    pub attach_ms: Vec<f64>,
    /// weftd's RSS with the complete view and the local pods, in MiB.
    pub rss_mib: f64,
    /// weftd's RSS after the churn, in MiB.
    pub rss_after_churn_mib: f64,
    /// weftd's CPU while idle, in % of one core.
    pub idle_cpu_percent: f64,
    /// Probes with no churn.
    pub quiet: Latency,
    /// The churn.
    pub churn: ChurnReport,
    /// Where the fake nodes' heartbeats went.
    pub sink: Sink,
    /// Where it ran.
    pub machine: procfs::Machine,
}

/// What the churn cost.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    /// Churn updates written.
    pub updates: usize,
    /// Probe updates written beside them (counted in the CPU per update too).
    pub probe_updates: usize,
    /// Seconds from the first update until weftd had the last.
    pub seconds: f64,
    /// The rate asked for, updates a second.
    pub rate: f64,
    /// weftd's CPU seconds over that span.
    pub cpu_seconds: f64,
    /// CPU seconds per 1,000 updates.
    pub cpu_per_1000: f64,
    /// The same with weftd's idle CPU over the span taken off.
    pub cpu_per_1000_net: f64,
    /// Probes during the churn.
    pub probes: Latency,
}

/// The median of `v` (0 for none).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Where the fake nodes' underlay addresses lead: a veth pair, through one gateway
/// with a permanent neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    /// The far end is down: the veth drops each frame as it is sent, as a NIC's
    /// driver takes it for the wire. The sender pays its whole stack, no receiver.
    Down,
    /// The far end is up, with no address: it receives each frame and drops it,
    /// in softirq work the sender's CPU pays too.
    Up,
}

impl std::str::FromStr for Sink {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Sink> {
        match s {
            "down" => Ok(Sink::Down),
            "up" => Ok(Sink::Up),
            _ => bail!("--sink {s:?}: down or up"),
        }
    }
}

/// Routes `range` in `ns` into a sink of kind `kind`: a veth pair whose near end
/// holds a /30 and a permanent neighbour entry for a gateway that is not there, so
/// one entry serves the whole range, however many addresses are sent to.
pub fn sink(ns: &Netns, range: &str, kind: Sink) -> Result<()> {
    ns.ip(&[
        "link", "add", "wsink0", "type", "veth", "peer", "name", "wsink1",
    ])?;
    if kind == Sink::Up {
        ns.link_up("wsink1")?;
    }
    ns.ip(&["addr", "add", "10.252.0.1/30", "dev", "wsink0"])?;
    ns.link_up("wsink0")?;
    ns.ip(&[
        "neigh",
        "replace",
        "10.252.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "wsink0",
        "nud",
        "permanent",
    ])?;
    // A route through a link that is down (the far end's) is still used.
    ns.ip(&["route", "add", range, "via", "10.252.0.2", "dev", "wsink0"])
        .map(drop)
}

/// Whether `weftd` has the Kubernetes store (its flags name `--kubeconfig`).
fn has_kube_store(weftd: &std::path::Path) -> Result<bool> {
    let out = std::process::Command::new(weftd)
        .arg("--help")
        .output()
        .with_context(|| format!("running {} --help", weftd.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--kubeconfig"))
}

/// The store a run feeds, started.
fn feeder(settings: &ScaleSettings, scratch: &Scratch, host: &Host) -> Result<Box<dyn Feeder>> {
    Ok(match settings.store {
        StoreKind::Etcd => Box::new(EtcdFeeder::start(&scratch.path().join("etcd"), host)?),
        StoreKind::Kubernetes => {
            if !has_kube_store(&settings.weftd)? {
                bail!(
                    "--store kubernetes: not yet: {} has no Kubernetes store (no --kubeconfig); \
                     the store is being written on main (issue 27). The feeder is ready: it \
                     fills the API server fixture with Nodes, Namespaces, Pods and NetworkPolicies",
                    settings.weftd.display()
                );
            }
            Box::new(KubeFeeder::start(scratch.path(), host)?)
        }
    })
}

/// Runs the benchmark; `note` hears what it is doing.
pub fn run(settings: &ScaleSettings, note: &mut dyn FnMut(String)) -> Result<ScaleReport> {
    settings.sizes.check()?;
    let scratch = Scratch::new("perf")?;
    let underlay = Underlay::new("sc", 1)?;
    let host = underlay.host(0);
    sink(&host.ns, FAKE_UNDERLAY, settings.sink)?;
    let feeder = feeder(settings, &scratch, host)?;
    let me = node_name(host);
    let s = &settings.sizes;
    note(format!(
        "feeding {} nodes, {} pods, {} policies in {} namespaces into {}",
        s.nodes,
        s.pods,
        s.policies,
        s.namespaces,
        feeder.store()
    ));
    let fed = Instant::now();
    let records = feeder.load(
        s.nodes,
        (&me, host.underlay_ip),
        &mut cluster::objects(s, &me),
    )?;
    let feed_seconds = fed.elapsed().as_secs_f64();
    note(format!("wrote {records} records in {feed_seconds:.1} s"));
    let opts = WeftOptions {
        binary: settings.weftd.clone(),
        mode: "vxlan".into(),
        workers: settings.workers,
        extra: vec!["--cluster-cidr".into(), CLUSTER_CIDR.into()],
    };
    let mut starts = Starts::default();
    let mut pods = Vec::new();
    let mut node = None;
    for n in 0..settings.starts.max(1) {
        if let Some(old) = node.take() {
            WeftNode::stop(old)?;
        }
        // A restarted weftd attaches the pods of the first start again.
        let attached = if n == 0 { 0 } else { s.local_pods };
        let started = start(settings, (host, &scratch), &opts, &*feeder, attached)?;
        note(format!(
            "start {}: answering after {:.2} s, complete view after {:.2} s",
            n + 1,
            started.answer,
            started.view
        ));
        starts.answer.push(started.answer);
        starts.view.push(started.view);
        if n == 0 {
            pods = attach_local(&started.node, &underlay, s, &mut starts.attach_ms)?;
        }
        node = Some(started.node);
    }
    let node = node.context("no start")?;
    let report = measure(settings, &node, &*feeder, starts, note);
    let report = report.map(|r| ScaleReport {
        records,
        feed_seconds,
        ..r
    });
    if report.is_err() {
        note(format!("weftd's log:\n{}", tail(&node.log_text(), 40)));
    }
    node.stop()?;
    drop(pods);
    report
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The starts' figures.
#[derive(Debug, Default)]
struct Starts {
    answer: Vec<f64>,
    view: Vec<f64>,
    attach_ms: Vec<f64>,
}

/// A weftd started, with how long it took.
struct Started {
    node: WeftNode,
    answer: f64,
    view: f64,
}

/// Starts weftd and waits for its complete view.
fn start(
    settings: &ScaleSettings,
    (host, scratch): (&Host, &Scratch),
    opts: &WeftOptions,
    feeder: &dyn Feeder,
    attached: usize,
) -> Result<Started> {
    let t0 = Instant::now();
    let args = feeder.weftd_args();
    let node =
        WeftNode::start_with_store(host, scratch.path(), opts, &args, settings.view_timeout)?;
    let answer = t0.elapsed().as_secs_f64();
    let left = settings.view_timeout.saturating_sub(t0.elapsed());
    wait_complete(&node, &settings.sizes, attached, left)
        .with_context(|| tail(&node.log_text(), 20))?;
    Ok(Started {
        node,
        answer,
        view: t0.elapsed().as_secs_f64(),
    })
}

/// What weftd holds now: (peers, namespaces, pods, policies).
fn holds(node: &WeftNode) -> Result<(usize, usize, usize, usize)> {
    let peers = node.status()?.peers;
    match node.ok(&Request::PolicyStatus)? {
        Reply::PolicyStatus(p) => Ok((peers, p.namespaces, p.pods, p.policies.len())),
        other => bail!("unexpected reply to policy status: {other:?}"),
    }
}

/// Waits until weftd has every node as a peer and every object in its policy set,
/// with `attached` local pods attached.
fn wait_complete(node: &WeftNode, sizes: &Sizes, attached: usize, within: Duration) -> Result<()> {
    let (namespaces, pods, policies) = cluster::expected_counts(sizes, attached);
    let want = (sizes.nodes, namespaces, pods, policies);
    let mut last = None;
    let done = wait_until(within, "weftd's complete view", || {
        // The peers first: the policy status is the larger answer.
        match node.status() {
            Ok(s) if s.peers == sizes.nodes => {}
            Ok(s) => {
                last = Some(format!("{} peers", s.peers));
                std::thread::sleep(Duration::from_millis(50));
                return false;
            }
            Err(_) => return false,
        }
        let now = holds(node).ok();
        last = now.map(|h| format!("(peers, namespaces, pods, policies) = {h:?}"));
        now == Some(want)
    });
    done.with_context(|| {
        format!(
            "weftd holds {}, not {want:?}",
            last.unwrap_or_else(|| "nothing yet".into())
        )
    })
}

/// Attaches the local pods, as their runtime would with `K8S_POD_*` set; times each.
fn attach_local(
    node: &WeftNode,
    underlay: &Underlay,
    sizes: &Sizes,
    times: &mut Vec<f64>,
) -> Result<Vec<Pod>> {
    let mut pods = Vec::new();
    for (j, (namespace, name)) in cluster::local_pod_refs(sizes).into_iter().enumerate() {
        let pod = underlay.pod(0, &format!("l{j}"))?;
        let t = Instant::now();
        node.attach_as(
            &pod,
            &format!("scale-{j}"),
            Some(PodRef { namespace, name }),
        )?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        pods.push(pod);
    }
    Ok(pods)
}

/// weftd's RSS in MiB.
fn rss_mib(node: &WeftNode) -> Result<f64> {
    Ok(procfs::process_rss_bytes(node.pid())? as f64 / (1024.0 * 1024.0))
}

/// Steps 3 to 6 of a run, on a weftd with its complete view.
fn measure(
    settings: &ScaleSettings,
    node: &WeftNode,
    feeder: &dyn Feeder,
    starts: Starts,
    note: &mut dyn FnMut(String),
) -> Result<ScaleReport> {
    let rss = rss_mib(node)?;
    let pid = node.pid();
    // What the start and the attachments left to do (the saved view's last
    // write, at most a period after the last change) is no idle work.
    std::thread::sleep(IDLE_SETTLE);
    let cpu0 = procfs::process_cpu_time(pid)?;
    std::thread::sleep(settings.idle);
    let idle = (procfs::process_cpu_time(pid)? - cpu0).as_secs_f64() / settings.idle.as_secs_f64();
    note(format!(
        "RSS {rss:.1} MiB; idle CPU {:.2} % of a core",
        idle * 100.0
    ));
    let mut prober = Prober::new(node, feeder, settings.poll, settings.probe_timeout)?;
    let quiet = prober.run(settings.probes)?;
    note(format!("quiet probes: {}", quiet.summary()));
    let churn = probe::churn(settings, &mut prober, idle)?;
    note(format!(
        "churn: {} updates (+{} probes) in {:.1} s: {:.3} CPU s per 1,000 ({:.3} net of idle); probes {}",
        churn.updates,
        churn.probe_updates,
        churn.seconds,
        churn.cpu_per_1000,
        churn.cpu_per_1000_net,
        churn.probes.summary()
    ));
    Ok(ScaleReport {
        store: settings.store,
        sizes: settings.sizes,
        records: 0,
        feed_seconds: 0.0,
        answer_seconds: starts.answer,
        view_seconds: starts.view,
        attach_ms: starts.attach_ms,
        rss_mib: rss,
        rss_after_churn_mib: rss_mib(node)?,
        idle_cpu_percent: idle * 100.0,
        quiet,
        churn,
        sink: settings.sink,
        machine: procfs::Machine::describe(),
    })
}

impl ScaleReport {
    /// The figures as a table for a terminal.
    pub fn table(&self) -> String {
        let s = &self.sizes;
        let ms = |v: f64| format!("{v:.1} ms");
        let rows = [
            ("store", format!("{:?}", self.store).to_lowercase()),
            (
                "cluster",
                format!(
                    "{} nodes, {} pods, {} policies, {} namespaces; {} local pods",
                    s.nodes, s.pods, s.policies, s.namespaces, s.local_pods
                ),
            ),
            (
                "bulk write",
                format!("{} records in {:.1} s", self.records, self.feed_seconds),
            ),
            (
                "start to complete view",
                format!(
                    "{:.2} s median of {} ({})",
                    median(&self.view_seconds),
                    self.view_seconds.len(),
                    list(&self.view_seconds, "s")
                ),
            ),
            (
                "start to answering",
                format!("{:.2} s median", median(&self.answer_seconds)),
            ),
            ("CNI attach, median", ms(median(&self.attach_ms))),
            (
                "RSS",
                format!(
                    "{:.1} MiB with the view; {:.1} MiB after the churn",
                    self.rss_mib, self.rss_after_churn_mib
                ),
            ),
            (
                "idle CPU",
                format!("{:.2} % of a core", self.idle_cpu_percent),
            ),
            (
                "CPU per 1,000 updates",
                format!(
                    "{:.3} s ({:.3} s net of idle), {} + {} updates at {} /s over {:.1} s",
                    self.churn.cpu_per_1000,
                    self.churn.cpu_per_1000_net,
                    self.churn.updates,
                    self.churn.probe_updates,
                    self.churn.rate,
                    self.churn.seconds
                ),
            ),
            ("update to enforced, quiet", self.quiet.summary()),
            ("update to enforced, churn", self.churn.probes.summary()),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:width$}  {v}\n"))
            .collect()
    }
}

/// `v` as a short list with a unit.
fn list(v: &[f64], unit: &str) -> String {
    v.iter()
        .map(|x| format!("{x:.2} {unit}"))
        .collect::<Vec<_>>()
        .join(", ")
}
