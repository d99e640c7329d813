//! The "no overlay" baseline: pods on the `cni0` bridge and plain routes to each remote
//! pod subnet via the remote host's underlay address (what flannel's host-gw backend does).

use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;

use super::{attach_to_pod_bridge, setup_pod_bridge, Host, Pod, Underlay, UNDERLAY_IF};

/// What a host needs to know about another node to route to its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteNode {
    /// The node's underlay address (the next hop).
    pub underlay_ip: Ipv4Addr,
    /// The node's pod subnet.
    pub subnet: Ipv4Net,
}

impl RemoteNode {
    /// The remote-node view of `host`.
    pub fn of(host: &Host) -> RemoteNode {
        RemoteNode {
            underlay_ip: host.underlay_ip,
            subnet: host.pod_subnet,
        }
    }

    /// Every host of `hosts` but `host`, as `host` sees them.
    fn others(hosts: &[Host], host: &Host) -> Vec<RemoteNode> {
        hosts
            .iter()
            .filter(|h| h.index != host.index)
            .map(RemoteNode::of)
            .collect()
    }
}

/// The MTU of `cni0` and pods: underlay MTU − 50, the same as the overlays give their
/// pods, so that a comparison moves the same packets (plain routing itself adds nothing).
pub fn mtu(host: &Host) -> u32 {
    host.underlay_mtu - super::kernel_vxlan::OVERHEAD
}

/// Creates `cni0` with the gateway address, sets `ip_forward=1`, and adds `remotes`.
pub fn setup(host: &Host, remotes: &[RemoteNode]) -> Result<()> {
    setup_pod_bridge(host, mtu(host)).with_context(|| {
        format!(
            "setting up direct routing on host {} ({})",
            host.index,
            host.ns.name()
        )
    })?;
    for remote in remotes {
        add_remote(host, remote)?;
    }
    Ok(())
}

/// Adds the route `<remote subnet> via <remote underlay ip> dev eth0` to `host`.
pub fn add_remote(host: &Host, remote: &RemoteNode) -> Result<()> {
    ensure!(
        remote.subnet != host.pod_subnet,
        "host {} cannot be its own remote ({})",
        host.index,
        remote.subnet
    );
    let subnet = remote.subnet.to_string();
    let via = remote.underlay_ip.to_string();
    host.ns
        .ip(&["route", "add", &subnet, "via", &via, "dev", UNDERLAY_IF])
        .with_context(|| format!("adding route to {subnet} via {via} on host {}", host.index))
        .map(drop)
}

/// Attaches `pod` to `cni0` of `host`: `eth0` with `ip`/24, MTU [`mtu`], default route
/// via the gateway. Returns the host-side veth name.
pub fn attach_pod(host: &Host, pod: &Pod, ip: Ipv4Addr) -> Result<String> {
    attach_to_pod_bridge(host, pod, ip, mtu(host))
}

/// Sets up every host of `underlay` with routes to all the others.
pub fn mesh(underlay: &Underlay) -> Result<()> {
    let hosts = underlay.hosts();
    for host in hosts {
        setup(host, &RemoteNode::others(hosts, host))?;
    }
    Ok(())
}

/// Undoes [`setup`] on `host`: removes the routes to `remotes` and the `cni0` bridge.
/// Pods' interfaces should be removed first ([`super::detach_pod`]).
pub fn teardown(host: &Host, remotes: &[RemoteNode]) -> Result<()> {
    for remote in remotes {
        let subnet = remote.subnet.to_string();
        host.ns
            .ip(&["route", "del", &subnet])
            .with_context(|| format!("removing the route to {subnet} on host {}", host.index))?;
    }
    super::remove_pod_bridge(host)
}

/// Undoes [`mesh`] on every host of `underlay`.
pub fn unmesh(underlay: &Underlay) -> Result<()> {
    let hosts = underlay.hosts();
    for host in hosts {
        teardown(host, &RemoteNode::others(hosts, host))?;
    }
    Ok(())
}
