//! An in-memory cluster for testing the switching core without root (feature `sim`).
//!
//! Every node is a [`Core`] and its [`Tables`], addressed like the real daemon (node
//! `n` owns 10.244.(n+1).0/24, its gateway is the first address, its underlay address
//! is 10.250.0.(n+1):8472). Every pod is a smoltcp [`Interface`] over a
//! [`MemDevice`], a pair of frame queues. The [`Sink`] puts frames for a pod port in
//! that pod's receive queue, frames for the host port in a per-node list, and tunnel
//! datagrams on a simulated wire, whose links between nodes have an MTU, a latency
//! and a loss rate ([`Link`]), and can be cut.
//!
//! Time is simulated, as in quinn's test `Pair`: [`Sim::step`] polls every pod, feeds
//! what they sent to their node, delivers the wire and moves the clock by [`STEP`];
//! [`Sim::advance`] jumps the clock to the next thing that happens (a datagram's
//! arrival, a core's timer) and [`Sim::run_for`] keeps jumping. No threads, no
//! sockets, no clocks: every run is the same.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use weft_encap::vxlan::Vni;

pub mod nat;
pub mod tcp;

use crate::control::config::Encryption;
use crate::core::conntrack::{Addr, Conntrack, Overflow, Table};
use crate::core::flowlog::FlowLog;
use crate::core::host::HostTables;
use crate::core::service::Nat;
use crate::core::{self, Core, Ctx, Frame, Offload, Report, Sink, Time, HEADROOM};
use crate::crypto::stage::{self, SealCache, Sealer, Stage};
use crate::crypto::{self, StaticKey};
use crate::io::worker::plan::SealClock;
use crate::mac::MacAddr;
use crate::netpol::compile::PodRules;
use crate::services::{ServicePort, ServiceTable};
use crate::tables::counters::{Counters, DropReason, Snapshot};
use crate::tables::health::{HealthSnapshot, PeerHealth};
use crate::tables::services::Services;
use crate::tables::{
    Node6, NodeConfig, PeerEntry, PeerPath, PortEntry, PortId, PortKind, Tables, TunnelMode,
    TUNNEL_OVERHEAD,
};

/// The pod MTU every node uses (an underlay MTU of 1500 minus the tunnel overhead).
pub const POD_MTU: u32 = 1500 - TUNNEL_OVERHEAD;
/// The largest tunnel datagram (UDP payload) the underlay carries.
pub const MAX_DATAGRAM: usize = 1472;
/// The pod MTU of an encrypted cluster: the sleeve's 44 bytes and the seal's 28.
pub const SEALED_POD_MTU: u32 =
    1500 - (weft_encap::sleeve::IPV4_OVERHEAD + weft_encap::sleeve::seal::SEAL_OVERHEAD) as u32;
/// Wall-clock nanoseconds at the simulation's time zero, for initiations'
/// timestamps.
const WALL_AT_ZERO: u64 = 1_800_000_000_000_000_000;
/// The tunnel UDP port.
pub const TUNNEL_PORT: u16 = 8472;
/// Connections each simulated node tracks at most.
pub const CONNTRACK_MAX: usize = 1024;
/// NetworkPolicy's connection table of a simulated node, holding at most `max`
/// connections, and each source address the daemon's default share of them.
fn policy_tables<A: Addr>(max: usize) -> Arc<[Table<A>]> {
    Conntrack::tables(1, max, policy_overflow(max))
}

/// How a simulated node's table of `max` connections makes room: each source
/// address holds at most the daemon's default share.
fn policy_overflow(max: usize) -> Overflow {
    let percent = usize::from(crate::control::config::DEFAULT_CONNTRACK_SHARE);
    let share = (max * percent / 100).max(1);
    Overflow::Fair { share }
}

/// The Service CIDR of a simulated cluster.
pub fn service_cidr() -> Ipv4Net {
    "10.96.0.0/12".parse().unwrap()
}

/// The key of every simulated node's flow hash for Services: fixed, so that every
/// run is the same.
pub const SERVICE_SEED: u64 = 0x5e_1ec7;

/// How far the simulated clock moves per [`Sim::step`].
pub const STEP: Duration = Duration::from_millis(1);
/// The Ethernet header length.
pub const ETH_HLEN: usize = weft_encap::ethernet::HEADER_LEN;
/// Ethertypes.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// The whole cluster's pod range.
pub fn cluster() -> Ipv4Net {
    "10.244.0.0/16".parse().unwrap()
}

/// Node `n`'s pod subnet.
pub fn subnet(n: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, n as u8 + 1, 0), 24).unwrap()
}

/// Node `n`'s gateway address (held by its host port).
pub fn gateway(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n as u8 + 1, 1)
}

/// The cluster's IPv6 pod range.
pub fn cluster6() -> Ipv6Net {
    "fd00:10:244::/56".parse().unwrap()
}

/// Node `n`'s IPv6 pod subnet.
pub fn subnet6(n: usize) -> Ipv6Net {
    Ipv6Net::new(ip6_of(subnet(n).network()), 64).unwrap()
}

/// Node `n`'s IPv6 gateway address.
pub fn gateway6(n: usize) -> Ipv6Addr {
    ip6_of(gateway(n))
}

/// The IPv6 address the simulation gives the pod (or gateway) at IPv4 address `ip`:
/// `10.244.N.H` is `fd00:10:244:N::H`.
pub fn ip6_of(ip: Ipv4Addr) -> Ipv6Addr {
    let [_, _, n, h] = ip.octets();
    Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(n), 0, 0, 0, u16::from(h))
}

/// The source port of lane 0 on the simulated wire; lane `k` sends from this + `k`.
pub const LANE_PORT_BASE: u16 = 40_000;

/// Node `n`'s underlay address and tunnel port.
pub fn underlay(n: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 250, 0, n as u8 + 1), TUNNEL_PORT)
}

/// Node `n`'s router (VTEP) MAC, also its sleeve sender id.
pub fn router_mac(n: usize) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, n as u8 + 1])
}

/// Node `n`'s static key in an encrypted cluster: fixed, so that every run has the
/// same keys (the handshakes' ephemeral keys and session indexes are random).
pub fn static_key(n: usize) -> StaticKey {
    StaticKey::from_private([n as u8 + 1; 32])
}

/// A pod's network device: the frames the switch sent it and the frames it sent.
#[derive(Debug)]
pub struct MemDevice {
    /// Frames waiting for the pod's stack to read.
    pub rx: VecDeque<Vec<u8>>,
    /// Frames the pod's stack sent, waiting for the switch.
    pub tx: VecDeque<Vec<u8>>,
    /// The pod's MTU, as its node gives it.
    pub mtu: u32,
}

impl Default for MemDevice {
    fn default() -> MemDevice {
        MemDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu: POD_MTU,
        }
    }
}

/// Receive token of a [`MemDevice`].
#[derive(Debug)]
pub struct MemRx(Vec<u8>);

/// Transmit token of a [`MemDevice`].
#[derive(Debug)]
pub struct MemTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for MemRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for MemTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl Device for MemDevice {
    type RxToken<'a> = MemRx;
    type TxToken<'a> = MemTx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(MemRx, MemTx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((MemRx(frame), MemTx(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<MemTx<'_>> {
        Some(MemTx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu as usize + ETH_HLEN;
        caps
    }
}

/// A simulated pod: a smoltcp stack attached to one port of one node.
pub struct Pod {
    /// The node it lives on.
    pub node: usize,
    /// Its port's index in the node's `Tables::ports`.
    pub port: usize,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC (`0a:58:<ip>`).
    pub mac: MacAddr,
    /// Its TCP/IP stack.
    pub iface: Interface,
    /// Its network device.
    pub dev: MemDevice,
    /// Its sockets.
    pub sockets: SocketSet<'static>,
    /// Frames it has handed to the switch.
    pub frames_sent: u64,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("node", &self.node)
            .field("ip", &self.ip)
            .field("rx", &self.dev.rx.len())
            .field("tx", &self.dev.tx.len())
            .finish()
    }
}

/// A simulated node: its switching state and forwarding snapshot.
#[derive(Debug)]
pub struct Node {
    /// The forwarding snapshot.
    pub tables: Tables,
    /// The worker's switching state.
    pub core: Core,
    /// The flows that cross its host port.
    pub host_flows: HostTables,
    /// Policy's verdicts, every one (as with `flow-log = true`).
    pub flows: Arc<FlowLog>,
    /// Its encryption, in a [`Sim::encrypted`] cluster: the seal stage the workers
    /// run between the core and the UDP layer, with the node's endpoint.
    pub sealer: Option<Arc<Sealer>>,
    /// The worker's sessions and sealing buffers.
    pub seal: SealCache,
    /// When the worker runs the handshake timers, as worker 0 of a node does: when
    /// due as last asked, or at the next recheck.
    pub seal_clock: SealClock,
}

/// A tunnel datagram in flight on the underlay.
#[derive(Debug, Clone)]
pub struct WireDatagram {
    /// The sending node's underlay address.
    pub from: SocketAddr,
    /// The peer it was sent to.
    pub to: SocketAddr,
    /// The UDP payload.
    pub bytes: Vec<u8>,
    /// When it arrives.
    pub at: Time,
}

/// The underlay path from one node to another.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// The largest UDP payload it carries; larger ones are lost.
    pub mtu: Option<usize>,
    /// How long a datagram takes.
    pub latency: std::time::Duration,
    /// The share of datagrams lost, 0 to 1 (drawn from the simulation's seeded
    /// generator, so runs repeat).
    pub loss: f64,
    /// Whether it carries anything at all.
    pub up: bool,
    /// Each datagram takes up to this much longer than `latency`, drawn from the
    /// simulation's seeded generator: datagrams overtake each other.
    pub jitter: std::time::Duration,
}

impl Default for Link {
    fn default() -> Link {
        Link {
            mtu: None,
            latency: std::time::Duration::ZERO,
            loss: 0.0,
            up: true,
            jitter: std::time::Duration::ZERO,
        }
    }
}

/// One output of a node's datapath, recorded when [`Outputs::capture`] is set.
#[derive(Debug, Clone)]
pub enum Event {
    /// A frame sent out of a port.
    ToPort {
        /// The node.
        node: usize,
        /// The port's kind.
        kind: PortKind,
        /// The port's address.
        ip: Ipv4Addr,
        /// The port's MAC.
        mac: MacAddr,
        /// The frame.
        frame: Vec<u8>,
    },
    /// A datagram sent to a peer.
    ToPeer {
        /// The node.
        node: usize,
        /// The peer's underlay address.
        to: SocketAddrV4,
        /// The lane (outer source port) it left from.
        lane: usize,
        /// The datagram.
        datagram: Vec<u8>,
    },
}

/// Totals of what the datapaths sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Frames sent to pod ports.
    pub to_pods: u64,
    /// Frames sent to host ports.
    pub to_hosts: u64,
    /// Datagrams sent to peers.
    pub datagrams: u64,
    /// Bytes of datagrams sent to peers.
    pub datagram_bytes: u64,
    /// The longest datagram sent.
    pub longest_datagram: usize,
    /// Coalesced super-frames handed to ports (counted before they are cut back).
    pub super_frames: u64,
    /// Calls of `to_port`: one per write a real port would see.
    pub port_writes: u64,
}

/// Everything the datapaths sent that is not in a pod's receive queue.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Datagrams in flight.
    pub wire: VecDeque<WireDatagram>,
    /// Frames sent to each node's host port.
    pub host_rx: Vec<Vec<Vec<u8>>>,
    /// Whether to record every output in `log`.
    pub capture: bool,
    /// Every output, in order, while `capture` is set.
    pub log: Vec<Event>,
    /// Totals.
    pub stats: Stats,
    /// The link from node `a` to node `b` is `links[a][b]`.
    pub links: Vec<Vec<Link>>,
    /// Datagrams the links lost (cut, too big, or by chance).
    pub lost: u64,
    /// The simulated time, for datagrams' arrival.
    pub now: Time,
    /// The loss generator's state (xorshift64).
    rng: u64,
}

/// The sink of one node: routes the core's output into the simulation, and counts
/// sends as a worker's sink does.
struct NodeSink<'a> {
    node: usize,
    tables: &'a Tables,
    pods: &'a mut [Pod],
    out: &'a mut Outputs,
    /// The node's seal stage, if it seals.
    seal: Option<(&'a Sealer, &'a mut SealCache)>,
}

/// The simulated UDP layer below a node's seal stage: its sends, counted on the
/// peers they go to as a worker's are, go on the wire.
struct Wire<'a> {
    node: usize,
    tables: &'a Tables,
    out: &'a mut Outputs,
}

impl stage::Tunnel for Wire<'_> {
    fn send(&mut self, peer: &PeerEntry, lane: usize, datagram: &[u8]) {
        self.send_to_addr(peer.addr, lane, datagram);
    }

    fn send_run(&mut self, peer: &PeerEntry, lane: usize, run: &[u8], segment: usize) {
        for d in run.chunks(segment.max(1)) {
            self.send_to_addr(peer.addr, lane, d);
        }
    }

    fn send_to(&mut self, addr: SocketAddrV4, datagram: &[u8]) {
        self.send_to_addr(addr, 0, datagram);
    }
}

impl Wire<'_> {
    fn send_to_addr(&mut self, to: SocketAddrV4, lane: usize, datagram: &[u8]) {
        let t = self.tables;
        let counters = t
            .peer_by_ip(*to.ip())
            .map_or(&t.tunnel, |j| &t.peers[j].counters);
        counters.tx(0, datagram.len());
        self.out.send_datagram(self.node, to, lane, datagram);
    }
}

impl NodeSink<'_> {
    /// The node's seal stage over the wire if it seals (as of `self.out.now`),
    /// else the plain wire.
    fn stage(&mut self) -> Result<Stage<'_, Wire<'_>>, Wire<'_>> {
        let wire = Wire {
            node: self.node,
            tables: self.tables,
            out: &mut *self.out,
        };
        let now = wire.out.now;
        match self.seal.as_mut() {
            Some((sealer, cache)) => Ok(Stage {
                sealer,
                cache,
                tables: self.tables,
                now,
                tunnel: wire,
            }),
            None => Err(wire),
        }
    }
}

impl Sink for NodeSink<'_> {
    fn to_port(&mut self, port: &PortEntry, offload: &Offload, frame: &[u8]) {
        self.out.stats.port_writes += 1;
        port.counters.tx(0, frame.len());
        // A TAP without USO refuses a UDP super-frame (a port without offloads, AF_XDP,
        // cuts what it is given itself).
        assert!(
            offload.gso_type != weft_encap::virtio::GsoType::UdpL4 || port.uso || !port.offloads,
            "a UDP super-frame to {}, whose TAP takes no USO",
            port.name
        );
        // What a TAP's kernel does with a super-frame or a partial checksum: the
        // smoltcp pods (and the log) see ordinary frames.
        if offload.is_gso() || offload.needs_csum {
            self.out.stats.super_frames += u64::from(offload.is_gso());
            let mut out = vec![0u8; 1 << 20];
            let frames: Vec<Vec<u8>> = if offload.is_gso() {
                let segs = weft_encap::gso::segment(frame, offload, &mut out, 0)
                    .unwrap_or_else(|e| panic!("bad super-frame to {}: {e}", port.name));
                segs.frames(&out).map(<[u8]>::to_vec).collect()
            } else {
                let mut f = frame.to_vec();
                weft_encap::gso::complete_checksum(
                    &mut f,
                    usize::from(offload.csum_start),
                    usize::from(offload.csum_offset),
                )
                .unwrap_or_else(|e| panic!("bad partial checksum to {}: {e}", port.name));
                vec![f]
            };
            for f in frames {
                self.deliver_frame(port, &f);
            }
            return;
        }
        self.deliver_frame(port, frame)
    }

    fn to_peer(&mut self, peer: &PeerEntry, lane: usize, datagram: &[u8]) {
        match self.stage() {
            Ok(mut sealed) => sealed.to_peer(peer, lane, datagram),
            Err(mut wire) => stage::Tunnel::send(&mut wire, peer, lane, datagram),
        }
    }

    fn to_peer_run(&mut self, peer: &PeerEntry, lane: usize, run: &[u8], segment: usize) {
        match self.stage() {
            Ok(mut sealed) => sealed.to_peer_run(peer, lane, run, segment),
            Err(mut wire) => stage::Tunnel::send_run(&mut wire, peer, lane, run, segment),
        }
    }

    fn report(&mut self, report: Report) {
        self.tables.apply(self.out.now, report);
    }
}

impl NodeSink<'_> {
    /// Hands one plain frame to the pod or host behind `port`.
    fn deliver_frame(&mut self, port: &PortEntry, frame: &[u8]) {
        if self.out.capture {
            self.out.log.push(Event::ToPort {
                node: self.node,
                kind: port.kind,
                ip: port.ip,
                mac: port.mac,
                frame: frame.to_vec(),
            });
        }
        match port.kind {
            PortKind::Host => {
                self.out.stats.to_hosts += 1;
                self.out.host_rx[self.node].push(frame.to_vec());
            }
            PortKind::Pod => {
                self.out.stats.to_pods += 1;
                let node = self.node;
                let pod = self
                    .pods
                    .iter_mut()
                    .find(|p| p.node == node && p.ip == port.ip)
                    .unwrap_or_else(|| {
                        panic!(
                            "node {node} sent to port {} ({}), which no pod owns",
                            port.name, port.ip
                        )
                    });
                pod.dev.rx.push_back(frame.to_vec());
            }
        }
    }
}

impl Outputs {
    /// Puts `datagram` from node `node`'s lane `lane` on the wire to `to`, as its
    /// link carries it.
    fn send_datagram(&mut self, node: usize, to: SocketAddrV4, lane: usize, datagram: &[u8]) {
        if self.capture {
            self.log.push(Event::ToPeer {
                node,
                to,
                lane,
                datagram: datagram.to_vec(),
            });
        }
        let s = &mut self.stats;
        s.datagrams += 1;
        s.datagram_bytes += datagram.len() as u64;
        s.longest_datagram = s.longest_datagram.max(datagram.len());
        let dest = (0..self.links.len()).find(|&m| underlay(m) == to);
        let link = dest.map_or_else(Link::default, |m| self.links[node][m]);
        if !self.carries(&link, datagram.len()) {
            self.lost += 1;
            return;
        }
        let at = self.now + link.latency + self.jitter(&link);
        self.wire.push_back(WireDatagram {
            // Each lane is its own source port, as on a real node.
            from: SocketAddr::V4(SocketAddrV4::new(
                *underlay(node).ip(),
                LANE_PORT_BASE + lane as u16,
            )),
            to: SocketAddr::V4(to),
            bytes: datagram.to_vec(),
            at,
        });
    }

    /// How much later than its latency a datagram on `link` arrives this time.
    fn jitter(&mut self, link: &Link) -> std::time::Duration {
        if link.jitter.is_zero() {
            return std::time::Duration::ZERO;
        }
        // Whole microseconds: the simulated clock counts no finer.
        let micros = link.jitter.as_micros() as f64 * self.draw();
        std::time::Duration::from_micros(micros as u64)
    }

    /// The next number from the seeded generator (xorshift64), in [0, 1).
    fn draw(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether `link` carries a datagram of `len` bytes this time.
    fn carries(&mut self, link: &Link, len: usize) -> bool {
        if !link.up || link.mtu.is_some_and(|mtu| len > mtu) {
            return false;
        }
        if link.loss <= 0.0 {
            return true;
        }
        self.draw() >= link.loss
    }
}

/// A simulated cluster.
#[derive(Debug)]
pub struct Sim {
    /// The tunnel mode every node uses.
    pub mode: TunnelMode,
    /// The nodes, by index.
    pub nodes: Vec<Node>,
    /// The pods, in the order they were listed.
    pub pods: Vec<Pod>,
    /// The datapaths' outputs.
    pub out: Outputs,
    /// The simulated time.
    pub now: Instant,
    /// Steps run so far.
    pub steps: u64,
    /// Each node's host, where a test gave it one: what the switch hands the host
    /// port goes through it at every step, and what it sends back re-enters the
    /// switch. Without one, frames for the host stay in [`Outputs::host_rx`].
    pub hosts: Vec<Option<nat::HostNat>>,
    buf: Vec<u8>,
}

fn new_counters() -> Arc<Counters> {
    Arc::new(Counters::new(1))
}

/// Node `n`'s own configuration.
fn node_config(n: usize, mode: TunnelMode, heartbeat: Option<std::time::Duration>) -> NodeConfig {
    NodeConfig {
        name: format!("node-{n}"),
        router_mac: router_mac(n),
        subnet: subnet(n),
        gateway: gateway(n),
        underlay: *underlay(n).ip(),
        cluster: cluster(),
        mode,
        vni: Vni::new(1).expect("1 is a VNI"),
        pod_mtu: POD_MTU,
        max_datagram: MAX_DATAGRAM,
        heartbeat: heartbeat.unwrap_or_default(),
        v6: Some(Node6 {
            subnet: subnet6(n),
            gateway: gateway6(n),
            cluster: cluster6(),
        }),
    }
}

/// A port: the host port (`slot` 0, at the gateway) or a pod's.
fn port_entry(slot: u32, ip: Ipv4Addr) -> PortEntry {
    let pod = slot > 0;
    PortEntry {
        id: PortId {
            slot,
            generation: 0,
        },
        kind: if pod { PortKind::Pod } else { PortKind::Host },
        name: if pod {
            format!("tap{}", slot - 1)
        } else {
            "weft0".into()
        },
        mac: MacAddr::for_ip(ip),
        ip,
        ip6: pod.then(|| ip6_of(ip)),
        container_id: pod.then(|| format!("pod-{ip}")),
        pod: None,
        netns: None,
        queues: 1,
        offloads: true,
        uso: true,
        counters: new_counters(),
        policy: None,
    }
}

/// Node `n`'s entry for peer node `m`.
fn peer_entry(m: usize) -> PeerEntry {
    PeerEntry {
        name: format!("node-{m}"),
        addr: underlay(m),
        subnet: subnet(m),
        subnet6: Some(subnet6(m)),
        vtep_mac: router_mac(m),
        counters: new_counters(),
        health: Arc::new(PeerHealth::new(Time::ZERO)),
        path: PeerPath::Tunnel,
        beats: true,
        via_host: false,
    }
}

impl Sim {
    /// A cluster of `layout.len()` nodes; node `n` holds pods with the addresses
    /// `layout[n]`, which must lie in its subnet. The nodes send no heartbeats.
    pub fn new(mode: TunnelMode, layout: &[&[Ipv4Addr]]) -> Sim {
        Sim::build(mode, layout, None)
    }

    /// Like [`Sim::new`], with every node sending heartbeats every `interval`.
    pub fn with_heartbeats(
        mode: TunnelMode,
        layout: &[&[Ipv4Addr]],
        interval: std::time::Duration,
    ) -> Sim {
        Sim::build(mode, layout, Some(interval))
    }

    /// Like [`Sim::new`], with every node tracking at most `max` connections.
    pub fn with_conntrack_max(mode: TunnelMode, layout: &[&[Ipv4Addr]], max: usize) -> Sim {
        let mut sim = Sim::new(mode, layout);
        for node in &mut sim.nodes {
            node.host_flows = HostTables::new(1, max);
            node.core = Core::new(core::Config {
                worker: 0,
                heartbeat: None,
                conntrack: Some(Conntrack::new(policy_tables(max), 0)),
                conntrack6: Some(Conntrack::new(policy_tables(max), 0)),
                host: node.host_flows.worker(0),
                flows: node.flows.recorder(0),
            });
        }
        sim
    }

    /// A sleeve cluster whose nodes seal to each other, `encryption` being on or
    /// required: each runs the daemon's seal stage between its core and the wire,
    /// with an endpoint that knows every other node's public key. Pods get the MTU
    /// the encrypted sleeve leaves them ([`SEALED_POD_MTU`]), and no sealed
    /// datagram is longer than [`MAX_DATAGRAM`].
    pub fn encrypted(layout: &[&[Ipv4Addr]], encryption: Encryption) -> Sim {
        let mut sim = Sim::new(TunnelMode::Sleeve, layout);
        for n in 0..sim.nodes.len() {
            sim.seal_node(n, encryption);
        }
        sim
    }

    fn seal_node(&mut self, n: usize, encryption: Encryption) {
        let t = &self.nodes[n].tables;
        let mut config = (*t.node).clone();
        config.pod_mtu = SEALED_POD_MTU;
        config.max_datagram = MAX_DATAGRAM - weft_encap::sleeve::seal::SEAL_OVERHEAD;
        let mut tables = Tables::build(
            Arc::new(config),
            t.ports[0].clone(),
            t.ports[1..].iter().cloned(),
            t.peers.clone(),
            t.tunnel.clone(),
        )
        .expect("the simulated cluster is routable");
        tables.services = t.services.clone();
        // A pod's stack reads its MTU when it starts: the pods start again.
        for pod in self.pods.iter_mut().filter(|p| p.node == n) {
            *pod = Pod::new(pod.node, pod.port, pod.ip, SEALED_POD_MTU);
        }
        let mut endpoint = crypto::Endpoint::new(crypto::Config {
            node: weft_encap::sleeve::NodeId(router_mac(n).0),
            features: core::FEATURES,
            key: static_key(n),
            psk: None,
            cipher: weft_encap::sleeve::seal::Cipher::ChaCha20Poly1305,
            wall_at_zero: WALL_AT_ZERO,
        });
        for m in (0..self.nodes.len()).filter(|&m| m != n) {
            endpoint.set_peer(
                weft_encap::sleeve::NodeId(router_mac(m).0),
                static_key(m).public(),
            );
        }
        let node = &mut self.nodes[n];
        node.tables = tables;
        node.sealer = Some(Arc::new(Sealer::new(endpoint, encryption)));
    }

    /// Node `n`'s seal stage (in a [`Sim::encrypted`] cluster).
    pub fn sealer(&self, n: usize) -> &Sealer {
        self.nodes[n]
            .sealer
            .as_deref()
            .unwrap_or_else(|| panic!("node {n} does not seal"))
    }

    /// Gives pod `p` the NetworkPolicy rules `rules` (none: not isolated), as a new
    /// policy generation of its node.
    pub fn set_rules(&mut self, p: usize, rules: Option<PodRules>) {
        let (n, port) = (self.pods[p].node, self.pods[p].port);
        let t = &mut self.nodes[n].tables;
        t.ports[port].policy = rules.map(Arc::new);
        t.policy_generation = t.policy_generation.wrapping_add(1);
    }

    /// Changes what node `n` knows of its peer node `m` with `f`, and rebuilds its
    /// routes (a peer reached directly routes to the host port, say).
    pub fn set_peer(&mut self, n: usize, m: usize, f: impl FnOnce(&mut PeerEntry)) {
        let t = &self.nodes[n].tables;
        let j = t
            .peer_by_ip(*underlay(m).ip())
            .unwrap_or_else(|| panic!("node {m} is no peer of node {n}"));
        let mut peers = t.peers.clone();
        f(&mut peers[j]);
        let mut rebuilt = Tables::build(
            t.node.clone(),
            t.ports[0].clone(),
            t.ports[1..].iter().cloned(),
            peers,
            t.tunnel.clone(),
        )
        .expect("the changed peer is routable");
        rebuilt.policy_generation = t.policy_generation;
        rebuilt.services = t.services.clone();
        self.nodes[n].tables = rebuilt;
    }

    /// Gives every node the ClusterIP Service ports `ports` to translate, as
    /// `services = "switch"` does, each endpoint local on the node whose subnet
    /// holds it; the first call gives every core its translation tables.
    pub fn set_services(&mut self, ports: &[ServicePort]) {
        for (n, node) in self.nodes.iter_mut().enumerate() {
            let mut ports = ports.to_vec();
            for e in ports.iter_mut().flat_map(|p| p.endpoints.iter_mut()) {
                e.local = subnet(n).contains(&e.ip);
            }
            let table = ServiceTable {
                cidr: Some(service_cidr()),
                ports,
            };
            let previous = node.tables.services.as_deref();
            let generation = previous.map_or(1, |s| s.generation() + 1);
            let compiled = Services::compile(
                Arc::new(table),
                service_cidr(),
                SERVICE_SEED,
                generation,
                previous,
            )
            .expect("the simulated Service table compiles");
            node.tables.services = Some(Arc::new(compiled));
            if !node.core.translates_services() {
                let tables =
                    Conntrack::value_tables(1, CONNTRACK_MAX, policy_overflow(CONNTRACK_MAX));
                node.core.set_services(Nat::new(Conntrack::new(tables, 0)));
            }
        }
    }

    /// Says whether pod `p`'s TAP takes UDP super-frames (USO): every pod's does
    /// unless told otherwise, as on Linux 6.2 and later.
    pub fn set_uso(&mut self, p: usize, uso: bool) {
        let (n, port) = (self.pods[p].node, self.pods[p].port);
        self.nodes[n].tables.ports[port].uso = uso;
    }

    /// Says whether node `n`'s host port takes UDP super-frames (USO).
    pub fn set_host_uso(&mut self, n: usize, uso: bool) {
        self.nodes[n].tables.ports[0].uso = uso;
    }

    fn build(
        mode: TunnelMode,
        layout: &[&[Ipv4Addr]],
        heartbeat: Option<std::time::Duration>,
    ) -> Sim {
        let n_nodes = layout.len();
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for (n, ips) in layout.iter().enumerate() {
            let mut ports = Vec::new();
            for (i, ip) in ips.iter().enumerate() {
                assert!(
                    subnet(n).contains(ip),
                    "pod {ip} is outside node {n}'s subnet"
                );
                ports.push(port_entry(i as u32 + 1, *ip));
                pods.push(Pod::new(n, i + 1, *ip, POD_MTU));
            }
            let peers = (0..n_nodes).filter(|&m| m != n).map(peer_entry).collect();
            let config = Arc::new(node_config(n, mode, heartbeat));
            let host = port_entry(0, gateway(n));
            let tables = Tables::build(config, host, ports, peers, new_counters())
                .expect("the simulated cluster is routable");
            let conntrack = Conntrack::new(policy_tables(CONNTRACK_MAX), 0);
            let host_flows = HostTables::new(1, CONNTRACK_MAX);
            // Every verdict is recorded, as with `flow-log = true`.
            let flows = FlowLog::new(1, true);
            let core = Core::new(core::Config {
                worker: 0,
                heartbeat,
                conntrack: Some(conntrack),
                conntrack6: Some(Conntrack::new(policy_tables(CONNTRACK_MAX), 0)),
                host: host_flows.worker(0),
                flows: flows.recorder(0),
            });
            nodes.push(Node {
                tables,
                core,
                host_flows,
                flows,
                sealer: None,
                seal: SealCache::for_worker(0),
                seal_clock: SealClock::default(),
            });
        }
        Sim {
            mode,
            nodes,
            pods,
            out: Outputs {
                host_rx: vec![Vec::new(); n_nodes],
                links: vec![vec![Link::default(); n_nodes]; n_nodes],
                rng: 0x5eed_5eed_5eed_5eed,
                ..Outputs::default()
            },
            now: Instant::from_millis(0),
            steps: 0,
            hosts: (0..n_nodes).map(|_| None).collect(),
            buf: vec![0; HEADROOM + 65_536],
        }
    }

    /// The simulated time as the cores see it.
    pub fn time(&self) -> Time {
        Time::from_micros(u64::try_from(self.now.total_micros()).unwrap_or(0))
    }

    /// The link from node `a` to node `b`, to change.
    pub fn link_mut(&mut self, a: usize, b: usize) -> &mut Link {
        &mut self.out.links[a][b]
    }

    /// Sets both directions between nodes `a` and `b` to `link`.
    pub fn set_link(&mut self, a: usize, b: usize, link: Link) {
        self.out.links[a][b] = link;
        self.out.links[b][a] = link;
    }

    /// What node `n` knows of peer node `m`'s health now.
    pub fn health(&self, n: usize, m: usize) -> HealthSnapshot {
        let t = &self.nodes[n].tables;
        let j = t
            .peer_by_ip(*underlay(m).ip())
            .unwrap_or_else(|| panic!("node {m} is no peer of node {n}"));
        let answers_always = self.mode == TunnelMode::Sleeve;
        t.peers[j]
            .health
            .snapshot(self.time(), t.beat_round(), answers_always)
    }

    /// The index of the pod with address `ip`.
    pub fn pod(&self, ip: Ipv4Addr) -> usize {
        self.pods
            .iter()
            .position(|p| p.ip == ip)
            .unwrap_or_else(|| panic!("no simulated pod has address {ip}"))
    }

    /// Hands `frame` to the switch as if pod `p` had sent it (no flush).
    pub fn pod_frame(&mut self, p: usize, frame: &[u8]) {
        let (n, port) = (self.pods[p].node, self.pods[p].port);
        self.pods[p].frames_sent += 1;
        self.port_frame(n, port, frame);
    }

    /// Hands `frame` to node `n`'s switch as if its host port had sent it (no flush).
    pub fn host_frame(&mut self, n: usize, frame: &[u8]) {
        self.port_frame(n, 0, frame);
    }

    /// Hands `frame` to node `n`'s switch as read from port index `port` (no flush).
    pub fn port_frame(&mut self, n: usize, port: usize, frame: &[u8]) {
        self.port_frame_with(n, port, &Offload::PLAIN, frame);
    }

    /// Like [`Sim::port_frame`], with the virtio-net header a TAP read gave: a
    /// super-frame or a partial checksum.
    pub fn port_frame_with(&mut self, n: usize, port: usize, offload: &Offload, frame: &[u8]) {
        self.on_node(n, frame, |core, cx, frame| {
            core.port_frame(cx, port, offload, frame);
        });
    }

    /// Hands node `n` a tunnel datagram received from `from` (no flush): through
    /// its seal stage first, if it seals, as a worker does.
    pub fn tunnel_in(&mut self, n: usize, from: SocketAddr, datagram: &[u8]) {
        self.on_node(n, datagram, |core, cx, frame| {
            let mut range = frame.start..frame.start + frame.len;
            if let (SocketAddr::V4(v4), Ok(mut stage)) = (from, cx.sink.stage()) {
                match stage.from_peer(v4, frame.buf, range) {
                    Some(opened) => range = opened,
                    None => return,
                }
            }
            core.tunnel_datagram(cx, from, Frame::new(frame.buf, range.start, range.len()));
        });
    }

    /// Copies `bytes` into the receive buffer at [`HEADROOM`] and runs `f` on node
    /// `n`'s core with it and a context sending into the simulation.
    fn on_node(
        &mut self,
        n: usize,
        bytes: &[u8],
        f: impl FnOnce(&mut Core, &mut Ctx<'_, NodeSink<'_>>, Frame<'_>),
    ) {
        let now = self.time();
        let Sim {
            nodes,
            pods,
            out,
            buf,
            ..
        } = self;
        out.now = now;
        buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
        let node = &mut nodes[n];
        let mut sink = NodeSink {
            node: n,
            tables: &node.tables,
            pods,
            out,
            seal: node.sealer.as_deref().map(|s| (s, &mut node.seal)),
        };
        let mut cx = Ctx::new(&node.tables, now, &mut sink);
        f(
            &mut node.core,
            &mut cx,
            Frame::new(buf, HEADROOM, bytes.len()),
        );
    }

    /// Runs `f` on every node's core with a context sending into the simulation.
    fn on_every_node(&mut self, mut f: impl FnMut(&mut Core, &mut Ctx<'_, NodeSink<'_>>)) {
        let now = self.time();
        let Sim {
            nodes, pods, out, ..
        } = self;
        out.now = now;
        for (n, node) in nodes.iter_mut().enumerate() {
            let mut sink = NodeSink {
                node: n,
                tables: &node.tables,
                pods: &mut pods[..],
                out: &mut *out,
                seal: node.sealer.as_deref().map(|s| (s, &mut node.seal)),
            };
            let mut cx = Ctx::new(&node.tables, now, &mut sink);
            f(&mut node.core, &mut cx);
        }
    }

    /// Ends the batch on every node: sends what the sleeve holds back, and forgets
    /// the sessions the seal stage looked up (the next batch may see a rekey).
    pub fn flush(&mut self) {
        self.on_every_node(|core, cx| core.flush(cx));
        for node in &mut self.nodes {
            node.seal.new_batch();
        }
    }

    /// Runs every core's timers and every seal stage's handshake timers that are
    /// due now, then ends the batch.
    pub fn handle_timeouts(&mut self) {
        let now = self.time();
        self.on_every_node(|core, cx| {
            if core.poll_timeout().is_some_and(|at| at <= now) {
                core.handle_timeout(cx);
            }
            core.flush(cx);
        });
        self.seal_timeouts();
    }

    /// Runs the seal stages' handshake timers (resends, rekeys and deaths) on the
    /// nodes whose [`SealClock`] says so now, as worker 0 of each node does: when
    /// they are due as it last asked, or at the recheck, since a handshake the
    /// send path started moves them without telling it.
    pub fn seal_timeouts(&mut self) {
        let now = self.time();
        let Sim { nodes, out, .. } = self;
        out.now = now;
        for (n, node) in nodes.iter_mut().enumerate() {
            let Some(sealer) = node.sealer.as_deref() else {
                continue;
            };
            if !node.seal_clock.runs(0, true, now) {
                continue;
            }
            let mut stage = Stage {
                sealer,
                cache: &mut node.seal,
                tables: &node.tables,
                now,
                tunnel: Wire {
                    node: n,
                    tables: &node.tables,
                    out: &mut *out,
                },
            };
            let due = stage.handle_timeout();
            node.seal_clock.ran(now, due);
            node.seal.new_batch();
        }
    }

    /// The next moment something happens on its own: a datagram arrives or a core's
    /// timer fires.
    pub fn next_event(&self) -> Option<Time> {
        let wire = self.out.wire.iter().map(|d| d.at).min();
        let timers = self
            .nodes
            .iter()
            .flat_map(|n| {
                let seal = n.sealer.as_ref().map(|_| n.seal_clock.next_run());
                n.core.poll_timeout().into_iter().chain(seal)
            })
            .min();
        wire.into_iter().chain(timers).min()
    }

    /// Jumps the clock to the next event, no further than `limit`, and runs what is
    /// due: timers, then arrivals. Returns whether anything was due by `limit`.
    pub fn advance(&mut self, limit: Time) -> bool {
        let Some(at) = self.next_event().filter(|at| *at <= limit) else {
            self.set_time(limit);
            return false;
        };
        if at > self.time() {
            self.set_time(at);
        }
        self.handle_timeouts();
        self.deliver_wire();
        true
    }

    /// Keeps jumping from event to event for `d` of simulated time (pods are not
    /// polled: this is for what the switches do on their own, such as heartbeats).
    pub fn run_for(&mut self, d: std::time::Duration) {
        let end = self.time() + d;
        while self.advance(end) {}
    }

    /// Sets the clock to `t`.
    pub fn set_time(&mut self, t: Time) {
        self.now = Instant::from_micros(i64::try_from(t.as_micros()).unwrap_or(i64::MAX));
        self.out.now = t;
    }

    /// The index of the node with underlay address `addr`.
    pub fn node_at(&self, addr: SocketAddr) -> Option<usize> {
        (0..self.nodes.len()).find(|&n| SocketAddr::V4(underlay(n)) == addr)
    }

    /// Delivers every datagram on the wire that has arrived by now to its node, then
    /// flushes. Replies they cause stay on the wire for the next call.
    pub fn deliver_wire(&mut self) {
        let now = self.time();
        let (mut batch, later): (Vec<WireDatagram>, Vec<WireDatagram>) =
            self.out.wire.drain(..).partition(|d| d.at <= now);
        self.out.wire.extend(later);
        // In order of arrival: with jitter, datagrams overtake each other.
        batch.sort_by_key(|d| d.at);
        for d in batch {
            let n = self
                .node_at(d.to)
                .unwrap_or_else(|| panic!("a datagram went to {}, which is no node", d.to));
            self.tunnel_in(n, d.from, &d.bytes);
        }
        self.flush();
    }

    /// One step: every pod polls its stack, the switches take what the pods sent,
    /// the wire is delivered, and the clock moves by [`STEP`].
    pub fn step(&mut self) {
        let now = self.now;
        for pod in &mut self.pods {
            pod.iface.poll(now, &mut pod.dev, &mut pod.sockets);
        }
        for p in 0..self.pods.len() {
            while let Some(frame) = self.pods[p].dev.tx.pop_front() {
                self.pod_frame(p, &frame);
            }
        }
        self.flush();
        self.seal_timeouts();
        self.deliver_wire();
        self.run_hosts();
        self.now += STEP;
        self.steps += 1;
    }

    /// Gives node `n` a host as kube-proxy leaves it (see [`nat`]), with no
    /// Services yet.
    pub fn host_nat(&mut self, n: usize) -> &mut nat::HostNat {
        self.hosts[n].get_or_insert_with(|| nat::HostNat::new(gateway(n), cluster()))
    }

    /// Passes what each node handed its host through that host, if it has one, and
    /// hands the switch what the host sends back, then flushes. A host's direct
    /// route takes a packet to the other node's host, which routes it in turn.
    pub fn run_hosts(&mut self) {
        let mut queue: VecDeque<(usize, Vec<u8>)> = VecDeque::new();
        for n in 0..self.nodes.len() {
            if self.hosts[n].is_none() {
                continue;
            }
            for f in std::mem::take(&mut self.out.host_rx[n]) {
                if f.len() > ETH_HLEN && u16::from_be_bytes([f[12], f[13]]) == ETHERTYPE_IPV4 {
                    queue.push_back((n, f[ETH_HLEN..].to_vec()));
                }
            }
        }
        // Every hop between hosts is a node's routing decision: bounded, as TTL is.
        let mut hops = 0;
        while let Some((n, packet)) = queue.pop_front() {
            hops += 1;
            assert!(hops < 100_000, "packets loop between the simulated hosts");
            let Some(host) = self.hosts[n].as_mut() else {
                continue;
            };
            match host.route(&packet) {
                nat::Routed::Back(p) => {
                    let host_mac = MacAddr::for_ip(gateway(n));
                    self.host_frame(n, &eth(router_mac(n), host_mac, ETHERTYPE_IPV4, &p));
                }
                nat::Routed::ToNode(m, p) => queue.push_back((m, p)),
                nat::Routed::Kept => {}
            }
        }
        self.flush();
    }

    /// Steps until `done` holds (checked before each step) or `limit` steps have run;
    /// returns the steps taken, or `None` on reaching the limit.
    pub fn run_until(&mut self, limit: u64, mut done: impl FnMut(&mut Sim) -> bool) -> Option<u64> {
        let start = self.steps;
        loop {
            if done(self) {
                return Some(self.steps - start);
            }
            if self.steps - start >= limit {
                return None;
            }
            self.step();
        }
    }

    /// The frames waiting in pod `p`'s receive queue, taken out of it.
    pub fn take_rx(&mut self, p: usize) -> Vec<Vec<u8>> {
        self.pods[p].dev.rx.drain(..).collect()
    }

    /// The counters of pod `p`'s port.
    pub fn port_counters(&self, p: usize) -> Snapshot {
        let pod = &self.pods[p];
        self.nodes[pod.node].tables.ports[pod.port]
            .counters
            .snapshot()
    }

    /// The counters of node `n`'s host port.
    pub fn host_counters(&self, n: usize) -> Snapshot {
        self.nodes[n].tables.ports[0].counters.snapshot()
    }

    /// The counters node `n` keeps for its peer node `m`.
    pub fn peer_counters(&self, n: usize, m: usize) -> Snapshot {
        let t = &self.nodes[n].tables;
        let j = t
            .peer_by_ip(*underlay(m).ip())
            .unwrap_or_else(|| panic!("node {m} is no peer of node {n}"));
        t.peers[j].counters.snapshot()
    }

    /// Node `n`'s counters for datagrams from no known peer.
    pub fn tunnel_counters(&self, n: usize) -> Snapshot {
        self.nodes[n].tables.tunnel.snapshot()
    }

    /// Every counter set of node `n`, named.
    pub fn all_counters(&self, n: usize) -> Vec<(String, Snapshot)> {
        let t = &self.nodes[n].tables;
        let mut all: Vec<(String, Snapshot)> = t
            .ports
            .iter()
            .map(|p| (format!("port {} ({})", p.name, p.ip), p.counters.snapshot()))
            .collect();
        all.extend(
            t.peers
                .iter()
                .map(|p| (format!("peer {}", p.name), p.counters.snapshot())),
        );
        all.push(("tunnel".into(), t.tunnel.snapshot()));
        all
    }

    /// The total of every drop counter on every node.
    pub fn total_drops(&self) -> u64 {
        (0..self.nodes.len())
            .flat_map(|n| self.all_counters(n))
            .map(|(_, s)| s.drops.iter().sum::<u64>())
            .sum()
    }

    /// Every non-zero drop counter, for failure messages.
    pub fn drops_report(&self) -> String {
        let mut s = String::new();
        for n in 0..self.nodes.len() {
            for (name, snap) in self.all_counters(n) {
                for r in DropReason::ALL {
                    if snap.dropped(r) > 0 {
                        let _ = write!(s, "node {n} {name}: {} {}; ", r.name(), snap.dropped(r));
                    }
                }
            }
        }
        if s.is_empty() {
            s.push_str("no drops");
        }
        s
    }
}

impl Pod {
    fn new(node: usize, port: usize, ip: Ipv4Addr, mtu: u32) -> Pod {
        let mac = MacAddr::for_ip(ip);
        let mut dev = MemDevice {
            mtu,
            ..MemDevice::default()
        };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac.0)));
        config.random_seed = u64::from(u32::from(ip));
        let mut iface = Interface::new(config, &mut dev, Instant::from_millis(0));
        // Dual stack, as the simulated nodes are: IPv6 by the same host number.
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(ip), 24))
                .expect("room for one address");
            addrs
                .push(IpCidr::new(IpAddress::Ipv6(ip6_of(ip)), 64))
                .expect("room for two addresses");
        });
        let routes = iface.routes_mut();
        (routes.add_default_ipv4_route(gateway(node)))
            .and_then(|_| routes.add_default_ipv6_route(gateway6(node)))
            .expect("room for the default routes");
        Pod {
            node,
            port,
            ip,
            mac,
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            frames_sent: 0,
        }
    }
}

// ---- Hand-built frames ----

/// Runs every listed scenario, a `fn name(TunnelMode)` of the calling test file, once
/// per tunnel mode, as the tests `vxlan_mode::name` and `sleeve_mode::name`.
#[macro_export]
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod vxlan_mode {
            $(#[test] fn $name() { super::$name($crate::tables::TunnelMode::Vxlan) })*
        }
        mod sleeve_mode {
            $(#[test] fn $name() { super::$name($crate::tables::TunnelMode::Sleeve) })*
        }
    };
}

/// An Ethernet frame.
pub fn eth(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + payload.len());
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The parts of an IPv4 header a test chooses.
#[derive(Debug, Clone, Copy)]
pub struct Ip {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Time to live.
    pub ttl: u8,
    /// Protocol number.
    pub proto: u8,
    /// Don't-fragment flag.
    pub df: bool,
    /// Fragment offset, in 8-byte units.
    pub frag_offset: u16,
}

impl Ip {
    /// A UDP packet header from `src` to `dst` with TTL 64 and DF set.
    pub fn udp(src: Ipv4Addr, dst: Ipv4Addr) -> Ip {
        Ip {
            src,
            dst,
            ttl: 64,
            proto: 17,
            df: true,
            frag_offset: 0,
        }
    }

    /// The whole IPv4 packet around `payload`, with a correct header checksum.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let total = 20 + payload.len();
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[1] = 0x10;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        let flags = if self.df { 0x4000 } else { 0 } | (self.frag_offset & 0x1fff);
        p[6..8].copy_from_slice(&flags.to_be_bytes());
        p[8] = self.ttl;
        p[9] = self.proto;
        p[12..16].copy_from_slice(&self.src.octets());
        p[16..20].copy_from_slice(&self.dst.octets());
        fix_ipv4_checksum(&mut p);
        p.extend_from_slice(payload);
        p
    }
}

/// Recomputes the header checksum of the IPv4 packet `p` (header without options).
pub fn fix_ipv4_checksum(p: &mut [u8]) {
    p[10..12].fill(0);
    let sum = !ones_sum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// The one's complement sum of `data` (RFC 1071), written independently of the
/// switch's own checksum code so that the tests check it.
pub fn ones_sum(data: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// A copy of IPv4 packet `p` with its TTL set to `ttl` and its checksum fixed.
pub fn with_ttl(p: &[u8], ttl: u8) -> Vec<u8> {
    let mut q = p.to_vec();
    q[8] = ttl;
    fix_ipv4_checksum(&mut q);
    q
}

/// A UDP datagram (checksum 0, which IPv4 allows) with `len` payload bytes.
pub fn udp(src_port: u16, dst_port: u16, len: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + len);
    d.extend_from_slice(&src_port.to_be_bytes());
    d.extend_from_slice(&dst_port.to_be_bytes());
    d.extend_from_slice(&((8 + len) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend((0..len).map(|i| (i * 7 + 3) as u8));
    d
}

/// The frame pod `p` sends to its gateway MAC, carrying `packet`.
pub fn from_pod(sim: &Sim, p: usize, packet: &[u8]) -> Vec<u8> {
    let pod = &sim.pods[p];
    eth(router_mac(pod.node), pod.mac, ETHERTYPE_IPV4, packet)
}

/// An ARP packet (Ethernet, IPv4).
pub fn arp(op: u16, sha: MacAddr, spa: Ipv4Addr, tha: MacAddr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&1u16.to_be_bytes());
    a.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    a.push(6);
    a.push(4);
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha.0);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha.0);
    a.extend_from_slice(&tpa.octets());
    a
}

/// A deterministic pseudo-random byte stream (SplitMix64).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}
