//! IPv6 header (RFC 8200): the fixed header, and the walk over extension headers
//! to the upper layer.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Traffic Class |           Flow Label                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Payload Length        |  Next Header  |   Hop Limit   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  Source Address (16 bytes)                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |               Destination Address (16 bytes)                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! [`Packet::new_checked`] is the validation every user of an IPv6 packet goes
//! through: the version is 6, and the payload length fits the buffer (a payload
//! length of 0 with a jumbo payload option is not taken: a link of weft's never
//! carries one). Bytes past the payload length are link padding, which
//! [`Packet::payload`] leaves out. IPv6 has no header checksum; the upper layers'
//! checksums cover [`pseudo_header`].
//!
//! [`upper_layer`] walks the extension headers (hop-by-hop, routing, fragment,
//! destination options) to the upper layer's protocol and offset, at most
//! [`MAX_EXTENSIONS`] of them, and says whether the packet is a fragment.
//!
//! # Panics
//!
//! After [`Packet::new_checked`] or [`Packet::check_len`] succeeds, no accessor of
//! that packet panics; on a [`Packet::new_unchecked`] packet they may.
//! [`upper_layer`] never panics. [`Repr::emit`] panics only on a buffer shorter
//! than [`HEADER_LEN`].

use core::fmt;
use core::net::Ipv6Addr;

use crate::checksum;
use crate::inet::{get_u16, put_u16};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// The most extension headers [`upper_layer`] walks before it gives up on a
/// packet: RFC 8200's recommended order has at most six of them, one twice.
pub const MAX_EXTENSIONS: usize = 8;

/// Next-header values weft looks at.
pub mod next_header {
    /// Hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// Routing header.
    pub const ROUTING: u8 = 43;
    /// Fragment header.
    pub const FRAGMENT: u8 = 44;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// No next header.
    pub const NONE: u8 = 59;
    /// Destination options.
    pub const DEST_OPTIONS: u8 = 60;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

pub(crate) mod field {
    use crate::field::Field;

    pub const VER_TC_FLOW: Field = 0..4;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Field = 8..24;
    pub const DST: Field = 24..40;
}

/// Why bytes are not an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than the fixed header.
    #[error("IPv6 packet of {len} bytes is shorter than a 40-byte header")]
    Truncated {
        /// The buffer's length.
        len: usize,
    },
    /// The version is not 6.
    #[error("IP version {0} is not 6")]
    Version(u8),
    /// The payload length runs past the buffer.
    #[error("IPv6 payload length {0} is beyond the packet")]
    PayloadLen(u16),
    /// An extension header runs past the payload, or there are too many.
    #[error("IPv6 extension headers are truncated or more than {MAX_EXTENSIONS}")]
    Extensions,
}

/// A read/write view of an IPv6 packet in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking the version and the payload length.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the version and the payload length against the buffer, so that no
    /// accessor panics. Never panics.
    pub fn check_len(&self) -> Result<(), Error> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated { len: data.len() });
        }
        let version = data[0] >> 4;
        if version != 6 {
            return Err(Error::Version(version));
        }
        let len = get_u16(data, field::PAYLOAD_LEN);
        if HEADER_LEN + usize::from(len) > data.len() {
            return Err(Error::PayloadLen(len));
        }
        Ok(())
    }

    /// Unwraps the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn word0(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The traffic class (DSCP and ECN).
    pub fn traffic_class(&self) -> u8 {
        (self.word0() >> 20) as u8
    }

    /// The flow label.
    pub fn flow_label(&self) -> u32 {
        self.word0() & 0x000f_ffff
    }

    /// The payload length: extension headers and the upper layer.
    pub fn payload_len(&self) -> usize {
        usize::from(get_u16(self.buffer.as_ref(), field::PAYLOAD_LEN))
    }

    /// The packet's length without link padding.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// The next header after the fixed one.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// The hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        read_addr(&self.buffer.as_ref()[field::SRC])
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        read_addr(&self.buffer.as_ref()[field::DST])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload: extension headers and the upper layer, to the payload length.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len()]
    }

    /// The packet without link padding.
    pub fn packet(&self) -> &'a [u8] {
        &self.buffer.as_ref()[..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the hop limit (IPv6 has no header checksum to update).
    pub fn set_hop_limit(&mut self, hops: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hops;
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        put_u16(self.buffer.as_mut(), field::PAYLOAD_LEN, len);
    }

    /// The payload (to the payload length), for writing.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

fn read_addr(bytes: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&bytes[..16]);
    Ipv6Addr::from(a)
}

/// Where the upper layer of a packet is, past its extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// Its protocol (the last next-header value).
    pub protocol: u8,
    /// Its offset in the payload (after the fixed header).
    pub offset: usize,
    /// The packet is a fragment: a fragment header with a nonzero offset or the
    /// M flag. Only a first fragment (offset 0) holds the upper layer's header.
    pub fragment: Option<Fragment>,
    /// A fragment header is there though the packet is whole (an atomic fragment,
    /// RFC 6946): nothing to join, but a header a segment may not repeat.
    pub atomic_fragment: bool,
}

/// A fragment header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// The fragment's offset in bytes.
    pub offset: usize,
    /// More fragments follow.
    pub more: bool,
    /// The identification.
    pub ident: u32,
}

/// Walks the extension headers of `payload` (a packet's payload, whose first
/// header is `next`) to the upper layer. Never panics.
pub fn upper_layer(next: u8, payload: &[u8]) -> Result<UpperLayer, Error> {
    use next_header::*;
    let (mut protocol, mut at, mut fragment) = (next, 0usize, None);
    for _ in 0..=MAX_EXTENSIONS {
        let len = match protocol {
            HOP_BY_HOP | ROUTING | DEST_OPTIONS => {
                let h = payload.get(at..at + 2).ok_or(Error::Extensions)?;
                (usize::from(h[1]) + 1) * 8
            }
            FRAGMENT => {
                let h = payload.get(at..at + 8).ok_or(Error::Extensions)?;
                let word = get_u16(h, 2);
                let f = Fragment {
                    offset: usize::from(word & 0xfff8),
                    more: word & 1 != 0,
                    ident: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                };
                // Past the header of a later fragment lies the middle of the
                // datagram, not headers: its next header names the datagram's
                // upper layer (or the rest of its headers), read no further.
                if f.offset != 0 {
                    return Ok(UpperLayer {
                        protocol: h[0],
                        offset: at + 8,
                        fragment: Some(f),
                        atomic_fragment: false,
                    });
                }
                fragment = Some(f);
                8
            }
            _ => {
                let atomic_fragment = fragment.is_some_and(|f| f.offset == 0 && !f.more);
                let fragment = fragment.filter(|f| f.offset != 0 || f.more);
                return Ok(UpperLayer {
                    protocol,
                    offset: at,
                    fragment,
                    atomic_fragment,
                });
            }
        };
        if payload.len() < at + len {
            return Err(Error::Extensions);
        }
        protocol = payload[at];
        at += len;
    }
    Err(Error::Extensions)
}

/// The one's complement sum of the pseudo-header (RFC 8200 8.1) of an upper
/// layer of `protocol` and `len` bytes between `src` and `dst`.
pub fn pseudo_header(src: &Ipv6Addr, dst: &Ipv6Addr, protocol: u8, len: u32) -> u16 {
    let mut acc = checksum::accumulate(0, &src.octets());
    acc = checksum::accumulate(acc, &dst.octets());
    let mut tail = [0u8; 8];
    tail[..4].copy_from_slice(&len.to_be_bytes());
    tail[7] = protocol;
    checksum::fold(checksum::accumulate(acc, &tail))
}

/// The meaning of a fixed header, for building packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// The next header (the upper layer, with no extension headers).
    pub next_header: u8,
    /// Length of the payload.
    pub payload_len: u16,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
}

impl Repr {
    /// Reads the fixed header of a checked packet.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Repr {
        Repr {
            src: p.src_addr(),
            dst: p.dst_addr(),
            next_header: p.next_header(),
            payload_len: p.payload_len() as u16,
            hop_limit: p.hop_limit(),
            traffic_class: p.traffic_class(),
        }
    }

    /// Writes the fixed header (flow label 0) into the start of `buf`, leaving
    /// the payload alone.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        let h = &mut buf[..HEADER_LEN];
        let word0 = (6u32 << 28) | (u32::from(self.traffic_class) << 20);
        h[field::VER_TC_FLOW].copy_from_slice(&word0.to_be_bytes());
        put_u16(h, field::PAYLOAD_LEN, self.payload_len);
        h[field::NEXT_HEADER] = self.next_header;
        h[field::HOP_LIMIT] = self.hop_limit;
        h[field::SRC].copy_from_slice(&self.src.octets());
        h[field::DST].copy_from_slice(&self.dst.octets());
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Packet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.check_len() {
            Ok(()) => write!(
                f,
                "IPv6 {} > {} next={} hops={} len={}",
                self.src_addr(),
                self.dst_addr(),
                self.next_header(),
                self.hop_limit(),
                self.payload_len()
            ),
            Err(e) => write!(f, "IPv6 ({e})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 2);
    const B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 3);

    fn packet(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN + payload.len()];
        Repr {
            src: A,
            dst: B,
            next_header: next,
            payload_len: payload.len() as u16,
            hop_limit: 64,
            traffic_class: 0xb8,
        }
        .emit(&mut p);
        p[HEADER_LEN..].copy_from_slice(payload);
        p
    }

    #[test]
    fn emits_and_reads_a_header() {
        let p = packet(next_header::UDP, &[1, 2, 3]);
        let v = Packet::new_checked(&p[..]).unwrap();
        assert_eq!((v.src_addr(), v.dst_addr()), (A, B));
        assert_eq!(
            (v.next_header(), v.hop_limit(), v.payload_len()),
            (17, 64, 3)
        );
        assert_eq!((v.traffic_class(), v.flow_label()), (0xb8, 0));
        assert_eq!(v.payload(), &[1, 2, 3]);
        let mut padded = p.clone();
        padded.extend_from_slice(&[0; 16]);
        assert_eq!(
            Packet::new_checked(&padded[..]).unwrap().payload(),
            &[1, 2, 3]
        );
        assert_eq!(Repr::parse(&v).payload_len, 3);
    }

    #[test]
    fn refuses_what_is_not_ipv6() {
        let p = packet(next_header::UDP, &[0; 8]);
        assert_eq!(
            Packet::new_checked(&p[..39]).unwrap_err(),
            Error::Truncated { len: 39 }
        );
        let mut v4 = p.clone();
        v4[0] = 0x45;
        assert_eq!(Packet::new_checked(&v4[..]).unwrap_err(), Error::Version(4));
        let mut long = p.clone();
        long[5] = 9;
        assert_eq!(
            Packet::new_checked(&long[..]).unwrap_err(),
            Error::PayloadLen(9)
        );
    }

    /// Hop-by-hop, destination options and a first fragment lead to the upper
    /// layer; a later fragment says so; a truncated or endless chain is refused.
    #[test]
    fn walks_extension_headers() {
        use next_header::*;
        let udp = [0u8; 8];
        // Hop-by-hop (8 bytes) -> fragment (offset 0, M) -> UDP.
        let mut payload = vec![FRAGMENT, 0, 0, 0, 0, 0, 0, 0];
        payload.extend_from_slice(&[UDP, 0, 0x00, 0x01, 0, 0, 0, 7]);
        payload.extend_from_slice(&udp);
        let u = upper_layer(HOP_BY_HOP, &payload).unwrap();
        assert_eq!((u.protocol, u.offset), (UDP, 16));
        let f = u.fragment.expect("a first fragment with M");
        assert_eq!((f.offset, f.more, f.ident), (0, true, 7));
        // A later fragment: offset 1232 (0x4d0 = 1232 in 8-byte units' field).
        let later = [UDP, 0, 0x04, 0xd0, 0, 0, 0, 7];
        let u = upper_layer(FRAGMENT, &later).unwrap();
        assert_eq!(u.fragment.map(|f| (f.offset, f.more)), Some((1232, false)));
        // Its data is not read as headers, whatever its first bytes say: a
        // later fragment naming destination options ends at its own header.
        let mut later_opts = vec![DEST_OPTIONS, 0, 0x04, 0xd1, 0, 0, 0, 7];
        later_opts.extend_from_slice(&[TCP, 200, 1, 2]);
        let u = upper_layer(FRAGMENT, &later_opts).unwrap();
        assert_eq!((u.protocol, u.offset), (DEST_OPTIONS, 8));
        assert_eq!(u.fragment.map(|f| (f.offset, f.more)), Some((1232, true)));
        // An atomic fragment (offset 0, no M) is no fragment.
        let atomic = [TCP, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(upper_layer(FRAGMENT, &atomic).unwrap().fragment, None);
        // Destination options claiming 16 bytes in 8.
        assert_eq!(
            upper_layer(DEST_OPTIONS, &[UDP, 1, 0, 0, 0, 0, 0, 0]),
            Err(Error::Extensions)
        );
        // Nine headers, each naming another.
        let chain = [DEST_OPTIONS, 0, 0, 0, 0, 0, 0, 0].repeat(9);
        assert_eq!(upper_layer(DEST_OPTIONS, &chain), Err(Error::Extensions));
        // No extension at all.
        assert_eq!(upper_layer(ICMPV6, &[]).unwrap().offset, 0);
    }

    /// The pseudo-header sum, checked against a UDP datagram's checksum computed
    /// over the pseudo-header written out in full.
    #[test]
    fn pseudo_header_matches_the_written_out_form() {
        let udp = [0x12, 0x34, 0x00, 0x35, 0x00, 0x0a, 0, 0, 0xab, 0xcd];
        let mut full = Vec::new();
        full.extend_from_slice(&A.octets());
        full.extend_from_slice(&B.octets());
        full.extend_from_slice(&(udp.len() as u32).to_be_bytes());
        full.extend_from_slice(&[0, 0, 0, next_header::UDP]);
        full.extend_from_slice(&udp);
        let expected = checksum::checksum(&full);
        let sum = pseudo_header(&A, &B, next_header::UDP, udp.len() as u32);
        assert_eq!(!checksum::combine(sum, checksum::sum(&udp)), expected);
    }

    proptest! {
        #[test]
        fn nothing_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120), next in any::<u8>()) {
            if let Ok(v) = Packet::new_checked(&bytes[..]) {
                let _ = (v.src_addr(), v.dst_addr(), v.hop_limit(), v.flow_label());
                prop_assert_eq!(v.payload().len(), v.payload_len());
                let _ = upper_layer(v.next_header(), v.payload());
            }
            if let Ok(u) = upper_layer(next, &bytes) {
                prop_assert!(u.offset <= bytes.len());
            }
        }
    }
}
