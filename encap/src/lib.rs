//! weft wire formats: Ethernet, ARP, IPv4 and IPv6 with ICMP and Neighbor
//! Discovery, VXLAN, the sleeve framing, internet checksums, and the
//! virtio-net header of TAP offloads with segmentation (GSO) and receive
//! coalescing (GRO) of its super-frames.
//!
//! Everything here is a pure function over byte slices: no I/O, no clocks and
//! no allocation in any parse or emit path, so the formats can be unit tested,
//! property tested and fuzzed in isolation.
//!
//! The formats follow the layout of smoltcp's `wire` module: each header has a
//! zero-copy view, `Packet<T: AsRef<[u8]>>`, whose byte ranges live in a private
//! `field` module, with getters available on any buffer and setters on mutable
//! ones; next to it a plain `Repr` struct is parsed from and emitted into that
//! view. Each module documents its own panic rules; they all have this shape:
//!
//! - once `Packet::new_checked` (or `check_len`) has succeeded, no accessor of
//!   that packet panics;
//! - `Repr::parse` and the module's free `parse` function never panic, whatever
//!   the input;
//! - `Repr::emit` never panics when the packet's buffer is at least
//!   `Repr::buffer_len()` bytes long.
//!
//! Functions that can panic say so in a `# Panics` section.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod flow;
pub mod gro;
pub mod gso;
pub mod icmpv4;
pub mod icmpv6;
mod inet;
pub mod ipv4;
pub mod ipv6;
pub mod nat;
pub mod sleeve;
pub mod tcp;
#[cfg(test)]
mod testutil;
pub mod udp;
pub mod virtio;
pub mod vxlan;

/// Length of an Ethernet II header: destination MAC, source MAC, ethertype.
pub const ETHERNET_HEADER_LEN: usize = ethernet::HEADER_LEN;
/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = ipv4::HEADER_LEN;
/// Length of the IPv6 fixed header.
pub const IPV6_HEADER_LEN: usize = ipv6::HEADER_LEN;
/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = udp::HEADER_LEN;

/// Byte ranges shared by the per-format `field` modules.
mod field {
    /// A fixed-size field: its byte range within the header.
    pub type Field = core::ops::Range<usize>;
    /// A field that runs to the end of the buffer.
    pub type Rest = core::ops::RangeFrom<usize>;
}
