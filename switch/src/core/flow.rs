//! Which connection a packet belongs to, as the connection tables key it: its 5-tuple,
//! the destination port rules match, whether it closes the connection, and for an
//! ICMP error the connection of the packet it quotes. Read once per packet by the
//! steps that keep state (the host boundary and NetworkPolicy).

use weft_encap::ipv6::next_header;
use weft_encap::{icmpv4, icmpv6, ipv4, ipv6, tcp, udp};

use super::conntrack::{Addr, FlowKey};

/// What the connection tables need of a packet, of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flow<A: Addr = u32> {
    /// The 5-tuple (for ICMP echo, both ports are the echo identifier; for ICMP, the
    /// type).
    pub key: FlowKey<A>,
    /// The destination port rules match against: TCP, UDP and SCTP only, and not in
    /// a fragment after the first.
    pub port: Option<u16>,
    /// TCP FIN or RST.
    pub closing: bool,
    /// For a TCP SYN without ACK (the first packet of a connection), its sequence
    /// number: the connection's initial one, which no NAT rewrites.
    pub opening: Option<u32>,
    /// For an ICMP error, the connection of the packet it quotes, when it goes to
    /// that packet's sender.
    pub error_about: Option<FlowKey<A>>,
    /// Whether the packet is a fragment, and which.
    pub fragment: Option<Fragment>,
}

/// A fragment of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fragment {
    /// The first fragment, which carries the ports, or a later one, which does not.
    pub first: bool,
    /// The datagram's identification (16 bits in IPv4, 32 in IPv6).
    pub ident: u32,
}

/// The ports of a transport header at the start of `payload` of protocol `proto`:
/// TCP, UDP and SCTP ports, or an echo's identifier twice; and whether they are
/// transport ports.
fn ports_of(proto: u8, payload: &[u8]) -> Option<(u16, u16, bool)> {
    if let Some((s, d)) = udp::ports(proto, payload) {
        return Some((s, d, true));
    }
    if proto != ipv4::protocol::ICMP {
        return None;
    }
    let m = icmpv4::Packet::new_checked(payload).ok()?;
    matches!(
        m.msg_type(),
        icmpv4::kind::ECHO_REQUEST | icmpv4::kind::ECHO_REPLY
    )
    .then(|| (m.echo_ident(), m.echo_ident(), false))
}

/// The key of the IPv4 header `ip` with the ports of `payload`, where a first
/// fragment (or an unfragmented packet) has them.
fn key_of(ip: &ipv4::Packet<&[u8]>, payload: &[u8]) -> (FlowKey, bool) {
    let mut key = FlowKey {
        src: u32::from(ip.src_addr()),
        dst: u32::from(ip.dst_addr()),
        sport: 0,
        dport: 0,
        proto: ip.protocol(),
        icmp: 0,
    };
    let mut transport = false;
    if ip.frag_offset() == 0 {
        if let Some((s, d, t)) = ports_of(key.proto, payload) {
            (key.sport, key.dport, transport) = (s, d, t);
        }
        if key.proto == ipv4::protocol::ICMP {
            key.icmp = payload.first().copied().unwrap_or(0);
        }
    }
    (key, transport)
}

/// The connection of the packet an ICMP error quotes: its IPv4 header and the start
/// of its payload, cut short by design, so its total length is not checked.
fn quoted_key(data: &[u8]) -> Option<FlowKey> {
    let ip = ipv4::Packet::new_unchecked(data);
    let header = data.get(..ipv4::HEADER_LEN).map(|_| ip.header_len())?;
    if data[0] >> 4 != 4 || header < ipv4::HEADER_LEN || header > data.len() {
        return None;
    }
    Some(key_of(&ip, &data[header..]).0)
}

/// Whether ICMP type `t` reports a problem with one packet, which it quotes:
/// destination unreachable, source quench, time exceeded, parameter problem. Others
/// (redirects, router messages, unknown types) are judged as ICMP of their own.
fn quotes_a_packet(t: u8) -> bool {
    matches!(t, 3 | 4 | 11 | 12)
}

impl Flow {
    /// The flow of the validated IPv4 packet `ip`.
    pub fn of(ip: &ipv4::Packet<&[u8]>) -> Flow {
        let payload = ip.payload();
        let (key, transport) = key_of(ip, payload);
        let port = transport.then_some(key.dport);
        let tcp = (key.proto == ipv4::protocol::TCP && transport)
            .then(|| tcp::Packet::new_checked(payload).ok())
            .flatten();
        let closing = tcp.as_ref().is_some_and(|t| t.fin() || t.rst());
        let opening = tcp
            .as_ref()
            .filter(|t| t.syn() && !t.ack_flag())
            .map(|t| t.seq());
        let fragment = (ip.frag_offset() != 0 || ip.more_fragments()).then(|| Fragment {
            first: ip.frag_offset() == 0,
            ident: u32::from(ip.ident()),
        });
        let error_about = (key.proto == ipv4::protocol::ICMP && ip.frag_offset() == 0)
            .then(|| icmpv4::Packet::new_checked(payload).ok())
            .flatten()
            .filter(|m| quotes_a_packet(m.msg_type()))
            .and_then(|m| quoted_key(m.data()))
            // An error goes to the sender of the packet it quotes.
            .filter(|inner| inner.src == key.dst);
        Flow {
            key,
            port,
            closing,
            opening,
            error_about,
            fragment,
        }
    }

    /// For a fragment, the key of its datagram, the same for every fragment: the
    /// addresses, the protocol, the IPv4 identification as the `sport`, and a `dport`
    /// of 0, which no connection uses (nor an ICMP type: later fragments have none).
    pub fn datagram(&self) -> Option<FlowKey> {
        self.fragment.map(|f| FlowKey {
            // An IPv4 identification: 16 bits.
            sport: f.ident as u16,
            dport: 0,
            icmp: 0,
            ..self.key
        })
    }
}

/// The ports of an ICMPv6 message at the start of `payload`: an echo's
/// identifier twice.
fn icmpv6_ports(payload: &[u8]) -> Option<(u16, u16, bool)> {
    let m = icmpv6::Packet::new_checked(payload).ok()?;
    let echo = matches!(
        m.msg_type(),
        icmpv6::kind::ECHO_REQUEST | icmpv6::kind::ECHO_REPLY
    );
    let ident = m.echo_ident().filter(|_| echo)?;
    Some((ident, ident, false))
}

/// The key of an IPv6 packet from the header `ip` and `payload` (its payload, or
/// as much of it as a quote holds), with the upper layer past its extension
/// headers, whose ports a first fragment (or a whole packet) has; and whether
/// they are transport ports, and where the upper layer is. A packet whose
/// extension headers do not read has no ports: its protocol is the first next
/// header, and only rules without ports can allow it.
fn key_of6(
    ip: &ipv6::Packet<&[u8]>,
    payload: &[u8],
) -> (FlowKey<u128>, bool, Option<ipv6::UpperLayer>) {
    let upper = ipv6::upper_layer(ip.next_header(), payload).ok();
    let mut key = FlowKey {
        src: u128::from(ip.src_addr()),
        dst: u128::from(ip.dst_addr()),
        sport: 0,
        dport: 0,
        proto: upper.map_or(ip.next_header(), |u| u.protocol),
        icmp: 0,
    };
    let mut transport = false;
    if let Some(u) = upper.filter(|u| u.fragment.is_none_or(|f| f.offset == 0)) {
        let rest = &payload[u.offset..];
        let ports = match u.protocol {
            next_header::ICMPV6 => icmpv6_ports(rest),
            p => udp::ports(p, rest).map(|(s, d)| (s, d, true)),
        };
        if let Some((s, d, t)) = ports {
            (key.sport, key.dport, transport) = (s, d, t);
        }
        if u.protocol == next_header::ICMPV6 {
            key.icmp = rest.first().copied().unwrap_or(0);
        }
    }
    (key, transport, upper)
}

/// The connection of the packet an ICMPv6 error quotes: its IPv6 header and as
/// much of the rest as fits, cut short by design, so its payload is what the
/// quote holds of it, whatever its header's length says.
fn quoted_key6(data: &[u8]) -> Option<FlowKey<u128>> {
    if data.len() < ipv6::HEADER_LEN || data[0] >> 4 != 6 {
        return None;
    }
    let ip = ipv6::Packet::new_unchecked(data);
    let end = (ipv6::HEADER_LEN + ip.payload_len()).min(data.len());
    Some(key_of6(&ip, &data[ipv6::HEADER_LEN..end]).0)
}

impl Flow<u128> {
    /// The flow of the validated IPv6 packet `ip`.
    pub fn of6(ip: &ipv6::Packet<&[u8]>) -> Flow<u128> {
        let (key, transport, upper) = key_of6(ip, ip.payload());
        let port = transport.then_some(key.dport);
        let fragment = upper.and_then(|u| u.fragment).map(|f| Fragment {
            first: f.offset == 0,
            ident: f.ident,
        });
        let first = fragment.is_none_or(|f| f.first);
        let rest = upper.map_or(&[][..], |u| &ip.payload()[u.offset..]);
        let tcp = (key.proto == next_header::TCP && transport)
            .then(|| tcp::Packet::new_checked(rest).ok())
            .flatten();
        let error_about = (key.proto == next_header::ICMPV6 && first)
            .then(|| icmpv6::Packet::new_checked(rest).ok())
            .flatten()
            .filter(|m| icmpv6::is_error(m.msg_type()))
            .and_then(|m| quoted_key6(m.invoking()))
            // An error goes to the sender of the packet it quotes.
            .filter(|inner| inner.src == key.dst);
        Flow {
            key,
            port,
            closing: tcp.as_ref().is_some_and(|t| t.fin() || t.rst()),
            opening: (tcp.as_ref())
                .filter(|t| t.syn() && !t.ack_flag())
                .map(|t| t.seq()),
            error_about,
            fragment,
        }
    }
}

/// A routed packet's [`Flow`], read only when a step first needs it: most packets
/// meet no policy and no connection through the host, and need none.
#[derive(Debug)]
pub(super) struct LazyFlow<'p, 'b> {
    ip: &'p ipv4::Packet<&'b [u8]>,
    flow: Option<Flow>,
}

impl<'p, 'b> LazyFlow<'p, 'b> {
    /// The flow of `ip`, not read yet.
    pub fn new(ip: &'p ipv4::Packet<&'b [u8]>) -> LazyFlow<'p, 'b> {
        LazyFlow { ip, flow: None }
    }

    /// The packet's source address.
    pub fn src(&self) -> std::net::Ipv4Addr {
        self.ip.src_addr()
    }

    /// The packet's destination address.
    pub fn dst(&self) -> std::net::Ipv4Addr {
        self.ip.dst_addr()
    }

    /// The flow, read at the first call.
    pub fn get(&mut self) -> &Flow {
        let ip = self.ip;
        self.flow.get_or_insert_with(|| Flow::of(ip))
    }
}
