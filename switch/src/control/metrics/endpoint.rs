//! The HTTP endpoint of `/metrics` (hyper, HTTP/1.1), an input on the node's
//! address that pods and the underlay can reach, and so bounded:
//! - at most [`MAX_CONNECTIONS`] connections; when they are all taken, a new one
//!   takes the place of the oldest whose page is not being rendered, so that
//!   sources holding connections open cannot keep a scraper out (a page being
//!   sent is not protected: a scraper reads it in milliseconds, and the sources'
//!   rate bound keeps anyone from cycling 64 connections that fast); when every
//!   one is being rendered for, a new one is refused;
//! - per source address (per /64 for IPv6), at most [`MAX_PER_SOURCE`] open and
//!   [`NEW_PER_SECOND`] new a second (bursts of [`NEW_BURST`]), so that one source
//!   cannot cycle connections fast enough to push a scrape out before it is
//!   answered; a connection over a bound is closed unanswered;
//! - [`HEAD_TIMEOUT`] for a request's head to arrive (an idle keep-alive
//!   connection included), [`MAX_HEAD`] for its size, [`CONNECTION_LIFETIME`] for a
//!   connection's life;
//! - the page rendered at most once per [`CACHE_FOR`], one rendering at a time,
//!   off the runtime's threads: scrapes however frequent cost one rendering a
//!   period, and every answer shares the one buffer.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use super::{registry, render};
use crate::control::daemon::Daemon;
use crate::control::error::{io_err, DaemonError};

/// Connections to `/metrics` open at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections from one source open at once.
pub const MAX_PER_SOURCE: usize = 4;
/// New connections a source may open a second, on average.
pub const NEW_PER_SECOND: f64 = 4.0;
/// And at once, after a quiet while.
pub const NEW_BURST: f64 = 8.0;
/// Sources remembered (their connections open, their budget spent) at most;
/// a new source past it is refused until some are forgotten.
pub const MAX_SOURCES: usize = 4096;
/// How long a request's head may take to arrive, counted from when the
/// connection is ready for it: a slow request, or an idle keep-alive connection,
/// is closed after it.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a request's head may be: `GET /metrics` and a few headers fit.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a connection lives, whatever it does; Prometheus opens another.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long a rendered page is served again.
pub const CACHE_FOR: Duration = Duration::from_millis(500);
/// How long a scrape may wait for its turn to be rendered.
const RENDER_WAIT: Duration = Duration::from_secs(10);

/// Binds the metrics endpoint's listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(io_err(format!("binding the metrics endpoint {addr}")))
}

/// Whom a source's bounds are counted for: its address, or its /64 for IPv6 (a
/// host holds a whole /64).
fn source_of(ip: IpAddr) -> IpAddr {
    // An IPv4 client of a dual-stack listener comes as ::ffff:a.b.c.d.
    let ip = ip.to_canonical();
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// A source's connections open now, and its budget of new ones.
#[derive(Debug, Clone, Copy)]
struct Source {
    open: usize,
    tokens: f64,
    at: Instant,
}

impl Source {
    /// Its budget at `now`.
    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * NEW_PER_SECOND;
        self.tokens = (self.tokens + earned).min(NEW_BURST);
        self.at = now;
    }

    /// Whether it may be forgotten: nothing open, its budget full again.
    fn idle(&self, now: Instant) -> bool {
        let mut s = *self;
        s.refill(now);
        s.open == 0 && s.tokens >= NEW_BURST
    }
}

/// An open connection, oldest first in [`Places::open`].
#[derive(Debug)]
struct Open {
    id: u64,
    source: IpAddr,
    /// Set while a request of it is being answered.
    busy: Arc<AtomicBool>,
    /// Its task, once spawned.
    task: Option<AbortHandle>,
}

/// What the bounds hold.
#[derive(Debug, Default)]
struct Book {
    next_id: u64,
    open: VecDeque<Open>,
    sources: HashMap<IpAddr, Source>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source has [`MAX_PER_SOURCE`] open.
    SourceFull,
    /// Its source opened too many too fast.
    TooFast,
    /// [`MAX_SOURCES`] sources are remembered.
    TooManySources,
    /// Every connection is being answered: none can give up its place.
    Busy,
}

/// The bounds on the endpoint's connections.
#[derive(Debug, Default)]
pub struct Places {
    book: Mutex<Book>,
}

/// A connection's place, given back when dropped.
#[derive(Debug)]
pub struct Place {
    places: Arc<Places>,
    id: u64,
    /// Set while a request is being answered.
    pub busy: Arc<AtomicBool>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut book = self.places.book.lock();
        // An evicted connection was taken off the book when it was evicted.
        if let Some(i) = book.open.iter().position(|o| o.id == self.id) {
            let gone = book.open.remove(i).expect("the position found");
            if let Some(s) = book.sources.get_mut(&gone.source) {
                s.open -= 1;
            }
        }
    }
}

impl Places {
    /// Empty bounds.
    pub fn new() -> Arc<Places> {
        Arc::new(Places::default())
    }

    /// A place for a connection from `ip` at `now`, and the connection it
    /// evicts to make room, if it had to; or why not.
    pub fn take(
        self: &Arc<Places>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<(Place, Option<AbortHandle>), Refused> {
        let key = source_of(ip);
        let mut book = self.book.lock();
        if !book.sources.contains_key(&key) && book.sources.len() >= MAX_SOURCES {
            book.sources.retain(|_, s| !s.idle(now));
            if book.sources.len() >= MAX_SOURCES {
                return Err(Refused::TooManySources);
            }
        }
        let full = book.open.len() >= MAX_CONNECTIONS;
        if full && book.open.iter().all(|o| o.busy.load(Ordering::Relaxed)) {
            return Err(Refused::Busy);
        }
        let source = book.sources.entry(key).or_insert(Source {
            open: 0,
            tokens: NEW_BURST,
            at: now,
        });
        source.refill(now);
        if source.open >= MAX_PER_SOURCE {
            return Err(Refused::SourceFull);
        }
        if source.tokens < 1.0 {
            return Err(Refused::TooFast);
        }
        source.tokens -= 1.0;
        source.open += 1;
        let evicted = full.then(|| book.evict()).flatten();
        book.next_id += 1;
        let id = book.next_id;
        let busy = Arc::new(AtomicBool::new(false));
        book.open.push_back(Open {
            id,
            source: key,
            busy: busy.clone(),
            task: None,
        });
        let place = Place {
            places: self.clone(),
            id,
            busy,
        };
        Ok((place, evicted))
    }

    /// Records the task serving the connection of `place`, which an eviction
    /// aborts.
    pub fn serving(&self, place_id: u64, task: AbortHandle) {
        let mut book = self.book.lock();
        if let Some(o) = book.open.iter_mut().find(|o| o.id == place_id) {
            o.task = Some(task);
        }
    }

    /// How many connections are open.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.book.lock().open.len()
    }
}

impl Place {
    /// Its identity, for [`Places::serving`].
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Book {
    /// Takes the oldest connection not being answered off the book, and gives
    /// its task to abort. (One being answered, which may hold the rendering, is
    /// never aborted: a new connection is refused instead.)
    fn evict(&mut self) -> Option<AbortHandle> {
        let i = (self.open.iter()).position(|o| !o.busy.load(Ordering::Relaxed))?;
        let gone = self.open.remove(i)?;
        if let Some(s) = self.sources.get_mut(&gone.source) {
            s.open -= 1;
        }
        gone.task
    }
}

/// The page, rendered at most once per [`CACHE_FOR`], one rendering at a time.
#[derive(Debug)]
struct Renderer {
    registry: Arc<Registry>,
    cache: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
}

impl Renderer {
    async fn page(&self) -> Result<Bytes, StatusCode> {
        let mut cache = tokio::time::timeout(RENDER_WAIT, self.cache.lock())
            .await
            .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
        if let Some((at, page)) = &*cache {
            if at.elapsed() < CACHE_FOR {
                return Ok(page.clone());
            }
        }
        let registry = self.registry.clone();
        let page = tokio::task::spawn_blocking(move || render(&registry))
            .await
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        let page = Bytes::from(page);
        *cache = Some((Instant::now(), page.clone()));
        Ok(page)
    }
}

/// Answers one request: `GET /metrics` (or `HEAD`), else an error.
async fn answer(renderer: &Renderer, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "weftd serves /metrics only\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
    }
    match renderer.page().await {
        Ok(page) => {
            let mut r = reply(StatusCode::OK, page);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            r
        }
        Err(status) => reply(status, "the metrics could not be rendered\n".into()),
    }
}

/// Serves one connection within its place and lifetime.
async fn connection(renderer: Arc<Renderer>, stream: tokio::net::TcpStream, place: Place) {
    let busy = place.busy.clone();
    let _place = place;
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper::service::service_fn(move |req| {
        let (renderer, busy) = (renderer.clone(), busy.clone());
        async move {
            busy.store(true, Ordering::Relaxed);
            let response = answer(&renderer, req).await;
            busy.store(false, Ordering::Relaxed);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HEAD_TIMEOUT, conn).await;
        }
    }
}

/// Serves `/metrics` on `listener` until the task is aborted.
pub async fn serve(daemon: Arc<Daemon>, listener: TcpListener) {
    let renderer = Arc::new(Renderer {
        registry: Arc::new(registry(&daemon)),
        cache: tokio::sync::Mutex::new(None),
    });
    let places = Places::new();
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors, most likely: let some close.
                log::warn!("metrics endpoint: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over a bound, the connection is closed unanswered.
        let Ok((place, evicted)) = places.take(from.ip(), Instant::now()) else {
            continue;
        };
        if let Some(task) = evicted {
            task.abort();
        }
        let id = place.id();
        let task = tokio::spawn(connection(renderer.clone(), stream, place));
        places.serving(id, task.abort_handle());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A source holds at most its share of the places, and opens new ones at its
    /// rate; a place given back is free again.
    #[test]
    fn a_source_is_bounded_in_open_and_new_connections() {
        let places = Places::new();
        let t = Instant::now();
        let a = ip("10.0.0.1");
        let held: Vec<_> = (0..MAX_PER_SOURCE)
            .map(|_| places.take(a, t).expect("a place").0)
            .collect();
        assert_eq!(places.take(a, t).unwrap_err(), Refused::SourceFull);
        drop(held);
        // The burst is spent (4 taken of 8): 4 more at once, then it must wait.
        for _ in 0..(NEW_BURST as usize - MAX_PER_SOURCE) {
            drop(places.take(a, t).expect("within the burst"));
        }
        assert_eq!(places.take(a, t).unwrap_err(), Refused::TooFast);
        let later = t + Duration::from_millis((1000.0 / NEW_PER_SECOND) as u64 + 1);
        assert!(places.take(a, later).is_ok(), "earned one back");
        assert_eq!(places.open(), 0);
    }

    /// Full, a new connection takes the place of the oldest one not being
    /// answered; the evicted one's source gets its place back at once, and its
    /// own drop later gives nothing back twice.
    #[test]
    fn full_evicts_the_oldest_idle_connection() {
        let places = Places::new();
        let t = Instant::now();
        let mut held = Vec::new();
        for i in 0..MAX_CONNECTIONS {
            let source = IpAddr::from([10, 1, (i / 200) as u8, (i % 200) as u8 + 1]);
            let (place, evicted) = places.take(source, t).expect("a place");
            assert!(evicted.is_none());
            held.push(place);
        }
        // The oldest is being answered: the next oldest goes.
        held[0].busy.store(true, Ordering::Relaxed);
        let (newcomer, _) = places.take(ip("10.9.9.9"), t).expect("room made");
        assert_eq!(places.open(), MAX_CONNECTIONS);
        let book = places.book.lock();
        assert_eq!(book.open.front().map(|o| o.id), Some(held[0].id));
        assert!(!book.open.iter().any(|o| o.id == held[1].id), "evicted");
        assert_eq!(book.sources[&IpAddr::from([10, 1, 0, 2])].open, 0);
        drop(book);
        drop(held.remove(1));
        assert_eq!(places.open(), MAX_CONNECTIONS);
        // With every one being answered, none gives way: the newcomer is refused.
        for p in held.iter().chain([&newcomer]) {
            p.busy.store(true, Ordering::Relaxed);
        }
        assert_eq!(places.take(ip("10.9.9.10"), t).unwrap_err(), Refused::Busy);
        drop((held, newcomer));
        assert_eq!(places.open(), 0);
    }

    /// IPv4 clients of a dual-stack listener are each a source of their own.
    #[test]
    fn mapped_ipv4_clients_are_sources_of_their_own() {
        assert_eq!(source_of(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_ne!(
            source_of(ip("::ffff:10.0.0.1")),
            source_of(ip("::ffff:10.0.0.2"))
        );
        assert_eq!(source_of(ip("2001:db8::1")), source_of(ip("2001:db8::2")));
    }

    /// An IPv6 host's /64 is one source; sources are forgotten once idle, and a
    /// flood of new ones is refused past the bound.
    #[test]
    fn sources_are_per_64_and_bounded() {
        let places = Places::new();
        let t = Instant::now();
        let held: Vec<_> = (1..=MAX_PER_SOURCE)
            .map(|i| places.take(ip(&format!("2001:db8::{i}")), t).unwrap().0)
            .collect();
        let refused = places.take(ip("2001:db8::ffff:1"), t).unwrap_err();
        assert_eq!(refused, Refused::SourceFull);
        assert!(places.take(ip("2001:db8:0:1::1"), t).is_ok(), "another /64");
        drop(held);
        for i in 0..MAX_SOURCES as u32 {
            let _ = places.take(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()), t);
        }
        assert_eq!(
            places.take(ip("192.168.0.1"), t).unwrap_err(),
            Refused::TooManySources
        );
        // Once their budgets are full again, they are forgotten.
        let later = t + Duration::from_secs(10);
        assert!(places.take(ip("192.168.0.1"), later).is_ok());
        assert!(places.book.lock().sources.len() < 10);
    }
}
