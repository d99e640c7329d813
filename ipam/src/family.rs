//! The two address families a pool serves, as one trait: a pool is a `Pool<Ipv4Net>`
//! or a `Pool<Ipv6Net>`, named by the type of its subnet.
//!
//! The pool's arithmetic is done in `u128` for both families; only the tables store
//! the family's own width, so an IPv4 database keeps the layout it always had.

use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use redb::TableDefinition;

use crate::store::{AllocCol, KeyCol};

mod sealed {
    pub trait Sealed {}
    impl Sealed for ipnet::Ipv4Net {}
    impl Sealed for ipnet::Ipv6Net {}
}

/// An address family a pool can serve, named by its subnet type: [`Ipv4Net`] or
/// [`Ipv6Net`]. Sealed.
pub trait Family:
    sealed::Sealed + Copy + Eq + Debug + Display + Into<IpNet> + Send + Sync + 'static
{
    /// An address of the family.
    type Addr: Copy
        + Eq
        + Ord
        + Hash
        + Debug
        + Display
        + Into<IpAddr>
        + Send
        + Sync
        + serde::Serialize
        + serde::de::DeserializeOwned
        + 'static;
    /// How the tables store an address: as wide as the family's.
    type Int: redb::Key + for<'a> redb::Value<SelfType<'a> = Self::Int> + Copy + Into<u128>;

    /// "IPv4" or "IPv6", for messages.
    const NAME: &'static str;
    /// The family's number in the database's `meta` table (4 or 6).
    const NUMBER: u64;
    /// The shortest prefix accepted for a pod subnet.
    const MIN_PREFIX_LEN: u8;
    /// The longest prefix accepted for a pod subnet.
    const MAX_PREFIX_LEN: u8;
    /// Whether the subnet's last address is a broadcast address, never handed out.
    const BROADCAST: bool;
    /// The `by_key` table.
    const BY_KEY: TableDefinition<'static, KeyCol, AllocCol<Self>>;
    /// The `by_ip` table.
    const BY_IP: TableDefinition<'static, Self::Int, KeyCol>;

    /// The address of the integer `n`, which the caller knows is in the family's range.
    fn addr(n: u128) -> Self::Addr;
    /// The integer of the address `a`.
    fn int_of(a: Self::Addr) -> u128;
    /// The table integer of `n`, which the caller knows is in the family's range.
    fn to_int(n: u128) -> Self::Int;
    /// The subnet of `addr`/`len`, if `len` is a prefix length of the family.
    fn build(addr: u128, len: u8) -> Option<Self>;
    /// The subnet's address (host bits as given) and prefix length.
    fn parts(self) -> (u128, u8);
    /// The subnet with its host bits cleared.
    fn trunc(self) -> Self;
    /// The number of address bits.
    fn bits() -> u8 {
        if Self::NUMBER == 4 {
            32
        } else {
            128
        }
    }
}

impl Family for Ipv4Net {
    type Addr = Ipv4Addr;
    type Int = u32;
    const NAME: &'static str = "IPv4";
    const NUMBER: u64 = 4;
    /// A /8 already holds 16 777 213 pod addresses, far more than any node runs, and
    /// anything wider is almost surely a cluster CIDR passed by mistake.
    const MIN_PREFIX_LEN: u8 = 8;
    /// A /30 leaves one pod address once the network, gateway and broadcast addresses
    /// are reserved (/31 and /32 leave none).
    const MAX_PREFIX_LEN: u8 = 30;
    const BROADCAST: bool = true;
    const BY_KEY: TableDefinition<'static, KeyCol, AllocCol<Self>> = TableDefinition::new("by_key");
    const BY_IP: TableDefinition<'static, u32, KeyCol> = TableDefinition::new("by_ip");

    fn addr(n: u128) -> Ipv4Addr {
        Ipv4Addr::from(Self::to_int(n))
    }
    fn int_of(a: Ipv4Addr) -> u128 {
        u128::from(u32::from(a))
    }
    #[allow(clippy::cast_possible_truncation)] // in range, as documented
    fn to_int(n: u128) -> u32 {
        n as u32
    }
    fn build(addr: u128, len: u8) -> Option<Ipv4Net> {
        let addr = u32::try_from(addr).ok()?;
        Ipv4Net::new(Ipv4Addr::from(addr), len).ok()
    }
    fn parts(self) -> (u128, u8) {
        (Self::int_of(self.addr()), self.prefix_len())
    }
    fn trunc(self) -> Ipv4Net {
        Ipv4Net::trunc(&self)
    }
}

impl Family for Ipv6Net {
    type Addr = Ipv6Addr;
    type Int = u128;
    const NAME: &'static str = "IPv6";
    const NUMBER: u64 = 6;
    /// Kubernetes gives nodes /64s by default; a /48 per node is the widest anyone
    /// plans, and wider is a cluster CIDR passed by mistake.
    const MIN_PREFIX_LEN: u8 = 48;
    /// A /126 leaves two pod addresses once the subnet-router anycast address (the
    /// network address, RFC 4291 §2.6.1) and the gateway are reserved.
    const MAX_PREFIX_LEN: u8 = 126;
    const BROADCAST: bool = false;
    const BY_KEY: TableDefinition<'static, KeyCol, AllocCol<Self>> =
        TableDefinition::new("by_key6");
    const BY_IP: TableDefinition<'static, u128, KeyCol> = TableDefinition::new("by_ip6");

    fn addr(n: u128) -> Ipv6Addr {
        Ipv6Addr::from(n)
    }
    fn int_of(a: Ipv6Addr) -> u128 {
        u128::from(a)
    }
    fn to_int(n: u128) -> u128 {
        n
    }
    fn build(addr: u128, len: u8) -> Option<Ipv6Net> {
        Ipv6Net::new(Ipv6Addr::from(addr), len).ok()
    }
    fn parts(self) -> (u128, u8) {
        (Self::int_of(self.addr()), self.prefix_len())
    }
    fn trunc(self) -> Ipv6Net {
        Ipv6Net::trunc(&self)
    }
}
