//! What the Kubernetes store holds, with no I/O: a mirror of each kind it
//! watches, fed kube-runtime's watcher events, and the views made of them. A
//! relist (after a 410 Gone, or any restart of a watch) fills a new mirror beside
//! the old one and replaces it whole at its end, so an object deleted while the
//! watch was down is gone, and nothing is half-listed in between.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use kube::runtime::watcher::Event;
use kube::Resource;

use super::nodes::{nodes_view, pod_cidr, pod_cidr6, NodesView};
use super::objects::{RawPolicy, SlimNamespace, SlimNode, SlimPod, SlimService, SlimSlice};
use crate::netpol::last_good::{Kind, ObjectId, Unread};
use crate::netpol::manifest::{self, ManifestError};
use crate::netpol::model::{Labels, NamedPort, PodObject, Policy, PolicyModel, Protocol};
use crate::services::model::{BadObject, EndpointSlice, Service, ServiceModel};
use crate::services::read;

/// An object's key: namespace ("" for cluster-scoped kinds) and name.
pub type Key = (String, String);

/// The key of `object`, if it has a name.
fn key_of<K: Resource>(object: &K) -> Option<Key> {
    let meta = object.meta();
    Some((
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

/// The objects of one kind, as the watch last listed and followed them.
#[derive(Debug)]
pub struct Mirror<V> {
    live: HashMap<Key, V>,
    /// The list in progress, from `Init` to `InitDone`.
    relist: Option<HashMap<Key, V>>,
    /// Whether a list has ever completed.
    synced: bool,
}

impl<V> Default for Mirror<V> {
    fn default() -> Self {
        Mirror {
            live: HashMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<V: PartialEq> Mirror<V> {
    /// Applies one watcher event, `convert`ing each object (`None`: hold nothing
    /// for it, as for a pod that finished). Returns whether what is live changed:
    /// an update that converts to what is held already (kubelet's status
    /// heartbeats, mostly) changes nothing.
    pub fn apply<K: Resource>(
        &mut self,
        event: Event<K>,
        convert: impl Fn(K) -> Option<V>,
    ) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            Event::InitApply(k) => {
                if let (Some(key), Some(relist)) = (key_of(&k), self.relist.as_mut()) {
                    if let Some(v) = convert(k) {
                        relist.insert(key, v);
                    }
                }
                false
            }
            Event::InitDone => {
                self.live = self.relist.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply(k) => {
                let Some(key) = key_of(&k) else {
                    return false;
                };
                match convert(k) {
                    Some(v) if self.live.get(&key) == Some(&v) => false,
                    Some(v) => {
                        self.live.insert(key, v);
                        true
                    }
                    None => self.live.remove(&key).is_some(),
                }
            }
            Event::Delete(k) => key_of(&k).is_some_and(|key| self.live.remove(&key).is_some()),
        }
    }
}

impl<V> Mirror<V> {
    /// Whether a list has completed.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// How many objects are live.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The live objects.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.live.values()
    }

    /// The live object at `key`.
    pub fn get(&self, key: &Key) -> Option<&V> {
        self.live.get(key)
    }
}

/// A NetworkPolicy as read: the policy, or why it did not read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPolicy {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The policy, or why it does not read: then the daemon keeps its last good
    /// version in force, or isolates its namespace for ingress
    /// ([`crate::netpol::last_good`]).
    pub policy: Result<Policy, String>,
}

/// Reads a NetworkPolicy object.
pub fn read_policy(p: RawPolicy) -> Option<ReadPolicy> {
    let namespace = p.metadata.namespace.clone().unwrap_or_default();
    let name = p.metadata.name.clone()?;
    let policy = manifest::policy_spec(&namespace, &name, p.spec);
    Some(ReadPolicy {
        namespace,
        name,
        policy,
    })
}

/// A Service or EndpointSlice as read: the object, or why it did not read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadObject<T> {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The object, or why it does not read: then it is left out, and the rest
    /// is used.
    pub object: Result<Arc<T>, String>,
}

impl<T> ReadObject<T> {
    /// Why it does not read, named as `kind`, if it does not.
    fn bad(&self, kind: &str, plural: &str) -> Option<BadObject> {
        let why = self.object.as_ref().err()?;
        Some(BadObject {
            kind: kind.into(),
            id: format!("{}/{}", self.namespace, self.name),
            source: format!("{plural}/{}/{}", self.namespace, self.name),
            why: why.clone(),
        })
    }
}

/// Reads a Service object.
pub fn read_service(s: SlimService) -> Option<ReadObject<Service>> {
    let namespace = s.metadata.namespace.unwrap_or_default();
    let name = s.metadata.name?;
    let object = read::service_value(&namespace, &name, s.spec).map(Arc::new);
    Some(ReadObject {
        namespace,
        name,
        object,
    })
}

/// Reads an EndpointSlice object.
pub fn read_slice(s: SlimSlice) -> Option<ReadObject<EndpointSlice>> {
    let namespace = s.metadata.namespace.unwrap_or_default();
    let name = s.metadata.name?;
    let labels = s.metadata.labels.unwrap_or_default();
    let body = serde_json::Value::Object(s.body);
    let object = read::slice_value(&namespace, &name, &labels, body).map(Arc::new);
    Some(ReadObject {
        namespace,
        name,
        object,
    })
}

/// A Pod as held: as policy judges it, and what decides between two pods that
/// claim one address.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldPod {
    /// The pod.
    pub pod: PodObject,
    /// The node it runs on.
    pub node: Option<String>,
    /// When it was made.
    pub created: Option<k8s_openapi::jiff::Timestamp>,
    /// Whether it is going away.
    pub deleting: bool,
}

/// A Pod as held; `None` for one that finished, which matches nothing even
/// while its address is given to a new pod.
pub fn read_pod(p: SlimPod) -> Option<HeldPod> {
    if p.finished() {
        return None;
    }
    let node = p.spec.node_name.clone();
    let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let deleting = p.metadata.deletion_timestamp.is_some();
    let parsed = || {
        p.ips()
            .into_iter()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
    };
    let ip = parsed().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    });
    let ip6 = parsed().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(v6),
        IpAddr::V4(_) => None,
    });
    let ports = (p.spec.containers.iter())
        .flat_map(|c| &c.ports)
        .filter_map(|port| {
            let protocol = match port.protocol.as_deref() {
                None | Some("TCP") => Protocol::Tcp,
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                Some(_) => return None,
            };
            Some(NamedPort {
                name: port.name.clone()?,
                protocol,
                port: u16::try_from(port.container_port).ok().filter(|&n| n > 0)?,
            })
        })
        .collect();
    Some(HeldPod {
        pod: PodObject {
            namespace: p.metadata.namespace.unwrap_or_default(),
            name: p.metadata.name?,
            labels: p.metadata.labels.unwrap_or_default(),
            ports,
            ip,
            ip6,
        },
        node,
        created,
        deleting,
    })
}

/// Everything the store holds.
#[derive(Debug, Default)]
pub struct Cache {
    /// Nodes.
    pub nodes: Mirror<SlimNode>,
    /// Pods that have not finished.
    pub pods: Mirror<HeldPod>,
    /// Namespaces' labels.
    pub namespaces: Mirror<Labels>,
    /// NetworkPolicies.
    pub policies: Mirror<ReadPolicy>,
    /// Services, read.
    pub services: Mirror<ReadObject<Service>>,
    /// EndpointSlices, read.
    pub slices: Mirror<ReadObject<EndpointSlice>>,
    /// Moves on with every change to the objects policy is made of: Pods,
    /// Namespaces, NetworkPolicies, and Nodes (whose podCIDRs say which pod
    /// holds an address).
    pub policy_revision: i64,
    /// Moves on with every change to the Nodes.
    pub nodes_revision: i64,
    /// Moves on with every change to the Services and EndpointSlices.
    pub services_revision: i64,
}

/// One watcher event of any kind the store watches. (One is in hand at a time,
/// so a Node's size is no cost.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Change {
    /// A Node.
    Node(Event<SlimNode>),
    /// A Pod.
    Pod(Event<SlimPod>),
    /// A Namespace.
    Namespace(Event<SlimNamespace>),
    /// A NetworkPolicy.
    Policy(Event<RawPolicy>),
    /// A Service.
    Service(Event<SlimService>),
    /// An EndpointSlice.
    Slice(Event<SlimSlice>),
}

/// The kinds, by plural, in the order the store reports them.
pub const KINDS: [&str; 6] = [
    "nodes",
    "pods",
    "namespaces",
    "networkpolicies",
    "services",
    "endpointslices",
];

/// A Node as held: its version goes, so that an update of nothing weft reads
/// changes nothing.
fn read_node(mut n: SlimNode) -> Option<SlimNode> {
    n.0.metadata.resource_version = None;
    Some(n)
}

impl Cache {
    /// Applies one event; returns whether a view made now would differ: the
    /// Nodes, the objects policy is made of, or the Services' changed.
    pub fn apply(&mut self, change: Change) -> bool {
        let policy = match change {
            Change::Node(e) => {
                let changed = self.nodes.apply(e, read_node);
                self.nodes_revision += i64::from(changed);
                // The policy view reads the Nodes too: a pod's address counts
                // only inside its node's podCIDR (`addressed_pods`).
                self.policy_revision += i64::from(changed);
                return changed;
            }
            Change::Service(e) => {
                let changed = self.services.apply(e, read_service);
                self.services_revision += i64::from(changed);
                return changed;
            }
            Change::Slice(e) => {
                let changed = self.slices.apply(e, read_slice);
                self.services_revision += i64::from(changed);
                return changed;
            }
            Change::Pod(e) => self.pods.apply(e, read_pod),
            Change::Namespace(e) => self
                .namespaces
                .apply(e, |n| Some(n.metadata.labels.unwrap_or_default())),
            Change::Policy(e) => self.policies.apply(e, read_policy),
        };
        if policy {
            self.policy_revision += 1;
        }
        policy
    }

    /// Whether the kinds a view is made of (Nodes, Pods, Namespaces and
    /// NetworkPolicies) have been listed once: then a view is whole.
    pub fn synced(&self) -> bool {
        self.nodes.synced()
            && self.pods.synced()
            && self.namespaces.synced()
            && self.policies.synced()
    }

    /// Whether Services and EndpointSlices have both been listed once: until
    /// then, a Services model would leave out what the API server holds.
    pub fn services_synced(&self) -> bool {
        self.services.synced() && self.slices.synced()
    }

    /// The Services and EndpointSlices, in name order, and those that do not
    /// read, each named.
    pub fn service_model(&self) -> ServiceModel {
        fn sorted<T>(m: &Mirror<ReadObject<T>>) -> Vec<&ReadObject<T>> {
            let mut all: Vec<&ReadObject<T>> = m.values().collect();
            all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            all
        }
        let (services, slices) = (sorted(&self.services), sorted(&self.slices));
        let bad = (services.iter().filter_map(|s| s.bad("Service", "services")))
            .chain((slices.iter()).filter_map(|s| s.bad("EndpointSlice", "endpointslices")))
            .collect();
        let mut model = ServiceModel {
            bad,
            ..ServiceModel::default()
        };
        for s in services.iter().filter_map(|s| s.object.as_ref().ok()) {
            model.services.push(s.clone());
        }
        for s in slices.iter().filter_map(|s| s.object.as_ref().ok()) {
            model.slices.push(s.clone());
        }
        model
    }

    /// The kinds not listed yet.
    pub fn unsynced(&self) -> Vec<&'static str> {
        (self.kinds().into_iter())
            .filter(|(_, synced, _)| !synced)
            .map(|(k, _, _)| k)
            .collect()
    }

    /// How many objects of each kind are held, in [`KINDS`]' order.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        (self.kinds().into_iter()).map(|(k, _, n)| (k, n)).collect()
    }

    /// Each kind: whether it was listed, and how many objects it holds.
    fn kinds(&self) -> [(&'static str, bool, usize); 6] {
        let m = |i: usize, synced: bool, len: usize| (KINDS[i], synced, len);
        [
            m(0, self.nodes.synced(), self.nodes.len()),
            m(1, self.pods.synced(), self.pods.len()),
            m(2, self.namespaces.synced(), self.namespaces.len()),
            m(3, self.policies.synced(), self.policies.len()),
            m(4, self.services.synced(), self.services.len()),
            m(5, self.slices.synced(), self.slices.len()),
        ]
    }

    /// The nodes as node `me` sees them.
    pub fn nodes_view(&self, me: &str, cluster: Ipv4Net, port: u16) -> NodesView {
        nodes_view(self.nodes.values().map(|n| &n.0), me, cluster, port)
    }

    /// The pods, sorted, each address given to one pod at most: a pod's address
    /// outside its node's podCIDR is no address of its (whoever wrote its status);
    /// of two pods that claim one address, one going away loses it to one that
    /// is not, and then the older to the newer.
    fn addressed_pods(&self) -> Vec<PodObject> {
        let ranges: HashMap<&str, Vec<IpNet>> = (self.nodes.live.iter())
            .map(|((_, name), n)| {
                let cidrs = pod_cidr(&n.0).into_iter().chain(pod_cidr6(&n.0));
                (
                    name.as_str(),
                    cidrs.filter_map(|c| c.parse().ok()).collect(),
                )
            })
            .collect();
        let rank = |h: &HeldPod| {
            (
                !h.deleting,
                h.created,
                std::cmp::Reverse(h.pod.name.clone()),
            )
        };
        let mut holder: HashMap<IpAddr, &HeldPod> = HashMap::new();
        for h in self.pods.values() {
            let node = h.node.as_deref().and_then(|n| ranges.get(n));
            // An address is checked against its node's range of its own family.
            // An IPv6 one is no address of a pod whose node is known and has no
            // IPv6 range (IPv4 keeps the older rule: unchecked without a range).
            let outside = |ip: &IpAddr| {
                let mut family = node.into_iter().flatten();
                match family.find(|r| r.network().is_ipv4() == ip.is_ipv4()) {
                    Some(r) => !r.contains(ip),
                    None => ip.is_ipv6() && node.is_some(),
                }
            };
            for ip in h.pod.addresses().filter(|ip| !outside(ip)) {
                match holder.get(&ip) {
                    Some(other) if rank(other) >= rank(h) => {}
                    _ => {
                        holder.insert(ip, h);
                    }
                }
            }
        }
        let held = |ip: IpAddr, h: &HeldPod| holder.get(&ip).is_some_and(|w| std::ptr::eq(*w, h));
        let mut pods: Vec<PodObject> = (self.pods.values())
            .map(|h| {
                let mut pod = h.pod.clone();
                pod.ip = pod.ip.filter(|&ip| held(IpAddr::V4(ip), h));
                pod.ip6 = pod.ip6.filter(|&ip| held(IpAddr::V6(ip), h));
                pod
            })
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pods
    }

    /// The policy objects, and the NetworkPolicies that did not read, each named.
    pub fn policy_model(&self) -> (PolicyModel, Vec<Unread>) {
        let mut policies: Vec<&ReadPolicy> = self.policies.values().collect();
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let unread = (policies.iter())
            .filter_map(|p| {
                let why = p.policy.as_ref().err()?;
                Some(Unread {
                    id: Some(ObjectId::new(Kind::NetworkPolicy, &p.namespace, &p.name)),
                    error: ManifestError {
                        file: format!("networkpolicies/{}/{}", p.namespace, p.name),
                        document: 0,
                        reason: why.clone(),
                    },
                })
            })
            .collect();
        let pods = self.addressed_pods();
        let namespaces: BTreeMap<String, Labels> = (self.namespaces.live.iter())
            .map(|((_, name), labels)| (name.clone(), labels.clone()))
            .collect();
        let model = PolicyModel {
            namespaces,
            pods: pods.into_iter().collect(),
            policies: (policies.into_iter())
                .filter_map(|p| p.policy.clone().ok())
                .collect(),
            lists_every_pod: true,
            isolated: Default::default(),
        };
        (model, unread)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, ip: &str, phase: &str, app: &str) -> SlimPod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "x", "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"ports": [
                {"name": "http", "containerPort": 80},
                {"name": "odd", "containerPort": 81, "protocol": "QUIC"},
                {"containerPort": 82}]}]},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}
        }))
        .unwrap()
    }

    fn policy(name: &str, spec: serde_json::Value) -> RawPolicy {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "x", "resourceVersion": "5"},
            "spec": spec
        }))
        .unwrap()
    }

    /// Pod `name` running on `ip`, labelled app=web, listed (`Event::InitApply`).
    fn listed(name: &str, ip: &str) -> Change {
        Change::Pod(Event::InitApply(pod(name, ip, "Running", "web")))
    }

    /// Pod `name` on `ip` in `phase`, labelled app=`app`, changed (`Event::Apply`).
    fn applied(name: &str, ip: &str, phase: &str, app: &str) -> Change {
        Change::Pod(Event::Apply(pod(name, ip, phase, app)))
    }

    /// Service `name` of namespace `ns`, with `spec`, as the API gives it.
    fn service(ns: &str, name: &str, spec: serde_json::Value) -> Change {
        let s: SlimService = serde_json::from_value(json!({
            "kind": "Service", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": spec, "status": {"loadBalancer": {}}
        }))
        .unwrap();
        Change::Service(Event::Apply(s))
    }

    /// EndpointSlice `name` of namespace `ns` for Service `svc`, with `body`.
    fn slice(ns: &str, name: &str, svc: &str, mut body: serde_json::Value) -> Change {
        body["metadata"] = json!({"name": name, "namespace": ns,
                                  "labels": {"kubernetes.io/service-name": svc}});
        Change::Slice(Event::Apply(serde_json::from_value(body).unwrap()))
    }

    /// Services and EndpointSlices are read as manifests are; one the API
    /// should have refused (or garbage where a spec should be) is named and left
    /// out, never failing the others or the page it came in; and the model is
    /// whole only once both kinds were listed.
    #[test]
    fn services_and_slices_are_read_and_a_bad_one_is_named_apart() {
        let mut c = Cache::default();
        let web = json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": "web"}]});
        assert!(c.apply(service("x", "web", web.clone())));
        assert!(!c.apply(service("x", "web", web)), "the same object again");
        assert!(c.apply(service(
            "x",
            "bad",
            json!({"clusterIP": "10.96.0.11", "ports": [{"port": 0}]})
        )));
        assert!(c.apply(service("x", "junk", json!("not a spec"))));
        assert!(c.apply(slice("x", "web-a", "web", json!({
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "n1"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}))));
        assert!(c.apply(slice(
            "x",
            "web-b",
            "web",
            json!({"addressType": "IPv4", "endpoints": 5})
        )));
        let m = c.service_model();
        let ids: Vec<String> = m.services.iter().map(|s| s.id()).collect();
        assert_eq!(ids, ["x/web"]);
        assert_eq!(m.slices.len(), 1);
        let bad: Vec<String> = m.bad.iter().map(ToString::to_string).collect();
        assert_eq!(bad.len(), 3, "{bad:#?}");
        assert!(
            bad[0].starts_with("Service x/bad (services/x/bad): port 0"),
            "{bad:?}"
        );
        assert!(
            bad[1].starts_with("Service x/junk (services/x/junk): spec:"),
            "{bad:?}"
        );
        assert!(
            bad[2].starts_with("EndpointSlice x/web-b (endpointslices/x/web-b): "),
            "{bad:?}"
        );
        let (t, refused) = crate::services::compile::compile(&m, "n1", None);
        assert!(refused.is_empty());
        assert_eq!(t.ports[0].endpoints[0].port, 8080);
        assert!(t.ports[0].endpoints[0].local);
        assert!(!c.services_synced());
        for done in [
            Change::Service(Event::InitDone),
            Change::Slice(Event::InitDone),
        ] {
            c.apply(done);
        }
        assert!(c.services_synced());
        assert!(c.service_model().is_empty(), "an empty relist empties it");
    }

    #[test]
    fn a_relist_replaces_the_mirror_whole_and_only_at_its_end() {
        let mut c = Cache::default();
        c.apply(Change::Pod(Event::Init));
        c.apply(listed("a", "10.244.1.2"));
        c.apply(listed("b", "10.244.1.3"));
        assert!(
            !c.pods.synced() && c.pods.is_empty(),
            "nothing before InitDone"
        );
        assert!(c.apply(Change::Pod(Event::InitDone)));
        assert_eq!(c.pods.len(), 2);
        // Relisted after a 410: b was deleted meanwhile. Until the list ends, the
        // old mirror stands.
        c.apply(Change::Pod(Event::Init));
        c.apply(listed("a", "10.244.1.2"));
        assert_eq!(c.pods.len(), 2);
        c.apply(Change::Pod(Event::InitDone));
        assert_eq!(c.pods.len(), 1);
        assert!(c.pods.get(&("x".into(), "b".into())).is_none());
        let before = c.policy_revision;
        assert!(c.apply(Change::Pod(Event::Delete(pod("a", "", "Running", "web")))));
        assert!(!c.apply(Change::Pod(Event::Delete(pod("a", "", "Running", "web")))));
        assert_eq!(c.policy_revision, before + 1);
    }

    /// Found by the `kube_objects` fuzz target: a Node that goes (or changes its
    /// podCIDR) changes which pod holds an address, and so the policy view.
    #[test]
    fn a_node_change_moves_the_policy_revision() {
        let node = |cidr: &str| {
            SlimNode(
                serde_json::from_value(json!({
                    "metadata": {"name": "n1"},
                    "spec": {"podCIDR": cidr}
                }))
                .unwrap(),
            )
        };
        let mut c = Cache::default();
        c.apply(Change::Node(Event::Apply(node("10.244.2.0/24"))));
        c.apply(applied("a", "10.244.1.7", "Running", "web"));
        let addressed = |c: &Cache| c.policy_model().0.pods[0].ip;
        assert_eq!(addressed(&c), None, "outside n1's podCIDR");
        let before = c.policy_revision;
        assert!(c.apply(Change::Node(Event::Apply(node("10.244.1.0/24")))));
        assert_eq!(addressed(&c), Some("10.244.1.7".parse().unwrap()));
        assert_eq!(
            c.policy_revision,
            before + 1,
            "the policy view must be remade"
        );
        assert!(c.apply(Change::Node(Event::Delete(node("10.244.1.0/24")))));
        assert_eq!(c.policy_revision, before + 2);
        // An update that changes nothing held remakes nothing.
        assert!(!c.apply(Change::Node(Event::Delete(node("10.244.1.0/24")))));
        assert_eq!(c.policy_revision, before + 2);
    }

    #[test]
    fn a_finished_pod_leaves_and_its_address_goes_to_the_new_one() {
        let mut c = Cache::default();
        c.apply(applied("old", "10.244.1.7", "Running", "db"));
        c.apply(applied("old", "10.244.1.7", "Succeeded", "db"));
        c.apply(applied("new", "10.244.1.7", "Running", "web"));
        let (model, _) = c.policy_model();
        let holders: Vec<&str> = (model.pods.iter())
            .filter(|p| p.ip == Some("10.244.1.7".parse().unwrap()))
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(holders, ["new"]);
        let p = &model.pods[0];
        assert_eq!(p.labels["app"], "web");
        // Only the named port with a known protocol.
        assert_eq!(p.ports.len(), 1);
        assert_eq!((p.ports[0].name.as_str(), p.ports[0].port), ("http", 80));
    }

    #[test]
    fn a_policy_the_api_should_have_refused_is_named_apart_from_the_model() {
        let mut c = Cache::default();
        let good = json!({"podSelector": {"matchLabels": {"app": "web"}},
                          "ingress": [{"ports": [{"port": 80}]}]});
        c.apply(Change::Policy(Event::Apply(policy("good", good.clone()))));
        // An operator the API refuses, in a rule.
        let bad_rule = json!({"podSelector": {"matchLabels": {"app": "db"}},
                              "ingress": [{"from": [{"podSelector": {"matchExpressions":
                                  [{"key": "a", "operator": "Near"}]}}]}]});
        c.apply(Change::Policy(Event::Apply(policy("bad-rule", bad_rule))));
        // A selector that does not read.
        let bad_selector = json!({"podSelector": {"matchLabels": "web"}});
        c.apply(Change::Policy(Event::Apply(policy(
            "bad-selector",
            bad_selector,
        ))));
        let (model, unread) = c.policy_model();
        let ids: Vec<String> = (model.policies.iter()).map(|p| p.id()).collect();
        assert_eq!(ids, ["x/good"]);
        let named: Vec<String> = (unread.iter())
            .map(|u| u.id.as_ref().expect("named").to_string())
            .collect();
        assert_eq!(
            named,
            ["NetworkPolicy x/bad-rule", "NetworkPolicy x/bad-selector"]
        );
        assert!(
            unread[0].error.file.ends_with("x/bad-rule") && unread[0].error.reason.contains("Near")
        );
        // The same object read again: it is in the model, and named no more.
        c.apply(Change::Policy(Event::Apply(policy("bad-rule", good))));
        let (model, unread) = c.policy_model();
        assert_eq!(model.policies.len(), 2);
        assert_eq!(unread.len(), 1);
    }

    #[test]
    fn the_store_is_synced_once_every_kind_was_listed() {
        let mut c = Cache::default();
        assert_eq!(c.unsynced().len(), 6);
        c.apply(Change::Node(Event::Init));
        c.apply(Change::Node(Event::InitDone));
        c.apply(Change::Pod(Event::Init));
        c.apply(Change::Pod(Event::InitDone));
        c.apply(Change::Namespace(Event::Init));
        c.apply(Change::Namespace(Event::InitDone));
        c.apply(Change::Policy(Event::Init));
        c.apply(Change::Policy(Event::InitDone));
        c.apply(Change::Service(Event::Init));
        c.apply(Change::Service(Event::InitDone));
        assert_eq!(c.unsynced(), ["endpointslices"]);
        c.apply(Change::Slice(Event::Init));
        c.apply(Change::Slice(Event::InitDone));
        assert!(c.synced());
        assert!(c.counts().iter().all(|(_, n)| *n == 0));
    }

    /// A dual-stack pod is held at both its addresses; an IPv6 address outside
    /// its node's IPv6 podCIDR is no address of its, and of two pods that claim
    /// one IPv6 address the newer holds it, each family judged on its own.
    #[test]
    fn dual_stack_pods_hold_an_address_of_each_family() {
        let pod = |name: &str, ips: &[&str], created: &str| {
            let ips: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
            let p: SlimPod = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "x", "creationTimestamp": created},
                "spec": {"nodeName": "n1"},
                "status": {"phase": "Running", "podIP": "", "podIPs": ips}
            }))
            .unwrap();
            Change::Pod(Event::Apply(p))
        };
        let node: SlimNode = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]}}))
        .unwrap();
        let mut c = Cache::default();
        c.apply(Change::Node(Event::Apply(node)));
        c.apply(pod(
            "a",
            &["10.244.1.5", "fd00:10:244:1::5"],
            "2026-12-07T00:00:01Z",
        ));
        // IPv6 first, as an IPv6-primary cluster lists them.
        c.apply(pod(
            "b",
            &["fd00:10:244:1::6", "10.244.1.6"],
            "2026-12-07T00:00:02Z",
        ));
        // Its IPv6 address is another node's; its IPv4 one is its own.
        c.apply(pod(
            "c",
            &["10.244.1.7", "fd00:10:244:9::7"],
            "2026-12-07T00:00:03Z",
        ));
        // Newer, and claiming a's IPv6 address only.
        c.apply(pod(
            "d",
            &["10.244.1.8", "fd00:10:244:1::5"],
            "2026-12-07T00:00:04Z",
        ));
        // On a node with no IPv6 range, an IPv6 address is nobody's.
        let v4_only: SlimNode = serde_json::from_value(json!({
            "metadata": {"name": "n2"}, "spec": {"podCIDR": "10.244.2.0/24"}}))
        .unwrap();
        c.apply(Change::Node(Event::Apply(v4_only)));
        let mut e: SlimPod = serde_json::from_value(json!({
            "metadata": {"name": "e", "namespace": "x"}, "spec": {"nodeName": "n2"},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.244.2.5"}, {"ip": "2001:db8::5"}]}
        }))
        .unwrap();
        e.metadata.creation_timestamp = None;
        c.apply(Change::Pod(Event::Apply(e)));
        let (m, _) = c.policy_model();
        let held = |name: &str| {
            let p = m.pod("x", name).unwrap();
            (
                p.ip.map(|ip| ip.to_string()),
                p.ip6.map(|ip| ip.to_string()),
            )
        };
        let some = |ip: &str| Some(ip.to_string());
        assert_eq!(held("a"), (some("10.244.1.5"), None));
        assert_eq!(held("b"), (some("10.244.1.6"), some("fd00:10:244:1::6")));
        assert_eq!(held("c"), (some("10.244.1.7"), None));
        assert_eq!(held("d"), (some("10.244.1.8"), some("fd00:10:244:1::5")));
        assert_eq!(held("e"), (some("10.244.2.5"), None));
    }

    #[test]
    fn one_pod_holds_an_address_and_only_one_of_its_nodes_range() {
        let held = |name: &str, node: &str, ip: &str, created: &str, deleting: bool| {
            let mut meta = json!({"name": name, "namespace": "x", "labels": {"app": name},
                                  "creationTimestamp": created});
            if deleting {
                meta["deletionTimestamp"] = json!("2026-12-07T01:00:00Z");
            }
            let p: SlimPod = serde_json::from_value(json!({
                "metadata": meta, "spec": {"nodeName": node},
                "status": {"phase": "Running", "podIP": ip}
            }))
            .unwrap();
            Change::Pod(Event::Apply(p))
        };
        let node: SlimNode = serde_json::from_value(json!({
            "metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}}))
        .unwrap();
        let mut c = Cache::default();
        c.apply(Change::Node(Event::Apply(node)));
        // Going away, and older: both lose the address to the newest running pod.
        c.apply(held(
            "leaving",
            "n1",
            "10.244.1.5",
            "2026-12-07T00:00:09Z",
            true,
        ));
        c.apply(held(
            "old",
            "n1",
            "10.244.1.5",
            "2026-12-07T00:00:01Z",
            false,
        ));
        c.apply(held(
            "new",
            "n1",
            "10.244.1.5",
            "2026-12-07T00:00:05Z",
            false,
        ));
        // An address outside its node's podCIDR is none; on a node not known, kept.
        c.apply(held(
            "stray",
            "n1",
            "10.244.2.9",
            "2026-12-07T00:00:01Z",
            false,
        ));
        c.apply(held(
            "elsewhere",
            "n9",
            "10.244.9.9",
            "2026-12-07T00:00:01Z",
            false,
        ));
        let (model, _) = c.policy_model();
        let ip = |name: &str| {
            let p = model.pods.iter().find(|p| p.name == name).unwrap();
            p.ip.map(|ip| ip.to_string())
        };
        assert_eq!(ip("new").as_deref(), Some("10.244.1.5"));
        assert_eq!((ip("old"), ip("leaving"), ip("stray")), (None, None, None));
        assert_eq!(ip("elsewhere").as_deref(), Some("10.244.9.9"));
        assert_eq!(model.pods.len(), 5, "each keeps its labels for what it is");
    }
}
