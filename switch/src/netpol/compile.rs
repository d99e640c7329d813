//! Policies compiled into per-pod rule sets, so the datapath evaluates no selector:
//! a rule is an address set (a sorted list of pod addresses, and IP blocks) and a
//! port set, and every rule remembers the policy and rule it came from, for
//! `weft policy explain`.
//!
//! Semantics are `networking.k8s.io/v1`'s. A pod selected by any policy with a
//! direction is isolated in that direction, and what it may do there is the union of
//! the rules of all such policies. Named ports are resolved here: for ingress on the
//! selected pod's own container ports, for egress on each destination pod's.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::model::{Labels, NamedPort, Peer, Policy, PolicyModel, Port, PortSpec, Protocol, Rule};

/// Where a verdict came from: a policy and one of its rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The policy, `namespace/name`.
    pub policy: Arc<str>,
    /// The rule's index in its direction's list.
    pub rule: usize,
}

/// A set of addresses: pods', and blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrSet {
    /// Pod addresses, sorted.
    ips: Vec<u32>,
    /// Blocks with their exceptions.
    blocks: Vec<Block>,
}

/// A network as (address, netmask).
type Net = (u32, u32);

/// An IP block: a network, and networks within it left out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    net: Net,
    except: Vec<Net>,
}

impl AddrSet {
    /// Whether `ip` is in the set.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        let within = |&(net, mask): &Net| ip & mask == net;
        self.ips.binary_search(&ip).is_ok()
            || self
                .blocks
                .iter()
                .any(|b| within(&b.net) && !b.except.iter().any(within))
    }

    fn net(n: &ipnet::Ipv4Net) -> Net {
        (u32::from(n.network()), u32::from(n.netmask()))
    }

    /// Bytes it holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.ips.capacity() * 4
            + self
                .blocks
                .iter()
                .map(|b| 16 + b.except.capacity() * 8)
                .sum::<usize>()
    }
}

/// The ports a rule allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet {
    /// (protocol number, first port, last port).
    ranges: Vec<(u8, u16, u16)>,
    /// Named ports, resolved: (destination address, protocol number, port), sorted.
    named: Vec<(u32, u8, u16)>,
}

impl PortSet {
    fn allows(&self, dst: Ipv4Addr, proto: u8, port: Option<u16>) -> bool {
        let Some(port) = port else {
            return false;
        };
        self.ranges
            .iter()
            .any(|&(p, lo, hi)| p == proto && (lo..=hi).contains(&port))
            || self
                .named
                .binary_search(&(u32::from(dst), proto, port))
                .is_ok()
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
    pub fn allows(
        &self,
        peer: Ipv4Addr,
        dst: Ipv4Addr,
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

/// A pod as the compiler sees it: where it is, what it is called, its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPod {
    /// Its namespace.
    pub namespace: String,
    /// Its name (empty for an attachment with no name).
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Its named container ports.
    pub ports: Vec<NamedPort>,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// A pod attached on this node: its address, and what its runtime called it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalPod {
    /// Its address.
    pub ip: Ipv4Addr,
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

/// Policies resolved against every known pod, ready to give any pod its rules.
#[derive(Debug)]
pub struct Compiler<'m> {
    model: &'m PolicyModel,
    pods: Vec<KnownPod>,
    /// The indices in `pods` of each namespace's pods.
    by_namespace: std::collections::BTreeMap<String, Vec<usize>>,
    /// The labels of each namespace that has pods.
    namespace_labels: std::collections::BTreeMap<String, Labels>,
    peers: Vec<PolicyPeers>,
    ids: Vec<Arc<str>>,
}

impl<'m> Compiler<'m> {
    /// Resolves `model` with the pods attached on this node, `local`. A local pod
    /// takes its labels and ports from the store's pod of the same namespace and name,
    /// and its address from its attachment; a store pod with an address elsewhere is
    /// a remote pod.
    pub fn new(model: &'m PolicyModel, local: &[LocalPod]) -> Compiler<'m> {
        let mut pods: Vec<KnownPod> = local
            .iter()
            .map(|l| {
                let object = model.pod(&l.namespace, &l.name);
                KnownPod {
                    namespace: l.namespace.clone(),
                    name: l.name.clone(),
                    labels: object.map(|o| o.labels.clone()).unwrap_or_default(),
                    ports: object.map(|o| o.ports.clone()).unwrap_or_default(),
                    ip: l.ip,
                }
            })
            .collect();
        let local_ips: std::collections::HashSet<Ipv4Addr> = local.iter().map(|l| l.ip).collect();
        for o in &model.pods {
            let is_local = local
                .iter()
                .any(|l| l.namespace == o.namespace && l.name == o.name);
            match o.ip {
                Some(ip) if !is_local && !local_ips.contains(&ip) => pods.push(KnownPod {
                    namespace: o.namespace.clone(),
                    name: o.name.clone(),
                    labels: o.labels.clone(),
                    ports: o.ports.clone(),
                    ip,
                }),
                _ => {}
            }
        }
        let mut by_namespace: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (i, p) in pods.iter().enumerate() {
            by_namespace.entry(p.namespace.clone()).or_default().push(i);
        }
        let namespace_labels = by_namespace
            .keys()
            .map(|ns| (ns.clone(), model.namespace_labels(ns)))
            .collect();
        let mut c = Compiler {
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

    /// Every pod the compiler knows of.
    pub fn pods(&self) -> &[KnownPod] {
        &self.pods
    }

    /// The known pod at `ip`.
    pub fn pod_at(&self, ip: Ipv4Addr) -> Option<&KnownPod> {
        self.pods.iter().find(|p| p.ip == ip)
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

    /// The addresses `peers` (of policy `p`) stand for; `None` for everyone.
    fn peer_set(&self, p: &Policy, peers: &[Peer]) -> Option<AddrSet> {
        if peers.is_empty() {
            return None;
        }
        let mut set = AddrSet::default();
        for peer in peers {
            match peer {
                Peer::Block(b) => set.blocks.push(Block {
                    net: AddrSet::net(&b.cidr),
                    except: b.except.iter().map(AddrSet::net).collect(),
                }),
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
                        set.ips.extend(
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
        set.ips.sort_unstable();
        set.ips.dedup();
        Some(set)
    }

    /// Whether policy `p` selects `pod`.
    fn selects(p: &Policy, pod: &KnownPod) -> bool {
        p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels)
    }

    /// The rules of `pod`.
    pub fn rules_for(&self, pod: &KnownPod) -> PodRules {
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
                    let targets: Vec<&KnownPod> = self
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

    /// The port set of `ports`, named ones resolved on `targets`; `None` for any port.
    fn ports(&self, ports: &[Port], targets: &[&KnownPod]) -> Option<PortSet> {
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
                                set.named.push((u32::from(t.ip), proto, np.port));
                            }
                        }
                    }
                }
            }
        }
        set.named.sort_unstable();
        set.named.dedup();
        Some(set)
    }
}

/// Every local pod's rules, and what the compiler saw.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicy {
    /// The rules of each local pod that some policy selects, by address.
    pub by_ip: HashMap<Ipv4Addr, Arc<PodRules>>,
    /// How many policies, pods and rules went in.
    pub policies: usize,
    /// Pods known (local and remote).
    pub pods: usize,
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
                        bytes += p.ranges.capacity() * 6 + p.named.capacity() * 8;
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

/// Compiles `model` for the pods attached on this node.
pub fn compile(model: &PolicyModel, local: &[LocalPod]) -> CompiledPolicy {
    let c = Compiler::new(model, local);
    let by_ip = c
        .pods()
        .iter()
        .take(local.len())
        .map(|pod| (pod.ip, c.rules_for(pod)))
        .filter(|(_, r)| r.isolated())
        .map(|(ip, r)| (ip, Arc::new(r)))
        .collect();
    CompiledPolicy {
        by_ip,
        policies: model.policies.len(),
        pods: c.pods().len(),
    }
}

/// A protocol and port as `explain` shows them.
pub fn describe(proto: u8, port: Option<u16>) -> String {
    match (Protocol::of_number(proto), port) {
        (Some(p), Some(port)) => format!("{p} {port}"),
        (Some(p), None) => p.to_string(),
        (None, _) => format!("protocol {proto}"),
    }
}
