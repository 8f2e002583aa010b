//! The fault wrapper: a [`Store`] (and an [`Election`]) that passes every call through to the
//! wrapped backend unless told to fail, for fault tests and the simulation.
//!
//! A shared [`FaultHandle`] controls one or more wrappers: while it is "down" every call fails
//! with [`StoreError::Unavailable`] (as a client whose connections are refused sees it);
//! [`FaultHandle::fail_next`] makes the next N calls fail and then lets calls through again. With
//! [`FaultHandle::set_latency`], a failing call first waits that long and then fails with
//! [`StoreError::Timeout`] (as a client behind a black-holed network sees it). Each wrapper belongs to one
//! component, so one component can lose the store while the others keep it.
//!
//! Not modelled: a change watch that breaks. [`Store::changes`] passes through, so a component cut
//! off still wakes up on changes, and then fails to read them (a real client would instead see its
//! watch stall). An [`UnreliableElection`] fails `campaign`, `leader` and `resign` while down, but a
//! campaign already running keeps refreshing its lease through the wrapped election.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use stolon_core::model::{ClusterData, KeeperInfo, ProxyInfo, SentinelInfo};
use tokio::sync::watch;

use crate::error::StoreError;
use crate::{ClusterDataRead, Election, Revision, Store};

#[derive(Debug, Default)]
struct FaultState {
    down: AtomicBool,
    fail_next: AtomicU64,
    failed: AtomicU64,
    passed: AtomicU64,
    latency_ms: AtomicU64,
    answer_delay_ms: AtomicU64,
}

/// Controls the wrappers made with it. Cheap to clone; clones control the same faults.
#[derive(Debug, Clone, Default)]
pub struct FaultHandle {
    state: Arc<FaultState>,
}

impl FaultHandle {
    /// A handle with no fault active.
    pub fn new() -> Self {
        Self::default()
    }

    /// While `true`, every call fails with [`StoreError::Unavailable`].
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Whether calls currently fail because the store is down.
    pub fn is_down(&self) -> bool {
        self.state.down.load(Ordering::SeqCst)
    }

    /// The next `n` calls fail (in addition to any while down); replaces a previous count.
    pub fn fail_next(&self, n: u64) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Failing calls first wait `latency` (tokio time), then fail with [`StoreError::Timeout`];
    /// zero (the default): they fail at once with [`StoreError::Unavailable`].
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.state.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Calls that pass are answered this long (tokio time) after the wrapped store answered them:
    /// the answer shows the store as it was when the request reached it, as a slow reply on a
    /// real network does. Zero (the default): at once.
    pub fn set_answer_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.answer_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Calls failed on purpose so far.
    pub fn failed_calls(&self) -> u64 {
        self.state.failed.load(Ordering::SeqCst)
    }

    /// Calls passed through so far.
    pub fn passed_calls(&self) -> u64 {
        self.state.passed.load(Ordering::SeqCst)
    }

    /// Runs `call` on the wrapped store unless this call must fail ([`Self::gate`]), and returns
    /// its answer after the answer delay.
    async fn call<T>(
        &self,
        op: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.gate(op).await?;
        let answer = call.await;
        let delay = Duration::from_millis(self.state.answer_delay_ms.load(Ordering::SeqCst));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        answer
    }

    /// `Err` if this call must fail (after the latency, if any), counting it either way.
    async fn gate(&self, op: &str) -> Result<(), StoreError> {
        let s = &self.state;
        let injected = s.down.load(Ordering::SeqCst)
            || s.fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if injected {
            s.failed.fetch_add(1, Ordering::SeqCst);
            let latency = Duration::from_millis(s.latency_ms.load(Ordering::SeqCst));
            if latency.is_zero() {
                return Err(StoreError::Unavailable(format!("injected fault on {op}")));
            }
            tokio::time::sleep(latency).await;
            Err(StoreError::Timeout(latency))
        } else {
            s.passed.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
}

/// A [`Store`] that fails on command (see the module docs).
pub struct Unreliable {
    inner: Arc<dyn Store>,
    faults: FaultHandle,
}

impl std::fmt::Debug for Unreliable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unreliable")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl Unreliable {
    /// Wraps `inner`, failing as `faults` says.
    pub fn new(inner: Arc<dyn Store>, faults: FaultHandle) -> Self {
        Unreliable { inner, faults }
    }

    /// The handle controlling this wrapper.
    pub fn faults(&self) -> &FaultHandle {
        &self.faults
    }
}

#[async_trait]
impl Store for Unreliable {
    async fn get_cluster_data(&self) -> Result<ClusterDataRead, StoreError> {
        self.faults
            .call("get_cluster_data", self.inner.get_cluster_data())
            .await
    }

    async fn put_cluster_data(
        &self,
        cd: &ClusterData,
        expected: Option<&Revision>,
    ) -> Result<Revision, StoreError> {
        self.faults
            .call(
                "put_cluster_data",
                self.inner.put_cluster_data(cd, expected),
            )
            .await
    }

    async fn force_put_cluster_data(&self, cd: &ClusterData) -> Result<Revision, StoreError> {
        self.faults
            .call(
                "force_put_cluster_data",
                self.inner.force_put_cluster_data(cd),
            )
            .await
    }

    async fn put_keeper_info(&self, info: &KeeperInfo, ttl: Duration) -> Result<(), StoreError> {
        self.faults
            .call("put_keeper_info", self.inner.put_keeper_info(info, ttl))
            .await
    }

    async fn get_keepers_info(&self) -> Result<BTreeMap<String, KeeperInfo>, StoreError> {
        self.faults
            .call("get_keepers_info", self.inner.get_keepers_info())
            .await
    }

    async fn keeper_info_ages(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Duration>, StoreError> {
        self.faults
            .call("keeper_info_ages", self.inner.keeper_info_ages())
            .await
    }

    async fn proxy_info_ages(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Duration>, StoreError> {
        self.faults
            .call("proxy_info_ages", self.inner.proxy_info_ages())
            .await
    }

    async fn delete_keeper_info(&self, uid: &str) -> Result<(), StoreError> {
        self.faults
            .call("delete_keeper_info", self.inner.delete_keeper_info(uid))
            .await
    }

    async fn put_sentinel_info(
        &self,
        info: &SentinelInfo,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.faults
            .call("put_sentinel_info", self.inner.put_sentinel_info(info, ttl))
            .await
    }

    async fn get_sentinels_info(&self) -> Result<Vec<SentinelInfo>, StoreError> {
        self.faults
            .call("get_sentinels_info", self.inner.get_sentinels_info())
            .await
    }

    async fn put_proxy_info(&self, info: &ProxyInfo, ttl: Duration) -> Result<(), StoreError> {
        self.faults
            .call("put_proxy_info", self.inner.put_proxy_info(info, ttl))
            .await
    }

    async fn get_proxies_info(&self) -> Result<BTreeMap<String, ProxyInfo>, StoreError> {
        self.faults
            .call("get_proxies_info", self.inner.get_proxies_info())
            .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes()
    }

    fn publish_events(&self, events: &[stolon_core::sentinel::Event]) {
        self.inner.publish_events(events);
    }
}

/// An [`Election`] that fails on command (see the module docs).
pub struct UnreliableElection {
    inner: Arc<dyn Election>,
    faults: FaultHandle,
    /// The leadership receiver of the latest campaign that started, for [`Self::leads`].
    latest: std::sync::Mutex<Option<watch::Receiver<bool>>>,
}

impl UnreliableElection {
    /// Wraps `inner`, failing as `faults` says.
    pub fn new(inner: Arc<dyn Election>, faults: FaultHandle) -> Self {
        UnreliableElection {
            inner,
            faults,
            latest: std::sync::Mutex::new(None),
        }
    }

    /// Whether the latest campaign says this candidate leads now: what its owner acts on, as a
    /// checker outside the owner sees it.
    pub fn leads(&self) -> bool {
        self.latest
            .lock()
            .map(|rx| rx.as_ref().is_some_and(|rx| *rx.borrow()))
            .unwrap_or(false)
    }
}

#[async_trait]
impl Election for UnreliableElection {
    async fn campaign(&self, candidate: &str) -> Result<watch::Receiver<bool>, StoreError> {
        let rx = self
            .faults
            .call("campaign", self.inner.campaign(candidate))
            .await?;
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some(rx.clone());
        }
        Ok(rx)
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        self.faults.call("leader", self.inner.leader()).await
    }

    async fn resign(&self) -> Result<(), StoreError> {
        self.faults.call("resign", self.inner.resign()).await
    }

    fn set_ttl(&self, ttl: std::time::Duration) -> bool {
        self.inner.set_ttl(ttl)
    }

    fn use_heartbeats(&self) -> bool {
        self.inner.use_heartbeats()
    }

    // A report of a publish that already went through the (faulty) store, not a store call.
    fn heartbeat(
        &self,
        started: tokio::time::Instant,
        completed: tokio::time::Instant,
        hold: std::time::Duration,
    ) {
        self.inner.heartbeat(started, completed, hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemStore;
    use crate::testing::suite::sample_cluster_data;

    fn wrapped() -> (Arc<MemStore>, Unreliable) {
        let mem = Arc::new(MemStore::new("c"));
        let u = Unreliable::new(mem.clone(), FaultHandle::new());
        (mem, u)
    }

    #[tokio::test(start_paused = true)]
    async fn passes_through_when_healthy() {
        let (mem, u) = wrapped();
        let rev = u
            .force_put_cluster_data(&sample_cluster_data("x"))
            .await
            .expect("put");
        let read = mem.get_cluster_data().await.expect("read inner");
        assert_eq!(read.revision, Some(rev));
        assert_eq!(
            u.get_cluster_data().await.expect("read").data,
            read.data,
            "wrapper reads what the inner store holds"
        );
        let info = KeeperInfo {
            uid: "k1".into(),
            ..Default::default()
        };
        u.put_keeper_info(&info, Duration::from_secs(20))
            .await
            .expect("info");
        assert!(
            mem.get_keepers_info()
                .await
                .expect("get")
                .contains_key("k1")
        );
        assert_eq!(u.faults().failed_calls(), 0);
        assert_eq!(u.faults().passed_calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn down_fails_every_call_with_a_retryable_error_and_writes_nothing() {
        let (mem, u) = wrapped();
        u.faults().set_down(true);
        assert!(u.faults().is_down());
        let e = u
            .force_put_cluster_data(&sample_cluster_data("x"))
            .await
            .expect_err("down");
        assert!(matches!(e, StoreError::Unavailable(_)) && e.is_retryable());
        assert!(u.get_cluster_data().await.is_err());
        assert!(u.get_proxies_info().await.is_err());
        assert!(
            mem.get_cluster_data().await.expect("inner").data.is_none(),
            "a failed call reached the inner store"
        );
        u.faults().set_down(false);
        u.force_put_cluster_data(&sample_cluster_data("x"))
            .await
            .expect("up again");
        assert!(u.get_cluster_data().await.expect("read").data.is_some());
        assert_eq!(u.faults().failed_calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn fail_next_fails_exactly_n_calls() {
        let (_mem, u) = wrapped();
        u.faults().fail_next(2);
        assert!(u.get_cluster_data().await.is_err());
        assert!(u.get_keepers_info().await.is_err());
        assert!(u.get_cluster_data().await.is_ok());
        assert!(u.get_sentinels_info().await.is_ok());
        assert_eq!(u.faults().failed_calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_delays_the_failure_and_reports_a_timeout() {
        let (_mem, u) = wrapped();
        u.faults().set_latency(Duration::from_secs(2));
        u.faults().set_down(true);
        let t = tokio::time::Instant::now();
        let e = u.get_cluster_data().await.expect_err("down");
        assert!(
            matches!(e, StoreError::Timeout(d) if d == Duration::from_secs(2)),
            "{e}"
        );
        assert!(t.elapsed() >= Duration::from_secs(2));
        u.faults().set_down(false);
        let t = tokio::time::Instant::now();
        u.get_cluster_data().await.expect("up");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "healthy calls are not delayed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_handle_controls_several_wrappers_and_the_election() {
        let mem = Arc::new(MemStore::new("c"));
        let faults = FaultHandle::new();
        let a = Unreliable::new(mem.clone(), faults.clone());
        let b = Unreliable::new(mem.clone(), faults.clone());
        let other = Unreliable::new(mem.clone(), FaultHandle::new());
        let election = UnreliableElection::new(Arc::new(mem.election()), faults.clone());
        faults.set_down(true);
        assert!(a.get_cluster_data().await.is_err());
        assert!(b.get_cluster_data().await.is_err());
        assert!(election.campaign("s1").await.is_err());
        assert!(election.leader().await.is_err());
        assert!(
            other.get_cluster_data().await.is_ok(),
            "unrelated wrapper failed"
        );
        faults.set_down(false);
        assert!(!election.leads(), "leads before any campaign started");
        let rx = election.campaign("s1").await.expect("campaign");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(*rx.borrow());
        assert!(
            election.leads(),
            "the latest campaign's leadership is not seen"
        );
        assert_eq!(
            election.leader().await.expect("leader").as_deref(),
            Some("s1")
        );
        election.resign().await.expect("resign");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!*rx.borrow() && !election.leads(), "leads after resigning");
    }
}
