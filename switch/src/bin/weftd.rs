//! weftd: the weft node daemon.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use weft_switch::control::config::Options;
use weft_switch::control::daemon::Daemon;
use weft_switch::control::server;

/// weft's per-node userspace switch.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file; its keys are the flag names below (flags win).
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
    #[command(flatten)]
    options: Options,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("weftd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let file = match &cli.config {
        Some(path) => Options::from_file(path)?,
        None => Options::default(),
    };
    let options = cli.options.or(file);
    if cli.show_key {
        let dir = options
            .state_dir
            .clone()
            .unwrap_or_else(|| weft_switch::control::config::DEFAULT_STATE_DIR.into());
        let key = weft_switch::control::keys::load_or_create(&dir)?;
        println!("{}", weft_switch::control::keys::PublicKey(key.public()));
        return Ok(());
    }
    let settings = options.resolve()?;
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
    let listener = rt.block_on(async { server::bind_socket(&settings.socket) })?;
    let socket = settings.socket.clone();
    let d = match Daemon::start(settings, rt.handle()) {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e.into());
        }
    };
    rt.block_on(server::run(d, listener))?;
    Ok(())
}
