//! Kubernetes-specific behaviour of the store and election, against the fake API server with
//! the real `kube` client: where things live, pod-based discovery, status write suppression,
//! watches, Lease rules, namespace and kubeconfig handling.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use serde_json::json;
use stolon_core::model::{KeeperInfo, PostgresState, ProxyInfo, SentinelInfo};
use stolon_kube::testing::FakeApiServer;
use stolon_kube::{ElectionLock, KubeOptions, connect, connect_any};
use stolon_store::testing::suite::sample_cluster_data;
use stolon_store::{Revision, StoreError};

use common::{NS, eventually, labels, open, store_config};

const TTL: Duration = Duration::from_secs(20);

fn keeper(uid: &str, info_uid: &str) -> KeeperInfo {
    KeeperInfo {
        uid: uid.into(),
        info_uid: info_uid.into(),
        cluster_uid: "c1".into(),
        ..KeeperInfo::default()
    }
}

fn cd_uid(read: &stolon_store::ClusterDataRead) -> Option<String> {
    read.data
        .as_ref()
        .and_then(|cd| cd.cluster.as_ref())
        .map(|c| c.uid.clone())
}

#[tokio::test]
async fn clusterdata_lives_in_the_configmap_annotation() {
    let fake = FakeApiServer::start().await.expect("fake");
    let (s, _e) = open(&fake, "c1", None, KubeOptions::default());
    let rev = s
        .put_cluster_data(&sample_cluster_data("x"), None)
        .await
        .expect("create");
    let cm = fake
        .object("configmaps", NS, "stolon-cluster-c1")
        .expect("configmap created");
    assert_eq!(cm["metadata"]["resourceVersion"], json!(rev.0));
    assert_eq!(cm["metadata"]["labels"]["stolon-cluster"], json!("c1"));
    let raw = cm["metadata"]["annotations"]["stolon-clusterdata"]
        .as_str()
        .expect("annotation is a string");
    let decoded: stolon_core::model::ClusterData = serde_json::from_str(raw).expect("clusterdata");
    assert_eq!(decoded, sample_cluster_data("x"));
}

#[tokio::test]
async fn a_revision_is_invalidated_by_clusterdata_changes_not_by_other_fields() {
    let fake = FakeApiServer::start().await.expect("fake");
    let (s, _e) = open(&fake, "c1", None, KubeOptions::default());
    let (other, _oe) = open(&fake, "c1", None, KubeOptions::default());
    let r1 = s
        .put_cluster_data(&sample_cluster_data("one"), None)
        .await
        .expect("create");
    // Someone else labels the ConfigMap (as the leader record's renewals change an annotation):
    // resourceVersion moves, clusterdata does not, so the write still goes through.
    assert!(fake.modify("configmaps", NS, "stolon-cluster-c1", |cm| {
        cm["metadata"]["labels"]["extra"] = json!("yes");
    }));
    let r2 = s
        .put_cluster_data(&sample_cluster_data("two"), Some(&r1))
        .await
        .expect("CAS across a change of another field");
    assert_ne!(r2, r1);
    let cm = fake
        .object("configmaps", NS, "stolon-cluster-c1")
        .expect("cm");
    assert_eq!(cm["metadata"]["labels"]["extra"], json!("yes"));
    // Another writer changes clusterdata: the revision read before is stale.
    let read = other.get_cluster_data().await.expect("read");
    other
        .put_cluster_data(&sample_cluster_data("three"), read.revision.as_ref())
        .await
        .expect("other write");
    match s
        .put_cluster_data(&sample_cluster_data("four"), Some(&r2))
        .await
    {
        Err(StoreError::Conflict) => {}
        other => panic!("stale clusterdata revision accepted: {other:?}"),
    }
    let read = s.get_cluster_data().await.expect("read");
    assert_eq!(cd_uid(&read).as_deref(), Some("three"));
    let r3 = read.revision.expect("revision");
    s.put_cluster_data(&sample_cluster_data("five"), Some(&r3))
        .await
        .expect("CAS on the current resourceVersion");
    // Empty and deleted cases.
    match s
        .put_cluster_data(&sample_cluster_data("e"), Some(&Revision(String::new())))
        .await
    {
        Err(StoreError::Conflict) => {}
        other => panic!("empty revision: {other:?}"),
    }
    let r3 = s
        .get_cluster_data()
        .await
        .expect("read")
        .revision
        .expect("rev");
    assert!(fake.remove("configmaps", NS, "stolon-cluster-c1"));
    match s
        .put_cluster_data(&sample_cluster_data("gone"), Some(&r3))
        .await
    {
        Err(StoreError::Conflict) => {}
        other => panic!("CAS on a deleted ConfigMap: {other:?}"),
    }
    assert!(fake.object("configmaps", NS, "stolon-cluster-c1").is_none());
}

#[tokio::test]
async fn existing_configmap_without_annotation_is_absent_clusterdata() {
    let fake = FakeApiServer::start().await.expect("fake");
    let client = kube::Client::try_from(fake.config(NS)).expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client, NS);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("stolon-cluster-c1".into()),
            ..ObjectMeta::default()
        },
        data: Some([("keep".to_string(), "me".to_string())].into()),
        ..ConfigMap::default()
    };
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create cm");
    let (s, _e) = open(&fake, "c1", None, KubeOptions::default());
    let read = s.get_cluster_data().await.expect("read");
    assert!(read.data.is_none() && read.revision.is_none(), "{read:?}");
    let rev = s
        .put_cluster_data(&sample_cluster_data("first"), None)
        .await
        .expect("create-if-absent on an existing ConfigMap");
    let read = s.get_cluster_data().await.expect("read");
    assert_eq!(read.revision, Some(rev));
    let cm = fake
        .object("configmaps", NS, "stolon-cluster-c1")
        .expect("cm");
    assert_eq!(cm["data"]["keep"], json!("me"));
}

#[tokio::test]
async fn concurrent_creates_have_one_winner() {
    let fake = FakeApiServer::start().await.expect("fake");
    let stores: Vec<_> = (0..4)
        .map(|_| open(&fake, "c1", None, KubeOptions::default()).0)
        .collect();
    let mut tasks = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.put_cluster_data(&sample_cluster_data(&format!("w{i}")), None)
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => ok += 1,
            Err(StoreError::Conflict) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(ok, 1, "exactly one create-if-absent wins");
}

#[tokio::test]
async fn infos_are_found_by_labels_on_live_pods() {
    let fake = FakeApiServer::start().await.expect("fake");
    for (pod, comp, cluster) in [
        ("keeper-0", "stolon-keeper", "c1"),
        ("keeper-1", "stolon-keeper", "c1"),
        ("keeper-2", "stolon-keeper", "c1"),
        ("sentinel-a", "stolon-sentinel", "c1"),
        ("sentinel-b", "stolon-sentinel", "c1"),
        ("proxy-a", "stolon-proxy", "c1"),
        ("other-keeper", "stolon-keeper", "c2"),
    ] {
        fake.add_pod(NS, pod, &labels(comp, cluster), "Running");
    }
    let k0 = open(&fake, "c1", Some("keeper-0"), KubeOptions::default()).0;
    let k1 = open(&fake, "c1", Some("keeper-1"), KubeOptions::default()).0;
    let k2 = open(&fake, "c1", Some("keeper-2"), KubeOptions::default()).0;
    let sa = open(&fake, "c1", Some("sentinel-a"), KubeOptions::default()).0;
    let px = open(&fake, "c1", Some("proxy-a"), KubeOptions::default()).0;
    let other = open(&fake, "c2", Some("other-keeper"), KubeOptions::default()).0;

    k0.put_keeper_info(&keeper("keeper0", "i0"), TTL)
        .await
        .expect("k0");
    k1.put_keeper_info(&keeper("keeper1", "i1"), TTL)
        .await
        .expect("k1");
    k2.put_keeper_info(&keeper("keeper2", "i2"), TTL)
        .await
        .expect("k2");
    sa.put_sentinel_info(
        &SentinelInfo {
            uid: "s-a".into(),
            ..Default::default()
        },
        TTL,
    )
    .await
    .expect("sentinel");
    let pinfo = ProxyInfo {
        uid: "p1".into(),
        info_uid: "pi".into(),
        generation: 3,
        proxy_timeout: 15_000_000_000,
        fences_from_check_start: false,
    };
    px.put_proxy_info(&pinfo, TTL).await.expect("proxy");
    other
        .put_keeper_info(&keeper("keeper9", "i9"), TTL)
        .await
        .expect("other");

    // The status is the info JSON on the pod itself.
    let pod = fake.object("pods", NS, "keeper-1").expect("pod");
    let status: KeeperInfo = serde_json::from_str(
        pod["metadata"]["annotations"]["stolon-status"]
            .as_str()
            .expect("annotation"),
    )
    .expect("decode");
    assert_eq!(status, keeper("keeper1", "i1"));

    let keepers = k0.get_keepers_info().await.expect("keepers");
    assert_eq!(
        keepers.keys().collect::<Vec<_>>(),
        ["keeper0", "keeper1", "keeper2"]
    );
    assert_eq!(keepers["keeper2"], keeper("keeper2", "i2"));
    // sentinel-b never published: skipped, no empty entry.
    let sentinels = px.get_sentinels_info().await.expect("sentinels");
    assert_eq!(
        sentinels,
        vec![SentinelInfo {
            uid: "s-a".into(),
            ..Default::default()
        }]
    );
    let proxies = sa.get_proxies_info().await.expect("proxies");
    assert_eq!(proxies.len(), 1);
    assert_eq!(proxies["p1"], pinfo);
    let okeepers = other.get_keepers_info().await.expect("other keepers");
    assert_eq!(okeepers.keys().collect::<Vec<_>>(), ["keeper9"]);

    // No TTLs: a pod that stops running or is being deleted is gone.
    assert!(fake.set_pod_phase(NS, "keeper-1", "Failed"));
    assert!(fake.mark_pod_terminating(NS, "keeper-2"));
    let keepers = k0.get_keepers_info().await.expect("keepers");
    assert_eq!(keepers.keys().collect::<Vec<_>>(), ["keeper0"]);
    assert!(fake.set_pod_phase(NS, "keeper-1", "Running"));
    assert!(fake.remove("pods", NS, "keeper-0"));
    let keepers = k1.get_keepers_info().await.expect("keepers");
    assert_eq!(keepers.keys().collect::<Vec<_>>(), ["keeper1"]);

    // A garbage annotation is skipped, not an error.
    fake.add_pod(NS, "keeper-3", &labels("stolon-keeper", "c1"), "Running");
    assert!(fake.modify("pods", NS, "keeper-3", |p| {
        p["metadata"]["annotations"] = json!({ "stolon-status": "{not json" });
    }));
    let keepers = k1.get_keepers_info().await.expect("keepers");
    assert_eq!(keepers.keys().collect::<Vec<_>>(), ["keeper1"]);
}

#[tokio::test]
async fn publishing_needs_an_existing_pod_name() {
    let fake = FakeApiServer::start().await.expect("fake");
    let (nopod, _) = open(&fake, "c1", None, KubeOptions::default());
    match nopod.put_keeper_info(&keeper("k", "i"), TTL).await {
        Err(StoreError::Config(m)) => assert!(m.contains("POD_NAME"), "{m}"),
        other => panic!("publish without POD_NAME: {other:?}"),
    }
    let (missing, _) = open(&fake, "c1", Some("no-such-pod"), KubeOptions::default());
    match missing.put_keeper_info(&keeper("k", "i"), TTL).await {
        Err(StoreError::Config(m)) => assert!(m.contains("no-such-pod"), "{m}"),
        other => panic!("publish on a missing pod: {other:?}"),
    }
    // A failed write is not remembered: the next publish tries again.
    fake.add_pod(NS, "no-such-pod", &labels("stolon-keeper", "c1"), "Running");
    missing
        .put_keeper_info(&keeper("k", "i"), TTL)
        .await
        .expect("publish once the pod exists");
    assert_eq!(fake.requests("PATCH", "pods"), 2);
}

fn proxy(info_uid: &str, generation: i64) -> ProxyInfo {
    ProxyInfo {
        uid: "p".into(),
        info_uid: info_uid.into(),
        generation,
        proxy_timeout: 15_000_000_000,
        fences_from_check_start: false,
    }
}

/// The `stolon-status` annotation of a pod, decoded.
fn status_of<T: serde::de::DeserializeOwned>(fake: &FakeApiServer, pod: &str) -> T {
    let pod = fake.object("pods", NS, pod).expect("pod");
    let raw = pod["metadata"]["annotations"]["stolon-status"]
        .as_str()
        .map(str::to_string)
        .expect("annotation");
    serde_json::from_str(&raw).expect("decode")
}

#[tokio::test]
async fn every_keeper_publish_is_written_so_the_sentinels_see_a_new_info_uid() {
    let fake = FakeApiServer::start().await.expect("fake");
    fake.add_pod(NS, "keeper-0", &labels("stolon-keeper", "c1"), "Running");
    let (s, _) = open(&fake, "c1", Some("keeper-0"), KubeOptions::default());
    // A keeper republishes once per sleep interval with a new infoUID and nothing else changed:
    // the sentinels count its info as fresh only while the infoUID moves, so each is written.
    for i in 1..=5 {
        s.put_keeper_info(&keeper("keeper0", &format!("uid-{i}")), TTL)
            .await
            .expect("publish");
        assert_eq!(fake.requests("PATCH", "pods"), i);
        assert_eq!(
            status_of::<KeeperInfo>(&fake, "keeper-0").info_uid,
            format!("uid-{i}")
        );
    }
    // A change in substance is written too.
    let mut changed = keeper("keeper0", "uid-6");
    changed.postgres_state = Some(PostgresState {
        healthy: true,
        xlog_pos: 42,
        ..PostgresState::default()
    });
    s.put_keeper_info(&changed, TTL).await.expect("changed");
    assert_eq!(fake.requests("PATCH", "pods"), 6);
    assert_eq!(status_of::<KeeperInfo>(&fake, "keeper-0"), changed);
}

#[tokio::test]
async fn a_proxy_info_is_not_rewritten_when_only_the_info_uid_changed_until_half_its_ttl() {
    let fake = FakeApiServer::start().await.expect("fake");
    fake.add_pod(NS, "proxy-0", &labels("stolon-proxy", "c1"), "Running");
    let (s, _) = open(&fake, "c1", Some("proxy-0"), KubeOptions::default());

    s.put_proxy_info(&proxy("uid-1", 1), TTL)
        .await
        .expect("first");
    assert_eq!(fake.requests("PATCH", "pods"), 1);
    // A proxy publishes every check interval with a new infoUID: nothing else changed.
    for i in 2..=10 {
        s.put_proxy_info(&proxy(&format!("uid-{i}"), 1), TTL)
            .await
            .expect("republish");
    }
    assert_eq!(
        fake.requests("PATCH", "pods"),
        1,
        "unchanged status rewritten"
    );
    assert_eq!(status_of::<ProxyInfo>(&fake, "proxy-0").info_uid, "uid-1");

    // A new generation is written at once.
    s.put_proxy_info(&proxy("uid-11", 2), TTL)
        .await
        .expect("changed");
    assert_eq!(fake.requests("PATCH", "pods"), 2);
    assert_eq!(status_of::<ProxyInfo>(&fake, "proxy-0"), proxy("uid-11", 2));

    // Freshness: after ttl/2 an unchanged info is written again, with its new infoUID.
    let short = Duration::from_millis(400);
    s.put_proxy_info(&proxy("uid-12", 2), short)
        .await
        .expect("within refresh");
    assert_eq!(fake.requests("PATCH", "pods"), 2);
    tokio::time::sleep(short / 2 + Duration::from_millis(50)).await;
    s.put_proxy_info(&proxy("uid-13", 2), short)
        .await
        .expect("refresh");
    assert_eq!(fake.requests("PATCH", "pods"), 3);
    assert_eq!(status_of::<ProxyInfo>(&fake, "proxy-0").info_uid, "uid-13");
}

#[tokio::test]
async fn a_proxy_info_is_written_without_the_fence_mark_unless_every_publish_is_written() {
    let fake = FakeApiServer::start().await.expect("fake");
    fake.add_pod(NS, "proxy-0", &labels("stolon-proxy", "c1"), "Running");
    fake.add_pod(NS, "proxy-1", &labels("stolon-proxy", "c1"), "Running");
    let marked = |info_uid: &str| ProxyInfo {
        fences_from_check_start: true,
        ..proxy(info_uid, 1)
    };
    // Publishes that change only the infoUID may be skipped: the mark would be a false promise.
    let (s, _) = open(&fake, "c1", Some("proxy-0"), KubeOptions::default());
    s.put_proxy_info(&marked("uid-1"), TTL)
        .await
        .expect("publish");
    assert_eq!(status_of::<ProxyInfo>(&fake, "proxy-0"), proxy("uid-1", 1));
    // Every publish written: the mark stays.
    let every = KubeOptions {
        status_refresh: Some(Duration::ZERO),
        ..KubeOptions::default()
    };
    let (s, _) = open(&fake, "c1", Some("proxy-1"), every);
    s.put_proxy_info(&marked("uid-2"), TTL)
        .await
        .expect("publish");
    s.put_proxy_info(&marked("uid-3"), TTL)
        .await
        .expect("publish");
    assert_eq!(status_of::<ProxyInfo>(&fake, "proxy-1"), marked("uid-3"));
}

#[tokio::test]
async fn an_unchanged_sentinel_info_is_written_once() {
    let fake = FakeApiServer::start().await.expect("fake");
    fake.add_pod(
        NS,
        "sentinel-0",
        &labels("stolon-sentinel", "c1"),
        "Running",
    );
    let (s, _) = open(&fake, "c1", Some("sentinel-0"), KubeOptions::default());
    let short = Duration::from_millis(100);
    for _ in 0..3 {
        s.put_sentinel_info(
            &SentinelInfo {
                uid: "s0".into(),
                ..Default::default()
            },
            short,
        )
        .await
        .expect("publish");
        tokio::time::sleep(short).await;
    }
    assert_eq!(fake.requests("PATCH", "pods"), 1);
    assert_eq!(
        status_of::<SentinelInfo>(&fake, "sentinel-0"),
        SentinelInfo {
            uid: "s0".into(),
            ..Default::default()
        }
    );
    // What was written is remembered per process: a new one writes at once.
    let (again, _) = open(&fake, "c1", Some("sentinel-0"), KubeOptions::default());
    again
        .put_sentinel_info(
            &SentinelInfo {
                uid: "s0".into(),
                ..Default::default()
            },
            short,
        )
        .await
        .expect("restarted");
    assert_eq!(fake.requests("PATCH", "pods"), 2);
}

#[tokio::test]
async fn status_refresh_interval_is_configurable() {
    let fake = FakeApiServer::start().await.expect("fake");
    fake.add_pod(NS, "proxy-0", &labels("stolon-proxy", "c1"), "Running");
    let opts = KubeOptions {
        status_refresh: Some(Duration::ZERO),
        ..KubeOptions::default()
    };
    let (s, _) = open(&fake, "c1", Some("proxy-0"), opts);
    for i in 0..3 {
        let p = ProxyInfo {
            uid: "p".into(),
            info_uid: format!("i{i}"),
            generation: 1,
            proxy_timeout: 1,
            fences_from_check_start: false,
        };
        s.put_proxy_info(&p, TTL).await.expect("publish");
    }
    assert_eq!(fake.requests("PATCH", "pods"), 3);
}

/// Waits until both watches of a store are open at the fake server (`watches` counts them),
/// then lets the initial list settle.
async fn watches_open(fake: &FakeApiServer, cm_watches: u64, pod_watches: u64) {
    let ok = eventually(Duration::from_secs(20), || async {
        fake.requests("WATCH", "configmaps") >= cm_watches
            && fake.requests("WATCH", "pods") >= pod_watches
    })
    .await;
    assert!(ok, "watches were not opened");
    tokio::time::sleep(Duration::from_millis(200)).await;
}

async fn changed_within(rx: &mut tokio::sync::watch::Receiver<u64>, limit: Duration) -> bool {
    matches!(tokio::time::timeout(limit, rx.changed()).await, Ok(Ok(())))
}

#[tokio::test]
async fn changes_wake_on_clusterdata_status_and_pods_only_of_this_cluster() {
    let fake = FakeApiServer::start().await.expect("fake");
    fake.add_pod(NS, "keeper-0", &labels("stolon-keeper", "c1"), "Running");
    fake.add_pod(NS, "keeper-x", &labels("stolon-keeper", "c1x"), "Running");
    let (s, _) = open(&fake, "c1", None, KubeOptions::default());
    let mut rx = s.changes();
    watches_open(&fake, 1, 1).await;
    let (writer, _) = open(&fake, "c1", Some("keeper-0"), KubeOptions::default());
    let (other, _) = open(&fake, "c1x", Some("keeper-x"), KubeOptions::default());
    // The other stores watch too (as every component does).
    let _wrx = writer.changes();
    let _orx = other.changes();
    watches_open(&fake, 3, 3).await;
    rx.borrow_and_update();

    writer
        .put_cluster_data(&sample_cluster_data("w"), None)
        .await
        .expect("write");
    assert!(
        changed_within(&mut rx, Duration::from_secs(10)).await,
        "clusterdata write"
    );
    rx.borrow_and_update();

    writer
        .put_keeper_info(&keeper("keeper0", "i"), TTL)
        .await
        .expect("publish");
    assert!(
        changed_within(&mut rx, Duration::from_secs(10)).await,
        "status write"
    );
    rx.borrow_and_update();

    // Kubernetes' "expiry": the pod goes away.
    assert!(fake.remove("pods", NS, "keeper-0"));
    assert!(
        changed_within(&mut rx, Duration::from_secs(10)).await,
        "pod deletion"
    );
    rx.borrow_and_update();

    // Another cluster (whose name extends ours) does not wake us.
    other
        .put_cluster_data(&sample_cluster_data("o"), None)
        .await
        .expect("other write");
    other
        .put_keeper_info(&keeper("keeperx", "i"), TTL)
        .await
        .expect("other publish");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !rx.has_changed().expect("store alive"),
        "woken by another cluster"
    );
}

#[tokio::test]
async fn changes_survive_broken_watches_and_an_unavailable_api_server() {
    let fake = FakeApiServer::start().await.expect("fake");
    let (s, _) = open(&fake, "c1", None, KubeOptions::default());
    let mut rx = s.changes();
    watches_open(&fake, 1, 1).await;

    // Connection drops: the watches come back by themselves.
    fake.break_watches();
    watches_open(&fake, 2, 2).await;
    rx.borrow_and_update();
    s.force_put_cluster_data(&sample_cluster_data("a"))
        .await
        .expect("write");
    assert!(
        changed_within(&mut rx, Duration::from_secs(10)).await,
        "after reconnect"
    );

    // The API server is down for a while (lists and watches fail, the watcher backs off).
    let tries_before = fake.requests("WATCH", "configmaps") + fake.requests("LIST", "configmaps");
    fake.set_unavailable(true);
    // Each failed attempt is answered 503; the watcher keeps trying (with back-off).
    let retried = eventually(Duration::from_secs(20), || async {
        fake.requests("WATCH", "configmaps") + fake.requests("LIST", "configmaps")
            >= tries_before + 2
    })
    .await;
    assert!(retried, "the watcher did not retry");
    // The client retries 503s (and 429s) within the store timeout, then gives up.
    match s.get_cluster_data().await {
        Err(e) if e.is_retryable() => {}
        other => panic!("read from an unavailable API server: {other:?}"),
    }
    let cm_watches = fake.requests("WATCH", "configmaps");
    let pod_watches = fake.requests("WATCH", "pods");
    fake.set_unavailable(false);
    // Within the watcher's back-off both watches are back, and see new writes.
    watches_open(&fake, cm_watches + 1, pod_watches + 1).await;
    rx.borrow_and_update();
    let (writer, _) = open(&fake, "c1", None, KubeOptions::default());
    writer
        .force_put_cluster_data(&sample_cluster_data("b"))
        .await
        .expect("write");
    assert!(
        changed_within(&mut rx, Duration::from_secs(10)).await,
        "no change seen after the API server came back"
    );
}

#[tokio::test]
async fn dropping_the_store_stops_its_watches() {
    let fake = FakeApiServer::start().await.expect("fake");
    let (s, e) = open(&fake, "c1", None, KubeOptions::default());
    // No watch until someone asks for changes (stolonctl never does).
    s.force_put_cluster_data(&sample_cluster_data("x"))
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.requests("WATCH", "configmaps"), 0);
    assert_eq!(fake.requests("LIST", "pods"), 0);
    let _rx = s.changes();
    watches_open(&fake, 1, 1).await;
    drop(s);
    drop(e);
    fake.break_watches();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.requests("WATCH", "configmaps"), 1);
    assert_eq!(fake.requests("WATCH", "pods"), 1);
}

/// The Lease lock (`--kube-election-lock lease`) with a 3 s lease.
fn short_lease() -> KubeOptions {
    KubeOptions {
        lease_duration: Duration::from_secs(3),
        election_lock: ElectionLock::Lease,
        ..KubeOptions::default()
    }
}

#[tokio::test]
async fn lease_records_the_holder() {
    let fake = FakeApiServer::start().await.expect("fake");
    let (_s, e) = open(&fake, "c1", None, short_lease());
    let rx = e.campaign("sentinel-uid-1").await.expect("campaign");
    assert!(eventually(Duration::from_secs(10), || async { *rx.borrow() }).await);
    let lease = fake
        .object("leases", NS, "stolon-cluster-c1")
        .expect("lease created");
    assert_eq!(lease["spec"]["holderIdentity"], json!("sentinel-uid-1"));
    assert_eq!(lease["spec"]["leaseDurationSeconds"], json!(3));
    assert!(lease["spec"]["renewTime"].is_string());
    // Renewals move the Lease while leading.
    let rv = lease["metadata"]["resourceVersion"].clone();
    assert!(
        eventually(Duration::from_secs(10), || async {
            fake.object("leases", NS, "stolon-cluster-c1")
                .is_some_and(|l| l["metadata"]["resourceVersion"] != rv)
        })
        .await,
        "lease not renewed"
    );
    assert!(*rx.borrow());
    e.resign().await.expect("resign");
    let lease = fake
        .object("leases", NS, "stolon-cluster-c1")
        .expect("lease");
    assert!(
        lease["spec"]
            .get("holderIdentity")
            .is_none_or(|h| h.is_null())
    );
    assert_eq!(e.leader().await.expect("leader"), None);
}

#[tokio::test]
async fn a_live_foreign_holder_is_respected_until_its_lease_runs_out() {
    let fake = FakeApiServer::start().await.expect("fake");
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    fake.put_object(
        "leases",
        NS,
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": "stolon-cluster-c1" },
            "spec": {
                "holderIdentity": "intruder",
                "leaseDurationSeconds": 3,
                "renewTime": now,
            },
        }),
    );
    let (_s, e) = open(&fake, "c1", None, short_lease());
    assert_eq!(
        e.leader().await.expect("leader").as_deref(),
        Some("intruder")
    );
    let rx = e.campaign("me").await.expect("campaign");
    // The intruder keeps renewing for 5 s (longer than the 3 s lease): we must not take over.
    for _ in 0..10 {
        assert!(fake.modify("leases", NS, "stolon-cluster-c1", |l| {
            l["spec"]["renewTime"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
        }));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!*rx.borrow(), "took over a live lease");
    }
    // It stops renewing: after a lease duration we take over.
    assert!(
        eventually(Duration::from_secs(15), || async { *rx.borrow() }).await,
        "did not take over an expired lease"
    );
    let lease = fake
        .object("leases", NS, "stolon-cluster-c1")
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], json!("me"));
    assert_eq!(lease["spec"]["leaseTransitions"], json!(1));
    assert_eq!(e.leader().await.expect("leader").as_deref(), Some("me"));
}

#[tokio::test]
async fn leader_ignores_an_expired_lease() {
    let fake = FakeApiServer::start().await.expect("fake");
    fake.put_object(
        "leases",
        NS,
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": "stolon-cluster-c1" },
            "spec": {
                "holderIdentity": "old",
                "leaseDurationSeconds": 15,
                "renewTime": "2020-01-01T00:00:00.000000Z",
            },
        }),
    );
    let (_s, e) = open(&fake, "c1", None, KubeOptions::default());
    assert_eq!(e.leader().await.expect("leader"), None);
}

#[tokio::test]
async fn one_leader_among_three_and_takeover_when_the_leader_stops() {
    let fake = FakeApiServer::start().await.expect("fake");
    let mut elections = Vec::new();
    let mut rxs = Vec::new();
    for i in 0..3 {
        let (_s, e) = open(&fake, "c1", None, short_lease());
        rxs.push(e.campaign(&format!("cand-{i}")).await.expect("campaign"));
        elections.push(Some(e));
    }
    let leaders = |rxs: &[tokio::sync::watch::Receiver<bool>]| {
        rxs.iter()
            .enumerate()
            .filter(|(_, r)| *r.borrow())
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    // Sample for 6 s: never two leaders; one emerges.
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
    // The leader crashes (dropped without resign): another takes over after the lease.
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
    assert_eq!(
        observer.leader().await.expect("leader"),
        Some(format!("cand-{next}"))
    );
    for e in elections.into_iter().flatten() {
        e.resign().await.expect("resign");
    }
}

#[tokio::test]
async fn kubeconfig_context_and_namespace_flags() {
    let fake = FakeApiServer::start().await.expect("fake");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, fake.kubeconfig_yaml("ctx-a", "ns-from-context")).expect("write");
    let cfg = store_config("c1");

    // The context's namespace.
    let opts = KubeOptions {
        kubeconfig: Some(path.clone()),
        context: Some("ctx-a".into()),
        ..KubeOptions::default()
    };
    let (s, _) = connect(&cfg, &opts).await.expect("connect");
    s.force_put_cluster_data(&sample_cluster_data("a"))
        .await
        .expect("write");
    assert!(
        fake.object("configmaps", "ns-from-context", "stolon-cluster-c1")
            .is_some()
    );

    // --kube-namespace wins; the current context is used without --kube-context.
    let opts = KubeOptions::from_flags(path.to_str().expect("utf-8 path"), "", "ns-flag");
    let (s, _) = connect_any(&cfg, &opts).await.expect("connect_any");
    s.force_put_cluster_data(&sample_cluster_data("b"))
        .await
        .expect("write");
    assert!(
        fake.object("configmaps", "ns-flag", "stolon-cluster-c1")
            .is_some()
    );

    // Errors are one line naming what is wrong.
    let bad = KubeOptions {
        kubeconfig: Some(path.clone()),
        context: Some("no-such-context".into()),
        ..KubeOptions::default()
    };
    match connect(&cfg, &bad).await {
        Err(StoreError::Config(m)) => assert!(m.contains("kubeconfig"), "{m}"),
        Err(e) => panic!("unknown context: {e}"),
        Ok(_) => panic!("unknown context accepted"),
    }
    let missing = KubeOptions::from_flags("/nonexistent/kubeconfig", "", "");
    match connect(&cfg, &missing).await {
        Err(StoreError::Config(m)) => assert!(m.contains("/nonexistent/kubeconfig"), "{m}"),
        Err(e) => panic!("missing kubeconfig: {e}"),
        Ok(_) => panic!("missing kubeconfig accepted"),
    }
    let mut wrong_kind = store_config("c1");
    wrong_kind.kube_resource_kind = Some("secret".into());
    match connect(&wrong_kind, &opts).await {
        Err(StoreError::Config(m)) => assert!(m.contains("configmap"), "{m}"),
        Err(e) => panic!("wrong kind: {e}"),
        Ok(_) => panic!("wrong resource kind accepted"),
    }
}

#[test]
fn options_from_flags_and_pod() {
    let o = KubeOptions::from_flags("", "", "");
    assert!(o.kubeconfig.is_none() && o.context.is_none() && o.namespace.is_none());
    let o = KubeOptions::from_flags("/k", "ctx", "ns");
    assert_eq!(o.kubeconfig.as_deref(), Some(std::path::Path::new("/k")));
    assert_eq!(o.context.as_deref(), Some("ctx"));
    assert_eq!(o.namespace.as_deref(), Some("ns"));
    assert_eq!(KubeOptions::for_pod(Some(String::new())).pod_name, None);
    assert_eq!(
        KubeOptions::for_pod(Some("keeper-0".into()))
            .pod_name
            .as_deref(),
        Some("keeper-0")
    );
    assert_eq!(
        KubeOptions::default().lease_duration,
        Duration::from_secs(15)
    );

    let kube = store_config("c1");
    match KubeOptions::for_component(&kube, None) {
        Err(StoreError::Config(m)) => assert!(m.contains("POD_NAME"), "{m}"),
        other => panic!("kubernetes without POD_NAME: {other:?}"),
    }
    assert!(KubeOptions::for_component(&kube, Some(String::new())).is_err());
    let o = KubeOptions::for_component(&kube, Some("sentinel-0".into())).expect("with pod");
    assert_eq!(o.pod_name.as_deref(), Some("sentinel-0"));
    let mut etcd = store_config("c1");
    etcd.backend = stolon_store::StoreBackend::EtcdV3;
    assert!(KubeOptions::for_component(&etcd, None).is_ok());
}

#[tokio::test]
async fn https_uses_the_single_ring_provider() {
    // Exactly one rustls crypto provider must be compiled in: with two, building the TLS client
    // configuration panics ("Could not automatically determine the process-level
    // CryptoProvider"). An https URL to the plain-HTTP fake server gets as far as a failed TLS
    // handshake, which must be a store error, not a panic.
    let fake = FakeApiServer::start().await.expect("fake");
    let mut config = fake.config(NS);
    config.cluster_url = fake
        .url()
        .replace("http://", "https://")
        .parse()
        .expect("uri");
    config.root_cert = None;
    let (s, _e) =
        stolon_kube::connect_with_config(config, &store_config("c1"), &KubeOptions::default())
            .expect("client with TLS builds");
    match s.get_cluster_data().await {
        Err(StoreError::Unavailable(m)) => assert!(!m.is_empty()),
        other => panic!("TLS to a plain HTTP server: {other:?}"),
    }
}
