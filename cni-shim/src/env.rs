//! The CNI environment variables: which verb, which container, which netns and
//! interface, and the `CNI_ARGS` extras.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::CniError;
use crate::version::Command;

/// Longest container id accepted (what weftd's address pool stores).
pub const MAX_CONTAINER_ID_LEN: usize = 1024;

/// Longest interface name Linux accepts (IFNAMSIZ less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// The parsed CNI environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`, validated (required for ADD, DEL, CHECK).
    pub container_id: Option<String>,
    /// `CNI_NETNS`, `None` when unset or empty (required for ADD and CHECK).
    pub netns: Option<String>,
    /// `CNI_IFNAME`, validated (required for ADD, DEL, CHECK).
    pub ifname: Option<String>,
    /// `CNI_ARGS`, unparsed (see [`parse_cni_args`]).
    pub args: Option<String>,
}

impl Env {
    /// Reads the environment through `var` (e.g. `|k| std::env::var(k).ok()`), checking
    /// that the variables `CNI_COMMAND` needs are present and well formed.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command = match var("CNI_COMMAND") {
            None => return Err(CniError::env("CNI_COMMAND", "not set")),
            Some(c) if c.is_empty() => return Err(CniError::env("CNI_COMMAND", "is empty")),
            Some(c) => Command::parse(&c).ok_or_else(|| {
                CniError::env(
                    "CNI_COMMAND",
                    format!("unknown command {c:?}; weft-cni knows ADD, DEL, CHECK, VERSION, STATUS and GC"),
                )
            })?,
        };
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let needs_netns = matches!(command, Command::Add | Command::Check);
        let non_empty = |k: &str| var(k).filter(|v| !v.is_empty());
        let required = |k: &'static str, needed: bool| -> Result<Option<String>, CniError> {
            match non_empty(k) {
                None if needed => Err(CniError::env(
                    k,
                    format!("not set, and {} needs it", command.as_str()),
                )),
                v => Ok(v),
            }
        };
        let container_id = required("CNI_CONTAINERID", per_container)?;
        let netns = required("CNI_NETNS", needs_netns)?;
        let ifname = required("CNI_IFNAME", per_container)?;
        if per_container {
            if let Some(id) = &container_id {
                validate_container_id(id)?;
            }
            if let Some(name) = &ifname {
                validate_ifname(name)?;
            }
        }
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args: non_empty("CNI_ARGS"),
        })
    }
}

/// Checks a container id against the spec: an alphanumeric first character, then
/// alphanumerics, `_`, `.` or `-`; at most [`MAX_CONTAINER_ID_LEN`] bytes.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let bad = |why: String| Err(CniError::env("CNI_CONTAINERID", format!("{id:?} {why}")));
    if id.len() > MAX_CONTAINER_ID_LEN {
        return bad(format!("is longer than {MAX_CONTAINER_ID_LEN} bytes"));
    }
    let mut chars = id.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return bad("must start with a letter or digit".into());
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return bad(format!(
            "contains {c:?}; only letters, digits, '_', '.' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Checks an interface name as Linux does: 1 to 15 bytes, not `.` or `..`, no `/`,
/// `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.len() > MAX_IFNAME_LEN {
        "is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "is not a valid interface name"
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        "contains '/', ':', whitespace or a control character"
    } else {
        return Ok(());
    };
    Err(CniError::env("CNI_IFNAME", format!("{name:?} {why}")))
}

/// Splits `CNI_ARGS` (`K1=V1;K2=V2`) into pairs. Empty entries are skipped; an entry
/// without `=` is an error.
pub fn parse_cni_args(args: &str) -> Result<Vec<(&str, &str)>, CniError> {
    args.split(';')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry.split_once('=').ok_or_else(|| {
                CniError::env(
                    "CNI_ARGS",
                    format!("entry {entry:?} is not KEY=VALUE (in {args:?})"),
                )
            })
        })
        .collect()
}

/// The Kubernetes pod `CNI_ARGS` names with `K8S_POD_NAMESPACE` and `K8S_POD_NAME`
/// (namespace `default` when only the name is given), or `None` without a name.
pub fn pod_ref(args: &str) -> Result<Option<crate::proto::PodRef>, CniError> {
    let (mut namespace, mut name) = (None, None);
    for (key, value) in parse_cni_args(args)? {
        match key {
            "K8S_POD_NAMESPACE" if !value.is_empty() => namespace = Some(value),
            "K8S_POD_NAME" if !value.is_empty() => name = Some(value),
            _ => {}
        }
    }
    Ok(name.map(|name| crate::proto::PodRef {
        namespace: namespace.unwrap_or("default").to_owned(),
        name: name.to_owned(),
    }))
}

/// The port type `CNI_ARGS` asks for with `WEFT_POD_PORT=` (`tap` or `afxdp`), or
/// `None` when there is no such entry.
pub fn pod_port(args: &str) -> Result<Option<crate::proto::PortType>, CniError> {
    one_cni_arg(args, "WEFT_POD_PORT", "different types", |value| {
        value.parse().map_err(|why| format!("WEFT_POD_PORT: {why}"))
    })
}

/// The addresses `CNI_ARGS` requests with `IP=` (a prefix length, if given, is
/// dropped), or `None` when there is no `IP=` entry.
pub fn requested_ip(args: &str) -> Result<Option<Requested>, CniError> {
    one_cni_arg(args, "IP", "different addresses", |value| {
        parse_requested(value).map_err(|why| format!("IP={value}: {why}"))
    })
}

/// The value of the `key=` entries of `CNI_ARGS`, parsed by `parse` (whose error is
/// the whole message), or `None` when there is none. Entries given more than once
/// must agree; `differ` names what differs when they do not.
fn one_cni_arg<T: Copy + PartialEq>(
    args: &str,
    key: &str,
    differ: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, CniError> {
    let mut found = None;
    for (k, value) in parse_cni_args(args)? {
        if k != key {
            continue;
        }
        let v = parse(value).map_err(|why| CniError::env("CNI_ARGS", why))?;
        if found.is_some_and(|f| f != v) {
            return Err(CniError::env(
                "CNI_ARGS",
                format!("{key}= is given twice with {differ}"),
            ));
        }
        found = Some(v);
    }
    Ok(found)
}

/// Parses a comma-separated list of addresses (each optionally with `/prefix`) that
/// must name exactly one IPv4 address; weft gives one IPv4 address per interface.
pub fn parse_requested(list: &str) -> Result<Requested, String> {
    let mut found = Requested::default();
    for item in list.split(',').map(str::trim) {
        match parse_ip(item)? {
            IpAddr::V4(v4) if found.v4.is_none() => found.v4 = Some(v4),
            IpAddr::V6(v6) if found.v6.is_none() => found.v6 = Some(v6),
            IpAddr::V4(_) => {
                return Err("more than one IPv4 address; weft gives one per interface".into())
            }
            IpAddr::V6(_) => {
                return Err("more than one IPv6 address; weft gives one per interface".into())
            }
        }
    }
    Ok(found)
}

/// The addresses a runtime asks for: one of each family at most.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requested {
    /// The IPv4 address.
    pub v4: Option<Ipv4Addr>,
    /// The IPv6 address.
    pub v6: Option<Ipv6Addr>,
}

impl std::fmt::Display for Requested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.v4, self.v6) {
            (Some(a), Some(b)) => write!(f, "{a} and {b}"),
            (Some(a), None) => write!(f, "{a}"),
            (None, Some(b)) => write!(f, "{b}"),
            (None, None) => f.write_str("no address"),
        }
    }
}

/// Parses `ip` or `ip/prefix` into the address alone.
pub fn parse_ip(item: &str) -> Result<IpAddr, String> {
    let (addr, prefix) = match item.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (item, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{item:?} is not an IP address"))?;
    if let Some(p) = prefix {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match p.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => return Err(format!("{item:?} has a bad prefix length")),
        }
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_vars(|k| map.get(k).cloned())
    }

    fn bad_var(r: Result<Env, CniError>) -> &'static str {
        match r {
            Err(CniError::BadEnv { var, .. }) => var,
            other => panic!("expected a bad variable, got {other:?}"),
        }
    }

    const ADD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "3f6940ab5ab4"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let e = env(&ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id.as_deref(), Some("3f6940ab5ab4"));
        assert_eq!(e.netns.as_deref(), Some("/run/netns/x"));
        assert_eq!(e.ifname.as_deref(), Some("eth0"));
        assert_eq!(e.args, None);
        for (i, var) in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]
            .into_iter()
            .enumerate()
        {
            let mut missing = ADD.to_vec();
            missing.remove(i);
            assert_eq!(bad_var(env(&missing)), var);
            let mut empty = ADD.to_vec();
            empty[i].1 = "";
            assert_eq!(bad_var(env(&empty)), var);
        }
    }

    #[test]
    fn del_tolerates_no_netns_and_version_needs_nothing() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(e.netns, None);
        assert_eq!(
            bad_var(env(&[("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")])),
            "CNI_CONTAINERID"
        );
        for verb in ["VERSION", "STATUS", "GC"] {
            assert!(env(&[("CNI_COMMAND", verb)]).is_ok(), "{verb}");
        }
        // What podman sends before using a network.
        let v = env(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "dummy"),
            ("CNI_PATH", "dummy"),
        ])
        .unwrap();
        assert_eq!(v.command, Command::Version);
        assert_eq!(bad_var(env(&[("CNI_COMMAND", "FROB")])), "CNI_COMMAND");
    }

    #[test]
    fn container_ids_and_ifnames_follow_the_spec() {
        for ok in ["a", "0", "3f6940ab5ab43bc5", "pod_1.a-b"] {
            validate_container_id(ok).unwrap();
        }
        for bad in ["-a", "_a", ".a", "a b", "a/b", "a;b", "ü"] {
            assert!(validate_container_id(bad).is_err(), "{bad}");
        }
        assert!(validate_container_id(&"a".repeat(1025)).is_err());
        for ok in ["eth0", "net1", "a", "x23456789012345"] {
            validate_ifname(ok).unwrap();
        }
        for bad in [".", "..", "eth 0", "a/b", "a:b", "x234567890123456"] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
        let mut bad_id = ADD.to_vec();
        bad_id[1].1 = "-bad";
        assert_eq!(bad_var(env(&bad_id)), "CNI_CONTAINERID");
        let mut bad_if = ADD.to_vec();
        bad_if[3].1 = "eth/0";
        let msg = env(&bad_if).unwrap_err().to_string();
        assert!(msg.contains("CNI_IFNAME") && msg.contains("eth/0"), "{msg}");
    }

    #[test]
    fn cni_args_pod_port() {
        use crate::proto::PortType;
        assert_eq!(pod_port("K8S_POD_NAME=x").unwrap(), None);
        assert_eq!(
            pod_port("IgnoreUnknown=1;WEFT_POD_PORT=afxdp").unwrap(),
            Some(PortType::Afxdp)
        );
        assert_eq!(pod_port("WEFT_POD_PORT=tap").unwrap(), Some(PortType::Tap));
        let e = pod_port("WEFT_POD_PORT=dpdk").unwrap_err().to_string();
        assert!(e.contains("\"dpdk\" is not a port type"), "{e}");
        assert!(pod_port("WEFT_POD_PORT=tap;WEFT_POD_PORT=afxdp").is_err());
    }

    #[test]
    fn cni_args_pairs_and_requested_ip() {
        let args = "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.244.1.9";
        assert_eq!(
            parse_cni_args(args).unwrap(),
            vec![
                ("IgnoreUnknown", "1"),
                ("K8S_POD_NAME", "x"),
                ("IP", "10.244.1.9")
            ]
        );
        assert_eq!(
            requested_ip(args).unwrap().and_then(|r| r.v4),
            Some(Ipv4Addr::new(10, 244, 1, 9))
        );
        // containerd's keys, any order, trailing separator, no IP.
        let cri = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;IgnoreUnknown=1;";
        assert_eq!(requested_ip(cri).unwrap(), None);
        let pod = pod_ref("K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop")
            .unwrap()
            .unwrap();
        assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("shop", "web"));
        let pod = pod_ref("IgnoreUnknown=1;K8S_POD_NAME=c").unwrap().unwrap();
        assert_eq!(pod.namespace, "default");
        assert_eq!(pod_ref("K8S_POD_NAMESPACE=x").unwrap(), None);
        assert_eq!(pod_ref(cri).unwrap().unwrap().name, "web");
        // podman with --ip and --mac-address; a prefix is dropped.
        assert_eq!(
            requested_ip("IgnoreUnknown=1;K8S_POD_NAME=c;IP=10.244.1.20/24;MAC=0a:58:00:00:00:01")
                .unwrap()
                .and_then(|r| r.v4),
            Some(Ipv4Addr::new(10, 244, 1, 20))
        );
        // An empty value is fine for other keys.
        assert_eq!(
            parse_cni_args("A=;B=1").unwrap(),
            vec![("A", ""), ("B", "1")]
        );
        for (bad, needle) in [
            ("IgnoreUnknown=1;oops", "oops"),
            ("IP=10.244.1", "10.244.1"),
            ("IP=fd00::1,fd00::2", "more than one IPv6"),
            ("IP=10.244.1.2,10.244.1.3", "more than one"),
            ("IP=10.244.1.2/40", "prefix"),
            ("IP=10.244.1.2;IP=10.244.1.3", "twice"),
        ] {
            let e = requested_ip(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    CniError::BadEnv {
                        var: "CNI_ARGS",
                        ..
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains(needle), "{bad}: {e}");
        }
        // A dual-stack list asks for one address of each family.
        let both = requested_ip("IP=10.244.1.2/24,fd00::2/64")
            .unwrap()
            .unwrap();
        assert_eq!(both.v4, Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(both.v6, Some("fd00::2".parse().unwrap()));
        assert_eq!(both.to_string(), "10.244.1.2 and fd00::2");
    }
}
