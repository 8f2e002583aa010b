//! A simulated proxy: the check loop of the proxy daemon (`stolon_proxy::daemon`) without
//! sockets. It reads clusterdata on every store change and every `proxyCheckInterval`, asks the
//! pure `stolon_core::proxy::route` where to route, publishes its `ProxyInfo` (generation, timeout,
//! TTL twice the timeout) exactly when and as the daemon does, and routes nowhere once its last
//! successful check is older than `proxyTimeout`. Instead of forwarding connections it records its
//! destination in a [`ProxyView`] the world reads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stolon_core::proxy::{ClosedReason, Destination, Route, proxy_info, proxy_info_ttl, route};
use stolon_store::{Revision, Store, StoreError};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

/// What a simulated proxy currently does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyView {
    /// Where new connections go (`host`, `port`); `None` = nowhere.
    pub destination: Option<(String, String)>,
    /// The last generation it published.
    pub published_generation: Option<i64>,
    /// Number of publishes.
    pub publishes: u64,
}

/// Shared view of one proxy.
pub type SharedView = Arc<Mutex<ProxyView>>;

struct SimProxy {
    uid: String,
    store: Arc<dyn Store>,
    view: SharedView,
    check_interval: Duration,
    proxy_timeout: Duration,
    applied_revision: Option<Option<Revision>>,
}

enum Checked {
    Applied,
    Unchanged,
}

impl SimProxy {
    fn set_destination(&self, d: Option<&Destination>) {
        let mut v = self.view.lock().expect("proxy view poisoned");
        v.destination = d.map(|d| (d.host.clone(), d.port.clone()));
    }

    fn destination(&self) -> Option<(String, String)> {
        self.view
            .lock()
            .expect("proxy view poisoned")
            .destination
            .clone()
    }

    async fn publish(&self, generation: i64, timeout: Duration) -> Result<(), StoreError> {
        // A fresh info UID per publish, as the daemon draws: the sentinel tells a live proxy
        // from a stale info by it changing.
        let n = self.view.lock().expect("proxy view poisoned").publishes;
        let info_uid = format!(
            "{:08x}",
            (n as u32).wrapping_mul(2_654_435_761) ^ 0x5bd1_e995
        );
        let info = proxy_info(&self.uid, info_uid, generation, timeout);
        self.store
            .put_proxy_info(&info, proxy_info_ttl(timeout))
            .await?;
        let mut v = self.view.lock().expect("proxy view poisoned");
        v.published_generation = Some(generation);
        v.publishes += 1;
        Ok(())
    }

    fn adopt_timings(&mut self, r: &Route) {
        if let Some(t) = r.spec_proxy_timeout {
            self.proxy_timeout = t;
        }
        if let Some(i) = r.spec_check_interval {
            self.check_interval = i;
        }
    }

    async fn check(&mut self, full: bool) -> Result<Checked, StoreError> {
        let read = match self.store.get_cluster_data().await {
            Ok(r) => r,
            Err(e @ StoreError::Format { .. }) => {
                self.set_destination(None);
                self.applied_revision = None;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if !full && self.applied_revision.as_ref() == Some(&read.revision) {
            return Ok(Checked::Unchanged);
        }
        self.applied_revision = None;
        let r = route(read.data.as_ref(), &self.uid);
        let publish_timeout = r.publish_timeout(self.proxy_timeout);
        let (dest, generation) = match (&r.primary, r.publish_generation) {
            (Err(reason), None) => {
                self.set_destination(None);
                return match reason {
                    ClosedReason::Unusable(e) => Err(StoreError::Format {
                        what: "clusterdata".into(),
                        detail: e.clone(),
                    }),
                    _ => {
                        self.applied_revision = Some(read.revision);
                        Ok(Checked::Applied)
                    }
                };
            }
            (Ok(d), Some(g)) => (Some(d.clone()), g),
            (Err(ClosedReason::NotEnabled), Some(g)) => (None, g),
            (Err(_), Some(g)) => {
                // Close first, then acknowledge the generation (errors ignored).
                self.set_destination(None);
                if self.publish(g, publish_timeout).await.is_ok() {
                    self.adopt_timings(&r);
                }
                self.applied_revision = Some(read.revision);
                return Ok(Checked::Applied);
            }
            (Ok(_), None) => {
                self.set_destination(None);
                self.applied_revision = Some(read.revision);
                return Ok(Checked::Applied);
            }
        };
        if let Err(e) = self.publish(generation, publish_timeout).await {
            let target = dest.as_ref().map(|d| (d.host.clone(), d.port.clone()));
            if self.destination() != target {
                // Never switch to a new master unannounced.
                self.set_destination(None);
            }
            return Err(e);
        }
        self.adopt_timings(&r);
        self.set_destination(dest.as_ref());
        self.applied_revision = Some(read.revision);
        Ok(Checked::Applied)
    }
}

/// Runs a simulated proxy `uid` until `cancel`, recording what it does in `view`.
/// `fail_closed: false` injects a bug: the proxy keeps its route when its checks time out.
pub async fn run(
    uid: String,
    store: Arc<dyn Store>,
    view: SharedView,
    initial_check_interval: Duration,
    initial_timeout: Duration,
    fail_closed: bool,
    cancel: CancellationToken,
) {
    let mut p = SimProxy {
        uid,
        store,
        view,
        check_interval: initial_check_interval,
        proxy_timeout: initial_timeout,
        applied_revision: None,
    };
    let mut changes = p.store.changes();
    changes.borrow_and_update();
    let mut deadline = Instant::now() + p.proxy_timeout;
    let mut timed_out = false;
    let mut full = true;
    let mut next_tick = Instant::now();
    loop {
        // The daemon keeps honouring the timeout during a check; store calls here never block.
        match p.check(full).await {
            Ok(Checked::Applied) => {
                deadline = Instant::now() + p.proxy_timeout;
                timed_out = false;
                next_tick = Instant::now() + p.check_interval;
            }
            Ok(Checked::Unchanged) => {}
            Err(_) => {
                if full {
                    next_tick = Instant::now() + p.check_interval;
                }
            }
        }
        if !timed_out && Instant::now() >= deadline {
            timed_out = true;
            p.applied_revision = None;
            if fail_closed {
                p.set_destination(None);
            }
        }
        full = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = sleep_until(deadline), if !timed_out => {
                    timed_out = true;
                    p.applied_revision = None;
                    if fail_closed {
                        p.set_destination(None);
                    }
                }
                _ = sleep_until(next_tick) => break true,
                r = changes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    break false;
                }
            }
        };
    }
}
