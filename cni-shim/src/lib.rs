//! weft's CNI plugin.
//!
//! The plugin is thin: it parses the CNI environment ([`env`]) and the network config
//! on stdin ([`config`]), makes one request to the daemon over its Unix socket (the
//! control protocol, crate `weft-proto`), and prints the result in the config's spec
//! version ([`result`]) or an error with its CNI code ([`error`]). [`plugin::run`]
//! ties it together.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]
pub mod config;
pub mod env;
pub mod error;
pub mod plugin;
pub mod result;
pub mod version;

/// The control protocol, which the plugin speaks to weftd.
pub use weft_proto as proto;
