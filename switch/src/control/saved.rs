//! The last good view of the cluster, kept in the state directory as `view.json`: the
//! nodes, the NetworkPolicy objects and the Services and EndpointSlices in force the
//! last time the store was read, so that a node whose store is unreachable as it
//! starts starts from them, and not from nothing (which would leave every pod
//! unisolated, and refuse every ClusterIP). Its policy is also, on every
//! store, the last good set a node starts from: an object that no longer reads
//! keeps the version saved here (`crate::netpol::last_good`).
//!
//! A [`Saver`] writes the newest view it is handed, at most once a [`PERIOD`] and
//! once more as it stops; each write is atomic (a temporary file, synced, renamed,
//! the directory synced). [`read`] takes the file as untrusted input: bounded in
//! size, of this [`VERSION`] and store only, its nodes checked as any store's are,
//! its policy as a manifest's is, its Services as their documents are
//! ([`crate::services::recheck`]). A file written before Services were saved has
//! none, and reads.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::control::store::screen::{screen, Quiet};
use crate::control::store::NodeEntry;
use crate::netpol::manifest;
use crate::netpol::model::{Grouped, PolicyModel};
use crate::services::model::{EndpointSlice, Service, ServiceModel};
use crate::services::recheck;

/// The file's name in the state directory.
pub const FILE: &str = "view.json";
/// The format this weftd writes and reads.
pub const VERSION: u32 = 1;
/// The largest file read.
pub const MAX_SIZE: u64 = 256 << 20;
/// The shortest time between two writes.
pub const PERIOD: Duration = Duration::from_secs(10);

/// The view in force, as the daemon hands it over: shared with it, not copied.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Every node, this one included.
    pub nodes: Arc<Vec<NodeEntry>>,
    /// The policy objects in force.
    pub policy: Arc<PolicyModel>,
    /// The store's revision of those objects, for a store that has revisions.
    pub revision: Option<i64>,
    /// The store's Services and EndpointSlices in force, for a store that holds
    /// them (those that did not read are not saved).
    pub services: Option<Arc<ServiceModel>>,
}

/// The Services part of the file as written.
#[derive(Serialize)]
struct WritingServices<'a> {
    services: &'a Grouped<Service>,
    slices: &'a Grouped<EndpointSlice>,
}

/// The Services part of the file as read.
#[derive(Deserialize)]
struct ReadingServices {
    services: Grouped<Service>,
    slices: Grouped<EndpointSlice>,
}

/// The file as written.
#[derive(Serialize)]
struct Writing<'a> {
    version: u32,
    store: &'a str,
    saved_at: u64,
    revision: Option<i64>,
    nodes: &'a [NodeEntry],
    policy: &'a PolicyModel,
    #[serde(skip_serializing_if = "Option::is_none")]
    services: Option<WritingServices<'a>>,
}

/// The file's version alone, read before the rest.
#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

/// The file as read.
#[derive(Deserialize)]
struct Reading {
    store: String,
    saved_at: u64,
    revision: Option<i64>,
    nodes: Vec<NodeEntry>,
    policy: PolicyModel,
    /// Absent from a file written before Services were saved.
    #[serde(default)]
    services: Option<ReadingServices>,
}

/// A view read back and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedView {
    /// The kind of store it was read from.
    pub store: String,
    /// When it was saved, in seconds since the Unix epoch.
    pub saved_at: u64,
    /// The store's revision of its policy objects, if the store has revisions.
    pub revision: Option<i64>,
    /// The nodes that passed the checks, in the order saved.
    pub nodes: Vec<NodeEntry>,
    /// The policy objects.
    pub policy: PolicyModel,
    /// The Services and EndpointSlices, if the store held them.
    pub services: Option<ServiceModel>,
    /// The nodes left out: name and why.
    pub dropped: Vec<(String, String)>,
}

impl SavedView {
    /// When it was saved, in UTC (RFC 3339).
    pub fn saved_at_text(&self) -> String {
        utc(self.saved_at)
    }
}

/// Why a saved view cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is larger than any view this weftd would write.
    #[error("{path} is over {MAX_SIZE} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// The file is not a saved view, or not a whole one.
    #[error("{path} is not a saved view: {why}")]
    Corrupt {
        /// The file.
        path: String,
        /// What the JSON parser said.
        why: String,
    },
    /// The file is of another version of the format.
    #[error("{path} is a saved view of version {found}; this weftd reads version {VERSION}")]
    Version {
        /// The file.
        path: String,
        /// The version it says.
        found: u32,
    },
    /// The file was saved from another kind of store.
    #[error("{path} was saved from the {found} store; this node runs on {wanted}")]
    Store {
        /// The file.
        path: String,
        /// The store it names.
        found: String,
        /// The node's store.
        wanted: String,
    },
    /// Its policy objects are not what reading manifests could have made.
    #[error("{path}: its policy: {why}")]
    Policy {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// Its Services or EndpointSlices are not what reading their documents could
    /// have made.
    #[error("{path}: its Services: {why}")]
    Services {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
}

/// The saved view's path in state directory `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Writes `snap`, read from store `store`, to `dir` atomically, as saved at `now`.
pub fn write(dir: &Path, store: &str, snap: &Snapshot, now: SystemTime) -> Result<(), SavedError> {
    let target = path(dir);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| SavedError::Io { path, source }
    };
    let bytes = encode(store, snap, now).map_err(|e| io(&target)(std::io::Error::other(e)))?;
    // What could not be read back is not written: the view before stays.
    if bytes.len() as u64 > MAX_SIZE {
        return Err(SavedError::TooLarge {
            path: target.display().to_string(),
        });
    }
    if let Err(e) = write_synced(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &target)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    // The rename is durable once the directory is.
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// The bytes of the file for `snap`, read from store `store`, saved at `now`.
pub fn encode(store: &str, snap: &Snapshot, now: SystemTime) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Writing {
        version: VERSION,
        store,
        saved_at: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        revision: snap.revision,
        nodes: &snap.nodes,
        policy: &snap.policy,
        services: snap.services.as_deref().map(|m| WritingServices {
            services: &m.services,
            slices: &m.slices,
        }),
    })
}

/// The view saved in `dir` for a node on store `store` in cluster CIDR `cluster`;
/// `None` if there is no file. Nodes that fail the checks any store's do are left
/// out, with why; a file that cannot be read whole, or that another version or
/// store wrote, or whose policy is not well formed, is an error.
pub fn read(dir: &Path, store: &str, cluster: Ipv4Net) -> Result<Option<SavedView>, SavedError> {
    let p = path(dir);
    let shown = p.display().to_string();
    let bytes = match read_bounded(&p) {
        Ok(Some(b)) => b,
        Ok(None) => return Err(SavedError::TooLarge { path: shown }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SavedError::Io {
                path: shown,
                source,
            })
        }
    };
    decode(&bytes, &shown, store, cluster).map(Some)
}

/// The view in `bytes`, read from the file `shown`, for a node on store `store`
/// in cluster CIDR `cluster`: checked as [`read`] says.
pub fn decode(
    bytes: &[u8],
    shown: &str,
    store: &str,
    cluster: Ipv4Net,
) -> Result<SavedView, SavedError> {
    let shown = shown.to_owned();
    let corrupt = |e: serde_json::Error| SavedError::Corrupt {
        path: shown.clone(),
        why: e.to_string(),
    };
    let found = serde_json::from_slice::<Versioned>(bytes)
        .map_err(corrupt)?
        .version;
    if found != VERSION {
        return Err(SavedError::Version { path: shown, found });
    }
    let r: Reading = serde_json::from_slice(bytes).map_err(corrupt)?;
    if r.store != store {
        return Err(SavedError::Store {
            path: shown,
            found: r.store,
            wanted: store.into(),
        });
    }
    if let Err(why) = r
        .policy
        .check()
        .and_then(|()| manifest::check_unique(&r.policy))
    {
        return Err(SavedError::Policy { path: shown, why });
    }
    let services = r.services.map(|s| ServiceModel {
        services: s.services,
        slices: s.slices,
        bad: Vec::new(),
    });
    if let Some(Err(why)) = services.as_ref().map(recheck::check) {
        return Err(SavedError::Services { path: shown, why });
    }
    let (nodes, dropped) = screen(r.nodes, cluster, None);
    Ok(SavedView {
        store: r.store,
        saved_at: r.saved_at,
        revision: r.revision,
        nodes,
        policy: r.policy,
        services,
        dropped,
    })
}

/// Like [`read`], with every error and every node left out logged: an error is as
/// no saved view at all.
pub fn load(dir: &Path, store: &str, cluster: Ipv4Net) -> Option<SavedView> {
    match read(dir, store, cluster) {
        Ok(v) => {
            let (mut quiet, now) = (Quiet::default(), Instant::now());
            for (name, why) in v.iter().flat_map(|v| &v.dropped) {
                quiet.warn(
                    now,
                    format_args!("saved view: ignoring node {name:?}: {why}"),
                );
            }
            v
        }
        Err(e) => {
            log::error!("saved view: {e}; it is not used");
            None
        }
    }
}

/// The bytes of the file at `p`; `None` past [`MAX_SIZE`] (told by its size, or,
/// for a file that grows as it is read, by reading one byte more).
fn read_bounded(p: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let f = File::open(p)?;
    if f.metadata()?.len() > MAX_SIZE {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    f.take(MAX_SIZE + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= MAX_SIZE).then_some(bytes))
}

/// Writes `bytes` to a new file at `p`, for its owner only, and syncs it.
fn write_synced(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Seconds since the Unix epoch as a UTC time, RFC 3339 (`2025-06-01T12:00:00Z`).
pub fn utc(secs: u64) -> String {
    use k8s_openapi::jiff::Timestamp;
    i64::try_from(secs)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .map_or_else(
            || format!("{secs} s after 1970"),
            |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
}

/// What the saver's thread and its owner share.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    store: &'static str,
    period: Duration,
    slot: Mutex<Slot>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Slot {
    /// The newest view not written yet.
    pending: Option<Snapshot>,
    stop: bool,
}

/// Writes the views it is handed to the state directory, on a thread of its own: the
/// newest one only, at most once a period, and what is still pending as it stops.
#[derive(Debug)]
pub struct Saver {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Saver {
    /// A saver of views of store `store` into state directory `dir`.
    pub fn start(dir: PathBuf, store: &'static str) -> std::io::Result<Saver> {
        Saver::with_period(dir, store, PERIOD)
    }

    /// A saver that writes at most once a `period`.
    pub fn with_period(
        dir: PathBuf,
        store: &'static str,
        period: Duration,
    ) -> std::io::Result<Saver> {
        let shared = Arc::new(Shared {
            dir,
            store,
            period,
            slot: Mutex::new(Slot::default()),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("weft-saver".into())
            .spawn(move || run(&s))?;
        Ok(Saver {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Hands over the view in force now; it replaces any not written yet.
    pub fn save(&self, snap: Snapshot) {
        self.shared.slot.lock().pending = Some(snap);
        self.shared.wake.notify_one();
    }

    /// Writes what is pending, at once, and ends the thread. Later views are not
    /// written.
    pub fn stop(&self) {
        self.shared.slot.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The saver's thread: waits for a view, writes it, waits out the period.
fn run(shared: &Shared) {
    loop {
        let snap = {
            let mut slot = shared.slot.lock();
            while slot.pending.is_none() && !slot.stop {
                shared.wake.wait(&mut slot);
            }
            match slot.pending.take() {
                Some(s) => s,
                None => return,
            }
        };
        match write(&shared.dir, shared.store, &snap, SystemTime::now()) {
            Ok(()) => log::debug!(
                "saved view: {} nodes, {} policies",
                snap.nodes.len(),
                snap.policy.policies.len()
            ),
            Err(e) => log::warn!("saved view: writing it: {e}"),
        }
        let until = Instant::now() + shared.period;
        let mut slot = shared.slot.lock();
        while !slot.stop && !shared.wake.wait_until(&mut slot, until).timed_out() {}
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::control::config::Mode;
    use crate::mac::MacAddr;

    const CLUSTER: &str = "10.244.0.0/16";

    /// A scratch state directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("weft-saved-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("a scratch dir");
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn node(name: &str, n: u8) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            underlay_ip: Ipv4Addr::new(10, 250, 0, n),
            pod_subnet: format!("10.244.{n}.0/24").parse().expect("a subnet"),
            pod_subnet_v6: None,
            vtep_mac: MacAddr([2, 0, 0, 0, 0, n]),
            mode: Some(Mode::Vxlan),
            direct_routing: Some(false),
            public_key: Some(crate::control::keys::PublicKey([n; 32])),
        }
    }

    /// A policy isolating `app: db` for ingress, from `app: web` on TCP 5432 to
    /// 5440, with its pod.
    fn policy() -> PolicyModel {
        let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
            metadata: {name: db, namespace: prod}\n\
            spec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  \
            - from:\n    - podSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}\n    \
            - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}\n    \
            ports: [{port: 5432, endPort: 5440}]\n\
            ---\napiVersion: v1\nkind: Pod\nmetadata: {name: db-0, namespace: prod, labels: {app: db}}\n";
        let mut model = PolicyModel::default();
        manifest::read("test", yaml, &mut model).expect("a good manifest");
        model
    }

    fn snapshot(nodes: Vec<NodeEntry>, policy: PolicyModel, revision: i64) -> Snapshot {
        Snapshot {
            nodes: Arc::new(nodes),
            policy: Arc::new(policy),
            revision: Some(revision),
            services: None,
        }
    }

    fn cluster() -> Ipv4Net {
        CLUSTER.parse().expect("a CIDR")
    }

    fn read_back(d: &Dir) -> Result<Option<SavedView>, SavedError> {
        read(&d.0, "etcd", cluster())
    }

    /// Rewrites the saved file as `f` says.
    fn edit(d: &Dir, f: impl FnOnce(String) -> String) {
        let p = path(&d.0);
        let text = std::fs::read_to_string(&p).expect("the saved file");
        std::fs::write(&p, f(text)).expect("rewriting it");
    }

    #[test]
    fn a_view_reads_back_as_it_was_written() {
        let d = Dir::new("round");
        assert!(read_back(&d).expect("no file is no error").is_none());
        let at = UNIX_EPOCH + Duration::from_secs(1_748_779_200);
        let nodes = vec![node("a", 1), node("b", 2)];
        write(&d.0, "etcd", &snapshot(nodes.clone(), policy(), 42), at).expect("written");
        let v = read_back(&d).expect("read").expect("a view");
        assert_eq!(v.nodes, nodes);
        assert_eq!(v.policy, policy());
        assert_eq!((v.store.as_str(), v.revision), ("etcd", Some(42)));
        assert_eq!(v.saved_at_text(), "2025-06-01T12:00:00Z");
        assert!(v.dropped.is_empty(), "{:?}", v.dropped);
        assert!(load(&d.0, "etcd", cluster()).is_some());
    }

    #[test]
    fn a_new_view_replaces_the_old_whole_and_a_stale_temporary_file_is_ignored() {
        let d = Dir::new("replace");
        let now = SystemTime::now();
        write(
            &d.0,
            "etcd",
            &snapshot(vec![node("a", 1)], policy(), 1),
            now,
        )
        .expect("written");
        // A write that died half-way left its temporary file behind.
        std::fs::write(d.0.join(format!("{FILE}.tmp")), "{\"version\":1,\"nod").expect("junk");
        assert_eq!(
            read_back(&d).expect("read").expect("a view").revision,
            Some(1)
        );
        let empty = PolicyModel::default();
        write(
            &d.0,
            "etcd",
            &snapshot(vec![node("b", 2)], empty.clone(), 2),
            now,
        )
        .expect("again");
        let v = read_back(&d).expect("read").expect("a view");
        assert_eq!((v.revision, v.nodes[0].name.as_str()), (Some(2), "b"));
        assert_eq!(v.policy, empty);
        let names: Vec<String> = std::fs::read_dir(&d.0)
            .expect("the dir")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, [FILE], "only the view is left");
    }

    #[test]
    fn corrupt_truncated_foreign_and_oversized_files_are_errors_not_views() {
        let d = Dir::new("bad");
        let snap = snapshot(vec![node("a", 1)], policy(), 7);
        let good = || write(&d.0, "etcd", &snap, SystemTime::now()).expect("written");
        std::fs::write(path(&d.0), "not json at all").expect("junk");
        assert!(matches!(read_back(&d), Err(SavedError::Corrupt { .. })));
        assert!(load(&d.0, "etcd", cluster()).is_none());
        good();
        edit(&d, |t| t[..t.len() / 2].to_owned());
        assert!(matches!(read_back(&d), Err(SavedError::Corrupt { .. })));
        std::fs::write(path(&d.0), "{\"nodes\": []}").expect("foreign JSON");
        assert!(matches!(read_back(&d), Err(SavedError::Corrupt { .. })));
        good();
        edit(&d, |t| t.replacen("\"version\":1", "\"version\":2", 1));
        match read_back(&d) {
            Err(e @ SavedError::Version { found: 2, .. }) => {
                assert!(e.to_string().contains("reads version 1"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        good();
        assert!(matches!(
            read(&d.0, "kubernetes", cluster()),
            Err(SavedError::Store { .. })
        ));
        // A port range no manifest could hold: the whole policy is refused.
        edit(&d, |t| t.replacen("\"first\":5432", "\"first\":6000", 1));
        assert!(matches!(read_back(&d), Err(SavedError::Policy { .. })));
        let big = File::create(path(&d.0)).expect("the file");
        big.set_len(MAX_SIZE + 1).expect("a sparse file");
        assert!(matches!(read_back(&d), Err(SavedError::TooLarge { .. })));
    }

    #[test]
    fn nodes_that_fail_the_stores_checks_are_left_out_with_why() {
        let d = Dir::new("nodes");
        let mut outside = node("outside", 3);
        outside.pod_subnet = "10.99.0.0/24".parse().expect("a subnet");
        let mut thief = node("thief", 4);
        thief.pod_subnet = node("a", 1).pod_subnet;
        let mut group = node("group", 5);
        group.vtep_mac = MacAddr([1, 0, 0, 0, 0, 5]);
        let nodes = vec![
            node("a", 1),
            outside,
            thief,
            group,
            node("a", 6),
            node("", 7),
            node("b", 2),
        ];
        write(
            &d.0,
            "etcd",
            &snapshot(nodes, policy(), 3),
            SystemTime::now(),
        )
        .expect("written");
        let v = read_back(&d).expect("read").expect("a view");
        let kept: Vec<&str> = v.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(kept, ["a", "b"]);
        let why = |name: &str| {
            v.dropped
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, w)| w.clone())
                .unwrap_or_else(|| panic!("{name} not dropped: {:?}", v.dropped))
        };
        assert!(why("outside").contains("no subnet of the cluster CIDR"));
        assert!(why("thief").contains("overlaps a's"));
        assert!(why("group").contains("group address"));
        assert!(why("a").contains("listed twice"));
        assert!(why("").contains("a name of 0 bytes"));
    }

    #[test]
    fn the_saver_writes_the_newest_view_at_most_once_a_period_and_as_it_stops() {
        let d = Dir::new("saver");
        let saver =
            Saver::with_period(d.0.clone(), "etcd", Duration::from_secs(3600)).expect("a saver");
        saver.save(snapshot(vec![node("a", 1)], policy(), 1));
        let start = Instant::now();
        while !path(&d.0).exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "nothing written");
            std::thread::sleep(Duration::from_millis(5));
        }
        let first = read_back(&d).expect("read").expect("a view").revision;
        assert_eq!(first, Some(1));
        for rev in 2..=5 {
            saver.save(snapshot(vec![node("a", 1)], policy(), rev));
        }
        std::thread::sleep(Duration::from_millis(50));
        let rev = read_back(&d).expect("read").expect("a view").revision;
        assert_eq!(rev, Some(1), "written again within the period");
        saver.stop();
        let rev = read_back(&d).expect("read").expect("a view").revision;
        assert_eq!(rev, Some(5), "the newest view, as the saver stopped");
        // Stopped, it writes no more.
        saver.save(snapshot(vec![node("a", 1)], policy(), 6));
        drop(saver);
        let rev = read_back(&d).expect("read").expect("a view").revision;
        assert_eq!(rev, Some(5));
    }

    /// The Service `default/web` (ClusterIP 10.96.0.10, port 80 to 8080) and its
    /// slice, with one ready endpoint, read as a store reads them.
    fn services() -> ServiceModel {
        use crate::services::read;
        let web = read::service_value(
            "default",
            "web",
            serde_json::json!({"clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP",
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        )
        .expect("a Service");
        let labels = [(read::SERVICE_NAME_LABEL.to_owned(), "web".to_owned())].into();
        let slice = read::slice_value(
            "default",
            "web-a",
            &labels,
            serde_json::json!({"addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.2.5"], "nodeName": "b"}],
                "ports": [{"name": "http", "port": 8080}]}),
        )
        .expect("a slice");
        ServiceModel {
            services: [web].into_iter().collect(),
            slices: [slice].into_iter().collect(),
            bad: Vec::new(),
        }
    }

    /// Services and EndpointSlices are saved with the view and read back as
    /// they were (the objects that did not read are not saved); a view saved
    /// without them (a store that holds none, or a file an earlier weftd wrote)
    /// reads, with none.
    #[test]
    fn services_read_back_and_a_view_without_them_still_reads() {
        let d = Dir::new("svc");
        let mut with_bad = services();
        with_bad.bad.push(crate::services::model::BadObject {
            kind: "Service".into(),
            id: "default/junk".into(),
            source: "/weft/v1/services/default/junk".into(),
            why: "not JSON".into(),
        });
        let mut snap = snapshot(vec![node("a", 1)], policy(), 4);
        snap.services = Some(Arc::new(with_bad));
        write(&d.0, "etcd", &snap, SystemTime::now()).expect("written");
        let v = read_back(&d).expect("read").expect("a view");
        assert_eq!(v.services, Some(services()));
        assert_eq!((v.policy, v.revision), (policy(), Some(4)));
        // Written as before: for its owner only.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(&d.0))
            .expect("the file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // As an earlier weftd wrote it: no services field at all.
        write(
            &d.0,
            "etcd",
            &snapshot(vec![node("a", 1)], policy(), 5),
            SystemTime::now(),
        )
        .expect("written");
        let text = std::fs::read_to_string(path(&d.0)).expect("the file");
        assert!(!text.contains("\"services\""), "{text}");
        let v = read_back(&d).expect("read").expect("a view");
        assert_eq!((v.services, v.revision), (None, Some(5)));
    }

    /// A saved Services part that no store could have handed over refuses the
    /// whole view, as bad policy does: what is left is no saved view at all
    /// (the node starts as with none), never a view without its Services.
    #[test]
    fn hostile_services_in_the_file_refuse_the_view() {
        let d = Dir::new("svcbad");
        let snap = Snapshot {
            services: Some(Arc::new(services())),
            ..snapshot(vec![node("a", 1)], policy(), 6)
        };
        let good = || write(&d.0, "etcd", &snap, SystemTime::now()).expect("written");
        good();
        assert!(read_back(&d).expect("the control reads").is_some());
        for (from, to, why) in [
            (
                "\"port\":80",
                "\"port\":0",
                "its Services: Service default/web",
            ),
            ("\"10.244.2.5\"", "\"127.0.0.1\"", ""),
            (
                "\"node_name\":\"b\"",
                "\"node_name\":\"../b\"",
                "is not a node name",
            ),
            (
                "\"name\":\"web-a\"",
                "\"name\":\"web\\nx\"",
                "is not a valid object name",
            ),
            (
                "\"slices\":[",
                "\"slices\":7,\"x\":[",
                "is not a saved view",
            ),
        ] {
            good();
            edit(&d, |t| {
                assert!(t.contains(from), "{from} in {t}");
                t.replacen(from, to, 1)
            });
            match read_back(&d) {
                // A loopback endpoint is a slice any store may hold: the
                // compiler refuses it, by name, as it does a store's.
                Ok(Some(v)) if why.is_empty() => {
                    assert!(v.services.is_some());
                }
                Err(e) if !why.is_empty() => {
                    let text = e.to_string();
                    assert!(text.contains(why), "{text} does not say {why}");
                    assert!(load(&d.0, "etcd", cluster()).is_none());
                }
                other => panic!("{from} -> {to}: {other:?}"),
            }
        }
        let mut twice = services();
        let web = twice.services[0].clone();
        twice.services.push(web);
        let snap = Snapshot {
            services: Some(Arc::new(twice)),
            ..snap.clone()
        };
        write(&d.0, "etcd", &snap, SystemTime::now()).expect("written");
        let e = read_back(&d).expect_err("a Service twice").to_string();
        assert!(
            e.ends_with("its Services: Service default/web is defined twice"),
            "{e}"
        );
    }

    #[test]
    fn utc_times_are_rfc_3339() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_709_251_199), "2024-02-29T23:59:59Z");
    }
}
