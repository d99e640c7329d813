//! What every store's view of the nodes must hold, whichever store made it.

use std::collections::HashSet;

use weft_switch::control::store::screen::Own;
use weft_switch::control::store::{check_node, NodeEntry};

/// Checks the nodes a store's view uses: each one passes [`check_node`], and
/// no two of them share a subnet, an underlay address or a VTEP MAC. With
/// `own` (this node as it runs), its entry in the view is left out, since the
/// daemon routes by `own` and checks it itself, and no other may claim what
/// `own` holds.
pub fn check_usable(nodes: &[NodeEntry], own: Option<&Own>) {
    let cluster = super::cluster();
    let mut ips = HashSet::new();
    let mut macs = HashSet::new();
    let mine = |n: &&NodeEntry| own.is_some_and(|o| o.name == n.name);
    let mut others: Vec<&NodeEntry> = nodes.iter().filter(|n| !mine(n)).collect();
    let own_entry = own.map(Own::entry);
    others.extend(own_entry.as_ref());
    for (k, n) in others.iter().enumerate() {
        check_node(n.pod_subnet, n.underlay_ip, n.vtep_mac, cluster)
            .unwrap_or_else(|e| panic!("node {} is used but fails its checks: {e}", n.name));
        assert!(ips.insert(n.underlay_ip), "two nodes at {}", n.underlay_ip);
        assert!(macs.insert(n.vtep_mac), "two nodes with {}", n.vtep_mac);
        for m in &others[..k] {
            let overlap = n.pod_subnet.contains(&m.pod_subnet.network())
                || m.pod_subnet.contains(&n.pod_subnet.network());
            assert!(
                !overlap,
                "nodes {} and {} hold overlapping subnets {} and {}",
                n.name, m.name, n.pod_subnet, m.pod_subnet
            );
        }
    }
}
