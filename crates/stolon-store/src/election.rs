//! Lease-based leader election over a [`KvBackend`], the algorithm of etcd's `concurrency`
//! election (docs/architecture.md §4.2), written once for the etcd and in-memory backends.
//!
//! A candidate grants a lease of `ttl`, writes `<cluster>/sentinel-leader/<lease hex>` = its
//! UID under that lease, and leads while its key has the lowest create revision under the
//! prefix. It refreshes the lease every `ttl/3`. If it cannot refresh for `3/4 ttl` it steps
//! down on its own, before the lease can expire on the server and a successor be elected, so two
//! candidates never both see `true`. When its lease is gone it campaigns again with a new one.
//!
//! With heartbeats ([`LeaseElection::use_heartbeats`]) leadership also holds only while the
//! candidate's sentinel info is published within its hold, and a candidate that does not lead
//! deletes the leader's key once that leader's info stayed unchanged for longer than its hold
//! allows, without waiting for the store to expire the leader's lease
//! (stolon_core::sentinel::leadership has the rules and their argument).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stolon_core::model::SentinelInfo;
use stolon_core::sentinel::leadership::{Beat, Deposal, DeposalWatch, LeaderBeat, LeaderHold};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::keys::KeyLayout;
use crate::kv::{KvBackend, KvEntry};

/// Default election TTL (Stolon's session TTL).
pub const DEFAULT_ELECTION_TTL: Duration = Duration::from_secs(20);

/// Longest re-check interval while waiting (safety net next to change notifications).
const POLL_CAP: Duration = Duration::from_secs(1);
/// Back-off after a failed grant/put.
const RETRY_DELAY: Duration = Duration::from_millis(500);

struct Campaign {
    task: JoinHandle<()>,
    lease: Arc<Mutex<Option<i64>>>,
    tx: Arc<watch::Sender<bool>>,
}

/// Implements [`crate::Election`] for a backend's election type, a struct whose `inner` field is
/// its [`LeaseElection`]: every call goes to it.
macro_rules! delegate_to_lease_election {
    ($t:ty) => {
        #[async_trait::async_trait]
        impl $crate::Election for $t {
            async fn campaign(
                &self,
                candidate: &str,
            ) -> Result<tokio::sync::watch::Receiver<bool>, $crate::StoreError> {
                self.inner.campaign(candidate).await
            }
            async fn leader(&self) -> Result<Option<String>, $crate::StoreError> {
                self.inner.leader().await
            }
            async fn resign(&self) -> Result<(), $crate::StoreError> {
                self.inner.resign().await
            }
            fn set_ttl(&self, ttl: std::time::Duration) -> bool {
                self.inner.set_ttl(ttl);
                true
            }
            fn use_heartbeats(&self) -> bool {
                self.inner.use_heartbeats();
                true
            }
            fn heartbeat(
                &self,
                started: tokio::time::Instant,
                completed: tokio::time::Instant,
                hold: std::time::Duration,
            ) {
                self.inner.heartbeat(started, completed, hold);
            }
        }
    };
}
pub(crate) use delegate_to_lease_election;

/// The election shared by both backends.
pub(crate) struct LeaseElection<B: KvBackend> {
    backend: Arc<B>,
    layout: KeyLayout,
    ttl: Mutex<Duration>,
    campaign: Mutex<Option<Campaign>>,
    heartbeats: AtomicBool,
    /// The instant the heartbeats' times are counted from.
    origin: Instant,
    /// The latest reported publish of our info.
    beats: watch::Sender<Option<Beat>>,
}

impl<B: KvBackend> LeaseElection<B> {
    pub fn new(backend: Arc<B>, layout: KeyLayout, ttl: Duration) -> Self {
        LeaseElection {
            backend,
            layout,
            ttl: Mutex::new(ttl.max(Duration::from_secs(1))),
            campaign: Mutex::new(None),
            heartbeats: AtomicBool::new(false),
            origin: Instant::now(),
            beats: watch::channel(None).0,
        }
    }

    /// Leadership holds by heartbeats from the next campaign on (see the module docs).
    pub fn use_heartbeats(&self) {
        self.heartbeats.store(true, Ordering::SeqCst);
    }

    /// A successful publish of our info announcing `hold`.
    pub fn heartbeat(&self, started: Instant, completed: Instant, hold: Duration) {
        // A publish that started before our origin cannot be placed on our time line from the
        // safe side; there is no such publish in practice (the election exists first).
        let (Some(started), Some(completed)) = (
            started.checked_duration_since(self.origin),
            completed.checked_duration_since(self.origin),
        ) else {
            return;
        };
        self.beats.send_replace(Some(Beat {
            started,
            completed,
            hold,
        }));
    }

    /// Sets the lease TTL of the next campaign (at least 1 s).
    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock().expect("ttl lock poisoned") = ttl.max(Duration::from_secs(1));
    }

    pub async fn campaign(&self, candidate: &str) -> Result<watch::Receiver<bool>, StoreError> {
        // A new campaign replaces the previous one (giving up its leadership first).
        self.resign().await?;
        let (tx, rx) = watch::channel(false);
        let tx = Arc::new(tx);
        let lease = Arc::new(Mutex::new(None));
        let heartbeats = self.heartbeats.load(Ordering::SeqCst).then(|| Heartbeats {
            origin: self.origin,
            beats: self.beats.subscribe(),
        });
        let task = tokio::spawn(run_campaign(
            self.backend.clone(),
            self.layout.clone(),
            *self.ttl.lock().expect("ttl lock poisoned"),
            candidate.to_string(),
            tx.clone(),
            lease.clone(),
            heartbeats,
        ));
        *self.campaign.lock().expect("campaign lock poisoned") = Some(Campaign { task, lease, tx });
        Ok(rx)
    }

    pub async fn leader(&self) -> Result<Option<String>, StoreError> {
        let list = self.backend.list(&self.layout.election_prefix()).await?;
        Ok(list
            .into_iter()
            .next()
            .map(|e| String::from_utf8_lossy(&e.value).into_owned()))
    }

    pub async fn resign(&self) -> Result<(), StoreError> {
        let campaign = self.campaign.lock().expect("campaign lock poisoned").take();
        let Some(c) = campaign else {
            return Ok(());
        };
        c.task.abort();
        // Step down before the key goes, so no observer ever sees two leaders.
        c.tx.send_replace(false);
        let lease = *c.lease.lock().expect("lease lock poisoned");
        if let Some(lease) = lease {
            self.backend.revoke(lease).await?;
        }
        Ok(())
    }
}

impl<B: KvBackend> Drop for LeaseElection<B> {
    fn drop(&mut self) {
        // Dropping without resign behaves like a crashed candidate: the campaign stops and the
        // lease is left to expire after its TTL.
        if let Ok(mut guard) = self.campaign.lock()
            && let Some(c) = guard.take()
        {
            c.task.abort();
            c.tx.send_replace(false);
        }
    }
}

fn set(tx: &watch::Sender<bool>, leader: bool) {
    tx.send_if_modified(|v| {
        let changed = *v != leader;
        *v = leader;
        changed
    });
}

/// What a campaign with heartbeats needs: the time line of the reported publishes and the
/// channel they arrive on.
struct Heartbeats {
    origin: Instant,
    beats: watch::Receiver<Option<Beat>>,
}

impl Heartbeats {
    fn mono(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.origin)
    }
}

/// The leader as a candidate sees it: its key, and the revision and announced hold of its info.
async fn observe_leader<B: KvBackend>(
    backend: &B,
    layout: &KeyLayout,
    leader: &KvEntry,
) -> Result<LeaderBeat, StoreError> {
    let uid = String::from_utf8_lossy(&leader.value).into_owned();
    let info = backend.get(&layout.sentinel_info(&uid)).await?;
    let (revision, hold) = match info {
        Some((value, revision)) => {
            let hold = stolon_core::model::json::from_slice::<SentinelInfo>(&value)
                .ok()
                .and_then(|i| i.leader_hold_ms)
                .map(Duration::from_millis);
            (revision, hold)
        }
        None => (0, None),
    };
    Ok(LeaderBeat {
        key: leader.key.clone(),
        revision,
        hold,
    })
}

async fn run_campaign<B: KvBackend>(
    backend: Arc<B>,
    layout: KeyLayout,
    ttl: Duration,
    candidate: String,
    tx: Arc<watch::Sender<bool>>,
    lease_slot: Arc<Mutex<Option<i64>>>,
    mut heartbeats: Option<Heartbeats>,
) {
    let mut changes = backend.changes();
    let refresh_every = ttl / 3;
    let step_down_after = ttl * 3 / 4;
    let poll = (ttl / 4).min(POLL_CAP);
    // Kept across our own campaigns: the argument for a hold does not depend on which key we
    // hold (stolon_core::sentinel::leadership).
    let mut hold = LeaderHold::new();
    let mut deposal = DeposalWatch::new();
    let mut last_beat = None;
    loop {
        set(&tx, false);
        // 1. A lease and our key.
        let granted_at = Instant::now();
        let lease = match backend.grant(ttl).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "election: cannot grant lease");
                tokio::time::sleep(RETRY_DELAY).await;
                continue;
            }
        };
        *lease_slot.lock().expect("lease lock poisoned") = Some(lease);
        let key = layout.election_key(lease);
        if let Err(e) = backend
            .put(&key, candidate.clone().into_bytes(), Some(lease))
            .await
        {
            tracing::warn!(error = %e, "election: cannot write candidate key");
            let _ = backend.revoke(lease).await;
            tokio::time::sleep(RETRY_DELAY).await;
            continue;
        }
        let mut renewed_at = granted_at;
        let mut next_refresh = granted_at + refresh_every;
        // 2. Watch our position until the lease is lost.
        loop {
            let now = Instant::now();
            if now >= next_refresh {
                match backend.keep_alive(lease).await {
                    Ok(true) => {
                        renewed_at = now;
                        next_refresh = now + refresh_every;
                    }
                    Ok(false) => {
                        tracing::info!("election: lease expired");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "election: cannot refresh lease");
                        next_refresh = Instant::now() + RETRY_DELAY.min(refresh_every);
                    }
                }
            }
            if Instant::now() >= renewed_at + step_down_after {
                // We cannot prove the lease is still ours: stop leading before it can expire.
                tracing::warn!("election: lease not refreshed in time, stepping down");
                set(&tx, false);
                let _ = backend.revoke(lease).await;
                break;
            }
            if let Some(hb) = heartbeats.as_ref() {
                let beat = *hb.beats.borrow();
                if beat != last_beat {
                    last_beat = beat;
                    if let Some(beat) = beat {
                        hold.published(beat);
                    }
                }
            }
            let mut wake = next_refresh.min(renewed_at + step_down_after);
            let read_started = Instant::now();
            match backend.list(&layout.election_prefix()).await {
                Ok(list) => {
                    if !list.iter().any(|e| e.key == key) {
                        tracing::info!("election: our candidate key is gone");
                        let _ = backend.revoke(lease).await;
                        break;
                    }
                    let first = list.first().is_some_and(|e| e.key == key);
                    match heartbeats.as_ref() {
                        None => set(&tx, first),
                        Some(hb) => {
                            let look = Look {
                                backend: backend.as_ref(),
                                layout: &layout,
                                list: &list,
                                first,
                                read_started,
                            };
                            match look.with_heartbeats(hb, &mut hold, &mut deposal, &tx).await {
                                // Look again at once: we may be next.
                                Next::Deposed => continue,
                                Next::Wait(Some(t)) => wake = wake.min(t),
                                Next::Wait(None) => {}
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "election: cannot read candidates");
                }
            }
            wake = wake.min(Instant::now() + poll);
            if !wait(&mut changes, &mut heartbeats, wake, &tx).await {
                return;
            }
        }
        set(&tx, false);
        *lease_slot.lock().expect("lease lock poisoned") = None;
    }
}

/// What a campaign with heartbeats does after judging one read of the candidates.
enum Next {
    /// It deposed the leader: look again at once.
    Deposed,
    /// Wait; a timer may change the outcome at that instant.
    Wait(Option<Instant>),
}

/// One read of the candidates, as a campaign with heartbeats judges it.
struct Look<'a, B> {
    backend: &'a B,
    layout: &'a KeyLayout,
    /// The candidates' keys, oldest first.
    list: &'a [KvEntry],
    /// Whether our key is the oldest.
    first: bool,
    /// When the read of `list` started.
    read_started: Instant,
}

impl<B: KvBackend> Look<'_, B> {
    /// Sets whether we lead (first, and within our hold) and deposes a leader whose info stayed
    /// the same for longer than its hold (stolon_core::sentinel::leadership).
    async fn with_heartbeats(
        &self,
        hb: &Heartbeats,
        hold: &mut LeaderHold,
        deposal: &mut DeposalWatch,
        tx: &watch::Sender<bool>,
    ) -> Next {
        hold.key_seen(hb.mono(self.read_started));
        let leads = self.first && hold.may_act(hb.mono(Instant::now()));
        set(tx, leads);
        let deadline = hold.deadline().filter(|_| leads).map(|d| hb.origin + d);
        let leader = if self.first { None } else { self.list.first() };
        let verdict = match leader {
            None => deposal.observe(None, hb.mono(Instant::now())),
            Some(l) => match observe_leader(self.backend, self.layout, l).await {
                Ok(beat) => deposal.observe(Some(beat), hb.mono(Instant::now())),
                Err(e) => {
                    tracing::warn!(error = %e, "election: cannot read the leader's info");
                    Deposal::Never
                }
            },
        };
        let (old, revision) = match verdict {
            Deposal::Never => return Next::Wait(deadline),
            Deposal::WaitUntil(t) => {
                let t = hb.origin + t;
                return Next::Wait(Some(deadline.map_or(t, |d| d.min(t))));
            }
            Deposal::Depose { key, revision } => (key, revision),
        };
        let uid = leader
            .map(|l| String::from_utf8_lossy(&l.value).into_owned())
            .unwrap_or_default();
        match self
            .backend
            .delete_if(&old, &self.layout.sentinel_info(&uid), revision)
            .await
        {
            Ok(true) => {
                tracing::warn!(
                    leader = %uid,
                    "election: deposed the leader sentinel, its info stopped changing for longer than its hold"
                );
                return Next::Deposed;
            }
            // Its info changed meanwhile: it is alive.
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "election: cannot depose the leader"),
        }
        Next::Wait(deadline)
    }
}

/// Sleeps until `wake`, a store change or a reported heartbeat. False when the store is gone
/// (leadership then ends: nothing can be observed any more).
async fn wait(
    changes: &mut watch::Receiver<u64>,
    heartbeats: &mut Option<Heartbeats>,
    wake: Instant,
    tx: &watch::Sender<bool>,
) -> bool {
    let beat = async {
        match heartbeats.as_mut() {
            Some(hb) => {
                if hb.beats.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep_until(wake) => true,
        _ = beat => true,
        r = changes.changed() => {
            if r.is_err() {
                set(tx, false);
                return false;
            }
            true
        }
    }
}
