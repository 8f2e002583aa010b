//! Named decision scenarios for faster recovery from partial faults: a synchronous standby the
//! master reports as no longer in sync (docs/architecture.md §6.7), a new leader judging
//! keepers and proxies that were already silent before it took over (§6.1), and proxies that
//! fence themselves from the start of their last published check (§6.3).

use std::collections::BTreeMap;
use std::time::Duration;

use pretty_assertions::assert_eq;
use stolon_core::duration::GoDuration;
use stolon_core::model::ClusterData;
use stolon_core::sentinel::testing::{ClusterFixture, db_uid};
use stolon_core::sentinel::{
    Decision, Event, PROXY_REACTION, Sightings, TakeoverRead, memory_at_takeover,
    proxy_active_window, remember_expired_keepers_at_takeover, remember_proxies_at_takeover,
    takeover_memory, validate_invariants,
};
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

// ---------------------------------------------------------------------------------------------
// Proxies that fence themselves from the start of their last published check

/// A fast cluster (sleepInterval 1 s, failInterval 3 s) with master k1, standby k2 and proxy p1
/// (proxyTimeout 15 s), whose info carries `fencesFromCheckStart` when `marked`.
fn with_proxy(marked: bool) -> ClusterFixture {
    let f = ClusterFixture::new().fast().master("k1").standby("k2");
    if marked {
        f.marked_proxy("p1")
    } else {
        f.proxy("p1")
    }
}

/// How long p1 counts as active after its info was first seen, by the sentinel's rule.
fn p1_window(f: &ClusterFixture) -> Duration {
    let spec =
        f.cd.cluster
            .as_ref()
            .and_then(|c| c.spec.as_ref())
            .expect("spec")
            .effective();
    proxy_active_window(&f.proxies_info["p1"], &spec)
}

/// The master's keeper k1 and proxy p1 stop publishing at once (the master's host is cut off):
/// steps 100 ms at a time until the new master is named to the proxies, and returns the virtual
/// time from the cut (`None`: not within 40 s).
fn time_to_new_master(f: &mut ClusterFixture) -> Option<Duration> {
    let step = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while waited <= Duration::from_secs(40) {
        let before = f.cd.clone();
        let d = f.decide();
        if let Some(next) = &d.next {
            validate_invariants(Some(&before), next).expect("invariants hold");
        }
        let named = d
            .events
            .iter()
            .any(|e| matches!(e, Event::ProxiesRouteToMaster { .. }));
        f.apply(&d);
        if named {
            return Some(waited);
        }
        f.tick(step, &["k1", "p1"]);
        waited += step;
    }
    None
}

#[test]
fn a_marked_proxy_window_is_its_timeout_stretched_for_drift_plus_its_reaction_bound() {
    let f = with_proxy(true);
    // 15 s × 1.01 / 0.99, rounded up to the nanosecond, then the proxy's reaction bound
    // (half a second, shorter than this sleepInterval of 1 s).
    let stretched = Duration::from_nanos(15_303_030_304);
    assert_eq!(p1_window(&f), stretched + PROXY_REACTION);
    assert_eq!(PROXY_REACTION, HALF);
    // A sleepInterval shorter than the bound is the bound.
    let f = with_proxy(true).spec(|s| s.sleep_interval = Some(GoDuration::from_millis(200)));
    assert_eq!(p1_window(&f), stretched + Duration::from_millis(200));
    let f = with_proxy(false);
    assert_eq!(p1_window(&f), Duration::from_secs(30), "Stolon's rule");
}

#[test]
fn a_silent_proxy_is_judged_at_the_instant_before_its_info_was_read() {
    // p1 went silent; the sentinel's read of the proxy infos took 300 ms. Judged at the end of
    // that read, p1's window has passed; judged at its start, it has not: an info p1 committed
    // during the read could be missing from the answer, and p1 still counts as active.
    let lag = Duration::from_millis(300);
    let mut f = with_proxy(true);
    let window = p1_window(&f);
    f.tick(window + Duration::from_millis(200), &["p1"]);
    f.proxies_read_lag = lag;
    let d = f.step();
    assert!(
        d.active_proxies.contains(&"p1".to_string()),
        "judged at the read's start"
    );
    // The same decision with a read that took no time: inactive.
    let mut g = with_proxy(true);
    g.tick(window + Duration::from_millis(200), &["p1"]);
    let d = g.step();
    assert!(d.active_proxies.is_empty(), "judged after the window");
    // Once the read's start is past the window, p1 no longer counts.
    f.tick(Duration::from_millis(200), &["p1"]);
    let d = f.step();
    assert!(d.active_proxies.is_empty());
}

#[test]
fn a_marked_proxy_cut_off_with_the_master_stops_blocking_the_failover_after_its_short_bound() {
    let mut f = with_proxy(true);
    let window = p1_window(&f);
    let t = time_to_new_master(&mut f).expect("a new master is named");
    // Not before p1 stopped counting as active, and at the first decision after.
    assert!(t > window, "named after {t:?}, window {window:?}");
    assert!(
        t <= window + Duration::from_millis(100),
        "named after {t:?}"
    );
    assert!(t < Duration::from_secs(30), "sooner than Stolon's rule");
    assert_eq!(f.proxy_spec().enabled_proxies, Vec::<String>::new());
}

#[test]
fn an_unmarked_proxy_cut_off_with_the_master_still_blocks_the_failover_for_twice_its_timeout() {
    let mut f = with_proxy(false);
    let t = time_to_new_master(&mut f).expect("a new master is named");
    assert!(t > Duration::from_secs(30), "named after {t:?}");
    assert!(t <= Duration::from_millis(30_100), "named after {t:?}");
}

#[test]
fn the_sentinel_wakes_when_a_silent_proxy_stops_counting_as_active() {
    for marked in [true, false] {
        let mut f = with_proxy(marked);
        let window = p1_window(&f);
        let seen = f.now_mono;
        // Everybody but p1 keeps publishing; half a second before p1's window ends, the
        // earliest timer is that end.
        f.tick(window - HALF, &["p1"]);
        let d = f.step();
        assert!(d.active_proxies.contains(&"p1".to_string()));
        assert_eq!(
            d.wake_at,
            Some(seen + window + Duration::from_millis(1)),
            "marked: {marked}"
        );
        f.tick(HALF + Duration::from_millis(1), &["p1"]);
        let d = f.step();
        assert!(d.active_proxies.is_empty(), "marked: {marked}");
    }
}

/// [`taken_over`] with p1 marked, and for the proxies whose ages are given, their ages.
fn taken_over_with_proxy_ages(keepers: &[(&str, u64)], proxies: &[(&str, u64)]) -> ClusterFixture {
    let mut f = taken_over(keepers);
    if let Some(i) = f.proxies_info.get_mut("p1") {
        i.fences_from_check_start = true;
    }
    let ages: BTreeMap<String, Duration> = proxies
        .iter()
        .map(|(p, secs)| (p.to_string(), Duration::from_secs(*secs)))
        .collect();
    let now = f.now_mono;
    remember_proxies_at_takeover(&mut f.memory, &f.proxies_info, &ages, now);
    f
}

#[test]
fn takeover_counts_a_proxy_silent_since_before_it_from_its_info_age() {
    // The master's host was lost with the old leader 10 s ago: k1 and p1 went silent then.
    let mut f = taken_over_with_proxy_ages(&[("k1", 10), ("k2", 0)], &[("p1", 10)]);
    let window = p1_window(&f);
    let t = time_to_new_master(&mut f).expect("a new master is named");
    let expected = window - Duration::from_secs(10);
    assert!(
        t > expected,
        "named after {t:?}, expected just after {expected:?}"
    );
    assert!(
        t <= expected + Duration::from_millis(100),
        "named after {t:?}"
    );
}

#[test]
fn takeover_without_a_proxy_age_judges_the_proxy_from_the_takeover() {
    let mut f = taken_over_with_proxy_ages(&[("k1", 10), ("k2", 0)], &[]);
    let window = p1_window(&f);
    let t = time_to_new_master(&mut f).expect("a new master is named");
    assert!(t > window, "named after {t:?}, window {window:?}");
    assert!(
        t <= window + Duration::from_millis(100),
        "named after {t:?}"
    );
}

#[test]
fn takeover_age_of_a_proxy_gives_way_to_its_next_publish() {
    // The age belongs to the info read at the takeover; the proxy's next publish counts from
    // when the leader sees it.
    let mut f = taken_over_with_proxy_ages(&[("k1", 10), ("k2", 0)], &[("p1", 10)]);
    let seen = f.now_mono;
    assert_eq!(
        f.memory.proxy_infos["p1"].first_seen,
        seen.saturating_sub(Duration::from_secs(10))
    );
    f.tick(HALF, &["k1"]);
    let d = f.step();
    assert!(d.active_proxies.contains(&"p1".to_string()));
    assert_eq!(f.memory.proxy_infos["p1"].first_seen, seen + HALF);
}

#[test]
fn takeover_fails_a_master_whose_info_expired_at_once() {
    // The master's host was lost with the old leader long enough ago that k1's info expired:
    // the store no longer has it, so k1 has not published for at least the info TTL.
    let mut f = taken_over(&[("k2", 0)]);
    f.keepers_info.remove("k1");
    let mut without_credit = f.clone();
    remember_expired_keepers_at_takeover(
        &mut f.memory,
        f.cd.keepers.keys(),
        &f.keepers_info,
        f.now_mono,
    );
    assert_eq!(
        time_to_election(&mut f, &["k1"], Duration::from_secs(1)),
        Some(Duration::ZERO)
    );
    // Without the credit the new leader waits a whole failInterval (3 s here) from the takeover.
    let waited = time_to_election(&mut without_credit, &["k1"], Duration::from_secs(1))
        .expect("an election");
    assert!(waited >= Duration::from_secs(3), "waited {waited:?}");
}

/// A follower's view of `f`: every keeper publishes for `live`, then `silent` keepers stop
/// for `silence`; the follower reads the infos every second. Returns its sightings.
fn followed(
    f: &mut ClusterFixture,
    live: Duration,
    silent: &[&str],
    silence: Duration,
) -> Sightings {
    let mut s = Sightings::new();
    let second = Duration::from_secs(1);
    s.observe(&f.keepers_info, &f.proxies_info, f.now_mono);
    let mut t = Duration::ZERO;
    while t < live + silence {
        f.tick(second, if t < live { &[] } else { silent });
        t += second;
        s.observe(&f.keepers_info, &f.proxies_info, f.now_mono);
    }
    s
}

fn read_of<'a>(f: &'a ClusterFixture, ages: &'a BTreeMap<String, Duration>) -> TakeoverRead<'a> {
    TakeoverRead {
        cluster_keepers: Some(&f.cd.keepers),
        keepers_info: &f.keepers_info,
        proxies_info: &f.proxies_info,
        keeper_ages: ages,
        proxy_ages: ages,
    }
}

#[test]
fn takeover_with_neither_ages_nor_sightings_starts_every_clock_afresh() {
    let f = taken_over(&[]);
    let none = BTreeMap::new();
    assert_eq!(
        takeover_memory(&read_of(&f, &none), &Sightings::new(), f.now_mono),
        None
    );
}

#[test]
fn takeover_fails_a_master_a_follower_saw_go_silent_although_the_store_restarted_its_ages() {
    // The follower saw k1's info stop changing 4 s ago (failInterval 3 s); the store's own
    // leader changed meanwhile, so every lease, and every age, starts again at 0.
    let mut f = taken_over(&[]);
    let sightings = followed(
        &mut f,
        Duration::from_secs(2),
        &["k1"],
        Duration::from_secs(4),
    );
    let zero: BTreeMap<String, Duration> = ["k1", "k2", "p1"]
        .iter()
        .map(|k| (k.to_string(), Duration::ZERO))
        .collect();
    let mut without = f.clone();
    f.memory = takeover_memory(&read_of(&f, &zero), &sightings, f.now_mono).expect("a memory");
    assert_eq!(
        time_to_election(&mut f, &["k1"], Duration::from_millis(250)),
        Some(Duration::ZERO)
    );
    // From the ages alone the new leader waits a whole failInterval after the takeover.
    without.memory = takeover_memory(
        &read_of(&without, &zero),
        &Sightings::new(),
        without.now_mono,
    )
    .expect("a memory");
    let waited =
        time_to_election(&mut without, &["k1"], Duration::from_millis(250)).expect("an election");
    assert!(waited >= Duration::from_secs(3), "waited {waited:?}");
}

#[test]
fn takeover_credits_an_expired_info_only_where_the_store_reports_ages() {
    // k1's info is gone. With ages (etcd: infos expire by lease) that means at least the info
    // TTL of silence; a store that reports no ages does not expire infos by leases, so there a
    // missing info says nothing of how long k1 has been silent, and sightings alone credit
    // nothing.
    let mut f = taken_over(&[]);
    let sightings = followed(&mut f, Duration::from_secs(2), &[], Duration::ZERO);
    f.keepers_info.remove("k1");
    let ages = BTreeMap::from([("k2".to_string(), Duration::ZERO)]);
    let with_ages = takeover_memory(&read_of(&f, &ages), &sightings, f.now_mono).expect("a memory");
    assert!(with_ages.keeper_error_since.contains_key("k1"));
    let none = BTreeMap::new();
    let without_ages =
        takeover_memory(&read_of(&f, &none), &sightings, f.now_mono).expect("a memory");
    assert!(without_ages.keeper_error_since.is_empty());
}

#[test]
fn takeover_credits_only_keepers_without_an_info() {
    // k1 published 1 s ago: its clock is its info's age, not the expiry credit.
    let mut f = taken_over(&[("k1", 1), ("k2", 0)]);
    remember_expired_keepers_at_takeover(
        &mut f.memory,
        f.cd.keepers.keys(),
        &f.keepers_info,
        f.now_mono,
    );
    assert!(f.memory.keeper_error_since.is_empty());
    let waited = time_to_election(&mut f, &["k1"], Duration::from_secs(1)).expect("an election");
    assert!(waited >= Duration::from_secs(2), "waited {waited:?}");
}
