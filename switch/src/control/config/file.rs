//! The config file: TOML in sections (`[tunnel]`, `[etcd]`, ...), or in the flat
//! layout before them, every key at the top level and named as its flag, which is
//! still read, with a warning per key.

use std::path::Path;

use serde::Deserialize;

use super::{ConfigError, Options};

/// A key of the flat layout that now lives in a section: `flat = ...` at the top
/// level is `key = ...` under `[section]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlatKey {
    /// The key in the flat layout, which is also its flag.
    pub flat: &'static str,
    /// The section it lives in now.
    pub section: &'static str,
    /// Its key in the section.
    pub key: &'static str,
}

impl std::fmt::Display for FlatKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` at the top level is deprecated: write it as `{}` under [{}]",
            self.flat, self.key, self.section
        )
    }
}

const fn moved(flat: &'static str, section: &'static str, key: &'static str) -> FlatKey {
    FlatKey { flat, section, key }
}

/// Every key of the flat layout that moved into a section. The others (node-name,
/// underlay-ip, pod-subnet, cluster-cidr, store, peers, socket, socket-group,
/// state-dir) stay at the top level. A test holds this list to the flags.
pub const FLAT_KEYS: &[FlatKey] = &[
    moved("mode", "tunnel", "mode"),
    moved("direct-routing", "tunnel", "direct-routing"),
    moved("vni", "tunnel", "vni"),
    moved("port", "tunnel", "port"),
    moved("vtep-mac", "tunnel", "vtep-mac"),
    moved("heartbeat-ms", "tunnel", "heartbeat-ms"),
    moved("underlay-mtu", "mtu", "underlay"),
    moved("pod-mtu", "mtu", "pod"),
    moved("encryption", "encryption", "mode"),
    moved("psk-file", "encryption", "psk-file"),
    moved("workers", "datapath", "workers"),
    moved("port-queues", "datapath", "port-queues"),
    moved("poll-us", "datapath", "poll-us"),
    moved("pod-port", "datapath", "pod-port"),
    moved("afxdp-fallback", "afxdp", "fallback"),
    moved("afxdp-zero-copy", "afxdp", "zero-copy"),
    moved("afxdp-frames", "afxdp", "frames"),
    moved("policy-dir", "policy", "dir"),
    moved("conntrack-max", "policy", "conntrack-max"),
    moved("host-port", "host", "port"),
    moved("masquerade", "host", "masquerade"),
    moved("service-cidr", "host", "service-cidr"),
    moved("etcd-endpoints", "etcd", "endpoints"),
    moved("etcd-ca", "etcd", "ca"),
    moved("etcd-cert", "etcd", "cert"),
    moved("etcd-key", "etcd", "key"),
    moved("etcd-prefix", "etcd", "prefix"),
    moved("node-ttl-s", "etcd", "node-ttl-s"),
    moved("subnet-len", "etcd", "subnet-len"),
    moved("subnet-grace-s", "etcd", "subnet-grace-s"),
];

impl Options {
    /// Reads options from a TOML file, in sections or in the flat layout (each flat
    /// key logged as deprecated).
    pub fn from_file(path: &Path) -> Result<Options, ConfigError> {
        let (options, flat) = Options::read_file(path)?;
        for key in flat {
            log::warn!("{}: {key}", path.display());
        }
        Ok(options)
    }

    /// Reads options from a TOML file, as [`Options::from_file`] does, and says
    /// which flat keys it used instead of logging them: for a caller that sets up
    /// its logs from the options.
    pub fn read_file(path: &Path) -> Result<(Options, Vec<FlatKey>), ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        Options::from_toml(&name, &text)
    }

    /// Parses a config file's text (`path` names it in errors), in either layout,
    /// and says which flat keys it used. A setting given in both layouts is an
    /// error, and so is any key that is neither's.
    pub fn from_toml(path: &str, text: &str) -> Result<(Options, Vec<FlatKey>), ConfigError> {
        let parse = |source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(parse)?;
        let flat = unflatten(path, &mut table)?;
        let options = if flat.is_empty() {
            // From the text, so that an error points at its line.
            toml::from_str(text)
        } else {
            Options::deserialize(toml::Value::Table(table)).map_err(|e| as_written(e, &flat))
        };
        Ok((options.map_err(parse)?, flat))
    }
}

/// An error about a moved flat key, which names it by its place in its section,
/// saying how the file wrote it.
fn as_written(e: toml::de::Error, flat: &[FlatKey]) -> toml::de::Error {
    let message = e.to_string();
    let place = |k: &&FlatKey| message.contains(&format!("`{}.{}`", k.section, k.key));
    match flat.iter().find(place) {
        Some(k) => serde::de::Error::custom(format!(
            "{}, which this file gives as `{}`",
            message.trim_end(),
            k.flat
        )),
        None => e,
    }
}

/// Moves each flat key of `table` into its section, and says which moved.
fn unflatten(path: &str, table: &mut toml::Table) -> Result<Vec<FlatKey>, ConfigError> {
    // First take every flat key out: `encryption = "on"` names a section as well.
    let mut taken = Vec::new();
    for key in FLAT_KEYS {
        if table.get(key.flat).is_some_and(|v| !v.is_table()) {
            taken.extend(table.remove(key.flat).map(|v| (*key, v)));
        }
    }
    let mut moved = Vec::with_capacity(taken.len());
    for (key, value) in taken {
        let section = table
            .entry(key.section)
            .or_insert_with(|| toml::Table::new().into());
        let Some(section) = section.as_table_mut() else {
            return Err(ConfigError::NotASection {
                path: path.into(),
                section: key.section,
            });
        };
        if section.contains_key(key.key) {
            return Err(ConfigError::Twice {
                path: path.into(),
                key,
            });
        }
        section.insert(key.key.into(), value);
        moved.push(key);
    }
    Ok(moved)
}
