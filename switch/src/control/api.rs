//! The control API: one decoded request in, one response out (the framing is
//! `weft_proto`'s, `cni-shim/proto/PROTOCOL.md` describes every request).

use std::net::{SocketAddr, SocketAddrV4};

use weft_proto::{self as proto, ErrorReply, Reply, Request, Response};

use crate::control::config::Mode;
use crate::control::daemon::Daemon;
use crate::control::store::StoreHealth;
use crate::netpol::last_good;
use crate::tables::PortKind;

impl Daemon {
    /// Serves one decoded request.
    pub fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Attach(req) => self.attach(&req).map(Reply::Attached),
            Request::Detach(req) => {
                self.detach(&req)
                    .map(|(released_ip, released_ip6)| Reply::Detached {
                        released_ip,
                        released_ip6,
                    })
            }
            Request::Check(req) => self.check(&req).map(Reply::Checked),
            Request::Gc(req) => self
                .gc(&req.valid)
                .map(|released| Reply::Collected { released }),
            Request::Status => Ok(Reply::Status(Box::new(self.status()))),
            Request::Ports => Ok(Reply::Ports {
                ports: self.ports(),
            }),
            Request::Peers => Ok(Reply::Peers {
                peers: self.peer_infos(),
            }),
            Request::Routes => Ok(Reply::Routes {
                routes: self.routes(),
            }),
            Request::PolicyStatus => Ok(Reply::PolicyStatus(self.policy_status())),
            Request::PolicyPod(pod) => self.policy_pod(&pod).map(Reply::PolicyPod),
            Request::PolicyExplain(req) => self.policy_explain(&req).map(Reply::Explained),
            Request::Services => Ok(Reply::Services(self.services_status())),
            Request::Flows(req) => self
                .flows(&req)
                .map(|(flows, last)| Reply::Flows { flows, last }),
        };
        match result {
            Ok(reply) => Response::Ok(reply),
            Err(e) => {
                log::warn!("request failed: {e}");
                Response::Error(ErrorReply {
                    kind: e.kind(),
                    message: e.to_string(),
                })
            }
        }
    }

    pub(crate) fn status(&self) -> proto::Status {
        // Ready to serve ADD: not shutting down, the pool (and the IPv6 pool of a
        // dual-stack node) has a free address, and every worker goes round its loop.
        let held = self.pool.len();
        let free6 = (self.pool6.as_ref())
            .is_none_or(|p| p.len().is_ok_and(|n| u128::from(n) < p.capacity()));
        let stalled_workers = self.stalled_workers();
        let ready = !self.stopping()
            && held.is_ok_and(|n| u128::from(n) < self.pool.capacity())
            && free6
            && stalled_workers.is_empty();
        let state = self.state.lock();
        proto::Status {
            node: self.node.name.clone(),
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            mode: match (
                self.settings.tunnel.mode,
                self.settings.tunnel.direct_routing,
            ) {
                (Mode::Direct, _) | (_, false) => self.settings.tunnel.mode.to_string(),
                (m, true) => format!("{m}, direct routing"),
            },
            pod_subnet: self.node.subnet.to_string(),
            pod_subnet_v6: self.node.v6.map(|v6| v6.subnet.to_string()),
            cluster_cidr: self.node.cluster.to_string(),
            gateway: self.node.gateway,
            underlay: SocketAddr::V4(SocketAddrV4::new(
                self.settings.underlay_ip,
                self.settings.tunnel.port,
            )),
            workers: self.settings.datapath.workers,
            mtu: self.node.pod_mtu,
            pods: state.pods.len(),
            peers: state.peers.len(),
            ready,
            store: Some(self.store_status()),
            policy: Some(last_good::state(&state.policy.model, &state.policy.judged)),
            stalled_workers,
            conntrack: Some(self.conntrack_status()),
        }
    }

    fn conntrack_status(&self) -> proto::ConntrackStatus {
        let (live, overflow) = self.conntrack();
        proto::ConntrackStatus {
            entries: live,
            max_per_worker: self.settings.policy.conntrack_max as u64,
            share_per_worker: self.settings.policy.conntrack_share as u64,
            evicted: overflow.evicted,
            share_refused: overflow.over_share,
        }
    }

    fn store_status(&self) -> proto::StoreStatus {
        let (state, detail, degraded_ms) = match self.store.health() {
            StoreHealth::Ok => ("ok", None, None),
            StoreHealth::Degraded { since, why } => (
                "degraded",
                Some(why),
                Some(u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)),
            ),
        };
        proto::StoreStatus {
            kind: self.store.kind().into(),
            state: state.into(),
            detail,
            degraded_ms,
            objects: (self.store.objects().into_iter())
                .map(|(kind, n)| (kind.to_owned(), n))
                .collect(),
            from_saved: self.from_saved.lock().clone(),
        }
    }

    fn ports(&self) -> Vec<proto::PortInfo> {
        self.tables()
            .ports
            .iter()
            .map(|p| proto::PortInfo {
                kind: match p.kind {
                    PortKind::Host => "host".into(),
                    PortKind::Pod => "pod".into(),
                },
                name: p.name.clone(),
                container_id: p.container_id.clone(),
                netns: p.netns.clone(),
                ip: Some(p.ip),
                mac: p.mac.to_string(),
                counters: p.counters.snapshot().to_proto(),
                host_flows: (p.kind == PortKind::Host).then(|| {
                    let s = self.host_flows();
                    proto::HostFlows {
                        handed: s.handed,
                        returning: s.returning,
                        returned_total: s.returned_total,
                    }
                }),
            })
            .collect()
    }

    fn routes(&self) -> Vec<proto::RouteInfo> {
        let tables = self.tables();
        tables
            .fib
            .routes()
            .into_iter()
            .map(|(net, hop)| proto::RouteInfo {
                prefix: net.to_string(),
                next_hop: tables.describe(hop),
            })
            .collect()
    }
}
