//! The record of daemons a run started, so `weft-perf clean` can stop those a killed
//! run left behind, and only those: processes are named by pid *and* start time (a
//! reused pid is never taken for ours) and are never looked up by name.
//!
//! Each run owns `/run/weft-perf/<pid>-<start>.pids`, one `<pid> <start>` line per live
//! daemon, rewritten atomically on each change and removed when the run ends.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::wait_until;
use crate::procfs::{is_same_process, start_time};

/// Directory holding the pid files of running (or killed) runs.
pub const RUN_DIR: &str = "/run/weft-perf";

/// How long [`clean_stale`] waits after SIGTERM before it sends SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// A process named so that a reused pid cannot be mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// The pid.
    pub pid: u32,
    /// Its start time in clock ticks after boot.
    pub start: u64,
}

impl ProcessId {
    /// The live process `pid`.
    pub fn of(pid: u32) -> Result<ProcessId> {
        Ok(ProcessId {
            pid,
            start: start_time(pid)?,
        })
    }

    /// Whether this very process still exists.
    pub fn alive(&self) -> bool {
        is_same_process(self.pid, self.start)
    }
}

/// This run's pid file: the daemons it has running. Removed on drop.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    entries: Vec<ProcessId>,
}

impl PidFile {
    /// Creates this process's (empty) pid file in `dir` ([`RUN_DIR`] for real runs).
    pub fn create(dir: &Path) -> Result<PidFile> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let me = ProcessId::of(std::process::id())?;
        let path = dir.join(format!("{}-{}.pids", me.pid, me.start));
        let file = PidFile {
            path,
            entries: Vec::new(),
        };
        file.write()?;
        Ok(file)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the live process `pid`.
    pub fn add(&mut self, pid: u32) -> Result<()> {
        self.entries.push(ProcessId::of(pid)?);
        self.write()
    }

    /// Forgets `pid` (once it has been stopped).
    pub fn remove(&mut self, pid: u32) -> Result<()> {
        self.entries.retain(|e| e.pid != pid);
        self.write()
    }

    fn write(&self) -> Result<()> {
        let mut text = String::new();
        for e in &self.entries {
            let _ = writeln!(text, "{} {}", e.pid, e.start);
        }
        crate::weft::write_atomic(&self.path, &text)
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Parses a pid file name `<pid>-<start>.pids` into its owner.
fn owner_of(name: &str) -> Option<ProcessId> {
    let (pid, start) = name.strip_suffix(".pids")?.split_once('-')?;
    Some(ProcessId {
        pid: pid.parse().ok()?,
        start: start.parse().ok()?,
    })
}

/// Parses the lines of a pid file; malformed lines are skipped.
fn entries_of(text: &str) -> Vec<ProcessId> {
    text.lines()
        .filter_map(|l| {
            let (pid, start) = l.trim().split_once(' ')?;
            Some(ProcessId {
                pid: pid.parse().ok()?,
                start: start.parse().ok()?,
            })
        })
        .collect()
}

/// For every pid file in `dir` whose run is gone, stops the processes it lists that
/// still exist (SIGTERM, then SIGKILL after a grace period) and removes the file.
/// Returns the pids it stopped. Files of live runs are left alone.
pub fn clean_stale(dir: &Path) -> Result<Vec<u32>> {
    let mut stopped = Vec::new();
    let listing = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(stopped),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in listing {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = owner_of(&name) else {
            continue;
        };
        if owner.alive() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let live: Vec<ProcessId> = entries_of(&text)
            .into_iter()
            .filter(ProcessId::alive)
            .collect();
        for p in &live {
            signal(p, libc::SIGTERM)?;
        }
        let all_gone = wait_until(GRACE, "stale daemons to exit on SIGTERM", || {
            live.iter().all(|p| !p.alive())
        });
        if all_gone.is_err() {
            for p in live.iter().filter(|p| p.alive()) {
                signal(p, libc::SIGKILL)?;
            }
        }
        stopped.extend(live.iter().map(|p| p.pid));
        std::fs::remove_file(entry.path())
            .with_context(|| format!("removing {}", entry.path().display()))?;
    }
    Ok(stopped)
}

/// Sends `sig` to `p` if it is still that process.
fn signal(p: &ProcessId, sig: libc::c_int) -> Result<()> {
    if !p.alive() {
        return Ok(());
    }
    let pid = libc::pid_t::try_from(p.pid).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions; the start time was checked
    // just above, so `pid` names the process the pid file recorded.
    if unsafe { libc::kill(pid, sig) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err).with_context(|| format!("signal {sig} to stale pid {pid}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_lines_parse() {
        assert_eq!(
            owner_of("123-456.pids"),
            Some(ProcessId {
                pid: 123,
                start: 456
            })
        );
        assert_eq!(owner_of("123.pids"), None);
        assert_eq!(owner_of("123-456.tmp"), None);
        assert_eq!(
            entries_of("1 2\nbad\n3 4\n"),
            vec![
                ProcessId { pid: 1, start: 2 },
                ProcessId { pid: 3, start: 4 }
            ]
        );
    }

    #[test]
    fn stale_files_are_cleaned_and_live_ones_kept() {
        let dir = crate::weft::Scratch::new("pidfile").unwrap();
        let mut mine = PidFile::create(dir.path()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        mine.add(child.id()).unwrap();
        // A run that is gone (a start time no process has), which left `child` running.
        let stale = dir.path().join(format!("{}-1.pids", std::process::id()));
        let entry = ProcessId::of(child.id()).unwrap();
        std::fs::write(&stale, format!("{} {}\n", entry.pid, entry.start)).unwrap();
        let stopped = clean_stale(dir.path()).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(stopped, vec![entry.pid]);
        assert!(!status.success());
        assert!(!stale.exists());
        assert!(mine.path().exists(), "a live run's file is kept");
        mine.remove(entry.pid).unwrap();
        let path = mine.path().to_owned();
        drop(mine);
        assert!(!path.exists());
    }
}
