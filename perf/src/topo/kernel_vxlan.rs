//! A host configured exactly as flannel's vxlan backend configures a node: the Linux
//! kernel's VXLAN device `flannel.1`, pods on the `cni0` bridge, and per remote node a
//! route, a neighbour entry and an FDB entry. This is both the performance baseline and
//! the peer weft must interoperate with on the wire.
//!
//! The remote nodes are plain [`RemoteNode`] values, so a remote can be another
//! kernel-VXLAN host or a weft host that presents the same VTEP MAC and subnet.

use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;

use super::{attach_to_pod_bridge, setup_pod_bridge, Host, Mac, Pod, Underlay, UNDERLAY_IF};

/// Name of the VXLAN device (flannel's, for VNI 1).
pub const DEVICE: &str = "flannel.1";

/// The VXLAN network identifier flannel uses.
pub const VNI: u32 = 1;

/// The VXLAN UDP destination port flannel and Linux use.
pub const PORT: u16 = 8472;

/// Bytes VXLAN over IPv4 adds to each frame (outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8).
pub const OVERHEAD: u32 = weft_encap::vxlan::IPV4_OVERHEAD as u32;

/// What a host needs to know about another node to reach its pods over VXLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteNode {
    /// The node's underlay address (the outer destination IP).
    pub underlay_ip: Ipv4Addr,
    /// The node's pod subnet; its `.0` address stands for the node's VTEP.
    pub subnet: Ipv4Net,
    /// The node's VTEP MAC (the inner destination MAC).
    pub vtep_mac: Mac,
}

impl RemoteNode {
    /// The remote-node view of `host`, whose VTEP (kernel or weft) has MAC `vtep_mac`.
    pub fn of(host: &Host, vtep_mac: Mac) -> RemoteNode {
        RemoteNode {
            underlay_ip: host.underlay_ip,
            subnet: host.pod_subnet,
            vtep_mac,
        }
    }
}

/// A fixed locally administered VTEP MAC for host `index`: `02:77:65:66:<index+1 as u16>`.
///
/// # Panics
/// If `index + 1` does not fit 16 bits.
pub fn vtep_mac(index: usize) -> Mac {
    let n = u16::try_from(index + 1).expect("host index fits 16 bits");
    Mac::local(0x77, 0x65, 0x66, n)
}

/// The MTU of `flannel.1`, `cni0` and pods on `host`: underlay MTU − 50.
pub fn mtu(host: &Host) -> u32 {
    host.underlay_mtu - OVERHEAD
}

/// Configures `host` as a flannel vxlan node with VTEP MAC `vtep_mac`, and adds `remotes`.
///
/// Creates `flannel.1` (`id 1 dstport 8472 local <underlay ip> dev eth0 nolearning`,
/// MTU = underlay − 50, address `<subnet .0>/32` as flannel assigns it), the `cni0` bridge
/// holding the gateway address, and sets `ip_forward=1` in the host.
pub fn setup(host: &Host, vtep_mac: Mac, remotes: &[RemoteNode]) -> Result<()> {
    let ns = &host.ns;
    let mtu = mtu(host);
    let mtu_s = mtu.to_string();
    let mac = vtep_mac.to_string();
    let local = host.underlay_ip.to_string();
    let vni = VNI.to_string();
    let port = PORT.to_string();
    let addr = format!("{}/32", host.pod_subnet.network());
    (|| {
        ns.ip(&[
            "link",
            "add",
            DEVICE,
            "address",
            &mac,
            "mtu",
            &mtu_s,
            "type",
            "vxlan",
            "id",
            &vni,
            "dstport",
            &port,
            "local",
            &local,
            "dev",
            UNDERLAY_IF,
            "nolearning",
        ])?;
        ns.ip(&["addr", "add", &addr, "dev", DEVICE])?;
        ns.link_up(DEVICE)?;
        setup_pod_bridge(host, mtu)
    })()
    .with_context(|| {
        format!(
            "setting up kernel VXLAN on host {} ({})",
            host.index,
            ns.name()
        )
    })?;
    for remote in remotes {
        add_remote(host, remote)?;
    }
    Ok(())
}

/// Programs the route, neighbour and FDB entries through which `host` reaches `remote`.
pub fn add_remote(host: &Host, remote: &RemoteNode) -> Result<()> {
    ensure!(
        remote.subnet != host.pod_subnet,
        "host {} cannot be its own remote ({})",
        host.index,
        remote.subnet
    );
    let ns = &host.ns;
    let subnet = remote.subnet.to_string();
    let vtep_ip = remote.subnet.network().to_string();
    let mac = remote.vtep_mac.to_string();
    let dst = remote.underlay_ip.to_string();
    (|| {
        ns.ip(&[
            "route", "add", &subnet, "via", &vtep_ip, "dev", DEVICE, "onlink",
        ])?;
        ns.ip(&[
            "neigh",
            "add",
            &vtep_ip,
            "lladdr",
            &mac,
            "dev",
            DEVICE,
            "nud",
            "permanent",
        ])?;
        ns.run(&[
            "bridge",
            "fdb",
            "append",
            &mac,
            "dev",
            DEVICE,
            "dst",
            &dst,
            "self",
            "permanent",
        ])?;
        anyhow::Ok(())
    })()
    .with_context(|| {
        format!(
            "adding remote node {dst} ({subnet}, VTEP {mac}) to host {}",
            host.index
        )
    })
}

/// Removes what [`add_remote`] programmed for `remote` (a node leaving the cluster).
pub fn remove_remote(host: &Host, remote: &RemoteNode) -> Result<()> {
    let ns = &host.ns;
    let subnet = remote.subnet.to_string();
    let vtep_ip = remote.subnet.network().to_string();
    let mac = remote.vtep_mac.to_string();
    let dst = remote.underlay_ip.to_string();
    (|| {
        ns.ip(&[
            "route", "del", &subnet, "via", &vtep_ip, "dev", DEVICE, "onlink",
        ])?;
        ns.ip(&["neigh", "del", &vtep_ip, "dev", DEVICE])?;
        ns.run(&[
            "bridge", "fdb", "del", &mac, "dev", DEVICE, "dst", &dst, "self",
        ])?;
        anyhow::Ok(())
    })()
    .with_context(|| {
        format!(
            "removing remote node {dst} ({subnet}) from host {}",
            host.index
        )
    })
}

/// Attaches `pod` to `cni0` of `host`: `eth0` with `ip`/24, MTU = underlay − 50, default
/// route via the gateway. Returns the host-side veth name.
pub fn attach_pod(host: &Host, pod: &Pod, ip: Ipv4Addr) -> Result<String> {
    attach_to_pod_bridge(host, pod, ip, mtu(host))
}

/// Configures every host of `underlay` as a kernel VXLAN node reaching all the others,
/// with VTEP MACs from [`vtep_mac`], which it returns in host order.
pub fn mesh(underlay: &Underlay) -> Result<Vec<Mac>> {
    let hosts = underlay.hosts();
    let macs: Vec<Mac> = hosts.iter().map(|h| vtep_mac(h.index)).collect();
    for host in hosts {
        let remotes: Vec<RemoteNode> = hosts
            .iter()
            .filter(|h| h.index != host.index)
            .map(|h| RemoteNode::of(h, macs[h.index]))
            .collect();
        setup(host, macs[host.index], &remotes)?;
    }
    Ok(macs)
}

/// Undoes [`setup`] on `host`: deletes `flannel.1` (its routes, neighbour and FDB
/// entries go with it) and the `cni0` bridge. Pods' interfaces should be removed first
/// ([`super::detach_pod`]).
pub fn teardown(host: &Host) -> Result<()> {
    host.ns
        .ip(&["link", "del", DEVICE])
        .with_context(|| format!("deleting {DEVICE} on host {}", host.index))?;
    super::remove_pod_bridge(host)
}

/// Undoes [`mesh`] on every host of `underlay`.
pub fn unmesh(underlay: &Underlay) -> Result<()> {
    underlay.hosts().iter().try_for_each(teardown)
}
