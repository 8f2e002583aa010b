//! The proxy handshake is event-driven: once clusterdata waits for the proxies (master target
//! cleared, generation bumped) and the only proxy publishes that generation, the leader must name
//! the master in `proxy.spec` on that store change, not on its next `sleepInterval` tick.
//!
//! sleepInterval is 20 s and the reaction must come within 5 s, so a tick-late path fails
//! clearly. Once over the in-memory store under paused tokio time (virtual time, deterministic),
//! once over a real etcd with the sentinel's `run` in process, and once with the publish landing
//! while the leader is in the middle of a check (after it read the proxy infos).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stolon_core::GoDuration;
use stolon_core::model::{ClusterData, KeeperInfo, ProxyInfo, SentinelInfo};
use stolon_core::sentinel::testing::{ClusterFixture, db_uid};
use stolon_core::timestamp::Timestamp;
use stolon_sentinel::Config;
use stolon_store::testing::etcd::EtcdServer;
use stolon_store::{ClusterDataRead, Election, MemStore, Revision, Store, StoreConfig, StoreError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The generation clusterdata waits for the proxies to reach.
const PENDING_GENERATION: i64 = 5;
/// The cluster's sleepInterval (resync tick).
const SLEEP: Duration = Duration::from_secs(20);
/// TTL of the infos the test publishes: longer than the test.
const INFO_TTL: Duration = Duration::from_secs(600);
/// Well under [`SLEEP`]: a reaction later than this rode on the resync tick.
const PROMPT: Duration = Duration::from_secs(5);

fn config(store: StoreConfig) -> Config {
    Config {
        uid: "sentinel1".into(),
        store,
        initial_spec: None,
        metrics_addr: None,
    }
}

/// Config for the in-memory store: only the cluster name (a metrics label) is read from it.
fn mem_config() -> Config {
    config(StoreConfig::in_memory("mem"))
}

/// A normal-phase cluster whose master `db_k1` is healthy and converged, with the handshake
/// pending: `proxy.spec.masterDbUid` empty at [`PENDING_GENERATION`]. Long fail and convergence
/// timeouts so nothing but the handshake can change within the test.
fn pending_handshake() -> (ClusterData, KeeperInfo) {
    let f = ClusterFixture::new()
        .spec(|s| {
            s.sleep_interval = Some(GoDuration::from_secs(SLEEP.as_secs() as i64));
            s.fail_interval = Some(GoDuration::from_secs(600));
            s.convergence_timeout = Some(GoDuration::from_secs(600));
        })
        .master("k1");
    let mut cd = f.cd.clone();
    let proxy = cd.proxy.as_mut().expect("fixture has a proxy object");
    proxy.spec.master_db_uid.clear();
    proxy.spec.enabled_proxies.clear();
    proxy.generation = PENDING_GENERATION;
    let info = f.keepers_info.get("k1").expect("k1 info").clone();
    (cd, info)
}

fn proxy_info(info_uid: &str, generation: i64) -> ProxyInfo {
    ProxyInfo {
        info_uid: info_uid.into(),
        uid: "proxy1".into(),
        generation,
        proxy_timeout: 0,
        fences_from_check_start: false,
    }
}

async fn cluster_data(store: &Arc<dyn Store>) -> Option<ClusterData> {
    store.get_cluster_data().await.ok().and_then(|r| r.data)
}

/// Polls clusterdata every 50 ms until `f` holds or `limit` passes.
async fn wait_cd(
    store: &Arc<dyn Store>,
    limit: Duration,
    what: &str,
    f: impl Fn(&ClusterData) -> bool,
) -> ClusterData {
    let start = Instant::now();
    loop {
        if let Some(cd) = cluster_data(store).await.filter(|c| f(c)) {
            return cd;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}: {:#?}",
            cluster_data(store).await.map(|c| c.proxy)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seeds the pending handshake with the proxy one generation behind; returns the seeded
/// clusterdata's change time and the keeper's info.
async fn seed(store: &Arc<dyn Store>) -> (Timestamp, KeeperInfo) {
    let (cd, keeper) = pending_handshake();
    store
        .force_put_cluster_data(&cd)
        .await
        .expect("seed clusterdata");
    store
        .put_keeper_info(&keeper, INFO_TTL)
        .await
        .expect("seed keeper info");
    store
        .put_proxy_info(&proxy_info("old", PENDING_GENERATION - 1), INFO_TTL)
        .await
        .expect("seed proxy info");
    (cd.change_time, keeper)
}

/// Waits for a decision of the leader past its first one: the keeper republishes (a new
/// infoUID, waking the sentinel) every 500 ms until the leader writes clusterdata (a fresh info
/// refreshes the keeper's lastHealthyTime). Nothing here waits for the resync tick. Then checks
/// the leader still waits for the proxy.
async fn wait_until_waiting(store: &Arc<dyn Store>, seeded: Timestamp, mut keeper: KeeperInfo) {
    let start = Instant::now();
    for n in 0.. {
        if cluster_data(store)
            .await
            .is_some_and(|c| c.change_time != seeded)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for the leader's first write"
        );
        keeper.info_uid = format!("k1-{n}");
        store
            .put_keeper_info(&keeper, INFO_TTL)
            .await
            .expect("republish keeper info");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let it settle: its own write wakes it once more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cluster_data(store).await.expect("clusterdata");
    let proxy = before.proxy.as_ref().expect("proxy object");
    assert!(
        proxy.spec.master_db_uid.is_empty() && proxy.generation == PENDING_GENERATION,
        "the sentinel must wait for the proxy before naming the master: {proxy:#?}"
    );
}

/// Waits for the master in `proxy.spec` and checks the completed handshake.
async fn wait_named(store: &Arc<dyn Store>) {
    let after = wait_cd(
        store,
        2 * SLEEP + Duration::from_secs(5),
        "the master in proxy.spec",
        |c| {
            c.proxy
                .as_ref()
                .is_some_and(|p| !p.spec.master_db_uid.is_empty())
        },
    )
    .await;
    let proxy = after.proxy.as_ref().expect("proxy object");
    assert_eq!(proxy.spec.master_db_uid, db_uid("k1"));
    assert_eq!(proxy.spec.enabled_proxies, vec!["proxy1".to_string()]);
    assert_eq!(proxy.generation, PENDING_GENERATION + 1);
}

/// The scenario on `store`: seed, start the sentinel, wait until it waits for the proxy, then
/// publish the pending generation and return how long the master took to be named.
async fn handshake_delay(
    store: Arc<dyn Store>,
    election: Arc<dyn Election>,
    cfg: Config,
) -> Duration {
    let (seeded, keeper) = seed(&store).await;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(stolon_sentinel::run(
        cfg,
        store.clone(),
        election,
        cancel.clone(),
    ));
    wait_until_waiting(&store, seeded, keeper).await;

    let published = Instant::now();
    store
        .put_proxy_info(&proxy_info("new", PENDING_GENERATION), INFO_TTL)
        .await
        .expect("publish proxy info");
    wait_named(&store).await;
    let delay = published.elapsed();

    cancel.cancel();
    task.await.expect("join").expect("run");
    delay
}

/// A store that, once armed, publishes a proxy info right after serving a proxies read: the
/// reader decided on the older list, and the change lands while its decision is under way.
struct PublishDuringCheck {
    inner: Arc<dyn Store>,
    armed: Mutex<Option<ProxyInfo>>,
    fired_at: Mutex<Option<Instant>>,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// `Store` is an `async_trait`; written out by hand here (this crate does not depend on the macro).
impl Store for PublishDuringCheck {
    fn get_cluster_data<'a, 'b>(&'a self) -> BoxFut<'b, Result<ClusterDataRead, StoreError>>
    where
        'a: 'b,
        Self: 'b,
    {
        self.inner.get_cluster_data()
    }
    fn put_cluster_data<'a, 'c, 'd, 'b>(
        &'a self,
        cd: &'c ClusterData,
        expected: Option<&'d Revision>,
    ) -> BoxFut<'b, Result<Revision, StoreError>>
    where
        'a: 'b,
        'c: 'b,
        'd: 'b,
        Self: 'b,
    {
        self.inner.put_cluster_data(cd, expected)
    }
    fn force_put_cluster_data<'a, 'c, 'b>(
        &'a self,
        cd: &'c ClusterData,
    ) -> BoxFut<'b, Result<Revision, StoreError>>
    where
        'a: 'b,
        'c: 'b,
        Self: 'b,
    {
        self.inner.force_put_cluster_data(cd)
    }
    fn put_keeper_info<'a, 'c, 'b>(
        &'a self,
        info: &'c KeeperInfo,
        ttl: Duration,
    ) -> BoxFut<'b, Result<(), StoreError>>
    where
        'a: 'b,
        'c: 'b,
        Self: 'b,
    {
        self.inner.put_keeper_info(info, ttl)
    }
    fn get_keepers_info<'a, 'b>(
        &'a self,
    ) -> BoxFut<'b, Result<BTreeMap<String, KeeperInfo>, StoreError>>
    where
        'a: 'b,
        Self: 'b,
    {
        self.inner.get_keepers_info()
    }
    fn delete_keeper_info<'a, 'c, 'b>(&'a self, uid: &'c str) -> BoxFut<'b, Result<(), StoreError>>
    where
        'a: 'b,
        'c: 'b,
        Self: 'b,
    {
        self.inner.delete_keeper_info(uid)
    }
    fn put_sentinel_info<'a, 'c, 'b>(
        &'a self,
        info: &'c SentinelInfo,
        ttl: Duration,
    ) -> BoxFut<'b, Result<(), StoreError>>
    where
        'a: 'b,
        'c: 'b,
        Self: 'b,
    {
        self.inner.put_sentinel_info(info, ttl)
    }
    fn get_sentinels_info<'a, 'b>(&'a self) -> BoxFut<'b, Result<Vec<SentinelInfo>, StoreError>>
    where
        'a: 'b,
        Self: 'b,
    {
        self.inner.get_sentinels_info()
    }
    fn put_proxy_info<'a, 'c, 'b>(
        &'a self,
        info: &'c ProxyInfo,
        ttl: Duration,
    ) -> BoxFut<'b, Result<(), StoreError>>
    where
        'a: 'b,
        'c: 'b,
        Self: 'b,
    {
        self.inner.put_proxy_info(info, ttl)
    }
    fn get_proxies_info<'a, 'b>(
        &'a self,
    ) -> BoxFut<'b, Result<BTreeMap<String, ProxyInfo>, StoreError>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            let read = self.inner.get_proxies_info().await;
            let armed = self.armed.lock().expect("hook state").take();
            if let Some(info) = armed {
                self.inner
                    .put_proxy_info(&info, INFO_TTL)
                    .await
                    .expect("publish proxy info during the check");
                *self.fired_at.lock().expect("hook state") = Some(Instant::now());
            }
            read
        })
    }
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes()
    }
}

#[tokio::test(start_paused = true)]
async fn proxy_publish_completes_the_handshake_at_once_in_memory() {
    let mem = MemStore::new("mem");
    let election: Arc<dyn Election> = Arc::new(mem.election());
    let store: Arc<dyn Store> = Arc::new(mem);
    let cfg = mem_config();
    let delay = handshake_delay(store, election, cfg).await;
    assert!(
        delay < PROMPT,
        "master named {delay:?} after the proxy's publish (sleepInterval {SLEEP:?}): the \
         publish did not trigger a decision"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_publish_completes_the_handshake_at_once_over_etcd() {
    let etcd = EtcdServer::start_async().await.expect("start etcd");
    let scfg = etcd.store_config("handshake");
    let (store, election) = stolon_store::connect(&scfg).await.expect("connect");
    let delay = handshake_delay(store, election, config(scfg)).await;
    eprintln!("master named {delay:?} after the proxy's publish");
    assert!(
        delay < PROMPT,
        "master named {delay:?} after the proxy's publish (sleepInterval {SLEEP:?}): the \
         publish did not trigger a decision"
    );
}

/// The race of the loop: the proxy publishes after the leader read the proxy infos but before
/// it went back to waiting. The change seen during the check must wake it again at once.
#[tokio::test(start_paused = true)]
async fn proxy_publish_during_a_check_is_not_lost() {
    let mem = MemStore::new("mem");
    let election: Arc<dyn Election> = Arc::new(mem.election());
    let inner: Arc<dyn Store> = Arc::new(mem);
    let hooked = Arc::new(PublishDuringCheck {
        inner: inner.clone(),
        armed: Mutex::new(None),
        fired_at: Mutex::new(None),
    });
    let store: Arc<dyn Store> = hooked.clone();
    let (seeded, keeper) = seed(&store).await;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(stolon_sentinel::run(
        mem_config(),
        store.clone(),
        election,
        cancel.clone(),
    ));
    wait_until_waiting(&store, seeded, keeper).await;

    // Arm the hook, then wake the leader with an unrelated store change.
    *hooked.armed.lock().expect("hook state") = Some(proxy_info("new", PENDING_GENERATION));
    inner
        .put_sentinel_info(
            &SentinelInfo {
                uid: "observer".into(),
                ..Default::default()
            },
            INFO_TTL,
        )
        .await
        .expect("wake the leader");
    wait_named(&store).await;
    let fired = hooked
        .fired_at
        .lock()
        .expect("hook state")
        .expect("the leader read the proxy infos after the hook was armed");
    let delay = fired.elapsed();
    assert!(
        delay < PROMPT,
        "master named {delay:?} after a publish made during a check (sleepInterval \
         {SLEEP:?}): the change was lost until the resync tick"
    );
    cancel.cancel();
    task.await.expect("join").expect("run");
}
