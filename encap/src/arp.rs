//! ARP (RFC 826) for IPv4 over Ethernet: the only kind a pod sends.
//!
//! ```text
//! +---------------+---------------+---------+---------+---------------+
//! | htype (2) = 1 | ptype (2)     | hlen 6  | plen 4  | operation (2) |
//! +---------------+---------------+---------+---------+---------------+
//! | sender MAC (6)        | sender IP (4)  | target MAC (6)  | target IP (4) |
//! ```
//!
//! # Panics
//!
//! After [`Packet::new_checked`] succeeds no accessor panics. [`Repr::parse`]
//! never panics; [`Repr::emit`] panics only on a buffer shorter than
//! [`PACKET_LEN`].

use core::net::Ipv4Addr;

use crate::ethernet::{self, Address};
use crate::inet::{get_u16, put_u16};

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// The hardware type of Ethernet.
const HTYPE_ETHERNET: u16 = 1;

mod field {
    use crate::field::Field;

    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

/// An ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Who has the target address?
    Request,
    /// The sender has the address asked for.
    Reply,
}

impl Operation {
    const fn to_wire(self) -> u16 {
        match self {
            Operation::Request => 1,
            Operation::Reply => 2,
        }
    }
}

/// Why bytes are not an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than [`PACKET_LEN`].
    #[error("ARP packet of {len} bytes is shorter than 28")]
    Truncated {
        /// The buffer's length.
        len: usize,
    },
    /// Another hardware or protocol type, other address lengths, or an operation
    /// other than request and reply.
    #[error("ARP packet is not an Ethernet/IPv4 request or reply")]
    Unsupported,
}

/// A read/write view of an ARP packet (the payload of an Ethernet frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking that it holds a whole packet.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let len = buffer.as_ref().len();
        if len < PACKET_LEN {
            return Err(Error::Truncated { len });
        }
        Ok(Packet::new_unchecked(buffer))
    }

    /// The operation field as sent.
    pub fn operation(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::OPER)
    }

    /// The sender's MAC.
    pub fn sender_mac(&self) -> Address {
        mac(&self.buffer.as_ref()[field::SHA])
    }

    /// The sender's IP address.
    pub fn sender_ip(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::SPA])
    }

    /// The target's MAC.
    pub fn target_mac(&self) -> Address {
        mac(&self.buffer.as_ref()[field::THA])
    }

    /// The target's IP address.
    pub fn target_ip(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::TPA])
    }
}

fn mac(bytes: &[u8]) -> Address {
    let mut m = [0u8; 6];
    m.copy_from_slice(bytes);
    m
}

fn addr(bytes: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
}

/// The meaning of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Request or reply.
    pub operation: Operation,
    /// The sender's MAC.
    pub sender_mac: Address,
    /// The sender's IP address.
    pub sender_ip: Ipv4Addr,
    /// The target's MAC (zero in a request).
    pub target_mac: Address,
    /// The target's IP address.
    pub target_ip: Ipv4Addr,
}

impl Repr {
    /// Reads an Ethernet/IPv4 request or reply; never panics.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr, Error> {
        let data = packet.buffer.as_ref();
        if data.len() < PACKET_LEN {
            return Err(Error::Truncated { len: data.len() });
        }
        let operation = match packet.operation() {
            1 => Operation::Request,
            2 => Operation::Reply,
            _ => return Err(Error::Unsupported),
        };
        if get_u16(data, field::HTYPE) != HTYPE_ETHERNET
            || get_u16(data, field::PTYPE) != ethernet::ethertype::IPV4
            || data[field::HLEN] != 6
            || data[field::PLEN] != 4
        {
            return Err(Error::Unsupported);
        }
        Ok(Repr {
            operation,
            sender_mac: packet.sender_mac(),
            sender_ip: packet.sender_ip(),
            target_mac: packet.target_mac(),
            target_ip: packet.target_ip(),
        })
    }

    /// Writes the packet into `buf[..PACKET_LEN]`.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`PACKET_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..PACKET_LEN];
        put_u16(b, field::HTYPE, HTYPE_ETHERNET);
        put_u16(b, field::PTYPE, ethernet::ethertype::IPV4);
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
        put_u16(b, field::OPER, self.operation.to_wire());
        b[field::SHA].copy_from_slice(&self.sender_mac);
        b[field::SPA].copy_from_slice(&self.sender_ip.octets());
        b[field::THA].copy_from_slice(&self.target_mac);
        b[field::TPA].copy_from_slice(&self.target_ip.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trips_and_others_are_refused() {
        let repr = Repr {
            operation: Operation::Request,
            sender_mac: [2, 0, 0, 0, 0, 1],
            sender_ip: Ipv4Addr::new(10, 244, 1, 2),
            target_mac: [0; 6],
            target_ip: Ipv4Addr::new(10, 244, 1, 1),
        };
        let mut buf = [0u8; PACKET_LEN];
        repr.emit(&mut buf);
        assert_eq!(&buf[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&packet).unwrap(), repr);
        let mut bad = buf;
        bad[7] = 3;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bad[..])),
            Err(Error::Unsupported)
        );
        bad = buf;
        bad[4] = 8;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bad[..])),
            Err(Error::Unsupported)
        );
        assert_eq!(
            Packet::new_checked(&buf[..27]).unwrap_err(),
            Error::Truncated { len: 27 }
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Repr::parse(&Packet::new_unchecked(&bytes[..]));
        }
    }
}
