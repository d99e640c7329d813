//! NetworkPolicy, enforced: the egress rules of a local source pod and the ingress
//! rules of a local destination pod, both from the snapshot, with connection tracking
//! so that replies to an allowed connection pass.
//!
//! A packet is looked at only when one of its local ends is isolated by some policy.
//! Then:
//! - a packet of a known connection passes, while the policy generation it was
//!   allowed under is current;
//! - after a policy change, the connection's first direction is judged again, and a
//!   connection the new policy denies is cut at its next packet;
//! - a packet of no known connection is a new one: it passes if every check that
//!   applies allows it, and the connection is recorded.
//!
//! An ICMP query (a ping) and its answer are one connection, keyed by both addresses,
//! the identifier and the query's type: the address pinged may answer, but it may not
//! send a ping of its own to an isolated pod on the same identifier, and no other
//! address may answer.
//!
//! Traffic from this node to its pods (from the host port with one of the node's own
//! addresses, the gateway or the underlay address) is always allowed, as Kubernetes
//! requires for probes; it is tracked all the same, so that the pod's replies pass
//! its egress isolation. Anything else the host routes to a pod through the host port
//! is judged by its source address like any peer. The switch's own ICMP errors
//! always pass. An ICMP error from elsewhere (unreachable, source quench, time
//! exceeded, parameter problem) passes when it goes to the sender of the packet it
//! quotes and that packet's connection is tracked under the policy in force.
//!
//! IPv6 is enforced the same way, with a connection table of its own per worker
//! ([`Enforced`]); the node's own IPv6 address is its gateway address. Linux
//! drops a forwarded IPv4 packet whose source is one of its own addresses (a
//! martian), but forwards such an IPv6 packet: weftd installs policy-routing
//! rules that refuse to forward one from the gateway address
//! (`control::netlink::guard_gateway6`), and a dual-stack node that cannot
//! install them does not start, so the host port's IPv6 from that address is the
//! node's.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::conntrack::{Addr, Conntrack, Flags, FlowKey, Found, Refused};
use super::flow::{Flow, LazyFlow};
use super::flowlog::{Direction as Denied, RecordKey, Recorder, Verdict};
use super::{Core, Ctx, Ingress, Time};
use crate::netpol::compile::{Family, Origin, PodRules};
use crate::tables::counters::DropReason;
use crate::tables::fib::NextHop;
use crate::tables::{PortKind, Tables};

/// An address family as policy enforces it: its connection tables' address, and
/// the address the rules look up.
pub(super) trait Enforced: Addr {
    /// The address as the rules take it.
    type Ip: Family + From<Self>;
    /// `key` as the flow log records it.
    fn record_key(key: FlowKey<Self>) -> RecordKey;
}

impl Enforced for u32 {
    type Ip = Ipv4Addr;
    fn record_key(key: FlowKey) -> RecordKey {
        RecordKey::V4(key)
    }
}

impl Enforced for u128 {
    type Ip = Ipv6Addr;
    fn record_key(key: FlowKey<u128>) -> RecordKey {
        RecordKey::V6(key)
    }
}

/// The rules that allowed a connection: the source's egress rule and the
/// destination's ingress rule, where each is isolated; and whether it came from
/// this node (which every pod's ingress admits).
#[derive(Debug, Clone, Copy, Default)]
struct Allowed<'r> {
    egress: Option<&'r Origin>,
    ingress: Option<&'r Origin>,
    from_node: bool,
}

/// A refusal: the check that refused, and whether it is the packet's source's
/// (else its destination's). A reply that is judged is judged as the first
/// packet its destination sent: then an egress refusal is the destination's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    direction: Denied,
    at_src: bool,
}

/// Whether a connection `key` may be opened, between a source whose rules are
/// `src` (or this node, `from_node`) and a destination whose rules are `dst`, for
/// destination port `port`: the rules that allow it, or the check that refuses it.
fn judge<'r, A: Enforced>(
    src: Option<&'r PodRules>,
    dst: Option<&'r PodRules>,
    from_node: bool,
    key: FlowKey<A>,
    port: Option<u16>,
) -> Result<Allowed<'r>, Denied> {
    let (s, d) = (A::Ip::from(key.src), A::Ip::from(key.dst));
    let mut allowed = Allowed {
        from_node,
        ..Allowed::default()
    };
    if let Some(egress) = src.and_then(|r| r.egress.as_ref()) {
        allowed.egress = Some(egress.allows(d, d, key.proto, port).ok_or(Denied::Egress)?);
    }
    if let Some(ingress) = dst.and_then(|r| r.ingress.as_ref()) {
        if !from_node {
            allowed.ingress = Some(
                ingress
                    .allows(s, d, key.proto, port)
                    .ok_or(Denied::Ingress)?,
            );
        }
    }
    Ok(allowed)
}

/// Where a verdict goes: the flow log, with what it needs to name the policies.
struct Log<'a> {
    recorder: &'a Recorder,
    tables: &'a Tables,
    now: Time,
}

impl Log<'_> {
    /// Records a new connection `key` allowed, if the flow log is listened to.
    fn allowed<A: Enforced>(&self, key: FlowKey<A>, a: Allowed<'_>) {
        self.recorder
            .record(self.now, A::record_key(key), || Verdict::Allowed {
                egress: a.egress.cloned(),
                ingress: a.ingress.cloned(),
                from_node: a.from_node,
            });
    }

    /// Records a packet of `key` refused, with the port of the pod whose policy
    /// refused it (its policies are named from the tables when the log is read).
    fn denied<A: Enforced>(&self, ends: &Ends<'_>, key: FlowKey<A>, r: Refusal) {
        self.recorder
            .record(self.now, A::record_key(key), || Verdict::Denied {
                direction: r.direction,
                isolated: ends
                    .blame(r)
                    .map(|(port, _)| (port as u32, self.tables.policy_generation)),
            });
    }
}

/// The two local ends of a packet, as policy sees them.
#[derive(Debug, Clone, Copy)]
struct Ends<'t> {
    /// The source pod's port and rules, if it is a local pod some policy selects.
    src: Option<(usize, &'t PodRules)>,
    /// The destination pod's port and rules, likewise.
    dst: Option<(usize, &'t PodRules)>,
    /// The packet comes from this node itself.
    from_node: bool,
    /// The packet goes to this node itself.
    to_node: bool,
}

impl<'t> Ends<'t> {
    /// The ends of a packet from `from` to `hop`, whose source (`own.0`) and
    /// destination (`own.1`) are each one of the node's own addresses or not.
    fn of(t: &'t Tables, from: Ingress, hop: NextHop, own: (bool, bool)) -> Ends<'t> {
        let to = match hop {
            NextHop::Local(p) => Some(p),
            _ => None,
        };
        // What the host port takes to elsewhere (its default route) is not for
        // the node: a reply to an outside client is judged as the client's.
        Ends::to(t, from, to, hop == NextHop::Host && own.1, own.0)
    }

    /// The ends of a packet from `from` out of local port `to` (or none), to this
    /// node itself if `to_node`, whose source is one of the node's own addresses
    /// if `own`.
    fn to(t: &'t Tables, from: Ingress, to: Option<usize>, to_node: bool, own: bool) -> Ends<'t> {
        let pod = |i: usize| {
            let p = &t.ports[i];
            (p.kind == PortKind::Pod)
                .then_some(p.policy.as_deref())
                .flatten()
                .map(|r| (i, r))
        };
        // The host port carries whatever the host routes to pods; only the node's own
        // addresses are the node.
        let from_node = match from {
            Ingress::Port(i) => t.ports[i].kind == PortKind::Host && own,
            Ingress::Icmp(_) => true,
            Ingress::Peer(_) => false,
        };
        Ends {
            src: match from {
                Ingress::Port(i) => pod(i),
                _ => None,
            },
            dst: to.and_then(pod),
            from_node,
            to_node,
        }
    }

    /// The port a refusal is counted on, and why.
    fn blame(&self, r: Refusal) -> Option<(usize, DropReason)> {
        let end = if r.at_src { self.src } else { self.dst };
        let reason = match r.direction {
            Denied::Egress => DropReason::PolicyEgress,
            Denied::Ingress => DropReason::PolicyIngress,
        };
        end.map(|(i, _)| (i, reason))
    }

    /// The verdict on the connection's first direction, `orig`, which this packet
    /// goes (`forward`) or answers.
    fn judge<A: Enforced>(
        &self,
        orig: FlowKey<A>,
        port: Option<u16>,
        forward: bool,
    ) -> Result<Allowed<'t>, Refusal> {
        let (src, dst) = (self.src.map(|(_, r)| r), self.dst.map(|(_, r)| r));
        let verdict = match forward {
            true => judge(src, dst, self.from_node, orig, port),
            // The reply's destination sent the first packet: its rules are the
            // source's, and it is this node if the reply goes to the node.
            false => judge(dst, src, self.to_node, orig, port),
        };
        verdict.map_err(|direction| Refusal {
            direction,
            // The first packet's source is this packet's if it goes that way.
            at_src: (direction == Denied::Egress) == forward,
        })
    }
}

/// A connection as [`connection`] finds it: its first direction, whether the
/// packet goes that way, what is known of it, and for a new one the rules that
/// allowed it.
type Judged<'t, A> = (FlowKey<A>, bool, Flags, Option<Allowed<'t>>);

/// The connection a packet belongs to, once the policy in force allows it: a known
/// connection of the current generation as it is, one of an older generation judged
/// again (and forgotten if refused, which is logged), a new one judged now (logged
/// if refused; the caller logs it allowed once the table keeps it).
fn connection<'t, A: Enforced>(
    ends: &Ends<'t>,
    ct: &Conntrack<A>,
    facts: &Flow<A>,
    found: Option<Found<A>>,
    log: &Log<'_>,
) -> Result<Judged<'t, A>, (usize, DropReason)> {
    let refuse = |r| ends.blame(r).unwrap_or((0, DropReason::PolicyIngress));
    match found {
        Some(Found {
            entry,
            forward,
            own_slot,
        }) if entry.generation != log.tables.policy_generation => {
            let port = facts.port.map(|_| entry.orig.dport);
            if let Err(refusal) = ends.judge(entry.orig, port, forward) {
                if let Some(at) = own_slot {
                    ct.forget(at);
                }
                log.denied(ends, facts.key, refusal);
                return Err(refuse(refusal));
            }
            Ok((entry.orig, forward, entry.flags, None))
        }
        Some(Found { entry, forward, .. }) => Ok((entry.orig, forward, entry.flags, None)),
        None => match ends.judge(facts.key, facts.port, true) {
            Ok(allowed) => Ok((facts.key, true, Flags::default(), Some(allowed))),
            Err(refusal) => {
                log.denied(ends, facts.key, refusal);
                Err(refuse(refusal))
            }
        },
    }
}

impl Core {
    /// The policy step for a routed packet going to `hop`: `Ok` to pass it, or the
    /// port to count its drop on and why.
    pub(super) fn policy<S: ?Sized>(
        &mut self,
        cx: &Ctx<'_, S>,
        from: Ingress,
        hop: NextHop,
        flow: &mut LazyFlow<'_, '_>,
    ) -> Result<(), (usize, DropReason)> {
        let t = cx.tables;
        let own = |ip| ip == t.node.gateway || ip == t.node.underlay;
        let ends = Ends::of(t, from, hop, (own(flow.src()), own(flow.dst())));
        if exempt(&ends, from) {
            return Ok(());
        }
        let ct = self.conntrack.as_ref();
        let kept = enforce(ct, &ends, flow.get(), from, &self.log(cx))?;
        if kept {
            self.sweep_soon(cx.now);
        }
        Ok(())
    }

    /// The policy step for a routed IPv6 packet from `from` out of local port
    /// `to` (0: the host port), from `src` to `dst`, read as `facts` once policy
    /// needs it: as [`Core::policy`].
    pub(super) fn policy6<S: ?Sized>(
        &mut self,
        cx: &Ctx<'_, S>,
        from: Ingress,
        to: Option<usize>,
        (src, dst): (Ipv6Addr, Ipv6Addr),
        facts: impl FnOnce() -> Flow<u128>,
    ) -> Result<(), (usize, DropReason)> {
        let t = cx.tables;
        let Some(v6) = &t.node.v6 else {
            return Ok(());
        };
        let to_host = to.is_some_and(|k| t.ports[k].kind == PortKind::Host);
        let ends = Ends::to(t, from, to, to_host && dst == v6.gateway, src == v6.gateway);
        if exempt(&ends, from) {
            return Ok(());
        }
        let facts = facts();
        let ct = self.conntrack6.as_ref();
        let kept = enforce(ct, &ends, &facts, from, &self.log(cx))?;
        if kept {
            self.sweep_soon(cx.now);
        }
        Ok(())
    }

    /// Where this worker's verdicts are logged.
    fn log<'a, S: ?Sized>(&'a self, cx: &'a Ctx<'_, S>) -> Log<'a> {
        Log {
            recorder: &self.flows,
            tables: cx.tables,
            now: cx.now,
        }
    }
}

/// Whether policy leaves a packet with `ends` from `from` alone: neither end is
/// a local pod some policy selects, or it is one of the switch's own ICMP errors,
/// which answer packets it refused before policy saw them (no route, TTL, MTU):
/// they are the node's, and always pass.
fn exempt(ends: &Ends<'_>, from: Ingress) -> bool {
    (ends.src.is_none() && ends.dst.is_none()) || matches!(from, Ingress::Icmp(_))
}

/// Judges a packet with `ends` and `facts` against the policy in force, with
/// connection table `ct` (none: every packet is a new connection, and replies
/// need rules of their own). `Ok(true)` if the table was written.
fn enforce<A: Enforced>(
    ct: Option<&Conntrack<A>>,
    ends: &Ends<'_>,
    facts: &Flow<A>,
    from: Ingress,
    log: &Log<'_>,
) -> Result<bool, (usize, DropReason)> {
    let refuse = |r| ends.blame(r).unwrap_or((0, DropReason::PolicyIngress));
    let Some(ct) = ct else {
        // Only refusals are logged: every packet is new.
        let verdict = ends.judge(facts.key, facts.port, true);
        if let Err(refusal) = verdict {
            log.denied(ends, facts.key, refusal);
        }
        return verdict.map(|_| false).map_err(refuse);
    };
    let (now, generation) = (log.now, log.tables.policy_generation);
    if let Some(inner) = facts.error_about {
        return match ct.lookup(inner, now) {
            Some(f) if f.entry.generation == generation => Ok(false),
            _ => Err(refuse(match ends.dst.is_some() {
                true => Refusal {
                    direction: Denied::Ingress,
                    at_src: false,
                },
                false => Refusal {
                    direction: Denied::Egress,
                    at_src: true,
                },
            })),
        };
    }
    let found = ct.lookup(facts.key, now);
    let (orig, forward, mut flags, new) = connection(ends, ct, facts, found, log)?;
    flags.replied |= !forward;
    flags.closing |= facts.closing;
    // Assured, as Linux's tracker says: answered, and then on the first way again
    // (a TCP handshake's ACK, a second request), not merely reset.
    flags.assured |= forward && flags.replied && !facts.closing;
    match ct.keep(orig, found.as_ref(), flags, generation, now) {
        Ok(()) => {
            // A new connection is logged once it is kept: one the table has no
            // room for is dropped, and counted as such, not allowed.
            if let Some(allowed) = new {
                log.allowed(orig, allowed);
            }
            Ok(true)
        }
        // A known connection keeps its entry elsewhere; a new one is dropped.
        Err(_) if found.is_some() => Ok(false),
        Err(refused) => Err(no_room(ends, from, refused)),
    }
}

/// The port a new connection that found no room in the table is counted on, and
/// why: a source over its share on the port it came from (a pod, or the host), a
/// full table on the isolated pod.
fn no_room(ends: &Ends<'_>, from: Ingress, refused: Refused) -> (usize, DropReason) {
    let isolated = ends.dst.or(ends.src).map_or(0, |(i, _)| i);
    match (refused, from) {
        (Refused::OverShare, Ingress::Port(i)) => (i, DropReason::ConntrackShare),
        (Refused::OverShare, _) => (isolated, DropReason::ConntrackShare),
        (Refused::Full, _) => (isolated, DropReason::ConntrackFull),
    }
}
