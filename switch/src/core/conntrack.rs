//! Connection tracking for NetworkPolicy: the connections a policy allowed, so their
//! replies pass, with protocol timeouts on the core's clock.
//!
//! Each worker owns one table and is the only one to write it: open addressing with
//! linear probing, each slot a seqlock over three words, so the other workers read
//! it without a lock. They must: the two directions of one connection often reach
//! the switch on different workers (a tunnel flow lands by its outer 4-tuple, a pod's
//! reply by the TAP queue its kernel picks). A worker that finds another's entry
//! copies it into its own table, where it keeps it alive.
//!
//! A table holds at most its bound of live entries. A new connection that finds it
//! full takes the place of a connection not assured (one that has not gone both ways
//! and on), as Linux's early drop does, or is refused, and counted by the caller.
//! NetworkPolicy's tables are fair ([`Overflow::Fair`]): a source address holds at
//! most a share of its table, and a new connection displaces only an entry of a
//! source that holds more than its own; so a pod that floods the table with
//! connections it never completes churns its own entries and leaves the others
//! theirs. The hash is keyed by a seed random per table (from the process's random
//! hash keys), so a pod cannot aim its connections at one probe chain. Expired
//! entries are swept on a timer and become tombstones, which later inserts reuse; a
//! tombstone that ends a probe chain becomes an empty slot again, so that misses stay
//! short however many connections came and went. A new connection that displaces
//! another takes its slot where a lookup reaches it (no free slot lies before it),
//! so that a full table's churn does not fill its probe chains with tombstones.
//!
//! The tables are per address family ([`Addr`]): an IPv4 connection's two
//! addresses fill one word of a slot, an IPv6 one's four; nothing else differs.
//!
//! The timeouts are NetworkPolicy's ([`Timeouts::Policy`]), or the host's connection
//! tracker's ([`Timeouts::Host`]) for connections that must outlive its entries, or
//! one fixed lifetime.

use std::sync::atomic::{
    fence, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::Arc;
use std::time::Duration;

use super::Time;

/// Slots looked at before a lookup gives up, or an insert calls the table full.
const MAX_PROBE: usize = 32;
/// Slots a full table looks through for an entry to give up its place.
const EVICTION_SCAN: usize = 128;
/// Buckets a fair table counts its sources' entries in (256 KiB of counts). Sources
/// that share a bucket share its share: with a hundred pods on a node, two of them
/// do on about one node in fourteen; each still keeps its established connections,
/// and a flood from one churns the oldest of the bucket's others.
const SOURCE_BUCKETS: usize = 1 << 16;

/// An address as a connection table keeps it: IPv4's as `u32`, IPv6's as `u128`.
pub trait Addr:
    Copy + Eq + Ord + Default + std::fmt::Debug + std::hash::Hash + Send + Sync + 'static
{
    /// A key's two addresses, as the words of a slot.
    type Pair: Copy + Eq + Default + std::fmt::Debug;
    /// Where a slot keeps a pair, each word an atomic.
    type Cell: Default + std::fmt::Debug + Send + Sync;
    /// The pair of `src` and `dst`.
    fn pair(src: Self, dst: Self) -> Self::Pair;
    /// The addresses of `pair`, source first.
    fn unpair(pair: Self::Pair) -> (Self, Self);
    /// Reads `cell`'s words (relaxed: the slot's seqlock orders them).
    fn load(cell: &Self::Cell) -> Self::Pair;
    /// Writes `cell`'s words (relaxed, likewise).
    fn store(cell: &Self::Cell, pair: Self::Pair);
    /// The address mixed with `key`: every bit of either reaches every bit of the
    /// result, so that an address chosen without the key hits no chosen value.
    fn mix(self, key: u64) -> u64;
    /// Both addresses mixed with `key`, likewise.
    fn mix_pair(a: Self, b: Self, key: u64) -> u64;
    /// The source a fair table counts `self` as: itself if it lies in `own` (a
    /// network as address and mask, the cluster's pods, each of which holds one
    /// address) or there is no `own`; else whatever one holder is given whole.
    fn share_unit(self, own: Option<(Self, Self)>) -> Self;
}

impl Addr for u32 {
    type Pair = u64;
    type Cell = AtomicU64;
    fn pair(src: u32, dst: u32) -> u64 {
        u64::from(src) << 32 | u64::from(dst)
    }
    fn unpair(pair: u64) -> (u32, u32) {
        ((pair >> 32) as u32, pair as u32)
    }
    fn load(cell: &AtomicU64) -> u64 {
        cell.load(Relaxed)
    }
    fn store(cell: &AtomicU64, pair: u64) {
        cell.store(pair, Relaxed);
    }
    fn mix(self, key: u64) -> u64 {
        fmix64(u64::from(self) ^ key)
    }
    fn mix_pair(a: u32, b: u32, key: u64) -> u64 {
        fmix64(u32::pair(a, b) ^ key)
    }
    /// An IPv4 address is scarce: it counts alone.
    fn share_unit(self, _: Option<(u32, u32)>) -> u32 {
        self
    }
}

impl Addr for u128 {
    type Pair = [u64; 4];
    type Cell = [AtomicU64; 4];
    fn pair(src: u128, dst: u128) -> [u64; 4] {
        [
            (src >> 64) as u64,
            src as u64,
            (dst >> 64) as u64,
            dst as u64,
        ]
    }
    fn unpair(w: [u64; 4]) -> (u128, u128) {
        let join = |hi: u64, lo: u64| u128::from(hi) << 64 | u128::from(lo);
        (join(w[0], w[1]), join(w[2], w[3]))
    }
    fn load(cell: &[AtomicU64; 4]) -> [u64; 4] {
        [0, 1, 2, 3].map(|i| cell[i].load(Relaxed))
    }
    fn store(cell: &[AtomicU64; 4], pair: [u64; 4]) {
        for (c, w) in cell.iter().zip(pair) {
            c.store(w, Relaxed);
        }
    }
    fn mix(self, key: u64) -> u64 {
        // The prefix's half keyed and multiplied into a secret offset for the
        // other half: within one prefix the mix is a bijection (no two addresses
        // of a /64 meet), and across prefixes where two meet depends on the key.
        let offset = ((self >> 64) as u64 ^ key).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        fmix64(offset ^ self as u64)
    }
    fn mix_pair(a: u128, b: u128, key: u64) -> u64 {
        b.mix(a.mix(key))
    }
    /// An IPv6 address outside the cluster counts as its /64, the least a site
    /// is given (RFC 7421): otherwise a client with a /64 would be 2^64 sources,
    /// each with a share of its own.
    fn share_unit(self, own: Option<(u128, u128)>) -> u128 {
        match own {
            Some((net, mask)) if self & mask != net => self & !u128::from(u64::MAX),
            _ => self,
        }
    }
}

/// A connection's 5-tuple, in the direction of one packet. For ICMP echo, both ports
/// are the echo identifier, and the key holds the message's type: a reply is the
/// request's reverse, and a request the other way, on the same identifier, is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey<A: Addr = u32> {
    /// Source address.
    pub src: A,
    /// Destination address.
    pub dst: A,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// For ICMP, the message's type; 0 for other protocols.
    pub icmp: u8,
}

/// The ICMP type that answers a query of type `t` (RFC 792: echo, timestamp,
/// information; RFC 950: address mask), and the other way round; any other type
/// answers itself. Linux's connection tracker pairs them the same way.
fn icmp_answer(t: u8) -> u8 {
    match t {
        0 => 8,
        8 => 0,
        13 | 15 | 17 => t + 1,
        14 | 16 | 18 => t - 1,
        _ => t,
    }
}

/// The ICMPv6 type that answers a query of type `t` (RFC 4443: echo request 128
/// and reply 129), and the other way round; any other type answers itself.
fn icmpv6_answer(t: u8) -> u8 {
    match t {
        128 => 129,
        129 => 128,
        _ => t,
    }
}

impl<A: Addr> FlowKey<A> {
    /// The other direction: for an ICMP or ICMPv6 query, its answer.
    pub fn reverse(self) -> FlowKey<A> {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            icmp: match self.proto {
                weft_encap::ipv4::protocol::ICMP => icmp_answer(self.icmp),
                weft_encap::ipv6::next_header::ICMPV6 => icmpv6_answer(self.icmp),
                _ => self.icmp,
            },
        }
    }

    fn words(self) -> (A::Pair, u64) {
        (
            A::pair(self.src, self.dst),
            u64::from(self.sport) << 48
                | u64::from(self.dport) << 32
                | u64::from(self.proto) << 24
                | u64::from(self.icmp) << 16,
        )
    }

    fn of_words(a: A::Pair, b: u64) -> FlowKey<A> {
        let (src, dst) = A::unpair(a);
        FlowKey {
            src,
            dst,
            sport: (b >> 48) as u16,
            dport: (b >> 32) as u16,
            proto: (b >> 24) as u8,
            icmp: (b >> 16) as u8,
        }
    }

    /// A hash both directions share, keyed by `seed` (an ICMP query and its answer
    /// share it too: the type is left out). Every field reaches every bit:
    /// the many connections between two pods, which differ only in a port, must not
    /// share one probe chain, and a pod that picks its ports cannot aim at one
    /// chain without knowing the table's seed.
    fn symmetric_hash(self, seed: u64) -> u64 {
        let (lo, hi) = if (self.src, self.sport) <= (self.dst, self.dport) {
            ((self.src, self.sport), (self.dst, self.dport))
        } else {
            ((self.dst, self.dport), (self.src, self.sport))
        };
        let ports = u64::from(lo.1) << 32 | u64::from(hi.1) << 16 | u64::from(self.proto);
        fmix64(A::mix_pair(lo.0, hi.0, seed) ^ ports)
    }
}

/// MurmurHash3's 64-bit finalizer: every input bit flips each output bit with
/// probability about one half.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// What happened on a connection, which sets its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// A packet went the other way: the connection is two-way.
    pub replied: bool,
    /// TCP FIN or RST was seen: the connection is closing.
    pub closing: bool,
    /// A packet went the first way after a reply: a stream, not one request and
    /// its answer (Linux's "assured").
    pub assured: bool,
    /// The 5-tuple is in use by a connection that does not pass where this table's
    /// does (a pod's own, on the ports of one the host translated before).
    pub bypass: bool,
}

impl Flags {
    fn bits(self) -> u64 {
        u64::from(self.replied)
            | u64::from(self.closing) << 1
            | u64::from(self.assured) << 2
            | u64::from(self.bypass) << 3
    }

    fn of_bits(b: u64) -> Flags {
        Flags {
            replied: b & 1 != 0,
            closing: b & 2 != 0,
            assured: b & 4 != 0,
            bypass: b & 8 != 0,
        }
    }
}

/// Which timeouts a table's connections live by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeouts {
    /// NetworkPolicy's ([`timeout`]).
    Policy,
    /// At least as long as Linux's connection tracker keeps the same connection
    /// (its defaults, and a margin), but an established TCP connection a day, as
    /// NetworkPolicy's: see [`host_timeout`].
    Host,
    /// Every entry this long after it was last written.
    Fixed(Duration),
}

impl Timeouts {
    fn of(self, proto: u8, flags: Flags) -> Duration {
        match self {
            Timeouts::Policy => timeout(proto, flags),
            Timeouts::Host => host_timeout(proto, flags),
            Timeouts::Fixed(d) => d,
        }
    }
}

/// How long an idle connection is kept.
pub fn timeout(proto: u8, flags: Flags) -> Duration {
    use weft_encap::ipv4::protocol::{ICMP, SCTP, TCP, UDP};
    use weft_encap::ipv6::next_header::ICMPV6;
    let s = Duration::from_secs;
    match (proto, flags.replied, flags.closing) {
        (TCP | SCTP, _, true) => s(30),
        (TCP | SCTP, false, false) => s(60),
        (TCP | SCTP, true, false) => s(24 * 3600),
        (UDP, false, _) => s(30),
        (UDP, true, _) => s(180),
        (ICMP | ICMPV6, _, _) => s(30),
        _ => s(60),
    }
}

/// How long the host's connection tracker keeps a connection, with a margin of five
/// seconds, from Linux's defaults (`nf_conntrack_*_timeout*`): TCP before its
/// handshake completes (SYN_SENT 120 s, SYN_RECV 60 s), closing 120 s (FIN_WAIT,
/// TIME_WAIT), UDP 30 s, or as a stream 180 s (kernels before 5.17; 120 s since),
/// ICMP 30 s, other protocols 600 s. An established TCP connection (answered, and
/// acknowledged: "assured") is kept a day, where Linux keeps it five: one idle longer
/// may lose its translation.
pub fn host_timeout(proto: u8, flags: Flags) -> Duration {
    use weft_encap::ipv4::protocol::{ICMP, SCTP, TCP, UDP};
    let s = Duration::from_secs;
    match proto {
        TCP | SCTP if flags.replied && flags.assured && !flags.closing => s(24 * 3600),
        TCP | SCTP => s(125),
        UDP if flags.assured => s(185),
        UDP | ICMP => s(35),
        _ => s(605),
    }
}

/// The bits of a slot's word `b` that hold its key.
const KEY_BITS: u64 = !0xffff;
const EMPTY: u64 = 0;
const LIVE: u64 = 1;
const TOMBSTONE: u64 = 2;

/// One slot. `b` holds the ports, protocol, ICMP type (bits 16..24), flags (bits
/// 8..16) and state (bits 0..8);
/// `c` the expiry in seconds (high half) and the policy generation (low half).
/// `bucket` is its source's bucket in a fair table (in the room the seqlock's word
/// leaves before the others), which only the owner reads.
#[derive(Debug, Default)]
struct Slot<A: Addr> {
    seq: AtomicU32,
    bucket: AtomicU32,
    a: A::Cell,
    b: AtomicU64,
    c: AtomicU64,
}

/// An entry as a reader saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<A: Addr = u32> {
    /// The connection in the direction of its first packet.
    pub orig: FlowKey<A>,
    /// What happened on it.
    pub flags: Flags,
    /// The policy generation it was last allowed under (NetworkPolicy's tables), or
    /// the second it was last written (the host's, see [`Conntrack::lookup_latest`]).
    pub generation: u32,
    /// When it expires, in seconds of the core's clock.
    pub expires: u32,
    /// What a table with values ([`Conntrack::value_tables`]) keeps with the
    /// connection (the Services' translation); 0 in the others.
    pub value: u64,
}

impl<A: Addr> Entry<A> {
    /// The words a slot holds the entry in.
    fn words(&self) -> (A::Pair, u64, u64) {
        let (a, b) = self.orig.words();
        (
            a,
            b | self.flags.bits() << 8 | LIVE,
            u64::from(self.expires) << 32 | u64::from(self.generation),
        )
    }
}

impl<A: Addr> Slot<A> {
    /// A consistent copy of the slot and of its `value` word, if its table has
    /// values, or `None` while the owner writes it.
    fn read(&self, value: Option<&AtomicU64>) -> Option<(A::Pair, u64, u64, u64)> {
        for _ in 0..64 {
            let s1 = self.seq.load(Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let (a, b, c, d) = (
                A::load(&self.a),
                self.b.load(Relaxed),
                self.c.load(Relaxed),
                value.map_or(0, |v| v.load(Relaxed)),
            );
            fence(Acquire);
            if self.seq.load(Relaxed) == s1 {
                return Some((a, b, c, d));
            }
        }
        None
    }

    /// Writes the slot, and its `value` word if its table has values (the owner
    /// only).
    fn write(&self, a: A::Pair, b: u64, c: u64, value: Option<(&AtomicU64, u64)>) {
        let s = self.seq.load(Relaxed);
        self.seq.store(s.wrapping_add(1), Relaxed);
        fence(Release);
        A::store(&self.a, a);
        self.b.store(b, Relaxed);
        self.c.store(c, Relaxed);
        if let Some((v, d)) = value {
            v.store(d, Relaxed);
        }
        self.seq.store(s.wrapping_add(2), Release);
    }
}

/// `t` in whole seconds, as entries keep time.
pub fn seconds(t: Time) -> u32 {
    u32::try_from(t.as_nanos() / 1_000_000_000).unwrap_or(u32::MAX)
}

/// What a table at its bound does with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Gives it the place of the connection not assured that expires first, among
    /// the slots near its own (Linux's early drop), or refuses it.
    EarlyDrop,
    /// Holds each source address to `share` entries. A source at its share gives up
    /// its own connection not assured (or closing) that expires first (among the
    /// slots near the new one's), or is refused. A full table gives a new connection the place of
    /// such a connection of the source that holds the most, if it holds more than
    /// the new one's, else of the new one's own. So one source's flood churns its
    /// own entries, and never takes the room of another source holding less.
    Fair {
        /// The most entries one source address may hold.
        share: usize,
    },
}

/// One worker's table.
#[derive(Debug)]
pub struct Table<A: Addr = u32> {
    slots: Box<[Slot<A>]>,
    mask: usize,
    /// Live entries; written by the owner only.
    live: AtomicU64,
    max: u64,
    overflow: Overflow,
    /// With [`Overflow::Fair`], the live entries of the source addresses that hash
    /// to each bucket; written by the owner only.
    sources: Box<[AtomicU32]>,
    /// With [`Overflow::Fair`], the buckets of `sources` that hold a live entry:
    /// the sources present, give or take a collision; written by the owner only.
    active: AtomicU32,
    /// Live entries that gave up their place to a new connection.
    evicted: AtomicU64,
    /// New connections refused because their source held its share.
    over_share: AtomicU64,
    /// The hash's key, random per table.
    seed: u64,
    /// A word per slot kept with its entry ([`Entry::value`]), written and read
    /// under the slot's seqlock; empty in a table without values.
    values: Box<[AtomicU64]>,
    /// The network whose addresses a fair table counts one by one
    /// ([`Addr::share_unit`]); none: every address.
    own: Option<(A, A)>,
}

/// Where an entry was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found<A: Addr = u32> {
    /// The entry.
    pub entry: Entry<A>,
    /// The packet goes the entry's original way.
    pub forward: bool,
    /// In this worker's own table, at this slot.
    pub own_slot: Option<usize>,
}

/// What a walk along an entry's probe chain found ([`Table::chain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chain {
    /// The slot of the connection's unexpired entry.
    Held(usize),
    /// The slot of an expired entry, which the new one takes over.
    Expired(usize),
    /// A free slot, which the new entry takes.
    Free(usize),
    /// No slot to take without another entry giving up its place; the first free
    /// one, if any, for the new entry once one has.
    Short(Option<usize>),
}

/// Why a new connection found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The table holds its bound, and no entry could give up its place.
    Full,
    /// Its source holds its share of the table, and none of its own entries could
    /// give up its place.
    OverShare,
}

/// What a table has done with the connections it could not fit, since it was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OverflowStats {
    /// Live entries that gave up their place to a new connection.
    pub evicted: u64,
    /// New connections refused because their source held its share.
    pub over_share: u64,
}

impl std::ops::Add for OverflowStats {
    type Output = OverflowStats;

    /// Both counts summed.
    fn add(self, other: OverflowStats) -> OverflowStats {
        OverflowStats {
            evicted: self.evicted + other.evicted,
            over_share: self.over_share + other.over_share,
        }
    }
}

/// Adds one to a counter only its owner writes.
fn bump(n: &AtomicU64) {
    n.store(n.load(Relaxed) + 1, Relaxed);
}

impl<A: Addr> Table<A> {
    /// A table for at most `max` live connections, which `overflow` says how to keep.
    pub fn new(max: usize, overflow: Overflow) -> Table<A> {
        Table::with(max, overflow, false)
    }

    /// Like [`Table::new`], with a value kept beside each entry when `values`.
    fn with(max: usize, overflow: Overflow, values: bool) -> Table<A> {
        let slots = (max.max(1) * 2).next_power_of_two();
        let buckets = match overflow {
            Overflow::EarlyDrop => 0,
            Overflow::Fair { .. } => SOURCE_BUCKETS,
        };
        Table {
            slots: (0..slots).map(|_| Slot::default()).collect(),
            mask: slots - 1,
            live: AtomicU64::new(0),
            max: max as u64,
            overflow,
            sources: (0..buckets).map(|_| AtomicU32::new(0)).collect(),
            evicted: AtomicU64::new(0),
            over_share: AtomicU64::new(0),
            active: AtomicU32::new(0),
            seed: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                0u64,
            ),
            values: (0..if values { slots } else { 0 })
                .map(|_| AtomicU64::new(0))
                .collect(),
            own: None,
        }
    }

    /// The value word of slot `at`, in a table with values.
    fn value(&self, at: usize) -> Option<&AtomicU64> {
        self.values.get(at)
    }

    /// Writes slot `at`, with `value` in a table with values.
    fn write(&self, at: usize, (a, b, c): (A::Pair, u64, u64), value: u64) {
        self.slots[at].write(a, b, c, self.value(at).map(|v| (v, value)));
    }

    /// Live entries.
    pub fn live(&self) -> u64 {
        self.live.load(Acquire)
    }

    /// What the table has done with connections it could not fit.
    pub fn overflow_stats(&self) -> OverflowStats {
        OverflowStats {
            evicted: self.evicted.load(Relaxed),
            over_share: self.over_share.load(Relaxed),
        }
    }

    /// The bucket that counts the entries of source address `src`, in a fair table.
    /// Keyed by the table's seed, so that a pod cannot pick an address that shares
    /// another's bucket.
    fn bucket(&self, src: A) -> Option<usize> {
        let hash = src.share_unit(self.own).mix(self.seed.rotate_left(32)) as usize;
        (!self.sources.is_empty()).then(|| hash & (self.sources.len() - 1))
    }

    /// How many live entries the sources of `bucket` hold.
    fn held_in(&self, bucket: Option<usize>) -> u32 {
        bucket.map_or(0, |i| self.sources[i].load(Relaxed))
    }

    /// Counts one entry more, or one fewer, in `bucket` (the owner only).
    fn count(&self, bucket: Option<usize>, more: bool) {
        if let Some(n) = bucket.map(|i| &self.sources[i]) {
            let held = n.load(Relaxed);
            let now = if more {
                held + 1
            } else {
                held.saturating_sub(1)
            };
            n.store(now, Relaxed);
            if (held == 0) != (now == 0) {
                let active = self.active.load(Relaxed);
                let active = if now == 0 {
                    active.saturating_sub(1)
                } else {
                    active + 1
                };
                self.active.store(active, Relaxed);
            }
        }
    }

    /// A fair table's fair share for a new connection of a source that holds
    /// `mine`: the bound split evenly among the sources present, this one
    /// counted.
    fn fair_share(&self, mine: u32) -> u32 {
        let present = self.active.load(Relaxed) + u32::from(mine == 0);
        u32::try_from(self.max / u64::from(present.max(1))).unwrap_or(u32::MAX)
    }

    /// The bucket of the source of the live entry in slot `at`, in a fair table.
    fn bucket_of(&self, at: usize) -> Option<usize> {
        let bucket = self.slots[at].bucket.load(Relaxed) as usize;
        (!self.sources.is_empty()).then_some(bucket)
    }

    /// Whether a new connection from the sources of `bucket` fits without another
    /// entry giving up its place, and which limit it meets if not.
    fn room(&self, bucket: Option<usize>) -> Result<(), Refused> {
        if let Overflow::Fair { share } = self.overflow {
            if self.held_in(bucket) as usize >= share {
                return Err(Refused::OverShare);
            }
        }
        if self.live() >= self.max {
            return Err(Refused::Full);
        }
        Ok(())
    }

    /// The entry of `key`'s connection, either way, unexpired at `now`. Slots are
    /// compared word by word, with the key's words either way made once.
    fn find(&self, key: FlowKey<A>, now: u32) -> Option<(usize, Entry<A>, bool)> {
        let start = key.symmetric_hash(self.seed) as usize;
        let (forth, back) = (key.words(), key.reverse().words());
        for i in 0..MAX_PROBE {
            let at = (start + i) & self.mask;
            // A slot its owner is writing right now is skipped, not taken for the end
            // of the probe: the entry sought may lie beyond it.
            let Some((a, b, c, value)) = self.slots[at].read(self.value(at)) else {
                continue;
            };
            match b & 0xff {
                EMPTY => return None,
                LIVE => {
                    let words = (a, b & KEY_BITS);
                    let forward = words == forth;
                    if (forward || words == back) && (c >> 32) as u32 >= now {
                        let entry = Entry {
                            orig: FlowKey::of_words(a, b),
                            flags: Flags::of_bits(b >> 8),
                            generation: c as u32,
                            expires: (c >> 32) as u32,
                            value,
                        };
                        return Some((at, entry, forward));
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Records `entry` in a free slot, or updates the slot of its connection (the
    /// owner only). A new connection takes the slot of an expired entry not yet
    /// swept, or, where the table's bound or its source's share leaves no room, that
    /// of an entry which gives up its place ([`Table::victim`]).
    fn put(&self, entry: &Entry<A>, now: u32) -> Result<usize, Refused> {
        let words = entry.words();
        let value = entry.value;
        let src = entry.orig.src;
        let bucket = self.bucket(src);
        let room = self.room(bucket);
        let start = entry.orig.symmetric_hash(self.seed) as usize;
        let free = match self.chain(entry.orig, start, now, room, bucket) {
            Chain::Held(at) => {
                self.write(at, words, value);
                return Ok(at);
            }
            Chain::Expired(at) => {
                self.count(self.bucket_of(at), false);
                self.fill(at, words, value, bucket);
                return Ok(at);
            }
            Chain::Free(at) => {
                self.live.store(self.live() + 1, Relaxed);
                self.fill(at, words, value, bucket);
                return Ok(at);
            }
            Chain::Short(free) => free.ok_or(Refused::Full)?,
        };
        let short = room.err().unwrap_or(Refused::Full);
        let Some(victim) = self.victim(start, now, src, short) else {
            if short == Refused::OverShare {
                bump(&self.over_share);
            }
            return Err(short);
        };
        // The new entry takes the victim's own slot where a lookup reaches it (no
        // free slot, so no empty one, lies before it), rather than a free one: an
        // eviction then leaves no tombstone behind, and probe chains stay short.
        let offset = |at: usize| at.wrapping_sub(start) & self.mask;
        let at = if offset(victim) < offset(free) {
            victim
        } else {
            free
        };
        self.remove(victim);
        self.live.store(self.live() + 1, Relaxed);
        self.fill(at, words, value, bucket);
        Ok(at)
    }

    /// One walk along the probe chain of `key` from `start` (the owner only, so no
    /// write races it and the seqlock is not needed): the slot of its connection's
    /// unexpired entry, either way, or else the first slot a new entry from the
    /// sources of `bucket` may take, given the `room` the table has for it.
    fn chain(
        &self,
        key: FlowKey<A>,
        start: usize,
        now: u32,
        room: Result<(), Refused>,
        bucket: Option<usize>,
    ) -> Chain {
        let (forth, back) = (key.words(), key.reverse().words());
        // The first slot that may be taken, kept while the walk goes on to make sure
        // that the connection holds none further along; and the first free one.
        let (mut take, mut free) = (None, None);
        for i in 0..MAX_PROBE {
            let at = (start + i) & self.mask;
            let slot = &self.slots[at];
            let b = slot.b.load(Relaxed);
            let state = b & 0xff;
            let expired = ((slot.c.load(Relaxed) >> 32) as u32) < now;
            if state == LIVE && !expired && {
                let words = (A::load(&slot.a), b & KEY_BITS);
                words == forth || words == back
            } {
                return Chain::Held(at);
            }
            if take.is_none() {
                if state == LIVE {
                    // An expired entry's slot is taken over as it is, unless that
                    // would take its source past its share.
                    let over = room == Err(Refused::OverShare) && self.bucket_of(at) != bucket;
                    if expired && !over {
                        take = Some(Chain::Expired(at));
                    }
                } else if room.is_ok() {
                    take = Some(Chain::Free(at));
                } else {
                    free.get_or_insert(at);
                }
            }
            if state == EMPTY {
                // Nothing lies beyond an empty slot.
                break;
            }
        }
        take.unwrap_or(Chain::Short(free))
    }

    /// Writes the words of a new entry into slot `at` and counts it in its source's
    /// `bucket` (the owner only).
    fn fill(&self, at: usize, words: (A::Pair, u64, u64), value: u64, bucket: Option<usize>) {
        self.count(bucket, true);
        self.slots[at]
            .bucket
            .store(bucket.unwrap_or(0) as u32, Relaxed);
        self.write(at, words, value);
    }

    /// The slot whose entry gives up its place to a new connection from `src` that
    /// is `short` of room, among the slots from `start` on: an expired entry, or a
    /// connection not assured that the table's [`Overflow`] lets go, the one that
    /// expires first. A fair table lets go of one of `src`'s own when it holds its
    /// share; when it is full, of one of the source holding the most, if it holds
    /// more than `src`, else of one of `src`'s own. When it is full and `src` holds
    /// less than a fair share ([`Table::fair_share`]), even an assured connection of
    /// a source holding more than that gives way: otherwise a few pods that open
    /// connections to each other and leave them idle (each a day long once
    /// assured) would hold the whole table from every other pod. Counts an eviction.
    fn victim(&self, start: usize, now: u32, src: A, short: Refused) -> Option<usize> {
        let own = self.bucket(src);
        let mine = self.held_in(own);
        let fair = match (self.overflow, short) {
            (Overflow::Fair { .. }, Refused::Full) => Some(self.fair_share(mine)),
            _ => None,
        };
        // Whether an assured entry of bucket `theirs` gives way: `src` is short of
        // its fair share, and `theirs` holds more than it.
        let over_fair = |theirs: Option<usize>| {
            fair.is_some_and(|fair| mine < fair && self.held_in(theirs) > fair)
        };
        // Whether the entry of a source of bucket `theirs` gives way, and its rank
        // (higher first).
        let rank = |theirs: Option<usize>| match (self.overflow, short) {
            (Overflow::EarlyDrop, _) => Some(0),
            (Overflow::Fair { .. }, Refused::OverShare) => (theirs == own).then_some(0),
            (Overflow::Fair { .. }, Refused::Full) => {
                Some(self.held_in(theirs)).filter(|&held| held > mine || theirs == own)
            }
        };
        let mut best: Option<(u32, u32, usize)> = None;
        for i in 0..EVICTION_SCAN.min(self.slots.len()) {
            let at = (start + i) & self.mask;
            let slot = &self.slots[at];
            let b = slot.b.load(Relaxed);
            if b & 0xff != LIVE {
                continue;
            }
            let expires = (slot.c.load(Relaxed) >> 32) as u32;
            let rank = rank(self.bucket_of(at));
            if expires < now && (short == Refused::Full || rank.is_some()) {
                return Some(at);
            }
            let gives_way = self.gives_way(Flags::of_bits(b >> 8));
            let Some(rank) = rank.filter(|_| gives_way || over_fair(self.bucket_of(at))) else {
                continue;
            };
            if best.is_none_or(|(r, e, _)| {
                (rank, std::cmp::Reverse(expires)) > (r, std::cmp::Reverse(e))
            }) {
                best = Some((rank, expires, at));
            }
        }
        let (_, _, at) = best?;
        bump(&self.evicted);
        Some(at)
    }

    /// Whether a connection with `flags` may give up its place: Linux's early drop
    /// spares what it calls assured, a connection that went both ways and on; a
    /// fair table gives up a closing one as well (a FIN or RST seen), which would
    /// otherwise hold its place for the half minute it lingers.
    fn gives_way(&self, flags: Flags) -> bool {
        !flags.assured || (flags.closing && self.overflow != Overflow::EarlyDrop)
    }

    /// Forgets the entry at `at` (the owner only).
    fn remove(&self, at: usize) {
        let slot = &self.slots[at];
        if slot.b.load(Relaxed) & 0xff == LIVE {
            self.count(self.bucket_of(at), false);
            self.write(at, (A::Pair::default(), TOMBSTONE, 0), 0);
            self.live.store(self.live().saturating_sub(1), Relaxed);
        }
    }

    /// Every live entry, with its slot.
    fn entries(&self) -> impl Iterator<Item = (usize, Entry<A>)> + '_ {
        self.slots.iter().enumerate().filter_map(|(at, slot)| {
            let (a, b, c, value) = slot.read(self.value(at))?;
            (b & 0xff == LIVE).then(|| {
                let entry = Entry {
                    orig: FlowKey::of_words(a, b),
                    flags: Flags::of_bits(b >> 8),
                    generation: c as u32,
                    expires: (c >> 32) as u32,
                    value,
                };
                (at, entry)
            })
        })
    }

    /// Turns every entry expired by `now` into a tombstone, and every tombstone that
    /// ends a probe chain (the slot after it is empty) into an empty slot (the owner
    /// only). No entry lies beyond an empty slot in its probe chain, since inserts
    /// take the first free slot, so a tombstone before one marks the path to none.
    fn sweep(&self, now: u32) {
        for at in 0..self.slots.len() {
            let slot = &self.slots[at];
            if slot.b.load(Relaxed) & 0xff == LIVE && ((slot.c.load(Relaxed) >> 32) as u32) < now {
                self.remove(at);
            }
        }
        let n = self.slots.len();
        let state = |at: usize| self.slots[at & self.mask].b.load(Relaxed) & 0xff;
        // Backwards, twice round, so a run of tombstones that wraps past the end
        // is cleared too.
        for i in (0..2 * n).rev() {
            let at = i % n;
            if state(at) == TOMBSTONE && state(at + 1) == EMPTY {
                self.write(at, (A::Pair::default(), EMPTY, 0), 0);
            }
        }
    }
}

/// A worker's view of every worker's table: its own to write, the others to read.
#[derive(Debug, Clone)]
pub struct Conntrack<A: Addr = u32> {
    tables: Arc<[Table<A>]>,
    me: usize,
    timeouts: Timeouts,
}

impl<A: Addr> Conntrack<A> {
    /// The tables of `workers` workers, each holding at most `max` connections, and
    /// making room for more as `overflow` says.
    pub fn tables(workers: usize, max: usize, overflow: Overflow) -> Arc<[Table<A>]> {
        (0..workers.max(1))
            .map(|_| Table::new(max, overflow))
            .collect()
    }

    /// Like [`Conntrack::tables`], fair tables that count the sources of `own` (a
    /// network as address and mask) one address each, and others as
    /// [`Addr::share_unit`] says.
    pub fn tables_counting(
        workers: usize,
        max: usize,
        share: usize,
        own: (A, A),
    ) -> Arc<[Table<A>]> {
        (0..workers.max(1))
            .map(|_| Table {
                own: Some(own),
                ..Table::new(max, Overflow::Fair { share })
            })
            .collect()
    }

    /// Worker `me`'s view of `tables`, with NetworkPolicy's timeouts.
    pub fn new(tables: Arc<[Table<A>]>, me: usize) -> Conntrack<A> {
        Conntrack::with(tables, me, Timeouts::Policy)
    }

    /// Worker `me`'s view of `tables`, whose connections live by `timeouts`.
    pub fn with(tables: Arc<[Table<A>]>, me: usize, timeouts: Timeouts) -> Conntrack<A> {
        let me = me % tables.len().max(1);
        Conntrack {
            tables,
            me,
            timeouts,
        }
    }

    /// What every worker's table has done with connections it could not fit.
    pub fn overflow_stats(tables: &[Table<A>]) -> OverflowStats {
        tables
            .iter()
            .map(Table::overflow_stats)
            .fold(OverflowStats::default(), |sum, t| sum + t)
    }

    fn own(&self) -> &Table<A> {
        &self.tables[self.me]
    }

    /// Live entries in this worker's table.
    pub fn live(&self) -> u64 {
        self.own().live()
    }

    /// Whether no worker's table holds an entry.
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| t.live() == 0)
    }

    /// The connection `key` belongs to, looked up in this worker's table, then in the
    /// others'.
    pub fn lookup(&self, key: FlowKey<A>, now: Time) -> Option<Found<A>> {
        let now = seconds(now);
        let own = self.own();
        if let Some((at, entry, forward)) = (own.live() > 0).then(|| own.find(key, now)).flatten() {
            return Some(Found {
                entry,
                forward,
                own_slot: Some(at),
            });
        }
        // An empty table costs a load, not a probe.
        self.tables
            .iter()
            .enumerate()
            .filter(|(i, t)| *i != self.me && t.live() > 0)
            .find_map(|(_, t)| t.find(key, now))
            .map(|(_, entry, forward)| Found {
                entry,
                forward,
                own_slot: None,
            })
    }

    /// The newest entry of `key`'s connection in any worker's table, where each
    /// entry's generation is the second it was last written: when two workers keep
    /// different knowledge of one 5-tuple, the latest wins (this worker's on a tie).
    pub fn lookup_latest(&self, key: FlowKey<A>, now: Time) -> Option<Found<A>> {
        let secs = seconds(now);
        let mut best = self.lookup(key, now)?;
        for (i, t) in self.tables.iter().enumerate() {
            if i == self.me || t.live() == 0 {
                continue;
            }
            if let Some((_, entry, forward)) = t.find(key, secs) {
                if entry.generation > best.entry.generation {
                    best = Found {
                        entry,
                        forward,
                        own_slot: None,
                    };
                }
            }
        }
        Some(best)
    }

    /// Like [`Conntrack::lookup`], but an entry of a connection still open, in any
    /// worker's table, wins over a closing one found first: a new connection that
    /// reuses a closed one's 5-tuple is written by the worker that saw its first
    /// packet, while the closed one's entry may linger in the table of the worker
    /// that reads its answers, which looks in its own first.
    pub fn lookup_open(&self, key: FlowKey<A>, now: Time) -> Option<Found<A>> {
        let first = self.lookup(key, now)?;
        if !first.entry.flags.closing {
            return Some(first);
        }
        let secs = seconds(now);
        let open = (self.tables.iter().enumerate())
            .filter(|(i, t)| *i != self.me && t.live() > 0)
            .find_map(|(_, t)| t.find(key, secs).filter(|(_, e, _)| !e.flags.closing));
        Some(open.map_or(first, |(_, entry, forward)| Found {
            entry,
            forward,
            own_slot: None,
        }))
    }

    /// Records a connection allowed under policy `generation`, first seen at `now`,
    /// or keeps one alive: `flags` are what is known of it now.
    pub fn track(
        &self,
        orig: FlowKey<A>,
        flags: Flags,
        generation: u32,
        now: Time,
    ) -> Result<(), Refused> {
        let expires = seconds(now + self.timeouts.of(orig.proto, flags));
        let entry = Entry {
            orig,
            flags,
            generation,
            expires,
            value: 0,
        };
        self.own().put(&entry, seconds(now)).map(drop)
    }

    /// The tables of `workers` workers, like [`Conntrack::tables`], each keeping a
    /// value word with every entry ([`Entry::value`], [`Conntrack::put`]).
    pub fn value_tables(workers: usize, max: usize, overflow: Overflow) -> Arc<[Table<A>]> {
        (0..workers.max(1))
            .map(|_| Table::with(max, overflow, true))
            .collect()
    }

    /// Writes `entry` (with its value and expiry) into this worker's table: a new
    /// connection, or the update of one in it.
    pub fn put(&self, entry: &Entry<A>, now: Time) -> Result<(), Refused> {
        self.own().put(entry, seconds(now)).map(drop)
    }

    /// When a connection `orig` with `flags`, written at `now`, expires, by this
    /// view's timeouts, in the seconds [`Entry::expires`] counts.
    pub fn expiry(&self, orig: FlowKey<A>, flags: Flags, now: Time) -> u32 {
        seconds(now + self.timeouts.of(orig.proto, flags))
    }

    /// Forgets every entry of this worker's table that `gone` says must go, in one
    /// pass and without allocating (each slot is read before it is removed).
    pub fn forget_where(&self, mut gone: impl FnMut(&Entry<A>) -> bool) {
        let own = self.own();
        for (at, e) in own.entries() {
            if gone(&e) {
                own.remove(at);
            }
        }
    }

    /// Records what is known of connection `orig` now (`flags`, under `generation`),
    /// unless `found`, its entry in this worker's table, already says so for another
    /// second: most packets of a connection only read the table.
    pub fn keep(
        &self,
        orig: FlowKey<A>,
        found: Option<&Found<A>>,
        flags: Flags,
        generation: u32,
        now: Time,
    ) -> Result<(), Refused> {
        if let Some(Found {
            entry,
            own_slot: Some(_),
            ..
        }) = found
        {
            if entry.generation == generation
                && entry.flags == flags
                && !self.needs_refresh(entry, now)
            {
                return Ok(());
            }
        }
        self.track(orig, flags, generation, now)
    }

    /// Whether `entry`, seen at `now`, has lost a second or more of its timeout, so
    /// that keeping the connection alive means writing it again.
    pub fn needs_refresh(&self, entry: &Entry<A>, now: Time) -> bool {
        let full = seconds(now + self.timeouts.of(entry.orig.proto, entry.flags));
        entry.expires < full.saturating_sub(1)
    }

    /// Forgets the entry in this worker's slot `at`.
    pub fn forget(&self, at: usize) {
        self.own().remove(at);
    }

    /// Sweeps this worker's expired entries, and closes those another worker saw
    /// close: a FIN or RST seen by one worker would otherwise leave the other's copy
    /// of the connection with its long timeout. Where generations are the time an
    /// entry was written (the host's tables), only a close written no earlier than
    /// this worker's copy counts: an older one belongs to a connection since reopened.
    pub fn sweep(&self, now: Time) {
        let secs = seconds(now);
        let own = self.own();
        own.sweep(secs);
        let written = self.timeouts == Timeouts::Host;
        let closed: Vec<Entry<A>> = own
            .entries()
            .filter(|(_, e)| !e.flags.closing)
            .filter(|(_, e)| {
                self.tables
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != self.me)
                    .any(|(_, t)| {
                        t.find(e.orig, secs).is_some_and(|(_, o, _)| {
                            o.flags.closing && (!written || o.generation >= e.generation)
                        })
                    })
            })
            .map(|(_, e)| e)
            .collect();
        for mut e in closed {
            e.flags.closing = true;
            e.expires = e
                .expires
                .min(seconds(now + self.timeouts.of(e.orig.proto, e.flags)));
            let _ = own.put(&e, secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: 0x0af4_0105,
            dst: 0x0af4_0205,
            sport,
            dport: 80,
            proto: 6,
            icmp: 0,
        }
    }

    impl FlowKey {
        /// The key with its addresses and ports swapped, and nothing else.
        fn reverse_addresses(self) -> FlowKey {
            FlowKey {
                src: self.dst,
                dst: self.src,
                sport: self.dport,
                dport: self.sport,
                ..self
            }
        }
    }

    fn at(secs: u64) -> Time {
        Time::ZERO + Duration::from_secs(secs)
    }

    /// Fair tables in which one source may fill its table.
    fn tables(workers: usize, max: usize) -> Arc<[Table]> {
        Conntrack::tables(workers, max, Overflow::Fair { share: max })
    }

    /// Connection `sport` of source `src`.
    fn from(src: u32, sport: u16) -> FlowKey {
        FlowKey { src, ..key(sport) }
    }

    /// `n` source addresses whose entries `t` counts in buckets of their own.
    fn sources(t: &Conntrack, n: usize) -> Vec<u32> {
        let mut found: Vec<u32> = Vec::new();
        for src in 0x0af4_0100.. {
            let bucket = t.own().bucket(src);
            if found.iter().all(|s| t.own().bucket(*s) != bucket) {
                found.push(src);
            }
            if found.len() == n {
                return found;
            }
        }
        unreachable!("the address space has {n} sources in distinct buckets")
    }

    const ASSURED: Flags = Flags {
        replied: true,
        closing: false,
        assured: true,
        bypass: false,
    };

    #[test]
    fn both_directions_find_the_entry_in_any_workers_table() {
        let tables = tables(2, 8);
        let (w0, w1) = (Conntrack::new(tables.clone(), 0), Conntrack::new(tables, 1));
        w0.track(key(1000), Flags::default(), 7, at(10)).unwrap();
        let f = w0.lookup(key(1000), at(11)).unwrap();
        assert!(f.forward && f.own_slot.is_some());
        assert_eq!(f.entry.generation, 7);
        let r = w1.lookup(key(1000).reverse(), at(11)).unwrap();
        assert!(!r.forward && r.own_slot.is_none(), "{r:?}");
        assert_eq!(w1.lookup(key(1001), at(11)), None);
    }

    /// The slot sizes the README's memory figures are made of.
    #[test]
    fn slots_are_32_bytes_for_ipv4_and_56_for_ipv6() {
        assert_eq!(std::mem::size_of::<Slot<u32>>(), 32);
        assert_eq!(std::mem::size_of::<Slot<u128>>(), 56);
    }

    /// An IPv6 key is kept whole: keys that differ in any word of either address
    /// are different connections, both directions of one find it, an ICMPv6 echo
    /// is answered only by its reply, and a source's share counts its own.
    #[test]
    fn ipv6_tables_keep_whole_addresses() {
        let tables = Conntrack::<u128>::tables(2, 8, Overflow::Fair { share: 2 });
        let (w0, w1) = (Conntrack::new(tables.clone(), 0), Conntrack::new(tables, 1));
        let a: u128 = 0xfd00_0010_0244_0001_0000_0000_0000_0005;
        let b: u128 = 0xfd00_0010_0244_0002_0000_0000_0000_0005;
        let k = FlowKey {
            src: a,
            dst: b,
            sport: 4000,
            dport: 80,
            proto: 6,
            icmp: 0,
        };
        assert_eq!(u128::unpair(u128::pair(a, b)), (a, b));
        w0.track(k, ASSURED, 3, at(0)).unwrap();
        let back = w1
            .lookup(k.reverse(), at(1))
            .expect("the reply's direction");
        assert_eq!((back.entry.orig, back.forward), (k, false));
        for other in [a ^ 1 << 127, a ^ 1 << 64, a ^ 1 << 63, a ^ 1] {
            assert!(
                w0.lookup(FlowKey { src: other, ..k }, at(1)).is_none(),
                "{other:x}"
            );
            assert!(
                w0.lookup(FlowKey { dst: other, ..k }, at(1)).is_none(),
                "{other:x}"
            );
        }
        let echo = FlowKey {
            sport: 7,
            dport: 7,
            proto: 58,
            icmp: 128,
            ..k
        };
        w0.track(echo, ASSURED, 3, at(0)).unwrap();
        let reply = FlowKey {
            icmp: 129,
            ..echo.reverse()
        };
        assert_eq!(echo.reverse(), reply);
        assert!(w0.lookup(reply, at(1)).is_some_and(|f| !f.forward));
        let request_back = FlowKey {
            icmp: 128,
            ..echo.reverse()
        };
        assert!(
            w0.lookup(request_back, at(1)).is_none(),
            "a request the other way"
        );
        // Source a holds its share of 2 now, both assured: a third connection of
        // its is refused, and one from b is not.
        let third = FlowKey { sport: 4001, ..k };
        assert_eq!(
            w0.track(third, Flags::default(), 3, at(0)),
            Err(Refused::OverShare)
        );
        assert!(w0
            .track(
                FlowKey {
                    src: b,
                    dst: a,
                    ..third
                },
                Flags::default(),
                3,
                at(0)
            )
            .is_ok());
    }

    /// A fair IPv6 table counts the cluster's addresses one by one, and an
    /// outside client as its /64: its many addresses share one share.
    #[test]
    fn an_outside_ipv6_client_is_counted_as_its_64() {
        let cluster: u128 = 0xfd00_0010_0244_0000 << 64;
        let mask: u128 = !0 << 72;
        let tables = Conntrack::<u128>::tables_counting(1, 64, 2, (cluster, mask));
        let t = Conntrack::new(tables, 0);
        let key = |src: u128, sport| FlowKey {
            src,
            dst: cluster | 1 << 64 | 5,
            sport,
            dport: 80,
            proto: 6,
            icmp: 0,
        };
        let outside: u128 = 0x2001_0db8 << 96;
        // Sources whose units land in buckets of their own (the seed is random):
        // the outside /64 (one bucket whatever the address), another /64, and
        // three pods.
        let mut taken = vec![t.own().bucket(outside | 1)];
        let mut distinct = |first: u128, step: u128| {
            let found = (1..1000u128)
                .map(|k| first + k * step)
                .find(|&a| !taken.contains(&t.own().bucket(a)))
                .expect("a free bucket");
            taken.push(t.own().bucket(found));
            found
        };
        let other64 = distinct(outside, 1 << 64);
        let pods: Vec<u128> = (0..3).map(|_| distinct(cluster | 1 << 64 | 5, 1)).collect();
        assert_eq!(
            t.own().bucket(outside | 1),
            t.own().bucket(outside | 0xffff_0003)
        );
        t.track(key(outside | 1, 1), ASSURED, 1, at(0)).unwrap();
        t.track(key(outside | 2, 2), ASSURED, 1, at(0)).unwrap();
        let third = t.track(key(outside | 0xffff_0003, 3), ASSURED, 1, at(0));
        assert_eq!(third, Err(Refused::OverShare), "one /64, one share");
        assert!(t.track(key(other64, 4), ASSURED, 1, at(0)).is_ok());
        // Pods of the cluster's one /64 each have their own.
        for (n, &pod) in pods.iter().enumerate() {
            for k in 0..2 {
                let sport = 10 + 2 * n as u16 + k;
                t.track(key(pod, sport), ASSURED, 1, at(0))
                    .expect("its own share");
            }
        }
    }

    /// A table with values keeps each entry's value with it, read by every worker
    /// under the slot's seqlock, rewritten with it and forgotten with it.
    #[test]
    fn values_travel_with_their_entries() {
        let valued = Conntrack::value_tables(2, 8, Overflow::Fair { share: 8 });
        let (w0, w1) = (Conntrack::new(valued.clone(), 0), Conntrack::new(valued, 1));
        let entry = |sport, value| Entry {
            orig: key(sport),
            flags: Flags::default(),
            generation: 0,
            expires: w0.expiry(key(sport), Flags::default(), at(0)),
            value,
        };
        w0.put(&entry(1, 0xdead_beef), at(0)).unwrap();
        w0.put(&entry(2, 7), at(0)).unwrap();
        let seen = w1.lookup(key(1).reverse(), at(1)).unwrap();
        assert_eq!((seen.entry.value, seen.forward), (0xdead_beef, false));
        w0.put(&entry(1, 42), at(1)).unwrap();
        assert_eq!(w1.lookup(key(1), at(1)).unwrap().entry.value, 42);
        w0.forget_where(|e| e.value == 42);
        assert!(w1.lookup(key(1), at(1)).is_none());
        assert_eq!(w1.lookup(key(2), at(1)).unwrap().entry.value, 7);
        // A table without values reads 0.
        let plain = Conntrack::new(tables(1, 8), 0);
        plain.put(&entry(3, 9), at(0)).unwrap();
        assert_eq!(plain.lookup(key(3), at(0)).unwrap().entry.value, 0);
    }

    /// A 5-tuple closed in one worker's table and opened again in another's: the
    /// first worker finds the open connection, not its own closing entry; with no
    /// open one, it finds its own.
    #[test]
    fn an_open_connection_wins_over_a_closing_one_of_its_5_tuple() {
        let valued = Conntrack::value_tables(2, 8, Overflow::Fair { share: 8 });
        let (w0, w1) = (Conntrack::new(valued.clone(), 0), Conntrack::new(valued, 1));
        let entry = |flags, value| Entry {
            orig: key(1),
            flags,
            generation: 0,
            expires: w0.expiry(key(1), flags, at(0)),
            value,
        };
        let closing = Flags {
            closing: true,
            ..Flags::default()
        };
        w1.put(&entry(closing, 1), at(0)).unwrap();
        let alone = w1.lookup_open(key(1).reverse(), at(1)).unwrap();
        assert_eq!((alone.entry.value, alone.own_slot.is_some()), (1, true));
        w0.put(&entry(Flags::default(), 2), at(1)).unwrap();
        assert_eq!(w1.lookup(key(1).reverse(), at(1)).unwrap().entry.value, 1);
        let open = w1.lookup_open(key(1).reverse(), at(1)).unwrap();
        assert_eq!((open.entry.value, open.forward), (2, false));
        assert_eq!(w0.lookup_open(key(1), at(1)).unwrap().entry.value, 2);
    }

    /// Each table's hash is keyed by a seed of its own, drawn from the process's
    /// random hash keys (`RandomState`, from the OS at the start): two tables of
    /// one process, or one table in two runs, put one connection in different
    /// chains.
    #[test]
    fn every_table_has_a_seed_of_its_own() {
        let tables = tables(4, 16);
        let seeds: std::collections::BTreeSet<u64> = tables.iter().map(|t| t.seed).collect();
        assert_eq!(seeds.len(), 4);
    }

    #[test]
    fn an_icmp_query_is_answered_by_its_reply_type_only() {
        use weft_encap::ipv4::protocol::ICMP;
        let ping = |icmp| FlowKey {
            proto: ICMP,
            sport: 7,
            dport: 7,
            icmp,
            ..key(0)
        };
        let t = Conntrack::new(tables(1, 8), 0);
        t.track(ping(8), Flags::default(), 0, at(0)).unwrap();
        // The echo reply from the address pinged answers it.
        let reply = t.lookup(ping(0).reverse_addresses(), at(1)).unwrap();
        assert!(!reply.forward);
        // An echo request back on the same identifier does not; nor does another
        // query type.
        assert_eq!(t.lookup(ping(8).reverse_addresses(), at(1)), None);
        assert_eq!(t.lookup(ping(14).reverse_addresses(), at(1)), None);
        for (query, answer) in [(8, 0), (13, 14), (15, 16), (17, 18)] {
            assert_eq!(ping(query).reverse().icmp, answer);
            assert_eq!(ping(answer).reverse().icmp, query);
        }
        // Other types, and other protocols' keys, keep theirs.
        assert_eq!(ping(5).reverse().icmp, 5);
        assert_eq!(FlowKey { icmp: 8, ..key(1) }.reverse().icmp, 8);
    }

    #[test]
    fn entries_expire_on_the_clock_and_are_swept() {
        let t = Conntrack::new(tables(1, 8), 0);
        t.track(key(1), Flags::default(), 0, at(100)).unwrap();
        // A TCP connection that never saw a reply lives 60 s.
        assert!(t.lookup(key(1), at(160)).is_some());
        assert!(t.lookup(key(1), at(161)).is_none());
        assert_eq!(t.live(), 1);
        t.sweep(at(161));
        assert_eq!(t.live(), 0);
        // A replied one lives a day; a closing one 30 s.
        let replied = Flags {
            replied: true,
            closing: false,
            assured: false,
            bypass: false,
        };
        t.track(key(2), replied, 0, at(200)).unwrap();
        assert!(t.lookup(key(2), at(200 + 86_000)).is_some());
        let closing = Flags {
            replied: true,
            closing: true,
            assured: false,
            bypass: false,
        };
        t.track(key(2), closing, 0, at(300)).unwrap();
        assert!(t.lookup(key(2), at(331)).is_none());
        assert_eq!(t.live(), 1, "an update is no new entry");
    }

    #[test]
    fn a_full_table_refuses_when_no_entry_gives_way_and_reuses_freed_room() {
        let t = Conntrack::new(tables(1, 4), 0);
        let s = sources(&t, 5);
        for (p, src) in s[..4].iter().enumerate() {
            t.track(from(*src, p as u16), ASSURED, 0, at(0)).unwrap();
        }
        // Every entry is assured: none gives way.
        assert_eq!(
            t.track(from(s[4], 9), Flags::default(), 0, at(0)),
            Err(Refused::Full)
        );
        // Known connections still update.
        t.track(from(s[2], 2), ASSURED, 1, at(1)).unwrap();
        let f = t.lookup(from(s[2], 2), at(1)).unwrap();
        t.forget(f.own_slot.unwrap());
        assert!(t.lookup(from(s[2], 2), at(1)).is_none());
        t.track(from(s[4], 9), ASSURED, 0, at(1)).unwrap();
        assert_eq!(t.live(), 4);
        // Expired entries make room too (an assured TCP connection lives a day).
        let day = 24 * 3600;
        assert_eq!(
            t.track(from(s[4], 10), Flags::default(), 0, at(day)),
            Err(Refused::Full)
        );
        t.track(from(s[4], 10), Flags::default(), 0, at(day + 2))
            .unwrap();
        assert_eq!(t.own().overflow_stats(), OverflowStats::default());
    }

    /// A full table that takes each new connection's room from an old one (the
    /// victim's own slot, or a free one) keeps every entry where a lookup finds it,
    /// its bound, and the connections it was given. (A new connection whose probe
    /// chain is all taken is refused, as before any eviction: rare at the table's
    /// half load, and counted.)
    #[test]
    fn evictions_keep_every_entry_within_reach() {
        let (max, n) = (64, 2_000u16);
        let t = Conntrack::new(tables(1, max), 0);
        let mut refused = 0;
        for p in 0..n {
            match t.track(key(p), Flags::default(), 0, at(u64::from(p) / 100)) {
                Ok(()) => assert!(t.lookup(key(p), at(0)).is_some(), "connection {p} kept"),
                Err(Refused::Full) => refused += 1,
                Err(e) => panic!("connection {p}: {e:?}"),
            }
            let live: Vec<Entry> = t.own().entries().map(|(_, e)| e).collect();
            assert_eq!(live.len() as u64, t.live());
            assert_eq!(t.live(), (u64::from(p) + 1).min(max as u64));
            for e in live {
                assert!(
                    t.own().find(e.orig, 0).is_some(),
                    "after connection {p}, {:?} is out of reach",
                    e.orig
                );
            }
        }
        let evicted = t.own().overflow_stats().evicted;
        assert_eq!(evicted + refused, u64::from(n) - max as u64);
        assert!(refused < u64::from(n) / 100, "{refused} refused");
    }

    #[test]
    fn a_source_at_its_share_gives_up_its_own_oldest_unassured_connection() {
        let t = Conntrack::new(Conntrack::tables(1, 8, Overflow::Fair { share: 2 }), 0);
        let s = sources(&t, 2);
        let (x, y) = (s[0], s[1]);
        t.track(from(x, 1), Flags::default(), 0, at(0)).unwrap();
        t.track(from(x, 2), Flags::default(), 0, at(1)).unwrap();
        // At its share: the third takes the place of the oldest.
        t.track(from(x, 3), Flags::default(), 0, at(2)).unwrap();
        assert!(t.lookup(from(x, 1), at(2)).is_none());
        assert!(t.lookup(from(x, 2), at(2)).is_some());
        assert!(t.lookup(from(x, 3), at(2)).is_some());
        assert_eq!(t.live(), 2);
        assert_eq!(t.own().overflow_stats().evicted, 1);
        // Another source has room of its own meanwhile, and gives nothing up.
        t.track(from(y, 1), Flags::default(), 0, at(2)).unwrap();
        t.track(from(y, 2), Flags::default(), 0, at(2)).unwrap();
        assert_eq!(t.live(), 4);
        // A closing connection gives way, though it was assured.
        let closed = Flags {
            closing: true,
            ..ASSURED
        };
        t.track(from(x, 2), closed, 0, at(2)).unwrap();
        t.track(from(x, 3), ASSURED, 0, at(2)).unwrap();
        t.track(from(x, 9), Flags::default(), 0, at(2)).unwrap();
        assert!(t.lookup(from(x, 2), at(2)).is_none());
        assert_eq!(t.own().overflow_stats().evicted, 2);
        t.track(from(x, 2), Flags::default(), 0, at(2)).unwrap();
        assert!(t.lookup(from(x, 9), at(2)).is_none());
        // With both of its connections assured, a source at its share is refused.
        t.track(from(x, 2), ASSURED, 0, at(3)).unwrap();
        t.track(from(x, 3), ASSURED, 0, at(3)).unwrap();
        assert_eq!(
            t.track(from(x, 4), Flags::default(), 0, at(3)),
            Err(Refused::OverShare)
        );
        assert_eq!(t.own().overflow_stats().over_share, 1);
        // Nor does it take the place of another source's expired entry, which
        // would take it past its share; the other source may.
        let later = at(2 + 61);
        assert_eq!(
            t.track(from(x, 5), Flags::default(), 0, later),
            Err(Refused::OverShare)
        );
        t.track(from(y, 3), Flags::default(), 0, later).unwrap();
    }

    #[test]
    fn a_full_table_takes_room_from_the_source_holding_the_most() {
        let t = Conntrack::new(tables(1, 4), 0);
        let s = sources(&t, 3);
        let (flood, other, new) = (s[0], s[1], s[2]);
        for p in 0..3 {
            t.track(from(flood, p), Flags::default(), 0, at(1)).unwrap();
        }
        t.track(from(other, 1), Flags::default(), 0, at(0)).unwrap();
        // A new source takes the place of a bigger holder's connection: the
        // flood's, though the other's expires first.
        t.track(from(new, 1), Flags::default(), 0, at(2)).unwrap();
        assert!(t.lookup(from(other, 1), at(2)).is_some());
        assert_eq!(t.live(), 4);
        assert_eq!(t.own().overflow_stats().evicted, 1);
        // The flood, holding the most, takes the places of its own oldest only.
        for p in 10..20 {
            t.track(from(flood, p), Flags::default(), 0, at(u64::from(p)))
                .unwrap();
        }
        assert!(t.lookup(from(new, 1), at(20)).is_some());
        assert!(t.lookup(from(other, 1), at(20)).is_some());
        assert!(t.lookup(from(flood, 19), at(20)).is_some());
        assert!(t.lookup(from(flood, 17), at(20)).is_none());
        assert_eq!(t.own().overflow_stats().evicted, 11);
        // With its own connections assured, it is refused.
        t.track(from(flood, 18), ASSURED, 0, at(20)).unwrap();
        t.track(from(flood, 19), ASSURED, 0, at(20)).unwrap();
        assert_eq!(
            t.track(from(flood, 30), Flags::default(), 0, at(20)),
            Err(Refused::Full)
        );
    }

    /// Found by review: two pods that open connections to each other and leave
    /// them idle fill the table with assured entries (a day long each) within
    /// their shares, and every other pod would be refused for a day.
    #[test]
    fn sources_that_hold_the_table_with_idle_connections_give_way_to_a_new_one() {
        let t = Conntrack::new(Conntrack::tables(1, 8, Overflow::Fair { share: 4 }), 0);
        let s = sources(&t, 4);
        let (a, b, c, d) = (s[0], s[1], s[2], s[3]);
        for p in 0..4 {
            t.track(from(a, p), ASSURED, 0, at(u64::from(p))).unwrap();
            t.track(from(b, p), ASSURED, 0, at(4)).unwrap();
        }
        assert_eq!(t.live(), 8);
        // Neither may take more, assured as its own are.
        assert_eq!(
            t.track(from(a, 9), ASSURED, 0, at(5)),
            Err(Refused::OverShare)
        );
        // A third source, short of a fair share (8 / 3), takes the place of an
        // assured connection of a source above it: a's oldest.
        t.track(from(c, 1), Flags::default(), 0, at(5)).unwrap();
        assert!(t.lookup(from(a, 0), at(5)).is_none());
        assert!(t.lookup(from(c, 1), at(5)).is_some());
        assert_eq!(t.own().overflow_stats().evicted, 1);
        // And a fourth (a fair share of 2): one of b's this time, now the biggest.
        t.track(from(d, 1), Flags::default(), 0, at(5)).unwrap();
        assert_eq!(t.own().held_in(t.own().bucket(b)), 3);
        // c, short of its fair share of 2, takes an assured place of a biggest
        // holder (a's, whose oldest goes first); at its share, only its own
        // connection that is not assured gives way, and then it is refused: it
        // may not push the others below their shares.
        t.track(from(c, 2), ASSURED, 0, at(5)).unwrap();
        t.track(from(c, 4), ASSURED, 0, at(5)).unwrap();
        assert!(t.lookup(from(c, 1), at(5)).is_none());
        let held = |x| t.own().held_in(t.own().bucket(x));
        assert_eq!((held(a), held(b), held(c), held(d)), (2, 3, 2, 1));
        assert_eq!(t.track(from(c, 5), ASSURED, 0, at(5)), Err(Refused::Full));
        assert_eq!(t.own().overflow_stats().evicted, 4);
    }

    #[test]
    fn removing_an_entry_gives_its_source_its_room_back() {
        let t = Conntrack::new(Conntrack::tables(1, 64, Overflow::Fair { share: 3 }), 0);
        let x = sources(&t, 1)[0];
        for round in 0..10u16 {
            for p in 0..3 {
                t.track(
                    from(x, round * 3 + p),
                    ASSURED,
                    0,
                    at(u64::from(round) * 100_000),
                )
                .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
            }
            // Forgotten, swept once expired: the source holds nothing again.
            let f = t
                .lookup(from(x, round * 3), at(u64::from(round) * 100_000))
                .unwrap();
            t.forget(f.own_slot.unwrap());
            t.sweep(at(u64::from(round) * 100_000 + 90_000));
            assert_eq!(t.own().held_in(t.own().bucket(x)), 0);
            assert_eq!(t.live(), 0);
        }
        assert_eq!(t.own().overflow_stats(), OverflowStats::default());
    }

    #[test]
    fn a_close_seen_by_another_worker_closes_this_workers_copy() {
        let tables = tables(2, 8);
        let (w0, w1) = (Conntrack::new(tables.clone(), 0), Conntrack::new(tables, 1));
        let replied = Flags {
            replied: true,
            closing: false,
            assured: false,
            bypass: false,
        };
        w0.track(key(5), Flags::default(), 0, at(0)).unwrap();
        w1.track(key(5), replied, 0, at(0)).unwrap();
        // Worker 0 sees the RST.
        w0.track(
            key(5),
            Flags {
                replied: false,
                closing: true,
                assured: false,
                bypass: false,
            },
            0,
            at(1),
        )
        .unwrap();
        w1.sweep(at(2));
        let own = w1.own().find(key(5), 2).unwrap().1;
        assert!(own.flags.closing, "{own:?}");
        assert!(own.expires <= 32, "{own:?}");
    }

    #[test]
    fn a_full_table_with_early_drop_gives_an_unassured_slot_to_a_new_connection() {
        let t = Conntrack::with(
            Conntrack::tables(1, 4, Overflow::EarlyDrop),
            0,
            Timeouts::Host,
        );
        let replied = Flags {
            replied: true,
            assured: true,
            ..Flags::default()
        };
        for p in 0..3 {
            t.track(key(p), replied, 0, at(0)).unwrap();
        }
        t.track(key(3), Flags::default(), 0, at(0)).unwrap();
        // Full: the one not assured gives its place.
        t.track(key(9), Flags::default(), 0, at(1)).unwrap();
        assert!(t.lookup(key(3), at(1)).is_none());
        assert!(t.lookup(key(9), at(1)).is_some());
        assert_eq!(t.live(), 4);
        // With every one assured, a new connection is refused.
        t.track(key(9), replied, 0, at(1)).unwrap();
        assert_eq!(
            t.track(key(10), Flags::default(), 0, at(1)),
            Err(Refused::Full)
        );
        assert_eq!(t.own().overflow_stats().evicted, 1);
    }

    #[test]
    fn tombstones_that_end_a_chain_become_empty_again() {
        let t = Conntrack::new(tables(1, 256), 0);
        for p in 0..64 {
            t.track(key(p), Flags::default(), 0, at(0)).unwrap();
        }
        // Expire half, sweep: no slot ends up a tombstone with an empty one after it.
        for p in (0..64).step_by(2) {
            let at_slot = t.lookup(key(p), at(1)).unwrap().own_slot.unwrap();
            t.forget(at_slot);
        }
        t.sweep(at(2));
        let own = t.own();
        let state = |i: usize| own.slots[i & own.mask].b.load(Relaxed) & 0xff;
        for i in 0..own.slots.len() {
            assert!(
                !(state(i) == TOMBSTONE && state(i + 1) == EMPTY),
                "slot {i}"
            );
        }
        for p in (1..64).step_by(2) {
            assert!(t.lookup(key(p), at(2)).is_some(), "entry {p} still found");
        }
        // All gone: every slot is empty again.
        t.sweep(at(1000));
        assert!((0..own.slots.len()).all(|i| state(i) == EMPTY));
    }

    #[test]
    fn host_timeouts_outlive_linuxs_connection_tracker() {
        use weft_encap::ipv4::protocol::{ICMP, TCP, UDP};
        let f = |replied, closing, assured| Flags {
            replied,
            closing,
            assured,
            bypass: false,
        };
        let s = Duration::from_secs;
        // nf_conntrack's defaults, and a margin.
        assert_eq!(host_timeout(UDP, f(false, false, false)), s(35));
        assert_eq!(host_timeout(UDP, f(true, false, false)), s(35));
        assert_eq!(host_timeout(UDP, f(true, false, true)), s(185));
        assert_eq!(host_timeout(TCP, f(false, false, false)), s(125));
        assert_eq!(host_timeout(TCP, f(true, true, false)), s(125));
        // Answered, not yet acknowledged (SYN_RECV), then established.
        assert_eq!(host_timeout(TCP, f(true, false, false)), s(125));
        assert_eq!(host_timeout(TCP, f(true, false, true)), s(86_400));
        assert_eq!(host_timeout(ICMP, f(false, false, false)), s(35));
        assert_eq!(host_timeout(47, f(false, false, false)), s(605));
    }

    #[test]
    fn connections_between_two_pods_that_differ_in_a_port_spread() {
        // One client, one server, one server port: only the client's port differs,
        // as with a DNS client's queries. They must not share one probe chain: if
        // they did, every connection past the chain's 32 slots would be refused.
        // Spread by the hash, a table filled to its bound (half its slots) has a
        // run longer than that now and then (about one fill in fifty, by the
        // table's random seed), which refuses a connection or two of 4,096.
        let t = Conntrack::new(tables(1, 4096), 0);
        let refused = (0..4096u16)
            .filter(|p| (t.track(key(10_000 + p), Flags::default(), 0, at(0))).is_err())
            .count();
        assert!(refused <= 8, "{refused} of 4096 found no room");
        assert_eq!(t.live(), 4096 - refused as u64);
    }

    #[test]
    fn a_reader_never_sees_a_torn_entry() {
        let tables = tables(2, 64);
        let writer = Conntrack::new(tables.clone(), 0);
        let reader = Conntrack::new(tables, 1);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for g in 0..20_000u32 {
                    writer.track(key(7), Flags::default(), g, at(1)).unwrap();
                }
                stop.store(true, Relaxed);
            });
            while !stop.load(Relaxed) {
                if let Some(f) = reader.lookup(key(7), at(1)) {
                    assert_eq!(f.entry.orig, key(7));
                    assert!(f.entry.expires >= 61, "{f:?}");
                }
            }
        });
    }
}
