//! `[datapath]`: the workers, their queues and polling, and the pods' port type.

use std::time::Duration;

use serde::Deserialize;

pub use weft_proto::PortType;

/// The default longest polling window of a worker (see [`crate::io::spin`]): long
/// enough to catch a pod's reply to the request just handed to it.
pub const DEFAULT_POLL_US: u32 = 100;
/// The largest polling window allowed: beyond it, polling only burns CPU.
pub const MAX_POLL_US: u32 = 10_000;
/// The most worker threads.
pub const MAX_WORKERS: usize = crate::io::worker::plan::MAX_WORKERS;

/// `[datapath]` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DatapathOptions {
    /// Worker threads [default: number of cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Queues per port, at most one per worker [default: workers].
    #[arg(long)]
    pub port_queues: Option<usize>,
    /// Longest a worker polls for more frames after work before it sleeps, in
    /// microseconds; the window adapts below it, and 0 turns polling off [default: 100].
    #[arg(long)]
    pub poll_us: Option<u32>,
    /// The port pods get unless they ask for another (CNI config `podPort`, or
    /// `WEFT_POD_PORT=` in CNI_ARGS): tap, or afxdp (a veth served by AF_XDP
    /// sockets) [default: tap].
    #[arg(long, value_parser = parse_port_type)]
    pub pod_port: Option<PortType>,
    /// Offer TAP devices UDP segmentation offload (USO), so that a UDP flow's
    /// datagrams cross a TAP merged, where the kernel has it (6.2+); false turns it
    /// off, as on older kernels [default: true].
    #[arg(long)]
    pub tap_uso: Option<bool>,
}

fn parse_port_type(s: &str) -> Result<PortType, String> {
    s.parse()
}

/// A bad `[datapath]` setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatapathConfigError {
    /// No workers, or too many.
    #[error("invalid [datapath] workers (--workers): {0}: between 1 and {MAX_WORKERS}")]
    Workers(usize),
    /// A polling window out of bounds.
    #[error("invalid [datapath] poll-us (--poll-us): {0}: at most {MAX_POLL_US}")]
    PollUs(u32),
    /// No queues, or more than workers.
    #[error("invalid [datapath] port-queues (--port-queues): {queues}: between 1 and the number of workers ({workers})")]
    PortQueues {
        /// The queues given.
        queues: usize,
        /// The workers.
        workers: usize,
    },
}

/// The workers and their queues, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathSettings {
    /// Worker threads.
    pub workers: usize,
    /// Queues per port.
    pub port_queues: usize,
    /// Longest adaptive polling window of a worker.
    pub poll: Duration,
    /// The port type of pods that do not ask for one.
    pub pod_port: PortType,
    /// Whether TAP devices are offered USO.
    pub tap_uso: bool,
    /// Test only, and never from the config file, a flag or the control socket:
    /// each worker panics once it has read this many frames. weftd
    /// sets it from `WEFT_TEST_PANIC_WORKER_AFTER`, for the test that a dead worker
    /// takes the daemon down.
    pub test_panic_after: Option<u64>,
}

impl DatapathOptions {
    /// Checks the settings and applies defaults.
    pub fn resolve(self) -> Result<DatapathSettings, DatapathConfigError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = self.workers.unwrap_or(cores);
        if workers == 0 || workers > MAX_WORKERS {
            return Err(DatapathConfigError::Workers(workers));
        }
        let poll_us = self.poll_us.unwrap_or(DEFAULT_POLL_US);
        if poll_us > MAX_POLL_US {
            return Err(DatapathConfigError::PollUs(poll_us));
        }
        let port_queues = self.port_queues.unwrap_or(workers);
        if port_queues == 0 || port_queues > workers {
            return Err(DatapathConfigError::PortQueues {
                queues: port_queues,
                workers,
            });
        }
        Ok(DatapathSettings {
            workers,
            port_queues,
            poll: Duration::from_micros(u64::from(poll_us)),
            pod_port: self.pod_port.unwrap_or_default(),
            tap_uso: self.tap_uso.unwrap_or(true),
            test_panic_after: None,
        })
    }
}
