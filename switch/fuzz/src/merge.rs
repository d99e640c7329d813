//! Policy fails closed: what a node puts in force from a store's read, given
//! the set it had in force before ([`last_good::merge`]), whichever store read it.

use weft_switch::netpol::compile::compile;
use weft_switch::netpol::last_good::{self, Fate, Kind, ObjectId, Unread};
use weft_switch::netpol::model::PolicyModel;

/// Merges a store's `read` and `unread` objects over `last`, the set in force,
/// as the daemon does, checks the set it makes, and returns it (the next set in
/// force).
///
/// Panics if an object that read is not in force as it read; if an object that
/// did not read and that `last` holds does not keep its last good version; if a
/// new one does not isolate its namespace for ingress; if a document that names
/// no object removes anything `last` holds while isolating nothing; if anything
/// is isolated with no object to blame; or if the set fails its checks or
/// compiles into rules that let an isolated pod's ingress open.
pub fn check_merge(read: &PolicyModel, unread: &[Unread], last: &PolicyModel) -> PolicyModel {
    let merged = last_good::merge(read.clone(), unread.to_vec(), last);
    let model = &merged.model;
    assert_eq!(
        merged.judged.len(),
        unread.len(),
        "each unread object judged"
    );
    for (ns, labels) in &read.namespaces {
        assert_eq!(model.namespaces.get(ns), Some(labels), "namespace {ns}");
    }
    for p in &read.pods {
        assert_eq!(
            model.pods.get(&p.namespace, &p.name),
            Some(p),
            "pod {}",
            p.name
        );
    }
    for p in &read.policies {
        let id = p.id();
        assert_eq!(model.policies.get(&p.namespace, &p.name), Some(p), "{id}");
    }
    for j in &merged.judged {
        match (&j.unread.id, &j.fate) {
            (Some(id), Fate::Kept) => {
                assert!(holds(last, id), "{id} kept, but never good");
                assert!(holds(model, id), "{id} kept, but not in force");
                if !holds(read, id) {
                    assert!(
                        same(model, last, id),
                        "{id} kept, but not its last good version"
                    );
                }
            }
            (Some(id), Fate::Isolates(ns)) => {
                assert!(!holds(last, id), "{id} was good once, and must be kept");
                assert_eq!(ns, &id.namespace);
                assert!(model.isolated.namespaces.contains_key(ns), "{ns} isolated");
            }
            (None, Fate::NothingRemoved) => check_nothing_removed(model, last),
            (None, Fate::IsolatesEverything) => {
                assert!(!model.isolated.everywhere.is_empty(), "every pod isolated");
            }
            (id, fate) => panic!("{id:?} judged {fate:?}"),
        }
    }
    for ns in model.isolated.namespaces.keys() {
        let blamed = unread.iter().filter_map(|u| u.id.as_ref());
        assert!(
            blamed.clone().any(|id| &id.namespace == ns),
            "{ns} isolated, and no object of it failed to read"
        );
    }
    let unnamed = (merged.judged.iter()).any(|j| j.fate == Fate::IsolatesEverything);
    assert_eq!(!model.isolated.everywhere.is_empty(), unnamed);
    model
        .check()
        .unwrap_or_else(|e| panic!("the set in force fails its checks: {e}"));
    check_isolated(model);
    merged.model
}

/// Whether `model` holds the object `id`.
fn holds(model: &PolicyModel, id: &ObjectId) -> bool {
    match id.kind {
        Kind::Namespace => model.namespaces.contains_key(&id.name),
        Kind::Pod => model.pods.get(&id.namespace, &id.name).is_some(),
        Kind::NetworkPolicy => model.policies.get(&id.namespace, &id.name).is_some(),
    }
}

/// Whether `a` and `b` hold the same version of object `id` (or both none).
fn same(a: &PolicyModel, b: &PolicyModel, id: &ObjectId) -> bool {
    let (ns, name) = (id.namespace.as_str(), id.name.as_str());
    match id.kind {
        Kind::Namespace => a.namespaces.get(name) == b.namespaces.get(name),
        Kind::Pod => a.pods.get(ns, name) == b.pods.get(ns, name),
        Kind::NetworkPolicy => a.policies.get(ns, name) == b.policies.get(ns, name),
    }
}

/// Every object of `last` is still in `model`.
fn check_nothing_removed(model: &PolicyModel, last: &PolicyModel) {
    for ns in last.namespaces.keys() {
        assert!(model.namespaces.contains_key(ns), "namespace {ns} removed");
    }
    for p in &last.pods {
        assert!(
            model.pods.get(&p.namespace, &p.name).is_some(),
            "pod {}",
            p.name
        );
    }
    for p in &last.policies {
        let id = p.id();
        assert!(
            model.policies.get(&p.namespace, &p.name).is_some(),
            "{id} removed"
        );
    }
}

/// Compiled for all its pods, `model` isolates for ingress every pod of a
/// namespace it isolates, and gives each pod the rules its policies say
/// ([`super::netpol::check_selection`]).
fn check_isolated(model: &PolicyModel) {
    let local = super::netpol::local_pods(model);
    let compiled = compile(model, &local);
    super::netpol::check_selection(model, &local, &compiled);
    for l in &local {
        if model.isolated.reasons(&l.namespace).next().is_some() {
            let rules = compiled.by_ip.get(&l.ip);
            assert!(
                rules.is_some_and(|r| r.ingress.is_some()),
                "pod {} of an isolated namespace open for ingress",
                l.name
            );
        }
    }
}
