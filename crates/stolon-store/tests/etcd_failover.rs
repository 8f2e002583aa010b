//! Endpoint failover against a real 3-member etcd cluster, and the harness's stop/restart and
//! pause/resume on a single member.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stolon_store::testing::etcd::EtcdServer;
use stolon_store::testing::suite::sample_cluster_data;
use stolon_store::{Store, StoreConfig, StoreError, connect};

async fn store_for(cfg: &StoreConfig) -> Arc<dyn Store> {
    connect(cfg).await.expect("connect").0
}

/// 100 consecutive requests, alternating reads and CAS writes; returns how long they took.
async fn hundred_requests(store: &dyn Store) -> Duration {
    let started = Instant::now();
    let mut rev = store
        .get_cluster_data()
        .await
        .expect("read before the loop")
        .revision;
    for i in 0..50 {
        let read = store
            .get_cluster_data()
            .await
            .unwrap_or_else(|e| panic!("read {i} failed: {e}"));
        assert_eq!(read.revision, rev, "read {i}: unexpected revision");
        let new = store
            .put_cluster_data(&sample_cluster_data(&format!("w{i}")), rev.as_ref())
            .await
            .unwrap_or_else(|e| panic!("CAS write {i} failed: {e}"));
        rev = Some(new);
    }
    let last = store.get_cluster_data().await.expect("final read");
    assert_eq!(
        last.data.and_then(|d| d.cluster).map(|c| c.uid).as_deref(),
        Some("w49")
    );
    started.elapsed()
}

/// The main case: with one of three members dead, 100 consecutive requests (reads and CAS
/// writes) all succeed through a store configured with all three endpoints.
#[tokio::test]
async fn one_dead_member_of_three_never_fails_a_request() {
    let mut etcd = EtcdServer::start_cluster_async(3)
        .await
        .expect("3-member etcd");
    let cfg = etcd.store_config("failover");
    let store = store_for(&cfg).await;
    store
        .put_cluster_data(&sample_cluster_data("init"), None)
        .await
        .expect("initial write");

    // Member 0 is the endpoint the store talks to first: kill it (SIGKILL, a crash).
    let mut changes = store.changes();
    etcd.kill_member(0);
    let took = hundred_requests(store.as_ref()).await;
    eprintln!("100 requests with member 0 dead took {took:?}");

    // The change watch moved to a live member too: a write by another client wakes it.
    let other = store_for(&cfg).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    changes.borrow_and_update();
    let rev = other.get_cluster_data().await.expect("read").revision;
    other
        .put_cluster_data(&sample_cluster_data("from-other"), rev.as_ref())
        .await
        .expect("write by another client");
    tokio::time::timeout(Duration::from_secs(20), changes.changed())
        .await
        .expect("changes() fires after the member died")
        .expect("store alive");

    // A fresh store whose first endpoint is dead from the start.
    let fresh = store_for(&cfg).await;
    let took = hundred_requests(fresh.as_ref()).await;
    eprintln!("100 requests through a fresh store with member 0 dead took {took:?}");

    // Bring member 0 back, kill member 1 (the endpoint the store moved to).
    etcd.restart_member_async(0)
        .await
        .expect("restart member 0");
    etcd.kill_member(1);
    let took = hundred_requests(store.as_ref()).await;
    eprintln!("100 requests with member 1 dead took {took:?}");
}

/// Killing every member one after the other (restarting the previous one), so that at some
/// point the raft leader dies: requests ride out the new election within the store timeout.
#[tokio::test]
async fn killing_the_raft_leader_does_not_fail_requests() {
    let mut etcd = EtcdServer::start_cluster_async(3)
        .await
        .expect("3-member etcd");
    let cfg = etcd.store_config("leader-kill");
    let store = store_for(&cfg).await;
    store
        .put_cluster_data(&sample_cluster_data("init"), None)
        .await
        .expect("initial write");
    for victim in 0..3 {
        etcd.kill_member(victim);
        let took = hundred_requests(store.as_ref()).await;
        eprintln!("100 requests with member {victim} dead took {took:?}");
        etcd.restart_member_async(victim).await.expect("restart");
    }
}

/// All endpoints down: requests fail (retryable), bounded by about the store timeout, and work
/// again after a restart on the same ports and data; changes() fires again after the restart.
#[tokio::test]
async fn stop_and_restart_keeps_data_and_reconnects() {
    let mut etcd = EtcdServer::start_async().await.expect("etcd");
    let mut cfg = etcd.store_config("restart");
    cfg.timeout = Duration::from_secs(1);
    let store = store_for(&cfg).await;
    let rev = store
        .put_cluster_data(&sample_cluster_data("kept"), None)
        .await
        .expect("write");
    let mut changes = store.changes();

    etcd.stop_async().await;
    let started = Instant::now();
    let err = store.get_cluster_data().await.expect_err("store is down");
    assert!(err.is_retryable(), "error not retryable: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failure took {:?}",
        started.elapsed()
    );

    etcd.restart_async().await.expect("restart");
    changes.borrow_and_update();
    let read = store.get_cluster_data().await.expect("read after restart");
    assert_eq!(
        read.revision.as_ref(),
        Some(&rev),
        "data kept across restart"
    );
    // The watch is re-established (and bumps) after the outage.
    tokio::time::timeout(Duration::from_secs(20), changes.changed())
        .await
        .expect("changes() fires after the store came back")
        .expect("store alive");
}

/// A frozen (SIGSTOP) member among three: requests time out on it once and go on elsewhere.
#[tokio::test]
async fn frozen_member_is_skipped() {
    let etcd = EtcdServer::start_cluster_async(3)
        .await
        .expect("3-member etcd");
    let mut cfg = etcd.store_config("frozen");
    // Member 0 may be the raft leader: then no member answers a read until the other two have
    // elected a new one (etcd's election timeout, 1 s, and a round or two), so the budget of the
    // first request must hold an election.
    cfg.timeout = Duration::from_secs(3);
    let store = store_for(&cfg).await;
    store
        .put_cluster_data(&sample_cluster_data("init"), None)
        .await
        .expect("write");
    etcd.pause_member(0).expect("pause");
    let took = hundred_requests(store.as_ref()).await;
    eprintln!("100 requests with member 0 frozen took {took:?}");
    etcd.resume_member(0).expect("resume");
    etcd.wait_healthy_async(Duration::from_secs(30))
        .await
        .expect("healthy after resume");
}

/// A member that stops answering without closing its connections (frozen: what a partition
/// looks like from the client) while it is the endpoint in use, at the default 5 s store
/// timeout: every read and CAS write still succeeds. Each request's whole budget is the store
/// timeout, which the client used to spend on the frozen member and then fail; succeeding means
/// it gave up on that member after one short attempt deadline and went on to the next endpoint.
/// How long the requests took is printed, not asserted.
#[tokio::test]
async fn frozen_member_costs_less_than_the_store_timeout() {
    let etcd = EtcdServer::start_cluster_async(3)
        .await
        .expect("3-member etcd");
    let cfg = etcd.store_config("black-hole");
    assert_eq!(cfg.timeout, Duration::from_secs(5));
    let store = store_for(&cfg).await;
    let mut rev = store
        .put_cluster_data(&sample_cluster_data("init"), None)
        .await
        .expect("write");
    // Member 0 answered the write, so it is the endpoint in use.
    etcd.pause_member(0).expect("pause");
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let read = store
            .get_cluster_data()
            .await
            .unwrap_or_else(|e| panic!("read {i} failed: {e}"));
        assert_eq!(read.revision.as_ref(), Some(&rev), "read {i}");
        let read_took = started.elapsed();
        let started = Instant::now();
        rev = store
            .put_cluster_data(&sample_cluster_data(&format!("w{i}")), Some(&rev))
            .await
            .unwrap_or_else(|e| panic!("CAS write {i} failed: {e}"));
        let write_took = started.elapsed();
        slowest = slowest.max(read_took).max(write_took);
    }
    eprintln!("slowest request with member 0 frozen: {slowest:?}");

    // A fresh store whose first endpoint is the frozen one.
    let fresh = store_for(&cfg).await;
    let started = Instant::now();
    let read = fresh.get_cluster_data().await.expect("fresh read");
    let took = started.elapsed();
    assert_eq!(read.revision.as_ref(), Some(&rev));
    eprintln!("fresh store's first read with member 0 frozen: {took:?}");

    etcd.resume_member(0).expect("resume");
    etcd.wait_healthy_async(Duration::from_secs(30))
        .await
        .expect("healthy after resume");
}

/// The change watch on a member that freezes (a partition, from the client) moves to another
/// member: a write by another client still wakes `changes()`. How long it took is printed, not
/// asserted (the watch's progress probe moves it within about two seconds; the connection's
/// keepalive alone would take up to 12 s); the probe's decisions are unit-tested in `etcd.rs`.
#[tokio::test]
async fn the_change_watch_leaves_a_frozen_member() {
    let etcd = EtcdServer::start_cluster_async(3)
        .await
        .expect("3-member etcd");
    let cfg = etcd.store_config("frozen-watch");
    let store = store_for(&cfg).await;
    let mut changes = store.changes();
    let rev = store
        .put_cluster_data(&sample_cluster_data("init"), None)
        .await
        .expect("write");
    // The watch and the write went to member 0, the first endpoint; let the write's
    // notification arrive before the freeze.
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("the write's notification")
        .expect("store alive");
    etcd.pause_member(0).expect("pause");
    let frozen_at = Instant::now();
    changes.borrow_and_update();
    let other = store_for(&cfg).await;
    other
        .put_cluster_data(&sample_cluster_data("after-freeze"), Some(&rev))
        .await
        .expect("write by another client");
    tokio::time::timeout(Duration::from_secs(30), changes.changed())
        .await
        .expect("changes() fires with member 0 frozen")
        .expect("store alive");
    eprintln!(
        "watch moved off the frozen member {:?} after the freeze",
        frozen_at.elapsed()
    );
    etcd.resume_member(0).expect("resume");
    etcd.wait_healthy_async(Duration::from_secs(30))
        .await
        .expect("healthy after resume");
}

/// The Kubernetes backend is not built yet; the error says so.
#[tokio::test]
async fn kubernetes_backend_not_built_yet() {
    let cfg = StoreConfig {
        backend: stolon_store::StoreBackend::Kubernetes,
        endpoints: vec![],
        timeout: Duration::from_secs(1),
        prefix: "stolon/cluster".into(),
        cluster_name: "c".into(),
        cert_file: None,
        key_file: None,
        ca_file: None,
        skip_tls_verify: false,
        kube_resource_kind: Some("configmap".into()),
    };
    match connect(&cfg).await {
        Err(StoreError::Config(m)) => assert_eq!(m, "store backend kubernetes is not built yet"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("kubernetes backend connected"),
    }
}
