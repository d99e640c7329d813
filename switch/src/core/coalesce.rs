//! GRO towards pods: TCP segments that came through a tunnel are merged into
//! super-frames, so a pod's kernel takes one 64 KiB write instead of forty; so
//! are the datagrams of a UDP flow, for a port that takes UDP super-frames (USO),
//! one write instead of up to 64.

use weft_encap::gro::{self, Coalescer, Flow, Push};

use super::{Ctx, Offload, Sink};

/// Flows coalesced at once per worker.
const FLOWS: usize = 4;

/// A coalescer and the port its super-frame goes to.
struct Slot {
    /// The port, an index into the batch's snapshot.
    port: usize,
    /// Push number of its last push, to evict the least recently used.
    used: u64,
    gro: Coalescer<Box<[u8]>>,
}

/// A worker's coalescers.
pub(super) struct Coalescers {
    slots: Vec<Slot>,
    pushes: u64,
}

impl Coalescers {
    pub(super) fn new() -> Coalescers {
        Coalescers {
            slots: (0..FLOWS)
                .map(|_| Slot {
                    port: 0,
                    used: 0,
                    gro: {
                        let buf = vec![0u8; gro::buffer_len(0)].into_boxed_slice();
                        let mut c = Coalescer::new(buf, 0).expect("buffer_len fits");
                        // Which ports take UDP super-frames is checked before a push.
                        c.set_udp(true);
                        c
                    },
                })
                .collect(),
            pushes: 0,
        }
    }

    /// Merges `frame`, bound for port `p`, into the super-frame of its flow. Frames
    /// that cannot be merged go out at once; a flow's frames never overtake each other,
    /// but for IPv4 fragments, which carry no ports to tell their flow by: they go
    /// out at once and may pass their flow's held datagrams, as in the kernel's GRO.
    pub(super) fn coalesce<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        p: usize,
        frame: &[u8],
    ) {
        let port = &cx.tables.ports[p];
        let Some(flow) = Flow::of(frame).filter(|f| port.uso || !f.is_udp()) else {
            return cx.sink.to_port(port, &Offload::PLAIN, frame);
        };
        self.pushes += 1;
        let k = match self.find(p, flow) {
            Some(k) => k,
            // A frame that cannot start a run (no payload, IP options, a flag beyond
            // ACK, ...) of a flow nobody holds goes out at once, without evicting
            // anyone.
            None if !gro::may_start(frame) => return cx.sink.to_port(port, &Offload::PLAIN, frame),
            None => {
                // Many UDP flows of a datagram each (DNS, say) must not crowd out the
                // runs being built: a UDP datagram takes an idle coalescer, or one
                // that holds a single frame, and else goes out at once.
                let k = if flow.is_udp() {
                    match self.room_for_udp() {
                        Some(k) => k,
                        None => return cx.sink.to_port(port, &Offload::PLAIN, frame),
                    }
                } else {
                    self.victim()
                };
                self.emit(cx, k);
                self.slots[k].port = p;
                k
            }
        };
        self.slots[k].used = self.pushes;
        let mut verdict = self.slots[k].gro.push(frame);
        if verdict == Push::NotMerged {
            self.emit(cx, k);
            self.slots[k].port = p;
            verdict = self.slots[k].gro.push(frame);
        }
        match verdict {
            Push::Started | Push::Merged => {}
            Push::NotMerged | Push::Deliver | Push::Other => {
                cx.sink.to_port(port, &Offload::PLAIN, frame)
            }
        }
    }

    /// The coalescer holding `flow` for port `p`.
    fn find(&self, p: usize, flow: Flow) -> Option<usize> {
        self.slots
            .iter()
            .position(|g| g.port == p && g.gro.flow() == Some(flow))
    }

    /// A coalescer a UDP flow may start in: an idle one, else the least recently used
    /// of those that hold a single frame (sending it alone costs the write it would
    /// have cost anyway). `None` when every one holds a run.
    fn room_for_udp(&self) -> Option<usize> {
        (self.slots.iter().position(|g| g.gro.is_empty())).or_else(|| {
            (0..self.slots.len())
                .filter(|&k| self.slots[k].gro.segments() == 1)
                .min_by_key(|&k| self.slots[k].used)
        })
    }

    /// An idle coalescer, else the least recently used one.
    fn victim(&self) -> usize {
        self.slots
            .iter()
            .position(|g| g.gro.is_empty())
            .unwrap_or_else(|| {
                (0..self.slots.len())
                    .min_by_key(|&k| self.slots[k].used)
                    .unwrap_or(0)
            })
    }

    /// Sends the super-frame held by coalescer `k`, if any.
    fn emit<S: Sink + ?Sized>(&mut self, cx: &mut Ctx<'_, S>, k: usize) {
        let slot = &mut self.slots[k];
        let Some(port) = cx.tables.ports.get(slot.port) else {
            slot.gro.clear();
            return;
        };
        if let Some((offload, frame)) = slot.gro.take() {
            cx.sink.to_port(port, &offload, frame);
        }
    }

    /// Sends on the super-frame being coalesced for port `p` of `frame`'s flow, if any.
    pub(super) fn emit_flow<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        p: usize,
        frame: &[u8],
    ) {
        if let Some(k) = Flow::of(frame).and_then(|flow| self.find(p, flow)) {
            self.emit(cx, k);
        }
    }

    /// Sends every super-frame held.
    pub(super) fn flush<S: Sink + ?Sized>(&mut self, cx: &mut Ctx<'_, S>) {
        for k in 0..self.slots.len() {
            self.emit(cx, k);
        }
    }
}
