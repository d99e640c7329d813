//! The embedded default store: a static TOML file listing every node (the peers file),
//! reread when its bytes change.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use super::{ClusterStore, ClusterView, Joined, Joining, NodeEntry, OnChange, StoreError};
use crate::control::config::{ConfigError, Mode, NodeConfigError};
use crate::control::keys::PublicKey;
use crate::mac::MacAddr;

/// How often the file is checked for changes.
pub const POLL: Duration = Duration::from_secs(1);

/// The peers file at `path`.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// The store kept in the file at `path`.
    pub fn new(path: PathBuf) -> FileStore {
        FileStore { path }
    }
}

impl ClusterStore for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    /// The configured subnet, once the file's entry for this node (if it has one)
    /// agrees with this node's settings.
    fn join(&self, me: &Joining) -> Result<Joined, StoreError> {
        let subnet = me.wanted.ok_or(StoreError::File(
            NodeConfigError::Missing("pod-subnet").into(),
        ))?;
        let nodes = read_peers(&self.path)?;
        if let Some(entry) = nodes.iter().find(|n| n.name == me.name) {
            if entry.pod_subnet_v6 != me.subnet6 {
                let said = |s: Option<Ipv6Net>| s.map_or("none".to_string(), |s| s.to_string());
                return Err(StoreError::Conflict(format!(
                    "the peers file lists node {} with IPv6 subnet {}, but this daemon has {} (pod-subnet-v6)",
                    entry.name,
                    said(entry.pod_subnet_v6),
                    said(me.subnet6)
                )));
            }
            if entry.underlay_ip != me.underlay_ip || entry.pod_subnet != subnet {
                return Err(StoreError::Conflict(format!(
                    "the peers file lists node {} with underlay {} and subnet {}, but this daemon has {} and {subnet}",
                    entry.name, entry.underlay_ip, entry.pod_subnet, me.underlay_ip
                )));
            }
        }
        Ok(Joined {
            subnet,
            subnet6: me.subnet6,
        })
    }

    fn load(&self) -> Result<ClusterView, StoreError> {
        Ok(ClusterView {
            nodes: read_peers(&self.path)?,
            policy: None,
            services: None,
        })
    }

    fn watch(self: Arc<Self>, on_change: OnChange) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            // The file is small: compare its bytes, which catches rewrites within one
            // mtime tick and atomic renames alike.
            let mut last = tokio::fs::read(&self.path).await.ok();
            loop {
                tokio::time::sleep(POLL).await;
                let now = tokio::fs::read(&self.path).await.ok();
                if now == last {
                    continue;
                }
                last = now;
                match self.load() {
                    Ok(view) => on_change(view),
                    Err(e) => log::error!(
                        "peers file {}: {e}; keeping the previous peers",
                        self.path.display()
                    ),
                }
            }
        })
    }
}

/// One node as the peers file lists it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileEntry {
    name: String,
    underlay_ip: Ipv4Addr,
    pod_subnet: Ipv4Net,
    #[serde(default)]
    pod_subnet_v6: Option<Ipv6Net>,
    vtep_mac: MacAddr,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    direct_routing: Option<bool>,
    #[serde(default)]
    public_key: Option<PublicKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFile {
    #[serde(default)]
    node: Vec<FileEntry>,
}

/// Parses a peers file: `[[node]]` tables with name, underlay-ip, pod-subnet and
/// vtep-mac, and optionally the node's IPv6 pod subnet (`pod-subnet-v6`), and its
/// mode and direct-routing where they differ from this node's. Names, addresses,
/// subnets and MACs must be unique.
pub fn parse_peers(path: &Path, text: &str) -> Result<Vec<NodeEntry>, ConfigError> {
    let file: PeersFile = toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.display().to_string(),
        source: Box::new(source),
    })?;
    let bad = |why: String| ConfigError::Peers {
        path: path.display().to_string(),
        why,
    };
    let nodes: Vec<NodeEntry> = file
        .node
        .into_iter()
        .map(|n| NodeEntry {
            name: n.name,
            underlay_ip: n.underlay_ip,
            pod_subnet: n.pod_subnet,
            pod_subnet_v6: n.pod_subnet_v6,
            vtep_mac: n.vtep_mac,
            mode: n.mode,
            direct_routing: n.direct_routing,
            public_key: n.public_key,
        })
        .collect();
    let (mut names, mut ips, mut macs) = (HashSet::new(), HashSet::new(), HashSet::new());
    for (i, n) in nodes.iter().enumerate() {
        if n.name.is_empty() {
            return Err(bad(format!("node {} has an empty name", i + 1)));
        }
        if !names.insert(&n.name) {
            return Err(bad(format!("node {} is listed twice", n.name)));
        }
        if !ips.insert(n.underlay_ip) {
            return Err(bad(format!(
                "underlay-ip {} is listed twice",
                n.underlay_ip
            )));
        }
        if !macs.insert(n.vtep_mac) {
            return Err(bad(format!("vtep-mac {} is listed twice", n.vtep_mac)));
        }
        if n.vtep_mac.is_multicast() {
            return Err(bad(format!(
                "vtep-mac {} of {} is a group address",
                n.vtep_mac, n.name
            )));
        }
        check_subnets(n, &nodes[..i]).map_err(bad)?;
    }
    Ok(nodes)
}

/// Checks node `n`'s settings and subnets, alone and against the `earlier` nodes'.
fn check_subnets(n: &NodeEntry, earlier: &[NodeEntry]) -> Result<(), String> {
    if n.pod_subnet != n.pod_subnet.trunc() {
        return Err(format!(
            "pod-subnet {} of {} has host bits set",
            n.pod_subnet, n.name
        ));
    }
    if n.mode == Some(Mode::Direct) && n.direct_routing == Some(false) {
        return Err(format!(
            "{} has mode direct and direct-routing false",
            n.name
        ));
    }
    if let Some(s6) = n.pod_subnet_v6.filter(|s| *s != s.trunc()) {
        return Err(format!(
            "pod-subnet-v6 {s6} of {} has host bits set",
            n.name
        ));
    }
    for m in earlier {
        if let (Some(a), Some(b)) = (m.pod_subnet_v6, n.pod_subnet_v6) {
            if a.contains(&b) || b.contains(&a) {
                return Err(format!(
                    "pod-subnet-v6 {b} of {} overlaps {a} of {}",
                    n.name, m.name
                ));
            }
        }
        if m.pod_subnet.contains(&n.pod_subnet) || n.pod_subnet.contains(&m.pod_subnet) {
            return Err(format!(
                "pod-subnet {} of {} overlaps {} of {}",
                n.pod_subnet, n.name, m.pod_subnet, m.name
            ));
        }
    }
    Ok(())
}

/// Reads and parses a peers file.
pub fn read_peers(path: &Path) -> Result<Vec<NodeEntry>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_peers(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
        [[node]]
        name = "a"
        underlay-ip = "10.250.0.1"
        pod-subnet = "10.244.1.0/24"
        vtep-mac = "02:00:00:00:00:01"
        [[node]]
        name = "b"
        underlay-ip = "10.250.0.2"
        pod-subnet = "10.244.2.0/24"
        vtep-mac = "02:00:00:00:00:02"
        mode = "direct"
    "#;

    #[test]
    fn ipv6_subnets_in_the_peers_file() {
        let dual = TWO.replace(
            "pod-subnet = \"10.244.2.0/24\"",
            "pod-subnet = \"10.244.2.0/24\"\n        pod-subnet-v6 = \"fd00:10:244:2::/64\"",
        );
        let nodes = parse_peers(Path::new("p.toml"), &dual).unwrap();
        assert_eq!(nodes[0].pod_subnet_v6, None);
        assert_eq!(
            nodes[1].pod_subnet_v6,
            Some("fd00:10:244:2::/64".parse().unwrap())
        );
        let host_bits = dual.replace("fd00:10:244:2::/64", "fd00:10:244:2::5/64");
        let err = parse_peers(Path::new("p.toml"), &host_bits).unwrap_err();
        assert!(err.to_string().contains("has host bits set"), "{err}");
        let both = dual.replace(
            "pod-subnet = \"10.244.1.0/24\"",
            "pod-subnet = \"10.244.1.0/24\"\n        pod-subnet-v6 = \"fd00:10:244:2::/80\"",
        );
        let err = parse_peers(Path::new("p.toml"), &both).unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");
        let bad = dual.replace("fd00:10:244:2::/64", "10.0.0.0/8");
        assert!(parse_peers(Path::new("p.toml"), &bad).is_err());
    }

    #[test]
    fn peers_file() {
        let nodes = parse_peers(Path::new("p.toml"), TWO).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].vtep_mac.to_string(), "02:00:00:00:00:02");
        assert_eq!((nodes[0].mode, nodes[1].mode), (None, Some(Mode::Direct)));
        let dup = TWO.replace("10.244.2.0/24", "10.244.1.128/25");
        let err = parse_peers(Path::new("p.toml"), &dup)
            .unwrap_err()
            .to_string();
        assert!(err.contains("overlaps"), "{err}");
        let dup = TWO.replace("\"b\"", "\"a\"");
        assert!(parse_peers(Path::new("p.toml"), &dup)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let contradiction = TWO.replace(
            "mode = \"direct\"",
            "mode = \"direct\"\ndirect-routing = false",
        );
        let err = parse_peers(Path::new("p.toml"), &contradiction).unwrap_err();
        assert!(err.to_string().contains("direct-routing false"), "{err}");
        assert!(parse_peers(Path::new("p.toml"), "").unwrap().is_empty());
    }

    #[test]
    fn a_node_may_list_its_public_key() {
        let text = |key: &str| {
            format!(
                "[[node]]\nname = \"a\"\nunderlay-ip = \"10.0.0.1\"\npod-subnet = \"10.244.1.0/24\"\n\
                 vtep-mac = \"02:00:00:00:00:01\"\npublic-key = \"{key}\"\n"
            )
        };
        let key = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
        let nodes = parse_peers(Path::new("p.toml"), &text(key)).unwrap();
        assert_eq!(nodes[0].public_key.unwrap().to_string(), key);
        let err = parse_peers(Path::new("p.toml"), &text("abc")).unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }

    fn joining(name: &str, underlay: &str, subnet: &str) -> Joining {
        Joining {
            name: name.into(),
            underlay_ip: underlay.parse().unwrap(),
            vtep_mac: MacAddr::from_name(name),
            mode: Mode::Vxlan,
            direct_routing: false,
            public_key: None,
            features: Vec::new(),
            cluster: "10.244.0.0/16".parse().unwrap(),
            wanted: Some(subnet.parse().unwrap()),
            cluster6: None,
            subnet6: None,
            strict: true,
            state_dir: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn loads_the_file_joins_as_it_says_and_reports_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("weft-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("peers.toml");
        std::fs::write(&path, TWO).unwrap();
        let store = FileStore::new(path.clone());
        assert_eq!(store.kind(), "file");
        assert_eq!(store.load().unwrap().nodes[0].name, "a");
        let joined = store.join(&joining("a", "10.250.0.1", "10.244.1.0/24"));
        assert_eq!(joined.unwrap().subnet.to_string(), "10.244.1.0/24");
        // This node's IPv6 subnet must be the one the file lists for it (none).
        let dual = Joining {
            subnet6: Some("fd00:10:244:1::/64".parse().unwrap()),
            ..joining("a", "10.250.0.1", "10.244.1.0/24")
        };
        let err = store.join(&dual).unwrap_err().to_string();
        assert!(err.contains("IPv6 subnet none"), "{err}");
        // A node the file does not list joins on its own settings.
        assert!(store
            .join(&joining("c", "10.250.0.3", "10.244.3.0/24"))
            .is_ok());
        let err = store
            .join(&joining("a", "10.250.0.1", "10.244.9.0/24"))
            .unwrap_err();
        assert!(err.to_string().contains("10.244.9.0/24"), "{err}");
        std::fs::write(&path, "[[node]]\nname = 3\n").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("peers.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
