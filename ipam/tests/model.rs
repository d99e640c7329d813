//! Random operation sequences against a plain in-memory model of the pool: every result, the
//! cursor and the whole state must match, and no address may ever be live twice.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use proptest::prelude::*;
use weft_ipam::{Error, Key, Pool};

/// A /28: usable .2 ..= .14, 13 addresses, for 16 keys, so exhaustion and wrap-around are common.
const SUBNET: &str = "10.20.30.16/28";
const KEYS: u8 = 16;

#[derive(Clone, Debug)]
enum Op {
    /// Allocate key `k`, requesting the address `base + offset` if given (offsets past the
    /// subnet fall outside it).
    Allocate {
        k: u8,
        offset: Option<u8>,
    },
    Release(u8),
    ReleaseIp(u8),
    UpdateMeta(u8, Vec<u8>),
    /// Keep the keys whose bit is set.
    Retain(u16),
    /// Drop the pool and open the file again (file-backed runs only).
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..KEYS, prop::option::weighted(0.3, 0u8..18))
            .prop_map(|(k, offset)| Op::Allocate { k, offset }),
        3 => (0..KEYS).prop_map(Op::Release),
        1 => (0u8..18).prop_map(Op::ReleaseIp),
        1 => (0..KEYS, prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(k, m)| Op::UpdateMeta(k, m)),
        1 => any::<u16>().prop_map(Op::Retain),
        1 => Just(Op::Reopen),
    ]
}

fn key(k: u8) -> Key {
    Key::new(
        format!("ctr-{k}"),
        if k.is_multiple_of(2) { "eth0" } else { "net1" },
    )
}

/// What the model expects an allocation to return.
#[derive(Debug, PartialEq)]
enum Expect {
    Ok(Ipv4Addr),
    OutOfRange,
    Reserved,
    AlreadyAllocated(Key),
    KeyHoldsOther,
    Exhausted,
}

/// The pool as a map and a cursor, searched address by address.
struct Model {
    net: Ipv4Net,
    live: BTreeMap<Key, (Ipv4Addr, Vec<u8>)>,
    cursor: Option<Ipv4Addr>,
}

impl Model {
    fn usable(&self) -> Vec<Ipv4Addr> {
        self.net
            .hosts()
            .filter(|ip| *ip != self.gateway())
            .collect()
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net.network()) + 1)
    }

    fn owner(&self, ip: Ipv4Addr) -> Option<Key> {
        self.live
            .iter()
            .find(|(_, (held, _))| *held == ip)
            .map(|(k, _)| k.clone())
    }

    fn allocate(&mut self, k: Key, requested: Option<Ipv4Addr>, meta: &[u8]) -> Expect {
        if let Some(ip) = requested {
            if !self.net.contains(&ip) {
                return Expect::OutOfRange;
            }
            if !self.usable().contains(&ip) {
                return Expect::Reserved;
            }
        }
        if let Some((held, _)) = self.live.get(&k) {
            return match requested {
                Some(r) if r != *held => Expect::KeyHoldsOther,
                _ => Expect::Ok(*held),
            };
        }
        let ip = match requested {
            Some(ip) => {
                if let Some(owner) = self.owner(ip) {
                    return Expect::AlreadyAllocated(owner);
                }
                ip
            }
            None => {
                let usable = self.usable();
                let start = self
                    .cursor
                    .and_then(|c| usable.iter().position(|u| *u == c))
                    .map_or(0, |i| i + 1);
                let n = usable.len();
                let Some(ip) = (0..n)
                    .map(|j| usable[(start + j) % n])
                    .find(|ip| self.owner(*ip).is_none())
                else {
                    return Expect::Exhausted;
                };
                self.cursor = Some(ip);
                ip
            }
        };
        self.live.insert(k, (ip, meta.to_vec()));
        Expect::Ok(ip)
    }
}

fn classify(r: Result<weft_ipam::Allocation, Error>) -> Expect {
    match r {
        Ok(a) => Expect::Ok(a.ip),
        Err(Error::OutOfRange { .. }) => Expect::OutOfRange,
        Err(Error::Reserved { .. }) => Expect::Reserved,
        Err(Error::AlreadyAllocated { owner, .. }) => Expect::AlreadyAllocated(owner),
        Err(Error::KeyHoldsOther { .. }) => Expect::KeyHoldsOther,
        Err(Error::Exhausted { .. }) => Expect::Exhausted,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// Checks the pool against the model and the invariants that must hold whatever the model says.
fn check(pool: &Pool, model: &Model) {
    let all = pool.list().unwrap();
    let mut ips = HashSet::new();
    for a in &all {
        assert!(ips.insert(a.ip), "{} live twice", a.ip);
        assert!(model.usable().contains(&a.ip), "{} is not usable", a.ip);
        assert_eq!((a.prefix_len, a.gateway), (28, model.gateway()));
    }
    let got: BTreeMap<Key, (Ipv4Addr, Vec<u8>)> =
        all.into_iter().map(|a| (a.key, (a.ip, a.meta))).collect();
    assert_eq!(got, model.live);
    assert_eq!(pool.last_allocated().unwrap(), model.cursor);
    assert_eq!(pool.verify().unwrap(), model.live.len() as u64);
}

fn run(ops: &[Op], file: Option<&Path>) {
    let net: Ipv4Net = SUBNET.parse().unwrap();
    let open = || match file {
        Some(path) => Pool::open(path, net).unwrap(),
        None => Pool::in_memory(net).unwrap(),
    };
    let mut pool = open();
    let mut model = Model {
        net,
        live: BTreeMap::new(),
        cursor: None,
    };
    let at = |offset: u8| Ipv4Addr::from(u32::from(net.network()) + u32::from(offset));
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Allocate { k, offset } => {
                let requested = offset.map(at);
                let meta = [*k, step as u8];
                let want = model.allocate(key(*k), requested, &meta);
                let got = classify(pool.allocate(&key(*k), requested, &meta));
                assert_eq!(got, want, "step {step}: {op:?}");
            }
            Op::Release(k) => {
                let want = model.live.remove(&key(*k)).map(|(ip, _)| ip);
                let got = pool.release(&key(*k)).unwrap().map(|a| a.ip);
                assert_eq!(got, want, "step {step}: {op:?}");
            }
            Op::ReleaseIp(offset) => {
                let ip = at(*offset);
                let want = model.owner(ip);
                if let Some(k) = &want {
                    model.live.remove(k);
                }
                let got = pool.release_ip(ip).unwrap().map(|a| a.key);
                assert_eq!(got, want, "step {step}: {op:?}");
            }
            Op::UpdateMeta(k, meta) => {
                let got = pool.update_meta(&key(*k), meta);
                match model.live.get_mut(&key(*k)) {
                    Some(entry) => {
                        entry.1.clone_from(meta);
                        assert_eq!(got.unwrap().meta, *meta, "step {step}");
                    }
                    None => assert!(matches!(got, Err(Error::NotFound { .. })), "step {step}"),
                }
            }
            Op::Retain(mask) => {
                let keep = |k: &Key| (0..KEYS).any(|i| mask & (1 << i) != 0 && key(i) == *k);
                let want: Vec<Key> = model.live.keys().filter(|k| !keep(k)).cloned().collect();
                model.live.retain(|k, _| keep(k));
                let got: Vec<Key> = pool
                    .retain(keep)
                    .unwrap()
                    .into_iter()
                    .map(|a| a.key)
                    .collect();
                assert_eq!(got, want, "step {step}");
            }
            Op::Reopen => {
                if file.is_some() {
                    drop(pool);
                    pool = open();
                }
            }
        }
        check(&pool, &model);
    }
}

/// Cases per property: `PROPTEST_CASES` when set, else `default` (redb is slow in debug builds,
/// about a millisecond a commit, so the defaults keep the suite to seconds).
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(cases(96))]
    #[test]
    fn pool_matches_the_model_in_memory(ops in prop::collection::vec(op(), 1..120)) {
        run(&ops, None);
    }
}

proptest! {
    #![proptest_config(cases(24))]
    #[test]
    fn pool_matches_the_model_across_reopens(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        run(&ops, Some(&dir.path().join("ipam.redb")));
    }
}
