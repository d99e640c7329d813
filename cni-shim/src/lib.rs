//! weft's CNI plugin and the control protocol it shares with `weftd`.
//!
//! The plugin is thin: it parses the CNI environment and stdin, makes one request to
//! the daemon over its Unix socket ([`proto`]) and prints the result.

pub mod proto;
