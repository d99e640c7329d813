//! ClusterIP Services in the switch (`services = "switch"`): what the control plane
//! hands the datapath, and where it comes from.
//!
//! A store holds Services and EndpointSlices as objects, as it holds Pods and
//! NetworkPolicies; the control plane reads them into a model and compiles it, for
//! this node, into a [`ServiceTable`]: every ClusterIP port with the endpoints a
//! connection to it may be given. The workers take the table with the forwarding
//! snapshot; the source pod's egress translates a ClusterIP:port to one endpoint
//! chosen by a consistent hash, and the connection table translates the replies
//! back. NodePort and LoadBalancer Services stay with kube-proxy.
//!
//! This module holds the table, the contract between the two halves: the model and
//! its compiler fill it, the core reads it. Everything in it is checked when it is
//! made ([`ServiceTable::check`]), so the core trusts it.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;

pub mod compile;
pub mod model;
pub mod read;
pub mod recheck;

/// An IP protocol a Service port may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl Protocol {
    /// Its IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

/// What a Service port is reached at: a ClusterIP, a port and a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// The ClusterIP.
    pub ip: Ipv4Addr,
    /// The Service's `port`.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
}

/// How an endpoint may be used, from its EndpointSlice's conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Readiness {
    /// `ready`: used for new connections.
    Ready,
    /// `serving` and `terminating`, not ready: used for new connections only when
    /// the port has no ready endpoint, as kube-proxy does.
    ServingTerminating,
}

/// One endpoint of a Service port: a pod's address and the resolved target port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The port on the pod (a named `targetPort` resolved against the pod's ports).
    pub port: u16,
    /// Whether it takes new connections now, or only when nothing ready is left.
    pub readiness: Readiness,
    /// Whether it is on this node (its EndpointSlice's `nodeName` is this node's).
    pub local: bool,
}

/// One port of a ClusterIP Service, and its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Where it is reached.
    pub frontend: Frontend,
    /// The Service and port, for logs, counters and `weft services`:
    /// `namespace/name:port-name` (or `:port` for an unnamed port).
    pub name: Arc<str>,
    /// Its endpoints, sorted, each once; those neither ready nor serving are left out
    /// by the compiler, and so are those it refused (see [`ServiceTable::check`]).
    pub endpoints: Vec<Endpoint>,
    /// `sessionAffinity: ClientIP`, with its timeout: a client's new connections go
    /// to the endpoint its last one went to, until it has been idle that long.
    pub affinity: Option<Duration>,
    /// `internalTrafficPolicy: Local`: only endpoints on this node are used; with
    /// none, connections are dropped (not refused), as Kubernetes specifies.
    pub internal_local: bool,
}

/// Every ClusterIP port the switch translates on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTable {
    /// The Service CIDR: a packet to an address in it that no port of the table
    /// matches is refused (ICMP unreachable), since no pod may hold such an address.
    pub cidr: Option<Ipv4Net>,
    /// The ports, sorted by frontend, each frontend once.
    pub ports: Vec<ServicePort>,
}

/// Why a table cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// Two ports share a frontend.
    #[error("two Service ports at {0:?}")]
    Duplicate(Frontend),
    /// The ports are not sorted by frontend.
    #[error("the Service ports are not sorted")]
    Unsorted,
    /// An endpoint no connection may be given.
    #[error("{port}: endpoint {ip} is refused: {why}")]
    BadEndpoint {
        /// The Service port.
        port: Arc<str>,
        /// Its address.
        ip: Ipv4Addr,
        /// Why.
        why: &'static str,
    },
    /// A ClusterIP outside the Service CIDR.
    #[error("{port}: ClusterIP {ip} is outside the Service CIDR {cidr}")]
    OutsideCidr {
        /// The Service port.
        port: Arc<str>,
        /// Its ClusterIP.
        ip: Ipv4Addr,
        /// The CIDR.
        cidr: Ipv4Net,
    },
}

/// Why `ip` may not be an endpoint, in a cluster whose Service CIDR is `cidr`: an
/// endpoint on loopback, link-local, multicast, broadcast or unspecified addresses,
/// or inside the Service CIDR, would turn a Service into a way to reach the node
/// itself or another Service (CVE-2021-25740's class of attack).
pub fn refuse_endpoint(ip: Ipv4Addr, cidr: Option<Ipv4Net>) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_broadcast() || ip.is_unspecified() {
        Some("not a unicast address")
    } else if cidr.is_some_and(|c| c.contains(&ip)) {
        Some("inside the Service CIDR")
    } else {
        None
    }
}

impl ServiceTable {
    /// Checks what the core relies on: ports sorted by frontend, each once; every
    /// ClusterIP inside the CIDR (when there is one); no endpoint that
    /// [`refuse_endpoint`] refuses.
    pub fn check(&self) -> Result<(), TableError> {
        for pair in self.ports.windows(2) {
            match pair[0].frontend.cmp(&pair[1].frontend) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Err(TableError::Duplicate(pair[0].frontend)),
                std::cmp::Ordering::Greater => return Err(TableError::Unsorted),
            }
        }
        for p in &self.ports {
            if let Some(cidr) = self.cidr.filter(|c| !c.contains(&p.frontend.ip)) {
                return Err(TableError::OutsideCidr {
                    port: p.name.clone(),
                    ip: p.frontend.ip,
                    cidr,
                });
            }
            for e in &p.endpoints {
                if let Some(why) = refuse_endpoint(e.ip, self.cidr) {
                    return Err(TableError::BadEndpoint {
                        port: p.name.clone(),
                        ip: e.ip,
                        why,
                    });
                }
            }
        }
        Ok(())
    }

    /// The port at `frontend`, if there is one.
    pub fn port(&self, frontend: &Frontend) -> Option<&ServicePort> {
        let at = self
            .ports
            .binary_search_by(|p| p.frontend.cmp(frontend))
            .ok()?;
        Some(&self.ports[at])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(ip: [u8; 4], endpoints: &[[u8; 4]]) -> ServicePort {
        ServicePort {
            frontend: Frontend {
                ip: Ipv4Addr::from(ip),
                port: 80,
                protocol: Protocol::Tcp,
            },
            name: Arc::from("default/web:http"),
            endpoints: (endpoints.iter())
                .map(|&ip| Endpoint {
                    ip: Ipv4Addr::from(ip),
                    port: 8080,
                    readiness: Readiness::Ready,
                    local: false,
                })
                .collect(),
            affinity: None,
            internal_local: false,
        }
    }

    #[test]
    fn endpoints_that_would_reach_the_node_or_a_service_are_refused() {
        let cidr = Some("10.96.0.0/12".parse().unwrap());
        for (ip, refused) in [
            ([10, 244, 1, 5], false),
            ([127, 0, 0, 1], true),
            ([169, 254, 169, 254], true),
            ([224, 0, 0, 1], true),
            ([255, 255, 255, 255], true),
            ([0, 0, 0, 0], true),
            ([10, 96, 0, 1], true),
        ] {
            let ip = Ipv4Addr::from(ip);
            assert_eq!(refuse_endpoint(ip, cidr).is_some(), refused, "{ip}");
        }
    }

    #[test]
    fn a_table_is_checked_whole() {
        let mut t = ServiceTable {
            cidr: Some("10.96.0.0/12".parse().unwrap()),
            ports: vec![
                port([10, 96, 0, 1], &[[10, 244, 1, 5]]),
                port([10, 96, 0, 2], &[]),
            ],
        };
        assert_eq!(t.check(), Ok(()));
        let f = t.ports[1].frontend;
        assert_eq!(t.port(&f).map(|p| p.frontend), Some(f));
        t.ports.swap(0, 1);
        assert_eq!(t.check(), Err(TableError::Unsorted));
        t.ports[0] = port([10, 96, 0, 1], &[]);
        assert!(matches!(t.check(), Err(TableError::Duplicate(_))));
        t.ports = vec![port([10, 96, 0, 1], &[[127, 0, 0, 1]])];
        assert!(matches!(t.check(), Err(TableError::BadEndpoint { .. })));
        t.ports = vec![port([192, 168, 0, 1], &[])];
        assert!(matches!(t.check(), Err(TableError::OutsideCidr { .. })));
    }
}
