//! `[afxdp]`: how AF_XDP pod ports are made.

use serde::Deserialize;

use crate::io::xsk;

/// `[afxdp]` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AfxdpOptions {
    /// When an AF_XDP port cannot be made (no kernel support, the memory limit, a
    /// missing capability), give the pod a TAP port instead of failing its ADD
    /// [default: false].
    #[arg(
        id = "afxdp_fallback",
        long = "afxdp-fallback",
        value_name = "AFXDP_FALLBACK"
    )]
    pub fallback: Option<bool>,
    /// Bind AF_XDP sockets in zero-copy mode; only drivers with AF_XDP zero-copy
    /// take it, not veth [default: false].
    #[arg(
        id = "afxdp_zero_copy",
        long = "afxdp-zero-copy",
        value_name = "AFXDP_ZERO_COPY"
    )]
    pub zero_copy: Option<bool>,
    /// UMEM frames (4 KiB each) per AF_XDP queue, a power of two from 64 to 16384;
    /// half receive, half send [default: 1024, 4 MiB per queue].
    #[arg(
        id = "afxdp_frames",
        long = "afxdp-frames",
        value_name = "AFXDP_FRAMES"
    )]
    pub frames: Option<u32>,
}

/// A bad `[afxdp]` setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AfxdpConfigError {
    /// A frame count the UMEM cannot have.
    #[error("invalid [afxdp] frames (--afxdp-frames): {0}")]
    Frames(String),
}

/// How AF_XDP ports are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Afxdp {
    /// Give a pod a TAP port when its AF_XDP port cannot be made.
    pub fallback: bool,
    /// How the sockets are bound.
    pub mode: xsk::Mode,
    /// The frame pool of each queue.
    pub geometry: xsk::Geometry,
}

impl AfxdpOptions {
    /// Checks the settings and applies defaults.
    pub fn resolve(self) -> Result<Afxdp, AfxdpConfigError> {
        Ok(Afxdp {
            fallback: self.fallback.unwrap_or(false),
            mode: xsk::Mode {
                zero_copy: self.zero_copy.unwrap_or(false),
                multi_buffer: true,
            },
            geometry: match self.frames {
                None => xsk::Geometry::DEFAULT,
                Some(n) => xsk::Geometry::new(n).map_err(AfxdpConfigError::Frames)?,
            },
        })
    }
}
