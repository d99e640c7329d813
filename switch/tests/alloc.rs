//! The per-packet path allocates nothing: a counting global allocator watches the
//! datapath forward frames both ways, in both tunnel modes, including the offload
//! paths (a TSO super-frame cut for the wire, tunnel segments coalesced for a pod),
//! and the tunnel I/O below it sends (`sendmmsg`, GSO) and receives (`recvmmsg`, GRO)
//! on real sockets without allocating either; and the encrypted sleeve's seal stage
//! seals and opens datagrams without allocating.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use weft_encap::{checksum, gso, sleeve, virtio, vxlan};
use weft_switch::control::netlink::{in_new_netns, NetlinkError};
use weft_switch::core::conntrack::{Conntrack, Overflow};
use weft_switch::core::flowlog::{FlowLog, Verdict};
use weft_switch::core::host::HostTables;
use weft_switch::core::{self, Core, Ctx, Frame, Report, Sink, Time, HEADROOM};
use weft_switch::io::port::Offload;
use weft_switch::io::udp::{Lanes, RxBatch, Tunnel};
use weft_switch::mac::MacAddr;
use weft_switch::netpol::compile::{CompiledRule, Origin, PodRules, RuleSet};
use weft_switch::tables::counters::{Counters, DropReason};
use weft_switch::tables::health::PeerHealth;
use weft_switch::tables::{
    NodeConfig, PeerEntry, PeerPath, PortEntry, PortId, PortKind, Tables, TunnelMode,
};

struct Counting;

thread_local! {
    /// Allocations made by this thread (tests run on parallel threads).
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn count() {
    // `try_with`: during thread teardown the slot may be gone; such calls don't count.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: defers to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const PEER_UNDERLAY: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
/// The heartbeat interval; every round is one interval later, so each sends one.
/// The rounds counted.
const ROUNDS: usize = 200;
const BEAT: std::time::Duration = std::time::Duration::from_millis(1);

/// Counts what it is given; allocates nothing.
#[derive(Default)]
struct CountingSink {
    to_ports: u64,
    super_frames: u64,
    datagrams: u64,
    reports: u64,
}

impl Sink for CountingSink {
    fn to_port(&mut self, _: &PortEntry, offload: &Offload, _: &[u8]) {
        self.to_ports += 1;
        self.super_frames += u64::from(offload.is_gso());
    }
    fn to_peer(&mut self, _: &PeerEntry, _: usize, _: &[u8]) {
        self.datagrams += 1;
    }
    fn report(&mut self, _: Report) {
        self.reports += 1;
    }
}

/// Rules that isolate a pod both ways and allow everything.
fn allow_all() -> PodRules {
    let rule = CompiledRule {
        origin: Origin {
            policy: "x/allow-all".into(),
            rule: 0,
        },
        peers: None,
        ports: None,
    };
    let set = RuleSet { rules: vec![rule] };
    PodRules {
        ingress: Some(set.clone()),
        egress: Some(set),
        selected_by: vec![("x/allow-all".into(), true, true)],
    }
}

fn tables(mode: TunnelMode) -> Tables {
    let gateway = Ipv4Addr::new(10, 244, 1, 1);
    let node = Arc::new(NodeConfig {
        name: "n0".into(),
        router_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        subnet: "10.244.1.0/24".parse().unwrap(),
        gateway,
        underlay: Ipv4Addr::new(10, 250, 0, 1),
        cluster: "10.244.0.0/16".parse().unwrap(),
        mode,
        vni: vxlan::DEFAULT_VNI,
        pod_mtu: 1450,
        max_datagram: 1472,
        heartbeat: BEAT,
        v6: None,
    });
    let port = |slot, kind, ip| PortEntry {
        id: PortId {
            slot,
            generation: 0,
        },
        kind,
        name: "eth0".into(),
        mac: MacAddr::for_ip(ip),
        ip,
        ip6: None,
        container_id: None,
        pod: None,
        netns: None,
        queues: 1,
        offloads: true,
        uso: true,
        counters: Arc::new(Counters::new(1)),
        // The pod is isolated both ways, so every packet meets policy and the
        // connection table.
        policy: (kind == PortKind::Pod).then(|| Arc::new(allow_all())),
    };
    let peer = PeerEntry {
        name: "n1".into(),
        addr: SocketAddrV4::new(PEER_UNDERLAY, 8472),
        subnet: "10.244.2.0/24".parse().unwrap(),
        subnet6: None,
        vtep_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        counters: Arc::new(Counters::new(1)),
        health: Arc::new(PeerHealth::new(Time::ZERO)),
        path: PeerPath::Tunnel,
        beats: true,
        via_host: false,
    };
    Tables::build(
        node,
        port(0, PortKind::Host, gateway),
        [port(1, PortKind::Pod, POD)],
        vec![peer],
        Arc::new(Counters::new(1)),
    )
    .unwrap()
}

/// An Ethernet + IPv4 + TCP frame with `payload` bytes, checksums complete.
fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, seq: u32, payload: usize) -> Vec<u8> {
    tcp_segment(src, dst, 40000, seq, payload)
}

/// A TCP segment from source port `sport` to 5201.
fn tcp_segment(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, seq: u32, payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20 + payload];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
    let acc = checksum::accumulate(checksum::accumulate(0, &pseudo), &f[34..]);
    let sum = !checksum::fold(acc);
    f[50..52].copy_from_slice(&sum.to_be_bytes());
    f
}

fn run(mode: TunnelMode) {
    let t = tables(mode);
    // The flow log records every verdict, as with `flow-log = true`.
    let flows = FlowLog::new(1, true);
    let mut dp = Core::new(core::Config {
        worker: 0,
        heartbeat: Some(BEAT),
        conntrack: Some(Conntrack::new(
            Conntrack::tables(1, 1024, Overflow::Fair { share: 512 }),
            0,
        )),
        conntrack6: None,
        host: HostTables::new(1, 1024).worker(0),
        flows: flows.recorder(0),
    });
    let mut now = Time::ZERO;
    let mut sink = CountingSink::default();
    let mut buf = vec![0u8; HEADROOM + 70_000];
    let mut dgram = vec![0u8; 70_000];

    // From the pod: a plain 1400-byte segment, and a 64 KiB TSO super-frame.
    let plain = tcp_frame(POD, REMOTE, 1, 1400);
    let mut jumbo = tcp_frame(POD, REMOTE, 1, 60_000);
    // As the pod's kernel hands it over: partial checksum, segmentation asked.
    let offload = Offload {
        needs_csum: true,
        gso_type: virtio::GsoType::TcpV4,
        gso_size: 1398,
        hdr_len: 54,
        csum_start: 34,
        csum_offset: 16,
        ..Offload::PLAIN
    };
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&POD.octets());
    pseudo[4..8].copy_from_slice(&REMOTE.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&((20 + 60_000) as u16).to_be_bytes());
    let partial = checksum::fold(checksum::accumulate(0, &pseudo));
    jumbo[50..52].copy_from_slice(&partial.to_be_bytes());
    assert!(gso::required_out_len(&jumbo, &offload, 8).is_ok());
    // From the peer: in-sequence segments for the pod, as VXLAN or sleeve datagrams.
    let inbound: Vec<Vec<u8>> = (0..8u32)
        .map(|i| tcp_frame(REMOTE, POD, 1 + i * 1400, 1400))
        .collect();
    let encap = |frame: &[u8], out: &mut Vec<u8>| -> usize {
        match mode {
            TunnelMode::Vxlan => {
                vxlan::emit_header(&mut out[..8], vxlan::DEFAULT_VNI);
                let mut f = frame.to_vec();
                f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
                f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
                out[8..8 + f.len()].copy_from_slice(&f);
                8 + f.len()
            }
            TunnelMode::Sleeve => {
                let mut w = weft_encap::sleeve::FramesWriter::new(
                    &mut out[..],
                    weft_encap::sleeve::NodeId([2, 0, 0, 0, 0, 2]),
                    sleeve::FEATURE_CHUNKS,
                )
                .unwrap();
                assert!(w.try_push(0x0800, &frame[14..]));
                w.finish()
            }
        }
    };
    let mut datagrams: Vec<Vec<u8>> = inbound
        .iter()
        .map(|f| {
            let n = encap(f, &mut dgram);
            dgram[..n].to_vec()
        })
        .collect();
    if mode == TunnelMode::Sleeve {
        // And a super-frame for the pod, whole in sleeve chunks, as a weft peer sends it.
        let jumbo_in = tcp_frame(REMOTE, POD, 1 + 8 * 1400, 20_000);
        let payload = &jumbo_in[14..];
        for (i, data) in payload.chunks(1400).enumerate() {
            let mut d = vec![0u8; sleeve::CHUNK_OVERHEAD + data.len()];
            sleeve::emit_header(
                &mut d,
                sleeve::Kind::Chunk,
                sleeve::NodeId([2, 0, 0, 0, 0, 2]),
                sleeve::FEATURE_CHUNKS,
            );
            sleeve::ChunkRepr {
                frame_id: 9,
                total: payload.len() as u16,
                offset: (i * 1400) as u16,
                ethertype: 0x0800,
                gso_type: virtio::GSO_TCPV4,
                gso_size: 1398,
            }
            .emit(&mut d[sleeve::HEADER_LEN..]);
            d[sleeve::CHUNK_OVERHEAD..].copy_from_slice(data);
            datagrams.push(d);
        }
    }
    let from = SocketAddr::V4(SocketAddrV4::new(PEER_UNDERLAY, 40000));
    // And each round, a new connection: policy judges it, and the flow log records
    // the verdict.
    let new_flows: Vec<Vec<u8>> = (0..ROUNDS + 1)
        .map(|i| tcp_segment(POD, REMOTE, 20_000 + i as u16, 1, 100))
        .collect();
    let mut next_flow = new_flows.iter();

    let mut round = |dp: &mut Core, sink: &mut CountingSink| {
        now += BEAT;
        let mut cx = Ctx::new(&t, now, sink);
        let first = next_flow.next().expect("a new connection per round");
        buf[HEADROOM..HEADROOM + first.len()].copy_from_slice(first);
        let frame = Frame::new(&mut buf, HEADROOM, first.len());
        dp.port_frame(&mut cx, 1, &Offload::PLAIN, frame);
        buf[HEADROOM..HEADROOM + plain.len()].copy_from_slice(&plain);
        let frame = Frame::new(&mut buf, HEADROOM, plain.len());
        dp.port_frame(&mut cx, 1, &Offload::PLAIN, frame);
        buf[HEADROOM..HEADROOM + jumbo.len()].copy_from_slice(&jumbo);
        dp.port_frame(
            &mut cx,
            1,
            &offload,
            Frame::new(&mut buf, HEADROOM, jumbo.len()),
        );
        for d in &datagrams {
            buf[..d.len()].copy_from_slice(d);
            dp.tunnel_datagram(&mut cx, from, Frame::new(&mut buf, 0, d.len()));
        }
        // And the timers: a heartbeat to the peer every round.
        assert!(dp.poll_timeout().is_some_and(|at| at <= now));
        dp.handle_timeout(&mut cx);
        dp.flush(&mut cx);
    };
    // Warm up, then count.
    round(&mut dp, &mut sink);
    let before = allocations();
    for _ in 0..ROUNDS {
        round(&mut dp, &mut sink);
    }
    let allocations = allocations() - before;
    assert_eq!(
        allocations, 0,
        "{mode:?}: the datapath allocated {allocations} times in {ROUNDS} rounds"
    );
    // The verdicts were recorded: each round's new connection, and in the first
    // round the pod's own flow and the peer's (its segments come from port 40000
    // to 5201, a connection of their own), allowed by the policy's rules.
    let verdicts = flows.drain();
    assert_eq!(verdicts.len(), ROUNDS + 1 + 2, "{mode:?}");
    for v in &verdicts {
        match &v.verdict {
            Verdict::Allowed {
                egress, ingress, ..
            } => {
                let rule = egress.as_ref().or(ingress.as_ref()).expect("a rule");
                assert_eq!(&*rule.policy, "x/allow-all");
            }
            other => panic!("{mode:?}: {other:?}"),
        }
    }
    // And the rounds did the work: segments on the wire, super-frames to the pod.
    let c = t.ports[1].counters.snapshot();
    assert_eq!(
        c.drops.iter().sum::<u64>(),
        0,
        "{mode:?}: {:?} ({:?})",
        c,
        DropReason::ALL
    );
    assert!(
        sink.datagrams >= 201 * 20,
        "{mode:?}: {} datagrams",
        sink.datagrams
    );
    let per_round = if mode == TunnelMode::Sleeve { 2 } else { 1 };
    assert!(
        sink.super_frames >= 201 * per_round,
        "{mode:?}: {} super-frames",
        sink.super_frames
    );
    // A heartbeat went out every round, and was reported.
    assert!(sink.reports >= 201, "{mode:?}: {} reports", sink.reports);
}

/// A pod's packets to a ClusterIP (each round one of an established connection and
/// the first of a new one) and the endpoint's replies through the tunnel, translated
/// both ways, allocate nothing; nor does a worker's flush of its translations when
/// the Service table changes (every round, here).
#[test]
fn no_allocation_per_translated_packet() {
    use weft_switch::core::service::Nat;
    use weft_switch::services::{
        Endpoint, Frontend, Protocol, Readiness, ServicePort, ServiceTable,
    };
    use weft_switch::tables::services::Services;
    const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    let cidr = "10.96.0.0/12".parse().unwrap();
    let table = ServiceTable {
        cidr: Some(cidr),
        ports: vec![ServicePort {
            frontend: Frontend {
                ip: CLUSTER_IP,
                port: 5201,
                protocol: Protocol::Tcp,
            },
            name: Arc::from("x/iperf:5201"),
            endpoints: vec![Endpoint {
                ip: REMOTE,
                port: 5201,
                readiness: Readiness::Ready,
                local: false,
            }],
            affinity: None,
            internal_local: false,
        }],
    };
    // Two snapshots of one Service table, compiled twice: each round changes the
    // table, and the core drops its UDP translations to endpoints gone (none).
    let table = Arc::new(table);
    let snapshot = |generation| {
        let mut t = tables(TunnelMode::Vxlan);
        let services = Services::compile(table.clone(), cidr, 7, generation, None).unwrap();
        t.services = Some(Arc::new(services));
        t
    };
    let snapshots = [snapshot(1), snapshot(2)];
    let mut dp = Core::new(core::Config {
        worker: 0,
        heartbeat: None,
        conntrack: Some(Conntrack::new(
            Conntrack::tables(1, 1024, Overflow::Fair { share: 512 }),
            0,
        )),
        conntrack6: None,
        host: HostTables::new(1, 1024).worker(0),
        flows: Default::default(),
    });
    let nat = Conntrack::value_tables(1, 1024, Overflow::Fair { share: 1024 });
    dp.set_services(Nat::new(Conntrack::new(nat, 0)));
    let out = tcp_frame(POD, CLUSTER_IP, 1, 1400);
    // The endpoint's answer: the same segment the other way (a port swap keeps the
    // checksum), in a VXLAN datagram from the peer.
    let mut back = tcp_frame(REMOTE, POD, 1, 100);
    let (sport, dport) = ([back[34], back[35]], [back[36], back[37]]);
    back[34..36].copy_from_slice(&dport);
    back[36..38].copy_from_slice(&sport);
    let mut reply = vec![0u8; 8];
    vxlan::emit_header(&mut reply, vxlan::DEFAULT_VNI);
    back[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    back[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    reply.extend_from_slice(&back);
    let from = SocketAddr::V4(SocketAddrV4::new(PEER_UNDERLAY, 8472));
    let mut sink = CountingSink::default();
    let mut buf = vec![0u8; HEADROOM + 2048];
    let mut now = Time::ZERO;
    let mut round = |dp: &mut Core, sink: &mut CountingSink, i: u16| {
        now += BEAT;
        let t = &snapshots[usize::from(i % 2)];
        let mut cx = Ctx::new(t, now, sink);
        for sport in [40_000u16, 1_000 + i] {
            let f = &out;
            buf[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
            buf[HEADROOM + 34..HEADROOM + 36].copy_from_slice(&sport.to_be_bytes());
            let frame = Frame::new(&mut buf, HEADROOM, f.len());
            dp.port_frame(&mut cx, 1, &Offload::PLAIN, frame);
        }
        buf[..reply.len()].copy_from_slice(&reply);
        dp.tunnel_datagram(&mut cx, from, Frame::new(&mut buf, 0, reply.len()));
        dp.flush(&mut cx);
    };
    round(&mut dp, &mut sink, 0);
    let before = allocations();
    for i in 1..=200 {
        round(&mut dp, &mut sink, i);
    }
    let allocations = allocations() - before;
    assert_eq!(
        allocations, 0,
        "translating allocated {allocations} times in 200 rounds"
    );
    // And the rounds did the work: to the peer, and the replies to the pod.
    assert_eq!(sink.datagrams, 201 * 2);
    assert_eq!(sink.to_ports, 201);
    for t in &snapshots {
        assert_eq!(t.ports[1].counters.snapshot().drops.iter().sum::<u64>(), 0);
    }
}

#[test]
fn no_allocation_per_packet_vxlan() {
    run(TunnelMode::Vxlan);
}

#[test]
fn no_allocation_per_packet_sleeve() {
    run(TunnelMode::Sleeve);
}

#[test]
fn no_allocation_per_datagram_in_tunnel_io() {
    in_new_netns(|| {
        let local = Ipv4Addr::LOCALHOST;
        let socket = |port| {
            let s = std::net::UdpSocket::bind((local, port)).expect("socket");
            s.set_nonblocking(true).expect("nonblocking");
            s
        };
        let lanes = Arc::new(Lanes::bind(local, 4).expect("lanes"));
        let mut tx = Tunnel::new(socket(0), lanes.clone()).expect("sender");
        let rx_socket = socket(0);
        let Ok(SocketAddr::V4(dest)) = rx_socket.local_addr() else {
            panic!("bound to IPv4");
        };
        let rx = Tunnel::new(rx_socket, lanes).expect("receiver");
        let mut batch = RxBatch::default();
        let small = [7u8; 100];
        let run = vec![9u8; 20 * 1400 + 77];
        let mut received = 0u64;
        let (mut sent, mut lost) = (0u64, 0u64);
        let mut round = |tx: &mut Tunnel| {
            let mut account = |_: SocketAddrV4, o: weft_switch::io::udp::Outcome| {
                sent += o.sent;
                lost += o.lost;
            };
            for i in 0..12 {
                tx.push(dest, i % 3, &small[..50 + i], &mut account);
                tx.push(dest, 3, &small, &mut account);
            }
            tx.send_run(dest, 1, &run, 1400, &mut account);
            tx.flush(&mut account);
            assert_eq!(lost, 0);
            // 24 pushed and 21 in the run; bounded, in case some went missing.
            let mut got = 0;
            for _ in 0..10_000 {
                if got == 45 {
                    break;
                }
                if rx.recv(&mut batch).expect("recv") > 0 {
                    batch.for_each(|_, _, _, _| got += 1);
                }
            }
            assert_eq!(got, 45, "datagrams received of one round");
            received += got;
        };
        round(&mut tx);
        let before = allocations();
        for _ in 0..100 {
            round(&mut tx);
        }
        let allocations = allocations() - before;
        assert_eq!(
            allocations, 0,
            "tunnel I/O allocated {allocations} times in 100 rounds"
        );
        assert_eq!(received, 101 * 45);
        assert_eq!(sent, 101 * 45, "every datagram sent is accounted for");
        Ok::<(), NetlinkError>(())
    })
    .expect("a private network namespace");
}

/// What the seal stage sends, copied into a buffer allocated once.
struct Captured {
    buf: Vec<u8>,
    len: usize,
    sends: u64,
}

impl weft_switch::crypto::stage::Tunnel for &mut Captured {
    fn send(&mut self, _: &PeerEntry, _: usize, datagram: &[u8]) {
        self.buf[..datagram.len()].copy_from_slice(datagram);
        self.len = datagram.len();
        self.sends += 1;
    }
    fn send_run(&mut self, _: &PeerEntry, _: usize, _: &[u8], _: usize) {
        panic!("no runs here");
    }
    fn send_to(&mut self, _: SocketAddrV4, _: &[u8]) {
        panic!("no handshake once the sessions are up");
    }
}

/// The sealed path allocates nothing either: once two nodes' sessions are up, the
/// seal stage seals a datagram on one (a session looked up once per batch) and
/// opens it on the other, batch after batch.
#[test]
fn no_allocation_per_datagram_sealed() {
    use weft_switch::control::config::Encryption;
    use weft_switch::crypto::stage::{SealCache, Stage};
    use weft_switch::sim::{self, Sim};

    let (pod_a, pod_b) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 2, 5));
    let mut sim = Sim::encrypted(&[&[pod_a], &[pod_b]], Encryption::Required);
    let (a, b) = (sim.pod(pod_a), sim.pod(pod_b));
    for (p, to) in [(a, pod_b), (b, pod_a)] {
        let packet = sim::Ip::udp(sim.pods[p].ip, to).packet(&sim::udp(1, 2, 10));
        let frame = sim::from_pod(&sim, p, &packet);
        sim.pod_frame(p, &frame);
        sim.flush();
    }
    sim.run_for(std::time::Duration::from_secs(1));
    assert_eq!(sim.take_rx(b).len() + sim.take_rx(a).len(), 2);

    let now = sim.time();
    let (tx_node, rx_node) = (&sim.nodes[0], &sim.nodes[1]);
    let (tx_sealer, rx_sealer) = (sim.sealer(0), sim.sealer(1));
    let peer = &tx_node.tables.peers[0];
    let from = SocketAddrV4::new(*sim::underlay(0).ip(), sim::LANE_PORT_BASE);
    let mut plain = vec![0u8; 2048];
    let mut w = sleeve::FramesWriter::new(&mut plain, sleeve::NodeId(sim::router_mac(0).0), 0)
        .expect("room");
    assert!(w.try_push(0x0800, &[0x45; 1000]));
    let len = w.finish();
    let plain = &plain[..len];
    let (mut tx_cache, mut rx_cache) = (SealCache::for_worker(0), SealCache::for_worker(0));
    let mut wire = Captured {
        buf: vec![0; 2048],
        len: 0,
        sends: 0,
    };
    let mut rx = vec![0u8; 2048];
    let mut batch = |wire: &mut Captured, rx: &mut Vec<u8>| {
        for _ in 0..8 {
            Stage {
                sealer: tx_sealer,
                cache: &mut tx_cache,
                tables: &tx_node.tables,
                now,
                tunnel: &mut *wire,
            }
            .to_peer(peer, 0, plain);
            let n = wire.len;
            rx[..n].copy_from_slice(&wire.buf[..n]);
            let opened = Stage {
                sealer: rx_sealer,
                cache: &mut rx_cache,
                tables: &rx_node.tables,
                now,
                tunnel: &mut *wire,
            }
            .from_peer(from, rx, 0..n)
            .expect("a datagram for the core");
            assert_eq!(&rx[opened], plain);
        }
        tx_cache.new_batch();
        rx_cache.new_batch();
    };
    for _ in 0..4 {
        batch(&mut wire, &mut rx);
    }
    let before = allocations();
    for _ in 0..250 {
        batch(&mut wire, &mut rx);
    }
    let allocated = allocations() - before;
    assert_eq!(wire.sends, 8 * 254);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations for 2000 sealed datagrams"
    );
}
