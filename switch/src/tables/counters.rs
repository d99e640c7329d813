//! Per-port and per-peer traffic counters.
//!
//! Counters are allocated once, when a port or peer appears, with one cache-line
//! padded slot per worker. A worker only ever writes its own slot, so the hot path
//! does a relaxed load and store, never a contended read-modify-write; readers sum the
//! slots.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam::utils::CachePadded;

/// Defines [`DropReason`], its names and its list from one table, so that a reason
/// cannot be left out of the list, the counters or the CLI: each is written once.
macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)+) => {
        /// Why a frame was dropped.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[doc = $doc])* $variant,)+
        }

        impl DropReason {
            /// The number of reasons.
            pub const COUNT: usize = [$(stringify!($variant)),+].len();

            /// Every reason, in counter order.
            pub const ALL: [DropReason; Self::COUNT] = [$(DropReason::$variant,)+];

            /// The reason's name as the CLI and metrics show it.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)+
                }
            }
        }
    };
}

drop_reasons! {
    /// Too short or inconsistent to parse (Ethernet, ARP, IPv4).
    Malformed => "malformed",
    /// An IPv4 header whose checksum is wrong.
    BadChecksum => "bad_checksum",
    /// A tunnel datagram that is not valid VXLAN or sleeve.
    BadEncap => "bad_encap",
    /// A VXLAN datagram with another VNI.
    WrongVni => "wrong_vni",
    /// A tunnel datagram from an address that is not a configured peer.
    UnknownPeer => "unknown_peer",
    /// A sleeve datagram whose sender id does not match the peer it came from.
    WrongSender => "wrong_sender",
    /// A pod sent from an address that is not its own.
    Spoofed => "spoofed",
    /// An ethertype or IP feature the switch does not forward (IPv6 for now).
    Unsupported => "unsupported",
    /// Broadcast or multicast IPv4, which a routed network does not flood.
    Multicast => "multicast",
    /// No route to the destination (an ICMP unreachable was sent).
    NoRoute => "no_route",
    /// TTL ran out (an ICMP time exceeded was sent).
    TtlExceeded => "ttl_exceeded",
    /// Larger than the egress MTU (an ICMP fragmentation-needed was sent if DF was set).
    TooBig => "too_big",
    /// An ICMP error the switch would have sent about a frame from here, over the
    /// worker's limit (1,000 a second, in bursts of 50); the frame itself is counted
    /// under its own reason.
    IcmpLimited => "icmp_limited",
    /// Arrived from a tunnel but routes to another peer: the switch does not relay.
    NoRelay => "no_relay",
    /// Arrived from the host port and routes back to it: a direct peer whose host
    /// route is missing (the host sends its traffic here, by the cluster route).
    HostLoop => "host_loop",
    /// The egress port's queue was full.
    TxFull => "tx_full",
    /// The egress port or socket failed.
    TxError => "tx_error",
    /// A frame that had to change thread found the ring or buffer pool full.
    RingFull => "ring_full",
    /// An ARP packet the switch does not answer.
    ArpIgnored => "arp_ignored",
    /// An IPv6 Neighbour Discovery message the switch does not answer: a
    /// solicitation for an address on the asker's own side, duplicate address
    /// detection, a router solicitation (pods' routes are set by netlink).
    NdpIgnored => "ndp_ignored",
    /// A sleeve super-frame whose chunks did not all arrive, in order (the pod's
    /// transport retransmits it); counted once per frame given up.
    ChunkLost => "chunk_lost",
    /// A frame from a port being attached or detached, so not in the forwarding
    /// snapshot yet (or any more).
    Detached => "detached",
    /// A new connection to a pod that its ingress policy does not allow, or a packet
    /// of a connection a new policy no longer allows; counted on the pod.
    PolicyIngress => "policy_ingress",
    /// A new connection from a pod that its egress policy does not allow, likewise.
    PolicyEgress => "policy_egress",
    /// A new connection to or from a policy-isolated pod found the worker's
    /// connection table full; counted on the pod.
    ConntrackFull => "conntrack_full",
    /// A new connection whose source address (a pod, or what the host forwards)
    /// holds its share of the worker's connection table (`[policy]
    /// conntrack-share`); counted on the port it came from.
    ConntrackShare => "conntrack_share",
    /// With encryption required (`[encryption] mode = "required"`): a plaintext sleeve
    /// datagram from a peer.
    Plaintext => "plaintext",
    /// A sealed datagram that does not open: forged, replayed, too old, or for no
    /// live session.
    SealRefused => "seal_refused",
    /// A handshake message refused: bad MAC, bad Noise message, rate-limited, or
    /// replayed.
    HandshakeRefused => "handshake_refused",
    /// No session to send with: the handshake's queue was full, or the peer has no
    /// key while encryption is required.
    NoSession => "no_session",
    /// To a Service port with no usable endpoint (`services = "switch"`): refused
    /// at once with an ICMP port unreachable.
    ServiceRefused => "service_refused",
    /// To a Service port with `internalTrafficPolicy: Local` and no endpoint on
    /// this node: dropped, as Kubernetes specifies.
    ServiceNoLocal => "service_no_local",
    /// To an address of the Service CIDR that no Service port holds, or in a
    /// protocol no Service carries (an ICMP unreachable was sent).
    ServiceUnknown => "service_unknown",
    /// A fragment to a Service address: only a first fragment has the ports to
    /// translate it by.
    ServiceUntranslatable => "service_untranslatable",
}

// The list is in discriminant order, so a reason indexes its own counter.
const _: () = {
    let mut i = 0;
    while i < DropReason::COUNT {
        assert!(DropReason::ALL[i] as usize == i);
        i += 1;
    }
};

#[derive(Debug)]
struct Slot {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

// By hand: the standard library derives `Default` for arrays of 32 at most.
impl Default for Slot {
    fn default() -> Slot {
        Slot {
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Counters of one port, peer or tunnel, one slot per worker.
#[derive(Debug)]
pub struct Counters {
    slots: Box<[CachePadded<Slot>]>,
}

/// Adds `n` to a counter that only this thread writes.
#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl Counters {
    /// Counters for `workers` writers (at least one slot; the control plane writes slot 0
    /// only when no worker does, e.g. in tests).
    pub fn new(workers: usize) -> Counters {
        Counters {
            slots: (0..workers.max(1))
                .map(|_| CachePadded::new(Slot::default()))
                .collect(),
        }
    }

    #[inline]
    fn slot(&self, worker: usize) -> &Slot {
        // A worker index past the end can only come from a bug in wiring; fold it in
        // rather than panic on the hot path.
        &self.slots[worker % self.slots.len()]
    }

    /// Counts one received frame of `bytes` bytes.
    #[inline]
    pub fn rx(&self, worker: usize, bytes: usize) {
        let s = self.slot(worker);
        bump(&s.rx_packets, 1);
        bump(&s.rx_bytes, bytes as u64);
    }

    /// Counts one sent frame of `bytes` bytes.
    #[inline]
    pub fn tx(&self, worker: usize, bytes: usize) {
        let s = self.slot(worker);
        bump(&s.tx_packets, 1);
        bump(&s.tx_bytes, bytes as u64);
    }

    /// Counts `packets` sent frames of `bytes` bytes in all.
    #[inline]
    pub fn tx_many(&self, worker: usize, packets: u64, bytes: u64) {
        if packets > 0 {
            let s = self.slot(worker);
            bump(&s.tx_packets, packets);
            bump(&s.tx_bytes, bytes);
        }
    }

    /// Counts one dropped frame.
    #[inline]
    pub fn discard(&self, worker: usize, reason: DropReason) {
        bump(&self.slot(worker).drops[reason as usize], 1);
    }

    /// Counts `n` dropped frames.
    #[inline]
    pub fn discard_many(&self, worker: usize, reason: DropReason, n: u64) {
        if n > 0 {
            bump(&self.slot(worker).drops[reason as usize], n);
        }
    }

    /// Sums the slots.
    pub fn snapshot(&self) -> Snapshot {
        let mut out = Snapshot::default();
        for s in self.slots.iter() {
            out.rx_packets += s.rx_packets.load(Relaxed);
            out.rx_bytes += s.rx_bytes.load(Relaxed);
            out.tx_packets += s.tx_packets.load(Relaxed);
            out.tx_bytes += s.tx_bytes.load(Relaxed);
            for (total, d) in out.drops.iter_mut().zip(s.drops.iter()) {
                *total += d.load(Relaxed);
            }
        }
        out
    }
}

/// Summed counter values at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Drops, indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        Snapshot {
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            drops: [0; DropReason::COUNT],
        }
    }
}

impl Snapshot {
    /// The count of drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// The counters in the control protocol's form.
    pub fn to_proto(&self) -> weft_proto::Counters {
        weft_proto::Counters {
            rx_packets: self.rx_packets,
            rx_bytes: self.rx_bytes,
            tx_packets: self.tx_packets,
            tx_bytes: self.tx_bytes,
            drops: DropReason::ALL
                .iter()
                .filter(|r| self.dropped(**r) > 0)
                .map(|r| (r.name().to_owned(), self.dropped(*r)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_sum() {
        let c = Counters::new(3);
        c.rx(0, 100);
        c.rx(2, 50);
        c.tx(1, 7);
        c.discard(2, DropReason::NoRoute);
        c.discard(0, DropReason::NoRoute);
        let s = c.snapshot();
        assert_eq!(
            (s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes),
            (2, 150, 1, 7)
        );
        assert_eq!(s.dropped(DropReason::NoRoute), 2);
        assert_eq!(s.to_proto().drops, vec![("no_route".to_owned(), 2)]);
    }

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
