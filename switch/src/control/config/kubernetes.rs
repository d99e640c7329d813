//! `[kubernetes]`: how weftd reaches the API server with `store = "kubernetes"`.

use std::path::PathBuf;

use serde::Deserialize;

use crate::control::store::kube::Credentials;

/// `[kubernetes]` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct KubernetesOptions {
    /// A kubeconfig to reach the API server with, for a weftd outside the cluster;
    /// without one, weftd uses its pod's service account (in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's address, `https://<host>:<port>`, for a weftd in the
    /// cluster (as Cilium's `k8sServiceHost`): it replaces the
    /// `KUBERNETES_SERVICE_HOST`/`PORT` the kubelet sets, which name the
    /// `kubernetes` Service's ClusterIP. With `services = "switch"` weftd must not
    /// reach the API server through a ClusterIP the switch translates from what
    /// the API server says.
    #[arg(long)]
    pub api_server: Option<String>,
}

/// A bad `[kubernetes]` setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubernetesConfigError {
    /// A setting of the Kubernetes store given to a node on another store.
    #[error(
        "invalid [kubernetes] kubeconfig or api-server: they are settings of store = \"kubernetes\""
    )]
    NotKubernetes,
    /// An API server address that is not an `https://<host>:<port>` URL.
    #[error("invalid [kubernetes] api-server (--api-server) {0:?}: {1}")]
    ApiServer(String, &'static str),
    /// In the cluster with Services in the switch, but no API server address.
    #[error("[host] services = \"switch\" with weftd in the cluster needs [kubernetes] api-server (--api-server, https://<host>:<port> of the API server itself): the kubelet's KUBERNETES_SERVICE_HOST is the kubernetes Service's ClusterIP, which the switch can translate only once it has read the API server")]
    ApiServerNeeded,
    /// A pod subnet given: with the API server as the store, it is the Node's.
    #[error("invalid pod-subnet: with store = \"kubernetes\" the node's pod subnet is its Node's spec.podCIDR (kube-controller-manager --allocate-node-cidrs); leave pod-subnet out")]
    PodSubnet,
}

/// How to reach the API server, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// In-cluster, or a kubeconfig.
    pub credentials: Credentials,
    /// The API server's address, in place of the one the credentials give.
    pub api_server: Option<http::Uri>,
}

impl KubernetesOptions {
    /// Refuses any of these settings: the node is on another store.
    pub fn refuse(&self) -> Result<(), KubernetesConfigError> {
        match (&self.kubeconfig, &self.api_server) {
            (None, None) => Ok(()),
            _ => Err(KubernetesConfigError::NotKubernetes),
        }
    }

    /// Checks the settings; `pod_subnet` is the one given, which must be none, and
    /// `services_in_switch` whether the switch translates ClusterIPs.
    pub fn resolve(
        self,
        pod_subnet: Option<ipnet::Ipv4Net>,
        services_in_switch: bool,
    ) -> Result<KubernetesSettings, KubernetesConfigError> {
        if pod_subnet.is_some() {
            return Err(KubernetesConfigError::PodSubnet);
        }
        let api_server = self.api_server.as_deref().map(api_server).transpose()?;
        let credentials = self
            .kubeconfig
            .map_or(Credentials::InCluster, Credentials::Kubeconfig);
        if services_in_switch && credentials == Credentials::InCluster && api_server.is_none() {
            return Err(KubernetesConfigError::ApiServerNeeded);
        }
        Ok(KubernetesSettings {
            credentials,
            api_server,
        })
    }
}

/// `text` as the API server's address: an `https` URL with a host and a port,
/// and nothing after them.
fn api_server(text: &str) -> Result<http::Uri, KubernetesConfigError> {
    let bad = |why| KubernetesConfigError::ApiServer(text.to_owned(), why);
    let uri: http::Uri = text.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("the API server is reached over https"));
    }
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(bad("it needs a host and a port"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(bad("nothing may follow the port"));
    }
    Ok(uri)
}
