//! Micro-benchmarks of weft's hot paths: tunnel encapsulation and decapsulation, the
//! internet checksum, route lookup, the ring handoff between worker threads, ARP
//! replies, connection tracking, and a frame's whole way through the datapath. Run with `cargo bench -p weft-benches`.

// Not `cfg_attr(not(test), ...)` as in the libraries: `cargo clippy --all-targets`
// checks a bench with cfg(test) set.
#![warn(clippy::too_many_lines)]

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam::queue::ArrayQueue;
use ipnet::Ipv4Net;
use weft_benches::{
    arp_request, gateway, many_policies, new_core, pod_ip, router_mac, tables, udp_frame, underlay,
    CountingSink, ETH_HLEN, POD_MTU,
};
use weft_encap::sleeve::{self, NodeId};
use weft_encap::vxlan::{self, Vni};
use weft_switch::core::conntrack::{Addr, Conntrack, Flags, FlowKey, Overflow};
use weft_switch::core::host::HostTables;
use weft_switch::core::{Ctx, Frame, Report, Sink, Time, HEADROOM};
use weft_switch::io::port::Offload;
use weft_switch::mac::MacAddr;
use weft_switch::tables::fib::{Fib, NextHop};
use weft_switch::tables::{PeerEntry, PortEntry, TunnelMode};

/// A full-size frame at the pod MTU: the common case on a busy link.
fn full_frame() -> Vec<u8> {
    udp_frame(
        MacAddr::for_ip(pod_ip(0, 0)),
        router_mac(0),
        pod_ip(0, 0),
        pod_ip(1, 0),
        POD_MTU as usize,
    )
}

fn encap(c: &mut Criterion) {
    let mut g = c.benchmark_group("encap");
    let frame = full_frame();
    g.throughput(Throughput::Bytes(frame.len() as u64));
    let vni = Vni::new(1).expect("VNI 1");

    // VXLAN: the header is written into the headroom in front of the frame, in place.
    let mut buf = vec![0u8; HEADROOM + frame.len()];
    buf[HEADROOM..].copy_from_slice(&frame);
    let start = HEADROOM - vxlan::HEADER_LEN;
    g.bench_function("vxlan/encap", |b| {
        b.iter(|| {
            vxlan::emit_header(black_box(&mut buf[start..HEADROOM]), vni);
            black_box(&buf[start..]);
        })
    });
    let datagram = buf[start..].to_vec();
    g.bench_function("vxlan/decap", |b| {
        b.iter(|| {
            let (repr, inner) = vxlan::parse(black_box(&datagram)).expect("a valid datagram");
            black_box((repr, inner.len()))
        })
    });

    // Sleeve: a header naming the sender, then the frame as a record (copied).
    let sender = NodeId(router_mac(0).0);
    let payload = &frame[ETH_HLEN..];
    let mut out = vec![0u8; usize::from(u16::MAX)];
    g.bench_function("sleeve/encap", |b| {
        b.iter(|| {
            sleeve::emit_header(
                &mut out,
                sleeve::Kind::Frames,
                sender,
                sleeve::FEATURE_CHUNKS,
            );
            let n = sleeve::emit_record(&mut out[sleeve::HEADER_LEN..], 0x0800, black_box(payload));
            black_box(sleeve::HEADER_LEN + n)
        })
    });
    let len = sleeve::HEADER_LEN + sleeve::record_len(payload.len());
    let datagram = out[..len].to_vec();
    g.bench_function("sleeve/decap", |b| {
        b.iter(
            || match sleeve::parse(black_box(&datagram)).expect("a valid datagram") {
                sleeve::Datagram::Frames { frames, .. } => {
                    black_box(frames.map(|f| f.payload.len()).sum::<usize>())
                }
                other => panic!("parsed {other:?}"),
            },
        )
    });
    g.finish();
}

/// A deterministic xorshift stream, for addresses.
fn xorshift(state: &mut u32) -> u32 {
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    *state
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("fib_lookup");
    g.throughput(Throughput::Elements(1));
    for n in [10usize, 1_000, 10_000] {
        // A node's kinds of route: default, cluster, then half peer subnets (/24) and
        // half pod addresses (/32), spread over 10.0.0.0/8.
        let mut routes = vec![
            (
                "0.0.0.0/0".parse::<Ipv4Net>().expect("a CIDR"),
                NextHop::Host,
            ),
            ("10.0.0.0/8".parse().expect("a CIDR"), NextHop::Unreachable),
        ];
        let mut seed = 0x9e37_79b9;
        let mut hosts = Vec::new();
        while routes.len() < n {
            let a = 0x0a00_0000 | (xorshift(&mut seed) & 0x00ff_ffff);
            if routes.len() % 2 == 0 {
                let net = Ipv4Net::new(a.into(), 24).expect("a /24").trunc();
                routes.push((net, NextHop::Peer(routes.len())));
            } else {
                hosts.push(a);
                routes.push((
                    Ipv4Net::new(a.into(), 32).expect("a /32"),
                    NextHop::Local(routes.len()),
                ));
            }
        }
        let fib = Fib::new(routes.iter().copied());
        // Destinations: mostly known pods, some addresses only a subnet or the default covers.
        let dsts: Vec<std::net::Ipv4Addr> = (0..4096u32)
            .map(|i| match (i % 8, hosts.is_empty()) {
                (0..=5, false) => hosts[(xorshift(&mut seed) as usize) % hosts.len()].into(),
                _ => xorshift(&mut seed).into(),
            })
            .collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &fib, |b, fib| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(fib.lookup(black_box(dsts[i])))
            })
        });
    }
    g.finish();
}

// The worker's ring length and pooled buffer size.
use weft_switch::io::worker::{HANDOFF_LEN, RING_LEN};

/// A frame handed from one thread to another, as the worker's `Handoff`.
struct Handoff {
    len: usize,
    buf: Box<[u8]>,
}

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_handoff");
    g.throughput(Throughput::Elements(1));
    let frame = full_frame();
    // As the worker does it: take a pooled buffer, copy the frame in, push it to the
    // other thread's bounded ring; the other thread pops it and returns the buffer to
    // the pool. Both sides spin when the ring is full or empty (the worker batches
    // and wakes with an eventfd instead; this measures the ring and pool alone).
    g.bench_function("same_thread", |b| {
        // The ring's and pool's own cost, without a cache line changing cores.
        let pool = ArrayQueue::<Box<[u8]>>::new(RING_LEN);
        for _ in 0..pool.capacity() {
            let _ = pool.push(vec![0u8; HANDOFF_LEN].into_boxed_slice());
        }
        let inbox = ArrayQueue::<Handoff>::new(RING_LEN);
        b.iter(|| {
            let mut buf = pool.pop().expect("a pooled buffer");
            buf[..frame.len()].copy_from_slice(&frame);
            let _ = inbox.push(Handoff {
                len: frame.len(),
                buf,
            });
            let h = inbox.pop().expect("the frame just pushed");
            black_box(h.buf[h.len - 1]);
            let _ = pool.push(h.buf);
        })
    });
    g.bench_function("between_threads", |b| {
        let pool = ArrayQueue::<Box<[u8]>>::new(RING_LEN * 2);
        for _ in 0..pool.capacity() {
            let _ = pool.push(vec![0u8; HANDOFF_LEN].into_boxed_slice());
        }
        let inbox = ArrayQueue::<Handoff>::new(RING_LEN);
        b.iter_custom(|iters| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    for _ in 0..iters {
                        let mut buf = loop {
                            match pool.pop() {
                                Some(buf) => break buf,
                                None => std::hint::spin_loop(),
                            }
                        };
                        buf[..frame.len()].copy_from_slice(&frame);
                        let mut h = Handoff {
                            len: frame.len(),
                            buf,
                        };
                        while let Err(back) = inbox.push(h) {
                            h = back;
                            std::hint::spin_loop();
                        }
                    }
                });
                let start = Instant::now();
                let mut bytes = 0usize;
                for _ in 0..iters {
                    let h = loop {
                        match inbox.pop() {
                            Some(h) => break h,
                            None => std::hint::spin_loop(),
                        }
                    };
                    bytes += usize::from(h.buf[h.len - 1]) + h.len;
                    let _ = pool.push(h.buf);
                }
                black_box(bytes);
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn arp(c: &mut Criterion) {
    let mut g = c.benchmark_group("arp");
    g.throughput(Throughput::Elements(1));
    let t = tables(TunnelMode::Vxlan, 0, 2, 2);
    let mut dp = new_core();
    let pod = pod_ip(0, 0);
    let request = arp_request(MacAddr::for_ip(pod), pod, gateway(0));
    let mut buf = vec![0u8; HEADROOM + 64];
    let mut sink = CountingSink::default();
    let mut answer = |buf: &mut [u8], sink: &mut CountingSink| {
        // The reply is written over the request, so each round starts from a copy.
        buf[HEADROOM..HEADROOM + request.len()].copy_from_slice(&request);
        let mut cx = Ctx::new(&t, Time::ZERO, sink);
        dp.port_frame(
            &mut cx,
            1,
            &Offload::PLAIN,
            Frame::new(buf, HEADROOM, request.len()),
        );
    };
    answer(&mut buf, &mut sink);
    assert_eq!(sink.frames, 1, "the switch answers ARP for the gateway");
    g.bench_function("reply_for_gateway", |b| {
        b.iter(|| answer(black_box(&mut buf), &mut sink))
    });
    g.finish();
}

/// A sink that keeps the last datagram sent to a peer.
#[derive(Debug, Default)]
struct LastDatagram(Vec<u8>);

impl Sink for LastDatagram {
    fn to_port(&mut self, _: &PortEntry, _: &Offload, _: &[u8]) {}

    fn to_peer(&mut self, _: &PeerEntry, _: usize, datagram: &[u8]) {
        self.0 = datagram.to_vec();
    }

    fn report(&mut self, _: Report) {}
}

/// Frames per batch in the datapath benchmarks (a worker flushes at a batch's end).
const BATCH: usize = 8;

/// Hands `dp` [`BATCH`] copies of `datagram` from `from`, as one receive batch, and
/// ends the batch.
fn receive_batch(
    dp: &mut weft_switch::core::Core,
    t: &weft_switch::tables::Tables,
    from: SocketAddr,
    datagram: &[u8],
    rx: &mut [u8],
    sink: &mut CountingSink,
) {
    let mut cx = Ctx::new(t, Time::ZERO, sink);
    for _ in 0..BATCH {
        rx[HEADROOM..].copy_from_slice(datagram);
        dp.tunnel_datagram(&mut cx, from, Frame::new(rx, HEADROOM, datagram.len()));
    }
    dp.flush(&mut cx);
}

/// Benchmarks `dp`, on node 1's tables `t`, taking batches of `datagram` from node
/// 0, which must reach the pod in `writes` writes.
fn bench_receive(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    (name, mode): (&str, TunnelMode),
    dp: &mut weft_switch::core::Core,
    t: &weft_switch::tables::Tables,
    datagram: &[u8],
    writes: u64,
) {
    let from = SocketAddr::V4(SocketAddrV4::new(*underlay(0).ip(), underlay(0).port()));
    let mut rx = vec![0u8; HEADROOM + datagram.len()];
    let mut sink = CountingSink::default();
    receive_batch(dp, t, from, datagram, &mut rx, &mut sink);
    assert_eq!(
        sink.frames, writes,
        "{name} {mode}: the datagrams reach the pod"
    );
    g.bench_function(BenchmarkId::new(name, mode), |b| {
        b.iter(|| receive_batch(dp, t, from, datagram, black_box(&mut rx), &mut sink))
    });
}

fn datapath(c: &mut Criterion) {
    let mut g = c.benchmark_group("datapath");
    let frame = full_frame();
    for mode in [TunnelMode::Vxlan, TunnelMode::Sleeve] {
        // Pod on node 0 to a pod on node 1: route lookup, TTL and MAC rewrite, encap.
        let t0 = tables(mode, 0, 2, 2);
        let mut buf = vec![0u8; HEADROOM + frame.len()];
        pod_to_peer(&mut g, mode, &t0, &frame, &mut buf);
        // The same frame arriving at node 1 from node 0: decap, lookup, deliver.
        let datagram = peer_datagram(mode, &t0, &frame, &mut buf);
        peer_to_pod(&mut g, mode, &datagram);
    }
    g.finish();
}

/// Benchmarks batches of `frame` from pod 0 of node 0 (tables `t0`) to a pod on node
/// 1, read into `buf`: with no connection through the host, and with 20,000.
fn pod_to_peer(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    mode: TunnelMode,
    t0: &weft_switch::tables::Tables,
    frame: &[u8],
    buf: &mut [u8],
) {
    let mut dp = new_core();
    let mut sink = CountingSink::default();
    let mut send = |buf: &mut [u8], sink: &mut CountingSink| {
        let mut cx = Ctx::new(t0, Time::ZERO, sink);
        for _ in 0..BATCH {
            buf[HEADROOM..].copy_from_slice(frame);
            let f = Frame::new(&mut *buf, HEADROOM, frame.len());
            dp.port_frame(&mut cx, 1, &Offload::PLAIN, f);
        }
        dp.flush(&mut cx);
    };
    send(buf, &mut sink);
    assert!(sink.datagrams >= 1, "{mode}: frames reach the peer");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(BenchmarkId::new("pod_to_peer", mode), |b| {
        b.iter(|| send(black_box(&mut *buf), &mut sink))
    });

    // The same on a node that carries Services: each of two workers keeps
    // 10,000 connections the host handed back, whose replies it sends through
    // the host; every packet of the flow above looks them up and finds none.
    let host = HostTables::new(2, 16_384);
    for w in 0..2 {
        hand_back(t0, &host, w, 10_000);
    }
    assert!(host.stats().returning >= 20_000, "{:?}", host.stats());
    let mut busy = weft_switch::core::Core::new(weft_switch::core::Config {
        worker: 0,
        heartbeat: None,
        conntrack: None,
        conntrack6: None,
        host: host.worker(0),
        flows: Default::default(),
    });
    g.bench_function(BenchmarkId::new("pod_to_peer_20k_host_flows", mode), |b| {
        b.iter(|| {
            let mut cx = Ctx::new(t0, Time::ZERO, &mut sink);
            for _ in 0..BATCH {
                buf[HEADROOM..].copy_from_slice(frame);
                let f = Frame::new(&mut *buf, HEADROOM, frame.len());
                busy.port_frame(&mut cx, 1, &Offload::PLAIN, f);
            }
            busy.flush(&mut cx);
        })
    });
}

/// The datagram node 0 (tables `t0`) sends node 1 for `frame`, read into `buf`.
fn peer_datagram(
    mode: TunnelMode,
    t0: &weft_switch::tables::Tables,
    frame: &[u8],
    buf: &mut [u8],
) -> Vec<u8> {
    let mut last = LastDatagram::default();
    let mut dp0 = new_core();
    buf[HEADROOM..].copy_from_slice(frame);
    let mut cx = Ctx::new(t0, Time::ZERO, &mut last);
    let f = Frame::new(buf, HEADROOM, frame.len());
    dp0.port_frame(&mut cx, 1, &Offload::PLAIN, f);
    dp0.flush(&mut cx);
    let datagram = last.0;
    assert!(!datagram.is_empty(), "{mode}: a datagram to capture");
    datagram
}

/// Benchmarks batches of `datagram` from node 0 to a pod on node 1: one that takes
/// UDP super-frames, one that does not, and one selected by many policies.
fn peer_to_pod(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    mode: TunnelMode,
    datagram: &[u8],
) {
    // A batch of datagrams of one flow, as one receive hands them over: merged
    // into one UDP super-frame for a pod that takes them (USO), else one write each.
    g.throughput(Throughput::Elements(BATCH as u64));
    for (uso, name) in [(true, "peer_to_pod"), (false, "peer_to_pod_no_uso")] {
        let mut t1 = tables(mode, 1, 2, 2);
        t1.ports[1].uso = uso;
        let writes = if uso { 1 } else { BATCH as u64 };
        bench_receive(g, (name, mode), &mut new_core(), &t1, datagram, writes);
    }

    // The same, to a pod selected by 100 policies of 1,000 rules: the first
    // datagram is judged against them all, every later one meets the connection
    // table.
    let mut t1p = tables(mode, 1, 2, 2);
    t1p.ports[1].policy = Some(std::sync::Arc::new(many_policies(pod_ip(1, 0), 100, 10)));
    let mut dp1p = weft_switch::core::Core::new(weft_switch::core::Config {
        worker: 0,
        heartbeat: None,
        conntrack: Some(Conntrack::new(Conntrack::tables(1, 1024, fair(1024)), 0)),
        conntrack6: None,
        host: HostTables::new(1, 1024).worker(0),
        flows: Default::default(),
    });
    let id = ("peer_to_pod_1000_rules", mode);
    bench_receive(g, id, &mut dp1p, &t1p, datagram, 1);
}

/// Makes worker `w`'s core hand `n` UDP flows of pod 0 to the host (to a ClusterIP)
/// and the host hand each back to a pod of node 1, as kube-proxy's DNAT does: `n`
/// connections returning through the host.
fn hand_back(t: &weft_switch::tables::Tables, host: &HostTables, w: usize, n: u16) {
    let mut core = weft_switch::core::Core::new(weft_switch::core::Config {
        worker: w,
        heartbeat: None,
        conntrack: None,
        conntrack6: None,
        host: host.worker(w),
        flows: Default::default(),
    });
    let mut sink = CountingSink::default();
    let mut cx = Ctx::new(t, Time::ZERO, &mut sink);
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let mut buf = vec![0u8; HEADROOM + 128];
    for i in 0..n {
        // The UDP checksum is 0 (none), so the ports may change alone.
        let sport = (10_000 + usize::from(i) + w * usize::from(n)) as u16;
        let pod = MacAddr::for_ip(pod_ip(0, 0));
        let out = udp_frame(pod, router_mac(0), pod_ip(0, 0), vip, 64);
        let back = udp_frame(router_mac(0), router_mac(0), pod_ip(0, 0), pod_ip(1, 0), 64);
        for (port, mut f) in [(1, out), (0, back)] {
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            buf[HEADROOM..HEADROOM + f.len()].copy_from_slice(&f);
            let frame = Frame::new(&mut buf, HEADROOM, f.len());
            core.port_frame(&mut cx, port, &Offload::PLAIN, frame);
        }
    }
}

/// How NetworkPolicy's tables of `max` connections make room, as weftd makes them by
/// default: a source address may hold half of one.
fn fair(max: usize) -> Overflow {
    Overflow::Fair { share: max / 2 }
}

/// Connections a worker's table holds in the connection-tracking benchmarks: the
/// default `conntrack-max`, three quarters full.
const TRACKED: u32 = 12_288;

/// The `i`th of the benchmarks' TCP connections: from 256 clients to 64 servers,
/// on many ports.
fn connection(i: u32) -> FlowKey {
    FlowKey {
        src: 0x0af4_0100 | (i & 0xff),
        dst: 0x0af4_0200 | (i >> 8 & 0x3f),
        sport: 10_000 + (i >> 14) as u16,
        dport: 80,
        proto: 6,
        icmp: 0,
    }
}

/// [`connection`] `i` over IPv6: the same hosts, in `fd00:10:244::/48`.
fn connection6(i: u32) -> FlowKey<u128> {
    let v4 = connection(i);
    let six = |a: u32| 0xfd00_0010_0244_u128 << 80 | u128::from(a);
    FlowKey {
        src: six(v4.src),
        dst: six(v4.dst),
        sport: v4.sport,
        dport: v4.dport,
        proto: v4.proto,
        icmp: 0,
    }
}

/// Connection tracking alone, in one worker's table of the default size holding
/// [`TRACKED`] connections: finding one (either way), missing, and recording a new
/// one (forgotten again, so the table stays as full); in the IPv4 table and in the
/// IPv6 one, in the same run.
fn conntrack(c: &mut Criterion) {
    let mut g = c.benchmark_group("conntrack");
    g.throughput(Throughput::Elements(1));
    conntrack_family(&mut g, "v4", connection);
    conntrack_family(&mut g, "v6", connection6);
    g.finish();
}

fn conntrack_family<A: Addr>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    family: &str,
    connection: fn(u32) -> FlowKey<A>,
) {
    let ct: Conntrack<A> = Conntrack::new(Conntrack::tables(1, 16_384, fair(16_384)), 0);
    for i in 0..TRACKED {
        ct.track(connection(i), Flags::default(), 1, Time::ZERO)
            .expect("room for every connection");
    }
    let mut seed = 0x9e37_79b9;
    let hits: Vec<FlowKey<A>> = (0..4096)
        .map(|n| {
            let key = connection(xorshift(&mut seed) % TRACKED);
            if n % 2 == 0 {
                key
            } else {
                key.reverse()
            }
        })
        .collect();
    let misses: Vec<FlowKey<A>> = (0..4096)
        .map(|_| connection(TRACKED + xorshift(&mut seed) % TRACKED))
        .collect();
    for (name, keys) in [("lookup_hit", &hits), ("lookup_miss", &misses)] {
        g.bench_function(BenchmarkId::new(name, family), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(ct.lookup(black_box(keys[i]), Time::ZERO))
            })
        });
    }
    g.bench_function(BenchmarkId::new("insert", family), |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 4095;
            ct.track(black_box(misses[i]), Flags::default(), 1, Time::ZERO)
                .expect("room for a new connection");
            let slot = ct.lookup(misses[i], Time::ZERO).and_then(|f| f.own_slot);
            ct.forget(slot.expect("the connection just recorded"));
        })
    });
}

/// The internet checksum over a full segment and over a 64 KiB super-frame, against
/// the serial loop it replaced (16-bit sums carried through one 64-bit register), in
/// the same run.
fn checksum(c: &mut Criterion) {
    fn serial(data: &[u8]) -> u16 {
        let mut acc = 0u64;
        let mut chunks = data.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            let (sum, carry) = acc.overflowing_add(u64::from_be_bytes(word));
            acc = sum + u64::from(carry);
        }
        let mut word = [0; 8];
        word[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        let (sum, carry) = acc.overflowing_add(u64::from_be_bytes(word));
        weft_encap::checksum::fold(sum + u64::from(carry))
    }
    let mut g = c.benchmark_group("checksum");
    let data: Vec<u8> = (0..65_536u32).map(|i| (i * 31 + i / 7) as u8).collect();
    for len in [1448, 65_536] {
        let d = &data[..len];
        assert_eq!(serial(d), weft_encap::checksum::sum(d));
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("serial", len), |b| {
            b.iter(|| serial(black_box(d)))
        });
        g.bench_function(BenchmarkId::new("weft", len), |b| {
            b.iter(|| weft_encap::checksum::sum(black_box(d)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = encap, checksum, lookup, ring, arp, conntrack, datapath
}
criterion_main!(benches);
