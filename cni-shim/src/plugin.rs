//! One plugin invocation: environment and stdin in, one request to weftd, what to
//! print and whether it succeeded out.

use std::net::IpAddr;

use crate::config::{self, NetConf};
use crate::env::{self, Env, Requested};
use crate::error::CniError;
use crate::proto::{
    self, AttachRequest, Attachment, CheckRequest, DetachRequest, GcRequest, Reply, Request,
    Response,
};
use crate::result::{to_json, AddResult, ErrorResult, VersionResult};
use crate::version::{CniVersion, Command};

/// What an invocation prints on stdout, and whether it exits 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The JSON to print (empty when the verb prints nothing).
    pub stdout: String,
    /// Whether the verb succeeded.
    pub success: bool,
}

impl Outcome {
    fn ok(stdout: String) -> Outcome {
        Outcome {
            stdout,
            success: true,
        }
    }

    /// The outcome of a failure, reported in `version`.
    pub fn error(err: &CniError, version: CniVersion) -> Outcome {
        Outcome {
            stdout: to_json(&ErrorResult::new(err, version)),
            success: false,
        }
    }
}

/// Runs one invocation. `var` reads the environment, `stdin` reads the network config,
/// `types` are the accepted values of the config's `type`.
pub fn run(
    var: impl Fn(&str) -> Option<String>,
    stdin: impl FnOnce() -> Result<Vec<u8>, CniError>,
    types: &[&str],
) -> Outcome {
    let mut version = CniVersion::LATEST;
    match invoke(var, stdin, types, &mut version) {
        Ok(stdout) => Outcome::ok(stdout),
        Err(e) => Outcome::error(&e, version),
    }
}

/// Does the work of [`run`]; sets `version` as soon as the config's is known, so that
/// errors are reported in it.
fn invoke(
    var: impl Fn(&str) -> Option<String>,
    stdin: impl FnOnce() -> Result<Vec<u8>, CniError>,
    types: &[&str],
    version: &mut CniVersion,
) -> Result<String, CniError> {
    let env = Env::from_vars(var)?;
    let input = stdin()?;
    if env.command == Command::Version {
        return Ok(to_json(&VersionResult::default()));
    }
    let map = config::parse_object(&input)?;
    *version = config::version_of(&map)?;
    let conf = NetConf::from_map(map, *version, types)?;
    let needs = CniVersion::introducing(env.command);
    if conf.version < needs {
        return Err(CniError::IncompatibleVersion(format!(
            "cniVersion {} has no {}; it needs cniVersion {needs} or later",
            conf.version,
            env.command.as_str()
        )));
    }
    match env.command {
        Command::Add => add(&env, &conf),
        Command::Del => del(&env, &conf),
        Command::Check => check(&env, &conf),
        Command::Status => status(&conf),
        Command::Gc => gc(&conf),
        Command::Version => Ok(to_json(&VersionResult::default())),
    }
}

fn add(env: &Env, conf: &NetConf) -> Result<String, CniError> {
    let from_args = match &env.args {
        Some(args) => env::requested_ip(args)?,
        None => None,
    };
    let from_conf = conf.requested_ip()?;
    if let (Some(a), Some(c)) = (from_args, from_conf) {
        if a != c {
            return Err(CniError::config(
                "runtimeConfig.ips",
                format!("asks for {c}, but CNI_ARGS IP= asks for {a}"),
            ));
        }
    }
    let requested = from_conf.or(from_args).unwrap_or_default();
    let dns = conf.dns()?;
    // The pod's own choice (CNI_ARGS) over its network's (the config).
    let port = match &env.args {
        Some(args) => env::pod_port(args)?,
        None => None,
    };
    let port = match port {
        Some(p) => Some(p),
        None => conf.pod_port()?,
    };
    let request = Request::Attach(AttachRequest {
        container_id: container_id(env),
        netns: env.netns.clone().unwrap_or_default(),
        ifname: ifname(env),
        requested_ip: requested.v4,
        requested_ip6: requested.v6,
        pod: match &env.args {
            Some(args) => env::pod_ref(args)?,
            None => None,
        },
        port,
    });
    match ask(conf, &request)? {
        Reply::Attached(att) => {
            // weftd answers a repeated ADD with the existing attachment, whatever it asks.
            let held = Requested {
                v4: requested.v4.map(|_| att.ip),
                v6: requested.v6.and(att.ipv6.map(|a| a.ip)),
            };
            if held != requested {
                return Err(CniError::Refused(format!(
                    "{requested} was requested, but container {} interface {} already holds {}{}",
                    container_id(env),
                    att.interface,
                    att.ip,
                    att.ipv6.map_or(String::new(), |a| format!(" and {}", a.ip)),
                )));
            }
            Ok(to_json(&AddResult::new(&att, dns, conf.version)))
        }
        other => Err(unexpected(&request, &other)),
    }
}

fn del(env: &Env, conf: &NetConf) -> Result<String, CniError> {
    let request = Request::Detach(DetachRequest {
        container_id: container_id(env),
        ifname: ifname(env),
        netns: env.netns.clone(),
    });
    match ask(conf, &request)? {
        Reply::Detached { .. } => Ok(String::new()),
        other => Err(unexpected(&request, &other)),
    }
}

fn check(env: &Env, conf: &NetConf) -> Result<String, CniError> {
    let prev = conf.prev_result()?;
    let request = Request::Check(CheckRequest {
        container_id: container_id(env),
        ifname: ifname(env),
        netns: env.netns.clone().unwrap_or_default(),
    });
    // For CHECK, a refusal (e.g. the netns is gone) means the attachment is broken.
    let refused_is_failed = |e| match e {
        CniError::Refused(msg) => CniError::CheckFailed(msg),
        e => e,
    };
    let att = match ask(conf, &request).map_err(refused_is_failed)? {
        Reply::Checked(att) => att,
        other => return Err(unexpected(&request, &other)),
    };
    if let Some(prev) = prev {
        compare_prev_result(&prev, &att)?;
    }
    Ok(String::new())
}

/// Fails unless `prev` (when it lists any) has the attachment's addresses and MAC.
pub fn compare_prev_result(prev: &config::PrevResult, att: &Attachment) -> Result<(), CniError> {
    let ours = std::iter::once(IpAddr::V4(att.ip)).chain(att.ipv6.map(|a| IpAddr::V6(a.ip)));
    for ip in ours {
        if !prev.ips.is_empty() && !prev.ips.contains(&ip) {
            return Err(CniError::CheckFailed(format!(
                "{} in {} has address {ip}, but prevResult lists {:?}",
                att.interface, att.sandbox, prev.ips
            )));
        }
    }
    let ours = prev
        .interfaces
        .iter()
        .find(|(name, _, sandbox)| *name == att.interface && sandbox.is_some());
    if let Some((_, Some(mac), _)) = ours {
        if !mac.eq_ignore_ascii_case(&att.mac) {
            return Err(CniError::CheckFailed(format!(
                "{} in {} has MAC {}, but prevResult lists {mac}",
                att.interface, att.sandbox, att.mac
            )));
        }
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<String, CniError> {
    let not_available = |e: CniError| CniError::NotAvailable(e.to_string());
    match ask(conf, &Request::Status).map_err(not_available)? {
        Reply::Status(s) if s.ready => Ok(String::new()),
        Reply::Status(s) => Err(CniError::NotAvailable(format!(
            "weftd at {} (node {}) is not ready to attach pods",
            conf.socket.display(),
            s.node
        ))),
        other => Err(not_available(unexpected(&Request::Status, &other))),
    }
}

fn gc(conf: &NetConf) -> Result<String, CniError> {
    let request = Request::Gc(GcRequest {
        valid: conf.valid_attachments()?,
    });
    match ask(conf, &request)? {
        Reply::Collected { .. } => Ok(String::new()),
        other => Err(unexpected(&request, &other)),
    }
}

fn container_id(env: &Env) -> String {
    env.container_id.clone().unwrap_or_default()
}

fn ifname(env: &Env) -> String {
    env.ifname.clone().unwrap_or_default()
}

fn unexpected(request: &Request, reply: &Reply) -> CniError {
    CniError::Daemon(format!(
        "weftd answered {reply:?} to {request:?}, which makes no sense"
    ))
}

/// Sends one request to weftd and returns its successful reply.
fn ask(conf: &NetConf, request: &Request) -> Result<Reply, CniError> {
    let response = proto::call(&conf.socket, request, conf.timeout)
        .map_err(|e| CniError::from_client(&e, conf.timeout))?;
    match response {
        Response::Ok(reply) => Ok(reply),
        Response::Error(e) => Err(CniError::from_reply(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PrevResult;
    use std::net::Ipv4Addr;

    fn att() -> Attachment {
        Attachment {
            interface: "eth0".into(),
            mac: "0a:58:0a:f4:01:02".into(),
            sandbox: "/run/netns/x".into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            ipv6: None,
            mtu: 1450,
            port: Default::default(),
        }
    }

    #[test]
    fn prev_result_comparison() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let iface = |mac: &str| {
            (
                "eth0".to_string(),
                Some(mac.to_string()),
                Some("/run/netns/x".to_string()),
            )
        };
        let same = PrevResult {
            ips: vec![ip("10.244.1.2")],
            interfaces: vec![iface("0A:58:0A:F4:01:02")],
        };
        compare_prev_result(&same, &att()).unwrap();
        compare_prev_result(&PrevResult::default(), &att()).unwrap();
        let other_ip = PrevResult {
            ips: vec![ip("10.244.1.3")],
            ..same.clone()
        };
        let e = compare_prev_result(&other_ip, &att()).unwrap_err();
        assert!(
            matches!(e, CniError::CheckFailed(_)) && e.to_string().contains("10.244.1.3"),
            "{e}"
        );
        let other_mac = PrevResult {
            interfaces: vec![iface("0a:58:0a:f4:01:09")],
            ..same
        };
        let e = compare_prev_result(&other_mac, &att()).unwrap_err();
        assert!(e.to_string().contains("0a:58:0a:f4:01:09"), "{e}");
    }

    #[test]
    fn version_needs_no_config_and_verbs_need_their_spec_version() {
        let vars = |cmd: &'static str| move |k: &str| (k == "CNI_COMMAND").then(|| cmd.to_string());
        let out = run(
            vars("VERSION"),
            || Ok(b"{\"cniVersion\":\"1.0.0\"}".to_vec()),
            &["weft-cni"],
        );
        assert!(out.success);
        assert!(
            out.stdout.contains("\"supportedVersions\""),
            "{}",
            out.stdout
        );
        let out = run(vars("VERSION"), || Ok(Vec::new()), &["weft-cni"]);
        assert!(out.success, "{}", out.stdout);
        let conf =
            br#"{"cniVersion":"1.0.0","name":"n","type":"weft-cni","socket":"/nonexistent/s"}"#;
        for verb in ["STATUS", "GC"] {
            let out = run(vars(verb), || Ok(conf.to_vec()), &["weft-cni"]);
            assert!(!out.success);
            assert!(out.stdout.contains("\"code\":1,"), "{verb}: {}", out.stdout);
            assert!(out.stdout.contains("1.1.0"), "{}", out.stdout);
        }
    }
}
