//! Ethernet II frame header (no FCS, no VLAN tag: weft's ports never carry them).
//!
//! ```text
//! +-------------------+-------------------+-----------+----------------
//! | destination (6)   | source (6)        | type (2)  | payload ...
//! +-------------------+-------------------+-----------+----------------
//! ```
//!
//! # Panics
//!
//! After [`Frame::new_checked`] or [`Frame::check_len`] succeeds, no accessor of
//! that frame panics; on a [`Frame::new_unchecked`] frame shorter than
//! [`HEADER_LEN`] they may. [`Repr::parse`] never panics; [`Repr::emit`] never
//! panics into a buffer of at least [`HEADER_LEN`] bytes.

use core::fmt;

/// Length of the header: destination MAC, source MAC, ethertype.
pub const HEADER_LEN: usize = 14;

/// The ethertypes weft knows.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6 (not forwarded yet).
    pub const IPV6: u16 = 0x86dd;
    /// weft's control frames between weft nodes over VXLAN (heartbeats): IEEE 802's
    /// "local experimental ethertype 1", which no other protocol claims. A kernel
    /// VXLAN peer drops them as an unknown protocol.
    pub const WEFT_CONTROL: u16 = 0x88b5;
}

/// A MAC address.
pub type Address = [u8; 6];

/// Byte offsets of the header's fields, shared with the modules that rewrite
/// headers in place.
pub(crate) mod field {
    use crate::field::{Field, Rest};

    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const PAYLOAD: Rest = 14..;
}

/// The frame is shorter than an Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Ethernet frame of {len} bytes is shorter than its 14-byte header")]
pub struct Truncated {
    /// The frame's length.
    pub len: usize,
}

/// A read/write view of an Ethernet frame in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking its length; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a buffer, checking that it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, Truncated> {
        let frame = Frame::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that the buffer holds a whole header, so no accessor panics.
    pub fn check_len(&self) -> Result<(), Truncated> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Truncated { len });
        }
        Ok(())
    }

    /// Unwraps the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The destination MAC.
    pub fn dst(&self) -> Address {
        read_mac(&self.buffer.as_ref()[field::DESTINATION])
    }

    /// The source MAC.
    pub fn src(&self) -> Address {
        read_mac(&self.buffer.as_ref()[field::SOURCE])
    }

    /// The ethertype.
    pub fn ethertype(&self) -> u16 {
        crate::inet::get_u16(self.buffer.as_ref(), field::ETHERTYPE)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Frame<&'a T> {
    /// The payload: everything after the header.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination MAC.
    pub fn set_dst(&mut self, mac: Address) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac);
    }

    /// Sets the source MAC.
    pub fn set_src(&mut self, mac: Address) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac);
    }

    /// Sets the ethertype.
    pub fn set_ethertype(&mut self, value: u16) {
        crate::inet::put_u16(self.buffer.as_mut(), field::ETHERTYPE, value);
    }

    /// The payload, for writing.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

fn read_mac(bytes: &[u8]) -> Address {
    let mut mac = [0u8; 6];
    mac.copy_from_slice(bytes);
    mac
}

/// The meaning of an Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Destination MAC.
    pub dst: Address,
    /// Source MAC.
    pub src: Address,
    /// Ethertype.
    pub ethertype: u16,
}

impl Repr {
    /// Reads the header of a frame; never panics.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &Frame<&T>) -> Result<Repr, Truncated> {
        frame.check_len()?;
        Ok(Repr {
            dst: frame.dst(),
            src: frame.src(),
            ethertype: frame.ethertype(),
        })
    }

    /// Writes the header; never panics into a buffer of at least [`HEADER_LEN`].
    ///
    /// # Panics
    ///
    /// If the frame's buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_dst(self.dst);
        frame.set_src(self.src);
        frame.set_ethertype(self.ethertype);
    }
}

/// Writes an Ethernet header into `buf[..HEADER_LEN]`.
///
/// # Panics
///
/// If `buf` is shorter than [`HEADER_LEN`].
pub fn emit_header(buf: &mut [u8], dst: Address, src: Address, ethertype: u16) {
    Repr {
        dst,
        src,
        ethertype,
    }
    .emit(&mut Frame::new_unchecked(&mut buf[..HEADER_LEN]));
}

impl<T: AsRef<[u8]>> fmt::Display for Frame<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.check_len() {
            Ok(()) => {
                let mac = |m: Address| {
                    format!(
                        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                        m[0], m[1], m[2], m[3], m[4], m[5]
                    )
                };
                write!(
                    f,
                    "Ethernet {} > {} type={:#06x}",
                    mac(self.src()),
                    mac(self.dst()),
                    self.ethertype()
                )
            }
            Err(e) => write!(f, "Ethernet ({e})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_and_writes_the_header() {
        let mut buf = [0u8; 20];
        emit_header(&mut buf, [1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], 0x0806);
        assert_eq!(&buf[..14], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 8, 6]);
        let frame = Frame::new_checked(&buf[..]).unwrap();
        let repr = Repr::parse(&frame).unwrap();
        assert_eq!(repr.ethertype, ethertype::ARP);
        assert_eq!((repr.dst[0], repr.src[5]), (1, 12));
        assert_eq!(frame.payload().len(), 6);
        assert_eq!(
            Frame::new_checked(&buf[..13]).unwrap_err(),
            Truncated { len: 13 }
        );
        assert!(frame.to_string().contains("type=0x0806"));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let frame = Frame::new_unchecked(&bytes[..]);
            if let Ok(repr) = Repr::parse(&frame) {
                let mut out = bytes.clone();
                repr.emit(&mut Frame::new_unchecked(&mut out[..]));
                prop_assert_eq!(out, bytes);
            } else {
                prop_assert!(bytes.len() < HEADER_LEN);
            }
        }
    }
}
