//! What every store's view of the nodes must hold, whichever store made it.

use std::collections::HashSet;

use weft_switch::control::store::{check_node, NodeEntry};

/// Checks the nodes a store's view uses: each one passes [`check_node`], and
/// no two of them (leaving out this node's own entry, which the daemon checks
/// itself, when `skip_me`) share a subnet, an underlay address or a VTEP MAC.
pub fn check_usable(nodes: &[NodeEntry], skip_me: bool) {
    let cluster = super::cluster();
    let mut ips = HashSet::new();
    let mut macs = HashSet::new();
    let others: Vec<&NodeEntry> = nodes
        .iter()
        .filter(|n| !(skip_me && n.name == super::ME))
        .collect();
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
