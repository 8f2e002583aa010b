//! Helpers shared by the sentinel's scenario tests: driving the fixture, and the whole
//! clusterdata expected after common decisions.
#![allow(dead_code, unused_imports)]

use std::time::Duration;

use pretty_assertions::assert_eq;
use stolon_core::duration::GoDuration;
use stolon_core::model::{
    ClusterData, ClusterPhase, DbInitMode, DbRole, DbSpec, DbStatus, FollowConfig, FollowType,
    Keeper, KeeperInfo, KeeperSpec, KeeperStatus, MasterChange, MasterChangeReason,
    PostgresBinaryVersion, PostgresState,
};
use stolon_core::sentinel::testing::{ClusterFixture, db_uid};
use stolon_core::sentinel::{Decision, Event, FAKE_STANDBY_NAME, validate_invariants};
use stolon_core::timestamp::Timestamp;

pub const SEC: Duration = Duration::from_secs(1);

/// Ticks one second at a time (keepers in `silent` do not republish) until a decision carries an
/// event matching `pred`; returns the clusterdata before that decision and the decision.
pub fn until(
    f: &mut ClusterFixture,
    silent: &[&str],
    pred: impl Fn(&Event) -> bool,
) -> (ClusterData, Decision) {
    for _ in 0..60 {
        f.tick(SEC, silent);
        let before = f.cd.clone();
        let d = f.decide();
        if let Some(next) = &d.next {
            validate_invariants(Some(&before), next).expect("invariants hold");
        }
        let hit = d.events.iter().any(&pred);
        f.apply(&d);
        if hit {
            return (before, d);
        }
    }
    panic!("event never happened; last events: {:?}", f.decide().events);
}

pub fn settle(f: &mut ClusterFixture, silent: &[&str]) {
    for _ in 0..30 {
        let before = f.cd.clone();
        let d = f.decide();
        match &d.next {
            None => {
                f.apply(&d);
                return;
            }
            Some(next) => validate_invariants(Some(&before), next).expect("invariants hold"),
        }
        f.apply(&d);
        f.proxies_ack();
        f.tick(Duration::from_millis(100), silent);
    }
    panic!("did not settle: {:?}", f.decide().events);
}

pub fn next_of(d: &Decision) -> ClusterData {
    d.next.clone().expect("a clusterdata write")
}

/// Expected effect of a fresh info on healthy keepers: lastHealthyTime refreshed.
pub fn refreshed(cd: &mut ClusterData, now: Timestamp, keepers: &[&str]) {
    for k in keepers {
        let k = cd.keepers.get_mut(*k).expect("keeper");
        k.status.last_healthy_time = now;
        k.change_time = now;
    }
}

pub fn touch_db(cd: &mut ClusterData, keeper: &str, now: Timestamp, bump: bool) {
    let db = cd.dbs.get_mut(&db_uid(keeper)).expect("db");
    db.change_time = now;
    if bump {
        db.generation += 1;
    }
}

pub fn spec_mut<'a>(cd: &'a mut ClusterData, keeper: &str) -> &'a mut DbSpec {
    cd.dbs
        .get_mut(&db_uid(keeper))
        .and_then(|d| d.spec.as_mut())
        .expect("db spec")
}

pub fn touch_cluster(cd: &mut ClusterData, now: Timestamp) {
    cd.change_time = now;
}

pub fn new_keeper(uid: &str, now: Timestamp) -> Keeper {
    Keeper {
        uid: uid.into(),
        generation: 1,
        change_time: now,
        spec: Some(KeeperSpec {}),
        status: KeeperStatus {
            healthy: true,
            last_healthy_time: now,
            boot_uuid: format!("boot_{uid}"),
            postgres_binary_version: PostgresBinaryVersion { maj: 15, min: 0 },
            ..Default::default()
        },
    }
}

pub fn keeper_info(uid: &str, info_uid: &str, ps: Option<PostgresState>) -> KeeperInfo {
    KeeperInfo {
        info_uid: info_uid.into(),
        uid: uid.into(),
        cluster_uid: "cluster1".into(),
        boot_uuid: format!("boot_{uid}"),
        postgres_binary_version: PostgresBinaryVersion { maj: 15, min: 0 },
        postgres_state: ps,
        ..Default::default()
    }
}

/// Expected history entry of the failover of `old`'s DB to `new`'s at `now` (the old master's
/// last reported position carried over).
pub fn recorded_failover(cd: &mut ClusterData, now: Timestamp, old: &str, new: &str) {
    let old_pos = cd.dbs[&db_uid(old)].status.xlog_pos;
    cd.history.push(MasterChange {
        time: now,
        reason: MasterChangeReason::Failed,
        old_master_db_uid: db_uid(old),
        old_master_keeper_uid: old.into(),
        new_master_db_uid: db_uid(new),
        new_master_keeper_uid: new.into(),
        old_master_xlog_pos: old_pos,
        write_pause: None,
    });
}

/// The whole clusterdata expected right after an asynchronous election of `new`'s DB replacing
/// the failed `old` (alive keepers `alive` refreshed).
/// The new master's followers right after an election: every internal standby (they still
/// follow the old master), so it creates their slots as it is promoted.
pub fn internal_followers(cd: &ClusterData, master: &str) -> Vec<String> {
    let m = db_uid(master);
    cd.dbs
        .values()
        .filter(|db| {
            db.uid != m
                && db
                    .spec
                    .as_ref()
                    .and_then(|s| s.follow_config.as_ref())
                    .is_some_and(|f| f.kind == Some(FollowType::Internal))
        })
        .map(|db| db.uid.clone())
        .collect()
}

pub fn expect_async_election(
    before: &ClusterData,
    now: Timestamp,
    old: &str,
    new: &str,
    alive: &[&str],
) -> ClusterData {
    let mut expected = before.clone();
    refreshed(&mut expected, now, alive);
    let k = expected.keepers.get_mut(old).expect("old keeper");
    k.status.healthy = false;
    k.change_time = now;
    expected
        .dbs
        .get_mut(&db_uid(old))
        .expect("db")
        .status
        .healthy = false;
    let s = spec_mut(&mut expected, old);
    s.role = Some(DbRole::Standby);
    s.follow_config = None;
    s.followers = Some(vec![]);
    touch_db(&mut expected, old, now, true);
    let followers = internal_followers(&expected, new);
    let s = spec_mut(&mut expected, new);
    s.role = Some(DbRole::Master);
    s.follow_config = None;
    s.followers = Some(followers);
    touch_db(&mut expected, new, now, true);
    let c = expected.cluster.as_mut().expect("cluster");
    c.status.master = db_uid(new);
    c.change_time = now;
    let p = expected.proxy.as_mut().expect("proxy");
    if !p.spec.master_db_uid.is_empty() {
        p.spec.master_db_uid = String::new();
        p.generation += 1;
        p.change_time = now;
    }
    recorded_failover(&mut expected, now, old, new);
    touch_cluster(&mut expected, now);
    expected
}

/// The whole clusterdata expected when the master's synchronous set is (re)computed.
pub fn expect_sync_set(
    before: &ClusterData,
    now: Timestamp,
    master: &str,
    set: &[&str],
    external: &[&str],
) -> ClusterData {
    let mut expected = before.clone();
    let s = spec_mut(&mut expected, master);
    s.synchronous_replication = true;
    s.synchronous_standbys = Some(set.iter().map(|k| db_uid(k)).collect());
    s.external_synchronous_standbys = Some(external.iter().map(|e| e.to_string()).collect());
    touch_db(&mut expected, master, now, true);
    expected
        .dbs
        .get_mut(&db_uid(master))
        .expect("db")
        .status
        .synchronous_standbys = Some(vec![]);
    touch_cluster(&mut expected, now);
    expected
}
