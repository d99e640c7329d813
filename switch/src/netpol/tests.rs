//! The compiler against every rule of `networking.k8s.io/v1`, from YAML as a user
//! writes it. Every pod is dual-stack, and every verdict between pods is reached
//! twice, with their IPv4 and with their IPv6 addresses, which must agree; blocks
//! are judged in their own family.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::compile::{compile, Compiler, Family, LocalPod, PodRules};
use super::manifest;
use super::model::{PolicyModel, Protocol};

const NAMESPACES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x, team: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y, team: blue}}
---
apiVersion: v1
kind: Namespace
metadata: {name: z, labels: {ns: z}}
";

/// Pods a, b, c in each of x, y, z: x/a is 10.0.0.1 and fd00::1, x/b 10.0.0.2 and
/// fd00::2 ... z/c 10.0.0.9 and fd00::9. Each serves `http` on TCP 80 and `dns` on
/// UDP 53; x/b serves `http` on 8080.
fn pods() -> String {
    let mut out = String::new();
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        for (k, pod) in ["a", "b", "c"].iter().enumerate() {
            let ip = n * 3 + k + 1;
            let http = if (*ns, *pod) == ("x", "b") { 8080 } else { 80 };
            out += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}\n\
                 spec: {{containers: [{{name: c, ports: [{{name: http, containerPort: {http}}}, {{name: dns, containerPort: 53, protocol: UDP}}]}}]}}\n\
                 status: {{podIP: 10.0.0.{ip}, podIPs: [{{ip: 10.0.0.{ip}}}, {{ip: 'fd00::{ip}'}}]}}\n"
            );
        }
    }
    out
}

fn ip(ns: &str, pod: &str) -> Ipv4Addr {
    let n = ["x", "y", "z"].iter().position(|x| *x == ns).unwrap();
    let k = ["a", "b", "c"].iter().position(|x| *x == pod).unwrap();
    Ipv4Addr::new(10, 0, 0, (n * 3 + k + 1) as u8)
}

fn ip6(ns: &str, pod: &str) -> Ipv6Addr {
    let last = ip(ns, pod).octets()[3];
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(last))
}

fn model(policies: &str) -> PolicyModel {
    let mut m = PolicyModel::default();
    let text = format!("{NAMESPACES}{}\n---\n{policies}", pods());
    manifest::read("test.yaml", &text, &mut m).unwrap_or_else(|e| panic!("{e:?}"));
    m
}

/// Every pod's rules, the whole cluster seen as local.
struct World {
    model: PolicyModel,
}

impl World {
    fn new(policies: &str) -> World {
        World {
            model: model(policies),
        }
    }

    fn rules(&self, ns: &str, pod: &str) -> PodRules {
        let c = Compiler::new(&self.model, &[]);
        let known = c.pod_at(ip(ns, pod).into()).expect("a known pod");
        assert_eq!(known.ip6, Some(ip6(ns, pod)), "{ns}/{pod} is dual-stack");
        c.rules_for(&known)
    }

    /// Whether `from` may open a connection to `to` on `proto`/`port`: its egress,
    /// and the destination's ingress.
    fn allows(&self, from: (&str, &str), to: (&str, &str), proto: Protocol, port: u16) -> bool {
        self.allows_proto(from, to, proto.number(), Some(port))
    }

    /// Whether `from` may open a connection to `to`, with the same verdict over
    /// IPv4 and over IPv6.
    fn allows_proto(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        proto: u8,
        port: Option<u16>,
    ) -> bool {
        let v4 = self.allows4(from, to, proto, port);
        let v6 = self.allows6(from, to, proto, port);
        assert_eq!(v4, v6, "{from:?} to {to:?}: IPv4 says {v4}, IPv6 {v6}");
        v4
    }

    fn allows4(&self, from: (&str, &str), to: (&str, &str), proto: u8, port: Option<u16>) -> bool {
        let (s, d) = (ip(from.0, from.1), ip(to.0, to.1));
        self.verdict(from, to, s, d, proto, port)
    }

    fn allows6(&self, from: (&str, &str), to: (&str, &str), proto: u8, port: Option<u16>) -> bool {
        let (s, d) = (ip6(from.0, from.1), ip6(to.0, to.1));
        self.verdict(from, to, s, d, proto, port)
    }

    /// The source's egress and the destination's ingress, at addresses `s` and `d`.
    fn verdict<A: Family>(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        s: A,
        d: A,
        proto: u8,
        port: Option<u16>,
    ) -> bool {
        let egress = self.rules(from.0, from.1).egress;
        let ingress = self.rules(to.0, to.1).ingress;
        egress.is_none_or(|r| r.allows(d, d, proto, port).is_some())
            && ingress.is_none_or(|r| r.allows(s, d, proto, port).is_some())
    }
}

const TCP: Protocol = Protocol::Tcp;

fn policy(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

#[test]
fn no_policy_allows_everything() {
    let w = World::new("");
    assert!(w.allows(("x", "a"), ("z", "c"), TCP, 1234));
    assert_eq!(w.rules("x", "a"), PodRules::default());
}

#[test]
fn default_deny_ingress_and_egress_and_allow_all() {
    let deny_in = policy("deny", "x", "  podSelector: {}\n  policyTypes: [Ingress]");
    let w = World::new(&deny_in);
    assert!(!w.allows(("y", "a"), ("x", "b"), TCP, 80));
    assert!(
        !w.allows(("x", "a"), ("x", "b"), TCP, 80),
        "same namespace too"
    );
    assert!(
        w.allows(("x", "a"), ("y", "b"), TCP, 80),
        "egress is not isolated"
    );
    assert!(w.rules("x", "a").egress.is_none());
    let deny_out = policy("deny", "x", "  podSelector: {}\n  policyTypes: [Egress]");
    let w = World::new(&deny_out);
    assert!(!w.allows(("x", "a"), ("y", "b"), TCP, 80));
    assert!(w.allows(("y", "a"), ("x", "b"), TCP, 80));
    // An ingress list holding one empty rule allows everything.
    let allow_all = policy("all", "x", "  podSelector: {}\n  ingress: [{}]");
    let w = World::new(&(deny_in + &allow_all));
    assert!(w.allows(("z", "c"), ("x", "a"), TCP, 9));
    assert!(
        w.allows_proto(("z", "c"), ("x", "a"), 1, None),
        "ICMP too: no ports"
    );
}

#[test]
fn policy_types_default_to_ingress_plus_egress_when_there_are_egress_rules() {
    let ingress_only = World::new(&policy("p", "x", "  podSelector: {}\n  ingress: []"));
    let r = ingress_only.rules("x", "a");
    assert!(r.ingress.is_some() && r.egress.is_none());
    assert!(
        r.ingress.unwrap().rules.is_empty(),
        "an empty list denies all"
    );
    let both = World::new(&policy("p", "x", "  podSelector: {}\n  egress: [{}]"));
    let r = both.rules("x", "a");
    assert!(r.ingress.is_some() && r.egress.is_some());
    assert!(
        r.ingress.unwrap().rules.is_empty(),
        "Ingress is isolated, with no rule"
    );
    let listed = World::new(&policy(
        "p",
        "x",
        "  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]",
    ));
    let r = listed.rules("x", "a");
    assert!(
        r.ingress.is_none() && r.egress.is_some(),
        "policyTypes listed wins"
    );
}

#[test]
fn pod_selectors_match_labels_and_expressions_in_the_policys_namespace() {
    let spec = "  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}\n  ingress:\n  - from: [{podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [b]}]}}]";
    let w = World::new(&policy("p", "x", spec));
    assert!(w.rules("x", "a").ingress.is_some());
    assert!(w.rules("x", "c").ingress.is_none(), "c is not In [a, b]");
    assert!(w.rules("y", "a").ingress.is_none(), "another namespace");
    assert!(w.allows(("x", "a"), ("x", "b"), TCP, 80));
    assert!(w.allows(("x", "c"), ("x", "b"), TCP, 80));
    assert!(
        !w.allows(("x", "b"), ("x", "a"), TCP, 80),
        "b is excluded by NotIn"
    );
    assert!(
        !w.allows(("y", "a"), ("x", "b"), TCP, 80),
        "a podSelector alone means this namespace"
    );
    let exists = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchExpressions: [{key: pod, operator: Exists}]}}, {podSelector: {matchExpressions: [{key: role, operator: DoesNotExist}]}}]";
    let w = World::new(&policy("p", "x", exists));
    assert!(w.allows(("x", "b"), ("x", "a"), TCP, 80));
}

#[test]
fn namespace_and_pod_selectors_in_one_peer_are_and_in_two_peers_or() {
    let and = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]";
    let w = World::new(&policy("p", "x", and));
    assert!(w.allows(("y", "b"), ("x", "a"), TCP, 80));
    assert!(!w.allows(("y", "c"), ("x", "a"), TCP, 80));
    assert!(!w.allows(("x", "b"), ("x", "a"), TCP, 80));
    let or = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]";
    let w = World::new(&policy("p", "x", or));
    assert!(w.allows(("y", "c"), ("x", "a"), TCP, 80), "any pod of y");
    assert!(
        w.allows(("x", "b"), ("x", "a"), TCP, 80),
        "b of the policy's namespace"
    );
    assert!(
        !w.allows(("z", "b"), ("x", "a"), TCP, 80),
        "b of z is neither"
    );
    let ns_only = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchExpressions: [{key: team, operator: Exists}]}}]";
    let w = World::new(&policy("p", "z", ns_only));
    assert!(w.allows(("x", "a"), ("z", "a"), TCP, 1));
    assert!(w.allows(("y", "a"), ("z", "a"), TCP, 1));
    assert!(
        !w.allows(("z", "b"), ("z", "a"), TCP, 1),
        "z has no team label"
    );
    // Every namespace has the label the API server sets, with or without an object.
    let by_name = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]";
    let w = World::new(&policy("p", "z", by_name));
    assert!(w.allows(("y", "b"), ("z", "a"), TCP, 1));
    assert!(!w.allows(("x", "b"), ("z", "a"), TCP, 1));
    let empty_ns = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}}]";
    let w = World::new(&policy("p", "z", empty_ns));
    assert!(
        w.allows(("z", "b"), ("z", "a"), TCP, 1),
        "an empty selector selects all"
    );
}

/// `ipBlock` with `except`, of one family: `expect` lists which of x/a..z/c (by
/// last digit, 1 to 9) z/a admits, at the addresses of the block's family; the
/// other family's addresses are admitted by nothing.
fn block_admits(spec: &str, v6: bool, expect: &[u8]) {
    let w = World::new(&policy("p", "z", spec));
    let pods = ["x", "y", "z"]
        .iter()
        .flat_map(|ns| ["a", "b", "c"].map(|p| (*ns, p)));
    for (n, from) in pods.enumerate() {
        let to = ("z", "a");
        let (same, other) = match v6 {
            false => (
                w.allows4(from, to, 6, Some(80)),
                w.allows6(from, to, 6, Some(80)),
            ),
            true => (
                w.allows6(from, to, 6, Some(80)),
                w.allows4(from, to, 6, Some(80)),
            ),
        };
        assert_eq!(same, expect.contains(&(n as u8 + 1)), "{spec}: {from:?}");
        assert!(!other, "{spec}: {from:?} is admitted in the other family");
    }
}

#[test]
fn ip_blocks_with_except() {
    let spec = "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/29, except: [10.0.0.4/30]}}]";
    // 10.0.0.4 to 10.0.0.7 are excepted; 10.0.0.8 and .9 lie outside.
    block_admits(spec, false, &[1, 2, 3]);
    let w = World::new(&policy("p", "z", spec));
    let r = w.rules("z", "a").ingress.unwrap();
    let from = |last: u8| r.allows(Ipv4Addr::new(10, 0, 0, last), ip("z", "a"), 6, Some(80));
    assert!(
        from(0).is_some() && from(3).is_some(),
        "any address of the block"
    );
    assert!(from(7).is_none(), "the last of the exception");
    assert!(from(8).is_none(), "outside the block");
}

/// The same truth table with an IPv6 block, and blocks of both families in one
/// rule: each admits its own family's addresses.
#[test]
fn ipv6_blocks_with_except() {
    let spec = "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 'fd00::/125', except: ['fd00::4/126']}}]";
    block_admits(spec, true, &[1, 2, 3]);
    let w = World::new(&policy("p", "z", spec));
    let r = w.rules("z", "a").ingress.unwrap();
    let from = |last: u16| {
        let src = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last);
        r.allows(src, ip6("z", "a"), 6, Some(80))
    };
    assert!(from(0).is_some() && from(3).is_some());
    assert!(from(7).is_none(), "the last of the exception");
    assert!(from(8).is_none(), "outside the block");
    let mapped = "::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap();
    let all6 = World::new(&policy(
        "p",
        "z",
        "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: '::/0'}}]",
    ));
    let r = all6.rules("z", "a").ingress.unwrap();
    assert!(r.allows(mapped, ip6("z", "a"), 6, Some(80)).is_some());
    assert!(
        r.allows(Ipv4Addr::new(10, 0, 0, 1), ip("z", "a"), 6, Some(80))
            .is_none(),
        "::/0 holds no IPv4 address"
    );
    let both = "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/30}}, {ipBlock: {cidr: 'fd00::8/125'}}]";
    let w = World::new(&policy("p", "z", both));
    for (from, v4, v6) in [
        (("x", "a"), true, false),
        (("z", "b"), false, true),
        (("y", "a"), false, false),
    ] {
        assert_eq!(w.allows4(from, ("z", "a"), 6, Some(80)), v4, "{from:?}");
        assert_eq!(w.allows6(from, ("z", "a"), 6, Some(80)), v6, "{from:?}");
    }
}

#[test]
fn ports_by_number_range_name_and_protocol() {
    let spec = "  podSelector: {}\n  ingress:\n  - ports: [{port: 81}, {port: 1000, endPort: 1010}, {protocol: UDP, port: 53}, {protocol: SCTP, port: 80}]";
    let w = World::new(&policy("p", "x", spec));
    let to = ("x", "a");
    assert!(w.allows(("y", "a"), to, TCP, 81));
    assert!(!w.allows(("y", "a"), to, TCP, 80));
    assert!(w.allows(("y", "a"), to, TCP, 1000) && w.allows(("y", "a"), to, TCP, 1010));
    assert!(!w.allows(("y", "a"), to, TCP, 1011) && !w.allows(("y", "a"), to, TCP, 999));
    assert!(w.allows(("y", "a"), to, Protocol::Udp, 53));
    assert!(!w.allows(("y", "a"), to, TCP, 53), "UDP 53 is not TCP 53");
    assert!(w.allows(("y", "a"), to, Protocol::Sctp, 80));
    assert!(!w.allows(("y", "a"), to, TCP, 80), "SCTP is not TCP");
    assert!(
        !w.allows_proto(("y", "a"), to, 1, None),
        "rules with ports allow no ICMP"
    );
    // A protocol with no port: every port of it.
    let all_udp = "  podSelector: {}\n  ingress:\n  - ports: [{protocol: UDP}]";
    let w = World::new(&policy("p", "x", all_udp));
    assert!(w.allows(("y", "a"), to, Protocol::Udp, 7) && !w.allows(("y", "a"), to, TCP, 7));
}

#[test]
fn named_ports_resolve_on_the_pod_they_apply_to() {
    // Ingress: `http` of the selected pod itself (x/b serves it on 8080).
    let ingress = "  podSelector: {}\n  ingress:\n  - ports: [{port: http}]";
    let w = World::new(&policy("p", "x", ingress));
    assert!(w.allows(("y", "a"), ("x", "a"), TCP, 80));
    assert!(
        !w.allows(("y", "a"), ("x", "b"), TCP, 80),
        "x/b's http is 8080"
    );
    assert!(w.allows(("y", "a"), ("x", "b"), TCP, 8080));
    // Egress: `http` of each destination.
    let egress = "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: http}, {protocol: UDP, port: dns}]";
    let w = World::new(&policy("p", "x", egress));
    assert!(w.allows(("x", "a"), ("y", "c"), TCP, 80));
    assert!(w.allows(("x", "a"), ("x", "b"), TCP, 8080));
    assert!(!w.allows(("x", "a"), ("x", "b"), TCP, 80));
    assert!(w.allows(("x", "a"), ("z", "a"), Protocol::Udp, 53));
    assert!(!w.allows(("x", "a"), ("z", "a"), TCP, 53), "dns is UDP");
    // A name no pod has allows nothing.
    let unknown = "  podSelector: {}\n  ingress:\n  - ports: [{port: nope}]";
    let w = World::new(&policy("p", "x", unknown));
    assert!(!w.allows(("y", "a"), ("x", "a"), TCP, 80));
}

#[test]
fn egress_to_one_port_and_policies_union() {
    let egress = "  podSelector: {matchLabels: {pod: a}}\n  egress:\n  - to: [{podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 80}]";
    let w = World::new(&policy("e", "x", egress));
    assert!(w.allows(("x", "a"), ("x", "b"), TCP, 80));
    assert!(!w.allows(("x", "a"), ("x", "b"), TCP, 81));
    assert!(!w.allows(("x", "a"), ("x", "c"), TCP, 80));
    let more = "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {pod: c}}}]";
    let w = World::new(&(policy("e", "x", egress) + &policy("f", "x", more)));
    assert!(
        w.allows(("x", "a"), ("x", "c"), TCP, 81),
        "the second policy adds c"
    );
    assert!(
        w.allows(("x", "a"), ("x", "b"), TCP, 80),
        "the first still allows b"
    );
    assert!(!w.allows(("x", "a"), ("y", "b"), TCP, 80));
    let r = w.rules("x", "a");
    assert_eq!(r.selected_by.len(), 2);
    let origin = r
        .egress
        .as_ref()
        .unwrap()
        .allows(ip("x", "c"), ip("x", "c"), 6, Some(5));
    assert_eq!(origin.map(|o| (&*o.policy, o.rule)), Some(("x/f", 0)));
}

#[test]
fn local_pods_take_labels_from_their_object_and_the_address_of_their_attachment() {
    let m = model(&policy(
        "p",
        "x",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress: []",
    ));
    let local = [
        LocalPod {
            ip: Ipv4Addr::new(10, 9, 9, 9),
            ip6: None,
            namespace: "x".into(),
            name: "a".into(),
        },
        // Not in the store: no labels, so not selected.
        LocalPod {
            ip: Ipv4Addr::new(10, 9, 9, 8),
            ip6: None,
            namespace: "x".into(),
            name: "new".into(),
        },
    ];
    let compiled = compile(&m, &local);
    assert!(compiled.by_ip.contains_key(&Ipv4Addr::new(10, 9, 9, 9)));
    assert!(!compiled.by_ip.contains_key(&Ipv4Addr::new(10, 9, 9, 8)));
    assert!(
        !compiled.by_ip.contains_key(&ip("x", "a")),
        "the store's address is not used"
    );
    assert_eq!(
        super::compile::known_pods(&m, &local),
        10,
        "8 remote pods and 2 local ones"
    );
    assert!(compiled.heap_bytes() > 0);
}

#[test]
fn invalid_manifests_say_which_document_and_why() {
    let cases = [
        ("  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]", "ipBlock may have no selector"),
        ("  podSelector: {}\n  ingress:\n  - ports: [{port: http, endPort: 90}]", "endPort needs a numeric port"),
        ("  podSelector: {}\n  ingress:\n  - ports: [{port: 90, endPort: 80}]", "below port"),
        ("  podSelector: {}\n  ingress:\n  - ports: [{protocol: ICMP}]", "not TCP, UDP or SCTP"),
        ("  podSelector: {matchExpressions: [{key: a, operator: In}]}", "must have some values"),
        ("  podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}", "must have no values"),
        ("  podSelector: {matchExpressions: [{key: a, operator: Near, values: [b]}]}", "unknown"),
        ("  podSelector: {}\n  ingress:\n  - from: [{}]", "needs a podSelector"),
        ("  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.1/8}}]", "host bits"),
        ("  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/24]}}]", "not within"),
        ("  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 'fd00::1/64'}}]", "host bits"),
        ("  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/64']}}]", "not within"),
        ("  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 'fd00::/64', except: ['fd01::/80']}}]", "not within"),
        ("  podSelector: {}\n  policyTypes: [Sideways]", "neither Ingress nor Egress"),
        ("  ingress: []", "podSelector"),
        ("  podSelector: {}\n  ingres: []", "ingres"),
    ];
    for (spec, needle) in cases {
        let text = format!("{NAMESPACES}{}", policy("bad", "x", spec));
        let errors = manifest::read("bad.yaml", &text, &mut PolicyModel::default()).unwrap_err();
        assert_eq!(errors.len(), 1, "{spec}: {errors:?}");
        let e = &errors[0];
        assert_eq!((e.file.as_str(), e.document), ("bad.yaml", 3), "{spec}");
        assert!(e.reason.contains(needle), "{spec}: {}", e.reason);
        assert!(e.to_string().starts_with("bad.yaml document 3: "), "{e}");
    }
    let syntax =
        manifest::read("s.yaml", "kind: Pod\n  : [", &mut PolicyModel::default()).unwrap_err();
    assert!(syntax[0].reason.contains("not YAML"), "{syntax:?}");
}

#[test]
fn other_kinds_are_skipped_and_duplicates_refused() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
    let skipped = manifest::read("k.yaml", text, &mut PolicyModel::default()).unwrap();
    let kinds: Vec<(&str, usize)> = skipped
        .iter()
        .map(|s| (s.kind.as_str(), s.document))
        .collect();
    assert_eq!(kinds, [("Service", 0), ("Deployment", 1)]);
    let twice = policy("p", "x", "  podSelector: {}") + &policy("p", "x", "  podSelector: {}");
    let mut m = PolicyModel::default();
    manifest::read("t.yaml", &twice, &mut m).unwrap();
    assert!(manifest::check_unique(&m)
        .unwrap_err()
        .contains("defined twice"));
    // A document with no kind is an error; an empty one is nothing.
    let e = manifest::read(
        "n.yaml",
        "metadata: {name: q}\n",
        &mut PolicyModel::default(),
    )
    .unwrap_err();
    assert!(e[0].reason.contains("no kind"), "{e:?}");
    assert!(
        manifest::read("e.yaml", "---\n---\n", &mut PolicyModel::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_classic_test_network_policy_example_compiles_as_documented() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/netpol");
    let read = crate::control::netpol_source::load_dir(&dir);
    assert!(read.unread.is_empty(), "{:?}", read.unread);
    assert!(read.skipped.is_empty(), "{:?}", read.skipped);
    let m = read.model;
    let p = m
        .policies
        .iter()
        .find(|p| p.name == "test-network-policy")
        .unwrap();
    assert!(p.ingress.is_some() && p.egress.is_some());
    let c = Compiler::new(&m, &[]);
    let db = c.known().find(|p| p.name == "db").unwrap();
    let rules = c.rules_for(&db);
    let ingress = rules.ingress.unwrap();
    let egress = rules.egress.unwrap();
    let v4 = |name: &str| c.known().find(|p| p.name == name).unwrap().ip.unwrap();
    let (frontend, other_ns, db) = (v4("frontend"), v4("client"), db.ip.unwrap());
    assert!(ingress.allows(frontend, db, 6, Some(6379)).is_some());
    assert!(ingress.allows(frontend, db, 6, Some(6380)).is_none());
    assert!(
        ingress.allows(other_ns, db, 6, Some(6379)).is_some(),
        "namespace project=myproject"
    );
    assert!(ingress
        .allows(Ipv4Addr::new(172, 17, 0, 5), db, 6, Some(6379))
        .is_some());
    assert!(ingress
        .allows(Ipv4Addr::new(172, 17, 1, 5), db, 6, Some(6379))
        .is_none());
    assert!(egress
        .allows(
            Ipv4Addr::new(10, 0, 0, 9),
            Ipv4Addr::new(10, 0, 0, 9),
            6,
            Some(5978)
        )
        .is_some());
    assert!(egress
        .allows(
            Ipv4Addr::new(10, 0, 1, 9),
            Ipv4Addr::new(10, 0, 1, 9),
            6,
            Some(5978)
        )
        .is_none());
}

/// A JSON document reads as the same objects, and the same errors, through the
/// JSON parser as through the YAML one.
#[test]
fn json_reads_as_yaml_does() {
    let docs = [
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "a"}}}"#,
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "x", "labels": {"app": "db"}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "sql", "containerPort": 5432}, {"containerPort": 9, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.7"}}"#,
        r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "n", "namespace": "x"},
            "spec": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]},
                     "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {}},
                                           {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}}],
                                  "ports": [{"port": "sql"}, {"protocol": "UDP", "port": 53, "endPort": 60}]}],
                     "egress": []}}"#,
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}"#,
    ];
    for doc in docs {
        let (mut y, mut j) = (PolicyModel::default(), PolicyModel::default());
        let ys = manifest::read("f", doc, &mut y).unwrap_or_else(|e| panic!("{e:?}"));
        let js = manifest::read_json("f", doc, &mut j).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(y, j, "{doc}");
        assert_eq!(ys, js, "{doc}");
    }
    for bad in [
        r#"{"apiVersion": "v2", "kind": "Pod", "metadata": {"name": "p"}}"#,
        r#"{"apiVersion": "v1", "metadata": {"name": "p"}}"#,
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "status": {"podIP": "no"}}"#,
        r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "n"},
            "spec": {"podSelector": {"bogus": 1}}}"#,
    ] {
        let y = manifest::read("f", bad, &mut PolicyModel::default()).unwrap_err();
        let j = manifest::read_json("f", bad, &mut PolicyModel::default()).unwrap_err();
        assert_eq!(y.len(), 1);
        // The same error, up to how each parser words a field it refuses.
        let head = |e: &manifest::ManifestError| e.reason.split(':').next().map(str::to_owned);
        assert_eq!(head(&y[0]), head(&j[0]), "{y:?} {j:?}");
    }
    let syntax = manifest::read_json("f", "{not json", &mut PolicyModel::default()).unwrap_err();
    assert!(syntax[0].reason.starts_with("not JSON"), "{syntax:?}");
}

#[test]
fn a_local_pod_the_store_has_not_listed_is_isolated_when_the_store_lists_every_pod() {
    let mut m = model("");
    let local = [
        LocalPod {
            ip: Ipv4Addr::new(10, 0, 1, 1),
            ip6: None,
            namespace: "x".into(),
            name: "new".into(),
        },
        LocalPod {
            ip: ip("x", "a"),
            ip6: None,
            namespace: "x".into(),
            name: "a".into(),
        },
    ];
    // A policy directory lists what its author wrote: an unlisted pod is a pod
    // with no labels, and no policy selects it here.
    assert!(compile(&m, &local).by_ip.is_empty());
    // The API server lists every pod before it runs: one it has not listed yet
    // gets nothing in and nothing out, and a listed one is as before.
    m.lists_every_pod = true;
    let compiled = compile(&m, &local);
    let rules = &compiled.by_ip[&Ipv4Addr::new(10, 0, 1, 1)];
    assert!(rules.ingress.as_ref().is_some_and(|r| r.rules.is_empty()));
    assert!(rules.egress.as_ref().is_some_and(|r| r.rules.is_empty()));
    assert_eq!(&*rules.selected_by[0].0, super::compile::UNKNOWN_POD);
    assert!(!compiled.by_ip.contains_key(&ip("x", "a")));
}
