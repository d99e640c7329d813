//! The distributed store: etcd v3, through the `etcd-client` crate.
//!
//! A node registers itself under a lease with a TTL and keeps it alive; it claims its
//! pod subnet with a compare-and-swap transaction, under a second lease that outlives
//! the first by a grace period; and it watches every key under the prefix, resuming
//! from the last revision it saw after any break. `deploy/STORE.md` documents the
//! layout; [`records`] reads it. When etcd cannot be reached the node goes on with
//! what it last saw and reports itself degraded until etcd is back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use ipnet::Ipv4Net;
use parking_lot::Mutex;

use super::screen::{Own, Quiet};
use super::{
    ClusterStore, ClusterView, Joined, Joining, NodeEntry, OnChange, StoreError, StoreHealth,
    StorePolicy,
};
use crate::control::config::EtcdSettings;
use crate::services::model::ServiceModel;

pub mod claim;
pub mod records;
mod session;
mod watch;

use records::{Cache, Layout, NodeRecord, PolicyRecords};

/// The keys one page of a list holds.
pub const LIST_PAGE: i64 = 2_000;
/// The largest message taken from etcd: a page of a list, or a watch response,
/// which holds up to a thousand revisions' events when the watch catches up.
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// The most watch responses taken in before a new view is made: responses that
/// are already waiting are applied together, and make one view.
pub const COALESCE: usize = 1024;

/// How long one request to etcd may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting to an endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait between two tries at a store that is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a node with no subnet yet keeps trying to reach etcd as it starts.
pub const JOIN_PATIENCE: Duration = Duration::from_secs(30);
/// How long a node that knows its subnet tries before it starts degraded on it.
pub const JOIN_PATIENCE_KNOWN: Duration = Duration::from_secs(5);

/// Whether one of the store's two links (the registration's keep-alive, the watch)
/// works.
#[derive(Debug, Clone)]
enum Link {
    Up,
    Down { since: Instant, why: String },
}

impl Link {
    fn down(&mut self, why: String) {
        match self {
            Link::Up => {
                *self = Link::Down {
                    since: Instant::now(),
                    why,
                }
            }
            Link::Down { why: w, .. } => *w = why,
        }
    }
}

/// The leases this node holds.
#[derive(Debug, Clone)]
struct Registration {
    record: NodeRecord,
    node_lease: i64,
    subnet_lease: i64,
}

/// What the tasks share.
#[derive(Debug)]
struct Inner {
    cache: Cache,
    /// Whether `cache` was filled from etcd by this process (a list that succeeded),
    /// rather than the empty one it starts with.
    synced: bool,
    /// The policy objects' records of the cache, each read once per version.
    objects: PolicyRecords,
    /// The policy objects, made again only when one of their keys changes.
    policy: Arc<StorePolicy>,
    /// The Services and EndpointSlices, made again only when one of their keys
    /// changes.
    services: Arc<ServiceModel>,
    /// The nodes of the cache, made again only when a node's or a subnet's key
    /// changes (or the cache is listed again).
    nodes: Option<Vec<NodeEntry>>,
    /// The records ignored now, at the revision logged, and why: a record is
    /// logged again when it changes, when another record changes why it is
    /// ignored (a lease that came), or when it is ignored again after it was not.
    logged: HashMap<String, (i64, String)>,
    /// The budget of lines about ignored records.
    quiet: Quiet,
    session: Link,
    watch: Link,
    registration: Option<Registration>,
    /// What the node joined as, to register again after losing its leases.
    joining: Option<Joining>,
    /// The subnet the node joined with: its pool, weft0 and pods use it, so every
    /// later registration is on exactly this one.
    subnet: Option<Ipv4Net>,
}

/// This node as it runs, once it joined: what no other record may claim.
fn own(inner: &Inner) -> Option<Own> {
    let j = inner.joining.as_ref()?;
    Some(Own {
        name: j.name.clone(),
        subnet: inner.subnet?,
        underlay: j.underlay_ip,
        vtep_mac: j.vtep_mac,
    })
}

/// weft's records in etcd, as one node reads and writes them.
pub struct EtcdStore {
    settings: EtcdSettings,
    layout: Layout,
    /// This node's tunnel port: peers' records must carry the same.
    port: u16,
    client: Client,
    rt: tokio::runtime::Handle,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.settings.endpoints)
            .field("prefix", &self.settings.prefix)
            .finish_non_exhaustive()
    }
}

/// An error of the etcd client, as text.
fn text(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        e => e.to_string(),
    }
}

/// The client options: per-request and connect timeouts, and HTTP/2 keep-alive so
/// that a watch on a dead connection fails instead of waiting forever.
fn connect_options(settings: &EtcdSettings) -> Result<ConnectOptions, StoreError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    let Some(tls) = &settings.tls else {
        return Ok(options);
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| StoreError::Etcd(format!("reading {}: {e}", p.display())))
    };
    let mut config = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options.with_tls(config))
}

impl EtcdStore {
    /// A store on `settings`' endpoints, for a node whose tunnel port is `port`,
    /// running its tasks on `rt`. Connecting is lazy: an etcd that is down now is
    /// no error here.
    pub fn open(
        settings: EtcdSettings,
        port: u16,
        rt: tokio::runtime::Handle,
    ) -> Result<EtcdStore, StoreError> {
        let options = connect_options(&settings)?;
        let endpoints = settings.endpoints.clone();
        let plain: Vec<&str> = (endpoints.iter())
            .filter(|e| e.starts_with("http://"))
            .map(String::as_str)
            .collect();
        if settings.insecure && !plain.is_empty() {
            log::warn!(
                "etcd: insecure = true: plain http to {}: weft's records cross the network in the clear",
                plain.join(", ")
            );
        }
        let client = rt
            .block_on(async { Client::connect(endpoints, Some(options)).await })
            .map_err(|e| StoreError::Etcd(text(e)))?;
        Ok(EtcdStore {
            layout: Layout::new(&settings.prefix),
            settings,
            port,
            client,
            rt,
            inner: Mutex::new(Inner {
                cache: Cache::default(),
                synced: false,
                objects: PolicyRecords::default(),
                policy: Arc::new(StorePolicy::default()),
                services: Arc::default(),
                nodes: None,
                logged: HashMap::new(),
                quiet: Quiet::default(),
                session: Link::Up,
                watch: Link::Up,
                registration: None,
                joining: None,
                subnet: None,
            }),
        })
    }

    /// The view of the cache now, logging each ignored record once.
    fn view(&self, inner: &mut Inner) -> ClusterView {
        let nodes = match &inner.nodes {
            Some(nodes) => nodes.clone(),
            None => {
                let nodes = self.nodes(inner);
                inner.nodes = Some(nodes.clone());
                nodes
            }
        };
        ClusterView {
            nodes,
            policy: Some(inner.policy.clone()),
            services: Some(inner.services.clone()),
        }
    }

    /// The nodes of the cache, logging each ignored record once per version,
    /// within the log's budget.
    fn nodes(&self, inner: &mut Inner) -> Vec<NodeEntry> {
        let me = own(inner);
        let cluster = inner
            .joining
            .as_ref()
            .map_or_else(Ipv4Net::default, |j| j.cluster);
        let nodes = records::nodes(&self.layout, &inner.cache, me.as_ref(), cluster, self.port);
        let now = Instant::now();
        let mut logged = HashMap::with_capacity(nodes.ignored.len());
        for i in &nodes.ignored {
            let said = (i.mod_revision, i.why.clone());
            if inner.logged.get(&i.key) != Some(&said) {
                (inner.quiet).warn(now, format_args!("etcd: ignoring {}: {}", i.key, i.why));
            }
            logged.insert(i.key.clone(), said);
        }
        inner.logged = logged;
        nodes.nodes
    }

    /// Makes the policy objects again from the records' readings, logging the bad
    /// records within the log's budget. (The daemon logs, once a change, what it
    /// makes of each: its last good version kept, or its namespace isolated.)
    fn rebuild_policy(&self, inner: &mut Inner) {
        let policy = inner.objects.policy(inner.cache.revision);
        let now = Instant::now();
        for u in &policy.unread {
            let e = &u.error;
            (inner.quiet).warn(now, format_args!("etcd: ignoring {}: {}", e.file, e.reason));
        }
        inner.policy = Arc::new(policy);
    }

    /// Makes the Services and EndpointSlices again from the records' readings,
    /// logging each bad record not bad before within the log's budget: they are
    /// left out, and the rest is used.
    fn rebuild_services(&self, inner: &mut Inner) {
        let services = inner.objects.services();
        let now = Instant::now();
        for b in services
            .bad
            .iter()
            .filter(|b| !inner.services.bad.contains(b))
        {
            (inner.quiet).warn(now, format_args!("etcd: ignoring {b}"));
        }
        inner.services = Arc::new(services);
    }
}

impl ClusterStore for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn join(&self, me: &Joining) -> Result<Joined, StoreError> {
        // The etcd store leases IPv4 subnets only (settings refuse IPv6 with it).
        let subnet = self.rt.block_on(self.join_cluster(me))?;
        Ok(Joined {
            subnet,
            subnet6: None,
        })
    }

    fn load(&self) -> Result<ClusterView, StoreError> {
        let mut inner = self.inner.lock();
        Ok(self.view(&mut inner))
    }

    fn watch(self: Arc<Self>, on_change: OnChange) -> tokio::task::JoinHandle<()> {
        let keeper = self.clone();
        tokio::spawn(async move {
            tokio::join!(keeper.keep_registered(), self.follow(on_change));
        })
    }

    fn health(&self) -> StoreHealth {
        let inner = self.inner.lock();
        let downs = [&inner.session, &inner.watch]
            .into_iter()
            .filter_map(|l| match l {
                Link::Up => None,
                Link::Down { since, why } => Some((*since, why.clone())),
            })
            .min_by_key(|(since, _)| *since);
        match downs {
            None => StoreHealth::Ok,
            Some((since, why)) => StoreHealth::Degraded { since, why },
        }
    }

    /// Once a list of the prefix succeeded: as the node joined, or as the watch
    /// started (or restarted after a compaction). The watch's events only follow a
    /// list.
    fn synced(&self) -> bool {
        self.inner.lock().synced
    }
}

/// The wait before try number `n` (from 0) at a store that is down.
fn backoff(n: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(n.min(8))).min(MAX_BACKOFF)
}
