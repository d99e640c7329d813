//! Two endpoints on a simulated wire, in simulated time.

use std::net::Ipv4Addr;

use weft_encap::sleeve::handshake as message;
use weft_encap::sleeve::HEADER_LEN;

use super::*;

const A: NodeId = NodeId([2, 0, 0, 0, 0, 0xa]);
const B: NodeId = NodeId([2, 0, 0, 0, 0, 0xb]);
const ADDR_A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 6784);
const ADDR_B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 6784);
const WALL: u64 = 1_800_000_000_000_000_000;

fn endpoint(node: NodeId, key: &StaticKey, cipher: Cipher) -> Endpoint {
    Endpoint::new(Config {
        node,
        features: 0x03,
        key: key.clone(),
        psk: Some([0x42; 32]),
        cipher,
        wall_at_zero: WALL,
    })
}

/// A plain frames datagram from `from` with one record carrying `n`.
fn plain(from: NodeId, n: u64) -> Vec<u8> {
    let mut d = vec![1, 1, 0, 0];
    d.extend_from_slice(&from.0);
    d.extend_from_slice(&[0x03, 0]);
    d.extend_from_slice(&8u16.to_be_bytes());
    d.extend_from_slice(&0x0800u16.to_be_bytes());
    d.extend_from_slice(&n.to_be_bytes());
    d
}

fn number_of(datagram: &[u8]) -> u64 {
    u64::from_be_bytes(
        datagram[HEADER_LEN + 4..HEADER_LEN + 12]
            .try_into()
            .unwrap(),
    )
}

/// Two endpoints, a wire with a fixed delay, and a clock.
struct Net {
    a: Endpoint,
    b: Endpoint,
    now: Time,
    delay: Duration,
    /// Datagrams on the wire: when they arrive, to A (or B), from where, bytes.
    wire: VecDeque<(Time, bool, SocketAddrV4, Vec<u8>)>,
    /// The numbers of the data datagrams each side received.
    got_a: Vec<u64>,
    got_b: Vec<u64>,
    /// What each side refused.
    refused_a: Vec<Refused>,
    refused_b: Vec<Refused>,
}

impl Net {
    fn new(a: Endpoint, b: Endpoint) -> Net {
        Net {
            a,
            b,
            now: Time::from_nanos(1_000_000_000),
            delay: Duration::from_millis(1),
            wire: VecDeque::new(),
            got_a: Vec::new(),
            got_b: Vec::new(),
            refused_a: Vec::new(),
            refused_b: Vec::new(),
        }
    }

    /// Two endpoints that know each other's keys.
    fn pair(cipher_a: Cipher, cipher_b: Cipher) -> Net {
        let (ka, kb) = (StaticKey::generate(), StaticKey::generate());
        let mut a = endpoint(A, &ka, cipher_a);
        let mut b = endpoint(B, &kb, cipher_b);
        a.set_peer(B, kb.public());
        b.set_peer(A, ka.public());
        Net::new(a, b)
    }

    fn send(&mut self, from_a: bool, n: u64) -> bool {
        let (ep, from, to) = if from_a {
            (&mut self.a, A, B)
        } else {
            (&mut self.b, B, A)
        };
        match ep.send(self.now, to, &plain(from, n)) {
            Sent::Sealed(d) => {
                self.put(!from_a, d);
                true
            }
            Sent::Queued => true,
            Sent::Dropped => false,
        }
    }

    /// Puts `datagram` on the wire towards A (`to_a`) or B.
    fn put(&mut self, to_a: bool, datagram: Vec<u8>) {
        let from = if to_a { ADDR_B } else { ADDR_A };
        self.wire
            .push_back((self.now + self.delay, to_a, from, datagram));
    }

    /// Moves what the endpoints want sent onto the wire.
    fn collect(&mut self) {
        while let Some(t) = self.a.poll_transmit() {
            assert!(
                matches!(t.to, Dest::Peer(B) | Dest::Addr(ADDR_B)),
                "{:?}",
                t.to
            );
            self.put(false, t.datagram);
        }
        while let Some(t) = self.b.poll_transmit() {
            assert!(
                matches!(t.to, Dest::Peer(A) | Dest::Addr(ADDR_A)),
                "{:?}",
                t.to
            );
            self.put(true, t.datagram);
        }
    }

    /// Runs the clock to `until`, delivering and timing out as it goes.
    fn run_until(&mut self, until: Time) {
        loop {
            self.collect();
            let arrival = self.wire.front().map(|w| w.0);
            let timeout = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t > self.now)
                .min();
            let next = [arrival, timeout].into_iter().flatten().min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.step();
                }
                _ => {
                    self.now = until;
                    self.a.handle_timeout(self.now);
                    self.b.handle_timeout(self.now);
                    self.collect();
                    return;
                }
            }
        }
    }

    fn step(&mut self) {
        while self.wire.front().is_some_and(|w| w.0 <= self.now) {
            let (_, to_a, from, mut d) = self.wire.pop_front().unwrap();
            let (ep, got, refused) = if to_a {
                (&mut self.a, &mut self.got_a, &mut self.refused_a)
            } else {
                (&mut self.b, &mut self.got_b, &mut self.refused_b)
            };
            match ep.receive(self.now, from, &mut d) {
                Received::Data(r) => got.push(number_of(&d[r])),
                Received::Handshake => {}
                Received::Dropped(why) => refused.push(why),
            }
        }
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
    }

    /// Asserts that neither side refused anything (showing the first few if so).
    fn assert_nothing_refused(&self) {
        for (side, refused) in [("A", &self.refused_a), ("B", &self.refused_b)] {
            let first = &refused[..3.min(refused.len())];
            assert!(refused.is_empty(), "{side} refused {first:?}");
        }
    }

    fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }
}

#[test]
fn a_handshake_carries_queued_data_both_ways() {
    let mut net = Net::pair(Cipher::ChaCha20Poly1305, Cipher::ChaCha20Poly1305);
    assert_eq!(net.a.status(net.now, B).unwrap().state, State::Idle);
    for n in 0..3 {
        assert!(net.send(true, n));
    }
    assert_eq!(net.a.status(net.now, B).unwrap().state, State::Handshaking);
    net.advance(Duration::from_millis(10));
    assert_eq!(net.got_b, [0, 1, 2]);
    // The responder sends with the session once the initiator has used it.
    assert!(net.send(false, 100));
    net.advance(Duration::from_millis(10));
    assert_eq!(net.got_a, [100]);
    for (ep, peer) in [(&net.a, B), (&net.b, A)] {
        let st = ep.status(net.now, peer).unwrap();
        assert_eq!(st.state, State::Established);
        assert_eq!(st.handshakes, 1);
        assert_eq!(st.rekeys, 0, "the first session replaces none");
        assert_eq!(st.cipher, Some(Cipher::ChaCha20Poly1305));
        assert_eq!(st.handshake_failures, 0);
    }
    net.assert_nothing_refused();
}

#[test]
fn aes_only_when_both_prefer_it() {
    for (ca, cb, want) in [
        (Cipher::Aes256Gcm, Cipher::Aes256Gcm, Cipher::Aes256Gcm),
        (
            Cipher::Aes256Gcm,
            Cipher::ChaCha20Poly1305,
            Cipher::ChaCha20Poly1305,
        ),
        (
            Cipher::ChaCha20Poly1305,
            Cipher::Aes256Gcm,
            Cipher::ChaCha20Poly1305,
        ),
    ] {
        let mut net = Net::pair(ca, cb);
        net.send(true, 1);
        net.advance(Duration::from_millis(10));
        net.send(false, 2);
        net.advance(Duration::from_millis(10));
        assert_eq!(
            (net.got_b.as_slice(), net.got_a.as_slice()),
            (&[1][..], &[2][..])
        );
        assert_eq!(net.a.status(net.now, B).unwrap().cipher, Some(want));
        assert_eq!(net.b.status(net.now, A).unwrap().cipher, Some(want));
    }
}

/// Ten minutes of traffic both ways, a datagram every 10 ms one way and every 50 ms
/// the other: several rekeys, and every datagram arrives once.
#[test]
fn rekeys_during_a_transfer_lose_nothing() {
    let mut net = Net::pair(Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm);
    let mut sent_a = 0;
    let mut sent_b = 0;
    let tick = Duration::from_millis(10);
    for i in 0..60_000u64 {
        assert!(net.send(true, sent_a), "A dropped {sent_a}");
        sent_a += 1;
        if i % 5 == 0 {
            assert!(net.send(false, sent_b), "B dropped {sent_b}");
            sent_b += 1;
        }
        net.advance(tick);
    }
    net.advance(Duration::from_secs(1));
    assert_eq!(net.got_b, (0..sent_a).collect::<Vec<_>>(), "A → B");
    assert_eq!(net.got_a, (0..sent_b).collect::<Vec<_>>(), "B → A");
    net.assert_nothing_refused();
    // 600 s at a rekey every 120 s (or a little later) from either side.
    let hs = net.a.status(net.now, B).unwrap().handshakes;
    assert!((5..=8).contains(&hs), "{hs} handshakes");
    let st = net.a.status(net.now, B).unwrap();
    assert!(st.key_age.unwrap() < REKEY_AFTER_TIME + RESPONDER_GRACE + REKEY_TIMEOUT);
}

/// 2^60 messages on one session start a rekey, long before its counter runs out;
/// the old session keeps sending meanwhile, and the receiver's window takes the
/// jump.
#[test]
fn a_session_rekeys_after_2_to_the_60_messages() {
    let mut net = Net::pair(Cipher::ChaCha20Poly1305, Cipher::ChaCha20Poly1305);
    net.send(true, 1);
    net.advance(Duration::from_millis(10));
    let old = net.a.session(net.now, B).unwrap();
    old.skip_to(REKEY_AFTER_MESSAGES - 1);
    assert!(net.send(true, 2), "the last message before the limit");
    assert_eq!(net.a.status(net.now, B).unwrap().handshakes, 1);
    assert!(net.send(true, 3), "the old session still sends");
    let init = net.a.poll_transmit().expect("a rekey started");
    assert_eq!(init.datagram[1], message::KIND_INITIATION);
    net.put(false, init.datagram);
    net.advance(Duration::from_millis(10));
    assert_eq!(net.got_b, [1, 2, 3]);
    let new = net.a.session(net.now, B).unwrap();
    assert_ne!(new.local_index, old.local_index);
    assert!(new.sent() < 10);
    let st = net.a.status(net.now, B).unwrap();
    assert_eq!((st.handshakes, st.rekeys), (2, 1));
    assert_eq!(net.b.status(net.now, A).unwrap().rekeys, 1);
}

/// Both nodes start a handshake at once, as they do when they come up together:
/// each ends up sending on the session the other started, and every rekey after
/// that starts on both sides at once too. Nothing is lost through any of it.
#[test]
fn simultaneous_handshakes_and_rekeys_lose_nothing() {
    let mut net = Net::pair(Cipher::ChaCha20Poly1305, Cipher::ChaCha20Poly1305);
    // Datagrams every 2 ms over a 5 ms wire: some are always in flight.
    net.delay = Duration::from_millis(5);
    let (mut sent_a, mut sent_b) = (0, 0);
    for i in 0..150_000u64 {
        assert!(net.send(true, sent_a), "A dropped {sent_a}");
        assert!(net.send(false, sent_b), "B dropped {sent_b}");
        sent_a += 1;
        sent_b += 1;
        net.advance(Duration::from_millis(2));
        if i == 100 {
            // The handshakes at the start crossed: two each, and neither replaced
            // a session, so neither is a rekey.
            for (ep, peer) in [(&net.a, B), (&net.b, A)] {
                let st = ep.status(net.now, peer).unwrap();
                assert_eq!((st.handshakes, st.rekeys), (2, 0), "{st:?}");
            }
        }
    }
    net.advance(Duration::from_secs(1));
    net.assert_nothing_refused();
    assert_eq!(net.got_b, (0..sent_a).collect::<Vec<_>>(), "A → B");
    assert_eq!(net.got_a, (0..sent_b).collect::<Vec<_>>(), "B → A");
    let st = net.a.status(net.now, B).unwrap();
    assert!(st.handshakes >= 4);
    assert!(st.rekeys >= 1 && st.rekeys < st.handshakes, "{st:?}");
}

/// A peer's session opens only datagrams that say they are from that peer: one
/// sealed with it but naming another sender is refused.
#[test]
fn a_session_opens_only_its_peers_datagrams() {
    let mut net = Net::pair(Cipher::ChaCha20Poly1305, Cipher::ChaCha20Poly1305);
    net.send(true, 1);
    net.advance(Duration::from_millis(10));
    let s = net.b.session(net.now, A).expect("B's session with A");
    let mut lie = plain(NodeId([2, 0, 0, 0, 0, 0xc]), 9);
    let mut out = Vec::new();
    s.seal_into(&lie, &mut out).unwrap();
    assert_eq!(
        net.a.receive(net.now, ADDR_B, &mut out),
        Received::Dropped(Refused::Seal(seal::Error::Forged))
    );
    lie = plain(B, 10);
    s.seal_into(&lie, &mut out).unwrap();
    assert!(matches!(
        net.a.receive(net.now, ADDR_B, &mut out),
        Received::Data(_)
    ));
}

#[test]
fn an_expired_session_handshakes_again() {
    let mut net = Net::pair(Cipher::ChaCha20Poly1305, Cipher::ChaCha20Poly1305);
    net.send(true, 1);
    net.advance(Duration::from_millis(10));
    net.advance(REJECT_AFTER_TIME + Duration::from_secs(1));
    assert_eq!(net.a.status(net.now, B).unwrap().state, State::Idle);
    assert_eq!(net.b.status(net.now, A).unwrap().state, State::Idle);
    // B speaks first this time.
    assert!(net.send(false, 2));
    assert_eq!(net.b.status(net.now, A).unwrap().state, State::Handshaking);
    net.advance(Duration::from_millis(10));
    assert_eq!(net.got_a, [2]);
    assert_eq!(net.b.status(net.now, A).unwrap().handshakes, 2);
    assert_eq!(net.b.status(net.now, A).unwrap().state, State::Established);
}

#[test]
fn a_wrong_key_never_completes() {
    let (ka, kb, wrong) = (
        StaticKey::generate(),
        StaticKey::generate(),
        StaticKey::generate(),
    );
    // A has the wrong key for B, then B has the wrong key for A.
    for (a_knows_b, b_knows_a, why) in [
        (wrong.public(), ka.public(), Refused::BadMac),
        (kb.public(), wrong.public(), Refused::BadHandshake),
    ] {
        let mut a = endpoint(A, &ka, Cipher::ChaCha20Poly1305);
        let mut b = endpoint(B, &kb, Cipher::ChaCha20Poly1305);
        a.set_peer(B, a_knows_b);
        b.set_peer(A, b_knows_a);
        let mut net = Net::new(a, b);
        for n in 0..40 {
            net.send(true, n);
        }
        net.advance(REKEY_ATTEMPT_TIME + REKEY_TIMEOUT);
        assert!(net.got_b.is_empty() && net.got_a.is_empty());
        assert!(!net.refused_b.is_empty() && net.refused_b.iter().all(|r| *r == why));
        let st = net.a.status(net.now, B).unwrap();
        assert_eq!(st.handshakes, 0);
        assert_eq!(st.queue_drops, 40, "8 over the queue, 32 given up");
        assert!(st.handshake_failures >= 1, "the attempt was given up");
        // Retries came every REKEY_TIMEOUT, not more often.
        let tries = net.refused_b.len() as u64;
        let most = REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs() + 1;
        assert!((most - 1..=most).contains(&tries), "{tries} initiations");
        assert_eq!(net.b.status(net.now, A).unwrap().state, State::Idle);
    }
}

#[test]
fn a_replayed_initiation_is_refused() {
    let mut net = Net::pair(Cipher::ChaCha20Poly1305, Cipher::ChaCha20Poly1305);
    net.send(true, 1);
    let init = net.a.poll_transmit().unwrap().datagram;
    net.put(false, init.clone());
    net.advance(Duration::from_millis(10));
    assert_eq!(net.got_b, [1]);
    net.put(false, init);
    net.advance(Duration::from_millis(10));
    assert_eq!(net.refused_b, [Refused::ReplayedHandshake]);
}

/// A forged response (valid mac1, bad Noise) neither completes nor ends the
/// handshake; the genuine one still does.
#[test]
fn a_forged_response_does_not_end_the_handshake() {
    let mut net = Net::pair(Cipher::ChaCha20Poly1305, Cipher::ChaCha20Poly1305);
    net.send(true, 7);
    let init = net.a.poll_transmit().unwrap().datagram;
    let mut d = init.clone();
    assert_eq!(net.b.receive(net.now, ADDR_A, &mut d), Received::Handshake);
    let response = net.b.poll_transmit().unwrap().datagram;
    let mut forged = response.clone();
    forged[HEADER_LEN + 8 + 40] ^= 1;
    let mut view = message::Response::new_checked(&mut forged[..]).unwrap();
    view.set_mac1(&Macs::to(&net.a.public()).mac1(view.mac1_input()));
    assert_eq!(
        net.a.receive(net.now, ADDR_B, &mut forged),
        Received::Dropped(Refused::BadHandshake)
    );
    assert_eq!(net.a.status(net.now, B).unwrap().state, State::Handshaking);
    let mut genuine = response;
    assert_eq!(
        net.a.receive(net.now, ADDR_B, &mut genuine),
        Received::Handshake
    );
    assert_eq!(net.a.status(net.now, B).unwrap().state, State::Established);
    net.advance(Duration::from_millis(10));
    assert_eq!(net.got_b, [7]);
}

/// A flood of initiations (valid mac1: B's public key is public) puts B under
/// load: it answers them with cookie replies instead of Diffie-Hellman, and A,
/// whose retry carries the cookie, still gets through.
#[test]
fn under_load_only_initiations_with_a_cookie_cost_work() {
    let mut net = Net::pair(Cipher::ChaCha20Poly1305, Cipher::ChaCha20Poly1305);
    let b_public = net.b.public();
    let stranger = StaticKey::generate();
    let mut flood = endpoint(
        NodeId([2, 0, 0, 0, 0, 0xf]),
        &stranger,
        Cipher::ChaCha20Poly1305,
    );
    flood.set_peer(B, b_public);
    let mut refused = Vec::new();
    for k in 0..200u32 {
        let spoofed = SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + k), 4000);
        assert!(flood.session(net.now, B).is_none());
        let mut d = flood.poll_transmit().unwrap().datagram;
        flood.remove_peer(B);
        flood.set_peer(B, b_public);
        match net.b.receive(net.now, spoofed, &mut d) {
            Received::Dropped(why) => refused.push(why),
            other => panic!("{other:?}"),
        }
    }
    let worked = refused
        .iter()
        .filter(|r| **r == Refused::BadHandshake)
        .count();
    assert!(
        worked as u64 <= limiter::LOAD_THRESHOLD + 1,
        "{worked} Diffie-Hellmans"
    );
    assert_eq!(
        refused.len() - worked,
        200 - worked,
        "the rest were limited"
    );
    // Every limited one was answered with a cookie reply to its (spoofed) source.
    let mut cookies = 0;
    while let Some(t) = net.b.poll_transmit() {
        assert!(matches!(t.to, Dest::Addr(a) if a.ip().octets()[0] == 10));
        cookies += 1;
    }
    assert_eq!(cookies, 200 - worked);
    // A, during the flood: its first initiation gets a cookie, its retry passes.
    net.send(true, 5);
    net.advance(Duration::from_millis(10));
    assert!(net.got_b.is_empty());
    assert_eq!(net.refused_b, [Refused::RateLimited]);
    assert_eq!(net.a.status(net.now, B).unwrap().state, State::Handshaking);
    // Keep B under load while A waits for its retry.
    for k in 0..40u32 {
        let mut d = {
            flood.session(net.now, B);
            flood.poll_transmit().unwrap().datagram
        };
        flood.remove_peer(B);
        flood.set_peer(B, b_public);
        let spoofed = SocketAddrV4::new(Ipv4Addr::from(0x0b00_0000 + k), 4000);
        let _ = net.b.receive(net.now, spoofed, &mut d);
        while net.b.poll_transmit().is_some() {}
        net.advance(REKEY_TIMEOUT / 40);
    }
    net.advance(Duration::from_millis(100));
    assert_eq!(net.got_b, [5]);
    assert_eq!(net.a.status(net.now, B).unwrap().state, State::Established);
}

#[test]
fn one_source_is_rate_limited() {
    let mut net = Net::pair(Cipher::ChaCha20Poly1305, Cipher::ChaCha20Poly1305);
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        net.a.session(net.now, B);
        let mut d = net.a.poll_transmit().unwrap().datagram;
        // A new initiation each time: forget the pending one.
        net.a.remove_peer(B);
        net.a.set_peer(B, net.b.public());
        net.now += Duration::from_millis(1);
        outcomes.push(net.b.receive(net.now, ADDR_A, &mut d));
    }
    let limited = outcomes
        .iter()
        .filter(|o| **o == Received::Dropped(Refused::RateLimited))
        .count() as u64;
    assert_eq!(limited, 10 - limiter::INITIATION_BURST);
}

#[test]
fn garbage_and_unknown_sessions_are_refused() {
    let mut net = Net::pair(Cipher::ChaCha20Poly1305, Cipher::ChaCha20Poly1305);
    for len in [0, 5, 12, 60, message::INITIATION_LEN] {
        let mut d = vec![0u8; len];
        assert!(matches!(
            net.b.receive(net.now, ADDR_A, &mut d),
            Received::Dropped(_)
        ));
    }
    // A well-formed initiation with a bad mac1.
    let mut d = vec![0u8; message::INITIATION_LEN];
    d[..4].copy_from_slice(&[1, message::KIND_INITIATION, 0, 0]);
    assert_eq!(
        net.b.receive(net.now, ADDR_A, &mut d),
        Received::Dropped(Refused::BadMac)
    );
    // A sealed datagram for no session.
    let mut d = plain(A, 1);
    d.resize(d.len() + seal::SEAL_OVERHEAD, 0);
    d[2..4].copy_from_slice(&[0, 1]);
    assert_eq!(
        net.b.receive(net.now, ADDR_A, &mut d),
        Received::Dropped(Refused::UnknownSession)
    );
}

#[test]
fn a_changed_peer_key_ends_its_sessions() {
    let mut net = Net::pair(Cipher::ChaCha20Poly1305, Cipher::ChaCha20Poly1305);
    net.send(true, 1);
    net.advance(Duration::from_millis(10));
    assert_eq!(net.a.status(net.now, B).unwrap().state, State::Established);
    net.a.set_peer(B, StaticKey::generate().public());
    assert_eq!(net.a.status(net.now, B).unwrap().state, State::Idle);
}

#[test]
fn the_public_key_is_x25519_of_the_private() {
    // RFC 7748, section 6.1: Alice's key pair.
    use crate::control::keys::parse_hex32;
    let private = parse_hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let public = parse_hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    let (private, public) = (private.unwrap(), public.unwrap());
    assert_eq!(StaticKey::from_private(private).public(), public);
    assert_eq!(
        hex(&public),
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    );
}

/// The sleeve format description: it names the handshake's protocol and prologue
/// (the messages' layout is held to it in `weft_encap::sleeve::handshake`).
const SLEEVE_MD: &str = include_str!("../../../encap/SLEEVE.md");

#[test]
fn the_doc_names_the_noise_protocol_and_prologue() {
    assert!(SLEEVE_MD.contains(NOISE_PARAMS));
    assert!(SLEEVE_MD.contains(std::str::from_utf8(handshake::PROLOGUE).unwrap()));
}

/// The MACs as the wire has them, computed elsewhere (Python's `hmac` and
/// `hashlib`): mac1 is HMAC-SHA256 under SHA-256 of "weft mac1 v1" and the
/// receiver's public key, mac2 HMAC-SHA256 under the cookie, both cut to 16 bytes.
/// Nodes of another build interoperate only if these hold.
#[test]
fn the_macs_are_the_documented_hmacs() {
    let hex = |m: [u8; 16]| m.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let input: Vec<u8> = (0..121).collect();
    assert_eq!(
        hex(Macs::to(&[7; 32]).mac1(&input)),
        "a1f46e31df8e618cf3f6263840c3072f"
    );
    let input: Vec<u8> = (0..137).collect();
    assert_eq!(
        hex(handshake::mac2(&[9; 16], &input)),
        "c7548557f8af49523ae50b8214e44220"
    );
}
