//! Named decision scenarios for faster recovery from partial faults: a synchronous standby the
//! master reports as no longer in sync (docs/architecture.md §6.7), and a new leader judging
//! keepers that were already silent before it took over (§6.1).

use std::collections::BTreeMap;
use std::time::Duration;

use pretty_assertions::assert_eq;
use stolon_core::model::ClusterData;
use stolon_core::sentinel::testing::{ClusterFixture, db_uid};
use stolon_core::sentinel::{Decision, Event, memory_at_takeover, validate_invariants};
use stolon_core::timestamp::Timestamp;

mod common;
use common::{next_of, spec_mut};

const HALF: Duration = Duration::from_millis(500);

/// `before` with the master `k1`'s synchronous list set to `list` (a spec change: generation
/// bump) and its known-in-sync status set to `status`.
fn expect_sync(
    before: &ClusterData,
    now: Timestamp,
    list: &[&str],
    status: &[&str],
) -> ClusterData {
    let mut expected = before.clone();
    let s = spec_mut(&mut expected, "k1");
    s.synchronous_standbys = Some(list.iter().map(|k| db_uid(k)).collect());
    s.external_synchronous_standbys = Some(vec![]);
    let db = expected.dbs.get_mut(&db_uid("k1")).expect("db");
    // The (perfect) keeper reported the generation it had been given.
    db.status.current_generation = db.generation;
    db.generation += 1;
    db.change_time = now;
    db.status.synchronous_standbys = Some(status.iter().map(|k| db_uid(k)).collect());
    expected.change_time = now;
    expected
}

/// One decision half a second later (every keeper republishes), invariants checked.
fn step(f: &mut ClusterFixture) -> (ClusterData, Decision) {
    f.tick(HALF, &[]);
    let before = f.cd.clone();
    let d = f.decide();
    if let Some(next) = &d.next {
        validate_invariants(Some(&before), next).expect("invariants hold");
    }
    f.apply(&d);
    (before, d)
}

fn three_nodes_sync_on_k2() -> ClusterFixture {
    ClusterFixture::new()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .sync_standbys(&["k2"])
        .reported_sync(&["k2"])
}

#[test]
fn sync_standby_the_master_no_longer_reports_is_replaced_at_once() {
    let mut f = three_nodes_sync_on_k2();
    let (_, d) = step(&mut f);
    assert_eq!(
        d.next, None,
        "in sync: a fixed point; events {:?}",
        d.events
    );

    // The master's walsender for k2 ended: k2 is no longer in its in-sync list, while k2's
    // keeper still looks healthy (its failInterval is far away).
    f = f.reported_sync(&[]);
    let (before, d) = step(&mut f);
    // Step one of the two-step change: k3 is listed next to k2, which stays known in sync.
    assert_eq!(
        next_of(&d),
        expect_sync(&before, f.now_wall, &["k2", "k3"], &["k2"])
    );
    assert!(d.events.contains(&Event::SyncStandbysChanged {
        db: db_uid("k1"),
        previous: db_uid("k2"),
        current: format!("{},{}", db_uid("k2"), db_uid("k3")),
    }));

    // Until the master reports k3 in sync, the list stays.
    let (_, d) = step(&mut f);
    assert!(
        d.events
            .contains(&Event::WaitingForSyncStandbys { db: db_uid("k1") }),
        "events {:?}",
        d.events
    );
    assert_eq!(
        f.cd.dbs[&db_uid("k1")]
            .spec
            .as_ref()
            .and_then(|s| s.synchronous_standbys.clone()),
        Some(vec![db_uid("k2"), db_uid("k3")])
    );

    // Step two: k3 reported in sync, k2 (still not) is dropped.
    f = f.reported_sync(&["k3"]);
    let (before, d) = step(&mut f);
    assert_eq!(
        next_of(&d),
        expect_sync(&before, f.now_wall, &["k3"], &["k3"])
    );

    // Once the master's keeper reports that it applied the list, that is a fixed point.
    step(&mut f);
    let (_, d) = step(&mut f);
    assert_eq!(d.next, None, "events {:?}", d.events);
}

#[test]
fn sync_standby_lost_while_another_stays_in_sync_is_dropped_before_the_set_grows() {
    // Two synchronous standbys of at most two; k3 is lost, k2 stays in sync, k4 is free.
    let mut f = ClusterFixture::new()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .standby("k4")
        .spec(|s| s.max_synchronous_standbys = Some(2))
        .sync_standbys(&["k2", "k3"])
        .reported_sync(&["k2", "k3"]);
    let (_, d) = step(&mut f);
    assert_eq!(d.next, None, "events {:?}", d.events);

    f = f.reported_sync(&["k2"]);
    let (before, d) = step(&mut f);
    // k3 leaves at once (k2 has every acknowledged commit), nothing is added in the same
    // change, so commits no longer wait for k3 nor for a newcomer.
    assert_eq!(
        next_of(&d),
        expect_sync(&before, f.now_wall, &["k2"], &["k2"])
    );

    // The next round grows the set back to two, in two steps as always.
    let (before, d) = step(&mut f);
    assert_eq!(
        next_of(&d),
        expect_sync(&before, f.now_wall, &["k2", "k4"], &["k2"])
    );
}

#[test]
fn sync_standby_is_kept_when_there_is_no_current_report_from_the_master() {
    // The master's keeper is silent: its last report is not this round's, nothing changes
    // until its keeper fails.
    let mut f = three_nodes_sync_on_k2();
    step(&mut f);
    f = f.reported_sync(&[]);
    f.tick(Duration::from_secs(10), &["k1"]);
    let before = f.cd.clone();
    let d = f.decide();
    if let Some(next) = &d.next {
        assert_eq!(
            next.dbs[&db_uid("k1")].spec,
            before.dbs[&db_uid("k1")].spec,
            "master spec changed without a current report; events {:?}",
            d.events
        );
    }

    // A leader's first round has no report to judge by either.
    let mut f = three_nodes_sync_on_k2().reported_sync(&[]).first_run();
    f.tick(HALF, &[]);
    let d = f.decide();
    assert_eq!(d.next, None, "events {:?}", d.events);
}

#[test]
fn sync_standby_with_nowhere_to_go_stays_listed() {
    // Two nodes: nobody can replace k2, and the placeholder would block commits just the same;
    // k2 stays listed so commits resume as soon as it streams again.
    let mut f = ClusterFixture::new()
        .master("k1")
        .standby("k2")
        .sync_standbys(&["k2"])
        .reported_sync(&["k2"]);
    step(&mut f);
    f = f.reported_sync(&[]);
    let (_, d) = step(&mut f);
    assert_eq!(d.next, None, "events {:?}", d.events);
}

#[test]
fn after_a_sync_loss_only_the_standby_known_in_sync_is_electable() {
    // k2 was lost and k3 listed next to it (step one); the master then dies before k3 is
    // reported in sync: k3 may lack acknowledged commits and must not be elected.
    let mut f = three_nodes_sync_on_k2();
    f = f.reported_sync(&[]);
    step(&mut f);
    assert_eq!(
        f.cd.dbs[&db_uid("k1")].status.synchronous_standbys,
        Some(vec![db_uid("k2")])
    );
    f.kill("k1");
    let mut elected = None;
    for _ in 0..60 {
        f.tick(Duration::from_secs(1), &["k1"]);
        let before = f.cd.clone();
        let d = f.decide();
        if let Some(next) = &d.next {
            validate_invariants(Some(&before), next).expect("invariants hold");
        }
        for e in &d.events {
            if let Event::ElectingNewMaster { db, .. } = e {
                elected = Some(db.clone());
            }
        }
        f.apply(&d);
        if elected.is_some() {
            break;
        }
    }
    assert_eq!(elected, Some(db_uid("k2")));
}

// ---------------------------------------------------------------------------------------------
// Leader takeover

/// A fast cluster (failInterval 3 s) whose leader just changed: the new leader's memory comes
/// from the ages of the keepers' infos.
fn taken_over(ages: &[(&str, u64)]) -> ClusterFixture {
    let mut f = ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .proxy("p1");
    let ages: BTreeMap<String, Duration> = ages
        .iter()
        .map(|(k, secs)| (k.to_string(), Duration::from_secs(*secs)))
        .collect();
    f.memory = memory_at_takeover(&f.keepers_info, &ages, f.now_mono);
    f
}

/// Steps `step` at a time with `silent` keepers silent until an election; returns the virtual
/// time it took (`None`: none within 30 s).
fn time_to_election(f: &mut ClusterFixture, silent: &[&str], step: Duration) -> Option<Duration> {
    let mut waited = Duration::ZERO;
    while waited <= Duration::from_secs(30) {
        let before = f.cd.clone();
        let d = f.decide();
        if let Some(next) = &d.next {
            validate_invariants(Some(&before), next).expect("invariants hold");
        }
        let elected = d
            .events
            .iter()
            .any(|e| matches!(e, Event::ElectingNewMaster { .. }));
        f.apply(&d);
        if elected {
            return Some(waited);
        }
        f.tick(step, silent);
        waited += step;
    }
    None
}

#[test]
fn takeover_fails_a_master_silent_longer_than_fail_interval_at_once() {
    // k1's info was written at least 10 s ago: the old leader would have failed it already.
    let mut f = taken_over(&[("k1", 10), ("k2", 0)]);
    let before = f.cd.clone();
    let d = f.decide();
    assert!(
        d.events.contains(&Event::MasterDbFailed {
            db: db_uid("k1"),
            keeper: "k1".into()
        }),
        "events {:?}",
        d.events
    );
    assert!(d.events.contains(&Event::ElectingNewMaster {
        db: db_uid("k2"),
        keeper: "k2".into()
    }));
    let next = next_of(&d);
    validate_invariants(Some(&before), &next).expect("invariants hold");
    assert_eq!(
        next.cluster.as_ref().map(|c| c.status.master.clone()),
        Some(db_uid("k2"))
    );
    assert_eq!(
        next.proxy.as_ref().map(|p| p.spec.master_db_uid.clone()),
        Some(String::new())
    );
    assert!(!next.keepers["k1"].status.healthy);
    assert!(next.keepers["k2"].status.healthy);
}

#[test]
fn takeover_keeps_keepers_that_published_recently() {
    let mut f = taken_over(&[("k1", 0), ("k2", 1)]);
    let d = f.decide();
    assert_eq!(d.next, None, "events {:?}", d.events);
    f.apply(&d);
    // And they stay healthy while they publish.
    for _ in 0..10 {
        let (_, d) = step(&mut f);
        assert!(
            !d.events.iter().any(|e| matches!(
                e,
                Event::KeeperUnhealthy { .. } | Event::MasterDbFailed { .. }
            )),
            "events {:?}",
            d.events
        );
    }
}

#[test]
fn takeover_counts_only_the_rest_of_fail_interval() {
    // k1 has been silent for at least 2 s of its 3 s: it fails after about one more second of
    // silence, not three.
    let mut f = taken_over(&[("k1", 2), ("k2", 0)]);
    let took = time_to_election(&mut f, &["k1"], Duration::from_millis(250));
    let took = took.expect("an election");
    assert!(
        took > Duration::ZERO && took < Duration::from_secs(3),
        "election after {took:?}"
    );
}

#[test]
fn takeover_without_ages_judges_keepers_from_the_takeover() {
    // No age known (a backend that cannot tell): the clocks start at the takeover, as a new
    // leader always did: the silent master fails a whole failInterval later.
    let mut f = taken_over(&[]);
    let took = time_to_election(&mut f, &["k1"], Duration::from_millis(250));
    let took = took.expect("an election");
    assert!(took >= Duration::from_secs(3), "election after {took:?}");
}
