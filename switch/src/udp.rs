//! Batched UDP I/O for the tunnel sockets, on quinn-udp: `recvmmsg` with UDP GRO on
//! receive, and on send, runs of equal-sized datagrams to one peer gathered into a
//! single `sendmsg` with UDP GSO. quinn-udp falls back at run time to one datagram
//! per call where the kernel refuses GSO (EIO/EINVAL), and to plain receives where
//! it has no GRO.
//!
//! Datagrams arrive on the tunnel port (one `SO_REUSEPORT` socket per worker) and
//! leave from [`Lanes`]: sockets on ephemeral ports, one per flow-hash lane, shared
//! by the workers, so the outer source port follows the inner flow.
//!
//! This layer knows nothing of VXLAN or sleeve: it moves opaque datagrams.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;

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

/// The sockets tunnel datagrams leave from: one per lane, each on its own port.
pub struct Lanes {
    lanes: Box<[Lane]>,
}

struct Lane {
    socket: UdpSocket,
    state: UdpSocketState,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ports()).finish()
    }
}

impl Lanes {
    /// Binds `n` sockets to `ip` on ports the kernel picks from its ephemeral range,
    /// as the kernel's VXLAN picks source ports from it.
    ///
    /// Nothing is ever sent to these ports; their receive buffers are kept small.
    /// They keep the UDP checksum even for VXLAN, where RFC 7348 would allow zero:
    /// the kernel refuses UDP GSO on an `SO_NO_CHECK` socket (EINVAL), which would
    /// cost one send per datagram.
    pub fn bind(ip: Ipv4Addr, n: usize) -> io::Result<Lanes> {
        use socket2::{Domain, Protocol, Socket, Type};
        let lanes = (0..n.max(1))
            .map(|_| {
                let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
                s.set_nonblocking(true)?;
                s.set_send_buffer_size(4 << 20)?;
                s.set_recv_buffer_size(4096)?;
                s.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
                let socket: UdpSocket = s.into();
                let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
                Ok(Lane { socket, state })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Lanes {
            lanes: lanes.into_boxed_slice(),
        })
    }

    /// The source port of each lane.
    pub fn ports(&self) -> Vec<u16> {
        self.lanes
            .iter()
            .map(|l| l.socket.local_addr().map_or(0, |a| a.port()))
            .collect()
    }

    /// The lane `lane` stands for (any number: lanes repeat).
    #[inline]
    fn get(&self, lane: usize) -> &Lane {
        &self.lanes[lane % self.lanes.len()]
    }

    /// Sends `transmit` from `lane`; on failure, counts its datagrams into `failed`.
    fn send(&self, lane: usize, transmit: &Transmit<'_>, count: usize, failed: &mut u64) {
        let l = self.get(lane);
        if let Err(e) = l.state.try_send(UdpSockRef::from(&l.socket), transmit) {
            // A full socket buffer or a refused GSO send loses these datagrams; the
            // kernel reports GSO refusal once and quinn-udp sends singly from then on.
            log::debug!(
                "tunnel send of {count} datagrams to {}: {e}",
                transmit.destination
            );
            *failed += count as u64;
        }
    }
}

/// A run of equal-sized datagrams to one peer, sent with one GSO call.
struct TxBatch {
    buf: Box<[u8]>,
    dest: SocketAddrV4,
    lane: usize,
    segment: usize,
    len: usize,
    count: usize,
    /// The last datagram was shorter than `segment`: nothing may follow it.
    closed: bool,
}

/// One worker's tunnel I/O: its socket on the tunnel port, and the shared lanes.
pub struct Tunnel {
    socket: UdpSocket,
    state: UdpSocketState,
    lanes: Arc<Lanes>,
    tx: TxBatch,
    /// Datagrams lost to send errors since the worker last asked.
    failed: u64,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("local", &self.socket.local_addr().ok())
            .field("lanes", &self.lanes)
            .field("gro", &self.state.gro_segments())
            .finish()
    }
}

impl Tunnel {
    /// Wraps a bound, non-blocking socket on the tunnel port, turning on GRO where
    /// the kernel has it, and sends from `lanes`.
    pub fn new(socket: UdpSocket, lanes: Arc<Lanes>) -> io::Result<Tunnel> {
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        Ok(Tunnel {
            socket,
            state,
            lanes,
            tx: TxBatch {
                buf: vec![0u8; TX_BUF].into_boxed_slice(),
                dest: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                lane: 0,
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

    /// Queues one datagram for `dest` from `lane`. It leaves with the next
    /// [`Tunnel::flush`], or earlier when the run it joins is full or cannot take it.
    #[inline]
    pub fn push(&mut self, dest: SocketAddrV4, lane: usize, datagram: &[u8]) {
        let len = datagram.len();
        let t = &self.tx;
        let joins = t.count > 0
            && t.dest == dest
            && t.lane == lane
            && !t.closed
            && len <= t.segment
            && t.len + len <= t.buf.len()
            && t.count < self.lanes.get(lane).state.max_gso_segments();
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
            t.lane = lane;
            t.segment = len;
        }
        t.buf[t.len..t.len + len].copy_from_slice(datagram);
        t.len += len;
        t.count += 1;
        t.closed = len < t.segment;
    }

    /// Sends consecutive datagrams of `segment` bytes (the last may be shorter) to
    /// `dest` from `lane` straight from `run`, in as few GSO sends as the kernel allows.
    pub fn send_run(&mut self, dest: SocketAddrV4, lane: usize, run: &[u8], segment: usize) {
        self.flush();
        // One GSO send is one UDP datagram to the kernel: at most 64 KiB in all.
        let max = self
            .lanes
            .get(lane)
            .state
            .max_gso_segments()
            .min(TX_BUF / segment.max(1))
            .max(1);
        if max == 1 || segment == 0 {
            for d in run.chunks(segment.max(1)) {
                self.push(dest, lane, d);
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
            self.lanes.send(lane, &transmit, count, &mut self.failed);
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
        self.lanes
            .send(t.lane, &transmit, t.count, &mut self.failed);
        t.len = 0;
        t.count = 0;
        t.closed = false;
    }

    /// Datagrams lost to send errors since the last call.
    pub fn take_failed(&mut self) -> u64 {
        std::mem::take(&mut self.failed)
    }
}
