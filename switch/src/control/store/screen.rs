//! The last check a store's nodes pass before they become peers, whatever store
//! they came from (etcd, the Kubernetes API, the peers file, the saved view): a
//! node that cannot work, or that claims what this node or an earlier node holds,
//! is left out with why, and the rest are used. So no record, however hostile or
//! stale, can make the forwarding snapshot impossible to build and freeze the node
//! on an old view.
//!
//! Left-out nodes are logged once per reason, and at most [`Quiet::PER_MINUTE`]
//! lines a minute: a writer churning bad records cannot flood the log.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};

use super::{check_node, Claims, NodeEntry, MAX_NAME_LEN};
use crate::mac::MacAddr;

/// This node as it runs, whatever a store says of it: what no peer may also hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    /// Its name: a store's entry of that name is this node, not a peer.
    pub name: String,
    /// The pod subnet it serves.
    pub subnet: Ipv4Net,
    /// The underlay address it binds.
    pub underlay: Ipv4Addr,
    /// Its VTEP MAC, also its sleeve sender id.
    pub vtep_mac: MacAddr,
}

impl Own {
    /// This node as a store's entry: what it holds, for [`Claims`].
    pub fn entry(&self) -> NodeEntry {
        NodeEntry {
            name: self.name.clone(),
            underlay_ip: self.underlay,
            pod_subnet: self.subnet,
            pod_subnet_v6: None,
            vtep_mac: self.vtep_mac,
            mode: None,
            direct_routing: None,
            public_key: None,
        }
    }
}

/// A node left out: its name, and why.
pub type LeftOut = (String, String);

/// Why peer `n` cannot be used beside this node, if it cannot.
fn against_own(own: &Own, n: &NodeEntry) -> Option<String> {
    let s = n.pod_subnet;
    if s.contains(&own.subnet) || own.subnet.contains(&s) {
        Some(format!(
            "its subnet {s} overlaps this node's {}",
            own.subnet
        ))
    } else if n.underlay_ip == own.underlay {
        Some(format!(
            "its underlay address {} is this node's",
            own.underlay
        ))
    } else if n.vtep_mac == own.vtep_mac {
        Some(format!("its VTEP MAC {} is this node's", own.vtep_mac))
    } else {
        None
    }
}

/// The nodes of `nodes` that can work in `cluster`, in their order (a store lists
/// the oldest first, and the first of two that claim the same thing keeps it), and
/// those left out with why. A node is left out if its name is empty, too long or
/// an earlier node's; if [`check_node`] refuses it; if it claims what `own` holds;
/// or if it claims what an earlier node kept holds ([`Claims`]).
///
/// With `own`, an entry named as this node is kept as it is: it is this node,
/// never a peer, and the daemon routes by `own`, not by what a store says of it.
pub fn screen(
    nodes: Vec<NodeEntry>,
    cluster: Ipv4Net,
    own: Option<&Own>,
) -> (Vec<NodeEntry>, Vec<LeftOut>) {
    let mut claims = Claims::default();
    let mut names: HashSet<String> = HashSet::with_capacity(nodes.len());
    let mut kept = Vec::with_capacity(nodes.len());
    let mut left_out = Vec::new();
    for n in nodes {
        let mine = own.is_some_and(|o| o.name == n.name);
        let why = if n.name.is_empty() || n.name.len() > MAX_NAME_LEN {
            Some(format!("a name of {} bytes", n.name.len()))
        } else if names.contains(&n.name) {
            Some("listed twice".into())
        } else if mine {
            None
        } else {
            check_node(n.pod_subnet, n.underlay_ip, n.vtep_mac, cluster)
                .err()
                .or_else(|| own.and_then(|o| against_own(o, &n)))
                .or_else(|| claims.conflict(&n))
        };
        match why {
            Some(why) => left_out.push((n.name, why)),
            None => {
                if !mine {
                    claims.take(&n);
                }
                names.insert(n.name.clone());
                kept.push(n);
            }
        }
    }
    (kept, left_out)
}

/// Takes off the nodes of `nodes` the IPv6 subnets this node cannot route: all of
/// them on a node without IPv6 (`own6` none), else each that is not a subnet of the
/// cluster's IPv6 range (`own6`'s second) of /48 to /126, or that overlaps this
/// node's subnet (its first) or one an earlier node keeps. A node whose IPv6
/// subnet is taken off keeps its IPv4: its pods' IPv6 is then unreachable, not
/// misrouted. Returns what was taken off, with why.
pub fn screen6<'a>(
    nodes: impl IntoIterator<Item = &'a mut NodeEntry>,
    own6: Option<(Ipv6Net, Ipv6Net)>,
) -> Vec<LeftOut> {
    let span = |n: Ipv6Net| (u128::from(n.network()), u128::from(n.broadcast()));
    // The subnets kept, by first address: disjoint, so an interval overlaps one of
    // them if and only if it overlaps the one that starts last at or before its end.
    let mut taken = std::collections::BTreeMap::new();
    if let Some((own, _)) = own6 {
        let (a, b) = span(own);
        taken.insert(a, b);
    }
    let mut left_out = Vec::new();
    for n in nodes {
        let Some(s6) = n.pod_subnet_v6 else { continue };
        let (a, b) = span(s6);
        let why = match own6 {
            None => Some("this node has no IPv6 (pod-subnet-v6)".to_string()),
            Some((_, cluster)) if s6 != s6.trunc() || !cluster.contains(&s6) || s6 == cluster => {
                Some(format!("no subnet of the cluster's IPv6 range {cluster}"))
            }
            Some(_) if !(48..=126).contains(&s6.prefix_len()) => {
                Some("not a /48 to /126".to_string())
            }
            Some((own, _)) if own.contains(&s6) || s6.contains(&own) => {
                Some(format!("it overlaps this node's {own}"))
            }
            Some(_)
                if taken
                    .range(..=b)
                    .next_back()
                    .is_some_and(|(_, &end)| end >= a) =>
            {
                Some("it overlaps an earlier node's".to_string())
            }
            Some(_) => None,
        };
        match why {
            Some(why) => {
                left_out.push((
                    n.name.clone(),
                    format!("its IPv6 subnet {s6} is not used: {why}"),
                ));
                n.pod_subnet_v6 = None;
            }
            None => {
                taken.insert(a, b);
            }
        }
    }
    left_out
}

/// A budget of log lines: at most [`Quiet::PER_MINUTE`] a minute, the lines held
/// back counted and told with the first line of the next minute.
#[derive(Debug, Default)]
pub struct Quiet {
    /// When the minute in progress began.
    since: Option<Instant>,
    /// Lines logged in it.
    lines: u32,
    /// Lines held back in it.
    held: u64,
}

/// Whether a line may be logged now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Yes; `held` lines were held back in the minute before, which the line
    /// should say.
    Log {
        /// Lines held back before this one.
        held: u64,
    },
    /// No: the minute's budget is spent.
    Hold,
}

impl Quiet {
    /// The lines a minute.
    pub const PER_MINUTE: u32 = 20;
    const MINUTE: Duration = Duration::from_secs(60);

    /// Whether a line may be logged at `now`, counting it either way.
    pub fn allow(&mut self, now: Instant) -> Verdict {
        let mut held = 0;
        if self
            .since
            .is_none_or(|s| now.saturating_duration_since(s) >= Self::MINUTE)
        {
            held = std::mem::take(&mut self.held);
            self.since = Some(now);
            self.lines = 0;
        }
        if self.lines < Self::PER_MINUTE {
            self.lines += 1;
            Verdict::Log { held }
        } else {
            self.held += 1;
            Verdict::Hold
        }
    }

    /// `line`, logged as a warning if the budget allows it at `now`.
    pub fn warn(&mut self, now: Instant, line: std::fmt::Arguments<'_>) {
        match self.allow(now) {
            Verdict::Log { held: 0 } => log::warn!("{line}"),
            Verdict::Log { held } => {
                log::warn!("{line} ({held} lines like this were held back in the last minute)")
            }
            Verdict::Hold => {}
        }
    }
}

/// What the daemon has said of left-out peers: each (node, why) is logged once,
/// while it stays left out, within a [`Quiet`] budget.
#[derive(Debug, Default)]
pub struct Said {
    said: HashSet<LeftOut>,
    quiet: Quiet,
}

impl Said {
    /// The lines to log at `now` for `left_out`, the nodes a view left out: those
    /// not said for the view before, within the budget. A node that comes back
    /// and is left out again is said again.
    pub fn lines(&mut self, now: Instant, left_out: &[LeftOut]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut said = HashSet::with_capacity(left_out.len());
        for entry in left_out {
            if !self.said.contains(entry) {
                let (name, why) = entry;
                match self.quiet.allow(now) {
                    Verdict::Log { held: 0 } => lines.push(format!("peer {name} left out: {why}")),
                    Verdict::Log { held } => lines.push(format!(
                        "peer {name} left out: {why} (and {held} more left out in the last minute, not logged)"
                    )),
                    Verdict::Hold => {}
                }
            }
            said.insert(entry.clone());
        }
        self.said = said;
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "10.244.0.0/16";

    fn entry(name: &str, subnet: &str, ip: [u8; 4], mac: u8) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            underlay_ip: Ipv4Addr::from(ip),
            pod_subnet: subnet.parse().unwrap(),
            pod_subnet_v6: None,
            vtep_mac: MacAddr([2, 0, 0, 0, 0, mac]),
            mode: None,
            direct_routing: None,
            public_key: None,
        }
    }

    fn own() -> Own {
        Own {
            name: "me".into(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            underlay: Ipv4Addr::new(192, 0, 2, 1),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        }
    }

    fn names(nodes: &[NodeEntry]) -> Vec<&str> {
        nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// A peer that overlaps this node's subnet, has its underlay address or its
    /// VTEP MAC is left out, named with why; the good peers beside it stay.
    #[test]
    fn what_this_node_holds_no_peer_takes_and_the_rest_stays() {
        let nodes = vec![
            entry("wide", "10.244.0.0/23", [192, 0, 2, 9], 9),
            entry("inside", "10.244.1.128/25", [192, 0, 2, 8], 8),
            entry("twin", "10.244.3.0/24", [192, 0, 2, 1], 3),
            entry("mac", "10.244.4.0/24", [192, 0, 2, 4], 1),
            entry("me", "10.244.1.0/24", [192, 0, 2, 1], 1),
            entry("good", "10.244.5.0/24", [192, 0, 2, 5], 5),
        ];
        let (kept, out) = screen(nodes, CLUSTER.parse().unwrap(), Some(&own()));
        assert_eq!(names(&kept), ["me", "good"]);
        let why: Vec<(&str, &str)> = out.iter().map(|(n, w)| (n.as_str(), w.as_str())).collect();
        assert_eq!(
            why,
            [
                (
                    "wide",
                    "its subnet 10.244.0.0/23 overlaps this node's 10.244.1.0/24"
                ),
                (
                    "inside",
                    "its subnet 10.244.1.128/25 overlaps this node's 10.244.1.0/24"
                ),
                ("twin", "its underlay address 192.0.2.1 is this node's"),
                ("mac", "its VTEP MAC 02:00:00:00:00:01 is this node's"),
            ]
        );
    }

    /// A peer's IPv6 subnet that this node cannot route (outside the cluster's
    /// IPv6 range, too wide, over this node's or an earlier node's) is taken off
    /// with why, and the node keeps its IPv4; a node without IPv6 takes none.
    #[test]
    fn ipv6_subnets_this_node_cannot_route_are_taken_off_and_the_node_stays() {
        let with6 = |name: &str, n: u8, s6: &str| NodeEntry {
            pod_subnet_v6: Some(s6.parse().unwrap()),
            ..entry(name, &format!("10.244.{n}.0/24"), [192, 0, 2, n], n)
        };
        let mut nodes = [
            with6("outside", 2, "fd99:0:0:2::/64"),
            with6("mine", 3, "fd00:10:244:1::/64"),
            with6("wide", 4, "fd00:10:244::/56"),
            with6("good", 5, "fd00:10:244:5::/64"),
            with6("twin", 6, "fd00:10:244:5::/80"),
            with6("whole", 7, "fd00:10:244::/48"),
            with6("host-bits", 8, "fd00:10:244:8::1/64"),
            entry("v4-only", "10.244.9.0/24", [192, 0, 2, 9], 9),
        ];
        let own6 = Some((
            "fd00:10:244:1::/64".parse().unwrap(),
            "fd00:10:244::/48".parse().unwrap(),
        ));
        let out = screen6(nodes.iter_mut(), own6);
        let kept: Vec<_> = (nodes.iter())
            .filter_map(|n| n.pod_subnet_v6.map(|s| (n.name.as_str(), s.to_string())))
            .collect();
        assert_eq!(kept, [("good", "fd00:10:244:5::/64".to_string())]);
        let named: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            named,
            ["outside", "mine", "wide", "twin", "whole", "host-bits"]
        );
        assert!(out[0]
            .1
            .contains("no subnet of the cluster's IPv6 range fd00:10:244::/48"));
        assert!(out[1].1.contains("overlaps this node's"));
        assert!(out[3].1.contains("overlaps an earlier node's"));
        assert_eq!(nodes.len(), 8, "every node keeps its IPv4");

        let mut nodes = [with6("good", 5, "fd00:10:244:5::/64")];
        let out = screen6(nodes.iter_mut(), None);
        assert_eq!(nodes[0].pod_subnet_v6, None);
        assert!(out[0].1.contains("this node has no IPv6"), "{out:?}");
    }

    /// A peer left out claims nothing: a later node it would have overlapped is
    /// kept. Between kept peers, the first keeps what both claim.
    #[test]
    fn a_peer_left_out_holds_nothing_and_the_first_of_two_wins() {
        let nodes = vec![
            entry("wide", "10.244.0.0/22", [192, 0, 2, 9], 9),
            entry("b", "10.244.2.0/24", [192, 0, 2, 2], 2),
            entry("b2", "10.244.2.0/25", [192, 0, 2, 3], 3),
            entry("c", "10.244.6.0/24", [192, 0, 2, 2], 6),
            entry("b", "10.244.7.0/24", [192, 0, 2, 7], 7),
        ];
        let (kept, out) = screen(nodes, CLUSTER.parse().unwrap(), Some(&own()));
        assert_eq!(names(&kept), ["b"]);
        let out: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(out, ["wide", "b2", "c", "b"]);
    }

    /// Every check of [`check_node`] applies, and an unusable underlay address
    /// is refused whatever the store.
    #[test]
    fn unusable_underlay_addresses_are_left_out_by_name() {
        let bad = [
            ([0, 0, 0, 0], "\"this network\""),
            ([0, 1, 2, 3], "\"this network\""),
            ([127, 0, 0, 1], "loopback"),
            ([127, 9, 9, 9], "loopback"),
            ([169, 254, 169, 254], "link-local"),
            ([224, 0, 0, 1], "multicast"),
            ([239, 255, 255, 250], "multicast"),
            ([240, 0, 0, 1], "reserved"),
            ([255, 255, 255, 255], "broadcast"),
            ([10, 244, 9, 1], "inside the cluster CIDR"),
        ];
        let mut nodes: Vec<NodeEntry> = (bad.iter().enumerate())
            .map(|(i, (ip, _))| {
                entry(
                    &format!("n{i}"),
                    &format!("10.244.{}.0/24", 10 + i),
                    *ip,
                    10 + i as u8,
                )
            })
            .collect();
        // Positive control: unicast addresses of every kind a node may have.
        let good = [
            [192, 0, 2, 7],
            [10, 0, 0, 7],
            [100, 64, 0, 7],
            [172, 16, 0, 7],
            [223, 255, 255, 254],
        ];
        for (i, ip) in good.iter().enumerate() {
            nodes.push(entry(
                &format!("ok{i}"),
                &format!("10.244.{}.0/24", 50 + i),
                *ip,
                50 + i as u8,
            ));
        }
        let (kept, out) = screen(nodes, CLUSTER.parse().unwrap(), Some(&own()));
        assert_eq!(names(&kept), ["ok0", "ok1", "ok2", "ok3", "ok4"]);
        assert_eq!(out.len(), bad.len());
        for ((name, why), (i, (ip, what))) in out.iter().zip(bad.iter().enumerate()) {
            assert_eq!(name, &format!("n{i}"));
            assert!(
                why.contains(&Ipv4Addr::from(*ip).to_string()) && why.contains(what),
                "{why}"
            );
        }
    }

    /// Without `own` (a saved view read at boot), an entry of any name is checked.
    #[test]
    fn without_this_node_every_entry_is_checked() {
        let nodes = vec![
            entry("me", "10.244.1.0/24", [127, 0, 0, 1], 1),
            entry("", "10.244.2.0/24", [192, 0, 2, 2], 2),
            entry(&"x".repeat(254), "10.244.3.0/24", [192, 0, 2, 3], 3),
            entry("a", "10.244.4.0/24", [192, 0, 2, 4], 4),
        ];
        let (kept, out) = screen(nodes, CLUSTER.parse().unwrap(), None);
        assert_eq!(names(&kept), ["a"]);
        assert_eq!(out.len(), 3);
        assert!(
            out[1].1.contains("0 bytes") && out[2].1.contains("254 bytes"),
            "{out:?}"
        );
    }

    #[test]
    fn the_budget_holds_back_lines_past_it_and_says_how_many() {
        let mut q = Quiet::default();
        let t0 = Instant::now();
        for _ in 0..Quiet::PER_MINUTE {
            assert_eq!(q.allow(t0), Verdict::Log { held: 0 });
        }
        for _ in 0..5 {
            assert_eq!(q.allow(t0 + Duration::from_secs(30)), Verdict::Hold);
        }
        assert_eq!(
            q.allow(t0 + Duration::from_secs(61)),
            Verdict::Log { held: 5 }
        );
        assert_eq!(
            q.allow(t0 + Duration::from_secs(62)),
            Verdict::Log { held: 0 }
        );
    }

    /// A left-out peer is said once while it stays out, again after it came
    /// back; a flood of distinct ones is held to the budget.
    #[test]
    fn left_out_peers_are_said_once_and_within_the_budget() {
        let mut said = Said::default();
        let t = Instant::now();
        let x = [("x".to_owned(), "why".to_owned())];
        assert_eq!(said.lines(t, &x), ["peer x left out: why"]);
        assert!(said.lines(t, &x).is_empty());
        assert!(said.lines(t, &[]).is_empty());
        assert_eq!(said.lines(t, &x).len(), 1);
        let other = ("x".to_owned(), "another reason".to_owned());
        assert_eq!(said.lines(t, &[other]).len(), 1);

        let flood: Vec<LeftOut> = (0..1000).map(|i| (format!("n{i}"), "why".into())).collect();
        let lines = said.lines(t, &flood);
        assert_eq!(lines.len() as u32, Quiet::PER_MINUTE - 3);
        assert!(said.lines(t, &flood).is_empty(), "said already");
        let later = t + Duration::from_secs(60);
        let lines = said.lines(later, &x);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("and 983 more"), "{lines:?}");
    }
}
