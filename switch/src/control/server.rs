//! The control socket, the store's watch and the signals: what `weftd` runs until it
//! is told to stop.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weft_proto::{self as proto, ErrorKind, ErrorReply, Request, RequestReader, Response};

use crate::control::config::Mode;
use crate::control::daemon::Daemon;
use crate::control::error::{io_err, DaemonError};
use crate::control::store::ClusterView;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections of root peers (the CNI plugin, the `weft` CLI as root) may
/// be open at once: reading a request, waiting their turn, or served. A runtime
/// may start hundreds of sandboxes at once, and their ADDs wait their turn rather
/// than fail; the bound only keeps a runaway client from taking every descriptor.
/// One more is answered `busy`.
pub const ROOT_CONNECTIONS: usize = 512;

/// How many connections of other peers (the socket group's members) may be open
/// at once. They have a bound of their own, so that they can never take the
/// connections root's CNI verbs need.
pub const OTHER_CONNECTIONS: usize = 16;

/// How many CNI verbs of root peers are served at once; more wait their turn.
/// Attach and detach run one at a time under the state lock anyway: this bounds
/// the blocking threads they hold while they wait for it.
pub const CNI_AT_ONCE: usize = 4;

/// How many other requests (queries, and CNI verbs of other peers) are served at
/// once, for root peers and for the others each. One more is answered `busy`: a
/// query that waits for the state lock behind a slow attach holds a blocking
/// thread, and queries must never take all of them. Root's have a bound of their
/// own so that the socket group's readers cannot keep the node's own liveness
/// probe (`weft status`, as root) busy until the kubelet restarts weftd.
pub const QUERIES_AT_ONCE: usize = 4;

/// The bounds on the control socket's connections and requests ([`ROOT_CONNECTIONS`]
/// and the others say why each is what it is).
#[derive(Debug, Clone)]
struct Bounds {
    root: Arc<Semaphore>,
    others: Arc<Semaphore>,
    cni: Arc<Semaphore>,
    root_queries: Arc<Semaphore>,
    queries: Arc<Semaphore>,
}

impl Bounds {
    fn new() -> Bounds {
        Bounds {
            root: Arc::new(Semaphore::new(ROOT_CONNECTIONS)),
            others: Arc::new(Semaphore::new(OTHER_CONNECTIONS)),
            cni: Arc::new(Semaphore::new(CNI_AT_ONCE)),
            root_queries: Arc::new(Semaphore::new(QUERIES_AT_ONCE)),
            queries: Arc::new(Semaphore::new(QUERIES_AT_ONCE)),
        }
    }

    /// A connection's place among those of its peer's kind, if there is one free.
    fn connection(&self, root: bool) -> Option<OwnedSemaphorePermit> {
        let pool = if root { &self.root } else { &self.others };
        pool.clone().try_acquire_owned().ok()
    }

    /// A turn to be served for `request` from a peer (root or not): a CNI verb of
    /// root waits for one, anything else gets one now or is busy.
    async fn turn(
        &self,
        root: bool,
        request: &Request,
    ) -> Result<OwnedSemaphorePermit, ErrorReply> {
        if root && request.is_cni() {
            return self
                .cni
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ErrorReply {
                    kind: ErrorKind::Unavailable,
                    message: "weftd is shutting down".into(),
                });
        }
        let pool = if root {
            &self.root_queries
        } else {
            &self.queries
        };
        pool.clone()
            .try_acquire_owned()
            .map_err(|_| busy(format!("{QUERIES_AT_ONCE} queries are being served")))
    }
}

/// How long a connection over its bound is read, what it sends thrown away, after
/// it is answered `busy`: a socket closed with its request unread is reset, and the
/// client would see the reset instead of the answer.
const BUSY_DRAIN: Duration = Duration::from_secs(1);

/// The answer to a client over a bound.
fn busy(why: String) -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::Busy,
        message: format!("weftd is busy: {why}; try again later"),
    }
}

/// Refuses a request that changes state from a peer whose uid is not 0.
fn authorize(uid: u32, request: &Request) -> Result<(), ErrorReply> {
    if uid == 0 || !request.mutates() {
        return Ok(());
    }
    Err(ErrorReply {
        kind: ErrorKind::PermissionDenied,
        message: format!(
            "uid {uid} may not attach, detach or gc: only root (uid 0) may change weftd's state"
        ),
    })
}

/// Reads one request from `stream`, as the protocol frames it.
async fn read_request(stream: &mut UnixStream) -> Option<Result<Request, ErrorReply>> {
    let mut reader = RequestReader::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(Ok(()));
            }
            if let Err(e) = reader.push(&chunk[..n]) {
                return Ok(Err(e));
            }
        }
    })
    .await;
    match read {
        Ok(Ok(Ok(()))) => Some(reader.finish()),
        Ok(Ok(Err(too_large))) => Some(Err(too_large)),
        Ok(Err(e)) => {
            log::debug!("control connection: {e}");
            None
        }
        Err(_) => Some(Err(proto::request_timed_out(REQUEST_TIMEOUT))),
    }
}

/// Serves one connection: who the peer is, a place among its kind's connections,
/// its request, and the answer.
async fn serve_conn(daemon: Arc<Daemon>, bounds: Bounds, mut stream: UnixStream) {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            log::warn!("control connection: reading the peer's credentials: {e}");
            return;
        }
    };
    let Some(_connection) = bounds.connection(uid == 0) else {
        let limit = if uid == 0 {
            ROOT_CONNECTIONS
        } else {
            OTHER_CONNECTIONS
        };
        let why = format!("{limit} connections of its kind are open");
        answer(&mut stream, Response::Error(busy(why))).await;
        return drain(&mut stream).await;
    };
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let response = match request {
        Ok(request) => serve(daemon, &bounds, uid, request).await,
        Err(e) => Response::Error(e),
    };
    answer(&mut stream, response).await;
}

/// Serves `request` from a peer of uid `uid`, in its turn.
async fn serve(daemon: Arc<Daemon>, bounds: &Bounds, uid: u32, request: Request) -> Response {
    if let Err(e) = authorize(uid, &request) {
        log::warn!("refused a request from uid {uid}: {}", e.message);
        return Response::Error(e);
    }
    let turn = match bounds.turn(uid == 0, &request).await {
        Ok(turn) => turn,
        Err(e) => return Response::Error(e),
    };
    let cni = cni_span(&request);
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let Some((verb, span)) = cni else {
            return daemon.handle(request);
        };
        let _in = span.enter();
        let started = std::time::Instant::now();
        let response = daemon.handle(request);
        let took = started.elapsed();
        let ok = matches!(response, Response::Ok(_));
        daemon.metrics.cni_request(verb, ok, took);
        log::info!(
            "{verb} {} in {:.1} ms",
            if ok { "done" } else { "failed" },
            took.as_secs_f64() * 1e3
        );
        response
    })
    .await
    .unwrap_or_else(|_| {
        Response::Error(ErrorReply {
            kind: ErrorKind::Internal,
            message: "the request handler panicked".into(),
        })
    })
}

/// A CNI verb's name as the metrics give it, and the span its logs are in: the
/// verb, the container id and the pod. None for a query.
fn cni_span(request: &Request) -> Option<(&'static str, tracing::Span)> {
    let (verb, container_id, pod) = match request {
        Request::Attach(r) => ("add", r.container_id.as_str(), r.pod.as_ref()),
        Request::Detach(r) => ("del", r.container_id.as_str(), None),
        Request::Check(r) => ("check", r.container_id.as_str(), None),
        Request::Gc(_) => ("gc", "", None),
        _ => return None,
    };
    let pod = pod.map(|p| format!("{}/{}", p.namespace, p.name));
    let span = tracing::info_span!(
        "cni",
        verb,
        container_id,
        pod = pod.as_deref().unwrap_or("")
    );
    Some((verb, span))
}

/// Writes `response` and shuts down the writing half.
async fn answer(stream: &mut UnixStream, response: Response) {
    let _ = stream.write_all(&proto::encode_response(response)).await;
    let _ = stream.shutdown().await;
}

/// Reads and throws away what the client sends, until it is done or
/// [`BUSY_DRAIN`] has passed.
async fn drain(stream: &mut UnixStream) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(BUSY_DRAIN, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Binds the control socket, refusing to take over one a live daemon answers on.
///
/// The socket is `0600`, root's, or with `group` `0660` and that group's. Its mode
/// is set on the socket before it is bound, so the file is never made wider (the
/// umask may only narrow it, and the mode is set again after).
pub fn bind_socket(path: &Path, group: Option<u32>) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::Invalid(format!(
                "another weftd is serving {}",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(io_err(format!("removing stale socket {}", path.display())))?;
    }
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    let binding = io_err(format!("binding {}", path.display()));
    let socket = listening_socket(path, mode).map_err(binding)?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, Some(0), Some(gid))
            .map_err(io_err(format!("giving {} to group {gid}", path.display())))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("setting permissions of {}", path.display())))?;
    UnixListener::from_std(socket).map_err(io_err(format!("listening on {}", path.display())))
}

/// A Unix stream socket of mode `mode`, bound to `path` and listening.
fn listening_socket(path: &Path, mode: u32) -> std::io::Result<std::os::unix::net::UnixListener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    // The bound file takes the socket's mode (less the umask).
    nix::sys::stat::fchmod(&socket, nix::sys::stat::Mode::from_bits_truncate(mode))?;
    socket.bind(&SockAddr::unix(path)?)?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(std::os::unix::net::UnixListener::from(
        std::os::fd::OwnedFd::from(socket),
    ))
}

/// Watches the cluster store, applying each new view to the daemon: one at a time
/// and in order, the newest replacing any that waits (an older view applied after a
/// newer one would bring back a node that left).
fn watch_store(daemon: &Arc<Daemon>) -> [tokio::task::JoinHandle<()>; 2] {
    let (tx, mut rx) = tokio::sync::watch::channel(None::<ClusterView>);
    let d = daemon.clone();
    let apply = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(view) = rx.borrow_and_update().clone() else {
                continue;
            };
            let d = d.clone();
            // Publishing takes the state lock: off the runtime's own threads.
            let applied = tokio::task::spawn_blocking(move || d.apply_view(&view)).await;
            match applied {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => log::error!("cluster store: {e}; keeping the previous peers"),
                Err(e) => log::error!("cluster store: applying a view failed: {e}"),
            }
        }
    });
    // Weak: the store holds this callback, and the daemon holds the store.
    let d = Arc::downgrade(daemon);
    let watch = daemon.store.clone().watch(Box::new(move |view| {
        if let Some(d) = d.upgrade() {
            d.metrics.store_updated();
        }
        tx.send_replace(Some(view));
    }));
    [watch, apply]
}

/// Serves the control socket and watches the store until SIGTERM or SIGINT, then
/// shuts down: workers stop, the host port goes, the socket is removed.
///
/// With `metrics`, `/metrics` is served on it too.
pub async fn run(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    metrics: Option<tokio::net::TcpListener>,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT handler"))?;
    let watch = watch_store(&daemon);
    let policy = crate::control::netpol_source::watch_dir(&daemon);
    let metrics = metrics.map(|l| {
        if let Ok(addr) = l.local_addr() {
            log::info!("serving metrics at http://{addr}/metrics");
        }
        tokio::spawn(crate::control::metrics::serve(daemon.clone(), l))
    });
    let socket = daemon.settings.socket.clone();
    log::info!(
        "weftd {} serving {} ({} mode{}, {} workers, {} store)",
        daemon.node.name,
        socket.display(),
        daemon.settings.tunnel.mode,
        if daemon.settings.tunnel.direct_routing && daemon.settings.tunnel.mode != Mode::Direct {
            " with direct routing"
        } else {
            ""
        },
        daemon.settings.datapath.workers,
        daemon.store.kind(),
    );
    let bounds = Bounds::new();
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    tokio::spawn(serve_conn(daemon.clone(), bounds.clone(), stream));
                }
                Err(e) => log::warn!("accepting on {}: {e}", socket.display()),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    log::info!("shutting down");
    for task in watch {
        task.abort();
    }
    for task in policy.into_iter().chain(metrics) {
        task.abort();
    }
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    let d = daemon.clone();
    tokio::task::spawn_blocking(move || d.shutdown())
        .await
        .map_err(|_| DaemonError::Invalid("shutdown panicked".into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use futures_util::FutureExt;
    use weft_proto::{CheckRequest, DetachRequest, GcRequest};

    use super::*;

    fn detach() -> Request {
        Request::Detach(DetachRequest {
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: None,
        })
    }

    fn check() -> Request {
        Request::Check(CheckRequest {
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
        })
    }

    /// Attach, detach and gc need uid 0; check and the queries do not.
    #[test]
    fn only_root_changes_state() {
        let gc = Request::Gc(GcRequest { valid: vec![] });
        let attach: Request = serde_json::from_str(
            r#"{"verb": "attach", "container_id": "c", "netns": "/x", "ifname": "eth0"}"#,
        )
        .expect("an attach");
        for request in [attach, detach(), gc] {
            let refused = authorize(1000, &request).expect_err("refused");
            assert_eq!(refused.kind, ErrorKind::PermissionDenied);
            assert!(refused.message.contains("uid 1000"), "{refused:?}");
            assert!(authorize(0, &request).is_ok(), "root may {request:?}");
        }
        let queries = [
            Request::Status,
            Request::Ports,
            Request::Routes,
            Request::Services,
        ];
        for request in queries.into_iter().chain([check()]) {
            assert!(authorize(1000, &request).is_ok(), "{request:?}");
        }
    }

    /// Queries over their bound are busy, whoever asks, and never take a turn of
    /// root's CNI verbs, which wait for one instead of being refused.
    #[tokio::test]
    async fn queries_and_cni_verbs_have_separate_turns() {
        let bounds = Bounds::new();
        let mut queries = Vec::new();
        for _ in 0..QUERIES_AT_ONCE {
            queries.push(bounds.turn(true, &Request::Status).await.expect("a turn"));
        }
        let busy = bounds.turn(true, &Request::Status).await.expect_err("busy");
        assert_eq!(busy.kind, ErrorKind::Busy);
        // A CNI verb of another peer is served as one of its queries.
        for _ in 0..QUERIES_AT_ONCE {
            queries.push(bounds.turn(false, &check()).await.expect("a turn"));
        }
        let busy = bounds.turn(false, &check()).await.expect_err("busy");
        assert_eq!(busy.kind, ErrorKind::Busy);
        let mut cni = Vec::new();
        for _ in 0..CNI_AT_ONCE {
            cni.push(bounds.turn(true, &detach()).await.expect("a turn"));
        }
        let request = detach();
        let next = bounds.turn(true, &request);
        tokio::pin!(next);
        assert!((&mut next).now_or_never().is_none(), "it waits its turn");
        drop(cni.pop());
        let _turn = next.await.expect("its turn came");
        drop(queries.pop());
        let _turn = bounds.turn(false, &Request::Status).await.expect("a turn");
    }

    /// Readers of the socket group that hold every turn of theirs leave root's
    /// queries (the liveness probe) served.
    #[tokio::test]
    async fn other_readers_cannot_keep_roots_queries_busy() {
        let bounds = Bounds::new();
        let held: Vec<_> = (0..QUERIES_AT_ONCE)
            .map(|_| bounds.turn(false, &Request::Status).now_or_never())
            .map(|t| t.expect("ready").expect("a turn"))
            .collect();
        let busy = bounds
            .turn(false, &Request::Status)
            .await
            .expect_err("busy");
        assert_eq!(busy.kind, ErrorKind::Busy);
        let _root = bounds
            .turn(true, &Request::Status)
            .await
            .expect("root's turn");
        drop(held);
        let _turn = bounds.turn(false, &Request::Status).await.expect("a turn");
    }

    /// Root's connections and the others' have bounds of their own.
    #[test]
    fn connections_are_bounded_per_kind_of_peer() {
        let bounds = Bounds::new();
        let others: Vec<_> = (0..OTHER_CONNECTIONS)
            .map(|_| bounds.connection(false).expect("a place"))
            .collect();
        assert!(bounds.connection(false).is_none(), "over the bound");
        let root: Vec<_> = (0..ROOT_CONNECTIONS)
            .map(|_| bounds.connection(true).expect("root has its own"))
            .collect();
        assert!(bounds.connection(true).is_none(), "over the bound");
        drop((others, root));
        assert!(bounds.connection(false).is_some());
    }

    /// The socket is 0600 and root's with no group, 0660 and the group's with one;
    /// a live one is not taken over.
    #[test]
    fn the_socket_is_roots_or_its_groups() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a runtime");
        let _in = rt.enter();
        let dir = std::env::temp_dir().join(format!("weft-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mode = |p: &Path| {
            let m = std::fs::metadata(p).expect("the socket");
            (m.mode() & 0o777, m.uid(), m.gid())
        };
        let private = dir.join("private.sock");
        let listener = bind_socket(&private, None).expect("bound");
        assert_eq!(mode(&private), (0o600, 0, 0));
        let again = bind_socket(&private, None).expect_err("a live socket");
        assert!(again.to_string().contains("another weftd"), "{again}");
        drop(listener);
        let shared = dir.join("shared.sock");
        let _listener = bind_socket(&shared, Some(4242)).expect("bound");
        assert_eq!(mode(&shared), (0o660, 0, 4242));
        std::fs::remove_dir_all(&dir).expect("cleaned up");
    }
}
