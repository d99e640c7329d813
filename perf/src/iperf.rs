//! iperf3 as a second TCP generator, to cross-check weft-perf's own ([`tcp_streams`]).
//!
//! Both measure the same thing: bytes a receiver read over the time of the transfer.
//! A system whose two figures disagree by much has a generator problem, not a network
//! one, and the report says so. iperf3 runs as separate processes (`ip netns exec`), each
//! in a process group of its own, so a terminal's Ctrl-C reaches weft-perf only, which
//! then stops them by PID.
//!
//! [`tcp_streams`]: crate::traffic::tcp_streams

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::netns::{wait_until, ChildGuard, Netns};
use crate::traffic::Throughput;

/// The program.
pub const PROGRAM: &str = "iperf3";

/// The port the server listens on, in the server pod's own namespace.
pub const PORT: u16 = 5201;

/// How long the server may take to listen, and the client to connect.
const START: Duration = Duration::from_secs(5);

/// Time a client may take beyond its test duration (connect, control exchange, end).
const SLACK: Duration = Duration::from_secs(15);

/// Fails, saying how to get it, unless `iperf3` is installed.
pub fn check_installed() -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(PROGRAM).is_file()));
    ensure!(
        found,
        "{PROGRAM} is not installed: deploy/setup.sh installs it (Debian package iperf3), \
         or leave out the *-iperf3 tests"
    );
    Ok(())
}

/// Runs one iperf3 TCP test of `streams` parallel streams from `client` to `server_ip`
/// in `server`, for `duration` (rounded up to whole seconds, as iperf3 counts), and
/// returns what the receiver got. Ends early, failing with "interrupted", once
/// [`crate::stop`] is requested.
pub fn tcp(
    client: &Netns,
    server: &Netns,
    server_ip: IpAddr,
    streams: usize,
    duration: Duration,
) -> Result<Throughput> {
    ensure!((1..=128).contains(&streams), "iperf3 runs 1 to 128 streams");
    let ip = server_ip.to_string();
    let port = PORT.to_string();
    // `-1`: the server serves one test and exits.
    let _server = spawn(server, &["-s", "-1", "-B", &ip, "-p", &port])?;
    let listening = SocketAddr::new(server_ip, PORT).to_string();
    wait_until(START, "the iperf3 server to listen", || {
        server
            .run(&["ss", "-Hltn", "src", &listening])
            .is_ok_and(|out| !out.trim().is_empty())
    })
    .with_context(|| format!("iperf3 server on {listening} in {}", server.name()))?;
    let secs = duration.as_secs_f64().ceil().max(1.0) as u64;
    let (secs, n, timeout_ms) = (secs.to_string(), streams.to_string(), START.as_millis());
    let mut client_proc = spawn(
        client,
        &[
            "-c",
            &ip,
            "-p",
            &port,
            "-t",
            &secs,
            "-P",
            &n,
            "-i",
            "0",
            "-J",
            "--connect-timeout",
            &timeout_ms.to_string(),
        ],
    )?;
    let mut stdout = client_proc
        .child_mut()
        .stdout
        .take()
        .context("iperf3's stdout")?;
    let bound = duration.max(Duration::from_secs(1)) + SLACK;
    let text = std::thread::scope(|s| -> Result<String> {
        let reader = s.spawn(move || {
            let mut text = String::new();
            stdout.read_to_string(&mut text).map(|_| text)
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = client_proc.wait_timeout(Duration::from_millis(50))? {
                break status;
            }
            crate::stop::check()?;
            if started.elapsed() > bound {
                bail!("iperf3 did not finish within {bound:?}");
            }
        };
        let text = reader
            .join()
            .map_err(|_| anyhow::anyhow!("the iperf3 reader panicked"))?
            .context("reading iperf3's output")?;
        // iperf3 -J reports its own errors in the JSON, also on a failed exit.
        if !status.success() && text.trim().is_empty() {
            bail!("iperf3 client exited with {status} and printed nothing");
        }
        Ok(text)
    })?;
    parse_result(&text).with_context(|| format!("iperf3 from {} to {ip}", client.name()))
}

/// Starts `iperf3 args` in `ns` in a process group of its own, stdout piped.
fn spawn(ns: &Netns, args: &[&str]) -> Result<ChildGuard> {
    let mut cmd = ns.cmd(PROGRAM);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    ChildGuard::spawn(&mut cmd)
}

/// What the receiver got, from an iperf3 client's `-J` output: the bytes and the time
/// of `end.sum_received`.
pub fn parse_result(text: &str) -> Result<Throughput> {
    let v: Value = serde_json::from_str(text).context("iperf3's output is not JSON")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3: {e}");
    }
    let sum = &v["end"]["sum_received"];
    let bytes = sum["bytes"]
        .as_u64()
        .context("iperf3's output has no end.sum_received.bytes")?;
    let seconds = sum["seconds"]
        .as_f64()
        .filter(|s| s.is_finite() && *s > 0.0)
        .context("iperf3's output has no positive end.sum_received.seconds")?;
    Ok(Throughput {
        bytes,
        elapsed: Duration::from_secs_f64(seconds),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_receivers_sum() {
        let text = r#"{"start": {}, "intervals": [],
            "end": {"sum_sent": {"bytes": 2600000000, "seconds": 2.0},
                    "sum_received": {"bytes": 2500000000, "seconds": 2.0,
                                     "bits_per_second": 1e10}}}"#;
        let t = parse_result(text).unwrap();
        assert_eq!(t.bytes, 2_500_000_000);
        assert!((t.gbit_per_s() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn reports_iperf3s_error_and_bad_output() {
        let e =
            parse_result(r#"{"start": {}, "error": "unable to connect to server"}"#).unwrap_err();
        assert!(e.to_string().contains("unable to connect"), "{e}");
        let e = parse_result("not json").unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
        let e =
            parse_result(r#"{"end": {"sum_received": {"bytes": 5, "seconds": 0}}}"#).unwrap_err();
        assert!(e.to_string().contains("seconds"), "{e}");
        let e = parse_result(r#"{"end": {}}"#).unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");
    }
}
