//! The planned switchover (docs/switchover.md): the checks of a request, the choice of its
//! target, and the leader's moves through the phases kept in clusterdata.
//!
//! Pure. Every phase lives in the clusterdata record, never in the leader's memory, so a new
//! leader continues where the old one stopped. The sentinel's ordinary code calls in at three
//! places: before the cluster update ([`advance`]), when the master is judged ([`master_stop_planned`],
//! [`ready_to_promote`], [`after_promotion`]) and in the proxy handshake ([`blocks_routing`]).

use std::collections::BTreeMap;

use crate::model::{
    ClusterData, ClusterPhase, ClusterRole, Db, EffectiveSpec, FollowConfig, FollowType,
    KeeperInfo, ProxyInfo, Switchover, SwitchoverPhase,
};
use crate::timestamp::Timestamp;

use super::classify::{ConvergenceState, Ctx, keeper_of};
use super::event::Event;
use super::memory::SentinelMemory;

/// The DB a switchover would promote, or the one-line reason it cannot start now.
///
/// `target_keeper` empty: the best standby for a failover (one ranking, [`rank_targets`]).
/// Used by `stolonctl` before it writes a request (with no leader memory: a DB counts as
/// converged only when it reports its current generation) and by the leader when it accepts one.
pub fn switchover_target(cd: &ClusterData, target_keeper: &str) -> Result<String, String> {
    let spec = cd
        .check_usable()
        .map_err(|e| format!("cannot switch over: {e}"))?
        .effective();
    let mem = SentinelMemory::default();
    let ctx = Ctx {
        spec: &spec,
        mem: &mem,
        now: std::time::Duration::ZERO,
    };
    if let Some(sw) = &cd.switchover
        && sw.phase.in_progress()
    {
        return Err(format!(
            "cannot switch over: switchover {} is in progress (phase {})",
            sw.uid,
            sw.phase.as_str()
        ));
    }
    choose(cd, &ctx, target_keeper)
}

fn choose(cd: &ClusterData, ctx: &Ctx<'_>, target_keeper: &str) -> Result<String, String> {
    let refuse = |why: String| Err(format!("cannot switch over: {why}"));
    let e: &EffectiveSpec = ctx.spec;
    let phase = cd.cluster.as_ref().and_then(|c| c.status.phase);
    if phase != Some(ClusterPhase::Normal) {
        return refuse("the cluster is not in the normal phase".into());
    }
    if e.role != ClusterRole::Master {
        return refuse("a standby cluster has no primary to switch over".into());
    }
    let Some(master) = cd.master_db() else {
        return refuse("the cluster has no master".into());
    };
    let master_keeper_ok = cd
        .keepers
        .get(keeper_of(master))
        .is_some_and(|k| k.status.healthy);
    if !master.status.healthy || !master_keeper_ok {
        return refuse(format!("the master db {} is not healthy", master.uid));
    }
    if ctx.convergence(master, e.convergence_timeout.to_std()) != ConvergenceState::Converged {
        return refuse(format!("the master db {} has not converged", master.uid));
    }
    let routed = cd
        .proxy
        .as_ref()
        .is_some_and(|p| p.spec.master_db_uid == master.uid);
    if !routed {
        return refuse("a failover is in progress: the proxies do not route to the master".into());
    }
    if target_keeper.is_empty() {
        return match rank_targets(cd, ctx, master).first() {
            Some(db) => Ok(db.uid.clone()),
            None => refuse(format!(
                "no standby can take over ({})",
                rejections(cd, ctx, master)
            )),
        };
    }
    if !cd.keepers.contains_key(target_keeper) {
        return refuse(format!("keeper {target_keeper} does not exist"));
    }
    let Some(db) = cd.db_of_keeper(target_keeper) else {
        return refuse(format!("keeper {target_keeper} has no db"));
    };
    if db.uid == master.uid {
        return refuse(format!("keeper {target_keeper} already runs the master"));
    }
    match rejection(cd, ctx, master, db) {
        Some(why) => refuse(format!("keeper {target_keeper}: {why}")),
        None => Ok(db.uid.clone()),
    }
}

/// Standbys that may take over by a switchover, best first: the failover ranking (valid,
/// healthy, converged, allowed to be master, on the master's timeline, within `maxStandbyLag`,
/// then the most advanced), and with synchronous replication only those in both synchronous
/// sets. The one place a keeper priority joins the ranking.
pub(crate) fn rank_targets<'c>(cd: &'c ClusterData, ctx: &Ctx<'_>, master: &Db) -> Vec<&'c Db> {
    ctx.best_new_masters(cd, master, true)
        .into_iter()
        .filter(|db| !ctx.spec.sync_repl() || in_sync_sets(master, &db.uid))
        .collect()
}

fn rejection(cd: &ClusterData, ctx: &Ctx<'_>, master: &Db, db: &Db) -> Option<String> {
    if let Some(why) = ctx.rejection(cd, master, db, true) {
        return Some(why);
    }
    if ctx.spec.sync_repl() && !in_sync_sets(master, &db.uid) {
        return Some("not in the synchronous standby set".into());
    }
    None
}

fn rejections(cd: &ClusterData, ctx: &Ctx<'_>, master: &Db) -> String {
    let out: Vec<String> = cd
        .dbs
        .values()
        .filter(|db| db.uid != master.uid)
        .map(|db| {
            let why = rejection(cd, ctx, master, db).unwrap_or_else(|| "eligible".into());
            format!("{}: {why}", keeper_of(db))
        })
        .collect();
    if out.is_empty() {
        "no standby".into()
    } else {
        out.join("; ")
    }
}

fn in_sync_sets(master: &Db, uid: &str) -> bool {
    // Quorum commit: any standby known to share the promise (S_eff). The clean stop and the
    // target's catch-up to the shutdown checkpoint make the switchover safe whichever it is.
    let quorum = master.status.synchronous_quorum.is_some()
        || master
            .spec
            .as_ref()
            .is_some_and(|s| s.synchronous_quorum.is_some());
    if quorum {
        return master
            .status
            .synchronous_standbys
            .as_ref()
            .is_some_and(|v| v.iter().any(|u| u == uid));
    }
    let in_spec = master
        .spec
        .as_ref()
        .and_then(|s| s.synchronous_standbys.as_ref())
        .is_some_and(|v| v.iter().any(|u| u == uid));
    let in_status = master
        .status
        .synchronous_standbys
        .as_ref()
        .is_some_and(|v| v.iter().any(|u| u == uid));
    in_spec && in_status
}

fn master_uid(cd: &ClusterData) -> &str {
    cd.cluster
        .as_ref()
        .map(|c| c.status.master.as_str())
        .unwrap_or("")
}

fn event(sw: &Switchover, detail: String) -> Event {
    Event::Switchover {
        phase: sw.phase,
        db: sw.target_db.clone(),
        detail: format!("switchover={} {detail}", sw.uid),
    }
}

fn fail(cd: &mut ClusterData, reason: String, now_wall: Timestamp, events: &mut Vec<Event>) {
    if let Some(sw) = cd.switchover.as_mut() {
        sw.phase = SwitchoverPhase::Failed;
        sw.end_time = now_wall;
        sw.reason = reason.clone();
        events.push(event(sw, format!("reason={reason:?}")));
    }
}

/// Moves the switchover recorded in `cd` on by at most one phase, before the cluster update.
/// Nothing on a leader's first round (no health judged yet), nothing without a record in
/// progress.
#[allow(clippy::too_many_arguments)]
pub(crate) fn advance(
    cd: &mut ClusterData,
    ctx: &Ctx<'_>,
    first_run: bool,
    active_proxies: &[String],
    proxies_info: &BTreeMap<String, ProxyInfo>,
    keepers_info: &BTreeMap<String, KeeperInfo>,
    now_wall: Timestamp,
    events: &mut Vec<Event>,
) {
    let Some(sw) = cd.switchover.clone() else {
        return;
    };
    if first_run || !sw.phase.in_progress() {
        return;
    }
    match sw.phase {
        SwitchoverPhase::Requested => match choose(cd, ctx, &sw.target_keeper) {
            Err(reason) => fail(cd, reason, now_wall, events),
            Ok(target) => {
                let old = master_uid(cd).to_string();
                if let Some(p) = cd.proxy.as_mut() {
                    p.spec.master_db_uid.clear();
                    p.generation += 1;
                }
                if let Some(s) = cd.switchover.as_mut() {
                    s.phase = SwitchoverPhase::Holding;
                    s.target_db = target;
                    s.old_master_db = old.clone();
                    s.start_time = now_wall;
                    events.push(event(s, format!("old_master={old}")));
                }
            }
        },
        SwitchoverPhase::Holding | SwitchoverPhase::Stopping => {
            if let Some(reason) = rollback_reason(cd, ctx, &sw, now_wall) {
                fail(cd, reason, now_wall, events);
                return;
            }
            if sw.phase == SwitchoverPhase::Holding {
                let generation = cd.proxy.as_ref().map(|p| p.generation).unwrap_or(0);
                let fenced = active_proxies
                    .iter()
                    .all(|uid| proxies_info.get(uid).map(|i| i.generation) == Some(generation));
                if fenced && let Some(s) = cd.switchover.as_mut() {
                    s.phase = SwitchoverPhase::Stopping;
                    events.push(event(s, format!("old_master={}", s.old_master_db)));
                }
            } else if sw.final_xlog_pos == 0 {
                let keeper = cd
                    .dbs
                    .get(&sw.old_master_db)
                    .map(keeper_of)
                    .unwrap_or("")
                    .to_string();
                let pos = keepers_info
                    .get(&keeper)
                    .and_then(|i| i.postgres_state.as_ref())
                    .filter(|ps| {
                        ps.uid == sw.old_master_db
                            && !ps.healthy
                            && ps.stopped_for_switchover == sw.uid
                    })
                    .map(|ps| ps.shutdown_checkpoint)
                    .unwrap_or(0);
                if pos > 0
                    && let Some(s) = cd.switchover.as_mut()
                {
                    s.final_xlog_pos = pos;
                    events.push(Event::SwitchoverOldMasterStopped {
                        db: s.old_master_db.clone(),
                        keeper,
                        final_xlog_pos: lsn(pos),
                    });
                }
            }
        }
        SwitchoverPhase::Promoted => {
            let routed = cd
                .proxy
                .as_ref()
                .is_some_and(|p| p.spec.master_db_uid == sw.target_db);
            if master_uid(cd) != sw.target_db {
                // A failover replaced the target after its promotion.
                fail(
                    cd,
                    format!("the master changed to {} after promotion", master_uid(cd)),
                    now_wall,
                    events,
                );
            } else if routed && let Some(s) = cd.switchover.as_mut() {
                s.phase = SwitchoverPhase::Completed;
                s.end_time = now_wall;
                events.push(event(s, format!("old_master={}", s.old_master_db)));
                let (old, new, start) =
                    (s.old_master_db.clone(), s.target_db.clone(), s.start_time);
                super::history::set_write_pause(cd, &old, &new, start, now_wall);
            }
        }
        SwitchoverPhase::Completed | SwitchoverPhase::Failed => {}
    }
}

/// Why a switchover not yet promoted must be rolled back, if it must.
fn rollback_reason(
    cd: &ClusterData,
    ctx: &Ctx<'_>,
    sw: &Switchover,
    now_wall: Timestamp,
) -> Option<String> {
    let timeout = i128::from(sw.timeout.0.max(0));
    if now_wall.unix_nanos() - sw.start_time.unix_nanos() > timeout {
        return Some(format!(
            "timed out after {} in phase {}",
            sw.timeout,
            sw.phase.as_str()
        ));
    }
    if master_uid(cd) != sw.old_master_db {
        return Some(format!("the master changed to {}", master_uid(cd)));
    }
    let keeper_healthy = |db: &str| {
        cd.dbs
            .get(db)
            .and_then(|d| cd.keepers.get(keeper_of(d)))
            .is_some_and(|k| k.status.healthy)
    };
    if !keeper_healthy(&sw.old_master_db) {
        return Some("the old master's keeper is not healthy".into());
    }
    let (Some(master), Some(target)) = (cd.dbs.get(&sw.old_master_db), cd.dbs.get(&sw.target_db))
    else {
        return Some("the target db no longer exists".into());
    };
    // No lag check: the master is (being) stopped; the target must reach its final position.
    if let Some(why) = ctx.rejection(cd, master, target, false) {
        return Some(format!("the target is no longer eligible: {why}"));
    }
    if ctx.spec.sync_repl() && !in_sync_sets(master, &target.uid) {
        return Some("the target left the synchronous standby set".into());
    }
    None
}

/// True while the master `db` is down on purpose: its switchover is stopping it, or rolled back
/// less than `failInterval` ago and its keeper is starting it again. The master is then not
/// failed over; the switchover promotes the target or rolls back within its timeout.
pub(crate) fn master_stop_planned(
    cd: &ClusterData,
    db: &str,
    ctx: &Ctx<'_>,
    now_wall: Timestamp,
) -> bool {
    cd.switchover.as_ref().is_some_and(|sw| {
        let grace = i128::try_from(ctx.spec.fail_interval.to_std().as_nanos()).unwrap_or(i128::MAX);
        sw.stops(db)
            || (sw.phase == SwitchoverPhase::Failed
                && sw.old_master_db == db
                && !sw.start_time.is_zero()
                && now_wall.unix_nanos() - sw.end_time.unix_nanos() <= grace)
    })
}

/// True while the proxies must not be given `master` back: a switchover took it away from them.
pub(crate) fn blocks_routing(sw: Option<&Switchover>, master: &str) -> bool {
    sw.is_some_and(|sw| {
        matches!(
            sw.phase,
            SwitchoverPhase::Holding | SwitchoverPhase::Stopping
        ) && sw.old_master_db == master
    })
}

/// The target to promote now, if the switchover of master `cur` is ready: the old master
/// stopped and reported its final position, and the target has WAL beyond it (flushed to its
/// disk; promotion replays all of it), so it holds every acknowledged commit.
pub(crate) fn ready_to_promote(cd: &ClusterData, ctx: &Ctx<'_>, cur: &Db) -> Option<String> {
    let sw = cd.switchover.as_ref()?;
    if sw.phase != SwitchoverPhase::Stopping || sw.old_master_db != cur.uid {
        return None;
    }
    if sw.final_xlog_pos == 0 {
        return None;
    }
    let target = cd.dbs.get(&sw.target_db)?;
    if target.status.xlog_pos <= sw.final_xlog_pos {
        return None;
    }
    if ctx.rejection(cd, cur, target, false).is_some() {
        return None;
    }
    if ctx.spec.sync_repl() && !in_sync_sets(cur, &target.uid) {
        return None;
    }
    Some(target.uid.clone())
}

/// After the election of the switchover's target: the old master follows it as a standby (it
/// stopped cleanly at a position the target has, so it needs no rewind), the change enters the
/// history as a switchover, and the record moves to `promoted`. False when this election is not
/// the switchover's (a failover, which the caller records).
pub(crate) fn after_promotion(
    cd: &mut ClusterData,
    old: &str,
    target: &str,
    events: &mut Vec<Event>,
    now_wall: Timestamp,
) -> bool {
    let Some(sw) = cd.switchover.as_ref() else {
        return false;
    };
    if sw.phase != SwitchoverPhase::Stopping || sw.old_master_db != old || sw.target_db != target {
        return false;
    }
    let final_xlog_pos = sw.final_xlog_pos;
    super::history::record_switchover(cd, old, target, final_xlog_pos, now_wall);
    if let Some(s) = cd.dbs.get_mut(old).and_then(|d| d.spec.as_mut()) {
        s.follow_config = Some(FollowConfig {
            kind: Some(FollowType::Internal),
            db_uid: target.to_string(),
            ..Default::default()
        });
    }
    if let Some(s) = cd.switchover.as_mut() {
        s.phase = SwitchoverPhase::Promoted;
        events.push(event(
            s,
            format!(
                "old_master={} final_xlog_pos={}",
                s.old_master_db,
                lsn(s.final_xlog_pos)
            ),
        ));
    }
    true
}

/// A WAL position as PostgreSQL prints it (`16/B374D848`).
fn lsn(pos: u64) -> String {
    format!("{:X}/{:X}", pos >> 32, pos & 0xffff_ffff)
}
