//! The Noise IK handshake: sending initiations, answering them, completing them
//! with a response, and the MACs every initiation and response carries.
//!
//! The messages' layout is `weft_encap::sleeve::handshake`'s; this module holds the
//! keys. `mac1` is keyed by the receiver's static public key, so a node spends no
//! Diffie-Hellman on a datagram from someone who does not even know its public key;
//! `mac2` is keyed by a cookie the receiver handed out to the sender's address (see
//! [`super::limiter`]). The MACs are HMAC-SHA256 truncated to 16 bytes, the keys
//! SHA-256 of a label and the public key, and the cookie reply is sealed with
//! ChaCha20-Poly1305: `ring`'s, all of them.

use std::net::SocketAddrV4;
use std::sync::Arc;

use ring::rand::SecureRandom;
use ring::{aead, digest, hmac};
use weft_encap::sleeve::handshake::{
    self, CookieRepr, Initiation, InitiationRepr, Repr, Response, ResponseRepr, MAC_LEN, NONCE_LEN,
    SEALED_COOKIE_LEN,
};
use weft_encap::sleeve::seal::Cipher;
use weft_encap::sleeve::HEADER_LEN;

use super::limiter::COOKIE_LIFETIME;
use super::session::Session;
use super::{Dest, Endpoint, Received, Refused, Transmit};
use crate::core::time::Time;

/// The Noise protocol of the handshake.
pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Mixed into every handshake, so that no other protocol's messages pass as ours.
pub(super) const PROLOGUE: &[u8] = b"weft sleeve v1";

/// A handshake this node started.
pub(super) struct Pending {
    pub(super) hs: Box<snow::HandshakeState>,
    pub(super) local_index: u32,
    /// When the current initiation was sent, and when the first was.
    pub(super) sent_at: Time,
    pub(super) started: Time,
    /// The initiation's mac1, to open a cookie reply with.
    pub(super) mac1: [u8; MAC_LEN],
}

/// A 16-byte HMAC-SHA256 of `data` under `key`.
pub(super) fn mac(key: &hmac::Key, data: &[u8]) -> [u8; MAC_LEN] {
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
fn same(a: &[u8; MAC_LEN], b: &[u8; MAC_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// mac2 of a message whose bytes up to mac2 are `input`, under `cookie`.
pub(super) fn mac2(cookie: &[u8; MAC_LEN], input: &[u8]) -> [u8; MAC_LEN] {
    mac(&hmac::Key::new(hmac::HMAC_SHA256, cookie), input)
}

/// Whether `got` is the mac2 `cookie` gives over `input`.
pub(super) fn check_mac2(cookie: &[u8; MAC_LEN], input: &[u8], got: &[u8; MAC_LEN]) -> bool {
    same(&mac2(cookie, input), got)
}

/// The MAC keys of messages to one node, derived from its static public key.
pub(super) struct Macs {
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
    pub(super) fn to(public: &[u8; 32]) -> Macs {
        let mac1 = hmac::Key::new(hmac::HMAC_SHA256, &derive(b"weft mac1 v1", public));
        let cookie =
            aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &derive(b"weft cookie v1", public))
                .expect("a 32-byte key");
        Macs {
            mac1,
            cookie: aead::LessSafeKey::new(cookie),
        }
    }

    /// mac1 of a message whose bytes up to mac1 are `input`.
    pub(super) fn mac1(&self, input: &[u8]) -> [u8; MAC_LEN] {
        mac(&self.mac1, input)
    }

    /// Whether `got` is the right mac1 over `input`, for this node.
    pub(super) fn check_mac1(&self, input: &[u8], got: &[u8; MAC_LEN]) -> bool {
        same(&self.mac1(input), got)
    }

    /// Seals `cookie` for the cookie reply to the initiation whose mac1 is `mac1`.
    /// These are the keys of the node *sending* the reply (the initiator knows its
    /// public key and opens it with the same keys).
    pub(super) fn seal_cookie(
        &self,
        nonce: [u8; NONCE_LEN],
        cookie: &[u8; MAC_LEN],
        mac1: &[u8; MAC_LEN],
    ) -> [u8; SEALED_COOKIE_LEN] {
        let mut sealed = [0u8; SEALED_COOKIE_LEN];
        let (text, tag_out) = sealed.split_at_mut(MAC_LEN);
        text.copy_from_slice(cookie);
        let tag = self
            .cookie
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(mac1),
                text,
            )
            .expect("16 bytes");
        tag_out.copy_from_slice(tag.as_ref());
        sealed
    }

    /// Opens a cookie reply's sealed cookie, bound to our initiation's `mac1`.
    pub(super) fn open_cookie(
        &self,
        nonce: [u8; NONCE_LEN],
        mut sealed: [u8; SEALED_COOKIE_LEN],
        mac1: &[u8; MAC_LEN],
    ) -> Option<[u8; MAC_LEN]> {
        let plain = self
            .cookie
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(mac1),
                &mut sealed,
            )
            .ok()?;
        plain.try_into().ok()
    }
}

impl Endpoint {
    pub(super) fn random_index(&self) -> u32 {
        loop {
            let mut b = [0u8; 4];
            self.rng.fill(&mut b).expect("the system's random source");
            let i = u32::from_be_bytes(b);
            if i != 0 && !self.index.contains_key(&i) {
                return i;
            }
        }
    }

    fn builder<'a>(&'a self, psk: &'a [u8; 32]) -> snow::Builder<'a> {
        let params = NOISE_PARAMS.parse().expect("a valid Noise protocol name");
        snow::Builder::new(params)
            .local_private_key(&self.cfg.key.private)
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.psk(2, psk))
            .expect("valid keys and prologue")
    }

    fn psk(&self) -> [u8; 32] {
        self.cfg.psk.unwrap_or([0; 32])
    }

    /// Sends peer `i` a new initiation (a new ephemeral key, a new index).
    pub(super) fn initiate(&mut self, now: Time, i: usize) {
        let psk = self.psk();
        let public = self.peers[i].public;
        let hs = self
            .builder(&psk)
            .remote_public_key(&public)
            .and_then(|b| b.build_initiator());
        let Ok(mut hs) = hs else {
            return;
        };
        let mut payload = [0u8; handshake::INIT_PAYLOAD_LEN];
        let wall = self.cfg.wall_at_zero.saturating_add(now.as_nanos());
        payload[..8].copy_from_slice(&wall.to_be_bytes());
        payload[8] = self.cfg.cipher.id();
        let mut noise = [0u8; handshake::NOISE_INIT_LEN];
        if hs.write_message(&payload, &mut noise).ok() != Some(handshake::NOISE_INIT_LEN) {
            return;
        }
        let local_index = self.random_index();
        let mut datagram = vec![0; handshake::INITIATION_LEN];
        Repr::Initiation(InitiationRepr {
            sender: self.cfg.node,
            features: self.cfg.features,
            index: local_index,
            noise,
        })
        .emit(&mut datagram);
        let p = &mut self.peers[i];
        let cookie = p
            .cookie
            .filter(|(_, at)| now.saturating_since(*at) < COOKIE_LIFETIME)
            .map(|(c, _)| c);
        let mut m = Initiation::new_unchecked(&mut datagram[..]);
        let mac1 = p.macs.mac1(m.mac1_input());
        m.set_mac1(&mac1);
        m.set_mac2(&cookie.map_or([0; MAC_LEN], |c| mac2(&c, m.mac2_input())));
        let started = match p.pending.take() {
            Some(old) => {
                self.index.remove(&old.local_index);
                old.started
            }
            None => now,
        };
        let p = &mut self.peers[i];
        p.pending = Some(Pending {
            hs: Box::new(hs),
            local_index,
            sent_at: now,
            started,
            mac1,
        });
        self.index.insert(local_index, i);
        self.out.push_back(Transmit {
            to: Dest::Peer(p.node),
            datagram,
        });
    }

    /// Checks an initiation (MACs, rate limits, the Noise message, the sender's key
    /// and timestamp) and returns the responder's handshake, the peer, the
    /// initiation's timestamp and the cipher agreed, or why it is refused.
    fn read_initiation(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        datagram: &[u8],
        m: &InitiationRepr,
    ) -> Result<(snow::HandshakeState, usize, u64, Cipher), Refused> {
        let view = Initiation::new_checked(datagram).map_err(|_| Refused::Malformed)?;
        if !self.own_macs.check_mac1(view.mac1_input(), &view.mac1()) {
            return Err(Refused::BadMac);
        }
        if !self.admit(now, from, &view, m.index) {
            return Err(Refused::RateLimited);
        }
        let psk = self.psk();
        let Ok(mut hs) = self.builder(&psk).build_responder() else {
            return Err(Refused::BadHandshake);
        };
        let mut payload = [0u8; handshake::INIT_PAYLOAD_LEN];
        let read = hs.read_message(&m.noise, &mut payload);
        let who = hs
            .get_remote_static()
            .and_then(|k| self.peers.iter().position(|p| p.public[..] == *k));
        let (Ok(handshake::INIT_PAYLOAD_LEN), Some(i)) = (read, who) else {
            // Undecryptable, or a key that is no peer's: count it against the peer
            // the header names, if it is one.
            if let Some(i) = self.peer_of(m.sender) {
                self.peers[i].failures += 1;
            }
            return Err(Refused::BadHandshake);
        };
        let timestamp = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
        if timestamp <= self.peers[i].last_timestamp {
            return Err(Refused::ReplayedHandshake);
        }
        let theirs = Cipher::from_id(payload[8]).unwrap_or(Cipher::ChaCha20Poly1305);
        Ok((hs, i, timestamp, Cipher::agree(theirs, self.cfg.cipher)))
    }

    pub(super) fn receive_initiation(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        datagram: &[u8],
        m: &InitiationRepr,
    ) -> Received {
        let (mut hs, i, timestamp, cipher) = match self.read_initiation(now, from, datagram, m) {
            Ok(read) => read,
            Err(refused) => return Received::Dropped(refused),
        };
        let mut noise = [0u8; handshake::NOISE_RESP_LEN];
        if hs.write_message(&[self.cfg.cipher.id()], &mut noise).ok()
            != Some(handshake::NOISE_RESP_LEN)
        {
            return Received::Dropped(Refused::BadHandshake);
        }
        let (k_init, k_resp) = hs.dangerously_get_raw_split();
        let local_index = self.random_index();
        let session = Arc::new(Session::new(
            self.peers[i].node,
            (local_index, m.index),
            now,
            false,
            cipher,
            (&k_resp, &k_init),
        ));
        let mut out = vec![0; handshake::RESPONSE_LEN];
        Repr::Response(ResponseRepr {
            sender: self.cfg.node,
            features: self.cfg.features,
            index: local_index,
            receiver: m.index,
            noise,
        })
        .emit(&mut out);
        let p = &mut self.peers[i];
        // A response never carries mac2: the initiator asks for no cookie.
        let mut view = Response::new_unchecked(&mut out[..]);
        view.set_mac1(&p.macs.mac1(view.mac1_input()));
        p.last_timestamp = timestamp;
        p.handshake_done(now);
        if let Some(old) = p.next.replace(session) {
            self.index.remove(&old.local_index);
        }
        self.index.insert(local_index, i);
        self.out.push_back(Transmit {
            to: Dest::Peer(self.peers[i].node),
            datagram: out,
        });
        Received::Handshake
    }

    pub(super) fn receive_response(
        &mut self,
        now: Time,
        datagram: &[u8],
        m: &ResponseRepr,
    ) -> Received {
        let Ok(view) = Response::new_checked(datagram) else {
            return Received::Dropped(Refused::Malformed);
        };
        if !self.own_macs.check_mac1(view.mac1_input(), &view.mac1()) {
            return Received::Dropped(Refused::BadMac);
        }
        let Some(&i) = self.index.get(&m.receiver) else {
            return Received::Dropped(Refused::UnknownSession);
        };
        let p = &mut self.peers[i];
        let Some(mut pending) = p.pending.take_if(|h| h.local_index == m.receiver) else {
            return Received::Dropped(Refused::UnknownSession);
        };
        let mut payload = [0u8; handshake::RESP_PAYLOAD_LEN];
        if pending.hs.read_message(&m.noise, &mut payload).ok() != Some(handshake::RESP_PAYLOAD_LEN)
        {
            p.failures += 1;
            // The initiation stays pending: a forged response must not end it.
            p.pending = Some(pending);
            return Received::Dropped(Refused::BadHandshake);
        }
        let theirs = Cipher::from_id(payload[0]).unwrap_or(Cipher::ChaCha20Poly1305);
        let cipher = Cipher::agree(self.cfg.cipher, theirs);
        let (k_init, k_resp) = pending.hs.dangerously_get_raw_split();
        let session = Arc::new(Session::new(
            p.node,
            (m.receiver, m.index),
            now,
            true,
            cipher,
            (&k_init, &k_resp),
        ));
        p.handshake_done(now);
        self.promote(i, session.clone());
        if self.peers[i].queue.is_empty() {
            // Nothing to send: a confirmation tells the responder to send with it.
            let mut plain = [0u8; HEADER_LEN];
            handshake::emit_confirm(&mut plain, self.cfg.node, self.cfg.features);
            let mut out = Vec::new();
            if session.seal_into(&plain, &mut out).is_ok() {
                self.out.push_back(Transmit {
                    to: Dest::Peer(self.peers[i].node),
                    datagram: out,
                });
            }
        }
        self.flush_queue(i);
        Received::Handshake
    }

    pub(super) fn receive_cookie(&mut self, now: Time, m: &CookieRepr) -> Received {
        let Some(&i) = self.index.get(&m.receiver) else {
            return Received::Dropped(Refused::UnknownSession);
        };
        let p = &mut self.peers[i];
        let Some(pending) = p.pending.as_ref().filter(|h| h.local_index == m.receiver) else {
            return Received::Dropped(Refused::UnknownSession);
        };
        let Some(cookie) = p.macs.open_cookie(m.nonce, m.sealed, &pending.mac1) else {
            return Received::Dropped(Refused::BadMac);
        };
        p.cookie = Some((cookie, now));
        Received::Handshake
    }
}
