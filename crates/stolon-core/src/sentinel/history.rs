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
