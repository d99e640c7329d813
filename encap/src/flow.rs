//! The flow hash of an inner frame, for the outer UDP source port.
//!
//! RFC 7348 §5 recommends that a VTEP derive the outer source port from a hash of
//! the inner packet's headers, so that equal-cost paths and receive-side scaling
//! spread flows across links and cores while every packet of one flow takes the
//! same path, in order. The kernel's VXLAN does it with the flow dissector's hash;
//! weft does the same over the fields that dissector uses for IPv4 and IPv6.

use crate::inet::{self, ipv4_layout, ipv6_layout, PROTO_TCP, PROTO_UDP};

/// Hashes the flow of an Ethernet + IPv4 or IPv6 frame: addresses and protocol
/// (the upper layer's, past IPv6's extension headers), plus the ports of TCP and
/// UDP (not for fragments, whose later parts carry no ports, so all parts of one
/// datagram hash alike). Anything else hashes to 0.
///
/// Never panics. Not symmetric: the two directions of a connection are two flows.
pub fn hash(frame: &[u8]) -> u32 {
    const SEED: u32 = 0x9e37_79b9;
    let ip = crate::ETHERNET_HEADER_LEN;
    let (h, l4_start, end, protocol, fragment) = if let Ok(l) = ipv4_layout(frame) {
        let packet = crate::ipv4::Packet::new_unchecked(&frame[ip..]);
        let h = mix(SEED ^ u32::from(l.protocol), u32::from(packet.src_addr()));
        let h = mix(h, u32::from(packet.dst_addr()));
        (h, l.l4_start, l.end, l.protocol, l.fragment)
    } else if let Ok(l) = ipv6_layout(frame) {
        let addrs = &frame[ip..][inet::IPV6_ADDRS];
        let h = (addrs.chunks_exact(4)).fold(SEED ^ u32::from(l.protocol), |h, w| {
            mix(h, u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
        });
        (h, l.l4_start, l.end, l.protocol, l.fragment)
    } else {
        return 0;
    };
    let ports = match protocol {
        PROTO_TCP | PROTO_UDP if !fragment && l4_start + 4 <= end => {
            u32::from(inet::get_u16(frame, l4_start)) << 16
                | u32::from(inet::get_u16(frame, l4_start + 2))
        }
        _ => 0,
    };
    fmix(mix(h, ports))
}

/// One round of MurmurHash3's body.
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finaliser: every input bit affects every output bit.
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Tcp;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    fn tcp(src: [u8; 4], src_port: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        Tcp {
            src,
            src_port,
            seq,
            payload: payload.to_vec(),
            ..Tcp::default()
        }
        .build()
    }

    fn udp(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 244, 1, 2], [10, 244, 2, 3], 64)
            .udp(src_port, dst_port)
            .write(&mut frame, &[1; 64])
            .unwrap();
        frame
    }

    /// Sets MF: the frame becomes a first fragment.
    fn fragment(mut frame: Vec<u8>) -> Vec<u8> {
        frame[crate::ETHERNET_HEADER_LEN + 6] |= 0x20;
        frame
    }

    #[test]
    fn ports_protocol_and_addresses_all_count() {
        let all = [
            hash(&tcp([10, 244, 1, 2], 40000, 0, b"x")),
            hash(&tcp([10, 244, 1, 2], 40001, 0, b"x")),
            hash(&tcp([10, 244, 1, 3], 40000, 0, b"x")),
            hash(&udp(40000, 5201)),
        ];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j], "{i} and {j} collide");
            }
        }
    }

    #[test]
    fn one_flow_hashes_alike_whatever_its_payload_and_sequence() {
        let a = tcp([10, 244, 1, 2], 40000, 1, b"first");
        let b = tcp([10, 244, 1, 2], 40000, 9999, &[7; 900]);
        assert_eq!(hash(&a), hash(&b));
    }

    #[test]
    fn fragments_hash_without_ports() {
        let frag = hash(&fragment(udp(5000, 53)));
        assert_ne!(frag, hash(&udp(5000, 53)));
        assert_eq!(hash(&fragment(udp(6000, 54))), frag);
    }

    fn udp6(src: u8, src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut frame = Vec::new();
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = src;
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv6(a, [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9], 64)
            .udp(src_port, dst_port)
            .write(&mut frame, &[1; 64])
            .unwrap();
        frame
    }

    #[test]
    fn ipv6_flows_hash_by_addresses_and_ports() {
        let a = hash(&udp6(1, 40000, 53));
        assert_ne!(a, 0);
        assert_eq!(a, hash(&udp6(1, 40000, 53)));
        for other in [udp6(2, 40000, 53), udp6(1, 40001, 53), udp6(1, 40000, 54)] {
            assert_ne!(hash(&other), a);
        }
    }

    #[test]
    fn ipv6_fragments_hash_without_ports() {
        // A fragment header (next header 44) between the fixed header and UDP.
        let with_fragment = |src_port| {
            let plain = udp6(1, src_port, 53);
            let (head, udp) = plain.split_at(14 + 40);
            let mut frame = head.to_vec();
            frame[14 + 6] = 44;
            let len = u16::from_be_bytes([frame[18], frame[19]]) + 8;
            frame[18..20].copy_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 7]);
            frame.extend_from_slice(udp);
            frame
        };
        assert_eq!(hash(&with_fragment(1000)), hash(&with_fragment(2000)));
        assert_ne!(hash(&with_fragment(1000)), hash(&udp6(1, 1000, 53)));
    }

    #[test]
    fn neither_ip_family_hashes_to_zero() {
        let mut frame = udp(1, 2);
        // An IPv4 packet under the IPv6 ethertype.
        frame[12] = 0x86;
        frame[13] = 0xdd;
        assert_eq!(hash(&frame), 0);
        assert_eq!(hash(&[]), 0);
        let mut arp = udp(1, 2);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(hash(&arp), 0);
    }

    #[test]
    fn flows_spread_evenly_over_lanes() {
        let mut lanes = [0u32; 16];
        for port in 0..16_000u16 {
            lanes[hash(&tcp([10, 244, 1, 2], 10_000 + port, 0, b"")) as usize % 16] += 1;
        }
        // 1000 expected per lane; a fair hash stays well within ±15%.
        assert!(
            lanes.iter().all(|&n| (850..=1150).contains(&n)),
            "{lanes:?}"
        );
    }

    proptest! {
        #[test]
        fn never_panics(frame in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = hash(&frame);
        }
    }
}
