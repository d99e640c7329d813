//! The IPv4 forwarding table: longest-prefix match.
//!
//! One hash map per prefix length that is present, searched from the longest length
//! to the shortest. A node's table holds a handful of lengths (/32 for local pods and
//! peer underlay addresses, the node subnets, the cluster CIDR, the default route), so
//! a lookup is a few hash probes whatever the number of routes. The table is built
//! once by the control plane and then only read.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Where a destination goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// A pod port on this node, by index into the snapshot's port list.
    Local(usize),
    /// The host port (`weft0`).
    Host,
    /// A peer node, by index into the snapshot's peer list.
    Peer(usize),
    /// Known to be unreachable (inside the cluster but nobody holds it).
    Unreachable,
}

/// A multiplicative hasher for the 32-bit keys of the table (keys are addresses, not
/// attacker-chosen map sizes: the set of routes is the operator's).
#[derive(Debug, Default, Clone, Copy)]
pub struct U32Hasher(u64);

impl Hasher for U32Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (u64::from(n) ^ self.0)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
}

type Map = HashMap<u32, NextHop, BuildHasherDefault<U32Hasher>>;

/// An immutable longest-prefix-match table.
#[derive(Debug, Clone, Default)]
pub struct Fib {
    /// `(prefix length, map from masked address to next hop)`, longest first.
    levels: Vec<(u8, Map)>,
}

#[inline]
fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl Fib {
    /// Builds a table. For a prefix given twice, the later entry wins.
    pub fn new(routes: impl IntoIterator<Item = (Ipv4Net, NextHop)>) -> Fib {
        let mut levels: Vec<(u8, Map)> = Vec::new();
        for (net, hop) in routes {
            let len = net.prefix_len();
            let key = u32::from(net.network()) & mask(len);
            match levels.iter_mut().find(|(l, _)| *l == len) {
                Some((_, map)) => {
                    map.insert(key, hop);
                }
                None => {
                    let mut map = Map::default();
                    map.insert(key, hop);
                    levels.push((len, map));
                }
            }
        }
        levels.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        Fib { levels }
    }

    /// The next hop of the longest prefix holding `dst`, if any.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<NextHop> {
        let a = u32::from(dst);
        self.levels
            .iter()
            .find_map(|(len, map)| map.get(&(a & mask(*len))).copied())
    }

    /// Every route, longest prefix first.
    pub fn routes(&self) -> Vec<(Ipv4Net, NextHop)> {
        let mut out = Vec::new();
        for (len, map) in &self.levels {
            let mut level: Vec<_> = map
                .iter()
                .map(|(k, v)| {
                    (
                        Ipv4Net::new(Ipv4Addr::from(*k), *len)
                            .expect("length comes from an Ipv4Net"),
                        *v,
                    )
                })
                .collect();
            level.sort_by_key(|(n, _)| n.network());
            out.extend(level);
        }
        out
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.levels.iter().map(|(_, m)| m.len()).sum()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let fib = Fib::new([
            (net("0.0.0.0/0"), NextHop::Host),
            (net("10.244.0.0/16"), NextHop::Unreachable),
            (net("10.244.2.0/24"), NextHop::Peer(0)),
            (net("10.244.1.5/32"), NextHop::Local(3)),
        ]);
        let l = |s: &str| fib.lookup(s.parse().unwrap());
        assert_eq!(l("10.244.1.5"), Some(NextHop::Local(3)));
        assert_eq!(l("10.244.1.6"), Some(NextHop::Unreachable));
        assert_eq!(l("10.244.2.77"), Some(NextHop::Peer(0)));
        assert_eq!(l("8.8.8.8"), Some(NextHop::Host));
        assert_eq!(fib.len(), 4);
        assert_eq!(fib.routes()[0].0, net("10.244.1.5/32"));
        assert_eq!(Fib::new([]).lookup("1.2.3.4".parse().unwrap()), None);
    }

    proptest! {
        /// The table agrees with a linear scan for the longest matching prefix.
        #[test]
        fn matches_linear_scan(
            routes in proptest::collection::vec((any::<u32>(), 0u8..=32, 0usize..50), 0..60),
            probes in proptest::collection::vec(any::<u32>(), 1..50),
        ) {
            let routes: Vec<(Ipv4Net, NextHop)> = routes
                .into_iter()
                .map(|(a, l, h)| (Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc(), NextHop::Local(h)))
                .collect();
            let fib = Fib::new(routes.clone());
            for p in probes {
                let dst = Ipv4Addr::from(p);
                let expect = routes
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| n.contains(&dst))
                    .max_by_key(|(i, (n, _))| (n.prefix_len(), *i))
                    .map(|(_, (_, h))| *h);
                prop_assert_eq!(fib.lookup(dst), expect);
            }
        }
    }
}
