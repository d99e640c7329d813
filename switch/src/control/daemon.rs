//! The control plane: owns the ports, peers and address pool, builds forwarding
//! snapshots, and serves the control socket. It runs on a small tokio runtime and
//! never on the workers; blocking steps (entering a netns, waiting for workers) run
//! on tokio's blocking pool.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use weft_cni::proto::{
    self, AttachRequest, Attachment, AttachmentKey, CheckRequest, DetachRequest, ErrorKind,
    ErrorReply, Reply, Request, RequestEnvelope, Response, ResponseEnvelope, PROTOCOL_VERSION,
};
use weft_ipam::{Key, Pool};

use crate::control::config::{read_peers, NodeEntry, Settings};
use crate::tables::counters::Counters;
use crate::core as datapath;
use crate::mac::MacAddr;
use crate::control::netlink::{self, LinkSpec, NetlinkError, RouteSpec};
use crate::tables::{NodeConfig, PeerEntry, PortEntry, PortId, PortKind, Tables, TablesError};
use crate::io::tap::{self, TapError, TapQueue};
use crate::io::udp::{self, Lanes};
use crate::io::clock;
use crate::io::worker::{self, Command, Shared, WorkerHandle};
use crate::tables::health::PeerHealth;

/// How long the control plane waits for workers to take or drop a queue.
const WORKER_ACK: Duration = Duration::from_secs(5);
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the peers file is checked for changes.
const PEERS_POLL: Duration = Duration::from_secs(1);

/// Why the daemon could not start or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Bad settings or peers file.
    #[error(transparent)]
    Config(#[from] crate::control::config::ConfigError),
    /// A TAP device could not be created.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// Netlink or netns failure.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The forwarding tables could not be built.
    #[error(transparent)]
    Tables(#[from] TablesError),
    /// The address pool failed.
    #[error("address pool: {0}")]
    Ipam(#[from] weft_ipam::Error),
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A request that cannot be served as asked.
    #[error("{0}")]
    Invalid(String),
    /// A worker could not add a port's queue to its epoll set.
    #[error("a worker could not poll a queue of port {0:?}; see the log")]
    QueueNotPolled(PortId),
    /// The daemon is shutting down.
    #[error("weftd is shutting down")]
    ShuttingDown,
    /// CHECK found the attachment missing or altered.
    #[error("check failed: {0}")]
    CheckFailed(String),
    /// A worker did not answer.
    #[error("worker {0} did not acknowledge within {WORKER_ACK:?}")]
    WorkerStuck(usize),
    /// A recorded pod is gone: its interface is no longer in its netns.
    #[error("{0}")]
    PodGone(String),
    /// An attachment record that cannot be read.
    #[error("{0}")]
    BadRecord(String),
}

impl DaemonError {
    fn kind(&self) -> ErrorKind {
        match self {
            DaemonError::Invalid(_)
            | DaemonError::PodGone(_)
            | DaemonError::Tap(TapError::BadName(_)) => ErrorKind::InvalidArgument,
            DaemonError::Netlink(NetlinkError::OpenNetns { .. } | NetlinkError::Setns { .. }) => {
                ErrorKind::InvalidArgument
            }
            DaemonError::Ipam(weft_ipam::Error::Exhausted { .. }) => ErrorKind::Exhausted,
            DaemonError::Ipam(
                weft_ipam::Error::OutOfRange { .. }
                | weft_ipam::Error::Reserved { .. }
                | weft_ipam::Error::AlreadyAllocated { .. }
                | weft_ipam::Error::KeyHoldsOther { .. }
                | weft_ipam::Error::InvalidKey { .. },
            ) => ErrorKind::InvalidArgument,
            DaemonError::WorkerStuck(_) | DaemonError::ShuttingDown => ErrorKind::Unavailable,
            DaemonError::CheckFailed(_) => ErrorKind::CheckFailed,
            _ => ErrorKind::Internal,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

struct Pod {
    key: Key,
    entry: PortEntry,
}

/// How [`Daemon::plug`] finds the pod's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plug {
    /// A new attach: the interface must not exist yet.
    Create,
    /// A restart: the interface persisted and must still be there.
    Reopen,
}

/// What [`Daemon::retire`] does with a pod's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Device {
    /// Delete it: the pod is detached, or its attach failed.
    Delete,
    /// Keep it: a pod from before a restart that could not be reopened may still run.
    Keep,
}

/// What the pool records with an address, so a restarted daemon finds the pod again.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct AttachMeta {
    netns: String,
}

impl AttachMeta {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain struct serializes")
    }

    fn decode(bytes: &[u8]) -> Result<AttachMeta, DaemonError> {
        serde_json::from_slice(bytes)
            .map_err(|e| DaemonError::BadRecord(format!("unreadable attachment record: {e}")))
    }
}

struct State {
    host: PortEntry,
    pods: Vec<Pod>,
    peers: Vec<PeerEntry>,
    /// Next generation of each slot ever used; slots in `free` can be reused.
    generations: Vec<u32>,
    free: Vec<u32>,
}

/// A running weftd.
pub struct Daemon {
    settings: Settings,
    node: Arc<NodeConfig>,
    tables: Arc<ArcSwap<Tables>>,
    tunnel: Arc<Counters>,
    shared: Arc<Shared>,
    workers: Mutex<Vec<WorkerHandle>>,
    /// Set when shutdown begins: the daemon no longer serves ADD.
    stopping: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
    pool: Pool,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("node", &self.node.name)
            .finish()
    }
}

fn peer_entries(settings: &Settings, nodes: &[NodeEntry], old: &[PeerEntry]) -> Vec<PeerEntry> {
    nodes
        .iter()
        .filter(|n| n.name != settings.node_name)
        .map(|n| {
            let addr = SocketAddrV4::new(n.underlay_ip, settings.port);
            // Keep the counters, and what was learned, of a peer that did not change.
            let kept = old.iter().find(|p| p.name == n.name && p.addr == addr);
            PeerEntry {
                name: n.name.clone(),
                addr,
                subnet: n.pod_subnet,
                vtep_mac: n.vtep_mac,
                counters: kept.map_or_else(
                    || Arc::new(Counters::new(settings.workers)),
                    |p| p.counters.clone(),
                ),
                health: kept.map_or_else(
                    || Arc::new(PeerHealth::new(clock::now())),
                    |p| p.health.clone(),
                ),
            }
        })
        .collect()
}

impl Daemon {
    /// Creates the host port and the workers and loads the peers.
    pub fn start(settings: Settings) -> Result<Arc<Daemon>, DaemonError> {
        let nodes = match &settings.peers {
            Some(p) => read_peers(p)?,
            None => Vec::new(),
        };
        let me = nodes.iter().find(|n| n.name == settings.node_name);
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
        let gateway = settings.gateway();
        let node = Arc::new(NodeConfig {
            name: settings.node_name.clone(),
            router_mac,
            subnet: settings.pod_subnet,
            gateway,
            cluster: settings.cluster_cidr,
            mode: settings.mode,
            vni: settings.vni,
            pod_mtu: settings.pod_mtu(),
            max_datagram: settings.underlay_mtu as usize - 28,
            heartbeat: settings.heartbeat,
        });
        let pool = Pool::open(&settings.state_dir.join("ipam.redb"), settings.pod_subnet)?;
        let tunnel = Arc::new(Counters::new(settings.workers));

        // The host port, in the daemon's own namespace.
        let host_queues = tap::open(&settings.host_port, settings.port_queues)?;
        netlink::configure(&LinkSpec {
            name: settings.host_port.clone(),
            mac: MacAddr::for_ip(gateway),
            mtu: settings.pod_mtu(),
            addr: gateway,
            prefix_len: 32,
            routes: vec![RouteSpec::OnLink {
                dst: settings.cluster_cidr,
                src: gateway,
            }],
        })?;
        let host = PortEntry {
            id: PortId {
                slot: 0,
                generation: 0,
            },
            kind: PortKind::Host,
            name: settings.host_port.clone(),
            mac: MacAddr::for_ip(gateway),
            ip: gateway,
            container_id: None,
            netns: None,
            queues: settings.port_queues as u16,
            counters: Arc::new(Counters::new(settings.workers)),
        };
        let peers = peer_entries(&settings, &nodes, &[]);
        let tables = Arc::new(ArcSwap::from_pointee(Tables::build(
            node.clone(),
            host.clone(),
            [],
            peers.clone(),
            tunnel.clone(),
        )?));
        let sockets = udp::tunnel_sockets(
            SocketAddrV4::new(settings.underlay_ip, settings.port),
            settings.workers,
        )
        .map_err(io_err(format!(
            "binding the tunnel port {}:{}",
            settings.underlay_ip, settings.port
        )))?;
        let lanes = Lanes::bind(settings.underlay_ip, datapath::LANES).map_err(io_err(format!(
            "binding the tunnel's source ports on {}",
            settings.underlay_ip
        )))?;
        log::info!("tunnel source ports {:?}", lanes.ports());
        let (shared, workers) =
            worker::spawn(
                tables.clone(),
                sockets,
                Arc::new(lanes),
                worker::Tuning {
                    poll_max: settings.poll,
                    heartbeat: settings.heartbeat,
                },
            )
                .map_err(io_err("starting the workers"))?;
        let daemon = Arc::new(Daemon {
            settings,
            node,
            tables,
            tunnel,
            shared,
            workers: Mutex::new(workers),
            stopping: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(State {
                host,
                pods: Vec::new(),
                peers,
                generations: vec![1],
                free: Vec::new(),
            }),
            pool,
        });
        let host = daemon.state.lock().host.clone();
        daemon.hand_queues(host.id, &host.counters, host_queues)?;
        daemon.restore()?;
        Ok(daemon)
    }

    /// The settings the daemon runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Gives queue `q` of a port to worker `q` and waits until each took it.
    fn hand_queues(
        &self,
        id: PortId,
        counters: &Arc<Counters>,
        queues: Vec<TapQueue>,
    ) -> Result<(), DaemonError> {
        let workers = self.workers.lock();
        let (tx, rx) = crossbeam::channel::unbounded();
        let n = queues.len();
        for (w, queue) in queues.into_iter().enumerate() {
            workers[w].send(Command::AddQueue {
                id,
                counters: counters.clone(),
                queue: Box::new(queue),
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
    fn close_queues(&self, id: PortId) -> Result<(), DaemonError> {
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

    /// Builds and publishes a snapshot of `state`.
    fn publish(&self, state: &State) -> Result<(), DaemonError> {
        let tables = Tables::build(
            self.node.clone(),
            state.host.clone(),
            state.pods.iter().map(|p| p.entry.clone()),
            state.peers.clone(),
            self.tunnel.clone(),
        )?;
        self.tables.store(Arc::new(tables));
        Ok(())
    }

    fn attachment(&self, entry: &PortEntry) -> Attachment {
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

    /// Attaches a pod: address, interface in its netns, queues, routes.
    pub fn attach(&self, req: &AttachRequest) -> Result<Attachment, DaemonError> {
        // The pool's rules for a key are Linux's for the interface name.
        let key = Key::new(&req.container_id, &req.ifname);
        key.validate()?;
        // One attach or detach at a time: they are rare next to packets, and ordering
        // them keeps slots, snapshots and the pool consistent.
        let mut state = self.state.lock();
        // Checked under the lock, so no attach starts once shutdown has begun.
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Err(DaemonError::ShuttingDown);
        }
        if let Some(pod) = state.pods.iter().find(|p| p.key == key) {
            if pod.entry.netns.as_deref() != Some(req.netns.as_str()) {
                return Err(DaemonError::Invalid(format!(
                    "container {} interface {} is already attached in {}",
                    req.container_id,
                    req.ifname,
                    pod.entry.netns.as_deref().unwrap_or("?")
                )));
            }
            if let Some(wanted) = req.requested_ip.filter(|ip| *ip != pod.entry.ip) {
                return Err(DaemonError::Invalid(format!(
                    "container {} interface {} already holds {}, not the requested {wanted}",
                    req.container_id, req.ifname, pod.entry.ip,
                )));
            }
            return Ok(self.attachment(&pod.entry));
        }
        let meta = AttachMeta {
            netns: req.netns.clone(),
        };
        let reservation = self.pool.reserve(&key, req.requested_ip, &meta.encode())?;
        let ip = reservation.allocation().ip;
        // The address is decided; its commit (an fsync) runs while the interface is
        // made, which takes longer. A crash in between leaves either no record (the
        // runtime's DEL then deletes the interface by name, as for any failed ADD) or
        // a record whose interface restore reopens or, if it is missing, releases.
        let (committed, plugged) = std::thread::scope(|s| {
            let commit = s.spawn(move || reservation.commit());
            let plugged = self.plug(&mut state, key.clone(), &req.netns, ip, Plug::Create);
            let committed = match commit.join() {
                Ok(committed) => committed.map_err(DaemonError::from),
                Err(_) => Err(io_err("committing the allocation")(std::io::Error::other(
                    "the commit thread panicked",
                ))),
            };
            (committed, plugged)
        });
        let result = match (committed, plugged) {
            (Ok(_), Ok(entry)) => match self.publish(&state) {
                Ok(()) => Ok(entry),
                Err(e) => {
                    self.unplug(&mut state, &key);
                    Err(e)
                }
            },
            (Ok(_), Err(e)) => Err(e),
            (Err(e), Ok(_)) => {
                self.unplug(&mut state, &key);
                // Nothing was written, so nothing is released.
                return Err(e);
            }
            (Err(_), Err(e)) => return Err(e),
        };
        match result {
            Ok(entry) => {
                log::info!(
                    "attached {} {} in {} as {ip}",
                    req.container_id,
                    req.ifname,
                    req.netns,
                );
                Ok(self.attachment(&entry))
            }
            Err(e) => {
                if let Err(re) = self.pool.release(&key) {
                    log::error!("releasing {ip} after a failed attach: {re}");
                }
                Err(e)
            }
        }
    }

    /// Creates (or, after a restart, reopens) the pod's interface in its netns, hands
    /// its queues to the workers and records the port. The caller publishes.
    fn plug(
        &self,
        state: &mut State,
        key: Key,
        netns: &str,
        ip: Ipv4Addr,
        how: Plug,
    ) -> Result<PortEntry, DaemonError> {
        let mac = MacAddr::for_ip(ip);
        let spec = LinkSpec {
            name: key.ifname.clone(),
            mac,
            mtu: self.node.pod_mtu,
            addr: ip,
            prefix_len: self.settings.pod_subnet.prefix_len(),
            routes: vec![RouteSpec::DefaultVia(self.node.gateway)],
        };
        let queues = self.settings.port_queues;
        let path = PathBuf::from(netns);
        let queues = netlink::in_netns(&path, || -> Result<Vec<TapQueue>, DaemonError> {
            let exists = netlink::link_exists(&spec.name)?;
            match (how, exists) {
                (Plug::Create, true) => {
                    return Err(DaemonError::Invalid(format!(
                        "an interface named {} already exists in {netns}",
                        spec.name
                    )))
                }
                (Plug::Reopen, false) => {
                    return Err(DaemonError::PodGone(format!(
                        "interface {} is gone from {netns}",
                        spec.name
                    )))
                }
                _ => {}
            }
            // A reopened device belongs to a pod that was running: whatever fails
            // here, it stays, as does the pod's address (see `restore`).
            let queues = tap::open(&spec.name, queues)?;
            let configured = netlink::configure(&spec).and_then(|()| {
                // The device outlives the daemon, so pods keep their interface
                // across a restart; detach deletes it.
                queues[0].set_persist(true).map_err(NetlinkError::Socket)
            });
            if let Err(e) = configured {
                if how == Plug::Create {
                    // Not persistent yet (or no longer): it goes with the queues.
                    let _ = queues[0].set_persist(false);
                }
                return Err(e.into());
            }
            Ok(queues)
        })?;
        let slot = state.free.pop().unwrap_or_else(|| {
            state.generations.push(0);
            (state.generations.len() - 1) as u32
        });
        let id = PortId {
            slot,
            generation: state.generations[slot as usize],
        };
        state.generations[slot as usize] = state.generations[slot as usize].wrapping_add(1);
        let n = queues.len() as u16;
        let entry = PortEntry {
            id,
            kind: PortKind::Pod,
            name: key.ifname.clone(),
            mac,
            ip,
            container_id: Some(key.container_id.clone()),
            netns: Some(netns.to_owned()),
            queues: n,
            counters: Arc::new(Counters::new(self.settings.workers)),
        };
        state.pods.push(Pod {
            key: key.clone(),
            entry: entry.clone(),
        });
        if let Err(e) = self.hand_queues(id, &entry.counters, queues) {
            let pod = state.pods.pop().expect("the pod just pushed");
            let device = match how {
                Plug::Create => Device::Delete,
                Plug::Reopen => Device::Keep,
            };
            self.retire(state, pod, device);
            return Err(e);
        }
        Ok(entry)
    }

    /// Undoes a [`Daemon::plug`] that created the pod's interface, as far as it got.
    fn unplug(&self, state: &mut State, key: &Key) {
        if let Some(i) = state.pods.iter().position(|p| &p.key == key) {
            let pod = state.pods.swap_remove(i);
            self.retire(state, pod, Device::Delete);
        }
    }

    /// Retires `pod`, already out of `state.pods`: the workers close its queues, its
    /// slot is freed, and its (persistent) device is deleted from the pod's netns or
    /// kept. Every step tolerates what is already gone.
    fn retire(&self, state: &mut State, pod: Pod, device: Device) {
        let key = &pod.key;
        if let Err(e) = self.close_queues(pod.entry.id) {
            log::error!(
                "closing the queues of {} {}: {e}",
                key.container_id,
                key.ifname
            );
        }
        state.free.push(pod.entry.id.slot);
        if let (Device::Delete, Some(netns)) = (device, &pod.entry.netns) {
            self.delete_interface(netns, &key.ifname);
        }
    }

    /// Brings back the pods recorded in the pool after a restart: their interfaces
    /// persisted, so the daemon reopens their queues. Attachments whose netns or
    /// interface is gone are released.
    fn restore(&self) -> Result<(), DaemonError> {
        let allocations = self.pool.list()?;
        if allocations.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock();
        let (mut restored, mut released, mut kept) = (0, 0, 0);
        for alloc in allocations {
            let outcome = AttachMeta::decode(&alloc.meta).and_then(|meta| {
                self.plug(
                    &mut state,
                    alloc.key.clone(),
                    &meta.netns,
                    alloc.ip,
                    Plug::Reopen,
                )
                .map(|_| ())
            });
            let (who, ip) = (&alloc.key, alloc.ip);
            match outcome {
                Ok(()) => restored += 1,
                // Surely gone (or never to be found again): its address is free.
                Err(
                    e @ (DaemonError::PodGone(_)
                    | DaemonError::BadRecord(_)
                    | DaemonError::Netlink(NetlinkError::OpenNetns { .. })),
                ) => {
                    log::warn!(
                        "not restoring {} {} ({ip}): {e}; releasing it",
                        who.container_id,
                        who.ifname
                    );
                    self.pool.release(who)?;
                    released += 1;
                }
                // The pod may still be running: its address and interface stay
                // until its DEL, or GC, says it is gone.
                Err(e) => {
                    log::error!(
                        "could not restore {} {} ({ip}): {e}; keeping its address and \
                         interface, with no traffic, until its DEL or a GC",
                        who.container_id,
                        who.ifname
                    );
                    kept += 1;
                }
            }
        }
        self.publish(&state)?;
        log::info!(
            "restored {restored} pods, released {released} that are gone, \
             kept {kept} that could not be restored"
        );
        Ok(())
    }

    /// Detaches a pod. Succeeds when it, or any part of it, is already gone; always
    /// releases the address.
    pub fn detach(&self, req: &DetachRequest) -> Result<Option<Ipv4Addr>, DaemonError> {
        let key = Key::new(&req.container_id, &req.ifname);
        let mut state = self.state.lock();
        let known = state.pods.iter().any(|p| p.key == key);
        let released = self.detach_locked(&mut state, &key)?;
        // An ADD that failed, or that weftd died in the middle of, may have left its
        // interface behind without a record; delete it by name, as the reference
        // plugins' DEL does, unless another attachment owns that name there.
        let stray = req.netns.as_deref().filter(|netns| {
            !known
                && !state
                    .pods
                    .iter()
                    .any(|p| p.entry.netns.as_deref() == Some(*netns) && p.key.ifname == req.ifname)
        });
        if let Some(netns) = stray {
            if self.delete_interface(netns, &req.ifname) {
                log::info!("deleted stray interface {} in {netns}", req.ifname);
            }
        }
        Ok(released)
    }

    /// Deletes interface `ifname` in `netns` if it is there, and says whether it was;
    /// a netns that is gone or an interface that is not there is no error.
    fn delete_interface(&self, netns: &str, ifname: &str) -> bool {
        if !tap::valid_ifname(ifname) {
            return false;
        }
        let name = ifname.to_owned();
        match netlink::in_netns(Path::new(netns), move || netlink::delete_link(&name)) {
            Ok(deleted) => deleted,
            // The pod and its interface went together.
            Err(NetlinkError::OpenNetns { .. }) => false,
            Err(e) => {
                log::warn!("deleting interface {ifname} in {netns}: {e}");
                false
            }
        }
    }

    fn detach_locked(&self, state: &mut State, key: &Key) -> Result<Option<Ipv4Addr>, DaemonError> {
        if let Some(i) = state.pods.iter().position(|p| &p.key == key) {
            // Unroute first, then close the queues and delete the device.
            let pod = state.pods.swap_remove(i);
            if let Err(e) = self.publish(state) {
                state.pods.push(pod);
                return Err(e);
            }
            self.retire(state, pod, Device::Delete);
            log::info!("detached {} {}", key.container_id, key.ifname);
        }
        Ok(self.pool.release(key)?.map(|a| a.ip))
    }

    /// Verifies that an attachment's interface, address and routes are in place.
    pub fn check(&self, req: &CheckRequest) -> Result<Attachment, DaemonError> {
        let key = Key::new(&req.container_id, &req.ifname);
        let entry = {
            let state = self.state.lock();
            state
                .pods
                .iter()
                .find(|p| p.key == key)
                .map(|p| p.entry.clone())
        };
        let entry = entry.ok_or_else(|| {
            DaemonError::CheckFailed(format!(
                "no attachment for container {} interface {}",
                req.container_id, req.ifname
            ))
        })?;
        if entry.netns.as_deref() != Some(req.netns.as_str()) {
            return Err(DaemonError::CheckFailed(format!(
                "container {} interface {} is attached in {}, not {}",
                req.container_id,
                req.ifname,
                entry.netns.as_deref().unwrap_or("?"),
                req.netns
            )));
        }
        let name = req.ifname.clone();
        let link = match netlink::in_netns(Path::new(&req.netns), move || netlink::inspect(&name)) {
            Ok(link) => link,
            Err(NetlinkError::OpenNetns { path, source }) => {
                return Err(DaemonError::CheckFailed(format!(
                    "netns {path} is gone: {source}"
                )))
            }
            Err(NetlinkError::Setns { path, source }) => {
                return Err(DaemonError::CheckFailed(format!(
                    "{path} is no longer a network namespace: {source}"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let fail = |what: String| {
            DaemonError::CheckFailed(format!("{} in {}: {what}", req.ifname, req.netns))
        };
        let link = link.ok_or_else(|| fail("the interface is missing".into()))?;
        let prefix = self.settings.pod_subnet.prefix_len();
        if link.mac != Some(entry.mac) {
            return Err(fail(format!("MAC is {:?}, want {}", link.mac, entry.mac)));
        }
        if link.mtu != Some(self.node.pod_mtu) {
            return Err(fail(format!(
                "MTU is {:?}, want {}",
                link.mtu, self.node.pod_mtu
            )));
        }
        if !link.up {
            return Err(fail("the interface is down".into()));
        }
        if !link.addrs.contains(&(entry.ip, prefix)) {
            return Err(fail(format!(
                "address {}/{prefix} is missing (has {:?})",
                entry.ip, link.addrs
            )));
        }
        if !link.default_gateways.contains(&self.node.gateway) {
            return Err(fail(format!("no default route via {}", self.node.gateway)));
        }
        Ok(self.attachment(&entry))
    }

    /// Releases every attachment and address whose key is not in `valid`.
    pub fn gc(&self, valid: &[AttachmentKey]) -> Result<Vec<AttachmentKey>, DaemonError> {
        let keep: std::collections::HashSet<Key> = valid
            .iter()
            .map(|k| Key::new(&k.container_id, &k.ifname))
            .collect();
        // Under the state lock: no attach can allocate between the sweep and `retain`.
        let mut state = self.state.lock();
        let stale: Vec<Key> = state
            .pods
            .iter()
            .filter(|p| !keep.contains(&p.key))
            .map(|p| p.key.clone())
            .collect();
        // As much as can be collected is, as the CNI spec asks; the first failure is
        // reported after.
        let mut failed = None;
        for key in &stale {
            if let Err(e) = self.detach_locked(&mut state, key) {
                log::warn!("gc of {} {}: {e}", key.container_id, key.ifname);
                failed.get_or_insert(e);
            }
        }
        let orphans = self.pool.retain(|k| keep.contains(k))?;
        let mut released: Vec<AttachmentKey> = stale
            .into_iter()
            .chain(orphans.into_iter().map(|a| a.key))
            .map(|k| AttachmentKey {
                container_id: k.container_id,
                ifname: k.ifname,
            })
            .collect();
        released.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        released.dedup();
        if !released.is_empty() {
            log::info!("gc released {} attachments", released.len());
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }

    /// Rereads the peers file and applies it. Returns whether anything changed.
    pub fn reload_peers(&self) -> Result<bool, DaemonError> {
        let Some(path) = &self.settings.peers else {
            return Ok(false);
        };
        let nodes = read_peers(path)?;
        let mut state = self.state.lock();
        let peers = peer_entries(&self.settings, &nodes, &state.peers);
        let same = peers.len() == state.peers.len()
            && peers.iter().zip(&state.peers).all(|(a, b)| {
                a.name == b.name
                    && a.addr == b.addr
                    && a.subnet == b.subnet
                    && a.vtep_mac == b.vtep_mac
            });
        if same {
            return Ok(false);
        }
        let old = std::mem::replace(&mut state.peers, peers);
        if let Err(e) = self.publish(&state) {
            state.peers = old;
            return Err(e);
        }
        log::info!(
            "peers reloaded: {}",
            state
                .peers
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(true)
    }

    fn status(&self) -> proto::Status {
        // Ready to serve ADD: not shutting down, and the pool has a free address.
        let held = self.pool.len();
        let ready = !self.stopping.load(std::sync::atomic::Ordering::Acquire)
            && held.is_ok_and(|n| n < u64::from(self.pool.capacity()));
        let state = self.state.lock();
        proto::Status {
            node: self.node.name.clone(),
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            mode: self.node.mode.to_string(),
            pod_subnet: self.node.subnet.to_string(),
            cluster_cidr: self.node.cluster.to_string(),
            gateway: self.node.gateway,
            underlay: std::net::SocketAddr::V4(SocketAddrV4::new(
                self.settings.underlay_ip,
                self.settings.port,
            )),
            workers: self.settings.workers,
            mtu: self.node.pod_mtu,
            pods: state.pods.len(),
            peers: state.peers.len(),
            ready,
        }
    }

    fn ports(&self) -> Vec<proto::PortInfo> {
        let tables = self.tables.load();
        tables
            .ports
            .iter()
            .map(|p| proto::PortInfo {
                kind: match p.kind {
                    PortKind::Host => "host".into(),
                    PortKind::Pod => "pod".into(),
                },
                name: p.name.clone(),
                container_id: p.container_id.clone(),
                netns: p.netns.clone(),
                ip: Some(p.ip),
                mac: p.mac.to_string(),
                counters: p.counters.snapshot().to_proto(),
            })
            .collect()
    }

    fn peers(&self) -> Vec<proto::PeerInfo> {
        let tables = self.tables.load();
        let mut out: Vec<_> = tables
            .peers
            .iter()
            .map(|p| proto::PeerInfo {
                name: p.name.clone(),
                underlay: *p.addr.ip(),
                pod_subnet: p.subnet.to_string(),
                vtep_mac: p.vtep_mac.to_string(),
                counters: p.counters.snapshot().to_proto(),
            })
            .collect();
        out.push(proto::PeerInfo {
            name: "(unknown senders)".into(),
            underlay: Ipv4Addr::UNSPECIFIED,
            pod_subnet: String::new(),
            vtep_mac: String::new(),
            counters: tables.tunnel.snapshot().to_proto(),
        });
        out
    }

    fn routes(&self) -> Vec<proto::RouteInfo> {
        let tables = self.tables.load();
        tables
            .fib
            .routes()
            .into_iter()
            .map(|(net, hop)| proto::RouteInfo {
                prefix: net.to_string(),
                next_hop: tables.describe(hop),
            })
            .collect()
    }

    /// Serves one decoded request.
    pub fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Attach(req) => self.attach(&req).map(Reply::Attached),
            Request::Detach(req) => self
                .detach(&req)
                .map(|released_ip| Reply::Detached { released_ip }),
            Request::Check(req) => self.check(&req).map(Reply::Checked),
            Request::Gc(req) => self
                .gc(&req.valid)
                .map(|released| Reply::Collected { released }),
            Request::Status => Ok(Reply::Status(self.status())),
            Request::Ports => Ok(Reply::Ports {
                ports: self.ports(),
            }),
            Request::Peers => Ok(Reply::Peers {
                peers: self.peers(),
            }),
            Request::Routes => Ok(Reply::Routes {
                routes: self.routes(),
            }),
        };
        match result {
            Ok(reply) => Response::Ok(reply),
            Err(e) => {
                log::warn!("request failed: {e}");
                Response::Error(ErrorReply {
                    kind: e.kind(),
                    message: e.to_string(),
                })
            }
        }
    }

    /// Stops the workers; their queues close. The host port's TAP goes with them; the
    /// pods' TAPs are persistent and stay, with their traffic resuming when a new
    /// weftd reopens them.
    pub fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        let mut workers = self.workers.lock();
        worker::stop(&self.shared, &mut workers);
    }
}

/// Decodes one request from the wire.
pub fn decode(bytes: &[u8]) -> Result<Request, ErrorReply> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| ErrorReply {
        kind: ErrorKind::BadRequest,
        message: format!("request is not JSON: {e}"),
    })?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(ErrorReply {
                kind: ErrorKind::BadVersion,
                message: format!(
                "protocol version {v} is not spoken here; this daemon speaks {PROTOCOL_VERSION}"
            ),
            })
        }
        None => {
            return Err(ErrorReply {
                kind: ErrorKind::BadRequest,
                message: "request has no protocol version".into(),
            })
        }
    }
    serde_json::from_value::<RequestEnvelope>(value)
        .map(|e| e.request)
        .map_err(|e| ErrorReply {
            kind: ErrorKind::BadRequest,
            message: format!("bad request: {e}"),
        })
}

async fn serve_conn(daemon: Arc<Daemon>, mut stream: UnixStream) {
    let mut body = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(true);
            }
            if body.len() + n > proto::MAX_MESSAGE {
                return Ok(false);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let response = match read {
        Ok(Ok(true)) => match decode(&body) {
            Ok(request) => {
                let d = daemon.clone();
                tokio::task::spawn_blocking(move || d.handle(request))
                    .await
                    .unwrap_or_else(|_| {
                        Response::Error(ErrorReply {
                            kind: ErrorKind::Internal,
                            message: "the request handler panicked".into(),
                        })
                    })
            }
            Err(e) => Response::Error(e),
        },
        Ok(Ok(false)) => Response::Error(ErrorReply {
            kind: ErrorKind::BadRequest,
            message: format!("request larger than {} bytes", proto::MAX_MESSAGE),
        }),
        Ok(Err(e)) => {
            log::debug!("control connection: {e}");
            return;
        }
        Err(_) => Response::Error(ErrorReply {
            kind: ErrorKind::BadRequest,
            message: format!("no complete request within {REQUEST_TIMEOUT:?}"),
        }),
    };
    let out = serde_json::to_vec(&ResponseEnvelope {
        version: PROTOCOL_VERSION,
        response,
    })
    .expect("responses always serialize");
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// Binds the control socket, refusing to take over one a live daemon answers on.
pub fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::Invalid(format!(
                "another weftd is serving {}",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(io_err(format!("removing stale socket {}", path.display())))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io_err(format!("binding {}", path.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io_err(format!("setting permissions of {}", path.display())))?;
    Ok(listener)
}

/// Serves the control socket and watches the peers file until SIGTERM or SIGINT,
/// then shuts down: workers stop, the host port goes, the socket is removed.
pub async fn run(daemon: Arc<Daemon>, listener: UnixListener) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT handler"))?;
    let peers_task = tokio::spawn(watch_peers(daemon.clone()));
    let socket = daemon.settings.socket.clone();
    log::info!(
        "weftd {} serving {} ({} mode, {} workers)",
        daemon.node.name,
        socket.display(),
        daemon.node.mode,
        daemon.settings.workers
    );
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => { tokio::spawn(serve_conn(daemon.clone(), stream)); }
                Err(e) => log::warn!("accepting on {}: {e}", socket.display()),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    log::info!("shutting down");
    peers_task.abort();
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    let d = daemon.clone();
    tokio::task::spawn_blocking(move || d.shutdown())
        .await
        .map_err(|_| DaemonError::Invalid("shutdown panicked".into()))?;
    Ok(())
}

async fn watch_peers(daemon: Arc<Daemon>) {
    let Some(path) = daemon.settings.peers.clone() else {
        return;
    };
    // The file is small: compare its bytes, which catches rewrites within one mtime
    // tick and atomic renames alike.
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::time::sleep(PEERS_POLL).await;
        let now = tokio::fs::read(&path).await.ok();
        if now == last {
            continue;
        }
        last = now;
        let d = daemon.clone();
        match tokio::task::spawn_blocking(move || d.reload_peers()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::error!(
                "peers file {}: {e}; keeping the previous peers",
                path.display()
            ),
            Err(_) => log::error!("reloading peers panicked"),
        }
    }
}
