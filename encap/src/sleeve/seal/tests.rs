use std::collections::HashSet;

use proptest::prelude::*;

use super::*;
use crate::sleeve::{self, Datagram, HEADER_LEN};

const KEY_A: [u8; 32] = [7; 32];
const KEY_B: [u8; 32] = [8; 32];

/// A plain frames datagram from node 02:00:00:00:00:01 carrying `payload` as one
/// IPv4 record.
fn plain(payload: &[u8]) -> Vec<u8> {
    let mut d = vec![
        1, 1, 0, 0, 2, 0, 0, 0, 0, 1, 0x01, 0, // header: v1, frames, sender, chunks
    ];
    d.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    d.extend_from_slice(&[0x08, 0x00]);
    d.extend_from_slice(payload);
    d
}

/// `plain` laid out for sealing: the header, room for the seal header, the body,
/// room for the tag.
fn layout(plain: &[u8]) -> Vec<u8> {
    let mut d = plain[..HEADER_LEN].to_vec();
    d.extend_from_slice(&[0; SEAL_HEADER_LEN]);
    d.extend_from_slice(&plain[HEADER_LEN..]);
    d.extend_from_slice(&[0; TAG_LEN]);
    d
}

fn sealed(cipher: Cipher, key: &[u8; 32], receiver: u32, counter: u64, plain: &[u8]) -> Vec<u8> {
    let mut d = layout(plain);
    assert_eq!(d.len(), sealed_len(plain.len()));
    seal(&SealKey::new(cipher, key), receiver, counter, &mut d).unwrap();
    d
}

const CIPHERS: [Cipher; 2] = [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm];

#[test]
fn a_sealed_datagram_opens_to_the_plain_one() {
    for cipher in CIPHERS {
        let p = plain(b"an IPv4 packet, say");
        let mut d = sealed(cipher, &KEY_A, 0xdead_beef, 5, &p);
        assert!(is_sealed(&d));
        assert_eq!(
            parse(&d).unwrap(),
            Sealed {
                receiver: 0xdead_beef,
                counter: 5
            }
        );
        // The body is not in the clear.
        assert!(!d.windows(8).any(|w| w == b"an IPv4 "), "{cipher}");
        let mut window = ReplayWindow::new();
        let range = open(&SealKey::new(cipher, &KEY_A), &mut window, &mut d).unwrap();
        assert_eq!(&d[range.clone()], &p[..], "{cipher}");
        assert!(matches!(
            sleeve::parse(&d[range]).unwrap(),
            Datagram::Frames { .. }
        ));
        assert_eq!(window.highest(), Some(5));
    }
}

#[test]
fn a_wrong_key_or_cipher_is_forged_and_leaves_the_window() {
    let p = plain(b"payload");
    for (cipher, key) in [
        (Cipher::ChaCha20Poly1305, &KEY_B),
        (Cipher::Aes256Gcm, &KEY_A),
    ] {
        let mut d = sealed(Cipher::ChaCha20Poly1305, &KEY_A, 1, 9, &p);
        let mut window = ReplayWindow::new();
        let err = open(&SealKey::new(cipher, key), &mut window, &mut d);
        assert_eq!(err, Err(Error::Forged));
        assert_eq!(window.highest(), None, "a forgery moved the window");
    }
}

#[test]
fn a_replay_is_refused() {
    let p = plain(b"payload");
    let key = SealKey::new(Cipher::ChaCha20Poly1305, &KEY_A);
    let original = sealed(key.cipher(), &KEY_A, 1, 77, &p);
    let mut window = ReplayWindow::new();
    open(&key, &mut window, &mut original.clone()).unwrap();
    assert_eq!(
        open(&key, &mut window, &mut original.clone()),
        Err(Error::Replayed { counter: 77 })
    );
}

#[test]
fn counters_too_old_or_exhausted_are_refused() {
    let key = SealKey::new(Cipher::ChaCha20Poly1305, &KEY_A);
    let p = plain(b"x");
    let mut window = ReplayWindow::new();
    open(
        &key,
        &mut window,
        &mut sealed(key.cipher(), &KEY_A, 1, 10_000, &p),
    )
    .unwrap();
    let old = 10_000 - REPLAY_WINDOW;
    assert_eq!(
        open(
            &key,
            &mut window,
            &mut sealed(key.cipher(), &KEY_A, 1, old, &p)
        ),
        Err(Error::TooOld {
            counter: old,
            highest: 10_000
        })
    );
    // Just inside the window.
    open(
        &key,
        &mut window,
        &mut sealed(key.cipher(), &KEY_A, 1, old + 1, &p),
    )
    .unwrap();
    let mut d = layout(&p);
    assert_eq!(
        seal(&key, 1, REJECT_AFTER_MESSAGES, &mut d),
        Err(Error::CounterExhausted {
            counter: REJECT_AFTER_MESSAGES
        })
    );
}

#[test]
fn short_or_unsealed_datagrams_are_refused() {
    let key = SealKey::new(Cipher::ChaCha20Poly1305, &KEY_A);
    let p = plain(b"x");
    let mut plain_copy = p.clone();
    plain_copy.resize(60, 0);
    assert!(!is_sealed(&plain_copy));
    assert!(matches!(
        open(&key, &mut ReplayWindow::new(), &mut plain_copy),
        Err(Error::NotSealed { flags: 0, .. })
    ));
    let mut d = layout(&p);
    assert_eq!(
        seal(&key, 1, 0, &mut d[..CIPHERTEXT_AT + TAG_LEN - 1]),
        Err(Error::Truncated { len: 39 })
    );
}

/// Every header byte is authenticated: flipping any bit anywhere fails.
#[test]
fn flipping_any_bit_fails() {
    let key = SealKey::new(Cipher::Aes256Gcm, &KEY_A);
    let original = sealed(key.cipher(), &KEY_A, 3, 4, &plain(b"sixteen bytes!!!"));
    for byte in 0..original.len() {
        for bit in 0..8 {
            let mut d = original.clone();
            d[byte] ^= 1 << bit;
            let mut window = ReplayWindow::new();
            let r = open(&key, &mut window, &mut d);
            assert!(r.is_err(), "byte {byte} bit {bit} went unnoticed");
            assert_eq!(window.highest(), None);
        }
    }
}

#[test]
fn ciphers_agree_on_aes_only_if_both_prefer_it() {
    use Cipher::*;
    assert_eq!(Cipher::agree(Aes256Gcm, Aes256Gcm), Aes256Gcm);
    assert_eq!(Cipher::agree(Aes256Gcm, ChaCha20Poly1305), ChaCha20Poly1305);
    assert_eq!(Cipher::agree(ChaCha20Poly1305, Aes256Gcm), ChaCha20Poly1305);
    for c in CIPHERS {
        assert_eq!(Cipher::from_id(c.id()), Some(c));
    }
    assert_eq!(Cipher::from_id(0), None);
    assert!(CIPHERS.contains(&Cipher::preferred()));
}

/// The SLEEVE.md table of the seal header matches the code.
#[test]
fn the_doc_describes_the_seal_header() {
    let table = crate::sleeve::tests::doc_table("## Sealed datagrams");
    let rows: Vec<(String, String, &str)> = table
        .iter()
        .map(|r| (r[0].to_owned(), r[1].to_owned(), r[2]))
        .collect();
    let want = [
        (0, HEADER_LEN, "header"),
        (seal_field::RECEIVER.start, 4, "receiver"),
        (seal_field::COUNTER.start, 8, "counter"),
        (CIPHERTEXT_AT, 0, "ciphertext"),
    ];
    for (at, len, name) in want {
        let row = rows
            .iter()
            .find(|r| r.2 == name)
            .unwrap_or_else(|| panic!("no row {name} in {rows:?}"));
        assert_eq!(row.0, at.to_string(), "{name}");
        if len > 0 {
            assert_eq!(row.1, len.to_string(), "{name}");
        }
    }
    let tag = rows.iter().find(|r| r.2 == "tag").expect("a tag row");
    assert_eq!(tag.1, TAG_LEN.to_string());
}

proptest! {
    #[test]
    fn round_trips(
        body in proptest::collection::vec(any::<u8>(), 0..1500),
        receiver in any::<u32>(),
        counter in 0..REJECT_AFTER_MESSAGES,
        aes in any::<bool>(),
    ) {
        let cipher = if aes { Cipher::Aes256Gcm } else { Cipher::ChaCha20Poly1305 };
        let p = plain(&body);
        let mut d = sealed(cipher, &KEY_A, receiver, counter, &p);
        prop_assert_eq!(parse(&d).unwrap(), Sealed { receiver, counter });
        let range = open(&SealKey::new(cipher, &KEY_A), &mut ReplayWindow::new(), &mut d).unwrap();
        prop_assert_eq!(&d[range], &p[..]);
    }

    /// Any prefix of a sealed datagram, and any bytes at all, are refused without
    /// a panic.
    #[test]
    fn truncated_and_arbitrary_input_is_refused(
        body in proptest::collection::vec(any::<u8>(), 0..200),
        cut in any::<prop::sample::Index>(),
        noise in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let key = SealKey::new(Cipher::ChaCha20Poly1305, &KEY_A);
        let d = sealed(key.cipher(), &KEY_A, 1, 1, &plain(&body));
        let mut short = d[..cut.index(d.len())].to_vec();
        prop_assert!(open(&key, &mut ReplayWindow::new(), &mut short).is_err());
        let mut noise = noise;
        prop_assert!(open(&key, &mut ReplayWindow::new(), &mut noise).is_err());
    }

    /// The window against a set of every counter seen: a counter is accepted iff it
    /// is new and less than the window behind the highest accepted.
    #[test]
    fn the_window_matches_its_oracle(
        steps in proptest::collection::vec((0u64..3 * REPLAY_WINDOW, any::<bool>()), 1..400),
    ) {
        let mut window = ReplayWindow::new();
        let mut seen = HashSet::new();
        let mut highest: Option<u64> = None;
        let mut base = 0u64;
        for (offset, jump) in steps {
            // Now and then the counters jump ahead, past whole windows.
            if jump && offset % 7 == 0 {
                base += 5 * REPLAY_WINDOW;
            }
            let c = base + offset;
            let fresh = !seen.contains(&c) && highest.is_none_or(|h| c + REPLAY_WINDOW > h);
            let got = window.accept(c);
            prop_assert_eq!(got.is_ok(), fresh, "counter {} highest {:?}", c, highest);
            if fresh {
                seen.insert(c);
                highest = Some(highest.map_or(c, |h| h.max(c)));
            }
            prop_assert_eq!(window.highest(), highest);
        }
    }

    /// Datagrams reordered within the window are each accepted once.
    #[test]
    fn reordered_within_the_window_are_accepted(
        order in Just((0..REPLAY_WINDOW).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let mut window = ReplayWindow::new();
        for &c in &order {
            prop_assert!(window.accept(c).is_ok(), "counter {}", c);
        }
        for &c in order.iter().take(64) {
            prop_assert_eq!(window.accept(c), Err(Error::Replayed { counter: c }));
        }
    }
}
