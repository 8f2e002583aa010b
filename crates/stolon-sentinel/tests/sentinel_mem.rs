//! The sentinel runtime over the in-memory store with paused tokio time: event-driven reaction
//! to keeper infos, initialisation of a `new` cluster, and a failover, quickly and without etcd.

use std::sync::Arc;
use std::time::Duration;

use stolon_core::GoDuration;
use stolon_core::model::{
    ClusterData, ClusterInitMode, ClusterPhase, ClusterSpec, KeeperInfo, PostgresBinaryVersion,
    PostgresState,
};
use stolon_sentinel::Config;
use stolon_store::{Election, MemStore, Store, StoreConfig};
use tokio_util::sync::CancellationToken;

fn config(spec: ClusterSpec) -> Config {
    Config {
        uid: "sentinel1".into(),
        store: StoreConfig::in_memory("mem"),
        initial_spec: Some(spec),
        metrics_addr: None,
    }
}

async fn cd(store: &Arc<dyn Store>) -> Option<ClusterData> {
    store.get_cluster_data().await.ok().and_then(|r| r.data)
}

/// Publishes keeper `uid`'s info every 300 ms (reporting its assigned DB as converged) until
/// `stop`.
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

#[tokio::test(start_paused = true)]
async fn initialises_a_new_cluster_and_fails_over_in_memory() {
    let mem = MemStore::new("mem");
    let election: Arc<dyn Election> = Arc::new(mem.election());
    let store: Arc<dyn Store> = Arc::new(mem);
    let mut spec = ClusterSpec::new_init(ClusterInitMode::New);
    spec.sleep_interval = Some(GoDuration::from_secs(1));
    spec.fail_interval = Some(GoDuration::from_secs(3));
    let cancel = CancellationToken::new();
    let task = tokio::spawn(stolon_sentinel::run(
        config(spec),
        store.clone(),
        election,
        cancel.clone(),
    ));
    wait(&store, "clusterdata", |_| true).await;
    let stops = [CancellationToken::new(), CancellationToken::new()];
    fake_keeper(store.clone(), "k1", stops[0].clone());
    fake_keeper(store.clone(), "k2", stops[1].clone());
    let ready = wait(
        &store,
        "normal phase with a named master and a standby",
        |cd| {
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
        },
    )
    .await;
    let master = ready.master_db().expect("master").clone();
    let keeper = master.spec.as_ref().expect("spec").keeper_uid.clone();
    let (dead, survivor) = if keeper == "k1" { (0, "k2") } else { (1, "k1") };
    stops[dead].cancel();
    wait(&store, "failover", |cd| {
        cd.master_db()
            .and_then(|d| d.spec.as_ref())
            .is_some_and(|s| s.keeper_uid == survivor)
    })
    .await;
    cancel.cancel();
    task.await.expect("join").expect("run");
    stops[1 - dead].cancel();
}
