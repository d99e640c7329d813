//! The switching logic of one worker: frames in, sends out, time passed in.
//!
//! A worker hands [`Core`] the bytes it read (from a port or a tunnel socket) in a
//! buffer it owns, with a [`Ctx`]: the forwarding snapshot, the time now, and the
//! [`Sink`] that performs the sends. The core parses the frame in place, answers ARP,
//! routes IPv4 by longest prefix, rewrites MACs and TTL, encapsulates for peers,
//! generates the ICMP errors a router sends, and keeps heartbeats going. It never
//! reads a clock, makes a system call, allocates, locks or logs per packet, and it
//! writes nothing shared: what it learns (a peer's features, a heartbeat heard) it
//! reports through [`Sink::report`]. The one exception is counting: the core counts
//! what it receives and drops in its own worker's slot of the snapshot's counters,
//! which no other thread writes; the sink counts what it sends.
//!
//! The path of a frame, one file each:
//!
//! ```text
//! ingress ──► forward ──► egress ──► Sink::to_port / to_peer / to_peer_run
//!  (decap,     (checks,     (deliver, GRO for pods,
//!   ARP)        route,       VXLAN, sleeve batches
//!               ICMP)        and chunks, GSO)
//! reassembly: sleeve chunks joined back into super-frames, into forward
//! heartbeat: timers, heartbeats and echoes
//! ```
//!
//! Buffers carry [`HEADROOM`] bytes in front of a frame read from a port, so a VXLAN
//! header is prepended in place. A sleeve datagram's records are delivered in order and
//! each one's Ethernet header is written over bytes of records already delivered, so a
//! [`Sink`] must be done with a frame when its call returns (a write or a copy).

use std::net::SocketAddr;
use std::time::Duration;

use crate::tables::counters::DropReason;
use crate::tables::{PeerEntry, PortEntry, Tables};

mod arp;
mod coalesce;
pub mod conntrack;
mod egress;
mod enforce;
mod flow;
pub mod flowlog;
mod forward;
mod forward6;
mod heartbeat;
pub mod host;
mod icmp;
mod ingress;
pub mod rate;
mod reassembly;
pub mod service;
mod sleeve;
pub mod time;

pub use reassembly::JOINS;
pub use sleeve::FEATURES;
pub use time::Time;

/// Offload metadata that travels with a frame between a port and the switch: a
/// super-frame's segmentation, or a checksum left for the receiver to complete. A
/// port without offloads reads [`Offload::PLAIN`] and never gets anything else.
pub use weft_encap::virtio::Repr as Offload;

/// Free bytes kept in front of every frame read from a port.
pub const HEADROOM: usize = 64;

/// How often expired connections and host flows are swept while there are any.
const SWEEP: Duration = Duration::from_secs(1);

/// Outer UDP source ports a node sends from. A frame's flow hash picks its lane, so
/// one flow always leaves from one source port (and lands, in order, on one worker
/// of the receiver, whose `SO_REUSEPORT` group hashes the 4-tuple), while flows
/// spread over ports as they do behind the kernel's VXLAN (RFC 7348 §5).
pub const LANES: usize = 16;

/// The lane of the Ethernet + IPv4 frame `frame`.
#[inline]
fn lane_of(frame: &[u8]) -> usize {
    weft_encap::flow::hash(frame) as usize % LANES
}

/// Why a send failed, as a sink reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxError {
    /// The destination queue is full; the frame is dropped.
    Full,
    /// A frame that had to change thread found no room in the ring.
    RingFull,
    /// The port or socket failed (for example its netns is gone).
    Failed,
}

impl TxError {
    /// The drop counter a failed send goes on.
    pub fn reason(self) -> DropReason {
        match self {
            TxError::Full => DropReason::TxFull,
            TxError::RingFull => DropReason::RingFull,
            TxError::Failed => DropReason::TxError,
        }
    }
}

/// What the core learned from a datagram, for the sink to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// A sleeve header from peer `peer` (an index into the snapshot's peers)
    /// announced `features`.
    Features {
        /// The peer.
        peer: usize,
        /// Its features byte.
        features: u8,
    },
    /// Peer `peer` sent a heartbeat.
    BeatReceived {
        /// The peer.
        peer: usize,
    },
    /// Peer `peer` echoed one of this node's heartbeats after `rtt`.
    Echoed {
        /// The peer.
        peer: usize,
        /// The round-trip time.
        rtt: Duration,
    },
    /// A heartbeat went to peer `peer`.
    BeatSent {
        /// The peer.
        peer: usize,
    },
    /// An echo went to peer `peer`.
    EchoSent {
        /// The peer.
        peer: usize,
    },
}

/// Where the core's output goes: the I/O layer of a worker, or a simulation. A call
/// must be done with `frame` when it returns. The sink counts every send on the
/// port's or peer's counters, sent or failed, once it knows which.
pub trait Sink {
    /// Sends an Ethernet frame out of a port, with its offload metadata (a super-frame
    /// the port's kernel segments, or a checksum it completes).
    fn to_port(&mut self, port: &PortEntry, offload: &Offload, frame: &[u8]);
    /// Sends a UDP payload (a VXLAN or sleeve datagram) to a peer node, from the
    /// outer source port of `lane` (below [`LANES`]).
    fn to_peer(&mut self, peer: &PeerEntry, lane: usize, datagram: &[u8]);
    /// Sends consecutive datagrams of `segment` bytes each (the last may be shorter)
    /// to a peer: the segments of one super-frame, for one GSO send.
    fn to_peer_run(&mut self, peer: &PeerEntry, lane: usize, run: &[u8], segment: usize) {
        for d in run.chunks(segment.max(1)) {
            self.to_peer(peer, lane, d);
        }
    }
    /// Records what the core learned.
    fn report(&mut self, report: Report);
}

/// What one call into the core works with.
#[derive(Debug)]
pub struct Ctx<'a, S: ?Sized> {
    /// The forwarding snapshot, the same for a whole batch.
    pub tables: &'a Tables,
    /// The time now, on the caller's monotonic clock.
    pub now: Time,
    /// Where sends go.
    pub sink: &'a mut S,
}

impl<'a, S: Sink + ?Sized> Ctx<'a, S> {
    /// A context of `tables` at `now`, sending into `sink`.
    pub fn new(tables: &'a Tables, now: Time, sink: &'a mut S) -> Ctx<'a, S> {
        Ctx { tables, now, sink }
    }
}

/// A frame in a caller's buffer: `buf[start..start + len]`. A frame read from a port
/// has [`HEADROOM`] free bytes before `start`.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The buffer.
    pub buf: &'a mut [u8],
    /// Where the frame starts in it.
    pub start: usize,
    /// The frame's length.
    pub len: usize,
}

impl<'a> Frame<'a> {
    /// The frame at `buf[start..start + len]`.
    pub fn new(buf: &'a mut [u8], start: usize, len: usize) -> Frame<'a> {
        Frame { buf, start, len }
    }

    /// The frame's bytes, if it lies within its buffer.
    fn bytes(&self) -> Option<&[u8]> {
        self.buf.get(self.start..self.start.checked_add(self.len)?)
    }

    /// The same buffer, framing `start..start + len` instead.
    fn reframe(&mut self, start: usize, len: usize) -> Frame<'_> {
        Frame {
            buf: self.buf,
            start,
            len,
        }
    }
}

/// Where a frame came from: what its drops are counted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ingress {
    /// A port, by index into the snapshot's ports.
    Port(usize),
    /// A peer, by index into the snapshot's peers.
    Peer(usize),
    /// An ICMP error the switch generated about a frame from `cause`.
    Icmp(Cause),
}

/// The ingress of the frame an ICMP error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Port(usize),
    Peer(usize),
}

impl Ingress {
    /// The port or peer whose counters a drop goes on.
    fn cause(self) -> Cause {
        match self {
            Ingress::Port(i) => Cause::Port(i),
            Ingress::Peer(j) => Cause::Peer(j),
            Ingress::Icmp(c) => c,
        }
    }
}

/// How a worker's core is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The worker's number: its slot in every counter.
    pub worker: usize,
    /// How often to send every peer a heartbeat, for the one worker that does.
    pub heartbeat: Option<Duration>,
    /// The connection tables, this worker's to write and the others' to read; none
    /// means policy judges every packet as a new connection.
    pub conntrack: Option<conntrack::Conntrack>,
    /// The IPv6 connection tables, likewise, on a dual-stack node; none there
    /// means IPv6 is judged packet by packet.
    pub conntrack6: Option<conntrack::Conntrack<u128>>,
    /// The flows that cross the host port, likewise.
    pub host: host::HostFlows,
    /// The flow log's ring of this worker ([`flowlog::Recorder::default`]: none).
    pub flows: flowlog::Recorder,
}

/// The switching state of one worker: scratch buffers, GRO, sleeve batches and joins,
/// and the heartbeat timer.
pub struct Core {
    worker: usize,
    /// Room for one ICMP error, behind [`HEADROOM`].
    icmp: Box<[u8]>,
    /// The ICMP errors this worker may still send.
    icmp_limit: icmp::Limit,
    /// Room for a super-frame's segments or chunks.
    segments: Box<[u8]>,
    coalescers: coalesce::Coalescers,
    sleeve: sleeve::Batches,
    joins: reassembly::Joins,
    /// Super-frames sent as sleeve chunks; the worker index is the id's top byte.
    frames_out: u32,
    beats: heartbeat::Heartbeats,
    conntrack: Option<conntrack::Conntrack>,
    conntrack6: Option<conntrack::Conntrack<u128>>,
    host: host::HostFlows,
    /// Where policy's verdicts are recorded.
    flows: flowlog::Recorder,
    /// When the connection tables are next swept, while they hold entries.
    next_sweep: Option<Time>,
    /// The Services' translations, with `services = "switch"`.
    nat: Option<service::Nat>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("worker", &self.worker)
            .field("next_beat", &self.beats.next())
            .finish()
    }
}

impl Core {
    /// The state of one worker.
    pub fn new(config: Config) -> Core {
        Core {
            worker: config.worker,
            icmp: vec![0u8; icmp::BUF_LEN].into_boxed_slice(),
            icmp_limit: icmp::Limit::full(Time::ZERO),
            segments: vec![0u8; egress::SEGMENT_BUF].into_boxed_slice(),
            coalescers: coalesce::Coalescers::new(),
            sleeve: sleeve::Batches::new(),
            joins: reassembly::Joins::new(),
            frames_out: 0,
            beats: heartbeat::Heartbeats::new(config.heartbeat),
            conntrack: config.conntrack,
            conntrack6: config.conntrack6,
            host: config.host,
            flows: config.flows,
            next_sweep: None,
            nat: None,
        }
    }

    /// Handles a frame read from port `ingress` (an index into the snapshot's ports),
    /// with the offload metadata it came with.
    pub fn port_frame<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        ingress: usize,
        offload: &Offload,
        frame: Frame<'_>,
    ) {
        self.services_sync(cx.tables);
        self.ingress_port(cx, ingress, offload, frame);
    }

    /// Handles a UDP payload received on the tunnel socket from `from`.
    pub fn tunnel_datagram<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        from: SocketAddr,
        datagram: Frame<'_>,
    ) {
        self.services_sync(cx.tables);
        self.ingress_tunnel(cx, from, datagram);
    }

    /// Ends a batch: hands pods the super-frames coalesced for them and sends every
    /// sleeve datagram under construction. The worker calls it at the end of each
    /// batch, with the snapshot the batch used.
    pub fn flush<S: Sink + ?Sized>(&mut self, cx: &mut Ctx<'_, S>) {
        self.coalescers.flush(cx);
        self.sleeve.flush(cx);
    }

    /// When the core next needs [`Core::handle_timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Time> {
        match (self.beats.next(), self.next_sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers due at `cx.now`: heartbeats to every peer, and the sweep of
    /// expired connections.
    pub fn handle_timeout<S: Sink + ?Sized>(&mut self, cx: &mut Ctx<'_, S>) {
        self.beats.handle_timeout(cx);
        self.services_sync(cx.tables);
        self.sweep(cx.now);
    }

    /// Makes sure the connection tables are swept within [`SWEEP`] of `now`, after
    /// an entry was written.
    fn sweep_soon(&mut self, now: Time) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP);
        }
    }

    /// Runs the sweep of expired connections and flows when it is due; sweeps go on
    /// while the tables hold entries.
    fn sweep(&mut self, now: Time) {
        if self.next_sweep.is_none_or(|at| now < at) {
            return;
        }
        let mut live = self.host.sweep(now);
        if let Some(ct) = &self.conntrack {
            ct.sweep(now);
            live += ct.live();
        }
        if let Some(ct) = &self.conntrack6 {
            ct.sweep(now);
            live += ct.live();
        }
        if let Some(nat) = &self.nat {
            live += nat.sweep(now);
        }
        self.next_sweep = (live > 0).then(|| now + SWEEP);
    }

    /// Counts a drop on what the frame came from.
    fn drop_at<S: ?Sized>(&self, cx: &Ctx<'_, S>, from: Ingress, reason: DropReason) {
        let t = cx.tables;
        match from.cause() {
            Cause::Port(i) => t.ports[i].counters.discard(self.worker, reason),
            Cause::Peer(j) => t.peers[j].counters.discard(self.worker, reason),
        }
    }
}
