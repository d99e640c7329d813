//! weftd: weft's userspace switch.
//!
//! The crate is laid out as the data flows; `switch/README.md` draws it.
//!
//! - [`core`]: the switching logic of one worker, with no I/O, no clock and no
//!   locks: frames in, sends out through a [`core::Sink`], time passed in.
//! - [`crypto`]: the encrypted sleeve's sessions: a Noise handshake, rekeying and
//!   the session keys, with no I/O and time passed in.
//! - [`tables`]: the forwarding snapshot the control plane publishes and the
//!   workers read (ports, peers, the FIB), and the counters.
//! - [`io`]: worker threads running the core over TAP queues and tunnel sockets.
//! - [`control`]: the daemon around them: pods, peers, the control socket, the
//!   host's netlink, the cluster store.
//! - [`services`]: ClusterIP Services in the switch: the table the control plane
//!   compiles for the datapath.
//! - `sim` (feature `sim`): an in-memory cluster of cores with a simulated clock
//!   and wire, for tests.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]
pub mod control;
pub mod core;
pub mod crypto;
pub mod io;
pub mod mac;
pub mod netpol;
pub mod services;
#[cfg(feature = "sim")]
pub mod sim;
pub mod tables;
