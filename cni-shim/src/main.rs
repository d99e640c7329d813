//! `weft-cni`: the CNI plugin binary. A runtime runs it with the `CNI_*` environment
//! and the network config on stdin; it prints the result (or an error) on stdout.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use weft_cni::config::PLUGIN_TYPE;
use weft_cni::error::CniError;
use weft_cni::plugin::{run, Outcome};
use weft_cni::version::CniVersion;

/// Largest network config read from stdin.
const MAX_STDIN: u64 = 4 << 20;

/// How long the runtime may take to write the config and close stdin.
const STDIN_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    // The binary may be installed under another name; the config's `type` names it.
    let invoked = std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .filter(|name| name != PLUGIN_TYPE);
    let types: Vec<&str> = std::iter::once(PLUGIN_TYPE)
        .chain(invoked.as_deref())
        .collect();
    let outcome = std::panic::catch_unwind(|| run(|k| std::env::var(k).ok(), read_stdin, &types))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Outcome::error(&CniError::Bug(what), CniVersion::LATEST)
        });
    if !outcome.stdout.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", outcome.stdout);
        let _ = out.flush();
    }
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Reads stdin to its end, at most [`MAX_STDIN`] bytes and [`STDIN_TIMEOUT`] long.
fn read_stdin() -> Result<Vec<u8>, CniError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut buf = Vec::new();
            let r = std::io::stdin()
                .lock()
                .take(MAX_STDIN + 1)
                .read_to_end(&mut buf);
            let _ = tx.send(r.map(|_| buf));
        })
        .map_err(|e| CniError::Bug(format!("starting a thread: {e}")))?;
    match rx.recv_timeout(STDIN_TIMEOUT) {
        Ok(Ok(buf)) if buf.len() as u64 > MAX_STDIN => Err(CniError::Io(format!(
            "the config is larger than {MAX_STDIN} bytes"
        ))),
        Ok(Ok(buf)) => Ok(buf),
        Ok(Err(e)) => Err(CniError::Io(e.to_string())),
        Err(_) => Err(CniError::Io(format!(
            "stdin was not closed within {STDIN_TIMEOUT:?}"
        ))),
    }
}
