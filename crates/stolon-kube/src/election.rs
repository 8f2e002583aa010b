//! Sentinel leadership with a `coordination.k8s.io/v1` Lease named `stolon-cluster-<cluster>`
//! (Stolon used client-go's election with a ConfigMap lock; stolon-behaviour.md §3.2).
//!
//! Algorithm (client-go's, written here over the `kube` client):
//! - The Lease records `holderIdentity` (the sentinel UID), `leaseDurationSeconds` (15),
//!   `acquireTime`, `renewTime` and `leaseTransitions`. Every write is a full replace carrying the
//!   `resourceVersion` read just before, so of two candidates writing the same version only one
//!   wins (the other gets 409).
//! - The holder renews every `duration/5` (3 s). It counts as leader only while its last
//!   successful renewal started less than `duration*2/3` (10 s) ago; past that it steps down by
//!   itself, before anyone else may take over.
//! - Another candidate takes over only when the holder is empty (resigned) or the Lease has not
//!   changed for a whole `leaseDurationSeconds` as observed on the candidate's own clock (time of
//!   first seeing that `resourceVersion`), so clock skew between nodes cannot cut a live lease
//!   short. A holder's last renewal started at or before the taker's first observation of it, so
//!   the holder steps down at least `duration/3` before a takeover can happen.
//! - Candidates that do not hold the Lease poll it every `duration*2/15` (2 s).
//! - `leader()` (stolonctl status) has no history to observe: it reports the holder unless
//!   `renewTime + leaseDurationSeconds` is in the past on the local wall clock.
//! - `resign()` stops the campaign, reports `false`, and clears `holderIdentity` if we hold it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use stolon_store::{Election, StoreConfig, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::{ApiFail, call};
use crate::{KubeOptions, resource_name};

/// Default Lease duration (client-go's LeaseDuration in Stolon).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// How many times resign retries clearing the holder after losing a version race.
const RESIGN_ATTEMPTS: usize = 5;

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
        // Whole seconds: that is what the Lease records.
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
    leases: Api<Lease>,
    name: String,
    timeout: Duration,
    timings: Timings,
    campaign: Mutex<Option<Campaign>>,
}

impl std::fmt::Debug for KubeElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeElection")
            .field("lease", &self.name)
            .field("duration", &self.timings.duration)
            .finish()
    }
}

impl KubeElection {
    /// The election of `cfg.cluster_name`'s sentinels in `namespace`.
    pub fn new(client: Client, namespace: &str, cfg: &StoreConfig, opts: &KubeOptions) -> Self {
        KubeElection {
            leases: Api::namespaced(client, namespace),
            name: resource_name(&cfg.cluster_name),
            timeout: cfg.timeout,
            timings: Timings::new(opts.lease_duration),
            campaign: Mutex::new(None),
        }
    }
}

impl Drop for KubeElection {
    fn drop(&mut self) {
        // Like a crashed candidate: the campaign stops and the Lease runs out.
        if let Ok(mut guard) = self.campaign.lock()
            && let Some(c) = guard.take()
        {
            c.task.abort();
            c.tx.send_replace(false);
        }
    }
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

fn lease_seconds(lease: &Lease, default: Duration) -> Duration {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(default)
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
    leases: Api<Lease>,
    name: String,
    timeout: Duration,
    timings: Timings,
    me: String,
    /// The Lease version last seen and when it was first seen (local clock).
    observed: Option<(String, Instant)>,
    /// Start of our last successful acquire/renew.
    renewed_at: Option<Instant>,
}

impl Candidate {
    fn leading(&self, now: Instant) -> bool {
        self.renewed_at
            .is_some_and(|at| now < at + self.timings.renew_deadline)
    }

    fn spec(&self, old: Option<&LeaseSpec>, acquiring: bool) -> LeaseSpec {
        let now = now_micro();
        let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
        let seconds = i32::try_from(self.timings.duration.as_secs()).unwrap_or(i32::MAX);
        LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if acquiring {
                Some(now.clone())
            } else {
                old.and_then(|s| s.acquire_time.clone())
                    .or_else(|| Some(now.clone()))
            },
            renew_time: Some(now),
            lease_transitions: Some(if acquiring && old.is_some() {
                transitions.saturating_add(1)
            } else {
                transitions
            }),
            ..old.cloned().unwrap_or_default()
        }
    }

    /// One round: read the Lease, then create, renew or take it over when allowed. A successful
    /// write sets `renewed_at` to the start of the round; losing a race (409) is not an error.
    async fn round(&mut self) -> Result<(), ApiFail> {
        let started = Instant::now();
        let Some(lease) = call(self.timeout, self.leases.get_opt(&self.name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, true)),
            };
            match call(
                self.timeout,
                self.leases.create(&PostParams::default(), &lease),
            )
            .await
            {
                Ok(created) => {
                    self.renewed_at = Some(started);
                    self.observed = created
                        .metadata
                        .resource_version
                        .map(|rv| (rv, Instant::now()));
                    tracing::info!(lease = %self.name, "election: acquired new lease");
                }
                // Someone else created it first.
                Err(f) if f.is(409) => {}
                Err(f) => return Err(f),
            }
            return Ok(());
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let seen_now = Instant::now();
        match &self.observed {
            Some((old, _)) if *old == rv => {}
            _ => self.observed = Some((rv.clone(), seen_now)),
        }
        let first_seen = self.observed.as_ref().map_or(seen_now, |(_, at)| *at);
        let current = holder(&lease).map(str::to_string);
        let ours = current.as_deref() == Some(self.me.as_str());
        let expired = current.is_none()
            || seen_now >= first_seen + lease_seconds(&lease, self.timings.duration);
        if !ours && !expired {
            if self.renewed_at.take().is_some() {
                tracing::info!(holder = ?current, "election: lease held by another candidate");
            }
            return Ok(());
        }
        let mut update = lease.clone();
        update.spec = Some(self.spec(lease.spec.as_ref(), !ours));
        match call(
            self.timeout,
            self.leases
                .replace(&self.name, &PostParams::default(), &update),
        )
        .await
        {
            Ok(written) => {
                if !ours {
                    tracing::info!(previous = ?current, "election: took over the lease");
                }
                self.renewed_at = Some(started);
                self.observed = written
                    .metadata
                    .resource_version
                    .map(|rv| (rv, Instant::now()));
                Ok(())
            }
            // Changed since read: read again next round (without renewing).
            Err(f) if f.is(409) => Ok(()),
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
            Ok(Err(f)) => tracing::warn!(error = %f.into_store(), "election: lease update failed"),
            Err(_) => tracing::warn!("election: lease update timed out"),
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
            let Some(lease) = call(self.timeout, self.leases.get_opt(&self.name)).await? else {
                return Ok(());
            };
            if holder(&lease) != Some(candidate) {
                return Ok(());
            }
            let mut update = lease.clone();
            if let Some(spec) = update.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = Some(now_micro());
            }
            match call(
                self.timeout,
                self.leases
                    .replace(&self.name, &PostParams::default(), &update),
            )
            .await
            {
                Ok(_) => return Ok(()),
                Err(f) if f.is(409) => continue,
                Err(f) => return Err(f.into_store()),
            }
        }
        Err(StoreError::Conflict)
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
            leases: self.leases.clone(),
            name: self.name.clone(),
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
        let Some(lease) = call(self.timeout, self.leases.get_opt(&self.name)).await? else {
            return Ok(None);
        };
        let Some(h) = holder(&lease) else {
            return Ok(None);
        };
        let Some(renewed) = lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()) else {
            return Ok(None);
        };
        let secs = lease_seconds(&lease, self.timings.duration);
        let expires_ms = renewed
            .0
            .as_millisecond()
            .saturating_add(i64::try_from(secs.as_millis()).unwrap_or(i64::MAX));
        if Timestamp::now().as_millisecond() >= expires_ms {
            return Ok(None);
        }
        Ok(Some(h.to_string()))
    }

    async fn resign(&self) -> Result<(), StoreError> {
        let campaign = self.campaign.lock().expect("campaign lock poisoned").take();
        let Some(c) = campaign else {
            return Ok(());
        };
        c.task.abort();
        // Step down before the Lease is released, so no observer ever sees two leaders.
        c.tx.send_replace(false);
        self.clear_holder(&c.candidate).await
    }
}
