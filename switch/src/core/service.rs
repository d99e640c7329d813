//! ClusterIP Services translated in the switch (`services = "switch"`), as
//! kube-proxy's rules would translate them in the node's stack, on the source pod's
//! egress.
//!
//! A packet from a port (a pod, or the node through the host port) to an address
//! of the Service CIDR is translated before it is routed: its destination becomes
//! the endpoint the connection was given, so routing, the host boundary and
//! NetworkPolicy all see the endpoint, and the endpoint sees the client's own
//! address (no SNAT). A new connection's endpoint is a Maglev lookup on a hash of
//! its 5-tuple keyed by a random seed, or, with `sessionAffinity: ClientIP`, the
//! endpoint the client's last connection to the port went to, while it is fresh.
//!
//! The translation is kept in a connection table of the same kind as
//! NetworkPolicy's (one per worker, written by its owner, read by all through
//! seqlocks, fair to sources, with NetworkPolicy's timeouts), as two entries whose
//! values say what to rewrite ([`Kind`]):
//! - `Dnat`, keyed by the client's 5-tuple to the ClusterIP: later packets of the
//!   connection go to the same endpoint, whatever the table says now;
//! - `Reply`, keyed by the 5-tuple to the endpoint: replies from the endpoint, on
//!   whichever worker they arrive, are given the ClusterIP and port back as their
//!   source before they reach the client. A packet from anyone else (another
//!   endpoint, a pod that is no endpoint, a forged port) matches no entry and is not
//!   translated, so no pod can speak as the Service to a client it does not serve.
//!
//! Hairpin: a client given itself as the endpoint would see its own address as the
//! source of the connection it accepts, which its stack drops as a martian. As
//! kube-proxy masquerades such a packet (to the node's address on the bridge), the
//! switch gives it the ClusterIP as its source (Cilium does the same with its own
//! loopback address): the pod sees the connection come from the Service, and
//! answers it there; a `HairpinReply` entry, keyed by the connection as the pod sees
//! it, takes the answer back. Policy judges the pod's connection to itself.
//!
//! When the Service table changes, each worker forgets the UDP translations (and
//! the affinities) whose endpoint left its port, so a DNS client's next query goes
//! to a live endpoint; TCP and SCTP connections keep theirs until they end, and so
//! do their replies. A TCP SYN on the ports of a connection that closed is a new
//! connection, given an endpoint afresh. A fragment to a Service address is
//! dropped: only a first fragment carries the ports that choose the translation. An
//! ICMP error to the client about a translated connection (a path MTU's, an
//! endpoint's port unreachable) is translated back: the packet it quotes, and its
//! source if the endpoint sent it. One a client sends about a reply it got from the Service
//! goes to the ClusterIP and is dropped.

use std::net::Ipv4Addr;

use weft_encap::ipv4;
use weft_encap::nat::{self, End};

use super::conntrack::{seconds, Conntrack, Entry, Flags, FlowKey, Found, Refused};
use super::flow::{Flow, LazyFlow};
use super::forward::Facts;
use super::icmp::IcmpError;
use super::{Core, Ctx, Ingress, Offload, Time};
use crate::services::{Frontend, ServicePort};
use crate::tables::counters::DropReason;
use crate::tables::fib::NextHop;
use crate::tables::services::{protocol_of, Choice, Services};
use crate::tables::{PortKind, Tables};

/// What a translation entry holds, by what its key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Keyed by client → ClusterIP:port: the endpoint.
    Dnat = 1,
    /// Keyed by client → endpoint: the ClusterIP and port replies come from.
    Reply = 2,
    /// Keyed by ClusterIP:client port → the client (its own endpoint): the client,
    /// and the Service's port.
    HairpinReply = 3,
    /// Keyed by client → ClusterIP:port with no client port: the endpoint the
    /// client's last connection was given.
    Affinity = 4,
}

/// An entry's value: an address, a port and what they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Value {
    kind: Kind,
    ip: Ipv4Addr,
    port: u16,
}

impl Value {
    fn word(self) -> u64 {
        u64::from(u32::from(self.ip)) << 32 | u64::from(self.port) << 16 | self.kind as u64
    }

    fn of(word: u64) -> Option<Value> {
        let kind = match word & 0xff {
            1 => Kind::Dnat,
            2 => Kind::Reply,
            3 => Kind::HairpinReply,
            4 => Kind::Affinity,
            _ => return None,
        };
        Some(Value {
            kind,
            ip: Ipv4Addr::from((word >> 32) as u32),
            port: (word >> 16) as u16,
        })
    }
}

/// The `icmp` byte of an affinity's key, which no TCP, UDP or SCTP connection's
/// key has (theirs is 0).
const AFFINITY: u8 = 0xaf;

/// A rewrite of one end of a packet: its address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rewrite {
    end: End,
    ip: Ipv4Addr,
    port: u16,
    /// An ICMP error about a translated connection, from this address (the
    /// endpoint's, or a router's): the rewrite is of the packet it quotes, and the
    /// error's own source too if it is the endpoint.
    quoted: Option<Ipv4Addr>,
}

impl Rewrite {
    /// The destination to become `ip:port`.
    fn dst(ip: Ipv4Addr, port: u16) -> Rewrite {
        Rewrite {
            end: End::Dst,
            ip,
            port,
            quoted: None,
        }
    }

    /// The source to become `ip:port`.
    fn src(ip: Ipv4Addr, port: u16) -> Rewrite {
        Rewrite {
            end: End::Src,
            ..Rewrite::dst(ip, port)
        }
    }

    /// Rewrites the IPv4 packet `packet` (its checksums too: a partial transport
    /// checksum, under `offload`, as such).
    pub(super) fn apply(self, packet: &mut [u8], offload: &Offload) -> Result<(), DropReason> {
        let malformed = |_| DropReason::Malformed;
        let Some(endpoint) = self.quoted else {
            let partial = offload.needs_csum;
            return nat::rewrite(packet, self.end, self.ip, Some(self.port), partial)
                .map_err(malformed);
        };
        // An ICMP error (`Flow::of` found its quote behind a whole IPv4 header).
        let ip = ipv4::Packet::new_checked(&*packet).map_err(|_| DropReason::Malformed)?;
        let (hl, sender) = (ip.header_len(), ip.src_addr());
        nat::rewrite_quoted(&mut packet[hl..], End::Dst, self.ip, self.port).map_err(malformed)?;
        if sender == endpoint {
            nat::rewrite(packet, End::Src, self.ip, None, false).map_err(malformed)?;
        }
        Ok(())
    }
}

/// Why a packet to a Service address goes no further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Dropped.
    Drop(DropReason),
    /// Dropped, and its source told.
    Refuse(DropReason, IcmpError),
}

/// A worker's translations: its table to write, the others' to read, and the
/// Service table it last flushed against.
#[derive(Debug)]
pub struct Nat {
    ct: Conntrack,
    seen: u64,
}

impl Nat {
    /// Worker state over `ct`, a view of tables with values
    /// ([`Conntrack::value_tables`]).
    pub fn new(ct: Conntrack) -> Nat {
        Nat { ct, seen: 0 }
    }

    /// Sweeps this worker's expired translations; returns how many are left.
    pub(super) fn sweep(&self, now: Time) -> u64 {
        self.ct.sweep(now);
        self.ct.live()
    }

    /// Writes the entry `key` → `value` with `flags`, and its sibling (the entry the
    /// other direction of the connection finds), both fresh at `now`.
    fn record(&self, key: FlowKey, value: Value, flags: Flags, now: Time) -> Result<(), Refused> {
        let (skey, svalue) = sibling(key, value);
        for (k, v) in [(key, value), (skey, svalue)] {
            let entry = Entry {
                orig: k,
                flags,
                generation: 0,
                expires: self.ct.expiry(k, flags, now),
                value: v.word(),
            };
            self.ct.put(&entry, now)?;
        }
        Ok(())
    }

    /// Keeps the connection of `found` (an entry holding `value`) alive, with what
    /// `flow`, a packet that found it, says of it: most packets only read.
    fn keep(&self, found: &Found, value: Value, flow: &Flow, now: Time) {
        let forward = value.kind == Kind::Dnat;
        let mut flags = found.entry.flags;
        flags.replied |= !forward;
        flags.closing |= flow.closing;
        flags.assured |= forward && flags.replied && !flow.closing;
        let current = found.own_slot.is_some()
            && flags == found.entry.flags
            && !self.ct.needs_refresh(&found.entry, now);
        if !current {
            // A known connection that finds no room keeps its entry elsewhere.
            let _ = self.record(found.entry.orig, value, flags, now);
        }
    }

    /// Forgets the connection of `found` (an entry holding `value`): both its
    /// entries, where they are in this worker's table. (Another worker's copy
    /// expires on its own; this worker's table is looked in first.)
    fn forget_connection(&self, found: &Found, value: Value, now: Time) {
        if let Some(at) = found.own_slot {
            self.ct.forget(at);
        }
        let (skey, _) = sibling(found.entry.orig, value);
        let other = self.ct.lookup(skey, now).filter(|f| f.forward);
        if let Some(at) = other.and_then(|f| f.own_slot) {
            self.ct.forget(at);
        }
    }

    /// Forgets, after the Service table changed, the UDP translations and the
    /// affinities whose endpoint left its port.
    fn flush(&mut self, services: &Services) {
        if self.seen == services.generation() {
            return;
        }
        self.seen = services.generation();
        self.ct.forget_where(|e| stale(services, e));
    }
}

/// The other entry of the connection whose entry is `key` → `value`.
fn sibling(key: FlowKey, value: Value) -> (FlowKey, Value) {
    let to = |src, dst, dport| FlowKey {
        src: u32::from(src),
        dst: u32::from(dst),
        dport,
        ..key
    };
    let (client, cluster) = (Ipv4Addr::from(key.src), Ipv4Addr::from(key.dst));
    let back = |kind, ip, port| Value { kind, ip, port };
    match value.kind {
        Kind::Dnat if value.ip == client => (
            to(cluster, value.ip, value.port),
            back(Kind::HairpinReply, client, key.dport),
        ),
        Kind::Dnat => (
            to(client, value.ip, value.port),
            back(Kind::Reply, cluster, key.dport),
        ),
        Kind::Reply => (
            to(client, value.ip, value.port),
            back(Kind::Dnat, Ipv4Addr::from(key.dst), key.dport),
        ),
        Kind::HairpinReply => (
            to(value.ip, Ipv4Addr::from(key.src), value.port),
            back(Kind::Dnat, Ipv4Addr::from(key.dst), key.dport),
        ),
        // An affinity has no other direction: it is its own.
        Kind::Affinity => (key, value),
    }
}

/// Whether entry `e` must go now that the Service table is `services`: a UDP
/// translation or an affinity whose endpoint is no longer one of its port's.
fn stale(services: &Services, e: &Entry) -> bool {
    let Some(v) = Value::of(e.value) else {
        return true;
    };
    let k = e.orig;
    let ((fip, fport), (eip, eport)) = match v.kind {
        Kind::Dnat | Kind::Affinity => ((k.dst.into(), k.dport), (v.ip, v.port)),
        Kind::Reply => ((v.ip, v.port), (k.dst.into(), k.dport)),
        Kind::HairpinReply => ((k.src.into(), v.port), (k.dst.into(), k.dport)),
    };
    if v.kind != Kind::Affinity && k.proto != ipv4::protocol::UDP {
        return false;
    }
    let port = protocol_of(k.proto).and_then(|protocol| {
        services.find(&Frontend {
            ip: fip,
            port: fport,
            protocol,
        })
    });
    port.is_none_or(|i| !services.is_endpoint(i, eip, eport))
}

/// The key of `client`'s affinity to the Service port of connection `key`.
fn affinity_key(key: FlowKey) -> FlowKey {
    FlowKey {
        sport: 0,
        icmp: AFFINITY,
        ..key
    }
}

impl Core {
    /// Gives this worker its Services' translation tables (`services =
    /// "switch"`); without them, nothing is translated.
    pub fn set_services(&mut self, nat: Nat) {
        self.nat = Some(nat);
    }

    /// Live translation entries in this worker's table (two a connection, one an
    /// affinity).
    pub fn service_entries(&self) -> u64 {
        self.nat.as_ref().map_or(0, |n| n.ct.live())
    }

    /// Whether this worker translates Services.
    pub fn translates_services(&self) -> bool {
        self.nat.is_some()
    }

    /// Forgets the UDP translations to endpoints gone, once per new Service table.
    pub(super) fn services_sync(&mut self, t: &Tables) {
        if let (Some(nat), Some(s)) = (&mut self.nat, &t.services) {
            nat.flush(s);
        }
    }

    /// The Service table, if the IPv4 packet `packet` (`facts`) from `from` is to
    /// be translated before it is routed: from a port, to the Service CIDR, and
    /// admissible. From the host port, a source the host may not forward (a pod's
    /// address forged by a machine routing through the node) is refused here, so
    /// that no forged source gets a translation recorded.
    pub(super) fn service_gate<'t, S: ?Sized>(
        &self,
        cx: &Ctx<'t, S>,
        from: Ingress,
        facts: &Facts,
        packet: &[u8],
    ) -> Result<Option<&'t Services>, DropReason> {
        let t = cx.tables;
        let (Some(s), Ingress::Port(i)) = (t.services.as_deref(), from) else {
            return Ok(None);
        };
        if self.nat.is_none()
            || !s.cidr().contains(&facts.dst)
            || super::forward::inadmissible(t, from, facts).is_some()
        {
            return Ok(None);
        }
        let host = t.ports[i].kind == PortKind::Host;
        if host && !self.host_admits(cx, &ipv4::Packet::new_unchecked(packet)) {
            return Err(DropReason::Spoofed);
        }
        Ok(Some(s))
    }

    /// Translates `packet`, from `from` to an address of the Service CIDR, to its
    /// connection's endpoint; returns what is left to rewrite once policy has
    /// judged it (a hairpin's source), or why it goes no further.
    pub(super) fn service_in<S: ?Sized>(
        &mut self,
        cx: &Ctx<'_, S>,
        services: &Services,
        packet: &mut [u8],
        offload: &Offload,
    ) -> Result<Option<Rewrite>, Refusal> {
        let ip = ipv4::Packet::new_unchecked(&*packet);
        let flow = Flow::of(&ip);
        if flow.fragment.is_some() {
            return Err(Refusal::Drop(DropReason::ServiceUntranslatable));
        }
        let Some(protocol) = protocol_of(flow.key.proto) else {
            let why = DropReason::ServiceUnknown;
            return Err(Refusal::Refuse(why, IcmpError::HostUnreachable));
        };
        nat::check(packet).map_err(|_| Refusal::Drop(DropReason::Malformed))?;
        let (before, after) = match self.known(cx, services, &flow) {
            Some(known) => known,
            None => {
                let frontend = Frontend {
                    ip: Ipv4Addr::from(flow.key.dst),
                    port: flow.key.dport,
                    protocol,
                };
                self.open(cx, services, &flow, frontend)?
            }
        };
        before.apply(packet, offload).map_err(Refusal::Drop)?;
        // The entries written are swept once they expire.
        self.sweep_soon(cx.now);
        Ok(after)
    }

    /// The rewrites of a packet of a connection already translated: a client's
    /// packet to the Service, or a hairpin's answer to it.
    fn known<S: ?Sized>(
        &self,
        cx: &Ctx<'_, S>,
        services: &Services,
        flow: &Flow,
    ) -> Option<(Rewrite, Option<Rewrite>)> {
        let nat = self.nat.as_ref()?;
        let found = nat.ct.lookup(flow.key, cx.now)?;
        let v = Value::of(found.entry.value)?;
        let key = flow.key;
        let rewrites = match (v.kind, found.forward) {
            (Kind::Dnat, true) if flow.opening.is_some() && found.entry.flags.closing => {
                // A SYN on the ports of a connection that closed (its FIN or RST
                // seen) opens a new connection: it is given an endpoint afresh, as
                // Linux's connection tracker does with a SYN in TIME_WAIT, so that
                // a client reusing its ports does not follow an endpoint that left.
                nat.forget_connection(&found, v, cx.now);
                return None;
            }
            (Kind::Dnat, true) => {
                // A UDP flow whose endpoint left, found in another worker's table,
                // which that worker has not flushed yet: a new flow. (This worker's
                // own was flushed when this call began.)
                let elsewhere = found.own_slot.is_none();
                if key.proto == ipv4::protocol::UDP
                    && elsewhere
                    && !still_endpoint(services, &key, v)
                {
                    return None;
                }
                let hairpin = (v.ip == Ipv4Addr::from(key.src))
                    .then(|| Rewrite::src(Ipv4Addr::from(key.dst), key.sport));
                (Rewrite::dst(v.ip, v.port), hairpin)
            }
            // The pod answers the connection it accepted from the Service.
            (Kind::HairpinReply, false) => {
                let back = Rewrite::src(Ipv4Addr::from(key.dst), v.port);
                (Rewrite::dst(v.ip, key.dport), Some(back))
            }
            _ => return None,
        };
        nat.keep(&found, v, flow, cx.now);
        Some(rewrites)
    }

    /// Gives the new connection `flow` to `frontend` an endpoint, and records it.
    fn open<S: ?Sized>(
        &mut self,
        cx: &Ctx<'_, S>,
        services: &Services,
        flow: &Flow,
        frontend: Frontend,
    ) -> Result<(Rewrite, Option<Rewrite>), Refusal> {
        let Some(i) = services.find(&frontend) else {
            // A ClusterIP without the port answers as a host without it would.
            let error = match services.holds(frontend.ip) {
                true => IcmpError::PortUnreachable,
                false => IcmpError::HostUnreachable,
            };
            return Err(Refusal::Refuse(DropReason::ServiceUnknown, error));
        };
        let port = services.port(i);
        let (ip, eport) = match self.choose(cx.now, services, i, port, flow.key) {
            Choice::Endpoint(ip, eport) => (ip, eport),
            Choice::Refuse => {
                let why = DropReason::ServiceRefused;
                return Err(Refusal::Refuse(why, IcmpError::PortUnreachable));
            }
            Choice::Drop => return Err(Refusal::Drop(DropReason::ServiceNoLocal)),
        };
        let nat = self
            .nat
            .as_ref()
            .ok_or(Refusal::Drop(DropReason::ServiceUnknown))?;
        let value = Value {
            kind: Kind::Dnat,
            ip,
            port: eport,
        };
        let flags = Flags {
            closing: flow.closing,
            ..Flags::default()
        };
        if let Err(refused) = nat.record(flow.key, value, flags, cx.now) {
            // Half a connection is none: the entry that fitted goes too.
            if let Some(at) = nat.ct.lookup(flow.key, cx.now).and_then(|f| f.own_slot) {
                nat.ct.forget(at);
            }
            return Err(Refusal::Drop(match refused {
                Refused::Full => DropReason::ConntrackFull,
                Refused::OverShare => DropReason::ConntrackShare,
            }));
        }
        let hairpin =
            (ip == Ipv4Addr::from(flow.key.src)).then(|| Rewrite::src(frontend.ip, flow.key.sport));
        Ok((Rewrite::dst(ip, eport), hairpin))
    }

    /// The endpoint of port `i` (`port`) for the new connection `key`: its client's
    /// affinity while it is fresh and its endpoint still usable, else Maglev's.
    fn choose(
        &self,
        now: Time,
        services: &Services,
        i: usize,
        port: &ServicePort,
        key: FlowKey,
    ) -> Choice {
        let (Some(timeout), Some(nat)) = (port.affinity, &self.nat) else {
            return services.choose(i, key);
        };
        let akey = affinity_key(key);
        let held = (nat.ct.lookup(akey, now))
            .and_then(|f| Value::of(f.entry.value))
            .filter(|v| v.kind == Kind::Affinity && services.is_usable(i, v.ip, v.port));
        let choice = match held {
            Some(v) => Choice::Endpoint(v.ip, v.port),
            None => services.choose(i, key),
        };
        if let Choice::Endpoint(ip, eport) = choice {
            let entry = Entry {
                orig: akey,
                flags: Flags::default(),
                generation: 0,
                expires: seconds(now + timeout),
                value: Value {
                    kind: Kind::Affinity,
                    ip,
                    port: eport,
                }
                .word(),
            };
            // Without room, the next connection may go elsewhere: affinity is
            // kept as far as the client's share of the table allows.
            let _ = nat.ct.put(&entry, now);
        }
        choice
    }

    /// What to rewrite in a packet going to `hop` that did not go to the Service
    /// CIDR: an endpoint's reply to a translated connection gets the Service's
    /// address and port as its source; an ICMP error about a translated connection
    /// (a path MTU's, say) gets them in the packet it quotes, and as its own source
    /// if the endpoint sent it, as Linux's connection tracker translates related
    /// errors.
    pub(super) fn service_reply<S: ?Sized>(
        &self,
        cx: &Ctx<'_, S>,
        hop: NextHop,
        flow: &mut LazyFlow<'_, '_>,
    ) -> Option<Rewrite> {
        let nat = self.nat.as_ref().filter(|_| cx.tables.services.is_some())?;
        if !matches!(hop, NextHop::Local(_) | NextHop::Host) || nat.ct.is_empty() {
            return None;
        }
        let flow = flow.get();
        if let Some(inner) = flow.error_about {
            let translated = (nat.ct.lookup(inner, cx.now))
                .filter(|f| f.forward)
                .and_then(|f| Value::of(f.entry.value))
                .filter(|v| v.kind == Kind::Reply);
            return translated.map(|v| Rewrite {
                quoted: Some(Ipv4Addr::from(inner.dst)),
                ..Rewrite::dst(v.ip, v.port)
            });
        }
        // A reused 5-tuple's closed translation may linger here; the open one wins.
        let found = nat
            .ct
            .lookup_open(flow.key, cx.now)
            .filter(|f| !f.forward)?;
        let v = Value::of(found.entry.value).filter(|v| v.kind == Kind::Reply)?;
        nat.keep(&found, v, flow, cx.now);
        Some(Rewrite::src(v.ip, v.port))
    }
}

/// Whether the endpoint of `value`, the translation of connection `key`, is still an
/// endpoint of its Service port.
fn still_endpoint(services: &Services, key: &FlowKey, value: Value) -> bool {
    let frontend = protocol_of(key.proto).map(|protocol| Frontend {
        ip: Ipv4Addr::from(key.dst),
        port: key.dport,
        protocol,
    });
    frontend
        .and_then(|f| services.find(&f))
        .is_some_and(|i| services.is_endpoint(i, value.ip, value.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlowKey {
        FlowKey {
            src: u32::from(Ipv4Addr::new(10, 244, 1, 5)),
            dst: u32::from(Ipv4Addr::new(10, 96, 0, 10)),
            sport: 40_000,
            dport: 80,
            proto: 6,
            icmp: 0,
        }
    }

    #[test]
    fn values_round_trip() {
        for kind in [Kind::Dnat, Kind::Reply, Kind::HairpinReply, Kind::Affinity] {
            let v = Value {
                kind,
                ip: Ipv4Addr::new(10, 244, 2, 7),
                port: 8080,
            };
            assert_eq!(Value::of(v.word()), Some(v));
        }
        assert_eq!(Value::of(0), None);
    }

    /// Each entry's sibling is the entry the other direction finds, and its
    /// sibling is the entry again.
    #[test]
    fn siblings_pair_up() {
        let endpoint = Ipv4Addr::new(10, 244, 2, 7);
        let client = Ipv4Addr::from(key().src);
        for to in [endpoint, client] {
            let v = Value {
                kind: Kind::Dnat,
                ip: to,
                port: 8080,
            };
            let (k2, v2) = sibling(key(), v);
            assert_eq!(sibling(k2, v2), (key(), v));
            assert_eq!(Ipv4Addr::from(k2.dst), to);
            assert_eq!(k2.dport, 8080);
            let kind = if to == client {
                Kind::HairpinReply
            } else {
                Kind::Reply
            };
            assert_eq!(v2.kind, kind);
        }
    }
}
