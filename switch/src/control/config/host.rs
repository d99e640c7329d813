//! `[host]`: the host port, and what the host does with pods' traffic leaving the
//! cluster.

use ipnet::Ipv4Net;
use serde::Deserialize;

/// The host port's name unless told otherwise.
pub const DEFAULT_HOST_PORT: &str = "weft0";

/// `[host]` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct HostOptions {
    /// Name of the host port [default: weft0].
    #[arg(id = "host_port", long = "host-port", value_name = "HOST_PORT")]
    pub port: Option<String>,
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

/// A bad `[host]` setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostConfigError {
    /// A host port name no interface can have.
    #[error("invalid [host] port (--host-port): {0:?} is not an interface name")]
    Port(String),
    /// A Service range that overlaps the pods'.
    #[error("invalid [host] service-cidr (--service-cidr): {service} overlaps the cluster CIDR {cluster}")]
    ServiceCidr {
        /// The Service range.
        service: Ipv4Net,
        /// The cluster CIDR.
        cluster: Ipv4Net,
    },
}

/// The host port and the egress masquerade, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    /// Host port name.
    pub port: String,
    /// Whether pods' traffic leaving the cluster is masqueraded.
    pub masquerade: bool,
    /// The cluster's Service range, if configured.
    pub service_cidr: Option<Ipv4Net>,
}

impl HostOptions {
    /// Checks the settings against the cluster CIDR and applies defaults.
    pub fn resolve(self, cluster: Ipv4Net) -> Result<HostSettings, HostConfigError> {
        if let Some(service) = self.service_cidr {
            if service.contains(&cluster) || cluster.contains(&service) {
                return Err(HostConfigError::ServiceCidr { service, cluster });
            }
        }
        let port = self.port.unwrap_or_else(|| DEFAULT_HOST_PORT.into());
        if !crate::io::tap::valid_ifname(&port) {
            return Err(HostConfigError::Port(port));
        }
        Ok(HostSettings {
            port,
            masquerade: self.masquerade.unwrap_or(true),
            service_cidr: self.service_cidr,
        })
    }
}
