//! `/metrics`: weftd's counters in Prometheus's text format (prometheus-client
//! encodes them), served over HTTP (hyper) by the control plane.
//!
//! The datapath's counters are read where they are kept (relaxed atomics, one slot
//! per worker) at each scrape, by a collector: no worker ever touches a metric, and
//! a pod's series are gone from the next scrape once its port is. Only the control
//! plane's own measurements (the CNI requests' latency, when the store last sent a
//! view) are kept here, in [`Metrics`].
//!
//! Per peer, drops are summed into a few classes ([`DropClass`]), so that a node
//! with thousands of peers keeps a bounded number of series per peer.
//!
//! The endpoint ([`endpoint`]) is an input on the node's address, and bounded.
//!
//! Pods' series are labelled `pod_namespace` and `pod_name`, not `namespace` and
//! `pod`: Kubernetes service discovery gives every target those (weftd's own pod),
//! and Prometheus would rename weftd's to `exported_*`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::control::daemon::Daemon;
use crate::control::store::StoreHealth;
use crate::io::worker::BATCH_BOUNDS;
use crate::tables::counters::{DropReason, Snapshot};
use crate::tables::PortKind;

mod endpoint;
pub use endpoint::{bind, serve, Places, Refused};

/// The buckets of the CNI requests' latency, in seconds: 1 ms to ~16 s.
fn cni_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The labels of a CNI request's latency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CniLabels {
    /// add, del, check or gc.
    pub verb: &'static str,
    /// ok or error.
    pub result: &'static str,
}

/// What the control plane measures of itself.
#[derive(Debug)]
pub struct Metrics {
    cni: Family<CniLabels, Histogram, fn() -> Histogram>,
    /// When the store last sent a view.
    last_view: Mutex<Option<Instant>>,
}

impl Metrics {
    /// Nothing measured yet but, if `store_read`, a view read from the store now.
    pub fn new(store_read: bool) -> Metrics {
        Metrics {
            cni: Family::new_with_constructor(cni_buckets),
            last_view: Mutex::new(store_read.then(Instant::now)),
        }
    }

    /// Records a CNI request of `verb` that took `took`.
    pub fn cni_request(&self, verb: &'static str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        (self.cni.get_or_create(&CniLabels { verb, result })).observe(took.as_secs_f64());
    }

    /// Records that the store sent a view now.
    pub fn store_updated(&self) {
        *self.last_view.lock() = Some(Instant::now());
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(false)
    }
}

/// What a dropped frame says of the path it came by, for the per-peer series: a
/// few classes rather than every reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropClass {
    /// Not a frame or datagram weft can read.
    Malformed,
    /// Refused as an attack or a misconfiguration: an unknown or wrong sender, a
    /// spoofed source, plaintext or a bad seal where encryption is required.
    Refused,
    /// NetworkPolicy and its connection table.
    Policy,
    /// No way on: no route, TTL, too big, a loop, a detached port.
    Unroutable,
    /// Full queues and failed sends: load.
    Overload,
    /// A ClusterIP the switch would not translate.
    Service,
}

impl DropClass {
    /// Every class.
    pub const ALL: [DropClass; 6] = [
        DropClass::Malformed,
        DropClass::Refused,
        DropClass::Policy,
        DropClass::Unroutable,
        DropClass::Overload,
        DropClass::Service,
    ];

    /// The class's label value.
    pub const fn name(self) -> &'static str {
        match self {
            DropClass::Malformed => "malformed",
            DropClass::Refused => "refused",
            DropClass::Policy => "policy",
            DropClass::Unroutable => "unroutable",
            DropClass::Overload => "overload",
            DropClass::Service => "service",
        }
    }

    /// The class of `reason`.
    pub const fn of(reason: DropReason) -> DropClass {
        use DropReason as R;
        match reason {
            R::Malformed | R::BadChecksum | R::BadEncap | R::Unsupported | R::ChunkLost => {
                DropClass::Malformed
            }
            R::WrongVni
            | R::UnknownPeer
            | R::WrongSender
            | R::Spoofed
            | R::Plaintext
            | R::SealRefused
            | R::HandshakeRefused
            | R::ArpIgnored
            | R::NdpIgnored
            | R::Multicast => DropClass::Refused,
            R::PolicyIngress | R::PolicyEgress | R::ConntrackFull | R::ConntrackShare => {
                DropClass::Policy
            }
            R::NoRoute
            | R::TtlExceeded
            | R::TooBig
            | R::NoRelay
            | R::HostLoop
            | R::Detached
            | R::NoSession => DropClass::Unroutable,
            R::TxFull | R::TxError | R::RingFull | R::IcmpLimited => DropClass::Overload,
            R::ServiceRefused
            | R::ServiceNoLocal
            | R::ServiceUnknown
            | R::ServiceUntranslatable => DropClass::Service,
        }
    }
}

/// Drops summed per class, in [`DropClass::ALL`]'s order.
fn by_class(drops: &[u64; DropReason::COUNT]) -> [u64; DropClass::ALL.len()] {
    let mut out = [0; DropClass::ALL.len()];
    for (reason, n) in DropReason::ALL.iter().zip(drops) {
        let class = DropClass::of(*reason);
        out[DropClass::ALL.iter().position(|c| *c == class).unwrap_or(0)] += n;
    }
    out
}

type Labels = Vec<(&'static str, String)>;

/// The `peer` label of datagrams from addresses that are no peer's.
pub const UNKNOWN_SENDERS: &str = "(unknown senders)";

/// One metric family's series, gathered before it is written.
struct Series<T> {
    name: &'static str,
    help: &'static str,
    rows: Vec<(Labels, T)>,
}

impl<T> Series<T> {
    fn new(name: &'static str, help: &'static str) -> Series<T> {
        Series {
            name,
            help,
            rows: Vec::new(),
        }
    }

    fn push(&mut self, labels: Labels, value: T) {
        self.rows.push((labels, value));
    }
}

impl<T: EncodeCounterValue + Copy> Series<T> {
    fn counters(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut family =
            encoder.encode_descriptor(self.name, self.help, None, MetricType::Counter)?;
        for (labels, v) in &self.rows {
            ConstCounter::new(*v).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

impl Series<f64> {
    fn gauges(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut family =
            encoder.encode_descriptor(self.name, self.help, None, MetricType::Gauge)?;
        for (labels, v) in &self.rows {
            ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// The traffic counters of one kind of row (ports, or peers).
struct Traffic {
    rx_packets: Series<u64>,
    rx_bytes: Series<u64>,
    tx_packets: Series<u64>,
    tx_bytes: Series<u64>,
    drops: Series<u64>,
}

impl Traffic {
    fn new(names: [&'static str; 5], drops_help: &'static str) -> Traffic {
        Traffic {
            rx_packets: Series::new(names[0], "Frames received from it."),
            rx_bytes: Series::new(names[1], "Bytes received from it."),
            tx_packets: Series::new(names[2], "Frames sent to it."),
            tx_bytes: Series::new(names[3], "Bytes sent to it."),
            drops: Series::new(names[4], drops_help),
        }
    }

    fn push(&mut self, labels: &Labels, s: &Snapshot) {
        self.rx_packets.push(labels.clone(), s.rx_packets);
        self.rx_bytes.push(labels.clone(), s.rx_bytes);
        self.tx_packets.push(labels.clone(), s.tx_packets);
        self.tx_bytes.push(labels.clone(), s.tx_bytes);
    }

    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        for s in [
            &self.rx_packets,
            &self.rx_bytes,
            &self.tx_packets,
            &self.tx_bytes,
            &self.drops,
        ] {
            s.counters(encoder)?;
        }
        Ok(())
    }
}

/// The daemon's state as metrics, read at each scrape.
#[derive(Debug)]
struct Collected(Arc<Daemon>);

impl Collector for Collected {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let d = &self.0;
        node(d, &mut encoder)?;
        ports(d, &mut encoder)?;
        peers(d, &mut encoder)?;
        workers(d, &mut encoder)?;
        store(d, &mut encoder)
    }
}

/// A gauge with no labels.
fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: f64) -> std::fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// The node: build, readiness, pods and peers.
fn node(d: &Daemon, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    let mut info = Series::new("weft_build_info", "weftd's version; always 1.");
    info.push(
        vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("node_name", d.node.name.clone()),
            ("mode", d.settings.tunnel.mode.to_string()),
        ],
        1.0,
    );
    info.gauges(e)?;
    let status = d.status();
    gauge(
        e,
        "weft_ready",
        "Whether weftd serves ADD (1) or not (0).",
        f64::from(u8::from(status.ready)),
    )?;
    gauge(e, "weft_pods", "Pods attached.", status.pods as f64)?;
    gauge(
        e,
        "weft_peers",
        "Peer nodes configured.",
        status.peers as f64,
    )
}

/// Per port: the pods' and the host port's traffic and drops by reason.
fn ports(d: &Daemon, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    let tables = d.tables();
    let mut t = Traffic::new(
        [
            "weft_port_rx_packets",
            "weft_port_rx_bytes",
            "weft_port_tx_packets",
            "weft_port_tx_bytes",
            "weft_port_drops",
        ],
        "Frames from or to the port that were dropped, by reason.",
    );
    for p in tables.ports.iter() {
        let (kind, namespace, pod) = match (p.kind, &p.pod) {
            (PortKind::Host, _) => ("host", String::new(), String::new()),
            (PortKind::Pod, Some(r)) => ("pod", r.namespace.clone(), r.name.clone()),
            (PortKind::Pod, None) => ("pod", String::new(), String::new()),
        };
        let labels: Labels = vec![
            ("kind", kind.to_owned()),
            ("pod_namespace", namespace),
            ("pod_name", pod),
            ("container_id", p.container_id.clone().unwrap_or_default()),
            ("interface", p.name.clone()),
        ];
        let s = p.counters.snapshot();
        t.push(&labels, &s);
        for (reason, &n) in DropReason::ALL.iter().zip(&s.drops) {
            if n > 0 {
                let mut l = labels.clone();
                l.push(("reason", reason.name().to_owned()));
                t.drops.push(l, n);
            }
        }
    }
    t.encode(e)
}

/// Per peer: traffic, drops by class, health, and the encrypted session.
fn peers(d: &Daemon, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    let tables = d.tables();
    let mut t = Traffic::new(
        [
            "weft_peer_rx_packets",
            "weft_peer_rx_bytes",
            "weft_peer_tx_packets",
            "weft_peer_tx_bytes",
            "weft_peer_drops",
        ],
        "Datagrams from or to the peer that were dropped, by class of reason.",
    );
    let mut up = Series::new(
        "weft_peer_up",
        "Whether the peer answers heartbeats (1), not (0), or is not known yet (NaN).",
    );
    let mut rtt = Series::new(
        "weft_peer_heartbeat_rtt_seconds",
        "The last heartbeat's round trip to the peer.",
    );
    let mut sessions = Sessions::new();
    // The counters by entry (their drop arrays are per reason; the protocol's rows
    // list names only).
    let mut counters: HashMap<&str, Snapshot> = (tables.peers.iter())
        .map(|p| (p.name.as_str(), p.counters.snapshot()))
        .collect();
    for info in &d.peer_infos() {
        // The row with no health is the unknown senders'.
        let (labels, snap): (Labels, Snapshot) = match &info.health {
            None => (
                vec![("peer", UNKNOWN_SENDERS.into())],
                tables.tunnel.snapshot(),
            ),
            Some(_) => match counters.remove(info.name.as_str()) {
                Some(s) => (vec![("peer", info.name.clone())], s),
                None => continue,
            },
        };
        t.push(&labels, &snap);
        for (class, n) in DropClass::ALL.iter().zip(by_class(&snap.drops)) {
            let mut l = labels.clone();
            l.push(("class", class.name().to_owned()));
            t.drops.push(l, n);
        }
        if let Some(h) = &info.health {
            let v = match h.state.as_str() {
                "up" => 1.0,
                "down" => 0.0,
                _ => f64::NAN,
            };
            up.push(labels.clone(), v);
            if let Some(us) = h.rtt_us {
                rtt.push(labels.clone(), us as f64 / 1e6);
            }
        }
        if let Some(s) = &info.session {
            sessions.push(&labels, s);
        }
    }
    t.encode(e)?;
    up.gauges(e)?;
    rtt.gauges(e)?;
    sessions.encode(e)
}

/// The encrypted sessions' series, per peer.
struct Sessions {
    established: Series<f64>,
    key_age: Series<f64>,
    handshakes: Series<u64>,
    rekeys: Series<u64>,
    failures: Series<u64>,
    queue_drops: Series<u64>,
}

impl Sessions {
    fn new() -> Sessions {
        Sessions {
            established: Series::new(
                "weft_encryption_session_established",
                "Whether the peer's encrypted session is established (1) or not (0).",
            ),
            key_age: Series::new(
                "weft_encryption_key_age_seconds",
                "The age of the session that sends to the peer.",
            ),
            handshakes: Series::new(
                "weft_encryption_handshakes",
                "Handshakes completed with the peer.",
            ),
            rekeys: Series::new(
                "weft_encryption_rekeys",
                "Handshakes that replaced a live session with the peer.",
            ),
            failures: Series::new(
                "weft_encryption_handshake_failures",
                "Handshakes with the peer that failed or were given up.",
            ),
            queue_drops: Series::new(
                "weft_encryption_queue_drops",
                "Datagrams to the peer dropped waiting for a session.",
            ),
        }
    }

    fn push(&mut self, labels: &Labels, s: &weft_proto::PeerSession) {
        let established = f64::from(u8::from(s.state == "established"));
        self.established.push(labels.clone(), established);
        if let Some(age) = s.key_age_s {
            self.key_age.push(labels.clone(), age as f64);
        }
        self.handshakes.push(labels.clone(), s.handshakes);
        self.rekeys.push(labels.clone(), s.rekeys);
        self.failures.push(labels.clone(), s.handshake_failures);
        self.queue_drops.push(labels.clone(), s.queue_drops);
    }

    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        self.established.gauges(e)?;
        self.key_age.gauges(e)?;
        for s in [
            &self.handshakes,
            &self.rekeys,
            &self.failures,
            &self.queue_drops,
        ] {
            s.counters(e)?;
        }
        Ok(())
    }
}

/// Per worker: busy time, batch sizes, stalls, and the NetworkPolicy table.
fn workers(d: &Daemon, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    let stats = d.worker_stats();
    let stalled = d.stalled_workers();
    let mut busy = Series::new(
        "weft_worker_busy_seconds",
        "Time the worker spent serving batches; its rate is the worker's busy ratio.",
    );
    let mut batches = Series::new("weft_worker_batches", "Batches the worker served.");
    let mut frames = Series::new("weft_worker_frames", "Frames the worker read.");
    let mut stall = Series::new(
        "weft_worker_stalled",
        "Whether the worker has not gone round its loop for over 5 s.",
    );
    let mut entries = Series::new(
        "weft_conntrack_entries",
        "NetworkPolicy connections the worker's table holds.",
    );
    let mut evicted = Series::new(
        "weft_conntrack_evictions",
        "Connections that gave up their place in the worker's full table.",
    );
    let mut refused = Series::new(
        "weft_conntrack_share_refused",
        "New connections refused because their source held its share of the table.",
    );
    for (i, (l, live, overflow)) in stats.iter().enumerate() {
        let labels: Labels = vec![("worker", i.to_string())];
        busy.push(labels.clone(), l.busy.as_secs_f64());
        batches.push(labels.clone(), l.batches);
        frames.push(labels.clone(), l.frames);
        stall.push(labels.clone(), f64::from(u8::from(stalled.contains(&i))));
        entries.push(labels.clone(), *live as f64);
        evicted.push(labels.clone(), overflow.evicted);
        refused.push(labels, overflow.over_share);
    }
    busy.counters(e)?;
    batches.counters(e)?;
    frames.counters(e)?;
    stall.gauges(e)?;
    entries.gauges(e)?;
    evicted.counters(e)?;
    refused.counters(e)?;
    gauge(
        e,
        "weft_conntrack_max_entries",
        "The most connections a worker's table holds.",
        d.settings.policy.conntrack_max as f64,
    )?;
    let mut family = e.encode_descriptor(
        "weft_worker_batch_frames",
        "Frames read per batch.",
        None,
        MetricType::Histogram,
    )?;
    for (i, (l, _, _)) in stats.iter().enumerate() {
        // Per bucket, not cumulative: the encoder sums them.
        let bounds = (BATCH_BOUNDS.iter().map(|b| *b as f64)).chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(l.buckets).collect();
        let labels: Labels = vec![("worker", i.to_string())];
        family
            .encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                l.frames as f64,
                l.batches,
                &buckets,
                None,
            )?;
    }
    Ok(())
}

/// The cluster store: reachable or not, when it last sent a view, what it holds.
fn store(d: &Daemon, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    let kind = vec![("store", d.store.kind().to_owned())];
    let mut connected = Series::new(
        "weft_store_connected",
        "Whether the cluster store is reachable (1) or degraded (0).",
    );
    connected.push(
        kind.clone(),
        f64::from(u8::from(matches!(d.store.health(), StoreHealth::Ok))),
    );
    connected.gauges(e)?;
    if let Some(at) = *d.metrics.last_view.lock() {
        let mut age = Series::new(
            "weft_store_last_update_age_seconds",
            "Time since the cluster store last sent a view.",
        );
        age.push(kind.clone(), at.elapsed().as_secs_f64());
        age.gauges(e)?;
    }
    let mut objects = Series::new(
        "weft_store_objects",
        "Objects the store's view holds, by kind.",
    );
    for (what, n) in d.store.objects() {
        let mut l = kind.clone();
        l.push(("kind", what.to_owned()));
        objects.push(l, n as f64);
    }
    objects.gauges(e)
}

/// The registry a node's `/metrics` renders: the daemon's state, and what the
/// control plane measured.
pub fn registry(daemon: &Arc<Daemon>) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "weft_cni_request_duration_seconds",
        "How long CNI requests took to serve, by verb and result.",
        daemon.metrics.cni.clone(),
    );
    registry.register_collector(Box::new(Collected(daemon.clone())));
    registry
}

/// Renders `registry` in Prometheus's text format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason has a class, and the classes sum to the reasons' total.
    #[test]
    fn drops_sum_into_classes() {
        let mut drops = [0u64; DropReason::COUNT];
        for (i, d) in drops.iter_mut().enumerate() {
            *d = i as u64 + 1;
        }
        let classes = by_class(&drops);
        assert_eq!(classes.iter().sum::<u64>(), drops.iter().sum::<u64>());
        assert_eq!(
            classes[0],
            (DropReason::Malformed as u64)
                + 1
                + (DropReason::BadChecksum as u64)
                + 1
                + (DropReason::BadEncap as u64)
                + 1
                + (DropReason::Unsupported as u64)
                + 1
                + (DropReason::ChunkLost as u64)
                + 1
        );
        assert_eq!(DropClass::of(DropReason::PolicyIngress), DropClass::Policy);
        assert_eq!(DropClass::of(DropReason::UnknownPeer), DropClass::Refused);
    }
}
