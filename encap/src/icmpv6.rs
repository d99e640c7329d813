//! ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861): the errors a router
//! sends, echo, and the neighbour and router messages a pod's stack speaks to its
//! gateway.
//!
//! ```text
//! +-----------+-----------+---------------------------+
//! | type (1)  | code (1)  | checksum (2)              |
//! +-----------+-----------+---------------------------+
//! | message body: echo id and sequence; the MTU of a  |
//! | packet too big; NDP's fields, then its options    |
//! ```
//!
//! The checksum covers the IPv6 pseudo-header ([`crate::ipv6::pseudo_header`]).
//! NDP options are type-length-value in 8-byte units; a length of 0 makes the
//! message invalid (RFC 4861 4.6). What the IPv6 header must say of an NDP
//! message (hop limit 255, so that it cannot have been routed) is checked by
//! [`ndp_from_link`], which a receiver calls with the packet's hop limit.
//!
//! # Panics
//!
//! After [`Packet::new_checked`] succeeds no accessor panics. [`Repr::parse`]
//! never panics. [`Repr::emit`] panics on a buffer shorter than
//! [`Repr::buffer_len`].

use core::net::Ipv6Addr;

use crate::checksum;
use crate::inet::{get_u16, put_u16};
use crate::ipv6::{self, next_header};

/// Length of the header: type, code, checksum.
pub const HEADER_LEN: usize = 4;

/// Message types weft sends or reads.
pub mod kind {
    /// Destination unreachable.
    pub const DEST_UNREACHABLE: u8 = 1;
    /// Packet too big: the body holds the MTU of the next hop.
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time (hop limit) exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Parameter problem.
    pub const PARAM_PROBLEM: u8 = 4;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Router solicitation.
    pub const ROUTER_SOLICIT: u8 = 133;
    /// Router advertisement.
    pub const ROUTER_ADVERT: u8 = 134;
    /// Neighbour solicitation.
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbour advertisement.
    pub const NEIGHBOR_ADVERT: u8 = 136;
    /// Redirect.
    pub const REDIRECT: u8 = 137;
}

/// NDP option types.
pub mod option {
    /// Source link-layer address.
    pub const SOURCE_LLADDR: u8 = 1;
    /// Target link-layer address.
    pub const TARGET_LLADDR: u8 = 2;
    /// Prefix information.
    pub const PREFIX_INFO: u8 = 3;
    /// MTU.
    pub const MTU: u8 = 5;
}

/// Whether messages of type `t` are errors (RFC 4443 2.1: types 0 to 127), which
/// no node answers with another error.
pub const fn is_error(t: u8) -> bool {
    t < 128
}

/// Why bytes are not a message weft takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than its type's fixed part.
    #[error("ICMPv6 message of {len} bytes is too short for its type")]
    Truncated {
        /// The buffer's length.
        len: usize,
    },
    /// An NDP message with a nonzero code, an option of length 0 or running past
    /// the message, or a multicast target.
    #[error("malformed Neighbor Discovery message")]
    Ndp,
    /// A type this module does not read.
    #[error("ICMPv6 type {0} is not read here")]
    Unsupported(u8),
}

/// A read/write view of an ICMPv6 message in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer of at least a header. Never panics.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated { len });
        }
        Ok(Packet { buffer })
    }

    /// The message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// The code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), 2)
    }

    /// Whether the checksum is right for a message from `src` to `dst`.
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        let data = self.buffer.as_ref();
        let pseudo = ipv6::pseudo_header(src, dst, next_header::ICMPV6, data.len() as u32);
        checksum::combine(pseudo, checksum::sum(data)) == 0xffff
    }

    /// The body after type, code and checksum.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// For an echo request or reply, its identifier; `None` for a message too
    /// short to hold one.
    pub fn echo_ident(&self) -> Option<u16> {
        let b = self.buffer.as_ref().get(4..6)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// For an error message, the start of the packet that invoked it (RFC 4443
    /// §2.1: after the 32-bit field of its type), cut short as the sender chose;
    /// empty if the message holds none.
    pub fn invoking(&self) -> &[u8] {
        self.buffer.as_ref().get(HEADER_LEN + 4..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Computes the checksum for a message from `src` to `dst`.
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        let data = self.buffer.as_mut();
        put_u16(data, 2, 0);
        let pseudo = ipv6::pseudo_header(src, dst, next_header::ICMPV6, data.len() as u32);
        let sum = !checksum::combine(pseudo, checksum::sum(data));
        put_u16(data, 2, sum);
    }
}

/// Whether an NDP message came from the link itself: RFC 4861 has every
/// receiver drop one whose hop limit is not 255 (it was routed).
pub const fn ndp_from_link(hop_limit: u8) -> bool {
    hop_limit == 255
}

/// A router advertisement's prefix information (RFC 4861 4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixInfo {
    /// The prefix.
    pub prefix: Ipv6Addr,
    /// Its length.
    pub len: u8,
    /// On-link.
    pub on_link: bool,
    /// For stateless address autoconfiguration.
    pub autonomous: bool,
    /// Valid lifetime, seconds.
    pub valid: u32,
    /// Preferred lifetime, seconds.
    pub preferred: u32,
}

/// A message weft reads or writes. Echo data, and an error's invoking packet,
/// follow the fixed part: [`Repr::buffer_len`] does not count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    /// Echo request.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq: u16,
    },
    /// Echo reply.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq: u16,
    },
    /// Packet too big, with the next hop's MTU.
    PacketTooBig {
        /// The MTU.
        mtu: u32,
    },
    /// Destination unreachable.
    DestUnreachable {
        /// Why (0: no route, 1: prohibited, 3: address, 4: port).
        code: u8,
    },
    /// Hop limit (code 0) or reassembly time (1) exceeded.
    TimeExceeded {
        /// Which.
        code: u8,
    },
    /// Who has `target`? From `source` link address, if not from `::` (DAD).
    NeighborSolicit {
        /// The address asked for.
        target: Ipv6Addr,
        /// The asker's link address.
        source: Option<[u8; 6]>,
    },
    /// `target` is at `lladdr`.
    NeighborAdvert {
        /// Sent by a router.
        router: bool,
        /// In answer to a solicitation.
        solicited: bool,
        /// Replaces a cached link address.
        override_: bool,
        /// The address.
        target: Ipv6Addr,
        /// Its link address.
        lladdr: Option<[u8; 6]>,
    },
    /// Are there routers?
    RouterSolicit {
        /// The asker's link address.
        source: Option<[u8; 6]>,
    },
    /// A router's advertisement.
    RouterAdvert {
        /// The hop limit hosts should use (0: unspecified).
        hop_limit: u8,
        /// Addresses by DHCPv6.
        managed: bool,
        /// Other configuration by DHCPv6.
        other: bool,
        /// How long the router is a default router, seconds (0: not one).
        lifetime: u16,
        /// The router's link address.
        source: Option<[u8; 6]>,
        /// The link's MTU.
        mtu: Option<u32>,
        /// A prefix.
        prefix: Option<PrefixInfo>,
    },
}

/// Length of an NDP message's fixed part after the header, by type.
const fn ndp_fixed(t: u8) -> usize {
    match t {
        kind::ROUTER_SOLICIT => 4,
        kind::ROUTER_ADVERT => 12,
        kind::NEIGHBOR_SOLICIT | kind::NEIGHBOR_ADVERT => 20,
        _ => 0,
    }
}

/// The options of an NDP message that weft reads.
#[derive(Debug, Default)]
struct Options {
    source: Option<[u8; 6]>,
    target: Option<[u8; 6]>,
    mtu: Option<u32>,
    prefix: Option<PrefixInfo>,
}

/// Reads NDP options; unknown ones are skipped (RFC 4861 4.6).
fn options(mut rest: &[u8]) -> Result<Options, Error> {
    let mut o = Options::default();
    while !rest.is_empty() {
        let (t, units) = match rest {
            [t, units, ..] => (*t, usize::from(*units)),
            _ => return Err(Error::Ndp),
        };
        let len = units * 8;
        if len == 0 || len > rest.len() {
            return Err(Error::Ndp);
        }
        let opt = &rest[..len];
        let lladdr = || opt.get(2..8).map(|m| [m[0], m[1], m[2], m[3], m[4], m[5]]);
        match t {
            option::SOURCE_LLADDR => o.source = lladdr(),
            option::TARGET_LLADDR => o.target = lladdr(),
            option::MTU if len == 8 => {
                o.mtu = Some(u32::from_be_bytes([opt[4], opt[5], opt[6], opt[7]]))
            }
            option::PREFIX_INFO if len == 32 => o.prefix = Some(prefix_info(opt)),
            option::MTU | option::PREFIX_INFO => return Err(Error::Ndp),
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(o)
}

fn prefix_info(opt: &[u8]) -> PrefixInfo {
    let word = |at: usize| u32::from_be_bytes([opt[at], opt[at + 1], opt[at + 2], opt[at + 3]]);
    let mut prefix = [0u8; 16];
    prefix.copy_from_slice(&opt[16..32]);
    PrefixInfo {
        prefix: Ipv6Addr::from(prefix),
        len: opt[2],
        on_link: opt[3] & 0x80 != 0,
        autonomous: opt[3] & 0x40 != 0,
        valid: word(4),
        preferred: word(8),
    }
}

fn addr_at(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

impl Repr {
    /// Reads a message (its checksum is checked apart). Never panics.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr, Error> {
        let (t, code, body) = (p.msg_type(), p.code(), p.body());
        let short = || Error::Truncated {
            len: HEADER_LEN + body.len(),
        };
        let fixed = ndp_fixed(t);
        if fixed > 0 && code != 0 {
            return Err(Error::Ndp);
        }
        if body.len() < fixed.max(4) {
            return Err(short());
        }
        let u16_at = |at| get_u16(body, at);
        let u32_at =
            |at: usize| u32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        Ok(match t {
            kind::ECHO_REQUEST => Repr::EchoRequest {
                ident: u16_at(0),
                seq: u16_at(2),
            },
            kind::ECHO_REPLY => Repr::EchoReply {
                ident: u16_at(0),
                seq: u16_at(2),
            },
            kind::PACKET_TOO_BIG => Repr::PacketTooBig { mtu: u32_at(0) },
            kind::DEST_UNREACHABLE => Repr::DestUnreachable { code },
            kind::TIME_EXCEEDED => Repr::TimeExceeded { code },
            kind::NEIGHBOR_SOLICIT | kind::NEIGHBOR_ADVERT => {
                let target = addr_at(&body[4..20]);
                if target.is_multicast() {
                    return Err(Error::Ndp);
                }
                let o = options(&body[20..])?;
                if t == kind::NEIGHBOR_SOLICIT {
                    Repr::NeighborSolicit {
                        target,
                        source: o.source,
                    }
                } else {
                    Repr::NeighborAdvert {
                        router: body[0] & 0x80 != 0,
                        solicited: body[0] & 0x40 != 0,
                        override_: body[0] & 0x20 != 0,
                        target,
                        lladdr: o.target,
                    }
                }
            }
            kind::ROUTER_SOLICIT => Repr::RouterSolicit {
                source: options(&body[4..])?.source,
            },
            kind::ROUTER_ADVERT => {
                let o = options(&body[12..])?;
                Repr::RouterAdvert {
                    hop_limit: body[0],
                    managed: body[1] & 0x80 != 0,
                    other: body[1] & 0x40 != 0,
                    lifetime: u16_at(2),
                    source: o.source,
                    mtu: o.mtu,
                    prefix: o.prefix,
                }
            }
            other => return Err(Error::Unsupported(other)),
        })
    }

    /// The message's length as [`Repr::emit`] writes it (without echo data or
    /// an error's invoking packet).
    pub fn buffer_len(&self) -> usize {
        let lladdr = |a: &Option<[u8; 6]>| if a.is_some() { 8 } else { 0 };
        HEADER_LEN
            + match self {
                Repr::EchoRequest { .. }
                | Repr::EchoReply { .. }
                | Repr::PacketTooBig { .. }
                | Repr::DestUnreachable { .. }
                | Repr::TimeExceeded { .. } => 4,
                Repr::NeighborSolicit { source, .. } => 20 + lladdr(source),
                Repr::NeighborAdvert { lladdr: a, .. } => 20 + lladdr(a),
                Repr::RouterSolicit { source } => 4 + lladdr(source),
                Repr::RouterAdvert {
                    source,
                    mtu,
                    prefix,
                    ..
                } => {
                    12 + lladdr(source)
                        + if mtu.is_some() { 8 } else { 0 }
                        + if prefix.is_some() { 32 } else { 0 }
                }
            }
    }

    /// Writes the message into the start of `buf` (checksum 0: fill it with
    /// [`Packet::fill_checksum`] once what follows is in place).
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`Repr::buffer_len`].
    pub fn emit(&self, buf: &mut [u8]) {
        let out = &mut buf[..self.buffer_len()];
        out.fill(0);
        let (t, code) = self.type_code();
        out[0] = t;
        out[1] = code;
        let body = &mut out[HEADER_LEN..];
        match *self {
            Repr::EchoRequest { ident, seq } | Repr::EchoReply { ident, seq } => {
                put_u16(body, 0, ident);
                put_u16(body, 2, seq);
            }
            Repr::PacketTooBig { mtu } => body[..4].copy_from_slice(&mtu.to_be_bytes()),
            Repr::DestUnreachable { .. } | Repr::TimeExceeded { .. } => {}
            Repr::NeighborSolicit { target, source } => {
                body[4..20].copy_from_slice(&target.octets());
                emit_lladdr(&mut body[20..], option::SOURCE_LLADDR, source);
            }
            Repr::NeighborAdvert {
                router,
                solicited,
                override_,
                target,
                lladdr,
            } => {
                body[0] =
                    u8::from(router) << 7 | u8::from(solicited) << 6 | u8::from(override_) << 5;
                body[4..20].copy_from_slice(&target.octets());
                emit_lladdr(&mut body[20..], option::TARGET_LLADDR, lladdr);
            }
            Repr::RouterSolicit { source } => {
                emit_lladdr(&mut body[4..], option::SOURCE_LLADDR, source);
            }
            Repr::RouterAdvert { .. } => self.emit_advert(body),
        }
    }

    fn type_code(&self) -> (u8, u8) {
        match *self {
            Repr::EchoRequest { .. } => (kind::ECHO_REQUEST, 0),
            Repr::EchoReply { .. } => (kind::ECHO_REPLY, 0),
            Repr::PacketTooBig { .. } => (kind::PACKET_TOO_BIG, 0),
            Repr::DestUnreachable { code } => (kind::DEST_UNREACHABLE, code),
            Repr::TimeExceeded { code } => (kind::TIME_EXCEEDED, code),
            Repr::NeighborSolicit { .. } => (kind::NEIGHBOR_SOLICIT, 0),
            Repr::NeighborAdvert { .. } => (kind::NEIGHBOR_ADVERT, 0),
            Repr::RouterSolicit { .. } => (kind::ROUTER_SOLICIT, 0),
            Repr::RouterAdvert { .. } => (kind::ROUTER_ADVERT, 0),
        }
    }

    fn emit_advert(&self, body: &mut [u8]) {
        let Repr::RouterAdvert {
            hop_limit,
            managed,
            other,
            lifetime,
            source,
            mtu,
            prefix,
        } = *self
        else {
            return;
        };
        body[0] = hop_limit;
        body[1] = u8::from(managed) << 7 | u8::from(other) << 6;
        put_u16(body, 2, lifetime);
        let mut at = 12 + emit_lladdr(&mut body[12..], option::SOURCE_LLADDR, source);
        if let Some(mtu) = mtu {
            body[at..at + 2].copy_from_slice(&[option::MTU, 1]);
            body[at + 4..at + 8].copy_from_slice(&mtu.to_be_bytes());
            at += 8;
        }
        if let Some(p) = prefix {
            let o = &mut body[at..at + 32];
            o[..4].copy_from_slice(&[
                option::PREFIX_INFO,
                4,
                p.len,
                u8::from(p.on_link) << 7 | u8::from(p.autonomous) << 6,
            ]);
            o[4..8].copy_from_slice(&p.valid.to_be_bytes());
            o[8..12].copy_from_slice(&p.preferred.to_be_bytes());
            o[16..32].copy_from_slice(&p.prefix.octets());
        }
    }
}

/// Writes a link-address option of type `t` if there is an address; its length.
fn emit_lladdr(out: &mut [u8], t: u8, lladdr: Option<[u8; 6]>) -> usize {
    match lladdr {
        Some(mac) => {
            out[..2].copy_from_slice(&[t, 1]);
            out[2..8].copy_from_slice(&mac);
            8
        }
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 2);
    const GW: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 1);
    const MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02];

    fn round_trip(r: Repr) -> Repr {
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut buf);
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.fill_checksum(&POD, &GW);
        assert!(p.verify_checksum(&POD, &GW));
        // Another source, another sum (swapping the two would not tell: the
        // pseudo-header adds them).
        let other = Ipv6Addr::new(0xfd00, 0x10, 0x244, 9, 0, 0, 0, 9);
        assert!(!p.verify_checksum(&other, &GW));
        Repr::parse(&p).unwrap()
    }

    /// An echo's identifier and an error's invoking packet are where RFC 4443 puts
    /// them, and a message too short for them has none, without a panic.
    #[test]
    fn echo_identifiers_and_invoking_packets_are_read_in_bounds() {
        let mut echo = vec![
            0u8;
            Repr::EchoRequest {
                ident: 0x1234,
                seq: 9
            }
            .buffer_len()
        ];
        Repr::EchoRequest {
            ident: 0x1234,
            seq: 9,
        }
        .emit(&mut echo);
        assert_eq!(
            Packet::new_checked(&echo[..]).unwrap().echo_ident(),
            Some(0x1234)
        );
        let error = [1u8, 4, 0, 0, 0, 0, 0, 0, 0x60, 0, 0, 0];
        let p = Packet::new_checked(&error[..]).unwrap();
        assert_eq!(p.invoking(), &[0x60, 0, 0, 0]);
        for len in 4..8 {
            let p = Packet::new_checked(&error[..len]).unwrap();
            assert!(p.invoking().is_empty());
            assert_eq!(p.echo_ident().is_some(), len >= 6);
        }
    }

    /// Every message weft writes reads back as itself, with a right checksum.
    #[test]
    fn messages_round_trip() {
        let all = [
            Repr::EchoRequest { ident: 7, seq: 9 },
            Repr::EchoReply { ident: 7, seq: 9 },
            Repr::PacketTooBig { mtu: 1430 },
            Repr::DestUnreachable { code: 4 },
            Repr::TimeExceeded { code: 0 },
            Repr::NeighborSolicit {
                target: GW,
                source: Some(MAC),
            },
            Repr::NeighborSolicit {
                target: GW,
                source: None,
            },
            Repr::NeighborAdvert {
                router: true,
                solicited: true,
                override_: true,
                target: GW,
                lladdr: Some(MAC),
            },
            Repr::RouterSolicit { source: Some(MAC) },
            Repr::RouterAdvert {
                hop_limit: 64,
                managed: false,
                other: false,
                lifetime: 1800,
                source: Some(MAC),
                mtu: Some(1450),
                prefix: Some(PrefixInfo {
                    prefix: Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0),
                    len: 64,
                    on_link: true,
                    autonomous: false,
                    valid: u32::MAX,
                    preferred: u32::MAX,
                }),
            },
        ];
        for r in all {
            assert_eq!(round_trip(r), r);
        }
    }

    /// A neighbour solicitation as Linux sends it (captured layout): reserved,
    /// target, source link-address option.
    #[test]
    fn reads_a_linux_solicitation() {
        let mut m = vec![kind::NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&GW.octets());
        m.extend_from_slice(&[1, 1]);
        m.extend_from_slice(&MAC);
        let mut p = Packet::new_checked(&mut m[..]).unwrap();
        p.fill_checksum(&POD, &"ff02::1:ff00:1".parse().unwrap());
        assert_eq!(
            Repr::parse(&p).unwrap(),
            Repr::NeighborSolicit {
                target: GW,
                source: Some(MAC)
            }
        );
        assert!(ndp_from_link(255) && !ndp_from_link(254));
    }

    /// Malformed NDP is refused: a zero-length option, one past the end, a
    /// nonzero code, a multicast target, a short body.
    #[test]
    fn refuses_malformed_ndp() {
        let good = {
            let r = Repr::NeighborAdvert {
                router: false,
                solicited: true,
                override_: false,
                target: POD,
                lladdr: Some(MAC),
            };
            let mut b = vec![0u8; r.buffer_len()];
            r.emit(&mut b);
            b
        };
        let parse = |b: &[u8]| Repr::parse(&Packet::new_checked(b).unwrap());
        assert!(parse(&good).is_ok());
        let mut zero = good.clone();
        zero[25] = 0;
        assert_eq!(parse(&zero), Err(Error::Ndp));
        let mut long = good.clone();
        long[25] = 2;
        assert_eq!(parse(&long), Err(Error::Ndp));
        let mut code = good.clone();
        code[1] = 1;
        assert_eq!(parse(&code), Err(Error::Ndp));
        let mut multicast = good.clone();
        multicast[8] = 0xff;
        assert_eq!(parse(&multicast), Err(Error::Ndp));
        assert!(matches!(parse(&good[..20]), Err(Error::Truncated { .. })));
        assert_eq!(
            parse(&[kind::REDIRECT, 0, 0, 0, 0, 0, 0, 0]),
            Err(Error::Unsupported(137))
        );
        assert!(is_error(kind::PACKET_TOO_BIG) && !is_error(kind::ECHO_REQUEST));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                if let Ok(r) = Repr::parse(&p) {
                    // What parses is written back to as many bytes or fewer
                    // (unknown options and trailing data are not kept).
                    let mut out = vec![0u8; r.buffer_len()];
                    r.emit(&mut out);
                    prop_assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), Ok(r));
                }
                let _ = p.verify_checksum(&POD, &GW);
            }
        }
    }
}
