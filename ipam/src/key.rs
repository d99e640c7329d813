//! What an allocation is keyed by, and what it holds.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The longest container id accepted, in bytes (runtimes use 64 hex digits; this leaves room).
pub const MAX_CONTAINER_ID_LEN: usize = 1024;

/// The longest interface name accepted, in bytes (Linux's `IFNAMSIZ` less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// The largest metadata blob stored with an allocation, in bytes.
pub const MAX_META_LEN: usize = 64 * 1024;

/// Identifies one attachment: the CNI container id and the interface name inside it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// The CNI container id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The interface name inside the container (`CNI_IFNAME`).
    pub ifname: String,
}

impl Key {
    /// Builds a key from a container id and an interface name.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Key {
        Key {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    /// Checks the rules a key must follow to be stored.
    ///
    /// The container id must be non-empty, at most [`MAX_CONTAINER_ID_LEN`] bytes and free of
    /// control characters (NUL included). The interface name follows Linux's rules: 1 to
    /// [`MAX_IFNAME_LEN`] bytes, not `.` or `..`, and no `/`, `:`, whitespace or control
    /// characters.
    pub fn validate(&self) -> Result<(), Error> {
        let reason = if self.container_id.is_empty() {
            "the container id is empty"
        } else if self.container_id.len() > MAX_CONTAINER_ID_LEN {
            "the container id is longer than 1024 bytes"
        } else if self.container_id.chars().any(char::is_control) {
            "the container id contains a control character"
        } else if self.ifname.is_empty() {
            "the interface name is empty"
        } else if self.ifname.len() > MAX_IFNAME_LEN {
            "the interface name is longer than 15 bytes"
        } else if self.ifname == "." || self.ifname == ".." {
            "the interface name is . or .."
        } else if self
            .ifname
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            "the interface name contains '/', ':', whitespace or a control character"
        } else {
            return Ok(());
        };
        Err(Error::InvalidKey {
            key: self.clone(),
            reason,
        })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "container {:?} ifname {:?}",
            self.container_id, self.ifname
        )
    }
}

/// An address held by a key, with what the pod needs to configure it: an IPv4 one
/// (`Allocation`), or an IPv6 one (`Allocation<Ipv6Addr>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation<A = Ipv4Addr> {
    /// Who holds the address.
    pub key: Key,
    /// The pod's address.
    pub ip: A,
    /// The prefix length of the pod subnet.
    pub prefix_len: u8,
    /// The default gateway for the pod (the subnet's first address after the network
    /// address).
    pub gateway: A,
    /// Opaque bytes the caller stored with the allocation.
    pub meta: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        let id = "0123456789abcdef".repeat(4);
        for (c, i) in [
            (id.as_str(), "eth0"),
            ("a", "net1"),
            ("x.y_z-1", "veth-abcdefghij"),
        ] {
            assert!(Key::new(c, i).validate().is_ok(), "{c} {i}");
        }
    }

    #[test]
    fn refuses_bad_keys_with_the_reason() {
        let long_id = "a".repeat(MAX_CONTAINER_ID_LEN + 1);
        let cases = [
            ("", "eth0", "container id is empty"),
            (long_id.as_str(), "eth0", "longer than 1024"),
            ("ab\0c", "eth0", "control character"),
            ("abc", "", "interface name is empty"),
            ("abc", "eth0\0", "control character"),
            ("abc", "0123456789abcdef", "longer than 15"),
            ("abc", "..", ". or .."),
            ("abc", "eth/0", "'/'"),
            ("abc", "eth 0", "whitespace"),
            ("abc", "eth:0", "':'"),
        ];
        for (c, i, want) in cases {
            let err = Key::new(c, i).validate().unwrap_err();
            assert!(matches!(err, Error::InvalidKey { .. }), "{err:?}");
            assert!(err.to_string().contains(want), "{c:?} {i:?}: {err}");
        }
    }

    #[test]
    fn display_names_both_parts() {
        assert_eq!(
            Key::new("abc", "eth0").to_string(),
            r#"container "abc" ifname "eth0""#
        );
    }
}
