//! The queue of a port, as a worker sees it.
//!
//! A port is a pod's interface or the host's `weft0`; each of its queues is owned by
//! exactly one worker, which polls the queue's file descriptor in its own epoll set.
//! A TAP queue is one such backend; an AF_XDP socket on a veth (its rings in a UMEM,
//! its fd woken by the kernel) is another that fits the same shape.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

pub use crate::core::Offload;
use crate::core::HEADROOM;

/// What [`PortQueue::recv_batch`] hands the switch for each frame.
#[derive(Debug)]
pub enum Rx<'a> {
    /// A frame at `buf[start..start + len]`, with at least [`HEADROOM`] free bytes
    /// before `start`, which the switch may overwrite (a tunnel header goes there).
    Frame {
        /// Its offload metadata.
        offload: Offload,
        /// The buffer it lies in: the caller's scratch buffer, or the port's own
        /// memory (an AF_XDP frame, processed where the kernel put it).
        buf: &'a mut [u8],
        /// Where it starts.
        start: usize,
        /// Its length.
        len: usize,
    },
    /// A frame the port could not read (a bad virtio-net header, say); dropped.
    Malformed,
}

/// One queue of a port.
pub trait PortQueue: Send + std::fmt::Debug {
    /// Takes one frame into `buf`, with its offload metadata; `Ok(None)` when the
    /// queue is empty.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(Offload, usize)>>;
    /// Queues one frame for the port. A full queue is `ErrorKind::WouldBlock`.
    fn send(&mut self, offload: &Offload, frame: &[u8]) -> io::Result<()>;
    /// The descriptor that becomes readable when frames wait.
    fn fd(&self) -> RawFd;

    /// Hands up to `max` waiting frames to `f`, one at a time; returns whether the
    /// queue may hold more. A frame is valid only during its call. The default reads
    /// each frame into `scratch` with [`recv`](PortQueue::recv); a port whose frames
    /// are in memory the switch can write (AF_XDP) lends them in place instead.
    /// An error other than for one frame means the queue is gone.
    fn recv_batch(
        &mut self,
        scratch: &mut [u8],
        max: usize,
        f: &mut dyn FnMut(Rx<'_>),
    ) -> io::Result<bool> {
        for _ in 0..max {
            match self.recv(&mut scratch[HEADROOM..]) {
                Ok(Some((offload, len))) => f(Rx::Frame {
                    offload,
                    buf: &mut *scratch,
                    start: HEADROOM,
                    len,
                }),
                Ok(None) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidData => f(Rx::Malformed),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Pushes out what [`send`](PortQueue::send) queued; the worker calls it at the end
    /// of every batch that sent to the queue. A port that writes each frame at once
    /// (TAP) has nothing to do.
    fn flush(&mut self) {}

    /// Whether the port's kernel takes UDP super-frames (`UDP_L4`, USO) written to
    /// it; only a TAP that accepted `TUN_F_USO4` does.
    fn takes_uso(&self) -> bool {
        false
    }
}

impl PortQueue for crate::io::tap::TapQueue {
    #[inline]
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(Offload, usize)>> {
        crate::io::tap::TapQueue::recv(self, buf)
    }

    #[inline]
    fn send(&mut self, offload: &Offload, frame: &[u8]) -> io::Result<()> {
        crate::io::tap::TapQueue::send(self, offload, frame)
    }

    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn takes_uso(&self) -> bool {
        crate::io::tap::TapQueue::takes_uso(self)
    }
}
