//! The history of master changes kept in clusterdata (docs/operations.md, "History"): the last
//! [`MAX_HISTORY_ENTRIES`] failovers and switchovers, oldest first.
//!
//! Not a Stolon field: the top-level key `history` is optional, absent when empty, and ignored by
//! Stolon's readers (Go's decoder skips unknown keys). A Stolon sentinel rewriting clusterdata
//! drops it.
//!
//! Pure data and pure helpers.

use serde::{Deserialize, Serialize};

use super::cluster::{ClusterData, Db};
use super::is_zero_u64;
use crate::duration::GoDuration;
use crate::timestamp::Timestamp;

/// Entries kept; the oldest are dropped first.
pub const MAX_HISTORY_ENTRIES: usize = 50;

/// Why the master changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MasterChangeReason {
    /// The master failed (unhealthy or not converging) and a standby replaced it.
    Failed,
    /// A planned switchover.
    Switchover,
    /// An operator forced it (`stolonctl failkeeper` on the master's keeper).
    Forced,
}

impl MasterChangeReason {
    /// The word used in the JSON and in `stolonctl history`.
    pub fn as_str(self) -> &'static str {
        match self {
            MasterChangeReason::Failed => "failed",
            MasterChangeReason::Switchover => "switchover",
            MasterChangeReason::Forced => "forced",
        }
    }
}

/// One master change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MasterChange {
    /// When the new master was elected (the sentinel's wall clock).
    pub time: Timestamp,
    /// Why.
    pub reason: MasterChangeReason,
    /// The old master's DB UID.
    #[serde(rename = "oldMasterDBUID", default)]
    pub old_master_db_uid: String,
    /// The old master's keeper UID.
    #[serde(rename = "oldMasterKeeperUID", default)]
    pub old_master_keeper_uid: String,
    /// The new master's DB UID.
    #[serde(rename = "newMasterDBUID", default)]
    pub new_master_db_uid: String,
    /// The new master's keeper UID.
    #[serde(rename = "newMasterKeeperUID", default)]
    pub new_master_keeper_uid: String,
    /// The old master's last WAL position known (its last report, or for a switchover the
    /// position it stopped at); 0 = unknown.
    #[serde(
        rename = "oldMasterXLogPos",
        default,
        skip_serializing_if = "is_zero_u64"
    )]
    pub old_master_xlog_pos: u64,
    /// How long writes were paused, when known (a switchover measures it; a failover does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_pause: Option<GoDuration>,
}

impl MasterChange {
    /// The entry for `new` replacing `old` at `time`, the old master's position being its last
    /// reported one. A switchover sets [`MasterChange::old_master_xlog_pos`] and
    /// [`MasterChange::write_pause`] from what it measured.
    pub fn new(
        reason: MasterChangeReason,
        time: Timestamp,
        old: &Db,
        new: &Db,
        write_pause: Option<GoDuration>,
    ) -> MasterChange {
        let keeper = |db: &Db| {
            db.spec
                .as_ref()
                .map(|s| s.keeper_uid.clone())
                .unwrap_or_default()
        };
        MasterChange {
            time,
            reason,
            old_master_db_uid: old.uid.clone(),
            old_master_keeper_uid: keeper(old),
            new_master_db_uid: new.uid.clone(),
            new_master_keeper_uid: keeper(new),
            old_master_xlog_pos: old.status.xlog_pos,
            write_pause,
        }
    }
}

impl ClusterData {
    /// Appends `entry` to the history, dropping the oldest entries beyond
    /// [`MAX_HISTORY_ENTRIES`].
    pub fn record_master_change(&mut self, entry: MasterChange) {
        self.history.push(entry);
        let excess = self.history.len().saturating_sub(MAX_HISTORY_ENTRIES);
        self.history.drain(..excess);
    }
}

/// The entry `after` recorded since `before` (at most one is recorded per decision), if any: its
/// last entry when that differs from `before`'s last.
pub fn newly_recorded<'a>(
    before: Option<&ClusterData>,
    after: &'a ClusterData,
) -> Option<&'a MasterChange> {
    let last = after.history.last()?;
    (before.and_then(|b| b.history.last()) != Some(last)).then_some(last)
}

/// A WAL position as PostgreSQL writes an LSN (`16/B374D848`).
pub fn format_lsn(pos: u64) -> String {
    format!("{:X}/{:X}", pos >> 32, pos & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cluster, DbSpec};

    fn db(uid: &str, keeper: &str, pos: u64) -> Db {
        let mut d = Db {
            uid: uid.into(),
            spec: Some(DbSpec {
                keeper_uid: keeper.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        d.status.xlog_pos = pos;
        d
    }

    fn entry(i: i128) -> MasterChange {
        MasterChange::new(
            MasterChangeReason::Failed,
            Timestamp::from_unix_nanos(i),
            &db("a", "ka", 7),
            &db("b", "kb", 9),
            None,
        )
    }

    #[test]
    fn new_takes_uids_keepers_and_the_old_masters_position() {
        let e = MasterChange::new(
            MasterChangeReason::Switchover,
            Timestamp::from_unix_nanos(5),
            &db("a", "ka", 0x1_0000_0010),
            &db("b", "kb", 3),
            Some(GoDuration::from_secs(1)),
        );
        assert_eq!(
            e,
            MasterChange {
                time: Timestamp::from_unix_nanos(5),
                reason: MasterChangeReason::Switchover,
                old_master_db_uid: "a".into(),
                old_master_keeper_uid: "ka".into(),
                new_master_db_uid: "b".into(),
                new_master_keeper_uid: "kb".into(),
                old_master_xlog_pos: 0x1_0000_0010,
                write_pause: Some(GoDuration::from_secs(1)),
            }
        );
        assert_eq!(format_lsn(e.old_master_xlog_pos), "1/10");
    }

    #[test]
    fn record_keeps_the_newest_entries_within_the_bound() {
        let mut cd = ClusterData::new(Cluster::default(), Timestamp::zero());
        for i in 0..(MAX_HISTORY_ENTRIES as i128 + 3) {
            cd.record_master_change(entry(i));
        }
        assert_eq!(cd.history.len(), MAX_HISTORY_ENTRIES);
        assert_eq!(cd.history[0], entry(3));
        assert_eq!(
            cd.history.last(),
            Some(&entry(MAX_HISTORY_ENTRIES as i128 + 2))
        );
    }

    #[test]
    fn newly_recorded_is_the_last_entry_only_when_it_is_new() {
        let mut before = ClusterData::new(Cluster::default(), Timestamp::zero());
        let mut after = before.clone();
        assert_eq!(newly_recorded(Some(&before), &after), None);
        after.record_master_change(entry(1));
        assert_eq!(newly_recorded(Some(&before), &after), Some(&entry(1)));
        assert_eq!(newly_recorded(None, &after), Some(&entry(1)));
        before = after.clone();
        assert_eq!(newly_recorded(Some(&before), &after), None);
        // At the bound the length stays the same; the new last entry still counts.
        for i in 2..(MAX_HISTORY_ENTRIES as i128 + 2) {
            after.record_master_change(entry(i));
        }
        before = after.clone();
        after.record_master_change(entry(100));
        assert_eq!(before.history.len(), after.history.len());
        assert_eq!(newly_recorded(Some(&before), &after), Some(&entry(100)));
    }
}
