//! The control socket and the network namespaces it is given, attacked: a peer that
//! is not root, a flood of its idle connections, netns paths that are no pod's
//! namespace, a foreign `eth0` in a pod's namespace, and a netns path re-bound to
//! another namespace between ADD and DEL. Each attack has its positive control: what
//! root, or a real pod namespace, may still do.
//!
//! These tests need root (they create namespaces and change a thread's uid); they
//! fail, never skip, without it. Every namespace is the test's own and goes on drop.

use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weft_perf::cni::{Network, Verb};
use weft_perf::netns::{run_cmd, wait_until, Netns};
use weft_perf::weft::{Cluster, WeftNode, WeftOptions};
use weft_proto::{
    self as proto, AttachRequest, AttachmentKey, CheckRequest, ClientError, DetachRequest,
    ErrorKind, GcRequest, PortType, Reply, Request, Response,
};

/// The uid and gid of `nobody` on Debian-like hosts; no entry in /etc/passwd is
/// needed for a thread to take them.
const NOBODY: u32 = 65534;
/// A gid that is not the socket's group.
const OTHER_GID: u32 = 65533;
/// How long one request of the tests may take.
const CALL: Duration = Duration::from_secs(10);

fn options(extra: &[&str]) -> WeftOptions {
    WeftOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_weftd")),
        mode: "vxlan".into(),
        workers: 2,
        extra: extra.iter().map(|s| s.to_string()).collect(),
    }
}

/// A cluster of one node whose socket's group is `nobody`'s, in a scratch directory
/// `nobody` may reach the socket through.
fn node_with_group(tag: &str) -> Cluster {
    let c = Cluster::new(
        tag,
        1,
        0,
        &options(&["--socket-group", &NOBODY.to_string()]),
    )
    .expect("the node starts");
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(c.scratch.path(), open).expect("the scratch directory");
    c
}

/// Runs `f` on a thread of its own whose uid is `uid` and gid (and only group) is
/// `gid`; the process's other threads stay root.
fn as_user<T: Send>(uid: u32, gid: u32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: raw system calls change the credentials of this thread only
            // (glibc's wrappers would change every thread's); it ends with `f`.
            unsafe {
                let none = std::ptr::null::<libc::gid_t>();
                assert_eq!(libc::syscall(libc::SYS_setgroups, 0, none), 0);
                assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
                assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
            }
            f()
        })
        .join()
        .expect("the thread ran")
    })
}

fn attach_in(netns: &Path, id: &str, ifname: &str) -> Request {
    attach_with_ip(netns, id, ifname, None)
}

fn attach_with_ip(netns: &Path, id: &str, ifname: &str, ip: Option<Ipv4Addr>) -> Request {
    Request::Attach(AttachRequest {
        container_id: id.into(),
        netns: netns.display().to_string(),
        ifname: ifname.into(),
        requested_ip: ip,
        requested_ip6: None,
        pod: None,
        port: None,
    })
}

fn refusal(r: Response) -> (ErrorKind, String) {
    match r {
        Response::Error(e) => (e.kind, e.message),
        ok => panic!("not refused: {ok:?}"),
    }
}

/// A peer that is not root, in the socket's group, may ask for status and CHECK,
/// and is refused ADD, DEL and GC; one outside the group cannot connect. Root still
/// attaches and collects. The socket is the group's, 0660.
#[test]
fn a_peer_that_is_not_root_may_query_and_change_nothing() {
    let c = node_with_group("sockuid");
    let node = &c.nodes[0];
    let meta = std::fs::metadata(&node.socket).expect("the socket");
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, NOBODY));
    let pod = c.underlay.pod(0, "u").expect("a pod");
    let socket = node.socket.clone();
    let attach = attach_in(&pod.ns.path(), "uid-1", "eth0");
    let detach = Request::Detach(DetachRequest {
        container_id: "uid-1".into(),
        ifname: "eth0".into(),
        netns: Some(pod.ns.path().display().to_string()),
    });
    let gc = Request::Gc(GcRequest { valid: vec![] });
    let check = Request::Check(CheckRequest {
        container_id: "uid-1".into(),
        ifname: "eth0".into(),
        netns: pod.ns.path().display().to_string(),
    });
    let asked = as_user(NOBODY, NOBODY, || {
        [&Request::Status, &check, &attach, &detach, &gc].map(|r| proto::call(&socket, r, CALL))
    });
    let [status, check, attach_, detach, gc_] = asked;
    assert!(
        matches!(status, Ok(Response::Ok(Reply::Status(_)))),
        "{status:?}"
    );
    let check = refusal(check.expect("an answer"));
    assert_eq!(
        check.0,
        ErrorKind::CheckFailed,
        "CHECK is asked: {}",
        check.1
    );
    for refused in [attach_, detach, gc_] {
        let (kind, message) = refusal(refused.expect("an answer"));
        assert_eq!(kind, ErrorKind::PermissionDenied, "{message}");
        assert!(message.contains(&format!("uid {NOBODY}")), "{message}");
    }
    assert!(
        pod.ns.ip(&["link", "show", "eth0"]).is_err(),
        "nothing made"
    );
    let outsider = as_user(NOBODY, OTHER_GID, || {
        proto::call(&socket, &Request::Status, CALL)
    });
    match outsider {
        Err(ClientError::Connect { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied)
        }
        other => panic!("a peer outside the group connected: {other:?}"),
    }
    // Root still changes state.
    let att = node.attach(&pod, "uid-1").expect("root attaches");
    match node.ok(&gc).expect("root collects") {
        Reply::Collected { released } => assert_eq!(
            released,
            [AttachmentKey {
                container_id: "uid-1".into(),
                ifname: "eth0".into()
            }]
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(node.status().expect("status").pods, 0, "{att:?} collected");
}

/// Connections of peers that are not root have a bound of their own: once it is
/// full of idle connections, the next such peer is answered `busy` at once, while
/// root's status, ADD and DEL go on. When the idle ones go, the peer is served.
#[test]
fn idle_connections_of_other_peers_never_hold_up_root() {
    let c = node_with_group("sockbusy");
    let node = &c.nodes[0];
    let socket = node.socket.clone();
    let status_as_nobody = || {
        as_user(NOBODY, NOBODY, || {
            proto::call(&socket, &Request::Status, CALL)
        })
    };
    let idle: Vec<std::os::unix::net::UnixStream> = as_user(NOBODY, NOBODY, || {
        (0..weft_switch::control::server::OTHER_CONNECTIONS)
            .map(|_| std::os::unix::net::UnixStream::connect(&socket).expect("a connection"))
            .collect()
    });
    // The daemon takes them in as it accepts them; each holds its place until its
    // request is complete or 10 s have passed.
    let mut busy = None;
    wait_until(Duration::from_secs(5), "a busy answer", || {
        match status_as_nobody() {
            Ok(Response::Error(e)) if e.kind == ErrorKind::Busy => busy = Some(e.message),
            _ => {}
        }
        busy.is_some()
    })
    .expect("the bound of other peers' connections");
    assert!(busy.unwrap().contains("connections"));
    assert!(node.status().expect("root's status").ready);
    let pod = c.underlay.pod(0, "b").expect("a pod");
    let att = node.attach(&pod, "busy-1").expect("root's ADD");
    assert_eq!(
        node.detach("busy-1", Some(&pod.ns)).expect("root's DEL"),
        Some(att.ip)
    );
    drop(idle);
    wait_until(Duration::from_secs(5), "nobody's status", || {
        matches!(status_as_nobody(), Ok(Response::Ok(Reply::Status(_))))
    })
    .expect("served once the idle connections went");
}

/// A network namespace the test names, that can be deleted and made again under
/// the same name; deleted on drop.
struct NamedNs(String);

impl NamedNs {
    fn add(name: &str) -> NamedNs {
        run_cmd(Command::new("ip").args(["netns", "add", name])).expect("a namespace");
        NamedNs(name.to_owned())
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run_cmd(Command::new("ip").arg("-n").arg(&self.0).args(args))
    }
}

impl Drop for NamedNs {
    fn drop(&mut self) {
        let _ = run_cmd(Command::new("ip").args(["netns", "del", &self.0]));
    }
}

/// `eth0` of the namespace: its details (`ip -d link show`), or `None` if absent.
fn eth0(ns: &Netns) -> Option<String> {
    ns.ip(&["-d", "link", "show", "eth0"]).ok()
}

/// DEL deletes only an interface weft made: of its port's kind and with its
/// alias. A foreign `eth0` (a veth, one with another container's alias, a TAP with
/// no alias) stays; weft's TAP and AF_XDP veth go, and so does a stray one a failed
/// ADD left (weft's alias, no record).
#[test]
fn del_deletes_only_interfaces_weft_made() {
    let c = Cluster::new("sockdel", 1, 0, &options(&[])).expect("the node starts");
    let node = &c.nodes[0];
    let foreign = c.underlay.pod(0, "f").expect("a pod");
    let peer = [
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ];
    foreign.ns.ip(&peer).expect("a foreign veth");
    assert_eq!(
        node.detach("foreign-1", Some(&foreign.ns)).expect("DEL"),
        None
    );
    assert!(eth0(&foreign.ns).is_some(), "the foreign veth stays");
    let alias = ["link", "set", "eth0", "alias", "weft:someone-else"];
    foreign.ns.ip(&alias).expect("an alias");
    node.detach("foreign-1", Some(&foreign.ns)).expect("DEL");
    assert!(
        eth0(&foreign.ns).is_some(),
        "another container's eth0 stays"
    );
    let tap = c.underlay.pod(0, "t").expect("a pod");
    let add_tap = ["tuntap", "add", "dev", "eth0", "mode", "tap"];
    tap.ns.ip(&add_tap).expect("a TAP");
    node.detach("tap-1", Some(&tap.ns)).expect("DEL");
    assert!(eth0(&tap.ns).is_some(), "a TAP without weft's alias stays");

    // What weft made goes.
    for (name, port, kind) in [("o", PortType::Tap, "tun"), ("x", PortType::Afxdp, "veth")] {
        let pod = c.underlay.pod(0, name).expect("a pod");
        let id = format!("own-{name}");
        let att = node.attach_with(&pod, &id, None, Some(port)).expect("ADD");
        let shown = eth0(&pod.ns).expect("eth0");
        assert!(shown.contains(&format!("alias weft:{id}")), "{shown}");
        assert!(shown.contains(&format!("\n    {kind} ")), "{shown}");
        assert_eq!(node.detach(&id, Some(&pod.ns)).expect("DEL"), Some(att.ip));
        wait_until(Duration::from_secs(5), "eth0 to go", || {
            eth0(&pod.ns).is_none()
        })
        .expect("weft's eth0 deleted");
    }
    // A stray, as an ADD that died before its record would leave it.
    let stray = c.underlay.pod(0, "s").expect("a pod");
    stray.ns.ip(&add_tap).expect("a TAP");
    let alias = ["link", "set", "eth0", "alias", "weft:stray-1"];
    stray.ns.ip(&alias).expect("weft's alias");
    assert_eq!(node.detach("stray-1", Some(&stray.ns)).expect("DEL"), None);
    wait_until(Duration::from_secs(5), "the stray to go", || {
        eth0(&stray.ns).is_none()
    })
    .expect("the stray deleted");
}

/// weft-cni, as a runtime runs it, with weftd's socket.
fn plugin(node: &WeftNode) -> Network {
    let weftd = Path::new(env!("CARGO_BIN_EXE_weftd"));
    Network {
        plugin_dir: weftd.parent().expect("a directory").to_path_buf(),
        config: serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "weft",
            "type": "weft-cni",
            "socket": node.socket,
        }),
    }
}

/// A netns path that is no pod's namespace is refused at once, saying what it is:
/// a FIFO (by weft-cni's ADD, while `weft status` is answered), a regular file, a
/// device, a symbolic link to a pod's namespace (and `/proc/PID/ns/net`, which is
/// one), and weftd's own namespace. Nothing is left allocated, and a real pod
/// namespace is still attached. (The host's namespace, pid 1's, is refused the same
/// way; its refusal is a unit test of `netns`, as this sandbox denies even root a
/// bind mount of pid 1's namespace.)
#[test]
fn a_netns_path_that_is_no_pods_namespace_is_refused_at_once() {
    let c = Cluster::new("socknsp", 1, 0, &options(&[])).expect("the node starts");
    let node = &c.nodes[0];
    let scratch = c.scratch.path();
    let fifo = scratch.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("a FIFO");
    let host = &c.underlay.host(0).ns;
    let add = std::thread::scope(|s| {
        let add = s.spawn(|| plugin(node).call(Verb::Add, host, "fifo-1", &fifo, "eth0"));
        // Answered while the ADD runs, or after: never held up by it.
        let status = proto::call(&node.socket, &Request::Status, CALL);
        assert!(
            matches!(status, Ok(Response::Ok(Reply::Status(_)))),
            "{status:?}"
        );
        add.join().expect("the plugin ran")
    });
    let err = format!("{:#}", add.expect_err("an ADD into a FIFO"));
    assert!(err.contains("\"code\":101"), "{err}");
    assert!(
        err.contains("is not a network namespace: it is a FIFO"),
        "{err}"
    );

    let file = scratch.join("file");
    std::fs::write(&file, b"").expect("a regular file");
    let pod = c.underlay.pod(0, "n").expect("a pod");
    let link = scratch.join("link");
    std::os::unix::fs::symlink(pod.ns.path(), &link).expect("a symbolic link");
    let weftd_ns = PathBuf::from(format!("/proc/{}/ns/net", node.pid()));
    let own = host.path();
    let cases: [(&Path, &str); 6] = [
        (&file, "is not a network namespace: it is a regular file"),
        (
            Path::new("/dev/null"),
            "is not a network namespace: it is a device",
        ),
        (&link, "is a symbolic link"),
        (&weftd_ns, "is a symbolic link"),
        (&own, "is weftd's own network namespace"),
        (Path::new("/run/netns/wsock-none"), "No such file"),
    ];
    for (path, says) in cases {
        // "lo" is in every namespace: were a check missing, the ADD would still
        // make nothing.
        let answer = node
            .call(&attach_in(path, "bad-1", "lo"))
            .expect("an answer");
        let (kind, message) = refusal(answer);
        assert_eq!(
            kind,
            ErrorKind::InvalidArgument,
            "{}: {message}",
            path.display()
        );
        assert!(message.contains(says), "{}: {message}", path.display());
    }
    let status = node.status().expect("status");
    assert_eq!(status.pods, 0);
    node.attach(&pod, "real-1")
        .expect("a pod's own namespace is attached");
}

/// A netns path deleted after ADD and made again, under the same name, for another
/// namespace, whose `eth0` even bears weft's alias: DEL deletes nothing there, and
/// still releases the address, which a new pod then gets.
#[test]
fn del_in_a_netns_path_bound_to_another_namespace_touches_nothing() {
    let c = Cluster::new("sockrebind", 1, 0, &options(&[])).expect("the node starts");
    let node = &c.nodes[0];
    let name = format!("wsockrb-{}", std::process::id());
    let first = NamedNs::add(&name);
    let att = match node
        .ok(&attach_in(&first.path(), "rb-1", "eth0"))
        .expect("ADD")
    {
        Reply::Attached(a) => a,
        other => panic!("{other:?}"),
    };
    drop(first);
    let again = NamedNs::add(&name);
    again
        .ip(&["tuntap", "add", "dev", "eth0", "mode", "tap"])
        .expect("a TAP");
    again
        .ip(&["link", "set", "eth0", "alias", "weft:rb-1"])
        .expect("weft's alias");
    let del = Request::Detach(DetachRequest {
        container_id: "rb-1".into(),
        ifname: "eth0".into(),
        netns: Some(again.path().display().to_string()),
    });
    match node.ok(&del).expect("DEL") {
        Reply::Detached { released_ip, .. } => assert_eq!(released_ip, Some(att.ip)),
        other => panic!("{other:?}"),
    }
    assert!(
        again.ip(&["link", "show", "eth0"]).is_ok(),
        "the new eth0 stays"
    );
    assert!(node.log_text().contains("now names the network namespace"));
    // The address is free again.
    let pod = c.underlay.pod(0, "r").expect("a pod");
    let reattach = attach_with_ip(&pod.ns.path(), "rb-2", "eth0", Some(att.ip));
    match node.ok(&reattach).expect("ADD with the released address") {
        Reply::Attached(a) => assert_eq!(a.ip, att.ip),
        other => panic!("{other:?}"),
    }
}

/// A netns path re-bound to another namespace while weftd was down, whose `eth0`
/// is even a TAP with weft's alias: the restarted weftd reopens nothing there and
/// releases the pod's address, as its namespace is gone; a pod whose namespace is
/// still there is restored.
#[test]
fn a_restart_releases_a_pod_whose_netns_path_names_another_namespace() {
    let mut c = Cluster::new("sockrestart", 1, 0, &options(&[])).expect("the node starts");
    let name = format!("wsockrs-{}", std::process::id());
    let first = NamedNs::add(&name);
    let att = match c.nodes[0].ok(&attach_in(&first.path(), "rs-1", "eth0")) {
        Ok(Reply::Attached(a)) => a,
        other => panic!("{other:?}"),
    };
    let stays = c.underlay.pod(0, "k").expect("a pod");
    c.nodes[0].attach(&stays, "rs-kept").expect("ADD");
    c.nodes.remove(0).stop().expect("weftd stops");
    drop(first);
    let again = NamedNs::add(&name);
    let tap = ["tuntap", "add", "dev", "eth0", "mode", "tap"];
    again.ip(&tap).expect("a TAP");
    let alias = ["link", "set", "eth0", "alias", "weft:rs-1"];
    again.ip(&alias).expect("weft's alias");
    let peers = c.scratch.path().join("peers.toml");
    let host = c.underlay.host(0);
    let node =
        WeftNode::start(host, &peers, c.scratch.path(), &options(&[])).expect("weftd restarts");
    assert_eq!(
        node.status().expect("status").pods,
        1,
        "{}",
        node.log_text()
    );
    assert!(node.log_text().contains("now names the network namespace"));
    let shown = again
        .ip(&["link", "show", "eth0"])
        .expect("the new eth0 stays");
    assert!(!shown.contains("LOWER_UP"), "weftd opened it: {shown}");
    let pod = c.underlay.pod(0, "n").expect("a pod");
    let reattach = attach_with_ip(&pod.ns.path(), "rs-2", "eth0", Some(att.ip));
    match node.ok(&reattach).expect("ADD with the released address") {
        Reply::Attached(a) => assert_eq!(a.ip, att.ip),
        other => panic!("{other:?}"),
    }
    c.nodes.push(node);
}
