//! Choosing a free subnet to claim, as flannel's subnet manager does: any free one,
//! with the choice spread so that nodes racing for subnets mostly ask for different
//! ones. The claim itself is an etcd transaction that succeeds only if the subnet's key
//! does not exist, so two nodes never both win; a loser chooses again.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use ipnet::Ipv4Net;

/// How many of the first free subnets a choice spreads over.
pub const SPREAD: usize = 64;

/// The free subnets of length `len` in `cluster`, lowest first, at most `limit`.
/// `leased` holds every subnet that has a lease (of any length: a subnet overlapping
/// one is not free either).
pub fn free(
    cluster: Ipv4Net,
    len: u8,
    leased: &BTreeMap<Ipv4Net, Option<String>>,
    limit: usize,
) -> Vec<Ipv4Net> {
    let Ok(subnets) = cluster.subnets(len) else {
        return Vec::new();
    };
    subnets
        .filter(|s| {
            !leased
                .keys()
                .any(|l| l.contains(&s.network()) || s.contains(&l.network()))
        })
        .take(limit)
        .collect()
}

/// The subnet node `name` asks for on its `attempt`th try, among `free`: one of them
/// picked by a hash of the two, so that racing nodes spread out, and the same node
/// asks again for another one after losing.
pub fn choose(free: &[Ipv4Net], name: &str, attempt: u32) -> Option<Ipv4Net> {
    if free.is_empty() {
        return None;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (name, attempt).hash(&mut h);
    Some(free[(h.finish() % free.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn free_skips_leased_and_overlapping_subnets() {
        let mut leased = BTreeMap::new();
        leased.insert(net("10.244.0.0/24"), Some("a".into()));
        leased.insert(net("10.244.2.0/23"), None);
        let f = free(net("10.244.0.0/21"), 24, &leased, 100);
        let want: Vec<Ipv4Net> = [
            "10.244.1.0/24",
            "10.244.4.0/24",
            "10.244.5.0/24",
            "10.244.6.0/24",
            "10.244.7.0/24",
        ]
        .iter()
        .map(|s| net(s))
        .collect();
        assert_eq!(f, want);
        assert_eq!(free(net("10.244.0.0/21"), 24, &leased, 2).len(), 2);
        // A /25 lease inside a /24 makes it taken.
        leased.insert(net("10.244.1.128/25"), Some("b".into()));
        assert!(!free(net("10.244.0.0/21"), 24, &leased, 100).contains(&net("10.244.1.0/24")));
    }

    #[test]
    fn choices_spread_and_change_with_the_attempt() {
        let f = free(net("10.244.0.0/16"), 24, &BTreeMap::new(), SPREAD);
        let picks: std::collections::HashSet<Ipv4Net> = (0..20)
            .map(|i| choose(&f, &format!("node-{i}"), 0).unwrap())
            .collect();
        assert!(
            picks.len() >= 14,
            "20 nodes picked only {} subnets",
            picks.len()
        );
        let again: std::collections::HashSet<Ipv4Net> =
            (0..8).map(|a| choose(&f, "node-0", a).unwrap()).collect();
        assert!(again.len() > 1);
        assert_eq!(choose(&[], "a", 0), None);
    }
}
