//! Sealed sleeve datagrams: authenticated encryption of a datagram's body under a
//! session key, a 64-bit counter nonce, and the receiver's replay window.
//!
//! No I/O and no key agreement: the keys come from the handshake, which lives in
//! the switch. The AEAD is `ring`'s, ChaCha20-Poly1305 or AES-256-GCM; nothing here
//! is home-made cryptography, only the framing around it (`SLEEVE.md`, "Sealed
//! datagrams").
//!
//! A sealed datagram is the plain datagram's 12-byte header with the SEALED flag
//! set, a 12-byte seal header (the receiver's session index and the counter), the
//! body encrypted in place, and a 16-byte tag. Both headers are authenticated (the
//! AEAD's associated data), so nothing in front of the ciphertext can be changed
//! either. The receiver checks the counter against its [`ReplayWindow`] before and
//! after opening: before, to spend no work on a replay; after, to record it, since
//! only an authentic counter may move the window.

use core::fmt;
use core::ops::Range;

use ring::aead;

use super::{field, FLAG_SEALED, HEADER_LEN, VERSION};

/// Length of the seal header: receiver index (4) and counter (8).
pub const SEAL_HEADER_LEN: usize = 12;

/// Length of the AEAD tag at the end of a sealed datagram.
pub const TAG_LEN: usize = 16;

/// Bytes a sealed datagram has beyond the plain one: seal header and tag.
pub const SEAL_OVERHEAD: usize = SEAL_HEADER_LEN + TAG_LEN;

/// Where the ciphertext starts in a sealed datagram.
pub const CIPHERTEXT_AT: usize = HEADER_LEN + SEAL_HEADER_LEN;

/// A sender never uses a counter at or above this (2^64 - 2^13 - 1, WireGuard's
/// `REJECT_AFTER_MESSAGES`): a session rekeys long before, at 2^60.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Counters the replay window remembers behind the highest one seen.
pub const REPLAY_WINDOW: u64 = 8192;

/// Byte ranges of the seal header, after the sleeve header.
mod seal_field {
    use super::Range;
    pub const RECEIVER: Range<usize> = 12..16;
    pub const COUNTER: Range<usize> = 16..24;
}

/// Why a datagram could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Too short for the two headers and the tag.
    #[error(
        "sealed sleeve datagram of {len} bytes is shorter than its 40 bytes of headers and tag"
    )]
    Truncated {
        /// Length of the datagram.
        len: usize,
    },
    /// Not version 1, or the SEALED flag is not the only flag.
    #[error("not a sealed version 1 sleeve datagram (version {version}, flags {flags:#06x})")]
    NotSealed {
        /// The version byte.
        version: u8,
        /// The flags field.
        flags: u16,
    },
    /// The tag does not match: a wrong key, or bytes changed on the way.
    #[error("sealed datagram failed authentication")]
    Forged,
    /// The counter was seen before.
    #[error("sealed datagram counter {counter} was already received")]
    Replayed {
        /// The counter.
        counter: u64,
    },
    /// The counter is too far behind the highest seen to be checked.
    #[error("sealed datagram counter {counter} is more than {REPLAY_WINDOW} behind {highest}")]
    TooOld {
        /// The counter.
        counter: u64,
        /// The highest counter received.
        highest: u64,
    },
    /// The counter is at or beyond [`REJECT_AFTER_MESSAGES`].
    #[error("counter {counter} is at or beyond the session's limit of 2^64 - 2^13 - 1 messages")]
    CounterExhausted {
        /// The counter.
        counter: u64,
    },
}

/// The AEAD of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// ChaCha20-Poly1305 (RFC 8439): fast everywhere, in constant time in software.
    ChaCha20Poly1305,
    /// AES-256-GCM: faster where the CPU has AES and carry-less multiply.
    Aes256Gcm,
}

impl Cipher {
    /// The cipher this CPU runs best: AES-256-GCM with AES-NI and PCLMULQDQ (or
    /// the ARMv8 AES and PMULL instructions), ChaCha20-Poly1305 otherwise.
    pub fn preferred() -> Cipher {
        #[cfg(target_arch = "x86_64")]
        let hardware_aes = std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq");
        #[cfg(target_arch = "aarch64")]
        let hardware_aes = std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull");
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let hardware_aes = false;
        if hardware_aes {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        }
    }

    /// The cipher both ends of a session use, from what each prefers: AES-256-GCM
    /// only if both run it in hardware, so neither falls back to slow software AES.
    pub fn agree(a: Cipher, b: Cipher) -> Cipher {
        if a == Cipher::Aes256Gcm && b == Cipher::Aes256Gcm {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        }
    }

    /// The cipher's number in the handshake: 1 = ChaCha20-Poly1305, 2 = AES-256-GCM.
    pub fn id(self) -> u8 {
        match self {
            Cipher::ChaCha20Poly1305 => 1,
            Cipher::Aes256Gcm => 2,
        }
    }

    /// The cipher numbered `id`, if any.
    pub fn from_id(id: u8) -> Option<Cipher> {
        match id {
            1 => Some(Cipher::ChaCha20Poly1305),
            2 => Some(Cipher::Aes256Gcm),
            _ => None,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        })
    }
}

/// One direction's key of a session.
pub struct SealKey {
    key: aead::LessSafeKey,
    cipher: Cipher,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("SealKey")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

impl SealKey {
    /// A key of `cipher` from 32 bytes of key material (a Noise split).
    pub fn new(cipher: Cipher, bytes: &[u8; 32]) -> SealKey {
        let unbound = aead::UnboundKey::new(cipher.algorithm(), bytes)
            .expect("both ciphers take 32-byte keys");
        SealKey {
            key: aead::LessSafeKey::new(unbound),
            cipher,
        }
    }

    /// The key's cipher.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }
}

/// The nonce of counter `counter`: four zero bytes, then the counter big-endian, as
/// it is on the wire.
fn nonce(counter: u64) -> aead::Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    aead::Nonce::assume_unique_for_key(n)
}

/// The length of the sealed form of a plain datagram of `plain_len` bytes.
pub const fn sealed_len(plain_len: usize) -> usize {
    plain_len + SEAL_OVERHEAD
}

/// Seals the datagram laid out in `datagram` for the peer's session `receiver`,
/// with counter `counter`.
///
/// `datagram` is the sealed datagram's full length ([`sealed_len`] of the plain
/// one): the plain sleeve header at `0..12`, 12 bytes of room for the seal header,
/// the plain body, and 16 bytes of room for the tag. The header's flags must be
/// zero; this sets SEALED. Fails only on an exhausted counter or a too-short buffer.
pub fn seal(key: &SealKey, receiver: u32, counter: u64, datagram: &mut [u8]) -> Result<(), Error> {
    if counter >= REJECT_AFTER_MESSAGES {
        return Err(Error::CounterExhausted { counter });
    }
    if datagram.len() < CIPHERTEXT_AT + TAG_LEN {
        return Err(Error::Truncated {
            len: datagram.len(),
        });
    }
    datagram[field::FLAGS].copy_from_slice(&FLAG_SEALED.to_be_bytes());
    datagram[seal_field::RECEIVER].copy_from_slice(&receiver.to_be_bytes());
    datagram[seal_field::COUNTER].copy_from_slice(&counter.to_be_bytes());
    let (aad, rest) = datagram.split_at_mut(CIPHERTEXT_AT);
    let body_len = rest.len() - TAG_LEN;
    let (body, tag_room) = rest.split_at_mut(body_len);
    let tag = key
        .key
        .seal_in_place_separate_tag(nonce(counter), aead::Aad::from(&*aad), body)
        .expect("a body of a datagram is far below the AEAD's length limit");
    tag_room.copy_from_slice(tag.as_ref());
    Ok(())
}

/// The cleartext parts of a sealed datagram, read before opening it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// The receiver's session index: which session's key opens it.
    pub receiver: u32,
    /// The counter, also the nonce.
    pub counter: u64,
}

/// Whether `datagram` has the SEALED flag (and is long enough to say).
pub fn is_sealed(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN
        && u16::from_be_bytes([datagram[2], datagram[3]]) & FLAG_SEALED != 0
}

/// Reads the seal header of `datagram`, checking its length, version and flags.
/// Nothing read here is authentic until [`open`] succeeds.
pub fn parse(datagram: &[u8]) -> Result<Sealed, Error> {
    if datagram.len() < CIPHERTEXT_AT + TAG_LEN {
        return Err(Error::Truncated {
            len: datagram.len(),
        });
    }
    let version = datagram[field::VERSION];
    let flags = u16::from_be_bytes([datagram[2], datagram[3]]);
    if version != VERSION || flags != FLAG_SEALED {
        return Err(Error::NotSealed { version, flags });
    }
    let mut receiver = [0u8; 4];
    receiver.copy_from_slice(&datagram[seal_field::RECEIVER]);
    let mut counter = [0u8; 8];
    counter.copy_from_slice(&datagram[seal_field::COUNTER]);
    Ok(Sealed {
        receiver: u32::from_be_bytes(receiver),
        counter: u64::from_be_bytes(counter),
    })
}

/// Opens the sealed `datagram` in place with `key`, checking and then recording its
/// counter in `window`. On success the buffer holds, at the returned range, the
/// plain datagram (header with no flags, then the body), ready for
/// [`super::parse`]. On failure the window is unchanged.
pub fn open(
    key: &SealKey,
    window: &mut ReplayWindow,
    datagram: &mut [u8],
) -> Result<Range<usize>, Error> {
    let Sealed { counter, .. } = parse(datagram)?;
    window.check(counter)?;
    let range = decrypt(key, datagram)?;
    window.accept(counter)?;
    Ok(range)
}

/// Authenticates and decrypts the sealed `datagram` in place, with no replay
/// window: [`open`] without it, for callers that check the counter before and
/// record it after under their own lock (so that the AEAD runs outside it).
/// Returns where the plain datagram lies, as [`open`] does.
pub fn decrypt(key: &SealKey, datagram: &mut [u8]) -> Result<Range<usize>, Error> {
    let Sealed { counter, .. } = parse(datagram)?;
    if counter >= REJECT_AFTER_MESSAGES {
        return Err(Error::CounterExhausted { counter });
    }
    let (aad, sealed) = datagram.split_at_mut(CIPHERTEXT_AT);
    let plain_len = key
        .key
        .open_in_place(nonce(counter), aead::Aad::from(&*aad), sealed)
        .map_err(|_| Error::Forged)?
        .len();
    // The header moves up against the body, its SEALED flag cleared.
    datagram.copy_within(0..HEADER_LEN, SEAL_HEADER_LEN);
    datagram[SEAL_HEADER_LEN + 2..SEAL_HEADER_LEN + 4].copy_from_slice(&[0, 0]);
    Ok(SEAL_HEADER_LEN..CIPHERTEXT_AT + plain_len)
}

/// Words of the window's ring of bits: the window and one word of slack, so that
/// moving to a new word never clears a counter the window still covers.
const WORDS: usize = (REPLAY_WINDOW / 64) as usize + 1;

/// The counters a receiver has accepted, as a sliding bitmap (RFC 6479): every
/// counter up to [`REPLAY_WINDOW`] behind the highest is remembered exactly, so
/// datagrams reordered within the window are accepted once each, and older ones are
/// refused.
#[derive(Clone)]
pub struct ReplayWindow {
    /// The highest counter accepted, if any.
    highest: Option<u64>,
    /// Bit `c % 64` of word `(c / 64) % WORDS` is set once counter `c` is accepted.
    bits: Box<[u64; WORDS]>,
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest)
            .finish_non_exhaustive()
    }
}

impl Default for ReplayWindow {
    fn default() -> ReplayWindow {
        ReplayWindow::new()
    }
}

impl ReplayWindow {
    /// A window that has accepted nothing.
    pub fn new() -> ReplayWindow {
        ReplayWindow {
            highest: None,
            bits: Box::new([0; WORDS]),
        }
    }

    /// The highest counter accepted, if any.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    fn slot(counter: u64) -> (usize, u64) {
        (((counter / 64) as usize) % WORDS, 1 << (counter % 64))
    }

    /// Whether `counter` would be accepted, without recording it.
    pub fn check(&self, counter: u64) -> Result<(), Error> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if counter + REPLAY_WINDOW <= highest {
            return Err(Error::TooOld { counter, highest });
        }
        let (word, bit) = ReplayWindow::slot(counter);
        if self.bits[word] & bit != 0 {
            return Err(Error::Replayed { counter });
        }
        Ok(())
    }

    /// Records `counter` if it would be accepted; call only for an authentic one.
    pub fn accept(&mut self, counter: u64) -> Result<(), Error> {
        self.check(counter)?;
        match self.highest {
            Some(highest) if counter <= highest => {}
            _ => {
                // Clear the words between the old highest's and the new one's.
                let new_word = counter / 64;
                let from = self.highest.map_or(0, |h| h / 64 + 1);
                let first = from.max(new_word.saturating_sub(WORDS as u64 - 1));
                for w in first..=new_word {
                    self.bits[(w % WORDS as u64) as usize] = 0;
                }
                self.highest = Some(counter);
            }
        }
        let (word, bit) = ReplayWindow::slot(counter);
        self.bits[word] |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
