//! Batched UDP I/O for the tunnel sockets.
//!
//! Receive is quinn-udp's: `recvmmsg` with UDP GRO where the kernel has it. Send is
//! this module's own, because quinn-udp hands the kernel one message per `sendmsg`:
//! a worker queues its datagrams as messages, each a run of equal-sized datagrams to
//! one peer (one UDP GSO send), and at the end of its batch hands every lane's
//! messages to the kernel with one `sendmmsg`. Where the kernel refuses GSO (EIO or
//! EINVAL; quinn-udp's probe finds most such kernels up front) the lane stops using it
//! and the refused run goes again as single datagrams, still batched by `sendmmsg`.
//!
//! Datagrams arrive on the tunnel port (one `SO_REUSEPORT` socket per worker) and
//! leave from [`Lanes`]: sockets on ephemeral ports, one per flow-hash lane, shared
//! by the workers, so the outer source port follows the inner flow.
//!
//! This layer knows nothing of VXLAN or sleeve: it moves opaque datagrams.

use std::io::{self, IoSliceMut};
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};

/// Datagrams taken by one `recvmmsg`.
pub const RX_BATCH: usize = 16;
/// Room for one received (possibly GRO-coalesced) message.
pub const RX_BUF: usize = 65_536;
/// Largest UDP payload of one GSO send.
const TX_BUF: usize = 65_000;
/// Messages a worker queues before it must send, and the most one `sendmmsg` takes.
pub const TX_MSGS: usize = 64;
/// Bytes of datagrams a worker queues before it must send.
const TX_QUEUE: usize = 256 * 1024;

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

/// One message to the kernel: `count` datagrams of `segment` bytes (the last may be
/// shorter) to `dest`, at `start..start + len` of the buffer it was queued in.
#[derive(Debug, Clone, Copy)]
struct TxMsg {
    dest: SocketAddrV4,
    lane: usize,
    start: usize,
    len: usize,
    segment: usize,
    count: usize,
}

impl TxMsg {
    const EMPTY: TxMsg = TxMsg {
        dest: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        lane: 0,
        start: 0,
        len: 0,
        segment: 0,
        count: 0,
    };

    /// The byte range of its datagram `i`.
    fn datagram(&self, i: usize) -> std::ops::Range<usize> {
        let at = self.start + i * self.segment;
        at..(at + self.segment).min(self.start + self.len)
    }
}

/// Opens `n` sockets bound to the tunnel port `addr` with `SO_REUSEPORT`, one per
/// worker: the kernel spreads arriving flows over them by their 4-tuple.
pub fn tunnel_sockets(addr: SocketAddrV4, n: usize) -> io::Result<Vec<UdpSocket>> {
    (0..n).map(|_| udp_socket(addr, true, 4 << 20)).collect()
}

/// A non-blocking UDP socket bound to `addr`, with a 4 MiB send buffer and a receive
/// buffer of `rcvbuf` bytes.
fn udp_socket(addr: SocketAddrV4, reuse_port: bool, rcvbuf: usize) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(reuse_port)?;
    s.set_nonblocking(true)?;
    s.set_recv_buffer_size(rcvbuf)?;
    s.set_send_buffer_size(4 << 20)?;
    s.bind(&SocketAddr::V4(addr).into())?;
    Ok(s.into())
}

/// The sockets tunnel datagrams leave from: one per lane, each on its own port.
pub struct Lanes {
    lanes: Box<[Lane]>,
}

struct Lane {
    socket: UdpSocket,
    /// Most datagrams one GSO send may carry, as quinn-udp's probe found (1: none).
    gso_max: usize,
    /// The kernel refused a GSO send on this socket: it sends single datagrams since.
    gso_refused: AtomicBool,
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
    /// cost a trip through the stack per datagram.
    pub fn bind(ip: Ipv4Addr, n: usize) -> io::Result<Lanes> {
        let lanes = (0..n.max(1))
            .map(|_| {
                let socket = udp_socket(SocketAddrV4::new(ip, 0), false, 4096)?;
                // quinn-udp sets the socket up as for its own sends (no fragmentation)
                // and probes whether the kernel takes UDP_SEGMENT.
                let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
                Ok(Lane {
                    socket,
                    gso_max: state.max_gso_segments().max(1),
                    gso_refused: AtomicBool::new(false),
                })
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

    /// The index of the socket lane `lane` stands for (any number: lanes repeat).
    #[inline]
    fn index(&self, lane: usize) -> usize {
        lane % self.lanes.len()
    }
}

impl Lane {
    /// Most datagrams one message may carry now.
    #[inline]
    fn max_segments(&self) -> usize {
        if self.gso_refused.load(Ordering::Relaxed) {
            1
        } else {
            self.gso_max
        }
    }

    /// Hands `msgs`, whose bytes are in `buf`, to the kernel in order, in as few
    /// `sendmmsg` calls as it takes, and tells `account` what became of each message.
    fn send(&self, buf: &[u8], msgs: &[TxMsg], account: &mut Account<'_>) {
        let mut lost = Losses::default();
        // The next datagram to send: message `m`, its datagram `d`.
        let (mut m, mut d) = (0, 0);
        while m < msgs.len() {
            let mut batch = MsgBatch::new();
            let (bm, bd) = batch.fill(buf, msgs, (m, d), self.max_segments() > 1);
            match batch.submit(&self.socket) {
                Ok(()) => (m, d) = (bm, bd),
                Err((k, e)) => match self.failed(&batch.origin[k], msgs, &e, &mut lost) {
                    Some(next) => (m, d) = next,
                    None => break,
                },
            }
        }
        for (i, msg) in msgs.iter().enumerate() {
            let (datagrams, bytes) = lost.of[i];
            account(
                msg.dest,
                Outcome {
                    sent: msg.count as u64 - datagrams,
                    sent_bytes: (msg.len as u64).saturating_sub(bytes),
                    lost: datagrams,
                },
            );
        }
    }

    /// Records in `lost` what a refused `sendmmsg` entry (`origin`) loses, and says
    /// where to go on from, or `None` when the rest is lost.
    fn failed(
        &self,
        origin: &Origin,
        msgs: &[TxMsg],
        e: &io::Error,
        lost: &mut Losses,
    ) -> Option<(usize, usize)> {
        let Origin {
            msg: km,
            first: kd,
            count: kcount,
            gso: kgso,
        } = *origin;
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::ENOBUFS) => {
                // The socket buffer is full: what is left is lost, as a full queue on
                // a wire would lose it.
                lost.from(msgs, km, kd);
                None
            }
            Some(libc::EIO | libc::EINVAL) if kgso => {
                if !self.gso_refused.swap(true, Ordering::Relaxed) {
                    log::info!(
                        "tunnel lane {:?}: the kernel refused a GSO send ({e}); \
                         sending single datagrams",
                        self.socket.local_addr().ok()
                    );
                }
                Some((km, 0))
            }
            _ => {
                log::debug!(
                    "tunnel send of {kcount} datagrams to {}: {e}",
                    msgs[km].dest
                );
                let msg = &msgs[km];
                if kgso {
                    lost.add(km, msg.count, msg.len);
                    Some((km + 1, 0))
                } else {
                    lost.add(km, 1, msg.datagram(kd).len());
                    Some(if kd + 1 == msg.count {
                        (km + 1, 0)
                    } else {
                        (km, kd + 1)
                    })
                }
            }
        }
    }
}

/// Datagrams and bytes lost, per message of one [`Lane::send`].
#[derive(Debug)]
struct Losses {
    of: [(u64, u64); TX_MSGS],
}

impl Default for Losses {
    fn default() -> Losses {
        Losses {
            of: [(0, 0); TX_MSGS],
        }
    }
}

impl Losses {
    fn add(&mut self, m: usize, datagrams: usize, bytes: usize) {
        self.of[m].0 += datagrams as u64;
        self.of[m].1 += bytes as u64;
    }

    /// Everything from message `m`'s datagram `d` on.
    fn from(&mut self, msgs: &[TxMsg], m: usize, d: usize) {
        let first = &msgs[m];
        let start = first.datagram(d).start;
        self.add(m, first.count - d, first.start + first.len - start);
        for (i, msg) in msgs.iter().enumerate().skip(m + 1) {
            self.add(i, msg.count, msg.len);
        }
    }
}

/// What became of the datagrams of one message to one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Datagrams the kernel took.
    pub sent: u64,
    /// Their bytes.
    pub sent_bytes: u64,
    /// Datagrams it refused, or that never reached it.
    pub lost: u64,
}

/// Hears what became of each message, with its destination.
pub type Account<'a> = dyn FnMut(SocketAddrV4, Outcome) + 'a;

/// Control-message room for one `UDP_SEGMENT` (a `u16`), aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct SegmentCmsg([u8; 24]);

const _: () = assert!(
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize
        <= mem::size_of::<SegmentCmsg>()
);

/// The datagrams one `sendmmsg` entry carries: message `msg`'s `count` datagrams
/// from its datagram `first` on, in one GSO send if `gso`.
#[derive(Debug, Clone, Copy, Default)]
struct Origin {
    msg: usize,
    first: usize,
    count: usize,
    gso: bool,
}

/// The arguments of one `sendmmsg`, on the stack: no allocation per send.
struct MsgBatch<'a> {
    len: usize,
    iov: [libc::iovec; TX_MSGS],
    addr: [libc::sockaddr_in; TX_MSGS],
    cmsg: [SegmentCmsg; TX_MSGS],
    /// Where entry `i` came from.
    origin: [Origin; TX_MSGS],
    _bytes: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> MsgBatch<'a> {
    fn new() -> Self {
        MsgBatch {
            len: 0,
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; TX_MSGS],
            // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
            addr: [unsafe { mem::zeroed() }; TX_MSGS],
            cmsg: [SegmentCmsg([0; 24]); TX_MSGS],
            origin: [Origin::default(); TX_MSGS],
            _bytes: std::marker::PhantomData,
        }
    }

    fn entry(&mut self, dest: SocketAddrV4, bytes: &'a [u8]) -> usize {
        let i = self.len;
        self.len += 1;
        self.iov[i] = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        let a = &mut self.addr[i];
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_port = dest.port().to_be();
        a.sin_addr.s_addr = u32::from_ne_bytes(dest.ip().octets());
        i
    }

    /// Adds entries from message `m`'s datagram `d` on, whole messages as GSO sends
    /// when `gso` (else single datagrams), until the batch or the messages end.
    /// Returns where the next batch starts.
    fn fill(
        &mut self,
        buf: &'a [u8],
        msgs: &[TxMsg],
        (mut m, mut d): (usize, usize),
        gso: bool,
    ) -> (usize, usize) {
        while m < msgs.len() && self.len < TX_MSGS {
            let msg = &msgs[m];
            if d == 0 && (gso || msg.count == 1) {
                self.push(msg.dest, &buf[msg.start..msg.start + msg.len], msg, m);
                m += 1;
            } else {
                // GSO is off: the message goes as its single datagrams.
                self.push_single(msg.dest, &buf[msg.datagram(d)], m, d);
                d += 1;
                if d == msg.count {
                    (m, d) = (m + 1, 0);
                }
            }
        }
        (m, d)
    }

    /// Adds message `msg` (number `m`) whole: one GSO send if it has several datagrams.
    fn push(&mut self, dest: SocketAddrV4, bytes: &'a [u8], msg: &TxMsg, m: usize) {
        let i = self.entry(dest, bytes);
        let gso = msg.count > 1;
        self.origin[i] = Origin {
            msg: m,
            first: 0,
            count: msg.count,
            gso,
        };
        if gso {
            // Segment sizes are bounded by TX_BUF, below u16::MAX.
            let segment = msg.segment as u16;
            self.cmsg[i].0[..mem::size_of::<libc::cmsghdr>()].fill(0);
            // SAFETY: the buffer is aligned for cmsghdr and CMSG_SPACE(2) long (checked
            // at compile time above); the header and data are written inside it.
            unsafe {
                let mut hdr: libc::msghdr = mem::zeroed();
                hdr.msg_control = self.cmsg[i].0.as_mut_ptr().cast();
                hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
                let c = libc::CMSG_FIRSTHDR(&hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
            }
        }
    }

    /// Adds datagram `d` of message `m` alone.
    fn push_single(&mut self, dest: SocketAddrV4, bytes: &'a [u8], m: usize, d: usize) {
        let i = self.entry(dest, bytes);
        self.origin[i] = Origin {
            msg: m,
            first: d,
            count: 1,
            gso: false,
        };
    }

    /// Sends every entry. On failure, the entries before the failed one `k` are sent
    /// and `Err((k, error))` says why `k` was not.
    fn submit(&mut self, socket: &UdpSocket) -> Result<(), (usize, io::Error)> {
        // SAFETY: mmsghdr is plain old data; all zeroes is a valid value.
        let mut hdrs: [libc::mmsghdr; TX_MSGS] = unsafe { mem::zeroed() };
        for (i, h) in hdrs[..self.len].iter_mut().enumerate() {
            let m = &mut h.msg_hdr;
            m.msg_name = (&raw mut self.addr[i]).cast();
            m.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            m.msg_iov = &raw mut self.iov[i];
            m.msg_iovlen = 1;
            if self.origin[i].gso {
                m.msg_control = self.cmsg[i].0.as_mut_ptr().cast();
                // SAFETY: pure arithmetic.
                m.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
            }
        }
        let mut sent = 0;
        while sent < self.len {
            // SAFETY: every header points at this batch's own iovec, address and
            // control buffers, and each iovec at bytes borrowed for 'a; all outlive
            // the call.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    hdrs[sent..].as_mut_ptr(),
                    (self.len - sent) as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err((sent, e));
            }
            sent += n as usize;
        }
        Ok(())
    }
}

/// The datagrams a worker queued since it last sent.
struct TxQueue {
    buf: Box<[u8]>,
    used: usize,
    msgs: [TxMsg; TX_MSGS],
    n: usize,
    /// The last message's last datagram was shorter than its segment: nothing may
    /// join it.
    closed: bool,
}

/// One worker's tunnel I/O: its socket on the tunnel port, and the shared lanes.
pub struct Tunnel {
    socket: UdpSocket,
    state: UdpSocketState,
    lanes: Arc<Lanes>,
    tx: TxQueue,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("local", &self.socket.local_addr().ok())
            .field("lanes", &self.lanes)
            .field("gro_segments", &self.state.gro_segments())
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
            tx: TxQueue {
                buf: vec![0u8; TX_QUEUE].into_boxed_slice(),
                used: 0,
                msgs: [TxMsg::EMPTY; TX_MSGS],
                n: 0,
                closed: false,
            },
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
    /// [`Tunnel::flush`], or earlier when the queue is full; `account` hears what
    /// became of whatever this call sends or refuses.
    #[inline]
    pub fn push(
        &mut self,
        dest: SocketAddrV4,
        lane: usize,
        datagram: &[u8],
        account: &mut Account<'_>,
    ) {
        let len = datagram.len();
        if len > TX_BUF {
            return account(
                dest,
                Outcome {
                    lost: 1,
                    ..Outcome::default()
                },
            );
        }
        let lane = self.lanes.index(lane);
        let max = self.lanes.lanes[lane].max_segments();
        let q = &self.tx;
        // An empty datagram cannot ride in a GSO send: it is a message of its own.
        let room = q.used + len <= q.buf.len();
        let joins = room && q.n > 0 && !q.closed && len > 0 && {
            let m = &q.msgs[q.n - 1];
            m.dest == dest
                && m.lane == lane
                && len <= m.segment
                && m.len + len <= TX_BUF
                && m.count < max
        };
        if !joins && (q.n == TX_MSGS || !room) {
            self.flush(account);
        }
        let q = &mut self.tx;
        q.buf[q.used..q.used + len].copy_from_slice(datagram);
        if joins {
            let m = &mut q.msgs[q.n - 1];
            m.len += len;
            m.count += 1;
            q.closed = len < m.segment;
        } else {
            q.msgs[q.n] = TxMsg {
                dest,
                lane,
                start: q.used,
                len,
                segment: len,
                count: 1,
            };
            q.n += 1;
            q.closed = false;
        }
        q.used += len;
    }

    /// Sends consecutive datagrams of `segment` bytes (the last may be shorter) to
    /// `dest` from `lane` straight from `run`, in as few GSO sends as the kernel allows,
    /// after what was queued before.
    pub fn send_run(
        &mut self,
        dest: SocketAddrV4,
        lane: usize,
        run: &[u8],
        segment: usize,
        account: &mut Account<'_>,
    ) {
        self.flush(account);
        if segment == 0 || run.is_empty() {
            return;
        }
        let lane = self.lanes.index(lane);
        let l = &self.lanes.lanes[lane];
        // One GSO send is one UDP datagram to the kernel: at most 64 KiB in all. Parts
        // are cut at the probed size even when GSO was refused since: the lane then
        // sends their datagrams singly.
        let per_msg = l.gso_max.min(TX_BUF / segment).max(1);
        let mut msgs = [TxMsg::EMPTY; TX_MSGS];
        let mut n = 0;
        for (i, part) in run.chunks(segment * per_msg).enumerate() {
            msgs[n] = TxMsg {
                dest,
                lane,
                start: i * segment * per_msg,
                len: part.len(),
                segment,
                count: part.len().div_ceil(segment),
            };
            n += 1;
            if n == TX_MSGS {
                l.send(run, &msgs[..n], account);
                n = 0;
            }
        }
        if n > 0 {
            l.send(run, &msgs[..n], account);
        }
    }

    /// Sends what [`Tunnel::push`] queued: one `sendmmsg` per lane it used, each
    /// lane's messages in the order they were queued. `account` hears what became of
    /// each message.
    pub fn flush(&mut self, account: &mut Account<'_>) {
        let q = &mut self.tx;
        const { assert!(TX_MSGS <= 64, "one bit per message") };
        let mut done = 0u64; // bit i: message i was sent
        for first in 0..q.n {
            if done & (1 << first) != 0 {
                continue;
            }
            let lane = q.msgs[first].lane;
            let mut group = [TxMsg::EMPTY; TX_MSGS];
            let mut g = 0;
            for (i, m) in q.msgs[first..q.n].iter().enumerate() {
                if m.lane == lane {
                    group[g] = *m;
                    g += 1;
                    done |= 1 << (first + i);
                }
            }
            self.lanes.lanes[lane].send(&q.buf, &group[..g], account);
        }
        q.n = 0;
        q.used = 0;
        q.closed = false;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::control::netlink::{in_new_netns, NetlinkError};

    const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

    /// Runs `f` in a namespace of its own, so test datagrams go nowhere else.
    fn sandbox(f: impl FnOnce() + Send) {
        in_new_netns(|| {
            f();
            Ok::<(), NetlinkError>(())
        })
        .expect("a private network namespace");
    }

    fn tunnel(lanes: usize) -> Tunnel {
        let lanes = Arc::new(Lanes::bind(LOCAL, lanes).expect("lanes"));
        let socket = UdpSocket::bind((LOCAL, 0)).expect("tunnel socket");
        socket.set_nonblocking(true).expect("nonblocking");
        Tunnel::new(socket, lanes).expect("tunnel")
    }

    /// Sets socket option `name` at level `SOL_SOCKET` to `value`.
    fn set_int(socket: &UdpSocket, name: libc::c_int, value: libc::c_int) {
        // SAFETY: a valid fd and a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                (&raw const value).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    }

    struct Receiver(UdpSocket);

    impl Receiver {
        fn new() -> Receiver {
            let s = UdpSocket::bind((LOCAL, 0)).expect("receiver");
            // Room for a whole test's datagrams before the test reads them (root may
            // go past rmem_max).
            set_int(&s, libc::SO_RCVBUFFORCE, 16 << 20);
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            Receiver(s)
        }

        fn addr(&self) -> SocketAddrV4 {
            match self.0.local_addr().expect("local addr") {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(_) => unreachable!("bound to IPv4"),
            }
        }

        /// Takes `n` datagrams, grouped by source port in arrival order.
        fn take(&self, n: usize) -> HashMap<u16, Vec<Vec<u8>>> {
            let mut by_port: HashMap<u16, Vec<Vec<u8>>> = HashMap::new();
            let mut buf = [0u8; 70_000];
            for _ in 0..n {
                let (len, from) = self.0.recv_from(&mut buf).expect("a datagram in time");
                by_port
                    .entry(from.port())
                    .or_default()
                    .push(buf[..len].to_vec());
            }
            self.0.set_nonblocking(true).expect("nonblocking");
            assert!(
                self.0.recv_from(&mut buf).is_err(),
                "no datagram beyond {n}"
            );
            self.0.set_nonblocking(false).expect("blocking");
            by_port
        }
    }

    /// What the sends of one test came to.
    #[derive(Debug, Default)]
    struct Tally {
        sent: u64,
        lost: u64,
        /// (sent, sent bytes, lost) by destination.
        by_dest: HashMap<SocketAddrV4, (u64, u64, u64)>,
    }

    impl Tally {
        fn account(&mut self) -> impl FnMut(SocketAddrV4, Outcome) + '_ {
            move |dest, o| {
                self.sent += o.sent;
                self.lost += o.lost;
                let e = self.by_dest.entry(dest).or_default();
                (e.0, e.1, e.2) = (e.0 + o.sent, e.1 + o.sent_bytes, e.2 + o.lost);
            }
        }
    }

    /// A datagram that says who it is: `len` bytes of its number.
    fn datagram(id: u8, len: usize) -> Vec<u8> {
        vec![id; len]
    }

    #[test]
    fn queued_datagrams_keep_their_order_per_lane_and_leave_from_its_port() {
        sandbox(|| {
            let mut t = tunnel(4);
            let mut tally = Tally::default();
            let ports = t.lanes.ports();
            let (a, b) = (Receiver::new(), Receiver::new());
            // Interleaved: runs of equal sizes, a short one closing a run, two lanes
            // to one receiver, two receivers on one lane.
            let plan: &[(&Receiver, usize, u8, usize)] = &[
                (&a, 0, 1, 300),
                (&a, 0, 2, 300),
                (&b, 0, 3, 300),
                (&a, 0, 4, 300),
                (&a, 0, 5, 100),
                (&a, 0, 6, 300),
                (&a, 1, 7, 50),
                (&b, 0, 8, 300),
                (&a, 5, 9, 300), // lane 5 is lane 1 again
                (&a, 0, 10, 300),
            ];
            for &(to, lane, id, len) in plan {
                t.push(to.addr(), lane, &datagram(id, len), &mut tally.account());
            }
            t.flush(&mut tally.account());
            assert_eq!(tally.lost, 0);
            for r in [&a, &b] {
                let mut expect: HashMap<u16, Vec<Vec<u8>>> = HashMap::new();
                for &(to, lane, id, len) in plan {
                    if std::ptr::eq(to, r) {
                        expect
                            .entry(ports[lane % ports.len()])
                            .or_default()
                            .push(datagram(id, len));
                    }
                }
                let n = expect.values().map(Vec::len).sum();
                assert_eq!(r.take(n), expect);
            }
        });
    }

    #[test]
    fn a_full_queue_sends_itself() {
        sandbox(|| {
            let mut t = tunnel(2);
            let mut tally = Tally::default();
            let (a, b) = (Receiver::new(), Receiver::new());
            // Alternating receivers make every datagram a message of its own: three
            // times what the queue holds.
            let n = 3 * TX_MSGS;
            for i in 0..n {
                let to = if i % 2 == 0 { &a } else { &b };
                t.push(
                    to.addr(),
                    0,
                    &datagram(i as u8, 200 + i),
                    &mut tally.account(),
                );
            }
            t.flush(&mut tally.account());
            assert_eq!(tally.lost, 0);
            for (k, r) in [&a, &b].into_iter().enumerate() {
                let got = r.take(n / 2);
                let expect: Vec<Vec<u8>> = (k..n)
                    .step_by(2)
                    .map(|i| datagram(i as u8, 200 + i))
                    .collect();
                assert_eq!(got.into_values().collect::<Vec<_>>(), vec![expect]);
            }
        });
    }

    #[test]
    fn a_long_run_of_pushes_fills_the_queue_and_sends_it() {
        sandbox(|| {
            let mut t = tunnel(1);
            let mut tally = Tally::default();
            let r = Receiver::new();
            // Equal datagrams to one peer join one message after another: more bytes
            // than the queue holds, in a size that does not divide it.
            let segment = 1499;
            let pushed = run(TX_QUEUE / segment * 2, segment, 5);
            for d in pushed.chunks(segment) {
                t.push(r.addr(), 0, d, &mut tally.account());
            }
            t.flush(&mut tally.account());
            assert_eq!(tally.lost, 0);
            assert_run_arrived(&r, &pushed, segment);
        });
    }

    /// A run of `count` segments of `segment` bytes and a shorter tail, each segment
    /// numbered.
    fn run(count: usize, segment: usize, tail: usize) -> Vec<u8> {
        let mut run: Vec<u8> = (0..count)
            .flat_map(|i| datagram(i as u8, segment))
            .collect();
        run.extend(datagram(count as u8, tail));
        run
    }

    fn assert_run_arrived(r: &Receiver, run: &[u8], segment: usize) {
        let got = r.take(run.len().div_ceil(segment));
        let expect: Vec<Vec<u8>> = run.chunks(segment).map(<[u8]>::to_vec).collect();
        assert_eq!(got.into_values().collect::<Vec<_>>(), vec![expect]);
    }

    #[test]
    fn a_run_larger_than_one_gso_send_arrives_whole_after_the_queue() {
        sandbox(|| {
            let mut t = tunnel(1);
            let mut tally = Tally::default();
            let r = Receiver::new();
            t.push(r.addr(), 0, &datagram(200, 1000), &mut tally.account());
            // 150 KB: three GSO sends at least.
            let segment = 1000;
            let run = run(150, segment, 10);
            t.send_run(r.addr(), 0, &run, segment, &mut tally.account());
            assert_eq!(tally.lost, 0);
            let mut all = datagram(200, 1000);
            all.extend_from_slice(&run);
            assert_run_arrived(&r, &all, segment);
        });
    }

    /// `SO_NO_CHECK`, not in the libc crate for Linux.
    const SO_NO_CHECK: libc::c_int = 11;

    #[test]
    fn a_refused_gso_send_goes_again_as_single_datagrams() {
        sandbox(|| {
            let mut t = tunnel(1);
            let mut tally = Tally::default();
            let lane = &t.lanes.lanes[0];
            if lane.gso_max == 1 {
                // This kernel has no UDP GSO at all: nothing can be refused.
                return;
            }
            // The kernel refuses GSO on a socket that sends no UDP checksum (EINVAL).
            set_int(&lane.socket, SO_NO_CHECK, 1);
            let r = Receiver::new();
            let segment = 700;
            let queued = run(20, segment, 33);
            for d in queued.chunks(segment) {
                t.push(r.addr(), 0, d, &mut tally.account());
            }
            t.flush(&mut tally.account());
            assert!(t.lanes.lanes[0].gso_refused.load(Ordering::Relaxed));
            assert_run_arrived(&r, &queued, segment);
            // From now on the lane queues single datagrams, and runs go singly too.
            let big = run(200, segment, 1);
            t.send_run(r.addr(), 0, &big, segment, &mut tally.account());
            assert_eq!(tally.lost, 0);
            assert_run_arrived(&r, &big, segment);
        });
    }

    #[test]
    fn an_unsendable_datagram_is_counted_and_the_rest_still_go() {
        sandbox(|| {
            let mut t = tunnel(1);
            let mut tally = Tally::default();
            let r = Receiver::new();
            // No route leads anywhere from this namespace but to itself.
            let nowhere = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 4789);
            t.push(r.addr(), 0, &datagram(1, 100), &mut tally.account());
            t.push(nowhere, 0, &datagram(2, 100), &mut tally.account());
            t.push(nowhere, 0, &datagram(3, 100), &mut tally.account());
            t.push(r.addr(), 0, &datagram(4, 100), &mut tally.account());
            t.push(r.addr(), 0, &[], &mut tally.account());
            t.flush(&mut tally.account());
            assert_eq!(tally.lost, 2);
            // Each destination hears its own outcome, bytes included.
            assert_eq!(tally.by_dest[&nowhere], (0, 0, 2));
            assert_eq!(tally.by_dest[&r.addr()], (3, 200, 0));
            let got: Vec<Vec<u8>> = r.take(3).into_values().flatten().collect();
            assert_eq!(got, vec![datagram(1, 100), datagram(4, 100), vec![]]);
        });
    }
}
