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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::{Deserialize, Deserializer, Serialize};

pub mod nodes;

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
pub async fn client(credentials: &Credentials) -> Result<kube::Client, KubeError> {
    let config = match credentials {
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
    Ok(kube::Client::try_from(config)?)
}

/// A Pod as policy needs it, and no more, so that 150,000 of them stay small:
/// name, namespace, labels and version; the node; the named container ports; the
/// phase and the pod's addresses. Everything else in the document (managed
/// fields, annotations, owner references, volumes) is skipped as it is read.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct SlimPod {
    /// Name, namespace, labels, resourceVersion and uid only.
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    /// The node and the container ports.
    #[serde(default)]
    pub spec: SlimPodSpec,
    /// The phase and the addresses.
    #[serde(default)]
    pub status: SlimPodStatus,
}

/// The part of a Pod's spec policy reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodSpec {
    /// The node it runs on, once scheduled.
    pub node_name: Option<String>,
    /// Whether it uses its node's network: its address is the node's, shared
    /// with other such pods, so it is no pod address to judge policy on.
    #[serde(default)]
    pub host_network: bool,
    /// Its containers, for their ports.
    #[serde(default)]
    pub containers: Vec<SlimContainer>,
}

/// A container, for its ports (a NetworkPolicy may name a port).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct SlimContainer {
    /// Its ports.
    #[serde(default)]
    pub ports: Vec<SlimPort>,
}

/// A container port.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPort {
    /// Its name, if it has one.
    pub name: Option<String>,
    /// The port (0 if the document has none: one bad object must not fail the
    /// page it comes in).
    #[serde(default)]
    pub container_port: i32,
    /// TCP (when absent), UDP or SCTP.
    pub protocol: Option<String>,
}

/// The part of a Pod's status policy reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct SlimPodStatus {
    /// Pending, Running, Succeeded, Failed or Unknown.
    pub phase: Option<String>,
    /// The first address (what an older API server or a bare document gives).
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    /// Its addresses.
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<SlimPodIp>,
}

/// One of a pod's addresses.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct SlimPodIp {
    /// The address, as the API gives it (empty if absent).
    #[serde(default)]
    pub ip: String,
}

/// Reads only the metadata fields policy needs; the rest is skipped unparsed.
fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        name: Option<String>,
        namespace: Option<String>,
        labels: Option<BTreeMap<String, String>>,
        resource_version: Option<String>,
        uid: Option<String>,
        creation_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
        deletion_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    }
    let m = Meta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        labels: m.labels,
        resource_version: m.resource_version,
        uid: m.uid,
        // Which of two pods holding one address is the newer, and whether one is
        // going away.
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

impl kube::Resource for SlimPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group((): &()) -> Cow<'_, str> {
        "".into()
    }
    fn version((): &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural((): &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl SlimPod {
    /// Whether the pod has finished (Succeeded or Failed): it no longer matches
    /// any policy, even if its address is given to a new pod.
    pub fn finished(&self) -> bool {
        matches!(self.status.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// Its addresses: `status.podIPs`, or `status.podIP` where that is all there
    /// is; none for a pod on its node's network.
    pub fn ips(&self) -> Vec<&str> {
        if self.spec.host_network {
            return Vec::new();
        }
        let listed: Vec<&str> = (self.status.pod_ips.iter())
            .map(|p| p.ip.as_str())
            .filter(|ip| !ip.is_empty())
            .collect();
        if listed.is_empty() {
            self.status.pod_ip.as_deref().into_iter().collect()
        } else {
            listed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Pod as the API reference shows one, trimmed to what matters here, with
    /// fields the slim type must skip.
    const POD: &str = r#"{
      "kind": "Pod", "apiVersion": "v1",
      "metadata": {
        "name": "web-0", "namespace": "x", "uid": "u-1", "resourceVersion": "42",
        "labels": {"app": "web"},
        "annotations": {"big": "...................................."},
        "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {}}}],
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "s"}]
      },
      "spec": {
        "nodeName": "node-1",
        "volumes": [{"name": "v", "emptyDir": {}}],
        "containers": [{"name": "c", "image": "nginx",
                        "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"},
                                  {"containerPort": 53, "protocol": "UDP"}]}]
      },
      "status": {"phase": "Running", "podIP": "10.244.1.5",
                 "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}],
                 "conditions": [{"type": "Ready", "status": "True"}]}
    }"#;

    #[test]
    fn a_slim_pod_keeps_what_policy_needs_and_drops_the_rest() {
        let pod: SlimPod = serde_json::from_str(POD).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-0"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("x"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["app"], "web");
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("42"));
        assert!(pod.metadata.annotations.is_none());
        assert!(pod.metadata.managed_fields.is_none());
        assert!(pod.metadata.owner_references.is_none());
        assert_eq!(pod.spec.node_name.as_deref(), Some("node-1"));
        let ports = &pod.spec.containers[0].ports;
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(
            (ports[1].container_port, ports[1].protocol.as_deref()),
            (53, Some("UDP"))
        );
        assert_eq!(pod.ips(), ["10.244.1.5", "fd00::5"]);
        assert!(!pod.finished());
    }

    #[test]
    fn a_finished_pod_is_finished_and_a_bare_one_parses() {
        for phase in ["Succeeded", "Failed"] {
            let p: SlimPod = serde_json::from_value(serde_json::json!(
                {"metadata": {"name": "a", "namespace": "x"}, "status": {"phase": phase}}))
            .unwrap();
            assert!(p.finished(), "{phase}");
        }
        let bare: SlimPod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "a"}})).unwrap();
        assert_eq!(bare.spec, SlimPodSpec::default());
        assert!(!bare.finished());
        // podIP alone; a host-network pod has no address of its own; a port with
        // no number does not fail the pod.
        let old: SlimPod = serde_json::from_value(serde_json::json!(
            {"metadata": {"name": "a"}, "status": {"podIP": "10.244.1.9"},
             "spec": {"containers": [{"ports": [{"name": "x"}]}]}}))
        .unwrap();
        assert_eq!(old.ips(), ["10.244.1.9"]);
        let host: SlimPod = serde_json::from_value(serde_json::json!(
            {"metadata": {"name": "h"}, "spec": {"hostNetwork": true},
             "status": {"podIP": "192.168.0.1", "podIPs": [{"ip": "192.168.0.1"}]}}))
        .unwrap();
        assert!(host.ips().is_empty());
        // Wrong types are an error, not a panic.
        let bad = serde_json::json!({"metadata": {"name": 5}});
        assert!(serde_json::from_value::<SlimPod>(bad).is_err());
    }
}
