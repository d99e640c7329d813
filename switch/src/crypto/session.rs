//! An established session: its keys, the send counter and the replay window, and
//! what the endpoint does with one: hand it to workers, confirm it, retire it.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use weft_encap::sleeve::seal::{self, Cipher, ReplayWindow, SealKey};
use weft_encap::sleeve::{self, handshake, NodeId, HEADER_LEN};

use super::timers::{REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, RESPONDER_GRACE};
use super::{Dest, Endpoint, Received, Refused, Transmit, MAX_RETIRED};
use crate::core::time::Time;

/// One established session: its keys, its indexes, the send counter and the
/// replay window. Shared with the workers that seal and open with it.
#[derive(Debug)]
pub struct Session {
    /// The peer it is with: what the sender field of every datagram it opens must
    /// say.
    pub peer: NodeId,
    /// The index this node chose: peers put it in datagrams to us.
    pub local_index: u32,
    /// The peer's index: we put it in datagrams to the peer.
    pub remote_index: u32,
    /// When the handshake completed.
    pub created: Time,
    /// Whether this node initiated it.
    pub initiator: bool,
    tx: SealKey,
    rx: SealKey,
    counter: AtomicU64,
    window: Mutex<ReplayWindow>,
}

impl Session {
    /// A session from a handshake's split: `tx` seals what this node sends, `rx`
    /// opens what the peer sends.
    pub(super) fn new(
        peer: NodeId,
        (local_index, remote_index): (u32, u32),
        created: Time,
        initiator: bool,
        cipher: Cipher,
        (tx, rx): (&[u8; 32], &[u8; 32]),
    ) -> Session {
        Session {
            peer,
            local_index,
            remote_index,
            created,
            initiator,
            tx: SealKey::new(cipher, tx),
            rx: SealKey::new(cipher, rx),
            counter: AtomicU64::new(0),
            window: Mutex::new(ReplayWindow::new()),
        }
    }

    /// The session's cipher.
    pub fn cipher(&self) -> Cipher {
        self.tx.cipher()
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }

    /// Seals the plain datagram `plain` (header and body) into `out`.
    pub fn seal_into(&self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), seal::Error> {
        out.clear();
        out.extend_from_slice(&plain[..HEADER_LEN]);
        out.extend_from_slice(&[0; seal::SEAL_HEADER_LEN]);
        out.extend_from_slice(&plain[HEADER_LEN..]);
        out.extend_from_slice(&[0; seal::TAG_LEN]);
        // Never wraps: at the end of the counter every send fails.
        let counter = self
            .counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_add(1))
            .map_err(|c| seal::Error::CounterExhausted { counter: c })?;
        seal::seal(&self.tx, self.remote_index, counter, out)
    }

    /// Opens the sealed `datagram` in place; returns where the plain one lies. The
    /// replay window is locked to check the counter and again to record it, not
    /// while the AEAD runs, so workers open one peer's datagrams in parallel (two
    /// copies of one datagram opened at once: the second to record it is refused).
    /// A datagram whose sender is not the session's peer is refused as forged.
    pub fn open(&self, datagram: &mut [u8]) -> Result<Range<usize>, seal::Error> {
        let head = seal::parse(datagram)?;
        self.window.lock().check(head.counter)?;
        let range = seal::decrypt(&self.rx, datagram)?;
        self.window.lock().accept(head.counter)?;
        let sender = sleeve::Packet::new_checked(&datagram[range.clone()]).map(|p| p.sender());
        if sender != Ok(self.peer) {
            return Err(seal::Error::Forged);
        }
        Ok(range)
    }

    /// Moves the send counter on to `n` (tests: 2^60 messages take a while).
    #[cfg(test)]
    pub(super) fn skip_to(&self, n: u64) {
        self.counter.store(n, Ordering::Relaxed);
    }

    pub(super) fn alive(&self, now: Time) -> bool {
        now.saturating_since(self.created) < REJECT_AFTER_TIME
            && self.sent() < seal::REJECT_AFTER_MESSAGES
    }

    pub(super) fn wants_rekey(&self, now: Time) -> bool {
        let age = now.saturating_since(self.created);
        let due = if self.initiator {
            REKEY_AFTER_TIME
        } else {
            REKEY_AFTER_TIME + RESPONDER_GRACE
        };
        age >= due || self.sent() >= REKEY_AFTER_MESSAGES
    }
}

impl Endpoint {
    /// The live, confirmed session whose local index is `index`, for a worker to
    /// open datagrams with on its own. A session this node answered but has not
    /// seen used is not handed out: its first datagram goes through
    /// [`Endpoint::receive`], which confirms it.
    pub fn rx_session(&self, now: Time, index: u32) -> Option<Arc<Session>> {
        let p = &self.peers[*self.index.get(&index)?];
        p.confirmed()
            .find(|s| s.local_index == index && s.alive(now))
            .cloned()
    }

    pub(super) fn receive_sealed(&mut self, now: Time, datagram: &mut [u8]) -> Received {
        let head = match seal::parse(datagram) {
            Ok(h) => h,
            Err(e) => return Received::Dropped(Refused::Seal(e)),
        };
        let Some(&i) = self.index.get(&head.receiver) else {
            return Received::Dropped(Refused::UnknownSession);
        };
        let p = &self.peers[i];
        let Some(session) = p
            .sessions()
            .find(|s| s.local_index == head.receiver)
            .filter(|s| s.alive(now))
            .cloned()
        else {
            return Received::Dropped(Refused::UnknownSession);
        };
        let range = match session.open(datagram) {
            Ok(r) => r,
            Err(e) => return Received::Dropped(Refused::Seal(e)),
        };
        // The initiator has used the session this node answered: it sends now.
        let p = &mut self.peers[i];
        if p.next
            .as_ref()
            .is_some_and(|n| n.local_index == head.receiver)
        {
            let next = p.next.take();
            self.promote(i, next.expect("checked"));
            self.flush_queue(i);
        }
        if handshake::is_confirm(&datagram[range.clone()]) {
            return Received::Handshake;
        }
        Received::Data(range)
    }

    /// Makes `s` peer `i`'s sending session; the old one keeps receiving.
    pub(super) fn promote(&mut self, i: usize, s: Arc<Session>) {
        let p = &mut self.peers[i];
        if let Some(old) = p.current.replace(s) {
            p.retired.push_front(old);
        }
        if p.retired.len() > MAX_RETIRED {
            let oldest = p.retired.pop_back().expect("more than none");
            self.index.remove(&oldest.local_index);
        }
    }

    /// Seals and sends what waited for peer `i`'s session.
    pub(super) fn flush_queue(&mut self, i: usize) {
        let p = &mut self.peers[i];
        let Some(s) = p.current.clone() else {
            return;
        };
        let node = p.node;
        for plain in std::mem::take(&mut p.queue) {
            let mut out = Vec::new();
            if s.seal_into(&plain, &mut out).is_ok() {
                self.out.push_back(Transmit {
                    to: Dest::Peer(node),
                    datagram: out,
                });
            }
        }
    }
}
