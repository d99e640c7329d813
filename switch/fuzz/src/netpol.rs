//! NetworkPolicy manifests: read from YAML, then held to what a read model
//! promises, saved and read back, read again as JSON, and compiled.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use weft_switch::netpol::compile::{
    compile, compile_cached, CompiledPolicy, LocalPod, PeerCache, RuleSet,
};
use weft_switch::netpol::manifest;
use weft_switch::netpol::model::PolicyModel;

/// Reads `data` as a YAML manifest file; if it reads, checks the model.
///
/// Panics if reading panics, or if a model that reads fails its own checks
/// ([`PolicyModel::check`]), changes when saved and read back (the view a node
/// keeps in its state directory), reads differently from the same documents
/// as JSON (a store's records), or compiles into rules that disagree with the
/// policies that select each pod, or with a compile that reuses cached peer
/// sets.
pub fn netpol_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut model = PolicyModel::default();
    match manifest::read("fuzz.yaml", text, &mut model) {
        Ok(_) => {}
        Err(errors) => {
            assert!(!errors.is_empty(), "a failed read names its errors");
            return;
        }
    }
    model
        .check()
        .unwrap_or_else(|e| panic!("a model read from YAML fails its checks: {e}"));
    check_saved(&model);
    check_as_json(text, &model);
    // A set that names an object twice is refused whole before it compiles.
    if manifest::check_unique(&model).is_ok() {
        check_compile(&model);
    }
}

/// The model, saved as JSON and read back, is the same and still checks.
fn check_saved(model: &PolicyModel) {
    let saved = serde_json::to_string(model).expect("a model serialises");
    let back: PolicyModel = serde_json::from_str(&saved).expect("a saved model reads back");
    assert_eq!(&back, model, "the saved model reads back different");
}

/// Every document of `text`, written as JSON, reads through
/// [`manifest::read_json`] into the same model: a store's record and a
/// policy file are held to the same rules.
fn check_as_json(text: &str, model: &PolicyModel) {
    use serde::Deserialize as _;
    let mut again = PolicyModel::default();
    for doc in yaml_serde::Deserializer::from_str(text) {
        let Ok(value) = yaml_serde::Value::deserialize(doc) else {
            return;
        };
        // YAML a JSON document cannot say (keys that are not strings, tags).
        let Some(json) = as_json(&value) else {
            return;
        };
        if let Err(e) = manifest::read_json("fuzz.json", &json, &mut again) {
            panic!("a document that reads as YAML does not as JSON: {e:?}\n{json}");
        }
    }
    assert_eq!(
        &again, model,
        "YAML and JSON read the documents differently"
    );
}

/// `value` as JSON text, if JSON can say it as it is. A null inside the
/// document is left out of the comparison: YAML reads it as the field's
/// default (`spec:` with nothing after it), JSON refuses it where the field is
/// a struct (a known difference, see `README.md`).
fn as_json(value: &yaml_serde::Value) -> Option<String> {
    use yaml_serde::Value;
    let inner = |v: &Value| !v.is_null() && as_json(v).is_some();
    let plain = match value {
        Value::Tagged(_) => false,
        Value::Mapping(m) => m.iter().all(|(k, v)| k.is_string() && inner(v)),
        Value::Sequence(s) => s.iter().all(inner),
        Value::Number(n) => !n.is_f64() || n.as_f64().is_some_and(f64::is_finite),
        _ => true,
    };
    plain.then(|| serde_json::to_string(value).ok()).flatten()
}

/// The model's pods with an address, as if all were attached here (one per
/// address), and one attachment the model does not hold.
pub(crate) fn local_pods(model: &PolicyModel) -> Vec<LocalPod> {
    let mut seen = HashSet::new();
    let mut local: Vec<LocalPod> = model
        .pods
        .iter()
        .filter_map(|p| Some((p, p.ip?)))
        .filter(|(_, ip)| seen.insert(*ip))
        .map(|(p, ip)| LocalPod {
            ip,
            ip6: None,
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        })
        .collect();
    let stranger = Ipv4Addr::new(203, 0, 113, 77);
    if seen.insert(stranger) {
        local.push(LocalPod {
            ip: stranger,
            ip6: None,
            namespace: "default".into(),
            name: "not-in-the-model".into(),
        });
    }
    local
}

/// Compiles the model for its pods and checks each pod's rules against the
/// policies that select it; a compile with cached peer sets, and one after a
/// change, agree with a fresh one.
fn check_compile(model: &PolicyModel) {
    let local = local_pods(model);
    let fresh = compile(model, &local);
    check_selection(model, &local, &fresh);
    let mut cache = PeerCache::default();
    for _ in 0..2 {
        let cached = compile_cached(model, &local, &mut cache);
        assert_eq!(cached.by_ip, fresh.by_ip, "a cached compile differs");
    }
    // One policy fewer: the cache must not serve the peer sets of the old set.
    let Some(first) = model.policies.iter().next().cloned() else {
        return;
    };
    let mut changed = model.clone();
    changed.policies.remove(&first.namespace, &first.name);
    let cached = compile_cached(&changed, &local, &mut cache);
    assert_eq!(cached.by_ip, compile(&changed, &local).by_ip);
    let back = compile_cached(model, &local, &mut cache);
    assert_eq!(back.by_ip, fresh.by_ip, "a cached compile after a change");
}

/// Each local pod is isolated in a direction exactly when a policy of its
/// namespace that selects it has that direction (or, for ingress, the model
/// isolates its namespace: [`PolicyModel::isolated`]), and every rule it gets
/// comes from one of those policies. A pod the model does not hold, when it
/// lists every pod, is isolated both ways with no rule.
pub(crate) fn check_selection(model: &PolicyModel, local: &[LocalPod], compiled: &CompiledPolicy) {
    for l in local {
        let known = model.pod(&l.namespace, &l.name);
        if model.lists_every_pod && known.is_none() {
            let rules = compiled
                .by_ip
                .get(&l.ip)
                .expect("an unlisted pod is isolated");
            let closed = |s: &Option<_>| s.as_ref().is_some_and(|s: &RuleSet| s.rules.is_empty());
            assert!(
                closed(&rules.ingress) && closed(&rules.egress),
                "pod {}",
                l.name
            );
            continue;
        }
        let labels = known.map(|p| p.labels.clone()).unwrap_or_default();
        let selecting: Vec<_> = model
            .policies
            .in_namespace(&l.namespace)
            .iter()
            .filter(|p| p.pod_selector.matches(&labels))
            .collect();
        let isolations = model.isolated.reasons(&l.namespace).count();
        let rules = compiled.by_ip.get(&l.ip);
        let ingress = selecting.iter().any(|p| p.ingress.is_some()) || isolations > 0;
        let egress = selecting.iter().any(|p| p.egress.is_some());
        assert_eq!(rules.is_some(), ingress || egress, "pod {}", l.name);
        let Some(rules) = rules else {
            continue;
        };
        assert_eq!(rules.ingress.is_some(), ingress, "pod {} ingress", l.name);
        assert_eq!(rules.egress.is_some(), egress, "pod {} egress", l.name);
        let ids: Vec<String> = selecting.iter().map(|p| p.id()).collect();
        let named: Vec<&str> = rules.selected_by.iter().map(|(id, _, _)| &**id).collect();
        assert_eq!(named.len(), ids.len() + isolations, "pod {}", l.name);
        assert_eq!(
            named[..ids.len()],
            ids,
            "pod {}: the policies that select it",
            l.name
        );
        for (set, dir) in [(&rules.ingress, true), (&rules.egress, false)] {
            for r in set.iter().flat_map(|s| &s.rules) {
                let p = selecting
                    .iter()
                    .find(|p| *p.id() == *r.origin.policy)
                    .expect("a rule's policy selects the pod");
                let list = if dir { &p.ingress } else { &p.egress };
                let count = list.as_ref().map_or(0, Vec::len);
                assert!(r.origin.rule < count, "rule {:?} of {count}", r.origin);
            }
        }
    }
}
