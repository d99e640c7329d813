//! Peers: the other nodes of the cluster, as the store lists them, with the counters
//! and health this node keeps for each.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use weft_cni::proto;

use crate::control::config::Settings;
use crate::control::daemon::Daemon;
use crate::control::error::DaemonError;
use crate::control::store::{ClusterView, NodeEntry};
use crate::io::clock;
use crate::tables::counters::Counters;
use crate::tables::health::{feature_names, PeerHealth};
use crate::tables::{PeerEntry, TunnelMode};

/// The peer entries of `nodes` (every node but this one). A peer that did not change
/// keeps its counters and health from `old`.
pub(crate) fn peer_entries(
    settings: &Settings,
    nodes: &[NodeEntry],
    old: &[PeerEntry],
) -> Vec<PeerEntry> {
    nodes
        .iter()
        .filter(|n| n.name != settings.node_name)
        .map(|n| {
            let addr = SocketAddrV4::new(n.underlay_ip, settings.port);
            let kept = old.iter().find(|p| p.name == n.name && p.addr == addr);
            PeerEntry {
                name: n.name.clone(),
                addr,
                subnet: n.pod_subnet,
                vtep_mac: n.vtep_mac,
                counters: kept.map_or_else(
                    || Arc::new(Counters::new(settings.workers)),
                    |p| p.counters.clone(),
                ),
                health: kept.map_or_else(
                    || Arc::new(PeerHealth::new(clock::now())),
                    |p| p.health.clone(),
                ),
            }
        })
        .collect()
}

impl Daemon {
    /// Applies a new view of the cluster from the store: its peers, and its policy
    /// objects if it has them. Returns whether the peers changed.
    pub fn apply_view(&self, view: &ClusterView) -> Result<bool, DaemonError> {
        if let Some(policy) = &view.policy {
            self.apply_store_policy(policy)?;
        }
        let mut state = self.state.lock();
        let peers = peer_entries(&self.settings, &view.nodes, &state.peers);
        let same = peers.len() == state.peers.len()
            && peers.iter().zip(&state.peers).all(|(a, b)| {
                a.name == b.name
                    && a.addr == b.addr
                    && a.subnet == b.subnet
                    && a.vtep_mac == b.vtep_mac
            });
        if same {
            return Ok(false);
        }
        let old = std::mem::replace(&mut state.peers, peers);
        if let Err(e) = self.publish(&mut state) {
            state.peers = old;
            return Err(e);
        }
        let names: Vec<&str> = state.peers.iter().map(|p| p.name.as_str()).collect();
        log::info!("peers now: {}", names.join(", "));
        Ok(true)
    }

    /// Rereads the store and applies it. Returns whether anything changed.
    pub fn reload_peers(&self) -> Result<bool, DaemonError> {
        let view = self.store.load()?;
        self.apply_view(&view)
    }

    /// The peers as the control protocol shows them, and a last row for datagrams
    /// from no known peer.
    pub(crate) fn peer_infos(&self) -> Vec<proto::PeerInfo> {
        let tables = self.tables();
        let now = clock::now();
        let answers_always = self.node.mode == TunnelMode::Sleeve;
        let mut out: Vec<_> = tables
            .peers
            .iter()
            .map(|p| {
                let h = p.health.snapshot(now, self.node.heartbeat, answers_always);
                let micros =
                    |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
                proto::PeerInfo {
                    name: p.name.clone(),
                    underlay: *p.addr.ip(),
                    pod_subnet: p.subnet.to_string(),
                    vtep_mac: p.vtep_mac.to_string(),
                    path: self.node.mode.to_string(),
                    counters: p.counters.snapshot().to_proto(),
                    health: Some(proto::PeerHealth {
                        state: h.state.name().into(),
                        last_heard_us: h.last_heard.map(micros),
                        rtt_us: h.rtt.map(micros),
                        features: feature_names(h.features),
                        heartbeats_sent: h.beats_sent,
                        heartbeats_received: h.beats_received,
                        echoes_sent: h.echoes_sent,
                        echoes_received: h.echoes_received,
                    }),
                }
            })
            .collect();
        out.push(proto::PeerInfo {
            name: "(unknown senders)".into(),
            underlay: Ipv4Addr::UNSPECIFIED,
            pod_subnet: String::new(),
            vtep_mac: String::new(),
            path: String::new(),
            counters: tables.tunnel.snapshot().to_proto(),
            health: None,
        });
        out
    }
}
