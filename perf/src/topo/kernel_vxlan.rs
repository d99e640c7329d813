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
        permanent_neighbour(ns, &vtep_ip, &mac)?;
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

/// Adds a permanent neighbour entry on [`DEVICE`] in `ns`: `addr` (of either
/// family) is at `mac`, as flannel programs its peers' VTEPs.
fn permanent_neighbour(ns: &crate::netns::Netns, addr: &str, mac: &str) -> Result<String> {
    ns.ip(&[
        "neigh",
        "add",
        addr,
        "lladdr",
        mac,
        "dev",
        DEVICE,
        "nud",
        "permanent",
    ])
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

/// What a host needs to know about another node to reach its pods' IPv6 over VXLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteNode6 {
    /// The node's IPv6 pod subnet; its network address stands for the node's VTEP.
    pub subnet: ipnet::Ipv6Net,
    /// The node's VTEP MAC.
    pub vtep_mac: Mac,
}

/// Adds IPv6 to a host [`setup`] made, over its IPv4 underlay: `flannel.1` carries
/// the IPv6 frames too (a VXLAN device carries any Ethernet frame), holding the
/// subnet's network address as a /128, as flannel gives its IPv6 device; `cni0`
/// holds the subnet's `::1` gateway; and each remote gets an on-link route via its
/// subnet's network address, with a permanent neighbour entry for its VTEP MAC
/// (the FDB entry [`add_remote`] made already sends its frames to its underlay).
///
/// Flannel itself carries IPv6 on a second device, `flannel-v6.1`, over an IPv6
/// underlay; with an IPv4 underlay, one device carries both families.
pub fn add_ipv6(host: &Host, subnet: ipnet::Ipv6Net, remotes: &[RemoteNode6]) -> Result<()> {
    let ns = &host.ns;
    let vtep = format!("{}/128", subnet.network());
    let gateway = format!("{}/{}", gateway6(subnet), subnet.prefix_len());
    (|| {
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        ns.ip(&["-6", "addr", "add", &vtep, "dev", DEVICE, "nodad"])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &gateway,
            "dev",
            super::POD_BRIDGE,
            "nodad",
        ])?;
        for r in remotes {
            let (net, via, mac) = (
                r.subnet.to_string(),
                r.subnet.network().to_string(),
                r.vtep_mac.to_string(),
            );
            ns.ip(&[
                "-6", "route", "add", &net, "via", &via, "dev", DEVICE, "onlink",
            ])?;
            permanent_neighbour(ns, &via, &mac)?;
        }
        anyhow::Ok(())
    })()
    .with_context(|| format!("adding IPv6 to kernel VXLAN host {}", host.index))
}

/// The gateway of an IPv6 pod subnet: its `::1`.
pub fn gateway6(subnet: ipnet::Ipv6Net) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::from(u128::from(subnet.network()) + 1)
}

/// Gives `pod`, attached by [`attach_pod`], the IPv6 address `ip` in `subnet` and a
/// default route via the subnet's gateway, and waits (up to 5 s) for its link-local
/// address to pass duplicate address detection: until then the pod sends no
/// multicast listener report, and `cni0`, which snoops them, does not pass it the
/// host's Neighbour Solicitations.
pub fn attach_pod6(pod: &Pod, subnet: ipnet::Ipv6Net, ip: std::net::Ipv6Addr) -> Result<()> {
    let addr = format!("{ip}/{}", subnet.prefix_len());
    let gw = gateway6(subnet).to_string();
    (|| {
        pod.ns
            .ip(&["-6", "addr", "add", &addr, "dev", super::POD_IF, "nodad"])?;
        pod.ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gw,
            "dev",
            super::POD_IF,
        ])?;
        crate::netns::wait_until(
            std::time::Duration::from_secs(5),
            "the pod's link-local address to leave duplicate address detection",
            || {
                (pod.ns
                    .ip(&["-6", "addr", "show", "dev", super::POD_IF, "tentative"]))
                .is_ok_and(|out| out.trim().is_empty())
            },
        )
    })()
    .with_context(|| format!("giving pod {} the IPv6 address {ip}", pod.name))
}
