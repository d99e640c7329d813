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

/// One scrape: the whole answer, which must be a 200.
fn scrape(addr: SocketAddr, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    buf.clear();
    s.read_to_end(buf)?;
    if buf.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other("not a 200"))
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
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    let counter = if scrape(addr, &mut buf).is_ok() {
                        &ok
                    } else {
                        &bad
                    };
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
