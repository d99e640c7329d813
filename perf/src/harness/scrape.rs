//! A scraper for the metrics A/B (`--alt-scrape-ms`): from this process, as a
//! Prometheus would, a GET of a node's `/metrics` every so often, over a fresh
//! connection each time, its answer read whole and thrown away. Its own CPU is
//! this process's, which the harness counts with the traffic generator's.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The port the alt systems' weftd serves `/metrics` on, in each host's namespace.
pub const METRICS_PORT: u16 = 9402;

/// A thread scraping one node until dropped.
#[derive(Debug)]
pub struct Scraper {
    stop: Arc<AtomicBool>,
    scraped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

/// An HTTP/1.1 GET of `path` from `addr` over a fresh connection, closed after
/// the answer: its status and body (de-chunked, if the answer was chunked), or
/// why not. Bounded by `timeout` for the connection and for each read.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = (head.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
    let chunked = (head.lines().skip(1))
        .filter_map(|l| l.split_once(':'))
        .any(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// The body of a chunked answer.
fn dechunk(mut rest: &str) -> std::io::Result<String> {
    let bad = || std::io::Error::other("a malformed chunked body");
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or_else(bad)?;
        let n = usize::from_str_radix(size.trim(), 16).map_err(|_| bad())?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..n).ok_or_else(bad)?);
        rest = after[n..].strip_prefix("\r\n").ok_or_else(bad)?;
    }
}

/// One scrape: the whole answer, which must be a 200.
fn scrape(addr: SocketAddr) -> std::io::Result<()> {
    match http_get(addr, "/metrics", Duration::from_secs(5))? {
        (200, _) => Ok(()),
        (status, _) => Err(std::io::Error::other(format!("HTTP {status}"))),
    }
}

impl Scraper {
    /// Scrapes `addr` from inside the namespace at `netns` every `every`.
    pub fn start(netns: PathBuf, addr: SocketAddr, every: Duration) -> Result<Scraper> {
        let ns = File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (scraped, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, ok, bad) = (stop.clone(), scraped.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            // SAFETY: `ns` is an open netns fd; setns moves this thread only, which
            // lives in that namespace until it ends.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bad.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    let counter = if scrape(addr).is_ok() { &ok } else { &bad };
                    counter.fetch_add(1, Ordering::Relaxed);
                    // No catching up after a slow scrape: the next one period on.
                    next = Instant::now() + every;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Ok(Scraper {
            stop,
            scraped,
            failed,
            addr,
            thread: Some(thread),
        })
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Said every time, so that a run shows the scrapes happened.
        eprintln!(
            "weft-perf: scraped {}/metrics {} times, {} failed",
            self.addr,
            self.scraped.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunked body is joined; a malformed one is an error, not a guess.
    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("4\r\nweft\r\n3\r\n ok\r\n0\r\n\r\n").unwrap(),
            "weft ok"
        );
        assert!(dechunk("4\r\nwe").is_err());
        assert!(dechunk("zz\r\n").is_err());
    }
}
