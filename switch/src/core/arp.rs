//! ARP: the switch answers for every address it routes (and, with Services in the
//! switch, every address of the Service CIDR), with its router MAC, so a pod sends
//! everything to the switch and there is no broadcast domain to flood.

use weft_encap::arp::{self, Operation};
use weft_encap::ethernet::{self, ethertype};

use super::{Core, Ctx, Offload, Sink};
use crate::tables::counters::DropReason;
use crate::tables::fib::NextHop;
use crate::tables::PortKind;

impl Core {
    /// Answers an ARP request that came from port `i`, in place in `frame`.
    pub(super) fn arp<S: Sink + ?Sized>(
        &mut self,
        cx: &mut Ctx<'_, S>,
        i: usize,
        frame: &mut [u8],
    ) {
        let t = cx.tables;
        let port = &t.ports[i];
        let body = &frame[ethernet::HEADER_LEN..];
        let request = match arp::Packet::new_checked(body).map(|p| arp::Repr::parse(&p)) {
            Err(_) | Ok(Err(arp::Error::Truncated { .. })) => {
                return port.counters.discard(self.worker, DropReason::Malformed)
            }
            Ok(Err(arp::Error::Unsupported)) => {
                return port.counters.discard(self.worker, DropReason::ArpIgnored)
            }
            Ok(Ok(r)) if r.operation == Operation::Request => r,
            Ok(Ok(_)) => return port.counters.discard(self.worker, DropReason::ArpIgnored),
        };
        let target = request.target_ip;
        let hop = t.fib.lookup(target).unwrap_or(NextHop::Unreachable);
        // With Services in the switch, the node routes the Service CIDR on `weft0`
        // as it routes pods: the switch answers for the addresses it translates,
        // which the FIB leaves to the host.
        let service = (t.services.as_deref()).is_some_and(|s| s.cidr().contains(&target));
        // Addresses on the asker's own side are not the switch's to answer for.
        let own = target == request.sender_ip
            || (port.kind == PortKind::Pod && target == port.ip)
            || hop == NextHop::Local(i)
            || (port.kind == PortKind::Host && hop == NextHop::Host && !service);
        if own {
            return port.counters.discard(self.worker, DropReason::ArpIgnored);
        }
        let router = t.node.router_mac.0;
        ethernet::emit_header(frame, request.sender_mac, router, ethertype::ARP);
        arp::Repr {
            operation: Operation::Reply,
            sender_mac: router,
            sender_ip: target,
            target_mac: request.sender_mac,
            target_ip: request.sender_ip,
        }
        .emit(&mut frame[ethernet::HEADER_LEN..]);
        // The reply keeps the request's length: its link padding goes back as it came.
        cx.sink.to_port(port, &Offload::PLAIN, frame);
    }
}
