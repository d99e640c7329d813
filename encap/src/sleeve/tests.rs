use super::*;
use proptest::prelude::*;

const SENDER: NodeId = NodeId([0x6e, 0x3c, 0x81, 0xf0, 0x4a, 0x12]);

/// A frames datagram from node 6e:3c:81:f0:4a:12 carrying two IPv4 packets
/// from pod 10.244.1.2 to pod 10.244.2.3: an ICMP echo request and a UDP
/// datagram to port 53, with real checksums. The example in SLEEVE.md.
static FRAMES_BYTES: [u8; 88] = [
    0x01, 0x01, 0x00, 0x00, 0x6e, 0x3c, 0x81, 0xf0, // header: v1, frames, sender
    0x4a, 0x12, 0x01, 0x00, 0x00, 0x24, 0x08,
    0x00, // features: chunks; record: 36 bytes of IPv4
    0x45, 0x00, 0x00, 0x24, 0x12, 0x34, 0x40, 0x00, //
    0x3f, 0x01, 0x10, 0xb9, 0x0a, 0xf4, 0x01, 0x02, //
    0x0a, 0xf4, 0x02, 0x03, 0x08, 0x00, 0xdc, 0xd6, //
    0x0b, 0x0e, 0x00, 0x07, 0x01, 0x02, 0x03, 0x04, //
    0x05, 0x06, 0x07, 0x08, 0x00, 0x20, 0x08, 0x00, // record: 32 bytes of IPv4
    0x45, 0x00, 0x00, 0x20, 0x12, 0x35, 0x40, 0x00, //
    0x3f, 0x11, 0x10, 0xac, 0x0a, 0xf4, 0x01, 0x02, //
    0x0a, 0xf4, 0x02, 0x03, 0x9c, 0x40, 0x00, 0x35, //
    0x00, 0x0c, 0x6c, 0x9a, 0x77, 0x65, 0x66, 0x74, //
];

/// A heartbeat from the same node: sequence 42, sent at 4886718345 µs.
static HEARTBEAT_BYTES: [u8; 28] = [
    0x01, 0x02, 0x00, 0x00, 0x6e, 0x3c, 0x81, 0xf0, // header: v1, heartbeat, sender
    0x4a, 0x12, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // sequence
    0x00, 0x00, 0x00, 0x2a, 0x00, 0x00, 0x00, 0x01, // sent_micros
    0x23, 0x45, 0x67, 0x89,
];

const HEARTBEAT: Heartbeat = Heartbeat {
    sequence: 42,
    sent_micros: 0x1_2345_6789,
};

fn first_payload() -> &'static [u8] {
    &FRAMES_BYTES[16..52]
}

fn second_payload() -> &'static [u8] {
    &FRAMES_BYTES[56..88]
}

fn frames_of(datagram: &[u8]) -> Vec<Frame<'_>> {
    match parse(datagram).unwrap() {
        Datagram::Frames { frames, .. } => frames.collect(),
        other => panic!("expected frames, got {other:?}"),
    }
}

#[test]
fn example_payloads_are_ipv4_with_good_checksums() {
    for payload in [first_payload(), second_payload()] {
        assert_eq!(payload[0], 0x45);
        assert_eq!(usize::from(read_u16(&payload[2..4])), payload.len());
        assert_eq!(crate::checksum::checksum(&payload[..20]), 0);
    }
}

#[test]
fn deconstruct_header() {
    let packet = Packet::new_checked(&FRAMES_BYTES[..]).unwrap();
    assert_eq!(packet.version(), 1);
    assert_eq!(packet.kind(), 1);
    assert_eq!(packet.flags(), 0);
    assert_eq!(packet.sender(), SENDER);
    assert_eq!(packet.features(), FEATURE_CHUNKS);
    assert_eq!(packet.reserved(), 0);
    assert_eq!(packet.body(), &FRAMES_BYTES[HEADER_LEN..]);
}

#[test]
fn construct_header() {
    let mut bytes = [0xa5; 88];
    let mut packet = Packet::new_unchecked(&mut bytes[..]);
    packet.set_version(1);
    packet.set_kind(1);
    packet.set_flags(0);
    packet.set_sender(SENDER);
    packet.set_features(FEATURE_CHUNKS);
    packet.set_reserved(0);
    packet
        .body_mut()
        .copy_from_slice(&FRAMES_BYTES[HEADER_LEN..]);
    assert_eq!(packet.into_inner(), &FRAMES_BYTES[..]);
}

#[test]
fn parse_repr() {
    let packet = Packet::new_unchecked(&HEARTBEAT_BYTES[..]);
    assert_eq!(
        Repr::parse(&packet),
        Ok(Repr {
            kind: Kind::Heartbeat,
            sender: SENDER,
            features: 0,
        })
    );
}

#[test]
fn emit_repr() {
    let repr = Repr {
        kind: Kind::Frames,
        sender: SENDER,
        features: FEATURE_CHUNKS,
    };
    let mut bytes = [0xff; HEADER_LEN];
    repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
    assert_eq!(bytes, FRAMES_BYTES[..HEADER_LEN]);
    assert_eq!(repr.buffer_len(), HEADER_LEN);
}

#[test]
fn parse_frames() {
    let datagram = parse(&FRAMES_BYTES).unwrap();
    assert_eq!(datagram.sender(), SENDER);
    assert_eq!(datagram.kind(), Kind::Frames);
    let Datagram::Frames { frames, .. } = datagram else {
        panic!("expected frames");
    };
    assert_eq!(frames.len(), 2);
    assert_eq!(frames.clone().count(), 2);
    assert_eq!(
        frames.collect::<Vec<_>>(),
        [
            Frame {
                ethertype: 0x0800,
                payload: first_payload()
            },
            Frame {
                ethertype: 0x0800,
                payload: second_payload()
            },
        ]
    );
}

#[test]
fn frames_iterator_counts_down_and_stays_done() {
    let Datagram::Frames { mut frames, .. } = parse(&FRAMES_BYTES).unwrap() else {
        panic!("expected frames");
    };
    assert_eq!(frames.size_hint(), (2, Some(2)));
    assert!(frames.next().is_some());
    assert_eq!(frames.len(), 1);
    assert_eq!(frames.clone().count(), 1);
    assert!(frames.next().is_some());
    assert_eq!(frames.len(), 0);
    assert_eq!(frames.next(), None);
    assert_eq!(frames.next(), None);
}

#[test]
fn build_frames_with_writer() {
    let mut buf = [0xff; 200];
    let mut writer = FramesWriter::new(&mut buf, SENDER, FEATURE_CHUNKS).unwrap();
    assert!(writer.is_empty());
    assert_eq!(writer.len(), HEADER_LEN);
    assert!(writer.try_push(0x0800, first_payload()));
    assert!(writer.try_push(0x0800, second_payload()));
    assert!(!writer.is_empty());
    assert_eq!(writer.records(), 2);
    assert_eq!(writer.remaining(), 200 - 88);
    let len = writer.finish();
    assert_eq!(&buf[..len], &FRAMES_BYTES[..]);
}

#[test]
fn build_frames_with_free_functions() {
    let mut buf = [0xff; 88];
    emit_header(&mut buf, Kind::Frames, SENDER, FEATURE_CHUNKS);
    let mut at = HEADER_LEN;
    at += emit_record(&mut buf[at..], 0x0800, first_payload());
    assert_eq!(at, HEADER_LEN + record_len(36));
    emit_record_header(&mut buf[at..], 0x0800, 32);
    buf[at + RECORD_HEADER_LEN..].copy_from_slice(second_payload());
    assert_eq!(buf, FRAMES_BYTES);
}

#[test]
fn parse_heartbeat() {
    assert_eq!(
        parse(&HEARTBEAT_BYTES),
        Ok(Datagram::Heartbeat {
            sender: SENDER,
            heartbeat: HEARTBEAT
        })
    );
    assert_eq!(
        Heartbeat::parse(&HEARTBEAT_BYTES[HEADER_LEN..]),
        Ok(HEARTBEAT)
    );
}

#[test]
fn emit_heartbeat_datagram() {
    let mut buf = [0xff; 40];
    assert_eq!(emit_heartbeat(&mut buf, SENDER, 0, HEARTBEAT), 28);
    assert_eq!(buf[..28], HEARTBEAT_BYTES);
    assert_eq!(buf[28..], [0xff; 12]);
    assert_eq!(HEARTBEAT.buffer_len(), HEARTBEAT_LEN);
}

#[test]
fn truncated_header() {
    for len in 0..HEADER_LEN {
        let bytes = &FRAMES_BYTES[..len];
        assert_eq!(Packet::new_checked(bytes), Err(Error::Truncated { len }));
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(bytes)),
            Err(Error::Truncated { len })
        );
        assert_eq!(parse(bytes), Err(Error::Truncated { len }));
    }
}

#[test]
fn bad_version() {
    let mut bytes = FRAMES_BYTES;
    for version in [0, 2, 0xff] {
        bytes[0] = version;
        assert_eq!(parse(&bytes), Err(Error::BadVersion { version }));
    }
    // The version is checked before anything else in the header.
    bytes[0] = 2;
    bytes[1] = 0x77;
    bytes[2] = 0xff;
    assert_eq!(parse(&bytes), Err(Error::BadVersion { version: 2 }));
}

#[test]
fn unknown_kind() {
    let mut bytes = HEARTBEAT_BYTES;
    for kind in [0, 5, 0xff] {
        bytes[1] = kind;
        assert_eq!(parse(&bytes), Err(Error::UnknownKind { kind }));
    }
    // Kind 4 is the echo: a heartbeat's body sent back.
    bytes[1] = 4;
    match parse(&bytes).unwrap() {
        Datagram::Echo { heartbeat, .. } => {
            let mut again = [0u8; HEADER_LEN + HEARTBEAT_LEN];
            let n = emit_echo(&mut again, SENDER, FEATURE_ECHO, heartbeat);
            assert_eq!(n, again.len());
            assert_eq!(parse(&again).unwrap().kind(), Kind::Echo);
        }
        other => panic!("kind 4 parsed as {other:?}"),
    }
    assert_eq!(Kind::try_from(5), Err(Error::UnknownKind { kind: 5 }));
}

#[test]
fn any_flag_is_unsupported() {
    for bit in 0..16 {
        let flags = 1u16 << bit;
        let mut bytes = FRAMES_BYTES;
        bytes[2..4].copy_from_slice(&flags.to_be_bytes());
        assert_eq!(parse(&bytes), Err(Error::UnsupportedFlags { flags }));
    }
    let mut bytes = HEARTBEAT_BYTES;
    bytes[2..4].copy_from_slice(&FLAG_SEALED.to_be_bytes());
    bytes[1] = 9;
    assert_eq!(
        parse(&bytes),
        Err(Error::UnsupportedFlags { flags: FLAG_SEALED })
    );
}

#[test]
fn reserved_byte_and_unknown_features_ignored() {
    let mut bytes = FRAMES_BYTES;
    bytes[10..12].fill(0xff);
    let packet = Packet::new_checked(&bytes[..]).unwrap();
    assert_eq!((packet.features(), packet.reserved()), (0xff, 0xff));
    assert_eq!(Repr::parse(&packet).unwrap().features, 0xff);
    assert_eq!(frames_of(&bytes), frames_of(&FRAMES_BYTES));
}

#[test]
fn empty_frames_datagram() {
    assert_eq!(parse(&FRAMES_BYTES[..HEADER_LEN]), Err(Error::Empty));
}

#[test]
fn truncated_record_header() {
    for len in 1..RECORD_HEADER_LEN {
        assert_eq!(
            parse(&FRAMES_BYTES[..HEADER_LEN + len]),
            Err(Error::TruncatedRecord {
                offset: HEADER_LEN,
                needed: RECORD_HEADER_LEN,
                available: len
            })
        );
    }
    // A whole first record, then a partial header of the second.
    assert_eq!(
        parse(&FRAMES_BYTES[..54]),
        Err(Error::TruncatedRecord {
            offset: 52,
            needed: 4,
            available: 2
        })
    );
}

#[test]
fn truncated_record_payload() {
    assert_eq!(
        parse(&FRAMES_BYTES[..87]),
        Err(Error::TruncatedRecord {
            offset: 52,
            needed: 36,
            available: 35
        })
    );
    assert_eq!(
        parse(&FRAMES_BYTES[..HEADER_LEN + RECORD_HEADER_LEN]),
        Err(Error::TruncatedRecord {
            offset: 12,
            needed: 40,
            available: 4
        })
    );
}

#[test]
fn record_longer_than_datagram() {
    let mut bytes = FRAMES_BYTES;
    bytes[12..14].copy_from_slice(&0xffffu16.to_be_bytes());
    assert_eq!(
        parse(&bytes),
        Err(Error::TruncatedRecord {
            offset: 12,
            needed: 4 + 0xffff,
            available: 76
        })
    );
}

#[test]
fn empty_payloads_are_records() {
    let mut buf = [0; 20];
    let mut writer = FramesWriter::new(&mut buf, SENDER, FEATURE_CHUNKS).unwrap();
    assert!(writer.try_push(0x86dd, &[]));
    assert!(writer.try_push(0x0806, &[]));
    assert!(!writer.try_push(0x0800, &[]));
    let len = writer.finish();
    assert_eq!(len, 20);
    let frames = frames_of(&buf[..len]);
    assert_eq!(
        frames,
        [
            Frame {
                ethertype: 0x86dd,
                payload: &[]
            },
            Frame {
                ethertype: 0x0806,
                payload: &[]
            }
        ]
    );
}

#[test]
fn bad_heartbeat_length() {
    for len in [0, 15, 17, 100] {
        let mut bytes = vec![0; HEADER_LEN + len];
        bytes[..HEADER_LEN].copy_from_slice(&HEARTBEAT_BYTES[..HEADER_LEN]);
        assert_eq!(parse(&bytes), Err(Error::BadHeartbeatLength { len }));
    }
}

#[test]
fn writer_needs_room_for_the_header() {
    let mut buf = [0; HEADER_LEN - 1];
    assert_eq!(
        FramesWriter::new(&mut buf, SENDER, FEATURE_CHUNKS).unwrap_err(),
        Error::BufferTooSmall {
            len: 11,
            needed: 12
        }
    );
    let mut buf = [0; HEADER_LEN];
    let mut writer = FramesWriter::new(&mut buf, SENDER, FEATURE_CHUNKS).unwrap();
    assert!(!writer.try_push(0x0800, &[]));
    assert_eq!(writer.finish(), HEADER_LEN);
}

#[test]
fn writer_writes_nothing_when_full() {
    let mut buf = [0xee; 60];
    let mut writer = FramesWriter::new(&mut buf, SENDER, FEATURE_CHUNKS).unwrap();
    assert!(writer.try_push(0x0800, first_payload()));
    assert_eq!(writer.remaining(), 8);
    assert!(!writer.try_push(0x0800, second_payload()));
    assert!(!writer.try_push(0x0800, &[0; 5]));
    assert!(writer.try_push(0x0800, &[0; 4]));
    assert!(!writer.try_push(0x0800, &[]));
    assert_eq!(writer.finish(), 60);

    let mut buf = [0xee; 60];
    let mut writer = FramesWriter::new(&mut buf, SENDER, FEATURE_CHUNKS).unwrap();
    assert!(writer.try_push(0x0800, first_payload()));
    assert!(!writer.try_push(0x0800, second_payload()));
    assert_eq!(writer.finish(), 52);
    assert_eq!(buf[52..], [0xee; 8]);
}

#[test]
fn writer_rejects_oversized_payload() {
    let payload = vec![0; MAX_RECORD_PAYLOAD + 1];
    let mut buf = vec![0; HEADER_LEN + record_len(payload.len())];
    let mut writer = FramesWriter::new(&mut buf, SENDER, FEATURE_CHUNKS).unwrap();
    assert!(!writer.try_push(0x0800, &payload));
    assert!(writer.try_push(0x0800, &payload[1..]));
    let len = writer.finish();
    let frames = frames_of(&buf[..len]);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].payload.len(), MAX_RECORD_PAYLOAD);
}

#[test]
#[should_panic(expected = "longer than 65535")]
fn emit_record_panics_on_oversized_payload() {
    let payload = vec![0; MAX_RECORD_PAYLOAD + 1];
    let mut buf = vec![0; record_len(payload.len())];
    emit_record(&mut buf, 0x0800, &payload);
}

#[test]
#[should_panic]
fn emit_record_panics_on_short_buffer() {
    emit_record(&mut [0; 7], 0x0800, &[0; 4]);
}

#[test]
#[should_panic]
fn emit_heartbeat_panics_on_short_buffer() {
    emit_heartbeat(&mut [0; 27], SENDER, 0, HEARTBEAT);
}

#[test]
fn node_id_displays_as_mac() {
    assert_eq!(SENDER.to_string(), "6e:3c:81:f0:4a:12");
    assert_eq!(
        NodeId([0, 1, 2, 0xa, 0xb, 0xff]).to_string(),
        "00:01:02:0a:0b:ff"
    );
}

#[test]
fn kind_numbers() {
    assert_eq!(u8::from(Kind::Frames), 1);
    assert_eq!(u8::from(Kind::Heartbeat), 2);
    assert_eq!(Kind::try_from(1), Ok(Kind::Frames));
    assert_eq!(Kind::try_from(2), Ok(Kind::Heartbeat));
}

#[test]
fn display() {
    let packet = Packet::new_unchecked(&FRAMES_BYTES[..]);
    assert_eq!(
        packet.to_string(),
        "sleeve version=1 kind=1 flags=0x0000 sender=6e:3c:81:f0:4a:12 len=76"
    );
    assert_eq!(
        Packet::new_unchecked(&[1u8]).to_string(),
        "sleeve (sleeve datagram of 1 bytes is shorter than the 12-byte header)"
    );
    let repr = Repr {
        kind: Kind::Heartbeat,
        sender: SENDER,
        features: 0,
    };
    assert_eq!(repr.to_string(), "sleeve heartbeat from 6e:3c:81:f0:4a:12");
}

#[test]
fn error_messages_name_the_values() {
    assert_eq!(
        Error::TruncatedRecord {
            offset: 52,
            needed: 36,
            available: 35
        }
        .to_string(),
        "sleeve record at offset 52 needs 36 bytes but only 35 remain"
    );
    assert_eq!(
        Error::UnsupportedFlags { flags: 1 }.to_string(),
        "sleeve flags 0x0001 are not supported (version 1 supports none)"
    );
    assert_eq!(
        Error::BadHeartbeatLength { len: 15 }.to_string(),
        "sleeve heartbeat body of 15 bytes is not 16 bytes"
    );
    assert!(Error::BadVersion { version: 7 }
        .to_string()
        .contains("version 7"));
    assert!(Error::UnknownKind { kind: 9 }
        .to_string()
        .contains("kind 9"));
}

/// The SLEEVE.md format description, which these tests hold to the code.
const SLEEVE_MD: &str = include_str!("../../SLEEVE.md");

/// Returns the body rows of the first table after the heading `heading`, as cells.
pub(super) fn doc_table(heading: &str) -> Vec<Vec<&'static str>> {
    let mut lines = SLEEVE_MD.lines().skip_while(|line| *line != heading);
    assert!(
        lines.next().is_some(),
        "SLEEVE.md has no heading {heading:?}"
    );
    lines
        .skip_while(|line| !line.starts_with("| ---"))
        .skip(1)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Turns a field's byte range into the offset and length columns of the doc.
fn columns(range: Field) -> [String; 2] {
    [range.start.to_string(), range.len().to_string()]
}

fn offsets_and_names(table: &[Vec<&str>]) -> Vec<(String, String, String)> {
    table
        .iter()
        .map(|row| (row[0].to_owned(), row[1].to_owned(), row[2].to_owned()))
        .collect()
}

/// The rows a header table should have: its fixed fields, then `rest` from `rest_at`.
fn header_rows(
    fields: &[(&str, Field)],
    rest_at: usize,
    rest: &str,
) -> Vec<(String, String, String)> {
    let mut rows: Vec<_> = fields
        .iter()
        .map(|(name, range)| {
            let [offset, len] = columns(range.clone());
            (offset, len, (*name).to_owned())
        })
        .collect();
    rows.push((rest_at.to_string(), "rest".into(), rest.into()));
    rows
}

#[test]
fn doc_header_table_matches_code() {
    let fields = [
        ("version", field::VERSION..field::VERSION + 1),
        ("kind", field::KIND..field::KIND + 1),
        ("flags", field::FLAGS),
        ("sender", field::SENDER),
        ("features", field::FEATURES..field::FEATURES + 1),
        ("reserved", field::RESERVED..field::RESERVED + 1),
    ];
    assert_eq!(
        offsets_and_names(&doc_table("## Datagram header")),
        header_rows(&fields, field::BODY.start, "body")
    );
    assert_eq!(field::BODY.start, HEADER_LEN);
}

#[test]
fn doc_record_table_matches_code() {
    let [length_offset, length_len] = columns(field::record::LENGTH);
    let [ethertype_offset, ethertype_len] = columns(field::record::ETHERTYPE);
    let expected = vec![
        (length_offset, length_len, "length".to_owned()),
        (ethertype_offset, ethertype_len, "ethertype".to_owned()),
        (
            field::record::payload(0).start.to_string(),
            "L".to_owned(),
            "payload".to_owned(),
        ),
    ];
    assert_eq!(
        offsets_and_names(&doc_table("## Frames body: records")),
        expected
    );
    assert_eq!(field::record::payload(0).start, RECORD_HEADER_LEN);
}

#[test]
fn doc_heartbeat_table_matches_code() {
    let [sequence_offset, sequence_len] = columns(field::heartbeat::SEQUENCE);
    let [sent_offset, sent_len] = columns(field::heartbeat::SENT_MICROS);
    let expected = vec![
        (sequence_offset, sequence_len, "sequence".to_owned()),
        (sent_offset, sent_len, "sent_micros".to_owned()),
    ];
    assert_eq!(offsets_and_names(&doc_table("## Heartbeat body")), expected);
    assert_eq!(field::heartbeat::SENT_MICROS.end, HEARTBEAT_LEN);
}

#[test]
fn doc_chunk_table_matches_code() {
    use field::chunk as f;
    let one = |at: usize| at..at + 1;
    let fields = [
        ("frame_id", f::FRAME_ID),
        ("total", f::TOTAL),
        ("offset", f::OFFSET),
        ("ethertype", f::ETHERTYPE),
        ("gso_type", one(f::GSO_TYPE)),
        ("reserved", one(f::RESERVED1)),
        ("gso_size", f::GSO_SIZE),
        ("reserved", f::RESERVED2),
    ];
    assert_eq!(
        offsets_and_names(&doc_table("## Chunk body")),
        header_rows(&fields, f::DATA.start, "data")
    );
    assert_eq!(f::DATA.start, CHUNK_HEADER_LEN);
}

#[test]
fn chunks_round_trip_and_bad_ones_are_refused() {
    let repr = ChunkRepr {
        frame_id: 0x0102_0304,
        total: 2800,
        offset: 1400,
        ethertype: 0x0800,
        gso_type: crate::virtio::GSO_TCPV4,
        gso_size: 1398,
    };
    let data = [0xabu8; 1400];
    let mut buf = vec![0u8; CHUNK_OVERHEAD + data.len()];
    emit_header(&mut buf, Kind::Chunk, SENDER, FEATURE_CHUNKS);
    repr.emit(&mut buf[HEADER_LEN..]);
    buf[CHUNK_OVERHEAD..].copy_from_slice(&data);
    let Datagram::Chunk { sender, chunk } = parse(&buf).unwrap() else {
        panic!("expected a chunk");
    };
    assert_eq!(sender, SENDER);
    assert_eq!(chunk.repr, repr);
    assert_eq!(chunk.data, &data[..]);

    // Data past the announced total.
    let mut long = buf.clone();
    long.push(0);
    assert_eq!(
        parse(&long).unwrap_err(),
        Error::BadChunk {
            total: 2800,
            offset: 1400,
            len: 1401
        }
    );
    // No data.
    assert!(matches!(
        parse(&buf[..CHUNK_OVERHEAD]).unwrap_err(),
        Error::BadChunk { len: 0, .. }
    ));
    // Less than a chunk header.
    assert_eq!(
        parse(&buf[..CHUNK_OVERHEAD - 1]).unwrap_err(),
        Error::TruncatedChunk {
            len: CHUNK_HEADER_LEN - 1
        }
    );
}

#[test]
fn doc_kinds_table_matches_code() {
    let table = doc_table("## Kinds");
    let kinds: Vec<_> = table.iter().map(|row| (row[0], row[1])).collect();
    assert_eq!(
        kinds,
        [
            ("0", "none"),
            ("1", "frames"),
            ("2", "heartbeat"),
            ("3", "chunk"),
            ("4", "echo"),
            ("5", "initiation"),
            ("6", "response"),
            ("7", "cookie"),
            ("8", "confirm"),
            ("9-255", "reserved")
        ]
    );
    for (number, name) in &kinds[1..5] {
        let kind = Kind::try_from(number.parse::<u8>().unwrap()).unwrap();
        assert_eq!(kind.to_string(), *name);
    }
    assert!(Kind::try_from(0).is_err());
    assert!((5..=255).all(|kind| Kind::try_from(kind).is_err()));
}

#[test]
fn doc_constants_table_matches_code() {
    let table = doc_table("## Constants");
    let documented: Vec<(&str, &str)> = table
        .iter()
        .map(|row| (row[0].trim_matches('`'), row[1]))
        .collect();
    let actual = [
        ("VERSION", usize::from(VERSION)),
        ("HEADER_LEN", HEADER_LEN),
        ("RECORD_HEADER_LEN", RECORD_HEADER_LEN),
        ("HEARTBEAT_LEN", HEARTBEAT_LEN),
        ("CHUNK_HEADER_LEN", CHUNK_HEADER_LEN),
        ("CHUNK_OVERHEAD", CHUNK_OVERHEAD),
        ("MIN_OVERHEAD", MIN_OVERHEAD),
        ("IPV4_OVERHEAD", IPV4_OVERHEAD),
        ("MAX_RECORD_PAYLOAD", MAX_RECORD_PAYLOAD),
        ("FLAG_SEALED", usize::from(FLAG_SEALED)),
        ("FEATURE_CHUNKS", usize::from(FEATURE_CHUNKS)),
        ("FEATURE_ECHO", usize::from(FEATURE_ECHO)),
    ];
    let actual: Vec<(&str, String)> = actual
        .iter()
        .map(|(name, value)| (*name, value.to_string()))
        .collect();
    let actual: Vec<(&str, &str)> = actual.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(documented, actual);
}

#[test]
fn doc_example_is_the_test_vector() {
    // The hex dump's bytes are the two hex-digit words of each dump line
    // between the offset and the annotation.
    let dump: Vec<u8> = SLEEVE_MD
        .lines()
        .skip_while(|line| *line != "## Example")
        .skip_while(|line| *line != "```text")
        .skip(1)
        .take_while(|line| *line != "```")
        .flat_map(|line| {
            line[4..].split_whitespace().map_while(|word| {
                u8::from_str_radix(word, 16)
                    .ok()
                    .filter(|_| word.len() == 2)
            })
        })
        .collect();
    assert_eq!(dump, FRAMES_BYTES);
}

#[test]
fn overhead_constants() {
    assert_eq!(MIN_OVERHEAD, 16);
    assert_eq!(IPV4_OVERHEAD, 44);
}

/// Records for property tests: up to 12 of up to 300 bytes each.
fn records() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    proptest::collection::vec(
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..300)),
        1..12,
    )
}

proptest! {
    #[test]
    fn frames_round_trip(sender in any::<[u8; 6]>(), records in records()) {
        let sender = NodeId(sender);
        let len = HEADER_LEN + records.iter().map(|(_, p)| record_len(p.len())).sum::<usize>();
        let mut buf = vec![0; len];
        let mut writer = FramesWriter::new(&mut buf, sender, FEATURE_CHUNKS).unwrap();
        for (ethertype, payload) in &records {
            prop_assert!(writer.try_push(*ethertype, payload));
        }
        prop_assert_eq!(writer.remaining(), 0);
        prop_assert_eq!(writer.finish(), len);

        let Datagram::Frames { sender: parsed_sender, frames } = parse(&buf).unwrap() else {
            panic!("expected frames");
        };
        prop_assert_eq!(parsed_sender, sender);
        prop_assert_eq!(frames.len(), records.len());
        let parsed: Vec<_> = frames.map(|f| (f.ethertype, f.payload.to_vec())).collect();
        prop_assert_eq!(parsed, records);
    }

    #[test]
    fn writer_packs_what_fits(
        capacity in 0..400usize,
        records in records(),
    ) {
        let mut buf = vec![0; capacity];
        let Ok(mut writer) = FramesWriter::new(&mut buf, SENDER, FEATURE_CHUNKS) else {
            prop_assert!(capacity < HEADER_LEN);
            return Ok(());
        };
        let mut pushed = Vec::new();
        for (ethertype, payload) in &records {
            let fits = record_len(payload.len()) <= writer.remaining();
            prop_assert_eq!(writer.try_push(*ethertype, payload), fits);
            if fits {
                pushed.push((*ethertype, payload.clone()));
            }
        }
        let empty = writer.is_empty();
        let len = writer.finish();
        prop_assert!(len <= capacity);
        if empty {
            prop_assert_eq!(parse(&buf[..len]), Err(Error::Empty));
        } else {
            let parsed: Vec<_> = frames_of(&buf[..len])
                .into_iter()
                .map(|f| (f.ethertype, f.payload.to_vec()))
                .collect();
            prop_assert_eq!(parsed, pushed);
        }
    }

    #[test]
    fn heartbeat_round_trip(sender in any::<[u8; 6]>(), sequence in any::<u64>(), sent_micros in any::<u64>()) {
        let heartbeat = Heartbeat { sequence, sent_micros };
        let mut buf = [0; HEADER_LEN + HEARTBEAT_LEN];
        prop_assert_eq!(emit_heartbeat(&mut buf, NodeId(sender), 0, heartbeat), buf.len());
        prop_assert_eq!(
            parse(&buf),
            Ok(Datagram::Heartbeat { sender: NodeId(sender), heartbeat })
        );
    }

    #[test]
    fn parse_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = parse(&bytes);
        if let Ok(packet) = Packet::new_checked(&bytes[..]) {
            let _ = (packet.version(), packet.kind(), packet.flags(), packet.sender());
            let _ = (packet.reserved(), packet.body(), packet.to_string());
        }
    }

    #[test]
    fn parse_arbitrary_body_never_panics(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        kind in 1..=4u8,
    ) {
        let mut bytes = FRAMES_BYTES[..HEADER_LEN].to_vec();
        bytes[1] = kind;
        bytes.extend_from_slice(&body);
        match parse(&bytes) {
            Ok(Datagram::Frames { frames, .. }) => {
                let n = frames.len();
                let total: usize = frames.map(|f| record_len(f.payload.len())).sum();
                prop_assert!(n >= 1);
                prop_assert_eq!(total, body.len());
            }
            Ok(Datagram::Heartbeat { .. } | Datagram::Echo { .. }) => {
                prop_assert_eq!(body.len(), HEARTBEAT_LEN)
            }
            Ok(Datagram::Chunk { chunk, .. }) => {
                prop_assert_eq!(chunk.data.len() + CHUNK_HEADER_LEN, body.len());
                prop_assert!(
                    usize::from(chunk.repr.offset) + chunk.data.len() <= usize::from(chunk.repr.total)
                );
            }
            Err(Error::TruncatedRecord { offset, needed, available }) => {
                prop_assert!(needed > available);
                prop_assert_eq!(offset + available, bytes.len());
            }
            Err(err) => prop_assert!(
                matches!(
                    err,
                    Error::Empty
                        | Error::BadHeartbeatLength { .. }
                        | Error::TruncatedChunk { .. }
                        | Error::BadChunk { .. }
                ),
                "unexpected {:?}", err
            ),
        }
    }
}

#[test]
fn the_record_cursor_yields_what_frames_yields_by_position() {
    let Datagram::Frames { frames, .. } = parse(&FRAMES_BYTES).unwrap() else {
        panic!("the test vector is a frames datagram");
    };
    let mut cursor = RecordCursor::new();
    let mut walked = Vec::new();
    while let Some(r) = cursor.next(&FRAMES_BYTES) {
        walked.push((r.ethertype, &FRAMES_BYTES[r.payload]));
    }
    let expected: Vec<_> = frames.map(|f| (f.ethertype, f.payload)).collect();
    assert_eq!(walked, expected);
    assert_eq!(walked.len(), 2);
    // A truncated datagram ends the walk at the record that does not fit.
    let mut cursor = RecordCursor::new();
    let cut = &FRAMES_BYTES[..FRAMES_BYTES.len() - 1];
    assert!(cursor.next(cut).is_some());
    assert_eq!(cursor.next(cut), None);
    assert_eq!(RecordCursor::new().next(&FRAMES_BYTES[..5]), None);
}

proptest! {
    #[test]
    fn the_record_cursor_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut cursor = RecordCursor::new();
        let mut n = 0;
        while let Some(r) = cursor.next(&bytes) {
            prop_assert!(r.payload.end <= bytes.len());
            n += 1;
            prop_assert!(n <= bytes.len());
        }
    }
}
