//! The sentinels' election on Stolon's ConfigMap lock (the default): client-go's leader record in
//! annotation `control-plane.alpha.kubernetes.io/leader` of ConfigMap `stolon-cluster-<name>`,
//! against the fake API server with the real `kube` client. The Lease lock's cases are in
//! `kube_store.rs`.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use stolon_kube::testing::FakeApiServer;
use stolon_kube::{ElectionLock, KubeOptions, LEADER_ANNOTATION};
use stolon_store::testing::suite::sample_cluster_data;
use tokio::sync::watch;

use common::{NS, eventually, open};

const CM: &str = "stolon-cluster-c1";

/// The ConfigMap lock with a 3 s lease.
fn short() -> KubeOptions {
    KubeOptions {
        lease_duration: Duration::from_secs(3),
        ..KubeOptions::default()
    }
}

/// The leader record as stored, decoded from the annotation.
fn record(fake: &FakeApiServer) -> Option<Value> {
    let cm = fake.object("configmaps", NS, CM)?;
    let text = cm["metadata"]["annotations"][LEADER_ANNOTATION].as_str()?;
    Some(serde_json::from_str(text).expect("leader record is JSON"))
}

/// Now in client-go's `metav1.Time` form (RFC 3339, whole seconds, UTC).
fn go_now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", now).expect("format")
}

/// A record as a Go sentinel (client-go's ConfigMap lock) writes it.
fn go_record(holder: &str, renew: &str, transitions: i64) -> String {
    json!({
        "holderIdentity": holder,
        "leaseDurationSeconds": 3,
        "acquireTime": "2026-12-04T10:00:00Z",
        "renewTime": renew,
        "leaderTransitions": transitions,
    })
    .to_string()
}

fn put_go_lock(fake: &FakeApiServer, holder: &str, renew: &str) {
    fake.put_object(
        "configmaps",
        NS,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": CM,
                "annotations": { LEADER_ANNOTATION: go_record(holder, renew, 4) },
            },
        }),
    );
}

#[test]
fn the_configmap_lock_is_the_default() {
    assert_eq!(
        KubeOptions::default().election_lock,
        ElectionLock::ConfigMap
    );
}

#[tokio::test]
async fn the_record_is_client_go_s_in_the_clusterdata_configmap() {
    let fake = FakeApiServer::start().await.expect("fake");
    let (s, e) = open(&fake, "c1", None, short());
    s.put_cluster_data(&sample_cluster_data("cd"), None)
        .await
        .expect("clusterdata");
    let rx = e.campaign("sentinel-a").await.expect("campaign");
    assert!(eventually(Duration::from_secs(10), || async { *rx.borrow() }).await);
    let r = record(&fake).expect("record written");
    assert_eq!(r["holderIdentity"], json!("sentinel-a"));
    assert_eq!(r["leaseDurationSeconds"], json!(3));
    assert_eq!(r["leaderTransitions"], json!(1));
    for field in ["acquireTime", "renewTime"] {
        let t = r[field].as_str().expect("a time");
        assert!(
            t.len() == 20 && t.ends_with('Z'),
            "{field} not in metav1.Time form: {t}"
        );
    }
    // No Lease is made; clusterdata is untouched by the lock.
    assert!(fake.object("leases", NS, CM).is_none());
    assert_eq!(fake.requests("POST", "leases"), 0);
    // While the lock is renewed in the same ConfigMap, clusterdata compare-and-swap writes (as
    // the leader makes them, read then write) keep succeeding.
    let acquired = r["acquireTime"].clone();
    let first_renew = r["renewTime"].clone();
    for i in 0..25 {
        let read = s.get_cluster_data().await.expect("read");
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.put_cluster_data(
            &sample_cluster_data(&format!("cd{i}")),
            read.revision.as_ref(),
        )
        .await
        .expect("clusterdata CAS across lock renewals");
    }
    let r = record(&fake).expect("record");
    assert_ne!(r["renewTime"], first_renew, "lock not renewed in 5 s");
    assert_eq!(r["acquireTime"], acquired, "a renewal changed acquireTime");
    assert_eq!(r["holderIdentity"], json!("sentinel-a"));
    assert!(*rx.borrow());
    // Resigning releases it as client-go does: empty holder, transitions kept.
    e.resign().await.expect("resign");
    let r = record(&fake).expect("record");
    assert_eq!(r["holderIdentity"], json!(""));
    assert_eq!(r["leaderTransitions"], json!(1));
    assert_eq!(e.leader().await.expect("leader"), None);
    let cm = fake.object("configmaps", NS, CM).expect("cm");
    assert!(cm["metadata"]["annotations"]["stolon-clusterdata"].is_string());
}

fn leaders(rxs: &[watch::Receiver<bool>]) -> Vec<usize> {
    rxs.iter()
        .enumerate()
        .filter(|(_, r)| *r.borrow())
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test]
async fn one_leader_among_three_and_takeover_when_it_stops_renewing() {
    let fake = FakeApiServer::start().await.expect("fake");
    let mut elections = Vec::new();
    let mut rxs = Vec::new();
    for i in 0..3 {
        let (_s, e) = open(&fake, "c1", None, short());
        rxs.push(e.campaign(&format!("cand-{i}")).await.expect("campaign"));
        elections.push(Some(e));
    }
    let mut leader = None;
    for _ in 0..120 {
        let l = leaders(&rxs);
        assert!(l.len() <= 1, "two leaders at once: {l:?}");
        if let Some(i) = l.first() {
            leader = Some(*i);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = leader.expect("nobody leads");
    assert_eq!(leaders(&rxs), vec![first], "leadership moved without cause");
    let observer = elections[(first + 1) % 3].clone().expect("observer");
    assert_eq!(
        observer.leader().await.expect("leader"),
        Some(format!("cand-{first}"))
    );
    // The leader crashes (dropped without resign): its renewals stop, another takes over once
    // the record has not changed for a lease duration.
    elections[first] = None;
    let mut next = None;
    for _ in 0..400 {
        let l = leaders(&rxs);
        assert!(l.len() <= 1, "two leaders at once: {l:?}");
        if let Some(i) = l.first().filter(|i| **i != first) {
            next = Some(*i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = next.expect("no takeover after the leader stopped");
    let r = record(&fake).expect("record");
    assert_eq!(r["holderIdentity"], json!(format!("cand-{next}")));
    // Created by the first (no transition), taken over once.
    assert_eq!(r["leaderTransitions"], json!(1));
    for e in elections.into_iter().flatten() {
        e.resign().await.expect("resign");
    }
}

#[tokio::test]
async fn a_resource_version_conflict_is_lost_not_led() {
    let fake = FakeApiServer::start().await.expect("fake");
    // A released record in an existing ConfigMap: acquiring it is an update (a patch carrying
    // the resourceVersion read), which the server refuses three times.
    put_go_lock(&fake, "", &go_now());
    fake.set_write_conflicts("configmaps", 1_000_000);
    let (_s, e) = open(&fake, "c1", None, short());
    let rx = e.campaign("me").await.expect("campaign");
    // Each refused write is a lost race: no leadership while every write is refused.
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert!(!*rx.borrow(), "leading after a refused write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = fake.requests("PATCH", "configmaps");
    assert!(refused >= 3, "only {refused} write attempts in 3 s");
    fake.set_write_conflicts("configmaps", 0);
    assert!(
        eventually(Duration::from_secs(10), || async { *rx.borrow() }).await,
        "never acquired after the conflicts"
    );
    assert!(fake.requests("PATCH", "configmaps") > refused);
    assert_eq!(
        record(&fake).expect("record")["holderIdentity"],
        json!("me")
    );
    e.resign().await.expect("resign");
}

#[tokio::test]
async fn a_go_sentinel_s_live_record_is_respected_until_it_expires() {
    let fake = FakeApiServer::start().await.expect("fake");
    put_go_lock(&fake, "go-sentinel-1", &go_now());
    let (_s, e) = open(&fake, "c1", None, short());
    assert_eq!(
        e.leader().await.expect("leader").as_deref(),
        Some("go-sentinel-1")
    );
    let rx = e.campaign("rust-sentinel").await.expect("campaign");
    // The Go sentinel renews every 500 ms for 5 s (longer than its 3 s lease): never taken.
    for i in 0..10 {
        assert!(fake.modify("configmaps", NS, CM, |cm| {
            cm["metadata"]["annotations"][LEADER_ANNOTATION] =
                json!(go_record("go-sentinel-1", &go_now(), 4));
            // Clusterdata-like noise on the same ConfigMap does not matter either.
            cm["metadata"]["annotations"]["other"] = json!(i.to_string());
        }));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!*rx.borrow(), "took over a live Go lock");
    }
    // It stops renewing (a Go sentinel died): taken over after its lease duration.
    assert!(
        eventually(Duration::from_secs(15), || async { *rx.borrow() }).await,
        "did not take over an expired Go lock"
    );
    let r = record(&fake).expect("record");
    assert_eq!(r["holderIdentity"], json!("rust-sentinel"));
    assert_eq!(r["leaderTransitions"], json!(5));
    assert_eq!(r["leaseDurationSeconds"], json!(3));
    assert_eq!(
        e.leader().await.expect("leader").as_deref(),
        Some("rust-sentinel")
    );
    e.resign().await.expect("resign");
}

#[tokio::test]
async fn expiry_is_judged_on_the_observer_s_clock_not_the_record_s_renew_time() {
    let fake = FakeApiServer::start().await.expect("fake");
    // A Go holder whose node clock is far behind: its renewTime looks years old, but the record
    // was just written. client-go's rule waits a lease duration from first seeing it.
    put_go_lock(&fake, "go-sentinel-skewed", "2020-01-01T00:00:00Z");
    let (_s, e) = open(&fake, "c1", None, short());
    let rx = e.campaign("rust-sentinel").await.expect("campaign");
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2000) {
        assert!(!*rx.borrow(), "took over before a lease duration passed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        eventually(Duration::from_secs(15), || async { *rx.borrow() }).await,
        "did not take over once the record stayed unchanged for a lease duration"
    );
    e.resign().await.expect("resign");
}

#[tokio::test]
async fn stolonctl_finds_the_leader_on_either_lock() {
    let fake = FakeApiServer::start().await.expect("fake");
    let lease = KubeOptions {
        election_lock: ElectionLock::Lease,
        ..short()
    };
    let (_s, sentinel) = open(&fake, "c1", None, lease);
    let rx = sentinel.campaign("on-lease").await.expect("campaign");
    assert!(eventually(Duration::from_secs(10), || async { *rx.borrow() }).await);
    // An observer with the default (ConfigMap) lock, as stolonctl has.
    let (_o, observer) = open(&fake, "c1", None, short());
    assert_eq!(
        observer.leader().await.expect("leader").as_deref(),
        Some("on-lease")
    );
    sentinel.resign().await.expect("resign");
    assert_eq!(observer.leader().await.expect("leader"), None);
}
