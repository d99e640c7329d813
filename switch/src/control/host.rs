//! What the control plane asks of the host: ports made in network namespaces, links
//! configured and inspected by netlink, devices deleted. Behind the [`Host`] trait so
//! that attach, detach and their rollbacks run in unit tests without root; the real
//! host is [`SystemHost`].

use std::net::Ipv4Addr;
use std::path::Path;

use crate::control::config::Afxdp;
use crate::control::error::DaemonError;
use crate::control::masquerade;
use crate::control::netlink::{self, LinkSpec, LinkState, Mark, NetlinkError, Removal};
use crate::control::netns::{self, NetnsFile, NsId};
use crate::control::routes::{self, DirectRoute, RouteTo};
use crate::io::port::PortQueue;
use crate::io::{tap, xsk};

/// How a pod's port is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plug {
    /// A new attach: the interface must not exist yet.
    Create,
    /// A restart: the interface persisted and must still be there.
    Reopen,
}

/// The queues of a port, one per worker that serves it.
pub type Queues = Vec<Box<dyn PortQueue>>;

/// What kind of port a pod gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPort {
    /// A TAP device in the pod's netns.
    Tap,
    /// A veth pair: the pod's end in its netns, `host_end` in the daemon's, served
    /// by AF_XDP sockets.
    Afxdp {
        /// The host end's name ([`host_end_name`]).
        host_end: String,
        /// How the sockets are made.
        afxdp: Afxdp,
    },
}

/// The name of an AF_XDP pod's host-side veth end: `wx` and 8 hex digits of a hash
/// of its attachment key, so that a restarted daemon finds it again. (FNV-1a: the
/// name needs spreading, not secrecy.)
pub fn host_end_name(container_id: &str, ifname: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("wx{h:08x}")
}

/// The host operations of the control plane.
pub trait Host: Send + Sync + std::fmt::Debug {
    /// Creates (or takes over) the host port `spec.name` in the daemon's own
    /// namespace, with `queues` queues, and configures it; with an IPv6 address,
    /// it also keeps forged IPv6 from that address out
    /// ([`netlink::guard_gateway6`]).
    fn open_host_port(&self, spec: &LinkSpec, queues: usize) -> Result<Queues, DaemonError>;

    /// Removes what [`Host::open_host_port`] set up that outlives the port: the
    /// IPv6 source rules. Whether there were any.
    fn close_host_port(&self) -> Result<bool, NetlinkError>;

    /// The identity of the network namespace at `netns`, which must be a pod's
    /// ([`netns::open`] says what is refused).
    fn netns_id(&self, netns: &Path) -> Result<NsId, NetlinkError>;

    /// Creates (`Plug::Create`) or reopens (`Plug::Reopen`) a pod's port in the
    /// network namespace at `netns`, which must still be `ns`, configured as
    /// `spec` and persistent, so it outlives the daemon. A failed create leaves no
    /// interface behind.
    fn open_pod_port(
        &self,
        netns: &Path,
        ns: &NsId,
        spec: &LinkSpec,
        queues: usize,
        how: Plug,
        port: &PodPort,
    ) -> Result<Queues, DaemonError>;

    /// Deletes interface `ifname` in `netns` if it bears `mark`, and if `netns`
    /// still names `ns` (when it is known); says whether it deleted it. A netns or
    /// an interface that is gone is not an error, and an interface that is not
    /// weft's, or a namespace that is not the pod's, is left alone.
    fn delete_interface(&self, netns: &Path, ns: Option<&NsId>, ifname: &str, mark: &Mark) -> bool;

    /// The state of interface `ifname` in `netns`, which must still be `ns`;
    /// `None` if the interface is not there.
    fn inspect(
        &self,
        netns: &Path,
        ns: &NsId,
        ifname: &str,
    ) -> Result<Option<LinkState>, NetlinkError>;

    /// How the daemon's own namespace reaches `dst`.
    fn route_to(&self, dst: Ipv4Addr) -> Result<Option<RouteTo>, NetlinkError>;

    /// Makes weft's host routes exactly `routes`; returns how many it removed.
    fn sync_direct_routes(&self, routes: &[DirectRoute]) -> Result<usize, NetlinkError>;

    /// Lets the daemon's own namespace forward IPv4: the host forwards what the
    /// switch hands it (Services, egress, direct routing) back and on.
    fn enable_forwarding(&self) -> std::io::Result<()>;

    /// Installs weft's nftables table as `table` says (the egress masquerade), or,
    /// with `None`, removes it; see [`masquerade`].
    fn set_masquerade(
        &self,
        table: Option<&masquerade::Masquerade>,
    ) -> Result<(), masquerade::MasqueradeError>;
}

/// The real host: TAP devices and netlink, entering namespaces with setns.
#[derive(Debug, Clone, Copy)]
pub struct SystemHost {
    /// Whether TAP devices are offered USO (`[datapath] tap-uso`).
    pub tap_uso: bool,
}

impl Default for SystemHost {
    fn default() -> SystemHost {
        SystemHost { tap_uso: true }
    }
}

fn boxed(queues: Vec<tap::TapQueue>) -> Queues {
    queues
        .into_iter()
        .map(|q| Box::new(q) as Box<dyn PortQueue>)
        .collect()
}

impl Host for SystemHost {
    fn open_host_port(&self, spec: &LinkSpec, queues: usize) -> Result<Queues, DaemonError> {
        let queues = tap::open(&spec.name, queues, self.tap_uso)?;
        netlink::configure(spec)?;
        match &spec.ipv6 {
            Some(v6) => netlink::guard_gateway6(v6.addr, &spec.name)?,
            // Those of an earlier dual-stack run would refuse an address this
            // node no longer has.
            None => match netlink::unguard_gateway6() {
                Ok(true) => log::info!("removed the IPv6 source rules of an earlier run"),
                Ok(false) => {}
                Err(e) => log::warn!("removing the IPv6 source rules of an earlier run: {e}"),
            },
        }
        Ok(boxed(queues))
    }

    fn close_host_port(&self) -> Result<bool, NetlinkError> {
        netlink::unguard_gateway6()
    }

    fn netns_id(&self, netns: &Path) -> Result<NsId, NetlinkError> {
        netns::identify(netns)
    }

    fn open_pod_port(
        &self,
        netns: &Path,
        ns: &NsId,
        spec: &LinkSpec,
        queues: usize,
        how: Plug,
        port: &PodPort,
    ) -> Result<Queues, DaemonError> {
        let ns = netns::open(netns, Some(ns))?;
        match port {
            PodPort::Tap => open_tap_port(&ns, spec, (queues, self.tap_uso), how),
            PodPort::Afxdp { host_end, afxdp } => {
                open_afxdp_port(&ns, spec, queues, how, host_end, afxdp)
            }
        }
    }

    fn delete_interface(&self, netns: &Path, ns: Option<&NsId>, ifname: &str, mark: &Mark) -> bool {
        if !tap::valid_ifname(ifname) {
            return false;
        }
        let removed = netns::open(netns, ns)
            .and_then(|ns| netlink::in_netns(&ns, || netlink::delete_marked(ifname, mark)));
        let why = match removed {
            Ok(Removal::Deleted) => return true,
            Ok(Removal::Absent) => return false,
            Ok(Removal::Foreign(why)) => why,
            // The pod and its interface went together.
            Err(NetlinkError::Netns(e)) if e.is_missing() => return false,
            Err(e) => e.to_string(),
        };
        log::warn!(
            "not deleting interface {ifname} in {}: {why}",
            netns.display()
        );
        false
    }

    fn inspect(
        &self,
        netns: &Path,
        ns: &NsId,
        ifname: &str,
    ) -> Result<Option<LinkState>, NetlinkError> {
        let ns = netns::open(netns, Some(ns))?;
        netlink::in_netns(&ns, || netlink::inspect(ifname))
    }

    fn route_to(&self, dst: Ipv4Addr) -> Result<Option<RouteTo>, NetlinkError> {
        routes::route_to(dst)
    }

    fn sync_direct_routes(&self, wanted: &[DirectRoute]) -> Result<usize, NetlinkError> {
        routes::sync(wanted)
    }

    fn enable_forwarding(&self) -> std::io::Result<()> {
        routes::enable_forwarding()
    }

    fn set_masquerade(
        &self,
        table: Option<&masquerade::Masquerade>,
    ) -> Result<(), masquerade::MasqueradeError> {
        match table {
            Some(m) => masquerade::install(m),
            None => masquerade::remove(),
        }
    }
}

/// Opens (or reopens) a pod's TAP port. A reopened one is configured again, and
/// so gets weft's alias if an older weftd made it.
fn open_tap_port(
    netns: &NetnsFile,
    spec: &LinkSpec,
    (queues, uso): (usize, bool),
    how: Plug,
) -> Result<Queues, DaemonError> {
    let shown = netns.path();
    let opened = netlink::in_netns(netns, || -> Result<_, DaemonError> {
        match (how, netlink::link_exists(&spec.name)?) {
            (Plug::Create, true) => {
                return Err(DaemonError::Invalid(format!(
                    "an interface named {} already exists in {shown}",
                    spec.name
                )))
            }
            (Plug::Reopen, false) => {
                return Err(DaemonError::PodGone(format!(
                    "interface {} is gone from {shown}",
                    spec.name
                )))
            }
            _ => {}
        }
        // A reopened device belongs to a pod that was running: whatever fails
        // here, it stays, as does the pod's address.
        let queues = tap::open(&spec.name, queues, uso)?;
        let configured = netlink::configure(spec).and_then(|()| {
            // The device outlives the daemon, so pods keep their interface across
            // a restart; detach deletes it.
            queues[0].set_persist(true).map_err(NetlinkError::Socket)
        });
        if let Err(e) = configured {
            if how == Plug::Create {
                // Not persistent yet (or no longer): it goes with the queues.
                let _ = queues[0].set_persist(false);
            }
            return Err(e.into());
        }
        Ok(queues)
    })?;
    Ok(boxed(opened))
}

/// Opens (or reopens) a pod's AF_XDP port: the veth pair (made on `Plug::Create`,
/// which must find neither end), the pod end configured as `spec` with transmit
/// checksumming off (a reopened one only gets weft's alias, if an older weftd made
/// it), and the sockets and program on the host end. A failed create deletes the
/// pair; a failed reopen leaves it, as the pod may still run.
fn open_afxdp_port(
    netns: &NetnsFile,
    spec: &LinkSpec,
    queues: usize,
    how: Plug,
    host_end: &str,
    afxdp: &Afxdp,
) -> Result<Queues, DaemonError> {
    let shown = netns.path();
    let pod_has = netlink::in_netns(netns, || netlink::link_exists(&spec.name))?;
    let host_has = netlink::link_exists(host_end)?;
    match how {
        Plug::Create if pod_has => {
            return Err(DaemonError::Invalid(format!(
                "an interface named {} already exists in {shown}",
                spec.name
            )))
        }
        Plug::Create if host_has => {
            return Err(DaemonError::Invalid(format!(
                "the host end {host_end} of the AF_XDP port already exists"
            )))
        }
        Plug::Reopen if !pod_has => {
            return Err(DaemonError::PodGone(format!(
                "interface {} is gone from {shown}",
                spec.name
            )))
        }
        // The pod's interface is there but is no veth of ours (a TAP, say): the pod
        // may run, so this is no reason to release its address.
        Plug::Reopen if !host_has => {
            return Err(DaemonError::Invalid(format!(
                "{} in {shown} has no host end {host_end}",
                spec.name
            )))
        }
        _ => {}
    }
    let made = || -> Result<Queues, DaemonError> {
        match (how, &spec.alias) {
            (Plug::Create, _) => {
                let ns = netns.file();
                netlink::create_veth(host_end, &spec.name, ns, spec.mtu, queues as u32)?;
                netlink::in_netns(netns, || {
                    netlink::configure(spec)?;
                    netlink::tx_checksum_off(&spec.name)
                })?;
            }
            (Plug::Reopen, Some(alias)) => {
                netlink::in_netns(netns, || netlink::set_alias(&spec.name, alias))?;
            }
            (Plug::Reopen, None) => {}
        }
        let queues = xsk::open(host_end, spec.mtu, queues, afxdp.geometry, afxdp.mode)?;
        Ok(queues
            .into_iter()
            .map(|q| Box::new(q) as Box<dyn PortQueue>)
            .collect())
    };
    let result = made();
    if result.is_err() && how == Plug::Create {
        // The pair goes with either end.
        if let Err(e) = netlink::delete_link(host_end) {
            log::warn!("deleting {host_end} after a failed attach: {e}");
        }
    }
    result
}
