//! Sleeve batching: frames to one peer on one lane share a datagram, up to the
//! underlay's largest, and leave when it is full or when the batch ends.

use weft_encap::sleeve::{self, NodeId};

use super::{Ctx, Sink};
use crate::tables::counters::DropReason;

/// What weft tells its sleeve peers it can receive: it joins chunks and
/// understands echoes.
pub const FEATURES: u8 = sleeve::FEATURE_CHUNKS | sleeve::FEATURE_ECHO;

/// How many (peer, lane) pairs may have a datagram under construction at once.
const PENDING: usize = 16;

/// A datagram under construction.
struct Batch {
    /// The peer, an index into the batch's snapshot.
    peer: usize,
    lane: usize,
    /// Bytes written; 0 when empty.
    len: usize,
    buf: Box<[u8]>,
}

/// A worker's datagrams under construction, one per (peer, lane) in use.
pub(super) struct Batches {
    slots: Vec<Batch>,
    active: usize,
}

impl Batches {
    pub(super) fn new() -> Batches {
        Batches {
            slots: (0..PENDING)
                .map(|_| Batch {
                    peer: 0,
                    lane: 0,
                    len: 0,
                    buf: vec![0u8; usize::from(u16::MAX)].into_boxed_slice(),
                })
                .collect(),
            active: 0,
        }
    }

    /// Appends an IPv4 or IPv6 packet (by `ethertype`) as a record to the datagram
    /// for peer `j` on `lane`, sending whatever no longer fits.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        worker: usize,
        j: usize,
        lane: usize,
        ethertype: u16,
        payload: &[u8],
    ) {
        let t = cx.tables;
        let peer = &t.peers[j];
        let max = t.node.max_datagram.min(usize::from(u16::MAX));
        let need = sleeve::record_len(payload.len());
        if sleeve::HEADER_LEN + need > max {
            return peer.counters.discard(worker, DropReason::TooBig);
        }
        let k = match self.slots[..self.active]
            .iter()
            .position(|b| b.peer == j && b.lane == lane)
        {
            Some(k) => k,
            None => self.open(cx, j, lane),
        };
        let b = &mut self.slots[k];
        if b.len + need > max {
            cx.sink.to_peer(peer, lane, &b.buf[..b.len]);
            b.len = 0;
        }
        if b.len == 0 {
            let sender = NodeId(t.node.router_mac.0);
            sleeve::emit_header(&mut b.buf[..], sleeve::Kind::Frames, sender, FEATURES);
            b.len = sleeve::HEADER_LEN;
        }
        b.len += sleeve::emit_record(&mut b.buf[b.len..], ethertype, payload);
    }

    /// A slot for (`j`, `lane`). When all are taken, only the sleeve's datagrams are
    /// sent to make room: super-frames coalesced for pods keep growing.
    fn open<S: Sink + ?Sized>(&mut self, cx: &mut Ctx<'_, S>, j: usize, lane: usize) -> usize {
        if self.active == PENDING {
            self.flush(cx);
        }
        let k = self.active;
        self.active += 1;
        let b = &mut self.slots[k];
        (b.peer, b.lane, b.len) = (j, lane, 0);
        k
    }

    /// Sends the datagram under construction for (`j`, `lane`), if any.
    pub(super) fn send_pending<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        j: usize,
        lane: usize,
    ) {
        if let Some(b) = self.slots[..self.active]
            .iter_mut()
            .find(|b| b.peer == j && b.lane == lane && b.len > 0)
        {
            cx.sink.to_peer(&cx.tables.peers[j], lane, &b.buf[..b.len]);
            b.len = 0;
        }
    }

    /// Sends every datagram under construction.
    pub(super) fn flush<S: Sink + ?Sized>(&mut self, cx: &mut Ctx<'_, S>) {
        for b in &mut self.slots[..self.active] {
            if b.len > 0 {
                cx.sink
                    .to_peer(&cx.tables.peers[b.peer], b.lane, &b.buf[..b.len]);
            }
            b.len = 0;
        }
        self.active = 0;
    }
}
