//! What the plugin prints: the ADD result in each spec version's format, the VERSION
//! answer and the error object.

use std::net::IpAddr;

use serde::Serialize;

use crate::config::Dns;
use crate::error::CniError;
use crate::proto::Attachment;
use crate::version::CniVersion;

/// The ADD result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddResult {
    /// The spec version the result is written in (the config's).
    pub cni_version: &'static str,
    /// The pod's interface.
    pub interfaces: Vec<Interface>,
    /// The pod's address.
    pub ips: Vec<IpConfig>,
    /// The default route via the gateway.
    pub routes: Vec<Route>,
    /// DNS settings from the config, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
}

/// An interface in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    pub mac: String,
    /// Its MTU (1.1.0 on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path it lives in.
    pub sandbox: String,
}

/// An address in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpConfig {
    /// "4" or "6" (up to 0.4.0 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
    /// `ip/prefix`.
    pub address: String,
    /// The gateway.
    pub gateway: IpAddr,
    /// Index into `interfaces`.
    pub interface: usize,
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Destination prefix.
    pub dst: String,
    /// Next hop.
    pub gw: IpAddr,
}

impl AddResult {
    /// The result of an attach, in `version`'s format.
    pub fn new(att: &Attachment, dns: Option<Dns>, version: CniVersion) -> AddResult {
        AddResult {
            cni_version: version.as_str(),
            interfaces: vec![Interface {
                name: att.interface.clone(),
                mac: att.mac.clone(),
                mtu: version.has_interface_mtu().then_some(att.mtu),
                sandbox: att.sandbox.clone(),
            }],
            ips: std::iter::once(IpConfig {
                version: version.has_ip_version().then_some("4"),
                address: format!("{}/{}", att.ip, att.prefix_len),
                gateway: att.gateway.into(),
                interface: 0,
            })
            .chain(att.ipv6.map(|v6| IpConfig {
                version: version.has_ip_version().then_some("6"),
                address: format!("{}/{}", v6.ip, v6.prefix_len),
                gateway: v6.gateway.into(),
                interface: 0,
            }))
            .collect(),
            routes: std::iter::once(Route {
                dst: "0.0.0.0/0".into(),
                gw: att.gateway.into(),
            })
            .chain(att.ipv6.map(|v6| Route {
                dst: "::/0".into(),
                gw: v6.gateway.into(),
            }))
            .collect(),
            dns,
        }
    }
}

/// The VERSION answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionResult {
    /// The spec version of this output (the newest weft speaks).
    pub cni_version: &'static str,
    /// Every version weft accepts.
    pub supported_versions: Vec<&'static str>,
}

impl Default for VersionResult {
    fn default() -> VersionResult {
        VersionResult {
            cni_version: CniVersion::LATEST.as_str(),
            supported_versions: CniVersion::ALL.map(CniVersion::as_str).to_vec(),
        }
    }
}

/// The error object printed on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResult {
    /// The spec version of this output.
    pub cni_version: &'static str,
    /// The CNI error code.
    pub code: u32,
    /// What was wrong.
    pub msg: String,
    /// A hint on what to do.
    pub details: String,
}

impl ErrorResult {
    /// The error object for `err`, in `version`.
    pub fn new(err: &CniError, version: CniVersion) -> ErrorResult {
        ErrorResult {
            cni_version: version.as_str(),
            code: err.code(),
            msg: err.to_string(),
            details: err.details().into(),
        }
    }
}

/// Renders any result as the JSON text to print.
pub fn to_json(value: &impl Serialize) -> String {
    // Every type here serializes (strings, numbers, lists): this cannot fail.
    serde_json::to_string(value).unwrap_or_else(|e| {
        format!(r#"{{"cniVersion":"1.1.0","code":999,"msg":"rendering the result: {e}"}}"#)
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use serde_json::{json, Value};

    fn attachment() -> Attachment {
        Attachment {
            interface: "eth0".into(),
            mac: "0a:58:0a:f4:01:02".into(),
            sandbox: "/run/netns/cni-1234".into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            ipv6: None,
            mtu: 1450,
            port: Default::default(),
        }
    }

    fn render(v: CniVersion, dns: Option<Dns>) -> Value {
        serde_json::from_str(&to_json(&AddResult::new(&attachment(), dns, v))).unwrap()
    }

    #[test]
    fn add_result_up_to_0_4_0_has_ip_version() {
        for v in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            assert_eq!(
                render(v, None),
                json!({
                    "cniVersion": v.as_str(),
                    "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:01:02", "sandbox": "/run/netns/cni-1234"}],
                    "ips": [{"version": "4", "address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 0}],
                    "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]
                }),
                "{v}"
            );
        }
    }

    /// A dual-stack pod's result lists both addresses, both gateways and both
    /// default routes, IPv4 first, as the reference plugins order them.
    #[test]
    fn a_dual_stack_result_lists_both_families() {
        let att = Attachment {
            ipv6: Some(crate::proto::Address6 {
                ip: "fd00:10:244:1::2".parse().unwrap(),
                prefix_len: 64,
                gateway: "fd00:10:244:1::1".parse().unwrap(),
            }),
            ..attachment()
        };
        let ips = json!([
            {"version": "4", "address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 0},
            {"version": "6", "address": "fd00:10:244:1::2/64", "gateway": "fd00:10:244:1::1", "interface": 0}
        ]);
        let routes = json!([
            {"dst": "0.0.0.0/0", "gw": "10.244.1.1"},
            {"dst": "::/0", "gw": "fd00:10:244:1::1"}
        ]);
        let old: Value =
            serde_json::from_str(&to_json(&AddResult::new(&att, None, CniVersion::V0_4_0)))
                .unwrap();
        assert_eq!((&old["ips"], &old["routes"]), (&ips, &routes));
        let new: Value =
            serde_json::from_str(&to_json(&AddResult::new(&att, None, CniVersion::V1_1_0)))
                .unwrap();
        let mut unversioned = ips.clone();
        for ip in unversioned.as_array_mut().unwrap() {
            ip.as_object_mut().unwrap().remove("version");
        }
        assert_eq!((&new["ips"], &new["routes"]), (&unversioned, &routes));
    }

    #[test]
    fn add_result_1_0_0_drops_ip_version() {
        assert_eq!(
            render(CniVersion::V1_0_0, None),
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:01:02", "sandbox": "/run/netns/cni-1234"}],
                "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]
            })
        );
    }

    #[test]
    fn add_result_1_1_0_has_mtu_and_dns() {
        let dns = Dns {
            nameservers: vec!["10.96.0.10".into()],
            domain: None,
            search: vec!["svc.cluster.local".into()],
            options: vec![],
        };
        assert_eq!(
            render(CniVersion::V1_1_0, Some(dns)),
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:01:02", "mtu": 1450, "sandbox": "/run/netns/cni-1234"}],
                "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
                "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
            })
        );
    }

    #[test]
    fn version_and_error_objects() {
        assert_eq!(
            serde_json::to_value(VersionResult::default()).unwrap(),
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
        let err = CniError::env("CNI_NETNS", "not set, and ADD needs it");
        assert_eq!(
            serde_json::to_value(ErrorResult::new(&err, CniVersion::V0_4_0)).unwrap(),
            json!({"cniVersion": "0.4.0", "code": 4, "msg": "CNI_NETNS: not set, and ADD needs it",
                   "details": "the runtime passed bad CNI_* environment variables"})
        );
    }
}
