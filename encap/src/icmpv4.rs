//! ICMPv4 (RFC 792): the messages a router sends and the queries pods ping with.
//!
//! ```text
//! +-----------+-----------+---------------------------+
//! | type (1)  | code (1)  | checksum (2)              |
//! +-----------+-----------+---------------------------+
//! | rest of header (4): echo id and sequence, or the  |
//! | next-hop MTU of "fragmentation needed", or unused |
//! +---------------------------------------------------+
//! | data: for an error, the offending packet's IPv4   |
//! | header and at least its first 8 payload bytes     |
//! ```
//!
//! # Panics
//!
//! After [`Packet::new_checked`] succeeds no accessor panics.
//! [`ErrorRepr::emit`] says when it panics.

use crate::checksum;
use crate::inet::{get_u16, put_u16};

/// Length of the header: type, code, checksum and the 4-byte rest.
pub const HEADER_LEN: usize = 8;

/// Message types weft sends or reads.
pub mod kind {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable.
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
}

/// Codes of destination unreachable.
pub mod unreachable {
    /// Host unreachable.
    pub const HOST: u8 = 1;
    /// Port unreachable: nothing takes the packet's transport port.
    pub const PORT: u8 = 3;
    /// Fragmentation needed and DF set: the rest of the header holds the MTU.
    pub const FRAG_NEEDED: u8 = 4;
}

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const IDENT: usize = 4;
    pub const SEQ: usize = 6;
    pub const UNUSED: usize = 4;
    pub const NEXT_HOP_MTU: usize = 6;
}

/// Whether messages of type `t` are errors, which no router answers with another
/// error (RFC 1812 4.3.2.7): everything but the queries and their replies (echo,
/// timestamp, information, address mask: 0, 8 and 13 to 18). Unknown types count
/// as errors, the safe side.
pub const fn is_error_type(t: u8) -> bool {
    !matches!(t, 0 | 8 | 13..=18)
}

/// The message is shorter than its 8-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ICMP message of {len} bytes is shorter than its 8-byte header")]
pub struct Truncated {
    /// The message's length.
    pub len: usize,
}

/// A read/write view of an ICMPv4 message (an IPv4 payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking that it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Truncated> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Truncated { len });
        }
        Ok(Packet::new_unchecked(buffer))
    }

    /// The message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// The code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Whether this is an error message (see [`is_error_type`]).
    pub fn is_error(&self) -> bool {
        is_error_type(self.msg_type())
    }

    /// The identifier of an echo request or reply.
    pub fn echo_ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// The sequence number of an echo request or reply.
    pub fn echo_seq(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SEQ)
    }

    /// The next-hop MTU of a "fragmentation needed".
    pub fn next_hop_mtu(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::NEXT_HOP_MTU)
    }

    /// Whether the checksum over the whole message is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.buffer.as_ref()) == 0
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The data after the header: for an error, the packet it is about.
    pub fn data(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// An ICMP error about a packet: destination unreachable, time exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorRepr {
    /// The message type ([`kind::DEST_UNREACHABLE`], [`kind::TIME_EXCEEDED`]).
    pub kind: u8,
    /// Its code.
    pub code: u8,
    /// The next-hop MTU for [`unreachable::FRAG_NEEDED`], else 0.
    pub next_hop_mtu: u16,
}

impl ErrorRepr {
    /// The length of the message quoting `quoted` bytes.
    pub const fn buffer_len(quoted: usize) -> usize {
        HEADER_LEN + quoted
    }

    /// Writes the message, quoting `quoted` (the offending packet's start), into
    /// `buf[..buffer_len(quoted.len())]`, checksum filled.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`ErrorRepr::buffer_len`] of the quote.
    pub fn emit(&self, buf: &mut [u8], quoted: &[u8]) {
        let m = &mut buf[..Self::buffer_len(quoted.len())];
        m[field::TYPE] = self.kind;
        m[field::CODE] = self.code;
        put_u16(m, field::CHECKSUM, 0);
        put_u16(m, field::UNUSED, 0);
        put_u16(m, field::NEXT_HOP_MTU, self.next_hop_mtu);
        m[HEADER_LEN..].copy_from_slice(quoted);
        let sum = checksum::checksum(m);
        put_u16(m, field::CHECKSUM, sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_quotes_and_checksums() {
        let quoted = [0x45u8, 0, 0, 28, 1, 2, 3, 4];
        let mut buf = [0u8; 32];
        ErrorRepr {
            kind: kind::DEST_UNREACHABLE,
            code: unreachable::FRAG_NEEDED,
            next_hop_mtu: 1450,
        }
        .emit(&mut buf, &quoted);
        let p = Packet::new_checked(&buf[..16]).unwrap();
        assert!(p.verify_checksum());
        assert!(p.is_error());
        assert_eq!((p.msg_type(), p.code(), p.next_hop_mtu()), (3, 4, 1450));
        assert_eq!(p.data(), &quoted);
        assert!(Packet::new_checked(&buf[..7]).is_err());
    }

    #[test]
    fn queries_are_not_errors() {
        for t in [0, 8, 13, 14, 15, 16, 17, 18] {
            assert!(!is_error_type(t), "{t}");
        }
        for t in [3, 4, 5, 11, 12, 42] {
            assert!(is_error_type(t), "{t}");
        }
    }
}
