//! How long a node's join takes to reach its peers: from the moment its registration
//! appears in etcd to the first echo reply a pod on a peer node gets from the new
//! node's gateway, the address its `weft0` holds (`weft-perf join`).
//!
//! One etcd (on 127.0.0.1, data under the run's scratch directory), two hosts on one
//! underlay. Host 0 runs weftd with a pod; host 1 is the node that joins, again and
//! again. Each join:
//!
//! 1. weftd starts on host 1 and settles its subnet, which registers it;
//! 2. an `etcdctl watch` on the node keys, started before any of it, stamps the
//!    registration's PUT when etcdctl prints it: a delivery like the one the peer's
//!    own watch gets, and no earlier than it;
//! 3. from then on the pod on host 0 sends an ICMP echo request to the new node's
//!    gateway every [`PING_INTERVAL`], from a raw socket in its namespace, until one of
//!    this round's requests is answered: the time of that reply, less the PUT's, is
//!    the join's latency. Until host 0 has the new peer, its weftd answers with ICMP
//!    unreachable, which is ignored;
//! 4. weftd on host 1 stops, its registration is deleted (a clean stop leaves it to
//!    the lease's TTL), and the next join waits until host 0 has dropped the peer.
//!
//! The figure therefore holds two things that run at once, and is the longer of them:
//! the peer's watch delivery and its adding the tunnel, and the joiner's own start-up
//! after it registered (weftd registers before it opens `weft0` and starts its
//! workers, so its gateway cannot answer before that). Then the round trip, and up to
//! one [`PING_INTERVAL`] of sampling. It is what a pod on a peer sees: how long after
//! a node appears in the store it can reach that node.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::etcd::{Bridge, Etcd};
use crate::netns::{wait_until, ChildGuard, Netns};
use crate::topo::Underlay;
use crate::weft::{in_netns, node_name, Scratch, WeftNode, WeftOptions};

/// How often the peer's pod sends an echo request while it waits.
pub const PING_INTERVAL: Duration = Duration::from_millis(1);

/// The longest a join may take before it counts as failed.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What `weft-perf join` measures with.
#[derive(Debug, Clone)]
pub struct JoinSettings {
    /// Joins to time.
    pub joins: usize,
    /// The weftd binary.
    pub weftd: std::path::PathBuf,
    /// Tunnel mode: vxlan, sleeve or direct.
    pub mode: String,
}

/// The joins' latencies.
#[derive(Debug, Clone, Serialize)]
pub struct JoinReport {
    /// Tunnel mode.
    pub mode: String,
    /// Each join's latency, in microseconds, in the order they ran.
    pub latencies_us: Vec<u64>,
}

impl JoinReport {
    /// The `q` quantile (0..=1) of the latencies, nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * sorted.len() as f64).ceil() as usize;
        Duration::from_micros(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "{} joins ({}): registration in etcd to the first ping from a peer's pod\n\
             p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  min {:.1} ms\n",
            self.latencies_us.len(),
            self.mode,
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.quantile(1.0)),
            ms(self.quantile(0.0)),
        )
    }
}

/// One event of `etcdctl watch`: when it was read, and the key.
#[derive(Debug)]
struct WatchEvent {
    at: Instant,
    put: bool,
    key: String,
    value: String,
}

/// `etcdctl watch --prefix`, its events timestamped by a reader thread as they come.
struct Watch {
    _child: ChildGuard,
    events: Receiver<WatchEvent>,
}

impl Watch {
    fn start(etcd: &Etcd, prefix: &str) -> Result<Watch> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(etcd.endpoint())
            .args(["watch", "--prefix", prefix])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = ChildGuard::spawn(&mut cmd).context("starting etcdctl watch")?;
        let stdout = child
            .child_mut()
            .stdout
            .take()
            .context("etcdctl's stdout")?;
        let (tx, events) = mpsc::channel();
        std::thread::Builder::new()
            .name("etcd-watch".into())
            .spawn(move || {
                use std::io::BufRead;
                // Each event is three lines: PUT or DELETE, the key, the value (empty
                // for a DELETE). Values are single-line JSON.
                let mut lines = std::io::BufReader::new(stdout).lines();
                while let Some(Ok(op)) = lines.next() {
                    let at = Instant::now();
                    let (Some(Ok(key)), Some(Ok(value))) = (lines.next(), lines.next()) else {
                        return;
                    };
                    let put = op == "PUT";
                    if tx
                        .send(WatchEvent {
                            at,
                            put,
                            key,
                            value,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok(Watch {
            _child: child,
            events,
        })
    }

    /// The next PUT of `key`, within `timeout`.
    fn next_put(&self, key: &str, timeout: Duration) -> Result<WatchEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if e.put && e.key == key => return Ok(e),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => bail!("no PUT of {key} within {timeout:?}"),
                Err(RecvTimeoutError::Disconnected) => bail!("etcdctl watch ended"),
            }
        }
    }
}

/// A raw ICMP socket in a pod's namespace, sending echo requests and waiting for the
/// reply from one address.
///
/// Every round of pings carries its own nonce in the payload, so a late reply to an
/// earlier round (say, one that was answered just before the node stopped) can never
/// end a later round early.
struct Pinger {
    fd: OwnedFd,
    ident: u16,
}

/// The payload of an echo request: a tag and the round's nonce.
const TAG: &[u8; 8] = b"weftjoin";

impl Pinger {
    fn open(ns: &Netns) -> Result<Pinger> {
        let fd = in_netns(ns, || {
            // SAFETY: plain socket(2); the result is checked before it is owned.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    libc::IPPROTO_ICMP,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `fd` is a socket this thread just opened and nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })?
        .context("a raw ICMP socket in the peer's pod")?;
        Ok(Pinger {
            fd,
            ident: std::process::id() as u16,
        })
    }

    fn send(&self, dst: Ipv4Addr, seq: u16, nonce: u32) -> std::io::Result<()> {
        let mut msg = [0u8; 20];
        msg[0] = 8; // echo request
        msg[4..6].copy_from_slice(&self.ident.to_be_bytes());
        msg[6..8].copy_from_slice(&seq.to_be_bytes());
        msg[8..16].copy_from_slice(TAG);
        msg[16..20].copy_from_slice(&nonce.to_be_bytes());
        let sum = weft_encap::checksum::checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
        // SAFETY: sockaddr_in is plain data; every field the kernel reads is set.
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from(dst).to_be();
        // SAFETY: `msg` and `to` outlive the call, and the lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if !send_buffer_full(&e) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Reads one packet if one is queued: `None` once the socket is empty.
    fn recv<'b>(&self, buf: &'b mut [u8; 1500]) -> std::io::Result<Option<&'b [u8]>> {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock => Ok(None),
                std::io::ErrorKind::Interrupted => Ok(Some(&buf[..0])),
                _ => Err(e),
            };
        }
        Ok(Some(&buf[..n as usize]))
    }

    /// Throws away whatever is queued: replies and unreachables of earlier rounds.
    fn drain(&self) -> std::io::Result<()> {
        let mut buf = [0u8; 1500];
        while self.recv(&mut buf)?.is_some() {}
        Ok(())
    }

    /// Whether `packet` (an IPv4 datagram, as a raw socket reads it) is the echo reply
    /// from `from` to one of this round's requests. Everything else, the ICMP
    /// unreachables the peer's weftd sends until it has the new node among them, is
    /// not.
    fn is_reply(&self, packet: &[u8], from: Ipv4Addr, nonce: u32) -> bool {
        if packet.len() < 20 {
            return false;
        }
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        let Some(icmp) = packet.get(ihl..ihl + 20) else {
            return false;
        };
        src == from
            && icmp[0] == 0
            && icmp[4..6] == self.ident.to_be_bytes()
            && icmp[8..16] == TAG[..]
            && icmp[16..20] == nonce.to_be_bytes()
    }

    /// Waits until `until` for this round's echo reply from `from`; true if one came.
    fn reply(&self, from: Ipv4Addr, nonce: u32, until: Instant) -> std::io::Result<bool> {
        let mut buf = [0u8; 1500];
        loop {
            while let Some(packet) = self.recv(&mut buf)? {
                if self.is_reply(packet, from, nonce) {
                    return Ok(true);
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // poll(2) counts in milliseconds: round up, so a wait never spins.
            let ms = left.as_micros().div_ceil(1000) as libc::c_int;
            // SAFETY: one pollfd, alive for the call.
            if unsafe { libc::poll(&raw mut pfd, 1, ms) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }

    /// Pings `dst` every [`PING_INTERVAL`] until it answers a request of this round
    /// (`nonce`); the time of the answer.
    fn until_answered(&self, dst: Ipv4Addr, nonce: u32, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut seq = 0u16;
        let mut next = Instant::now();
        while next < deadline {
            self.send(dst, seq, nonce)
                .with_context(|| format!("pinging {dst}"))?;
            seq = seq.wrapping_add(1);
            next += PING_INTERVAL;
            if self.reply(dst, nonce, next.min(deadline))? {
                return Ok(Instant::now());
            }
        }
        bail!("{dst} did not answer within {timeout:?}")
    }
}

/// A send that found the socket's buffer full, which only delays the next ping.
///
/// ICMP errors the pings draw (the unreachables the peer's weftd sends back while it
/// has no route to the new node) come back as packets that [`Pinger::is_reply`]
/// turns down: a raw socket without `IP_RECVERR` reports them as an errno only for
/// the hard kinds, and host or net unreachable is not one.
fn send_buffer_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS))
}

/// Times `settings.joins` joins of host 1 into a cluster of host 0, on a fresh etcd.
pub fn measure(
    settings: &JoinSettings,
    progress: &mut dyn FnMut(usize, Duration),
) -> Result<JoinReport> {
    let scratch = Scratch::new("join")?;
    let etcd = Etcd::start(&scratch.path().join("etcd"))?;
    let underlay = Underlay::new("jn", 2)?;
    let _bridges = [
        Bridge::new(&underlay.host(0).ns, etcd.addr())?,
        Bridge::new(&underlay.host(1).ns, etcd.addr())?,
    ];
    let prefix = "/weft/v1/nodes/";
    let watch = Watch::start(&etcd, prefix)?;
    let opts = WeftOptions {
        binary: settings.weftd.clone(),
        mode: settings.mode.clone(),
        workers: 1,
        extra: Vec::new(),
    };
    let peer = WeftNode::start_etcd(underlay.host(0), scratch.path(), &opts)?;
    let pod = underlay.pod(0, "jp")?;
    peer.attach(&pod, "join-peer-pod")?;
    let pinger = Pinger::open(&pod.ns)?;
    let joiner_name = node_name(underlay.host(1));
    let key = format!("{prefix}{joiner_name}");

    let mut latencies_us = Vec::with_capacity(settings.joins);
    for round in 0..settings.joins {
        pinger.drain().context("emptying the pinger's socket")?;
        let (latency, node) = std::thread::scope(|s| -> Result<(Duration, WeftNode)> {
            let starting =
                s.spawn(|| WeftNode::start_etcd(underlay.host(1), scratch.path(), &opts));
            let registered = watch.next_put(&key, JOIN_TIMEOUT);
            let answered = registered.and_then(|event| {
                let gateway = gateway_of(&event.value)?;
                let at = pinger.until_answered(gateway, round as u32, JOIN_TIMEOUT)?;
                Ok(at - event.at)
            });
            let node = starting
                .join()
                .map_err(|_| anyhow!("starting weftd on host 1 panicked"))??;
            match answered {
                Ok(latency) => Ok((latency, node)),
                Err(e) => Err(e.context(node.log_text())),
            }
        })
        .with_context(|| format!("join {}", round + 1))?;
        latencies_us.push(latency.as_micros() as u64);
        progress(round + 1, latency);
        node.stop()?;
        etcd.ctl(&["del", &key])?;
        wait_until(Duration::from_secs(10), "the peer to drop the node", || {
            peer.peer_names()
                .is_ok_and(|names| !names.contains(&joiner_name))
        })?;
    }
    drop(peer);
    Ok(JoinReport {
        mode: settings.mode.clone(),
        latencies_us,
    })
}

/// The gateway (first address) of the subnet in a node record.
fn gateway_of(record: &str) -> Result<Ipv4Addr> {
    let value: serde_json::Value =
        serde_json::from_str(record).with_context(|| format!("a node record: {record}"))?;
    let subnet: Ipv4Net = value["podSubnet"]
        .as_str()
        .context("podSubnet in the node record")?
        .parse()?;
    subnet
        .hosts()
        .next()
        .ok_or_else(|| anyhow!("{subnet} has no addresses"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let r = JoinReport {
            mode: "vxlan".into(),
            latencies_us: (1..=20).rev().map(|i| i * 1000).collect(),
        };
        assert_eq!(r.quantile(0.5), Duration::from_millis(10));
        assert_eq!(r.quantile(0.99), Duration::from_millis(20));
        assert_eq!(r.quantile(0.0), Duration::from_millis(1));
        let empty = JoinReport {
            mode: "vxlan".into(),
            latencies_us: Vec::new(),
        };
        assert_eq!(empty.quantile(0.5), Duration::ZERO);
    }

    #[test]
    fn gateway_is_the_first_address() {
        let rec = r#"{"name":"n","podSubnet":"10.244.7.0/24"}"#;
        assert_eq!(gateway_of(rec).unwrap(), Ipv4Addr::new(10, 244, 7, 1));
        assert!(gateway_of("{}").is_err());
        assert!(gateway_of("not json").is_err());
    }
}
