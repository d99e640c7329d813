//! The CNI contract of the built `weft-cni`, executed as a runtime executes it
//! (environment variables and stdin, no arguments): every verb, every version, every
//! error code. weftd is absent, silent or faked here; `weftd.rs` runs the real one.

mod support;

use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use serde_json::{json, Value};
use support::{cni, conf, env_for, FakeDaemon, VERSIONS};
use weft_cni::proto::{
    AttachRequest, Attachment, AttachmentKey, CheckRequest, DetachRequest, ErrorKind, ErrorReply,
    GcRequest, Reply, Request, Response, ResponseEnvelope, Status,
};
use weft_perf::weft::Scratch;

const ID: &str = "3f6940ab5ab43bc522569d15b23f8c1bbde1d7678b080398506924fc01d72755";
const NETNS: &str = "/run/netns/cni-0f1e2d3c";
const NO_SOCKET: &str = "/nonexistent/weft/weft.sock";

fn add_env() -> Vec<(&'static str, &'static str)> {
    env_for("ADD", ID, NETNS, "eth0")
}

fn no_daemon(version: &str) -> String {
    conf(version, NO_SOCKET.as_ref(), json!({}))
}

fn attachment() -> Attachment {
    Attachment {
        interface: "eth0".into(),
        mac: "0a:58:0a:f4:01:07".into(),
        sandbox: NETNS.into(),
        ip: Ipv4Addr::new(10, 244, 1, 7),
        prefix_len: 24,
        gateway: Ipv4Addr::new(10, 244, 1, 1),
        ipv6: None,
        mtu: 1450,
        port: Default::default(),
    }
}

fn status(ready: bool) -> Status {
    Status {
        node: "node-0".into(),
        daemon_version: "0.1.0".into(),
        mode: "vxlan".into(),
        pod_subnet: "10.244.1.0/24".into(),
        pod_subnet_v6: None,
        cluster_cidr: "10.244.0.0/16".into(),
        gateway: Ipv4Addr::new(10, 244, 1, 1),
        underlay: "10.250.0.1:8472".parse().unwrap(),
        workers: 2,
        mtu: 1450,
        pods: 0,
        peers: 0,
        ready,
        // A store that is down does not stop ADD (pods come from the node's own
        // subnet), so STATUS succeeds whenever `ready` says so.
        store: Some(weft_cni::proto::StoreStatus {
            kind: "etcd".into(),
            state: "degraded".into(),
            detail: Some("Unavailable: connection refused".into()),
            degraded_ms: Some(1500),
            objects: Vec::new(),
            from_saved: Some("2025-06-01T12:00:00Z".into()),
        }),
        policy: Some("enforcing".into()),
        stalled_workers: Vec::new(),
        conntrack: None,
    }
}

/// A fake weftd that answers every verb the way a healthy daemon would.
fn healthy(dir: &Scratch, name: &str) -> FakeDaemon {
    FakeDaemon::raw(dir.path(), name, |req| {
        let reply = match req {
            Request::Attach(a) => Reply::Attached(Attachment {
                ip: a.requested_ip.unwrap_or(attachment().ip),
                ..attachment()
            }),
            Request::Detach(_) => Reply::Detached {
                released_ip: None,
                released_ip6: None,
            },
            Request::Check(_) => Reply::Checked(attachment()),
            Request::Gc(_) => Reply::Collected { released: vec![] },
            Request::Status => Reply::Status(Box::new(status(true))),
            other => panic!("the plugin sent {other:?}"),
        };
        serde_json::to_vec(&ResponseEnvelope {
            version: 1,
            response: Response::Ok(reply),
        })
        .unwrap()
    })
}

#[test]
fn version_lists_every_version() {
    let want = json!({"cniVersion": "1.1.0", "supportedVersions": VERSIONS});
    // What podman sends before it uses a network.
    let podman = [
        ("CNI_COMMAND", "VERSION"),
        ("CNI_NETNS", "dummy"),
        ("CNI_IFNAME", "dummy"),
        ("CNI_PATH", "dummy"),
    ];
    assert_eq!(cni(&podman, r#"{"cniVersion":"1.0.0"}"#).ok(), want);
    for v in VERSIONS {
        let out = cni(
            &[("CNI_COMMAND", "VERSION")],
            &format!(r#"{{"cniVersion":"{v}"}}"#),
        );
        assert_eq!(out.ok(), want, "{v}");
    }
    assert_eq!(cni(&[("CNI_COMMAND", "VERSION")], "").ok(), want);
}

#[test]
fn bad_environment_is_4() {
    let stdin = no_daemon("1.0.0");
    for var in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
        let missing: Vec<_> = add_env().into_iter().filter(|(k, _)| *k != var).collect();
        let msg = cni(&missing, &stdin).err(4);
        assert!(msg.contains(var), "{var}: {msg}");
        let empty: Vec<_> = add_env()
            .into_iter()
            .map(|(k, v)| (k, if k == var { "" } else { v }))
            .collect();
        assert!(cni(&empty, &stdin).err(4).contains(var));
    }
    let with = |k: &'static str, v: &'static str| -> Vec<(&str, &str)> {
        let mut e = add_env();
        e.retain(|(x, _)| *x != k);
        e.push((k, v));
        e
    };
    for (k, v) in [
        ("CNI_COMMAND", "add"),
        ("CNI_COMMAND", "INIT"),
        ("CNI_CONTAINERID", "-starts-with-dash"),
        ("CNI_CONTAINERID", "has space"),
        ("CNI_IFNAME", "eth/0"),
        ("CNI_IFNAME", "a-very-long-ifname"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME"),
        ("CNI_ARGS", "IgnoreUnknown=1;IP=10.244.1.300"),
        ("CNI_ARGS", "IP=fd00::7,fd00::8"),
    ] {
        let msg = cni(&with(k, v), &stdin).err(4);
        assert!(msg.contains(k), "{k}={v}: {msg}");
    }
    // DEL and CHECK need their own variables.
    let del = [("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")];
    assert!(cni(&del, &stdin).err(4).contains("CNI_CONTAINERID"));
    let del = [("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", ID)];
    assert!(cni(&del, &stdin).err(4).contains("CNI_IFNAME"));
    let check = env_for("CHECK", ID, "", "eth0");
    assert!(cni(&check, &stdin).err(4).contains("CNI_NETNS"));
}

#[test]
fn undecodable_stdin_is_6() {
    let verbs = [
        env_for("ADD", ID, NETNS, "eth0"),
        env_for("DEL", ID, NETNS, "eth0"),
        env_for("CHECK", ID, NETNS, "eth0"),
        vec![("CNI_COMMAND", "STATUS")],
        vec![("CNI_COMMAND", "GC")],
    ];
    for env in &verbs {
        for garbage in [
            "",
            "garbage",
            "{",
            r#"{"cniVersion": "1.0.0", "name": "#,
            "[1, 2]",
            "\"weft\"",
            "null",
        ] {
            let msg = cni(env, garbage).err(6);
            assert!(msg.contains("stdin"), "{env:?} {garbage:?}: {msg}");
        }
    }
}

#[test]
fn bad_config_is_1_or_7() {
    let env = add_env();
    let with = |extra: Value| conf("1.0.0", NO_SOCKET.as_ref(), extra);
    // Versions weft does not speak: 1, naming the version and the supported ones.
    for v in ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "bogus"] {
        let msg = cni(&env, &with(json!({"cniVersion": v}))).err(1);
        assert!(msg.contains(v) && msg.contains("1.1.0"), "{msg}");
    }
    let msg = cni(&env, r#"{"name": "weft", "type": "weft-cni"}"#).err(1);
    assert!(msg.contains("cniVersion"), "{msg}");
    // A verb the config's version lacks: 1.
    assert!(
        cni(&env_for("CHECK", ID, NETNS, "eth0"), &no_daemon("0.3.1"))
            .err(1)
            .contains("CHECK")
    );
    for verb in ["STATUS", "GC"] {
        for v in ["0.3.0", "0.4.0", "1.0.0"] {
            let msg = cni(&[("CNI_COMMAND", verb)], &no_daemon(v)).err(1);
            assert!(msg.contains(verb) && msg.contains("1.1.0"), "{msg}");
        }
    }
    // Missing, empty, mistyped or wrong keys: 7, naming the key.
    for (stdin, key) in [
        (
            r#"{"cniVersion": "1.0.0", "type": "weft-cni"}"#.to_string(),
            "name",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "weft"}"#.to_string(),
            "type",
        ),
        (with(json!({"name": ""})), "name"),
        (with(json!({"name": 7})), "name"),
        (with(json!({"type": "bridge"})), "type"),
        (with(json!({"type": ["weft-cni"]})), "type"),
        (with(json!({"cniVersion": 1.0})), "cniVersion"),
        (with(json!({"socket": ""})), "socket"),
        (with(json!({"timeout": 0})), "timeout"),
        (with(json!({"timeout": "10s"})), "timeout"),
        (with(json!({"dns": "8.8.8.8"})), "dns"),
        (
            with(json!({"runtimeConfig": {"ips": "10.244.1.9/24"}})),
            "runtimeConfig.ips",
        ),
        (
            with(json!({"runtimeConfig": {"ips": ["fd00::9/64", "fd00::8/64"]}})),
            "runtimeConfig.ips",
        ),
        (
            with(json!({"args": {"cni": {"ips": ["x"]}}})),
            "args.cni.ips",
        ),
        (
            with(
                json!({"runtimeConfig": {"ips": ["10.244.1.9/24"]}, "args": {"cni": {"ips": ["10.244.1.10"]}}}),
            ),
            "10.244.1.10",
        ),
    ] {
        let msg = cni(&env, &stdin).err(7);
        assert!(msg.contains(key), "{key}: {msg}");
    }
    // IP= and runtimeConfig.ips that disagree.
    let mut env_ip = add_env();
    env_ip.push(("CNI_ARGS", "IgnoreUnknown=1;IP=10.244.1.8"));
    let msg = cni(
        &env_ip,
        &with(json!({"runtimeConfig": {"ips": ["10.244.1.9/24"]}})),
    )
    .err(7);
    assert!(
        msg.contains("10.244.1.8") && msg.contains("10.244.1.9"),
        "{msg}"
    );
    // GC without the list of attachments to keep would release every pod: refused.
    let msg = cni(&[("CNI_COMMAND", "GC")], &no_daemon("1.1.0")).err(7);
    assert!(msg.contains("cni.dev/valid-attachments"), "{msg}");
    let gc_bad = conf(
        "1.1.0",
        NO_SOCKET.as_ref(),
        json!({"cni.dev/valid-attachments": [{"containerID": ID}]}),
    );
    assert!(cni(&[("CNI_COMMAND", "GC")], &gc_bad)
        .err(7)
        .contains("ifname"));
}

#[test]
fn daemon_not_running_is_11_and_status_50() {
    for v in VERSIONS {
        let stdin = no_daemon(v);
        let mut verbs = vec!["ADD", "DEL"];
        if v >= "0.4.0" {
            verbs.push("CHECK");
        }
        for verb in verbs {
            let out = cni(&env_for(verb, ID, NETNS, "eth0"), &stdin);
            let msg = out.err(11);
            assert!(msg.contains(NO_SOCKET), "{verb} {v}: {msg}");
            assert_eq!(out.json()["cniVersion"], v);
        }
    }
    // containerd's second DEL, with no netns, is retried later too: the IP must not leak.
    assert!(cni(&env_for("DEL", ID, "", "eth0"), &no_daemon("1.0.0"))
        .err(11)
        .contains(NO_SOCKET));
    let msg = cni(&[("CNI_COMMAND", "STATUS")], &no_daemon("1.1.0")).err(50);
    assert!(msg.contains(NO_SOCKET), "{msg}");
    let gc = conf(
        "1.1.0",
        NO_SOCKET.as_ref(),
        json!({"cni.dev/valid-attachments": []}),
    );
    cni(&[("CNI_COMMAND", "GC")], &gc).err(11);
}

/// A daemon that accepts connections (or lets them queue) and never answers.
#[test]
fn silent_daemon_times_out() {
    let dir = Scratch::new("cnisilent").unwrap();
    // Never accepts: connections wait in the backlog.
    let queued = dir.path().join("queued.sock");
    let _listener = UnixListener::bind(&queued).unwrap();
    // Accepts and reads, never answers.
    let mute = dir.path().join("mute.sock");
    let mute_listener = UnixListener::bind(&mute).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in mute_listener.incoming() {
            held.push(conn);
        }
    });
    let quick = |socket: &std::path::Path| conf("1.1.0", socket, json!({"timeout": 1}));
    let mut runs = Vec::new();
    for socket in [&queued, &mute] {
        for (env, code) in [
            (add_env(), 11),
            (env_for("DEL", ID, "", "eth0"), 11),
            (env_for("CHECK", ID, NETNS, "eth0"), 11),
            (vec![("CNI_COMMAND", "STATUS")], 50),
        ] {
            runs.push((env, quick(socket), code, Duration::from_secs(1)));
        }
    }
    // The default bound (10 s) holds without a `timeout` key.
    runs.push((
        add_env(),
        conf("1.0.0", &mute, json!({})),
        11,
        Duration::from_secs(10),
    ));
    std::thread::scope(|s| {
        for (env, stdin, code, bound) in &runs {
            s.spawn(move || {
                let out = cni(env, stdin);
                let msg = out.err(*code);
                assert!(msg.contains("did not answer"), "{msg}");
                assert!(
                    out.elapsed >= *bound - Duration::from_millis(100)
                        && out.elapsed < *bound + Duration::from_secs(4),
                    "{:?} for a {bound:?} timeout: {out:?}",
                    out.elapsed
                );
            });
        }
    });
}

#[test]
fn add_result_in_every_version() {
    let dir = Scratch::new("cniresult").unwrap();
    let d = healthy(&dir, "w.sock");
    let dns = json!({"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["svc.cluster.local"], "options": ["ndots:5"]});
    for v in VERSIONS {
        let got = cni(&add_env(), &conf(v, &d.socket, json!({"dns": dns}))).ok();
        let mut iface = json!({"name": "eth0", "mac": "0a:58:0a:f4:01:07", "sandbox": NETNS});
        let mut ip = json!({"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 0});
        if v < "1.0.0" {
            ip["version"] = json!("4");
        }
        if v == "1.1.0" {
            iface["mtu"] = json!(1450);
        }
        let want = json!({
            "cniVersion": v,
            "interfaces": [iface],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
            "dns": dns,
        });
        assert_eq!(got, want, "{v}");
    }
    // Without `dns` in the config there is none in the result.
    let got = cni(&add_env(), &conf("1.0.0", &d.socket, json!({}))).ok();
    assert!(got.get("dns").is_none(), "{got}");
}

#[test]
fn unknown_keys_are_ignored() {
    let dir = Scratch::new("cniunknown").unwrap();
    let d = healthy(&dir, "w.sock");
    let extra = json!({
        "capabilities": {"portMappings": true, "ips": true},
        "runtimeConfig": {"portMappings": [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}],
                          "aliases": {"weft": ["web"]}},
        "args": {"K8S_POD_NAME": "web", "cni": {"labels": [{"key": "a", "value": "b"}]}},
        "ipam": {"type": "host-local"},
        "mtu": 9000,
        "futureKey": [1, {"x": null}],
        "dns": {"nameservers": ["10.96.0.10"], "futureDnsKey": true},
    });
    for v in VERSIONS {
        let stdin = conf(v, &d.socket, extra.clone());
        cni(&add_env(), &stdin).ok();
        cni(&env_for("DEL", ID, NETNS, "eth0"), &stdin).ok();
    }
}

#[test]
fn requests_on_the_wire() {
    let dir = Scratch::new("cniwire").unwrap();
    let d = healthy(&dir, "w.sock");
    let attach_as = |requested_ip: Option<[u8; 4]>, pod: Option<(&str, &str)>| {
        Request::Attach(AttachRequest {
            container_id: ID.into(),
            netns: NETNS.into(),
            ifname: "eth0".into(),
            requested_ip: requested_ip.map(Ipv4Addr::from),
            requested_ip6: None,
            pod: pod.map(|(namespace, name)| weft_cni::proto::PodRef {
                namespace: namespace.into(),
                name: name.into(),
            }),
            port: None,
        })
    };
    let attach = |requested_ip: Option<[u8; 4]>| attach_as(requested_ip, None);
    let plain = conf("1.0.0", &d.socket, json!({}));
    cni(&add_env(), &plain).ok();
    assert_eq!(d.last(), attach(None));
    // IP= in CNI_ARGS, as podman --ip sends it.
    let mut env = add_env();
    env.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.244.1.9"));
    assert_eq!(cni(&env, &plain).ok()["ips"][0]["address"], "10.244.1.9/24");
    // The pod's name goes along, for NetworkPolicy (namespace default: none given).
    let web = Some(("default", "web"));
    assert_eq!(d.last(), attach_as(Some([10, 244, 1, 9]), web));
    // runtimeConfig.ips, as podman's network reload sends it; the same IP= agrees.
    let rc = conf(
        "1.0.0",
        &d.socket,
        json!({"runtimeConfig": {"ips": ["10.244.1.9/24"]}}),
    );
    cni(&env, &rc).ok();
    assert_eq!(d.last(), attach_as(Some([10, 244, 1, 9]), web));
    cni(
        &add_env(),
        &conf(
            "1.0.0",
            &d.socket,
            json!({"args": {"cni": {"ips": ["10.244.1.10"]}}}),
        ),
    )
    .ok();
    assert_eq!(d.last(), attach(Some([10, 244, 1, 10])));

    // The port type: the network's podPort, overridden per pod by WEFT_POD_PORT=.
    use weft_cni::proto::PortType;
    let with_port = |port| match attach(None) {
        Request::Attach(a) => Request::Attach(AttachRequest { port, ..a }),
        other => other,
    };
    let xdp = conf("1.0.0", &d.socket, json!({"podPort": "afxdp"}));
    cni(&add_env(), &xdp).ok();
    assert_eq!(d.last(), with_port(Some(PortType::Afxdp)));
    let mut tap_pod = add_env();
    tap_pod.push(("CNI_ARGS", "IgnoreUnknown=1;WEFT_POD_PORT=tap"));
    cni(&tap_pod, &xdp).ok();
    assert_eq!(d.last(), with_port(Some(PortType::Tap)));
    let mut xdp_pod = add_env();
    xdp_pod.push(("CNI_ARGS", "WEFT_POD_PORT=afxdp"));
    cni(&xdp_pod, &plain).ok();
    assert_eq!(d.last(), with_port(Some(PortType::Afxdp)));

    // DEL with a netns, and containerd's second DEL with CNI_NETNS="" and no prevResult.
    assert_eq!(
        cni(&env_for("DEL", ID, NETNS, "eth0"), &plain).ok(),
        Value::Null
    );
    assert_eq!(
        d.last(),
        Request::Detach(DetachRequest {
            container_id: ID.into(),
            ifname: "eth0".into(),
            netns: Some(NETNS.into())
        })
    );
    assert_eq!(
        cni(&env_for("DEL", ID, "", "eth0"), &plain).ok(),
        Value::Null
    );
    assert_eq!(
        d.last(),
        Request::Detach(DetachRequest {
            container_id: ID.into(),
            ifname: "eth0".into(),
            netns: None
        })
    );
    let no_netns = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", ID),
        ("CNI_IFNAME", "eth0"),
    ];
    assert_eq!(cni(&no_netns, &plain).ok(), Value::Null);

    assert_eq!(
        cni(&env_for("CHECK", ID, NETNS, "eth0"), &plain).ok(),
        Value::Null
    );
    assert_eq!(
        d.last(),
        Request::Check(CheckRequest {
            container_id: ID.into(),
            ifname: "eth0".into(),
            netns: NETNS.into()
        })
    );

    let keep =
        json!([{"containerID": ID, "ifname": "eth0"}, {"containerID": "other", "ifname": "net1"}]);
    let want = Request::Gc(GcRequest {
        valid: vec![
            AttachmentKey {
                container_id: ID.into(),
                ifname: "eth0".into(),
            },
            AttachmentKey {
                container_id: "other".into(),
                ifname: "net1".into(),
            },
        ],
    });
    for extra in [
        json!({"cni.dev/valid-attachments": keep}),
        json!({"cni.dev/attachments": keep}),
        json!({"cni.dev/valid-attachments": keep, "cni.dev/attachments": keep}),
    ] {
        let gc = conf("1.1.0", &d.socket, extra);
        assert_eq!(
            cni(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &gc).ok(),
            Value::Null
        );
        assert_eq!(d.last(), want);
    }
    assert_eq!(
        cni(
            &[("CNI_COMMAND", "STATUS")],
            &conf("1.1.0", &d.socket, json!({}))
        )
        .ok(),
        Value::Null
    );
    assert_eq!(d.last(), Request::Status);
}

#[test]
fn check_compares_prev_result() {
    let dir = Scratch::new("cnicheck").unwrap();
    let d = healthy(&dir, "w.sock");
    let env = env_for("CHECK", ID, NETNS, "eth0");
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        let prev = cni(&add_env(), &conf(v, &d.socket, json!({}))).ok();
        cni(&env, &conf(v, &d.socket, json!({"prevResult": prev}))).ok();
        let mut other_ip = prev.clone();
        other_ip["ips"][0]["address"] = json!("10.244.1.99/24");
        let msg = cni(&env, &conf(v, &d.socket, json!({"prevResult": other_ip}))).err(100);
        assert!(
            msg.contains("10.244.1.7") && msg.contains("10.244.1.99"),
            "{msg}"
        );
        let mut other_mac = prev.clone();
        other_mac["interfaces"][0]["mac"] = json!("0a:58:0a:f4:01:63");
        let msg = cni(&env, &conf(v, &d.socket, json!({"prevResult": other_mac}))).err(100);
        assert!(msg.contains("0a:58:0a:f4:01:63"), "{msg}");
        let msg = cni(
            &env,
            &conf(
                v,
                &d.socket,
                json!({"prevResult": {"ips": [{"address": 7}]}}),
            ),
        )
        .err(7);
        assert!(msg.contains("prevResult"), "{msg}");
    }
}

#[test]
fn daemon_errors_map_to_codes() {
    let dir = Scratch::new("cnierrors").unwrap();
    let error = |kind, message: &str| {
        Response::Error(ErrorReply {
            kind,
            message: message.into(),
        })
    };
    for (i, (kind, message, code)) in [
        (ErrorKind::Unavailable, "shutting down", 11),
        (
            ErrorKind::Exhausted,
            "no free address in 10.244.1.0/24",
            102,
        ),
        (
            ErrorKind::InvalidArgument,
            "10.244.9.9 is outside 10.244.1.0/24",
            101,
        ),
        (
            ErrorKind::InvalidArgument,
            "cannot open netns /run/netns/gone",
            101,
        ),
        (ErrorKind::Internal, "disk full", 103),
        (ErrorKind::BadRequest, "bad request", 103),
        (
            ErrorKind::BadVersion,
            "protocol version 1 is not spoken here",
            103,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let d = FakeDaemon::new(dir.path(), &format!("e{i}.sock"), error(kind, message));
        let stdin = conf("1.0.0", &d.socket, json!({}));
        let msg = cni(&add_env(), &stdin).err(code);
        assert!(msg.contains(message), "{kind:?}: {msg}");
        // STATUS reports any failure as "not available".
        let msg = cni(
            &[("CNI_COMMAND", "STATUS")],
            &conf("1.1.0", &d.socket, json!({})),
        )
        .err(50);
        assert!(msg.contains(message), "{msg}");
    }
    let d = FakeDaemon::new(
        dir.path(),
        "check.sock",
        error(
            ErrorKind::CheckFailed,
            "eth0 in /run/netns/x: the interface is missing",
        ),
    );
    let msg = cni(
        &env_for("CHECK", ID, NETNS, "eth0"),
        &conf("1.0.0", &d.socket, json!({})),
    )
    .err(100);
    assert!(msg.contains("the interface is missing"), "{msg}");

    let d = FakeDaemon::new(
        dir.path(),
        "notready.sock",
        Response::Ok(Reply::Status(Box::new(status(false)))),
    );
    let msg = cni(
        &[("CNI_COMMAND", "STATUS")],
        &conf("1.1.0", &d.socket, json!({})),
    )
    .err(50);
    assert!(msg.contains("not ready"), "{msg}");

    // Nonsense from the daemon: 103, never a crash.
    let garbage = FakeDaemon::raw(dir.path(), "garbage.sock", |_| b"\xff not json".to_vec());
    let msg = cni(&add_env(), &conf("1.0.0", &garbage.socket, json!({}))).err(103);
    assert!(msg.contains("undecodable"), "{msg}");
    let future = FakeDaemon::raw(dir.path(), "future.sock", |_| {
        br#"{"version": 9, "result": "ok", "kind": "detached", "released_ip": null}"#.to_vec()
    });
    let msg = cni(&add_env(), &conf("1.0.0", &future.socket, json!({}))).err(103);
    assert!(msg.contains("protocol version 9"), "{msg}");
    let wrong = FakeDaemon::new(
        dir.path(),
        "wrong.sock",
        Response::Ok(Reply::Detached {
            released_ip: None,
            released_ip6: None,
        }),
    );
    cni(&add_env(), &conf("1.0.0", &wrong.socket, json!({}))).err(103);
    // A daemon that answers with another address than the one requested.
    let stale = FakeDaemon::new(
        dir.path(),
        "stale.sock",
        Response::Ok(Reply::Attached(attachment())),
    );
    let mut env = add_env();
    env.push(("CNI_ARGS", "IP=10.244.1.9"));
    let msg = cni(&env, &conf("1.0.0", &stale.socket, json!({}))).err(101);
    assert!(
        msg.contains("10.244.1.9") && msg.contains("10.244.1.7"),
        "{msg}"
    );
    let closed = FakeDaemon::raw(dir.path(), "closed.sock", |_| Vec::new());
    let msg = cni(&add_env(), &conf("1.0.0", &closed.socket, json!({}))).err(11);
    assert!(msg.contains("without a complete answer"), "{msg}");
}

/// The conflist `deploy/` ships: weft first, then portmap; weft's entry, as libcni
/// hands it over (list's cniVersion and name injected, capabilities as runtimeConfig),
/// is accepted.
#[test]
fn shipped_conflist_is_accepted() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cni/10-weft.conflist");
    let text = std::fs::read_to_string(&path).expect("the shipped conflist");
    let list: Value = serde_json::from_str(&text).expect("the conflist is JSON");
    let version = list["cniVersion"].as_str().unwrap();
    assert_eq!(version, "1.0.0", "podman 4.3 accepts at most 1.0.0");
    let plugins = list["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 2);
    assert_eq!(plugins[0]["type"], "weft-cni");
    assert_eq!(plugins[0]["socket"], "/run/weft/weft.sock");
    assert_eq!(plugins[0]["capabilities"]["ips"], true);
    assert_eq!(plugins[1]["type"], "portmap");
    assert_eq!(plugins[1]["capabilities"]["portMappings"], true);
    let supported = cni(
        &[("CNI_COMMAND", "VERSION")],
        &json!({"cniVersion": version}).to_string(),
    )
    .ok();
    assert!(supported["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!(version)));

    let dir = Scratch::new("cniconflist").unwrap();
    let d = healthy(&dir, "w.sock");
    let mut entry = plugins[0].clone();
    entry["cniVersion"] = json!(version);
    entry["name"] = list["name"].clone();
    entry["socket"] = json!(d.socket);
    entry["runtimeConfig"] = json!({"ips": ["10.244.1.7/24"]});
    let result = cni(&add_env(), &entry.to_string()).ok();
    assert_eq!(result["ips"][0]["address"], "10.244.1.7/24");
    assert!(
        matches!(d.last(), Request::Attach(a) if a.requested_ip == Some(Ipv4Addr::new(10, 244, 1, 7)))
    );
}
