//! weftd's settings (a TOML file, every key also a flag) and the peers file.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;
use weft_encap::vxlan::{Vni, DEFAULT_PORT};

use crate::io::xsk;
use crate::mac::MacAddr;
use crate::tables::{TunnelMode, TUNNEL_OVERHEAD};
pub use weft_proto::PortType;

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
/// The default TTL of a node's registration in etcd.
pub const DEFAULT_NODE_TTL_S: u32 = 30;
/// The shortest registration TTL: etcd's own minimum lease TTL is about 1.5 s.
pub const MIN_NODE_TTL_S: u32 = 2;
/// The longest registration TTL.
pub const MAX_NODE_TTL_S: u32 = 3_600;
/// The default reservation of a dead node's subnet after its registration expired.
pub const DEFAULT_SUBNET_GRACE_S: u64 = 86_400;
/// The longest reservation of a dead node's subnet (30 days).
pub const MAX_SUBNET_GRACE_S: u64 = 30 * 86_400;

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
    /// This node's pod subnet (for example 10.244.1.0/24). Required with the file
    /// store; with etcd, a node without one claims a free subnet of the cluster CIDR.
    #[arg(long)]
    pub pod_subnet: Option<Ipv4Net>,
    /// The whole cluster's pod range (for example 10.244.0.0/16).
    #[arg(long)]
    pub cluster_cidr: Option<Ipv4Net>,
    /// How traffic reaches peers: vxlan or sleeve (tunnels), or direct (host routes
    /// via the peer's underlay address, flannel's host-gw) [default: vxlan].
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Beside a tunnel: reach peers on this node's L2 segment with no encapsulation,
    /// as `mode = "direct"` does, and the others through the tunnel [default: false].
    #[arg(long)]
    pub direct_routing: Option<bool>,
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
    /// Where the cluster's nodes are learnt: file (the peers file) or etcd
    /// [default: file].
    #[arg(long, value_parser = parse_store)]
    pub store: Option<StoreKind>,
    /// Path of the peers file, reloaded on change (the file store).
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// etcd endpoints, comma-separated (`http://10.0.0.1:2379`, or `https://` with
    /// the TLS options).
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// The CA certificate (PEM) that etcd's server certificate must chain to.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// This node's client certificate (PEM) for etcd; needs etcd-key.
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of etcd-cert.
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
    /// The etcd key prefix all of weft's records live under [default: /weft/v1].
    #[arg(long)]
    pub etcd_prefix: Option<String>,
    /// Seconds a node's registration outlives its last renewal: a node silent for
    /// this long is removed from every peer [default: 30].
    #[arg(long)]
    pub node_ttl_s: Option<u32>,
    /// Prefix length of the subnets nodes claim from the cluster CIDR [default: 24].
    #[arg(long)]
    pub subnet_len: Option<u8>,
    /// Seconds a dead node's subnet stays reserved after its registration expired,
    /// so that a partitioned node never collides with a newcomer [default: 86400].
    #[arg(long)]
    pub subnet_grace_s: Option<u64>,
    /// This node's VTEP MAC [default: from the peers file, else derived from the name].
    #[arg(long)]
    pub vtep_mac: Option<MacAddr>,
    /// MTU of the underlay network [default: 1500]; pods get 50 bytes less.
    #[arg(long)]
    pub underlay_mtu: Option<u32>,
    /// MTU of pods and the host port, if lower than the mode allows [default: the
    /// underlay MTU, less 50 with a tunnel].
    #[arg(long)]
    pub pod_mtu: Option<u32>,
    /// Name of the host port [default: weft0].
    #[arg(long)]
    pub host_port: Option<String>,
    /// Directory for durable state [default: /var/lib/weft].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The port pods get unless they ask for another (CNI config `podPort`, or
    /// `WEFT_POD_PORT=` in CNI_ARGS): tap, or afxdp (a veth served by AF_XDP
    /// sockets) [default: tap].
    #[arg(long, value_parser = parse_port_type)]
    pub pod_port: Option<PortType>,
    /// When an AF_XDP port cannot be made (no kernel support, the memory limit, a
    /// missing capability), give the pod a TAP port instead of failing its ADD
    /// [default: false].
    #[arg(long)]
    pub afxdp_fallback: Option<bool>,
    /// Bind AF_XDP sockets in zero-copy mode; only drivers with AF_XDP zero-copy
    /// take it, not veth [default: false].
    #[arg(long)]
    pub afxdp_zero_copy: Option<bool>,
    /// UMEM frames (4 KiB each) per AF_XDP queue, a power of two from 64 to 16384;
    /// half receive, half send [default: 1024, 4 MiB per queue].
    #[arg(long)]
    pub afxdp_frames: Option<u32>,
    /// Encrypt the sleeve between nodes: off, on (seal to every peer with a key,
    /// accept plaintext too) or required (seal always; drop plaintext and send
    /// nothing to a peer without a key) [default: off]. Needs mode = "sleeve".
    #[arg(long, value_parser = parse_encryption)]
    pub encryption: Option<Encryption>,
    /// A file holding the cluster's pre-shared key (64 hex digits, mode 0600), mixed
    /// into every handshake; every node needs the same one.
    #[arg(long)]
    pub psk_file: Option<PathBuf>,
    /// Masquerade pods' traffic to anywhere outside the cluster CIDR (and the
    /// Service CIDR) behind the node's address, in an nftables table of weftd's own
    /// [default: true].
    #[arg(long)]
    pub masquerade: Option<bool>,
    /// The cluster's Service range (kube-apiserver's --service-cluster-ip-range):
    /// never masqueraded, as the cluster's own [default: none].
    #[arg(long)]
    pub service_cidr: Option<Ipv4Net>,
}

fn parse_port_type(s: &str) -> Result<PortType, String> {
    s.parse()
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

/// What a tunnel takes from the underlay MTU: VXLAN's 50 bytes in both tunnel
/// modes (a sleeve datagram of one record needs 44 of them), and with encryption a
/// sleeve datagram's 44 and the seal's 28 header and tag bytes: 72.
pub fn tunnel_overhead(mode: Mode, encryption: Encryption) -> u32 {
    match (mode.tunnel(), encryption) {
        (None, _) => 0,
        (Some(_), Encryption::Off) => TUNNEL_OVERHEAD,
        (Some(_), _) => {
            (weft_encap::sleeve::IPV4_OVERHEAD + weft_encap::sleeve::seal::SEAL_OVERHEAD) as u32
        }
    }
}

/// Where weftd keeps durable state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";

fn parse_encryption(s: &str) -> Result<Encryption, String> {
    s.parse()
}

/// Whether the sleeve between nodes is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Plaintext.
    #[default]
    Off,
    /// Sealed to every peer with a public key; plaintext is still accepted.
    On,
    /// Sealed always; plaintext from peers is dropped, and a peer with no key gets
    /// nothing.
    Required,
}

impl std::str::FromStr for Encryption {
    type Err = String;
    fn from_str(s: &str) -> Result<Encryption, String> {
        match s {
            "off" => Ok(Encryption::Off),
            "on" => Ok(Encryption::On),
            "required" => Ok(Encryption::Required),
            _ => Err(format!(
                "unknown encryption {s:?}: expected off, on or required"
            )),
        }
    }
}

fn parse_store(s: &str) -> Result<StoreKind, String> {
    match s {
        "file" => Ok(StoreKind::File),
        "etcd" => Ok(StoreKind::Etcd),
        _ => Err(format!("unknown store {s:?}: expected file or etcd")),
    }
}

/// How a node reaches its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// VXLAN tunnels.
    Vxlan,
    /// Sleeve tunnels.
    Sleeve,
    /// No tunnel: host routes to peers on the same L2 segment, and no way to others.
    Direct,
}

impl Mode {
    /// The tunnel, if the mode has one.
    pub fn tunnel(self) -> Option<TunnelMode> {
        match self {
            Mode::Vxlan => Some(TunnelMode::Vxlan),
            Mode::Sleeve => Some(TunnelMode::Sleeve),
            Mode::Direct => None,
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "vxlan" => Ok(Mode::Vxlan),
            "sleeve" => Ok(Mode::Sleeve),
            "direct" => Ok(Mode::Direct),
            _ => Err(format!(
                "unknown mode {s:?}: expected vxlan, sleeve or direct"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Vxlan => "vxlan",
            Mode::Sleeve => "sleeve",
            Mode::Direct => "direct",
        })
    }
}

/// Which cluster store a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The static peers file (or none: a cluster of one).
    File,
    /// etcd v3.
    Etcd,
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
            direct_routing: self.direct_routing.or(file.direct_routing),
            vni: self.vni.or(file.vni),
            port: self.port.or(file.port),
            workers: self.workers.or(file.workers),
            port_queues: self.port_queues.or(file.port_queues),
            poll_us: self.poll_us.or(file.poll_us),
            heartbeat_ms: self.heartbeat_ms.or(file.heartbeat_ms),
            conntrack_max: self.conntrack_max.or(file.conntrack_max),
            policy_dir: self.policy_dir.or(file.policy_dir),
            socket: self.socket.or(file.socket),
            store: self.store.or(file.store),
            peers: self.peers.or(file.peers),
            etcd_endpoints: self.etcd_endpoints.or(file.etcd_endpoints),
            etcd_ca: self.etcd_ca.or(file.etcd_ca),
            etcd_cert: self.etcd_cert.or(file.etcd_cert),
            etcd_key: self.etcd_key.or(file.etcd_key),
            etcd_prefix: self.etcd_prefix.or(file.etcd_prefix),
            node_ttl_s: self.node_ttl_s.or(file.node_ttl_s),
            subnet_len: self.subnet_len.or(file.subnet_len),
            subnet_grace_s: self.subnet_grace_s.or(file.subnet_grace_s),
            vtep_mac: self.vtep_mac.or(file.vtep_mac),
            underlay_mtu: self.underlay_mtu.or(file.underlay_mtu),
            pod_mtu: self.pod_mtu.or(file.pod_mtu),
            host_port: self.host_port.or(file.host_port),
            state_dir: self.state_dir.or(file.state_dir),
            pod_port: self.pod_port.or(file.pod_port),
            afxdp_fallback: self.afxdp_fallback.or(file.afxdp_fallback),
            afxdp_zero_copy: self.afxdp_zero_copy.or(file.afxdp_zero_copy),
            afxdp_frames: self.afxdp_frames.or(file.afxdp_frames),
            encryption: self.encryption.or(file.encryption),
            psk_file: self.psk_file.or(file.psk_file),
            masquerade: self.masquerade.or(file.masquerade),
            service_cidr: self.service_cidr.or(file.service_cidr),
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
        let store = self.store_settings(cluster_cidr, pod_subnet)?;
        let mode = self.mode.unwrap_or(Mode::Vxlan);
        let direct_routing = match (mode, self.direct_routing) {
            (Mode::Direct, Some(false)) => {
                let why = "false contradicts mode = \"direct\"".into();
                return Err(invalid("direct-routing", why));
            }
            (Mode::Direct, _) => true,
            (_, d) => d.unwrap_or(false),
        };
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
        let encryption = self.encryption(mode, direct_routing)?;
        let underlay_mtu = self.underlay_mtu(mode, encryption)?;
        let afxdp = self.afxdp()?;
        if let Some(s) = self.service_cidr {
            if s.contains(&cluster_cidr) || cluster_cidr.contains(&s) {
                let why = format!("{s} overlaps the cluster CIDR {cluster_cidr}");
                return Err(invalid("service-cidr", why));
            }
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
            mode,
            direct_routing,
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
                .unwrap_or_else(|| weft_proto::DEFAULT_SOCKET.into()),
            store,
            vtep_mac: self.vtep_mac,
            underlay_mtu,
            pod_mtu_limit: self.pod_mtu,
            host_port,
            state_dir: self.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            pod_port: self.pod_port.unwrap_or_default(),
            afxdp,
            encryption,
            psk_file: self.psk_file,
            masquerade: self.masquerade.unwrap_or(true),
            service_cidr: self.service_cidr,
        })
    }

    /// The underlay MTU, checked, and the pod MTU asked for checked against it.
    fn underlay_mtu(&self, mode: Mode, encryption: Encryption) -> Result<u32, ConfigError> {
        let underlay_mtu = self.underlay_mtu.unwrap_or(1500);
        if !(576..=9216).contains(&underlay_mtu) {
            let why = format!("{underlay_mtu}: between 576 and 9216");
            return Err(invalid("underlay-mtu", why));
        }
        if let Some(m) = self.pod_mtu {
            let overhead = tunnel_overhead(mode, encryption);
            let most = underlay_mtu - overhead;
            if !(576..=most).contains(&m) {
                let why = format!(
                    "{m}: between 576 and {most} (the underlay MTU, less the tunnel's {overhead})"
                );
                return Err(invalid("pod-mtu", why));
            }
        }
        Ok(underlay_mtu)
    }

    /// The encryption setting, checked against the mode.
    fn encryption(&self, mode: Mode, direct_routing: bool) -> Result<Encryption, ConfigError> {
        let encryption = self.encryption.unwrap_or_default();
        if encryption == Encryption::Off {
            if self.psk_file.is_some() {
                let why = "is set but encryption is off".into();
                return Err(invalid("psk-file", why));
            }
            return Ok(encryption);
        }
        if mode != Mode::Sleeve {
            let why = format!("needs mode = \"sleeve\" (this node's mode is {mode:?})");
            return Err(invalid("encryption", why.to_lowercase()));
        }
        if direct_routing {
            let why = "cannot be on with direct-routing: direct-routed traffic is not \
                       encapsulated, so it could not be encrypted"
                .into();
            return Err(invalid("encryption", why));
        }
        Ok(encryption)
    }

    /// How AF_XDP ports are made, checked.
    fn afxdp(&self) -> Result<Afxdp, ConfigError> {
        Ok(Afxdp {
            fallback: self.afxdp_fallback.unwrap_or(false),
            mode: xsk::Mode {
                zero_copy: self.afxdp_zero_copy.unwrap_or(false),
                multi_buffer: true,
            },
            geometry: match self.afxdp_frames {
                None => xsk::Geometry::DEFAULT,
                Some(n) => xsk::Geometry::new(n).map_err(|why| invalid("afxdp-frames", why))?,
            },
        })
    }

    /// The underlay address, the pod subnet (if given) and the cluster CIDR, checked
    /// together.
    fn addressing(&self) -> Result<(Ipv4Addr, Option<Ipv4Net>, Ipv4Net), ConfigError> {
        let underlay_ip = self
            .underlay_ip
            .ok_or(ConfigError::Missing("underlay-ip"))?;
        let cluster_cidr = self
            .cluster_cidr
            .ok_or(ConfigError::Missing("cluster-cidr"))?;
        if cluster_cidr.contains(&underlay_ip) {
            let why = format!("{underlay_ip} lies inside the cluster CIDR {cluster_cidr}");
            return Err(invalid("underlay-ip", why));
        }
        let Some(pod_subnet) = self.pod_subnet else {
            return Ok((underlay_ip, None, cluster_cidr));
        };
        check_pod_subnet(pod_subnet, cluster_cidr)?;
        Ok((underlay_ip, Some(pod_subnet), cluster_cidr))
    }

    /// The cluster store and its settings.
    fn store_settings(
        &self,
        cluster: Ipv4Net,
        pod_subnet: Option<Ipv4Net>,
    ) -> Result<StoreSettings, ConfigError> {
        let etcd_only = [
            ("etcd-endpoints", self.etcd_endpoints.is_some()),
            ("etcd-ca", self.etcd_ca.is_some()),
            ("etcd-cert", self.etcd_cert.is_some()),
            ("etcd-key", self.etcd_key.is_some()),
            ("etcd-prefix", self.etcd_prefix.is_some()),
            ("node-ttl-s", self.node_ttl_s.is_some()),
            ("subnet-len", self.subnet_len.is_some()),
            ("subnet-grace-s", self.subnet_grace_s.is_some()),
        ];
        match self.store.unwrap_or(StoreKind::File) {
            StoreKind::File => {
                if let Some((key, _)) = etcd_only.iter().find(|(_, set)| *set) {
                    let why = "it is a setting of store = \"etcd\"".into();
                    return Err(invalid(key, why));
                }
                if pod_subnet.is_none() {
                    return Err(ConfigError::Missing("pod-subnet"));
                }
                Ok(StoreSettings::File(self.peers.clone()))
            }
            StoreKind::Etcd => {
                if self.peers.is_some() {
                    let why = "it is the file store's; with etcd the nodes come from etcd".into();
                    return Err(invalid("peers", why));
                }
                if self.policy_dir.is_some() {
                    let why =
                        "with store = \"etcd\", policy objects live in etcd (deploy/STORE.md)"
                            .into();
                    return Err(invalid("policy-dir", why));
                }
                self.etcd_settings(cluster, pod_subnet)
                    .map(StoreSettings::Etcd)
            }
        }
    }

    /// The TLS to etcd, if its options are given, checked together.
    fn etcd_tls(&self) -> Result<Option<EtcdTls>, ConfigError> {
        let (ca, cert, key) = (&self.etcd_ca, &self.etcd_cert, &self.etcd_key);
        if ca.is_none() && cert.is_none() && key.is_none() {
            return Ok(None);
        }
        if cert.is_some() != key.is_some() {
            let why = "etcd-cert and etcd-key go together".into();
            return Err(invalid("etcd-cert", why));
        }
        let ca = ca.clone().ok_or_else(|| {
            invalid(
                "etcd-ca",
                "TLS to etcd needs the CA that signed its certificate".into(),
            )
        })?;
        Ok(Some(EtcdTls {
            ca,
            identity: cert.clone().zip(key.clone()),
        }))
    }

    fn etcd_settings(
        &self,
        cluster: Ipv4Net,
        pod_subnet: Option<Ipv4Net>,
    ) -> Result<EtcdSettings, ConfigError> {
        let endpoints = self
            .etcd_endpoints
            .clone()
            .filter(|e| !e.is_empty())
            .ok_or(ConfigError::Missing("etcd-endpoints"))?;
        let tls = self.etcd_tls()?;
        for e in &endpoints {
            let https = e.starts_with("https://");
            if !https && !e.starts_with("http://") {
                let why = format!("{e:?}: give http://host:port or https://host:port");
                return Err(invalid("etcd-endpoints", why));
            }
            if https != tls.is_some() {
                let why =
                    format!("{e:?}: https endpoints need the TLS options, http ones take none");
                return Err(invalid("etcd-endpoints", why));
            }
        }
        let prefix = self
            .etcd_prefix
            .clone()
            .unwrap_or_else(|| "/weft/v1".into());
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.len() < 2 {
            let why = format!("{prefix:?}: starts with / and does not end with one");
            return Err(invalid("etcd-prefix", why));
        }
        let node_ttl = self.node_ttl_s.unwrap_or(DEFAULT_NODE_TTL_S);
        if !(MIN_NODE_TTL_S..=MAX_NODE_TTL_S).contains(&node_ttl) {
            let why = format!("{node_ttl}: between {MIN_NODE_TTL_S} and {MAX_NODE_TTL_S}");
            return Err(invalid("node-ttl-s", why));
        }
        let subnet_len = match (self.subnet_len, pod_subnet) {
            (Some(len), Some(s)) if len != s.prefix_len() => {
                let why = format!("{len} differs from the given pod-subnet {s}");
                return Err(invalid("subnet-len", why));
            }
            (len, s) => len.or(s.map(|s| s.prefix_len())).unwrap_or(24),
        };
        if subnet_len <= cluster.prefix_len() || subnet_len > 30 {
            let why = format!(
                "/{subnet_len}: longer than the cluster CIDR's /{} and at most /30",
                cluster.prefix_len()
            );
            return Err(invalid("subnet-len", why));
        }
        let grace = self.subnet_grace_s.unwrap_or(DEFAULT_SUBNET_GRACE_S);
        if grace > MAX_SUBNET_GRACE_S {
            let why = format!("{grace}: at most {MAX_SUBNET_GRACE_S}");
            return Err(invalid("subnet-grace-s", why));
        }
        Ok(EtcdSettings {
            endpoints,
            tls,
            prefix,
            node_ttl: Duration::from_secs(u64::from(node_ttl)),
            subnet_len,
            subnet_grace: Duration::from_secs(grace),
        })
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

/// Checks a pod subnet against the cluster CIDR.
fn check_pod_subnet(pod_subnet: Ipv4Net, cluster_cidr: Ipv4Net) -> Result<(), ConfigError> {
    if pod_subnet != pod_subnet.trunc() {
        let why = format!(
            "{pod_subnet} has host bits set; did you mean {}?",
            pod_subnet.trunc()
        );
        return Err(invalid("pod-subnet", why));
    }
    if pod_subnet.prefix_len() > 30 {
        let why = format!("{pod_subnet} is too small: it needs a gateway and pods (/30 at most)");
        return Err(invalid("pod-subnet", why));
    }
    if !cluster_cidr.contains(&pod_subnet) || cluster_cidr == pod_subnet {
        let why =
            format!("{pod_subnet} must lie inside the cluster CIDR {cluster_cidr} and be smaller");
        return Err(invalid("pod-subnet", why));
    }
    Ok(())
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
    /// This node's pod subnet, if given (else the store leases one).
    pub pod_subnet: Option<Ipv4Net>,
    /// The cluster's pod range.
    pub cluster_cidr: Ipv4Net,
    /// How peers are reached.
    pub mode: Mode,
    /// Whether peers on this node's segment are reached with no tunnel.
    pub direct_routing: bool,
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
    /// The cluster store.
    pub store: StoreSettings,
    /// VTEP MAC, if given.
    pub vtep_mac: Option<MacAddr>,
    /// Underlay MTU.
    pub underlay_mtu: u32,
    /// The pod MTU asked for, if any.
    pub pod_mtu_limit: Option<u32>,
    /// Host port name.
    pub host_port: String,
    /// Durable state directory.
    pub state_dir: PathBuf,
    /// The port type of pods that do not ask for one.
    pub pod_port: PortType,
    /// How AF_XDP ports are made.
    pub afxdp: Afxdp,
    /// Whether the sleeve is encrypted.
    pub encryption: Encryption,
    /// The cluster's pre-shared key file, if any.
    pub psk_file: Option<PathBuf>,
    /// Whether pods' traffic leaving the cluster is masqueraded.
    pub masquerade: bool,
    /// The cluster's Service range, if configured.
    pub service_cidr: Option<Ipv4Net>,
}

/// How AF_XDP ports are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Afxdp {
    /// Give a pod a TAP port when its AF_XDP port cannot be made.
    pub fallback: bool,
    /// How the sockets are bound.
    pub mode: xsk::Mode,
    /// The frame pool of each queue.
    pub geometry: xsk::Geometry,
}

impl Settings {
    /// The MTU pods (and the host port) get: the underlay's, less the tunnel's
    /// overhead when there is a tunnel.
    pub fn pod_mtu(&self) -> u32 {
        let most = self.underlay_mtu - tunnel_overhead(self.mode, self.encryption);
        self.pod_mtu_limit.map_or(most, |m| m.min(most))
    }

    /// The largest UDP payload the core may build: what fits the underlay MTU, less
    /// the seal's header and tag when datagrams are sealed after.
    pub fn max_datagram(&self) -> usize {
        let sealed = match self.encryption {
            Encryption::Off => 0,
            _ => weft_encap::sleeve::seal::SEAL_OVERHEAD,
        };
        self.underlay_mtu as usize
            - weft_encap::ipv4::HEADER_LEN
            - weft_encap::udp::HEADER_LEN
            - sealed
    }

    /// The framing of the tunnel socket: the mode's tunnel, and sleeve's (for
    /// nothing but the core's choice of decoder) in direct mode, where the socket is
    /// bound to no port any peer sends to.
    pub fn framing(&self) -> TunnelMode {
        self.mode.tunnel().unwrap_or(TunnelMode::Sleeve)
    }
}

/// The gateway address of a pod subnet: its first address.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The cluster store a node uses, with its settings.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// The static peers file, if any (none: a cluster of one).
    File(Option<PathBuf>),
    /// etcd.
    Etcd(EtcdSettings),
}

/// How to reach etcd, and the leases a node holds there.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// Endpoints, `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// TLS, for `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// The prefix every key lives under (`/weft/v1`).
    pub prefix: String,
    /// How long a registration outlives its last renewal.
    pub node_ttl: Duration,
    /// The prefix length of claimed subnets.
    pub subnet_len: u8,
    /// How long a dead node's subnet stays reserved after its registration expired.
    pub subnet_grace: Duration,
}

/// etcd's TLS files.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA certificate the server's must chain to.
    pub ca: PathBuf,
    /// The client certificate and its key, if etcd asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
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
        assert_eq!(s.mode, Mode::Vxlan);
        assert!(!s.direct_routing);
        assert_eq!((s.vni.get(), s.port), (1, 8472));
        assert_eq!(
            gateway_of(s.pod_subnet.unwrap()),
            Ipv4Addr::new(10, 244, 1, 1)
        );
        assert_eq!(s.pod_mtu(), 1450);
        assert_eq!(s.socket, Path::new("/run/weft/weft.sock"));
        assert_eq!(s.host_port, "weft0");
        assert_eq!(s.poll, Duration::from_micros(100));
        assert_eq!(s.heartbeat, Duration::from_secs(1));
        assert!(s.masquerade);
        assert_eq!(s.service_cidr, None);
    }

    #[test]
    fn flags_override_the_file() {
        let flags = Options {
            mode: Some(Mode::Sleeve),
            port: Some(9000),
            ..Options::default()
        };
        let s = flags.or(base()).resolve().unwrap();
        assert_eq!((s.mode, s.port), (Mode::Sleeve, 9000));
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let cases: [(&str, &str); 10] = [
            (
                "service-cidr = \"10.244.128.0/17\"",
                "overlaps the cluster CIDR",
            ),
            ("service-cidr = \"10.0.0.0/8\"", "overlaps the cluster CIDR"),
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

    fn etcd(extra: &str) -> Result<Settings, String> {
        let text = format!(
            "node-name = \"a\"\nunderlay-ip = \"10.250.0.1\"\ncluster-cidr = \"10.244.0.0/16\"\nstore = \"etcd\"\n{extra}"
        );
        let o: Options = toml::from_str(&text).map_err(|e| e.to_string())?;
        o.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn etcd_settings_default_and_check() {
        let s = etcd("etcd-endpoints = [\"http://127.0.0.1:2379\"]\n").unwrap();
        let StoreSettings::Etcd(e) = &s.store else {
            panic!("{:?}", s.store)
        };
        assert_eq!(e.prefix, "/weft/v1");
        assert_eq!(e.node_ttl, Duration::from_secs(30));
        assert_eq!(e.subnet_grace, Duration::from_secs(86_400));
        assert_eq!(e.subnet_len, 24);
        assert!(e.tls.is_none());
        assert_eq!(s.pod_subnet, None, "etcd leases the subnet");
        let ep = "etcd-endpoints = [\"http://127.0.0.1:2379\"]\n";
        let cases: [(String, &str); 10] = [
            (format!("{ep}etcd-cert = \"/c.pem\"\n"), "go together"),
            (String::new(), "etcd-endpoints"),
            (format!("{ep}peers = \"/p.toml\"\n"), "peers"),
            (format!("{ep}policy-dir = \"/p\"\n"), "policy-dir"),
            (format!("{ep}subnet-len = 16\n"), "subnet-len"),
            (format!("{ep}node-ttl-s = 1\n"), "node-ttl-s"),
            (
                format!("{ep}etcd-cert = \"/c.pem\"\netcd-key = \"/k.pem\"\n"),
                "etcd-ca",
            ),
            (format!("{ep}etcd-ca = \"/ca.pem\"\n"), "https"),
            (format!("{ep}etcd-prefix = \"weft\"\n"), "etcd-prefix"),
            (
                "etcd-endpoints = [\"127.0.0.1:2379\"]\n".into(),
                "http://host:port",
            ),
        ];
        for (extra, needle) in cases {
            let msg = etcd(&extra).unwrap_err();
            assert!(msg.contains(needle), "{extra}: {msg}");
        }
        // The file store takes none of etcd's settings, and needs a subnet.
        let mut o = base();
        o.node_ttl_s = Some(10);
        assert!(o.resolve().unwrap_err().to_string().contains("node-ttl-s"));
        let mut o = base();
        o.pod_subnet = None;
        assert!(o.resolve().unwrap_err().to_string().contains("pod-subnet"));
    }

    #[test]
    fn direct_mode_and_direct_routing() {
        let mut o = base();
        o.mode = Some(Mode::Direct);
        let s = o.clone().resolve().unwrap();
        assert!(s.direct_routing);
        assert_eq!(s.pod_mtu(), 1500, "no tunnel, no overhead");
        o.direct_routing = Some(false);
        assert!(o
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("direct-routing"));
        let mut o = base();
        o.direct_routing = Some(true);
        let s = o.resolve().unwrap();
        assert_eq!(
            (s.mode, s.direct_routing, s.pod_mtu()),
            (Mode::Vxlan, true, 1450)
        );
    }

    #[test]
    fn encryption_needs_the_sleeve_and_costs_its_overhead() {
        let mut o = base();
        assert_eq!(o.clone().resolve().unwrap().encryption, Encryption::Off);
        o.encryption = Some(Encryption::Required);
        let err = o.clone().resolve().unwrap_err().to_string();
        assert!(err.contains("needs mode = \"sleeve\""), "{err}");
        o.mode = Some(Mode::Sleeve);
        let s = o.clone().resolve().unwrap();
        assert_eq!(s.pod_mtu(), 1500 - 72, "44 of the sleeve, 28 of the seal");
        assert_eq!(s.max_datagram(), 1500 - 28 - 28);
        o.pod_mtu = Some(1450);
        let err = o.clone().resolve().unwrap_err().to_string();
        assert!(
            err.contains("between 576 and 1428") && err.contains("72"),
            "{err}"
        );
        o.pod_mtu = None;
        o.direct_routing = Some(true);
        let err = o.clone().resolve().unwrap_err().to_string();
        assert!(err.contains("direct-routing"), "{err}");
        let mut o = base();
        o.psk_file = Some("/etc/weft/psk".into());
        let err = o.resolve().unwrap_err().to_string();
        assert!(
            err.contains("psk-file") && err.contains("encryption is off"),
            "{err}"
        );
        assert!("maybe".parse::<Encryption>().is_err());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The configs `deploy/examples` ships are valid.
    #[test]
    fn shipped_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let peers = crate::control::store::file::read_peers(&dir.join("peers.toml")).unwrap();
        assert_eq!(peers.len(), 2);
        for (file, name) in [("node-a.toml", "node-a"), ("node-b.toml", "node-b")] {
            let s = Options::from_file(&dir.join(file))
                .unwrap()
                .resolve()
                .unwrap();
            assert_eq!(s.node_name, name);
            let me = peers.iter().find(|p| p.name == name).unwrap();
            assert_eq!(
                (me.underlay_ip, Some(me.pod_subnet)),
                (s.underlay_ip, s.pod_subnet)
            );
        }
    }
}
