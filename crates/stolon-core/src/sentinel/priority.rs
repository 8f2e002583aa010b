//! Keeper priority and the ranking of candidate masters (docs/operations.md, "Keeper priority").
//!
//! A keeper publishes `--priority N` in its info; the sentinel copies it into the keeper's
//! status in clusterdata. Absent means [`DEFAULT_KEEPER_PRIORITY`], so a cluster whose keepers
//! never set it elects exactly as before. A priority of 0 (or below) means "never elected
//! automatically": neither at a failover nor as the initial master; an explicit operator
//! choice (a switchover to a named keeper) may still pick it.
//!
//! [`rank_new_masters`] is the one ordering of candidates every election uses: the failover,
//! the initial master choice, and a switchover that picks its own target.
//!
//! Pure.

use std::cmp::Ordering;

use crate::model::{ClusterData, Db, Keeper};

use super::classify::{keeper_of, most_advanced_first};

/// The priority of a keeper that does not publish one.
pub const DEFAULT_KEEPER_PRIORITY: i64 = 1;

/// The priority of `keeper` (absent: [`DEFAULT_KEEPER_PRIORITY`]).
pub fn keeper_priority(keeper: &Keeper) -> i64 {
    keeper.status.priority.unwrap_or(DEFAULT_KEEPER_PRIORITY)
}

/// The priority of the keeper of `db` ([`DEFAULT_KEEPER_PRIORITY`] when the keeper is unknown).
pub fn db_priority(cd: &ClusterData, db: &Db) -> i64 {
    cd.keepers
        .get(keeper_of(db))
        .map_or(DEFAULT_KEEPER_PRIORITY, keeper_priority)
}

/// Whether a keeper with `priority` may be chosen without an operator naming it.
pub fn automatically_electable(priority: i64) -> bool {
    priority > 0
}

/// The order of candidate masters: higher keeper priority first, then most advanced (newest
/// timeline, highest WAL position), then DB UID.
pub fn new_master_order(cd: &ClusterData, a: &Db, b: &Db) -> Ordering {
    db_priority(cd, b)
        .cmp(&db_priority(cd, a))
        .then_with(|| most_advanced_first(a, b))
}

/// Ranks DBs that are already eligible to become master (healthy, valid, converged, within the
/// lag limit: see the sentinel's failover rules) for an automatic election: drops those whose
/// keeper has priority 0 or below and orders the rest by [`new_master_order`]. The first one is
/// the one to elect. A switchover without a named target picks its target with this function
/// too; a switchover to a named keeper checks eligibility only, not priority.
pub fn rank_new_masters<'c>(cd: &ClusterData, mut eligible: Vec<&'c Db>) -> Vec<&'c Db> {
    eligible.retain(|db| automatically_electable(db_priority(cd, db)));
    eligible.sort_by(|a, b| new_master_order(cd, a, b));
    eligible
}

/// The keepers the initial master (initMode `new` or `pitr`) may be chosen from, sorted by UID:
/// healthy, not `--can-be-master=false`, priority above 0, and of the highest priority among
/// those. The sentinel picks one of them with its injected choice.
pub fn initial_master_candidates(cd: &ClusterData) -> Vec<&String> {
    let eligible: Vec<(&String, i64)> = cd
        .keepers
        .iter()
        .filter(|(_, k)| k.status.healthy && k.status.can_be_master != Some(false))
        .map(|(uid, k)| (uid, keeper_priority(k)))
        .filter(|(_, p)| automatically_electable(*p))
        .collect();
    let Some(top) = eligible.iter().map(|(_, p)| *p).max() else {
        return Vec::new();
    };
    eligible
        .into_iter()
        .filter(|(_, p)| *p == top)
        .map(|(uid, _)| uid)
        .collect()
}
