//! The boundary with the host: what the host port may bring in, and which flows must
//! go back out through it.
//!
//! The host behind the host port routes and translates what the switch hands it:
//! kube-proxy's Services (DNAT), portmap's hostPorts, the egress masquerade, direct
//! routing. Its connection tracker reverses a translation only for packets it sees,
//! so a connection that the host saw one way must come back through the host, even
//! where the switch could deliver its replies straight to a pod. Three tables keep
//! that true, each a set of per-worker [`Conntrack`] tables:
//!
//! - **handed**: the flows of pods (of this node, or a peer's through the tunnel)
//!   that the switch hands to the host and that the host may hand back: a TCP
//!   connection's first packet (SYN) or any UDP or SCTP datagram with ports, keyed by
//!   what the host's translation keeps of it ([`handed_key`]): the source address
//!   and protocol, and a SYN's sequence number or a datagram's source port. A DNAT
//!   rewrites the destination; Linux's NAT also rewrites the source port of a new
//!   connection whose reply tuple an older one it still tracks has (a client port
//!   reused towards another Service of the same endpoint while the host keeps the
//!   last connection from it in TIME_WAIT), but it never rewrites a sequence
//!   number. An entry lives a few seconds from the last packet that wrote it: the
//!   host hands a packet back within microseconds.
//! - **returning**: every connection the host handed back with a pod's source
//!   address, by its 5-tuple, for as long as the host's own connection tracker
//!   keeps it ([`Timeouts::Host`]). Its further packets from the host are admitted by
//!   it; its replies, from a pod port or the tunnel, go to the host instead of to
//!   their destination, so that the host can undo its translation and send them on
//!   through the host port. So do ICMP errors about it, and the later fragments of
//!   a reply whose first fragment went to the host (tracked by datagram in
//!   **fragments**, as are the later fragments the host hands back). A pod's own
//!   connection that reuses the 5-tuple of a translated one that ended takes it
//!   over (a `bypass` entry; the latest word on a 5-tuple in any worker wins).
//!
//! And the host port admits only what the host legitimately forwards:
//! - sources outside the cluster CIDR: the world, the node's own addresses, replies
//!   the host translated back (a ClusterIP, a NodePort's address);
//! - the node's gateway address;
//! - the pod subnet of a peer whose traffic reaches this node through its host
//!   (direct routing, whichever end routes directly; never under required
//!   encryption, see [`PeerEntry::via_host`](crate::tables::PeerEntry::via_host));
//! - a pod source of a returning connection, or of a flow handed to the host.
//!
//! Any other pod address from the host port is spoofed: a machine on the node's
//! segment routing through the host with a forged source, say. It is dropped and
//! counted as `spoofed` on the host port, and gets no ICMP error from the switch.
//! What remains open to such a machine is a pod's source that is live in the tables:
//! a UDP or SCTP port the pod sent from to the host in the last seconds, a TCP SYN
//! with the sequence number of a SYN the pod sent to the host in the last seconds
//! (from any port, as the host's NAT may have moved it), or the exact 5-tuple of a
//! connection the host handed back. A forger that does not see the pod's traffic
//! must guess the 32-bit sequence number of a live SYN. The first connection handed
//! back with a number takes it ([`claim_of`], for as long as a handed flow lives),
//! so a hit opens one connection as the pod's, blind: the answers go to the host,
//! which sends them on with a pod source, and that is refused here (nothing handed
//! it out). One that sees the
//! pod's traffic is beyond what this check can tell apart. A UDP or SCTP datagram
//! whose source port the host's NAT moved is refused: nothing in it binds it to the
//! pod's.
//!
//! A full handed table lets the flow pass unrecorded (were it handed back, it would
//! be refused then); a full returning table refuses the connection the host hands
//! back, after giving its place to one not assured (as Linux's early drop does) if
//! there is one.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::utils::CachePadded;

use super::conntrack::{self, Conntrack, Flags, FlowKey, Found, Overflow, Table, Timeouts};
use weft_encap::ipv4;

use super::flow::{Flow, LazyFlow};
use super::{Core, Ctx, Ingress};
use crate::tables::counters::DropReason;
use crate::tables::fib::NextHop;
use crate::tables::{PortKind, Tables};

/// How long a handed flow waits to be handed back, from its last packet.
const HANDED: Duration = Duration::from_secs(5);
/// How long the later fragments of a datagram whose first went to the host follow it.
const FRAGMENTS: Duration = Duration::from_secs(5);
/// Datagrams in flight in fragments, per worker.
const FRAGMENTS_MAX: usize = 1024;

/// Every worker's host-flow tables, for the workers and for the control plane's
/// statistics.
#[derive(Debug, Clone)]
pub struct HostTables {
    handed: Arc<[Table]>,
    returning: Arc<[Table]>,
    fragments: Arc<[Table]>,
    /// Connections handed back, per worker.
    returned: Arc<[CachePadded<AtomicU64>]>,
}

/// How many flows cross the host, summed over the workers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostFlowStats {
    /// Flows of pods handed to the host, recorded now.
    pub handed: u64,
    /// Connections the host handed back, whose replies return through it, now.
    pub returning: u64,
    /// Connections the host handed back since the start.
    pub returned_total: u64,
}

impl HostTables {
    /// The tables of `workers` workers, each holding at most `max` flows of each kind.
    pub fn new(workers: usize, max: usize) -> HostTables {
        HostTables {
            handed: Conntrack::tables(workers, max, Overflow::EarlyDrop),
            returning: Conntrack::tables(workers, max, Overflow::EarlyDrop),
            fragments: Conntrack::tables(workers, FRAGMENTS_MAX, Overflow::EarlyDrop),
            returned: (0..workers.max(1))
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Worker `me`'s view of the tables.
    pub fn worker(&self, me: usize) -> HostFlows {
        HostFlows {
            handed: Conntrack::with(self.handed.clone(), me, Timeouts::Fixed(HANDED)),
            returning: Conntrack::with(self.returning.clone(), me, Timeouts::Host),
            fragments: Conntrack::with(self.fragments.clone(), me, Timeouts::Fixed(FRAGMENTS)),
            returned: self.returned.clone(),
            me: me % self.returned.len(),
        }
    }

    /// The flows crossing the host now. A connection whose two directions reach
    /// the switch on different workers is kept, and counted, by each.
    pub fn stats(&self) -> HostFlowStats {
        HostFlowStats {
            handed: self.handed.iter().map(Table::live).sum(),
            returning: self.returning.iter().map(Table::live).sum(),
            returned_total: self.returned.iter().map(|n| n.load(Relaxed)).sum(),
        }
    }
}

/// One worker's view of the host-flow tables.
#[derive(Debug, Clone)]
pub struct HostFlows {
    handed: Conntrack,
    returning: Conntrack,
    fragments: Conntrack,
    returned: Arc<[CachePadded<AtomicU64>]>,
    me: usize,
}

impl HostFlows {
    /// Sweeps this worker's expired flows; returns how many it still keeps.
    pub(super) fn sweep(&self, now: super::Time) -> u64 {
        self.handed.sweep(now);
        self.returning.sweep(now);
        self.fragments.sweep(now);
        self.handed.live() + self.returning.live() + self.fragments.live()
    }

    /// Counts a connection handed back (this worker's slot only).
    fn count_returned(&self) {
        let n = &self.returned[self.me];
        n.store(n.load(Relaxed) + 1, Relaxed);
    }
}

/// The key under which the handed table knows a pod's flow that the host may hand
/// back: what the host's translation keeps of the flow's first packet, so that the
/// packet the pod sent to the host and the one the host hands back share it.
/// For a TCP SYN, the source address and the sequence number (in the two port
/// fields; no NAT rewrites it, while Linux's moves the source port of a connection
/// whose reply tuple clashes with one it still tracks); for a UDP or SCTP datagram,
/// the source address and port. None for what opens nothing: a TCP segment that is
/// no SYN, a packet without ports. The destination is 0 in every key: a DNAT
/// rewrites it.
fn handed_key(flow: &Flow) -> Option<FlowKey> {
    use weft_encap::ipv4::protocol::TCP;
    let side = FlowKey {
        dst: 0,
        dport: 0,
        ..flow.key
    };
    match flow.opening {
        Some(isn) => {
            let [a, b, c, d] = isn.to_be_bytes();
            Some(FlowKey {
                sport: u16::from_be_bytes([a, b]),
                dport: u16::from_be_bytes([c, d]),
                ..side
            })
        }
        None if flow.key.proto == TCP => None,
        None => flow.port.map(|_| side),
    }
}

/// The key under which the handed table marks a SYN's [`handed_key`] as used: the
/// first connection the host hands back with that sequence number takes it, and
/// no other 5-tuple may (a retransmission of the first finds its returning
/// connection before this). A handed key's destination is always 0, so a claim
/// (all ones) is never one.
fn claim_of(handed: FlowKey) -> FlowKey {
    FlowKey {
        dst: u32::MAX,
        ..handed
    }
}

/// The key of a datagram whose fragments come from the host, apart from those of a
/// reply that goes to it ([`Flow::datagram`] has a `dport` of 0).
fn from_host(datagram: FlowKey) -> FlowKey {
    FlowKey {
        dport: 1,
        ..datagram
    }
}

/// Where a source address from the host port stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostSource {
    /// Outside the cluster, or this node's gateway, or a pod of a peer that reaches
    /// this node through its host: admitted as it is.
    Admitted,
    /// Any other pod address: admitted only as a returning or handed flow.
    Pod,
}

fn host_source(t: &Tables, src: Ipv4Addr) -> HostSource {
    if !t.node.cluster.contains(&src) || src == t.node.gateway {
        return HostSource::Admitted;
    }
    match t.fib.lookup(src) {
        // In the cluster CIDR only a direct peer's subnet (and the gateway) routes
        // to the host. A peer that routes here directly while this node tunnels
        // back gets its replies through the tunnel, and its own node sends them
        // through its host ([`super::forward::decide`]).
        Some(NextHop::Host) => HostSource::Admitted,
        Some(NextHop::Peer(j)) if t.peers[j].via_host => HostSource::Admitted,
        _ => HostSource::Pod,
    }
}

/// Whether a packet from a pod to `dst`, which goes to the host, is a flow the host
/// may hand back: anything but a peer's pod reached by direct routing, which the
/// host sends on to the peer.
fn may_come_back(t: &Tables, dst: Ipv4Addr) -> bool {
    !t.node.cluster.contains(&dst) || dst == t.node.gateway
}

impl Core {
    /// The host boundary for a routed packet from `from` going to `hop`: the hop it
    /// takes now (the host, for a reply of a connection that returns through it), or
    /// why it is dropped, to be counted on `from`.
    pub(super) fn host_boundary<S: ?Sized>(
        &mut self,
        cx: &Ctx<'_, S>,
        from: Ingress,
        hop: NextHop,
        flow: &mut LazyFlow<'_, '_>,
    ) -> Result<NextHop, DropReason> {
        let t = cx.tables;
        let from_host = matches!(from, Ingress::Port(i) if t.ports[i].kind == PortKind::Host);
        if from_host {
            if host_source(t, flow.src()) == HostSource::Admitted {
                return Ok(hop);
            }
            return self.admit_from_host(cx, flow.get()).map(|()| hop);
        }
        match hop {
            // Nothing returns through the host while nothing was handed back: the
            // common case costs a load per worker.
            NextHop::Local(_) | NextHop::Peer(_)
                if self.host.returning.is_empty() && self.host.fragments.is_empty() =>
            {
                Ok(hop)
            }
            // The switch's own errors come from the gateway, the host's own address,
            // which the host refuses as a source on its way in: they go their way.
            NextHop::Local(_) | NextHop::Peer(_) if matches!(from, Ingress::Icmp(_)) => Ok(hop),
            NextHop::Local(_) | NextHop::Peer(_) => Ok(self.returns_to_host(cx, flow.get(), hop)),
            NextHop::Host if !matches!(from, Ingress::Icmp(_)) => {
                let (src, dst) = (flow.src(), flow.dst());
                let pod = t.node.cluster.contains(&src) && src != t.node.gateway;
                if pod && may_come_back(t, dst) {
                    self.hand_to_host(cx, flow.get());
                }
                Ok(hop)
            }
            NextHop::Host | NextHop::Unreachable => Ok(hop),
        }
    }

    /// Whether a packet from the host port is one it admits, looked at without
    /// recording anything: the switch answers a refusal (no route, TTL, too big)
    /// with an ICMP error only then, so that a spoofed source gets none.
    pub(super) fn host_admits<S: ?Sized>(&self, cx: &Ctx<'_, S>, ip: &ipv4::Packet<&[u8]>) -> bool {
        if host_source(cx.tables, ip.src_addr()) == HostSource::Admitted {
            return true;
        }
        let flow = Flow::of(ip);
        let host = &self.host;
        let forward = |t: &Conntrack, key| t.lookup(key, cx.now).is_some_and(|f| f.forward);
        if flow.fragment.is_some_and(|f| !f.first) {
            return flow
                .datagram()
                .is_some_and(|d| forward(&host.fragments, from_host(d)));
        }
        forward(&host.returning, flow.key)
            || handed_key(&flow).is_some_and(|k| self.handed_unclaimed(cx, &flow, k))
    }

    /// Whether the handed table holds `key` of `flow`, a packet from the host with
    /// a pod source, and, for a SYN, no other connection took its sequence number.
    fn handed_unclaimed<S: ?Sized>(&self, cx: &Ctx<'_, S>, flow: &Flow, key: FlowKey) -> bool {
        let handed = &self.host.handed;
        handed.lookup(key, cx.now).is_some_and(|f| f.forward)
            && (flow.opening.is_none() || handed.lookup(claim_of(key), cx.now).is_none())
    }

    /// Admits a packet with a pod source from the host port as a connection the host
    /// hands back, which is recorded, or refuses it.
    fn admit_from_host<S: ?Sized>(
        &mut self,
        cx: &Ctx<'_, S>,
        flow: &Flow,
    ) -> Result<(), DropReason> {
        let datagram = flow.datagram();
        if flow.fragment.is_some_and(|f| !f.first) {
            // A later fragment carries no ports: it follows its first.
            let follows = datagram
                .map(from_host)
                .and_then(|d| self.host.fragments.lookup(d, cx.now))
                .is_some_and(|f| f.forward);
            return follows.then_some(()).ok_or(DropReason::Spoofed);
        }
        let found = self
            .host
            .returning
            .lookup_latest(flow.key, cx.now)
            .filter(|f| f.forward);
        let Some((orig, mut flags, new)) = self.handed_back_as(cx, flow, found.as_ref())? else {
            return Ok(());
        };
        // A packet the first way after a reply: acknowledged (TCP), a stream (UDP).
        flags.assured |= flags.replied;
        flags.closing |= flow.closing;
        let written = conntrack::seconds(cx.now);
        match self
            .host
            .returning
            .keep(orig, found.as_ref(), flags, written, cx.now)
        {
            Ok(()) => {
                if new {
                    self.host.count_returned();
                }
                if found.is_none() {
                    self.claim(cx, flow);
                }
                if let Some(d) = datagram {
                    let _ =
                        self.host
                            .fragments
                            .keep(from_host(d), None, Flags::default(), 0, cx.now);
                }
                self.sweep_soon(cx.now);
                Ok(())
            }
            // Its replies could not be sent back through the host: refuse it now
            // rather than break the connection later.
            Err(_) if found.is_none() => Err(DropReason::ConntrackFull),
            Err(_) => Ok(()),
        }
    }

    /// What a packet from the host with a pod source is to the tables, given the
    /// returning connection it goes the first way of, if any: the connection to
    /// record (its first direction, what is known of it, whether it is new), nothing
    /// to record, or a refusal.
    fn handed_back_as<S: ?Sized>(
        &self,
        cx: &Ctx<'_, S>,
        flow: &Flow,
        found: Option<&Found>,
    ) -> Result<Option<(FlowKey, Flags, bool)>, DropReason> {
        use weft_encap::ipv4::protocol::TCP;
        let tcp = flow.key.proto == TCP;
        Ok(Some(match found {
            // A SYN starts a new connection on these ports: whatever the last one
            // was, closed or the pod's own, this one is translated afresh.
            Some(f) if flow.opening.is_some() => (f.entry.orig, Flags::default(), true),
            // A late segment of the translated connection a pod's own took the
            // ports from: it passes, and the ports stay the pod's.
            Some(f) if f.entry.flags.bypass && tcp => return Ok(None),
            // A further packet of a connection handed back before (for UDP and
            // others, the host's translation takes the ports back).
            Some(f) => {
                let flags = Flags {
                    bypass: false,
                    ..f.entry.flags
                };
                (f.entry.orig, flags, f.entry.flags.bypass)
            }
            None => {
                let handed = handed_key(flow).is_some_and(|k| self.handed_unclaimed(cx, flow, k));
                if !handed {
                    return Err(DropReason::Spoofed);
                }
                (flow.key, Flags::default(), true)
            }
        }))
    }

    /// Whether a packet bound for `hop` (from a pod port, the tunnel, or the switch's
    /// own ICMP) answers a connection the host handed back, quotes one (an ICMP
    /// error), or is a later fragment of a reply whose first fragment did: then it
    /// goes to the host.
    fn returns_to_host<S: ?Sized>(
        &mut self,
        cx: &Ctx<'_, S>,
        flow: &Flow,
        hop: NextHop,
    ) -> NextHop {
        use weft_encap::ipv4::protocol::TCP;
        let host = &self.host;
        if let Some(inner) = flow.error_about {
            // An error about a packet the host handed back goes the way that packet
            // came, where the host translates the packet it quotes.
            return match host.returning.lookup_latest(inner, cx.now) {
                Some(f) if f.forward && !f.entry.flags.bypass => NextHop::Host,
                _ => hop,
            };
        }
        let datagram = flow.datagram();
        if flow.fragment.is_some_and(|f| !f.first) {
            let follows = datagram
                .and_then(|d| host.fragments.lookup(d, cx.now))
                .is_some_and(|f| f.forward);
            return if follows { NextHop::Host } else { hop };
        }
        let Some(found) = host.returning.lookup_latest(flow.key, cx.now) else {
            return hop;
        };
        let written = conntrack::seconds(cx.now);
        if found.forward || found.entry.flags.bypass {
            // The pod uses these ports itself now, not through the host (its kernel
            // may pick them again once the translated connection closed): from now
            // on, and in every worker, as the latest word on this 5-tuple, its
            // packets go their own way. The entry lives as an established one, and
            // early drop spares it.
            let bypass = Flags {
                bypass: true,
                replied: true,
                assured: true,
                closing: flow.closing,
            };
            if host
                .returning
                .keep(found.entry.orig, Some(&found), bypass, written, cx.now)
                .is_ok()
            {
                self.sweep_soon(cx.now);
            }
            return hop;
        }
        let e = found.entry.flags;
        let flags = Flags {
            replied: true,
            closing: e.closing || flow.closing,
            // A second answer makes a UDP exchange a stream; TCP is established by
            // the acknowledgment the host hands back.
            assured: e.assured || (e.replied && flow.key.proto != TCP),
            bypass: false,
        };
        // A full table only means this worker keeps no copy: the entry stays in the
        // worker that made it.
        let kept = host
            .returning
            .keep(found.entry.orig, Some(&found), flags, written, cx.now)
            .is_ok();
        if let Some(d) = datagram {
            // The first fragment: the later ones follow it, whichever worker they
            // reach. A full table leaves them to time out at the client.
            let _ = host.fragments.keep(d, None, Flags::default(), 0, cx.now);
        }
        if kept || datagram.is_some() {
            self.sweep_soon(cx.now);
        }
        NextHop::Host
    }

    /// Marks the sequence number of a SYN the host handed back, admitted by its
    /// [`handed_key`], as taken by its connection. A full table leaves it unmarked
    /// (it would admit another 5-tuple with that number, as before claims).
    fn claim<S: ?Sized>(&mut self, cx: &Ctx<'_, S>, flow: &Flow) {
        if flow.opening.is_none() {
            return;
        }
        if let Some(key) = handed_key(flow) {
            let _ = self
                .host
                .handed
                .keep(claim_of(key), None, Flags::default(), 0, cx.now);
        }
    }

    /// Records a pod's flow (one the host may hand back) that goes to the host, by
    /// its [`handed_key`]: a TCP connection's first packet, or a UDP or SCTP datagram
    /// with ports. A full table lets the flow go unrecorded.
    fn hand_to_host<S: ?Sized>(&mut self, cx: &Ctx<'_, S>, flow: &Flow) {
        let Some(key) = handed_key(flow) else {
            return;
        };
        let found = self.host.handed.lookup(key, cx.now);
        if self
            .host
            .handed
            .keep(key, found.as_ref(), Flags::default(), 0, cx.now)
            .is_ok()
        {
            self.sweep_soon(cx.now);
        }
    }
}
