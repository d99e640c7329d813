//! Unit tests of the pool's behaviour, on in-memory and file databases.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use redb::ReadableDatabase;

use crate::store::{META, M_SCHEMA, SCHEMA_VERSION};
use crate::Family;
use crate::{Allocation, Error, Key, Pool, MAX_META_LEN};

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn key(n: usize) -> Key {
    Key::new(format!("c{n:04}"), "eth0")
}

fn pool(s: &str) -> Pool {
    Pool::in_memory(net(s)).unwrap()
}

fn alloc(p: &Pool, n: usize) -> Ipv4Addr {
    p.allocate(&key(n), None, b"").unwrap().ip
}

#[test]
fn pool_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool>();
    assert_send_sync::<Error>();
    // A reservation commits on another thread while its owner sets the address up.
    fn assert_send<T: Send>() {}
    assert_send::<crate::Reservation<'static>>();
}

#[test]
fn a_reservation_knows_its_address_before_the_commit_and_a_dropped_one_rolls_back() {
    let p = pool("10.0.0.0/29");
    let r = p.reserve(&key(1), None, b"ns1").unwrap();
    assert_eq!(r.allocation().ip, ip("10.0.0.2"));
    drop(r);
    assert_eq!(p.get(&key(1)).unwrap(), None);
    assert_eq!(
        p.last_allocated().unwrap(),
        None,
        "the cursor rolled back too"
    );

    let r = p.reserve(&key(2), None, b"ns2").unwrap();
    assert_eq!(r.allocation().ip, ip("10.0.0.2"));
    let committed = std::thread::scope(|s| s.spawn(move || r.commit()).join().unwrap()).unwrap();
    assert_eq!(p.get(&key(2)).unwrap(), Some(committed.clone()));
    assert_eq!(committed.meta, b"ns2");
    assert_eq!(alloc(&p, 3), ip("10.0.0.3"));
}

#[test]
fn reserving_a_held_key_returns_its_allocation_and_commits_nothing() {
    let p = pool("10.0.0.0/29");
    let held = p.allocate(&key(1), None, b"old").unwrap();
    let r = p.reserve(&key(1), None, b"new").unwrap();
    assert_eq!(r.allocation(), &held);
    assert_eq!(r.commit().unwrap(), held);
    assert!(matches!(
        p.reserve(&key(1), Some(ip("10.0.0.5")), b""),
        Err(Error::KeyHoldsOther { .. })
    ));
    p.verify().unwrap();
}

#[test]
fn a_reservation_holds_off_other_writers_until_it_ends() {
    let p = pool("10.0.0.0/29");
    let r = p.reserve(&key(1), None, b"").unwrap();
    std::thread::scope(|s| {
        let other = s.spawn(|| alloc(&p, 2));
        // The other writer is parked in begin_write until the reservation commits, so it
        // cannot take the same address.
        let first = r.commit().unwrap().ip;
        assert_ne!(other.join().unwrap(), first);
    });
    p.verify().unwrap();
}

#[test]
fn first_allocation_follows_the_gateway_and_carries_prefix_and_gateway() {
    let p = pool("10.244.2.0/24");
    assert_eq!(p.gateway(), ip("10.244.2.1"));
    assert_eq!(p.subnet(), net("10.244.2.0/24"));
    assert_eq!(p.capacity(), 253);
    let a = p.allocate(&key(1), None, b"ns").unwrap();
    assert_eq!(
        a,
        Allocation {
            key: key(1),
            ip: ip("10.244.2.2"),
            prefix_len: 24,
            gateway: ip("10.244.2.1"),
            meta: b"ns".to_vec(),
        }
    );
}

#[test]
fn reserved_addresses_are_never_handed_out_nor_granted() {
    let p = pool("10.1.0.8/29");
    for (n, (addr, what)) in [
        ("10.1.0.8", "network"),
        ("10.1.0.9", "gateway"),
        ("10.1.0.15", "broadcast"),
    ]
    .into_iter()
    .enumerate()
    {
        let err = p.allocate(&key(n), Some(ip(addr)), b"").unwrap_err();
        assert!(matches!(err, Error::Reserved { .. }), "{addr}: {err:?}");
        assert!(err.to_string().contains(what), "{err}");
        assert!(err.to_string().contains("10.1.0.8/29"), "{err}");
    }
    let got: Vec<_> = (0..5).map(|n| alloc(&p, n)).collect();
    let want: Vec<_> = (10..=14).map(|d| Ipv4Addr::new(10, 1, 0, d)).collect();
    assert_eq!(got, want);
    assert!(p.list().unwrap().len() == 5);
}

#[test]
fn round_robin_does_not_reuse_a_released_address_at_once() {
    let p = pool("10.244.2.0/24");
    assert_eq!(alloc(&p, 1), ip("10.244.2.2"));
    assert_eq!(alloc(&p, 2), ip("10.244.2.3"));
    p.release(&key(1)).unwrap().unwrap();
    assert_eq!(alloc(&p, 3), ip("10.244.2.4"));
    assert_eq!(p.last_allocated().unwrap(), Some(ip("10.244.2.4")));
}

#[test]
fn search_wraps_around_to_the_lowest_free_address() {
    let p = pool("10.0.0.0/29"); // usable .2 ..= .6
    for n in 0..5 {
        alloc(&p, n);
    }
    p.release(&key(1)).unwrap(); // .3
    p.release(&key(3)).unwrap(); // .5
    assert_eq!(p.last_allocated().unwrap(), Some(ip("10.0.0.6")));
    assert_eq!(alloc(&p, 10), ip("10.0.0.3"));
    assert_eq!(alloc(&p, 11), ip("10.0.0.5"));
    p.release(&key(4)).unwrap(); // .6, above the cursor
    assert_eq!(alloc(&p, 12), ip("10.0.0.6"));
}

#[test]
fn search_skips_runs_of_taken_addresses() {
    let p = pool("10.0.0.0/24");
    for d in [2u8, 3, 4, 6, 7] {
        p.allocate(&key(d.into()), Some(Ipv4Addr::new(10, 0, 0, d)), b"")
            .unwrap();
    }
    assert_eq!(alloc(&p, 100), ip("10.0.0.5"));
    assert_eq!(alloc(&p, 101), ip("10.0.0.8"));
}

#[test]
fn exhaustion_is_reported_and_recovers_after_a_release() {
    let p = pool("10.9.9.0/29");
    for n in 0..5 {
        alloc(&p, n);
    }
    let err = p.allocate(&key(99), None, b"").unwrap_err();
    assert!(
        matches!(err, Error::Exhausted { subnet, capacity: 5 } if subnet == net("10.9.9.0/29").into()),
        "{err:?}"
    );
    assert!(err.to_string().contains("10.9.9.0/29"), "{err}");
    assert_eq!(p.list().unwrap().len(), 5);
    p.release(&key(2)).unwrap();
    assert_eq!(alloc(&p, 99), ip("10.9.9.4"));
}

#[test]
fn slash_30_holds_exactly_one_pod() {
    let p = pool("172.16.0.4/30");
    assert_eq!(alloc(&p, 0), ip("172.16.0.6"));
    assert!(matches!(
        p.allocate(&key(1), None, b""),
        Err(Error::Exhausted { capacity: 1, .. })
    ));
    p.release(&key(0)).unwrap();
    assert_eq!(alloc(&p, 1), ip("172.16.0.6"));
}

#[test]
fn slash_8_allocates_at_both_ends() {
    let p = pool("10.0.0.0/8");
    assert_eq!(p.capacity(), (1 << 24) - 3);
    let top = ip("10.255.255.254");
    assert_eq!(p.allocate(&key(0), Some(top), b"").unwrap().ip, top);
    assert_eq!(alloc(&p, 1), ip("10.0.0.2"));
}

#[test]
fn requested_address_cases() {
    let p = pool("10.244.2.0/24");
    let a = p.allocate(&key(1), Some(ip("10.244.2.50")), b"").unwrap();
    assert_eq!(a.ip, ip("10.244.2.50"));
    // Requests leave the round-robin cursor alone.
    assert_eq!(p.last_allocated().unwrap(), None);
    assert_eq!(alloc(&p, 9), ip("10.244.2.2"));

    match p.allocate(&key(2), Some(ip("10.244.2.50")), b"") {
        Err(e @ Error::AlreadyAllocated { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("10.244.2.50") && msg.contains("c0001"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    let err = p
        .allocate(&key(2), Some(ip("10.244.3.7")), b"")
        .unwrap_err();
    assert!(matches!(err, Error::OutOfRange { .. }), "{err:?}");
    assert!(err.to_string().contains("10.244.2.0/24"), "{err}");

    // The key holds .50: asking for it again is fine, asking for another is not.
    assert_eq!(
        p.allocate(&key(1), Some(ip("10.244.2.50")), b"")
            .unwrap()
            .ip,
        ip("10.244.2.50")
    );
    let err = p
        .allocate(&key(1), Some(ip("10.244.2.51")), b"")
        .unwrap_err();
    assert!(matches!(err, Error::KeyHoldsOther { .. }), "{err:?}");
    assert!(p.get_by_ip(ip("10.244.2.51")).unwrap().is_none());
    assert_eq!(p.list().unwrap().len(), 2);
}

#[test]
fn allocate_is_idempotent_and_keeps_the_first_meta() {
    let p = pool("10.244.2.0/24");
    let first = p.allocate(&key(1), None, b"first").unwrap();
    let again = p.allocate(&key(1), None, b"second").unwrap();
    assert_eq!(first, again);
    assert_eq!(again.meta, b"first");
    assert_eq!(p.list().unwrap(), vec![first]);
    assert_eq!(p.last_allocated().unwrap(), Some(ip("10.244.2.2")));
}

#[test]
fn same_container_different_ifnames_are_separate_keys() {
    let p = pool("10.244.2.0/24");
    let a = p.allocate(&Key::new("c", "eth0"), None, b"").unwrap();
    let b = p.allocate(&Key::new("c", "net1"), None, b"").unwrap();
    assert_ne!(a.ip, b.ip);
    p.release(&Key::new("c", "eth0")).unwrap();
    assert_eq!(p.get(&Key::new("c", "net1")).unwrap(), Some(b));
}

#[test]
fn release_is_idempotent() {
    let p = pool("10.244.2.0/24");
    assert_eq!(p.release(&key(1)).unwrap(), None);
    let a = p.allocate(&key(1), None, b"m").unwrap();
    assert_eq!(p.release(&key(1)).unwrap(), Some(a));
    assert_eq!(p.release(&key(1)).unwrap(), None);
    assert_eq!(p.get(&key(1)).unwrap(), None);
    assert_eq!(p.verify().unwrap(), 0);
}

#[test]
fn len_counts_allocations_without_listing_them() {
    let p = pool("10.244.2.0/24");
    assert!(p.is_empty().unwrap());
    for i in 0..3 {
        p.allocate(&key(i), None, b"").unwrap();
    }
    assert_eq!(p.len().unwrap(), 3);
    p.release(&key(1)).unwrap();
    assert_eq!(p.len().unwrap(), p.list().unwrap().len() as u64);
    assert!(!p.is_empty().unwrap());
}

#[test]
fn release_by_ip() {
    let p = pool("10.244.2.0/24");
    let a = p.allocate(&key(1), None, b"m").unwrap();
    assert_eq!(p.release_ip(ip("10.244.2.77")).unwrap(), None);
    assert_eq!(p.release_ip(ip("192.0.2.1")).unwrap(), None);
    assert_eq!(p.release_ip(a.ip).unwrap(), Some(a.clone()));
    assert_eq!(p.release_ip(a.ip).unwrap(), None);
    assert_eq!(p.get(&key(1)).unwrap(), None);
    assert!(p.list().unwrap().is_empty());
}

#[test]
fn retain_releases_the_rejected_keys_in_one_go() {
    let p = pool("10.244.2.0/24");
    for n in 0..6 {
        alloc(&p, n);
    }
    let released = p
        .retain(|k| k.container_id.ends_with(['0', '2', '4']))
        .unwrap();
    let released: Vec<_> = released.into_iter().map(|a| a.key).collect();
    assert_eq!(released, vec![key(1), key(3), key(5)]);
    let left: Vec<_> = p.list().unwrap().into_iter().map(|a| a.key).collect();
    assert_eq!(left, vec![key(0), key(2), key(4)]);
    assert!(p.retain(|_| true).unwrap().is_empty());
    assert_eq!(p.verify().unwrap(), 3);
    assert_eq!(p.retain(|_| false).unwrap().len(), 3);
    assert_eq!(p.verify().unwrap(), 0);
}

#[test]
fn meta_round_trips_through_every_reader() {
    let p = pool("10.244.2.0/24");
    let meta = b"{\"netns\":\"/var/run/netns/cni-1\"}\0\xff".to_vec();
    let a = p.allocate(&key(1), None, &meta).unwrap();
    assert_eq!(a.meta, meta);
    assert_eq!(p.get(&key(1)).unwrap().unwrap().meta, meta);
    assert_eq!(p.get_by_ip(a.ip).unwrap().unwrap().meta, meta);
    assert_eq!(p.list().unwrap()[0].meta, meta);

    let updated = p.update_meta(&key(1), b"v2").unwrap();
    assert_eq!((updated.ip, updated.meta.as_slice()), (a.ip, &b"v2"[..]));
    assert_eq!(p.get(&key(1)).unwrap().unwrap().meta, b"v2");
    assert_eq!(p.update_meta(&key(1), b"").unwrap().meta, b"");

    let err = p.update_meta(&key(2), b"x").unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let big = vec![7u8; MAX_META_LEN + 1];
    assert!(matches!(
        p.allocate(&key(3), None, &big),
        Err(Error::MetaTooLarge { .. })
    ));
    assert!(matches!(
        p.update_meta(&key(1), &big),
        Err(Error::MetaTooLarge { .. })
    ));
    let max = vec![7u8; MAX_META_LEN];
    assert_eq!(p.allocate(&key(3), None, &max).unwrap().meta, max);
}

#[test]
fn invalid_keys_are_refused_before_anything_is_stored() {
    let p = pool("10.244.2.0/24");
    for k in [
        Key::new("a\0b", "eth0"),
        Key::new("abc", ""),
        Key::new("", "eth0"),
    ] {
        let err = p.allocate(&k, None, b"").unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{err:?}");
    }
    assert!(p.list().unwrap().is_empty());
    assert_eq!(p.last_allocated().unwrap(), None);
}

#[test]
fn invalid_subnets_are_refused() {
    for s in ["10.0.0.0/31", "10.0.0.0/32", "10.0.0.0/6", "10.0.0.1/24"] {
        assert!(
            matches!(Pool::in_memory(net(s)), Err(Error::InvalidSubnet { .. })),
            "{s}"
        );
    }
}

#[test]
fn subnet_change_is_refused_while_addresses_are_live() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    let p = Pool::open(&path, net("10.244.2.0/24")).unwrap();
    let a = p.allocate(&key(1), None, b"").unwrap();
    drop(p);

    let err = Pool::open(&path, net("10.244.3.0/24")).unwrap_err();
    assert!(
        matches!(err, Error::SubnetMismatch { live: 1, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    for part in ["10.244.2.0/24", "10.244.3.0/24", path.to_str().unwrap()] {
        assert!(msg.contains(part), "{msg} lacks {part}");
    }

    // The refused open changed nothing.
    let p = Pool::open(&path, net("10.244.2.0/24")).unwrap();
    assert_eq!(p.list().unwrap(), vec![a]);
    p.release(&key(1)).unwrap();
    drop(p);

    // With nothing allocated the new subnet is adopted and the cursor starts over.
    let p = Pool::open(&path, net("10.244.3.0/25")).unwrap();
    assert_eq!(p.subnet(), net("10.244.3.0/25"));
    assert_eq!(p.last_allocated().unwrap(), None);
    assert_eq!(alloc(&p, 2), ip("10.244.3.2"));
    drop(p);
    assert!(Pool::open(&path, net("10.244.2.0/24")).is_err());
}

#[test]
fn a_recorded_pool_opens_for_the_subnet_it_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    assert!(
        Pool::<Ipv4Net>::open_recorded(&path).unwrap().is_none(),
        "no file"
    );
    let p = Pool::open(&path, net("10.244.7.0/25")).unwrap();
    let a = p.allocate(&key(1), None, b"m").unwrap();
    drop(p);
    let p = Pool::<Ipv4Net>::open_recorded(&path)
        .unwrap()
        .expect("a recorded subnet");
    assert_eq!(p.subnet(), net("10.244.7.0/25"));
    assert_eq!(p.list().unwrap(), vec![a]);
    // The next address follows the persisted cursor, as after any open.
    assert_eq!(alloc(&p, 2), ip("10.244.7.3"));
    drop(p);
    std::fs::write(&path, b"not a database").unwrap();
    assert!(Pool::<Ipv4Net>::open_recorded(&path).is_err());
}

#[test]
fn open_creates_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/lib/weft/ipam.redb");
    let p = Pool::open(&path, net("10.244.2.0/24")).unwrap();
    alloc(&p, 1);
    assert!(path.is_file());
}

#[test]
fn a_second_open_of_a_live_database_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    let _p = Pool::open(&path, net("10.244.2.0/24")).unwrap();
    let err = Pool::open(&path, net("10.244.2.0/24")).unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
}

#[test]
fn a_file_that_is_not_a_database_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let err = Pool::open(&path, net("10.244.2.0/24")).unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
}

/// Writes `f`'s changes straight into the tables of the database at `path`, bypassing the pool.
fn tamper(path: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    f(&txn);
    txn.commit().unwrap();
}

fn new_db_with_two(path: &Path) {
    let p = Pool::open(path, net("10.244.2.0/24")).unwrap();
    alloc(&p, 1);
    alloc(&p, 2);
}

#[test]
fn open_reports_a_by_key_entry_missing_from_by_ip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    new_db_with_two(&path);
    tamper(&path, |txn| {
        txn.open_table(<Ipv4Net as Family>::BY_IP)
            .unwrap()
            .remove(0x0af4_0203)
            .unwrap();
    });
    let err = Pool::open(&path, net("10.244.2.0/24")).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("10.244.2.3"), "{err}");
}

#[test]
fn open_reports_a_stray_by_ip_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    new_db_with_two(&path);
    tamper(&path, |txn| {
        txn.open_table(<Ipv4Net as Family>::BY_IP)
            .unwrap()
            .insert(0x0af4_0209, ("ghost", "eth0"))
            .unwrap();
    });
    let err = Pool::open(&path, net("10.244.2.0/24")).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("ghost"), "{err}");
}

#[test]
fn open_reports_two_keys_on_one_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    new_db_with_two(&path);
    tamper(&path, |txn| {
        txn.open_table(<Ipv4Net as Family>::BY_KEY)
            .unwrap()
            .insert(("c0002", "eth0"), (0x0af4_0202, &b""[..]))
            .unwrap();
    });
    let err = Pool::open(&path, net("10.244.2.0/24")).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
}

#[test]
fn open_reports_a_reserved_address_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    new_db_with_two(&path);
    tamper(&path, |txn| {
        txn.open_table(<Ipv4Net as Family>::BY_KEY)
            .unwrap()
            .insert(("gw", "eth0"), (0x0af4_0201, &b""[..]))
            .unwrap();
        txn.open_table(<Ipv4Net as Family>::BY_IP)
            .unwrap()
            .insert(0x0af4_0201, ("gw", "eth0"))
            .unwrap();
    });
    let err = Pool::open(&path, net("10.244.2.0/24")).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("10.244.2.1"), "{err}");
}

#[test]
fn open_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    new_db_with_two(&path);
    tamper(&path, |txn| {
        txn.open_table(META)
            .unwrap()
            .insert(M_SCHEMA, SCHEMA_VERSION + 1)
            .unwrap();
    });
    let err = Pool::open(&path, net("10.244.2.0/24")).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedSchema { found, .. } if found == SCHEMA_VERSION + 1),
        "{err:?}"
    );
}

#[test]
fn open_refuses_tables_without_a_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    tamper(&path, |txn| {
        txn.open_table(<Ipv4Net as Family>::BY_IP)
            .unwrap()
            .insert(0x0af4_0202, ("c", "eth0"))
            .unwrap();
    });
    let err = Pool::open(&path, net("10.244.2.0/24")).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
}

#[test]
fn a_fresh_database_records_schema_and_subnet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    drop(Pool::open(&path, net("10.244.2.0/24")).unwrap());
    let db = redb::Database::create(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    let get = |k: &str| {
        redb::ReadableTable::get(&meta, k)
            .unwrap()
            .map(|g| g.value())
    };
    assert_eq!(get(M_SCHEMA), Some(SCHEMA_VERSION));
    assert_eq!(get("subnet_addr"), Some(u64::from(0x0af4_0200u32)));
    assert_eq!(get("subnet_prefix"), Some(24));
}

fn net6(s: &str) -> ipnet::Ipv6Net {
    s.parse().unwrap()
}

fn ip6(s: &str) -> std::net::Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn an_ipv6_pool_hands_out_round_robin_from_the_third_address() {
    let p = crate::Pool6::in_memory(net6("fd00:10:244:2::/64")).unwrap();
    assert_eq!(p.gateway(), ip6("fd00:10:244:2::1"));
    assert_eq!(p.capacity(), (1u128 << 64) - 2);
    let a = p.allocate(&key(1), None, b"ns").unwrap();
    assert_eq!(a.ip, ip6("fd00:10:244:2::2"));
    assert_eq!((a.prefix_len, a.gateway), (64, ip6("fd00:10:244:2::1")));
    assert_eq!(p.allocate(&key(1), None, b"").unwrap(), a, "idempotent");
    assert_eq!(
        p.allocate(&key(2), None, b"").unwrap().ip,
        ip6("fd00:10:244:2::3")
    );
    p.release(&key(1)).unwrap();
    assert_eq!(
        p.allocate(&key(3), None, b"").unwrap().ip,
        ip6("fd00:10:244:2::4"),
        "a released address waits its turn"
    );
    let r = p.allocate(&key(4), Some(ip6("fd00:10:244:2:ffff:ffff:ffff:ffff")), b"");
    assert_eq!(r.unwrap().ip, ip6("fd00:10:244:2:ffff:ffff:ffff:ffff"));
    for (bad, want) in [
        ("fd00:10:244:2::", "subnet-router anycast"),
        ("fd00:10:244:2::1", "gateway"),
        ("fd00:10:244:3::2", "outside"),
        ("fd00:10:244:2::3", "already allocated"),
    ] {
        let err = p.allocate(&key(9), Some(ip6(bad)), b"").unwrap_err();
        assert!(err.to_string().contains(want), "{bad}: {err}");
    }
    assert_eq!(p.verify().unwrap(), 3);
}

#[test]
fn an_ipv6_pool_wraps_and_is_exhausted_like_an_ipv4_one() {
    let p = crate::Pool6::in_memory(net6("fd00::/126")).unwrap();
    assert_eq!(p.capacity(), 2);
    assert_eq!(p.allocate(&key(1), None, b"").unwrap().ip, ip6("fd00::2"));
    assert_eq!(p.allocate(&key(2), None, b"").unwrap().ip, ip6("fd00::3"));
    let err = p.allocate(&key(3), None, b"").unwrap_err();
    assert!(
        matches!(err, Error::Exhausted { capacity: 2, .. }),
        "{err:?}"
    );
    p.release(&key(1)).unwrap();
    assert_eq!(p.allocate(&key(3), None, b"").unwrap().ip, ip6("fd00::2"));
}

#[test]
fn an_ipv6_pool_survives_a_reopen_with_its_cursor_and_high_bits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam6.redb");
    let subnet = net6("fd00:10:244:2::/64");
    let p = crate::Pool6::open(&path, subnet).unwrap();
    let a = p.allocate(&key(1), None, b"m").unwrap();
    p.allocate(&key(2), None, b"").unwrap();
    p.release(&key(2)).unwrap();
    drop(p);
    let p = crate::Pool6::open_recorded(&path)
        .unwrap()
        .expect("recorded");
    assert_eq!(p.subnet(), subnet);
    assert_eq!(p.list().unwrap(), vec![a]);
    assert_eq!(p.last_allocated().unwrap(), Some(ip6("fd00:10:244:2::3")));
    assert_eq!(
        p.allocate(&key(3), None, b"").unwrap().ip,
        ip6("fd00:10:244:2::4")
    );
    drop(p);
    let err = crate::Pool6::open(&path, net6("fd00:10:244:3::/64")).unwrap_err();
    assert!(
        matches!(err, Error::SubnetMismatch { live: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("fd00:10:244:3::/64"), "{err}");
}

#[test]
fn a_pool_refuses_the_database_of_the_other_family() {
    let dir = tempfile::tempdir().unwrap();
    let (v4, v6) = (dir.path().join("ipam.redb"), dir.path().join("ipam6.redb"));
    drop(Pool::open(&v4, net("10.244.2.0/24")).unwrap());
    drop(crate::Pool6::open(&v6, net6("fd00::/64")).unwrap());
    let err = crate::Pool6::open(&v4, net6("fd00::/64")).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongFamily {
                found: 4,
                wanted: 6,
                ..
            }
        ),
        "{err:?}"
    );
    let err = crate::Pool6::open_recorded(&v4).unwrap_err();
    assert!(matches!(err, Error::WrongFamily { .. }), "{err:?}");
    let err = Pool::open(&v6, net("10.244.2.0/24")).unwrap_err();
    assert!(
        err.to_string()
            .contains("holds an IPv6 pool, not an IPv4 one"),
        "{err}"
    );
    let err = Pool::<Ipv4Net>::open_recorded(&v6).unwrap_err();
    assert!(
        matches!(err, Error::WrongFamily { found: 6, .. }),
        "{err:?}"
    );
}

#[test]
fn an_ipv4_database_keeps_its_layout_with_no_family_or_high_halves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    let p = Pool::open(&path, net("10.244.2.0/24")).unwrap();
    alloc(&p, 1);
    drop(p);
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    let names: Vec<String> = redb::ReadableTable::iter(&meta)
        .unwrap()
        .map(|e| e.unwrap().0.value().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "last_allocated",
            "schema_version",
            "subnet_addr",
            "subnet_prefix"
        ]
    );
    let by_ip = txn.open_table(<Ipv4Net as Family>::BY_IP).unwrap();
    assert!(
        by_ip.get(0x0af4_0202).unwrap().is_some(),
        "u32 keys, as before"
    );
}

/// An IPv6 pool moved to another subnet (nothing allocated) forgets its cursor,
/// both halves of it, and allocates again.
#[test]
fn an_ipv6_pool_moved_to_another_subnet_allocates_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam6.redb");
    let p = crate::Pool6::open(&path, net6("fd00:10:244:1::/64")).unwrap();
    p.allocate(&key(1), None, b"").unwrap();
    p.release(&key(1)).unwrap();
    drop(p);
    let p = crate::Pool6::open(&path, net6("fd00:10:244:2::/64")).unwrap();
    assert_eq!(p.last_allocated().unwrap(), None);
    let a = p.allocate(&key(2), None, b"").unwrap();
    assert_eq!(a.ip, ip6("fd00:10:244:2::2"));
    assert_eq!(p.verify().unwrap(), 1);
}
