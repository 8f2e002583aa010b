//! ClusterData: the one document the sentinel leader writes and every component reads.
//!
//! Pure data. JSON keys and Go `omitempty` behaviour follow Stolon's format version 1
//! (docs/architecture.md §4.4), quirks included (`systemdID`). Optional lists keep `null` distinct
//! from `[]` where Stolon does (pgHBA).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::member::TimelineHistory;
use super::spec::{
    ArchiveRecoverySettings, ClusterSpec, NewConfig, PgParameters, PitrConfig, StandbySettings,
};
use super::{is_false, is_zero_i64, is_zero_u64};
use crate::duration::GoDuration;
use crate::timestamp::Timestamp;

/// The only clusterdata format version every component accepts.
pub const CURRENT_FORMAT_VERSION: u64 = 1;
/// Generation of a newly created object.
pub const INITIAL_GENERATION: i64 = 1;
/// "No generation yet".
pub const NO_GENERATION: i64 = 0;

/// The whole cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterData {
    /// Must be [`CURRENT_FORMAT_VERSION`].
    pub format_version: u64,
    /// When this document was last written.
    #[serde(default)]
    pub change_time: Timestamp,
    /// Cluster object (spec + phase + master).
    pub cluster: Option<Cluster>,
    /// Keepers by UID.
    #[serde(default, deserialize_with = "super::null_as_default")]
    pub keepers: BTreeMap<String, Keeper>,
    /// DBs by UID.
    #[serde(default, deserialize_with = "super::null_as_default")]
    pub dbs: BTreeMap<String, Db>,
    /// Proxy routing object.
    pub proxy: Option<Proxy>,
    /// The last master changes, oldest first (not a Stolon field; see [`super::history`]).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_as_default"
    )]
    pub history: Vec<super::history::MasterChange>,
    /// The last planned switchover (not in Stolon's format; docs/switchover.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<super::switchover::Switchover>,
    /// A quorum-mode failover in progress (not in Stolon's format;
    /// docs/synchronous-replication.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_failover: Option<super::quorum::QuorumFailover>,
}

/// Cluster phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterPhase {
    /// Initial master being created.
    Initializing,
    /// Running.
    Normal,
}

/// The cluster object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// Cluster UID (new on every `stolonctl init`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Generation (1, never bumped).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub generation: i64,
    /// Last change.
    #[serde(default)]
    pub change_time: Timestamp,
    /// The cluster specification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ClusterSpec>,
    /// Status.
    #[serde(default)]
    pub status: ClusterStatus,
}

/// Cluster status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Unused by Stolon; kept for format compatibility.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub current_generation: i64,
    /// Phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,
    /// UID of the master DB ("" when none yet).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub master: String,
}

/// A keeper as the sentinel sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Keeper {
    /// Keeper UID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Generation.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub generation: i64,
    /// Last change.
    #[serde(default)]
    pub change_time: Timestamp,
    /// Always `{}` in Stolon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<KeeperSpec>,
    /// Status.
    #[serde(default)]
    pub status: KeeperStatus,
}

/// Empty keeper spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeeperSpec {}

/// PostgreSQL binary version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PostgresBinaryVersion {
    /// Major.
    #[serde(rename = "Maj", default)]
    pub maj: i64,
    /// Minor.
    #[serde(rename = "Min", default)]
    pub min: i64,
}

/// Keeper status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeeperStatus {
    /// Healthy as judged by the sentinel.
    #[serde(default, skip_serializing_if = "is_false")]
    pub healthy: bool,
    /// Last time seen healthy.
    #[serde(default)]
    pub last_healthy_time: Timestamp,
    /// Boot UUID of the keeper process the sentinel last saw.
    #[serde(rename = "bootUUID", default, skip_serializing_if = "String::is_empty")]
    pub boot_uuid: String,
    /// PostgreSQL version the keeper runs.
    #[serde(default)]
    pub postgres_binary_version: PostgresBinaryVersion,
    /// One-shot: treat the keeper as failed on the next sentinel check.
    #[serde(default, skip_serializing_if = "is_false")]
    pub force_fail: bool,
    /// Whether the keeper may be elected master (None = yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_be_master: Option<bool>,
    /// Whether the keeper may be a synchronous standby (None = yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_be_synchronous_replica: Option<bool>,
    /// The keeper's `--priority` as last published (None = the default, 1; 0 = never elected
    /// automatically). Not a Stolon field: Stolon readers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
}

/// DB role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbRole {
    /// Primary.
    Master,
    /// Standby.
    Standby,
}

/// How a keeper initialises a DB it was newly assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbInitMode {
    /// Nothing: the data must already be there.
    None,
    /// initdb.
    New,
    /// Use the existing data.
    Existing,
    /// Point-in-time recovery.
    Pitr,
    /// Clone (or rewind) from the followed DB.
    Resync,
}

/// Follow an internal DB or an external primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FollowType {
    /// A DB of this cluster.
    Internal,
    /// An external primary (standby cluster).
    External,
}

/// What a standby follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowConfig {
    /// Internal or external.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<FollowType>,
    /// Followed DB UID (internal).
    #[serde(rename = "dbuid", default, skip_serializing_if = "String::is_empty")]
    pub db_uid: String,
    /// External standby settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_settings: Option<StandbySettings>,
    /// External archive recovery settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_recovery_settings: Option<ArchiveRecoverySettings>,
}

/// A DB: one PostgreSQL instance's assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Db {
    /// DB UID (a keeper gets a new DB, hence a new UID, whenever it must be re-created).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Bumped on every spec change.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub generation: i64,
    /// Last change.
    #[serde(default)]
    pub change_time: Timestamp,
    /// What the keeper must converge to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<DbSpec>,
    /// What the keeper reported.
    #[serde(default)]
    pub status: DbStatus,
}

/// The assignment of one DB.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DbSpec {
    /// Keeper that runs this DB.
    #[serde(
        rename = "keeperUID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub keeper_uid: String,
    /// Keeper's PostgreSQL request timeout.
    #[serde(default)]
    pub request_timeout: GoDuration,
    /// See ClusterSpec.maxStandbys.
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub max_standbys: u16,
    /// Synchronous replication on this (master) DB.
    #[serde(default, skip_serializing_if = "is_false")]
    pub synchronous_replication: bool,
    /// Use pg_rewind when resyncing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_pgrewind: bool,
    /// Extra wal senders.
    #[serde(default)]
    pub additional_wal_senders: u16,
    /// Extra replication slots (master only).
    #[serde(default)]
    pub additional_replication_slots: Option<Vec<String>>,
    /// Init mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_mode: Option<DbInitMode>,
    /// initdb options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_config: Option<NewConfig>,
    /// PITR options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitr_config: Option<PitrConfig>,
    /// PostgreSQL parameters.
    #[serde(default, skip_serializing_if = "PgParameters::is_empty")]
    pub pg_parameters: PgParameters,
    /// Extra pg_hba lines; None = default md5 rules, `[]` = none.
    #[serde(rename = "pgHBA", default)]
    pub pg_hba: Option<Vec<String>>,
    /// Role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<DbRole>,
    /// What a standby follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_config: Option<FollowConfig>,
    /// DB UIDs following this DB.
    #[serde(default)]
    pub followers: Option<Vec<String>>,
    /// Keep the previous postgresql.conf during init (mergePgParameters).
    #[serde(
        rename = "includePreviousConfig",
        default,
        skip_serializing_if = "is_false"
    )]
    pub include_previous_config: bool,
    /// DB UIDs to list in synchronous_standby_names.
    #[serde(default)]
    pub synchronous_standbys: Option<Vec<String>>,
    /// External names to list in synchronous_standby_names (e.g. `stolonfakestandby`).
    #[serde(default)]
    pub external_synchronous_standbys: Option<Vec<String>>,
    /// Quorum commit: a commit waits for this many of the listed standbys
    /// (`ANY k (...)`); unset means every listed one (Stolon's form). Not a Stolon field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_quorum: Option<u16>,
}

/// What the sentinel last learned of a DB from its keeper.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DbStatus {
    /// Healthy.
    #[serde(default, skip_serializing_if = "is_false")]
    pub healthy: bool,
    /// Generation the keeper last fully applied.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub current_generation: i64,
    /// Advertised address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub listen_address: String,
    /// Advertised port (a string, as in Stolon).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub port: String,
    /// Where the DB's keeper answers failsafe requests (copied from its report; empty: it does
    /// not). Not a Stolon field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failsafe_address: String,
    /// System identifier (JSON key `systemdID`, sic).
    #[serde(
        rename = "systemdID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub system_id: String,
    /// Timeline.
    #[serde(rename = "timelineID", default, skip_serializing_if = "is_zero_u64")]
    pub timeline_id: u64,
    /// WAL position.
    #[serde(rename = "xLogPos", default, skip_serializing_if = "is_zero_u64")]
    pub xlog_pos: u64,
    /// Timeline history (last entries).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_as_default"
    )]
    pub timelines_history: Vec<TimelineHistory>,
    /// Parameters from the instance's configuration files.
    #[serde(
        default,
        skip_serializing_if = "PgParameters::is_empty",
        deserialize_with = "super::null_as_default"
    )]
    pub pg_parameters: PgParameters,
    /// Standbys the instance currently reports in sync (not persisted).
    #[serde(skip)]
    pub cur_synchronous_standbys: Vec<String>,
    /// Standbys known to be in sync. With quorum commit (`synchronousQuorum` set): every
    /// acknowledged commit is on at least `synchronousQuorum` of them.
    #[serde(default)]
    pub synchronous_standbys: Option<Vec<String>>,
    /// Quorum commit: how many of `synchronousStandbys` hold every acknowledged commit; unset
    /// means all of them (Stolon's meaning). Not a Stolon field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_quorum: Option<u16>,
    /// Quorum commit: a shrink of the synchronous set waiting for catch-up. Not a Stolon field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_catch_up: Option<super::quorum::QuorumCatchUp>,
    /// Oldest WAL file in pg_wal.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub older_wal_file: String,
}

/// Proxy routing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Proxy {
    /// UID (unused).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Bumped whenever the target or the enabled proxies change.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub generation: i64,
    /// Last change.
    #[serde(default)]
    pub change_time: Timestamp,
    /// Spec.
    #[serde(default)]
    pub spec: ProxySpec,
    /// Always `{}`.
    #[serde(default)]
    pub status: ProxyStatus,
}

/// Where proxies route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// Master DB UID; "" = route nowhere.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub master_db_uid: String,
    /// Proxy UIDs allowed to route.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_as_default"
    )]
    pub enabled_proxies: Vec<String>,
}

/// Empty proxy status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {}

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

/// A structural problem in clusterdata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterDataError {
    /// Wrong format version.
    #[error("unsupported clusterdata format version {0}")]
    FormatVersion(u64),
    /// No cluster object.
    #[error("clusterdata has no cluster")]
    NoCluster,
    /// No spec.
    #[error("clusterdata has no cluster spec")]
    NoSpec,
    /// Invalid spec.
    #[error("invalid cluster spec: {0}")]
    Spec(#[from] super::spec::SpecError),
    /// Bad structure.
    #[error("inconsistent clusterdata: {0}")]
    Inconsistent(String),
}

impl ClusterData {
    /// A new clusterdata around `cluster`, with no keepers, no DBs and an empty proxy.
    pub fn new(cluster: Cluster, now: Timestamp) -> Self {
        ClusterData {
            format_version: CURRENT_FORMAT_VERSION,
            change_time: now,
            cluster: Some(cluster),
            keepers: BTreeMap::new(),
            dbs: BTreeMap::new(),
            proxy: Some(Proxy::default()),
            history: Vec::new(),
            switchover: None,
            quorum_failover: None,
        }
    }

    /// Checks what every component checks before using clusterdata: format version 1, a cluster
    /// with a valid spec.
    pub fn check_usable(&self) -> Result<&ClusterSpec, ClusterDataError> {
        if self.format_version != CURRENT_FORMAT_VERSION {
            return Err(ClusterDataError::FormatVersion(self.format_version));
        }
        let cluster = self.cluster.as_ref().ok_or(ClusterDataError::NoCluster)?;
        let spec = cluster.spec.as_ref().ok_or(ClusterDataError::NoSpec)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Structural invariants: at most one master-type DB named as master, master exists, DB keepers
    /// exist, followers point at existing DBs.
    pub fn validate(&self) -> Result<(), ClusterDataError> {
        let bad = |m: String| Err(ClusterDataError::Inconsistent(m));
        if let Some(c) = &self.cluster
            && !c.status.master.is_empty()
            && !self.dbs.contains_key(&c.status.master)
        {
            return bad(format!("master db {:?} does not exist", c.status.master));
        }
        let masters = self
            .dbs
            .values()
            .filter(|db| db.spec.as_ref().and_then(|s| s.role) == Some(DbRole::Master))
            .count();
        if masters > 1 {
            return bad(format!("{masters} dbs with role master"));
        }
        for db in self.dbs.values() {
            let Some(spec) = &db.spec else { continue };
            if !spec.keeper_uid.is_empty() && !self.keepers.contains_key(&spec.keeper_uid) {
                return bad(format!(
                    "db {:?} assigned to unknown keeper {:?}",
                    db.uid, spec.keeper_uid
                ));
            }
            if let Some(fc) = &spec.follow_config
                && fc.kind == Some(FollowType::Internal)
                && !self.dbs.contains_key(&fc.db_uid)
            {
                return bad(format!(
                    "db {:?} follows unknown db {:?}",
                    db.uid, fc.db_uid
                ));
            }
        }
        Ok(())
    }

    /// The DB assigned to `keeper_uid`, if any.
    pub fn db_of_keeper(&self, keeper_uid: &str) -> Option<&Db> {
        self.dbs
            .values()
            .find(|db| db.spec.as_ref().is_some_and(|s| s.keeper_uid == keeper_uid))
    }

    /// The master DB named in the cluster status.
    pub fn master_db(&self) -> Option<&Db> {
        let m = &self.cluster.as_ref()?.status.master;
        self.dbs.get(m)
    }
}
