//! weft-perf: the benchmarking harness, and the network-namespace fixtures (hosts, pods,
//! an underlay, kernel baselines) that weft's integration tests build on.
//!
//! The fixtures are [`netns`], [`topo`], [`traffic`] and [`weft`]; [`cni`] runs CNI
//! plugins as a runtime does. [`harness`] is what `weft-perf run` and `demo` drive:
//! weft and the kernel baselines plumbed in turn onto one cluster, measured, reported.
//! [`scale`] is `weft-perf scale` and `heartbeats`: one weftd fed a large cluster
//! through its store, and the idle cost of its heartbeats.
//!
//! Two hosts running flannel-style kernel VXLAN, one pod on each (needs root):
//!
//! ```no_run
//! use weft_perf::topo::{kernel_vxlan, Underlay};
//!
//! # fn main() -> anyhow::Result<()> {
//! let underlay = Underlay::new("demo", 2)?; // namespaces wdemow-<pid>-<n>, wdemoh0-…
//! kernel_vxlan::mesh(&underlay)?; // flannel.1, cni0, routes/neigh/fdb to every other host
//! let (h0, h1) = (underlay.host(0), underlay.host(1));
//! let a = underlay.pod(0, "a")?;
//! let b = underlay.pod(1, "b")?;
//! kernel_vxlan::attach_pod(h0, &a, h0.pod_ip(2))?;
//! kernel_vxlan::attach_pod(h1, &b, h1.pod_ip(2))?;
//! a.ns.ping(h1.pod_ip(2), 2)?;
//! let server = b.ns.spawn(&["sleep", "1000"])?; // stopped (TERM, then KILL) on drop
//! # drop(server);
//! # Ok(())
//! # }
//! // Dropping `underlay`, `a` and `b` deletes every namespace and link.
//! ```

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod apiserver;
pub mod cni;
pub mod etcd;
pub mod harness;
pub mod iperf;
pub mod join;
pub mod kubeproxy;
pub mod netns;
pub mod pidfile;
pub mod probe;
pub mod procfs;
pub mod scale;
pub mod stop;
pub mod topo;
pub mod traffic;
pub mod wake;
pub mod weft;
