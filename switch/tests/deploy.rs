//! `deploy/kubernetes/` holds together: the manifests parse, the DaemonSet's
//! containers, variables, volumes and mounts refer to things that exist and to the
//! paths the installer and weftd use, the ConfigMap's weftd.toml is settings weftd
//! accepts and its conflist a config weft-cni accepts, aimed at weftd's socket, and the
//! Containerfile copies what the workspace builds. The installer itself runs here,
//! against temporary directories; the podman test builds the image from the
//! Containerfile and runs the installer inside it.
//!
//! There is no Kubernetes API server on the test machine, so nothing here applies the
//! manifests to a cluster: this is what can be checked without one.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_cni::config::NetConf;
use weft_switch::control::config::{Options, StoreSettings};
use weft_switch::control::store::kube::Credentials;
use yaml_serde::Value;

fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn read(name: &str) -> String {
    let path = kubernetes_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of every manifest, with the file it came from.
fn manifests() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for file in [
        "configmap.yaml",
        "rbac.yaml",
        "admission.yaml",
        "daemonset.yaml",
        "podmonitor.yaml",
    ] {
        let text = read(file);
        for (i, doc) in yaml_serde::Deserializer::from_str(&text).enumerate() {
            let value = <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file}, document {i}: {e}"));
            docs.push((file.to_owned(), value));
        }
    }
    docs
}

fn of_kind<'a>(docs: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "one {kind} in deploy/kubernetes");
    found[0]
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

fn seq<'a>(v: &'a Value, what: &str) -> &'a [Value] {
    v.as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what} is not a list: {v:?}"))
}

/// The ConfigMap's files.
fn config_data(docs: &[(String, Value)]) -> BTreeMap<String, String> {
    let cm = of_kind(docs, "ConfigMap");
    cm["data"]
        .as_mapping()
        .expect("ConfigMap data")
        .iter()
        .map(|(k, v)| (str_of(k, "key").to_owned(), str_of(v, "value").to_owned()))
        .collect()
}

/// The default of `VAR` in install-cni.sh (`${VAR:-default}`).
fn installer_default(var: &str) -> String {
    let script = read("install-cni.sh");
    let needle = format!("${{{var}:-");
    let start = script
        .find(&needle)
        .unwrap_or_else(|| panic!("{var} in install-cni.sh"))
        + needle.len();
    let end = start + script[start..].find('}').expect("closing brace");
    script[start..end].to_owned()
}

#[test]
fn manifests_hold_together() {
    let docs = manifests();
    let kinds: BTreeSet<&str> = docs
        .iter()
        .map(|(_, d)| str_of(&d["kind"], "kind"))
        .collect();
    let want: BTreeSet<&str> = [
        "ConfigMap",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "DaemonSet",
        "PodMonitor",
    ]
    .into();
    assert_eq!(kinds, want);
    for (file, d) in &docs {
        assert!(d["apiVersion"].as_str().is_some(), "{file}: apiVersion");
        assert!(
            d["metadata"]["name"].as_str().is_some(),
            "{file}: metadata.name"
        );
    }

    let ds = of_kind(&docs, "DaemonSet");
    let cm = of_kind(&docs, "ConfigMap");
    let sa = of_kind(&docs, "ServiceAccount");
    let namespace = str_of(&ds["metadata"]["namespace"], "DaemonSet namespace");
    assert_eq!(cm["metadata"]["namespace"].as_str(), Some(namespace));
    assert_eq!(sa["metadata"]["namespace"].as_str(), Some(namespace));
    let pod = &ds["spec"]["template"];
    let selector = &ds["spec"]["selector"]["matchLabels"];
    for (k, v) in selector.as_mapping().expect("selector") {
        assert_eq!(
            &pod["metadata"]["labels"][str_of(k, "label")],
            v,
            "the selector selects the pods"
        );
    }
    let spec = &pod["spec"];
    assert_eq!(
        spec["hostNetwork"].as_bool(),
        Some(true),
        "weftd owns weft0 and the tunnel in the host"
    );
    assert_eq!(
        spec["hostPID"].as_bool(),
        Some(true),
        "kubelet names pod namespaces by /proc paths"
    );
    assert_eq!(spec["serviceAccountName"], sa["metadata"]["name"]);
    let binding = of_kind(&docs, "ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"]["name"],
        of_kind(&docs, "ClusterRole")["metadata"]["name"]
    );
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    // The one write the role grants is patch, of Nodes (switch/tests/kube.rs holds
    // the rules to what weftd asks for); admission.yaml keeps it to weftd's own
    // Node and annotations.
    for rule in seq(&of_kind(&docs, "ClusterRole")["rules"], "rules") {
        for verb in seq(&rule["verbs"], "verbs") {
            let verb = str_of(verb, "verb");
            let nodes = seq(&rule["resources"], "resources")
                .iter()
                .all(|r| ["nodes", "nodes/status"].contains(&str_of(r, "resource")));
            assert!(
                ["get", "list", "watch"].contains(&verb) || (verb == "patch" && nodes),
                "{verb:?} on {:?}",
                rule["resources"]
            );
        }
    }
    // Each admission policy has its binding.
    let named = |kind: &str| -> BTreeSet<String> {
        (docs.iter())
            .map(|(_, d)| d)
            .filter(|d| d["kind"].as_str() == Some(kind))
            .map(|d| match kind {
                "ValidatingAdmissionPolicy" => str_of(&d["metadata"]["name"], "name").to_owned(),
                _ => str_of(&d["spec"]["policyName"], "policyName").to_owned(),
            })
            .collect()
    };
    let policies = named("ValidatingAdmissionPolicy");
    assert_eq!(policies.len(), 2);
    assert_eq!(policies, named("ValidatingAdmissionPolicyBinding"));

    // Volumes: every mount names a volume, the ConfigMap volume names the ConfigMap.
    let volumes: BTreeMap<&str, &Value> = seq(&spec["volumes"], "volumes")
        .iter()
        .map(|v| (str_of(&v["name"], "volume name"), v))
        .collect();
    assert_eq!(
        volumes["config"]["configMap"]["name"],
        cm["metadata"]["name"]
    );
    let host_path = |volume: &str| str_of(&volumes[volume]["hostPath"]["path"], volume).to_owned();
    assert_eq!(host_path("cni-bin"), "/opt/cni/bin");
    assert_eq!(host_path("cni-conf"), "/etc/cni/net.d");

    let mut containers: BTreeMap<String, &Value> = BTreeMap::new();
    for list in ["initContainers", "containers"] {
        for c in seq(&spec[list], list) {
            containers.insert(str_of(&c["name"], "container name").to_owned(), c);
        }
    }
    assert_eq!(
        containers.keys().map(String::as_str).collect::<Vec<_>>(),
        ["cni-config", "install-cni", "weftd"]
    );
    let mounts = |c: &str| -> BTreeMap<String, String> {
        seq(&containers[c]["volumeMounts"], "volumeMounts")
            .iter()
            .map(|m| {
                let name = str_of(&m["name"], "mount name");
                assert!(
                    volumes.contains_key(name),
                    "{c} mounts {name}, which is no volume"
                );
                (
                    str_of(&m["mountPath"], "mountPath").to_owned(),
                    name.to_owned(),
                )
            })
            .collect()
    };
    for c in containers.values() {
        assert!(
            c["image"].as_str().is_some(),
            "every container has an image"
        );
    }

    // The installer: its default directories are where the DaemonSet mounts the host's.
    assert_eq!(
        containers["install-cni"]["command"][1].as_str(),
        Some("binary")
    );
    assert_eq!(
        mounts("install-cni")[&installer_default("CNI_BIN_DIR")],
        "cni-bin"
    );
    assert_eq!(
        containers["cni-config"]["command"][1].as_str(),
        Some("config")
    );
    let cni_config = mounts("cni-config");
    assert_eq!(cni_config[&installer_default("CNI_CONF_DIR")], "cni-conf");
    let conflist_path = PathBuf::from(installer_default("WEFT_CONFLIST"));
    assert_eq!(
        cni_config[conflist_path.parent().unwrap().to_str().unwrap()],
        "config"
    );
    let data = config_data(&docs);
    let conflist_text = &data[conflist_path.file_name().unwrap().to_str().unwrap()];
    let installer_socket = PathBuf::from(installer_default("WEFT_SOCKET"));
    assert_eq!(
        cni_config[installer_socket.parent().unwrap().to_str().unwrap()],
        "run-weft"
    );

    // weftd: its flags reference only variables the container defines, and its
    // config file is the ConfigMap's weftd.toml.
    let weftd = containers["weftd"];
    assert_eq!(weftd["securityContext"]["privileged"].as_bool(), Some(true));
    let env: BTreeSet<&str> = seq(&weftd["env"], "env")
        .iter()
        .map(|e| str_of(&e["name"], "env name"))
        .collect();
    let command: Vec<&str> = seq(&weftd["command"], "command")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    assert_eq!(command[0], "weftd");
    let mut config_file = None;
    for arg in &command[1..] {
        let mut rest = *arg;
        while let Some(i) = rest.find("$(") {
            let end = rest[i..].find(')').expect("closing parenthesis") + i;
            let var = &rest[i + 2..end];
            assert!(
                env.contains(var),
                "weftd's {arg} uses ${var}, which is not in its env"
            );
            rest = &rest[end..];
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            config_file = Some(PathBuf::from(path));
        }
    }
    let config_file = config_file.expect("weftd --config=");
    let weftd_mounts = mounts("weftd");
    assert_eq!(
        weftd_mounts[config_file.parent().unwrap().to_str().unwrap()],
        "config"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        let argv: Vec<&str> = seq(&weftd[probe]["exec"]["command"], probe)
            .iter()
            .map(|a| str_of(a, "arg"))
            .collect();
        assert_eq!(argv[0], "weft", "{probe}");
        assert_eq!(argv[argv.len() - 1], "status", "{probe}");
    }

    // weftd.toml as weftd reads it, with what the DaemonSet adds as flags.
    let scratch = tempdir("weft-deploy-toml");
    let toml_path = scratch.join("weftd.toml");
    std::fs::write(
        &toml_path,
        &data[config_file.file_name().unwrap().to_str().unwrap()],
    )
    .unwrap();
    let text = &data[config_file.file_name().unwrap().to_str().unwrap()];
    let (file, flat) =
        Options::from_toml("weftd.toml", text).expect("the ConfigMap's weftd.toml parses");
    assert!(
        flat.is_empty(),
        "the ConfigMap's weftd.toml is in sections: {flat:?}"
    );
    assert_eq!(
        Options::from_file(&toml_path).expect("the file parses"),
        file
    );
    // The DaemonSet's own flags, as the kubelet expands them.
    let flags = command[1..]
        .iter()
        .filter(|a| !a.starts_with("--config="))
        .map(|a| {
            a.replace("$(NODE_NAME)", "node-1")
                .replace("$(HOST_IP)", "10.0.0.21")
        });
    let settings = file
        .with_flags(flags)
        .expect("the DaemonSet's flags parse")
        .resolve()
        .expect("the ConfigMap's settings resolve");
    assert_eq!(
        (
            settings.node_name.as_str(),
            settings.underlay_ip.to_string()
        ),
        ("node-1", "10.0.0.21".to_string())
    );
    let StoreSettings::Kubernetes(kube) = &settings.store else {
        panic!("the DaemonSet runs on the API server: {:?}", settings.store)
    };
    assert_eq!(
        kube.credentials,
        Credentials::InCluster,
        "weftd uses its service account"
    );
    assert_eq!(spec["automountServiceAccountToken"].as_bool(), Some(true));
    assert_eq!(spec["serviceAccountName"].as_str(), Some("weft"));
    // The etcd Secret is there for store = "etcd", and optional.
    assert_eq!(
        volumes["etcd-tls"]["secret"]["optional"].as_bool(),
        Some(true),
        "the etcd Secret is optional"
    );
    assert!(settings.tunnel.direct_routing);
    // The commented dual-stack key works as written, uncommented.
    let dual = text.replace("# cluster-cidr-v6 = ", "cluster-cidr-v6 = ");
    assert_ne!(&dual, text, "the ConfigMap shows cluster-cidr-v6");
    let (dual, _) = Options::from_toml("weftd.toml", &dual).expect("dual stack parses");
    let flags = ["--node-name=node-1", "--underlay-ip=10.0.0.21"].map(String::from);
    let v6 = (dual.with_flags(flags).expect("flags").resolve())
        .expect("dual stack resolves")
        .ipv6
        .expect("dual stack");
    assert_eq!(
        (v6.subnet, v6.cluster.to_string().as_str()),
        (None, "fd00:10:244::/56")
    );
    assert_eq!(
        settings.pod_subnet, None,
        "every node claims its own subnet"
    );
    assert_eq!(
        settings.socket, installer_socket,
        "the installer waits on weftd's socket"
    );
    assert_eq!(
        weftd_mounts[settings.socket.parent().unwrap().to_str().unwrap()],
        "run-weft"
    );
    assert_eq!(weftd_mounts[settings.state_dir.to_str().unwrap()], "state");
    assert_eq!(
        host_path("run-weft"),
        settings.socket.parent().unwrap().to_str().unwrap(),
        "weft-cni on the host finds the socket where weftd made it"
    );

    // Metrics: on the node's address, at the port the DaemonSet names `metrics`
    // and annotates for Prometheus, which the PodMonitor scrapes.
    let metrics = settings.observability.metrics_addr.expect("metrics on");
    assert_eq!(metrics.to_string(), "10.0.0.21:9402");
    let port = seq(&weftd["ports"], "ports")
        .iter()
        .find(|p| p["name"].as_str() == Some("metrics"))
        .expect("a metrics port");
    assert_eq!(
        port["containerPort"].as_u64(),
        Some(u64::from(metrics.port()))
    );
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some("9402"));
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    let monitor = of_kind(&docs, "PodMonitor");
    assert_eq!(monitor["metadata"]["namespace"].as_str(), Some(namespace));
    assert_eq!(&monitor["spec"]["selector"]["matchLabels"], selector);
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"].as_str(), Some("metrics"));
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));

    // The conflist as a runtime hands weft-cni its plugin config.
    let list: serde_json::Value =
        serde_json::from_str(conflist_text).expect("the conflist is JSON");
    let mut plugin = list["plugins"][0].clone();
    plugin["cniVersion"] = list["cniVersion"].clone();
    plugin["name"] = list["name"].clone();
    let conf = NetConf::parse(
        plugin.to_string().as_bytes(),
        &[weft_cni::config::PLUGIN_TYPE],
    )
    .expect("weft-cni accepts the conflist");
    assert_eq!(
        conf.socket, settings.socket,
        "weft-cni asks the weftd the DaemonSet runs"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn containerfile_copies_the_workspace_binaries() {
    let text = read("Containerfile");
    let bins: BTreeSet<String> = ["weftd", "weft", "weft-cni"]
        .iter()
        .map(|b| format!("target/release/{b}"))
        .collect();
    let mut copied = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for src in &words[1..words.len() - 1] {
            if src.starts_with("target/") {
                copied.insert((*src).to_owned());
            } else {
                let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(src);
                assert!(
                    path.is_file(),
                    "the Containerfile copies {src}, which is missing"
                );
            }
        }
    }
    assert_eq!(copied, bins);
    // And those are the workspace's binaries.
    for bin in [env!("CARGO_BIN_EXE_weftd"), env!("CARGO_BIN_EXE_weft")] {
        assert!(Path::new(bin).is_file(), "{bin}");
    }
    assert!(text.contains("COPY deploy/kubernetes/install-cni.sh /usr/local/bin/weft-install-cni"));
}

/// A directory under the system's temporary directory, fresh.
fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs install-cni.sh with `args` and `env`, killing it after `bound`; returns its
/// exit code (None if it had to be killed) and its stderr.
fn installer(args: &[&str], env: &[(&str, &Path)], bound: Duration) -> (Option<i32>, String) {
    let script = kubernetes_dir().join("install-cni.sh");
    let err = tempfile_path("installer-err");
    let mut cmd = Command::new("sh");
    cmd.arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd.stderr(std::fs::File::create(&err).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("sh");
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > bound {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let _ = std::fs::remove_file(&err);
    (code, stderr)
}

fn tempfile_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "weft-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn installer_installs_atomically_and_waits_for_weftd() {
    let dir = tempdir("weft-deploy-installer");
    let (bin_dir, conf_dir) = (dir.join("bin"), dir.join("net.d"));
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_weft"));
    let conflist = dir.join("10-weft.conflist");
    std::fs::write(&conflist, "{\"name\": \"weft\"}\n").unwrap();
    let t = Duration::from_secs(20);

    // binary: the plugin, whole and executable, nothing else in the directory.
    let (code, err) = installer(
        &["binary"],
        &[("CNI_BIN_DIR", &bin_dir), ("WEFT_CNI", &plugin)],
        t,
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(entries(&bin_dir), ["weft-cni"]);
    let installed = bin_dir.join("weft-cni");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&plugin).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // Again, over the running copy: still one whole file.
    let (code, err) = installer(
        &["binary"],
        &[("CNI_BIN_DIR", &bin_dir), ("WEFT_CNI", &plugin)],
        t,
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(entries(&bin_dir), ["weft-cni"]);

    // A missing plugin: a clear error, nothing written.
    let missing = dir.join("nope");
    let (code, err) = installer(
        &["binary"],
        &[("CNI_BIN_DIR", &conf_dir), ("WEFT_CNI", &missing)],
        t,
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("nope: no such file"), "{err}");
    assert!(entries(&conf_dir).is_empty());

    // config while weftd does not answer: it waits, and installs nothing, so the
    // node never reports a network it cannot serve.
    let no = PathBuf::from("/bin/false");
    let env = [
        ("CNI_CONF_DIR", conf_dir.as_path()),
        ("WEFT_CONFLIST", &conflist),
        ("WEFT", &no),
    ];
    let (code, err) = installer(&["config"], &env, Duration::from_secs(3));
    assert_eq!(code, None, "it must keep waiting: {err}");
    assert!(err.contains("waiting for weftd"), "{err}");
    assert!(entries(&conf_dir).is_empty(), "{:?}", entries(&conf_dir));

    // Once weftd answers: the conflist, readable by the runtime; WEFT_STAY=0 exits.
    let yes = PathBuf::from("/bin/true");
    let zero = PathBuf::from("0");
    let env = [
        ("CNI_CONF_DIR", conf_dir.as_path()),
        ("WEFT_CONFLIST", &conflist),
        ("WEFT", &yes),
        ("WEFT_STAY", &zero),
    ];
    let (code, err) = installer(&["config"], &env, t);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(entries(&conf_dir), ["10-weft.conflist"]);
    let installed = conf_dir.join("10-weft.conflist");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&conflist).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // Anything else is a usage error.
    let (code, err) = installer(&["frobnicate"], &[], t);
    assert_eq!(code, Some(2));
    assert!(err.contains("usage"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
