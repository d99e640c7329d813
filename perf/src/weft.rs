//! Running real `weftd` processes on the hosts of a topology, and talking to them
//! over their control sockets.

use std::fmt::Write as _;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use weft_proto::{
    self as proto, AttachRequest, Attachment, DetachRequest, Reply, Request, Response,
};

use crate::netns::{wait_until, ChildGuard, Netns};
use crate::topo::{kernel_vxlan, Host, Mac, Pod, Underlay};

/// The cluster CIDR every topology uses.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// The cluster's IPv6 range the dual-stack topologies use: a cluster whose options
/// give `--cluster-cidr-v6` gives each node [`pod_subnet6`] of it.
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/56";

/// The IPv6 pod subnet the fixtures give `host` in a dual-stack cluster:
/// `fd00:10:244:<n>::/64` beside its IPv4 `10.244.<n>.0/24`.
pub fn pod_subnet6(host: &Host) -> ipnet::Ipv6Net {
    let n = host.pod_subnet.network().octets()[2];
    let net = std::net::Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(n), 0, 0, 0, 0);
    ipnet::Ipv6Net::new(net, 64).expect("a /64 is a valid prefix")
}

/// Adds the flags that choose weftd's store (and its pod subnets, if any) to `cmd`.
fn store_args(cmd: &mut std::process::Command, host: &Host, store: Store<'_>, opts: &WeftOptions) {
    match store {
        Store::Peers(peers) => {
            // A dual-stack cluster's node gets its IPv6 subnet unless the caller
            // gives one.
            let own6 = |a: &String| a.starts_with("--pod-subnet-v6");
            if dual_stack(opts) && !opts.extra.iter().any(own6) {
                cmd.args(["--pod-subnet-v6", &pod_subnet6(host).to_string()]);
            }
            cmd.args(["--pod-subnet", &host.pod_subnet.to_string()])
                .arg("--peers")
                .arg(peers)
        }
        Store::Etcd => cmd.args([
            "--store",
            "etcd",
            "--etcd-endpoints",
            &crate::etcd::bridged_endpoint(),
        ]),
        Store::Kubernetes(kubeconfig) => cmd
            .args(["--store", "kubernetes", "--kubeconfig"])
            .arg(kubeconfig),
        Store::Given(args) => cmd.args(args),
    };
}

/// Whether `opts` ask for a dual-stack cluster (they give `--cluster-cidr-v6`).
fn dual_stack(opts: &WeftOptions) -> bool {
    opts.extra
        .iter()
        .any(|a| a == "--cluster-cidr-v6" || a.starts_with("--cluster-cidr-v6="))
}

/// A node in a peers file.
#[derive(Debug, Clone)]
pub struct PeerNode {
    /// Node name.
    pub name: String,
    /// Underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Pod subnet.
    pub pod_subnet: ipnet::Ipv4Net,
    /// IPv6 pod subnet, on a dual-stack node.
    pub pod_subnet_v6: Option<ipnet::Ipv6Net>,
    /// VTEP MAC.
    pub vtep_mac: Mac,
    /// Its public key for the encrypted sleeve, if it has one.
    pub public_key: Option<String>,
    /// Its `direct-routing`, where the file says (a node that reads no value runs
    /// the node as it runs itself).
    pub direct_routing: Option<bool>,
}

impl PeerNode {
    /// The entry of `host` with the fixture's naming: `node-<index>`, VTEP MAC
    /// [`kernel_vxlan::vtep_mac`].
    pub fn of(host: &Host) -> PeerNode {
        PeerNode {
            name: node_name(host),
            underlay_ip: host.underlay_ip,
            pod_subnet: host.pod_subnet,
            pod_subnet_v6: None,
            vtep_mac: kernel_vxlan::vtep_mac(host.index),
            public_key: None,
            direct_routing: None,
        }
    }
}

/// The node name the fixtures give host `host`.
pub fn node_name(host: &Host) -> String {
    format!("node-{}", host.index)
}

/// The state directory weftd of `host` gets under `dir`.
pub fn state_dir(host: &Host, dir: &Path) -> PathBuf {
    dir.join(format!("{}.state", node_name(host)))
}

/// The public key of `host`'s weftd (`weftd --show-key`), made in its state
/// directory under `dir` if it has none yet: for the peers file of an encrypted
/// cluster.
pub fn node_key(binary: &Path, host: &Host, dir: &Path) -> Result<String> {
    let out = crate::netns::run_cmd(
        std::process::Command::new(binary)
            .arg("--show-key")
            .arg("--state-dir")
            .arg(state_dir(host, dir)),
    )?;
    Ok(out.trim().to_owned())
}

/// Renders a peers file.
pub fn peers_toml(nodes: &[PeerNode]) -> String {
    let mut out = String::new();
    for n in nodes {
        let _ = write!(
            out,
            "[[node]]\nname = \"{}\"\nunderlay-ip = \"{}\"\npod-subnet = \"{}\"\nvtep-mac = \"{}\"\n",
            n.name, n.underlay_ip, n.pod_subnet, n.vtep_mac
        );
        if let Some(s6) = n.pod_subnet_v6 {
            let _ = writeln!(out, "pod-subnet-v6 = \"{s6}\"");
        }
        if let Some(key) = &n.public_key {
            let _ = writeln!(out, "public-key = \"{key}\"");
        }
        if let Some(direct) = n.direct_routing {
            let _ = writeln!(out, "direct-routing = {direct}");
        }
        out.push('\n');
    }
    out
}

/// Writes a file atomically (temporary file, then rename), as a reloaded file must be.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// A private directory for one test's sockets and files, removed on drop.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `/tmp/weft-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Result<Scratch> {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "weft-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// How long a starting weftd may take to answer on its control socket.
const READY: Duration = Duration::from_secs(20);

/// How to run weftd.
#[derive(Debug, Clone)]
pub struct WeftOptions {
    /// Path of the weftd binary.
    pub binary: PathBuf,
    /// "vxlan" or "sleeve".
    pub mode: String,
    /// Worker threads.
    pub workers: usize,
    /// Further flags.
    pub extra: Vec<String>,
}

/// Where a weftd learns the cluster.
#[derive(Debug, Clone, Copy)]
enum Store<'a> {
    /// A peers file, and the host's pod subnet.
    Peers(&'a Path),
    /// etcd, through the host's bridge.
    Etcd,
    /// The API server, with this kubeconfig.
    Kubernetes(&'a Path),
    /// As the caller says.
    Given(&'a [String]),
}

/// A weftd running on a host, stopped (SIGTERM) on drop.
#[derive(Debug)]
pub struct WeftNode {
    /// Control socket path.
    pub socket: PathBuf,
    /// Node name.
    pub name: String,
    /// Log file of the daemon.
    pub log: PathBuf,
    child: ChildGuard,
}

impl WeftNode {
    /// Starts weftd in `host`'s namespace with the peers file at `peers`, and waits until
    /// it answers on its control socket. `dir` holds the socket and the log.
    pub fn start(host: &Host, peers: &Path, dir: &Path, opts: &WeftOptions) -> Result<WeftNode> {
        WeftNode::launch(host, Store::Peers(peers), dir, opts, None, READY, &[])
    }

    /// Like [`WeftNode::start`], with `env` added to weftd's environment (its test
    /// hooks).
    pub fn start_env(
        host: &Host,
        peers: &Path,
        dir: &Path,
        opts: &WeftOptions,
        env: &[(&str, &str)],
    ) -> Result<WeftNode> {
        WeftNode::launch(host, Store::Peers(peers), dir, opts, None, READY, env)
    }

    /// Starts weftd in `host`'s namespace on the etcd store, reached through a
    /// [`crate::etcd::Bridge`] on the namespace's `127.0.0.1:2379`: it claims a
    /// subnet unless `opts.extra` gives one.
    pub fn start_etcd(host: &Host, dir: &Path, opts: &WeftOptions) -> Result<WeftNode> {
        WeftNode::launch(host, Store::Etcd, dir, opts, None, READY, &[])
    }

    /// Starts weftd in `host`'s namespace on the Kubernetes store, reaching the
    /// API server with `kubeconfig`: its subnet is its Node's podCIDR.
    pub fn start_kube(
        host: &Host,
        kubeconfig: &Path,
        dir: &Path,
        opts: &WeftOptions,
    ) -> Result<WeftNode> {
        WeftNode::launch(
            host,
            Store::Kubernetes(kubeconfig),
            dir,
            opts,
            None,
            READY,
            &[],
        )
    }

    /// Starts weftd in `host`'s namespace with `store` as the flags that choose its
    /// store (and its pod subnet, if any), waiting up to `ready` for it to answer:
    /// a daemon that reads a large store first needs longer than the usual 20 s.
    pub fn start_with_store(
        host: &Host,
        dir: &Path,
        opts: &WeftOptions,
        store: &[String],
        ready: Duration,
    ) -> Result<WeftNode> {
        WeftNode::launch(host, Store::Given(store), dir, opts, None, ready, &[])
    }

    /// Like [`WeftNode::start`], but weftd runs in a process group of its own, so a
    /// terminal's Ctrl-C reaches only this process, which then stops weftd in order
    /// (after detaching its pods) instead of racing it. `spawned` hears weftd's pid as
    /// soon as it exists, before it is ready (to record it where a killed caller's
    /// successor finds it); an error from it stops weftd and fails the start.
    pub fn start_isolated(
        host: &Host,
        peers: &Path,
        dir: &Path,
        opts: &WeftOptions,
        spawned: &mut dyn FnMut(u32) -> Result<()>,
    ) -> Result<WeftNode> {
        WeftNode::launch(
            host,
            Store::Peers(peers),
            dir,
            opts,
            Some(spawned),
            READY,
            &[],
        )
    }

    fn launch(
        host: &Host,
        store: Store<'_>,
        dir: &Path,
        opts: &WeftOptions,
        isolated: Option<&mut dyn FnMut(u32) -> Result<()>>,
        ready_within: Duration,
        env: &[(&str, &str)],
    ) -> Result<WeftNode> {
        let name = node_name(host);
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let state = state_dir(host, dir);
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = host.ns.cmd(&opts.binary);
        cmd.args(["--node-name", &name])
            .args(["--underlay-ip", &host.underlay_ip.to_string()]);
        store_args(&mut cmd, host, store, opts);
        // The fixtures' cluster CIDR, unless the caller gives one.
        let own_cidr = |a: &String| a == "--cluster-cidr" || a.starts_with("--cluster-cidr=");
        if !opts.extra.iter().any(own_cidr) {
            cmd.args(["--cluster-cidr", CLUSTER_CIDR]);
        }
        cmd.args(["--mode", &opts.mode])
            .args(["--workers", &opts.workers.to_string()])
            .args(["--underlay-mtu", &host.underlay_mtu.to_string()])
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .args(&opts.extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if isolated.is_some() {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        let mut child = ChildGuard::spawn(&mut cmd)?;
        if let Some(spawned) = isolated {
            spawned(child.pid())?;
        }
        let ready = wait_until(ready_within, "weftd to answer", || {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            matches!(
                proto::call(&socket, &Request::Status, Duration::from_secs(2)),
                Ok(Response::Ok(_))
            )
        });
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "weftd on {} exited with {status} while starting:\n{}",
                host.ns.name(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        ready.with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        Ok(WeftNode {
            socket,
            name,
            log,
            child,
        })
    }

    /// The daemon's STATUS.
    pub fn status(&self) -> Result<proto::Status> {
        match self.ok(&Request::Status)? {
            Reply::Status(s) => Ok(*s),
            other => bail!("unexpected reply to status: {other:?}"),
        }
    }

    /// The peers the daemon has now, by name (the row of unknown senders left out).
    pub fn peer_names(&self) -> Result<Vec<String>> {
        Ok(self
            .peers()?
            .into_iter()
            .filter(|p| !p.underlay.is_unspecified())
            .map(|p| p.name)
            .collect())
    }

    /// The daemon's PEERS rows, the row of unknown senders last.
    pub fn peers(&self) -> Result<Vec<proto::PeerInfo>> {
        match self.ok(&Request::Peers)? {
            Reply::Peers { peers } => Ok(peers),
            other => bail!("unexpected reply to peers: {other:?}"),
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends one request.
    pub fn call(&self, request: &Request) -> Result<Response> {
        proto::call(&self.socket, request, Duration::from_secs(20)).map_err(|e| anyhow!(e))
    }

    /// Sends one request and returns the successful reply.
    pub fn ok(&self, request: &Request) -> Result<Reply> {
        match self.call(request)? {
            Response::Ok(reply) => Ok(reply),
            Response::Error(e) => bail!(
                "weftd {} refused {request:?}: {:?} {}",
                self.name,
                e.kind,
                e.message
            ),
        }
    }

    /// Frames dropped for `reason` (`policy_ingress`, say) on all of the node's
    /// ports, as `weft ports` counts them.
    pub fn drops(&self, reason: &str) -> Result<u64> {
        let ports = match self.ok(&Request::Ports)? {
            Reply::Ports { ports } => ports,
            other => bail!("unexpected reply to ports: {other:?}"),
        };
        Ok((ports.iter())
            .flat_map(|p| &p.counters.drops)
            .filter(|(r, _)| r == reason)
            .map(|(_, n)| n)
            .sum())
    }

    /// Attaches `pod` as `eth0` with container id `id`.
    pub fn attach(&self, pod: &Pod, id: &str) -> Result<Attachment> {
        self.attach_as(pod, id, None)
    }

    /// Attaches `pod` as `eth0` with container id `id`, as the Kubernetes pod `k8s`
    /// (what `K8S_POD_NAMESPACE` and `K8S_POD_NAME` would say).
    pub fn attach_as(&self, pod: &Pod, id: &str, k8s: Option<proto::PodRef>) -> Result<Attachment> {
        self.attach_with(pod, id, k8s, None)
    }

    /// Attaches `pod` as `eth0` with container id `id`, asking for a port of type
    /// `port` (weftd's `pod-port` if `None`).
    pub fn attach_with(
        &self,
        pod: &Pod,
        id: &str,
        k8s: Option<proto::PodRef>,
        port: Option<proto::PortType>,
    ) -> Result<Attachment> {
        match self.ok(&Request::Attach(AttachRequest {
            container_id: id.into(),
            netns: pod.ns.path().display().to_string(),
            ifname: "eth0".into(),
            requested_ip: None,
            requested_ip6: None,
            pod: k8s,
            port,
        }))? {
            Reply::Attached(a) => Ok(a),
            other => bail!("unexpected reply to attach: {other:?}"),
        }
    }

    /// Detaches container `id`'s `eth0`.
    pub fn detach(&self, id: &str, netns: Option<&Netns>) -> Result<Option<Ipv4Addr>> {
        match self.ok(&Request::Detach(DetachRequest {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: netns.map(|n| n.path().display().to_string()),
        }))? {
            Reply::Detached { released_ip, .. } => Ok(released_ip),
            other => bail!("unexpected reply to detach: {other:?}"),
        }
    }

    /// Waits up to `timeout` for the daemon to exit by itself; `None` if it still
    /// runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        self.child.wait_timeout(timeout)
    }

    /// Kills the daemon with SIGKILL, as a crash would, and reaps it.
    pub fn kill(mut self) -> Result<std::process::ExitStatus> {
        let child = self.child.child_mut();
        child.kill().context("SIGKILL to weftd")?;
        Ok(child.wait()?)
    }

    /// Stops the daemon with SIGTERM and returns its exit status.
    pub fn stop(self) -> Result<std::process::ExitStatus> {
        self.child.stop()
    }
}

/// Hosts running weftd, each with pods attached through the control socket. Fields
/// drop in order: daemons first, then pods, then the underlay.
#[derive(Debug)]
pub struct Cluster {
    /// The daemons, one per host.
    pub nodes: Vec<WeftNode>,
    /// Each host's pods, with what their attach returned.
    pub pods: Vec<Vec<(Pod, Attachment)>>,
    /// The hosts.
    pub underlay: Underlay,
    /// The peers file, sockets, logs and state directories.
    pub scratch: Scratch,
}

impl Cluster {
    /// A new segment of `hosts` hosts, each running weftd with `pods_per_host` pods.
    pub fn new(
        tag: &str,
        hosts: usize,
        pods_per_host: usize,
        opts: &WeftOptions,
    ) -> Result<Cluster> {
        crate::netns::require_root();
        let underlay = Underlay::new(tag, hosts)?;
        Cluster::on(underlay, tag, pods_per_host, opts)
    }

    /// weftd on every host of `underlay`, with `pods_per_host` pods each. A cluster
    /// whose options ask for encryption lists every node's public key in the peers
    /// file.
    pub fn on(
        underlay: Underlay,
        tag: &str,
        pods_per_host: usize,
        opts: &WeftOptions,
    ) -> Result<Cluster> {
        let hosts = underlay.hosts().len();
        let scratch = Scratch::new(tag)?;
        let peers = scratch.path().join("peers.toml");
        let mut nodes: Vec<PeerNode> = underlay.hosts().iter().map(PeerNode::of).collect();
        if dual_stack(opts) {
            for (n, h) in nodes.iter_mut().zip(underlay.hosts()) {
                n.pod_subnet_v6 = Some(pod_subnet6(h));
            }
        }
        // An encrypted cluster's peers file lists every node's public key.
        if opts.extra.iter().any(|a| a == "--encryption") {
            for (n, h) in nodes.iter_mut().zip(underlay.hosts()) {
                n.public_key = Some(node_key(&opts.binary, h, scratch.path())?);
            }
        }
        write_atomic(&peers, &peers_toml(&nodes))?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            pods: Vec::new(),
            underlay,
            scratch,
        };
        for h in cluster.underlay.hosts() {
            let node = WeftNode::start(h, &peers, cluster.scratch.path(), opts)?;
            cluster.nodes.push(node);
        }
        for h in 0..hosts {
            let mut pods = Vec::new();
            for p in 0..pods_per_host {
                let pod = cluster.underlay.pod(h, &format!("p{p}"))?;
                let att = cluster.nodes[h].attach(&pod, &format!("{tag}-{h}-{p}"))?;
                pods.push((pod, att));
            }
            cluster.pods.push(pods);
        }
        Ok(cluster)
    }

    /// Pod `p` of host `h`.
    pub fn pod(&self, h: usize, p: usize) -> &Pod {
        &self.pods[h][p].0
    }

    /// The address of pod `p` of host `h`.
    pub fn ip(&self, h: usize, p: usize) -> Ipv4Addr {
        self.pods[h][p].1.ip
    }

    /// Host `h`'s daemon's PEERS rows.
    pub fn peers(&self, h: usize) -> Result<Vec<proto::PeerInfo>> {
        self.nodes[h].peers()
    }

    /// Every daemon's log, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.name, n.log_text()))
            .collect()
    }
}

/// Runs `f` on a thread inside the network namespace `ns`. Sockets created there stay
/// in that namespace, so a test can hold pods' sockets from one process.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T> {
    in_netns_at(&ns.path(), f)
}

/// Like [`in_netns`], for the namespace mounted at `path`.
pub fn in_netns_at<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: `file` is an open netns fd for the duration of the call; setns
            // changes only this thread's network namespace, and the thread ends here.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(anyhow!(
                    "entering {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                ));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread in {} panicked", path.display()))?
    })
}

/// Frames captured on an interface (an `AF_PACKET` socket), for tests that look at
/// what crosses the underlay; a small tcpdump, with no pcap.
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Vec<u8>>>>,
}

impl Capture {
    /// Starts capturing every frame `ifname` in `ns` sends or receives, at most
    /// `max` of them.
    pub fn start(ns: &Netns, ifname: &str, max: usize) -> Result<Capture> {
        let name = std::ffi::CString::new(ifname)?;
        let fd = in_netns(ns, || -> std::io::Result<std::os::fd::OwnedFd> {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2) and if_nametoindex(3) calls.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    proto.into(),
                )
            };
            if raw < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a new descriptor nothing else owns.
            let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: all-zero is a valid sockaddr_ll; the fields below make it ours.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            // SAFETY: `sll` is a valid sockaddr_ll of the size given.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(fd)
        })??;
        // A UdpSocket only for its recv(2) and read timeout: any socket takes them.
        let socket = std::net::UdpSocket::from(fd);
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65_536];
            while frames.len() < max && !stopped.load(Ordering::Acquire) {
                if let Ok(n) = socket.recv(&mut buf) {
                    frames.push(buf[..n].to_vec());
                }
            }
            frames
        });
        Ok(Capture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns what was captured.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Host 0 of `underlay` set up for weftd and host 1 as a node of the Linux
/// kernel's VXLAN, as flannel configures one, each listed in a peers file under
/// `dir` (returned): the interop fixture. With `dual`, both get IPv6 subnets
/// ([`pod_subnet6`]) and the kernel host carries IPv6 on the same device.
///
/// The kernel host sends VXLAN to weftd's userspace endpoint over a veth, which
/// would carry its inner checksums unfilled: only that host gets its transmit
/// offload off (see [`Host::set_tx_offload`]); weftd's host keeps its offloads.
pub fn kernel_peer(underlay: &Underlay, dir: &Path, dual: bool) -> Result<(PeerNode, PathBuf)> {
    let (h0, h1) = (underlay.host(0), underlay.host(1));
    h1.set_tx_offload(crate::topo::Offload::Off)?;
    let (mut weft, mut kernel) = (PeerNode::of(h0), PeerNode::of(h1));
    if dual {
        weft.pod_subnet_v6 = Some(pod_subnet6(h0));
        kernel.pod_subnet_v6 = Some(pod_subnet6(h1));
    }
    let peers = dir.join("peers.toml");
    write_atomic(&peers, &peers_toml(&[weft.clone(), kernel.clone()]))?;
    let to_weft = kernel_vxlan::RemoteNode::of(h0, weft.vtep_mac);
    kernel_vxlan::setup(h1, kernel.vtep_mac, &[to_weft])?;
    if dual {
        let remote = kernel_vxlan::RemoteNode6 {
            subnet: pod_subnet6(h0),
            vtep_mac: weft.vtep_mac,
        };
        kernel_vxlan::add_ipv6(h1, pod_subnet6(h1), &[remote])?;
    }
    Ok((kernel, peers))
}
