//! The sleeve: weft's own UDP framing, version 1.
//!
//! A sleeve datagram is a UDP payload made of a 12-byte header naming the
//! sending node, then a body whose layout the header's kind selects: one or
//! more frame records, or a heartbeat. `encap/SLEEVE.md` documents the format
//! byte by byte, with the MTU arithmetic and the versioning rules; a unit test
//! keeps its tables and this module's constants in step.
//!
//! ```text
//!  0               1               2               3
//! +---------------+---------------+---------------+---------------+
//! |    version    |     kind      |             flags             |
//! +---------------+---------------+---------------+---------------+
//! |                            sender                             |
//! +                               +---------------+---------------+
//! |                               |   features    |   reserved    |
//! +---------------+---------------+---------------+---------------+
//! |                             body ...
//! ```
//!
//! Frames body: records back to back, each `length: u16`, `ethertype: u16`,
//! then `length` bytes of payload (the Ethernet frame after its ethertype; the
//! MAC addresses are implied by the sender and receiver). Heartbeat body:
//! `sequence: u64`, `sent_micros: u64`. All integers are big endian.
//!
//! A version 1 receiver rejects any other version, any set flag bit (they
//! announce things such as encryption it cannot undo) and any kind it does not
//! know, and ignores the reserved byte. The features byte says what the sender
//! can receive ([`FEATURE_CHUNKS`]); a sender sends a kind to a peer only once
//! that peer's own datagrams have said it understands it.
//!
//! # Panics
//!
//! - After [`Packet::new_checked`] or [`Packet::check_len`] succeeds, no
//!   accessor of that packet panics. On a [`Packet::new_unchecked`] packet
//!   shorter than [`HEADER_LEN`] they may.
//! - [`parse`], [`Repr::parse`] and [`Heartbeat::parse`] never panic, whatever
//!   the input, and iterating over the [`Frames`] of a parsed datagram never
//!   panics.
//! - [`Repr::emit`] and [`Heartbeat::emit`] never panic into a buffer of at
//!   least their `buffer_len()` bytes. [`FramesWriter`] never panics.
//! - The free `emit_*` functions panic only on a buffer shorter than what they
//!   write, or a payload longer than 65535 bytes, as their `# Panics` sections
//!   say.

use core::fmt;
use core::iter::FusedIterator;

use crate::field::{Field, Rest};

/// The version of the format this module reads and writes.
pub const VERSION: u8 = 1;

/// Length of the datagram header.
pub const HEADER_LEN: usize = 12;

/// Length of a record's header (payload length and ethertype).
pub const RECORD_HEADER_LEN: usize = 4;

/// Length of a heartbeat body.
pub const HEARTBEAT_LEN: usize = 16;

/// Length of a chunk header, before the chunk's data.
pub const CHUNK_HEADER_LEN: usize = 16;

/// Bytes of a chunk datagram before its data: the datagram and chunk headers.
pub const CHUNK_OVERHEAD: usize = HEADER_LEN + CHUNK_HEADER_LEN;

/// Bytes the sleeve adds to one frame's payload: the header and one record header.
pub const MIN_OVERHEAD: usize = HEADER_LEN + RECORD_HEADER_LEN;

/// Bytes a one-record sleeve datagram over IPv4 adds to a pod's IP packet (44,
/// under VXLAN's 50, so pods get the same MTU in both modes).
pub const IPV4_OVERHEAD: usize = crate::IPV4_HEADER_LEN + crate::UDP_HEADER_LEN + MIN_OVERHEAD;

// Pods get the same MTU in sleeve and VXLAN modes only if this holds.
const _: () = assert!(IPV4_OVERHEAD <= crate::vxlan::IPV4_OVERHEAD);

/// The largest payload a record can carry.
pub const MAX_RECORD_PAYLOAD: usize = u16::MAX as usize;

/// Flag bit 0: the body is sealed with authenticated encryption (reserved; a
/// version 1 receiver rejects it).
pub const FLAG_SEALED: u16 = 0x0001;

/// Features bit 0: the sender joins chunks ([`Kind::Chunk`]), so a peer may send
/// it super-frames whole. A receiver ignores feature bits it does not know.
pub const FEATURE_CHUNKS: u8 = 0x01;

/// Features bit 1: the sender understands heartbeat echoes ([`Kind::Echo`]), so a
/// peer answers its heartbeats with them.
pub const FEATURE_ECHO: u8 = 0x02;

/// Errors from parsing or building a sleeve datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The datagram is shorter than the sleeve header.
    #[error("sleeve datagram of {len} bytes is shorter than the 12-byte header")]
    Truncated {
        /// Length of the datagram.
        len: usize,
    },
    /// The version byte is not 1.
    #[error("sleeve version {version} is not supported (this receiver speaks version 1)")]
    BadVersion {
        /// The version received.
        version: u8,
    },
    /// The kind byte names no kind version 1 knows.
    #[error(
        "sleeve datagram kind {kind} is unknown (version 1 knows 1 = frames, 2 = heartbeat, 3 = chunk, 4 = echo)"
    )]
    UnknownKind {
        /// The kind received.
        kind: u8,
    },
    /// A flag bit is set; version 1 supports none.
    #[error("sleeve flags {flags:#06x} are not supported (version 1 supports none)")]
    UnsupportedFlags {
        /// The flags received.
        flags: u16,
    },
    /// The bytes at the end of a frames datagram do not form a whole record.
    #[error("sleeve record at offset {offset} needs {needed} bytes but only {available} remain")]
    TruncatedRecord {
        /// Offset of the record from the start of the datagram.
        offset: usize,
        /// Bytes the record needs: its header, or its header and payload.
        needed: usize,
        /// Bytes left in the datagram from `offset`.
        available: usize,
    },
    /// A frames datagram has no records.
    #[error("sleeve frames datagram has no records")]
    Empty,
    /// A heartbeat body is not exactly 16 bytes.
    #[error("sleeve heartbeat body of {len} bytes is not 16 bytes")]
    BadHeartbeatLength {
        /// Length of the body received.
        len: usize,
    },
    /// A chunk body is shorter than the chunk header.
    #[error("sleeve chunk body of {len} bytes is shorter than the 16-byte chunk header")]
    TruncatedChunk {
        /// Length of the body received.
        len: usize,
    },
    /// A chunk carries no data, or data beyond its frame's announced length.
    #[error("sleeve chunk of {len} bytes at offset {offset} does not fit a {total}-byte frame")]
    BadChunk {
        /// The frame's announced length.
        total: u16,
        /// Where the chunk's data starts in the frame.
        offset: u16,
        /// The chunk's data length.
        len: usize,
    },
    /// A handshake message (kind 5 to 7) is not exactly its kind's length.
    #[error("sleeve handshake kind {kind} of {len} bytes is not {expected} bytes")]
    BadHandshakeLength {
        /// The message's kind.
        kind: u8,
        /// Its length.
        len: usize,
        /// The length of its kind.
        expected: usize,
    },
    /// A buffer given for writing a datagram is too small.
    #[error("buffer of {len} bytes is too small for a sleeve datagram ({needed} bytes needed)")]
    BufferTooSmall {
        /// Length of the buffer.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
}

/// What a datagram's body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One or more frame records.
    Frames,
    /// A heartbeat.
    Heartbeat,
    /// A piece of a super-frame.
    Chunk,
    /// The answer to a heartbeat: its body, sent back.
    Echo,
}

impl TryFrom<u8> for Kind {
    type Error = Error;

    fn try_from(kind: u8) -> Result<Kind, Error> {
        match kind {
            1 => Ok(Kind::Frames),
            2 => Ok(Kind::Heartbeat),
            3 => Ok(Kind::Chunk),
            4 => Ok(Kind::Echo),
            _ => Err(Error::UnknownKind { kind }),
        }
    }
}

impl From<Kind> for u8 {
    fn from(kind: Kind) -> u8 {
        match kind {
            Kind::Frames => 1,
            Kind::Heartbeat => 2,
            Kind::Chunk => 3,
            Kind::Echo => 4,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Frames => "frames",
            Kind::Heartbeat => "heartbeat",
            Kind::Chunk => "chunk",
            Kind::Echo => "echo",
        })
    }
}

/// A node's identity on the wire: its VTEP MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 6]);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

mod field {
    use super::{Field, Rest};

    pub const VERSION: usize = 0;
    pub const KIND: usize = 1;
    pub const FLAGS: Field = 2..4;
    pub const SENDER: Field = 4..10;
    pub const FEATURES: usize = 10;
    pub const RESERVED: usize = 11;
    pub const BODY: Rest = 12..;

    /// A record in a frames body, from the record's start.
    pub mod record {
        use super::Field;

        pub const LENGTH: Field = 0..2;
        pub const ETHERTYPE: Field = 2..4;

        pub const fn payload(length: usize) -> Field {
            ETHERTYPE.end..ETHERTYPE.end + length
        }
    }

    /// A heartbeat body, from the body's start.
    pub mod heartbeat {
        use super::Field;

        pub const SEQUENCE: Field = 0..8;
        pub const SENT_MICROS: Field = 8..16;
    }

    /// A chunk body, from the body's start.
    pub mod chunk {
        use super::{Field, Rest};

        pub const FRAME_ID: Field = 0..4;
        pub const TOTAL: Field = 4..6;
        pub const OFFSET: Field = 6..8;
        pub const ETHERTYPE: Field = 8..10;
        pub const GSO_TYPE: usize = 10;
        pub const RESERVED1: usize = 11;
        pub const GSO_SIZE: Field = 12..14;
        pub const RESERVED2: Field = 14..16;
        pub const DATA: Rest = 16..;
    }
}

/// A read/write view of a sleeve datagram's header in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking that it holds a whole sleeve header.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a whole sleeve header, so no accessor panics.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            Err(Error::Truncated { len })
        } else {
            Ok(())
        }
    }

    /// Unwraps the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Returns the version byte.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// Returns the kind byte, unchecked.
    pub fn kind(&self) -> u8 {
        self.buffer.as_ref()[field::KIND]
    }

    /// Returns the flags field.
    pub fn flags(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::FLAGS])
    }

    /// Returns the sending node's identity.
    pub fn sender(&self) -> NodeId {
        let mut id = [0; 6];
        id.copy_from_slice(&self.buffer.as_ref()[field::SENDER]);
        NodeId(id)
    }

    /// Returns the features byte: what the sender can receive.
    pub fn features(&self) -> u8 {
        self.buffer.as_ref()[field::FEATURES]
    }

    /// Returns the reserved byte.
    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[field::RESERVED]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Returns the body after the header.
    pub fn body(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::BODY]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the version byte.
    pub fn set_version(&mut self, value: u8) {
        self.buffer.as_mut()[field::VERSION] = value;
    }

    /// Sets the kind byte.
    pub fn set_kind(&mut self, value: u8) {
        self.buffer.as_mut()[field::KIND] = value;
    }

    /// Sets the flags field.
    pub fn set_flags(&mut self, value: u16) {
        self.buffer.as_mut()[field::FLAGS].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the sending node's identity.
    pub fn set_sender(&mut self, value: NodeId) {
        self.buffer.as_mut()[field::SENDER].copy_from_slice(&value.0);
    }

    /// Sets the features byte.
    pub fn set_features(&mut self, value: u8) {
        self.buffer.as_mut()[field::FEATURES] = value;
    }

    /// Sets the reserved byte.
    pub fn set_reserved(&mut self, value: u8) {
        self.buffer.as_mut()[field::RESERVED] = value;
    }

    /// Returns the body after the header, for writing.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::BODY]
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Packet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.check_len() {
            Ok(()) => write!(
                f,
                "sleeve version={} kind={} flags={:#06x} sender={} len={}",
                self.version(),
                self.kind(),
                self.flags(),
                self.sender(),
                self.buffer.as_ref().len() - HEADER_LEN
            ),
            Err(err) => write!(f, "sleeve ({err})"),
        }
    }
}

/// The meaning of a version 1 sleeve header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// What the body holds.
    pub kind: Kind,
    /// The node that sent the datagram.
    pub sender: NodeId,
    /// What the sender can receive: [`FEATURE_CHUNKS`] and bits a later revision
    /// may define, which a receiver ignores.
    pub features: u8,
}

impl Repr {
    /// Parses a header, checking version, then flags, then kind; never panics.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr, Error> {
        packet.check_len()?;
        // The version decides how everything after it reads, so it goes first;
        // the flags may change how the body reads, so they go before the kind.
        let version = packet.version();
        if version != VERSION {
            return Err(Error::BadVersion { version });
        }
        let flags = packet.flags();
        if flags != 0 {
            return Err(Error::UnsupportedFlags { flags });
        }
        Ok(Repr {
            kind: Kind::try_from(packet.kind())?,
            sender: packet.sender(),
            features: packet.features(),
        })
    }

    /// Returns the length of the header [`Repr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: version 1, the kind, no flags, the sender, the features,
    /// reserved zero.
    ///
    /// Leaves the body alone. Never panics if the buffer is at least
    /// [`Repr::buffer_len`] bytes long.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_version(VERSION);
        packet.set_kind(self.kind.into());
        packet.set_flags(0);
        packet.set_sender(self.sender);
        packet.set_features(self.features);
        packet.set_reserved(0);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sleeve {} from {}", self.kind, self.sender)
    }
}

/// The header of a chunk: which super-frame it belongs to, where its data goes,
/// and how the whole frame is to be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRepr {
    /// The sender's id for the frame, the same in all its chunks.
    pub frame_id: u32,
    /// The length of the frame's payload (after its ethertype), all chunks together.
    pub total: u16,
    /// Where this chunk's data starts in the payload.
    pub offset: u16,
    /// The frame's ethertype.
    pub ethertype: u16,
    /// The segmentation the frame asks for, in virtio-net's numbering
    /// (`weft_encap::virtio::GSO_TCPV4`, `GSO_UDP_L4`).
    pub gso_type: u8,
    /// Payload bytes per segment.
    pub gso_size: u16,
}

impl ChunkRepr {
    /// Writes the chunk header into `body[..CHUNK_HEADER_LEN]`, reserved bytes zero.
    ///
    /// # Panics
    ///
    /// Panics if `body` is shorter than [`CHUNK_HEADER_LEN`].
    pub fn emit(&self, body: &mut [u8]) {
        use field::chunk as f;
        let body = &mut body[..CHUNK_HEADER_LEN];
        body[f::FRAME_ID].copy_from_slice(&self.frame_id.to_be_bytes());
        body[f::TOTAL].copy_from_slice(&self.total.to_be_bytes());
        body[f::OFFSET].copy_from_slice(&self.offset.to_be_bytes());
        body[f::ETHERTYPE].copy_from_slice(&self.ethertype.to_be_bytes());
        body[f::GSO_TYPE] = self.gso_type;
        body[f::RESERVED1] = 0;
        body[f::GSO_SIZE].copy_from_slice(&self.gso_size.to_be_bytes());
        body[f::RESERVED2].fill(0);
    }
}

/// A parsed chunk: its header and its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// The header.
    pub repr: ChunkRepr,
    /// The data, at `repr.offset` in the frame's payload.
    pub data: &'a [u8],
}

impl<'a> Chunk<'a> {
    /// Parses a chunk body; never panics. The data must be non-empty and end
    /// within the announced frame.
    pub fn parse(body: &'a [u8]) -> Result<Chunk<'a>, Error> {
        use field::chunk as f;
        if body.len() < CHUNK_HEADER_LEN {
            return Err(Error::TruncatedChunk { len: body.len() });
        }
        let u16_at = |r: Field| u16::from_be_bytes([body[r.start], body[r.start + 1]]);
        let repr = ChunkRepr {
            frame_id: u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            total: u16_at(f::TOTAL),
            offset: u16_at(f::OFFSET),
            ethertype: u16_at(f::ETHERTYPE),
            gso_type: body[f::GSO_TYPE],
            gso_size: u16_at(f::GSO_SIZE),
        };
        let data = &body[f::DATA];
        if data.is_empty() || usize::from(repr.offset) + data.len() > usize::from(repr.total) {
            return Err(Error::BadChunk {
                total: repr.total,
                offset: repr.offset,
                len: data.len(),
            });
        }
        Ok(Chunk { repr, data })
    }
}

/// A heartbeat: tells the receiver the sender is alive and reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Heartbeat {
    /// The sender's count of heartbeats sent to this peer.
    pub sequence: u64,
    /// When it was sent, in microseconds of the sender's monotonic clock;
    /// opaque to the receiver, for echoing back.
    pub sent_micros: u64,
}

impl Heartbeat {
    /// Parses a heartbeat body, which must be exactly 16 bytes; never panics.
    pub fn parse(body: &[u8]) -> Result<Heartbeat, Error> {
        if body.len() != HEARTBEAT_LEN {
            return Err(Error::BadHeartbeatLength { len: body.len() });
        }
        Ok(Heartbeat {
            sequence: read_u64(&body[field::heartbeat::SEQUENCE]),
            sent_micros: read_u64(&body[field::heartbeat::SENT_MICROS]),
        })
    }

    /// Returns the length of the body [`Heartbeat::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEARTBEAT_LEN
    }

    /// Writes the heartbeat body into `body[..HEARTBEAT_LEN]`.
    ///
    /// # Panics
    ///
    /// Panics if `body` is shorter than [`HEARTBEAT_LEN`].
    pub fn emit(&self, body: &mut [u8]) {
        body[field::heartbeat::SEQUENCE].copy_from_slice(&self.sequence.to_be_bytes());
        body[field::heartbeat::SENT_MICROS].copy_from_slice(&self.sent_micros.to_be_bytes());
    }
}

/// One frame from a frames datagram: an Ethernet frame without its MAC addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frame<'a> {
    /// The frame's ethertype.
    pub ethertype: u16,
    /// The frame after its ethertype, e.g. an IP packet.
    pub payload: &'a [u8],
}

/// The frames of a parsed datagram, already validated, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frames<'a> {
    /// The records not yet yielded.
    rest: &'a [u8],
    /// How many records `rest` holds.
    remaining: usize,
}

impl<'a> Frames<'a> {
    /// Validates a frames body in one walk; `offset` is where it starts in the datagram.
    fn parse(body: &'a [u8], offset: usize) -> Result<Frames<'a>, Error> {
        if body.is_empty() {
            return Err(Error::Empty);
        }
        let mut rest = body;
        let mut count = 0;
        while !rest.is_empty() {
            match split_record(rest) {
                Ok((_, tail)) => {
                    rest = tail;
                    count += 1;
                }
                Err(needed) => {
                    return Err(Error::TruncatedRecord {
                        offset: offset + (body.len() - rest.len()),
                        needed,
                        available: rest.len(),
                    })
                }
            }
        }
        Ok(Frames {
            rest: body,
            remaining: count,
        })
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Frame<'a>;

    fn next(&mut self) -> Option<Frame<'a>> {
        if self.remaining == 0 {
            return None;
        }
        match split_record(self.rest) {
            Ok((frame, tail)) => {
                self.rest = tail;
                self.remaining -= 1;
                Some(frame)
            }
            // `Frames::parse` validated every record, so this is never taken;
            // ending the iteration keeps the no-panic promise regardless.
            Err(_) => {
                self.rest = &[];
                self.remaining = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }

    fn count(self) -> usize {
        self.remaining
    }
}

impl ExactSizeIterator for Frames<'_> {}

impl FusedIterator for Frames<'_> {}

/// One record of a frames datagram, by position: for walking a datagram while
/// rewriting it in place, which a borrowing iterator cannot allow.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordAt {
    /// The frame's ethertype.
    pub ethertype: u16,
    /// Where the record's payload lies in the datagram.
    pub payload: core::ops::Range<usize>,
}

/// Walks the records of a frames datagram by position, taking the datagram at each
/// step, so the caller may write into it between steps (over records already
/// walked). It yields what [`Frames`] would, as [`RecordAt`]s, and stops at the first
/// record that does not fit, so it never panics, even on a datagram [`parse`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordCursor {
    at: usize,
}

impl RecordCursor {
    /// A cursor at the first record of a frames datagram.
    pub const fn new() -> RecordCursor {
        RecordCursor { at: HEADER_LEN }
    }

    /// The next record of `datagram`, the same datagram at every call.
    pub fn next(&mut self, datagram: &[u8]) -> Option<RecordAt> {
        let rest = datagram.get(self.at..)?;
        let (frame, _) = split_record(rest).ok()?;
        let start = self.at + RECORD_HEADER_LEN;
        let end = start + frame.payload.len();
        self.at = end;
        Some(RecordAt {
            ethertype: frame.ethertype,
            payload: start..end,
        })
    }
}

impl Default for RecordCursor {
    fn default() -> RecordCursor {
        RecordCursor::new()
    }
}

/// Splits the first record off `buf`, or returns the bytes it would need.
fn split_record(buf: &[u8]) -> Result<(Frame<'_>, &[u8]), usize> {
    let Some(header) = buf.get(..RECORD_HEADER_LEN) else {
        return Err(RECORD_HEADER_LEN);
    };
    let length = usize::from(read_u16(&header[field::record::LENGTH]));
    let ethertype = read_u16(&header[field::record::ETHERTYPE]);
    let payload_field = field::record::payload(length);
    let end = payload_field.end;
    match (buf.get(payload_field), buf.get(end..)) {
        (Some(payload), Some(tail)) => Ok((Frame { ethertype, payload }, tail)),
        _ => Err(end),
    }
}

/// A parsed sleeve datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// Frames for the receiver to deliver.
    Frames {
        /// The node that sent them.
        sender: NodeId,
        /// The frames, already validated.
        frames: Frames<'a>,
    },
    /// A heartbeat.
    Heartbeat {
        /// The node that sent it.
        sender: NodeId,
        /// Its contents.
        heartbeat: Heartbeat,
    },
    /// A piece of a super-frame.
    Chunk {
        /// The node that sent it.
        sender: NodeId,
        /// The chunk.
        chunk: Chunk<'a>,
    },
    /// The answer to one of the receiver's heartbeats.
    Echo {
        /// The node that answered.
        sender: NodeId,
        /// The heartbeat it answers, as the receiver sent it.
        heartbeat: Heartbeat,
    },
}

impl Datagram<'_> {
    /// Returns the node that sent the datagram.
    pub fn sender(&self) -> NodeId {
        match *self {
            Datagram::Frames { sender, .. }
            | Datagram::Heartbeat { sender, .. }
            | Datagram::Chunk { sender, .. }
            | Datagram::Echo { sender, .. } => sender,
        }
    }

    /// Returns the datagram's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Datagram::Frames { .. } => Kind::Frames,
            Datagram::Heartbeat { .. } => Kind::Heartbeat,
            Datagram::Chunk { .. } => Kind::Chunk,
            Datagram::Echo { .. } => Kind::Echo,
        }
    }
}

/// Parses a sleeve datagram (a UDP payload), validating every record; never panics.
pub fn parse(datagram: &[u8]) -> Result<Datagram<'_>, Error> {
    let packet = Packet::new_checked(datagram)?;
    let Repr { kind, sender, .. } = Repr::parse(&packet)?;
    let body = packet.body();
    Ok(match kind {
        Kind::Frames => Datagram::Frames {
            sender,
            frames: Frames::parse(body, HEADER_LEN)?,
        },
        Kind::Heartbeat => Datagram::Heartbeat {
            sender,
            heartbeat: Heartbeat::parse(body)?,
        },
        Kind::Chunk => Datagram::Chunk {
            sender,
            chunk: Chunk::parse(body)?,
        },
        Kind::Echo => Datagram::Echo {
            sender,
            heartbeat: Heartbeat::parse(body)?,
        },
    })
}

/// Writes a version 1 header into `buf[..HEADER_LEN]`, announcing `features`.
///
/// # Panics
///
/// Panics if `buf` is shorter than [`HEADER_LEN`].
pub fn emit_header(buf: &mut [u8], kind: Kind, sender: NodeId, features: u8) {
    let mut packet = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
    Repr {
        kind,
        sender,
        features,
    }
    .emit(&mut packet);
}

/// Returns the bytes a record with a payload of `payload_len` bytes takes.
pub const fn record_len(payload_len: usize) -> usize {
    RECORD_HEADER_LEN + payload_len
}

/// Writes a record header into `buf[..RECORD_HEADER_LEN]`, for a payload the
/// caller writes in place right after it.
///
/// # Panics
///
/// Panics if `buf` is shorter than [`RECORD_HEADER_LEN`].
pub fn emit_record_header(buf: &mut [u8], ethertype: u16, payload_len: u16) {
    buf[field::record::LENGTH].copy_from_slice(&payload_len.to_be_bytes());
    buf[field::record::ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
}

/// Writes a record at the start of `buf` and returns its length, `record_len(payload.len())`.
///
/// # Panics
///
/// Panics if `payload` is longer than [`MAX_RECORD_PAYLOAD`] or `buf` is
/// shorter than `record_len(payload.len())`.
pub fn emit_record(buf: &mut [u8], ethertype: u16, payload: &[u8]) -> usize {
    let Ok(length) = u16::try_from(payload.len()) else {
        panic!(
            "sleeve record payload of {} bytes is longer than {MAX_RECORD_PAYLOAD}",
            payload.len()
        );
    };
    let payload_field = field::record::payload(payload.len());
    let end = payload_field.end;
    let record = &mut buf[..end];
    emit_record_header(record, ethertype, length);
    record[payload_field].copy_from_slice(payload);
    end
}

/// Writes a whole heartbeat datagram at the start of `buf` and returns its length.
///
/// # Panics
///
/// Panics if `buf` is shorter than `HEADER_LEN + HEARTBEAT_LEN` (28 bytes).
pub fn emit_heartbeat(buf: &mut [u8], sender: NodeId, features: u8, heartbeat: Heartbeat) -> usize {
    emit_beat(buf, Kind::Heartbeat, sender, features, heartbeat)
}

/// Writes a whole echo datagram, answering `heartbeat`, at the start of `buf` and
/// returns its length.
///
/// # Panics
///
/// Panics if `buf` is shorter than `HEADER_LEN + HEARTBEAT_LEN` (28 bytes).
pub fn emit_echo(buf: &mut [u8], sender: NodeId, features: u8, heartbeat: Heartbeat) -> usize {
    emit_beat(buf, Kind::Echo, sender, features, heartbeat)
}

fn emit_beat(
    buf: &mut [u8],
    kind: Kind,
    sender: NodeId,
    features: u8,
    heartbeat: Heartbeat,
) -> usize {
    let datagram = &mut buf[..HEADER_LEN + HEARTBEAT_LEN];
    emit_header(datagram, kind, sender, features);
    heartbeat.emit(&mut datagram[field::BODY]);
    datagram.len()
}

/// Builds a frames datagram in a borrowed buffer, one record at a time.
///
/// The datagram is never longer than the buffer, so slice the buffer to the
/// largest datagram the path carries. A datagram with no records is invalid:
/// check [`FramesWriter::is_empty`] before sending what [`FramesWriter::finish`]
/// measured.
#[derive(Debug)]
pub struct FramesWriter<'a> {
    /// The datagram under construction, header written.
    buf: &'a mut [u8],
    /// Bytes written so far, header included.
    len: usize,
    /// Records written so far.
    records: usize,
}

impl<'a> FramesWriter<'a> {
    /// Writes the header for `sender`, announcing `features`, into `buf` and starts
    /// an empty datagram.
    ///
    /// Fails if `buf` cannot hold the header.
    pub fn new(buf: &'a mut [u8], sender: NodeId, features: u8) -> Result<FramesWriter<'a>, Error> {
        if buf.len() < HEADER_LEN {
            return Err(Error::BufferTooSmall {
                len: buf.len(),
                needed: HEADER_LEN,
            });
        }
        emit_header(buf, Kind::Frames, sender, features);
        Ok(FramesWriter {
            buf,
            len: HEADER_LEN,
            records: 0,
        })
    }

    /// Appends a record; returns false, writing nothing, if it does not fit.
    ///
    /// A payload longer than [`MAX_RECORD_PAYLOAD`] never fits.
    pub fn try_push(&mut self, ethertype: u16, payload: &[u8]) -> bool {
        if payload.len() > MAX_RECORD_PAYLOAD || record_len(payload.len()) > self.remaining() {
            return false;
        }
        self.len += emit_record(&mut self.buf[self.len..], ethertype, payload);
        self.records += 1;
        true
    }

    /// Returns the datagram's length so far, in bytes, header included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns whether no record has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Returns how many records have been pushed.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Returns the bytes left in the buffer; a record takes `record_len(payload)`.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Ends the datagram and returns its length: send `buf[..len]`.
    pub fn finish(self) -> usize {
        self.len
    }
}

/// Reads a big-endian u16 from a 2-byte field.
fn read_u16(bytes: &[u8]) -> u16 {
    let mut word = [0; 2];
    word.copy_from_slice(bytes);
    u16::from_be_bytes(word)
}

/// Reads a big-endian u64 from an 8-byte field.
fn read_u64(bytes: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(bytes);
    u64::from_be_bytes(word)
}

pub mod handshake;
pub mod seal;

#[cfg(test)]
mod tests;
