//! A set of IPv4 prefixes that answers, in logarithmic time, whether a new prefix
//! overlaps one of them: for the overlap checks of a cluster's pod subnets, which
//! compared every pair before.
//!
//! Two prefixes overlap only when one holds the other. A prefix held by `s` (or
//! equal to it) starts within `s`; a prefix holding `s` is one of the at most 32
//! shorter prefixes of `s`'s first address. So the set is ordered by (first
//! address, length), and a check is one range query and a lookup for each shorter
//! length the set holds (none when all are of one length, as a cluster's subnets
//! mostly are), whether or not the prefixes already in the set overlap each other.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Prefixes, each with a value (what holds it).
#[derive(Debug, Clone)]
pub struct PrefixSet<V> {
    by_start: BTreeMap<(u32, u8), V>,
    /// Bit `n`: a prefix of length `n` is in the set. Only those lengths are
    /// looked up for a prefix holding a new one: a cluster's subnets are mostly
    /// of one length.
    lens: u64,
}

impl<V> Default for PrefixSet<V> {
    fn default() -> Self {
        PrefixSet {
            by_start: BTreeMap::new(),
            lens: 0,
        }
    }
}

/// The netmask of a prefix of `len` bits (0 to 32).
fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn net((start, len): (u32, u8)) -> Ipv4Net {
    // A key is always a valid prefix: it was made from one.
    Ipv4Net::new(Ipv4Addr::from(start), len).unwrap_or_default()
}

impl<V> PrefixSet<V> {
    /// Adds `s` with `value`; an equal prefix's value is replaced.
    pub fn insert(&mut self, s: Ipv4Net, value: V) {
        let s = s.trunc();
        self.lens |= 1 << s.prefix_len();
        self.by_start
            .insert((u32::from(s.network()), s.prefix_len()), value);
    }

    /// A prefix of the set that overlaps `s`, with its value, if there is one:
    /// the first (lowest, then shortest) that starts within `s`, else the longest
    /// that holds it.
    pub fn overlapping(&self, s: Ipv4Net) -> Option<(Ipv4Net, &V)> {
        let s = s.trunc();
        let first = u32::from(s.network());
        let last = u32::from(s.broadcast());
        if let Some((&key, v)) = self.by_start.range((first, 0)..=(last, 32)).next() {
            return Some((net(key), v));
        }
        (0..s.prefix_len())
            .rev()
            .filter(|len| self.lens & (1 << len) != 0)
            .find_map(|len| {
                let key = (first & mask(len), len);
                self.by_start.get(&key).map(|v| (net(key), v))
            })
    }

    /// How many prefixes it holds.
    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn held_holding_equal_and_disjoint_prefixes() {
        let mut set = PrefixSet::default();
        set.insert(n("10.244.1.0/24"), "a");
        set.insert(n("10.244.4.0/22"), "b");
        let hit = |s: &str| set.overlapping(n(s)).map(|(p, v)| (p.to_string(), *v));
        assert_eq!(hit("10.244.0.0/24"), None);
        assert_eq!(hit("10.244.2.0/23"), None);
        assert_eq!(hit("10.244.8.0/24"), None);
        assert_eq!(hit("10.244.1.0/24"), Some(("10.244.1.0/24".into(), "a")));
        assert_eq!(hit("10.244.6.128/25"), Some(("10.244.4.0/22".into(), "b")));
        assert_eq!(hit("10.244.0.0/23"), Some(("10.244.1.0/24".into(), "a")));
        assert_eq!(hit("0.0.0.0/0"), Some(("10.244.1.0/24".into(), "a")));
        assert_eq!(hit("10.244.1.7/32"), Some(("10.244.1.0/24".into(), "a")));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn overlapping_members_are_all_seen() {
        let mut set = PrefixSet::default();
        set.insert(n("10.0.0.0/8"), 1);
        set.insert(n("10.1.0.0/24"), 2);
        assert_eq!(set.overlapping(n("10.9.0.0/24")).map(|(_, v)| *v), Some(1));
        assert_eq!(
            set.overlapping(n("10.1.0.128/25")).map(|(_, v)| *v),
            Some(2)
        );
        set.insert(n("0.0.0.0/0"), 3);
        assert_eq!(set.overlapping(n("11.0.0.0/8")).map(|(_, v)| *v), Some(3));
    }

    proptest! {
        /// Whatever the set holds, it finds an overlap exactly when a pairwise
        /// check does, and what it names does overlap.
        #[test]
        fn agrees_with_every_pair(
            members in proptest::collection::vec((0u32..4096, 0u8..=32), 0..40),
            probes in proptest::collection::vec((0u32..4096, 0u8..=32), 1..20),
        ) {
            let net = |(a, len): (u32, u8)| {
                Ipv4Net::new(Ipv4Addr::from(0x0af4_0000 + (a << 4)), len).unwrap().trunc()
            };
            let mut set = PrefixSet::default();
            let nets: Vec<Ipv4Net> = members.into_iter().map(net).collect();
            for (i, m) in nets.iter().enumerate() {
                set.insert(*m, i);
            }
            for p in probes.into_iter().map(net) {
                let overlaps = |m: &Ipv4Net| m.contains(&p) || p.contains(m);
                let found = set.overlapping(p);
                prop_assert_eq!(found.is_some(), nets.iter().any(overlaps));
                if let Some((m, &i)) = found {
                    prop_assert!(overlaps(&m) && nets[i] == m);
                }
            }
        }
    }
}
