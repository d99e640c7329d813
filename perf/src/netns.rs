//! Network namespaces, commands run inside them, and guards that clean up on drop.
//!
//! Every namespace this module creates is named `w<tag>-<pid>-<counter>`: the pid makes
//! names unique across processes, the counter across threads, and together they let
//! [`cleanup_stale`] find what a killed run left behind. Nothing here touches the root
//! namespace: links are created with `ip -n <ns>` and commands run under
//! `ip netns exec <ns>`.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Prefix of every namespace name this module creates (`w<tag>-<pid>-<counter>`).
pub const PREFIX: &str = "w";

/// Longest tag kept in a namespace name; longer tags are truncated.
pub const MAX_TAG_LEN: usize = 10;

/// Longest Linux interface name (IFNAMSIZ − 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// How long [`ChildGuard`] waits after SIGTERM before it sends SIGKILL, unless changed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Directory where `ip netns` keeps its namespace mount points.
const NETNS_DIR: &str = "/run/netns";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A named network namespace (`ip netns add`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace named `w<tag>-<pid>-<counter>` with `lo` up.
    ///
    /// `tag` only makes names readable: characters other than ASCII letters, digits and
    /// `_` are dropped and it is cut to [`MAX_TAG_LEN`].
    pub fn new(tag: &str) -> Result<Netns> {
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(MAX_TAG_LEN)
            .collect();
        let pid = std::process::id();
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{tag}-{pid}-{counter}");

        if Path::new(NETNS_DIR).join(&name).exists() {
            // The name holds our pid and a counter value this process never used, so
            // an earlier process with the same pid left it behind: it is stale.
            let _ = run_cmd(Command::new("ip").args(["netns", "del", &name]));
        }
        run_cmd(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        // From here on, dropping `ns` deletes the namespace, also on the error paths below.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, `/run/netns/<name>` (what CNI calls `CNI_NETNS`).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec <name> program`).
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"]).arg(&self.name).arg(program);
        cmd
    }

    /// Runs `argv` inside the namespace and returns its stdout; fails unless it exits 0.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        let (program, args) = argv.split_first().context("Netns::run: empty argv")?;
        run_cmd(self.cmd(program).args(args))
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// Like [`Netns::run`], with `input` on the command's standard input (written from
    /// another thread, so a command that prints as it reads cannot block on it).
    pub fn run_with_input(&self, argv: &[&str], input: &str) -> Result<String> {
        let (program, args) = argv.split_first().context("Netns::run: empty argv")?;
        let mut cmd = self.cmd(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let line = command_line(&cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start `{line}` in {}", self.name))?;
        let mut stdin = child.stdin.take().context("the child's stdin")?;
        let out = std::thread::scope(|s| {
            let writer = s.spawn(move || stdin.write_all(input.as_bytes()));
            let out = child.wait_with_output();
            // A command that exits early closes its input: its status says why.
            let _ = writer.join();
            out
        })
        .with_context(|| format!("running `{line}` in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "`{line}` failed in {} ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
    }

    /// Runs `ip -n <name> args...` (cheaper than `run(&["ip", ...])`) and returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_cmd(Command::new("ip").arg("-n").arg(&self.name).args(args))
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// Sets a sysctl inside the namespace, e.g. `sysctl("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Brings interface `ifname` up.
    pub fn link_up(&self, ifname: &str) -> Result<()> {
        self.ip(&["link", "set", "dev", ifname, "up"]).map(drop)
    }

    /// Starts `argv` in the background inside the namespace (stdin and stdout null,
    /// stderr inherited); the guard stops it on drop.
    pub fn spawn(&self, argv: &[&str]) -> Result<ChildGuard> {
        let (program, args) = argv.split_first().context("Netns::spawn: empty argv")?;
        let mut cmd = self.cmd(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
        ChildGuard::spawn(&mut cmd).with_context(|| format!("in network namespace {}", self.name))
    }

    /// Sends `count` pings to `dst` (`ping -c count -W 1 -i 0.2`); fails if any is lost.
    pub fn ping(&self, dst: impl std::fmt::Display, count: u32) -> Result<String> {
        let dst = dst.to_string();
        let count = count.to_string();
        self.run(&[
            "ping", "-n", "-q", "-c", &count, "-W", "1", "-i", "0.2", &dst,
        ])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_cmd(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "weft-perf: could not delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// Creates a veth pair with end `a_name` in `a` and end `b_name` in `b`, both down.
///
/// The pair is created inside `a` (`ip -n A link add ... peer name B netns B`), so it
/// never appears in the root namespace. `a` and `b` may be the same namespace.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    check_ifname(a_name)?;
    check_ifname(b_name)?;
    let mut args = vec![
        "link", "add", a_name, "type", "veth", "peer", "name", b_name,
    ];
    if a.name() != b.name() {
        args.extend(["netns", b.name()]);
    }
    a.ip(&args)
        .with_context(|| {
            format!(
                "creating veth {}:{a_name} <-> {}:{b_name}",
                a.name(),
                b.name()
            )
        })
        .map(drop)
}

/// Fails unless `name` is a valid Linux interface name (1 to 15 bytes, no `/`, `:` or space).
pub fn check_ifname(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty() && name.len() <= MAX_IFNAME_LEN,
        "interface name {name:?} must be 1 to {MAX_IFNAME_LEN} bytes long"
    );
    ensure!(
        !name.contains(['/', ':'])
            && !name.contains(char::is_whitespace)
            && name != "."
            && name != "..",
        "interface name {name:?} contains a character Linux refuses"
    );
    Ok(())
}

/// Names of all namespaces `ip netns list` shows.
pub fn list() -> Result<Vec<String>> {
    let out = run_cmd(Command::new("ip").args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// The pid embedded in a name this module made (`<prefix>...-<pid>-<counter>`), if any.
pub fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let mut parts = rest.rsplitn(3, '-');
    let counter = parts.next()?;
    let pid = parts.next()?;
    let _tag = parts.next()?;
    if counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|p| *p > 0)
}

/// Deletes namespaces named `<prefix>...-<pid>-<counter>` whose owning pid is dead,
/// leftovers of killed runs, and returns their names.
///
/// Namespaces of live processes (including this one) are left alone. Pass [`PREFIX`] to
/// sweep everything this module ever created.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in list()? {
        let Some(pid) = owner_pid(&name, prefix) else {
            continue;
        };
        if pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        run_cmd(Command::new("ip").args(["netns", "del", &name])).with_context(|| {
            format!("deleting stale network namespace {name} (pid {pid} is gone)")
        })?;
        removed.push(name);
    }
    Ok(removed)
}

/// Polls `cond` until it returns true; fails after `timeout`, naming `what` was awaited.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return Ok(());
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Whether `fd` becomes readable within `timeout` (an interrupted wait counts as not
/// yet).
pub fn readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd that lives across the call, and the count
    // says one; the descriptor stays open while it is borrowed.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        -1 => match std::io::Error::last_os_error() {
            e if e.kind() == std::io::ErrorKind::Interrupted => Ok(false),
            e => Err(e),
        },
        n => Ok(n > 0),
    }
}

/// Panics with a clear message unless the process runs as root (the netns tests never skip).
///
/// # Panics
/// When the effective uid is not 0.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "these tests build network namespaces and must run as root (euid is {euid}); \
         they do not skip themselves: run them as root, e.g. `sudo -E cargo test -p weft-perf`"
    );
}

/// Runs `cmd` to completion and returns its stdout; the error names the full command
/// line, the exit status and stderr.
pub fn run_cmd(cmd: &mut Command) -> Result<String> {
    let line = command_line(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// The command line of `cmd`, for messages (arguments with spaces are quoted).
pub fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            let _ = write!(line, " '{arg}'");
        } else {
            let _ = write!(line, " {arg}");
        }
    }
    line
}

/// Owns a child process; on drop it sends SIGTERM, waits up to a grace period (2 s by
/// default), then SIGKILLs and reaps it. Signals go to the child's pid only.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    line: String,
    grace: Duration,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` and guards the child.
    pub fn spawn(cmd: &mut Command) -> Result<ChildGuard> {
        let line = command_line(cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        Ok(ChildGuard {
            child,
            line,
            grace: DEFAULT_GRACE,
            status: None,
        })
    }

    /// Guards an already spawned child.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard {
            child,
            line: String::from("<child>"),
            grace: DEFAULT_GRACE,
            status: None,
        }
    }

    /// Sets how long drop waits between SIGTERM and SIGKILL.
    pub fn with_grace(mut self, grace: Duration) -> ChildGuard {
        self.grace = grace;
        self
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The guarded child, e.g. to take its stdout pipe.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Returns the exit status if the child has exited (and reaps it), without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for `{}` (pid {})", self.line, self.pid()))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Ok(None);
            }
            std::thread::sleep(pause.min(timeout - elapsed));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM to the child unless it has already exited.
    pub fn kill_term(&mut self) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: kill has no memory-safety preconditions. The child has not been reaped
        // (try_wait just returned None), so `pid` still names our child, not a reused pid.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err).with_context(|| format!("SIGTERM to `{}` (pid {pid})", self.line));
            }
        }
        Ok(())
    }

    /// Stops the child now (SIGTERM, grace period, SIGKILL) and returns how it ended.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.kill_term()?;
        if let Some(status) = self.wait_timeout(self.grace)? {
            return Ok(status);
        }
        let pid = self.pid();
        self.child
            .kill()
            .with_context(|| format!("SIGKILL to `{}` (pid {pid})", self.line))?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping `{}` (pid {pid})", self.line))?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!(
                "weft-perf: could not stop `{}` (pid {}): {e:#}",
                self.line,
                self.pid()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_our_names() {
        assert_eq!(owner_pid("wpod-1234-7", "w"), Some(1234));
        assert_eq!(owner_pid("wa-b-1234-7", "w"), Some(1234));
        assert_eq!(owner_pid("w-1234-0", "w"), Some(1234));
        assert_eq!(owner_pid("wpod-1234-", "w"), None);
        assert_eq!(owner_pid("wpod-x-7", "w"), None);
        assert_eq!(owner_pid("wpod-1234", "w"), None);
        assert_eq!(owner_pid("cni-1234-7", "w"), None);
        assert_eq!(owner_pid("wpod-0-7", "w"), None);
    }

    #[test]
    fn ifname_rules() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("flannel.1").is_ok());
        assert!(check_ifname("123456789012345").is_ok());
        assert!(check_ifname("1234567890123456").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a b").is_err());
    }

    #[test]
    fn command_line_quotes() {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", "x", "sh", "-c", "echo hi"]);
        assert_eq!(command_line(&cmd), "ip netns exec x sh -c 'echo hi'");
    }

    #[test]
    fn wait_until_times_out() {
        let err = wait_until(Duration::from_millis(20), "never", || false).unwrap_err();
        assert!(err.to_string().contains("never"), "{err}");
        let mut n = 0;
        wait_until(Duration::from_secs(1), "third call", || {
            n += 1;
            n == 3
        })
        .unwrap();
    }
}
