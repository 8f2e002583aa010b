//! The backend conformance suite: the behaviour every [`Store`]/[`Election`] backend must show.
//! Run it with [`run_all`] against a [`Harness`] that makes fresh stores on one backend.
//!
//! The same case functions run on every backend. Where backends differ in how components live,
//! the harness supplies the difference: [`Harness::open_as`] gives a handle publishing as one
//! member (etcd, in-memory: just another client; Kubernetes: a client bound to that member's own
//! pod), and [`Harness::make_member_disappear`] makes a member go away the way it does on that
//! backend (etcd, in-memory: the member stops and its infos' TTL runs out; Kubernetes: its pod
//! stops running or is deleted).
//!
//! Every wait is a bounded poll (count and time) on tokio time, so it works both against a real
//! etcd (real time) and against `MemStore` under `#[tokio::test(start_paused = true)]` (the
//! paused clock advances by itself while everything waits).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use stolon_core::Timestamp;
use stolon_core::model::{Cluster, ClusterData, KeeperInfo, ProxyInfo, SentinelInfo};
use tokio::sync::watch;

use crate::mem::MemKv;
use crate::{Election, Revision, Store, StoreError};

/// Boxed future, for harness methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the suite needs from a backend.
pub trait Harness: Send + Sync {
    /// A store and election for `cluster` (a fresh name per test, so tests do not interfere),
    /// with election lease TTL `election_ttl`. Several calls with the same cluster name must
    /// give independent clients of the same data (two sentinels).
    fn open(
        &self,
        cluster: &str,
        election_ttl: Duration,
    ) -> BoxFuture<'_, (Arc<dyn Store>, Arc<dyn Election>)>;

    /// Writes raw bytes at `<prefix>/<cluster>/clusterdata` (to plant malformed data).
    fn put_raw_cluster_data<'a>(&'a self, cluster: &'a str, raw: &'a [u8]) -> BoxFuture<'a, ()>;

    /// A store handle for `cluster` that publishes as the member `name` of kind `component`:
    /// the cases publish that member's infos (with `uid` = `name`) only through it. On backends
    /// where any client may publish any info (etcd, in-memory) this is just another client; on
    /// Kubernetes it is a client bound to the member's own running pod, labelled as that
    /// component of that cluster. Opening the same member twice gives two handles of one member.
    fn open_as<'a>(
        &'a self,
        cluster: &'a str,
        component: Component,
        name: &'a str,
    ) -> BoxFuture<'a, Member>;

    /// Makes `member` go away as a stopped component does on this backend, consuming its handle
    /// (it publishes no more). With TTLs (etcd, in-memory) nothing else may happen: its infos
    /// must vanish when the TTL they were published with runs out, not sooner, so the suite
    /// tests the expiry. On Kubernetes (no TTLs) its pod stops `Running` or is deleted.
    fn make_member_disappear(&self, member: Member) -> BoxFuture<'_, ()>;

    /// TTL used for infos and elections in the timing tests (etcd rounds to whole seconds and
    /// enforces a minimum of about 2 s).
    fn short_ttl(&self) -> Duration {
        Duration::from_secs(2)
    }
}

/// The kind of a component publishing infos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// stolon-keeper ([`KeeperInfo`]).
    Keeper,
    /// stolon-sentinel ([`SentinelInfo`]).
    Sentinel,
    /// stolon-proxy ([`ProxyInfo`]).
    Proxy,
}

/// A store handle publishing as one member of a cluster (made by [`Harness::open_as`]).
pub struct Member {
    /// The cluster name.
    pub cluster: String,
    /// What kind of component the member is.
    pub component: Component,
    /// The member's name: the `uid` of the infos it publishes.
    pub name: String,
    /// The handle it publishes through.
    pub store: Arc<dyn Store>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("cluster", &self.cluster)
            .field("component", &self.component)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Result of one suite case.
pub type CaseResult = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

fn err(e: StoreError) -> String {
    e.to_string()
}

/// A minimal valid-looking clusterdata with a marker in the cluster UID.
pub fn sample_cluster_data(uid: &str) -> ClusterData {
    let cluster = Cluster {
        uid: uid.to_string(),
        generation: 1,
        ..Cluster::default()
    };
    ClusterData::new(cluster, Timestamp::zero())
}

fn uid_of(cd: &ClusterData) -> &str {
    cd.cluster.as_ref().map(|c| c.uid.as_str()).unwrap_or("")
}

/// Polls `check` every `step` until it returns `Some`, at most `limit` in total.
async fn wait_for<T, F, Fut>(limit: Duration, step: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let max_polls = (limit.as_millis() / step.as_millis().max(1)) as u64 + 1;
    for _ in 0..max_polls {
        if let Some(v) = check().await {
            return Some(v);
        }
        tokio::time::sleep(step).await;
    }
    None
}

/// Waits until `rx` changes (bounded).
async fn changed_within(rx: &mut watch::Receiver<u64>, limit: Duration) -> bool {
    matches!(tokio::time::timeout(limit, rx.changed()).await, Ok(Ok(())))
}

/// CAS: create-if-absent, conflict on a stale revision, conflict on create when present,
/// success on the current revision.
pub async fn cas(h: &dyn Harness, cluster: &str) -> CaseResult {
    let (s, _e) = h.open(cluster, Duration::from_secs(20)).await;
    let read = s.get_cluster_data().await.map_err(err)?;
    ensure!(
        read.data.is_none() && read.revision.is_none(),
        "fresh store not empty: {read:?}"
    );

    let r1 = s
        .put_cluster_data(&sample_cluster_data("one"), None)
        .await
        .map_err(err)?;
    match s
        .put_cluster_data(&sample_cluster_data("again"), None)
        .await
    {
        Err(StoreError::Conflict) => {}
        other => return Err(format!("create-if-absent on a present key: {other:?}")),
    }
    let read = s.get_cluster_data().await.map_err(err)?;
    ensure!(
        read.revision.as_ref() == Some(&r1),
        "revision after create: {read:?} vs {r1:?}"
    );
    ensure!(
        read.data.as_ref().map(uid_of) == Some("one"),
        "data after create: {read:?}"
    );

    let r2 = s
        .put_cluster_data(&sample_cluster_data("two"), Some(&r1))
        .await
        .map_err(err)?;
    ensure!(r2 != r1, "revision did not change on write");
    match s
        .put_cluster_data(&sample_cluster_data("stale"), Some(&r1))
        .await
    {
        Err(StoreError::Conflict) => {}
        other => return Err(format!("CAS on a stale revision: {other:?}")),
    }
    match s
        .put_cluster_data(
            &sample_cluster_data("foreign"),
            Some(&Revision("not-a-rev".into())),
        )
        .await
    {
        Err(StoreError::Conflict) => {}
        other => return Err(format!("CAS on a foreign revision: {other:?}")),
    }
    let read = s.get_cluster_data().await.map_err(err)?;
    ensure!(
        read.data.as_ref().map(uid_of) == Some("two"),
        "stale write won: {read:?}"
    );
    ensure!(
        read.revision.as_ref() == Some(&r2),
        "revision: {read:?} vs {r2:?}"
    );

    // Two writers racing on the same revision: exactly one wins.
    let (s2, _e2) = h.open(cluster, Duration::from_secs(20)).await;
    let a = s
        .put_cluster_data(&sample_cluster_data("a"), Some(&r2))
        .await;
    let b = s2
        .put_cluster_data(&sample_cluster_data("b"), Some(&r2))
        .await;
    ensure!(
        a.is_ok() != b.is_ok(),
        "two CAS writes on one revision: {a:?} / {b:?}"
    );
    Ok(())
}

/// Force put: writes whatever is there, creates when absent.
pub async fn force_put(h: &dyn Harness, cluster: &str) -> CaseResult {
    let (s, _e) = h.open(cluster, Duration::from_secs(20)).await;
    let r1 = s
        .force_put_cluster_data(&sample_cluster_data("f1"))
        .await
        .map_err(err)?;
    let r2 = s
        .force_put_cluster_data(&sample_cluster_data("f2"))
        .await
        .map_err(err)?;
    ensure!(r1 != r2, "force put did not bump the revision");
    let read = s.get_cluster_data().await.map_err(err)?;
    ensure!(
        read.data.as_ref().map(uid_of) == Some("f2"),
        "force put lost: {read:?}"
    );
    ensure!(
        read.revision == Some(r2),
        "revision after force put: {read:?}"
    );
    Ok(())
}

/// JSON `null` clusterdata reads as "no data" with a revision; garbage is a Format error.
pub async fn null_and_malformed(h: &dyn Harness, cluster: &str) -> CaseResult {
    let (s, _e) = h.open(cluster, Duration::from_secs(20)).await;
    h.put_raw_cluster_data(cluster, b"null").await;
    let read = s.get_cluster_data().await.map_err(err)?;
    ensure!(
        read.data.is_none(),
        "null clusterdata decoded as data: {read:?}"
    );
    let rev = read
        .revision
        .ok_or_else(|| "null clusterdata has no revision".to_string())?;
    // The revision of a null document works for CAS.
    s.put_cluster_data(&sample_cluster_data("after-null"), Some(&rev))
        .await
        .map_err(err)?;

    h.put_raw_cluster_data(cluster, b"{\"formatVersion\": \"one\"")
        .await;
    match s.get_cluster_data().await {
        Err(StoreError::Format { .. }) => {}
        other => return Err(format!("malformed clusterdata: {other:?}")),
    }
    Ok(())
}

fn keeper(uid: &str) -> KeeperInfo {
    KeeperInfo {
        uid: uid.to_string(),
        info_uid: format!("info-{uid}"),
        ..KeeperInfo::default()
    }
}

fn proxy(uid: &str, generation: i64) -> ProxyInfo {
    ProxyInfo {
        uid: uid.to_string(),
        info_uid: format!("info-{uid}"),
        generation,
        proxy_timeout: 15_000_000_000,
        fences_from_check_start: false,
    }
}

/// Opens member `name` and publishes its info (`uid` = `name`; proxies with generation 1).
async fn publish(
    h: &dyn Harness,
    cluster: &str,
    component: Component,
    name: &str,
    ttl: Duration,
) -> Result<Member, String> {
    let m = h.open_as(cluster, component, name).await;
    match component {
        Component::Keeper => m.store.put_keeper_info(&keeper(name), ttl).await,
        Component::Sentinel => {
            m.store
                .put_sentinel_info(
                    &SentinelInfo {
                        uid: name.into(),
                        ..Default::default()
                    },
                    ttl,
                )
                .await
        }
        Component::Proxy => m.store.put_proxy_info(&proxy(name, 1), ttl).await,
    }
    .map_err(|e| format!("publishing {component:?} {name}: {e}"))?;
    Ok(m)
}

/// Infos of several members are listed per kind and per cluster by any client; republishing
/// replaces.
pub async fn listing(h: &dyn Harness, cluster: &str) -> CaseResult {
    // An observer that publishes nothing itself (a sentinel reading, stolonctl).
    let (s, _e) = h.open(cluster, Duration::from_secs(20)).await;
    let other_name = format!("{cluster}-other");
    let (other, _oe) = h.open(&other_name, Duration::from_secs(20)).await;
    let ttl = Duration::from_secs(60);
    let mut members = Vec::new();
    for k in ["k1", "k2"] {
        members.push(publish(h, cluster, Component::Keeper, k, ttl).await?);
    }
    for se in ["s2", "s1"] {
        members.push(publish(h, cluster, Component::Sentinel, se, ttl).await?);
    }
    let p1 = h.open_as(cluster, Component::Proxy, "p1").await;
    p1.store
        .put_proxy_info(&proxy("p1", 3), ttl)
        .await
        .map_err(err)?;
    // Same kinds in another cluster, whose name extends ours.
    members.push(publish(h, &other_name, Component::Keeper, "k9", ttl).await?);
    members.push(publish(h, &other_name, Component::Sentinel, "s9", ttl).await?);
    members.push(publish(h, &other_name, Component::Proxy, "p9", ttl).await?);

    let keepers = s.get_keepers_info().await.map_err(err)?;
    ensure!(
        keepers.keys().map(String::as_str).collect::<Vec<_>>() == ["k1", "k2"],
        "keepers: {:?}",
        keepers.keys()
    );
    ensure!(
        keepers["k1"] == keeper("k1"),
        "keeper info round trip: {:?}",
        keepers["k1"]
    );
    let sentinels = s.get_sentinels_info().await.map_err(err)?;
    ensure!(
        sentinels.iter().map(|s| s.uid.as_str()).collect::<Vec<_>>() == ["s1", "s2"],
        "sentinels: {sentinels:?}"
    );
    let proxies = s.get_proxies_info().await.map_err(err)?;
    ensure!(
        proxies.len() == 1 && proxies["p1"] == proxy("p1", 3),
        "proxies: {proxies:?}"
    );
    // Every member sees the others too.
    let seen_by_member = members[0].store.get_sentinels_info().await.map_err(err)?;
    ensure!(
        seen_by_member == sentinels,
        "a member lists differently: {seen_by_member:?} vs {sentinels:?}"
    );
    // Republishing replaces the value.
    p1.store
        .put_proxy_info(&proxy("p1", 4), ttl)
        .await
        .map_err(err)?;
    let proxies = s.get_proxies_info().await.map_err(err)?;
    ensure!(
        proxies.len() == 1 && proxies["p1"].generation == 4,
        "republished proxy: {proxies:?}"
    );

    let okeepers = other.get_keepers_info().await.map_err(err)?;
    ensure!(
        okeepers.keys().map(String::as_str).collect::<Vec<_>>() == ["k9"],
        "other cluster keepers: {:?}",
        okeepers.keys()
    );
    let osentinels = other.get_sentinels_info().await.map_err(err)?;
    ensure!(
        osentinels
            .iter()
            .map(|s| s.uid.as_str())
            .collect::<Vec<_>>()
            == ["s9"],
        "other cluster sentinels: {osentinels:?}"
    );
    let oproxies = other.get_proxies_info().await.map_err(err)?;
    ensure!(
        oproxies.keys().map(String::as_str).collect::<Vec<_>>() == ["p9"],
        "other cluster proxies: {oproxies:?}"
    );
    // Clusterdata is per cluster too.
    s.put_cluster_data(&sample_cluster_data("mine"), None)
        .await
        .map_err(err)?;
    let oread = other.get_cluster_data().await.map_err(err)?;
    ensure!(
        oread.data.is_none(),
        "clusterdata leaked across clusters: {oread:?}"
    );
    Ok(())
}

/// Members that stop disappear from the listings (on TTL backends: when the TTL they published
/// with runs out); members that go on republishing stay past their TTL; a member published with
/// a long TTL is not taken along.
pub async fn member_disappearance(h: &dyn Harness, cluster: &str) -> CaseResult {
    let (s, _e) = h.open(cluster, Duration::from_secs(20)).await;
    let ttl = h.short_ttl();
    let short_keeper = publish(h, cluster, Component::Keeper, "short", ttl).await?;
    let _long_keeper = publish(
        h,
        cluster,
        Component::Keeper,
        "long",
        Duration::from_secs(120),
    )
    .await?;
    let short_sentinel = publish(h, cluster, Component::Sentinel, "s-short", ttl).await?;
    let short_proxy = publish(h, cluster, Component::Proxy, "p-short", ttl).await?;
    let k = s.get_keepers_info().await.map_err(err)?;
    ensure!(
        k.contains_key("short") && k.contains_key("long"),
        "infos missing: {k:?}"
    );
    let se = s.get_sentinels_info().await.map_err(err)?;
    ensure!(
        se.iter().any(|x| x.uid == "s-short"),
        "sentinel info missing: {se:?}"
    );
    let p = s.get_proxies_info().await.map_err(err)?;
    ensure!(p.contains_key("p-short"), "proxy info missing: {p:?}");

    // The short-lived members stop.
    for m in [short_keeper, short_sentinel, short_proxy] {
        h.make_member_disappear(m).await;
    }

    // A member republishing within the TTL stays listed past its first TTL.
    let kept = h.open_as(cluster, Component::Sentinel, "s-kept").await;
    let refreshed = SentinelInfo {
        uid: "s-kept".into(),
        ..Default::default()
    };
    kept.store
        .put_sentinel_info(&refreshed, ttl)
        .await
        .map_err(err)?;
    let half = ttl / 2;
    for _ in 0..4 {
        tokio::time::sleep(half).await;
        kept.store
            .put_sentinel_info(&refreshed, ttl)
            .await
            .map_err(err)?;
    }
    let sent = s.get_sentinels_info().await.map_err(err)?;
    ensure!(
        sent.iter().any(|x| x.uid == "s-kept"),
        "republished sentinel info expired: {sent:?}"
    );

    let gone = wait_for(
        ttl + Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let s = s.clone();
            async move {
                let k = s.get_keepers_info().await.ok()?;
                let se = s.get_sentinels_info().await.ok()?;
                let p = s.get_proxies_info().await.ok()?;
                (!k.contains_key("short") && !se.iter().any(|x| x.uid == "s-short") && p.is_empty())
                    .then_some(k)
            }
        },
    )
    .await;
    let k = gone.ok_or_else(|| "stopped members did not disappear".to_string())?;
    ensure!(
        k.contains_key("long"),
        "long-TTL member disappeared too: {k:?}"
    );
    Ok(())
}

/// A keeper stopping cleanly withdraws its own info: gone from the listings at once, not after
/// its TTL; withdrawing again, or from a client that never published it, changes nothing.
pub async fn keeper_withdrawal(h: &dyn Harness, cluster: &str) -> CaseResult {
    let (s, _e) = h.open(cluster, Duration::from_secs(20)).await;
    let ttl = Duration::from_secs(120);
    let leaving = publish(h, cluster, Component::Keeper, "leaving", ttl).await?;
    let _staying = publish(h, cluster, Component::Keeper, "staying", ttl).await?;
    // An observer cannot withdraw another member's info.
    s.delete_keeper_info("staying").await.map_err(err)?;
    leaving
        .store
        .delete_keeper_info("leaving")
        .await
        .map_err(err)?;
    let k = s.get_keepers_info().await.map_err(err)?;
    ensure!(
        k.keys().map(String::as_str).collect::<Vec<_>>() == ["staying"],
        "after withdrawal: {:?}",
        k.keys()
    );
    leaving
        .store
        .delete_keeper_info("leaving")
        .await
        .map_err(|e| format!("second withdrawal: {e}"))?;
    // Publishing again after a withdrawal brings it back.
    leaving
        .store
        .put_keeper_info(&keeper("leaving"), ttl)
        .await
        .map_err(err)?;
    let k = s.get_keepers_info().await.map_err(err)?;
    ensure!(
        k.len() == 2 && k["leaving"] == keeper("leaving"),
        "republished after withdrawal: {:?}",
        k.keys()
    );
    Ok(())
}

/// `changes()` wakes on a clusterdata write, an info write and a member's disappearance, and not
/// for another cluster's writes.
pub async fn change_wakeups(h: &dyn Harness, cluster: &str) -> CaseResult {
    let (s, _e) = h.open(cluster, Duration::from_secs(20)).await;
    let (writer, _we) = h.open(cluster, Duration::from_secs(20)).await;
    let member = h.open_as(cluster, Component::Keeper, "kw").await;
    let mut rx = s.changes();
    // Let the backend settle (an etcd watch bumps once when established).
    let _ = wait_for(Duration::from_secs(3), Duration::from_millis(100), || {
        let v = *rx.borrow();
        async move { (v > 0).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rx.borrow_and_update();

    writer
        .put_cluster_data(&sample_cluster_data("w"), None)
        .await
        .map_err(err)?;
    ensure!(
        changed_within(&mut rx, Duration::from_secs(10)).await,
        "no wake-up on a clusterdata write"
    );
    rx.borrow_and_update();

    member
        .store
        .put_keeper_info(&keeper("kw"), h.short_ttl())
        .await
        .map_err(err)?;
    ensure!(
        changed_within(&mut rx, Duration::from_secs(10)).await,
        "no wake-up on an info write"
    );
    // Drain the write's own events, then make the member go and wait for the wake-up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    rx.borrow_and_update();
    let k = s.get_keepers_info().await.map_err(err)?;
    ensure!(k.contains_key("kw"), "published keeper not listed: {k:?}");
    h.make_member_disappear(member).await;
    let expired = wait_for(
        h.short_ttl() + Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let changed = rx.has_changed().unwrap_or(false);
            let s = s.clone();
            async move {
                if !changed {
                    return None;
                }
                let k = s.get_keepers_info().await.ok()?;
                (!k.contains_key("kw")).then_some(())
            }
        },
    )
    .await;
    ensure!(expired.is_some(), "no wake-up on a member's disappearance");

    // Another cluster's writes and members do not wake us (its name extends ours).
    let other_name = format!("{cluster}x");
    let (other, _oe) = h.open(&other_name, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rx.borrow_and_update();
    other
        .put_cluster_data(&sample_cluster_data("other"), None)
        .await
        .map_err(err)?;
    let _other_member = publish(h, &other_name, Component::Keeper, "kx", h.short_ttl()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        !rx.has_changed().unwrap_or(true),
        "woken by another cluster's write"
    );
    Ok(())
}

/// Waits until `rx` is `true` (bounded).
async fn wait_leading(rx: &watch::Receiver<bool>, limit: Duration) -> Result<(), String> {
    let found = wait_for(limit, Duration::from_millis(50), || {
        let v = *rx.borrow();
        async move { v.then_some(()) }
    })
    .await;
    found.ok_or_else(|| format!("the only candidate did not lead within {limit:?}"))
}

/// Samples two candidates until `done` holds, failing if both ever lead at once.
async fn observe_two(
    a: &watch::Receiver<bool>,
    b: &watch::Receiver<bool>,
    limit: Duration,
    mut done: impl FnMut(bool, bool) -> bool,
) -> Result<(bool, bool), String> {
    let step = Duration::from_millis(50);
    let polls = limit.as_millis() / step.as_millis() + 1;
    for _ in 0..polls {
        let (x, y) = (*a.borrow(), *b.borrow());
        ensure!(!(x && y), "two leaders at once");
        if done(x, y) {
            return Ok((x, y));
        }
        tokio::time::sleep(step).await;
    }
    Err(format!(
        "election did not reach the expected state within {limit:?} (a={}, b={})",
        *a.borrow(),
        *b.borrow()
    ))
}

/// Two candidates: exactly one leads and `leader()` names it; when it resigns the other takes
/// over; the resigned one can campaign again and does not lead while the other holds.
pub async fn election_resign(h: &dyn Harness, cluster: &str) -> CaseResult {
    let ttl = h.short_ttl() * 2;
    let (_sa, ea) = h.open(cluster, ttl).await;
    let (_sb, eb) = h.open(cluster, ttl).await;
    ensure!(
        ea.leader().await.map_err(err)?.is_none(),
        "a leader before any campaign"
    );
    let ra = ea.campaign("cand-a").await.map_err(err)?;
    // Let a win first so the outcome is deterministic.
    wait_leading(&ra, Duration::from_secs(10)).await?;
    let rb = eb.campaign("cand-b").await.map_err(err)?;
    let limit = Duration::from_secs(15);
    observe_two(&ra, &rb, limit, |x, _| x).await?;
    // b stays a follower for a while.
    let hold = ttl + ttl / 2;
    a_keeps_leading(&ra, &rb, hold, "leadership moved without cause").await?;
    ensure!(
        ea.leader().await.map_err(err)?.as_deref() == Some("cand-a"),
        "leader() does not name the leader"
    );
    ensure!(
        eb.leader().await.map_err(err)?.as_deref() == Some("cand-a"),
        "leader() differs between observers"
    );

    ea.resign().await.map_err(err)?;
    ensure!(!*ra.borrow(), "still leading after resign");
    observe_two(&ra, &rb, limit, |_, y| y).await?;
    ensure!(
        ea.leader().await.map_err(err)?.as_deref() == Some("cand-b"),
        "leader() after resign"
    );

    // a campaigns again: b keeps leading.
    let ra = ea.campaign("cand-a").await.map_err(err)?;
    for _ in 0..20 {
        ensure!(!*ra.borrow() && *rb.borrow(), "re-campaign took leadership");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eb.resign().await.map_err(err)?;
    observe_two(&ra, &rb, limit, |x, _| x).await?;
    ea.resign().await.map_err(err)?;
    let none = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let ea = ea.clone();
        async move { ea.leader().await.ok().filter(Option::is_none) }
    })
    .await;
    ensure!(none.is_some(), "a leader left after everyone resigned");
    Ok(())
}

/// When the leader's process dies (its election is dropped without resign, so its lease is
/// no longer refreshed), the other candidate takes over once the lease ends.
pub async fn election_lease_end(h: &dyn Harness, cluster: &str) -> CaseResult {
    // Twice the short TTL: a loaded machine must not make the live leader miss its refreshes.
    let ttl = h.short_ttl() * 2;
    let (sa, ea) = h.open(cluster, ttl).await;
    let (_sb, eb) = h.open(cluster, ttl).await;
    let ra = ea.campaign("dying").await.map_err(err)?;
    wait_leading(&ra, Duration::from_secs(10)).await?;
    let rb = eb.campaign("survivor").await.map_err(err)?;
    observe_two(&ra, &rb, Duration::from_secs(15), |x, _| x).await?;
    // The leader keeps its lease alive well past one TTL.
    tokio::time::sleep(ttl * 2).await;
    ensure!(
        *ra.borrow() && !*rb.borrow(),
        "leader lost its lease while alive"
    );

    drop(ea);
    drop(sa);
    observe_two(&ra, &rb, ttl + Duration::from_secs(20), |_, y| y).await?;
    ensure!(
        eb.leader().await.map_err(err)?.as_deref() == Some("survivor"),
        "leader() after the leader's lease ended"
    );
    eb.resign().await.map_err(err)?;
    Ok(())
}

/// Checks every 100 ms, for `span`, that `a` leads and `b` does not.
async fn a_keeps_leading(
    a: &watch::Receiver<bool>,
    b: &watch::Receiver<bool>,
    span: Duration,
    what: &str,
) -> CaseResult {
    for _ in 0..span.as_millis() / 100 {
        ensure!(*a.borrow() && !*b.borrow(), "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Publishes `uid`'s sentinel info announcing `hold` every 300 ms and reports each publish to
/// `election` as a heartbeat, until aborted.
fn heartbeat_task(
    store: Arc<dyn Store>,
    election: Arc<dyn Election>,
    uid: &str,
    hold: Duration,
) -> tokio::task::JoinHandle<()> {
    let info = SentinelInfo {
        uid: uid.into(),
        leader_hold_ms: Some(hold.as_millis() as u64),
    };
    tokio::spawn(async move {
        loop {
            let started = tokio::time::Instant::now();
            if store
                .put_sentinel_info(&info, Duration::from_secs(30))
                .await
                .is_ok()
            {
                election.heartbeat(started, tokio::time::Instant::now(), hold);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// Leadership held by heartbeats: a leader leads while its info is published, and when its
/// publishes stop (its lease still refreshed, as for a leader cut off from the store but not
/// from its lease) the other candidate deposes it after the announced hold, with no moment of
/// two leaders. A backend whose election keeps its own lock (Kubernetes) says it has no
/// heartbeats, and there the same leader stays leader as long as its lock is renewed, whatever
/// its infos announce.
pub async fn election_heartbeats(h: &dyn Harness, cluster: &str) -> CaseResult {
    let ttl = h.short_ttl() * 2;
    let hold = ttl * 3 / 4;
    let (sa, ea) = h.open(cluster, ttl).await;
    let (sb, eb) = h.open(cluster, ttl).await;
    let (a_on, b_on) = (ea.use_heartbeats(), eb.use_heartbeats());
    ensure!(
        a_on == b_on,
        "two clients of one backend differ on heartbeats"
    );
    let beat_a = heartbeat_task(sa, ea.clone(), "hb-a", hold);
    let beat_b = heartbeat_task(sb, eb.clone(), "hb-b", hold);
    let ra = ea.campaign("hb-a").await.map_err(err)?;
    wait_leading(&ra, Duration::from_secs(10)).await?;
    let rb = eb.campaign("hb-b").await.map_err(err)?;
    observe_two(&ra, &rb, Duration::from_secs(15), |x, _| x).await?;
    // Heartbeats keep it leading well past its hold.
    a_keeps_leading(
        &ra,
        &rb,
        hold * 3,
        "leadership moved while the leader's heartbeats went on",
    )
    .await?;
    // Its publishes stop; its election goes on refreshing the lease, so only a deposal ends it.
    beat_a.abort();
    if !a_on {
        // No heartbeats: nothing deposes a leader whose lock is renewed.
        let kept = a_keeps_leading(
            &ra,
            &rb,
            hold * 3,
            "leadership moved after the leader's publishes stopped, on a backend without heartbeats",
        )
        .await;
        beat_b.abort();
        kept?;
        ea.resign().await.map_err(err)?;
        eb.resign().await.map_err(err)?;
        return Ok(());
    }
    let stopped = tokio::time::Instant::now();
    let result = observe_two(&ra, &rb, hold * 4 + Duration::from_secs(10), |x, y| !x && y).await;
    let took = stopped.elapsed();
    beat_b.abort();
    result?;
    ensure!(
        took >= hold,
        "deposed {took:?} after its last publish, sooner than its hold {hold:?}"
    );
    ensure!(
        eb.leader().await.map_err(err)?.as_deref() == Some("hb-b"),
        "leader() after the deposal"
    );
    ea.resign().await.map_err(err)?;
    eb.resign().await.map_err(err)?;
    Ok(())
}

/// Names of the cases, in the order [`run_all`] runs them.
pub const CASES: [&str; 10] = [
    "cas",
    "force_put",
    "null_and_malformed",
    "listing",
    "member_disappearance",
    "keeper_withdrawal",
    "change_wakeups",
    "election_resign",
    "election_lease_end",
    "election_heartbeats",
];

/// Runs one case by name, on cluster `<prefix>-<case>`.
pub async fn run_case(h: &dyn Harness, case: &str, cluster_prefix: &str) -> CaseResult {
    let cluster = format!("{cluster_prefix}-{case}");
    match case {
        "cas" => cas(h, &cluster).await,
        "force_put" => force_put(h, &cluster).await,
        "null_and_malformed" => null_and_malformed(h, &cluster).await,
        "listing" => listing(h, &cluster).await,
        "member_disappearance" => member_disappearance(h, &cluster).await,
        "keeper_withdrawal" => keeper_withdrawal(h, &cluster).await,
        "change_wakeups" => change_wakeups(h, &cluster).await,
        "election_resign" => election_resign(h, &cluster).await,
        "election_lease_end" => election_lease_end(h, &cluster).await,
        "election_heartbeats" => election_heartbeats(h, &cluster).await,
        other => Err(format!("unknown case {other}")),
    }
}

/// Runs every case (sequentially) and returns all failures as `case: message` lines.
pub async fn run_all(h: &dyn Harness, cluster_prefix: &str) -> Result<(), String> {
    let mut failures = Vec::new();
    for case in CASES {
        if let Err(e) = run_case(h, case, cluster_prefix).await {
            failures.push(format!("{case}: {e}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// The [`Harness`] for the in-memory backend: every store opened shares one [`MemKv`].
#[derive(Debug, Clone, Default)]
pub struct MemHarness {
    kv: MemKv,
}

impl MemHarness {
    /// A harness on a new, empty [`MemKv`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared KV.
    pub fn kv(&self) -> &MemKv {
        &self.kv
    }
}

const MEM_PREFIX: &str = "stolon/cluster";

impl Harness for MemHarness {
    fn open(
        &self,
        cluster: &str,
        election_ttl: Duration,
    ) -> BoxFuture<'_, (Arc<dyn Store>, Arc<dyn Election>)> {
        let store = self.kv.store(MEM_PREFIX, cluster);
        let election = store.election_with_ttl(election_ttl);
        Box::pin(async move {
            let store: Arc<dyn Store> = Arc::new(store);
            let election: Arc<dyn Election> = Arc::new(election);
            (store, election)
        })
    }

    /// Any client may publish any info here: another store on the shared KV.
    fn open_as<'a>(
        &'a self,
        cluster: &'a str,
        component: Component,
        name: &'a str,
    ) -> BoxFuture<'a, Member> {
        let store: Arc<dyn Store> = Arc::new(self.kv.store(MEM_PREFIX, cluster));
        let member = Member {
            cluster: cluster.to_string(),
            component,
            name: name.to_string(),
            store,
        };
        Box::pin(async move { member })
    }

    /// The member stops: its handle is dropped and its infos' TTL lease runs out (nothing is
    /// revoked, so the suite tests the expiry).
    fn make_member_disappear(&self, member: Member) -> BoxFuture<'_, ()> {
        drop(member);
        Box::pin(async {})
    }

    fn put_raw_cluster_data<'a>(&'a self, cluster: &'a str, raw: &'a [u8]) -> BoxFuture<'a, ()> {
        let key = crate::keys::KeyLayout::new(MEM_PREFIX, cluster).cluster_data();
        self.kv.raw_put(&key, raw);
        Box::pin(async {})
    }
}
