//! The handshake's datagrams: an initiation (kind 5), a response (kind 6) and a
//! cookie reply (kind 7), and the confirm (kind 8) an initiator seals when it has
//! nothing else to send on a new session.
//!
//! Kinds 5 to 7 are plain sleeve datagrams (flags 0) of a fixed length each; an
//! initiation and a response end in two MACs. `SLEEVE.md` ("Handshake") lays them
//! out byte by byte and says what the Noise messages in them hold; this module only
//! frames them. The Noise handshake, the MAC keys and the cookie's AEAD are the
//! switch's (`weft_switch::crypto`): nothing here holds a key.
//!
//! ```text
//! initiation   header(12) sender(4) noise(105) mac1(16) mac2(16)         153 bytes
//! response     header(12) sender(4) receiver(4) noise(49) mac1 mac2     101 bytes
//! cookie       header(12) receiver(4) nonce(12) cookie(16) tag(16)       60 bytes
//! confirm      header(12), kind 8, only ever sealed
//! ```
//!
//! # Panics
//!
//! - After a view's `new_checked` or `check_len` succeeds, none of its accessors
//!   panics. On a `new_unchecked` view of the wrong length they may.
//! - [`parse`] and [`Repr::parse`] never panic, whatever the input.
//! - [`Repr::emit`] never panics into a buffer of at least [`Repr::buffer_len`]
//!   bytes; [`emit_confirm`] panics into one shorter than [`HEADER_LEN`].

use core::fmt;

use super::{Error, NodeId, Packet, HEADER_LEN, VERSION};

/// Kind of a handshake initiation.
pub const KIND_INITIATION: u8 = 5;
/// Kind of a handshake response.
pub const KIND_RESPONSE: u8 = 6;
/// Kind of a cookie reply.
pub const KIND_COOKIE: u8 = 7;
/// Kind of a session's confirmation: sealed, with an empty body.
pub const KIND_CONFIRM: u8 = 8;

/// Length of a MAC.
pub const MAC_LEN: usize = 16;
/// Length of a cookie reply's nonce.
pub const NONCE_LEN: usize = 12;
/// Length of a cookie reply's sealed cookie: the cookie (a MAC key) and its tag.
pub const SEALED_COOKIE_LEN: usize = MAC_LEN + 16;

/// The initiation's Noise payload: a wall-clock timestamp (nanoseconds, u64) and
/// the sender's preferred cipher (one byte).
pub const INIT_PAYLOAD_LEN: usize = 9;
/// The response's Noise payload: the responder's preferred cipher.
pub const RESP_PAYLOAD_LEN: usize = 1;

/// Noise IK message 1: ephemeral key, encrypted static key and tag, payload and tag.
pub const NOISE_INIT_LEN: usize = 32 + 32 + 16 + INIT_PAYLOAD_LEN + 16;
/// Noise IK message 2: ephemeral key, payload and tag.
pub const NOISE_RESP_LEN: usize = 32 + RESP_PAYLOAD_LEN + 16;

/// An initiation datagram: header, sender index, Noise message, mac1, mac2.
pub const INITIATION_LEN: usize = field::initiation::MAC2.end;
/// A response datagram: header, sender and receiver index, Noise message, MACs.
pub const RESPONSE_LEN: usize = field::response::MAC2.end;
/// A cookie reply: header, receiver index, nonce, sealed cookie and its tag.
pub const COOKIE_LEN: usize = field::cookie::SEALED.end;

mod field {
    use super::{MAC_LEN, NOISE_INIT_LEN, NOISE_RESP_LEN, NONCE_LEN, SEALED_COOKIE_LEN};
    use crate::field::Field;

    const BODY: usize = super::HEADER_LEN;

    /// The two MACs at the end of a message that ends at `end`.
    pub const fn macs(end: usize) -> (Field, Field) {
        (end - 2 * MAC_LEN..end - MAC_LEN, end - MAC_LEN..end)
    }

    pub mod initiation {
        use super::*;

        pub const SENDER: Field = BODY..BODY + 4;
        pub const NOISE: Field = SENDER.end..SENDER.end + NOISE_INIT_LEN;
        pub const MAC1: Field = NOISE.end..NOISE.end + MAC_LEN;
        pub const MAC2: Field = MAC1.end..MAC1.end + MAC_LEN;
    }

    pub mod response {
        use super::*;

        pub const SENDER: Field = BODY..BODY + 4;
        pub const RECEIVER: Field = SENDER.end..SENDER.end + 4;
        pub const NOISE: Field = RECEIVER.end..RECEIVER.end + NOISE_RESP_LEN;
        pub const MAC1: Field = NOISE.end..NOISE.end + MAC_LEN;
        pub const MAC2: Field = MAC1.end..MAC1.end + MAC_LEN;
    }

    pub mod cookie {
        use super::*;

        pub const RECEIVER: Field = BODY..BODY + 4;
        pub const NONCE: Field = RECEIVER.end..RECEIVER.end + NONCE_LEN;
        pub const SEALED: Field = NONCE.end..NONCE.end + SEALED_COOKIE_LEN;
    }
}

fn u32_at(b: &[u8], at: core::ops::Range<usize>) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at]);
    u32::from_be_bytes(v)
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut v = [0u8; N];
    v.copy_from_slice(b);
    v
}

/// Defines a view of one handshake message: a buffer of exactly its length.
macro_rules! message_view {
    ($(#[$doc:meta])* $name:ident, $len:expr, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// The message's length: a datagram of its kind has exactly this many bytes.
            pub const LEN: usize = $len;
            /// Its sleeve kind.
            pub const KIND: u8 = $kind;

            /// Wraps a buffer without checking its length; accessors may then panic.
            pub const fn new_unchecked(buffer: T) -> $name<T> {
                $name { buffer }
            }

            /// Wraps a buffer, checking that it has the message's length.
            pub fn new_checked(buffer: T) -> Result<$name<T>, Error> {
                let view = $name::new_unchecked(buffer);
                view.check_len()?;
                Ok(view)
            }

            /// Checks that the buffer is exactly as long as the message, so no
            /// accessor panics.
            pub fn check_len(&self) -> Result<(), Error> {
                let len = self.buffer.as_ref().len();
                if len == Self::LEN {
                    Ok(())
                } else {
                    Err(Error::BadHandshakeLength {
                        kind: Self::KIND,
                        len,
                        expected: Self::LEN,
                    })
                }
            }

            /// The sleeve header's view.
            pub fn header(&self) -> Packet<&[u8]> {
                Packet::new_unchecked(&self.buffer.as_ref()[..HEADER_LEN])
            }

            /// Unwraps the buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }
        }
    };
}

/// Defines the MAC accessors of a message that ends in mac1 and mac2.
macro_rules! macs {
    ($name:ident) => {
        impl<T: AsRef<[u8]>> $name<T> {
            /// The first MAC, keyed by the receiver's static public key.
            pub fn mac1(&self) -> [u8; MAC_LEN] {
                array(&self.buffer.as_ref()[field::macs(Self::LEN).0])
            }

            /// The second MAC, keyed by a cookie (zero without one).
            pub fn mac2(&self) -> [u8; MAC_LEN] {
                array(&self.buffer.as_ref()[field::macs(Self::LEN).1])
            }

            /// What mac1 covers: the message up to mac1.
            pub fn mac1_input(&self) -> &[u8] {
                &self.buffer.as_ref()[..field::macs(Self::LEN).0.start]
            }

            /// What mac2 covers: the message up to mac2, mac1 included.
            pub fn mac2_input(&self) -> &[u8] {
                &self.buffer.as_ref()[..field::macs(Self::LEN).1.start]
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            /// Sets mac1.
            pub fn set_mac1(&mut self, mac: &[u8; MAC_LEN]) {
                self.buffer.as_mut()[field::macs(Self::LEN).0].copy_from_slice(mac);
            }

            /// Sets mac2.
            pub fn set_mac2(&mut self, mac: &[u8; MAC_LEN]) {
                self.buffer.as_mut()[field::macs(Self::LEN).1].copy_from_slice(mac);
            }
        }
    };
}

message_view!(
    /// A read/write view of an initiation (kind 5).
    Initiation,
    INITIATION_LEN,
    KIND_INITIATION
);
macs!(Initiation);

message_view!(
    /// A read/write view of a response (kind 6).
    Response,
    RESPONSE_LEN,
    KIND_RESPONSE
);
macs!(Response);

message_view!(
    /// A read/write view of a cookie reply (kind 7).
    CookieReply,
    COOKIE_LEN,
    KIND_COOKIE
);

impl<T: AsRef<[u8]>> Initiation<T> {
    /// The initiator's index for the session.
    pub fn sender_index(&self) -> u32 {
        u32_at(self.buffer.as_ref(), field::initiation::SENDER)
    }

    /// Noise message 1.
    pub fn noise(&self) -> &[u8] {
        &self.buffer.as_ref()[field::initiation::NOISE]
    }
}

impl<T: AsRef<[u8]>> Response<T> {
    /// The responder's index for the session.
    pub fn sender_index(&self) -> u32 {
        u32_at(self.buffer.as_ref(), field::response::SENDER)
    }

    /// The initiator's index, from the initiation answered.
    pub fn receiver_index(&self) -> u32 {
        u32_at(self.buffer.as_ref(), field::response::RECEIVER)
    }

    /// Noise message 2.
    pub fn noise(&self) -> &[u8] {
        &self.buffer.as_ref()[field::response::NOISE]
    }
}

impl<T: AsRef<[u8]>> CookieReply<T> {
    /// The initiator's index, from the initiation answered.
    pub fn receiver_index(&self) -> u32 {
        u32_at(self.buffer.as_ref(), field::cookie::RECEIVER)
    }

    /// The nonce the cookie is sealed with.
    pub fn nonce(&self) -> [u8; NONCE_LEN] {
        array(&self.buffer.as_ref()[field::cookie::NONCE])
    }

    /// The sealed cookie and its tag.
    pub fn sealed_cookie(&self) -> [u8; SEALED_COOKIE_LEN] {
        array(&self.buffer.as_ref()[field::cookie::SEALED])
    }
}

/// An initiation's meaning, its MACs aside (they are computed over the emitted
/// bytes: see [`Initiation::mac1_input`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitiationRepr {
    /// The initiator.
    pub sender: NodeId,
    /// The initiator's sleeve features.
    pub features: u8,
    /// The initiator's index for the session.
    pub index: u32,
    /// Noise message 1.
    pub noise: [u8; NOISE_INIT_LEN],
}

/// A response's meaning, its MACs aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseRepr {
    /// The responder.
    pub sender: NodeId,
    /// The responder's sleeve features.
    pub features: u8,
    /// The responder's index for the session.
    pub index: u32,
    /// The initiator's index, from the initiation.
    pub receiver: u32,
    /// Noise message 2.
    pub noise: [u8; NOISE_RESP_LEN],
}

/// A cookie reply's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieRepr {
    /// The node answering.
    pub sender: NodeId,
    /// Its sleeve features (sent as zero).
    pub features: u8,
    /// The initiator's index, from the initiation answered.
    pub receiver: u32,
    /// The nonce the cookie is sealed with.
    pub nonce: [u8; NONCE_LEN],
    /// The sealed cookie and its tag.
    pub sealed: [u8; SEALED_COOKIE_LEN],
}

/// A handshake message's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    /// Kind 5.
    Initiation(InitiationRepr),
    /// Kind 6.
    Response(ResponseRepr),
    /// Kind 7.
    Cookie(CookieRepr),
}

/// Whether `datagram` says it is a handshake message: version 1 and kind 5, 6 or
/// 7, whatever its length and flags. What says so goes to the handshake, to be
/// parsed there or refused as malformed, never to the switch; a receiver asks
/// [`super::seal::is_sealed`] first. Never panics.
pub fn is_handshake(datagram: &[u8]) -> bool {
    datagram.get(super::field::VERSION) == Some(&VERSION)
        && datagram
            .get(super::field::KIND)
            .is_some_and(|k| (KIND_INITIATION..=KIND_COOKIE).contains(k))
}

/// Whether the plain (opened) datagram `datagram` is a confirm. Never panics.
pub fn is_confirm(datagram: &[u8]) -> bool {
    Packet::new_checked(datagram).is_ok_and(|p| p.kind() == KIND_CONFIRM)
}

/// Writes a confirm's plain datagram, a bare header of kind 8, into
/// `buf[..HEADER_LEN]`; returns its length. It is sealed before it is sent.
///
/// # Panics
///
/// Panics if `buf` is shorter than [`HEADER_LEN`].
pub fn emit_confirm(buf: &mut [u8], sender: NodeId, features: u8) -> usize {
    let mut p = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
    write_header(&mut p, KIND_CONFIRM, sender, features);
    HEADER_LEN
}

fn write_header(p: &mut Packet<&mut [u8]>, kind: u8, sender: NodeId, features: u8) {
    p.set_version(VERSION);
    p.set_kind(kind);
    p.set_flags(0);
    p.set_sender(sender);
    p.set_features(features);
    p.set_reserved(0);
}

impl Repr {
    /// Parses a handshake message: version 1, flags 0, kind 5 to 7 and exactly
    /// that kind's length. Its MACs are not checked here. Never panics.
    pub fn parse(datagram: &[u8]) -> Result<Repr, Error> {
        let header = Packet::new_checked(datagram)?;
        let version = header.version();
        if version != VERSION {
            return Err(Error::BadVersion { version });
        }
        let flags = header.flags();
        if flags != 0 {
            return Err(Error::UnsupportedFlags { flags });
        }
        let (sender, features) = (header.sender(), header.features());
        Ok(match header.kind() {
            KIND_INITIATION => {
                let m = Initiation::new_checked(datagram)?;
                Repr::Initiation(InitiationRepr {
                    sender,
                    features,
                    index: m.sender_index(),
                    noise: array(m.noise()),
                })
            }
            KIND_RESPONSE => {
                let m = Response::new_checked(datagram)?;
                Repr::Response(ResponseRepr {
                    sender,
                    features,
                    index: m.sender_index(),
                    receiver: m.receiver_index(),
                    noise: array(m.noise()),
                })
            }
            KIND_COOKIE => {
                let m = CookieReply::new_checked(datagram)?;
                Repr::Cookie(CookieRepr {
                    sender,
                    features,
                    receiver: m.receiver_index(),
                    nonce: m.nonce(),
                    sealed: m.sealed_cookie(),
                })
            }
            kind => return Err(Error::UnknownKind { kind }),
        })
    }

    /// The message's kind.
    pub const fn kind(&self) -> u8 {
        match self {
            Repr::Initiation(_) => KIND_INITIATION,
            Repr::Response(_) => KIND_RESPONSE,
            Repr::Cookie(_) => KIND_COOKIE,
        }
    }

    /// The node that sent it.
    pub const fn sender(&self) -> NodeId {
        match self {
            Repr::Initiation(r) => r.sender,
            Repr::Response(r) => r.sender,
            Repr::Cookie(r) => r.sender,
        }
    }

    /// The length of the message [`Repr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        match self {
            Repr::Initiation(_) => INITIATION_LEN,
            Repr::Response(_) => RESPONSE_LEN,
            Repr::Cookie(_) => COOKIE_LEN,
        }
    }

    /// Writes the message into `buf[..self.buffer_len()]`, MACs zero (the sender
    /// fills them in over the written bytes); returns its length. Never panics if
    /// `buf` is at least [`Repr::buffer_len`] bytes long.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let len = self.buffer_len();
        let buf = &mut buf[..len];
        let features = match self {
            Repr::Initiation(r) => r.features,
            Repr::Response(r) => r.features,
            Repr::Cookie(r) => r.features,
        };
        write_header(
            &mut Packet::new_unchecked(&mut buf[..HEADER_LEN]),
            self.kind(),
            self.sender(),
            features,
        );
        match self {
            Repr::Initiation(r) => {
                use field::initiation as f;
                buf[f::SENDER].copy_from_slice(&r.index.to_be_bytes());
                buf[f::NOISE].copy_from_slice(&r.noise);
                buf[f::MAC1.start..f::MAC2.end].fill(0);
            }
            Repr::Response(r) => {
                use field::response as f;
                buf[f::SENDER].copy_from_slice(&r.index.to_be_bytes());
                buf[f::RECEIVER].copy_from_slice(&r.receiver.to_be_bytes());
                buf[f::NOISE].copy_from_slice(&r.noise);
                buf[f::MAC1.start..f::MAC2.end].fill(0);
            }
            Repr::Cookie(r) => {
                use field::cookie as f;
                buf[f::RECEIVER].copy_from_slice(&r.receiver.to_be_bytes());
                buf[f::NONCE].copy_from_slice(&r.nonce);
                buf[f::SEALED].copy_from_slice(&r.sealed);
            }
        }
        len
    }
}

/// Parses a handshake message: [`Repr::parse`].
pub fn parse(datagram: &[u8]) -> Result<Repr, Error> {
    Repr::parse(datagram)
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repr::Initiation(r) => write!(f, "initiation from {} index {}", r.sender, r.index),
            Repr::Response(r) => write!(
                f,
                "response from {} index {} to {}",
                r.sender, r.index, r.receiver
            ),
            Repr::Cookie(r) => write!(f, "cookie reply from {} to {}", r.sender, r.receiver),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId([2, 0, 0, 0, 0, 1]);

    fn initiation() -> InitiationRepr {
        let mut noise = [0u8; NOISE_INIT_LEN];
        noise.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        InitiationRepr {
            sender: A,
            features: 3,
            index: 0xdead_beef,
            noise,
        }
    }

    #[test]
    fn the_lengths_are_the_documented_ones() {
        assert_eq!(INITIATION_LEN, 153);
        assert_eq!(RESPONSE_LEN, 101);
        assert_eq!(COOKIE_LEN, 60);
    }

    #[test]
    fn each_message_round_trips() {
        let response = ResponseRepr {
            sender: A,
            features: 1,
            index: 7,
            receiver: 9,
            noise: [0xab; NOISE_RESP_LEN],
        };
        let cookie = CookieRepr {
            sender: A,
            features: 0,
            receiver: 9,
            nonce: [5; NONCE_LEN],
            sealed: [6; SEALED_COOKIE_LEN],
        };
        for repr in [
            Repr::Initiation(initiation()),
            Repr::Response(response),
            Repr::Cookie(cookie),
        ] {
            let mut buf = [0xffu8; 200];
            let len = repr.emit(&mut buf);
            assert_eq!(len, repr.buffer_len());
            assert!(is_handshake(&buf[..len]));
            assert_eq!(parse(&buf[..len]), Ok(repr), "{repr}");
            assert_eq!(buf[len], 0xff, "nothing past the message is written");
        }
    }

    #[test]
    fn the_macs_are_the_last_32_bytes_and_cover_what_precedes_them() {
        let mut buf = [0u8; INITIATION_LEN];
        Repr::Initiation(initiation()).emit(&mut buf);
        let mut m = Initiation::new_checked(&mut buf[..]).unwrap();
        m.set_mac1(&[1; MAC_LEN]);
        m.set_mac2(&[2; MAC_LEN]);
        assert_eq!(m.mac1(), [1; MAC_LEN]);
        assert_eq!(m.mac2(), [2; MAC_LEN]);
        assert_eq!(m.mac1_input().len(), INITIATION_LEN - 32);
        assert_eq!(m.mac2_input().len(), INITIATION_LEN - 16);
        assert_eq!(
            &buf[INITIATION_LEN - 32..INITIATION_LEN - 16],
            &[1; MAC_LEN]
        );
        // Parsing ignores the MACs: checking them needs keys.
        assert_eq!(parse(&buf), Ok(Repr::Initiation(initiation())));
    }

    #[test]
    fn wrong_lengths_versions_flags_and_kinds_are_refused() {
        let mut buf = [0u8; INITIATION_LEN + 1];
        Repr::Initiation(initiation()).emit(&mut buf);
        assert_eq!(
            parse(&buf),
            Err(Error::BadHandshakeLength {
                kind: KIND_INITIATION,
                len: INITIATION_LEN + 1,
                expected: INITIATION_LEN
            })
        );
        assert!(parse(&buf[..INITIATION_LEN - 1]).is_err());
        assert_eq!(parse(&buf[..4]), Err(Error::Truncated { len: 4 }));
        let good = buf;
        buf[0] = 2;
        assert_eq!(
            parse(&buf[..INITIATION_LEN]),
            Err(Error::BadVersion { version: 2 })
        );
        assert!(!is_handshake(&buf[..INITIATION_LEN]));
        buf = good;
        buf[3] = 1;
        assert_eq!(
            parse(&buf[..INITIATION_LEN]),
            Err(Error::UnsupportedFlags { flags: 1 })
        );
        assert!(
            is_handshake(&buf[..INITIATION_LEN]),
            "it says it is one (a receiver takes sealed datagrams first)"
        );
        assert!(is_handshake(&buf[..2]), "and goes to be refused");
        buf = good;
        for kind in [1, 4, KIND_CONFIRM, 255] {
            buf[1] = kind;
            assert_eq!(
                parse(&buf[..INITIATION_LEN]),
                Err(Error::UnknownKind { kind })
            );
            assert!(!is_handshake(&buf[..INITIATION_LEN]));
        }
    }

    #[test]
    fn a_confirm_is_a_bare_header_of_kind_8() {
        let mut buf = [0u8; HEADER_LEN];
        assert_eq!(emit_confirm(&mut buf, A, 3), HEADER_LEN);
        assert!(is_confirm(&buf));
        assert!(!is_handshake(&buf), "a confirm is never sent plain");
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(
            (p.version(), p.kind(), p.sender(), p.features()),
            (1, 8, A, 3)
        );
        assert!(!is_confirm(&buf[..HEADER_LEN - 1]));
    }

    /// The sleeve format description, whose handshake tables these tests hold to
    /// the fields.
    const SLEEVE_MD: &str = include_str!("../../SLEEVE.md");

    /// The (offset, length, field) rows of the first table after the line that
    /// starts with `intro`.
    fn doc_rows(intro: &str) -> Vec<(usize, usize, String)> {
        SLEEVE_MD
            .lines()
            .skip_while(|l| !l.starts_with(intro))
            .skip_while(|l| !l.starts_with("| ---"))
            .skip(1)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                (
                    cells[0].parse().unwrap(),
                    cells[1].parse().unwrap(),
                    cells[2].to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn the_doc_describes_each_message() {
        use crate::field::Field;
        use field::{cookie, initiation, response};
        let header = ("header", 0..HEADER_LEN);
        let tag_at = cookie::SEALED.start + MAC_LEN;
        type Layout<'a> = (&'a str, usize, Vec<(&'a str, Field)>);
        let layouts: [Layout<'_>; 3] = [
            (
                "An initiation, kind 5",
                INITIATION_LEN,
                vec![
                    header.clone(),
                    ("sender", initiation::SENDER),
                    ("noise", initiation::NOISE),
                    ("mac1", initiation::MAC1),
                    ("mac2", initiation::MAC2),
                ],
            ),
            (
                "A response, kind 6",
                RESPONSE_LEN,
                vec![
                    header.clone(),
                    ("sender", response::SENDER),
                    ("receiver", response::RECEIVER),
                    ("noise", response::NOISE),
                    ("mac1", response::MAC1),
                    ("mac2", response::MAC2),
                ],
            ),
            (
                "A cookie reply, kind 7",
                COOKIE_LEN,
                vec![
                    header,
                    ("receiver", cookie::RECEIVER),
                    ("nonce", cookie::NONCE),
                    ("cookie", cookie::SEALED.start..tag_at),
                    ("tag", tag_at..cookie::SEALED.end),
                ],
            ),
        ];
        for (intro, total, fields) in layouts {
            let want: Vec<(usize, usize, String)> = fields
                .iter()
                .map(|(name, r)| (r.start, r.len(), (*name).to_owned()))
                .collect();
            assert_eq!(doc_rows(intro), want, "{intro}");
            assert_eq!(fields.last().map(|f| f.1.end), Some(total), "{intro}");
            assert!(
                SLEEVE_MD.contains(&format!("{intro}, {total} bytes")),
                "{intro}: {total} bytes"
            );
        }
    }
}
