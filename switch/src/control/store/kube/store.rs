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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, watcher, Event};
use parking_lot::Mutex;
use serde_json::json;

use super::cache::{Cache, Change, KINDS};
use super::nodes::{annotations, key, pod_cidr, pod_cidr6};
use super::{client, Credentials};
use crate::control::config::check_subnet6;
use crate::control::store::screen::Quiet;
use crate::control::store::{
    ClusterStore, ClusterView, Joined, Joining, NodeEntry, OnChange, StoreError, StoreHealth,
    StorePolicy,
};
use crate::services::model::ServiceModel;

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
/// How long a watch that failed must try with no error to count as working.
const RECOVERED_AFTER: Duration = Duration::from_secs(10);

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
    /// The Services made last, at the cache's Services revision.
    services: Option<(i64, Arc<ServiceModel>)>,
    /// The Services and EndpointSlices that did not read, with why, as last
    /// logged, and the budget of those lines.
    bad_services: HashMap<String, String>,
    quiet: Quiet,
    /// The Nodes skipped and the NetworkPolicies that did not read, with why,
    /// as last logged: each is logged again only when why changes.
    skipped: HashMap<String, String>,
    bad: HashMap<String, String>,
    /// The subnet this node serves, once joined.
    subnet: Option<Ipv4Net>,
    /// When the watches started.
    started: Option<Instant>,
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
    /// A store reached with `credentials` (at `api_server`, if given), for a node
    /// whose tunnel port is `port`, running its tasks on `rt`. Nothing is
    /// requested yet.
    pub fn open(
        credentials: Credentials,
        api_server: Option<&http::Uri>,
        port: u16,
        rt: tokio::runtime::Handle,
    ) -> Result<KubeStore, StoreError> {
        let client = rt
            .block_on(client(&credentials, api_server))
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
        self.shared.inner.lock().started = Some(Instant::now());
        let _in = self.rt.enter();
        tasks.push(follow(c, &self.shared, "nodes", Change::Node));
        tasks.push(follow(c, &self.shared, "pods", Change::Pod));
        tasks.push(follow(c, &self.shared, "namespaces", Change::Namespace));
        tasks.push(follow(c, &self.shared, "networkpolicies", Change::Policy));
        tasks.push(follow(c, &self.shared, "services", Change::Service));
        tasks.push(follow(c, &self.shared, "endpointslices", Change::Slice));
    }

    /// The view of the cache now, logging each skipped Node and bad policy
    /// once (again if why changes).
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
            let skipped = (view.skipped.iter())
                .map(|s| (s.node.clone(), s.why.clone()))
                .collect();
            log_new(&mut inner.skipped, skipped, |node, why| {
                log::warn!("kubernetes: skipping Node {node}: {why}");
            });
            self.own_subnet(inner, &me, &view.nodes);
            inner.nodes = Some((revision, view.nodes));
        }
        let revision = inner.cache.policy_revision;
        if inner.policy.as_ref().is_none_or(|p| p.revision != revision) {
            let (model, unread) = inner.cache.policy_model();
            let named = (unread.iter())
                .map(|u| {
                    let file = &u.error.file;
                    let id = file.trim_start_matches("networkpolicies/").to_owned();
                    (id, u.error.reason.clone())
                })
                .collect();
            log_new(&mut inner.bad, named, |policy, why| {
                log::error!("kubernetes: NetworkPolicy {policy} does not read: {why}");
            });
            inner.policy = Some(Arc::new(StorePolicy {
                model,
                unread,
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
            services: self.services(inner),
        }
    }

    /// The Services and EndpointSlices, once both were listed (until then the
    /// daemon keeps what it has), made again when one changed; each that does
    /// not read is logged once (again if why changes), within the log's budget.
    fn services(&self, inner: &mut Inner) -> Option<Arc<ServiceModel>> {
        if !inner.cache.services_synced() {
            return None;
        }
        let revision = inner.cache.services_revision;
        if inner.services.as_ref().is_none_or(|(r, _)| *r != revision) {
            let model = inner.cache.service_model();
            let named = (model.bad.iter())
                .map(|b| (format!("{} {}", b.kind, b.id), b.why.clone()))
                .collect();
            let (quiet, now) = (&mut inner.quiet, Instant::now());
            log_new(&mut inner.bad_services, named, |object, why| {
                quiet.warn(now, format_args!("kubernetes: ignoring {object}: {why}"));
            });
            inner.services = Some((revision, Arc::new(model)));
        }
        inner.services.as_ref().map(|(_, m)| m.clone())
    }

    /// Holds `nodes` to the subnet this node serves: a Node of its own whose
    /// podCIDR changed since it joined (re-registered with another) makes the
    /// store degraded until weftd restarts on the new one. (A peer whose subnet
    /// overlaps the one served is left out by the daemon, as from every store:
    /// `control::store::screen`.)
    fn own_subnet(&self, inner: &mut Inner, me: &str, nodes: &[NodeEntry]) {
        let Some(subnet) = inner.subnet else {
            return;
        };
        let moved = (nodes.iter())
            .find(|n| n.name == me)
            .filter(|n| n.pod_subnet != subnet)
            .map(|n| n.pod_subnet);
        match moved {
            Some(now) => {
                let why = format!(
                    "Node {me}'s podCIDR is now {now}, but this node serves {subnet}: drain the node and restart weftd"
                );
                if inner.failing.get("subnet").is_none_or(|(_, w)| *w != why) {
                    log::error!("kubernetes: {why}");
                }
                let since = inner
                    .failing
                    .get("subnet")
                    .map_or_else(Instant::now, |(s, _)| *s);
                inner.failing.insert("subnet", (since, why));
            }
            None => {
                inner.failing.remove("subnet");
            }
        }
    }

    /// Waits for this node's Node to have a podCIDR and returns it, checked, with
    /// its IPv6 one on a dual-stack node; or, for a node that held subnets, those
    /// once the API server stayed unreachable for [`JOIN_PATIENCE_KNOWN`].
    async fn pod_cidr(&self, me: &Joining) -> Result<Joined, StoreError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let started = Instant::now();
        let mut said: Option<Instant> = None;
        for n in 0u32.. {
            let why = match timed("getting the Node", api.get_opt(&me.name)).await {
                Ok(Some(node)) => match pod_cidr(&node) {
                    Some(cidr) => {
                        return Ok(Joined {
                            subnet: settle(me, cidr)?,
                            subnet6: settle6(me, &node)?,
                        })
                    }
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
                        return Ok(Joined {
                            subnet: s,
                            subnet6: me.subnet6,
                        });
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
            let (synced, unsynced, stuck) = {
                let inner = self.shared.inner.lock();
                // This node's own requests failing says nothing of the lists.
                let stuck = (inner.failing.iter())
                    .filter(|(what, _)| KINDS.contains(what))
                    .find(|(_, (since, _))| since.elapsed() >= JOIN_PATIENCE_KNOWN)
                    .map(|(_, (_, why))| why.clone());
                (inner.cache.synced(), inner.cache.unsynced(), stuck)
            };
            if synced {
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
    /// by kubelet, or edited, gets them again) and its `NetworkUnavailable`
    /// condition `False`, retrying what failed.
    async fn keep(self: Arc<Self>) {
        let Some(me) = self.shared.inner.lock().me.clone() else {
            return;
        };
        let wanted = annotations(&me, self.port);
        let mut condition_set = false;
        loop {
            let (drifted, down, retry) = {
                let inner = self.shared.inner.lock();
                let node = inner.cache.nodes.get(&(String::new(), me.name.clone()));
                let theirs = node.and_then(|n| n.0.metadata.annotations.as_ref());
                let ours = key::ALL
                    .iter()
                    .all(|k| theirs.and_then(|a| a.get(*k)) == wanted.get(*k));
                let conditions = node.and_then(|n| n.0.status.as_ref()?.conditions.as_ref());
                let up = (conditions.into_iter().flatten())
                    .any(|c| c.type_ == CONDITION && c.status == "False");
                let retry = inner.failing.contains_key("node");
                (node.is_some() && !ours, node.is_some() && !up, retry)
            };
            if drifted || retry {
                match self.publish(&me).await {
                    Ok(()) => self.works("annotations published on this node's Node"),
                    Err(e) => self.failing("node", e),
                }
            }
            if down || !condition_set || retry {
                match self.network_up(&me.name).await {
                    Ok(()) => {
                        condition_set = true;
                        self.works("NetworkUnavailable=False set");
                    }
                    Err(e) => self.failing("node", e),
                }
            }
            tokio::time::sleep(KEEP_EVERY).await;
        }
    }

    /// Notes that this node's own requests work (again).
    fn works(&self, what: &str) {
        if self.shared.inner.lock().failing.remove("node").is_some() {
            log::info!("kubernetes: {what}");
        }
    }
}

/// Replaces `logged` with `now` (name to why), calling `log` for each entry
/// that is new or whose why changed; what is gone is forgotten.
fn log_new(
    logged: &mut HashMap<String, String>,
    now: HashMap<String, String>,
    mut log: impl FnMut(&str, &str),
) {
    for (name, why) in &now {
        if logged.get(name) != Some(why) {
            log(name, why);
        }
    }
    *logged = now;
}

/// This node's IPv6 pod subnet on a dual-stack node (`me` has an IPv6 range): the
/// IPv6 one of its Node's `spec.podCIDRs`, checked against the range. A node
/// without an IPv6 range takes none, whatever its Node says.
fn settle6(me: &Joining, node: &Node) -> Result<Option<Ipv6Net>, StoreError> {
    let Some(cluster6) = me.cluster6 else {
        return Ok(None);
    };
    let refuse = |why: String| Err(StoreError::Conflict(why));
    let Some(cidr) = pod_cidr6(node) else {
        return refuse(format!(
            "cluster-cidr-v6 is {cluster6}, but Node {}'s spec.podCIDRs has no IPv6 range: \
             the controller manager gives one with an IPv6 --cluster-cidr (dual stack)",
            me.name
        ));
    };
    // `pod_cidr6` found it by parsing it.
    let subnet: Ipv6Net = cidr
        .parse()
        .map_err(|_| StoreError::Conflict(cidr.into()))?;
    if let Err(why) = check_subnet6(subnet, cluster6) {
        return refuse(format!(
            "Node {}'s IPv6 podCIDR: {why}: cluster-cidr-v6 must be the cluster's IPv6 --cluster-cidr",
            me.name
        ));
    }
    // Pods that still hold addresses of another one make the IPv6 pool refuse
    // this one as it opens (`SubnetMismatch`, naming both).
    Ok(Some(subnet))
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

/// The wait between tries of a watch that fails: 0.8 s doubling to 15 s, plus
/// up to as much again at random (at most 30 s, kube-runtime's default cap);
/// reset only by an object listed or watched.
fn retries() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(Duration::from_secs(15))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Notes that the watch of `kind` fails, logging it as it starts to.
fn watch_failed(shared: &Shared, kind: &'static str, why: String) {
    let mut inner = shared.inner.lock();
    match inner.failing.get_mut(kind) {
        Some((_, w)) => *w = why,
        None => {
            log::warn!("kubernetes: watching {kind}: {why}; the last view stays");
            inner.failing.insert(kind, (Instant::now(), why));
        }
    }
}

/// Notes that the watch of `kind` works again.
fn watch_works(inner: &mut Inner, kind: &'static str) {
    if inner.failing.remove(kind).is_some() {
        log::info!("kubernetes: watching {kind} again");
    }
}

/// Follows one kind with kube-runtime's watcher, feeding the cache. A failure
/// is retried after [`retries`]' wait; the watch counts as working again once
/// an object comes, or once a try has run for [`RECOVERED_AFTER`] with no error
/// (an idle watch yields nothing: its bookmarks stay inside the watcher).
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
        let mut events = std::pin::pin!(watcher(api, config));
        let mut wait = retries();
        loop {
            let failing = shared.inner.lock().failing.contains_key(kind);
            let next = match failing {
                false => events.next().await,
                true => match tokio::time::timeout(RECOVERED_AFTER, events.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        watch_works(&mut shared.inner.lock(), kind);
                        continue;
                    }
                },
            };
            match next {
                None => return,
                // A list about to be tried: no sign that anything works.
                Some(Ok(Event::Init)) => {
                    shared.inner.lock().cache.apply(wrap(Event::Init));
                }
                Some(Ok(e)) => {
                    wait = retries();
                    let mut inner = shared.inner.lock();
                    watch_works(&mut inner, kind);
                    if inner.cache.apply(wrap(e)) {
                        shared.changed.notify_one();
                    }
                }
                Some(Err(e)) => {
                    watch_failed(&shared, kind, e.to_string());
                    let pause = wait.next().unwrap_or(Duration::from_secs(30));
                    tokio::time::sleep(pause).await;
                }
            }
        }
    })
}

impl ClusterStore for KubeStore {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn join(&self, me: &Joining) -> Result<Joined, StoreError> {
        self.shared.inner.lock().me = Some(me.clone());
        self.start_watches();
        self.rt.block_on(async {
            let joined = self.pod_cidr(me).await?;
            self.shared.inner.lock().subnet = Some(joined.subnet);
            if let Err(e) = self.publish(me).await {
                log::warn!("kubernetes: {e}; tried again while running");
                self.failing("node", e);
            }
            self.wait_synced().await;
            Ok(joined)
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
        let unsynced = inner.cache.unsynced();
        match (first, inner.started) {
            (Some((what, (since, why))), _) => StoreHealth::Degraded {
                since: *since,
                why: format!("{what}: {why}"),
            },
            (None, Some(started)) if !unsynced.is_empty() => StoreHealth::Degraded {
                since: started,
                why: format!("not listed yet: {}", unsynced.join(", ")),
            },
            _ => StoreHealth::Ok,
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
    use crate::control::store::kube::nodes::PREFIX;

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
            cluster6: None,
            subnet6: None,
            strict: false,
            state_dir: "/nonexistent".into(),
        }
    }

    /// A dual-stack node takes its Node's IPv6 podCIDR, checked against its
    /// IPv6 range; an IPv4-only node takes none, whatever its Node lists.
    #[test]
    fn the_ipv6_subnet_is_the_nodes_ipv6_podcidr() {
        let node = |cidrs: &[&str]| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n1"},
                "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}
            }))
            .unwrap()
        };
        let dual = node(&["10.244.1.0/24", "fd00:10:244:1::/64"]);
        assert_eq!(settle6(&joining(), &dual).unwrap(), None, "IPv4-only node");
        let me = Joining {
            cluster6: Some("fd00:10:244::/56".parse().unwrap()),
            ..joining()
        };
        assert_eq!(
            settle6(&me, &dual).unwrap(),
            Some("fd00:10:244:1::/64".parse().unwrap())
        );
        let v4_only = node(&["10.244.1.0/24"]);
        let err = settle6(&me, &v4_only).unwrap_err().to_string();
        assert!(err.contains("no IPv6 range"), "{err}");
        let outside = node(&["10.244.1.0/24", "fd99:0:0:1::/64"]);
        let err = settle6(&me, &outside).unwrap_err().to_string();
        assert!(err.contains("must lie inside cluster-cidr-v6"), "{err}");
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
