//! State survives dropping and reopening the pool: allocations, metadata and the cursor.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_ipam::{Key, Pool};

fn key(n: u32) -> Key {
    Key::new(format!("pod-{n}"), "eth0")
}

#[test]
fn reopen_restores_allocations_meta_and_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    let subnet: Ipv4Net = "10.244.7.0/24".parse().unwrap();

    let p = Pool::open(&path, subnet).unwrap();
    for n in 0..10 {
        p.allocate(&key(n), None, format!("netns-{n}").as_bytes())
            .unwrap();
    }
    p.allocate(&key(50), Some(Ipv4Addr::new(10, 244, 7, 200)), b"static")
        .unwrap();
    p.release(&key(3)).unwrap().unwrap();
    p.update_meta(&key(4), b"moved").unwrap();
    let before = p.list().unwrap();
    let cursor = p.last_allocated().unwrap();
    assert_eq!(cursor, Some(Ipv4Addr::new(10, 244, 7, 11)));
    drop(p);

    let p = Pool::open(&path, subnet).unwrap();
    assert_eq!(p.list().unwrap(), before);
    assert_eq!(p.last_allocated().unwrap(), cursor);
    assert_eq!(p.get(&key(4)).unwrap().unwrap().meta, b"moved");
    assert_eq!(p.verify().unwrap(), 10);
    // The cursor survived: the next address follows .11, and the released .5 is not reused.
    assert_eq!(
        p.allocate(&key(11), None, b"").unwrap().ip,
        Ipv4Addr::new(10, 244, 7, 12)
    );
    drop(p);

    let p = Pool::open(&path, subnet).unwrap();
    assert_eq!(p.list().unwrap().len(), 11);
    assert_eq!(
        p.last_allocated().unwrap(),
        Some(Ipv4Addr::new(10, 244, 7, 12))
    );
}

#[test]
fn an_idempotent_allocate_after_reopen_returns_the_stored_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/ipam.redb");
    let subnet: Ipv4Net = "10.244.8.0/28".parse().unwrap();
    let first = Pool::open(&path, subnet)
        .unwrap()
        .allocate(&key(1), None, b"a")
        .unwrap();
    let p = Pool::open(&path, subnet).unwrap();
    assert_eq!(p.allocate(&key(1), None, b"b").unwrap(), first);
    assert_eq!(p.release(&key(1)).unwrap(), Some(first));
    drop(p);
    assert!(Pool::open(&path, subnet)
        .unwrap()
        .list()
        .unwrap()
        .is_empty());
}
