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
use super::{
    refuse_endpoint, Endpoint, Frontend, Protocol, Readiness, ServicePort, ServiceTable,
};
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
        let why = if ids.len() > 1 {
            let all: Vec<&str> = ids.iter().map(String::as_str).collect();
            Some(format!("ClusterIP claimed by Services {}", all.join(", ")))
        } else if let Some(why) = refuse_endpoint(ip, None) {
            Some(format!("ClusterIP is {why}"))
        } else if let Some(c) = cidr.filter(|c| !c.contains(&ip)) {
            Some(format!("ClusterIP is outside the Service CIDR {c}"))
        } else {
            None
        };
        match why {
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
                    endpoints: port_endpoints(feeds, (&p.name, p.protocol), this_node, service_cidr),
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
fn unique_frontends(mut ports: Vec<ServicePort>, refused: &mut BTreeSet<Refused>) -> Vec<ServicePort> {
    ports.sort_by(|a, b| a.frontend.cmp(&b.frontend));
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
