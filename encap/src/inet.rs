//! Byte offsets and small helpers for the Ethernet, IPv4, TCP and UDP headers
//! that segmentation and coalescing rewrite in place.
//!
//! Every function here indexes its slice directly: callers check lengths
//! first, and each function says what it needs.

use crate::checksum;
use crate::ETHERNET_HEADER_LEN;

/// Ethertype of IPv4.
pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
/// IP protocol number of TCP.
pub(crate) const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub(crate) const PROTO_UDP: u8 = 17;

/// Offset of the ethertype in an Ethernet frame.
pub(crate) const ETHERTYPE: usize = 12;

/// Offsets within an IPv4 header.
pub(crate) mod ipv4 {
    pub const VERSION_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const ID: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const ADDRS: core::ops::Range<usize> = 12..20;
    /// Don't Fragment, in the 16-bit flags and fragment offset word.
    pub const DF: u16 = 0x4000;
    /// More Fragments and the fragment offset: nonzero on any fragment.
    pub const MF_AND_OFFSET: u16 = 0x3fff;
}

/// Offsets and flags within a TCP header.
pub(crate) mod tcp {
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: core::ops::Range<usize> = 14..16;
    pub const CHECKSUM: usize = 16;
    pub const MIN_LEN: usize = 20;

    pub const FIN: u8 = 0x01;
    pub const PSH: u8 = 0x08;
    pub const ACK_FLAG: u8 = 0x10;
    pub const CWR: u8 = 0x80;
}

/// Offsets within a UDP header.
pub(crate) mod udp {
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
    pub const LEN: usize = 8;
}

/// Reads a big-endian u16 at `at`; needs `at + 2 <= buf.len()`.
pub(crate) fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Writes a big-endian u16 at `at`; needs `at + 2 <= buf.len()`.
pub(crate) fn put_u16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Reads a big-endian u32 at `at`; needs `at + 4 <= buf.len()`.
pub(crate) fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Writes a big-endian u32 at `at`; needs `at + 4 <= buf.len()`.
pub(crate) fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// Returns the accumulator (see [`checksum::accumulate`]) of the IPv4
/// pseudo-header: the addresses of `ip_header`, `protocol` and `l4_len`.
/// Needs `ip_header.len() >= 20`.
pub(crate) fn pseudo_header(ip_header: &[u8], protocol: u8, l4_len: u16) -> u64 {
    let [len_hi, len_lo] = l4_len.to_be_bytes();
    let acc = checksum::accumulate(0, &ip_header[ipv4::ADDRS]);
    checksum::accumulate(acc, &[0, protocol, len_hi, len_lo])
}

/// Recomputes the header checksum of the IPv4 header `ip_header` (all of it, options included).
pub(crate) fn fill_ipv4_checksum(ip_header: &mut [u8]) {
    put_u16(ip_header, ipv4::CHECKSUM, 0);
    let sum = checksum::checksum(ip_header);
    put_u16(ip_header, ipv4::CHECKSUM, sum);
}

/// The layout of an Ethernet + IPv4 frame, as far as segmentation and
/// coalescing need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ipv4Layout {
    /// Length of the IPv4 header, options included (IHL * 4).
    pub ip_header_len: usize,
    /// Offset of the L4 header in the frame.
    pub l4_start: usize,
    /// End of the IP packet in the frame: bytes after it are Ethernet padding.
    pub end: usize,
    /// The IP protocol number.
    pub protocol: u8,
    /// Whether the packet is a fragment (MF set or a fragment offset).
    pub fragment: bool,
}

/// Why a frame is not a well-formed Ethernet + IPv4 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ipv4Problem {
    /// Shorter than Ethernet + a minimal IPv4 header.
    Truncated,
    /// The ethertype is not IPv4.
    Ethertype(u16),
    /// The IP version is not 4.
    Version(u8),
    /// The IHL is below 5.
    HeaderLen(u8),
    /// The total length is below the header length or beyond the frame.
    TotalLen(u16),
}

/// Reads the layout of an Ethernet + IPv4 frame; never panics.
pub(crate) fn ipv4_layout(frame: &[u8]) -> Result<Ipv4Layout, Ipv4Problem> {
    let ip_start = ETHERNET_HEADER_LEN;
    if frame.len() < ip_start + crate::IPV4_HEADER_LEN {
        return Err(Ipv4Problem::Truncated);
    }
    let ethertype = get_u16(frame, ETHERTYPE);
    if ethertype != ETHERTYPE_IPV4 {
        return Err(Ipv4Problem::Ethertype(ethertype));
    }
    let ip = &frame[ip_start..];
    let version = ip[ipv4::VERSION_IHL] >> 4;
    if version != 4 {
        return Err(Ipv4Problem::Version(version));
    }
    let ihl = ip[ipv4::VERSION_IHL] & 0x0f;
    if ihl < 5 {
        return Err(Ipv4Problem::HeaderLen(ihl));
    }
    let ip_header_len = usize::from(ihl) * 4;
    let total_len = get_u16(ip, ipv4::TOTAL_LEN);
    if usize::from(total_len) < ip_header_len || usize::from(total_len) > ip.len() {
        return Err(Ipv4Problem::TotalLen(total_len));
    }
    Ok(Ipv4Layout {
        ip_header_len,
        l4_start: ip_start + ip_header_len,
        end: ip_start + usize::from(total_len),
        protocol: ip[ipv4::PROTOCOL],
        fragment: get_u16(ip, ipv4::FLAGS_FRAG) & ipv4::MF_AND_OFFSET != 0,
    })
}
