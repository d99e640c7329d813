//! Why the daemon could not start, or an operation failed.

use weft_proto::ErrorKind;

use crate::control::netlink::NetlinkError;
use crate::control::netns::NetnsError;
use crate::io::tap::TapError;
use crate::tables::{PortId, TablesError};

/// Why the daemon could not start or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Bad settings or peers file.
    #[error(transparent)]
    Config(#[from] crate::control::config::ConfigError),
    /// The node key or the pre-shared key could not be used.
    #[error("encryption: {0}")]
    Key(#[from] crate::control::keys::KeyError),
    /// The cluster store could not be read.
    #[error("cluster store: {0}")]
    Store(#[from] crate::control::store::StoreError),
    /// A TAP device could not be created.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// An AF_XDP port could not be made.
    #[error("AF_XDP port: {0}")]
    Afxdp(#[from] crate::io::xsk::PortError),
    /// Netlink or netns failure.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The egress masquerade could not be installed.
    #[error("egress masquerade: {0}")]
    Masquerade(#[from] crate::control::masquerade::MasqueradeError),
    /// The forwarding tables could not be built.
    #[error(transparent)]
    Tables(#[from] TablesError),
    /// The address pool failed.
    #[error("address pool: {0}")]
    Ipam(#[from] weft_ipam::Error),
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A request that cannot be served as asked.
    #[error("{0}")]
    Invalid(String),
    /// A worker could not add a port's queue to its epoll set.
    #[error("a worker could not poll a queue of port {0:?}; see the log")]
    QueueNotPolled(PortId),
    /// The daemon is shutting down.
    #[error("weftd is shutting down")]
    ShuttingDown,
    /// CHECK found the attachment missing or altered.
    #[error("check failed: {0}")]
    CheckFailed(String),
    /// A worker did not answer.
    #[error("worker {0} did not acknowledge within {ack:?}", ack = super::daemon::WORKER_ACK)]
    WorkerStuck(usize),
    /// A recorded pod is gone: its interface is no longer in its netns.
    #[error("{0}")]
    PodGone(String),
    /// An attachment record that cannot be read.
    #[error("{0}")]
    BadRecord(String),
    /// A Service table that cannot be used.
    #[error("Service table: {0}")]
    Services(#[from] crate::tables::services::ServicesError),
    /// A Service table for a node that leaves Services to kube-proxy.
    #[error("Services are kube-proxy's on this node ([host] services = \"kube-proxy\")")]
    ServicesOff,
}

impl DaemonError {
    /// The protocol's kind of this error, for the client to act on.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DaemonError::Invalid(_)
            | DaemonError::PodGone(_)
            | DaemonError::Tap(TapError::BadName(_)) => ErrorKind::InvalidArgument,
            DaemonError::Netlink(NetlinkError::Netns(e))
                if !matches!(e, NetnsError::Inspect { .. }) =>
            {
                ErrorKind::InvalidArgument
            }
            DaemonError::Netlink(NetlinkError::Setns { .. }) => ErrorKind::InvalidArgument,
            DaemonError::Ipam(weft_ipam::Error::Exhausted { .. }) => ErrorKind::Exhausted,
            DaemonError::Ipam(
                weft_ipam::Error::OutOfRange { .. }
                | weft_ipam::Error::Reserved { .. }
                | weft_ipam::Error::AlreadyAllocated { .. }
                | weft_ipam::Error::KeyHoldsOther { .. }
                | weft_ipam::Error::InvalidKey { .. },
            ) => ErrorKind::InvalidArgument,
            DaemonError::WorkerStuck(_) | DaemonError::ShuttingDown => ErrorKind::Unavailable,
            DaemonError::CheckFailed(_) => ErrorKind::CheckFailed,
            _ => ErrorKind::Internal,
        }
    }
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}
