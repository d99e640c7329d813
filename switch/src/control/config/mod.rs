//! weftd's settings (a TOML file in sections, every key also a flag) and the peers
//! file.
//!
//! The top level of the file is this node's own (its name, addresses, store and
//! paths); each section (`[tunnel]`, `[mtu]`, `[encryption]`, `[datapath]`,
//! `[afxdp]`, `[policy]`, `[host]`, `[etcd]`, `[kubernetes]`, `[observability]`) is a module here that holds, in one
//! place, its options as given (the table in the file and the flags, one struct),
//! their checks and defaults (`resolve`), the checked settings and an error enum.
//! `file` reads the file, and the flat layout of before the sections.

mod afxdp;
mod datapath;
mod encryption;
mod etcd;
mod file;
mod host;
mod kubernetes;
mod mtu;
mod observability;
mod policy;
#[cfg(test)]
mod tests;
mod tunnel;

use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::FromArgMatches;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

pub use afxdp::*;
pub use datapath::*;
pub use encryption::*;
pub use etcd::*;
pub use file::{FlatKey, FLAT_KEYS};
pub use host::*;
pub use kubernetes::*;
pub use mtu::*;
pub use observability::*;
pub use policy::*;
pub use tunnel::*;

use crate::tables::TunnelMode;

/// Where weftd keeps durable state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";

/// Settings as given, each optional: from the config file and from flags. Keys at
/// the top level and in each section are named as in the file; every one is also a
/// flag, named as in the flat layout (`--etcd-ca` for `ca` under `[etcd]`). A flag
/// overrides the file: [`Options::with_flags`], or clap's
/// `update_from_arg_matches` on the options read from the file, sets only the
/// flags given.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
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
    /// This node's IPv6 pod subnet (for example fd00:10:244:1::/64), for a
    /// dual-stack node with the file store: pods get an address of it beside
    /// their IPv4 one. Needs cluster-cidr-v6.
    #[arg(long)]
    pub pod_subnet_v6: Option<Ipv6Net>,
    /// The whole cluster's IPv6 pod range (for example fd00:10:244::/56): makes
    /// the node dual-stack. With the Kubernetes store, the node's IPv6 subnet is
    /// the IPv6 one of its Node's spec.podCIDRs; the etcd store has no IPv6 yet.
    #[arg(long)]
    pub cluster_cidr_v6: Option<Ipv6Net>,
    /// Where the cluster's nodes are learnt: file (the peers file), etcd, or
    /// kubernetes (the API server) [default: file].
    #[arg(long, value_parser = parse_store)]
    pub store: Option<StoreKind>,
    /// Path of the peers file, reloaded on change (the file store).
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// Path of the control socket [default: /run/weft/weft.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// A group, by name or gid, whose members may query weftd through the control
    /// socket (status, ports, peers, routes, policy, check): the socket is then
    /// 0660 and the group's. Without it the socket is 0600, root's only. Attach,
    /// detach and gc need uid 0 either way.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Directory for durable state [default: /var/lib/weft].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// `[tunnel]`.
    #[command(flatten, next_help_heading = "[tunnel] in the config file")]
    pub tunnel: TunnelOptions,
    /// `[mtu]`.
    #[command(flatten, next_help_heading = "[mtu] in the config file")]
    pub mtu: MtuOptions,
    /// `[encryption]`.
    #[command(flatten, next_help_heading = "[encryption] in the config file")]
    pub encryption: EncryptionOptions,
    /// `[datapath]`.
    #[command(flatten, next_help_heading = "[datapath] in the config file")]
    pub datapath: DatapathOptions,
    /// `[afxdp]`.
    #[command(flatten, next_help_heading = "[afxdp] in the config file")]
    pub afxdp: AfxdpOptions,
    /// `[policy]`.
    #[command(flatten, next_help_heading = "[policy] in the config file")]
    pub policy: PolicyOptions,
    /// `[host]`.
    #[command(flatten, next_help_heading = "[host] in the config file")]
    pub host: HostOptions,
    /// `[etcd]`.
    #[command(flatten, next_help_heading = "[etcd] in the config file")]
    pub etcd: EtcdOptions,
    /// `[kubernetes]`.
    #[command(flatten, next_help_heading = "[kubernetes] in the config file")]
    pub kubernetes: KubernetesOptions,
    /// `[observability]`.
    #[command(flatten, next_help_heading = "[observability] in the config file")]
    pub observability: ObservabilityOptions,
}

fn parse_store(s: &str) -> Result<StoreKind, String> {
    match s {
        "file" => Ok(StoreKind::File),
        "etcd" => Ok(StoreKind::Etcd),
        "kubernetes" => Ok(StoreKind::Kubernetes),
        _ => Err(format!(
            "unknown store {s:?}: expected file, etcd or kubernetes"
        )),
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
    /// The Kubernetes API server.
    Kubernetes,
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
    /// The config file gives a setting twice: at the top level as the flat layout
    /// did, and in its section.
    #[error(
        "parsing {path}: `{}` at the top level and `{}` under [{}] are the same setting: keep the one under [{}]",
        key.flat, key.key, key.section, key.section
    )]
    Twice {
        /// The file.
        path: String,
        /// The setting.
        key: FlatKey,
    },
    /// The config file has a section's name as a value, beside flat keys that
    /// belong in the section.
    #[error("parsing {path}: `{section}` is a section ([{section}]), not a value")]
    NotASection {
        /// The file.
        path: String,
        /// The section.
        section: &'static str,
    },
    /// A bad setting at the top level.
    #[error(transparent)]
    Node(#[from] NodeConfigError),
    /// A bad `[tunnel]` setting.
    #[error(transparent)]
    Tunnel(#[from] TunnelConfigError),
    /// A bad `[mtu]` setting.
    #[error(transparent)]
    Mtu(#[from] MtuConfigError),
    /// A bad `[encryption]` setting.
    #[error(transparent)]
    Encryption(#[from] EncryptionConfigError),
    /// A bad `[datapath]` setting.
    #[error(transparent)]
    Datapath(#[from] DatapathConfigError),
    /// A bad `[afxdp]` setting.
    #[error(transparent)]
    Afxdp(#[from] AfxdpConfigError),
    /// A bad `[policy]` setting.
    #[error(transparent)]
    Policy(#[from] PolicyConfigError),
    /// A bad `[host]` setting.
    #[error(transparent)]
    Host(#[from] HostConfigError),
    /// A bad `[etcd]` setting.
    #[error(transparent)]
    Etcd(#[from] EtcdConfigError),
    /// A bad `[kubernetes]` setting.
    #[error(transparent)]
    Kubernetes(#[from] KubernetesConfigError),
    /// The peers file is inconsistent.
    #[error("peers file {path}: {why}")]
    Peers {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// A bad setting at the top level: this node's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeConfigError {
    /// A required setting is missing.
    #[error("missing setting {0}: give it in the config file or as --{0}")]
    Missing(&'static str),
    /// An empty node name.
    #[error("invalid node-name: empty")]
    EmptyName,
    /// An underlay address among the pods'.
    #[error("invalid underlay-ip: {ip} lies inside the cluster CIDR {cluster}")]
    UnderlayInCluster {
        /// The underlay address.
        ip: Ipv4Addr,
        /// The cluster CIDR.
        cluster: Ipv4Net,
    },
    /// A pod subnet with host bits set.
    #[error("invalid pod-subnet: {0} has host bits set; did you mean {trunc}?", trunc = .0.trunc())]
    HostBits(Ipv4Net),
    /// A pod subnet with no room for a gateway and pods.
    #[error("invalid pod-subnet: {0} is too small: it needs a gateway and pods (/30 at most)")]
    TooSmall(Ipv4Net),
    /// A pod subnet outside the cluster CIDR, or all of it.
    #[error(
        "invalid pod-subnet: {pod_subnet} must lie inside the cluster CIDR {cluster} and be smaller"
    )]
    Outside {
        /// The pod subnet.
        pod_subnet: Ipv4Net,
        /// The cluster CIDR.
        cluster: Ipv4Net,
    },
    /// An IPv6 setting without its pair, or with the other's range.
    #[error("invalid {0}")]
    Ipv6(String),
    /// A peers file on the etcd or Kubernetes store.
    #[error("invalid peers: it is the file store's; with {0} the nodes come from {0}")]
    PeersWithStore(&'static str),
    /// A socket group that is no group of this host.
    #[error("invalid socket-group: {group:?}: {why}")]
    SocketGroup {
        /// The group as given.
        group: String,
        /// Why it cannot be used.
        why: String,
    },
}

impl Options {
    /// Overrides the settings that `args` (weftd's flags, without the program's
    /// name) give, as weftd's flags override its config file.
    pub fn with_flags<I, T>(mut self, args: I) -> Result<Options, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let command = <Options as clap::Args>::augment_args(clap::Command::new("weftd"));
        let argv = std::iter::once(OsString::from("weftd")).chain(args.into_iter().map(Into::into));
        self.update_from_arg_matches(&command.try_get_matches_from(argv)?)?;
        Ok(self)
    }

    /// Checks the options and applies defaults.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let node_name = self
            .node_name
            .clone()
            .ok_or(NodeConfigError::Missing("node-name"))?;
        if node_name.is_empty() {
            return Err(NodeConfigError::EmptyName.into());
        }
        let (underlay_ip, pod_subnet, cluster_cidr) = self.addressing()?;
        let kind = self.store.unwrap_or(StoreKind::File);
        let ipv6 = self.addressing_v6(kind)?;
        let store = match kind {
            StoreKind::File => {
                self.etcd.refuse()?;
                self.kubernetes.refuse()?;
                pod_subnet.ok_or(NodeConfigError::Missing("pod-subnet"))?;
                StoreSettings::File(self.peers)
            }
            StoreKind::Etcd | StoreKind::Kubernetes if self.peers.is_some() => {
                let store = if kind == StoreKind::Etcd {
                    "etcd"
                } else {
                    "the API server"
                };
                return Err(NodeConfigError::PeersWithStore(store).into());
            }
            StoreKind::Etcd => {
                self.kubernetes.refuse()?;
                StoreSettings::Etcd(self.etcd.resolve(cluster_cidr, pod_subnet)?)
            }
            StoreKind::Kubernetes => {
                self.etcd.refuse()?;
                let switch = self.host.services == Some(ServicesMode::Switch);
                StoreSettings::Kubernetes(self.kubernetes.resolve(pod_subnet, switch)?)
            }
        };
        let policy = self.policy.resolve(kind)?;
        let tunnel = self.tunnel.resolve()?;
        let datapath = self.datapath.resolve()?;
        let encryption = self.encryption.resolve(&tunnel)?;
        let mtu = self.mtu.resolve(tunnel.mode, encryption.mode)?;
        let settings = Settings {
            node_name,
            underlay_ip,
            pod_subnet,
            cluster_cidr,
            ipv6,
            socket: self
                .socket
                .unwrap_or_else(|| weft_proto::DEFAULT_SOCKET.into()),
            socket_group: self.socket_group.as_deref().map(group_id).transpose()?,
            state_dir: self.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            store,
            tunnel,
            mtu,
            encryption,
            datapath,
            afxdp: self.afxdp.resolve()?,
            policy,
            host: self.host.resolve(cluster_cidr)?,
            observability: self.observability.resolve(),
        };
        // IPv6 needs a link MTU of 1280 (RFC 8200 §5): below it, a pod's kernel
        // turns IPv6 off on its interface.
        if settings.ipv6.is_some() && settings.pod_mtu() < IPV6_MIN_MTU {
            return Err(NodeConfigError::Ipv6(format!(
                "cluster-cidr-v6: IPv6 needs a pod MTU of at least {IPV6_MIN_MTU}, and pods get {} \
                 (underlay-mtu less the tunnel's overhead, or pod-mtu)",
                settings.pod_mtu()
            ))
            .into());
        }
        Ok(settings)
    }

    /// The underlay address, the pod subnet (if given) and the cluster CIDR, checked
    /// together.
    fn addressing(&self) -> Result<(Ipv4Addr, Option<Ipv4Net>, Ipv4Net), NodeConfigError> {
        let underlay_ip = self
            .underlay_ip
            .ok_or(NodeConfigError::Missing("underlay-ip"))?;
        let cluster = self
            .cluster_cidr
            .ok_or(NodeConfigError::Missing("cluster-cidr"))?;
        if cluster.contains(&underlay_ip) {
            return Err(NodeConfigError::UnderlayInCluster {
                ip: underlay_ip,
                cluster,
            });
        }
        let Some(pod_subnet) = self.pod_subnet else {
            return Ok((underlay_ip, None, cluster));
        };
        check_pod_subnet(pod_subnet, cluster)?;
        Ok((underlay_ip, Some(pod_subnet), cluster))
    }
}

impl Options {
    /// The IPv6 pod subnet and cluster range, if given, checked together. With
    /// the Kubernetes store the subnet is the Node's, and only the range is given.
    fn addressing_v6(&self, kind: StoreKind) -> Result<Option<Ipv6Subnets>, NodeConfigError> {
        let refuse = |why: &str| Err(NodeConfigError::Ipv6(why.into()));
        let (subnet, cluster) = match (self.pod_subnet_v6, self.cluster_cidr_v6, kind) {
            (None, None, _) => return Ok(None),
            (Some(_), None, _) => return refuse("pod-subnet-v6: it needs cluster-cidr-v6"),
            (Some(_), Some(_), StoreKind::Kubernetes) => {
                return refuse(
                    "pod-subnet-v6: with store = \"kubernetes\" the node's IPv6 pod subnet is \
                     the IPv6 one of its Node's spec.podCIDRs; leave pod-subnet-v6 out",
                )
            }
            (None, Some(c), StoreKind::Kubernetes) => (None, c),
            (_, Some(_), StoreKind::Etcd) => {
                return refuse(
                    "cluster-cidr-v6: IPv6 pods are served with the file and Kubernetes \
                     stores, so far (the etcd store leases IPv4 subnets only)",
                )
            }
            (None, Some(_), _) => return refuse("cluster-cidr-v6: it needs pod-subnet-v6"),
            (Some(s), Some(c), _) => (Some(s), c),
        };
        check_cluster6(cluster).map_err(NodeConfigError::Ipv6)?;
        if let Some(subnet) = subnet {
            check_subnet6(subnet, cluster)
                .map_err(|why| NodeConfigError::Ipv6(format!("pod-subnet-v6: {why}")))?;
        }
        Ok(Some(Ipv6Subnets { subnet, cluster }))
    }
}

/// Why `cluster` cannot be the cluster's IPv6 pod range, if it cannot: pods'
/// addresses must be routable unicast, not link-local, multicast, loopback,
/// unspecified or IPv4-mapped.
fn check_cluster6(cluster: Ipv6Net) -> Result<(), String> {
    let first = cluster.network().segments()[0];
    let mapped = "::ffff:0:0/96".parse::<Ipv6Net>().expect("a prefix");
    if first & 0xffc0 == 0xfe80
        || first & 0xff00 == 0xff00
        || cluster.contains(&Ipv6Addr::LOCALHOST)
        || cluster.contains(&Ipv6Addr::UNSPECIFIED)
        || mapped.contains(&cluster.network())
    {
        return Err(format!(
            "cluster-cidr-v6: {cluster} is not a range of routable unicast addresses"
        ));
    }
    Ok(())
}

/// Why `subnet` cannot be a node's IPv6 pod subnet in `cluster`, if it cannot:
/// no host bits, a /48 to a /126, inside the range and smaller.
pub fn check_subnet6(subnet: Ipv6Net, cluster: Ipv6Net) -> Result<(), String> {
    if subnet != subnet.trunc() {
        return Err(format!(
            "{subnet} has host bits set; did you mean {}?",
            subnet.trunc()
        ));
    }
    let (min, max) = (
        <Ipv6Net as weft_ipam::Family>::MIN_PREFIX_LEN,
        <Ipv6Net as weft_ipam::Family>::MAX_PREFIX_LEN,
    );
    if !(min..=max).contains(&subnet.prefix_len()) {
        return Err(format!("{subnet} must be a /{min} to a /{max}"));
    }
    if !cluster.contains(&subnet) || cluster == subnet {
        return Err(format!(
            "{subnet} must lie inside cluster-cidr-v6 {cluster} and be smaller"
        ));
    }
    Ok(())
}

/// The smallest MTU of an IPv6 link.
const IPV6_MIN_MTU: u32 = 1280;

/// A dual-stack node's IPv6 pod subnet and the cluster's IPv6 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Subnets {
    /// This node's IPv6 pod subnet, as configured; none where the store gives it
    /// (the Kubernetes store: the Node's IPv6 podCIDR).
    pub subnet: Option<Ipv6Net>,
    /// The cluster's IPv6 pod range.
    pub cluster: Ipv6Net,
}

/// The gid of the group `group` names: a number, or a name in the host's group
/// database.
fn group_id(group: &str) -> Result<u32, NodeConfigError> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let why = match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => return Ok(g.gid.as_raw()),
        Ok(None) => "no such group".to_owned(),
        Err(e) => format!("looking it up: {e}"),
    };
    Err(NodeConfigError::SocketGroup {
        group: group.to_owned(),
        why,
    })
}

/// Checks a pod subnet against the cluster CIDR.
fn check_pod_subnet(pod_subnet: Ipv4Net, cluster: Ipv4Net) -> Result<(), NodeConfigError> {
    if pod_subnet != pod_subnet.trunc() {
        return Err(NodeConfigError::HostBits(pod_subnet));
    }
    if pod_subnet.prefix_len() > 30 {
        return Err(NodeConfigError::TooSmall(pod_subnet));
    }
    if !cluster.contains(&pod_subnet) || cluster == pod_subnet {
        return Err(NodeConfigError::Outside {
            pod_subnet,
            cluster,
        });
    }
    Ok(())
}

/// weftd's checked settings: this node's own, and a struct per section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// This node's name.
    pub node_name: String,
    /// Underlay address the tunnels bind to.
    pub underlay_ip: Ipv4Addr,
    /// This node's pod subnet, if given (else the store leases one).
    pub pod_subnet: Option<Ipv4Net>,
    /// The cluster's pod range.
    pub cluster_cidr: Ipv4Net,
    /// This node's IPv6 pod subnet and the cluster's, on a dual-stack node.
    pub ipv6: Option<Ipv6Subnets>,
    /// Control socket path.
    pub socket: PathBuf,
    /// The group (gid) that may query through the control socket, if any.
    pub socket_group: Option<u32>,
    /// Durable state directory.
    pub state_dir: PathBuf,
    /// The cluster store.
    pub store: StoreSettings,
    /// How peers are reached: `[tunnel]`.
    pub tunnel: TunnelSettings,
    /// The MTUs: `[mtu]`.
    pub mtu: MtuSettings,
    /// Whether the sleeve is sealed: `[encryption]`.
    pub encryption: EncryptionSettings,
    /// The workers: `[datapath]`.
    pub datapath: DatapathSettings,
    /// How AF_XDP ports are made: `[afxdp]`.
    pub afxdp: Afxdp,
    /// Where policy comes from: `[policy]`.
    pub policy: PolicySettings,
    /// The host port and the egress masquerade: `[host]`.
    pub host: HostSettings,
    /// Metrics, logs and the flow log: `[observability]`.
    pub observability: ObservabilitySettings,
}

impl Settings {
    /// The MTU pods (and the host port) get: the underlay's, less the tunnel's
    /// overhead when there is a tunnel.
    pub fn pod_mtu(&self) -> u32 {
        let most = self.mtu.underlay - tunnel_overhead(self.tunnel.mode, self.encryption.mode);
        self.mtu.pod_limit.map_or(most, |m| m.min(most))
    }

    /// The largest UDP payload the core may build: what fits the underlay MTU, less
    /// the seal's header and tag when datagrams are sealed after.
    pub fn max_datagram(&self) -> usize {
        let sealed = match self.encryption.mode {
            Encryption::Off => 0,
            _ => weft_encap::sleeve::seal::SEAL_OVERHEAD,
        };
        self.mtu.underlay as usize
            - weft_encap::ipv4::HEADER_LEN
            - weft_encap::udp::HEADER_LEN
            - sealed
    }

    /// The framing of the tunnel socket: the mode's tunnel, and sleeve's (for
    /// nothing but the core's choice of decoder) in direct mode, where the socket is
    /// bound to no port any peer sends to.
    pub fn framing(&self) -> TunnelMode {
        self.tunnel.mode.tunnel().unwrap_or(TunnelMode::Sleeve)
    }
}

pub use crate::tables::gateway_of;

/// The cluster store a node uses, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    /// The static peers file, if any (none: a cluster of one).
    File(Option<PathBuf>),
    /// etcd.
    Etcd(EtcdSettings),
    /// The Kubernetes API server.
    Kubernetes(KubernetesSettings),
}
