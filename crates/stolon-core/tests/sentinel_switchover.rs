//! Named scenarios of the planned switchover (docs/switchover.md): every phase with the whole
//! next clusterdata asserted, every refusal with its one line, rollback on timeout and on a
//! target that fails, and a leader change at every step of the sequence.

use std::time::Duration;

use pretty_assertions::assert_eq;
use stolon_core::duration::GoDuration;
use stolon_core::model::{
    ClusterData, ClusterPhase, DbRole, FollowConfig, FollowType, MasterChangeReason, Switchover,
    SwitchoverPhase,
};
use stolon_core::sentinel::switchover::switchover_target;
use stolon_core::sentinel::testing::{ClusterFixture, db_uid};
use stolon_core::sentinel::{
    DbKind, Decision, Event, SentinelMemory, db_kind, validate_handshake, validate_invariants,
};

const SEC: Duration = Duration::from_secs(1);

fn cluster() -> ClusterFixture {
    ClusterFixture::new()
        .fast()
        .master("k1")
        .standby("k2")
        .standby("k3")
        .proxy("p1")
}

fn sync_cluster() -> ClusterFixture {
    cluster().sync_standbys(&["k2"])
}

fn request(f: &mut ClusterFixture, to: &str) {
    f.cd.switchover = Some(Switchover::request(
        "sw1".into(),
        to.into(),
        GoDuration::from_secs(30),
        f.now_wall,
    ));
}

fn sw(f: &ClusterFixture) -> Switchover {
    f.cd.switchover.clone().expect("a switchover record")
}

fn master(cd: &ClusterData) -> String {
    cd.cluster
        .as_ref()
        .map(|c| c.status.master.clone())
        .unwrap_or_default()
}

/// One decision, checked against every safety invariant, then applied.
fn step(f: &mut ClusterFixture) -> Decision {
    let before = f.cd.clone();
    let d = f.decide();
    if let Some(next) = &d.next {
        validate_invariants(Some(&before), next).expect("invariants hold");
        validate_handshake(&before, next, &f.proxies_info, &d.active_proxies)
            .expect("handshake holds");
    }
    f.apply(&d);
    d
}

fn ps_mut<'a>(
    f: &'a mut ClusterFixture,
    keeper: &str,
) -> &'a mut stolon_core::model::PostgresState {
    f.keepers_info
        .get_mut(keeper)
        .and_then(|i| i.postgres_state.as_mut())
        .expect("postgres state")
}

/// The keeper stopped PostgreSQL cleanly and reports its shutdown checkpoint.
fn stops_cleanly(f: &mut ClusterFixture, keeper: &str, checkpoint: u64) {
    let ps = ps_mut(f, keeper);
    ps.healthy = false;
    ps.stopped_for_switchover = "sw1".into();
    ps.shutdown_checkpoint = checkpoint;
}

/// The keeper runs PostgreSQL again (as whatever its DB says) and reports it healthy.
fn runs_again(f: &mut ClusterFixture, keeper: &str) {
    let ps = ps_mut(f, keeper);
    ps.healthy = true;
    ps.stopped_for_switchover.clear();
    ps.shutdown_checkpoint = 0;
}

fn reaches(f: &mut ClusterFixture, keeper: &str, pos: u64) {
    ps_mut(f, keeper).xlog_pos = pos;
}

fn switchover_events(d: &Decision) -> Vec<&'static str> {
    d.events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Switchover { .. } | Event::SwitchoverOldMasterStopped { .. }
            )
        })
        .map(|e| e.message())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The sequence, phase by phase

#[test]
fn switchover_async_goes_through_every_phase_and_the_old_master_follows_the_target() {
    let mut f = cluster().xlog("k3", 0x800);
    request(&mut f, "");
    let requested = f.cd.clone();
    let now = f.now_wall;

    // requested -> holding: target chosen (k2, the most advanced), proxies' target cleared.
    let d = step(&mut f);
    let mut expected = requested.clone();
    let s = expected.switchover.as_mut().expect("record");
    s.phase = SwitchoverPhase::Holding;
    s.target_db = db_uid("k2");
    s.old_master_db = db_uid("k1");
    s.start_time = now;
    let p = expected.proxy.as_mut().expect("proxy");
    p.spec.master_db_uid.clear();
    p.generation += 1;
    p.change_time = now;
    expected.change_time = now;
    assert_eq!(d.next, Some(expected.clone()));
    assert_eq!(
        switchover_events(&d),
        ["switchover accepted: proxies hold new connections"]
    );

    // The old master is not given back to the proxies while they have not acknowledged.
    let d = step(&mut f);
    assert_eq!(d.next, None, "events: {:?}", d.events);

    // holding -> stopping once every proxy acknowledged the cleared target.
    f.proxies_ack();
    let d = step(&mut f);
    let mut expected = f.cd.clone();
    let next = d.next.clone().expect("a write");
    assert_eq!(
        next.switchover.as_ref().map(|s| s.phase),
        Some(SwitchoverPhase::Stopping)
    );
    expected.switchover = next.switchover.clone();
    assert_eq!(next, expected);
    assert_eq!(
        next.proxy.as_ref().map(|p| p.spec.master_db_uid.clone()),
        Some(String::new()),
        "the old master is not routed again"
    );

    // The old master stops; its final position is recorded; the target is not beyond it yet.
    f.tick(SEC, &[]);
    stops_cleanly(&mut f, "k1", 0x2000);
    reaches(&mut f, "k2", 0x2000);
    let d = step(&mut f);
    assert_eq!(sw(&f).final_xlog_pos, 0x2000);
    assert_eq!(master(&f.cd), db_uid("k1"));
    assert_eq!(
        switchover_events(&d),
        ["switchover: the old master stopped, final position recorded"]
    );

    // Time passes beyond failInterval: the stopped master is not failed over.
    for _ in 0..5 {
        f.tick(SEC, &[]);
        let d = step(&mut f);
        assert!(
            !d.events
                .iter()
                .any(|e| matches!(e, Event::ElectingNewMaster { .. })),
            "{:?}",
            d.events
        );
    }
    assert_eq!(master(&f.cd), db_uid("k1"));

    // The target has the shutdown checkpoint: promoted, the old master follows it.
    f.tick(SEC, &[]);
    reaches(&mut f, "k2", 0x2028);
    let before = f.cd.clone();
    let d = step(&mut f);
    let next = d.next.clone().expect("a write");
    assert_eq!(master(&next), db_uid("k2"));
    let old = &next.dbs[&db_uid("k1")];
    let old_spec = old.spec.clone().expect("spec");
    assert_eq!(old_spec.role, Some(DbRole::Standby));
    assert_eq!(
        old_spec.follow_config,
        Some(FollowConfig {
            kind: Some(FollowType::Internal),
            db_uid: db_uid("k2"),
            ..Default::default()
        })
    );
    assert_eq!(old.generation, before.dbs[&db_uid("k1")].generation + 1);
    let new_spec = next.dbs[&db_uid("k2")].spec.clone().expect("spec");
    assert_eq!(new_spec.role, Some(DbRole::Master));
    assert_eq!(new_spec.follow_config, None);
    assert_eq!(
        next.switchover.as_ref().map(|s| s.phase),
        Some(SwitchoverPhase::Promoted)
    );
    assert_eq!(
        next.proxy.as_ref().map(|p| p.spec.master_db_uid.clone()),
        Some(String::new())
    );
    assert!(switchover_events(&d).contains(&"switchover: the target caught up, promoting it"));
    // The change enters the history as a switchover, with the position the old master stopped
    // at; the write pause is not known yet.
    let entry = next.history.last().expect("a history entry");
    assert_eq!(entry.reason, MasterChangeReason::Switchover);
    assert_eq!(
        (
            entry.old_master_db_uid.as_str(),
            entry.new_master_db_uid.as_str()
        ),
        (db_uid("k1").as_str(), db_uid("k2").as_str())
    );
    assert_eq!(entry.old_master_xlog_pos, 0x2000);
    assert_eq!(entry.write_pause, None);
    assert_eq!(next.history.len(), before.history.len() + 1);

    // The target converges (the fixture's keepers apply at once): proxies route to it, then
    // the switchover completes.
    let mut completed = false;
    for _ in 0..10 {
        f.tick(SEC, &[]);
        f.proxies_ack();
        let d = step(&mut f);
        if switchover_events(&d).contains(&"switchover completed: proxies route to the new master")
        {
            completed = true;
            break;
        }
    }
    assert!(completed);
    assert_eq!(
        f.cd.proxy.as_ref().map(|p| p.spec.master_db_uid.clone()),
        Some(db_uid("k2"))
    );
    // Completed: the entry gets the write pause, from the proxies' cleared target (the start)
    // to the target routed (the end), on the sentinel's wall clock.
    let s = sw(&f);
    let pause = s.end_time.unix_nanos() - s.start_time.unix_nanos();
    assert!(pause > 0);
    let entry = f.cd.history.last().expect("a history entry");
    assert_eq!(entry.reason, MasterChangeReason::Switchover);
    assert_eq!(entry.write_pause, Some(GoDuration(pause as i64)));

    // The old master runs again as a standby of the target; it is kept, not recreated.
    runs_again(&mut f, "k1");
    for _ in 0..5 {
        f.tick(SEC, &[]);
        step(&mut f);
    }
    let old = &f.cd.dbs[&db_uid("k1")];
    assert_eq!(db_kind(old), DbKind::Standby);
    assert_eq!(
        old.spec
            .as_ref()
            .and_then(|s| s.follow_config.clone())
            .map(|c| c.db_uid),
        Some(db_uid("k2"))
    );
    assert!(old.status.healthy);
    assert_eq!(sw(&f).phase, SwitchoverPhase::Completed);
}

#[test]
fn switchover_sync_promotes_the_synchronous_standby_and_keeps_commits_blocked_on_a_listed_standby()
{
    let mut f = sync_cluster();
    request(&mut f, "");
    step(&mut f);
    assert_eq!(sw(&f).target_db, db_uid("k2"), "only the sync standby");
    f.proxies_ack();
    step(&mut f);
    f.tick(SEC, &[]);
    stops_cleanly(&mut f, "k1", 0x3000);
    reaches(&mut f, "k2", 0x3028);
    step(&mut f);
    assert_eq!(master(&f.cd), db_uid("k2"));
    let spec = f.cd.dbs[&db_uid("k2")].spec.clone().expect("spec");
    assert!(spec.synchronous_replication);
    assert!(
        !spec.synchronous_standbys.unwrap_or_default().is_empty(),
        "the new master waits for a synchronous standby"
    );
}

#[test]
fn a_target_not_yet_beyond_the_final_position_is_not_promoted() {
    let mut f = cluster();
    request(&mut f, "k3");
    step(&mut f);
    f.proxies_ack();
    step(&mut f);
    f.tick(SEC, &[]);
    stops_cleanly(&mut f, "k1", 0x5000);
    reaches(&mut f, "k3", 0x4fff);
    for _ in 0..10 {
        step(&mut f);
        f.tick(SEC, &[]);
    }
    assert_eq!(master(&f.cd), db_uid("k1"));
    assert_eq!(sw(&f).phase, SwitchoverPhase::Stopping);
    reaches(&mut f, "k3", 0x5000);
    step(&mut f);
    assert_eq!(
        master(&f.cd),
        db_uid("k1"),
        "equal is not beyond the record"
    );
    reaches(&mut f, "k3", 0x5001);
    f.tick(SEC, &[]);
    step(&mut f);
    assert_eq!(master(&f.cd), db_uid("k3"));
}

// ---------------------------------------------------------------------------------------------
// Rollback

#[test]
fn switchover_times_out_before_promotion_and_the_old_master_is_routed_again() {
    let mut f = cluster();
    request(&mut f, "k2");
    step(&mut f);
    f.proxies_ack();
    step(&mut f);
    f.tick(SEC, &[]);
    stops_cleanly(&mut f, "k1", 0x5000);
    // The target never gets the shutdown checkpoint.
    let mut failed = None;
    for _ in 0..40 {
        f.tick(SEC, &[]);
        let d = step(&mut f);
        assert!(
            !d.events
                .iter()
                .any(|e| matches!(e, Event::ElectingNewMaster { .. })),
            "{:?}",
            d.events
        );
        if sw(&f).phase == SwitchoverPhase::Failed {
            failed = Some(d);
            break;
        }
    }
    let d = failed.expect("rolled back");
    assert_eq!(sw(&f).reason, "timed out after 30s in phase stopping");
    assert_eq!(
        switchover_events(&d),
        ["switchover failed, the old master stays"]
    );
    assert_eq!(master(&f.cd), db_uid("k1"));
    // The old master's keeper starts it again; the proxies get it back.
    runs_again(&mut f, "k1");
    for _ in 0..5 {
        f.tick(SEC, &[]);
        f.proxies_ack();
        step(&mut f);
    }
    assert_eq!(
        f.cd.proxy.as_ref().map(|p| p.spec.master_db_uid.clone()),
        Some(db_uid("k1"))
    );
}

#[test]
fn a_target_that_fails_while_the_old_master_stops_rolls_the_switchover_back() {
    let mut f = cluster();
    request(&mut f, "k2");
    step(&mut f);
    f.proxies_ack();
    step(&mut f);
    f.kill("k2");
    let mut reason = String::new();
    for _ in 0..10 {
        f.tick(SEC, &["k2"]);
        step(&mut f);
        if sw(&f).phase == SwitchoverPhase::Failed {
            reason = sw(&f).reason;
            break;
        }
    }
    assert_eq!(
        reason,
        "the target is no longer eligible: keeper not healthy"
    );
    assert_eq!(master(&f.cd), db_uid("k1"));
}

#[test]
fn a_request_refused_by_the_sentinel_is_marked_failed_and_changes_nothing_else() {
    let mut f = cluster().can_be_master("k2", false);
    request(&mut f, "k2");
    let before = f.cd.clone();
    let d = step(&mut f);
    let mut expected = before;
    let s = expected.switchover.as_mut().expect("record");
    s.phase = SwitchoverPhase::Failed;
    s.reason = "cannot switch over: keeper k2: keeper cannot be master".into();
    s.end_time = f.now_wall;
    expected.change_time = f.now_wall;
    assert_eq!(d.next, Some(expected));
}

// ---------------------------------------------------------------------------------------------
// Refusals (stolonctl runs the same check before it writes)

#[test]
fn refusals_are_one_line_each() {
    let check = |f: &ClusterFixture, to: &str| switchover_target(&f.cd, to);
    let f = cluster();
    assert_eq!(check(&f, ""), Ok(db_uid("k2")));
    assert_eq!(check(&f, "k3"), Ok(db_uid("k3")));
    assert_eq!(
        check(&f, "k9"),
        Err("cannot switch over: keeper k9 does not exist".into())
    );
    assert_eq!(
        check(&f, "k1"),
        Err("cannot switch over: keeper k1 already runs the master".into())
    );
    let f = cluster().keeper("k4");
    assert_eq!(
        check(&f, "k4"),
        Err("cannot switch over: keeper k4 has no db".into())
    );

    // Unhealthy target.
    let mut f = cluster();
    f.kill("k2");
    for _ in 0..6 {
        f.tick(SEC, &["k2"]);
        step(&mut f);
    }
    assert_eq!(
        check(&f, "k2"),
        Err("cannot switch over: keeper k2: keeper not healthy".into())
    );

    // Beyond maxStandbyLag.
    let f = cluster()
        .spec(|s| s.max_standby_lag = Some(0x1000))
        .xlog("k1", 0x10000)
        .xlog("k2", 0x2000);
    assert_eq!(
        check(&f, "k2"),
        Err("cannot switch over: keeper k2: 57344 bytes behind (maxStandbyLag 4096)".into())
    );

    // Not allowed to be master.
    let f = cluster().can_be_master("k3", false);
    assert_eq!(
        check(&f, "k3"),
        Err("cannot switch over: keeper k3: keeper cannot be master".into())
    );

    // Outside the synchronous set.
    let f = sync_cluster();
    assert_eq!(
        check(&f, "k3"),
        Err("cannot switch over: keeper k3: not in the synchronous standby set".into())
    );
    assert_eq!(check(&f, ""), Ok(db_uid("k2")));

    // Cluster not in a normal state.
    let f = cluster().initializing();
    assert_eq!(
        check(&f, ""),
        Err("cannot switch over: the cluster is not in the normal phase".into())
    );
    let mut f = cluster();
    if let Some(p) = f.cd.proxy.as_mut() {
        p.spec.master_db_uid.clear();
    }
    assert_eq!(
        check(&f, ""),
        Err(
            "cannot switch over: a failover is in progress: the proxies do not route to the master"
                .into()
        )
    );
    let mut f = cluster();
    if let Some(db) = f.cd.dbs.get_mut(&db_uid("k1")) {
        db.status.healthy = false;
    }
    assert_eq!(
        check(&f, ""),
        Err("cannot switch over: the master db db_k1 is not healthy".into())
    );
    let mut f = cluster();
    request(&mut f, "k2");
    assert_eq!(
        check(&f, "k3"),
        Err("cannot switch over: switchover sw1 is in progress (phase requested)".into())
    );
    let f = cluster()
        .can_be_master("k2", false)
        .can_be_master("k3", false);
    assert_eq!(
        check(&f, ""),
        Err(
            "cannot switch over: no standby can take over (k2: keeper cannot be master; \
             k3: keeper cannot be master)"
                .into()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// A new leader at every step

/// The keepers and proxies as the real ones behave, driven by the clusterdata: the old master's
/// keeper stops PostgreSQL while its switchover says so and starts it again otherwise; the
/// target streams up to the old master's last record; proxies acknowledge every generation.
/// Returns how many instances run as writable primaries.
fn world_reacts(f: &mut ClusterFixture, old: &str, target: &str) -> usize {
    let cd = f.cd.clone();
    let sw = cd.switchover.clone().expect("record");
    let old_db = db_uid(old);
    if sw.stops(&old_db) {
        stops_cleanly(f, old, 0x6000);
    } else {
        runs_again(f, old);
    }
    // Streaming: the target has what the old master wrote, up to its shutdown checkpoint.
    reaches(f, target, 0x6028);
    f.proxies_ack();
    let old_primary = !sw.stops(&old_db)
        && cd.dbs[&old_db].spec.as_ref().and_then(|s| s.role) == Some(DbRole::Master);
    let target_primary = master(&cd) == db_uid(target);
    usize::from(old_primary) + usize::from(target_primary)
}

/// Runs a switchover to k2 with a new leader (fresh memory) at round `change_at`; returns the
/// final state and the phase the new leader found.
fn drive_with_leader_change_at(
    change_at: usize,
    sync: bool,
) -> (ClusterFixture, Option<SwitchoverPhase>) {
    let mut f = if sync { sync_cluster() } else { cluster() };
    request(&mut f, "k2");
    let mut found = None;
    for i in 0..60 {
        if i == change_at {
            f.memory = SentinelMemory::default();
            found = Some(sw(&f).phase);
        }
        let primaries = world_reacts(&mut f, "k1", "k2");
        assert!(primaries <= 1, "two writable primaries at round {i}");
        step(&mut f);
        f.tick(Duration::from_millis(500), &[]);
        if !sw(&f).phase.in_progress() {
            // A few more rounds for the old master to rejoin.
            for _ in 0..6 {
                world_reacts(&mut f, "k1", "k2");
                step(&mut f);
                f.tick(Duration::from_millis(500), &[]);
            }
            return (f, found);
        }
    }
    panic!("switchover did not finish: {:?}", f.cd.switchover);
}

#[test]
fn a_new_leader_at_every_step_finishes_the_switchover_with_one_master() {
    for sync in [false, true] {
        let mut found = std::collections::BTreeSet::new();
        for change_at in 0..12 {
            let (f, phase) = drive_with_leader_change_at(change_at, sync);
            found.extend(phase.map(|p| p.as_str()));
            let s = sw(&f);
            assert_eq!(
                s.phase,
                SwitchoverPhase::Completed,
                "leader change at {change_at} (sync {sync}): {s:?}"
            );
            let masters: Vec<&String> =
                f.cd.dbs
                    .values()
                    .filter(|db| db_kind(db) == DbKind::Master)
                    .map(|db| &db.uid)
                    .collect();
            assert_eq!(masters, [&db_uid("k2")], "leader change at {change_at}");
            assert_eq!(
                f.cd.proxy.as_ref().map(|p| p.spec.master_db_uid.clone()),
                Some(db_uid("k2"))
            );
            let old = &f.cd.dbs[&db_uid("k1")];
            assert_eq!(
                db_kind(old),
                DbKind::Standby,
                "old master kept as a standby"
            );
            assert_eq!(
                f.cd.cluster.as_ref().and_then(|c| c.status.phase),
                Some(ClusterPhase::Normal)
            );
        }
        // The new leader took over in every phase of the sequence.
        for phase in ["requested", "holding", "stopping", "promoted"] {
            assert!(
                found.contains(phase),
                "no leader change in {phase}: {found:?}"
            );
        }
    }
}
