//! The network config on stdin: the keys weft reads, each checked with an error
//! that names it. Keys weft does not know are ignored, as the spec requires.
//!
//! | key | use |
//! | --- | --- |
//! | `cniVersion` | one of [`CniVersion::ALL`]; the result is rendered in it |
//! | `name`, `type` | required; `type` is `weft-cni` (or the name the binary runs as) |
//! | `socket` | weftd's control socket, default [`DEFAULT_SOCKET`] |
//! | `timeout` | seconds one request to weftd may take, default 10, at most 300 |
//! | `dns` | copied into the ADD result |
//! | `runtimeConfig.ips`, `args.cni.ips` | a requested address (the prefix is dropped) |
//! | `prevResult` | CHECK compares its address and MAC with weftd's |
//! | `cni.dev/valid-attachments` (`cni.dev/attachments`) | GC keeps these |

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::env::{parse_ip, parse_requested, Requested};
use crate::error::CniError;
use crate::proto::{AttachmentKey, DEFAULT_SOCKET};
use crate::version::CniVersion;

/// How long one request to weftd may take unless the config says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `timeout` a config may set.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// The plugin type weft's conflists name.
pub const PLUGIN_TYPE: &str = "weft-cni";

/// The network config keys weft reads.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// `cniVersion`.
    pub version: CniVersion,
    /// `name`: the network's name.
    pub name: String,
    /// `type`: the plugin's name.
    pub plugin_type: String,
    /// `socket`: weftd's control socket.
    pub socket: PathBuf,
    /// `timeout`: the bound on one request to weftd.
    pub timeout: Duration,
    raw: Map<String, Value>,
}

/// DNS settings, as the config's `dns` and the result's `dns` carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name server addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// What CHECK needs from `prevResult`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrevResult {
    /// The addresses of `ips[]`, without prefix.
    pub ips: Vec<IpAddr>,
    /// `(name, mac, sandbox)` of each of `interfaces[]`.
    pub interfaces: Vec<(String, Option<String>, Option<String>)>,
}

/// Parses stdin as a JSON object.
pub fn parse_object(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::Decode("stdin is empty".into()));
    }
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(CniError::Decode(format!(
            "got a JSON {}",
            json_type(&other)
        ))),
        Err(e) => Err(CniError::Decode(e.to_string())),
    }
}

/// The config's `cniVersion`, if weft speaks it.
pub fn version_of(map: &Map<String, Value>) -> Result<CniVersion, CniError> {
    match map.get("cniVersion") {
        None | Some(Value::Null) => Err(CniError::IncompatibleVersion(format!(
            "the network config has no cniVersion; weft-cni supports {}",
            CniVersion::all_list()
        ))),
        Some(Value::String(s)) => CniVersion::parse(s).ok_or_else(|| {
            CniError::IncompatibleVersion(format!(
                "cniVersion {s:?} is not supported; weft-cni supports {}",
                CniVersion::all_list()
            ))
        }),
        Some(other) => Err(CniError::config(
            "cniVersion",
            format!("must be a string, got a JSON {}", json_type(other)),
        )),
    }
}

impl NetConf {
    /// Reads the common keys of `map`, whose `cniVersion` is `version`. `types` are
    /// the accepted values of `type`.
    pub fn from_map(
        map: Map<String, Value>,
        version: CniVersion,
        types: &[&str],
    ) -> Result<NetConf, CniError> {
        let name = required_str(&map, "name")?;
        if !valid_network_name(&name) {
            return Err(CniError::config(
                "name",
                format!("{name:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"),
            ));
        }
        let plugin_type = required_str(&map, "type")?;
        if !types.contains(&plugin_type.as_str()) {
            return Err(CniError::config(
                "type",
                format!("is {plugin_type:?}, but this plugin is {:?}", types[0]),
            ));
        }
        let socket = match map.get("socket") {
            None | Some(Value::Null) => PathBuf::from(DEFAULT_SOCKET),
            Some(Value::String(s)) if !s.is_empty() => PathBuf::from(s),
            Some(other) => {
                return Err(CniError::config(
                    "socket",
                    format!("must be a non-empty path, got {other}"),
                ))
            }
        };
        let timeout = match map.get("timeout") {
            None | Some(Value::Null) => DEFAULT_TIMEOUT,
            Some(v) => match v.as_f64() {
                Some(s) if s > 0.0 && s <= MAX_TIMEOUT.as_secs_f64() => Duration::from_secs_f64(s),
                _ => {
                    return Err(CniError::config(
                        "timeout",
                        format!(
                            "must be a number of seconds above 0 and at most {}, got {v}",
                            MAX_TIMEOUT.as_secs()
                        ),
                    ))
                }
            },
        };
        Ok(NetConf {
            version,
            name,
            plugin_type,
            socket,
            timeout,
            raw: map,
        })
    }

    /// Parses a whole config from stdin (the steps [`parse_object`], [`version_of`],
    /// [`NetConf::from_map`]).
    pub fn parse(stdin: &[u8], types: &[&str]) -> Result<NetConf, CniError> {
        let map = parse_object(stdin)?;
        let version = version_of(&map)?;
        NetConf::from_map(map, version, types)
    }

    /// `dns`, to copy into the ADD result.
    pub fn dns(&self) -> Result<Option<Dns>, CniError> {
        match self.raw.get("dns") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value::<Dns>(v.clone())
                .map(|d| Some(d).filter(|d| !d.is_empty()))
                .map_err(|e| CniError::config("dns", e.to_string())),
        }
    }

    /// `podPort`: the port type pods of this network ask for (`"tap"` or `"afxdp"`),
    /// or `None` to take weftd's `pod-port`.
    pub fn pod_port(&self) -> Result<Option<crate::proto::PortType>, CniError> {
        match self.raw.get("podPort") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|why: String| CniError::config("podPort", why)),
            Some(other) => Err(CniError::config(
                "podPort",
                format!("must be \"tap\" or \"afxdp\", got {other}"),
            )),
        }
    }

    /// The addresses requested by `runtimeConfig.ips` or `args.cni.ips` (they must
    /// agree): one of each family at most.
    pub fn requested_ip(&self) -> Result<Option<Requested>, CniError> {
        let mut found: Option<(Requested, &str)> = None;
        for (outer, inner, key) in [
            ("runtimeConfig", None, "runtimeConfig.ips"),
            ("args", Some("cni"), "args.cni.ips"),
        ] {
            let mut v = self.raw.get(outer);
            if let Some(inner) = inner {
                v = v.and_then(|v| v.get(inner));
            }
            let Some(ips) = v.and_then(|v| v.get("ips")) else {
                continue;
            };
            let list = match ips {
                Value::Null => continue,
                Value::Array(items) if items.is_empty() => continue,
                Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<Vec<String>>>(),
                _ => None,
            };
            let list = list.ok_or_else(|| {
                CniError::config(key, format!("must be a list of address strings, got {ips}"))
            })?;
            let ip = parse_requested(&list.join(","))
                .map_err(|why| CniError::config(key, format!("{list:?}: {why}")))?;
            if let Some((other, other_key)) = found {
                if other != ip {
                    return Err(CniError::config(
                        key,
                        format!("asks for {ip}, but {other_key} asks for {other}"),
                    ));
                }
            }
            found = Some((ip, key));
        }
        Ok(found.map(|(ip, _)| ip))
    }

    /// `prevResult`, if given.
    pub fn prev_result(&self) -> Result<Option<PrevResult>, CniError> {
        let Some(prev) = self.raw.get("prevResult").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let bad = |what: String| CniError::config("prevResult", what);
        let prev = prev
            .as_object()
            .ok_or_else(|| bad(format!("must be an object, got {prev}")))?;
        let mut out = PrevResult::default();
        for ip in list(prev, "ips").map_err(bad)? {
            let addr = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("ips entry {ip} has no address")))?;
            out.ips
                .push(parse_ip(addr).map_err(|e| bad(format!("ips: {e}")))?);
        }
        for iface in list(prev, "interfaces").map_err(bad)? {
            let text = |k: &str| iface.get(k).and_then(Value::as_str).map(str::to_owned);
            let name =
                text("name").ok_or_else(|| bad(format!("interfaces entry {iface} has no name")))?;
            out.interfaces.push((name, text("mac"), text("sandbox")));
        }
        Ok(Some(out))
    }

    /// GC's list of attachments to keep: `cni.dev/valid-attachments`, or the older
    /// `cni.dev/attachments`. Missing both is an error: GC without a list would release
    /// every pod on the node.
    pub fn valid_attachments(&self) -> Result<Vec<AttachmentKey>, CniError> {
        const KEYS: [&str; 2] = ["cni.dev/valid-attachments", "cni.dev/attachments"];
        let Some((key, value)) = KEYS
            .iter()
            .find_map(|k| self.raw.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))
        else {
            return Err(CniError::config(
                KEYS[0],
                "GC needs the list of attachments to keep (cni.dev/valid-attachments)",
            ));
        };
        let items = value
            .as_array()
            .ok_or_else(|| CniError::config(key, format!("must be a list, got {value}")))?;
        items
            .iter()
            .map(|item| {
                let field = |k: &str| {
                    item.get(k)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                };
                match (field("containerID"), field("ifname")) {
                    (Some(id), Some(ifname)) => Ok(AttachmentKey {
                        container_id: id.to_owned(),
                        ifname: ifname.to_owned(),
                    }),
                    _ => Err(CniError::config(
                        key,
                        format!("entry {item} needs string containerID and ifname"),
                    )),
                }
            })
            .collect()
    }
}

fn list<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(format!("{key} must be a list, got {other}")),
    }
}

fn required_str(map: &Map<String, Value>, key: &str) -> Result<String, CniError> {
    match map.get(key) {
        None | Some(Value::Null) => Err(CniError::config(key, "is missing")),
        Some(Value::String(s)) if s.is_empty() => Err(CniError::config(key, "is empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(CniError::config(
            key,
            format!("must be a string, got a JSON {}", json_type(other)),
        )),
    }
}

/// Whether `name` is a valid network name (as libcni checks it).
pub fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use serde_json::json;

    const TYPES: &[&str] = &[PLUGIN_TYPE];

    fn conf(v: Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes(), TYPES)
    }

    fn base() -> Value {
        json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-cni"})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = base();
        v[key] = value;
        v
    }

    fn bad_key(r: Result<impl std::fmt::Debug, CniError>) -> String {
        match r {
            Err(CniError::BadConfig { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let mut v = base();
        v["someFutureKey"] = json!({"x": [1, 2]});
        v["capabilities"] = json!({"portMappings": true});
        v["runtimeConfig"] = json!({"portMappings": [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp"}], "aliases": {"weft": ["a"]}});
        let c = conf(v).unwrap();
        assert_eq!(c.version, CniVersion::V1_0_0);
        assert_eq!(c.name, "weft");
        assert_eq!(c.plugin_type, "weft-cni");
        assert_eq!(c.socket, PathBuf::from("/run/weft/weft.sock"));
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.dns().unwrap(), None);
        assert_eq!(c.requested_ip().unwrap(), None);
        assert_eq!(c.prev_result().unwrap(), None);
    }

    #[test]
    fn pod_port() {
        use crate::proto::PortType;
        assert_eq!(conf(base()).unwrap().pod_port().unwrap(), None);
        let c = conf(with("podPort", json!("afxdp"))).unwrap();
        assert_eq!(c.pod_port().unwrap(), Some(PortType::Afxdp));
        for bad in [json!("xdp"), json!(1), json!(["tap"])] {
            let c = conf(with("podPort", bad)).unwrap();
            assert_eq!(bad_key(c.pod_port()), "podPort");
        }
    }

    #[test]
    fn socket_and_timeout() {
        let mut v = with("socket", json!("/tmp/w.sock"));
        v["timeout"] = json!(2.5);
        let c = conf(v).unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/w.sock"));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        for bad in [json!(0), json!(-1), json!(301), json!("10s"), json!(true)] {
            assert_eq!(bad_key(conf(with("timeout", bad))), "timeout");
        }
        for bad in [json!(""), json!(7), json!(["/a"])] {
            assert_eq!(bad_key(conf(with("socket", bad))), "socket");
        }
    }

    #[test]
    fn undecodable_and_version_errors() {
        for garbage in [
            &b""[..],
            b"  \n",
            b"{",
            b"not json",
            b"[1,2]",
            b"\"weft\"",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(NetConf::parse(garbage, TYPES), Err(CniError::Decode(_))),
                "{garbage:?}"
            );
        }
        for v in ["0.2.0", "0.1.0", "1.2.0", "2.0.0", "", "latest"] {
            let e = conf(with("cniVersion", json!(v))).unwrap_err();
            assert!(matches!(e, CniError::IncompatibleVersion(_)), "{v}: {e:?}");
            assert!(e.to_string().contains("1.1.0"), "{e}");
        }
        let mut none = base();
        none.as_object_mut().unwrap().remove("cniVersion");
        assert!(matches!(conf(none), Err(CniError::IncompatibleVersion(_))));
        assert_eq!(bad_key(conf(with("cniVersion", json!(1.0)))), "cniVersion");
        for v in CniVersion::ALL {
            assert_eq!(
                conf(with("cniVersion", json!(v.as_str()))).unwrap().version,
                v
            );
        }
    }

    #[test]
    fn name_and_type_are_required() {
        for key in ["name", "type"] {
            let mut missing = base();
            missing.as_object_mut().unwrap().remove(key);
            assert_eq!(bad_key(conf(missing)), key);
            assert_eq!(bad_key(conf(with(key, json!("")))), key);
            assert_eq!(bad_key(conf(with(key, json!(3)))), key);
        }
        let e = conf(with("type", json!("bridge"))).unwrap_err();
        assert!(e.to_string().contains("\"bridge\""), "{e}");
        assert_eq!(bad_key(conf(with("name", json!("bad name")))), "name");
        // The binary installed under another name accepts that name as its type.
        let other = with("type", json!("weft"));
        assert!(NetConf::parse(other.to_string().as_bytes(), &["weft-cni", "weft"]).is_ok());
    }

    #[test]
    fn dns_passes_through_and_is_checked() {
        let dns = json!({"nameservers": ["10.96.0.10"], "domain": "cluster.local",
                         "search": ["default.svc.cluster.local", "svc.cluster.local"], "options": ["ndots:5"]});
        let c = conf(with("dns", dns.clone())).unwrap();
        let got = c.dns().unwrap().unwrap();
        assert_eq!(serde_json::to_value(&got).unwrap(), dns);
        assert_eq!(conf(with("dns", json!({}))).unwrap().dns().unwrap(), None);
        for bad in [json!("8.8.8.8"), json!({"nameservers": "8.8.8.8"})] {
            assert_eq!(bad_key(conf(with("dns", bad)).unwrap().dns()), "dns");
        }
    }

    #[test]
    fn requested_ip_from_runtime_config_and_args() {
        let ip = Ipv4Addr::new(10, 244, 1, 9);
        let rc = conf(with("runtimeConfig", json!({"ips": ["10.244.1.9/24"]}))).unwrap();
        let v4 = |r: Result<Option<Requested>, CniError>| r.unwrap().and_then(|r| r.v4);
        assert_eq!(v4(rc.requested_ip()), Some(ip));
        let args = conf(with("args", json!({"cni": {"ips": ["10.244.1.9"]}}))).unwrap();
        assert_eq!(v4(args.requested_ip()), Some(ip));
        let mut both = with("runtimeConfig", json!({"ips": ["10.244.1.9/24"]}));
        both["args"] = json!({"cni": {"ips": ["10.244.1.9"]}});
        assert_eq!(v4(conf(both.clone()).unwrap().requested_ip()), Some(ip));
        both["args"] = json!({"cni": {"ips": ["10.244.1.10"]}});
        let e = conf(both).unwrap().requested_ip().unwrap_err();
        assert!(
            e.to_string().contains("10.244.1.10") && e.to_string().contains("10.244.1.9"),
            "{e}"
        );
        let dual = conf(with(
            "runtimeConfig",
            json!({"ips": ["10.244.1.9/24", "fd00::9/64"]}),
        ));
        let dual = dual.unwrap().requested_ip().unwrap().unwrap();
        assert_eq!(
            (dual.v4, dual.v6),
            (Some(ip), Some("fd00::9".parse().unwrap()))
        );
        let empty = conf(with("runtimeConfig", json!({"ips": []}))).unwrap();
        assert_eq!(empty.requested_ip().unwrap(), None);
        for bad in [
            json!("10.244.1.9"),
            json!([9]),
            json!(["fd00::9/64", "fd00::8/64"]),
            json!(["10.244.1.9/24", "10.244.1.8/24"]),
            json!(["nope"]),
        ] {
            let c = conf(with("runtimeConfig", json!({"ips": bad}))).unwrap();
            assert_eq!(bad_key(c.requested_ip()), "runtimeConfig.ips");
        }
    }

    #[test]
    fn prev_result_in_either_format() {
        for prev in [
            json!({"cniVersion": "0.4.0",
                   "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:01:02", "sandbox": "/run/netns/x"}],
                   "ips": [{"version": "4", "address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 0}]}),
            json!({"cniVersion": "1.1.0",
                   "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:01:02", "mtu": 1450, "sandbox": "/run/netns/x"}],
                   "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 0}],
                   "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]}),
        ] {
            let c = conf(with("prevResult", prev)).unwrap();
            let p = c.prev_result().unwrap().unwrap();
            assert_eq!(p.ips, vec![IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2))]);
            assert_eq!(
                p.interfaces,
                vec![(
                    "eth0".into(),
                    Some("0a:58:0a:f4:01:02".into()),
                    Some("/run/netns/x".into())
                )]
            );
        }
        for bad in [
            json!("x"),
            json!({"ips": {}}),
            json!({"ips": [{"gateway": "10.244.1.1"}]}),
            json!({"ips": [{"address": "banana"}]}),
            json!({"interfaces": [{"mac": "x"}]}),
        ] {
            let c = conf(with("prevResult", bad)).unwrap();
            assert_eq!(bad_key(c.prev_result()), "prevResult");
        }
    }

    #[test]
    fn gc_attachments_new_and_old_key() {
        let list =
            json!([{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1"}]);
        let want = vec![
            AttachmentKey {
                container_id: "a".into(),
                ifname: "eth0".into(),
            },
            AttachmentKey {
                container_id: "b".into(),
                ifname: "net1".into(),
            },
        ];
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let c = conf(with(key, list.clone())).unwrap();
            assert_eq!(c.valid_attachments().unwrap(), want);
        }
        assert_eq!(
            conf(with("cni.dev/valid-attachments", json!([])))
                .unwrap()
                .valid_attachments()
                .unwrap(),
            vec![]
        );
        assert_eq!(
            bad_key(conf(base()).unwrap().valid_attachments()),
            "cni.dev/valid-attachments"
        );
        for bad in [
            json!({}),
            json!([{"containerID": "a"}]),
            json!([{"containerID": 1, "ifname": "eth0"}]),
        ] {
            let c = conf(with("cni.dev/attachments", bad)).unwrap();
            assert_eq!(bad_key(c.valid_attachments()), "cni.dev/attachments");
        }
    }
}
