//! The seal stage, between the core and the UDP layer: it seals what the core sends
//! to peers, opens what arrives before the core sees it, and hands the endpoint
//! the handshake. The core never sees a sealed datagram.
//!
//! No I/O here, and time is passed in: what goes out is handed to a [`Tunnel`], a
//! worker's UDP socket or the simulation's wire ([`crate::sim`] runs this very
//! stage). The [`Endpoint`] is the node's, behind one lock shared by the workers.
//! A worker takes the lock only to look a session up (once per peer and batch,
//! kept in its [`SealCache`]), for a handshake message, or to run the endpoint's
//! timers; the AEAD runs outside it, on the shared [`Session`].

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;
use weft_encap::sleeve::{self, handshake, seal, NodeId};

use crate::control::config::Encryption;
use crate::core::Time;
use crate::crypto::{Dest, Endpoint, Received, Refused, Sent, Session};
use crate::tables::counters::DropReason;
use crate::tables::{PeerEntry, Tables};

/// The node's encryption: its endpoint and its policy.
#[derive(Debug)]
pub struct Sealer {
    endpoint: Mutex<Endpoint>,
    required: bool,
}

impl Sealer {
    /// Seals with `endpoint`; `encryption` is on or required.
    pub fn new(endpoint: Endpoint, encryption: Encryption) -> Sealer {
        Sealer {
            endpoint: Mutex::new(endpoint),
            required: encryption == Encryption::Required,
        }
    }

    /// The endpoint, for the control plane (peers, status).
    pub fn endpoint(&self) -> parking_lot::MutexGuard<'_, Endpoint> {
        self.endpoint.lock()
    }
}

/// One worker's view of the sessions, refreshed every batch, and its buffers. (No
/// `Default`: the worker's index decides which counter slot it writes, and each
/// slot has one writer.)
#[derive(Debug)]
pub struct SealCache {
    /// The worker's index: which counter slot its drops go to.
    worker: usize,
    tx: HashMap<NodeId, Option<Arc<Session>>>,
    rx: HashMap<u32, Arc<Session>>,
    /// Whether the endpoint has a key for a node, as looked up this batch.
    keyed: HashMap<NodeId, bool>,
    /// A datagram or run being sealed.
    pub scratch: Vec<u8>,
    /// One datagram of a run being sealed.
    one: Vec<u8>,
    /// Handshake datagrams to send, with where to.
    pub out: Vec<(SocketAddrV4, Vec<u8>)>,
}

impl SealCache {
    /// The cache of worker `worker`.
    pub fn for_worker(worker: usize) -> SealCache {
        SealCache {
            worker,
            tx: HashMap::new(),
            rx: HashMap::new(),
            keyed: HashMap::new(),
            scratch: Vec::new(),
            one: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Hands `tunnel` the handshake datagrams waiting to go.
    fn send_handshakes(&mut self, tunnel: &mut impl Tunnel) {
        for (addr, d) in self.out.drain(..) {
            tunnel.send_to(addr, &d);
        }
    }

    /// Forgets the sessions looked up (a new batch may see rekeys).
    pub fn new_batch(&mut self) {
        self.tx.clear();
        self.rx.clear();
        self.keyed.clear();
    }
}

/// What became of a datagram the core sent to a peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Sealed into the cache's scratch buffer: send that.
    Sealed,
    /// Send it as it is (encryption on, and the peer has no key).
    Plain,
    /// Held for the handshake, or dropped (counted as this).
    Held(Option<DropReason>),
}

/// What to do with a datagram received from a peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Hand the core this range of the buffer (the datagram opened, or plain).
    Core(Range<usize>),
    /// Taken in by the endpoint (a handshake message).
    Taken,
    /// Dropped, counted as this.
    Drop(DropReason),
}

fn node_of(mac: crate::mac::MacAddr) -> NodeId {
    NodeId(mac.0)
}

impl Sealer {
    /// Looks up the session to send to `node` with, once a batch, into the cache
    /// (the endpoint may start a handshake: its initiation goes to the cache's
    /// `out`), and returns the cache's entry, borrowed: no reference count is
    /// touched per datagram.
    fn tx_session<'c>(
        &self,
        tx: &'c mut HashMap<NodeId, Option<Arc<Session>>>,
        out: &mut Vec<(SocketAddrV4, Vec<u8>)>,
        tables: &Tables,
        now: Time,
        node: NodeId,
    ) -> Option<&'c Session> {
        tx.entry(node)
            .or_insert_with(|| {
                let mut ep = self.endpoint.lock();
                let s = ep.session(now, node);
                drain(&mut ep, tables, out);
                s
            })
            .as_deref()
    }

    /// Whether the endpoint has a key for `node`, from the cache or the endpoint.
    fn keyed(&self, cache: &mut SealCache, node: NodeId) -> bool {
        *cache
            .keyed
            .entry(node)
            .or_insert_with(|| self.endpoint.lock().knows(node))
    }

    /// Seals `datagram` (one plain sleeve datagram) for the peer `node`; a
    /// handshake this starts goes to the cache's `out`.
    pub fn outgoing(
        &self,
        cache: &mut SealCache,
        tables: &Tables,
        now: Time,
        node: crate::mac::MacAddr,
        datagram: &[u8],
    ) -> Outgoing {
        let node = node_of(node);
        if !self.keyed(cache, node) {
            return if self.required {
                Outgoing::Held(Some(DropReason::NoSession))
            } else {
                Outgoing::Plain
            };
        }
        if let Some(s) = self.tx_session(&mut cache.tx, &mut cache.out, tables, now, node) {
            return match s.seal_into(datagram, &mut cache.scratch) {
                Ok(()) => Outgoing::Sealed,
                Err(_) => Outgoing::Held(Some(DropReason::NoSession)),
            };
        }
        let mut ep = self.endpoint.lock();
        let sent = ep.send(now, node, datagram);
        drain(&mut ep, tables, &mut cache.out);
        match sent {
            Sent::Sealed(d) => {
                cache.scratch = d;
                Outgoing::Sealed
            }
            Sent::Queued => Outgoing::Held(None),
            Sent::Dropped => Outgoing::Held(Some(DropReason::NoSession)),
        }
    }

    /// Seals a run of datagrams of `segment` bytes each (the last may be shorter)
    /// into the cache's scratch buffer, each `segment + SEAL_OVERHEAD` apart.
    /// Returns the sealed segment size, or why not.
    pub fn outgoing_run(
        &self,
        cache: &mut SealCache,
        tables: &Tables,
        now: Time,
        node: crate::mac::MacAddr,
        run: &[u8],
        segment: usize,
    ) -> Result<usize, Outgoing> {
        let id = node_of(node);
        if !self.keyed(cache, id) {
            return Err(if self.required {
                Outgoing::Held(Some(DropReason::NoSession))
            } else {
                Outgoing::Plain
            });
        }
        let Some(s) = self.tx_session(&mut cache.tx, &mut cache.out, tables, now, id) else {
            // No session yet: the run goes datagram by datagram into the queue.
            return Err(Outgoing::Held(None));
        };
        cache.scratch.clear();
        for d in run.chunks(segment.max(1)) {
            if s.seal_into(d, &mut cache.one).is_err() {
                return Err(Outgoing::Held(Some(DropReason::NoSession)));
            }
            cache.scratch.extend_from_slice(&cache.one);
        }
        Ok(segment + seal::SEAL_OVERHEAD)
    }

    /// Opens (or takes in) a datagram from `from`, at `buf[range]`.
    pub fn incoming(
        &self,
        cache: &mut SealCache,
        tables: &Tables,
        now: Time,
        from: SocketAddrV4,
        buf: &mut [u8],
        range: Range<usize>,
    ) -> Incoming {
        let d = &mut buf[range.clone()];
        if seal::is_sealed(d) {
            let Ok(head) = seal::parse(d) else {
                return Incoming::Drop(DropReason::SealRefused);
            };
            let session = match cache.rx.get(&head.receiver) {
                Some(s) => s,
                None => {
                    // A session not seen this batch: the endpoint opens it, which
                    // also confirms a session it answered the first time it is used.
                    let mut ep = self.endpoint.lock();
                    let r = ep.receive(now, from, d);
                    if let Some(s) = ep.rx_session(now, head.receiver) {
                        cache.rx.insert(head.receiver, s);
                    }
                    drain(&mut ep, tables, &mut cache.out);
                    return match r {
                        Received::Data(r) => {
                            Incoming::Core(range.start + r.start..range.start + r.end)
                        }
                        Received::Handshake => Incoming::Taken,
                        Received::Dropped(_) => Incoming::Drop(DropReason::SealRefused),
                    };
                }
            };
            return match session.open(d) {
                Ok(r) if handshake::is_confirm(&d[r.clone()]) => Incoming::Taken,
                Ok(r) => Incoming::Core(range.start + r.start..range.start + r.end),
                Err(_) => Incoming::Drop(DropReason::SealRefused),
            };
        }
        if handshake::is_handshake(d) {
            let mut ep = self.endpoint.lock();
            let r = ep.receive(now, from, d);
            drain(&mut ep, tables, &mut cache.out);
            return match r {
                Received::Handshake => Incoming::Taken,
                Received::Dropped(Refused::Malformed) => Incoming::Drop(DropReason::BadEncap),
                _ => Incoming::Drop(DropReason::HandshakeRefused),
            };
        }
        // Plaintext: only from a node with no key, and never with `required`. (The
        // core then checks that the sender field is the peer the datagram came
        // from.)
        if self.required {
            return Incoming::Drop(DropReason::Plaintext);
        }
        // (Too short to name a sender: the core counts it as malformed.)
        if let Ok(plain) = sleeve::Packet::new_checked(&*d) {
            if self.keyed(cache, plain.sender()) {
                return Incoming::Drop(DropReason::Plaintext);
            }
        }
        Incoming::Core(range)
    }

    /// Runs the endpoint's timers if due; the handshakes they send go to `out`.
    /// Returns when they are next due.
    pub fn handle_timeout(
        &self,
        now: Time,
        tables: &Tables,
        out: &mut Vec<(SocketAddrV4, Vec<u8>)>,
    ) -> Option<Time> {
        let mut ep = self.endpoint.lock();
        if ep.poll_timeout().is_some_and(|at| now >= at) {
            ep.handle_timeout(now);
        }
        drain(&mut ep, tables, out);
        ep.poll_timeout()
    }
}

/// Moves the endpoint's transmits to `out`, with the peers' addresses.
fn drain(ep: &mut Endpoint, tables: &Tables, out: &mut Vec<(SocketAddrV4, Vec<u8>)>) {
    while let Some(t) = ep.poll_transmit() {
        let addr = match t.to {
            Dest::Addr(a) => Some(a),
            Dest::Peer(node) => tables
                .peers
                .iter()
                .find(|p| p.vtep_mac.0 == node.0)
                .map(|p| p.addr),
        };
        if let Some(addr) = addr {
            out.push((addr, t.datagram));
        }
    }
}

/// The UDP layer below the stage: a worker's socket, or the simulation's wire.
pub trait Tunnel {
    /// Sends one datagram to `peer` from the source port of `lane`.
    fn send(&mut self, peer: &PeerEntry, lane: usize, datagram: &[u8]);
    /// Sends consecutive datagrams of `segment` bytes each (the last may be
    /// shorter) to `peer`, in one GSO send.
    fn send_run(&mut self, peer: &PeerEntry, lane: usize, run: &[u8], segment: usize);
    /// Sends a handshake datagram to `addr`: a peer, or where an initiation came
    /// from (a cookie reply).
    fn send_to(&mut self, addr: SocketAddrV4, datagram: &[u8]);
}

/// One call into the seal stage: the node's sealer, a worker's cache, the batch's
/// snapshot and time, and the tunnel below.
#[derive(Debug)]
pub struct Stage<'a, T> {
    /// The node's sealer.
    pub sealer: &'a Sealer,
    /// The worker's sessions and buffers.
    pub cache: &'a mut SealCache,
    /// The forwarding snapshot of the batch.
    pub tables: &'a Tables,
    /// The time now.
    pub now: Time,
    /// Where datagrams go.
    pub tunnel: T,
}

impl<T: Tunnel> Stage<'_, T> {
    /// Sends the core's `datagram` to `peer`: sealed, plain (encryption on and the
    /// peer has no key), held for the handshake, or dropped and counted on the
    /// peer. A handshake it starts goes out too.
    pub fn to_peer(&mut self, peer: &PeerEntry, lane: usize, datagram: &[u8]) {
        let now = self.now;
        match (self.sealer).outgoing(self.cache, self.tables, now, peer.vtep_mac, datagram) {
            Outgoing::Sealed => self.tunnel.send(peer, lane, &self.cache.scratch),
            Outgoing::Plain => self.tunnel.send(peer, lane, datagram),
            Outgoing::Held(Some(reason)) => peer.counters.discard(self.cache.worker, reason),
            Outgoing::Held(None) => {}
        }
        self.cache.send_handshakes(&mut self.tunnel);
    }

    /// Sends a run of the core's datagrams (`segment` bytes each) to `peer`, sealed
    /// in one GSO send if a session is up; with none yet, datagram by datagram into
    /// the handshake's queue.
    pub fn to_peer_run(&mut self, peer: &PeerEntry, lane: usize, run: &[u8], segment: usize) {
        let (tables, now) = (self.tables, self.now);
        let sealed =
            (self.sealer).outgoing_run(self.cache, tables, now, peer.vtep_mac, run, segment);
        self.cache.send_handshakes(&mut self.tunnel);
        match sealed {
            Ok(sealed) => self
                .tunnel
                .send_run(peer, lane, &self.cache.scratch, sealed),
            Err(Outgoing::Plain) => self.tunnel.send_run(peer, lane, run, segment),
            Err(Outgoing::Held(Some(reason))) => peer.counters.discard(self.cache.worker, reason),
            Err(_) => {
                for d in run.chunks(segment.max(1)) {
                    self.to_peer(peer, lane, d);
                }
            }
        }
    }

    /// Takes the datagram at `buf[range]` from `from`: returns where the datagram
    /// for the core lies (opened, or plain), or `None` if the endpoint took it (a
    /// handshake message) or it was dropped, counted on the peer that address
    /// belongs to (on the tunnel if none).
    pub fn from_peer(
        &mut self,
        from: SocketAddrV4,
        buf: &mut [u8],
        range: Range<usize>,
    ) -> Option<Range<usize>> {
        let (tables, now) = (self.tables, self.now);
        let what = self
            .sealer
            .incoming(self.cache, tables, now, from, buf, range);
        self.cache.send_handshakes(&mut self.tunnel);
        match what {
            Incoming::Core(range) => Some(range),
            Incoming::Taken => None,
            Incoming::Drop(reason) => {
                let counters = tables
                    .peer_by_ip(*from.ip())
                    .map_or(&tables.tunnel, |j| &tables.peers[j].counters);
                counters.discard(self.cache.worker, reason);
                None
            }
        }
    }

    /// Runs the endpoint's timers if due and sends what they start; returns when
    /// they are next due.
    pub fn handle_timeout(&mut self) -> Option<Time> {
        let due = self
            .sealer
            .handle_timeout(self.now, self.tables, &mut self.cache.out);
        self.cache.send_handshakes(&mut self.tunnel);
        due
    }
}
