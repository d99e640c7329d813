//! Pod address allocation for weft: each node hands out the addresses of its pod subnets
//! (one per address family, each a pool in its own redb database) to attachments keyed by
//! (container id, interface name), durably.
//!
//! ```
//! use ipnet::{Ipv4Net, Ipv6Net};
//! use weft_ipam::{Key, Pool, Pool6};
//!
//! let pool = Pool::in_memory("10.244.2.0/24".parse::<Ipv4Net>()?)?;
//! let key = Key::new("3f2a9c", "eth0");
//! let a = pool.allocate(&key, None, b"/var/run/netns/cni-1234")?;
//! assert_eq!(a.ip.to_string(), "10.244.2.2");
//! assert_eq!(a.gateway.to_string(), "10.244.2.1");
//! assert_eq!(pool.allocate(&key, None, b"")?.ip, a.ip); // idempotent
//! assert_eq!(pool.release(&key)?.map(|r| r.ip), Some(a.ip));
//!
//! let pool6 = Pool6::in_memory("fd00:10:244:2::/64".parse::<Ipv6Net>()?)?;
//! assert_eq!(pool6.allocate(&key, None, b"")?.ip.to_string(), "fd00:10:244:2::2");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), warn(clippy::too_many_lines))]
mod error;
mod family;
mod key;
mod pool;
mod span;
mod store;

pub use error::Error;
pub use family::Family;
pub use key::{Allocation, Key, MAX_CONTAINER_ID_LEN, MAX_IFNAME_LEN, MAX_META_LEN};
pub use pool::{Pool, Pool6, Reservation};
pub use span::{MAX_PREFIX_LEN, MIN_PREFIX_LEN};

#[cfg(test)]
mod tests;
