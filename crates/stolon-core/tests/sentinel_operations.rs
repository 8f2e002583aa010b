//! Named decision scenarios for the operations of docs/operations.md: keeper priority and
//! `--can-be-master` (which DB an election picks, which keeper the initial master is created
//! on) and pause (no automatic failover). Each election scenario asserts the whole next
//! clusterdata.

use pretty_assertions::assert_eq;
use stolon_core::model::{ClusterData, DbRole, KeeperInfo, MasterChange, MasterChangeReason};
use stolon_core::sentinel::priority::{
    DEFAULT_KEEPER_PRIORITY, initial_master_candidates, rank_new_masters,
};
use stolon_core::sentinel::testing::{ClusterFixture, db_uid};
use stolon_core::sentinel::{Decision, Event};
use stolon_core::timestamp::Timestamp;

mod common;
use common::*;

fn is_election(e: &Event) -> bool {
    matches!(e, Event::ElectingNewMaster { .. })
}

fn reasons_of(d: &Decision) -> String {
    d.events
        .iter()
        .find_map(|e| match e {
            Event::NoEligibleMasters { reasons } => Some(reasons.clone()),
            _ => None,
        })
        .expect("no eligible masters event")
}

#[test]
fn failover_elects_the_higher_priority_standby_when_both_are_as_far_ahead() {
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .xlog("k2", 0x5000)
        .xlog("k3", 0x5000)
        .priority("k3", 2);
    f.kill("k1");
    let (before, d) = until(&mut f, &["k1"], is_election);
    assert_eq!(
        next_of(&d),
        expect_async_election(&before, f.now_wall, "k1", "k3", &["k2", "k3"])
    );
}

#[test]
fn failover_elects_the_higher_priority_standby_over_a_more_advanced_one_within_max_lag() {
    let mut f = ClusterFixture::new()
        .fast()
        .spec(|s| s.max_standby_lag = Some(0x10000))
        .master("k1")
        .standby("k2")
        .standby("k3")
        .xlog("k1", 0x40000)
        .xlog("k2", 0x3f000)
        .xlog("k3", 0x38000)
        .priority("k2", 5)
        .priority("k3", 7);
    f.kill("k1");
    let (before, d) = until(&mut f, &["k1"], is_election);
    assert_eq!(
        next_of(&d),
        expect_async_election(&before, f.now_wall, "k1", "k3", &["k2", "k3"])
    );
}

#[test]
fn failover_with_equal_priorities_elects_the_most_advanced_standby() {
    // An explicit priority equal to the default behaves as no priority at all.
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .xlog("k2", 0x3000)
        .xlog("k3", 0x9000)
        .priority("k2", DEFAULT_KEEPER_PRIORITY);
    f.kill("k1");
    let (before, d) = until(&mut f, &["k1"], is_election);
    assert_eq!(
        next_of(&d),
        expect_async_election(&before, f.now_wall, "k1", "k3", &["k2", "k3"])
    );
}

#[test]
fn failover_never_elects_a_higher_priority_standby_beyond_max_standby_lag() {
    let mut f = ClusterFixture::new()
        .fast()
        .spec(|s| s.max_standby_lag = Some(0x10000))
        .master("k1")
        .standby("k2")
        .standby("k3")
        .xlog("k1", 0x40000)
        .xlog("k2", 0x3f000)
        .xlog("k3", 0x10000) // 0x30000 behind
        .priority("k3", 10);
    f.kill("k1");
    let (before, d) = until(&mut f, &["k1"], is_election);
    assert_eq!(
        next_of(&d),
        expect_async_election(&before, f.now_wall, "k1", "k2", &["k2", "k3"])
    );
}

#[test]
fn failover_never_elects_a_priority_zero_standby_automatically() {
    // The most advanced standby has priority 0: the other one is elected.
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .xlog("k2", 0x9000)
        .xlog("k3", 0x2000)
        .priority("k2", 0);
    f.kill("k1");
    let (before, d) = until(&mut f, &["k1"], is_election);
    assert_eq!(
        next_of(&d),
        expect_async_election(&before, f.now_wall, "k1", "k3", &["k2", "k3"])
    );

    // As the only standby it is never elected, and the log line says why.
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .priority("k2", 0);
    f.kill("k1");
    let (_, d) = until(&mut f, &["k1"], |e| {
        matches!(e, Event::NoEligibleMasters { .. })
    });
    assert!(!d.events.iter().any(is_election));
    assert_eq!(
        reasons_of(&d),
        format!(
            "{} (k2): keeper priority 0 (never elected automatically)",
            db_uid("k2")
        )
    );
    for _ in 0..20 {
        f.tick(SEC, &["k1"]);
        let d = f.step();
        assert!(!d.events.iter().any(is_election));
    }
    assert_eq!(
        f.cd.cluster.as_ref().expect("c").status.master,
        db_uid("k1")
    );
}

#[test]
fn failover_sync_elects_the_higher_priority_standby_of_the_synchronous_set() {
    let mut f = ClusterFixture::new()
        .fast()
        .spec(|s| s.max_synchronous_standbys = Some(2))
        .master("k1")
        .standby("k2")
        .standby("k3")
        .standby("k4")
        .xlog("k2", 0x9000)
        .xlog("k3", 0x5000)
        .xlog("k4", 0x9000)
        .priority("k3", 3)
        .priority("k4", 9)
        .sync_standbys(&["k2", "k3"]);
    f.kill("k1");
    let (before, d) = until(&mut f, &["k1"], is_election);
    // k4 has the highest priority but is not synchronous: k3, the best of the set, wins.
    let next = next_of(&d);
    assert_eq!(
        next.cluster.as_ref().expect("c").status.master,
        db_uid("k3")
    );
    let master = next.dbs.get(&db_uid("k3")).expect("db");
    let s = master.spec.as_ref().expect("spec");
    assert_eq!(s.role, Some(DbRole::Master));
    // The synchronous set carries over, the other good standby taking the new master's place.
    assert_eq!(
        s.synchronous_standbys,
        Some(vec![db_uid("k2"), db_uid("k4")])
    );
    // The old master is fenced.
    let old = next.dbs[&db_uid("k1")].spec.as_ref().expect("spec");
    assert_eq!(
        (old.role, old.follow_config.clone()),
        (Some(DbRole::Standby), None)
    );
    assert!(before.dbs[&db_uid("k3")].spec.as_ref().expect("s").role == Some(DbRole::Standby));
}

#[test]
fn keeper_priority_is_copied_from_its_info_into_clusterdata() {
    let mut f = ClusterFixture::new().fast().master("k1").standby("k2");
    if let Some(i) = f.keepers_info.get_mut("k2") {
        i.priority = Some(4);
    }
    f.tick(SEC, &[]);
    let before = f.cd.clone();
    let d = f.step();
    let mut expected = before.clone();
    let now = f.now_wall;
    for k in ["k1", "k2"] {
        let k = expected.keepers.get_mut(k).expect("keeper");
        k.status.last_healthy_time = now;
        k.change_time = now;
    }
    expected.keepers.get_mut("k2").expect("k2").status.priority = Some(4);
    expected.change_time = now;
    assert_eq!(next_of(&d), expected);

    // A keeper that stops publishing a priority goes back to the default.
    if let Some(i) = f.keepers_info.get_mut("k2") {
        i.priority = None;
    }
    f.tick(SEC, &[]);
    let d = f.step();
    assert_eq!(next_of(&d).keepers["k2"].status.priority, None);
}

#[test]
fn rank_new_masters_orders_by_priority_then_most_advanced_and_drops_priority_zero() {
    let f = ClusterFixture::new()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .standby("k4")
        .standby("k5")
        .xlog("k2", 0x9000)
        .xlog("k3", 0x3000)
        .xlog("k4", 0x5000)
        .xlog("k5", 0xa000)
        .priority("k3", 2)
        .priority("k4", 2)
        .priority("k5", 0);
    let all: Vec<_> =
        f.cd.dbs
            .values()
            .filter(|d| d.uid != db_uid("k1"))
            .collect();
    let ranked: Vec<String> = rank_new_masters(&f.cd, all)
        .into_iter()
        .map(|d| d.uid.clone())
        .collect();
    assert_eq!(ranked, vec![db_uid("k4"), db_uid("k3"), db_uid("k2")]);
}

#[test]
fn init_new_never_chooses_a_keeper_that_cannot_be_master() {
    // k1 sorts first and the injected choice is always the first candidate: without the
    // `--can-be-master` check k1 would be chosen.
    let mut f = ClusterFixture::new()
        .initializing()
        .keeper("k1")
        .keeper("k2")
        .can_be_master("k1", false);
    let d = f.step();
    let next = next_of(&d);
    assert_eq!(
        d.events,
        vec![Event::InitializingCluster {
            db: "new0001".into(),
            keeper: "k2".into()
        }]
    );
    assert_eq!(next.cluster.as_ref().expect("c").status.master, "new0001");
    assert_eq!(
        next.dbs["new0001"].spec.as_ref().expect("spec").keeper_uid,
        "k2"
    );
    assert_eq!(next.dbs.len(), 1);

    // With only keepers that cannot be master, the sentinel waits.
    let mut f = ClusterFixture::new()
        .initializing()
        .keeper("k1")
        .can_be_master("k1", false);
    let d = f.step();
    assert_eq!(d.next, None);
    assert_eq!(d.events, vec![Event::NoKeepersForInitialMaster]);
}

#[test]
fn init_new_chooses_among_the_highest_priority_keepers_and_never_priority_zero() {
    let f = ClusterFixture::new()
        .initializing()
        .keeper("k1")
        .keeper("k2")
        .keeper("k3")
        .keeper("k4")
        .priority("k1", 0)
        .priority("k2", 3)
        .priority("k4", 3);
    let got: Vec<&str> = initial_master_candidates(&f.cd)
        .into_iter()
        .map(String::as_str)
        .collect();
    assert_eq!(got, vec!["k2", "k4"]);

    let mut f = ClusterFixture::new()
        .initializing()
        .keeper("k1")
        .priority("k1", 0);
    let d = f.step();
    assert_eq!(d.next, None);
    assert_eq!(d.events, vec![Event::NoKeepersForInitialMaster]);
}

#[test]
fn keeper_info_priority_is_optional_in_json() {
    let info: KeeperInfo = stolon_core::model::json::from_str(r#"{"uid":"k1"}"#).expect("json");
    assert_eq!(info.priority, None);
    let info: KeeperInfo =
        stolon_core::model::json::from_str(r#"{"uid":"k1","priority":0}"#).expect("json");
    assert_eq!(info.priority, Some(0));
}

fn set_paused(f: &mut ClusterFixture, paused: Option<bool>) {
    f.cd.cluster
        .as_mut()
        .and_then(|c| c.spec.as_mut())
        .expect("spec")
        .paused = paused;
}

#[test]
fn paused_cluster_never_replaces_a_failed_master_then_fails_over_once_resumed() {
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .proxy("p1");
    set_paused(&mut f, Some(true));
    f.kill("k1");
    // The master's keeper is declared unhealthy as usual...
    let (before, d) = until(&mut f, &["k1"], |e| {
        matches!(e, Event::KeeperUnhealthy { .. })
    });
    let now = f.now_wall;
    let mut expected = before.clone();
    let k2 = expected.keepers.get_mut("k2").expect("k2");
    if now.unix_nanos() - k2.status.last_healthy_time.unix_nanos() >= 1_000_000_000 {
        k2.status.last_healthy_time = now;
        k2.change_time = now;
    }
    let k1 = expected.keepers.get_mut("k1").expect("k1");
    k1.status.healthy = false;
    k1.change_time = now;
    let db = expected.dbs.get_mut(&db_uid("k1")).expect("db");
    db.status.healthy = false;
    db.change_time = now;
    expected.change_time = now;
    assert_eq!(next_of(&d), expected);
    assert_eq!(
        d.events,
        vec![
            Event::KeeperUnhealthy {
                keeper: "k1".into()
            },
            Event::MasterDbFailed {
                db: db_uid("k1"),
                keeper: "k1".into()
            },
            Event::FailoverPaused {
                db: db_uid("k1"),
                keeper: "k1".into()
            },
        ]
    );
    // ... but for as long as the pause lasts (here 3 x failInterval and more) nobody replaces it.
    for _ in 0..12 {
        f.tick(SEC, &["k1"]);
        f.proxies_ack();
        let d = f.step();
        assert!(!d.events.iter().any(is_election), "{:?}", d.events);
        assert!(
            d.events
                .iter()
                .any(|e| matches!(e, Event::FailoverPaused { .. }))
        );
    }
    assert_eq!(
        f.cd.cluster.as_ref().expect("c").status.master,
        db_uid("k1")
    );
    // Resumed: the next decision elects the standby.
    set_paused(&mut f, None);
    f.tick(SEC, &["k1"]);
    let before = f.cd.clone();
    let d = f.step();
    assert!(d.events.iter().any(is_election), "{:?}", d.events);
    let mut expected = expect_async_election(&before, f.now_wall, "k1", "k2", &["k2"]);
    // k1 was declared unhealthy long ago: its keeper entry does not change now.
    expected
        .keepers
        .insert("k1".into(), before.keepers["k1"].clone());
    assert_eq!(next_of(&d), expected);
}

#[test]
fn paused_cluster_still_obeys_failkeeper_on_the_master() {
    let mut f = ClusterFixture::new().fast().master("k1").standby("k2");
    set_paused(&mut f, Some(true));
    f.cd.keepers.get_mut("k1").expect("k1").status.force_fail = true;
    f.tick(SEC, &[]);
    let d = f.step();
    assert!(
        d.events.contains(&Event::ElectingNewMaster {
            db: db_uid("k2"),
            keeper: "k2".into()
        }),
        "{:?}",
        d.events
    );
    assert!(
        !d.events
            .iter()
            .any(|e| matches!(e, Event::FailoverPaused { .. }))
    );
    assert_eq!(
        f.cd.cluster.as_ref().expect("c").status.master,
        db_uid("k2")
    );
}

#[test]
fn paused_cluster_keeps_a_master_that_does_not_converge() {
    let mut f = ClusterFixture::new().fast().master("k1").standby("k2");
    set_paused(&mut f, Some(true));
    // The master's keeper never applies generation 2.
    f.cd.dbs.get_mut(&db_uid("k1")).expect("db").generation = 2;
    let mut held = 0;
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
        assert!(!d.events.iter().any(is_election), "{:?}", d.events);
        if d.events
            .iter()
            .any(|e| matches!(e, Event::FailoverPaused { .. }))
        {
            held += 1;
        }
    }
    assert!(held > 0, "the convergence timeout never expired");
    assert_eq!(
        f.cd.cluster.as_ref().expect("c").status.master,
        db_uid("k1")
    );
}

#[test]
fn unpaused_healthy_cluster_is_unchanged_by_the_paused_field() {
    // `paused: false` is the same as absent: a healthy cluster stays a fixed point.
    let mut f = ClusterFixture::new().fast().master("k1").standby("k2");
    set_paused(&mut f, Some(false));
    let d = f.step();
    assert_eq!(d.next, None);
}

fn change(i: u32) -> MasterChange {
    MasterChange {
        time: Timestamp::from_unix_nanos(i128::from(i) * 1_000_000_000),
        reason: MasterChangeReason::Switchover,
        old_master_db_uid: format!("old{i}"),
        old_master_keeper_uid: format!("ko{i}"),
        new_master_db_uid: format!("new{i}"),
        new_master_keeper_uid: format!("kn{i}"),
        old_master_xlog_pos: u64::from(i),
        write_pause: None,
    }
}

#[test]
fn failkeeper_on_the_master_is_recorded_as_forced() {
    let mut f = ClusterFixture::new().fast().master("k1").standby("k2");
    f.cd.keepers.get_mut("k1").expect("k1").status.force_fail = true;
    f.tick(SEC, &[]);
    let d = f.step();
    assert!(d.events.iter().any(is_election), "{:?}", d.events);
    assert_eq!(
        next_of(&d).history,
        vec![MasterChange {
            time: f.now_wall,
            reason: MasterChangeReason::Forced,
            old_master_db_uid: db_uid("k1"),
            old_master_keeper_uid: "k1".into(),
            new_master_db_uid: db_uid("k2"),
            new_master_keeper_uid: "k2".into(),
            old_master_xlog_pos: 0x1000,
            write_pause: None,
        }]
    );
}

#[test]
fn history_keeps_the_last_fifty_master_changes() {
    let mut f = ClusterFixture::new().fast().master("k1").standby("k2");
    f.cd.history = (0..50).map(change).collect();
    f.kill("k1");
    let (before, d) = until(&mut f, &["k1"], is_election);
    let next = next_of(&d);
    assert_eq!(next.history.len(), 50);
    assert_eq!(next.history[..49], before.history[1..]);
    let last = next.history.last().expect("entry");
    assert_eq!(
        (last.reason, last.new_master_db_uid.as_str()),
        (MasterChangeReason::Failed, db_uid("k2").as_str())
    );
    assert_eq!(
        stolon_core::model::history::MAX_HISTORY_ENTRIES,
        next.history.len()
    );
}

#[test]
fn history_is_an_optional_clusterdata_key() {
    let mut f = ClusterFixture::new().master("k1");
    let text = serde_json::to_string(&f.cd).expect("json");
    assert!(!text.contains("\"history\""), "{text}");
    f.cd.history = vec![change(7)];
    let text = serde_json::to_string(&f.cd).expect("json");
    assert!(
        text.contains(
            r#""history":[{"time":"1970-01-01T00:00:07Z","reason":"switchover","oldMasterDBUID":"old7","oldMasterKeeperUID":"ko7","newMasterDBUID":"new7","newMasterKeeperUID":"kn7","oldMasterXLogPos":7}]"#
        ),
        "{text}"
    );
    let back: ClusterData = stolon_core::model::json::from_str(&text).expect("decode");
    assert_eq!(back, f.cd);
    // `null`, as Go writes an empty slice, reads as empty.
    let v = text.replace(
        &text[text.find("\"history\"").expect("key")..text.len() - 1],
        "\"history\":null",
    );
    let back: ClusterData = stolon_core::model::json::from_str(&v).expect("decode");
    assert!(back.history.is_empty());
}
