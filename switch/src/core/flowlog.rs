//! The flow log: NetworkPolicy's verdicts on connections, as they are made, for
//! `weft flows` (as `hubble observe` shows Cilium's).
//!
//! Each worker pushes its verdicts into a bounded ring of its own, lock-free, the
//! newest pushing out the oldest; the control plane drains the rings when it is
//! asked for flows. Verdicts are recorded only while someone is listening (a
//! `weft flows` asked in the last [`LEASE`]) or always with `flow-log = true`:
//! otherwise the cost is one relaxed load per verdict, and a verdict is made once
//! per connection (and per denied packet), never per packet of a known one.
//!
//! A record holds no heap data of its own: the policy names it carries are the
//! compiled rules' shared strings, so recording never allocates.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::queue::ArrayQueue;

use super::conntrack::FlowKey;
use super::Time;
use crate::netpol::compile::Origin;

/// How many verdicts each worker's ring holds.
pub const RING_LEN: usize = 1024;

/// How long one request for flows keeps the log recording.
pub const LEASE: Duration = Duration::from_secs(10);

/// Which of a connection's checks decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The source pod's egress rules.
    Egress,
    /// The destination pod's ingress rules.
    Ingress,
}

/// What policy said of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A new connection, allowed: by these rules of the source's egress and the
    /// destination's ingress, where each end is isolated.
    Allowed {
        /// The egress rule that allowed it, if the source is isolated for egress.
        egress: Option<Origin>,
        /// The ingress rule, if the destination is isolated for ingress.
        ingress: Option<Origin>,
        /// It came from this node, which every pod's ingress admits.
        from_node: bool,
    },
    /// A packet refused: no rule of `direction` allows it. `isolated` is the
    /// port of the pod refused at and the policy generation then: the policies
    /// that isolate it are named from the tables when the log is read (a record
    /// holds no reference to compiled rules, so that none is freed on a worker).
    Denied {
        /// The check that refused it.
        direction: Direction,
        /// The isolated pod's port, and the policy generation, if it is local.
        isolated: Option<(u32, u32)>,
    },
}

/// A connection of either family, as its packet went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKey {
    /// An IPv4 connection.
    V4(FlowKey),
    /// An IPv6 connection.
    V6(FlowKey<u128>),
}

impl From<FlowKey> for RecordKey {
    fn from(k: FlowKey) -> RecordKey {
        RecordKey::V4(k)
    }
}

impl From<FlowKey<u128>> for RecordKey {
    fn from(k: FlowKey<u128>) -> RecordKey {
        RecordKey::V6(k)
    }
}

impl RecordKey {
    /// Source and destination addresses.
    pub fn addrs(&self) -> (std::net::IpAddr, std::net::IpAddr) {
        use std::net::{Ipv4Addr, Ipv6Addr};
        match self {
            RecordKey::V4(k) => (Ipv4Addr::from(k.src).into(), Ipv4Addr::from(k.dst).into()),
            RecordKey::V6(k) => (Ipv6Addr::from(k.src).into(), Ipv6Addr::from(k.dst).into()),
        }
    }

    /// Source port, destination port and protocol (ports as [`FlowKey`] holds them).
    pub fn ports(&self) -> (u16, u16, u8) {
        match self {
            RecordKey::V4(k) => (k.sport, k.dport, k.proto),
            RecordKey::V6(k) => (k.sport, k.dport, k.proto),
        }
    }
}

/// One verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    /// When, on the workers' clock.
    pub at: Time,
    /// The connection, as its packet went.
    pub key: RecordKey,
    /// The verdict.
    pub verdict: Verdict,
}

/// Every worker's ring, and whether to record.
#[derive(Debug)]
pub struct FlowLog {
    rings: Box<[ArrayQueue<FlowRecord>]>,
    /// Record while the workers' clock is before this, in nanoseconds
    /// (`u64::MAX`: always).
    until: AtomicU64,
}

impl FlowLog {
    /// Rings for `workers` workers; recording always if `always`.
    pub fn new(workers: usize, always: bool) -> Arc<FlowLog> {
        Arc::new(FlowLog {
            rings: (0..workers.max(1))
                .map(|_| ArrayQueue::new(RING_LEN))
                .collect(),
            until: AtomicU64::new(if always { u64::MAX } else { 0 }),
        })
    }

    /// Records for [`LEASE`] from `now` (or longer, if already asked to).
    pub fn listen(&self, now: Time) {
        let until = now.as_nanos().saturating_add(LEASE.as_nanos() as u64);
        self.until.fetch_max(until, Relaxed);
    }

    /// Whether a verdict made at `now` is recorded.
    #[inline]
    fn on(&self, now: Time) -> bool {
        now.as_nanos() < self.until.load(Relaxed)
    }

    /// Takes the recorded verdicts, oldest first: at most a ring's worth from
    /// each worker, whatever the workers push meanwhile.
    pub fn drain(&self) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        for ring in self.rings.iter() {
            out.extend(std::iter::from_fn(|| ring.pop()).take(RING_LEN));
        }
        out.sort_by_key(|r| r.at);
        out
    }

    /// A worker's handle.
    pub fn recorder(self: &Arc<FlowLog>, worker: usize) -> Recorder {
        Recorder {
            log: Some(self.clone()),
            worker: worker % self.rings.len(),
        }
    }
}

/// A worker's handle on the flow log; [`Recorder::default`] records nothing.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    log: Option<Arc<FlowLog>>,
    worker: usize,
}

impl Recorder {
    /// Records the verdict `verdict()` on `key` at `now`, if someone listens; the
    /// verdict is only made up then.
    #[inline]
    pub fn record(&self, now: Time, key: impl Into<RecordKey>, verdict: impl FnOnce() -> Verdict) {
        let Some(log) = &self.log else { return };
        if log.on(now) {
            let record = FlowRecord {
                at: now,
                key: key.into(),
                verdict: verdict(),
            };
            // The oldest gives way.
            let _ = log.rings[self.worker].force_push(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u16) -> FlowKey {
        FlowKey {
            src: 1,
            dst: 2,
            sport: n,
            dport: 80,
            proto: 6,
            icmp: 0,
        }
    }

    fn allowed() -> Verdict {
        Verdict::Allowed {
            egress: None,
            ingress: None,
            from_node: false,
        }
    }

    /// Nothing is recorded until someone listens, and nothing after the lease.
    #[test]
    fn records_only_while_listened_to() {
        let log = FlowLog::new(2, false);
        let r = log.recorder(1);
        let t = Time::from_nanos(1_000);
        r.record(t, key(1), allowed);
        assert!(log.drain().is_empty());
        log.listen(t);
        r.record(t, key(2), allowed);
        let past = Time::from_nanos(t.as_nanos() + LEASE.as_nanos() as u64);
        r.record(past, key(3), allowed);
        let got = log.drain();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key, key(2).into());
        assert!(log.drain().is_empty(), "drained");
        Recorder::default().record(t, key(4), || unreachable!("no log"));
    }

    /// With `flow-log = true` it always records; a full ring keeps the newest.
    #[test]
    fn always_on_keeps_the_newest() {
        let log = FlowLog::new(1, true);
        let r = log.recorder(0);
        for n in 0..(RING_LEN + 10) as u16 {
            r.record(Time::from_nanos(u64::from(n)), key(n), allowed);
        }
        let got = log.drain();
        assert_eq!(got.len(), RING_LEN);
        assert_eq!(got[0].key, key(10).into());
        assert_eq!(
            got.last().map(|r| r.key),
            Some(key(RING_LEN as u16 + 9).into())
        );
    }
}
