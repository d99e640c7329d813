//! Small helpers for the Ethernet, IPv4, TCP and UDP headers that segmentation and
//! coalescing rewrite in place. The byte offsets are the header views' own
//! ([`crate::ipv4`], [`crate::tcp`], [`crate::udp`]), re-exported under short names.
//!
//! Every function here indexes its slice directly: callers check lengths
//! first, and each function says what it needs.

use crate::checksum;
use crate::ETHERNET_HEADER_LEN;

/// Ethertype of IPv4.
pub(crate) const ETHERTYPE_IPV4: u16 = crate::ethernet::ethertype::IPV4;
/// IP protocol number of TCP.
pub(crate) const PROTO_TCP: u8 = crate::ipv4::protocol::TCP;
/// IP protocol number of UDP.
pub(crate) const PROTO_UDP: u8 = crate::ipv4::protocol::UDP;

/// Offsets within an IPv4 header: the view's own.
pub(crate) use crate::ipv4::field as ipv4;

/// Offsets and flags within a TCP header: the view's own, and the flag bits.
pub(crate) mod tcp {
    pub use crate::tcp::field::*;
    pub use crate::tcp::HEADER_LEN as MIN_LEN;

    pub const FIN: u8 = crate::tcp::flags::FIN;
    pub const PSH: u8 = crate::tcp::flags::PSH;
    pub const ACK_FLAG: u8 = crate::tcp::flags::ACK;
    pub const CWR: u8 = crate::tcp::flags::CWR;
}

/// Offsets within a UDP header: the view's own.
pub(crate) mod udp {
    pub use crate::udp::field::*;
    pub use crate::udp::HEADER_LEN as LEN;
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

/// Reads the layout of an Ethernet + IPv4 frame, validated by the IPv4 view (the
/// one IPv4 parse); never panics.
pub(crate) fn ipv4_layout(frame: &[u8]) -> Result<Ipv4Layout, Ipv4Problem> {
    let ip_start = ETHERNET_HEADER_LEN;
    let eth = crate::ethernet::Frame::new_checked(frame).map_err(|_| Ipv4Problem::Truncated)?;
    if eth.ethertype() != ETHERTYPE_IPV4 {
        // Too short for IPv4 is reported first, whatever the ethertype.
        if frame.len() < ip_start + crate::IPV4_HEADER_LEN {
            return Err(Ipv4Problem::Truncated);
        }
        return Err(Ipv4Problem::Ethertype(eth.ethertype()));
    }
    let ip = crate::ipv4::Packet::new_checked(eth.payload()).map_err(|e| match e {
        crate::ipv4::Error::Truncated { .. } => Ipv4Problem::Truncated,
        crate::ipv4::Error::Version(v) => Ipv4Problem::Version(v),
        crate::ipv4::Error::HeaderLen(l) => Ipv4Problem::HeaderLen(l),
        crate::ipv4::Error::TotalLen(t) => Ipv4Problem::TotalLen(t),
    })?;
    Ok(Ipv4Layout {
        ip_header_len: ip.header_len(),
        l4_start: ip_start + ip.header_len(),
        end: ip_start + ip.total_len(),
        protocol: ip.protocol(),
        fragment: ip.is_fragment(),
    })
}

/// Ethertype of IPv6.
pub(crate) const ETHERTYPE_IPV6: u16 = crate::ethernet::ethertype::IPV6;

/// The offsets of the addresses in an IPv6 header: source then destination, what
/// the pseudo-header sums first.
pub(crate) const IPV6_ADDRS: core::ops::Range<usize> = 8..40;

/// The layout of an Ethernet + IPv6 frame, as far as segmentation and hashing need
/// it: where the upper layer starts, past any extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ipv6Layout {
    /// Offset of the upper-layer header in the frame.
    pub l4_start: usize,
    /// End of the IP packet in the frame: bytes after it are Ethernet padding.
    pub end: usize,
    /// The upper layer's protocol number.
    pub protocol: u8,
    /// Whether the packet is a fragment, or carries a fragment header at all.
    pub fragment: bool,
}

/// Why a frame is not a well-formed Ethernet + IPv6 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ipv6Problem {
    /// Shorter than Ethernet + the fixed IPv6 header.
    Truncated,
    /// The ethertype is not IPv6.
    Ethertype(u16),
    /// The fixed header is not a valid IPv6 one: its version, or a payload length
    /// past the frame.
    Header,
    /// The extension headers run past the packet, or are too many.
    Extensions,
}

/// Reads the layout of an Ethernet + IPv6 frame, validated by the IPv6 view and its
/// walk over extension headers; never panics.
pub(crate) fn ipv6_layout(frame: &[u8]) -> Result<Ipv6Layout, Ipv6Problem> {
    let ip_start = ETHERNET_HEADER_LEN;
    let eth = crate::ethernet::Frame::new_checked(frame).map_err(|_| Ipv6Problem::Truncated)?;
    if frame.len() < ip_start + crate::ipv6::HEADER_LEN {
        return Err(Ipv6Problem::Truncated);
    }
    if eth.ethertype() != ETHERTYPE_IPV6 {
        return Err(Ipv6Problem::Ethertype(eth.ethertype()));
    }
    let ip = crate::ipv6::Packet::new_checked(eth.payload()).map_err(|_| Ipv6Problem::Header)?;
    let payload = ip.payload();
    let upper =
        crate::ipv6::upper_layer(ip.next_header(), payload).map_err(|_| Ipv6Problem::Extensions)?;
    Ok(Ipv6Layout {
        l4_start: ip_start + crate::ipv6::HEADER_LEN + upper.offset,
        end: ip_start + ip.total_len(),
        protocol: upper.protocol,
        fragment: upper.fragment.is_some() || upper.atomic_fragment,
    })
}
