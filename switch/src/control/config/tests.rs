use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

/// Parses a config file's text, and the flat keys it used.
fn parse(text: &str) -> Result<(Options, Vec<FlatKey>), String> {
    Options::from_toml("test.toml", text).map_err(|e| e.to_string())
}

/// Parses and resolves a config file's text.
fn settings(text: &str) -> Result<Settings, String> {
    parse(text)?.0.resolve().map_err(|e| e.to_string())
}

const HEAD: &str =
    "node-name = \"a\"\nunderlay-ip = \"10.250.0.1\"\ncluster-cidr = \"10.244.0.0/16\"\n";

fn base() -> Options {
    let text = format!("{HEAD}pod-subnet = \"10.244.1.0/24\"\n");
    let (options, flat) = parse(&text).unwrap();
    assert!(flat.is_empty());
    options
}

#[test]
fn defaults() {
    let s = base().resolve().unwrap();
    assert_eq!(s.tunnel.mode, Mode::Vxlan);
    assert!(!s.tunnel.direct_routing);
    assert_eq!((s.tunnel.vni.get(), s.tunnel.port), (1, 8472));
    assert_eq!(
        gateway_of(s.pod_subnet.unwrap()),
        Ipv4Addr::new(10, 244, 1, 1)
    );
    assert_eq!(s.pod_mtu(), 1450);
    assert_eq!(s.socket, Path::new("/run/weft/weft.sock"));
    assert_eq!(s.host.port, "weft0");
    assert_eq!(s.datapath.poll, Duration::from_micros(100));
    assert_eq!(s.tunnel.heartbeat, Duration::from_secs(1));
    assert!(s.host.masquerade);
    assert_eq!(s.host.service_cidr, None);
    assert_eq!(s.host.services, ServicesMode::KubeProxy);
    assert_eq!(s.policy.conntrack_max, DEFAULT_CONNTRACK_MAX);
    assert_eq!(s.policy.conntrack_share, DEFAULT_CONNTRACK_MAX / 2);
    assert_eq!(s.afxdp.geometry, crate::io::xsk::Geometry::DEFAULT);
    assert_eq!(s.state_dir, Path::new(DEFAULT_STATE_DIR));
}

/// `socket-group` takes a gid or a group's name, and refuses a name the host does
/// not know; without it the socket has no group.
#[test]
fn the_socket_group_is_a_gid_or_a_known_group() {
    assert_eq!(base().resolve().unwrap().socket_group, None);
    let with = |group: &str| {
        let text = format!("{HEAD}pod-subnet = \"10.244.1.0/24\"\nsocket-group = \"{group}\"\n");
        parse(&text).unwrap().0.resolve()
    };
    assert_eq!(with("4242").unwrap().socket_group, Some(4242));
    // Group 0 is "root" on every Linux host.
    assert_eq!(with("root").unwrap().socket_group, Some(0));
    let err = with("no-such-group-weft").unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid socket-group: \"no-such-group-weft\": no such group"
    );
    let flag = base().with_flags(["--socket-group", "7"]).unwrap();
    assert_eq!(flag.resolve().unwrap().socket_group, Some(7));
}

#[test]
fn flags_override_the_file() {
    let file = format!("{HEAD}pod-subnet = \"10.244.1.0/24\"\n[tunnel]\nvni = 7\nport = 8000\n");
    let (file, _) = parse(&file).unwrap();
    let o = file
        .with_flags([
            "--mode",
            "sleeve",
            "--port",
            "9000",
            "--etcd-endpoints",
            "a,b",
        ])
        .unwrap();
    assert_eq!(o.etcd.endpoints, Some(vec!["a".into(), "b".into()]));
    let mut o = o;
    o.etcd = EtcdOptions::default();
    let s = o.resolve().unwrap();
    assert_eq!((s.tunnel.mode, s.tunnel.port), (Mode::Sleeve, 9000));
    assert_eq!(s.tunnel.vni.get(), 7, "a flag not given leaves the file's");
    let err = base().with_flags(["--afxdp-frames", "many"]).unwrap_err();
    assert!(err.to_string().contains("--afxdp-frames"), "{err}");
}

/// `conntrack-share` is a percentage of `conntrack-max`, from the file or a flag.
#[test]
fn the_conntrack_share_is_a_percentage_of_the_table() {
    let file = format!(
        "{HEAD}pod-subnet = \"10.244.1.0/24\"\n[policy]\nconntrack-max = 1000\nconntrack-share = 10\n"
    );
    let (o, _) = parse(&file).unwrap();
    assert_eq!(o.clone().resolve().unwrap().policy.conntrack_share, 100);
    let o = o.with_flags(["--conntrack-share", "100"]).unwrap();
    assert_eq!(o.resolve().unwrap().policy.conntrack_share, 1000);
    let err = base().with_flags(["--conntrack-share", "101"]).unwrap();
    assert!(err.resolve().unwrap_err().to_string().contains("101"));
}

/// TAPs are offered USO unless `[datapath] tap-uso` or `--tap-uso` says no.
#[test]
fn tap_uso_is_on_unless_turned_off() {
    assert!(base().resolve().unwrap().datapath.tap_uso);
    let file = format!("{HEAD}pod-subnet = \"10.244.1.0/24\"\n[datapath]\ntap-uso = false\n");
    assert!(!settings(&file).unwrap().datapath.tap_uso);
    let o = base().with_flags(["--tap-uso", "false"]).unwrap();
    assert!(!o.resolve().unwrap().datapath.tap_uso);
    let err = base().with_flags(["--tap-uso", "maybe"]).unwrap_err();
    assert!(err.to_string().contains("--tap-uso"), "{err}");
}

/// Metrics are off, logs text and the flow log off, unless `[observability]` or
/// its flags say otherwise; a bad address or format is refused with its flag's name.
#[test]
fn observability_is_off_unless_asked_for() {
    let default = base().resolve().unwrap().observability;
    assert_eq!(default, ObservabilitySettings::default());
    assert_eq!(default.metrics_addr, None);
    let file = format!(
        "{HEAD}pod-subnet = \"10.244.1.0/24\"\n[observability]\nmetrics-addr = \"127.0.0.1:9402\"\nlog-format = \"json\"\nflow-log = true\n"
    );
    let s = settings(&file).unwrap().observability;
    assert_eq!(s.metrics_addr, Some("127.0.0.1:9402".parse().unwrap()));
    assert_eq!((s.log_format, s.flow_log), (LogFormat::Json, true));
    let o = base()
        .with_flags(["--metrics-addr", "[::1]:9402", "--log-format", "text"])
        .unwrap();
    let s = o.resolve().unwrap().observability;
    assert_eq!(s.metrics_addr, Some("[::1]:9402".parse().unwrap()));
    assert_eq!(s.log_format, LogFormat::Text);
    let err = base().with_flags(["--log-format", "xml"]).unwrap_err();
    assert!(err.to_string().contains("expected text or json"), "{err}");
    let err = base().with_flags(["--metrics-addr", "9402"]).unwrap_err();
    assert!(err.to_string().contains("--metrics-addr"), "{err}");
    let bad =
        format!("{HEAD}pod-subnet = \"10.244.1.0/24\"\n[observability]\nlog-format = \"xml\"\n");
    assert!(settings(&bad).is_err());
}

/// Every flag is a key: at the top level under its own name, or moved into a
/// section by [`FLAT_KEYS`]; and every key of [`FLAT_KEYS`] is a flag.
#[test]
fn every_flag_is_a_key_and_every_flat_key_a_flag() {
    let command = <Options as clap::Args>::augment_args(clap::Command::new("weftd"));
    let flags: Vec<&str> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .collect();
    assert_eq!(flags.len(), 50, "{flags:?}");
    // Keys that came after the sections, and so never had a flat form.
    let sectioned = [
        "tap-uso",
        "kubeconfig",
        "etcd-insecure",
        "conntrack-share",
        "services",
        "api-server",
        "metrics-addr",
        "log-format",
        "flow-log",
    ];
    let top = [
        "node-name",
        "underlay-ip",
        "pod-subnet",
        "cluster-cidr",
        "pod-subnet-v6",
        "cluster-cidr-v6",
        "store",
        "peers",
        "socket",
        "socket-group",
        "state-dir",
    ];
    for flag in &flags {
        let moved = FLAT_KEYS.iter().filter(|k| k.flat == *flag).count();
        assert_eq!(
            moved + usize::from(top.contains(flag)) + usize::from(sectioned.contains(flag)),
            1,
            "--{flag} is one key"
        );
    }
    for key in FLAT_KEYS {
        assert!(flags.contains(&key.flat), "{} is a flag", key.flat);
    }
}

/// A value of the right type for every flag, as it is written in a file.
fn value_of(flat: &str) -> &'static str {
    match flat {
        "mode" => "\"sleeve\"",
        "encryption" => "\"on\"",
        "pod-port" => "\"afxdp\"",
        "vtep-mac" => "\"02:00:00:00:00:01\"",
        "service-cidr" => "\"10.96.0.0/12\"",
        "etcd-endpoints" => "[\"https://10.0.0.1:2379\"]",
        "etcd-prefix" => "\"/w\"",
        "host-port" => "\"weft1\"",
        "direct-routing" | "afxdp-fallback" | "afxdp-zero-copy" | "masquerade" | "tap-uso" => {
            "true"
        }
        "psk-file" | "policy-dir" | "etcd-ca" | "etcd-cert" | "etcd-key" => "\"/etc/x\"",
        _ => "64",
    }
}

/// Every flat key reads as its place in a section does.
#[test]
fn every_flat_key_reads_as_its_section_key() {
    let mut flat = String::new();
    let mut sections = toml::Table::new();
    for key in FLAT_KEYS {
        let value = value_of(key.flat);
        flat.push_str(&format!("{} = {value}\n", key.flat));
        let value: toml::Table = toml::from_str(&format!("v = {value}")).unwrap();
        sections
            .entry(key.section)
            .or_insert_with(|| toml::Table::new().into())
            .as_table_mut()
            .unwrap()
            .insert(key.key.into(), value["v"].clone());
    }
    let sectioned = toml::to_string(&sections).unwrap();
    let (from_sections, none) = parse(&sectioned).unwrap();
    assert!(none.is_empty(), "{sectioned}");
    let (from_flat, moved) = parse(&flat).unwrap();
    assert_eq!(moved, FLAT_KEYS, "every key warned of, in order");
    assert_eq!(from_flat, from_sections);
    assert_ne!(from_flat, Options::default());
}

/// A file in sections, with a setting in each.
const SECTIONED: &str = r#"
node-name = "a"
underlay-ip = "10.250.0.1"
pod-subnet = "10.244.1.0/24"
cluster-cidr = "10.244.0.0/16"
peers = "/etc/weft/peers.toml"
socket = "/run/w.sock"
state-dir = "/var/lib/w"

[tunnel]
mode = "sleeve"
vni = 5
port = 8000
heartbeat-ms = 500

[mtu]
underlay = 9000
pod = 1500

[encryption]
mode = "required"
psk-file = "/etc/weft/psk"

[datapath]
workers = 2
port-queues = 1
poll-us = 50
pod-port = "afxdp"

[afxdp]
fallback = true
frames = 2048

[policy]
dir = "/etc/weft/policy"
conntrack-max = 4096

[host]
port = "weft1"
masquerade = false
service-cidr = "10.96.0.0/12"
"#;

/// The same settings in the flat layout.
const FLAT: &str = r#"
node-name = "a"
underlay-ip = "10.250.0.1"
pod-subnet = "10.244.1.0/24"
cluster-cidr = "10.244.0.0/16"
peers = "/etc/weft/peers.toml"
socket = "/run/w.sock"
state-dir = "/var/lib/w"
mode = "sleeve"
vni = 5
port = 8000
heartbeat-ms = 500
underlay-mtu = 9000
pod-mtu = 1500
encryption = "required"
psk-file = "/etc/weft/psk"
workers = 2
port-queues = 1
poll-us = 50
pod-port = "afxdp"
afxdp-fallback = true
afxdp-frames = 2048
policy-dir = "/etc/weft/policy"
conntrack-max = 4096
host-port = "weft1"
masquerade = false
service-cidr = "10.96.0.0/12"
"#;

#[test]
fn a_file_in_sections_parses() {
    let s = settings(SECTIONED).unwrap();
    assert_eq!(s.tunnel.mode, Mode::Sleeve);
    assert_eq!((s.tunnel.vni.get(), s.tunnel.port), (5, 8000));
    assert_eq!(s.tunnel.heartbeat, Duration::from_millis(500));
    assert_eq!((s.mtu.underlay, s.pod_mtu()), (9000, 1500));
    assert_eq!(s.encryption.mode, Encryption::Required);
    assert_eq!(
        s.encryption.psk_file.as_deref(),
        Some(Path::new("/etc/weft/psk"))
    );
    assert_eq!((s.datapath.workers, s.datapath.port_queues), (2, 1));
    assert_eq!(s.datapath.poll, Duration::from_micros(50));
    assert_eq!(s.datapath.pod_port, PortType::Afxdp);
    assert!(s.afxdp.fallback && !s.afxdp.mode.zero_copy);
    assert_eq!(s.afxdp.geometry.ring(), 1024);
    assert_eq!(s.policy.dir.as_deref(), Some(Path::new("/etc/weft/policy")));
    assert_eq!(s.policy.conntrack_max, 4096);
    assert_eq!(s.host.port, "weft1");
    assert!(!s.host.masquerade);
    assert_eq!(s.host.service_cidr, Some("10.96.0.0/12".parse().unwrap()));
    assert_eq!(s.socket, Path::new("/run/w.sock"));
    assert_eq!(s.state_dir, Path::new("/var/lib/w"));
    assert_eq!(
        s.store,
        StoreSettings::File(Some("/etc/weft/peers.toml".into()))
    );
}

/// The flat layout is still read, as the same settings, and each of its keys that
/// moved is reported (and logged by `from_file`).
#[test]
fn a_flat_file_parses_to_the_same_settings() {
    let (flat, moved) = parse(FLAT).unwrap();
    let (sectioned, none) = parse(SECTIONED).unwrap();
    assert!(none.is_empty());
    assert_eq!(flat, sectioned);
    assert_eq!(
        flat.clone().resolve().unwrap(),
        sectioned.resolve().unwrap()
    );
    let names: Vec<&str> = moved.iter().map(|k| k.flat).collect();
    assert_eq!(names.len(), 19, "{names:?}");
    let frames = moved.iter().find(|k| k.flat == "afxdp-frames").unwrap();
    assert_eq!(
        frames.to_string(),
        "`afxdp-frames` at the top level is deprecated: write it as `frames` under [afxdp]"
    );
    // From a file, through the warning.
    let dir = std::env::temp_dir().join(format!("weft-config-flat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("weftd.toml");
    std::fs::write(&path, FLAT).unwrap();
    let read = Options::from_file(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(read.unwrap(), flat);
    // Flat keys beside sections, each setting once, are read too.
    let mixed =
        format!("{HEAD}pod-subnet = \"10.244.1.0/24\"\nworkers = 2\n[afxdp]\nframes = 64\n");
    let (o, moved) = parse(&mixed).unwrap();
    assert_eq!((o.datapath.workers, o.afxdp.frames), (Some(2), Some(64)));
    assert_eq!(moved.len(), 1);
}

#[test]
fn a_setting_in_both_layouts_is_refused() {
    let text = format!("{HEAD}afxdp-frames = 64\n[afxdp]\nframes = 128\n");
    let err = parse(&text).unwrap_err();
    assert!(
        err.contains("`afxdp-frames` at the top level")
            && err.contains("`frames` under [afxdp]")
            && err.contains("test.toml"),
        "{err}"
    );
    let text = format!("{HEAD}etcd-endpoints = [\"http://a:1\"]\n[etcd]\nendpoints = []\n");
    let err = parse(&text).unwrap_err();
    assert!(
        err.contains("`etcd-endpoints`") && err.contains("[etcd]"),
        "{err}"
    );
    // `encryption` is both a flat key and a section: TOML itself refuses both.
    let text = format!("{HEAD}encryption = \"on\"\n[encryption]\npsk-file = \"/k\"\n");
    let err = parse(&text).unwrap_err();
    assert!(err.contains("encryption"), "{err}");
    // A section's name as a value, beside a flat key that belongs in it.
    let err = parse(&format!("{HEAD}mode = \"vxlan\"\ntunnel = 1\n")).unwrap_err();
    assert!(err.contains("`tunnel` is a section"), "{err}");
}

/// Each bad value, in a section and as a flag, gives its section's error, naming
/// the key, its flag and what is wrong; the flat layout gives the same.
#[test]
fn each_section_says_what_is_wrong() {
    let cases: [(&str, &str, &str, &str); 14] = [
        ("[afxdp]\nframes = 100", "afxdp-frames = 100",
         "invalid [afxdp] frames (--afxdp-frames): afxdp-frames is a power of two from 64 to 16384, not 100", "Afxdp"),
        ("store = \"etcd\"\n[etcd]\nendpoints = [\"http://a:1\"]\ncert = \"/c.pem\"",
         "store = \"etcd\"\netcd-endpoints = [\"http://a:1\"]\netcd-cert = \"/c.pem\"",
         "invalid [etcd] cert (--etcd-cert): etcd-cert and etcd-key go together", "Etcd"),
        ("[tunnel]\nvni = 16777216", "vni = 16777216",
         "invalid [tunnel] vni (--vni): 16777216 does not fit in 24 bits", "Tunnel"),
        ("[tunnel]\nheartbeat-ms = 5", "heartbeat-ms = 5",
         "invalid [tunnel] heartbeat-ms (--heartbeat-ms): 5: 0 (off) or 10 to 60000", "Tunnel"),
        ("[tunnel]\nport = 0", "port = 0", "invalid [tunnel] port (--port): 0 is not a port", "Tunnel"),
        ("[mtu]\nunderlay = 100", "underlay-mtu = 100",
         "invalid [mtu] underlay (--underlay-mtu): 100: between 576 and 9216", "Mtu"),
        ("[encryption]\nmode = \"on\"", "encryption = \"on\"",
         "invalid [encryption] mode (--encryption): needs mode = \"sleeve\" in [tunnel] (this node's mode is vxlan)", "Encryption"),
        ("[datapath]\nworkers = 0", "workers = 0",
         "invalid [datapath] workers (--workers): 0: between 1 and 64", "Datapath"),
        ("[datapath]\nworkers = 2\nport-queues = 3", "workers = 2\nport-queues = 3",
         "invalid [datapath] port-queues (--port-queues): 3: between 1 and the number of workers (2)", "Datapath"),
        ("[policy]\nconntrack-max = 8", "conntrack-max = 8",
         "invalid [policy] conntrack-max (--conntrack-max): 8: between 16 and 4194304", "Policy"),
        ("[policy]\nconntrack-share = 0", "[policy]\nconntrack-share = 0",
         "invalid [policy] conntrack-share (--conntrack-share): 0: a percentage, between 1 and 100", "Policy"),
        ("[host]\nport = \"a/b\"", "host-port = \"a/b\"",
         "invalid [host] port (--host-port): \"a/b\" is not an interface name", "Host"),
        ("[host]\nservice-cidr = \"10.244.128.0/17\"", "service-cidr = \"10.244.128.0/17\"",
         "invalid [host] service-cidr (--service-cidr): 10.244.128.0/17 overlaps the cluster CIDR 10.244.0.0/16", "Host"),
        ("pod-subnet = \"10.244.1.5/24\"", "pod-subnet = \"10.244.1.5/24\"",
         "invalid pod-subnet: 10.244.1.5/24 has host bits set; did you mean 10.244.1.0/24?", "Node"),
    ];
    for (sectioned, flat, message, section) in cases {
        let subnet = if sectioned.starts_with("pod-subnet") {
            ""
        } else {
            "pod-subnet = \"10.244.1.0/24\"\n"
        };
        for text in [sectioned, flat] {
            let (o, _) = parse(&format!("{HEAD}{subnet}{text}\n")).unwrap();
            let err = o.resolve().unwrap_err();
            assert_eq!(err.to_string(), message);
            assert!(format!("{err:?}").starts_with(section), "{err:?}");
        }
    }
}

#[test]
fn bad_settings_say_what_is_wrong() {
    let cases: [(&str, &str); 10] = [
        (
            "[host]\nservice-cidr = \"10.244.128.0/17\"",
            "overlaps the cluster CIDR",
        ),
        (
            "[host]\nservice-cidr = \"10.0.0.0/8\"",
            "overlaps the cluster CIDR",
        ),
        ("[tunnel]\nheartbeat-ms = 5", "heartbeat-ms"),
        ("pod-subnet = \"10.244.1.5/24\"", "host bits"),
        ("pod-subnet = \"10.245.1.0/24\"", "inside the cluster CIDR"),
        ("[tunnel]\nvni = 16777216", "24 bits"),
        ("[datapath]\nworkers = 0", "workers"),
        ("[mtu]\nunderlay = 100", "underlay-mtu"),
        ("[datapath]\npoll-us = 20000", "poll-us"),
        ("bogus = 1", "unknown field"),
    ];
    for (line, needle) in cases {
        let text = if line.starts_with("pod-subnet") {
            format!("{HEAD}{line}\n")
        } else {
            format!("{HEAD}pod-subnet = \"10.244.1.0/24\"\n{line}\n")
        };
        let msg = match parse(&text) {
            Ok((o, _)) => o.resolve().unwrap_err().to_string(),
            Err(e) => e,
        };
        assert!(msg.contains(needle), "{line}: {msg}");
    }
    let missing = Options::default().resolve().unwrap_err().to_string();
    assert!(missing.contains("node-name"), "{missing}");
}

/// A hostile or broken file gets an error that says where, never a panic.
#[test]
fn malformed_files_are_refused_clearly() {
    let cases: [(&str, &[&str]); 12] = [
        (
            "[datapath]\nworkers = \"two\"",
            &["line 6", "workers", "expected usize"],
        ),
        (
            "[etcd]\nendpoints = \"http://a:1\"",
            &["endpoints", "expected a sequence"],
        ),
        (
            "[tunnel]\nmode = \"gre\"",
            &["mode", "unknown variant `gre`"],
        ),
        ("[tunnel]\nvni = -1", &["vni", "expected u32"]),
        (
            "[datapath]\nworkers = 99999999999999999999",
            &["workers", "too large"],
        ),
        ("[bogus]\nx = 1", &["unknown field `bogus`", "`etcd`"]),
        (
            "[etcd]\nbogus = 1",
            &["unknown field `bogus`", "`endpoints`"],
        ),
        ("[tunnel.deeper]\nx = 1", &["unknown field `deeper`"]),
        ("tunnel = 5", &["tunnel", "expected struct TunnelOptions"]),
        ("= = =", &["line 5", "invalid key"]),
        (
            "afxdp-frames = \"many\"",
            &["`afxdp.frames`", "`afxdp-frames`", "expected u32"],
        ),
        ("\u{0}\u{1}\u{2}", &["line 5"]),
    ];
    for (text, needles) in cases {
        let err = parse(&format!("{HEAD}pod-subnet = \"10.244.1.0/24\"\n{text}\n")).unwrap_err();
        assert!(err.starts_with("parsing test.toml: "), "{text}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{text}: {needle}: {err}");
        }
    }
}

fn etcd(extra: &str) -> Result<Settings, String> {
    settings(&format!("{HEAD}store = \"etcd\"\n{extra}"))
}

#[test]
fn etcd_settings_default_and_check() {
    let s = etcd("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n").unwrap();
    let StoreSettings::Etcd(e) = &s.store else {
        panic!("{:?}", s.store)
    };
    assert_eq!(e.prefix, "/weft/v1");
    assert_eq!(e.node_ttl, Duration::from_secs(30));
    assert_eq!(e.subnet_grace, Duration::from_secs(86_400));
    assert_eq!(e.subnet_len, 24);
    assert!(e.tls.is_none());
    assert_eq!(s.pod_subnet, None, "etcd leases the subnet");
    let ep = "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";
    let cases: [(String, &str); 10] = [
        (format!("{ep}cert = \"/c.pem\"\n"), "go together"),
        (String::new(), "--etcd-endpoints"),
        (format!("peers = \"/p.toml\"\n{ep}"), "peers"),
        (format!("{ep}[policy]\ndir = \"/p\"\n"), "policy-dir"),
        (format!("{ep}subnet-len = 16\n"), "subnet-len"),
        (format!("{ep}node-ttl-s = 1\n"), "node-ttl-s"),
        (
            format!("{ep}cert = \"/c.pem\"\nkey = \"/k.pem\"\n"),
            "etcd-ca",
        ),
        (format!("{ep}ca = \"/ca.pem\"\n"), "https"),
        (format!("{ep}prefix = \"weft\"\n"), "etcd-prefix"),
        (
            "[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n".into(),
            "http://host:port",
        ),
    ];
    for (extra, needle) in cases {
        let msg = etcd(&extra).unwrap_err();
        assert!(msg.contains(needle), "{extra}: {msg}");
    }
    // The file store takes none of etcd's settings, and needs a subnet.
    let mut o = base();
    o.etcd.node_ttl_s = Some(10);
    let err = o.resolve().unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid [etcd] node-ttl-s (--node-ttl-s): it is a setting of store = \"etcd\""
    );
    let mut o = base();
    o.pod_subnet = None;
    assert!(o.resolve().unwrap_err().to_string().contains("pod-subnet"));
}

/// Plain http to etcd on another host is refused unless `insecure = true` says
/// so, naming the endpoint and the key; on this host's loopback it is taken.
#[test]
fn plain_http_to_etcd_off_this_host_needs_insecure() {
    let with =
        |endpoints: &str, more: &str| etcd(&format!("[etcd]\nendpoints = [{endpoints}]\n{more}"));
    for remote in [
        "\"http://10.0.0.1:2379\"",
        "\"http://etcd.example:2379\"",
        "\"http://[2001:db8::1]:2379\"",
        "\"http://127.0.0.1:2379\", \"http://10.0.0.2:2379\"",
    ] {
        let err = with(remote, "").unwrap_err();
        assert!(
            err.contains("is plain http to another host")
                && err.contains("[etcd] insecure = true")
                && err.contains("--etcd-insecure"),
            "{remote}: {err}"
        );
        let named = remote.rsplit(", ").next().unwrap();
        assert!(err.contains(named.trim_matches('"')), "{remote}: {err}");
        for more in ["insecure = true\n", ""] {
            let s = match more {
                "" => {
                    let (o, _) = parse(&format!(
                        "{HEAD}store = \"etcd\"\n[etcd]\nendpoints = [{remote}]\n"
                    ))
                    .unwrap();
                    let o = o.with_flags(["--etcd-insecure", "true"]).unwrap();
                    o.resolve().map_err(|e| e.to_string())
                }
                more => with(remote, more),
            };
            let StoreSettings::Etcd(e) = s.unwrap_or_else(|e| panic!("{remote}: {e}")).store else {
                panic!("not etcd")
            };
            assert!(e.insecure);
        }
    }
    // Positive control: loopback, by name or address, needs nothing; nor does TLS.
    for local in [
        "\"http://127.0.0.1:2379\"",
        "\"http://127.9.9.9:2379\"",
        "\"http://localhost:2379\"",
        "\"http://LOCALHOST:2379\"",
        "\"http://[::1]:2379\"",
    ] {
        let s = with(local, "").unwrap_or_else(|e| panic!("{local}: {e}"));
        let StoreSettings::Etcd(e) = s.store else {
            panic!("not etcd")
        };
        assert!(!e.insecure);
    }
    assert!(with("\"https://10.0.0.1:2379\"", "ca = \"/ca.pem\"\n").is_ok());
    let err = with("\"http://\"", "").unwrap_err();
    assert!(err.contains("give http://host:port"), "{err}");
    // And it is a setting of the etcd store only.
    let mut o = base();
    o.etcd.insecure = Some(true);
    let err = o.resolve().unwrap_err().to_string();
    assert!(err.contains("[etcd] insecure (--etcd-insecure)"), "{err}");
}

#[test]
fn direct_mode_and_direct_routing() {
    let mut o = base();
    o.tunnel.mode = Some(Mode::Direct);
    let s = o.clone().resolve().unwrap();
    assert!(s.tunnel.direct_routing);
    assert_eq!(s.pod_mtu(), 1500, "no tunnel, no overhead");
    o.tunnel.direct_routing = Some(false);
    assert!(o
        .resolve()
        .unwrap_err()
        .to_string()
        .contains("direct-routing"));
    let mut o = base();
    o.tunnel.direct_routing = Some(true);
    let s = o.resolve().unwrap();
    assert_eq!(
        (s.tunnel.mode, s.tunnel.direct_routing, s.pod_mtu()),
        (Mode::Vxlan, true, 1450)
    );
}

#[test]
fn encryption_needs_the_sleeve_and_costs_its_overhead() {
    let mut o = base();
    assert_eq!(
        o.clone().resolve().unwrap().encryption.mode,
        Encryption::Off
    );
    o.encryption.mode = Some(Encryption::Required);
    let err = o.clone().resolve().unwrap_err().to_string();
    assert!(err.contains("needs mode = \"sleeve\""), "{err}");
    o.tunnel.mode = Some(Mode::Sleeve);
    let s = o.clone().resolve().unwrap();
    assert_eq!(s.pod_mtu(), 1500 - 72, "44 of the sleeve, 28 of the seal");
    assert_eq!(s.max_datagram(), 1500 - 28 - 28);
    o.mtu.pod = Some(1450);
    let err = o.clone().resolve().unwrap_err().to_string();
    assert!(
        err.contains("between 576 and 1428") && err.contains("72"),
        "{err}"
    );
    o.mtu.pod = None;
    o.tunnel.direct_routing = Some(true);
    let err = o.clone().resolve().unwrap_err().to_string();
    assert!(err.contains("direct-routing"), "{err}");
    let mut o = base();
    o.encryption.psk_file = Some("/etc/weft/psk".into());
    let err = o.resolve().unwrap_err().to_string();
    assert!(
        err.contains("psk-file") && err.contains("encryption is off"),
        "{err}"
    );
    assert!("maybe".parse::<Encryption>().is_err());
}

/// The configs `deploy/examples` ships are valid, and in sections.
#[test]
fn shipped_examples_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let peers = crate::control::store::file::read_peers(&dir.join("peers.toml")).unwrap();
    assert_eq!(peers.len(), 2);
    for (file, name) in [("node-a.toml", "node-a"), ("node-b.toml", "node-b")] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let (o, flat) = parse(&text).unwrap();
        assert!(flat.is_empty(), "{file} uses flat keys: {flat:?}");
        let s = o.resolve().unwrap();
        assert_eq!(s.node_name, name);
        let me = peers.iter().find(|p| p.name == name).unwrap();
        assert_eq!(
            (me.underlay_ip, Some(me.pod_subnet)),
            (s.underlay_ip, s.pod_subnet)
        );
    }
}

/// The weftd configs the README and deploy/STORE.md show are valid, and in
/// sections.
#[test]
fn documented_configs_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut blocks = 0;
    for doc in ["README.md", "deploy/STORE.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for block in text.split("```toml\n").skip(1) {
            let block = block.split("```").next().unwrap();
            let (o, flat) = parse(block).unwrap_or_else(|e| panic!("{doc}: {e}\n{block}"));
            assert!(flat.is_empty(), "{doc} uses flat keys: {flat:?}");
            o.with_flags(["--node-name", "a", "--underlay-ip", "10.0.0.1"])
                .unwrap()
                .resolve()
                .unwrap_or_else(|e| panic!("{doc}: {e}\n{block}"));
            blocks += 1;
        }
    }
    assert_eq!(blocks, 2);
}

/// Words a config file is made of, for the property below.
fn fragment() -> impl Strategy<Value = String> {
    let keys = FLAT_KEYS
        .iter()
        .flat_map(|k| [k.flat, k.key])
        .chain(["node-name", "pod-subnet", "store", "bogus"])
        .map(str::to_owned)
        .collect::<Vec<_>>();
    let sections = FLAT_KEYS
        .iter()
        .map(|k| format!("\n[{}]\n", k.section))
        .chain(["\n[bogus]\n".into(), "\n[tunnel.x]\n".into()])
        .collect::<Vec<_>>();
    let values = [
        "1",
        "-1",
        "0",
        "65536",
        "4294967296",
        "true",
        "\"vxlan\"",
        "\"on\"",
        "\"10.0.0.0/8\"",
        "\"10.250.0.1\"",
        "[]",
        "[\"http://a:1\"]",
        "{}",
        "1.5",
        "\"\"",
    ];
    prop_oneof![
        (
            proptest::sample::select(keys),
            proptest::sample::select(values.to_vec())
        )
            .prop_map(|(k, v)| format!("{k} = {v}\n")),
        proptest::sample::select(sections),
        "[ -~\n]{0,12}",
    ]
}

proptest! {
    /// Whatever a config file holds, reading and checking it ends in settings or
    /// an error.
    #[test]
    fn any_file_gives_settings_or_an_error(parts in proptest::collection::vec(fragment(), 0..12)) {
        let text = format!("{HEAD}{}", parts.concat());
        if let Ok((options, _)) = Options::from_toml("p.toml", &text) {
            let _ = options.resolve();
        }
    }
}

#[test]
fn the_kubernetes_store_takes_a_kubeconfig_or_none_and_no_subnet_or_peers() {
    use crate::control::store::kube::Credentials;
    let text = format!("{HEAD}store = \"kubernetes\"\n");
    let (o, _) = parse(&text).unwrap();
    let s = o.clone().resolve().unwrap();
    let StoreSettings::Kubernetes(k) = &s.store else {
        panic!("{:?}", s.store)
    };
    assert_eq!(k.credentials, Credentials::InCluster);
    let (with, _) = parse(&format!("{text}[kubernetes]\nkubeconfig = \"/etc/kc\"\n")).unwrap();
    let StoreSettings::Kubernetes(k) = with.resolve().unwrap().store else {
        panic!("not kubernetes")
    };
    assert_eq!(k.credentials, Credentials::Kubeconfig("/etc/kc".into()));
    assert_eq!(k.api_server, None);
    let refused = |o: Options, want: &str| {
        let e = o.resolve().unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    };
    let mut subnet = o.clone();
    subnet.pod_subnet = Some("10.244.1.0/24".parse().unwrap());
    refused(subnet, "spec.podCIDR");
    let mut peers = o.clone();
    peers.peers = Some("/etc/peers".into());
    refused(peers, "the nodes come from the API server");
    let mut dir = o.clone();
    dir.policy.dir = Some("/etc/p".into());
    refused(dir, "policy objects come from the API server");
    let mut etcd = o;
    etcd.etcd.endpoints = Some(vec!["http://x:2379".into()]);
    refused(etcd, "store = \"etcd\"");
    // And a kubeconfig is no setting of the other stores.
    let (file, _) = parse(&format!(
        "{HEAD}pod-subnet = \"10.244.1.0/24\"\n[kubernetes]\nkubeconfig = \"/k\"\n"
    ))
    .unwrap();
    refused(file, "store = \"kubernetes\"");
}

/// `services = "switch"` translates ClusterIPs in the switch and needs the Service
/// range; "kube-proxy", the default, leaves them to the node. Anything else is
/// refused by name.
#[test]
fn services_in_the_switch_need_the_service_cidr() {
    let with = |host: &str| {
        settings(&format!(
            "{HEAD}pod-subnet = \"10.244.1.0/24\"\n[host]\n{host}\n"
        ))
    };
    let s = with("services = \"switch\"\nservice-cidr = \"10.96.0.0/12\"").unwrap();
    assert_eq!(s.host.services, ServicesMode::Switch);
    assert_eq!(s.host.service_cidr, Some("10.96.0.0/12".parse().unwrap()));
    let s = with("services = \"kube-proxy\"").unwrap();
    assert_eq!(s.host.services, ServicesMode::KubeProxy);
    assert_eq!(
        with("services = \"switch\"").unwrap_err(),
        "invalid [host] services (--services): \"switch\" needs service-cidr, the cluster's Service range"
    );
    assert!(with("services = \"iptables\"")
        .unwrap_err()
        .contains("iptables"));
    // As a flag.
    let o = base()
        .with_flags(["--services", "switch", "--service-cidr", "10.96.0.0/12"])
        .unwrap();
    assert_eq!(o.resolve().unwrap().host.services, ServicesMode::Switch);
    assert!(base().with_flags(["--services", "ipvs"]).is_err());
}

#[test]
fn the_api_server_address_is_an_https_url_and_needed_in_cluster_with_services_in_the_switch() {
    let text = format!("{HEAD}store = \"kubernetes\"\n");
    let with = |extra: &str| settings(&format!("{text}{extra}"));
    let api = |extra: &str| match with(extra).unwrap().store {
        StoreSettings::Kubernetes(k) => k.api_server.map(|u| u.to_string()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        api("[kubernetes]\napi-server = \"https://10.0.0.5:6443\"\n").as_deref(),
        Some("https://10.0.0.5:6443/")
    );
    for (bad, why) in [
        ("http://10.0.0.5:6443", "over https"),
        ("https://10.0.0.5", "a host and a port"),
        ("https://10.0.0.5:6443/api", "nothing may follow"),
        ("not a url at all", "not a URL"),
    ] {
        let e = with(&format!("[kubernetes]\napi-server = \"{bad}\"\n")).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
    // In the cluster with Services in the switch: the kubernetes Service's
    // ClusterIP would need the table the API server gives. Refused without an
    // address, taken with one, and with a kubeconfig (which names its server).
    let switch = "[host]\nservices = \"switch\"\nservice-cidr = \"10.96.0.0/12\"\n";
    let e = with(switch).unwrap_err();
    assert!(e.contains("api-server"), "{e}");
    with(&format!(
        "{switch}[kubernetes]\napi-server = \"https://10.0.0.5:6443\"\n"
    ))
    .unwrap();
    with(&format!("{switch}[kubernetes]\nkubeconfig = \"/etc/kc\"\n")).unwrap();
    // And no setting of the other stores.
    let file = settings(&format!(
        "{HEAD}pod-subnet = \"10.244.1.0/24\"\n[kubernetes]\napi-server = \"https://10.0.0.5:6443\"\n"
    ));
    assert!(file.unwrap_err().contains("store = \"kubernetes\""));
}

/// A dual-stack node names its IPv6 subnet and the cluster's IPv6 range together,
/// and each is checked as the IPv4 ones are.
#[test]
fn ipv6_subnets_come_in_pairs_and_are_checked() {
    let with = |extra: &str| {
        let text = format!("{HEAD}pod-subnet = \"10.244.1.0/24\"\n{extra}");
        parse(&text)
            .map_err(|e| e.to_string())?
            .0
            .resolve()
            .map_err(|e| e.to_string())
    };
    let s =
        with("pod-subnet-v6 = \"fd00:10:244:1::/64\"\ncluster-cidr-v6 = \"fd00:10:244::/56\"\n")
            .unwrap();
    let v6 = s.ipv6.expect("dual stack");
    assert_eq!(v6.subnet, Some("fd00:10:244:1::/64".parse().unwrap()));
    assert_eq!(v6.cluster, "fd00:10:244::/56".parse().unwrap());
    assert_eq!(base().resolve().unwrap().ipv6, None, "IPv4 only by default");
    for (extra, want) in [
        (
            "pod-subnet-v6 = \"fd00:10:244:1::/64\"\n",
            "needs cluster-cidr-v6",
        ),
        (
            "cluster-cidr-v6 = \"fd00:10:244::/56\"\n",
            "needs pod-subnet-v6",
        ),
        (
            "pod-subnet-v6 = \"fd00:10:244:1::1/64\"\ncluster-cidr-v6 = \"fd00:10:244::/56\"\n",
            "did you mean fd00:10:244:1::/64",
        ),
        (
            "pod-subnet-v6 = \"fd00:10:245:1::/64\"\ncluster-cidr-v6 = \"fd00:10:244::/56\"\n",
            "must lie inside",
        ),
        (
            "pod-subnet-v6 = \"fd00:10:244::/56\"\ncluster-cidr-v6 = \"fd00:10:244::/56\"\n",
            "must lie inside",
        ),
        (
            "pod-subnet-v6 = \"fd00:10:244:1::/127\"\ncluster-cidr-v6 = \"fd00:10:244::/56\"\n",
            "/48 to a /126",
        ),
        ("pod-subnet-v6 = \"10.0.0.0/24\"\n", "pod-subnet-v6"),
        (
            "pod-subnet-v6 = \"fe80:0:0:1::/64\"\ncluster-cidr-v6 = \"fe80::/56\"\n",
            "routable unicast",
        ),
        (
            "pod-subnet-v6 = \"ff05:0:0:1::/64\"\ncluster-cidr-v6 = \"ff05::/56\"\n",
            "routable unicast",
        ),
        (
            "pod-subnet-v6 = \"::ffff:0:0/104\"\ncluster-cidr-v6 = \"::ffff:0:0/96\"\n",
            "routable unicast",
        ),
    ] {
        let err = with(extra).unwrap_err();
        assert!(err.contains(want), "{extra}: {err}");
    }
    let etcd = format!(
        "{HEAD}store = \"etcd\"\npod-subnet-v6 = \"fd00:10:244:1::/64\"\ncluster-cidr-v6 = \"fd00:10:244::/56\"\n[etcd]\nendpoints = [\"http://10.0.0.1:2379\"]\n"
    );
    let err = parse(&etcd).unwrap().0.resolve().unwrap_err().to_string();
    assert!(err.contains("file and Kubernetes stores"), "{err}");
}

/// With the Kubernetes store, the node's IPv6 subnet is its Node's: only the
/// range is given, and a configured subnet is refused.
#[test]
fn with_the_api_server_only_the_ipv6_range_is_given() {
    let kube = |extra: &str| {
        settings(&format!(
            "{HEAD}store = \"kubernetes\"\n{extra}[kubernetes]\nkubeconfig = \"/etc/kc\"\n"
        ))
    };
    let s = kube("cluster-cidr-v6 = \"fd00:10:244::/56\"\n").unwrap();
    let v6 = s.ipv6.expect("dual stack");
    assert_eq!(
        (v6.subnet, v6.cluster),
        (None, "fd00:10:244::/56".parse().unwrap())
    );
    let err =
        kube("pod-subnet-v6 = \"fd00:10:244:1::/64\"\ncluster-cidr-v6 = \"fd00:10:244::/56\"\n")
            .unwrap_err();
    assert!(err.contains("spec.podCIDRs"), "{err}");
    let err = kube("cluster-cidr-v6 = \"fe80::/56\"\n").unwrap_err();
    assert!(err.contains("routable unicast"), "{err}");
}

/// IPv6 needs a link MTU of 1280: a dual-stack node whose pods would get less is
/// refused.
#[test]
fn dual_stack_needs_a_pod_mtu_of_1280() {
    let v6 = "pod-subnet-v6 = \"fd00:10:244:1::/64\"\ncluster-cidr-v6 = \"fd00:10:244::/56\"\n";
    let with = |mtu: &str| settings(&format!("{HEAD}pod-subnet = \"10.244.1.0/24\"\n{v6}{mtu}"));
    with("").unwrap();
    let err = with("[mtu]\nunderlay = 1280\n").unwrap_err();
    assert!(err.contains("at least 1280, and pods get 1230"), "{err}");
    with("[mtu]\nunderlay = 1330\n").unwrap();
}
