//! `FakePg` (feature `fake`): an in-memory [`PgCtl`] for keeper unit tests and simulations. It
//! models the facts the keeper observes (initialised, running, recovery mode, system id,
//! timeline, WAL position, slots, roles, config text), records every call, and can be told to
//! fail an operation or to crash. It does not model replication between instances: tests set
//! the state a clone or rewind should produce with [`FakePg::set_clone_source`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::binaries::PgVersion;
use crate::ctl::{
    BaseBackupOptions, InitDbOptions, PgCtl, PostgresExit, RecoveryMode, RewindOptions,
    RewindOutcome, RoleDef, StartOptions, StopMode, SystemIdentity, TimelineHistoryEntry, WalFile,
    WalPosition,
};
use crate::error::PgError;
use crate::lsn::Lsn;

/// What a pg_basebackup or pg_rewind on a [`FakePg`] copies from "the source".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSource {
    /// Source system id.
    pub system_id: u64,
    /// Source timeline.
    pub timeline: u32,
    /// Source WAL position.
    pub lsn: Lsn,
    /// Source timeline histories.
    pub history: BTreeMap<u32, Vec<TimelineHistoryEntry>>,
}

/// The observable state of a [`FakePg`]; tests read and edit it through [`FakePg::state`].
#[derive(Debug, Clone)]
pub struct FakeState {
    /// `postgres -V`.
    pub binary_version: PgVersion,
    /// PGDATA initialised.
    pub initialized: bool,
    /// System id (meaningful when initialised).
    pub system_id: u64,
    /// System id the next `init_db` gives.
    pub next_system_id: u64,
    /// A postmaster is running.
    pub running: bool,
    /// Running in recovery (set from the signal file at start; cleared by promote).
    pub in_recovery: bool,
    /// Signal file present.
    pub recovery_mode: RecoveryMode,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL position (tests advance it).
    pub lsn: Lsn,
    /// Timeline histories by timeline.
    pub history: BTreeMap<u32, Vec<TimelineHistoryEntry>>,
    /// Last postgresql.conf written.
    pub postgresql_conf: Option<String>,
    /// Last pg_hba.conf written.
    pub pg_hba_conf: Option<String>,
    /// Temp merged config of the last start, if any.
    pub temp_merged_config: Option<String>,
    /// Roles created or altered.
    pub roles: BTreeMap<String, RoleDef>,
    /// Replication slots.
    pub slots: BTreeSet<String>,
    /// What `in_sync_standbys` returns (the standbys a primary reports `sync`, or `quorum`
    /// under `ANY N (...)`).
    pub in_sync_standbys: Vec<String>,
    /// What `file_settings` returns.
    pub file_settings: BTreeMap<String, String>,
    /// What `pending_restart` returns.
    pub pending_restart: bool,
    /// What clones and rewinds copy; `None` makes them fail.
    pub clone_source: Option<FakeSource>,
    /// What `rewind` reports as `rewound`.
    pub rewind_needed: bool,
    /// ALTER SYSTEM blocked.
    pub alter_system_blocked: bool,
    /// Every call, in order, as `name` or `name(arg)`.
    pub calls: Vec<String>,
    /// Operation name -> error message: the next call of that operation fails once.
    pub fail_next: BTreeMap<String, String>,
}

impl Default for FakeState {
    fn default() -> Self {
        FakeState {
            binary_version: PgVersion {
                major: 15,
                minor: 0,
            },
            initialized: false,
            system_id: 0,
            next_system_id: 7_000_000_000_000_000_001,
            running: false,
            in_recovery: false,
            recovery_mode: RecoveryMode::None,
            timeline: 1,
            lsn: Lsn(0),
            history: BTreeMap::new(),
            postgresql_conf: None,
            pg_hba_conf: None,
            temp_merged_config: None,
            roles: BTreeMap::new(),
            slots: BTreeSet::new(),
            in_sync_standbys: Vec::new(),
            file_settings: BTreeMap::new(),
            pending_restart: false,
            clone_source: None,
            rewind_needed: true,
            alter_system_blocked: false,
            calls: Vec::new(),
            fail_next: BTreeMap::new(),
        }
    }
}

/// An in-memory PostgreSQL for tests (see the module docs).
#[derive(Debug)]
pub struct FakePg {
    data_dir: PathBuf,
    state: Mutex<FakeState>,
    exits: watch::Sender<Option<PostgresExit>>,
    seq: Mutex<u64>,
}

impl FakePg {
    /// A fresh, uninitialised instance "at" `data_dir` (nothing is written there).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        FakePg {
            data_dir: data_dir.into(),
            state: Mutex::new(FakeState::default()),
            exits: watch::Sender::new(None),
            seq: Mutex::new(0),
        }
    }

    /// Locks the state for reading or editing.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next call of `op` (the [`PgCtl`] method name, e.g. `"start"`) fail with `msg`.
    pub fn fail_next(&self, op: &str, msg: &str) {
        self.state()
            .fail_next
            .insert(op.to_string(), msg.to_string());
    }

    /// Sets what clones and rewinds copy.
    pub fn set_clone_source(&self, src: FakeSource) {
        self.state().clone_source = Some(src);
    }

    /// The postmaster dies on its own: publishes an unexpected exit.
    pub fn crash(&self) {
        let was_running = std::mem::replace(&mut self.state().running, false);
        if was_running {
            self.publish_exit(false);
        }
    }

    /// The recorded calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    fn publish_exit(&self, expected: bool) {
        let mut seq = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        *seq += 1;
        self.exits.send_replace(Some(PostgresExit {
            seq: *seq,
            pid: 4242,
            status: if expected {
                "exit status: 0".into()
            } else {
                "signal: 9 (SIGKILL)".into()
            },
            code: if expected { Some(0) } else { None },
            expected,
        }));
    }

    /// Records `call` and returns the lock, or the injected failure for `op`.
    fn enter(&self, op: &str, call: String) -> Result<MutexGuard<'_, FakeState>, PgError> {
        let mut s = self.state();
        s.calls.push(call);
        if let Some(msg) = s.fail_next.remove(op) {
            return Err(PgError::ToolFailed {
                program: op.to_string(),
                status: "exit status: 1".into(),
                code: Some(1),
                stderr: msg,
            });
        }
        Ok(s)
    }

    fn running(s: &FakeState, what: &'static str) -> Result<(), PgError> {
        if s.running {
            Ok(())
        } else {
            Err(PgError::ConnectTimeout {
                target: format!("fake ({what})"),
                timeout: Duration::ZERO,
            })
        }
    }

    fn not_running_err(op: &str) -> PgError {
        PgError::ToolFailed {
            program: op.to_string(),
            status: "exit status: 1".into(),
            code: Some(1),
            stderr: "fake: no server running".into(),
        }
    }
}

#[async_trait::async_trait]
impl PgCtl for FakePg {
    fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    async fn binary_version(&self) -> Result<PgVersion, PgError> {
        Ok(self
            .enter("binary_version", "binary_version".into())?
            .binary_version)
    }

    async fn data_version(&self) -> Result<Option<PgVersion>, PgError> {
        let s = self.enter("data_version", "data_version".into())?;
        Ok(s.initialized.then_some(PgVersion {
            major: s.binary_version.major,
            minor: 0,
        }))
    }

    async fn is_initialized(&self) -> Result<bool, PgError> {
        Ok(self
            .enter("is_initialized", "is_initialized".into())?
            .initialized)
    }

    async fn system_id(&self) -> Result<Option<u64>, PgError> {
        let s = self.enter("system_id", "system_id".into())?;
        Ok(s.initialized.then_some(s.system_id))
    }

    /// A stopped primary's current position stands for its shutdown checkpoint. Not recorded
    /// in `calls` (it is a read of a file, like the observation's other facts).
    async fn shutdown_checkpoint(&self) -> Result<Option<u64>, PgError> {
        let s = self.state();
        let clean = s.initialized && !s.running && s.recovery_mode == RecoveryMode::None;
        Ok(clean.then_some(s.lsn.0).filter(|p| *p > 0))
    }

    async fn recovery_mode(&self) -> Result<RecoveryMode, PgError> {
        Ok(self
            .enter("recovery_mode", "recovery_mode".into())?
            .recovery_mode)
    }

    async fn oldest_wal_file(&self) -> Result<Option<WalFile>, PgError> {
        let s = self.enter("oldest_wal_file", "oldest_wal_file".into())?;
        Ok(s.initialized.then(|| WalFile {
            name: format!("{:08X}0000000000000001", s.timeline),
            size: 16 * 1024 * 1024,
        }))
    }

    async fn timeline_history(&self, timeline: u32) -> Result<Vec<TimelineHistoryEntry>, PgError> {
        let s = self.enter("timeline_history", format!("timeline_history({timeline})"))?;
        Ok(s.history.get(&timeline).cloned().unwrap_or_default())
    }

    async fn remove_data_dir(&self) -> Result<(), PgError> {
        let mut s = self.enter("remove_data_dir", "remove_data_dir".into())?;
        if s.running {
            return Err(PgError::InvalidInput {
                what: "fake remove_data_dir",
                reason: "postgres is running".into(),
            });
        }
        s.initialized = false;
        s.recovery_mode = RecoveryMode::None;
        s.postgresql_conf = None;
        s.pg_hba_conf = None;
        s.slots.clear();
        s.roles.clear();
        s.history.clear();
        s.timeline = 1;
        s.lsn = Lsn(0);
        Ok(())
    }

    async fn write_postgresql_conf(&self, content: &str) -> Result<(), PgError> {
        let mut s = self.enter("write_postgresql_conf", "write_postgresql_conf".into())?;
        s.postgresql_conf = Some(content.to_string());
        Ok(())
    }

    async fn write_pg_hba_conf(&self, content: &str) -> Result<(), PgError> {
        let mut s = self.enter("write_pg_hba_conf", "write_pg_hba_conf".into())?;
        s.pg_hba_conf = Some(content.to_string());
        Ok(())
    }

    async fn set_recovery_mode(&self, mode: RecoveryMode) -> Result<(), PgError> {
        let mut s = self.enter("set_recovery_mode", format!("set_recovery_mode({mode:?})"))?;
        s.recovery_mode = mode;
        Ok(())
    }

    async fn block_alter_system(&self) -> Result<(), PgError> {
        self.enter("block_alter_system", "block_alter_system".into())?
            .alter_system_blocked = true;
        Ok(())
    }

    async fn init_db(&self, _opts: &InitDbOptions) -> Result<(), PgError> {
        let mut s = self.enter("init_db", "init_db".into())?;
        if s.initialized {
            return Err(PgError::ToolFailed {
                program: "initdb".into(),
                status: "exit status: 1".into(),
                code: Some(1),
                stderr: "fake: directory exists but is not empty".into(),
            });
        }
        s.initialized = true;
        s.system_id = s.next_system_id;
        s.next_system_id += 1;
        s.timeline = 1;
        s.lsn = Lsn(0x0100_0028);
        Ok(())
    }

    async fn restore_data(&self, command: &str, _timeout: Option<Duration>) -> Result<(), PgError> {
        let mut s = self.enter("restore_data", format!("restore_data({command})"))?;
        let src = s
            .clone_source
            .clone()
            .ok_or_else(|| Self::not_running_err("restore"))?;
        s.initialized = true;
        s.system_id = src.system_id;
        s.timeline = src.timeline;
        s.lsn = src.lsn;
        s.history = src.history;
        Ok(())
    }

    async fn base_backup(&self, opts: &BaseBackupOptions) -> Result<(), PgError> {
        let mut s = self.enter(
            "base_backup",
            format!(
                "base_backup({}:{}, {:?})",
                opts.source.host, opts.source.port, opts.slot
            ),
        )?;
        if s.running {
            return Err(PgError::InvalidInput {
                what: "base backup target",
                reason: "postgres is running".into(),
            });
        }
        let src = s
            .clone_source
            .clone()
            .ok_or_else(|| Self::not_running_err("pg_basebackup"))?;
        s.initialized = true;
        s.system_id = src.system_id;
        s.timeline = src.timeline;
        s.lsn = src.lsn;
        s.history = src.history;
        s.slots.clear();
        s.recovery_mode = RecoveryMode::None;
        Ok(())
    }

    async fn rewind(&self, opts: &RewindOptions) -> Result<RewindOutcome, PgError> {
        let mut s = self.enter(
            "rewind",
            format!("rewind({}:{})", opts.source.host, opts.source.port),
        )?;
        let src = s
            .clone_source
            .clone()
            .ok_or_else(|| Self::not_running_err("pg_rewind"))?;
        if s.running || !s.initialized || s.system_id != src.system_id {
            return Err(PgError::ToolFailed {
                program: "pg_rewind".into(),
                status: "exit status: 1".into(),
                code: Some(1),
                stderr: "fake: target running, missing or from another system".into(),
            });
        }
        let rewound = s.rewind_needed;
        s.timeline = src.timeline;
        s.lsn = src.lsn;
        s.history = src.history;
        s.alter_system_blocked = false;
        Ok(RewindOutcome {
            rewound,
            output: if rewound {
                "fake: servers diverged; Done!".into()
            } else {
                "fake: no rewind required".into()
            },
        })
    }

    async fn start(&self, opts: &StartOptions) -> Result<(), PgError> {
        let mut s = self.enter("start", "start".into())?;
        if s.running {
            return Err(PgError::AlreadyRunning(4242));
        }
        if !s.initialized {
            return Err(PgError::ExitedUnexpectedly {
                status: "exit status: 2".into(),
                output: "fake: data directory is not initialised".into(),
            });
        }
        s.alter_system_blocked = true;
        s.temp_merged_config = opts.temp_merged_config.clone();
        s.running = true;
        s.in_recovery = s.recovery_mode != RecoveryMode::None;
        Ok(())
    }

    async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        let mut s = self.enter("stop", format!("stop({mode:?})"))?;
        if !s.running {
            return Err(Self::not_running_err("pg_ctl"));
        }
        s.running = false;
        drop(s);
        self.publish_exit(true);
        Ok(())
    }

    async fn stop_if_started(&self, mode: StopMode) -> Result<(), PgError> {
        let was_running = {
            let mut s = self.enter("stop_if_started", format!("stop_if_started({mode:?})"))?;
            std::mem::replace(&mut s.running, false)
        };
        if was_running {
            self.publish_exit(true);
        }
        Ok(())
    }

    async fn is_running(&self) -> Result<bool, PgError> {
        Ok(self.enter("is_running", "is_running".into())?.running)
    }

    async fn reload(&self) -> Result<(), PgError> {
        let s = self.enter("reload", "reload".into())?;
        if s.running {
            Ok(())
        } else {
            Err(Self::not_running_err("pg_ctl"))
        }
    }

    async fn promote(&self) -> Result<(), PgError> {
        let mut s = self.enter("promote", "promote".into())?;
        if !s.running || !s.in_recovery {
            return Err(Self::not_running_err("pg_ctl"));
        }
        let old = s.timeline;
        let entry = TimelineHistoryEntry {
            timeline: old,
            switch_point: s.lsn,
            reason: "fake promotion".into(),
        };
        let mut hist = s.history.get(&old).cloned().unwrap_or_default();
        hist.push(entry);
        s.timeline = old + 1;
        let tl = s.timeline;
        s.history.insert(tl, hist);
        s.in_recovery = false;
        s.recovery_mode = RecoveryMode::None;
        Ok(())
    }

    async fn wait_ready(&self, _timeout: Duration) -> Result<(), PgError> {
        let s = self.enter("wait_ready", "wait_ready".into())?;
        if s.running {
            Ok(())
        } else {
            Err(PgError::NotReady {
                timeout: Duration::ZERO,
                last_error: "fake: not running".into(),
            })
        }
    }

    fn exits(&self) -> watch::Receiver<Option<PostgresExit>> {
        self.exits.subscribe()
    }

    async fn ping(&self) -> Result<(), PgError> {
        let s = self.enter("ping", "ping".into())?;
        Self::running(&s, "ping")
    }

    async fn alter_role(&self, role: &RoleDef) -> Result<(), PgError> {
        let mut s = self.enter("alter_role", format!("alter_role({})", role.name))?;
        Self::running(&s, "alter_role")?;
        s.roles.insert(role.name.clone(), role.clone());
        Ok(())
    }

    async fn create_role(&self, role: &RoleDef) -> Result<(), PgError> {
        let mut s = self.enter("create_role", format!("create_role({})", role.name))?;
        Self::running(&s, "create_role")?;
        if s.roles.contains_key(&role.name) {
            return Err(PgError::InvalidInput {
                what: "fake role",
                reason: format!("role {} already exists", role.name),
            });
        }
        s.roles.insert(role.name.clone(), role.clone());
        Ok(())
    }

    async fn file_settings(&self) -> Result<BTreeMap<String, String>, PgError> {
        let s = self.enter("file_settings", "file_settings".into())?;
        Self::running(&s, "file_settings")?;
        Ok(s.file_settings.clone())
    }

    async fn in_sync_standbys(&self) -> Result<Vec<String>, PgError> {
        let s = self.enter("in_sync_standbys", "in_sync_standbys".into())?;
        Self::running(&s, "in_sync_standbys")?;
        Ok(s.in_sync_standbys.clone())
    }

    async fn pending_restart(&self) -> Result<bool, PgError> {
        let s = self.enter("pending_restart", "pending_restart".into())?;
        Self::running(&s, "pending_restart")?;
        Ok(s.pending_restart)
    }

    async fn replication_slots(&self) -> Result<Vec<String>, PgError> {
        let s = self.enter("replication_slots", "replication_slots".into())?;
        Self::running(&s, "replication_slots")?;
        Ok(s.slots.iter().cloned().collect())
    }

    async fn create_replication_slot(&self, name: &str) -> Result<(), PgError> {
        let mut s = self.enter(
            "create_replication_slot",
            format!("create_replication_slot({name})"),
        )?;
        Self::running(&s, "create_replication_slot")?;
        if !s.slots.insert(name.to_string()) {
            return Err(PgError::InvalidInput {
                what: "fake slot",
                reason: format!("replication slot {name} already exists"),
            });
        }
        Ok(())
    }

    async fn drop_replication_slot(&self, name: &str) -> Result<(), PgError> {
        let mut s = self.enter(
            "drop_replication_slot",
            format!("drop_replication_slot({name})"),
        )?;
        Self::running(&s, "drop_replication_slot")?;
        if !s.slots.remove(name) {
            return Err(PgError::InvalidInput {
                what: "fake slot",
                reason: format!("replication slot {name} does not exist"),
            });
        }
        Ok(())
    }

    async fn checkpoint(&self) -> Result<(), PgError> {
        let s = self.enter("checkpoint", "checkpoint".into())?;
        Self::running(&s, "checkpoint")
    }

    async fn is_in_recovery(&self) -> Result<bool, PgError> {
        let s = self.enter("is_in_recovery", "is_in_recovery".into())?;
        Self::running(&s, "is_in_recovery")?;
        Ok(s.in_recovery)
    }

    async fn wal_position(&self) -> Result<WalPosition, PgError> {
        let s = self.enter("wal_position", "wal_position".into())?;
        Self::running(&s, "wal_position")?;
        Ok(if s.in_recovery {
            WalPosition::Standby {
                receive: Some(s.lsn),
                replay: Some(s.lsn),
            }
        } else {
            WalPosition::Primary { current: s.lsn }
        })
    }

    async fn identify_system(&self) -> Result<SystemIdentity, PgError> {
        let s = self.enter("identify_system", "identify_system".into())?;
        Self::running(&s, "identify_system")?;
        Ok(SystemIdentity {
            system_id: s.system_id,
            timeline: s.timeline,
            xlog_pos: s.lsn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conninfo::ConnParams;

    #[tokio::test]
    async fn fake_lifecycle() {
        let pg = FakePg::new("/nonexistent/pgdata");
        let mut exits = pg.exits();
        pg.init_db(&InitDbOptions::default()).await.unwrap();
        assert!(pg.is_initialized().await.unwrap());
        pg.start(&StartOptions::default()).await.unwrap();
        assert!(pg.state().alter_system_blocked);
        pg.create_replication_slot("stolon_x").await.unwrap();
        assert_eq!(pg.replication_slots().await.unwrap(), vec!["stolon_x"]);
        pg.stop(StopMode::Fast).await.unwrap();
        assert!(exits.borrow_and_update().as_ref().unwrap().expected);
        pg.fail_next("start", "boom");
        let e = pg.start(&StartOptions::default()).await.unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        pg.start(&StartOptions::default()).await.unwrap();
        pg.crash();
        let exit = exits.borrow_and_update().clone().unwrap();
        assert!(!exit.expected && exit.seq == 2);
        assert!(pg.ping().await.is_err());
    }

    #[tokio::test]
    async fn fake_clone_promote_rewind() {
        let pg = FakePg::new("/x");
        let src = ConnParams::new("127.0.0.1", 5432, "repl");
        let opts = BaseBackupOptions {
            source: src.clone(),
            slot: Some("stolon_a".into()),
            fast_checkpoint: false,
            timeout: None,
        };
        assert!(pg.base_backup(&opts).await.is_err());
        pg.set_clone_source(FakeSource {
            system_id: 9,
            timeline: 1,
            lsn: Lsn(100),
            history: BTreeMap::new(),
        });
        pg.base_backup(&opts).await.unwrap();
        pg.set_recovery_mode(RecoveryMode::Standby).await.unwrap();
        pg.start(&StartOptions::default()).await.unwrap();
        assert!(pg.is_in_recovery().await.unwrap());
        pg.promote().await.unwrap();
        let id = pg.identify_system().await.unwrap();
        assert_eq!((id.system_id, id.timeline), (9, 2));
        assert_eq!(
            pg.timeline_history(2).await.unwrap()[0].switch_point,
            Lsn(100)
        );
        pg.stop(StopMode::Fast).await.unwrap();
        let out = pg
            .rewind(&RewindOptions {
                source: src,
                checkpoint_source: true,
                timeout: None,
            })
            .await
            .unwrap();
        assert!(out.rewound);
        assert_eq!(pg.state().timeline, 1);
        assert!(
            pg.calls()
                .iter()
                .any(|c| c.starts_with("base_backup(127.0.0.1:5432"))
        );
    }
}
