//! Sessions between nodes for the encrypted sleeve: a Noise IK handshake, rekeying
//! and the session keys, as a sans-I/O state machine with the time passed in.
//!
//! An [`Endpoint`] is one node's side of every peer's session. The caller feeds it
//! what it receives ([`Endpoint::receive`]) and what it wants to send
//! ([`Endpoint::send`]), calls [`Endpoint::handle_timeout`] when
//! [`Endpoint::poll_timeout`] says, and sends what [`Endpoint::poll_transmit`]
//! hands out; it never touches a socket or a clock. The handshake is
//! `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` from `snow` (the psk is the cluster's
//! pre-shared key, or zeros without one, as WireGuard does); the session's keys are
//! Noise's split, used by [`weft_encap::sleeve::seal`] with `ring`'s AEAD, so that
//! the datagram headers are authenticated too and AES-256-GCM can be used where the
//! CPU has it. That needs snow's `risky-raw-split`: the split keys are the Noise
//! transport keys, only driven by another AEAD implementation.
//!
//! The endpoint is split as boringtun's is: [`handshake`] (the Noise messages and
//! their MACs), [`session`] (established sessions: sealing, opening, confirming
//! and retiring them), [`timers`] (rekeys, retries, deaths) and [`limiter`] (rate
//! limits and cookies under load). The messages' layout is
//! [`weft_encap::sleeve::handshake`]'s.
//!
//! Timers follow WireGuard's: the side that initiated a session starts a new
//! handshake when it is [`REKEY_AFTER_TIME`] old or has sent
//! [`REKEY_AFTER_MESSAGES`], the other side [`RESPONDER_GRACE`] later; a session is
//! dead at [`REJECT_AFTER_TIME`]. A rekey loses nothing: the old session keeps
//! sending until the new one is confirmed, and keeps receiving until it dies.

pub mod handshake;
pub mod limiter;
pub mod session;
pub mod stage;
pub mod timers;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddrV4;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use weft_encap::sleeve::handshake::{Repr, MAC_LEN};
use weft_encap::sleeve::seal::{self, Cipher};
use weft_encap::sleeve::NodeId;

use crate::core::time::Time;
pub use handshake::NOISE_PARAMS;
use handshake::{Macs, Pending};
pub use limiter::COOKIE_LIFETIME;
use limiter::{new_secret, LoadMeter, RateLimiter};
pub use session::Session;
pub use timers::{
    REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT,
    RESPONDER_GRACE,
};

/// Datagrams kept per peer while its handshake runs; more are dropped, counted.
pub const QUEUE_MAX: usize = 32;
/// Sessions kept for receiving after they stop sending, at most (they die at
/// [`REJECT_AFTER_TIME`] anyway; rekeys every two minutes make two or three).
pub(crate) const MAX_RETIRED: usize = 4;

/// A node's static X25519 key pair.
#[derive(Clone)]
pub struct StaticKey {
    private: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("StaticKey")
            .field("public", &hex(&self.public))
            .finish_non_exhaustive()
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl StaticKey {
    /// A new random key pair.
    pub fn generate() -> StaticKey {
        let mut private = [0u8; 32];
        SystemRandom::new()
            .fill(&mut private)
            .expect("the system's random source");
        StaticKey::from_private(private)
    }

    /// The key pair of `private` (clamped by X25519 as it is used).
    pub fn from_private(private: [u8; 32]) -> StaticKey {
        let public = curve25519_dalek::MontgomeryPoint::mul_base_clamped(private).to_bytes();
        StaticKey { private, public }
    }

    /// The public half.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The private half, for storing it.
    pub fn private(&self) -> &[u8; 32] {
        &self.private
    }
}

/// What an endpoint is configured with.
#[derive(Clone)]
pub struct Config {
    /// This node's identity on the wire.
    pub node: NodeId,
    /// The sleeve features this node announces.
    pub features: u8,
    /// This node's static key.
    pub key: StaticKey,
    /// The cluster's pre-shared key, if it has one.
    pub psk: Option<[u8; 32]>,
    /// The cipher this node prefers ([`Cipher::preferred`]).
    pub cipher: Cipher,
    /// Wall-clock nanoseconds (since the Unix epoch) at `Time::ZERO`: initiations
    /// carry wall-clock timestamps, so a responder refuses a replayed one even
    /// after the initiator restarted.
    pub wall_at_zero: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys: the static key redacts itself, the psk is only named.
        f.debug_struct("Config")
            .field("node", &self.node)
            .field("key", &self.key)
            .field("psk", &self.psk.map(|_| "set"))
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

/// Where a peer's session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No session and no handshake.
    Idle,
    /// A handshake is running and there is no session to send with.
    Handshaking,
    /// A session sends (a rekey may be running).
    Established,
}

/// A peer's counters and state, for `weft peers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStatus {
    /// The state.
    pub state: State,
    /// The age of the session that sends, if any.
    pub key_age: Option<Duration>,
    /// Its cipher.
    pub cipher: Option<Cipher>,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Of those, the ones that replaced a live session: rekeys.
    pub rekeys: u64,
    /// Handshakes that failed: bad messages, and attempts given up.
    pub handshake_failures: u64,
    /// Datagrams dropped while waiting for a session (queue full, or given up).
    pub queue_drops: u64,
}

/// One peer as the endpoint knows it.
struct Peer {
    node: NodeId,
    public: [u8; 32],
    macs: Macs,
    /// The session that sends; the ones before it, newest first, which still
    /// receive until they die (the peer may still send on one: after a
    /// simultaneous handshake each side sends on the session the other started);
    /// and one this node answered but has not seen used yet.
    current: Option<Arc<Session>>,
    retired: VecDeque<Arc<Session>>,
    next: Option<Arc<Session>>,
    pending: Option<Pending>,
    queue: VecDeque<Vec<u8>>,
    /// The greatest initiation timestamp accepted from the peer.
    last_timestamp: u64,
    /// A cookie the peer gave us, and when.
    cookie: Option<([u8; MAC_LEN], Time)>,
    handshakes: u64,
    rekeys: u64,
    failures: u64,
    queue_drops: u64,
}

impl Peer {
    /// The confirmed sessions that open datagrams: the sending one, then the
    /// retired ones, newest first.
    fn confirmed(&self) -> impl Iterator<Item = &Arc<Session>> {
        self.current.iter().chain(&self.retired)
    }

    /// Counts a completed handshake at `now`: a rekey if a confirmed session
    /// that sends is alive for the new one to replace (an answered session not
    /// yet used, as in simultaneous handshakes, replaces nothing).
    fn handshake_done(&mut self, now: Time) {
        self.handshakes += 1;
        if self.current.as_ref().is_some_and(|s| s.alive(now)) {
            self.rekeys += 1;
        }
    }

    /// Every session: the answered one, then the confirmed ones.
    fn sessions(&self) -> impl Iterator<Item = &Arc<Session>> {
        self.next.iter().chain(self.confirmed())
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to: a peer, or the address a cookie reply answers.
    pub to: Dest,
    /// The sleeve datagram.
    pub datagram: Vec<u8>,
}

/// A transmit's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// A peer node.
    Peer(NodeId),
    /// An address (a cookie reply goes where the initiation came from).
    Addr(SocketAddrV4),
}

/// What [`Endpoint::send`] did with a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Sealed, ready to send.
    Sealed(Vec<u8>),
    /// Queued until the handshake completes.
    Queued,
    /// Dropped: the queue was full, or the peer is unknown.
    Dropped,
}

/// What [`Endpoint::receive`] made of a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A sealed datagram, opened: the plain datagram is at this range of the buffer.
    Data(Range<usize>),
    /// A handshake message (or a confirmation), taken in.
    Handshake,
    /// Dropped, for this reason.
    Dropped(Refused),
}

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a handshake message or a sealed datagram.
    Malformed,
    /// mac1 is wrong: not for this node's key.
    BadMac,
    /// The source address is over its rate; or the node is under load and the
    /// message had no valid cookie (a cookie reply was sent).
    RateLimited,
    /// The Noise message does not decrypt, or names a key that is no peer's.
    BadHandshake,
    /// An initiation whose timestamp is not newer than the last one accepted.
    ReplayedHandshake,
    /// No session has the receiver index (or it is dead).
    UnknownSession,
    /// The sealed datagram failed to open.
    Seal(seal::Error),
}

/// One node's sessions with all its peers.
pub struct Endpoint {
    cfg: Config,
    own_macs: Macs,
    peers: Vec<Peer>,
    /// Session index → peer (its position in `peers`).
    index: HashMap<u32, usize>,
    rng: SystemRandom,
    cookie_secret: hmac::Key,
    cookie_rotated: Time,
    limiter: RateLimiter,
    load: LoadMeter,
    out: VecDeque<Transmit>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("node", &self.cfg.node)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint with no peers.
    pub fn new(cfg: Config) -> Endpoint {
        let rng = SystemRandom::new();
        Endpoint {
            own_macs: Macs::to(&cfg.key.public),
            cookie_secret: new_secret(&rng),
            cookie_rotated: Time::ZERO,
            cfg,
            peers: Vec::new(),
            index: HashMap::new(),
            rng,
            limiter: RateLimiter::default(),
            load: LoadMeter::default(),
            out: VecDeque::new(),
        }
    }

    /// This node's public key.
    pub fn public(&self) -> [u8; 32] {
        self.cfg.key.public
    }

    /// Adds `node` with static public key `public`, or changes its key (which ends
    /// its sessions).
    pub fn set_peer(&mut self, node: NodeId, public: [u8; 32]) {
        if let Some(i) = self.peers.iter().position(|p| p.node == node) {
            if self.peers[i].public != public {
                self.forget_sessions(i);
                let p = &mut self.peers[i];
                p.public = public;
                p.macs = Macs::to(&public);
                p.last_timestamp = 0;
                p.cookie = None;
            }
            return;
        }
        self.peers.push(Peer {
            node,
            public,
            macs: Macs::to(&public),
            current: None,
            retired: VecDeque::new(),
            next: None,
            pending: None,
            queue: VecDeque::new(),
            last_timestamp: 0,
            cookie: None,
            handshakes: 0,
            rekeys: 0,
            failures: 0,
            queue_drops: 0,
        });
    }

    /// Removes `node` and its sessions.
    pub fn remove_peer(&mut self, node: NodeId) {
        if let Some(i) = self.peers.iter().position(|p| p.node == node) {
            self.forget_sessions(i);
            self.peers.swap_remove(i);
            // The peer that moved into `i` has its indexes renumbered.
            for v in self.index.values_mut() {
                if *v == self.peers.len() {
                    *v = i;
                }
            }
        }
    }

    fn forget_sessions(&mut self, i: usize) {
        let p = &mut self.peers[i];
        let indexes = p
            .sessions()
            .map(|s| s.local_index)
            .chain(p.pending.as_ref().map(|h| h.local_index))
            .collect::<Vec<_>>();
        for idx in indexes {
            self.index.remove(&idx);
        }
        let p = &mut self.peers[i];
        p.current = None;
        p.retired.clear();
        p.next = None;
        p.pending = None;
        p.queue_drops += p.queue.len() as u64;
        p.queue.clear();
    }

    pub(super) fn peer_of(&self, node: NodeId) -> Option<usize> {
        self.peers.iter().position(|p| p.node == node)
    }

    /// The session to seal datagrams to `node` with, if one is alive. Starts a
    /// handshake if there is none, or if the session is due for a rekey.
    pub fn session(&mut self, now: Time, node: NodeId) -> Option<Arc<Session>> {
        let i = self.peer_of(node)?;
        let p = &self.peers[i];
        let current = p.current.clone().filter(|s| s.alive(now));
        let rekey = current.as_ref().is_none_or(|s| s.wants_rekey(now));
        // A session this node just answered will send once the initiator uses it.
        let answered = p
            .next
            .as_ref()
            .is_some_and(|n| now.saturating_since(n.created) < REKEY_TIMEOUT);
        if rekey && p.pending.is_none() && !answered {
            self.initiate(now, i);
        }
        current
    }

    /// Seals the plain datagram `plain` for `node`, or queues it while a handshake
    /// runs (at most [`QUEUE_MAX`]).
    pub fn send(&mut self, now: Time, node: NodeId, plain: &[u8]) -> Sent {
        let Some(i) = self.peer_of(node) else {
            return Sent::Dropped;
        };
        if let Some(s) = self.session(now, node) {
            let mut out = Vec::with_capacity(seal::sealed_len(plain.len()));
            return match s.seal_into(plain, &mut out) {
                Ok(()) => Sent::Sealed(out),
                Err(_) => Sent::Dropped,
            };
        }
        let p = &mut self.peers[i];
        if p.queue.len() >= QUEUE_MAX {
            p.queue_drops += 1;
            return Sent::Dropped;
        }
        p.queue.push_back(plain.to_vec());
        Sent::Queued
    }

    /// Whether `node` is a peer with a key.
    pub fn knows(&self, node: NodeId) -> bool {
        self.peer_of(node).is_some()
    }

    /// The nodes that are peers.
    pub fn peer_nodes(&self) -> Vec<NodeId> {
        self.peers.iter().map(|p| p.node).collect()
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// Takes in a datagram from `from`: a handshake message, or a sealed datagram
    /// it opens in place.
    pub fn receive(&mut self, now: Time, from: SocketAddrV4, datagram: &mut [u8]) -> Received {
        if seal::is_sealed(datagram) {
            return self.receive_sealed(now, datagram);
        }
        match Repr::parse(datagram) {
            Ok(Repr::Initiation(m)) => self.receive_initiation(now, from, datagram, &m),
            Ok(Repr::Response(m)) => self.receive_response(now, datagram, &m),
            Ok(Repr::Cookie(m)) => self.receive_cookie(now, &m),
            Err(_) => Received::Dropped(Refused::Malformed),
        }
    }

    /// The state and counters of `node`'s session.
    pub fn status(&self, now: Time, node: NodeId) -> Option<PeerStatus> {
        let p = &self.peers[self.peer_of(node)?];
        let current = p.current.as_ref().filter(|s| s.alive(now));
        Some(PeerStatus {
            state: match (current, &p.pending) {
                (Some(_), _) => State::Established,
                (None, Some(_)) => State::Handshaking,
                (None, None) => State::Idle,
            },
            key_age: current.map(|s| now.saturating_since(s.created)),
            cipher: current.map(|s| s.cipher()),
            handshakes: p.handshakes,
            rekeys: p.rekeys,
            handshake_failures: p.failures,
            queue_drops: p.queue_drops,
        })
    }
}

#[cfg(test)]
mod tests;
