//! `[tunnel]`: how a node reaches its peers.

use std::time::Duration;

use serde::Deserialize;
use weft_encap::vxlan::{Vni, DEFAULT_PORT};

use crate::mac::MacAddr;
use crate::tables::TunnelMode;

/// The default heartbeat interval.
pub const DEFAULT_HEARTBEAT_MS: u32 = 1_000;
/// The shortest heartbeat interval allowed.
pub const MIN_HEARTBEAT_MS: u32 = 10;
/// The longest heartbeat interval allowed.
pub const MAX_HEARTBEAT_MS: u32 = 60_000;

/// `[tunnel]` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct TunnelOptions {
    /// How traffic reaches peers: vxlan or sleeve (tunnels), or direct (host routes
    /// via the peer's underlay address, flannel's host-gw) [default: vxlan].
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Beside a tunnel: reach peers on this node's L2 segment with no encapsulation,
    /// as `mode = "direct"` does, and the others through the tunnel [default: false].
    #[arg(long)]
    pub direct_routing: Option<bool>,
    /// VXLAN network identifier [default: 1].
    #[arg(long)]
    pub vni: Option<u32>,
    /// UDP port of the tunnel [default: 8472].
    #[arg(long)]
    pub port: Option<u16>,
    /// This node's VTEP MAC [default: from the peers file, else derived from the name].
    #[arg(long)]
    pub vtep_mac: Option<MacAddr>,
    /// How often to send every peer a heartbeat, in milliseconds; a peer silent for
    /// three intervals is down, and 0 turns heartbeats off [default: 1000].
    #[arg(long)]
    pub heartbeat_ms: Option<u32>,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

/// A bad `[tunnel]` setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelConfigError {
    /// `direct-routing = false` with `mode = "direct"`.
    #[error(
        "invalid [tunnel] direct-routing (--direct-routing): false contradicts mode = \"direct\""
    )]
    DirectRouting,
    /// A VNI wider than 24 bits.
    #[error("invalid [tunnel] vni (--vni): {0} does not fit in 24 bits")]
    Vni(u32),
    /// Port 0.
    #[error("invalid [tunnel] port (--port): 0 is not a port")]
    Port,
    /// A heartbeat interval out of bounds.
    #[error(
        "invalid [tunnel] heartbeat-ms (--heartbeat-ms): {0}: 0 (off) or {MIN_HEARTBEAT_MS} to {MAX_HEARTBEAT_MS}"
    )]
    Heartbeat(u32),
}

/// How a node reaches its peers, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSettings {
    /// How peers are reached.
    pub mode: Mode,
    /// Whether peers on this node's segment are reached with no tunnel.
    pub direct_routing: bool,
    /// VXLAN network identifier.
    pub vni: Vni,
    /// Tunnel UDP port.
    pub port: u16,
    /// VTEP MAC, if given.
    pub vtep_mac: Option<MacAddr>,
    /// Heartbeat interval; zero for none.
    pub heartbeat: Duration,
}

impl TunnelOptions {
    /// Checks the settings and applies defaults.
    pub fn resolve(self) -> Result<TunnelSettings, TunnelConfigError> {
        let mode = self.mode.unwrap_or(Mode::Vxlan);
        let direct_routing = match (mode, self.direct_routing) {
            (Mode::Direct, Some(false)) => return Err(TunnelConfigError::DirectRouting),
            (Mode::Direct, _) => true,
            (_, d) => d.unwrap_or(false),
        };
        let vni = self.vni.unwrap_or(1);
        let vni = Vni::new(vni).ok_or(TunnelConfigError::Vni(vni))?;
        let port = self.port.unwrap_or(DEFAULT_PORT);
        if port == 0 {
            return Err(TunnelConfigError::Port);
        }
        let heartbeat_ms = self.heartbeat_ms.unwrap_or(DEFAULT_HEARTBEAT_MS);
        if heartbeat_ms != 0 && !(MIN_HEARTBEAT_MS..=MAX_HEARTBEAT_MS).contains(&heartbeat_ms) {
            return Err(TunnelConfigError::Heartbeat(heartbeat_ms));
        }
        Ok(TunnelSettings {
            mode,
            direct_routing,
            vni,
            port,
            vtep_mac: self.vtep_mac,
            heartbeat: Duration::from_millis(u64::from(heartbeat_ms)),
        })
    }
}

/// How a node reaches its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// VXLAN tunnels.
    Vxlan,
    /// Sleeve tunnels.
    Sleeve,
    /// No tunnel: host routes to peers on the same L2 segment, and no way to others.
    Direct,
}

impl Mode {
    /// The tunnel, if the mode has one.
    pub fn tunnel(self) -> Option<TunnelMode> {
        match self {
            Mode::Vxlan => Some(TunnelMode::Vxlan),
            Mode::Sleeve => Some(TunnelMode::Sleeve),
            Mode::Direct => None,
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "vxlan" => Ok(Mode::Vxlan),
            "sleeve" => Ok(Mode::Sleeve),
            "direct" => Ok(Mode::Direct),
            _ => Err(format!(
                "unknown mode {s:?}: expected vxlan, sleeve or direct"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Vxlan => "vxlan",
            Mode::Sleeve => "sleeve",
            Mode::Direct => "direct",
        })
    }
}
