//! `Store::keeper_info_ages` and `Store::proxy_info_ages`: how long ago each keeper or proxy wrote
//! its info, from the info's lease, on the in-memory backend (virtual time) and on a real etcd.
//! The age is a lower bound: never more than the time since the write, and it grows while the
//! component is silent.

use std::time::{Duration, Instant};

use stolon_core::model::{KeeperInfo, ProxyInfo};
use stolon_store::Store;
use stolon_store::mem::MemKv;
use stolon_store::testing::etcd::EtcdServer;

fn keeper(uid: &str, info_uid: &str) -> KeeperInfo {
    KeeperInfo {
        uid: uid.to_string(),
        info_uid: info_uid.to_string(),
        ..KeeperInfo::default()
    }
}

#[tokio::test(start_paused = true)]
async fn mem_ages_follow_the_last_publish() {
    let kv = MemKv::new();
    let store = kv.store("stolon/cluster", "ages");
    let ttl = Duration::from_secs(20);
    store
        .put_keeper_info(&keeper("k1", "a"), ttl)
        .await
        .expect("put");
    store
        .put_keeper_info(&keeper("k2", "a"), ttl)
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_millis(5500)).await;
    // k2 publishes again; k1 stays silent.
    store
        .put_keeper_info(&keeper("k2", "b"), ttl)
        .await
        .expect("put");
    let ages = store.keeper_info_ages().await.expect("ages");
    // 5.5 s: 14 whole seconds left of 20, so at least 20 - 14 - 1 = 5 s.
    assert_eq!(ages.get("k1"), Some(&Duration::from_secs(5)));
    assert_eq!(ages.get("k2"), Some(&Duration::ZERO));
    assert_eq!(ages.len(), 2);
    // A deleted info has no age.
    store.delete_keeper_info("k2").await.expect("delete");
    let ages = store.keeper_info_ages().await.expect("ages");
    assert_eq!(ages.keys().collect::<Vec<_>>(), vec!["k1"]);
}

#[tokio::test]
async fn etcd_ages_are_lower_bounds_that_grow() {
    let etcd = EtcdServer::start_async().await.expect("etcd");
    let cfg = etcd.store_config("ages");
    let store = stolon_store::connect(&cfg).await.expect("connect").0;
    let written = Instant::now();
    store
        .put_keeper_info(&keeper("k1", "a"), Duration::from_secs(20))
        .await
        .expect("put");
    let ages = store.keeper_info_ages().await.expect("ages");
    let first = ages["k1"];
    assert!(
        first <= written.elapsed(),
        "age {first:?} over the real age"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ages = store.keeper_info_ages().await.expect("ages");
    let later = ages["k1"];
    assert!(
        later <= written.elapsed(),
        "age {later:?} over the real age"
    );
    assert!(later > first, "age did not grow: {first:?} then {later:?}");
    assert_eq!(ages.len(), 1);
}

fn proxy(uid: &str, info_uid: &str) -> ProxyInfo {
    ProxyInfo {
        uid: uid.to_string(),
        info_uid: info_uid.to_string(),
        ..ProxyInfo::default()
    }
}

#[tokio::test(start_paused = true)]
async fn mem_proxy_ages_follow_the_last_publish_and_ignore_keepers() {
    let kv = MemKv::new();
    let store = kv.store("stolon/cluster", "ages");
    let ttl = Duration::from_secs(6);
    store
        .put_proxy_info(&proxy("p1", "a"), ttl)
        .await
        .expect("put");
    store
        .put_proxy_info(&proxy("p2", "a"), ttl)
        .await
        .expect("put");
    store
        .put_keeper_info(&keeper("k1", "a"), ttl)
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // p2 publishes again; p1 stays silent.
    store
        .put_proxy_info(&proxy("p2", "b"), ttl)
        .await
        .expect("put");
    let ages = store.proxy_info_ages().await.expect("ages");
    // 3.5 s: 2 whole seconds left of 6, so at least 6 - 2 - 1 = 3 s.
    assert_eq!(ages.get("p1"), Some(&Duration::from_secs(3)));
    assert_eq!(ages.get("p2"), Some(&Duration::ZERO));
    assert_eq!(ages.len(), 2, "keepers are not proxies: {ages:?}");
    // An expired info has no age.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ages = store.proxy_info_ages().await.expect("ages");
    assert_eq!(ages.keys().collect::<Vec<_>>(), vec!["p2"]);
}

#[tokio::test]
async fn etcd_proxy_ages_are_lower_bounds_that_grow() {
    let etcd = EtcdServer::start_async().await.expect("etcd");
    let cfg = etcd.store_config("ages");
    let store = stolon_store::connect(&cfg).await.expect("connect").0;
    let written = Instant::now();
    store
        .put_proxy_info(&proxy("p1", "a"), Duration::from_secs(20))
        .await
        .expect("put");
    let first = store.proxy_info_ages().await.expect("ages")["p1"];
    assert!(
        first <= written.elapsed(),
        "age {first:?} over the real age"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ages = store.proxy_info_ages().await.expect("ages");
    let later = ages["p1"];
    assert!(
        later <= written.elapsed(),
        "age {later:?} over the real age"
    );
    assert!(later > first, "age did not grow: {first:?} then {later:?}");
    assert_eq!(ages.len(), 1);
}
