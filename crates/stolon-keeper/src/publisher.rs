//! Publishing the keeper's info on its own schedule, apart from the keeper loop.
//!
//! The keeper loop can be busy for a long time on one action (a `pg_basebackup` of a large
//! database, a slow start): if it also carried the publishing, the sentinel would see no fresh
//! info for `failInterval` and declare a working keeper failed. So a task republishes the latest
//! info (a new `infoUID` each time) every three quarters of `sleepInterval`, and at once when the
//! loop hands it a new one. (The sentinel counts an info as fresh for one `sleepInterval` after it
//! first sees it: publishing exactly that often would make a live keeper look silent whenever a
//! publish comes a little late.) An info the loop has not refreshed for
//! [`STALE_AFTER_INTERVALS`](stolon_core::keeper::STALE_AFTER_INTERVALS) intervals is published
//! with its PostgreSQL state marked unhealthy: the keeper is alive, but nobody is looking after
//! its database, so the sentinel must not rely on it.
//!
//! Those rules (period, TTL, staleness) are pure functions of `stolon_core::keeper`; this task
//! only keeps the clock, draws the `infoUID` and writes to the store.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stolon_core::keeper::{info_to_publish, info_ttl, republish_period};
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
    loop {
        let interval = shared
            .latest
            .lock()
            .expect("publisher state poisoned")
            .interval;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(republish_period(interval)) => {}
        }
        let Some((info, interval)) = next_info(&shared) else {
            continue;
        };
        let ttl = info_ttl(interval);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            r = store.put_keeper_info(&info, ttl) => {
                if let Err(e) = r {
                    error!("failed to update keeper info: {e}");
                }
            }
        }
    }
}

/// The info to publish now, if any: a new `infoUID`, and the PostgreSQL state marked unhealthy
/// when the keeper loop has not refreshed it for too long ([`info_to_publish`]).
fn next_info(shared: &Shared) -> Option<(KeeperInfo, Duration)> {
    let l = shared.latest.lock().expect("publisher state poisoned");
    let latest = l.info.clone()?;
    let mut info = info_to_publish(latest, l.refreshed.elapsed(), l.interval);
    info.info_uid = state::new_uid();
    Some((info, l.interval))
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
