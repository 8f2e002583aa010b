//! Named decision scenarios for the sentinel (docs/architecture.md §11 case families), each
//! asserting the whole next clusterdata, built from the previous one plus the expected changes.

use std::time::Duration;

use pretty_assertions::assert_eq;
use stolon_core::duration::GoDuration;
use stolon_core::model::{
    ClusterData, ClusterPhase, DbInitMode, DbRole, DbSpec, DbStatus, FollowConfig, FollowType,
    PostgresState,
};
use stolon_core::sentinel::testing::{ClusterFixture, db_uid};
use stolon_core::sentinel::{Decision, Event, FAKE_STANDBY_NAME, validate_invariants};
use stolon_core::timestamp::Timestamp;

mod common;
use common::*;

/// Steps (ticking a little each time) until `decide` writes nothing.
#[allow(dead_code)]
// ---------------------------------------------------------------------------------------------
// Initialisation
#[test]
fn init_new_with_no_keepers_waits() {
    let mut f = ClusterFixture::new().initializing();
    let d = f.step();
    assert_eq!(d.next, None);
    assert_eq!(d.events, vec![Event::NoKeepersForInitialMaster]);
}

#[test]
fn init_new_with_one_keeper_creates_master_db() {
    let mut f = ClusterFixture::new().initializing().first_run();
    // A keeper appears: the first run only records it, the next sees it as fresh.
    f.keepers_info
        .insert("k1".into(), keeper_info("k1", "i1", None));
    let d = f.step();
    assert_eq!(
        d.next, None,
        "first run after gaining leadership makes no health decisions"
    );
    assert_eq!(d.events, vec![Event::NoKeepersForInitialMaster]);
    f.keepers_info
        .insert("k1".into(), keeper_info("k1", "i2", None));
    let before = f.cd.clone();
    let d = f.step();
    let now = f.now_wall;
    let mut expected = before.clone();
    expected.keepers.insert("k1".into(), new_keeper("k1", now));
    let spec = expected
        .cluster
        .as_ref()
        .and_then(|c| c.spec.clone())
        .expect("spec");
    let e = spec.effective();
    expected.dbs.insert(
        "new0001".into(),
        stolon_core::model::Db {
            uid: "new0001".into(),
            generation: 1,
            change_time: now,
            spec: Some(DbSpec {
                keeper_uid: "k1".into(),
                request_timeout: e.request_timeout,
                max_standbys: e.max_standbys,
                additional_wal_senders: e.additional_wal_senders,
                init_mode: Some(DbInitMode::New),
                role: Some(DbRole::Master),
                followers: Some(vec![]),
                include_previous_config: true,
                ..Default::default()
            }),
            status: DbStatus::default(),
        },
    );
    let c = expected.cluster.as_mut().expect("cluster");
    c.status.master = "new0001".into();
    c.change_time = now;
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
    assert_eq!(
        d.events,
        vec![Event::InitializingCluster {
            db: "new0001".into(),
            keeper: "k1".into()
        }]
    );
}

#[test]
fn init_new_with_many_keepers_uses_the_injected_choice_over_sorted_healthy_keepers() {
    let f = ClusterFixture::new()
        .initializing()
        .keeper("k3")
        .keeper("k1")
        .keeper("k2");
    let input_cd = f.cd.clone();
    let mut chooser = |n: usize| {
        assert_eq!(n, 3);
        2
    };
    let mut uids = stolon_core::uid::SeqUids::new("new");
    let input = stolon_core::sentinel::DecideInput {
        cluster_data: Some(&input_cd),
        keepers_info: &f.keepers_info,
        proxies_info: &f.proxies_info,
        memory: &f.memory,
        initial_spec: None,
        now_mono: f.now_mono,
        proxies_read_at: f.now_mono,
        now_wall: f.now_wall,
    };
    let d = stolon_core::sentinel::decide(&input, &mut uids, &mut chooser);
    let next = next_of(&d);
    assert_eq!(
        next.dbs["new0001"].spec.as_ref().expect("spec").keeper_uid,
        "k3"
    );
    let mut expected = input_cd.clone();
    expected
        .dbs
        .insert("new0001".into(), next.dbs["new0001"].clone());
    let c = expected.cluster.as_mut().expect("cluster");
    c.status.master = "new0001".into();
    c.change_time = f.now_wall;
    expected.change_time = f.now_wall;
    assert_eq!(next, expected);
}

#[test]
fn init_new_failed_init_clears_master_and_retries() {
    let mut f = ClusterFixture::new()
        .fast()
        .initializing()
        .keeper("k1")
        .spec(|s| {
            s.init_timeout = Some(GoDuration::from_secs(10));
        });
    f.step(); // creates new0001 on k1, never converges (k1 reports no state)
    assert_eq!(f.cd.dbs.len(), 1);
    let (before, d) = until(&mut f, &[], |e| matches!(e, Event::DbInitFailed { .. }));
    let now = f.now_wall;
    let mut expected = before.clone();
    expected.dbs.clear();
    let c = expected.cluster.as_mut().expect("cluster");
    c.status.master = String::new();
    c.change_time = now;
    refreshed(&mut expected, now, &["k1"]);
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
    // Next round chooses again.
    let d = f.step();
    assert!(d.events.contains(&Event::InitializingCluster {
        db: "new0002".into(),
        keeper: "k1".into()
    }));
}

#[test]
fn init_new_converged_master_switches_to_normal_and_merges_parameters() {
    let mut f = ClusterFixture::new().initializing().keeper("k1");
    f.step();
    // The keeper initialised the DB and reports it.
    let mut ps = PostgresState {
        uid: "new0001".into(),
        generation: 1,
        listen_address: "127.0.0.1".into(),
        port: "5432".into(),
        healthy: true,
        system_id: "sys1".into(),
        timeline_id: 1,
        xlog_pos: 0x3000,
        ..Default::default()
    };
    ps.pg_parameters
        .insert("max_connections".into(), "100".into());
    f.keepers_info
        .insert("k1".into(), keeper_info("k1", "i-init", Some(ps)));
    f.now_mono += SEC;
    let before = f.cd.clone();
    let d = f.step();
    let now = f.now_wall;
    let mut expected = before.clone();
    let db = expected.dbs.get_mut("new0001").expect("db");
    db.status = DbStatus {
        healthy: true,
        current_generation: 1,
        listen_address: "127.0.0.1".into(),
        port: "5432".into(),
        system_id: "sys1".into(),
        timeline_id: 1,
        xlog_pos: 0x3000,
        pg_parameters: [("max_connections".to_string(), "100".to_string())].into(),
        ..Default::default()
    };
    let s = db.spec.as_mut().expect("spec");
    s.init_mode = Some(DbInitMode::None);
    s.include_previous_config = false;
    s.pg_parameters = [("max_connections".to_string(), "100".to_string())].into();
    db.generation = 2;
    db.change_time = now;
    let c = expected.cluster.as_mut().expect("cluster");
    c.status.phase = Some(ClusterPhase::Normal);
    c.spec.as_mut().expect("spec").pg_parameters =
        Some([("max_connections".to_string(), "100".to_string())].into());
    c.change_time = now;
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
}

#[test]
fn init_existing_uses_the_named_keeper_and_pitr_follows_external_in_a_standby_cluster() {
    let mut f = ClusterFixture::new()
        .initializing()
        .keeper("k1")
        .keeper("k2")
        .spec(|s| {
            s.init_mode = Some(stolon_core::model::ClusterInitMode::Existing);
            s.existing_config = Some(stolon_core::model::ExistingConfig {
                keeper_uid: "k2".into(),
            });
        });
    let d = f.step();
    let db = &next_of(&d).dbs["new0001"];
    let s = db.spec.as_ref().expect("spec");
    assert_eq!(
        (s.keeper_uid.as_str(), s.init_mode),
        ("k2", Some(DbInitMode::Existing))
    );

    let mut f = ClusterFixture::new().initializing().keeper("k1").spec(|s| {
        s.init_mode = Some(stolon_core::model::ClusterInitMode::Pitr);
        s.role = Some(stolon_core::model::ClusterRole::Standby);
        s.pitr_config = Some(stolon_core::model::PitrConfig {
            data_restore_command: "restore %d".into(),
            ..Default::default()
        });
        s.standby_config = Some(stolon_core::model::StandbyConfig {
            standby_settings: Some(stolon_core::model::StandbySettings {
                primary_conninfo: "host=10.0.0.1".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
    });
    let d = f.step();
    let s = next_of(&d).dbs["new0001"].spec.clone().expect("spec");
    assert_eq!(s.init_mode, Some(DbInitMode::Pitr));
    assert_eq!(s.role, Some(DbRole::Standby));
    let fc = s.follow_config.expect("follow config");
    assert_eq!(fc.kind, Some(FollowType::External));
    assert_eq!(
        fc.standby_settings.expect("settings").primary_conninfo,
        "host=10.0.0.1"
    );
}

// ---------------------------------------------------------------------------------------------
// Steady state

#[test]
fn healthy_cluster_is_a_fixed_point() {
    let mut f = ClusterFixture::new()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .proxy("p1");
    let d = f.step();
    assert_eq!(d.next, None, "events: {:?}", d.events);
    f.tick(Duration::from_millis(500), &[]);
    let d = f.step();
    assert_eq!(d.next, None, "events: {:?}", d.events);
    // Synchronous replication already enabled and in sync: nothing to do either.
    let mut f = ClusterFixture::new()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .sync_standbys(&["k2"])
        .proxy("p1");
    f.tick(Duration::from_millis(500), &[]);
    let d = f.step();
    assert_eq!(d.next, None, "events: {:?}", d.events);
}

#[test]
fn first_run_after_gaining_leadership_makes_no_health_decision() {
    // k1 stopped publishing long ago, but a new leader has no history to judge it by.
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .first_run();
    f.tick(Duration::from_secs(60), &["k1"]);
    let d = f.step();
    assert_eq!(d.next, None, "events: {:?}", d.events);
    // It takes failInterval after the new leader's first look to declare k1 failed.
    let (_, d) = until(&mut f, &["k1"], |e| {
        matches!(e, Event::MasterDbFailed { .. })
    });
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, Event::ElectingNewMaster { .. }))
    );
}

// ---------------------------------------------------------------------------------------------
// Failover

#[test]
fn failover_async_elects_standby_and_clears_proxy_target() {
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .proxy("p1");
    f.kill("k1");
    let (before, d) = until(&mut f, &["k1"], |e| {
        matches!(e, Event::ElectingNewMaster { .. })
    });
    let now = f.now_wall;
    let mut expected = before.clone();
    refreshed(&mut expected, now, &["k2"]);
    let k1 = expected.keepers.get_mut("k1").expect("k1");
    k1.status.healthy = false;
    k1.change_time = now;
    let db1 = expected.dbs.get_mut(&db_uid("k1")).expect("db1");
    db1.status.healthy = false;
    let s = spec_mut(&mut expected, "k1");
    s.role = Some(DbRole::Standby);
    s.follow_config = None;
    s.followers = Some(vec![]);
    touch_db(&mut expected, "k1", now, true);
    let followers = internal_followers(&expected, "k2");
    let s = spec_mut(&mut expected, "k2");
    s.role = Some(DbRole::Master);
    s.follow_config = None;
    s.followers = Some(followers);
    touch_db(&mut expected, "k2", now, true);
    let c = expected.cluster.as_mut().expect("cluster");
    c.status.master = db_uid("k2");
    c.change_time = now;
    let p = expected.proxy.as_mut().expect("proxy");
    p.spec.master_db_uid = String::new();
    p.generation += 1;
    p.change_time = now;
    recorded_failover(&mut expected, now, "k1", "k2");
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
    let msgs: Vec<&str> = d.events.iter().map(|e| e.message()).collect();
    for m in [
        "master db is failed",
        "trying to find a new master to replace failed master",
        "electing db as the new master",
    ] {
        assert!(msgs.contains(&m), "missing {m:?} in {msgs:?}");
    }
}

#[test]
fn failover_async_elects_the_most_advanced_standby_within_max_lag() {
    let mut f = ClusterFixture::new()
        .fast()
        .spec(|s| s.max_standby_lag = Some(0x10000))
        .master("k1")
        .standby("k2")
        .standby("k3")
        .standby("k4")
        .standby("k5")
        .xlog("k1", 0x40000)
        .xlog("k2", 0x38000)
        .xlog("k3", 0x3f000)
        .xlog("k4", 0x3a000)
        .xlog("k5", 0x10000) // 0x30000 behind: beyond maxStandbyLag
        .spec(|s| s.max_standbys_per_sender = Some(4));
    f.kill("k1");
    let (before, d) = until(&mut f, &["k1"], |e| {
        matches!(e, Event::ElectingNewMaster { .. })
    });
    let expected =
        expect_async_election(&before, f.now_wall, "k1", "k3", &["k2", "k3", "k4", "k5"]);
    assert_eq!(next_of(&d), expected);

    // The one beyond maxStandbyLag is never elected, even as the only standby left.
    let mut f = ClusterFixture::new()
        .fast()
        .spec(|s| s.max_standby_lag = Some(0x10000))
        .master("k1")
        .standby("k5")
        .xlog("k1", 0x40000)
        .xlog("k5", 0x10000);
    f.kill("k1");
    let (_, d) = until(&mut f, &["k1"], |e| {
        matches!(e, Event::NoEligibleMasters { .. })
    });
    assert!(
        d.events
            .iter()
            .all(|e| !matches!(e, Event::ElectingNewMaster { .. }))
    );
    // The log line says why: k5 is 0x30000 bytes behind.
    let reasons = d
        .events
        .iter()
        .find_map(|e| match e {
            Event::NoEligibleMasters { reasons } => Some(reasons.clone()),
            _ => None,
        })
        .expect("no eligible masters event");
    assert_eq!(
        reasons,
        format!(
            "{} (k5): 196608 bytes behind (maxStandbyLag 65536)",
            db_uid("k5")
        )
    );
    for _ in 0..20 {
        f.tick(SEC, &["k1"]);
        let d = f.step();
        assert!(
            d.events
                .iter()
                .all(|e| !matches!(e, Event::ElectingNewMaster { .. }))
        );
    }
    assert_eq!(
        f.cd.cluster.as_ref().expect("c").status.master,
        db_uid("k1")
    );
}

#[test]
fn failover_sync_elects_only_in_sync_standby() {
    // k3 is more advanced but not a synchronous standby: k2 must win.
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .xlog("k2", 0x1000)
        .xlog("k3", 0x9000)
        .sync_standbys(&["k2"]);
    f.kill("k1");
    let (before, d) = until(&mut f, &["k1"], |e| {
        matches!(e, Event::ElectingNewMaster { .. })
    });
    let now = f.now_wall;
    let mut expected = before.clone();
    refreshed(&mut expected, now, &["k2", "k3"]);
    let k1 = expected.keepers.get_mut("k1").expect("k1");
    k1.status.healthy = false;
    k1.change_time = now;
    expected
        .dbs
        .get_mut(&db_uid("k1"))
        .expect("db")
        .status
        .healthy = false;
    let s = spec_mut(&mut expected, "k1");
    s.role = Some(DbRole::Standby);
    s.follow_config = None;
    s.followers = Some(vec![]);
    s.synchronous_replication = false;
    s.synchronous_standbys = None;
    s.external_synchronous_standbys = None;
    touch_db(&mut expected, "k1", now, true);
    let followers = internal_followers(&expected, "k2");
    let s = spec_mut(&mut expected, "k2");
    s.role = Some(DbRole::Master);
    s.follow_config = None;
    s.followers = Some(followers);
    s.synchronous_replication = true;
    // The other good standby (k3) takes the elected one's place in the list at once: commits on
    // the new master wait for k3 to re-attach and acknowledge (Stolon would list the dead k1).
    s.synchronous_standbys = Some(vec![db_uid("k3")]);
    s.external_synchronous_standbys = Some(vec![]);
    touch_db(&mut expected, "k2", now, true);
    let c = expected.cluster.as_mut().expect("cluster");
    c.status.master = db_uid("k2");
    c.change_time = now;
    let p = expected.proxy.as_mut().expect("proxy");
    p.spec.master_db_uid = String::new();
    p.generation += 1;
    p.change_time = now;
    recorded_failover(&mut expected, now, "k1", "k2");
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
}

#[test]
fn failover_sync_with_no_other_standby_lists_the_old_master() {
    // With no other standby to take the elected one's place, the failed master stands in (as in
    // Stolon): the new master blocks commits rather than acknowledge them without a sync standby.
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .sync_standbys(&["k2"]);
    f.kill("k1");
    let (_, d) = until(&mut f, &["k1"], |e| {
        matches!(e, Event::ElectingNewMaster { .. })
    });
    let next = next_of(&d);
    let s = next.dbs[&db_uid("k2")].spec.clone().expect("spec");
    assert!(s.synchronous_replication);
    assert_eq!(s.synchronous_standbys, Some(vec![db_uid("k1")]));
}

#[test]
fn failover_sync_without_standby_in_both_sets_elects_nobody() {
    // k2 is in the spec list but the master never reported it in sync.
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .sync_standbys(&["k2"]);
    if let Some(db) = f.cd.dbs.get_mut(&db_uid("k1")) {
        db.status.synchronous_standbys = Some(vec![]);
    }
    f.kill("k1");
    let (_, d) = until(&mut f, &["k1"], |e| {
        matches!(e, Event::NoEligibleSyncMasters { .. })
    });
    assert!(
        d.events
            .iter()
            .all(|e| !matches!(e, Event::ElectingNewMaster { .. }))
    );
}

#[test]
fn failover_skips_keepers_that_cannot_be_master() {
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .xlog("k2", 0x9000)
        .xlog("k3", 0x2000)
        .can_be_master("k2", false);
    f.kill("k1");
    let (before, d) = until(&mut f, &["k1"], |e| {
        matches!(e, Event::ElectingNewMaster { .. })
    });
    let expected = expect_async_election(&before, f.now_wall, "k1", "k3", &["k2", "k3"]);
    assert_eq!(next_of(&d), expected);
}

#[test]
fn standby_not_converged_is_not_elected() {
    let mut f = ClusterFixture::new().fast().master("k1").standby("k2");
    // k2's DB is at a generation its keeper has not applied.
    f.cd.dbs.get_mut(&db_uid("k2")).expect("db").generation = 2;
    f.kill("k1");
    let mut saw_no_eligible = false;
    for _ in 0..20 {
        f.tick(SEC, &["k1"]);
        if let Some(ps) = f
            .keepers_info
            .get_mut("k2")
            .and_then(|i| i.postgres_state.as_mut())
        {
            ps.generation = 1;
        }
        let d = f.step();
        assert!(
            d.events
                .iter()
                .all(|e| !matches!(e, Event::ElectingNewMaster { .. }))
        );
        saw_no_eligible |= d
            .events
            .iter()
            .any(|e| matches!(e, Event::NoEligibleMasters { .. }));
    }
    assert!(saw_no_eligible);
    assert_eq!(
        f.cd.cluster.as_ref().expect("c").status.master,
        db_uid("k1")
    );
}

#[test]
fn master_not_converged_triggers_failover() {
    let mut f = ClusterFixture::new().fast().master("k1").standby("k2");
    // The master's keeper never applies generation 2.
    f.cd.dbs.get_mut(&db_uid("k1")).expect("db").generation = 2;
    let mut hit = false;
    for _ in 0..30 {
        f.tick(SEC, &[]);
        if let Some(ps) = f
            .keepers_info
            .get_mut("k1")
            .and_then(|i| i.postgres_state.as_mut())
        {
            ps.generation = 1;
        }
        let d = f.step();
        if d.events
            .iter()
            .any(|e| matches!(e, Event::MasterDbNotConverged { .. }))
        {
            assert!(
                d.events
                    .iter()
                    .any(|e| matches!(e, Event::ElectingNewMaster { .. }))
            );
            hit = true;
            break;
        }
    }
    assert!(hit);
    assert_eq!(
        f.cd.cluster.as_ref().expect("c").status.master,
        db_uid("k2")
    );
}

#[test]
fn new_master_converged_removes_old_master_and_names_it_to_proxies() {
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .proxy("p1");
    f.kill("k1");
    until(&mut f, &["k1"], |e| {
        matches!(e, Event::ElectingNewMaster { .. })
    });
    // The new master converges (tick republishes its generation): the old master's DB goes,
    // but the proxy has not acknowledged the cleared target, so nobody is named yet.
    f.tick(SEC, &["k1"]);
    let before = f.cd.clone();
    let d = f.step();
    let now = f.now_wall;
    let mut expected = before.clone();
    refreshed(&mut expected, now, &["k2"]);
    expected.dbs.remove(&db_uid("k1"));
    expected
        .dbs
        .get_mut(&db_uid("k2"))
        .expect("db")
        .status
        .current_generation = before.dbs[&db_uid("k2")].generation;
    touch_db(&mut expected, "k2", now, false);
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
    assert!(
        d.events.contains(&Event::WaitingForProxies),
        "{:?}",
        d.events
    );
    assert!(d.events.contains(&Event::RemovingOldMasterDb {
        db: db_uid("k1"),
        keeper: "k1".into()
    }));
    // The proxy acknowledges: the new master is named.
    f.proxies_ack();
    f.tick(SEC, &["k1"]);
    let before = f.cd.clone();
    let d = f.step();
    let now = f.now_wall;
    let mut expected = before.clone();
    refreshed(&mut expected, now, &["k2"]);
    let p = expected.proxy.as_mut().expect("proxy");
    p.spec.master_db_uid = db_uid("k2");
    p.spec.enabled_proxies = vec!["p1".into()];
    p.generation += 1;
    p.change_time = now;
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
    assert!(
        d.events
            .contains(&Event::ProxiesRouteToMaster { db: db_uid("k2") })
    );
}

#[test]
fn proxies_acknowledge_before_the_new_master_converges() {
    // The proxies have the cleared target's generation, but the elected standby has not yet
    // reported its new generation (it is still promoting): nobody is named, and the wait is
    // logged as a wait for the master, not for the proxies.
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .proxy("p1");
    f.kill("k1");
    until(&mut f, &["k1"], |e| {
        matches!(e, Event::ElectingNewMaster { .. })
    });
    f.proxies_ack();
    let d = f.step();
    let p = f.cd.proxy.as_ref().expect("proxy");
    assert_eq!(
        p.spec.master_db_uid, "",
        "named before the master converged"
    );
    assert!(
        d.events
            .contains(&Event::WaitingForMasterConvergence { db: db_uid("k2") }),
        "{:?}",
        d.events
    );
    assert!(
        !d.events.contains(&Event::WaitingForProxies),
        "{:?}",
        d.events
    );
    // The new master reports its generation: it is named at once.
    f.tick(SEC, &["k1"]);
    let d = f.step();
    assert!(
        d.events
            .contains(&Event::ProxiesRouteToMaster { db: db_uid("k2") }),
        "{:?}",
        d.events
    );
    assert_eq!(
        f.cd.proxy.as_ref().expect("proxy").spec.master_db_uid,
        db_uid("k2")
    );
}

#[test]
fn enabled_proxies_follow_the_active_proxies() {
    let mut f = ClusterFixture::new().fast().master("k1").proxy("p1");
    f.proxies_info.insert(
        "p2".into(),
        stolon_core::model::ProxyInfo {
            info_uid: "px".into(),
            uid: "p2".into(),
            generation: 0,
            proxy_timeout: 2_000_000_000,
            fences_from_check_start: false,
        },
    );
    let before = f.cd.clone();
    let d = f.step();
    let mut expected = before.clone();
    let p = expected.proxy.as_mut().expect("proxy");
    p.spec.enabled_proxies = vec!["p1".into(), "p2".into()];
    p.generation += 1;
    p.change_time = f.now_wall;
    touch_cluster(&mut expected, f.now_wall);
    assert_eq!(next_of(&d), expected);
    // p2 stops publishing: inactive after 2 * its proxyTimeout.
    until(&mut f, &["p2"], |e| {
        matches!(e, Event::EnabledProxiesChanged { .. })
    });
    assert_eq!(f.proxy_spec().enabled_proxies, vec!["p1".to_string()]);
}

// ---------------------------------------------------------------------------------------------
// Standby placement

#[test]
fn free_keeper_gets_a_resync_standby_up_to_max_standbys_per_sender() {
    let mut f = ClusterFixture::new()
        .spec(|s| s.max_standbys_per_sender = Some(2))
        .master("k1")
        .standby("k2")
        .keeper("k3")
        .keeper("k4");
    let before = f.cd.clone();
    let d = f.step();
    let now = f.now_wall;
    let mut expected = before.clone();
    let e = expected
        .cluster
        .as_ref()
        .and_then(|c| c.spec.clone())
        .expect("s")
        .effective();
    expected.dbs.insert(
        "new0001".into(),
        stolon_core::model::Db {
            uid: "new0001".into(),
            generation: 1,
            change_time: now,
            spec: Some(DbSpec {
                keeper_uid: "k3".into(),
                request_timeout: e.request_timeout,
                max_standbys: e.max_standbys,
                additional_wal_senders: e.additional_wal_senders,
                init_mode: Some(DbInitMode::Resync),
                role: Some(DbRole::Standby),
                followers: Some(vec![]),
                follow_config: Some(FollowConfig {
                    kind: Some(FollowType::Internal),
                    db_uid: db_uid("k1"),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: DbStatus::default(),
        },
    );
    spec_mut(&mut expected, "k1").followers = Some(vec![db_uid("k2"), "new0001".into()]);
    touch_db(&mut expected, "k1", now, true);
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
}

#[test]
fn lowered_max_standbys_per_sender_removes_the_least_advanced_standby() {
    let mut f = ClusterFixture::new()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .xlog("k2", 0x500)
        .xlog("k3", 0x900)
        .spec(|s| s.max_standbys_per_sender = Some(1));
    let before = f.cd.clone();
    let d = f.step();
    let now = f.now_wall;
    let mut expected = before.clone();
    expected.dbs.remove(&db_uid("k2"));
    spec_mut(&mut expected, "k1").followers = Some(vec![db_uid("k3")]);
    touch_db(&mut expected, "k1", now, true);
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
}

#[test]
fn failed_standby_is_replaced_when_enough_good_standbys() {
    let mut f = ClusterFixture::new()
        .fast()
        .spec(|s| s.max_standbys_per_sender = Some(1))
        .master("k1")
        .standby("k2")
        .keeper("k3");
    f.kill("k2");
    // k2 fails; a standby is created on the free keeper k3.
    let (_, d) = until(&mut f, &["k2"], |e| {
        matches!(e, Event::AddingStandby { .. })
    });
    assert!(d.events.contains(&Event::AddingStandby {
        db: "new0001".into(),
        keeper: "k3".into()
    }));
}

#[test]
fn dead_keeper_without_db_is_removed() {
    let mut f = ClusterFixture::new()
        .fast()
        .spec(|s| s.dead_keeper_removal_interval = Some(GoDuration::from_secs(10)))
        .master("k1")
        .standby("k2")
        .keeper("k9")
        .spec(|s| s.max_standbys_per_sender = Some(1));
    f.kill("k9");
    let (before, d) = until(&mut f, &["k9"], |e| {
        matches!(e, Event::RemovingDeadKeeper { .. })
    });
    let now = f.now_wall;
    let mut expected = before.clone();
    expected.keepers.remove("k9");
    refreshed(&mut expected, now, &["k1", "k2"]);
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
    // A keeper with a DB is never removed.
    let mut f = ClusterFixture::new()
        .fast()
        .spec(|s| s.dead_keeper_removal_interval = Some(GoDuration::from_secs(5)))
        .master("k1")
        .standby("k2");
    f.kill("k2");
    for _ in 0..30 {
        f.tick(SEC, &["k2"]);
        f.step();
    }
    assert!(f.cd.keepers.contains_key("k2"));
}

// ---------------------------------------------------------------------------------------------
// Spec propagation

#[test]
fn spec_parameters_propagate_to_db_specs_with_generation_bumps() {
    let mut f = ClusterFixture::new().master("k1").standby("k2");
    f.cd.cluster
        .as_mut()
        .and_then(|c| c.spec.as_mut())
        .expect("spec")
        .pg_parameters = Some([("work_mem".to_string(), "8MB".to_string())].into());
    f.cd.cluster
        .as_mut()
        .and_then(|c| c.spec.as_mut())
        .expect("spec")
        .additional_master_replication_slots = Some(vec!["slot1".into()]);
    let before = f.cd.clone();
    let d = f.step();
    let now = f.now_wall;
    let mut expected = before.clone();
    for k in ["k1", "k2"] {
        spec_mut(&mut expected, k).pg_parameters =
            [("work_mem".to_string(), "8MB".to_string())].into();
        touch_db(&mut expected, k, now, true);
    }
    spec_mut(&mut expected, "k1").additional_replication_slots = Some(vec!["slot1".into()]);
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
}

// ---------------------------------------------------------------------------------------------
// Synchronous replication

#[test]
fn sync_enable_lists_the_most_advanced_standby_in_two_steps() {
    let mut f = ClusterFixture::new()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .xlog("k2", 0x500)
        .xlog("k3", 0x900)
        .spec(|s| s.synchronous_replication = Some(true));
    let before = f.cd.clone();
    let d = f.step();
    let now = f.now_wall;
    let mut expected = before.clone();
    let s = spec_mut(&mut expected, "k1");
    s.synchronous_replication = true;
    s.synchronous_standbys = Some(vec![db_uid("k3")]);
    s.external_synchronous_standbys = Some(vec![]);
    touch_db(&mut expected, "k1", now, true);
    expected
        .dbs
        .get_mut(&db_uid("k1"))
        .expect("db")
        .status
        .synchronous_standbys = Some(vec![]);
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);

    // Until the master reports k3 in sync, the sentinel waits.
    f.tick(SEC, &[]);
    let d = f.step();
    assert!(
        d.events
            .contains(&Event::WaitingForSyncStandbys { db: db_uid("k1") })
    );
    // Reported in sync: the status follows, nothing else.
    let f2 = f.clone().reported_sync(&["k3"]);
    let mut f = f2;
    let before = f.cd.clone();
    let d = f.step();
    let mut expected = before.clone();
    expected
        .dbs
        .get_mut(&db_uid("k1"))
        .expect("db")
        .status
        .synchronous_standbys = Some(vec![db_uid("k3")]);
    touch_db(&mut expected, "k1", f.now_wall, false);
    touch_cluster(&mut expected, f.now_wall);
    assert_eq!(next_of(&d), expected);
}

#[test]
fn sync_without_standbys_uses_the_fake_standby() {
    let mut f = ClusterFixture::new()
        .master("k1")
        .spec(|s| s.synchronous_replication = Some(true));
    let before = f.cd.clone();
    let d = f.step();
    let now = f.now_wall;
    let mut expected = before.clone();
    let s = spec_mut(&mut expected, "k1");
    s.synchronous_replication = true;
    s.synchronous_standbys = Some(vec![]);
    s.external_synchronous_standbys = Some(vec![FAKE_STANDBY_NAME.into()]);
    touch_db(&mut expected, "k1", now, true);
    expected
        .dbs
        .get_mut(&db_uid("k1"))
        .expect("db")
        .status
        .synchronous_standbys = Some(vec![]);
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
}

#[test]
fn sync_min_zero_never_uses_the_fake_standby() {
    let mut f = ClusterFixture::new().master("k1").spec(|s| {
        s.synchronous_replication = Some(true);
        s.min_synchronous_standbys = Some(0);
    });
    let before = f.cd.clone();
    let d = f.step();
    assert_eq!(
        next_of(&d),
        expect_sync_set(&before, f.now_wall, "k1", &[], &[])
    );
    // With min 0, a failed sync standby is dropped without a fake replacement.
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .sync_standbys(&["k2"])
        .spec(|s| s.min_synchronous_standbys = Some(0));
    f.kill("k2");
    until(&mut f, &["k2"], |e| {
        matches!(e, Event::SyncStandbysChanged { .. })
    });
    let s = f.cd.dbs[&db_uid("k1")].spec.clone().expect("spec");
    assert_eq!(s.synchronous_standbys, Some(vec![]));
    assert_eq!(s.external_synchronous_standbys, Some(vec![]));
}

#[test]
fn sync_failed_standby_is_replaced_in_two_steps() {
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .sync_standbys(&["k2"])
        .reported_sync(&["k2"]);
    f.kill("k2");
    // Step 1: k2 failed -> spec becomes status ({} since the master no longer reports k2? no:
    // status keeps k2 as known in sync) then k3 is added next to k2 (old ∪ new).
    let (_, d) = until(&mut f, &["k2"], |e| {
        matches!(e, Event::SyncStandbysChanged { .. })
    });
    let s = next_of(&d).dbs[&db_uid("k1")].spec.clone().expect("spec");
    assert_eq!(
        s.synchronous_standbys,
        Some(vec![db_uid("k2"), db_uid("k3")])
    );
    // Step 2: once k3 is reported in sync, k2 is dropped.
    f = f.reported_sync(&["k3"]);
    until(&mut f, &["k2"], |e| {
        matches!(e, Event::SyncStandbysChanged { .. })
    });
    let db = &f.cd.dbs[&db_uid("k1")];
    assert_eq!(
        db.spec.as_ref().expect("s").synchronous_standbys,
        Some(vec![db_uid("k3")])
    );
    assert_eq!(db.status.synchronous_standbys, Some(vec![db_uid("k3")]));
}

#[test]
fn sync_min_max_two_lists_two_sorted_standbys() {
    let mut f = ClusterFixture::new()
        .master("k1")
        .standby("k3")
        .standby("k2")
        .standby("k4")
        .xlog("k2", 0x900)
        .xlog("k3", 0x100)
        .xlog("k4", 0x500)
        .spec(|s| {
            s.synchronous_replication = Some(true);
            s.min_synchronous_standbys = Some(2);
            s.max_synchronous_standbys = Some(2);
        });
    let before = f.cd.clone();
    let d = f.step();
    // The two most advanced (k2, k4), listed sorted.
    assert_eq!(
        next_of(&d),
        expect_sync_set(&before, f.now_wall, "k1", &["k2", "k4"], &[])
    );
}

#[test]
fn sync_skips_keepers_that_cannot_be_synchronous_replicas() {
    let mut f = ClusterFixture::new()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .xlog("k2", 0x900)
        .xlog("k3", 0x100)
        .can_be_sync("k2", false)
        .spec(|s| s.synchronous_replication = Some(true));
    let before = f.cd.clone();
    let d = f.step();
    assert_eq!(
        next_of(&d),
        expect_sync_set(&before, f.now_wall, "k1", &["k3"], &[])
    );
}

#[test]
fn sync_disable_clears_sync_fields() {
    let mut f = ClusterFixture::new()
        .master("k1")
        .standby("k2")
        .sync_standbys(&["k2"])
        .spec(|s| s.synchronous_replication = Some(false));
    let before = f.cd.clone();
    let d = f.step();
    let now = f.now_wall;
    let mut expected = before.clone();
    let s = spec_mut(&mut expected, "k1");
    s.synchronous_replication = false;
    s.synchronous_standbys = None;
    s.external_synchronous_standbys = None;
    let db = expected.dbs.get_mut(&db_uid("k1")).expect("db");
    db.status.synchronous_standbys = None;
    touch_db(&mut expected, "k1", now, true);
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
}

/// Makes `keeper` report its DB on `timeline`, switched to from timeline 1 at the DB's current
/// WAL position (a promoted standby), or back on timeline 1.
fn report_timeline(f: &mut ClusterFixture, keeper: &str, timeline: u64) {
    if let Some(ps) = f
        .keepers_info
        .get_mut(keeper)
        .and_then(|i| i.postgres_state.as_mut())
    {
        ps.timeline_id = timeline;
        ps.timelines_history = if timeline > 1 {
            vec![stolon_core::model::TimelineHistory {
                timeline_id: 1,
                switch_point: ps.xlog_pos,
                reason: String::new(),
            }]
        } else {
            vec![]
        };
    }
}

/// Makes `keeper` report `generation` for its DB (its keeper is still applying a newer spec).
fn report_generation(f: &mut ClusterFixture, keeper: &str, generation: i64) {
    if let Some(ps) = f
        .keepers_info
        .get_mut(keeper)
        .and_then(|i| i.postgres_state.as_mut())
    {
        ps.generation = generation;
    }
}

/// One decision with the invariants checked; returns the clusterdata before it and the decision.
fn checked_step(f: &mut ClusterFixture) -> (ClusterData, Decision) {
    let before = f.cd.clone();
    let d = f.step();
    if let Some(next) = &d.next {
        validate_invariants(Some(&before), next).expect("invariants hold");
    }
    (before, d)
}

/// After a synchronous failover (k1 dies, k2 elected listing `elected_list`) the new master
/// converges first (promoted, on a new timeline), then its standbys are re-pointed to it. While
/// the listed synchronous standby k3 is still on the old timeline, and while its keeper applies
/// the re-pointing (its DB converging), k3 stays listed; Stolon swapped it for the fake standby
/// and then listed it again (`[x] -> [stolonfakestandby] -> [x]`), so commits stayed blocked
/// for a sentinel round after k3 had re-attached.
/// `relisted`: k2's list changes in the round it converges (the old master is dropped from it),
/// so k2 has a new generation to apply in the next round.
fn assert_listed_standby_kept_while_it_repoints(
    mut f: ClusterFixture,
    elected_list: &[&str],
    relisted: bool,
) {
    f.kill("k1");
    let (_, d) = until(&mut f, &["k1"], |e| {
        matches!(e, Event::ElectingNewMaster { .. })
    });
    let s = next_of(&d).dbs[&db_uid("k2")].spec.clone().expect("spec");
    let listed: Vec<String> = elected_list.iter().map(|k| db_uid(k)).collect();
    assert_eq!(s.synchronous_standbys, Some(listed));
    assert_eq!(s.external_synchronous_standbys, Some(vec![]));

    // k2 converges, promoted on timeline 2: the fenced k1 goes, k3 (still on timeline 1, so not
    // among the best standbys, and in sync with nobody yet) stays listed and is re-pointed.
    f.tick(SEC, &["k1"]);
    report_timeline(&mut f, "k2", 2);
    let (before, d) = checked_step(&mut f);
    assert!(d.events.contains(&Event::RemovingOldMasterDb {
        db: db_uid("k1"),
        keeper: "k1".into()
    }));
    let now = f.now_wall;
    let mut expected = before.clone();
    refreshed(&mut expected, now, &["k2", "k3"]);
    expected.dbs.remove(&db_uid("k1"));
    let k2 = expected.dbs.get_mut(&db_uid("k2")).expect("db");
    k2.status.current_generation = k2.generation;
    k2.status.timeline_id = 2;
    k2.status.timelines_history = vec![stolon_core::model::TimelineHistory {
        timeline_id: 1,
        switch_point: k2.status.xlog_pos,
        reason: String::new(),
    }];
    k2.status.synchronous_standbys = Some(vec![]);
    let s = spec_mut(&mut expected, "k2");
    s.synchronous_standbys = Some(vec![db_uid("k3")]);
    s.external_synchronous_standbys = Some(vec![]);
    touch_db(&mut expected, "k2", now, relisted);
    spec_mut(&mut expected, "k3").follow_config = Some(FollowConfig {
        kind: Some(FollowType::Internal),
        db_uid: db_uid("k2"),
        ..Default::default()
    });
    touch_db(&mut expected, "k3", now, true);
    touch_cluster(&mut expected, now);
    let next = next_of(&d);
    assert_eq!(next, expected);
    let k3 = &next.dbs[&db_uid("k3")];
    let k3_applied = k3.status.current_generation;

    // k3's keeper is still re-pointing (it reports its previous generation): k3 stays listed.
    f.tick(SEC, &["k1"]);
    report_generation(&mut f, "k3", k3_applied);
    let (before, d) = checked_step(&mut f);
    let now = f.now_wall;
    let mut expected = before.clone();
    refreshed(&mut expected, now, &["k2", "k3"]);
    if relisted {
        let k2 = expected.dbs.get_mut(&db_uid("k2")).expect("db");
        assert_ne!(k2.status.current_generation, k2.generation);
        k2.status.current_generation = k2.generation;
        touch_db(&mut expected, "k2", now, false);
    }
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
    assert!(
        !d.events
            .iter()
            .any(|e| matches!(e, Event::SyncStandbysChanged { .. })),
        "{:?}",
        d.events
    );

    // k3 re-attaches (following k2 on timeline 2), then k2 reports it in sync: the list never
    // changes, the status follows.
    f.tick(SEC, &["k1"]);
    report_timeline(&mut f, "k3", 2);
    let (_, d) = checked_step(&mut f);
    assert!(
        !d.events
            .iter()
            .any(|e| matches!(e, Event::SyncStandbysChanged { .. })),
        "{:?}",
        d.events
    );
    f = f.reported_sync(&["k3"]);
    for _ in 0..3 {
        f.tick(SEC, &["k1"]);
        let (_, d) = checked_step(&mut f);
        assert!(
            !d.events
                .iter()
                .any(|e| matches!(e, Event::SyncStandbysChanged { .. })),
            "{:?}",
            d.events
        );
    }
    let k2 = &f.cd.dbs[&db_uid("k2")];
    let s = k2.spec.clone().expect("spec");
    assert_eq!(s.synchronous_standbys, Some(vec![db_uid("k3")]));
    assert_eq!(s.external_synchronous_standbys, Some(vec![]));
    assert_eq!(k2.status.synchronous_standbys, Some(vec![db_uid("k3")]));
}

#[test]
fn failover_sync_keeps_the_old_sync_standby_listed_while_it_repoints_instead_of_the_fake() {
    // maxSynchronousStandbys 2: k2 and k3 are both in sync with k1. k1 dies; k2 is elected and
    // lists k1 (standing in for itself, no other standby is free) and k3.
    let f = ClusterFixture::new()
        .fast()
        .spec(|s| s.max_synchronous_standbys = Some(2))
        .master("k1")
        .standby("k2")
        .standby("k3")
        .sync_standbys(&["k2", "k3"])
        .proxy("p1");
    assert_listed_standby_kept_while_it_repoints(f, &["k1", "k3"], true);
}

#[test]
fn failover_sync_keeps_the_replacement_standby_listed_while_it_repoints_instead_of_the_fake() {
    // maxSynchronousStandbys 1: k2 is in sync with k1, k3 is asynchronous. k1 dies; k2 is
    // elected and lists k3 in its own place.
    let f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .sync_standbys(&["k2"])
        .proxy("p1");
    assert_listed_standby_kept_while_it_repoints(f, &["k3"], false);
}

// ---------------------------------------------------------------------------------------------
// Keeper health details

#[test]
fn keeper_info_stays_fresh_for_one_and_a_half_sleep_intervals() {
    // sleepInterval 1 s, failInterval 3 s. k2's keeper last published at t0; k1's keeps publishing.
    let mut f = ClusterFixture::new().fast().master("k1").standby("k2");
    let t0 = f.now_mono;

    // 1.2 sleepInterval after it was first seen, k2's info still counts: no DB error, and both
    // keepers get their lastHealthyTime refreshed.
    f.tick(Duration::from_millis(1200), &["k2"]);
    let before = f.cd.clone();
    let d = f.step();
    let now = f.now_wall;
    let mut expected = before.clone();
    refreshed(&mut expected, now, &["k1", "k2"]);
    touch_cluster(&mut expected, now);
    assert_eq!(next_of(&d), expected);
    assert_eq!(d.events, vec![]);
    assert!(f.memory.db_error_since.is_empty());
    assert!(f.memory.keeper_error_since.is_empty());
    // The sentinel is woken just after k2's info leaves its window (t0 + 1.5 sleepInterval).
    assert_eq!(d.wake_at, Some(t0 + Duration::from_millis(1501)));

    // 1.6 sleepInterval after: stale. The DB error timer starts now, the keeper's failure clock
    // at its last proof of life; both are still within failInterval, so nothing is written.
    f.tick(Duration::from_millis(400), &["k2"]);
    let d = f.step();
    assert_eq!(d.next, None, "events: {:?}", d.events);
    assert_eq!(
        d.events,
        vec![Event::NoKeeperInfo {
            db: db_uid("k2"),
            keeper: "k2".into()
        }]
    );
    assert_eq!(f.memory.keeper_error_since.get("k2"), Some(&t0));
    assert_eq!(
        f.memory.db_error_since.get(&db_uid("k2")),
        Some(&f.now_mono)
    );
}

#[test]
fn a_live_keeper_publishing_late_by_half_an_interval_never_looks_silent() {
    // sleepInterval 1 s; the sentinel decides every 100 ms. k2's keeper publishes every 0.75 s
    // but some publishes come up to 0.7 s late (gaps of up to 1.4 sleepInterval).
    let mut f = ClusterFixture::new().fast().master("k1").standby("k2");
    let gaps_ms = [750u64, 1400, 750, 1300, 750, 1400, 750];
    for gap in gaps_ms {
        let steps = gap / 100;
        for i in 1..=steps {
            let publish = i == steps;
            f.tick(
                Duration::from_millis(100),
                if publish { &[] } else { &["k2"] },
            );
            let d = f.step();
            assert!(
                !d.events
                    .iter()
                    .any(|e| matches!(e, Event::NoKeeperInfo { .. })),
                "{:?}",
                d.events
            );
        }
    }
    assert!(f.memory.db_error_since.is_empty());
    assert!(f.cd.dbs[&db_uid("k2")].status.healthy);
}

#[test]
fn force_fail_is_a_one_shot_that_triggers_failover() {
    let mut f = ClusterFixture::new().master("k1").standby("k2");
    f.cd.keepers.get_mut("k1").expect("k1").status.force_fail = true;
    f.tick(Duration::from_millis(100), &[]);
    let d = f.step();
    assert!(d.events.contains(&Event::KeeperForceFailed {
        keeper: "k1".into()
    }));
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, Event::ElectingNewMaster { .. }))
    );
    let next = next_of(&d);
    assert!(!next.keepers["k1"].status.force_fail);
    assert_eq!(next.cluster.expect("c").status.master, db_uid("k2"));
}

#[test]
fn dead_master_fails_fail_interval_after_its_last_report() {
    // Default timings (sleepInterval 5s, failInterval 20s), decisions every second. The master's
    // keeper reports at t = 0.1 s and never again. Stolon starts the failure clock only when it
    // notices the missing update (sleepInterval later), failing at ~25 s; here the clock starts at
    // the last report, so the master fails at ~20.1 s and not before.
    let mut f = ClusterFixture::new().master("k1").standby("k2");
    f.tick(Duration::from_millis(100), &[]);
    f.step();
    let mut failed_at = None;
    for second in 1..=30u64 {
        f.tick(Duration::from_secs(1), &["k1"]);
        let d = f.step();
        if d.events
            .iter()
            .any(|e| matches!(e, Event::MasterDbFailed { .. }))
        {
            failed_at = Some(second);
            break;
        }
    }
    // t = 0.1 + second; failInterval after the last report is t = 20.1, first seen at second 21.
    assert_eq!(failed_at, Some(21));
}

#[test]
fn force_fail_of_the_master_waits_for_an_eligible_standby() {
    // The only standby may not be master: the request is kept, not lost, while no standby can
    // replace the master.
    let mut f = ClusterFixture::new()
        .master("k1")
        .standby("k2")
        .can_be_master("k2", false);
    f.cd.keepers.get_mut("k1").expect("k1").status.force_fail = true;
    f.tick(Duration::from_millis(100), &[]);
    let d = f.step();
    assert!(d.events.contains(&Event::KeeperForceFailed {
        keeper: "k1".into()
    }));
    assert!(
        !d.events
            .iter()
            .any(|e| matches!(e, Event::ElectingNewMaster { .. }))
    );
    let next = next_of(&d);
    assert!(
        next.keepers["k1"].status.force_fail,
        "kept for the next decision"
    );
    assert_eq!(next.cluster.expect("c").status.master, db_uid("k1"));
}

#[test]
fn keeper_reporting_another_db_uid_makes_its_db_fail() {
    let mut f = ClusterFixture::new().fast().master("k1").standby("k2");
    if let Some(ps) = f
        .keepers_info
        .get_mut("k2")
        .and_then(|i| i.postgres_state.as_mut())
    {
        ps.uid = "other".into();
    }
    let (_, d) = until(&mut f, &[], |e| matches!(e, Event::UnexpectedDbUid { .. }));
    assert!(d.events.contains(&Event::UnexpectedDbUid {
        db: db_uid("k2"),
        keeper: "k2".into(),
        reported: "other".into()
    }));
}

#[test]
fn a_new_standby_still_initialising_is_not_doubled() {
    let mut f = ClusterFixture::new()
        .spec(|s| s.max_standbys_per_sender = Some(1))
        .master("k1")
        .keeper("k2")
        .keeper("k3");
    let d = f.step();
    assert!(d.events.contains(&Event::AddingStandby {
        db: "new0001".into(),
        keeper: "k2".into()
    }));
    // k2 has not reported its new DB yet: no second standby on k3.
    f.tick(Duration::from_millis(500), &[]);
    let d = f.step();
    assert!(
        d.events
            .iter()
            .all(|e| !matches!(e, Event::AddingStandby { .. })),
        "{:?}",
        d.events
    );
    assert_eq!(f.cd.dbs.len(), 2);
}

#[test]
fn stalled_standby_missing_wal_on_the_master_is_recreated() {
    let mut f = ClusterFixture::new()
        .master("k1")
        .standby("k2")
        .xlog("k1", 0x5_0000_0000)
        .xlog("k2", 0x1_0000_0000);
    f.cd.dbs.get_mut(&db_uid("k2")).expect("db").generation = 2;
    f.refresh_db_specs();
    // The master's oldest WAL segment is 000000010000000400000000: k2 needs segment 1/0.
    if let Some(ps) = f
        .keepers_info
        .get_mut("k1")
        .and_then(|i| i.postgres_state.as_mut())
    {
        ps.older_wal_file = "000000010000000400000000".into();
    }
    if let Some(db) = f.cd.dbs.get_mut(&db_uid("k1")) {
        db.status.older_wal_file = "000000010000000400000000".into();
    }
    let mut removed = None;
    for _ in 0..20 {
        f.tick(SEC, &[]);
        let before = f.cd.clone();
        let d = f.step();
        if d.events
            .iter()
            .any(|e| matches!(e, Event::RemovingDbCannotSync { .. }))
        {
            removed = Some((before, d));
            break;
        }
    }
    let (before, d) = removed.expect("k2 removed after more than 10 stalled reports");
    let now = f.now_wall;
    let mut expected = before.clone();
    expected.dbs.remove(&db_uid("k2"));
    // k2 is free again: it gets a fresh resync standby in the same round.
    let next = next_of(&d);
    let new_db = next.dbs.get("new0001").expect("recreated standby").clone();
    assert_eq!(new_db.spec.as_ref().expect("s").keeper_uid, "k2");
    assert_eq!(
        new_db.spec.as_ref().expect("s").init_mode,
        Some(DbInitMode::Resync)
    );
    expected.dbs.insert("new0001".into(), new_db);
    spec_mut(&mut expected, "k1").followers = Some(vec!["new0001".into()]);
    touch_db(&mut expected, "k1", now, true);
    touch_cluster(&mut expected, now);
    assert_eq!(next, expected);
}

#[test]
fn standby_on_a_forked_timeline_is_removed() {
    let mut f = ClusterFixture::new().master("k1").standby("k2");
    // The master is on timeline 2, branched at 0x800; k2 stayed on timeline 1 past it.
    if let Some(db) = f.cd.dbs.get_mut(&db_uid("k1")) {
        db.status.timeline_id = 2;
        db.status.timelines_history = vec![stolon_core::model::TimelineHistory {
            timeline_id: 1,
            switch_point: 0x800,
            reason: String::new(),
        }];
    }
    if let Some(ps) = f
        .keepers_info
        .get_mut("k1")
        .and_then(|i| i.postgres_state.as_mut())
    {
        ps.timeline_id = 2;
        ps.timelines_history = f.cd.dbs[&db_uid("k1")].status.timelines_history.clone();
    }
    let before = f.cd.clone();
    let d = f.step();
    let now = f.now_wall;
    let mut expected = before.clone();
    expected.dbs.remove(&db_uid("k2"));
    let next = next_of(&d);
    // k2 is recreated as a fresh standby.
    let new_db = next.dbs.get("new0001").expect("recreated standby").clone();
    expected.dbs.insert("new0001".into(), new_db);
    spec_mut(&mut expected, "k1").followers = Some(vec!["new0001".into()]);
    touch_db(&mut expected, "k1", now, true);
    touch_cluster(&mut expected, now);
    assert_eq!(next, expected);
    assert!(d.events.contains(&Event::RemovingInvalidDb {
        db: db_uid("k2"),
        keeper: "k2".into()
    }));
}

#[test]
fn stolon_mid_failover_clusterdata_is_repaired_by_fencing_the_old_master() {
    // Stolon keeps the old master at role master until the new one converges.
    let mut f = ClusterFixture::new().master("k1").standby("k2");
    if let Some(s) =
        f.cd.dbs
            .get_mut(&db_uid("k2"))
            .and_then(|d| d.spec.as_mut())
    {
        s.role = Some(DbRole::Master);
        s.follow_config = None;
    }
    // The new master has not converged yet (its keeper still reports generation 1).
    f.cd.dbs.get_mut(&db_uid("k2")).expect("db").generation = 2;
    if let Some(c) = f.cd.cluster.as_mut() {
        c.status.master = db_uid("k2");
    }
    if let Some(p) = f.cd.proxy.as_mut() {
        p.spec.master_db_uid = String::new();
    }
    let d = f.decide();
    let next = next_of(&d);
    validate_invariants(None, &next).expect("one master-type db");
    let s = next.dbs[&db_uid("k1")].spec.clone().expect("spec");
    assert_eq!((s.role, s.follow_config), (Some(DbRole::Standby), None));
}

// ---------------------------------------------------------------------------------------------
// Store write rate at idle

/// Steps an idle, healthy cluster every `step` for `total` (every keeper and proxy republishing
/// each step, more often than real ones do) and returns the wall times of the clusterdata writes,
/// checking that each write only refreshes lastHealthyTime (and the change times that follow).
fn idle_writes(f: &mut ClusterFixture, step: Duration, total: Duration) -> Vec<Timestamp> {
    let mut writes = Vec::new();
    let steps = total.as_millis() / step.as_millis();
    for _ in 0..steps {
        f.tick(step, &[]);
        let before = f.cd.clone();
        let d = f.decide();
        if let Some(next) = &d.next {
            let mut expected = before.clone();
            let keepers: Vec<String> = expected.keepers.keys().cloned().collect();
            let keepers: Vec<&str> = keepers.iter().map(String::as_str).collect();
            refreshed(&mut expected, f.now_wall, &keepers);
            expected.change_time = f.now_wall;
            assert_eq!(
                *next, expected,
                "an idle write changed more than lastHealthyTime"
            );
            writes.push(f.now_wall);
        }
        f.apply(&d);
    }
    writes
}

fn gaps_at_least(writes: &[Timestamp], min: Duration) {
    for w in writes.windows(2) {
        let gap = w[1].unix_nanos() - w[0].unix_nanos();
        assert!(
            gap >= min.as_nanos() as i128,
            "two idle writes {gap} ns apart (sleepInterval {min:?})"
        );
    }
}

#[test]
fn idle_cluster_writes_clusterdata_at_most_once_per_sleep_interval() {
    // Default spec: sleepInterval 5s. One minute of idle, checked every 250 ms.
    let mut f = ClusterFixture::new()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .proxy("p1");
    let writes = idle_writes(&mut f, Duration::from_millis(250), Duration::from_secs(60));
    assert!(writes.len() <= 60 / 5, "{} writes in 60 s", writes.len());
    gaps_at_least(&writes, Duration::from_secs(5));
    // The refresh does happen (dead-keeper removal reads lastHealthyTime).
    assert!(!writes.is_empty(), "lastHealthyTime never refreshed");
}

#[test]
fn idle_write_rate_follows_a_short_sleep_interval() {
    // sleepInterval 1s, checked every 100 ms for 20 s: at most 20 writes, never two within 1 s.
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .proxy("p1");
    let writes = idle_writes(&mut f, Duration::from_millis(100), Duration::from_secs(20));
    assert!(writes.len() <= 20, "{} writes in 20 s", writes.len());
    gaps_at_least(&writes, Duration::from_secs(1));
}

#[test]
fn idle_checks_within_a_sleep_interval_write_nothing() {
    // Any number of checks (store changes wake the leader) inside one sleepInterval after a
    // refresh: no write.
    let mut f = ClusterFixture::new().master("k1").standby("k2").proxy("p1");
    for _ in 0..40 {
        f.tick(Duration::from_millis(100), &[]);
        let d = f.step();
        assert_eq!(d.next, None, "events: {:?}", d.events);
    }
}

#[test]
fn a_store_outage_the_sentinel_saw_too_does_not_fail_the_master() {
    // sleepInterval 1 s, failInterval 3 s. The store is unusable for 10 s (too slow for every
    // request, or no quorum): keepers cannot publish and the sentinel cannot read, so it makes no
    // decision. Its first read afterwards comes before the keepers' next publish lands, so it
    // still sees their pre-outage infos. Their silence is the sentinel's own blindness, not a
    // failure: the master must not be failed over (with the real binaries, a slow store made
    // exactly this needless failover).
    let mut f = ClusterFixture::new().fast().master("k1").standby("k2");
    f.tick(Duration::from_millis(100), &[]);
    f.step();
    f.tick(Duration::from_secs(10), &["k1", "k2"]);
    let d = f.step();
    assert!(
        !d.events
            .iter()
            .any(|e| matches!(e, Event::MasterDbFailed { .. })),
        "{:?}",
        d.events
    );
    f.tick(Duration::from_millis(500), &[]);
    let d = f.step();
    assert!(
        !d.events
            .iter()
            .any(|e| matches!(e, Event::MasterDbFailed { .. })),
        "{:?}",
        d.events
    );
    assert_eq!(
        f.cd.cluster.as_ref().expect("c").status.master,
        db_uid("k1")
    );

    // A master that stays silent once the sentinel can look again is still failed, failInterval
    // after the sentinel's sight came back.
    let mut failed_after_ms = None;
    for step in 1..=100u64 {
        f.tick(Duration::from_millis(100), &["k1"]);
        let d = f.step();
        if d.events
            .iter()
            .any(|e| matches!(e, Event::MasterDbFailed { .. }))
        {
            failed_after_ms = Some(step * 100);
            break;
        }
    }
    let ms = failed_after_ms.expect("the silent master is failed eventually");
    assert!(
        (3000..=4000).contains(&ms),
        "failed {ms} ms after its last report"
    );
}
