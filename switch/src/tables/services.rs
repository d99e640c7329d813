//! The Service table as the workers read it (`services = "switch"`): the control
//! plane's [`ServiceTable`] with, for every port, the endpoints a new connection may
//! be given and a [Maglev](super::maglev) table over them, built once per change of
//! the table, off the datapath.
//!
//! Which endpoints a new connection may be given, as kube-proxy chooses: the ready
//! ones; the serving and terminating ones only when no ready one is left; with
//! `internalTrafficPolicy: Local`, the same among those on this node only.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use super::maglev::{fmix64, size_for, Maglev, MaglevError, SIZES};
use crate::core::conntrack::FlowKey;
use crate::services::{Frontend, Protocol, Readiness, ServicePort, ServiceTable, TableError};

/// One port's endpoints for new connections, and its lookup table over them.
#[derive(Debug, Clone)]
struct Usable {
    /// Address and target port, sorted, each once.
    endpoints: Vec<(Ipv4Addr, u16)>,
    /// Over `endpoints`; none when there is none.
    maglev: Option<Maglev>,
}

/// What a new connection to a port is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// This endpoint: its address and target port.
    Endpoint(Ipv4Addr, u16),
    /// Nothing: the port has no usable endpoint, and the connection is refused.
    Refuse,
    /// Nothing, silently: `internalTrafficPolicy: Local` with no endpoint on this
    /// node, which Kubernetes specifies drops.
    Drop,
}

/// Why a Service table cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServicesError {
    /// The table fails its own check.
    #[error(transparent)]
    Table(#[from] TableError),
    /// A table for another Service CIDR than this node's.
    #[error("the Service table is for {table:?}, this node's Service CIDR is {node}")]
    Cidr {
        /// The table's.
        table: Option<Ipv4Net>,
        /// This node's setting.
        node: Ipv4Net,
    },
    /// A port with more endpoints than Maglev's table takes.
    #[error("{port}: {source}")]
    Maglev {
        /// The Service port.
        port: Arc<str>,
        /// Why.
        source: MaglevError,
    },
}

/// The compiled Service table of one snapshot.
#[derive(Debug)]
pub struct Services {
    table: Arc<ServiceTable>,
    cidr: Ipv4Net,
    /// Parallel to `table.ports`.
    usable: Vec<Usable>,
    /// The key of the flow hash that picks an endpoint: random per process, so that
    /// a pod cannot choose its ports to aim at one endpoint.
    seed: u64,
    /// Counts the tables this node has compiled: a worker that sees it change drops
    /// the UDP translations to endpoints that are gone.
    generation: u64,
}

/// Whether a port whose Maglev table has `m` slots keeps that size for `n`
/// endpoints: Maglev moves few connections when a backend comes or goes only
/// between tables of one size, so a port keeps its size while it is big enough
/// (the size [`size_for`] gives, or larger) and at most one step larger than it;
/// it grows as soon as it is too small, and shrinks after losing most endpoints.
fn keeps(m: usize, n: usize) -> bool {
    let step = |m: usize| SIZES.iter().position(|&s| s == m);
    match (step(m), step(size_for(n))) {
        (Some(have), Some(want)) => have == want || have == want + 1,
        _ => false,
    }
}

/// The endpoints of `port` a new connection may be given.
fn usable(port: &ServicePort) -> Vec<(Ipv4Addr, u16)> {
    let candidates = || (port.endpoints.iter()).filter(|e| !port.internal_local || e.local);
    let ready = candidates().any(|e| e.readiness == Readiness::Ready);
    let wanted = if ready {
        Readiness::Ready
    } else {
        Readiness::ServingTerminating
    };
    let mut out: Vec<(Ipv4Addr, u16)> = candidates()
        .filter(|e| e.readiness == wanted)
        .map(|e| (e.ip, e.port))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

impl Services {
    /// Compiles `table` for a node whose Service CIDR is `cidr`, hashing flows with
    /// `seed`; `generation` tells this table from the node's earlier ones, and
    /// `previous` is the table in force, whose Maglev sizes are kept where they
    /// still fit ([`keeps`]).
    pub fn compile(
        table: Arc<ServiceTable>,
        cidr: Ipv4Net,
        seed: u64,
        generation: u64,
        previous: Option<&Services>,
    ) -> Result<Services, ServicesError> {
        // A table that names no CIDR is held to this node's.
        let table = match table.cidr {
            None => Arc::new(ServiceTable {
                cidr: Some(cidr),
                ..(*table).clone()
            }),
            Some(c) if c != cidr => {
                return Err(ServicesError::Cidr {
                    table: Some(c),
                    node: cidr,
                })
            }
            Some(_) => table,
        };
        table.check()?;
        let usable = (table.ports.iter())
            .map(|p| {
                let endpoints = usable(p);
                let size = (previous.and_then(|s| s.size_of(&p.frontend)))
                    .filter(|&m| keeps(m, endpoints.len()))
                    .unwrap_or_else(|| size_for(endpoints.len()));
                let maglev = Maglev::with_size(&endpoints, size).map_err(|source| {
                    ServicesError::Maglev {
                        port: p.name.clone(),
                        source,
                    }
                })?;
                Ok(Usable { endpoints, maglev })
            })
            .collect::<Result<_, ServicesError>>()?;
        Ok(Services {
            table,
            cidr,
            usable,
            seed,
            generation,
        })
    }

    /// The size of the Maglev table of the port at `frontend`, if it has one.
    fn size_of(&self, frontend: &Frontend) -> Option<usize> {
        let i = self.find(frontend)?;
        self.usable[i].maglev.as_ref().map(Maglev::size)
    }

    /// The table it was compiled from.
    pub fn table(&self) -> &Arc<ServiceTable> {
        &self.table
    }

    /// The Service CIDR.
    #[inline]
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// Which of the node's tables this is.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The index of the port at `frontend`.
    #[inline]
    pub fn find(&self, frontend: &Frontend) -> Option<usize> {
        (self.table.ports)
            .binary_search_by(|p| p.frontend.cmp(frontend))
            .ok()
    }

    /// Whether some port is at ClusterIP `ip`.
    pub fn holds(&self, ip: Ipv4Addr) -> bool {
        let at = (self.table.ports).partition_point(|p| p.frontend.ip < ip);
        self.table
            .ports
            .get(at)
            .is_some_and(|p| p.frontend.ip == ip)
    }

    /// The port at index `i`.
    #[inline]
    pub fn port(&self, i: usize) -> &ServicePort {
        &self.table.ports[i]
    }

    /// The endpoint port `i` gives the new connection `key` (from a client to the
    /// frontend), by its flow hash.
    #[inline]
    pub fn choose(&self, i: usize, key: FlowKey) -> Choice {
        let u = &self.usable[i];
        match &u.maglev {
            Some(m) => {
                let (ip, port) = u.endpoints[m.lookup(self.flow_hash(key))];
                Choice::Endpoint(ip, port)
            }
            None if self.table.ports[i].internal_local => Choice::Drop,
            None => Choice::Refuse,
        }
    }

    /// Whether port `i` would give a new connection the endpoint `ip:port`.
    #[inline]
    pub fn is_usable(&self, i: usize, ip: Ipv4Addr, port: u16) -> bool {
        self.usable[i].endpoints.binary_search(&(ip, port)).is_ok()
    }

    /// Whether `ip:port` is still an endpoint of port `i` at all (usable or not).
    pub fn is_endpoint(&self, i: usize, ip: Ipv4Addr, port: u16) -> bool {
        (self.table.ports[i].endpoints.iter()).any(|e| e.ip == ip && e.port == port)
    }

    /// The hash of a connection's 5-tuple that picks its endpoint, keyed by the
    /// process's seed.
    #[inline]
    fn flow_hash(&self, key: FlowKey) -> u64 {
        let addrs = u64::from(key.src) << 32 | u64::from(key.dst);
        let ports = u64::from(key.sport) << 32 | u64::from(key.dport) << 16 | u64::from(key.proto);
        fmix64(fmix64(addrs ^ self.seed) ^ ports)
    }
}

/// The protocol of IP protocol number `n`, if a Service port may carry it.
#[inline]
pub fn protocol_of(n: u8) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

/// A random seed for [`Services::compile`], from the process's random hash keys.
pub fn random_seed() -> u64 {
    std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0x5e_u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::Endpoint;

    fn endpoint(last: u8, readiness: Readiness, local: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 244, 1, last),
            port: 8080,
            readiness,
            local,
        }
    }

    fn port(endpoints: Vec<Endpoint>, internal_local: bool) -> ServicePort {
        ServicePort {
            frontend: Frontend {
                ip: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                protocol: Protocol::Tcp,
            },
            name: Arc::from("default/web:http"),
            endpoints,
            affinity: None,
            internal_local,
        }
    }

    fn compile(ports: Vec<ServicePort>) -> Result<Services, ServicesError> {
        let cidr = "10.96.0.0/12".parse().unwrap();
        let table = ServiceTable {
            cidr: Some(cidr),
            ports,
        };
        Services::compile(Arc::new(table), cidr, 1, 1, None)
    }

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: u32::from(Ipv4Addr::new(10, 244, 2, 5)),
            dst: u32::from(Ipv4Addr::new(10, 96, 0, 10)),
            sport,
            dport: 80,
            proto: 6,
            icmp: 0,
        }
    }

    #[test]
    fn serving_terminating_endpoints_only_when_none_is_ready() {
        use Readiness::*;
        let both = vec![
            endpoint(5, Ready, false),
            endpoint(6, ServingTerminating, false),
        ];
        let s = compile(vec![port(both, false)]).unwrap();
        assert!(s.is_usable(0, Ipv4Addr::new(10, 244, 1, 5), 8080));
        assert!(!s.is_usable(0, Ipv4Addr::new(10, 244, 1, 6), 8080));
        assert!(s.is_endpoint(0, Ipv4Addr::new(10, 244, 1, 6), 8080));
        let terminating = vec![endpoint(6, ServingTerminating, false)];
        let s = compile(vec![port(terminating, false)]).unwrap();
        assert_eq!(
            s.choose(0, key(1)),
            Choice::Endpoint(Ipv4Addr::new(10, 244, 1, 6), 8080)
        );
    }

    #[test]
    fn internal_local_uses_local_endpoints_and_drops_without_one() {
        use Readiness::*;
        let remote_only = vec![endpoint(5, Ready, false)];
        let s = compile(vec![port(remote_only.clone(), true)]).unwrap();
        assert_eq!(s.choose(0, key(1)), Choice::Drop);
        // Without the policy, the same port refuses only when it has nothing.
        let s = compile(vec![port(remote_only, false)]).unwrap();
        assert!(matches!(s.choose(0, key(1)), Choice::Endpoint(..)));
        let s = compile(vec![port(Vec::new(), false)]).unwrap();
        assert_eq!(s.choose(0, key(1)), Choice::Refuse);
        // A local serving-terminating one is used before a remote ready one.
        let mixed = vec![
            endpoint(5, Ready, false),
            endpoint(6, ServingTerminating, true),
        ];
        let s = compile(vec![port(mixed, true)]).unwrap();
        for p in 0..100 {
            assert_eq!(
                s.choose(0, key(p)),
                Choice::Endpoint(Ipv4Addr::new(10, 244, 1, 6), 8080)
            );
        }
    }

    #[test]
    fn a_table_for_another_cidr_or_with_bad_endpoints_is_refused() {
        let cidr: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        let other = ServiceTable {
            cidr: Some("10.100.0.0/16".parse().unwrap()),
            ports: Vec::new(),
        };
        assert!(matches!(
            Services::compile(Arc::new(other), cidr, 1, 1, None),
            Err(ServicesError::Cidr { .. })
        ));
        // A table that names no CIDR is checked against the node's.
        let mut p = port(vec![endpoint(5, Readiness::Ready, false)], false);
        p.endpoints[0].ip = Ipv4Addr::new(10, 96, 0, 99);
        let none = ServiceTable {
            cidr: None,
            ports: vec![p.clone()],
        };
        assert!(matches!(
            Services::compile(Arc::new(none), cidr, 1, 1, None),
            Err(ServicesError::Table(TableError::BadEndpoint { .. }))
        ));
        p.endpoints.clear();
        p.frontend.ip = Ipv4Addr::new(192, 168, 0, 1);
        let outside = ServiceTable {
            cidr: None,
            ports: vec![p],
        };
        assert!(matches!(
            Services::compile(Arc::new(outside), cidr, 1, 1, None),
            Err(ServicesError::Table(TableError::OutsideCidr { .. }))
        ));
    }

    /// A port that loses an endpoint keeps its table's size, so Maglev moves only
    /// the connections it must; one that outgrows its table gets a bigger one.
    #[test]
    fn a_port_keeps_its_maglev_size_while_it_fits() {
        use Readiness::Ready;
        let three: Vec<Endpoint> = (5..8).map(|i| endpoint(i, Ready, false)).collect();
        let first = compile(vec![port(three.clone(), false)]).unwrap();
        assert_eq!(first.size_of(&port(Vec::new(), false).frontend), Some(509));
        let cidr: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        let table = |e: &[Endpoint]| {
            Arc::new(ServiceTable {
                cidr: Some(cidr),
                ports: vec![port(e.to_vec(), false)],
            })
        };
        let f = port(Vec::new(), false).frontend;
        let two = Services::compile(table(&three[..2]), cidr, 1, 2, Some(&first)).unwrap();
        assert_eq!(two.size_of(&f), Some(509));
        let fresh = Services::compile(table(&three[..2]), cidr, 1, 2, None).unwrap();
        assert_eq!(fresh.size_of(&f), Some(251));
        let many: Vec<Endpoint> = (5..60).map(|i| endpoint(i, Ready, false)).collect();
        let grown = Services::compile(table(&many), cidr, 1, 3, Some(&two)).unwrap();
        assert_eq!(grown.size_of(&f), Some(8_191));
        assert!(keeps(65_537, 1_000) && keeps(509, 3) && keeps(1_021, 3));
        assert!(!keeps(2_039, 3) && !keeps(251, 3) && !keeps(65_537, 3));
    }

    #[test]
    fn the_flow_hash_is_keyed_by_the_seed() {
        let ends: Vec<Endpoint> = (5..15)
            .map(|i| endpoint(i, Readiness::Ready, false))
            .collect();
        let cidr: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        let table = Arc::new(ServiceTable {
            cidr: Some(cidr),
            ports: vec![port(ends, false)],
        });
        let a = Services::compile(table.clone(), cidr, 1, 1, None).unwrap();
        let b = Services::compile(table, cidr, 2, 1, None).unwrap();
        let differ = (0..200)
            .filter(|&p| a.choose(0, key(p)) != b.choose(0, key(p)))
            .count();
        // With ten endpoints, two seeds agree on about a tenth of the flows.
        assert!(differ > 100, "{differ} of 200 differ");
    }
}
