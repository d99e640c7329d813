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
//! - **handed**: every flow of a pod (of this node, or a peer's through the tunnel)
//!   that the switch hands to the host, keyed by its source side only (address,
//!   protocol, port), since a DNAT rewrites the destination and keeps the source.
//! - **returning**: every connection the host hands back with a pod's source address
//!   (the DNATed continuation of a handed flow), by its 5-tuple. Its replies, from a
//!   pod port or from the tunnel, go to the host instead of to their destination, so
//!   that the host can undo its translation and send them on through the host port.
//!
//! And the host port admits only what the host legitimately forwards:
//! - sources outside the cluster CIDR: the world, the node's own addresses, replies
//!   the host translated back (a ClusterIP, a NodePort's address);
//! - the node's gateway address;
//! - the pod subnet of a peer whose traffic reaches this node through its host
//!   (direct routing, whichever end routes directly; never under required
//!   encryption, see [`PeerEntry::via_host`](crate::tables::PeerEntry::via_host));
//! - a pod source whose flow was handed to the host (the host returning it).
//!
//! Any other pod address from the host port is spoofed: a machine on the node's
//! segment routing through the host with a forged source, say. It is dropped and
//! counted as `spoofed` on the host port.

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::conntrack::{Conntrack, Flags, FlowKey, Found, Table};
use super::flow::Flow;
use super::{Core, Ctx, Ingress};
use crate::tables::counters::DropReason;
use crate::tables::fib::NextHop;
use crate::tables::{PortKind, Tables};

/// Every worker's host-flow tables, for the workers and for the control plane's
/// statistics.
#[derive(Debug, Clone)]
pub struct HostTables {
    handed: Arc<[Table]>,
    returning: Arc<[Table]>,
}

/// How many flows cross the host, summed over the workers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostFlowStats {
    /// Flows of pods handed to the host now.
    pub handed: u64,
    /// Connections the host handed back, whose replies return through it, now.
    pub returning: u64,
    /// Connections returned through the host since the start.
    pub returned_total: u64,
}

impl HostTables {
    /// The tables of `workers` workers, each holding at most `max` flows of each kind.
    pub fn new(workers: usize, max: usize) -> HostTables {
        HostTables {
            handed: Conntrack::tables(workers, max),
            returning: Conntrack::tables(workers, max),
        }
    }

    /// Worker `me`'s view of the tables.
    pub fn worker(&self, me: usize) -> HostFlows {
        HostFlows {
            handed: Conntrack::new(self.handed.clone(), me),
            returning: Conntrack::new(self.returning.clone(), me),
        }
    }

    /// The flows crossing the host now. A connection that changed worker is counted
    /// once for each worker that keeps it.
    pub fn stats(&self) -> HostFlowStats {
        HostFlowStats {
            handed: self.handed.iter().map(Table::live).sum(),
            returning: self.returning.iter().map(Table::live).sum(),
            returned_total: self.returning.iter().map(Table::created).sum(),
        }
    }
}

/// One worker's view of the host-flow tables.
#[derive(Debug, Clone)]
pub struct HostFlows {
    handed: Conntrack,
    returning: Conntrack,
}

impl HostFlows {
    /// Sweeps this worker's expired flows; returns how many it still keeps.
    pub(super) fn sweep(&self, now: super::Time) -> u64 {
        self.handed.sweep(now);
        self.returning.sweep(now);
        self.handed.live() + self.returning.live()
    }
}

/// The source side of a flow: what a DNAT keeps.
fn source_side(key: FlowKey) -> FlowKey {
    FlowKey {
        dst: 0,
        dport: 0,
        ..key
    }
}

/// Where a source address from the host port stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostSource {
    /// Outside the cluster, or this node's gateway: admitted as it is.
    Admitted,
    /// A pod of a peer that reaches this node through its host, whose replies go
    /// back through the host anyway (this node routes to it directly too).
    ViaHost,
    /// A pod of a peer that reaches this node through its host, while this node
    /// tunnels back: its replies must be returned through the host explicitly.
    ViaHostTunnelled,
    /// Any other pod address: admitted only as a returning flow.
    Pod,
}

fn host_source(t: &Tables, src: Ipv4Addr) -> HostSource {
    if !t.node.cluster.contains(&src) || src == t.node.gateway {
        return HostSource::Admitted;
    }
    match t.fib.lookup(src) {
        // In the cluster CIDR only a direct peer's subnet (and the gateway) routes
        // to the host.
        Some(NextHop::Host) => HostSource::ViaHost,
        Some(NextHop::Peer(j)) if t.peers[j].via_host => HostSource::ViaHostTunnelled,
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
        flow: &Flow,
    ) -> Result<NextHop, DropReason> {
        let t = cx.tables;
        match from {
            Ingress::Icmp(_) => Ok(hop),
            Ingress::Port(i) if t.ports[i].kind == PortKind::Host => {
                self.admit_from_host(cx, flow).map(|()| hop)
            }
            Ingress::Port(_) | Ingress::Peer(_) => match hop {
                NextHop::Local(_) | NextHop::Peer(_) => Ok(self.returns_to_host(cx, flow, hop)),
                NextHop::Host => self.hand_to_host(cx, flow).map(|()| hop),
                NextHop::Unreachable => Ok(hop),
            },
        }
    }

    /// Admits a packet from the host port, recording the connection of a pod source
    /// the host hands back.
    fn admit_from_host<S: ?Sized>(
        &mut self,
        cx: &Ctx<'_, S>,
        flow: &Flow,
    ) -> Result<(), DropReason> {
        let t = cx.tables;
        let source = host_source(t, flow.key.src.into());
        if matches!(source, HostSource::Admitted | HostSource::ViaHost) {
            return Ok(());
        }
        if source == HostSource::Pod {
            let side = source_side(flow.key);
            match self.host.handed.lookup(side, cx.now) {
                Some(f) if f.forward => {}
                _ => return Err(DropReason::Spoofed),
            }
        }
        let found = self.host.returning.lookup(flow.key, cx.now);
        let (orig, mut flags) = match found {
            Some(Found { entry, .. }) => (entry.orig, entry.flags),
            None => (flow.key, Flags::default()),
        };
        flags.closing |= flow.closing;
        match self
            .host
            .returning
            .keep(orig, found.as_ref(), flags, 0, cx.now)
        {
            Ok(()) => {
                self.sweep_soon(cx.now);
                Ok(())
            }
            // Its replies could not be sent back through the host: refuse it now
            // rather than break the connection later.
            Err(_) if found.is_none() => Err(DropReason::ConntrackFull),
            Err(_) => Ok(()),
        }
    }

    /// Whether a packet from a pod port or the tunnel, bound for `hop`, answers a
    /// connection the host handed back (or, for an ICMP error, quotes one): then it
    /// goes to the host.
    fn returns_to_host<S: ?Sized>(
        &mut self,
        cx: &Ctx<'_, S>,
        flow: &Flow,
        hop: NextHop,
    ) -> NextHop {
        let returning = &self.host.returning;
        if let Some(inner) = flow.error_about {
            // An error about a packet the host handed back goes the way that packet
            // came, where the host translates the packet it quotes.
            return match returning.lookup(inner, cx.now) {
                Some(f) if f.forward => NextHop::Host,
                _ => hop,
            };
        }
        match returning.lookup(flow.key, cx.now) {
            Some(found) if !found.forward => {
                let flags = Flags {
                    replied: true,
                    closing: found.entry.flags.closing || flow.closing,
                };
                // A full table only means this worker keeps no copy: the entry
                // stays in the worker that made it.
                if returning
                    .keep(found.entry.orig, Some(&found), flags, 0, cx.now)
                    .is_ok()
                {
                    self.sweep_soon(cx.now);
                }
                NextHop::Host
            }
            _ => hop,
        }
    }

    /// Records the source side of a pod's flow that goes to the host, so that the
    /// host may hand it back.
    fn hand_to_host<S: ?Sized>(&mut self, cx: &Ctx<'_, S>, flow: &Flow) -> Result<(), DropReason> {
        let t = cx.tables;
        let (src, dst) = (Ipv4Addr::from(flow.key.src), Ipv4Addr::from(flow.key.dst));
        if !t.node.cluster.contains(&src) || src == t.node.gateway || !may_come_back(t, dst) {
            return Ok(());
        }
        let side = source_side(flow.key);
        let found = self.host.handed.lookup(side, cx.now);
        match self
            .host
            .handed
            .keep(side, found.as_ref(), Flags::default(), 0, cx.now)
        {
            Ok(()) => {
                self.sweep_soon(cx.now);
                Ok(())
            }
            Err(_) if found.is_some() => Ok(()),
            // Fail closed: a flow the host could not hand back is not sent.
            Err(_) => Err(DropReason::ConntrackFull),
        }
    }
}
