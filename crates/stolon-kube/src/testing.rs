//! An in-process fake Kubernetes API server for tests (feature `testing`): the endpoints the
//! kubernetes store uses, with the API server's concurrency rules, served over HTTP on
//! `127.0.0.1:<free port>` so the real `kube` client talks to it.
//!
//! Served (namespaced only): ConfigMaps, Pods and Events under `/api/v1/namespaces/<ns>/...`, Leases
//! under `/apis/coordination.k8s.io/v1/namespaces/<ns>/...`:
//! - `GET` one object (404 when absent), `GET` a collection with `labelSelector` (`k=v`, `k==v`,
//!   `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`) and `fieldSelector` (`metadata.name`,
//!   `metadata.namespace`), in one page;
//! - `GET ...?watch=true` from a `resourceVersion` (JSON lines `ADDED`/`MODIFIED`/`DELETED`,
//!   ended after `timeoutSeconds` or by [`FakeApiServer::break_watches`]);
//! - `POST` (409 `AlreadyExists`), `PUT` (409 `Conflict` on a stale `metadata.resourceVersion`;
//!   none given: unconditional), `PATCH` with `application/merge-patch+json` (RFC 7386; 409 when
//!   the patch carries a stale `metadata.resourceVersion`), `DELETE`.
//!
//! One global resourceVersion counter, as in etcd. Every request is counted by method and
//! resource ([`FakeApiServer::requests`]); [`FakeApiServer::set_unavailable`] answers 503 to
//! everything. Pods are put in place by the test ([`FakeApiServer::add_pod`]).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Longest a watch stays open when the client gives no `timeoutSeconds`.
const MAX_WATCH: Duration = Duration::from_secs(1800);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    resource: String,
    namespace: String,
    name: String,
}

struct Event {
    rv: u64,
    key: Key,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    events: Vec<Event>,
}

impl Inner {
    /// Stores `object` under `key` with a new resourceVersion and records the event.
    fn commit(&mut self, key: Key, kind: &'static str, mut object: Value) -> Value {
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        if kind == "DELETED" {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key.clone(), object.clone());
        }
        self.events.push(Event {
            rv,
            key,
            kind,
            object: object.clone(),
        });
        object
    }

    fn next_uid(&mut self) -> String {
        self.uid += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uid)
    }
}

struct Shared {
    inner: Mutex<Inner>,
    /// Latest resourceVersion; wakes watch streams.
    changed: watch::Sender<u64>,
    /// Bumped to end every open watch stream.
    kill: watch::Sender<u64>,
    unavailable: AtomicBool,
    counts: Mutex<BTreeMap<(String, String), u64>>,
    access: Mutex<AccessLog>,
    /// Writes by `METHOD resource name annotations-touched`.
    writes: Mutex<BTreeMap<String, u64>>,
    /// Writes (`PUT`, `PATCH`) per resource still to be refused with 409.
    forced_conflicts: Mutex<HashMap<String, u64>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake API state poisoned")
    }

    fn commit(&self, key: Key, kind: &'static str, object: Value) -> Value {
        let mut inner = self.lock();
        let out = inner.commit(key, kind, object);
        let rv = inner.rv;
        drop(inner);
        self.changed.send_replace(rv);
        out
    }
}

/// The fake API server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.kill.send_modify(|g| *g += 1);
        self.task.abort();
    }
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish()
    }
}

/// API group, version and kind of a served resource.
fn resource_type(group: &str, resource: &str) -> Option<(&'static str, &'static str)> {
    match (group, resource) {
        ("", "configmaps") => Some(("v1", "ConfigMap")),
        ("", "pods") => Some(("v1", "Pod")),
        ("", "events") => Some(("v1", "Event")),
        ("coordination.k8s.io", "leases") => Some(("coordination.k8s.io/v1", "Lease")),
        _ => None,
    }
}

impl FakeApiServer {
    /// Starts a server on `127.0.0.1` on a free port.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        Self::start_on(0).await
    }

    /// Starts a server on `127.0.0.1:port` (`0`: a free port).
    pub async fn start_on(port: u16) -> std::io::Result<FakeApiServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
            kill: watch::channel(0).0,
            unavailable: AtomicBool::new(false),
            counts: Mutex::new(BTreeMap::new()),
            access: Mutex::new(AccessLog::default()),
            forced_conflicts: Mutex::new(HashMap::new()),
            writes: Mutex::new(BTreeMap::new()),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "fake API server stopped");
            }
        });
        Ok(FakeApiServer { addr, shared, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client configuration pointing at this server with default namespace `namespace`.
    pub fn config(&self, namespace: &str) -> kube::Config {
        let uri = self.url().parse().expect("a loopback URL is a valid URI");
        let mut config = kube::Config::new(uri);
        config.default_namespace = namespace.to_string();
        config
    }

    /// A kubeconfig file's YAML with one context `context` (namespace `namespace`) pointing at
    /// this server, and `current-context` set to it.
    pub fn kubeconfig_yaml(&self, context: &str, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: {context}\n  context:\n    \
             cluster: fake\n    user: fake\n    namespace: {namespace}\ncurrent-context: {context}\n",
            url = self.url()
        )
    }

    /// Puts a pod in place (as the kubelet would have): `labels`, `status.phase = phase`.
    pub fn add_pod(&self, namespace: &str, name: &str, labels: &[(&str, &str)], phase: &str) {
        let labels: Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::String((*v).to_string())))
            .collect();
        let uid = self.shared.lock().next_uid();
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "labels": labels,
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": { "containers": [ { "name": "main", "image": "stolon-rs" } ] },
            "status": { "phase": phase },
        });
        let kind = if self.object("pods", namespace, name).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.shared.commit(key("pods", namespace, name), kind, pod);
    }

    /// Sets a pod's `status.phase`. Returns false when there is no such pod.
    pub fn set_pod_phase(&self, namespace: &str, name: &str, phase: &str) -> bool {
        self.modify("pods", namespace, name, |p| {
            p["status"]["phase"] = Value::String(phase.to_string());
        })
    }

    /// Marks a pod as being deleted (`metadata.deletionTimestamp`).
    pub fn mark_pod_terminating(&self, namespace: &str, name: &str) -> bool {
        self.modify("pods", namespace, name, |p| {
            p["metadata"]["deletionTimestamp"] = Value::String("2026-01-01T00:00:00Z".into());
        })
    }

    /// Changes a stored object as another API client would (new resourceVersion, watch event).
    /// Returns false when there is no such object.
    pub fn modify(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> bool {
        let k = key(resource, namespace, name);
        let Some(mut obj) = self.shared.lock().objects.get(&k).cloned() else {
            return false;
        };
        f(&mut obj);
        self.shared.commit(k, "MODIFIED", obj);
        true
    }

    /// Creates or replaces an object as another API client would; `object` must carry
    /// `metadata.name`. Returns the stored object (with its new resourceVersion).
    pub fn put_object(&self, resource: &str, namespace: &str, object: Value) -> Value {
        let name = meta_str(&object, "name")
            .expect("put_object needs metadata.name")
            .to_string();
        let k = key(resource, namespace, &name);
        let mut object = object;
        object["metadata"]["namespace"] = Value::String(namespace.to_string());
        let kind = if self.shared.lock().objects.contains_key(&k) {
            "MODIFIED"
        } else {
            object["metadata"]["uid"] = Value::String(self.shared.lock().next_uid());
            "ADDED"
        };
        self.shared.commit(k, kind, object)
    }

    /// Deletes a stored object. Returns false when there is no such object.
    pub fn remove(&self, resource: &str, namespace: &str, name: &str) -> bool {
        let k = key(resource, namespace, name);
        let Some(obj) = self.shared.lock().objects.get(&k).cloned() else {
            return false;
        };
        self.shared.commit(k, "DELETED", obj);
        true
    }

    /// A stored object as JSON.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .objects
            .get(&key(resource, namespace, name))
            .cloned()
    }

    /// How many requests of `method` (`GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `DELETE`)
    /// on `resource` (`configmaps`, `pods`, `leases`) were served (answered 503 included).
    pub fn requests(&self, method: &str, resource: &str) -> u64 {
        self.shared
            .counts
            .lock()
            .expect("fake API counters poisoned")
            .get(&(method.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Answers the next `n` updates (`PUT`, `PATCH`) of `resource` with 409 `Conflict`, as if
    /// another client had changed the object just before each of them; `0` stops that.
    pub fn set_write_conflicts(&self, resource: &str, n: u64) {
        self.shared
            .forced_conflicts
            .lock()
            .expect("fake API conflicts poisoned")
            .insert(resource.to_string(), n);
    }

    /// Every write served (`POST`, `PUT`, `PATCH`, `DELETE`, answered 503 or 409 included),
    /// counted by `METHOD resource name annotations`, where `annotations` lists the annotation
    /// keys the body sets (`+`-separated, `-` for none), e.g.
    /// `PATCH configmaps stolon-cluster-c1 stolon-clusterdata`. For a `POST` the name is `-`.
    pub fn write_counts(&self) -> BTreeMap<String, u64> {
        self.shared
            .writes
            .lock()
            .expect("fake API counters poisoned")
            .clone()
    }

    /// Stored objects of `resource` in `namespace`, in name order.
    pub fn objects(&self, resource: &str, namespace: &str) -> Vec<Value> {
        self.shared
            .lock()
            .objects
            .iter()
            .filter(|(k, _)| k.resource == resource && k.namespace == namespace)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Makes every request fail with 503 (and ends open watches) while `true`.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.unavailable.store(unavailable, Ordering::SeqCst);
        if unavailable {
            self.break_watches();
        }
    }

    /// Ends every open watch stream, as a dropped connection would.
    pub fn break_watches(&self) {
        self.shared.kill.send_modify(|g| *g += 1);
    }
}

fn key(resource: &str, namespace: &str, name: &str) -> Key {
    Key {
        resource: resource.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    json_response(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

/// Parsed request target.
struct Target {
    resource: String,
    namespace: String,
    name: Option<String>,
    api_version: &'static str,
    kind: &'static str,
}

fn parse_target(path: &str) -> Option<Target> {
    let (group, rest) = if let Some(rest) = path.strip_prefix("/api/v1/namespaces/") {
        ("", rest)
    } else if let Some(rest) = path.strip_prefix("/apis/coordination.k8s.io/v1/namespaces/") {
        ("coordination.k8s.io", rest)
    } else {
        return None;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (namespace, resource, name) = match parts.as_slice() {
        [ns, res] => (*ns, *res, None),
        [ns, res, name] => (*ns, *res, Some((*name).to_string())),
        _ => return None,
    };
    if namespace.is_empty() || name.as_deref() == Some("") {
        return None;
    }
    let (api_version, kind) = resource_type(group, resource)?;
    Some(Target {
        resource: resource.to_string(),
        namespace: namespace.to_string(),
        name,
        api_version,
        kind,
    })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> = Query::try_from_uri(&uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let Some(target) = parse_target(uri.path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "the server could not find the requested resource ({})",
                uri.path()
            ),
        );
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, &target.name) {
        (&Method::GET, None) if watching => "WATCH",
        (&Method::GET, None) => "LIST",
        (m, _) => m.as_str(),
    };
    *shared
        .counts
        .lock()
        .expect("fake API counters poisoned")
        .entry((verb.to_string(), target.resource.clone()))
        .or_default() += 1;
    if let Some(denied) = check_access(&shared, &headers, verb, &target, &query) {
        return denied;
    }
    if matches!(verb, "POST" | "PUT" | "PATCH" | "DELETE") {
        let annotations = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| {
                v["metadata"]["annotations"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>().join("+"))
            })
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "-".into());
        let name = target.name.clone().unwrap_or_else(|| "-".into());
        *shared
            .writes
            .lock()
            .expect("fake API counters poisoned")
            .entry(format!("{verb} {} {name} {annotations}", target.resource))
            .or_default() += 1;
    }
    if shared.unavailable.load(Ordering::SeqCst) {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the fake API server is unavailable".into(),
        );
    }
    if matches!(verb, "PUT" | "PATCH") {
        let mut forced = shared
            .forced_conflicts
            .lock()
            .expect("fake API conflicts poisoned");
        if let Some(n) = forced.get_mut(&target.resource).filter(|n| **n > 0) {
            *n -= 1;
            drop(forced);
            let name = target.name.clone().unwrap_or_default();
            return conflict(&target, &name);
        }
    }
    match (verb, target.name.clone()) {
        ("WATCH", None) => watch_collection(shared, target, &query),
        ("LIST", None) => list(&shared, &target, &query),
        ("POST", None) => create(&shared, &target, &body),
        ("GET", Some(name)) => {
            match shared
                .lock()
                .objects
                .get(&key(&target.resource, &target.namespace, &name))
            {
                Some(obj) => json_response(StatusCode::OK, obj),
                None => not_found(&target, &name),
            }
        }
        ("PUT", Some(name)) => replace(&shared, &target, &name, &body),
        ("PATCH", Some(name)) => patch(&shared, &target, &name, &headers, &body),
        ("DELETE", Some(name)) => {
            let k = key(&target.resource, &target.namespace, &name);
            let existing = shared.lock().objects.get(&k).cloned();
            match existing {
                Some(obj) => json_response(StatusCode::OK, &shared.commit(k, "DELETED", obj)),
                None => not_found(&target, &name),
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported on {}", uri.path()),
        ),
    }
}

fn not_found(target: &Target, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} {name:?} not found", target.resource),
    )
}

fn conflict(target: &Target, name: &str) -> Response {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
            target.resource
        ),
    )
}

fn bad_request(message: String) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn parse_body(body: &Bytes) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err("body must be a JSON object".into()),
        Err(e) => Err(format!("cannot decode body: {e}")),
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn create(shared: &Shared, target: &Target, body: &Bytes) -> Response {
    let mut obj = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let Some(name) = meta_str(&obj, "name").map(str::to_string) else {
        return bad_request("metadata.name is required".into());
    };
    if meta_str(&obj, "namespace").is_some_and(|ns| ns != target.namespace) {
        return bad_request("metadata.namespace does not match the request".into());
    }
    let k = key(&target.resource, &target.namespace, &name);
    let mut inner = shared.lock();
    if inner.objects.contains_key(&k) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} {name:?} already exists", target.resource),
        );
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["apiVersion"] = Value::String(target.api_version.into());
    obj["kind"] = Value::String(target.kind.into());
    obj["metadata"]["namespace"] = Value::String(target.namespace.clone());
    obj["metadata"]["uid"] = Value::String(inner.next_uid());
    obj["metadata"]["creationTimestamp"] = Value::String("2026-01-01T00:00:00Z".into());
    let out = inner.commit(k, "ADDED", obj);
    let rv = inner.rv;
    drop(inner);
    shared.changed.send_replace(rv);
    json_response(StatusCode::CREATED, &out)
}

/// Copies the server-owned metadata of `old` into `new`.
fn keep_server_fields(new: &mut Value, old: &Value, target: &Target, name: &str) {
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
    new["apiVersion"] = Value::String(target.api_version.into());
    new["kind"] = Value::String(target.kind.into());
    new["metadata"]["name"] = Value::String(name.to_string());
    new["metadata"]["namespace"] = Value::String(target.namespace.clone());
    for field in ["uid", "creationTimestamp", "deletionTimestamp"] {
        match old["metadata"].get(field) {
            Some(v) => new["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
}

fn finish_update(
    shared: &Shared,
    mut inner: MutexGuard<'_, Inner>,
    k: Key,
    obj: Value,
) -> Response {
    let out = inner.commit(k, "MODIFIED", obj);
    let rv = inner.rv;
    drop(inner);
    shared.changed.send_replace(rv);
    json_response(StatusCode::OK, &out)
}

fn replace(shared: &Shared, target: &Target, name: &str, body: &Bytes) -> Response {
    let mut obj = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    if meta_str(&obj, "name") != Some(name) {
        return bad_request("metadata.name must match the request".into());
    }
    let k = key(&target.resource, &target.namespace, name);
    let inner = shared.lock();
    let Some(old) = inner.objects.get(&k).cloned() else {
        return not_found(target, name);
    };
    let given = meta_str(&obj, "resourceVersion").unwrap_or("");
    if !given.is_empty() && Some(given) != meta_str(&old, "resourceVersion") {
        return conflict(target, name);
    }
    keep_server_fields(&mut obj, &old, target, name);
    finish_update(shared, inner, k, obj)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(t) = target else {
        return;
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn patch(
    shared: &Shared,
    target: &Target,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.starts_with("application/merge-patch+json") {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the fake API server only supports merge patches, not {ctype:?}"),
        );
    }
    let p = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let k = key(&target.resource, &target.namespace, name);
    let inner = shared.lock();
    let Some(old) = inner.objects.get(&k).cloned() else {
        return not_found(target, name);
    };
    if let Some(given) = meta_str(&p, "resourceVersion")
        && Some(given) != meta_str(&old, "resourceVersion")
    {
        return conflict(target, name);
    }
    let mut obj = old.clone();
    merge_patch(&mut obj, &p);
    keep_server_fields(&mut obj, &old, target, name);
    finish_update(shared, inner, k, obj)
}

/// A selector requirement.
#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).collect())
}

fn parse_selector(s: &str) -> Result<Vec<Req>, String> {
    let mut out = Vec::new();
    for term in split_terms(s) {
        let req = if let Some((k, v)) = term.split_once("!=") {
            Req::NotEq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once("==") {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once('=') {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, set)) = term.split_once(" notin ") {
            Req::NotIn(
                k.trim().into(),
                parse_set(set).ok_or_else(|| format!("bad selector term {term:?}"))?,
            )
        } else if let Some((k, set)) = term.split_once(" in ") {
            Req::In(
                k.trim().into(),
                parse_set(set).ok_or_else(|| format!("bad selector term {term:?}"))?,
            )
        } else if let Some(k) = term.strip_prefix('!') {
            Req::NotExists(k.trim().into())
        } else {
            Req::Exists(term.clone())
        };
        out.push(req);
    }
    Ok(out)
}

fn matches(reqs: &[Req], get: impl Fn(&str) -> Option<String>) -> bool {
    reqs.iter().all(|r| match r {
        Req::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
        Req::NotEq(k, v) => get(k).as_deref() != Some(v.as_str()),
        Req::In(k, set) => get(k).is_some_and(|x| set.contains(&x)),
        Req::NotIn(k, set) => get(k).is_none_or(|x| !set.contains(&x)),
        Req::Exists(k) => get(k).is_some(),
        Req::NotExists(k) => get(k).is_none(),
    })
}

/// Label and field selectors of a list or watch.
struct Filter {
    labels: Vec<Req>,
    fields: Vec<Req>,
}

impl Filter {
    fn from_query(query: &HashMap<String, String>) -> Result<Filter, String> {
        let labels = parse_selector(query.get("labelSelector").map_or("", String::as_str))?;
        let fields = parse_selector(query.get("fieldSelector").map_or("", String::as_str))?;
        for f in &fields {
            let k = match f {
                Req::Eq(k, _) | Req::NotEq(k, _) => k,
                _ => return Err("field selectors support only =, == and !=".into()),
            };
            if k != "metadata.name" && k != "metadata.namespace" {
                return Err(format!("field label not supported: {k}"));
            }
        }
        Ok(Filter { labels, fields })
    }

    fn accepts(&self, k: &Key, obj: &Value) -> bool {
        let label = |l: &str| {
            obj["metadata"]["labels"]
                .get(l)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let field = |f: &str| match f {
            "metadata.name" => Some(k.name.clone()),
            "metadata.namespace" => Some(k.namespace.clone()),
            _ => None,
        };
        matches(&self.labels, label) && matches(&self.fields, field)
    }
}

fn in_scope(target: &Target, k: &Key) -> bool {
    k.resource == target.resource && k.namespace == target.namespace
}

fn list(shared: &Shared, target: &Target, query: &HashMap<String, String>) -> Response {
    let filter = match Filter::from_query(query) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    let inner = shared.lock();
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|(k, obj)| in_scope(target, k) && filter.accepts(k, obj))
        .map(|(_, obj)| obj.clone())
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": target.api_version,
            "kind": format!("{}List", target.kind),
            "metadata": { "resourceVersion": inner.rv.to_string() },
            "items": items,
        }),
    )
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch_collection(
    shared: Arc<Shared>,
    target: Target,
    query: &HashMap<String, String>,
) -> Response {
    let filter = match Filter::from_query(query) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    let from: Option<u64> = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .filter(|rv| *rv > 0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(MAX_WATCH, Duration::from_secs)
        .min(MAX_WATCH);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut changed = shared.changed.subscribe();
    let mut kill = shared.kill.subscribe();
    kill.borrow_and_update();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        // Without a resourceVersion: the current state as ADDED events first.
        let mut last = match from {
            Some(rv) => rv,
            None => {
                let (lines, rv) = {
                    let inner = shared.lock();
                    let lines: Vec<Bytes> = inner
                        .objects
                        .iter()
                        .filter(|(k, o)| in_scope(&target, k) && filter.accepts(k, o))
                        .map(|(_, o)| watch_line("ADDED", o))
                        .collect();
                    (lines, inner.rv)
                };
                for l in lines {
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
                rv
            }
        };
        loop {
            let lines: Vec<Bytes> = {
                let inner = shared.lock();
                let lines = inner
                    .events
                    .iter()
                    .filter(|e| e.rv > last)
                    .filter(|e| in_scope(&target, &e.key) && filter.accepts(&e.key, &e.object))
                    .map(|e| watch_line(e.kind, &e.object))
                    .collect();
                last = inner.rv;
                lines
            };
            for l in lines {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = kill.changed() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("a streaming response with fixed headers builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_and_match() {
        let reqs = parse_selector("component in (a, b),stolon-cluster=c,!gone").expect("parses");
        let labels: HashMap<&str, &str> =
            HashMap::from([("component", "b"), ("stolon-cluster", "c")]);
        assert!(matches(&reqs, |k| labels.get(k).map(|v| v.to_string())));
        let labels: HashMap<&str, &str> =
            HashMap::from([("component", "x"), ("stolon-cluster", "c")]);
        assert!(!matches(&reqs, |k| labels.get(k).map(|v| v.to_string())));
        let labels: HashMap<&str, &str> =
            HashMap::from([("component", "a"), ("stolon-cluster", "c"), ("gone", "1")]);
        assert!(!matches(&reqs, |k| labels.get(k).map(|v| v.to_string())));
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut doc, &json!({"a": {"b": null, "e": 3}, "d": {"x": 1}}));
        assert_eq!(doc, json!({"a": {"c": 2, "e": 3}, "d": {"x": 1}}));
    }
}

/// One request as the API server's authorizer sees it: who (the bearer token of the client's
/// kubeconfig, "" for none) did what (RBAC verb: get, list, watch, create, update, patch, delete)
/// on which object (`name`: the path's name, or for list/watch the `metadata.name` field selector).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiCall {
    /// Bearer token.
    pub user: String,
    /// RBAC verb.
    pub verb: String,
    /// API group ("" for the core group).
    pub group: String,
    /// Resource (plural): configmaps, pods, leases.
    pub resource: String,
    /// Object name, when the request names one.
    pub name: Option<String>,
    /// Whether the authorizer let it through.
    pub allowed: bool,
}

/// Decides whether a call is allowed (see [`FakeApiServer::set_authorizer`]).
pub type Authorizer = Arc<dyn Fn(&ApiCall) -> bool + Send + Sync>;

#[derive(Default)]
struct AccessLog {
    calls: Vec<ApiCall>,
    authorizer: Option<Authorizer>,
}

/// Maximum calls kept in the access log (older ones are dropped; a test reads a bounded run).
const MAX_LOGGED_CALLS: usize = 100_000;

/// Records the call and answers 403 when an authorizer is set and refuses it.
fn check_access(
    shared: &Shared,
    headers: &HeaderMap,
    verb: &str,
    target: &Target,
    query: &HashMap<String, String>,
) -> Option<Response> {
    let user = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let name = target.name.clone().or_else(|| {
        query.get("fieldSelector").and_then(|f| {
            f.split(',')
                .find_map(|term| term.strip_prefix("metadata.name="))
                .map(str::to_string)
        })
    });
    let mut call = ApiCall {
        user,
        verb: match verb {
            "GET" => "get",
            "LIST" => "list",
            "WATCH" => "watch",
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            other => other,
        }
        .to_string(),
        group: target
            .api_version
            .rsplit_once('/')
            .map(|(g, _)| g.to_string())
            .unwrap_or_default(),
        resource: target.resource.clone(),
        name,
        allowed: true,
    };
    let mut log = shared.access.lock().expect("fake API access log poisoned");
    if let Some(authorize) = &log.authorizer {
        call.allowed = authorize(&call);
    }
    let allowed = call.allowed;
    let denied = (!allowed).then(|| {
        status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "user {:?} cannot {} resource {:?} in API group {:?}",
                call.user, call.verb, call.resource, call.group
            ),
        )
    });
    if log.calls.len() >= MAX_LOGGED_CALLS {
        log.calls.remove(0);
    }
    log.calls.push(call);
    denied
}

impl FakeApiServer {
    /// [`FakeApiServer::kubeconfig_yaml`] with a bearer token for the user, so that the server
    /// can tell clients apart ([`ApiCall::user`]).
    pub fn kubeconfig_yaml_with_token(
        &self,
        context: &str,
        namespace: &str,
        token: &str,
    ) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: fake\n  user:\n    token: {token}\ncontexts:\n- name: {context}\n  \
             context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
             current-context: {context}\n",
            url = self.url()
        )
    }

    /// From now on, answers 403 Forbidden to every call `authorize` refuses (as RBAC would).
    pub fn set_authorizer(&self, authorize: Authorizer) {
        self.shared
            .access
            .lock()
            .expect("fake API access log poisoned")
            .authorizer = Some(authorize);
    }

    /// Every call served so far (the most recent 100,000), in order.
    pub fn calls(&self) -> Vec<ApiCall> {
        self.shared
            .access
            .lock()
            .expect("fake API access log poisoned")
            .calls
            .clone()
    }
}
