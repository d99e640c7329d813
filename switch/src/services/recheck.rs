//! A Services model that comes from elsewhere than a store (the view a node saved
//! in its state directory) checked as a store's documents are: each Service and
//! EndpointSlice written back as the document it was read from and read again
//! through [`super::read`], with every check of the API server's it applies, and
//! held to be what that reading gives. A file edited by hand (or by anyone who
//! can write the state directory) can hold no object that no store could have
//! handed over. The rules are [`super::read`]'s alone: none is written twice.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::model::{
    AddressType, EndpointSlice, Service, ServiceModel, ServiceType, SliceEndpoint, TargetPort,
};
use super::read::{self, SERVICE_NAME_LABEL};
use crate::netpol::model::Namespaced;

/// What an FQDN endpoint's address is written as: the model keeps none (nothing
/// uses them), and reading only counts them.
const FQDN_PLACEHOLDER: &str = "saved.invalid";

/// Checks every object of `model` as its document would be, and that no two
/// share a namespace and name; the first that fails is named, with why.
pub fn check(model: &ServiceModel) -> Result<(), String> {
    unique("Service", &model.services)?;
    unique("EndpointSlice", &model.slices)?;
    for s in &model.services {
        let back = read::service_value(&s.namespace, &s.name, service_spec(s))
            .map_err(|why| format!("Service {}: {why}", s.id()))?;
        if back != **s {
            return Err(format!(
                "Service {}: holds what no Service reads as",
                s.id()
            ));
        }
    }
    for s in &model.slices {
        let labels: BTreeMap<String, String> = (s.service.iter())
            .map(|name| (SERVICE_NAME_LABEL.to_owned(), name.clone()))
            .collect();
        let back = read::slice_value(&s.namespace, &s.name, &labels, slice_body(s))
            .map_err(|why| format!("EndpointSlice {}: {why}", s.id()))?;
        if back != **s {
            return Err(format!(
                "EndpointSlice {}: holds what no EndpointSlice reads as",
                s.id()
            ));
        }
    }
    Ok(())
}

/// An error naming the first object of `objects` whose namespace and name an
/// earlier one has.
fn unique<'a, T: Namespaced + 'a>(
    kind: &str,
    objects: impl IntoIterator<Item = &'a std::sync::Arc<T>>,
) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for o in objects {
        if !seen.insert((o.namespace(), o.name())) {
            return Err(format!(
                "{kind} {}/{} is defined twice",
                o.namespace(),
                o.name()
            ));
        }
    }
    Ok(())
}

/// The `spec` a Service was read from.
fn service_spec(s: &Service) -> Value {
    let kind = match s.kind {
        ServiceType::ClusterIp => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
        ServiceType::ExternalName => "ExternalName",
    };
    let ports: Vec<Value> = (s.ports.iter())
        .map(|p| {
            let target = match &p.target_port {
                TargetPort::Number(n) => json!(n),
                TargetPort::Name(name) => json!(name),
            };
            json!({"name": p.name, "protocol": p.protocol.to_string(), "port": p.port, "targetPort": target})
        })
        .collect();
    let mut spec = json!({
        "type": kind,
        "ports": ports,
        "internalTrafficPolicy": if s.internal_local { "Local" } else { "Cluster" },
    });
    if s.headless {
        spec["clusterIP"] = json!("None");
    } else if !s.cluster_ips.is_empty() {
        let ips: Vec<String> = s.cluster_ips.iter().map(ToString::to_string).collect();
        spec["clusterIPs"] = json!(ips);
    }
    if let Some(t) = s.affinity_seconds {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
    }
    spec
}

/// The fields but metadata an EndpointSlice was read from.
fn slice_body(s: &EndpointSlice) -> Value {
    let kind = match s.address_type {
        AddressType::Ipv4 => "IPv4",
        AddressType::Ipv6 => "IPv6",
        AddressType::Fqdn => "FQDN",
    };
    let endpoints: Vec<Value> = (s.endpoints.iter())
        .map(|e| endpoint(e, s.address_type))
        .collect();
    let ports: Vec<Value> = (s.ports.iter())
        .map(|p| json!({"name": p.name, "protocol": p.protocol.to_string(), "port": p.port}))
        .collect();
    json!({"addressType": kind, "endpoints": endpoints, "ports": ports})
}

/// An endpoint as its slice of `kind` was written.
fn endpoint(e: &SliceEndpoint, kind: AddressType) -> Value {
    let mut addresses: Vec<String> = e.addresses.iter().map(ToString::to_string).collect();
    if kind == AddressType::Fqdn && addresses.is_empty() {
        addresses.push(FQDN_PLACEHOLDER.into());
    }
    let c = &e.conditions;
    let mut out = json!({
        "addresses": addresses,
        "conditions": {"ready": c.ready, "serving": c.serving, "terminating": c.terminating},
    });
    if let Some(node) = &e.node_name {
        out["nodeName"] = json!(node);
    }
    if let Some(t) = &e.target_ref {
        out["targetRef"] = json!({"kind": t.kind, "namespace": t.namespace, "name": t.name});
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netpol::model::Protocol;
    use crate::services::model::{Conditions, ServicePortSpec, SlicePort, TargetRef};

    /// A model with every kind of field set: a Service of two ports (one with a
    /// named target), affinity and Local; a headless one; an ExternalName one; a
    /// slice of two endpoints, one serving and terminating, with a node and a
    /// target; an FQDN slice.
    pub(crate) fn model() -> ServiceModel {
        let web = Service {
            namespace: "default".into(),
            name: "web".into(),
            kind: ServiceType::NodePort,
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            headless: false,
            ports: vec![
                ServicePortSpec {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target_port: TargetPort::Name("web".into()),
                },
                ServicePortSpec {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    target_port: TargetPort::Number(5353),
                },
            ],
            affinity_seconds: Some(60),
            internal_local: true,
        };
        let headless = Service {
            name: "db".into(),
            kind: ServiceType::ClusterIp,
            cluster_ips: Vec::new(),
            headless: true,
            affinity_seconds: None,
            internal_local: false,
            ..web.clone()
        };
        let external = Service {
            name: "ext".into(),
            kind: ServiceType::ExternalName,
            headless: false,
            ports: Vec::new(),
            ..headless.clone()
        };
        let endpoint = |ip: &str, ready: bool| SliceEndpoint {
            addresses: vec![ip.parse().unwrap()],
            conditions: Conditions {
                ready,
                serving: true,
                terminating: !ready,
            },
            node_name: Some("node-1".into()),
            target_ref: Some(TargetRef {
                kind: "Pod".into(),
                namespace: "default".into(),
                name: format!("web-{ip}"),
            }),
        };
        let slice = EndpointSlice {
            namespace: "default".into(),
            name: "web-a".into(),
            service: Some("web".into()),
            address_type: AddressType::Ipv4,
            endpoints: vec![endpoint("10.244.1.5", true), endpoint("10.244.2.5", false)],
            ports: vec![SlicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: Some(8080),
            }],
        };
        let fqdn = EndpointSlice {
            name: "web-f".into(),
            address_type: AddressType::Fqdn,
            endpoints: vec![SliceEndpoint {
                addresses: Vec::new(),
                node_name: None,
                target_ref: None,
                ..endpoint("10.244.1.6", true)
            }],
            ..slice.clone()
        };
        ServiceModel {
            services: [web, headless, external].into_iter().collect(),
            slices: [slice, fqdn].into_iter().collect(),
            bad: Vec::new(),
        }
    }

    #[test]
    fn every_object_a_store_can_hand_over_passes() {
        assert_eq!(check(&model()), Ok(()));
        assert_eq!(check(&ServiceModel::default()), Ok(()));
    }

    /// What no document reads as is refused, the object named; each beside the
    /// model that passes (above).
    #[test]
    fn objects_no_document_could_make_are_refused_by_name() {
        let service = |f: &dyn Fn(&mut Service)| {
            let mut m = model();
            let mut all: Vec<Service> = m.services.iter().map(|s| (**s).clone()).collect();
            f(&mut all[0]);
            m.services = all.into_iter().collect();
            check(&m)
        };
        let slice = |f: &dyn Fn(&mut EndpointSlice)| {
            let mut m = model();
            let mut all: Vec<EndpointSlice> = m.slices.iter().map(|s| (**s).clone()).collect();
            f(&mut all[0]);
            m.slices = all.into_iter().collect();
            check(&m)
        };
        let cases: Vec<(Result<(), String>, &str)> = vec![
            (
                service(&|s| s.ports[0].port = 0),
                "port 0 is not 1 to 65535",
            ),
            (
                service(&|s| s.name = "Web\n".into()),
                "is not a valid object name",
            ),
            (
                service(&|s| s.ports[0].target_port = TargetPort::Number(0)),
                "holds what no Service reads as",
            ),
            (
                service(&|s| s.affinity_seconds = Some(1_000_000)),
                "timeoutSeconds 1000000",
            ),
            (
                service(&|s| s.ports = (0..101).map(|_| s.ports[0].clone()).collect()),
                "101 ports",
            ),
            (
                service(&|s| s.cluster_ips = vec!["10.96.0.1".parse().unwrap(); 2]),
                "of one family",
            ),
            (
                service(&|s| s.headless = true),
                "only a ClusterIP Service may be headless",
            ),
            (
                slice(&|s| s.service = Some("kube-system/dns".into())),
                "is no label value",
            ),
            (
                slice(&|s| s.endpoints[0].addresses = vec!["fd00::1".parse().unwrap()]),
                "is not an Ipv4 address",
            ),
            (
                slice(&|s| s.endpoints[0].node_name = Some("../../x".into())),
                "is not a node name",
            ),
            (
                slice(&|s| s.endpoints = vec![s.endpoints[0].clone(); 1001]),
                "1001 endpoints",
            ),
        ];
        for (got, why) in cases {
            let e = got.expect_err(why);
            assert!(e.contains(why), "{e:?} does not say {why:?}");
        }
        let mut twice = model();
        let first = (*twice.slices.iter().next().unwrap()).clone();
        twice.slices.push(first);
        assert_eq!(
            check(&twice),
            Err("EndpointSlice default/web-a is defined twice".into())
        );
    }
}
