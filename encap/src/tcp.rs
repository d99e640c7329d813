//! TCP header (RFC 9293): ports, sequence numbers, flags, as the switch reads them.
//!
//! # Panics
//!
//! After [`Packet::new_checked`] succeeds no accessor panics: it checks that the
//! data offset is at least 5 words and the header fits the buffer.

use crate::inet::{get_u16, get_u32, put_u32};

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

/// Flag bits, in the flags byte.
pub mod flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment number is valid.
    pub const ACK: u8 = 0x10;
    /// Urgent.
    pub const URG: u8 = 0x20;
    /// ECN echo.
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced.
    pub const CWR: u8 = 0x80;
}

/// Byte offsets of the header's fields, shared with segmentation and coalescing.
pub(crate) mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: core::ops::Range<usize> = 14..16;
    pub const CHECKSUM: usize = 16;
}

/// Why bytes are not a TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than a minimal header, or than its data offset says.
    #[error("TCP segment of {len} bytes is shorter than its header")]
    Truncated {
        /// The segment's length.
        len: usize,
    },
    /// A data offset below 5 words.
    #[error("TCP data offset {0} words is below 5")]
    DataOffset(u8),
}

/// A read/write view of a TCP segment (an IPv4 payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking the data offset against it.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let data = buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated { len: data.len() });
        }
        let words = data[field::DATA_OFFSET] >> 4;
        if words < 5 {
            return Err(Error::DataOffset(words));
        }
        if usize::from(words) * 4 > data.len() {
            return Err(Error::Truncated { len: data.len() });
        }
        Ok(Packet::new_unchecked(buffer))
    }

    /// The source port.
    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The sequence number.
    pub fn seq(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::SEQ)
    }

    /// The acknowledgment number.
    pub fn ack(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::ACK)
    }

    /// The header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The flags byte (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether SYN is set.
    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    /// Whether ACK is set.
    pub fn ack_flag(&self) -> bool {
        self.flags() & flags::ACK != 0
    }

    /// Whether FIN is set.
    pub fn fin(&self) -> bool {
        self.flags() & flags::FIN != 0
    }

    /// Whether RST is set.
    pub fn rst(&self) -> bool {
        self.flags() & flags::RST != 0
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The data after the header.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the sequence number, leaving the checksum alone.
    pub fn set_seq(&mut self, seq: u32) {
        put_u32(self.buffer.as_mut(), field::SEQ, seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_a_header_with_options() {
        let mut s = [0u8; 28];
        s[0..2].copy_from_slice(&40000u16.to_be_bytes());
        s[2..4].copy_from_slice(&80u16.to_be_bytes());
        s[4..8].copy_from_slice(&7u32.to_be_bytes());
        s[12] = 6 << 4;
        s[13] = flags::SYN | flags::ACK;
        let p = Packet::new_checked(&s[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.seq()), (40000, 80, 7));
        assert!(p.syn() && p.ack_flag() && !p.fin() && !p.rst());
        assert_eq!((p.header_len(), p.payload().len()), (24, 4));
        s[12] = 8 << 4;
        assert_eq!(
            Packet::new_checked(&s[..]).unwrap_err(),
            Error::Truncated { len: 28 }
        );
        s[12] = 4 << 4;
        assert_eq!(
            Packet::new_checked(&s[..]).unwrap_err(),
            Error::DataOffset(4)
        );
    }

    proptest! {
        #[test]
        fn accessors_never_panic_after_check(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = (p.src_port(), p.dst_port(), p.seq(), p.ack(), p.flags());
                prop_assert_eq!(p.header_len() + p.payload().len(), bytes.len());
            }
        }
    }
}
