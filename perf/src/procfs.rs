//! What `/proc` says about processes and the machine: CPU time, resident memory, start
//! times, and the facts a benchmark report records about where it ran.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Clock ticks per second of the `/proc` CPU counters (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    let Some(end) = text.rfind(')') else {
        bail!("{path}: no command name in {text:?}");
    };
    Ok(text[end + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// Field `n` (1-based, as proc(5) numbers them; `n >= 3`) of `/proc/<pid>/stat`.
fn stat_field(pid: u32, n: usize) -> Result<u64> {
    let fields = stat_fields(pid)?;
    let value = fields
        .get(n - 3)
        .with_context(|| format!("/proc/{pid}/stat has no field {n}"))?;
    value
        .parse()
        .with_context(|| format!("/proc/{pid}/stat field {n} is {value:?}"))
}

/// CPU seconds (user + system, all threads) process `pid` has used so far.
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let fields = stat_fields(pid)?;
    let parse = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat: field {} unreadable", i + 3))
    };
    // utime and stime are fields 14 and 15.
    let ticks = parse(14 - 3)? + parse(15 - 3)?;
    Ok(ticks as f64 / clock_ticks() as f64)
}

/// CPU time (user + system, all threads, live and exited) process `pid` has used so far,
/// to the nanosecond: its process CPU-time clock (`clock_getcpuclockid`). The `/proc`
/// counters of [`process_cpu_seconds`] move in clock ticks (10 ms at 100 Hz), too coarse
/// for a mostly idle process over a few seconds.
pub fn process_cpu_time(pid: u32) -> Result<Duration> {
    let target = libc::pid_t::try_from(pid).with_context(|| format!("pid {pid} out of range"))?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid place for the clock id; the call has no other
    // preconditions and returns an error number instead of setting errno.
    let err = unsafe { libc::clock_getcpuclockid(target, &mut clock) };
    if err != 0 {
        return Err(std::io::Error::from_raw_os_error(err))
            .with_context(|| format!("the CPU-time clock of process {pid}"));
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the CPU-time clock of process {pid}"));
    }
    let secs = u64::try_from(ts.tv_sec).context("a negative CPU time")?;
    let nanos = u32::try_from(ts.tv_nsec).context("a CPU time's nanoseconds out of range")?;
    Ok(Duration::new(secs, nanos))
}

/// The resident set size, in bytes, that the text of a `/proc/<pid>/status` file gives:
/// its `VmRSS:` line (`VmRSS:   21504 kB`; the kernel's "kB" is KiB). Kernel threads
/// and zombies have no such line.
pub fn parse_vm_rss(status: &str) -> Result<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS line (a kernel thread or a zombie?)")?;
    let mut words = line.split_whitespace();
    let (Some(value), Some("kB"), None) = (words.next(), words.next(), words.next()) else {
        bail!("VmRSS is {:?}, not \"<number> kB\"", line.trim());
    };
    let kib: u64 = value
        .parse()
        .with_context(|| format!("VmRSS is {:?}, not a number of kB", line.trim()))?;
    kib.checked_mul(1024).context("VmRSS out of range")
}

/// Resident memory of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn process_rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&text).with_context(|| path.clone())
}

/// When process `pid` started, in clock ticks after boot (field 22 of its stat): with
/// the pid, it names one process even after the pid is reused.
pub fn start_time(pid: u32) -> Result<u64> {
    stat_field(pid, 22)
}

/// Whether process `pid` exists, is not a zombie, and started at `start` (see
/// [`start_time`]).
pub fn is_same_process(pid: u32, start: u64) -> bool {
    let Ok(fields) = stat_fields(pid) else {
        return false;
    };
    // Field 3 is the state, field 22 the start time.
    fields.first().is_some_and(|state| state != "Z")
        && fields.get(22 - 3).and_then(|s| s.parse().ok()) == Some(start)
}

/// Process ids of the kernel's softirq threads (`ksoftirqd/<cpu>`), which do the
/// network work that system calls and interrupts leave over.
pub fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// CPU seconds the whole machine has spent busy (every state but idle and iowait),
/// summed over all CPUs, from the `cpu` line of `/proc/stat`.
pub fn machine_busy_seconds() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().context("/proc/stat: bad cpu counter"))
        .collect::<Result<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Ok(busy as f64 / clock_ticks() as f64)
}

/// The machine a benchmark ran on, as its report records it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Logical CPUs this process may use.
    pub cpus: usize,
    /// Total memory in GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// Operating system (`PRETTY_NAME` of os-release).
    pub os: String,
}

impl Machine {
    /// Reads the facts from `/proc` and `/etc/os-release`; unknown ones read "unknown".
    pub fn describe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let memory_gib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| (kib / (1024.0 * 1024.0) * 10.0).round() / 10.0)
            .unwrap_or(0.0);
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            kernel,
            os,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        assert!(is_same_process(me, start));
        assert!(!is_same_process(me, start + 1));
        assert!(process_cpu_seconds(me).unwrap() >= 0.0);
        assert!(machine_busy_seconds().unwrap() > 0.0);
        assert!(!ksoftirqd_pids().is_empty());
        let m = Machine::describe();
        assert!(m.cpus >= 1);
        assert!(!m.kernel.is_empty());
        let rss = process_rss_bytes(me).unwrap();
        assert!(rss > 0 && rss.is_multiple_of(1024), "{rss}");
    }

    #[test]
    fn cpu_time_is_precise_and_agrees_with_proc() {
        let me = std::process::id();
        let before = process_cpu_time(me).unwrap();
        // Spin until 20 ms of CPU are counted, however busy the machine; a bound on
        // the wall clock only stops a clock that does not move.
        let spin = std::time::Instant::now();
        let mut after = before;
        while after - before < Duration::from_millis(20) && spin.elapsed() < Duration::from_secs(30)
        {
            for _ in 0..10_000 {
                std::hint::black_box(0u64);
            }
            after = process_cpu_time(me).unwrap();
        }
        assert!(
            after - before >= Duration::from_millis(20),
            "the process clock did not count a spin: {before:?} {after:?}"
        );
        // /proc's tick counters trail the clock by at most a few ticks per thread.
        let ticks = process_cpu_seconds(me).unwrap();
        assert!(ticks <= after.as_secs_f64() + 0.05, "{ticks} {after:?}");
        // Beyond the kernel's largest pid (2^22), and beyond pid_t.
        assert!(process_cpu_time(4_194_305).is_err());
        assert!(process_cpu_time(u32::MAX).is_err());
    }

    #[test]
    fn vm_rss_parses() {
        let status = "Name:\tweftd\nUmask:\t0022\nState:\tS (sleeping)\n\
                      VmHWM:\t   23040 kB\nVmRSS:\t   21504 kB\nRssAnon:\t    9000 kB\n\
                      Threads:\t9\n";
        assert_eq!(parse_vm_rss(status).unwrap(), 21504 * 1024);
        assert_eq!(parse_vm_rss("VmRSS: 0 kB").unwrap(), 0);
        // A kernel thread has no Vm lines.
        let kthread = "Name:\tksoftirqd/0\nState:\tS (sleeping)\nThreads:\t1\n";
        assert!(parse_vm_rss(kthread).is_err());
        for bad in [
            "VmRSS:\t\n",
            "VmRSS:\t 12 MB\n",
            "VmRSS:\t x kB\n",
            "VmRSS:\t 12\n",
            "VmRSS:\t 12 kB extra\n",
            "VmRSS:\t -12 kB\n",
        ] {
            assert!(parse_vm_rss(bad).is_err(), "{bad:?}");
        }
        // Only the VmRSS line counts, not VmHWM or RssAnon.
        assert_eq!(
            parse_vm_rss("RssAnon:\t 1 kB\nVmRSS:\t 2 kB\n").unwrap(),
            2048
        );
    }
}
