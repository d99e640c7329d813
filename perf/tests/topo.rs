//! Builds real namespaces, so these tests need root; they fail (never skip) without it.

use std::time::{Duration, Instant};

use weft_perf::netns::{self, require_root, ChildGuard, Netns};
use weft_perf::topo::{self, direct, kernel_vxlan, Offload, Pod, Underlay};

/// Fails if any of `names` is still listed by `ip netns list`.
fn assert_gone(names: &[String]) {
    let left = netns::list().unwrap();
    let still: Vec<_> = names.iter().filter(|n| left.contains(n)).collect();
    assert!(still.is_empty(), "namespaces left behind: {still:?}");
}

/// The MTU of `ifname` in `ns`, read with `ip link show`.
fn link_mtu(ns: &Netns, ifname: &str) -> u32 {
    let out = ns.ip(&["-o", "link", "show", "dev", ifname]).unwrap();
    let mut words = out.split_whitespace();
    words.find(|w| *w == "mtu").expect("mtu in ip link output");
    words.next().unwrap().parse().unwrap()
}

#[test]
fn kernel_vxlan_pods_reach_each_other_across_hosts() {
    require_root();
    let names;
    {
        let underlay = Underlay::new("kv", 2).unwrap();
        let macs = kernel_vxlan::mesh(&underlay).unwrap();
        assert_eq!(macs[1], kernel_vxlan::vtep_mac(1));
        let (h0, h1) = (underlay.host(0), underlay.host(1));
        let a = underlay.pod(0, "kva").unwrap();
        let b = underlay.pod(1, "kvb").unwrap();
        let (ip_a, ip_b) = (h0.pod_ip(2), h1.pod_ip(2));
        assert_eq!(kernel_vxlan::attach_pod(h0, &a, ip_a).unwrap(), "veth2");
        kernel_vxlan::attach_pod(h1, &b, ip_b).unwrap();

        a.ns.ping(ip_b, 2).unwrap();
        b.ns.ping(ip_a, 2).unwrap();

        // The overlay MTU is underlay − 50 everywhere, and a full-size DF packet fits.
        assert_eq!(link_mtu(&h0.ns, kernel_vxlan::DEVICE), 1450);
        assert_eq!(link_mtu(&a.ns, "eth0"), 1450);
        a.ns.run(&[
            "ping",
            "-n",
            "-q",
            "-c",
            "1",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            "1422",
            &ip_b.to_string(),
        ])
        .unwrap();

        // The remote's VTEP is programmed the flannel way.
        let fdb = h0
            .ns
            .run(&["bridge", "fdb", "show", "dev", kernel_vxlan::DEVICE])
            .unwrap();
        assert!(
            fdb.contains(&format!(
                "{} dst {} self permanent",
                macs[1], h1.underlay_ip
            )),
            "{fdb}"
        );
        let neigh = h0
            .ns
            .ip(&["neigh", "show", "dev", kernel_vxlan::DEVICE])
            .unwrap();
        assert!(
            neigh.contains(&format!("10.244.2.0 lladdr {} PERMANENT", macs[1])),
            "{neigh}"
        );

        names = [
            underlay.netns_names(),
            vec![a.ns.name().to_owned(), b.ns.name().to_owned()],
        ]
        .concat();
    }
    assert_gone(&names);
}

#[test]
fn direct_pods_reach_each_other_across_hosts() {
    require_root();
    let names;
    {
        let underlay = Underlay::with_mtu("dr", 2, 9000).unwrap();
        direct::mesh(&underlay).unwrap();
        let (h0, h1) = (underlay.host(0), underlay.host(1));
        let a = Pod::new(0, "dra").unwrap();
        let b = Pod::new(1, "drb").unwrap();
        let (ip_a, ip_b) = (h0.pod_ip(10), h1.pod_ip(20));
        direct::attach_pod(h0, &a, ip_a).unwrap();
        direct::attach_pod(h1, &b, ip_b).unwrap();

        a.ns.ping(ip_b, 2).unwrap();
        b.ns.ping(ip_a, 2).unwrap();
        // Pods get the overlays' MTU (underlay − 50), so comparisons move the same packets.
        assert_eq!(link_mtu(&a.ns, "eth0"), 8950);
        assert_eq!(link_mtu(underlay.wire(), "br0"), 9000);
        a.ns.run(&[
            "ping",
            "-n",
            "-q",
            "-c",
            "1",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            "8922",
            &ip_b.to_string(),
        ])
        .unwrap();

        names = [
            underlay.netns_names(),
            vec![a.ns.name().to_owned(), b.ns.name().to_owned()],
        ]
        .concat();
    }
    assert_gone(&names);
}

/// Hosts keep their underlay offloads unless asked, and one host can turn them off.
#[test]
fn underlay_offloads_are_on_by_default_and_settable_per_host() {
    require_root();
    let on = Underlay::new("offl", 2).unwrap();
    assert_eq!(on.offload(), Offload::On);
    for h in on.hosts() {
        assert_eq!(h.tx_offload().unwrap(), Offload::On);
    }
    on.host(1).set_tx_offload(Offload::Off).unwrap();
    assert_eq!(on.host(1).tx_offload().unwrap(), Offload::Off);
    assert_eq!(on.host(0).tx_offload().unwrap(), Offload::On);
    on.host(1).set_tx_offload(Offload::On).unwrap();
    assert_eq!(on.host(1).tx_offload().unwrap(), Offload::On);

    let off = Underlay::with_options("offl", 2, topo::DEFAULT_MTU, Offload::Off).unwrap();
    assert_eq!(off.offload(), Offload::Off);
    for h in off.hosts() {
        assert_eq!(h.tx_offload().unwrap(), Offload::Off);
    }
    assert_eq!("on".parse::<Offload>().unwrap(), Offload::On);
    assert!("yes".parse::<Offload>().is_err());
}

#[test]
fn attaching_a_pod_outside_the_host_subnet_fails() {
    require_root();
    let underlay = Underlay::new("bad", 1).unwrap();
    direct::mesh(&underlay).unwrap();
    let pod = underlay.pod(0, "bad").unwrap();
    let err =
        direct::attach_pod(underlay.host(0), &pod, "10.244.9.2".parse().unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("not a usable pod address"),
        "{err:#}"
    );
    assert!(underlay.pod(1, "nohost").is_err());
}

#[test]
fn child_guard_kills_what_it_spawned() {
    require_root();
    let ns = Netns::new("cg").unwrap();
    let guard = ns.spawn(&["sleep", "1000"]).unwrap();
    let pid = guard.pid();
    // `ip netns exec` execs the program in place, so the pid is sleep's own.
    netns::wait_until(Duration::from_secs(2), "sleep to exec", || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    })
    .unwrap();
    let start = Instant::now();
    drop(guard);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "SIGTERM should end sleep at once"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists"
    );
}

#[test]
fn child_guard_escalates_to_sigkill() {
    require_root();
    let ns = Netns::new("cgk").unwrap();
    let mut cmd = ns.cmd("sh");
    cmd.args(["-c", "trap '' TERM; echo ready; exec sleep 1000"])
        .stdout(std::process::Stdio::piped());
    let mut guard = ChildGuard::spawn(&mut cmd)
        .unwrap()
        .with_grace(Duration::from_millis(200));
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(guard.child_mut().stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "ready\n");
    guard.kill_term().unwrap();
    assert!(
        guard
            .wait_timeout(Duration::from_millis(100))
            .unwrap()
            .is_none(),
        "TERM is ignored"
    );
    let status = guard.stop().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}

#[test]
fn run_errors_name_the_command_and_stderr() {
    require_root();
    let ns = Netns::new("err").unwrap();
    let err = ns
        .run(&["ip", "link", "set", "dev", "nosuchdev", "up"])
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!(
            "ip netns exec {} ip link set dev nosuchdev up",
            ns.name()
        )),
        "{msg}"
    );
    assert!(msg.contains("exit status"), "{msg}");
    assert!(msg.contains("nosuchdev"), "{msg}");
}

#[test]
fn cleanup_stale_removes_only_dead_owners() {
    require_root();
    // A pid that is surely dead: a child we already reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    let dead = child.id();
    let prefix = format!("wstale{}x", std::process::id());
    let stale = format!("{prefix}-{dead}-0");
    let live = format!("{prefix}-{}-1", std::process::id());
    for name in [&stale, &live] {
        netns::run_cmd(std::process::Command::new("ip").args(["netns", "add", name])).unwrap();
    }
    let removed = netns::cleanup_stale(&prefix);
    // Delete ours before asserting, so a failure leaves nothing behind.
    let _ = netns::run_cmd(std::process::Command::new("ip").args(["netns", "del", &live]));
    let _ = netns::run_cmd(std::process::Command::new("ip").args(["netns", "del", &stale]));
    assert_eq!(removed.unwrap(), vec![stale]);
}

#[test]
fn netns_names_are_unique_and_deleted_on_drop() {
    require_root();
    let a = Netns::new("uniq").unwrap();
    let b = Netns::new("uniq").unwrap();
    assert_ne!(a.name(), b.name());
    assert!(a.path().exists());
    assert!(a
        .name()
        .starts_with(&format!("wuniq-{}-", std::process::id())));
    let names = vec![a.name().to_owned(), b.name().to_owned()];
    drop((a, b));
    assert_gone(&names);
}

#[test]
fn a_panicking_test_still_removes_its_namespaces() {
    require_root();
    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let underlay = Underlay::new("pan", 2).unwrap();
        kernel_vxlan::mesh(&underlay).unwrap();
        let pod = underlay.pod(0, "pan").unwrap();
        names = underlay.netns_names();
        names.push(pod.ns.name().to_owned());
        panic!("deliberate");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 4);
    assert_gone(&names);
}

/// The links of `ns` other than `lo`, sorted.
fn links(ns: &Netns) -> Vec<String> {
    let out = ns.ip(&["-o", "link", "show"]).unwrap();
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap().to_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names
}

#[test]
fn baselines_come_off_and_go_back_on_the_same_hosts_and_pods() {
    require_root();
    let underlay = Underlay::new("swap", 2).unwrap();
    let (h0, h1) = (underlay.host(0), underlay.host(1));
    let a = underlay.pod(0, "swa").unwrap();
    let b = underlay.pod(1, "swb").unwrap();
    let (ip_a, ip_b) = (h0.pod_ip(2), h1.pod_ip(2));
    let bare = links(&h0.ns);
    assert_eq!(bare, ["eth0"]);
    let routes = h0.ns.ip(&["route", "show"]).unwrap();
    for _ in 0..2 {
        kernel_vxlan::mesh(&underlay).unwrap();
        kernel_vxlan::attach_pod(h0, &a, ip_a).unwrap();
        kernel_vxlan::attach_pod(h1, &b, ip_b).unwrap();
        a.ns.ping(ip_b, 1).unwrap();
        for pod in [&a, &b] {
            topo::detach_pod(pod).unwrap();
            topo::detach_pod(pod).unwrap(); // nothing left to remove is fine
        }
        kernel_vxlan::unmesh(&underlay).unwrap();
        assert_eq!(links(&h0.ns), bare);
        assert_eq!(links(&a.ns), Vec::<String>::new());

        direct::mesh(&underlay).unwrap();
        direct::attach_pod(h0, &a, ip_a).unwrap();
        direct::attach_pod(h1, &b, ip_b).unwrap();
        a.ns.ping(ip_b, 1).unwrap();
        assert_eq!(link_mtu(&a.ns, "eth0"), 1450);
        for pod in [&a, &b] {
            topo::detach_pod(pod).unwrap();
        }
        direct::unmesh(&underlay).unwrap();
        assert_eq!(links(&h0.ns), bare);
        assert_eq!(h0.ns.ip(&["route", "show"]).unwrap(), routes);
    }
}
