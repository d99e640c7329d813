//! Interruption: Ctrl-C (SIGINT) or SIGTERM asks a run to stop; long loops poll
//! [`requested`] and return early, and the guards tear everything down on the way out.
//! A second signal exits at once, leaving leftovers for `weft-perf clean`.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Exit status after a second interrupt (128 + SIGINT, as a shell reports it).
pub const ABORT_STATUS: i32 = 130;

/// Installs the SIGINT/SIGTERM handler (once per process).
pub fn install() -> Result<()> {
    ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!(
                "\nweft-perf: interrupted again: exiting without tearing down; \
                 `weft-perf clean` removes what is left"
            );
            std::process::exit(ABORT_STATUS);
        }
        eprintln!("\nweft-perf: interrupted: tearing down (interrupt again to abort)");
    })
    .context("installing the SIGINT/SIGTERM handler")
}

/// Whether an interrupt has asked the run to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// Fails with "interrupted" once an interrupt has asked the run to stop.
pub fn check() -> Result<()> {
    if requested() {
        bail!("interrupted");
    }
    Ok(())
}
