//! Many threads sharing one pool never receive the same address.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Barrier};
use std::thread;

use weft_ipam::{Key, Pool};

const THREADS: usize = 100;

/// Runs `f(i)` on `THREADS` threads released together, and collects the results.
fn on_threads<T: Send + 'static>(
    pool: &Arc<Pool>,
    f: impl Fn(&Pool, usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(THREADS));
    let f = Arc::new(f);
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let (pool, barrier, f) = (pool.clone(), barrier.clone(), f.clone());
            thread::spawn(move || {
                barrier.wait();
                f(&pool, i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn a_hundred_threads_get_a_hundred_distinct_addresses_then_release_them() {
    let dir = tempfile::tempdir().unwrap();
    let subnet = "10.244.9.0/24".parse().unwrap();
    let pool = Arc::new(Pool::open(&dir.path().join("ipam.redb"), subnet).unwrap());

    let ips = on_threads(&pool, |p, i| {
        let a = p
            .allocate(&Key::new(format!("pod-{i}"), "eth0"), None, b"")
            .unwrap();
        a.ip
    });
    let distinct: HashSet<Ipv4Addr> = ips.iter().copied().collect();
    assert_eq!(distinct.len(), THREADS);
    // Round-robin from an empty pool hands out exactly .2 ..= .101, in some order.
    let want: HashSet<Ipv4Addr> = (2..2 + THREADS as u8)
        .map(|d| Ipv4Addr::new(10, 244, 9, d))
        .collect();
    assert_eq!(distinct, want);
    assert_eq!(pool.verify().unwrap(), THREADS as u64);

    let released = on_threads(&pool, |p, i| {
        p.release(&Key::new(format!("pod-{i}"), "eth0"))
            .unwrap()
            .map(|a| a.ip)
    });
    let released: HashSet<Ipv4Addr> = released.into_iter().map(Option::unwrap).collect();
    assert_eq!(released, want);
    assert!(pool.list().unwrap().is_empty());
    assert_eq!(pool.verify().unwrap(), 0);
}

#[test]
fn racing_allocations_of_one_key_agree_on_one_address() {
    let pool = Arc::new(Pool::in_memory("10.244.10.0/24".parse().unwrap()).unwrap());
    let ips = on_threads(&pool, |p, _| {
        p.allocate(&Key::new("same", "eth0"), None, b"").unwrap().ip
    });
    assert!(ips.iter().all(|ip| *ip == ips[0]), "{ips:?}");
    assert_eq!(pool.list().unwrap().len(), 1);
}

#[test]
fn racing_requests_for_one_address_have_one_winner() {
    let pool = Arc::new(Pool::in_memory("10.244.11.0/24".parse().unwrap()).unwrap());
    let wanted = Ipv4Addr::new(10, 244, 11, 42);
    let results = on_threads(&pool, move |p, i| {
        p.allocate(&Key::new(format!("pod-{i}"), "eth0"), Some(wanted), b"")
    });
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1);
    assert!(results.iter().all(|r| match r {
        Ok(a) => a.ip == wanted,
        Err(e) => matches!(e, weft_ipam::Error::AlreadyAllocated { ip, .. } if *ip == wanted),
    }));
    assert_eq!(pool.verify().unwrap(), 1);
}
