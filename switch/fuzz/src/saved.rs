//! The view a node saved in its state directory (`view.json`), as a node reads
//! it back at boot: whoever can write the state directory, or a disk that
//! corrupts it, controls these bytes.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use weft_switch::control::saved::{self, Snapshot};
use weft_switch::services::recheck;

/// The store the views are read for.
const STORE: &str = "etcd";

/// Reads `data` as a saved view.
///
/// Panics if anything panics, or if a view that reads does not hold what the
/// read promises: its policy passes `PolicyModel::check`, its Services pass
/// `recheck::check` and compile (with and without a Service CIDR) into a table
/// that passes `ServiceTable::check`, using nothing it refused; and, written
/// again, it reads back the same, with no node left out.
pub fn saved_view(data: &[u8]) {
    let Ok(v) = saved::decode(data, "view.json", STORE, super::cluster()) else {
        return;
    };
    v.policy
        .check()
        .unwrap_or_else(|e| panic!("a saved policy that read fails its check: {e}"));
    if let Some(m) = &v.services {
        recheck::check(m).unwrap_or_else(|e| panic!("saved Services that read fail: {e}"));
        super::check_service_table(m);
    }
    let snap = Snapshot {
        nodes: Arc::new(v.nodes.clone()),
        policy: Arc::new(v.policy.clone()),
        revision: v.revision,
        services: v.services.clone().map(Arc::new),
    };
    let at = UNIX_EPOCH
        .checked_add(Duration::from_secs(v.saved_at))
        .unwrap_or(UNIX_EPOCH);
    let bytes = saved::encode(STORE, &snap, at).expect("a view that read is written");
    let again = saved::decode(&bytes, "view.json", STORE, super::cluster())
        .unwrap_or_else(|e| panic!("a view written again does not read: {e}"));
    assert_eq!(again.nodes, v.nodes, "the nodes, read back");
    assert!(again.dropped.is_empty(), "{:?}", again.dropped);
    assert_eq!(again.policy, v.policy, "the policy, read back");
    assert_eq!(again.services, v.services, "the Services, read back");
    assert_eq!(again.revision, v.revision);
}
