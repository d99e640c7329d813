//! Crash safety: a process churning the pool is killed with SIGKILL at arbitrary points, and the
//! database it leaves behind must be consistent, keep every acknowledged allocation, and go on
//! allocating.
//!
//! The churning process is this test binary run again with [`CHILD_DB`] set, filtered down to
//! [`churn_until_killed_or_done`].

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use weft_ipam::{Key, Pool};

/// Set in the child: the database file to churn.
const CHILD_DB: &str = "WEFT_IPAM_CRASH_DB";
/// Set in the child: the round, which prefixes its keys.
const CHILD_ROUND: &str = "WEFT_IPAM_CRASH_ROUND";
/// The child gives up after this long, in case the parent never kills it.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);
/// Allocations live at once in the churn, well under the /24's 253.
const LIVE: usize = 40;

fn subnet() -> Ipv4Net {
    "10.244.5.0/24".parse().unwrap()
}

fn key(round: &str, i: u64) -> Key {
    Key::new(format!("r{round}-{i}"), "eth0")
}

fn index_of(k: &Key) -> Option<u64> {
    k.container_id.rsplit('-').next()?.parse().ok()
}

/// Allocates, updates, releases and garbage-collects in a loop, printing `ALLOC <i> <ip>` once
/// each allocation is committed. Every operation that could touch allocation `i` is kept away
/// from the newest ones, so the last acknowledged allocation must survive a kill.
fn churn(path: &Path, round: &str, iterations: Option<u64>) {
    let pool = Pool::open(path, subnet()).unwrap();
    let started = Instant::now();
    let mut live: BTreeMap<u64, Ipv4Addr> = BTreeMap::new();
    let mut i = 0u64;
    while iterations.is_none_or(|n| i < n) && started.elapsed() < CHILD_DEADLINE {
        let k = key(round, i);
        let a = pool.allocate(&k, None, &i.to_le_bytes()).unwrap();
        assert!(
            !live.values().any(|ip| *ip == a.ip),
            "{} handed out twice",
            a.ip
        );
        live.insert(i, a.ip);
        println!("ALLOC {i} {}", a.ip);
        if i.is_multiple_of(3) {
            pool.update_meta(&k, b"updated").unwrap();
        }
        if live.len() > LIVE {
            let (&oldest, &ip) = live.iter().next().unwrap();
            if oldest % 2 == 0 {
                assert_eq!(pool.release(&key(round, oldest)).unwrap().unwrap().ip, ip);
            } else {
                assert_eq!(pool.release_ip(ip).unwrap().unwrap().ip, ip);
            }
            live.remove(&oldest);
        }
        if i % 17 == 16 {
            let newest = i;
            let doomed = |k: &Key| {
                index_of(k).is_some_and(|n| n % 5 == 0 && n + 10 < newest)
                    && k.container_id.starts_with(&format!("r{round}-"))
            };
            for a in pool.retain(|k| !doomed(k)).unwrap() {
                live.remove(&index_of(&a.key).unwrap());
            }
        }
        i += 1;
    }
    let n = pool.verify().unwrap();
    assert!(n >= live.len() as u64);
}

/// The child's body when run by [`kill_9_at_arbitrary_points_leaves_a_consistent_db`]; on its
/// own, a bounded churn on a fresh database.
#[test]
fn churn_until_killed_or_done() {
    match std::env::var_os(CHILD_DB) {
        Some(path) => {
            let round = std::env::var(CHILD_ROUND).unwrap();
            churn(Path::new(&path), &round, None);
        }
        None => {
            let dir = tempfile::tempdir().unwrap();
            churn(&dir.path().join("ipam.redb"), "solo", Some(200));
        }
    }
}

/// Checks what a crash left: invariants hold, addresses are distinct and usable, and the last
/// allocation the child acknowledged is there with the address it reported.
fn check_after_crash(pool: &Pool, acked: Option<(u64, Ipv4Addr)>, round: &str) {
    let n = pool.verify().unwrap();
    let all = pool.list().unwrap();
    assert_eq!(all.len() as u64, n);
    let mut seen = HashSet::new();
    for a in &all {
        assert!(seen.insert(a.ip), "{} held twice", a.ip);
        assert!(subnet().contains(&a.ip));
        assert!(a.ip != subnet().network() && a.ip != pool.gateway());
        assert!(a.ip != subnet().broadcast());
        assert_eq!(pool.get_by_ip(a.ip).unwrap().as_ref(), Some(a));
    }
    if let Some((i, ip)) = acked {
        let got = pool.get(&key(round, i)).unwrap();
        assert_eq!(
            got.map(|a| a.ip),
            Some(ip),
            "acknowledged allocation {i} lost"
        );
    }
}

#[test]
fn kill_9_at_arbitrary_points_leaves_a_consistent_db() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    let exe = std::env::current_exe().unwrap();
    // Kill after this many acknowledged allocations, then after a short, varying pause, so the
    // kill lands at different points of a transaction.
    for (round, (after, pause_us)) in [(5, 0), (23, 150), (61, 700), (90, 40), (137, 1300)]
        .into_iter()
        .enumerate()
    {
        let round = round.to_string();
        let mut child = Command::new(&exe)
            .args([
                "churn_until_killed_or_done",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB, &path)
            .env(CHILD_ROUND, &round)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = None;
        let parse = |line: &str| -> Option<(u64, Ipv4Addr)> {
            let mut f = line.strip_prefix("ALLOC ")?.split(' ');
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        };
        let mut count = 0;
        for line in lines.by_ref() {
            if let Some(a) = parse(&line.unwrap()) {
                acked = Some(a);
                count += 1;
                if count == after {
                    break;
                }
            }
        }
        assert_eq!(count, after, "round {round}: the child stopped early");
        std::thread::sleep(Duration::from_micros(pause_us));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: the child was not killed");
        // What the child printed before dying was committed before it was printed.
        for line in lines {
            let Ok(line) = line else { break };
            if let Some(a) = parse(&line) {
                acked = Some(a);
            }
        }

        let pool = Pool::open(&path, subnet()).unwrap();
        check_after_crash(&pool, acked, &round);
        let next = pool
            .allocate(&Key::new(format!("after-{round}"), "eth0"), None, b"")
            .unwrap();
        check_after_crash(&pool, acked, &round);
        assert!(pool
            .list()
            .unwrap()
            .iter()
            .all(|a| a.ip != next.ip || a.key == next.key));
    }
}
