//! The objects weftd reads from the API server, slim: each keeps only what the
//! store uses, and the rest of the document is skipped as it is parsed, so that
//! 150,000 Pods or 5,000 Nodes with their image lists stay small in memory.
//!
//! Each implements `kube::Resource` by hand (they are not `k8s-openapi` types),
//! which is all kube-runtime's watcher needs of a type.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use serde::{Deserialize, Deserializer, Serialize};

use super::nodes::PREFIX;

/// `kube::Resource` for a slim type of the API's `group`/`version`, `kind` and
/// `plural`, with its metadata in field `metadata` (or at `meta` path).
macro_rules! resource {
    ($t:ty, $scope:ty, $group:literal, $version:literal, $kind:literal, $plural:literal, $($meta:tt)+) => {
        impl kube::Resource for $t {
            type DynamicType = ();
            type Scope = $scope;

            fn kind((): &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group((): &()) -> Cow<'_, str> {
                $group.into()
            }
            fn version((): &()) -> Cow<'_, str> {
                $version.into()
            }
            fn plural((): &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.$($meta)+
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.$($meta)+
            }
        }
    };
}

/// The metadata every slim object keeps.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    resource_version: Option<String>,
    uid: Option<String>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
}

impl Meta {
    fn into_meta(self, annotations: Option<BTreeMap<String, String>>) -> ObjectMeta {
        ObjectMeta {
            name: self.name,
            namespace: self.namespace,
            labels: self.labels,
            annotations,
            resource_version: self.resource_version,
            uid: self.uid,
            // Which of two objects is the older (Nodes claiming one subnet, pods
            // holding one address), and whether one is going away.
            creation_timestamp: self.creation_timestamp,
            deletion_timestamp: self.deletion_timestamp,
            ..ObjectMeta::default()
        }
    }
}

/// Reads name, namespace, labels, resourceVersion, uid and the timestamps; the
/// rest (annotations, managed fields, owners) is skipped as it is parsed.
fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    Ok(Meta::deserialize(d)?.into_meta(None))
}

/// As [`slim_meta`], and the annotations under weft's prefix.
fn weft_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let mut m = Meta::deserialize(d)?;
    let ours: BTreeMap<String, String> = (m.annotations.take().into_iter().flatten())
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    Ok(m.into_meta(Some(ours)))
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

resource!(
    SlimPod,
    NamespaceResourceScope,
    "",
    "v1",
    "Pod",
    "pods",
    metadata
);

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

/// A Node as the store needs it: its name, version and creation time, the
/// annotations under `weft.dev/`, `spec.podCIDR(s)`, `status.addresses`, and
/// the type and status of its `NetworkUnavailable` condition, if any. It
/// holds a `k8s-openapi` [`Node`] with only those fields set, so that
/// [`super::nodes`] reads it as it reads any Node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlimNode(pub Node);

impl<'de> Deserialize<'de> for SlimNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SlimNode, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Spec {
            #[serde(rename = "podCIDR")]
            pod_cidr: Option<String>,
            #[serde(rename = "podCIDRs")]
            pod_cidrs: Option<Vec<String>>,
        }
        #[derive(Deserialize)]
        struct Condition {
            #[serde(rename = "type")]
            type_: String,
            status: String,
        }
        #[derive(Deserialize)]
        struct Status {
            addresses: Option<Vec<NodeAddress>>,
            conditions: Option<Vec<Condition>>,
        }
        #[derive(Deserialize)]
        struct Doc {
            #[serde(deserialize_with = "weft_meta")]
            metadata: ObjectMeta,
            spec: Option<Spec>,
            status: Option<Status>,
        }
        let doc = Doc::deserialize(d)?;
        Ok(SlimNode(Node {
            metadata: doc.metadata,
            spec: doc.spec.map(|s| NodeSpec {
                pod_cidr: s.pod_cidr,
                pod_cidrs: s.pod_cidrs,
                ..NodeSpec::default()
            }),
            status: doc.status.map(|s| NodeStatus {
                addresses: s.addresses,
                conditions: (s.conditions.into_iter().flatten())
                    .find(|c| c.type_ == super::store::CONDITION)
                    .map(|c| {
                        vec![NodeCondition {
                            type_: c.type_,
                            status: c.status,
                            ..NodeCondition::default()
                        }]
                    }),
                ..NodeStatus::default()
            }),
        }))
    }
}

resource!(
    SlimNode,
    ClusterResourceScope,
    "",
    "v1",
    "Node",
    "nodes",
    0.metadata
);

/// A Namespace: its name and labels.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SlimNamespace {
    /// Name, labels and version.
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
}

resource!(
    SlimNamespace,
    ClusterResourceScope,
    "",
    "v1",
    "Namespace",
    "namespaces",
    metadata
);

/// A NetworkPolicy, its spec unread: the store checks it as the policy
/// directory's manifests are checked ([`crate::netpol::manifest`]), so that an
/// object the API should have refused is caught here, named, and made to fail
/// closed, instead of failing the page it came in.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RawPolicy {
    /// Name, namespace and version.
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    /// The spec as the API gave it.
    #[serde(default)]
    pub spec: serde_json::Value,
}

resource!(
    RawPolicy,
    NamespaceResourceScope,
    "networking.k8s.io",
    "v1",
    "NetworkPolicy",
    "networkpolicies",
    metadata
);

/// A Service, its spec unread: the store checks it as a manifest's is checked
/// ([`crate::services::read`]), so that an object the API should have refused
/// is named and left out, instead of failing the page it came in.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SlimService {
    /// Name, namespace and version.
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    /// The spec as the API gave it.
    #[serde(default)]
    pub spec: serde_json::Value,
}

resource!(
    SlimService,
    NamespaceResourceScope,
    "",
    "v1",
    "Service",
    "services",
    metadata
);

/// An EndpointSlice, its fields unread (`addressType`, `endpoints`, `ports`:
/// an EndpointSlice has no spec), for the same reason as [`SlimService`]'s.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SlimSlice {
    /// Name, namespace, labels (its Service's name) and version.
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    /// The rest of the object as the API gave it.
    #[serde(flatten)]
    pub body: serde_json::Map<String, serde_json::Value>,
}

resource!(
    SlimSlice,
    NamespaceResourceScope,
    "discovery.k8s.io",
    "v1",
    "EndpointSlice",
    "endpointslices",
    metadata
);

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

    #[test]
    fn a_slim_node_keeps_weft_annotations_the_podcidr_and_the_addresses() {
        let node: SlimNode = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "resourceVersion": "9",
                         "creationTimestamp": "2026-12-07T00:00:00Z",
                         "annotations": {"weft.dev/vtep-mac": "02:00:00:00:00:01",
                                         "node.alpha.kubernetes.io/ttl": "0"},
                         "labels": {"kubernetes.io/hostname": "n1"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"],
                     "providerID": "x", "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}],
                       "images": [{"names": ["pause"], "sizeBytes": 1}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let n = &node.0;
        let up: SlimNode = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-12-07T00:00:00Z"},
                {"type": "NetworkUnavailable", "status": "False", "reason": "WeftIsUp",
                 "lastHeartbeatTime": "2026-12-07T00:00:00Z"}]}
        }))
        .unwrap();
        let kept = up.0.status.unwrap().conditions.unwrap();
        assert_eq!(kept.len(), 1, "NetworkUnavailable only");
        assert_eq!(
            (kept[0].type_.as_str(), kept[0].status.as_str()),
            ("NetworkUnavailable", "False")
        );
        assert!(kept[0].last_heartbeat_time.is_none(), "no heartbeat churn");
        let annotations = n.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["weft.dev/vtep-mac"]
        );
        assert!(n.metadata.creation_timestamp.is_some());
        let spec = n.spec.as_ref().unwrap();
        assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
        assert!(spec.taints.is_none() && spec.provider_id.is_none());
        let status = n.status.as_ref().unwrap();
        assert_eq!(status.addresses.as_ref().unwrap()[0].address, "192.168.0.1");
        assert!(status.images.is_none());
        assert!(status.conditions.is_none(), "Ready is not kept");
        // A Node with nothing but a name parses; a wrong type is an error.
        let bare: SlimNode =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n2"}})).unwrap();
        assert!(bare.0.spec.is_none());
        let bad = serde_json::json!({"metadata": {"name": "n3"}, "spec": {"podCIDR": 7}});
        assert!(serde_json::from_value::<SlimNode>(bad).is_err());
    }
}
