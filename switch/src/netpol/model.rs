//! The objects policy is made of, as every store hands them over: namespaces with
//! their labels, pods with their labels, container ports and addresses, and
//! `networking.k8s.io/v1` NetworkPolicies, checked.
//!
//! The types here are store-agnostic: the YAML directory ([`super::manifest`]) and the
//! etcd store both produce a [`PolicyModel`]. They serialize, for the view a node
//! saves in its state directory ([`crate::control::saved`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Labels: key to value.
pub type Labels = BTreeMap<String, String>;

/// The label the API server gives every namespace, with its name as the value.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The namespace a pod is in when nothing says otherwise.
pub const DEFAULT_NAMESPACE: &str = "default";

/// An L4 protocol a NetworkPolicy port names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP, the default.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => weft_encap::ipv4::protocol::TCP,
            Protocol::Udp => weft_encap::ipv4::protocol::UDP,
            Protocol::Sctp => weft_encap::ipv4::protocol::SCTP,
        }
    }

    /// The protocol of IP protocol number `n`, if a policy can name it.
    pub const fn of_number(n: u8) -> Option<Protocol> {
        match n {
            weft_encap::ipv4::protocol::TCP => Some(Protocol::Tcp),
            weft_encap::ipv4::protocol::UDP => Some(Protocol::Udp),
            weft_encap::ipv4::protocol::SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The name Kubernetes spells it with.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A label selector's requirement operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operator {
    /// The label's value is one of the values.
    In,
    /// The label is absent, or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How it is compared.
    pub operator: Operator,
    /// The values for `In` and `NotIn`.
    pub values: Vec<String>,
}

/// A label selector: every label of `labels` and every requirement must hold. The
/// empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Selector {
    /// Labels that must be present with these values (`matchLabels`).
    pub labels: Labels,
    /// Further requirements (`matchExpressions`).
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.requirements.is_empty()
    }
}

/// A range of addresses of one family with holes (`ipBlock`). A block holds
/// addresses of its own family only: `::/0` holds no IPv4 address (not even as
/// `::ffff:a.b.c.d`), and `0.0.0.0/0` no IPv6 one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpBlock {
    /// The range.
    pub cidr: IpNet,
    /// Ranges within it, of its family, that are not in the block.
    pub except: Vec<IpNet>,
}

impl IpBlock {
    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// Who a rule admits (`from`) or reaches (`to`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Peer {
    /// Pods: those matching `pods` (any, if `None`) in the namespaces matching
    /// `namespaces` (the policy's own namespace, if `None`). A peer with both
    /// selectors is the AND of the two.
    Pods {
        /// The pod selector.
        pods: Option<Selector>,
        /// The namespace selector.
        namespaces: Option<Selector>,
    },
    /// Addresses.
    Block(IpBlock),
}

/// Which port a rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PortSpec {
    /// Every port of the protocol.
    All,
    /// Ports `first` to `last`, both included (`port` with an optional `endPort`).
    Range {
        /// The first port.
        first: u16,
        /// The last port.
        last: u16,
    },
    /// The port a container names so, on the pod it applies to.
    Named(String),
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Port {
    /// The protocol (TCP unless given).
    pub protocol: Protocol,
    /// The port or ports.
    pub port: PortSpec,
}

/// One ingress or egress rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// Who it is about; empty: everyone.
    pub peers: Vec<Peer>,
    /// What it allows; empty: every port of every protocol.
    pub ports: Vec<Port>,
}

/// A NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Policy {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The pods of its namespace it selects.
    pub pod_selector: Selector,
    /// Its ingress rules if it isolates ingress (an empty list denies all).
    pub ingress: Option<Vec<Rule>>,
    /// Its egress rules if it isolates egress (an empty list denies all).
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A container port with a name, which rules may refer to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    /// The name.
    pub name: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The port number.
    pub port: u16,
}

/// A pod as the store describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodObject {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Its containers' named ports.
    pub ports: Vec<NamedPort>,
    /// Its IPv4 address, where the store knows it (`status.podIPs`); a pod
    /// attached on this node has the address of its attachment instead.
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address, likewise (absent from views saved before dual stack).
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
}

/// An object that lives in a namespace, by name.
pub trait Namespaced {
    /// Its namespace.
    fn namespace(&self) -> &str;
    /// Its name.
    fn name(&self) -> &str;
}

impl PodObject {
    /// Its addresses, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        let v4 = self.ip.map(IpAddr::V4);
        v4.into_iter().chain(self.ip6.map(IpAddr::V6))
    }
}

impl Namespaced for PodObject {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl Namespaced for Policy {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// Objects of one kind grouped by namespace, each namespace's list shared (`Arc`):
/// a copy of the set costs a reference per namespace, and a change to one object
/// copies its namespace's list only. So a store that changes one pod of 150,000
/// makes the new set in the time of one namespace, and the compiler finds a
/// namespace's pods and policies without looking at the others.
///
/// Namespaces come in name order; within one, objects in the order they were
/// pushed (a manifest's), or in name order if kept with [`Grouped::upsert`] (a
/// store's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouped<T> {
    /// Each namespace's list (its name shared too, so a copy allocates nothing
    /// per namespace).
    by_namespace: BTreeMap<Arc<str>, Arc<Vec<Arc<T>>>>,
    len: usize,
}

impl<T> Default for Grouped<T> {
    fn default() -> Self {
        Grouped {
            by_namespace: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<T: Namespaced> Grouped<T> {
    /// How many objects it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every object, namespace by namespace.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<T>> {
        self.by_namespace.values().flat_map(|v| v.iter())
    }

    /// The objects of namespace `ns`.
    pub fn in_namespace(&self, ns: &str) -> &[Arc<T>] {
        self.by_namespace.get(ns).map_or(&[], |v| v.as_slice())
    }

    /// The shared list of namespace `ns`: a list that changes is replaced, so two
    /// sets that return the same list (`Arc::ptr_eq`) agree on that namespace.
    pub fn list(&self, ns: &str) -> Option<&Arc<Vec<Arc<T>>>> {
        self.by_namespace.get(ns)
    }

    /// The namespaces that hold objects, in name order.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.by_namespace.keys().map(|k| &**k)
    }

    /// The first object `ns/name`.
    pub fn get(&self, ns: &str, name: &str) -> Option<&Arc<T>> {
        self.in_namespace(ns).iter().find(|o| o.name() == name)
    }

    /// The list of `ns`, to change (copied first if another set shares it).
    fn list_mut(&mut self, ns: &str) -> &mut Vec<Arc<T>> {
        if !self.by_namespace.contains_key(ns) {
            self.by_namespace.insert(Arc::from(ns), Arc::default());
        }
        let list = self.by_namespace.get_mut(ns).expect("just inserted");
        Arc::make_mut(list)
    }

    /// Adds `item` (an object, or a shared one) after the objects of its namespace.
    pub fn push(&mut self, item: impl Into<Arc<T>>) {
        let item = item.into();
        let ns = item.namespace().to_owned();
        self.list_mut(&ns).push(item);
        self.len += 1;
    }

    /// Puts `item` in its namespace's list, in name order, in place of the object
    /// of its name if there is one (for a list kept in name order).
    pub fn upsert(&mut self, item: Arc<T>) {
        let ns = item.namespace().to_owned();
        let list = self.list_mut(&ns);
        match list.binary_search_by(|o| o.name().cmp(item.name())) {
            Ok(i) => list[i] = item,
            Err(i) => {
                list.insert(i, item);
                self.len += 1;
            }
        }
    }

    /// Keeps only the objects `keep` holds to, each in its place (a copy of every
    /// list: for a small set).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut kept = Grouped::default();
        for item in self.iter().filter(|o| keep(o)) {
            kept.push(item.clone());
        }
        *self = kept;
    }

    /// Takes out the object `ns/name` of a list kept in name order.
    pub fn remove(&mut self, ns: &str, name: &str) -> Option<Arc<T>> {
        let list = self.by_namespace.get(ns)?;
        let i = list.binary_search_by(|o| o.name().cmp(name)).ok()?;
        let list = self.list_mut(ns);
        let out = list.remove(i);
        if list.is_empty() {
            self.by_namespace.remove(ns);
        }
        self.len -= 1;
        Some(out)
    }
}

/// The `i`-th object in [`Grouped::iter`]'s order: a walk over the namespaces, for
/// tests and queries, not for a hot path.
impl<T: Namespaced> std::ops::Index<usize> for Grouped<T> {
    type Output = Arc<T>;

    fn index(&self, i: usize) -> &Arc<T> {
        let mut left = i;
        for list in self.by_namespace.values() {
            match list.get(left) {
                Some(o) => return o,
                None => left -= list.len(),
            }
        }
        panic!("index {i} out of a set of {} objects", self.len)
    }
}

impl<T: Namespaced> FromIterator<T> for Grouped<T> {
    /// The objects, each after the others of its namespace.
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut g = Grouped::default();
        for item in items {
            g.push(item);
        }
        g
    }
}

/// A set serializes as the sequence of its objects, as a list of them did.
impl<T: Namespaced + Serialize> Serialize for Grouped<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(|o| &**o))
    }
}

impl<'de, T: Namespaced + Deserialize<'de>> Deserialize<'de> for Grouped<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<T>::deserialize(d)?.into_iter().collect())
    }
}

impl<'a, T: Namespaced> IntoIterator for &'a Grouped<T> {
    type Item = &'a Arc<T>;
    type IntoIter = Box<dyn Iterator<Item = &'a Arc<T>> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// Everything policy is computed from.
///
/// Pods and policies are shared (`Arc`) and grouped by namespace ([`Grouped`]):
/// a copy of a model of 150,000 pods costs a reference per namespace, and a store
/// that changes one object makes the new model from the old in the time of that
/// object's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyModel {
    /// Namespaces and their labels.
    pub namespaces: BTreeMap<String, Labels>,
    /// Pods.
    pub pods: Grouped<PodObject>,
    /// NetworkPolicies.
    pub policies: Grouped<Policy>,
    /// Whether the source lists every pod before it runs (the API server: kubelet
    /// reads a Pod before it asks for its network). Then a pod attached here that
    /// the model does not hold yet is one the source has not told of: it is
    /// isolated both ways until it does, so that it is never judged with no
    /// labels (which would leave it outside every policy meant for it).
    #[serde(default)]
    pub lists_every_pod: bool,
    /// Pods isolated for ingress, whatever the policies say, because an object
    /// that could say what they may receive did not read: policy fails closed
    /// (see [`super::last_good`]).
    #[serde(default)]
    pub isolated: Isolation,
}

/// Pods isolated for ingress by objects that did not read, as if a policy with no
/// ingress rule selected them: what the policies that do read allow them still
/// comes in (the union of Kubernetes), nothing else does. Egress is left as the
/// policies say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// Why every pod is (nothing good was read yet; or a document that names no
    /// object); empty when not.
    #[serde(default)]
    pub everywhere: Vec<String>,
    /// The namespaces whose pods are, each with why (the new objects of it that
    /// do not read).
    #[serde(default)]
    pub namespaces: BTreeMap<String, Vec<String>>,
}

impl Isolation {
    /// Why the pods of namespace `ns` are isolated for ingress; empty if they are not.
    pub fn reasons<'a>(&'a self, ns: &str) -> impl Iterator<Item = &'a String> + 'a {
        let here = self.namespaces.get(ns).into_iter().flatten();
        self.everywhere.iter().chain(here)
    }

    /// Whether it isolates nothing.
    pub fn is_empty(&self) -> bool {
        self.everywhere.is_empty() && self.namespaces.is_empty()
    }
}

impl PolicyModel {
    /// The labels of namespace `name`, with the one the API server always sets,
    /// `kubernetes.io/metadata.name` (only that one, for a namespace with no object).
    pub fn namespace_labels(&self, name: &str) -> Labels {
        let mut labels = self.namespaces.get(name).cloned().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
        labels
    }

    /// The pod `namespace/name`, if the store has it.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodObject> {
        self.pods.get(namespace, name).map(|p| &**p)
    }

    /// Checks what reading manifests guarantees of every object, for a model that
    /// comes from elsewhere (a saved view): selectors whose operators have values
    /// exactly when they need them, port ranges of 1 to 65535 in order, named ports
    /// with names, and address blocks with no host bits whose exceptions lie within
    /// them. (Names defined twice are [`super::manifest::check_unique`]'s.)
    pub fn check(&self) -> Result<(), String> {
        for p in &self.policies {
            let rules = p.ingress.iter().chain(&p.egress).flatten();
            let peers = rules.clone().flat_map(|r| &r.peers);
            let selectors = peers.clone().flat_map(|peer| match peer {
                Peer::Pods { pods, namespaces } => [pods.as_ref(), namespaces.as_ref()],
                Peer::Block(_) => [None, None],
            });
            std::iter::once(&p.pod_selector)
                .chain(selectors.flatten())
                .try_for_each(Selector::check)
                .and_then(|()| peers.clone().try_for_each(Peer::check))
                .and_then(|()| rules.flat_map(|r| &r.ports).try_for_each(Port::check))
                .map_err(|e| format!("NetworkPolicy {}: {e}", p.id()))?;
        }
        Ok(())
    }
}

impl Selector {
    fn check(&self) -> Result<(), String> {
        for r in &self.requirements {
            let needs_values = matches!(r.operator, Operator::In | Operator::NotIn);
            if needs_values == r.values.is_empty() {
                return Err(format!(
                    "{:?} of key {:?} with values {:?}",
                    r.operator, r.key, r.values
                ));
            }
        }
        Ok(())
    }
}

impl Peer {
    fn check(&self) -> Result<(), String> {
        let Peer::Block(b) = self else {
            return Ok(());
        };
        let inside = |e: &IpNet| *e == e.trunc() && b.cidr.contains(e) && *e != b.cidr;
        if b.cidr != b.cidr.trunc() || !b.except.iter().all(inside) {
            return Err(format!("ipBlock {} except {:?}", b.cidr, b.except));
        }
        Ok(())
    }
}

impl Port {
    fn check(&self) -> Result<(), String> {
        match &self.port {
            PortSpec::Range { first, last } if *first == 0 || last < first => {
                Err(format!("port range {first} to {last}"))
            }
            PortSpec::Named(name) if name.is_empty() => Err("a named port has no name".into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_follow_the_kubernetes_operators() {
        let pod = labels(&[("role", "db"), ("tier", "back")]);
        let req = |key: &str, operator, values: &[&str]| Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let sel = |requirements| Selector {
            labels: Labels::new(),
            requirements,
        };
        assert!(Selector::default().matches(&pod));
        assert!(Selector::default().matches(&Labels::new()));
        assert!(sel(vec![req("role", Operator::In, &["db", "cache"])]).matches(&pod));
        assert!(!sel(vec![req("role", Operator::In, &["web"])]).matches(&pod));
        assert!(sel(vec![req("role", Operator::NotIn, &["web"])]).matches(&pod));
        assert!(!sel(vec![req("role", Operator::NotIn, &["db"])]).matches(&pod));
        // NotIn holds for a pod without the label at all.
        assert!(sel(vec![req("zone", Operator::NotIn, &["a"])]).matches(&pod));
        assert!(sel(vec![req("tier", Operator::Exists, &[])]).matches(&pod));
        assert!(!sel(vec![req("zone", Operator::Exists, &[])]).matches(&pod));
        assert!(sel(vec![req("zone", Operator::DoesNotExist, &[])]).matches(&pod));
        assert!(!sel(vec![req("role", Operator::DoesNotExist, &[])]).matches(&pod));
        let both = Selector {
            labels: labels(&[("role", "db")]),
            requirements: vec![req("tier", Operator::In, &["front"])],
        };
        assert!(!both.matches(&pod), "matchLabels AND matchExpressions");
    }

    fn pod(ns: &str, name: &str) -> Arc<PodObject> {
        Arc::new(PodObject {
            namespace: ns.into(),
            name: name.into(),
            labels: Labels::new(),
            ports: Vec::new(),
            ip: None,
            ip6: None,
        })
    }

    #[test]
    fn grouped_objects_come_by_namespace_and_share_unchanged_lists() {
        let mut g: Grouped<PodObject> = Grouped::default();
        for (ns, name) in [("b", "x"), ("a", "z"), ("a", "y"), ("b", "w")] {
            g.push(pod(ns, name));
        }
        let order: Vec<(&str, &str)> = g.iter().map(|p| (&*p.namespace, &*p.name)).collect();
        assert_eq!(order, [("a", "z"), ("a", "y"), ("b", "x"), ("b", "w")]);
        assert_eq!((g.len(), g.in_namespace("b").len()), (4, 2));
        assert!(g.get("a", "y").is_some() && g.get("c", "y").is_none());
        let mut kept: Grouped<PodObject> = Grouped::default();
        for (ns, name) in [("a", "m"), ("a", "c"), ("b", "k"), ("a", "t")] {
            kept.upsert(pod(ns, name));
        }
        let copy = kept.clone();
        kept.upsert(pod("a", "c"));
        kept.upsert(pod("a", "d"));
        assert_eq!(kept.len(), 5);
        let names: Vec<&str> = kept.in_namespace("a").iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["c", "d", "m", "t"]);
        // Namespace b's list was not touched: both sets share it.
        assert!(std::ptr::eq(
            copy.in_namespace("b").as_ptr(),
            kept.in_namespace("b").as_ptr()
        ));
        assert_eq!(copy.len(), 4);
        assert!(kept.remove("b", "k").is_some());
        assert!(kept.remove("b", "k").is_none());
        assert_eq!(kept.namespaces().collect::<Vec<_>>(), ["a"]);
        assert_eq!(kept.len(), 4);
    }

    #[test]
    fn ip_blocks_leave_out_their_exceptions() {
        let b = IpBlock {
            cidr: "172.17.0.0/16".parse().unwrap(),
            except: vec!["172.17.1.0/24".parse().unwrap()],
        };
        let has = |ip: &str| b.contains(ip.parse().unwrap());
        assert!(has("172.17.0.9"));
        assert!(!has("172.17.1.9"));
        assert!(!has("172.18.0.1"));
        assert!(
            !has("::ffff:172.17.0.9"),
            "an IPv4 block holds no IPv6 address"
        );
        let b6 = IpBlock {
            cidr: "::/0".parse().unwrap(),
            except: vec!["fd00:10::/32".parse().unwrap()],
        };
        let has = |ip: &str| b6.contains(ip.parse().unwrap());
        assert!(has("2001:db8::1") && has("::ffff:10.0.0.1"));
        assert!(!has("fd00:10::1"));
        assert!(!has("10.0.0.1"), "an IPv6 block holds no IPv4 address");
    }

    #[test]
    fn a_model_from_elsewhere_is_held_to_what_manifests_guarantee() {
        let rule = |peers, ports| Rule { peers, ports };
        let policy = |ingress| PolicyModel {
            lists_every_pod: false,
            isolated: Isolation::default(),
            policies: [Policy {
                namespace: "default".into(),
                name: "p".into(),
                pod_selector: Selector::default(),
                ingress: Some(vec![ingress]),
                egress: None,
            }]
            .into_iter()
            .collect(),
            ..PolicyModel::default()
        };
        let block = |cidr: &str, except: &[&str]| {
            Peer::Block(IpBlock {
                cidr: cidr.parse().unwrap(),
                except: except.iter().map(|e| e.parse().unwrap()).collect(),
            })
        };
        let port = |port| Port {
            protocol: Protocol::Tcp,
            port,
        };
        let good = rule(
            vec![block("10.0.0.0/8", &["10.1.0.0/16"])],
            vec![port(PortSpec::Range {
                first: 80,
                last: 90,
            })],
        );
        assert_eq!(policy(good).check(), Ok(()));
        let no_values = Selector {
            labels: Labels::new(),
            requirements: vec![Requirement {
                key: "app".into(),
                operator: Operator::In,
                values: Vec::new(),
            }],
        };
        let bad = [
            rule(vec![block("10.0.0.1/8", &[])], vec![]),
            rule(vec![block("10.0.0.0/8", &["11.0.0.0/16"])], vec![]),
            rule(vec![block("10.0.0.0/8", &["10.0.0.0/8"])], vec![]),
            rule(vec![block("fd00::1/64", &[])], vec![]),
            rule(vec![block("fd00::/64", &["10.0.0.0/8"])], vec![]),
            rule(vec![block("10.0.0.0/8", &["::/0"])], vec![]),
            rule(vec![], vec![port(PortSpec::Range { first: 0, last: 9 })]),
            rule(vec![], vec![port(PortSpec::Range { first: 9, last: 8 })]),
            rule(vec![], vec![port(PortSpec::Named(String::new()))]),
            rule(
                vec![Peer::Pods {
                    pods: Some(no_values),
                    namespaces: None,
                }],
                vec![],
            ),
        ];
        for r in bad {
            let text = format!("{r:?}");
            let e = policy(r).check().expect_err(&text);
            assert!(e.starts_with("NetworkPolicy default/p: "), "{e}");
        }
    }
}
