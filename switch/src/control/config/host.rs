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
    /// Who translates ClusterIP Services: kube-proxy (the node's own rules; the
    /// switch translates nothing) or switch (the switch, for pods' and the node's
    /// connections to ClusterIPs; needs service-cidr; NodePort and LoadBalancer stay
    /// with kube-proxy) [default: kube-proxy].
    #[arg(long, value_parser = parse_services)]
    pub services: Option<ServicesMode>,
}

/// Who translates ClusterIP Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServicesMode {
    /// kube-proxy, in the node's stack: the switch translates nothing.
    #[default]
    KubeProxy,
    /// The switch, on the source's egress.
    Switch,
}

fn parse_services(s: &str) -> Result<ServicesMode, String> {
    match s {
        "kube-proxy" => Ok(ServicesMode::KubeProxy),
        "switch" => Ok(ServicesMode::Switch),
        _ => Err(format!(
            "unknown services {s:?}: expected kube-proxy or switch"
        )),
    }
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
    /// Services in the switch without the Service range.
    #[error("invalid [host] services (--services): \"switch\" needs service-cidr, the cluster's Service range")]
    ServicesWithoutCidr,
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
    /// Who translates ClusterIP Services.
    pub services: ServicesMode,
}

impl HostOptions {
    /// Checks the settings against the cluster CIDR and applies defaults.
    pub fn resolve(self, cluster: Ipv4Net) -> Result<HostSettings, HostConfigError> {
        if let Some(service) = self.service_cidr {
            if service.contains(&cluster) || cluster.contains(&service) {
                return Err(HostConfigError::ServiceCidr { service, cluster });
            }
        }
        let services = self.services.unwrap_or_default();
        if services == ServicesMode::Switch && self.service_cidr.is_none() {
            return Err(HostConfigError::ServicesWithoutCidr);
        }
        let port = self.port.unwrap_or_else(|| DEFAULT_HOST_PORT.into());
        if !crate::io::tap::valid_ifname(&port) {
            return Err(HostConfigError::Port(port));
        }
        Ok(HostSettings {
            port,
            masquerade: self.masquerade.unwrap_or(true),
            service_cidr: self.service_cidr,
            services,
        })
    }
}
