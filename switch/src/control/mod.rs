//! The control plane: configuration, the daemon, netlink.

pub mod config;
pub mod daemon;
pub mod netlink;
