//! Hosts and pods built out of network namespaces: an underlay L2 segment joining N hosts,
//! pod namespaces, and the kernel baselines ([`kernel_vxlan`], [`direct`]) that weft is
//! compared with and must interoperate with.
//!
//! Addressing: host `i` (0-based) has underlay address `10.250.0.(i+1)/24` on `eth0` and
//! owns pod subnet `10.244.(i+1).0/24` with gateway `10.244.(i+1).1`. An underlay of
//! several segments ([`Underlay::with_segments`]) puts the hosts of segment `s` on
//! `10.250.s.0/24` and routes between the segments through the wire namespace
//! (`10.250.s.254`), so hosts on different segments share no link. All of it lives in
//! namespaces this crate created, so the machine's own network never sees it; dropping the
//! [`Underlay`] and the [`Pod`]s deletes the namespaces and every link with them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};
use ipnet::Ipv4Net;

use crate::netns::{veth, Netns};

pub mod direct;
pub mod kernel_vxlan;

/// Default MTU of the underlay links.
pub const DEFAULT_MTU: u32 = 1500;

/// Most hosts one [`Underlay`] can join (the host number must fit an address octet).
pub const MAX_HOSTS: usize = 250;

/// Name of each host's underlay interface.
pub const UNDERLAY_IF: &str = "eth0";

/// Name of the Linux bridge in the wire namespace that forms the (first) underlay
/// segment; segment `s` is `br<s>`.
pub const WIRE_BRIDGE: &str = "br0";

/// The wire namespace's own address on every segment: the router between them.
pub const ROUTER_OCTET: u8 = 254;

/// Name of the pod-side interface that the baselines attach.
pub const POD_IF: &str = "eth0";

/// Name of the bridge holding the gateway address in the baselines (as flannel's).
pub const POD_BRIDGE: &str = "cni0";

/// Underlay network shared by all hosts.
pub const UNDERLAY_NET: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 250, 0, 0), 24) {
    Ok(net) => net,
    Err(_) => unreachable!(),
};

/// An Ethernet MAC address; parses from and prints as `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A locally administered unicast MAC `02:<a>:<b>:<c>:<n high>:<n low>`.
    pub const fn local(a: u8, b: u8, c: u8, n: u16) -> Mac {
        let [hi, lo] = n.to_be_bytes();
        Mac([0x02, a, b, c, hi, lo])
    }

    /// The six bytes, in wire order.
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Mac> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts
                .next()
                .with_context(|| format!("MAC {s:?} has fewer than 6 bytes"))?;
            ensure!(
                part.len() == 2,
                "MAC {s:?}: byte {part:?} is not two hex digits"
            );
            *byte = u8::from_str_radix(part, 16)
                .with_context(|| format!("MAC {s:?}: bad byte {part:?}"))?;
        }
        ensure!(parts.next().is_none(), "MAC {s:?} has more than 6 bytes");
        Ok(Mac(out))
    }
}

impl From<[u8; 6]> for Mac {
    fn from(bytes: [u8; 6]) -> Mac {
        Mac(bytes)
    }
}

impl From<Mac> for [u8; 6] {
    fn from(mac: Mac) -> [u8; 6] {
        mac.0
    }
}

/// Whether a host's underlay interface keeps the transmit offloads a real NIC has
/// (checksum offload, and with it TSO and UDP tunnel segmentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offload {
    /// Offloads on, as on virtio-net, ENA or mlx5: the default, and the fair baseline.
    On,
    /// Transmit checksum offload off: the kernel completes every checksum (inner ones of
    /// a VXLAN frame too) before a frame leaves, and segments in software.
    Off,
}

impl Offload {
    /// `on` or `off`, as ethtool and the command line spell it.
    pub fn name(self) -> &'static str {
        match self {
            Offload::On => "on",
            Offload::Off => "off",
        }
    }
}

impl fmt::Display for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Offload {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Offload> {
        match s {
            "on" => Ok(Offload::On),
            "off" => Ok(Offload::Off),
            _ => bail!("underlay offload {s:?} is neither \"on\" nor \"off\""),
        }
    }
}

/// One host of an [`Underlay`]: a namespace with `lo` and `eth0` up on the underlay.
#[derive(Debug)]
pub struct Host {
    /// The host's namespace.
    pub ns: Netns,
    /// The host's 0-based number on the underlay.
    pub index: usize,
    /// The address of `eth0`, `10.250.0.(index+1)` (prefix /24).
    pub underlay_ip: Ipv4Addr,
    /// The pod subnet this host owns, `10.244.(index+1).0/24`.
    pub pod_subnet: Ipv4Net,
    /// The pod subnet's gateway, `10.244.(index+1).1`.
    pub gateway: Ipv4Addr,
    /// The MTU of `eth0` (the underlay MTU).
    pub underlay_mtu: u32,
    /// The underlay segment the host is on.
    pub segment: usize,
}

impl Host {
    /// The `n`th address of the pod subnet, e.g. `pod_ip(2)` = `10.244.(index+1).2`.
    ///
    /// # Panics
    /// If `n` is 0 (network), 1 (gateway) or 255 (broadcast).
    pub fn pod_ip(&self, n: u8) -> Ipv4Addr {
        assert!(
            (2..=254).contains(&n),
            "pod address number {n} must be 2..=254"
        );
        let [a, b, c, _] = self.pod_subnet.network().octets();
        Ipv4Addr::new(a, b, c, n)
    }

    /// Turns the transmit offloads of `eth0` on or off.
    ///
    /// Off is needed in one case only: a host whose kernel VXLAN device sends to a
    /// *userspace* tunnel endpoint (weftd). A veth hands a packet whose checksum is left
    /// to "hardware" (CHECKSUM_PARTIAL) to its peer namespace as it is, where a real
    /// wire never carries one, so the inner TCP checksum of a kernel VXLAN frame would
    /// arrive unfilled at weftd's UDP socket. With offload off the kernel completes
    /// every checksum, inner ones included, before the frame leaves the host. Every
    /// other host keeps its offloads, as real NICs do.
    pub fn set_tx_offload(&self, offload: Offload) -> Result<()> {
        self.ns
            .run(&["ethtool", "-K", UNDERLAY_IF, "tx", offload.name()])
            .with_context(|| {
                format!(
                    "turning transmit offload {offload} on host {}'s {UNDERLAY_IF}",
                    self.index
                )
            })
            .map(drop)
    }

    /// Whether `eth0` checksums in "hardware" now, as `ethtool -k` reports
    /// `tx-checksumming`.
    pub fn tx_offload(&self) -> Result<Offload> {
        let out = self.ns.run(&["ethtool", "-k", UNDERLAY_IF])?;
        let value = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("tx-checksumming:"))
            .with_context(|| format!("ethtool -k {UNDERLAY_IF} names no tx-checksumming"))?;
        // "on", "off", or either with " [fixed]".
        let word = value.split_whitespace().next().unwrap_or("");
        word.parse()
            .with_context(|| format!("ethtool's tx-checksumming: {value:?}"))
    }
}

/// An underlay L2 segment joining N hosts: a wire namespace with a bridge, and each
/// host's `eth0` plugged into it by a veth. Dropping it deletes every namespace.
#[derive(Debug)]
pub struct Underlay {
    hosts: Vec<Host>,
    wire: Netns,
    mtu: u32,
    offload: Offload,
}

impl Underlay {
    /// Builds a segment of `hosts` hosts with the default MTU (1500), offloads on.
    ///
    /// `tag` only makes the namespace names readable (`w<tag>w-…`, `w<tag>h0-…`).
    pub fn new(tag: &str, hosts: usize) -> Result<Underlay> {
        Underlay::with_mtu(tag, hosts, DEFAULT_MTU)
    }

    /// Builds a segment of `hosts` hosts whose links (bridge, ports, `eth0`s) all have
    /// `mtu`, offloads on.
    pub fn with_mtu(tag: &str, hosts: usize, mtu: u32) -> Result<Underlay> {
        Underlay::with_options(tag, hosts, mtu, Offload::On)
    }

    /// Like [`Underlay::with_mtu`], with every host's `eth0` transmit offload set to
    /// `offload` (see [`Host::set_tx_offload`] for the one case that needs it off).
    pub fn with_options(tag: &str, hosts: usize, mtu: u32, offload: Offload) -> Result<Underlay> {
        Underlay::build(tag, &[hosts], mtu, offload)
    }

    /// An underlay of several L2 segments, `hosts[s]` hosts on segment `s`, routed to
    /// each other by the wire namespace; default MTU, offloads on. Host indices run
    /// on across the segments.
    pub fn with_segments(tag: &str, hosts: &[usize]) -> Result<Underlay> {
        Underlay::build(tag, hosts, DEFAULT_MTU, Offload::On)
    }

    fn build(tag: &str, segments: &[usize], mtu: u32, offload: Offload) -> Result<Underlay> {
        let hosts: usize = segments.iter().sum();
        ensure!(
            hosts <= MAX_HOSTS && !segments.is_empty() && segments.len() < 250,
            "an underlay joins at most {MAX_HOSTS} hosts on 1 to 249 segments, not {segments:?}"
        );
        ensure!(
            (576..=65535).contains(&mtu),
            "underlay MTU {mtu} out of range 576..=65535"
        );
        let mtu_s = mtu.to_string();
        let wire = Netns::new(&format!("{tag}w"))?;
        for s in 0..segments.len() {
            let bridge = format!("br{s}");
            wire.ip(&["link", "add", &bridge, "mtu", &mtu_s, "type", "bridge"])?;
            wire.link_up(&bridge)?;
            if segments.len() > 1 {
                let addr = format!("10.250.{s}.{ROUTER_OCTET}/24");
                wire.ip(&["addr", "add", &addr, "dev", &bridge])?;
            }
        }
        if segments.len() > 1 {
            wire.sysctl("net.ipv4.ip_forward", "1")?;
        }
        let mut underlay = Underlay {
            hosts: Vec::with_capacity(hosts),
            wire,
            mtu,
            offload,
        };
        for (segment, &count) in segments.iter().enumerate() {
            for _ in 0..count {
                let index = underlay.hosts.len();
                let host = underlay.add_host(tag, index, segment, segments.len() > 1)?;
                underlay.hosts.push(host);
            }
        }
        Ok(underlay)
    }

    fn add_host(&self, tag: &str, index: usize, segment: usize, routed: bool) -> Result<Host> {
        let n = u8::try_from(index + 1).context("host number")?;
        let seg = u8::try_from(segment).context("segment number")?;
        let ns = Netns::new(&format!("{tag}h{index}"))?;
        let port = format!("p{index}");
        let mtu = self.mtu.to_string();
        veth(&self.wire, &port, &ns, UNDERLAY_IF)?;
        self.wire.ip(&[
            "link",
            "set",
            "dev",
            &port,
            "mtu",
            &mtu,
            "master",
            &format!("br{segment}"),
            "up",
        ])?;
        let underlay_ip = Ipv4Addr::new(10, 250, seg, n);
        let addr = format!("{underlay_ip}/{}", UNDERLAY_NET.prefix_len());
        ns.ip(&["link", "set", "dev", UNDERLAY_IF, "mtu", &mtu, "up"])?;
        ns.ip(&["addr", "add", &addr, "dev", UNDERLAY_IF])?;
        if routed {
            // The other segments, through the wire namespace.
            let router = format!("10.250.{seg}.{ROUTER_OCTET}");
            ns.ip(&[
                "route",
                "add",
                "10.250.0.0/16",
                "via",
                &router,
                "dev",
                UNDERLAY_IF,
            ])?;
        }
        let pod_subnet = Ipv4Net::new(Ipv4Addr::new(10, 244, n, 0), 24)?;
        let host = Host {
            ns,
            index,
            underlay_ip,
            pod_subnet,
            gateway: Ipv4Addr::new(10, 244, n, 1),
            underlay_mtu: self.mtu,
            segment,
        };
        // A veth is created with its offloads on; set them only when asked otherwise.
        if self.offload == Offload::Off {
            host.set_tx_offload(Offload::Off)?;
        }
        Ok(host)
    }

    /// The hosts, in index order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host number `index`.
    ///
    /// # Panics
    /// If there is no such host.
    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index]
    }

    /// The wire namespace holding the underlay bridge (e.g. to capture or shape traffic).
    pub fn wire(&self) -> &Netns {
        &self.wire
    }

    /// The MTU of every underlay link.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The transmit offload the hosts' `eth0`s were built with.
    pub fn offload(&self) -> Offload {
        self.offload
    }

    /// A new pod namespace that belongs to host `host` (no interface yet).
    pub fn pod(&self, host: usize, name: &str) -> Result<Pod> {
        ensure!(
            host < self.hosts.len(),
            "no host {host}: the underlay has {}",
            self.hosts.len()
        );
        Pod::new(host, name)
    }

    /// Names of all namespaces of this underlay (wire and hosts).
    pub fn netns_names(&self) -> Vec<String> {
        std::iter::once(&self.wire)
            .chain(self.hosts.iter().map(|h| &h.ns))
            .map(|ns| ns.name().to_owned())
            .collect()
    }
}

/// A pod: a namespace with `lo` up, on host `host`; weft or a baseline attaches its interface.
#[derive(Debug)]
pub struct Pod {
    /// The pod's namespace.
    pub ns: Netns,
    /// The index of the host the pod belongs to.
    pub host: usize,
    /// The pod's name (e.g. what `K8S_POD_NAME` would carry).
    pub name: String,
}

impl Pod {
    /// Creates the namespace of pod `name` on host `host`.
    pub fn new(host: usize, name: &str) -> Result<Pod> {
        let ns = Netns::new(&format!("p{name}"))?;
        Ok(Pod {
            ns,
            host,
            name: name.to_owned(),
        })
    }
}

/// Creates the `cni0` bridge holding the gateway address, at `mtu`, and turns on `ip_forward` in the host (what the CNI bridge plugin with `isGateway` does).
fn setup_pod_bridge(host: &Host, mtu: u32) -> Result<()> {
    let ns = &host.ns;
    let n = u16::try_from(host.index + 1).context("host number")?;
    // A fixed MAC keeps the bridge from taking its lowest port's MAC when pods come and go.
    let mac = Mac::local(0x63, 0x6e, 0x69, n).to_string();
    let gw = format!("{}/{}", host.gateway, host.pod_subnet.prefix_len());
    let mtu = mtu.to_string();
    ns.ip(&[
        "link", "add", POD_BRIDGE, "address", &mac, "mtu", &mtu, "type", "bridge",
    ])?;
    ns.ip(&["addr", "add", &gw, "dev", POD_BRIDGE])?;
    ns.link_up(POD_BRIDGE)?;
    ns.sysctl("net.ipv4.ip_forward", "1")
}

/// Deletes the `cni0` bridge of `host` (what [`setup_pod_bridge`] made).
fn remove_pod_bridge(host: &Host) -> Result<()> {
    host.ns
        .ip(&["link", "del", POD_BRIDGE])
        .with_context(|| format!("deleting {POD_BRIDGE} on host {}", host.index))
        .map(drop)
}

/// Removes the interface a baseline gave `pod` (its `eth0`; the veth's host end goes
/// with it). Succeeds when there is none.
pub fn detach_pod(pod: &Pod) -> Result<()> {
    let present = pod.ns.ip(&["link", "show", "dev", POD_IF]).is_ok();
    if present {
        pod.ns
            .ip(&["link", "del", "dev", POD_IF])
            .with_context(|| format!("removing {POD_IF} of pod {}", pod.name))?;
    }
    Ok(())
}

/// Plugs `pod` into the host's `cni0` with a veth: `eth0` in the pod holds `ip`, `mtu`
/// and a default route via the gateway. Returns the host-side interface name.
fn attach_to_pod_bridge(host: &Host, pod: &Pod, ip: Ipv4Addr, mtu: u32) -> Result<String> {
    ensure!(
        pod.host == host.index,
        "pod {} belongs to host {}, not host {}",
        pod.name,
        pod.host,
        host.index
    );
    let subnet = host.pod_subnet;
    if !subnet.contains(&ip)
        || ip == subnet.network()
        || ip == subnet.broadcast()
        || ip == host.gateway
    {
        bail!(
            "pod {}: {ip} is not a usable pod address in {subnet} (gateway {})",
            pod.name,
            host.gateway
        );
    }
    // Pod addresses are unique within the subnet, so this name is unique in the host.
    let host_if = format!("veth{}", u32::from(ip) & !u32::from(subnet.netmask()));
    let mtu = mtu.to_string();
    let addr = format!("{ip}/{}", subnet.prefix_len());
    let gw = host.gateway.to_string();
    (|| {
        veth(&host.ns, &host_if, &pod.ns, POD_IF)?;
        host.ns.ip(&[
            "link", "set", "dev", &host_if, "mtu", &mtu, "master", POD_BRIDGE, "up",
        ])?;
        pod.ns
            .ip(&["link", "set", "dev", POD_IF, "mtu", &mtu, "up"])?;
        pod.ns.ip(&["addr", "add", &addr, "dev", POD_IF])?;
        pod.ns
            .ip(&["route", "add", "default", "via", &gw, "dev", POD_IF])?;
        anyhow::Ok(())
    })()
    .with_context(|| {
        format!(
            "attaching pod {} ({ip}) to {POD_BRIDGE} of host {}",
            pod.name, host.index
        )
    })?;
    Ok(host_if)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac: Mac = "02:77:65:66:00:0a".parse().unwrap();
        assert_eq!(mac, Mac([0x02, 0x77, 0x65, 0x66, 0x00, 0x0a]));
        assert_eq!(mac.to_string(), "02:77:65:66:00:0a");
        assert_eq!("02-77-65-66-00-0A".parse::<Mac>().unwrap(), mac);
        assert_eq!(Mac::local(0x77, 0x65, 0x66, 10), mac);
        assert!("02:77:65:66:00".parse::<Mac>().is_err());
        assert!("02:77:65:66:00:0a:01".parse::<Mac>().is_err());
        assert!("02:77:65:66:00:g0".parse::<Mac>().is_err());
        assert!("02:77:65:66:00:0".parse::<Mac>().is_err());
    }
}
