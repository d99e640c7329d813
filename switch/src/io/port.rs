//! The queue of a port, as a worker sees it.
//!
//! A port is a pod's interface or the host's `weft0`; each of its queues is owned by
//! exactly one worker, which polls the queue's file descriptor in its own epoll set.
//! A TAP queue is one such backend; an AF_XDP socket on a veth (its rings in a UMEM,
//! its fd woken by the kernel) is another that fits the same shape.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

pub use crate::core::Offload;

/// One queue of a port.
pub trait PortQueue: Send + std::fmt::Debug {
    /// Takes one frame into `buf`, with its offload metadata; `Ok(None)` when the
    /// queue is empty.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(Offload, usize)>>;
    /// Queues one frame for the port. A full queue is `ErrorKind::WouldBlock`.
    fn send(&mut self, offload: &Offload, frame: &[u8]) -> io::Result<()>;
    /// The descriptor that becomes readable when frames wait.
    fn fd(&self) -> RawFd;
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
}
