//! The per-packet cost of ClusterIP Services in the switch (`services = "switch"`):
//! a pod's packets to a ClusterIP, translated to an endpoint on another node and
//! encapsulated, against the same packets sent to the endpoint's address on a node
//! that translates nothing; and the translation with 10 and with 10,000 Service
//! ports, the flows spread over all of them (it should not depend on how many there
//! are). Each packet belongs to one of 4,096 established flows, as a busy node's
//! traffic does. And the cost of a new connection's first packet (a Maglev choice and
//! two translation entries written) into a worker's table that is full, as it is on a
//! node that opens thousands of connections a second: each new entry takes the place
//! of one not assured. Run with `cargo bench -p weft-benches --bench services`;
//! besides criterion's report it prints the ratio of each to plain, measured in the
//! same run.

#![warn(clippy::too_many_lines)]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_benches::{new_core, pod_ip, router_mac, tables, udp_frame, CountingSink};
use weft_switch::core::conntrack::{Conntrack, Overflow};
use weft_switch::core::service::Nat;
use weft_switch::core::{Core, Ctx, Frame, Time, HEADROOM};
use weft_switch::io::port::Offload;
use weft_switch::mac::MacAddr;
use weft_switch::services::{Endpoint, Frontend, Protocol, Readiness, ServicePort, ServiceTable};
use weft_switch::tables::services::Services;
use weft_switch::tables::{Tables, TunnelMode};

/// Established flows the packets belong to.
const FLOWS: usize = 4_096;
/// Frames per batch (a worker flushes at a batch's end).
const BATCH: usize = 8;
/// Translation entries a worker holds at most (two a flow).
const TABLE: usize = 16_384;
/// Distinct flows the new-connection case goes through in turn: six times what
/// the table holds, so that almost every flow has lost its entries to newer ones
/// when it comes round again.
const NEW_FLOWS: usize = 50_000;

/// The `i`th Service port: 10.96.0.0/12 from its start, UDP port 53, three ready
/// endpoints on node 1.
fn port(i: usize) -> ServicePort {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32);
    ServicePort {
        frontend: Frontend {
            ip,
            port: 53,
            protocol: Protocol::Udp,
        },
        name: Arc::from(format!("bench/svc-{i}:dns")),
        endpoints: (0..3)
            .map(|e| Endpoint {
                ip: pod_ip(1, e),
                port: 5353,
                readiness: Readiness::Ready,
                local: false,
            })
            .collect(),
        affinity: None,
        internal_local: false,
    }
}

/// Node 0's tables with `ports` Service ports.
fn with_services(ports: usize) -> Tables {
    let cidr = "10.96.0.0/12".parse().expect("a CIDR");
    let table = ServiceTable {
        cidr: Some(cidr),
        ports: (0..ports).map(port).collect(),
    };
    let services =
        Services::compile(Arc::new(table), cidr, 0x5eed, 1, None).expect("the table compiles");
    let mut t = tables(TunnelMode::Vxlan, 0, 2, 2);
    t.services = Some(Arc::new(services));
    t
}

/// A core that translates Services, with room for every flow.
fn translating_core() -> Core {
    let mut core = new_core();
    let tables = Conntrack::value_tables(1, TABLE, Overflow::Fair { share: TABLE });
    core.set_services(Nat::new(Conntrack::new(tables, 0)));
    core
}

/// Pod 0 of node 0's frames of `n` flows to `dst(flow)`, port 53, from source
/// ports 10,000 up.
fn frames(n: usize, dst: impl Fn(usize) -> Ipv4Addr) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut f = udp_frame(
                MacAddr::for_ip(pod_ip(0, 0)),
                router_mac(0),
                pod_ip(0, 0),
                dst(i),
                64,
            );
            let sport = 10_000 + i as u16;
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f[36..38].copy_from_slice(&53u16.to_be_bytes());
            f
        })
        .collect()
}

/// A worker going through `frames`, a batch at a time.
struct Run {
    core: Core,
    tables: Tables,
    frames: Vec<Vec<u8>>,
    buf: Vec<u8>,
    sink: CountingSink,
    next: usize,
}

impl Run {
    /// A run whose [`FLOWS`] first frames have been sent once.
    fn new(core: Core, tables: Tables, frames: Vec<Vec<u8>>) -> Run {
        let mut run = Run {
            core,
            tables,
            frames,
            buf: vec![0u8; HEADROOM + 128],
            sink: CountingSink::default(),
            next: 0,
        };
        // Every flow established before anything is measured.
        for _ in 0..FLOWS / BATCH {
            run.batch();
        }
        assert_eq!(
            run.sink.datagrams, FLOWS as u64,
            "every frame reaches node 1"
        );
        run
    }

    /// Sends the next [`BATCH`] frames and ends the batch.
    fn batch(&mut self) {
        let mut cx = Ctx::new(&self.tables, Time::ZERO, &mut self.sink);
        for _ in 0..BATCH {
            let f = &self.frames[self.next];
            self.next = (self.next + 1) % self.frames.len();
            self.buf[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
            let frame = Frame::new(&mut self.buf, HEADROOM, f.len());
            self.core.port_frame(&mut cx, 1, &Offload::PLAIN, frame);
        }
        self.core.flush(&mut cx);
    }

    /// How long `n` batches take.
    fn time(&mut self, n: usize) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            self.batch();
        }
        black_box(&self.sink);
        start.elapsed()
    }
}

/// A run of new connections to `ports` Service ports, almost every frame the first
/// of its flow (see [`NEW_FLOWS`]), into a translation table already full of
/// connections not assured.
fn new_connections(ports: usize) -> Run {
    let vip = |i: usize| port(i % ports).frontend.ip;
    let mut run = Run::new(
        translating_core(),
        with_services(ports),
        frames(NEW_FLOWS, vip),
    );
    run.time(NEW_FLOWS / BATCH);
    assert_eq!(
        run.core.service_entries(),
        TABLE as u64,
        "the translation table is full before anything is measured"
    );
    run
}

fn services(c: &mut Criterion) {
    let mut runs = vec![(
        "plain",
        Run::new(
            new_core(),
            tables(TunnelMode::Vxlan, 0, 2, 2),
            frames(FLOWS, |i| pod_ip(1, (i % 3) as u8)),
        ),
    )];
    for ports in [10, 10_000] {
        let vip = |i: usize| port(i % ports).frontend.ip;
        let run = Run::new(translating_core(), with_services(ports), frames(FLOWS, vip));
        runs.push((
            if ports == 10 {
                "translated_10_ports"
            } else {
                "translated_10000_ports"
            },
            run,
        ));
    }
    runs.push(("new_connections_10_ports", new_connections(10)));
    // The ratios, from one run, interleaved so that the machine's state is shared.
    let mut totals = vec![Duration::ZERO; runs.len()];
    for _ in 0..20 {
        for (i, (_, run)) in runs.iter_mut().enumerate() {
            totals[i] += run.time(FLOWS / BATCH);
        }
    }
    let base = totals[0].as_secs_f64();
    for (i, (name, _)) in runs.iter().enumerate() {
        let per = totals[i].as_secs_f64() * 1e9 / (20 * FLOWS) as f64;
        eprintln!(
            "services/{name}: {per:.0} ns a packet, {:.2}x plain",
            totals[i].as_secs_f64() / base
        );
    }
    let mut g = c.benchmark_group("services");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, run) in &mut runs {
        g.bench_function(BenchmarkId::from_parameter(*name), |b| {
            b.iter(|| run.batch())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = services
}
criterion_main!(benches);
