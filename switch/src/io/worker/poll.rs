//! A worker's poll loop: it waits on its fds and timers, and runs a batch over
//! what is ready (commands, the handoff inbox, the tunnel socket, its port
//! queues), then the timers that are due, then ends the batch. What the loop
//! decides is in [`super::plan`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam::channel::Receiver;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::plan::{self, SealClock, Wakes};
use super::sink::{count_port_send, peer_account, IoSink};
use super::{Command, Io, QueueSlot, Setup, Shared, BUDGET, BUF_LEN, PORT_BASE, SOCKET, WAKER};
use crate::core::service::Nat;
use crate::core::{self, Core, Ctx, Frame, Time, TxError};
use crate::crypto::stage::SealCache;
use crate::io::clock;
use crate::io::port::{PortQueue, Rx};
use crate::io::spin::Spin;
use crate::io::udp::{Account, RxBatch, Tunnel, RX_BATCH};
use crate::tables::counters::{Counters, DropReason};
use crate::tables::{PortId, Tables};
pub(super) struct Worker {
    poll: Poll,
    spin: Spin,
    rx: RxBatch,
    commands: Receiver<Command>,
    core: Core,
    buf: Box<[u8]>,
    io: Io,
    /// On worker 0 with encryption: when to run the handshake timers.
    seal: SealClock,
    /// Frames read from port queues and datagrams from the tunnel socket.
    frames: u64,
    /// Test only: panic once `frames` reaches it ([`super::Tuning::panic_after`]).
    panic_after: Option<u64>,
}

impl Worker {
    pub(super) fn new(
        setup: Setup,
        commands: Receiver<Command>,
        shared: Arc<Shared>,
    ) -> io::Result<Worker> {
        let Setup {
            index,
            poll,
            socket,
            lanes,
            tuning,
            conntrack,
            conntrack6,
            host,
            nat,
            flows,
        } = setup;
        socket.set_nonblocking(true)?;
        poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            SOCKET,
            Interest::READABLE,
        )?;
        let tunnel = Tunnel::new(socket, lanes)?;
        let beats = (index == 0 && !tuning.heartbeat.is_zero()).then_some(tuning.heartbeat);
        let mut core = Core::new(core::Config {
            worker: index,
            heartbeat: beats,
            conntrack: Some(conntrack),
            conntrack6,
            host,
            flows,
        });
        if let Some(nat) = nat {
            core.set_services(Nat::new(nat));
        }
        Ok(Worker {
            poll,
            spin: Spin::new(tuning.poll_max),
            rx: RxBatch::default(),
            commands,
            core,
            buf: vec![0u8; BUF_LEN].into_boxed_slice(),
            seal: SealClock::default(),
            frames: 0,
            panic_after: tuning.panic_after,
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

    pub(super) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        // Fds whose budget ran out: served again before the worker sleeps.
        let mut again: Vec<Token> = Vec::with_capacity(64);
        let mut ready: Vec<Token> = Vec::with_capacity(256);
        // The end of the last batch, and until when to poll after it.
        let mut idle_since = Instant::now();
        let mut poll_until = idle_since;
        loop {
            let polling = !again.is_empty() || Instant::now() < poll_until;
            let timeout = plan::poll_timeout(polling, self.next_timer(), clock::now);
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if self.io.shared.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            let now = clock::now();
            self.io.shared.seen(self.io.index, now);
            if !plan::runs_batch(
                !events.is_empty(),
                !again.is_empty(),
                now,
                self.next_timer(),
            ) {
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
            let read = self.frames;
            self.batch(now, &ready, &mut again);
            let loops = &self.io.shared.loops[self.io.index];
            loops.batch(clock::now().saturating_since(now), self.frames - read);
            self.panic_if_asked();
            idle_since = Instant::now();
            poll_until = idle_since + self.spin.window();
        }
    }

    /// The test hook: panics once the worker has read as many frames as weftd's
    /// `WEFT_TEST_PANIC_WORKER_AFTER` says.
    fn panic_if_asked(&self) {
        if let Some(n) = self.panic_after.filter(|n| self.frames >= *n) {
            panic!(
                "worker {} read {} frames: WEFT_TEST_PANIC_WORKER_AFTER={n} asks it to panic",
                self.io.index, self.frames
            );
        }
    }

    /// When this worker's next timer is due: the core's, and on worker 0 the
    /// handshakes' (as last asked: the poll loop takes no lock).
    fn next_timer(&self) -> Option<Time> {
        plan::next_timer(self.core.poll_timeout(), self.seal.due())
    }

    /// Serves the fds in `ready` once, runs the timers that are due and ends the
    /// batch; fds with more waiting go to `again`.
    fn batch(&mut self, now: Time, ready: &[Token], again: &mut Vec<Token>) {
        let tables = self.io.shared.tables.load();
        let mut wake = Wakes::default();
        self.io.seal.new_batch();
        for &token in ready {
            let more = match token {
                WAKER => {
                    self.commands();
                    self.inbox(&tables)
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
        if (self.seal).runs(self.io.index, self.io.shared.sealer.is_some(), now) {
            let account: &mut Account<'_> = &mut peer_account(&tables, 0);
            if let Some(mut stage) = self.io.stage(&tables, now, account) {
                let due = stage.handle_timeout();
                self.seal.ran(now, due);
            }
        }
        let account: &mut Account<'_> = &mut peer_account(&tables, self.io.index);
        self.io.tunnel.flush(account);
        self.io.flush_queues();
        self.wake(wake);
    }

    fn wake(&self, wakes: Wakes) {
        for i in wakes {
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

    /// Writes frames other workers handed over, counting each on its port (found
    /// by its id: in this worker's queue of it, else in the snapshot). A frame for a
    /// port in neither is dropped uncounted: the port is gone, and its counters with
    /// it (detach unpublishes a port before it closes its queues, so nothing could
    /// read them). Returns whether more are waiting.
    fn inbox(&mut self, tables: &Tables) -> bool {
        let shared = self.io.shared.clone();
        let inbox = &shared.inboxes[self.io.index];
        for _ in 0..BUDGET * 4 {
            let Some(h) = inbox.pop() else { return false };
            let slot = h.port.slot as usize;
            let owned = matches!(
                self.io.queues.get(slot),
                Some(Some(q)) if q.generation == h.port.generation
            );
            let result = if owned {
                self.io.send_on(slot, &h.offload, &h.buf[..h.len])
            } else {
                Err(TxError::Failed)
            };
            let counters = if owned {
                self.io.queues[slot].as_ref().map(|q| &*q.counters)
            } else {
                (tables.port_index(h.port)).map(|i| &*tables.ports[i].counters)
            };
            if let Some(counters) = counters {
                count_port_send(counters, self.io.index, h.len, result);
            }
            self.io.shared.give_back(h.buf);
        }
        !inbox.is_empty()
    }

    fn socket_batch(&mut self, tables: &Tables, now: Time, wake: &mut Wakes) -> bool {
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
            self.frames += n as u64;
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

    fn port_batch(&mut self, tables: &Tables, now: Time, slot: usize, wake: &mut Wakes) -> bool {
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
        let (io, core, frames) = (&mut self.io, &mut self.core, &mut self.frames);
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
                    *frames += 1;
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
