//! DB classification helpers of the decision (docs/architecture.md §6.4): kind, validity,
//! convergence, status, candidate ordering, and whether a standby can still sync.
//!
//! Pure. Orderings are deterministic: most advanced first (newest timeline, highest WAL
//! position), then DB UID.

use std::cmp::Ordering;
use std::time::Duration;

use crate::model::{
    ClusterData, Db, DbInitMode, DbRole, EffectiveSpec, FollowType, INITIAL_GENERATION,
};

use super::memory::{MonoInstant, SentinelMemory};

/// Name of the fake synchronous standby that makes the primary block commits.
pub const FAKE_STANDBY_NAME: &str = "stolonfakestandby";

/// Consecutive observations of a still WAL position after which a lagging standby may be judged
/// unable to sync.
pub const NOT_INCREASING_XLOG_TIMES: u32 = 10;

/// WAL segment size assumed when comparing WAL file names.
const WAL_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// What a DB is, from its spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// The cluster's primary (role master, or a standby-cluster master following an external primary).
    Master,
    /// A standby following a DB of this cluster.
    Standby,
    /// A former master fenced at an election: role standby with no follow config. It may be
    /// re-elected (it still holds the old primary's data) and is removed once the new master has
    /// converged. Never counted as a master, so clusterdata names at most one.
    Fenced,
}

/// The kind of a DB.
pub fn db_kind(db: &Db) -> DbKind {
    let Some(spec) = &db.spec else {
        return DbKind::Fenced;
    };
    match (spec.role, spec.follow_config.as_ref().and_then(|f| f.kind)) {
        (Some(DbRole::Master), _) => DbKind::Master,
        (Some(DbRole::Standby), Some(FollowType::External)) => DbKind::Master,
        (Some(DbRole::Standby), Some(FollowType::Internal)) => DbKind::Standby,
        _ => DbKind::Fenced,
    }
}

/// The keeper UID of a DB ("" when it has no spec).
pub fn keeper_of(db: &Db) -> &str {
    db.spec
        .as_ref()
        .map(|s| s.keeper_uid.as_str())
        .unwrap_or("")
}

/// Convergence of a DB to its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvergenceState {
    /// The keeper applied the current generation.
    Converged,
    /// Not yet, within the timeout.
    Converging,
    /// Not within the timeout.
    Failed,
}

/// Health of a DB for the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbStatusKind {
    /// Converged and healthy on a healthy keeper.
    Good,
    /// Still converging.
    Converging,
    /// Keeper unhealthy, DB unhealthy, or convergence timed out.
    Failed,
}

/// Validity of a standby relative to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Never reported.
    Unknown,
    /// Another system or a forked timeline.
    Invalid,
    /// Can follow the master.
    Valid,
}

/// The read-only context every helper needs.
pub struct Ctx<'a> {
    /// Effective cluster spec.
    pub spec: &'a EffectiveSpec,
    /// Leader memory (convergence timers, counters).
    pub mem: &'a SentinelMemory,
    /// Now (monotonic).
    pub now: MonoInstant,
}

impl Ctx<'_> {
    /// Convergence of `db` with `timeout` (zero = never fails).
    pub fn convergence(&self, db: &Db, timeout: Duration) -> ConvergenceState {
        if db.status.current_generation == db.generation {
            return ConvergenceState::Converged;
        }
        if !timeout.is_zero()
            && let Some(c) = self.mem.db_convergence.get(&db.uid)
            && c.generation == db.generation
            && self.now.saturating_sub(c.since) > timeout
        {
            return ConvergenceState::Failed;
        }
        ConvergenceState::Converging
    }

    /// Status of `db` in `cd`.
    pub fn db_status(&self, cd: &ClusterData, db: &Db) -> DbStatusKind {
        let keeper_ok = cd
            .keepers
            .get(keeper_of(db))
            .is_some_and(|k| k.status.healthy);
        if !keeper_ok {
            return DbStatusKind::Failed;
        }
        let resync_first = db.generation == INITIAL_GENERATION
            && db.spec.as_ref().and_then(|s| s.init_mode) == Some(DbInitMode::Resync);
        let timeout = if resync_first {
            self.spec.sync_timeout.to_std()
        } else {
            self.spec.convergence_timeout.to_std()
        };
        match self.convergence(db, timeout) {
            ConvergenceState::Failed => DbStatusKind::Failed,
            ConvergenceState::Converging => DbStatusKind::Converging,
            ConvergenceState::Converged if !db.status.healthy => DbStatusKind::Failed,
            ConvergenceState::Converged => DbStatusKind::Good,
        }
    }

    /// Async lag check: `master.xLogPos - db.xLogPos <= maxStandbyLag`.
    pub fn lag_below_max(&self, master: &Db, db: &Db) -> bool {
        crate::wal::within_lag(
            master.status.xlog_pos,
            db.status.xlog_pos,
            u64::from(self.spec.max_standby_lag),
        )
    }

    /// Good, valid standbys on the master's timeline, most advanced first. With `lag_check`,
    /// only those within `maxStandbyLag`.
    pub fn best_standbys<'c>(
        &self,
        cd: &'c ClusterData,
        master: &Db,
        lag_check: bool,
    ) -> Vec<&'c Db> {
        let mut v: Vec<&Db> = cd
            .dbs
            .values()
            .filter(|db| db.uid != master.uid && db_kind(db) == DbKind::Standby)
            .filter(|db| validity(master, db) == Validity::Valid)
            .filter(|db| self.db_status(cd, db) == DbStatusKind::Good)
            .filter(|db| db.status.timeline_id == master.status.timeline_id)
            .filter(|db| !lag_check || self.lag_below_max(master, db))
            .collect();
        v.sort_by(|a, b| most_advanced_first(a, b));
        v
    }

    /// Candidates to replace `master`, most advanced first: best standbys whose keeper may be
    /// master, plus good former masters (fenced or master-type) on the same timeline. With
    /// `lag_check` (asynchronous replication) only those within `maxStandbyLag`. A DB qualifies
    /// exactly when [`Ctx::rejection`] finds nothing against it.
    pub fn best_new_masters<'c>(
        &self,
        cd: &'c ClusterData,
        master: &Db,
        lag_check: bool,
    ) -> Vec<&'c Db> {
        let mut v: Vec<&Db> = cd
            .dbs
            .values()
            .filter(|db| {
                db.uid != master.uid && self.rejection(cd, master, db, lag_check).is_none()
            })
            .collect();
        v.sort_by(|a, b| most_advanced_first(a, b));
        v
    }

    /// Why no DB qualified in [`Ctx::best_new_masters`], one `db (keeper): reason` entry per
    /// other DB, separated by `; ` (for the "no eligible masters" log line: an operator sees at
    /// once what held each standby back).
    pub fn new_master_rejections(&self, cd: &ClusterData, master: &Db, lag_check: bool) -> String {
        let mut out: Vec<String> = Vec::new();
        for db in cd.dbs.values() {
            if db.uid == master.uid {
                continue;
            }
            let keeper = keeper_of(db);
            let why = self
                .rejection(cd, master, db, lag_check)
                .unwrap_or_else(|| "eligible".into());
            out.push(format!("{} ({keeper}): {why}", db.uid));
        }
        if out.is_empty() {
            "no other db".into()
        } else {
            out.join("; ")
        }
    }

    /// The first reason `db` cannot replace `master`, or `None` when it can (with synchronous
    /// replication the caller still narrows the candidates to the synchronous set).
    pub(crate) fn rejection(
        &self,
        cd: &ClusterData,
        master: &Db,
        db: &Db,
        lag_check: bool,
    ) -> Option<String> {
        let keeper = cd.keepers.get(keeper_of(db));
        if keeper.is_none_or(|k| !k.status.healthy) {
            return Some("keeper not healthy".into());
        }
        if keeper.is_some_and(|k| k.status.can_be_master == Some(false)) {
            return Some("keeper cannot be master".into());
        }
        if db_kind(db) == DbKind::Standby {
            match validity(master, db) {
                Validity::Unknown => return Some("no state reported yet".into()),
                Validity::Invalid => return Some("other system or forked timeline".into()),
                Validity::Valid => {}
            }
        } else if db.status.current_generation == 0 {
            return Some("no state reported yet".into());
        } else if db.status.system_id != master.status.system_id {
            return Some("other system".into());
        }
        match self.db_status(cd, db) {
            DbStatusKind::Good => {}
            DbStatusKind::Converging => {
                return Some(format!(
                    "converging (generation {}, reported {})",
                    db.generation, db.status.current_generation
                ));
            }
            DbStatusKind::Failed if !db.status.healthy => return Some("db not healthy".into()),
            DbStatusKind::Failed => {
                return Some(format!(
                    "did not converge in time (generation {}, reported {})",
                    db.generation, db.status.current_generation
                ));
            }
        }
        if db.status.timeline_id != master.status.timeline_id {
            return Some(format!(
                "timeline {} but the master's is {}",
                db.status.timeline_id, master.status.timeline_id
            ));
        }
        if lag_check && !self.lag_below_max(master, db) {
            return Some(format!(
                "{} bytes behind (maxStandbyLag {})",
                i128::from(master.status.xlog_pos) - i128::from(db.status.xlog_pos),
                self.spec.max_standby_lag
            ));
        }
        None
    }

    /// False when `db` is a stalled standby whose needed WAL the master already removed
    /// (docs/architecture.md §6.4 dbCanSync); such a DB must be recreated.
    pub fn db_can_sync(&self, master: &Db, db: &Db) -> bool {
        let older = &master.status.older_wal_file;
        if older.len() != 24
            || db.uid == master.uid
            || db_kind(db) != DbKind::Standby
            || db.generation == INITIAL_GENERATION
            || !db.status.healthy
            || db.status.xlog_pos == master.status.xlog_pos
        {
            return true;
        }
        let stalled = self
            .mem
            .db_not_increasing_xlog
            .get(&db.uid)
            .copied()
            .unwrap_or(0);
        if stalled <= NOT_INCREASING_XLOG_TIMES {
            return true;
        }
        let x = db.status.xlog_pos;
        let needed = format!(
            "{:08X}{:08X}",
            x >> 32,
            (x & 0xffff_ffff) / WAL_SEGMENT_SIZE
        );
        needed.as_str() >= &older[8..].to_ascii_uppercase()
    }
}

/// Orders DBs most advanced first: newest timeline, highest WAL position, then UID.
pub fn most_advanced_first(a: &Db, b: &Db) -> Ordering {
    b.status
        .timeline_id
        .cmp(&a.status.timeline_id)
        .then(b.status.xlog_pos.cmp(&a.status.xlog_pos))
        .then(a.uid.cmp(&b.uid))
}

/// Validity of `db` against `master`.
pub fn validity(master: &Db, db: &Db) -> Validity {
    if db.status.current_generation == 0 {
        return Validity::Unknown;
    }
    if !db.status.system_id.is_empty() && db.status.system_id != master.status.system_id {
        return Validity::Invalid;
    }
    if is_different_timeline_branch(master, db) {
        return Validity::Invalid;
    }
    Validity::Valid
}

/// True when `db` is on a timeline branch `followed` cannot be followed from.
pub fn is_different_timeline_branch(followed: &Db, db: &Db) -> bool {
    crate::wal::forked(wal_point(&followed.status), wal_point(&db.status))
}

fn wal_point(s: &crate::model::DbStatus) -> crate::wal::WalPoint<'_> {
    crate::wal::WalPoint {
        timeline: s.timeline_id,
        xlog_pos: s.xlog_pos,
        history: &s.timelines_history,
    }
}
