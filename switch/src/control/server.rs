//! The control socket, the store's watch and the signals: what `weftd` runs until it
//! is told to stop.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use weft_proto::{self as proto, ErrorKind, ErrorReply, RequestReader, Response};

use crate::control::config::Mode;
use crate::control::daemon::Daemon;
use crate::control::error::{io_err, DaemonError};
use crate::control::store::ClusterView;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one request from `stream`, as the protocol frames it.
async fn read_request(stream: &mut UnixStream) -> Option<Result<proto::Request, ErrorReply>> {
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

async fn serve_conn(daemon: Arc<Daemon>, mut stream: UnixStream) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let response = match request {
        Ok(request) => tokio::task::spawn_blocking(move || daemon.handle(request))
            .await
            .unwrap_or_else(|_| {
                Response::Error(ErrorReply {
                    kind: ErrorKind::Internal,
                    message: "the request handler panicked".into(),
                })
            }),
        Err(e) => Response::Error(e),
    };
    let _ = stream.write_all(&proto::encode_response(response)).await;
    let _ = stream.shutdown().await;
}

/// Binds the control socket, refusing to take over one a live daemon answers on.
pub fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
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
    let listener =
        UnixListener::bind(path).map_err(io_err(format!("binding {}", path.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io_err(format!("setting permissions of {}", path.display())))?;
    Ok(listener)
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
    let watch = daemon.store.clone().watch(Box::new(move |view| {
        tx.send_replace(Some(view));
    }));
    [watch, apply]
}

/// Serves the control socket and watches the store until SIGTERM or SIGINT, then
/// shuts down: workers stop, the host port goes, the socket is removed.
pub async fn run(daemon: Arc<Daemon>, listener: UnixListener) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT handler"))?;
    let watch = watch_store(&daemon);
    let policy = crate::control::netpol_source::watch_dir(&daemon);
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
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => { tokio::spawn(serve_conn(daemon.clone(), stream)); }
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
    if let Some(p) = policy {
        p.abort();
    }
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    let d = daemon.clone();
    tokio::task::spawn_blocking(move || d.shutdown())
        .await
        .map_err(|_| DaemonError::Invalid("shutdown panicked".into()))?;
    Ok(())
}
