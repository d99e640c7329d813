//! The virtio-net header a TAP device opened with `IFF_VNET_HDR` puts before
//! every frame it hands out, and expects before every frame written to it.
//!
//! This is `struct virtio_net_hdr` of Linux's `include/uapi/linux/virtio_net.h`
//! (the legacy, 10-byte form that is the TAP default; `TUNSETVNETHDRSZ` can
//! make it 12 bytes, adding the `num_buffers` field this module does not use):
//!
//! ```text
//!  0        1        2        3        4        5        6        7        8        9
//! +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
//! | flags  |gso_type|     hdr_len     |    gso_size     |   csum_start    |   csum_offset   |
//! +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
//! | Ethernet frame ...
//! ```
//!
//! # Byte order
//!
//! The four 16-bit fields are **little-endian** here, always. The tun driver
//! uses little-endian when `TUNSETVNETLE` was set and otherwise the host's
//! own byte order (a legacy virtio device), which is little-endian on the
//! x86-64 and arm64 hosts weft runs on. A big-endian host must set
//! `TUNSETVNETLE` on the TAP for this module to read and write its headers.
//!
//! # Meaning
//!
//! - On a frame read from the TAP, [`FLAG_NEEDS_CSUM`] says the L4 checksum
//!   is not done: the 16-bit field at `csum_start + csum_offset` holds only
//!   the one's complement sum of the pseudo-header, and the checksum is to be
//!   computed over the bytes from `csum_start` to the end of the frame.
//!   A `gso_type` other than [`GsoType::None`] says the frame is a
//!   "super-frame" to be cut into segments of `gso_size` payload bytes.
//!   `hdr_len` is only a hint: tun sets it to the length of the packet's
//!   linear part, which may include payload, so weft derives header lengths
//!   from the headers themselves.
//! - On a frame written to the TAP, [`FLAG_DATA_VALID`] says its checksums
//!   were verified, so the receiving kernel may skip verifying them.
//!
//! # Panics
//!
//! - After [`Packet::new_checked`] or [`Packet::check_len`] succeeds, no
//!   accessor of that packet panics. On a [`Packet::new_unchecked`] packet
//!   shorter than [`LEN`] they may.
//! - [`Repr::parse`] and [`parse`] never panic, whatever the input.
//! - [`Repr::emit`] never panics into a buffer of at least
//!   [`Repr::buffer_len`] bytes; [`emit_header`] panics only on a buffer
//!   shorter than [`LEN`].

use core::fmt;

use crate::field::{Field, Rest};

/// Length of the virtio-net header a TAP uses by default.
pub const LEN: usize = 10;

/// Flag: the L4 checksum must still be computed (`csum_start`, `csum_offset` say where).
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// Flag: the frame's checksums are known to be good.
pub const FLAG_DATA_VALID: u8 = 2;

/// Wire value of `gso_type`: not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// Wire value of `gso_type`: TCP over IPv4 (TSO).
pub const GSO_TCPV4: u8 = 1;
/// Wire value of `gso_type`: UDP over IPv4 cut into IP fragments (UFO).
pub const GSO_UDP: u8 = 3;
/// Wire value of `gso_type`: TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// Wire value of `gso_type`: UDP cut into UDP datagrams (USO, Linux 6.2+).
pub const GSO_UDP_L4: u8 = 5;
/// Bit of `gso_type`: the TCP super-frame has CWR set (ECN), only for its first segment.
pub const GSO_ECN: u8 = 0x80;

/// Errors from parsing a virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header.
    #[error("virtio-net header buffer of {len} bytes is shorter than the 10-byte header")]
    Truncated {
        /// Length of the buffer.
        len: usize,
    },
    /// The `gso_type` field (without the ECN bit) is not a known type.
    #[error("virtio-net header has unknown gso_type {value:#04x}")]
    UnknownGsoType {
        /// The `gso_type` byte received.
        value: u8,
    },
}

/// The kind of segmentation a super-frame asks for: `gso_type` without the ECN bit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum GsoType {
    /// Not a GSO frame.
    #[default]
    None,
    /// TCP over IPv4.
    TcpV4,
    /// UDP over IPv4 as IP fragments (UFO).
    Udp,
    /// TCP over IPv6.
    TcpV6,
    /// UDP cut into separate UDP datagrams (USO).
    UdpL4,
}

impl GsoType {
    /// Returns the type of a `gso_type` byte (ECN bit ignored), or `None` if unknown.
    pub const fn from_wire(value: u8) -> Option<GsoType> {
        match value & !GSO_ECN {
            GSO_NONE => Some(GsoType::None),
            GSO_TCPV4 => Some(GsoType::TcpV4),
            GSO_UDP => Some(GsoType::Udp),
            GSO_TCPV6 => Some(GsoType::TcpV6),
            GSO_UDP_L4 => Some(GsoType::UdpL4),
            _ => None,
        }
    }

    /// Returns the `gso_type` wire value, without the ECN bit.
    pub const fn to_wire(self) -> u8 {
        match self {
            GsoType::None => GSO_NONE,
            GsoType::TcpV4 => GSO_TCPV4,
            GsoType::Udp => GSO_UDP,
            GsoType::TcpV6 => GSO_TCPV6,
            GsoType::UdpL4 => GSO_UDP_L4,
        }
    }
}

impl fmt::Display for GsoType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GsoType::None => "none",
            GsoType::TcpV4 => "tcpv4",
            GsoType::Udp => "udp",
            GsoType::TcpV6 => "tcpv6",
            GsoType::UdpL4 => "udp_l4",
        })
    }
}

mod field {
    use super::{Field, Rest};

    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Field = 2..4;
    pub const GSO_SIZE: Field = 4..6;
    pub const CSUM_START: Field = 6..8;
    pub const CSUM_OFFSET: Field = 8..10;
    pub const PAYLOAD: Rest = 10..;
}

/// A read/write view of a virtio-net header and the frame after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking that it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a whole header, so no accessor panics.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < LEN {
            Err(Error::Truncated { len })
        } else {
            Ok(())
        }
    }

    /// Unwraps the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Returns the flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Returns whether [`FLAG_NEEDS_CSUM`] is set.
    pub fn needs_csum(&self) -> bool {
        self.flags() & FLAG_NEEDS_CSUM != 0
    }

    /// Returns whether [`FLAG_DATA_VALID`] is set.
    pub fn data_valid(&self) -> bool {
        self.flags() & FLAG_DATA_VALID != 0
    }

    /// Returns the raw `gso_type` byte, ECN bit included.
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    /// Returns the `hdr_len` field (a hint: see the module documentation).
    pub fn hdr_len(&self) -> u16 {
        self.read_u16(field::HDR_LEN)
    }

    /// Returns the `gso_size` field: payload bytes per segment.
    pub fn gso_size(&self) -> u16 {
        self.read_u16(field::GSO_SIZE)
    }

    /// Returns the `csum_start` field: where checksumming starts, from the frame's start.
    pub fn csum_start(&self) -> u16 {
        self.read_u16(field::CSUM_START)
    }

    /// Returns the `csum_offset` field: where the checksum goes, from `csum_start`.
    pub fn csum_offset(&self) -> u16 {
        self.read_u16(field::CSUM_OFFSET)
    }

    fn read_u16(&self, range: Field) -> u16 {
        let data = self.buffer.as_ref();
        u16::from_le_bytes([data[range.start], data[range.start + 1]])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Returns the frame after the header.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the raw `gso_type` byte.
    pub fn set_gso_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::GSO_TYPE] = value;
    }

    /// Sets the `hdr_len` field.
    pub fn set_hdr_len(&mut self, value: u16) {
        self.write_u16(field::HDR_LEN, value);
    }

    /// Sets the `gso_size` field.
    pub fn set_gso_size(&mut self, value: u16) {
        self.write_u16(field::GSO_SIZE, value);
    }

    /// Sets the `csum_start` field.
    pub fn set_csum_start(&mut self, value: u16) {
        self.write_u16(field::CSUM_START, value);
    }

    /// Sets the `csum_offset` field.
    pub fn set_csum_offset(&mut self, value: u16) {
        self.write_u16(field::CSUM_OFFSET, value);
    }

    /// Returns the frame after the header, for writing.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }

    fn write_u16(&mut self, range: Field, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_le_bytes());
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Packet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Repr::parse(&Packet::new_unchecked(self.buffer.as_ref())) {
            Ok(repr) => fmt::Display::fmt(&repr, f),
            Err(err) => write!(f, "virtio-net ({err})"),
        }
    }
}

/// The meaning of a virtio-net header.
///
/// Flag bits other than [`FLAG_NEEDS_CSUM`] and [`FLAG_DATA_VALID`] are
/// dropped by [`Repr::parse`] and written as zero by [`Repr::emit`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Repr {
    /// [`FLAG_NEEDS_CSUM`]: the L4 checksum field holds only the pseudo-header sum.
    pub needs_csum: bool,
    /// [`FLAG_DATA_VALID`]: the checksums are known to be good.
    pub data_valid: bool,
    /// The segmentation the frame asks for.
    pub gso_type: GsoType,
    /// The [`GSO_ECN`] bit: the first segment carries CWR.
    pub gso_ecn: bool,
    /// Length of the headers (Ethernet + IP + L4), a hint on frames from tun.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Offset from the frame's start at which checksumming starts.
    pub csum_start: u16,
    /// Offset from `csum_start` of the checksum field.
    pub csum_offset: u16,
}

impl Repr {
    /// The header of a plain frame: no flags, no GSO.
    pub const PLAIN: Repr = Repr {
        needs_csum: false,
        data_valid: false,
        gso_type: GsoType::None,
        gso_ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Parses a header, which must have a known `gso_type`; never panics.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr, Error> {
        packet.check_len()?;
        let raw_type = packet.gso_type();
        let gso_type =
            GsoType::from_wire(raw_type).ok_or(Error::UnknownGsoType { value: raw_type })?;
        Ok(Repr {
            needs_csum: packet.needs_csum(),
            data_valid: packet.data_valid(),
            gso_type,
            gso_ecn: raw_type & GSO_ECN != 0,
            hdr_len: packet.hdr_len(),
            gso_size: packet.gso_size(),
            csum_start: packet.csum_start(),
            csum_offset: packet.csum_offset(),
        })
    }

    /// Returns the length of the header [`Repr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        LEN
    }

    /// Returns the flags byte this header is written with.
    pub const fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.needs_csum {
            flags |= FLAG_NEEDS_CSUM;
        }
        if self.data_valid {
            flags |= FLAG_DATA_VALID;
        }
        flags
    }

    /// Returns whether the frame asks for segmentation.
    pub const fn is_gso(&self) -> bool {
        !matches!(self.gso_type, GsoType::None)
    }

    /// Writes the header, leaving the frame after it alone.
    ///
    /// Never panics if the buffer is at least [`Repr::buffer_len`] bytes long.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_flags(self.flags());
        let ecn = if self.gso_ecn { GSO_ECN } else { 0 };
        packet.set_gso_type(self.gso_type.to_wire() | ecn);
        packet.set_hdr_len(self.hdr_len);
        packet.set_gso_size(self.gso_size);
        packet.set_csum_start(self.csum_start);
        packet.set_csum_offset(self.csum_offset);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "virtio-net gso={}", self.gso_type)?;
        if self.gso_ecn {
            f.write_str("+ecn")?;
        }
        if self.is_gso() {
            write!(f, " gso_size={} hdr_len={}", self.gso_size, self.hdr_len)?;
        }
        if self.needs_csum {
            write!(
                f,
                " needs_csum start={} offset={}",
                self.csum_start, self.csum_offset
            )?;
        }
        if self.data_valid {
            f.write_str(" data_valid")?;
        }
        Ok(())
    }
}

/// Splits what a TAP read returned into the virtio-net header and the frame.
///
/// Fails if the buffer is shorter than the header or the `gso_type` is
/// unknown. Never panics.
pub fn parse(buf: &[u8]) -> Result<(Repr, &[u8]), Error> {
    let packet = Packet::new_checked(buf)?;
    let repr = Repr::parse(&packet)?;
    Ok((repr, packet.payload()))
}

/// Writes `repr` into `buf[..LEN]`, e.g. the headroom before a frame.
///
/// # Panics
///
/// Panics if `buf` is shorter than [`LEN`].
pub fn emit_header(buf: &mut [u8], repr: &Repr) {
    let mut packet = Packet::new_unchecked(&mut buf[..LEN]);
    repr.emit(&mut packet);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The header tun puts before a TSO super-frame of a TCP/IPv4 flow with
    /// timestamps (Ethernet 14 + IPv4 20 + TCP 32 = 66 header bytes, MSS 1448):
    /// NEEDS_CSUM, TCPV4, hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16.
    static TSO_HEADER: [u8; 10] = [0x01, 0x01, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00];

    fn tso_repr() -> Repr {
        Repr {
            needs_csum: true,
            data_valid: false,
            gso_type: GsoType::TcpV4,
            gso_ecn: false,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&TSO_HEADER[..]).unwrap();
        assert_eq!(packet.flags(), FLAG_NEEDS_CSUM);
        assert!(packet.needs_csum());
        assert!(!packet.data_valid());
        assert_eq!(packet.gso_type(), GSO_TCPV4);
        assert_eq!(packet.hdr_len(), 66);
        assert_eq!(packet.gso_size(), 1448);
        assert_eq!(packet.csum_start(), 34);
        assert_eq!(packet.csum_offset(), 16);
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn construct() {
        let mut bytes = [0xa5; 10];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_flags(FLAG_NEEDS_CSUM);
        packet.set_gso_type(GSO_TCPV4);
        packet.set_hdr_len(66);
        packet.set_gso_size(1448);
        packet.set_csum_start(34);
        packet.set_csum_offset(16);
        assert_eq!(packet.into_inner(), &TSO_HEADER[..]);
    }

    #[test]
    fn fields_are_little_endian() {
        let mut bytes = [0; 10];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_hdr_len(0x1234);
        packet.set_gso_size(0x5678);
        packet.set_csum_start(0x9abc);
        packet.set_csum_offset(0xdef0);
        assert_eq!(bytes[2..], [0x34, 0x12, 0x78, 0x56, 0xbc, 0x9a, 0xf0, 0xde]);
    }

    #[test]
    fn parse_and_emit_repr() {
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&TSO_HEADER[..])),
            Ok(tso_repr())
        );
        let mut bytes = [0xff; 10];
        tso_repr().emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, TSO_HEADER);
    }

    #[test]
    fn parse_splits_header_and_frame() {
        let mut buf = TSO_HEADER.to_vec();
        buf.extend_from_slice(&[1, 2, 3]);
        let (repr, frame) = parse(&buf).unwrap();
        assert_eq!(repr, tso_repr());
        assert_eq!(frame, [1, 2, 3]);
    }

    #[test]
    fn plain_header_is_all_zero() {
        let mut bytes = [0xff; 12];
        emit_header(&mut bytes, &Repr::PLAIN);
        assert_eq!(bytes, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(Repr::default(), Repr::PLAIN);
        assert!(!Repr::PLAIN.is_gso());
        assert_eq!(Repr::PLAIN.buffer_len(), LEN);
    }

    #[test]
    fn data_valid_and_ecn() {
        let repr = Repr {
            data_valid: true,
            gso_ecn: true,
            ..tso_repr()
        };
        let mut bytes = [0; 10];
        emit_header(&mut bytes, &repr);
        assert_eq!(bytes[0], FLAG_NEEDS_CSUM | FLAG_DATA_VALID);
        assert_eq!(bytes[1], GSO_TCPV4 | GSO_ECN);
        assert_eq!(parse(&bytes).unwrap().0, repr);
    }

    #[test]
    fn unknown_flags_are_dropped() {
        let mut bytes = TSO_HEADER;
        bytes[0] = 0xfd;
        let repr = parse(&bytes).unwrap().0;
        assert!(repr.needs_csum && !repr.data_valid);
        assert_eq!(repr.flags(), FLAG_NEEDS_CSUM);
    }

    #[test]
    fn gso_types() {
        for (wire, gso_type) in [
            (0, GsoType::None),
            (1, GsoType::TcpV4),
            (3, GsoType::Udp),
            (4, GsoType::TcpV6),
            (5, GsoType::UdpL4),
        ] {
            assert_eq!(GsoType::from_wire(wire), Some(gso_type));
            assert_eq!(GsoType::from_wire(wire | GSO_ECN), Some(gso_type));
            assert_eq!(gso_type.to_wire(), wire);
        }
        for wire in [2, 6, 7, 0x7f, 0x82] {
            assert_eq!(GsoType::from_wire(wire), None);
            let mut bytes = TSO_HEADER;
            bytes[1] = wire;
            assert_eq!(parse(&bytes), Err(Error::UnknownGsoType { value: wire }));
        }
    }

    #[test]
    fn truncated() {
        for len in 0..LEN {
            let bytes = &TSO_HEADER[..len];
            assert_eq!(Packet::new_checked(bytes), Err(Error::Truncated { len }));
            assert_eq!(
                Repr::parse(&Packet::new_unchecked(bytes)),
                Err(Error::Truncated { len })
            );
            assert_eq!(parse(bytes), Err(Error::Truncated { len }));
        }
    }

    #[test]
    #[should_panic]
    fn emit_header_panics_on_short_buffer() {
        emit_header(&mut [0; 9], &Repr::PLAIN);
    }

    #[test]
    fn display() {
        assert_eq!(
            tso_repr().to_string(),
            "virtio-net gso=tcpv4 gso_size=1448 hdr_len=66 needs_csum start=34 offset=16"
        );
        let valid = Repr {
            data_valid: true,
            ..Repr::PLAIN
        };
        assert_eq!(valid.to_string(), "virtio-net gso=none data_valid");
        assert_eq!(
            Packet::new_unchecked(&TSO_HEADER[..3]).to_string(),
            "virtio-net (virtio-net header buffer of 3 bytes is shorter than the 10-byte header)"
        );
        assert_eq!(
            Error::UnknownGsoType { value: 2 }.to_string(),
            "virtio-net header has unknown gso_type 0x02"
        );
    }

    fn any_gso_type() -> impl Strategy<Value = GsoType> {
        prop_oneof![
            Just(GsoType::None),
            Just(GsoType::TcpV4),
            Just(GsoType::Udp),
            Just(GsoType::TcpV6),
            Just(GsoType::UdpL4),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(
            needs_csum: bool,
            data_valid: bool,
            gso_type in any_gso_type(),
            gso_ecn: bool,
            hdr_len: u16,
            gso_size: u16,
            csum_start: u16,
            csum_offset: u16,
        ) {
            let repr = Repr {
                needs_csum, data_valid, gso_type, gso_ecn, hdr_len, gso_size, csum_start, csum_offset,
            };
            let mut buf = [0; LEN];
            emit_header(&mut buf, &repr);
            prop_assert_eq!(parse(&buf), Ok((repr, &[][..])));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = parse(&bytes);
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = (packet.flags(), packet.gso_type(), packet.hdr_len(), packet.gso_size());
                let _ = (packet.csum_start(), packet.csum_offset(), packet.payload());
                let _ = packet.to_string();
            }
        }
    }
}
