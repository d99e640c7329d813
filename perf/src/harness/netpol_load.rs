//! The `weft-*-policy` systems: the same weft, with every pod of host 1 (the servers
//! of the traffic tests) selected by [`POLICIES`] NetworkPolicies of
//! [`RULES_PER_POLICY`] ingress rules each. Only the last rule of the last policy
//! admits the clients (host 0's pods), so a new connection is judged against every
//! rule before it passes, and every packet after it meets the connection table.
//! In a dual-stack run the pods carry their IPv6 addresses too: the clients are
//! admitted at both (the blocks of the other rules are IPv4's, which IPv6 traffic
//! is judged against and never matches).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{bail, Result};
use weft_proto::{Reply, Request};

use crate::netns::wait_until;
use crate::weft::WeftNode;

/// The namespace of the traffic pods.
pub const NAMESPACE: &str = "weft-perf";

/// Policies selecting the servers.
pub const POLICIES: usize = 100;

/// Ingress rules of each policy.
pub const RULES_PER_POLICY: usize = 10;

/// One traffic pod: its name, its address, and whether it serves.
#[derive(Debug, Clone)]
pub struct PerfPod {
    /// Its name (the pod namespace's).
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in a dual-stack run.
    pub ip6: Option<Ipv6Addr>,
    /// Whether it is on host 1, the servers' side.
    pub server: bool,
}

/// The namespace, the pods and the policies, as YAML.
pub fn manifests(pods: &[PerfPod]) -> String {
    let mut out = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n");
    for p in pods {
        let side = if p.server { "server" } else { "client" };
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {NAMESPACE}, labels: {{side: {side}}}}}\nstatus: {{podIP: {}, podIPs: [{{ip: {}}}{}]}}\n",
            p.name,
            p.ip,
            p.ip,
            p.ip6.map_or(String::new(), |ip6| format!(", {{ip: '{ip6}'}}"))
        );
    }
    for i in 0..POLICIES {
        let _ = write!(
            out,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: {NAMESPACE}}}\nspec:\n  podSelector: {{matchLabels: {{side: server}}}}\n  ingress:\n"
        );
        for k in 0..RULES_PER_POLICY {
            if i + 1 == POLICIES && k + 1 == RULES_PER_POLICY {
                out += "  - from: [{podSelector: {matchLabels: {side: client}}}]\n";
            } else {
                let port = 10_000 + i * RULES_PER_POLICY + k;
                let _ = writeln!(
                    out,
                    "  - from: [{{ipBlock: {{cidr: 192.168.{i}.{}/28}}}}]\n    ports: [{{port: {port}}}]",
                    k * 16
                );
            }
        }
    }
    out
}

/// Waits until every node has the policies in force, with `pods` pods known.
pub fn wait_in_force(nodes: &[WeftNode], pods: usize) -> Result<()> {
    for node in nodes {
        let mut last = String::new();
        let ok = wait_until(
            Duration::from_secs(20),
            "the policies to be in force",
            || match node.ok(&Request::PolicyStatus) {
                Ok(Reply::PolicyStatus(s)) => {
                    last = format!(
                        "{} policies, {} pods, errors {:?}",
                        s.policies.len(),
                        s.pods,
                        s.errors
                    );
                    s.errors.is_empty() && s.policies.len() == POLICIES && s.pods == pods
                }
                other => {
                    last = format!("{other:?}");
                    false
                }
            },
        );
        if ok.is_err() {
            bail!(
                "{}: the policies did not come into force: {last}",
                node.name
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_hold_1000_rules_and_admit_only_the_clients_at_the_end() {
        let pods = [
            PerfPod {
                name: "c".into(),
                ip: Ipv4Addr::new(10, 244, 1, 2),
                ip6: Some("fd00:10:244:1::2".parse().unwrap()),
                server: false,
            },
            PerfPod {
                name: "s".into(),
                ip: Ipv4Addr::new(10, 244, 2, 2),
                ip6: None,
                server: true,
            },
        ];
        let text = manifests(&pods);
        assert_eq!(text.matches("kind: NetworkPolicy").count(), POLICIES);
        assert_eq!(
            text.matches("  - from:").count(),
            POLICIES * RULES_PER_POLICY
        );
        assert_eq!(text.matches("side: client}}}]").count(), 1);
        assert!(text.contains("podIP: 10.244.2.2, podIPs: [{ip: 10.244.2.2}]}"));
        assert!(text.contains("podIPs: [{ip: 10.244.1.2}, {ip: 'fd00:10:244:1::2'}]"));
    }
}
