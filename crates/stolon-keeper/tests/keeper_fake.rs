//! The keeper runtime (loop + executor) over the in-memory store and `FakePg`: fast,
//! deterministic checks of the event-driven loop (reacts to clusterdata changes and postgres
//! exits well before `sleepInterval`) and of the boot-id rule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stolon_core::keeper::KeeperLocalState;
use stolon_core::model::{
    Cluster, ClusterData, ClusterPhase, ClusterSpec, ClusterStatus, Db, DbInitMode, DbRole, DbSpec,
    Keeper as CdKeeper,
};
use stolon_keeper::Keeper;
use stolon_keeper::config::KeeperConfig;
use stolon_keeper::metrics::Metrics;
use stolon_pg::fake::FakePg;
use stolon_store::{MemKv, Store, StoreConfig};
use tokio_util::sync::CancellationToken;

fn config(data_dir: &std::path::Path) -> KeeperConfig {
    KeeperConfig::for_tests(
        StoreConfig::in_memory("fake"),
        "keeper1",
        data_dir.to_path_buf(),
        "127.0.0.1",
        5432,
    )
}

/// A long sleepInterval: anything that happens quickly is event-driven.
fn cd(boot: &str, with_db: bool) -> ClusterData {
    let spec: ClusterSpec =
        serde_json::from_str(r#"{"initMode":"new","sleepInterval":"1m0s"}"#).expect("valid spec");
    let mut cd = ClusterData::new(
        Cluster {
            uid: "c1".into(),
            generation: 1,
            change_time: Default::default(),
            spec: Some(spec),
            status: ClusterStatus {
                current_generation: 0,
                phase: Some(ClusterPhase::Normal),
                master: if with_db { "db1".into() } else { String::new() },
            },
        },
        Default::default(),
    );
    let mut k = CdKeeper {
        uid: "keeper1".into(),
        generation: 1,
        ..Default::default()
    };
    k.status.boot_uuid = boot.into();
    cd.keepers.insert("keeper1".into(), k);
    if with_db {
        cd.dbs.insert(
            "db1".into(),
            Db {
                uid: "db1".into(),
                generation: 1,
                spec: Some(DbSpec {
                    keeper_uid: "keeper1".into(),
                    max_standbys: 5,
                    additional_wal_senders: 5,
                    role: Some(DbRole::Master),
                    init_mode: Some(DbInitMode::New),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    }
    cd
}

async fn wait<F: FnMut() -> bool>(what: &str, limit: Duration, mut f: F) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_driven_init_crash_restart_and_boot_id() {
    let dir = tempfile::tempdir().unwrap();
    let kv = MemKv::new();
    let store: Arc<dyn Store> = Arc::new(kv.store("stolon/cluster", "fake"));
    let pg = Arc::new(FakePg::new(dir.path().join("postgres")));
    let ks = KeeperLocalState {
        uid: "keeper1".into(),
        cluster_uid: String::new(),
    };
    let keeper = Keeper::new(
        config(dir.path()),
        store.clone(),
        pg.clone(),
        Metrics::new("fake"),
        ks,
        "boot-a".into(),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(keeper.run(cancel.clone()));

    // Clusterdata with a stale boot id: the keeper publishes its info, postgres untouched.
    store
        .force_put_cluster_data(&cd("old-boot", true))
        .await
        .unwrap();
    let mut info = None;
    let start = Instant::now();
    while info.is_none() {
        info = store.get_keepers_info().await.unwrap().remove("keeper1");
        assert!(start.elapsed() < Duration::from_secs(10), "no keeper info");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = info.unwrap();
    assert_eq!(info.boot_uuid, "boot-a");
    assert_eq!(info.cluster_uid, "c1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pg.state().initialized,
        "acted on clusterdata made for another process"
    );

    // Now the clusterdata knows this process: init, roles, start, well before sleepInterval.
    store
        .force_put_cluster_data(&cd("boot-a", true))
        .await
        .unwrap();
    let took = wait("initialised and running", Duration::from_secs(20), || {
        let s = pg.state();
        s.initialized && s.running
    })
    .await;
    eprintln!("clusterdata change -> running new master: {took:?}");
    assert!(took < Duration::from_secs(20));
    let calls = pg.calls();
    let pos = |name: &str| calls.iter().position(|c| c.starts_with(name));
    assert!(pos("init_db") < pos("create_role"), "{calls:?}");
    assert!(pg.state().roles.contains_key("repl"));
    // dbstate records convergence.
    wait("dbstate generation 1", Duration::from_secs(10), || {
        stolon_keeper::state::load_db_state(dir.path())
            .map(|s| s.uid == "db1" && s.generation == 1 && !s.initializing)
            .unwrap_or(false)
    })
    .await;

    // Postgres dies on its own: restarted at once (not after sleepInterval).
    pg.crash();
    let took = wait(
        "postgres restarted after a crash",
        Duration::from_secs(10),
        || pg.state().running,
    )
    .await;
    eprintln!("postgres exit -> restarted: {took:?}");

    // No DB assigned any more: postgres stopped.
    store
        .force_put_cluster_data(&cd("boot-a", false))
        .await
        .unwrap();
    wait("postgres stopped", Duration::from_secs(10), || {
        !pg.state().running
    })
    .await;

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("keeper stops on cancel")
        .unwrap();
}

/// `stolon_keeper_last_sync_success_seconds` moves on every successful pass, as in Stolon, not
/// only when a new generation converges: an alert on its staleness must not fire on a healthy,
/// idle keeper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_sync_success_moves_on_every_successful_pass() {
    let dir = tempfile::tempdir().unwrap();
    let kv = MemKv::new();
    let store: Arc<dyn Store> = Arc::new(kv.store("stolon/cluster", "fake"));
    let pg = Arc::new(FakePg::new(dir.path().join("postgres")));
    let ks = KeeperLocalState {
        uid: "keeper1".into(),
        cluster_uid: String::new(),
    };
    let metrics = Metrics::new("fake");
    let keeper = Keeper::new(
        config(dir.path()),
        store.clone(),
        pg.clone(),
        metrics.clone(),
        ks,
        "boot-a".into(),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(keeper.run(cancel.clone()));

    let mut data = cd("boot-a", true);
    data.cluster.as_mut().unwrap().spec =
        Some(serde_json::from_str(r#"{"initMode":"new","sleepInterval":"1s"}"#).unwrap());
    store.force_put_cluster_data(&data).await.unwrap();
    wait("dbstate generation 1", Duration::from_secs(20), || {
        stolon_keeper::state::load_db_state(dir.path())
            .map(|s| s.uid == "db1" && s.generation == 1 && !s.initializing)
            .unwrap_or(false)
    })
    .await;
    // The db state is saved during the pass; the metric is set when the pass ends.
    wait(
        "last_sync_success set by the converging pass",
        Duration::from_secs(20),
        || metrics.last_sync_success.get() > 0.0,
    )
    .await;
    let converged = metrics.last_sync_success.get();

    // Nothing changes any more (same generation, same clusterdata): the ticks' passes still
    // count as successful loops.
    wait(
        "last_sync_success after an idle pass",
        Duration::from_secs(20),
        || metrics.last_sync_success.get() > converged,
    )
    .await;
    let state = stolon_keeper::state::load_db_state(dir.path()).unwrap();
    assert_eq!(state.generation, 1);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("keeper stops on cancel")
        .unwrap();
}
