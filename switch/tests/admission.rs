//! `deploy/kubernetes/admission.yaml`'s two ValidatingAdmissionPolicies, evaluated: each
//! policy's `matchConditions`, `variables` and `validations`, read from the file, run
//! by a CEL implementation (cel-rust, the `cel` crate) against literal UPDATE requests
//! on Nodes by weft's service account, by kubelets, by a controller and by an
//! administrator.
//!
//! There is no API server here: what is modelled of it, and why so:
//! - `object` and `oldObject` are the Node as its JSON. The API server's CEL values
//!   "mimic how the value would look if it were converted to an unstructured map using
//!   JSON serialization" (k8s.io/apiserver/pkg/cel/common, UnstructuredReflectToVal):
//!   an empty `omitempty` field is absent, so a Node without annotations has no
//!   `metadata.annotations` (not an empty map), while `spec` and `status`, structs, are
//!   always there. An update of the Node itself keeps its status, and one of
//!   `nodes/status` its spec (the Node strategies' PrepareForUpdate, which runs before
//!   admission), so no request here changes those.
//! - `request` is the AdmissionRequest, likewise: `subResource` is absent on an update
//!   of the Node itself, and so are `userInfo.groups` and `userInfo.extra` when empty.
//!   `extra` is a map of lists of strings.
//! - `variables.<name>`: computed in order, each seeing the earlier ones. The API
//!   server computes them lazily and an expression that uses one that failed fails;
//!   here one that fails is left out of `variables`, so that using it fails too.
//! - A policy applies when no `matchCondition` is false; then one that failed, or a
//!   validation false or failed, denies (`failurePolicy: Fail`, bindings `Deny`, both
//!   checked). A request is admitted when no policy denies it.
//!
//! Not modelled: `matchConstraints` (checked to be what every request here is: an
//! UPDATE of `nodes` or `nodes/status`), the API server's type checking and cost
//! limits, and its CEL extension libraries: the policies use none, and cel-rust's
//! standard environment here has none, so an expression that used one would fail on
//! every request, which the tests forbid: no expression may fail on any request, since
//! a denial by a failure rather than by a false validation hangs on `failurePolicy`.
//! Nor may one hide a failure behind `||` or `&&`, which CEL lets the other side
//! decide: each expression also runs with those strict on their left side ([`strict`]).

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{operators, EntryExpr, Expr, IdedExpr};
use cel::{Context, Env, Program, Value};
use serde_json::{json, Map, Value as Json};
use weft_switch::control::store::kube::nodes::{key, PREFIX};

const WEFT: &str = "system:serviceaccount:kube-system:weft";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";

// ---------------------------------------------------------------------------------
// The policies, as admission.yaml has them.

struct Expression {
    text: String,
    program: Program,
    /// The same, but with no failure absorbed by `||` or `&&`: see [`strict`].
    strict: IdedExpr,
}

struct Policy {
    name: String,
    match_conditions: Vec<(String, Expression)>,
    variables: Vec<(String, Expression)>,
    /// Each expression with its message.
    validations: Vec<(Expression, String)>,
}

fn documents() -> Vec<yaml_serde::Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/admission.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    yaml_serde::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, doc)| {
            <yaml_serde::Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("admission.yaml, document {i}: {e}"))
        })
        .collect()
}

fn string(v: &yaml_serde::Value, what: &str) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v:?}"))
        .to_owned()
}

fn list<'a>(v: &'a yaml_serde::Value, what: &str) -> &'a [yaml_serde::Value] {
    if v.is_null() {
        return &[];
    }
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what}: not a list: {v:?}"))
}

fn compile(env: &Env, text: String, what: &str) -> Expression {
    let program = env
        .compile(&text)
        .unwrap_or_else(|e| panic!("{what}: {text:?} does not parse: {e}"));
    let mut strict_ = program.expression().clone();
    strict(&mut strict_);
    Expression {
        text,
        program,
        strict: strict_,
    }
}

/// Rewrites `e` so that the left side of `||` and `&&` failing fails the whole:
/// `a || b` as `a ? a : b`, `a && b` as `a ? b : a`. CEL's (cel-go's, cel-rust's)
/// let the other side decide instead, so a failure that the expression as written
/// hides, like `request.subResource != '' || ...` on a request without a
/// subresource, shows here; so does one in a macro's step (`all`, `exists`), where an
/// element whose predicate fails comes before one that decides.
fn strict(e: &mut IdedExpr) {
    match &mut e.expr {
        Expr::Call(call) => {
            if let Some(target) = call.target.as_deref_mut() {
                strict(target);
            }
            call.args.iter_mut().for_each(strict);
            let or = call.func_name == operators::LOGICAL_OR;
            if (or || call.func_name == operators::LOGICAL_AND) && call.args.len() == 2 {
                let b = call.args.pop().unwrap();
                let a = call.args.pop().unwrap();
                call.args = if or {
                    vec![a.clone(), a, b]
                } else {
                    vec![a.clone(), b, a]
                };
                call.func_name = operators::CONDITIONAL.to_owned();
            }
        }
        Expr::Comprehension(c) => {
            for e in [
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ] {
                strict(e);
            }
        }
        Expr::List(list) => list.elements.iter_mut().for_each(strict),
        Expr::Map(map) => {
            for entry in &mut map.entries {
                if let EntryExpr::MapEntry(entry) = &mut entry.expr {
                    strict(&mut entry.key);
                    strict(&mut entry.value);
                }
            }
        }
        Expr::Select(select) => strict(&mut select.operand),
        Expr::Struct(st) => {
            for entry in &mut st.entries {
                if let EntryExpr::StructField(field) = &mut entry.expr {
                    strict(&mut field.value);
                }
            }
        }
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
    }
}

/// Both policies, their expressions compiled, after checking that what the tests
/// model is what they apply to and how.
fn policies(env: &Env) -> Vec<Policy> {
    let docs = documents();
    let mut policies = Vec::new();
    for doc in docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("ValidatingAdmissionPolicy"))
    {
        let name = string(&doc["metadata"]["name"], "metadata.name");
        let spec = &doc["spec"];
        assert_eq!(
            spec["failurePolicy"].as_str(),
            Some("Fail"),
            "{name}: modelled with failurePolicy Fail"
        );
        let rules = list(&spec["matchConstraints"]["resourceRules"], "resourceRules");
        assert_eq!(rules.len(), 1, "{name}: one resource rule");
        let strings = |v: &yaml_serde::Value| -> Vec<String> {
            list(v, "rule").iter().map(|s| string(s, "rule")).collect()
        };
        assert_eq!(strings(&rules[0]["apiGroups"]), [""], "{name}");
        assert_eq!(strings(&rules[0]["apiVersions"]), ["v1"], "{name}");
        assert_eq!(
            strings(&rules[0]["operations"]),
            ["UPDATE"],
            "{name}: the requests modelled are updates"
        );
        assert_eq!(
            strings(&rules[0]["resources"]),
            ["nodes", "nodes/status"],
            "{name}: the requests modelled are of Nodes and their status"
        );
        assert!(
            spec["paramKind"].is_null(),
            "{name}: no params are modelled"
        );
        let named = |field: &str| -> Vec<(String, Expression)> {
            list(&spec[field], field)
                .iter()
                .map(|v| {
                    let n = string(&v["name"], field);
                    let what = format!("{name}: {field} {n}");
                    (n, compile(env, string(&v["expression"], &what), &what))
                })
                .collect()
        };
        let match_conditions = named("matchConditions");
        let variables = named("variables");
        let validations: Vec<(Expression, String)> = list(&spec["validations"], "validations")
            .iter()
            .enumerate()
            .map(|(i, v)| {
                assert!(
                    v["messageExpression"].is_null(),
                    "{name}: no messageExpression is modelled"
                );
                let what = format!("{name}: validation {i}");
                let e = compile(env, string(&v["expression"], &what), &what);
                (e, string(&v["message"], &what))
            })
            .collect();
        assert!(!validations.is_empty(), "{name}: validations");
        assert!(
            spec["auditAnnotations"].is_null(),
            "{name}: no auditAnnotations are modelled"
        );
        policies.push(Policy {
            name,
            match_conditions,
            variables,
            validations,
        });
    }
    // Each is bound, to deny.
    for policy in &policies {
        let bindings: Vec<&yaml_serde::Value> = docs
            .iter()
            .filter(|d| {
                d["kind"].as_str() == Some("ValidatingAdmissionPolicyBinding")
                    && d["spec"]["policyName"].as_str() == Some(&policy.name)
            })
            .collect();
        assert_eq!(bindings.len(), 1, "{}: one binding", policy.name);
        let binding = &bindings[0]["spec"];
        let actions: Vec<String> = list(&binding["validationActions"], "validationActions")
            .iter()
            .map(|a| string(a, "validationActions"))
            .collect();
        assert_eq!(actions, ["Deny"], "{}: the binding denies", policy.name);
        assert!(
            binding["matchResources"].is_null() && binding["paramRef"].is_null(),
            "{}: the binding narrows nothing",
            policy.name
        );
    }
    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["weft-own-node", "weft-annotations"]);
    policies
}

// ---------------------------------------------------------------------------------
// Evaluation, as the API server's.

/// JSON to CEL: what `object`, `oldObject` and `request` are.
fn cel_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().expect("a number")),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => Value::from(a.iter().map(cel_value).collect::<Vec<_>>()),
        Json::Object(o) => Value::from(
            o.iter()
                .map(|(k, v)| (k.clone(), cel_value(v)))
                .collect::<HashMap<String, Value>>(),
        ),
    }
}

/// An expression's value as the API server's would be, and, if that hides a failure
/// (see [`strict`]), the failure.
fn run(e: &Expression, ctx: &Context<'_, '_>) -> (Result<Value, String>, Option<String>) {
    let value = e
        .program
        .execute(ctx)
        .map_err(|err| format!("{:?} failed: {err}", e.text));
    let hidden = match (&value, Value::resolve(&e.strict, ctx)) {
        (Ok(_), Err(err)) => Some(format!("{:?} fails, which || or && hides: {err}", e.text)),
        _ => None,
    };
    (value, hidden)
}

/// A boolean expression's value, or why there is none; and a failure it hides.
fn truth(e: &Expression, ctx: &Context<'_, '_>) -> (Result<bool, String>, Option<String>) {
    let (value, hidden) = run(e, ctx);
    let truth = match value {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("{:?} is {other:?}, not a bool", e.text)),
        Err(why) => Err(why),
    };
    (truth, hidden)
}

#[derive(Debug, PartialEq)]
enum Verdict {
    /// A matchCondition is false.
    Skipped,
    Admitted,
    Denied {
        /// The messages of the validations that are false.
        false_: Vec<String>,
        /// Expressions that failed, matchConditions included: with failurePolicy Fail
        /// each denies too.
        failed: Vec<String>,
    },
}

struct Outcome {
    policy: String,
    verdict: Verdict,
    /// Every expression that failed, variables included, whether or not it decided,
    /// and every failure that `||` or `&&` hid.
    failures: Vec<String>,
}

fn evaluate(env: &Arc<Env>, policy: &Policy, request: &Request) -> Outcome {
    let mut root = Context::with_env(Arc::clone(env));
    root.add_variable_from_value("object", cel_value(&request.new));
    root.add_variable_from_value("oldObject", cel_value(&request.old));
    root.add_variable_from_value("request", cel_value(&request.admission_request()));
    let mut failures = Vec::new();
    let outcome = |verdict, failures| Outcome {
        policy: policy.name.clone(),
        verdict,
        failures,
    };

    // Every matchCondition: one false and the policy does not apply, however the
    // others fare; else one that failed is the failure policy's (Fail: denied).
    let mut skipped = false;
    let mut hidden = Vec::new();
    for (name, e) in &policy.match_conditions {
        let (truth, hides) = truth(e, &root);
        hidden.extend(hides.map(|h| format!("matchCondition {name}: {h}")));
        match truth {
            Ok(true) => {}
            Ok(false) => skipped = true,
            Err(why) => failures.push(format!("matchCondition {name}: {why}")),
        }
    }
    // Those hidden count as failures for the tests, not for the verdict.
    let outcome = |verdict, mut failures: Vec<String>, hidden: Vec<String>| {
        failures.extend(hidden);
        outcome(verdict, failures)
    };
    if skipped {
        return outcome(Verdict::Skipped, failures, hidden);
    }
    if !failures.is_empty() {
        let failed = failures.clone();
        return outcome(
            Verdict::Denied {
                false_: Vec::new(),
                failed,
            },
            failures,
            hidden,
        );
    }

    // The variables, in order, each seeing those before it.
    let mut variables: HashMap<String, Value> = HashMap::new();
    for (name, e) in &policy.variables {
        let mut ctx = root.new_inner_scope();
        ctx.add_variable_from_value("variables", Value::from(variables.clone()));
        let (value, hides) = run(e, &ctx);
        hidden.extend(hides.map(|h| format!("variable {name}: {h}")));
        match value {
            Ok(v) => {
                variables.insert(name.clone(), v);
            }
            Err(why) => failures.push(format!("variable {name}: {why}")),
        }
    }

    let mut ctx = root.new_inner_scope();
    ctx.add_variable_from_value("variables", Value::from(variables));
    let (mut false_, mut failed) = (Vec::new(), Vec::new());
    for (e, message) in &policy.validations {
        let (truth, hides) = truth(e, &ctx);
        hidden.extend(hides.map(|h| format!("validation: {h}")));
        match truth {
            Ok(true) => {}
            Ok(false) => false_.push(message.clone()),
            Err(why) => {
                failures.push(format!("validation: {why}"));
                failed.push(why);
            }
        }
    }
    let verdict = if false_.is_empty() && failed.is_empty() {
        Verdict::Admitted
    } else {
        Verdict::Denied { false_, failed }
    };
    outcome(verdict, failures, hidden)
}

// ---------------------------------------------------------------------------------
// Requests.

#[derive(Clone)]
struct User {
    username: &'static str,
    uid: Option<&'static str>,
    groups: Vec<&'static str>,
    extra: Vec<(&'static str, Vec<String>)>,
}

struct Request {
    user: User,
    /// Of `nodes/status`, not of the Node itself.
    status: bool,
    old: Json,
    new: Json,
}

impl Request {
    /// The AdmissionRequest, as its JSON: empty `omitempty` fields absent.
    fn admission_request(&self) -> Json {
        let kind = json!({"group": "", "version": "v1", "kind": "Node"});
        let resource = json!({"group": "", "version": "v1", "resource": "nodes"});
        let mut user = json!({"username": self.user.username});
        if let Some(uid) = self.user.uid {
            user["uid"] = json!(uid);
        }
        if !self.user.groups.is_empty() {
            user["groups"] = json!(self.user.groups);
        }
        if !self.user.extra.is_empty() {
            let extra: Map<String, Json> = self
                .user
                .extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect();
            user["extra"] = Json::Object(extra);
        }
        let mut request = json!({
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": self.new["metadata"]["name"],
            "operation": "UPDATE",
            "userInfo": user,
            "dryRun": false,
            "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"},
        });
        if self.status {
            request["subResource"] = json!("status");
            request["requestSubResource"] = json!("status");
        }
        request
    }
}

/// An update of the Node itself (a merge patch, as weftd's of its annotations).
fn update(user: &User, old: &Json, new: Json) -> Request {
    assert_eq!(
        old["status"], new["status"],
        "the API server keeps the status"
    );
    Request {
        user: user.clone(),
        status: false,
        old: old.clone(),
        new,
    }
}

/// An update of `nodes/status` (as weftd's patch of its condition, and kubelet's).
fn status_update(user: &User, old: &Json, new: Json) -> Request {
    assert_eq!(old["spec"], new["spec"], "the API server keeps the spec");
    Request {
        user: user.clone(),
        status: true,
        old: old.clone(),
        new,
    }
}

/// weftd, through its pod's ServiceAccount token: bound to the pod, and so to the node.
fn weft_on(node: &str) -> User {
    User {
        username: WEFT,
        uid: Some("1b3e6c2a-0d0e-4b8c-9c56-2f1f3c1e7a10"),
        groups: vec![
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
            "system:authenticated",
        ],
        extra: vec![
            (
                "authentication.kubernetes.io/credential-id",
                vec!["JTI=6f1e2b58-4a39-4c1f-8f4e-0b7d8b0e4d11".to_owned()],
            ),
            (NODE_NAME, vec![node.to_owned()]),
            (
                "authentication.kubernetes.io/node-uid",
                vec![format!("{node}-uid")],
            ),
            (
                "authentication.kubernetes.io/pod-name",
                vec!["weft-7xk2p".to_owned()],
            ),
            (
                "authentication.kubernetes.io/pod-uid",
                vec!["0c5bd0a4-53c1-4a69-a2a5-9d5b5cfa3b2e".to_owned()],
            ),
        ],
    }
}

/// weft's account with a token bound to no pod (a TokenRequest of its own).
fn weft_unbound() -> User {
    User {
        extra: vec![(
            "authentication.kubernetes.io/credential-id",
            vec!["JTI=9a0d4d87-19f5-4b0e-a7e8-5b51f5a7c2b3".to_owned()],
        )],
        ..weft_on("n1")
    }
}

/// weft's account with no extra at all (a legacy Secret token on an old cluster).
fn weft_no_extra() -> User {
    User {
        extra: Vec::new(),
        ..weft_on("n1")
    }
}

/// A kubelet, with its client certificate.
fn kubelet(node: &'static str) -> User {
    User {
        username: match node {
            "n1" => "system:node:n1",
            "n2" => "system:node:n2",
            _ => unreachable!(),
        },
        uid: None,
        groups: vec!["system:nodes", "system:authenticated"],
        extra: Vec::new(),
    }
}

/// kube-controller-manager's node lifecycle controller, with its own account.
fn controller() -> User {
    User {
        username: "system:serviceaccount:kube-system:node-controller",
        uid: Some("5d0b9d6e-7b3f-4f0b-8d0a-3a5f7c1d2e44"),
        groups: vec![
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
            "system:authenticated",
        ],
        extra: vec![(
            "authentication.kubernetes.io/credential-id",
            vec!["JTI=c2d0f8a1-6e57-4c3b-9f12-7d4e5a6b8c90".to_owned()],
        )],
    }
}

/// An account named weft in another namespace: not weft's.
fn other_weft() -> User {
    User {
        username: "system:serviceaccount:default:weft",
        groups: vec![
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated",
        ],
        ..weft_on("n1")
    }
}

/// A cluster administrator (kubeadm's super-admin.conf).
fn administrator() -> User {
    User {
        username: "kubernetes-super-admin",
        uid: None,
        groups: vec!["system:masters", "system:authenticated"],
        extra: Vec::new(),
    }
}

/// A user in no group. The API server adds system:authenticated to every
/// authenticated user, so this is a robustness case only.
fn groupless() -> User {
    User {
        username: "someone",
        uid: None,
        groups: Vec::new(),
        extra: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------
// Nodes.

const T0: &str = "2026-11-02T08:14:05Z";
const T1: &str = "2026-11-02T09:20:41Z";

fn condition(kind: &str, status: &str, reason: &str, message: &str, at: &str) -> Json {
    json!({"type": kind, "status": status, "reason": reason, "message": message,
           "lastHeartbeatTime": at, "lastTransitionTime": T0})
}

/// A Node of a kubeadm cluster that weftd has joined: weft's annotations, kubelet's
/// conditions and weft's NetworkUnavailable=False among them.
fn node(name: &str) -> Json {
    let n: u8 = name[1..].parse().expect("n<number>");
    let ip = format!("192.0.2.{}", 10 + n);
    let mut weft = Map::new();
    for (k, v) in [
        (key::UNDERLAY_IP, ip.clone()),
        (key::VTEP_MAC, format!("02:57:65:66:74:{n:02x}")),
        (key::MODE, "vxlan".to_owned()),
        (key::DIRECT_ROUTING, "false".to_owned()),
        (key::PORT, "8472".to_owned()),
        (key::FEATURES, "chunks,echo".to_owned()),
        (key::PUBLIC_KEY, format!("{n:02x}").repeat(32)),
    ] {
        weft.insert(k.to_owned(), json!(v));
    }
    assert_eq!(weft.len(), key::ALL.len(), "every annotation weftd writes");
    let mut annotations = json!({
        "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
    });
    annotations.as_object_mut().unwrap().extend(weft);
    let cidr = format!("10.244.{n}.0/24");
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": format!("{name}-uid"),
            "resourceVersion": "81273",
            "creationTimestamp": "2026-11-01T17:02:11Z",
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
            },
            "annotations": annotations,
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "capacity": {"cpu": "2", "ephemeral-storage": "20470Mi", "hugepages-2Mi": "0",
                         "memory": "4025836Ki", "pods": "110"},
            "allocatable": {"cpu": "2", "ephemeral-storage": "18864027764", "hugepages-2Mi": "0",
                            "memory": "3923436Ki", "pods": "110"},
            "conditions": [
                condition("NetworkUnavailable", "False", "WeftIsUp",
                          "weftd forwards on this node", T0),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory",
                          "kubelet has sufficient memory available", T1),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure",
                          "kubelet has no disk pressure", T1),
                condition("PIDPressure", "False", "KubeletHasSufficientPID",
                          "kubelet has sufficient PID available", T1),
                condition("Ready", "True", "KubeletReady",
                          "kubelet is posting ready status", T1),
            ],
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": format!("{n:02x}").repeat(16),
                "systemUUID": format!("{n:02x}").repeat(16),
                "bootID": format!("{n:02x}").repeat(16),
                "kernelVersion": "6.1.0-28-amd64",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": "v1.32.4",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "images": [
                {"names": ["registry.k8s.io/pause@sha256:ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a",
                           "registry.k8s.io/pause:3.10"],
                 "sizeBytes": 320368},
            ],
        },
    })
}

/// A copy of `node` edited, then as its JSON would be: empty `omitempty` maps and
/// lists absent.
fn edited(node: &Json, edit: impl FnOnce(&mut Json)) -> Json {
    let mut n = node.clone();
    edit(&mut n);
    for (parent, field) in [
        ("metadata", "labels"),
        ("metadata", "annotations"),
        ("metadata", "finalizers"),
        ("metadata", "ownerReferences"),
        ("spec", "taints"),
        ("status", "conditions"),
        ("status", "addresses"),
    ] {
        let object = n[parent].as_object_mut().expect("an object");
        let empty = match object.get(field) {
            Some(Json::Object(m)) => m.is_empty(),
            Some(Json::Array(a)) => a.is_empty(),
            _ => false,
        };
        if empty {
            object.remove(field);
        }
    }
    n
}

/// `metadata.<field>` of `n`, made if absent.
fn meta<'a>(n: &'a mut Json, field: &str) -> &'a mut Map<String, Json> {
    n["metadata"]
        .as_object_mut()
        .unwrap()
        .entry(field)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .unwrap()
}

fn annotations(n: &mut Json) -> &mut Map<String, Json> {
    meta(n, "annotations")
}

fn labels(n: &mut Json) -> &mut Map<String, Json> {
    meta(n, "labels")
}

/// The condition of that type in `n`'s status.
fn condition_of<'a>(n: &'a mut Json, kind: &str) -> &'a mut Json {
    n["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} condition"))
}

/// `node` without weft's annotations.
fn unpublished(node: &Json) -> Json {
    edited(node, |n| {
        annotations(n).retain(|k, _| !k.starts_with(PREFIX))
    })
}

/// `node` without weft's annotations nor its condition: before weftd joined.
fn fresh(node: &Json) -> Json {
    edited(&unpublished(node), |n| {
        n["status"]["conditions"]
            .as_array_mut()
            .unwrap()
            .retain(|c| c["type"] != "NetworkUnavailable");
    })
}

/// weftd's status patch: NetworkUnavailable=False, added or set (a strategic merge
/// patch of the conditions, by type).
fn network_up(node: &Json) -> Json {
    edited(node, |n| {
        let conditions = n["status"]["conditions"]
            .as_array_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut conditions: Vec<Json> = conditions
            .into_iter()
            .filter(|c| c["type"] != "NetworkUnavailable")
            .collect();
        conditions.insert(
            0,
            json!({"type": "NetworkUnavailable", "status": "False", "reason": "WeftIsUp",
                   "message": "weftd forwards on this node",
                   "lastHeartbeatTime": "2026-11-02T09:21:00Z",
                   "lastTransitionTime": "2026-11-02T09:21:00Z"}),
        );
        n["status"]["conditions"] = json!(conditions);
    })
}

// ---------------------------------------------------------------------------------
// Cases.

struct Case {
    what: String,
    request: Request,
    admitted: bool,
}

fn case(what: impl Into<String>, request: Request, admitted: bool) -> Case {
    Case {
        what: what.into(),
        request,
        admitted,
    }
}

/// Evaluates every case against both policies and asserts, for each, the outcome
/// intended, and that no expression failed: an intended denial must come from a
/// validation being false, not from `failurePolicy`.
fn check(cases: Vec<Case>) {
    let env = Arc::new(Env::stdlib());
    let policies = policies(&env);
    let mut wrong = Vec::new();
    for c in &cases {
        let outcomes: Vec<Outcome> = policies
            .iter()
            .map(|p| evaluate(&env, p, &c.request))
            .collect();
        let admitted = !outcomes
            .iter()
            .any(|o| matches!(o.verdict, Verdict::Denied { .. }));
        let failures: Vec<String> = outcomes
            .iter()
            .flat_map(|o| o.failures.iter().map(move |f| format!("{}: {f}", o.policy)))
            .collect();
        let by_failure_only = !admitted
            && outcomes.iter().all(|o| match &o.verdict {
                Verdict::Denied { false_, .. } => false_.is_empty(),
                _ => true,
            });
        let verdicts: Vec<String> = outcomes
            .iter()
            .map(|o| format!("{}: {:?}", o.policy, o.verdict))
            .collect();
        let line = format!(
            "{}: {} ({})",
            c.what,
            if admitted { "admitted" } else { "denied" },
            verdicts.join("; ")
        );
        println!("{line}");
        if admitted != c.admitted {
            wrong.push(format!(
                "{line}\n    intended: {}",
                if c.admitted { "admitted" } else { "denied" }
            ));
        } else if by_failure_only {
            wrong.push(format!("{line}\n    denied only by a failure"));
        }
        if !failures.is_empty() {
            wrong.push(format!(
                "{}: expressions failed:\n    {}",
                c.what,
                failures.join("\n    ")
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn the_policies_parse_and_are_modelled() {
    let env = Env::stdlib();
    let policies = policies(&env);
    for p in &policies {
        assert!(
            !p.match_conditions.is_empty(),
            "{}: matchConditions",
            p.name
        );
    }
    // The prefix the policies guard is the one weftd writes under.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/admission.yaml"
    ))
    .unwrap();
    assert!(text.contains(&format!("startsWith('{PREFIX}')")));
    assert!(key::ALL.iter().all(|k| k.starts_with(PREFIX)));
    // The account the cases call weft's is rbac.yaml's, the one the policies name.
    let rbac = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/rbac.yaml"
    ))
    .unwrap();
    let accounts: Vec<String> = yaml_serde::Deserializer::from_str(&rbac)
        .map(|doc| <yaml_serde::Value as serde::Deserialize>::deserialize(doc).unwrap())
        .filter(|d| d["kind"].as_str() == Some("ServiceAccount"))
        .map(|d| {
            format!(
                "system:serviceaccount:{}:{}",
                string(&d["metadata"]["namespace"], "namespace"),
                string(&d["metadata"]["name"], "name")
            )
        })
        .collect();
    assert_eq!(accounts, [WEFT]);
    assert_eq!(
        text.matches(&format!("'{WEFT}'")).count(),
        2,
        "{WEFT} in both policies"
    );
}

#[test]
fn weft_changes_its_own_nodes_annotations() {
    let weft = weft_on("n1");
    let n1 = node("n1");
    let bare = edited(&n1, |n| {
        n["metadata"].as_object_mut().unwrap().remove("annotations");
    });
    let unlabelled = edited(&n1, |n| {
        n["metadata"].as_object_mut().unwrap().remove("labels");
    });
    let only_weft = edited(&n1, |n| {
        annotations(n).retain(|k, _| k.starts_with(PREFIX));
    });
    check(vec![
        case(
            "weft changes weft.dev/underlay-ip on its Node",
            update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    annotations(n).insert(key::UNDERLAY_IP.into(), json!("198.51.100.7"));
                }),
            ),
            true,
        ),
        case(
            "weft adds weft.dev/public-key on its Node",
            update(
                &weft,
                &edited(&n1, |n| {
                    annotations(n).remove(key::PUBLIC_KEY);
                }),
                n1.clone(),
            ),
            true,
        ),
        case(
            "weft removes weft.dev/public-key from its Node",
            update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    annotations(n).remove(key::PUBLIC_KEY);
                }),
            ),
            true,
        ),
        case(
            "weft annotates its Node, which had no annotations at all",
            update(
                &weft,
                &bare,
                edited(&bare, |n| {
                    annotations(n).insert(key::UNDERLAY_IP.into(), json!("192.0.2.11"));
                    annotations(n).insert(key::MODE.into(), json!("vxlan"));
                }),
            ),
            true,
        ),
        case(
            "weft removes all its annotations, which were all the Node had",
            update(
                &weft,
                &only_weft,
                edited(&only_weft, |n| annotations(n).clear()),
            ),
            true,
        ),
        case(
            "weft changes weft.dev/port on its Node, which has no labels",
            update(
                &weft,
                &unlabelled,
                edited(&unlabelled, |n| {
                    annotations(n).insert(key::PORT.into(), json!("8473"));
                }),
            ),
            true,
        ),
        case(
            "weft's patch that changes nothing",
            update(&weft, &n1, n1.clone()),
            true,
        ),
        case(
            "weft publishes on a Node it had not annotated (all its annotations added)",
            update(&weft, &unpublished(&n1), n1.clone()),
            true,
        ),
    ]);
}

#[test]
fn weft_sets_its_own_nodes_condition() {
    let weft = weft_on("n1");
    let n1 = node("n1");
    let down = edited(&n1, |n| {
        let c = condition_of(n, "NetworkUnavailable");
        c["status"] = json!("True");
        c["reason"] = json!("NoRouteCreated");
    });
    let no_conditions = edited(&fresh(&n1), |n| {
        n["status"]["conditions"] = json!([]);
    });
    check(vec![
        case(
            "weft adds NetworkUnavailable=False to its fresh Node",
            status_update(&weft, &fresh(&n1), network_up(&fresh(&n1))),
            true,
        ),
        case(
            "weft sets NetworkUnavailable from True to False",
            status_update(&weft, &down, network_up(&down)),
            true,
        ),
        case(
            "weft refreshes its NetworkUnavailable=False",
            status_update(&weft, &n1, network_up(&n1)),
            true,
        ),
        case(
            "weft adds NetworkUnavailable to a Node with no conditions at all",
            status_update(&weft, &no_conditions, network_up(&no_conditions)),
            true,
        ),
        case(
            "weft's status update also changing a weft.dev/ annotation",
            status_update(
                &weft,
                &n1,
                edited(&network_up(&n1), |n| {
                    annotations(n).insert(key::FEATURES.into(), json!("chunks"));
                }),
            ),
            true,
        ),
    ]);
}

#[test]
fn weft_changes_no_other_node() {
    let n1 = node("n1");
    let n2 = node("n2");
    let weft_dev = |n: &Json| {
        edited(n, |n| {
            annotations(n).insert(key::UNDERLAY_IP.into(), json!("198.51.100.7"));
        })
    };
    check(vec![
        case(
            "weft on n1 changes weft.dev/underlay-ip on n2",
            update(&weft_on("n1"), &n2, weft_dev(&n2)),
            false,
        ),
        case(
            "weft on n1 sets NetworkUnavailable on n2",
            status_update(&weft_on("n1"), &fresh(&n2), network_up(&fresh(&n2))),
            false,
        ),
        case(
            "weft with a token bound to no node changes weft.dev/ on n1",
            update(&weft_unbound(), &n1, weft_dev(&n1)),
            false,
        ),
        case(
            "weft with a token without extra changes weft.dev/ on n1",
            update(&weft_no_extra(), &n1, weft_dev(&n1)),
            false,
        ),
        case(
            "weft with a token without extra sets NetworkUnavailable on n1",
            status_update(&weft_no_extra(), &fresh(&n1), network_up(&fresh(&n1))),
            false,
        ),
    ]);
}

#[test]
fn weft_changes_nothing_else_on_its_node() {
    let weft = weft_on("n1");
    let n1 = node("n1");
    let unlabelled = edited(&n1, |n| {
        n["metadata"].as_object_mut().unwrap().remove("labels");
    });
    let bare = edited(&n1, |n| {
        n["metadata"].as_object_mut().unwrap().remove("annotations");
    });
    check(vec![
        case(
            "weft adds a label",
            update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    labels(n).insert("node-role.kubernetes.io/control-plane".into(), json!(""));
                }),
            ),
            false,
        ),
        case(
            "weft adds a label to a Node with none",
            update(
                &weft,
                &unlabelled,
                edited(&unlabelled, |n| {
                    labels(n).insert("topology.kubernetes.io/zone".into(), json!("a"));
                }),
            ),
            false,
        ),
        case(
            "weft changes a label",
            update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    labels(n).insert("kubernetes.io/hostname".into(), json!("n9"));
                }),
            ),
            false,
        ),
        case(
            "weft removes a label",
            update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    labels(n).remove("kubernetes.io/os");
                }),
            ),
            false,
        ),
        case(
            "weft removes every label",
            update(&weft, &n1, edited(&n1, |n| labels(n).clear())),
            false,
        ),
        case(
            "weft changes a non-weft annotation",
            update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    annotations(n).insert("node.alpha.kubernetes.io/ttl".into(), json!("30"));
                }),
            ),
            false,
        ),
        case(
            "weft removes a non-weft annotation",
            update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    annotations(n).remove("kubeadm.alpha.kubernetes.io/cri-socket");
                }),
            ),
            false,
        ),
        case(
            "weft adds a non-weft annotation",
            update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    annotations(n).insert("example.com/owner".into(), json!("weft"));
                }),
            ),
            false,
        ),
        case(
            "weft adds a non-weft annotation to a Node with none",
            update(
                &weft,
                &bare,
                edited(&bare, |n| {
                    annotations(n).insert("example.com/owner".into(), json!("weft"));
                }),
            ),
            false,
        ),
        case(
            "weft adds an annotation whose name only contains weft.dev/",
            update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    annotations(n).insert("example.com/weft.dev/x".into(), json!("1"));
                }),
            ),
            false,
        ),
        case(
            "weft taints its Node",
            update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    n["spec"]["taints"] =
                        json!([{"key": "example.com/evict", "effect": "NoExecute"}]);
                }),
            ),
            false,
        ),
        case(
            "weft cordons its Node",
            update(
                &weft,
                &n1,
                edited(&n1, |n| n["spec"]["unschedulable"] = json!(true)),
            ),
            false,
        ),
        case(
            "weft changes its Node's podCIDR",
            update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    n["spec"]["podCIDR"] = json!("10.244.9.0/24");
                    n["spec"]["podCIDRs"] = json!(["10.244.9.0/24"]);
                }),
            ),
            false,
        ),
        case(
            "weft adds a finalizer",
            update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    n["metadata"]["finalizers"] = json!(["example.com/keep"]);
                }),
            ),
            false,
        ),
        case(
            "weft gives its Node an owner (for the garbage collector to delete it)",
            update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    n["metadata"]["ownerReferences"] = json!([{
                        "apiVersion": "v1", "kind": "ConfigMap", "name": "gone",
                        "uid": "3f0e7d4c-0000-4000-8000-000000000000",
                    }]);
                }),
            ),
            false,
        ),
    ]);
}

#[test]
fn weft_changes_nothing_else_in_its_nodes_status() {
    let weft = weft_on("n1");
    let n1 = node("n1");
    check(vec![
        case(
            "weft sets Ready=False",
            status_update(
                &weft,
                &n1,
                edited(&n1, |n| condition_of(n, "Ready")["status"] = json!("False")),
            ),
            false,
        ),
        case(
            "weft sets NetworkUnavailable and removes Ready",
            status_update(
                &weft,
                &n1,
                edited(&network_up(&n1), |n| {
                    n["status"]["conditions"]
                        .as_array_mut()
                        .unwrap()
                        .retain(|c| c["type"] != "Ready");
                }),
            ),
            false,
        ),
        case(
            "weft adds a condition of another type",
            status_update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    n["status"]["conditions"]
                        .as_array_mut()
                        .unwrap()
                        .push(condition("example.com/Weft", "True", "Up", "", T1));
                }),
            ),
            false,
        ),
        case(
            "weft changes status.addresses",
            status_update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    n["status"]["addresses"][0]["address"] = json!("198.51.100.7");
                }),
            ),
            false,
        ),
        case(
            "weft removes status.addresses",
            status_update(
                &weft,
                &n1,
                edited(&n1, |n| n["status"]["addresses"] = json!([])),
            ),
            false,
        ),
        case(
            "weft changes status.capacity",
            status_update(
                &weft,
                &n1,
                edited(&n1, |n| n["status"]["capacity"]["pods"] = json!("1000")),
            ),
            false,
        ),
        case(
            "weft adds an extended resource to status.allocatable",
            status_update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    n["status"]["allocatable"]["example.com/gpu"] = json!("8");
                }),
            ),
            false,
        ),
        case(
            "weft changes the kubelet's port in status.daemonEndpoints",
            status_update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] = json!(10251);
                }),
            ),
            false,
        ),
        case(
            "weft removes status.images",
            status_update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    n["status"].as_object_mut().unwrap().remove("images");
                }),
            ),
            false,
        ),
        case(
            "weft's status update adds a label",
            status_update(
                &weft,
                &n1,
                edited(&network_up(&n1), |n| {
                    labels(n).insert("example.com/weft".into(), json!("up"));
                }),
            ),
            false,
        ),
        case(
            "weft's status update changes a non-weft annotation",
            status_update(
                &weft,
                &n1,
                edited(&n1, |n| {
                    annotations(n).insert("node.alpha.kubernetes.io/ttl".into(), json!("30"));
                }),
            ),
            false,
        ),
    ]);
}

#[test]
fn no_one_else_changes_weft_annotations() {
    let n1 = node("n1");
    let n2 = node("n2");
    let changed = |n: &Json| {
        edited(n, |n| {
            annotations(n).insert(key::PUBLIC_KEY.into(), json!("ee".repeat(32)));
        })
    };
    let bare = edited(&n1, |n| {
        n["metadata"].as_object_mut().unwrap().remove("annotations");
    });
    let mut cases = Vec::new();
    for (who, user) in [
        ("kubelet of n2", kubelet("n2")),
        ("the node controller", controller()),
        ("weft's namesake in default", other_weft()),
        ("a user in no group", groupless()),
    ] {
        let what = |s: &str| format!("{who} {s}");
        cases.extend([
            case(
                what("changes weft.dev/public-key on n1"),
                update(&user, &n1, changed(&n1)),
                false,
            ),
            case(
                what("changes weft.dev/public-key on n2"),
                update(&user, &n2, changed(&n2)),
                false,
            ),
            case(
                what("adds weft.dev/ annotations to n1, which had none"),
                update(&user, &unpublished(&n1), n1.clone()),
                false,
            ),
            case(
                what("adds weft.dev/underlay-ip to n1, which had no annotations"),
                update(
                    &user,
                    &bare,
                    edited(&bare, |n| {
                        annotations(n).insert(key::UNDERLAY_IP.into(), json!("198.51.100.7"));
                    }),
                ),
                false,
            ),
            case(
                what("removes weft.dev/vtep-mac from n1"),
                update(
                    &user,
                    &n1,
                    edited(&n1, |n| {
                        annotations(n).remove(key::VTEP_MAC);
                    }),
                ),
                false,
            ),
            case(
                what("changes weft.dev/ through a status update of n1"),
                status_update(&user, &n1, changed(&n1)),
                false,
            ),
        ]);
    }
    check(cases);
}

#[test]
fn others_change_the_rest() {
    let n1 = node("n1");
    let bare = edited(&n1, |n| {
        n["metadata"].as_object_mut().unwrap().remove("annotations");
    });
    let unlabelled = edited(&n1, |n| {
        n["metadata"].as_object_mut().unwrap().remove("labels");
    });
    let heartbeat = |n: &Json| {
        edited(n, |n| {
            condition_of(n, "Ready")["lastHeartbeatTime"] = json!("2026-11-02T09:25:41Z");
        })
    };
    let not_ready = edited(&n1, |n| {
        let c = condition_of(n, "Ready");
        c["status"] = json!("Unknown");
        c["reason"] = json!("NodeStatusUnknown");
    });
    check(vec![
        case(
            "kubelet of n1 posts its status",
            status_update(&kubelet("n1"), &n1, heartbeat(&n1)),
            true,
        ),
        case(
            "kubelet of n1 posts the status of a Node without annotations",
            status_update(&kubelet("n1"), &bare, heartbeat(&bare)),
            true,
        ),
        case(
            "kubelet of n1 changes its addresses",
            status_update(
                &kubelet("n1"),
                &n1,
                edited(&n1, |n| {
                    n["status"]["addresses"][0]["address"] = json!("192.0.2.99");
                }),
            ),
            true,
        ),
        case(
            "kubelet of n2 adds a label to n1",
            update(
                &kubelet("n2"),
                &n1,
                edited(&n1, |n| {
                    labels(n).insert("example.com/rack".into(), json!("r7"));
                }),
            ),
            true,
        ),
        case(
            "kubelet of n1 labels a Node with no labels",
            update(
                &kubelet("n1"),
                &unlabelled,
                edited(&unlabelled, |n| {
                    labels(n).insert("kubernetes.io/hostname".into(), json!("n1"));
                }),
            ),
            true,
        ),
        case(
            "the node controller sets Ready=Unknown",
            status_update(&controller(), &n1, not_ready.clone()),
            true,
        ),
        case(
            "the node controller taints n1",
            update(
                &controller(),
                &n1,
                edited(&n1, |n| {
                    n["spec"]["taints"] = json!([{"key": "node.kubernetes.io/unreachable",
                                                  "effect": "NoExecute",
                                                  "timeAdded": "2026-11-02T09:30:00Z"}]);
                }),
            ),
            true,
        ),
        case(
            "the node controller changes a non-weft annotation",
            update(
                &controller(),
                &n1,
                edited(&n1, |n| {
                    annotations(n).insert("node.alpha.kubernetes.io/ttl".into(), json!("15"));
                }),
            ),
            true,
        ),
        case(
            "the node controller annotates a Node that had no annotations",
            update(
                &controller(),
                &bare,
                edited(&bare, |n| {
                    annotations(n).insert("node.alpha.kubernetes.io/ttl".into(), json!("0"));
                }),
            ),
            true,
        ),
        case(
            "a user in no group cordons n1",
            update(
                &groupless(),
                &n1,
                edited(&n1, |n| n["spec"]["unschedulable"] = json!(true)),
            ),
            true,
        ),
        case(
            "an administrator changes weft.dev/public-key on n1",
            update(
                &administrator(),
                &n1,
                edited(&n1, |n| {
                    annotations(n).insert(key::PUBLIC_KEY.into(), json!("ee".repeat(32)));
                }),
            ),
            true,
        ),
        case(
            "an administrator removes every weft.dev/ annotation from n1",
            update(&administrator(), &n1, unpublished(&n1)),
            true,
        ),
        case(
            "an administrator adds weft.dev/ annotations to n1, which had none",
            update(&administrator(), &unpublished(&n1), n1.clone()),
            true,
        ),
    ]);
}
