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
}

/// A bad `[kubernetes]` setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubernetesConfigError {
    /// A setting of the Kubernetes store given to a node on another store.
    #[error(
        "invalid [kubernetes] kubeconfig (--kubeconfig): it is a setting of store = \"kubernetes\""
    )]
    NotKubernetes,
    /// A pod subnet given: with the API server as the store, it is the Node's.
    #[error("invalid pod-subnet: with store = \"kubernetes\" the node's pod subnet is its Node's spec.podCIDR (kube-controller-manager --allocate-node-cidrs); leave pod-subnet out")]
    PodSubnet,
}

/// How to reach the API server, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// In-cluster, or a kubeconfig.
    pub credentials: Credentials,
}

impl KubernetesOptions {
    /// Refuses any of these settings: the node is on another store.
    pub fn refuse(&self) -> Result<(), KubernetesConfigError> {
        match self.kubeconfig {
            Some(_) => Err(KubernetesConfigError::NotKubernetes),
            None => Ok(()),
        }
    }

    /// Checks the settings; `pod_subnet` is the one given, which must be none.
    pub fn resolve(
        self,
        pod_subnet: Option<ipnet::Ipv4Net>,
    ) -> Result<KubernetesSettings, KubernetesConfigError> {
        if pod_subnet.is_some() {
            return Err(KubernetesConfigError::PodSubnet);
        }
        Ok(KubernetesSettings {
            credentials: self
                .kubeconfig
                .map_or(Credentials::InCluster, Credentials::Kubeconfig),
        })
    }
}
