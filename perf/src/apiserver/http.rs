//! The fixture's HTTPS server: a thread with its own tokio runtime, serving
//! [`State`] with a self-signed CA made at start, to clients with the bearer
//! token it was given.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::{kind_at, Change, Kind, PatchError, State, KINDS};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The largest request body taken.
const MAX_BODY: usize = 1 << 20;
/// The longest a watch may ask to last.
const MAX_WATCH_S: u64 = 3_600;

/// How often an idle watch gets a BOOKMARK.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

/// A request as the fixture logged it: its verb and resource in RBAC's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// `get`, `list`, `watch` or `patch`; `unserved` for a path or method the
    /// fixture does not serve.
    pub verb: &'static str,
    /// The resource with its API group, e.g. `nodes`, `nodes/status` or
    /// `networking.k8s.io/networkpolicies` (the path, for an unserved request).
    pub resource: String,
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    /// Moved on to drop every open watch.
    epoch: AtomicU64,
    log: Mutex<Vec<Logged>>,
    token: String,
}

/// How the fixture makes its listening socket: bound in the caller's network
/// namespace, or wherever the function binds it (inside a test's namespace).
pub type Bind = Arc<dyn Fn(SocketAddr) -> std::io::Result<std::net::TcpListener> + Send + Sync>;

/// A [`Bind`] inside the network namespace mounted at `netns`.
pub fn bind_in(netns: std::path::PathBuf) -> Bind {
    Arc::new(move |addr| {
        crate::weft::in_netns_at(&netns, || std::net::TcpListener::bind(addr))
            .map_err(std::io::Error::other)?
    })
}

/// A running fixture.
pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    bind: Bind,
    ca_pem: String,
    tls: Arc<rustls::ServerConfig>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

fn tls_config(host: std::net::IpAddr) -> Result<(Arc<rustls::ServerConfig>, String)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec![host.to_string(), "localhost".into()])?
        .signed_by(&key, &ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), ca.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    Ok((Arc::new(config), ca.pem()))
}

impl Server {
    /// Serves on `addr` (port 0: any), accepting `token` only.
    pub fn start(addr: SocketAddr, token: &str) -> Result<Server> {
        Server::start_with(addr, token, Arc::new(std::net::TcpListener::bind))
    }

    /// Serves on `addr`, its socket made by `bind` (again after a
    /// [`Server::pause`]): a daemon in a test's network namespace reaches a
    /// fixture listening inside that namespace.
    pub fn start_with(addr: SocketAddr, token: &str, bind: Bind) -> Result<Server> {
        let (tls, ca_pem) = tls_config(addr.ip()).context("making the fixture's certificates")?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            epoch: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            token: token.to_owned(),
        });
        let mut server = Server {
            shared,
            addr,
            bind,
            ca_pem,
            tls,
            runtime: None,
        };
        server.listen()?;
        Ok(server)
    }

    fn listen(&mut self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        // Bound outside the runtime (no block_on: the caller may be async itself),
        // and again for a while if the address is still held: after a pause, the
        // old runtime closes its listener in the background.
        let mut tries = 0;
        let std_listener = loop {
            match (self.bind)(self.addr) {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        std_listener.set_nonblocking(true)?;
        self.addr = std_listener.local_addr()?;
        let listener = {
            let _in_runtime = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let shared = self.shared.clone();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |r| handle(shared.clone(), r));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        self.runtime = Some(runtime);
        Ok(())
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA that signed its certificate, in PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A kubeconfig (YAML) that reaches it with `token`.
    pub fn kubeconfig(&self, token: &str) -> String {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fixture\n  cluster:\n    server: https://{}\n    certificate-authority-data: {ca}\nusers:\n- name: weft\n  user:\n    token: {token}\ncontexts:\n- name: fixture\n  context:\n    cluster: fixture\n    user: weft\ncurrent-context: fixture\n",
            self.addr
        )
    }

    /// Runs `f` on the store, then wakes the watches.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.shared.state.lock().expect("the fixture's state"));
        self.shared.changed.notify_waiters();
        r
    }

    /// Creates or replaces an object (JSON as the test writes it).
    pub fn put(&self, kind: Kind, object: Value) -> u64 {
        self.with_state(|s| s.put(kind, object))
    }

    /// Deletes an object.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        self.with_state(|s| s.delete(kind, namespace, name))
    }

    /// Forgets the history: older watches and continue tokens get 410 Gone.
    pub fn compact(&self) {
        self.with_state(State::compact);
    }

    /// Drops every open watch connection, abruptly.
    pub fn drop_watches(&self) {
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.changed.notify_waiters();
    }

    /// Goes away: the listener and every connection close. [`Server::resume`]
    /// comes back on the same address with the same objects.
    pub fn pause(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Comes back after [`Server::pause`].
    pub fn resume(&mut self) -> Result<()> {
        if self.runtime.is_none() {
            self.listen()?;
        }
        Ok(())
    }

    /// The requests served so far.
    pub fn log(&self) -> Vec<Logged> {
        self.shared.log.lock().expect("the fixture's log").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.pause();
    }
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .expect("a valid response")
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code.as_u16()});
    respond(code, &body)
}

/// The query's parameters (kube's queries start with `?&`: empty pairs are skipped).
fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    (req.uri().query().unwrap_or("").split('&'))
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn param<'q>(q: &'q [(String, String)], key: &str) -> Option<&'q str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.strip_prefix("Bearer ") == Some(shared.token.as_str()));
    if !authorized {
        return Ok(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        ));
    }
    let q = query(&req);
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if let Some((p, _)) = q.iter().find(|(k, _)| UNIMPLEMENTED.contains(&k.as_str())) {
        let message = format!("the fixture does not implement {p}");
        return Ok(status(StatusCode::BAD_REQUEST, "BadRequest", &message));
    }
    if let Some(kind) = kind_at(&path) {
        if method != Method::GET {
            let code = StatusCode::METHOD_NOT_ALLOWED;
            return Ok(unserved(&shared, &path, code, "only GET"));
        }
        let watch = param(&q, "watch") == Some("true");
        log(&shared, if watch { "watch" } else { "list" }, kind, "");
        return Ok(if watch {
            watch_response(shared, kind, &q)
        } else {
            list_response(&shared, kind, &q)
        });
    }
    // One Node, or its status.
    let Some(rest) = path.strip_prefix("/api/v1/nodes/") else {
        return Ok(unserved(
            &shared,
            &path,
            StatusCode::NOT_FOUND,
            "no such path",
        ));
    };
    let (name, sub) = match rest.split_once('/') {
        Some((name, "status")) => (name.to_owned(), true),
        Some(_) => {
            return Ok(unserved(
                &shared,
                &path,
                StatusCode::NOT_FOUND,
                "no such path",
            ))
        }
        None => (rest.to_owned(), false),
    };
    let suffix = if sub { "/status" } else { "" };
    if method == Method::GET {
        log(&shared, "get", KINDS[0], suffix);
        let node = shared
            .state
            .lock()
            .expect("state")
            .get(KINDS[0], "", &name)
            .cloned();
        return Ok(match node {
            Some(n) => respond(StatusCode::OK, &n),
            None => status(StatusCode::NOT_FOUND, "NotFound", "no such node"),
        });
    }
    if method != Method::PATCH {
        let code = StatusCode::METHOD_NOT_ALLOWED;
        return Ok(unserved(&shared, &path, code, "GET or PATCH"));
    }
    log(&shared, "patch", KINDS[0], suffix);
    Ok(patch_response(shared, req, &name, sub).await)
}

fn log(shared: &Shared, verb: &'static str, kind: Kind, suffix: &str) {
    let plural = kind.path.rsplit('/').next().unwrap_or(kind.path);
    let resource = match kind.api_version.split_once('/') {
        Some((group, _)) => format!("{group}/{plural}{suffix}"),
        None => format!("{plural}{suffix}"),
    };
    shared
        .log
        .lock()
        .expect("log")
        .push(Logged { verb, resource });
}

/// Logs a request the fixture does not serve, and answers it.
fn unserved(shared: &Shared, path: &str, code: StatusCode, message: &str) -> Response<Body> {
    shared.log.lock().expect("log").push(Logged {
        verb: "unserved",
        resource: path.to_owned(),
    });
    let reason = if code == StatusCode::NOT_FOUND {
        "NotFound"
    } else {
        "MethodNotAllowed"
    };
    status(code, reason, message)
}

/// Query parameters a real API server takes that the fixture does not implement:
/// refused rather than ignored, so that a client relying on one fails here too.
const UNIMPLEMENTED: [&str; 4] = [
    "labelSelector",
    "fieldSelector",
    "resourceVersionMatch",
    "sendInitialEvents",
];

async fn patch_response(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    name: &str,
    status_only: bool,
) -> Response<Body> {
    let content_type = (req.headers().get("content-type"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let Ok(body) = limited.collect().await else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "unreadable or too big a body",
        );
    };
    let Ok(patch) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the patch is not JSON",
        );
    };
    let result =
        shared
            .state
            .lock()
            .expect("state")
            .patch_node(name, status_only, &content_type, &patch);
    shared.changed.notify_waiters();
    match result {
        Ok(node) => respond(StatusCode::OK, &node),
        Err(PatchError::NotFound) => status(StatusCode::NOT_FOUND, "NotFound", "no such node"),
        Err(PatchError::UnsupportedType) => status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "unsupported patch type",
        ),
        Err(PatchError::Invalid(why)) => status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", why),
    }
}

fn list_response(shared: &Shared, kind: Kind, q: &[(String, String)]) -> Response<Body> {
    let limit = param(q, "limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let page = shared
        .state
        .lock()
        .expect("state")
        .list(kind, limit, param(q, "continue"));
    match page {
        Ok(page) => {
            let mut meta = json!({"resourceVersion": page.rv.to_string()});
            if let Some(next) = &page.next {
                meta["continue"] = json!(next);
                meta["remainingItemCount"] = json!(page.remaining);
            }
            let list = json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version,
                              "metadata": meta, "items": page.items});
            respond(StatusCode::OK, &list)
        }
        Err(gone) => respond(StatusCode::GONE, &gone.status()),
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(json!({"type": kind, "object": object}).to_string() + "\n")
}

/// Where a watch stands between the lines it sends.
struct Watch {
    shared: Arc<Shared>,
    kind: Kind,
    /// The last version sent.
    since: u64,
    /// Lines ready to go.
    queue: std::collections::VecDeque<Bytes>,
    epoch: u64,
    deadline: tokio::time::Instant,
    bookmarks: bool,
    done: bool,
}

impl Watch {
    /// Queues the changes since the last version sent (an ERROR event, after
    /// which the watch ends, if the history is gone); with none and `bookmark`,
    /// a BOOKMARK at the current version. One lock for both, so that a bookmark
    /// never passes a change that is not sent yet.
    fn catch_up(&mut self, bookmark: bool) {
        let state = self.shared.state.lock().expect("state");
        match state.changes_since(self.kind, self.since) {
            Ok(changes) if changes.is_empty() && bookmark => {
                let rv = state.resource_version().max(self.since);
                let object = json!({"kind": self.kind.kind, "apiVersion": self.kind.api_version,
                                    "metadata": {"resourceVersion": rv.to_string()}});
                self.queue.push_back(event_line("BOOKMARK", &object));
            }
            Ok(changes) => {
                for Change {
                    rv, kind, object, ..
                } in changes
                {
                    self.queue.push_back(event_line(kind, &object));
                    self.since = rv;
                }
            }
            Err(gone) => {
                self.queue.push_back(event_line("ERROR", &gone.status()));
                self.done = true;
            }
        }
    }

    /// The next line, or the end of the watch (`None`), or an abrupt end.
    async fn next(&mut self) -> Option<Result<Frame<Bytes>, std::io::Error>> {
        loop {
            if let Some(line) = self.queue.pop_front() {
                return Some(Ok(Frame::data(line)));
            }
            if self.done || tokio::time::Instant::now() >= self.deadline {
                return None;
            }
            // Registered before the state and the epoch are read, so no change
            // and no drop slips between.
            let shared = self.shared.clone();
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.shared.epoch.load(Ordering::SeqCst) != self.epoch {
                return Some(Err(std::io::Error::other("the fixture dropped the watch")));
            }
            self.catch_up(false);
            if !self.queue.is_empty() {
                continue;
            }
            let wait = BOOKMARK_EVERY.min(self.deadline - tokio::time::Instant::now());
            if tokio::time::timeout(wait, changed).await.is_err() && self.bookmarks {
                self.catch_up(true);
            }
        }
    }
}

fn watch_response(shared: Arc<Shared>, kind: Kind, q: &[(String, String)]) -> Response<Body> {
    let timeout = param(q, "timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(1800u64)
        .min(MAX_WATCH_S);
    let asked = param(q, "resourceVersion").and_then(|v| v.parse::<u64>().ok());
    let mut queue = std::collections::VecDeque::new();
    let since = {
        let state = shared.state.lock().expect("state");
        match asked {
            Some(rv) if rv > 0 => rv,
            // No version, or 0: the current objects as ADDED, then what follows.
            _ => {
                let page = state_snapshot(&state, kind);
                queue.extend(page.iter().map(|o| event_line("ADDED", o)));
                state.resource_version()
            }
        }
    };
    let watch = Watch {
        epoch: shared.epoch.load(Ordering::SeqCst),
        shared,
        kind,
        since,
        queue,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        bookmarks: param(q, "allowWatchBookmarks") == Some("true"),
        done: false,
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())))
        .expect("a valid response")
}

fn state_snapshot(state: &State, kind: Kind) -> Vec<Value> {
    state
        .objects
        .get(&kind)
        .map(|o| o.values().cloned().collect())
        .unwrap_or_default()
}
