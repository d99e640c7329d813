//! weft: inspect a running weftd.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weft_proto::{self as proto, Counters, Reply, Request, Response};

/// Shows the ports, peers, routes and counters of the local weftd.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "weft: the ports, peers, routes, policy and counters of the local weftd."
)]
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
    /// Daemon identity and health; fails (exit 1) while a worker is stalled, as
    /// liveness and readiness probes should see it.
    Status,
    /// Ports with rx/tx counters and drops by reason.
    Ports,
    /// Peer nodes: state, round-trip time, when last heard, features, counters.
    Peers,
    /// The forwarding table.
    Routes,
    /// NetworkPolicy: what is loaded, what selects a pod, what a connection meets.
    Policy {
        #[command(subcommand)]
        what: PolicyWhat,
    },
    /// ClusterIP Services: each port, its endpoints and their state, and what was
    /// refused.
    Services,
    /// NetworkPolicy's recent verdicts: time, source and destination, protocol and
    /// ports, allowed or denied, and the rule or policies that decided. The switch
    /// records them while someone asks (or always, with `flow-log = true`).
    Flows(FlowsArgs),
}

#[derive(Debug, clap::Args)]
struct FlowsArgs {
    /// Only flows from or to this pod, as NAMESPACE/NAME.
    #[arg(long)]
    pod: Option<String>,
    /// Only flows of this verdict: allowed or denied.
    #[arg(long)]
    verdict: Option<String>,
    /// Keep showing new flows as they come, until interrupted.
    #[arg(long, short)]
    follow: bool,
    /// How many of the newest flows to show first (0: none, with --follow only
    /// those that come after).
    #[arg(long, default_value_t = 100)]
    last: usize,
}

#[derive(Debug, Subcommand)]
enum PolicyWhat {
    /// The policies in force and any error reading them.
    Status,
    /// Which policies select a pod (NAMESPACE/NAME), in which direction.
    Pod {
        /// The pod, as NAMESPACE/NAME.
        pod: String,
    },
    /// Whether a connection is allowed, and by which policy and rule; to a
    /// ClusterIP (services = "switch"), through the translation to its endpoints.
    Explain {
        /// The source: NAMESPACE/NAME or an address.
        src: String,
        /// The destination: NAMESPACE/NAME or an address (a ClusterIP too).
        dst: String,
        /// TCP, UDP, SCTP or ICMP.
        protocol: String,
        /// The destination port (TCP, UDP, SCTP).
        port: Option<u16>,
        /// The source port: to a ClusterIP, the endpoint the translation gives
        /// that connection is picked out.
        #[arg(long)]
        src_port: Option<u16>,
    },
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

/// `NAMESPACE/NAME` as a pod.
fn pod_ref(pod: &str) -> Result<proto::PodRef, String> {
    let (namespace, name) = pod
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .ok_or_else(|| format!("{pod:?} is not NAMESPACE/NAME"))?;
    Ok(proto::PodRef {
        namespace: namespace.into(),
        name: name.into(),
    })
}

/// Asks weftd `request`: its reply, or what went wrong, in words.
fn ask(socket: &std::path::Path, request: &Request) -> Result<Reply, String> {
    match proto::call(socket, request, Duration::from_secs(10)) {
        Ok(Response::Ok(reply)) => Ok(reply),
        Ok(Response::Error(e)) => Err(format!("weftd refused: {}", e.message)),
        Err(e) => Err(e.to_string()),
    }
}

/// How often `weft flows --follow` asks for new flows.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// `weft flows`: the newest flows, then with `--follow` the new ones as they come.
fn flows(socket: &std::path::Path, json: bool, args: FlowsArgs) -> ExitCode {
    let pod = match args.pod.as_deref().map(pod_ref).transpose() {
        Ok(pod) => pod,
        Err(e) => {
            eprintln!("weft: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `--last 0` shows none of those kept: nothing is after the greatest number.
    let mut req = proto::FlowsRequest {
        after: if args.last == 0 { u64::MAX } else { 0 },
        pod,
        verdict: args.verdict,
        limit: args.last,
    };
    loop {
        let (flows, last) = match ask(socket, &Request::Flows(req.clone())) {
            Ok(Reply::Flows { flows, last }) => (flows, last),
            Ok(other) => {
                eprintln!("weft: unexpected reply {other:?}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("weft: {e}");
                return ExitCode::FAILURE;
            }
        };
        for f in &flows {
            if json {
                println!("{}", serde_json::to_string(f).expect("flows serialize"));
            } else {
                println!("{}", flow_line(f));
            }
        }
        if !args.follow {
            return ExitCode::SUCCESS;
        }
        // Everything new from now on, however many: at once while the answers
        // come in pieces (a piece is cut at 1 MiB, a full one holds hundreds).
        let cut = flows.len() >= 256;
        req.after = last;
        req.limit = 0;
        if !cut {
            std::thread::sleep(FOLLOW_EVERY);
        }
    }
}

/// A flow as one line, as `hubble observe` prints them.
fn flow_line(f: &proto::FlowInfo) -> String {
    let end = |e: &proto::FlowEnd| {
        let port = e.port.map_or(String::new(), |p| format!(":{p}"));
        match (&e.pod, e.port) {
            (Some(p), _) => format!("{}/{}{port} ({})", p.namespace, p.name, e.ip),
            // An IPv6 address in brackets before its port.
            (None, Some(port)) => std::net::SocketAddr::new(e.ip, port).to_string(),
            (None, None) => e.ip.to_string(),
        }
    };
    let secs = f.unix_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!(
        "{h:02}:{m:02}:{s:02}.{:03} UTC  {} -> {}  {}  {}  {}",
        f.unix_ms % 1000,
        end(&f.src),
        end(&f.dst),
        f.proto,
        f.verdict.to_uppercase(),
        f.reason
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match cli.what {
        What::Flows(args) => return flows(&cli.socket, cli.json, args),
        What::Status => Request::Status,
        What::Ports => Request::Ports,
        What::Peers => Request::Peers,
        What::Routes => Request::Routes,
        What::Services => Request::Services,
        What::Policy { what } => match policy_request(what) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("weft: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let reply = match ask(&cli.socket, &request) {
        Ok(reply) => reply,
        Err(e) => {
            eprintln!("weft: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A stalled worker is a dead datapath: the probes that run `weft status` fail.
    let code = match &reply {
        Reply::Status(s) if !s.stalled_workers.is_empty() => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    };
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).expect("replies serialize")
        );
        return code;
    }
    match reply {
        Reply::Status(s) => print_status(&s),
        Reply::Ports { ports } => print_ports(&ports),
        Reply::Peers { peers } => print_peers(&peers),
        Reply::Routes { routes } => print_routes(&routes),
        Reply::PolicyStatus(s) => print_policy_status(&s),
        Reply::PolicyPod(p) => print_policy_pod(&p),
        Reply::Services(s) => print_services(&s),
        Reply::Explained(e) => print_explained(&e),
        other => println!("{other:?}"),
    }
    code
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
    if let Some(s6) = &s.pod_subnet_v6 {
        println!("ipv6 subnet {s6}");
    }
    println!("cluster     {}", s.cluster_cidr);
    println!("workers     {}", s.workers);
    println!("pods        {}", s.pods);
    println!("peers       {}", s.peers);
    if let Some(st) = &s.store {
        let detail = st
            .detail
            .as_ref()
            .map_or(String::new(), |d| format!(" ({d})"));
        let saved = (st.from_saved.as_ref())
            .map_or(String::new(), |at| format!(", from the view saved at {at}"));
        println!("store       {} {}{detail}{saved}", st.kind, st.state);
        if !st.objects.is_empty() {
            let held: Vec<String> = (st.objects.iter())
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            println!("objects     {}", held.join(", "));
        }
    }
    if let Some(policy) = &s.policy {
        println!("policy      {policy}");
    }
    if let Some(ct) = &s.conntrack {
        println!(
            "conntrack   {} connections (at most {} a worker, {} a source), {} evicted, {} refused over a source's share",
            ct.entries, ct.max_per_worker, ct.share_per_worker, ct.evicted, ct.share_refused
        );
    }
    if !s.stalled_workers.is_empty() {
        println!("stalled     workers {:?}", s.stalled_workers);
    }
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
        if let Some(f) = p.host_flows {
            println!(
                "      host flows: {} handed to the host, {} returning through it ({} since start)",
                f.handed, f.returning, f.returned_total
            );
        }
    }
}

fn print_peers(peers: &[proto::PeerInfo]) {
    println!(
        "{:<18} {:<15} {:<18} {:<17} {:<28} {:<8} {:>9} {:>9} {:<12} {:>10} {:>12} {:>10} {:>12}  drops",
        "NODE",
        "UNDERLAY",
        "POD SUBNET",
        "VTEP MAC",
        "PATH",
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
            "{:<18} {:<15} {:<18} {:<17} {:<28} {:<8} {:>9} {:>9} {:<12} {:>10} {:>12} {:>10} {:>12}  {}",
            p.name,
            p.underlay,
            p.pod_subnet,
            p.vtep_mac,
            p.path,
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
        if let Some(s6) = &p.pod_subnet_v6 {
            println!("{:<18} ipv6 subnet {s6}", "");
        }
        if let Some(s) = &p.session {
            println!(
                "{:<18} session {}, key age {}, {}, {} handshakes, {} failed, {} dropped waiting",
                "",
                s.state,
                s.key_age_s.map_or("-".into(), |a| format!("{a}s")),
                s.cipher.as_deref().unwrap_or("no cipher"),
                s.handshakes,
                s.handshake_failures,
                s.queue_drops
            );
        }
    }
}

fn print_routes(routes: &[proto::RouteInfo]) {
    println!("{:<20} NEXT HOP", "PREFIX");
    for r in routes {
        println!("{:<20} {}", r.prefix, r.next_hop);
    }
}

fn policy_request(what: PolicyWhat) -> Result<Request, String> {
    Ok(match what {
        PolicyWhat::Status => Request::PolicyStatus,
        PolicyWhat::Pod { pod } => Request::PolicyPod(pod_ref(&pod)?),
        PolicyWhat::Explain {
            src,
            dst,
            protocol,
            port,
            src_port,
        } => Request::PolicyExplain(proto::ExplainRequest {
            src,
            dst,
            protocol,
            port,
            src_port,
        }),
    })
}

fn print_policy_status(s: &proto::PolicyStatus) {
    println!("source      {}", s.source);
    println!("state       {}", s.state);
    println!("generation  {}", s.generation);
    println!(
        "in force    {} policies, {} pods, {} namespaces",
        s.policies.len(),
        s.pods,
        s.namespaces
    );
    if !s.policies.is_empty() {
        println!(
            "\n{:<40} {:<15} {:>7} {:>7} {:>10}",
            "POLICY", "TYPES", "INGRESS", "EGRESS", "LOCAL PODS"
        );
    }
    for p in &s.policies {
        let types = match (p.ingress, p.egress) {
            (true, true) => "Ingress,Egress",
            (true, false) => "Ingress",
            (false, true) => "Egress",
            (false, false) => "-",
        };
        println!(
            "{:<40} {:<15} {:>7} {:>7} {:>10}",
            p.id, types, p.ingress_rules, p.egress_rules, p.local_pods
        );
    }
    for e in &s.errors {
        println!("unread      {e}");
    }
    for k in &s.skipped {
        println!("skipped     {k}");
    }
}

fn print_explained(e: &proto::Explanation) {
    println!("{}", if e.allowed { "allowed" } else { "denied" });
    println!("  egress:  {}", e.egress);
    println!("  ingress: {}", e.ingress);
    let Some(s) = &e.service else {
        return;
    };
    let at = match (&s.name, &s.frontend) {
        (Some(name), Some(frontend)) => format!(" {name} at {frontend}"),
        _ => String::new(),
    };
    println!("service{at}: {}, {}", s.outcome, s.detail);
    for line in &s.selection {
        println!("  {line}");
    }
    for p in &s.endpoints {
        let mark = if p.picked { "*" } else { " " };
        let local = if p.local { ", local" } else { "" };
        let used = match &p.unused {
            Some(why) => format!("unused: {why}"),
            None => "usable".into(),
        };
        let verdict = if p.allowed { "allowed" } else { "denied" };
        println!("{mark} {:<22} {}{local}, {used}", p.address, p.state);
        println!(
            "    {verdict}: egress: {}; ingress: {}",
            p.egress, p.ingress
        );
    }
}

fn print_services(s: &proto::ServicesStatus) {
    println!("source      {}", s.source);
    println!(
        "cidr        {}",
        s.service_cidr.as_deref().unwrap_or("- (not set)")
    );
    println!(
        "in force    {} Services, {} EndpointSlices, {} ClusterIP ports",
        s.services,
        s.slices,
        s.ports.len()
    );
    for p in &s.ports {
        let mut how = Vec::new();
        if let Some(t) = p.affinity_s {
            how.push(format!("affinity ClientIP {t}s"));
        }
        if p.internal_local {
            how.push("internal-local".to_owned());
        }
        let how = match how.is_empty() {
            true => String::new(),
            false => format!(" ({})", how.join(", ")),
        };
        println!("\n{} {}{how}", p.frontend, p.name);
        if p.endpoints.is_empty() {
            println!("  no endpoints");
        }
        for e in &p.endpoints {
            let local = if e.local { ", local" } else { "" };
            println!("  {:<22} {}{local}", e.address, e.state);
        }
    }
    for r in &s.refused {
        println!("refused     {r}");
    }
    for b in &s.bad {
        println!("unread      {b}");
    }
}

fn print_policy_pod(p: &proto::PodPolicies) {
    let ip = p.ip.map_or("-".into(), |ip| ip.to_string());
    println!("pod         {}/{} ({ip})", p.pod.namespace, p.pod.name);
    println!(
        "ingress     {}",
        if p.ingress_isolated {
            "isolated"
        } else {
            "open"
        }
    );
    println!(
        "egress      {}",
        if p.egress_isolated {
            "isolated"
        } else {
            "open"
        }
    );
    for (id, i, e) in &p.selected_by {
        let dirs = match (i, e) {
            (true, true) => "ingress, egress",
            (true, false) => "ingress",
            (false, true) => "egress",
            (false, false) => "none",
        };
        println!("selected by {id} ({dirs})");
    }
}
