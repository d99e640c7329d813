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
//! Timers follow WireGuard's: the side that initiated a session starts a new
//! handshake when it is [`REKEY_AFTER_TIME`] old or has sent
//! [`REKEY_AFTER_MESSAGES`], the other side [`RESPONDER_GRACE`] later; a session is
//! dead at [`REJECT_AFTER_TIME`]. A rekey loses nothing: the old session keeps
//! sending until the new one is confirmed, and keeps receiving until it dies.

pub mod limit;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddrV4;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use weft_encap::sleeve::seal::{self, Cipher, ReplayWindow, SealKey};
use weft_encap::sleeve::{NodeId, HEADER_LEN};

use crate::core::time::Time;
use limit::{LoadMeter, RateLimiter};
use wire::{Macs, Message, MAC_LEN};

/// The Noise protocol of the handshake.
pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Mixed into every handshake, so that no other protocol's messages pass as ours.
const PROLOGUE: &[u8] = b"weft sleeve v1";

/// A session's initiator rekeys at this age.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// The responder rekeys this much later, so the two rarely start at once.
pub const RESPONDER_GRACE: Duration = Duration::from_secs(10);
/// A session neither sends nor receives at this age.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// A session rekeys after sending this many messages.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// An unanswered initiation is sent again, with a new ephemeral key, after this.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// A handshake that has not completed after this is given up (and its queue
/// dropped); the next datagram to the peer starts another.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// A cookie is good for this long, and the cookie secret rotates as often.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(120);
/// Datagrams kept per peer while its handshake runs; more are dropped, counted.
pub const QUEUE_MAX: usize = 32;
/// Sessions kept for receiving after they stop sending, at most (they die at
/// [`REJECT_AFTER_TIME`] anyway; rekeys every two minutes make two or three).
const MAX_RETIRED: usize = 4;

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

/// One established session: its keys, its indexes, the send counter and the
/// replay window. Shared with the workers that seal and open with it.
#[derive(Debug)]
pub struct Session {
    /// The peer it is with: what the sender field of every datagram it opens must
    /// say.
    pub peer: NodeId,
    /// The index this node chose: peers put it in datagrams to us.
    pub local_index: u32,
    /// The peer's index: we put it in datagrams to the peer.
    pub remote_index: u32,
    /// When the handshake completed.
    pub created: Time,
    /// Whether this node initiated it.
    pub initiator: bool,
    tx: SealKey,
    rx: SealKey,
    counter: AtomicU64,
    window: Mutex<ReplayWindow>,
}

impl Session {
    /// The session's cipher.
    pub fn cipher(&self) -> Cipher {
        self.tx.cipher()
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }

    /// Seals the plain datagram `plain` (header and body) into `out`.
    pub fn seal_into(&self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), seal::Error> {
        out.clear();
        out.extend_from_slice(&plain[..HEADER_LEN]);
        out.extend_from_slice(&[0; seal::SEAL_HEADER_LEN]);
        out.extend_from_slice(&plain[HEADER_LEN..]);
        out.extend_from_slice(&[0; seal::TAG_LEN]);
        // Never wraps: at the end of the counter every send fails.
        let counter = self
            .counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_add(1))
            .map_err(|c| seal::Error::CounterExhausted { counter: c })?;
        seal::seal(&self.tx, self.remote_index, counter, out)
    }

    /// Opens the sealed `datagram` in place; returns where the plain one lies. The
    /// replay window is locked to check the counter and again to record it, not
    /// while the AEAD runs, so workers open one peer's datagrams in parallel (two
    /// copies of one datagram opened at once: the second to record it is refused).
    /// A datagram whose sender is not the session's peer is refused as forged.
    pub fn open(&self, datagram: &mut [u8]) -> Result<Range<usize>, seal::Error> {
        let head = seal::parse(datagram)?;
        self.window.lock().check(head.counter)?;
        let range = seal::decrypt(&self.rx, datagram)?;
        self.window.lock().accept(head.counter)?;
        if datagram[range.start + 4..range.start + 10] != self.peer.0 {
            return Err(seal::Error::Forged);
        }
        Ok(range)
    }

    /// Moves the send counter on to `n` (tests: 2^60 messages take a while).
    #[cfg(test)]
    fn skip_to(&self, n: u64) {
        self.counter.store(n, Ordering::Relaxed);
    }

    fn alive(&self, now: Time) -> bool {
        now.saturating_since(self.created) < REJECT_AFTER_TIME
            && self.sent() < seal::REJECT_AFTER_MESSAGES
    }

    fn wants_rekey(&self, now: Time) -> bool {
        let age = now.saturating_since(self.created);
        let due = if self.initiator {
            REKEY_AFTER_TIME
        } else {
            REKEY_AFTER_TIME + RESPONDER_GRACE
        };
        age >= due || self.sent() >= REKEY_AFTER_MESSAGES
    }
}

/// A handshake this node started.
struct Pending {
    hs: Box<snow::HandshakeState>,
    local_index: u32,
    /// When the current initiation was sent, and when the first was.
    sent_at: Time,
    started: Time,
    /// The initiation's mac1, to open a cookie reply with.
    mac1: [u8; MAC_LEN],
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
    failures: u64,
    queue_drops: u64,
}

impl Peer {
    /// The confirmed sessions that open datagrams: the sending one, then the
    /// retired ones, newest first.
    fn confirmed(&self) -> impl Iterator<Item = &Arc<Session>> {
        self.current.iter().chain(&self.retired)
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

fn new_secret(rng: &SystemRandom) -> hmac::Key {
    hmac::Key::generate(hmac::HMAC_SHA256, rng).expect("the system's random source")
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

    fn peer_of(&self, node: NodeId) -> Option<usize> {
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

    /// The live, confirmed session whose local index is `index`, for a worker to
    /// open datagrams with on its own. A session this node answered but has not
    /// seen used is not handed out: its first datagram goes through
    /// [`Endpoint::receive`], which confirms it.
    pub fn rx_session(&self, now: Time, index: u32) -> Option<Arc<Session>> {
        let p = &self.peers[*self.index.get(&index)?];
        p.confirmed()
            .find(|s| s.local_index == index && s.alive(now))
            .cloned()
    }

    /// The nodes that are peers.
    pub fn peer_nodes(&self) -> Vec<NodeId> {
        self.peers.iter().map(|p| p.node).collect()
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    fn random_index(&self) -> u32 {
        loop {
            let mut b = [0u8; 4];
            self.rng.fill(&mut b).expect("the system's random source");
            let i = u32::from_be_bytes(b);
            if i != 0 && !self.index.contains_key(&i) {
                return i;
            }
        }
    }

    fn builder<'a>(&'a self, psk: &'a [u8; 32]) -> snow::Builder<'a> {
        let params = NOISE_PARAMS.parse().expect("a valid Noise protocol name");
        snow::Builder::new(params)
            .local_private_key(&self.cfg.key.private)
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.psk(2, psk))
            .expect("valid keys and prologue")
    }

    fn psk(&self) -> [u8; 32] {
        self.cfg.psk.unwrap_or([0; 32])
    }

    /// Sends peer `i` a new initiation (a new ephemeral key, a new index).
    fn initiate(&mut self, now: Time, i: usize) {
        let psk = self.psk();
        let public = self.peers[i].public;
        let hs = self
            .builder(&psk)
            .remote_public_key(&public)
            .and_then(|b| b.build_initiator());
        let Ok(mut hs) = hs else {
            return;
        };
        let mut payload = [0u8; wire::INIT_PAYLOAD_LEN];
        let wall = self.cfg.wall_at_zero.saturating_add(now.as_nanos());
        payload[..8].copy_from_slice(&wall.to_be_bytes());
        payload[8] = self.cfg.cipher.id();
        let mut noise = [0u8; wire::NOISE_INIT_LEN];
        if hs.write_message(&payload, &mut noise).ok() != Some(wire::NOISE_INIT_LEN) {
            return;
        }
        let local_index = self.random_index();
        let mut datagram = Vec::with_capacity(wire::INITIATION_LEN);
        wire::initiation(
            &mut datagram,
            self.cfg.node,
            self.cfg.features,
            local_index,
            &noise,
        );
        let p = &mut self.peers[i];
        let cookie = p
            .cookie
            .filter(|(_, at)| now.saturating_since(*at) < COOKIE_LIFETIME)
            .map(|(c, _)| c);
        let mac1 = p.macs.stamp(&mut datagram, cookie.as_ref());
        let started = match p.pending.take() {
            Some(old) => {
                self.index.remove(&old.local_index);
                old.started
            }
            None => now,
        };
        let p = &mut self.peers[i];
        p.pending = Some(Pending {
            hs: Box::new(hs),
            local_index,
            sent_at: now,
            started,
            mac1,
        });
        self.index.insert(local_index, i);
        self.out.push_back(Transmit {
            to: Dest::Peer(p.node),
            datagram,
        });
    }

    /// Takes in a datagram from `from`: a handshake message, or a sealed datagram
    /// it opens in place.
    pub fn receive(&mut self, now: Time, from: SocketAddrV4, datagram: &mut [u8]) -> Received {
        if seal::is_sealed(datagram) {
            return self.receive_sealed(now, datagram);
        }
        match wire::parse(datagram) {
            Some(Message::Initiation { sender, noise }) => {
                let noise = noise.to_vec();
                self.receive_initiation(now, from, datagram, sender, &noise)
            }
            Some(Message::Response {
                sender,
                receiver,
                noise,
            }) => {
                let noise = noise.to_vec();
                self.receive_response(now, datagram, sender, receiver, &noise)
            }
            Some(Message::Cookie {
                receiver,
                nonce,
                sealed,
            }) => {
                let sealed = sealed.to_vec();
                self.receive_cookie(now, receiver, nonce, &sealed)
            }
            None => Received::Dropped(Refused::Malformed),
        }
    }

    fn receive_sealed(&mut self, now: Time, datagram: &mut [u8]) -> Received {
        let head = match seal::parse(datagram) {
            Ok(h) => h,
            Err(e) => return Received::Dropped(Refused::Seal(e)),
        };
        let Some(&i) = self.index.get(&head.receiver) else {
            return Received::Dropped(Refused::UnknownSession);
        };
        let p = &self.peers[i];
        let Some(session) = p
            .sessions()
            .find(|s| s.local_index == head.receiver)
            .filter(|s| s.alive(now))
            .cloned()
        else {
            return Received::Dropped(Refused::UnknownSession);
        };
        let range = match session.open(datagram) {
            Ok(r) => r,
            Err(e) => return Received::Dropped(Refused::Seal(e)),
        };
        // The initiator has used the session this node answered: it sends now.
        let p = &mut self.peers[i];
        if p.next
            .as_ref()
            .is_some_and(|n| n.local_index == head.receiver)
        {
            let next = p.next.take();
            self.promote(i, next.expect("checked"));
            self.flush_queue(i);
        }
        if datagram[range.start + 1] == wire::KIND_CONFIRM {
            return Received::Handshake;
        }
        Received::Data(range)
    }

    /// Makes `s` peer `i`'s sending session; the old one keeps receiving.
    fn promote(&mut self, i: usize, s: Arc<Session>) {
        let p = &mut self.peers[i];
        if let Some(old) = p.current.replace(s) {
            p.retired.push_front(old);
        }
        if p.retired.len() > MAX_RETIRED {
            let oldest = p.retired.pop_back().expect("more than none");
            self.index.remove(&oldest.local_index);
        }
    }

    /// Seals and sends what waited for peer `i`'s session.
    fn flush_queue(&mut self, i: usize) {
        let p = &mut self.peers[i];
        let Some(s) = p.current.clone() else {
            return;
        };
        let node = p.node;
        for plain in std::mem::take(&mut p.queue) {
            let mut out = Vec::new();
            if s.seal_into(&plain, &mut out).is_ok() {
                self.out.push_back(Transmit {
                    to: Dest::Peer(node),
                    datagram: out,
                });
            }
        }
    }

    /// Whether an initiation from `from` may cost a Diffie-Hellman now: under load
    /// it needs a valid mac2 (else a cookie reply goes back), and every source has
    /// a rate.
    fn admit(&mut self, now: Time, from: SocketAddrV4, datagram: &[u8], sender: u32) -> bool {
        if now.saturating_since(self.cookie_rotated) >= COOKIE_LIFETIME {
            self.cookie_secret = new_secret(&self.rng);
            self.cookie_rotated = now;
        }
        self.load.record(now);
        if self.load.under_load(now) {
            let cookie = wire::cookie_for(&self.cookie_secret, from);
            if !Macs::check_mac2(datagram, &cookie) {
                let mut nonce = [0u8; 12];
                self.rng
                    .fill(&mut nonce)
                    .expect("the system's random source");
                let mac1 = Macs::mac1_of(datagram);
                let mut reply = Vec::with_capacity(wire::COOKIE_LEN);
                let node = self.cfg.node;
                self.own_macs
                    .cookie_reply(&mut reply, node, sender, nonce, &cookie, &mac1);
                self.out.push_back(Transmit {
                    to: Dest::Addr(from),
                    datagram: reply,
                });
                return false;
            }
        }
        self.limiter.allow(*from.ip(), now)
    }

    /// Checks an initiation (MACs, rate limits, the Noise message, the sender's key
    /// and timestamp) and returns the responder's handshake, the peer, the
    /// initiation's timestamp and the cipher agreed, or why it is refused.
    fn read_initiation(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        datagram: &[u8],
        sender: u32,
        noise: &[u8],
    ) -> Result<(snow::HandshakeState, usize, u64, Cipher), Refused> {
        if !self.own_macs.check_mac1(datagram) {
            return Err(Refused::BadMac);
        }
        if !self.admit(now, from, datagram, sender) {
            return Err(Refused::RateLimited);
        }
        let psk = self.psk();
        let Ok(mut hs) = self.builder(&psk).build_responder() else {
            return Err(Refused::BadHandshake);
        };
        let mut payload = [0u8; wire::INIT_PAYLOAD_LEN];
        let read = hs.read_message(noise, &mut payload);
        let who = hs
            .get_remote_static()
            .and_then(|k| self.peers.iter().position(|p| p.public[..] == *k));
        let (Ok(wire::INIT_PAYLOAD_LEN), Some(i)) = (read, who) else {
            // Undecryptable, or a key that is no peer's: count it against the peer
            // the header names, if it is one.
            if let Some(i) = self.peer_of(sender_of(datagram)) {
                self.peers[i].failures += 1;
            }
            return Err(Refused::BadHandshake);
        };
        let timestamp = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
        if timestamp <= self.peers[i].last_timestamp {
            return Err(Refused::ReplayedHandshake);
        }
        let theirs = Cipher::from_id(payload[8]).unwrap_or(Cipher::ChaCha20Poly1305);
        Ok((hs, i, timestamp, Cipher::agree(theirs, self.cfg.cipher)))
    }

    fn receive_initiation(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        datagram: &[u8],
        sender: u32,
        noise: &[u8],
    ) -> Received {
        let (mut hs, i, timestamp, cipher) =
            match self.read_initiation(now, from, datagram, sender, noise) {
                Ok(read) => read,
                Err(refused) => return Received::Dropped(refused),
            };
        let mut noise_out = [0u8; wire::NOISE_RESP_LEN];
        if hs
            .write_message(&[self.cfg.cipher.id()], &mut noise_out)
            .ok()
            != Some(wire::NOISE_RESP_LEN)
        {
            return Received::Dropped(Refused::BadHandshake);
        }
        let (k_init, k_resp) = hs.dangerously_get_raw_split();
        let local_index = self.random_index();
        let session = Arc::new(Session {
            peer: self.peers[i].node,
            local_index,
            remote_index: sender,
            created: now,
            initiator: false,
            tx: SealKey::new(cipher, &k_resp),
            rx: SealKey::new(cipher, &k_init),
            counter: AtomicU64::new(0),
            window: Mutex::new(ReplayWindow::new()),
        });
        let mut out = Vec::with_capacity(wire::RESPONSE_LEN);
        let node = self.cfg.node;
        wire::response(
            &mut out,
            node,
            self.cfg.features,
            local_index,
            sender,
            &noise_out,
        );
        let p = &mut self.peers[i];
        p.macs.stamp(&mut out, None);
        p.last_timestamp = timestamp;
        p.handshakes += 1;
        if let Some(old) = p.next.replace(session) {
            self.index.remove(&old.local_index);
        }
        self.index.insert(local_index, i);
        self.out.push_back(Transmit {
            to: Dest::Peer(self.peers[i].node),
            datagram: out,
        });
        Received::Handshake
    }

    fn receive_response(
        &mut self,
        now: Time,
        datagram: &[u8],
        sender: u32,
        receiver: u32,
        noise: &[u8],
    ) -> Received {
        if !self.own_macs.check_mac1(datagram) {
            return Received::Dropped(Refused::BadMac);
        }
        let Some(&i) = self.index.get(&receiver) else {
            return Received::Dropped(Refused::UnknownSession);
        };
        let p = &mut self.peers[i];
        let Some(mut pending) = p.pending.take_if(|h| h.local_index == receiver) else {
            return Received::Dropped(Refused::UnknownSession);
        };
        let mut payload = [0u8; wire::RESP_PAYLOAD_LEN];
        if pending.hs.read_message(noise, &mut payload).ok() != Some(wire::RESP_PAYLOAD_LEN) {
            p.failures += 1;
            // The initiation stays pending: a forged response must not end it.
            p.pending = Some(pending);
            return Received::Dropped(Refused::BadHandshake);
        }
        let theirs = Cipher::from_id(payload[0]).unwrap_or(Cipher::ChaCha20Poly1305);
        let cipher = Cipher::agree(self.cfg.cipher, theirs);
        let (k_init, k_resp) = pending.hs.dangerously_get_raw_split();
        let session = Arc::new(Session {
            peer: p.node,
            local_index: receiver,
            remote_index: sender,
            created: now,
            initiator: true,
            tx: SealKey::new(cipher, &k_init),
            rx: SealKey::new(cipher, &k_resp),
            counter: AtomicU64::new(0),
            window: Mutex::new(ReplayWindow::new()),
        });
        p.handshakes += 1;
        self.promote(i, session.clone());
        if self.peers[i].queue.is_empty() {
            // Nothing to send: a confirmation tells the responder to send with it.
            let mut plain = Vec::with_capacity(HEADER_LEN);
            plain.extend_from_slice(&[weft_encap::sleeve::VERSION, wire::KIND_CONFIRM, 0, 0]);
            plain.extend_from_slice(&self.cfg.node.0);
            plain.extend_from_slice(&[self.cfg.features, 0]);
            let mut out = Vec::new();
            if session.seal_into(&plain, &mut out).is_ok() {
                self.out.push_back(Transmit {
                    to: Dest::Peer(self.peers[i].node),
                    datagram: out,
                });
            }
        }
        self.flush_queue(i);
        Received::Handshake
    }

    fn receive_cookie(
        &mut self,
        now: Time,
        receiver: u32,
        nonce: [u8; 12],
        sealed: &[u8],
    ) -> Received {
        let Some(&i) = self.index.get(&receiver) else {
            return Received::Dropped(Refused::UnknownSession);
        };
        let p = &mut self.peers[i];
        let Some(pending) = p.pending.as_ref().filter(|h| h.local_index == receiver) else {
            return Received::Dropped(Refused::UnknownSession);
        };
        let Some(cookie) = p.macs.open_cookie(nonce, sealed, &pending.mac1) else {
            return Received::Dropped(Refused::BadMac);
        };
        p.cookie = Some((cookie, now));
        Received::Handshake
    }

    /// When [`Endpoint::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut next: Option<Time> = None;
        let mut at = |t: Time| next = Some(next.map_or(t, |n| n.min(t)));
        for p in &self.peers {
            if let Some(h) = &p.pending {
                at(h.sent_at + REKEY_TIMEOUT);
            }
            for s in p.sessions() {
                at(s.created + REJECT_AFTER_TIME);
            }
        }
        next
    }

    /// Resends unanswered initiations, gives up old handshakes and drops dead
    /// sessions.
    pub fn handle_timeout(&mut self, now: Time) {
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            let mut dead = Vec::new();
            for slot in [&mut p.current, &mut p.next] {
                if slot.as_ref().is_some_and(|s| !s.alive(now)) {
                    dead.push(slot.take().expect("checked").local_index);
                }
            }
            dead.extend(
                p.retired
                    .iter()
                    .filter(|s| !s.alive(now))
                    .map(|s| s.local_index),
            );
            p.retired.retain(|s| s.alive(now));
            for idx in dead {
                self.index.remove(&idx);
            }
            let p = &mut self.peers[i];
            let Some(h) = &p.pending else {
                continue;
            };
            if now.saturating_since(h.started) >= REKEY_ATTEMPT_TIME {
                let idx = h.local_index;
                p.pending = None;
                p.failures += 1;
                p.queue_drops += p.queue.len() as u64;
                p.queue.clear();
                self.index.remove(&idx);
            } else if now.saturating_since(h.sent_at) >= REKEY_TIMEOUT {
                self.initiate(now, i);
            }
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
            handshake_failures: p.failures,
            queue_drops: p.queue_drops,
        })
    }
}

/// The sender field of a datagram's sleeve header.
fn sender_of(datagram: &[u8]) -> NodeId {
    let mut id = [0u8; 6];
    id.copy_from_slice(&datagram[4..10]);
    NodeId(id)
}

#[cfg(test)]
mod tests;
