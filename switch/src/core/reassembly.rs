//! Sleeve chunks joined back into the super-frames they were cut from.
//!
//! Chunks join in order only: a gap, or a frame crowded out before it is whole, loses
//! that frame (counted once, its remaining chunks ignored), which the pod's transport
//! retransmits. Only a first chunk takes a slot, so a lost frame's remnants never
//! crowd out a live one.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use weft_encap::ethernet::{self, ethertype};
use weft_encap::sleeve::ChunkRepr;
use weft_encap::{gso, virtio};

use super::{Core, Ctx, Frame, Ingress, Sink};
use crate::tables::counters::DropReason;

/// Super-frames being joined at once per worker: room for the bursts of several
/// peers (or sending workers) arriving interleaved; 64 KiB each.
pub const JOINS: usize = 8;

/// Super-frames given up before they were whole that a worker remembers, so the rest
/// of their chunks are ignored rather than counted again.
const GIVEN_UP: usize = 32;

/// A super-frame being joined from its chunks.
struct Join {
    /// Whether a frame is in progress.
    active: bool,
    /// The peer it comes from, as an index into the snapshot of its first chunk.
    peer: usize,
    from: SocketAddr,
    /// The header of its first chunk: every later one must agree but for `offset`.
    first: ChunkRepr,
    /// Payload bytes joined so far: where the next chunk must start.
    next: usize,
    /// Chunk count of its last chunk, to give up the least recently fed.
    used: u64,
    /// The frame: Ethernet header, then the payload.
    buf: Box<[u8]>,
}

/// A worker's joins in progress and the frames it gave up.
pub(super) struct Joins {
    slots: Vec<Join>,
    /// Frames given up, a ring of (sender, frame id) with its next slot.
    given_up: [(SocketAddr, u32); GIVEN_UP],
    given_up_next: usize,
    chunks_in: u64,
}

const NOWHERE: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// What to do with one chunk.
enum Step {
    /// Ignore it.
    Ignore,
    /// It shows its frame lost: count that on this peer.
    Lost(usize),
    /// Copy it into slot `k`.
    Join(usize),
}

impl Joins {
    pub(super) fn new() -> Joins {
        Joins {
            slots: (0..JOINS)
                .map(|_| Join {
                    active: false,
                    peer: 0,
                    from: NOWHERE,
                    first: ChunkRepr {
                        frame_id: 0,
                        total: 0,
                        offset: 0,
                        ethertype: 0,
                        gso_type: 0,
                        gso_size: 0,
                    },
                    next: 0,
                    used: 0,
                    buf: vec![0u8; ethernet::HEADER_LEN + usize::from(u16::MAX)].into_boxed_slice(),
                })
                .collect(),
            given_up: [(NOWHERE, 0); GIVEN_UP],
            given_up_next: 0,
            chunks_in: 0,
        }
    }

    /// Remembers that frame `frame_id` from `from` was given up.
    fn give_up(&mut self, from: SocketAddr, frame_id: u32) {
        self.given_up[self.given_up_next] = (from, frame_id);
        self.given_up_next = (self.given_up_next + 1) % GIVEN_UP;
    }

    /// Where chunk `c` from peer `j` at `from` goes. A frame crowded out of its slot
    /// is counted here, on its own peer, through `lost`.
    fn step(
        &mut self,
        j: usize,
        from: SocketAddr,
        c: &ChunkRepr,
        lost: &mut dyn FnMut(usize),
    ) -> Step {
        let offset = usize::from(c.offset);
        self.chunks_in += 1;
        let found = self
            .slots
            .iter()
            .position(|g| g.active && g.from == from && g.first.frame_id == c.frame_id);
        match found {
            Some(k) => {
                let g = &mut self.slots[k];
                let same_frame = ChunkRepr { offset: 0, ..*c } == g.first;
                if offset != g.next || !same_frame {
                    g.active = false;
                    self.give_up(from, c.frame_id);
                    return Step::Lost(j);
                }
                g.used = self.chunks_in;
                Step::Join(k)
            }
            // A frame whose start never came, or the rest of one given up.
            None if offset != 0 => match self.given_up.contains(&(from, c.frame_id)) {
                true => Step::Ignore,
                false => {
                    self.give_up(from, c.frame_id);
                    Step::Lost(j)
                }
            },
            None => {
                let k = self.victim();
                let g = &self.slots[k];
                if g.active {
                    // Crowded out before it was whole: counted on its own peer.
                    let (peer, from, frame_id) = (g.peer, g.from, g.first.frame_id);
                    self.give_up(from, frame_id);
                    lost(peer);
                }
                let chunks_in = self.chunks_in;
                let g = &mut self.slots[k];
                (g.active, g.peer, g.from, g.first, g.next, g.used) =
                    (true, j, from, *c, 0, chunks_in);
                Step::Join(k)
            }
        }
    }

    /// An idle slot, else the least recently fed one.
    fn victim(&self) -> usize {
        self.slots
            .iter()
            .position(|g| !g.active)
            .unwrap_or_else(|| {
                (0..self.slots.len())
                    .min_by_key(|&k| self.slots[k].used)
                    .unwrap_or(0)
            })
    }
}

impl Core {
    /// Adds a chunk from peer `j` (at `from`) to the super-frame it belongs to, and
    /// forwards the frame when it is whole.
    pub(super) fn join<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        j: usize,
        from: SocketAddr,
        c: &ChunkRepr,
        data: &[u8],
    ) {
        let (t, worker) = (cx.tables, self.worker);
        let lost_on = |peer: usize| {
            t.peers
                .get(peer)
                .map_or(&t.tunnel, |p| &p.counters)
                .discard(worker, DropReason::ChunkLost)
        };
        let k = match self.joins.step(j, from, c, &mut |peer| lost_on(peer)) {
            Step::Ignore => return,
            Step::Lost(peer) => return lost_on(peer),
            Step::Join(k) => k,
        };
        let g = &mut self.joins.slots[k];
        // `Chunk::parse` checked that the data ends within `total`, at most 65535.
        let at = ethernet::HEADER_LEN + usize::from(c.offset);
        g.buf[at..at + data.len()].copy_from_slice(data);
        g.next += data.len();
        if g.next < usize::from(g.first.total) {
            return;
        }
        g.active = false;
        let first = g.first;
        let mut buf = std::mem::take(&mut g.buf);
        self.deliver_joined(cx, j, &first, &mut buf);
        self.joins.slots[k].buf = buf;
    }

    /// Checks a whole joined super-frame and forwards it.
    fn deliver_joined<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        j: usize,
        first: &ChunkRepr,
        buf: &mut [u8],
    ) {
        let len = ethernet::HEADER_LEN + usize::from(first.total);
        ethernet::Frame::new_unchecked(&mut *buf).set_ethertype(first.ethertype);
        let offload = match virtio::GsoType::from_wire(first.gso_type) {
            _ if first.ethertype != ethertype::IPV4 => Err(DropReason::Unsupported),
            Some(gso_type) => gso::super_frame_header(&buf[..len], gso_type, first.gso_size)
                .map_err(|_| DropReason::BadEncap),
            None => Err(DropReason::BadEncap),
        };
        match offload {
            Ok(offload) => self.forward(cx, Ingress::Peer(j), &offload, Frame::new(buf, 0, len)),
            Err(reason) => cx.tables.peers[j].counters.discard(self.worker, reason),
        }
    }
}
