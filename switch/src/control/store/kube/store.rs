//! The API server as the cluster store: a node takes its subnet from its Node's
//! `spec.podCIDR`, publishes what its peers need as annotations on its Node, says
//! its network is up with the `NetworkUnavailable=False` condition, and follows
//! Nodes, Pods, Namespaces, NetworkPolicies, Services and EndpointSlices
//! cluster-wide through kube-runtime's watcher: a paginated list, then a watch,
//! and a relist after a 410 Gone, with the default backoff (jittered, 0.8 s to
//! 30 s) between tries.
//!
//! Views go to the daemon only once every kind has been listed: a partial list
//! would drop peers, or policies and so isolation. While the API server cannot
//! be reached, the mirrors stay as they were: forwarding goes on with the last
//! view and the last policy, and the store reports itself degraded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use parking_lot::Mutex;
use serde_json::json;

use super::cache::{Cache, Change};
use super::nodes::{annotations, key, PREFIX};
use super::{client, Credentials};
use crate::control::store::{
    ClusterStore, ClusterView, Joining, OnChange, StoreError, StoreHealth, StorePolicy,
};
use crate::netpol::manifest::ManifestError;

/// How long one request (a get or a patch) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node that held a subnet tries the API server as it starts before it
/// starts degraded on that subnet.
pub const JOIN_PATIENCE_KNOWN: Duration = Duration::from_secs(5);
/// How often a node waiting for its podCIDR says so.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long the store gathers changes before it makes a view of them.
const GATHER: Duration = Duration::from_millis(20);
/// How often the keeper checks this node's annotations and condition, and, while
/// a watch fails, whether the API server answers.
const KEEP_EVERY: Duration = Duration::from_secs(5);
/// The page size of the lists.
const PAGE: u32 = 500;

/// The condition this node sets on its Node once it forwards.
pub const CONDITION: &str = "NetworkUnavailable";

/// What the tasks share.
#[derive(Debug, Default)]
struct Inner {
    cache: Cache,
    me: Option<Joining>,
    /// The kinds whose watch fails, and this node's own requests ("node"): since
    /// when, and the last error.
    failing: BTreeMap<&'static str, (Instant, String)>,
    /// The views made last: nodes at the cache's node revision, policy at its
    /// policy revision.
    nodes: Option<(i64, Vec<crate::control::store::NodeEntry>)>,
    policy: Option<Arc<StorePolicy>>,
    /// What was logged as skipped or bad, at the version logged.
    logged: std::collections::HashMap<String, String>,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    changed: tokio::sync::Notify,
}

/// weft's view of the cluster from the Kubernetes API server.
pub struct KubeStore {
    credentials: Credentials,
    /// This node's tunnel port: peers' annotations must carry the same.
    port: u16,
    client: kube::Client,
    rt: tokio::runtime::Handle,
    shared: Arc<Shared>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

/// An error of a request, as text, with the request's timeout.
async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// The wait before try number `n` (from 0): 200 ms doubling to 5 s.
fn backoff(n: u32) -> Duration {
    (Duration::from_millis(200) * 2u32.saturating_pow(n.min(5))).min(Duration::from_secs(5))
}

impl KubeStore {
    /// A store reached with `credentials`, for a node whose tunnel port is `port`,
    /// running its tasks on `rt`. Nothing is requested yet.
    pub fn open(
        credentials: Credentials,
        port: u16,
        rt: tokio::runtime::Handle,
    ) -> Result<KubeStore, StoreError> {
        let client = rt
            .block_on(client(&credentials))
            .map_err(|e| StoreError::Kubernetes(e.to_string()))?;
        Ok(KubeStore::with_client(credentials, client, port, rt))
    }

    /// A store on `client`.
    fn with_client(
        credentials: Credentials,
        client: kube::Client,
        port: u16,
        rt: tokio::runtime::Handle,
    ) -> KubeStore {
        KubeStore {
            credentials,
            port,
            client,
            rt,
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner::default()),
                changed: tokio::sync::Notify::new(),
            }),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Starts a watch of every kind, each feeding the cache.
    fn start_watches(&self) {
        let c = &self.client;
        let mut tasks = self.tasks.lock();
        let _in = self.rt.enter();
        tasks.push(follow(c, &self.shared, "nodes", Change::Node));
        tasks.push(follow(c, &self.shared, "pods", Change::Pod));
        tasks.push(follow(c, &self.shared, "namespaces", Change::Namespace));
        tasks.push(follow(c, &self.shared, "networkpolicies", Change::Policy));
        tasks.push(follow(c, &self.shared, "services", Change::Service));
        tasks.push(follow(c, &self.shared, "endpointslices", Change::Slice));
    }

    /// The view of the cache now, logging each skipped Node and bad policy once
    /// per version.
    fn view(&self, inner: &mut Inner) -> ClusterView {
        let (me, cluster) = inner
            .me
            .as_ref()
            .map_or((String::new(), Ipv4Net::default()), |j| {
                (j.name.clone(), j.cluster)
            });
        let revision = inner.cache.nodes_revision;
        if inner.nodes.as_ref().is_none_or(|(r, _)| *r != revision) {
            let view = inner.cache.nodes_view(&me, cluster, self.port);
            for s in &view.skipped {
                if inner
                    .logged
                    .insert(format!("node {}", s.node), s.resource_version.clone())
                    != Some(s.resource_version.clone())
                {
                    log::warn!("kubernetes: skipping Node {}: {}", s.node, s.why);
                }
            }
            inner.nodes = Some((revision, view.nodes));
        }
        let revision = inner.cache.policy_revision;
        if inner.policy.as_ref().is_none_or(|p| p.revision != revision) {
            let (model, bad) = inner.cache.policy_model();
            log_bad(&mut inner.logged, &bad, &inner.cache);
            inner.policy = Some(Arc::new(StorePolicy {
                model,
                bad,
                revision,
            }));
        }
        ClusterView {
            nodes: inner
                .nodes
                .as_ref()
                .map(|(_, n)| n.clone())
                .unwrap_or_default(),
            policy: inner.policy.clone(),
        }
    }

    /// Waits for this node's Node to have a podCIDR and returns it, checked; or,
    /// for a node that held a subnet, that one once the API server stayed
    /// unreachable for [`JOIN_PATIENCE_KNOWN`].
    async fn pod_cidr(&self, me: &Joining) -> Result<Ipv4Net, StoreError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let started = Instant::now();
        let mut said: Option<Instant> = None;
        for n in 0u32.. {
            let why = match timed("getting the Node", api.get_opt(&me.name)).await {
                Ok(Some(node)) => match node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
                    Some(cidr) => return settle(me, cidr),
                    None => format!(
                        "Node {} has no spec.podCIDR yet (kube-controller-manager gives one with --allocate-node-cidrs)",
                        me.name
                    ),
                },
                Ok(None) => format!(
                    "there is no Node {}: the node name must be the Node's (spec.nodeName)",
                    me.name
                ),
                Err(e) => match me.wanted {
                    Some(s) if started.elapsed() >= JOIN_PATIENCE_KNOWN => {
                        log::warn!(
                            "kubernetes: {e}; starting degraded on the subnet held before, {s}"
                        );
                        self.failing("node", e);
                        return Ok(s);
                    }
                    _ => e,
                },
            };
            if said.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
                log::warn!("kubernetes: waiting for this node's pod subnet: {why}");
                said = Some(Instant::now());
            }
            tokio::time::sleep(backoff(n)).await;
        }
        Err(StoreError::Kubernetes(format!(
            "Node {} never got a podCIDR",
            me.name
        )))
    }

    /// Notes that this node's own requests fail.
    fn failing(&self, what: &'static str, why: String) {
        let mut inner = self.shared.inner.lock();
        let since = inner
            .failing
            .get(what)
            .map_or_else(Instant::now, |(s, _)| *s);
        inner.failing.insert(what, (since, why));
    }

    /// Publishes this node's annotations on its Node (a merge patch of those
    /// under weft's prefix only; one this node no longer has is removed).
    async fn publish(&self, me: &Joining) -> Result<(), String> {
        let ours = annotations(me, self.port);
        let mut patch = serde_json::Map::new();
        for k in key::ALL {
            patch.insert(k.to_owned(), ours.get(k).map_or(json!(null), |v| json!(v)));
        }
        let api: Api<Node> = Api::all(self.client.clone());
        let body = json!({"metadata": {"annotations": patch}});
        timed(
            "annotating the Node",
            api.patch(&me.name, &PatchParams::default(), &Patch::Merge(&body)),
        )
        .await
        .map(drop)
    }

    /// Sets `NetworkUnavailable=False` on this node's Node: a strategic merge
    /// patch of its status, which merges conditions by type, so kubelet's stay.
    async fn network_up(&self, name: &str) -> Result<(), String> {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        let body = json!({"status": {"conditions": [{
            "type": CONDITION, "status": "False", "reason": "WeftIsUp",
            "message": "weftd forwards on this node",
            "lastTransitionTime": now, "lastHeartbeatTime": now,
        }]}});
        let api: Api<Node> = Api::all(self.client.clone());
        timed(
            "setting the Node's NetworkUnavailable condition",
            api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&body)),
        )
        .await
        .map(drop)
    }

    /// Waits until every kind has been listed, while the API server answers:
    /// a watch failing for [`JOIN_PATIENCE_KNOWN`] ends the wait, unsynced.
    async fn wait_synced(&self) {
        let mut said: Option<Instant> = None;
        loop {
            let (unsynced, stuck) = {
                let inner = self.shared.inner.lock();
                let stuck = (inner.failing.values())
                    .find(|(since, _)| since.elapsed() >= JOIN_PATIENCE_KNOWN)
                    .map(|(_, why)| why.clone());
                (inner.cache.unsynced(), stuck)
            };
            if unsynced.is_empty() {
                return;
            }
            if let Some(why) = stuck {
                log::warn!("kubernetes: {} not listed: {why}", unsynced.join(", "));
                return;
            }
            if said.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
                log::info!("kubernetes: listing {}", unsynced.join(", "));
                said = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Keeps this node's annotations as it published them (a Node re-registered
    /// by kubelet, or edited, gets them again) and its condition set, and, while
    /// any request fails, asks for its Node to learn when the API server is back.
    async fn keep(self: Arc<Self>) {
        let Some(me) = self.shared.inner.lock().me.clone() else {
            return;
        };
        let wanted = annotations(&me, self.port);
        let mut condition_set = false;
        loop {
            let (drifted, failing) = {
                let inner = self.shared.inner.lock();
                let node = inner.cache.nodes.get(&(String::new(), me.name.clone()));
                let theirs = node.and_then(|n| n.0.metadata.annotations.as_ref());
                let ours = theirs.is_some_and(|a| {
                    a.iter()
                        .filter(|(k, _)| k.starts_with(PREFIX))
                        .eq(wanted.iter())
                });
                (node.is_some() && !ours, !inner.failing.is_empty())
            };
            if drifted || self.shared.inner.lock().failing.contains_key("node") {
                self.publish_logged(&me).await;
            }
            if !condition_set {
                match self.network_up(&me.name).await {
                    Ok(()) => condition_set = true,
                    Err(e) => self.failing("node", e),
                }
            }
            if failing {
                self.probe(&me.name).await;
            }
            tokio::time::sleep(KEEP_EVERY).await;
        }
    }

    async fn publish_logged(&self, me: &Joining) {
        match self.publish(me).await {
            Ok(()) => log::info!("kubernetes: annotations published on Node {}", me.name),
            Err(e) => self.failing("node", e),
        }
    }

    /// Asks for this node's Node: an answer clears what failed before it was
    /// asked (a watch in its backoff tries again within 30 s).
    async fn probe(&self, name: &str) {
        let asked = Instant::now();
        let api: Api<Node> = Api::all(self.client.clone());
        match timed("getting the Node", api.get_metadata_opt(name)).await {
            Ok(_) => {
                let mut inner = self.shared.inner.lock();
                inner.failing.retain(|_, (since, _)| *since > asked);
                log::info!("kubernetes: the API server answers again");
            }
            Err(e) => self.failing("node", e),
        }
    }
}

/// Logs each NetworkPolicy that failed closed, once per version.
fn log_bad(
    logged: &mut std::collections::HashMap<String, String>,
    bad: &[ManifestError],
    cache: &Cache,
) {
    for e in bad {
        let key = e.file.trim_start_matches("networkpolicies/");
        let Some((ns, name)) = key.split_once('/') else {
            continue;
        };
        let version = cache
            .policies
            .get(&(ns.to_owned(), name.to_owned()))
            .map(|p| p.resource_version.clone())
            .unwrap_or_default();
        if logged.insert(format!("policy {key}"), version.clone()) != Some(version) {
            log::error!(
                "kubernetes: NetworkPolicy {key} does not read: {}",
                e.reason
            );
        }
    }
}

/// This node's subnet from its podCIDR `cidr`: a subnet of the cluster CIDR, and
/// the one it held before if pods still hold addresses of that.
fn settle(me: &Joining, cidr: &str) -> Result<Ipv4Net, StoreError> {
    let refuse = |why: String| Err(StoreError::Conflict(why));
    let subnet: Ipv4Net = match cidr.parse() {
        Ok(s) => s,
        Err(_) => {
            return refuse(format!(
                "Node {}'s spec.podCIDR {cidr:?} is no IPv4 CIDR",
                me.name
            ))
        }
    };
    let cluster = me.cluster;
    if subnet != subnet.trunc()
        || !cluster.contains(&subnet)
        || subnet == cluster
        || subnet.prefix_len() > 30
    {
        return refuse(format!(
            "Node {}'s spec.podCIDR {subnet} is no subnet of the cluster CIDR {cluster}: cluster-cidr must be the cluster's --cluster-cidr",
            me.name
        ));
    }
    match me.wanted {
        Some(held) if me.strict && held != subnet => refuse(format!(
            "pods on this node hold addresses of {held}, but Node {}'s spec.podCIDR is {subnet}: drain the node and remove its pods first (README: moving from the etcd store)",
            me.name
        )),
        _ => Ok(subnet),
    }
}

/// Follows one kind with kube-runtime's watcher, feeding the cache.
fn follow<K>(
    client: &kube::Client,
    shared: &Arc<Shared>,
    kind: &'static str,
    wrap: fn(Event<K>) -> Change,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let shared = shared.clone();
    tokio::spawn(async move {
        let config = watcher::Config::default().page_size(PAGE);
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            let mut inner = shared.inner.lock();
            match event {
                Ok(e) => {
                    if inner.failing.remove(kind).is_some() {
                        log::info!("kubernetes: watching {kind} again");
                    }
                    if inner.cache.apply(wrap(e)) {
                        shared.changed.notify_one();
                    }
                }
                Err(e) => {
                    if !inner.failing.contains_key(kind) {
                        log::warn!("kubernetes: watching {kind}: {e}; the last view stays");
                    }
                    let since = inner
                        .failing
                        .get(kind)
                        .map_or_else(Instant::now, |(s, _)| *s);
                    inner.failing.insert(kind, (since, e.to_string()));
                }
            }
        }
    })
}

impl ClusterStore for KubeStore {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn join(&self, me: &Joining) -> Result<Ipv4Net, StoreError> {
        self.shared.inner.lock().me = Some(me.clone());
        self.start_watches();
        self.rt.block_on(async {
            let subnet = self.pod_cidr(me).await?;
            if let Err(e) = self.publish(me).await {
                log::warn!("kubernetes: {e}; tried again while running");
                self.failing("node", e);
            }
            self.wait_synced().await;
            Ok(subnet)
        })
    }

    fn load(&self) -> Result<ClusterView, StoreError> {
        let mut inner = self.shared.inner.lock();
        Ok(self.view(&mut inner))
    }

    fn watch(self: Arc<Self>, on_change: OnChange) -> tokio::task::JoinHandle<()> {
        let keeper = self.clone();
        tokio::spawn(async move {
            let publish = async {
                // Changes are gathered for as long as the last view took to make
                // (at least GATHER): under churn in a large cluster, making views
                // takes at most about half of a core.
                let mut gather = GATHER;
                loop {
                    self.shared.changed.notified().await;
                    tokio::time::sleep(gather).await;
                    let started = Instant::now();
                    let view = {
                        let mut inner = self.shared.inner.lock();
                        if !inner.cache.synced() {
                            continue;
                        }
                        self.view(&mut inner)
                    };
                    gather = started.elapsed().max(GATHER);
                    on_change(view);
                }
            };
            tokio::join!(keeper.keep(), publish);
        })
    }

    fn health(&self) -> StoreHealth {
        let inner = self.shared.inner.lock();
        let first = (inner.failing.iter()).min_by_key(|(_, (since, _))| *since);
        match first {
            None => StoreHealth::Ok,
            Some((what, (since, why))) => StoreHealth::Degraded {
                since: *since,
                why: format!("{what}: {why}"),
            },
        }
    }

    fn synced(&self) -> bool {
        self.shared.inner.lock().cache.synced()
    }

    fn objects(&self) -> Vec<(&'static str, usize)> {
        self.shared.inner.lock().cache.counts()
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::Value;

    use super::*;
    use crate::control::config::Mode;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// The next request: its method, path, content type and JSON body; answered
    /// with `reply`.
    async fn next(handle: &mut Handle, reply: &Value) -> (Method, String, String, Value) {
        let (request, send) = handle.next_request().await.expect("a request");
        let (parts, body) = request.into_parts();
        let body = body.collect_bytes().await.expect("the body");
        let content_type = (parts.headers.get(http::header::CONTENT_TYPE))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let reply = Body::from(serde_json::to_vec(reply).unwrap());
        send.send_response(Response::builder().status(200).body(reply).unwrap());
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (parts.method, parts.uri.to_string(), content_type, json)
    }

    fn joining() -> Joining {
        Joining {
            name: "n1".into(),
            underlay_ip: "192.168.0.1".parse().unwrap(),
            vtep_mac: "02:00:00:00:00:01".parse().unwrap(),
            mode: Mode::Vxlan,
            direct_routing: false,
            public_key: None,
            features: vec!["echo".into()],
            cluster: "10.244.0.0/16".parse().unwrap(),
            wanted: None,
            strict: false,
            state_dir: "/nonexistent".into(),
        }
    }

    #[tokio::test]
    async fn publishing_patches_weft_annotations_and_the_condition_only() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let store = Arc::new(KubeStore::with_client(
            Credentials::InCluster,
            client,
            8472,
            tokio::runtime::Handle::current(),
        ));
        let node =
            serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}});
        let s = store.clone();
        let requests = tokio::spawn(async move {
            let a = next(&mut handle, &node).await;
            let b = next(&mut handle, &node).await;
            (a, b)
        });
        store.publish(&joining()).await.expect("annotated");
        store.network_up("n1").await.expect("condition set");
        let (a, b) = requests.await.unwrap();
        drop(s);

        // A merge patch of the Node's metadata.annotations, nothing else: every
        // key of weft's, the public key removed (no encryption).
        assert_eq!((a.0, a.1.as_str()), (Method::PATCH, "/api/v1/nodes/n1?"));
        assert_eq!(a.2, "application/merge-patch+json");
        let body = a.3.as_object().unwrap();
        assert_eq!(body.keys().collect::<Vec<_>>(), ["metadata"]);
        let annotations = a.3["metadata"]["annotations"].as_object().unwrap();
        assert_eq!(annotations.len(), key::ALL.len());
        assert!(annotations.keys().all(|k| k.starts_with(PREFIX)));
        assert_eq!(annotations[key::UNDERLAY_IP], "192.168.0.1");
        assert_eq!(annotations[key::PUBLIC_KEY], Value::Null);

        // A strategic merge patch of the status: one condition, by type.
        assert_eq!(
            (b.0, b.1.as_str()),
            (Method::PATCH, "/api/v1/nodes/n1/status?")
        );
        assert_eq!(b.2, "application/strategic-merge-patch+json");
        let conditions = b.3["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0]["type"], CONDITION);
        assert_eq!(conditions[0]["status"], "False");
        assert!(b.3.get("spec").is_none() && b.3.get("metadata").is_none());
    }
}
