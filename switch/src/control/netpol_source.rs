//! NetworkPolicy in the control plane: the model from its source (a watched
//! directory of YAML for the embedded store), compiled for this node's pods and
//! published with the forwarding snapshot; and the queries behind `weft policy
//! status` and `weft policy pod` (`explain` has a module of its own).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use weft_proto::{self as proto, PodRef};

use crate::control::daemon::{Daemon, State};
use crate::control::error::DaemonError;
use crate::control::store::StorePolicy;
use crate::netpol::compile::{self, CompiledPolicy, Compiler, LocalPod, PeerCache, PodRules};
use crate::netpol::last_good::{self, Judged, Kind, ObjectId, Unread};
use crate::netpol::manifest::{self, ManifestError, Objects, Skipped};
use crate::netpol::model::{PolicyModel, DEFAULT_NAMESPACE};
use crate::services::model::ServiceModel;

/// How often the policy directory is read for changes: a change takes effect within
/// this and a compile.
pub const POLL: Duration = Duration::from_millis(250);

/// The policy the daemon holds.
#[derive(Debug, Default)]
pub struct PolicyState {
    /// The set in force.
    pub model: Arc<PolicyModel>,
    /// It, compiled for the pods attached here.
    pub compiled: CompiledPolicy,
    /// The peer sets of the last compile, for the next to reuse.
    pub peers: PeerCache,
    /// The generation of `compiled`: it changes when any pod's rules change.
    pub generation: u32,
    /// The objects the last read could not read, and what became of each.
    pub judged: Vec<Judged>,
    /// Documents skipped by the last read.
    pub skipped: Vec<Skipped>,
    /// The store revision of the set in force, when it came from a distributed store.
    pub store_revision: Option<i64>,
}

/// What a read of the policy directory gave.
#[derive(Debug, Default)]
pub struct DirRead {
    /// The objects of the documents that read.
    pub model: PolicyModel,
    /// The Services and EndpointSlices, and those that did not read.
    pub services: ServiceModel,
    /// Documents of kinds policy does not use.
    pub skipped: Vec<Skipped>,
    /// The documents and files that did not read.
    pub unread: Vec<Unread>,
}

/// The manifest files of directory `dir`: every `*.yaml` and `*.yml` file, in name
/// order.
fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// What could not be read at `path` (a file, or the directory), naming no object.
fn unnamed(path: &Path, reason: String) -> Unread {
    Unread {
        id: None,
        error: ManifestError {
            file: path.display().to_string(),
            document: 0,
            reason,
        },
    }
}

/// Reads the manifests of directory `dir`, several documents a file, document by
/// document: what reads, and what does not, for [`last_good::merge`].
pub fn load_dir(dir: &Path) -> DirRead {
    let mut out = DirRead::default();
    let files = match manifest_files(dir) {
        Ok(files) => files,
        Err(e) => {
            out.unread.push(unnamed(dir, format!("cannot read: {e}")));
            return out;
        }
    };
    let mut objects = Objects::default();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let name = file.display().to_string();
                let docs = manifest::read_documents(&name, &text, &mut objects);
                out.skipped.extend(docs.skipped);
                out.unread.extend(docs.unread);
            }
            Err(e) => out.unread.push(unnamed(file, format!("cannot read: {e}"))),
        }
    }
    (out.model, out.services) = (objects.policy, objects.services);
    out.services.leave_out_doubles(&dir.display().to_string());
    leave_out_doubles(&mut out, dir);
    out
}

/// Counts as not read every pod and policy that two documents of `read` define,
/// and every object one defines and another fails to: which stands is not known.
fn leave_out_doubles(read: &mut DirRead, dir: &Path) {
    let twice = manifest::duplicates(&read.model);
    for id in &twice {
        let mut u = unnamed(dir, format!("{id} is defined twice"));
        u.id = Some(id.clone());
        read.unread.push(u);
    }
    let out: BTreeSet<ObjectId> = (read.unread.iter())
        .filter_map(|u| u.id.clone())
        .chain(twice)
        .collect();
    if out.is_empty() {
        return;
    }
    let m = &mut read.model;
    m.pods
        .retain(|p| !out.contains(&ObjectId::new(Kind::Pod, &p.namespace, &p.name)));
    m.policies
        .retain(|p| !out.contains(&ObjectId::new(Kind::NetworkPolicy, &p.namespace, &p.name)));
    m.namespaces
        .retain(|name, _| !out.contains(&ObjectId::new(Kind::Namespace, name, name)));
}

/// The bytes of every manifest file of `dir`, to notice any change.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect();
    out.sort();
    out
}

impl State {
    /// The pods attached here, as policy names them.
    pub(crate) fn local_pods(&self) -> Vec<LocalPod> {
        self.pods
            .iter()
            .map(|p| LocalPod {
                ip: p.entry.ip,
                ip6: p.entry.ip6,
                namespace: p
                    .pod
                    .as_ref()
                    .map_or(DEFAULT_NAMESPACE, |r| r.namespace.as_str())
                    .to_owned(),
                name: p.pod.as_ref().map_or("", |r| r.name.as_str()).to_owned(),
            })
            .collect()
    }

    /// Compiles the policy in force for the pods attached now; a change of any pod's
    /// rules starts a new generation.
    pub(crate) fn recompile(&mut self) {
        let local = self.local_pods();
        let compiled = compile::compile_cached(&self.policy.model, &local, &mut self.policy.peers);
        if compiled.by_ip != self.policy.compiled.by_ip || self.policy.generation == 0 {
            self.policy.generation = self.policy.generation.wrapping_add(1).max(1);
        }
        self.policy.compiled = compiled;
    }

    /// The rules of the pod at `ip`, if a policy selects it.
    pub(crate) fn rules_of(&self, ip: Ipv4Addr) -> Option<Arc<PodRules>> {
        self.policy.compiled.by_ip.get(&ip).cloned()
    }
}

impl Daemon {
    /// Puts a read of the policy directory in force, as [`last_good::merge`]
    /// makes it of the read and the set in force; and its Services.
    pub fn apply_policy(&self, read: DirRead) -> Result<(), DaemonError> {
        if let Some(dir) = &self.settings.policy.dir {
            let source = format!("dir {}", dir.display());
            self.apply_services(Arc::new(read.services), &source, true);
        }
        for s in &read.skipped {
            log::info!(
                "policy: {} document {}: kind {} is not used, skipped",
                s.file,
                s.document,
                s.kind
            );
        }
        self.put_policy(read.model, read.unread, None, read.skipped)
    }

    /// Puts the policy objects of a distributed store in force, unless they are the
    /// set in force already.
    pub fn apply_store_policy(&self, policy: &StorePolicy) -> Result<(), DaemonError> {
        if self.state.lock().policy.store_revision == Some(policy.revision) {
            return Ok(());
        }
        let (model, unread) = (policy.model.clone(), policy.unread.clone());
        self.put_policy(model, unread, Some(policy.revision), Vec::new())
    }

    /// Puts in force and publishes the set made of the objects read, `model`, and
    /// those that did not read, `unread`, with the set in force until now (see
    /// [`last_good::merge`]); read from the store at `revision` (`None`: not from
    /// a store), with the documents `skipped`. Then saves the view. Only once in
    /// force is the revision recorded: a set that failed is tried again with the
    /// next view.
    fn put_policy(
        &self,
        model: PolicyModel,
        unread: Vec<Unread>,
        revision: Option<i64>,
        skipped: Vec<Skipped>,
    ) -> Result<(), DaemonError> {
        let mut state = self.state.lock();
        let merged = last_good::merge(model, unread, &state.policy.model);
        log_judged(&state.policy.judged, &merged.judged);
        state.policy.judged = merged.judged;
        state.policy.skipped = skipped;
        state.policy.model = Arc::new(merged.model);
        let before = state.policy.generation;
        self.publish(&mut state)?;
        state.policy.store_revision = revision;
        log::info!(
            "policy: {} policies, {} pods, {} namespaces in force (generation {}): {}",
            state.policy.model.policies.len(),
            state.policy.model.pods.len(),
            state.policy.model.namespaces.len(),
            state.policy.generation,
            last_good::state(&state.policy.model, &state.policy.judged),
        );
        if before == state.policy.generation {
            log::debug!("policy: no pod's rules changed");
        }
        self.save_view(&state);
        Ok(())
    }

    /// Compiles and publishes the set in force as it is: the one a node starts
    /// with before anything is read (saved by an earlier run, or every pod
    /// isolated).
    pub(crate) fn enforce_in_force(&self) -> Result<(), DaemonError> {
        let mut state = self.state.lock();
        self.publish(&mut state)?;
        log::warn!(
            "policy: {} policies in force before the store is read: {}",
            state.policy.model.policies.len(),
            last_good::state(&state.policy.model, &[]),
        );
        Ok(())
    }

    /// Reads the policy directory, if there is one, and applies it.
    pub(crate) fn load_policy(&self) -> Result<(), DaemonError> {
        match &self.settings.policy.dir {
            Some(dir) => self.apply_policy(load_dir(dir)),
            None => Ok(()),
        }
    }

    pub(crate) fn policy_status(&self) -> proto::PolicyStatus {
        let saved_at = self.from_saved.lock().clone();
        let state = self.state.lock();
        let p = &state.policy;
        let local = state.local_pods();
        let c = Compiler::new(&p.model, &local);
        let policies = p
            .model
            .policies
            .iter()
            .map(|pol| proto::PolicyInfo {
                id: pol.id(),
                ingress: pol.ingress.is_some(),
                egress: pol.egress.is_some(),
                ingress_rules: pol.ingress.as_ref().map_or(0, Vec::len),
                egress_rules: pol.egress.as_ref().map_or(0, Vec::len),
                local_pods: c
                    .local()
                    .iter()
                    .filter(|l| l.namespace == pol.namespace && pol.pod_selector.matches(l.labels))
                    .count(),
            })
            .collect();
        proto::PolicyStatus {
            source: match (&self.settings.policy.dir, p.store_revision, saved_at) {
                (Some(d), ..) => format!("dir {}", d.display()),
                (None, None, Some(at)) => format!("the {} view saved at {at}", self.store.kind()),
                (None, Some(rev), _) => format!("{} at revision {rev}", self.store.kind()),
                (None, None, None) => "none".into(),
            },
            generation: p.generation,
            namespaces: p.model.namespaces.len(),
            pods: c.known_count(),
            policies,
            state: last_good::state(&p.model, &p.judged),
            errors: p.judged.iter().map(ToString::to_string).collect(),
            skipped: p
                .skipped
                .iter()
                .map(|s| format!("{} document {}: {}", s.file, s.document, s.kind))
                .collect(),
        }
    }

    pub(crate) fn policy_pod(&self, pod: &PodRef) -> Result<proto::PodPolicies, DaemonError> {
        let state = self.state.lock();
        let local = state.local_pods();
        let c = Compiler::new(&state.policy.model, &local);
        let known = c.find(&pod.namespace, &pod.name).ok_or_else(|| {
            DaemonError::Invalid(format!("no pod {}/{} is known", pod.namespace, pod.name))
        })?;
        let rules = c.rules_for(&known);
        Ok(proto::PodPolicies {
            pod: pod.clone(),
            ip: known.ip,
            ingress_isolated: rules.ingress.is_some(),
            egress_isolated: rules.egress.is_some(),
            selected_by: rules
                .selected_by
                .iter()
                .map(|(id, i, e)| (id.to_string(), *i, *e))
                .collect(),
        })
    }
}

/// Logs each object of `now` that did not read and was not so in `before`, with
/// what became of it; and that all reads again, when it does.
fn log_judged(before: &[Judged], now: &[Judged]) {
    for j in now.iter().filter(|j| !before.contains(j)) {
        log::error!("policy: {j}");
    }
    if now.is_empty() && !before.is_empty() {
        log::info!("policy: every object reads again");
    }
}

/// Watches the policy directory, applying each change.
pub(crate) fn watch_dir(daemon: &Arc<Daemon>) -> Option<tokio::task::JoinHandle<()>> {
    let dir = daemon.settings.policy.dir.clone()?;
    let d = daemon.clone();
    Some(tokio::spawn(async move {
        let mut last = fingerprint(&dir);
        loop {
            tokio::time::sleep(POLL).await;
            let now = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || fingerprint(&dir)
            })
            .await
            .unwrap_or_default();
            if now == last {
                continue;
            }
            last = now;
            let d = d.clone();
            let dir = dir.clone();
            let applied = tokio::task::spawn_blocking(move || d.apply_policy(load_dir(&dir))).await;
            if let Ok(Err(e)) = applied {
                log::error!("policy: {e}");
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch policy directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str, files: &[(&str, &str)]) -> Dir {
            let p = std::env::temp_dir().join(format!("weft-pdir-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("a scratch dir");
            for (name, text) in files {
                std::fs::write(p.join(name), text).expect("a manifest");
            }
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn policy(ns: &str, name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
        )
    }

    fn names(read: &DirRead) -> Vec<Option<String>> {
        (read.unread.iter())
            .map(|u| u.id.as_ref().map(ToString::to_string))
            .collect()
    }

    #[test]
    fn each_document_reads_on_its_own_and_one_that_does_not_is_named() {
        let good = policy("x", "good", "{podSelector: {}}");
        let bad = policy(
            "x",
            "bad",
            "{podSelector: {}, ingress: [{ports: [{port: 0}]}]}",
        );
        let nameless = "---\napiVersion: v1\nkind: Pod\nmetadata: {labels: {a: b}}\n";
        let d = Dir::new(
            "docs",
            &[
                ("a.yaml", &format!("{good}{bad}{nameless}")),
                ("b.txt", "junk"),
            ],
        );
        let read = load_dir(&d.0);
        let ids: Vec<String> = read.model.policies.iter().map(|p| p.id()).collect();
        assert_eq!(ids, ["x/good"]);
        assert_eq!(names(&read), [Some("NetworkPolicy x/bad".into()), None]);
        let bad = &read.unread[0].error;
        assert_eq!(bad.document, 1);
        assert!(bad.reason.contains("port 0"), "{bad}");
        assert!(
            read.unread[1].error.reason.contains("name"),
            "{:?}",
            read.unread[1]
        );
    }

    #[test]
    fn a_syntax_error_ends_its_file_and_names_nothing() {
        let good = policy("x", "good", "{podSelector: {}}");
        let d = Dir::new(
            "syntax",
            &[
                ("a.yaml", &format!("{good}---\nkind: [oops\n{good}")),
                ("b.yaml", &policy("y", "p", "{podSelector: {}}")),
            ],
        );
        let read = load_dir(&d.0);
        let ids: Vec<String> = read.model.policies.iter().map(|p| p.id()).collect();
        assert_eq!(
            ids,
            ["x/good", "y/p"],
            "what came before, and the other files"
        );
        assert_eq!(names(&read), [None]);
        assert!(read.unread[0].error.reason.starts_with("not YAML"));
    }

    #[test]
    fn an_object_defined_twice_or_defined_and_broken_counts_as_not_read() {
        let p = policy("x", "p", "{podSelector: {}}");
        let q = policy("x", "q", "{podSelector: {}}");
        let q_bad = policy("x", "q", "{podSelector: {}, policyTypes: [Sideways]}");
        let d = Dir::new(
            "twice",
            &[
                ("a.yaml", &format!("{p}{q}")),
                ("b.yaml", &format!("{p}{q_bad}")),
            ],
        );
        let read = load_dir(&d.0);
        assert!(read.model.policies.is_empty(), "{:?}", read.model.policies);
        let mut named = names(&read);
        named.sort();
        assert_eq!(
            named,
            [
                Some("NetworkPolicy x/p".into()),
                Some("NetworkPolicy x/q".into())
            ]
        );
        assert!(read
            .unread
            .iter()
            .any(|u| u.error.reason == "NetworkPolicy x/p is defined twice"));
    }

    /// Services and EndpointSlices beside policy: read into their own model;
    /// one that does not read (a bad port, an unknown apiVersion, a hostile
    /// label, a Service defined twice) is left out and named there, and never
    /// counts as policy that did not read, which would isolate pods.
    #[test]
    fn services_are_read_beside_policy_and_a_bad_one_never_touches_policy() {
        let svc = |name: &str, port: u32| {
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
                 spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: {port}}}]}}\n"
            )
        };
        let slice = |name: &str, api: &str, svc: &str| {
            format!(
                "---\napiVersion: {api}\nkind: EndpointSlice\n\
                 metadata: {{name: {name}, labels: {{kubernetes.io/service-name: {svc}}}}}\n\
                 addressType: IPv4\nendpoints: [{{addresses: [10.244.1.5]}}]\n\
                 ports: [{{name: http, port: 8080}}]\n"
            )
        };
        let good = policy("x", "good", "{podSelector: {}}");
        let text = [
            svc("web", 80),
            slice("web-a", "discovery.k8s.io/v1", "web"),
            svc("bad", 0),
            slice("old", "discovery.k8s.io/v1beta1", "web"),
            slice("evil", "discovery.k8s.io/v1", "kube-system/dns"),
            good,
        ]
        .concat();
        let d = Dir::new(
            "svc",
            &[
                ("a.yaml", &text),
                ("b.yaml", &svc("twice", 80)),
                ("c.yaml", &svc("twice", 81)),
            ],
        );
        let read = load_dir(&d.0);
        assert!(read.unread.is_empty(), "{:?}", read.unread);
        assert!(read.skipped.is_empty(), "{:?}", read.skipped);
        assert_eq!(read.model.policies.len(), 1);
        let s = &read.services;
        let ids: Vec<String> = s.services.iter().map(|s| s.id()).collect();
        assert_eq!(ids, ["default/web"]);
        assert_eq!(
            s.slices.iter().map(|s| s.id()).collect::<Vec<_>>(),
            ["default/web-a"]
        );
        let bad: Vec<String> = s.bad.iter().map(ToString::to_string).collect();
        assert_eq!(bad.len(), 4, "{bad:#?}");
        assert!(
            bad[0].starts_with("Service default/bad (")
                && bad[0].contains("a.yaml document 2): port 0"),
            "{bad:?}"
        );
        assert!(
            bad[1].contains("EndpointSlice default/old")
                && bad[1].contains("\"discovery.k8s.io/v1beta1\" is not supported"),
            "{bad:?}"
        );
        assert!(
            bad[2].contains("EndpointSlice default/evil") && bad[2].contains("is no label value"),
            "{bad:?}"
        );
        assert!(
            bad[3].starts_with("Service default/twice (") && bad[3].ends_with("defined twice"),
            "{bad:?}"
        );
    }

    #[test]
    fn a_directory_that_cannot_be_read_names_nothing() {
        let read = load_dir(Path::new("/nonexistent/weft-policy"));
        assert!(read.model.policies.is_empty());
        assert_eq!(names(&read), [None]);
        assert!(read.unread[0].error.reason.starts_with("cannot read"));
    }
}
