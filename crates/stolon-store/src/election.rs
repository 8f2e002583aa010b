//! Lease-based leader election over a [`KvBackend`], the algorithm of etcd's `concurrency`
//! election (docs/architecture.md §4.2), written once for the etcd and in-memory backends.
//!
//! A candidate grants a lease of `ttl`, writes `<cluster>/sentinel-leader/<lease hex>` = its
//! UID under that lease, and leads while its key has the lowest create revision under the
//! prefix. It refreshes the lease every `ttl/3`. If it cannot refresh for `3/4 ttl` it steps
//! down on its own, before the lease can expire on the server and a successor be elected, so two
//! candidates never both see `true`. When its lease is gone it campaigns again with a new one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::keys::KeyLayout;
use crate::kv::KvBackend;

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

/// The election shared by both backends.
pub(crate) struct LeaseElection<B: KvBackend> {
    backend: Arc<B>,
    layout: KeyLayout,
    ttl: Mutex<Duration>,
    campaign: Mutex<Option<Campaign>>,
}

impl<B: KvBackend> LeaseElection<B> {
    pub fn new(backend: Arc<B>, layout: KeyLayout, ttl: Duration) -> Self {
        LeaseElection {
            backend,
            layout,
            ttl: Mutex::new(ttl.max(Duration::from_secs(1))),
            campaign: Mutex::new(None),
        }
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
        let task = tokio::spawn(run_campaign(
            self.backend.clone(),
            self.layout.clone(),
            *self.ttl.lock().expect("ttl lock poisoned"),
            candidate.to_string(),
            tx.clone(),
            lease.clone(),
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

async fn run_campaign<B: KvBackend>(
    backend: Arc<B>,
    layout: KeyLayout,
    ttl: Duration,
    candidate: String,
    tx: Arc<watch::Sender<bool>>,
    lease_slot: Arc<Mutex<Option<i64>>>,
) {
    let mut changes = backend.changes();
    let refresh_every = ttl / 3;
    let step_down_after = ttl * 3 / 4;
    let poll = (ttl / 4).min(POLL_CAP);
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
            match backend.list(&layout.election_prefix()).await {
                Ok(list) => {
                    if !list.iter().any(|e| e.key == key) {
                        tracing::info!("election: our candidate key is gone");
                        break;
                    }
                    let first = list.first().is_some_and(|e| e.key == key);
                    set(&tx, first);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "election: cannot read candidates");
                }
            }
            let wake = next_refresh.min(renewed_at + step_down_after);
            let wake = wake.min(Instant::now() + poll);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                r = changes.changed() => {
                    if r.is_err() {
                        // The store is gone: nothing can be observed any more.
                        set(&tx, false);
                        return;
                    }
                }
            }
        }
        set(&tx, false);
        *lease_slot.lock().expect("lease lock poisoned") = None;
    }
}
