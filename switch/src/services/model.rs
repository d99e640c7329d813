//! The objects ClusterIP Services are made of, as every store hands them over:
//! `v1` Services and `discovery.k8s.io/v1` EndpointSlices, slim and checked
//! ([`super::read`] reads and checks them), grouped by namespace as policy's
//! objects are ([`Grouped`]). [`super::compile`] makes a [`super::ServiceTable`]
//! of them for one node. They serialize, so that the view a node saves in its
//! state directory can hold them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::netpol::model::{Grouped, Namespaced, Protocol};

/// The session affinity timeout Kubernetes gives `ClientIP` when none is set
/// (`sessionAffinityConfig.clientIP.timeoutSeconds`): three hours.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// A Service's `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServiceType {
    /// `ClusterIP`, the default.
    ClusterIp,
    /// `NodePort`: a ClusterIP, and a port on every node (kube-proxy's).
    NodePort,
    /// `LoadBalancer`: a NodePort, and an external balancer.
    LoadBalancer,
    /// `ExternalName`: a DNS alias, with no ClusterIP.
    ExternalName,
}

/// A Service port's `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TargetPort {
    /// A port number on the pods.
    Number(u16),
    /// A container port's name, which the EndpointSlice controller resolves per pod.
    Name(String),
}

/// One entry of a Service's `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServicePortSpec {
    /// Its name; empty for the one port of a single-port Service.
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The port clients connect to.
    pub port: u16,
    /// Where the pods take it (the port itself when the Service does not say).
    pub target_port: TargetPort,
}

/// A `v1` Service, with what the switch's Services need of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Service {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: ServiceType,
    /// Its ClusterIPs (`clusterIPs`, else `clusterIP`), the primary first; empty
    /// when headless or none is allocated.
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`: DNS gives the endpoints' addresses; nothing to translate.
    pub headless: bool,
    /// Its ports.
    pub ports: Vec<ServicePortSpec>,
    /// `sessionAffinity: ClientIP`, with its timeout in seconds.
    pub affinity_seconds: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
}

impl Service {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// An EndpointSlice's `addressType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AddressType {
    /// `IPv4`.
    Ipv4,
    /// `IPv6`.
    Ipv6,
    /// `FQDN` (deprecated; kube-proxy ignores such slices, and so does weft).
    Fqdn,
}

/// An endpoint's conditions, resolved as Kubernetes says to read absent ones:
/// `ready` unset is true, `serving` unset is `ready`, `terminating` unset is false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Conditions {
    /// Ready for new connections.
    pub ready: bool,
    /// Serving, whether or not it is terminating.
    pub serving: bool,
    /// On its way out.
    pub terminating: bool,
}

/// What an endpoint stands for (`targetRef`), for `weft services`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TargetRef {
    /// Its kind (`Pod`, mostly).
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SliceEndpoint {
    /// Its addresses, of the slice's address type (empty for an FQDN slice).
    pub addresses: Vec<IpAddr>,
    /// Its conditions.
    pub conditions: Conditions,
    /// The node it runs on.
    pub node_name: Option<String>,
    /// What it is.
    pub target_ref: Option<TargetRef>,
}

/// One port of an EndpointSlice: a Service port's number on the endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlicePort {
    /// The Service port's name (empty for an unnamed one).
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The port on the endpoints; `None` leaves it to the consumer, and kube-proxy
    /// (and weft) use no such port.
    pub port: Option<u16>,
}

/// A `discovery.k8s.io/v1` EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointSlice {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its Service, in its namespace (label `kubernetes.io/service-name`).
    pub service: Option<String>,
    /// Its address type.
    pub address_type: AddressType,
    /// Its endpoints.
    pub endpoints: Vec<SliceEndpoint>,
    /// Its ports.
    pub ports: Vec<SlicePort>,
}

impl EndpointSlice {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl Namespaced for Service {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl Namespaced for EndpointSlice {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// A Service or EndpointSlice a store holds but that does not read: it is left
/// out, and the rest is used.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BadObject {
    /// `Service`, `EndpointSlice`, or what the document says it is.
    pub kind: String,
    /// `namespace/name`, as far as the object names itself (or its key does).
    pub id: String,
    /// Where it was read: a file and document, or a store's key.
    pub source: String,
    /// Why it does not read.
    pub why: String,
}

impl fmt::Display for BadObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({}): {}",
            self.kind, self.id, self.source, self.why
        )
    }
}

/// Everything Services are compiled from: the Services and EndpointSlices of a
/// store, and those it holds that do not read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceModel {
    /// Services.
    pub services: Grouped<Service>,
    /// EndpointSlices.
    pub slices: Grouped<EndpointSlice>,
    /// The objects left out, each with why, in the store's order.
    #[serde(default)]
    pub bad: Vec<BadObject>,
}

impl ServiceModel {
    /// Leaves out every Service and EndpointSlice defined twice (in a directory of
    /// manifests, where nothing keeps names unique): which one stands is not
    /// known. Each is named once in [`ServiceModel::bad`], by `source`.
    pub fn leave_out_doubles(&mut self, source: &str) {
        let services = doubles(&self.services);
        let slices = doubles(&self.slices);
        for (kind, set) in [("Service", &services), ("EndpointSlice", &slices)] {
            for (ns, name) in set {
                self.bad.push(BadObject {
                    kind: kind.into(),
                    id: format!("{ns}/{name}"),
                    source: source.into(),
                    why: "defined twice".into(),
                });
            }
        }
        if !services.is_empty() {
            self.services.retain(|s| !services.contains(&key(s)));
        }
        if !slices.is_empty() {
            self.slices.retain(|s| !slices.contains(&key(s)));
        }
    }

    /// Whether it holds nothing at all, good or bad.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty() && self.bad.is_empty()
    }
}

/// An object's (namespace, name).
fn key<T: Namespaced>(o: &T) -> (String, String) {
    (o.namespace().to_owned(), o.name().to_owned())
}

/// The (namespace, name) of every object `g` holds more than once.
fn doubles<T: Namespaced>(g: &Grouped<T>) -> BTreeSet<(String, String)> {
    let mut seen = BTreeSet::new();
    (g.iter())
        .map(|o| key(&**o))
        .filter(|k| !seen.insert(k.clone()))
        .collect()
}
