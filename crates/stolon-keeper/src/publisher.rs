//! Publishing the keeper's info on its own schedule, apart from the keeper loop.
//!
//! The keeper loop can be busy for a long time on one action (a `pg_basebackup` of a large
//! database, a slow start): if it also carried the publishing, the sentinel would see no fresh
//! info for `failInterval` and declare a working keeper failed. So a task holds the latest info
//! the loop handed it and writes it (a new `infoUID` each time) when
//! [`publish_decision`](stolon_core::keeper::publish_decision) says so: at once when the report
//! changed in substance, otherwise once per `sleepInterval`, as Stolon does (the sentinel
//! counts an info as fresh for 1.5 `sleepInterval` after it first sees it). An info the loop has
//! not refreshed for [`STALE_AFTER_INTERVALS`](stolon_core::keeper::STALE_AFTER_INTERVALS)
//! intervals is published with its PostgreSQL state marked unhealthy: the keeper is alive, but
//! nobody is looking after its database, so the sentinel must not rely on it.
//!
//! Those rules (when to write, TTL, staleness) are pure functions of `stolon_core::keeper`; this
//! task only keeps the clock, draws the `infoUID` and writes to the store.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stolon_core::keeper::{
    PublishedInfo, info_to_publish, info_ttl, next_publish_at, publish_decision, republish_period,
};
use stolon_core::model::KeeperInfo;
use stolon_store::Store;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::state;

struct Latest {
    info: Option<KeeperInfo>,
    refreshed: Instant,
    interval: Duration,
}

struct Shared {
    latest: Mutex<Latest>,
    wake: Notify,
}

/// Handle of the publishing task: hand it new infos with [`Publisher::update`].
pub(crate) struct Publisher {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Starts the task; it publishes nothing until the first [`Publisher::update`].
    pub(crate) fn spawn(store: Arc<dyn Store>, interval: Duration) -> Self {
        let shared = Arc::new(Shared {
            latest: Mutex::new(Latest {
                info: None,
                refreshed: Instant::now(),
                interval,
            }),
            wake: Notify::new(),
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(store, shared.clone(), cancel.clone()));
        Publisher {
            shared,
            cancel,
            task: Some(task),
        }
    }

    /// The keeper loop's latest info (its `infoUID` is set on every publish), published
    /// now and then every `interval`.
    pub(crate) fn update(&self, info: KeeperInfo, interval: Duration) {
        {
            let mut l = self.shared.latest.lock().expect("publisher state poisoned");
            l.info = Some(info);
            l.refreshed = Instant::now();
            l.interval = interval;
        }
        self.shared.wake.notify_one();
    }

    /// Stops the task and waits for it, so nothing is published afterwards.
    pub(crate) async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn run(store: Arc<dyn Store>, shared: Arc<Shared>, cancel: CancellationToken) {
    let epoch = Instant::now();
    let mut published: Option<PublishedInfo> = None;
    loop {
        let candidate = candidate(&shared);
        let now = epoch.elapsed();
        let mut failed = false;
        if let Some((info, interval)) = &candidate
            && publish_decision(published.as_ref(), info, now, *interval).is_some()
        {
            let mut info = info.clone();
            info.info_uid = state::new_uid();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                r = store.put_keeper_info(&info, info_ttl(*interval)) => match r {
                    Ok(()) => published = Some(PublishedInfo { info, at: now }),
                    Err(e) => {
                        error!("failed to update keeper info: {e}");
                        failed = true;
                    }
                },
            }
        }
        // Sleep until the next publish is due, or until the loop hands over a new info; a
        // failed write is retried after one republish period.
        let wake = match (&candidate, &published) {
            (Some((_, interval)), _) if failed => Instant::now() + republish_period(*interval),
            (Some((_, interval)), Some(p)) => epoch + next_publish_at(p, *interval),
            // Nothing to publish yet: only a new info wakes the task.
            _ => Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// The info the loop handed over last, with its PostgreSQL state marked unhealthy when the loop
/// has not refreshed it for too long ([`info_to_publish`]), and the `sleepInterval`.
fn candidate(shared: &Shared) -> Option<(KeeperInfo, Duration)> {
    let l = shared.latest.lock().expect("publisher state poisoned");
    let latest = l.info.clone()?;
    Some((
        info_to_publish(latest, l.refreshed.elapsed(), l.interval),
        l.interval,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stolon_core::keeper::STALE_AFTER_INTERVALS;
    use stolon_core::model::PostgresState;
    use stolon_store::mem::MemStore;

    fn info() -> KeeperInfo {
        KeeperInfo {
            uid: "k1".into(),
            cluster_uid: "c1".into(),
            postgres_state: Some(PostgresState {
                healthy: true,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn republishes_on_its_own_and_marks_a_stale_state_unhealthy() {
        let store = Arc::new(MemStore::new("c"));
        let interval = Duration::from_secs(1);
        let mut p = Publisher::spawn(store.clone(), interval);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(store.get_keepers_info().await.expect("get").is_empty());

        p.update(info(), interval);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let first = store.get_keepers_info().await.expect("get")["k1"].clone();
        assert!(first.postgres_state.as_ref().expect("state").healthy);

        // No refresh from the loop: still republished (new infoUID) every interval...
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let second = store.get_keepers_info().await.expect("get")["k1"].clone();
        assert_ne!(first.info_uid, second.info_uid);
        assert!(second.postgres_state.as_ref().expect("state").healthy);
        // ... and past STALE_AFTER_INTERVALS intervals its database is reported unhealthy.
        tokio::time::sleep(interval * STALE_AFTER_INTERVALS).await;
        let stale = store.get_keepers_info().await.expect("get")["k1"].clone();
        assert!(!stale.postgres_state.as_ref().expect("state").healthy);
        // A refresh makes it healthy again at once.
        p.update(info(), interval);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let fresh = store.get_keepers_info().await.expect("get")["k1"].clone();
        assert!(fresh.postgres_state.as_ref().expect("state").healthy);

        // After stop nothing is published any more.
        p.stop().await;
        store.delete_keeper_info("k1").await.expect("delete");
        tokio::time::sleep(interval * 3).await;
        assert!(store.get_keepers_info().await.expect("get").is_empty());
    }
}
