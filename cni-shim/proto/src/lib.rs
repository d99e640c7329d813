//! The control protocol between `weftd` and its clients (`weft-cni`, the `weft` CLI).
//!
//! One JSON request and one JSON response per connection on a Unix stream socket.
//! The client writes the request and shuts down its write half; the daemon answers
//! and closes. Every message carries [`PROTOCOL_VERSION`]; the daemon refuses a
//! version it does not speak with [`ErrorKind::BadVersion`].

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The default path of the daemon's control socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/weft.sock";

/// Largest request or response accepted on the socket, in bytes.
pub const MAX_MESSAGE: usize = 4 << 20;

/// A request as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// Protocol version of the sender.
    pub version: u32,
    /// What is asked.
    #[serde(flatten)]
    pub request: Request,
}

/// What a client asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Request {
    /// Create the pod's interface in its netns, give it an address, program the switch.
    Attach(AttachRequest),
    /// Undo an attach. Succeeds when parts (or all) of it are already gone.
    Detach(DetachRequest),
    /// Verify that an attachment's interface, address and routes are in place.
    Check(CheckRequest),
    /// Release every attachment (and address) not in the given list.
    Gc(GcRequest),
    /// Daemon health and identity.
    Status,
    /// Attached ports with their counters.
    Ports,
    /// Configured peer nodes with their counters.
    Peers,
    /// The forwarding table.
    Routes,
    /// The loaded NetworkPolicies, and any error reading them.
    PolicyStatus,
    /// Which policies select a pod, in which direction.
    PolicyPod(PodRef),
    /// Whether a connection would be allowed, and by which policy and rule.
    PolicyExplain(ExplainRequest),
    /// The ClusterIP Services the switch translates, their endpoints, and what
    /// was refused.
    Services,
    /// NetworkPolicy's recent verdicts (the flow log); asking keeps the switch
    /// recording them for a while.
    Flows(FlowsRequest),
}

/// Parameters of [`Request::Flows`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsRequest {
    /// Only flows recorded after this sequence number (0: every one kept).
    #[serde(default)]
    pub after: u64,
    /// Only flows from or to this pod.
    #[serde(default)]
    pub pod: Option<PodRef>,
    /// Only flows of this verdict: "allowed" or "denied".
    #[serde(default)]
    pub verdict: Option<String>,
    /// At most this many, the newest; 0: every one after `after`, from the
    /// oldest, in pieces of at most about 1 MiB (ask again after `last`).
    #[serde(default)]
    pub limit: usize,
}

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEnd {
    /// Its address, of either family (written as a string either way, so an
    /// IPv4 end reads as it did before IPv6 flows were logged).
    pub ip: IpAddr,
    /// Its port, for TCP, UDP and SCTP.
    pub port: Option<u16>,
    /// The pod at that address, where weftd knows it.
    pub pod: Option<PodRef>,
}

/// One verdict of NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// Its place in the log: later flows have greater numbers.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The source.
    pub src: FlowEnd,
    /// The destination.
    pub dst: FlowEnd,
    /// "tcp", "udp", "icmp", "sctp" or the protocol's number.
    pub proto: String,
    /// "allowed" (a new connection) or "denied" (a packet).
    pub verdict: String,
    /// What decided: the rules that allowed it (`ingress: ns/policy rule 0`), or
    /// the direction refused and the policies that isolate the pod there.
    pub reason: String,
}

impl Request {
    /// Whether the request changes the daemon's state (attach, detach, gc): only a
    /// peer whose uid is 0 may send it.
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Request::Attach(_) | Request::Detach(_) | Request::Gc(_)
        )
    }

    /// Whether the request is one of CNI's verbs (attach, detach, check, gc), which
    /// the daemon serves apart from the queries, so that queries never hold them up.
    pub fn is_cni(&self) -> bool {
        self.mutates() || matches!(self, Request::Check(_))
    }
}

/// A pod by namespace and name, as Kubernetes names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Parameters of [`Request::PolicyExplain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainRequest {
    /// The source: a pod as `namespace/name`, or an address.
    pub src: String,
    /// The destination, likewise.
    pub dst: String,
    /// "TCP", "UDP", "SCTP" or "ICMP".
    pub protocol: String,
    /// The destination port, for TCP, UDP and SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The source port, for a connection to a ClusterIP: the endpoint the
    /// switch's translation gives that very connection is picked out. Without
    /// it, every endpoint is judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
}

/// Parameters of [`Request::Attach`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// The container (sandbox) id, as CNI_CONTAINERID.
    pub container_id: String,
    /// Path of the pod's network namespace, as CNI_NETNS.
    pub netns: String,
    /// Interface name inside the pod, as CNI_IFNAME.
    pub ifname: String,
    /// A specific address to give the pod, if the runtime asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_ip: Option<Ipv4Addr>,
    /// A specific IPv6 address to give the pod, on a dual-stack node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_ip6: Option<Ipv6Addr>,
    /// The Kubernetes pod, as `K8S_POD_NAMESPACE` and `K8S_POD_NAME` name it: what
    /// its labels and policies are found by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// The kind of port the pod asks for (the CNI config's `podPort`, or
    /// `WEFT_POD_PORT=` in CNI_ARGS); weftd's `pod-port` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortType>,
}

/// The kind of a pod's port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortType {
    /// A TAP device in the pod: one copy each way, with TSO/USO super-frames.
    #[default]
    Tap,
    /// A veth pair whose host end weftd serves with AF_XDP sockets.
    Afxdp,
}

impl PortType {
    /// The name in configs and CNI_ARGS.
    pub fn as_str(self) -> &'static str {
        match self {
            PortType::Tap => "tap",
            PortType::Afxdp => "afxdp",
        }
    }
}

impl std::fmt::Display for PortType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PortType {
    type Err = String;

    fn from_str(s: &str) -> Result<PortType, String> {
        match s {
            "tap" => Ok(PortType::Tap),
            "afxdp" => Ok(PortType::Afxdp),
            _ => Err(format!("{s:?} is not a port type: \"tap\" or \"afxdp\"")),
        }
    }
}

/// Parameters of [`Request::Detach`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachRequest {
    /// The container (sandbox) id.
    pub container_id: String,
    /// Interface name inside the pod.
    pub ifname: String,
    /// Path of the pod's netns, if the runtime still has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

/// Parameters of [`Request::Check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// The container (sandbox) id.
    pub container_id: String,
    /// Interface name inside the pod.
    pub ifname: String,
    /// Path of the pod's netns.
    pub netns: String,
}

/// One attachment's identity, as CNI's GC names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    /// The container (sandbox) id.
    pub container_id: String,
    /// Interface name inside the pod.
    pub ifname: String,
}

/// Parameters of [`Request::Gc`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRequest {
    /// The attachments the runtime still uses; all others are released.
    pub valid: Vec<AttachmentKey>,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The request succeeded.
    Ok(Reply),
    /// The request failed.
    Error(ErrorReply),
}

/// A failure, with a machine-readable kind and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What class of failure this is.
    pub kind: ErrorKind,
    /// What failed and on what.
    pub message: String,
}

/// Classes of failure a client may act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request could not be decoded.
    BadRequest,
    /// The client speaks a protocol version the daemon does not.
    BadVersion,
    /// The request names something invalid (a netns that does not exist, a bad address).
    InvalidArgument,
    /// The address pool has no free address.
    Exhausted,
    /// The daemon is not ready or is shutting down; try again later.
    Unavailable,
    /// A check found the attachment missing or different from what was set up.
    CheckFailed,
    /// The client may not send this request: it changes state, and the client's
    /// uid is not 0.
    PermissionDenied,
    /// The daemon has as many connections or requests as it serves at once; try
    /// again later.
    Busy,
    /// Anything else.
    Internal,
}

/// The payload of a successful response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// The result of an attach.
    Attached(Attachment),
    /// A detach completed (whether or not anything was left to undo).
    Detached {
        /// The address that was released, if one was held.
        released_ip: Option<Ipv4Addr>,
        /// The IPv6 address that was released, if one was held.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        released_ip6: Option<Ipv6Addr>,
    },
    /// A check found the attachment in place.
    Checked(Attachment),
    /// A GC finished.
    Collected {
        /// The attachments released.
        released: Vec<AttachmentKey>,
    },
    /// The daemon's status.
    Status(Box<Status>),
    /// The attached ports.
    Ports {
        /// One entry per port, the host port first.
        ports: Vec<PortInfo>,
    },
    /// The peer nodes.
    Peers {
        /// One entry per configured peer.
        peers: Vec<PeerInfo>,
    },
    /// The forwarding table.
    Routes {
        /// One entry per route, longest prefix first.
        routes: Vec<RouteInfo>,
    },
    /// The loaded policies.
    PolicyStatus(PolicyStatus),
    /// A pod's policies.
    PolicyPod(PodPolicies),
    /// A connection judged.
    Explained(Explanation),
    /// The Services.
    Services(ServicesStatus),
    /// Flows, oldest first.
    Flows {
        /// The flows.
        flows: Vec<FlowInfo>,
        /// The number to ask for flows after next: the greatest recorded, or, when
        /// the answer is a piece of a longer one, the last it holds.
        last: u64,
    },
}

/// The ClusterIP Services compiled for this node, where they come from, and what
/// was left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesStatus {
    /// Where Services come from (`dir /path`, the store's kind, `the <kind> view
    /// saved at <time>` while the store is not read yet, or `none`).
    pub source: String,
    /// The Service CIDR ClusterIPs are held to, if it is set.
    #[serde(default)]
    pub service_cidr: Option<String>,
    /// Services and EndpointSlices the source holds that read.
    pub services: usize,
    /// EndpointSlices likewise.
    pub slices: usize,
    /// Every ClusterIP port, by frontend.
    pub ports: Vec<ServicePortInfo>,
    /// Addresses left out of the table: each with its object and why.
    pub refused: Vec<String>,
    /// Services and EndpointSlices that do not read: each with where and why.
    pub bad: Vec<String>,
}

/// One ClusterIP port and its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortInfo {
    /// `namespace/name:port-name` (or `:port`).
    pub name: String,
    /// `ClusterIP:port/PROTOCOL`.
    pub frontend: String,
    /// The `ClientIP` affinity timeout in seconds, if it has affinity.
    #[serde(default)]
    pub affinity_s: Option<u64>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// Its endpoints.
    pub endpoints: Vec<ServiceEndpointInfo>,
}

/// One endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpointInfo {
    /// `address:port`.
    pub address: String,
    /// `ready`, or `serving-terminating` (used only with no ready endpoint).
    pub state: String,
    /// Whether it is on this node.
    pub local: bool,
}

/// What policy is loaded, from where, and what went wrong reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// Where policy comes from (`dir /path`, or `none`).
    pub source: String,
    /// How it is enforced: `enforcing`, or `enforcing, with the last good
    /// version of ...` while objects do not read, or `isolating: ...` while pods
    /// are isolated for ingress because no good policy was read yet or objects do
    /// not read.
    #[serde(default)]
    pub state: String,
    /// The policy set in force, counted from 1 each time its rules change.
    pub generation: u32,
    /// Namespaces, pods and policies in the set in force.
    pub namespaces: usize,
    /// Pods the set knows (with this node's attached pods).
    pub pods: usize,
    /// The policies in force.
    pub policies: Vec<PolicyInfo>,
    /// The objects the last read could not read: each with its file (or store
    /// key), document and reason, and what became of it (its last good version
    /// kept, or pods isolated for ingress).
    pub errors: Vec<String>,
    /// Documents of other kinds, skipped.
    pub skipped: Vec<String>,
}

/// One policy in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// `namespace/name`.
    pub id: String,
    /// Whether it isolates ingress.
    pub ingress: bool,
    /// Whether it isolates egress.
    pub egress: bool,
    /// Its ingress rules.
    pub ingress_rules: usize,
    /// Its egress rules.
    pub egress_rules: usize,
    /// Pods of this node it selects.
    pub local_pods: usize,
}

/// The policies of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPolicies {
    /// The pod.
    pub pod: PodRef,
    /// Its address, if known.
    pub ip: Option<Ipv4Addr>,
    /// Whether a policy isolates its ingress.
    pub ingress_isolated: bool,
    /// Whether a policy isolates its egress.
    pub egress_isolated: bool,
    /// The policies that select it: (`namespace/name`, ingress, egress).
    pub selected_by: Vec<(String, bool, bool)>,
}

/// A connection judged by the policies in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// Whether both ends' policies allow it.
    pub allowed: bool,
    /// What the source's egress policy says.
    pub egress: String,
    /// What the destination's ingress policy says.
    pub ingress: String,
    /// With the destination an address of the Service CIDR: what the Services
    /// make of it (the endpoints policy then judges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceExplanation>,
}

/// A connection to an address of the Service CIDR, as `policy_explain` follows it
/// through the switch's translation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceExplanation {
    /// `translated` (given an endpoint), `refused` (an ICMP unreachable: a TCP
    /// connect fails at once), `dropped` (silently), or `kube-proxy` (the switch
    /// does not translate; the address is judged as given).
    pub outcome: String,
    /// Why, in a sentence.
    pub detail: String,
    /// The Service port, `namespace/name:port-name`, when the address and port
    /// are a frontend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `ClusterIP:port/PROTOCOL`, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
    /// How a new connection's endpoint is chosen, a line each: which endpoints
    /// are used (ready, or serving and terminating as a fallback; this node's
    /// only), the hash, affinity.
    pub selection: Vec<String>,
    /// Every endpoint of the port.
    pub endpoints: Vec<ExplainedEndpoint>,
}

/// One endpoint of a Service port, and policy's verdict on the connection as if
/// the translation gave it this endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainedEndpoint {
    /// `address:port` (the target port).
    pub address: String,
    /// `ready` or `serving-terminating`.
    pub state: String,
    /// Whether it is on this node.
    pub local: bool,
    /// Whether a new connection may be given it now.
    pub usable: bool,
    /// Why not, when it is not usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unused: Option<String>,
    /// Whether it is the endpoint the translation gives the connection asked
    /// about (with a source port).
    pub picked: bool,
    /// Whether both ends' policies allow the connection to it.
    pub allowed: bool,
    /// What the source's egress policy says of it.
    pub egress: String,
    /// What its ingress policy says.
    pub ingress: String,
}

/// What an attach created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Interface name inside the pod.
    pub interface: String,
    /// The interface's MAC address.
    pub mac: String,
    /// The netns path the interface lives in.
    pub sandbox: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Prefix length of the node subnet the address belongs to.
    pub prefix_len: u8,
    /// The pod's default gateway.
    pub gateway: Ipv4Addr,
    /// The pod's IPv6 address, on a dual-stack node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Address6>,
    /// The interface MTU.
    pub mtu: u32,
    /// The kind of port the pod got (TAP when AF_XDP was asked for and the node
    /// fell back).
    #[serde(default)]
    pub port: PortType,
}

/// A pod's IPv6 address, with what it needs to use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address6 {
    /// The address.
    pub ip: Ipv6Addr,
    /// Prefix length of the node's IPv6 subnet.
    pub prefix_len: u8,
    /// The default gateway (the subnet's `::1`).
    pub gateway: Ipv6Addr,
}

/// Daemon identity and health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node's name.
    pub node: String,
    /// The daemon's version (not the protocol's).
    pub daemon_version: String,
    /// Tunnel mode: "vxlan" or "sleeve".
    pub mode: String,
    /// This node's pod subnet.
    pub pod_subnet: String,
    /// The node's IPv6 pod subnet, on a dual-stack node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_subnet_v6: Option<String>,
    /// The cluster CIDR.
    pub cluster_cidr: String,
    /// The gateway address of the node subnet.
    pub gateway: Ipv4Addr,
    /// Underlay address and port of the tunnel sockets.
    pub underlay: SocketAddr,
    /// Number of worker threads.
    pub workers: usize,
    /// Pod MTU.
    pub mtu: u32,
    /// Number of attached pods.
    pub pods: usize,
    /// Number of configured peers.
    pub peers: usize,
    /// Whether the daemon accepts attach requests: it is not shutting down, it has a
    /// free address, and none of its workers is stalled.
    pub ready: bool,
    /// The cluster store and whether it is reachable.
    #[serde(default)]
    pub store: Option<StoreStatus>,
    /// How NetworkPolicy is enforced, as `policy_status`'s `state` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The workers (by number) that have not gone round their loop for over 5 s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stalled_workers: Vec<usize>,
    /// NetworkPolicy's connection tables, summed over the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackStatus>,
}

/// NetworkPolicy's connection tables, summed over the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStatus {
    /// Connections tracked now.
    pub entries: u64,
    /// The most one worker tracks (`conntrack-max`).
    pub max_per_worker: u64,
    /// The most one source address holds in one worker's table (`conntrack-share`).
    pub share_per_worker: u64,
    /// Connections not yet established that gave up their place to a new one since
    /// the start.
    pub evicted: u64,
    /// New connections refused since the start because their source held its share.
    pub share_refused: u64,
}

/// The cluster store as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// "file", "etcd", "kubernetes" or "none".
    pub kind: String,
    /// "ok", or "degraded": unreachable, so forwarding goes on with the last peers
    /// known and pods are added from this node's own subnet.
    pub state: String,
    /// Why it is degraded.
    #[serde(default)]
    pub detail: Option<String>,
    /// For how long, in milliseconds.
    #[serde(default)]
    pub degraded_ms: Option<u64>,
    /// How many objects of each kind the store mirrors (the Kubernetes store:
    /// nodes, pods, namespaces, networkpolicies, services, endpointslices).
    #[serde(default)]
    pub objects: Vec<(String, usize)>,
    /// When the view in force was saved (UTC, RFC 3339), while the node runs on the
    /// view an earlier run saved in its state directory: the store has not been read
    /// since the node started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_saved: Option<String>,
}

/// Packet and byte counters, with drops by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Dropped frames by reason (only non-zero reasons are listed).
    pub drops: Vec<(String, u64)>,
}

/// A port and its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// "host" or "pod".
    pub kind: String,
    /// Interface name (weft0, or the pod's interface).
    pub name: String,
    /// The container id, for pod ports.
    pub container_id: Option<String>,
    /// The netns path, for pod ports.
    pub netns: Option<String>,
    /// The port's address.
    pub ip: Option<Ipv4Addr>,
    /// The port's MAC address.
    pub mac: String,
    /// Traffic counters.
    pub counters: Counters,
    /// For the host port: the flows crossing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_flows: Option<HostFlows>,
}

/// The flows crossing the host port: what the switch handed the host, and the
/// connections the host handed back, whose replies return through it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFlows {
    /// Flows of pods handed to the host, now (by source address, protocol, port).
    pub handed: u64,
    /// Connections the host handed back with a pod's address, now.
    pub returning: u64,
    /// Connections handed back since weftd started.
    pub returned_total: u64,
}

/// A peer node, its counters and its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Node name.
    pub name: String,
    /// Underlay address.
    pub underlay: Ipv4Addr,
    /// The node's pod subnet.
    pub pod_subnet: String,
    /// Its IPv6 pod subnet, which this node routes to it, on a dual-stack node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_subnet_v6: Option<String>,
    /// The node's VTEP MAC.
    pub vtep_mac: String,
    /// How its pods are reached: "vxlan" or "sleeve" (the tunnel), "direct via
    /// ADDR dev IF" (a host route), or "none: why".
    #[serde(default)]
    pub path: String,
    /// Traffic counters.
    pub counters: Counters,
    /// What heartbeats said of it; none for the row of unknown senders.
    #[serde(default)]
    pub health: Option<PeerHealth>,
    /// Its encrypted session, with encryption on.
    #[serde(default)]
    pub session: Option<PeerSession>,
}

/// A peer's encrypted session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSession {
    /// "established", "handshaking", "idle", or "no key" (the store has none).
    pub state: String,
    /// Seconds since the sending session's handshake, if there is one.
    pub key_age_s: Option<u64>,
    /// Its cipher ("chacha20-poly1305" or "aes-256-gcm").
    pub cipher: Option<String>,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Of those, the ones that replaced a live session.
    #[serde(default)]
    pub rekeys: u64,
    /// Handshakes failed or given up.
    pub handshake_failures: u64,
    /// Datagrams dropped waiting for a session.
    pub queue_drops: u64,
}

/// A peer's health as its heartbeats tell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHealth {
    /// "up", "down" or "unknown" (never heard: just added, or a kernel VXLAN node).
    pub state: String,
    /// Microseconds since its last heartbeat or echo, if it was ever heard.
    pub last_heard_us: Option<u64>,
    /// The last round-trip time its echoes measured, in microseconds.
    pub rtt_us: Option<u64>,
    /// The features it announced ("chunks", "echo", or "bitN" for unknown ones).
    pub features: Vec<String>,
    /// Heartbeats sent to it.
    pub heartbeats_sent: u64,
    /// Heartbeats it sent.
    pub heartbeats_received: u64,
    /// Echoes sent to it, answering its heartbeats.
    pub echoes_sent: u64,
    /// Echoes it sent back.
    pub echoes_received: u64,
}

/// One forwarding-table entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// Destination prefix.
    pub prefix: String,
    /// Where it goes: "pod <name>", "host", "peer <node>", "unreachable".
    pub next_hop: String,
}

/// A failure of the client side of the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached (no daemon, wrong path, permissions).
    #[error("cannot connect to weftd at {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The exchange failed or timed out after connecting.
    #[error("talking to weftd at {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The daemon's answer was not a valid response.
    #[error("weftd at {path} sent an undecodable response: {source}")]
    Decode {
        /// Socket path.
        path: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// The daemon answered with a protocol version this client does not speak.
    #[error(
        "weftd at {path} speaks protocol version {got}, this client speaks {PROTOCOL_VERSION}"
    )]
    Version {
        /// Socket path.
        path: String,
        /// The daemon's version.
        got: u32,
    },
}

impl ClientError {
    /// Whether the failure means the daemon is not there or not answering (worth a retry later).
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// A response as sent on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    /// Protocol version of the daemon.
    pub version: u32,
    /// The answer.
    #[serde(flatten)]
    pub response: Response,
}

/// The server's side of the framing: a request's bytes, taken as they arrive, until
/// the client shuts down its write half; then the request, or the error the client is
/// answered with.
#[derive(Debug, Default)]
pub struct RequestReader {
    body: Vec<u8>,
}

impl RequestReader {
    /// A reader with nothing read yet.
    pub fn new() -> RequestReader {
        RequestReader::default()
    }

    /// Takes the next bytes; fails once the request is larger than [`MAX_MESSAGE`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ErrorReply> {
        if self.body.len() + bytes.len() > MAX_MESSAGE {
            return Err(ErrorReply {
                kind: ErrorKind::BadRequest,
                message: format!("request larger than {MAX_MESSAGE} bytes"),
            });
        }
        self.body.extend_from_slice(bytes);
        Ok(())
    }

    /// The request, once the client has sent all of it.
    pub fn finish(self) -> Result<Request, ErrorReply> {
        decode_request(&self.body)
    }
}

/// The answer to a client that sent no complete request within `limit`.
pub fn request_timed_out(limit: Duration) -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::BadRequest,
        message: format!("no complete request within {limit:?}"),
    }
}

/// Decodes one request from the wire: JSON, of this protocol version, a known verb.
pub fn decode_request(bytes: &[u8]) -> Result<Request, ErrorReply> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| ErrorReply {
        kind: ErrorKind::BadRequest,
        message: format!("request is not JSON: {e}"),
    })?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(ErrorReply {
                kind: ErrorKind::BadVersion,
                message: format!(
                    "protocol version {v} is not spoken here; this daemon speaks {PROTOCOL_VERSION}"
                ),
            })
        }
        None => {
            return Err(ErrorReply {
                kind: ErrorKind::BadRequest,
                message: "request has no protocol version".into(),
            })
        }
    }
    serde_json::from_value::<RequestEnvelope>(value)
        .map(|e| e.request)
        .map_err(|e| ErrorReply {
            kind: ErrorKind::BadRequest,
            message: format!("bad request: {e}"),
        })
}

/// The bytes of a response on the wire.
pub fn encode_response(response: Response) -> Vec<u8> {
    serde_json::to_vec(&ResponseEnvelope {
        version: PROTOCOL_VERSION,
        response,
    })
    .expect("responses always serialize")
}

/// Connects to `socket` within `timeout`: a daemon whose listen backlog is full makes
/// a plain connect wait for as long as it stays full, but the kernel bounds a Unix
/// stream connect by the socket's send timeout.
fn connect(socket: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    s.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    s.connect(&SockAddr::unix(socket)?)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(s)))
}

/// Sends one request to the daemon at `socket` and waits for its answer, at most
/// `timeout` for the whole exchange (connect, write and read each bounded).
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let deadline = std::time::Instant::now() + timeout;
    let mut stream = connect(socket, timeout).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    let remaining = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    stream.set_write_timeout(Some(remaining())).map_err(io)?;
    let body = serde_json::to_vec(&RequestEnvelope {
        version: PROTOCOL_VERSION,
        request: request.clone(),
    })
    .expect("requests always serialize");
    stream.write_all(&body).map_err(io)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        stream.set_read_timeout(Some(remaining())).map_err(io)?;
        // A signal (the caller's SIGCHLD, say) interrupts a read: it is no error.
        let n = match stream.read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => read.map_err(io)?,
        };
        if n == 0 {
            break;
        }
        if answer.len() + n > MAX_MESSAGE {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("response larger than {MAX_MESSAGE} bytes"),
            )));
        }
        answer.extend_from_slice(&chunk[..n]);
        if std::time::Instant::now() >= deadline {
            return Err(io(std::io::ErrorKind::TimedOut.into()));
        }
    }
    let envelope: ResponseEnvelope =
        serde_json::from_slice(&answer).map_err(|source| ClientError::Decode {
            path: path.clone(),
            source,
        })?;
    if envelope.version != PROTOCOL_VERSION {
        return Err(ClientError::Version {
            path,
            got: envelope.version,
        });
    }
    Ok(envelope.response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_whose_backlog_is_full_fails_the_connect_in_time() {
        use socket2::{Domain, SockAddr, Socket, Type};
        let dir = std::env::temp_dir().join(format!("weft-proto-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("full.sock");
        let _ = std::fs::remove_file(&path);
        let addr = SockAddr::unix(&path).unwrap();
        let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        listener.bind(&addr).unwrap();
        // It listens, and never accepts: its backlog fills.
        listener.listen(0).unwrap();
        let mut queued = Vec::new();
        loop {
            let s = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            match s.connect(&addr) {
                Ok(()) => queued.push(s),
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
                    break;
                }
            }
            assert!(queued.len() < 1000, "the backlog never filled");
        }
        let err = call(&path, &Request::Status, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        assert!(err.is_unreachable(), "{err:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn attach_request_wire_form() {
        let req = RequestEnvelope {
            version: 1,
            request: Request::Attach(AttachRequest {
                container_id: "abc".into(),
                netns: "/run/netns/x".into(),
                ifname: "eth0".into(),
                requested_ip6: None,
                requested_ip: Some(Ipv4Addr::new(10, 244, 1, 7)),
                pod: None,
                port: None,
            }),
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "version": 1, "verb": "attach", "container_id": "abc",
                "netns": "/run/netns/x", "ifname": "eth0", "requested_ip": "10.244.1.7"
            })
        );
        let back: RequestEnvelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn unit_verbs_and_errors_round_trip() {
        for request in [
            Request::Status,
            Request::Ports,
            Request::Peers,
            Request::Routes,
            Request::Services,
        ] {
            let env = RequestEnvelope {
                version: 1,
                request,
            };
            let text = serde_json::to_string(&env).unwrap();
            assert_eq!(serde_json::from_str::<RequestEnvelope>(&text).unwrap(), env);
        }
        let err = ResponseEnvelope {
            version: 1,
            response: Response::Error(ErrorReply {
                kind: ErrorKind::Exhausted,
                message: "no free address in 10.244.1.0/30".into(),
            }),
        };
        let text = serde_json::to_string(&err).unwrap();
        assert!(text.contains("\"result\":\"error\""), "{text}");
        assert_eq!(
            serde_json::from_str::<ResponseEnvelope>(&text).unwrap(),
            err
        );
    }

    #[test]
    fn every_reply_round_trips_through_the_envelope() {
        let status = Status {
            node: "n".into(),
            daemon_version: "0.1.0".into(),
            mode: "vxlan".into(),
            pod_subnet: "10.244.1.0/24".into(),
            pod_subnet_v6: Some("fd00:10:244:1::/64".into()),
            cluster_cidr: "10.244.0.0/16".into(),
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            underlay: "10.250.0.1:8472".parse().unwrap(),
            workers: 2,
            mtu: 1450,
            pods: 1,
            peers: 1,
            ready: true,
            store: Some(StoreStatus {
                kind: "etcd".into(),
                state: "ok".into(),
                detail: None,
                degraded_ms: None,
                objects: vec![("pods".into(), 3)],
                from_saved: None,
            }),
            policy: Some("enforcing".into()),
            stalled_workers: vec![1],
            conntrack: Some(ConntrackStatus {
                entries: 3,
                max_per_worker: 16_384,
                share_per_worker: 8_192,
                evicted: 2,
                share_refused: 1,
            }),
        };
        let replies = [
            Reply::Status(Box::new(status)),
            Reply::Attached(Attachment {
                interface: "eth0".into(),
                mac: "0a:58:0a:f4:01:02".into(),
                sandbox: "/run/netns/x".into(),
                ip: Ipv4Addr::new(10, 244, 1, 2),
                prefix_len: 24,
                gateway: Ipv4Addr::new(10, 244, 1, 1),
                ipv6: Some(Address6 {
                    ip: "fd00:10:244:1::2".parse().unwrap(),
                    prefix_len: 64,
                    gateway: "fd00:10:244:1::1".parse().unwrap(),
                }),
                mtu: 1450,
                port: Default::default(),
            }),
            Reply::Detached {
                released_ip: None,
                released_ip6: Some("fd00:10:244:1::2".parse().unwrap()),
            },
            Reply::Collected {
                released: vec![AttachmentKey {
                    container_id: "c".into(),
                    ifname: "eth0".into(),
                }],
            },
            Reply::Ports { ports: vec![] },
            Reply::Peers { peers: vec![] },
            Reply::Routes { routes: vec![] },
        ];
        for reply in replies {
            let env = ResponseEnvelope {
                version: PROTOCOL_VERSION,
                response: Response::Ok(reply),
            };
            let text = serde_json::to_string(&env).unwrap();
            let back: ResponseEnvelope =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(back, env);
        }
    }

    /// PROTOCOL.md, which these tests hold to the code.
    const PROTOCOL_MD: &str = include_str!("../PROTOCOL.md");

    /// The verbs the code knows, as serde lists them when it refuses another one.
    fn code_verbs() -> Vec<String> {
        let err = serde_json::from_str::<RequestEnvelope>(r#"{"version":1,"verb":"?"}"#)
            .unwrap_err()
            .to_string();
        let expected = err
            .split_once("expected one of ")
            .unwrap_or_else(|| panic!("serde named no variants: {err}"))
            .1;
        // "`attach`, `detach`, ... `routes` at line 1 column 24": the names between
        // backquotes.
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// The document's sections of requests: (verb, JSON examples in it).
    fn doc_sections() -> Vec<(String, Vec<String>)> {
        let requests = PROTOCOL_MD
            .split_once("## Requests")
            .expect("a Requests chapter")
            .1;
        requests
            .split("\n### ")
            .skip(1)
            .map(|section| {
                let verb = section
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_matches(|c: char| c == '`' || c.is_whitespace())
                    .to_owned();
                (verb, json_blocks(section))
            })
            .collect()
    }

    fn json_blocks(text: &str) -> Vec<String> {
        text.split("```json\n")
            .skip(1)
            .map(|b| b.split("```").next().unwrap_or("").trim().to_owned())
            .collect()
    }

    #[test]
    fn every_verb_in_the_code_is_documented_and_every_example_parses() {
        let verbs = code_verbs();
        assert!(
            verbs.len() >= 8 && verbs.contains(&"attach".to_owned()),
            "{verbs:?}"
        );
        let sections = doc_sections();
        let documented: Vec<&str> = sections.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(documented, verbs, "PROTOCOL.md's request sections");
        for (verb, examples) in &sections {
            assert_eq!(
                examples.len(),
                2,
                "{verb}: a request and a response example"
            );
            let request: RequestEnvelope = serde_json::from_str(&examples[0])
                .unwrap_or_else(|e| panic!("{verb}: the request example: {e}"));
            let shown = serde_json::to_value(&request).unwrap();
            assert_eq!(shown["verb"], verb.as_str(), "{verb}");
            assert_eq!(request.version, PROTOCOL_VERSION);
            let response: ResponseEnvelope = serde_json::from_str(&examples[1])
                .unwrap_or_else(|e| panic!("{verb}: the response example: {e}"));
            assert!(matches!(response.response, Response::Ok(_)), "{verb}");
            // What the example says is what the code would send, field for field.
            let again: serde_json::Value =
                serde_json::from_slice(&encode_response(response.response.clone())).unwrap();
            let written: serde_json::Value = serde_json::from_str(&examples[1]).unwrap();
            assert_eq!(again, written, "{verb}: the response example");
        }
        // The error example too.
        let errors = PROTOCOL_MD.split_once("## Errors").unwrap().1;
        let errors = errors.split_once("## Requests").unwrap().0;
        for example in json_blocks(errors) {
            let e: ResponseEnvelope = serde_json::from_str(&example).unwrap();
            assert!(matches!(e.response, Response::Error(_)), "{example}");
        }
    }

    #[test]
    fn the_server_framing_refuses_what_the_document_says() {
        let mut r = RequestReader::new();
        r.push(br#"{"version": 1, "verb": "status"}"#).unwrap();
        assert_eq!(r.finish().unwrap(), Request::Status);
        let e = decode_request(br#"{"version": 2, "verb": "status"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadVersion);
        let e = decode_request(br#"{"verb": "status"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let e = decode_request(b"not json").unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let e = decode_request(br#"{"version": 1, "verb": "explode"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let mut big = RequestReader::new();
        big.push(&vec![b' '; MAX_MESSAGE]).unwrap();
        assert_eq!(big.push(b" ").unwrap_err().kind, ErrorKind::BadRequest);
        let t = request_timed_out(Duration::from_secs(10));
        assert!(t.message.contains("10s"), "{t:?}");
    }

    #[test]
    fn unknown_verb_is_an_error() {
        let bad = r#"{"version":1,"verb":"explode"}"#;
        assert!(serde_json::from_str::<RequestEnvelope>(bad).is_err());
    }

    #[test]
    fn call_to_missing_socket_is_unreachable() {
        let err = call(
            Path::new("/nonexistent/weft.sock"),
            &Request::Status,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(err.to_string().contains("/nonexistent/weft.sock"));
    }
}
