//! The records quorum commit keeps in clusterdata (docs/synchronous-replication.md).
//!
//! Pure data. Every field is optional and skipped when unset, so clusterdata of a cluster that
//! never used `quorumCommit` keeps Stolon's format byte for byte.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::is_zero_u64;

/// A change of the master's synchronous set waiting for the standbys to catch up, in the
/// master's status (`quorumCatchUp`): the known set stays the old one until at least the new
/// quorum of the listed standbys report a position at or past `position`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuorumCatchUp {
    /// The master's DB generation that carries the new list; a master report of this generation
    /// or later was made after the master applied it.
    pub generation: i64,
    /// The master's WAL position in its first report made after it applied the new list (0
    /// until that report arrived).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub position: u64,
}

/// Where a quorum-mode failover stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuorumFailoverPhase {
    /// The proxies' target is cleared; waiting for every active proxy to acknowledge it.
    Fencing,
    /// Every proxy acknowledged; the synchronous standbys' generations were bumped and the
    /// sentinel waits for their reports of those generations (their final positions).
    Positions,
}

/// A failover in quorum mode in progress (top-level `quorumFailover` of clusterdata), so a new
/// leader sentinel continues it where the previous one left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuorumFailover {
    /// The failed master's DB UID.
    #[serde(rename = "masterDBUID")]
    pub master_db_uid: String,
    /// Phase.
    pub phase: QuorumFailoverPhase,
    /// The proxy generation in which the target was cleared.
    pub proxy_generation: i64,
    /// In the positions phase: the generation each synchronous standby was bumped to; a report
    /// of at least that generation is its final position.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generations: BTreeMap<String, i64>,
}
