//! weftd's logs: `tracing` events on stderr, as text or as one JSON object per
//! line, filtered by `RUST_LOG` (default `info`).
//!
//! weft's own code and its crates log through the `log` facade; tracing-log hands
//! those records to the same subscriber, inside whatever span is current, so a line
//! logged while a CNI request is served carries the request's span (its verb,
//! container id and pod). Workers never log per frame: what the datapath refuses
//! is counted, and policy verdicts go to the flow log.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

use crate::control::config::LogFormat;

/// Set once the subscriber is installed.
static READY: AtomicBool = AtomicBool::new(false);

/// Whether [`init`] has installed the subscriber: until then, errors are
/// printed plainly.
pub fn ready() -> bool {
    READY.load(Ordering::Acquire)
}

/// Installs the process's subscriber, once; a second call is refused.
pub fn init(format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: the logs of a service go to files and journals.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
    installed.map_err(|e| format!("setting up the logs: {e}"))?;
    READY.store(true, Ordering::Release);
    Ok(())
}
