//! The sleeve's handshake state machine (`weft_switch::crypto::Endpoint`),
//! initiator and responder, with a man in the middle: two endpoints that know
//! each other's keys, and a wire the fuzzer controls. It delivers, drops,
//! replays, reorders, truncates and tampers with their messages, and injects
//! its own, with a right mac1 if it likes (an attacker who knows a node's
//! public key can compute it).

use std::collections::{BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use ring::{digest, hmac};
use weft_encap::sleeve::handshake::{INITIATION_LEN, MAC_LEN, RESPONSE_LEN};
use weft_encap::sleeve::seal::Cipher;
use weft_encap::sleeve::NodeId;
use weft_switch::core::Time;
use weft_switch::crypto::{self, Dest, Endpoint, Received, Sent, StaticKey};

const NODES: [NodeId; 2] = [NodeId([2, 0, 0, 0, 0, 0xa]), NodeId([2, 0, 0, 0, 0, 0xb])];
const ADDRS: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 8472),
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 8472),
];
/// How long the network may take to recover once the attack stops.
const RECOVERY: Duration = Duration::from_secs(600);

#[derive(Debug, Arbitrary)]
struct Input {
    psk: bool,
    aes: [bool; 2],
    ops: Vec<Op>,
}

/// One move of the endpoints or of the man in the middle. `side` picks an
/// endpoint (false: A), `pick` a datagram on the wire or in its history.
#[derive(Debug, Arbitrary)]
enum Op {
    /// An endpoint seals a new datagram for the other.
    Send { side: bool },
    /// The wire delivers a datagram as it was sent.
    Deliver { pick: u8 },
    /// The wire loses one.
    Lose { pick: u8 },
    /// A datagram seen before arrives again.
    Replay { pick: u8 },
    /// A datagram seen before arrives with a byte changed (and mac1 made right).
    Tamper {
        pick: u8,
        at: u16,
        xor: u8,
        mac1: bool,
    },
    /// A datagram seen before arrives cut short.
    Truncate { pick: u8, len: u16 },
    /// Bytes of the attacker's own, from an address of its choice.
    Inject {
        side: bool,
        from: Option<u32>,
        bytes: Vec<u8>,
        mac1: bool,
    },
    /// Time passes, in milliseconds; both endpoints' timers run.
    Advance(u16),
}

/// A datagram on the wire: to which side, from where, its bytes.
#[derive(Debug, Clone)]
struct Datagram {
    to: usize,
    from: SocketAddrV4,
    bytes: Vec<u8>,
}

/// The two endpoints, the wire and what each side has sent and opened.
struct Net {
    ends: [Endpoint; 2],
    publics: [[u8; 32]; 2],
    now: Time,
    wire: VecDeque<Datagram>,
    history: Vec<Datagram>,
    /// The numbers each side has sealed or queued for the other.
    sent: [BTreeSet<u64>; 2],
    /// The numbers each side has opened from the other.
    opened: [BTreeSet<u64>; 2],
    /// The addresses each side has received from.
    heard_from: [BTreeSet<SocketAddrV4>; 2],
    next: u64,
}

/// Plays the operations of `data`, then stops attacking and lets the wire
/// deliver everything.
///
/// Panics if anything panics, if a side opens a datagram the other did not
/// seal (authenticity), opens one twice (replay), sends anywhere but to its
/// peer or to an address it heard from (a cookie reply), or if the two sides
/// cannot exchange data within ten simulated minutes of the attack stopping.
pub fn sleeve_handshake(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut net = Net::new(&input);
    for op in &input.ops {
        net.run(op);
        net.collect();
    }
    net.recover();
}

/// The plain datagram `n`, from `side`.
fn plain(side: usize, n: u64) -> Vec<u8> {
    let mut d = vec![1, 1, 0, 0];
    d.extend_from_slice(&NODES[side].0);
    d.extend_from_slice(&[0x03, 0, 0, 8, 0x08, 0]);
    d.extend_from_slice(&n.to_be_bytes());
    d
}

/// The number of the plain datagram `d`, if it is one of [`plain`]'s.
fn number(d: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(d.get(16..24)?.try_into().ok()?))
}

/// mac1 as an attacker computes it, from the receiver's public key: over a
/// message of `len` bytes, if it is an initiation or a response.
fn fix_mac1(bytes: &mut [u8], public: &[u8; 32]) {
    if bytes.len() != INITIATION_LEN && bytes.len() != RESPONSE_LEN {
        return;
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"weft mac1 v1");
    ctx.update(public);
    let key = hmac::Key::new(hmac::HMAC_SHA256, ctx.finish().as_ref());
    let at = bytes.len() - 2 * MAC_LEN;
    let tag = hmac::sign(&key, &bytes[..at]);
    bytes[at..at + MAC_LEN].copy_from_slice(&tag.as_ref()[..MAC_LEN]);
}

impl Net {
    fn new(input: &Input) -> Net {
        let keys = [0u8, 1].map(|i| StaticKey::from_private([i + 1; 32]));
        let publics = [keys[0].public(), keys[1].public()];
        let ends = [0, 1].map(|i| {
            let cipher = match input.aes[i] {
                true => Cipher::Aes256Gcm,
                false => Cipher::ChaCha20Poly1305,
            };
            let mut e = Endpoint::new(crypto::Config {
                node: NODES[i],
                features: weft_switch::core::FEATURES,
                key: keys[i].clone(),
                psk: input.psk.then_some([0x42; 32]),
                cipher,
                wall_at_zero: 1_800_000_000_000_000_000,
            });
            e.set_peer(NODES[1 - i], publics[1 - i]);
            e
        });
        Net {
            ends,
            publics,
            now: Time::from_nanos(1_000_000_000),
            wire: VecDeque::new(),
            history: Vec::new(),
            sent: Default::default(),
            opened: Default::default(),
            heard_from: Default::default(),
            next: 0,
        }
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Send { side } => self.send(usize::from(*side)),
            Op::Deliver { pick } => {
                if let Some(d) = self.take(*pick) {
                    self.receive(d);
                }
            }
            Op::Lose { pick } => drop(self.take(*pick)),
            Op::Replay { pick } => {
                if let Some(d) = self.seen(*pick) {
                    self.receive(d);
                }
            }
            Op::Tamper {
                pick,
                at,
                xor,
                mac1,
            } => {
                if let Some(mut d) = self.seen(*pick) {
                    let at = usize::from(*at) % d.bytes.len().max(1);
                    if let Some(b) = d.bytes.get_mut(at) {
                        *b ^= xor;
                    }
                    if *mac1 {
                        fix_mac1(&mut d.bytes, &self.publics[d.to]);
                    }
                    self.receive(d);
                }
            }
            Op::Truncate { pick, len } => {
                if let Some(mut d) = self.seen(*pick) {
                    d.bytes.truncate(usize::from(*len) % (d.bytes.len() + 1));
                    self.receive(d);
                }
            }
            Op::Inject {
                side,
                from,
                bytes,
                mac1,
            } => {
                let to = usize::from(*side);
                let from = from.map_or(ADDRS[1 - to], |ip| SocketAddrV4::new(ip.into(), 8472));
                let mut bytes = bytes.clone();
                if *mac1 {
                    fix_mac1(&mut bytes, &self.publics[to]);
                }
                self.receive(Datagram { to, from, bytes });
            }
            Op::Advance(ms) => self.advance(Duration::from_millis(u64::from(*ms))),
        }
    }

    /// Side `s` sends the next number to the other side.
    fn send(&mut self, s: usize) {
        let n = self.next;
        self.next += 1;
        match self.ends[s].send(self.now, NODES[1 - s], &plain(s, n)) {
            Sent::Sealed(bytes) => {
                self.sent[s].insert(n);
                self.put(s, bytes);
            }
            Sent::Queued => {
                self.sent[s].insert(n);
            }
            Sent::Dropped => {}
        }
    }

    fn put(&mut self, from: usize, bytes: Vec<u8>) {
        let d = Datagram {
            to: 1 - from,
            from: ADDRS[from],
            bytes,
        };
        self.history.push(d.clone());
        self.wire.push_back(d);
    }

    fn take(&mut self, pick: u8) -> Option<Datagram> {
        let len = self.wire.len();
        (len > 0).then(|| self.wire.remove(usize::from(pick) % len))?
    }

    fn seen(&self, pick: u8) -> Option<Datagram> {
        let len = self.history.len();
        (len > 0).then(|| self.history[usize::from(pick) % len].clone())
    }

    /// Hands `d` to its side, and checks what it opened.
    fn receive(&mut self, mut d: Datagram) {
        let to = d.to;
        self.heard_from[to].insert(d.from);
        if let Received::Data(range) = self.ends[to].receive(self.now, d.from, &mut d.bytes) {
            let opened = &d.bytes[range];
            let n = number(opened).filter(|_| opened.len() == 24);
            let n = n.unwrap_or_else(|| panic!("side {to} opened {opened:?}, never sent"));
            assert_eq!(opened, &plain(1 - to, n)[..], "side {to} opened a forgery");
            assert!(
                self.sent[1 - to].contains(&n),
                "side {to} opened {n}, never sent"
            );
            assert!(self.opened[to].insert(n), "side {to} opened {n} twice");
        }
    }

    /// Moves what the endpoints want sent onto the wire, checking where to.
    fn collect(&mut self) {
        for s in 0..2 {
            while let Some(t) = self.ends[s].poll_transmit() {
                match t.to {
                    Dest::Peer(node) => assert_eq!(node, NODES[1 - s], "side {s} sent to {node:?}"),
                    Dest::Addr(a) => assert!(self.heard_from[s].contains(&a), "side {s} to {a}"),
                }
                // A cookie reply to the attacker's address is the attacker's.
                if t.to == Dest::Addr(ADDRS[1 - s]) || matches!(t.to, Dest::Peer(_)) {
                    self.put(s, t.datagram);
                }
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        for e in &mut self.ends {
            if e.poll_timeout().is_some_and(|at| at <= self.now) {
                e.handle_timeout(self.now);
            }
        }
        self.collect();
    }

    /// With the attacker gone, both sides exchange data again in time.
    fn recover(&mut self) {
        let start = self.now;
        let baseline = [self.opened[0].len(), self.opened[1].len()];
        while self.now.saturating_since(start) < RECOVERY {
            self.send(0);
            self.send(1);
            self.collect();
            for _ in 0..64 {
                let Some(d) = self.wire.pop_front() else {
                    break;
                };
                self.receive(d);
                self.collect();
            }
            let got = [self.opened[0].len(), self.opened[1].len()];
            if got[0] > baseline[0] && got[1] > baseline[1] {
                return;
            }
            self.advance(Duration::from_secs(1));
        }
        panic!("the sides did not recover within {RECOVERY:?} of the attack");
    }
}
