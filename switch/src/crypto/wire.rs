//! The handshake's sleeve datagrams (kinds 5, 6 and 7) and their MACs.
//!
//! Each message is a plain sleeve datagram: the 12-byte header, then a body laid
//! out here. Initiations and responses end in two 16-byte MACs, as WireGuard's do:
//! `mac1` is keyed by the receiver's static public key, so a node spends no
//! Diffie-Hellman on a datagram from someone who does not even know its public key;
//! `mac2` is keyed by a cookie the receiver handed out to the sender's address, and
//! is checked only when the receiver is under load. The MACs are HMAC-SHA256
//! truncated to 16 bytes, the keys SHA-256 of a label and the public key, and the
//! cookie reply is sealed with ChaCha20-Poly1305: `ring`'s, all of them.

use std::net::SocketAddrV4;

use ring::{aead, digest, hmac};
use weft_encap::sleeve::{self, NodeId, HEADER_LEN};

/// Sleeve kind of a handshake initiation.
pub const KIND_INITIATION: u8 = 5;
/// Sleeve kind of a handshake response.
pub const KIND_RESPONSE: u8 = 6;
/// Sleeve kind of a cookie reply.
pub const KIND_COOKIE: u8 = 7;
/// Sleeve kind of a session's confirmation: sealed, with an empty body; the
/// initiator sends it when it has nothing else to send on a new session.
pub const KIND_CONFIRM: u8 = 8;

/// Length of a MAC.
pub const MAC_LEN: usize = 16;

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
pub const INITIATION_LEN: usize = HEADER_LEN + 4 + NOISE_INIT_LEN + 2 * MAC_LEN;
/// A response datagram: header, sender and receiver index, Noise message, MACs.
pub const RESPONSE_LEN: usize = HEADER_LEN + 8 + NOISE_RESP_LEN + 2 * MAC_LEN;
/// A cookie reply: header, receiver index, nonce, sealed cookie and its tag.
pub const COOKIE_LEN: usize = HEADER_LEN + 4 + 12 + MAC_LEN + 16;

/// A handshake message, parsed (its MACs not yet checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Kind 5.
    Initiation {
        /// The initiator's index for the session.
        sender: u32,
        /// Noise message 1.
        noise: &'a [u8],
    },
    /// Kind 6.
    Response {
        /// The responder's index for the session.
        sender: u32,
        /// The initiator's index, from the initiation.
        receiver: u32,
        /// Noise message 2.
        noise: &'a [u8],
    },
    /// Kind 7.
    Cookie {
        /// The initiator's index, from the initiation answered.
        receiver: u32,
        /// The nonce the cookie is sealed with.
        nonce: [u8; 12],
        /// The sealed cookie and its tag.
        sealed: &'a [u8],
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses a plain sleeve datagram of kind 5, 6 or 7; `None` if it is not one or has
/// the wrong length.
pub fn parse(datagram: &[u8]) -> Option<Message<'_>> {
    if datagram.len() < HEADER_LEN || datagram[0] != sleeve::VERSION || datagram[2..4] != [0, 0] {
        return None;
    }
    let b = &datagram[HEADER_LEN..];
    match (datagram[1], datagram.len()) {
        (KIND_INITIATION, INITIATION_LEN) => Some(Message::Initiation {
            sender: u32_at(b, 0),
            noise: &b[4..4 + NOISE_INIT_LEN],
        }),
        (KIND_RESPONSE, RESPONSE_LEN) => Some(Message::Response {
            sender: u32_at(b, 0),
            receiver: u32_at(b, 4),
            noise: &b[8..8 + NOISE_RESP_LEN],
        }),
        (KIND_COOKIE, COOKIE_LEN) => {
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&b[4..16]);
            Some(Message::Cookie {
                receiver: u32_at(b, 0),
                nonce,
                sealed: &b[16..],
            })
        }
        _ => None,
    }
}

/// Writes the sleeve header of a handshake message of `kind` from `sender`.
fn header(out: &mut Vec<u8>, kind: u8, sender: NodeId, features: u8) {
    out.clear();
    out.extend_from_slice(&[sleeve::VERSION, kind, 0, 0]);
    out.extend_from_slice(&sender.0);
    out.extend_from_slice(&[features, 0]);
}

/// Lays out an initiation in `out` with zero MACs; [`Macs::stamp`] fills them.
pub fn initiation(out: &mut Vec<u8>, from: NodeId, features: u8, sender: u32, noise: &[u8]) {
    header(out, KIND_INITIATION, from, features);
    out.extend_from_slice(&sender.to_be_bytes());
    out.extend_from_slice(noise);
    out.extend_from_slice(&[0; 2 * MAC_LEN]);
}

/// Lays out a response in `out` with zero MACs.
pub fn response(
    out: &mut Vec<u8>,
    from: NodeId,
    features: u8,
    sender: u32,
    receiver: u32,
    noise: &[u8],
) {
    header(out, KIND_RESPONSE, from, features);
    out.extend_from_slice(&sender.to_be_bytes());
    out.extend_from_slice(&receiver.to_be_bytes());
    out.extend_from_slice(noise);
    out.extend_from_slice(&[0; 2 * MAC_LEN]);
}

/// A 16-byte HMAC-SHA256 of `data` under `key`.
fn mac(key: &hmac::Key, data: &[u8]) -> [u8; MAC_LEN] {
    let tag = hmac::sign(key, data);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
    out
}

/// SHA-256 of `label` and `public`.
fn derive(label: &[u8], public: &[u8; 32]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(label);
    ctx.update(public);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Constant-time equality of two MACs.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The MAC keys of messages to one node, derived from its static public key.
pub struct Macs {
    mac1: hmac::Key,
    cookie: aead::LessSafeKey,
}

impl std::fmt::Debug for Macs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Macs").finish_non_exhaustive()
    }
}

impl Macs {
    /// The keys of messages to the node whose static public key is `public`.
    pub fn to(public: &[u8; 32]) -> Macs {
        let mac1 = hmac::Key::new(hmac::HMAC_SHA256, &derive(b"weft mac1 v1", public));
        let cookie =
            aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &derive(b"weft cookie v1", public))
                .expect("a 32-byte key");
        Macs {
            mac1,
            cookie: aead::LessSafeKey::new(cookie),
        }
    }

    /// Fills the MACs of the message in `datagram`: mac1 always, mac2 with `cookie`
    /// if one is given (zero otherwise). Returns mac1.
    pub fn stamp(&self, datagram: &mut [u8], cookie: Option<&[u8; MAC_LEN]>) -> [u8; MAC_LEN] {
        let n = datagram.len();
        let m1 = mac(&self.mac1, &datagram[..n - 2 * MAC_LEN]);
        datagram[n - 2 * MAC_LEN..n - MAC_LEN].copy_from_slice(&m1);
        let m2 = cookie.map_or([0; MAC_LEN], |c| {
            mac(
                &hmac::Key::new(hmac::HMAC_SHA256, c),
                &datagram[..n - MAC_LEN],
            )
        });
        datagram[n - MAC_LEN..].copy_from_slice(&m2);
        m1
    }

    /// Whether the message in `datagram` (to this node) has a good mac1.
    pub fn check_mac1(&self, datagram: &[u8]) -> bool {
        let n = datagram.len();
        let want = mac(&self.mac1, &datagram[..n - 2 * MAC_LEN]);
        same(&want, &datagram[n - 2 * MAC_LEN..n - MAC_LEN])
    }

    /// The message's mac1, as the cookie reply's associated data.
    pub fn mac1_of(datagram: &[u8]) -> [u8; MAC_LEN] {
        let n = datagram.len();
        let mut m = [0u8; MAC_LEN];
        m.copy_from_slice(&datagram[n - 2 * MAC_LEN..n - MAC_LEN]);
        m
    }

    /// Whether the message's mac2 is the one `cookie` gives.
    pub fn check_mac2(datagram: &[u8], cookie: &[u8; MAC_LEN]) -> bool {
        let n = datagram.len();
        let want = mac(
            &hmac::Key::new(hmac::HMAC_SHA256, cookie),
            &datagram[..n - MAC_LEN],
        );
        same(&want, &datagram[n - MAC_LEN..])
    }

    /// Lays out a cookie reply to the initiation whose mac1 is `mac1`, sealing
    /// `cookie` with `nonce`. These are the keys of the node *sending* the reply
    /// (the initiator knows its public key and opens it with the same keys).
    pub fn cookie_reply(
        &self,
        out: &mut Vec<u8>,
        from: NodeId,
        receiver: u32,
        nonce: [u8; 12],
        cookie: &[u8; MAC_LEN],
        mac1: &[u8; MAC_LEN],
    ) {
        header(out, KIND_COOKIE, from, 0);
        out.extend_from_slice(&receiver.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut sealed = *cookie;
        let tag = self
            .cookie
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(mac1),
                &mut sealed,
            )
            .expect("16 bytes");
        out.extend_from_slice(&sealed);
        out.extend_from_slice(tag.as_ref());
    }

    /// Opens a cookie reply's sealed cookie, bound to our initiation's `mac1`.
    pub fn open_cookie(
        &self,
        nonce: [u8; 12],
        sealed: &[u8],
        mac1: &[u8; MAC_LEN],
    ) -> Option<[u8; MAC_LEN]> {
        let mut buf = sealed.to_vec();
        let plain = self
            .cookie
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(mac1),
                &mut buf,
            )
            .ok()?;
        plain.try_into().ok()
    }
}

/// The cookie of `addr` under `secret`: what mac2 must be keyed with.
pub fn cookie_for(secret: &hmac::Key, addr: SocketAddrV4) -> [u8; MAC_LEN] {
    let mut data = [0u8; 6];
    data[..4].copy_from_slice(&addr.ip().octets());
    data[4..].copy_from_slice(&addr.port().to_be_bytes());
    mac(secret, &data)
}
