//! The sentinel runtime on the kubernetes backend (the in-process fake API server, the real
//! `kube` client): it leads on Stolon's ConfigMap lock, initialises a cluster, and a failover
//! creates Kubernetes Events on the keeper pods.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use stolon_core::GoDuration;
use stolon_core::model::{
    ClusterData, ClusterInitMode, ClusterPhase, ClusterSpec, KeeperInfo, PostgresBinaryVersion,
    PostgresState,
};
use stolon_kube::testing::FakeApiServer;
use stolon_kube::{KubeOptions, connect_with_config};
use stolon_sentinel::Config;
use stolon_store::{Election, Store, StoreBackend, StoreConfig};
use tokio_util::sync::CancellationToken;

const NS: &str = "stolon-test";

fn store_config() -> StoreConfig {
    StoreConfig {
        backend: StoreBackend::Kubernetes,
        endpoints: Vec::new(),
        timeout: Duration::from_secs(5),
        prefix: "stolon/cluster".into(),
        cluster_name: "kc".into(),
        cert_file: None,
        key_file: None,
        ca_file: None,
        skip_tls_verify: false,
        kube_resource_kind: Some("configmap".into()),
    }
}

/// A component in its own running pod.
fn member(fake: &FakeApiServer, pod: &str, component: &str) -> (Arc<dyn Store>, Arc<dyn Election>) {
    fake.add_pod(
        NS,
        pod,
        &[("component", component), ("stolon-cluster", "kc")],
        "Running",
    );
    let opts = KubeOptions {
        pod_name: Some(pod.into()),
        lease_duration: Duration::from_secs(3),
        // Keepers republish every 300 ms; let every publish through (failInterval is 3 s).
        status_refresh: Some(Duration::ZERO),
        ..KubeOptions::default()
    };
    connect_with_config(fake.config(NS), &store_config(), &opts).expect("connect")
}

async fn cd(store: &Arc<dyn Store>) -> Option<ClusterData> {
    store.get_cluster_data().await.ok().and_then(|r| r.data)
}

/// Publishes keeper `uid`'s info every 300 ms (its assigned DB converged) until `stop`.
fn fake_keeper(store: Arc<dyn Store>, uid: &'static str, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.is_cancelled() {
            if let Some(cd) = cd(&store).await {
                n += 1;
                let info = KeeperInfo {
                    info_uid: format!("{uid}-{n}"),
                    uid: uid.into(),
                    cluster_uid: cd
                        .cluster
                        .as_ref()
                        .map(|c| c.uid.clone())
                        .unwrap_or_default(),
                    boot_uuid: format!("boot-{uid}"),
                    postgres_binary_version: PostgresBinaryVersion { maj: 15, min: 0 },
                    postgres_state: cd.db_of_keeper(uid).map(|db| PostgresState {
                        uid: db.uid.clone(),
                        generation: db.generation,
                        healthy: true,
                        system_id: "sys".into(),
                        timeline_id: 1,
                        xlog_pos: 0x100_0000,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let _ = store.put_keeper_info(&info, Duration::from_secs(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
}

async fn wait(store: &Arc<dyn Store>, what: &str, f: impl Fn(&ClusterData) -> bool) -> ClusterData {
    for _ in 0..600 {
        if let Some(cd) = cd(store).await.filter(|c| f(c)) {
            return cd;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}: {:#?}", cd(store).await);
}

/// The Events on pod `pod` with `reason`.
fn events_on(fake: &FakeApiServer, pod: &str, reason: &str) -> Vec<Value> {
    fake.objects("events", NS)
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == pod && e["reason"] == reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_creates_events_on_the_keeper_pods() {
    let fake = FakeApiServer::start().await.expect("fake API server");
    let (store, election) = member(&fake, "stolon-sentinel-0", "stolon-sentinel");
    let mut spec = ClusterSpec::new_init(ClusterInitMode::New);
    spec.sleep_interval = Some(GoDuration::from_secs(1));
    spec.fail_interval = Some(GoDuration::from_secs(3));
    let cfg = Config {
        uid: "sentinel1".into(),
        store: store_config(),
        initial_spec: Some(spec),
        metrics_addr: None,
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(stolon_sentinel::run(
        cfg,
        store.clone(),
        election,
        cancel.clone(),
    ));
    wait(&store, "clusterdata", |_| true).await;
    let stops = [CancellationToken::new(), CancellationToken::new()];
    let (k0, _) = member(&fake, "stolon-keeper-0", "stolon-keeper");
    let (k1, _) = member(&fake, "stolon-keeper-1", "stolon-keeper");
    fake_keeper(k0, "keeper0", stops[0].clone());
    fake_keeper(k1, "keeper1", stops[1].clone());
    let ready = wait(&store, "normal phase with a master and a standby", |cd| {
        cd.cluster.as_ref().and_then(|c| c.status.phase) == Some(ClusterPhase::Normal)
            && cd.dbs.len() == 2
            && cd
                .dbs
                .values()
                .all(|d| d.status.current_generation == d.generation)
            && cd
                .proxy
                .as_ref()
                .is_some_and(|p| !p.spec.master_db_uid.is_empty())
    })
    .await;
    // The sentinel leads on the ConfigMap lock, next to clusterdata.
    let cm = fake
        .object("configmaps", NS, "stolon-cluster-kc")
        .expect("configmap");
    let record = cm["metadata"]["annotations"]["control-plane.alpha.kubernetes.io/leader"]
        .as_str()
        .expect("leader record");
    assert!(
        record.contains("\"holderIdentity\":\"sentinel1\""),
        "{record}"
    );
    let master = ready.master_db().expect("master").clone();
    let old = master.spec.as_ref().expect("spec").keeper_uid.clone();
    let (dead, old_pod, new, new_pod) = if old == "keeper0" {
        (0, "stolon-keeper-0", "keeper1", "stolon-keeper-1")
    } else {
        (1, "stolon-keeper-1", "keeper0", "stolon-keeper-0")
    };
    assert_eq!(events_on(&fake, old_pod, "InitialMasterElected").len(), 1);

    // The master's keeper stops publishing; its pod stays (as after a PostgreSQL crash).
    stops[dead].cancel();
    wait(&store, "failover", |cd| {
        cd.master_db()
            .and_then(|d| d.spec.as_ref())
            .is_some_and(|s| s.keeper_uid == new)
    })
    .await;
    // Events are created in the background: allow them a moment.
    let mut failed = Vec::new();
    let mut elected = Vec::new();
    for _ in 0..100 {
        failed = events_on(&fake, old_pod, "MasterFailed");
        elected = events_on(&fake, new_pod, "NewMasterElected");
        if !failed.is_empty() && !elected.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failed.len(), 1, "MasterFailed on the old master's pod");
    assert_eq!(elected.len(), 1, "NewMasterElected on the new master's pod");
    let old_uid = fake.object("pods", NS, old_pod).expect("pod")["metadata"]["uid"].clone();
    let f = &failed[0];
    assert_eq!(f["type"], "Warning");
    assert_eq!(f["involvedObject"]["kind"], "Pod");
    assert_eq!(f["involvedObject"]["uid"], old_uid);
    assert_eq!(f["source"]["component"], "stolon-sentinel");
    assert_eq!(f["reportingInstance"], "stolon-sentinel-0");
    assert_eq!(f["count"], 1);
    assert!(f["firstTimestamp"].is_string() && f["lastTimestamp"].is_string());
    let e = &elected[0];
    assert_eq!(e["type"], "Normal");
    assert!(e["message"].as_str().expect("message").contains(new));

    cancel.cancel();
    task.await.expect("join").expect("sentinel run");
    stops[1 - dead].cancel();
}
