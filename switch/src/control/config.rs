//! weftd's settings (a TOML file, every key also a flag) and the peers file.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;
use weft_encap::vxlan::{Vni, DEFAULT_PORT};

use crate::mac::MacAddr;
use crate::tables::{TunnelMode, TUNNEL_OVERHEAD};

/// The default longest polling window of a worker (see [`crate::io::spin`]): long
/// enough to catch a pod's reply to the request just handed to it.
pub const DEFAULT_POLL_US: u32 = 100;
/// The largest polling window allowed: beyond it, polling only burns CPU.
pub const MAX_POLL_US: u32 = 10_000;
/// Connections each worker tracks by default.
pub const DEFAULT_CONNTRACK_MAX: usize = 16_384;
/// The most connections a worker may be told to track.
pub const MAX_CONNTRACK: usize = 1 << 22;
/// The default heartbeat interval.
pub const DEFAULT_HEARTBEAT_MS: u32 = 1_000;
/// The shortest heartbeat interval allowed.
pub const MIN_HEARTBEAT_MS: u32 = 10;
/// The longest heartbeat interval allowed.
pub const MAX_HEARTBEAT_MS: u32 = 60_000;

/// Settings as given, each optional: from the config file and from flags. A flag
/// overrides the file. Keys in the file are the flag names (`node-name = "a"`).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Options {
    /// This node's name, as the peers file lists it.
    #[arg(long)]
    pub node_name: Option<String>,
    /// This node's underlay address: tunnels are bound to it.
    #[arg(long)]
    pub underlay_ip: Option<Ipv4Addr>,
    /// This node's pod subnet (for example 10.244.1.0/24).
    #[arg(long)]
    pub pod_subnet: Option<Ipv4Net>,
    /// The whole cluster's pod range (for example 10.244.0.0/16).
    #[arg(long)]
    pub cluster_cidr: Option<Ipv4Net>,
    /// Tunnel framing to peers: vxlan or sleeve [default: vxlan].
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<TunnelMode>,
    /// VXLAN network identifier [default: 1].
    #[arg(long)]
    pub vni: Option<u32>,
    /// UDP port of the tunnel [default: 8472].
    #[arg(long)]
    pub port: Option<u16>,
    /// Worker threads [default: number of cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Queues per port, at most one per worker [default: workers].
    #[arg(long)]
    pub port_queues: Option<usize>,
    /// Longest a worker polls for more frames after work before it sleeps, in
    /// microseconds; the window adapts below it, and 0 turns polling off [default: 100].
    #[arg(long)]
    pub poll_us: Option<u32>,
    /// How often to send every peer a heartbeat, in milliseconds; a peer silent for
    /// three intervals is down, and 0 turns heartbeats off [default: 1000].
    #[arg(long)]
    pub heartbeat_ms: Option<u32>,
    /// Connections each worker tracks for NetworkPolicy, at most; new connections
    /// of policy-isolated pods beyond it are dropped and counted [default: 16384].
    #[arg(long)]
    pub conntrack_max: Option<usize>,
    /// A directory of Kubernetes YAML (Namespaces, Pods, NetworkPolicies), watched;
    /// the policy of the embedded store.
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,
    /// Path of the control socket [default: /run/weft/weft.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Path of the peers file, reloaded on change.
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// This node's VTEP MAC [default: from the peers file, else derived from the name].
    #[arg(long)]
    pub vtep_mac: Option<MacAddr>,
    /// MTU of the underlay network [default: 1500]; pods get 50 bytes less.
    #[arg(long)]
    pub underlay_mtu: Option<u32>,
    /// Name of the host port [default: weft0].
    #[arg(long)]
    pub host_port: Option<String>,
    /// Directory for durable state [default: /var/lib/weft].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<TunnelMode, String> {
    match s {
        "vxlan" => Ok(TunnelMode::Vxlan),
        "sleeve" => Ok(TunnelMode::Sleeve),
        _ => Err(format!(
            "unknown tunnel mode {s:?}: expected vxlan or sleeve"
        )),
    }
}

/// A configuration problem, naming the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config or peers file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for its schema.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Cause.
        source: Box<toml::de::Error>,
    },
    /// A required setting is missing.
    #[error("missing setting {0}: give it in the config file or as --{0}")]
    Missing(&'static str),
    /// A setting has a value that cannot work.
    #[error("invalid {key}: {why}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The peers file is inconsistent.
    #[error("peers file {path}: {why}")]
    Peers {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

impl Options {
    /// Reads options from a TOML file.
    pub fn from_file(path: &Path) -> Result<Options, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })
    }

    /// Fills every option not set in `self` from `file`.
    pub fn or(self, file: Options) -> Options {
        Options {
            node_name: self.node_name.or(file.node_name),
            underlay_ip: self.underlay_ip.or(file.underlay_ip),
            pod_subnet: self.pod_subnet.or(file.pod_subnet),
            cluster_cidr: self.cluster_cidr.or(file.cluster_cidr),
            mode: self.mode.or(file.mode),
            vni: self.vni.or(file.vni),
            port: self.port.or(file.port),
            workers: self.workers.or(file.workers),
            port_queues: self.port_queues.or(file.port_queues),
            poll_us: self.poll_us.or(file.poll_us),
            heartbeat_ms: self.heartbeat_ms.or(file.heartbeat_ms),
            conntrack_max: self.conntrack_max.or(file.conntrack_max),
            policy_dir: self.policy_dir.or(file.policy_dir),
            socket: self.socket.or(file.socket),
            peers: self.peers.or(file.peers),
            vtep_mac: self.vtep_mac.or(file.vtep_mac),
            underlay_mtu: self.underlay_mtu.or(file.underlay_mtu),
            host_port: self.host_port.or(file.host_port),
            state_dir: self.state_dir.or(file.state_dir),
        }
    }

    /// Checks the options and applies defaults.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let node_name = self
            .node_name
            .clone()
            .ok_or(ConfigError::Missing("node-name"))?;
        if node_name.is_empty() {
            return Err(invalid("node-name", "empty".into()));
        }
        let (underlay_ip, pod_subnet, cluster_cidr) = self.addressing()?;
        let vni = self.vni.unwrap_or(1);
        let vni = Vni::new(vni)
            .ok_or_else(|| invalid("vni", format!("{vni} does not fit in 24 bits")))?;
        let port = self.port.unwrap_or(DEFAULT_PORT);
        if port == 0 {
            return Err(invalid("port", "0 is not a port".into()));
        }
        let (workers, port_queues, poll, heartbeat) = self.threads()?;
        let conntrack_max = self.conntrack_max.unwrap_or(DEFAULT_CONNTRACK_MAX);
        if !(16..=MAX_CONNTRACK).contains(&conntrack_max) {
            let why = format!("{conntrack_max}: between 16 and {MAX_CONNTRACK}");
            return Err(invalid("conntrack-max", why));
        }
        let underlay_mtu = self.underlay_mtu.unwrap_or(1500);
        if !(576..=9216).contains(&underlay_mtu) {
            let why = format!("{underlay_mtu}: between 576 and 9216");
            return Err(invalid("underlay-mtu", why));
        }
        let host_port = self.host_port.unwrap_or_else(|| "weft0".into());
        if !crate::io::tap::valid_ifname(&host_port) {
            let why = format!("{host_port:?} is not an interface name");
            return Err(invalid("host-port", why));
        }
        Ok(Settings {
            node_name,
            underlay_ip,
            pod_subnet,
            cluster_cidr,
            mode: self.mode.unwrap_or(TunnelMode::Vxlan),
            vni,
            port,
            workers,
            port_queues,
            poll,
            heartbeat,
            conntrack_max,
            policy_dir: self.policy_dir,
            socket: self
                .socket
                .unwrap_or_else(|| weft_cni::proto::DEFAULT_SOCKET.into()),
            peers: self.peers,
            vtep_mac: self.vtep_mac,
            underlay_mtu,
            host_port,
            state_dir: self.state_dir.unwrap_or_else(|| "/var/lib/weft".into()),
        })
    }

    /// The underlay address, the pod subnet and the cluster CIDR, checked together.
    fn addressing(&self) -> Result<(Ipv4Addr, Ipv4Net, Ipv4Net), ConfigError> {
        let underlay_ip = self
            .underlay_ip
            .ok_or(ConfigError::Missing("underlay-ip"))?;
        let pod_subnet = self.pod_subnet.ok_or(ConfigError::Missing("pod-subnet"))?;
        let cluster_cidr = self
            .cluster_cidr
            .ok_or(ConfigError::Missing("cluster-cidr"))?;
        if pod_subnet != pod_subnet.trunc() {
            let why = format!(
                "{pod_subnet} has host bits set; did you mean {}?",
                pod_subnet.trunc()
            );
            return Err(invalid("pod-subnet", why));
        }
        if pod_subnet.prefix_len() > 30 {
            let why =
                format!("{pod_subnet} is too small: it needs a gateway and pods (/30 at most)");
            return Err(invalid("pod-subnet", why));
        }
        if !cluster_cidr.contains(&pod_subnet) || cluster_cidr == pod_subnet {
            let why = format!(
                "{pod_subnet} must lie inside the cluster CIDR {cluster_cidr} and be smaller"
            );
            return Err(invalid("pod-subnet", why));
        }
        if cluster_cidr.contains(&underlay_ip) {
            let why = format!("{underlay_ip} lies inside the cluster CIDR {cluster_cidr}");
            return Err(invalid("underlay-ip", why));
        }
        Ok((underlay_ip, pod_subnet, cluster_cidr))
    }

    /// Workers, queues per port, the polling window and the heartbeat interval.
    fn threads(&self) -> Result<(usize, usize, Duration, Duration), ConfigError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = self.workers.unwrap_or(cores);
        if workers == 0 || workers > 64 {
            return Err(invalid("workers", format!("{workers}: between 1 and 64")));
        }
        let poll_us = self.poll_us.unwrap_or(DEFAULT_POLL_US);
        if poll_us > MAX_POLL_US {
            return Err(invalid(
                "poll-us",
                format!("{poll_us}: at most {MAX_POLL_US}"),
            ));
        }
        let heartbeat_ms = self.heartbeat_ms.unwrap_or(DEFAULT_HEARTBEAT_MS);
        if heartbeat_ms != 0 && !(MIN_HEARTBEAT_MS..=MAX_HEARTBEAT_MS).contains(&heartbeat_ms) {
            let why =
                format!("{heartbeat_ms}: 0 (off) or {MIN_HEARTBEAT_MS} to {MAX_HEARTBEAT_MS}");
            return Err(invalid("heartbeat-ms", why));
        }
        let port_queues = self.port_queues.unwrap_or(workers);
        if port_queues == 0 || port_queues > workers {
            let why = format!("{port_queues}: between 1 and the number of workers ({workers})");
            return Err(invalid("port-queues", why));
        }
        Ok((
            workers,
            port_queues,
            Duration::from_micros(u64::from(poll_us)),
            Duration::from_millis(u64::from(heartbeat_ms)),
        ))
    }
}

fn invalid(key: &'static str, why: String) -> ConfigError {
    ConfigError::Invalid { key, why }
}

/// weftd's checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name.
    pub node_name: String,
    /// Underlay address the tunnels bind to.
    pub underlay_ip: Ipv4Addr,
    /// This node's pod subnet.
    pub pod_subnet: Ipv4Net,
    /// The cluster's pod range.
    pub cluster_cidr: Ipv4Net,
    /// Tunnel framing.
    pub mode: TunnelMode,
    /// VXLAN network identifier.
    pub vni: Vni,
    /// Tunnel UDP port.
    pub port: u16,
    /// Worker threads.
    pub workers: usize,
    /// Queues per port.
    pub port_queues: usize,
    /// Longest adaptive polling window of a worker.
    pub poll: Duration,
    /// Heartbeat interval; zero for none.
    pub heartbeat: Duration,
    /// Connections each worker tracks, at most.
    pub conntrack_max: usize,
    /// The watched directory of policy manifests, if any.
    pub policy_dir: Option<PathBuf>,
    /// Control socket path.
    pub socket: PathBuf,
    /// Peers file, if any.
    pub peers: Option<PathBuf>,
    /// VTEP MAC, if given.
    pub vtep_mac: Option<MacAddr>,
    /// Underlay MTU.
    pub underlay_mtu: u32,
    /// Host port name.
    pub host_port: String,
    /// Durable state directory.
    pub state_dir: PathBuf,
}

impl Settings {
    /// The MTU pods (and the host port) get.
    pub fn pod_mtu(&self) -> u32 {
        self.underlay_mtu - TUNNEL_OVERHEAD
    }

    /// The gateway address: the first address of the pod subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pod_subnet.network()) + 1)
    }
}

/// One node as the peers file lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeEntry {
    /// Node name.
    pub name: String,
    /// Underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Pod subnet.
    pub pod_subnet: Ipv4Net,
    /// VTEP MAC.
    pub vtep_mac: MacAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFile {
    #[serde(default)]
    node: Vec<NodeEntry>,
}

/// Parses a peers file: `[[node]]` tables with name, underlay-ip, pod-subnet and
/// vtep-mac. Names, addresses, subnets and MACs must be unique.
pub fn parse_peers(path: &Path, text: &str) -> Result<Vec<NodeEntry>, ConfigError> {
    let file: PeersFile = toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.display().to_string(),
        source: Box::new(source),
    })?;
    let bad = |why: String| ConfigError::Peers {
        path: path.display().to_string(),
        why,
    };
    let (mut names, mut ips, mut macs) = (HashSet::new(), HashSet::new(), HashSet::new());
    for (i, n) in file.node.iter().enumerate() {
        if n.name.is_empty() {
            return Err(bad(format!("node {} has an empty name", i + 1)));
        }
        if !names.insert(&n.name) {
            return Err(bad(format!("node {} is listed twice", n.name)));
        }
        if !ips.insert(n.underlay_ip) {
            return Err(bad(format!(
                "underlay-ip {} is listed twice",
                n.underlay_ip
            )));
        }
        if !macs.insert(n.vtep_mac) {
            return Err(bad(format!("vtep-mac {} is listed twice", n.vtep_mac)));
        }
        if n.vtep_mac.is_multicast() {
            return Err(bad(format!(
                "vtep-mac {} of {} is a group address",
                n.vtep_mac, n.name
            )));
        }
        if n.pod_subnet != n.pod_subnet.trunc() {
            return Err(bad(format!(
                "pod-subnet {} of {} has host bits set",
                n.pod_subnet, n.name
            )));
        }
        for m in &file.node[..i] {
            if m.pod_subnet.contains(&n.pod_subnet) || n.pod_subnet.contains(&m.pod_subnet) {
                return Err(bad(format!(
                    "pod-subnet {} of {} overlaps {} of {}",
                    n.pod_subnet, n.name, m.pod_subnet, m.name
                )));
            }
        }
    }
    Ok(file.node)
}

/// Reads and parses a peers file.
pub fn read_peers(path: &Path) -> Result<Vec<NodeEntry>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_peers(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Options {
        toml::from_str(
            r#"
            node-name = "a"
            underlay-ip = "10.250.0.1"
            pod-subnet = "10.244.1.0/24"
            cluster-cidr = "10.244.0.0/16"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn defaults() {
        let s = base().resolve().unwrap();
        assert_eq!(s.mode, TunnelMode::Vxlan);
        assert_eq!((s.vni.get(), s.port), (1, 8472));
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(s.pod_mtu(), 1450);
        assert_eq!(s.socket, Path::new("/run/weft/weft.sock"));
        assert_eq!(s.host_port, "weft0");
        assert_eq!(s.poll, Duration::from_micros(100));
        assert_eq!(s.heartbeat, Duration::from_secs(1));
    }

    #[test]
    fn flags_override_the_file() {
        let flags = Options {
            mode: Some(TunnelMode::Sleeve),
            port: Some(9000),
            ..Options::default()
        };
        let s = flags.or(base()).resolve().unwrap();
        assert_eq!((s.mode, s.port), (TunnelMode::Sleeve, 9000));
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let cases: [(&str, &str); 8] = [
            ("heartbeat-ms = 5", "heartbeat-ms"),
            ("pod-subnet = \"10.244.1.5/24\"", "host bits"),
            ("pod-subnet = \"10.245.1.0/24\"", "inside the cluster CIDR"),
            ("vni = 16777216", "24 bits"),
            ("workers = 0", "workers"),
            ("underlay-mtu = 100", "underlay-mtu"),
            ("poll-us = 20000", "poll-us"),
            ("bogus = 1", "unknown field"),
        ];
        let head =
            "node-name = \"a\"\nunderlay-ip = \"10.250.0.1\"\ncluster-cidr = \"10.244.0.0/16\"\n";
        for (line, needle) in cases {
            let text = if line.starts_with("pod-subnet") {
                format!("{head}{line}\n")
            } else {
                format!("{head}pod-subnet = \"10.244.1.0/24\"\n{line}\n")
            };
            let msg = match toml::from_str::<Options>(&text) {
                Ok(o) => o.resolve().unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(msg.contains(needle), "{line}: {msg}");
        }
        let missing = Options::default().resolve().unwrap_err().to_string();
        assert!(missing.contains("node-name"), "{missing}");
    }

    #[test]
    fn peers_file() {
        let text = r#"
            [[node]]
            name = "a"
            underlay-ip = "10.250.0.1"
            pod-subnet = "10.244.1.0/24"
            vtep-mac = "02:00:00:00:00:01"
            [[node]]
            name = "b"
            underlay-ip = "10.250.0.2"
            pod-subnet = "10.244.2.0/24"
            vtep-mac = "02:00:00:00:00:02"
        "#;
        let nodes = parse_peers(Path::new("p.toml"), text).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].vtep_mac.to_string(), "02:00:00:00:00:02");
        let dup = text.replace("10.244.2.0/24", "10.244.1.128/25");
        let err = parse_peers(Path::new("p.toml"), &dup)
            .unwrap_err()
            .to_string();
        assert!(err.contains("overlaps"), "{err}");
        let dup = text.replace("\"b\"", "\"a\"");
        assert!(parse_peers(Path::new("p.toml"), &dup)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(parse_peers(Path::new("p.toml"), "").unwrap().is_empty());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The configs `deploy/examples` ships are valid.
    #[test]
    fn shipped_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let peers = read_peers(&dir.join("peers.toml")).unwrap();
        assert_eq!(peers.len(), 2);
        for (file, name) in [("node-a.toml", "node-a"), ("node-b.toml", "node-b")] {
            let s = Options::from_file(&dir.join(file))
                .unwrap()
                .resolve()
                .unwrap();
            assert_eq!(s.node_name, name);
            let me = peers.iter().find(|p| p.name == name).unwrap();
            assert_eq!(
                (me.underlay_ip, me.pod_subnet),
                (s.underlay_ip, s.pod_subnet)
            );
        }
    }
}
