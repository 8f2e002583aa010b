//! Quorum commit (`quorumCommit`, docs/synchronous-replication.md): the master lists up to
//! `maxSynchronousStandbys` standbys as `ANY k (...)` and every commit waits for any `k` of them,
//! so losing one listed standby while `k` others stream stalls nothing.
//!
//! Pure. Two sets are kept for the master:
//!
//! - **S_spec** (the master's `spec.synchronousStandbys`, with `spec.synchronousQuorum` = k):
//!   what the master is told to wait for.
//! - **S_eff** (the master's `status.synchronousStandbys`, with `status.synchronousQuorum` =
//!   k_eff): every acknowledged commit is on at least k_eff members of S_eff. Unset
//!   `synchronousQuorum` means all of them (Stolon's meaning); an empty S_eff promises nothing.
//!
//! # Why S_eff keeps its promise
//!
//! Write "(S, k) holds" for "every acknowledged commit is on at least k members of S", and
//! take `k` of a list as the number of its members a commit waits for (capped at its length).
//!
//! 1. *A change of S_spec.* Commits acknowledged before the master applies the new list satisfy
//!    (S_eff, k_eff); those after satisfy (S_spec, k). Both satisfy (S_eff ∪ S_spec,
//!    min(k_eff, k)), so S_eff becomes that union at once, in the same write that changes the
//!    list: growing the set or lowering k is safe at once, and a removed standby stays in S_eff.
//!    While the fake standby is listed the master acknowledges nothing, so k_eff is not lowered
//!    then. A list with no name at all makes commits wait for nobody: S_eff is emptied (no
//!    promise, no synchronous election).
//! 2. *Catch-up.* The change records the master generation G that carries the new list. The
//!    master's first healthy report of generation ≥ G was measured after it applied the list:
//!    its WAL position P is then at or past every commit acknowledged under an older list. Once
//!    k members of S_spec report positions ≥ P on the master's timeline (positions are flush
//!    positions and only grow), every older commit is on k members of S_spec, and every newer
//!    one too by the list itself: S_eff := S_spec, k_eff := k. This is how a lost standby, or a
//!    raised k, finally leaves S_eff.
//! 3. *After an election* the new master's S_eff starts empty, and is set by the catch-up rule
//!    alone: commits acknowledged before the promotion are on the new master, and on a listed
//!    standby only once it reached the new master's position after promotion.
//!
//! # Why a quorum-mode failover loses no acknowledged commit
//!
//! Electing any member of S_eff is not enough: with k < |S_eff| a member may lack commits the
//! others acknowledged, and the old master may still commit through another standby until every
//! proxy stopped routing to it. The failover therefore goes in phases, recorded in clusterdata
//! (`quorumFailover`) so a new leader continues them:
//!
//! 1. *Fence*: the proxies' target is cleared (generation bump), and nothing else changes.
//! 2. *Request final positions*: once every active proxy acknowledged that generation (the
//!    handshake of invariant 2; a proxy no longer active has fenced itself), no commit through
//!    the proxies can be acknowledged any more. The generation of every standby in S_eff ∪
//!    S_spec is bumped (its spec unchanged: its keeper only marks it converged). A keeper
//!    reports a generation only after it read clusterdata carrying it, and measures its WAL
//!    position after that read (read, converge, query, publish), so a report of the bumped
//!    generation carries a position measured after the fence: a *final* position.
//! 3. *Elect*: R is the set of standbys with a final report, healthy, of the master's system
//!    and timeline. If R holds at least |S| − k + 1 members of S for S = S_eff (k_eff) and S =
//!    S_spec (k), then every k-subset of S meets R; every acknowledged commit is on some k
//!    members of S_eff, so on a member of R, so at or below the highest final position in R.
//!    WAL on one timeline is one sequence, so the member of R at that position holds every
//!    acknowledged commit, and only such a member is elected. Otherwise the sentinel waits.
//!
//! If the master is good again before the election the record is dropped and the usual proxy
//! handshake routes to it again.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    ClusterData, Db, ProxyInfo, QuorumCatchUp, QuorumFailover, QuorumFailoverPhase,
};

use super::classify::{ConvergenceState, Ctx, DbStatusKind, FAKE_STANDBY_NAME, keeper_of};
use super::decide::Fresh;
use super::event::Event;

/// Quorum commit is asked for and the master's PostgreSQL supports `ANY k (...)` (10 or later;
/// an unknown version is assumed recent).
pub(crate) fn quorum_on(ctx: &Ctx<'_>, cd: &ClusterData, master: &Db) -> bool {
    ctx.spec.quorum()
        && cd.keepers.get(keeper_of(master)).is_none_or(|k| {
            let v = k.status.postgres_binary_version;
            v.maj == 0 || v.maj >= 10
        })
}

/// Whether the master's synchronous sets follow the quorum rules: quorum commit is on, or the
/// master still carries a quorum-form promise (quorum commit was just turned off: the rules stay
/// until the catch-up turned the promise back into Stolon's form).
pub(crate) fn governs(ctx: &Ctx<'_>, cd: &ClusterData, master: &Db) -> bool {
    quorum_on(ctx, cd, master)
        || master.status.synchronous_quorum.is_some()
        || master.status.quorum_catch_up.is_some()
}

/// Whether a quorum failover of `master` is under way (the proxies must not be routed to it, and
/// its synchronous sets stay as they are, until it is dropped).
pub(crate) fn failover_pending(cd: &ClusterData, master_uid: &str) -> bool {
    cd.quorum_failover
        .as_ref()
        .is_some_and(|r| r.master_db_uid == master_uid)
}

/// Whether a failover of `master` follows the quorum rules: its spec or its promise is in
/// quorum form, or a quorum failover of it is under way.
pub(crate) fn failover_governs(cd: &ClusterData, master: &Db) -> bool {
    master
        .spec
        .as_ref()
        .is_some_and(|s| s.synchronous_replication && s.synchronous_quorum.is_some())
        || master.status.synchronous_quorum.is_some()
        || master.status.quorum_catch_up.is_some()
        || cd
            .quorum_failover
            .as_ref()
            .is_some_and(|r| r.master_db_uid == master.uid)
}

/// How many members of a list of `len` names a commit waits for with quorum `k` (None: all).
fn waits_for(k: Option<u16>, len: usize) -> usize {
    k.map_or(len, |k| usize::from(k).min(len))
}

fn to_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Synchronous standby management in quorum mode (master healthy and converged): S_spec is
/// computed as in docs/synchronous-replication.md, S_eff follows the rules of the module doc.
pub(crate) fn sync_standbys(
    cd: &mut ClusterData,
    master_uid: &str,
    ctx: &Ctx<'_>,
    events: &mut Vec<Event>,
) {
    let e = ctx.spec;
    let Some(master) = cd.dbs.get(master_uid).cloned() else {
        return;
    };
    let on = quorum_on(ctx, cd, &master);
    let (min, max) = (
        usize::from(e.min_synchronous_standbys),
        usize::from(e.max_synchronous_standbys),
    );
    let k_want = if on { Some(e.quorum_size()) } else { None };
    let mspec = master.spec.clone().unwrap_or_default();
    let prev_list = mspec.synchronous_standbys.clone().unwrap_or_default();
    let prev_external = mspec
        .external_synchronous_standbys
        .clone()
        .unwrap_or_default();
    let prev_k = mspec.synchronous_quorum;

    // 1. S_spec: keep the listed standbys that are neither lost (the master stopped reporting
    // them streaming) nor failed, at most `max` of them, then fill up with the best others.
    let known = super::syncloss::expected_streaming(ctx.mem, &prev_list, ctx.spec, ctx.now);
    let lost = super::syncloss::lost_sync_standbys(ctx, cd, &master, &known);
    let mut set: Vec<String> = prev_list
        .iter()
        .filter(|u| !lost.contains(*u))
        .filter(|u| {
            cd.dbs
                .get(*u)
                .is_some_and(|db| ctx.db_status(cd, db) != DbStatusKind::Failed)
        })
        .cloned()
        .collect();
    super::update::trim_and_fill_sync_set(cd, ctx, &master, &mut set, &lost, max, max);
    set.sort();
    let external = if set.len() < min {
        vec![FAKE_STANDBY_NAME.to_string()]
    } else {
        Vec::new()
    };
    let changed = set != prev_list || external != prev_external || k_want != prev_k;

    // 2. S_eff.
    let mut eff = master
        .status
        .synchronous_standbys
        .clone()
        .unwrap_or_default();
    let mut k_eff = waits_for(master.status.synchronous_quorum, eff.len());
    let mut catch_up = master.status.quorum_catch_up.clone();
    if changed {
        if set.is_empty() && external.is_empty() {
            // Commits wait for nobody from now on: no promise.
            eff.clear();
            k_eff = 0;
        } else if !eff.is_empty() {
            let k_new = waits_for(k_want, set.len());
            for u in &set {
                if !eff.contains(u) {
                    eff.push(u.clone());
                }
            }
            eff.sort();
            if external.is_empty() {
                k_eff = k_eff.min(k_new);
            }
        }
        // The master's generation is bumped once at the end of this round for the new list.
        catch_up = Some(QuorumCatchUp {
            generation: master.generation + 1,
            position: 0,
        });
        let mut shown = set.clone();
        shown.extend(external.iter().cloned());
        let mut before = prev_list.clone();
        before.extend(prev_external.iter().cloned());
        events.push(Event::SyncStandbysChanged {
            db: master_uid.to_string(),
            previous: before.join(","),
            current: shown.join(","),
        });
    } else if let Some(c) = catch_up.as_mut() {
        if c.position == 0
            && master_report_is_current(ctx, cd, &master)
            && master.status.current_generation >= c.generation
        {
            c.position = master.status.xlog_pos.max(1);
        }
        let need = waits_for(k_want, set.len()).max(1);
        if c.position > 0 && !set.is_empty() && external.is_empty() {
            let at_p = set
                .iter()
                .filter_map(|u| cd.dbs.get(u))
                .filter(|db| {
                    db.status.timeline_id == master.status.timeline_id
                        && db.status.system_id == master.status.system_id
                        && db.status.xlog_pos >= c.position
                })
                .count();
            if at_p >= need {
                eff = set.clone();
                k_eff = waits_for(k_want, set.len());
                catch_up = None;
            }
        }
    }

    let before = (
        master
            .status
            .synchronous_standbys
            .clone()
            .unwrap_or_default(),
        master.status.synchronous_quorum,
    );
    // Stolon's form (every member) is written without a quorum, so a cluster leaving quorum
    // mode returns to Stolon's rules once nothing is pending.
    let k_field = if eff.is_empty() || (!on && catch_up.is_none() && k_eff == eff.len()) {
        None
    } else {
        Some(to_u16(k_eff))
    };
    if (eff.clone(), k_field) != before {
        events.push(Event::QuorumSetKnown {
            db: master_uid.to_string(),
            standbys: eff.join(","),
            quorum: to_u16(k_eff),
        });
    }
    if let Some(db) = cd.dbs.get_mut(master_uid) {
        if let Some(s) = db.spec.as_mut() {
            s.synchronous_replication = true;
            s.synchronous_standbys = Some(set);
            s.external_synchronous_standbys = Some(external);
            s.synchronous_quorum = k_want;
        }
        db.status.synchronous_standbys = Some(eff);
        db.status.synchronous_quorum = k_field;
        db.status.quorum_catch_up = catch_up;
    }
}

/// The same test as syncloss.rs: the master's status was reported this round, healthy.
fn master_report_is_current(ctx: &Ctx<'_>, cd: &ClusterData, master: &Db) -> bool {
    let keeper = keeper_of(master);
    ctx.mem.keeper_infos.get(keeper).is_some_and(|h| h.seen)
        && !ctx.mem.keeper_error_since.contains_key(keeper)
        && !ctx.mem.db_error_since.contains_key(&master.uid)
        && master.status.healthy
        && cd.keepers.get(keeper).is_some_and(|k| k.status.healthy)
}

/// The new master's synchronous sets at an election in quorum mode: its quorum, and a promise
/// that starts empty and waits for the catch-up (rule 3 of the module doc).
pub(crate) fn on_election(cd: &mut ClusterData, wanted: &str, ctx: &Ctx<'_>) {
    let on = cd.dbs.get(wanted).is_some_and(|db| quorum_on(ctx, cd, db));
    if let Some(db) = cd.dbs.get_mut(wanted) {
        if let Some(s) = db.spec.as_mut()
            && s.synchronous_replication
        {
            s.synchronous_quorum = on.then(|| ctx.spec.quorum_size());
        }
        db.status.synchronous_standbys = Some(Vec::new());
        db.status.synchronous_quorum = None;
        db.status.quorum_catch_up = Some(QuorumCatchUp {
            generation: db.generation + 1,
            position: 0,
        });
    }
}

/// Drops a recorded quorum failover that no longer applies: of another master, or of a master
/// that is good again (the proxy handshake then routes to it again). Good again means a healthy
/// report of this round from its keeper, not merely a keeper not yet judged failed (a new
/// leader gives every keeper `failInterval` before judging it).
pub(crate) fn drop_stale_record(
    cd: &mut ClusterData,
    master: &Db,
    ctx: &Ctx<'_>,
    fresh: &Fresh<'_>,
    events: &mut Vec<Event>,
) {
    let Some(r) = cd.quorum_failover.as_ref() else {
        return;
    };
    let reported = fresh
        .infos
        .get(keeper_of(master))
        .and_then(|i| i.postgres_state.as_ref())
        .is_some_and(|ps| ps.uid == master.uid && ps.healthy);
    let good = reported
        && master.status.healthy
        && ctx.convergence(master, ctx.spec.convergence_timeout.to_std())
            == ConvergenceState::Converged;
    if r.master_db_uid != master.uid {
        cd.quorum_failover = None;
    } else if good {
        cd.quorum_failover = None;
        events.push(Event::QuorumFailoverAborted {
            db: master.uid.clone(),
        });
    }
}

/// One round of a quorum-mode failover of `cur` (not ok): returns the DB to elect once the
/// rules of the module doc allow it, `None` while waiting.
pub(crate) fn failover(
    cd: &mut ClusterData,
    cur: &Db,
    ctx: &Ctx<'_>,
    active_proxies: &[String],
    proxies_info: &BTreeMap<String, ProxyInfo>,
    fresh: &Fresh<'_>,
    events: &mut Vec<Event>,
) -> Option<String> {
    let proxy = cd.proxy.get_or_insert_with(Default::default);
    // A record is valid only while the proxies' target stays cleared.
    let mut record = cd
        .quorum_failover
        .clone()
        .filter(|r| r.master_db_uid == cur.uid && proxy.spec.master_db_uid.is_empty());

    // a. Fence.
    if record.is_none() {
        if !proxy.spec.master_db_uid.is_empty() {
            proxy.spec.master_db_uid.clear();
            proxy.generation += 1;
        }
        record = Some(QuorumFailover {
            master_db_uid: cur.uid.clone(),
            phase: QuorumFailoverPhase::Fencing,
            proxy_generation: proxy.generation,
            generations: BTreeMap::new(),
        });
        events.push(Event::QuorumFailoverFencing {
            db: cur.uid.clone(),
        });
    }
    let mut r = record?;
    let proxy_generation = proxy.generation;
    let members = members(cur);

    match r.phase {
        QuorumFailoverPhase::Fencing => {
            r.proxy_generation = proxy_generation;
            let fenced = active_proxies.iter().all(|uid| {
                proxies_info
                    .get(uid)
                    .is_some_and(|i| i.generation == proxy_generation)
            });
            if fenced {
                // b. Request final positions: a generation bump of every synchronous standby.
                for u in &members {
                    if u == &cur.uid {
                        continue;
                    }
                    if let Some(db) = cd.dbs.get_mut(u) {
                        db.generation += 1;
                        r.generations.insert(u.clone(), db.generation);
                    }
                }
                r.phase = QuorumFailoverPhase::Positions;
                events.push(Event::QuorumFailoverRequestingPositions {
                    db: cur.uid.clone(),
                    standbys: r.generations.keys().cloned().collect::<Vec<_>>().join(","),
                });
            }
            // (While not fenced, the proxy handshake reports the wait.)
            cd.quorum_failover = Some(r);
            None
        }
        QuorumFailoverPhase::Positions => {
            let elected = elect_from_positions(cd, cur, ctx, &r, fresh, events);
            cd.quorum_failover = if elected.is_some() { None } else { Some(r) };
            elected
        }
    }
}

/// S_eff ∪ S_spec of `master`, sorted.
fn members(master: &Db) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = master
        .status
        .synchronous_standbys
        .iter()
        .flatten()
        .cloned()
        .collect();
    if let Some(s) = master.spec.as_ref() {
        out.extend(s.synchronous_standbys.iter().flatten().cloned());
    }
    out
}

/// The final position of `uid`: this round's healthy report of its keeper, for this DB, of at
/// least the requested generation, on the old master's system and timeline.
fn final_position(
    cd: &ClusterData,
    cur: &Db,
    uid: &str,
    generation: i64,
    fresh: &Fresh<'_>,
) -> Option<u64> {
    let db = cd.dbs.get(uid)?;
    let keeper = cd.keepers.get(keeper_of(db))?;
    if !keeper.status.healthy || !db.status.healthy {
        return None;
    }
    let ps = fresh.infos.get(keeper_of(db))?.postgres_state.as_ref()?;
    (ps.uid == uid
        && ps.healthy
        && ps.generation >= generation
        && ps.timeline_id == cur.status.timeline_id
        && ps.system_id == cur.status.system_id)
        .then_some(ps.xlog_pos)
}

fn elect_from_positions(
    cd: &ClusterData,
    cur: &Db,
    ctx: &Ctx<'_>,
    r: &QuorumFailover,
    fresh: &Fresh<'_>,
    events: &mut Vec<Event>,
) -> Option<String> {
    let positions: BTreeMap<String, u64> = r
        .generations
        .iter()
        .filter_map(|(u, g)| final_position(cd, cur, u, *g, fresh).map(|p| (u.clone(), p)))
        .collect();
    let eff: Vec<String> = cur.status.synchronous_standbys.clone().unwrap_or_default();
    let k_eff = waits_for(cur.status.synchronous_quorum, eff.len());
    let spec = cur.spec.clone().unwrap_or_default();
    let spec_list = spec.synchronous_standbys.clone().unwrap_or_default();
    let k_spec = waits_for(spec.synchronous_quorum, spec_list.len());
    // With the fake standby listed the master acknowledged nothing under that list: only the
    // known set speaks for the acknowledged commits.
    let blocked = spec
        .external_synchronous_standbys
        .iter()
        .flatten()
        .any(|n| n == FAKE_STANDBY_NAME);
    let mut sets = vec![("known", &eff, k_eff)];
    if !blocked {
        sets.push(("listed", &spec_list, k_spec));
    }
    let mut have = Vec::new();
    let mut need = Vec::new();
    let mut enough = true;
    for (name, set, k) in sets {
        let got = set.iter().filter(|u| positions.contains_key(*u)).count();
        // An empty set or k = 0 promises nothing: |S| - k + 1 > |S| can never be met.
        let needed = set.len() + 1 - k.min(set.len());
        let needed = if k == 0 { set.len() + 1 } else { needed };
        have.push(format!("{name}: {got}/{needed}"));
        if got < needed {
            enough = false;
            let missing: Vec<&str> = set
                .iter()
                .filter(|u| !positions.contains_key(*u))
                .map(String::as_str)
                .collect();
            need.push(format!("{name}: {}", missing.join(",")));
        }
    }
    #[cfg(any(test, feature = "testing"))]
    if super::testing::quorum_bug() && !positions.is_empty() {
        enough = true;
    }
    if !enough {
        events.push(Event::WaitingForQuorumPositions {
            db: cur.uid.clone(),
            have: have.join("; "),
            need: need.join("; "),
        });
        return None;
    }
    let top = positions.values().copied().max()?;
    // The usual ranking (priority, then the most advanced), among the standbys at the highest
    // final position only: any other may lack an acknowledged commit.
    let chosen = ctx
        .best_new_masters(cd, cur, false)
        .into_iter()
        .find(|db| positions.get(&db.uid) == Some(&top))
        .map(|db| db.uid.clone());
    if chosen.is_none() {
        events.push(Event::NoEligibleSyncMasters {
            db: cur.uid.clone(),
        });
    }
    chosen
}
