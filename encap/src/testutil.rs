//! Frames for the segmentation and coalescing tests, built and checked with
//! etherparse, an implementation independent of this crate's.

use etherparse::{
    EtherType, Ethernet2Header, IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv6Header, TcpHeader,
    UdpHeader,
};

use crate::virtio::{self, GsoType};

/// Source MAC of the test frames (a pod's).
pub const POD_MAC: [u8; 6] = [0x5a, 0x2e, 0x11, 0x04, 0x9c, 0x01];
/// Destination MAC of the test frames (the switch's gateway).
pub const GW_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];

/// A TCP/IPv4 Ethernet frame to build.
#[derive(Debug, Clone)]
pub struct Tcp {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// The flags byte (CWR ECE URG ACK PSH RST SYN FIN).
    pub flags: u8,
    pub window: u16,
    pub tcp_options: Vec<u8>,
    pub ip_options: Vec<u8>,
    pub ttl: u8,
    pub tos: u8,
    pub df: bool,
    pub id: u16,
    pub payload: Vec<u8>,
}

impl Default for Tcp {
    fn default() -> Tcp {
        Tcp {
            src: [10, 244, 1, 2],
            dst: [10, 244, 2, 3],
            src_port: 40312,
            dst_port: 5201,
            seq: 0x1c2d_3e4f,
            ack: 0x0a0b_0c0d,
            flags: 0x10,
            window: 502,
            // NOP, NOP, timestamps: what Linux puts on every data segment.
            tcp_options: vec![1, 1, 8, 10, 0x00, 0x12, 0xd6, 0x87, 0x9a, 0x3f, 0x01, 0x22],
            ip_options: Vec::new(),
            ttl: 64,
            tos: 0,
            df: true,
            id: 0x4a1c,
            payload: (0..1000u32).map(|i| (i * 7 + 3) as u8).collect(),
        }
    }
}

impl Tcp {
    fn headers(&self) -> (Ethernet2Header, Ipv4Header, TcpHeader) {
        let eth = Ethernet2Header {
            source: POD_MAC,
            destination: GW_MAC,
            ether_type: EtherType::IPV4,
        };
        let mut ip = Ipv4Header::new(0, self.ttl, IpNumber::TCP, self.src, self.dst).unwrap();
        ip.dscp = IpDscp::try_new(self.tos >> 2).unwrap();
        ip.ecn = IpEcn::try_new(self.tos & 3).unwrap();
        ip.dont_fragment = self.df;
        ip.identification = self.id;
        ip.options = self.ip_options.as_slice().try_into().unwrap();
        let mut tcp = TcpHeader::new(self.src_port, self.dst_port, self.seq, self.window);
        tcp.acknowledgment_number = self.ack;
        tcp.fin = self.flags & 0x01 != 0;
        tcp.syn = self.flags & 0x02 != 0;
        tcp.rst = self.flags & 0x04 != 0;
        tcp.psh = self.flags & 0x08 != 0;
        tcp.ack = self.flags & 0x10 != 0;
        tcp.urg = self.flags & 0x20 != 0;
        tcp.ece = self.flags & 0x40 != 0;
        tcp.cwr = self.flags & 0x80 != 0;
        tcp.set_options_raw(&self.tcp_options).unwrap();
        ip.set_payload_len(tcp.header_len() + self.payload.len())
            .unwrap();
        ip.header_checksum = ip.calc_header_checksum();
        (eth, ip, tcp)
    }

    fn write(eth: &Ethernet2Header, ip: &Ipv4Header, tcp: &TcpHeader, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        eth.write(&mut frame).unwrap();
        ip.write_raw(&mut frame).unwrap();
        tcp.write(&mut frame).unwrap();
        frame.extend_from_slice(payload);
        frame
    }

    /// Builds the frame with every checksum complete.
    pub fn build(&self) -> Vec<u8> {
        let (eth, ip, mut tcp) = self.headers();
        tcp.checksum = tcp.calc_checksum_ipv4(&ip, &self.payload).unwrap();
        Tcp::write(&eth, &ip, &tcp, &self.payload)
    }

    /// Builds the frame as tun hands out a TSO super-frame: the TCP checksum
    /// field holds the pseudo-header sum, with the virtio-net header for it.
    pub fn build_tso(&self, gso_size: u16) -> (virtio::Repr, Vec<u8>) {
        let (eth, ip, mut tcp) = self.headers();
        let tcp_len = (tcp.header_len() + self.payload.len()) as u16;
        tcp.checksum = pseudo_sum(&ip, 6, tcp_len);
        let frame = Tcp::write(&eth, &ip, &tcp, &self.payload);
        let l4_start = 14 + ip.header_len() as u16;
        let repr = virtio::Repr {
            needs_csum: true,
            data_valid: false,
            gso_type: GsoType::TcpV4,
            gso_ecn: self.flags & 0x80 != 0,
            hdr_len: l4_start + tcp.header_len() as u16,
            gso_size,
            csum_start: l4_start,
            csum_offset: 16,
        };
        (repr, frame)
    }

    /// Builds the frame over IPv6 (from [`v6`] of the IPv4 addresses) as tun hands
    /// out a TSO6 super-frame. The IP options and identification have no IPv6
    /// counterpart and are left out.
    pub fn build_tso6(&self, gso_size: u16) -> (virtio::Repr, Vec<u8>) {
        let (_, _, mut tcp) = self.headers();
        let tcp_len = tcp.header_len() + self.payload.len();
        let ip = ipv6_header(self, IpNumber::TCP, tcp_len);
        tcp.checksum = pseudo_sum6(&ip, 6, tcp_len as u32);
        let mut frame = Vec::new();
        eth6().write(&mut frame).unwrap();
        ip.write(&mut frame).unwrap();
        tcp.write(&mut frame).unwrap();
        frame.extend_from_slice(&self.payload);
        let repr = virtio::Repr {
            needs_csum: true,
            data_valid: false,
            gso_type: GsoType::TcpV6,
            gso_ecn: self.flags & 0x80 != 0,
            hdr_len: 54 + tcp.header_len() as u16,
            gso_size,
            csum_start: 54,
            csum_offset: 16,
        };
        (repr, frame)
    }
}

/// The IPv6 address the tests give an IPv4 one: `fd00::a:b:c:d`.
pub fn v6(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = 0xfd;
    for (i, b) in a.iter().enumerate() {
        out[9 + 2 * i] = *b;
    }
    out
}

fn eth6() -> Ethernet2Header {
    Ethernet2Header {
        source: POD_MAC,
        destination: GW_MAC,
        ether_type: EtherType::IPV6,
    }
}

/// What the IPv4 fields of a test frame say, as an IPv6 header.
trait Ipv6Fields {
    fn fields(&self) -> ([u8; 4], [u8; 4], u8, u8);
}

impl Ipv6Fields for Tcp {
    fn fields(&self) -> ([u8; 4], [u8; 4], u8, u8) {
        (self.src, self.dst, self.ttl, self.tos)
    }
}

impl Ipv6Fields for Udp {
    fn fields(&self) -> ([u8; 4], [u8; 4], u8, u8) {
        (self.src, self.dst, self.ttl, self.tos)
    }
}

fn ipv6_header(spec: &impl Ipv6Fields, next: IpNumber, payload_len: usize) -> Ipv6Header {
    let (src, dst, hops, tos) = spec.fields();
    Ipv6Header {
        traffic_class: tos,
        flow_label: Default::default(),
        payload_length: payload_len as u16,
        next_header: next,
        hop_limit: hops,
        source: v6(src),
        destination: v6(dst),
    }
}

/// A UDP/IPv4 Ethernet frame to build.
#[derive(Debug, Clone)]
pub struct Udp {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub ip_options: Vec<u8>,
    pub ttl: u8,
    pub tos: u8,
    pub df: bool,
    pub id: u16,
    pub payload: Vec<u8>,
}

impl Default for Udp {
    fn default() -> Udp {
        Udp {
            src: [10, 244, 1, 2],
            dst: [10, 244, 2, 3],
            src_port: 33000,
            dst_port: 443,
            ip_options: Vec::new(),
            ttl: 64,
            tos: 0,
            df: true,
            id: 0x0100,
            payload: (0..3000u32).map(|i| (i * 13 + 5) as u8).collect(),
        }
    }
}

impl Udp {
    /// Builds the frame as tun hands out a USO super-frame, with its virtio-net header.
    pub fn build_uso(&self, gso_size: u16) -> (virtio::Repr, Vec<u8>) {
        let eth = Ethernet2Header {
            source: POD_MAC,
            destination: GW_MAC,
            ether_type: EtherType::IPV4,
        };
        let mut ip = Ipv4Header::new(0, self.ttl, IpNumber::UDP, self.src, self.dst).unwrap();
        ip.dscp = IpDscp::try_new(self.tos >> 2).unwrap();
        ip.ecn = IpEcn::try_new(self.tos & 3).unwrap();
        ip.dont_fragment = self.df;
        ip.identification = self.id;
        ip.options = self.ip_options.as_slice().try_into().unwrap();
        ip.set_payload_len(8 + self.payload.len()).unwrap();
        ip.header_checksum = ip.calc_header_checksum();
        let udp_len = (8 + self.payload.len()) as u16;
        let udp = UdpHeader {
            source_port: self.src_port,
            destination_port: self.dst_port,
            length: udp_len,
            checksum: pseudo_sum(&ip, 17, udp_len),
        };
        let mut frame = Vec::new();
        eth.write(&mut frame).unwrap();
        ip.write_raw(&mut frame).unwrap();
        udp.write(&mut frame).unwrap();
        frame.extend_from_slice(&self.payload);
        let l4_start = 14 + ip.header_len() as u16;
        let repr = virtio::Repr {
            needs_csum: true,
            data_valid: false,
            gso_type: GsoType::UdpL4,
            gso_ecn: false,
            hdr_len: l4_start + 8,
            gso_size,
            csum_start: l4_start,
            csum_offset: 6,
        };
        (repr, frame)
    }
}

impl Udp {
    /// Builds the frame over IPv6 (from [`v6`] of the IPv4 addresses) as tun hands
    /// out a USO super-frame, with its virtio-net header.
    pub fn build_uso6(&self, gso_size: u16) -> (virtio::Repr, Vec<u8>) {
        let udp_len = 8 + self.payload.len();
        let ip = ipv6_header(self, IpNumber::UDP, udp_len);
        let udp = UdpHeader {
            source_port: self.src_port,
            destination_port: self.dst_port,
            length: udp_len as u16,
            checksum: pseudo_sum6(&ip, 17, udp_len as u32),
        };
        let mut frame = Vec::new();
        eth6().write(&mut frame).unwrap();
        ip.write(&mut frame).unwrap();
        udp.write(&mut frame).unwrap();
        frame.extend_from_slice(&self.payload);
        let repr = virtio::Repr {
            needs_csum: true,
            data_valid: false,
            gso_type: GsoType::UdpL4,
            gso_ecn: false,
            hdr_len: 54 + 8,
            gso_size,
            csum_start: 54,
            csum_offset: 6,
        };
        (repr, frame)
    }
}

/// The IPv6 pseudo-header's one's complement sum (not complemented), as tun leaves
/// it; a textbook loop over RFC 8200's layout.
pub fn pseudo_sum6(ip: &Ipv6Header, protocol: u8, l4_len: u32) -> u16 {
    let mut bytes = Vec::with_capacity(40);
    bytes.extend_from_slice(&ip.source);
    bytes.extend_from_slice(&ip.destination);
    bytes.extend_from_slice(&l4_len.to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, protocol]);
    let mut acc: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Parses an Ethernet + IPv6 + TCP/UDP frame with etherparse and asserts that its
/// lengths and every checksum are right.
pub fn check_frame6(frame: &[u8]) -> (Ipv6Header, L4, Vec<u8>) {
    let (eth, rest) = Ethernet2Header::from_slice(frame).expect("Ethernet header");
    assert_eq!(eth.ether_type, EtherType::IPV6);
    let (ip, rest) = Ipv6Header::from_slice(rest).expect("IPv6 header");
    assert_eq!(
        usize::from(ip.payload_length),
        rest.len(),
        "IPv6 payload length"
    );
    let (l4, payload) = match ip.next_header {
        IpNumber::TCP => {
            let (tcp, payload) = TcpHeader::from_slice(rest).expect("TCP header");
            let expected = tcp.calc_checksum_ipv6(&ip, payload).unwrap();
            assert_eq!(tcp.checksum, expected, "TCP checksum");
            (L4::Tcp(tcp), payload)
        }
        IpNumber::UDP => {
            let (udp, payload) = UdpHeader::from_slice(rest).expect("UDP header");
            assert_eq!(usize::from(udp.length), rest.len(), "UDP length");
            let expected = udp.calc_checksum_ipv6(&ip, payload).unwrap();
            assert_eq!(udp.checksum, expected, "UDP checksum");
            (L4::Udp(udp), payload)
        }
        other => panic!("unexpected IPv6 next header {other:?}"),
    };
    (ip, l4, payload.to_vec())
}

/// The pseudo-header's one's complement sum (not complemented), as tun
/// leaves it in the L4 checksum field of a NEEDS_CSUM frame. Written
/// without this crate's checksum module, with a 32-bit textbook loop.
pub fn pseudo_sum(ip: &Ipv4Header, protocol: u8, l4_len: u16) -> u16 {
    let words = [
        u16::from_be_bytes([ip.source[0], ip.source[1]]),
        u16::from_be_bytes([ip.source[2], ip.source[3]]),
        u16::from_be_bytes([ip.destination[0], ip.destination[1]]),
        u16::from_be_bytes([ip.destination[2], ip.destination[3]]),
        u16::from(protocol),
        l4_len,
    ];
    let mut acc: u32 = words.iter().map(|&w| u32::from(w)).sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The transport header of a checked frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    Tcp(TcpHeader),
    Udp(UdpHeader),
}

/// A frame that passed [`check_frame`], taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub eth: Ethernet2Header,
    pub ip: Ipv4Header,
    pub l4: L4,
    pub payload: Vec<u8>,
}

/// Parses an Ethernet + IPv4 + TCP/UDP frame with etherparse and asserts
/// that its lengths and every checksum are right.
pub fn check_frame(frame: &[u8]) -> Checked {
    let (eth, rest) = Ethernet2Header::from_slice(frame).expect("Ethernet header");
    assert_eq!(eth.ether_type, EtherType::IPV4);
    let (ip, rest) = Ipv4Header::from_slice(rest).expect("IPv4 header");
    assert_eq!(
        usize::from(ip.total_len),
        frame.len() - 14,
        "IPv4 total length"
    );
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let (l4, payload) = match ip.protocol {
        IpNumber::TCP => {
            let (tcp, payload) = TcpHeader::from_slice(rest).expect("TCP header");
            let expected = tcp.calc_checksum_ipv4(&ip, payload).unwrap();
            assert_eq!(tcp.checksum, expected, "TCP checksum");
            (L4::Tcp(tcp), payload)
        }
        IpNumber::UDP => {
            let (udp, payload) = UdpHeader::from_slice(rest).expect("UDP header");
            assert_eq!(usize::from(udp.length), rest.len(), "UDP length");
            let expected = udp.calc_checksum_ipv4(&ip, payload).unwrap();
            assert_eq!(udp.checksum, expected, "UDP checksum");
            (L4::Udp(udp), payload)
        }
        other => panic!("unexpected IP protocol {other:?}"),
    };
    Checked {
        eth,
        ip,
        l4,
        payload: payload.to_vec(),
    }
}
