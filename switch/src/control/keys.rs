//! The node's static key and the cluster's pre-shared key, on disk.
//!
//! The static key lives in `<state-dir>/node.key`: the X25519 private key as 64 hex
//! digits and a newline, mode 0600, created at the first start with encryption on
//! and kept from then on (the public key is derived from it). A key file that other
//! users can read is refused, as is a malformed one: weftd never runs with a key it
//! cannot trust, and never silently replaces one (peers know its public key).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crypto::{hex, StaticKey};

/// The static key's file name under the state directory.
pub const KEY_FILE: &str = "node.key";

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing it failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Group or others may read it.
    #[error("{path} is readable by group or others (mode {mode:04o}); it must be 0600: chmod 600 {path}")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Its contents are not 64 hex digits.
    #[error("{path}: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// A 32-byte X25519 public key, written as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// Parses 64 hex digits into 32 bytes. The error never quotes the input: it may
/// be a secret key, slightly mangled.
pub(crate) fn parse_hex32(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let hex = s.bytes().filter(u8::is_ascii_hexdigit).count();
        return Err(format!(
            "a key is 64 hex digits, not {} characters ({hex} of them hex digits)",
            s.chars().count()
        ));
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(out)
}

impl FromStr for PublicKey {
    type Err = String;

    fn from_str(s: &str) -> Result<PublicKey, String> {
        let bytes = parse_hex32(s)?;
        if bytes == [0; 32] {
            return Err("the all-zero key is no public key".into());
        }
        Ok(PublicKey(bytes))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Reads 32 bytes of hex from `path`, refusing a file group or others can read.
fn read_secret(path: &Path) -> Result<Option<[u8; 32]>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse_hex32(&text)
        .map(Some)
        .map_err(|why| KeyError::Malformed {
            path: path.to_owned(),
            why,
        })
}

/// Loads the node's static key from `state_dir`, or creates it there (mode 0600,
/// written to a temporary file and renamed, so a crash never leaves half a key).
pub fn load_or_create(state_dir: &Path) -> Result<StaticKey, KeyError> {
    let path = state_dir.join(KEY_FILE);
    if let Some(private) = read_secret(&path)? {
        return Ok(StaticKey::from_private(private));
    }
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let key = StaticKey::generate();
    let tmp = state_dir.join(format!(".{KEY_FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{}", hex(key.private()))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    log::info!("created the node key {}", path.display());
    Ok(key)
}

/// Reads the cluster's pre-shared key (64 hex digits, mode 0600) from `path`.
pub fn read_psk(path: &Path) -> Result<[u8; 32], KeyError> {
    read_secret(path)?.ok_or_else(|| KeyError::Io {
        path: path.to_owned(),
        source: std::io::ErrorKind::NotFound.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-keys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_key_is_created_once_with_mode_0600_and_kept() {
        let d = dir("create");
        let first = load_or_create(&d).unwrap();
        let path = d.join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_or_create(&d).unwrap();
        assert_eq!(first.public(), again.public());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        // Nothing else was left in the directory.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_exposed_or_malformed_key_is_refused() {
        let d = dir("bad");
        load_or_create(&d).unwrap();
        let path = d.join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&d).unwrap_err();
        assert!(
            matches!(err, KeyError::Exposed { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let leaked = format!("0x{}", "ab".repeat(32));
        std::fs::write(&path, &leaked).unwrap();
        let err = load_or_create(&d).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
        assert!(
            !err.to_string().contains("abab"),
            "the error quotes the key: {err}"
        );
        std::fs::write(&path, "not a key\n").unwrap();
        let err = load_or_create(&d).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
        // The bad file is left for the operator, not replaced.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key\n");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn public_keys_parse_from_hex() {
        let k: PublicKey = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
            .parse()
            .unwrap();
        assert_eq!(k.0[0], 0x85);
        assert_eq!(
            k.to_string(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        for bad in ["", "85", &"g".repeat(64), &"0".repeat(64), &"a".repeat(65)] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_psk_file_must_exist_and_be_private() {
        let d = dir("psk");
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("psk");
        assert!(matches!(read_psk(&path), Err(KeyError::Io { .. })));
        let psk = "11".repeat(32);
        std::fs::write(&path, &psk).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(read_psk(&path), Err(KeyError::Exposed { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_psk(&path).unwrap(), [0x11; 32]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
