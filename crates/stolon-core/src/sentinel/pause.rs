//! Pause (`stolonctl pause`, the cluster spec's `paused`; docs/operations.md, "Pause"): while
//! the cluster is paused the sentinel elects no new master for a failed or unconverged one.
//! Everything else goes on: health is still judged and published, standbys are still managed,
//! proxies still follow clusterdata. An operator's `stolonctl failkeeper` on the master's keeper
//! is an explicit request and still replaces the master.
//!
//! Pure.

use crate::model::EffectiveSpec;

use super::event::Event;

/// Whether the failover of the failed master `db` (on `keeper`) is held back by the pause;
/// when it is, records [`Event::FailoverPaused`]. `events` are this decision's events so far (a
/// [`Event::KeeperForceFailed`] of the master's keeper means an operator asked for the failover).
pub(crate) fn hold_failover(
    spec: &EffectiveSpec,
    events: &mut Vec<Event>,
    db: &str,
    keeper: &str,
) -> bool {
    if !spec.spec.is_paused() {
        return false;
    }
    let forced = events
        .iter()
        .any(|e| matches!(e, Event::KeeperForceFailed { keeper: k } if k == keeper));
    if forced {
        return false;
    }
    events.push(Event::FailoverPaused {
        db: db.to_string(),
        keeper: keeper.to_string(),
    });
    true
}
