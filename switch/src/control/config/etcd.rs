//! `[etcd]`: how to reach etcd, and the leases a node holds there.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;

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
/// The default prefix every key lives under.
pub const DEFAULT_PREFIX: &str = "/weft/v1";

/// `[etcd]` as given: the settings of `store = "etcd"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct EtcdOptions {
    /// etcd endpoints, comma-separated (`http://10.0.0.1:2379`, or `https://` with
    /// the TLS options).
    #[arg(
        id = "etcd_endpoints",
        long = "etcd-endpoints",
        value_name = "ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    pub endpoints: Option<Vec<String>>,
    /// The CA certificate (PEM) that etcd's server certificate must chain to.
    #[arg(id = "etcd_ca", long = "etcd-ca", value_name = "ETCD_CA")]
    pub ca: Option<PathBuf>,
    /// This node's client certificate (PEM) for etcd; needs etcd-key.
    #[arg(id = "etcd_cert", long = "etcd-cert", value_name = "ETCD_CERT")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of etcd-cert.
    #[arg(id = "etcd_key", long = "etcd-key", value_name = "ETCD_KEY")]
    pub key: Option<PathBuf>,
    /// The etcd key prefix all of weft's records live under [default: /weft/v1].
    #[arg(id = "etcd_prefix", long = "etcd-prefix", value_name = "ETCD_PREFIX")]
    pub prefix: Option<String>,
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
    /// Accept plain `http://` endpoints on other hosts than this one: weft's
    /// records, and etcd's credentials, then cross the network in the clear, and
    /// anyone on the path can rewrite the cluster [default: false].
    #[arg(
        id = "etcd_insecure",
        long = "etcd-insecure",
        value_name = "ETCD_INSECURE"
    )]
    pub insecure: Option<bool>,
}

/// A bad `[etcd]` setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdConfigError {
    /// `store = "etcd"` with no endpoint.
    #[error("missing setting [etcd] endpoints: give it in the config file or as --etcd-endpoints")]
    NoEndpoints,
    /// An endpoint that is no URL of etcd's.
    #[error(
        "invalid [etcd] endpoints (--etcd-endpoints): {0:?}: give http://host:port or https://host:port"
    )]
    Scheme(String),
    /// An `https://` endpoint without the TLS settings, or an `http://` one with them.
    #[error(
        "invalid [etcd] endpoints (--etcd-endpoints): {0:?}: https endpoints need the TLS options, http ones take none"
    )]
    TlsMismatch(String),
    /// An `http://` endpoint off this host, with `insecure` not set.
    #[error(
        "invalid [etcd] endpoints (--etcd-endpoints): {0:?} is plain http to another host, \
         so weft's records and etcd's credentials would cross the network in the clear: \
         give https:// with ca (--etcd-ca), or set [etcd] insecure = true (--etcd-insecure true) \
         to accept that"
    )]
    Insecure(String),
    /// A client certificate without its key, or a key without its certificate.
    #[error("invalid [etcd] cert (--etcd-cert): etcd-cert and etcd-key go together")]
    CertWithoutKey,
    /// TLS settings without the CA.
    #[error("invalid [etcd] ca (--etcd-ca): TLS to etcd needs the CA that signed its certificate")]
    NoCa,
    /// A key prefix that is not an absolute path of etcd's keys.
    #[error(
        "invalid [etcd] prefix (--etcd-prefix): {0:?}: starts with / and does not end with one"
    )]
    Prefix(String),
    /// A registration TTL out of bounds.
    #[error(
        "invalid [etcd] node-ttl-s (--node-ttl-s): {0}: between {MIN_NODE_TTL_S} and {MAX_NODE_TTL_S}"
    )]
    NodeTtl(u32),
    /// A subnet length other than that of the configured pod subnet.
    #[error("invalid [etcd] subnet-len (--subnet-len): {len} differs from the given pod-subnet {pod_subnet}")]
    SubnetLenDiffers {
        /// The subnet length given.
        len: u8,
        /// The pod subnet given.
        pod_subnet: Ipv4Net,
    },
    /// A subnet length that leaves no room in the cluster CIDR, or no room for pods.
    #[error("invalid [etcd] subnet-len (--subnet-len): /{len}: longer than the cluster CIDR's /{cluster_len} and at most /30")]
    SubnetLen {
        /// The subnet length.
        len: u8,
        /// The cluster CIDR's prefix length.
        cluster_len: u8,
    },
    /// A grace period out of bounds.
    #[error("invalid [etcd] subnet-grace-s (--subnet-grace-s): {0}: at most {MAX_SUBNET_GRACE_S}")]
    SubnetGrace(u64),
    /// A setting of etcd's given to a node on the file store.
    #[error("invalid [etcd] {key} (--{flag}): it is a setting of store = \"etcd\"")]
    NotEtcd {
        /// The key in `[etcd]`.
        key: &'static str,
        /// Its flag.
        flag: &'static str,
    },
}

/// How to reach etcd, and the leases a node holds there.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Whether plain `http://` to another host was accepted (`insecure = true`).
    pub insecure: bool,
}

/// etcd's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA certificate the server's must chain to.
    pub ca: PathBuf,
    /// The client certificate and its key, if etcd asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Whether endpoint `e` (a URL) names this host's loopback: `localhost`, an
/// address in 127.0.0.0/8, or `::1`. Plain http there never leaves the host.
fn on_loopback(e: &str) -> Result<bool, EtcdConfigError> {
    let uri: http::Uri = e.parse().map_err(|_| EtcdConfigError::Scheme(e.into()))?;
    let host = uri
        .host()
        .ok_or_else(|| EtcdConfigError::Scheme(e.into()))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    Ok(host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()))
}

impl EtcdOptions {
    /// Refuses any of these settings: the node is on the file store.
    pub fn refuse(&self) -> Result<(), EtcdConfigError> {
        let given = [
            ("endpoints", "etcd-endpoints", self.endpoints.is_some()),
            ("ca", "etcd-ca", self.ca.is_some()),
            ("cert", "etcd-cert", self.cert.is_some()),
            ("key", "etcd-key", self.key.is_some()),
            ("prefix", "etcd-prefix", self.prefix.is_some()),
            ("node-ttl-s", "node-ttl-s", self.node_ttl_s.is_some()),
            ("subnet-len", "subnet-len", self.subnet_len.is_some()),
            (
                "subnet-grace-s",
                "subnet-grace-s",
                self.subnet_grace_s.is_some(),
            ),
            ("insecure", "etcd-insecure", self.insecure.is_some()),
        ];
        match given.into_iter().find(|(_, _, set)| *set) {
            Some((key, flag, _)) => Err(EtcdConfigError::NotEtcd { key, flag }),
            None => Ok(()),
        }
    }

    /// Checks the settings against the cluster CIDR and the pod subnet (if given),
    /// and applies defaults.
    pub fn resolve(
        self,
        cluster: Ipv4Net,
        pod_subnet: Option<Ipv4Net>,
    ) -> Result<EtcdSettings, EtcdConfigError> {
        let tls = self.tls();
        let endpoints = self
            .endpoints
            .filter(|e| !e.is_empty())
            .ok_or(EtcdConfigError::NoEndpoints)?;
        let tls = tls?;
        let insecure = self.insecure.unwrap_or(false);
        for e in &endpoints {
            let https = e.starts_with("https://");
            if !https && !e.starts_with("http://") {
                return Err(EtcdConfigError::Scheme(e.clone()));
            }
            if https != tls.is_some() {
                return Err(EtcdConfigError::TlsMismatch(e.clone()));
            }
            if !https && !insecure && !on_loopback(e)? {
                return Err(EtcdConfigError::Insecure(e.clone()));
            }
        }
        let prefix = self.prefix.unwrap_or_else(|| DEFAULT_PREFIX.into());
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.len() < 2 {
            return Err(EtcdConfigError::Prefix(prefix));
        }
        let node_ttl = self.node_ttl_s.unwrap_or(DEFAULT_NODE_TTL_S);
        if !(MIN_NODE_TTL_S..=MAX_NODE_TTL_S).contains(&node_ttl) {
            return Err(EtcdConfigError::NodeTtl(node_ttl));
        }
        let subnet_len = match (self.subnet_len, pod_subnet) {
            (Some(len), Some(s)) if len != s.prefix_len() => {
                return Err(EtcdConfigError::SubnetLenDiffers { len, pod_subnet: s })
            }
            (len, s) => len.or(s.map(|s| s.prefix_len())).unwrap_or(24),
        };
        if subnet_len <= cluster.prefix_len() || subnet_len > 30 {
            let cluster_len = cluster.prefix_len();
            return Err(EtcdConfigError::SubnetLen {
                len: subnet_len,
                cluster_len,
            });
        }
        let grace = self.subnet_grace_s.unwrap_or(DEFAULT_SUBNET_GRACE_S);
        if grace > MAX_SUBNET_GRACE_S {
            return Err(EtcdConfigError::SubnetGrace(grace));
        }
        Ok(EtcdSettings {
            endpoints,
            tls,
            prefix,
            node_ttl: Duration::from_secs(u64::from(node_ttl)),
            subnet_len,
            subnet_grace: Duration::from_secs(grace),
            insecure,
        })
    }

    /// The TLS to etcd, if its settings are given, checked together.
    fn tls(&self) -> Result<Option<EtcdTls>, EtcdConfigError> {
        let (ca, cert, key) = (&self.ca, &self.cert, &self.key);
        if ca.is_none() && cert.is_none() && key.is_none() {
            return Ok(None);
        }
        if cert.is_some() != key.is_some() {
            return Err(EtcdConfigError::CertWithoutKey);
        }
        let ca = ca.clone().ok_or(EtcdConfigError::NoCa)?;
        Ok(Some(EtcdTls {
            ca,
            identity: cert.clone().zip(key.clone()),
        }))
    }
}
