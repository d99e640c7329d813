//! `[mtu]`: the underlay's MTU, and the pods'.

use serde::Deserialize;

use super::encryption::Encryption;
use super::tunnel::Mode;
use crate::tables::TUNNEL_OVERHEAD;

/// `[mtu]` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct MtuOptions {
    /// MTU of the underlay network [default: 1500]; pods get 50 bytes less.
    #[arg(
        id = "underlay_mtu",
        long = "underlay-mtu",
        value_name = "UNDERLAY_MTU"
    )]
    pub underlay: Option<u32>,
    /// MTU of pods and the host port, if lower than the mode allows [default: the
    /// underlay MTU, less 50 with a tunnel].
    #[arg(id = "pod_mtu", long = "pod-mtu", value_name = "POD_MTU")]
    pub pod: Option<u32>,
}

/// A bad `[mtu]` setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MtuConfigError {
    /// An underlay MTU out of bounds.
    #[error("invalid [mtu] underlay (--underlay-mtu): {0}: between 576 and 9216")]
    Underlay(u32),
    /// A pod MTU out of bounds, or more than the tunnel leaves.
    #[error("invalid [mtu] pod (--pod-mtu): {pod}: between 576 and {most} (the underlay MTU, less the tunnel's {overhead})")]
    Pod {
        /// The pod MTU given.
        pod: u32,
        /// The most it may be.
        most: u32,
        /// What the tunnel takes.
        overhead: u32,
    },
}

/// The MTUs, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtuSettings {
    /// Underlay MTU.
    pub underlay: u32,
    /// The pod MTU asked for, if any.
    pub pod_limit: Option<u32>,
}

impl MtuOptions {
    /// Checks the settings against what the tunnel takes and applies defaults.
    pub fn resolve(
        self,
        mode: Mode,
        encryption: Encryption,
    ) -> Result<MtuSettings, MtuConfigError> {
        let underlay = self.underlay.unwrap_or(1500);
        if !(576..=9216).contains(&underlay) {
            return Err(MtuConfigError::Underlay(underlay));
        }
        if let Some(pod) = self.pod {
            let overhead = tunnel_overhead(mode, encryption);
            let most = underlay - overhead;
            if !(576..=most).contains(&pod) {
                return Err(MtuConfigError::Pod {
                    pod,
                    most,
                    overhead,
                });
            }
        }
        Ok(MtuSettings {
            underlay,
            pod_limit: self.pod,
        })
    }
}

/// What a tunnel takes from the underlay MTU: VXLAN's 50 bytes in both tunnel
/// modes (a sleeve datagram of one record needs 44 of them), and with encryption a
/// sleeve datagram's 44 and the seal's 28 header and tag bytes: 72.
pub fn tunnel_overhead(mode: Mode, encryption: Encryption) -> u32 {
    match (mode.tunnel(), encryption) {
        (None, _) => 0,
        (Some(_), Encryption::Off) => TUNNEL_OVERHEAD,
        (Some(_), _) => {
            (weft_encap::sleeve::IPV4_OVERHEAD + weft_encap::sleeve::seal::SEAL_OVERHEAD) as u32
        }
    }
}
