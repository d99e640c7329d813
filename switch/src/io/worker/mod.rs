//! Worker threads: each owns a tunnel socket, one queue of every port, an epoll set
//! and its scratch buffers, and runs the [`Core`] over what they deliver.
//!
//! Most frames never change thread: every port has a queue per worker and the kernel
//! keeps a flow on one queue. When a worker must send to a port it holds no queue of
//! (a port opened with fewer queues than there are workers), the frame is copied into
//! a pooled buffer and handed to the port's owning worker through a bounded lock-free
//! ring; the batch ends with one eventfd wake-up per target worker.
//!
//! A dead worker is a dead daemon. A worker that panics, or whose loop fails, aborts
//! the process (its `Lifeline`), in every build profile: left alone, its tunnel socket
//! would go on taking its `SO_REUSEPORT` share of the peers' flows, and its port
//! queues their share of the pods', and drop them all. Each worker also records when
//! it last went round its loop, at least every [`plan::LIVENESS_TICK`], so that the
//! daemon is not ready while one is stalled ([`Shared::stalled_workers`]).

use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam::channel::{Receiver, Sender};
use crossbeam::queue::ArrayQueue;
use crossbeam::utils::CachePadded;
use mio::{Poll, Token, Waker};

use crate::core::conntrack::{Conntrack, Overflow, OverflowStats, Table};
use crate::core::flowlog::{FlowLog, Recorder};
use crate::core::host::{HostFlows, HostTables};
use crate::core::{Time, HEADROOM};
use crate::crypto::stage::{SealCache, Sealer};
use crate::io::clock;
use crate::io::port::{Offload, PortQueue};
use crate::io::udp::{Lanes, Tunnel};
use crate::tables::counters::Counters;
use crate::tables::{PortId, Tables};

pub use stats::{LoopSnapshot, LoopStats, BATCH_BOUNDS};

const WAKER: Token = Token(0);
const SOCKET: Token = Token(1);
const PORT_BASE: usize = 2;
/// Frames or datagrams taken from one fd before the worker looks at the others.
const BUDGET: usize = 64;
/// Size of a receive buffer: headroom plus the largest frame (a 64 KiB super-frame).
const BUF_LEN: usize = HEADROOM + 65_536 + 64;
/// Frames one worker can have waiting in its handoff ring.
pub const RING_LEN: usize = 256;
/// Size of a handoff buffer: an Ethernet frame at the largest pod MTU.
pub const HANDOFF_LEN: usize = 9216 + weft_encap::ethernet::HEADER_LEN;
/// Handoff buffers for super-frames, shared by all workers.
const LARGE_POOL: usize = 32;
/// Size of a large handoff buffer.
const LARGE_LEN: usize = 65_536 + 64;

/// A message from the control plane to a worker.
#[derive(Debug)]
pub enum Command {
    /// Start serving this queue of a port; answer on `done` once registered.
    AddQueue {
        /// The port.
        id: PortId,
        /// The port's counters, for what happens to its frames outside the snapshot.
        counters: Arc<Counters>,
        /// The queue this worker will own.
        queue: Box<dyn PortQueue>,
        /// Acknowledgement: whether the worker now polls the queue.
        done: Sender<bool>,
    },
    /// Close this worker's queue of a port; answer on `done` once closed.
    RemovePort {
        /// The port.
        id: PortId,
        /// Acknowledgement.
        done: Sender<()>,
    },
}

/// A frame handed from one worker to another. The worker that writes it counts
/// the send on the port's counters, which it finds by the port's id.
struct Handoff {
    port: PortId,
    offload: Offload,
    len: usize,
    buf: Box<[u8]>,
}

/// What every worker shares: the rings, the wakers and the buffer pool.
pub struct Shared {
    /// The forwarding snapshot.
    pub tables: Arc<ArcSwap<Tables>>,
    inboxes: Vec<ArrayQueue<Handoff>>,
    wakers: Vec<Arc<Waker>>,
    pool: ArrayQueue<Box<[u8]>>,
    large: ArrayQueue<Box<[u8]>>,
    stop: AtomicBool,
    /// The encrypted sleeve, if it is on.
    sealer: Option<Arc<Sealer>>,
    /// The flows crossing the host port, every worker's.
    pub host_flows: HostTables,
    /// NetworkPolicy's connection tables, every worker's.
    conntrack: Arc<[Table]>,
    /// Its IPv6 ones, on a dual-stack node.
    conntrack6: Option<Arc<[Table<u128>]>>,
    /// When each worker last went round its loop, in nanoseconds of
    /// [`clock::now`]; written by that worker only.
    seen: Box<[CachePadded<AtomicU64>]>,
    /// Each worker's busy time and batch sizes; written by that worker only.
    loops: Box<[CachePadded<LoopStats>]>,
    /// Policy's verdicts, every worker's.
    pub flows: Arc<FlowLog>,
}

impl Shared {
    /// The buffer pool for a frame of `len` bytes.
    fn pool_for(&self, len: usize) -> &ArrayQueue<Box<[u8]>> {
        if len > HANDOFF_LEN {
            &self.large
        } else {
            &self.pool
        }
    }

    /// Each worker's loop counters, by worker.
    pub fn loop_stats(&self) -> Vec<LoopSnapshot> {
        self.loops.iter().map(|s| s.snapshot()).collect()
    }

    /// Each worker's NetworkPolicy table: entries now, and what it did with
    /// connections it could not fit; by worker.
    /// IPv4's and IPv6's together.
    pub fn conntrack_per_worker(&self) -> Vec<(u64, OverflowStats)> {
        let v6 = |i: usize| self.conntrack6.as_ref().map(|t| &t[i]);
        (self.conntrack.iter().enumerate())
            .map(|(i, t)| {
                let (live6, over6) = v6(i).map_or((0, OverflowStats::default()), |t| {
                    (t.live(), t.overflow_stats())
                });
                (t.live() + live6, t.overflow_stats() + over6)
            })
            .collect()
    }

    /// NetworkPolicy's connections tracked now, of both families, summed over the
    /// workers.
    pub fn conntrack_live(&self) -> u64 {
        let v6 = self.conntrack6.iter().flat_map(|t| t.iter());
        self.conntrack.iter().map(Table::live).sum::<u64>() + v6.map(Table::live).sum::<u64>()
    }

    /// What the workers' NetworkPolicy tables, of both families, did with
    /// connections they could not fit.
    pub fn conntrack_overflow(&self) -> OverflowStats {
        let v6 = self.conntrack6.as_deref().map(Conntrack::overflow_stats);
        Conntrack::overflow_stats(&self.conntrack) + v6.unwrap_or_default()
    }

    /// Records that worker `index` went round its loop at `now`.
    fn seen(&self, index: usize, now: Time) {
        self.seen[index].store(now.as_nanos(), Ordering::Relaxed);
    }

    /// The workers that have not gone round their loop for longer than
    /// [`plan::STALL`].
    pub fn stalled_workers(&self) -> Vec<usize> {
        let now = clock::now();
        (self.seen.iter().enumerate())
            .filter(|(_, seen)| plan::stalled(Time::from_nanos(seen.load(Ordering::Relaxed)), now))
            .map(|(i, _)| i)
            .collect()
    }

    /// Gives a handoff buffer back to the pool it came from.
    fn give_back(&self, buf: Box<[u8]>) {
        let _ = if buf.len() > HANDOFF_LEN {
            self.large.push(buf)
        } else {
            self.pool.push(buf)
        };
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("workers", &self.wakers.len())
            .finish()
    }
}

/// The control plane's handle on one worker.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Commands to the worker.
    pub commands: Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl WorkerHandle {
    /// Sends a command and wakes the worker.
    pub fn send(&self, cmd: Command) {
        // The receiver lives as long as the worker; a send to a stopped worker is moot.
        let _ = self.commands.send(cmd);
        let _ = self.waker.wake();
    }
}

/// How the workers run.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// The longest a worker polls after work before it sleeps (see [`crate::io::spin`]).
    pub poll_max: Duration,
    /// How often worker 0 sends every peer a heartbeat; zero for never.
    pub heartbeat: Duration,
    /// Connections each worker tracks for NetworkPolicy, at most.
    pub conntrack_max: usize,
    /// Connections one source address may hold in a worker's table, at most.
    pub conntrack_share: usize,
    /// Whether the workers translate ClusterIP Services (`services = "switch"`):
    /// each then keeps a translation table of `conntrack_max` entries, fair to
    /// sources as NetworkPolicy's is.
    pub services: bool,
    /// The cluster's IPv6 range, on a dual-stack node: each worker then keeps an
    /// IPv6 NetworkPolicy table of `conntrack_max` entries too, which counts a
    /// source outside that range as its /64.
    pub ipv6: Option<ipnet::Ipv6Net>,
    /// Test only: each worker panics once it has read this many frames (weftd's
    /// `WEFT_TEST_PANIC_WORKER_AFTER`).
    pub panic_after: Option<u64>,
    /// Whether policy's verdicts are recorded even while no one listens
    /// (`flow-log = true`).
    pub flow_log: bool,
}

/// A pool of handoff buffers.
type Pool = ArrayQueue<Box<[u8]>>;

/// The handoff buffer pools of `n` workers: frames, and super-frames.
fn handoff_pools(n: usize) -> (Pool, Pool) {
    let pool = ArrayQueue::new(RING_LEN * n.max(1));
    for _ in 0..pool.capacity() {
        let _ = pool.push(vec![0u8; HANDOFF_LEN].into_boxed_slice());
    }
    let large = ArrayQueue::new(LARGE_POOL);
    for _ in 0..LARGE_POOL {
        let _ = large.push(vec![0u8; LARGE_LEN].into_boxed_slice());
    }
    (pool, large)
}

/// Starts `sockets.len()` workers, one per tunnel socket; they send from `lanes`;
/// `sealer` seals their sleeve if encryption is on.
pub fn spawn(
    tables: Arc<ArcSwap<Tables>>,
    sockets: Vec<UdpSocket>,
    lanes: Arc<Lanes>,
    tuning: Tuning,
    sealer: Option<Arc<Sealer>>,
) -> io::Result<(Arc<Shared>, Vec<WorkerHandle>)> {
    let n = sockets.len();
    let mut polls = Vec::with_capacity(n);
    let mut wakers = Vec::with_capacity(n);
    for _ in 0..n {
        let poll = Poll::new()?;
        wakers.push(Arc::new(Waker::new(poll.registry(), WAKER)?));
        polls.push(poll);
    }
    let (pool, large) = handoff_pools(n);
    let share = tuning.conntrack_share;
    let conntrack = Conntrack::tables(n, tuning.conntrack_max, Overflow::Fair { share });
    let conntrack6 = (tuning.ipv6).map(|c| {
        let own = (u128::from(c.network()), u128::from(c.netmask()));
        Conntrack::tables_counting(n, tuning.conntrack_max, share, own)
    });
    let host_flows = HostTables::new(n, tuning.conntrack_max);
    let flows = FlowLog::new(n, tuning.flow_log);
    let nat = (tuning.services)
        .then(|| Conntrack::value_tables(n, tuning.conntrack_max, Overflow::Fair { share }));
    let shared = Arc::new(Shared {
        tables,
        inboxes: (0..n).map(|_| ArrayQueue::new(RING_LEN)).collect(),
        wakers: wakers.clone(),
        pool,
        large,
        stop: AtomicBool::new(false),
        sealer,
        host_flows: host_flows.clone(),
        conntrack: conntrack.clone(),
        conntrack6: conntrack6.clone(),
        seen: (0..n)
            .map(|_| CachePadded::new(AtomicU64::new(clock::now().as_nanos())))
            .collect(),
        loops: (0..n).map(|_| CachePadded::default()).collect(),
        flows: flows.clone(),
    });
    // Each worker builds its state on its own thread (its buffers then come from that
    // thread's allocator arena) and reports whether it could before any runs, so a
    // socket or poll set that cannot be set up fails the start instead of leaving a
    // dead worker behind.
    let mut handles = Vec::with_capacity(n);
    let mut built = Vec::with_capacity(n);
    for (index, (poll, socket)) in polls.into_iter().zip(sockets).enumerate() {
        let (tx, rx) = crossbeam::channel::unbounded();
        let (ready, ready_rx) = crossbeam::channel::bounded(1);
        let setup = Setup {
            index,
            poll,
            socket,
            lanes: lanes.clone(),
            tuning,
            conntrack: Conntrack::new(conntrack.clone(), index),
            conntrack6: (conntrack6.as_ref()).map(|t| Conntrack::new(t.clone(), index)),
            host: host_flows.worker(index),
            nat: nat.as_ref().map(|t| Conntrack::new(t.clone(), index)),
            flows: flows.recorder(index),
        };
        match spawn_one(setup, rx, shared.clone(), ready) {
            Ok(thread) => handles.push(WorkerHandle {
                commands: tx,
                waker: wakers[index].clone(),
                thread: Some(thread),
            }),
            Err(e) => {
                stop(&shared, &mut handles);
                return Err(e);
            }
        }
        built.push(ready_rx);
    }
    all_built(built, &shared, &mut handles)?;
    Ok((shared, handles))
}

/// Waits until every worker says whether it could build its state; if one could
/// not, stops them all.
fn all_built(
    built: Vec<Receiver<io::Result<()>>>,
    shared: &Shared,
    handles: &mut [WorkerHandle],
) -> io::Result<()> {
    for ready in built {
        let outcome = ready
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("a worker thread ended while starting")));
        if let Err(e) = outcome {
            stop(shared, handles);
            return Err(e);
        }
    }
    Ok(())
}

/// Starts the thread of the worker `setup` describes; it builds its state there
/// and tells `ready` whether it could, then runs, on a [`Lifeline`].
fn spawn_one(
    setup: Setup,
    commands: Receiver<Command>,
    shared: Arc<Shared>,
    ready: Sender<io::Result<()>>,
) -> io::Result<std::thread::JoinHandle<io::Result<()>>> {
    let index = setup.index;
    std::thread::Builder::new()
        .name(format!("weft-worker-{index}"))
        .spawn(move || match Worker::new(setup, commands, shared.clone()) {
            Ok(worker) => {
                let _ = ready.send(Ok(()));
                let _lifeline = Lifeline { index, shared };
                let ended = worker.run();
                if let Err(e) = &ended {
                    log::error!("worker {index}: {e}");
                }
                ended
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                Ok(())
            }
        })
}

/// Held by a running worker: aborts the process when the worker ends other than
/// by [`stop`], unwinding from a panic or returning from a failed loop. An abort,
/// not an exit, so that no other thread runs on meanwhile (the panic's message is
/// already written: the panic hook runs before the unwinding).
struct Lifeline {
    index: usize,
    shared: Arc<Shared>,
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        let why = if std::thread::panicking() {
            "panicked"
        } else if !self.shared.stop.load(Ordering::Acquire) {
            "stopped unasked"
        } else {
            return;
        };
        log::error!(
            "worker {} {why}: weftd aborts, so that its share of the flows is not lost",
            self.index
        );
        std::process::abort();
    }
}

/// Stops every worker and waits for them. Queues they own are closed.
pub fn stop(shared: &Shared, handles: &mut [WorkerHandle]) {
    shared.stop.store(true, Ordering::Release);
    for h in handles.iter() {
        let _ = h.waker.wake();
    }
    for h in handles.iter_mut() {
        if let Some(t) = h.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::error!("worker stopped with an error: {e}"),
                Err(_) => log::error!("worker panicked"),
            }
        }
    }
}

/// What one worker is built from.
struct Setup {
    index: usize,
    poll: Poll,
    socket: UdpSocket,
    lanes: Arc<Lanes>,
    tuning: Tuning,
    conntrack: Conntrack,
    conntrack6: Option<Conntrack<u128>>,
    host: HostFlows,
    /// The Services' translation tables, with `services = "switch"`.
    nat: Option<Conntrack>,
    /// The flow log's ring of this worker.
    flows: Recorder,
}

struct QueueSlot {
    generation: u32,
    counters: Arc<Counters>,
    queue: Box<dyn PortQueue>,
    /// Sent to in this batch: flushed at its end.
    dirty: bool,
}

/// What a worker sends through: its port queues, its tunnel socket, the rings.
struct Io {
    index: usize,
    tunnel: Tunnel,
    shared: Arc<Shared>,
    queues: Vec<Option<QueueSlot>>,
    /// The slots whose queues were sent to in this batch.
    dirty: Vec<usize>,
    /// The sessions this batch looked up, and the sealing buffers.
    seal: SealCache,
}

pub mod plan;
mod poll;
mod sink;
mod stats;

use poll::Worker;

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;
    use crate::io::udp::tunnel_sockets;
    use crate::sim::Sim;
    use crate::tables::TunnelMode;

    /// Idle workers, with no timer of their own and nothing to read, still go round
    /// their loop every tick, so none counts as stalled; and a stop ends them
    /// without tripping their lifelines.
    #[test]
    fn idle_workers_go_round_their_loop_and_stop_on_request() {
        let node = Sim::new(TunnelMode::Vxlan, &[&[]]).nodes.remove(0);
        let tables = Arc::new(ArcSwap::from_pointee(node.tables));
        let sockets = tunnel_sockets(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 2).unwrap();
        let lanes = Lanes::bind(Ipv4Addr::LOCALHOST, 1).unwrap();
        let tuning = Tuning {
            poll_max: Duration::ZERO,
            heartbeat: Duration::ZERO,
            conntrack_max: 16,
            conntrack_share: 8,
            services: true,
            ipv6: Some("fd00:10:244::/56".parse().unwrap()),
            panic_after: None,
            flow_log: false,
        };
        let (shared, mut handles) = spawn(tables, sockets, Arc::new(lanes), tuning, None).unwrap();
        let waited = clock::now();
        std::thread::sleep(plan::LIVENESS_TICK * 3);
        for (i, seen) in shared.seen.iter().enumerate() {
            let seen = Time::from_nanos(seen.load(Ordering::Relaxed));
            assert!(seen > waited, "worker {i} last went round at {seen:?}");
        }
        assert_eq!(shared.stalled_workers(), Vec::<usize>::new());
        stop(&shared, &mut handles);
    }
}
