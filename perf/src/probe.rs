//! Pods that answer, and probes of whether one pod reaches another: the
//! connectivity checks of NetworkPolicy's tests, in the layout of the upstream
//! e2e suite (each pod serving TCP and UDP on ports 80 and 81). Every call is
//! bounded in time.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::Netns;
use crate::topo::Pod;
use crate::weft::in_netns;

/// How long a probe waits for an answer.
pub const PROBE: Duration = Duration::from_millis(1500);

/// A probe's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// TCP: connect, a byte each way.
    Tcp,
    /// UDP: a datagram each way, up to three tries.
    Udp,
}

/// Serves TCP and UDP on ports 80 and 81 in `pod`'s namespace at `ip` (of either
/// family): a byte in, the byte back.
pub fn serve(
    pod: &Pod,
    ip: impl Into<IpAddr>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let ip = ip.into();
    let mut threads = Vec::new();
    for port in [80, 81] {
        let tcp = in_netns(&pod.ns, || TcpListener::bind((ip, port)))
            .expect("the pod's namespace")
            .expect("a TCP listener");
        tcp.set_nonblocking(true).unwrap();
        let stop_t = stop.clone();
        threads.push(std::thread::spawn(move || {
            while !stop_t.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        std::thread::spawn(move || {
                            let mut b = [0u8; 1];
                            while let Ok(1) = c.read(&mut b) {
                                if c.write_all(&b).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        let udp = in_netns(&pod.ns, || UdpSocket::bind((ip, port)))
            .expect("the pod's namespace")
            .expect("a UDP socket");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop_u = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while !stop_u.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut b) {
                    let _ = udp.send_to(&b[..n], from);
                }
            }
        }));
    }
    threads
}

/// Whether `from` reaches `to` (of either family) on `proto`/`port` within
/// [`PROBE`].
pub fn probe(from: &Pod, to: impl Into<IpAddr>, proto: Proto, port: u16) -> bool {
    let addr = SocketAddr::from((to.into(), port));
    let any = match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    match proto {
        Proto::Tcp => {
            let Ok(Ok(mut s)) = in_netns(&from.ns, || TcpStream::connect_timeout(&addr, PROBE))
            else {
                return false;
            };
            let _ = s.set_read_timeout(Some(PROBE));
            let mut b = [0u8; 1];
            s.write_all(b"?").is_ok() && matches!(s.read(&mut b), Ok(1))
        }
        Proto::Udp => {
            let Ok(Ok(s)) = in_netns(&from.ns, || UdpSocket::bind((any, 0))) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(PROBE / 3));
            let mut b = [0u8; 8];
            (0..3).any(|_| s.send_to(b"?", addr).is_ok() && s.recv_from(&mut b).is_ok())
        }
    }
}

/// The UDP port the datagrams of [`Sender`] go to, and [`Receiver`] counts on.
pub const PROBE_PORT: u16 = 7777;

/// Counts the datagrams to [`PROBE_PORT`] that reach a pod, until dropped: with
/// [`Sender`], what a pod's policy lets through over time.
#[derive(Debug)]
pub struct Receiver {
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listens in the pod's namespace `ns`.
    pub fn start(ns: &Netns) -> Receiver {
        let socket = in_netns(ns, || UdpSocket::bind(("0.0.0.0", PROBE_PORT)))
            .unwrap()
            .expect("binding the probe port");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, stopped) = (count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stopped.load(Ordering::SeqCst) {
                if socket.recv(&mut buf).is_ok() {
                    n.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Receiver {
            count,
            stop,
            thread: Some(thread),
        }
    }

    /// The datagrams received so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends a datagram to [`PROBE_PORT`] every 5 ms from a pod, until stopped, or
/// 24,000 of them (two minutes) were sent.
#[derive(Debug)]
pub struct Sender {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    /// Sends from the pod's namespace `ns` to `dst`.
    pub fn start(ns: &Netns, dst: Ipv4Addr) -> Sender {
        let socket = in_netns(ns, || UdpSocket::bind(("0.0.0.0", 0)))
            .unwrap()
            .expect("a UDP socket");
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, stopped) = (sent.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for i in 0..24_000u32 {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                // A refusal (an ICMP error to an earlier datagram) is no matter.
                let _ = socket.send_to(&i.to_be_bytes(), (dst, PROBE_PORT));
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Sender {
            sent,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns how many datagrams were sent.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
