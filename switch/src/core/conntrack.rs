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
//! A table holds at most its bound of live entries; a new connection that finds it
//! full is dropped, and counted by the caller. Expired entries are swept on a timer
//! and become tombstones, which later inserts reuse.

use std::sync::atomic::{
    fence, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::Arc;
use std::time::Duration;

use super::Time;

/// Slots looked at before a lookup gives up, or an insert calls the table full.
const MAX_PROBE: usize = 32;

/// A connection's 5-tuple, in the direction of one packet. For ICMP echo, both ports
/// are the echo identifier, so a reply is the request's reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: u32,
    /// Destination address.
    pub dst: u32,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
}

impl FlowKey {
    /// The other direction.
    pub fn reverse(self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    fn words(self) -> (u64, u64) {
        (
            u64::from(self.src) << 32 | u64::from(self.dst),
            u64::from(self.sport) << 48 | u64::from(self.dport) << 32 | u64::from(self.proto) << 24,
        )
    }

    fn of_words(a: u64, b: u64) -> FlowKey {
        FlowKey {
            src: (a >> 32) as u32,
            dst: a as u32,
            sport: (b >> 48) as u16,
            dport: (b >> 32) as u16,
            proto: (b >> 24) as u8,
        }
    }

    /// A hash both directions share.
    fn symmetric_hash(self) -> u64 {
        let (lo, hi) = if (self.src, self.sport) <= (self.dst, self.dport) {
            ((self.src, self.sport), (self.dst, self.dport))
        } else {
            ((self.dst, self.dport), (self.src, self.sport))
        };
        let mut h = u64::from(lo.0) << 32 | u64::from(hi.0);
        h ^=
            (u64::from(lo.1) << 32 | u64::from(hi.1) << 16 | u64::from(self.proto)).rotate_left(17);
        h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }
}

/// What happened on a connection, which sets its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// A packet went the other way: the connection is two-way.
    pub replied: bool,
    /// TCP FIN or RST was seen: the connection is closing.
    pub closing: bool,
}

impl Flags {
    fn bits(self) -> u64 {
        u64::from(self.replied) | u64::from(self.closing) << 1
    }

    fn of_bits(b: u64) -> Flags {
        Flags {
            replied: b & 1 != 0,
            closing: b & 2 != 0,
        }
    }
}

/// How long an idle connection is kept.
pub fn timeout(proto: u8, flags: Flags) -> Duration {
    use weft_encap::ipv4::protocol::{ICMP, SCTP, TCP, UDP};
    let s = Duration::from_secs;
    match (proto, flags.replied, flags.closing) {
        (TCP | SCTP, _, true) => s(30),
        (TCP | SCTP, false, false) => s(60),
        (TCP | SCTP, true, false) => s(24 * 3600),
        (UDP, false, _) => s(30),
        (UDP, true, _) => s(180),
        (ICMP, _, _) => s(30),
        _ => s(60),
    }
}

const EMPTY: u64 = 0;
const LIVE: u64 = 1;
const TOMBSTONE: u64 = 2;

/// One slot. `b` holds the ports, protocol, flags (bits 8..16) and state (bits 0..8);
/// `c` the expiry in seconds (high half) and the policy generation (low half).
#[derive(Debug, Default)]
struct Slot {
    seq: AtomicU32,
    a: AtomicU64,
    b: AtomicU64,
    c: AtomicU64,
}

/// An entry as a reader saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The connection in the direction of its first packet.
    pub orig: FlowKey,
    /// What happened on it.
    pub flags: Flags,
    /// The policy generation it was last allowed under.
    pub generation: u32,
    /// When it expires, in seconds of the core's clock.
    pub expires: u32,
}

impl Slot {
    /// A consistent copy of the slot, or `None` while the owner writes it.
    fn read(&self) -> Option<(u64, u64, u64)> {
        for _ in 0..64 {
            let s1 = self.seq.load(Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let (a, b, c) = (
                self.a.load(Relaxed),
                self.b.load(Relaxed),
                self.c.load(Relaxed),
            );
            fence(Acquire);
            if self.seq.load(Relaxed) == s1 {
                return Some((a, b, c));
            }
        }
        None
    }

    /// Writes the slot (the owner only).
    fn write(&self, a: u64, b: u64, c: u64) {
        let s = self.seq.load(Relaxed);
        self.seq.store(s.wrapping_add(1), Relaxed);
        fence(Release);
        self.a.store(a, Relaxed);
        self.b.store(b, Relaxed);
        self.c.store(c, Relaxed);
        self.seq.store(s.wrapping_add(2), Release);
    }
}

fn seconds(t: Time) -> u32 {
    u32::try_from(t.as_nanos() / 1_000_000_000).unwrap_or(u32::MAX)
}

/// One worker's table.
#[derive(Debug)]
pub struct Table {
    slots: Box<[Slot]>,
    mask: usize,
    /// Live entries; written by the owner only.
    live: AtomicU64,
    /// Entries ever made (not updates); written by the owner only.
    created: AtomicU64,
    max: u64,
}

/// Where an entry was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The entry.
    pub entry: Entry,
    /// The packet goes the entry's original way.
    pub forward: bool,
    /// In this worker's own table, at this slot.
    pub own_slot: Option<usize>,
}

/// A new connection found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Table {
    /// A table for at most `max` live connections.
    pub fn new(max: usize) -> Table {
        let slots = (max.max(1) * 2).next_power_of_two();
        Table {
            slots: (0..slots).map(|_| Slot::default()).collect(),
            mask: slots - 1,
            live: AtomicU64::new(0),
            created: AtomicU64::new(0),
            max: max as u64,
        }
    }

    /// Live entries.
    pub fn live(&self) -> u64 {
        self.live.load(Relaxed)
    }

    /// Entries ever made.
    pub fn created(&self) -> u64 {
        self.created.load(Relaxed)
    }

    /// The entry of `key`'s connection, either way, unexpired at `now`.
    fn find(&self, key: FlowKey, now: u32) -> Option<(usize, Entry, bool)> {
        let start = key.symmetric_hash() as usize;
        for i in 0..MAX_PROBE {
            let at = (start + i) & self.mask;
            // A slot its owner is writing right now is skipped, not taken for the end
            // of the probe: the entry sought may lie beyond it.
            let Some((a, b, c)) = self.slots[at].read() else {
                continue;
            };
            match b & 0xff {
                EMPTY => return None,
                LIVE => {
                    let orig = FlowKey::of_words(a, b);
                    let forward = orig == key;
                    if (forward || orig == key.reverse()) && (c >> 32) as u32 >= now {
                        let entry = Entry {
                            orig,
                            flags: Flags::of_bits(b >> 8),
                            generation: c as u32,
                            expires: (c >> 32) as u32,
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
    /// owner only).
    fn put(&self, entry: &Entry, now: u32) -> Result<usize, Full> {
        let key = entry.orig;
        let (a, b) = key.words();
        let b = b | entry.flags.bits() << 8 | LIVE;
        let c = u64::from(entry.expires) << 32 | u64::from(entry.generation);
        if let Some((at, _, _)) = self.find(key, now) {
            self.slots[at].write(a, b, c);
            return Ok(at);
        }
        // An expired entry's slot is taken over as it is; a free slot only while the
        // table is below its bound.
        let room = self.live() < self.max;
        let start = key.symmetric_hash() as usize;
        for i in 0..MAX_PROBE {
            let at = (start + i) & self.mask;
            let slot = &self.slots[at];
            let state = slot.b.load(Relaxed) & 0xff;
            let expired = state == LIVE && ((slot.c.load(Relaxed) >> 32) as u32) < now;
            if expired || (state != LIVE && room) {
                if !expired {
                    self.live.store(self.live() + 1, Relaxed);
                }
                self.created.store(self.created() + 1, Relaxed);
                slot.write(a, b, c);
                return Ok(at);
            }
            if state == EMPTY {
                // Nothing lies beyond an empty slot.
                break;
            }
        }
        Err(Full)
    }

    /// Forgets the entry at `at` (the owner only).
    fn remove(&self, at: usize) {
        let slot = &self.slots[at];
        if slot.b.load(Relaxed) & 0xff == LIVE {
            slot.write(0, TOMBSTONE, 0);
            self.live.store(self.live().saturating_sub(1), Relaxed);
        }
    }

    /// Every live entry, with its slot.
    fn entries(&self) -> impl Iterator<Item = (usize, Entry)> + '_ {
        self.slots.iter().enumerate().filter_map(|(at, slot)| {
            let (a, b, c) = slot.read()?;
            (b & 0xff == LIVE).then(|| {
                let entry = Entry {
                    orig: FlowKey::of_words(a, b),
                    flags: Flags::of_bits(b >> 8),
                    generation: c as u32,
                    expires: (c >> 32) as u32,
                };
                (at, entry)
            })
        })
    }

    /// Turns every entry expired by `now` into a tombstone (the owner only).
    fn sweep(&self, now: u32) {
        for at in 0..self.slots.len() {
            let slot = &self.slots[at];
            if slot.b.load(Relaxed) & 0xff == LIVE && ((slot.c.load(Relaxed) >> 32) as u32) < now {
                self.remove(at);
            }
        }
    }
}

/// A worker's view of every worker's table: its own to write, the others to read.
#[derive(Debug, Clone)]
pub struct Conntrack {
    tables: Arc<[Table]>,
    me: usize,
}

impl Conntrack {
    /// The tables of `workers` workers, each holding at most `max` connections.
    pub fn tables(workers: usize, max: usize) -> Arc<[Table]> {
        (0..workers.max(1)).map(|_| Table::new(max)).collect()
    }

    /// Worker `me`'s view of `tables`.
    pub fn new(tables: Arc<[Table]>, me: usize) -> Conntrack {
        let me = me % tables.len().max(1);
        Conntrack { tables, me }
    }

    fn own(&self) -> &Table {
        &self.tables[self.me]
    }

    /// Live entries in this worker's table.
    pub fn live(&self) -> u64 {
        self.own().live()
    }

    /// The connection `key` belongs to, looked up in this worker's table, then in the
    /// others'.
    pub fn lookup(&self, key: FlowKey, now: Time) -> Option<Found> {
        let now = seconds(now);
        if let Some((at, entry, forward)) = self.own().find(key, now) {
            return Some(Found {
                entry,
                forward,
                own_slot: Some(at),
            });
        }
        self.tables
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.me)
            .find_map(|(_, t)| t.find(key, now))
            .map(|(_, entry, forward)| Found {
                entry,
                forward,
                own_slot: None,
            })
    }

    /// Records a connection allowed under policy `generation`, first seen at `now`,
    /// or keeps one alive: `flags` are what is known of it now.
    pub fn track(
        &self,
        orig: FlowKey,
        flags: Flags,
        generation: u32,
        now: Time,
    ) -> Result<(), Full> {
        let expires = seconds(now + timeout(orig.proto, flags));
        let entry = Entry {
            orig,
            flags,
            generation,
            expires,
        };
        self.own().put(&entry, seconds(now)).map(drop)
    }

    /// Records what is known of connection `orig` now (`flags`, under `generation`),
    /// unless `found`, its entry in this worker's table, already says so for another
    /// second: most packets of a connection only read the table.
    pub fn keep(
        &self,
        orig: FlowKey,
        found: Option<&Found>,
        flags: Flags,
        generation: u32,
        now: Time,
    ) -> Result<(), Full> {
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
    pub fn needs_refresh(&self, entry: &Entry, now: Time) -> bool {
        let full = seconds(now + timeout(entry.orig.proto, entry.flags));
        entry.expires < full.saturating_sub(1)
    }

    /// Forgets the entry in this worker's slot `at`.
    pub fn forget(&self, at: usize) {
        self.own().remove(at);
    }

    /// Sweeps this worker's expired entries, and closes those another worker saw
    /// close: a FIN or RST seen by one worker would otherwise leave the other's copy
    /// of the connection with its long timeout.
    pub fn sweep(&self, now: Time) {
        let secs = seconds(now);
        let own = self.own();
        own.sweep(secs);
        let closed: Vec<Entry> = own
            .entries()
            .filter(|(_, e)| !e.flags.closing)
            .filter(|(_, e)| {
                self.tables
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != self.me)
                    .any(|(_, t)| {
                        t.find(e.orig, secs)
                            .is_some_and(|(_, o, _)| o.flags.closing)
                    })
            })
            .map(|(_, e)| e)
            .collect();
        for mut e in closed {
            e.flags.closing = true;
            e.expires = e.expires.min(seconds(now + timeout(e.orig.proto, e.flags)));
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
        }
    }

    fn at(secs: u64) -> Time {
        Time::ZERO + Duration::from_secs(secs)
    }

    #[test]
    fn both_directions_find_the_entry_in_any_workers_table() {
        let tables = Conntrack::tables(2, 8);
        let (w0, w1) = (Conntrack::new(tables.clone(), 0), Conntrack::new(tables, 1));
        w0.track(key(1000), Flags::default(), 7, at(10)).unwrap();
        let f = w0.lookup(key(1000), at(11)).unwrap();
        assert!(f.forward && f.own_slot.is_some());
        assert_eq!(f.entry.generation, 7);
        let r = w1.lookup(key(1000).reverse(), at(11)).unwrap();
        assert!(!r.forward && r.own_slot.is_none(), "{r:?}");
        assert_eq!(w1.lookup(key(1001), at(11)), None);
    }

    #[test]
    fn entries_expire_on_the_clock_and_are_swept() {
        let t = Conntrack::new(Conntrack::tables(1, 8), 0);
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
        };
        t.track(key(2), replied, 0, at(200)).unwrap();
        assert!(t.lookup(key(2), at(200 + 86_000)).is_some());
        let closing = Flags {
            replied: true,
            closing: true,
        };
        t.track(key(2), closing, 0, at(300)).unwrap();
        assert!(t.lookup(key(2), at(331)).is_none());
        assert_eq!(t.live(), 1, "an update is no new entry");
    }

    #[test]
    fn a_full_table_refuses_new_connections_and_reuses_freed_room() {
        let t = Conntrack::new(Conntrack::tables(1, 4), 0);
        for p in 0..4 {
            t.track(key(p), Flags::default(), 0, at(0)).unwrap();
        }
        assert_eq!(t.track(key(9), Flags::default(), 0, at(0)), Err(Full));
        // Known connections still update.
        t.track(key(2), Flags::default(), 1, at(1)).unwrap();
        let f = t.lookup(key(2), at(1)).unwrap();
        t.forget(f.own_slot.unwrap());
        assert!(t.lookup(key(2), at(1)).is_none());
        t.track(key(9), Flags::default(), 0, at(1)).unwrap();
        assert_eq!(t.live(), 4);
        // Expired entries make room too.
        assert_eq!(t.track(key(10), Flags::default(), 0, at(30)), Err(Full));
        t.track(key(10), Flags::default(), 0, at(62)).unwrap();
    }

    #[test]
    fn a_close_seen_by_another_worker_closes_this_workers_copy() {
        let tables = Conntrack::tables(2, 8);
        let (w0, w1) = (Conntrack::new(tables.clone(), 0), Conntrack::new(tables, 1));
        let replied = Flags {
            replied: true,
            closing: false,
        };
        w0.track(key(5), Flags::default(), 0, at(0)).unwrap();
        w1.track(key(5), replied, 0, at(0)).unwrap();
        // Worker 0 sees the RST.
        w0.track(
            key(5),
            Flags {
                replied: false,
                closing: true,
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
    fn a_reader_never_sees_a_torn_entry() {
        let tables = Conntrack::tables(2, 64);
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
