//! `[encryption]`: whether the sleeve between nodes is sealed.

use std::path::PathBuf;

use serde::Deserialize;

use super::tunnel::{Mode, TunnelSettings};

/// `[encryption]` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct EncryptionOptions {
    /// Encrypt the sleeve between nodes: off, on (seal to every peer with a key,
    /// accept plaintext too) or required (seal always; drop plaintext and send
    /// nothing to a peer without a key) [default: off]. Needs mode = "sleeve".
    #[arg(id = "encryption", long = "encryption", value_name = "ENCRYPTION", value_parser = parse_encryption)]
    pub mode: Option<Encryption>,
    /// A file holding the cluster's pre-shared key (64 hex digits, mode 0600), mixed
    /// into every handshake; every node needs the same one.
    #[arg(long)]
    pub psk_file: Option<PathBuf>,
}

fn parse_encryption(s: &str) -> Result<Encryption, String> {
    s.parse()
}

/// A bad `[encryption]` setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptionConfigError {
    /// A pre-shared key with encryption off.
    #[error("invalid [encryption] psk-file (--psk-file): is set but encryption is off")]
    PskWithoutEncryption,
    /// Encryption with a mode other than the sleeve.
    #[error("invalid [encryption] mode (--encryption): needs mode = \"sleeve\" in [tunnel] (this node's mode is {0})")]
    NeedsSleeve(Mode),
    /// Encryption beside direct routing.
    #[error(
        "invalid [encryption] mode (--encryption): cannot be on with direct-routing: \
         direct-routed traffic is not encapsulated, so it could not be encrypted"
    )]
    DirectRouting,
}

/// Whether the sleeve is sealed, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionSettings {
    /// Whether the sleeve is encrypted.
    pub mode: Encryption,
    /// The cluster's pre-shared key file, if any.
    pub psk_file: Option<PathBuf>,
}

impl EncryptionOptions {
    /// Checks the settings against the tunnel's and applies defaults.
    pub fn resolve(
        self,
        tunnel: &TunnelSettings,
    ) -> Result<EncryptionSettings, EncryptionConfigError> {
        let mode = self.mode.unwrap_or_default();
        if mode == Encryption::Off {
            if self.psk_file.is_some() {
                return Err(EncryptionConfigError::PskWithoutEncryption);
            }
        } else if tunnel.mode != Mode::Sleeve {
            return Err(EncryptionConfigError::NeedsSleeve(tunnel.mode));
        } else if tunnel.direct_routing {
            return Err(EncryptionConfigError::DirectRouting);
        }
        Ok(EncryptionSettings {
            mode,
            psk_file: self.psk_file,
        })
    }
}

/// Whether the sleeve between nodes is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Plaintext.
    #[default]
    Off,
    /// Sealed to every peer with a public key; plaintext is still accepted.
    On,
    /// Sealed always; plaintext from peers is dropped, and a peer with no key gets
    /// nothing.
    Required,
}

impl std::str::FromStr for Encryption {
    type Err = String;
    fn from_str(s: &str) -> Result<Encryption, String> {
        match s {
            "off" => Ok(Encryption::Off),
            "on" => Ok(Encryption::On),
            "required" => Ok(Encryption::Required),
            _ => Err(format!(
                "unknown encryption {s:?}: expected off, on or required"
            )),
        }
    }
}
