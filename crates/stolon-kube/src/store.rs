//! The Kubernetes [`Store`]: clusterdata in a ConfigMap annotation, component infos in pod
//! annotations, change notifications from watches on both.
//!
//! Decisions:
//! - Compare-and-swap uses the ConfigMap's `resourceVersion` as the [`Revision`]: the write is a
//!   JSON merge patch carrying `metadata.resourceVersion`, which the API server refuses with 409
//!   when the object changed since (one request, no read-modify-write race). Any change of the
//!   ConfigMap changes its `resourceVersion`, also the sentinels' leader record in the same
//!   ConfigMap (Stolon's election lock, renewed every few seconds). So that renewals do not
//!   fail clusterdata writes, a 409 is retried when the clusterdata annotation is still the one
//!   read at the expected revision (the store remembers what it read at its last few revisions):
//!   only other annotations changed, which is the comparison Stolon itself makes (on the
//!   annotation's content). The watch feeding [`Store::changes`] likewise ignores ConfigMap
//!   updates that leave the clusterdata annotation as it was.
//! - Infos are rewritten only when they change in substance or when a reader needs to see a new
//!   `infoUID` (new on every publish), which is how the sentinels tell a live component from a
//!   silent one. Per kind ([`refresh_after`]): a keeper's info is written every time the keeper
//!   publishes it. The keeper already publishes at most once per `sleepInterval` unless its
//!   report changed, and that is what the sentinels need: ours count an info as fresh for 1.5
//!   `sleepInterval` after first seeing it, Stolon's for one; anything slower and a live keeper
//!   is judged failed after `failInterval`. A proxy's info whose only change is its `infoUID` is
//!   rewritten at most every half its TTL (the proxy timeout it carries): the sentinels count a
//!   proxy active for twice that timeout. Such an info is written without the proxy's
//!   `fencesFromCheckStart` mark, which promises that every publish is written. A sentinel's info is rewritten only when it changes:
//!   it carries only the sentinel's UID and nobody judges its freshness. The cache of what was
//!   last written is per process: a restarted component writes at once.
//! - No TTLs exist in Kubernetes: a pod that is being deleted or whose phase is not `Running` is
//!   gone, its annotation ignored. Readiness is deliberately not required: the keepers' readiness
//!   probe is `pg_isready`, and a keeper whose PostgreSQL is not up yet (initialisation, resync)
//!   must still be seen by the sentinel, or the cluster could never start. A pod on a dead node
//!   stays `Running` for a while; its `infoUID` stops moving and the sentinel's freshness test
//!   catches it, as in Stolon.
//! - Pods without a `stolon-status` annotation are skipped (no empty sentinel entry, unlike
//!   Stolon: docs/architecture.md §4.3 quirk).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use stolon_core::model::{ClusterData, KeeperInfo, ProxyInfo, SentinelInfo};
use stolon_store::{ClusterDataRead, Revision, Store, StoreConfig, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::{ApiFail, call};
use crate::events::{EventSink, PodRef};
use crate::{KubeOptions, resource_name};

/// Annotation of the ConfigMap holding the clusterdata JSON.
pub const CLUSTERDATA_ANNOTATION: &str = "stolon-clusterdata";
/// Annotation of each component's pod holding its info JSON.
pub const STATUS_ANNOTATION: &str = "stolon-status";
/// Pod label naming the component.
pub const COMPONENT_LABEL: &str = "component";
/// Pod (and ConfigMap) label naming the cluster.
pub const CLUSTER_LABEL: &str = "stolon-cluster";
/// `component` label values.
pub const KEEPER_COMPONENT: &str = "stolon-keeper";
/// `component` label value of sentinels.
pub const SENTINEL_COMPONENT: &str = "stolon-sentinel";
/// `component` label value of proxies.
pub const PROXY_COMPONENT: &str = "stolon-proxy";

/// How many times a create-if-absent or forced write retries after losing a race on the
/// ConfigMap's existence or version before reporting a conflict.
const WRITE_ATTEMPTS: usize = 5;

/// How many (revision, clusterdata text) pairs the store remembers for retrying a
/// compare-and-swap that lost only to a change of another annotation.
const SEEN_REVISIONS: usize = 8;

/// What this process last wrote to its pod's `stolon-status`, per component kind.
struct LastStatus {
    /// The info without its `infoUID`.
    substance: Value,
    /// When the write that stored it started.
    written_at: Instant,
}

/// Which component's info a pod status carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InfoKind {
    Keeper,
    Sentinel,
    Proxy,
}

/// How long an info whose only change is its `infoUID` may go unwritten, given the TTL the
/// component passes; `None`: until it changes in substance. Keepers: every publish is written
/// (the keeper publishes once per `sleepInterval` unless its report changed, and the sentinels'
/// freshness test needs each of those). Proxies: half the TTL, that is the proxy timeout the
/// info carries; the sentinels count a proxy active for twice that. Sentinels: their info has no
/// `infoUID` and nobody judges its freshness.
fn refresh_after(kind: InfoKind, ttl: Duration) -> Option<Duration> {
    match kind {
        InfoKind::Keeper => Some(Duration::ZERO),
        InfoKind::Proxy => Some(ttl / 2),
        InfoKind::Sentinel => None,
    }
}

/// The Kubernetes [`Store`] of one cluster in one namespace.
pub struct KubeStore {
    configmaps: Api<ConfigMap>,
    pods: Api<Pod>,
    namespace: String,
    cluster_name: String,
    configmap_name: String,
    pod_name: Option<String>,
    timeout: Duration,
    status_refresh: Option<Duration>,
    last_status: Mutex<HashMap<&'static str, LastStatus>>,
    /// Kubernetes Events for the sentinel's decisions.
    events: EventSink,
    /// The clusterdata annotation as read or written at recent revisions (newest last).
    seen: Mutex<VecDeque<(String, String)>>,
    /// The change counter and the task feeding it, started by the first [`Store::changes`].
    watches: Mutex<Option<(watch::Receiver<u64>, JoinHandle<()>)>>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("namespace", &self.namespace)
            .field("configmap", &self.configmap_name)
            .field("pod_name", &self.pod_name)
            .finish()
    }
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        if let Ok(mut w) = self.watches.lock()
            && let Some((_, task)) = w.take()
        {
            task.abort();
        }
    }
}

impl KubeStore {
    /// A store for `cfg.cluster_name` in `namespace`. The watches feeding [`Store::changes`]
    /// start with its first call (stolonctl, which never calls it, opens none).
    pub fn new(client: Client, namespace: &str, cfg: &StoreConfig, opts: &KubeOptions) -> Self {
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let configmap_name = resource_name(&cfg.cluster_name);
        let events = EventSink::new(
            client,
            namespace,
            &configmap_name,
            opts.pod_name.clone(),
            cfg.timeout,
        );
        KubeStore {
            events,
            configmaps,
            pods,
            namespace: namespace.to_string(),
            cluster_name: cfg.cluster_name.clone(),
            configmap_name,
            pod_name: opts.pod_name.clone(),
            timeout: cfg.timeout,
            status_refresh: opts.status_refresh,
            last_status: Mutex::new(HashMap::new()),
            seen: Mutex::new(VecDeque::new()),
            watches: Mutex::new(None),
        }
    }

    /// The namespace this store works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn clusterdata_patch(value: &str, resource_version: Option<&str>) -> Value {
        let mut meta = json!({ "annotations": { CLUSTERDATA_ANNOTATION: value } });
        if let Some(rv) = resource_version {
            meta["resourceVersion"] = Value::String(rv.to_string());
        }
        json!({ "metadata": meta })
    }

    async fn patch_configmap(&self, patch: &Value) -> Result<ConfigMap, ApiFail> {
        call(
            self.timeout,
            self.configmaps.patch(
                &self.configmap_name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            ),
        )
        .await
    }

    async fn create_configmap(&self, value: &str) -> Result<ConfigMap, ApiFail> {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.configmap_name.clone()),
                labels: Some(BTreeMap::from([(
                    CLUSTER_LABEL.to_string(),
                    self.cluster_name.clone(),
                )])),
                annotations: Some(BTreeMap::from([(
                    CLUSTERDATA_ANNOTATION.to_string(),
                    value.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        call(
            self.timeout,
            self.configmaps.create(&PostParams::default(), &cm),
        )
        .await
    }

    async fn put_cluster_data_if_absent(&self, value: &str) -> Result<Revision, StoreError> {
        for _ in 0..WRITE_ATTEMPTS {
            let cm = call(self.timeout, self.configmaps.get_opt(&self.configmap_name)).await?;
            let result = match cm {
                None => self.create_configmap(value).await,
                Some(cm) => {
                    if annotation(&cm.metadata, CLUSTERDATA_ANNOTATION).is_some() {
                        return Err(StoreError::Conflict);
                    }
                    let Some(rv) = cm.metadata.resource_version.as_deref() else {
                        return Err(missing_rv());
                    };
                    self.patch_configmap(&Self::clusterdata_patch(value, Some(rv)))
                        .await
                }
            };
            match result {
                Ok(cm) => {
                    let rev = revision_of(&cm)?;
                    self.remember(&rev.0, value);
                    return Ok(rev);
                }
                // Created or changed by someone else meanwhile: look again.
                Err(f) if f.is(409) || f.is(404) => continue,
                Err(f) => return Err(f.into()),
            }
        }
        Err(StoreError::Conflict)
    }

    fn remember(&self, revision: &str, text: &str) {
        let mut seen = self.seen.lock().expect("revision cache poisoned");
        if seen.iter().any(|(rv, _)| rv == revision) {
            return;
        }
        if seen.len() == SEEN_REVISIONS {
            seen.pop_front();
        }
        seen.push_back((revision.to_string(), text.to_string()));
    }

    fn seen_at(&self, revision: &str) -> Option<String> {
        self.seen
            .lock()
            .expect("revision cache poisoned")
            .iter()
            .find(|(rv, _)| rv == revision)
            .map(|(_, text)| text.clone())
    }

    /// After a 409 on `expected`: writes `value` if the clusterdata annotation is still what it
    /// was at `expected` (only other fields of the ConfigMap changed), else reports a conflict.
    async fn retry_if_clusterdata_unchanged(
        &self,
        value: &str,
        expected: &str,
    ) -> Result<Revision, StoreError> {
        let Some(then) = self.seen_at(expected) else {
            return Err(StoreError::Conflict);
        };
        for _ in 0..WRITE_ATTEMPTS {
            let Some(cm) =
                call(self.timeout, self.configmaps.get_opt(&self.configmap_name)).await?
            else {
                return Err(StoreError::Conflict);
            };
            if annotation(&cm.metadata, CLUSTERDATA_ANNOTATION) != Some(then.as_str()) {
                return Err(StoreError::Conflict);
            }
            let Some(rv) = cm.metadata.resource_version.as_deref() else {
                return Err(missing_rv());
            };
            match self
                .patch_configmap(&Self::clusterdata_patch(value, Some(rv)))
                .await
            {
                Ok(cm) => {
                    let rev = revision_of(&cm)?;
                    self.remember(&rev.0, value);
                    return Ok(rev);
                }
                Err(f) if f.is(409) => continue,
                Err(f) if f.is(404) => return Err(StoreError::Conflict),
                Err(f) => return Err(f.into()),
            }
        }
        Err(StoreError::Conflict)
    }

    /// Writes this pod's `stolon-status` unless only the `infoUID` changed since the last write
    /// and that write is younger than `refresh` (`None`: an unchanged info is never rewritten).
    /// [`KubeOptions::status_refresh`] overrides `refresh` when set.
    async fn put_status<T: Serialize>(
        &self,
        kind: &'static str,
        info: &T,
        refresh: Option<Duration>,
    ) -> Result<(), StoreError> {
        let pod = self.pod_name.as_deref().ok_or_else(|| {
            StoreError::Config(
                "POD_NAME is not set: the kubernetes store publishes each component's status on its own pod".into(),
            )
        })?;
        let value = serde_json::to_value(info).map_err(|e| format_err(kind, e))?;
        let text = serde_json::to_string(&value).map_err(|e| format_err(kind, e))?;
        let mut substance = value;
        if let Value::Object(m) = &mut substance {
            m.remove("infoUID");
        }
        let refresh = self.status_refresh.or(refresh);
        {
            let last = self.last_status.lock().expect("status cache poisoned");
            if let Some(l) = last.get(kind)
                && l.substance == substance
                && refresh.is_none_or(|r| l.written_at.elapsed() < r)
            {
                return Ok(());
            }
        }
        let started = Instant::now();
        let patch = json!({ "metadata": { "annotations": { STATUS_ANNOTATION: text } } });
        let result = call(
            self.timeout,
            self.pods
                .patch(pod, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await;
        let mut last = self.last_status.lock().expect("status cache poisoned");
        match result {
            Ok(_) => {
                last.insert(
                    kind,
                    LastStatus {
                        substance,
                        written_at: started,
                    },
                );
                Ok(())
            }
            Err(f) => {
                // Unknown outcome: write again next time.
                last.remove(kind);
                Err(match f {
                    ApiFail::Status(404, _) => StoreError::Config(format!(
                        "pod {pod:?} (POD_NAME) not found in namespace {:?}",
                        self.namespace
                    )),
                    f => f.into_store(),
                })
            }
        }
    }

    /// Live pods of one component with a decodable `stolon-status`, as (pod name, info).
    async fn list_status<T: DeserializeOwned>(
        &self,
        component: &str,
        what: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let lp = ListParams::default().labels(&format!(
            "{COMPONENT_LABEL}={component},{CLUSTER_LABEL}={}",
            self.cluster_name
        ));
        let pods = call(self.timeout, self.pods.list(&lp)).await?;
        let mut out = Vec::new();
        let mut keeper_pods = HashMap::new();
        for pod in pods.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let Some(status) = annotation(&pod.metadata, STATUS_ANNOTATION) else {
                continue;
            };
            if component == KEEPER_COMPONENT {
                // Every existing keeper pod, running or not, can carry an Event.
                if let Ok(k) = serde_json::from_str::<KeeperUid>(status) {
                    let uid = if k.uid.is_empty() {
                        name.clone()
                    } else {
                        k.uid
                    };
                    keeper_pods.insert(
                        uid,
                        PodRef {
                            name: name.clone(),
                            uid: pod.metadata.uid.clone(),
                        },
                    );
                }
            }
            if !pod_is_live(&pod) {
                continue;
            }
            match stolon_core::model::json::from_str::<T>(status) {
                Ok(v) => out.push((name, v)),
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "skipping undecodable {what}");
                }
            }
        }
        if component == KEEPER_COMPONENT {
            self.events.set_keeper_pods(keeper_pods);
        }
        Ok(out)
    }
}

/// The keeper UID of a keeper info, for finding its pod.
#[derive(serde::Deserialize)]
struct KeeperUid {
    #[serde(default)]
    uid: String,
}

fn format_err(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Format {
        what: what.to_string(),
        detail: e.to_string(),
    }
}

fn missing_rv() -> StoreError {
    StoreError::Unavailable("kubernetes API returned a ConfigMap without resourceVersion".into())
}

fn revision_of(cm: &ConfigMap) -> Result<Revision, StoreError> {
    cm.metadata
        .resource_version
        .clone()
        .map(Revision)
        .ok_or_else(missing_rv)
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// A pod counts while it runs and is not being deleted (module docs: no readiness check).
pub fn pod_is_live(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Decodes a clusterdata annotation: JSON `null` is "no clusterdata".
fn decode_cluster_data(s: &str) -> Result<Option<ClusterData>, StoreError> {
    stolon_core::model::json::from_str::<Option<ClusterData>>(s)
        .map_err(|e| format_err("clusterdata", e))
}

#[async_trait]
impl Store for KubeStore {
    async fn get_cluster_data(&self) -> Result<ClusterDataRead, StoreError> {
        let cm = call(self.timeout, self.configmaps.get_opt(&self.configmap_name)).await?;
        let absent = ClusterDataRead {
            data: None,
            revision: None,
        };
        let Some(cm) = cm else {
            return Ok(absent);
        };
        let Some(value) = annotation(&cm.metadata, CLUSTERDATA_ANNOTATION) else {
            return Ok(absent);
        };
        let revision = revision_of(&cm)?;
        self.remember(&revision.0, value);
        Ok(ClusterDataRead {
            data: decode_cluster_data(value)?,
            revision: Some(revision),
        })
    }

    async fn put_cluster_data(
        &self,
        cd: &ClusterData,
        expected: Option<&Revision>,
    ) -> Result<Revision, StoreError> {
        let value = serde_json::to_string(cd).map_err(|e| format_err("clusterdata", e))?;
        let Some(expected) = expected else {
            return self.put_cluster_data_if_absent(&value).await;
        };
        if expected.0.is_empty() || !expected.0.bytes().all(|b| b.is_ascii_digit()) {
            // Not a resourceVersion this API server handed out (they are etcd revisions), so it
            // cannot match; an empty one would even make the patch unconditional.
            return Err(StoreError::Conflict);
        }
        let patch = Self::clusterdata_patch(&value, Some(&expected.0));
        match self.patch_configmap(&patch).await {
            Ok(cm) => {
                let rev = revision_of(&cm)?;
                self.remember(&rev.0, &value);
                Ok(rev)
            }
            // 409: the ConfigMap changed since read; perhaps only the leader record.
            Err(f) if f.is(409) => {
                self.retry_if_clusterdata_unchanged(&value, &expected.0)
                    .await
            }
            // 404: deleted since read.
            Err(f) if f.is(404) => Err(StoreError::Conflict),
            Err(f) => Err(f.into()),
        }
    }

    async fn force_put_cluster_data(&self, cd: &ClusterData) -> Result<Revision, StoreError> {
        let value = serde_json::to_string(cd).map_err(|e| format_err("clusterdata", e))?;
        let patch = Self::clusterdata_patch(&value, None);
        for _ in 0..WRITE_ATTEMPTS {
            let written = match self.patch_configmap(&patch).await {
                Ok(cm) => Some(cm),
                Err(f) if f.is(404) => None,
                Err(f) => return Err(f.into()),
            };
            let written = match written {
                Some(cm) => Ok(cm),
                None => self.create_configmap(&value).await,
            };
            match written {
                Ok(cm) => {
                    let rev = revision_of(&cm)?;
                    self.remember(&rev.0, &value);
                    return Ok(rev);
                }
                // Created by someone else meanwhile: patch it.
                Err(f) if f.is(409) => {}
                Err(f) => return Err(f.into()),
            }
        }
        Err(StoreError::Conflict)
    }

    async fn put_keeper_info(&self, info: &KeeperInfo, ttl: Duration) -> Result<(), StoreError> {
        self.put_status("keeper info", info, refresh_after(InfoKind::Keeper, ttl))
            .await
    }

    async fn delete_keeper_info(&self, _uid: &str) -> Result<(), StoreError> {
        // The info is our own pod's status annotation; remove it if we published one.
        let published = self
            .last_status
            .lock()
            .expect("status cache poisoned")
            .remove("keeper info")
            .is_some();
        let Some(pod) = self.pod_name.as_deref().filter(|_| published) else {
            return Ok(());
        };
        let patch = json!({ "metadata": { "annotations": { STATUS_ANNOTATION: null } } });
        call(
            self.timeout,
            self.pods
                .patch(pod, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        .map(|_| ())
        .map_err(ApiFail::into_store)
    }

    async fn get_keepers_info(&self) -> Result<BTreeMap<String, KeeperInfo>, StoreError> {
        let list = self
            .list_status::<KeeperInfo>(KEEPER_COMPONENT, "keeper info")
            .await?;
        Ok(stolon_store::infos::keepers_by_uid(list))
    }

    async fn put_sentinel_info(
        &self,
        info: &SentinelInfo,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.put_status(
            "sentinel info",
            info,
            refresh_after(InfoKind::Sentinel, ttl),
        )
        .await
    }

    async fn get_sentinels_info(&self) -> Result<Vec<SentinelInfo>, StoreError> {
        let list = self
            .list_status::<SentinelInfo>(SENTINEL_COMPONENT, "sentinel info")
            .await?;
        Ok(stolon_store::infos::sentinels_sorted(list))
    }

    async fn put_proxy_info(&self, info: &ProxyInfo, ttl: Duration) -> Result<(), StoreError> {
        let refresh = self.status_refresh.or(refresh_after(InfoKind::Proxy, ttl));
        // The mark `fencesFromCheckStart` promises the sentinels that every publish reaches the
        // store with a new infoUID; a publish skipped here would break that promise. Unless every
        // publish is written, the info goes without the mark and the sentinels keep the longer
        // rule for this proxy.
        if info.fences_from_check_start && refresh != Some(Duration::ZERO) {
            let unmarked = ProxyInfo {
                fences_from_check_start: false,
                ..info.clone()
            };
            return self.put_status("proxy info", &unmarked, refresh).await;
        }
        self.put_status("proxy info", info, refresh).await
    }

    async fn get_proxies_info(&self) -> Result<BTreeMap<String, ProxyInfo>, StoreError> {
        let list = self
            .list_status::<ProxyInfo>(PROXY_COMPONENT, "proxy info")
            .await?;
        Ok(stolon_store::infos::proxies_by_uid(list))
    }

    fn publish_events(&self, events: &[stolon_core::sentinel::Event]) {
        self.events.publish(events);
    }

    /// Starts the watches on first use; must then be called inside a tokio runtime.
    fn changes(&self) -> watch::Receiver<u64> {
        let mut w = self.watches.lock().expect("watch state poisoned");
        let (rx, _) = w.get_or_insert_with(|| {
            let (tx, rx) = watch::channel(0u64);
            let task = tokio::spawn(watch_changes(
                self.configmaps.clone(),
                self.pods.clone(),
                self.configmap_name.clone(),
                self.cluster_name.clone(),
                tx,
            ));
            (rx, task)
        });
        rx.clone()
    }
}

/// Whether a watcher event can mean a change: everything but the start and the items of a
/// (re-)list, whose end (`InitDone`) is reported instead.
fn is_change<K>(e: &watcher::Event<K>) -> bool {
    !matches!(e, watcher::Event::Init | watcher::Event::InitApply(_))
}

/// Whether a ConfigMap watcher event changes clusterdata, updating `last`.
fn configmap_change(last: &mut Option<String>, e: &watcher::Event<ConfigMap>) -> bool {
    let text =
        |cm: &ConfigMap| annotation(&cm.metadata, CLUSTERDATA_ANNOTATION).map(str::to_string);
    match e {
        watcher::Event::Apply(cm) => {
            let now = text(cm);
            let changed = *last != now;
            *last = now;
            changed
        }
        watcher::Event::InitApply(cm) => {
            *last = text(cm);
            false
        }
        watcher::Event::Delete(_) => {
            *last = None;
            true
        }
        watcher::Event::Init => {
            *last = None;
            false
        }
        watcher::Event::InitDone => true,
    }
}

/// Watches the cluster's ConfigMap and pods and bumps the change counter on every event. The
/// `kube` watcher re-lists and re-watches by itself after errors (expired resourceVersion,
/// dropped connection); the back-off keeps a broken API server from being hammered.
async fn watch_changes(
    configmaps: Api<ConfigMap>,
    pods: Api<Pod>,
    configmap_name: String,
    cluster_name: String,
    tx: watch::Sender<u64>,
) {
    // The clusterdata annotation last seen: an update that leaves it as it was (the leader
    // record's renewals) is no change for the components.
    let mut last: Option<String> = None;
    let cm_events = watcher(
        configmaps,
        watcher::Config::default().fields(&format!("metadata.name={configmap_name}")),
    )
    .default_backoff()
    .map(move |r| r.map(|e| configmap_change(&mut last, &e)));
    let pod_events = watcher(
        pods,
        watcher::Config::default().labels(&format!("{CLUSTER_LABEL}={cluster_name}")),
    )
    .default_backoff()
    .map(|r| r.map(|e| is_change(&e)));
    let mut events = std::pin::pin!(futures::stream::select(cm_events, pod_events));
    while let Some(ev) = events.next().await {
        match ev {
            // A change, or the end of a (re-)list: something may have changed meanwhile.
            Ok(true) => {
                tx.send_modify(|c| *c = c.wrapping_add(1));
            }
            // The start or the items of a (re-)list: wait for its end.
            Ok(false) => {}
            Err(e) => {
                // The back-off spaces these out (at most one per 30 s per watch when failing).
                tracing::warn!(error = %e, "kubernetes watch failed, re-establishing");
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}
