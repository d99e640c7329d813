//! The session timers, WireGuard's: when a session rekeys and dies, when an
//! unanswered initiation is sent again, and when a handshake is given up.

use std::time::Duration;

use super::Endpoint;
use crate::core::time::Time;

/// A session's initiator rekeys at this age.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// The responder rekeys this much later, so the two rarely start at once.
pub const RESPONDER_GRACE: Duration = Duration::from_secs(10);
/// A session neither sends nor receives at this age.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// A session rekeys after sending this many messages.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// An unanswered initiation is sent again, with a new ephemeral key, after this.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// A handshake that has not completed after this is given up (and its queue
/// dropped); the next datagram to the peer starts another.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);

impl Endpoint {
    /// When [`Endpoint::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut next: Option<Time> = None;
        let mut at = |t: Time| next = Some(next.map_or(t, |n| n.min(t)));
        for p in &self.peers {
            if let Some(h) = &p.pending {
                at(h.sent_at + REKEY_TIMEOUT);
            }
            for s in p.sessions() {
                at(s.created + REJECT_AFTER_TIME);
            }
        }
        next
    }

    /// Resends unanswered initiations, gives up old handshakes and drops dead
    /// sessions.
    pub fn handle_timeout(&mut self, now: Time) {
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            let mut dead = Vec::new();
            for slot in [&mut p.current, &mut p.next] {
                if slot.as_ref().is_some_and(|s| !s.alive(now)) {
                    dead.push(slot.take().expect("checked").local_index);
                }
            }
            dead.extend(
                p.retired
                    .iter()
                    .filter(|s| !s.alive(now))
                    .map(|s| s.local_index),
            );
            p.retired.retain(|s| s.alive(now));
            for idx in dead {
                self.index.remove(&idx);
            }
            let p = &mut self.peers[i];
            let Some(h) = &p.pending else {
                continue;
            };
            if now.saturating_since(h.started) >= REKEY_ATTEMPT_TIME {
                let idx = h.local_index;
                p.pending = None;
                p.failures += 1;
                p.queue_drops += p.queue.len() as u64;
                p.queue.clear();
                self.index.remove(&idx);
            } else if now.saturating_since(h.sent_at) >= REKEY_TIMEOUT {
                self.initiate(now, i);
            }
        }
    }
}
