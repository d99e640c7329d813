//! `weft policy explain`: a connection judged with the policies in force, as the
//! switch would judge its first packet.
//!
//! A connection to a ClusterIP (with `services = "switch"`) is followed through
//! the translation first, since NetworkPolicy judges the endpoint, not the
//! Service, as Kubernetes specifies: the answer names the Service port, which of
//! its endpoints a new connection may be given and why, the one the translation
//! gives the connection asked about (with a source port), and policy's verdict on
//! each. What the datapath would do is asked of the datapath's own table
//! ([`Services`]: the same lookup, the same usable set), never worked out again
//! here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use weft_proto::{self as proto, ExplainRequest, ExplainedEndpoint, ServiceExplanation};

use crate::control::config::ServicesMode;
use crate::control::daemon::{Daemon, State};
use crate::control::error::DaemonError;
use crate::core::conntrack::FlowKey;
use crate::netpol::compile::{self, Compiler, KnownPod, PodRules};
use crate::netpol::model::{Protocol as PolicyProtocol, DEFAULT_NAMESPACE};
use crate::services::{Endpoint, Frontend, Protocol, Readiness, ServicePort};
use crate::tables::services::{protocol_of, Choice, Services};

/// What a request asks, checked: the IP protocol, the destination port and the
/// source port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Asked {
    proto: u8,
    port: Option<u16>,
    src_port: Option<u16>,
}

/// Reads the protocol and ports of `req`: a port is 1 to 65535 (0 is no port a
/// connection may have), and a source port needs a protocol with ports.
fn asked(req: &ExplainRequest) -> Result<Asked, DaemonError> {
    let proto = match req.protocol.to_ascii_uppercase().as_str() {
        "ICMP" => weft_encap::ipv4::protocol::ICMP,
        "TCP" => PolicyProtocol::Tcp.number(),
        "UDP" => PolicyProtocol::Udp.number(),
        "SCTP" => PolicyProtocol::Sctp.number(),
        other => {
            return Err(DaemonError::Invalid(format!(
                "protocol {other:?} is not TCP, UDP, SCTP or ICMP"
            )))
        }
    };
    if req.port == Some(0) || req.src_port == Some(0) {
        return Err(DaemonError::Invalid("port 0 is not 1 to 65535".into()));
    }
    let ports = proto != weft_encap::ipv4::protocol::ICMP;
    if req.src_port.is_some() && !ports {
        return Err(DaemonError::Invalid(
            "a source port needs TCP, UDP or SCTP".into(),
        ));
    }
    Ok(Asked {
        proto,
        port: req.port.filter(|_| ports),
        src_port: req.src_port,
    })
}

/// The IPv4 address `text` is, if it is one; an IPv6 address is an error, since
/// the switch routes IPv4 only.
fn address(text: &str) -> Result<Option<Ipv4Addr>, DaemonError> {
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(Some(ip)),
        Ok(IpAddr::V6(ip)) => Err(DaemonError::Invalid(format!(
            "{ip} is an IPv6 address: weft routes IPv4 only"
        ))),
        Err(_) => Ok(None),
    }
}

/// An end of the connection: a known pod as `namespace/name` or by address, or
/// any address.
fn end<'m>(c: &Compiler<'m>, text: &str) -> Result<(Ipv4Addr, Option<KnownPod<'m>>), DaemonError> {
    if let Some(ip) = address(text)? {
        return Ok((ip, c.pod_at(ip.into())));
    }
    let (ns, name) = text.split_once('/').unwrap_or((DEFAULT_NAMESPACE, text));
    let pod = c
        .find(ns, name)
        .ok_or_else(|| DaemonError::Invalid(format!("{text:?} is no known pod and no address")))?;
    let ip = pod.ip.ok_or_else(|| {
        DaemonError::Invalid(format!(
            "pod {text} has no IPv4 address, and explain follows IPv4 only"
        ))
    })?;
    Ok((ip, Some(pod)))
}

/// Policy's verdict on one connection: each side's, whether it allows it and
/// what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The source's egress policy.
    pub egress: (bool, String),
    /// The destination's ingress policy.
    pub ingress: (bool, String),
}

impl Verdict {
    /// Whether both ends' policies allow it.
    pub fn allowed(&self) -> bool {
        self.egress.0 && self.ingress.0
    }
}

/// Judges connections from one source, whatever their destination: the source's
/// rules are resolved once.
struct Judge<'c, 'm> {
    c: &'c Compiler<'m>,
    src_ip: Ipv4Addr,
    src: Option<(KnownPod<'m>, PodRules)>,
    proto: u8,
}

impl<'c, 'm> Judge<'c, 'm> {
    fn new(c: &'c Compiler<'m>, src_ip: Ipv4Addr, src: Option<KnownPod<'m>>, proto: u8) -> Self {
        let src = src.map(|p| (p, c.rules_for(&p)));
        Judge {
            c,
            src_ip,
            src,
            proto,
        }
    }

    /// The verdict on the connection to `dst_ip` (the pod `dst`, if it is one) on
    /// `port`.
    fn verdict(&self, dst_ip: Ipv4Addr, dst: Option<KnownPod<'m>>, port: Option<u16>) -> Verdict {
        let src = self.src.as_ref().map(|(p, r)| (p, r));
        let dst_rules = dst.map(|p| (p, self.c.rules_for(&p)));
        let dst = dst_rules.as_ref().map(|(p, r)| (p, r));
        Verdict {
            egress: self.side(src, false, dst_ip, dst_ip, port),
            ingress: self.side(dst, true, self.src_ip, dst_ip, port),
        }
    }

    /// One side: `pod`'s rules for `ingress` (or egress) with `peer` at the
    /// other end.
    fn side(
        &self,
        pod: Option<(&KnownPod<'_>, &PodRules)>,
        ingress: bool,
        peer: Ipv4Addr,
        dst: Ipv4Addr,
        port: Option<u16>,
    ) -> (bool, String) {
        let Some((pod, rules)) = pod else {
            return (true, "not a known pod: no policy applies".into());
        };
        let set = match ingress {
            true => rules.ingress.as_ref(),
            false => rules.egress.as_ref(),
        };
        let Some(set) = set else {
            return (
                true,
                format!("{}/{} is not isolated", pod.namespace, pod.name),
            );
        };
        match set.allows(peer, dst, self.proto, port) {
            Some(o) => (true, format!("allowed by {} rule {}", o.policy, o.rule)),
            None => {
                let by: Vec<&str> = rules.selected_by.iter().map(|(id, ..)| &**id).collect();
                let what = compile::describe(self.proto, port);
                (
                    false,
                    format!("denied: no rule of {} allows {what}", by.join(", ")),
                )
            }
        }
    }
}

impl Daemon {
    /// `weft policy explain`: the connection `req` asks about, judged; through the
    /// translation first when it goes to an address of the Service CIDR.
    pub(crate) fn policy_explain(
        &self,
        req: &ExplainRequest,
    ) -> Result<proto::Explanation, DaemonError> {
        let asked = asked(req)?;
        let state = self.state.lock();
        let local = state.local_pods();
        let c = Compiler::new(&state.policy.model, &local);
        let (src_ip, src) = end(&c, &req.src)?;
        let (dst_ip, dst) = end(&c, &req.dst)?;
        let judge = Judge::new(&c, src_ip, src, asked.proto);
        let switch = self.settings.host.services == ServicesMode::Switch;
        let services = self.tables().services.clone().filter(|_| switch);
        let Some(services) = services.filter(|s| s.cidr().contains(&dst_ip)) else {
            let mut e = plain(judge.verdict(dst_ip, dst, asked.port));
            e.service = self.kube_proxy_note(&state, dst_ip);
            return Ok(e);
        };
        if services.cidr().contains(&src_ip) {
            return Err(DaemonError::Invalid(format!(
                "source {src_ip} is an address of the Service CIDR {}: no packet comes from one",
                services.cidr()
            )));
        }
        let pods: HashMap<Ipv4Addr, KnownPod<'_>> = c.known().fold(HashMap::new(), |mut m, p| {
            if let Some(ip) = p.ip {
                m.entry(ip).or_insert(p);
            }
            m
        });
        let verdict =
            |ip: Ipv4Addr, port: u16| judge.verdict(ip, pods.get(&ip).copied(), Some(port));
        let flow = Flow {
            client: src_ip,
            dst: dst_ip,
            proto: asked.proto,
            port: asked.port,
            src_port: asked.src_port,
        };
        through(&services, flow, &verdict)
    }

    /// With kube-proxy translating, that it does, for a destination of the
    /// Service CIDR (or a ClusterIP the store holds, when no CIDR is set).
    fn kube_proxy_note(&self, state: &State, dst: Ipv4Addr) -> Option<ServiceExplanation> {
        let cidr = self.settings.host.service_cidr;
        let held = || (state.services.table.ports.iter()).any(|p| p.frontend.ip == dst);
        let service = match cidr {
            Some(c) => c.contains(&dst),
            None => held(),
        };
        (service && self.settings.host.services != ServicesMode::Switch).then(|| {
            note(
                "kube-proxy",
                "Services are translated by kube-proxy here (services = \"kube-proxy\"): \
                 the address is judged as given, not the endpoint kube-proxy would choose"
                    .into(),
            )
        })
    }
}

/// What became of an address of the Service CIDR, naming no Service port.
fn note(outcome: &str, detail: String) -> ServiceExplanation {
    ServiceExplanation {
        outcome: outcome.into(),
        detail,
        name: None,
        frontend: None,
        selection: Vec::new(),
        endpoints: Vec::new(),
    }
}

/// A verdict as the answer of a connection to no Service.
fn plain(v: Verdict) -> proto::Explanation {
    proto::Explanation {
        allowed: v.allowed(),
        egress: v.egress.1,
        ingress: v.ingress.1,
        service: None,
    }
}

/// The connection asked about, to an address of the Service CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flow {
    /// Its source.
    pub client: Ipv4Addr,
    /// Its destination, in the Service CIDR.
    pub dst: Ipv4Addr,
    /// Its IP protocol.
    pub proto: u8,
    /// Its destination port.
    pub port: Option<u16>,
    /// Its source port, if given.
    pub src_port: Option<u16>,
}

/// An answer that judges no endpoint: `outcome`, because of `detail` (the
/// port's, when the address and port are a frontend).
fn untranslated(
    outcome: &str,
    detail: String,
    port: Option<ServiceExplanation>,
) -> proto::Explanation {
    let not = format!("not judged: the connection is {outcome} before policy");
    let service = match port {
        Some(port) => ServiceExplanation {
            outcome: outcome.into(),
            detail,
            ..port
        },
        None => note(outcome, detail),
    };
    proto::Explanation {
        allowed: false,
        egress: not.clone(),
        ingress: not,
        service: Some(service),
    }
}

/// What the translation of `services` makes of `flow`, and `verdict`'s judgement
/// of each endpoint of its port (an endpoint's address and target port in, the
/// verdict on the connection to it out). With an endpoint picked (a source port
/// given), the answer is policy's verdict on it; without, on every usable
/// endpoint (allowed only if each is); with none, not allowed. A protocol with
/// ports needs a port.
pub(crate) fn through(
    services: &Services,
    flow: Flow,
    verdict: &dyn Fn(Ipv4Addr, u16) -> Verdict,
) -> Result<proto::Explanation, DaemonError> {
    let Some(protocol) = protocol_of(flow.proto) else {
        let what = compile::describe(flow.proto, None);
        return Ok(untranslated(
            "refused",
            format!("only TCP, UDP and SCTP are translated: {what} to {} is refused with an ICMP host unreachable", flow.dst),
            None,
        ));
    };
    let port = flow.port.ok_or_else(|| {
        DaemonError::Invalid(format!(
            "{} is an address of the Service CIDR: give the Service port",
            flow.dst
        ))
    })?;
    let frontend = Frontend {
        ip: flow.dst,
        port,
        protocol,
    };
    let Some(i) = services.find(&frontend) else {
        let detail = match services.holds(flow.dst) {
            true => format!(
                "ClusterIP {} has no port {port}/{}: refused with an ICMP port unreachable",
                flow.dst,
                name_of(protocol)
            ),
            false => format!(
                "no Service holds {} (an address of the Service CIDR {}): refused with an ICMP host unreachable",
                flow.dst,
                services.cidr()
            ),
        };
        return Ok(untranslated("refused", detail, None));
    };
    let key = |sport: u16| FlowKey {
        src: u32::from(flow.client),
        dst: u32::from(flow.dst),
        sport,
        dport: port,
        proto: flow.proto,
        icmp: 0,
    };
    // Without a source port, any connection shows whether the port refuses or
    // drops: with no usable endpoint, the choice does not depend on the flow.
    let choice = services.choose(i, key(flow.src_port.unwrap_or(1)));
    let picked = match choice {
        Choice::Endpoint(ip, p) => flow.src_port.map(|_| (ip, p)),
        Choice::Refuse | Choice::Drop => None,
    };
    Ok(explain_port(
        services,
        i,
        flow.client,
        choice,
        picked,
        verdict,
    ))
}

/// Every endpoint of port `i`, as shown, with policy's verdict on it (`picked`:
/// the one the translation gives the connection asked about).
fn judged(
    services: &Services,
    i: usize,
    picked: Option<(Ipv4Addr, u16)>,
    verdict: &dyn Fn(Ipv4Addr, u16) -> Verdict,
) -> Vec<(ExplainedEndpoint, Verdict)> {
    let port = services.port(i);
    (port.endpoints.iter())
        .map(|e| {
            let usable = services.is_usable(i, e.ip, e.port);
            let v = verdict(e.ip, e.port);
            let shown = ExplainedEndpoint {
                address: format!("{}:{}", e.ip, e.port),
                state: state_name(e.readiness).into(),
                local: e.local,
                usable,
                unused: (!usable).then(|| unused(port, e).into()),
                picked: picked == Some((e.ip, e.port)),
                allowed: v.allowed(),
                egress: v.egress.1.clone(),
                ingress: v.ingress.1.clone(),
            };
            (shown, v)
        })
        .collect()
}

/// The answer for port `i`, whose choice for the connection asked about is
/// `choice` (`picked`, when a source port was given).
fn explain_port(
    services: &Services,
    i: usize,
    client: Ipv4Addr,
    choice: Choice,
    picked: Option<(Ipv4Addr, u16)>,
    verdict: &dyn Fn(Ipv4Addr, u16) -> Verdict,
) -> proto::Explanation {
    let port = services.port(i);
    let judged = judged(services, i, picked, verdict);
    let f = &port.frontend;
    let endpoints: Vec<ExplainedEndpoint> = judged.iter().map(|(e, _)| e.clone()).collect();
    let shown = ServiceExplanation {
        outcome: "translated".into(),
        detail: String::new(),
        name: Some(port.name.to_string()),
        frontend: Some(format!("{}:{}/{}", f.ip, f.port, name_of(f.protocol))),
        selection: selection(port, &endpoints, client, picked),
        endpoints,
    };
    match (choice, picked) {
        (Choice::Refuse, _) => untranslated(
            "refused",
            "no usable endpoint: refused with an ICMP port unreachable (a TCP connect fails with ECONNREFUSED)".into(),
            Some(shown),
        ),
        (Choice::Drop, _) => untranslated(
            "dropped",
            "internalTrafficPolicy Local and no usable endpoint on this node: dropped, as Kubernetes specifies".into(),
            Some(shown),
        ),
        (Choice::Endpoint(..), Some((ip, p))) => {
            let v = (judged.iter())
                .find(|(e, _)| e.picked)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| verdict(ip, p));
            proto::Explanation {
                allowed: v.allowed(),
                egress: v.egress.1,
                ingress: v.ingress.1,
                service: Some(ServiceExplanation {
                    detail: format!("given endpoint {ip}:{p}"),
                    ..shown
                }),
            }
        }
        (Choice::Endpoint(..), None) => {
            let usable: Vec<&Verdict> = (judged.iter())
                .filter(|(e, _)| e.usable)
                .map(|(_, v)| v)
                .collect();
            let n = usable.len();
            let out = usable.iter().filter(|v| v.egress.0).count();
            let into = usable.iter().filter(|v| v.ingress.0).count();
            proto::Explanation {
                allowed: usable.iter().all(|v| v.allowed()),
                egress: format!("allows {out} of the {n} usable endpoints"),
                ingress: format!("{into} of the {n} usable endpoints admit it"),
                service: Some(ServiceExplanation {
                    detail: format!("given one of {n} usable endpoints: a source port tells which"),
                    ..shown
                }),
            }
        }
    }
}

/// How port `port` chooses a new connection's endpoint, a line each, given its
/// endpoints as explained and the endpoint `picked` for `client`.
fn selection(
    port: &ServicePort,
    endpoints: &[ExplainedEndpoint],
    client: Ipv4Addr,
    picked: Option<(Ipv4Addr, u16)>,
) -> Vec<String> {
    let usable: Vec<&ExplainedEndpoint> = endpoints.iter().filter(|e| e.usable).collect();
    let mut out = Vec::new();
    if port.internal_local {
        out.push("internalTrafficPolicy Local: this node's endpoints only".into());
    }
    match usable.first().map(|e| e.state.as_str()) {
        None => out.push("no endpoint may be given a new connection".into()),
        Some("ready") => out.push(format!(
            "the ready endpoints: {} of {}",
            usable.len(),
            endpoints.len()
        )),
        Some(_) => out.push(format!(
            "no endpoint is ready: the serving and terminating ones, {} of {}",
            usable.len(),
            endpoints.len()
        )),
    }
    if !usable.is_empty() {
        out.push("a new connection's endpoint: a Maglev lookup on the hash of its 5-tuple".into());
    }
    if let Some(t) = port.affinity {
        out.push(format!(
            "sessionAffinity ClientIP, {} s: a client's new connections go to the endpoint its last one went to while that is fresh; the pick shown is for a client with none",
            t.as_secs()
        ));
    }
    if picked.is_some_and(|(ip, _)| ip == client) {
        out.push(
            "the endpoint is the client itself: it sees the connection come from the ClusterIP"
                .into(),
        );
    }
    out
}

/// Why endpoint `e` of `port` is not usable now. The datapath's table says
/// whether it is; the reasons are the two it has: this node's endpoints only,
/// or serving and terminating while another is ready.
fn unused(port: &ServicePort, e: &Endpoint) -> &'static str {
    if port.internal_local && !e.local {
        "not on this node (internalTrafficPolicy Local)"
    } else {
        "serving and terminating: used only while no endpoint is ready"
    }
}

/// An endpoint's state, as `weft services` names it.
fn state_name(r: Readiness) -> &'static str {
    match r {
        Readiness::Ready => "ready",
        Readiness::ServingTerminating => "serving-terminating",
    }
}

/// A Service protocol's name.
fn name_of(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::services::ServiceTable;

    const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);

    fn endpoint(ip: [u8; 4], readiness: Readiness, local: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::from(ip),
            port: 8080,
            readiness,
            local,
        }
    }

    fn port(endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            frontend: Frontend {
                ip: CLUSTER_IP,
                port: 80,
                protocol: Protocol::Tcp,
            },
            name: Arc::from("default/web:http"),
            endpoints,
            affinity: None,
            internal_local: false,
        }
    }

    /// The datapath's table of the one port `p`.
    fn services(p: ServicePort) -> Services {
        let cidr = "10.96.0.0/12".parse().unwrap();
        let table = ServiceTable {
            cidr: Some(cidr),
            ports: vec![p],
        };
        Services::compile(Arc::new(table), cidr, 7, 1, None).expect("a good table")
    }

    fn flow(dst: Ipv4Addr, port: Option<u16>, src_port: Option<u16>) -> Flow {
        Flow {
            client: CLIENT,
            dst,
            proto: PolicyProtocol::Tcp.number(),
            port,
            src_port,
        }
    }

    /// Policy that lets the client reach every endpoint but 10.244.1.6, whose
    /// ingress denies it.
    fn verdict(ip: Ipv4Addr, port: u16) -> Verdict {
        let denied = ip == Ipv4Addr::new(10, 244, 1, 6);
        Verdict {
            egress: (true, format!("to {ip}:{port}: not isolated")),
            ingress: match denied {
                true => (false, format!("denied: {ip}")),
                false => (true, format!("allowed: {ip}")),
            },
        }
    }

    fn explain(s: &Services, f: Flow) -> proto::Explanation {
        through(s, f, &verdict).expect("an answer")
    }

    fn shown(e: &proto::Explanation) -> &ServiceExplanation {
        e.service.as_ref().expect("the Service part")
    }

    /// The endpoints' (address, usable, picked, allowed).
    fn rows(e: &proto::Explanation) -> Vec<(String, bool, bool, bool)> {
        (shown(e).endpoints.iter())
            .map(|p| (p.address.clone(), p.usable, p.picked, p.allowed))
            .collect()
    }

    /// Without a source port: every endpoint judged, the serving and
    /// terminating one shown unused while others are ready; the connection is
    /// allowed only if each usable endpoint allows it.
    #[test]
    fn the_ready_endpoints_are_judged_each_and_a_terminating_one_is_shown_unused() {
        let s = services(port(vec![
            endpoint([10, 244, 1, 5], Readiness::Ready, true),
            endpoint([10, 244, 2, 5], Readiness::ServingTerminating, false),
        ]));
        let e = explain(&s, flow(CLUSTER_IP, Some(80), None));
        let svc = shown(&e);
        assert_eq!(svc.outcome, "translated");
        assert_eq!(svc.name.as_deref(), Some("default/web:http"));
        assert_eq!(svc.frontend.as_deref(), Some("10.96.0.10:80/TCP"));
        assert_eq!(
            rows(&e),
            [
                ("10.244.1.5:8080".into(), true, false, true),
                ("10.244.2.5:8080".into(), false, false, true),
            ]
        );
        assert_eq!(
            svc.endpoints[1].unused.as_deref(),
            Some("serving and terminating: used only while no endpoint is ready")
        );
        assert!(svc.selection[0].starts_with("the ready endpoints: 1 of 2"));
        assert!(e.allowed);
        assert_eq!(e.egress, "allows 1 of the 1 usable endpoints");
        // The judge saw the endpoint's address and target port, not the
        // ClusterIP's.
        assert_eq!(svc.endpoints[0].egress, "to 10.244.1.5:8080: not isolated");

        // One usable endpoint that denies: not allowed.
        let s = services(port(vec![
            endpoint([10, 244, 1, 5], Readiness::Ready, true),
            endpoint([10, 244, 1, 6], Readiness::Ready, true),
        ]));
        let e = explain(&s, flow(CLUSTER_IP, Some(80), None));
        assert!(!e.allowed);
        assert_eq!(e.ingress, "1 of the 2 usable endpoints admit it");
    }

    /// With a source port, the endpoint picked is the one the datapath's lookup
    /// gives that flow, and the verdict is policy's on it alone; over many source
    /// ports, both endpoints are picked (the pick depends on the flow).
    #[test]
    fn a_source_port_picks_the_endpoint_the_translation_gives_and_judges_it() {
        let s = services(port(vec![
            endpoint([10, 244, 1, 5], Readiness::Ready, true),
            endpoint([10, 244, 1, 6], Readiness::Ready, false),
        ]));
        let mut seen = [0u32; 2];
        for sport in 1000..1200 {
            let e = explain(&s, flow(CLUSTER_IP, Some(80), Some(sport)));
            let picked: Vec<usize> = (rows(&e).iter().enumerate())
                .filter(|(_, r)| r.2)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(picked.len(), 1, "{e:#?}");
            let key = FlowKey {
                src: u32::from(CLIENT),
                dst: u32::from(CLUSTER_IP),
                sport,
                dport: 80,
                proto: 6,
                icmp: 0,
            };
            let Choice::Endpoint(ip, p) = s.choose(0, key) else {
                panic!("no endpoint");
            };
            assert_eq!(shown(&e).endpoints[picked[0]].address, format!("{ip}:{p}"));
            assert_eq!(shown(&e).detail, format!("given endpoint {ip}:{p}"));
            // Denied exactly when the endpoint picked is the one that denies.
            assert_eq!(e.allowed, picked[0] == 0, "{e:#?}");
            seen[picked[0]] += 1;
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
    }

    #[test]
    fn with_no_ready_endpoint_the_serving_and_terminating_ones_are_used() {
        let s = services(port(vec![
            endpoint([10, 244, 1, 5], Readiness::ServingTerminating, true),
            endpoint([10, 244, 2, 5], Readiness::ServingTerminating, false),
        ]));
        let e = explain(&s, flow(CLUSTER_IP, Some(80), None));
        assert_eq!(shown(&e).outcome, "translated");
        assert!(rows(&e).iter().all(|r| r.1), "{e:#?}");
        assert!(
            shown(&e).selection[0]
                .starts_with("no endpoint is ready: the serving and terminating ones, 2 of 2"),
            "{e:#?}"
        );
    }

    /// `internalTrafficPolicy: Local`: this node's endpoints only; with none
    /// here, the connection is dropped, not refused, and judged by no policy.
    #[test]
    fn internal_local_uses_this_nodes_endpoints_and_drops_without_one() {
        let mut p = port(vec![
            endpoint([10, 244, 1, 5], Readiness::Ready, true),
            endpoint([10, 244, 2, 5], Readiness::Ready, false),
        ]);
        p.internal_local = true;
        let e = explain(&services(p.clone()), flow(CLUSTER_IP, Some(80), Some(4000)));
        assert_eq!(
            rows(&e),
            [
                ("10.244.1.5:8080".into(), true, true, true),
                ("10.244.2.5:8080".into(), false, false, true),
            ]
        );
        assert_eq!(
            shown(&e).endpoints[1].unused.as_deref(),
            Some("not on this node (internalTrafficPolicy Local)")
        );
        assert_eq!(
            shown(&e).selection[0],
            "internalTrafficPolicy Local: this node's endpoints only"
        );
        p.endpoints.remove(0);
        let e = explain(&services(p), flow(CLUSTER_IP, Some(80), Some(4000)));
        assert_eq!(shown(&e).outcome, "dropped");
        assert!(!e.allowed);
        assert_eq!(
            e.egress,
            "not judged: the connection is dropped before policy"
        );
        assert!(!rows(&e)[0].1, "{e:#?}");
    }

    /// What the datapath refuses is said to be refused, with the ICMP error it
    /// answers: a port with no endpoint, a ClusterIP without the port asked, an
    /// address of the CIDR no Service holds, a protocol without ports.
    #[test]
    fn refusals_are_explained_as_the_datapath_answers_them() {
        let s = services(port(Vec::new()));
        let e = explain(&s, flow(CLUSTER_IP, Some(80), Some(4000)));
        assert_eq!(shown(&e).outcome, "refused");
        assert!(shown(&e).detail.contains("ICMP port unreachable"), "{e:#?}");
        assert!(!e.allowed);
        let s = services(port(vec![endpoint(
            [10, 244, 1, 5],
            Readiness::Ready,
            true,
        )]));
        let e = explain(&s, flow(CLUSTER_IP, Some(81), None));
        assert_eq!(
            shown(&e).detail,
            "ClusterIP 10.96.0.10 has no port 81/TCP: refused with an ICMP port unreachable"
        );
        let e = explain(&s, flow(Ipv4Addr::new(10, 96, 0, 99), Some(80), None));
        assert_eq!(
            shown(&e).detail,
            "no Service holds 10.96.0.99 (an address of the Service CIDR 10.96.0.0/12): refused with an ICMP host unreachable"
        );
        assert!(shown(&e).name.is_none() && !e.allowed);
        let icmp = Flow {
            proto: weft_encap::ipv4::protocol::ICMP,
            ..flow(CLUSTER_IP, None, None)
        };
        let e = explain(&s, icmp);
        assert_eq!(shown(&e).outcome, "refused");
        assert!(shown(&e).detail.contains("ICMP host unreachable"), "{e:#?}");
        let asked_no_port = through(&s, flow(CLUSTER_IP, None, None), &verdict);
        assert!(
            matches!(&asked_no_port, Err(DaemonError::Invalid(m)) if m.contains("give the Service port")),
            "{asked_no_port:?}"
        );
    }

    #[test]
    fn affinity_and_a_client_given_itself_are_said() {
        let mut p = port(vec![endpoint(CLIENT.octets(), Readiness::Ready, true)]);
        p.affinity = Some(Duration::from_secs(60));
        let e = explain(&services(p), flow(CLUSTER_IP, Some(80), Some(4000)));
        let lines = &shown(&e).selection;
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("sessionAffinity ClientIP, 60 s")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("the endpoint is the client itself")),
            "{lines:?}"
        );
    }

    fn request(protocol: &str, port: Option<u16>, src_port: Option<u16>) -> ExplainRequest {
        ExplainRequest {
            src: "default/a".into(),
            dst: "10.96.0.10".into(),
            protocol: protocol.into(),
            port,
            src_port,
        }
    }

    /// Hostile requests get a clear error, each beside a good one that reads.
    #[test]
    fn hostile_requests_are_refused_with_why() {
        let good = asked(&request("tcp", Some(80), Some(4000))).expect("a good request");
        assert_eq!(good.port, Some(80));
        for (req, why) in [
            (request("TCP", Some(0), None), "port 0 is not 1 to 65535"),
            (
                request("TCP", Some(80), Some(0)),
                "port 0 is not 1 to 65535",
            ),
            (request("ICMP", None, Some(4000)), "a source port needs TCP"),
            (
                request("GRE", Some(80), None),
                "\"GRE\" is not TCP, UDP, SCTP or ICMP",
            ),
        ] {
            match asked(&req) {
                Err(DaemonError::Invalid(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{req:?}: {other:?}"),
            }
        }
        assert_eq!(address("10.96.0.10").unwrap(), Some(CLUSTER_IP));
        assert_eq!(address("default/web").unwrap(), None);
        for v6 in ["fd00::10", "::ffff:10.96.0.10"] {
            let e = address(v6).expect_err(v6).to_string();
            assert!(e.contains("IPv6 address: weft routes IPv4 only"), "{e}");
        }
        // A port past 65535 never reaches the daemon: the request does not decode.
        let wire = |port: &str| {
            format!(
                r#"{{"version": 1, "verb": "policy_explain", "src": "a", "dst": "10.96.0.10", "protocol": "TCP", "port": {port}, "src_port": 4000}}"#
            )
        };
        assert!(weft_proto::decode_request(wire("80").as_bytes()).is_ok());
        let e = weft_proto::decode_request(wire("70000").as_bytes()).expect_err("70000");
        assert!(e.message.contains("70000"), "{}", e.message);
    }
}
