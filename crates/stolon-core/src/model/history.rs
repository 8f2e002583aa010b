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

/// A WAL position as PostgreSQL writes an LSN (`16/B374D848`).
pub fn format_lsn(pos: u64) -> String {
    format!("{:X}/{:X}", pos >> 32, pos & 0xFFFF_FFFF)
}
