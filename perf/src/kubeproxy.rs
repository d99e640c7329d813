//! The Service rules kube-proxy writes, in both of its modes, as text to load into a test
//! node's network namespace: [`iptables_restore`] (iptables mode, for
//! `iptables-restore --noflush`) and [`nft_ruleset`] (nftables mode, for `nft -f`), and
//! [`iptables_cleanup`] / [`nft_cleanup`] to take them out again.
//!
//! The structure follows kube-proxy's `pkg/proxy/iptables/proxier.go` and
//! `pkg/proxy/nftables/proxier.go`: the same chains, sets, maps, jumps, mark (0x4000, the
//! default `--masquerade-bit` 14), comments and per-service / per-endpoint chain names,
//! for ClusterIP and NodePort services with `Cluster` or `Local` external traffic policy.
//! Every endpoint is taken as ready; the local traffic detector is `--cluster-cidr`.
//! Left out: session affinity, ExternalIPs, LoadBalancer IPs and source ranges (the
//! `KUBE-PROXY-FIREWALL` chain and `firewall-*` map exist, empty), health-check node
//! ports, internal traffic policy `Local`, `--masquerade-all`, the canary chains, and
//! nftables mode's drop of unallocated ClusterIPs (it needs the ServiceCIDRs).
//!
//! As kube-proxy does, a service is skipped when headless (`0.0.0.0`) or on port 0, an
//! endpoint on port 0 is dropped, and a node port of 0 means none. So that the text always
//! loads, a service is also skipped when it repeats an earlier one's port name, (IP,
//! protocol, port) or (protocol, node port), and a repeated endpoint is dropped: the
//! Kubernetes API never produces those.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// A service port's L4 protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A service's `externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// Node-port traffic may go to any endpoint, and is masqueraded.
    Cluster,
    /// Node-port traffic from outside goes only to this node's endpoints, source kept.
    Local,
}

/// One backend of a service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod's IP.
    pub ip: Ipv4Addr,
    /// The pod's (target) port.
    pub port: u16,
    /// Whether the pod runs on this node.
    pub local: bool,
}

/// One port of a Kubernetes Service, with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `namespace/name`, e.g. `default/web`; chain names are derived from it.
    pub name: String,
    /// The port's name, e.g. `http` (may be empty).
    pub port_name: String,
    /// The port's protocol.
    pub protocol: Protocol,
    /// The cluster IP (`0.0.0.0` means headless: no rules).
    pub cluster_ip: Ipv4Addr,
    /// The service port.
    pub port: u16,
    /// The node port, if it is a NodePort service.
    pub node_port: Option<u16>,
    /// The external traffic policy (it applies to node-port traffic only).
    pub external_traffic_policy: TrafficPolicy,
    /// The endpoints, all taken as ready.
    pub endpoints: Vec<Endpoint>,
}

/// What kube-proxy knows about the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// kube-proxy's `--cluster-cidr`: sources inside it are pods.
    pub cluster_cidr: Ipv4Net,
    /// The node's IPs, nftables mode's `nodeport-ips` set (its default
    /// `--nodeport-addresses primary`); empty means every local address but 127.0.0.0/8.
    /// iptables mode takes node ports on every local address, its default.
    pub node_ips: Vec<Ipv4Addr>,
}

/// A service port checked and named as kube-proxy's `servicePortInfo` would be.
struct Svc<'a> {
    svc: &'a Service,
    /// `ServicePortName.String()`: `namespace/name:port` (`namespace/name` if unnamed).
    spn: String,
    /// `spn` made safe for a quoted comment.
    label: String,
    /// `tcp` or `udp`.
    p: &'static str,
    eps: Vec<&'a Endpoint>,
    node_port: Option<u16>,
    /// External traffic policy `Local` on a node-port service.
    local_policy: bool,
}

impl Svc<'_> {
    fn has_eps(&self) -> bool {
        !self.eps.is_empty()
    }
    fn local_eps(&self) -> Vec<&Endpoint> {
        self.eps.iter().copied().filter(|e| e.local).collect()
    }
    /// Whether external (node-port) traffic has an endpoint to go to.
    fn has_ext_eps(&self) -> bool {
        self.eps.iter().any(|e| e.local || !self.local_policy)
    }
    /// `KUBE-<kind>-<hash of port name and protocol>`.
    fn ipt(&self, kind: &str) -> String {
        format!("KUBE-{kind}-{}", hash16(&format!("{}{}", self.spn, self.p)))
    }
    fn sep(&self, ep: &Endpoint) -> String {
        format!(
            "KUBE-SEP-{}",
            hash16(&format!("{}{}{}:{}", self.spn, self.p, ep.ip, ep.port))
        )
    }
    /// nftables mode's `servicePortChainNameBase`: `HASH-namespace/name/proto/port`.
    fn nft_base(&self) -> String {
        hash_and_truncate(&format!(
            "{}/{}/{}",
            self.svc.name, self.p, self.svc.port_name
        ))
    }
    fn nft_ep(&self, ep: &Endpoint) -> String {
        let (s, p) = (self.svc, self.p);
        let name = format!("{}/{p}/{}__{}/{}", s.name, s.port_name, ep.ip, ep.port);
        format!("endpoint-{}", hash_and_truncate(&name))
    }
}

/// The service ports kube-proxy would program, in input order (see the module docs).
fn plan(services: &[Service]) -> Vec<Svc<'_>> {
    let (mut names, mut ips, mut node_ports) = (HashSet::new(), HashSet::new(), HashSet::new());
    let mut out = Vec::new();
    for svc in services {
        let p = match svc.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let spn = match svc.port_name.as_str() {
            "" => svc.name.clone(),
            port => format!("{}:{port}", svc.name),
        };
        let node_port = svc.node_port.filter(|n| *n != 0);
        if svc.cluster_ip.is_unspecified()
            || svc.port == 0
            || names.contains(&(spn.clone(), p))
            || ips.contains(&(svc.cluster_ip, p, svc.port))
            || node_port.is_some_and(|n| node_ports.contains(&(p, n)))
        {
            continue;
        }
        names.insert((spn.clone(), p));
        ips.insert((svc.cluster_ip, p, svc.port));
        node_ports.extend(node_port.map(|n| (p, n)));
        let mut seen = HashSet::new();
        let eps = (svc.endpoints.iter())
            .filter(|e| e.port != 0 && seen.insert((e.ip, e.port)))
            .collect();
        let local_policy =
            node_port.is_some() && svc.external_traffic_policy == TrafficPolicy::Local;
        let label = clean(&spn, 180);
        out.push(Svc {
            svc,
            spn,
            label,
            p,
            eps,
            node_port,
            local_policy,
        });
    }
    out
}

/// A 16-character base32 (`A-Z2-7`) hash of `input`. Real kube-proxy takes the first 16
/// characters of base32(sha256(input)); there is no sha256 in this crate, so this is two
/// FNV-1a 64-bit passes: names differ from a real node's, but are as well-formed and, for
/// test-sized inputs, as unique.
fn hash16(input: &str) -> String {
    fn fnv1a(basis: u64, bytes: &[u8]) -> u64 {
        (bytes.iter()).fold(basis, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    }
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let h1 = fnv1a(0xcbf2_9ce4_8422_2325, input.as_bytes());
    let h2 = fnv1a(h1.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15, input.as_bytes());
    // 80 bits (h1, then the top 16 bits of h2), 5 a character, most significant first.
    let bits = (u128::from(h1) << 16) | u128::from(h2 >> 48);
    (0..16)
        .map(|i| char::from(ALPHABET[((bits >> (75 - 5 * i)) & 31) as usize]))
        .collect()
}

/// nftables mode's `hashAndTruncate`: `HASH8-name`, at most 240 characters. Characters
/// an nft chain name may not hold (it allows `A-Za-z0-9_./-`) become `_`.
fn hash_and_truncate(name: &str) -> String {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-');
    let safe: String = name.chars().map(|c| if ok(c) { c } else { '_' }).collect();
    let mut out = format!("{}-{safe}", &hash16(name)[..8]);
    if out.len() > 240 {
        out.truncate(237);
        out.push_str("...");
    }
    out
}

/// `s` without quotes, backslashes or control characters, in at most `max` bytes.
fn clean(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s
        .chars()
        .filter(|c| !matches!(c, '"' | '\\') && !c.is_control())
    {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// `-m comment --comment "<text>"`.
fn cmt(text: &str) -> String {
    format!("-m comment --comment \"{}\"", clean(text, 250))
}

/// kube-proxy's jumps from the built-in filter chains, in its order
/// (`iptablesJumpChains`, then the kubelet duplicates); it prepends each (`-I`).
#[rustfmt::skip]
const FILTER_JUMPS: &[&str] = &[
    "INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    "FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    "INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS",
    "FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    "OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    "FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
    "INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
    "OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
    "FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
    "INPUT -j KUBE-FIREWALL",
    "OUTPUT -j KUBE-FIREWALL",
];

/// kube-proxy's jumps from the built-in nat chains, in its order.
#[rustfmt::skip]
const NAT_JUMPS: &[&str] = &[
    "OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    "PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    "POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
];

/// kube-proxy's fixed rules, by table: filter first.
#[rustfmt::skip]
const FIXED: [&[&str]; 2] = [&[
    "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
], &[
    "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
    "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
    "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
    "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
]];

/// kube-proxy's rules written after the services', by table: filter first.
#[rustfmt::skip]
const LAST: [&[&str]; 2] = [&[
    "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
    "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
    "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
], &[
    "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
]];

/// One iptables table as kube-proxy builds it: chain names, then rules.
struct Table {
    chains: Vec<String>,
    rules: Vec<String>,
}

impl Table {
    fn new(chains: &[&str], fixed: &[&str]) -> Table {
        let owned = |l: &[&str]| l.iter().map(|c| c.to_string()).collect();
        Table {
            chains: owned(chains),
            rules: owned(fixed),
        }
    }
}

/// kube-proxy's iptables filter and nat tables for `services`, `cidr` being the cluster
/// CIDR (the built-in chains' jumps are [`FILTER_JUMPS`] and [`NAT_JUMPS`]).
fn ipt_tables(cidr: Ipv4Net, services: &[Service]) -> (Table, Table) {
    let filter_top = [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
        "KUBE-FIREWALL",
    ];
    let mut filter = Table::new(&filter_top, FIXED[0]);
    let nat_top = [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ];
    let mut nat = Table::new(&nat_top, FIXED[1]);
    for s in plan(services) {
        ipt_service(&s, cidr, &mut filter.rules, &mut nat);
    }
    filter.rules.extend(LAST[0].iter().map(|r| r.to_string()));
    nat.rules.extend(LAST[1].iter().map(|r| r.to_string()));
    (filter, nat)
}

/// One service port's rules, as kube-proxy's `syncProxyRules` loop body writes them.
fn ipt_service(s: &Svc<'_>, cidr: Ipv4Net, filter: &mut Vec<String>, nat: &mut Table) {
    let (p, name) = (s.p, &s.label);
    let [svc, svl, ext] = ["SVC", "SVL", "EXT"].map(|kind| s.ipt(kind));
    let dst = format!(
        "-m {p} -p {p} -d {} --dport {}",
        s.svc.cluster_ip, s.svc.port
    );
    let cluster_ip = cmt(&format!("{name} cluster IP"));
    if s.has_eps() {
        nat.rules
            .push(format!("-A KUBE-SERVICES {cluster_ip} {dst} -j {svc}"));
    } else {
        let c = cmt(&format!("{name} has no endpoints"));
        filter.push(format!("-A KUBE-SERVICES {c} {dst} -j REJECT"));
    }
    if let Some(np) = s.node_port {
        let to_np = format!("-m {p} -p {p} --dport {np}");
        if s.has_eps() {
            nat.rules
                .push(format!("-A KUBE-NODEPORTS {} {to_np} -j {ext}", cmt(name)));
        }
        if !s.has_ext_eps() {
            let (why, verdict) = match s.has_eps() {
                true => ("no local endpoints", "DROP"),
                false => ("no endpoints", "REJECT"),
            };
            let c = cmt(&format!("{name} has {why}"));
            let m = "-m addrtype --dst-type LOCAL";
            filter.push(format!(
                "-A KUBE-EXTERNAL-SERVICES {c} {m} {to_np} -j {verdict}"
            ));
        }
    }
    if !s.has_eps() {
        return; // no nat chains at all for a service without endpoints
    }
    let masq = format!("-A {svc} {cluster_ip} {dst} ! -s {cidr} -j KUBE-MARK-MASQ");
    nat.rules.push(masq);
    if s.node_port.is_some() {
        nat.chains.push(ext.clone());
        let c = |what: &str| cmt(&format!("{what} {name} external destinations"));
        if !s.local_policy {
            let masq = c("masquerade traffic for");
            nat.rules.push(format!("-A {ext} {masq} -j KUBE-MARK-MASQ"));
        } else {
            let local = "-m addrtype --src-type LOCAL";
            nat.rules.extend([
                format!("-A {ext} {} -s {cidr} -j {svc}", c("pod traffic for")),
                format!(
                    "-A {ext} {} {local} -j KUBE-MARK-MASQ",
                    c("masquerade LOCAL traffic for")
                ),
                format!("-A {ext} {} {local} -j {svc}", c("route LOCAL traffic for")),
            ]);
        }
        if s.has_ext_eps() {
            nat.rules.push(format!(
                "-A {ext} -j {}",
                if s.local_policy { &svl } else { &svc }
            ));
        }
    }
    nat.chains.push(svc.clone());
    ipt_dispatch(s, &svc, &s.eps, &mut nat.rules);
    let local = s.local_eps();
    if s.local_policy && !local.is_empty() {
        nat.chains.push(svl.clone());
        ipt_dispatch(s, &svl, &local, &mut nat.rules);
    }
    for ep in &s.eps {
        let (sep, c) = (s.sep(ep), cmt(name));
        nat.rules
            .push(format!("-A {sep} {c} -s {} -j KUBE-MARK-MASQ", ep.ip));
        let dnat = format!("-j DNAT --to-destination {}:{}", ep.ip, ep.port);
        nat.rules.push(format!("-A {sep} {c} -m {p} -p {p} {dnat}"));
        nat.chains.push(sep);
    }
}

/// kube-proxy's `writeServiceToEndpointRules`: each endpoint but the last taken with
/// probability 1/(endpoints left), formatted as `%0.10f`.
fn ipt_dispatch(s: &Svc<'_>, chain: &str, eps: &[&Endpoint], rules: &mut Vec<String>) {
    for (i, ep) in eps.iter().enumerate() {
        let c = cmt(&format!("{} -> {}:{}", s.label, ep.ip, ep.port));
        let stat = match eps.len() - i {
            1 => String::new(),
            left => format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / left as f64
            ),
        };
        rules.push(format!("-A {chain} {c}{stat} -j {}", s.sep(ep)));
    }
}

/// The `*filter` and `*nat` input kube-proxy's iptables mode restores for `services` on
/// `node` (its defaults: `--masquerade-bit 14`, localhost node ports allowed, node ports
/// on every local address), with the jumps from the built-in chains as `-I` lines. Load
/// it with `iptables-restore --noflush` into a namespace that has none of it (loading it
/// twice doubles the `-I` jumps); [`iptables_cleanup`] takes it out.
pub fn iptables_restore(node: &Node, services: &[Service]) -> String {
    let (filter, nat) = ipt_tables(node.cluster_cidr.trunc(), services);
    let mut out = Vec::new();
    for (name, table, jumps) in [("filter", filter, FILTER_JUMPS), ("nat", nat, NAT_JUMPS)] {
        out.push(format!("*{name}"));
        out.extend(table.chains.iter().map(|c| format!(":{c} - [0:0]")));
        out.extend(jumps.iter().map(|j| format!("-I {j}")));
        out.extend(table.rules);
        out.push("COMMIT".to_owned());
    }
    out.join("\n") + "\n"
}

/// An `iptables-restore --noflush` input undoing [`iptables_restore`] for the same
/// `services`: it flushes every chain that declared, deletes the jumps from the built-in
/// chains (`-D`), then the chains (`-X`). Should any of those be missing it fails, and
/// changes nothing.
pub fn iptables_cleanup(services: &[Service]) -> String {
    let (filter, nat) = ipt_tables(Ipv4Net::from(Ipv4Addr::UNSPECIFIED), services);
    let mut out = Vec::new();
    for (name, table, jumps) in [("filter", filter, FILTER_JUMPS), ("nat", nat, NAT_JUMPS)] {
        out.push(format!("*{name}"));
        out.extend(table.chains.iter().map(|c| format!(":{c} - [0:0]")));
        out.extend(jumps.iter().map(|j| format!("-D {j}")));
        out.extend(table.chains.iter().map(|c| format!("-X {c}")));
        out.push("COMMIT".to_owned());
    }
    out.join("\n") + "\n"
}

/// `<ip> . <proto> . <port> : verdict`, the key of kube-proxy's IP verdict maps.
const IP_VMAP: &str = "ipv4_addr . inet_proto . inet_service : verdict";

/// kube-proxy's nftables sets and maps: (kind, name, type, comment).
#[rustfmt::skip]
const NFT_SETS: &[(&str, &str, &str, &str)] = &[
    ("set", "cluster-ips", "ipv4_addr", "Active ClusterIPs"),
    ("set", "nodeport-ips", "ipv4_addr", "IPs that accept NodePort traffic"),
    ("map", "no-endpoint-services", IP_VMAP, "vmap to drop or reject packets to services with no endpoints"),
    ("map", "no-endpoint-nodeports", "inet_proto . inet_service : verdict", "vmap to drop or reject packets to service nodeports with no endpoints"),
    ("map", "firewall-ips", IP_VMAP, "destinations that are subject to LoadBalancerSourceRanges"),
    ("map", "service-ips", IP_VMAP, "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    ("map", "service-nodeports", "inet_proto . inet_service : verdict", "NodePort traffic"),
];

/// kube-proxy's helper chains (written before what jumps to them).
#[rustfmt::skip]
const NFT_HELPERS: &[(&str, &[&str])] = &[
    ("mark-for-masquerade", &["mark set mark or 0x4000"]),
    ("masquerading", &["mark and 0x4000 == 0 return", "mark set mark xor 0x4000", "masquerade fully-random"]),
    ("reject-chain", &["comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\"", "reject"]),
];

/// kube-proxy's base chains: (name, type, hook, priority). kube-proxy's priorities are
/// `dstnat - 10`, `dstnat + 10`, `dstnat` and `srcnat`; nft 1.0.6 (Debian 12) refuses
/// `dstnat` off prerouting, so they are written as the numbers they stand for.
#[rustfmt::skip]
const NFT_BASE: &[(&str, &str, &str, &str)] = &[
    ("filter-prerouting", "filter", "prerouting", "-110"),
    ("filter-input", "filter", "input", "-110"),
    ("filter-forward", "filter", "forward", "-110"),
    ("filter-output", "filter", "output", "-110"),
    ("filter-output-post-dnat", "filter", "output", "-90"),
    ("nat-prerouting", "nat", "prerouting", "-100"),
    ("nat-output", "nat", "output", "-100"),
    ("nat-postrouting", "nat", "postrouting", "100"),
];

/// kube-proxy's `nftablesJumpChains`: (from, rule), in its order.
#[rustfmt::skip]
const NFT_JUMPS: &[(&str, &str)] = &[
    ("filter-input", "ct state new jump nodeport-endpoints-check"),
    ("filter-input", "ct state new jump service-endpoints-check"),
    ("filter-forward", "ct state new jump service-endpoints-check"),
    ("filter-output", "ct state new jump service-endpoints-check"),
    ("filter-prerouting", "ct state new jump firewall-check"),
    ("filter-output", "ct state new jump firewall-check"),
    ("nat-output", "jump services"),
    ("nat-prerouting", "jump services"),
    ("nat-postrouting", "jump masquerading"),
    ("filter-forward", "ct state new jump cluster-ips-check"),
    ("filter-output-post-dnat", "ct state new jump cluster-ips-check"),
];

/// What the services add to kube-proxy's nftables table.
#[derive(Default)]
struct Nft {
    /// Per-service chains, each before any chain that jumps to it.
    chains: Vec<(String, Vec<String>)>,
    /// Elements, by set or map name.
    elements: HashMap<&'static str, Vec<String>>,
}

impl Nft {
    /// Adds `element` to `set` unless it is there (a multi-port service's cluster IP).
    fn add(&mut self, set: &'static str, element: String) {
        let elements = self.elements.entry(set).or_default();
        if !elements.contains(&element) {
            elements.push(element);
        }
    }
}

/// `\tchain <name> {`, `\t\t<line>`s and `\t}`.
fn nft_chain<'a>(out: &mut Vec<String>, name: &str, lines: impl IntoIterator<Item = &'a str>) {
    out.push(format!("\tchain {name} {{"));
    out.extend(lines.into_iter().map(|l| format!("\t\t{l}")));
    out.push("\t}".to_owned());
}

/// The `nft -f` input of kube-proxy's nftables mode for `services` on `node`: all of
/// `table ip kube-proxy`. It starts with `add table` and `delete table`, so it replaces
/// an earlier table in the same transaction, and may be loaded again.
pub fn nft_ruleset(node: &Node, services: &[Service]) -> String {
    let cidr = node.cluster_cidr.trunc();
    let mut nft = Nft::default();
    for s in plan(services) {
        nft_service(&s, cidr, &mut nft);
    }
    let has_ips = !node.node_ips.is_empty();
    for ip in node.node_ips.iter().filter(|ip| !ip.is_loopback()) {
        nft.add("nodeport-ips", ip.to_string()); // kube-proxy skips loopback ones
    }
    let mut out = vec!["add table ip kube-proxy\ndelete table ip kube-proxy".to_owned()];
    out.push("table ip kube-proxy {\n\tcomment \"rules for kube-proxy\"".to_owned());
    for (name, lines) in NFT_HELPERS {
        nft_chain(&mut out, name, lines.iter().copied());
    }
    for (name, rules) in &nft.chains {
        nft_chain(&mut out, name, rules.iter().map(String::as_str));
    }
    for (kind, name, ty, comment) in NFT_SETS.iter().filter(|s| has_ips || s.1 != "nodeport-ips") {
        let head = format!("\t{kind} {name} {{\n\t\ttype {ty}");
        out.push(format!("{head}\n\t\tcomment \"{comment}\""));
        if let Some(elements) = nft.elements.get(name) {
            out.push(format!("\t\telements = {{ {} }}", elements.join(", ")));
        }
        out.push("\t}".to_owned());
    }
    let vmap = |m: &str| format!("ip daddr . meta l4proto . th dport vmap @{m}");
    let (np_dst, fib) = match has_ips {
        true => ("ip daddr @nodeport-ips", ""),
        false => ("ip daddr != 127.0.0.0/8", "fib daddr type local "),
    };
    let np_vmap = |m: &str| format!("{np_dst} meta l4proto . th dport vmap @{m}");
    let reject =
        "ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"";
    let services = [
        vmap("service-ips"),
        fib.to_owned() + &np_vmap("service-nodeports"),
    ];
    nft_chain(&mut out, "cluster-ips-check", [reject]);
    nft_chain(
        &mut out,
        "service-endpoints-check",
        [&*vmap("no-endpoint-services")],
    );
    nft_chain(
        &mut out,
        "nodeport-endpoints-check",
        [&*np_vmap("no-endpoint-nodeports")],
    );
    nft_chain(&mut out, "firewall-check", [&*vmap("firewall-ips")]);
    nft_chain(&mut out, "services", services.iter().map(String::as_str));
    for (name, ty, hook, prio) in NFT_BASE {
        let head = format!("type {ty} hook {hook} priority {prio}; policy accept;");
        let jumps = NFT_JUMPS.iter().filter(|j| j.0 == *name).map(|j| j.1);
        nft_chain(&mut out, name, std::iter::once(head.as_str()).chain(jumps));
    }
    out.push("}\n".to_owned());
    out.join("\n")
}

/// One service port's chains and elements, as kube-proxy's nftables `syncProxyRules`
/// loop body makes them.
fn nft_service(s: &Svc<'_>, cidr: Ipv4Net, nft: &mut Nft) {
    let (p, ip, port) = (s.p, s.svc.cluster_ip, s.svc.port);
    let base = s.nft_base();
    let [svc, local, ext] = ["service", "local", "external"].map(|kind| format!("{kind}-{base}"));
    let comment = format!("comment \"{}\"", clean(&s.label, 120));
    nft.add("cluster-ips", ip.to_string());
    if s.has_eps() {
        nft.add("service-ips", format!("{ip} . {p} . {port} : goto {svc}"));
    } else {
        let element = format!("{ip} . {p} . {port} {comment} : goto reject-chain");
        nft.add("no-endpoint-services", element);
    }
    if let Some(np) = s.node_port {
        if s.has_eps() {
            nft.add("service-nodeports", format!("{p} . {np} : goto {ext}"));
        }
        if !s.has_ext_eps() {
            let why = if s.has_eps() {
                "drop"
            } else {
                "goto reject-chain"
            };
            nft.add(
                "no-endpoint-nodeports",
                format!("{p} . {np} {comment} : {why}"),
            );
        }
    }
    if !s.has_eps() {
        return;
    }
    for ep in &s.eps {
        let masq = format!("ip saddr {} jump mark-for-masquerade", ep.ip);
        let dnat = format!("meta l4proto {p} dnat to {}:{}", ep.ip, ep.port);
        nft.chains.push((s.nft_ep(ep), vec![masq, dnat]));
    }
    let masq =
        format!("ip daddr {ip} {p} dport {port} ip saddr != {cidr} jump mark-for-masquerade");
    let chains = &mut nft.chains;
    chains.push((svc.clone(), vec![masq, nft_dispatch(s, &s.eps)]));
    let local_eps = s.local_eps();
    if s.local_policy && !local_eps.is_empty() {
        chains.push((local.clone(), vec![nft_dispatch(s, &local_eps)]));
    }
    if s.node_port.is_some() {
        let mut rules = match s.local_policy {
            false => vec!["jump mark-for-masquerade".to_owned()],
            true => vec![
                format!("ip saddr {cidr} goto {svc} comment \"short-circuit pod traffic\""),
                "fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\""
                    .to_owned(),
                format!("fib saddr type local goto {svc} comment \"short-circuit local traffic\""),
            ],
        };
        if s.has_ext_eps() {
            rules.push(format!("goto {}", if s.local_policy { local } else { svc }));
        }
        chains.push((ext, rules));
    }
}

/// kube-proxy's nftables load balancing: `numgen random mod N vmap { i : goto ... }`.
fn nft_dispatch(s: &Svc<'_>, eps: &[&Endpoint]) -> String {
    let arms: Vec<String> = (eps.iter().enumerate())
        .map(|(i, ep)| format!("{i} : goto {}", s.nft_ep(ep)))
        .collect();
    let n = eps.len();
    format!("numgen random mod {n} vmap {{ {} }}", arms.join(", "))
}

/// The `nft -f` input removing what [`nft_ruleset`] installed, `table ip kube-proxy`, as
/// kube-proxy's cleanup does (`add` first, so that it also succeeds when there is none).
pub fn nft_cleanup() -> String {
    "add table ip kube-proxy\ndelete table ip kube-proxy\n".to_owned()
}

#[cfg(test)]
mod tests {
    use super::TrafficPolicy::{Cluster, Local};
    use super::*;

    fn ep(last: u8, local: bool) -> Endpoint {
        let ip = Ipv4Addr::new(10, 244, 1, last);
        Endpoint {
            ip,
            port: 8080,
            local,
        }
    }

    /// A TCP port 80 `http` service at 10.96.0.`ip`; `eps` are (10.244.1.x, local).
    fn service(name: &str, ip: u8, np: u16, policy: TrafficPolicy, eps: &[(u8, bool)]) -> Service {
        Service {
            name: name.to_owned(),
            port_name: "http".to_owned(),
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::new(10, 96, 0, ip),
            port: 80,
            node_port: Some(np).filter(|n| *n != 0),
            external_traffic_policy: policy,
            endpoints: eps.iter().map(|(last, local)| ep(*last, *local)).collect(),
        }
    }

    fn node() -> Node {
        let (cluster_cidr, node_ips) = (
            "10.244.0.0/16".parse().unwrap(),
            vec![[192, 168, 0, 10].into()],
        );
        Node {
            cluster_cidr,
            node_ips,
        }
    }

    fn sample() -> Vec<Service> {
        vec![
            service(
                "default/web",
                10,
                30080,
                Cluster,
                &[(1, true), (2, false), (3, false)],
            ),
            service(
                "default/local",
                11,
                30081,
                Local,
                &[(4, true), (5, false), (6, true)],
            ),
            service("default/empty", 12, 30082, Cluster, &[]),
            service("default/away", 13, 30083, Local, &[(7, false)]),
            service("kube-system/dns", 14, 0, Cluster, &[(8, false)]),
        ]
    }

    /// The lines of `table` (`filter` or `nat`) in an iptables-restore text.
    fn table<'a>(text: &'a str, table: &str) -> Vec<&'a str> {
        let start = format!("*{table}");
        let after = text.lines().skip_while(|l| *l != start).skip(1);
        after.take_while(|l| *l != "COMMIT").collect()
    }

    fn declared<'a>(lines: &[&'a str]) -> Vec<&'a str> {
        (lines.iter())
            .filter_map(|l| l.strip_prefix(':')?.split(' ').next())
            .collect()
    }

    fn rules<'a>(lines: &[&'a str], chain: &str) -> Vec<&'a str> {
        let prefix = format!("-A {chain} ");
        (lines.iter().copied())
            .filter(|l| l.starts_with(&prefix))
            .collect()
    }

    fn target(rule: &str) -> &str {
        (rule.rsplit(" -j ").next())
            .and_then(|t| t.split(' ').next())
            .unwrap_or("")
    }

    #[test]
    fn iptables_jumps_go_to_declared_chains() {
        let text = iptables_restore(&node(), &sample());
        let builtin = "ACCEPT DROP REJECT RETURN MARK MASQUERADE DNAT";
        let hooks = "INPUT OUTPUT FORWARD PREROUTING POSTROUTING";
        for name in ["filter", "nat"] {
            let lines = table(&text, name);
            let chains = declared(&lines);
            assert_eq!(chains.len(), chains.iter().collect::<HashSet<_>>().len());
            for rule in lines.iter().filter(|l| l.starts_with('-')) {
                let (from, to) = (rule.split(' ').nth(1).unwrap(), target(rule));
                assert!(
                    chains.contains(&to) || builtin.split(' ').any(|b| b == to),
                    "{rule}"
                );
                assert!(
                    chains.contains(&from) || hooks.split(' ').any(|h| h == from),
                    "{rule}"
                );
            }
        }
        let (filter, nat) = (table(&text, "filter"), table(&text, "nat"));
        let jump =
            r#"-I PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#;
        assert!(nat.contains(&jump));
        let post = rules(&nat, "KUBE-POSTROUTING");
        assert_eq!(
            post[0],
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"
        );
        assert!(post[2].ends_with("-j MASQUERADE --random-fully"));
        assert_eq!(
            rules(&nat, "KUBE-MARK-MASQ"),
            ["-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]
        );
        let last = rules(&nat, "KUBE-SERVICES").pop().unwrap();
        assert!(last.ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"));
        let invalid = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP";
        assert_eq!(rules(&filter, "KUBE-FORWARD")[0], invalid);
        assert!(rules(&filter, "KUBE-FIREWALL")[0].contains("-d 127.0.0.0/8 ! -s 127.0.0.0/8"));
        assert!(text.ends_with("COMMIT\n"));
    }

    #[test]
    fn probabilities_are_one_over_endpoints_left() {
        let services = sample();
        let text = iptables_restore(&node(), &services);
        let all = rules(&table(&text, "nat"), &plan(&services)[0].ipt("SVC"));
        assert!(all[0].ends_with("-d 10.96.0.10 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"));
        assert!(all[1].contains("--probability 0.3333333333 "));
        assert!(all[2].contains("--probability 0.5000000000 "));
        assert!(!all[3].contains("statistic") && all.len() == 4);
    }

    #[test]
    fn chain_names_are_well_formed_and_unique() {
        let text = iptables_restore(&node(), &sample());
        let chains = declared(&table(&text, "nat"));
        let hashed: Vec<_> = chains.iter().filter(|c| c.len() == 25).collect();
        // web: SVC EXT 3 SEP; local: SVC SVL EXT 3 SEP; away: SVC EXT SEP; dns: SVC SEP.
        assert_eq!(hashed.len(), 5 + 6 + 3 + 2);
        let base32 = |b: u8| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b);
        assert!(hashed.iter().all(|c| c[9..].bytes().all(base32)));
        let seps: HashSet<_> = hashed
            .iter()
            .filter(|c| c.starts_with("KUBE-SEP-"))
            .collect();
        assert_eq!(seps.len(), 3 + 3 + 1 + 1);
        assert_ne!(hash16("default/web:httptcp"), hash16("default/web:httpudp"));
    }

    #[test]
    fn local_policy_uses_only_local_endpoints() {
        let services = sample();
        let s = &plan(&services)[1];
        let text = iptables_restore(&node(), &services);
        let nat = table(&text, "nat");
        let [svc, svl, ext] = ["SVC", "SVL", "EXT"].map(|kind| s.ipt(kind));
        let local: Vec<_> = rules(&nat, &svl).into_iter().map(target).collect();
        assert_eq!(local, [s.sep(&ep(4, true)), s.sep(&ep(6, true))]);
        let ext_rules = rules(&nat, &ext);
        assert!(ext_rules[0].ends_with(&format!("-s 10.244.0.0/16 -j {svc}")));
        assert!(ext_rules[1].ends_with("-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"));
        assert!(ext_rules[2].ends_with(&format!("-m addrtype --src-type LOCAL -j {svc}")));
        assert_eq!(ext_rules[3], format!("-A {ext} -j {svl}"));

        let nft = nft_ruleset(&node(), &services);
        let head = format!("\tchain local-{} {{", s.nft_base());
        let body = nft.lines().skip_while(|l| *l != head).nth(1).unwrap();
        assert!(body.starts_with("\t\tnumgen random mod 2 vmap"), "{body}");
        assert!(body.contains(&s.nft_ep(&ep(4, true))) && body.contains(&s.nft_ep(&ep(6, true))));
    }

    #[test]
    fn services_without_endpoints_are_rejected() {
        let text = iptables_restore(&node(), &sample());
        let filter = table(&text, "filter");
        let reject = rules(&filter, "KUBE-SERVICES");
        assert!(reject.len() == 1 && reject[0].contains("default/empty:http has no endpoints"));
        assert!(reject[0].ends_with("-d 10.96.0.12 --dport 80 -j REJECT"));
        let external = rules(&filter, "KUBE-EXTERNAL-SERVICES");
        assert!(external[0].ends_with("--dport 30082 -j REJECT"));
        // Local policy, no endpoint here: node-port traffic from outside is dropped.
        assert!(external[1].contains("has no local endpoints") && external[1].ends_with("-j DROP"));
        let nat = table(&text, "nat");
        assert!(!nat
            .iter()
            .any(|l| l.contains("10.96.0.12") || l.contains("30082")));

        let nft = nft_ruleset(&node(), &sample());
        let comment = "comment \"default/empty:http\" : goto reject-chain";
        assert!(nft.contains(&format!("10.96.0.12 . tcp . 80 {comment}")));
        assert!(nft.contains(&format!("tcp . 30082 {comment}")));
        assert!(nft.contains("tcp . 30083 comment \"default/away:http\" : drop"));
    }

    #[test]
    fn nft_jumps_go_to_earlier_chains() {
        let nft = nft_ruleset(&node(), &sample());
        let mut chains = HashSet::new();
        for line in nft.lines().map(str::trim) {
            if let Some(name) = line
                .strip_prefix("chain ")
                .and_then(|l| l.strip_suffix(" {"))
            {
                assert!(chains.insert(name), "{name} twice");
            }
            let words: Vec<_> = line.split([' ', ',', '}']).collect();
            for pair in words.windows(2).filter(|w| matches!(w[0], "jump" | "goto")) {
                assert!(
                    chains.contains(pair[1]),
                    "{line}: {} is no earlier chain",
                    pair[1]
                );
            }
        }
        assert!(chains.contains("filter-forward") && chains.contains("nat-postrouting"));
        assert!(nft.contains("elements = { 192.168.0.10 }"));
        assert!(
            nft.contains("ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports")
        );
        assert!(nft.contains("\t\tmeta l4proto tcp dnat to 10.244.1.1:8080\n"));
        assert!(nft.contains("-default/web/tcp/http {"));
    }

    #[test]
    fn cleanup_removes_everything_installed() {
        let (text, cleanup) = (
            iptables_restore(&node(), &sample()),
            iptables_cleanup(&sample()),
        );
        for name in ["filter", "nat"] {
            let (installed, undo) = (table(&text, name), table(&cleanup, name));
            let removed: Vec<_> = undo.iter().filter_map(|l| l.strip_prefix("-X ")).collect();
            assert_eq!(declared(&installed), removed);
            let count = |lines: &[&str], op| lines.iter().filter(|l| l.starts_with(op)).count();
            assert_eq!(count(&installed, "-I "), count(&undo, "-D "));
        }
        assert!(nft_cleanup().contains("delete table ip kube-proxy"));
    }

    #[test]
    fn odd_input_is_skipped_or_made_safe() {
        let mut services = sample();
        services[4].cluster_ip = Ipv4Addr::UNSPECIFIED; // dns becomes headless
        services.push(service("default/port0", 22, 0, Cluster, &[(9, true)]));
        services[5].port = 0;
        services.push(service("default/web", 20, 0, Cluster, &[])); // repeated port name
        services.push(service(
            "x/\"quoted\" name\n",
            21,
            0,
            Local,
            &[(1, true), (1, true)],
        ));
        let text = iptables_restore(&node(), &services);
        assert!(!text.contains("10.96.0.20") && !text.contains("10.96.0.14"));
        assert!(!text.contains("10.96.0.22") && text.contains("x/quoted name:http cluster IP"));
        assert_eq!(
            text.matches("-j DNAT --to-destination 10.244.1.1:8080")
                .count(),
            2
        );
        let nft = nft_ruleset(
            &Node {
                node_ips: vec![],
                ..node()
            },
            &services,
        );
        assert!(nft.contains("-x/_quoted__name_/tcp/http {") && !nft.contains("nodeport-ips"));
        assert!(nft.contains("fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto"));
        assert!(nft_ruleset(&node(), &[]).contains("\tchain services {"));
        assert!(iptables_restore(&node(), &[]).contains("*nat"));
        assert_eq!(hash_and_truncate(&"a".repeat(300)).len(), 240);
        let mut https = service("default/web", 10, 30443, Cluster, &[(1, true)]);
        (https.port_name, https.port) = ("https".to_owned(), 443);
        let nft = nft_ruleset(&node(), &[sample().remove(0), https]);
        assert!(
            nft.contains("elements = { 10.96.0.10 }") && nft.contains("10.96.0.10 . tcp . 443")
        );
    }
}
