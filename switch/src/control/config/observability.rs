//! `[observability]`: the metrics endpoint, the logs' format and the flow log.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[observability]` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ObservabilityOptions {
    /// Serve Prometheus metrics at http://ADDR/metrics (for example 10.0.0.1:9402,
    /// or 127.0.0.1:9402 for loopback only) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// The logs' format on stderr: text, or json (one object per line)
    /// [default: text].
    #[arg(long, value_parser = parse_log_format)]
    pub log_format: Option<LogFormat>,
    /// Keep every worker's recent flows for `weft flows` even while no one is
    /// listening; without it they are kept only while someone is [default: false].
    #[arg(long, value_name = "FLOW_LOG")]
    pub flow_log: Option<bool>,
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("unknown log format {s:?}: expected text or json")),
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per event, with its spans' fields.
    Json,
}

/// The checked `[observability]` settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObservabilitySettings {
    /// Where `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// The logs' format.
    pub log_format: LogFormat,
    /// Whether flows are recorded while no one listens.
    pub flow_log: bool,
}

impl ObservabilityOptions {
    /// Applies defaults (every value is valid as parsed).
    pub fn resolve(&self) -> ObservabilitySettings {
        ObservabilitySettings {
            metrics_addr: self.metrics_addr,
            log_format: self.log_format.unwrap_or_default(),
            flow_log: self.flow_log.unwrap_or(false),
        }
    }
}
