//! The Kubernetes store's cache, fed watcher events of hostile objects.
//!
//! An input is text, one event a line: `<kind> <event> [<json>]`, where kind
//! is `node`, `pod`, `namespace`, `policy`, `service` or `slice`, and event is
//! `init`, `initapply`, `initdone`, `apply` or `delete` (the last four but
//! `initdone` take the object's JSON). A line whose object does not decode is
//! skipped, as the watcher refuses it.

use std::collections::{BTreeMap, BTreeSet};

use kube::runtime::watcher::Event;
use kube::Resource;
use serde::de::DeserializeOwned;
use weft_switch::control::store::kube::cache::{read_pod, Cache, Change, KINDS};
use weft_switch::control::store::kube::nodes::pod_cidr;
use weft_switch::control::store::kube::objects::SlimPod;
use weft_switch::control::store::screen::screen;
use weft_switch::netpol::last_good::{self, Kind};
use weft_switch::netpol::model::PolicyModel;

/// Feeds every event of `data` to a [`Cache`], checking it after each one.
///
/// Panics if anything panics, if the cache's counts or synced flags differ
/// from a plain model of the watches (sets of keys), if an event changed a
/// view (the nodes, or the policy objects) without moving the revision the
/// store remakes that view on, or if a view breaks what it promises: nodes
/// that do not collide, pods sorted, one pod per address, each inside its
/// node's podCIDR, policies that pass their checks.
pub fn kube_objects(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut cache = Cache::default();
    let mut model = Watches::default();
    let mut in_force = last_good::nothing_good_yet();
    for line in text.lines() {
        let Some((change, key)) = change(line) else {
            continue;
        };
        let before = views(&cache);
        let services = (cache.service_model(), cache.services_revision);
        let revisions = (cache.nodes_revision, cache.policy_revision);
        let kind = kind_of(&change);
        model.apply(kind, &change, key);
        cache.apply(change);
        let after = views(&cache);
        if after.0 != before.0 {
            assert_ne!(cache.nodes_revision, revisions.0, "{line}: nodes changed");
        }
        if after.1 != before.1 {
            assert_ne!(cache.policy_revision, revisions.1, "{line}: policy changed");
        }
        let now = cache.service_model();
        if now != services.0 {
            assert_ne!(
                cache.services_revision, services.1,
                "{line}: Services changed"
            );
        }
        let held = cache.services.len() + cache.slices.len();
        assert_eq!(now.services.len() + now.slices.len() + now.bad.len(), held);
        super::check_service_table(&now);
        model.check(&cache);
        in_force = check_policy(&cache, &in_force);
        super::nodes::check_usable(&after.0.nodes, None);
        // The daemon screens every store's nodes against itself as it runs.
        let own = super::own();
        let (kept, _) = screen(after.0.nodes.clone(), super::cluster(), Some(&own));
        super::nodes::check_usable(&kept, Some(&own));
        let listed = after.0.nodes.len() + after.0.skipped.len();
        assert_eq!(listed, cache.nodes.len(), "every Node is used or skipped");
    }
}

type Views = (
    weft_switch::control::store::kube::nodes::NodesView,
    (
        weft_switch::netpol::model::PolicyModel,
        Vec<weft_switch::netpol::last_good::Unread>,
    ),
);

/// The two views the store makes of the cache.
fn views(cache: &Cache) -> Views {
    (
        cache.nodes_view(super::ME, super::cluster(), super::PORT),
        cache.policy_model(),
    )
}

/// A watcher event `event` with `json` as its object, and the object's key.
fn event<K: DeserializeOwned + Resource>(event: &str, json: &str) -> Option<(Event<K>, Key)> {
    let with = |wrap: fn(K) -> Event<K>| {
        let k = serde_json::from_str::<K>(json).ok()?;
        let m = k.meta();
        let key = m
            .name
            .clone()
            .map(|n| (m.namespace.clone().unwrap_or_default(), n));
        Some((wrap(k), key))
    };
    match event {
        "init" => Some((Event::Init, None)),
        "initdone" => Some((Event::InitDone, None)),
        "initapply" => with(Event::InitApply),
        "apply" => with(Event::Apply),
        "delete" => with(Event::Delete),
        _ => None,
    }
}

/// An object's key, if it has a name.
type Key = Option<(String, String)>;

/// The change one line stands for, and its object's key.
fn change(line: &str) -> Option<(Change, Held)> {
    let mut parts = line.splitn(3, ' ');
    let (kind, ev, json) = (parts.next()?, parts.next()?, parts.next().unwrap_or(""));
    Some(match kind {
        "node" => event(ev, json).map(|(e, k)| (Change::Node(e), held(k, true)))?,
        "pod" => {
            let finished = serde_json::from_str::<SlimPod>(json)
                .ok()
                .is_some_and(|p| read_pod(p).is_none());
            event(ev, json).map(|(e, k)| (Change::Pod(e), held(k, !finished)))?
        }
        "namespace" => event(ev, json).map(|(e, k)| (Change::Namespace(e), held(k, true)))?,
        "policy" => event(ev, json).map(|(e, k)| (Change::Policy(e), held(k, true)))?,
        "service" => event(ev, json).map(|(e, k)| (Change::Service(e), held(k, true)))?,
        "slice" => event(ev, json).map(|(e, k)| (Change::Slice(e), held(k, true)))?,
        _ => return None,
    })
}

/// What the cache should hold for an object: its key, and whether it holds
/// it (not a pod that finished).
type Held = (Key, bool);

fn held(key: Key, kept: bool) -> Held {
    (key, kept)
}

/// The index in [`KINDS`] of a change's kind.
fn kind_of(change: &Change) -> usize {
    match change {
        Change::Node(_) => 0,
        Change::Pod(_) => 1,
        Change::Namespace(_) => 2,
        Change::Policy(_) => 3,
        Change::Service(_) => 4,
        Change::Slice(_) => 5,
    }
}

/// One watch as the plain model sees it.
#[derive(Default)]
struct Watch {
    live: BTreeSet<(String, String)>,
    relist: Option<BTreeSet<(String, String)>>,
    synced: bool,
}

/// The six watches, as sets of keys.
#[derive(Default)]
struct Watches([Watch; 6]);

impl Watches {
    fn apply(&mut self, kind: usize, change: &Change, (key, kept): Held) {
        let w = &mut self.0[kind];
        match phase(change) {
            Phase::Init => w.relist = Some(BTreeSet::new()),
            Phase::InitDone => {
                w.live = w.relist.take().unwrap_or_default();
                w.synced = true;
            }
            Phase::InitApply => {
                if let (Some(key), Some(relist), true) = (key, w.relist.as_mut(), kept) {
                    relist.insert(key);
                }
            }
            Phase::Apply => {
                if let Some(key) = key {
                    if kept {
                        w.live.insert(key);
                    } else {
                        w.live.remove(&key);
                    }
                }
            }
            Phase::Delete => {
                if let Some(key) = key {
                    w.live.remove(&key);
                }
            }
        }
    }

    /// The cache's counts and synced flags are the model's.
    fn check(&self, cache: &Cache) {
        let counts: Vec<(&str, usize)> = (KINDS.iter().copied())
            .zip(self.0.iter().map(|w| w.live.len()))
            .collect();
        assert_eq!(cache.counts(), counts, "the cache's counts");
        let unsynced: Vec<&str> = (KINDS.iter().copied())
            .zip(&self.0)
            .filter(|(_, w)| !w.synced)
            .map(|(k, _)| k)
            .collect();
        assert_eq!(cache.unsynced(), unsynced, "the kinds not listed yet");
        assert_eq!(cache.synced(), self.0[..4].iter().all(|w| w.synced));
    }
}

enum Phase {
    Init,
    InitApply,
    InitDone,
    Apply,
    Delete,
}

fn phase(change: &Change) -> Phase {
    fn of<K>(e: &Event<K>) -> Phase {
        match e {
            Event::Init => Phase::Init,
            Event::InitApply(_) => Phase::InitApply,
            Event::InitDone => Phase::InitDone,
            Event::Apply(_) => Phase::Apply,
            Event::Delete(_) => Phase::Delete,
        }
    }
    match change {
        Change::Node(e) => of(e),
        Change::Pod(e) => of(e),
        Change::Namespace(e) => of(e),
        Change::Policy(e) => of(e),
        Change::Service(e) => of(e),
        Change::Slice(e) => of(e),
    }
}

/// The policy view: it passes its checks, its pods are sorted, named once,
/// an address each at most and inside their node's podCIDR; every policy that
/// did not read is named, and fails closed once merged over `in_force`, the set
/// in force before ([`super::merge::check_merge`]), which returns the next.
fn check_policy(cache: &Cache, in_force: &PolicyModel) -> PolicyModel {
    let (model, unread) = cache.policy_model();
    model
        .check()
        .unwrap_or_else(|e| panic!("the Kubernetes store's model fails its checks: {e}"));
    let pods: Vec<_> = model.pods.iter().collect();
    for pair in pods.windows(2) {
        let key = |p: &weft_switch::netpol::model::PodObject| (p.namespace.clone(), p.name.clone());
        assert!(key(pair[0]) < key(pair[1]), "pods out of order or twice");
    }
    let mut addresses = BTreeSet::new();
    let ranges: BTreeMap<String, ipnet::Ipv4Net> = cache
        .nodes
        .values()
        .filter_map(|n| Some((n.0.metadata.name.clone()?, pod_cidr(&n.0)?.parse().ok()?)))
        .collect();
    for p in &pods {
        let Some(ip) = p.ip else { continue };
        assert!(addresses.insert(ip), "two pods hold {ip}");
        let key = (p.namespace.clone(), p.name.clone());
        let node = cache.pods.get(&key).and_then(|h| h.node.clone());
        if let Some(range) = node.and_then(|n| ranges.get(&n)) {
            assert!(
                range.contains(&ip),
                "pod {} at {ip} outside {range}",
                p.name
            );
        }
    }
    assert_eq!(unread.len(), cache.policies.len() - model.policies.len());
    for u in &unread {
        let id = u.id.as_ref().expect("an unread NetworkPolicy is named");
        assert_eq!(id.kind, Kind::NetworkPolicy);
        let key = (id.namespace.clone(), id.name.clone());
        assert!(cache.policies.get(&key).is_some(), "{id} is held");
        assert!(
            model.policies.get(&id.namespace, &id.name).is_none(),
            "{id} read"
        );
    }
    assert!(model.lists_every_pod, "the API server lists every pod");
    super::merge::check_merge(&model, &unread, in_force)
}
