//! A real container runtime end to end: Debian's podman 4.3, with its CNI network
//! backend, runs busybox containers on a weft network through the built `weft-cni`,
//! against real weftd daemons.
//!
//! Layout. An [`Underlay`] joins two hosts, each a network namespace running weftd.
//! podman itself runs in the root namespace, as it does on a real node: it creates
//! each container's netns under `/run/netns` and executes `weft-cni`, which asks
//! host 0's weftd over its control socket (a path, reachable from any namespace) to
//! attach the container. weftd opens the container's interface inside that netns by
//! path, so nothing is addressed or routed in the root namespace: the containers have
//! their own namespaces, and weftd's host port `weft0` lives in host 0's namespace.
//! Host 1 carries a plain pod namespace attached to its own weftd, the "container on
//! another node".
//!
//! podman's whole configuration is private to the test (containers.conf, storage.conf,
//! registries.conf, the network config dir, storage, locks and temporary files under a
//! scratch directory), and the image is built locally from busybox-static with
//! `podman import`: no registry is ever contacted. Every podman command is bounded in
//! time and killed by pid when it overruns. Whatever happens, the guard removes the
//! containers, resets the private storage, unmounts what podman left mounted, and
//! deletes the container namespaces it saw, before the daemons and namespaces go.
//!
//! What it covers, on a dual-stack network (every container gets an IPv6 address
//! beside its IPv4 one, and podman records both): two containers reach each other,
//! over IPv4 and IPv6; a container reaches the pod on host 1 through the tunnel and
//! back, over both; `podman network reload` (DEL, then ADD asking
//! for the address through the `ips` capability) keeps the address; stop and start
//! re-attach in a new netns; a refused ADD fails `podman run` with weft's reason and
//! leaks nothing; `podman rm` releases the address in weftd, and a new container can
//! ask for it with `--ip` (CNI_ARGS `IP=`).
//!
//! Needs root, podman, runc, conmon, busybox-static, containernetworking-plugins
//! (`portmap`) and iptables (`deploy/setup.sh` installs them), and the `weft-cni`
//! binary next to weftd (`cargo test --workspace` builds it); it fails, never skips,
//! without them.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use weft_perf::netns::{command_line, require_root, run_cmd, wait_until, ChildGuard};
use weft_perf::topo::{Host, Underlay};
use weft_perf::weft::{
    peers_toml, pod_subnet6, write_atomic, PeerNode, Scratch, WeftNode, WeftOptions,
    CLUSTER_CIDR_V6,
};
use weft_proto::{PortInfo, Reply, Request};

/// The longest one podman (or tar) command may run before it is killed.
const BOUND: Duration = Duration::from_secs(60);

/// The image the test builds from busybox-static.
const IMAGE: &str = "localhost/weft-busybox:e2e";

/// podman's default network: a name the test network must never take, so that a
/// conflist podman refuses shows up as "network not found" instead of podman quietly
/// substituting its built-in bridge network under the default name.
const DEFAULT_NETWORK: &str = "podman-default-unused";

/// Where libcni caches ADD results (one file per `<network>-<container id>-<ifname>`).
const CNI_CACHE: &str = "/var/lib/cni/results";

/// Host paths podman, libcni or runc create when they are missing, whatever the
/// configuration says (podman 4.3 puts its blob-info cache under /var/lib/containers
/// for root). The guard removes those the test created, deepest first, and only
/// directories that are empty again.
const HOST_PATHS: [&str; 6] = [
    "/var/lib/containers/cache/blob-info-cache-v1.boltdb",
    "/var/lib/containers/cache",
    "/var/lib/containers",
    "/var/lib/cni/results",
    "/var/lib/cni",
    "/run/runc",
];

fn weftd_options() -> WeftOptions {
    WeftOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_weftd")),
        mode: "vxlan".into(),
        workers: 2,
        // Dual stack: every container gets an IPv6 address beside its IPv4 one.
        extra: vec!["--cluster-cidr-v6".into(), CLUSTER_CIDR_V6.into()],
    }
}

/// The built `weft-cni`, next to weftd in the target directory.
fn weft_cni() -> PathBuf {
    let weftd = Path::new(env!("CARGO_BIN_EXE_weftd"));
    let plugin = weftd
        .parent()
        .expect("weftd has a directory")
        .join("weft-cni");
    assert!(
        plugin.is_file(),
        "{} is missing: build it first: cargo build -p weft-cni",
        plugin.display()
    );
    plugin
}

/// weftd, weft and weft-cni as the tests built them.
fn weft_binaries() -> [PathBuf; 3] {
    [
        PathBuf::from(env!("CARGO_BIN_EXE_weftd")),
        PathBuf::from(env!("CARGO_BIN_EXE_weft")),
        weft_cni(),
    ]
}

/// The image built from deploy/kubernetes/Containerfile.
const WEFT_IMAGE: &str = "localhost/weft:e2e";

/// What a finished command printed and how it exited.
#[derive(Debug)]
struct Ran {
    line: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn report(&self) -> String {
        format!(
            "`{}` exited with {}\nstdout: {}\nstderr: {}",
            self.line,
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `cmd` with its output in files under `out_dir` (no pipe a daemonised
/// grandchild could hold open), waiting at most `bound`. An overrunning command is
/// stopped by its pid (SIGTERM, then SIGKILL) and reported as an error.
fn run_bounded(cmd: &mut Command, bound: Duration, out_dir: &Path) -> Result<Ran, String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let out_path = out_dir.join(format!("cmd-{n}.out"));
    let err_path = out_dir.join(format!("cmd-{n}.err"));
    let line = command_line(cmd);
    let create = |p: &Path| File::create(p).map_err(|e| format!("creating {}: {e}", p.display()));
    cmd.stdin(Stdio::null())
        .stdout(create(&out_path)?)
        .stderr(create(&err_path)?);
    let start = Instant::now();
    let mut child = ChildGuard::spawn(cmd).map_err(|e| format!("{e:#}"))?;
    let status = child.wait_timeout(bound).map_err(|e| format!("{e:#}"))?;
    let pid = child.pid();
    // Stops the child if it overran; a no-op when it has exited.
    drop(child);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    match status {
        Some(status) => Ok(Ran {
            line,
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "`{line}` did not finish within {bound:?} (started {:?} ago) and was killed \
             (pid {pid})\nstdout: {}\nstderr: {}",
            start.elapsed(),
            stdout.trim_end(),
            stderr.trim_end()
        )),
    }
}

/// A container the test started, as podman and weft-cni's result describe it.
#[derive(Debug, Clone)]
struct Container {
    name: String,
    id: String,
    /// Its network namespace, `/run/netns/netns-<uuid>`.
    sandbox: PathBuf,
    ip: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
    /// Its IPv6 address, as podman recorded it from the CNI result.
    ip6: Ipv6Addr,
}

/// A podman whose configuration, storage and network config live under one private
/// directory. Dropping it (or [`Podman::cleanup`]) removes every container, resets
/// the storage, unmounts what is left under the directory, deletes the container
/// namespaces it saw, and removes the host paths of [`HOST_PATHS`] that it created.
#[derive(Debug)]
struct Podman {
    root: PathBuf,
    network: String,
    /// Which of [`HOST_PATHS`] existed before the test.
    preexisting: Vec<bool>,
    /// podman's cgroup parents (cgroupfs manager) that existed before the test.
    cgroups_before: Vec<PathBuf>,
    /// Every container netns the test saw.
    sandboxes: Mutex<Vec<PathBuf>>,
    cleaned: bool,
}

impl Podman {
    /// Writes the private configuration with a conflist that sends `weft-cni` (from
    /// `plugin_dir`) to the weftd at `socket`, chained with the reference `portmap`
    /// as deploy/ ships it, and imports the busybox image.
    fn new(root: PathBuf, socket: &Path, plugin_dir: &Path) -> Podman {
        let pm = Podman {
            network: format!("weft-e2e-{}", std::process::id()),
            preexisting: HOST_PATHS.iter().map(|p| Path::new(p).exists()).collect(),
            cgroups_before: libpod_cgroups(),
            sandboxes: Mutex::new(Vec::new()),
            cleaned: false,
            root,
        };
        // From here on, a panic drops `pm`, which cleans up.
        pm.configure(socket, plugin_dir);
        pm.import_image();
        pm
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn configure(&self, socket: &Path, plugin_dir: &Path) {
        for dir in ["net", "tmp", "libpod", "out", "graph", "run"] {
            std::fs::create_dir_all(self.path(dir)).expect("podman directories");
        }
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let containers_conf = format!(
            r#"[containers]
netns = "none"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[network]
network_backend = "cni"
cni_plugin_dirs = [{plugin_dir}, "/usr/lib/cni"]
network_config_dir = {net}
default_network = "{DEFAULT_NETWORK}"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = {events}
lock_type = "file"
tmp_dir = {libpod}
image_copy_tmp_dir = {tmp}
stop_timeout = 1
"#,
            plugin_dir = q(plugin_dir),
            net = q(&self.path("net")),
            tmp = q(&self.path("tmp")),
            libpod = q(&self.path("libpod")),
            events = q(&self.path("events.log")),
        );
        let storage_conf = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = {}\nrunroot = {}\n",
            q(&self.path("graph")),
            q(&self.path("run")),
        );
        std::fs::write(self.path("containers.conf"), containers_conf).unwrap();
        std::fs::write(self.path("storage.conf"), storage_conf).unwrap();
        std::fs::write(self.path("registries.conf"), "").unwrap();
        // As deploy/cni ships it, but at cniVersion 1.0.0 (podman 4.3's libcni stops
        // there) and with this test's socket.
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [
                {
                    "type": "weft-cni",
                    "socket": socket,
                    "timeout": 10,
                    "capabilities": { "ips": true }
                },
                {
                    "type": "portmap",
                    "capabilities": { "portMappings": true }
                }
            ]
        });
        let file = self.path("net").join(format!("{}.conflist", self.network));
        write_atomic(&file, &serde_json::to_string_pretty(&conflist).unwrap()).expect("conflist");
    }

    /// Builds a root filesystem of busybox-static and its applet links, and imports it.
    fn import_image(&self) {
        let rootfs = self.path("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .expect("/bin/busybox (install busybox-static: deploy/setup.sh)");
        let applets = run_cmd(Command::new("/bin/busybox").arg("--list-full")).unwrap();
        for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
            let link = rootfs.join(applet);
            if link.exists() {
                continue;
            }
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink("/bin/busybox", &link).unwrap();
        }
        for dir in ["etc", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(rootfs.join(dir)).unwrap();
        }
        // The shared libraries weft's binaries load (glibc's), so that the image
        // can stand in for Debian's as the base of deploy/kubernetes/Containerfile.
        for bin in weft_binaries() {
            let ldd = run_cmd(Command::new("ldd").arg(&bin)).unwrap();
            for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
                let to = rootfs.join(lib.trim_start_matches('/'));
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copying {lib}: {e}"));
            }
        }
        let tar = self.path("image.tar");
        let ran = run_bounded(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
            BOUND,
            &self.path("out"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(ran.status.success(), "{}", ran.report());
        self.ok(&[
            "import",
            "--quiet",
            "--change",
            r#"CMD ["/bin/sh"]"#,
            tar.to_str().unwrap(),
            IMAGE,
        ]);
    }

    /// Builds the DaemonSet's image from deploy/kubernetes/Containerfile, as its
    /// comment says to, but on the busybox image instead of Debian's (`--from`: no
    /// registry is reachable) and with the test's builds as the release binaries.
    fn build_weft_image(&self) {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let context = self.path("build");
        let release = context.join("target/release");
        let kube = context.join("deploy/kubernetes");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::create_dir_all(&kube).unwrap();
        for bin in weft_binaries() {
            let to = release.join(bin.file_name().unwrap());
            if std::fs::hard_link(&bin, &to).is_err() {
                std::fs::copy(&bin, &to).unwrap();
            }
        }
        for file in ["Containerfile", "install-cni.sh"] {
            std::fs::copy(repo.join("deploy/kubernetes").join(file), kube.join(file)).unwrap();
        }
        let containerfile = kube.join("Containerfile");
        self.ok(&[
            "build",
            "--quiet",
            "--pull=never",
            "--network=none",
            "--from",
            IMAGE,
            "-f",
            containerfile.to_str().unwrap(),
            "-t",
            WEFT_IMAGE,
            context.to_str().unwrap(),
        ]);
    }

    /// `podman run --rm` of the weft image with `args` (volumes, environment, then
    /// the image's command).
    fn run_weft_image(&self, options: &[String], argv: &[&str]) -> Ran {
        let mut args: Vec<&str> = vec!["run", "--rm", "--pull=never", "--network=none"];
        args.extend(options.iter().map(String::as_str));
        args.push(WEFT_IMAGE);
        args.extend(argv);
        self.run(&args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.args(args)
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("TMPDIR", self.path("tmp"))
            .env_remove("CONTAINER_HOST")
            .env_remove("CONTAINER_CONNECTION");
        cmd
    }

    /// Runs podman with `args`, bounded by [`BOUND`].
    fn run(&self, args: &[&str]) -> Result<Ran, String> {
        run_bounded(&mut self.command(args), BOUND, &self.path("out"))
    }

    /// Runs podman with `args` and returns its stdout; panics unless it exits 0
    /// without logging an error.
    fn ok(&self, args: &[&str]) -> String {
        let ran = self.run(args).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            ran.status.success() && !ran.stderr.contains("level=error"),
            "{}",
            ran.report()
        );
        if !ran.stderr.trim().is_empty() {
            eprintln!("podman {}: {}", args.join(" "), ran.stderr.trim_end());
        }
        ran.stdout
    }

    /// `podman run -d` a container on the weft network (at `ip` if given), sleeping.
    fn start(&self, name: &str, ip: Option<Ipv4Addr>) -> Container {
        let ip_s = ip.map(|ip| ip.to_string());
        let mut args = vec![
            "run",
            "-d",
            "--pull=never",
            "--name",
            name,
            "--network",
            &self.network,
        ];
        if let Some(ip) = &ip_s {
            args.extend(["--ip", ip]);
        }
        args.extend([IMAGE, "sleep", "600"]);
        let id = self.ok(&args).trim().to_owned();
        let c = self.inspect(name);
        assert_eq!(c.id, id, "podman run printed {id:?}");
        c
    }

    /// What podman knows of container `name`'s attachment to the weft network.
    fn inspect(&self, name: &str) -> Container {
        let net = format!("(index .NetworkSettings.Networks \"{}\")", self.network);
        let format = format!(
            "{{{{.Id}}}} {{{{.NetworkSettings.SandboxKey}}}} {{{{{net}.IPAddress}}}} \
             {{{{{net}.IPPrefixLen}}}} {{{{{net}.Gateway}}}} {{{{{net}.GlobalIPv6Address}}}}"
        );
        let out = self.ok(&["inspect", "--format", &format, name]);
        let f: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(f.len(), 6, "podman inspect printed {out:?}");
        let id = f[0].to_owned();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}: {id:?} is not a container id"
        );
        let sandbox = PathBuf::from(f[1]);
        self.sandboxes.lock().unwrap().push(sandbox.clone());
        let parse = |what: &str, s: &str| -> Ipv4Addr {
            s.parse()
                .unwrap_or_else(|e| panic!("{name}: {what} {s:?} from podman inspect: {e}"))
        };
        Container {
            name: name.to_owned(),
            id,
            sandbox,
            ip: parse("IPAddress", f[2]),
            prefix_len: f[3]
                .parse()
                .unwrap_or_else(|e| panic!("{name}: IPPrefixLen {:?}: {e}", f[3])),
            gateway: parse("Gateway", f[4]),
            ip6: f[5].parse().unwrap_or_else(|e| {
                panic!(
                    "{name}: GlobalIPv6Address {:?} from podman inspect: {e}",
                    f[5]
                )
            }),
        }
    }

    /// `podman exec` in `c`.
    fn exec(&self, c: &Container, argv: &[&str]) -> Result<Ran, String> {
        let mut args = vec!["exec", c.name.as_str()];
        args.extend(argv);
        self.run(&args)
    }

    /// Three pings from `c` to `dst`, all of which must come back.
    fn ping(&self, c: &Container, dst: impl Into<IpAddr>) -> Result<(), String> {
        let dst = dst.into().to_string();
        let ran = self.exec(
            c,
            &["ping", "-c", "3", "-i", "0.2", "-W", "2", "-w", "10", &dst],
        )?;
        if ran.status.success() && ran.stdout.contains(" 3 packets received") {
            Ok(())
        } else {
            Err(ran.report())
        }
    }

    /// `podman rm -f` right away (no stop grace).
    fn rm(&self, names: &[&str]) {
        let mut args = vec!["rm", "-f", "-t", "0"];
        args.extend(names);
        self.ok(&args);
    }

    /// Tears everything down; returns what had to be forced or could not be undone.
    /// Idempotent.
    fn cleanup(&mut self) -> Vec<String> {
        if self.cleaned {
            return Vec::new();
        }
        self.cleaned = true;
        let mut notes = Vec::new();
        let podman = |args: &[&str]| match self.run(args) {
            Ok(r) if r.status.success() => None,
            Ok(r) => Some(r.report()),
            Err(e) => Some(e),
        };
        notes.extend(podman(&["rm", "--all", "-f", "-t", "0"]));
        // conmon outlives `podman rm` briefly, and starts `podman container cleanup`
        // as it goes; both name the private directory on their command line. Let them
        // finish before the storage goes, and stop stragglers by pid.
        let root = self.root.clone();
        if wait_until(Duration::from_secs(10), "conmon to exit", || {
            processes_naming(&root).is_empty()
        })
        .is_err()
        {
            for (pid, cmdline) in processes_naming(&root) {
                notes.push(format!("killing pid {pid}, still running: {cmdline}"));
                let _ = run_cmd(Command::new("kill").args(["-KILL", &pid.to_string()]));
            }
        }
        notes.extend(podman(&["system", "reset", "-f"]));
        // Whatever podman left mounted under the private directory, deepest first.
        for mount in mounts_under(&self.root) {
            notes.push(format!("{} was still mounted", mount.display()));
            if let Err(e) = run_cmd(Command::new("umount").arg("-l").arg(&mount)) {
                notes.push(format!("{e:#}"));
            }
        }
        for ns in self.sandboxes.lock().unwrap().iter() {
            if ns.exists() {
                notes.push(format!("container netns {} was left behind", ns.display()));
                let _ = run_cmd(Command::new("umount").arg("-l").arg(ns));
                if let Err(e) = std::fs::remove_file(ns) {
                    notes.push(format!("removing {}: {e}", ns.display()));
                }
            }
        }
        // libcni's cached results for this network (removed by a successful DEL).
        if let Ok(dir) = std::fs::read_dir(CNI_CACHE) {
            let prefix = format!("{}-", self.network);
            for entry in dir.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    notes.push(format!("libcni cache {} was left", entry.path().display()));
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        for (path, existed) in HOST_PATHS.iter().zip(&self.preexisting) {
            let path = Path::new(path);
            if !existed && path.is_file() {
                let _ = std::fs::remove_file(path);
            } else if !existed && path.is_dir() {
                // Only if empty: someone else may have started using it.
                let _ = std::fs::remove_dir(path);
            }
        }
        // The cgroup parents podman's cgroupfs manager made (`libpod_parent`, with
        // `conmon` and a `libpod-<id>` per container below it), if the test made them.
        // A cgroup directory goes only once no process is left in it.
        for parent in libpod_cgroups() {
            if self.cgroups_before.contains(&parent) {
                continue;
            }
            let mut dirs = vec![parent];
            let mut i = 0;
            while i < dirs.len() {
                if let Ok(children) = std::fs::read_dir(&dirs[i]) {
                    let sub = children.flatten().map(|e| e.path()).filter(|p| p.is_dir());
                    dirs.extend(sub.collect::<Vec<_>>());
                }
                i += 1;
            }
            // Children before their parents.
            for dir in dirs.iter().rev() {
                let gone = wait_until(Duration::from_secs(5), "an empty cgroup", || {
                    std::fs::remove_dir(dir).is_ok() || !dir.exists()
                });
                if gone.is_err() {
                    notes.push(format!("could not remove cgroup {}", dir.display()));
                }
            }
        }
        notes
    }
}

/// Processes (other than this one) whose command line names `dir`: `(pid, command line)`.
fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let me = std::process::id();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline
                .contains(&needle)
                .then(|| (pid, cmdline.trim_end().to_owned()))
        })
        .collect()
}

/// podman's cgroup parent in each mounted hierarchy (v1 controllers and v2).
fn libpod_cgroups() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("libpod_parent"))
                .collect()
        })
        .unwrap_or_default();
    found.push(root.join("libpod_parent"));
    found.retain(|p| p.is_dir());
    found
}

impl Drop for Podman {
    fn drop(&mut self) {
        for note in self.cleanup() {
            eprintln!("podman cleanup: {note}");
        }
    }
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The root namespace's links, IPv4 addresses and routes, to show the test adds none.
#[derive(Debug, PartialEq, Eq)]
struct RootNs {
    links: BTreeSet<String>,
    addrs: Vec<String>,
    routes: Vec<String>,
}

impl RootNs {
    fn now() -> RootNs {
        let ip = |args: &[&str]| {
            run_cmd(Command::new("ip").args(args))
                .expect("ip in the root namespace")
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let links = ip(&["-o", "link", "show"])
            .iter()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect();
        RootNs {
            links,
            addrs: ip(&["-o", "-4", "addr", "show"]),
            routes: ip(&["-4", "route", "show", "table", "all"]),
        }
    }

    /// Fails if anything of the pod network shows up compared with `before`.
    fn assert_untouched(&self, before: &RootNs, when: &str) {
        assert_eq!(
            self.links, before.links,
            "{when}: links in the root namespace"
        );
        for line in self.addrs.iter().chain(&self.routes) {
            assert!(
                !line.contains("10.244.") && !line.contains("weft0"),
                "{when}: the pod network leaked into the root namespace: {line}"
            );
        }
        assert_eq!(
            self.addrs, before.addrs,
            "{when}: addresses in the root namespace"
        );
    }
}

/// The iptables rules mentioning CNI (portmap's chains), in the root namespace.
fn cni_iptables() -> Vec<String> {
    run_cmd(&mut Command::new("iptables-save"))
        .expect("iptables-save (install iptables: deploy/setup.sh)")
        .lines()
        .filter(|l| l.contains("CNI"))
        .map(str::to_owned)
        .collect()
}

fn pod_ports(node: &WeftNode) -> Vec<PortInfo> {
    match node.ok(&Request::Ports).expect("weftd ports") {
        Reply::Ports { ports } => ports.into_iter().filter(|p| p.kind != "host").collect(),
        other => panic!("unexpected reply to ports: {other:?}"),
    }
}

fn pods_attached(node: &WeftNode) -> usize {
    match node.ok(&Request::Status).expect("weftd status") {
        Reply::Status(s) => s.pods,
        other => panic!("unexpected reply to status: {other:?}"),
    }
}

/// The last lines of each daemon's log, and host 0's ports, for failure messages.
fn diagnostics(nodes: &[&WeftNode]) -> String {
    let mut s = String::new();
    for n in nodes {
        let log = n.log_text();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        s.push_str(&format!(
            "--- {} log (last {} lines)\n{}\n",
            n.name,
            tail.len(),
            tail.join("\n")
        ));
    }
    if let Some(n) = nodes.first() {
        s.push_str(&format!(
            "--- {} ports: {:?}\n",
            n.name,
            n.call(&Request::Ports)
        ));
    }
    s
}

/// Checks what podman recorded for `c` against host `h`, inside the container (eth0
/// with the address, the tunnel's MTU, the default route) and in weftd (a port for
/// the container id in podman's netns).
fn check_attached(pm: &Podman, node: &WeftNode, h: &Host, c: &Container) {
    assert!(
        h.pod_subnet.contains(&c.ip) && c.ip != h.gateway,
        "{}: {} is not a pod address of host {} ({})",
        c.name,
        c.ip,
        h.index,
        h.pod_subnet
    );
    assert_eq!(c.prefix_len, h.pod_subnet.prefix_len(), "{c:?}");
    assert_eq!(c.gateway, h.gateway, "{c:?}");
    assert!(c.sandbox.starts_with("/run/netns"), "{c:?}");
    let exec = |argv: &[&str]| {
        let ran = pm.exec(c, argv).unwrap_or_else(|e| panic!("{e}"));
        assert!(ran.status.success(), "{}", ran.report());
        ran
    };
    let addr = exec(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(
        addr.stdout
            .contains(&format!(" {}/{} ", c.ip, c.prefix_len)),
        "{}",
        addr.report()
    );
    let mtu = exec(&["cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(
        mtu.stdout.trim(),
        (h.underlay_mtu - 50).to_string(),
        "{}",
        mtu.report()
    );
    let route = exec(&["ip", "-4", "route", "show", "default"]);
    assert!(
        route
            .stdout
            .contains(&format!("via {} dev eth0", h.gateway)),
        "{}",
        route.report()
    );
    let ports = pod_ports(node);
    let port = ports
        .iter()
        .find(|p| p.container_id.as_deref() == Some(c.id.as_str()))
        .unwrap_or_else(|| panic!("weftd has no port for {} ({}): {ports:?}", c.name, c.id));
    assert_eq!(port.ip, Some(c.ip), "{port:?}");
    assert_eq!(port.netns.as_deref(), c.sandbox.to_str(), "{port:?}");
    // The IPv6 address podman recorded is the interface's, of host 0's IPv6 subnet.
    assert!(pod_subnet6(h).contains(&c.ip6), "{c:?}");
    let addr6 = exec(&[
        "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
    ]);
    assert!(
        addr6.stdout.contains(&format!(" {}/64 ", c.ip6)),
        "{}",
        addr6.report()
    );
}

/// Whether weftd has a port for container `id` or at address `ip`.
fn holds(node: &WeftNode, id: &str, ip: Ipv4Addr) -> bool {
    pod_ports(node)
        .iter()
        .any(|p| p.ip == Some(ip) || p.container_id.as_deref() == Some(id))
}

/// The namespaces podman made (`/run/netns/netns-<uuid>`).
fn podman_netns() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("netns-"))
                .collect()
        })
        .unwrap_or_default()
}

/// podman's containers on a weft network: container to container on one node, to a
/// pod on a second node across the tunnel and back, `podman network reload`, stop and
/// start, a refused ADD, and `podman rm` giving the address back to weftd; with
/// nothing of it in the root namespace and nothing left behind afterwards.
#[test]
fn podman_containers_on_weft() {
    require_root();
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
    let plugin = weft_cni();
    let root_before = RootNs::now();
    let iptables_before = cni_iptables();
    let netns_before = podman_netns();

    let underlay = Underlay::new("pm", 2).expect("underlay");
    let scratch = Scratch::new("podman").expect("scratch dir");
    let peers = scratch.path().join("peers.toml");
    let nodes: Vec<PeerNode> = (underlay.hosts().iter())
        .map(|h| PeerNode {
            pod_subnet_v6: Some(pod_subnet6(h)),
            ..PeerNode::of(h)
        })
        .collect();
    write_atomic(&peers, &peers_toml(&nodes)).expect("peers file");
    let (h0, h1) = (underlay.host(0), underlay.host(1));
    let n0 = WeftNode::start(h0, &peers, scratch.path(), &weftd_options()).expect("weftd 0");
    let n1 = WeftNode::start(h1, &peers, scratch.path(), &weftd_options()).expect("weftd 1");
    let diag = || diagnostics(&[&n0, &n1]);
    let remote = underlay.pod(1, "r").expect("pod netns on host 1");
    let r = n1
        .attach(&remote, "podman-e2e-remote")
        .expect("attach on host 1");
    step("underlay, two weftd, a pod on host 1");

    // Dropped before the daemons and namespaces: containers go while weftd still
    // answers their DEL.
    let mut pm = Podman::new(
        scratch.path().join("podman"),
        &n0.socket,
        plugin.parent().unwrap(),
    );
    step("podman configured, image imported");
    let networks = pm.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(
        networks
            .lines()
            .any(|l| l == format!("{} weft-cni", pm.network)),
        "podman does not list the weft network {}:\n{networks}",
        pm.network
    );

    // 1. Two containers on the weft network reach each other.
    let a = pm.start("a", None);
    let b = pm.start("b", None);
    step("containers a and b running");
    assert_ne!(a.ip, b.ip);
    check_attached(&pm, &n0, h0, &a);
    check_attached(&pm, &n0, h0, &b);
    assert_eq!(pod_ports(&n0).len(), 2, "{:?}", pod_ports(&n0));
    pm.ping(&a, b.ip)
        .unwrap_or_else(|e| panic!("container a → b: {e}\n{}", diag()));
    pm.ping(&b, a.ip)
        .unwrap_or_else(|e| panic!("container b → a: {e}\n{}", diag()));
    pm.ping(&a, b.ip6)
        .unwrap_or_else(|e| panic!("container a → b over IPv6: {e}\n{}", diag()));
    step("a ↔ b, over IPv4 and IPv6");

    // 2. Across the tunnel to the pod on host 1, and back.
    pm.ping(&a, r.ip)
        .unwrap_or_else(|e| panic!("container a → pod on host 1: {e}\n{}", diag()));
    remote
        .ns
        .ping(b.ip, 3)
        .unwrap_or_else(|e| panic!("pod on host 1 → container b: {e:#}\n{}", diag()));
    let r6 = r.ipv6.expect("the pod on host 1 has an IPv6 address").ip;
    pm.ping(&a, r6)
        .unwrap_or_else(|e| panic!("container a → pod on host 1 over IPv6: {e}\n{}", diag()));
    remote
        .ns
        .ping(b.ip6, 3)
        .unwrap_or_else(|e| panic!("pod on host 1 → container b over IPv6: {e:#}\n{}", diag()));
    step("containers ↔ pod on host 1, over IPv4 and IPv6");
    // All of it without a trace in the root namespace; weft0 is in host 0's.
    RootNs::now().assert_untouched(&root_before, "with containers running");
    let weft0 = h0
        .ns
        .ip(&["-4", "-o", "addr", "show", "dev", "weft0"])
        .expect("weft0 on host 0");
    assert!(weft0.contains(&h0.gateway.to_string()), "{weft0}");

    // `podman network reload` sends DEL, then ADD asking for the address through the
    // `ips` capability: the container keeps it.
    pm.ok(&["network", "reload", "a"]);
    let reloaded = pm.inspect("a");
    assert_eq!(reloaded.ip, a.ip, "reload changed a's address");
    assert_eq!(reloaded.ip6, a.ip6, "reload changed a's IPv6 address");
    check_attached(&pm, &n0, h0, &reloaded);
    pm.ping(&a, r.ip)
        .unwrap_or_else(|e| panic!("a → host 1 after reload: {e}\n{}", diag()));
    // Stop releases the attachment with the netns; start attaches in a new one.
    pm.ok(&["stop", "-t", "0", "a"]);
    assert!(!holds(&n0, &a.id, a.ip), "{:?}", pod_ports(&n0));
    assert!(
        !a.sandbox.exists(),
        "{} left after stop",
        a.sandbox.display()
    );
    pm.ok(&["start", "a"]);
    let a = pm.inspect("a");
    check_attached(&pm, &n0, h0, &a);
    pm.ping(&a, b.ip)
        .unwrap_or_else(|e| panic!("a → b after restart: {e}\n{}", diag()));
    step("network reload, stop and start");

    // A refused ADD (an address of host 1's subnet) fails `podman run` with weft's
    // reason, and leaves nothing attached.
    let foreign = h1.pod_ip(50);
    let refused = pm
        .run(&[
            "run",
            "-d",
            "--pull=never",
            "--name",
            "x",
            "--network",
            &pm.network,
            "--ip",
            &foreign.to_string(),
            IMAGE,
            "sleep",
            "600",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !refused.status.success()
            && refused.stderr.contains("weft-cni")
            && refused.stderr.contains(&foreign.to_string()),
        "{}",
        refused.report()
    );
    assert_eq!(pod_ports(&n0).len(), 2, "{:?}", pod_ports(&n0));
    pm.rm(&["x"]);
    step("refused ADD");

    // 3. `podman rm` releases the address: weftd drops the port, libcni drops its
    //    cached result, and a new container may ask for that very address.
    pm.rm(&["b"]);
    assert!(!b.sandbox.exists(), "{} left after rm", b.sandbox.display());
    assert!(
        !holds(&n0, &b.id, b.ip),
        "weftd still holds b after podman rm: {:?}",
        pod_ports(&n0)
    );
    assert_eq!(pod_ports(&n0).len(), 1, "{:?}", pod_ports(&n0));
    let cache = Path::new(CNI_CACHE).join(format!("{}-{}-eth0", pm.network, b.id));
    assert!(!cache.exists(), "libcni kept {}", cache.display());
    let c = pm.start("c", Some(b.ip));
    assert_eq!(c.ip, b.ip, "c asked for b's released address");
    check_attached(&pm, &n0, h0, &c);
    pm.ping(&a, c.ip)
        .unwrap_or_else(|e| panic!("container a → c: {e}\n{}", diag()));
    step("podman rm b released its address; c took it");

    pm.rm(&["a", "c"]);
    for x in [&a, &c] {
        assert!(!x.sandbox.exists(), "{} left after rm", x.sandbox.display());
    }
    assert_eq!(pods_attached(&n0), 0, "{:?}", pod_ports(&n0));
    let left = pm.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(left.trim().is_empty(), "containers left: {left}");
    // The other node and its pod are untouched: host 1 reaches its pod through weft.
    h1.ns.ping(r.ip, 1).expect("host 1 reaches its pod");

    // 4. The DaemonSet's image, built from its Containerfile, does what the DaemonSet
    //    asks of it: the init container's `weft-install-cni binary` puts weft-cni in
    //    the host's plugin directory, and the cni-config container's `config` waits for
    //    weftd on the host's /run/weft and then installs the ConfigMap's conflist.
    pm.build_weft_image();
    let host = scratch.path().join("k8s-host");
    let (bin_dir, conf_dir, etc_weft) = (host.join("bin"), host.join("net.d"), host.join("etc"));
    for d in [&bin_dir, &conf_dir, &etc_weft] {
        std::fs::create_dir_all(d).unwrap();
    }
    let volume = |from: &Path, to: &str| format!("--volume={}:{to}", from.display());
    let ran = pm.run_weft_image(
        &[volume(&bin_dir, "/host/opt/cni/bin")],
        &["weft-install-cni", "binary"],
    );
    assert!(ran.status.success(), "{}", ran.report());
    let installed = bin_dir.join("weft-cni");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&plugin).unwrap(),
        "weft-cni as built"
    );
    let names: Vec<_> = std::fs::read_dir(&bin_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["weft-cni"], "no temporary file left");
    let conflist = kube_conflist();
    std::fs::write(etc_weft.join("10-weft.conflist"), &conflist).unwrap();
    let socket_dir = n0.socket.parent().unwrap();
    let socket = Path::new("/run/weft").join(n0.socket.file_name().unwrap());
    let ran = pm.run_weft_image(
        &[
            volume(&etc_weft, "/etc/weft:ro"),
            volume(socket_dir, "/run/weft"),
            volume(&conf_dir, "/host/etc/cni/net.d"),
            format!("--env=WEFT_SOCKET={}", socket.display()),
            "--env=WEFT_STAY=0".into(),
        ],
        &["weft-install-cni", "config"],
    );
    assert!(ran.status.success(), "{}", ran.report());
    assert_eq!(
        std::fs::read_to_string(conf_dir.join("10-weft.conflist")).unwrap(),
        conflist
    );
    let ran = pm.run_weft_image(
        &[volume(socket_dir, "/run/weft")],
        &["weft", "--socket", socket.to_str().unwrap(), "status"],
    );
    assert!(
        ran.status.success() && ran.stdout.contains(&h0.pod_subnet.to_string()),
        "weft in the image asks weftd: {}",
        ran.report()
    );
    step("the DaemonSet's image: built, installs weft-cni and the conflist");

    // Nothing left behind.
    let notes = pm.cleanup();
    assert!(
        notes.is_empty(),
        "cleanup had to force:\n{}",
        notes.join("\n")
    );
    let mounts = mounts_under(scratch.path());
    assert!(mounts.is_empty(), "still mounted: {mounts:?}");
    let procs = processes_naming(&pm.root);
    assert!(procs.is_empty(), "still running: {procs:?}");
    assert_eq!(podman_netns(), netns_before, "podman's namespaces");
    assert_eq!(
        cni_iptables(),
        iptables_before,
        "iptables CNI chains changed"
    );
    RootNs::now().assert_untouched(&root_before, "after the test");
    assert_eq!(libpod_cgroups(), pm.cgroups_before, "podman's cgroups");
    step("cleaned up");
}

/// The conflist of deploy/kubernetes/configmap.yaml.
fn kube_conflist() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/configmap.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let map: serde_json::Value = yaml_serde::from_str(&text).expect("configmap.yaml");
    map["data"]["10-weft.conflist"]
        .as_str()
        .expect("the conflist in the ConfigMap")
        .to_owned()
}
