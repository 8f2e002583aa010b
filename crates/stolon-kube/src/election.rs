//! Sentinel leadership through the Kubernetes API, with client-go's leader-election algorithm
//! written over the `kube` client, on one of two locks named `stolon-cluster-<cluster>`:
//!
//! - [`ElectionLock::ConfigMap`] (the default, Stolon's lock): the leader record is JSON in the
//!   annotation `control-plane.alpha.kubernetes.io/leader` of the cluster's ConfigMap (the one
//!   holding clusterdata), in client-go's format: `holderIdentity`, `leaseDurationSeconds`,
//!   `acquireTime`, `renewTime` (RFC 3339, whole seconds), `leaderTransitions`. Go sentinels
//!   (client-go's ConfigMap resource lock) and these sentinels then see one record, so a mixed
//!   cluster during a rolling upgrade has one leader, and Stolon's RBAC (pods, configmaps,
//!   events) is enough.
//! - [`ElectionLock::Lease`]: a `coordination.k8s.io/v1` Lease with the same fields in its spec
//!   (`leaseTransitions`, times in microseconds); needs `leases` in the RBAC.
//!
//! Algorithm (the same on both locks):
//! - Every write carries the `resourceVersion` read just before, so of two candidates writing
//!   the same version only one wins (the other gets 409 and reads again next round).
//! - The holder renews every `duration/5` (3 s). It counts as leader only while its last
//!   successful renewal started less than `duration*2/3` (10 s) ago; past that it steps down by
//!   itself, before anyone else may take over.
//! - Another candidate takes over only when the holder is empty (resigned) or the record has not
//!   changed for a whole `leaseDurationSeconds` (the record's own, else ours) as observed on the
//!   candidate's own clock, from when it first saw the record as it is now, as client-go does; so
//!   clock skew between nodes cannot cut a live lease short. For the ConfigMap the observed
//!   record is the annotation's text (clusterdata writes to the same ConfigMap do not count);
//!   for the Lease its `resourceVersion`. A holder's last renewal started at or before the
//!   taker's first observation of it, so the holder steps down at least `duration/3` before a
//!   takeover can happen.
//! - Candidates that do not hold the lock poll it every `duration*2/15` (2 s).
//! - `leader()` (stolonctl status) has no history to observe: it reports the holder unless
//!   `renewTime + leaseDurationSeconds` is in the past on the local wall clock. It reads the
//!   configured lock first, then the other one, so stolonctl needs no flag for it.
//! - `resign()` stops the campaign, reports `false`, and clears `holderIdentity` if we hold it
//!   (client-go's release: a Go candidate then takes over at once).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stolon_store::{Election, StoreConfig, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::{ApiFail, call};
use crate::store::CLUSTER_LABEL;
use crate::{KubeOptions, resource_name};

/// Default lease duration (client-go's LeaseDuration in Stolon).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// Annotation of the cluster's ConfigMap holding the leader record (client-go's
/// `LeaderElectionRecordAnnotationKey`).
pub const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// How many times resign retries clearing the holder after losing a version race.
const RESIGN_ATTEMPTS: usize = 5;

/// Which Kubernetes object holds the sentinels' leader record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ElectionLock {
    /// The `control-plane.alpha.kubernetes.io/leader` annotation of ConfigMap
    /// `stolon-cluster-<cluster>` (Stolon's lock).
    #[default]
    ConfigMap,
    /// The `coordination.k8s.io/v1` Lease `stolon-cluster-<cluster>`.
    Lease,
}

impl ElectionLock {
    /// The flag value naming it.
    pub fn as_str(self) -> &'static str {
        match self {
            ElectionLock::ConfigMap => "configmap",
            ElectionLock::Lease => "lease",
        }
    }

    fn other(self) -> ElectionLock {
        match self {
            ElectionLock::ConfigMap => ElectionLock::Lease,
            ElectionLock::Lease => ElectionLock::ConfigMap,
        }
    }
}

impl std::fmt::Display for ElectionLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ElectionLock {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "configmap" => Ok(ElectionLock::ConfigMap),
            "lease" => Ok(ElectionLock::Lease),
            other => Err(format!(
                "unknown kubernetes election lock {other:?}: expected \"configmap\" or \"lease\""
            )),
        }
    }
}

/// client-go's `LeaderElectionRecord`, as JSON in the ConfigMap annotation. Go writes every
/// field; missing ones decode to their zero value, as in Go.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderRecord {
    /// The leader's identity (the sentinel UID); empty: nobody holds the lock.
    #[serde(default)]
    pub holder_identity: String,
    /// How long the record is valid after it was last seen to change.
    #[serde(default)]
    pub lease_duration_seconds: i64,
    /// When the current holder acquired the lock (`null` when unset).
    #[serde(default)]
    pub acquire_time: Option<Time>,
    /// When the holder last renewed (`null` when unset).
    #[serde(default)]
    pub renew_time: Option<Time>,
    /// How many times the lock changed hands.
    #[serde(default)]
    pub leader_transitions: i64,
}

impl LeaderRecord {
    fn holder(&self) -> Option<&str> {
        Some(self.holder_identity.as_str()).filter(|h| !h.is_empty())
    }

    fn duration(&self, default: Duration) -> Duration {
        u64::try_from(self.lease_duration_seconds)
            .ok()
            .filter(|s| *s > 0)
            .map_or(default, Duration::from_secs)
    }

    /// Whether `renewTime + leaseDurationSeconds` is still ahead of the local wall clock.
    fn live_by_wall_clock(&self, default: Duration) -> bool {
        let Some(renewed) = &self.renew_time else {
            return false;
        };
        let secs = self.duration(default);
        let expires_ms = renewed
            .0
            .as_millisecond()
            .saturating_add(i64::try_from(secs.as_millis()).unwrap_or(i64::MAX));
        Timestamp::now().as_millisecond() < expires_ms
    }

    fn from_lease(spec: Option<&LeaseSpec>) -> LeaderRecord {
        let Some(s) = spec else {
            return LeaderRecord::default();
        };
        LeaderRecord {
            holder_identity: s.holder_identity.clone().unwrap_or_default(),
            lease_duration_seconds: s.lease_duration_seconds.map_or(0, i64::from),
            acquire_time: s.acquire_time.as_ref().map(|t| Time(t.0)),
            renew_time: s.renew_time.as_ref().map(|t| Time(t.0)),
            leader_transitions: s.lease_transitions.map_or(0, i64::from),
        }
    }

    fn to_lease(&self, old: Option<&LeaseSpec>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: self.holder().map(str::to_string),
            lease_duration_seconds: Some(
                i32::try_from(self.lease_duration_seconds).unwrap_or(i32::MAX),
            ),
            acquire_time: self.acquire_time.as_ref().map(|t| MicroTime(t.0)),
            renew_time: self.renew_time.as_ref().map(|t| MicroTime(t.0)),
            lease_transitions: Some(i32::try_from(self.leader_transitions).unwrap_or(i32::MAX)),
            ..old.cloned().unwrap_or_default()
        }
    }
}

/// The lock object as read.
#[derive(Debug, Clone)]
enum LockObject {
    /// No ConfigMap / Lease of that name.
    Missing,
    ConfigMap(ConfigMap),
    Lease(Lease),
}

/// A read of the lock: the record, what identifies its current state for observation (the
/// annotation's text, or the Lease's resourceVersion), and the object to write back.
#[derive(Debug, Clone)]
struct Read {
    record: LeaderRecord,
    raw: String,
    object: LockObject,
}

/// Access to one kind of lock.
#[derive(Clone)]
enum LockApi {
    ConfigMap(Api<ConfigMap>),
    Lease(Api<Lease>),
}

fn bad_record(e: serde_json::Error) -> ApiFail {
    ApiFail::Other(StoreError::Format {
        what: format!("leader election record (annotation {LEADER_ANNOTATION})"),
        detail: e.to_string(),
    })
}

impl LockApi {
    fn new(client: Client, namespace: &str, kind: ElectionLock) -> LockApi {
        match kind {
            ElectionLock::ConfigMap => LockApi::ConfigMap(Api::namespaced(client, namespace)),
            ElectionLock::Lease => LockApi::Lease(Api::namespaced(client, namespace)),
        }
    }

    async fn get(&self, timeout: Duration, name: &str) -> Result<Read, ApiFail> {
        match self {
            LockApi::ConfigMap(api) => {
                let Some(cm) = call(timeout, api.get_opt(name)).await? else {
                    return Ok(Read {
                        record: LeaderRecord::default(),
                        raw: String::new(),
                        object: LockObject::Missing,
                    });
                };
                let raw = cm
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(LEADER_ANNOTATION))
                    .cloned()
                    .unwrap_or_default();
                // An existing ConfigMap without the annotation holds an empty record (client-go).
                let record = if raw.is_empty() {
                    LeaderRecord::default()
                } else {
                    serde_json::from_str(&raw).map_err(bad_record)?
                };
                Ok(Read {
                    record,
                    raw,
                    object: LockObject::ConfigMap(cm),
                })
            }
            LockApi::Lease(api) => {
                let Some(lease) = call(timeout, api.get_opt(name)).await? else {
                    return Ok(Read {
                        record: LeaderRecord::default(),
                        raw: String::new(),
                        object: LockObject::Missing,
                    });
                };
                Ok(Read {
                    record: LeaderRecord::from_lease(lease.spec.as_ref()),
                    raw: lease.metadata.resource_version.clone().unwrap_or_default(),
                    object: LockObject::Lease(lease),
                })
            }
        }
    }

    /// Writes `record` over what `read` found: create when missing, else a write conditional on
    /// the read resourceVersion (409 when it changed). Returns the new observation key.
    async fn write(
        &self,
        timeout: Duration,
        name: &str,
        cluster: &str,
        read: &Read,
        record: &LeaderRecord,
    ) -> Result<String, ApiFail> {
        let text = serde_json::to_string(record).map_err(bad_record)?;
        match (self, &read.object) {
            (LockApi::ConfigMap(api), LockObject::Missing) => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        labels: Some(BTreeMap::from([(
                            CLUSTER_LABEL.to_string(),
                            cluster.to_string(),
                        )])),
                        annotations: Some(BTreeMap::from([(
                            LEADER_ANNOTATION.to_string(),
                            text.clone(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    ..ConfigMap::default()
                };
                call(timeout, api.create(&PostParams::default(), &cm)).await?;
                Ok(text)
            }
            (LockApi::ConfigMap(api), LockObject::ConfigMap(cm)) => {
                let Some(rv) = cm.metadata.resource_version.as_deref() else {
                    return Err(ApiFail::Other(StoreError::Unavailable(
                        "kubernetes API returned a ConfigMap without resourceVersion".into(),
                    )));
                };
                let patch = json!({
                    "metadata": {
                        "resourceVersion": rv,
                        "annotations": { LEADER_ANNOTATION: text },
                    }
                });
                call(
                    timeout,
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await?;
                Ok(text)
            }
            (LockApi::Lease(api), LockObject::Missing) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(record.to_lease(None)),
                };
                let created = call(timeout, api.create(&PostParams::default(), &lease)).await?;
                Ok(created.metadata.resource_version.unwrap_or_default())
            }
            (LockApi::Lease(api), LockObject::Lease(lease)) => {
                let mut update = lease.clone();
                update.spec = Some(record.to_lease(lease.spec.as_ref()));
                let written =
                    call(timeout, api.replace(name, &PostParams::default(), &update)).await?;
                Ok(written.metadata.resource_version.unwrap_or_default())
            }
            _ => Err(ApiFail::Other(StoreError::Unavailable(
                "election lock read and written through different kinds".into(),
            ))),
        }
    }
}

/// Timings derived from the lease duration.
#[derive(Debug, Clone, Copy)]
struct Timings {
    duration: Duration,
    renew_every: Duration,
    renew_deadline: Duration,
    retry_every: Duration,
}

impl Timings {
    fn new(duration: Duration) -> Self {
        // Whole seconds: that is what the record holds.
        let duration = Duration::from_secs(duration.as_secs().max(1));
        Timings {
            duration,
            renew_every: duration / 5,
            renew_deadline: duration * 2 / 3,
            retry_every: duration * 2 / 15,
        }
    }
}

struct Campaign {
    task: JoinHandle<()>,
    tx: Arc<watch::Sender<bool>>,
    candidate: String,
}

/// The Kubernetes [`Election`].
pub struct KubeElection {
    lock: LockApi,
    /// The lock not campaigned on, read by `leader()` when the configured one has no holder.
    other: LockApi,
    kind: ElectionLock,
    name: String,
    cluster: String,
    timeout: Duration,
    timings: Timings,
    campaign: Mutex<Option<Campaign>>,
}

impl std::fmt::Debug for KubeElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeElection")
            .field("lock", &self.kind)
            .field("name", &self.name)
            .field("duration", &self.timings.duration)
            .finish()
    }
}

impl KubeElection {
    /// The election of `cfg.cluster_name`'s sentinels in `namespace`, on `opts.election_lock`.
    pub fn new(client: Client, namespace: &str, cfg: &StoreConfig, opts: &KubeOptions) -> Self {
        let kind = opts.election_lock;
        KubeElection {
            lock: LockApi::new(client.clone(), namespace, kind),
            other: LockApi::new(client, namespace, kind.other()),
            kind,
            name: resource_name(&cfg.cluster_name),
            cluster: cfg.cluster_name.clone(),
            timeout: cfg.timeout,
            timings: Timings::new(opts.lease_duration),
            campaign: Mutex::new(None),
        }
    }

    /// The lock this election campaigns on.
    pub fn lock(&self) -> ElectionLock {
        self.kind
    }
}

impl Drop for KubeElection {
    fn drop(&mut self) {
        // Like a crashed candidate: the campaign stops and the record runs out.
        if let Ok(mut guard) = self.campaign.lock()
            && let Some(c) = guard.take()
        {
            c.task.abort();
            c.tx.send_replace(false);
        }
    }
}

/// Now, in whole seconds (what the ConfigMap record can hold; the Lease keeps the same value).
fn now_time() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

fn set(tx: &watch::Sender<bool>, leader: bool) {
    tx.send_if_modified(|v| {
        let changed = *v != leader;
        *v = leader;
        changed
    });
}

/// One campaigning candidate's loop state.
struct Candidate {
    lock: LockApi,
    name: String,
    cluster: String,
    timeout: Duration,
    timings: Timings,
    me: String,
    /// The record last seen (its observation key) and when it was first seen (local clock).
    observed: Option<(String, Instant)>,
    /// Start of our last successful acquire/renew.
    renewed_at: Option<Instant>,
}

impl Candidate {
    fn leading(&self, now: Instant) -> bool {
        self.renewed_at
            .is_some_and(|at| now < at + self.timings.renew_deadline)
    }

    /// The record to write: a renewal keeps `acquireTime` and the transition count, a takeover
    /// (or first acquisition of an existing record) counts one more transition.
    fn record(&self, old: &LeaderRecord, renewing: bool, existed: bool) -> LeaderRecord {
        let now = now_time();
        let seconds = i64::try_from(self.timings.duration.as_secs()).unwrap_or(i64::MAX);
        LeaderRecord {
            holder_identity: self.me.clone(),
            lease_duration_seconds: seconds,
            acquire_time: if renewing {
                old.acquire_time.clone().or_else(|| Some(now.clone()))
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            leader_transitions: if renewing || !existed {
                old.leader_transitions
            } else {
                old.leader_transitions.saturating_add(1)
            },
        }
    }

    /// One round: read the lock, then create, renew or take it over when allowed. A successful
    /// write sets `renewed_at` to the start of the round; losing a race (409) is not an error.
    async fn round(&mut self) -> Result<(), ApiFail> {
        let started = Instant::now();
        let read = self.lock.get(self.timeout, &self.name).await?;
        let seen_now = Instant::now();
        let missing = matches!(read.object, LockObject::Missing);
        if !missing {
            match &self.observed {
                Some((old, _)) if *old == read.raw => {}
                _ => self.observed = Some((read.raw.clone(), seen_now)),
            }
        }
        let first_seen = self.observed.as_ref().map_or(seen_now, |(_, at)| *at);
        let current = read.record.holder().map(str::to_string);
        let ours = current.as_deref() == Some(self.me.as_str());
        let expired = current.is_none()
            || seen_now >= first_seen + read.record.duration(self.timings.duration);
        if !ours && !expired {
            if self.renewed_at.take().is_some() {
                tracing::info!(holder = ?current, lock = %self.name, "election: lock held by another candidate");
            }
            return Ok(());
        }
        // As client-go: every acquisition of an existing record counts a transition.
        let record = self.record(&read.record, ours, !missing);
        match self
            .lock
            .write(self.timeout, &self.name, &self.cluster, &read, &record)
            .await
        {
            Ok(raw) => {
                if !ours {
                    if missing {
                        tracing::info!(lock = %self.name, "election: acquired new lock");
                    } else {
                        tracing::info!(previous = ?current, lock = %self.name, "election: took over the lock");
                    }
                }
                self.renewed_at = Some(started);
                self.observed = Some((raw, Instant::now()));
                Ok(())
            }
            // Changed (or created) since read: read again next round (without renewing).
            Err(f) if f.is(409) || f.is(404) => Ok(()),
            Err(f) => Err(f),
        }
    }
}

async fn run_campaign(mut c: Candidate, tx: Arc<watch::Sender<bool>>) {
    loop {
        let now = Instant::now();
        // A round never outlives our leadership: past the renew deadline we step down even if
        // the request is still pending.
        let limit = if c.leading(now) {
            c.renewed_at
                .map_or(now + c.timeout, |at| at + c.timings.renew_deadline)
        } else {
            now + c.timeout
        };
        match tokio::time::timeout_at(limit, c.round()).await {
            Ok(Ok(())) => {}
            Ok(Err(f)) => tracing::warn!(error = %f.into_store(), "election: lock update failed"),
            Err(_) => tracing::warn!("election: lock update timed out"),
        }
        let now = Instant::now();
        let leading = c.leading(now);
        set(&tx, leading);
        let wait = if leading {
            // Renew on time, and wake at the deadline to step down if renewals keep failing.
            let deadline = c.renewed_at.map_or(now, |at| at + c.timings.renew_deadline);
            (now + c.timings.renew_every).min(deadline)
        } else {
            now + c.timings.retry_every
        };
        tokio::time::sleep_until(wait).await;
        if !c.leading(Instant::now()) {
            set(&tx, false);
        }
    }
}

impl KubeElection {
    async fn clear_holder(&self, candidate: &str) -> Result<(), StoreError> {
        for _ in 0..RESIGN_ATTEMPTS {
            let read = self.lock.get(self.timeout, &self.name).await?;
            if matches!(read.object, LockObject::Missing) || read.record.holder() != Some(candidate)
            {
                return Ok(());
            }
            // client-go's release: no holder, a one-second duration, the transitions kept.
            let now = now_time();
            let released = LeaderRecord {
                holder_identity: String::new(),
                lease_duration_seconds: 1,
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                leader_transitions: read.record.leader_transitions,
            };
            match self
                .lock
                .write(self.timeout, &self.name, &self.cluster, &read, &released)
                .await
            {
                Ok(_) => return Ok(()),
                Err(f) if f.is(409) => continue,
                Err(f) => return Err(f.into_store()),
            }
        }
        Err(StoreError::Conflict)
    }

    /// The live holder of one lock, if any.
    async fn live_holder(&self, lock: &LockApi) -> Result<Option<String>, StoreError> {
        let read = lock.get(self.timeout, &self.name).await?;
        Ok(read
            .record
            .holder()
            .filter(|_| read.record.live_by_wall_clock(self.timings.duration))
            .map(str::to_string))
    }
}

#[async_trait]
impl Election for KubeElection {
    async fn campaign(&self, candidate: &str) -> Result<watch::Receiver<bool>, StoreError> {
        // A new campaign replaces the previous one (giving up its leadership first).
        self.resign().await?;
        let (tx, rx) = watch::channel(false);
        let tx = Arc::new(tx);
        let c = Candidate {
            lock: self.lock.clone(),
            name: self.name.clone(),
            cluster: self.cluster.clone(),
            timeout: self.timeout,
            timings: self.timings,
            me: candidate.to_string(),
            observed: None,
            renewed_at: None,
        };
        let task = tokio::spawn(run_campaign(c, tx.clone()));
        *self.campaign.lock().expect("campaign lock poisoned") = Some(Campaign {
            task,
            tx,
            candidate: candidate.to_string(),
        });
        Ok(rx)
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        if let Some(h) = self.live_holder(&self.lock).await? {
            return Ok(Some(h));
        }
        // The other lock may be what the sentinels use (a flag stolonctl does not have); a
        // missing or unreadable one just has no leader.
        Ok(self.live_holder(&self.other).await.unwrap_or(None))
    }

    async fn resign(&self) -> Result<(), StoreError> {
        let campaign = self.campaign.lock().expect("campaign lock poisoned").take();
        let Some(c) = campaign else {
            return Ok(());
        };
        c.task.abort();
        // Step down before the record is released, so no observer ever sees two leaders.
        c.tx.send_replace(false);
        self.clear_holder(&c.candidate).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_record_decodes_and_ours_encodes_in_its_format() {
        let go = r#"{"holderIdentity":"5a3f1c2e","leaseDurationSeconds":15,"acquireTime":"2026-12-04T10:00:00Z","renewTime":"2026-12-04T10:05:02Z","leaderTransitions":3}"#;
        let r: LeaderRecord = serde_json::from_str(go).expect("decodes");
        assert_eq!(r.holder(), Some("5a3f1c2e"));
        assert_eq!(r.duration(Duration::from_secs(1)), Duration::from_secs(15));
        assert_eq!(r.leader_transitions, 3);
        assert_eq!(serde_json::to_string(&r).expect("encodes"), go);
        // A released record (client-go writes an empty holder) and a zero time (`null`).
        let released: LeaderRecord = serde_json::from_str(
            r#"{"holderIdentity":"","leaseDurationSeconds":1,"acquireTime":null,"renewTime":null,"leaderTransitions":3}"#,
        )
        .expect("decodes");
        assert_eq!(released.holder(), None);
        assert!(!released.live_by_wall_clock(Duration::from_secs(15)));
    }

    #[test]
    fn lock_names_parse() {
        assert_eq!("configmap".parse(), Ok(ElectionLock::ConfigMap));
        assert_eq!("lease".parse(), Ok(ElectionLock::Lease));
        assert!("endpoints".parse::<ElectionLock>().is_err());
        assert_eq!(ElectionLock::default(), ElectionLock::ConfigMap);
    }
}
