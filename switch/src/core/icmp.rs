//! The ICMP errors a router sends: unreachable, time exceeded, fragmentation needed.
//! Each worker sends at most [`PER_SECOND`] a second, in bursts of [`BURST`], as
//! Linux does by default (`icmp_msgs_per_sec`, `icmp_msgs_burst`): a pod that sends
//! to addresses nobody holds cannot make the switch answer it, or a forged source,
//! at the rate it sends. An error over the limit is dropped as `icmp_limited`, on
//! the port or peer the packet it was about came from.

use weft_encap::{ethernet, icmpv4, ipv4};

use super::forward::Facts;
use super::rate::TokenBucket;
use super::{Core, Ctx, Frame, Ingress, Offload, Sink, HEADROOM};
use crate::tables::counters::DropReason;

/// ICMP errors a worker sends a second, sustained.
pub const PER_SECOND: u64 = 1000;
/// ...and at once.
pub const BURST: u64 = 50;

/// The ICMP errors one worker may still send.
pub(super) type Limit = TokenBucket<PER_SECOND, BURST>;

/// Largest IPv4 packet an ICMP error may be (RFC 1812, 4.3.2.3).
const ICMP_ERROR_MAX: usize = 576;

/// Room for one error: headroom, Ethernet, the largest error packet (an ICMPv6
/// error may fill IPv6's minimum MTU, 1280 bytes).
pub(super) const BUF_LEN: usize = HEADROOM + ethernet::HEADER_LEN + 1280;

/// "Internetwork control" precedence, which routers send their errors with.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// An error the switch answers a packet with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IcmpError {
    /// No route to the destination.
    HostUnreachable,
    /// The TTL ran out here.
    TtlExceeded,
    /// Larger than the MTU given, with DF set.
    FragNeeded(u16),
    /// Nothing takes the packet's port: a Service port with no endpoint, or a port
    /// no Service of its ClusterIP has (as kube-proxy's rules reject it; a TCP
    /// client's connect fails with `ECONNREFUSED`). Sent from the address the
    /// packet went to, as a host without the port answers, so that the node, whose
    /// own address is the gateway's, is answered too.
    PortUnreachable,
}

impl IcmpError {
    fn repr(self) -> icmpv4::ErrorRepr {
        let (kind, code, next_hop_mtu) = match self {
            IcmpError::HostUnreachable => {
                (icmpv4::kind::DEST_UNREACHABLE, icmpv4::unreachable::HOST, 0)
            }
            IcmpError::PortUnreachable => {
                (icmpv4::kind::DEST_UNREACHABLE, icmpv4::unreachable::PORT, 0)
            }
            IcmpError::TtlExceeded => (icmpv4::kind::TIME_EXCEEDED, 0, 0),
            IcmpError::FragNeeded(mtu) => (
                icmpv4::kind::DEST_UNREACHABLE,
                icmpv4::unreachable::FRAG_NEEDED,
                mtu,
            ),
        };
        icmpv4::ErrorRepr {
            kind,
            code,
            next_hop_mtu,
        }
    }
}

impl Core {
    /// Sends `error` about `orig` (an IPv4 packet from `from`) back to its source, from
    /// the gateway address, routed like any other packet, within the worker's limit.
    /// Errors never answer errors, later fragments, or sources that cannot be
    /// answered.
    pub(super) fn icmp_error<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        from: Ingress,
        orig: &[u8],
        facts: &Facts,
        error: IcmpError,
    ) {
        let gateway = cx.tables.node.gateway;
        let src = facts.src;
        let sender = match error {
            IcmpError::PortUnreachable => facts.dst,
            _ => gateway,
        };
        if facts.error_exempt
            || src.is_unspecified()
            || src.is_multicast()
            || src.is_broadcast()
            || src == sender
        {
            return;
        }
        if !self.icmp_limit.take(cx.now) {
            self.drop_at(cx, from, DropReason::IcmpLimited);
            return;
        }
        let header = ipv4::HEADER_LEN + icmpv4::HEADER_LEN;
        let quoted = &orig[..orig.len().min(ICMP_ERROR_MAX - header)];
        let total = header + quoted.len();
        let mut buf = std::mem::take(&mut self.icmp);
        let ip = &mut buf[HEADROOM + ethernet::HEADER_LEN..];
        ipv4::Repr {
            src: sender,
            dst: src,
            protocol: ipv4::protocol::ICMP,
            payload_len: (total - ipv4::HEADER_LEN) as u16,
            ttl: 64,
            tos: TOS_INTERNETWORK_CONTROL,
            dont_fragment: false,
        }
        .emit(ip);
        error.repr().emit(&mut ip[ipv4::HEADER_LEN..], quoted);
        // Routed from the switch itself: no TTL decrement, and never answered by
        // another error (its source is the gateway). Its drops count on `from`.
        let frame = Frame::new(&mut buf, HEADROOM, ethernet::HEADER_LEN + total);
        self.forward(cx, Ingress::Icmp(from.cause()), &Offload::PLAIN, frame);
        self.icmp = buf;
    }
}
