//! The cluster specification (`clusterdata.cluster.spec`): fields, defaults, validation, update rules.
//!
//! Pure. Field names, JSON keys, defaults and messages follow Stolon (docs/architecture.md §5), except
//! `maxStandbyLag`, which defaults to 1 MiB as Stolon documents (docs/differences.md), and
//! `minSynchronousStandbys`, which may be 0. Unset fields are omitted when serialised (lossless:
//! a missing key parses back as unset); `pgHBA: []` is kept distinct from unset.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;

/// PostgreSQL parameters: name -> value.
pub type PgParameters = BTreeMap<String, String>;

/// How the cluster is first initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterInitMode {
    /// A fresh `initdb` on one keeper.
    New,
    /// Point-in-time recovery from a base backup and archive.
    Pitr,
    /// Adopt the data of an existing keeper.
    Existing,
}

/// Whether the cluster is a primary cluster or a standby of an external primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    /// Primary cluster.
    Master,
    /// Standby cluster following an external primary.
    Standby,
}

/// pg_hba rules for the superuser and replication user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuReplAccessMode {
    /// From every address.
    All,
    /// Only from the other keepers' addresses (on the master).
    Strict,
}

/// initdb options for initMode `new`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewConfig {
    /// `initdb --locale`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub locale: String,
    /// `initdb --encoding`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub encoding: String,
    /// `initdb --data-checksums`.
    #[serde(default, skip_serializing_if = "crate::model::is_false")]
    pub data_checksums: bool,
}

/// Point-in-time recovery settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PitrConfig {
    /// Shell command restoring the base backup; `%d` is the data directory, `%%` a literal `%`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_restore_command: String,
    /// `restore_command` during recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_recovery_settings: Option<ArchiveRecoverySettings>,
    /// Recovery target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_target_settings: Option<RecoveryTargetSettings>,
}

/// `existing` init mode settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExistingConfig {
    /// The keeper whose data becomes the cluster's.
    #[serde(
        rename = "keeperUID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub keeper_uid: String,
}

/// Settings of a standby cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StandbyConfig {
    /// How to reach the external primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_settings: Option<StandbySettings>,
    /// Archive recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_recovery_settings: Option<ArchiveRecoverySettings>,
}

/// Archive recovery settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveRecoverySettings {
    /// `restore_command`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub restore_command: String,
}

/// Recovery target settings (each maps to a `recovery_target*` parameter).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryTargetSettings {
    /// `recovery_target`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recovery_target: String,
    /// `recovery_target_lsn`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recovery_target_lsn: String,
    /// `recovery_target_name`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recovery_target_name: String,
    /// `recovery_target_time`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recovery_target_time: String,
    /// `recovery_target_xid`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recovery_target_xid: String,
    /// `recovery_target_timeline`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recovery_target_timeline: String,
}

/// Standby settings (primary_conninfo and friends).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StandbySettings {
    /// `primary_conninfo`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub primary_conninfo: String,
    /// `primary_slot_name`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub primary_slot_name: String,
    /// `recovery_min_apply_delay`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recovery_min_apply_delay: String,
}

/// The cluster specification. Every field is optional; [`ClusterSpec::with_defaults`] fills them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Keeper and sentinel resync period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_interval: Option<GoDuration>,
    /// Timeout of the keeper's PostgreSQL requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<GoDuration>,
    /// Time a DB may take to converge when no long operation is expected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence_timeout: Option<GoDuration>,
    /// Time the initial master may take to initialise (initMode new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_timeout: Option<GoDuration>,
    /// Time a new standby may take to sync (0 = unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_timeout: Option<GoDuration>,
    /// Time the keeper waits for PostgreSQL to accept connections after start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_wait_ready_timeout: Option<GoDuration>,
    /// Time in error after which a keeper or DB is declared failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_interval: Option<GoDuration>,
    /// Time after which an unhealthy keeper with no DB is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_keeper_removal_interval: Option<GoDuration>,
    /// Proxy resync period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_check_interval: Option<GoDuration>,
    /// Time without a successful store read after which a proxy closes everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_timeout: Option<GoDuration>,
    /// Max standbys (sets max_replication_slots and max_wal_senders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_standbys: Option<u16>,
    /// Max standbys following one sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_standbys_per_sender: Option<u16>,
    /// Max lag in bytes for an async standby to be electable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_standby_lag: Option<u32>,
    /// Strict synchronous replication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_replication: Option<bool>,
    /// Minimum synchronous standbys (0 = never block on a fake standby).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_synchronous_standbys: Option<u16>,
    /// Maximum synchronous standbys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_synchronous_standbys: Option<u16>,
    /// Quorum commit (docs/synchronous-replication.md): with `synchronousReplication`, the master
    /// lists up to `maxSynchronousStandbys` standbys and a commit waits for any
    /// `max(1, minSynchronousStandbys)` of them (PostgreSQL's `ANY k (...)`), instead of every
    /// listed one. Ignored without `synchronousReplication`. Not a Stolon field; off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_commit: Option<bool>,
    /// Extra wal senders beyond stolon's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_wal_senders: Option<u16>,
    /// Extra physical slots on the master (created as `stolon_<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_master_replication_slots: Option<Vec<String>>,
    /// Try pg_rewind when resyncing (sets wal_log_hints=on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_pgrewind: Option<bool>,
    /// Initialisation mode (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_mode: Option<ClusterInitMode>,
    /// Merge the initialised instance's parameters into `pgParameters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_pg_parameters: Option<bool>,
    /// Cluster role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<ClusterRole>,
    /// initdb options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_config: Option<NewConfig>,
    /// PITR options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitr_config: Option<PitrConfig>,
    /// `existing` options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_config: Option<ExistingConfig>,
    /// Standby cluster options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_config: Option<StandbyConfig>,
    /// pg_hba mode for the superuser and replication user.
    #[serde(
        rename = "defaultSUReplAccessMode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub default_su_repl_access_mode: Option<SuReplAccessMode>,
    /// PostgreSQL parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_parameters: Option<PgParameters>,
    /// Extra pg_hba lines; unset means "md5 from everywhere", `[]` means none.
    #[serde(rename = "pgHBA", default, skip_serializing_if = "Option::is_none")]
    pub pg_hba: Option<Vec<String>>,
    /// Restart PostgreSQL when a changed parameter needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic_pg_restart: Option<bool>,
    /// Keep routing to the master while the store cannot be read, as long as the master's keeper
    /// confirms it still hears from every other keeper (docs/failsafe.md). Not a Stolon field;
    /// off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_mode: Option<bool>,
    /// Paused (`stolonctl pause`): no automatic failover and no keeper-driven restart. Not a
    /// Stolon field (Stolon ignores it); absent means not paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

impl ClusterSpec {
    /// Whether the cluster is paused (see [`ClusterSpec::paused`]).
    pub fn is_paused(&self) -> bool {
        self.paused == Some(true)
    }
}

/// Defaults (docs/architecture.md §5).
pub mod defaults {
    use crate::duration::GoDuration;

    /// `sleepInterval`.
    pub const SLEEP_INTERVAL: GoDuration = GoDuration::from_secs(5);
    /// `requestTimeout`.
    pub const REQUEST_TIMEOUT: GoDuration = GoDuration::from_secs(10);
    /// `convergenceTimeout`.
    pub const CONVERGENCE_TIMEOUT: GoDuration = GoDuration::from_secs(30);
    /// `initTimeout`.
    pub const INIT_TIMEOUT: GoDuration = GoDuration::from_secs(300);
    /// `syncTimeout` (0 = unbounded).
    pub const SYNC_TIMEOUT: GoDuration = GoDuration::ZERO;
    /// `dbWaitReadyTimeout`.
    pub const DB_WAIT_READY_TIMEOUT: GoDuration = GoDuration::from_secs(60);
    /// `failInterval`.
    pub const FAIL_INTERVAL: GoDuration = GoDuration::from_secs(20);
    /// `deadKeeperRemovalInterval`.
    pub const DEAD_KEEPER_REMOVAL_INTERVAL: GoDuration = GoDuration::from_secs(48 * 3600);
    /// `proxyCheckInterval`.
    pub const PROXY_CHECK_INTERVAL: GoDuration = GoDuration::from_secs(5);
    /// `proxyTimeout`.
    pub const PROXY_TIMEOUT: GoDuration = GoDuration::from_secs(15);
    /// `maxStandbys`.
    pub const MAX_STANDBYS: u16 = 20;
    /// `maxStandbysPerSender`.
    pub const MAX_STANDBYS_PER_SENDER: u16 = 3;
    /// `maxStandbyLag`: 1 MiB, as Stolon documents.
    pub const MAX_STANDBY_LAG: u32 = 1024 * 1024;
    /// `minSynchronousStandbys`.
    pub const MIN_SYNCHRONOUS_STANDBYS: u16 = 1;
    /// `maxSynchronousStandbys`.
    pub const MAX_SYNCHRONOUS_STANDBYS: u16 = 1;
    /// `additionalWalSenders`.
    pub const ADDITIONAL_WAL_SENDERS: u16 = 5;
}

/// A spec that breaks a validation rule; the text is Stolon's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

/// Why a cluster spec document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecDecodeError {
    /// Not JSON, or a value of the wrong type.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// Decoded, but breaks a validation rule (an unknown `initMode`, `role` or
    /// `defaultSUReplAccessMode` included, with Stolon's message).
    #[error("{0}")]
    Invalid(SpecError),
}

/// Decodes a cluster spec document the way Stolon does: keys matched like Go (see
/// [`crate::model::json`]), and an unknown `initMode`, `role` or `defaultSUReplAccessMode`
/// string reported by the validation rule that checks it (`unknown initMode: "foo"`), in
/// Stolon's rule order, rather than as a decoding error. The spec is not otherwise validated.
pub fn decode_spec(bytes: &[u8]) -> Result<ClusterSpec, SpecDecodeError> {
    decode_spec_value(serde_json::from_slice(bytes)?)
}

/// [`decode_spec`] of a JSON value.
pub fn decode_spec_value(mut v: serde_json::Value) -> Result<ClusterSpec, SpecDecodeError> {
    // (field, accepted values) in the order Stolon's validation checks them.
    const CHECKED: [(&str, &[&str]); 3] = [
        ("initMode", &["new", "pitr", "existing"]),
        ("defaultSUReplAccessMode", &["all", "strict"]),
        ("role", &["master", "standby"]),
    ];
    let mut unknown: Vec<(&str, String)> = Vec::new();
    if let serde_json::Value::Object(map) = &mut v {
        for (field, accepted) in CHECKED {
            // The value Go would decode: the last key naming the field.
            let keys: Vec<String> = map
                .keys()
                .filter(|k| k.as_str() == field || crate::model::json::fold_eq(k, field))
                .cloned()
                .collect();
            let last = keys
                .last()
                .and_then(|k| map.get(k))
                .and_then(|v| v.as_str());
            if let Some(val) = last.filter(|val| !accepted.contains(val)) {
                unknown.push((field, val.to_string()));
                for k in &keys {
                    map.remove(k);
                }
            }
        }
    }
    let spec: ClusterSpec = crate::model::json::from_value(v)?;
    let Some((field, value)) = unknown.first() else {
        return Ok(spec);
    };
    // A rule Stolon checks before the unknown value's fails first.
    match spec.validate() {
        Err(e) if *field == "initMode" && e.0 != "initMode undefined" => {
            Err(SpecDecodeError::Invalid(e))
        }
        Err(e) if *field != "initMode" => Err(SpecDecodeError::Invalid(e)),
        _ => Err(SpecDecodeError::Invalid(SpecError(format!(
            "unknown {field}: {value:?}"
        )))),
    }
}

/// True for a valid replication slot name (`^[a-z0-9_]+$`).
pub fn is_valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl ClusterSpec {
    /// The minimal spec `stolonctl init` writes by default: `{"initMode":"new"}`.
    pub fn new_init(mode: ClusterInitMode) -> Self {
        ClusterSpec {
            init_mode: Some(mode),
            ..Default::default()
        }
    }

    /// A copy with every unset field (that has a default) filled with its default.
    pub fn with_defaults(&self) -> ClusterSpec {
        use defaults::*;
        let mut s = self.clone();
        s.sleep_interval.get_or_insert(SLEEP_INTERVAL);
        s.request_timeout.get_or_insert(REQUEST_TIMEOUT);
        s.convergence_timeout.get_or_insert(CONVERGENCE_TIMEOUT);
        s.init_timeout.get_or_insert(INIT_TIMEOUT);
        s.sync_timeout.get_or_insert(SYNC_TIMEOUT);
        s.db_wait_ready_timeout.get_or_insert(DB_WAIT_READY_TIMEOUT);
        s.fail_interval.get_or_insert(FAIL_INTERVAL);
        s.dead_keeper_removal_interval
            .get_or_insert(DEAD_KEEPER_REMOVAL_INTERVAL);
        s.proxy_check_interval.get_or_insert(PROXY_CHECK_INTERVAL);
        s.proxy_timeout.get_or_insert(PROXY_TIMEOUT);
        s.max_standbys.get_or_insert(MAX_STANDBYS);
        s.max_standbys_per_sender
            .get_or_insert(MAX_STANDBYS_PER_SENDER);
        s.max_standby_lag.get_or_insert(MAX_STANDBY_LAG);
        s.synchronous_replication.get_or_insert(false);
        s.use_pgrewind.get_or_insert(false);
        s.min_synchronous_standbys
            .get_or_insert(MIN_SYNCHRONOUS_STANDBYS);
        s.max_synchronous_standbys
            .get_or_insert(MAX_SYNCHRONOUS_STANDBYS);
        s.additional_wal_senders
            .get_or_insert(ADDITIONAL_WAL_SENDERS);
        s.merge_pg_parameters.get_or_insert(true);
        s.default_su_repl_access_mode
            .get_or_insert(SuReplAccessMode::All);
        s.role.get_or_insert(ClusterRole::Master);
        s.automatic_pg_restart.get_or_insert(false);
        s
    }

    /// The effective values, defaults applied, as plain fields.
    pub fn effective(&self) -> EffectiveSpec {
        let s = self.with_defaults();
        // with_defaults filled every Option read below.
        EffectiveSpec {
            sleep_interval: s.sleep_interval.unwrap_or_default(),
            request_timeout: s.request_timeout.unwrap_or_default(),
            convergence_timeout: s.convergence_timeout.unwrap_or_default(),
            init_timeout: s.init_timeout.unwrap_or_default(),
            sync_timeout: s.sync_timeout.unwrap_or_default(),
            db_wait_ready_timeout: s.db_wait_ready_timeout.unwrap_or_default(),
            fail_interval: s.fail_interval.unwrap_or_default(),
            dead_keeper_removal_interval: s.dead_keeper_removal_interval.unwrap_or_default(),
            proxy_check_interval: s.proxy_check_interval.unwrap_or_default(),
            proxy_timeout: s.proxy_timeout.unwrap_or_default(),
            max_standbys: s.max_standbys.unwrap_or_default(),
            max_standbys_per_sender: s.max_standbys_per_sender.unwrap_or_default(),
            max_standby_lag: s.max_standby_lag.unwrap_or_default(),
            synchronous_replication: s.synchronous_replication.unwrap_or_default(),
            min_synchronous_standbys: s.min_synchronous_standbys.unwrap_or_default(),
            max_synchronous_standbys: s.max_synchronous_standbys.unwrap_or_default(),
            additional_wal_senders: s.additional_wal_senders.unwrap_or_default(),
            additional_master_replication_slots: s
                .additional_master_replication_slots
                .clone()
                .unwrap_or_default(),
            use_pgrewind: s.use_pgrewind.unwrap_or_default(),
            init_mode: s.init_mode,
            merge_pg_parameters: s.merge_pg_parameters.unwrap_or(true),
            role: s.role.unwrap_or(ClusterRole::Master),
            default_su_repl_access_mode: s
                .default_su_repl_access_mode
                .unwrap_or(SuReplAccessMode::All),
            automatic_pg_restart: s.automatic_pg_restart.unwrap_or_default(),
            failsafe_mode: s.failsafe_mode.unwrap_or_default(),
            quorum_commit: s.quorum_commit.unwrap_or_default(),
            spec: s,
        }
    }

    /// Validates the spec (defaults applied), with Stolon's messages (§5).
    pub fn validate(&self) -> Result<(), SpecError> {
        let s = self.with_defaults();
        let durations = [
            ("sleepInterval", s.sleep_interval),
            ("requestTimeout", s.request_timeout),
            ("convergenceTimeout", s.convergence_timeout),
            ("initTimeout", s.init_timeout),
            ("syncTimeout", s.sync_timeout),
            ("dbWaitReadyTimeout", s.db_wait_ready_timeout),
            ("failInterval", s.fail_interval),
            ("deadKeeperRemovalInterval", s.dead_keeper_removal_interval),
            ("proxyCheckInterval", s.proxy_check_interval),
            ("proxyTimeout", s.proxy_timeout),
        ];
        for (name, d) in durations {
            if d.unwrap_or_default().is_negative() {
                return err(format!("{name} must be positive"));
            }
        }
        let e = self.effective();
        if e.proxy_check_interval >= e.proxy_timeout {
            return err("proxyCheckInterval should be less than proxyTimeout");
        }
        if e.failsafe_mode {
            crate::failsafe::Timers::from_spec(&e)?;
        }
        if e.max_standbys < 1 {
            return err("maxStandbys must be at least 1");
        }
        if e.max_standbys_per_sender < 1 {
            return err("maxStandbysPerSender must be at least 1");
        }
        if e.max_synchronous_standbys < 1 {
            return err("maxSynchronousStandbys must be at least 1");
        }
        if e.max_synchronous_standbys < e.min_synchronous_standbys {
            return err(
                "maxSynchronousStandbys must be greater or equal to minSynchronousStandbys",
            );
        }
        let Some(init_mode) = e.init_mode else {
            return err("initMode undefined");
        };
        for slot in &e.additional_master_replication_slots {
            if !is_valid_slot_name(slot) {
                return err(format!("wrong replication slot name: {slot:?}"));
            }
            if slot.starts_with("stolon_") {
                return err(format!("replication slot name is reserved: {slot:?}"));
            }
        }
        if let Some(hba) = &s.pg_hba
            && hba.iter().any(|l| l.contains('\n'))
        {
            return err("pgHBA entries cannot contain newline characters");
        }
        match init_mode {
            ClusterInitMode::New => {
                if e.role == ClusterRole::Standby {
                    return err("invalid cluster role standby when initMode is \"new\"");
                }
            }
            ClusterInitMode::Existing => match &s.existing_config {
                None => {
                    return err("existingConfig undefined. Required when initMode is \"existing\"");
                }
                Some(c) if c.keeper_uid.is_empty() => {
                    return err("existingConfig.keeperUID undefined");
                }
                Some(_) => {}
            },
            ClusterInitMode::Pitr => match &s.pitr_config {
                None => return err("pitrConfig undefined. Required when initMode is \"pitr\""),
                Some(c) if c.data_restore_command.is_empty() => {
                    return err("pitrConfig.DataRestoreCommand undefined");
                }
                Some(c)
                    if c.recovery_target_settings.is_some() && e.role == ClusterRole::Standby =>
                {
                    return err(
                        "cannot define pitrConfig.RecoveryTargetSettings when required cluster role is standby",
                    );
                }
                Some(_) => {}
            },
        }
        if e.role == ClusterRole::Standby && s.standby_config.is_none() {
            return err("standbyConfig undefined. Required when cluster role is \"standby\"");
        }
        Ok(())
    }

    /// Checks that `new` may replace `self` (§5): valid, same initMode, no master -> standby.
    pub fn check_update(&self, new: &ClusterSpec) -> Result<(), SpecError> {
        if let Err(e) = new.validate() {
            return err(format!("invalid cluster spec: {e}"));
        }
        let old = self.effective();
        let newe = new.effective();
        if old.init_mode != newe.init_mode {
            return err("cannot change cluster init mode");
        }
        if old.role == ClusterRole::Master && newe.role == ClusterRole::Standby {
            return err("cannot update a cluster from master role to standby role");
        }
        Ok(())
    }
}

/// A spec with defaults applied, as plain values, for the components' convenience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveSpec {
    /// See [`ClusterSpec::sleep_interval`].
    pub sleep_interval: GoDuration,
    /// See [`ClusterSpec::request_timeout`].
    pub request_timeout: GoDuration,
    /// See [`ClusterSpec::convergence_timeout`].
    pub convergence_timeout: GoDuration,
    /// See [`ClusterSpec::init_timeout`].
    pub init_timeout: GoDuration,
    /// See [`ClusterSpec::sync_timeout`].
    pub sync_timeout: GoDuration,
    /// See [`ClusterSpec::db_wait_ready_timeout`].
    pub db_wait_ready_timeout: GoDuration,
    /// See [`ClusterSpec::fail_interval`].
    pub fail_interval: GoDuration,
    /// See [`ClusterSpec::dead_keeper_removal_interval`].
    pub dead_keeper_removal_interval: GoDuration,
    /// See [`ClusterSpec::proxy_check_interval`].
    pub proxy_check_interval: GoDuration,
    /// See [`ClusterSpec::proxy_timeout`].
    pub proxy_timeout: GoDuration,
    /// See [`ClusterSpec::max_standbys`].
    pub max_standbys: u16,
    /// See [`ClusterSpec::max_standbys_per_sender`].
    pub max_standbys_per_sender: u16,
    /// See [`ClusterSpec::max_standby_lag`].
    pub max_standby_lag: u32,
    /// See [`ClusterSpec::synchronous_replication`].
    pub synchronous_replication: bool,
    /// See [`ClusterSpec::min_synchronous_standbys`].
    pub min_synchronous_standbys: u16,
    /// See [`ClusterSpec::max_synchronous_standbys`].
    pub max_synchronous_standbys: u16,
    /// See [`ClusterSpec::additional_wal_senders`].
    pub additional_wal_senders: u16,
    /// See [`ClusterSpec::additional_master_replication_slots`].
    pub additional_master_replication_slots: Vec<String>,
    /// See [`ClusterSpec::use_pgrewind`].
    pub use_pgrewind: bool,
    /// See [`ClusterSpec::init_mode`] (None only in an invalid spec).
    pub init_mode: Option<ClusterInitMode>,
    /// See [`ClusterSpec::merge_pg_parameters`].
    pub merge_pg_parameters: bool,
    /// See [`ClusterSpec::role`].
    pub role: ClusterRole,
    /// See [`ClusterSpec::default_su_repl_access_mode`].
    pub default_su_repl_access_mode: SuReplAccessMode,
    /// See [`ClusterSpec::automatic_pg_restart`].
    pub automatic_pg_restart: bool,
    /// See [`ClusterSpec::failsafe_mode`].
    pub failsafe_mode: bool,
    /// See [`ClusterSpec::quorum_commit`].
    pub quorum_commit: bool,
    /// The defaulted spec itself, for the remaining (structured) fields.
    pub spec: ClusterSpec,
}

impl EffectiveSpec {
    /// Synchronous replication is in force (`synchronousReplication` and role master).
    pub fn sync_repl(&self) -> bool {
        self.synchronous_replication && self.role == ClusterRole::Master
    }

    /// Quorum commit is in force: synchronous replication with `quorumCommit`.
    pub fn quorum(&self) -> bool {
        self.sync_repl() && self.quorum_commit
    }

    /// How many listed synchronous standbys a commit waits for in quorum mode:
    /// `max(1, minSynchronousStandbys)`.
    pub fn quorum_size(&self) -> u16 {
        self.min_synchronous_standbys.max(1)
    }
}
