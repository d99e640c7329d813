//! IPv4 header (RFC 791): the one place weft parses it.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version|  IHL  |    DSCP/ECN   |          Total Length         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Identification        |Flags|      Fragment Offset    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Time to Live |    Protocol   |         Header Checksum       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       Source Address                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Destination Address                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Options (IHL > 5) ...                      |
//! ```
//!
//! [`Packet::new_checked`] is the validation every user of an IPv4 packet goes
//! through (the switch's routing, segmentation, coalescing, the flow hash): the
//! version is 4, the header length at least 20, and the total length covers the
//! header and fits the buffer. Bytes past the total length are link padding, and
//! [`Packet::payload`] leaves them out. The header checksum is checked separately
//! ([`Packet::verify_checksum`]), by those that must.
//!
//! # Panics
//!
//! After [`Packet::new_checked`] or [`Packet::check_len`] succeeds, no accessor of
//! that packet panics; on a [`Packet::new_unchecked`] packet they may.
//! [`Repr::emit`] panics only on a buffer shorter than [`HEADER_LEN`].

use core::fmt;
use core::net::Ipv4Addr;

use crate::checksum;
use crate::inet::{get_u16, put_u16};

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

/// IP protocol numbers weft looks at.
pub mod protocol {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// Byte offsets of the header's fields, shared with the modules that rewrite
/// headers in place.
pub(crate) mod field {
    use crate::field::Field;

    pub const VERSION_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const ID: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
    pub const ADDRS: Field = 12..20;
    /// Don't Fragment, in the 16-bit flags and fragment offset word.
    pub const DF: u16 = 0x4000;
    /// More Fragments.
    pub const MF: u16 = 0x2000;
    /// The fragment offset, in 8-byte units.
    pub const OFFSET: u16 = 0x1fff;
    /// More Fragments and the fragment offset: nonzero on any fragment.
    pub const MF_AND_OFFSET: u16 = 0x3fff;
}

/// Why bytes are not an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than a minimal header.
    #[error("IPv4 packet of {len} bytes is shorter than a 20-byte header")]
    Truncated {
        /// The buffer's length.
        len: usize,
    },
    /// The version is not 4.
    #[error("IP version {0} is not 4")]
    Version(u8),
    /// The IHL is below 5.
    #[error("IPv4 header length {0} words is below 5")]
    HeaderLen(u8),
    /// The total length is below the header length or beyond the buffer.
    #[error("IPv4 total length {0} is below the header or beyond the packet")]
    TotalLen(u16),
}

/// A read/write view of an IPv4 packet in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking version, header length and total length.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the version, header length and total length against the buffer, so
    /// that no accessor panics. Never panics.
    pub fn check_len(&self) -> Result<(), Error> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated { len: data.len() });
        }
        let version = data[field::VERSION_IHL] >> 4;
        if version != 4 {
            return Err(Error::Version(version));
        }
        let ihl = data[field::VERSION_IHL] & 0x0f;
        if ihl < 5 {
            return Err(Error::HeaderLen(ihl));
        }
        let total = get_u16(data, field::TOTAL_LEN);
        let header_len = usize::from(ihl) * 4;
        if usize::from(total) < header_len || usize::from(total) > data.len() {
            return Err(Error::TotalLen(total));
        }
        Ok(())
    }

    /// Unwraps the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The header length in bytes, options included (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VERSION_IHL] & 0x0f) * 4
    }

    /// The DSCP and ECN byte.
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    /// The total length: header and payload, without link padding.
    pub fn total_len(&self) -> usize {
        usize::from(get_u16(self.buffer.as_ref(), field::TOTAL_LEN))
    }

    /// The identification field.
    pub fn ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ID)
    }

    fn flags_frag(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::FLAGS_FRAG)
    }

    /// The Don't Fragment flag.
    pub fn dont_fragment(&self) -> bool {
        self.flags_frag() & field::DF != 0
    }

    /// The More Fragments flag.
    pub fn more_fragments(&self) -> bool {
        self.flags_frag() & field::MF != 0
    }

    /// The fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        usize::from(self.flags_frag() & field::OFFSET) * 8
    }

    /// Whether this is any fragment (MF set or a nonzero offset).
    pub fn is_fragment(&self) -> bool {
        self.flags_frag() & field::MF_AND_OFFSET != 0
    }

    /// The time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The header checksum field.
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        read_addr(&self.buffer.as_ref()[field::SRC])
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        read_addr(&self.buffer.as_ref()[field::DST])
    }

    /// Whether the header checksum is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.buffer.as_ref()[..self.header_len()]) == 0
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The header, options included.
    pub fn header(&self) -> &'a [u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The payload: from the end of the header to the total length.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }

    /// The packet without link padding: header and payload.
    pub fn packet(&self) -> &'a [u8] {
        &self.buffer.as_ref()[..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the time to live, leaving the checksum alone.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Decrements the time to live by one and updates the checksum incrementally
    /// (RFC 1624), as a router does. The TTL must be at least 1.
    pub fn decrement_ttl(&mut self) {
        // TTL is the high byte of the 16-bit word at offset 8.
        let data = self.buffer.as_mut();
        let old = get_u16(data, field::TTL);
        let new = old.wrapping_sub(0x0100);
        put_u16(data, field::TTL, new);
        let sum = checksum::update_u16(get_u16(data, field::CHECKSUM), old, new);
        put_u16(data, field::CHECKSUM, sum);
    }

    /// Sets the total length, leaving the checksum alone.
    pub fn set_total_len(&mut self, len: u16) {
        put_u16(self.buffer.as_mut(), field::TOTAL_LEN, len);
    }

    /// Sets the identification field, leaving the checksum alone.
    pub fn set_ident(&mut self, ident: u16) {
        put_u16(self.buffer.as_mut(), field::ID, ident);
    }

    /// Recomputes the header checksum over the whole header, options included.
    pub fn fill_checksum(&mut self) {
        let len = self.header_len();
        let data = self.buffer.as_mut();
        put_u16(data, field::CHECKSUM, 0);
        let sum = checksum::checksum(&data[..len]);
        put_u16(data, field::CHECKSUM, sum);
    }

    /// The payload (to the total length), for writing.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), self.total_len());
        &mut self.buffer.as_mut()[start..end]
    }
}

fn read_addr(bytes: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
}

/// The meaning of a header without options, for building packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol of the payload.
    pub protocol: u8,
    /// Length of the payload.
    pub payload_len: u16,
    /// Time to live.
    pub ttl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Don't Fragment.
    pub dont_fragment: bool,
}

impl Repr {
    /// Writes a 20-byte header (identification 0, checksum filled) into the start of
    /// `buf`, leaving the payload alone.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        let h = &mut buf[..HEADER_LEN];
        h[field::VERSION_IHL] = 0x45;
        h[field::TOS] = self.tos;
        put_u16(
            h,
            field::TOTAL_LEN,
            self.payload_len.saturating_add(HEADER_LEN as u16),
        );
        put_u16(h, field::ID, 0);
        put_u16(
            h,
            field::FLAGS_FRAG,
            if self.dont_fragment { field::DF } else { 0 },
        );
        h[field::TTL] = self.ttl;
        h[field::PROTOCOL] = self.protocol;
        h[field::SRC].copy_from_slice(&self.src.octets());
        h[field::DST].copy_from_slice(&self.dst.octets());
        let mut packet = Packet::new_unchecked(h);
        packet.fill_checksum();
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Packet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.check_len() {
            Ok(()) => write!(
                f,
                "IPv4 {} > {} proto={} ttl={} len={}",
                self.src_addr(),
                self.dst_addr(),
                self.protocol(),
                self.ttl(),
                self.total_len()
            ),
            Err(e) => write!(f, "IPv4 ({e})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN + payload.len()];
        Repr {
            src: Ipv4Addr::new(10, 244, 1, 2),
            dst: Ipv4Addr::new(10, 244, 2, 3),
            protocol: protocol::UDP,
            payload_len: payload.len() as u16,
            ttl: 64,
            tos: 0,
            dont_fragment: true,
        }
        .emit(&mut p);
        p[HEADER_LEN..].copy_from_slice(payload);
        p
    }

    #[test]
    fn emits_and_reads_a_header() {
        let p = packet(&[1, 2, 3]);
        let v = Packet::new_checked(&p[..]).unwrap();
        assert!(v.verify_checksum());
        assert_eq!(v.src_addr(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(v.dst_addr(), Ipv4Addr::new(10, 244, 2, 3));
        assert_eq!((v.protocol(), v.ttl(), v.total_len()), (17, 64, 23));
        assert!(v.dont_fragment() && !v.is_fragment());
        assert_eq!(v.payload(), &[1, 2, 3]);
        // Link padding is not payload.
        let mut padded = p.clone();
        padded.extend_from_slice(&[0; 20]);
        assert_eq!(
            Packet::new_checked(&padded[..]).unwrap().payload(),
            &[1, 2, 3]
        );
    }

    #[test]
    fn refuses_what_is_not_ipv4() {
        let p = packet(&[0; 8]);
        assert_eq!(
            Packet::new_checked(&p[..19]).unwrap_err(),
            Error::Truncated { len: 19 }
        );
        let mut v6 = p.clone();
        v6[0] = 0x65;
        assert_eq!(Packet::new_checked(&v6[..]).unwrap_err(), Error::Version(6));
        let mut short = p.clone();
        short[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&short[..]).unwrap_err(),
            Error::HeaderLen(4)
        );
        let mut long = p.clone();
        long[3] = 200;
        assert_eq!(
            Packet::new_checked(&long[..]).unwrap_err(),
            Error::TotalLen(200)
        );
        let mut options = p.clone();
        options[0] = 0x47; // 28-byte header in a 28-byte packet: no payload
        assert!(Packet::new_checked(&options[..]).is_ok());
        options[0] = 0x48;
        assert_eq!(
            Packet::new_checked(&options[..]).unwrap_err(),
            Error::TotalLen(28)
        );
    }

    #[test]
    fn ttl_decrement_keeps_the_checksum_right() {
        let mut p = packet(&[9; 4]);
        let mut v = Packet::new_checked(&mut p[..]).unwrap();
        v.decrement_ttl();
        assert_eq!(v.ttl(), 63);
        assert!(v.verify_checksum());
    }

    proptest! {
        #[test]
        fn accessors_never_panic_after_check(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(v) = Packet::new_checked(&bytes[..]) {
                let _ = (v.src_addr(), v.dst_addr(), v.ttl(), v.protocol(), v.frag_offset());
                prop_assert!(v.header().len() >= HEADER_LEN);
                prop_assert_eq!(v.header().len() + v.payload().len(), v.total_len());
                let _ = v.verify_checksum();
            }
        }

        #[test]
        fn decrement_matches_a_full_recompute(ttl in 1u8.., tos in any::<u8>()) {
            let mut p = packet(&[tos; 3]);
            p[1] = tos;
            p[8] = ttl;
            Packet::new_unchecked(&mut p[..]).fill_checksum();
            let mut v = Packet::new_checked(&mut p[..]).unwrap();
            v.decrement_ttl();
            let incremental = v.checksum();
            v.fill_checksum();
            // RFC 1624 may give 0xffff where a full sum gives 0 (both are "zero").
            let full = v.checksum();
            prop_assert!(incremental == full || (incremental, full) == (0xffff, 0) || (incremental, full) == (0, 0xffff));
        }
    }
}
