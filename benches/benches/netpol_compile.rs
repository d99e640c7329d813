//! NetworkPolicy compilation at scale: 1,000 pods over 10 namespaces and 1,000
//! policies, compiled for a node with 100 of the pods (`cargo bench -p weft-benches
//! --bench netpol_compile`). The compiled rules' heap size is printed once.

// Not `cfg_attr(not(test), ...)` as in the libraries: `cargo clippy --all-targets`
// checks a bench with cfg(test) set.
#![warn(clippy::too_many_lines)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use weft_switch::netpol::compile::{compile, LocalPod};
use weft_switch::netpol::manifest;
use weft_switch::netpol::model::PolicyModel;

const PODS: usize = 1_000;
const POLICIES: usize = 1_000;
const NAMESPACES: usize = 10;
const LOCAL: usize = 100;

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (i / 250) as u8 + 1, (i % 250) as u8 + 2)
}

/// The cluster as YAML: namespaces, pods with app/tier labels and a named port, and
/// policies selecting one app each, admitting two tiers and one namespace.
fn cluster() -> PolicyModel {
    let mut text = String::new();
    for n in 0..NAMESPACES {
        let _ = write!(text, "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{team: t{}}}}}\n", n % 3);
    }
    for i in 0..PODS {
        let tier = ["web", "api", "db"][i % 3];
        let _ = write!(
            text,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod{i}, namespace: ns{}, labels: {{app: app{}, tier: {tier}}}}}\n\
             spec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIP: {}}}\n",
            i % NAMESPACES,
            i % 50,
            pod_ip(i)
        );
    }
    for k in 0..POLICIES {
        let _ = write!(
            text,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{k}, namespace: ns{}}}\nspec:\n  podSelector: {{matchLabels: {{app: app{}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchExpressions: [{{key: tier, operator: In, values: [web, api]}}]}}}}]\n    ports: [{{port: http}}]\n  - from: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}}}, {{ipBlock: {{cidr: 172.16.{}.0/24}}}}]\n",
            k % NAMESPACES,
            k % 50,
            k % 3,
            k % 250
        );
    }
    let mut model = PolicyModel::default();
    manifest::read("bench.yaml", &text, &mut model).expect("the bench manifests are valid");
    model
}

fn policy(c: &mut Criterion) {
    let model = cluster();
    let local: Vec<LocalPod> = (0..LOCAL)
        .map(|i| LocalPod {
            ip: pod_ip(i),
            ip6: None,
            namespace: format!("ns{}", i % NAMESPACES),
            name: format!("pod{i}"),
        })
        .collect();
    let compiled = compile(&model, &local);
    let rules: usize = compiled
        .by_ip
        .values()
        .map(|r| r.ingress.as_ref().map_or(0, |s| s.rules.len()))
        .sum();
    eprintln!(
        "policy: {PODS} pods, {POLICIES} policies, {LOCAL} local pods: {} isolated, {rules} rules \
         compiled, {:.1} KiB of compiled rules",
        compiled.by_ip.len(),
        compiled.heap_bytes() as f64 / 1024.0
    );
    let mut g = c.benchmark_group("policy");
    g.sample_size(10);
    g.bench_function("compile_1000_pods_1000_policies", |b| {
        b.iter(|| compile(black_box(&model), black_box(&local)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    targets = policy
}
criterion_main!(benches);
