//! `weft flows`: NetworkPolicy's verdicts as the workers recorded them
//! ([`crate::core::flowlog`]), named: the pods at each end, the protocol and ports,
//! and the rule that allowed or the policies that isolate.
//!
//! Each request drains the workers' rings into a bounded history here, numbered in
//! order, and extends the workers' recording by the flow log's lease; a follower
//! asks again with the last number it saw.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use weft_proto::{FlowEnd, FlowInfo, FlowsRequest, PodRef};

use crate::control::daemon::Daemon;
use crate::control::error::DaemonError;
use crate::core::flowlog::{Direction, FlowRecord, RecordKey, Verdict};
use crate::io::clock;
use crate::netpol::compile::Origin;
use crate::tables::Tables;

/// How many flows the daemon keeps for `weft flows`.
pub const HISTORY: usize = 4096;

/// The flows kept, numbered.
#[derive(Debug, Default)]
pub struct FlowHistory {
    flows: VecDeque<FlowInfo>,
    last: u64,
}

impl FlowHistory {
    /// Appends `flow`, numbering it, and drops the oldest past [`HISTORY`].
    fn push(&mut self, mut flow: FlowInfo) {
        self.last += 1;
        flow.seq = self.last;
        if self.flows.len() == HISTORY {
            self.flows.pop_front();
        }
        self.flows.push_back(flow);
    }

    /// The flows after `req.after` that match `req`, oldest first, and the number
    /// to ask after next: with a `limit`, the newest that many; without, all of
    /// them from the oldest, as many as fit in [`REPLY_BYTES`] (the next answer
    /// goes on from the last one given).
    fn select(&self, req: &FlowsRequest) -> (Vec<FlowInfo>, u64) {
        let is = |end: &FlowEnd| req.pod.is_none() || end.pod == req.pod;
        let wanted = |f: &&FlowInfo| {
            f.seq > req.after
                && req.verdict.as_ref().is_none_or(|v| *v == f.verdict)
                && (is(&f.src) || is(&f.dst))
        };
        let mut room = REPLY_BYTES;
        let mut fits = |f: &FlowInfo| match room.checked_sub(size_of(f)) {
            Some(left) => {
                room = left;
                true
            }
            None => {
                room = 0;
                false
            }
        };
        if req.limit > 0 {
            let mut out: Vec<FlowInfo> = (self.flows.iter().rev())
                .take_while(|f| f.seq > req.after)
                .filter(wanted)
                .take(req.limit)
                .take_while(|f| fits(f))
                .cloned()
                .collect();
            out.reverse();
            return (out, self.last);
        }
        let mut last = self.last;
        let mut out = Vec::new();
        for f in self.flows.iter().filter(wanted) {
            // One at least, however large, so that a follower moves on.
            if !fits(f) && !out.is_empty() {
                last = out.last().map_or(req.after, |f: &FlowInfo| f.seq);
                break;
            }
            out.push(f.clone());
        }
        (out, last)
    }
}

/// The most an answer of flows holds, in bytes of its strings (with room to
/// spare under the protocol's bound on a response).
pub const REPLY_BYTES: usize = 1 << 20;

/// About how many bytes a flow takes in an answer.
fn size_of(f: &FlowInfo) -> usize {
    let pod = |e: &FlowEnd| {
        e.pod
            .as_ref()
            .map_or(0, |p| p.namespace.len() + p.name.len())
    };
    160 + pod(&f.src) + pod(&f.dst) + f.reason.len() + f.proto.len()
}

/// A verdict filter as `weft flows --verdict` takes it.
fn check_verdict(v: &Option<String>) -> Result<(), DaemonError> {
    match v.as_deref() {
        None | Some("allowed" | "denied") => Ok(()),
        Some(other) => Err(DaemonError::Invalid(format!(
            "unknown verdict {other:?}: expected allowed or denied"
        ))),
    }
}

impl Daemon {
    /// Serves a request for flows: drains the workers' verdicts, names them, and
    /// gives those the request asks for.
    pub(crate) fn flows(&self, req: &FlowsRequest) -> Result<(Vec<FlowInfo>, u64), DaemonError> {
        check_verdict(&req.verdict)?;
        let now = clock::now();
        self.shared().flows.listen(now);
        let records = self.shared().flows.drain();
        let names = (!records.is_empty()).then(|| self.pod_names());
        let tables = self.tables();
        let mut history = self.flow_history.lock();
        if let Some(names) = names {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            for r in records {
                let ago = now.saturating_since(r.at);
                let unix_ms = wall.saturating_sub(ago).as_millis() as u64;
                history.push(describe(&r, unix_ms, &names, &tables));
            }
        }
        Ok(history.select(req))
    }

    /// The pods by address: this node's, as their CNI args named them, and the
    /// others the policy source lists.
    fn pod_names(&self) -> HashMap<IpAddr, PodRef> {
        let model = self.state.lock().policy.model.clone();
        let mut names: HashMap<IpAddr, PodRef> = (model.pods.iter())
            .flat_map(|p| {
                let name = PodRef {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                };
                p.addresses().map(move |ip| (ip, name.clone()))
            })
            .collect();
        for port in self.tables().ports.iter() {
            if let Some(pod) = &port.pod {
                names.insert(port.ip.into(), pod.clone());
                if let Some(ip6) = port.ip6 {
                    names.insert(ip6.into(), pod.clone());
                }
            }
        }
        names
    }
}

/// The most policies a denial names.
const NAMED: usize = 8;

/// A protocol's name.
fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        58 => "ipv6-icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// A rule as the flow log names it.
fn origin(direction: &str, o: &Origin) -> String {
    format!("{direction}: {} rule {}", o.policy, o.rule)
}

/// What decided a verdict on `key`, in words; the policies that isolate a pod
/// are named from `tables` (the snapshot when the log is read).
fn reason(verdict: &Verdict, key: &RecordKey, tables: &Tables) -> String {
    match verdict {
        Verdict::Allowed {
            egress,
            ingress,
            from_node,
        } => {
            let rules: Vec<String> = (egress.iter().map(|o| origin("egress", o)))
                .chain(ingress.iter().map(|o| origin("ingress", o)))
                .collect();
            match (rules.is_empty(), from_node) {
                (false, _) => rules.join(", "),
                (true, true) => "from this node: always allowed".into(),
                (true, false) => "no policy isolates either end this way".into(),
            }
        }
        Verdict::Denied {
            direction,
            isolated,
        } => {
            let (name, ingress) = match direction {
                Direction::Ingress => ("ingress", true),
                Direction::Egress => ("egress", false),
            };
            // The pod's port, if it still holds the pod at either end, and its
            // rules if they are those of the verdict.
            let port = isolated.and_then(|(port, generation)| {
                let p = tables.ports.get(port as usize)?;
                let (src, dst) = key.addrs();
                let own =
                    |ip: IpAddr| ip == IpAddr::from(p.ip) || Some(ip) == p.ip6.map(IpAddr::from);
                let ends = own(src) || own(dst);
                ends.then_some((p, generation == tables.policy_generation))
            });
            let policies: Vec<&str> = match port {
                Some((p, true)) => (p.policy.iter())
                    .flat_map(|r| r.selected_by.iter())
                    .filter(|(_, i, e)| if ingress { *i } else { *e })
                    .map(|(p, _, _)| &**p)
                    .collect(),
                Some((_, false)) => {
                    return format!("{name}: no rule allowed it (the policies have changed since)")
                }
                None => Vec::new(),
            };
            match policies.len() {
                0 => format!("{name}: isolated, and no rule allows it"),
                1..=NAMED => format!("{name}: no rule of {} allows it", policies.join(", ")),
                n => format!(
                    "{name}: no rule of {} (and {} more) allows it",
                    policies[..NAMED].join(", "),
                    n - NAMED
                ),
            }
        }
    }
}

/// A record, named.
fn describe(
    r: &FlowRecord,
    unix_ms: u64,
    names: &HashMap<IpAddr, PodRef>,
    tables: &Tables,
) -> FlowInfo {
    let k = &r.key;
    let ((src, dst), (sport, dport, proto)) = (k.addrs(), k.ports());
    let ports = matches!(proto, 6 | 17 | 132);
    let end = |ip: IpAddr, port: u16| FlowEnd {
        ip,
        port: ports.then_some(port),
        pod: names.get(&ip).cloned(),
    };
    FlowInfo {
        seq: 0,
        unix_ms,
        src: end(src, sport),
        dst: end(dst, dport),
        proto: proto_name(proto),
        verdict: match r.verdict {
            Verdict::Allowed { .. } => "allowed".into(),
            Verdict::Denied { .. } => "denied".into(),
        },
        reason: reason(&r.verdict, k, tables),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::conntrack::FlowKey;
    use crate::core::Time;
    use crate::netpol::compile::PodRules;
    use std::net::Ipv4Addr;

    fn flow(n: u8, verdict: &str, pod: Option<&str>) -> FlowInfo {
        let end = |ip: Ipv4Addr| FlowEnd {
            ip: ip.into(),
            port: Some(80),
            pod: pod.map(|p| PodRef {
                namespace: "ns".into(),
                name: p.into(),
            }),
        };
        FlowInfo {
            seq: 0,
            unix_ms: 0,
            src: end(Ipv4Addr::new(10, 0, 0, n)),
            dst: end(Ipv4Addr::new(10, 0, 1, n)),
            proto: "tcp".into(),
            verdict: verdict.into(),
            reason: String::new(),
        }
    }

    /// The history keeps the newest, numbers them in order, and gives what a
    /// request filters for after its cursor.
    #[test]
    fn history_is_bounded_numbered_and_filtered() {
        let mut h = FlowHistory::default();
        for n in 0..(HISTORY + 5) {
            let verdict = if n % 2 == 0 { "allowed" } else { "denied" };
            let pod = (n % 3 == 0).then_some("web");
            h.push(flow(n as u8, verdict, pod));
        }
        assert_eq!(h.flows.len(), HISTORY);
        assert_eq!(h.flows[0].seq, 6);
        assert_eq!(h.last, (HISTORY + 5) as u64);
        let (all, last) = h.select(&FlowsRequest::default());
        assert_eq!(last, h.last);
        assert_eq!(all.len(), HISTORY);
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
        let (after, _) = h.select(&FlowsRequest {
            after: h.last - 3,
            ..FlowsRequest::default()
        });
        assert_eq!(
            after.iter().map(|f| f.seq).collect::<Vec<_>>(),
            [h.last - 2, h.last - 1, h.last]
        );
        let (denied_web, _) = h.select(&FlowsRequest {
            verdict: Some("denied".into()),
            pod: Some(PodRef {
                namespace: "ns".into(),
                name: "web".into(),
            }),
            limit: 2,
            ..FlowsRequest::default()
        });
        assert_eq!(denied_web.len(), 2);
        assert!(denied_web
            .iter()
            .all(|f| f.verdict == "denied" && f.src.pod.is_some()));
        assert_eq!(
            denied_web[1].seq,
            all.iter()
                .rev()
                .find(|f| f.verdict == "denied" && f.src.pod.is_some())
                .unwrap()
                .seq
        );
        assert!(check_verdict(&Some("dropped".into())).is_err());
        // Nothing after the last.
        let (none, last) = h.select(&FlowsRequest {
            after: u64::MAX,
            ..FlowsRequest::default()
        });
        assert!(none.is_empty());
        assert_eq!(last, h.last);
    }

    /// An answer stops at its byte bound, and the next one goes on from there:
    /// a follower misses nothing and sees nothing twice.
    #[test]
    fn long_histories_are_given_in_pieces() {
        let mut h = FlowHistory::default();
        for n in 0..HISTORY {
            let mut f = flow(n as u8, "denied", Some("web"));
            f.reason = "x".repeat(1000);
            h.push(f);
        }
        let mut req = FlowsRequest::default();
        let mut seen = Vec::new();
        for _ in 0..10 {
            let (got, last) = h.select(&req);
            assert!(got.iter().map(size_of).sum::<usize>() <= REPLY_BYTES);
            seen.extend(got.iter().map(|f| f.seq));
            req.after = last;
            if last == h.last {
                break;
            }
        }
        assert_eq!(seen, (1..=HISTORY as u64).collect::<Vec<_>>());
    }

    /// Verdicts name the rule that allowed, or the policies that isolate the pod
    /// refused at, from the tables when they are those of the verdict.
    #[test]
    fn verdicts_say_what_decided() {
        use crate::sim::Sim;
        use crate::tables::TunnelMode;
        let pod = Ipv4Addr::new(10, 244, 1, 5);
        let client = Ipv4Addr::new(10, 244, 2, 5);
        let mut sim = Sim::new(TunnelMode::Sleeve, &[&[pod], &[client]]);
        let p = sim.pod(pod);
        let rules = PodRules {
            selected_by: vec![
                ("shop/web".into(), true, false),
                ("shop/out".into(), false, true),
            ],
            ..PodRules::default()
        };
        sim.set_rules(p, Some(rules));
        let tables = &sim.nodes[sim.pods[p].node].tables;
        let port = sim.pods[p].port as u32;
        let key = FlowKey {
            src: u32::from(client),
            dst: u32::from(pod),
            sport: 1234,
            dport: 80,
            proto: 6,
            icmp: 0,
        };
        let o = Origin {
            policy: "shop/web".into(),
            rule: 1,
        };
        let allowed = Verdict::Allowed {
            egress: None,
            ingress: Some(o),
            from_node: false,
        };
        let key = RecordKey::V4(key);
        assert_eq!(reason(&allowed, &key, tables), "ingress: shop/web rule 1");
        let from_node = Verdict::Allowed {
            egress: None,
            ingress: None,
            from_node: true,
        };
        assert_eq!(
            reason(&from_node, &key, tables),
            "from this node: always allowed"
        );
        let denied = |generation| Verdict::Denied {
            direction: Direction::Ingress,
            isolated: Some((port, generation)),
        };
        let now = denied(tables.policy_generation);
        assert_eq!(
            reason(&now, &key, tables),
            "ingress: no rule of shop/web allows it"
        );
        let before = denied(tables.policy_generation.wrapping_sub(1));
        assert!(reason(&before, &key, tables).contains("changed since"));
        // A port that holds another pod now names nothing.
        let other = match key {
            RecordKey::V4(k) => RecordKey::V4(FlowKey {
                dst: u32::from(Ipv4Addr::new(10, 244, 1, 9)),
                ..k
            }),
            RecordKey::V6(_) => unreachable!("an IPv4 key"),
        };
        assert_eq!(
            reason(&now, &other, tables),
            "ingress: isolated, and no rule allows it"
        );
        let record = FlowRecord {
            at: Time::from_nanos(5),
            key,
            verdict: now.clone(),
        };
        let web = PodRef {
            namespace: "shop".into(),
            name: "web".into(),
        };
        let names = HashMap::from([(pod.into(), web.clone())]);
        let info = describe(&record, 42, &names, tables);
        assert_eq!((info.src.port, info.dst.port), (Some(1234), Some(80)));
        assert_eq!((info.src.pod, info.dst.pod), (None, Some(web.clone())));
        assert_eq!(
            (info.proto.as_str(), info.verdict.as_str()),
            ("tcp", "denied")
        );
        // An IPv6 connection is named by the pods' IPv6 addresses, and its
        // refusal blames the port that holds the pod's IPv6 address.
        let pod6 = crate::sim::ip6_of(pod);
        let key6 = RecordKey::V6(FlowKey {
            src: u128::from(crate::sim::ip6_of(client)),
            dst: u128::from(pod6),
            sport: 1234,
            dport: 80,
            proto: 6,
            icmp: 0,
        });
        assert_eq!(
            reason(&now, &key6, tables),
            "ingress: no rule of shop/web allows it"
        );
        let names = HashMap::from([(pod6.into(), web.clone())]);
        let record6 = FlowRecord {
            at: Time::from_nanos(6),
            key: key6,
            verdict: now,
        };
        let info = describe(&record6, 43, &names, tables);
        assert_eq!(info.dst.ip, IpAddr::from(pod6));
        assert_eq!((info.src.pod, info.dst.pod), (None, Some(web)));
    }
}
