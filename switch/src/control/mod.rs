//! The control plane: the daemon around the workers.
//!
//! - [`daemon`]: the daemon's state, the workers it runs, the snapshots it publishes;
//! - [`pods`]: attach, detach, check, GC, restore after a restart;
//! - [`peers`]: the other nodes, from the cluster [`store`];
//! - [`netpol_source`]: NetworkPolicy from its source, compiled and published;
//!   [`explain`]: `weft policy explain`, through a ClusterIP's translation too;
//! - [`saved`]: the last good view (nodes, policy, Services) in the state directory, which a
//!   node whose store is unreachable as it starts starts from;
//! - [`api`]: requests in, responses out; [`server`]: the socket and the signals;
//! - [`metrics`]: `/metrics` for Prometheus; [`logs`]: text or JSON logs;
//!   [`flows`]: policy's verdicts for `weft flows`;
//! - [`host`]: the host operations (netlink, netns, TAP) behind a trait;
//! - [`netns`]: a pod's network namespace opened by its path, checked, and its
//!   identity;
//! - [`config`]: settings; [`netlink`]: links, addresses, routes; [`routes`]: the
//!   host routes of direct routing; [`masquerade`]: the egress masquerade.

pub mod api;
pub mod config;
pub mod daemon;
pub mod error;
pub mod explain;
pub mod flows;
pub mod host;
pub mod keys;
pub mod logs;
pub mod masquerade;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod netpol_source;
pub mod peers;
pub mod pods;
pub mod routes;
pub mod saved;
pub mod server;
pub mod services;
pub mod store;
