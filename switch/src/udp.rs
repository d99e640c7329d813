//! Batched UDP I/O for the tunnel sockets, on quinn-udp: `recvmmsg` with UDP GRO on
//! receive, and on send, runs of equal-sized datagrams to one peer gathered into a
//! single `sendmsg` with UDP GSO. quinn-udp falls back at run time to one datagram
//! per call where the kernel refuses GSO (EIO/EINVAL), and to plain receives where
//! it has no GRO.
//!
//! This layer knows nothing of VXLAN or sleeve: it moves opaque datagrams.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

/// Datagrams taken by one `recvmmsg`.
pub const RX_BATCH: usize = 16;
/// Room for one received (possibly GRO-coalesced) message.
pub const RX_BUF: usize = 65_536;
/// Largest UDP payload of one GSO send.
const TX_BUF: usize = 65_000;

/// Receive buffers and their metadata, allocated once per worker.
pub struct RxBatch {
    storage: Box<[u8]>,
    meta: [RecvMeta; RX_BATCH],
    filled: usize,
}

impl std::fmt::Debug for RxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBatch")
            .field("filled", &self.filled)
            .finish()
    }
}

impl Default for RxBatch {
    fn default() -> Self {
        RxBatch {
            storage: vec![0u8; RX_BATCH * RX_BUF].into_boxed_slice(),
            meta: [RecvMeta::default(); RX_BATCH],
            filled: 0,
        }
    }
}

impl RxBatch {
    /// Calls `f(from, buf, offset, len)` for every datagram received, GRO segments
    /// split at their stride. `buf` is the message's buffer, mutable in place.
    pub fn for_each(&mut self, mut f: impl FnMut(SocketAddr, &mut [u8], usize, usize)) {
        for (i, meta) in self.meta[..self.filled].iter().enumerate() {
            let buf = &mut self.storage[i * RX_BUF..(i + 1) * RX_BUF];
            if meta.len == 0 {
                // An empty datagram is still a datagram (and malformed): report it.
                f(meta.addr, buf, 0, 0);
                continue;
            }
            let stride = meta.stride.max(1);
            let mut off = 0;
            while off < meta.len {
                let len = stride.min(meta.len - off);
                f(meta.addr, buf, off, len);
                off += len;
            }
        }
        self.filled = 0;
    }
}

/// A run of equal-sized datagrams to one peer, sent with one GSO call.
struct TxBatch {
    buf: Box<[u8]>,
    dest: SocketAddrV4,
    segment: usize,
    len: usize,
    count: usize,
    /// The last datagram was shorter than `segment`: nothing may follow it.
    closed: bool,
}

/// One worker's tunnel socket.
pub struct Tunnel {
    socket: UdpSocket,
    state: UdpSocketState,
    tx: TxBatch,
    /// Datagrams lost to send errors since the worker last asked.
    failed: u64,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("local", &self.socket.local_addr().ok())
            .field("gso", &self.state.max_gso_segments())
            .field("gro", &self.state.gro_segments())
            .finish()
    }
}

impl Tunnel {
    /// Wraps a bound, non-blocking socket; turns on GRO where the kernel has it.
    pub fn new(socket: UdpSocket) -> io::Result<Tunnel> {
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        Ok(Tunnel {
            socket,
            state,
            tx: TxBatch {
                buf: vec![0u8; TX_BUF].into_boxed_slice(),
                dest: SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
                segment: 0,
                len: 0,
                count: 0,
                closed: false,
            },
            failed: 0,
        })
    }

    /// The socket, for polling.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Receives up to [`RX_BATCH`] messages. `Ok(0)` when none is waiting.
    pub fn recv(&self, rx: &mut RxBatch) -> io::Result<usize> {
        let mut chunks = rx.storage.chunks_mut(RX_BUF);
        let mut slices: [IoSliceMut<'_>; RX_BATCH] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().expect("RX_BATCH chunks")));
        match self
            .state
            .recv(UdpSockRef::from(&self.socket), &mut slices, &mut rx.meta)
        {
            Ok(n) => {
                rx.filled = n;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Queues one datagram for `dest`. It leaves with the next [`Tunnel::flush`], or
    /// earlier when the run it joins is full or cannot take it.
    #[inline]
    pub fn push(&mut self, dest: SocketAddrV4, datagram: &[u8]) {
        let len = datagram.len();
        let t = &self.tx;
        let joins = t.count > 0
            && t.dest == dest
            && !t.closed
            && len <= t.segment
            && t.len + len <= t.buf.len()
            && t.count < self.state.max_gso_segments();
        if !joins {
            self.flush();
        }
        if len > self.tx.buf.len() {
            self.failed += 1;
            return;
        }
        let t = &mut self.tx;
        if t.count == 0 {
            t.dest = dest;
            t.segment = len;
        }
        t.buf[t.len..t.len + len].copy_from_slice(datagram);
        t.len += len;
        t.count += 1;
        t.closed = len < t.segment;
    }

    /// Sends consecutive datagrams of `segment` bytes (the last may be shorter) to
    /// `dest` straight from `run`, in as few GSO sends as the kernel allows.
    pub fn send_run(&mut self, dest: SocketAddrV4, run: &[u8], segment: usize) {
        self.flush();
        // One GSO send is one UDP datagram to the kernel: at most 64 KiB in all.
        let max = self
            .state
            .max_gso_segments()
            .min(TX_BUF / segment.max(1))
            .max(1);
        if max == 1 || segment == 0 {
            for d in run.chunks(segment.max(1)) {
                self.push(dest, d);
            }
            return;
        }
        for part in run.chunks(segment * max) {
            let count = part.len().div_ceil(segment);
            let transmit = Transmit {
                destination: SocketAddr::V4(dest),
                ecn: None,
                contents: part,
                segment_size: (count > 1).then_some(segment),
                src_ip: None,
            };
            if let Err(e) = self
                .state
                .try_send(UdpSockRef::from(&self.socket), &transmit)
            {
                log::debug!("tunnel send of {count} segments to {dest}: {e}");
                self.failed += count as u64;
            }
        }
    }

    /// Sends what [`Tunnel::push`] gathered.
    pub fn flush(&mut self) {
        let t = &mut self.tx;
        if t.count == 0 {
            return;
        }
        let transmit = Transmit {
            destination: SocketAddr::V4(t.dest),
            ecn: None,
            contents: &t.buf[..t.len],
            segment_size: (t.count > 1).then_some(t.segment),
            src_ip: None,
        };
        if let Err(e) = self
            .state
            .try_send(UdpSockRef::from(&self.socket), &transmit)
        {
            // A full socket buffer or a refused GSO send loses this run; the kernel
            // reports GSO refusal once and quinn-udp sends singly from then on.
            log::debug!("tunnel send of {} datagrams to {}: {e}", t.count, t.dest);
            self.failed += t.count as u64;
        }
        t.len = 0;
        t.count = 0;
        t.closed = false;
    }

    /// Datagrams lost to send errors since the last call.
    pub fn take_failed(&mut self) -> u64 {
        std::mem::take(&mut self.failed)
    }
}
