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
use parking_lot::Mutex;
use weft_cni::proto::{Attachment, PodRef};
use weft_encap::{ipv4, udp};
use weft_ipam::{Key, Pool};

use crate::control::config::Settings;
use crate::control::error::{io_err, DaemonError};
use crate::control::host::{Host, Queues, SystemHost};
use crate::control::netlink::{LinkSpec, RouteSpec};
use crate::control::peers::peer_entries;
use crate::control::policy::PolicyState;
use crate::control::store::file::FileStore;
use crate::control::store::{ClusterStore, ClusterView, NoStore};
use crate::core;
use crate::io::udp::{tunnel_sockets, Lanes};
use crate::io::worker::{self, Command, Shared, WorkerHandle};
use crate::mac::MacAddr;
use crate::tables::counters::Counters;
use crate::tables::{NodeConfig, PeerEntry, PortEntry, PortId, PortKind, Tables};

/// How long the control plane waits for workers to take or drop a queue.
pub const WORKER_ACK: Duration = Duration::from_secs(5);

/// An attached pod: its key in the pool, its port, and the Kubernetes pod it is.
#[derive(Debug)]
pub(crate) struct Pod {
    pub(crate) key: Key,
    pub(crate) entry: PortEntry,
    pub(crate) pod: Option<PodRef>,
}

/// What the daemon holds under its lock.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) host: PortEntry,
    pub(crate) pods: Vec<Pod>,
    pub(crate) peers: Vec<PeerEntry>,
    /// Next generation of each slot ever used; slots in `free` can be reused.
    pub(crate) generations: Vec<u32>,
    pub(crate) free: Vec<u32>,
    /// NetworkPolicy in force.
    pub(crate) policy: PolicyState,
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
    pub(crate) host: Arc<dyn Host>,
    pub(crate) store: Arc<dyn ClusterStore>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("node", &self.node.name)
            .finish()
    }
}

/// The store `settings` name: the peers file, or none.
fn store_of(settings: &Settings) -> Arc<dyn ClusterStore> {
    match &settings.peers {
        Some(path) => Arc::new(FileStore::new(path.clone())),
        None => Arc::new(NoStore),
    }
}

/// This node's identity and addressing, checked against what the store says of it.
fn node_config(settings: &Settings, view: &ClusterView) -> Result<NodeConfig, DaemonError> {
    let me = view.nodes.iter().find(|n| n.name == settings.node_name);
    if let Some(me) = me {
        if me.underlay_ip != settings.underlay_ip || me.pod_subnet != settings.pod_subnet {
            return Err(DaemonError::Invalid(format!(
                "the peers file lists node {} with underlay {} and subnet {}, but this daemon has {} and {}",
                me.name, me.underlay_ip, me.pod_subnet, settings.underlay_ip, settings.pod_subnet
            )));
        }
    }
    let router_mac = settings
        .vtep_mac
        .or(me.map(|m| m.vtep_mac))
        .unwrap_or_else(|| MacAddr::from_name(&settings.node_name));
    Ok(NodeConfig {
        name: settings.node_name.clone(),
        router_mac,
        subnet: settings.pod_subnet,
        gateway: settings.gateway(),
        underlay: settings.underlay_ip,
        cluster: settings.cluster_cidr,
        mode: settings.mode,
        vni: settings.vni,
        pod_mtu: settings.pod_mtu(),
        max_datagram: settings.underlay_mtu as usize - ipv4::HEADER_LEN - udp::HEADER_LEN,
        heartbeat: settings.heartbeat,
    })
}

/// The host port's entry and link: the gateway address and the cluster route.
fn host_port(settings: &Settings) -> (PortEntry, LinkSpec) {
    let gateway = settings.gateway();
    let spec = LinkSpec {
        name: settings.host_port.clone(),
        mac: MacAddr::for_ip(gateway),
        mtu: settings.pod_mtu(),
        addr: gateway,
        prefix_len: 32,
        routes: vec![RouteSpec::OnLink {
            dst: settings.cluster_cidr,
            src: gateway,
        }],
    };
    let entry = PortEntry {
        id: PortId {
            slot: 0,
            generation: 0,
        },
        kind: PortKind::Host,
        name: settings.host_port.clone(),
        mac: spec.mac,
        ip: gateway,
        container_id: None,
        netns: None,
        queues: settings.port_queues as u16,
        counters: Arc::new(Counters::new(settings.workers)),
        policy: None,
    };
    (entry, spec)
}

/// Binds the tunnel sockets and starts the workers on `tables`.
fn start_workers(
    settings: &Settings,
    tables: &Arc<ArcSwap<Tables>>,
) -> Result<(Arc<Shared>, Vec<WorkerHandle>), DaemonError> {
    let (ip, port) = (settings.underlay_ip, settings.port);
    let sockets = tunnel_sockets(SocketAddrV4::new(ip, port), settings.workers)
        .map_err(io_err(format!("binding the tunnel port {ip}:{port}")))?;
    let lanes = Lanes::bind(ip, core::LANES)
        .map_err(io_err(format!("binding the tunnel's source ports on {ip}")))?;
    log::info!("tunnel source ports {:?}", lanes.ports());
    let tuning = worker::Tuning {
        poll_max: settings.poll,
        heartbeat: settings.heartbeat,
        conntrack_max: settings.conntrack_max,
    };
    worker::spawn(tables.clone(), sockets, Arc::new(lanes), tuning)
        .map_err(io_err("starting the workers"))
}

impl Daemon {
    /// Starts a daemon on this host: the host port, the workers, the peers from the
    /// peers file, and the pods recorded before a restart.
    pub fn start(settings: Settings) -> Result<Arc<Daemon>, DaemonError> {
        let store = store_of(&settings);
        Daemon::start_with(settings, Arc::new(SystemHost), store)
    }

    /// Like [`Daemon::start`], on the host operations `host` and the cluster `store`.
    pub fn start_with(
        settings: Settings,
        host: Arc<dyn Host>,
        store: Arc<dyn ClusterStore>,
    ) -> Result<Arc<Daemon>, DaemonError> {
        let view = store.load()?;
        let node = Arc::new(node_config(&settings, &view)?);
        let pool = Pool::open(&settings.state_dir.join("ipam.redb"), settings.pod_subnet)?;
        let tunnel = Arc::new(Counters::new(settings.workers));
        let (host_entry, host_spec) = host_port(&settings);
        let host_queues = host.open_host_port(&host_spec, settings.port_queues)?;
        let peers = peer_entries(&settings, &view.nodes, &[]);
        let tables = Arc::new(ArcSwap::from_pointee(Tables::build(
            node.clone(),
            host_entry.clone(),
            [],
            peers.clone(),
            tunnel.clone(),
        )?));
        let (shared, workers) = start_workers(&settings, &tables)?;
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
                generations: vec![1],
                free: Vec::new(),
                policy: PolicyState::default(),
            }),
            pool,
            host,
            store,
        });
        daemon.hand_queues(host_entry.id, &host_entry.counters, host_queues)?;
        daemon.load_policy()?;
        daemon.restore()?;
        Ok(daemon)
    }

    /// The settings the daemon runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The forwarding snapshot the workers read now.
    pub fn tables(&self) -> Arc<Tables> {
        self.tables.load_full()
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
        self.tables.store(Arc::new(tables));
        Ok(())
    }

    /// What a runtime is told of an attached port.
    pub(crate) fn attachment(&self, entry: &PortEntry) -> Attachment {
        Attachment {
            interface: entry.name.clone(),
            mac: entry.mac.to_string(),
            sandbox: entry.netns.clone().unwrap_or_default(),
            ip: entry.ip,
            prefix_len: self.settings.pod_subnet.prefix_len(),
            gateway: self.node.gateway,
            mtu: self.node.pod_mtu,
        }
    }

    /// Stops the workers; their queues close. The host port's TAP goes with them; the
    /// pods' TAPs are persistent and stay, with their traffic resuming when a new
    /// weftd reopens them.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        let mut workers = self.workers.lock();
        worker::stop(&self.shared, &mut workers);
    }
}
