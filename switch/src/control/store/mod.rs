//! Where a node learns the cluster: which nodes exist, their underlay addresses, pod
//! subnets and VTEP MACs. The store is behind [`ClusterStore`], so the daemon works
//! the same on the embedded default (a static file, [`file::FileStore`]) and on a
//! distributed store.

use std::sync::Arc;

use crate::control::config::{ConfigError, NodeEntry};

pub mod file;

/// The cluster as a store sees it at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Every node, this one included.
    pub nodes: Vec<NodeEntry>,
}

/// Why a store could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The static file is unreadable or invalid.
    #[error(transparent)]
    File(#[from] ConfigError),
}

/// What a new view of the cluster is handed to.
pub type OnChange = Box<dyn Fn(ClusterView) + Send + Sync>;

/// A source of the cluster's membership.
pub trait ClusterStore: Send + Sync + std::fmt::Debug {
    /// The store's kind, for logs and STATUS.
    fn kind(&self) -> &'static str;

    /// The cluster now; the daemon reads it once as it starts.
    fn load(&self) -> Result<ClusterView, StoreError>;

    /// Watches the store on the control plane's runtime and calls `on_change` with
    /// every new view, until the task is aborted. A view that cannot be read is
    /// logged and skipped: the last good one stays in force.
    fn watch(self: Arc<Self>, on_change: OnChange) -> tokio::task::JoinHandle<()>;
}

/// A store with no nodes at all: a single node with no peers.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoStore;

impl ClusterStore for NoStore {
    fn kind(&self) -> &'static str {
        "none"
    }

    fn load(&self) -> Result<ClusterView, StoreError> {
        Ok(ClusterView::default())
    }

    fn watch(self: Arc<Self>, _on_change: OnChange) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }
}
