//! Interface, address and route set-up by rtnetlink, and running work inside another
//! network namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures_util::{StreamExt, TryStreamExt};
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteHeader, RouteProtocol, RouteScope};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::control::netns::{NetnsError, NetnsFile};
use crate::mac::MacAddr;

/// Errors while entering a namespace or talking rtnetlink.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netns path cannot be used: it is gone, or it is no pod's namespace.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// setns(2) refused the file (it is not a network namespace).
    #[error("entering network namespace {path}: {source}")]
    Setns {
        /// The path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The rtnetlink socket or its runtime could not be created.
    #[error("opening rtnetlink: {0}")]
    Socket(std::io::Error),
    /// An interface was not found.
    #[error("interface {0} not found")]
    NoSuchLink(String),
    /// The kernel refused a request.
    #[error("{what} on {link}: {source}")]
    Request {
        /// What was being done.
        what: &'static str,
        /// The interface.
        link: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// An ioctl on an interface failed.
    #[error("{what} on {link}: {source}")]
    Ioctl {
        /// What was being done.
        what: &'static str,
        /// The interface.
        link: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The namespace thread panicked.
    #[error("the thread working in network namespace {0} panicked")]
    Panicked(String),
}

/// Runs `f` on a fresh thread that has entered the network namespace `ns`.
///
/// A thread that changed namespace is never returned to any pool: it ends with `f`.
pub fn in_netns<T: Send, E: From<NetlinkError> + Send>(
    ns: &NetnsFile,
    f: impl FnOnce() -> Result<T, E> + Send,
) -> Result<T, E> {
    on_own_thread(ns.path(), f, || ns.enter())
}

/// Runs `f` on a fresh thread in a new network namespace of its own, with only `lo`,
/// brought up. The namespace has no name and no route out, and it vanishes with the
/// thread: a sandbox for socket tests that must not touch any other network.
pub fn in_new_netns<T: Send, E: From<NetlinkError> + Send>(
    f: impl FnOnce() -> Result<T, E> + Send,
) -> Result<T, E> {
    const LABEL: &str = "a new namespace";
    on_own_thread(LABEL, f, || {
        // SAFETY: unshare only moves the calling thread into a new namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(NetlinkError::Setns {
                path: LABEL.into(),
                source: std::io::Error::last_os_error(),
            });
        }
        with_handle(async |handle| {
            let index = link_index(&handle, "lo")
                .await?
                .ok_or_else(|| NetlinkError::NoSuchLink("lo".into()))?;
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(|source| NetlinkError::Request {
                    what: "bringing the link up",
                    link: "lo".into(),
                    source,
                })
        })
    })
}

/// Runs `enter` and then `f` on a thread of their own, which ends with them.
fn on_own_thread<T: Send, E: From<NetlinkError> + Send>(
    label: &str,
    f: impl FnOnce() -> Result<T, E> + Send,
    enter: impl FnOnce() -> Result<(), NetlinkError> + Send,
) -> Result<T, E> {
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("weft-netns".into())
            .spawn_scoped(s, || {
                enter().map_err(E::from)?;
                f()
            })
            .map_err(|e| E::from(NetlinkError::Socket(e)))?;
        worker
            .join()
            .unwrap_or_else(|_| Err(E::from(NetlinkError::Panicked(label.to_owned()))))
    })
}

/// A route to install on an interface.
#[derive(Debug, Clone, Copy)]
pub enum RouteSpec {
    /// The default route through `gateway` (reached on the interface).
    DefaultVia(Ipv4Addr),
    /// `dst` directly on the link, with `src` as the preferred source address.
    OnLink {
        /// Destination prefix.
        dst: Ipv4Net,
        /// Preferred source.
        src: Ipv4Addr,
    },
    /// The IPv6 prefix `dst` directly on the link, from `src`.
    OnLink6 {
        /// Destination prefix.
        dst: Ipv6Net,
        /// Preferred source.
        src: Ipv6Addr,
    },
}

/// What an interface should look like.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    /// Interface name.
    pub name: String,
    /// Its MAC address.
    pub mac: MacAddr,
    /// Its MTU.
    pub mtu: u32,
    /// Its address and prefix length.
    pub addr: Ipv4Addr,
    /// Prefix length of `addr`.
    pub prefix_len: u8,
    /// Its IPv6 address and prefix length, with the IPv6 default gateway, on a
    /// dual-stack node. The address is added without duplicate address detection
    /// (weft's IPAM made it unique), so that it is usable at once.
    pub ipv6: Option<Ipv6Spec>,
    /// Routes through it.
    pub routes: Vec<RouteSpec>,
    /// The alias that marks it as weft's ([`pod_alias`]), for a pod's interface.
    pub alias: Option<String>,
}

/// An interface's IPv6 address and default route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Spec {
    /// The address.
    pub addr: Ipv6Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway, if the interface routes through one.
    pub gateway: Option<Ipv6Addr>,
}

/// The prefix of the alias (`IFLA_IFALIAS`) weft gives each pod interface it makes.
pub const ALIAS_PREFIX: &str = "weft:";

/// The alias of a pod interface weft makes for container `container_id`:
/// `weft:<container-id>`, cut to the kernel's 255 bytes. DEL deletes no interface
/// without it ([`delete_marked`]).
pub fn pod_alias(container_id: &str) -> String {
    const MAX: usize = 255;
    let mut alias = format!("{ALIAS_PREFIX}{container_id}");
    if alias.len() > MAX {
        let mut end = MAX;
        while !alias.is_char_boundary(end) {
            end -= 1;
        }
        alias.truncate(end);
    }
    alias
}

/// What makes an interface one that weft made for a pod: its alias, and its kind
/// (`tun` for a TAP port, `veth` for an AF_XDP port; either, when it is not known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The alias it must have.
    pub alias: String,
    /// The kind of port it must be, if known.
    pub port: Option<weft_proto::PortType>,
}

/// What [`delete_marked`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// It deleted the interface.
    Deleted,
    /// There was no interface of that name.
    Absent,
    /// The interface is not weft's (why), and stays.
    Foreign(String),
}

fn runtime() -> Result<tokio::runtime::Runtime, NetlinkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(NetlinkError::Socket)
}

/// Runs `f` with an rtnetlink handle bound to the calling thread's namespace.
pub(crate) fn with_handle<T>(
    f: impl AsyncFnOnce(Handle) -> Result<T, NetlinkError>,
) -> Result<T, NetlinkError> {
    let rt = runtime()?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        let task = tokio::spawn(conn);
        let out = f(handle).await;
        task.abort();
        out
    })
}

/// The interface `name`'s link message, if there is such an interface.
async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        // The kernel answers ENODEV for a name filter that matches nothing.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(source) => Err(NetlinkError::Request {
            what: "looking up",
            link: name.to_owned(),
            source,
        }),
    }
}

pub(crate) async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetlinkError> {
    Ok(find_link(handle, name).await?.map(|link| link.header.index))
}

/// Sets MAC, MTU, address and routes of an existing interface and brings it up, in the
/// calling thread's namespace. Existing addresses and routes are replaced, so the call
/// can be repeated.
pub fn configure(spec: &LinkSpec) -> Result<(), NetlinkError> {
    with_handle(async |handle| {
        let err = |what| {
            let link = spec.name.clone();
            move |source| NetlinkError::Request { what, link, source }
        };
        let index = link_index(&handle, &spec.name)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(spec.name.clone()))?;
        let mut link = LinkUnspec::new_with_index(index)
            .address(spec.mac.octets().to_vec())
            .mtu(spec.mtu);
        if let Some(alias) = &spec.alias {
            link = link.append_extra_attribute(LinkAttribute::IfAlias(alias.clone()));
        }
        handle
            .link()
            .set(link.build())
            .execute()
            .await
            .map_err(err("setting MAC, MTU and alias"))?;
        // Only a saving of attach time: a kernel without noqueue keeps its default.
        if let Err(e) = set_noqueue(&handle, index).await {
            log::warn!("{}: setting the noqueue qdisc: {e}", spec.name);
        }
        handle
            .address()
            .add(index, IpAddr::V4(spec.addr), spec.prefix_len)
            .replace()
            .execute()
            .await
            .map_err(err("adding the address"))?;
        if let Some(v6) = &spec.ipv6 {
            let mut add = handle
                .address()
                .add(index, IpAddr::V6(v6.addr), v6.prefix_len)
                .replace();
            add.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            add.execute()
                .await
                .map_err(err("adding the IPv6 address"))?;
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(err("bringing the link up"))?;
        add_routes(&handle, index, spec).await
    })
}

/// Adds the routes of `spec` through interface `index`: the IPv6 default route,
/// then its route list.
async fn add_routes(handle: &Handle, index: u32, spec: &LinkSpec) -> Result<(), NetlinkError> {
    let err = |what| {
        let link = spec.name.clone();
        move |source| NetlinkError::Request { what, link, source }
    };
    let default6 = (spec.ipv6.and_then(|v6| v6.gateway)).map(|gw| {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build()
    });
    let listed = spec.routes.iter().map(|route| match *route {
        RouteSpec::DefaultVia(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build(),
        RouteSpec::OnLink6 { dst, src } => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .output_interface(index)
            .pref_source(src)
            .build(),
        RouteSpec::OnLink { dst, src } => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .output_interface(index)
            .pref_source(src)
            .scope(RouteScope::Link)
            .build(),
    });
    for msg in default6.into_iter().chain(listed) {
        handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(err("adding a route"))?;
    }
    Ok(())
}

/// Makes `noqueue` the root qdisc of interface `index`, before it comes up.
///
/// A multi-queue TAP has 256 transmit queues whatever number is open, and bringing it
/// up with the default qdisc creates one child qdisc per queue: 1.5 ms of a pod's
/// attach on this kernel, against 0.1 ms with `noqueue` set first. A queue in front of
/// the TAP buys nothing either: the TAP never stops its queues, it drops when weft's
/// ring is full, as it does behind any qdisc; veth, the usual pod interface, has
/// `noqueue` too. rtnetlink's qdisc builder cannot name a kind, so the request is
/// built here.
async fn set_noqueue(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    use rtnetlink::packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
    };
    use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};
    use rtnetlink::packet_route::RouteNetlinkMessage;

    let mut tc = TcMessage::with_index(index as i32);
    tc.header.parent = TcHandle::ROOT;
    tc.attributes.push(TcAttribute::Kind("noqueue".into()));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(tc));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    let mut answers = handle.clone().request(req)?;
    while let Some(msg) = answers.next().await {
        if let NetlinkPayload::Error(e) = msg.payload {
            if e.code.is_some() {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
    }
    Ok(())
}

/// Deletes the interface `name` in the calling thread's namespace. `Ok(false)` if it
/// did not exist.
pub fn delete_link(name: &str) -> Result<bool, NetlinkError> {
    with_handle(async |handle| {
        let Some(index) = link_index(&handle, name).await? else {
            return Ok(false);
        };
        match handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
            Err(source) => Err(NetlinkError::Request {
                what: "deleting",
                link: name.to_owned(),
                source,
            }),
        }
    })
}

/// The first of the priorities of the policy-routing rules that keep forged IPv6
/// from the node's gateway address out ([`guard_gateway6`]): before the main
/// table's rule (32766), after the local table's (0).
pub const GUARD_PRIORITY: u32 = 9_000;

/// Refuses to forward any IPv6 packet whose source is `gateway` (the node's IPv6
/// gateway address, on host port `port`) unless the node sent it itself or the
/// switch did (through `port`): three IPv6 rules, `from gateway iif lo lookup
/// main`, `from gateway iif port lookup main`, `from gateway prohibit`. Linux
/// forwards an IPv6 packet with one of its own addresses as the source (it drops
/// such an IPv4 packet as a martian), so without them anything that routes IPv6
/// to the node could pass for the node, which NetworkPolicy always admits. The
/// rules carry weft's route protocol (`ip -6 rule show proto 119`); an earlier
/// run's are replaced, and no other rule is touched.
pub fn guard_gateway6(gateway: Ipv6Addr, port: &str) -> Result<(), NetlinkError> {
    with_handle(async |handle| {
        remove_guard(&handle).await?;
        let err = |source| NetlinkError::Request {
            what: "adding an IPv6 source rule",
            link: port.to_owned(),
            source,
        };
        for (k, iif) in [(0, Some("lo")), (1, Some(port)), (2, None)] {
            let mut add = (handle.rule().add().v6())
                .source_prefix(gateway, 128)
                .priority(GUARD_PRIORITY + k);
            (add.message_mut().attributes).push(RuleAttribute::Protocol(weft_protocol()));
            add = match iif {
                Some(name) => add
                    .input_interface(name)
                    .table_id(u32::from(RouteHeader::RT_TABLE_MAIN))
                    .action(RuleAction::ToTable),
                None => add.action(RuleAction::Prohibit),
            };
            add.execute().await.map_err(err)?;
        }
        Ok(())
    })
}

/// Removes the rules of [`guard_gateway6`]; whether there were any.
pub fn unguard_gateway6() -> Result<bool, NetlinkError> {
    with_handle(async |handle| remove_guard(&handle).await)
}

/// The route protocol weft's routes and rules carry.
fn weft_protocol() -> RouteProtocol {
    RouteProtocol::Other(crate::control::routes::WEFT_RTPROT)
}

/// Deletes every IPv6 rule of weft's at the guard's priorities; whether there
/// was one.
async fn remove_guard(handle: &Handle) -> Result<bool, NetlinkError> {
    let err = |source| NetlinkError::Request {
        what: "removing an IPv6 source rule",
        link: String::from("(rules)"),
        source,
    };
    let ours = |r: &RuleMessage| {
        let has = |want: &dyn Fn(&RuleAttribute) -> bool| r.attributes.iter().any(want);
        let guard = GUARD_PRIORITY..GUARD_PRIORITY + 3;
        has(&|a| matches!(a, RuleAttribute::Priority(p) if guard.contains(p)))
            && has(&|a| *a == RuleAttribute::Protocol(weft_protocol()))
    };
    let rules: Vec<RuleMessage> = (handle.rule().get(rtnetlink::IpVersion::V6).execute())
        .try_collect()
        .await
        .map_err(err)?;
    let mut removed = false;
    for rule in rules.into_iter().filter(ours) {
        handle.rule().del(rule).execute().await.map_err(err)?;
        removed = true;
    }
    Ok(removed)
}

/// Sets the alias of interface `name`, in the calling thread's namespace.
pub fn set_alias(name: &str, alias: &str) -> Result<(), NetlinkError> {
    with_handle(async |handle| {
        let index = link_index(&handle, name)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))?;
        let link = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::IfAlias(alias.to_owned()));
        handle
            .link()
            .set(link.build())
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: "setting the alias",
                link: name.to_owned(),
                source,
            })
    })
}

/// Deletes the interface `name` in the calling thread's namespace if it bears
/// `mark`: weft made it. Another interface of that name stays.
pub fn delete_marked(name: &str, mark: &Mark) -> Result<Removal, NetlinkError> {
    with_handle(async |handle| {
        let Some(link) = find_link(&handle, name).await? else {
            return Ok(Removal::Absent);
        };
        if let Err(why) = bears(&link, mark) {
            return Ok(Removal::Foreign(why));
        }
        match handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(Removal::Deleted),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                Ok(Removal::Absent)
            }
            Err(source) => Err(NetlinkError::Request {
                what: "deleting",
                link: name.to_owned(),
                source,
            }),
        }
    })
}

/// Whether `link` bears `mark`, and if not, why not.
fn bears(link: &LinkMessage, mark: &Mark) -> Result<(), String> {
    use rtnetlink::packet_route::link::{InfoKind, LinkInfo};
    use weft_proto::PortType;
    let mut alias = None;
    let mut kind = None;
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfAlias(a) => alias = Some(a.as_str()),
            LinkAttribute::LinkInfo(infos) => {
                kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.clone()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    let kind_ok = matches!(
        (&kind, mark.port),
        (Some(InfoKind::Tun), Some(PortType::Tap) | None)
            | (Some(InfoKind::Veth), Some(PortType::Afxdp) | None)
    );
    if !kind_ok {
        return Err(format!("its kind is {kind:?}, not weft's"));
    }
    if alias != Some(mark.alias.as_str()) {
        return Err(format!("its alias is {alias:?}, not {:?}", mark.alias));
    }
    Ok(())
}

/// Creates a veth pair: `host` in the calling thread's namespace, brought up with no
/// address and no IPv6, and `pod` in the namespace open as `netns`, left down for
/// [`configure`]. Both ends get `queues` queues and MTU `mtu`. The pod end is made
/// in its namespace by the same request, so no crash leaves it in the wrong one.
pub fn create_veth(
    host: &str,
    pod: &str,
    netns: &File,
    mtu: u32,
    queues: u32,
) -> Result<(), NetlinkError> {
    use rtnetlink::packet_route::link::{InfoData, InfoVeth};
    use rtnetlink::{LinkMessageBuilder, LinkVeth};

    let err = |what| {
        let link = host.to_owned();
        move |source| NetlinkError::Request { what, link, source }
    };
    with_handle(async |handle| {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(pod.to_owned())
            .mtu(mtu)
            .setns_by_fd(netns.as_raw_fd())
            .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
            .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
            .build();
        let msg = LinkVeth::new(host, pod)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(mtu)
            .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
            .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
            .build();
        handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(err("creating the veth pair"))?;
        let index = link_index(&handle, host)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(host.to_owned()))?;
        // The host end must not speak for the node: no router solicitations, no
        // link-local address (a kernel without IPv6 has no such file).
        if let Err(e) = std::fs::write(format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6"), "1")
        {
            log::debug!("{host}: disabling IPv6: {e}");
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(err("bringing the link up"))
    })
}

/// Turns off transmit checksum offload on `name`, in the calling thread's namespace
/// (`ethtool -K name tx off`). A veth with XDP on its peer hands the peer's XDP
/// program partial checksums with no metadata saying so; with this off, the pod's
/// kernel completes them itself.
pub fn tx_checksum_off(name: &str) -> Result<(), NetlinkError> {
    /// `ETHTOOL_STXCSUM` (`linux/ethtool.h`).
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let fail = |source| NetlinkError::Ioctl {
        what: "turning off tx checksumming",
        link: name.to_owned(),
        source,
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(NetlinkError::NoSuchLink(name.to_owned()));
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: a plain datagram socket for the ioctl.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: `req` is a valid ifreq whose data points to a live ethtool_value.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if r != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether the interface `name` exists in the calling thread's namespace.
pub fn link_exists(name: &str) -> Result<bool, NetlinkError> {
    with_handle(async |handle| Ok(link_index(&handle, name).await?.is_some()))
}

/// What an interface looks like now, for CHECK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Its MAC address.
    pub mac: Option<MacAddr>,
    /// Its MTU.
    pub mtu: Option<u32>,
    /// Whether it is administratively up.
    pub up: bool,
    /// Its IPv4 addresses with prefix lengths.
    pub addrs: Vec<(Ipv4Addr, u8)>,
    /// Gateways of IPv4 default routes through it (main table).
    pub default_gateways: Vec<Ipv4Addr>,
    /// Its IPv6 addresses with prefix lengths (link-local ones included).
    pub addrs6: Vec<(Ipv6Addr, u8)>,
    /// Gateways of IPv6 default routes through it (main table).
    pub default_gateways6: Vec<Ipv6Addr>,
}

/// Adds to `state` the gateways of the default routes (IPv4, then IPv6) through
/// interface `name` (index `index`), from the main table.
async fn default_gateways(
    handle: &rtnetlink::Handle,
    name: &str,
    index: u32,
    state: &mut LinkState,
) -> Result<(), NetlinkError> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    let queries = [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ];
    for (v6, query) in [false, true].into_iter().zip(queries) {
        let mut routes = handle.route().get(query).execute();
        loop {
            let msg = match routes.try_next().await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                // A kernel without IPv6 may refuse the IPv6 dump: no IPv6 routes.
                Err(_) if v6 => break,
                Err(e) => {
                    return Err(NetlinkError::Request {
                        what: "listing routes",
                        link: name.to_owned(),
                        source: e,
                    })
                }
            };
            let through_us =
                (msg.attributes.iter()).any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
            if msg.header.destination_prefix_length != 0 || !through_us {
                continue;
            }
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)) => {
                        state.default_gateways.push(*gw)
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => {
                        state.default_gateways6.push(*gw)
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Reads the state of interface `name` in the calling thread's namespace; `None` if
/// there is no such interface.
pub fn inspect(name: &str) -> Result<Option<LinkState>, NetlinkError> {
    use rtnetlink::packet_route::address::AddressAttribute;
    use rtnetlink::packet_route::link::LinkFlags;
    with_handle(async |handle| {
        let err = |what| {
            let link = name.to_owned();
            move |source| NetlinkError::Request { what, link, source }
        };
        let Some(link) = find_link(&handle, name).await? else {
            return Ok(None);
        };
        let index = link.header.index;
        let mut state = LinkState {
            up: link.header.flags.contains(LinkFlags::Up),
            ..LinkState::default()
        };
        for attr in &link.attributes {
            match attr {
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(a);
                    state.mac = Some(MacAddr(m));
                }
                LinkAttribute::Mtu(m) => state.mtu = Some(*m),
                _ => {}
            }
        }
        let mut addrs = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addrs.try_next().await.map_err(err("listing addresses"))? {
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Address(IpAddr::V4(a)) => {
                        state.addrs.push((*a, msg.header.prefix_len))
                    }
                    AddressAttribute::Address(IpAddr::V6(a)) => {
                        state.addrs6.push((*a, msg.header.prefix_len))
                    }
                    _ => {}
                }
            }
        }
        default_gateways(&handle, name, index, &mut state).await?;
        Ok(Some(state))
    })
}
