//! weft's records in etcd and the view of the cluster they make: the key layout of
//! `deploy/STORE.md`, the JSON of each record, and the checks that keep one bad record
//! from hurting the rest. Pure: no I/O, so every rule is tested in memory.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::control::config::Mode;
use crate::control::keys::PublicKey;
use crate::control::store::screen::Own;
use crate::control::store::{check_node, Claims, NodeEntry, StorePolicy};
use crate::mac::MacAddr;
use crate::netpol::last_good::{Kind, ObjectId, Unread};
use crate::netpol::manifest::{self, ManifestError, Objects, Skipped};
use crate::netpol::model::{Labels, PodObject, Policy, PolicyModel};
use crate::services::model::{BadObject, EndpointSlice, Service, ServiceModel};

pub use crate::control::store::MAX_NAME_LEN;

/// The keys of one prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
}

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// `nodes/<name>`.
    Node(String),
    /// `subnets/<a.b.c.d>-<len>`.
    Subnet(Ipv4Net),
    /// `namespaces/<name>`, `pods/<ns>/<name>`, `networkpolicies/<ns>/<name>`,
    /// `services/<ns>/<name>`, `endpointslices/<ns>/<name>`: a Kubernetes object,
    /// named (kind, namespace, name).
    Object(&'static str, String, String),
    /// Anything else (ignored).
    Other,
}

impl Layout {
    /// The layout under `prefix` (`/weft/v1`).
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// The prefix every key starts with, with its trailing slash.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The key of node `name`'s registration.
    pub fn node(&self, name: &str) -> String {
        format!("{}/nodes/{name}", self.prefix)
    }

    /// The prefix of every subnet lease.
    pub fn subnets(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// The prefix of every node registration.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// The prefixes of the Kubernetes objects' keys: policy's and Services'.
    pub fn objects(&self) -> [String; 5] {
        [
            "endpointslices",
            "namespaces",
            "networkpolicies",
            "pods",
            "services",
        ]
        .map(|kind| format!("{}/{kind}/", self.prefix))
    }

    /// The key of the lease of `subnet`.
    pub fn subnet(&self, subnet: Ipv4Net) -> String {
        format!(
            "{}/subnets/{}-{}",
            self.prefix,
            subnet.network(),
            subnet.prefix_len()
        )
    }

    /// What `key` is.
    pub fn classify(&self, key: &str) -> KeyKind {
        let Some(rest) = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return KeyKind::Other;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["nodes", name] if valid_name(name) => KeyKind::Node((*name).to_owned()),
            ["subnets", s] => parse_subnet_key(s).map_or(KeyKind::Other, KeyKind::Subnet),
            ["namespaces", name] => KeyKind::Object("Namespace", String::new(), (*name).into()),
            ["pods", ns, name] => KeyKind::Object("Pod", (*ns).into(), (*name).into()),
            ["networkpolicies", ns, name] => {
                KeyKind::Object("NetworkPolicy", (*ns).into(), (*name).into())
            }
            ["services", ns, name] => KeyKind::Object("Service", (*ns).into(), (*name).into()),
            ["endpointslices", ns, name] => {
                KeyKind::Object("EndpointSlice", (*ns).into(), (*name).into())
            }
            _ => KeyKind::Other,
        }
    }
}

impl KeyKind {
    /// Whether it is a Service's or an EndpointSlice's key: what makes Services,
    /// and never policy.
    pub fn is_service(&self) -> bool {
        matches!(self, KeyKind::Object("Service" | "EndpointSlice", ..))
    }
}

fn parse_subnet_key(s: &str) -> Option<Ipv4Net> {
    let (addr, len) = s.split_once('-')?;
    let net = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    (net == net.trunc()).then_some(net)
}

/// Whether `name` can be a node's key: a DNS-subdomain-like name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// A node's registration, at `nodes/<name>`, under the node's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// Node name, as in the key.
    pub name: String,
    /// Underlay address.
    pub underlay_ip: Ipv4Addr,
    /// The pod subnet it leases.
    pub pod_subnet: Ipv4Net,
    /// Its VTEP MAC (and sleeve sender id).
    pub vtep_mac: MacAddr,
    /// How it reaches peers.
    pub mode: Mode,
    /// Whether it takes direct-routed traffic from peers on its segment.
    #[serde(default)]
    pub direct_routing: bool,
    /// Its tunnel's UDP port.
    pub port: u16,
    /// What it can receive (heartbeat features).
    #[serde(default)]
    pub features: Vec<String>,
    /// Its static public key (64 hex digits), with encryption on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKey>,
    /// The weftd version that wrote it.
    #[serde(default)]
    pub version: String,
}

/// A subnet's lease, at `subnets/<a.b.c.d>-<len>`, under the subnet lease (which
/// outlives the node's registration by the grace period).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetRecord {
    /// The node holding it.
    pub node: String,
    /// That node's underlay address when it claimed the subnet.
    pub underlay_ip: Ipv4Addr,
}

/// One key's value and revisions, as etcd returned them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key.
    pub create_revision: i64,
    /// The revision that last changed it.
    pub mod_revision: i64,
    /// Its lease, 0 if none.
    pub lease: i64,
}

/// weft's keys as this node last read them: a full list, kept current by the watch.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    /// Every key under the prefix. The store drops the values of the policy
    /// objects' keys once [`PolicyRecords`] has read them (see
    /// [`PolicyRecords::forget_values`]): the objects are held there, once.
    pub keys: BTreeMap<String, Stored>,
    /// The revision the cache is current at.
    pub revision: i64,
}

/// A record that was ignored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// Its key.
    pub key: String,
    /// Its modification revision (to log each bad version once).
    pub mod_revision: i64,
    /// Why.
    pub why: String,
}

/// What a node makes of the cache: the nodes it can use, and the records it cannot.
#[derive(Debug, Clone, Default)]
pub struct NodesView {
    /// Usable nodes, oldest subnet lease first.
    pub nodes: Vec<NodeEntry>,
    /// Ignored node records.
    pub ignored: Vec<Ignored>,
}

/// Reads a node record: JSON, named as its key, with addresses that can work in
/// `cluster` and a tunnel port of `port`.
pub fn parse_node(
    key_name: &str,
    value: &[u8],
    cluster: Ipv4Net,
    port: u16,
) -> Result<NodeRecord, String> {
    let r: NodeRecord =
        serde_json::from_slice(value).map_err(|e| format!("not a node record: {e}"))?;
    if r.name != key_name {
        return Err(format!(
            "names node {:?}, not {key_name:?} as its key",
            r.name
        ));
    }
    check_node(r.pod_subnet, r.underlay_ip, r.vtep_mac, cluster)?;
    if r.mode != Mode::Direct && r.port != port {
        return Err(format!("its tunnel port is {}, this node's {port}", r.port));
    }
    Ok(r)
}

/// The keys of `cache` that start with `prefix`, in order: a range of the ordered
/// map, so reading the nodes does not walk every pod's key.
fn under<'c, 'p>(
    cache: &'c Cache,
    prefix: &'p str,
) -> impl Iterator<Item = (&'c String, &'c Stored)> + 'p
where
    'c: 'p,
{
    use std::ops::Bound;
    (cache
        .keys
        .range::<str, _>((Bound::Included(prefix), Bound::Unbounded)))
    .take_while(move |(k, _)| k.starts_with(prefix))
}

/// A subnet's lease as a node record is checked against it.
struct Lease {
    /// Its holder, `None` if its record does not read.
    owner: Option<String>,
    /// The revision that created it: the older lease keeps what two claim.
    created: i64,
}

/// A node record that reads and holds the lease of its subnet, waiting its turn.
struct Leased<'c> {
    /// The revision that created the lease, then that of the record.
    order: (i64, i64),
    key: &'c String,
    mod_revision: i64,
    entry: NodeEntry,
}

/// The nodes of `cache` as node `me` (this node as it runs, once it joined) sees
/// them. A node record is used when it is well formed, its subnet's lease names
/// it, and nothing this node or an older lease's holder holds (subnet, underlay
/// address, VTEP MAC) is also its own; otherwise it is ignored, with why. The
/// order is the leases': a node that registers again keeps its place by its
/// subnet lease, and a node record does not win a subnet by being older. This
/// node's own record is always used: the daemon routes by what it runs with.
///
/// It reads the `nodes/` and `subnets/` keys only, and checks each node against
/// the older ones in logarithmic time ([`Claims`]).
pub fn nodes(
    layout: &Layout,
    cache: &Cache,
    me: Option<&Own>,
    cluster: Ipv4Net,
    port: u16,
) -> NodesView {
    let (leases, records) = leases_and_records(layout, cache);
    let mut view = NodesView::default();
    let mut leased = Vec::with_capacity(records.len());
    for (key, name, stored) in records {
        let ignore = |why: String| Ignored {
            key: key.clone(),
            mod_revision: stored.mod_revision,
            why,
        };
        let entry = match parse_node(&name, &stored.value, cluster, port) {
            Ok(r) => entry_of(r),
            Err(why) => {
                view.ignored.push(ignore(why));
                continue;
            }
        };
        let s = entry.pod_subnet;
        let mine = me.is_some_and(|m| m.name == name);
        let lease = match leases.get(&s) {
            Some(l) if l.owner.as_deref() == Some(name.as_str()) => l.created,
            _ if mine => i64::MAX,
            Some(Lease {
                owner: Some(owner), ..
            }) => {
                view.ignored.push(ignore(format!(
                    "claims subnet {s}, which is leased to {owner}"
                )));
                continue;
            }
            _ => {
                view.ignored.push(ignore(format!(
                    "claims subnet {s}, which no lease gives it"
                )));
                continue;
            }
        };
        leased.push(Leased {
            order: (lease, stored.create_revision),
            key,
            mod_revision: stored.mod_revision,
            entry,
        });
    }
    leased.sort_by(|a, b| (a.order, a.key).cmp(&(b.order, b.key)));
    let mut claims = Claims::default();
    if let Some(m) = me {
        claims.take(&m.entry());
    }
    for l in leased {
        let mine = me.is_some_and(|m| m.name == l.entry.name);
        match claims.conflict(&l.entry).filter(|_| !mine) {
            Some(why) => view.ignored.push(Ignored {
                key: l.key.clone(),
                mod_revision: l.mod_revision,
                why,
            }),
            None => {
                if !mine {
                    claims.take(&l.entry);
                }
                view.nodes.push(l.entry);
            }
        }
    }
    view
}

/// The subnet leases of `cache`, and its node records (key, name, value), the
/// oldest first.
#[allow(clippy::type_complexity)]
fn leases_and_records<'c>(
    layout: &Layout,
    cache: &'c Cache,
) -> (
    HashMap<Ipv4Net, Lease>,
    Vec<(&'c String, String, &'c Stored)>,
) {
    let mut leases = HashMap::new();
    let mut records = Vec::new();
    let (nodes, subnets) = (layout.nodes(), layout.subnets());
    for (key, stored) in under(cache, &nodes).chain(under(cache, &subnets)) {
        match layout.classify(key) {
            KeyKind::Subnet(net) => {
                let owner = serde_json::from_slice::<SubnetRecord>(&stored.value)
                    .ok()
                    .map(|r| r.node);
                let created = stored.create_revision;
                leases.insert(net, Lease { owner, created });
            }
            KeyKind::Node(name) => records.push((key, name, stored)),
            _ => {}
        }
    }
    records.sort_by_key(|(key, _, s)| (s.create_revision, *key));
    (leases, records)
}

/// The node a record describes.
fn entry_of(r: NodeRecord) -> NodeEntry {
    NodeEntry {
        name: r.name,
        underlay_ip: r.underlay_ip,
        pod_subnet: r.pod_subnet,
        pod_subnet_v6: None,
        vtep_mac: r.vtep_mac,
        mode: Some(r.mode),
        direct_routing: Some(r.direct_routing),
        public_key: r.public_key,
    }
}

/// The subnets leased now, with their holders (`None`: a record that is not JSON,
/// which still holds its subnet).
pub fn leased(layout: &Layout, cache: &Cache) -> BTreeMap<Ipv4Net, Option<String>> {
    under(cache, &layout.subnets())
        .filter_map(|(key, stored)| match layout.classify(key) {
            KeyKind::Subnet(net) => Some((
                net,
                serde_json::from_slice::<SubnetRecord>(&stored.value)
                    .ok()
                    .map(|r| r.node),
            )),
            _ => None,
        })
        .collect()
}

/// Reads one object's record: a Kubernetes object (JSON or YAML) of the kind and
/// name its key says.
pub fn parse_object(
    key: &str,
    (kind, namespace, name): (&str, &str, &str),
    value: &[u8],
) -> Result<Objects, ManifestError> {
    let error = |reason: String| ManifestError {
        file: key.to_owned(),
        document: 0,
        reason,
    };
    let text = std::str::from_utf8(value).map_err(|_| error("not UTF-8".into()))?;
    let mut objects = Objects::default();
    // A record is JSON, mostly: read with a JSON parser then; YAML otherwise.
    type Read = fn(&str, &str, &mut Objects) -> Result<Vec<Skipped>, Vec<ManifestError>>;
    let read: Read = match text.trim_start().starts_with('{') {
        true => manifest::read_json,
        false => manifest::read,
    };
    let skipped = read(key, text, &mut objects).map_err(|mut e| e.swap_remove(0))?;
    if let Some(s) = skipped.first() {
        return Err(error(format!("holds a {}, not a {kind}", s.kind)));
    }
    if let Some(bad) = objects.services.bad.first() {
        return Err(error(bad.why.clone()));
    }
    let (model, services) = (&objects.policy, &objects.services);
    let found: Vec<(&str, &str, &str)> = (model.namespaces.keys())
        .map(|n| ("Namespace", "", n.as_str()))
        .chain((model.pods.iter()).map(|p| ("Pod", &*p.namespace, &*p.name)))
        .chain((model.policies.iter()).map(|p| ("NetworkPolicy", &*p.namespace, &*p.name)))
        .chain((services.services.iter()).map(|s| ("Service", &*s.namespace, &*s.name)))
        .chain((services.slices.iter()).map(|s| ("EndpointSlice", &*s.namespace, &*s.name)))
        .collect();
    match found.as_slice() {
        [one] if *one == (kind, namespace, name) => Ok(objects),
        [(k, ns, n)] => Err(error(format!(
            "holds {k} {}{n}, not the {kind} its key names",
            if ns.is_empty() {
                String::new()
            } else {
                format!("{ns}/")
            }
        ))),
        _ => Err(error(format!("holds {} objects, not one", found.len()))),
    }
}

/// One object, as its record reads.
#[derive(Debug, Clone)]
enum Object {
    Namespace(String, Labels),
    Pod(Arc<PodObject>),
    Policy(Arc<Policy>),
    Service(Arc<Service>),
    Slice(Arc<EndpointSlice>),
}

/// A record that does not read: a policy object (which fails closed), or a
/// Service's (which is left out, and never touches policy).
#[derive(Debug, Clone)]
enum Bad {
    Policy(Unread),
    Service(BadObject),
}

/// A record's reading: of one version of it.
#[derive(Debug, Clone)]
struct Reading {
    mod_revision: i64,
    object: Result<Object, Bad>,
}

/// The Kubernetes objects' records of a cache (policy's and Services'), each
/// read once per version, and the sets they make, kept up to date change by
/// change: a change reads the record it changed and puts its object in its set
/// ([`PolicyModel`]'s namespaces' lists are shared, and so are
/// [`ServiceModel`]'s, so a set costs the time of one namespace to change and of
/// a reference per namespace to hand out). No record is parsed again, no object
/// copied.
#[derive(Debug, Clone, Default)]
pub struct PolicyRecords {
    read: BTreeMap<String, Reading>,
    /// The policy objects of the good readings.
    model: PolicyModel,
    /// The bad policy readings, by key.
    bad: BTreeMap<String, Unread>,
    /// The Services and EndpointSlices of the good readings.
    services: ServiceModel,
    /// The bad Service and EndpointSlice readings, by key.
    bad_services: BTreeMap<String, BadObject>,
}

/// The one object `o` holds (what [`parse_object`] made sure of).
fn the_object(mut o: Objects) -> Option<Object> {
    let (m, s) = (&mut o.policy, &o.services);
    Some(if let Some((name, labels)) = m.namespaces.pop_first() {
        Object::Namespace(name, labels)
    } else if let Some(pod) = m.pods.iter().next() {
        Object::Pod(pod.clone())
    } else if let Some(policy) = m.policies.iter().next() {
        Object::Policy(policy.clone())
    } else if let Some(service) = s.services.iter().next() {
        Object::Service(service.clone())
    } else {
        Object::Slice(s.slices.iter().next()?.clone())
    })
}

/// Reads one record into its object; one that does not read is the object its
/// key names.
fn read_object(key: &str, stored: &Stored, named: (&str, &str, &str)) -> Reading {
    let (kind, ns, name) = named;
    let bad = |error: ManifestError| match kind {
        "Service" | "EndpointSlice" => Bad::Service(BadObject {
            kind: kind.to_owned(),
            id: format!("{ns}/{name}"),
            source: key.to_owned(),
            why: error.reason,
        }),
        _ => Bad::Policy(Unread {
            id: Kind::of(kind).map(|k| ObjectId::new(k, ns, name)),
            error,
        }),
    };
    let object = parse_object(key, named, &stored.value).and_then(|o| {
        the_object(o).ok_or_else(|| ManifestError {
            file: key.to_owned(),
            document: 0,
            reason: "holds no object".into(),
        })
    });
    Reading {
        object: object.map_err(bad),
        mod_revision: stored.mod_revision,
    }
}

impl PolicyRecords {
    /// Takes `key`'s reading out of the set, if it had one.
    fn forget(&mut self, key: &str) {
        let Some(old) = self.read.remove(key) else {
            return;
        };
        match old.object {
            Ok(Object::Namespace(name, _)) => {
                self.model.namespaces.remove(&name);
            }
            Ok(Object::Pod(p)) => {
                self.model.pods.remove(&p.namespace, &p.name);
            }
            Ok(Object::Policy(p)) => {
                self.model.policies.remove(&p.namespace, &p.name);
            }
            Ok(Object::Service(s)) => {
                self.services.services.remove(&s.namespace, &s.name);
            }
            Ok(Object::Slice(s)) => {
                self.services.slices.remove(&s.namespace, &s.name);
            }
            Err(Bad::Policy(_)) => {
                self.bad.remove(key);
            }
            Err(Bad::Service(_)) => {
                self.bad_services.remove(key);
            }
        }
    }

    /// Puts `key`'s reading in the set.
    fn learn(&mut self, key: &str, reading: Reading) {
        self.forget(key);
        match &reading.object {
            Ok(Object::Namespace(name, labels)) => {
                self.model.namespaces.insert(name.clone(), labels.clone());
            }
            Ok(Object::Pod(p)) => self.model.pods.upsert(p.clone()),
            Ok(Object::Policy(p)) => self.model.policies.upsert(p.clone()),
            Ok(Object::Service(s)) => self.services.services.upsert(s.clone()),
            Ok(Object::Slice(s)) => self.services.slices.upsert(s.clone()),
            Err(Bad::Policy(e)) => {
                self.bad.insert(key.to_owned(), e.clone());
            }
            Err(Bad::Service(e)) => {
                self.bad_services.insert(key.to_owned(), e.clone());
            }
        }
        self.read.insert(key.to_owned(), reading);
    }

    /// Takes in the change of `key`: its value now (`None`: deleted). Returns
    /// whether it is an object's key (policy's or a Service's: see
    /// [`KeyKind::is_service`]).
    pub fn update(&mut self, layout: &Layout, key: &str, now: Option<&Stored>) -> bool {
        let KeyKind::Object(kind, ns, name) = layout.classify(key) else {
            return false;
        };
        match now {
            Some(stored) => {
                let reading = read_object(key, stored, (kind, &ns, &name));
                self.learn(key, reading);
            }
            None => self.forget(key),
        }
        true
    }

    /// Reads every object's record of `cache`, keeping the readings of versions read
    /// before and forgetting the records that are gone.
    pub fn sync(&mut self, layout: &Layout, cache: &Cache) {
        let mut seen = std::collections::HashSet::new();
        let prefixes = layout.objects();
        for prefix in &prefixes {
            for (key, stored) in under(cache, prefix) {
                let KeyKind::Object(kind, ns, name) = layout.classify(key) else {
                    continue;
                };
                seen.insert(key.as_str());
                if self.read.get(key).map(|r| r.mod_revision) != Some(stored.mod_revision) {
                    let reading = read_object(key, stored, (kind, &ns, &name));
                    self.learn(key, reading);
                }
            }
        }
        let gone: Vec<String> = (self.read.keys())
            .filter(|k| !seen.contains(k.as_str()))
            .cloned()
            .collect();
        for key in gone {
            self.forget(&key);
        }
    }

    /// The objects as of `revision`: every good record's, and the bad ones with
    /// why, in key order.
    pub fn policy(&self, revision: i64) -> StorePolicy {
        StorePolicy {
            model: self.model.clone(),
            unread: self.bad.values().cloned().collect(),
            revision,
        }
    }

    /// The Services and EndpointSlices: every good record's, and the bad ones
    /// with why, in key order.
    pub fn services(&self) -> ServiceModel {
        ServiceModel {
            bad: self.bad_services.values().cloned().collect(),
            ..self.services.clone()
        }
    }

    /// Empties the values of `cache`'s policy object keys, which the readings
    /// stand for: a cluster's objects are then held once, as objects, and not also
    /// as the bytes they were read from. Their revisions stay, so a later
    /// [`PolicyRecords::sync`] reuses the readings of versions it has.
    pub fn forget_values(layout: &Layout, cache: &mut Cache) {
        use std::ops::Bound;
        for prefix in layout.objects() {
            let range = (Bound::Included(prefix.as_str()), Bound::Unbounded);
            for (key, stored) in cache.keys.range_mut::<str, _>(range) {
                if !key.starts_with(&prefix) {
                    break;
                }
                stored.value = Vec::new();
            }
        }
    }

    /// How many records it holds, good and bad.
    pub fn len(&self) -> usize {
        self.read.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.read.is_empty()
    }
}

/// The policy objects of `cache`: every good record's, and the bad ones with why.
pub fn policy(layout: &Layout, cache: &Cache) -> StorePolicy {
    let mut records = PolicyRecords::default();
    records.sync(layout, cache);
    records.policy(cache.revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "10.244.0.0/16";

    fn layout() -> Layout {
        Layout::new("/weft/v1")
    }

    fn record(name: &str, n: u8) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            underlay_ip: Ipv4Addr::new(10, 250, 0, n),
            pod_subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            vtep_mac: MacAddr::from_name(name),
            mode: Mode::Vxlan,
            direct_routing: false,
            port: 8472,
            features: vec!["echo".into()],
            public_key: None,
            version: "0.1.0".into(),
        }
    }

    struct Builder {
        cache: Cache,
    }

    impl Builder {
        fn new() -> Builder {
            Builder {
                cache: Cache::default(),
            }
        }
        fn put(&mut self, key: String, value: Vec<u8>) -> &mut Builder {
            self.cache.revision += 1;
            let r = self.cache.revision;
            self.cache.keys.insert(
                key,
                Stored {
                    value,
                    create_revision: r,
                    mod_revision: r,
                    lease: 0,
                },
            );
            self
        }
        /// Node `r` with the lease of its subnet.
        fn node(&mut self, r: &NodeRecord) -> &mut Builder {
            let lease = SubnetRecord {
                node: r.name.clone(),
                underlay_ip: r.underlay_ip,
            };
            self.put(
                layout().subnet(r.pod_subnet),
                serde_json::to_vec(&lease).unwrap(),
            );
            self.put(layout().node(&r.name), serde_json::to_vec(r).unwrap())
        }
        /// The view of node `me`, running as `record(me, n)` says.
        fn view(&self, me: &str, n: u8) -> NodesView {
            let r = record(me, n);
            let own = Own {
                name: r.name,
                subnet: r.pod_subnet,
                underlay: r.underlay_ip,
                vtep_mac: r.vtep_mac,
            };
            nodes(
                &layout(),
                &self.cache,
                Some(&own),
                CLUSTER.parse().unwrap(),
                8472,
            )
        }
    }

    #[test]
    fn keys_round_trip_and_odd_keys_are_other() {
        let l = layout();
        let net: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(l.subnet(net), "/weft/v1/subnets/10.244.3.0-24");
        assert_eq!(l.classify(&l.subnet(net)), KeyKind::Subnet(net));
        assert_eq!(l.classify(&l.node("h1")), KeyKind::Node("h1".into()));
        assert_eq!(
            l.classify("/weft/v1/pods/x/a"),
            KeyKind::Object("Pod", "x".into(), "a".into())
        );
        for odd in [
            "/weft/v1/subnets/10.244.3.1-24",
            "/weft/v1/subnets/10.244.3.0",
            "/weft/v1/nodes/a/b",
            "/weft/v1/nodes/",
            "/weft/v2/nodes/a",
            "/weft/v1x/nodes/a",
            "/weft/v1/pods/a",
        ] {
            assert_eq!(l.classify(odd), KeyKind::Other, "{odd}");
        }
    }

    #[test]
    fn records_are_camel_case_json_and_tolerate_new_fields() {
        let r = record("h1", 1);
        let json = serde_json::to_string(&r).unwrap();
        for field in [
            "\"underlayIp\"",
            "\"podSubnet\"",
            "\"vtepMac\"",
            "\"directRouting\"",
        ] {
            assert!(json.contains(field), "{json}");
        }
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["someFutureField"] = serde_json::json!(7);
        let back = parse_node(
            "h1",
            v.to_string().as_bytes(),
            CLUSTER.parse().unwrap(),
            8472,
        );
        assert_eq!(back.unwrap(), r);
    }

    #[test]
    fn good_nodes_are_used_oldest_first() {
        let mut b = Builder::new();
        b.node(&record("h2", 2)).node(&record("h1", 1));
        let v = b.view("h1", 1);
        let names: Vec<&str> = v.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["h2", "h1"]);
        assert!(v.ignored.is_empty());
        assert_eq!(v.nodes[0].mode, Some(Mode::Vxlan));
    }

    #[test]
    fn a_bad_record_is_ignored_with_its_key_and_the_rest_stays() {
        let mut b = Builder::new();
        b.node(&record("h1", 1)).node(&record("h2", 2));
        b.put(
            layout().node("h3"),
            b"{\"name\": \"h3\", \"underlayIp\": 12}".to_vec(),
        );
        let mut wrong_name = record("h4", 4);
        wrong_name.name = "h9".into();
        b.put(
            layout().node("h4"),
            serde_json::to_vec(&wrong_name).unwrap(),
        );
        let mut outside = record("h5", 5);
        outside.pod_subnet = "10.99.5.0/24".parse().unwrap();
        b.put(layout().node("h5"), serde_json::to_vec(&outside).unwrap());
        let mut port = record("h6", 6);
        port.port = 4789;
        b.node(&port);
        let v = b.view("h1", 1);
        assert_eq!(v.nodes.len(), 2);
        let why: Vec<(&str, &str)> = v
            .ignored
            .iter()
            .map(|i| (i.key.as_str(), i.why.as_str()))
            .collect();
        assert_eq!(why.len(), 4, "{why:?}");
        assert!(why[0].0.ends_with("/nodes/h3") && why[0].1.contains("not a node record"));
        assert!(why[1].1.contains("not \"h4\""), "{why:?}");
        assert!(why[2].1.contains("no subnet of the cluster"), "{why:?}");
        assert!(why[3].1.contains("port is 4789"), "{why:?}");
    }

    /// A node's public key travels in its record; a malformed one makes the record
    /// bad, not the node keyless.
    #[test]
    fn public_keys_come_with_the_record() {
        let mut b = Builder::new();
        let key: PublicKey = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
            .parse()
            .unwrap();
        let mut keyed = record("h2", 2);
        keyed.public_key = Some(key);
        b.node(&record("h1", 1)).node(&keyed);
        let mut text = serde_json::to_value(record("h3", 3)).unwrap();
        text["publicKey"] = "not hex".into();
        b.put(layout().node("h3"), serde_json::to_vec(&text).unwrap());
        let v = b.view("h1", 1);
        let h2 = v.nodes.iter().find(|n| n.name == "h2").unwrap();
        assert_eq!(h2.public_key, Some(key));
        assert_eq!(
            v.nodes.iter().find(|n| n.name == "h1").unwrap().public_key,
            None
        );
        assert_eq!(v.ignored.len(), 1, "{:?}", v.ignored);
        assert!(
            v.ignored[0].why.contains("not a node record"),
            "{:?}",
            v.ignored
        );
    }

    #[test]
    fn a_node_must_hold_the_lease_of_its_subnet_and_not_what_another_holds() {
        let mut b = Builder::new();
        b.node(&record("h1", 1)).node(&record("h2", 2));
        // h3 publishes h2's subnet, which h2 leases.
        let mut thief = record("h3", 3);
        thief.pod_subnet = "10.244.2.0/24".parse().unwrap();
        b.put(layout().node("h3"), serde_json::to_vec(&thief).unwrap());
        // h4 publishes a subnet nobody leased.
        b.put(
            layout().node("h4"),
            serde_json::to_vec(&record("h4", 4)).unwrap(),
        );
        // h5 has its own lease but h1's underlay address.
        let mut twin = record("h5", 5);
        twin.underlay_ip = Ipv4Addr::new(10, 250, 0, 1);
        b.node(&twin);
        let v = b.view("h1", 1);
        assert_eq!(
            v.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
            ["h1", "h2"]
        );
        let why: Vec<&str> = v.ignored.iter().map(|i| i.why.as_str()).collect();
        assert!(why[0].contains("leased to h2"), "{why:?}");
        assert!(why[1].contains("no lease gives it"), "{why:?}");
        assert!(why[2].contains("another node's"), "{why:?}");
    }

    /// A record whose underlay address no node can have is ignored by its key,
    /// with the address and why; the good records beside it are used.
    #[test]
    fn records_with_unusable_underlay_addresses_are_ignored() {
        let mut b = Builder::new();
        b.node(&record("h1", 1)).node(&record("h2", 2));
        let bad: [(&str, u8, [u8; 4]); 6] = [
            ("lo", 3, [127, 0, 0, 1]),
            ("mc", 4, [224, 0, 0, 5]),
            ("ll", 5, [169, 254, 1, 1]),
            ("bc", 6, [255, 255, 255, 255]),
            ("zero", 7, [0, 0, 0, 0]),
            ("e", 8, [240, 0, 0, 1]),
        ];
        for (name, n, ip) in bad {
            let mut r = record(name, n);
            r.underlay_ip = Ipv4Addr::from(ip);
            b.node(&r);
        }
        let v = b.view("h1", 1);
        let names: Vec<&str> = v.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["h1", "h2"]);
        assert_eq!(v.ignored.len(), bad.len(), "{:?}", v.ignored);
        for (i, (name, _, ip)) in v.ignored.iter().zip(bad) {
            assert!(i.key.ends_with(&format!("/nodes/{name}")), "{i:?}");
            let says = format!("underlay address {} is", Ipv4Addr::from(ip));
            assert!(
                i.why.contains(&says) && i.why.contains("must be unicast"),
                "{i:?}"
            );
        }
    }

    /// The lease record of `r`'s subnet.
    fn lease_of(r: &NodeRecord) -> Vec<u8> {
        let lease = SubnetRecord {
            node: r.name.clone(),
            underlay_ip: r.underlay_ip,
        };
        serde_json::to_vec(&lease).unwrap()
    }

    /// Of two nodes whose leases overlap, the older lease keeps its subnet,
    /// whichever node record is older: a node that registered again (a newer
    /// record) keeps its subnet against a newer lease whose holder's record is
    /// older. With the leases the other way round, the other node wins.
    #[test]
    fn the_older_lease_wins_not_the_older_node_record() {
        let h2 = record("h2", 2);
        let mut wide = record("wide", 9);
        wide.pod_subnet = "10.244.2.0/23".parse().unwrap();
        let json = |r: &NodeRecord| serde_json::to_vec(r).unwrap();
        for h2_first in [true, false] {
            let mut b = Builder::new();
            b.node(&record("h1", 1));
            let leases = [(&h2, lease_of(&h2)), (&wide, lease_of(&wide))];
            let [first, second] = if h2_first {
                leases
            } else {
                let [a, b] = leases;
                [b, a]
            };
            b.put(layout().subnet(first.0.pod_subnet), first.1);
            // wide's record is older than h2's, in both orders.
            b.put(layout().node("wide"), json(&wide));
            b.put(layout().subnet(second.0.pod_subnet), second.1);
            b.put(layout().node("h2"), json(&h2));
            let v = b.view("h1", 1);
            let names: Vec<&str> = v.nodes.iter().map(|n| n.name.as_str()).collect();
            let (winner, loser, held) = match h2_first {
                true => ("h2", "wide", "h2's 10.244.2.0/24"),
                false => ("wide", "h2", "wide's 10.244.2.0/23"),
            };
            assert_eq!(names, ["h1", winner]);
            assert_eq!(v.ignored.len(), 1, "{:?}", v.ignored);
            assert!(v.ignored[0].key.ends_with(&format!("/nodes/{loser}")));
            assert!(v.ignored[0].why.contains(held), "{:?}", v.ignored);
        }
    }

    /// Records older than this node's, with older leases, that claim its subnet
    /// or its underlay address are ignored, and hold nothing: a node they overlap
    /// that does not overlap this one stays.
    #[test]
    fn older_records_claiming_what_this_node_holds_are_ignored_and_hold_nothing() {
        let mut wide = record("wide", 9);
        wide.pod_subnet = "10.244.0.0/22".parse().unwrap();
        let mut twin = record("twin", 5);
        twin.underlay_ip = record("h1", 1).underlay_ip;
        let mut b = Builder::new();
        b.node(&wide)
            .node(&twin)
            .node(&record("h1", 1))
            .node(&record("h2", 2));
        let v = b.view("h1", 1);
        let names: Vec<&str> = v.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["h1", "h2"]);
        let why: Vec<(&str, &str)> = (v.ignored.iter())
            .map(|i| (i.key.as_str(), i.why.as_str()))
            .collect();
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(
            why[0].0.ends_with("/nodes/wide") && why[0].1.contains("overlaps h1's 10.244.1.0/24")
        );
        assert!(
            why[1].0.ends_with("/nodes/twin") && why[1].1.contains("10.250.0.1 is another node's")
        );
    }

    /// The readings kept up to date one change at a time make the set a fresh
    /// read of the whole cache makes, in the same order; a record is read again
    /// only when its version changes.
    #[test]
    fn policy_records_follow_changes_as_a_fresh_read_would() {
        let pod = |ns: &str, name: &str, app: &str| {
            format!(
                r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}", "namespace": "{ns}", "labels": {{"app": "{app}"}}}}, "status": {{"podIP": "10.244.1.9"}}}}"#
            )
            .into_bytes()
        };
        let ns = br#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}"#;
        let pol = b"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";
        let mut b = Builder::new();
        b.put("/weft/v1/pods/x/b".into(), pod("x", "b", "one"));
        b.put("/weft/v1/namespaces/x".into(), ns.to_vec());
        b.put("/weft/v1/pods/x/a".into(), pod("x", "a", "one"));
        b.node(&record("h1", 1));
        let mut records = PolicyRecords::default();
        records.sync(&layout(), &b.cache);
        assert_eq!(records.len(), 3);
        let changes: Vec<(String, Option<Vec<u8>>)> = vec![
            ("/weft/v1/pods/x/a".into(), Some(pod("x", "a", "two"))),
            ("/weft/v1/networkpolicies/x/deny".into(), Some(pol.to_vec())),
            ("/weft/v1/pods/x/b".into(), None),
            ("/weft/v1/pods/x/c".into(), Some(b"{not json".to_vec())),
            ("/weft/v1/nodes/h9".into(), Some(b"{}".to_vec())),
        ];
        for (key, value) in changes {
            match value {
                Some(v) => {
                    b.put(key.clone(), v);
                }
                None => {
                    b.cache.keys.remove(&key);
                }
            }
            let is_object = records.update(&layout(), &key, b.cache.keys.get(&key));
            assert_eq!(is_object, !key.contains("/nodes/"), "{key}");
            let fresh = policy(&layout(), &b.cache);
            let kept = records.policy(b.cache.revision);
            assert_eq!(kept.model, fresh.model, "after {key}");
            assert_eq!(kept.unread, fresh.unread, "after {key}");
        }
        let p = records.policy(b.cache.revision);
        assert_eq!(p.model.pods.len(), 1);
        assert_eq!(p.model.pods.iter().next().unwrap().labels["app"], "two");
        assert_eq!(p.model.policies.len(), 1);
        assert_eq!(p.unread.len(), 1);
        // A sync keeps the readings of unchanged versions, even with the values
        // forgotten: the same objects.
        let before = records.policy(1);
        PolicyRecords::forget_values(&layout(), &mut b.cache);
        assert!(b.cache.keys["/weft/v1/pods/x/a"].value.is_empty());
        assert!(!b.cache.keys["/weft/v1/nodes/h1"].value.is_empty());
        records.sync(&layout(), &b.cache);
        let after = records.policy(1);
        let first = |p: &StorePolicy| p.model.pods.iter().next().unwrap().clone();
        assert!(Arc::ptr_eq(&first(&before), &first(&after)));
        assert_eq!(after.model, before.model);
    }

    /// Services and EndpointSlices come one a key, like policy's objects, and
    /// follow changes as a fresh read would. A hostile or broken record (garbage,
    /// a Pod under a Service's key, a port list beyond the bound, a slice for
    /// another namespace's Service) is named by its key and left out; the good
    /// ones stay, and none of it reaches policy.
    #[test]
    fn services_come_one_a_key_and_a_bad_one_is_left_out_by_its_key() {
        let svc = br#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "x"}, "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}}"#;
        let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-a, namespace: x, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: [10.244.1.5]}]\nports: [{name: http, port: 8080}]\n";
        let pod = br#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "x"}}"#;
        let ports: Vec<String> = (0..=crate::services::read::MAX_PORTS)
            .map(|i| format!(r#"{{"name": "p{i}", "port": {}}}"#, i + 1))
            .collect();
        let huge = format!(
            r#"{{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "huge", "namespace": "x"}}, "spec": {{"clusterIP": "10.96.0.11", "ports": [{}]}}}}"#,
            ports.join(",")
        );
        let mut b = Builder::new();
        b.put("/weft/v1/services/x/web".into(), svc.to_vec());
        b.put(
            "/weft/v1/endpointslices/x/web-a".into(),
            slice.as_bytes().to_vec(),
        );
        b.put("/weft/v1/services/x/junk".into(), b"{not json".to_vec());
        b.put("/weft/v1/services/x/pod".into(), pod.to_vec());
        b.put("/weft/v1/services/x/huge".into(), huge.into_bytes());
        b.put(
            "/weft/v1/endpointslices/y/web-a".into(),
            slice.as_bytes().to_vec(),
        );
        let mut records = PolicyRecords::default();
        records.sync(&layout(), &b.cache);
        let m = records.services();
        assert_eq!(
            m.services.iter().map(|s| s.id()).collect::<Vec<_>>(),
            ["x/web"]
        );
        assert_eq!(
            m.slices.iter().map(|s| s.id()).collect::<Vec<_>>(),
            ["x/web-a"]
        );
        let bad: Vec<String> = m.bad.iter().map(ToString::to_string).collect();
        assert_eq!(bad.len(), 4, "{bad:#?}");
        assert!(bad[0].starts_with("EndpointSlice y/web-a (/weft/v1/endpointslices/y/web-a): holds EndpointSlice x/web-a"), "{bad:?}");
        assert!(
            bad[1].starts_with("Service x/huge (/weft/v1/services/x/huge): 101 ports"),
            "{bad:?}"
        );
        assert!(
            bad[2].starts_with("Service x/junk (/weft/v1/services/x/junk): not JSON"),
            "{bad:?}"
        );
        assert!(
            bad[3].contains("holds Pod x/web, not the Service its key names"),
            "{bad:?}"
        );
        let p = records.policy(b.cache.revision);
        assert!(
            p.unread.is_empty() && p.model.pods.is_empty(),
            "{:?}",
            p.unread
        );
        // Changes, one key at a time, make what a fresh read makes.
        let changes: Vec<(&str, Option<Vec<u8>>)> = vec![
            ("/weft/v1/services/x/junk", Some(svc.to_vec())),
            ("/weft/v1/endpointslices/x/web-a", None),
            ("/weft/v1/services/x/pod", None),
        ];
        for (key, value) in changes {
            match value {
                Some(v) => {
                    b.put(key.into(), v);
                }
                None => {
                    b.cache.keys.remove(key);
                }
            }
            assert!(records.update(&layout(), key, b.cache.keys.get(key)));
            assert!(layout().classify(key).is_service());
            let mut fresh = PolicyRecords::default();
            fresh.sync(&layout(), &b.cache);
            assert_eq!(records.services(), fresh.services(), "after {key}");
        }
        let m = records.services();
        assert!(m.slices.is_empty());
        assert_eq!(m.bad.len(), 3, "{:?}", m.bad);
    }

    /// Reading the nodes walks only the node and subnet keys: thousands of pods
    /// and policies beside them change nothing.
    #[test]
    fn nodes_are_read_from_their_own_keys() {
        let mut b = Builder::new();
        b.node(&record("h1", 1)).node(&record("h2", 2));
        for i in 0..50 {
            b.put(format!("/weft/v1/pods/x/p{i}"), b"{not json".to_vec());
            b.put(format!("/weft/v1/nodesx/{i}"), b"{}".to_vec());
        }
        b.put("/weft/v1/nodes/h3".into(), b"{}".to_vec());
        let v = b.view("h1", 1);
        assert_eq!(v.nodes.len(), 2);
        assert_eq!(v.ignored.len(), 1, "{:?}", v.ignored);
        assert_eq!(leased(&layout(), &b.cache).len(), 2);
    }

    #[test]
    fn policy_objects_come_one_a_key_and_a_bad_one_is_the_object_its_key_names() {
        let mut b = Builder::new();
        let ns = r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "a"}}}"#;
        b.put("/weft/v1/namespaces/x".into(), ns.as_bytes().to_vec());
        let pol = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";
        b.put(
            "/weft/v1/networkpolicies/x/deny".into(),
            pol.as_bytes().to_vec(),
        );
        b.put(
            "/weft/v1/networkpolicies/x/other".into(),
            pol.as_bytes().to_vec(),
        );
        b.put("/weft/v1/pods/x/a".into(), b"{not json".to_vec());
        b.put("/weft/v1/namespaces/y".into(), pol.as_bytes().to_vec());
        let p = policy(&layout(), &b.cache);
        assert_eq!(p.model.namespaces.len(), 1);
        assert_eq!(p.model.policies.len(), 1);
        assert_eq!(p.revision, b.cache.revision);
        let bad: Vec<String> = p.unread.iter().map(|u| u.error.to_string()).collect();
        assert_eq!(bad.len(), 3, "{bad:?}");
        // Each is named by its key, whatever its value says: what the daemon keeps
        // the last good version of, or isolates the namespace of.
        let named: Vec<String> = (p.unread.iter())
            .map(|u| u.id.as_ref().expect("a name").to_string())
            .collect();
        assert_eq!(
            named,
            ["Namespace y", "NetworkPolicy x/other", "Pod x/a"],
            "{bad:?}"
        );
        assert!(
            bad.iter()
                .any(|b| b.contains("/networkpolicies/x/other") && b.contains("x/deny")),
            "{bad:?}"
        );
        assert!(bad.iter().any(|b| b.contains("/pods/x/a")), "{bad:?}");
        assert!(
            bad.iter()
                .any(|b| b.contains("/namespaces/y") && b.contains("not the Namespace")),
            "{bad:?}"
        );
    }
}
