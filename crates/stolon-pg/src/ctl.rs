//! The `PgCtl` trait: every operation the keeper performs on its PostgreSQL instance, at the level
//! the keeper needs, plus the option and result types. [`crate::ProcessPg`] implements it with
//! real programs; keeper tests may implement it with a fake. Nothing here decides anything.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use crate::binaries::PgVersion;
use crate::conninfo::ConnParams;
use crate::error::PgError;
use crate::lsn::Lsn;

/// `pg_ctl stop -m <mode>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopMode {
    /// Wait for clients to disconnect.
    Smart,
    /// Disconnect clients, checkpoint, exit (what the keeper uses).
    Fast,
    /// Abort without a checkpoint (crash recovery at next start).
    Immediate,
}

impl StopMode {
    /// The `-m` argument.
    pub fn as_arg(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Which recovery signal file PGDATA holds (PostgreSQL >= 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecoveryMode {
    /// Neither file: starts as a primary.
    None,
    /// `standby.signal`: a standby.
    Standby,
    /// `recovery.signal`: targeted archive recovery, then promotion.
    Recovery,
}

/// `initdb` options; the superuser name comes from [`crate::ProcessPgConfig::superuser`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct InitDbOptions {
    /// Superuser password, passed with `--pwfile` (a 0600 temp file); `None` = no password.
    pub superuser_password: Option<String>,
    /// `--locale`.
    pub locale: Option<String>,
    /// `--encoding`.
    pub encoding: Option<String>,
    /// `--data-checksums`.
    pub data_checksums: bool,
    /// Kill initdb after this long; `None` = no bound.
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for InitDbOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitDbOptions")
            .field(
                "superuser_password",
                &self.superuser_password.as_ref().map(|_| "<redacted>"),
            )
            .field("locale", &self.locale)
            .field("encoding", &self.encoding)
            .field("data_checksums", &self.data_checksums)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// How to start the postmaster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOptions {
    /// When set, write `stolon-temp-postgresql.conf` = `include 'postgresql.conf'` (if that file
    /// exists) + this text, and start with `-c config_file=<that file>` ("start tmp merged", used
    /// during init so initdb's or the existing settings are kept). `None` = normal start.
    pub temp_merged_config: Option<String>,
    /// How long to wait for `postmaster.pid` to name our child (Stolon: 60s).
    pub timeout: Duration,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            temp_merged_config: None,
            timeout: Duration::from_secs(60),
        }
    }
}

/// `pg_basebackup` options. PGDATA is removed first (and on failure).
///
/// Runs `pg_basebackup -Xs -D <PGDATA> -d "<conninfo without password> options='-c
/// synchronous_commit=off'" [--slot <slot>] [--checkpoint=fast]` with a temporary PGPASSFILE.
/// `-R` is NOT used: the keeper writes its own recovery settings afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupOptions {
    /// The server to clone (replication user + password).
    pub source: ConnParams,
    /// Physical slot on the source to stream WAL through (`stolon_<own db uid>`).
    pub slot: Option<String>,
    /// `--checkpoint=fast` instead of waiting for a spread checkpoint on the source.
    pub fast_checkpoint: bool,
    /// Kill pg_basebackup after this long; `None` = no bound.
    pub timeout: Option<Duration>,
}

/// `pg_rewind` options.
///
/// Removes `postgresql.auto.conf` first (pg_rewind fails on the /dev/null symlink), optionally
/// runs CHECKPOINT on the source (until then a just-promoted source's control file still shows
/// the old timeline), then `pg_rewind -D <PGDATA> --source-server="<conninfo> options='-c
/// synchronous_commit=off'"` with a temporary PGPASSFILE. PGDATA must be stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewindOptions {
    /// The current primary (superuser + password).
    pub source: ConnParams,
    /// Run `CHECKPOINT` on the source first (recommended; needs superuser or pg_checkpoint).
    pub checkpoint_source: bool,
    /// Kill pg_rewind after this long; `None` = no bound.
    pub timeout: Option<Duration>,
}

/// What pg_rewind said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewindOutcome {
    /// False when pg_rewind found the target already on the source's history
    /// ("no rewind required").
    pub rewound: bool,
    /// pg_rewind's combined output (for logs).
    pub output: String,
}

/// A role to create or alter (in its own transaction with `set local log_statement='none'`).
#[derive(Clone, PartialEq, Eq)]
pub struct RoleDef {
    /// Role name (quoted as an identifier).
    pub name: String,
    /// `LOGIN`.
    pub login: bool,
    /// `REPLICATION`.
    pub replication: bool,
    /// `PASSWORD '<...>'` when set (hashed by the server per `password_encryption`).
    pub password: Option<String>,
}

impl std::fmt::Debug for RoleDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleDef")
            .field("name", &self.name)
            .field("login", &self.login)
            .field("replication", &self.replication)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The result of IDENTIFY_SYSTEM (or its SQL equivalent on a primary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// Database system identifier.
    pub system_id: u64,
    /// Current timeline (on a standby: the replay timeline).
    pub timeline: u32,
    /// Current WAL flush position (on a standby: the greater of received and replayed).
    pub xlog_pos: Lsn,
}

/// One line of a timeline history file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistoryEntry {
    /// The parent timeline that ended at `switch_point`.
    pub timeline: u32,
    /// Where the next timeline branched off.
    pub switch_point: Lsn,
    /// Free-text reason.
    pub reason: String,
}

/// A WAL segment file in `pg_wal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalFile {
    /// 24 hex characters.
    pub name: String,
    /// Size in bytes (16 MiB unless initdb chose another segment size).
    pub size: u64,
}

/// The WAL position as seen over SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalPosition {
    /// Not in recovery: `pg_current_wal_lsn()`.
    Primary {
        /// Current write position.
        current: Lsn,
    },
    /// In recovery.
    Standby {
        /// `pg_last_wal_receive_lsn()` (None when nothing was streamed).
        receive: Option<Lsn>,
        /// `pg_last_wal_replay_lsn()`.
        replay: Option<Lsn>,
    },
}

/// A postmaster child of ours exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresExit {
    /// Grows by one with every exit observed by this controller (so `watch` receivers see each).
    pub seq: u64,
    /// The child's pid.
    pub pid: u32,
    /// Exit status as text.
    pub status: String,
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// True when the exit followed our own `stop` (or drop); false = it died on its own.
    pub expected: bool,
}

/// Everything the keeper does to its PostgreSQL instance.
///
/// One implementor manages one PGDATA. Methods are idempotent where the name allows
/// (`stop_if_started`, `set_recovery_mode`, `block_alter_system`, `remove_data_dir`). SQL methods
/// open a fresh local connection (unix socket, superuser) per call.
#[async_trait::async_trait]
pub trait PgCtl: Send + Sync {
    // ----- facts about the installation and PGDATA (no server needed)

    /// PGDATA.
    fn data_dir(&self) -> &Path;
    /// `postgres -V`.
    async fn binary_version(&self) -> Result<PgVersion, PgError>;
    /// `PG_VERSION` of PGDATA; `None` when absent.
    async fn data_version(&self) -> Result<Option<PgVersion>, PgError>;
    /// Every file of the initialised-PGDATA list exists.
    async fn is_initialized(&self) -> Result<bool, PgError>;
    /// System identifier from `global/pg_control`; `None` when absent.
    async fn system_id(&self) -> Result<Option<u64>, PgError>;
    /// The shutdown checkpoint's location when `global/pg_control` records a clean shutdown of
    /// a primary; `None` otherwise (see [`crate::files::read_shutdown_checkpoint`]).
    async fn shutdown_checkpoint(&self) -> Result<Option<u64>, PgError>;
    /// Which signal file exists (the keeper's "local role" for pg >= 12).
    async fn recovery_mode(&self) -> Result<RecoveryMode, PgError>;
    /// Oldest WAL segment in `pg_wal`.
    async fn oldest_wal_file(&self) -> Result<Option<WalFile>, PgError>;
    /// History of `timeline` from `pg_wal/<tli>.history` (what TIMELINE_HISTORY returns);
    /// empty for timeline 1 or a missing file.
    async fn timeline_history(&self, timeline: u32) -> Result<Vec<TimelineHistoryEntry>, PgError>;

    // ----- writing PGDATA

    /// Removes PGDATA entirely (missing is fine).
    async fn remove_data_dir(&self) -> Result<(), PgError>;
    /// Atomically replaces `postgresql.conf` with `content` (rendered by stolon-core).
    async fn write_postgresql_conf(&self, content: &str) -> Result<(), PgError>;
    /// Atomically replaces `pg_hba.conf` with `content` (rendered by stolon-core).
    async fn write_pg_hba_conf(&self, content: &str) -> Result<(), PgError>;
    /// Creates/removes `standby.signal` / `recovery.signal` to match `mode`.
    async fn set_recovery_mode(&self, mode: RecoveryMode) -> Result<(), PgError>;
    /// Makes `postgresql.auto.conf` a symlink to `/dev/null` (also done by `start`).
    async fn block_alter_system(&self) -> Result<(), PgError>;

    // ----- programs

    /// `initdb`; PGDATA is removed when it fails.
    async fn init_db(&self, opts: &InitDbOptions) -> Result<(), PgError>;
    /// Runs a data restore command with `/bin/sh -c` (`%d` -> PGDATA, `%%` -> `%`) after
    /// creating PGDATA (0700); PGDATA is removed when it fails.
    async fn restore_data(&self, command: &str, timeout: Option<Duration>) -> Result<(), PgError>;
    /// Clones PGDATA from another server with pg_basebackup (see [`BaseBackupOptions`]).
    async fn base_backup(&self, opts: &BaseBackupOptions) -> Result<(), PgError>;
    /// Rewinds the stopped PGDATA onto the source's timeline (see [`RewindOptions`]).
    async fn rewind(&self, opts: &RewindOptions) -> Result<RewindOutcome, PgError>;
    /// Starts the postmaster as a supervised child; Ok once `postmaster.pid` names it.
    async fn start(&self, opts: &StartOptions) -> Result<(), PgError>;
    /// `pg_ctl stop -w -m <mode>` (fails when nothing is running).
    async fn stop(&self, mode: StopMode) -> Result<(), PgError>;
    /// Stops when `pg_ctl status` says a server is running (exit 3/4 = stopped).
    async fn stop_if_started(&self, mode: StopMode) -> Result<(), PgError>;
    /// `pg_ctl status` says a server runs on PGDATA (ours or left over from a previous keeper).
    async fn is_running(&self) -> Result<bool, PgError>;
    /// `pg_ctl reload`.
    async fn reload(&self) -> Result<(), PgError>;
    /// `pg_ctl promote -w`.
    async fn promote(&self) -> Result<(), PgError>;
    /// `select 1` every 200ms until it succeeds or `timeout` passes; fails early when our child
    /// exits meanwhile.
    async fn wait_ready(&self, timeout: Duration) -> Result<(), PgError>;
    /// Exits of postmaster children we started; `None` until the first one.
    fn exits(&self) -> watch::Receiver<Option<PostgresExit>>;

    // ----- SQL on the local instance

    /// `select 1`.
    async fn ping(&self) -> Result<(), PgError>;
    /// `ALTER ROLE <name> WITH [LOGIN] [REPLICATION] [PASSWORD '...']`.
    async fn alter_role(&self, role: &RoleDef) -> Result<(), PgError>;
    /// `CREATE ROLE <name> WITH [LOGIN] [REPLICATION] [PASSWORD '...']`.
    async fn create_role(&self, role: &RoleDef) -> Result<(), PgError>;
    /// `pg_file_settings` (name and setting non-null; later entries win).
    async fn file_settings(&self) -> Result<BTreeMap<String, String>, PgError>;
    /// Standbys in `pg_stat_replication` with `sync_state` `sync` (listed under `N (...)`) or
    /// `quorum` (listed under `ANY N (...)`, streaming) and application_name `stolon_<x>`,
    /// returned as `<x>`, sorted.
    async fn in_sync_standbys(&self) -> Result<Vec<String>, PgError>;
    /// `select count(*) > 0 from pg_settings where pending_restart`.
    async fn pending_restart(&self) -> Result<bool, PgError>;
    /// Names of non-temporary replication slots, sorted.
    async fn replication_slots(&self) -> Result<Vec<String>, PgError>;
    /// `pg_create_physical_replication_slot(name)`.
    async fn create_replication_slot(&self, name: &str) -> Result<(), PgError>;
    /// `pg_drop_replication_slot(name)`.
    async fn drop_replication_slot(&self, name: &str) -> Result<(), PgError>;
    /// `CHECKPOINT`.
    async fn checkpoint(&self) -> Result<(), PgError>;
    /// `pg_is_in_recovery()`.
    async fn is_in_recovery(&self) -> Result<bool, PgError>;
    /// Current WAL position over SQL.
    async fn wal_position(&self) -> Result<WalPosition, PgError>;
    /// IDENTIFY_SYSTEM's values: on a primary read over SQL (same values), on a standby from
    /// IDENTIFY_SYSTEM over a local replication connection (replication user).
    async fn identify_system(&self) -> Result<SystemIdentity, PgError>;
}
