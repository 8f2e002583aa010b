//! Synchronous standbys the master reports as no longer in sync (docs/architecture.md §6.7).
//!
//! A synchronous standby whose host is cut off keeps its keeper healthy in the sentinel's eyes
//! until `failInterval` has passed without a report from it, and every commit on the master
//! waits for it all that time. The master sees the loss first: its walsender for that standby
//! ends (`wal_sender_timeout`, or at once when the connection breaks) and the standby leaves
//! the in-sync list the master's keeper reports. This rule acts on that report: a standby known
//! to be in sync that the master's current report no longer lists is replaced at once, through
//! the usual two-step change (so a standby known in sync stays listed until its replacement is
//! reported in sync), and only standbys the master reports in sync ever become electable.
//!
//! A lost standby is remembered (in the leader's memory) for `failInterval`, and not chosen as
//! a new synchronous standby meanwhile: to the master it looks like any asynchronous standby,
//! and listing one that cannot stream would stall commits again. After `failInterval` its
//! keeper has failed if the standby's host is really cut off, or it is a candidate again.
//!
//! Pure. The master's report counts only when it is this round's: the master's keeper has a
//! fresh info and its DB reported a healthy state (a leader's first round, a silent keeper or
//! an unhealthy report leave no report to act on, and nothing is replaced).

use std::collections::BTreeSet;

use crate::model::{ClusterData, Db, EffectiveSpec};

use super::classify::{Ctx, keeper_of};
use super::memory::{MonoInstant, SentinelMemory};

/// The standbys in `known_in_sync` that the master's report of this round does not list as in
/// sync; empty when this round has no fresh, healthy report from the master.
pub(crate) fn lost_sync_standbys(
    ctx: &Ctx<'_>,
    cd: &ClusterData,
    master: &Db,
    known_in_sync: &[String],
) -> BTreeSet<String> {
    if !master_report_is_current(ctx, cd, master) {
        return BTreeSet::new();
    }
    known_in_sync
        .iter()
        .filter(|u| !master.status.cur_synchronous_standbys.contains(u))
        .cloned()
        .collect()
}

/// Whether `master`'s in-sync list in its status was reported this round: its keeper's info is
/// fresh (proof of life seen by this leader) and its DB is not in error.
fn master_report_is_current(ctx: &Ctx<'_>, cd: &ClusterData, master: &Db) -> bool {
    let keeper = keeper_of(master);
    let seen = ctx.mem.keeper_infos.get(keeper).is_some_and(|h| h.seen);
    let keeper_fresh = !ctx.mem.keeper_error_since.contains_key(keeper);
    let db_ok = !ctx.mem.db_error_since.contains_key(&master.uid) && master.status.healthy;
    let keeper_healthy = cd.keepers.get(keeper).is_some_and(|k| k.status.healthy);
    seen && keeper_fresh && db_ok && keeper_healthy
}

/// Quorum commit: the standbys of `listed` the master is expected to report streaming: those it
/// reported streaming while listed, and those listed for longer than `failInterval` (a listed
/// standby that never starts streaming is lost too, or it would stay listed for nothing).
pub(crate) fn expected_streaming(
    mem: &SentinelMemory,
    listed: &[String],
    spec: &EffectiveSpec,
    now: MonoInstant,
) -> Vec<String> {
    let fail = spec.fail_interval.to_std();
    listed
        .iter()
        .filter(|u| {
            mem.sync_streaming.contains(*u)
                || mem
                    .sync_listed_since
                    .get(*u)
                    .is_some_and(|t| now.saturating_sub(*t) > fail)
        })
        .cloned()
        .collect()
}

/// Whether `uid` was lost as a synchronous standby less than `failInterval` ago.
pub(crate) fn recently_lost(ctx: &Ctx<'_>, uid: &str) -> bool {
    ctx.mem
        .sync_lost
        .get(uid)
        .is_some_and(|t| ctx.now.saturating_sub(*t) <= ctx.spec.fail_interval.to_std())
}

/// After a decision: remembers the standbys the master `prev` knew in sync that its current
/// report in `cd` no longer lists, and forgets those reported in sync again, gone, or lost
/// longer than `failInterval` ago.
pub(crate) fn remember_losses(
    mem: &mut SentinelMemory,
    prev: &ClusterData,
    cd: &ClusterData,
    spec: &EffectiveSpec,
    now: MonoInstant,
) {
    let fail = spec.fail_interval.to_std();
    // What a former master reported says nothing about the new one's standbys.
    let master_of = |c: &ClusterData| c.cluster.as_ref().map(|c| c.status.master.clone());
    if master_of(prev) != master_of(cd) {
        mem.sync_streaming.clear();
        mem.sync_listed_since.clear();
    }
    let lost = match cd.master_db() {
        Some(master) => {
            // Quorum commit: the listed standbys expected to stream (S_eff also holds standbys
            // that never streamed); otherwise those known in sync.
            let quorum = master
                .spec
                .as_ref()
                .is_some_and(|s| s.synchronous_quorum.is_some());
            let list_of = |d: Option<&Db>| -> Vec<String> {
                d.and_then(|db| db.spec.as_ref())
                    .and_then(|s| s.synchronous_standbys.clone())
                    .unwrap_or_default()
            };
            // Listed before this decision (one it dropped on purpose is not lost) and after.
            let listed_before = list_of(prev.dbs.get(&master.uid));
            let listed_after = list_of(Some(master));
            let known: Vec<String> = if quorum {
                expected_streaming(mem, &listed_before, spec, now)
            } else {
                prev.dbs
                    .get(&master.uid)
                    .and_then(|db| db.status.synchronous_standbys.clone())
                    .unwrap_or_default()
            };
            let view = mem.clone();
            let ctx = Ctx {
                spec,
                mem: &view,
                now,
            };
            let current = master_report_is_current(&ctx, cd, master);
            if current {
                for u in &master.status.cur_synchronous_standbys {
                    mem.sync_lost.remove(u);
                }
            }
            let lost = lost_sync_standbys(&ctx, cd, master, &known);
            if !quorum {
                mem.sync_streaming.clear();
                mem.sync_listed_since.clear();
            } else {
                if current {
                    mem.sync_streaming.extend(
                        master
                            .status
                            .cur_synchronous_standbys
                            .iter()
                            .filter(|u| listed_after.contains(u))
                            .cloned(),
                    );
                }
                for u in &listed_after {
                    mem.sync_listed_since.entry(u.clone()).or_insert(now);
                }
                // Kept while listed before or after this decision: a decision whose write is
                // lost leaves the store listing them, and the next one must see them again.
                let listed = |u: &String| listed_before.contains(u) || listed_after.contains(u);
                mem.sync_streaming.retain(|u| listed(u));
                mem.sync_listed_since.retain(|u, _| listed(u));
            }
            lost
        }
        None => BTreeSet::new(),
    };
    for u in lost {
        mem.sync_lost.entry(u).or_insert(now);
    }
    mem.sync_lost
        .retain(|u, t| cd.dbs.contains_key(u) && now.saturating_sub(*t) <= fail);
}
