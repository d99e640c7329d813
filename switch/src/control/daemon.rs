//! The daemon: the ports, peers and address pool of one node, the workers that switch
//! between them, and the snapshots it publishes to those workers. Requests arrive
//! through [`super::api`]; pods come and go in [`super::pods`], peers in
//! [`super::peers`]. It runs on a small tokio runtime and never on the workers;
//! blocking steps (entering a netns, waiting for workers) run on tokio's blocking pool.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::{Ipv4Net, Ipv6Net};
use parking_lot::Mutex;
use weft_encap::sleeve::seal::Cipher;
use weft_encap::sleeve::NodeId;
use weft_ipam::{Key, Pool, Pool6};
use weft_proto::{Attachment, PodRef};

use crate::control::config::{gateway_of, Encryption, ServicesMode, Settings, StoreSettings};
use crate::control::error::{io_err, DaemonError};
use crate::control::flows::FlowHistory;
use crate::control::host::{Host, Queues, SystemHost};
use crate::control::keys::{self, PublicKey};
use crate::control::masquerade::Masquerade;
use crate::control::metrics::Metrics;
use crate::control::netlink::{Ipv6Spec, LinkSpec, RouteSpec};
use crate::control::netns::NsId;
use crate::control::netpol_source::PolicyState;
use crate::control::peers::{peer_entries, usable_nodes};
use crate::control::saved::{self, Saver, Snapshot};
use crate::control::services::ServiceState;
use crate::control::store::etcd::EtcdStore;
use crate::control::store::file::FileStore;
use crate::control::store::kube::KubeStore;
use crate::control::store::screen::Said;
use crate::control::store::{
    ClusterStore, ClusterView, Joined, Joining, NoStore, NodeEntry, StorePolicy,
};
use crate::core;
use crate::crypto;
use crate::crypto::stage::Sealer;
use crate::io::udp::{tunnel_sockets, Lanes};
use crate::io::worker::{self, Command, Shared, WorkerHandle};
use crate::mac::MacAddr;
use crate::netpol::last_good;
use crate::netpol::model::PolicyModel;
use crate::services::model::ServiceModel;
use crate::services::ServiceTable;
use crate::tables::counters::Counters;
use crate::tables::health::feature_names;
use crate::tables::services::{self, Services};
use crate::tables::{
    gateway6_of, Node6, NodeConfig, PeerEntry, PortEntry, PortId, PortKind, Tables,
};

/// How long the control plane waits for workers to take or drop a queue.
pub const WORKER_ACK: Duration = Duration::from_secs(5);

/// An attached pod: its key in the pool, its port, the Kubernetes pod it is, and
/// the network namespace its interface is in.
#[derive(Debug)]
pub(crate) struct Pod {
    pub(crate) key: Key,
    pub(crate) entry: PortEntry,
    pub(crate) pod: Option<PodRef>,
    pub(crate) ns: NsId,
}

/// What the daemon holds under its lock.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) host: PortEntry,
    pub(crate) pods: Vec<Pod>,
    pub(crate) peers: Vec<PeerEntry>,
    /// The nodes of the view in force, this one included.
    pub(crate) nodes: Arc<Vec<NodeEntry>>,
    /// Next generation of each slot ever used; slots in `free` can be reused.
    pub(crate) generations: Vec<u32>,
    pub(crate) free: Vec<u32>,
    /// NetworkPolicy in force.
    pub(crate) policy: PolicyState,
    /// ClusterIP Services in force: the model, its table, what was refused.
    pub(crate) services: ServiceState,
    /// The table the workers translate with, with `services = "switch"`.
    pub(crate) translation: Translation,
}

/// The Service table the workers translate with, and what compiling the next one
/// needs.
#[derive(Debug)]
pub(crate) struct Translation {
    /// The compiled table, with `services = "switch"`.
    compiled: Option<Arc<Services>>,
    /// The key of the flow hash that picks endpoints, random per process.
    seed: u64,
}

impl Translation {
    /// With `services = "switch"`, an empty table over the Service CIDR, so that
    /// until the store's Services are read every ClusterIP is refused rather than
    /// handed to the host; else none.
    fn new(settings: &Settings) -> Result<Translation, DaemonError> {
        let seed = services::random_seed();
        let compiled = match (settings.host.services, settings.host.service_cidr) {
            (ServicesMode::Switch, Some(cidr)) => {
                let empty = Arc::new(ServiceTable::default());
                Some(Arc::new(Services::compile(empty, cidr, seed, 1, None)?))
            }
            _ => None,
        };
        Ok(Translation { compiled, seed })
    }
}

impl State {
    /// A fresh identity for a port: a free slot, or a new one.
    pub(crate) fn next_port_id(&mut self) -> PortId {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.generations.push(0);
            (self.generations.len() - 1) as u32
        });
        let generation = self.generations[slot as usize];
        self.generations[slot as usize] = generation.wrapping_add(1);
        PortId { slot, generation }
    }
}

/// A running weftd.
pub struct Daemon {
    pub(crate) settings: Settings,
    pub(crate) node: Arc<NodeConfig>,
    tables: Arc<ArcSwap<Tables>>,
    tunnel: Arc<Counters>,
    shared: Arc<Shared>,
    workers: Mutex<Vec<WorkerHandle>>,
    /// Set when shutdown begins: the daemon no longer serves ADD.
    stopping: AtomicBool,
    pub(crate) state: Mutex<State>,
    pub(crate) pool: Pool,
    /// The IPv6 pool, on a dual-stack node.
    pub(crate) pool6: Option<Pool6>,
    pub(crate) host: Arc<dyn Host>,
    pub(crate) store: Arc<dyn ClusterStore>,
    /// The encrypted sleeve, if it is on.
    pub(crate) sealer: Option<Arc<Sealer>>,
    /// Writes the view in force to the state directory.
    saver: Saver,
    /// When the view in force was saved, while it is a saved one: the store has not
    /// been read since the node started.
    pub(crate) from_saved: Mutex<Option<String>>,
    /// The peers left out of the views, as logged.
    pub(crate) left_out: Mutex<Said>,
    /// What the control plane measures of itself for `/metrics`.
    pub(crate) metrics: Metrics,
    /// Policy's recent verdicts, named, for `weft flows`.
    pub(crate) flow_history: Mutex<FlowHistory>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("node", &self.node.name)
            .finish()
    }
}

/// The store `settings` name: the peers file, none, or etcd (whose tasks run on
/// `rt`).
fn store_of(
    settings: &Settings,
    rt: &tokio::runtime::Handle,
) -> Result<Arc<dyn ClusterStore>, DaemonError> {
    Ok(match &settings.store {
        StoreSettings::File(Some(path)) => Arc::new(FileStore::new(path.clone())),
        StoreSettings::File(None) => Arc::new(NoStore),
        StoreSettings::Etcd(e) => Arc::new(EtcdStore::open(
            e.clone(),
            settings.tunnel.port,
            rt.clone(),
        )?),
        StoreSettings::Kubernetes(k) => Arc::new(KubeStore::open(
            k.credentials.clone(),
            k.api_server.as_ref(),
            settings.tunnel.port,
            rt.clone(),
        )?),
    })
}

/// This node's VTEP MAC: as configured, else as the store lists it, else derived
/// from its name.
fn vtep_mac(settings: &Settings, view: &ClusterView) -> MacAddr {
    let listed = view.nodes.iter().find(|n| n.name == settings.node_name);
    settings
        .tunnel
        .vtep_mac
        .or(listed.map(|m| m.vtep_mac))
        .unwrap_or_else(|| MacAddr::from_name(&settings.node_name))
}

/// Settles this node's subnet with `store` and opens the address pool on it, and the
/// IPv6 pool of a dual-stack node. The pool remembers the subnet it was last opened
/// for: a node that restarts asks the store for that one back, and insists on it
/// while pods hold addresses of it.
fn join(
    settings: &Settings,
    store: &dyn ClusterStore,
    router_mac: MacAddr,
    public_key: Option<PublicKey>,
) -> Result<(Joined, Pool, Option<Pool6>), DaemonError> {
    let path = settings.state_dir.join("ipam.redb");
    let recorded = Pool::open_recorded(&path)?;
    let remembered = recorded
        .as_ref()
        .map(Pool::subnet)
        .filter(|s| settings.cluster_cidr.contains(s) && *s != settings.cluster_cidr);
    let held = match &recorded {
        Some(p) => p.len()?,
        None => 0,
    };
    let me = Joining {
        name: settings.node_name.clone(),
        underlay_ip: settings.underlay_ip,
        vtep_mac: router_mac,
        mode: settings.tunnel.mode,
        direct_routing: settings.tunnel.direct_routing,
        public_key,
        features: feature_names(core::FEATURES),
        cluster: settings.cluster_cidr,
        wanted: settings.pod_subnet.or(remembered),
        cluster6: settings.ipv6.map(|v6| v6.cluster),
        subnet6: settings
            .ipv6
            .and_then(|v6| v6.subnet.or(remembered6(settings, v6.cluster))),
        strict: settings.pod_subnet.is_some() || (remembered.is_some() && held > 0),
        state_dir: settings.state_dir.clone(),
    };
    let joined = store.join(&me)?;
    let pool = match recorded {
        Some(p) if p.subnet() == joined.subnet => p,
        other => {
            drop(other);
            Pool::open(&path, joined.subnet)?
        }
    };
    let pool6 = open_pool6(settings, joined.subnet6)?;
    Ok((joined, pool, pool6))
}

/// The IPv6 subnet this node's pods held before, if it lies in `cluster6`: what
/// a node asks its store for back, and starts on while the store is down.
fn remembered6(settings: &Settings, cluster6: Ipv6Net) -> Option<Ipv6Net> {
    let path = settings.state_dir.join("ipam6.redb");
    let recorded = Pool6::open_recorded(&path).ok().flatten()?;
    Some(recorded.subnet()).filter(|s| cluster6.contains(s) && *s != cluster6)
}

/// Opens the IPv6 pool of a dual-stack node, on `subnet6`, the IPv6 subnet it
/// joined with. A node that is not dual-stack (any more) refuses to start while
/// its IPv6 database holds addresses: their pods would keep addresses the node no
/// longer routes, and lose them silently.
fn open_pool6(settings: &Settings, subnet6: Option<Ipv6Net>) -> Result<Option<Pool6>, DaemonError> {
    let path = settings.state_dir.join("ipam6.redb");
    if settings.ipv6.is_some() {
        let subnet = subnet6.ok_or_else(|| {
            DaemonError::Invalid(
                "cluster-cidr-v6 is set, but the store gave no IPv6 pod subnet".into(),
            )
        })?;
        return Ok(Some(Pool6::open(&path, subnet)?));
    }
    let held = match Pool6::open_recorded(&path)? {
        Some(p) => p.len()?,
        None => 0,
    };
    if held > 0 {
        return Err(DaemonError::Invalid(format!(
            "{} holds {held} IPv6 pod addresses, but pod-subnet-v6 is not set: set it \
             again, or delete those pods first",
            path.display()
        )));
    }
    Ok(None)
}

/// What a node starts from.
struct Boot {
    /// The nodes.
    nodes: Vec<NodeEntry>,
    /// The view saved by an earlier run, when the store could not be read: it
    /// stands for the store's.
    saved: Option<saved::SavedView>,
    /// Where its first policy comes from.
    policy: BootPolicy,
    /// The policy in force before anything is read: the last good set an earlier
    /// run saved; else, where there is policy to read, every pod isolated for
    /// ingress ([`last_good::nothing_good_yet`]).
    in_force: PolicyModel,
    /// The store's Services, read, or else saved with the view an earlier run
    /// saved (`None`: the store holds none, or neither was read).
    services: Option<Arc<ServiceModel>>,
}

/// Where the policy a node starts with comes from.
enum BootPolicy {
    /// The store's objects, read.
    Store(Arc<StorePolicy>),
    /// The policy directory, if there is one.
    Dir,
    /// The set in force before anything is read, as it is: the store, which
    /// holds policy, has not been read.
    InForce,
}

/// Where a node starts from: the store's view, once it was read from the store; else
/// the view an earlier run saved, with a warning. Its policy is merged with the last
/// good set an earlier run saved ([`last_good::merge`]), for every store, so that
/// what does not read now is what it was; with no such set and nothing read,
/// every pod is isolated for ingress until a good set is read.
fn boot_view(settings: &Settings, store: &dyn ClusterStore) -> Result<Boot, DaemonError> {
    // Asked first: a store goes from unsynced to synced, never back, so a view
    // loaded after a `true` is a synced one; loaded before, it might be half.
    let synced = store.synced();
    let view = store.load()?;
    let kind = store.kind();
    let has_policy = view.policy.is_some() || settings.policy.dir.is_some();
    let saved = match has_policy || !synced {
        true => saved::load(&settings.state_dir, kind, settings.cluster_cidr),
        false => None,
    };
    let in_force = match (&saved, has_policy) {
        (Some(s), _) => s.policy.clone(),
        (None, true) => last_good::nothing_good_yet(),
        (None, false) => PolicyModel::default(),
    };
    let policy = match view.policy {
        Some(p) if synced => BootPolicy::Store(p),
        Some(_) => BootPolicy::InForce,
        None => BootPolicy::Dir,
    };
    let mut boot = Boot {
        nodes: view.nodes,
        saved: None,
        policy,
        in_force,
        services: view.services.filter(|_| synced),
    };
    if synced {
        return Ok(boot);
    }
    match saved {
        Some(s) => {
            log::warn!(
                "store {kind} unreachable at boot: starting from the view saved at {} ({} nodes, {} policies)",
                s.saved_at_text(),
                s.nodes.len(),
                s.policy.policies.len()
            );
            boot.nodes = s.nodes.clone();
            // A policy directory's Services are read from it.
            if let Some(m) = s.services.as_ref().filter(|_| settings.policy.dir.is_none()) {
                log::warn!(
                    "store {kind} unreachable at boot: ClusterIPs translate by the saved view's {} Services and {} EndpointSlices until it is read",
                    m.services.len(),
                    m.slices.len()
                );
                boot.services = Some(Arc::new(m.clone()));
            }
            boot.saved = Some(s);
        }
        None if has_policy => log::warn!(
            "store {kind} unreachable at boot, and no saved view in {}: every pod is isolated for ingress until the store is read",
            settings.state_dir.display()
        ),
        None => log::warn!("store {kind} unreachable at boot, and no saved view: no peers yet"),
    }
    Ok(boot)
}

/// This node's identity and addressing.
pub(crate) fn node_config(settings: &Settings, joined: Joined, router_mac: MacAddr) -> NodeConfig {
    let subnet = joined.subnet;
    NodeConfig {
        name: settings.node_name.clone(),
        router_mac,
        subnet,
        gateway: gateway_of(subnet),
        underlay: settings.underlay_ip,
        cluster: settings.cluster_cidr,
        mode: settings.framing(),
        vni: settings.tunnel.vni,
        pod_mtu: settings.pod_mtu(),
        max_datagram: settings.max_datagram(),
        // A node in direct mode has no tunnel to send heartbeats through.
        heartbeat: match settings.tunnel.mode.tunnel() {
            Some(_) => settings.tunnel.heartbeat,
            None => Duration::ZERO,
        },
        v6: (settings.ipv6.zip(joined.subnet6)).map(|(v6, subnet)| Node6 {
            subnet,
            gateway: gateway6_of(subnet),
            cluster: v6.cluster,
        }),
    }
}

/// The host port's entry and link: the gateway address and the cluster route.
pub(crate) fn host_port(settings: &Settings, node: &NodeConfig) -> (PortEntry, LinkSpec) {
    let gateway = node.gateway;
    let spec = LinkSpec {
        name: settings.host.port.clone(),
        mac: MacAddr::for_ip(gateway),
        mtu: node.pod_mtu,
        addr: gateway,
        prefix_len: 32,
        ipv6: node.v6.map(|v6| Ipv6Spec {
            addr: v6.gateway,
            prefix_len: 128,
            gateway: None,
        }),
        // The cluster's pods, and with Services in the switch its Service range:
        // the node's own connections to ClusterIPs go through the switch too.
        routes: std::iter::once(settings.cluster_cidr)
            .chain(
                (settings.host.service_cidr)
                    .filter(|_| settings.host.services == ServicesMode::Switch),
            )
            .map(|dst| RouteSpec::OnLink { dst, src: gateway })
            .chain(node.v6.map(|v6| RouteSpec::OnLink6 {
                dst: v6.cluster,
                src: v6.gateway,
            }))
            .collect(),
        alias: None,
    };
    let entry = PortEntry {
        id: PortId {
            slot: 0,
            generation: 0,
        },
        kind: PortKind::Host,
        name: settings.host.port.clone(),
        mac: spec.mac,
        ip: gateway,
        ip6: None,
        container_id: None,
        pod: None,
        netns: None,
        queues: settings.datapath.port_queues as u16,
        offloads: true,
        // Known once its TAP is open.
        uso: false,
        counters: Arc::new(Counters::new(settings.datapath.workers)),
        policy: None,
    };
    (entry, spec)
}

/// Opens the host port: its entry and its queues.
fn open_host_port(
    settings: &Settings,
    node: &NodeConfig,
    host: &dyn Host,
) -> Result<(PortEntry, Queues), DaemonError> {
    let (mut entry, spec) = host_port(settings, node);
    let queues = host.open_host_port(&spec, settings.datapath.port_queues)?;
    entry.uso = queues.first().is_some_and(|q| q.takes_uso());
    Ok((entry, queues))
}

/// The encrypted sleeve's endpoint, if encryption is on: the node key from the
/// state directory (made at the first start), the cluster's pre-shared key if one
/// is configured, and the cipher this CPU runs best.
fn sealer_of(settings: &Settings, router_mac: MacAddr) -> Result<Option<Arc<Sealer>>, DaemonError> {
    if settings.encryption.mode == Encryption::Off {
        return Ok(None);
    }
    let key = keys::load_or_create(&settings.state_dir)?;
    let psk = settings
        .encryption
        .psk_file
        .as_deref()
        .map(keys::read_psk)
        .transpose()?;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let cipher = Cipher::preferred();
    log::info!(
        "encryption {:?}: node key {}, {cipher} preferred{}",
        settings.encryption.mode,
        PublicKey(key.public()),
        if psk.is_some() {
            ", with a pre-shared key"
        } else {
            ""
        }
    );
    let endpoint = crypto::Endpoint::new(crypto::Config {
        node: NodeId(router_mac.0),
        features: core::FEATURES,
        key,
        psk,
        cipher,
        wall_at_zero: wall.saturating_sub(crate::io::clock::now().as_nanos()),
    });
    Ok(Some(Arc::new(Sealer::new(
        endpoint,
        settings.encryption.mode,
    ))))
}

/// What the host must do for the switch: forward (Services, egress, direct routing),
/// and masquerade pods' traffic leaving the cluster, or leave no table of weft's
/// behind when it must not.
fn prepare_host(settings: &Settings, host: &dyn Host) -> Result<(), DaemonError> {
    host.enable_forwarding()
        .map_err(io_err("enabling IPv4 forwarding"))?;
    if !settings.host.masquerade {
        // A crashed predecessor's table, if there is one (and nft to remove it).
        if let Err(e) = host.set_masquerade(None) {
            log::debug!("egress masquerade off: removing any table left: {e}");
        }
    } else {
        host.set_masquerade(Some(&Masquerade {
            cluster: settings.cluster_cidr,
            service: settings.host.service_cidr,
            tunnel: settings
                .tunnel
                .mode
                .tunnel()
                .map(|_| (settings.underlay_ip, settings.tunnel.port)),
        }))?;
        log::info!(
            "egress masquerade: {} leaving the cluster{}",
            settings.cluster_cidr,
            settings
                .host
                .service_cidr
                .map_or(String::new(), |s| format!(" (and the Service CIDR {s})"))
        );
    }
    Ok(())
}

/// Binds the tunnel sockets and starts the workers on `tables`.
fn start_workers(
    settings: &Settings,
    tables: &Arc<ArcSwap<Tables>>,
    sealer: Option<Arc<Sealer>>,
) -> Result<(Arc<Shared>, Vec<WorkerHandle>), DaemonError> {
    // In direct mode nothing is tunnelled: the sockets take a port no peer sends to.
    let ip = settings.underlay_ip;
    let port = settings
        .tunnel
        .mode
        .tunnel()
        .map_or(0, |_| settings.tunnel.port);
    let sockets = tunnel_sockets(SocketAddrV4::new(ip, port), settings.datapath.workers)
        .map_err(io_err(format!("binding the tunnel port {ip}:{port}")))?;
    let lanes = Lanes::bind(ip, core::LANES)
        .map_err(io_err(format!("binding the tunnel's source ports on {ip}")))?;
    log::info!("tunnel source ports {:?}", lanes.ports());
    let tuning = worker::Tuning {
        poll_max: settings.datapath.poll,
        heartbeat: settings.tunnel.heartbeat,
        conntrack_max: settings.policy.conntrack_max,
        conntrack_share: settings.policy.conntrack_share,
        services: settings.host.services == ServicesMode::Switch,
        ipv6: settings.ipv6.map(|v6| v6.cluster),
        panic_after: settings.datapath.test_panic_after,
        flow_log: settings.observability.flow_log,
    };
    worker::spawn(tables.clone(), sockets, Arc::new(lanes), tuning, sealer)
        .map_err(io_err("starting the workers"))
}

impl Daemon {
    /// Starts a daemon on this host: the host port, the workers, the peers from the
    /// store, and the pods recorded before a restart. The store's tasks run on `rt`.
    pub fn start(
        settings: Settings,
        rt: &tokio::runtime::Handle,
    ) -> Result<Arc<Daemon>, DaemonError> {
        let store = store_of(&settings, rt)?;
        let host = SystemHost {
            tap_uso: settings.datapath.tap_uso,
        };
        Daemon::start_with(settings, Arc::new(host), store)
    }

    /// Joins the cluster as `settings` say and returns the subnet, without starting
    /// anything else: weftd's `--claim-only`, which tests race nodes with.
    pub fn claim_only(
        settings: &Settings,
        rt: &tokio::runtime::Handle,
    ) -> Result<Ipv4Net, DaemonError> {
        let store = store_of(settings, rt)?;
        let view = store.load()?;
        join(settings, &*store, vtep_mac(settings, &view), None).map(|(joined, ..)| joined.subnet)
    }

    /// Like [`Daemon::start`], on the host operations `host` and the cluster `store`.
    ///
    /// A store that could not be read as the node joined is stood in for by the view
    /// an earlier run saved ([`boot_view`]): its peers and its policy are in force
    /// before any pod is restored. With no saved view, a store that holds policy
    /// starts with every pod isolated for ingress until it is read.
    pub fn start_with(
        settings: Settings,
        host: Arc<dyn Host>,
        store: Arc<dyn ClusterStore>,
    ) -> Result<Arc<Daemon>, DaemonError> {
        let router_mac = vtep_mac(&settings, &store.load()?);
        let sealer = sealer_of(&settings, router_mac)?;
        let public_key = sealer.as_ref().map(|s| PublicKey(s.endpoint().public()));
        let (joined, pool, pool6) = join(&settings, &*store, router_mac, public_key)?;
        let boot = boot_view(&settings, &*store)?;
        let nodes = Arc::new(boot.nodes);
        let node = Arc::new(node_config(&settings, joined, router_mac));
        let tunnel = Arc::new(Counters::new(settings.datapath.workers));
        let (host_entry, host_queues) = open_host_port(&settings, &node, &*host)?;
        prepare_host(&settings, &*host)?;
        let mut left_out = Said::default();
        let usable = usable_nodes(&node, &nodes, &mut left_out);
        let route_to = |ip| host.route_to(ip).ok().flatten();
        let peers = peer_entries(&settings, &usable, &[], &route_to);
        let translation = Translation::new(&settings)?;
        let mut first = Tables::build(
            node.clone(),
            host_entry.clone(),
            [],
            peers.clone(),
            tunnel.clone(),
        )?;
        first.services = translation.compiled.clone();
        let tables = Arc::new(ArcSwap::from_pointee(first));
        let (shared, workers) = start_workers(&settings, &tables, sealer.clone())?;
        let saver = Saver::start(settings.state_dir.clone(), store.kind())
            .map_err(io_err("starting the thread that saves the view"))?;
        let daemon = Arc::new(Daemon {
            settings,
            node,
            tables,
            tunnel,
            shared,
            workers: Mutex::new(workers),
            stopping: AtomicBool::new(false),
            state: Mutex::new(State {
                host: host_entry.clone(),
                pods: Vec::new(),
                peers,
                nodes: nodes.clone(),
                generations: vec![1],
                free: Vec::new(),
                policy: PolicyState {
                    model: Arc::new(boot.in_force),
                    ..PolicyState::default()
                },
                services: ServiceState::default(),
                translation,
            }),
            pool,
            pool6,
            host,
            store,
            sealer,
            saver,
            from_saved: Mutex::new(boot.saved.as_ref().map(saved::SavedView::saved_at_text)),
            left_out: Mutex::new(left_out),
            // Unless the view is a saved one, the store was read as the node joined.
            metrics: Metrics::new(boot.saved.is_none()),
            flow_history: Mutex::new(FlowHistory::default()),
        });
        daemon.sync_crypto_peers(&usable);
        daemon.hand_queues(host_entry.id, &host_entry.counters, host_queues)?;
        daemon.sync_direct_routes(&daemon.state.lock().peers.clone());
        match boot.policy {
            BootPolicy::Store(p) => daemon.apply_store_policy(&p)?,
            BootPolicy::Dir => daemon.load_policy()?,
            BootPolicy::InForce => daemon.enforce_in_force()?,
        }
        daemon.boot_services(boot.services, boot.saved.as_ref());
        daemon.restore()?;
        daemon.save_view(&daemon.state.lock());
        Ok(daemon)
    }

    /// Puts in force the Services a boot found (a saved view's, while the store
    /// could not be read), shown as that view's until the store gives its own.
    fn boot_services(&self, services: Option<Arc<ServiceModel>>, saved: Option<&saved::SavedView>) {
        if let Some(services) = services {
            self.apply_services(services, self.store.kind(), false);
            self.state.lock().services.saved_at = saved.map(saved::SavedView::saved_at_text);
        }
    }

    /// Hands the view in force in `state` to the saver, if it is all the store's: not
    /// a saved one, nor a saved one partly replaced (it would be saved as new).
    pub(crate) fn save_view(&self, state: &State) {
        if self.store.synced() && self.from_saved.lock().is_none() {
            // Services from the policy directory are read from it at boot.
            let store = state.services.source == self.store.kind();
            self.saver.save(Snapshot {
                nodes: state.nodes.clone(),
                policy: state.policy.model.clone(),
                revision: state.policy.store_revision,
                services: store.then(|| state.services.model.clone()),
            });
        }
    }

    /// The settings the daemon runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The forwarding snapshot the workers read now.
    pub fn tables(&self) -> Arc<Tables> {
        self.tables.load_full()
    }

    /// The flows crossing the host port now, every worker's.
    pub fn host_flows(&self) -> crate::core::host::HostFlowStats {
        self.shared.host_flows.stats()
    }

    /// NetworkPolicy's connections tracked now, and what the tables did with those
    /// they could not fit, every worker's.
    pub fn conntrack(&self) -> (u64, crate::core::conntrack::OverflowStats) {
        (
            self.shared.conntrack_live(),
            self.shared.conntrack_overflow(),
        )
    }

    /// What the workers share.
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Each worker's loop counters and NetworkPolicy table, by worker.
    pub(crate) fn worker_stats(
        &self,
    ) -> Vec<(
        worker::LoopSnapshot,
        u64,
        crate::core::conntrack::OverflowStats,
    )> {
        let conntrack = self.shared.conntrack_per_worker();
        (self.shared.loop_stats().into_iter().zip(conntrack))
            .map(|(l, (live, overflow))| (l, live, overflow))
            .collect()
    }

    /// The workers that have stopped going round their loop.
    pub fn stalled_workers(&self) -> Vec<usize> {
        self.shared.stalled_workers()
    }

    /// Whether shutdown has begun.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Gives queue `q` of a port to worker `q` and waits until each took it.
    pub(crate) fn hand_queues(
        &self,
        id: PortId,
        counters: &Arc<Counters>,
        queues: Queues,
    ) -> Result<(), DaemonError> {
        let workers = self.workers.lock();
        let (tx, rx) = crossbeam::channel::unbounded();
        let n = queues.len();
        for (w, queue) in queues.into_iter().enumerate() {
            workers[w].send(Command::AddQueue {
                id,
                counters: counters.clone(),
                queue,
                done: tx.clone(),
            });
        }
        for w in 0..n {
            let polled = rx
                .recv_timeout(WORKER_ACK)
                .map_err(|_| DaemonError::WorkerStuck(w))?;
            if !polled {
                return Err(DaemonError::QueueNotPolled(id));
            }
        }
        Ok(())
    }

    /// Makes every worker close its queue of a port and waits until they did.
    pub(crate) fn close_queues(&self, id: PortId) -> Result<(), DaemonError> {
        let workers = self.workers.lock();
        let (tx, rx) = crossbeam::channel::unbounded();
        for w in workers.iter() {
            w.send(Command::RemovePort {
                id,
                done: tx.clone(),
            });
        }
        for w in 0..workers.len() {
            rx.recv_timeout(WORKER_ACK)
                .map_err(|_| DaemonError::WorkerStuck(w))?;
        }
        Ok(())
    }

    /// Compiles the policy for the pods of `state`, then builds and publishes a
    /// snapshot of it: routes, ports with their rules, peers.
    pub(crate) fn publish(&self, state: &mut State) -> Result<(), DaemonError> {
        state.recompile();
        let pods = state.pods.iter().map(|p| PortEntry {
            policy: state.rules_of(p.entry.ip),
            ..p.entry.clone()
        });
        let mut tables = Tables::build(
            self.node.clone(),
            state.host.clone(),
            pods,
            state.peers.clone(),
            self.tunnel.clone(),
        )?;
        tables.policy_generation = state.policy.generation;
        tables.services = state.translation.compiled.clone();
        self.tables.store(Arc::new(tables));
        Ok(())
    }

    /// Makes `table` the ClusterIP Services the workers translate (`services =
    /// "switch"`): compiled here, off the datapath (each port's usable endpoints and
    /// Maglev table, sizes kept from the table in force where they fit), and
    /// published with the next snapshot. Each worker then drops its UDP
    /// translations to endpoints that left. A table that fails its checks is
    /// refused whole and the one in force stays.
    pub fn set_service_table(&self, table: Arc<ServiceTable>) -> Result<(), DaemonError> {
        let cidr = match (self.settings.host.services, self.settings.host.service_cidr) {
            (ServicesMode::Switch, Some(cidr)) => cidr,
            _ => return Err(DaemonError::ServicesOff),
        };
        let mut state = self.state.lock();
        let previous = state.translation.compiled.as_deref();
        let generation = previous.map_or(1, |s| s.generation() + 1);
        let seed = state.translation.seed;
        let compiled = Services::compile(table, cidr, seed, generation, previous)?;
        state.translation.compiled = Some(Arc::new(compiled));
        self.publish(&mut state)
    }

    /// What a runtime is told of an attached port.
    pub(crate) fn attachment(&self, entry: &PortEntry) -> Attachment {
        Attachment {
            interface: entry.name.clone(),
            mac: entry.mac.to_string(),
            sandbox: entry.netns.clone().unwrap_or_default(),
            ip: entry.ip,
            prefix_len: self.node.subnet.prefix_len(),
            gateway: self.node.gateway,
            ipv6: (self.node.v6.zip(entry.ip6)).map(|(v6, ip)| weft_proto::Address6 {
                ip,
                prefix_len: v6.subnet.prefix_len(),
                gateway: v6.gateway,
            }),
            mtu: self.node.pod_mtu,
            // Only AF_XDP ports take no offloads.
            port: if entry.offloads {
                weft_proto::PortType::Tap
            } else {
                weft_proto::PortType::Afxdp
            },
        }
    }

    /// Writes the view in force, if it is not saved yet, and stops the workers; their
    /// queues close. The host port's TAP goes with them; the pods' TAPs are
    /// persistent and stay, with their traffic resuming when a new weftd reopens them.
    ///
    /// The host routes of direct routing go too: with weft0 gone they lead nowhere.
    /// So do the egress masquerade's table and the IPv6 source rules. (A daemon
    /// that crashes leaves them, and the next one takes them over.)
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.saver.stop();
        let mut workers = self.workers.lock();
        worker::stop(&self.shared, &mut workers);
        if self.settings.tunnel.direct_routing {
            match self.host.sync_direct_routes(&[]) {
                Ok(n) => log::info!("direct routing: removed {n} host routes"),
                Err(e) => log::error!("direct routing: removing the host routes: {e}"),
            }
        }
        if self.settings.host.masquerade {
            match self.host.set_masquerade(None) {
                Ok(()) => log::info!("egress masquerade: removed"),
                Err(e) => log::error!("egress masquerade: removing it: {e}"),
            }
        }
        match self.host.close_host_port() {
            Ok(true) => log::info!("IPv6 source rules: removed"),
            Ok(false) => {}
            Err(e) => log::error!("IPv6 source rules: removing them: {e}"),
        }
    }
}
