//! Worker threads: each owns a tunnel socket, one queue of every port, an epoll set
//! and its scratch buffers, and runs the [`Core`] over what they deliver.
//!
//! Most frames never change thread: every port has a queue per worker and the kernel
//! keeps a flow on one queue. When a worker must send to a port it holds no queue of
//! (a port opened with fewer queues than there are workers), the frame is copied into
//! a pooled buffer and handed to the port's owning worker through a bounded lock-free
//! ring; the batch ends with one eventfd wake-up per target worker.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{Receiver, Sender};
use crossbeam::queue::ArrayQueue;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::core::conntrack::Conntrack;
use crate::core::host::{HostFlows, HostTables};
use crate::core::{self, Core, Ctx, Frame, Report, Sink, Time, TxError, HEADROOM};
use crate::crypto::stage::{self, SealCache, Sealer, Stage};
use crate::io::clock;
use crate::io::port::{Offload, PortQueue, Rx};
use crate::io::spin::Spin;
use crate::io::udp::{Account, Lanes, Outcome, RxBatch, Tunnel, RX_BATCH};
use crate::tables::counters::{Counters, DropReason};
use crate::tables::{PeerEntry, PortEntry, PortId, Tables};

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

/// A frame handed from one worker to another.
struct Handoff {
    port: PortId,
    /// Where its send is counted, by the worker that writes it.
    counters: Arc<Counters>,
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
    let conntrack = Conntrack::tables(n, tuning.conntrack_max);
    let host_flows = HostTables::new(n, tuning.conntrack_max);
    let shared = Arc::new(Shared {
        tables,
        inboxes: (0..n).map(|_| ArrayQueue::new(RING_LEN)).collect(),
        wakers: wakers.clone(),
        pool,
        large,
        stop: AtomicBool::new(false),
        sealer,
        host_flows: host_flows.clone(),
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
            host: host_flows.worker(index),
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
    for ready in built {
        let outcome = ready
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("a worker thread ended while starting")));
        if let Err(e) = outcome {
            stop(&shared, &mut handles);
            return Err(e);
        }
    }
    Ok((shared, handles))
}

/// Starts the thread of the worker `setup` describes; it builds its state there
/// and tells `ready` whether it could, then runs.
fn spawn_one(
    setup: Setup,
    commands: Receiver<Command>,
    shared: Arc<Shared>,
    ready: Sender<io::Result<()>>,
) -> io::Result<std::thread::JoinHandle<io::Result<()>>> {
    std::thread::Builder::new()
        .name(format!("weft-worker-{}", setup.index))
        .spawn(move || match Worker::new(setup, commands, shared) {
            Ok(worker) => {
                let _ = ready.send(Ok(()));
                worker.run()
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                Ok(())
            }
        })
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
    host: HostFlows,
}

struct QueueSlot {
    generation: u32,
    counters: Arc<Counters>,
    queue: Box<dyn PortQueue>,
    /// Sent to in this batch: flushed at its end.
    dirty: bool,
}

struct Worker {
    poll: Poll,
    spin: Spin,
    rx: RxBatch,
    commands: Receiver<Command>,
    core: Core,
    buf: Box<[u8]>,
    io: Io,
    /// On worker 0 with encryption: when the handshake timers are next due, and
    /// when that was last asked (handshakes other workers start move it).
    seal_due: Option<Time>,
    seal_asked: Time,
}

/// How often worker 0 asks the endpoint again when its handshake timers are due.
const SEAL_RECHECK: Duration = Duration::from_secs(1);

/// The seal stage's view of a worker's tunnel socket: sends are counted on the
/// peers they go to.
struct UdpOut<'a> {
    tunnel: &'a mut Tunnel,
    account: &'a mut Account<'a>,
}

impl stage::Tunnel for UdpOut<'_> {
    fn send(&mut self, peer: &PeerEntry, lane: usize, datagram: &[u8]) {
        self.tunnel.push(peer.addr, lane, datagram, self.account);
    }

    fn send_run(&mut self, peer: &PeerEntry, lane: usize, run: &[u8], segment: usize) {
        (self.tunnel).send_run(peer.addr, lane, run, segment, self.account);
    }

    fn send_to(&mut self, addr: SocketAddrV4, datagram: &[u8]) {
        self.tunnel.push(addr, 0, datagram, self.account);
    }
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

impl Io {
    /// Sends `frame` on the queue in `slot`, remembering to flush it.
    #[inline]
    fn send_on(&mut self, slot: usize, offload: &Offload, frame: &[u8]) -> Result<(), TxError> {
        let Some(Some(q)) = self.queues.get_mut(slot) else {
            return Err(TxError::Failed);
        };
        if !q.dirty {
            q.dirty = true;
            self.dirty.push(slot);
        }
        q.queue.send(offload, frame).map_err(|e| tx_error(&e))
    }

    /// The seal stage over this worker's socket, if the node seals.
    fn stage<'a>(
        &'a mut self,
        tables: &'a Tables,
        now: Time,
        account: &'a mut Account<'a>,
    ) -> Option<Stage<'a, UdpOut<'a>>> {
        let sealer = self.shared.sealer.as_deref()?;
        Some(Stage {
            sealer,
            cache: &mut self.seal,
            tables,
            now,
            tunnel: UdpOut {
                tunnel: &mut self.tunnel,
                account,
            },
        })
    }

    /// Flushes the queues sent to in this batch.
    fn flush_queues(&mut self) {
        for slot in self.dirty.drain(..) {
            if let Some(Some(q)) = self.queues.get_mut(slot) {
                q.dirty = false;
                q.queue.flush();
            }
        }
    }
}

/// The I/O side of the core for one worker, lent to it for one batch.
struct IoSink<'a> {
    io: &'a mut Io,
    /// The batch's snapshot, to count sends on.
    tables: &'a Tables,
    now: Time,
    /// Bit i set: worker i was handed frames in this batch and needs a wake-up.
    wake: &'a mut u64,
}

impl IoSink<'_> {
    /// Hands `frame` to the worker that owns a queue of `port`. That worker counts
    /// the send when it writes the frame.
    fn handoff(
        &mut self,
        port: &PortEntry,
        offload: &Offload,
        frame: &[u8],
    ) -> Result<(), TxError> {
        // The port's queues belong to workers 0..queues; spread senders over them.
        let owners = usize::from(port.queues).clamp(1, self.io.shared.inboxes.len());
        let owner = self.io.index % owners;
        // The owner may be this worker, when the port's queue is out of its slot
        // for the batch that lends its frames: the frame waits in this worker's inbox.
        if frame.len() > LARGE_LEN {
            return Err(TxError::Failed);
        }
        let pool = self.io.shared.pool_for(frame.len());
        let Some(mut buf) = pool.pop() else {
            return Err(TxError::RingFull);
        };
        buf[..frame.len()].copy_from_slice(frame);
        let h = Handoff {
            port: port.id,
            counters: port.counters.clone(),
            offload: *offload,
            len: frame.len(),
            buf,
        };
        if let Err(h) = self.io.shared.inboxes[owner].push(h) {
            let _ = pool.push(h.buf);
            return Err(TxError::RingFull);
        }
        *self.wake |= 1 << (owner % 64);
        Ok(())
    }
}

fn tx_error(e: &io::Error) -> TxError {
    match e.kind() {
        io::ErrorKind::WouldBlock => TxError::Full,
        _ if e.raw_os_error() == Some(libc::ENOBUFS) => TxError::Full,
        _ => TxError::Failed,
    }
}

/// Counts a send to a port, done or failed.
fn count_port_send(counters: &Counters, worker: usize, len: usize, result: Result<(), TxError>) {
    match result {
        Ok(()) => counters.tx(worker, len),
        Err(e) => counters.discard(worker, e.reason()),
    }
}

/// Counts what became of tunnel sends on the peers they went to. A destination that
/// is no peer of the snapshot cannot happen (sends are made and flushed within one
/// batch); it would be counted on the tunnel as failed.
fn peer_account<'t>(tables: &'t Tables, worker: usize) -> impl FnMut(SocketAddrV4, Outcome) + 't {
    move |dest, o| {
        let counters = tables
            .peer_by_ip(*dest.ip())
            .map_or(&tables.tunnel, |j| &tables.peers[j].counters);
        counters.tx_many(worker, o.sent, o.sent_bytes);
        counters.discard_many(worker, DropReason::TxError, o.lost);
    }
}

impl Sink for IoSink<'_> {
    #[inline]
    fn to_port(&mut self, port: &PortEntry, offload: &Offload, frame: &[u8]) {
        let worker = self.io.index;
        match self.io.queues.get_mut(port.id.slot as usize) {
            Some(Some(q)) if q.generation == port.id.generation => {
                let sent = self.io.send_on(port.id.slot as usize, offload, frame);
                count_port_send(&port.counters, worker, frame.len(), sent);
            }
            _ => {
                if let Err(e) = self.handoff(port, offload, frame) {
                    port.counters.discard(worker, e.reason());
                }
            }
        }
    }

    #[inline]
    fn to_peer(&mut self, peer: &PeerEntry, lane: usize, datagram: &[u8]) {
        let account: &mut Account<'_> = &mut peer_account(self.tables, self.io.index);
        if self.io.shared.sealer.is_none() {
            return self.io.tunnel.push(peer.addr, lane, datagram, account);
        }
        if let Some(mut stage) = self.io.stage(self.tables, self.now, account) {
            stage.to_peer(peer, lane, datagram);
        }
    }

    #[inline]
    fn to_peer_run(&mut self, peer: &PeerEntry, lane: usize, run: &[u8], segment: usize) {
        let account: &mut Account<'_> = &mut peer_account(self.tables, self.io.index);
        if self.io.shared.sealer.is_none() {
            return self
                .io
                .tunnel
                .send_run(peer.addr, lane, run, segment, account);
        }
        if let Some(mut stage) = self.io.stage(self.tables, self.now, account) {
            stage.to_peer_run(peer, lane, run, segment);
        }
    }

    fn report(&mut self, report: Report) {
        self.tables.apply(self.now, report);
    }
}

impl Worker {
    fn new(setup: Setup, commands: Receiver<Command>, shared: Arc<Shared>) -> io::Result<Worker> {
        let Setup {
            index,
            poll,
            socket,
            lanes,
            tuning,
            conntrack,
            host,
        } = setup;
        socket.set_nonblocking(true)?;
        poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            SOCKET,
            Interest::READABLE,
        )?;
        let tunnel = Tunnel::new(socket, lanes)?;
        let beats = (index == 0 && !tuning.heartbeat.is_zero()).then_some(tuning.heartbeat);
        Ok(Worker {
            poll,
            spin: Spin::new(tuning.poll_max),
            rx: RxBatch::default(),
            commands,
            core: Core::new(core::Config {
                worker: index,
                heartbeat: beats,
                conntrack: Some(conntrack),
                host,
            }),
            buf: vec![0u8; BUF_LEN].into_boxed_slice(),
            seal_due: None,
            seal_asked: Time::ZERO,
            io: Io {
                index,
                tunnel,
                shared,
                queues: Vec::new(),
                dirty: Vec::new(),
                seal: SealCache::for_worker(index),
            },
        })
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        // Fds whose budget ran out: served again before the worker sleeps.
        let mut again: Vec<Token> = Vec::with_capacity(64);
        let mut ready: Vec<Token> = Vec::with_capacity(256);
        // The end of the last batch, and until when to poll after it.
        let mut idle_since = Instant::now();
        let mut poll_until = idle_since;
        loop {
            let polling = !again.is_empty() || Instant::now() < poll_until;
            let timeout = if polling {
                Some(Duration::ZERO)
            } else {
                self.next_timer()
                    .map(|at| at.saturating_since(clock::now()))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if self.io.shared.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            let now = clock::now();
            let due = self.next_timer().is_some_and(|at| now >= at);
            if events.is_empty() && again.is_empty() && !due {
                // Nothing yet: give the CPU to whatever else may run, then look again.
                std::thread::yield_now();
                continue;
            }
            if !polling && !events.is_empty() {
                self.spin.woke(idle_since.elapsed());
            }
            ready.clear();
            ready.append(&mut again);
            for ev in events.iter() {
                if !ready.contains(&ev.token()) {
                    ready.push(ev.token());
                }
            }
            self.batch(now, &ready, &mut again);
            idle_since = Instant::now();
            poll_until = idle_since + self.spin.window();
        }
    }

    /// When this worker's next timer is due: the core's, and on worker 0 the
    /// handshakes' (as last asked: the poll loop takes no lock).
    fn next_timer(&self) -> Option<Time> {
        [self.core.poll_timeout(), self.seal_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// Serves the fds in `ready` once, runs the timers that are due and ends the
    /// batch; fds with more waiting go to `again`.
    fn batch(&mut self, now: Time, ready: &[Token], again: &mut Vec<Token>) {
        let tables = self.io.shared.tables.load();
        let mut wake = 0u64;
        self.io.seal.new_batch();
        for &token in ready {
            let more = match token {
                WAKER => {
                    self.commands();
                    self.inbox()
                }
                SOCKET => self.socket_batch(&tables, now, &mut wake),
                Token(t) => self.port_batch(&tables, now, t - PORT_BASE, &mut wake),
            };
            if more {
                again.push(token);
            }
        }
        let mut sink = IoSink {
            io: &mut self.io,
            tables: &tables,
            now,
            wake: &mut wake,
        };
        let mut cx = Ctx::new(&tables, now, &mut sink);
        if self.core.poll_timeout().is_some_and(|at| now >= at) {
            self.core.handle_timeout(&mut cx);
        }
        self.core.flush(&mut cx);
        // Worker 0 runs the handshake timers, as it runs the heartbeats: when they
        // are due, and at least every SEAL_RECHECK for handshakes other workers
        // started since.
        if self.io.index == 0 && self.io.shared.sealer.is_some() {
            let due = self.seal_due.is_some_and(|at| now >= at);
            if due || now.saturating_since(self.seal_asked) >= SEAL_RECHECK {
                let account: &mut Account<'_> = &mut peer_account(&tables, 0);
                if let Some(mut stage) = self.io.stage(&tables, now, account) {
                    self.seal_due = stage.handle_timeout();
                }
                self.seal_asked = now;
            }
        }
        let account: &mut Account<'_> = &mut peer_account(&tables, self.io.index);
        self.io.tunnel.flush(account);
        self.io.flush_queues();
        self.wake(wake);
    }

    fn wake(&self, mut mask: u64) {
        while mask != 0 {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let _ = self.io.shared.wakers[i].wake();
        }
    }

    fn deregister(&self, queue: &dyn PortQueue) {
        let _ = self.poll.registry().deregister(&mut SourceFd(&queue.fd()));
    }

    fn commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::AddQueue {
                    id,
                    counters,
                    queue,
                    done,
                } => {
                    let polled = self.add_queue(id, counters, queue);
                    let _ = done.send(polled);
                }
                Command::RemovePort { id, done } => {
                    let slot = id.slot as usize;
                    let owned = matches!(self.io.queues.get(slot), Some(Some(q)) if q.generation == id.generation);
                    if owned {
                        if let Some(q) = self.io.queues[slot].take() {
                            self.deregister(q.queue.as_ref());
                        }
                    }
                    let _ = done.send(());
                }
            }
        }
    }

    /// Starts polling `queue` of port `id`; says whether it could.
    fn add_queue(
        &mut self,
        id: PortId,
        counters: Arc<Counters>,
        queue: Box<dyn PortQueue>,
    ) -> bool {
        let slot = id.slot as usize;
        if self.io.queues.len() <= slot {
            self.io.queues.resize_with(slot + 1, || None);
        }
        if let Some(old) = self.io.queues[slot].take() {
            self.deregister(old.queue.as_ref());
        }
        let token = Token(PORT_BASE + slot);
        match self
            .poll
            .registry()
            .register(&mut SourceFd(&queue.fd()), token, Interest::READABLE)
        {
            Ok(()) => {
                self.io.queues[slot] = Some(QueueSlot {
                    generation: id.generation,
                    counters,
                    queue,
                    dirty: false,
                });
                true
            }
            Err(e) => {
                log::error!("worker {}: cannot poll port {id:?}: {e}", self.io.index);
                false
            }
        }
    }

    /// Writes frames other workers handed over, counting each on its port. Returns
    /// whether more are waiting.
    fn inbox(&mut self) -> bool {
        let shared = self.io.shared.clone();
        let inbox = &shared.inboxes[self.io.index];
        for _ in 0..BUDGET * 4 {
            let Some(h) = inbox.pop() else { return false };
            let slot = h.port.slot as usize;
            let result = match self.io.queues.get(slot) {
                Some(Some(q)) if q.generation == h.port.generation => {
                    self.io.send_on(slot, &h.offload, &h.buf[..h.len])
                }
                _ => Err(TxError::Failed),
            };
            count_port_send(&h.counters, self.io.index, h.len, result);
            self.io.shared.give_back(h.buf);
        }
        !inbox.is_empty()
    }

    fn socket_batch(&mut self, tables: &Tables, now: Time, wake: &mut u64) -> bool {
        for _ in 0..BUDGET / RX_BATCH {
            let n = match self.io.tunnel.recv(&mut self.rx) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors for earlier sends surface here (ECONNREFUSED and
                    // friends); they say nothing about the next datagram.
                    log::debug!("worker {}: tunnel socket: {e}", self.io.index);
                    continue;
                }
            };
            let mut sink = IoSink {
                io: &mut self.io,
                tables,
                now,
                wake,
            };
            let mut cx = Ctx::new(tables, now, &mut sink);
            let core = &mut self.core;
            self.rx.for_each(|from, buf, off, len| {
                let mut range = off..off + len;
                let io = &mut *cx.sink.io;
                if let SocketAddr::V4(v4) = from {
                    let account: &mut Account<'_> = &mut peer_account(tables, io.index);
                    if let Some(mut stage) = io.stage(tables, now, account) {
                        match stage.from_peer(v4, buf, range) {
                            Some(opened) => range = opened,
                            None => return,
                        }
                    }
                }
                core.tunnel_datagram(&mut cx, from, Frame::new(buf, range.start, range.len()))
            });
            // A short batch emptied the socket: asking again would only return
            // EAGAIN, a wasted syscall per packet under request/response traffic. The
            // (edge-triggered) poll reports whatever arrives next.
            if n < RX_BATCH {
                return false;
            }
        }
        true
    }

    fn port_batch(&mut self, tables: &Tables, now: Time, slot: usize, wake: &mut u64) -> bool {
        // The queue is taken out of its slot while its frames are handed to the core,
        // which may lend them in the queue's own memory. Frames the core sends back to
        // this port meanwhile (ARP replies) go through this worker's own inbox.
        let Some(q) = self.io.queues.get_mut(slot).and_then(Option::take) else {
            return false;
        };
        let id = PortId {
            slot: slot as u32,
            generation: q.generation,
        };
        let mut q = q;
        let counters = q.counters.clone();
        let ingress = tables.port_index(id);
        let worker = self.io.index;
        let (io, core) = (&mut self.io, &mut self.core);
        let result = q
            .queue
            .recv_batch(&mut self.buf, BUDGET, &mut |rx| match rx {
                Rx::Frame {
                    offload,
                    buf,
                    start,
                    len,
                } => {
                    let Some(i) = ingress else {
                        // Not (or no longer) in the snapshot: attach or detach in progress.
                        counters.rx(worker, len);
                        counters.discard(worker, DropReason::Detached);
                        return;
                    };
                    let mut sink = IoSink {
                        io: &mut *io,
                        tables,
                        now,
                        wake: &mut *wake,
                    };
                    let mut cx = Ctx::new(tables, now, &mut sink);
                    core.port_frame(&mut cx, i, &offload, Frame::new(buf, start, len));
                }
                // One frame with a header the switch cannot read: drop it, keep going.
                Rx::Malformed => counters.discard(worker, DropReason::Malformed),
            });
        let more = match result {
            Ok(more) => more,
            Err(e) => {
                // The device is gone (its netns was deleted): stop polling it. The
                // control plane's detach closes the queue.
                log::warn!("worker {worker}: port {id:?}: {e}; no longer polled");
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&q.queue.fd()));
                false
            }
        };
        self.io.queues[slot] = Some(q);
        more
    }
}
