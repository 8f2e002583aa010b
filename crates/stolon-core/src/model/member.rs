//! Infos that keepers, sentinels and proxies publish about themselves (under TTL leases).
//!
//! Pure data with Stolon's exact keys (capitalised `UID`, `Generation`, `ProxyTimeout` in
//! SentinelInfo/ProxyInfo).

use serde::{Deserialize, Serialize};

use super::cluster::PostgresBinaryVersion;
use super::spec::PgParameters;
use super::{is_false, is_zero_i64, is_zero_u64};

/// What a keeper publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeeperInfo {
    /// New random UID on every publish (the sentinel detects freshness by it).
    #[serde(rename = "infoUID", default, skip_serializing_if = "String::is_empty")]
    pub info_uid: String,
    /// Keeper UID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Cluster UID the keeper belongs to.
    #[serde(
        rename = "clusterUID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cluster_uid: String,
    /// UUID of this keeper process.
    #[serde(rename = "bootUUID", default, skip_serializing_if = "String::is_empty")]
    pub boot_uuid: String,
    /// PostgreSQL version.
    #[serde(default)]
    pub postgres_binary_version: PostgresBinaryVersion,
    /// `--priority`: among eligible standbys the higher wins an election; 0 = never elected
    /// automatically; None = the default, 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// Local PostgreSQL state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_state: Option<PostgresState>,
    /// `--can-be-master`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_be_master: Option<bool>,
    /// `--can-be-synchronous-replica`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_be_synchronous_replica: Option<bool>,
}

/// One timeline history entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineHistory {
    /// Timeline.
    #[serde(rename = "timelineID", default, skip_serializing_if = "is_zero_u64")]
    pub timeline_id: u64,
    /// LSN where the next timeline branched off.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub switch_point: u64,
    /// Reason text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The local PostgreSQL state a keeper reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostgresState {
    /// DB UID from the keeper's dbstate.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Generation the keeper last applied.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub generation: i64,
    /// Advertised address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub listen_address: String,
    /// Advertised port.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub port: String,
    /// Where the keeper answers failsafe acknowledgement and confirmation requests (`host:port`
    /// of its HTTP listener; empty: it does not). Not a Stolon field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failsafe_address: String,
    /// All state queries succeeded.
    #[serde(default, skip_serializing_if = "is_false")]
    pub healthy: bool,
    /// System identifier.
    #[serde(rename = "systemID", default, skip_serializing_if = "String::is_empty")]
    pub system_id: String,
    /// Timeline.
    #[serde(rename = "timelineID", default, skip_serializing_if = "is_zero_u64")]
    pub timeline_id: u64,
    /// WAL position.
    #[serde(rename = "xLogPos", default, skip_serializing_if = "is_zero_u64")]
    pub xlog_pos: u64,
    /// Last timeline history entries.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_as_default"
    )]
    pub timelines_history: Vec<TimelineHistory>,
    /// Configuration-file parameters minus the managed ones.
    #[serde(
        default,
        skip_serializing_if = "PgParameters::is_empty",
        deserialize_with = "super::null_as_default"
    )]
    pub pg_parameters: PgParameters,
    /// DB UIDs of standbys reported in sync.
    #[serde(default)]
    pub synchronous_standbys: Option<Vec<String>>,
    /// Oldest WAL file in pg_wal.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub older_wal_file: String,
    /// The planned switchover (its UID) this keeper stopped PostgreSQL for, while it stays
    /// stopped for it. Not in Stolon's format; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stopped_for_switchover: String,
    /// With `stoppedForSwitchover`: the location of the shutdown checkpoint, the last WAL record
    /// of the stopped primary. Not in Stolon's format; 0 otherwise.
    #[serde(
        rename = "shutdownCheckpoint",
        default,
        skip_serializing_if = "is_zero_u64"
    )]
    pub shutdown_checkpoint: u64,
}

/// What a sentinel publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentinelInfo {
    /// Sentinel UID.
    #[serde(rename = "UID", default)]
    pub uid: String,
    /// How long, in milliseconds, this sentinel acts as leader after starting the publish of
    /// this info, at most (stolon_core::sentinel::leadership). Other candidates may depose it
    /// once this info has stayed unchanged for longer. Absent in Stolon's infos, and where the
    /// store's election keeps its own lock: such a leader is never deposed.
    #[serde(
        rename = "leaderHoldMs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub leader_hold_ms: Option<u64>,
}

/// What a proxy publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyInfo {
    /// New random UID on every publish.
    #[serde(rename = "infoUID", default, skip_serializing_if = "String::is_empty")]
    pub info_uid: String,
    /// Proxy UID.
    #[serde(rename = "UID", default)]
    pub uid: String,
    /// Proxy generation applied.
    #[serde(rename = "Generation", default)]
    pub generation: i64,
    /// The proxy's current proxyTimeout, in nanoseconds.
    #[serde(rename = "ProxyTimeout", default)]
    pub proxy_timeout: i64,
    /// The proxy counts its `proxyTimeout` from the start of its last check that published an
    /// info (so it has fenced itself `proxyTimeout` after the start of the check that wrote the
    /// info the sentinel sees), and every publish writes a new `infoUID` to the store: the
    /// sentinel may then stop waiting for it sooner (docs/invariants.md, invariant 2). Not in
    /// Stolon's format; false (omitted) for a Stolon proxy, which keeps the longer rule.
    #[serde(
        rename = "fencesFromCheckStart",
        default,
        skip_serializing_if = "is_false"
    )]
    pub fences_from_check_start: bool,
}
