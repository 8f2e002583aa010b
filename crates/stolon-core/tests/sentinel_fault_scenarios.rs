//! Named decision scenarios for faster recovery from partial faults: a synchronous standby the
//! master reports as no longer in sync (docs/architecture.md §6.7). Each asserts the whole next
//! clusterdata, built from the previous one plus the expected changes.

use std::time::Duration;

use pretty_assertions::assert_eq;
use stolon_core::model::{ClusterData, DbSpec};
use stolon_core::sentinel::testing::{ClusterFixture, db_uid};
use stolon_core::sentinel::{Decision, Event, validate_invariants};
use stolon_core::timestamp::Timestamp;

const HALF: Duration = Duration::from_millis(500);

fn next_of(d: &Decision) -> ClusterData {
    d.next.clone().expect("a clusterdata write")
}

fn spec_mut<'a>(cd: &'a mut ClusterData, keeper: &str) -> &'a mut DbSpec {
    cd.dbs
        .get_mut(&db_uid(keeper))
        .and_then(|d| d.spec.as_mut())
        .expect("db spec")
}

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
