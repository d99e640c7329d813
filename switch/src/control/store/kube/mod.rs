//! The Kubernetes API server as the cluster store (issue 27, under way): the
//! client, and the slim types it reads. What is here so far is the client's
//! construction, the Pod type policy needs, and what Nodes mean ([`nodes`]: the
//! annotations a node publishes, and the peers a node makes of the Nodes it
//! watches); the store itself (the watches into peers and the policy model, the
//! publishing) builds on it.
//!
//! The client is kube-rs's, with rustls on `ring`; objects come through
//! kube-runtime's watcher (a paginated list, then a watch; a relist on 410 Gone).
//! The tests run it against a fixture of the project's own
//! (`weft_perf::apiserver`), since no real API server can be installed here.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};

pub mod cache;
pub mod nodes;
pub mod objects;
mod store;

pub use store::KubeStore;

/// How weftd reaches the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// From inside the cluster: the pod's service account token and CA, and the
    /// `KUBERNETES_SERVICE_HOST`/`PORT` the kubelet sets.
    InCluster,
    /// A kubeconfig file (running outside the cluster, or in tests).
    Kubeconfig(PathBuf),
}

/// Why the client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig could not be read or parsed.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Cause.
        source: kube::config::KubeconfigError,
    },
    /// Not in a pod, or its service account is not mounted.
    #[error("in-cluster config: {0} (not in a pod with a service account?)")]
    InCluster(#[from] kube::config::InClusterError),
    /// The client could not be built from the config (TLS, the server's URL).
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client of the API server. Explicit, never guessed: in-cluster or the given
/// kubeconfig (kube's `Config::infer` would prefer a stray `~/.kube/config` in a
/// DaemonSet pod).
pub async fn client(
    credentials: &Credentials,
    api_server: Option<&http::Uri>,
) -> Result<kube::Client, KubeError> {
    let mut config = match credentials {
        Credentials::InCluster => kube::Config::incluster()?,
        Credentials::Kubeconfig(path) => {
            let bad = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(bad)?
        }
    };
    // An API server that does not answer fails a try within seconds, not the
    // default 30 s, so that an outage shows and a retry comes soon.
    config.connect_timeout = Some(std::time::Duration::from_secs(5));
    // The API server itself, not the `kubernetes` Service's ClusterIP: the TLS
    // name stays the credentials' (the API server's certificate names its own
    // addresses, and the Service's).
    if let Some(uri) = api_server {
        config.cluster_url = uri.clone();
    }
    Ok(kube::Client::try_from(config)?)
}
