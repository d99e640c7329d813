//! weftd: the weft node daemon.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches};
use weft_switch::control::config::Options;
use weft_switch::control::daemon::Daemon;
use weft_switch::control::{logs, metrics, server};

/// weft's per-node userspace switch.
#[derive(Debug, clap::Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file: every flag below is a key, at the top level or in the
    /// section its heading names (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Join the cluster store (claim this node's subnet and register it), print the
    /// subnet and exit, starting nothing else: for testing many nodes at once.
    #[arg(long)]
    claim_only: bool,
    /// Print this node's public key for the encrypted sleeve (made in the state
    /// directory if it has none yet) and exit: what the peers file's `public-key`
    /// of this node must say.
    #[arg(long)]
    show_key: bool,
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        // Once the logs are set up, in their format; before, plainly.
        Err(e) if logs::ready() => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("weftd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// weftd's command line: `Cli`, and the settings' flags. The settings are not a
/// field of `Cli`: they are read from the config file first, and then the flags
/// given (only those) override them.
fn command() -> clap::Command {
    let cli = Cli::command();
    // Cli says what weftd is; Options' own doc would take its place.
    let about = cli.get_about().cloned().unwrap_or_default();
    Options::augment_args(cli).about(about).long_about(None)
}

/// The environment variable of the test hook that makes a worker panic.
const PANIC_HOOK: &str = "WEFT_TEST_PANIC_WORKER_AFTER";

/// The test hook: `WEFT_TEST_PANIC_WORKER_AFTER=<frames>` makes each worker panic
/// once it has read that many frames (from its queues and its tunnel socket), for the test that a dead worker
/// takes the daemon down (it aborts). Only the environment weftd starts in sets it:
/// no config key, flag, control request or packet can.
fn test_panic_after() -> anyhow::Result<Option<u64>> {
    let Some(value) = std::env::var_os(PANIC_HOOK) else {
        return Ok(None);
    };
    let frames = (value.to_str())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("{PANIC_HOOK}={value:?}: not a number of frames"))?;
    log::warn!("test hook {PANIC_HOOK}: each worker panics after {frames} frames");
    Ok(Some(frames))
}

fn run(cli: Cli, flags: &clap::ArgMatches) -> anyhow::Result<()> {
    let (mut options, flat) = match &cli.config {
        Some(path) => Options::read_file(path)?,
        None => (Options::default(), Vec::new()),
    };
    options.update_from_arg_matches(flags)?;
    // The logs' format is a setting: they start once the settings are read.
    logs::init(options.observability.log_format.unwrap_or_default()).map_err(anyhow::Error::msg)?;
    for key in flat {
        let file = cli
            .config
            .as_deref()
            .unwrap_or(std::path::Path::new(""))
            .display();
        log::warn!("{file}: {key}");
    }
    if cli.show_key {
        let dir = options
            .state_dir
            .clone()
            .unwrap_or_else(|| weft_switch::control::config::DEFAULT_STATE_DIR.into());
        let key = weft_switch::control::keys::load_or_create(&dir)?;
        println!("{}", weft_switch::control::keys::PublicKey(key.public()));
        return Ok(());
    }
    let mut settings = options.resolve()?;
    settings.datapath.test_panic_after = test_panic_after()?;
    // The first line of every start: a start that stalls before the store, the
    // host or the workers answer shows how far it came.
    log::info!(
        "weftd {} starting: node {}, {:?} mode, {} workers",
        env!("CARGO_PKG_VERSION"),
        settings.node_name,
        settings.tunnel.mode,
        settings.datapath.workers
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(16)
        .thread_name("weft-control")
        .enable_all()
        .build()?;
    if cli.claim_only {
        let subnet = Daemon::claim_only(&settings, rt.handle())?;
        println!("{subnet}");
        return Ok(());
    }
    // Bind the socket first: a second daemon must fail before it touches weft0.
    let listener =
        rt.block_on(async { server::bind_socket(&settings.socket, settings.socket_group) })?;
    let socket = settings.socket.clone();
    // Likewise the metrics endpoint: an address in use fails the start.
    let metrics = match settings.observability.metrics_addr {
        Some(addr) => match rt.block_on(metrics::bind(addr)) {
            Ok(l) => Some(l),
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                return Err(e.into());
            }
        },
        None => None,
    };
    let d = match Daemon::start(settings, rt.handle()) {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e.into());
        }
    };
    rt.block_on(server::run(d, listener, metrics))?;
    Ok(())
}
