//! `weft flows`: NetworkPolicy's verdicts as the workers recorded them
//! ([`crate::core::flowlog`]), named: the pods at each end, the protocol and ports,
//! and the rule that allowed or the policies that isolate.
//!
//! Each request drains the workers' rings into a bounded history here, numbered in
//! order, and extends the workers' recording by the flow log's lease; a follower
//! asks again with the last number it saw.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use weft_proto::{FlowEnd, FlowInfo, FlowsRequest, PodRef};

use crate::control::daemon::Daemon;
use crate::control::error::DaemonError;
use crate::core::flowlog::{Direction, FlowRecord, Verdict};
use crate::io::clock;
use crate::netpol::compile::Origin;

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

    /// The newest `limit` flows after `req.after` that match `req`, oldest first.
    fn select(&self, req: &FlowsRequest) -> Vec<FlowInfo> {
        let limit = if req.limit == 0 { HISTORY } else { req.limit };
        let is = |end: &FlowEnd| req.pod.is_none() || end.pod == req.pod;
        let mut out: Vec<FlowInfo> = (self.flows.iter().rev())
            .take_while(|f| f.seq > req.after)
            .filter(|f| req.verdict.as_ref().is_none_or(|v| *v == f.verdict))
            .filter(|f| is(&f.src) || is(&f.dst))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }
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
        let mut history = self.flow_history.lock();
        if let Some(names) = names {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            for r in records {
                let ago = now.saturating_since(r.at);
                let unix_ms = wall.saturating_sub(ago).as_millis() as u64;
                history.push(describe(&r, unix_ms, &names));
            }
        }
        Ok((history.select(req), history.last))
    }

    /// The pods by address: this node's, as their CNI args named them, and the
    /// others the policy source lists.
    fn pod_names(&self) -> HashMap<Ipv4Addr, PodRef> {
        let model = self.state.lock().policy.model.clone();
        let mut names: HashMap<Ipv4Addr, PodRef> = (model.pods.iter())
            .filter_map(|p| {
                let name = PodRef {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                };
                Some((p.ip?, name))
            })
            .collect();
        for port in self.tables().ports.iter() {
            if let Some(pod) = &port.pod {
                names.insert(port.ip, pod.clone());
            }
        }
        names
    }
}

/// A protocol's name.
fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
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

/// What decided a verdict, in words.
fn reason(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Allowed { egress, ingress } => {
            let rules: Vec<String> = (egress.iter().map(|o| origin("egress", o)))
                .chain(ingress.iter().map(|o| origin("ingress", o)))
                .collect();
            if rules.is_empty() {
                "from this node: always allowed".into()
            } else {
                rules.join(", ")
            }
        }
        Verdict::Denied {
            direction,
            isolated_by,
        } => {
            let (name, ingress) = match direction {
                Direction::Ingress => ("ingress", true),
                Direction::Egress => ("egress", false),
            };
            let policies: Vec<&str> = (isolated_by.iter())
                .flat_map(|r| r.selected_by.iter())
                .filter(|(_, i, e)| if ingress { *i } else { *e })
                .map(|(p, _, _)| &**p)
                .collect();
            if policies.is_empty() {
                format!("{name}: isolated, and no rule allows it")
            } else {
                format!("{name}: no rule of {} allows it", policies.join(", "))
            }
        }
    }
}

/// A record, named.
fn describe(r: &FlowRecord, unix_ms: u64, names: &HashMap<Ipv4Addr, PodRef>) -> FlowInfo {
    let k = &r.key;
    let ports = matches!(k.proto, 6 | 17 | 132);
    let end = |ip: u32, port: u16| {
        let ip = Ipv4Addr::from(ip);
        FlowEnd {
            ip,
            port: ports.then_some(port),
            pod: names.get(&ip).cloned(),
        }
    };
    FlowInfo {
        seq: 0,
        unix_ms,
        src: end(k.src, k.sport),
        dst: end(k.dst, k.dport),
        proto: proto_name(k.proto),
        verdict: match r.verdict {
            Verdict::Allowed { .. } => "allowed".into(),
            Verdict::Denied { .. } => "denied".into(),
        },
        reason: reason(&r.verdict),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::conntrack::FlowKey;
    use crate::core::Time;
    use crate::netpol::compile::PodRules;

    fn flow(n: u8, verdict: &str, pod: Option<&str>) -> FlowInfo {
        let end = |ip: Ipv4Addr| FlowEnd {
            ip,
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
        let all = h.select(&FlowsRequest::default());
        assert_eq!(all.len(), HISTORY);
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
        let after = h.select(&FlowsRequest {
            after: h.last - 3,
            ..FlowsRequest::default()
        });
        assert_eq!(
            after.iter().map(|f| f.seq).collect::<Vec<_>>(),
            [h.last - 2, h.last - 1, h.last]
        );
        let denied_web = h.select(&FlowsRequest {
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
    }

    /// Verdicts name the rule that allowed, or the policies that isolate.
    #[test]
    fn verdicts_say_what_decided() {
        let o = Origin {
            policy: "shop/web".into(),
            rule: 1,
        };
        let allowed = Verdict::Allowed {
            egress: None,
            ingress: Some(o),
        };
        assert_eq!(reason(&allowed), "ingress: shop/web rule 1");
        let rules = PodRules {
            selected_by: vec![
                ("shop/web".into(), true, false),
                ("shop/out".into(), false, true),
            ],
            ..PodRules::default()
        };
        let denied = Verdict::Denied {
            direction: Direction::Ingress,
            isolated_by: Some(Arc::new(rules)),
        };
        assert_eq!(reason(&denied), "ingress: no rule of shop/web allows it");
        let record = FlowRecord {
            at: Time::from_nanos(5),
            key: FlowKey {
                src: u32::from(Ipv4Addr::new(10, 0, 0, 1)),
                dst: u32::from(Ipv4Addr::new(10, 0, 0, 2)),
                sport: 1234,
                dport: 80,
                proto: 6,
                icmp: 0,
            },
            verdict: denied,
        };
        let web = PodRef {
            namespace: "shop".into(),
            name: "web".into(),
        };
        let names = HashMap::from([(Ipv4Addr::new(10, 0, 0, 2), web.clone())]);
        let info = describe(&record, 42, &names);
        assert_eq!((info.src.port, info.dst.port), (Some(1234), Some(80)));
        assert_eq!((info.src.pod, info.dst.pod), (None, Some(web)));
        assert_eq!(
            (info.proto.as_str(), info.verdict.as_str()),
            ("tcp", "denied")
        );
    }
}
