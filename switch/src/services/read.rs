//! Services and EndpointSlices read from the documents every store holds (a
//! manifest's YAML, an etcd record's JSON, the API server's objects) into the
//! model, with the API server's validation of the fields used: what the API
//! server would refuse is refused here, with a reason, so that a store written
//! by hand (a directory, etcd) cannot hand the switch what no cluster could.
//!
//! Beyond the API server, weft bounds how many ports a Service or a slice may
//! have ([`MAX_PORTS`]): Kubernetes bounds them only by an object's size, and a
//! record with thousands would multiply into the table of every node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Deserialize;

use super::model::{
    AddressType, Conditions, EndpointSlice, Service, ServicePortSpec, ServiceType, SliceEndpoint,
    SlicePort, TargetPort, TargetRef, DEFAULT_AFFINITY_SECONDS,
};
use crate::netpol::model::{Labels, Protocol, DEFAULT_NAMESPACE};

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The most ports a Service or an EndpointSlice may have (weft's bound).
pub const MAX_PORTS: usize = 100;
/// The most endpoints an EndpointSlice may have (the API server's).
pub const MAX_ENDPOINTS: usize = 1000;
/// The most addresses an endpoint may have (the API server's).
pub const MAX_ADDRESSES: usize = 100;
/// The longest `sessionAffinityConfig.clientIP.timeoutSeconds` (a day).
pub const MAX_AFFINITY_SECONDS: i64 = 86_400;

/// A port: a number, or a name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    /// A number (checked to be 1 to 65535).
    Number(i64),
    /// A name.
    Name(String),
}

/// A Service port, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortDoc {
    name: Option<String>,
    protocol: Option<String>,
    port: Option<i64>,
    target_port: Option<PortValue>,
}

/// `sessionAffinityConfig.clientIP`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpDoc {
    timeout_seconds: Option<i64>,
}

/// `sessionAffinityConfig`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AffinityConfigDoc {
    #[serde(rename = "clientIP")]
    client_ip: Option<ClientIpDoc>,
}

/// A Service's `spec`, as written; other fields are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpecDoc {
    #[serde(rename = "type")]
    type_: Option<String>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Option<Vec<String>>,
    ports: Option<Vec<ServicePortDoc>>,
    session_affinity: Option<String>,
    session_affinity_config: Option<AffinityConfigDoc>,
    internal_traffic_policy: Option<String>,
}

/// The metadata read of a document.
#[derive(Debug, Clone, Deserialize)]
pub struct MetaDoc {
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    labels: Labels,
}

/// A whole Service document (a manifest, a record).
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceDoc {
    metadata: MetaDoc,
    #[serde(default)]
    spec: ServiceSpecDoc,
}

/// An endpoint's conditions, as written.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConditionsDoc {
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

/// An endpoint's `targetRef`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TargetRefDoc {
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

/// An endpoint, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointDoc {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: ConditionsDoc,
    node_name: Option<String>,
    target_ref: Option<TargetRefDoc>,
}

/// A slice port, as written.
#[derive(Debug, Clone, Deserialize)]
pub struct SlicePortDoc {
    name: Option<String>,
    protocol: Option<String>,
    port: Option<i64>,
}

/// An EndpointSlice's fields but its metadata, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceBodyDoc {
    address_type: Option<String>,
    endpoints: Option<Vec<EndpointDoc>>,
    ports: Option<Vec<SlicePortDoc>>,
}

/// A whole EndpointSlice document.
#[derive(Debug, Clone, Deserialize)]
pub struct SliceDoc {
    metadata: MetaDoc,
    #[serde(flatten)]
    body: SliceBodyDoc,
}

/// Whether `s` is a DNS-1123 label: at most 63 lowercase letters, digits and
/// `-`, starting and ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter().all(|&c| alnum(c) || c == b'-')
        && alnum(b[0])
        && alnum(b[b.len() - 1])
}

/// Whether `s` is a DNS-1123 subdomain: dot-separated labels, at most 253 long.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Whether `s` is a DNS-1035 label (a Service's name): a DNS-1123 label that
/// starts with a letter.
fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// Whether `s` is an IANA service name (a named `targetPort`): at most 15
/// lowercase letters, digits and `-`, with a letter, no `--`, and no `-` at
/// either end.
fn is_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=15).contains(&b.len())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && !s.contains("--")
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a label value: at most 63 letters, digits, `-`, `_` and `.`,
/// starting and ending with a letter or digit (or empty).
fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    s.is_empty()
        || (b.len() <= 63
            && b.iter().all(ok)
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

fn protocol(p: Option<&str>) -> Result<Protocol, String> {
    match p {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(format!("protocol {other:?} is not TCP, UDP or SCTP")),
    }
}

/// A port number: 1 to 65535.
fn port_number(what: &str, n: i64) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("{what} {n} is not 1 to 65535"))
}

/// Checks an object's namespace and name: the namespace a DNS label, the name
/// what `name_ok` takes (a DNS subdomain, or a Service's DNS-1035 label).
fn check_names(namespace: &str, name: &str, name_ok: fn(&str) -> bool) -> Result<(), String> {
    if !is_dns_label(namespace) {
        return Err(format!("namespace {namespace:?} is not a DNS label"));
    }
    if !name_ok(name) {
        return Err(format!("name {name:?} is not a valid object name"));
    }
    Ok(())
}

/// The Service's type.
fn service_type(t: Option<&str>) -> Result<ServiceType, String> {
    match t {
        None | Some("ClusterIP") => Ok(ServiceType::ClusterIp),
        Some("NodePort") => Ok(ServiceType::NodePort),
        Some("LoadBalancer") => Ok(ServiceType::LoadBalancer),
        Some("ExternalName") => Ok(ServiceType::ExternalName),
        Some(other) => Err(format!("type {other:?} is not a Service type")),
    }
}

/// The ClusterIPs, and whether the Service is headless: `clusterIPs` (its first
/// equal to `clusterIP` when both are given), at most one of each family;
/// `None` alone; none at all for an ExternalName Service, and at least one for
/// any other.
fn cluster_ips(spec: &ServiceSpecDoc, kind: ServiceType) -> Result<(Vec<IpAddr>, bool), String> {
    let listed: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), Some(ip)) if !ips.is_empty() && ips[0] != *ip => {
            return Err(format!(
                "clusterIPs[0] {:?} is not clusterIP {ip:?}",
                ips[0]
            ))
        }
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.as_str()],
        _ => Vec::new(),
    };
    if kind == ServiceType::ExternalName {
        return match listed.as_slice() {
            [] => Ok((Vec::new(), false)),
            _ => Err("an ExternalName Service has no clusterIP".into()),
        };
    }
    if listed.is_empty() {
        // The API server allocates one to every Service it admits; a store
        // written by hand (a directory, etcd) has nothing that would.
        return Err("no clusterIP: nothing allocates one outside the API server".into());
    }
    if listed.contains(&"None") {
        return match (listed.as_slice(), kind) {
            (["None"], ServiceType::ClusterIp) => Ok((Vec::new(), true)),
            (["None"], _) => Err("only a ClusterIP Service may be headless".into()),
            _ => Err("clusterIP None stands alone".into()),
        };
    }
    let ips: Vec<IpAddr> = (listed.iter())
        .map(|t| {
            t.parse()
                .map_err(|_| format!("clusterIP {t:?} is not an address"))
        })
        .collect::<Result<_, _>>()?;
    match ips.as_slice() {
        [a, b] if a.is_ipv4() == b.is_ipv4() => {
            Err(format!("clusterIPs {a} and {b} are of one family"))
        }
        [_, _, _, ..] => Err("more than two clusterIPs".into()),
        _ => Ok((ips, false)),
    }
}

/// One Service port; `many` when the Service has several (each needs a name).
fn service_port(doc: &ServicePortDoc, many: bool) -> Result<ServicePortSpec, String> {
    let name = doc.name.clone().unwrap_or_default();
    if many && name.is_empty() {
        return Err("each port of a Service with several needs a name".into());
    }
    if !name.is_empty() && !is_dns_label(&name) {
        return Err(format!("port name {name:?} is not a DNS label"));
    }
    let port = port_number("port", doc.port.ok_or("a port has no port number")?)?;
    // The API server defaults an absent, 0 or empty targetPort to the port.
    let target_port = match &doc.target_port {
        None | Some(PortValue::Number(0)) => TargetPort::Number(port),
        Some(PortValue::Name(n)) if n.is_empty() => TargetPort::Number(port),
        Some(PortValue::Number(n)) => TargetPort::Number(port_number("targetPort", *n)?),
        Some(PortValue::Name(n)) if is_port_name(n) => TargetPort::Name(n.clone()),
        Some(PortValue::Name(n)) => {
            return Err(format!("targetPort {n:?} is no port number or port name"))
        }
    };
    Ok(ServicePortSpec {
        name,
        protocol: protocol(doc.protocol.as_deref())?,
        port,
        target_port,
    })
}

/// The Service's ports: each checked, names and (port, protocol) unique, at most
/// [`MAX_PORTS`]; required unless it is headless or an ExternalName.
fn service_ports(docs: &[ServicePortDoc], required: bool) -> Result<Vec<ServicePortSpec>, String> {
    if docs.len() > MAX_PORTS {
        return Err(format!(
            "{} ports, more than the {MAX_PORTS} weft takes",
            docs.len()
        ));
    }
    if required && docs.is_empty() {
        return Err("a Service with a clusterIP needs ports".into());
    }
    let ports: Vec<ServicePortSpec> = (docs.iter())
        .map(|d| service_port(d, docs.len() > 1))
        .collect::<Result<_, _>>()?;
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for p in &ports {
        if !names.insert(p.name.as_str()) {
            return Err(format!("port name {:?} is given twice", p.name));
        }
        if !numbers.insert((p.port, p.protocol)) {
            return Err(format!("port {}/{} is given twice", p.port, p.protocol));
        }
    }
    Ok(ports)
}

/// The affinity timeout for `ClientIP`, `None` for `None`.
fn affinity(spec: &ServiceSpecDoc) -> Result<Option<u32>, String> {
    let config = (spec.session_affinity_config.as_ref()).and_then(|c| c.client_ip.as_ref());
    match (spec.session_affinity.as_deref(), config) {
        (None | Some("None"), None) => Ok(None),
        (None | Some("None"), Some(_)) => {
            Err("sessionAffinityConfig is set but sessionAffinity is not ClientIP".into())
        }
        (Some("ClientIP"), config) => match config.and_then(|c| c.timeout_seconds) {
            None => Ok(Some(DEFAULT_AFFINITY_SECONDS)),
            Some(t @ 1..=MAX_AFFINITY_SECONDS) => Ok(Some(t as u32)),
            Some(t) => Err(format!(
                "sessionAffinityConfig.clientIP.timeoutSeconds {t} is not 1 to {MAX_AFFINITY_SECONDS}"
            )),
        },
        (Some(other), _) => Err(format!("sessionAffinity {other:?} is not None or ClientIP")),
    }
}

/// Reads a Service's `spec` into the Service `namespace`/`name`, with the API
/// server's checks.
pub fn service(namespace: &str, name: &str, spec: &ServiceSpecDoc) -> Result<Service, String> {
    check_names(namespace, name, is_dns1035_label)?;
    let kind = service_type(spec.type_.as_deref())?;
    let (cluster_ips, headless) = cluster_ips(spec, kind)?;
    let required = !headless && kind != ServiceType::ExternalName;
    let ports = service_ports(spec.ports.as_deref().unwrap_or_default(), required)?;
    let internal_local = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            return Err(format!(
                "internalTrafficPolicy {other:?} is not Cluster or Local"
            ))
        }
    };
    Ok(Service {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        kind,
        cluster_ips,
        headless,
        ports,
        affinity_seconds: affinity(spec)?,
        internal_local,
    })
}

/// An endpoint's addresses, of the slice's type: one to [`MAX_ADDRESSES`]; none
/// kept for an FQDN slice.
fn addresses(texts: &[String], kind: AddressType) -> Result<Vec<IpAddr>, String> {
    if texts.is_empty() || texts.len() > MAX_ADDRESSES {
        return Err(format!(
            "an endpoint has {} addresses, not 1 to {MAX_ADDRESSES}",
            texts.len()
        ));
    }
    if kind == AddressType::Fqdn {
        return Ok(Vec::new());
    }
    (texts.iter())
        .map(|t| match (t.parse::<IpAddr>(), kind) {
            (Ok(ip @ IpAddr::V4(_)), AddressType::Ipv4) => Ok(ip),
            (Ok(ip @ IpAddr::V6(_)), AddressType::Ipv6) => Ok(ip),
            _ => Err(format!("address {t:?} is not an {kind:?} address")),
        })
        .collect()
}

/// One endpoint of a slice of `kind`.
fn endpoint(doc: &EndpointDoc, kind: AddressType) -> Result<SliceEndpoint, String> {
    let c = &doc.conditions;
    let ready = c.ready.unwrap_or(true);
    let conditions = Conditions {
        ready,
        serving: c.serving.unwrap_or(ready),
        terminating: c.terminating.unwrap_or(false),
    };
    if let Some(node) = doc.node_name.as_deref().filter(|n| !is_dns_subdomain(n)) {
        return Err(format!("nodeName {node:?} is not a node name"));
    }
    let target_ref = doc.target_ref.as_ref().map(|t| TargetRef {
        kind: t.kind.clone().unwrap_or_default(),
        namespace: t.namespace.clone().unwrap_or_default(),
        name: t.name.clone().unwrap_or_default(),
    });
    Ok(SliceEndpoint {
        addresses: addresses(&doc.addresses, kind)?,
        conditions,
        node_name: doc.node_name.clone(),
        target_ref,
    })
}

/// A slice's ports: names empty or DNS labels, each name once, numbers 1 to
/// 65535, at most [`MAX_PORTS`].
fn slice_ports(docs: &[SlicePortDoc]) -> Result<Vec<SlicePort>, String> {
    if docs.len() > MAX_PORTS {
        return Err(format!(
            "{} ports, more than the {MAX_PORTS} weft takes",
            docs.len()
        ));
    }
    let mut names = BTreeSet::new();
    let mut ports = Vec::with_capacity(docs.len());
    for d in docs {
        let name = d.name.clone().unwrap_or_default();
        if !name.is_empty() && !is_dns_label(&name) {
            return Err(format!("port name {name:?} is not a DNS label"));
        }
        if !names.insert(name.clone()) {
            return Err(format!("port name {name:?} is given twice"));
        }
        ports.push(SlicePort {
            name,
            protocol: protocol(d.protocol.as_deref())?,
            port: d.port.map(|n| port_number("port", n)).transpose()?,
        });
    }
    Ok(ports)
}

/// Reads an EndpointSlice's fields into the slice `namespace`/`name` whose
/// labels are `labels`, with the API server's checks.
pub fn slice(
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    body: &SliceBodyDoc,
) -> Result<EndpointSlice, String> {
    check_names(namespace, name, is_dns_subdomain)?;
    let address_type = match body.address_type.as_deref() {
        Some("IPv4") => AddressType::Ipv4,
        Some("IPv6") => AddressType::Ipv6,
        Some("FQDN") => AddressType::Fqdn,
        Some(other) => return Err(format!("addressType {other:?} is not IPv4, IPv6 or FQDN")),
        None => return Err("addressType is missing".into()),
    };
    let docs = body.endpoints.as_deref().unwrap_or_default();
    if docs.len() > MAX_ENDPOINTS {
        return Err(format!(
            "{} endpoints, more than the {MAX_ENDPOINTS} a slice may have",
            docs.len()
        ));
    }
    let endpoints = (docs.iter())
        .map(|e| endpoint(e, address_type))
        .collect::<Result<_, _>>()?;
    let service = labels.get(SERVICE_NAME_LABEL).cloned();
    if let Some(s) = service.as_deref().filter(|s| !is_label_value(s)) {
        return Err(format!(
            "label {SERVICE_NAME_LABEL} {s:?} is no label value"
        ));
    }
    Ok(EndpointSlice {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        service,
        address_type,
        endpoints,
        ports: slice_ports(body.ports.as_deref().unwrap_or_default())?,
    })
}

/// Reads a Service's `spec` as the API server holds it (JSON) into the Service
/// `namespace`/`name`, with every check a manifest gets.
pub fn service_value(
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<Service, String> {
    let spec: ServiceSpecDoc = serde_json::from_value(spec).map_err(|e| format!("spec: {e}"))?;
    service(namespace, name, &spec)
}

/// Reads an EndpointSlice's fields as the API server holds them (JSON) into the
/// slice `namespace`/`name` with `labels`, with every check a manifest gets.
pub fn slice_value(
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    body: serde_json::Value,
) -> Result<EndpointSlice, String> {
    let body: SliceBodyDoc = serde_json::from_value(body).map_err(|e| e.to_string())?;
    slice(namespace, name, labels, &body)
}

/// The namespace of a document's metadata: its own, or `default`.
fn namespace_of(meta: &MetaDoc) -> &str {
    meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
}

/// Reads a Service document.
pub fn service_doc(doc: &ServiceDoc) -> Result<Service, String> {
    service(namespace_of(&doc.metadata), &doc.metadata.name, &doc.spec)
}

/// Reads an EndpointSlice document.
pub fn slice_doc(doc: &SliceDoc) -> Result<EndpointSlice, String> {
    let m = &doc.metadata;
    slice(namespace_of(m), &m.name, &m.labels, &doc.body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn svc(spec: serde_json::Value) -> Result<Service, String> {
        let doc: ServiceSpecDoc = serde_json::from_value(spec).map_err(|e| e.to_string())?;
        service("default", "web", &doc)
    }

    fn slc(labels: &[(&str, &str)], body: serde_json::Value) -> Result<EndpointSlice, String> {
        let doc: SliceBodyDoc = serde_json::from_value(body).map_err(|e| e.to_string())?;
        let labels = (labels.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        slice("default", "web-abc", &labels, &doc)
    }

    #[test]
    fn a_service_reads_with_the_defaults_kubernetes_gives() {
        let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP"}]}))
            .unwrap();
        assert_eq!(s.kind, ServiceType::ClusterIp);
        assert_eq!(s.cluster_ips, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.ports[0].target_port, TargetPort::Number(53));
        assert_eq!(
            (s.ports[0].protocol, s.ports[0].name.as_str()),
            (Protocol::Udp, "")
        );
        assert_eq!(
            (s.affinity_seconds, s.internal_local, s.headless),
            (None, false, false)
        );
        let s = svc(json!({
            "type": "NodePort", "clusterIPs": ["10.96.0.11", "fd00::b"],
            "ports": [{"name": "http", "port": 80, "targetPort": "web"},
                      {"name": "https", "port": 443, "targetPort": 8443}],
            "sessionAffinity": "ClientIP", "internalTrafficPolicy": "Local",
            "selector": {"app": "web"}, "ipFamilies": ["IPv4", "IPv6"]
        }))
        .unwrap();
        assert_eq!(s.kind, ServiceType::NodePort);
        assert_eq!(s.cluster_ips.len(), 2);
        assert_eq!(s.ports[0].target_port, TargetPort::Name("web".into()));
        assert_eq!(s.ports[1].target_port, TargetPort::Number(8443));
        assert_eq!(s.affinity_seconds, Some(DEFAULT_AFFINITY_SECONDS));
        assert!(s.internal_local);
        let timed = svc(json!({"clusterIP": "10.96.0.12", "ports": [{"port": 80}],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}))
        .unwrap();
        assert_eq!(timed.affinity_seconds, Some(60));
        let headless = svc(json!({"clusterIP": "None"})).unwrap();
        assert!(headless.headless && headless.cluster_ips.is_empty());
        let external = svc(json!({"type": "ExternalName", "externalName": "db.example"})).unwrap();
        assert_eq!(external.kind, ServiceType::ExternalName);
    }

    /// Service specs the API server refuses, each with what the reason says.
    fn refused_specs() -> Vec<(serde_json::Value, &'static str)> {
        vec![
            (json!({"clusterIP": "10.96.0.1"}), "needs ports"),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 0}]}),
                "port 0 is not",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 70000}]}),
                "not 1 to 65535",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}, {"port": 81}]}),
                "needs a name",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}),
                "given twice",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
                "80/TCP is given twice",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "protocol": "ICMP"}]}),
                "not TCP, UDP or SCTP",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "targetPort": "no_such--name"}]}),
                "no port number or port name",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "targetPort": 65536}]}),
                "targetPort 65536",
            ),
            (
                json!({"clusterIP": "ten", "ports": [{"port": 80}]}),
                "not an address",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.2"], "ports": [{"port": 80}]}),
                "is not clusterIP",
            ),
            (
                json!({"clusterIPs": ["10.96.0.1", "10.96.0.2"], "ports": [{"port": 80}]}),
                "one family",
            ),
            (
                json!({"clusterIPs": ["None", "10.96.0.2"], "ports": [{"port": 80}]}),
                "stands alone",
            ),
            (
                json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]}),
                "only a ClusterIP",
            ),
            (
                json!({"type": "ExternalName", "clusterIP": "10.96.0.1"}),
                "no clusterIP",
            ),
            (json!({"type": "Sideways"}), "not a Service type"),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}], "sessionAffinity": "Sticky"}),
                "not None or ClientIP",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}], "sessionAffinity": "ClientIP",
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
                "timeoutSeconds 0",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}],
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}}),
                "sessionAffinity is not ClientIP",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}], "internalTrafficPolicy": "Nearby"}),
                "not Cluster or Local",
            ),
            (json!({"ports": "many"}), "invalid type"),
            (json!({"ports": [{"port": 80}]}), "no clusterIP"),
        ]
    }

    #[test]
    fn a_service_the_api_server_would_refuse_is_refused_with_why() {
        let bad = refused_specs();
        for (spec, says) in bad {
            let e = svc(spec.clone()).expect_err(&spec.to_string());
            assert!(e.contains(says), "{spec}: {e}");
        }
        let names = ServiceSpecDoc::default();
        assert!(service("Default", "web", &names)
            .unwrap_err()
            .contains("namespace"));
        assert!(service("x", "1web", &names)
            .unwrap_err()
            .contains("name \"1web\""));
    }

    /// A Service with more ports than weft takes is refused by count, before
    /// any port is read; one with as many as it takes reads.
    #[test]
    fn a_huge_port_list_is_refused() {
        let ports = |n: usize| -> Vec<serde_json::Value> {
            (0..n)
                .map(|i| json!({"name": format!("p{i}"), "port": 1000 + i}))
                .collect()
        };
        let e = svc(json!({"clusterIP": "10.96.0.1", "ports": ports(MAX_PORTS + 1)})).unwrap_err();
        assert!(e.contains("more than the 100 weft takes"), "{e}");
        let s = svc(json!({"clusterIP": "10.96.0.1", "ports": ports(MAX_PORTS)})).unwrap();
        assert_eq!(s.ports.len(), MAX_PORTS);
    }

    #[test]
    fn endpoint_conditions_read_as_kubernetes_says_to_read_absent_ones() {
        let s = slc(
            &[(SERVICE_NAME_LABEL, "web")],
            json!({"addressType": "IPv4", "endpoints": [
                {"addresses": ["10.244.1.5"]},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": false}},
                {"addresses": ["10.244.1.7"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.1.8"], "conditions": {"serving": false}, "nodeName": "n1",
                 "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-0"}}
            ], "ports": [{"name": "http", "port": 8080}]}),
        )
        .unwrap();
        let c: Vec<(bool, bool, bool)> = (s.endpoints.iter())
            .map(|e| {
                (
                    e.conditions.ready,
                    e.conditions.serving,
                    e.conditions.terminating,
                )
            })
            .collect();
        assert_eq!(
            c,
            [
                (true, true, false),
                (false, false, false),
                (false, true, true),
                (true, false, false)
            ]
        );
        assert_eq!(s.service.as_deref(), Some("web"));
        assert_eq!(s.endpoints[3].node_name.as_deref(), Some("n1"));
        assert_eq!(s.endpoints[3].target_ref.as_ref().unwrap().name, "web-0");
        assert_eq!(s.ports[0].port, Some(8080));
    }

    #[test]
    fn a_slice_the_api_server_would_refuse_is_refused_with_why() {
        let web = [(SERVICE_NAME_LABEL, "web")];
        let bad = [
            (json!({"endpoints": []}), "addressType is missing"),
            (json!({"addressType": "IPv5"}), "not IPv4, IPv6 or FQDN"),
            (
                json!({"addressType": "IPv4", "endpoints": [{"addresses": []}]}),
                "0 addresses",
            ),
            (
                json!({"addressType": "IPv4", "endpoints": [{"addresses": ["fd00::1"]}]}),
                "not an Ipv4 address",
            ),
            (
                json!({"addressType": "IPv6", "endpoints": [{"addresses": ["10.0.0.1"]}]}),
                "not an Ipv6 address",
            ),
            (
                json!({"addressType": "IPv4", "endpoints": [{"addresses": ["nonsense"]}]}),
                "not an Ipv4 address",
            ),
            (
                json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "No Node"}]}),
                "nodeName",
            ),
            (
                json!({"addressType": "IPv4", "ports": [{"port": 0}]}),
                "port 0",
            ),
            (
                json!({"addressType": "IPv4", "ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]}),
                "given twice",
            ),
            (
                json!({"addressType": "IPv4", "ports": [{"name": "A_b", "port": 1}]}),
                "not a DNS label",
            ),
            (
                json!({"addressType": "IPv4", "endpoints": "x"}),
                "invalid type",
            ),
        ];
        for (body, says) in bad {
            let e = slc(&web, body.clone()).expect_err(&body.to_string());
            assert!(e.contains(says), "{body}: {e}");
        }
        let many: Vec<_> = (0..=MAX_ENDPOINTS)
            .map(|i| json!({"addresses": [format!("10.1.{}.{}", i / 256, i % 256)]}))
            .collect();
        let e = slc(&web, json!({"addressType": "IPv4", "endpoints": many})).unwrap_err();
        assert!(e.contains("more than the 1000"), "{e}");
        let ports: Vec<_> = (0..=MAX_PORTS)
            .map(|i| json!({"name": format!("p{i}"), "port": 1 + i}))
            .collect();
        let e = slc(&web, json!({"addressType": "IPv4", "ports": ports})).unwrap_err();
        assert!(e.contains("more than the 100"), "{e}");
        // A slice naming a Service in another namespace: no label value can.
        let e = slc(
            &[(SERVICE_NAME_LABEL, "kube-system/dns")],
            json!({"addressType": "IPv4"}),
        )
        .unwrap_err();
        assert!(e.contains("is no label value"), "{e}");
        // The positive control: the same slice, with a good label and fields.
        let good = slc(
            &web,
            json!({"addressType": "FQDN", "endpoints": [{"addresses": ["db.example"]}]}),
        )
        .unwrap();
        assert!(
            good.endpoints[0].addresses.is_empty(),
            "FQDN addresses are not kept"
        );
    }

    #[test]
    fn names_are_held_to_kubernetes_rules() {
        assert!(is_dns_label("web-1") && !is_dns_label("-web") && !is_dns_label("Web"));
        assert!(!is_dns_label(&"a".repeat(64)) && is_dns_label(&"a".repeat(63)));
        assert!(is_dns_subdomain("web.x-1") && !is_dns_subdomain("web..x"));
        assert!(is_port_name("http") && is_port_name("h2c-8") && !is_port_name("8080"));
        assert!(!is_port_name("a--b") && !is_port_name("sixteen-chars-xx"));
        assert!(is_label_value("") && is_label_value("a.b_c-d") && !is_label_value("a/b"));
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;

    /// Any JSON value, its object keys mostly the fields a Service or a slice
    /// has, so that the values reach the checks.
    fn arb_json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("clusterIP"),
            Just("clusterIPs"),
            Just("ports"),
            Just("port"),
            Just("targetPort"),
            Just("name"),
            Just("protocol"),
            Just("type"),
            Just("sessionAffinity"),
            Just("sessionAffinityConfig"),
            Just("clientIP"),
            Just("timeoutSeconds"),
            Just("internalTrafficPolicy"),
            Just("addressType"),
            Just("endpoints"),
            Just("addresses"),
            Just("conditions"),
            Just("ready"),
            Just("nodeName"),
            Just("targetRef"),
            Just("x"),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-2i64..70_000).prop_map(Value::from),
            prop_oneof![
                Just("None"),
                Just("10.96.0.1"),
                Just("fd00::1"),
                Just("TCP"),
                Just("UDP"),
                Just("IPv4"),
                Just("IPv6"),
                Just("FQDN"),
                Just("ClientIP"),
                Just("Local"),
                Just("http"),
                Just(""),
                Just("-"),
                Just("ExternalName"),
            ]
            .prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::vec((key.clone(), inner), 0..6).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        /// Whatever a store holds, reading it gives an object or a reason, and
        /// never panics; what reads compiles into a table that passes its
        /// check.
        #[test]
        fn any_document_reads_or_is_refused_without_a_panic(
            spec in arb_json(),
            body in arb_json(),
        ) {
            let labels = [(SERVICE_NAME_LABEL.to_owned(), "web".to_owned())].into();
            let service = service_value("default", "web", spec);
            let slice = slice_value("default", "web-a", &labels, body);
            let mut model = crate::services::model::ServiceModel::default();
            match service {
                Ok(s) => model.services.push(s),
                Err(why) => prop_assert!(!why.is_empty()),
            }
            match slice {
                Ok(s) => model.slices.push(s),
                Err(why) => prop_assert!(!why.is_empty()),
            }
            let cidr = Some("10.96.0.0/12".parse().unwrap());
            let (t, _) = crate::services::compile::compile(&model, "n1", cidr);
            prop_assert_eq!(t.check(), Ok(()));
        }
    }

    /// A good pair reads, as a control of the above.
    #[test]
    fn the_fuzzed_shapes_can_read() {
        let spec = json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]});
        assert!(service_value("default", "web", spec).is_ok());
        let body = json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.244.1.5"]}]});
        assert!(slice_value("default", "web-a", &BTreeMap::new(), body).is_ok());
    }
}
