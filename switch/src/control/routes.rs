//! Host routes for direct routing (flannel's host-gw): a peer's pod subnet via the
//! peer's underlay address, in the main table of the daemon's own namespace, marked
//! with weft's route protocol number so that weftd finds and removes its own routes,
//! and only those.

use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::RouteMessageBuilder;

use crate::control::netlink::{with_handle, NetlinkError};

/// The route protocol number weft's routes carry (`ip route show proto 119`); unused
/// by the protocols iproute2 lists.
pub const WEFT_RTPROT: u8 = 119;

/// How the host reaches an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTo {
    /// The output interface's index.
    pub oif: u32,
    /// Its name.
    pub dev: String,
    /// The gateway, if the address is not on the interface's link.
    pub gateway: Option<Ipv4Addr>,
}

/// A route to a direct peer's pod subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirectRoute {
    /// The peer's pod subnet.
    pub subnet: Ipv4Net,
    /// The peer's underlay address.
    pub via: Ipv4Addr,
    /// The interface the peer is on.
    pub oif: u32,
}

fn request(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |source| NetlinkError::Request {
        what,
        link: "the main table".into(),
        source,
    }
}

/// How the host reaches `dst` now (`ip route get`), in the calling thread's
/// namespace; `None` if it does not, or `dst` is one of its own addresses.
pub fn route_to(dst: Ipv4Addr) -> Result<Option<RouteTo>, NetlinkError> {
    with_handle(async |handle| {
        let query = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let mut answers = handle.route().get(query).execute();
        let msg = match answers.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(rtnetlink::Error::NetlinkError(e))
                if [-libc::ENETUNREACH, -libc::EHOSTUNREACH].contains(&e.raw_code()) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(request("looking up a route")(e)),
        };
        if msg.header.kind != RouteType::Unicast {
            return Ok(None);
        }
        let (mut oif, mut gateway) = (None, None);
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => gateway = Some(*gw),
                _ => {}
            }
        }
        let Some(oif) = oif else { return Ok(None) };
        let mut links = handle.link().get().match_index(oif).execute();
        let dev = links
            .try_next()
            .await
            .map_err(request("naming an interface"))?
            .and_then(|l| {
                l.attributes.into_iter().find_map(|a| match a {
                    rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                })
            })
            .unwrap_or_else(|| format!("if{oif}"));
        Ok(Some(RouteTo { oif, dev, gateway }))
    })
}

/// The destination of one of weft's routes, if `msg` is one.
fn weft_route(msg: &RouteMessage) -> Option<Ipv4Net> {
    if msg.header.protocol != RouteProtocol::Other(WEFT_RTPROT) {
        return None;
    }
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => {
            Ipv4Net::new(*d, msg.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}

/// Makes weft's routes in the main table exactly `wanted`: adds or replaces each, and
/// deletes every other route of weft's protocol (a peer gone, or a previous run's).
/// Returns how many it deleted.
pub fn sync(wanted: &[DirectRoute]) -> Result<usize, NetlinkError> {
    with_handle(async |handle| {
        for r in wanted {
            let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(r.subnet.network(), r.subnet.prefix_len())
                .gateway(r.via)
                .output_interface(r.oif)
                .protocol(RouteProtocol::Other(WEFT_RTPROT))
                .build();
            handle
                .route()
                .add(msg)
                .replace()
                .execute()
                .await
                .map_err(request("adding a direct route"))?;
        }
        let all = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = handle.route().get(all).execute();
        let mut stale = Vec::new();
        while let Some(msg) = routes.try_next().await.map_err(request("listing routes"))? {
            if let Some(dst) = weft_route(&msg) {
                if !wanted.iter().any(|r| r.subnet == dst) {
                    stale.push(msg);
                }
            }
        }
        let n = stale.len();
        for msg in stale {
            match handle.route().del(msg).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
                Err(e) => return Err(request("deleting a direct route")(e)),
            }
        }
        Ok(n)
    })
}

/// Lets the host forward between the underlay and the host port, and from the host
/// port back into it: `net.ipv4.ip_forward = 1` in the calling thread's namespace.
pub fn enable_forwarding() -> std::io::Result<()> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(path, "1")?;
    log::info!("net.ipv4.ip_forward set to 1");
    Ok(())
}
