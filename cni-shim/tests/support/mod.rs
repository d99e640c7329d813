//! Running the built `weft-cni` as a runtime does (environment + stdin, no arguments),
//! and a fake weftd that answers with canned responses.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_cni::proto::{Request, RequestEnvelope, Response, ResponseEnvelope, PROTOCOL_VERSION};

/// Longest one plugin run may take before the test kills it and fails.
pub const RUN_BOUND: Duration = Duration::from_secs(60);

/// The plugin binary under test.
pub fn plugin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-cni"))
}

/// Every spec version the plugin speaks.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// What one plugin run printed and how it exited.
#[derive(Debug)]
pub struct Out {
    /// Exit status.
    pub status: ExitStatus,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Out {
    /// Stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts exit 0 and returns stdout as JSON (`Null` when empty).
    pub fn ok(&self) -> Value {
        assert!(self.status.success(), "plugin failed: {self:?}");
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts a non-zero exit with a well-formed CNI error of `code`; returns its msg.
    pub fn err(&self, code: u64) -> String {
        assert!(
            !self.status.success(),
            "plugin succeeded, want error {code}: {self:?}"
        );
        let v = self.json();
        assert_eq!(v["code"].as_u64(), Some(code), "wrong code: {self:?}");
        assert!(v["cniVersion"].is_string(), "{self:?}");
        assert!(v["details"].is_string(), "{self:?}");
        let msg = v["msg"].as_str().expect("msg").to_owned();
        assert!(!msg.is_empty(), "{self:?}");
        msg
    }
}

/// Runs the plugin with exactly `vars` in its environment and `stdin` on its stdin,
/// killing it (and failing) after [`RUN_BOUND`].
pub fn cni(vars: &[(&str, &str)], stdin: &str) -> Out {
    let start = Instant::now();
    let mut child = Command::new(plugin())
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weft-cni");
    let mut input = child.stdin.take().unwrap();
    let body = stdin.as_bytes().to_vec();
    // Written on a thread: the plugin may exit before reading it all.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&body);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > RUN_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weft-cni ran longer than {RUN_BOUND:?}: env {vars:?}, stdin {stdin}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = writer.join();
    Out {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        elapsed: start.elapsed(),
    }
}

/// The environment of a per-container verb, as runtimes set it.
pub fn env_for<'a>(
    command: &'a str,
    container: &'a str,
    netns: &'a str,
    ifname: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

/// A network config of `version` for the daemon at `socket`, with `extra` keys merged in.
pub fn conf(version: &str, socket: &Path, extra: Value) -> String {
    let mut v = json!({
        "cniVersion": version,
        "name": "weft",
        "type": "weft-cni",
        "socket": socket,
    });
    if let Value::Object(extra) = extra {
        for (k, x) in extra {
            v[k] = x;
        }
    }
    v.to_string()
}

/// A fake weftd on a Unix socket: records each request and answers with `answer`.
pub struct FakeDaemon {
    /// The socket path.
    pub socket: PathBuf,
    /// Requests received, in order, in their envelopes.
    pub requests: Arc<Mutex<Vec<RequestEnvelope>>>,
}

impl FakeDaemon {
    /// Serves `dir/name` with `answer(request)` as the raw response bytes.
    pub fn raw(
        dir: &Path,
        name: &str,
        answer: impl Fn(&Request) -> Vec<u8> + Send + 'static,
    ) -> FakeDaemon {
        let socket = dir.join(name);
        let listener = UnixListener::bind(&socket).expect("bind fake weftd");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut body = Vec::new();
                if conn.read_to_end(&mut body).is_err() {
                    continue;
                }
                let Ok(env) = serde_json::from_slice::<RequestEnvelope>(&body) else {
                    continue;
                };
                // Recorded, version and all, for the test to check on its own thread.
                let out = answer(&env.request);
                seen.lock().unwrap().push(env);
                let _ = conn.write_all(&out);
            }
        });
        FakeDaemon { socket, requests }
    }

    /// Serves `dir/name` answering every request with `response`.
    pub fn new(dir: &Path, name: &str, response: Response) -> FakeDaemon {
        FakeDaemon::raw(dir, name, move |_| {
            serde_json::to_vec(&ResponseEnvelope {
                version: PROTOCOL_VERSION,
                response: response.clone(),
            })
            .unwrap()
        })
    }

    /// The last request received, which came in the current protocol version.
    pub fn last(&self) -> Request {
        let env = self
            .requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request received");
        assert_eq!(
            env.version, PROTOCOL_VERSION,
            "the plugin's protocol version"
        );
        env.request
    }
}
