//! Segmentation of the TCP and UDP super-frames, over IPv4 and IPv6, that a TAP
//! with TSO, TSO6 and USO hands out, and checksum completion for the frames it
//! leaves partial.
//!
//! A TAP opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD` gives weft frames of
//! up to 64 KiB, each described by a [`virtio::Repr`]: [`segment`] cuts one
//! into complete Ethernet frames of at most `gso_size` payload bytes each, as
//! the kernel's `tcp_gso_segment` and `__udp_gso_segment` would:
//!
//! - every segment repeats the Ethernet, IPv4 (options included) and L4
//!   headers, with the IPv4 total length and header checksum fixed and the
//!   IPv4 identification incremented by one per segment (`inet_gso_segment`
//!   does this for both TCP and UDP_L4);
//! - over IPv6 (TCPV6, or UDP_L4 in an IPv6 frame), every segment repeats the
//!   fixed header and any extension headers with the payload length fixed, as
//!   `ipv6_gso_segment` does; a packet with a fragment header is refused;
//! - TCP: the sequence number advances by `gso_size` per segment, FIN and PSH
//!   stay only on the last segment and CWR only on the first;
//! - UDP_L4: each segment is its own UDP datagram with its own length;
//! - the L4 checksum of every segment is computed in full (a UDP checksum
//!   that computes to 0 is sent as 0xffff).
//!
//! Segment `i` is written at `out[i * stride + headroom..]`, where `stride`
//! is `headroom` plus the length of a full segment. The caller can write its
//! tunnel header into each segment's headroom and send every segment with one
//! `sendmsg` and `UDP_SEGMENT = stride`: all datagrams but the last then have
//! the same length, as the kernel requires. (The kernel caps one such send at
//! `UDP_MAX_SEGMENTS` datagrams, 64 before Linux 6.9 and 128 since, so a
//! caller with more segments sends `out` in slices of that many strides.)
//!
//! The input is read, never changed; nothing is allocated. Only the virtio
//! header's `gso_type`, `gso_size` and (with [`virtio::Repr::needs_csum`])
//! `csum_start` / `csum_offset` are used: `hdr_len` is a hint that tun sets
//! to the length of the packet's linear part, so the header lengths are read
//! from the IPv4 IHL (or IPv6's extension headers) and the TCP data offset
//! instead. The L4 checksum field
//! of the input is ignored, since every segment's checksum is computed anew.
//! Bytes after the IPv4 total length (Ethernet padding) are dropped.
//!
//! # Panics
//!
//! Nothing in this module panics, whatever the input: malformed frames,
//! virtio headers and buffer sizes all give an [`Error`].

use core::ops::Range;

use crate::checksum;
use crate::inet::{self, ipv4, tcp, udp, Ipv4Problem, Ipv6Problem};
use crate::virtio::{self, GsoType};
use crate::ETHERNET_HEADER_LEN;

/// The longest frame a TAP hands out or takes: Ethernet header + a 64 KiB IP
/// packet (the kernel's `GSO_MAX_SIZE` bounds an IPv6 one, header included, too).
pub const MAX_FRAME_LEN: usize = ETHERNET_HEADER_LEN + 65535;

/// The longest headers a segment can have over IPv4: Ethernet, IPv4 and TCP, all
/// with the most options. (IPv6's extension headers may make them longer: sizing
/// by [`max_out_len`] then falls short and [`segment`] says so.)
pub const MAX_HEADERS_LEN: usize = ETHERNET_HEADER_LEN + 60 + 60;

/// The shortest headers a segment can have: Ethernet, IPv4 without options, UDP.
const MIN_HEADERS_LEN: usize = ETHERNET_HEADER_LEN + crate::IPV4_HEADER_LEN + udp::LEN;

/// Errors from segmenting a super-frame or completing a checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The virtio header asks for a segmentation this module does not do.
    #[error("gso_type {gso_type:#04x} is not segmented here (only TCPV4, TCPV6 and UDP_L4, ECN only with TCP)")]
    UnsupportedGsoType {
        /// The raw `gso_type` byte, ECN bit included.
        gso_type: u8,
    },
    /// The virtio header's `gso_size` is 0.
    #[error("gso_size is 0")]
    ZeroGsoSize,
    /// The frame is too short for an Ethernet and an IPv4 header.
    #[error("frame of {len} bytes is too short for an Ethernet and an IPv4 header (34 bytes)")]
    Truncated {
        /// Length of the frame.
        len: usize,
    },
    /// The ethertype is not IPv4.
    #[error("ethertype {ethertype:#06x} is not IPv4 (0x0800)")]
    NotIpv4 {
        /// The ethertype of the frame.
        ethertype: u16,
    },
    /// The ethertype is not IPv6, for a TCPV6 super-frame.
    #[error("ethertype {ethertype:#06x} is not IPv6 (0x86dd), which TCPV6 segmentation needs")]
    NotIpv6 {
        /// The ethertype of the frame.
        ethertype: u16,
    },
    /// The IPv6 header is invalid (version, or a payload length past the frame),
    /// or its extension headers run past the packet.
    #[error("IPv6 header or extension headers invalid in a {len}-byte frame")]
    Ipv6Header {
        /// Length of the frame.
        len: usize,
    },
    /// The IP header's version is not 4.
    #[error("IP version {version} in a frame of ethertype IPv4")]
    IpVersion {
        /// The version field.
        version: u8,
    },
    /// The IPv4 IHL is below 5 words.
    #[error("IPv4 header length of {ihl} words is below the minimum of 5")]
    IpHeaderLen {
        /// The IHL field.
        ihl: u8,
    },
    /// The IPv4 total length is shorter than its header or runs past the frame.
    #[error("IPv4 total length {total_len} does not fit a {len}-byte frame")]
    IpTotalLen {
        /// The total length field.
        total_len: u16,
        /// Length of the frame.
        len: usize,
    },
    /// The IP packet is a fragment (or, over IPv6, has a fragment header), which
    /// cannot be segmented.
    #[error(
        "the IP packet is a fragment (MF or a fragment offset set, or an IPv6 fragment header)"
    )]
    Fragment,
    /// The IP protocol is not the one the virtio header's `gso_type` names.
    #[error("gso_type {gso_type} does not match IP protocol {protocol}")]
    Protocol {
        /// The segmentation asked for.
        gso_type: GsoType,
        /// The IP protocol field.
        protocol: u8,
    },
    /// The TCP data offset is below 5 words.
    #[error("TCP header length of {data_offset} words is below the minimum of 5")]
    TcpHeaderLen {
        /// The data offset field.
        data_offset: u8,
    },
    /// The L4 header runs past the end of the IPv4 packet.
    #[error("L4 header ends at byte {end}, past the IPv4 packet's end at byte {packet_end}")]
    L4Truncated {
        /// Where the L4 header ends, from the frame's start.
        end: usize,
        /// Where the IPv4 packet ends, from the frame's start.
        packet_end: usize,
    },
    /// A NEEDS_CSUM header puts the checksum elsewhere than the frame's L4 checksum field.
    #[error(
        "virtio csum_start {csum_start} and csum_offset {csum_offset} do not point at the \
         L4 checksum (start {expected_start}, offset {expected_offset})"
    )]
    ChecksumPlacement {
        /// The virtio header's `csum_start`.
        csum_start: u16,
        /// The virtio header's `csum_offset`.
        csum_offset: u16,
        /// Where the frame's L4 header starts.
        expected_start: usize,
        /// Offset of the checksum field in that L4 header.
        expected_offset: usize,
    },
    /// The output buffer cannot hold all the segments.
    #[error("output buffer of {len} bytes is too small: the segments need {needed}")]
    OutputTooSmall {
        /// Length of the output buffer.
        len: usize,
        /// Bytes the segments need (`usize::MAX` if that overflows).
        needed: usize,
    },
    /// The checksum field to complete lies outside the frame.
    #[error(
        "checksum at csum_start {csum_start} + csum_offset {csum_offset} is outside the {len}-byte frame"
    )]
    ChecksumOutOfRange {
        /// The `csum_start` asked for.
        csum_start: usize,
        /// The `csum_offset` asked for.
        csum_offset: usize,
        /// Length of the frame.
        len: usize,
    },
}

impl Error {
    fn from_ipv6(problem: Ipv6Problem, len: usize) -> Error {
        match problem {
            Ipv6Problem::Truncated => Error::Truncated { len },
            Ipv6Problem::Ethertype(ethertype) => Error::NotIpv6 { ethertype },
            Ipv6Problem::Header | Ipv6Problem::Extensions => Error::Ipv6Header { len },
        }
    }

    fn from_ipv4(problem: Ipv4Problem, len: usize) -> Error {
        match problem {
            Ipv4Problem::Truncated => Error::Truncated { len },
            Ipv4Problem::Ethertype(ethertype) => Error::NotIpv4 { ethertype },
            Ipv4Problem::Version(version) => Error::IpVersion { version },
            Ipv4Problem::HeaderLen(ihl) => Error::IpHeaderLen { ihl },
            Ipv4Problem::TotalLen(total_len) => Error::IpTotalLen { total_len, len },
        }
    }
}

/// Where [`segment`] put the segments in the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segments {
    count: usize,
    stride: usize,
    headroom: usize,
    segment_len: usize,
    last_len: usize,
}

impl Segments {
    /// Returns the number of segments, at least 1.
    pub const fn count(&self) -> usize {
        self.count
    }

    /// Returns the distance between the starts of consecutive segments' headroom.
    ///
    /// This is `headroom + segment_len`: the `UDP_SEGMENT` size for sending
    /// all segments, headroom included, with one `sendmsg`.
    pub const fn stride(&self) -> usize {
        self.stride
    }

    /// Returns the bytes left free before each segment's frame.
    pub const fn headroom(&self) -> usize {
        self.headroom
    }

    /// Returns the length of the frame of every segment but the last.
    pub const fn segment_len(&self) -> usize {
        self.segment_len
    }

    /// Returns the length of the last segment's frame, at most `segment_len`.
    pub const fn last_len(&self) -> usize {
        self.last_len
    }

    /// Returns the length of segment `i`'s frame, or `None` past the last segment.
    pub const fn frame_len(&self, i: usize) -> Option<usize> {
        if i >= self.count {
            None
        } else if i == self.count - 1 {
            Some(self.last_len)
        } else {
            Some(self.segment_len)
        }
    }

    /// Returns where segment `i`'s frame is in the output buffer.
    pub fn frame_range(&self, i: usize) -> Option<Range<usize>> {
        let len = self.frame_len(i)?;
        let start = i * self.stride + self.headroom;
        Some(start..start + len)
    }

    /// Returns where segment `i` is with its headroom: the datagram it becomes.
    pub fn datagram_range(&self, i: usize) -> Option<Range<usize>> {
        self.frame_range(i)
            .map(|frame| frame.start - self.headroom..frame.end)
    }

    /// Returns how much of the output buffer the segments use: what one
    /// `sendmsg` with `UDP_SEGMENT = stride` sends.
    pub const fn total_len(&self) -> usize {
        (self.count - 1) * self.stride + self.headroom + self.last_len
    }

    /// Returns the segments' frames in `out`, in order.
    ///
    /// Stops early if `out` is shorter than [`Segments::total_len`].
    pub fn frames<'a>(&self, out: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let this = *self;
        (0..self.count).map_while(move |i| out.get(this.frame_range(i)?))
    }
}

/// Returns how many segments `payload_len` bytes make at `gso_size` bytes each.
///
/// At least 1 (a super-frame without payload becomes one segment of headers
/// only); 0 if `gso_size` is 0.
pub const fn segment_count(payload_len: usize, gso_size: u16) -> usize {
    if gso_size == 0 {
        0
    } else if payload_len == 0 {
        1
    } else {
        payload_len.div_ceil(gso_size as usize)
    }
}

/// Returns an output buffer length that fits [`segment`] for every
/// super-frame of at most [`MAX_FRAME_LEN`] bytes with `gso_size` of at least
/// `min_gso_size`, at `headroom` bytes per segment. For sizing a buffer once.
///
/// Saturates at `usize::MAX`, which is what a `min_gso_size` of 0 gives.
pub const fn max_out_len(min_gso_size: u16, headroom: usize) -> usize {
    if min_gso_size == 0 {
        return usize::MAX;
    }
    let count = segment_count(MAX_FRAME_LEN - MIN_HEADERS_LEN, min_gso_size);
    let per_segment = headroom.saturating_add(MAX_HEADERS_LEN + min_gso_size as usize);
    count.saturating_mul(per_segment)
}

/// Returns the exact output buffer length [`segment`] needs for this frame.
///
/// Fails with the error [`segment`] would give for anything but the buffer,
/// or with [`Error::OutputTooSmall`] (`needed` = `usize::MAX`) if the length
/// overflows `usize`.
pub fn required_out_len(frame: &[u8], hdr: &virtio::Repr, headroom: usize) -> Result<usize, Error> {
    let plan = Plan::new(frame, hdr)?;
    plan.segments(headroom)
        .map(|segments| segments.total_len())
        .ok_or(Error::OutputTooSmall {
            len: 0,
            needed: usize::MAX,
        })
}

/// The virtio-net header under which `frame`, a super-frame whose L4 checksum
/// field holds the pseudo-header sum, is written to a TAP device: segmentation
/// `gso_type` (TCPV4 or UDP_L4) into `gso_size`-byte payloads, the checksum
/// left to complete from the L4 header on.
///
/// Fails as [`segment`] would for a frame it cannot cut. Never panics.
pub fn super_frame_header(
    frame: &[u8],
    gso_type: GsoType,
    gso_size: u16,
) -> Result<virtio::Repr, Error> {
    let asked = virtio::Repr {
        gso_type,
        gso_size,
        ..virtio::Repr::PLAIN
    };
    let plan = Plan::new(frame, &asked)?;
    Ok(virtio::Repr {
        needs_csum: true,
        hdr_len: plan.headers_len as u16,
        csum_start: plan.l4_start as u16,
        csum_offset: plan.kind.checksum_offset() as u16,
        ..asked
    })
}

/// The two kinds of L4 segmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Udp,
}

impl Kind {
    const fn protocol(self) -> u8 {
        match self {
            Kind::Tcp => inet::PROTO_TCP,
            Kind::Udp => inet::PROTO_UDP,
        }
    }

    const fn checksum_offset(self) -> usize {
        match self {
            Kind::Tcp => tcp::CHECKSUM,
            Kind::Udp => udp::CHECKSUM,
        }
    }
}

/// A validated super-frame: where its headers and payload are.
#[derive(Debug, Clone, Copy)]
struct Plan {
    kind: Kind,
    /// Its IP layer is IPv6.
    v6: bool,
    gso_size: usize,
    /// Offset of the L4 header.
    l4_start: usize,
    /// Length of all headers: where the payload starts.
    headers_len: usize,
    /// End of the IPv4 packet: where the payload ends.
    end: usize,
}

/// The IP layer of a super-frame, either family.
#[derive(Debug, Clone, Copy)]
struct IpLayout {
    v6: bool,
    l4_start: usize,
    end: usize,
    protocol: u8,
    fragment: bool,
}

/// The IP layout of `frame`, of the family `gso_type` names: TCPV4 IPv4, TCPV6
/// IPv6, and UDP_L4 either (the frame's ethertype says which).
fn ip_layout(frame: &[u8], gso_type: GsoType) -> Result<IpLayout, Error> {
    let ethertype = frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let v6 = match gso_type {
        GsoType::TcpV6 => true,
        GsoType::UdpL4 => ethertype == Some(inet::ETHERTYPE_IPV6),
        _ => false,
    };
    if v6 {
        let l = inet::ipv6_layout(frame).map_err(|p| Error::from_ipv6(p, frame.len()))?;
        return Ok(IpLayout {
            v6,
            l4_start: l.l4_start,
            end: l.end,
            protocol: l.protocol,
            fragment: l.fragment,
        });
    }
    let l = inet::ipv4_layout(frame).map_err(|p| Error::from_ipv4(p, frame.len()))?;
    Ok(IpLayout {
        v6,
        l4_start: l.l4_start,
        end: l.end,
        protocol: l.protocol,
        fragment: l.fragment,
    })
}

impl Plan {
    fn new(frame: &[u8], hdr: &virtio::Repr) -> Result<Plan, Error> {
        let kind = match (hdr.gso_type, hdr.gso_ecn) {
            (GsoType::TcpV4 | GsoType::TcpV6, _) => Kind::Tcp,
            (GsoType::UdpL4, false) => Kind::Udp,
            _ => {
                let ecn = if hdr.gso_ecn { virtio::GSO_ECN } else { 0 };
                return Err(Error::UnsupportedGsoType {
                    gso_type: hdr.gso_type.to_wire() | ecn,
                });
            }
        };
        if hdr.gso_size == 0 {
            return Err(Error::ZeroGsoSize);
        }
        let layout = ip_layout(frame, hdr.gso_type)?;
        if layout.fragment {
            return Err(Error::Fragment);
        }
        if layout.protocol != kind.protocol() {
            return Err(Error::Protocol {
                gso_type: hdr.gso_type,
                protocol: layout.protocol,
            });
        }
        let l4_start = layout.l4_start;
        let l4_header_len = match kind {
            Kind::Udp => udp::LEN,
            Kind::Tcp => {
                let fixed_end = l4_start + tcp::MIN_LEN;
                if fixed_end > layout.end {
                    return Err(Error::L4Truncated {
                        end: fixed_end,
                        packet_end: layout.end,
                    });
                }
                let data_offset = frame[l4_start + tcp::DATA_OFFSET] >> 4;
                if data_offset < 5 {
                    return Err(Error::TcpHeaderLen { data_offset });
                }
                usize::from(data_offset) * 4
            }
        };
        let headers_len = l4_start + l4_header_len;
        if headers_len > layout.end {
            return Err(Error::L4Truncated {
                end: headers_len,
                packet_end: layout.end,
            });
        }
        let expected_offset = kind.checksum_offset();
        if hdr.needs_csum
            && (usize::from(hdr.csum_start) != l4_start
                || usize::from(hdr.csum_offset) != expected_offset)
        {
            return Err(Error::ChecksumPlacement {
                csum_start: hdr.csum_start,
                csum_offset: hdr.csum_offset,
                expected_start: l4_start,
                expected_offset,
            });
        }
        Ok(Plan {
            kind,
            v6: layout.v6,
            gso_size: usize::from(hdr.gso_size),
            l4_start,
            headers_len,
            end: layout.end,
        })
    }

    /// Lays the segments out, or `None` if the lengths overflow `usize`.
    fn segments(&self, headroom: usize) -> Option<Segments> {
        let payload_len = self.end - self.headers_len;
        let count = segment_count(payload_len, self.gso_size as u16);
        let segment_len = self.headers_len + payload_len.min(self.gso_size);
        let last_len = self.headers_len + (payload_len - (count - 1) * self.gso_size);
        let stride = headroom.checked_add(segment_len)?;
        let segments = Segments {
            count,
            stride,
            headroom,
            segment_len,
            last_len,
        };
        // total_len = (count - 1) * stride + headroom + last_len, checked.
        (count - 1)
            .checked_mul(stride)?
            .checked_add(headroom)?
            .checked_add(last_len)?;
        Some(segments)
    }
}

/// Cuts a TCPV4 or UDP_L4 super-frame into complete Ethernet frames.
///
/// `frame` is the Ethernet frame after the virtio-net header `hdr`. Segment
/// `i` is written at `out[i * stride + headroom..]`; the bytes in between
/// (each segment's headroom) are left alone. See the module documentation
/// for what each segment's headers hold. Use [`required_out_len`] or
/// [`max_out_len`] to size `out`.
///
/// Fails, writing nothing, if `hdr` is not TCPV4 (ECN allowed) or UDP_L4,
/// if `gso_size` is 0, if the frame is not IPv4 or its headers are
/// inconsistent (with each other, with the frame's length, or with the
/// virtio header's `csum_start`/`csum_offset`), or if `out` is too small.
/// Never panics.
pub fn segment(
    frame: &[u8],
    hdr: &virtio::Repr,
    out: &mut [u8],
    headroom: usize,
) -> Result<Segments, Error> {
    let plan = Plan::new(frame, hdr)?;
    let too_small = |needed| Error::OutputTooSmall {
        len: out.len(),
        needed,
    };
    let segments = plan.segments(headroom).ok_or(too_small(usize::MAX))?;
    let needed = segments.total_len();
    if out.len() < needed {
        return Err(too_small(needed));
    }

    let kind = plan.kind;
    let (ip_start, l4_start, headers_len) = (ETHERNET_HEADER_LEN, plan.l4_start, plan.headers_len);
    let headers = &frame[..headers_len];
    let payload = &frame[headers_len..plan.end];
    let addresses = match plan.v6 {
        true => checksum::accumulate(0, &frame[ip_start..][inet::IPV6_ADDRS]),
        false => checksum::accumulate(0, &frame[ip_start..][ipv4::ADDRS]),
    };
    let first_id = inet::get_u16(frame, ip_start + ipv4::ID);
    let first_seq = match kind {
        Kind::Tcp => inet::get_u32(frame, l4_start + tcp::SEQ),
        Kind::Udp => 0,
    };
    let csum_at = kind.checksum_offset();

    for i in 0..segments.count() {
        let chunk_start = i * plan.gso_size;
        let chunk = &payload[chunk_start..payload.len().min(chunk_start + plan.gso_size)];
        let start = i * segments.stride() + headroom;
        let seg = &mut out[start..start + headers_len + chunk.len()];
        seg[..headers_len].copy_from_slice(headers);
        seg[headers_len..].copy_from_slice(chunk);
        let (front, l4) = seg.split_at_mut(l4_start);
        let ip = &mut front[ip_start..];
        let l4_len = l4.len();

        fix_ip_header(ip, plan.v6, l4_len, first_id.wrapping_add(i as u16));

        match kind {
            Kind::Tcp => {
                let seq = first_seq.wrapping_add(chunk_start as u32);
                inet::put_u32(l4, tcp::SEQ, seq);
                let mut flags = l4[tcp::FLAGS];
                if i + 1 < segments.count() {
                    flags &= !(tcp::FIN | tcp::PSH);
                }
                if i > 0 {
                    flags &= !tcp::CWR;
                }
                l4[tcp::FLAGS] = flags;
            }
            Kind::Udp => inet::put_u16(l4, udp::LENGTH, l4_len as u16),
        }
        inet::put_u16(l4, csum_at, 0);
        // IPv6's pseudo-header has a 32-bit length and 24 zero bits before the
        // protocol: as 16-bit words, the same sum as IPv4's.
        let [len_hi, len_lo] = (l4_len as u16).to_be_bytes();
        let acc = checksum::accumulate(addresses, &[0, kind.protocol(), len_hi, len_lo]);
        let mut csum = !checksum::fold(checksum::accumulate(acc, l4));
        if kind == Kind::Udp && csum == 0 {
            csum = 0xffff;
        }
        inet::put_u16(l4, csum_at, csum);
    }
    Ok(segments)
}

/// Fixes the IP header `ip` (options or extension headers included) of a segment
/// whose L4 header and payload are `l4_len` bytes: the IPv4 total length, `id` and
/// header checksum, or the IPv6 payload length. Both lengths fit in 16 bits: the
/// super-frame's did.
fn fix_ip_header(ip: &mut [u8], v6: bool, l4_len: usize, id: u16) {
    match v6 {
        true => {
            let payload_len = ip.len() - crate::ipv6::HEADER_LEN + l4_len;
            inet::put_u16(ip, crate::ipv6::field::PAYLOAD_LEN, payload_len as u16);
        }
        false => {
            inet::put_u16(ip, ipv4::TOTAL_LEN, (ip.len() + l4_len) as u16);
            inet::put_u16(ip, ipv4::ID, id);
            inet::fill_ipv4_checksum(ip);
        }
    }
}

/// Completes the L4 checksum of a frame tun flagged NEEDS_CSUM but did not segment.
///
/// The 16-bit field at `csum_start + csum_offset` must hold the pseudo-header
/// sum, as tun leaves it; the checksum over `frame[csum_start..]` replaces
/// it, a result of 0 written as 0xffff (as the kernel's `skb_checksum_help`
/// does). Fails if the field lies outside the frame; never panics.
pub fn complete_checksum(
    frame: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
) -> Result<(), Error> {
    let at = csum_start
        .checked_add(csum_offset)
        .filter(|&at| at < frame.len().saturating_sub(1))
        .ok_or(Error::ChecksumOutOfRange {
            csum_start,
            csum_offset,
            len: frame.len(),
        })?;
    let csum = match checksum::checksum(&frame[csum_start..]) {
        0 => 0xffff,
        csum => csum,
    };
    inet::put_u16(frame, at, csum);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, check_frame, Checked, L4};
    use proptest::prelude::*;

    const HEADROOM: usize = 8;

    fn segment_vec(frame: &[u8], hdr: &virtio::Repr, headroom: usize) -> (Segments, Vec<u8>) {
        let len = required_out_len(frame, hdr, headroom).unwrap();
        let mut out = vec![0xa5; len];
        let segments = segment(frame, hdr, &mut out, headroom).unwrap();
        assert_eq!(segments.total_len(), len);
        (segments, out)
    }

    fn tcp_of(checked: &Checked) -> &etherparse::TcpHeader {
        match &checked.l4 {
            L4::Tcp(tcp) => tcp,
            L4::Udp(_) => panic!("not TCP"),
        }
    }

    #[test]
    fn tcp_super_frame() {
        // 3000 bytes at 1448: 1448 + 1448 + 104, with PSH on the super-frame.
        let spec = testutil::Tcp {
            payload: (0..3000u32).map(|i| (i % 251) as u8).collect(),
            flags: 0x18,
            ..Default::default()
        };
        let (hdr, frame) = spec.build_tso(1448);
        let (segments, out) = segment_vec(&frame, &hdr, HEADROOM);
        let headers = 14 + 20 + 32;
        assert_eq!(
            segments,
            Segments {
                count: 3,
                stride: HEADROOM + headers + 1448,
                headroom: HEADROOM,
                segment_len: headers + 1448,
                last_len: headers + 104,
            }
        );
        let frames: Vec<_> = segments.frames(&out).collect();
        assert_eq!(frames.len(), 3);
        let mut payload = Vec::new();
        for (i, seg) in frames.iter().enumerate() {
            let checked = check_frame(seg);
            let tcp = tcp_of(&checked);
            assert_eq!(checked.eth.source, testutil::POD_MAC);
            assert_eq!(checked.ip.identification, spec.id + i as u16);
            assert!(checked.ip.dont_fragment);
            assert_eq!(tcp.sequence_number, spec.seq + 1448 * i as u32);
            assert_eq!(tcp.acknowledgment_number, spec.ack);
            assert_eq!(tcp.psh, i == 2, "PSH only on the last segment");
            assert!(tcp.ack);
            assert_eq!(tcp.options.as_slice(), &spec.tcp_options[..]);
            payload.extend_from_slice(&checked.payload);
        }
        assert_eq!(payload, spec.payload);
        // The headroom is left alone.
        for i in 0..3 {
            let datagram = segments.datagram_range(i).unwrap();
            assert_eq!(out[datagram.start..datagram.start + HEADROOM], [0xa5; 8]);
        }
        assert_eq!(segments.frame_range(3), None);
    }

    #[test]
    fn super_frame_header_is_what_tun_hands_out() {
        let spec = testutil::Tcp {
            payload: vec![7; 5000],
            ..Default::default()
        };
        let (tun_hdr, frame) = spec.build_tso(1448);
        let hdr = super_frame_header(&frame, GsoType::TcpV4, 1448).unwrap();
        assert_eq!(hdr.gso_type, GsoType::TcpV4);
        assert_eq!(hdr.gso_size, 1448);
        assert!(hdr.needs_csum);
        assert_eq!(
            (hdr.csum_start, hdr.csum_offset),
            (tun_hdr.csum_start, tun_hdr.csum_offset)
        );
        assert_eq!(hdr.hdr_len, 14 + 20 + 32);
        // It cuts the frame as the original header does.
        let (a, out_a) = segment_vec(&frame, &tun_hdr, 0);
        let (b, out_b) = segment_vec(&frame, &hdr, 0);
        assert_eq!((a, out_a), (b, out_b));

        let (_, udp) = testutil::Udp::default().build_uso(1000);
        let hdr = super_frame_header(&udp, GsoType::UdpL4, 1000).unwrap();
        assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 6));
        assert_eq!(hdr.hdr_len, 42);
        // A mismatch of protocol and type, and a zero size, are refused.
        assert!(matches!(
            super_frame_header(&udp, GsoType::TcpV4, 1000),
            Err(Error::Protocol { .. })
        ));
        assert_eq!(
            super_frame_header(&frame, GsoType::TcpV4, 0),
            Err(Error::ZeroGsoSize)
        );
        assert!(super_frame_header(&frame, GsoType::Udp, 1448).is_err());
    }

    #[test]
    fn fin_psh_last_and_cwr_first() {
        let spec = testutil::Tcp {
            payload: vec![0x42; 2500],
            flags: 0x80 | 0x10 | 0x08 | 0x01, // CWR ACK PSH FIN
            ..Default::default()
        };
        let (hdr, frame) = spec.build_tso(1000);
        assert!(hdr.gso_ecn);
        let (segments, out) = segment_vec(&frame, &hdr, 0);
        let flags: Vec<_> = segments
            .frames(&out)
            .map(|seg| {
                let checked = check_frame(seg);
                let tcp = tcp_of(&checked);
                (tcp.cwr, tcp.psh, tcp.fin, tcp.ack)
            })
            .collect();
        assert_eq!(
            flags,
            [
                (true, false, false, true),
                (false, false, false, true),
                (false, true, true, true)
            ]
        );
    }

    #[test]
    fn ip_options_and_id_wrap() {
        let spec = testutil::Tcp {
            ip_options: vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00], // router alert, NOPs, EOL
            id: 0xffff,
            df: false,
            payload: vec![7; 1201],
            ..Default::default()
        };
        let (hdr, frame) = spec.build_tso(600);
        let (segments, out) = segment_vec(&frame, &hdr, 3);
        assert_eq!(segments.count(), 3);
        assert_eq!(segments.last_len(), 14 + 28 + 32 + 1);
        let ids: Vec<_> = segments
            .frames(&out)
            .map(|seg| {
                let checked = check_frame(seg);
                assert_eq!(checked.ip.options.as_slice(), &spec.ip_options[..]);
                assert!(!checked.ip.dont_fragment);
                checked.ip.identification
            })
            .collect();
        assert_eq!(ids, [0xffff, 0, 1]);
    }

    #[test]
    fn udp_l4_super_frame() {
        let spec = testutil::Udp::default();
        let (hdr, frame) = spec.build_uso(1200);
        let (segments, out) = segment_vec(&frame, &hdr, 16);
        assert_eq!(segments.count(), 3);
        assert_eq!(segments.last_len(), 14 + 20 + 8 + 600);
        let mut payload = Vec::new();
        for (i, seg) in segments.frames(&out).enumerate() {
            let checked = check_frame(seg);
            let L4::Udp(udp) = &checked.l4 else {
                panic!("not UDP")
            };
            assert_eq!((udp.source_port, udp.destination_port), (33000, 443));
            assert_eq!(usize::from(udp.length), 8 + checked.payload.len());
            assert_eq!(checked.ip.identification, spec.id + i as u16);
            payload.extend_from_slice(&checked.payload);
        }
        assert_eq!(payload, spec.payload);
    }

    #[test]
    fn udp_checksum_zero_is_sent_as_ffff() {
        // Find a one-segment UDP datagram whose checksum computes to zero by
        // choosing its last two payload bytes.
        let mut spec = testutil::Udp {
            payload: vec![0x11; 40],
            ..Default::default()
        };
        let (hdr, frame) = spec.build_uso(100);
        let (_, out) = segment_vec(&frame, &hdr, 0);
        let csum = inet::get_u16(&out, 34 + 6);
        // Adding the checksum to the last payload word makes the sum 0xffff,
        // so the checksum becomes 0.
        let last = u16::from_be_bytes([spec.payload[38], spec.payload[39]]);
        let [a, b] = checksum::combine(last, csum).to_be_bytes();
        spec.payload[38] = a;
        spec.payload[39] = b;
        let (hdr, frame) = spec.build_uso(100);
        let (_, out) = segment_vec(&frame, &hdr, 0);
        assert_eq!(inet::get_u16(&out, 34 + 6), 0xffff);
        check_frame(&out);
    }

    #[test]
    fn single_and_empty_segments() {
        let spec = testutil::Tcp {
            payload: vec![1; 100],
            ..Default::default()
        };
        let (hdr, frame) = spec.build_tso(1448);
        let (segments, out) = segment_vec(&frame, &hdr, 0);
        assert_eq!((segments.count(), segments.segment_len()), (1, frame.len()));
        assert_eq!(check_frame(&out).payload, spec.payload);

        let empty = testutil::Tcp {
            payload: Vec::new(),
            ..Default::default()
        };
        let (hdr, frame) = empty.build_tso(1448);
        let (segments, out) = segment_vec(&frame, &hdr, 0);
        assert_eq!(segments.count(), 1);
        assert!(check_frame(&out).payload.is_empty());
    }

    #[test]
    fn exact_multiple_of_gso_size() {
        let spec = testutil::Tcp {
            payload: vec![9; 3000],
            ..Default::default()
        };
        let (hdr, frame) = spec.build_tso(1000);
        let (segments, _) = segment_vec(&frame, &hdr, 0);
        assert_eq!(segments.count(), 3);
        assert_eq!(segments.last_len(), segments.segment_len());
    }

    #[test]
    fn ethernet_padding_is_dropped() {
        let spec = testutil::Tcp {
            payload: vec![3; 2000],
            ..Default::default()
        };
        let (hdr, mut frame) = spec.build_tso(1000);
        frame.extend_from_slice(&[0; 6]);
        let (segments, out) = segment_vec(&frame, &hdr, 0);
        assert_eq!(segments.count(), 2);
        for seg in segments.frames(&out) {
            check_frame(seg);
        }
    }

    #[test]
    fn hdr_len_is_only_a_hint() {
        let spec = testutil::Tcp::default();
        let (mut hdr, frame) = spec.build_tso(400);
        let (expected, expected_out) = segment_vec(&frame, &hdr, 0);
        for hint in [0, 1, 200, u16::MAX] {
            hdr.hdr_len = hint;
            assert_eq!(
                segment_vec(&frame, &hdr, 0),
                (expected, expected_out.clone())
            );
        }
    }

    #[test]
    fn without_needs_csum_placement_is_not_checked() {
        let (mut hdr, frame) = testutil::Tcp::default().build_tso(400);
        hdr.needs_csum = false;
        hdr.csum_start = 0;
        hdr.csum_offset = 0;
        let (segments, out) = segment_vec(&frame, &hdr, 0);
        segments.frames(&out).for_each(|seg| drop(check_frame(seg)));
    }

    #[test]
    fn errors() {
        let (hdr, frame) = testutil::Tcp::default().build_tso(500);
        let mut out = vec![0; 4096];
        let run = |frame: &[u8], hdr: &virtio::Repr, out: &mut [u8]| segment(frame, hdr, out, 0);

        for (gso_type, ecn, wire) in [
            (GsoType::None, false, 0),
            (GsoType::Udp, false, 3),
            (GsoType::UdpL4, true, 0x85),
        ] {
            let bad = virtio::Repr {
                gso_type,
                gso_ecn: ecn,
                ..hdr
            };
            assert_eq!(
                run(&frame, &bad, &mut out),
                Err(Error::UnsupportedGsoType { gso_type: wire })
            );
        }
        let zero = virtio::Repr { gso_size: 0, ..hdr };
        assert_eq!(run(&frame, &zero, &mut out), Err(Error::ZeroGsoSize));
        assert_eq!(
            run(&frame[..33], &hdr, &mut out),
            Err(Error::Truncated { len: 33 })
        );

        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            run(&arp, &hdr, &mut out),
            Err(Error::NotIpv4 { ethertype: 0x0806 })
        );
        let mut v6 = frame.clone();
        v6[14] = 0x65;
        assert_eq!(
            run(&v6, &hdr, &mut out),
            Err(Error::IpVersion { version: 6 })
        );
        let mut ihl = frame.clone();
        ihl[14] = 0x44;
        assert_eq!(
            run(&ihl, &hdr, &mut out),
            Err(Error::IpHeaderLen { ihl: 4 })
        );
        let mut total = frame.clone();
        inet::put_u16(&mut total, 16, frame.len() as u16);
        assert_eq!(
            run(&total, &hdr, &mut out),
            Err(Error::IpTotalLen {
                total_len: frame.len() as u16,
                len: frame.len()
            })
        );
        inet::put_u16(&mut total, 16, 19);
        assert!(matches!(
            run(&total, &hdr, &mut out),
            Err(Error::IpTotalLen { total_len: 19, .. })
        ));
        let mut fragment = frame.clone();
        fragment[20] |= 0x20;
        assert_eq!(run(&fragment, &hdr, &mut out), Err(Error::Fragment));

        let udp = virtio::Repr {
            gso_type: GsoType::UdpL4,
            csum_offset: 6,
            ..hdr
        };
        assert_eq!(
            run(&frame, &udp, &mut out),
            Err(Error::Protocol {
                gso_type: GsoType::UdpL4,
                protocol: 6
            })
        );
        let mut doff = frame.clone();
        doff[34 + 12] = 0x40;
        assert_eq!(
            run(&doff, &hdr, &mut out),
            Err(Error::TcpHeaderLen { data_offset: 4 })
        );
        let mut long_options = frame.clone();
        long_options[34 + 12] = 0xf0;
        let short = &mut long_options[..34 + 40];
        inet::put_u16(short, 16, 60);
        assert_eq!(
            run(short, &hdr, &mut out),
            Err(Error::L4Truncated {
                end: 34 + 60,
                packet_end: 34 + 40
            })
        );
        let cut = &mut frame.clone()[..34 + 10];
        inet::put_u16(cut, 16, 30);
        assert_eq!(
            run(cut, &hdr, &mut out),
            Err(Error::L4Truncated {
                end: 34 + 20,
                packet_end: 34 + 10
            })
        );
        for (start, offset) in [(34, 6), (14, 16), (0, 0)] {
            let misplaced = virtio::Repr {
                csum_start: start,
                csum_offset: offset,
                ..hdr
            };
            assert_eq!(
                run(&frame, &misplaced, &mut out),
                Err(Error::ChecksumPlacement {
                    csum_start: start,
                    csum_offset: offset,
                    expected_start: 34,
                    expected_offset: 16
                })
            );
        }

        let needed = required_out_len(&frame, &hdr, 0).unwrap();
        let before = out.clone();
        assert_eq!(
            run(&frame, &hdr, &mut out[..needed - 1]),
            Err(Error::OutputTooSmall {
                len: needed - 1,
                needed
            })
        );
        assert_eq!(out, before, "nothing is written on error");
        assert_eq!(
            segment(&frame, &hdr, &mut out, usize::MAX),
            Err(Error::OutputTooSmall {
                len: 4096,
                needed: usize::MAX
            })
        );
    }

    #[test]
    fn error_messages_name_the_values() {
        assert_eq!(
            Error::OutputTooSmall {
                len: 10,
                needed: 20
            }
            .to_string(),
            "output buffer of 10 bytes is too small: the segments need 20"
        );
        assert_eq!(
            Error::NotIpv4 { ethertype: 0x86dd }.to_string(),
            "ethertype 0x86dd is not IPv4 (0x0800)"
        );
        assert_eq!(
            Error::Protocol {
                gso_type: GsoType::TcpV4,
                protocol: 17
            }
            .to_string(),
            "gso_type tcpv4 does not match IP protocol 17"
        );
        assert!(Error::UnsupportedGsoType { gso_type: 3 }
            .to_string()
            .contains("0x03"));
    }

    #[test]
    fn sizing_helpers() {
        assert_eq!(segment_count(0, 1448), 1);
        assert_eq!(segment_count(1, 1448), 1);
        assert_eq!(segment_count(1448, 1448), 1);
        assert_eq!(segment_count(1449, 1448), 2);
        assert_eq!(segment_count(65000, 1), 65000);
        assert_eq!(segment_count(100, 0), 0);
        assert_eq!(max_out_len(0, 0), usize::MAX);
        assert_eq!(max_out_len(1448, 8), 46 * (8 + 134 + 1448));

        // The bound holds for the largest super-frames at that gso_size.
        for (tcp_options, ip_options) in [(0, 0), (40, 40)] {
            let spec = testutil::Tcp {
                tcp_options: vec![1; tcp_options],
                ip_options: vec![1; ip_options],
                payload: vec![0; 65535 - 40 - tcp_options - ip_options],
                ..Default::default()
            };
            let (hdr, frame) = spec.build_tso(500);
            let needed = required_out_len(&frame, &hdr, 50).unwrap();
            assert!(needed <= max_out_len(500, 50), "{needed}");
        }
    }

    #[test]
    fn ipv6_super_frames_are_refused_where_they_cannot_be_cut() {
        let spec = testutil::Tcp::default();
        let (hdr, frame) = spec.build_tso6(500);
        let mut out = vec![0u8; 8000];
        // TCPV6 on an IPv4 frame, and TCPV4 on an IPv6 one.
        let (v4_hdr, v4_frame) = spec.build_tso(500);
        let asks_v6 = virtio::Repr {
            gso_type: GsoType::TcpV6,
            ..v4_hdr
        };
        assert_eq!(
            segment(&v4_frame, &asks_v6, &mut out, 0),
            Err(Error::NotIpv6 { ethertype: 0x0800 })
        );
        let asks_v4 = virtio::Repr {
            gso_type: GsoType::TcpV4,
            ..hdr
        };
        assert_eq!(
            segment(&frame, &asks_v4, &mut out, 0),
            Err(Error::NotIpv4 { ethertype: 0x86dd })
        );
        // A payload length past the frame.
        let mut long = frame.clone();
        long[18..20].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            segment(&long, &hdr, &mut out, 0),
            Err(Error::Ipv6Header { len: frame.len() })
        );
        // A fragment header in front of TCP, even an atomic one.
        let mut fragment = frame[..54].to_vec();
        fragment[20] = 44;
        let len = u16::from_be_bytes([fragment[18], fragment[19]]) + 8;
        fragment[18..20].copy_from_slice(&len.to_be_bytes());
        fragment.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 1]);
        fragment.extend_from_slice(&frame[54..]);
        let moved = virtio::Repr {
            csum_start: 62,
            ..hdr
        };
        assert_eq!(
            segment(&fragment, &moved, &mut out, 0),
            Err(Error::Fragment)
        );
        // The checksum must be TCP's own field, past the extension headers.
        let misplaced = virtio::Repr {
            csum_start: 34,
            ..hdr
        };
        assert!(matches!(
            segment(&frame, &misplaced, &mut out, 0),
            Err(Error::ChecksumPlacement {
                expected_start: 54,
                ..
            })
        ));
    }

    #[test]
    fn ipv6_extension_headers_are_repeated_in_every_segment() {
        // A destination options header (8 bytes of padding) before TCP.
        let spec = testutil::Tcp {
            payload: vec![7; 3000],
            ..Default::default()
        };
        let (hdr, frame) = spec.build_tso6(1000);
        let mut ext = frame[..54].to_vec();
        ext[20] = 60;
        let len = u16::from_be_bytes([ext[18], ext[19]]) + 8;
        ext[18..20].copy_from_slice(&len.to_be_bytes());
        ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        ext.extend_from_slice(&frame[54..]);
        let hdr = virtio::Repr {
            csum_start: 62,
            ..hdr
        };
        let (segments, out) = segment_vec(&ext, &hdr, 0);
        assert_eq!(segments.count(), 3);
        for seg in segments.frames(&out) {
            assert_eq!(&seg[54..62], &[6, 0, 1, 4, 0, 0, 0, 0]);
            let payload_len = usize::from(u16::from_be_bytes([seg[18], seg[19]]));
            assert_eq!(payload_len, seg.len() - 54);
            // The TCP checksum over the pseudo-header, past the options.
            let src: [u8; 16] = seg[22..38].try_into().unwrap();
            let dst: [u8; 16] = seg[38..54].try_into().unwrap();
            let l4 = &seg[62..];
            let sum = crate::ipv6::pseudo_header(&src.into(), &dst.into(), 6, l4.len() as u32);
            let acc = checksum::accumulate(u64::from(sum), l4);
            assert_eq!(checksum::fold(acc), 0xffff);
        }
    }

    #[test]
    fn complete_checksum_of_partial_frames() {
        // A TCP frame as tun gives it without GSO: NEEDS_CSUM, pseudo sum in place.
        let spec = testutil::Tcp {
            payload: vec![0xde, 0xad, 0xbe, 0xef, 0x01],
            ..Default::default()
        };
        let (hdr, mut frame) = spec.build_tso(1448);
        complete_checksum(&mut frame, hdr.csum_start.into(), hdr.csum_offset.into()).unwrap();
        assert_eq!(frame, spec.build());
        check_frame(&frame);

        let (hdr, mut frame) = testutil::Udp::default().build_uso(1448);
        complete_checksum(&mut frame, hdr.csum_start.into(), hdr.csum_offset.into()).unwrap();
        check_frame(&frame);

        let (hdr, mut frame) = testutil::Udp::default().build_uso6(1448);
        complete_checksum(&mut frame, hdr.csum_start.into(), hdr.csum_offset.into()).unwrap();
        testutil::check_frame6(&frame);
    }

    #[test]
    fn complete_checksum_bounds() {
        let mut frame = [0u8; 40];
        assert!(complete_checksum(&mut frame, 34, 4).is_ok());
        assert!(complete_checksum(&mut frame, 38, 0).is_ok());
        for (start, offset) in [
            (34, 5),
            (39, 0),
            (40, 0),
            (41, 0),
            (0, usize::MAX),
            (usize::MAX, 1),
        ] {
            assert_eq!(
                complete_checksum(&mut frame, start, offset),
                Err(Error::ChecksumOutOfRange {
                    csum_start: start,
                    csum_offset: offset,
                    len: 40
                })
            );
        }
        assert!(complete_checksum(&mut [], 0, 0).is_err());
        assert!(complete_checksum(&mut [0], 0, 0).is_err());
        // All-zero data: the checksum is 0xffff either way.
        let mut zeros = [0u8; 8];
        complete_checksum(&mut zeros, 0, 2).unwrap();
        assert_eq!(zeros[2..4], [0xff, 0xff]);
    }

    fn tcp_spec() -> impl Strategy<Value = (testutil::Tcp, u16)> {
        (
            0usize..=10,
            0usize..=10,
            any::<u32>(),
            any::<u8>(),
            any::<u16>(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..20_000),
            500u16..9000,
        )
            .prop_flat_map(
                |(tcp_words, ip_words, seq, flags, id, df, payload, gso_size)| {
                    (
                        proptest::collection::vec(any::<u8>(), tcp_words * 4),
                        proptest::collection::vec(any::<u8>(), ip_words * 4),
                    )
                        .prop_map(move |(tcp_options, ip_options)| {
                            let spec = testutil::Tcp {
                                seq,
                                flags,
                                id,
                                df,
                                tcp_options,
                                ip_options,
                                payload: payload.clone(),
                                ..Default::default()
                            };
                            (spec, gso_size)
                        })
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn segments_are_valid_and_carry_the_payload((spec, gso_size) in tcp_spec(), headroom in 0usize..64) {
            let (hdr, frame) = spec.build_tso(gso_size);
            let (segments, out) = segment_vec(&frame, &hdr, headroom);
            prop_assert_eq!(segments.count(), segment_count(spec.payload.len(), gso_size));
            let mut payload = Vec::new();
            for (i, seg) in segments.frames(&out).enumerate() {
                let checked = check_frame(seg);
                let tcp = tcp_of(&checked);
                let last = i + 1 == segments.count();
                prop_assert_eq!(tcp.sequence_number, spec.seq.wrapping_add(u32::from(gso_size) * i as u32));
                prop_assert_eq!(checked.ip.identification, spec.id.wrapping_add(i as u16));
                prop_assert_eq!(tcp.fin, last && spec.flags & 0x01 != 0);
                prop_assert_eq!(tcp.psh, last && spec.flags & 0x08 != 0);
                prop_assert_eq!(tcp.cwr, i == 0 && spec.flags & 0x80 != 0);
                prop_assert_eq!((tcp.syn, tcp.rst, tcp.ack, tcp.urg, tcp.ece), (
                    spec.flags & 0x02 != 0, spec.flags & 0x04 != 0, spec.flags & 0x10 != 0,
                    spec.flags & 0x20 != 0, spec.flags & 0x40 != 0,
                ));
                prop_assert_eq!(tcp.options.as_slice(), &spec.tcp_options[..]);
                prop_assert_eq!(checked.ip.options.as_slice(), &spec.ip_options[..]);
                prop_assert!(checked.payload.len() <= usize::from(gso_size));
                if !last {
                    prop_assert_eq!(seg.len(), segments.segment_len());
                }
                payload.extend_from_slice(&checked.payload);
            }
            prop_assert_eq!(payload, spec.payload);
        }

        #[test]
        fn udp_segments_are_valid(
            payload in proptest::collection::vec(any::<u8>(), 0..20_000),
            gso_size in 1u16..9000,
            ip_words in 0usize..=10,
        ) {
            let spec = testutil::Udp { payload, ip_options: vec![1; ip_words * 4], ..Default::default() };
            let (hdr, frame) = spec.build_uso(gso_size);
            let (segments, out) = segment_vec(&frame, &hdr, 8);
            let mut payload = Vec::new();
            for seg in segments.frames(&out) {
                payload.extend_from_slice(&check_frame(seg).payload);
            }
            prop_assert_eq!(payload, spec.payload);
        }

        #[test]
        fn ipv6_tcp_segments_are_valid_and_carry_the_payload(
            (spec, gso_size) in tcp_spec(),
            headroom in 0usize..64,
        ) {
            let (hdr, frame) = spec.build_tso6(gso_size);
            let (segments, out) = segment_vec(&frame, &hdr, headroom);
            prop_assert_eq!(segments.count(), segment_count(spec.payload.len(), gso_size));
            let mut payload = Vec::new();
            for (i, seg) in segments.frames(&out).enumerate() {
                let (ip, l4, data) = testutil::check_frame6(seg);
                let L4::Tcp(tcp) = l4 else { panic!("not TCP") };
                let last = i + 1 == segments.count();
                prop_assert_eq!(ip.source, testutil::v6(spec.src));
                prop_assert_eq!(ip.hop_limit, spec.ttl);
                prop_assert_eq!(tcp.sequence_number, spec.seq.wrapping_add(u32::from(gso_size) * i as u32));
                prop_assert_eq!(tcp.fin, last && spec.flags & 0x01 != 0);
                prop_assert_eq!(tcp.psh, last && spec.flags & 0x08 != 0);
                prop_assert_eq!(tcp.cwr, i == 0 && spec.flags & 0x80 != 0);
                prop_assert_eq!(tcp.options.as_slice(), &spec.tcp_options[..]);
                prop_assert!(data.len() <= usize::from(gso_size));
                payload.extend_from_slice(&data);
            }
            prop_assert_eq!(payload, spec.payload);
        }

        #[test]
        fn ipv6_udp_segments_are_valid(
            payload in proptest::collection::vec(any::<u8>(), 0..20_000),
            gso_size in 1u16..9000,
        ) {
            let spec = testutil::Udp { payload, ..Default::default() };
            let (hdr, frame) = spec.build_uso6(gso_size);
            let (segments, out) = segment_vec(&frame, &hdr, 8);
            let mut payload = Vec::new();
            for seg in segments.frames(&out) {
                payload.extend_from_slice(&testutil::check_frame6(seg).2);
            }
            prop_assert_eq!(payload, spec.payload);
        }

        #[test]
        fn segment_never_panics(
            frame in proptest::collection::vec(any::<u8>(), 0..2000),
            header in proptest::array::uniform10(any::<u8>()),
            out_len in 0usize..8000,
            headroom in 0usize..100,
        ) {
            let Ok((hdr, _)) = virtio::parse(&header) else { return Ok(()) };
            let mut out = vec![0; out_len];
            let result = segment(&frame, &hdr, &mut out, headroom);
            let required = required_out_len(&frame, &hdr, headroom);
            match result {
                Ok(segments) => prop_assert_eq!(required, Ok(segments.total_len())),
                Err(Error::OutputTooSmall { needed, .. }) => prop_assert_eq!(required, Ok(needed)),
                Err(err) => prop_assert_eq!(required, Err(err)),
            }
            let _ = complete_checksum(&mut out, hdr.csum_start.into(), hdr.csum_offset.into());
        }

        #[test]
        fn segment_never_panics_on_mangled_super_frames(
            (spec, gso_size) in tcp_spec(),
            flips in proptest::collection::vec((0usize..120, any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let (hdr, mut frame) = spec.build_tso(gso_size);
            for (at, value) in flips {
                if let Some(byte) = frame.get_mut(at) {
                    *byte = value;
                }
            }
            let len = cut.index(frame.len() + 1);
            let frame = &frame[..len];
            let mut out = vec![0; 30_000];
            if let Ok(segments) = segment(frame, &hdr, &mut out, 0) {
                for seg in segments.frames(&out) {
                    prop_assert_eq!(checksum::checksum(&seg[14..(seg[14] as usize & 0xf) * 4 + 14]), 0);
                }
            }
        }
    }
}
