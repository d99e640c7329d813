//! Fixtures for weft's criterion benchmarks (`cargo bench -p weft-benches`): a node's
//! forwarding tables built in memory, the frames the datapath handles, and a sink that
//! only counts what the datapath sends.
//!
//! Addressing follows the daemon's: node `n` owns `10.244.(n+1).0/24` with gateway
//! `.1`, its underlay address is `10.250.0.(n+1)`, the tunnel port 8472.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ipnet::Ipv4Net;
use weft_encap::checksum;
use weft_encap::vxlan::Vni;
use weft_switch::core::host::HostTables;
use weft_switch::core::{self, Core, Report, Sink, Time};
use weft_switch::io::port::Offload;
use weft_switch::mac::MacAddr;
use weft_switch::tables::counters::Counters;
use weft_switch::tables::health::PeerHealth;
use weft_switch::tables::{
    NodeConfig, PeerEntry, PeerPath, PortEntry, PortId, PortKind, Tables, TunnelMode,
    TUNNEL_OVERHEAD,
};

/// The tunnel UDP port.
pub const TUNNEL_PORT: u16 = 8472;

/// The pod MTU (an underlay of 1500 less the tunnel overhead).
pub const POD_MTU: u32 = 1500 - TUNNEL_OVERHEAD;

/// Length of an Ethernet header.
pub const ETH_HLEN: usize = weft_encap::ethernet::HEADER_LEN;

/// Node `n`'s pod subnet.
pub fn subnet(n: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, n + 1, 0), 24).expect("a /24")
}

/// Node `n`'s gateway address.
pub fn gateway(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n + 1, 1)
}

/// Node `n`'s underlay address and tunnel port.
pub fn underlay(n: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 250, 0, n + 1), TUNNEL_PORT)
}

/// Node `n`'s router (VTEP) MAC.
pub fn router_mac(n: u8) -> MacAddr {
    MacAddr([0x02, 0x77, 0x65, 0x66, 0, n + 1])
}

/// Address of pod `i` (0-based) on node `n`: `10.244.(n+1).(i+2)`.
pub fn pod_ip(n: u8, i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n + 1, i + 2)
}

fn port(slot: u32, kind: PortKind, name: &str, ip: Ipv4Addr) -> PortEntry {
    PortEntry {
        id: PortId {
            slot,
            generation: 0,
        },
        kind,
        name: name.into(),
        mac: MacAddr::for_ip(ip),
        ip,
        ip6: None,
        container_id: (kind == PortKind::Pod).then(|| format!("bench-{ip}")),
        pod: None,
        netns: None,
        queues: 1,
        offloads: true,
        uso: true,
        counters: Arc::new(Counters::new(1)),
        policy: None,
    }
}

/// The tables of node `n` of a `nodes`-node cluster in `mode`, with `pods` local pods
/// (ports 1..=pods; port 0 is the host port) and every other node as a peer.
pub fn tables(mode: TunnelMode, n: u8, nodes: u8, pods: u8) -> Tables {
    let config = Arc::new(NodeConfig {
        name: format!("node-{n}"),
        router_mac: router_mac(n),
        subnet: subnet(n),
        gateway: gateway(n),
        underlay: *underlay(n).ip(),
        cluster: "10.244.0.0/16".parse().expect("a CIDR"),
        mode,
        vni: Vni::new(1).expect("VNI 1"),
        pod_mtu: POD_MTU,
        max_datagram: 1472,
        heartbeat: std::time::Duration::ZERO,
        v6: None,
    });
    let host = port(0, PortKind::Host, "weft0", gateway(n));
    let pods = (0..pods).map(|i| {
        port(
            u32::from(i) + 1,
            PortKind::Pod,
            &format!("tap{i}"),
            pod_ip(n, i),
        )
    });
    let peers = (0..nodes)
        .filter(|m| *m != n)
        .map(|m| PeerEntry {
            name: format!("node-{m}"),
            addr: underlay(m),
            subnet: subnet(m),
            subnet6: None,
            vtep_mac: router_mac(m),
            counters: Arc::new(Counters::new(1)),
            health: Arc::new(PeerHealth::new(Time::ZERO)),
            path: PeerPath::Tunnel,
            beats: true,
            via_host: false,
        })
        .collect();
    Tables::build(config, host, pods, peers, Arc::new(Counters::new(1)))
        .expect("the bench cluster is routable")
}

/// An ARP request from `sender` (`sender_mac`) asking who has `target`.
pub fn arp_request(sender_mac: MacAddr, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&sender_mac.0);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac.0);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// An Ethernet frame from `src_mac` to `dst_mac` holding an IPv4/UDP packet from
/// `src` to `dst` whose IP packet is `ip_len` bytes (at least 28), with a valid header
/// checksum and TTL 64.
pub fn udp_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ip_len: usize,
) -> Vec<u8> {
    assert!((28..=usize::from(u16::MAX)).contains(&ip_len));
    let mut f = vec![0u8; ETH_HLEN + ip_len];
    f[0..6].copy_from_slice(&dst_mac.0);
    f[6..12].copy_from_slice(&src_mac.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[ETH_HLEN..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip[20..22].copy_from_slice(&40000u16.to_be_bytes());
    ip[22..24].copy_from_slice(&5001u16.to_be_bytes());
    ip[24..26].copy_from_slice(&((ip_len - 20) as u16).to_be_bytes());
    for (i, b) in ip[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

/// A [`Sink`] that counts sends and bytes and keeps nothing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CountingSink {
    /// Frames sent to ports.
    pub frames: u64,
    /// Datagrams sent to peers.
    pub datagrams: u64,
    /// Bytes of everything sent.
    pub bytes: u64,
}

impl Sink for CountingSink {
    fn to_port(&mut self, _port: &PortEntry, _offload: &Offload, frame: &[u8]) {
        self.frames += 1;
        self.bytes += frame.len() as u64;
    }

    fn to_peer(&mut self, _peer: &PeerEntry, _lane: usize, datagram: &[u8]) {
        self.datagrams += 1;
        self.bytes += datagram.len() as u64;
    }

    fn report(&mut self, _: Report) {}
}

/// A worker's core with no heartbeats, as the benchmarks drive it.
pub fn new_core() -> Core {
    Core::new(core::Config {
        worker: 0,
        heartbeat: None,
        conntrack: None,
        conntrack6: None,
        host: HostTables::new(1, 1024).worker(0),
        flows: Default::default(),
    })
}

/// The rules of a pod selected by `policies` NetworkPolicies of `rules` ingress rules
/// each, none of which admits anything but the very last one, which admits everyone:
/// the worst case of a new connection, as weft-perf's `*-policy` systems set it up.
pub fn many_policies(
    ip: Ipv4Addr,
    policies: usize,
    rules: usize,
) -> weft_switch::netpol::compile::PodRules {
    use weft_switch::netpol::compile::{compile, LocalPod};
    use weft_switch::netpol::model::{
        IpBlock, Peer, Policy, PolicyModel, Port, PortSpec, Protocol, Rule, Selector,
    };
    let mut model = PolicyModel::default();
    for i in 0..policies {
        let rules = (0..rules)
            .map(|k| {
                if i + 1 == policies && k + 1 == rules {
                    return Rule::default();
                }
                Rule {
                    peers: vec![Peer::Block(IpBlock {
                        cidr: Ipv4Net::new(Ipv4Addr::new(192, 168, i as u8, (k * 16) as u8), 28)
                            .expect("a /28")
                            .into(),
                        except: Vec::new(),
                    })],
                    ports: vec![Port {
                        protocol: Protocol::Tcp,
                        port: PortSpec::Range {
                            first: 10_000 + (i * rules + k) as u16,
                            last: 10_000 + (i * rules + k) as u16,
                        },
                    }],
                }
            })
            .collect();
        model.policies.push(std::sync::Arc::new(Policy {
            namespace: "default".into(),
            name: format!("p{i}"),
            pod_selector: Selector::default(),
            ingress: Some(rules),
            egress: None,
        }));
    }
    let local = [LocalPod {
        ip,
        ip6: None,
        namespace: "default".into(),
        name: String::new(),
    }];
    let compiled = compile(&model, &local);
    (*compiled.by_ip[&ip]).clone()
}
