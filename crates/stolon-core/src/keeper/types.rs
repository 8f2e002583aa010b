//! Inputs and outputs of the keeper's [`super::plan`], and the keeper's local state files.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{DbStatus, NewConfig, PgParameters, PostgresBinaryVersion};
use crate::pgconf::{AuthMethod, RecoveryOptions};
use crate::sentinel::MonoInstant;

/// `<data-dir>/keeperstate` (Stolon's keys `UID`, `ClusterUID`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeeperLocalState {
    /// Keeper UID.
    #[serde(rename = "UID", default)]
    pub uid: String,
    /// UID of the cluster this keeper last saw.
    #[serde(rename = "ClusterUID", default)]
    pub cluster_uid: String,
}

/// `<data-dir>/dbstate` (Stolon's keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalDbState {
    /// UID of the DB the local data belongs to ("" = none).
    #[serde(rename = "UID", default)]
    pub uid: String,
    /// Generation of that DB last fully applied (0 = none yet).
    #[serde(rename = "Generation", default)]
    pub generation: i64,
    /// An init / resync started and has not finished: the data must be thrown away.
    #[serde(rename = "Initializing", default)]
    pub initializing: bool,
    /// Parameters read from the instance's own configuration during init
    /// (used with `includePreviousConfig`).
    #[serde(rename = "InitPGParameters", default)]
    pub init_pg_parameters: Option<PgParameters>,
}

/// What the local data directory says our role is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalRole {
    /// PGDATA is not initialised.
    Undefined,
    /// Initialised, no `standby.signal`.
    Master,
    /// `standby.signal` present.
    Standby,
}

impl LocalRole {
    /// Label used in metrics (`undefined`, `master`, `standby`).
    pub fn as_str(self) -> &'static str {
        match self {
            LocalRole::Undefined => "undefined",
            LocalRole::Master => "master",
            LocalRole::Standby => "standby",
        }
    }
}

/// Per-process facts the plan depends on (from flags; never secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperIdentity {
    /// Keeper UID.
    pub uid: String,
    /// UUID of this keeper process.
    pub boot_uuid: String,
    /// `--pg-listen-address`.
    pub pg_listen_address: String,
    /// `--pg-port`.
    pub pg_port: u16,
    /// Superuser name.
    pub su_username: String,
    /// Superuser auth method.
    pub su_auth: AuthMethod,
    /// A superuser password is configured (needed by pg_rewind).
    pub su_has_password: bool,
    /// Replication user name.
    pub repl_username: String,
    /// Replication auth method.
    pub repl_auth: AuthMethod,
    /// pgpass file with the replication password, referenced from `primary_conninfo`.
    pub repl_passfile: Option<String>,
}

/// The configuration of the instance: parameters, pg_hba lines, recovery settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgConfig {
    /// postgresql.conf parameters (without recovery ones).
    pub parameters: PgParameters,
    /// pg_hba.conf lines.
    pub hba: Vec<String>,
    /// Recovery mode and parameters.
    pub recovery: RecoveryOptions,
}

/// The answer of a check of the local instance that can fail: a failed check is `Unknown`,
/// never read as "no".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Probe<T> {
    /// The check answered.
    Known(T),
    /// The check failed: nothing may be decided on it.
    #[default]
    Unknown,
}

impl<T> Probe<T> {
    /// `Known(v)` for `Ok(v)`, `Unknown` for an error.
    pub fn from_result<E>(r: Result<T, E>) -> Self {
        r.map_or(Probe::Unknown, Probe::Known)
    }

    /// The answer, if known.
    pub fn known(self) -> Option<T> {
        match self {
            Probe::Known(v) => Some(v),
            Probe::Unknown => None,
        }
    }
}

/// What the keeper observed of its local instance just before planning. Facts only, each
/// check that can fail a [`Probe`]; what the keeper itself did and remembers is in
/// [`KeeperMemory`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// PGDATA is initialised.
    pub initialized: Probe<bool>,
    /// `standby.signal` exists.
    pub standby_signal: Probe<bool>,
    /// A postmaster runs on PGDATA.
    pub running: Probe<bool>,
    /// System identifier from `global/pg_control` (`None` when not initialised or unreadable:
    /// then no pg_rewind is attempted).
    pub system_id: Option<u64>,
    /// PostgreSQL binary version.
    pub version: Option<PostgresBinaryVersion>,
    /// In-sync standbys (DB UIDs) reported by the running primary, when queried (`None` when
    /// not queried or the query failed: not in sync).
    pub in_sync_standbys: Option<Vec<String>>,
    /// The location of the last checkpoint in `global/pg_control` when it records a clean
    /// shutdown of a primary (`None` otherwise, or when unreadable).
    pub shutdown_checkpoint: Option<u64>,
}

/// The local facts the plan decides on, all known (see [`Observed::known`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownLocal {
    /// PGDATA is initialised.
    pub initialized: bool,
    /// `standby.signal` exists.
    pub standby_signal: bool,
    /// A postmaster runs on PGDATA.
    pub running: bool,
}

impl KnownLocal {
    /// The local role from PGDATA (PostgreSQL >= 12 signal files).
    pub fn role(&self) -> LocalRole {
        if !self.initialized {
            LocalRole::Undefined
        } else if self.standby_signal {
            LocalRole::Standby
        } else {
            LocalRole::Master
        }
    }
}

impl Observed {
    /// The checks the plan needs, or the first one that failed.
    pub fn known(&self) -> Result<KnownLocal, Unknown> {
        Ok(KnownLocal {
            initialized: self.initialized.known().ok_or(Unknown::Initialized)?,
            running: self.running.known().ok_or(Unknown::Running)?,
            standby_signal: match self.initialized {
                // Not initialised: there is no signal file to read.
                Probe::Known(false) => self.standby_signal.known().unwrap_or(false),
                _ => self.standby_signal.known().ok_or(Unknown::StandbySignal)?,
            },
        })
    }
}

/// A check of the local instance that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// Whether PGDATA is initialised.
    Initialized,
    /// Whether postgres runs.
    Running,
    /// Whether `standby.signal` exists.
    StandbySignal,
}

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unknown::Initialized => "whether the data directory is initialized",
            Unknown::Running => "whether postgres is running",
            Unknown::StandbySignal => "whether the data directory has a standby.signal file",
        })
    }
}

/// What the keeper remembers between passes, owned by the pure core: the runtime holds it,
/// hands it to [`super::step`] and to [`super::record`] after each executed action, and
/// keeps what they return.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeeperMemory {
    /// Content of `dbstate` (loaded at start; changed only through `SaveDbState`).
    pub db_state: LocalDbState,
    /// The configuration the running instance was last started or reloaded with (`None` when
    /// the keeper has not started/reloaded it in this process, or it stopped).
    pub applied: Option<PgConfig>,
    /// The configuration last written to disk (becomes `applied` on start/reload/restart).
    pub written: Option<PgConfig>,
    /// A synchronous primary restarted and allows only internal connections until its
    /// synchronous standbys are back in sync.
    pub wait_sync_standbys_synced: bool,
    /// The last executed action was `Promote`: the configuration written right after it is
    /// what the promoted instance runs with.
    pub just_promoted: bool,
    /// When the next timer pass is due (monotonic; `None` = at once).
    pub next_tick: Option<MonoInstant>,
}

/// Why the plan stops without doing anything more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// No clusterdata in the store yet.
    NoClusterData,
    /// Our keeper is not in `cd.keepers` yet.
    KeeperNotInClusterData,
    /// No DB is assigned to us.
    NoDbAssigned,
    /// The clusterdata was made for a previous incarnation of this keeper.
    BootUuidMismatch,
    /// The local data has no role (not initialised) while a standby is wanted.
    LocalRoleNone,
    /// A check of the local instance failed: nothing is started, written or initialised until
    /// it answers.
    Unknown(Unknown),
    /// PostgreSQL is stopped for a planned switchover; the sentinel promotes another DB or
    /// rolls back.
    SwitchoverStopped,
    /// Our DB was elected master, but this keeper acknowledged the former master in failsafe
    /// mode and promised not to promote for a while (docs/failsafe.md): what is left of it.
    FailsafePromise {
        /// What is left of the promise at this pass.
        remaining: Duration,
    },
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WaitReason::NoClusterData => "no cluster data available, waiting for it to appear",
            WaitReason::KeeperNotInClusterData => {
                "our keeper data is not available, waiting for it to appear"
            }
            WaitReason::NoDbAssigned => "no db assigned",
            WaitReason::BootUuidMismatch => {
                "our db boot UID is different than the cluster data one, waiting for it to be updated"
            }
            WaitReason::LocalRoleNone => "our db role is none",
            WaitReason::SwitchoverStopped => {
                "postgres stopped for a switchover, waiting for the sentinel to promote the target"
            }
            WaitReason::Unknown(u) => {
                return write!(f, "cannot tell {u}, not acting until it is known");
            }
            WaitReason::FailsafePromise { remaining } => {
                return write!(
                    f,
                    "our db was elected master; not promoting for another {:.3}s, until the failsafe promise given to the former master's keeper is over",
                    remaining.as_secs_f64()
                );
            }
        })
    }
}

/// Why the plan cannot proceed (logged as an error; the DB stays unconverged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Unusable clusterdata.
    #[error("{0}")]
    InvalidClusterData(String),
    /// A different DB is assigned but the init mode forbids touching the data.
    #[error(
        "different local dbUID but init mode is none, this shouldn't happen. Something bad happened to the keeper data. Check that keeper data is on a persistent volume"
    )]
    InitModeNone,
    /// The followed DB is not in clusterdata.
    #[error("no db data for followed db {0:?}")]
    FollowedDbMissing(String),
    /// PITR without a configuration.
    #[error("db {0:?} has init mode pitr but no pitrConfig")]
    NoPitrConfig(String),
    /// Master wanted but the data is not initialised.
    #[error("database is not initialized, cannot become master")]
    NotInitialized,
    /// A primary must never be turned into a standby in place.
    #[error("cannot move from master role to standby role")]
    MasterToStandby,
    /// The DB spec has no role.
    #[error("db {0:?} has no role")]
    NoRole(String),
}

/// What `CreateRoles` must do (docs/architecture.md §7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolesPlan {
    /// The superuser is also the replication user: `ALTER ROLE su WITH LOGIN REPLICATION [PASSWORD]`.
    SuIsRepl,
    /// Separate users: optionally set the superuser password, then create the replication role.
    Separate {
        /// Set the superuser's password (auth is not trust and a password is configured).
        set_su_password: bool,
    },
}

/// A server to clone from or rewind against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgEndpoint {
    /// Advertised address.
    pub host: String,
    /// Advertised port.
    pub port: String,
}

/// A resync: pg_rewind (when possible) or pg_basebackup, then start as a standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncPlan {
    /// Rewind against the current master (superuser connection) first; `None` = clone directly.
    pub rewind_from: Option<PgEndpoint>,
    /// The followed DB to clone from (replication connection).
    pub clone_from: PgEndpoint,
    /// Replication slot on the followed DB (`stolon_<own db uid>`).
    pub slot: String,
    /// `application_name` for the connections (`stolon_<own db uid>`).
    pub application_name: String,
    /// Configuration to start with afterwards.
    pub config: PgConfig,
    /// How long to wait for the rewound instance to accept connections before re-cloning.
    pub wait_ready: Option<Duration>,
    /// The followed DB's reported status, to detect a rewound instance on a forked timeline.
    pub followed_status: DbStatus,
}

/// A log line the tests of Stolon look for, emitted by the plan for the runtime to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// `postgres parameters changed, reloading postgres instance`.
    ParametersChanged,
    /// `postgres parameters not changed`.
    ParametersNotChanged,
    /// `postgres hba entries changed, reloading postgres instance`.
    HbaChanged,
    /// `postgres hba entries not changed`.
    HbaNotChanged,
    /// `already master`.
    AlreadyMaster,
    /// `already standby`.
    AlreadyStandby,
    /// `our db requested role is master`, etc.
    RequestedRole(&'static str),
    /// `synchronous_standby_names changed` (old, new).
    SyncStandbyNamesChanged(String, String),
    /// `recovery parameters changed, restarting postgres instance`.
    RecoveryChanged,
    /// Our DB was replaced as master and follows nothing: it runs read-only.
    Fenced,
    /// `resyncing the database cluster`.
    Resyncing,
    /// `initializing the database cluster`.
    Initializing,
    /// `current db UID different than cluster data db UID`.
    DbUidChanged {
        /// dbstate UID.
        local: String,
        /// assigned UID.
        assigned: String,
    },
    /// `removing data of an interrupted initialization`.
    RemovingInterruptedInit,
    /// The synchronous standbys are back in sync: all clients allowed again.
    SyncStandbysSynced,
    /// `pending_restart` parameters and `automaticPgRestart`: restarting.
    RestartingForParameters,
    /// `pending_restart` parameters but `automaticPgRestart` is off.
    RestartDisabled,
    /// pg_rewind failed (its error): cloning instead.
    RewindFailed(String),
    /// The rewound instance did not become ready (the error): cloning instead.
    RewoundNotReady(String),
    /// The rewound instance is on a timeline branch the followed DB is not on: cloning instead.
    RewoundForked,
    /// A planned switchover stops our primary cleanly.
    SwitchoverStopping,
    /// Our former primary, stopped cleanly at the position the new master has, follows it
    /// without rewind or base backup.
    SwitchoverRejoin,
}

impl Note {
    /// Logged as a warning rather than as information.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Note::RewindFailed(_) | Note::RewoundNotReady(_) | Note::RewoundForked
        )
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Note::ParametersChanged => write!(
                f,
                "postgres parameters changed, reloading postgres instance"
            ),
            Note::ParametersNotChanged => write!(f, "postgres parameters not changed"),
            Note::HbaChanged => write!(
                f,
                "postgres hba entries changed, reloading postgres instance"
            ),
            Note::HbaNotChanged => write!(f, "postgres hba entries not changed"),
            Note::AlreadyMaster => write!(f, "already master"),
            Note::AlreadyStandby => write!(f, "already standby"),
            Note::RequestedRole(r) => write!(f, "our db requested role is {r}"),
            Note::SyncStandbyNamesChanged(a, b) => write!(
                f,
                "needed synchronous_standby_names changed: prev {a:?}, new {b:?}"
            ),
            Note::RecoveryChanged => write!(f, "postgres recovery parameters changed"),
            Note::Fenced => write!(
                f,
                "our db was replaced as master and follows nothing: running read-only (fenced)"
            ),
            Note::Resyncing => write!(f, "resyncing the database cluster"),
            Note::Initializing => write!(f, "initializing the database cluster"),
            Note::DbUidChanged { local, assigned } => write!(
                f,
                "current db UID different than cluster data db UID: db {local:?}, cdDB {assigned:?}"
            ),
            Note::RemovingInterruptedInit => write!(
                f,
                "db is initializing from a previous run, removing its data"
            ),
            Note::SyncStandbysSynced => {
                write!(f, "synchronous standbys in sync, allowing all connections")
            }
            Note::RestartingForParameters => write!(
                f,
                "postgres parameters requiring a restart changed, restarting"
            ),
            Note::RestartDisabled => write!(
                f,
                "postgres parameters requiring a restart changed, automaticPgRestart is disabled: not restarting"
            ),
            Note::RewindFailed(e) => write!(
                f,
                "error syncing with pg_rewind, falling back to pg_basebackup: {e}"
            ),
            Note::RewoundNotReady(e) => write!(
                f,
                "rewound instance not ready, resyncing with pg_basebackup: {e}"
            ),
            Note::SwitchoverStopping => write!(
                f,
                "switchover: stopping postgres cleanly (fast mode) so the target can take over"
            ),
            Note::SwitchoverRejoin => write!(
                f,
                "switchover: following the new master without rewind, it has our shutdown checkpoint"
            ),
            Note::RewoundForked => write!(
                f,
                "rewound instance is on a different timeline branch than the followed db, resyncing with pg_basebackup"
            ),
        }
    }
}

/// One step of the keeper's convergence. The runtime executes them in order and stops at the
/// first failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeeperAction {
    /// Nothing more to do now (logged at INFO); ends the plan.
    Wait(WaitReason),
    /// Cannot proceed (logged as an error); ends the plan.
    Fail(PlanError),
    /// Log a line.
    Note(Note),
    /// Stop postgres (fast) if it runs.
    Stop,
    /// Remove PGDATA.
    RemoveData,
    /// Replace `dbstate`.
    SaveDbState(LocalDbState),
    /// The init or resync finished: `dbstate.initializing = false` (uid and init parameters kept).
    FinishInit,
    /// Record the generation fully applied: `dbstate.generation = g`, `initializing = false`.
    MarkConverged {
        /// `db.generation`.
        generation: i64,
    },
    /// Set the in-memory `waitSyncStandbysSynced` flag.
    SetWaitSyncStandbys(bool),
    /// `initdb` (superuser password from the keeper's secrets).
    InitDb(NewConfig),
    /// Run the PITR data restore command.
    RestoreData {
        /// `dataRestoreCommand` (`%d` = PGDATA).
        command: String,
    },
    /// Write pg_hba.conf and the signal file, and start with `stolon-temp-postgresql.conf`
    /// (`include 'postgresql.conf'` + these parameters and recovery parameters).
    StartTmpMerged(Box<PgConfig>),
    /// Wait until a PITR recovery finished (`recovery.signal` gone); `None` = no bound.
    WaitRecoveryDone {
        /// Bound.
        timeout: Option<Duration>,
    },
    /// Wait for `select 1`; `None` = no bound.
    WaitReady {
        /// Bound.
        timeout: Option<Duration>,
    },
    /// Read `pg_file_settings` (minus managed parameters) into `dbstate.InitPGParameters`.
    SaveInitParameters,
    /// Create/alter the superuser and replication roles.
    CreateRoles(RolesPlan),
    /// Rewind or clone, then start as a standby (see [`ResyncPlan`]).
    Resync(Box<ResyncPlan>),
    /// Write postgresql.conf, pg_hba.conf and the signal files (applied at the next
    /// start/reload/restart).
    WriteConfig(Box<PgConfig>),
    /// Start postgres with the written configuration.
    Start,
    /// `pg_ctl promote -w`.
    Promote,
    /// `pg_ctl reload`.
    Reload,
    /// Stop (fast) and start.
    Restart,
    /// Make the `stolon_*` replication slots exactly `wanted` (other slots untouched).
    RefreshSlots {
        /// Full slot names.
        wanted: Vec<String>,
    },
    /// The restart check (docs/architecture.md §7.1): when the instance runs with a configuration of ours,
    /// [`super::record`] follows it with [`KeeperAction::QueryPendingRestart`].
    CheckRestart {
        /// `automaticPgRestart`.
        automatic: bool,
    },
    /// Query `pending_restart` (outcome [`Outcome::PendingRestart`]); [`super::record`] then
    /// reports it and restarts when `automatic`.
    QueryPendingRestart {
        /// `automaticPgRestart`.
        automatic: bool,
    },
    /// Set `stolon_keeper_needs_restart`.
    ReportNeedsRestart(bool),
    /// pg_rewind against `rewind_from` (outcome [`Outcome::Rewind`]: a failure is an outcome,
    /// not an error: [`super::record`] falls back to a clone).
    Rewind(Box<ResyncPlan>),
    /// pg_basebackup from `clone_from` into an empty PGDATA.
    BaseBackup(Box<ResyncPlan>),
    /// Wait for the rewound, started instance to be ready and read its state (outcome
    /// [`Outcome::Rewound`]), to detect a forked timeline.
    CheckRewound(Box<ResyncPlan>),
    /// Observe and plan again right away (an init/resync finished).
    Replan,
}

/// What executing a [`KeeperAction`] yielded, reported back to [`super::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The action succeeded and has nothing to report.
    Done,
    /// `pending_restart` answered.
    PendingRestart(bool),
    /// The instance's own parameters (`pg_file_settings` minus managed ones).
    InitParameters(PgParameters),
    /// pg_rewind succeeded, or failed with this error.
    Rewind(Result<(), String>),
    /// The rewound instance became ready with this state, or did not (the error).
    Rewound(Result<Box<crate::model::PostgresState>, String>),
}
