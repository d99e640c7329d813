//! Traffic between namespaces from this process: sockets are created on threads that
//! entered a pod's namespace, then used from anywhere. Every call is bounded in time.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
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
    server_ip: Ipv4Addr,
    client: &Netns,
    bytes: u64,
    stall: Duration,
) -> Result<Transfer> {
    tcp_send(server, server_ip, client, Amount::Bytes(bytes), stall)
}

/// Like [`tcp_transfer`], for a byte count or a duration.
pub fn tcp_send(
    server: &Netns,
    server_ip: Ipv4Addr,
    client: &Netns,
    amount: Amount,
    stall: Duration,
) -> Result<Transfer> {
    let listener = in_netns(server, || TcpListener::bind((server_ip, 0)))?
        .with_context(|| format!("binding a TCP listener on {server_ip} in {}", server.name()))?;
    let addr = listener.local_addr()?;
    let seed = 0x5eed ^ u64::from(addr.port());
    let receiver = std::thread::spawn(move || -> Result<(SocketAddr, u64)> {
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + stall;
        let (mut conn, peer) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("no connection to {addr} within {stall:?}");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(stall))?;
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
    let start = Instant::now();
    let sent = (|| -> Result<u64> {
        let mut conn = in_netns(client, || {
            TcpStream::connect_timeout(&addr, stall.min(Duration::from_secs(10)))
        })?
        .with_context(|| format!("connecting from {} to {addr}", client.name()))?;
        conn.set_write_timeout(Some(stall))?;
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
