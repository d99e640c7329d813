//! Egress masquerade: a pod's traffic to anywhere outside the cluster leaves the node
//! with the node's address, so that the world can answer it, as flannel's `ip-masq`
//! and Calico's `natOutgoing` do. Nothing is rewritten between pods (the cluster
//! CIDR), nor to multicast. By postrouting kube-proxy has translated a ClusterIP to
//! an endpoint already; the Service CIDR is exempt too so that a packet still
//! carrying a ClusterIP there (a Service with no rule yet) does not leave as the
//! node. Traffic to other weft nodes' addresses goes through the tunnel, never
//! through here.
//!
//! weftd owns one nftables table, `ip weft`, holding one NAT chain at postrouting, and
//! two chains that keep the tunnel's own datagrams out of the connection tracker:
//!
//! ```text
//! table ip weft {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 10.244.0.0/16 ip daddr != { 10.244.0.0/16, 10.96.0.0/12, 224.0.0.0/4 } masquerade fully-random
//!     }
//!     chain raw-prerouting {
//!         type filter hook prerouting priority raw; policy accept;
//!         ip daddr 10.250.0.1 udp dport 8472 notrack
//!     }
//!     chain raw-output {
//!         type filter hook output priority raw; policy accept;
//!         ip saddr 10.250.0.1 udp dport 8472 notrack
//!     }
//! }
//! ```
//!
//! A NAT chain turns the connection tracker on in its namespace, for every packet,
//! the tunnel's datagrams included; tracking them buys nothing (weftd's sockets need
//! no NAT and no state) and costs every datagram a lookup, so the datagrams to and
//! from the tunnel port on the node's underlay address are left untracked, as Cilium
//! can leave its tunnel's. Pods' traffic, which comes from the host port with pod
//! addresses, is tracked as ever. A host firewall must accept the tunnel port by
//! port, not as an established connection (each node's datagrams to the other come
//! from its own ports, so they never were one); a host process sending to another
//! machine's port 8472 from the underlay address is untracked too.
//!
//! It is replaced whole in one transaction at every start (a crashed predecessor's
//! table included) and deleted on a clean stop; no other table or chain is touched,
//! so kube-proxy's (iptables or nftables) and the host's own rules stay as they are.
//! The table is built with the `nftables` crate and handed to `nft` through its JSON
//! interface.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix, SetItem};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, NATFlag, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The name of weft's table.
pub const TABLE: &str = "weft";
/// The name of its chain.
pub const CHAIN: &str = "postrouting";
/// The priority of srcnat, where masquerading belongs.
const SRCNAT: i32 = 100;
/// The priority of raw, before the connection tracker.
const RAW: i32 = -300;

/// What weft's table does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Masquerade {
    /// The pods' range, whose traffic leaving it is masqueraded.
    pub cluster: Ipv4Net,
    /// The Service range, also exempt.
    pub service: Option<Ipv4Net>,
    /// The node's underlay address and the tunnel's UDP port, whose datagrams go
    /// untracked; none in direct mode.
    pub tunnel: Option<(Ipv4Addr, u16)>,
}

/// Why the masquerade could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum MasqueradeError {
    /// `nft` failed or could not be run.
    #[error("nftables table ip {TABLE}: {0} (is the nftables package, which provides nft, installed? masquerade = false turns the masquerade off)")]
    Nft(#[from] nftables::helper::NftablesError),
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: TABLE.into(),
        handle: None,
    }
}

fn prefix(net: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(net.network().to_string().into())),
        len: u32::from(net.prefix_len()),
    }))
}

fn ip_field(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: "ip".into(),
            field: field.into(),
        },
    )))
}

/// The ranges a pod's traffic to which is never masqueraded.
fn exempt(cluster: Ipv4Net, service: Option<Ipv4Net>) -> Vec<Ipv4Net> {
    let multicast = Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 4).expect("a valid prefix");
    std::iter::once(cluster)
        .chain(service)
        .chain([multicast])
        .collect()
}

fn base_chain(name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        family: NfFamily::IP,
        table: TABLE.into(),
        name: name.into(),
        newname: None,
        handle: None,
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        dev: None,
        policy: Some(NfChainPolicy::Accept),
    }
}

fn rule(
    chain: &'static str,
    expr: Vec<Statement<'static>>,
    comment: &'static str,
) -> Rule<'static> {
    Rule {
        family: NfFamily::IP,
        table: TABLE.into(),
        chain: chain.into(),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: Some(comment.into()),
    }
}

/// The transaction that makes weft's table what it must be: created if missing,
/// deleted, and created again with its chains and rules, all at once.
pub fn ruleset(m: &Masquerade) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.add(NfListObject::Table(table()));
    batch.add(NfListObject::Chain(base_chain(
        CHAIN,
        NfChainType::NAT,
        NfHook::Postrouting,
        SRCNAT,
    )));
    let not_to = exempt(m.cluster, m.service)
        .into_iter()
        .map(|n| SetItem::Element(prefix(n)))
        .collect();
    let masquerade = vec![
        Statement::Match(Match {
            left: ip_field("saddr"),
            right: prefix(m.cluster),
            op: Operator::EQ,
        }),
        Statement::Match(Match {
            left: ip_field("daddr"),
            right: Expression::Named(NamedExpression::Set(not_to)),
            op: Operator::NEQ,
        }),
        Statement::Masquerade(Some(NAT {
            addr: None,
            family: None,
            port: None,
            flags: Some([NATFlag::FullyRandom].into_iter().collect()),
        })),
    ];
    batch.add(NfListObject::Rule(rule(
        CHAIN,
        masquerade,
        "weft: pods' traffic leaving the cluster",
    )));
    if let Some((underlay, port)) = m.tunnel {
        for (chain, hook, ours) in [
            ("raw-prerouting", NfHook::Prerouting, "daddr"),
            ("raw-output", NfHook::Output, "saddr"),
        ] {
            batch.add(NfListObject::Chain(base_chain(
                chain,
                NfChainType::Filter,
                hook,
                RAW,
            )));
            let notrack = vec![
                Statement::Match(Match {
                    left: ip_field(ours),
                    right: Expression::String(underlay.to_string().into()),
                    op: Operator::EQ,
                }),
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                        PayloadField {
                            protocol: "udp".into(),
                            field: "dport".into(),
                        },
                    ))),
                    right: Expression::Number(u32::from(port)),
                    op: Operator::EQ,
                }),
                Statement::Notrack,
            ];
            batch.add(NfListObject::Rule(rule(
                chain,
                notrack,
                "weft: the tunnel's datagrams need no connection tracking",
            )));
        }
    }
    batch.to_nftables()
}

/// The transaction that deletes weft's table, whether it is there or not.
pub fn removal() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.to_nftables()
}

/// `nftables` as the JSON `nft -j -f -` takes. The crate writes a `notrack`
/// statement as the bare string `"notrack"`, which nft (1.0.6, Debian 12) refuses:
/// it wants every statement an object, `{"notrack": null}`.
pub fn json(nftables: &Nftables<'_>) -> String {
    let mut v = serde_json::to_value(nftables).unwrap_or_default();
    let objects = v.get_mut("nftables").and_then(|o| o.as_array_mut());
    for object in objects.into_iter().flatten() {
        let exprs = object
            .pointer_mut("/add/rule/expr")
            .and_then(|e| e.as_array_mut());
        for stmt in exprs.into_iter().flatten() {
            if stmt.as_str() == Some("notrack") {
                *stmt = serde_json::json!({ "notrack": null });
            }
        }
    }
    v.to_string()
}

/// Installs weft's table as `m` says.
pub fn install(m: &Masquerade) -> Result<(), MasqueradeError> {
    let no_args: [&str; 0] = [];
    nftables::helper::apply_ruleset_raw(
        &json(&ruleset(m)),
        nftables::helper::DEFAULT_NFT,
        no_args,
    )?;
    Ok(())
}

/// Removes weft's table.
pub fn remove() -> Result<(), MasqueradeError> {
    nftables::helper::apply_ruleset(&removal())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_is_the_documented_table_in_one_transaction() {
        let json: serde_json::Value = serde_json::from_str(&json(&ruleset(&Masquerade {
            cluster: "10.244.0.0/16".parse().unwrap(),
            service: Some("10.96.0.0/12".parse().unwrap()),
            tunnel: Some((Ipv4Addr::new(10, 250, 0, 1), 8472)),
        })))
        .unwrap();
        let objects = json["nftables"].as_array().unwrap();
        let verbs: Vec<&str> = objects
            .iter()
            .map(|o| o.as_object().unwrap().keys().next().unwrap().as_str())
            .collect();
        assert_eq!(
            verbs,
            ["add", "delete", "add", "add", "add", "add", "add", "add", "add"]
        );
        let chain = &objects[3]["add"]["chain"];
        assert_eq!(chain["type"], "nat");
        assert_eq!(chain["hook"], "postrouting");
        assert_eq!(chain["prio"], 100);
        let rule = &objects[4]["add"]["rule"];
        assert_eq!(rule["table"], "weft");
        let expr = rule["expr"].as_array().unwrap();
        assert_eq!(expr[0]["match"]["right"]["prefix"]["addr"], "10.244.0.0");
        assert_eq!(expr[1]["match"]["op"], "!=");
        let set: Vec<String> = expr[1]["match"]["right"]["set"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| format!("{}/{}", p["prefix"]["addr"], p["prefix"]["len"]))
            .collect();
        assert_eq!(
            set,
            ["\"10.244.0.0\"/16", "\"10.96.0.0\"/12", "\"224.0.0.0\"/4"]
        );
        assert_eq!(
            expr[2]["masquerade"]["flags"],
            serde_json::json!(["fully-random"])
        );
        for (at, hook, field) in [(5, "prerouting", "daddr"), (7, "output", "saddr")] {
            let chain = &objects[at]["add"]["chain"];
            assert_eq!(chain["hook"], hook);
            assert_eq!(chain["prio"], -300);
            let expr = objects[at + 1]["add"]["rule"]["expr"].as_array().unwrap();
            assert_eq!(expr[0]["match"]["left"]["payload"]["field"], field);
            assert_eq!(expr[0]["match"]["right"], "10.250.0.1");
            assert_eq!(expr[1]["match"]["left"]["payload"]["field"], "dport");
            assert_eq!(expr[1]["match"]["right"], 8472);
            assert_eq!(expr[2], serde_json::json!({ "notrack": null }));
        }
        // In direct mode there is no tunnel to leave untracked.
        let direct = ruleset(&Masquerade {
            cluster: "10.244.0.0/16".parse().unwrap(),
            service: None,
            tunnel: None,
        });
        assert_eq!(direct.objects.len(), 5);
    }

    #[test]
    fn without_a_service_cidr_only_the_cluster_and_multicast_are_exempt() {
        let cluster = "10.244.0.0/16".parse().unwrap();
        assert_eq!(
            exempt(cluster, None),
            [cluster, "224.0.0.0/4".parse().unwrap()]
        );
    }

    #[test]
    fn removal_tolerates_a_missing_table() {
        let json = serde_json::to_value(removal()).unwrap();
        let objects = json["nftables"].as_array().unwrap();
        assert!(objects[0].get("add").is_some() && objects[1].get("delete").is_some());
    }
}
