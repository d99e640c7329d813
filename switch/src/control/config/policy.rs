//! `[policy]`: where NetworkPolicy comes from, and the connections it tracks.

use std::path::PathBuf;

use serde::Deserialize;

use super::StoreKind;

/// Connections each worker tracks by default.
pub const DEFAULT_CONNTRACK_MAX: usize = 16_384;
/// The fewest connections a worker may be told to track.
pub const MIN_CONNTRACK: usize = 16;
/// The most connections a worker may be told to track.
pub const MAX_CONNTRACK: usize = 1 << 22;
/// The share of a worker's connection table one source address may hold by
/// default, in percent.
pub const DEFAULT_CONNTRACK_SHARE: u8 = 50;

/// `[policy]` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PolicyOptions {
    /// A directory of Kubernetes YAML (Namespaces, Pods, NetworkPolicies), watched;
    /// the policy of the embedded store.
    #[arg(id = "policy_dir", long = "policy-dir", value_name = "POLICY_DIR")]
    pub dir: Option<PathBuf>,
    /// Connections each worker tracks for NetworkPolicy, at most; new connections
    /// of policy-isolated pods beyond it are dropped and counted [default: 16384].
    #[arg(long)]
    pub conntrack_max: Option<usize>,
    /// The most of a worker's connection table that one source address (a pod, or
    /// what the host forwards) may hold, in percent of conntrack-max; its new
    /// connections beyond it replace its own oldest not yet established, or are
    /// dropped and counted [default: 50].
    #[arg(long)]
    pub conntrack_share: Option<u8>,
}

/// A bad `[policy]` setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyConfigError {
    /// A policy directory on the etcd store.
    #[error(
        "invalid [policy] dir (--policy-dir): with store = \"etcd\", policy objects live in etcd (deploy/STORE.md)"
    )]
    DirWithEtcd,
    /// A policy directory on the Kubernetes store.
    #[error(
        "invalid [policy] dir (--policy-dir): with store = \"kubernetes\", policy objects come from the API server"
    )]
    DirWithKubernetes,
    /// A connection table size out of bounds.
    #[error("invalid [policy] conntrack-max (--conntrack-max): {0}: between {MIN_CONNTRACK} and {MAX_CONNTRACK}")]
    ConntrackMax(usize),
    /// A share of the connection table out of bounds.
    #[error("invalid [policy] conntrack-share (--conntrack-share): {0}: a percentage, between 1 and 100")]
    ConntrackShare(u8),
}

/// Where policy comes from, and the connection tables' size, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySettings {
    /// The watched directory of policy manifests, if any.
    pub dir: Option<PathBuf>,
    /// Connections each worker tracks, at most.
    pub conntrack_max: usize,
    /// Connections one source address may hold in a worker's table, at most.
    pub conntrack_share: usize,
}

impl PolicyOptions {
    /// Checks the settings against the store and applies defaults.
    pub fn resolve(self, store: StoreKind) -> Result<PolicySettings, PolicyConfigError> {
        match store {
            _ if self.dir.is_none() => {}
            StoreKind::Etcd => return Err(PolicyConfigError::DirWithEtcd),
            StoreKind::Kubernetes => return Err(PolicyConfigError::DirWithKubernetes),
            StoreKind::File => {}
        }
        let conntrack_max = self.conntrack_max.unwrap_or(DEFAULT_CONNTRACK_MAX);
        if !(MIN_CONNTRACK..=MAX_CONNTRACK).contains(&conntrack_max) {
            return Err(PolicyConfigError::ConntrackMax(conntrack_max));
        }
        let percent = self.conntrack_share.unwrap_or(DEFAULT_CONNTRACK_SHARE);
        if !(1..=100).contains(&percent) {
            return Err(PolicyConfigError::ConntrackShare(percent));
        }
        Ok(PolicySettings {
            dir: self.dir,
            conntrack_max,
            conntrack_share: (conntrack_max * usize::from(percent) / 100).max(1),
        })
    }
}
