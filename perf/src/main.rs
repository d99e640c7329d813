//! weft-perf: builds a small cluster out of network namespaces and runs weft and the
//! kernel's own networking side by side on it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use weft_perf::netns::{cleanup_stale, require_root, PREFIX};
use weft_perf::topo::{direct, kernel_vxlan, Pod, Underlay};
use weft_perf::traffic::{tcp_send, Amount};
use weft_perf::weft::{peers_toml, write_atomic, PeerNode, Scratch, WeftNode, WeftOptions};

/// weft's benchmarking harness.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The weftd binary [default: next to this program].
    #[arg(long, global = true)]
    weftd: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Build a 2-host cluster, show pods pinging across hosts, compare TCP throughput.
    Demo {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        duration: u64,
        /// Repetitions of each system, interleaved.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Remove namespaces left by a killed run.
    Clean,
}

const SYSTEMS: [&str; 4] = ["weft-vxlan", "weft-sleeve", "kernel-vxlan", "direct"];

/// One system set up on a fresh 2-host underlay with one pod per host.
struct Setup {
    _nodes: Vec<WeftNode>,
    a: Pod,
    b: Pod,
    b_ip: std::net::Ipv4Addr,
    underlay: Underlay,
    _scratch: Scratch,
}

fn build(system: &str, weftd: &std::path::Path) -> Result<Setup> {
    let underlay = Underlay::new("perf", 2)?;
    let scratch = Scratch::new("perf")?;
    let a = underlay.pod(0, "a")?;
    let b = underlay.pod(1, "b")?;
    let mut nodes = Vec::new();
    let b_ip = match system {
        "weft-vxlan" | "weft-sleeve" => {
            let peers = scratch.path().join("peers.toml");
            let list: Vec<PeerNode> = underlay.hosts().iter().map(PeerNode::of).collect();
            write_atomic(&peers, &peers_toml(&list))?;
            let opts = WeftOptions {
                binary: weftd.to_owned(),
                mode: system.trim_start_matches("weft-").into(),
                workers: 2,
                extra: vec![],
            };
            for h in underlay.hosts() {
                nodes.push(WeftNode::start(h, &peers, scratch.path(), &opts)?);
            }
            nodes[0].attach(&a, "perf-a")?;
            nodes[1].attach(&b, "perf-b")?.ip
        }
        "kernel-vxlan" => {
            kernel_vxlan::mesh(&underlay)?;
            kernel_vxlan::attach_pod(underlay.host(0), &a, underlay.host(0).pod_ip(2))?;
            kernel_vxlan::attach_pod(underlay.host(1), &b, underlay.host(1).pod_ip(2))?;
            underlay.host(1).pod_ip(2)
        }
        "direct" => {
            direct::mesh(&underlay)?;
            direct::attach_pod(underlay.host(0), &a, underlay.host(0).pod_ip(2))?;
            direct::attach_pod(underlay.host(1), &b, underlay.host(1).pod_ip(2))?;
            underlay.host(1).pod_ip(2)
        }
        other => bail!("unknown system {other}"),
    };
    Ok(Setup {
        _nodes: nodes,
        a,
        b,
        b_ip,
        underlay,
        _scratch: scratch,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn demo(weftd: &std::path::Path, duration: u64, repeat: usize) -> Result<()> {
    println!("Building 2 hosts with weftd (VXLAN) and one pod on each...");
    let s = build("weft-vxlan", weftd)?;
    let out = s.a.ns.run(&[
        "ping",
        "-n",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        &s.b_ip.to_string(),
    ])?;
    println!("{}", out.trim());
    println!(
        "host 0 reaches the pod on host 1: {}",
        s.underlay.host(0).ns.ping(s.b_ip, 1).is_ok()
    );
    drop(s);

    println!(
        "\nSingle-stream TCP pod→pod across hosts, {duration} s x {repeat}, systems interleaved:"
    );
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); SYSTEMS.len()];
    for round in 0..repeat {
        for (i, system) in SYSTEMS.iter().enumerate() {
            let s = build(system, weftd).with_context(|| format!("setting up {system}"))?;
            let t = tcp_send(
                &s.b.ns,
                s.b_ip,
                &s.a.ns,
                Amount::For(Duration::from_secs(duration)),
                Duration::from_secs(30),
            )
            .with_context(|| format!("{system}: TCP transfer"))?;
            eprintln!(
                "  round {} {system:<13} {:6.2} Gbit/s",
                round + 1,
                t.gbit_per_s()
            );
            results[i].push(t.gbit_per_s());
        }
    }
    let kernel = median(&mut results[2].clone());
    println!(
        "\n{:<14} {:>12} {:>16}",
        "system", "tcp1 Gbit/s", "vs kernel-vxlan"
    );
    for (i, system) in SYSTEMS.iter().enumerate() {
        let m = median(&mut results[i]);
        println!("{system:<14} {m:>12.2} {:>15.2}x", m / kernel);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = (|| -> Result<()> {
        require_root();
        let weftd = match cli.weftd {
            Some(p) => p,
            None => std::env::current_exe()?.with_file_name("weftd"),
        };
        match cli.what {
            What::Demo { duration, repeat } => {
                if !weftd.exists() {
                    bail!("{} not found: build it with `cargo build --release --bins` or pass --weftd", weftd.display());
                }
                cleanup_stale(PREFIX)?;
                demo(&weftd, duration, repeat.max(1))
            }
            What::Clean => {
                let removed = cleanup_stale(PREFIX)?;
                println!("removed {} stale namespaces", removed.len());
                Ok(())
            }
        }
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-perf: {e:#}");
            ExitCode::FAILURE
        }
    }
}
