//! Pod IPv4 address allocation for weft: each node hands out the addresses of its pod subnet
//! to attachments keyed by (container id, interface name), durably, in a redb database.
//!
//! ```
//! use weft_ipam::{Key, Pool};
//!
//! let pool = Pool::in_memory("10.244.2.0/24".parse()?)?;
//! let key = Key::new("3f2a9c", "eth0");
//! let a = pool.allocate(&key, None, b"/var/run/netns/cni-1234")?;
//! assert_eq!(a.ip.to_string(), "10.244.2.2");
//! assert_eq!(a.gateway.to_string(), "10.244.2.1");
//! assert_eq!(pool.allocate(&key, None, b"")?.ip, a.ip); // idempotent
//! assert_eq!(pool.release(&key)?.map(|r| r.ip), Some(a.ip));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), warn(clippy::too_many_lines))]
mod error;
mod key;
mod pool;
mod span;
mod store;

pub use error::Error;
pub use key::{Allocation, Key, MAX_CONTAINER_ID_LEN, MAX_IFNAME_LEN, MAX_META_LEN};
pub use pool::{Pool, Reservation};
pub use span::{MAX_PREFIX_LEN, MIN_PREFIX_LEN};

#[cfg(test)]
mod tests;
