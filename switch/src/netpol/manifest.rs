//! Kubernetes YAML manifests, read into a [`PolicyModel`]: `Namespace`, `Pod` and
//! `networking.k8s.io/v1` `NetworkPolicy` documents, several to a file; and, for a
//! reader that takes them ([`Objects`]), `v1` `Service` and `discovery.k8s.io/v1`
//! `EndpointSlice` documents into a [`ServiceModel`]. Other kinds are skipped and
//! reported as such. A document that is not valid is an error naming
//! its file, its index in the file (from 0) and why; the API server's validation rules
//! for these fields are checked here, so a bad policy never half-applies.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;

use super::last_good::{Kind, ObjectId, Unread};
use crate::services::model::{BadObject, ServiceModel};
use crate::services::read as services;

use super::model::{
    IpBlock, Labels, NamedPort, Operator, Peer, PodObject, Policy, PolicyModel, Port, PortSpec,
    Protocol, Requirement, Rule, Selector, DEFAULT_NAMESPACE,
};

/// A document that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file.
    pub file: String,
    /// The document's index in the file, from 0.
    pub document: usize,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} document {}: {}",
            self.file, self.document, self.reason
        )
    }
}

/// A document of a kind policy does not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub file: String,
    /// The document's index in the file.
    pub document: usize,
    /// Its `kind`.
    pub kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Labels,
}

#[derive(Debug, Deserialize)]
struct NamespaceDoc {
    metadata: Meta,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPortDoc {
    #[serde(default)]
    name: Option<String>,
    container_port: u16,
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ContainerDoc {
    #[serde(default)]
    ports: Vec<ContainerPortDoc>,
}

#[derive(Debug, Default, Deserialize)]
struct PodSpecDoc {
    #[serde(default)]
    containers: Vec<ContainerDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatusDoc {
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<PodIpDoc>,
}

#[derive(Debug, Default, Deserialize)]
struct PodIpDoc {
    #[serde(default)]
    ip: String,
}

#[derive(Debug, Deserialize)]
struct PodDoc {
    metadata: Meta,
    #[serde(default)]
    spec: PodSpecDoc,
    #[serde(default)]
    status: PodStatusDoc,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SelectorDoc {
    #[serde(default)]
    match_labels: Labels,
    #[serde(default)]
    match_expressions: Vec<RequirementDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequirementDoc {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IpBlockDoc {
    cidr: String,
    #[serde(default)]
    except: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PeerDoc {
    #[serde(default)]
    pod_selector: Option<SelectorDoc>,
    #[serde(default)]
    namespace_selector: Option<SelectorDoc>,
    #[serde(default)]
    ip_block: Option<IpBlockDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortValue {
    Number(i64),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortDoc {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<PortValue>,
    #[serde(default)]
    end_port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngressDoc {
    #[serde(default)]
    from: Vec<PeerDoc>,
    #[serde(default)]
    ports: Vec<PortDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressDoc {
    #[serde(default)]
    to: Vec<PeerDoc>,
    #[serde(default)]
    ports: Vec<PortDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicySpecDoc {
    pod_selector: SelectorDoc,
    #[serde(default)]
    policy_types: Option<Vec<String>>,
    #[serde(default)]
    ingress: Option<Vec<IngressDoc>>,
    #[serde(default)]
    egress: Option<Vec<EgressDoc>>,
}

#[derive(Debug, Deserialize)]
struct PolicyDoc {
    metadata: Meta,
    spec: PolicySpecDoc,
}

/// A `protocol` field of a Kubernetes object (a NetworkPolicy's port, a Service's,
/// an EndpointSlice's): TCP when absent.
pub(crate) fn protocol(p: Option<&str>) -> Result<Protocol, String> {
    match p {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(format!("protocol {other:?} is not TCP, UDP or SCTP")),
    }
}

fn selector(doc: SelectorDoc) -> Result<Selector, String> {
    let requirements = doc
        .match_expressions
        .into_iter()
        .map(|r| {
            let operator = match r.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => return Err(format!("operator {other:?} of key {:?} is unknown", r.key)),
            };
            let needs_values = matches!(operator, Operator::In | Operator::NotIn);
            if needs_values == r.values.is_empty() {
                return Err(format!(
                    "{} of key {:?} must have {} values",
                    r.operator,
                    r.key,
                    if needs_values { "some" } else { "no" }
                ));
            }
            Ok(Requirement {
                key: r.key,
                operator,
                values: r.values,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Selector {
        labels: doc.match_labels,
        requirements,
    })
}

/// A CIDR of either family, with no host bits set.
fn cidr(text: &str) -> Result<IpNet, String> {
    match text.parse::<IpNet>() {
        Ok(net) if net == net.trunc() => Ok(net),
        Ok(net) => Err(format!("ipBlock {net} has host bits set")),
        Err(_) => Err(format!("ipBlock {text:?} is not a CIDR")),
    }
}

/// A peer.
fn peer(doc: PeerDoc) -> Result<Peer, String> {
    match doc {
        PeerDoc {
            ip_block: Some(block),
            pod_selector: None,
            namespace_selector: None,
        } => {
            let net = cidr(&block.cidr)?;
            let mut except = Vec::new();
            for e in &block.except {
                // Of another family, `contains` is false: an IPv6 exception to an
                // IPv4 block is refused as outside it, as the API server does.
                match cidr(e)? {
                    x if net.contains(&x) && x != net => except.push(x),
                    x => return Err(format!("ipBlock except {x} is not within {net}")),
                }
            }
            Ok(Peer::Block(IpBlock { cidr: net, except }))
        }
        PeerDoc {
            ip_block: Some(_), ..
        } => Err("a peer with an ipBlock may have no selector".into()),
        PeerDoc {
            pod_selector: None,
            namespace_selector: None,
            ..
        } => Err("a peer needs a podSelector, a namespaceSelector or an ipBlock".into()),
        PeerDoc {
            pod_selector,
            namespace_selector,
            ..
        } => Ok(Peer::Pods {
            pods: pod_selector.map(selector).transpose()?,
            namespaces: namespace_selector.map(selector).transpose()?,
        }),
    }
}

fn port(doc: PortDoc) -> Result<Port, String> {
    let protocol = protocol(doc.protocol.as_deref())?;
    let number = |n: i64| {
        u16::try_from(n)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("port {n} is not 1 to 65535"))
    };
    let port = match (doc.port, doc.end_port) {
        (None, None) => PortSpec::All,
        (None, Some(_)) => return Err("endPort needs a port".into()),
        (Some(PortValue::Number(n)), end) => {
            let first = number(n)?;
            let last = end.map(number).transpose()?.unwrap_or(first);
            if last < first {
                return Err(format!("endPort {last} is below port {first}"));
            }
            PortSpec::Range { first, last }
        }
        (Some(PortValue::Name(_)), Some(_)) => {
            return Err("endPort needs a numeric port, not a named one".into())
        }
        (Some(PortValue::Name(name)), None) if name.is_empty() => {
            return Err("a named port has an empty name".into())
        }
        (Some(PortValue::Name(name)), None) => PortSpec::Named(name),
    };
    Ok(Port { protocol, port })
}

fn rule(peers: Vec<PeerDoc>, ports: Vec<PortDoc>) -> Result<Rule, String> {
    let peers = peers.into_iter().map(peer).collect::<Result<_, _>>()?;
    let ports = ports.into_iter().map(port).collect::<Result<_, _>>()?;
    Ok(Rule { peers, ports })
}

fn policy(doc: PolicyDoc) -> Result<Policy, String> {
    let spec = doc.spec;
    // Kubernetes defaults an absent or empty list: Ingress always, and Egress when
    // there is at least one egress rule.
    let types = match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => {
            for t in types {
                if t != "Ingress" && t != "Egress" {
                    return Err(format!("policyType {t:?} is neither Ingress nor Egress"));
                }
            }
            (
                types.iter().any(|t| t == "Ingress"),
                types.iter().any(|t| t == "Egress"),
            )
        }
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    };
    let ingress = spec
        .ingress
        .unwrap_or_default()
        .into_iter()
        .map(|r| rule(r.from, r.ports))
        .collect::<Result<Vec<_>, _>>()?;
    let egress = spec
        .egress
        .unwrap_or_default()
        .into_iter()
        .map(|r| rule(r.to, r.ports))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Policy {
        namespace: doc
            .metadata
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        name: doc.metadata.name,
        pod_selector: selector(spec.pod_selector)?,
        ingress: types.0.then_some(ingress),
        egress: types.1.then_some(egress),
    })
}

fn pod(doc: PodDoc) -> Result<PodObject, String> {
    let mut ports = Vec::new();
    for p in doc.spec.containers.iter().flat_map(|c| &c.ports) {
        if let Some(name) = &p.name {
            ports.push(NamedPort {
                name: name.clone(),
                protocol: protocol(p.protocol.as_deref())?,
                port: p.container_port,
            });
        }
    }
    let (ip, ip6) = pod_addresses(&doc.status)?;
    Ok(PodObject {
        namespace: doc
            .metadata
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        name: doc.metadata.name,
        labels: doc.metadata.labels,
        ports,
        ip,
        ip6,
    })
}

/// A pod's addresses: the first of each family of `status.podIPs`, or of
/// `status.podIP` where that is all there is.
fn pod_addresses(status: &PodStatusDoc) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), String> {
    let listed = status.pod_ips.iter().map(|p| p.ip.as_str());
    let texts: Vec<&str> = match status.pod_ips.is_empty() {
        true => status.pod_ip.as_deref().into_iter().collect(),
        false => listed.collect(),
    };
    let (mut ip, mut ip6) = (None, None);
    for text in texts.into_iter().filter(|t| !t.is_empty()) {
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => _ = ip.get_or_insert(a),
            Ok(IpAddr::V6(a)) => _ = ip6.get_or_insert(a),
            Err(_) => return Err(format!("status.podIPs {text:?} is not an address")),
        }
    }
    Ok((ip, ip6))
}

/// A parsed document, YAML's or JSON's, as [`document`] reads it.
trait DocValue: Sized {
    /// Whether it is empty (a YAML document of nothing).
    fn is_null(&self) -> bool;
    /// The string at `key` of a mapping.
    fn str_field(&self, key: &str) -> Option<String>;
    /// The string at `key` of the mapping's `metadata`.
    fn meta_field(&self, key: &str) -> Option<String>;
    /// The document as `T`.
    fn to<T: serde::de::DeserializeOwned>(self) -> Result<T, String>;
}

impl DocValue for yaml_serde::Value {
    fn is_null(&self) -> bool {
        yaml_serde::Value::is_null(self)
    }
    fn str_field(&self, key: &str) -> Option<String> {
        self.get(key).and_then(|v| v.as_str()).map(str::to_owned)
    }
    fn meta_field(&self, key: &str) -> Option<String> {
        let meta = self.get("metadata")?;
        meta.get(key).and_then(|v| v.as_str()).map(str::to_owned)
    }
    fn to<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        yaml_serde::from_value(self).map_err(|e| e.to_string())
    }
}

impl DocValue for serde_json::Value {
    fn is_null(&self) -> bool {
        serde_json::Value::is_null(self)
    }
    fn str_field(&self, key: &str) -> Option<String> {
        self.get(key).and_then(|v| v.as_str()).map(str::to_owned)
    }
    fn meta_field(&self, key: &str) -> Option<String> {
        let meta = self.get("metadata")?;
        meta.get(key).and_then(|v| v.as_str()).map(str::to_owned)
    }
    fn to<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        serde_json::from_value(self).map_err(|e| e.to_string())
    }
}

/// Reads a NetworkPolicy's `spec` as the API server holds it into the policy
/// `namespace`/`name`, with every check a manifest gets.
pub fn policy_spec(namespace: &str, name: &str, spec: serde_json::Value) -> Result<Policy, String> {
    let spec: PolicySpecDoc = serde_json::from_value(spec).map_err(|e| format!("spec: {e}"))?;
    policy(PolicyDoc {
        metadata: Meta {
            name: name.to_owned(),
            namespace: Some(namespace.to_owned()),
            labels: Labels::new(),
        },
        spec,
    })
}

/// The object a document names, as far as it names one of the kinds policy
/// uses: its `kind`, and its `metadata`'s `name` and `namespace` (`default` if
/// none), whatever else in it does not read.
fn identity(value: &impl DocValue) -> Option<ObjectId> {
    let kind = Kind::of(&value.str_field("kind")?)?;
    let name = value.meta_field("name")?;
    let namespace = value.meta_field("namespace");
    let namespace = namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    Some(ObjectId::new(kind, namespace, &name))
}

/// Where documents are read into: policy's objects, and Services' for a reader
/// that takes them (for one that does not, they are skipped as any other kind).
pub trait Sink {
    /// Where policy's objects go.
    fn policy(&mut self) -> &mut PolicyModel;
    /// Where Services and EndpointSlices go, if they are taken.
    fn services(&mut self) -> Option<&mut ServiceModel> {
        None
    }
}

impl Sink for PolicyModel {
    fn policy(&mut self) -> &mut PolicyModel {
        self
    }
}

/// Policy's objects and Services', read from one set of documents.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Namespaces, Pods and NetworkPolicies.
    pub policy: PolicyModel,
    /// Services and EndpointSlices, and those that did not read.
    pub services: ServiceModel,
}

impl Sink for Objects {
    fn policy(&mut self) -> &mut PolicyModel {
        &mut self.policy
    }
    fn services(&mut self) -> Option<&mut ServiceModel> {
        Some(&mut self.services)
    }
}

/// Reads a Service or EndpointSlice document (`kind` of apiVersion `api`) into
/// `services`; one that does not read is left out and named in their `bad`, and
/// never counts against policy: a Service says nothing of what a pod may receive.
fn service_document(
    value: impl DocValue,
    (kind, api): (&str, &str),
    services: &mut ServiceModel,
    (file, document): (&str, usize),
) {
    let namespace = value.meta_field("namespace");
    let id = format!(
        "{}/{}",
        namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
        value.meta_field("name").unwrap_or_default()
    );
    let read = match (kind, api) {
        ("Service", "v1") => (value.to::<services::ServiceDoc>())
            .and_then(|d| services::service_doc(&d))
            .map(|s| services.services.push(s)),
        ("EndpointSlice", "discovery.k8s.io/v1") => (value.to::<services::SliceDoc>())
            .and_then(|d| services::slice_doc(&d))
            .map(|s| services.slices.push(s)),
        _ => Err(format!("{kind} of apiVersion {api:?} is not supported")),
    };
    if let Err(why) = read {
        services.bad.push(BadObject {
            kind: kind.to_owned(),
            id,
            source: format!("{file} document {document}"),
            why,
        });
    }
}

/// Reads one document into `sink`, from document `at` (file, index);
/// `Ok(Some(kind))` for a kind that is skipped.
fn document(
    value: impl DocValue,
    sink: &mut impl Sink,
    at: (&str, usize),
) -> Result<Option<String>, String> {
    if value.is_null() {
        return Ok(None);
    }
    let kind = value.str_field("kind").ok_or("the document has no kind")?;
    let api = value.str_field("apiVersion").unwrap_or_default();
    if let (Some(services), "Service" | "EndpointSlice") = (sink.services(), kind.as_str()) {
        service_document(value, (&kind, &api), services, at);
        return Ok(None);
    }
    let model = sink.policy();
    let typed = |e: String| format!("{kind}: {e}");
    match (kind.as_str(), api.as_str()) {
        ("Namespace", "v1") => {
            let ns: NamespaceDoc = value.to().map_err(typed)?;
            model
                .namespaces
                .insert(ns.metadata.name, ns.metadata.labels);
        }
        ("Pod", "v1") => {
            let doc: PodDoc = value.to().map_err(typed)?;
            model.pods.push(Arc::new(pod(doc)?));
        }
        ("NetworkPolicy", "networking.k8s.io/v1") => {
            let doc: PolicyDoc = value.to().map_err(typed)?;
            let p = policy(doc)?;
            model.policies.push(Arc::new(p));
        }
        ("Namespace" | "Pod", _) | ("NetworkPolicy", _) => {
            return Err(format!("{kind} of apiVersion {api:?} is not supported"))
        }
        _ => return Ok(Some(kind)),
    }
    Ok(None)
}

/// Reads one JSON document (a store's record, say) into `model`, as [`read`] reads
/// YAML: JSON is YAML, but a JSON parser reads it several times faster, which a
/// store of 150,000 objects feels. The same checks, the same errors, but for a
/// syntax error's, which says "not JSON".
pub fn read_json(
    file: &str,
    text: &str,
    model: &mut impl Sink,
) -> Result<Vec<Skipped>, Vec<ManifestError>> {
    let error = |reason: String| {
        vec![ManifestError {
            file: file.to_owned(),
            document: 0,
            reason,
        }]
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| error(format!("not JSON: {e}")))?;
    match document(value, model, (file, 0)) {
        Ok(Some(kind)) => Ok(vec![Skipped {
            file: file.to_owned(),
            document: 0,
            kind,
        }]),
        Ok(None) => Ok(Vec::new()),
        Err(reason) => Err(error(reason)),
    }
}

/// What reading a file's documents gave, beside the objects read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Documents {
    /// The documents of kinds policy does not use.
    pub skipped: Vec<Skipped>,
    /// The documents that did not read, each with the object it names, if any.
    pub unread: Vec<Unread>,
}

/// Reads every document of `text` (the file `file`) into `model`, one by one: a
/// document that does not read is left out, and returned with the object it
/// names. A syntax error ends the file: what follows it cannot be told apart.
pub fn read_documents(file: &str, text: &str, model: &mut impl Sink) -> Documents {
    use serde::Deserialize as _;
    let mut out = Documents::default();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let error = |reason: String| ManifestError {
            file: file.to_owned(),
            document: i,
            reason,
        };
        let value = match yaml_serde::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                let error = error(format!("not YAML: {e}"));
                out.unread.push(Unread { id: None, error });
                break;
            }
        };
        let id = identity(&value);
        match document(value, model, (file, i)) {
            Ok(Some(kind)) => out.skipped.push(Skipped {
                file: file.to_owned(),
                document: i,
                kind,
            }),
            Ok(None) => {}
            Err(reason) => out.unread.push(Unread {
                id,
                error: error(reason),
            }),
        }
    }
    out
}

/// Reads every document of `text` (the file `file`) into `model`, and returns the
/// documents it skipped; or every error, with `model` then holding what did read.
pub fn read(
    file: &str,
    text: &str,
    model: &mut impl Sink,
) -> Result<Vec<Skipped>, Vec<ManifestError>> {
    let docs = read_documents(file, text, model);
    match docs.unread.is_empty() {
        true => Ok(docs.skipped),
        false => Err(docs.unread.into_iter().map(|u| u.error).collect()),
    }
}

/// The pods and policies `model` holds more than once (each named once).
pub fn duplicates(model: &PolicyModel) -> Vec<ObjectId> {
    let mut seen = std::collections::BTreeSet::new();
    let mut twice = std::collections::BTreeSet::new();
    let pods = (model.pods.iter()).map(|p| ObjectId::new(Kind::Pod, &p.namespace, &p.name));
    let policies =
        (model.policies.iter()).map(|p| ObjectId::new(Kind::NetworkPolicy, &p.namespace, &p.name));
    for id in pods.chain(policies) {
        if let Some(id) = seen.replace(id) {
            twice.insert(id);
        }
    }
    twice.into_iter().collect()
}

/// Checks what only the whole set can show: two objects with one name.
pub fn check_unique(model: &PolicyModel) -> Result<(), String> {
    match duplicates(model).first() {
        None => Ok(()),
        Some(id) => Err(format!("{id} is defined twice")),
    }
}
