//! Named decision scenarios for quorum commit (`quorumCommit`, docs/synchronous-replication.md):
//! the `ANY k (...)` list the master is given, the set known to hold every acknowledged commit
//! (it shrinks only after catch-up), and the phased failover (fence, final positions, elect).

use std::time::Duration;

use pretty_assertions::assert_eq;
use stolon_core::model::{ClusterData, QuorumFailoverPhase};
use stolon_core::pgconf::synchronous_standby_names;
use stolon_core::sentinel::testing::{ClusterFixture, db_uid};
use stolon_core::sentinel::{Decision, Event, validate_invariants};

const HALF: Duration = Duration::from_millis(500);

/// One decision `d` later; keepers in `silent` do not republish; invariants checked.
fn step_after(f: &mut ClusterFixture, d: Duration, silent: &[&str]) -> Decision {
    f.tick(d, silent);
    let before = f.cd.clone();
    let dec = f.decide();
    if let Some(next) = &dec.next {
        validate_invariants(Some(&before), next).expect("invariants hold");
    }
    f.apply(&dec);
    dec
}

fn step(f: &mut ClusterFixture, silent: &[&str]) -> Decision {
    step_after(f, HALF, silent)
}

fn names(uids: &[&str]) -> Vec<String> {
    uids.iter().map(|k| db_uid(k)).collect()
}

fn master_of(cd: &ClusterData) -> String {
    cd.cluster
        .as_ref()
        .map(|c| c.status.master.clone())
        .unwrap_or_default()
}

/// S_spec of the master `k1`.
fn listed(f: &ClusterFixture) -> Vec<String> {
    f.cd.dbs[&db_uid("k1")]
        .spec
        .as_ref()
        .and_then(|s| s.synchronous_standbys.clone())
        .unwrap_or_default()
}

/// S_eff of the master `k1` and its quorum.
fn known(f: &ClusterFixture) -> (Vec<String>, Option<u16>) {
    let s = &f.cd.dbs[&db_uid("k1")].status;
    (
        s.synchronous_standbys.clone().unwrap_or_default(),
        s.synchronous_quorum,
    )
}

fn rendered(f: &ClusterFixture, keeper: &str) -> String {
    synchronous_standby_names(f.cd.dbs[&db_uid(keeper)].spec.as_ref().expect("spec"))
}

/// Master k1, standbys k2 and k3 both listed and reported in sync, proxy p1, one to two
/// synchronous standbys, `quorumCommit` as given; not yet stepped.
fn two_listed_standbys(quorum_commit: Option<bool>) -> ClusterFixture {
    ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .sync_standbys(&["k2", "k3"])
        .reported_sync(&["k2", "k3"])
        .proxy("p1")
        .spec(|s| {
            s.min_synchronous_standbys = Some(1);
            s.max_synchronous_standbys = Some(2);
            s.quorum_commit = quorum_commit;
        })
}

/// Master k1, standbys k2 and k3 both listed and streaming, proxy p1; quorum commit with
/// `minSynchronousStandbys: 1, maxSynchronousStandbys: 2` (any 1 of 2), settled.
fn quorum_cluster() -> ClusterFixture {
    let mut f = two_listed_standbys(Some(true));
    for _ in 0..6 {
        step(&mut f, &[]);
    }
    assert_eq!(listed(&f), names(&["k2", "k3"]));
    assert_eq!(known(&f), (names(&["k2", "k3"]), Some(1)));
    f
}

#[test]
fn quorum_mode_renders_any_1_of_the_two_listed_standbys() {
    let f = quorum_cluster();
    assert_eq!(rendered(&f, "k1"), "ANY 1 (stolon_db_k2,stolon_db_k3)");
    // Nothing pending once the master applied it and a standby caught up.
    assert_eq!(f.cd.dbs[&db_uid("k1")].status.quorum_catch_up, None);
    // Standbys render nothing.
    assert_eq!(rendered(&f, "k2"), "");
}

#[test]
fn all_ack_mode_is_unchanged_by_default() {
    let mut f = two_listed_standbys(None);
    for _ in 0..4 {
        step(&mut f, &[]);
    }
    assert_eq!(rendered(&f, "k1"), "2 (stolon_db_k2,stolon_db_k3)");
    assert_eq!(known(&f), (names(&["k2", "k3"]), None));
    // A failover elects at once, without the quorum phases.
    f.kill("k1");
    let mut elected = None;
    for _ in 0..20 {
        let d = step_after(&mut f, Duration::from_secs(1), &["k1"]);
        assert!(
            !d.events
                .iter()
                .any(|e| matches!(e, Event::QuorumFailoverFencing { .. })),
            "{:?}",
            d.events
        );
        if let Some(Event::ElectingNewMaster { db, .. }) = d
            .events
            .iter()
            .find(|e| matches!(e, Event::ElectingNewMaster { .. }))
        {
            elected = Some(db.clone());
            break;
        }
    }
    assert!(elected.is_some());
    assert_eq!(f.cd.quorum_failover, None);
}

#[test]
fn a_lost_standby_leaves_the_list_at_once_and_the_known_set_only_after_catch_up() {
    // (Setting the master's position republishes its report: say again what it streams to.)
    let mut f = quorum_cluster()
        .xlog("k1", 0x5000)
        .xlog("k2", 0x5000)
        .xlog("k3", 0x5000)
        .reported_sync(&["k2", "k3"]);
    step(&mut f, &[]);
    // The master's walsender for k2 ended: it reports only k3 streaming.
    f = f.reported_sync(&["k3"]).xlog("k3", 0x4000);
    let d = step(&mut f, &[]);
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, Event::SyncStandbysChanged { .. })),
        "{:?}",
        d.events
    );
    // Commits no longer wait for k2; they never stalled (any 1 of k2, k3 was enough).
    assert_eq!(listed(&f), names(&["k3"]));
    assert_eq!(rendered(&f, "k1"), "ANY 1 (stolon_db_k3)");
    // k2 may still hold commits k3 lacks: it stays known.
    assert_eq!(known(&f), (names(&["k2", "k3"]), Some(1)));
    let pending = f.cd.dbs[&db_uid("k1")]
        .status
        .quorum_catch_up
        .clone()
        .expect("catch-up pending");
    assert_eq!(pending.generation, f.cd.dbs[&db_uid("k1")].generation);

    // The master reports the new generation at 0x6000: k3 must reach it.
    f = f.xlog("k1", 0x6000).reported_sync(&["k3"]);
    step(&mut f, &[]);
    let pending = f.cd.dbs[&db_uid("k1")].status.quorum_catch_up.clone();
    assert_eq!(pending.map(|c| c.position), Some(0x6000));
    f = f.xlog("k1", 0x9000).reported_sync(&["k3"]);
    for _ in 0..3 {
        step(&mut f, &[]);
        assert_eq!(known(&f), (names(&["k2", "k3"]), Some(1)));
    }
    // k3 reaches 0x6000 (the master moved on meanwhile: the mark stays where it was).
    f = f.xlog("k3", 0x6000);
    let d = step(&mut f, &[]);
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, Event::QuorumSetKnown { .. })),
        "{:?}",
        d.events
    );
    assert_eq!(known(&f), (names(&["k3"]), Some(1)));
    assert_eq!(f.cd.dbs[&db_uid("k1")].status.quorum_catch_up, None);
}

/// Kills the master `k1` and steps until it is failed and the quorum failover fenced the
/// proxies; returns the decision that did.
fn fail_master(f: &mut ClusterFixture, also_dead: &[&str]) -> Decision {
    f.kill("k1");
    for k in also_dead {
        f.kill(k);
    }
    for _ in 0..20 {
        let d = step_after(f, Duration::from_secs(1), &["k1"]);
        if d.events
            .iter()
            .any(|e| matches!(e, Event::QuorumFailoverFencing { .. }))
        {
            return d;
        }
        assert!(
            !d.events
                .iter()
                .any(|e| matches!(e, Event::ElectingNewMaster { .. })),
            "{:?}",
            d.events
        );
    }
    panic!("the master was never failed over");
}

fn elected(d: &Decision) -> Option<String> {
    d.events.iter().find_map(|e| match e {
        Event::ElectingNewMaster { db, .. } => Some(db.clone()),
        _ => None,
    })
}

#[test]
fn failover_fences_then_requests_final_positions_then_elects_the_most_advanced() {
    let mut f = quorum_cluster()
        .xlog("k1", 0x9000)
        .xlog("k2", 0x7000)
        .xlog("k3", 0x9000)
        .reported_sync(&["k2", "k3"]);
    step(&mut f, &[]);
    let proxy_gen = f.cd.proxy.as_ref().expect("proxy").generation;
    let d = fail_master(&mut f, &[]);
    assert_eq!(elected(&d), None);
    // a. The proxies' target is cleared and recorded; the old master is untouched.
    let p = f.cd.proxy.clone().expect("proxy");
    assert_eq!(p.spec.master_db_uid, "");
    assert_eq!(p.generation, proxy_gen + 1);
    let r = f.cd.quorum_failover.clone().expect("recorded");
    assert_eq!(r.phase, QuorumFailoverPhase::Fencing);
    assert_eq!(master_of(&f.cd), db_uid("k1"));
    assert!(
        f.cd.dbs[&db_uid("k1")]
            .spec
            .as_ref()
            .expect("spec")
            .synchronous_replication
    );

    // The proxy has not acknowledged: nothing moves, however long.
    let gens = (
        f.cd.dbs[&db_uid("k2")].generation,
        f.cd.dbs[&db_uid("k3")].generation,
    );
    for _ in 0..3 {
        let d = step(&mut f, &["k1"]);
        assert_eq!(elected(&d), None);
    }
    assert_eq!(
        f.cd.quorum_failover.as_ref().map(|r| r.phase),
        Some(QuorumFailoverPhase::Fencing)
    );
    assert_eq!(
        (
            f.cd.dbs[&db_uid("k2")].generation,
            f.cd.dbs[&db_uid("k3")].generation
        ),
        gens
    );

    // b. The proxy acknowledges: the standbys are asked for their final positions.
    f.proxies_ack();
    let d = step(&mut f, &["k1"]);
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, Event::QuorumFailoverRequestingPositions { .. })),
        "{:?}",
        d.events
    );
    assert_eq!(elected(&d), None);
    let r = f.cd.quorum_failover.clone().expect("recorded");
    assert_eq!(r.phase, QuorumFailoverPhase::Positions);
    assert_eq!(r.generations[&db_uid("k2")], gens.0 + 1);
    assert_eq!(r.generations[&db_uid("k3")], gens.1 + 1);
    // Only the generation moved: the standbys' specs are unchanged.
    assert_eq!(f.cd.dbs[&db_uid("k2")].generation, gens.0 + 1);

    // c. Their keepers report the new generation: the most advanced is elected.
    let d = step(&mut f, &["k1"]);
    assert_eq!(elected(&d), Some(db_uid("k3")), "{:?}", d.events);
    assert_eq!(master_of(&f.cd), db_uid("k3"));
    assert_eq!(f.cd.quorum_failover, None);
    // The new master lists the other standby, any 1, and promises nothing until it caught up.
    let s = f.cd.dbs[&db_uid("k3")].spec.clone().expect("spec");
    assert_eq!(s.synchronous_quorum, Some(1));
    assert!(
        s.synchronous_standbys
            .unwrap_or_default()
            .contains(&db_uid("k2"))
    );
    let st = &f.cd.dbs[&db_uid("k3")].status;
    assert_eq!(st.synchronous_standbys, Some(vec![]));
    assert!(st.quorum_catch_up.is_some());
}

#[test]
fn failover_is_refused_when_a_needed_standby_has_no_final_report() {
    // The master and k3 are lost together; k2's only report predates the fence. With any 1 of
    // {k2, k3}, an acknowledged commit may be on k3 alone: nobody may be elected.
    let mut f = quorum_cluster().xlog("k2", 0x9000);
    step(&mut f, &[]);
    fail_master(&mut f, &["k3"]);
    f.proxies_ack();
    let mut waited = false;
    for _ in 0..30 {
        let d = step_after(&mut f, Duration::from_secs(1), &["k1", "k3"]);
        assert_eq!(elected(&d), None, "{:?}", d.events);
        waited |= d.events.iter().any(|e| {
            matches!(e, Event::WaitingForQuorumPositions { need, .. } if need.contains(&db_uid("k3")))
        });
    }
    assert!(waited);
    assert_eq!(master_of(&f.cd), db_uid("k1"));
}

#[test]
fn reports_made_before_the_position_request_are_ignored() {
    let mut f = quorum_cluster().xlog("k2", 0x9000).xlog("k3", 0x8000);
    step(&mut f, &[]);
    fail_master(&mut f, &[]);
    f.proxies_ack();
    let d = step(&mut f, &["k1"]);
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, Event::QuorumFailoverRequestingPositions { .. }))
    );
    // The standbys' keepers have not read the bump yet: their (still fresh) infos carry the old
    // generation, and a position measured then may predate commits they acknowledged.
    let d = step(&mut f, &["k1", "k2", "k3"]);
    assert_eq!(elected(&d), None);
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, Event::WaitingForQuorumPositions { .. })),
        "{:?}",
        d.events
    );
    // k3 reports; k2 still does not: any 1 of 2 needs both.
    let d = step(&mut f, &["k1", "k2"]);
    assert_eq!(elected(&d), None);
    let d = step(&mut f, &["k1"]);
    assert_eq!(elected(&d), Some(db_uid("k2")), "{:?}", d.events);
}

#[test]
fn a_master_good_again_before_the_election_aborts_the_failover() {
    let mut f = quorum_cluster();
    fail_master(&mut f, &[]);
    assert!(f.cd.quorum_failover.is_some());
    // The master's keeper publishes again (it was cut off from the store, not dead).
    let mut info = quorum_cluster().keepers_info["k1"].clone();
    info.info_uid = "revived".into();
    f.keepers_info.insert("k1".into(), info);
    let d = step(&mut f, &[]);
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, Event::QuorumFailoverAborted { .. })),
        "{:?}",
        d.events
    );
    assert_eq!(f.cd.quorum_failover, None);
    assert_eq!(elected(&d), None);
    // The usual handshake routes the proxies to it again once they acknowledged the fence.
    f.proxies_ack();
    for _ in 0..3 {
        step(&mut f, &[]);
        f.proxies_ack();
    }
    assert_eq!(
        f.cd.proxy.as_ref().expect("proxy").spec.master_db_uid,
        db_uid("k1")
    );
    assert_eq!(master_of(&f.cd), db_uid("k1"));
}

#[test]
fn a_new_leader_continues_a_quorum_failover_mid_phase() {
    let mut f = quorum_cluster().xlog("k2", 0x9000);
    step(&mut f, &[]);
    fail_master(&mut f, &[]);
    f.proxies_ack();
    step(&mut f, &["k1"]);
    assert_eq!(
        f.cd.quorum_failover.as_ref().map(|r| r.phase),
        Some(QuorumFailoverPhase::Positions)
    );
    // The leader changes: the record in clusterdata is all the new one knows. It gives the
    // silent master's keeper failInterval again (no store ages here), and meanwhile neither
    // routes the proxies back to it nor drops the record.
    f = f.first_run();
    let mut got = None;
    for _ in 0..20 {
        let d = step(&mut f, &["k1"]);
        assert_eq!(
            f.cd.proxy.as_ref().expect("proxy").spec.master_db_uid,
            "",
            "{:?}",
            d.events
        );
        if let Some(e) = elected(&d) {
            got = Some(e);
            break;
        }
        assert_eq!(
            f.cd.quorum_failover.as_ref().map(|r| r.phase),
            Some(QuorumFailoverPhase::Positions)
        );
    }
    assert_eq!(got, Some(db_uid("k2")));
}

#[test]
fn raising_k_waits_for_catch_up_and_lowering_it_is_immediate() {
    let mut f = quorum_cluster()
        .xlog("k1", 0x5000)
        .xlog("k2", 0x4000)
        .xlog("k3", 0x4000)
        .reported_sync(&["k2", "k3"]);
    step(&mut f, &[]);
    // Any 2 of 2 from now on; commits acknowledged until the master applies it may be on one.
    f = f.spec(|s| s.min_synchronous_standbys = Some(2));
    step(&mut f, &[]);
    assert_eq!(rendered(&f, "k1"), "ANY 2 (stolon_db_k2,stolon_db_k3)");
    assert_eq!(known(&f), (names(&["k2", "k3"]), Some(1)));
    for _ in 0..3 {
        step(&mut f, &[]);
        assert_eq!(known(&f).1, Some(1));
    }
    // Both reach the master's position after it applied the change: the promise is 2 of 2.
    f = f.xlog("k2", 0x5000).xlog("k3", 0x5000);
    step(&mut f, &[]);
    assert_eq!(known(&f), (names(&["k2", "k3"]), Some(2)));

    // Back to any 1: at once.
    f = f.spec(|s| s.min_synchronous_standbys = Some(1));
    step(&mut f, &[]);
    assert_eq!(rendered(&f, "k1"), "ANY 1 (stolon_db_k2,stolon_db_k3)");
    assert_eq!(known(&f), (names(&["k2", "k3"]), Some(1)));
}

#[test]
fn turning_quorum_commit_off_keeps_the_quorum_rules_until_the_standbys_caught_up() {
    let mut f = quorum_cluster()
        .xlog("k1", 0x5000)
        .xlog("k2", 0x4000)
        .xlog("k3", 0x5000)
        .reported_sync(&["k2", "k3"]);
    step(&mut f, &[]);
    f = f.spec(|s| s.quorum_commit = Some(false));
    step(&mut f, &[]);
    // Every listed standby must acknowledge from now on (Stolon's form) ...
    assert_eq!(rendered(&f, "k1"), "2 (stolon_db_k2,stolon_db_k3)");
    // ... but a commit acknowledged before may be on one of them only.
    assert_eq!(known(&f), (names(&["k2", "k3"]), Some(1)));
    for _ in 0..3 {
        step(&mut f, &[]);
        assert_eq!(known(&f), (names(&["k2", "k3"]), Some(1)));
    }
    // Both caught up with the master's position after the change: Stolon's meaning again.
    f = f.xlog("k2", 0x5000);
    step(&mut f, &[]);
    assert_eq!(known(&f), (names(&["k2", "k3"]), None));
    assert_eq!(f.cd.dbs[&db_uid("k1")].status.quorum_catch_up, None);
    // And Stolon's rules keep it there.
    for _ in 0..3 {
        step(&mut f, &[]);
    }
    assert_eq!(rendered(&f, "k1"), "2 (stolon_db_k2,stolon_db_k3)");
    assert_eq!(known(&f), (names(&["k2", "k3"]), None));
}
