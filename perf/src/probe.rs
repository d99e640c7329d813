//! Pods that answer, and probes of whether one pod reaches another: the
//! connectivity checks of NetworkPolicy's tests, in the layout of the upstream
//! e2e suite (each pod serving TCP and UDP on ports 80 and 81). Every call is
//! bounded in time.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// Serves TCP and UDP on ports 80 and 81 in `pod`'s namespace at `ip`: a byte in,
/// the byte back.
pub fn serve(pod: &Pod, ip: Ipv4Addr, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
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

/// Whether `from` reaches `to` on `proto`/`port` within [`PROBE`].
pub fn probe(from: &Pod, to: Ipv4Addr, proto: Proto, port: u16) -> bool {
    let addr = SocketAddr::from((to, port));
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
            let Ok(Ok(s)) = in_netns(&from.ns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            else {
                return false;
            };
            let _ = s.set_read_timeout(Some(PROBE / 3));
            let mut b = [0u8; 8];
            (0..3).any(|_| s.send_to(b"?", addr).is_ok() && s.recv_from(&mut b).is_ok())
        }
    }
}
