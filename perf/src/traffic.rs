//! Traffic between namespaces from this process: sockets are created on threads that
//! entered a pod's namespace, then used from anywhere. Every call is bounded in time.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::netns::{readable, Netns};
use crate::weft::in_netns;

/// A reproducible byte stream: xorshift64* words, so a receiver can check every byte
/// without holding a copy.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed | 1,
            word: [0; 8],
            used: 8,
        }
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// What a transfer saw.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// The client's address as the server saw it.
    pub peer: SocketAddr,
    /// Bytes received and verified.
    pub bytes: u64,
    /// Time from connect to the last byte.
    pub elapsed: Duration,
}

impl Transfer {
    /// Throughput in Gbit/s.
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// How much a TCP transfer sends.
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    /// Exactly this many bytes.
    Bytes(u64),
    /// As much as fits in this time.
    For(Duration),
}

/// Sends `bytes` bytes of [`Pattern`] over TCP from `client` to `server_ip` inside
/// `server`, verifying every byte at the receiver. Fails if the stream stalls for
/// `stall` or differs from the pattern.
pub fn tcp_transfer(
    server: &Netns,
    server_ip: impl Into<IpAddr>,
    client: &Netns,
    bytes: u64,
    stall: Duration,
) -> Result<Transfer> {
    tcp_send(
        server,
        server_ip.into(),
        client,
        Amount::Bytes(bytes),
        stall,
    )
}

/// A TCP connection from a socket in `client` to `server_ip`, an address of `server`:
/// the client's end, the server's end and the server's address. Both ends block, with
/// `stall` as their read and write timeouts.
fn connected_pair(
    client: &Netns,
    server: &Netns,
    server_ip: IpAddr,
    stall: Duration,
) -> Result<(TcpStream, TcpStream, SocketAddr)> {
    let listener = in_netns(server, || TcpListener::bind((server_ip, 0)))?
        .with_context(|| format!("binding a TCP listener on {server_ip} in {}", server.name()))?;
    let addr = listener.local_addr()?;
    let conn = in_netns(client, || {
        TcpStream::connect_timeout(&addr, stall.min(Duration::from_secs(10)))
    })?
    .with_context(|| format!("connecting from {} to {addr}", client.name()))?;
    // The handshake is done: the connection waits in the backlog, bounded anyway.
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + stall;
    let accepted = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("no connection to {addr} within {stall:?}");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e).with_context(|| format!("accepting on {addr}")),
        }
    };
    accepted.set_nonblocking(false)?;
    for s in [&conn, &accepted] {
        s.set_read_timeout(Some(stall))?;
        s.set_write_timeout(Some(stall))?;
    }
    Ok((conn, accepted, addr))
}

/// Like [`tcp_transfer`], for a byte count or a duration.
pub fn tcp_send(
    server: &Netns,
    server_ip: IpAddr,
    client: &Netns,
    amount: Amount,
    stall: Duration,
) -> Result<Transfer> {
    let start = Instant::now();
    let (mut client_conn, mut conn, addr) = connected_pair(client, server, server_ip, stall)?;
    let peer = conn.peer_addr()?;
    let seed = 0x5eed ^ u64::from(addr.port());
    let receiver = std::thread::spawn(move || -> Result<(SocketAddr, u64)> {
        let mut expect = Pattern::new(seed);
        let mut buf = vec![0u8; 256 * 1024];
        let mut want = vec![0u8; buf.len()];
        let mut got = 0u64;
        loop {
            let n = conn
                .read(&mut buf)
                .with_context(|| format!("reading from {peer} after {got} bytes"))?;
            if n == 0 {
                break;
            }
            expect.fill(&mut want[..n]);
            if buf[..n] != want[..n] {
                let at = buf[..n]
                    .iter()
                    .zip(&want[..n])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                bail!(
                    "byte {} of the stream from {peer} differs from what was sent",
                    got + at as u64
                );
            }
            got += n as u64;
        }
        Ok((peer, got))
    });
    let sent = (|| -> Result<u64> {
        let conn = &mut client_conn;
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; 256 * 1024];
        let (mut left, until) = match amount {
            Amount::Bytes(b) => (b, None),
            Amount::For(d) => (u64::MAX, Some(Instant::now() + d)),
        };
        let mut sent = 0u64;
        while left > 0 && until.is_none_or(|t| Instant::now() < t) {
            let n = left.min(buf.len() as u64) as usize;
            pattern.fill(&mut buf[..n]);
            conn.write_all(&buf[..n])
                .with_context(|| format!("sending to {addr} after {sent} bytes"))?;
            left -= n as u64;
            sent += n as u64;
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        Ok(sent)
    })();
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    let bytes = sent?;
    let (peer, got) = received?;
    if got != bytes {
        bail!("sent {bytes} bytes to {addr}, {got} arrived");
    }
    Ok(Transfer {
        peer,
        bytes: got,
        elapsed: start.elapsed(),
    })
}

/// One TCP stream of a throughput test: from a socket in `client` to `server_ip`, an
/// address of `server`.
#[derive(Debug, Clone, Copy)]
pub struct Flow<'a> {
    /// The sending namespace.
    pub client: &'a Netns,
    /// The receiving namespace.
    pub server: &'a Netns,
    /// The address the receiver listens on (IPv4 or IPv6).
    pub server_ip: IpAddr,
}

/// What a throughput test carried.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Bytes received, all streams together.
    pub bytes: u64,
    /// From the moment every stream was connected and started sending to the last
    /// stream's end of file at its receiver.
    pub elapsed: Duration,
}

impl Throughput {
    /// Throughput in Gbit/s.
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

/// Size of the buffer each bulk sender writes and each bulk receiver reads with.
const BULK_BUF: usize = 128 * 1024;

/// Runs every flow at once for `duration`, each sending as fast as it can, and returns
/// what arrived. Senders write the same buffer again and again and receivers only count
/// bytes, so the generator costs little CPU and the network is what is measured (byte
/// integrity is [`tcp_send`]'s job). Fails if a stream stalls for `stall`; ends early,
/// with what was carried so far, once [`crate::stop`] is requested.
pub fn tcp_streams(flows: &[Flow<'_>], duration: Duration, stall: Duration) -> Result<Throughput> {
    ensure!(
        !flows.is_empty(),
        "a throughput test needs at least one flow"
    );
    let pairs = flows
        .iter()
        .map(|f| connected_pair(f.client, f.server, f.server_ip, stall))
        .collect::<Result<Vec<_>>>()?;
    let barrier = std::sync::Barrier::new(pairs.len() * 2 + 1);
    std::thread::scope(|s| {
        let mut receivers = Vec::new();
        let mut senders = Vec::new();
        for (mut client, mut server, addr) in pairs {
            let barrier = &barrier;
            receivers.push(s.spawn(move || -> Result<(u64, Instant)> {
                let mut buf = vec![0u8; BULK_BUF];
                let mut got = 0u64;
                barrier.wait();
                loop {
                    let n = server
                        .read(&mut buf)
                        .with_context(|| format!("receiving on {addr} after {got} bytes"))?;
                    if n == 0 {
                        return Ok((got, Instant::now()));
                    }
                    got += n as u64;
                }
            }));
            senders.push(s.spawn(move || -> Result<()> {
                let mut buf = vec![0u8; BULK_BUF];
                Pattern::new(u64::from(addr.port())).fill(&mut buf);
                barrier.wait();
                let until = Instant::now() + duration;
                while Instant::now() < until && !crate::stop::requested() {
                    client
                        .write_all(&buf)
                        .with_context(|| format!("sending to {addr}"))?;
                }
                client.shutdown(std::net::Shutdown::Write)?;
                Ok(())
            }));
        }
        barrier.wait();
        let start = Instant::now();
        let mut sent = Ok(());
        for t in senders {
            let r = t.join().map_err(|_| anyhow::anyhow!("a sender panicked"))?;
            if sent.is_ok() {
                sent = r;
            }
        }
        let mut bytes = 0;
        let mut end = start;
        for t in receivers {
            let (got, at) = t
                .join()
                .map_err(|_| anyhow::anyhow!("a receiver panicked"))??;
            bytes += got;
            end = end.max(at);
        }
        sent?;
        Ok(Throughput {
            bytes,
            elapsed: end - start,
        })
    })
}

/// What a UDP load test saw.
#[derive(Debug, Clone, Copy)]
pub struct UdpLoad {
    /// Datagrams the sender's socket accepted.
    pub sent: u64,
    /// Datagrams of the expected size that arrived.
    pub received: u64,
    /// How long the sender sent.
    pub elapsed: Duration,
}

impl UdpLoad {
    /// Datagrams received per second of sending.
    pub fn received_pps(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The share of sent datagrams that did not arrive, in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.sent.saturating_sub(self.received) as f64 * 100.0 / self.sent as f64
    }
}

/// How long a UDP receiver keeps reading after the sender stopped, at most.
const UDP_DRAIN: Duration = Duration::from_millis(500);

/// Datagrams the UDP receiver takes per `recvmmsg`.
const UDP_RECV_BATCH: usize = 64;

/// The UDP receiver's socket buffer: 4 MiB, so that a scheduling hiccup of the
/// receiver on a busy machine is not counted as the datapath's loss.
const UDP_RCVBUF: usize = 4 << 20;

/// Sets `sock`'s receive buffer to `bytes`, above `net.core.rmem_max` (needs
/// CAP_NET_ADMIN, which the harness has as root).
fn set_rcvbuf(sock: &std::net::UdpSocket, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let v = bytes as libc::c_int;
    // SAFETY: a valid socket and an int-sized option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Counts the `payload`-byte datagrams `rx` (bound to `addr`) receives until, after `done` is set,
/// it has been quiet for 100 ms or [`UDP_DRAIN`] has passed.
fn count_received(
    rx: &std::net::UdpSocket,
    addr: std::net::SocketAddr,
    payload: usize,
    done: &std::sync::atomic::AtomicBool,
) -> Result<u64> {
    let mut batch = RecvBatch::new(UDP_RECV_BATCH, 2048);
    let mut got = 0u64;
    let mut last = Instant::now();
    let mut done_at: Option<Instant> = None;
    loop {
        match batch.recv(rx) {
            Ok(lens) => {
                got += lens.iter().filter(|&&n| n == payload).count() as u64;
                last = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).with_context(|| format!("receiving on {addr}")),
        }
        if done.load(std::sync::atomic::Ordering::Acquire) {
            let at = *done_at.get_or_insert_with(Instant::now);
            let quiet = last.elapsed() > Duration::from_millis(100);
            if quiet || at.elapsed() > UDP_DRAIN {
                return Ok(got);
            }
        }
    }
}

/// Buffers for receiving up to `n` datagrams with one `recvmmsg`, built once.
struct RecvBatch {
    /// The datagrams' buffers; never resized, so `iovs` stay valid.
    bufs: Vec<Vec<u8>>,
    /// One per buffer; never resized, so `msgs` stay valid.
    _iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    lens: Vec<usize>,
}

impl RecvBatch {
    fn new(n: usize, size: usize) -> RecvBatch {
        let mut bufs = vec![vec![0u8; size]; n];
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let msgs = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: all-zero is a valid mmsghdr (no address, no control data).
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        RecvBatch {
            bufs,
            _iovs: iovs,
            msgs,
            lens: Vec::with_capacity(n),
        }
    }

    /// Waits for one datagram (up to the socket's read timeout), then takes what
    /// else is queued, up to the batch size; returns their lengths.
    fn recv(&mut self, sock: &std::net::UdpSocket) -> std::io::Result<&[usize]> {
        use std::os::fd::AsRawFd;
        // SAFETY: `msgs` point at `_iovs`, which point at `bufs`: heap buffers this
        // value owns and never resizes, alive for the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                self.msgs.len() as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.lens.clear();
        let got = &self.msgs[..n as usize];
        self.lens.extend(got.iter().map(|m| m.msg_len as usize));
        Ok(&self.lens)
    }

    /// Datagram `i` of the last [`RecvBatch::recv`].
    fn datagram(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.lens[i].min(self.bufs[i].len())]
    }
}

/// Sends `bursts` bursts of `burst` UDP datagrams from `client` to `server_ip` in
/// `server`, the datagrams of a burst all of one size (taken in turn from `sizes`,
/// each at least 8) and sent back to back, each burst received whole before the next
/// goes. Every datagram carries its number and then a [`Pattern`] of its own; the
/// receiver checks each one's length, bytes and place in the order. Returns how many
/// were received; fails on a datagram that differs or comes out of order, or a burst
/// not whole within `stall`.
pub fn udp_verified(
    client: &Netns,
    server: &Netns,
    server_ip: impl Into<IpAddr>,
    sizes: &[usize],
    (burst, bursts): (usize, usize),
    stall: Duration,
) -> Result<u64> {
    if sizes.iter().any(|&n| !(8..=65_507).contains(&n)) || sizes.is_empty() {
        bail!("UDP sizes must be 8 to 65507 bytes: {sizes:?}");
    }
    let (rx, addr, tx) = udp_pair(client, server, server_ip.into())?;
    let datagram = |seq: u64, len: usize| {
        let mut d = vec![0u8; len];
        d[..8].copy_from_slice(&seq.to_le_bytes());
        Pattern::new(seq).fill(&mut d[8..]);
        d
    };
    let mut batch = RecvBatch::new(UDP_RECV_BATCH, 65_536);
    let (mut sent, mut received) = (0u64, 0u64);
    for b in 0..bursts {
        let len = sizes[b % sizes.len()];
        for _ in 0..burst {
            tx.send(&datagram(sent, len))
                .with_context(|| format!("sending to {addr}"))?;
            sent += 1;
        }
        let since = Instant::now();
        while received < sent {
            if since.elapsed() > stall {
                bail!("UDP to {addr}: {received} of {sent} datagrams arrived within {stall:?}");
            }
            let n = match batch.recv(&rx) {
                Ok(lens) => lens.len(),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e).with_context(|| format!("receiving on {addr}")),
            };
            for i in 0..n {
                let got = batch.datagram(i);
                if got != datagram(received, len).as_slice() {
                    let seq = got
                        .get(..8)
                        .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
                    bail!(
                        "UDP to {addr}: datagram {received} ({len} bytes) came as {} bytes \
                         numbered {seq:?}",
                        got.len()
                    );
                }
                received += 1;
            }
        }
    }
    Ok(received)
}

/// A UDP receiver on `server_ip` in `server` (its address, a 20 ms read timeout, a
/// [`UDP_RCVBUF`] buffer) and a sender in `client` connected to it, bound to the
/// unspecified address of the same family.
fn udp_pair(
    client: &Netns,
    server: &Netns,
    server_ip: IpAddr,
) -> Result<(std::net::UdpSocket, SocketAddr, std::net::UdpSocket)> {
    use std::net::{Ipv6Addr, UdpSocket};
    let rx = in_netns(server, || UdpSocket::bind((server_ip, 0)))?
        .with_context(|| format!("binding UDP on {server_ip} in {}", server.name()))?;
    let addr = rx.local_addr()?;
    let any: IpAddr = match server_ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let tx = in_netns(client, || UdpSocket::bind((any, 0)))?
        .with_context(|| format!("binding UDP in {}", client.name()))?;
    tx.connect(addr)?;
    rx.set_read_timeout(Some(Duration::from_millis(20)))?;
    set_rcvbuf(&rx, UDP_RCVBUF).with_context(|| format!("SO_RCVBUFFORCE on {addr}"))?;
    Ok((rx, addr, tx))
}

/// Sends `payload`-byte UDP datagrams from `client` to `server_ip` in `server` as fast
/// as the sender's socket takes them, for `duration` or `max_packets` datagrams,
/// whichever ends first, and counts what arrives. A datagram the sending socket
/// refuses (`ENOBUFS`) is not counted as sent.
pub fn udp_blast(
    client: &Netns,
    server: &Netns,
    server_ip: impl Into<IpAddr>,
    payload: usize,
    duration: Duration,
    max_packets: u64,
) -> Result<UdpLoad> {
    use std::sync::atomic::{AtomicBool, Ordering};

    let (rx, addr, tx) = udp_pair(client, server, server_ip.into())?;
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let receiver = s.spawn(|| count_received(&rx, addr, payload, &done));
        let buf = vec![0x5au8; payload];
        let start = Instant::now();
        let until = start + duration;
        let mut sent = 0u64;
        let mut result = Ok(());
        'send: while sent < max_packets {
            for _ in 0..64 {
                match tx.send(&buf) {
                    Ok(_) => sent += 1,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        result = Err(anyhow::Error::new(e).context(format!("sending to {addr}")));
                        break 'send;
                    }
                }
            }
            if Instant::now() >= until || crate::stop::requested() {
                break;
            }
        }
        let elapsed = start.elapsed();
        done.store(true, Ordering::Release);
        let received = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("the UDP receiver panicked"))??;
        result?;
        Ok(UdpLoad {
            sent,
            received,
            elapsed,
        })
    })
}

/// Largest round trip a latency histogram records, in nanoseconds (60 s).
pub const MAX_RTT_NS: u64 = 60_000_000_000;

/// Round trips done before recording starts (connection and cache warm-up).
const RR_WARMUP: u32 = 100;

/// Ping-pongs one byte over TCP (`TCP_NODELAY` on both ends) between `client` and
/// `server_ip` in `server` for `duration` or `max_round_trips`, whichever ends first,
/// and returns the round-trip times in nanoseconds. Fails if a round trip takes `stall`.
pub fn tcp_rr(
    client: &Netns,
    server: &Netns,
    server_ip: impl Into<IpAddr>,
    duration: Duration,
    max_round_trips: u64,
    stall: Duration,
) -> Result<hdrhistogram::Histogram<u64>> {
    let (mut conn, echo, addr) = connected_pair(client, server, server_ip.into(), stall)?;
    conn.set_nodelay(true)?;
    let mut hist = latency_histogram()?;
    std::thread::scope(|s| {
        let server = s.spawn(move || serve_echo(echo, stall));
        let client = (|| -> Result<()> {
            for _ in 0..RR_WARMUP {
                round_trip(&mut conn, addr)?;
            }
            let until = Instant::now() + duration;
            let mut n = 0u64;
            while n < max_round_trips && Instant::now() < until && !crate::stop::requested() {
                record(&mut hist, round_trip(&mut conn, addr)?);
                n += 1;
            }
            conn.shutdown(std::net::Shutdown::Write)?;
            Ok(())
        })();
        let served = server
            .join()
            .map_err(|_| anyhow::anyhow!("the echo server panicked"))?;
        client?;
        served
    })?;
    Ok(hist)
}

/// One 1-byte round trip on `conn` (connected to `addr`), echoed by the other end.
fn round_trip(conn: &mut TcpStream, addr: SocketAddr) -> Result<Duration> {
    let t = Instant::now();
    conn.write_all(&[RR_BYTE])
        .with_context(|| format!("sending a round trip's byte to {addr}"))?;
    let mut b = [0u8; 1];
    conn.read_exact(&mut b)
        .with_context(|| format!("waiting for the echo from {addr}"))?;
    Ok(t.elapsed())
}

/// Records `d` in the nanosecond histogram `hist`.
fn record(hist: &mut hdrhistogram::Histogram<u64>, d: Duration) {
    hist.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
}

/// A nanosecond histogram for round-trip and connection times.
fn latency_histogram() -> Result<hdrhistogram::Histogram<u64>> {
    hdrhistogram::Histogram::<u64>::new_with_bounds(1, MAX_RTT_NS, 3)
        .context("creating a latency histogram")
}

/// The byte a round trip sends: an echo server answers it and waits for the next.
const RR_BYTE: u8 = 0x42;

/// The byte a connection-rate client sends: an echo server answers it and closes, so
/// the server's end, not the client's, waits in TIME_WAIT and the client's ports are
/// free again at once.
const CLOSE_BYTE: u8 = 0x43;

/// Serves one accepted connection: echoes each byte until the client's end of file,
/// or closes after echoing [`CLOSE_BYTE`]. Fails if the client is silent for `stall`.
/// ([`EchoServers`] speaks the same, asynchronously.)
fn serve_echo(mut c: TcpStream, stall: Duration) -> Result<()> {
    c.set_read_timeout(Some(stall))?;
    c.set_nodelay(true)?;
    let mut b = [0u8; 1];
    loop {
        if c.read(&mut b).context("reading a client's byte")? == 0 {
            return Ok(());
        }
        c.write_all(&b).context("echoing a byte")?;
        if b[0] == CLOSE_BYTE {
            return Ok(());
        }
    }
}

/// One connection of a connection-rate test, from this thread's namespace: connect to
/// `addr`, one byte each way, then the server's close. Fails if a step takes `stall`.
pub fn crr_once(addr: SocketAddr, stall: Duration) -> Result<()> {
    let mut c = TcpStream::connect_timeout(&addr, stall)
        .with_context(|| format!("connecting to {addr}"))?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(stall))?;
    c.write_all(&[CLOSE_BYTE])?;
    let mut b = [0u8; 1];
    c.read_exact(&mut b)
        .with_context(|| format!("the answer from {addr}"))?;
    let eof = c.read(&mut b)?;
    ensure!(eof == 0, "{addr} sent more than one byte back");
    Ok(())
}

/// The connection rate of `tcp_crr`: connections done, and each one's time from
/// `connect` to the server's close.
#[derive(Debug)]
pub struct ConnectionRate {
    /// Connections opened, used and closed.
    pub connections: u64,
    /// How long they took, all together.
    pub elapsed: Duration,
    /// Each connection's time, in nanoseconds.
    pub times: hdrhistogram::Histogram<u64>,
    /// Connections that failed or did not finish in time, where a test counts them
    /// instead of failing ([`tcp_crr_spread`]).
    pub failed: u64,
}

impl ConnectionRate {
    /// Connections per second.
    pub fn per_second(&self) -> f64 {
        self.connections as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Opens TCP connections from `client` to `server_ip` in `server` one after another,
/// each carrying one byte each way before the server closes it (netperf's TCP_CRR),
/// for `duration` or `max_connections`, whichever ends first. New per-connection
/// state on the path shows here, where one long flow hides it. The server closes
/// first, so the client's ports never wait in TIME_WAIT. Fails if a connection
/// takes `stall`.
pub fn tcp_crr(
    client: &Netns,
    server: &Netns,
    server_ip: impl Into<IpAddr>,
    duration: Duration,
    max_connections: u64,
    stall: Duration,
) -> Result<ConnectionRate> {
    let server_ip: IpAddr = server_ip.into();
    let listener = in_netns(server, || TcpListener::bind((server_ip, 0)))?
        .with_context(|| format!("binding a TCP listener on {server_ip} in {}", server.name()))?;
    let addr = listener.local_addr()?;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // The server sleeps until a connection comes (in poll, to look at `done` now
        // and then), so it burns no CPU the client could use.
        let served = s.spawn(|| -> Result<()> {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let ready = readable(listener.as_fd(), Duration::from_millis(100))
                    .context("polling the listener")?;
                if !ready {
                    continue;
                }
                let (c, _) = listener
                    .accept()
                    .with_context(|| format!("accepting on {addr}"))?;
                serve_echo(c, stall)?;
            }
            Ok(())
        });
        let ran = in_netns(client, || -> Result<ConnectionRate> {
            let mut times = latency_histogram()?;
            let start = Instant::now();
            let until = start + duration;
            let mut connections = 0u64;
            while connections < max_connections
                && Instant::now() < until
                && !crate::stop::requested()
            {
                let t = Instant::now();
                crr_once(addr, stall).with_context(|| format!("connection {connections}"))?;
                record(&mut times, t.elapsed());
                connections += 1;
            }
            Ok(ConnectionRate {
                connections,
                elapsed: start.elapsed(),
                times,
                failed: 0,
            })
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let served = served
            .join()
            .map_err(|_| anyhow::anyhow!("the connection server panicked"))?;
        let rate = ran??;
        served?;
        Ok(rate)
    })
}

/// The hidden `weft-perf` subcommand that runs one pod's [`EchoServers`]
/// ([`serve_echo_stdio`]).
pub const ECHO_SUBCOMMAND: &str = "echo-servers";

/// How long a stopped echo server may take to exit.
const ECHO_EXIT: Duration = Duration::from_secs(10);

/// Echo servers ([`serve_echo`]'s protocol) on many ports of pods: per pod, a child
/// `weft-perf` ([`ECHO_SUBCOMMAND`]) started in its namespace runs every listener and
/// connection on a single-threaded tokio runtime, so that 10,000 ports cost 10,000
/// sockets, not threads, and each pod's sockets count against a process of its own's
/// open-file limit. [`EchoServers::stop`] ends them (by closing their standard input)
/// and says whether a listener failed; dropping them kills them.
#[derive(Debug)]
pub struct EchoServers {
    children: Vec<crate::netns::ChildGuard>,
}

impl EchoServers {
    /// Starts `weft_perf` (this program) as the echo servers on every port of `ports`
    /// of each (namespace, address) of `pods`, and waits until every one listens; a
    /// connection silent for `stall` is closed.
    pub fn start(
        weft_perf: &std::path::Path,
        pods: &[(&Netns, Ipv4Addr)],
        ports: &[u16],
        stall: Duration,
    ) -> Result<EchoServers> {
        use std::io::BufRead;
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut servers = EchoServers {
            children: Vec::new(),
        };
        for (ns, ip) in pods {
            let mut cmd = ns.cmd(weft_perf);
            cmd.args([
                ECHO_SUBCOMMAND,
                &ip.to_string(),
                &stall.as_millis().to_string(),
            ])
            .arg(list.join(","))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
            let mut child = crate::netns::ChildGuard::spawn(&mut cmd)?;
            let out = child
                .child_mut()
                .stdout
                .take()
                .context("the server's stdout")?;
            let mut line = String::new();
            std::io::BufReader::new(out).read_line(&mut line)?;
            servers.children.push(child);
            ensure!(
                line.trim() == "listening",
                "the echo servers on {ip} in {} did not start",
                ns.name()
            );
        }
        Ok(servers)
    }

    /// The servers' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .map(crate::netns::ChildGuard::pid)
            .collect()
    }

    /// Stops every server and waits for it; fails if any listener failed.
    pub fn stop(mut self) -> Result<()> {
        for c in &mut self.children {
            drop(c.child_mut().stdin.take());
        }
        for mut c in self.children.drain(..) {
            let pid = c.pid();
            match c.wait_timeout(ECHO_EXIT)? {
                Some(status) if status.success() => {}
                Some(status) => bail!("the echo servers (pid {pid}) exited with {status}"),
                None => bail!("the echo servers (pid {pid}) did not stop within {ECHO_EXIT:?}"),
            }
        }
        Ok(())
    }
}

/// The echo servers of one pod, in a process of their own started in the pod's
/// namespace by [`EchoServers::start`]: listens on `ports` of `ip`, says `listening`
/// on standard output, and serves until its standard input closes; fails if a
/// listener failed.
pub fn serve_echo_stdio(ip: Ipv4Addr, ports: &[u16], stall: Duration) -> Result<()> {
    let listeners = ports
        .iter()
        .map(|port| -> Result<TcpListener> {
            let l = TcpListener::bind((ip, *port))
                .with_context(|| format!("listening on {ip}:{port}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .collect::<Result<Vec<_>>>()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    std::thread::spawn(move || {
        // Whatever ends the input (a close, an error) ends the servers.
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = stop.send(true);
    });
    println!("listening");
    serve_all(listeners, stopped, stall)
}

/// The first failure of a pod's echo servers, if any.
type Failure = std::sync::Arc<std::sync::Mutex<Option<anyhow::Error>>>;

/// One pod's servers of [`EchoServers`]: accepts on every listener and echoes on
/// every connection until `stop` turns true; then the first failure, if any.
fn serve_all(
    listeners: Vec<TcpListener>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    stall: Duration,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting an echo server's runtime")?;
    let failed = Failure::default();
    rt.block_on(async {
        for l in listeners {
            let l = tokio::net::TcpListener::from_std(l)?;
            tokio::spawn(accept_and_echo(l, failed.clone(), stall));
        }
        let _ = stop.wait_for(|s| *s).await;
        anyhow::Ok(())
    })?;
    drop(rt);
    let first = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
    first.map_or(Ok(()), Err)
}

/// Keeps `e` in `failed` unless an earlier failure is there.
fn fail(failed: &Failure, e: anyhow::Error) {
    let mut first = failed.lock().unwrap_or_else(|p| p.into_inner());
    first.get_or_insert(e);
}

/// Accepts on `l` for ever, each connection served by a task of its own.
async fn accept_and_echo(l: tokio::net::TcpListener, failed: Failure, stall: Duration) {
    loop {
        match l.accept().await {
            // A connection's own trouble (a client that gave up, a reset) is the
            // client's to count; only the listener failing fails the servers.
            Ok((c, _)) => drop(tokio::spawn(echo_async(c, stall))),
            Err(e) => return fail(&failed, anyhow::Error::new(e).context("accepting")),
        }
    }
}

/// [`serve_echo`], asynchronously, closing quietly on a client silent for `stall` or
/// on an error.
async fn echo_async(mut c: tokio::net::TcpStream, stall: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = c.set_nodelay(true);
    let mut b = [0u8; 1];
    while let Ok(Ok(1)) = tokio::time::timeout(stall, c.read(&mut b)).await {
        if c.write_all(&b).await.is_err() || b[0] == CLOSE_BYTE {
            return;
        }
    }
}

/// Like [`tcp_crr`], from several clients at once, to many servers: one thread in each
/// namespace of `clients` opens connections one after another, each to the next address
/// of `targets` (a counter shared by all, so together they take every target in turn),
/// until `duration` has passed or `max_connections` were opened. The servers must be
/// [`EchoServers`]. A connection that fails or takes longer than `give_up` is counted
/// in [`ConnectionRate::failed`], and the client goes on with the next: one lost
/// connection must not end a rate test, nor go unreported.
pub fn tcp_crr_spread(
    clients: &[&Netns],
    targets: &[SocketAddr],
    duration: Duration,
    max_connections: u64,
    give_up: Duration,
) -> Result<ConnectionRate> {
    use std::sync::atomic::{AtomicU64, Ordering};
    ensure!(
        !clients.is_empty() && !targets.is_empty(),
        "a connection test needs clients and targets"
    );
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let until = start + duration;
    let client = |ns: &Netns| {
        in_netns(ns, || -> Result<(hdrhistogram::Histogram<u64>, u64)> {
            let (mut times, mut failed) = (latency_histogram()?, 0);
            while Instant::now() < until && !crate::stop::requested() {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= max_connections {
                    break;
                }
                let addr = targets[(n % targets.len() as u64) as usize];
                let t = Instant::now();
                match crr_once(addr, give_up) {
                    Ok(()) => record(&mut times, t.elapsed()),
                    Err(_) => failed += 1,
                }
            }
            Ok((times, failed))
        })?
    };
    let per_client: Vec<Result<_>> = std::thread::scope(|s| {
        let running: Vec<_> = clients.iter().map(|ns| s.spawn(|| client(ns))).collect();
        running
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow::anyhow!("a client panicked"))?)
            .collect()
    });
    let elapsed = start.elapsed();
    let (mut times, mut failed) = (latency_histogram()?, 0);
    for r in per_client {
        let (h, f) = r?;
        times.add(h).context("merging the clients' histograms")?;
        failed += f;
    }
    Ok(ConnectionRate {
        connections: times.len(),
        elapsed,
        times,
        failed,
    })
}

/// Connection attempts [`connect_retrying`] makes.
const CONNECT_ATTEMPTS: u32 = 3;

/// A TCP connection to `addr` from this thread's namespace, each of
/// [`CONNECT_ATTEMPTS`] attempts (from a new port) given `give_up`: a connection lost
/// on the way must not end a latency test.
fn connect_retrying(addr: SocketAddr, give_up: Duration) -> Result<TcpStream> {
    let mut last = None;
    for _ in 0..CONNECT_ATTEMPTS {
        match TcpStream::connect_timeout(&addr, give_up) {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no attempt"), anyhow::Error::new))
        .with_context(|| format!("connecting to {addr}, {CONNECT_ATTEMPTS} times"))
}

/// Like [`tcp_rr`] over `connections` connections from `client` at once, connection `k`
/// to `targets[k * targets.len() / connections]` (spread over them all), the round
/// trips taking the connections in turn. The servers must be [`EchoServers`].
pub fn tcp_rr_spread(
    client: &Netns,
    targets: &[SocketAddr],
    connections: usize,
    (duration, max_round_trips): (Duration, u64),
    stall: Duration,
) -> Result<hdrhistogram::Histogram<u64>> {
    ensure!(
        connections > 0 && !targets.is_empty(),
        "a round-trip test needs connections and targets"
    );
    let chosen: Vec<SocketAddr> = (0..connections)
        .map(|k| targets[k * targets.len() / connections])
        .collect();
    in_netns(client, || -> Result<hdrhistogram::Histogram<u64>> {
        let mut conns = Vec::with_capacity(chosen.len());
        for addr in &chosen {
            let c = connect_retrying(*addr, stall)?;
            c.set_nodelay(true)?;
            c.set_read_timeout(Some(stall))?;
            c.set_write_timeout(Some(stall))?;
            conns.push((c, *addr));
        }
        for _ in 0..RR_WARMUP {
            for (c, addr) in &mut conns {
                round_trip(c, *addr)?;
            }
        }
        let mut hist = latency_histogram()?;
        let until = Instant::now() + duration;
        let (mut n, count) = (0u64, conns.len() as u64);
        while n < max_round_trips && Instant::now() < until && !crate::stop::requested() {
            let (c, addr) = &mut conns[(n % count) as usize];
            record(&mut hist, round_trip(c, *addr)?);
            n += 1;
        }
        Ok(hist)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_reproducible_across_chunkings() {
        let mut a = Pattern::new(7);
        let mut whole = vec![0u8; 1000];
        a.fill(&mut whole);
        let mut b = Pattern::new(7);
        let mut pieces = Vec::new();
        for n in [1usize, 7, 8, 9, 100, 875] {
            let mut p = vec![0u8; n];
            b.fill(&mut p);
            pieces.extend(p);
        }
        assert_eq!(whole, pieces);
        assert_ne!(whole[..8], whole[8..16]);
    }
}
