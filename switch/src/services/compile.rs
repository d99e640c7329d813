//! The Services model compiled, for one node, into the [`ServiceTable`] the
//! datapath translates by: every ClusterIP port with the endpoints its Service's
//! EndpointSlices give it.
//!
//! Only the ClusterIP part of a Service is compiled (that of NodePort and
//! LoadBalancer Services too: each has a ClusterIP; their node ports stay with
//! kube-proxy). Headless and ExternalName Services have nothing to translate.
//! IPv4 only: IPv6 ClusterIPs and IPv6 slices are skipped, as the switch routes
//! IPv4 (dual stack is a later issue).
//!
//! The compiler trusts nothing of the model: whatever it is given, its table
//! passes [`ServiceTable::check`]. What it must leave out to get there (an
//! endpoint [`refuse_endpoint`] refuses, a ClusterIP outside the Service CIDR or
//! claimed by two Services, a frontend given twice) is returned as [`Refused`],
//! for the caller to log with the object it came from.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::model::{AddressType, EndpointSlice, Service, ServiceModel, ServiceType};
use super::{refuse_endpoint, Endpoint, Frontend, Protocol, Readiness, ServicePort, ServiceTable};
use crate::netpol::model::Protocol as K8sProtocol;

/// An address the compiler left out of the table, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Refused {
    /// The object it comes from: `EndpointSlice ns/name` for an endpoint,
    /// `Service ns/name` for a ClusterIP.
    pub object: String,
    /// The address.
    pub address: Ipv4Addr,
    /// Why.
    pub why: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} refused: {}", self.object, self.address, self.why)
    }
}

impl From<K8sProtocol> for Protocol {
    fn from(p: K8sProtocol) -> Protocol {
        match p {
            K8sProtocol::Tcp => Protocol::Tcp,
            K8sProtocol::Udp => Protocol::Udp,
            K8sProtocol::Sctp => Protocol::Sctp,
        }
    }
}

/// The IPv4 addresses of `ips`.
fn v4(ips: &[IpAddr]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    ips.iter().filter_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    })
}

/// Whether `s` has ClusterIPs to translate.
fn translated(s: &Service) -> bool {
    !s.headless && s.kind != ServiceType::ExternalName
}

/// The IPv4 slices of each Service, by (namespace, Service name): a slice feeds
/// the Service its label names in its own namespace, never another's.
fn slices_by_service(model: &ServiceModel) -> HashMap<(&str, &str), Vec<&EndpointSlice>> {
    let mut by: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in &model.slices {
        if let (Some(svc), AddressType::Ipv4) = (&s.service, s.address_type) {
            by.entry((&s.namespace, svc)).or_default().push(s);
        }
    }
    by
}

/// The ClusterIPs of the model that may be frontends: each claimed by one
/// Service only (no allocator keeps a hand-written store's unique, and a second
/// claim would take the first Service's traffic), not loopback, link-local,
/// multicast or broadcast, and inside the Service CIDR when there is one. The
/// others are refused.
fn frontends(
    model: &ServiceModel,
    cidr: Option<Ipv4Net>,
    refused: &mut BTreeSet<Refused>,
) -> HashMap<Ipv4Addr, String> {
    let mut owners: HashMap<Ipv4Addr, BTreeSet<String>> = HashMap::new();
    for s in model.services.iter().filter(|s| translated(s)) {
        for ip in v4(&s.cluster_ips) {
            owners.entry(ip).or_default().insert(s.id());
        }
    }
    let mut out = HashMap::with_capacity(owners.len());
    for (ip, ids) in owners {
        match refuse_cluster_ip(ip, &ids, cidr) {
            Some(why) => refused.extend(ids.into_iter().map(|id| Refused {
                object: format!("Service {id}"),
                address: ip,
                why: why.clone(),
            })),
            None => {
                out.insert(ip, ids.into_iter().next().expect("one owner"));
            }
        }
    }
    out
}

/// Why `ip`, the ClusterIP of the Services `ids`, may not be a frontend, if it
/// may not.
fn refuse_cluster_ip(
    ip: Ipv4Addr,
    ids: &BTreeSet<String>,
    cidr: Option<Ipv4Net>,
) -> Option<String> {
    if ids.len() > 1 {
        let all: Vec<&str> = ids.iter().map(String::as_str).collect();
        return Some(format!("ClusterIP claimed by Services {}", all.join(", ")));
    }
    if let Some(why) = refuse_endpoint(ip, None) {
        return Some(format!("ClusterIP is {why}"));
    }
    let outside = cidr.filter(|c| !c.contains(&ip));
    outside.map(|c| format!("ClusterIP is outside the Service CIDR {c}"))
}

/// Refuses every endpoint address of `slice` that no connection may be given.
fn refuse_addresses(slice: &EndpointSlice, cidr: Option<Ipv4Net>, out: &mut BTreeSet<Refused>) {
    for e in &slice.endpoints {
        for ip in v4(&e.addresses) {
            if let Some(why) = refuse_endpoint(ip, cidr) {
                out.insert(Refused {
                    object: format!("EndpointSlice {}", slice.id()),
                    address: ip,
                    why: why.into(),
                });
            }
        }
    }
}

/// How an endpoint with these conditions may be used, if at all.
fn readiness(c: &super::model::Conditions) -> Option<Readiness> {
    if c.ready {
        Some(Readiness::Ready)
    } else if c.serving && c.terminating {
        Some(Readiness::ServingTerminating)
    } else {
        None
    }
}

/// The endpoints of the Service port `name`/`protocol` in `slices`: each slice
/// port of that name and protocol gives the number (the EndpointSlice
/// controller resolved a named `targetPort` for the pods of its slice, as
/// kube-proxy relies on), each usable, admitted address an endpoint; sorted,
/// each (address, port) once, the readiest first.
fn port_endpoints(
    slices: &[&EndpointSlice],
    (name, protocol): (&str, K8sProtocol),
    this_node: &str,
    cidr: Option<Ipv4Net>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices {
        let numbers = (slice.ports.iter())
            .filter(|p| p.name == name && p.protocol == protocol)
            .filter_map(|p| p.port);
        for port in numbers {
            for e in &slice.endpoints {
                let Some(readiness) = readiness(&e.conditions) else {
                    continue;
                };
                let local = e.node_name.as_deref() == Some(this_node);
                let admitted = v4(&e.addresses).filter(|&ip| refuse_endpoint(ip, cidr).is_none());
                out.extend(admitted.map(|ip| Endpoint {
                    ip,
                    port,
                    readiness,
                    local,
                }));
            }
        }
    }
    out.sort();
    out.dedup_by(|b, a| (a.ip, a.port) == (b.ip, b.port));
    out
}

/// The name of port `port_name` (or number) of Service `svc`, for logs.
fn port_name(svc: &Service, name: &str, port: u16) -> Arc<str> {
    match name {
        "" => format!("{}:{port}", svc.id()).into(),
        n => format!("{}:{n}", svc.id()).into(),
    }
}

/// Compiles `model` for node `this_node` in a cluster whose Service CIDR is
/// `service_cidr` (`None`: not known, so ClusterIPs and endpoints are not held
/// to it). The table passes [`ServiceTable::check`], whatever the model; what
/// had to be left out is returned, each once, sorted.
pub fn compile(
    model: &ServiceModel,
    this_node: &str,
    service_cidr: Option<Ipv4Net>,
) -> (ServiceTable, Vec<Refused>) {
    let mut refused = BTreeSet::new();
    let owned = frontends(model, service_cidr, &mut refused);
    let slices = slices_by_service(model);
    for s in &model.slices {
        refuse_addresses(s, service_cidr, &mut refused);
    }
    let mut ports = Vec::new();
    for svc in model.services.iter().filter(|s| translated(s)) {
        let id = svc.id();
        let mine = v4(&svc.cluster_ips).filter(|ip| owned.get(ip) == Some(&id));
        let feeds = slices
            .get(&(svc.namespace.as_str(), svc.name.as_str()))
            .map_or(&[][..], Vec::as_slice);
        for ip in mine {
            for p in &svc.ports {
                ports.push(ServicePort {
                    frontend: Frontend {
                        ip,
                        port: p.port,
                        protocol: p.protocol.into(),
                    },
                    name: port_name(svc, &p.name, p.port),
                    endpoints: port_endpoints(
                        feeds,
                        (&p.name, p.protocol),
                        this_node,
                        service_cidr,
                    ),
                    affinity: (svc.affinity_seconds).map(|s| Duration::from_secs(s.into())),
                    internal_local: svc.internal_local,
                });
            }
        }
    }
    let ports = unique_frontends(ports, &mut refused);
    let table = ServiceTable {
        cidr: service_cidr,
        ports,
    };
    (table, refused.into_iter().collect())
}

/// `ports` sorted by frontend, each frontend once: a port given twice (which
/// the API server would refuse) keeps its first, the other is refused.
fn unique_frontends(
    mut ports: Vec<ServicePort>,
    refused: &mut BTreeSet<Refused>,
) -> Vec<ServicePort> {
    ports.sort_by_key(|p| p.frontend);
    let mut out: Vec<ServicePort> = Vec::with_capacity(ports.len());
    for p in ports {
        match out.last() {
            Some(last) if last.frontend == p.frontend => {
                let f = p.frontend;
                refused.insert(Refused {
                    object: format!("Service port {}", p.name),
                    address: f.ip,
                    why: format!("port {}/{:?} is given twice", f.port, f.protocol),
                });
            }
            _ => out.push(p),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::services::model::{
        Conditions, ServicePortSpec, SliceEndpoint, SlicePort, TargetPort,
    };

    const READY: Conditions = Conditions {
        ready: true,
        serving: true,
        terminating: false,
    };
    const DRAINING: Conditions = Conditions {
        ready: false,
        serving: true,
        terminating: true,
    };
    const DOWN: Conditions = Conditions {
        ready: false,
        serving: false,
        terminating: false,
    };

    fn cidr() -> Option<Ipv4Net> {
        Some("10.96.0.0/12".parse().unwrap())
    }

    fn service(ns: &str, name: &str, ip: &str, ports: &[(&str, K8sProtocol, u16)]) -> Service {
        Service {
            namespace: ns.into(),
            name: name.into(),
            kind: ServiceType::ClusterIp,
            cluster_ips: vec![ip.parse().unwrap()],
            headless: false,
            ports: (ports.iter())
                .map(|&(name, protocol, port)| ServicePortSpec {
                    name: name.into(),
                    protocol,
                    port,
                    target_port: TargetPort::Name("web".into()),
                })
                .collect(),
            affinity_seconds: None,
            internal_local: false,
        }
    }

    fn endpoint(ip: &str, conditions: Conditions, node: &str) -> SliceEndpoint {
        SliceEndpoint {
            addresses: vec![ip.parse().unwrap()],
            conditions,
            node_name: Some(node.into()),
            target_ref: None,
        }
    }

    fn slice(
        ns: &str,
        name: &str,
        svc: &str,
        ports: &[(&str, K8sProtocol, u16)],
        endpoints: Vec<SliceEndpoint>,
    ) -> EndpointSlice {
        EndpointSlice {
            namespace: ns.into(),
            name: name.into(),
            service: Some(svc.into()),
            address_type: AddressType::Ipv4,
            endpoints,
            ports: (ports.iter())
                .map(|&(name, protocol, port)| SlicePort {
                    name: name.into(),
                    protocol,
                    port: Some(port),
                })
                .collect(),
        }
    }

    fn model(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ServiceModel {
        ServiceModel {
            services: services.into_iter().collect(),
            slices: slices.into_iter().collect(),
            bad: Vec::new(),
        }
    }

    fn ips(p: &ServicePort) -> Vec<(String, u16, Readiness, bool)> {
        (p.endpoints.iter())
            .map(|e| (e.ip.to_string(), e.port, e.readiness, e.local))
            .collect()
    }

    const TCP: K8sProtocol = K8sProtocol::Tcp;
    const UDP: K8sProtocol = K8sProtocol::Udp;

    #[test]
    fn each_port_takes_the_endpoints_and_numbers_of_its_slice_ports() {
        let m = model(
            vec![service(
                "default",
                "web",
                "10.96.0.10",
                &[("http", TCP, 80), ("dns", UDP, 53)],
            )],
            vec![
                slice(
                    "default",
                    "web-a",
                    "web",
                    &[("http", TCP, 8080), ("dns", UDP, 5353)],
                    vec![
                        endpoint("10.244.1.5", READY, "n1"),
                        endpoint("10.244.2.5", DRAINING, "n2"),
                        endpoint("10.244.2.6", DOWN, "n2"),
                    ],
                ),
                // The other slice resolved the named targetPort to another number
                // for its pods; a copy of an endpoint is taken once.
                slice(
                    "default",
                    "web-b",
                    "web",
                    &[("http", TCP, 9090)],
                    vec![endpoint("10.244.3.5", READY, "n3")],
                ),
                slice(
                    "default",
                    "web-c",
                    "web",
                    &[("http", TCP, 8080)],
                    vec![endpoint("10.244.1.5", READY, "n1")],
                ),
            ],
        );
        let (t, refused) = compile(&m, "n1", cidr());
        assert_eq!(t.check(), Ok(()));
        assert!(refused.is_empty(), "{refused:?}");
        let names: Vec<&str> = t.ports.iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["default/web:dns", "default/web:http"]);
        assert_eq!(t.ports[0].frontend.protocol, Protocol::Udp);
        assert_eq!(
            ips(&t.ports[0]),
            [
                ("10.244.1.5".into(), 5353, Readiness::Ready, true),
                (
                    "10.244.2.5".into(),
                    5353,
                    Readiness::ServingTerminating,
                    false
                ),
            ]
        );
        assert_eq!(
            ips(&t.ports[1]),
            [
                ("10.244.1.5".into(), 8080, Readiness::Ready, true),
                (
                    "10.244.2.5".into(),
                    8080,
                    Readiness::ServingTerminating,
                    false
                ),
                ("10.244.3.5".into(), 9090, Readiness::Ready, false),
            ]
        );
    }

    #[test]
    fn affinity_and_the_internal_traffic_policy_carry_over() {
        let mut s = service("default", "web", "10.96.0.10", &[("", TCP, 80)]);
        s.affinity_seconds = Some(60);
        s.internal_local = true;
        let (t, _) = compile(&model(vec![s], vec![]), "n1", cidr());
        let p = &t.ports[0];
        assert_eq!(&*p.name, "default/web:80");
        assert_eq!(p.affinity, Some(Duration::from_secs(60)));
        assert!(p.internal_local && p.endpoints.is_empty());
    }

    /// Headless, ExternalName and IPv6 have nothing to translate; NodePort and
    /// LoadBalancer Services their ClusterIP.
    #[test]
    fn only_ipv4_cluster_ips_are_translated() {
        let mut headless = service("default", "h", "10.96.0.1", &[("", TCP, 80)]);
        (headless.headless, headless.cluster_ips) = (true, Vec::new());
        let mut external = service("default", "e", "10.96.0.2", &[("", TCP, 80)]);
        (external.kind, external.cluster_ips) = (ServiceType::ExternalName, Vec::new());
        let v6 = service("default", "six", "fd00::1", &[("", TCP, 80)]);
        let mut dual = service("default", "dual", "10.96.0.4", &[("", TCP, 80)]);
        dual.cluster_ips.push("fd00::4".parse().unwrap());
        dual.kind = ServiceType::LoadBalancer;
        let mut v6_slice = slice("default", "dual-6", "dual", &[("", TCP, 80)], vec![]);
        v6_slice.address_type = AddressType::Ipv6;
        v6_slice.endpoints.push(SliceEndpoint {
            addresses: vec!["fd00::9".parse().unwrap()],
            conditions: READY,
            node_name: None,
            target_ref: None,
        });
        let m = model(vec![headless, external, v6, dual], vec![v6_slice]);
        let (t, refused) = compile(&m, "n1", cidr());
        let names: Vec<&str> = t.ports.iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["default/dual:80"]);
        assert!(t.ports[0].endpoints.is_empty() && refused.is_empty());
    }

    /// Endpoints that would reach the node itself, the metadata service or
    /// another Service are left out and reported with their slice; the good
    /// endpoint beside them is kept.
    #[test]
    fn hostile_endpoints_are_refused_and_named_with_their_slice() {
        let m = model(
            vec![service("default", "web", "10.96.0.10", &[("", TCP, 80)])],
            vec![slice(
                "default",
                "web-a",
                "web",
                &[("", TCP, 8080)],
                vec![
                    endpoint("127.0.0.1", READY, "n1"),
                    endpoint("169.254.169.254", READY, "n1"),
                    endpoint("10.96.0.1", READY, "n1"),
                    endpoint("224.0.0.1", READY, "n1"),
                    endpoint("10.244.1.5", READY, "n1"),
                ],
            )],
        );
        let (t, refused) = compile(&m, "n1", cidr());
        assert_eq!(t.check(), Ok(()));
        let kept: Vec<String> = t.ports[0]
            .endpoints
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(kept, ["10.244.1.5"]);
        let said: Vec<String> = refused.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "EndpointSlice default/web-a: 10.96.0.1 refused: inside the Service CIDR",
                "EndpointSlice default/web-a: 127.0.0.1 refused: a loopback address",
                "EndpointSlice default/web-a: 169.254.169.254 refused: a link-local address",
                "EndpointSlice default/web-a: 224.0.0.1 refused: a multicast address",
            ]
        );
    }

    /// A slice feeds the Service its label names in its own namespace only: one
    /// in another namespace with the same label feeds nothing of `default`'s.
    #[test]
    fn a_slice_feeds_only_its_own_namespaces_service() {
        let m = model(
            vec![service("default", "web", "10.96.0.10", &[("", TCP, 80)])],
            vec![
                slice(
                    "evil",
                    "web-x",
                    "web",
                    &[("", TCP, 80)],
                    vec![endpoint("10.244.9.9", READY, "n9")],
                ),
                slice(
                    "default",
                    "web-a",
                    "web",
                    &[("", TCP, 80)],
                    vec![endpoint("10.244.1.5", READY, "n1")],
                ),
            ],
        );
        let (t, _) = compile(&m, "n1", cidr());
        let kept: Vec<String> = t.ports[0]
            .endpoints
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(kept, ["10.244.1.5"]);
    }

    /// A ClusterIP outside the Service CIDR, on the metadata service's address,
    /// or claimed by two Services (which only a hand-written store can hold) is
    /// refused, with each Service named; the others stay.
    #[test]
    fn bad_or_contested_cluster_ips_are_refused() {
        let m = model(
            vec![
                service("default", "web", "10.96.0.10", &[("", TCP, 80)]),
                service("evil", "meta", "169.254.169.254", &[("", TCP, 80)]),
                service("evil", "out", "10.244.1.5", &[("", TCP, 80)]),
                service("a", "first", "10.96.0.20", &[("", TCP, 80)]),
                service("b", "second", "10.96.0.20", &[("", TCP, 443)]),
            ],
            vec![],
        );
        let (t, refused) = compile(&m, "n1", cidr());
        assert_eq!(t.check(), Ok(()));
        let names: Vec<&str> = t.ports.iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["default/web:80"]);
        let said: Vec<String> = refused.iter().map(ToString::to_string).collect();
        assert_eq!(said.len(), 4, "{said:#?}");
        assert!(said[0].starts_with(
            "Service a/first: 10.96.0.20 refused: ClusterIP claimed by Services a/first, b/second"
        ));
        assert!(said[1].starts_with("Service b/second: 10.96.0.20"));
        assert!(said[2].contains("evil/meta") && said[2].contains("link-local"));
        assert!(said[3].contains("evil/out") && said[3].contains("outside the Service CIDR"));
        // With no CIDR known, an address outside it cannot be told, but one
        // that is never a ClusterIP still is.
        let (t, refused) = compile(&m, "n1", None);
        assert_eq!(t.ports.len(), 2);
        assert_eq!(refused.len(), 3);
    }

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            // Mostly where the Service CIDR and pods are, so that they collide.
            (0u32..64).prop_map(|n| IpAddr::from([10, 96, 0, n as u8])),
            (0u32..64).prop_map(|n| IpAddr::from([10, 244, 1, n as u8])),
            any::<[u8; 4]>().prop_map(IpAddr::from),
            Just(IpAddr::from([127, 0, 0, 1])),
            Just(IpAddr::from([169, 254, 169, 254])),
            Just("fd00::1".parse().unwrap()),
        ]
    }

    fn arb_protocol() -> impl Strategy<Value = K8sProtocol> {
        prop_oneof![Just(TCP), Just(UDP), Just(K8sProtocol::Sctp)]
    }

    fn arb_name() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), Just("a".into()), Just("b".into())]
    }

    fn arb_service() -> impl Strategy<Value = Service> {
        let port = (arb_name(), arb_protocol(), 1u16..4).prop_map(|(name, protocol, port)| {
            ServicePortSpec {
                name,
                protocol,
                port,
                target_port: TargetPort::Number(port),
            }
        });
        (
            (0u8..3, 0u8..3),
            prop::collection::vec(arb_ip(), 0..3),
            prop::collection::vec(port, 0..4),
            any::<(bool, bool, Option<u32>)>(),
            0u8..4,
        )
            .prop_map(
                |((ns, name), cluster_ips, ports, (headless, local, aff), kind)| Service {
                    namespace: format!("ns{ns}"),
                    name: format!("s{name}"),
                    kind: [
                        ServiceType::ClusterIp,
                        ServiceType::NodePort,
                        ServiceType::LoadBalancer,
                        ServiceType::ExternalName,
                    ][usize::from(kind)],
                    cluster_ips,
                    headless,
                    ports,
                    affinity_seconds: aff,
                    internal_local: local,
                },
            )
    }

    fn arb_slice() -> impl Strategy<Value = EndpointSlice> {
        let ep = (
            prop::collection::vec(arb_ip(), 0..3),
            any::<(bool, bool, bool)>(),
            prop::option::of(0u8..3),
        )
            .prop_map(
                |(addresses, (ready, serving, terminating), node)| SliceEndpoint {
                    addresses,
                    conditions: Conditions {
                        ready,
                        serving,
                        terminating,
                    },
                    node_name: node.map(|n| format!("n{n}")),
                    target_ref: None,
                },
            );
        let port = (arb_name(), arb_protocol(), prop::option::of(1u16..4)).prop_map(
            |(name, protocol, port)| SlicePort {
                name,
                protocol,
                port,
            },
        );
        (
            (0u8..3, 0u8..4, prop::option::of(0u8..3)),
            any::<bool>(),
            prop::collection::vec(ep, 0..5),
            prop::collection::vec(port, 0..4),
        )
            .prop_map(|((ns, name, svc), v6, endpoints, ports)| EndpointSlice {
                namespace: format!("ns{ns}"),
                name: format!("e{name}"),
                service: svc.map(|s| format!("s{s}")),
                address_type: if v6 {
                    AddressType::Ipv6
                } else {
                    AddressType::Ipv4
                },
                endpoints,
                ports,
            })
    }

    proptest! {
        /// Whatever the model (unchecked, duplicates, hostile addresses), the
        /// table passes the check the datapath relies on; each port's
        /// endpoints are sorted and unique by address and port; nothing
        /// refused is in it.
        #[test]
        fn whatever_the_model_the_table_passes_its_check(
            services in prop::collection::vec(arb_service(), 0..8),
            slices in prop::collection::vec(arb_slice(), 0..8),
            with_cidr in any::<bool>(),
        ) {
            let m = model(services, slices);
            let c = if with_cidr { cidr() } else { None };
            let (t, refused) = compile(&m, "n1", c);
            prop_assert_eq!(t.check(), Ok(()));
            prop_assert_eq!(t.cidr, c);
            for p in &t.ports {
                let keys: Vec<(Ipv4Addr, u16)> = p.endpoints.iter().map(|e| (e.ip, e.port)).collect();
                let mut sorted = keys.clone();
                sorted.sort();
                sorted.dedup();
                prop_assert_eq!(&keys, &sorted);
                for e in &p.endpoints {
                    prop_assert!(!refused.iter().any(|r| r.address == e.ip && r.object.starts_with("EndpointSlice")));
                }
            }
        }
    }
}
