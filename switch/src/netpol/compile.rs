//! Policies compiled into per-pod rule sets, so the datapath evaluates no selector:
//! a rule is an address set (a sorted list of pod addresses, and IP blocks) and a
//! port set, and every rule remembers the policy and rule it came from, for
//! `weft policy explain`.
//!
//! Semantics are `networking.k8s.io/v1`'s. A pod selected by any policy with a
//! direction is isolated in that direction, and what it may do there is the union of
//! the rules of all such policies. Named ports are resolved here: for ingress on the
//! selected pod's own container ports, for egress on each destination pod's.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::BitAnd;
use std::sync::Arc;

use ipnet::IpNet;

use super::model::{
    IpBlock, Labels, NamedPort, Peer, PodObject, Policy, PolicyModel, Port, PortSpec, Protocol,
    Rule,
};

/// Where a verdict came from: a policy and one of its rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The policy, `namespace/name`.
    pub policy: Arc<str>,
    /// The rule's index in its direction's list.
    pub rule: usize,
}

/// A set of addresses: pods', and blocks, of both families. An address is looked
/// up among those of its own family only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrSet {
    v4: Nets<u32>,
    v6: Nets<u128>,
}

/// Addresses of one family as integers: single ones, and blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nets<T> {
    /// Pod addresses, sorted.
    ips: Vec<T>,
    /// Blocks with their exceptions.
    blocks: Vec<Block<T>>,
}

/// An IP block: a network, as (address, netmask), and networks within it left out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block<T> {
    net: (T, T),
    except: Vec<(T, T)>,
}

impl<T: Copy + Ord + BitAnd<Output = T>> Nets<T> {
    fn contains(&self, ip: T) -> bool {
        let within = |&(net, mask): &(T, T)| ip & mask == net;
        self.ips.binary_search(&ip).is_ok()
            || (self.blocks.iter()).any(|b| within(&b.net) && !b.except.iter().any(within))
    }

    fn heap_bytes(&self) -> usize {
        let word = std::mem::size_of::<T>();
        let blocks = self
            .blocks
            .iter()
            .map(|b| 2 * word + b.except.capacity() * 2 * word);
        self.ips.capacity() * word + blocks.sum::<usize>()
    }

    fn sort(&mut self) {
        self.ips.sort_unstable();
        self.ips.dedup();
    }
}

/// An address family as policy keeps it: IPv4 addresses as `u32`, IPv6 ones as
/// `u128`. The datapath looks an address up with its own type, so an IPv4
/// packet never meets an IPv6 rule, nor the other way round.
pub trait Family: Copy + Eq + std::fmt::Debug {
    /// The address as an integer.
    type Bits: Copy + Ord + BitAnd<Output = Self::Bits> + std::fmt::Debug;
    /// The address as an integer.
    fn bits(self) -> Self::Bits;
    /// The addresses of this family in `set`.
    fn nets(set: &AddrSet) -> &Nets<Self::Bits>;
    /// The named ports of this family's destinations in `ports`.
    fn named(ports: &PortSet) -> &[(Self::Bits, u8, u16)];
}

impl Family for Ipv4Addr {
    type Bits = u32;
    fn bits(self) -> u32 {
        u32::from(self)
    }
    fn nets(set: &AddrSet) -> &Nets<u32> {
        &set.v4
    }
    fn named(ports: &PortSet) -> &[(u32, u8, u16)] {
        &ports.named4
    }
}

impl Family for Ipv6Addr {
    type Bits = u128;
    fn bits(self) -> u128 {
        u128::from(self)
    }
    fn nets(set: &AddrSet) -> &Nets<u128> {
        &set.v6
    }
    fn named(ports: &PortSet) -> &[(u128, u8, u16)] {
        &ports.named6
    }
}

impl AddrSet {
    /// Whether `ip` is in the set.
    pub fn contains<A: Family>(&self, ip: A) -> bool {
        A::nets(self).contains(ip.bits())
    }

    /// Whether `ip`, of either family, is in the set.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => self.contains(ip),
            IpAddr::V6(ip) => self.contains(ip),
        }
    }

    /// Adds block `b`, in its family.
    fn push_block(&mut self, b: &IpBlock) {
        let v4 = |n: &IpNet| match n {
            IpNet::V4(n) => Some((u32::from(n.network()), u32::from(n.netmask()))),
            IpNet::V6(_) => None,
        };
        let v6 = |n: &IpNet| match n {
            IpNet::V6(n) => Some((u128::from(n.network()), u128::from(n.netmask()))),
            IpNet::V4(_) => None,
        };
        // An exception of the other family lies outside the block (the model
        // refuses one): it is left out.
        match b.cidr {
            IpNet::V4(_) => self.v4.blocks.extend(v4(&b.cidr).map(|net| Block {
                net,
                except: b.except.iter().filter_map(v4).collect(),
            })),
            IpNet::V6(_) => self.v6.blocks.extend(v6(&b.cidr).map(|net| Block {
                net,
                except: b.except.iter().filter_map(v6).collect(),
            })),
        }
    }

    /// Adds the addresses of `pod`.
    fn push_pod(&mut self, pod: &KnownPod<'_>) {
        self.v4.ips.extend(pod.ip.map(u32::from));
        self.v6.ips.extend(pod.ip6.map(u128::from));
    }

    /// Bytes it holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.v4.heap_bytes() + self.v6.heap_bytes()
    }
}

/// The ports a rule allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet {
    /// (protocol number, first port, last port).
    ranges: Vec<(u8, u16, u16)>,
    /// Named ports, resolved: (IPv4 destination, protocol number, port), sorted.
    named4: Vec<(u32, u8, u16)>,
    /// Named ports, resolved, of IPv6 destinations, likewise.
    named6: Vec<(u128, u8, u16)>,
}

impl PortSet {
    fn allows<A: Family>(&self, dst: A, proto: u8, port: Option<u16>) -> bool {
        let Some(port) = port else {
            return false;
        };
        self.ranges
            .iter()
            .any(|&(p, lo, hi)| p == proto && (lo..=hi).contains(&port))
            || A::named(self)
                .binary_search(&(dst.bits(), proto, port))
                .is_ok()
    }

    /// Whether it names a port of some pod.
    pub fn has_named(&self) -> bool {
        !self.named4.is_empty() || !self.named6.is_empty()
    }

    /// Adds named port `port` of protocol `proto` on every address of `pod`.
    fn push_named(&mut self, pod: &KnownPod<'_>, proto: u8, port: u16) {
        self.named4
            .extend(pod.ip.map(|ip| (u32::from(ip), proto, port)));
        self.named6
            .extend(pod.ip6.map(|ip| (u128::from(ip), proto, port)));
    }

    fn sort(&mut self) {
        self.named4.sort_unstable();
        self.named4.dedup();
        self.named6.sort_unstable();
        self.named6.dedup();
    }
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    /// Where it came from.
    pub origin: Origin,
    /// The peers it admits or reaches; `None`: everyone.
    pub peers: Option<Arc<AddrSet>>,
    /// The ports it allows; `None`: every port of every protocol.
    pub ports: Option<PortSet>,
}

/// The rules of one pod in one direction: it is isolated there, and may do only what
/// a rule allows (nothing, if there is no rule).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// The rules, in policy order.
    pub rules: Vec<CompiledRule>,
}

impl RuleSet {
    /// The first rule that allows a packet with `peer` at the other end (its source
    /// for ingress, its destination for egress), to `dst` on `port` of IP protocol
    /// `proto` (`None` for a protocol without ports, or a fragment).
    pub fn allows<A: Family>(
        &self,
        peer: A,
        dst: A,
        proto: u8,
        port: Option<u16>,
    ) -> Option<&Origin> {
        self.rules
            .iter()
            .find(|r| {
                r.peers.as_ref().is_none_or(|s| s.contains(peer))
                    && r.ports.as_ref().is_none_or(|p| p.allows(dst, proto, port))
            })
            .map(|r| &r.origin)
    }
}

/// What one pod may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRules {
    /// Its ingress rules, if it is isolated for ingress.
    pub ingress: Option<RuleSet>,
    /// Its egress rules, if it is isolated for egress.
    pub egress: Option<RuleSet>,
    /// The policies that select it: (`namespace/name`, isolates ingress, isolates egress).
    pub selected_by: Vec<(Arc<str>, bool, bool)>,
}

impl PodRules {
    /// Whether a policy isolates it in either direction.
    pub fn isolated(&self) -> bool {
        self.ingress.is_some() || self.egress.is_some()
    }
}

/// A pod as the compiler sees it: where it is, what it is called, its address. It
/// borrows from the model (and from the local pods).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownPod<'m> {
    /// Its namespace.
    pub namespace: &'m str,
    /// Its name (empty for an attachment with no name).
    pub name: &'m str,
    /// Its labels.
    pub labels: &'m Labels,
    /// Its named container ports.
    pub ports: &'m [NamedPort],
    /// Its IPv4 address.
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address.
    pub ip6: Option<Ipv6Addr>,
}

impl KnownPod<'_> {
    /// Its addresses, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        let v4 = self.ip.map(IpAddr::V4);
        v4.into_iter().chain(self.ip6.map(IpAddr::V6))
    }
}

/// The labels of a local pod the store does not know.
static NO_LABELS: Labels = Labels::new();

/// A pod attached on this node: its address, and what its runtime called it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalPod {
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack node.
    pub ip6: Option<Ipv6Addr>,
    /// Its namespace, from `K8S_POD_NAMESPACE` (`default` if none was given).
    pub namespace: String,
    /// Its name, from `K8S_POD_NAME` (empty if none was given).
    pub name: String,
}

/// The peer sets of one policy's rules, per direction.
#[derive(Debug, Clone, Default)]
struct PolicyPeers {
    ingress: Vec<Option<Arc<AddrSet>>>,
    egress: Vec<Option<Arc<AddrSet>>>,
}

/// A namespace's pod list as a peer set read it (`None`: no pods).
type Read = (String, Option<Arc<Vec<Arc<PodObject>>>>);

/// A policy's peer sets, and the namespaces' pod lists they were made from.
#[derive(Debug, Clone)]
struct Resolved {
    peers: Arc<PolicyPeers>,
    reads: Vec<Read>,
}

/// Peer sets resolved by earlier compiles, kept for the next: a compile reuses a
/// policy's sets while the policy, the pod lists of the namespaces they read, the
/// namespaces' labels, the namespaces that hold pods, and the local pods are as
/// they were. A store that changes one pod of 150,000 then costs a compile the
/// sets that read that pod's namespace, not all of them.
#[derive(Debug, Default)]
pub struct PeerCache {
    local: Vec<LocalPod>,
    labels: BTreeMap<String, Labels>,
    namespaces: Vec<String>,
    entries: Vec<(Arc<Policy>, Resolved)>,
}

impl PeerCache {
    /// Forgets every set unless `model` and `local` agree with what the sets were
    /// made with, in what every set may read.
    fn check(&mut self, model: &PolicyModel, local: &[LocalPod]) {
        let same = self.local == local
            && self.labels == model.namespaces
            && self
                .namespaces
                .iter()
                .map(String::as_str)
                .eq(model.pods.namespaces());
        if !same {
            self.entries.clear();
            self.local = local.to_vec();
            self.labels = model.namespaces.clone();
            self.namespaces = model.pods.namespaces().map(str::to_owned).collect();
        }
    }
}

/// Policies resolved against every known pod, ready to give any pod its rules. The
/// known pods are the local ones (first), and the store's pods with an address
/// that are not local: neither of a local pod's name nor at a local pod's address.
///
/// The model groups its pods and policies by namespace, so a pod's rules look at
/// the policies of its namespace only, and a policy's peer sets at the namespaces
/// its rules name; a policy's peer sets are resolved the first time a pod it
/// selects asks. A compile for the pods attached here costs what their policies
/// select, not the whole cluster.
#[derive(Debug)]
pub struct Compiler<'m> {
    model: &'m PolicyModel,
    /// The local pods, in the order given, as attached and as known.
    attached: &'m [LocalPod],
    local: Vec<KnownPod<'m>>,
    /// The indices in `local` of each namespace's local pods.
    local_by_namespace: BTreeMap<&'m str, Vec<usize>>,
    /// The local pods' addresses, sorted.
    local_ips: Vec<IpAddr>,
    /// The peer sets resolved so far, by policy, with what they read.
    peers: RefCell<HashMap<*const Policy, (Arc<Policy>, Resolved)>>,
}

impl<'m> Compiler<'m> {
    /// Resolves `model` with the pods attached on this node, `local`. A local pod
    /// takes its labels and ports from the store's pod of the same namespace and
    /// name, and its address from its attachment; a store pod with an address
    /// elsewhere is a remote pod.
    pub fn new(model: &'m PolicyModel, local: &'m [LocalPod]) -> Compiler<'m> {
        let mut known = Vec::with_capacity(local.len());
        let mut local_by_namespace: BTreeMap<&'m str, Vec<usize>> = BTreeMap::new();
        for (k, l) in local.iter().enumerate() {
            let object = model.pods.get(&l.namespace, &l.name);
            known.push(KnownPod {
                namespace: &l.namespace,
                name: &l.name,
                labels: object.map_or(&NO_LABELS, |o| &o.labels),
                ports: object.map_or(&[], |o| &o.ports),
                ip: Some(l.ip),
                ip6: l.ip6,
            });
            local_by_namespace.entry(&l.namespace).or_default().push(k);
        }
        let addresses = |l: &LocalPod| [Some(IpAddr::V4(l.ip)), l.ip6.map(IpAddr::V6)];
        let mut local_ips: Vec<IpAddr> = local.iter().flat_map(addresses).flatten().collect();
        local_ips.sort_unstable();
        Compiler {
            model,
            attached: local,
            local: known,
            local_by_namespace,
            local_ips,
            peers: RefCell::new(HashMap::new()),
        }
    }

    /// Store pod `o` as a known pod, unless it has no address or a local pod
    /// stands for it, at one of its addresses or by name (`names`: the local
    /// pods of its namespace).
    fn remote(&self, o: &'m PodObject, names: &[usize]) -> Option<KnownPod<'m>> {
        let mut addresses = o.addresses().peekable();
        addresses.peek()?;
        let local = addresses.any(|ip| self.local_ips.binary_search(&ip).is_ok())
            || names.iter().any(|&k| self.local[k].name == o.name);
        (!local).then_some(KnownPod {
            namespace: &o.namespace,
            name: &o.name,
            labels: &o.labels,
            ports: &o.ports,
            ip: o.ip,
            ip6: o.ip6,
        })
    }

    /// The known pods of namespace `ns`: the local ones, then the store's.
    fn members<'s>(&'s self, ns: &str) -> impl Iterator<Item = KnownPod<'m>> + 's {
        let names: &'s [usize] = self.local_by_namespace.get(ns).map_or(&[], Vec::as_slice);
        let model: &'m PolicyModel = self.model;
        let local = names.iter().map(|&k| self.local[k]);
        let remote = model.pods.in_namespace(ns).iter();
        local.chain(remote.filter_map(move |o| self.remote(o, names)))
    }

    /// Every known pod: the local ones, then the store's, in its order.
    pub fn known<'s>(&'s self) -> impl Iterator<Item = KnownPod<'m>> + 's {
        let model: &'m PolicyModel = self.model;
        let remote = model.pods.iter().filter_map(move |o| {
            let names = self.local_by_namespace.get(o.namespace.as_str());
            self.remote(o, names.map_or(&[], Vec::as_slice))
        });
        self.local.iter().copied().chain(remote)
    }

    /// How many pods are known, local and remote: a walk of every pod.
    pub fn known_count(&self) -> usize {
        self.known().count()
    }

    /// The local pods, in the order given.
    pub fn local(&self) -> &[KnownPod<'m>] {
        &self.local
    }

    /// The known pod `namespace/name`.
    pub fn find(&self, namespace: &str, name: &str) -> Option<KnownPod<'m>> {
        self.members(namespace).find(|p| p.name == name)
    }

    /// The known pod at `ip`, of either family (a walk of every pod, for a query).
    pub fn pod_at(&self, ip: IpAddr) -> Option<KnownPod<'m>> {
        self.known().find(|p| p.addresses().any(|a| a == ip))
    }

    /// The peer sets of policy `p`, resolved once.
    fn policy_peers(&self, p: &Arc<Policy>) -> Arc<PolicyPeers> {
        let key = Arc::as_ptr(p);
        if let Some((_, r)) = self.peers.borrow().get(&key) {
            return r.peers.clone();
        }
        let mut reads = Vec::new();
        let mut sets = |rules: &Option<Vec<Rule>>| {
            rules
                .iter()
                .flatten()
                .map(|r| self.peer_set(p, &r.peers, &mut reads).map(Arc::new))
                .collect()
        };
        let ingress = sets(&p.ingress);
        let egress = sets(&p.egress);
        let peers = Arc::new(PolicyPeers { ingress, egress });
        let resolved = Resolved {
            peers: peers.clone(),
            reads,
        };
        self.peers.borrow_mut().insert(key, (p.clone(), resolved));
        peers
    }

    /// Whether the pod lists `reads` are the model's now.
    fn unchanged(&self, reads: &[Read]) -> bool {
        reads
            .iter()
            .all(|(ns, list)| match (list, self.model.pods.list(ns)) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            })
    }

    /// The known pods of namespace `ns`, noting the pod list read in `reads`.
    fn read<'s>(
        &'s self,
        ns: &str,
        reads: &mut Vec<Read>,
    ) -> impl Iterator<Item = KnownPod<'m>> + 's {
        reads.push((ns.to_owned(), self.model.pods.list(ns).cloned()));
        self.members(ns)
    }

    /// The addresses `peers` (of policy `p`) stand for; `None` for everyone. The
    /// namespaces' pod lists it reads go in `reads`.
    fn peer_set(&self, p: &Policy, peers: &[Peer], reads: &mut Vec<Read>) -> Option<AddrSet> {
        if peers.is_empty() {
            return None;
        }
        let mut set = AddrSet::default();
        for peer in peers {
            match peer {
                Peer::Block(b) => set.push_block(b),
                Peer::Pods { pods, namespaces } => {
                    let selected = |pod: &KnownPod<'_>| {
                        pods.as_ref().is_none_or(|sel| sel.matches(pod.labels))
                    };
                    let Some(sel) = namespaces else {
                        let members = self.read(&p.namespace, reads);
                        members.filter(selected).for_each(|pod| set.push_pod(&pod));
                        continue;
                    };
                    // The namespaces first, each judged once; then their pods.
                    let stored = self.model.pods.namespaces();
                    let local_only = (self.local_by_namespace.keys().copied())
                        .filter(|ns| self.model.pods.in_namespace(ns).is_empty());
                    for ns in stored.chain(local_only) {
                        if sel.matches(&self.model.namespace_labels(ns)) {
                            let members = self.read(ns, reads);
                            members.filter(selected).for_each(|pod| set.push_pod(&pod));
                        }
                    }
                }
            }
        }
        set.v4.sort();
        set.v6.sort();
        Some(set)
    }

    /// Whether policy `p` selects `pod`.
    fn selects(p: &Policy, pod: &KnownPod<'_>) -> bool {
        p.namespace == pod.namespace && p.pod_selector.matches(pod.labels)
    }

    /// The rules of `pod`: those of the policies that select it, and an ingress
    /// isolation for each reason the model isolates its namespace
    /// ([`PolicyModel::isolated`]).
    pub fn rules_for(&self, pod: &KnownPod<'_>) -> PodRules {
        let mut out = PodRules::default();
        for p in self.model.policies.in_namespace(pod.namespace) {
            if !Self::selects(p, pod) {
                continue;
            }
            let id: Arc<str> = Arc::from(p.id());
            out.selected_by
                .push((id.clone(), p.ingress.is_some(), p.egress.is_some()));
            let origin = |rule| Origin {
                policy: id.clone(),
                rule,
            };
            let peers = self.policy_peers(p);
            if let Some(rules) = &p.ingress {
                let set = out.ingress.get_or_insert_with(RuleSet::default);
                for (k, r) in rules.iter().enumerate() {
                    set.rules.push(CompiledRule {
                        origin: origin(k),
                        peers: peers.ingress[k].clone(),
                        ports: self.ports(&r.ports, &[*pod]),
                    });
                }
            }
            if let Some(rules) = &p.egress {
                let set = out.egress.get_or_insert_with(RuleSet::default);
                for (k, r) in rules.iter().enumerate() {
                    let peers = peers.egress[k].clone();
                    // Named ports name the destination's container ports.
                    let named = (r.ports.iter()).any(|p| matches!(p.port, PortSpec::Named(_)));
                    let targets: Vec<KnownPod<'_>> = match named {
                        true => (self.known())
                            .filter(|t| {
                                let reached =
                                    |s: &Arc<AddrSet>| t.addresses().any(|a| s.contains_ip(a));
                                peers.as_ref().is_none_or(reached)
                            })
                            .collect(),
                        false => Vec::new(),
                    };
                    set.rules.push(CompiledRule {
                        origin: origin(k),
                        ports: self.ports(&r.ports, &targets),
                        peers,
                    });
                }
            }
        }
        // Objects that did not read isolate as a policy with no ingress rule would.
        for why in self.model.isolated.reasons(pod.namespace) {
            out.ingress.get_or_insert_with(RuleSet::default);
            out.selected_by
                .push((Arc::from(format!("({why})")), true, false));
        }
        out
    }

    /// The port set of `ports`, named ones resolved on `targets`; `None` for any port.
    fn ports(&self, ports: &[Port], targets: &[KnownPod<'_>]) -> Option<PortSet> {
        if ports.is_empty() {
            return None;
        }
        let mut set = PortSet::default();
        for port in ports {
            let proto = port.protocol.number();
            match &port.port {
                PortSpec::All => set.ranges.push((proto, 0, u16::MAX)),
                PortSpec::Range { first, last } => set.ranges.push((proto, *first, *last)),
                PortSpec::Named(name) => {
                    for t in targets {
                        for np in t.ports.iter().filter(|np| &np.name == name) {
                            if np.protocol == port.protocol {
                                set.push_named(t, proto, np.port);
                            }
                        }
                    }
                }
            }
        }
        set.sort();
        Some(set)
    }
}

/// Every local pod's rules.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicy {
    /// The rules of each local pod that some policy selects, by address.
    pub by_ip: HashMap<Ipv4Addr, Arc<PodRules>>,
    /// How many policies went in.
    pub policies: usize,
}

impl CompiledPolicy {
    /// Bytes the compiled rules hold on the heap, address sets counted once.
    pub fn heap_bytes(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        let mut bytes = self.by_ip.capacity() * 24;
        for rules in self.by_ip.values() {
            bytes += std::mem::size_of::<PodRules>();
            for set in rules.ingress.iter().chain(&rules.egress) {
                bytes += set.rules.capacity() * std::mem::size_of::<CompiledRule>();
                for r in &set.rules {
                    if let Some(p) = &r.ports {
                        bytes += p.ranges.capacity() * 6
                            + p.named4.capacity() * 8
                            + p.named6.capacity() * 24;
                    }
                    if let Some(s) = &r.peers {
                        if seen.insert(Arc::as_ptr(s)) {
                            bytes += s.heap_bytes();
                        }
                    }
                }
            }
        }
        bytes
    }
}

/// Compiles `model` for the pods attached on this node, in time that grows with
/// the local pods and what their policies select, not with the whole cluster.
pub fn compile(model: &PolicyModel, local: &[LocalPod]) -> CompiledPolicy {
    compile_with(&Compiler::new(model, local))
}

/// Compiles as [`compile`] does, reusing the peer sets of `cache` that are still
/// good and keeping the ones this compile resolved for the next.
pub fn compile_cached(
    model: &PolicyModel,
    local: &[LocalPod],
    cache: &mut PeerCache,
) -> CompiledPolicy {
    cache.check(model, local);
    let c = Compiler::new(model, local);
    for (policy, resolved) in cache.entries.drain(..) {
        let current = model.policies.get(&policy.namespace, &policy.name);
        if current.is_some_and(|p| Arc::ptr_eq(p, &policy)) && c.unchanged(&resolved.reads) {
            (c.peers.borrow_mut()).insert(Arc::as_ptr(&policy), (policy, resolved));
        }
    }
    let compiled = compile_with(&c);
    cache.entries = c.peers.into_inner().into_values().collect();
    compiled
}

/// What a local pod the model does not hold gets, when the model lists every
/// pod ([`PolicyModel::lists_every_pod`]): nothing in, nothing out.
pub const UNKNOWN_POD: &str = "(a pod the store has not listed yet)";

fn compile_with(c: &Compiler<'_>) -> CompiledPolicy {
    let unknown = |pod: &KnownPod<'_>| {
        c.model.lists_every_pod && c.model.pods.get(pod.namespace, pod.name).is_none()
    };
    let by_ip = (c.attached.iter().zip(c.local()))
        .map(|(l, pod)| match unknown(pod) {
            true => (
                l.ip,
                PodRules {
                    ingress: Some(RuleSet::default()),
                    egress: Some(RuleSet::default()),
                    selected_by: vec![(Arc::from(UNKNOWN_POD), true, true)],
                },
            ),
            false => (l.ip, c.rules_for(pod)),
        })
        .filter(|(_, r)| r.isolated())
        .map(|(ip, r)| (ip, Arc::new(r)))
        .collect();
    CompiledPolicy {
        by_ip,
        policies: c.model.policies.len(),
    }
}

/// How many pods `model` and the pods attached here, `local`, make known: a walk
/// of every pod, for `weft policy status`.
pub fn known_pods(model: &PolicyModel, local: &[LocalPod]) -> usize {
    Compiler::new(model, local).known_count()
}

/// A protocol and port as `explain` shows them.
pub fn describe(proto: u8, port: Option<u16>) -> String {
    match (Protocol::of_number(proto), port) {
        (Some(p), Some(port)) => format!("{p} {port}"),
        (Some(p), None) => p.to_string(),
        (None, _) => format!("protocol {proto}"),
    }
}

#[cfg(test)]
mod tests {
    //! The compiler against the one it replaced (which resolved every policy
    //! against every pod up front), on generated clusters: the same rules for
    //! every pod, local or not, and the same compiled set.

    use super::*;
    use crate::netpol::model::{IpBlock, Operator, PodObject, Requirement, Selector};

    /// A pod as the old compiler saw it (owned).
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct OldPod {
        namespace: String,
        name: String,
        labels: Labels,
        ports: Vec<NamedPort>,
        ip: Ipv4Addr,
    }

    struct OldCompiler<'m> {
        model: &'m PolicyModel,
        pods: Vec<OldPod>,
        by_namespace: std::collections::BTreeMap<String, Vec<usize>>,
        namespace_labels: std::collections::BTreeMap<String, Labels>,
        peers: Vec<PolicyPeers>,
        ids: Vec<Arc<str>>,
    }

    impl<'m> OldCompiler<'m> {
        fn new(model: &'m PolicyModel, local: &[LocalPod]) -> OldCompiler<'m> {
            let mut pods: Vec<OldPod> = local
                .iter()
                .map(|l| {
                    let object = model.pod(&l.namespace, &l.name);
                    OldPod {
                        namespace: l.namespace.clone(),
                        name: l.name.clone(),
                        labels: object.map(|o| o.labels.clone()).unwrap_or_default(),
                        ports: object.map(|o| o.ports.clone()).unwrap_or_default(),
                        ip: l.ip,
                    }
                })
                .collect();
            let local_ips: std::collections::HashSet<Ipv4Addr> =
                local.iter().map(|l| l.ip).collect();
            for o in &model.pods {
                let is_local = local
                    .iter()
                    .any(|l| l.namespace == o.namespace && l.name == o.name);
                match o.ip {
                    Some(ip) if !is_local && !local_ips.contains(&ip) => pods.push(OldPod {
                        namespace: o.namespace.clone(),
                        name: o.name.clone(),
                        labels: o.labels.clone(),
                        ports: o.ports.clone(),
                        ip,
                    }),
                    _ => {}
                }
            }
            let mut by_namespace: std::collections::BTreeMap<String, Vec<usize>> =
                Default::default();
            for (i, p) in pods.iter().enumerate() {
                by_namespace.entry(p.namespace.clone()).or_default().push(i);
            }
            let namespace_labels = by_namespace
                .keys()
                .map(|ns| (ns.clone(), model.namespace_labels(ns)))
                .collect();
            let mut c = OldCompiler {
                model,
                pods,
                by_namespace,
                namespace_labels,
                peers: Vec::new(),
                ids: model.policies.iter().map(|p| Arc::from(p.id())).collect(),
            };
            c.peers = model.policies.iter().map(|p| c.policy_peers(p)).collect();
            c
        }

        fn pods(&self) -> &[OldPod] {
            &self.pods
        }

        fn policy_peers(&self, p: &Policy) -> PolicyPeers {
            let sets = |rules: &Option<Vec<Rule>>| {
                rules
                    .iter()
                    .flatten()
                    .map(|r| self.peer_set(p, &r.peers).map(Arc::new))
                    .collect()
            };
            PolicyPeers {
                ingress: sets(&p.ingress),
                egress: sets(&p.egress),
            }
        }

        fn peer_set(&self, p: &Policy, peers: &[Peer]) -> Option<AddrSet> {
            if peers.is_empty() {
                return None;
            }
            let mut set = AddrSet::default();
            for peer in peers {
                match peer {
                    Peer::Block(b) => set.push_block(b),
                    Peer::Pods { pods, namespaces } => {
                        // The namespaces first, each judged once; then their pods.
                        for (ns, members) in &self.by_namespace {
                            let in_scope = match namespaces {
                                None => *ns == p.namespace,
                                Some(sel) => sel.matches(&self.namespace_labels[ns]),
                            };
                            if !in_scope {
                                continue;
                            }
                            set.v4.ips.extend(
                                members
                                    .iter()
                                    .map(|&i| &self.pods[i])
                                    .filter(|pod| {
                                        pods.as_ref().is_none_or(|sel| sel.matches(&pod.labels))
                                    })
                                    .map(|pod| u32::from(pod.ip)),
                            );
                        }
                    }
                }
            }
            set.v4.sort();
            Some(set)
        }

        fn selects(p: &Policy, pod: &OldPod) -> bool {
            p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels)
        }

        fn rules_for(&self, pod: &OldPod) -> PodRules {
            let mut out = PodRules::default();
            for (i, p) in self.model.policies.iter().enumerate() {
                if !Self::selects(p, pod) {
                    continue;
                }
                let id = &self.ids[i];
                out.selected_by
                    .push((id.clone(), p.ingress.is_some(), p.egress.is_some()));
                if let Some(rules) = &p.ingress {
                    let set = out.ingress.get_or_insert_with(RuleSet::default);
                    for (k, r) in rules.iter().enumerate() {
                        let ports = self.ports(&r.ports, &[pod]);
                        set.rules.push(CompiledRule {
                            origin: Origin {
                                policy: id.clone(),
                                rule: k,
                            },
                            peers: self.peers[i].ingress[k].clone(),
                            ports,
                        });
                    }
                }
                if let Some(rules) = &p.egress {
                    let set = out.egress.get_or_insert_with(RuleSet::default);
                    for (k, r) in rules.iter().enumerate() {
                        let peers = self.peers[i].egress[k].clone();
                        // Named ports name the destination's container ports.
                        let targets: Vec<&OldPod> = self
                            .pods
                            .iter()
                            .filter(|t| peers.as_ref().is_none_or(|s| s.contains(t.ip)))
                            .collect();
                        let ports = self.ports(&r.ports, &targets);
                        set.rules.push(CompiledRule {
                            origin: Origin {
                                policy: id.clone(),
                                rule: k,
                            },
                            peers,
                            ports,
                        });
                    }
                }
            }
            out
        }

        fn ports(&self, ports: &[Port], targets: &[&OldPod]) -> Option<PortSet> {
            if ports.is_empty() {
                return None;
            }
            let mut set = PortSet::default();
            for port in ports {
                let proto = port.protocol.number();
                match &port.port {
                    PortSpec::All => set.ranges.push((proto, 0, u16::MAX)),
                    PortSpec::Range { first, last } => set.ranges.push((proto, *first, *last)),
                    PortSpec::Named(name) => {
                        for t in targets {
                            for np in t.ports.iter().filter(|np| &np.name == name) {
                                if np.protocol == port.protocol {
                                    set.named4.push((u32::from(t.ip), proto, np.port));
                                }
                            }
                        }
                    }
                }
            }
            set.sort();
            Some(set)
        }
    }

    fn old_compile(model: &PolicyModel, local: &[LocalPod]) -> (CompiledPolicy, usize) {
        let c = OldCompiler::new(model, local);
        let by_ip = c
            .pods()
            .iter()
            .take(local.len())
            .map(|pod| (pod.ip, c.rules_for(pod)))
            .filter(|(_, r)| r.isolated())
            .map(|(ip, r)| (ip, Arc::new(r)))
            .collect();
        let compiled = CompiledPolicy {
            by_ip,
            policies: model.policies.len(),
        };
        (compiled, c.pods().len())
    }

    fn labels(pairs: &[(&str, String)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// A cluster made from `seed`: namespaces with team labels, pods (some with
    /// no address, some sharing one) with app and tier labels and named ports,
    /// policies with pod, namespace and mixed selectors, blocks, ports by number,
    /// range and name, ingress and egress; and local pods, some of them standing
    /// for store pods by name or by address, some unknown to the store.
    fn cluster(seed: u64) -> (PolicyModel, Vec<LocalPod>) {
        let mut x = seed;
        let mut next = move |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut m = PolicyModel::default();
        for k in 0..4 {
            m.namespaces
                .insert(format!("ns{k}"), labels(&[("team", format!("t{}", k % 2))]));
        }
        for p in 0..40u64 {
            let ip = match next(10) {
                0 => None,
                1 => Some(Ipv4Addr::new(10, 0, 0, 1)),
                _ => Some(Ipv4Addr::new(10, 0, 1, p as u8 + 1)),
            };
            let port = NamedPort {
                name: ["http", "dns"][next(2) as usize].into(),
                protocol: [Protocol::Tcp, Protocol::Udp][next(2) as usize],
                port: 80 + next(3) as u16,
            };
            m.pods.push(Arc::new(PodObject {
                namespace: format!("ns{}", next(5)),
                name: format!("p{}", next(30)),
                labels: labels(&[
                    ("app", format!("a{}", next(3))),
                    ("tier", ["web", "db"][next(2) as usize].into()),
                ]),
                ports: vec![port],
                ip,
                ip6: None,
            }));
        }
        let selector = |next: &mut dyn FnMut(u64) -> u64| match next(4) {
            0 => Selector::default(),
            1 => Selector {
                labels: labels(&[("app", format!("a{}", next(3)))]),
                requirements: Vec::new(),
            },
            2 => Selector {
                labels: Labels::new(),
                requirements: vec![Requirement {
                    key: "tier".into(),
                    operator: [Operator::In, Operator::NotIn][next(2) as usize],
                    values: vec!["web".into()],
                }],
            },
            _ => Selector {
                labels: labels(&[("team", format!("t{}", next(2)))]),
                requirements: Vec::new(),
            },
        };
        for q in 0..12 {
            let rules = |next: &mut dyn FnMut(u64) -> u64| -> Option<Vec<Rule>> {
                if next(3) == 0 {
                    return None;
                }
                let rules = (0..next(3))
                    .map(|_| {
                        let peers = (0..next(3))
                            .map(|_| match next(4) {
                                0 => Peer::Block(IpBlock {
                                    cidr: "10.0.1.0/28".parse().unwrap(),
                                    except: vec!["10.0.1.4/30".parse().unwrap()],
                                }),
                                1 => Peer::Pods {
                                    pods: Some(selector(next)),
                                    namespaces: None,
                                },
                                2 => Peer::Pods {
                                    pods: None,
                                    namespaces: Some(selector(next)),
                                },
                                _ => Peer::Pods {
                                    pods: Some(selector(next)),
                                    namespaces: Some(selector(next)),
                                },
                            })
                            .collect();
                        let ports = (0..next(3))
                            .map(|_| Port {
                                protocol: [Protocol::Tcp, Protocol::Udp][next(2) as usize],
                                port: match next(3) {
                                    0 => PortSpec::Named(["http", "dns"][next(2) as usize].into()),
                                    1 => PortSpec::Range {
                                        first: 80,
                                        last: 81,
                                    },
                                    _ => PortSpec::All,
                                },
                            })
                            .collect();
                        Rule { peers, ports }
                    })
                    .collect();
                Some(rules)
            };
            let ingress = rules(&mut next);
            let egress = rules(&mut next);
            m.policies.push(Arc::new(Policy {
                namespace: format!("ns{}", next(5)),
                name: format!("pol{q}"),
                pod_selector: selector(&mut next),
                ingress,
                egress,
            }));
        }
        let local = (0..4)
            .map(|j| LocalPod {
                ip: match next(3) {
                    0 => Ipv4Addr::new(10, 0, 1, next(40) as u8 + 1),
                    _ => Ipv4Addr::new(10, 0, 2, j + 1),
                },
                ip6: None,
                namespace: format!("ns{}", next(5)),
                name: format!("p{}", next(40)),
            })
            .collect();
        (m, local)
    }

    /// A compile that reuses the peer sets of the last agrees with a fresh one,
    /// change after change: pods relabelled, added and deleted, a namespace
    /// relabelled, a policy replaced, the local pods changed.
    #[test]
    fn a_cached_compile_agrees_with_a_fresh_one_as_the_model_changes() {
        let mut reused = 0;
        for seed in 0..60 {
            let (mut model, mut local) = cluster(seed);
            let mut cache = PeerCache::default();
            for step in 0..12u64 {
                match step % 6 {
                    0 | 1 => {
                        // A pod relabelled (or moved to a new namespace's pods).
                        let victim = model.pods.iter().nth((seed + step) as usize % 30).cloned();
                        if let Some(p) = victim {
                            let mut p = (*p).clone();
                            let tier = if p.labels["tier"] == "web" {
                                "db"
                            } else {
                                "web"
                            };
                            p.labels.insert("tier".into(), tier.into());
                            model.pods.remove(&p.namespace, &p.name);
                            model.pods.push(Arc::new(p));
                        }
                    }
                    2 => {
                        let victim = model.pods.iter().nth(step as usize).cloned();
                        if let Some(p) = victim {
                            model.pods.remove(&p.namespace, &p.name);
                        }
                    }
                    3 => {
                        let team = format!("t{}", step % 2);
                        model
                            .namespaces
                            .insert("ns1".into(), labels(&[("team", team)]));
                    }
                    4 => {
                        let p = model.policies.iter().nth(step as usize).cloned();
                        if let Some(p) = p {
                            let mut changed = (*p).clone();
                            changed.ingress = None;
                            model.policies.remove(&p.namespace, &p.name);
                            model.policies.push(Arc::new(changed));
                        }
                    }
                    _ => {
                        local.pop();
                    }
                }
                let cached = compile_cached(&model, &local, &mut cache);
                let fresh = compile(&model, &local);
                assert_eq!(cached.by_ip, fresh.by_ip, "seed {seed} step {step}");
                reused += cache.entries.len();
            }
        }
        assert!(reused > 100, "the cache kept {reused} sets in all");
    }

    #[test]
    fn the_indexed_compiler_agrees_with_the_one_it_replaced() {
        let (mut isolated, mut named) = (0, 0);
        for seed in 0..300 {
            let (model, local) = cluster(seed);
            let (old, old_known) = old_compile(&model, &local);
            isolated += old.by_ip.len();
            named += (old.by_ip.values())
                .flat_map(|r| r.ingress.iter().chain(&r.egress))
                .flat_map(|set| &set.rules)
                .filter(|r| r.ports.as_ref().is_some_and(PortSet::has_named))
                .count();
            let new = compile(&model, &local);
            assert_eq!(new.by_ip, old.by_ip, "seed {seed}");
            assert_eq!(known_pods(&model, &local), old_known, "seed {seed}");
            // Every known pod's rules, in the old compiler's order of pods.
            let (o, n) = (
                OldCompiler::new(&model, &local),
                Compiler::new(&model, &local),
            );
            let known: Vec<KnownPod<'_>> = n.known().collect();
            assert_eq!(known.len(), o.pods().len(), "seed {seed}");
            for (a, b) in o.pods().iter().zip(&known) {
                assert_eq!(
                    (a.namespace.as_str(), a.name.as_str(), Some(a.ip)),
                    (b.namespace, b.name, b.ip)
                );
                assert_eq!(
                    o.rules_for(a),
                    n.rules_for(b),
                    "seed {seed}: {}/{}",
                    a.namespace,
                    a.name
                );
                assert_eq!(
                    n.find(&a.namespace, &a.name).and_then(|p| p.ip),
                    o.pods()
                        .iter()
                        .find(|p| p.namespace == a.namespace && p.name == a.name)
                        .map(|p| p.ip)
                );
                assert_eq!(n.pod_at(a.ip.into()).and_then(|p| p.ip), Some(a.ip));
            }
        }
        // The clusters isolate local pods, with named ports resolved.
        assert!(
            isolated > 200 && named > 50,
            "{isolated} isolated, {named} named"
        );
    }
}
