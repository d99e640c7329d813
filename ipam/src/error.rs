//! The one error type of the crate.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::Key;

/// Everything that can go wrong in the pool.
///
/// Messages name the database, key, address or subnet involved. Errors from the store or the
/// file system keep their cause in [`std::error::Error::source`] rather than in the message, so
/// print the whole chain (e.g. anyhow's `{:#}`) when logging them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The subnet cannot be a pod subnet (prefix length out of range, or host bits set).
    #[error("invalid pod subnet {subnet}: {reason}")]
    InvalidSubnet {
        /// The subnet as given.
        subnet: IpNet,
        /// Why it was refused.
        reason: String,
    },

    /// The database holds live allocations from another subnet than the one asked for.
    #[error(
        "IPAM database {} belongs to pod subnet {stored} and holds {live} live allocation(s); \
         refusing to switch it to {requested} (release them, or remove the database, first)",
        .db.display()
    )]
    SubnetMismatch {
        /// The database file.
        db: PathBuf,
        /// The subnet recorded in the database.
        stored: IpNet,
        /// The subnet the caller asked for.
        requested: IpNet,
        /// How many allocations the database holds.
        live: u64,
    },

    /// The database holds a pool of the other address family.
    #[error("IPAM database {} holds an IPv{found} pool, not an IPv{wanted} one", .db.display())]
    WrongFamily {
        /// The database file.
        db: PathBuf,
        /// The family it records (4 or 6).
        found: u64,
        /// The family asked for.
        wanted: u64,
    },

    /// The key cannot be stored (empty, too long, or with forbidden characters).
    #[error("invalid allocation key (container id {:?}, ifname {:?}): {reason}",
        .key.container_id, .key.ifname)]
    InvalidKey {
        /// The key as given.
        key: Key,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// The metadata is larger than [`crate::MAX_META_LEN`].
    #[error("metadata for {key} is {len} bytes, more than the {max} allowed")]
    MetaTooLarge {
        /// The allocation's key.
        key: Key,
        /// The length given.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A requested address lies outside the pod subnet.
    #[error("{ip} is outside the pod subnet {subnet}")]
    OutOfRange {
        /// The requested address.
        ip: IpAddr,
        /// The pool's subnet.
        subnet: IpNet,
    },

    /// A requested address is the network, gateway or broadcast address.
    #[error("{ip} is the {what} of pod subnet {subnet} and cannot be allocated")]
    Reserved {
        /// The requested address.
        ip: IpAddr,
        /// The pool's subnet.
        subnet: IpNet,
        /// Which reserved address it is.
        what: &'static str,
    },

    /// A requested address is held by another key.
    #[error("{ip} is already allocated to {owner}")]
    AlreadyAllocated {
        /// The requested address.
        ip: IpAddr,
        /// The key holding it.
        owner: Key,
    },

    /// The key already holds an address other than the one requested.
    #[error("{key} already holds {existing}, not the requested {requested}")]
    KeyHoldsOther {
        /// The key.
        key: Key,
        /// The address it holds.
        existing: IpAddr,
        /// The address requested.
        requested: IpAddr,
    },

    /// Every usable address of the subnet is allocated.
    #[error("pod subnet {subnet} is exhausted: all {capacity} usable addresses are allocated")]
    Exhausted {
        /// The pool's subnet.
        subnet: IpNet,
        /// How many addresses the subnet can hand out.
        capacity: u128,
    },

    /// The key has no allocation (from operations that need one).
    #[error("{key} has no allocation")]
    NotFound {
        /// The key.
        key: Key,
    },

    /// The database was written by a newer, incompatible version of weft-ipam.
    #[error(
        "IPAM database {} has schema version {found}; this build understands versions up to \
         {supported}",
        .db.display()
    )]
    UnsupportedSchema {
        /// The database file.
        db: PathBuf,
        /// The version found in the file.
        found: u64,
        /// The newest version this build knows.
        supported: u64,
    },

    /// The database contents break the pool's invariants (for example `by_key` and `by_ip`
    /// disagree); nothing was changed.
    #[error("IPAM database {} is inconsistent: {detail}", .db.display())]
    Corrupt {
        /// The database file.
        db: PathBuf,
        /// What was found.
        detail: String,
    },

    /// The embedded store failed.
    #[error("IPAM database {}: could not {op}", .db.display())]
    Store {
        /// The database file.
        db: PathBuf,
        /// What the pool was doing.
        op: &'static str,
        /// The store's error (boxed: redb's error type is large).
        #[source]
        source: Box<redb::Error>,
    },

    /// A file system operation around the database failed.
    #[error("could not {op} {}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the pool was doing.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}
