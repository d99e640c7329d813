//! UDP header (RFC 768).
//!
//! # Panics
//!
//! After [`Packet::new_checked`] succeeds no accessor panics.

use crate::inet::get_u16;

/// Length of the header.
pub const HEADER_LEN: usize = 8;

/// Byte offsets of the header's fields, shared with segmentation.
pub(crate) mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// The datagram is shorter than its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("UDP datagram of {len} bytes is shorter than its 8-byte header")]
pub struct Truncated {
    /// The datagram's length.
    pub len: usize,
}

/// A read view of a UDP datagram (an IPv4 payload).
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

    /// The source port.
    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header and data.
    pub fn len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Whether the length field says there is no data.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// The checksum field (0: none was computed).
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }
}

/// The source and destination ports of a TCP, UDP or SCTP packet, which all keep
/// them in their first four bytes; `None` for other protocols or a payload too short
/// to hold them. `payload` is the IPv4 payload of a first (or only) fragment.
pub fn ports(protocol: u8, payload: &[u8]) -> Option<(u16, u16)> {
    use crate::ipv4::protocol::{SCTP, TCP, UDP};
    if !matches!(protocol, TCP | UDP | SCTP) || payload.len() < 4 {
        return None;
    }
    Some((get_u16(payload, 0), get_u16(payload, 2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ports_and_length() {
        let d = [0x9c, 0x40, 0x00, 0x35, 0x00, 0x0c, 0x12, 0x34, 1, 2, 3, 4];
        let p = Packet::new_checked(&d[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (40000, 53, 12));
        assert_eq!(p.checksum(), 0x1234);
        assert!(!p.is_empty());
        assert!(Packet::new_checked(&d[..7]).is_err());
        assert_eq!(ports(17, &d), Some((40000, 53)));
        assert_eq!(ports(132, &d), Some((40000, 53)));
        assert_eq!(ports(1, &d), None);
        assert_eq!(ports(6, &d[..3]), None);
    }
}
