//! Running CNI plugins exactly as a container runtime does: the plugin named by the
//! config's `type` is looked up in `CNI_PATH`, started with the `CNI_*` environment and
//! the network config on stdin, inside the host's network namespace, and its result is
//! read from stdout. Every call is bounded in time.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::netns::Netns;

/// Where Debian's containernetworking-plugins installs the reference plugins.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

/// The spec version of the configs weft-perf writes.
pub const CNI_VERSION: &str = "1.0.0";

/// The longest one plugin call may take before it is killed and the call fails.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A CNI verb weft-perf uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
}

impl Verb {
    /// The value of `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
        }
    }
}

/// One network: a config and the directory its plugins are found in.
#[derive(Debug, Clone)]
pub struct Network {
    /// `CNI_PATH`: the directory holding the plugin named by `type` (and its delegates).
    pub plugin_dir: PathBuf,
    /// The network config written to the plugin's stdin.
    pub config: Value,
}

/// What a successful call returned.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The plugin's result (`Null` when it printed nothing, as DEL may).
    pub result: Value,
    /// Wall time from starting the plugin to its exit.
    pub elapsed: Duration,
}

impl Outcome {
    /// The first address of an ADD result's `ips`, without its prefix length.
    pub fn first_ip(&self) -> Result<std::net::Ipv4Addr> {
        first_ip(&self.result)
    }

    /// The IPv6 address of an ADD result's `ips`, without its prefix length, if it
    /// lists one (a dual-stack network).
    pub fn ipv6(&self) -> Result<Option<std::net::Ipv6Addr>> {
        ipv6(&self.result)
    }
}

/// The first IPv6 address of an ADD result's `ips`, without its prefix length, if
/// it lists one; fails on an entry that is no address.
pub fn ipv6(result: &Value) -> Result<Option<std::net::Ipv6Addr>> {
    let ips = result["ips"]
        .as_array()
        .with_context(|| format!("no ips in the result {result}"))?;
    for entry in ips {
        let addr = entry["address"]
            .as_str()
            .with_context(|| format!("an ips entry without an address: {entry}"))?;
        let ip = addr.split('/').next().unwrap_or(addr);
        let ip: std::net::IpAddr = ip
            .parse()
            .with_context(|| format!("ips address {addr:?} is not an IP address"))?;
        if let std::net::IpAddr::V6(v6) = ip {
            return Ok(Some(v6));
        }
    }
    Ok(None)
}

/// The first address of an ADD result's `ips`, without its prefix length.
pub fn first_ip(result: &Value) -> Result<std::net::Ipv4Addr> {
    let addr = result["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("no ips[0].address in the result {result}"))?;
    let ip = addr.split('/').next().unwrap_or(addr);
    ip.parse()
        .with_context(|| format!("ips[0].address {addr:?} is not an IPv4 address"))
}

impl Network {
    /// The plugin executable: `type` looked up in `plugin_dir`.
    pub fn plugin(&self) -> Result<PathBuf> {
        let plugin_type = self.config["type"]
            .as_str()
            .context("the network config has no \"type\"")?;
        let path = self.plugin_dir.join(plugin_type);
        if !path.is_file() {
            bail!(
                "CNI plugin {plugin_type:?} not found in {}",
                self.plugin_dir.display()
            );
        }
        Ok(path)
    }

    /// Calls the plugin with `verb` for container `container_id`'s interface `ifname`
    /// in the namespace at `netns`, running it inside `host` (the runtime's namespace).
    /// Fails on a non-zero exit, naming the plugin's error.
    pub fn call(
        &self,
        verb: Verb,
        host: &Netns,
        container_id: &str,
        netns: &Path,
        ifname: &str,
    ) -> Result<Outcome> {
        self.call_as(verb, host, container_id, netns, ifname, None)
    }

    /// Like [`Network::call`], for the Kubernetes pod `k8s` (namespace, name), passed
    /// in `CNI_ARGS` as kubelet passes it.
    pub fn call_as(
        &self,
        verb: Verb,
        host: &Netns,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        k8s: Option<(&str, &str)>,
    ) -> Result<Outcome> {
        let plugin = self.plugin()?;
        let host_ns = std::fs::File::open(host.path())
            .with_context(|| format!("opening {}", host.path().display()))?;
        let stdin = serde_json::to_vec(&self.config)?;
        let mut cmd = Command::new(&plugin);
        cmd.env_clear()
            .env("CNI_COMMAND", verb.as_str())
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.plugin_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((namespace, name)) = k8s {
            cmd.env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"),
            );
        }
        let fd = host_ns.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: setns is a plain system call, and `fd`
        // stays open in the child because `host_ns` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let what = format!(
            "CNI {} of {container_id} ({}) with {}",
            verb.as_str(),
            netns.display(),
            plugin.display()
        );
        let start = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("{what}: could not start"))?;
        drop(host_ns);
        let ran = finish(child, start, &stdin, &what)?;
        ran.outcome(&what)
    }
}

/// A plugin's run: how it exited, how long it took, what it printed.
struct Ran {
    status: std::process::ExitStatus,
    elapsed: Duration,
    out: Vec<u8>,
    err: Vec<u8>,
}

impl Ran {
    /// The result of a run that exited with 0 (`Null` for nothing printed), or the
    /// plugin's error.
    fn outcome(self, what: &str) -> Result<Outcome> {
        let out = String::from_utf8_lossy(&self.out);
        if !self.status.success() {
            bail!(
                "{what} failed ({}): {} {}",
                self.status,
                out.trim(),
                String::from_utf8_lossy(&self.err).trim()
            );
        }
        let result = if out.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&out)
                .with_context(|| format!("{what}: stdout is not JSON: {out}"))?
        };
        Ok(Outcome {
            result,
            elapsed: self.elapsed,
        })
    }
}

/// Feeds `stdin` to `child`, started at `start`, collects what it prints and waits
/// for it to exit, at most [`CALL_TIMEOUT`] (then it is killed and the run fails).
fn finish(mut child: std::process::Child, start: Instant, stdin: &[u8], what: &str) -> Result<Ran> {
    let mut input = child.stdin.take().context("plugin stdin")?;
    let mut stdout = child.stdout.take().context("plugin stdout")?;
    let mut stderr = child.stderr.take().context("plugin stderr")?;
    let (status, out, err) = std::thread::scope(|s| {
        // The plugin may exit before it reads all of stdin: a write error is moot.
        s.spawn(move || {
            let _ = input.write_all(stdin);
        });
        let out = s.spawn(move || {
            let mut v = Vec::new();
            let _ = stdout.read_to_end(&mut v);
            v
        });
        let err = s.spawn(move || {
            let mut v = Vec::new();
            let _ = stderr.read_to_end(&mut v);
            v
        });
        let status = match wait_exit(child.id(), CALL_TIMEOUT) {
            Ok(true) => child.wait().map_err(|e| anyhow!("{what}: reaping: {e}")),
            Ok(false) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(anyhow!("{what}: no exit within {CALL_TIMEOUT:?}"))
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e.context(format!("{what}: waiting")))
            }
        };
        let elapsed = start.elapsed();
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        (status.map(|s| (s, elapsed)), out, err)
    });
    let (status, elapsed) = status?;
    Ok(Ran {
        status,
        elapsed,
        out,
        err,
    })
}

/// Waits until the (unreaped) child `pid` exits, at most `timeout`; returns whether it
/// did. Uses a pidfd, so the exit is seen at once, not at the next poll.
fn wait_exit(pid: u32, timeout: Duration) -> Result<bool> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1. The child is
    // not reaped yet, so `pid` still names it.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open");
    }
    let fd = i32::try_from(fd).context("pidfd out of range")?;
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nothing else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let left = left.max(Duration::from_millis(1));
        if crate::netns::readable(fd.as_fd(), left).context("poll on a pidfd")? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_dual_stack_result_gives_both_addresses() {
        let dual = json!({"ips": [
            {"address": "10.244.1.2/24", "gateway": "10.244.1.1"},
            {"address": "fd00:10:244:1::2/64", "gateway": "fd00:10:244:1::1"},
        ]});
        assert_eq!(first_ip(&dual).unwrap().to_string(), "10.244.1.2");
        assert_eq!(
            ipv6(&dual).unwrap().unwrap().to_string(),
            "fd00:10:244:1::2"
        );
        let v4 = json!({"ips": [{"address": "10.244.1.2/24"}]});
        assert_eq!(ipv6(&v4).unwrap(), None);
        assert!(ipv6(&json!({})).is_err());
        assert!(ipv6(&json!({"ips": [{"address": "nonsense"}]})).is_err());
    }
}
