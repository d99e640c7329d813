//! A real etcd for tests and the harness: one member on 127.0.0.1, with its data
//! under a directory the caller owns, stopped by PID; and a bridge that carries a
//! host namespace's `127.0.0.1:2379` to it, since a weftd in a network namespace
//! cannot reach the root namespace's loopback.
//!
//! [`Etcd::start_secure`] starts one that speaks TLS only and wants a client
//! certificate, from a CA made for it: etcd then takes a client's user name from
//! its certificate's common name, as a cluster with per-node credentials does.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::{run_cmd, wait_until, ChildGuard, Netns};
use crate::weft::in_netns;

/// The port a bridge serves inside a host namespace: etcd's usual one.
pub const BRIDGE_PORT: u16 = 2379;

/// The endpoint a weftd behind a [`Bridge`] is given.
pub fn bridged_endpoint() -> String {
    format!("http://127.0.0.1:{BRIDGE_PORT}")
}

/// A free TCP port on 127.0.0.1 now (it may be taken again before it is used; a
/// start that fails for it is tried again).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// One etcd member, on 127.0.0.1 with ports of its own.
#[derive(Debug)]
pub struct Etcd {
    dir: PathBuf,
    client: u16,
    peer: u16,
    metrics: u16,
    child: Option<ChildGuard>,
    /// Where the certificates are, for an etcd that speaks TLS.
    tls: Option<PathBuf>,
}

/// A client's TLS files for an etcd of [`Etcd::start_secure`].
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The CA that signed etcd's certificate.
    pub ca: PathBuf,
    /// The client's certificate, its common name the user's name.
    pub cert: PathBuf,
    /// The certificate's key.
    pub key: PathBuf,
}

/// Makes a CA in `dir`, a server certificate for 127.0.0.1 and a client
/// certificate for each of `users` (as its common name), as PEM files.
fn make_certificates(dir: &Path, users: &[&str]) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    std::fs::create_dir_all(dir)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "weft test etcd CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    let clients = users
        .iter()
        .map(|u| (*u, ExtendedKeyUsagePurpose::ClientAuth));
    for (name, usage) in [("server", ExtendedKeyUsagePurpose::ServerAuth)]
        .into_iter()
        .chain(clients)
    {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca)?;
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(())
}

impl Etcd {
    /// Starts etcd with its data and log in `dir` (created), and waits until it
    /// answers.
    pub fn start(dir: &Path) -> Result<Etcd> {
        Etcd::start_with(dir, None)
    }

    /// Starts etcd as [`Etcd::start`] does, speaking TLS only and asking every
    /// client for a certificate of its own CA. Each of `users`, and `root`, has
    /// one ([`Etcd::credentials`]); [`Etcd::ctl`] is `root`'s. Authentication is
    /// not enabled: that is the caller's to do, as an operator would.
    pub fn start_secure(dir: &Path, users: &[&str]) -> Result<Etcd> {
        let tls = dir.join("tls");
        let mut all = vec!["root"];
        all.extend_from_slice(users);
        make_certificates(&tls, &all).context("making etcd's certificates")?;
        Etcd::start_with(dir, Some(tls))
    }

    fn start_with(dir: &Path, tls: Option<PathBuf>) -> Result<Etcd> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut last = None;
        for _ in 0..3 {
            let mut etcd = Etcd {
                dir: dir.to_path_buf(),
                client: free_port()?,
                peer: free_port()?,
                metrics: free_port()?,
                child: None,
                tls: tls.clone(),
            };
            match etcd.launch() {
                Ok(()) => return Ok(etcd),
                Err(e) => {
                    // A port taken in between: a fresh data dir and other ports.
                    let _ = std::fs::remove_dir_all(etcd.data());
                    last = Some(e);
                }
            }
        }
        Err(last.expect("three tries"))
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The log etcd writes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// The client endpoint on 127.0.0.1.
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client)
    }

    /// `https` for an etcd of [`Etcd::start_secure`], else `http`.
    pub fn scheme(&self) -> &'static str {
        match self.tls {
            Some(_) => "https",
            None => "http",
        }
    }

    /// The TLS files of `user`, for an etcd of [`Etcd::start_secure`] that made
    /// them.
    pub fn credentials(&self, user: &str) -> Option<Credentials> {
        let dir = self.tls.as_ref()?;
        let cert = dir.join(format!("{user}.crt"));
        cert.exists().then(|| Credentials {
            ca: dir.join("ca.crt"),
            key: dir.join(format!("{user}.key")),
            cert,
        })
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    fn launch(&mut self) -> Result<()> {
        let url = |p: u16| format!("http://127.0.0.1:{p}");
        let log = std::fs::File::create(self.log_path()).context("creating etcd's log")?;
        let mut cmd = Command::new("etcd");
        if let Some(dir) = &self.tls {
            cmd.arg("--cert-file")
                .arg(dir.join("server.crt"))
                .arg("--key-file")
                .arg(dir.join("server.key"))
                .arg("--trusted-ca-file")
                .arg(dir.join("ca.crt"))
                .arg("--client-cert-auth");
        }
        cmd.arg("--name")
            .arg("weft-test")
            .arg("--data-dir")
            .arg(self.data())
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &url(self.peer)])
            .args(["--initial-advertise-peer-urls", &url(self.peer)])
            .args(["--listen-metrics-urls", &url(self.metrics)])
            .args([
                "--initial-cluster",
                &format!("weft-test={}", url(self.peer)),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child =
            ChildGuard::spawn(&mut cmd).context("starting etcd (apt install etcd-server)")?;
        let ready = wait_until(Duration::from_secs(20), "etcd to answer", || {
            matches!(child.try_wait(), Ok(Some(_))) || self.ctl(&["endpoint", "health"]).is_ok()
        });
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "etcd exited with {status} while starting:\n{}",
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
        }
        ready?;
        self.child = Some(child);
        Ok(())
    }

    /// Runs `etcdctl` (API v3) against this member, as `root` on one that
    /// speaks TLS.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.ctl_as("root", args)
    }

    /// Runs `etcdctl` (API v3) against this member, with `user`'s certificate
    /// on one that speaks TLS.
    pub fn ctl_as(&self, user: &str, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(["--dial-timeout", "2s", "--command-timeout", "5s"]);
        if let Some(c) = self.credentials(user) {
            cmd.arg("--cacert")
                .arg(c.ca)
                .arg("--cert")
                .arg(c.cert)
                .arg("--key")
                .arg(c.key);
        }
        run_cmd(cmd.args(args))
    }

    /// Writes `value` at `key`.
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        // `--` ends the flags: a value may start with a dash.
        self.ctl(&["put", "--", key, value]).map(drop)
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self.ctl(&["get", "--prefix", "--keys-only", prefix])?;
        Ok(out
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The value at `key`, if there is one.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let out = self.ctl(&["get", "--print-value-only", key])?;
        Ok(out.lines().next().map(str::to_owned))
    }

    /// Stops etcd (SIGTERM, then SIGKILL), keeping its data.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(child) = self.child.take() {
            child.stop()?;
        }
        Ok(())
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(self.data());
    }
}

/// Carries TCP from `127.0.0.1:2379` in a host namespace to an etcd in the root
/// namespace, a thread per direction of each connection. It can be cut, to test a
/// node that loses the store while the store lives on.
#[derive(Debug)]
pub struct Bridge {
    stop: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Bridge {
    /// A bridge from `ns`'s loopback to `etcd`.
    pub fn new(ns: &Netns, etcd: SocketAddr) -> Result<Bridge> {
        // The listener is made inside the namespace and stays there; everything
        // else happens in this one.
        let listener = in_netns(ns, || TcpListener::bind(("127.0.0.1", BRIDGE_PORT)))?
            .with_context(|| format!("binding 127.0.0.1:{BRIDGE_PORT} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Vec::new()));
        let (s, c, l) = (stop.clone(), cut.clone(), live.clone());
        let accept = std::thread::Builder::new()
            .name("etcd-bridge".into())
            .spawn(move || accept_loop(&listener, etcd, &s, &c, &l))?;
        Ok(Bridge {
            stop,
            cut,
            live,
            accept: Some(accept),
        })
    }

    /// Cuts every connection and refuses new ones (`true`), or carries them again.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            for s in self.live.lock().expect("bridge lock").drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.set_cut(true);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    etcd: SocketAddr,
    stop: &AtomicBool,
    cut: &AtomicBool,
    live: &Mutex<Vec<TcpStream>>,
) {
    while !stop.load(Ordering::SeqCst) {
        let inner = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(_) => continue,
        };
        if cut.load(Ordering::SeqCst) {
            continue;
        }
        let Ok(outer) = TcpStream::connect_timeout(&etcd, Duration::from_secs(1)) else {
            continue;
        };
        let _ = inner.set_nonblocking(false);
        let pairs = [
            (inner.try_clone(), outer.try_clone()),
            (outer.try_clone(), inner.try_clone()),
        ];
        let mut held = live.lock().expect("bridge lock");
        held.push(inner);
        held.push(outer);
        for pair in pairs {
            if let (Ok(from), Ok(to)) = pair {
                let _ = std::thread::Builder::new()
                    .name("etcd-bridge-copy".into())
                    .spawn(move || copy(from, to));
            }
        }
    }
}

/// Copies `from` to `to` until either ends, then ends both.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
