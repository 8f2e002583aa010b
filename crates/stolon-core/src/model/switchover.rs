//! The planned switchover record kept in clusterdata (docs/switchover.md §1).
//!
//! Pure data. An optional top-level key of clusterdata: absent in Stolon's documents, ignored by
//! Stolon's reader, so a cluster without a switchover keeps Stolon's format byte for byte.

use serde::{Deserialize, Serialize};

use super::is_zero_u64;
use crate::duration::GoDuration;
use crate::timestamp::Timestamp;

/// Where a switchover stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchoverPhase {
    /// Written by `stolonctl`; not yet checked by the leader sentinel.
    Requested,
    /// Accepted: the proxies' target is cleared and they hold new connections.
    Holding,
    /// Every proxy acknowledged: the old master's keeper stops PostgreSQL cleanly.
    Stopping,
    /// The target is the master; proxies are told once it has converged.
    Promoted,
    /// The proxies route to the target.
    Completed,
    /// Refused or rolled back before promotion (see `reason`).
    Failed,
}

impl SwitchoverPhase {
    /// True while the switchover still has work to do.
    pub fn in_progress(self) -> bool {
        !matches!(self, SwitchoverPhase::Completed | SwitchoverPhase::Failed)
    }

    /// The phase's name as written in clusterdata.
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchoverPhase::Requested => "requested",
            SwitchoverPhase::Holding => "holding",
            SwitchoverPhase::Stopping => "stopping",
            SwitchoverPhase::Promoted => "promoted",
            SwitchoverPhase::Completed => "completed",
            SwitchoverPhase::Failed => "failed",
        }
    }
}

/// One planned switchover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Switchover {
    /// Identifies the request (`stolonctl` waits for the outcome of its own).
    #[serde(rename = "uid", default)]
    pub uid: String,
    /// Phase.
    pub phase: SwitchoverPhase,
    /// The keeper asked for (`--to`); empty = the sentinel chooses.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_keeper: String,
    /// The DB to promote, set when the sentinel accepts the request.
    #[serde(rename = "targetDB", default, skip_serializing_if = "String::is_empty")]
    pub target_db: String,
    /// The master DB when the request was accepted.
    #[serde(
        rename = "oldMasterDB",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub old_master_db: String,
    /// Longest time from acceptance to promotion before rolling back.
    pub timeout: GoDuration,
    /// When the request was written.
    #[serde(default)]
    pub request_time: Timestamp,
    /// When the sentinel accepted it (zero before).
    #[serde(default)]
    pub start_time: Timestamp,
    /// When it completed or failed (zero before).
    #[serde(default)]
    pub end_time: Timestamp,
    /// The old master's final WAL position (its shutdown checkpoint), once reported.
    #[serde(rename = "finalXLogPos", default, skip_serializing_if = "is_zero_u64")]
    pub final_xlog_pos: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Switchover {
    /// A new request.
    pub fn request(
        uid: String,
        target_keeper: String,
        timeout: GoDuration,
        now: Timestamp,
    ) -> Self {
        Switchover {
            uid,
            phase: SwitchoverPhase::Requested,
            target_keeper,
            target_db: String::new(),
            old_master_db: String::new(),
            timeout,
            request_time: now,
            start_time: Timestamp::default(),
            end_time: Timestamp::default(),
            final_xlog_pos: 0,
            reason: String::new(),
        }
    }

    /// True while proxies hold new connections instead of closing them.
    pub fn holds_connections(&self) -> bool {
        matches!(
            self.phase,
            SwitchoverPhase::Holding | SwitchoverPhase::Stopping | SwitchoverPhase::Promoted
        )
    }

    /// True when the keeper of `db_uid` must keep its PostgreSQL stopped for this switchover.
    pub fn stops(&self, db_uid: &str) -> bool {
        self.phase == SwitchoverPhase::Stopping && self.old_master_db == db_uid
    }

    /// True when `db_uid` is promoted by this switchover after the old master's keeper reported
    /// its PostgreSQL stopped for it, at a recorded final position: nothing can be written on the
    /// old master any more, whatever a proxy still believes (docs/failsafe.md).
    pub fn promotes_after_clean_stop(&self, db_uid: &str) -> bool {
        self.phase == SwitchoverPhase::Promoted
            && self.target_db == db_uid
            && self.final_xlog_pos != 0
    }
}
