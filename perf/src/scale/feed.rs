//! Writing the cluster into a store: in bulk first, then one update at a time. A
//! [`Feeder`] for each store weftd reads: etcd (a real one, with weft's key layout
//! of `deploy/STORE.md`), and the Kubernetes API server (the fixture of
//! [`crate::apiserver`], holding literal JSON).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{Client, Txn, TxnOp};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::cluster::{fake_node, FakeNode, Object, Update, PORT};
use crate::apiserver::http::Server;
use crate::apiserver::{Kind, KINDS};
use crate::etcd::{Bridge, Etcd};
use crate::topo::Host;
use crate::weft::in_netns;

/// Puts in one etcd transaction: etcd's default `--max-txn-ops`.
pub const TXN_OPS: usize = 128;
/// Transactions in flight while loading.
pub const IN_FLIGHT: usize = 8;
/// The longest one write may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A store the cluster is written into.
pub trait Feeder: Send + Sync {
    /// The store's name, as weftd's `store` setting says it.
    fn store(&self) -> &'static str;

    /// The flags that point weftd at this store.
    fn weftd_args(&self) -> Vec<String>;

    /// Writes fake nodes `0..nodes` and `objects`, in bulk; the node under test
    /// (`me`, with its underlay address) is given what the store needs of it
    /// beforehand, if anything. Returns how many records it wrote.
    fn load(
        &self,
        nodes: usize,
        me: (&str, Ipv4Addr),
        objects: &mut dyn Iterator<Item = Object>,
    ) -> Result<usize>;

    /// Applies one update; returns once the store holds it.
    fn apply(&self, update: &Update) -> Result<()>;
}

/// weft's key prefix in etcd.
const PREFIX: &str = "/weft/v1";

/// An object's key under weft's etcd layout.
fn etcd_key(kind: &str, namespace: &str, name: &str) -> Result<String> {
    Ok(match kind {
        "Namespace" => format!("{PREFIX}/namespaces/{name}"),
        "Pod" => format!("{PREFIX}/pods/{namespace}/{name}"),
        "NetworkPolicy" => format!("{PREFIX}/networkpolicies/{namespace}/{name}"),
        other => bail!("etcd holds no {other} objects"),
    })
}

/// A fake node's registration and subnet lease, as weftd would write them (with
/// no lease: they stay for the whole run).
fn node_records(n: &FakeNode) -> [(String, Vec<u8>); 2] {
    let record = json!({
        "name": n.name,
        "underlayIp": n.underlay.to_string(),
        "podSubnet": n.subnet.to_string(),
        "vtepMac": n.mac,
        "mode": "vxlan",
        "directRouting": false,
        "port": PORT,
        "features": ["echo"],
        "version": "weft-perf scale"
    });
    let lease = json!({"node": n.name, "underlayIp": n.underlay.to_string()});
    let subnet = format!(
        "{PREFIX}/subnets/{}-{}",
        n.subnet.network(),
        n.subnet.prefix_len()
    );
    [
        (
            format!("{PREFIX}/nodes/{}", n.name),
            record.to_string().into_bytes(),
        ),
        (subnet, lease.to_string().into_bytes()),
    ]
}

/// A real etcd on 127.0.0.1, bridged into the host's namespace, written with
/// etcd-client: transactions of [`TXN_OPS`] puts, [`IN_FLIGHT`] at a time.
pub struct EtcdFeeder {
    client: Client,
    rt: tokio::runtime::Runtime,
    // Dropped in this order: the bridge, then etcd.
    _bridge: Bridge,
    etcd: Etcd,
}

impl std::fmt::Debug for EtcdFeeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdFeeder")
            .field("etcd", &self.etcd.endpoint())
            .finish_non_exhaustive()
    }
}

impl EtcdFeeder {
    /// Starts etcd with its data under `dir`, and a bridge to it from `host`.
    pub fn start(dir: &std::path::Path, host: &Host) -> Result<EtcdFeeder> {
        let etcd = Etcd::start(dir)?;
        let bridge = Bridge::new(&host.ns, etcd.addr())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let endpoint = etcd.endpoint();
        let client = rt
            .block_on(Client::connect([endpoint], None))
            .context("connecting to etcd")?;
        Ok(EtcdFeeder {
            client,
            rt,
            _bridge: bridge,
            etcd,
        })
    }

    /// The etcd under the feeder (for its pid, its log).
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// Writes `records` in transactions, several at once.
    fn write_all(&self, records: Vec<(String, Vec<u8>)>) -> Result<()> {
        let chunks: Vec<Vec<TxnOp>> = records
            .chunks(TXN_OPS)
            .map(|c| {
                c.iter()
                    .map(|(k, v)| TxnOp::put(k.as_str(), v.as_slice(), None))
                    .collect()
            })
            .collect();
        let client = self.client.clone();
        self.rt.block_on(async move {
            let mut writes = futures_util::stream::iter(chunks)
                .map(|ops| {
                    let mut c = client.clone();
                    async move {
                        let txn = Txn::new().and_then(ops);
                        tokio::time::timeout(WRITE_TIMEOUT, c.txn(txn)).await
                    }
                })
                .buffer_unordered(IN_FLIGHT);
            while let Some(done) = writes.next().await {
                done.map_err(|_| anyhow!("an etcd transaction took over {WRITE_TIMEOUT:?}"))?
                    .context("writing to etcd")?;
            }
            Ok(())
        })
    }
}

impl Feeder for EtcdFeeder {
    fn store(&self) -> &'static str {
        "etcd"
    }

    fn weftd_args(&self) -> Vec<String> {
        ["--store", "etcd", "--etcd-endpoints"]
            .into_iter()
            .map(str::to_owned)
            .chain([crate::etcd::bridged_endpoint()])
            .collect()
    }

    fn load(
        &self,
        nodes: usize,
        _me: (&str, Ipv4Addr),
        objects: &mut dyn Iterator<Item = Object>,
    ) -> Result<usize> {
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        for i in 0..nodes {
            records.extend(node_records(&fake_node(i)));
        }
        for o in objects {
            let key = etcd_key(o.kind, &o.namespace, &o.name)?;
            records.push((key, o.json.to_string().into_bytes()));
        }
        let n = records.len();
        self.write_all(records)?;
        Ok(n)
    }

    fn apply(&self, update: &Update) -> Result<()> {
        let mut c = self.client.clone();
        self.rt.block_on(async move {
            let write = async {
                match update {
                    Update::Put(o) => {
                        let key = etcd_key(o.kind, &o.namespace, &o.name)?;
                        c.put(key, o.json.to_string(), None).await.map(drop)?;
                    }
                    Update::DeletePod { namespace, name } => {
                        let key = etcd_key("Pod", namespace, name)?;
                        c.delete(key, None).await.map(drop)?;
                    }
                }
                anyhow::Ok(())
            };
            tokio::time::timeout(WRITE_TIMEOUT, write)
                .await
                .map_err(|_| anyhow!("an etcd write took over {WRITE_TIMEOUT:?}"))?
        })
    }
}

/// The bearer token weftd is given for the fixture.
const TOKEN: &str = "weft-perf-scale";

/// The fixture's kind of `kind` (a kind name).
fn kind_of(kind: &str) -> Result<Kind> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.kind == kind)
        .with_context(|| format!("the fixture serves no {kind}"))
}

/// A fake node's Node, with weft's annotations as its weftd would publish them.
fn node_object(n: &FakeNode) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": n.name,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux"},
            "annotations": {
                "weft.dev/underlay-ip": n.underlay.to_string(),
                "weft.dev/vtep-mac": n.mac,
                "weft.dev/mode": "vxlan",
                "weft.dev/direct-routing": "false",
                "weft.dev/port": PORT.to_string(),
                "weft.dev/features": "echo"
            }
        },
        "spec": {"podCIDR": n.subnet.to_string(), "podCIDRs": [n.subnet.to_string()]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": n.underlay.to_string()},
                {"type": "Hostname", "address": n.name}
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
        }
    })
}

/// The Node of the node under test: its `podCIDR` (the next /24 after the fake
/// nodes') and its InternalIP, with no annotation yet (weftd publishes them).
fn own_node(name: &str, ip: Ipv4Addr, nodes: usize) -> Value {
    let subnet = super::cluster::subnet(nodes).to_string();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"podCIDR": subnet, "podCIDRs": [subnet]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip.to_string()}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
        }
    })
}

/// The Kubernetes API server fixture, listening inside the host's namespace (on
/// its loopback), with a kubeconfig for weftd in the run's directory.
pub struct KubeFeeder {
    server: Server,
    kubeconfig: PathBuf,
}

impl std::fmt::Debug for KubeFeeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeFeeder")
            .field("server", &self.server.addr())
            .finish_non_exhaustive()
    }
}

impl KubeFeeder {
    /// Starts the fixture in `host`'s namespace; the kubeconfig goes in `dir`.
    pub fn start(dir: &std::path::Path, host: &Host) -> Result<KubeFeeder> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = in_netns(&host.ns, || Server::start(addr, TOKEN))?
            .context("starting the API server fixture")?;
        KubeFeeder::on(server, dir)
    }

    /// A feeder of `server`, already listening; the kubeconfig goes in `dir`.
    pub fn on(server: Server, dir: &std::path::Path) -> Result<KubeFeeder> {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, server.kubeconfig(TOKEN))
            .with_context(|| format!("writing {}", kubeconfig.display()))?;
        Ok(KubeFeeder { server, kubeconfig })
    }

    /// The fixture.
    pub fn server(&self) -> &Server {
        &self.server
    }
}

impl Feeder for KubeFeeder {
    fn store(&self) -> &'static str {
        "kubernetes"
    }

    fn weftd_args(&self) -> Vec<String> {
        vec![
            "--store".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            self.kubeconfig.display().to_string(),
        ]
    }

    fn load(
        &self,
        nodes: usize,
        (me, ip): (&str, Ipv4Addr),
        objects: &mut dyn Iterator<Item = Object>,
    ) -> Result<usize> {
        let node = kind_of("Node")?;
        let kinds = [
            kind_of("Namespace")?,
            kind_of("Pod")?,
            kind_of("NetworkPolicy")?,
        ];
        let mut n = 1;
        self.server.with_state(|s| -> Result<()> {
            s.put(node, own_node(me, ip, nodes));
            for i in 0..nodes {
                s.put(node, node_object(&fake_node(i)));
                n += 1;
            }
            for o in objects {
                let kind = (kinds.iter().copied())
                    .find(|k| k.kind == o.kind)
                    .with_context(|| format!("the fixture serves no {}", o.kind))?;
                s.put(kind, o.json);
                n += 1;
            }
            // Nobody watches yet: the history of the load is not needed.
            s.compact();
            Ok(())
        })?;
        Ok(n)
    }

    fn apply(&self, update: &Update) -> Result<()> {
        match update {
            Update::Put(o) => {
                self.server.put(kind_of(o.kind)?, o.json.clone());
            }
            Update::DeletePod { namespace, name } => {
                self.server.delete(kind_of("Pod")?, namespace, name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_have_weft_keys_and_nodes_have_a_record_and_a_lease() {
        assert_eq!(
            etcd_key("Pod", "ns-1", "pod-4").unwrap(),
            "/weft/v1/pods/ns-1/pod-4"
        );
        assert!(etcd_key("Node", "", "n").is_err());
        let [(node, record), (subnet, lease)] = node_records(&fake_node(3));
        assert_eq!(node, "/weft/v1/nodes/scale-3");
        assert_eq!(subnet, "/weft/v1/subnets/100.64.3.0-24");
        let record: Value = serde_json::from_slice(&record).unwrap();
        assert_eq!(record["podSubnet"], "100.64.3.0/24");
        assert_eq!(record["port"], 8472);
        let lease: Value = serde_json::from_slice(&lease).unwrap();
        assert_eq!(lease["node"], "scale-3");
    }

    #[test]
    fn nodes_carry_weft_annotations_and_a_pod_cidr() {
        let n = node_object(&fake_node(1));
        assert_eq!(n["spec"]["podCIDR"], "100.64.1.0/24");
        assert_eq!(
            n["metadata"]["annotations"]["weft.dev/vtep-mac"],
            "0a:57:00:00:00:01"
        );
        let own = own_node("node-0", Ipv4Addr::new(10, 250, 0, 1), 20);
        assert_eq!(own["spec"]["podCIDR"], "100.64.20.0/24");
        assert!(own["metadata"].get("annotations").is_none());
    }

    /// The Kubernetes feeder fills the fixture (here on this process's loopback:
    /// no daemon reads it) with what a scale run needs, and applies the churn.
    #[test]
    fn the_fixture_holds_the_cluster_and_follows_updates() {
        use crate::scale::cluster::{self, Churn, Sizes};
        let sizes = Sizes {
            nodes: 5,
            pods: 30,
            policies: 4,
            namespaces: 2,
            local_pods: 2,
        };
        let dir = crate::weft::Scratch::new("feed").unwrap();
        let server = Server::start(SocketAddr::from(([127, 0, 0, 1], 0)), TOKEN).unwrap();
        let feeder = KubeFeeder::on(server, dir.path()).unwrap();
        assert!(std::fs::read_to_string(dir.path().join("kubeconfig"))
            .unwrap()
            .contains("token: weft-perf-scale"));
        let me = ("node-0", Ipv4Addr::new(10, 250, 0, 1));
        let n = feeder
            .load(sizes.nodes, me, &mut cluster::objects(&sizes, "node-0"))
            .unwrap();
        let count = |kind: &str| {
            let kind = kind_of(kind).unwrap();
            (feeder.server().with_state(|s| s.list(kind, 0, None)))
                .unwrap()
                .items
                .len()
        };
        let (namespaces, pods, policies) = cluster::expected_counts(&sizes, sizes.local_pods);
        assert_eq!(count("Node"), sizes.nodes + 1);
        assert_eq!(count("Namespace"), namespaces);
        assert_eq!(count("Pod"), pods);
        assert_eq!(count("NetworkPolicy"), policies);
        assert_eq!(n, sizes.nodes + 1 + namespaces + pods + policies);
        let mut churn = Churn::new(sizes, 1);
        for _ in 0..50 {
            feeder.apply(&churn.next_update()).unwrap();
        }
        assert!(count("Pod") > pods, "the churn adds more than it deletes");
    }
}
