//! Egress masquerade: a pod's traffic to anywhere outside the cluster leaves the node
//! with the node's address, so that the world can answer it, as flannel's `ip-masq`
//! and Calico's `natOutgoing` do. Nothing is rewritten between pods (the cluster
//! CIDR), towards Services (the Service CIDR, whose DNAT happens before), nor to
//! multicast.
//!
//! weftd owns one nftables table, `ip weft`, holding one NAT chain at postrouting:
//!
//! ```text
//! table ip weft {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 10.244.0.0/16 ip daddr != { 10.244.0.0/16, 10.96.0.0/12, 224.0.0.0/4 } masquerade fully-random
//!     }
//! }
//! ```
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

/// The transaction that makes weft's table what it must be: created if missing,
/// deleted, and created again with its chain and rule, all at once.
pub fn ruleset(cluster: Ipv4Net, service: Option<Ipv4Net>) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.add(NfListObject::Table(table()));
    batch.add(NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: TABLE.into(),
        name: CHAIN.into(),
        newname: None,
        handle: None,
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(SRCNAT),
        dev: None,
        policy: Some(NfChainPolicy::Accept),
    }));
    let not_to = exempt(cluster, service)
        .into_iter()
        .map(|n| SetItem::Element(prefix(n)))
        .collect();
    let expr = vec![
        Statement::Match(Match {
            left: ip_field("saddr"),
            right: prefix(cluster),
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
    batch.add(NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: TABLE.into(),
        chain: CHAIN.into(),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: Some("weft: pods' traffic leaving the cluster".into()),
    }));
    batch.to_nftables()
}

/// The transaction that deletes weft's table, whether it is there or not.
pub fn removal() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.to_nftables()
}

/// Installs the masquerade of `cluster`'s traffic, exempting `service`.
pub fn install(cluster: Ipv4Net, service: Option<Ipv4Net>) -> Result<(), MasqueradeError> {
    nftables::helper::apply_ruleset(&ruleset(cluster, service))?;
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
        let json = serde_json::to_value(ruleset(
            "10.244.0.0/16".parse().unwrap(),
            Some("10.96.0.0/12".parse().unwrap()),
        ))
        .unwrap();
        let objects = json["nftables"].as_array().unwrap();
        let verbs: Vec<&str> = objects
            .iter()
            .map(|o| o.as_object().unwrap().keys().next().unwrap().as_str())
            .collect();
        assert_eq!(verbs, ["add", "delete", "add", "add", "add"]);
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
