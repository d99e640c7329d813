//! weft-perf: builds a small cluster out of network namespaces and runs weft and the
//! kernel's own networking side by side on it.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use weft_perf::cni::REFERENCE_PLUGIN_DIR;
use weft_perf::harness::{
    self, plot, Cluster, Event, Family, IpFamily, Plumbing, RrIdle, Settings, System, Test, Tools,
};
use weft_perf::netns::{cleanup_stale, PREFIX};
use weft_perf::pidfile::{self, RUN_DIR};
use weft_perf::scale::{self, cluster::Sizes, idle::IdleSettings, ScaleSettings, Sink};
use weft_perf::stop;
use weft_perf::topo::Offload;
use weft_perf::traffic;

/// weft's benchmarking harness: weft against the kernel's VXLAN and plain routing, on
/// hosts and pods built out of network namespaces (run as root).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The weftd binary [default: next to this program].
    #[arg(long, global = true)]
    weftd: Option<PathBuf>,
    /// Another weftd build, run by the weft-*-alt systems, to compare two builds in
    /// one run.
    #[arg(long, global = true)]
    weftd_alt: Option<PathBuf>,
    /// Further flags for the weft-*-alt systems' weftd, split on spaces (for
    /// example "--flow-log true"), to compare settings of one build.
    #[arg(long, global = true, value_name = "FLAGS", allow_hyphen_values = true)]
    alt_flags: Option<String>,
    /// Serve /metrics on the weft-*-alt systems' weftd and scrape it from this
    /// process every MS milliseconds, as a Prometheus would.
    #[arg(long, global = true, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..))]
    alt_scrape_ms: Option<u64>,
    /// The weft-cni plugin binary [default: next to this program].
    #[arg(long, global = true)]
    weft_cni: Option<PathBuf>,
    /// Directory of the reference CNI plugins (bridge, host-local).
    #[arg(long, global = true, default_value = REFERENCE_PLUGIN_DIR)]
    cni_dir: PathBuf,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Run the benchmark: every system on the same hosts and pods, interleaved.
    Run(RunArgs),
    /// Build the default cluster, show pods pinging across hosts through weft, then run
    /// a short comparison and print the table.
    Demo(RunArgs),
    /// Time node joins on a real etcd: from a node's registration to the first ping
    /// a pod on a peer node gets from it (needs etcd and etcdctl).
    Join(JoinArgs),
    /// Feed one weftd a large cluster through its store (etcd, or the Kubernetes API
    /// server fixture), then pod churn: time to a complete view, RSS, CPU per 1,000
    /// updates, and the latency from an update to weftd enforcing it.
    Scale(ScaleArgs),
    /// What heartbeats to thousands of peers cost an idle weftd, against the same
    /// weftd with none.
    Heartbeats(HeartbeatArgs),
    /// Remove what a killed run left: its namespaces and the weftd processes it started.
    Clean,
    /// One pod's echo servers for the svc tests, started by weft-perf itself in the
    /// pod's namespace: listens on PORTS of IP until its standard input closes.
    #[command(name = "echo-servers", hide = true)]
    EchoServers {
        /// The pod's address.
        ip: std::net::Ipv4Addr,
        /// How long a connection may be silent, in milliseconds.
        stall_ms: u64,
        /// The ports, comma-separated.
        ports: String,
    },
}

/// Options of `join`.
#[derive(Debug, Args)]
struct JoinArgs {
    /// Joins to time.
    #[arg(long, default_value_t = 20)]
    joins: usize,
    /// weftd's mode: vxlan, sleeve or direct.
    #[arg(long, default_value = "vxlan")]
    mode: String,
    /// Write the latencies as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Options of `scale`.
#[derive(Debug, Args)]
struct ScaleArgs {
    /// The store: etcd or kubernetes.
    #[arg(long, default_value = "etcd")]
    store: String,
    /// Nodes besides the one under test.
    #[arg(long, default_value_t = 5_000)]
    nodes: usize,
    /// Pods on them.
    #[arg(long, default_value_t = 150_000)]
    pods: usize,
    /// NetworkPolicies.
    #[arg(long, default_value_t = 10_000)]
    policies: usize,
    /// Namespaces [default: one per 300 pods, at least 1].
    #[arg(long)]
    namespaces: Option<usize>,
    /// Pods attached on the weftd under test (one is the probes' target).
    #[arg(long, default_value_t = 10)]
    local_pods: usize,
    /// Times weftd is started on the fed store, each timed to a complete view.
    #[arg(long, default_value_t = 3)]
    starts: usize,
    /// The longest a start may take to its complete view, in seconds.
    #[arg(long, default_value_t = 600.0)]
    view_timeout: f64,
    /// Seconds of idle CPU measured.
    #[arg(long, default_value_t = 10.0)]
    idle: f64,
    /// Probes with no churn.
    #[arg(long, default_value_t = 100)]
    probes: usize,
    /// How often a probe asks weftd, in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    poll_ms: f64,
    /// Churn updates, at most.
    #[arg(long, default_value_t = 5_000)]
    churn: usize,
    /// Churn updates a second.
    #[arg(long, default_value_t = 250.0)]
    churn_rate: f64,
    /// The longest the churn runs, in seconds.
    #[arg(long, default_value_t = 60.0)]
    churn_time: f64,
    /// weftd worker threads.
    #[arg(long, default_value_t = 1)]
    weft_workers: usize,
    /// Where the fake nodes' underlay addresses lead: a veth whose far end is down
    /// (it drops each frame as it is sent, as a NIC takes it) or up (it receives
    /// and drops each one, in softirq work weftd's CPU pays too).
    #[arg(long, default_value = "down", value_name = "down|up")]
    sink: Sink,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Options of `heartbeats`.
#[derive(Debug, Args)]
struct HeartbeatArgs {
    /// Peers of the busy weftd.
    #[arg(long, default_value_t = 5_000)]
    peers: usize,
    /// Seconds each weftd is measured over.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Rounds; each measures the weftd with peers and the one with none.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// weftd's heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Where the peers' underlay addresses lead: down or up (see `scale`).
    #[arg(long, default_value = "down", value_name = "down|up")]
    sink: Sink,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// A positive, finite number of seconds (or milliseconds) from a flag.
fn positive(flag: &str, value: f64) -> Result<f64> {
    if !value.is_finite() || value <= 0.0 {
        bail!("{flag} must be a positive number");
    }
    Ok(value)
}

impl ScaleArgs {
    fn settings(&self, weftd: &Path) -> Result<ScaleSettings> {
        let secs = |flag: &str, v: f64| positive(flag, v).map(Duration::from_secs_f64);
        Ok(ScaleSettings {
            sizes: Sizes {
                nodes: self.nodes,
                pods: self.pods,
                policies: self.policies,
                namespaces: self.namespaces.unwrap_or(self.pods / 300).max(1),
                local_pods: self.local_pods,
            },
            store: self.store.parse()?,
            weftd: weftd.to_path_buf(),
            workers: self.weft_workers.max(1),
            starts: self.starts.max(1),
            view_timeout: secs("--view-timeout", self.view_timeout)?,
            idle: secs("--idle", self.idle)?,
            probes: self.probes,
            poll: secs("--poll-ms", self.poll_ms)? / 1000,
            probe_timeout: Duration::from_secs(30),
            churn: self.churn,
            churn_rate: positive("--churn-rate", self.churn_rate)?,
            churn_time: secs("--churn-time", self.churn_time)?,
            seed: 27,
            sink: self.sink,
        })
    }
}

/// Writes `value` as JSON to `path`, if given.
fn write_json(path: Option<&Path>, value: &impl serde::Serialize) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("weft-perf: wrote {}", path.display());
    }
    Ok(())
}

/// Options of `run` and `demo` (`demo` has shorter defaults).
#[derive(Debug, Args)]
struct RunArgs {
    /// Systems, comma-separated: weft-vxlan, weft-sleeve, weft-direct, kernel-vxlan,
    /// direct; weft-vxlan-policy, weft-sleeve-policy; weft-afxdp-vxlan,
    /// weft-afxdp-sleeve (AF_XDP pod ports); weft-sleeve-enc (encryption required);
    /// weft-vxlan-alt, weft-sleeve-alt, weft-sleeve-enc-alt, weft-direct-alt,
    /// weft-vxlan-policy-alt with the --weftd-alt build (or this one with
    /// --alt-flags, --alt-scrape-ms); and for the svc tests kernel-vxlan+iptables,
    /// kernel-vxlan+nftables, weft+iptables, weft+switch [default: the first five].
    #[arg(long)]
    systems: Option<String>,
    /// Tests, comma-separated: tcp1, tcp4, udp64, rr, crr, cni, cpu, mem, the iperf3
    /// cross-checks tcp1-iperf3, tcp4-iperf3, svc10, svc1k, svc10k (Services:
    /// connections and round trips through ClusterIPs with that many defined), and
    /// tcp1-v6, tcp4-v6, udp64-v6, rr-v6 (between the pods' IPv6 addresses; the
    /// systems that carry IPv6 then run dual stack) [default: by --family; for 4,
    /// all but the cross-checks, the svc tests and the -v6 tests].
    #[arg(long)]
    tests: Option<String>,
    /// The address family of the default traffic tests: 4 (IPv4: today's tests), 6
    /// (only tcp1-v6, tcp4-v6, udp64-v6, rr-v6), or dual (the tests of 4, each
    /// traffic test followed by its -v6 variant). Systems without IPv6 between hosts
    /// (direct, weft-direct and the Services systems) skip the -v6 tests:
    /// their rows say "not measured". With --tests, the tests must be of the family
    /// [default: 4].
    #[arg(long, value_name = "4|6|dual")]
    family: Option<Family>,
    /// Seconds each traffic test runs [default: 2; demo 1].
    #[arg(long)]
    duration: Option<f64>,
    /// Rounds; each visits every system once [default: 3; demo 2].
    #[arg(long)]
    repeat: Option<usize>,
    /// Hosts.
    #[arg(long, default_value_t = 2)]
    hosts: usize,
    /// Pods per host.
    #[arg(long, default_value_t = 2)]
    pods: usize,
    /// Underlay MTU; pods get 50 less.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// CNI ADD/DEL pairs per system, over all rounds [default: 200; demo 20].
    #[arg(long)]
    cni_pods: Option<usize>,
    /// Pods the mem test attaches to host 0's weftd at once, in every round
    /// [default: 100; demo 20].
    #[arg(long)]
    mem_pods: Option<usize>,
    /// weftd worker threads [default: one per core].
    #[arg(long)]
    weft_workers: Option<usize>,
    /// The hosts' underlay transmit offloads (checksum, TSO, tunnel segmentation): on,
    /// as real NICs have them, or off, which slows the kernel's VXLAN 3-4x.
    #[arg(long, default_value = "on", value_name = "on|off")]
    underlay_offload: Offload,
    /// What idle CPUs do during rr: poll (held out of sleep for every system, so
    /// wake-ups cost the same whatever else runs) or sleep (as the machine chooses).
    #[arg(long, default_value = "poll", value_name = "poll|sleep")]
    rr_idle: RrIdle,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the results as an SVG bar chart to this file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

impl RunArgs {
    /// The tests: `--tests`, checked against `--family` if that is given, or the
    /// family's default tests.
    fn tests(&self) -> Result<Vec<Test>> {
        harness::select_tests(self.tests.as_deref(), self.family)
    }

    /// The settings, with `run`'s defaults or, for `demo`, shorter ones.
    fn settings(&self, demo: bool) -> Result<Settings> {
        let defaults = Settings::default();
        let duration = self.duration.unwrap_or(if demo { 1.0 } else { 2.0 });
        if !duration.is_finite() || duration <= 0.0 {
            bail!("--duration must be a positive number of seconds");
        }
        let settings = Settings {
            systems: match &self.systems {
                Some(list) => harness::parse_list::<System>(list)?,
                None => defaults.systems,
            },
            tests: self.tests()?,
            duration: Duration::from_secs_f64(duration),
            repeat: self
                .repeat
                .unwrap_or(if demo { 2 } else { defaults.repeat }),
            hosts: self.hosts,
            pods: self.pods,
            mtu: self.mtu,
            cni_pods: self
                .cni_pods
                .unwrap_or(if demo { 20 } else { defaults.cni_pods }),
            mem_pods: self
                .mem_pods
                .unwrap_or(if demo { 20 } else { defaults.mem_pods }),
            weft_workers: self.weft_workers,
            underlay_offload: self.underlay_offload,
            rr_idle: self.rr_idle,
        };
        settings.validate()?;
        Ok(settings)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_cli(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-perf: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The programs a run uses, and how the alt systems differ, from the flags.
fn tools(cli: &Cli) -> Result<Tools> {
    let here = std::env::current_exe().context("finding this program's path")?;
    Ok(Tools {
        weftd: cli
            .weftd
            .clone()
            .unwrap_or_else(|| here.with_file_name("weftd")),
        weftd_alt: cli.weftd_alt.clone(),
        alt_flags: (cli.alt_flags.as_deref().unwrap_or(""))
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        alt_scrape: cli.alt_scrape_ms.map(Duration::from_millis),
        weft_cni: cli
            .weft_cni
            .clone()
            .unwrap_or_else(|| here.with_file_name("weft-cni")),
        reference_cni: cli.cni_dir.clone(),
    })
}

fn run_cli(cli: Cli) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("weft-perf builds network namespaces and must run as root");
    }
    let tools = tools(&cli)?;
    match cli.what {
        What::Clean => clean(true),
        What::EchoServers {
            ip,
            stall_ms,
            ports,
        } => {
            let ports = (ports.split(','))
                .map(|p| p.parse().with_context(|| format!("port {p:?}")))
                .collect::<Result<Vec<u16>>>()?;
            traffic::serve_echo_stdio(ip, &ports, Duration::from_millis(stall_ms))
        }
        What::Run(args) => {
            let settings = args.settings(false)?;
            tools.check(&settings)?;
            stop::install()?;
            clean(false)?;
            let started = Instant::now();
            let cluster = Cluster::build(&settings)?;
            let report = with_progress(|p| harness::run_on(&cluster, &settings, &tools, p))?;
            drop(cluster);
            print!("{}", report.table());
            eprintln!(
                "\nweft-perf: ran in {:.0} s",
                started.elapsed().as_secs_f64()
            );
            write_outputs(&report, &args)
        }
        What::Join(args) => {
            if args.joins == 0 {
                bail!("--joins must be at least 1");
            }
            if !["vxlan", "sleeve", "direct"].contains(&args.mode.as_str()) {
                bail!("--mode {:?}: vxlan, sleeve or direct", args.mode);
            }
            stop::install()?;
            clean(false)?;
            let settings = weft_perf::join::JoinSettings {
                joins: args.joins,
                weftd: tools.weftd.clone(),
                mode: args.mode.clone(),
            };
            let report = weft_perf::join::measure(&settings, &mut |n, took| {
                eprintln!("  join {n:>3}: {:.2} ms", took.as_secs_f64() * 1e3);
            })?;
            print!("{}", report.summary());
            if let Some(path) = &args.json {
                let text = serde_json::to_string_pretty(&report)?;
                std::fs::write(path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("weft-perf: wrote {}", path.display());
            }
            Ok(())
        }
        What::Scale(args) => scale_cmd(&args, &tools),
        What::Heartbeats(args) => heartbeats_cmd(&args, &tools),
        What::Demo(args) => {
            let settings = args.settings(true)?;
            tools.check(&settings)?;
            stop::install()?;
            clean(false)?;
            demo(&settings, &tools, &args)
        }
    }
}

/// `weft-perf scale`.
fn scale_cmd(args: &ScaleArgs, tools: &Tools) -> Result<()> {
    let settings = args.settings(&tools.weftd)?;
    stop::install()?;
    clean(false)?;
    let report = scale::run(&settings, &mut |line| eprintln!("  {line}"))?;
    print!("{}", report.table());
    write_json(args.json.as_deref(), &report)
}

/// `weft-perf heartbeats`.
fn heartbeats_cmd(args: &HeartbeatArgs, tools: &Tools) -> Result<()> {
    let settings = IdleSettings {
        weftd: tools.weftd.clone(),
        peers: args.peers,
        span: Duration::from_secs_f64(positive("--seconds", args.seconds)?),
        settle: Duration::from_secs(3),
        rounds: args.rounds.max(1),
        heartbeat_ms: args.heartbeat_ms,
        sink: args.sink,
    };
    stop::install()?;
    clean(false)?;
    let report = scale::idle::measure(&settings, &mut |line| eprintln!("  {line}"))?;
    print!("{}", report.summary());
    write_json(args.json.as_deref(), &report)
}

/// Removes namespaces and daemons of runs that are gone; `loud` says so even when
/// there was nothing to remove.
fn clean(loud: bool) -> Result<()> {
    let stopped = pidfile::clean_stale(Path::new(RUN_DIR))?;
    let removed = cleanup_stale(PREFIX)?;
    let scratch = clean_scratch()?;
    if loud || !stopped.is_empty() || !removed.is_empty() {
        println!(
            "weft-perf clean: stopped {} weftd process{} {stopped:?}, removed {} network \
             namespace{} and {scratch} scratch director{}",
            stopped.len(),
            if stopped.len() == 1 { "" } else { "es" },
            removed.len(),
            if removed.len() == 1 { "" } else { "s" },
            if scratch == 1 { "y" } else { "ies" },
        );
    }
    Ok(())
}

/// Removes `/tmp/weft-perf-<pid>-<n>` directories whose process is gone.
fn clean_scratch() -> Result<usize> {
    let mut n = 0;
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp).with_context(|| format!("listing {}", tmp.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("weft-perf-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Runs `f` with a progress bar fed by the harness's events.
fn with_progress<T>(f: impl FnOnce(&mut dyn FnMut(Event<'_>)) -> Result<T>) -> Result<T> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut on_event = |e: Event<'_>| match e {
        Event::Steps(n) => bar.set_length(n),
        Event::Start {
            round,
            system,
            what,
        } => bar.set_message(format!("round {} {system}: {what}", round + 1)),
        Event::Done => bar.inc(1),
        Event::Note(line) => {
            if bar.is_hidden() {
                eprintln!("  {line}");
            } else {
                bar.println(format!("  {line}"));
            }
        }
    };
    let result = f(&mut on_event);
    bar.finish_and_clear();
    result
}

/// Prints each host's pods and their addresses (both families on a dual-stack
/// system).
fn show_pods(cluster: &Cluster, weft: &Plumbing<'_>) {
    for (h, host) in cluster.underlay().hosts().iter().enumerate() {
        let ips: Vec<String> = (0..cluster.pods_per_host())
            .map(|j| match weft.ip6(h, j) {
                Some(ip6) => format!("{} {} {ip6}", cluster.pod(h, j).name, weft.ip(h, j)),
                None => format!("{} {}", cluster.pod(h, j).name, weft.ip(h, j)),
            })
            .collect();
        println!(
            "  host {h} ({}, subnet {}): {}",
            host.underlay_ip,
            host.pod_subnet,
            ips.join(", ")
        );
    }
}

/// Pings pod `j` of host `h` (`to`) from pod `j` of host 0 over `family`, and prints
/// ping's summary.
fn demo_ping(
    cluster: &Cluster,
    weft: &Plumbing<'_>,
    (h, j): (usize, usize),
    family: IpFamily,
) -> Result<()> {
    let from = cluster.pod(0, j);
    let to = weft.addr(h, j, family)?.to_string();
    let out = from
        .ns
        .run(&["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", &to])
        .with_context(|| format!("pod {} pinging {to}", from.name))?;
    let summary: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("packets transmitted") || l.starts_with("rtt"))
        .collect();
    println!("  {} -> {to}: {}", from.name, summary.join("; "));
    Ok(())
}

fn write_outputs(report: &harness::Report, args: &RunArgs) -> Result<()> {
    if let Some(path) = &args.json {
        report.write_json(path)?;
        eprintln!("weft-perf: wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot::write_svg(report, path)?;
        eprintln!("weft-perf: wrote {}", path.display());
    }
    Ok(())
}

fn demo(settings: &Settings, tools: &Tools, args: &RunArgs) -> Result<()> {
    let started = Instant::now();
    println!(
        "Building {} hosts with {} pods each (network namespaces on a veth underlay, MTU {},\n\
         underlay offload {}), one weftd per host (VXLAN{}), every pod attached through \
         weft-cni...",
        settings.hosts,
        settings.pods,
        settings.mtu,
        settings.underlay_offload,
        if settings.dual_stack() {
            ", dual stack"
        } else {
            ""
        }
    );
    let cluster = Cluster::build(settings)?;
    let weft = Plumbing::up(&cluster, System::WeftVxlan, tools, settings)?;
    show_pods(&cluster, &weft);
    println!("\nPods ping pods on other hosts through weft:");
    let hosts = cluster.underlay().hosts();
    let families: &[IpFamily] = match weft.ip6(0, 0) {
        Some(_) => &[IpFamily::V4, IpFamily::V6],
        None => &[IpFamily::V4],
    };
    for h in 1..hosts.len() {
        for j in 0..cluster.pods_per_host() {
            for &family in families {
                demo_ping(&cluster, &weft, (h, j), family)?;
            }
        }
    }
    let to = weft.ip(1, 0);
    hosts[0]
        .ns
        .ping(to, 1)
        .with_context(|| format!("host 0 pinging the pod {to}"))?;
    println!(
        "  host 0 ({}) -> {to}: reached through weft0",
        hosts[0].underlay_ip
    );
    weft.down()?;

    println!(
        "\nComparing {} on the same hosts and pods: {} s per test, {} round{}, systems interleaved...",
        settings
            .systems
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        settings.duration.as_secs_f64(),
        settings.repeat,
        if settings.repeat == 1 { "" } else { "s" }
    );
    let report = with_progress(|p| harness::run_on(&cluster, settings, tools, p))?;
    drop(cluster);
    println!();
    print!("{}", report.table());
    println!(
        "\nDone in {:.0} s; everything was torn down. `weft-perf run` runs the full comparison.",
        started.elapsed().as_secs_f64()
    );
    write_outputs(&report, args)
}
