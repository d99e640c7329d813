//! A small Kubernetes API server, as a test fixture: no real API server can be
//! installed on these machines, so weft's Kubernetes store is tested against this.
//!
//! It is a fixture, not an API server. It keeps objects as the JSON documents the
//! tests write (literal JSON shaped as the API reference shows it, never values
//! serialized by the client's own types), and serves the parts of the protocol a
//! list/watch client uses:
//! - lists with `resourceVersion` and pagination (`limit`, `continue`), a
//!   continue token that expires (410 Gone) once the history it points into is
//!   compacted;
//! - watches from a resourceVersion: the history since, then live events, with
//!   BOOKMARK events and `timeoutSeconds`; an ERROR event with a 410 Status when
//!   the resourceVersion is older than the compacted history;
//! - GET of one object, and PATCH of Nodes and their status (JSON merge patch, and
//!   strategic merge patch with conditions merged by `type`; server-side apply is
//!   refused with 415, as field ownership is not modelled);
//! - a log of every request (verb and resource), to check RBAC against;
//! - faults on demand: every open watch dropped, the history compacted, the server
//!   gone.
//!
//! It does not check authorization rules or admission. It refuses (400) the query
//! parameters it does not implement: label and field selectors,
//! `resourceVersionMatch`, streaming lists (`sendInitialEvents`). It serves
//! cluster-wide collections and single Nodes only, JSON only, HTTP/1.1 only. [`State`] is the store and its history, with no I/O;
//! [`http`] serves it over HTTPS.

pub mod http;

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// A kind the fixture serves: its collection's path and the kind of its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Kind {
    /// The collection's path, e.g. `/api/v1/nodes`.
    pub path: &'static str,
    /// The kind of one object, e.g. `Node`.
    pub kind: &'static str,
    /// The API version, e.g. `v1`.
    pub api_version: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
}

/// The kinds weft's Kubernetes store reads.
pub const KINDS: [Kind; 6] = [
    Kind {
        path: "/api/v1/nodes",
        kind: "Node",
        api_version: "v1",
        namespaced: false,
    },
    Kind {
        path: "/api/v1/pods",
        kind: "Pod",
        api_version: "v1",
        namespaced: true,
    },
    Kind {
        path: "/api/v1/namespaces",
        kind: "Namespace",
        api_version: "v1",
        namespaced: false,
    },
    Kind {
        path: "/api/v1/services",
        kind: "Service",
        api_version: "v1",
        namespaced: true,
    },
    Kind {
        path: "/apis/networking.k8s.io/v1/networkpolicies",
        kind: "NetworkPolicy",
        api_version: "networking.k8s.io/v1",
        namespaced: true,
    },
    Kind {
        path: "/apis/discovery.k8s.io/v1/endpointslices",
        kind: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
        namespaced: true,
    },
];

/// The kind whose collection is at `path`.
pub fn kind_at(path: &str) -> Option<Kind> {
    KINDS.iter().copied().find(|k| k.path == path)
}

/// An object's key: its namespace ("" for cluster-scoped kinds) and name.
pub type Key = (String, String);

/// A change to an object, as a watch reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The resourceVersion the change made.
    pub rv: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The kind of object.
    pub of: Kind,
    /// The object after the change (before it, for a deletion), with its
    /// resourceVersion.
    pub object: Value,
}

/// Why a request for history cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Gone {
    /// The resourceVersion is older than the compacted history.
    #[error("too old resource version: {asked} ({oldest})")]
    TooOld {
        /// The version asked for.
        asked: u64,
        /// The oldest version still held.
        oldest: u64,
    },
    /// A continue token that points into compacted history, or does not parse.
    #[error("the provided continue parameter is too old or malformed")]
    Continue,
}

impl Gone {
    /// The `Status` object of a 410 Gone answer.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": "Expired",
            "code": 410
        })
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The items, in key order.
    pub items: Vec<Value>,
    /// The list's resourceVersion (of the first page, for every page).
    pub rv: u64,
    /// The token of the next page, if there is one.
    pub next: Option<String>,
    /// Items after this page.
    pub remaining: usize,
}

/// The fixture's objects and their history: no I/O.
#[derive(Debug, Default)]
pub struct State {
    objects: BTreeMap<Kind, BTreeMap<Key, Value>>,
    history: Vec<Change>,
    /// The last resourceVersion given out.
    rv: u64,
    /// History before this version is gone.
    oldest: u64,
    /// Snapshots a paginated list reads from, by the list's version.
    snapshots: BTreeMap<u64, BTreeMap<Kind, Vec<Value>>>,
}

fn key_of(kind: Kind, object: &Value) -> Option<Key> {
    let meta = object.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_owned();
    let ns = if kind.namespaced {
        meta.get("namespace")?.as_str()?.to_owned()
    } else {
        String::new()
    };
    Some((ns, name))
}

impl State {
    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Creates or replaces an object of `kind` (given as the test writes it; its
    /// `metadata.resourceVersion` is set here). Returns its new version.
    ///
    /// # Panics
    ///
    /// Panics on an object with no name (or no namespace, for a namespaced kind):
    /// a fault in the test, not in the client under test.
    pub fn put(&mut self, kind: Kind, mut object: Value) -> u64 {
        let key = key_of(kind, &object).expect("an object with a name (and namespace)");
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        object["kind"] = json!(kind.kind);
        object["apiVersion"] = json!(kind.api_version);
        let objects = self.objects.entry(kind).or_default();
        let change = if objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        objects.insert(key, object.clone());
        self.record(change, kind, object);
        self.rv
    }

    /// Deletes an object; returns whether there was one.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(mut object) = self.objects.entry(kind).or_default().remove(&key) else {
            return false;
        };
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record("DELETED", kind, object);
        true
    }

    fn record(&mut self, kind: &'static str, of: Kind, object: Value) {
        self.history.push(Change {
            rv: self.rv,
            kind,
            of,
            object,
        });
    }

    /// One object.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&kind)?
            .get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Forgets the history up to now, as etcd's compaction does: watches from
    /// before, and continue tokens into it, get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest = self.rv;
        self.snapshots.clear();
    }

    /// A page of `kind`'s objects: from the start (a new snapshot at the current
    /// version) or from a continue token; at most `limit` items (0: all).
    pub fn list(&mut self, kind: Kind, limit: usize, token: Option<&str>) -> Result<Page, Gone> {
        let (rv, offset) = match token {
            None => {
                let items = self
                    .objects
                    .get(&kind)
                    .map(|o| o.values().cloned().collect())
                    .unwrap_or_default();
                let snapshot = self.snapshots.entry(self.rv).or_default();
                snapshot.insert(kind, items);
                (self.rv, 0)
            }
            Some(t) => parse_token(t).ok_or(Gone::Continue)?,
        };
        let items = self
            .snapshots
            .get(&rv)
            .and_then(|s| s.get(&kind))
            .ok_or(Gone::Continue)?;
        let end = if limit == 0 {
            items.len()
        } else {
            offset.saturating_add(limit).min(items.len())
        };
        let page = items.get(offset..end).ok_or(Gone::Continue)?.to_vec();
        let remaining = items.len() - end;
        Ok(Page {
            items: page,
            rv,
            next: (remaining > 0).then(|| format!("{rv}-{end}")),
            remaining,
        })
    }

    /// The changes to `kind` after version `since`, or 410 Gone if they are no
    /// longer all held.
    pub fn changes_since(&self, kind: Kind, since: u64) -> Result<Vec<Change>, Gone> {
        if since < self.oldest {
            return Err(Gone::TooOld {
                asked: since,
                oldest: self.oldest,
            });
        }
        Ok(self
            .history
            .iter()
            .filter(|c| c.of == kind && c.rv > since)
            .cloned()
            .collect())
    }

    /// Patches the Node `name` (its status subresource if `status`) with `patch`
    /// of content type `content_type`; returns the patched Node, or why not.
    ///
    /// As the API server does for Nodes, a patch of the main resource leaves the
    /// status as it was, and a patch of the status leaves the spec as it was (its
    /// metadata still applies). A patch that is not a JSON object, or that would
    /// rename the Node, is refused and changes nothing. Server-side apply is
    /// refused as unsupported: it would need field ownership, which the fixture
    /// does not model.
    pub fn patch_node(
        &mut self,
        name: &str,
        status: bool,
        content_type: &str,
        patch: &Value,
    ) -> Result<Value, PatchError> {
        let kind = KINDS[0];
        let old = self
            .get(kind, "", name)
            .cloned()
            .ok_or(PatchError::NotFound)?;
        if !patch.is_object() {
            return Err(PatchError::Invalid("a patch is a JSON object"));
        }
        let mut node = old.clone();
        match content_type {
            "application/merge-patch+json" => merge(&mut node, patch),
            "application/strategic-merge-patch+json" => strategic(&mut node, patch),
            _ => return Err(PatchError::UnsupportedType),
        }
        let kept = if status { "spec" } else { "status" };
        match old.get(kept) {
            Some(v) => node[kept] = v.clone(),
            None => {
                if let Some(m) = node.as_object_mut() {
                    m.remove(kept);
                }
            }
        }
        if node["metadata"]["name"].as_str() != Some(name) {
            return Err(PatchError::Invalid("the patch renames the object"));
        }
        if node == old {
            // A patch that changes nothing makes no new version and no event.
            return Ok(old);
        }
        self.put(kind, node);
        Ok(self.get(kind, "", name).cloned().expect("just put"))
    }
}

/// Why a patch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// No such node.
    #[error("not found")]
    NotFound,
    /// A content type the fixture does not take (server-side apply among them).
    #[error("unsupported patch type")]
    UnsupportedType,
    /// A patch the API server would refuse.
    #[error("invalid patch: {0}")]
    Invalid(&'static str),
}

fn parse_token(t: &str) -> Option<(u64, usize)> {
    let (rv, offset) = t.split_once('-')?;
    Some((rv.parse().ok()?, offset.parse().ok()?))
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// A strategic merge patch as far as Node needs it: a merge patch, except that
/// `status.conditions` (and `status.addresses`) merge element by element on
/// their `type`, as their patch merge key says.
fn strategic(target: &mut Value, patch: &Value) {
    let mut patch = patch.clone();
    for list in ["conditions", "addresses"] {
        let Some(items) = patch
            .get_mut("status")
            .and_then(|s| s.as_object_mut())
            .and_then(|s| s.remove(list))
        else {
            continue;
        };
        let mut merged: Vec<Value> = target["status"][list]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for item in items.as_array().into_iter().flatten() {
            match merged.iter_mut().find(|m| m["type"] == item["type"]) {
                Some(m) => merge(m, item),
                None => merged.push(item.clone()),
            }
        }
        target["status"][list] = Value::Array(merged);
    }
    merge(target, &patch);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"podCIDR": "10.244.1.0/24"},
               "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    }

    #[test]
    fn lists_page_through_one_snapshot() {
        let mut s = State::default();
        for n in ["a", "b", "c"] {
            s.put(KINDS[0], node(n));
        }
        let first = s.list(KINDS[0], 2, None).unwrap();
        assert_eq!((first.items.len(), first.remaining, first.rv), (2, 1, 3));
        // A change after the first page does not show in the next one.
        s.put(KINDS[0], node("d"));
        let next = s.list(KINDS[0], 2, first.next.as_deref()).unwrap();
        assert_eq!(next.items[0]["metadata"]["name"], "c");
        assert_eq!((next.next, next.rv), (None, 3));
        s.compact();
        assert_eq!(
            s.list(KINDS[0], 2, first.next.as_deref()),
            Err(Gone::Continue)
        );
        assert_eq!(s.list(KINDS[0], 0, Some("garbage")), Err(Gone::Continue));
        // A token whose offset would overflow is refused, not a panic.
        let first = s.list(KINDS[0], 1, None).unwrap();
        let huge = format!("{}-{}", first.rv, usize::MAX);
        assert_eq!(s.list(KINDS[0], 1, Some(&huge)), Err(Gone::Continue));
    }

    #[test]
    fn history_is_served_until_compacted() {
        let mut s = State::default();
        s.put(KINDS[0], node("a"));
        s.put(
            KINDS[1],
            json!({"metadata": {"name": "p", "namespace": "x"}}),
        );
        s.put(KINDS[0], node("a"));
        assert!(s.delete(KINDS[0], "", "a"));
        assert!(!s.delete(KINDS[0], "", "a"));
        let kinds: Vec<_> = (s.changes_since(KINDS[0], 0).unwrap().iter())
            .map(|c| (c.rv, c.kind))
            .collect();
        assert_eq!(kinds, [(1, "ADDED"), (3, "MODIFIED"), (4, "DELETED")]);
        s.compact();
        assert_eq!(
            s.changes_since(KINDS[0], 2),
            Err(Gone::TooOld {
                asked: 2,
                oldest: 4
            })
        );
        assert_eq!(s.changes_since(KINDS[0], 4), Ok(vec![]));
    }

    #[test]
    fn a_strategic_status_patch_keeps_the_other_conditions() {
        let mut s = State::default();
        s.put(KINDS[0], node("a"));
        let patch = json!({"status": {"conditions": [
            {"type": "NetworkUnavailable", "status": "False", "reason": "WeftIsUp"}]}});
        let n = s
            .patch_node("a", true, "application/strategic-merge-patch+json", &patch)
            .unwrap();
        let types: Vec<_> = (n["status"]["conditions"].as_array().unwrap().iter())
            .map(|c| c["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(types, ["Ready", "NetworkUnavailable"]);
        // A merge patch replaces the list: what kubelet's Ready would not survive.
        let n = s
            .patch_node("a", true, "application/merge-patch+json", &patch)
            .unwrap();
        assert_eq!(n["status"]["conditions"].as_array().unwrap().len(), 1);
        // A status patch changes no annotation, a plain one no status.
        let ann =
            json!({"metadata": {"annotations": {"weft.dev/x": "1"}}, "status": {"phase": "x"}});
        let n = s
            .patch_node("a", false, "application/merge-patch+json", &ann)
            .unwrap();
        assert_eq!(n["metadata"]["annotations"]["weft.dev/x"], "1");
        assert!(n["status"].get("phase").is_none());
        assert_eq!(
            s.patch_node("b", false, "application/merge-patch+json", &ann),
            Err(PatchError::NotFound)
        );
        assert_eq!(
            s.patch_node("a", false, "text/plain", &ann),
            Err(PatchError::UnsupportedType)
        );
    }
}
