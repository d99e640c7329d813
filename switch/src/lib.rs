//! weftd: weft's userspace switch.
//!
//! The pure switching logic ([`datapath`], [`fib`], [`tables`]) is free of I/O and is
//! tested in memory; [`worker`] runs it over TAP queues and tunnel sockets, and
//! [`daemon`] is the control plane around it.

pub mod config;
pub mod counters;
pub mod daemon;
pub mod datapath;
pub mod fib;
pub mod mac;
pub mod netlink;
pub mod port;
pub mod spin;
pub mod tables;
pub mod tap;
pub mod udp;
pub mod worker;
