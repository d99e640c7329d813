//! weft's records in etcd, as a watch hands them over.
//!
//! An input is text, one change a line: `put <key> <value>` or `del <key>`. A
//! key that does not start with `/` goes under the layout's prefix
//! (`/weft/v1/`). Each line is a new revision of the store.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use weft_switch::control::store::etcd::records::{
    self, Cache, KeyKind, Layout, PolicyRecords, Stored,
};
use weft_switch::control::store::screen::Own;
use weft_switch::control::store::NodeEntry;
use weft_switch::netpol::model::PolicyModel;

/// The prefix the records go under.
const PREFIX: &str = "/weft/v1";

/// Applies every change of `data` to a [`Cache`] and to [`PolicyRecords`]
/// kept change by change, checking after each.
///
/// Panics if anything panics, if a node record that parses fails
/// `check_node` or does not read back the same once written, if the view of
/// the nodes uses two nodes that collide, a node its subnet's lease does not
/// name, or loses a record (each is used or ignored), if the policy
/// objects kept change by change differ from a fresh read of the cache, or if
/// the set a node would put in force from them does not fail closed.
pub fn etcd_records(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let layout = Layout::new(PREFIX);
    let mut cache = Cache::default();
    let mut kept = PolicyRecords::default();
    let mut in_force = weft_switch::netpol::last_good::nothing_good_yet();
    for line in text.lines() {
        let Some((key, value)) = change(line) else {
            continue;
        };
        cache.revision += 1;
        let now = value.map(|v| Stored {
            value: v.as_bytes().to_vec(),
            create_revision: (cache.keys.get(&key)).map_or(cache.revision, |s| s.create_revision),
            mod_revision: cache.revision,
            lease: 0,
        });
        match &now {
            Some(stored) => cache.keys.insert(key.clone(), stored.clone()),
            None => cache.keys.remove(&key),
        };
        let is_object = kept.update(&layout, &key, now.as_ref());
        assert_eq!(
            is_object,
            matches!(layout.classify(&key), KeyKind::Object(..))
        );
        if let (KeyKind::Node(name), Some(stored)) = (layout.classify(&key), &now) {
            check_node_record(&name, &stored.value);
        }
        check_nodes(&layout, &cache);
        in_force = check_policy(&layout, &cache, &kept, &in_force);
    }
}

/// The key and value (none: deleted) of one line.
fn change(line: &str) -> Option<(String, Option<&str>)> {
    let (op, rest) = line.split_once(' ')?;
    let (key, value) = match op {
        "put" => {
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            (key, Some(value))
        }
        "del" => (rest, None),
        _ => return None,
    };
    let key = match key.starts_with('/') {
        true => key.to_owned(),
        false => format!("{PREFIX}/{key}"),
    };
    Some((key, value))
}

/// A node record that parses passes `check_node`, and reads back the same
/// once written out again.
fn check_node_record(name: &str, value: &[u8]) {
    let (cluster, port) = (super::cluster(), super::PORT);
    let Ok(record) = records::parse_node(name, value, cluster, port) else {
        return;
    };
    weft_switch::control::store::check_node(
        record.pod_subnet,
        record.underlay_ip,
        record.vtep_mac,
        cluster,
    )
    .expect("a node record that parses passes check_node");
    let written = serde_json::to_vec(&record).expect("a record serialises");
    let again = records::parse_node(name, &written, cluster, port);
    assert_eq!(again.as_ref(), Ok(&record), "a written record reads back");
}

/// The view of the nodes, read as this node ([`super::own`]) and as a reader
/// that is no node: every node record used or ignored, the used ones in their
/// subnet leases' order (the oldest lease first), leased to them, and no two of them colliding, nor one with this node.
fn check_nodes(layout: &Layout, cache: &Cache) {
    let own = super::own();
    check_nodes_as(layout, cache, Some(&own));
    check_nodes_as(layout, cache, None);
}

fn check_nodes_as(layout: &Layout, cache: &Cache, own: Option<&Own>) {
    let (cluster, port) = (super::cluster(), super::PORT);
    let view = records::nodes(layout, cache, own, cluster, port);
    let node_keys: BTreeMap<String, &Stored> = (cache.keys.iter())
        .filter_map(|(k, s)| match layout.classify(k) {
            KeyKind::Node(name) => Some((name, s)),
            _ => None,
        })
        .collect();
    assert_eq!(view.nodes.len() + view.ignored.len(), node_keys.len());
    let leases = records::leased(layout, cache);
    let lease_created: BTreeMap<Ipv4Net, i64> = (cache.keys.iter())
        .filter_map(|(k, s)| match layout.classify(k) {
            KeyKind::Subnet(net) => Some((net, s.create_revision)),
            _ => None,
        })
        .collect();
    // The leases' order, then the records': this node's own record, when no
    // lease names it, comes last.
    let order: Vec<(i64, i64)> = (view.nodes.iter())
        .map(|n| {
            let holds = leases.get(&n.pod_subnet).cloned().flatten().as_deref() == Some(&*n.name);
            let lease = match holds {
                true => lease_created[&n.pod_subnet],
                false => i64::MAX,
            };
            (lease, node_keys[&n.name].create_revision)
        })
        .collect();
    assert!(order.is_sorted(), "nodes in their leases' order");
    let mine = |n: &&NodeEntry| own.is_some_and(|o| o.name == n.name);
    for n in view.nodes.iter().filter(|n| !mine(n)) {
        let holder = leases.get(&n.pod_subnet).cloned().flatten();
        assert_eq!(holder.as_deref(), Some(&*n.name), "{}'s lease", n.name);
    }
    super::nodes::check_usable(&view.nodes, own);
}

/// The Services and EndpointSlices kept change by change are those a fresh
/// read makes, and compile into a table that passes its check. Returns how
/// many records they are, good and bad.
fn check_services(layout: &Layout, cache: &Cache, kept: &PolicyRecords) -> usize {
    let now = kept.services();
    let mut fresh = PolicyRecords::default();
    fresh.sync(layout, cache);
    assert_eq!(
        now,
        fresh.services(),
        "Services change by change vs. a fresh read"
    );
    super::check_service_table(&now);
    now.services.len() + now.slices.len() + now.bad.len()
}

/// The policy objects kept change by change are those a fresh read of the
/// cache makes, one reading a record, and they pass their checks; forgetting
/// the records' values, as the store does, changes nothing. Merged over
/// `in_force`, the set in force before, it fails closed
/// ([`super::merge::check_merge`]), and makes the next.
fn check_policy(
    layout: &Layout,
    cache: &Cache,
    kept: &PolicyRecords,
    in_force: &PolicyModel,
) -> PolicyModel {
    let fresh = records::policy(layout, cache);
    let now = kept.policy(cache.revision);
    assert_eq!(now.model, fresh.model, "change by change vs. a fresh read");
    assert_eq!(
        now.unread, fresh.unread,
        "change by change vs. a fresh read"
    );
    let objects = (cache.keys.keys())
        .filter(|k| matches!(layout.classify(k), KeyKind::Object(..)))
        .count();
    assert_eq!(kept.len(), objects, "one reading a record");
    let m = &now.model;
    let good = m.namespaces.len() + m.pods.len() + m.policies.len();
    let services = check_services(layout, cache, kept);
    assert_eq!(
        good + now.unread.len() + services,
        objects,
        "each record good or bad"
    );
    m.check()
        .unwrap_or_else(|e| panic!("the etcd store's model fails its checks: {e}"));
    let mut forgotten = cache.clone();
    PolicyRecords::forget_values(layout, &mut forgotten);
    let mut again = kept.clone();
    again.sync(layout, &forgotten);
    assert_eq!(again.policy(cache.revision).model, now.model);
    super::merge::check_merge(m, &now.unread, in_force)
}
