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

use super::conntrack::{Flags, FlowKey, Found, Refused};
use super::flow::{Flow, LazyFlow};
use super::flowlog::{Direction as Denied, Recorder, Verdict};
use super::{Core, Ctx, Ingress, Time};
use crate::netpol::compile::{Origin, PodRules};
use crate::tables::counters::DropReason;
use crate::tables::fib::NextHop;
use crate::tables::{PortKind, Tables};

/// The rules that allowed a connection: the source's egress rule and the
/// destination's ingress rule, where each is isolated.
#[derive(Debug, Clone, Copy, Default)]
struct Allowed<'r> {
    egress: Option<&'r Origin>,
    ingress: Option<&'r Origin>,
}

/// Whether a connection `key` may be opened, between a source whose rules are
/// `src` (or this node, `from_node`) and a destination whose rules are `dst`, for
/// destination port `port`: the rules that allow it, or the check that refuses it.
fn judge<'r>(
    src: Option<&'r PodRules>,
    dst: Option<&'r PodRules>,
    from_node: bool,
    key: FlowKey,
    port: Option<u16>,
) -> Result<Allowed<'r>, Denied> {
    let (s, d) = (key.src.into(), key.dst.into());
    let mut allowed = Allowed::default();
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
    /// Records `verdict` on `key`, if the flow log is listened to.
    fn note(&self, ends: &Ends<'_>, key: FlowKey, verdict: Result<Allowed<'_>, Denied>) {
        self.recorder.record(self.now, key, || match verdict {
            Ok(a) => Verdict::Allowed {
                egress: a.egress.cloned(),
                ingress: a.ingress.cloned(),
            },
            Err(direction) => Verdict::Denied {
                direction,
                isolated_by: (ends.blame(direction))
                    .and_then(|(i, _)| self.tables.ports.get(i))
                    .and_then(|p| p.policy.clone()),
            },
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
    fn of(t: &'t Tables, from: Ingress, hop: NextHop, src: std::net::Ipv4Addr) -> Ends<'t> {
        let pod = |i: usize| {
            let p = &t.ports[i];
            (p.kind == PortKind::Pod)
                .then_some(p.policy.as_deref())
                .flatten()
                .map(|r| (i, r))
        };
        // The host port carries whatever the host routes to pods; only the node's own
        // addresses are the node.
        let own = src == t.node.gateway || src == t.node.underlay;
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
            dst: match hop {
                NextHop::Local(p) => pod(p),
                _ => None,
            },
            from_node,
            to_node: hop == NextHop::Host,
        }
    }

    /// The port a refusal is counted on.
    fn blame(&self, denied: Denied) -> Option<(usize, DropReason)> {
        match denied {
            Denied::Egress => self.src.map(|(i, _)| (i, DropReason::PolicyEgress)),
            Denied::Ingress => self.dst.map(|(i, _)| (i, DropReason::PolicyIngress)),
        }
    }

    /// The verdict on the connection's first direction, `orig`, which this packet
    /// goes (`forward`) or answers.
    fn judge(
        &self,
        orig: FlowKey,
        port: Option<u16>,
        forward: bool,
    ) -> Result<Allowed<'t>, Denied> {
        let (src, dst) = (self.src.map(|(_, r)| r), self.dst.map(|(_, r)| r));
        match forward {
            true => judge(src, dst, self.from_node, orig, port),
            // The reply's destination sent the first packet: its rules are the
            // source's, and it is this node if the reply goes to the node.
            false => judge(dst, src, self.to_node, orig, port),
        }
    }
}

/// The connection a packet belongs to, as (its first direction, whether the packet
/// goes that way, what is known of it), once the policy in force allows it: a known
/// connection of the current generation as it is, one of an older generation judged
/// again (and forgotten if refused), a new one judged now.
fn connection(
    ends: &Ends<'_>,
    ct: &super::conntrack::Conntrack,
    facts: &Flow,
    found: Option<Found>,
    log: &Log<'_>,
) -> Result<(FlowKey, bool, Flags), (usize, DropReason)> {
    let refuse = |denied| ends.blame(denied).unwrap_or((0, DropReason::PolicyIngress));
    match found {
        Some(Found {
            entry,
            forward,
            own_slot,
        }) if entry.generation != log.tables.policy_generation => {
            let port = facts.port.map(|_| entry.orig.dport);
            if let Err(denied) = ends.judge(entry.orig, port, forward) {
                if let Some(at) = own_slot {
                    ct.forget(at);
                }
                log.note(ends, facts.key, Err(denied));
                return Err(refuse(denied));
            }
            Ok((entry.orig, forward, entry.flags))
        }
        Some(Found { entry, forward, .. }) => Ok((entry.orig, forward, entry.flags)),
        None => {
            let verdict = ends.judge(facts.key, facts.port, true);
            log.note(ends, facts.key, verdict);
            verdict.map_err(refuse)?;
            Ok((facts.key, true, Flags::default()))
        }
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
        let ends = Ends::of(t, from, hop, flow.src());
        // The switch's own ICMP errors answer packets it refused before policy saw
        // them (no route, TTL, MTU): they are the node's, and always pass.
        if (ends.src.is_none() && ends.dst.is_none()) || matches!(from, Ingress::Icmp(_)) {
            return Ok(());
        }
        let facts = flow.get();
        let refuse = |denied| ends.blame(denied).unwrap_or((0, DropReason::PolicyIngress));
        let log = Log {
            recorder: &self.flows,
            tables: t,
            now: cx.now,
        };
        let Some(ct) = &self.conntrack else {
            // No table: judge every packet as a new connection (replies then need
            // rules of their own); only refusals are logged, every packet is new.
            let verdict = judge(
                ends.src.map(|(_, r)| r),
                ends.dst.map(|(_, r)| r),
                ends.from_node,
                facts.key,
                facts.port,
            );
            if let Err(denied) = verdict {
                log.note(&ends, facts.key, Err(denied));
            }
            return verdict.map(|_| ()).map_err(refuse);
        };
        if let Some(inner) = facts.error_about {
            let current = |f: &Found| f.entry.generation == t.policy_generation;
            return match ct.lookup(inner, cx.now) {
                Some(f) if current(&f) => Ok(()),
                _ => Err(refuse(if ends.dst.is_some() {
                    Denied::Ingress
                } else {
                    Denied::Egress
                })),
            };
        }
        let found = ct.lookup(facts.key, cx.now);
        let generation = t.policy_generation;
        let (orig, forward, mut flags) = connection(&ends, ct, facts, found, &log)?;
        flags.replied |= !forward;
        flags.closing |= facts.closing;
        // Assured, as Linux's tracker says: answered, and then on the first way again
        // (a TCP handshake's ACK, a second request), not merely reset.
        flags.assured |= forward && flags.replied && !facts.closing;
        match ct.keep(orig, found.as_ref(), flags, generation, cx.now) {
            Ok(()) => {
                self.sweep_soon(cx.now);
                Ok(())
            }
            // A known connection keeps its entry elsewhere; a new one is dropped.
            Err(_) if found.is_some() => Ok(()),
            Err(refused) => Err(no_room(&ends, from, refused)),
        }
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
