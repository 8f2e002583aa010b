//! The in-memory backend: a real revisioned KV store with leases (etcd v3's model), for unit and
//! simulation tests. Not a mock: compare-and-swap on revisions, TTL expiry, change notifications
//! and the same election algorithm as the etcd backend.
//!
//! Time is tokio time: leases expire on `tokio::time::Instant`, so a test under
//! `#[tokio::test(start_paused = true)]` controls expiry with `tokio::time::advance` (or lets the
//! paused clock auto-advance). A background reaper task (spawned on first use inside a runtime)
//! deletes expired keys and wakes `changes()` receivers; reads also expire lazily, so results are
//! right even before the reaper ran.
//!
//! One [`MemKv`] is one "etcd": several [`MemStore`]s (different clusters, or several components
//! of one cluster) and [`MemElection`]s can share it. [`MemKv::set_unavailable`] makes every
//! operation fail with [`StoreError::Unavailable`], for fault tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use stolon_core::model::{ClusterData, KeeperInfo, ProxyInfo, SentinelInfo};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::election::{DEFAULT_ELECTION_TTL, LeaseElection};
use crate::error::StoreError;
use crate::keys::{KeyLayout, ttl_secs};
use crate::kv::{KvBackend, KvEntry, KvStore};
use crate::{ClusterDataRead, Revision, Store};

/// Default store prefix.
const DEFAULT_PREFIX: &str = "stolon/cluster";

struct Entry {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    lease: Option<i64>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct Watcher {
    prefix: String,
    tx: Weak<watch::Sender<u64>>,
}

#[derive(Default)]
struct State {
    revision: i64,
    kvs: BTreeMap<String, Entry>,
    leases: HashMap<i64, Lease>,
    next_lease: i64,
    watchers: Vec<Watcher>,
}

impl State {
    fn notify(&mut self, key: &str) {
        self.watchers.retain(|w| {
            let Some(tx) = w.tx.upgrade() else {
                return false;
            };
            if key.starts_with(&w.prefix) {
                tx.send_modify(|c| *c = c.wrapping_add(1));
            }
            true
        });
    }

    fn delete(&mut self, key: &str) -> bool {
        let Some(e) = self.kvs.remove(key) else {
            return false;
        };
        if let Some(l) = e.lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.remove(key);
        }
        self.revision += 1;
        self.notify(key);
        true
    }

    fn expire(&mut self, now: Instant) {
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.revoke(id);
        }
    }

    fn revoke(&mut self, id: i64) {
        if let Some(lease) = self.leases.remove(&id) {
            for key in lease.keys {
                self.delete(&key);
            }
        }
    }

    fn put(&mut self, key: &str, value: Vec<u8>, lease: Option<i64>) -> Result<i64, StoreError> {
        if let Some(id) = lease
            && !self.leases.contains_key(&id)
        {
            return Err(StoreError::Unavailable(format!("lease {id:x} not found")));
        }
        self.revision += 1;
        let rev = self.revision;
        let old_lease = match self.kvs.get_mut(key) {
            Some(e) => {
                e.value = value;
                e.mod_revision = rev;
                std::mem::replace(&mut e.lease, lease)
            }
            None => {
                self.kvs.insert(
                    key.to_string(),
                    Entry {
                        value,
                        create_revision: rev,
                        mod_revision: rev,
                        lease,
                    },
                );
                None
            }
        };
        if let Some(l) = old_lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.remove(key);
        }
        if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.insert(key.to_string());
        }
        self.notify(key);
        Ok(rev)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|l| l.deadline).min()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the reaper when leases change.
    wake: Arc<Notify>,
    reaper: Mutex<Option<JoinHandle<()>>>,
    unavailable: AtomicBool,
    ops: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Lets an idle reaper notice the store is gone.
        self.wake.notify_one();
    }
}

/// One in-memory "etcd", shared by the stores and elections made from it. Cheap to clone.
#[derive(Clone)]
pub struct MemKv {
    shared: Arc<Shared>,
}

impl Default for MemKv {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemKv").finish_non_exhaustive()
    }
}

impl MemKv {
    /// An empty store.
    pub fn new() -> Self {
        MemKv {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Arc::new(Notify::new()),
                reaper: Mutex::new(None),
                unavailable: AtomicBool::new(false),
                ops: AtomicU64::new(0),
            }),
        }
    }

    /// A store for cluster `cluster_name` under `prefix` (e.g. `stolon/cluster`).
    pub fn store(&self, prefix: &str, cluster_name: &str) -> MemStore {
        let layout = KeyLayout::new(prefix, cluster_name);
        let backend = Arc::new(MemBackend::new(self.clone(), layout.cluster_prefix()));
        MemStore {
            inner: KvStore::new(backend, layout),
        }
    }

    /// While `true`, every operation fails with [`StoreError::Unavailable`] (leases keep
    /// running down, as on a real store the client cannot reach).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Number of operations served so far (for tests that check a component stopped writing).
    pub fn op_count(&self) -> u64 {
        self.shared.ops.load(Ordering::SeqCst)
    }

    /// The raw value of `key`, if present (test inspection).
    pub fn raw_get(&self, key: &str) -> Option<Vec<u8>> {
        let mut st = self.lock();
        st.expire(Instant::now());
        st.kvs.get(key).map(|e| e.value.clone())
    }

    /// Writes `value` at `key` unconditionally, without lease (test setup, e.g. malformed data).
    pub fn raw_put(&self, key: &str, value: &[u8]) {
        let mut st = self.lock();
        st.expire(Instant::now());
        // Cannot fail without a lease.
        let _ = st.put(key, value.to_vec(), None);
    }

    /// Deletes `key` (test setup).
    pub fn raw_delete(&self, key: &str) -> bool {
        let mut st = self.lock();
        st.expire(Instant::now());
        st.delete(key)
    }

    /// All live keys, sorted (test inspection).
    pub fn keys(&self) -> Vec<String> {
        let mut st = self.lock();
        st.expire(Instant::now());
        st.kvs.keys().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("mem store state poisoned")
    }

    /// Common entry of every operation: availability, lazy expiry, reaper.
    fn begin(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.ensure_reaper();
        self.shared.ops.fetch_add(1, Ordering::SeqCst);
        if self.shared.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "in-memory store set unavailable".into(),
            ));
        }
        let mut st = self.lock();
        st.expire(Instant::now());
        Ok(st)
    }

    /// Starts the expiry task in the current runtime if none is running.
    fn ensure_reaper(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut reaper = self.shared.reaper.lock().expect("reaper lock poisoned");
        if reaper.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let weak = Arc::downgrade(&self.shared);
        let wake = self.shared.wake.clone();
        *reaper = Some(handle.spawn(reap(weak, wake)));
    }
}

async fn reap(weak: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let mut st = shared.state.lock().expect("mem store state poisoned");
            st.expire(Instant::now());
            st.next_deadline()
        };
        let notified = wake.notified();
        match next {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

/// The [`KvBackend`] of one store: the shared KV plus a change counter for its cluster prefix.
pub(crate) struct MemBackend {
    kv: MemKv,
    tx: Arc<watch::Sender<u64>>,
}

impl MemBackend {
    fn new(kv: MemKv, prefix: String) -> Self {
        let tx = Arc::new(watch::channel(0u64).0);
        kv.lock().watchers.push(Watcher {
            prefix,
            tx: Arc::downgrade(&tx),
        });
        kv.ensure_reaper();
        MemBackend { kv, tx }
    }
}

#[async_trait]
impl KvBackend for MemBackend {
    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let st = self.kv.begin()?;
        Ok(st.kvs.get(key).map(|e| (e.value.clone(), e.mod_revision)))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> Result<i64, StoreError> {
        let mut st = self.kv.begin()?;
        st.put(key, value, lease)
    }

    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let mut st = self.kv.begin()?;
        let current = st.kvs.get(key).map(|e| e.mod_revision);
        if current != expected {
            return Ok(None);
        }
        st.put(key, value, None).map(Some)
    }

    async fn delete_if(&self, key: &str, guard: &str, expected: i64) -> Result<bool, StoreError> {
        let mut st = self.kv.begin()?;
        let current = st.kvs.get(guard).map_or(0, |e| e.mod_revision);
        if current != expected {
            return Ok(false);
        }
        st.delete(key);
        Ok(true)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KvEntry>, StoreError> {
        let st = self.kv.begin()?;
        let mut out: Vec<KvEntry> = st
            .kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| KvEntry {
                key: k.clone(),
                value: e.value.clone(),
                create_revision: e.create_revision,
                mod_revision: e.mod_revision,
            })
            .collect();
        out.sort_by_key(|e| e.create_revision);
        Ok(out)
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let mut st = self.kv.begin()?;
        st.next_lease += 1;
        // Lease ids look like etcd's: large, distinct.
        let id = 0x7a00_0000_0000 + st.next_lease;
        let ttl = Duration::from_secs(ttl_secs(ttl).unsigned_abs());
        st.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        drop(st);
        self.kv.shared.wake.notify_one();
        Ok(id)
    }

    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        let mut st = self.kv.begin()?;
        let now = Instant::now();
        let found = match st.leases.get_mut(&lease) {
            Some(l) => {
                l.deadline = now + l.ttl;
                true
            }
            None => false,
        };
        drop(st);
        self.kv.shared.wake.notify_one();
        Ok(found)
    }

    async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        let mut st = self.kv.begin()?;
        st.revoke(lease);
        drop(st);
        self.kv.shared.wake.notify_one();
        Ok(())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.kv.ensure_reaper();
        self.tx.subscribe()
    }

    async fn lease_ages(&self, prefix: &str) -> Result<Vec<(String, Duration)>, StoreError> {
        let st = self.kv.begin()?;
        let now = Instant::now();
        let mut out = Vec::new();
        for (key, e) in st.kvs.range(prefix.to_string()..) {
            if !key.starts_with(prefix) {
                break;
            }
            let Some(lease) = e.lease.and_then(|id| st.leases.get(&id)) else {
                continue;
            };
            // Whole seconds, as etcd answers.
            let granted = i64::try_from(lease.ttl.as_secs()).unwrap_or(i64::MAX);
            let remaining = i64::try_from(lease.deadline.saturating_duration_since(now).as_secs())
                .unwrap_or(i64::MAX);
            if let Some(age) = crate::kv::lease_age(granted, remaining) {
                out.push((key.clone(), age));
            }
        }
        Ok(out)
    }
}

/// In-memory [`Store`] for one cluster.
pub struct MemStore {
    inner: KvStore<MemBackend>,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore")
            .field("cluster_path", &self.inner.layout.cluster_path())
            .finish()
    }
}

impl MemStore {
    /// A store for `cluster_name` (prefix `stolon/cluster`) on its own new [`MemKv`].
    pub fn new(cluster_name: &str) -> Self {
        MemKv::new().store(DEFAULT_PREFIX, cluster_name)
    }

    /// The shared KV this store lives in.
    pub fn kv(&self) -> &MemKv {
        &self.inner.backend.kv
    }

    /// The key layout (`<prefix>/<cluster>/...`).
    pub fn layout(&self) -> &KeyLayout {
        &self.inner.layout
    }

    /// An election for this store's cluster with Stolon's 20 s TTL.
    pub fn election(&self) -> MemElection {
        self.election_with_ttl(DEFAULT_ELECTION_TTL)
    }

    /// An election with lease TTL `ttl` (whole seconds, at least 1 s).
    pub fn election_with_ttl(&self, ttl: Duration) -> MemElection {
        MemElection {
            inner: LeaseElection::new(self.inner.backend.clone(), self.inner.layout.clone(), ttl),
        }
    }
}

#[async_trait]
impl Store for MemStore {
    async fn get_cluster_data(&self) -> Result<ClusterDataRead, StoreError> {
        self.inner.get_cluster_data().await
    }
    async fn put_cluster_data(
        &self,
        cd: &ClusterData,
        expected: Option<&Revision>,
    ) -> Result<Revision, StoreError> {
        self.inner.put_cluster_data(cd, expected).await
    }
    async fn force_put_cluster_data(&self, cd: &ClusterData) -> Result<Revision, StoreError> {
        self.inner.force_put_cluster_data(cd).await
    }
    async fn put_keeper_info(&self, info: &KeeperInfo, ttl: Duration) -> Result<(), StoreError> {
        self.inner.put_keeper_info(info, ttl).await
    }
    async fn delete_keeper_info(&self, uid: &str) -> Result<(), StoreError> {
        self.inner.delete_keeper_info(uid).await
    }
    async fn get_keepers_info(&self) -> Result<BTreeMap<String, KeeperInfo>, StoreError> {
        self.inner.get_keepers_info().await
    }
    async fn keeper_info_ages(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Duration>, StoreError> {
        self.inner.keeper_info_ages().await
    }
    async fn proxy_info_ages(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Duration>, StoreError> {
        self.inner.proxy_info_ages().await
    }
    async fn put_sentinel_info(
        &self,
        info: &SentinelInfo,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.inner.put_sentinel_info(info, ttl).await
    }
    async fn get_sentinels_info(&self) -> Result<Vec<SentinelInfo>, StoreError> {
        self.inner.get_sentinels_info().await
    }
    async fn put_proxy_info(&self, info: &ProxyInfo, ttl: Duration) -> Result<(), StoreError> {
        self.inner.put_proxy_info(info, ttl).await
    }
    async fn get_proxies_info(&self) -> Result<BTreeMap<String, ProxyInfo>, StoreError> {
        self.inner.get_proxies_info().await
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes()
    }
}

/// In-memory [`Election`], sharing its [`MemKv`] with the store it was made from. Dropping it
/// without [`Election::resign`] behaves like a crashed candidate (its lease runs out).
pub struct MemElection {
    inner: LeaseElection<MemBackend>,
}

crate::election::delegate_to_lease_election!(MemElection);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Election;
    use crate::testing::suite::sample_cluster_data;

    fn keeper(uid: &str) -> KeeperInfo {
        KeeperInfo {
            uid: uid.into(),
            ..KeeperInfo::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn infos_expire_on_tokio_time() {
        let s = MemStore::new("c");
        let mut rx = s.changes();
        s.put_keeper_info(&keeper("k"), Duration::from_secs(20))
            .await
            .expect("put");
        rx.borrow_and_update();
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(s.get_keepers_info().await.expect("get").contains_key("k"));
        assert!(!rx.has_changed().expect("alive"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.get_keepers_info().await.expect("get").is_empty());
        // The reaper woke the receiver for the expiry.
        assert!(rx.has_changed().expect("alive"));
        assert!(s.kv().keys().is_empty(), "keys left: {:?}", s.kv().keys());
    }

    #[tokio::test(start_paused = true)]
    async fn republishing_moves_the_key_to_a_new_lease_and_frees_the_old() {
        let s = MemStore::new("c");
        for _ in 0..10 {
            s.put_keeper_info(&keeper("k"), Duration::from_secs(20))
                .await
                .expect("put");
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        assert!(s.get_keepers_info().await.expect("get").contains_key("k"));
        let leases = s.kv().lock().leases.len();
        assert_eq!(leases, 1, "old leases not revoked");
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_fails_every_operation() {
        let s = MemStore::new("c");
        s.force_put_cluster_data(&sample_cluster_data("x"))
            .await
            .expect("put");
        s.kv().set_unavailable(true);
        let e = s.get_cluster_data().await.expect_err("unavailable");
        assert!(e.is_retryable());
        s.kv().set_unavailable(false);
        assert!(s.get_cluster_data().await.expect("read").data.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn successor_leads_only_after_the_dropped_leaders_lease_ran_out() {
        let kv = MemKv::new();
        let a = kv
            .store("stolon/cluster", "c")
            .election_with_ttl(Duration::from_secs(20));
        let b = kv
            .store("stolon/cluster", "c")
            .election_with_ttl(Duration::from_secs(20));
        let ra = a.campaign("a").await.expect("campaign a");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(*ra.borrow());
        let rb = b.campaign("b").await.expect("campaign b");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(*ra.borrow() && !*rb.borrow());
        let dropped_at = Instant::now();
        drop(a);
        for _ in 0..600 {
            if *rb.borrow() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(*rb.borrow(), "b never took over");
        let waited = dropped_at.elapsed();
        assert!(
            waited >= Duration::from_secs(20) - Duration::from_secs(7),
            "b took over after {waited:?}, before a's lease could have run out"
        );
        assert_eq!(b.leader().await.expect("leader").as_deref(), Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn leader_steps_down_when_the_store_is_unreachable() {
        let s = MemStore::new("c");
        let e = s.election_with_ttl(Duration::from_secs(20));
        let rx = e.campaign("a").await.expect("campaign");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(*rx.borrow());
        s.kv().set_unavailable(true);
        let cut_at = Instant::now();
        for _ in 0..300 {
            if !*rx.borrow() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!*rx.borrow(), "still leading without the store");
        // It stepped down before its lease (20 s after the last refresh) could run out.
        assert!(cut_at.elapsed() < Duration::from_secs(20));
        s.kv().set_unavailable(false);
        for _ in 0..300 {
            if *rx.borrow() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(*rx.borrow(), "did not lead again once the store was back");
    }
}
