//! Recording an election in the clusterdata history (docs/operations.md, "History").
//!
//! Pure.

use crate::model::{ClusterData, Db, MasterChange, MasterChangeReason};
use crate::timestamp::Timestamp;

use super::classify::keeper_of;
use super::event::Event;

/// Why `old` is being replaced in this decision: [`MasterChangeReason::Forced`] when an
/// operator force-failed its keeper (this decision's `events` carry
/// [`Event::KeeperForceFailed`] for it), [`MasterChangeReason::Failed`] otherwise.
pub(crate) fn failover_reason(old: &Db, events: &[Event]) -> MasterChangeReason {
    let keeper = keeper_of(old);
    let forced = events
        .iter()
        .any(|e| matches!(e, Event::KeeperForceFailed { keeper: k } if k == keeper));
    if forced {
        MasterChangeReason::Forced
    } else {
        MasterChangeReason::Failed
    }
}

/// Appends the failover of `old` to `new_uid` (already elected in `cd`) to the history.
pub(crate) fn record_failover(
    cd: &mut ClusterData,
    old: &Db,
    new_uid: &str,
    events: &[Event],
    now: Timestamp,
) {
    let Some(new) = cd.dbs.get(new_uid) else {
        return;
    };
    let entry = MasterChange::new(failover_reason(old, events), now, old, new, None);
    cd.record_master_change(entry);
}

/// Appends the planned switchover from `old_uid` to `new_uid` (already elected in `cd`), with
/// the position the old master stopped at (0: unknown, its last report is kept).
pub(crate) fn record_switchover(
    cd: &mut ClusterData,
    old_uid: &str,
    new_uid: &str,
    final_xlog_pos: u64,
    now: Timestamp,
) {
    let (Some(old), Some(new)) = (cd.dbs.get(old_uid), cd.dbs.get(new_uid)) else {
        return;
    };
    let mut entry = MasterChange::new(MasterChangeReason::Switchover, now, old, new, None);
    if final_xlog_pos != 0 {
        entry.old_master_xlog_pos = final_xlog_pos;
    }
    cd.record_master_change(entry);
}

/// Once a switchover completes, its history entry gets how long writes paused: from when the
/// proxies were told to stop routing to the old master (`start`) to when they were given the
/// new one (`end`).
pub(crate) fn set_write_pause(
    cd: &mut ClusterData,
    old_uid: &str,
    new_uid: &str,
    start: Timestamp,
    end: Timestamp,
) {
    let nanos = end.unix_nanos() - start.unix_nanos();
    if start.is_zero() || nanos < 0 {
        return;
    }
    if let Some(entry) = cd.history.iter_mut().rev().find(|e| {
        e.reason == MasterChangeReason::Switchover
            && e.old_master_db_uid == old_uid
            && e.new_master_db_uid == new_uid
    }) {
        entry.write_pause = Some(crate::GoDuration(i64::try_from(nanos).unwrap_or(i64::MAX)));
    }
}
