//! `weft-perf` end to end, run as a user runs it: the built binary with weftd and
//! weft-cni beside it. These runs are very short and check structure, not speed: every
//! system and test gives a finite value, the JSON has the documented shape, and nothing
//! is left behind, after a normal exit, after Ctrl-C, and (with `weft-perf clean`)
//! after SIGKILL. They need root and fail (never skip) without it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_perf::harness::{System, Test};
use weft_perf::netns::{self, owner_pid, require_root, wait_until, PREFIX};
use weft_perf::pidfile::RUN_DIR;
use weft_perf::weft::Scratch;

/// The longest a short run may take before the test kills it and fails.
const RUN_BOUND: Duration = Duration::from_secs(150);

/// Held by each test: a run starts by cleaning up after dead runs, which must not race
/// a test that inspects a killed run's leftovers.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn weft_perf() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-perf"))
}

/// Builds weftd and weft-cni (a no-op when they are fresh) into the directory
/// weft-perf was built in, where it looks for them.
fn build_daemons() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let profile = weft_perf().parent().unwrap();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--bins", "-p", "weft-switch", "-p", "weft-cni"])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"));
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "building weftd and weft-cni failed");
        for bin in ["weftd", "weft-cni"] {
            assert!(
                profile.join(bin).is_file(),
                "{bin} is not in {}",
                profile.display()
            );
        }
    });
}

/// What exists outside the runs' namespaces: the root namespace's links.
fn root_links() -> BTreeSet<String> {
    let out = netns::run_cmd(Command::new("ip").args(["-o", "link", "show"])).unwrap();
    out.lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .collect()
}

/// Everything a run with pid `pid` may leave behind; empty when it left nothing.
fn leftovers(pid: u32) -> Vec<String> {
    let mut left: Vec<String> = netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| owner_pid(n, PREFIX) == Some(pid))
        .map(|n| format!("namespace {n}"))
        .collect();
    // weftd's command line names its socket in the run's scratch directory.
    let mark = format!("weft-perf-{pid}-");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&mark) {
            left.push(format!(
                "process {name}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    for entry in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&mark) {
            left.push(format!("scratch directory {name}"));
        }
    }
    if let Some(f) = pid_file(pid) {
        left.push(format!("pid file {}", f.display()));
    }
    left
}

/// The pid file of run `pid`, if it exists.
fn pid_file(pid: u32) -> Option<PathBuf> {
    std::fs::read_dir(RUN_DIR)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pid}-")))
        })
}

/// A weft-perf run a test started. If the test fails while the run is still going,
/// dropping it stops the run as Ctrl-C does (SIGTERM: weft-perf tears down), kills it
/// if it will not stop, and has `weft-perf clean` remove whatever it left.
struct Run {
    child: Option<Child>,
}

impl Run {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running child").id()
    }

    /// Waits for the run to exit within [`RUN_BOUND`]; fails (and tears it down) if
    /// it does not.
    fn finish(mut self) -> Output {
        let start = Instant::now();
        let child = self.child.as_mut().expect("a running child");
        while child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < RUN_BOUND,
                "weft-perf ran longer than {RUN_BOUND:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.take().unwrap().wait_with_output().unwrap()
    }

    /// SIGKILLs the run and reaps it, leaving what it made behind.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("a running child");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            // weft-perf's own teardown takes seconds; it gets them before SIGKILL.
            let guard = netns::ChildGuard::new(child).with_grace(Duration::from_secs(30));
            if let Err(e) = guard.stop() {
                eprintln!("stopping weft-perf: {e}");
            }
        }
        if std::thread::panicking() {
            let _ = Command::new(weft_perf()).arg("clean").output();
        }
    }
}

fn spawn(args: &[&str]) -> Run {
    let child = Command::new(weft_perf())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting weft-perf");
    Run { child: Some(child) }
}

/// Waits until run `pid` has a weftd running (its pid file lists one).
fn wait_for_weftd(pid: u32) {
    wait_until(Duration::from_secs(60), "the run to start weftd", || {
        pid_file(pid)
            .and_then(|f| std::fs::read_to_string(f).ok())
            .is_some_and(|t| !t.trim().is_empty())
    })
    .unwrap();
}

/// What `ethtool -k` says of `tx-checksumming` on `eth0` of each host of run `pid`,
/// in host order.
fn host_offloads(pid: u32) -> Vec<String> {
    let mut hosts: Vec<String> = netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("wperfh") && owner_pid(n, PREFIX) == Some(pid))
        .collect();
    hosts.sort();
    assert!(!hosts.is_empty(), "run {pid} has no host namespaces");
    hosts
        .iter()
        .map(|ns| {
            let out = netns::run_cmd(
                Command::new("ip").args(["netns", "exec", ns, "ethtool", "-k", "eth0"]),
            )
            .unwrap();
            let line = out
                .lines()
                .find_map(|l| l.strip_prefix("tx-checksumming: "))
                .unwrap_or_else(|| panic!("no tx-checksumming in {out}"));
            line.split_whitespace().next().unwrap().to_owned()
        })
        .collect()
}

fn number(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite(), "{what} is not finite: {x}");
    x
}

#[test]
fn a_short_run_reports_every_system_and_test_and_leaves_nothing() {
    require_root();
    let _serial = serial();
    build_daemons();
    let scratch = Scratch::new("harness").unwrap();
    let json = scratch.path().join("report.json");
    let svg = scratch.path().join("report.svg");
    let links_before = root_links();
    let child = spawn(&[
        "run",
        "--duration",
        "1",
        "--repeat",
        "1",
        "--cni-pods",
        "6",
        "--mem-pods",
        "10",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let pid = child.pid();
    let out = child.finish();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weft-perf run failed:\n{stderr}");

    // Nothing is left: namespaces, processes, files; the root namespace is untouched.
    assert_eq!(leftovers(pid), Vec::<String>::new());
    assert_eq!(
        root_links(),
        links_before,
        "the root namespace's links changed"
    );

    // The table names every system, with ratios to kernel-vxlan, and its header says
    // how the underlay and the idle CPUs were set.
    for system in System::DEFAULT {
        assert!(stdout.contains(system.name()), "{stdout}");
    }
    assert!(stdout.contains("(1.00x)"), "{stdout}");
    assert!(stdout.contains("underlay offload on"), "{stdout}");
    assert!(
        stdout.contains("idle CPUs poll for every system"),
        "{stdout}"
    );

    // The JSON: {"machine": {...}, "results": [{system, test, metric, value, unit, runs}]}.
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let machine = report["machine"].as_object().expect("machine object");
    for key in ["cpu", "cpus", "memory_gib", "kernel", "os"] {
        assert!(
            machine.contains_key(key),
            "machine lacks {key}: {machine:?}"
        );
    }
    // The settings: the defaults, and what this run was told.
    let settings = report["settings"].as_object().expect("settings object");
    assert_eq!(settings["underlay_offload"], "on", "{settings:?}");
    assert_eq!(settings["rr_idle"], "poll", "{settings:?}");
    assert_eq!(settings["repeat"], 1, "{settings:?}");
    assert_eq!(settings["cni_pods"], 6, "{settings:?}");
    assert_eq!(settings["mem_pods"], 10, "{settings:?}");
    let tests: Vec<&str> = settings["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tests, Test::DEFAULT.map(Test::name), "{settings:?}");
    assert_eq!(
        report["cross_checks"],
        serde_json::json!([]),
        "no iperf3 test ran"
    );
    let results = report["results"].as_array().expect("results array");
    let mut seen = BTreeSet::new();
    let mut not_applicable = BTreeSet::new();
    for r in results {
        let obj = r.as_object().expect("a result is an object");
        for key in ["system", "test", "metric", "value", "unit", "runs"] {
            assert!(obj.contains_key(key), "result lacks {key}: {r}");
        }
        let (system, test, metric) = (
            r["system"].as_str().unwrap(),
            r["test"].as_str().unwrap(),
            r["metric"].as_str().unwrap(),
        );
        assert!(!r["unit"].as_str().unwrap().is_empty(), "{r}");
        assert!(
            seen.insert((system.to_owned(), test.to_owned(), metric.to_owned())),
            "duplicate result {r}"
        );
        let runs = r["runs"].as_array().unwrap();
        if r["value"].is_null() {
            assert!(
                r["note"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("not applicable")),
                "a missing value must be explained as not applicable: {r}"
            );
            assert!(runs.is_empty(), "{r}");
            not_applicable.insert(format!("{system}/{test}/{metric}"));
            continue;
        }
        number(&r["value"], &format!("{system} {test} {metric}"));
        assert_eq!(runs.len(), 1, "one round gives one run: {r}");
        for v in runs {
            number(v, &format!("a run of {system} {test} {metric}"));
        }
    }
    let mut expected = BTreeSet::new();
    for system in System::DEFAULT {
        for test in Test::DEFAULT {
            for metric in test.metrics() {
                assert!(
                    seen.contains(&(
                        system.name().to_owned(),
                        test.name().to_owned(),
                        metric.name.to_owned()
                    )),
                    "no result for {system} {test} {}",
                    metric.name
                );
                if test.not_applicable(system, metric.name).is_some() {
                    expected.insert(format!("{system}/{test}/{}", metric.name));
                }
            }
        }
    }
    assert_eq!(not_applicable, expected);
    assert_eq!(
        expected.into_iter().collect::<Vec<_>>(),
        [
            "direct/cni/ADD p50",
            "direct/cni/ADD p99",
            "direct/cni/DEL p50",
            "direct/cni/DEL p99",
            "direct/cpu/weftd",
            "direct/mem/idle cpu",
            "direct/mem/rss",
            "kernel-vxlan/cpu/weftd",
            "kernel-vxlan/mem/idle cpu",
            "kernel-vxlan/mem/rss"
        ]
    );

    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg"), "{}", &plot[..plot.len().min(200)]);
    assert!(
        plot.contains("tcp1 throughput"),
        "the plot has no tcp1 panel"
    );
}

/// The `weft-perf echo-servers` processes of this weft-perf binary (the svc tests'
/// servers, which a run stops before it ends), as their command lines.
fn echo_servers() -> Vec<String> {
    let mark = format!(
        "{}\0{}",
        weft_perf().display(),
        weft_perf::traffic::ECHO_SUBCOMMAND
    );
    (std::fs::read_dir("/proc").unwrap().flatten())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .filter(|c| c.contains(&mark))
        .collect()
}

/// The Services systems the tiny `svc10` run compares: all of them.
const SVC_SYSTEMS: [System; 4] = System::SERVICES;

#[test]
fn svc_runs_tiny_on_every_services_system_and_leaves_nothing() {
    require_root();
    let _serial = serial();
    build_daemons();
    let scratch = Scratch::new("harnsvc").unwrap();
    let json = scratch.path().join("svc.json");
    let links_before = root_links();
    let systems: Vec<&str> = SVC_SYSTEMS.iter().map(|s| s.name()).collect();
    let child = spawn(&[
        "run",
        "--systems",
        &systems.join(","),
        "--tests",
        "svc10",
        "--duration",
        "0.5",
        "--repeat",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let pid = child.pid();
    let out = child.finish();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weft-perf run failed:\n{stderr}");
    assert_eq!(leftovers(pid), Vec::<String>::new());
    assert_eq!(echo_servers(), Vec::<String>::new(), "echo servers left");
    assert_eq!(
        root_links(),
        links_before,
        "the root namespace's links changed"
    );

    // Ratios are to kube-proxy's iptables rules on the kernel's VXLAN.
    assert!(
        stdout.contains("ratio to kernel-vxlan+iptables (svc tests)"),
        "{stdout}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = report["results"].as_array().expect("results array");
    for system in SVC_SYSTEMS {
        for metric in Test::Svc10.metrics() {
            let row = results
                .iter()
                .find(|r| {
                    r["system"] == system.name()
                        && r["test"] == "svc10"
                        && r["metric"] == metric.name
                })
                .unwrap_or_else(|| {
                    panic!("no svc10 {} row for {system}: {results:?}", metric.name)
                });
            number(&row["value"], &format!("{system} svc10 {}", metric.name));
            assert_eq!(row["runs"].as_array().unwrap().len(), 1, "{row}");
        }
    }
}

#[test]
fn ctrl_c_tears_everything_down() {
    require_root();
    let _serial = serial();
    build_daemons();
    let child = spawn(&[
        "run",
        "--systems",
        "weft-vxlan,kernel-vxlan",
        "--tests",
        "tcp1",
        "--duration",
        "20",
    ]);
    let pid = child.pid();
    wait_for_weftd(pid);
    // While the run is up, every host's underlay keeps its offloads (the default).
    assert_eq!(host_offloads(pid), ["on", "on"]);
    // SAFETY: kill has no memory-safety preconditions; `pid` is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let start = Instant::now();
    let out = child.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an interrupted run must fail");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "teardown took {:?}",
        start.elapsed()
    );
    assert_eq!(leftovers(pid), Vec::<String>::new(), "{stderr}");
}

#[test]
fn clean_removes_what_a_killed_run_left() {
    require_root();
    let _serial = serial();
    build_daemons();
    let mut child = spawn(&[
        "run",
        "--systems",
        "weft-sleeve",
        "--tests",
        "rr",
        "--duration",
        "20",
        "--underlay-offload",
        "off",
    ]);
    let pid = child.pid();
    wait_for_weftd(pid);
    assert_eq!(host_offloads(pid), ["off", "off"]);
    child.kill();
    let left = leftovers(pid);
    assert!(
        left.iter().any(|l| l.starts_with("process")),
        "a killed run leaves its weftd running: {left:?}"
    );
    assert!(left.iter().any(|l| l.starts_with("namespace")), "{left:?}");

    let out = Command::new(weft_perf()).arg("clean").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("stopped"), "{stdout}");
    // Processes are stopped with SIGTERM first; give them their grace period.
    wait_until(Duration::from_secs(10), "weftd to be gone", || {
        leftovers(pid).is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", leftovers(pid)));
}

#[test]
fn iperf3_cross_checks_the_generator_in_the_same_run() {
    require_root();
    let _serial = serial();
    build_daemons();
    let scratch = Scratch::new("iperf").unwrap();
    let json = scratch.path().join("report.json");
    let child = spawn(&[
        "run",
        "--systems",
        "weft-sleeve,kernel-vxlan",
        "--tests",
        "tcp1,tcp1-iperf3,tcp4-iperf3",
        "--duration",
        "1",
        "--repeat",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let pid = child.pid();
    let out = child.finish();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weft-perf run failed:\n{stderr}");
    assert_eq!(leftovers(pid), Vec::<String>::new());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for system in ["weft-sleeve", "kernel-vxlan"] {
        for test in ["tcp1", "tcp1-iperf3", "tcp4-iperf3"] {
            let row = report["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["system"] == system && r["test"] == test)
                .unwrap_or_else(|| panic!("no {system} {test} row"));
            assert!(number(&row["value"], test) > 0.0, "{row}");
        }
    }
    // tcp1 has both generators, so it is cross-checked; tcp4 ran with iperf3 only.
    let checks = report["cross_checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{checks:?}");
    for c in checks {
        assert_eq!(c["test"], "tcp1", "{c}");
        let ratio = number(&c["ratio"], "ratio");
        let expect = number(&c["iperf3"], "iperf3") / number(&c["weft_perf"], "weft_perf");
        assert!((ratio - expect).abs() < 1e-9, "{c}");
        assert_eq!(c["disagree"], (ratio - 1.0).abs() > 0.2, "{c}");
    }
    assert!(stdout.contains("generator cross-check"), "{stdout}");
    assert!(stdout.contains("tcp1-iperf3"), "{stdout}");
}

/// Runs a tiny `weft-perf scale` on `store` (20 nodes, 200 pods, 20 policies over 4
/// namespaces, 3 pods attached locally) with `extra` arguments, checks that it
/// succeeded and left nothing behind, and returns its JSON report and its stdout.
fn scale_tiny(store: &str, extra: &[&str]) -> (Value, String) {
    require_root();
    let _serial = serial();
    build_daemons();
    let scratch = Scratch::new("harness").unwrap();
    let json = scratch.path().join("scale.json");
    let sizes = [
        "--nodes",
        "20",
        "--pods",
        "200",
        "--policies",
        "20",
        "--namespaces",
        "4",
        "--local-pods",
        "3",
        "--idle",
        "0.5",
        "--churn-rate",
        "40",
    ];
    let mut args = vec!["scale", "--store", store];
    args.extend(sizes);
    args.extend(extra);
    args.extend(["--json", json.to_str().unwrap()]);
    let child = spawn(&args);
    let pid = child.pid();
    let out = child.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weft-perf scale failed:\n{stderr}");
    assert_eq!(leftovers(pid), Vec::<String>::new());
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["store"], store);
    (r, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `weft-perf scale` on etcd, tiny: the cluster is fed, weftd gets its complete
/// view, probes and churn run, and the JSON has every figure, finite. No figure is
/// judged: these sizes say nothing of speed.
#[test]
fn scale_runs_tiny_on_etcd_and_reports_every_figure() {
    let extra = [
        "--starts",
        "2",
        "--probes",
        "5",
        "--churn",
        "40",
        "--churn-time",
        "5",
    ];
    let (r, stdout) = scale_tiny("etcd", &extra);
    assert_eq!(r["sizes"]["nodes"], 20);
    // 20 nodes' records and leases, 4 namespaces, 200 pods, 20 policies, the
    // probe's namespace, policy and source, 3 local pods.
    assert_eq!(r["records"], 40 + 4 + 200 + 20 + 3 + 3);
    for start in ["answer_seconds", "view_seconds"] {
        let v = r[start].as_array().unwrap();
        assert_eq!(v.len(), 2, "{start}: {v:?}");
        v.iter().for_each(|x| assert!(number(x, start) > 0.0));
    }
    assert_eq!(r["attach_ms"].as_array().unwrap().len(), 3);
    for figure in [
        "feed_seconds",
        "rss_mib",
        "rss_after_churn_mib",
        "idle_cpu_percent",
    ] {
        number(&r[figure], figure);
    }
    assert!(number(&r["rss_mib"], "rss") > 1.0);
    assert_eq!(r["quiet"]["count"], 5);
    let churn = &r["churn"];
    assert_eq!(churn["updates"], 40);
    assert!(churn["probe_updates"].as_u64().unwrap() >= 1, "{churn}");
    for figure in ["seconds", "cpu_seconds", "cpu_per_1000", "cpu_per_1000_net"] {
        number(&churn[figure], figure);
    }
    for latency in [&r["quiet"], &churn["probes"]] {
        for q in ["p50_ms", "p99_ms", "max_ms", "poll_ms", "query_ms"] {
            assert!(number(&latency[q], q) > 0.0, "{latency}");
        }
    }
    for row in [
        "start to complete view",
        "CPU per 1,000 updates",
        "update to enforced",
    ] {
        assert!(stdout.contains(row), "{stdout}");
    }
}

/// `weft-perf scale` on the Kubernetes store (the API server fixture inside the
/// host's namespace), tiny: the same figures, finite.
#[test]
fn scale_runs_tiny_on_kubernetes_and_reports_every_figure() {
    let (r, _) = scale_tiny(
        "kubernetes",
        &["--starts", "1", "--probes", "3", "--churn", "20"],
    );
    // 20 Nodes and this node's, 4 namespaces, 200 pods, 20 policies, the probe's
    // namespace, policy and source, 3 local pods.
    assert_eq!(r["records"], 21 + 4 + 200 + 20 + 3 + 3);
    assert_eq!(r["quiet"]["count"], 3);
    assert_eq!(r["churn"]["updates"], 20);
    for figure in ["rss_mib", "idle_cpu_percent", "feed_seconds"] {
        number(&r[figure], figure);
    }
    number(&r["churn"]["cpu_per_1000"], "cpu_per_1000");
    assert!(number(&r["quiet"]["p50_ms"], "p50") > 0.0);
}

/// `weft-perf heartbeats`, tiny: both weftds measured, the busy one sending its
/// peers heartbeats into the sink with no send failing.
#[test]
fn heartbeats_runs_tiny_and_reports_both_weftds() {
    require_root();
    let _serial = serial();
    build_daemons();
    let scratch = Scratch::new("harness").unwrap();
    let json = scratch.path().join("heartbeats.json");
    let child = spawn(&[
        "heartbeats",
        "--peers",
        "50",
        "--seconds",
        "1",
        "--rounds",
        "1",
        "--heartbeat-ms",
        "100",
        "--json",
        json.to_str().unwrap(),
    ]);
    let pid = child.pid();
    let out = child.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "weft-perf heartbeats failed:\n{stderr}"
    );
    assert_eq!(leftovers(pid), Vec::<String>::new());
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["peers"], 50);
    for field in ["with_peers_percent", "no_peers_percent"] {
        let v = r[field].as_array().unwrap();
        assert_eq!(v.len(), 1, "{field}");
        number(&v[0], field);
    }
    // 50 peers every 100 ms: about 500 a second went out, none failed.
    assert!(number(&r["beats_per_second"], "beats") > 100.0, "{r}");
    assert_eq!(r["send_errors"], 0, "{r}");
}
