//! The two rules about WAL positions that the sentinel, the keeper and the proxy share, written
//! once: whether one database's timeline forked away from another's, and whether a standby is
//! within the allowed lag of its master. Pure.

use crate::model::TimelineHistory;

/// Where a database is in its WAL: timeline, position, and the (recent) history of timeline
/// switches that led there, as PostgreSQL reports them.
#[derive(Debug, Clone, Copy)]
pub struct WalPoint<'a> {
    /// Current timeline.
    pub timeline: u64,
    /// Current WAL position (LSN).
    pub xlog_pos: u64,
    /// Timeline switches, each with the LSN where the next timeline began.
    pub history: &'a [TimelineHistory],
}

impl WalPoint<'_> {
    fn switch_point(&self, timeline: u64) -> Option<u64> {
        self.history
            .iter()
            .find(|h| h.timeline_id == timeline)
            .map(|h| h.switch_point)
    }
}

/// True when `db` sits on a timeline branch that `followed` does not contain, so that `db`
/// cannot stream from `followed` without a rewind or a new base backup (docs/invariants.md,
/// invariant 4). Stolon's rule, on the last history entries both report:
/// - `db` on a newer timeline than `followed`: forked;
/// - the same timeline (above 1): forked when they switched to it at different points;
/// - `followed` on a newer timeline: forked when `followed` left `db`'s timeline before `db`'s
///   current position.
///
/// A history entry missing on either side counts as "not forked".
pub fn forked(followed: WalPoint<'_>, db: WalPoint<'_>) -> bool {
    use std::cmp::Ordering;
    match followed.timeline.cmp(&db.timeline) {
        Ordering::Less => true,
        Ordering::Equal => {
            if db.timeline <= 1 {
                return false;
            }
            match (
                followed.switch_point(db.timeline - 1),
                db.switch_point(db.timeline - 1),
            ) {
                (Some(a), Some(b)) => a != b,
                _ => false,
            }
        }
        Ordering::Greater => followed
            .switch_point(db.timeline)
            .is_some_and(|sp| sp < db.xlog_pos),
    }
}

/// True when a standby at `standby_pos` is at most `max_lag` bytes behind a master at
/// `master_pos` (a standby ahead of the master's last report is within any lag).
pub fn within_lag(master_pos: u64, standby_pos: u64, max_lag: u64) -> bool {
    master_pos.saturating_sub(standby_pos) <= max_lag
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(timeline_id: u64, switch_point: u64) -> TimelineHistory {
        TimelineHistory {
            timeline_id,
            switch_point,
            ..Default::default()
        }
    }

    fn p(timeline: u64, xlog_pos: u64, history: &[TimelineHistory]) -> WalPoint<'_> {
        WalPoint {
            timeline,
            xlog_pos,
            history,
        }
    }

    #[test]
    fn fork_rule() {
        let none: [TimelineHistory; 0] = [];
        // db ahead on timelines.
        assert!(forked(p(1, 100, &none), p(2, 50, &none)));
        // same timeline 1: never forked.
        assert!(!forked(p(1, 100, &none), p(1, 500, &none)));
        // same timeline 2, switched at the same point / at different points / unknown.
        let a = [h(1, 1000)];
        let b = [h(1, 2000)];
        assert!(!forked(p(2, 5000, &a), p(2, 3000, &a)));
        assert!(forked(p(2, 5000, &a), p(2, 3000, &b)));
        assert!(!forked(p(2, 5000, &a), p(2, 3000, &none)));
        // followed moved on: forked only when it left db's timeline before db's position.
        assert!(forked(p(2, 5000, &a), p(1, 1500, &none)));
        assert!(!forked(p(2, 5000, &a), p(1, 900, &none)));
        assert!(!forked(p(2, 5000, &none), p(1, 1500, &none)));
    }

    #[test]
    fn lag_rule() {
        assert!(within_lag(1000, 900, 100));
        assert!(!within_lag(1000, 899, 100));
        assert!(within_lag(1000, 2000, 0));
        assert!(within_lag(u64::MAX, 0, u64::MAX));
    }
}
