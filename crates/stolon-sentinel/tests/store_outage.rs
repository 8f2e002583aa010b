//! A store outage must not make the leader spin. Before the fix, a check that failed before
//! deciding left the previous decision time (already past) in place, so the loop woke at once,
//! failed again, and so on: thousands of store calls a second for as long as the outage lasted.
//! Now the leader retries once per `sleepInterval` (plus store wake-ups) and resumes when the
//! store is back.
//!
//! Real time, no timing assertion: the test counts the store calls made during a 4 s outage with
//! a 1 s `sleepInterval` (a handful expected; a spinning loop makes tens of thousands).

use std::sync::Arc;
use std::time::Duration;

use stolon_core::GoDuration;
use stolon_core::model::ClusterData;
use stolon_core::sentinel::testing::ClusterFixture;
use stolon_sentinel::Config;
use stolon_store::unreliable::{FaultHandle, Unreliable};
use stolon_store::{Election, MemStore, Store, StoreConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const INFO_TTL: Duration = Duration::from_secs(600);
/// Store calls tolerated during the outage: 4 resync periods, store wake-ups and slack.
const MAX_CALLS_DURING_OUTAGE: u64 = 200;

fn config() -> Config {
    Config {
        uid: "sentinel1".into(),
        store: StoreConfig::in_memory("mem"),
        initial_spec: None,
        metrics_addr: None,
    }
}

async fn change_time(store: &Arc<dyn Store>) -> Option<stolon_core::timestamp::Timestamp> {
    store
        .get_cluster_data()
        .await
        .ok()
        .and_then(|r| r.data)
        .map(|c: ClusterData| c.change_time)
}

/// Republishes the keeper's info (a new infoUID wakes the leader) every 200 ms until the
/// leader rewrites clusterdata, or fails after `limit`.
async fn wait_for_a_write(
    store: &Arc<dyn Store>,
    info: &mut stolon_core::model::KeeperInfo,
    limit: Duration,
    what: &str,
) {
    let seen = change_time(store).await;
    let start = Instant::now();
    for n in 0u64.. {
        if change_time(store).await != seen {
            return;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        info.info_uid = format!("{what}-{n}");
        store
            .put_keeper_info(info, INFO_TTL)
            .await
            .expect("publish keeper info");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_retries_at_the_resync_period_and_recovers() {
    let f = ClusterFixture::new()
        .spec(|s| {
            s.sleep_interval = Some(GoDuration::from_secs(1));
            s.fail_interval = Some(GoDuration::from_secs(600));
            s.convergence_timeout = Some(GoDuration::from_secs(600));
        })
        .master("k1");
    let mem = MemStore::new("mem");
    let election: Arc<dyn Election> = Arc::new(mem.election());
    let direct: Arc<dyn Store> = Arc::new(mem);
    let faults = FaultHandle::new();
    let flaky: Arc<dyn Store> = Arc::new(Unreliable::new(direct.clone(), faults.clone()));
    direct
        .force_put_cluster_data(&f.cd)
        .await
        .expect("seed clusterdata");
    let mut info = f.keepers_info.get("k1").expect("k1 info").clone();
    direct
        .put_keeper_info(&info, INFO_TTL)
        .await
        .expect("seed keeper info");

    let cancel = CancellationToken::new();
    let task = tokio::spawn(stolon_sentinel::run(
        config(),
        flaky,
        election,
        cancel.clone(),
    ));
    // The leader is deciding (and has a decision time: the info's freshness window).
    wait_for_a_write(&direct, &mut info, Duration::from_secs(30), "first write").await;

    faults.set_down(true);
    // Let the info go stale so the decision time passes during the outage.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let calls = faults.failed_calls();
    faults.set_down(false);
    assert!(
        calls > 0,
        "the sentinel made no store call during the outage"
    );
    assert!(
        calls <= MAX_CALLS_DURING_OUTAGE,
        "the sentinel made {calls} store calls in a 4 s outage: it spins instead of retrying \
         at its resync period"
    );

    wait_for_a_write(
        &direct,
        &mut info,
        Duration::from_secs(30),
        "write after the outage",
    )
    .await;
    cancel.cancel();
    let res = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the sentinel stops on cancel")
        .expect("sentinel task");
    assert!(res.is_ok(), "sentinel run: {res:?}");
}
