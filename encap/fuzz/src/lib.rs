//! The checks the fuzz targets run on each input.
//!
//! They live here rather than in the targets so that `encap/tests/corpus.rs`
//! can run the same checks over the seed corpus with stable Rust and no
//! libFuzzer (it includes this file as a module).

use weft_encap::sleeve::{self, Datagram, FramesWriter};
use weft_encap::vxlan;

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
    let len = match sleeve::parse(data) {
        Err(_) => return,
        Ok(Datagram::Frames { sender, frames }) => {
            let count = frames.len();
            assert!(count >= 1);
            let mut writer = FramesWriter::new(&mut rebuilt, sender).expect("room for the header");
            for frame in frames {
                assert!(writer.try_push(frame.ethertype, frame.payload));
            }
            assert_eq!(writer.records(), count);
            writer.finish()
        }
        Ok(Datagram::Heartbeat { sender, heartbeat }) => {
            sleeve::emit_heartbeat(&mut rebuilt, sender, heartbeat)
        }
    };
    assert_eq!(len, data.len());
    let reserved = 10..sleeve::HEADER_LEN;
    assert_eq!(rebuilt[..reserved.start], data[..reserved.start]);
    assert_eq!(rebuilt[reserved.clone()], [0, 0]);
    assert_eq!(rebuilt[reserved.end..], data[reserved.end..]);
}
