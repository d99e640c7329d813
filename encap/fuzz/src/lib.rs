//! The checks the fuzz targets run on each input.
//!
//! They live here rather than in the targets so that `encap/tests/corpus.rs`
//! can run the same checks over the seed corpus with stable Rust and no
//! libFuzzer (it includes this file as a module).

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use weft_encap::sleeve::{self, handshake, seal, Datagram, FramesWriter};
use weft_encap::{checksum, gro, gso, nat, virtio, vxlan};

/// Parses `data` as a VXLAN datagram; if it parses, re-emits and reparses it.
///
/// Panics if a parser or accessor panics, or if the round trip changes
/// anything but the bits a receiver ignores.
pub fn vxlan_parse(data: &[u8]) {
    if let Ok(packet) = vxlan::Packet::new_checked(data) {
        let _ = (
            packet.flags(),
            packet.i_flag(),
            packet.vni(),
            packet.payload(),
        );
        let _ = packet.to_string();
    }
    let Ok((repr, inner)) = vxlan::parse(data) else {
        return;
    };
    assert!(inner.len() >= weft_encap::ETHERNET_HEADER_LEN);
    let mut buf = data.to_vec();
    vxlan::emit_header(&mut buf, repr.vni);
    assert_eq!(buf[0], vxlan::FLAG_I);
    assert_eq!(buf[4..7], data[4..7], "the VNI bytes must survive");
    assert_eq!(buf[1..4], [0; 3]);
    assert_eq!(buf[7], 0);
    assert_eq!(vxlan::parse(&buf), Ok((repr, inner)));
}

/// Parses `data` as a sleeve datagram; if it parses, rebuilds it from what
/// was parsed and compares.
///
/// Panics if a parser, accessor or iterator panics, or if the rebuilt
/// datagram differs from `data` outside the reserved bytes.
pub fn sleeve_parse(data: &[u8]) {
    if let Ok(packet) = sleeve::Packet::new_checked(data) {
        let _ = (
            packet.version(),
            packet.kind(),
            packet.flags(),
            packet.sender(),
        );
        let _ = (packet.reserved(), packet.body(), packet.to_string());
    }
    let mut rebuilt = vec![0; data.len()];
    // Kept as it came: the rebuilt header announces the same features.
    let features = data.get(10).copied().unwrap_or(0);
    let len = match sleeve::parse(data) {
        Err(_) => return,
        Ok(Datagram::Frames { sender, frames }) => {
            let count = frames.len();
            assert!(count >= 1);
            let mut writer =
                FramesWriter::new(&mut rebuilt, sender, features).expect("room for the header");
            for frame in frames {
                assert!(writer.try_push(frame.ethertype, frame.payload));
            }
            assert_eq!(writer.records(), count);
            writer.finish()
        }
        Ok(Datagram::Heartbeat { sender, heartbeat }) => {
            sleeve::emit_heartbeat(&mut rebuilt, sender, features, heartbeat)
        }
        Ok(Datagram::Echo { sender, heartbeat }) => {
            sleeve::emit_echo(&mut rebuilt, sender, features, heartbeat)
        }
        Ok(Datagram::Chunk { sender, chunk }) => {
            assert!(!chunk.data.is_empty());
            assert!(
                usize::from(chunk.repr.offset) + chunk.data.len() <= usize::from(chunk.repr.total)
            );
            sleeve::emit_header(&mut rebuilt, sleeve::Kind::Chunk, sender, features);
            chunk.repr.emit(&mut rebuilt[sleeve::HEADER_LEN..]);
            rebuilt[sleeve::CHUNK_OVERHEAD..].copy_from_slice(chunk.data);
            // The chunk header's reserved bytes are written as zero.
            for r in [11, 14, 15] {
                rebuilt[sleeve::HEADER_LEN + r] = data[sleeve::HEADER_LEN + r];
            }
            data.len()
        }
    };
    assert_eq!(len, data.len());
    // Everything but the header's reserved byte, written as zero, comes back.
    let reserved = 11;
    assert_eq!(rebuilt[..reserved], data[..reserved]);
    assert_eq!(rebuilt[reserved], 0);
    assert_eq!(rebuilt[reserved + 1..], data[reserved + 1..]);
}

/// Takes `data` as what a TAP read returns: a virtio-net header, then a
/// frame. Segments the frame as the header asks, checks every segment, and
/// coalesces TCP segments back.
///
/// The header's `hdr_len`, which `gso::segment` ignores, picks the headroom
/// (`hdr_len % 64`), so the fuzzer varies it too. Panics if anything panics,
/// if the sizing helpers disagree with `segment`, if a segment's lengths or
/// checksums are wrong, or if segmenting or coalescing loses, adds or
/// reorders a payload byte.
pub fn gso_segment(data: &[u8]) {
    if let Ok(packet) = virtio::Packet::new_checked(data) {
        let _ = (packet.flags(), packet.gso_type(), packet.hdr_len());
        let _ = (packet.gso_size(), packet.csum_start(), packet.csum_offset());
        let _ = (packet.payload(), packet.to_string());
    }
    let Ok((hdr, frame)) = virtio::parse(data) else {
        return;
    };
    if hdr.needs_csum {
        check_complete_checksum(frame, hdr.csum_start.into(), hdr.csum_offset.into());
    }
    let headroom = usize::from(hdr.hdr_len % 64);
    let len = match gso::required_out_len(frame, &hdr, headroom) {
        Ok(len) => len,
        Err(err) => {
            assert_eq!(gso::segment(frame, &hdr, &mut [], headroom), Err(err));
            return;
        }
    };
    let mut short = vec![0; len - 1];
    assert_eq!(
        gso::segment(frame, &hdr, &mut short, headroom),
        Err(gso::Error::OutputTooSmall {
            len: len - 1,
            needed: len
        })
    );
    let mut out = vec![0; len];
    let segments = gso::segment(frame, &hdr, &mut out, headroom).expect("room for the segments");
    assert_eq!(segments.total_len(), len);
    assert_eq!(segments.stride(), headroom + segments.segment_len());

    let (headers_len, end) = super_frame_layout(frame);
    let payload = &frame[headers_len..end];
    assert_eq!(
        segments.count(),
        gso::segment_count(payload.len(), hdr.gso_size)
    );
    let mut joined = Vec::with_capacity(payload.len());
    for seg in segments.frames(&out) {
        joined.extend_from_slice(check_segment(seg, headers_len, hdr.gso_size));
    }
    assert_eq!(segments.frames(&out).count(), segments.count());
    assert_eq!(joined, payload);

    if matches!(
        hdr.gso_type,
        virtio::GsoType::TcpV4 | virtio::GsoType::UdpL4
    ) {
        check_coalesced(segments.frames(&out), payload);
    }
}

/// Pushes `segments` through a [`gro::Coalescer`] (UDP on) and checks every frame
/// it delivers; their payloads must join up to `payload`.
fn check_coalesced<'a>(segments: impl Iterator<Item = &'a [u8]>, payload: &[u8]) {
    let mut coalescer = gro::Coalescer::new(vec![0; gro::buffer_len(0)], 0).unwrap();
    coalescer.set_udp(true);
    let mut joined = Vec::with_capacity(payload.len());
    let mut deliver = |repr: virtio::Repr, frame: &[u8]| {
        let mut frame = frame.to_vec();
        if repr.needs_csum {
            let (start, offset) = (repr.csum_start.into(), repr.csum_offset.into());
            gso::complete_checksum(&mut frame, start, offset).unwrap();
        }
        let (headers_len, _) = super_frame_layout(&frame);
        joined.extend_from_slice(check_segment(&frame, headers_len, u16::MAX));
    };
    for seg in segments {
        loop {
            match coalescer.push(seg) {
                gro::Push::Started | gro::Push::Merged => break,
                gro::Push::NotMerged => {
                    let (repr, held) = coalescer.take().expect("NotMerged holds a frame");
                    deliver(repr, held);
                }
                gro::Push::Deliver => {
                    deliver(virtio::Repr::PLAIN, seg);
                    break;
                }
                gro::Push::Other => panic!("a segment pushed as neither TCP nor UDP"),
            }
        }
    }
    if let Some((repr, held)) = coalescer.take() {
        deliver(repr, held);
    }
    assert_eq!(joined, payload);
}

/// Completes a NEEDS_CSUM checksum on a copy of `frame`; if it succeeds with
/// an even offset, checks that the field now cancels the sum it replaced.
fn check_complete_checksum(frame: &[u8], start: usize, offset: usize) {
    let mut copy = frame.to_vec();
    if gso::complete_checksum(&mut copy, start, offset).is_err() || offset % 2 == 1 {
        return;
    }
    let at = start + offset;
    let old = u16::from_be_bytes([frame[at], frame[at + 1]]);
    let new_sum = checksum::sum(&copy[start..]);
    assert_eq!(checksum::combine(new_sum, old), 0xffff);
}

/// Returns where the payload of a frame `gso::segment` accepted starts and ends.
fn super_frame_layout(frame: &[u8]) -> (usize, usize) {
    let ip = &frame[14..];
    let ip_header_len = usize::from(ip[0] & 0x0f) * 4;
    let end = 14 + usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4_start = 14 + ip_header_len;
    let l4_header_len = match ip[9] {
        6 => usize::from(frame[l4_start + 12] >> 4) * 4,
        17 => 8,
        protocol => panic!("segmented a frame of IP protocol {protocol}"),
    };
    (l4_start + l4_header_len, end)
}

/// Checks a segment's IPv4 header, lengths and L4 checksum and returns its payload.
fn check_segment(seg: &[u8], headers_len: usize, gso_size: u16) -> &[u8] {
    assert!(seg.len() >= headers_len);
    let ip = &seg[14..];
    let ip_header_len = usize::from(ip[0] & 0x0f) * 4;
    assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
    assert_eq!(
        checksum::checksum(&ip[..ip_header_len]),
        0,
        "IPv4 header checksum"
    );
    let l4 = &ip[ip_header_len..];
    let protocol = ip[9];
    if protocol == 17 {
        assert_eq!(usize::from(u16::from_be_bytes([l4[4], l4[5]])), l4.len());
    }
    let l4_len = (l4.len() as u16).to_be_bytes();
    let pseudo = checksum::combine(
        checksum::sum(&ip[12..20]),
        checksum::sum(&[0, protocol, l4_len[0], l4_len[1]]),
    );
    assert_eq!(
        checksum::combine(pseudo, checksum::sum(l4)),
        0xffff,
        "L4 checksum"
    );
    let payload = &seg[headers_len..];
    assert!(payload.len() <= usize::from(gso_size));
    payload
}

/// The key the `seal_open` target's inputs are sealed with (the seeds' key).
pub const SEAL_FUZZ_KEY: [u8; 32] = [0x5e; 32];

/// Opens `data` as a sealed sleeve datagram under [`SEAL_FUZZ_KEY`], with either
/// cipher (the first byte picks; the rest is the datagram), in a fresh replay
/// window; if it opens, the plain datagram must parse, the window must hold its
/// counter and refuse it again, and sealing the plain datagram again must give the
/// input back.
///
/// Panics if a parser panics or any of that fails.
pub fn seal_open(data: &[u8]) {
    let Some((&pick, datagram)) = data.split_first() else {
        return;
    };
    let cipher = if pick & 1 == 0 {
        seal::Cipher::ChaCha20Poly1305
    } else {
        seal::Cipher::Aes256Gcm
    };
    let _ = seal::is_sealed(datagram);
    let Ok(head) = seal::parse(datagram) else {
        return;
    };
    let key = seal::SealKey::new(cipher, &SEAL_FUZZ_KEY);
    let mut window = seal::ReplayWindow::new();
    let mut buf = datagram.to_vec();
    let Ok(range) = seal::open(&key, &mut window, &mut buf) else {
        assert_eq!(
            window.highest(),
            None,
            "a refused datagram moved the window"
        );
        return;
    };
    assert_eq!(window.highest(), Some(head.counter));
    assert!(window.check(head.counter).is_err(), "a replay would pass");
    let plain = buf[range].to_vec();
    let _ = sleeve::parse(&plain);
    let mut again = plain[..sleeve::HEADER_LEN].to_vec();
    again.extend_from_slice(&[0; seal::SEAL_HEADER_LEN]);
    again.extend_from_slice(&plain[sleeve::HEADER_LEN..]);
    again.extend_from_slice(&[0; seal::TAG_LEN]);
    seal::seal(&key, head.receiver, head.counter, &mut again).expect("reseal");
    assert_eq!(again, datagram, "sealing the opened datagram again differs");
}

/// Parses `data` as a handshake message (kinds 5 to 7) through every view and
/// [`handshake::parse`]; if it parses, re-emits it from its `Repr` (and its MACs,
/// which the `Repr` leaves out) and reparses it.
///
/// Panics if a parser or accessor panics, or if the round trip changes
/// anything but the header's reserved byte.
pub fn handshake_parse(data: &[u8]) {
    if let Ok(m) = handshake::Initiation::new_checked(data) {
        let _ = (m.sender_index(), m.noise(), m.mac1(), m.mac2());
        let _ = (m.mac1_input(), m.mac2_input(), m.header().kind());
    }
    if let Ok(m) = handshake::Response::new_checked(data) {
        let _ = (m.sender_index(), m.receiver_index(), m.noise());
        let _ = (m.mac1(), m.mac2(), m.mac1_input(), m.mac2_input());
    }
    if let Ok(m) = handshake::CookieReply::new_checked(data) {
        let _ = (
            m.receiver_index(),
            m.nonce(),
            m.sealed_cookie(),
            m.header().sender(),
        );
    }
    let _ = handshake::is_confirm(data);
    let Ok(repr) = handshake::parse(data) else {
        return;
    };
    assert!(handshake::is_handshake(data));
    let _ = repr.to_string();
    let mut rebuilt = vec![0; repr.buffer_len()];
    assert_eq!(repr.emit(&mut rebuilt), data.len());
    if !matches!(repr, handshake::Repr::Cookie(_)) {
        // The MACs are computed over the emitted bytes, not carried in the Repr.
        let macs = data.len() - 2 * handshake::MAC_LEN;
        rebuilt[macs..].copy_from_slice(&data[macs..]);
    }
    let reserved = 11;
    assert_eq!(rebuilt[reserved], 0);
    rebuilt[reserved] = data[reserved];
    assert_eq!(rebuilt, data);
    assert_eq!(handshake::parse(&rebuilt), Ok(repr));
}

/// Whether the TCP or UDP checksum of the whole IPv4 packet `p` (options-free
/// header assumed by the caller) holds; `None` when it has none to check.
fn transport_checksum_holds(p: &[u8]) -> Option<bool> {
    let hl = usize::from(p[0] & 0xf) * 4;
    let at = match p[9] {
        6 => 16,
        17 if p.len() >= hl + 8 && p[hl + 6..hl + 8] != [0, 0] => 6,
        _ => return None,
    };
    let l4 = p.get(hl..).filter(|l4| l4.len() >= at + 2)?;
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&p[12..20]);
    pseudo[9] = p[9];
    pseudo[10..12].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    let acc = checksum::accumulate(checksum::accumulate(0, &pseudo), l4);
    Some(checksum::fold(acc) == 0xffff)
}

/// Rewrites, as a NAT does, the IPv4 packet after `data`'s first 8 bytes (a new
/// address and port, which end, and whether the packet is an ICMP error whose
/// quote is rewritten): the result of `nat::rewrite` or `nat::rewrite_quoted`.
///
/// Panics if anything panics, if a refused rewrite changed a byte, or if a checksum
/// that held before a rewrite does not after it: the IPv4 header's, a whole
/// packet's TCP or UDP checksum, an ICMP error's own.
pub fn nat_rewrite(data: &[u8]) -> Result<(), nat::Error> {
    let Some((head, packet)) = data.split_first_chunk::<8>() else {
        return Err(nat::Error::NotIpv4);
    };
    let addr = std::net::Ipv4Addr::new(head[0], head[1], head[2], head[3]);
    let port = u16::from_be_bytes([head[4], head[5]]);
    let end = if head[6] & 1 == 0 {
        nat::End::Src
    } else {
        nat::End::Dst
    };
    let mut p = packet.to_vec();
    let whole =
        p.len() >= 20 && p[0] == 0x45 && usize::from(u16::from_be_bytes([p[2], p[3]])) == p.len();
    let header_held = whole && checksum::checksum(&p[..20]) == 0;
    let transport_held = whole.then(|| transport_checksum_holds(&p)).flatten();
    let result = match head[7] & 1 {
        0 => nat::rewrite(&mut p, end, addr, Some(port), false),
        _ => {
            let icmp = p.get_mut(20..).ok_or(nat::Error::NotIpv4)?;
            let done = nat::rewrite_quoted(icmp, end, addr, port);
            if done.is_ok() {
                assert_eq!(checksum::checksum(icmp), 0, "the ICMP checksum");
            }
            done
        }
    };
    if result.is_err() {
        assert_eq!(p, packet, "a refused rewrite changed nothing");
        return result;
    }
    if header_held {
        assert_eq!(checksum::checksum(&p[..20]), 0, "the IPv4 checksum");
    }
    if head[7] & 1 == 0 && transport_held == Some(true) {
        assert_eq!(
            transport_checksum_holds(&p),
            Some(true),
            "the transport checksum"
        );
    }
    result
}

/// Parses `data` as an IPv6 packet and walks its extension headers; the first
/// byte, when it is not a packet, is also a next-header value for a walk over the
/// rest (extension headers alone).
///
/// Panics if a parser or accessor panics, if the upper layer lies outside the
/// payload, or if a re-emitted fixed header reads back differently.
pub fn ipv6_parse(data: &[u8]) {
    use weft_encap::ipv6;
    if let Some((&next, rest)) = data.split_first() {
        if let Ok(u) = ipv6::upper_layer(next, rest) {
            assert!(u.offset <= rest.len());
        }
    }
    let Ok(packet) = ipv6::Packet::new_checked(data) else {
        return;
    };
    let _ = (packet.flow_label(), packet.to_string());
    assert_eq!(packet.payload().len(), packet.payload_len());
    if let Ok(u) = ipv6::upper_layer(packet.next_header(), packet.payload()) {
        assert!(u.offset <= packet.payload().len());
    }
    let repr = ipv6::Repr::parse(&packet);
    let mut buf = packet.packet().to_vec();
    repr.emit(&mut buf);
    let again = ipv6::Packet::new_checked(&buf[..]).expect("re-emitted");
    assert_eq!(ipv6::Repr::parse(&again), repr);
    assert_eq!(again.payload(), packet.payload());
}

/// Parses `data` as an ICMPv6 message; one that parses is re-emitted and must
/// parse to the same message, and a checksum filled for some addresses must
/// verify for them.
///
/// Panics if a parser or accessor panics, or if a round trip differs.
pub fn icmpv6_parse(data: &[u8]) {
    use weft_encap::icmpv6;
    let Ok(packet) = icmpv6::Packet::new_checked(data) else {
        return;
    };
    let _ = (packet.msg_type(), packet.code(), packet.body());
    let Ok(repr) = icmpv6::Repr::parse(&packet) else {
        return;
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf);
    let (src, dst) = ("fd00::2".parse().unwrap(), "fd00::1".parse().unwrap());
    let mut out = icmpv6::Packet::new_checked(&mut buf[..]).expect("emitted");
    out.fill_checksum(&src, &dst);
    assert!(out.verify_checksum(&src, &dst));
    assert_eq!(icmpv6::Repr::parse(&out), Ok(repr));
}
