//! kube-rs, unchanged, against the project's API server fixture
//! (`weft_perf::apiserver`): the fixture must speak the list/watch protocol well
//! enough that the real client's watcher pages, watches, relists after 410 Gone,
//! and patches a Node as it would against a real API server. The fixture's JSON
//! is written here as literal documents, never serialized by the client's types.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;
use weft_perf::apiserver::http::{Logged, Server};
use weft_perf::apiserver::KINDS;
use weft_switch::control::store::kube::objects::SlimPod;
use weft_switch::control::store::kube::{client, Credentials};

const TOKEN: &str = "fixture-token";
const NODES: weft_perf::apiserver::Kind = KINDS[0];
const PODS: weft_perf::apiserver::Kind = KINDS[1];

fn node(name: &str, cidr: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name},
                     "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "192.168.0.1"},
                          {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": "2026-12-07T00:00:00Z",
                            "lastTransitionTime": "2026-12-07T00:00:00Z"}]
        }
    })
}

struct Fixture {
    server: Server,
    dir: std::path::PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let server = Server::start("127.0.0.1:0".parse().unwrap(), TOKEN).expect("the fixture");
        let dir = std::env::temp_dir().join(format!("weft-kube-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Fixture { server, dir }
    }

    async fn client(&self, token: &str) -> kube::Client {
        let path = self.dir.join("kubeconfig");
        std::fs::write(&path, self.server.kubeconfig(token)).unwrap();
        client(&Credentials::Kubeconfig(path), None)
            .await
            .expect("a client")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits (at most 20 s) until the store's names are `want`, sorted.
async fn until_names(store: &reflector::Store<Node>, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut names: Vec<String> = store.state().iter().map(|n| n.name_any()).collect();
        names.sort();
        if names == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store holds {names:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_pages_watches_and_relists_after_410() {
    let f = Fixture::new("watch");
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        f.server
            .put(NODES, node(n, &format!("10.244.{}.0/24", i + 1)));
    }
    let client = f.client(TOKEN).await;
    let (store, writer) = reflector::store::<Node>();
    let config = watcher::Config::default().page_size(2).timeout(5);
    let stream = watcher(Api::<Node>::all(client), config)
        .default_backoff()
        .modify(|n| n.metadata.managed_fields = None)
        .reflect(writer)
        .applied_objects();
    let driver = tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    until_names(&store, &["a", "b", "c"]).await;
    assert!(store
        .state()
        .iter()
        .all(|n| n.metadata.managed_fields.is_none()));
    let lists = |f: &Fixture| f.server.log().iter().filter(|l| l.verb == "list").count();
    assert_eq!(lists(&f), 2, "three nodes in pages of two");

    // Live changes through the watch.
    f.server.put(NODES, node("d", "10.244.4.0/24"));
    f.server.delete(NODES, "", "a");
    until_names(&store, &["b", "c", "d"]).await;

    // The watch breaks while the history is compacted, and a node is deleted
    // meanwhile: the watcher's new watch gets 410, it relists, and the deleted
    // node is gone from the store.
    f.server.with_state(|s| {
        s.delete(NODES, "", "b");
        s.compact();
    });
    f.server.drop_watches();
    until_names(&store, &["c", "d"]).await;
    assert!(lists(&f) >= 3, "a relist: {:?}", f.server.log());
    driver.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_patch_keeps_kubelets_ready_condition() {
    let f = Fixture::new("patch");
    f.server.put(NODES, node("a", "10.244.1.0/24"));
    let nodes: Api<Node> = Api::all(f.client(TOKEN).await);
    let annotations = json!({"metadata": {"annotations": {"weft.dev/underlay-ip": "192.168.0.1"}}});
    nodes
        .patch("a", &PatchParams::default(), &Patch::Merge(&annotations))
        .await
        .expect("an annotation patch");
    let condition = json!({"status": {"conditions": [{
        "type": "NetworkUnavailable", "status": "False", "reason": "WeftIsUp",
        "message": "weft forwards", "lastHeartbeatTime": "2026-12-07T00:00:01Z",
        "lastTransitionTime": "2026-12-07T00:00:01Z"}]}});
    let patched = nodes
        .patch_status("a", &PatchParams::default(), &Patch::Strategic(&condition))
        .await
        .expect("a status patch");
    let conditions = patched.status.unwrap().conditions.unwrap();
    let types: Vec<_> = conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Ready", "NetworkUnavailable"]);
    let got = nodes.get("a").await.unwrap();
    assert_eq!(got.annotations()["weft.dev/underlay-ip"], "192.168.0.1");
    assert!(nodes.get("nope").await.is_err());
    // Server-side apply is refused: the fixture does not model field ownership.
    let apply = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "a"}});
    let applied = nodes
        .patch("a", &PatchParams::apply("weftd"), &Patch::Apply(&apply))
        .await;
    assert!(
        matches!(&applied, Err(kube::Error::Api(s)) if s.code == 415),
        "{applied:?}"
    );
    let log = f.server.log();
    let patched = |resource: &str| {
        log.contains(&Logged {
            verb: "patch",
            resource: resource.into(),
        })
    };
    assert!(patched("nodes") && patched("nodes/status"), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slim_pods_list_and_a_wrong_token_is_refused() {
    let f = Fixture::new("pods");
    f.server.put(
        PODS,
        json!({"metadata": {"name": "p", "namespace": "x", "labels": {"app": "web"},
                            "managedFields": [{"manager": "kubelet"}]},
               "spec": {"nodeName": "a", "containers": [{"name": "c", "image": "i",
                        "ports": [{"name": "http", "containerPort": 80}]}]},
               "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.5"}]}}),
    );
    let pods: Api<SlimPod> = Api::all(f.client(TOKEN).await);
    let list = pods.list(&Default::default()).await.expect("a list");
    assert_eq!(list.items.len(), 1);
    let p = &list.items[0];
    assert_eq!(p.ips(), ["10.244.1.5"]);
    assert_eq!(p.metadata.labels.as_ref().unwrap()["app"], "web");

    // What the fixture does not implement, it refuses rather than ignores.
    let selected = pods
        .list(&kube::api::ListParams::default().labels("app=web"))
        .await;
    assert!(
        matches!(&selected, Err(kube::Error::Api(s)) if s.code == 400),
        "{selected:?}"
    );

    let intruder: Api<Node> = Api::all(f.client("not-the-token").await);
    let refused = intruder.list(&Default::default()).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 401),
        "{refused:?}"
    );
}

/// `[kubernetes] api-server` replaces the address the credentials give (as the
/// kubelet's `kubernetes` Service ClusterIP would be, which the switch cannot
/// translate before it has read the API server): a kubeconfig naming a dead
/// address reaches the fixture with it, and fails without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_setting_replaces_the_credentials_address() {
    let f = Fixture::new("apiserver");
    f.server.put(NODES, node("a", "10.244.1.0/24"));
    let real = format!("https://{}", f.server.addr());
    let dead = f
        .server
        .kubeconfig(TOKEN)
        .replace(&real, "https://127.0.0.1:9");
    assert_ne!(
        dead,
        f.server.kubeconfig(TOKEN),
        "the kubeconfig names the fixture"
    );
    let path = f.dir.join("dead-kubeconfig");
    std::fs::write(&path, dead).unwrap();
    let credentials = Credentials::Kubeconfig(path);
    let uri: http::Uri = real.parse().unwrap();
    let nodes: Api<Node> = Api::all(client(&credentials, Some(&uri)).await.unwrap());
    assert_eq!(
        nodes.list(&Default::default()).await.unwrap().items.len(),
        1
    );
    let nowhere: Api<Node> = Api::all(client(&credentials, None).await.unwrap());
    assert!(nowhere.list(&Default::default()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_kubeconfig_is_a_clear_error() {
    let Err(err) = client(
        &Credentials::Kubeconfig("/nonexistent/kubeconfig".into()),
        None,
    )
    .await
    else {
        panic!("a client from no file");
    };
    let text = err.to_string();
    assert!(text.contains("/nonexistent/kubeconfig"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_goes_away_and_comes_back_with_its_objects() {
    let mut f = Fixture::new("pause");
    f.server.put(NODES, node("a", "10.244.1.0/24"));
    let nodes: Api<Node> = Api::all(f.client(TOKEN).await);
    assert_eq!(
        nodes.list(&Default::default()).await.unwrap().items.len(),
        1
    );
    let addr = f.server.addr();
    f.server.pause();
    assert!(nodes.list(&Default::default()).await.is_err(), "it is gone");
    f.server.resume().expect("back on the same address");
    assert_eq!(f.server.addr(), addr);
    let back = nodes
        .list(&Default::default())
        .await
        .expect("a list once back");
    assert_eq!(back.items[0].name_any(), "a");
}
