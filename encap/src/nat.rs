//! Rewriting an IPv4 packet's address and transport port in place, as a NAT does,
//! with its checksums brought up to date incrementally (RFC 1624) rather than
//! computed again over the payload.
//!
//! The IPv4 header checksum covers the addresses; TCP's and UDP's cover them too,
//! through the pseudo-header, and the ports. A packet whose transport checksum is
//! *partial* (a TAP's virtio-net `NEEDS_CSUM`, Linux's `CHECKSUM_PARTIAL`) holds in
//! that field the sum of its pseudo-header only, not complemented, and whoever
//! completes it sums the ports as they are then: so only an address change goes into
//! it, uncomplemented. A UDP checksum of 0 (none) stays 0. SCTP's CRC32c covers no
//! address; it is computed again over the packet when a port changes.
//!
//! A fragment after the first carries no transport header: only its address is
//! rewritten.
//!
//! # Panics
//!
//! Nothing here panics: a packet too short for what must be rewritten is refused
//! with [`Error`] before any byte changes.

use std::net::Ipv4Addr;

use crate::checksum::fold;
use crate::inet::{get_u16, put_u16};
use crate::ipv4;

/// Which end of a packet a rewrite changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The source address and port.
    Src,
    /// The destination address and port.
    Dst,
}

/// Why a packet cannot be rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a whole IPv4 header.
    #[error("not an IPv4 packet with a whole header")]
    NotIpv4,
    /// A port to rewrite in a transport header that is cut short.
    #[error("the transport header is cut short")]
    Truncated,
    /// A port to rewrite in a protocol without ports, or a fragment after the first.
    #[error("the packet has no transport ports")]
    NoPorts,
}

/// Where a protocol keeps its checksum, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The internet checksum over the pseudo-header, at this offset; UDP's may be 0.
    Internet { at: usize, optional: bool },
    /// SCTP's CRC32c, at offset 8.
    Crc32c,
}

/// The checksum of transport protocol `proto`, and the transport header's least
/// length, if it has ports.
fn check_of(proto: u8) -> Option<(Check, usize)> {
    match proto {
        ipv4::protocol::TCP => Some((
            Check::Internet {
                at: 16,
                optional: false,
            },
            20,
        )),
        ipv4::protocol::UDP => Some((
            Check::Internet {
                at: 6,
                optional: true,
            },
            8,
        )),
        ipv4::protocol::SCTP => Some((Check::Crc32c, 12)),
        _ => None,
    }
}

/// The one's complement difference that turns a sum over `old` into one over `new`
/// (two 16-bit words each), to add to a sum.
fn delta(old: [u8; 4], new: [u8; 4]) -> u64 {
    let w = |b: [u8; 4], i: usize| u64::from(u16::from_be_bytes([b[i], b[i + 1]]));
    (!w(old, 0) & 0xffff) + (!w(old, 2) & 0xffff) + w(new, 0) + w(new, 2)
}

/// A checksum field `check` updated by `delta`: complemented if it is a checksum,
/// as it is if not `partial` (then a pseudo-header sum, kept uncomplemented).
fn updated(check: u16, delta: u64, partial: bool) -> u16 {
    match partial {
        true => fold(u64::from(check) + delta),
        false => !fold(u64::from(!check) + delta),
    }
}

/// Checks that `rewrite` can rewrite a port of the IPv4 packet `packet`: a whole
/// IPv4 header, a first fragment (or none), a transport protocol with ports, and its
/// header whole.
pub fn check(packet: &[u8]) -> Result<(), Error> {
    let ip = ipv4::Packet::new_checked(packet).map_err(|_| Error::NotIpv4)?;
    let (_, least) = check_of(ip.protocol())
        .filter(|_| ip.frag_offset() == 0)
        .ok_or(Error::NoPorts)?;
    match packet.len().saturating_sub(ip.header_len()) >= least {
        true => Ok(()),
        false => Err(Error::Truncated),
    }
}

/// Rewrites `end`'s address of the IPv4 packet `packet` to `addr` and, if given, its
/// transport port to `port`, updating the IPv4, TCP and UDP checksums (a partial
/// transport checksum when `partial`) and SCTP's CRC32c. The packet must be whole
/// from its IPv4 header on (its length is the slice's).
pub fn rewrite(
    packet: &mut [u8],
    end: End,
    addr: Ipv4Addr,
    port: Option<u16>,
    partial: bool,
) -> Result<(), Error> {
    if port.is_some() {
        check(packet)?;
    }
    let ip = ipv4::Packet::new_checked(&*packet).map_err(|_| Error::NotIpv4)?;
    let (hl, first) = (ip.header_len(), ip.frag_offset() == 0);
    let check = check_of(ip.protocol()).filter(|_| first);
    let (addr_at, port_at) = match end {
        End::Src => (12, 0),
        End::Dst => (16, 2),
    };
    let old: [u8; 4] = packet[addr_at..addr_at + 4].try_into().unwrap_or([0; 4]);
    let new = addr.octets();
    let addr_delta = delta(old, new);
    let ip_check = get_u16(packet, 10);
    put_u16(packet, 10, updated(ip_check, addr_delta, false));
    packet[addr_at..addr_at + 4].copy_from_slice(&new);
    let l4 = &mut packet[hl..];
    match check {
        Some((Check::Internet { at, optional }, least)) if l4.len() >= least.min(at + 2) => {
            let old_check = get_u16(l4, at);
            if !(optional && old_check == 0 && !partial) {
                let mut d = addr_delta;
                if let Some(p) = port.filter(|_| !partial) {
                    let old_port = get_u16(l4, port_at);
                    d += (!u64::from(old_port) & 0xffff) + u64::from(p);
                }
                let c = updated(old_check, d, partial);
                // A computed UDP checksum of 0 is sent as all ones (RFC 768).
                put_u16(
                    l4,
                    at,
                    if optional && c == 0 && !partial {
                        0xffff
                    } else {
                        c
                    },
                );
            }
            if let Some(p) = port {
                put_u16(l4, port_at, p);
            }
        }
        Some((Check::Crc32c, _)) => {
            if let Some(p) = port {
                put_u16(l4, port_at, p);
                if !partial {
                    l4[8..12].fill(0);
                    let crc = crc32c::crc32c(l4);
                    // SCTP sends its CRC32c in little-endian byte order (RFC 4960, B).
                    l4[8..12].copy_from_slice(&crc.to_le_bytes());
                }
            }
        }
        // An address-only rewrite of a packet whose transport checksum would not
        // fit: the packet is too short to carry one, and stays as it is.
        _ => {}
    }
    Ok(())
}

/// Rewrites `end`'s address and port of the packet an ICMP error quotes, in `icmp`
/// (the ICMP message: its 8-byte header, then the quoted IPv4 header and the start
/// of its payload), as the translation of that packet's connection did to it: the
/// quoted IPv4 header's checksum and, where the quote holds it, its TCP or UDP
/// checksum are updated, and the ICMP checksum is computed again. A quote too short
/// for the ports is refused with [`Error::Truncated`] before any byte changes.
pub fn rewrite_quoted(icmp: &mut [u8], end: End, addr: Ipv4Addr, port: u16) -> Result<(), Error> {
    let quoted = icmp.get(8..).ok_or(Error::Truncated)?;
    let hl = match quoted.first() {
        Some(&b) if b >> 4 == 4 && usize::from(b & 0xf) >= 5 => usize::from(b & 0xf) * 4,
        _ => return Err(Error::NotIpv4),
    };
    if quoted.len() < hl + 4 {
        return Err(Error::Truncated);
    }
    let (proto, first) = (quoted[9], get_u16(quoted, 6) & 0x1fff == 0);
    let check = check_of(proto).filter(|_| first).ok_or(Error::NoPorts)?;
    let (addr_at, port_at) = match end {
        End::Src => (12, 0),
        End::Dst => (16, 2),
    };
    let q = &mut icmp[8..];
    let old: [u8; 4] = q[addr_at..addr_at + 4].try_into().unwrap_or([0; 4]);
    let addr_delta = delta(old, addr.octets());
    put_u16(q, 10, updated(get_u16(q, 10), addr_delta, false));
    q[addr_at..addr_at + 4].copy_from_slice(&addr.octets());
    let l4 = &mut q[hl..];
    let old_port = get_u16(l4, port_at);
    put_u16(l4, port_at, port);
    if let (Check::Internet { at, optional }, _) = check {
        let old_check = l4.get(at..at + 2).map(|_| get_u16(l4, at));
        if let Some(c) = old_check.filter(|&c| !(optional && c == 0)) {
            let d = addr_delta + (!u64::from(old_port) & 0xffff) + u64::from(port);
            put_u16(l4, at, updated(c, d, false));
        }
    }
    icmp[2..4].fill(0);
    let sum = crate::checksum::checksum(icmp);
    put_u16(icmp, 2, sum);
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::checksum::checksum;

    /// An IPv4 packet of protocol `proto` from 10.244.1.5 to 10.96.0.10 with `l4`
    /// (whose checksum the caller fills) after a 20-byte header.
    fn packet(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        p.extend_from_slice(&[10, 244, 1, 5, 10, 96, 0, 10]);
        p.extend_from_slice(l4);
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// The transport checksum field's value over `p` (internet checksum over the
    /// pseudo-header and the transport bytes, with the field zeroed).
    fn transport_checksum(p: &[u8], at: usize) -> u16 {
        let mut data = Vec::new();
        data.extend_from_slice(&p[12..20]);
        data.extend_from_slice(&[0, p[9]]);
        data.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        let mut l4 = p[20..].to_vec();
        l4[at..at + 2].fill(0);
        data.extend_from_slice(&l4);
        checksum(&data)
    }

    /// The pseudo-header sum a partial checksum field holds.
    fn pseudo_sum(p: &[u8]) -> u16 {
        let mut data = Vec::new();
        data.extend_from_slice(&p[12..20]);
        data.extend_from_slice(&[0, p[9]]);
        data.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        !checksum(&data)
    }

    fn with_checksum(proto: u8, l4: &[u8], at: usize) -> Vec<u8> {
        let mut p = packet(proto, l4);
        let c = transport_checksum(&p, at);
        p[20 + at..22 + at].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn tcp(payload: &[u8]) -> Vec<u8> {
        let mut t = vec![
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
        ];
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(payload);
        t
    }

    fn udp(payload: &[u8]) -> Vec<u8> {
        let len = (8 + payload.len()) as u16;
        let mut u = vec![0x9c, 0x40, 0, 53];
        u.extend_from_slice(&len.to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    proptest! {
        /// Incremental updates give what computing the checksums again gives, for
        /// TCP and UDP, either end, any address and port, any payload.
        #[test]
        fn incremental_checksums_match_full_ones(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            addr in any::<u32>(),
            port in any::<u16>(),
            src in any::<bool>(),
            is_tcp in any::<bool>(),
        ) {
            let (proto, l4, at) = match is_tcp {
                true => (6, tcp(&payload), 16),
                false => (17, udp(&payload), 6),
            };
            let mut p = with_checksum(proto, &l4, at);
            let end = if src { End::Src } else { End::Dst };
            rewrite(&mut p, end, Ipv4Addr::from(addr), Some(port), false).unwrap();
            prop_assert_eq!(checksum(&p[..20]), 0);
            let (a, pt) = if src { (12, 20) } else { (16, 22) };
            prop_assert_eq!(&p[a..a + 4], &addr.to_be_bytes());
            prop_assert_eq!(&p[pt..pt + 2], &port.to_be_bytes());
            let want = transport_checksum(&p, at);
            let got = u16::from_be_bytes([p[20 + at], p[21 + at]]);
            // 0 and 0xffff are the same one's complement number; UDP sends 0xffff.
            prop_assert!(got == want || (got == 0xffff && want == 0) || (got == 0 && want == 0xffff),
                "got {got:#x}, want {want:#x}");
        }

        /// A partial checksum (the pseudo-header's sum) gets the address change
        /// only, and stays the new pseudo-header's sum.
        #[test]
        fn a_partial_checksum_stays_the_pseudo_headers_sum(addr in any::<u32>(), port in any::<u16>()) {
            let mut p = packet(6, &tcp(b"hello"));
            let sum = pseudo_sum(&p);
            p[36..38].copy_from_slice(&sum.to_be_bytes());
            rewrite(&mut p, End::Dst, Ipv4Addr::from(addr), Some(port), true).unwrap();
            let got = u16::from_be_bytes([p[36], p[37]]);
            let want = pseudo_sum(&p);
            prop_assert!(got == want || (got ^ want) == 0xffff && (got == 0 || want == 0));
        }
    }

    /// An ICMP error quoting `quoted` (its first `n` bytes), its checksum right.
    fn error_quoting(quoted: &[u8], n: usize) -> Vec<u8> {
        let mut m = vec![3, 3, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&quoted[..n.min(quoted.len())]);
        let c = checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        m
    }

    #[test]
    fn a_quoted_packet_is_rewritten_with_every_checksum_kept() {
        // A whole quoted UDP datagram: its checksum is kept right too.
        let quoted = with_checksum(17, &udp(b"query"), 6);
        let mut m = error_quoting(&quoted, 64);
        rewrite_quoted(&mut m, End::Dst, Ipv4Addr::new(10, 244, 2, 7), 5353).unwrap();
        assert_eq!(checksum(&m), 0, "the ICMP checksum");
        let q = &m[8..];
        assert_eq!(checksum(&q[..20]), 0, "the quoted IPv4 checksum");
        assert_eq!(
            (&q[16..20], &q[22..24]),
            (&[10, 244, 2, 7][..], &5353u16.to_be_bytes()[..])
        );
        assert_eq!(u16::from_be_bytes([q[26], q[27]]), transport_checksum(q, 6));
        // A quote cut after the ports (a TCP header's first 8 bytes).
        let quoted = with_checksum(6, &tcp(b""), 16);
        let mut m = error_quoting(&quoted, 28);
        rewrite_quoted(&mut m, End::Dst, Ipv4Addr::new(10, 244, 2, 7), 8080).unwrap();
        assert_eq!(checksum(&m), 0);
        assert_eq!(&m[8 + 22..8 + 24], &8080u16.to_be_bytes());
        // Too short for the ports, or no IPv4 quoted: refused untouched.
        let mut short = error_quoting(&quoted, 22);
        let before = short.clone();
        assert_eq!(
            rewrite_quoted(&mut short, End::Dst, Ipv4Addr::LOCALHOST, 1),
            Err(Error::Truncated)
        );
        assert_eq!(short, before);
        let mut junk = error_quoting(&[0x60; 40], 40);
        assert_eq!(
            rewrite_quoted(&mut junk, End::Dst, Ipv4Addr::LOCALHOST, 1),
            Err(Error::NotIpv4)
        );
    }

    #[test]
    fn a_udp_datagram_without_a_checksum_keeps_none() {
        let mut p = packet(17, &udp(b"query"));
        rewrite(
            &mut p,
            End::Dst,
            Ipv4Addr::new(10, 244, 2, 7),
            Some(5353),
            false,
        )
        .unwrap();
        assert_eq!(&p[26..28], &[0, 0]);
        assert_eq!(&p[22..24], &5353u16.to_be_bytes());
        assert_eq!(checksum(&p[..20]), 0);
    }

    #[test]
    fn sctps_crc32c_is_computed_again() {
        let mut l4 = vec![0x9c, 0x40, 0x0b, 0x59, 0, 0, 0, 1, 0, 0, 0, 0];
        l4.extend_from_slice(&[1, 0, 0, 20, 1, 2, 3, 4, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
        let mut p = packet(132, &l4);
        rewrite(
            &mut p,
            End::Dst,
            Ipv4Addr::new(10, 244, 2, 7),
            Some(3869),
            false,
        )
        .unwrap();
        let mut zeroed = p[20..].to_vec();
        zeroed[8..12].fill(0);
        assert_eq!(&p[28..32], &crc32c::crc32c(&zeroed).to_le_bytes());
        assert_eq!(&p[22..24], &3869u16.to_be_bytes());
    }

    #[test]
    fn short_or_portless_packets_are_refused_untouched() {
        let mut short = packet(6, &[0x9c, 0x40, 0, 80, 0, 0]);
        let before = short.clone();
        assert_eq!(
            rewrite(&mut short, End::Dst, Ipv4Addr::LOCALHOST, Some(1), false),
            Err(Error::Truncated)
        );
        assert_eq!(short, before);
        let mut icmp = packet(1, &[8, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(
            rewrite(&mut icmp, End::Dst, Ipv4Addr::LOCALHOST, Some(1), false),
            Err(Error::NoPorts)
        );
        // The address alone may change, checksum kept right.
        rewrite(
            &mut icmp,
            End::Dst,
            Ipv4Addr::new(10, 244, 2, 7),
            None,
            false,
        )
        .unwrap();
        assert_eq!(checksum(&icmp[..20]), 0);
        assert_eq!(
            rewrite(
                &mut [0x45, 0, 0],
                End::Dst,
                Ipv4Addr::LOCALHOST,
                None,
                false
            ),
            Err(Error::NotIpv4)
        );
    }
}
