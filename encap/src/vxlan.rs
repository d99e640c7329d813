//! VXLAN header (RFC 7348): the UDP payload that carries an Ethernet frame.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|                  Reserved                     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          VXLAN Network Identifier (VNI)       |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |             inner Ethernet frame (without FCS) ...
//! ```
//!
//! On receive only the I flag must be set; the other flag bits and the
//! reserved fields are ignored, as RFC 7348 section 5 requires (Linux puts
//! group-policy extensions there, for instance). On send the flags are exactly
//! [`FLAG_I`] and every reserved bit is zero.
//!
//! # Panics
//!
//! - After [`Packet::new_checked`] or [`Packet::check_len`] succeeds, no
//!   accessor of that packet panics. On a [`Packet::new_unchecked`] packet
//!   shorter than [`HEADER_LEN`] they may.
//! - [`Repr::parse`] and [`parse`] never panic, whatever the input.
//! - [`Repr::emit`] never panics into a buffer of at least
//!   [`Repr::buffer_len`] bytes; [`emit_header`] panics only on a buffer
//!   shorter than [`HEADER_LEN`].

use core::fmt;

use crate::field::{Field, Rest};

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;

/// The UDP port Linux and flannel use for VXLAN (IANA's is 4789).
pub const DEFAULT_PORT: u16 = 8472;

/// The VNI flannel uses, and weft's default.
pub const DEFAULT_VNI: Vni = Vni(1);

/// The I flag: set when the VNI field is valid. The only flag weft sends.
pub const FLAG_I: u8 = 0x08;

/// Bytes a VXLAN tunnel over IPv4 adds to a pod's IP packet: outer IPv4, UDP,
/// VXLAN and the inner Ethernet header (50, so pod MTU = underlay MTU - 50).
pub const IPV4_OVERHEAD: usize =
    crate::IPV4_HEADER_LEN + crate::UDP_HEADER_LEN + HEADER_LEN + crate::ETHERNET_HEADER_LEN;

/// Errors from parsing a VXLAN datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The datagram is shorter than the VXLAN header.
    #[error("VXLAN datagram of {len} bytes is shorter than the 8-byte header")]
    Truncated {
        /// Length of the datagram.
        len: usize,
    },
    /// The I flag is clear, so the VNI is not valid.
    #[error("VXLAN flags {flags:#04x} lack the I flag (0x08)")]
    MissingIFlag {
        /// The flags byte received.
        flags: u8,
    },
    /// The inner frame is too short to hold an Ethernet header.
    #[error("VXLAN inner frame of {len} bytes is shorter than an Ethernet header (14 bytes)")]
    InnerTooShort {
        /// Length of the inner frame.
        len: usize,
    },
    /// A VNI was requested that does not fit in 24 bits.
    #[error("VNI {value} does not fit in 24 bits (max 16777215)")]
    VniOutOfRange {
        /// The value requested.
        value: u32,
    },
}

/// A VXLAN Network Identifier: a 24-bit number naming an overlay segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI, 2^24 - 1.
    pub const MAX: Vni = Vni(0x00ff_ffff);

    /// Returns the VNI `value`, or `None` if it does not fit in 24 bits.
    pub const fn new(value: u32) -> Option<Vni> {
        if value <= Vni::MAX.0 {
            Some(Vni(value))
        } else {
            None
        }
    }

    /// Returns the VNI as a number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Reads a VNI from its three big-endian bytes on the wire.
    const fn from_bytes(bytes: [u8; 3]) -> Vni {
        Vni(u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]))
    }

    /// Returns the three big-endian bytes of the VNI on the wire.
    const fn to_bytes(self) -> [u8; 3] {
        let [_, a, b, c] = self.0.to_be_bytes();
        [a, b, c]
    }
}

impl TryFrom<u32> for Vni {
    type Error = Error;

    fn try_from(value: u32) -> Result<Vni, Error> {
        Vni::new(value).ok_or(Error::VniOutOfRange { value })
    }
}

impl From<Vni> for u32 {
    fn from(vni: Vni) -> u32 {
        vni.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

mod field {
    use super::{Field, Rest};

    pub const FLAGS: usize = 0;
    pub const RESERVED_1: Field = 1..4;
    pub const VNI: Field = 4..7;
    pub const RESERVED_2: usize = 7;
    pub const PAYLOAD: Rest = 8..;
}

/// A read/write view of a VXLAN datagram (the UDP payload) in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking that it holds a whole VXLAN header.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a whole VXLAN header, so no accessor panics.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
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

    /// Returns whether the I flag (VNI valid) is set.
    pub fn i_flag(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// Returns the VNI field.
    pub fn vni(&self) -> Vni {
        let data = self.buffer.as_ref();
        Vni::from_bytes([
            data[field::VNI.start],
            data[field::VNI.start + 1],
            data[field::VNI.start + 2],
        ])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Returns the inner Ethernet frame.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the VNI field, leaving the reserved byte after it alone.
    pub fn set_vni(&mut self, value: Vni) {
        self.buffer.as_mut()[field::VNI].copy_from_slice(&value.to_bytes());
    }

    /// Zeroes both reserved fields.
    pub fn clear_reserved(&mut self) {
        let data = self.buffer.as_mut();
        data[field::RESERVED_1].fill(0);
        data[field::RESERVED_2] = 0;
    }

    /// Returns the inner Ethernet frame, for writing.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Packet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.check_len() {
            Ok(()) => write!(
                f,
                "VXLAN flags={:#04x} vni={} len={}",
                self.flags(),
                self.vni(),
                self.buffer.as_ref().len() - HEADER_LEN
            ),
            Err(err) => write!(f, "VXLAN ({err})"),
        }
    }
}

/// The meaning of a VXLAN header: just its VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The segment the inner frame belongs to.
    pub vni: Vni,
}

impl Repr {
    /// Parses a VXLAN header, which must have the I flag; never panics.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr, Error> {
        packet.check_len()?;
        if !packet.i_flag() {
            return Err(Error::MissingIFlag {
                flags: packet.flags(),
            });
        }
        Ok(Repr { vni: packet.vni() })
    }

    /// Returns the length of the header [`Repr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: flags [`FLAG_I`], the VNI, reserved bits zero.
    ///
    /// Leaves the payload alone. Never panics if the buffer is at least
    /// [`Repr::buffer_len`] bytes long.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VXLAN vni={}", self.vni)
    }
}

/// Parses a VXLAN datagram (a UDP payload) into its header and inner Ethernet frame.
///
/// Fails if the header is truncated or lacks the I flag, or if the inner frame
/// is shorter than an Ethernet header. Never panics.
pub fn parse(datagram: &[u8]) -> Result<(Repr, &[u8]), Error> {
    let packet = Packet::new_checked(datagram)?;
    let repr = Repr::parse(&packet)?;
    let inner = packet.payload();
    if inner.len() < crate::ETHERNET_HEADER_LEN {
        return Err(Error::InnerTooShort { len: inner.len() });
    }
    Ok((repr, inner))
}

/// Writes a VXLAN header for `vni` into `buf[..HEADER_LEN]`.
///
/// # Panics
///
/// Panics if `buf` is shorter than [`HEADER_LEN`].
pub fn emit_header(buf: &mut [u8], vni: Vni) {
    let mut packet = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
    Repr { vni }.emit(&mut packet);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An example VXLAN datagram (the UDP payload) in the layout Linux's vxlan
    /// device sends when set up as flannel does it: VNI 1, inner Ethernet
    /// frame from node 1's VTEP MAC to node 2's, carrying an ICMP echo request
    /// from pod 10.244.1.2 to pod 10.244.2.3 as Linux `ping` builds it (TTL 63
    /// after one routing hop, DF set, 16-byte timestamp then bytes 0x10..0x37).
    /// The checksums in it are real.
    static DATAGRAM_BYTES: [u8; 106] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, // VXLAN: I flag, VNI 1
        0xa2, 0xd4, 0xe9, 0x1c, 0x5b, 0x07, 0x6e, 0x3c, // Ethernet: dst, src
        0x81, 0xf0, 0x4a, 0x12, 0x08, 0x00, 0x45, 0x00, // ethertype IPv4; IPv4
        0x00, 0x54, 0x8c, 0x3f, 0x40, 0x00, 0x3f, 0x01, //
        0x96, 0x7d, 0x0a, 0xf4, 0x01, 0x02, 0x0a, 0xf4, //
        0x02, 0x03, 0x08, 0x00, 0xd0, 0xda, 0x1b, 0x2c, // ICMP echo request
        0x00, 0x01, 0xb3, 0xa2, 0x51, 0x66, 0x00, 0x00, //
        0x00, 0x00, 0x3e, 0x1c, 0x0a, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, //
        0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, //
        0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, //
        0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, //
        0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, //
        0x36, 0x37,
    ];

    fn inner_frame() -> &'static [u8] {
        &DATAGRAM_BYTES[HEADER_LEN..]
    }

    #[test]
    fn example_frame_is_consistent() {
        let frame = inner_frame();
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        let ip = &frame[crate::ETHERNET_HEADER_LEN..];
        assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
        assert_eq!(crate::checksum::checksum(&ip[..crate::IPV4_HEADER_LEN]), 0);
        assert_eq!(crate::checksum::checksum(&ip[crate::IPV4_HEADER_LEN..]), 0);
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&DATAGRAM_BYTES[..]).unwrap();
        assert_eq!(packet.flags(), 0x08);
        assert!(packet.i_flag());
        assert_eq!(packet.vni(), DEFAULT_VNI);
        assert_eq!(packet.payload(), inner_frame());
    }

    #[test]
    fn construct() {
        let mut bytes = [0xa5; 106];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_flags(0x08);
        packet.clear_reserved();
        packet.set_vni(Vni::new(1).unwrap());
        packet.payload_mut().copy_from_slice(inner_frame());
        assert_eq!(packet.into_inner(), &DATAGRAM_BYTES[..]);
    }

    #[test]
    fn parse_repr() {
        let packet = Packet::new_unchecked(&DATAGRAM_BYTES[..]);
        assert_eq!(Repr::parse(&packet), Ok(Repr { vni: DEFAULT_VNI }));
    }

    #[test]
    fn emit_repr() {
        let repr = Repr { vni: DEFAULT_VNI };
        let mut bytes = [0xff; 106];
        bytes[HEADER_LEN..].copy_from_slice(inner_frame());
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        assert_eq!(bytes, DATAGRAM_BYTES);
    }

    #[test]
    fn parse_datagram() {
        let (repr, inner) = parse(&DATAGRAM_BYTES).unwrap();
        assert_eq!(repr.vni.get(), 1);
        assert_eq!(inner, inner_frame());
    }

    #[test]
    fn emit_header_writes_eight_bytes() {
        let mut bytes = [0xff; 10];
        emit_header(&mut bytes, Vni::new(0x12_3456).unwrap());
        assert_eq!(bytes, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0, 0xff, 0xff]);
    }

    #[test]
    #[should_panic]
    fn emit_header_panics_on_short_buffer() {
        emit_header(&mut [0; 7], DEFAULT_VNI);
    }

    #[test]
    fn truncated() {
        for len in 0..HEADER_LEN {
            let bytes = &DATAGRAM_BYTES[..len];
            assert_eq!(Packet::new_checked(bytes), Err(Error::Truncated { len }));
            assert_eq!(
                Repr::parse(&Packet::new_unchecked(bytes)),
                Err(Error::Truncated { len })
            );
            assert_eq!(parse(bytes), Err(Error::Truncated { len }));
        }
    }

    #[test]
    fn inner_too_short() {
        let len = HEADER_LEN + crate::ETHERNET_HEADER_LEN;
        assert!(parse(&DATAGRAM_BYTES[..len]).is_ok());
        for len in HEADER_LEN..len {
            assert_eq!(
                parse(&DATAGRAM_BYTES[..len]),
                Err(Error::InnerTooShort {
                    len: len - HEADER_LEN
                })
            );
        }
    }

    #[test]
    fn reserved_bits_ignored() {
        let mut bytes = DATAGRAM_BYTES;
        bytes[0] = 0xff;
        bytes[1..4].fill(0xff);
        bytes[7] = 0xff;
        let (repr, inner) = parse(&bytes).unwrap();
        assert_eq!(repr.vni, DEFAULT_VNI);
        assert_eq!(inner, inner_frame());
    }

    #[test]
    fn i_flag_missing() {
        let mut bytes = DATAGRAM_BYTES;
        bytes[0] = 0xf7;
        assert_eq!(parse(&bytes), Err(Error::MissingIFlag { flags: 0xf7 }));
        bytes[0] = 0;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(!packet.i_flag());
        assert_eq!(Repr::parse(&packet), Err(Error::MissingIFlag { flags: 0 }));
    }

    #[test]
    fn vni_range() {
        assert_eq!(Vni::new(0).map(Vni::get), Some(0));
        assert_eq!(Vni::new(0x00ff_ffff), Some(Vni::MAX));
        assert_eq!(Vni::new(0x0100_0000), None);
        assert_eq!(
            Vni::try_from(0x0100_0000),
            Err(Error::VniOutOfRange { value: 0x0100_0000 })
        );
        assert_eq!(Vni::try_from(42).map(u32::from), Ok(42));
        assert_eq!(DEFAULT_VNI.to_string(), "1");
    }

    #[test]
    fn constants() {
        assert_eq!(IPV4_OVERHEAD, 50);
        assert_eq!(Repr { vni: DEFAULT_VNI }.buffer_len(), HEADER_LEN);
    }

    #[test]
    fn error_messages_name_the_values() {
        assert_eq!(
            Error::Truncated { len: 3 }.to_string(),
            "VXLAN datagram of 3 bytes is shorter than the 8-byte header"
        );
        assert_eq!(
            Error::MissingIFlag { flags: 0x80 }.to_string(),
            "VXLAN flags 0x80 lack the I flag (0x08)"
        );
        assert!(Error::InnerTooShort { len: 5 }
            .to_string()
            .contains(" 5 bytes"));
    }

    #[test]
    fn display() {
        let packet = Packet::new_unchecked(&DATAGRAM_BYTES[..]);
        assert_eq!(packet.to_string(), "VXLAN flags=0x08 vni=1 len=98");
        assert_eq!(
            Packet::new_unchecked(&[0u8; 2]).to_string(),
            "VXLAN (VXLAN datagram of 2 bytes is shorter than the 8-byte header)"
        );
        assert_eq!(Repr { vni: Vni::MAX }.to_string(), "VXLAN vni=16777215");
    }

    proptest! {
        #[test]
        fn round_trip(vni in 0..=Vni::MAX.get(), inner in proptest::collection::vec(any::<u8>(), 14..200)) {
            let vni = Vni::new(vni).unwrap();
            let mut buf = vec![0xff; HEADER_LEN + inner.len()];
            emit_header(&mut buf, vni);
            buf[HEADER_LEN..].copy_from_slice(&inner);
            let (repr, parsed) = parse(&buf).unwrap();
            prop_assert_eq!(repr, Repr { vni });
            prop_assert_eq!(parsed, &inner[..]);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&bytes);
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = (packet.flags(), packet.i_flag(), packet.vni(), packet.payload());
            }
        }
    }
}
