//! weft: inspect a running weftd.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weft_cni::proto::{self, Counters, Reply, Request, Response};

/// Shows the ports, peers, routes and counters of the local weftd.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The daemon's control socket.
    #[arg(long, default_value = proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the raw JSON reply.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Daemon identity and health.
    Status,
    /// Ports with rx/tx counters and drops by reason.
    Ports,
    /// Peer nodes: state, round-trip time, when last heard, features, counters.
    Peers,
    /// The forwarding table.
    Routes,
}

fn drops(c: &Counters) -> String {
    if c.drops.is_empty() {
        return "-".into();
    }
    c.drops
        .iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match cli.what {
        What::Status => Request::Status,
        What::Ports => Request::Ports,
        What::Peers => Request::Peers,
        What::Routes => Request::Routes,
    };
    let reply = match proto::call(&cli.socket, &request, Duration::from_secs(10)) {
        Ok(Response::Ok(reply)) => reply,
        Ok(Response::Error(e)) => {
            eprintln!("weft: weftd refused: {}", e.message);
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("weft: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).expect("replies serialize")
        );
        return ExitCode::SUCCESS;
    }
    match reply {
        Reply::Status(s) => print_status(&s),
        Reply::Ports { ports } => print_ports(&ports),
        Reply::Peers { peers } => print_peers(&peers),
        Reply::Routes { routes } => print_routes(&routes),
        other => println!("{other:?}"),
    }
    ExitCode::SUCCESS
}

fn print_status(s: &proto::Status) {
    println!("node        {}", s.node);
    println!("version     {}", s.daemon_version);
    println!("mode        {}", s.mode);
    println!("underlay    {}", s.underlay);
    println!(
        "pod subnet  {} (gateway {}, MTU {})",
        s.pod_subnet, s.gateway, s.mtu
    );
    println!("cluster     {}", s.cluster_cidr);
    println!("workers     {}", s.workers);
    println!("pods        {}", s.pods);
    println!("peers       {}", s.peers);
    println!("ready       {}", s.ready);
}

fn print_ports(ports: &[proto::PortInfo]) {
    println!(
        "{:<5} {:<8} {:<15} {:<17} {:>10} {:>12} {:>10} {:>12}  {:<14} drops",
        "KIND", "NAME", "IP", "MAC", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES", "CONTAINER"
    );
    for p in ports {
        let c = &p.counters;
        let id = p.container_id.as_deref().unwrap_or("-");
        println!(
            "{:<5} {:<8} {:<15} {:<17} {:>10} {:>12} {:>10} {:>12}  {:<14} {}",
            p.kind,
            p.name,
            p.ip.map_or("-".into(), |i| i.to_string()),
            p.mac,
            c.rx_packets,
            c.rx_bytes,
            c.tx_packets,
            c.tx_bytes,
            &id[..id.len().min(14)],
            drops(c)
        );
    }
}

fn print_peers(peers: &[proto::PeerInfo]) {
    println!(
        "{:<18} {:<15} {:<18} {:<17} {:<8} {:>9} {:>9} {:<12} {:>10} {:>12} {:>10} {:>12}  drops",
        "NODE",
        "UNDERLAY",
        "POD SUBNET",
        "VTEP MAC",
        "STATE",
        "RTT",
        "HEARD",
        "FEATURES",
        "RX PKTS",
        "RX BYTES",
        "TX PKTS",
        "TX BYTES"
    );
    for p in peers {
        let c = &p.counters;
        let h = p.health.as_ref();
        let ago = |us: Option<u64>| us.map_or("-".into(), |us| format!("{:.1}ms", us as f64 / 1e3));
        let features = h.map(|h| h.features.join(",")).filter(|f| !f.is_empty());
        println!(
            "{:<18} {:<15} {:<18} {:<17} {:<8} {:>9} {:>9} {:<12} {:>10} {:>12} {:>10} {:>12}  {}",
            p.name,
            p.underlay,
            p.pod_subnet,
            p.vtep_mac,
            h.map_or("-", |h| h.state.as_str()),
            ago(h.and_then(|h| h.rtt_us)),
            ago(h.and_then(|h| h.last_heard_us)),
            features.as_deref().unwrap_or("-"),
            c.rx_packets,
            c.rx_bytes,
            c.tx_packets,
            c.tx_bytes,
            drops(c)
        );
    }
}

fn print_routes(routes: &[proto::RouteInfo]) {
    println!("{:<20} NEXT HOP", "PREFIX");
    for r in routes {
        println!("{:<20} {}", r.prefix, r.next_hop);
    }
}
