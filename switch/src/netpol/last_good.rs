//! Policy fails closed: what is put in force when some objects of a source do not
//! read. Every store hands over the objects that read and, apart, those that do
//! not ([`Unread`]), named where what did not read still names one. [`merge`]
//! then makes the set to enforce from them and the set in force before it:
//!
//! - an object that does not read and that the set in force holds (a known
//!   object) keeps that version, its last good one, while every other change
//!   applies;
//! - a new object that does not read isolates every pod of its namespace for
//!   ingress until it reads: its author meant to say something of those pods,
//!   and what is not known is not allowed;
//! - a document that names no object (not YAML, say) could be any object: while
//!   there is one, nothing of the set in force is removed; and if the set in
//!   force has nothing the source no longer shows (so the document must be new),
//!   every pod is isolated for ingress until it reads.
//!
//! The set in force across a restart is the one saved in the state directory
//! (`crate::control::saved`); with none and no good read, every pod is isolated
//! for ingress ([`nothing_good_yet`]). Everything that reads keeps the exact
//! semantics of Kubernetes: an isolation is one more policy with no ingress rule.

use std::fmt;

use super::manifest::ManifestError;
use super::model::PolicyModel;

/// Why every pod is isolated while no good policy has been read.
pub const NO_GOOD_POLICY: &str = "no good policy yet";

/// The kinds of object policy is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` Namespace.
    Namespace,
    /// `v1` Pod.
    Pod,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
}

impl Kind {
    /// The kind called `name` in a manifest's `kind`, if policy uses it.
    pub fn of(name: &str) -> Option<Kind> {
        match name {
            "Namespace" => Some(Kind::Namespace),
            "Pod" => Some(Kind::Pod),
            "NetworkPolicy" => Some(Kind::NetworkPolicy),
            _ => None,
        }
    }
}

/// An object by kind, namespace and name: what makes two versions one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace; a Namespace's is itself.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ObjectId {
    /// The object of `kind` named `name` in `namespace` (ignored for a Namespace).
    pub fn new(kind: Kind, namespace: &str, name: &str) -> ObjectId {
        let namespace = match kind {
            Kind::Namespace => name,
            Kind::Pod | Kind::NetworkPolicy => namespace,
        };
        ObjectId {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Namespace => write!(f, "Namespace {}", self.name),
            Kind::Pod => write!(f, "Pod {}/{}", self.namespace, self.name),
            Kind::NetworkPolicy => write!(f, "NetworkPolicy {}/{}", self.namespace, self.name),
        }
    }
}

/// An object a source holds but could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unread {
    /// The object, if what did not read still names one.
    pub id: Option<ObjectId>,
    /// Where it is, and why it did not read.
    pub error: ManifestError,
}

/// What became of an object that did not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Its last good version stays in force.
    Kept,
    /// It is new: every pod of this namespace is isolated for ingress.
    Isolates(String),
    /// It names no object: nothing of the set in force was removed.
    NothingRemoved,
    /// It names no object, and the set in force has none it could be: every pod
    /// is isolated for ingress.
    IsolatesEverything,
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fate::Kept => f.write_str("its last good version stays in force"),
            Fate::Isolates(ns) => write!(
                f,
                "a new object: every pod of namespace {ns} is isolated for ingress until it reads"
            ),
            Fate::NothingRemoved => f.write_str(
                "it names no object: nothing of the last good set is removed until it reads",
            ),
            Fate::IsolatesEverything => f.write_str(
                "it names no object the last good set holds: every pod is isolated for ingress until it reads",
            ),
        }
    }
}

/// An object that did not read, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The object.
    pub unread: Unread,
    /// What became of it.
    pub fate: Fate,
}

impl fmt::Display for Judged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.unread.error, self.fate)
    }
}

/// The set to enforce, and what became of each object that did not read.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    /// The set.
    pub model: PolicyModel,
    /// Each object that did not read, in the order given.
    pub judged: Vec<Judged>,
}

/// The set to enforce after a source read the objects of `read` and failed to read
/// those of `unread`, with `last` in force until now (see the module's rules).
/// An object of `unread` is not also in `read` (a source that holds two
/// documents of one object counts it as not read); `read`'s own isolations are
/// dropped, and made again from `unread`.
pub fn merge(mut read: PolicyModel, unread: Vec<Unread>, last: &PolicyModel) -> Merged {
    read.isolated = Default::default();
    let mut judged = Vec::with_capacity(unread.len());
    let mut unnamed = Vec::new();
    for unread in unread {
        match &unread.id {
            Some(id) => {
                let fate = settle(&mut read, id, last);
                judged.push(Judged { unread, fate });
            }
            None => unnamed.push(unread),
        }
    }
    if !unnamed.is_empty() {
        let fate = match restore_missing(&mut read, last) {
            0 => Fate::IsolatesEverything,
            _ => Fate::NothingRemoved,
        };
        for unread in unnamed {
            if fate == Fate::IsolatesEverything {
                let why = format!("{} names no object", location(&unread.error));
                read.isolated.everywhere.push(why);
            }
            judged.push(Judged {
                unread,
                fate: fate.clone(),
            });
        }
    }
    Merged {
        model: read,
        judged,
    }
}

/// Where an error is, without why: `file document N`.
fn location(e: &ManifestError) -> String {
    format!("{} document {}", e.file, e.document)
}

/// Puts in `model` the version `last` holds of object `id`, which did not read; or,
/// for a new object, isolates its namespace.
fn settle(model: &mut PolicyModel, id: &ObjectId, last: &PolicyModel) -> Fate {
    let (ns, name) = (id.namespace.as_str(), id.name.as_str());
    let kept = match id.kind {
        Kind::Namespace => last.namespaces.get(name).map(|labels| {
            (model.namespaces)
                .entry(name.to_owned())
                .or_insert_with(|| labels.clone());
        }),
        Kind::Pod => last.pods.get(ns, name).map(|p| {
            if model.pods.get(ns, name).is_none() {
                model.pods.push(p.clone());
            }
        }),
        Kind::NetworkPolicy => last.policies.get(ns, name).map(|p| {
            if model.policies.get(ns, name).is_none() {
                model.policies.push(p.clone());
            }
        }),
    };
    if kept.is_some() {
        return Fate::Kept;
    }
    let why = format!("{id} does not read");
    model
        .isolated
        .namespaces
        .entry(ns.to_owned())
        .or_default()
        .push(why);
    Fate::Isolates(ns.to_owned())
}

/// Puts back in `model` every object of `last` it does not hold, and returns how
/// many there were.
fn restore_missing(model: &mut PolicyModel, last: &PolicyModel) -> usize {
    let mut restored = 0;
    for (name, labels) in &last.namespaces {
        if !model.namespaces.contains_key(name) {
            model.namespaces.insert(name.clone(), labels.clone());
            restored += 1;
        }
    }
    for p in &last.pods {
        if model.pods.get(&p.namespace, &p.name).is_none() {
            model.pods.push(p.clone());
            restored += 1;
        }
    }
    for p in &last.policies {
        if model.policies.get(&p.namespace, &p.name).is_none() {
            model.policies.push(p.clone());
            restored += 1;
        }
    }
    restored
}

/// The set in force before any good one was read, on a node that holds none from
/// an earlier run: every pod isolated for ingress.
pub fn nothing_good_yet() -> PolicyModel {
    let mut model = PolicyModel::default();
    model.isolated.everywhere.push(NO_GOOD_POLICY.to_owned());
    model
}

/// One line on how `model` is enforced, with the objects `judged` that did not
/// read: for `weft status` and `weft policy status`.
pub fn state(model: &PolicyModel, judged: &[Judged]) -> String {
    let iso = &model.isolated;
    if !iso.everywhere.is_empty() {
        return format!(
            "isolating: every pod, for ingress ({})",
            iso.everywhere.join("; ")
        );
    }
    if !iso.namespaces.is_empty() {
        let names: Vec<&str> = iso.namespaces.keys().map(String::as_str).collect();
        return format!(
            "isolating: the pods of namespace {}, for ingress (new objects that do not read)",
            names.join(", ")
        );
    }
    match judged.len() {
        0 => "enforcing".to_owned(),
        1 => "enforcing, with the last good version of what does not read (1 object)".to_owned(),
        n => format!("enforcing, with the last good version of what does not read ({n} objects)"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::netpol::compile::{compile, LocalPod};
    use crate::netpol::manifest;

    /// Namespaces x and y; pods x/a (10.0.0.1, app=db), x/b (10.0.0.2, app=web)
    /// and y/a (10.0.0.3, app=web).
    const OBJECTS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: db}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web}}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: y, labels: {app: web}}
status: {podIP: 10.0.0.3}
";

    /// x/db: x/a takes TCP 80 from app=web of its namespace, nothing else.
    const DB: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 80}]
";

    fn read(text: &str) -> PolicyModel {
        let mut m = PolicyModel::default();
        manifest::read("t.yaml", text, &mut m).unwrap_or_else(|e| panic!("{e:?}"));
        m
    }

    fn unread(id: Option<ObjectId>) -> Unread {
        Unread {
            id,
            error: ManifestError {
                file: "t.yaml".into(),
                document: 5,
                reason: "broken".into(),
            },
        }
    }

    fn policy_id(ns: &str, name: &str) -> Option<ObjectId> {
        Some(ObjectId::new(Kind::NetworkPolicy, ns, name))
    }

    fn local() -> Vec<LocalPod> {
        [("x", "a", 1), ("x", "b", 2), ("y", "a", 3)]
            .iter()
            .map(|&(ns, name, n)| LocalPod {
                ip: Ipv4Addr::new(10, 0, 0, n),
                ip6: None,
                namespace: ns.into(),
                name: name.into(),
            })
            .collect()
    }

    /// Whether `from` reaches `to` (pods of [`local`], by last octet) on TCP 80.
    fn reaches(model: &PolicyModel, from: u8, to: u8) -> bool {
        let compiled = compile(model, &local());
        let (src, dst) = (Ipv4Addr::new(10, 0, 0, from), Ipv4Addr::new(10, 0, 0, to));
        let open = |rules: Option<&crate::netpol::compile::RuleSet>, peer| {
            rules.is_none_or(|r| r.allows(peer, dst, 6, Some(80)).is_some())
        };
        let out = compiled.by_ip.get(&src);
        let inn = compiled.by_ip.get(&dst);
        open(out.and_then(|r| r.egress.as_ref()), dst)
            && open(inn.and_then(|r| r.ingress.as_ref()), src)
    }

    #[test]
    fn a_known_policy_that_stops_reading_keeps_its_last_good_version_while_the_rest_changes() {
        let last = read(&format!("{OBJECTS}---{DB}"));
        assert!(reaches(&last, 2, 1) && !reaches(&last, 3, 1));
        // The policy breaks, and y/a is relabelled meanwhile: the relabelling
        // applies, the policy stays as it was.
        let now = read(&OBJECTS.replace(
            "{name: a, namespace: y, labels: {app: web}}",
            "{name: a, namespace: y, labels: {app: api}}",
        ));
        let m = merge(now, vec![unread(policy_id("x", "db"))], &last);
        assert_eq!(m.judged[0].fate, Fate::Kept);
        assert_eq!(
            m.model.policies.get("x", "db"),
            last.policies.get("x", "db")
        );
        assert_eq!(m.model.pod("y", "a").unwrap().labels["app"], "api");
        assert!(m.model.isolated.is_empty());
        assert!(reaches(&m.model, 2, 1) && !reaches(&m.model, 3, 1));
        assert!(m.judged[0]
            .to_string()
            .ends_with("its last good version stays in force"));
        assert!(state(&m.model, &m.judged).starts_with("enforcing, with the last good version"));
        // Kept again from the set that kept it: the last good version holds on.
        let again = merge(read(OBJECTS), vec![unread(policy_id("x", "db"))], &m.model);
        assert_eq!(
            again.model.policies.get("x", "db"),
            last.policies.get("x", "db")
        );
        // Read again, the new version replaces it; deleted, it goes.
        let fixed = read(&format!(
            "{OBJECTS}---{}",
            DB.replace("port: 80", "port: 81")
        ));
        let m = merge(fixed, Vec::new(), &again.model);
        assert!(!reaches(&m.model, 2, 1));
        assert_eq!(state(&m.model, &m.judged), "enforcing");
        let gone = merge(read(OBJECTS), Vec::new(), &m.model);
        assert!(gone.model.policies.is_empty() && reaches(&gone.model, 3, 1));
    }

    #[test]
    fn a_new_object_that_does_not_read_isolates_its_namespace_for_ingress_only() {
        let last = read(OBJECTS);
        let m = merge(read(OBJECTS), vec![unread(policy_id("x", "new"))], &last);
        assert_eq!(m.judged[0].fate, Fate::Isolates("x".into()));
        // Nothing comes into x, from x or from y; y is open; x's own egress is not
        // isolated.
        assert!(!reaches(&m.model, 2, 1) && !reaches(&m.model, 3, 1) && !reaches(&m.model, 3, 2));
        assert!(reaches(&m.model, 1, 3) && reaches(&m.model, 2, 3));
        let compiled = compile(&m.model, &local());
        let xa = &compiled.by_ip[&Ipv4Addr::new(10, 0, 0, 1)];
        assert!(xa.egress.is_none());
        assert_eq!(&*xa.selected_by[0].0, "(NetworkPolicy x/new does not read)");
        assert!(!compiled.by_ip.contains_key(&Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(
            state(&m.model, &m.judged),
            "isolating: the pods of namespace x, for ingress (new objects that do not read)"
        );
        // What the policies that read allow still comes in: the union.
        let with_db = read(&format!("{OBJECTS}---{DB}"));
        let m2 = merge(with_db, vec![unread(policy_id("x", "new"))], &last);
        assert!(reaches(&m2.model, 2, 1) && !reaches(&m2.model, 3, 1) && !reaches(&m2.model, 3, 2));
        // Fixed, the isolation goes with the read that shows it.
        let fixed = merge(read(OBJECTS), Vec::new(), &m.model);
        assert!(fixed.model.isolated.is_empty() && reaches(&fixed.model, 3, 1));
    }

    #[test]
    fn new_and_known_pods_and_namespaces_follow_the_same_rules() {
        let last = read(OBJECTS);
        let now = read(
            &OBJECTS
                .replace("app: db", "app: cache")
                .replace("team: red", "team: blue"),
        );
        let ids = [
            Some(ObjectId::new(Kind::Pod, "x", "a")),
            Some(ObjectId::new(Kind::Namespace, "", "x")),
            Some(ObjectId::new(Kind::Pod, "y", "new")),
        ];
        // The pod and the namespace stop reading (so the source leaves them out);
        // a new pod of y does not read.
        let mut now = now;
        let mut pods = crate::netpol::model::Grouped::default();
        for p in now
            .pods
            .iter()
            .filter(|p| (&*p.namespace, &*p.name) != ("x", "a"))
        {
            pods.push(p.clone());
        }
        now.pods = pods;
        now.namespaces.remove("x");
        let m = merge(now, ids.iter().cloned().map(unread).collect(), &last);
        let fates: Vec<&Fate> = m.judged.iter().map(|j| &j.fate).collect();
        assert_eq!(
            fates,
            [&Fate::Kept, &Fate::Kept, &Fate::Isolates("y".into())]
        );
        assert_eq!(m.model.pod("x", "a").unwrap().labels["app"], "db");
        assert_eq!(m.model.namespaces["x"]["team"], "red");
        assert_eq!(ids[1].as_ref().unwrap().to_string(), "Namespace x");
        assert_eq!(
            m.model.isolated.namespaces.keys().collect::<Vec<_>>(),
            ["y"]
        );
    }

    #[test]
    fn a_document_that_names_nothing_removes_nothing_or_isolates_every_pod() {
        let last = read(&format!("{OBJECTS}---{DB}"));
        // The policy's document no longer reads as YAML: it is missing from the
        // read, so it is kept, and so is every other object missing.
        let m = merge(read(OBJECTS), vec![unread(None)], &last);
        assert_eq!(m.judged[0].fate, Fate::NothingRemoved);
        assert_eq!(
            m.model.policies.get("x", "db"),
            last.policies.get("x", "db")
        );
        assert!(m.model.isolated.is_empty() && reaches(&m.model, 2, 1) && !reaches(&m.model, 3, 1));
        // Nothing is missing: the document is new, so every pod is isolated.
        let m = merge(
            read(&format!("{OBJECTS}---{DB}")),
            vec![unread(None)],
            &last,
        );
        assert_eq!(m.judged[0].fate, Fate::IsolatesEverything);
        assert!(!reaches(&m.model, 1, 3) && !reaches(&m.model, 3, 2) && reaches(&m.model, 2, 1));
        assert_eq!(
            state(&m.model, &m.judged),
            "isolating: every pod, for ingress (t.yaml document 5 names no object)"
        );
        // The same with nothing in force before: a first start with a broken file.
        let first = merge(read(OBJECTS), vec![unread(None)], &PolicyModel::default());
        assert_eq!(first.judged[0].fate, Fate::IsolatesEverything);
    }

    #[test]
    fn nothing_good_yet_isolates_every_pod_for_ingress_until_a_read_replaces_it() {
        let waiting = nothing_good_yet();
        assert!(!reaches(&waiting, 1, 3) && !reaches(&waiting, 3, 1));
        let compiled = compile(&waiting, &local());
        assert!(compiled.by_ip.values().all(|r| r.egress.is_none()));
        assert_eq!(
            state(&waiting, &[]),
            "isolating: every pod, for ingress (no good policy yet)"
        );
        let m = merge(read(OBJECTS), Vec::new(), &waiting);
        assert!(m.model.isolated.is_empty() && reaches(&m.model, 1, 3));
    }
}
