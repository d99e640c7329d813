//! A pod port's queue served by an AF_XDP socket: the [`PortQueue`] a worker polls.
//!
//! Receiving costs no copy: a frame the kernel wrote into a UMEM frame is lent to
//! the switch where it lies (the frame has 256 bytes of `XDP_PACKET_HEADROOM` in
//! front of it, room for a tunnel header), and its frame goes back to the fill ring
//! once the switch is done with it. Only a multi-buffer frame (one bigger than a
//! page) is gathered into the worker's buffer first. Sending copies the frame into a
//! UMEM frame of this queue, the one copy a frame must take to change UMEM; a
//! super-frame is cut into segments first, and a partial checksum is completed, as a
//! veth peer takes neither. Sends are batched: the tx ring is kicked every
//! [`KICK_EVERY`] frames and at the end of the worker's batch.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use weft_encap::gso;

use super::prog::Redirect;
use super::socket::{Socket, FRAME_SIZE};
use crate::core::HEADROOM;
use crate::io::port::{Offload, PortQueue, Rx};

/// Frames sent between two tx kicks: copy mode sends at most 32 per `sendto`
/// (`TX_BATCH_SIZE` in `net/xdp/xsk.c`).
pub const KICK_EVERY: u32 = 32;

/// The scratch buffer: a super-frame's segments (64 KiB in 512-byte segments, each
/// with its headers), as the switch's own segment buffer.
const SCRATCH_LEN: usize = 512 * 1024;

/// The most UMEM frames one frame takes: a 64 KiB frame in 4 KiB pages, and one more.
const MAX_PIECES: usize = 65_536 / FRAME_SIZE as usize + 1;

/// UMEM frames taken from the pool for one frame.
struct Frames {
    addrs: [u64; MAX_PIECES],
    len: usize,
}

/// How many rx descriptors are taken from the ring at once.
const RX_BATCH: u32 = 64;

/// How often a flush kicks a tx ring that the kernel leaves with frames (`EAGAIN`).
const FLUSH_KICKS: usize = 16;

/// One queue of an AF_XDP pod port.
pub struct XskQueue {
    sock: Socket,
    /// Frames this side owns and no ring holds: the tx pool.
    free: Vec<u64>,
    /// Descriptors taken from the rx ring and not yet handed on.
    pending: Vec<libc::xdp_desc>,
    /// The whole frames of `pending` being handed on (kept for its capacity).
    whole: Vec<libc::xdp_desc>,
    /// Frames sent since the last kick.
    unkicked: u32,
    /// Segments of a super-frame, and a multi-buffer frame gathered or being built.
    scratch: Box<[u8]>,
    name: String,
    queue: u32,
    /// The program and map: loaded while any queue of the port lives.
    _redirect: Arc<Redirect>,
}

impl std::fmt::Debug for XskQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskQueue")
            .field("name", &self.name)
            .field("queue", &self.queue)
            .field("free", &self.free.len())
            .field("multi_buffer", &self.sock.multi_buffer)
            .finish_non_exhaustive()
    }
}

/// The UMEM frame a descriptor's address lies in.
fn frame_of(addr: u64) -> u64 {
    addr & !u64::from(FRAME_SIZE - 1)
}

impl XskQueue {
    /// Serves `sock` (queue `queue` of `name`), whose spare frames are `free`.
    pub fn new(
        sock: Socket,
        free: Vec<u64>,
        name: &str,
        queue: u32,
        redirect: Arc<Redirect>,
    ) -> XskQueue {
        XskQueue {
            sock,
            free,
            pending: Vec::with_capacity(RX_BATCH as usize),
            whole: Vec::with_capacity(RX_BATCH as usize),
            unkicked: 0,
            scratch: vec![0u8; SCRATCH_LEN].into_boxed_slice(),
            name: name.to_owned(),
            queue,
            _redirect: redirect,
        }
    }

    /// The UMEM bytes of frame `addr`.
    fn frame_mut(&mut self, addr: u64) -> &mut [u8] {
        umem_frame(&mut self.sock, addr)
    }

    /// Lends `frame`'s UMEM frame back to the kernel for receiving.
    fn refill(&mut self, frame: u64) {
        let mut lend = self.sock.fill.produce(1);
        if lend.push(frame_of(frame)).is_err() {
            // Cannot happen (every frame the rx ring gave came from the fill ring,
            // so its slot is free), but a frame is never lost: it joins the pool.
            drop(lend);
            self.free.push(frame_of(frame));
        }
    }

    /// Takes back the frames the kernel has sent.
    fn reap(&mut self) {
        let size = self.sock.comp.size();
        let done = self.sock.comp.consume(size);
        self.free.extend(done.map(frame_of));
    }

    /// Asks the kernel to send what the tx ring holds.
    fn kick(&mut self) {
        self.unkicked = 0;
        if let Err(e) = self.sock.kick_tx() {
            log::debug!("{} queue {}: tx kick: {e}", self.name, self.queue);
        }
    }

    /// Takes `n` frames from the pool, reaping completions (and kicking the ring
    /// once) if it runs short.
    fn take_frames(&mut self, n: usize) -> io::Result<Frames> {
        if self.free.len() < n {
            self.reap();
        }
        if self.free.len() < n {
            self.kick();
            self.reap();
        }
        if self.free.len() < n {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // No allocation per frame: the addresses go in a fixed array.
        let mut frames = Frames {
            addrs: [0; MAX_PIECES],
            len: n,
        };
        for a in &mut frames.addrs[..n] {
            *a = self.free.pop().expect("checked above");
        }
        Ok(frames)
    }

    /// Copies `frame` into UMEM frames and queues it on the tx ring, first
    /// completing the L4 checksum at `csum` (`csum_start`, `csum_offset`) if asked.
    fn push_frame(&mut self, frame: &[u8], csum: Option<(usize, usize)>) -> io::Result<()> {
        let page = FRAME_SIZE as usize;
        let pieces = frame.len().div_ceil(page).max(1);
        if pieces > 1 && !self.sock.multi_buffer {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a frame bigger than a page on a socket without multi-buffer",
            ));
        }
        if pieces > MAX_PIECES || pieces as u32 > self.sock.tx.size() / 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a frame bigger than the tx ring",
            ));
        }
        let bad = |e: gso::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let frames = self.take_frames(pieces)?;
        let addrs = &frames.addrs[..frames.len];
        let copied = if pieces == 1 {
            let dst = &mut self.frame_mut(addrs[0])[..frame.len()];
            dst.copy_from_slice(frame);
            csum.map_or(Ok(()), |(start, offset)| {
                gso::complete_checksum(dst, start, offset)
            })
            .map_err(bad)
        } else {
            // A checksum over several pages is completed in the scratch buffer first.
            let mut scratch = std::mem::take(&mut self.scratch);
            let src = match csum {
                Some((start, offset)) => {
                    let copy = &mut scratch[..frame.len()];
                    copy.copy_from_slice(frame);
                    gso::complete_checksum(copy, start, offset).map(|()| &*copy)
                }
                None => Ok(frame),
            };
            let copied = src.map_err(bad).map(|src| {
                for (&addr, piece) in addrs.iter().zip(src.chunks(page)) {
                    self.frame_mut(addr)[..piece.len()].copy_from_slice(piece);
                }
            });
            self.scratch = scratch;
            copied
        };
        let mut queued = self.sock.tx.produce(pieces as u32);
        if copied.is_err() || queued.room() < pieces as u32 {
            drop(queued);
            self.free.extend_from_slice(addrs);
            copied?;
            self.kick();
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let lens = (0..pieces).map(|k| (frame.len() - k * page).min(page));
        for (k, (&addr, len)) in addrs.iter().zip(lens).enumerate() {
            let options = if k + 1 < pieces {
                libc::XDP_PKT_CONTD
            } else {
                0
            };
            let _ = queued.push(libc::xdp_desc {
                addr,
                len: len as u32,
                options,
            });
        }
        drop(queued);
        self.unkicked += pieces as u32;
        if self.unkicked >= KICK_EVERY {
            self.kick();
        }
        Ok(())
    }

    /// Hands one received frame (its descriptors) to `f`: in place if it is one
    /// buffer, gathered into `scratch` if it is several.
    fn hand_on(&mut self, frame: &[libc::xdp_desc], scratch: &mut [u8], f: &mut dyn FnMut(Rx<'_>)) {
        if let [first] = frame {
            let start = (first.addr - frame_of(first.addr)) as usize;
            let len = first.len as usize;
            let buf = self.frame_mut(first.addr);
            if start + len <= buf.len() && start >= HEADROOM {
                f(Rx::Frame {
                    offload: Offload::PLAIN,
                    buf,
                    start,
                    len,
                });
            } else {
                f(Rx::Malformed);
            }
            return;
        }
        // A multi-buffer frame: gathered into the caller's buffer.
        let total: usize = frame.iter().map(|d| d.len as usize).sum();
        if HEADROOM + total > scratch.len() {
            return f(Rx::Malformed);
        }
        let mut at = HEADROOM;
        for d in frame {
            let off = (d.addr - frame_of(d.addr)) as usize;
            let n = d.len as usize;
            let src = &self.frame_mut(d.addr)[off..(off + n).min(FRAME_SIZE as usize)];
            scratch[at..at + src.len()].copy_from_slice(src);
            at += src.len();
        }
        f(Rx::Frame {
            offload: Offload::PLAIN,
            buf: &mut *scratch,
            start: HEADROOM,
            len: at - HEADROOM,
        });
    }
}

/// The UMEM bytes of the frame `addr` lies in.
fn umem_frame(sock: &mut Socket, addr: u64) -> &mut [u8] {
    let base = frame_of(addr) as usize;
    assert!(
        base + FRAME_SIZE as usize <= sock.umem.len(),
        "a UMEM address out of range"
    );
    // SAFETY: the frame is within the mapping (checked above), which the (exclusive)
    // borrow of `sock` keeps alive. The address came from this UMEM's rx or completion ring or
    // from the pool, so the frame is this side's until it is pushed to a ring again:
    // the kernel does not touch it. Callers hold `&mut XskQueue`, so no two such
    // slices of one frame are alive at once.
    unsafe {
        std::slice::from_raw_parts_mut(sock.umem.ptr().as_ptr().add(base), FRAME_SIZE as usize)
    }
}

impl PortQueue for XskQueue {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(Offload, usize)>> {
        // A copying receive, for callers that want one frame in their own buffer.
        let mut got = None;
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.recv_batch(&mut scratch, 1, &mut |rx| {
            if let Rx::Frame {
                buf: b, start, len, ..
            } = rx
            {
                if let Some(dst) = buf.get_mut(..len) {
                    dst.copy_from_slice(&b[start..start + len]);
                    got = Some(len);
                }
            }
        });
        self.scratch = scratch;
        result?;
        Ok(got.map(|n| (Offload::PLAIN, n)))
    }

    fn send(&mut self, offload: &Offload, frame: &[u8]) -> io::Result<()> {
        if offload.is_gso() {
            // Cut into segments in the scratch buffer, then each into a UMEM frame.
            let mut out = std::mem::take(&mut self.scratch);
            let result = gso::segment(frame, offload, &mut out, 0)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                .and_then(|segments| {
                    for i in 0..segments.count() {
                        let range = segments.frame_range(i).expect("a segment in range");
                        self.push_frame(&out[range], None)?;
                    }
                    Ok(())
                });
            self.scratch = out;
            return result;
        }
        let csum = offload.needs_csum.then_some((
            usize::from(offload.csum_start),
            usize::from(offload.csum_offset),
        ));
        self.push_frame(frame, csum)
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn recv_batch(
        &mut self,
        scratch: &mut [u8],
        max: usize,
        f: &mut dyn FnMut(Rx<'_>),
    ) -> io::Result<bool> {
        let mut handed = 0;
        loop {
            if self.pending.is_empty()
                || self
                    .pending
                    .last()
                    .is_some_and(|d| d.options & libc::XDP_PKT_CONTD != 0)
            {
                let before = self.pending.len();
                self.pending.extend(self.sock.rx.consume(RX_BATCH));
                if self.pending.len() == before {
                    break;
                }
            }
            // The descriptors of whole frames: up to the last without CONTD.
            let Some(end) = self
                .pending
                .iter()
                .rposition(|d| d.options & libc::XDP_PKT_CONTD == 0)
            else {
                continue;
            };
            // Whole frames move to a reused buffer (no allocation per batch).
            let mut descs = std::mem::take(&mut self.whole);
            descs.clear();
            descs.extend(self.pending.drain(..=end));
            let mut i = 0;
            while i < descs.len() {
                let mut last = i;
                while descs[last].options & libc::XDP_PKT_CONTD != 0 {
                    last += 1;
                }
                self.hand_on(&descs[i..=last], scratch, f);
                for d in &descs[i..=last] {
                    self.refill(d.addr);
                }
                handed += 1;
                i = last + 1;
            }
            self.whole = descs;
            if handed >= max {
                break;
            }
        }
        if self.sock.fill.needs_wakeup() {
            self.sock.kick_rx();
        }
        Ok(handed >= max)
    }

    fn flush(&mut self) {
        if self.unkicked == 0 {
            return;
        }
        for _ in 0..FLUSH_KICKS {
            self.unkicked = 0;
            match self.sock.kick_tx() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    log::debug!("{} queue {}: tx kick: {e}", self.name, self.queue);
                    break;
                }
            }
        }
        self.reap();
    }
}
