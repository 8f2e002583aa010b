//! `ProcessPg`: the real [`PgCtl`] for one PGDATA. It runs initdb, postgres (as a supervised
//! child), pg_ctl, pg_basebackup, pg_rewind and psql with a cleared environment, and SQL over the
//! local unix socket. It holds no opinion about what should happen: callers decide.
//!
//! Local SQL reuses one cached superuser connection (a new one only when it is closed or
//! broke, and after anything that stops, restarts or replaces the instance), so the keeper's
//! per-pass state queries cost no backend fork and no authentication each time.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_postgres::error::Severity;

use crate::binaries::{OsUser, PgBinaries, PgVersion, chown_to};
use crate::ctl::{
    BaseBackupOptions, InitDbOptions, PgCtl, PostgresExit, RecoveryMode, RewindOptions,
    RewindOutcome, RoleDef, StartOptions, StopMode, SystemIdentity, TimelineHistoryEntry, WalFile,
    WalPosition,
};
use crate::error::PgError;
use crate::files;
pub use crate::postmaster::PostgresOutput;
use crate::postmaster::{ExitEvents, Postmaster};
use crate::process::{ChildEnv, failed, run_any_status, run_ok};
use crate::replication;
use crate::sql;

/// Connection options given to pg_basebackup and pg_rewind (Stolon's choice: a clone or
/// rewind must not wait for synchronous standbys).
const SOURCE_CONN_OPTIONS: &str = "-c synchronous_commit=off";
/// Poll interval of start / wait-ready loops.
const POLL: Duration = Duration::from_millis(200);

/// A role name and its password (from the keeper's password files).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Role name.
    pub user: String,
    /// Password; `None` with trust auth.
    pub password: Option<String>,
}

impl Credentials {
    /// Shorthand.
    pub fn new(user: impl Into<String>, password: Option<String>) -> Self {
        Credentials {
            user: user.into(),
            password,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Everything [`ProcessPg`] needs to manage one PGDATA.
#[derive(Debug, Clone)]
pub struct ProcessPgConfig {
    /// Where the programs are.
    pub binaries: PgBinaries,
    /// PGDATA (made absolute by [`ProcessPg::new`]). Its parent must be writable by the user
    /// the programs run as.
    pub data_dir: PathBuf,
    /// `unix_socket_directories` given on the postgres command line; local SQL connects here.
    pub socket_dir: PathBuf,
    /// Port (also given on the postgres command line, so it always matches our connections).
    pub port: u16,
    /// Local SQL runs as this role.
    pub superuser: Credentials,
    /// IDENTIFY_SYSTEM runs as this role (needs a `local replication` hba entry).
    pub replication: Credentials,
    /// Run children as this user when we are root (tests); `None` in production.
    pub os_user: Option<OsUser>,
    /// Extra environment for every child (after PATH, HOME, LANG=C; may override them).
    pub extra_env: Vec<(OsString, OsString)>,
    /// Directory for 0600 secret temp files (pgpass, pwfile); default `std::env::temp_dir()`.
    pub temp_dir: PathBuf,
    /// Where the postmaster's output goes.
    pub output: PostgresOutput,
    /// Bound of each SQL connection attempt.
    pub connect_timeout: Duration,
    /// `pg_ctl -t` for stop and promote.
    pub pg_ctl_timeout: Duration,
    /// On drop, send SIGQUIT (immediate shutdown) to a postmaster child still running and wait
    /// up to 5 s for it to remove its pid file.
    pub kill_on_drop: bool,
}

impl ProcessPgConfig {
    /// A config with defaults: no OS user switch, no extra env, output to tracing, connect
    /// timeout 10 s, pg_ctl timeout 60 s, kill on drop.
    pub fn new(
        binaries: PgBinaries,
        data_dir: impl Into<PathBuf>,
        socket_dir: impl Into<PathBuf>,
        port: u16,
        superuser: Credentials,
        replication: Credentials,
    ) -> Self {
        ProcessPgConfig {
            binaries,
            data_dir: data_dir.into(),
            socket_dir: socket_dir.into(),
            port,
            superuser,
            replication,
            os_user: None,
            extra_env: Vec::new(),
            temp_dir: std::env::temp_dir(),
            output: PostgresOutput::Tracing,
            connect_timeout: Duration::from_secs(10),
            pg_ctl_timeout: Duration::from_secs(60),
            kill_on_drop: true,
        }
    }
}

/// The real PostgreSQL controller for one PGDATA.
#[derive(Debug)]
pub struct ProcessPg {
    cfg: ProcessPgConfig,
    env: ChildEnv,
    postmaster: Mutex<Option<Postmaster>>,
    events: Arc<ExitEvents>,
    /// The cached local superuser connection (see [`ProcessPg::local_client`]). Its
    /// connection task ends once the last clone of the client is dropped.
    local: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl ProcessPg {
    /// Builds the controller; makes the paths absolute. Does not touch the disk.
    pub fn new(mut cfg: ProcessPgConfig) -> Result<Self, PgError> {
        for p in [&mut cfg.data_dir, &mut cfg.socket_dir, &mut cfg.temp_dir] {
            *p = std::path::absolute(&*p).map_err(|e| PgError::io("resolve path", p.clone(), e))?;
        }
        let env = ChildEnv {
            os_user: cfg.os_user.clone(),
            extra_env: cfg.extra_env.clone(),
            temp_dir: cfg.temp_dir.clone(),
        };
        Ok(ProcessPg {
            cfg,
            env,
            postmaster: Mutex::new(None),
            events: Arc::new(ExitEvents::new()),
            local: tokio::sync::Mutex::new(None),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ProcessPgConfig {
        &self.cfg
    }

    /// A new local superuser connection (for callers needing SQL not covered by [`PgCtl`],
    /// e.g. tests). Never the cached one.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, PgError> {
        sql::connect_local(
            &self.cfg.socket_dir,
            self.cfg.port,
            &self.cfg.superuser.user,
            self.cfg.superuser.password.as_deref(),
            self.cfg.connect_timeout,
        )
        .await
    }

    /// The pid of our postmaster child while it runs.
    pub fn child_pid(&self) -> Option<u32> {
        self.current()
            .filter(|p| p.exit_status().is_none())
            .map(|p| p.pid)
    }

    fn current(&self) -> Option<Postmaster> {
        self.postmaster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn pgdata(&self) -> &Path {
        &self.cfg.data_dir
    }

    fn owner(&self) -> Option<&OsUser> {
        self.cfg.os_user.as_ref()
    }

    fn tool(&self, name: &str) -> Result<tokio::process::Command, PgError> {
        Ok(self.env.command(&self.cfg.binaries.program(name)?))
    }

    fn pg_ctl(&self, action: &str) -> Result<tokio::process::Command, PgError> {
        let mut cmd = self.tool("pg_ctl")?;
        cmd.arg(action).arg("-D").arg(self.pgdata());
        Ok(cmd)
    }

    fn pg_ctl_bound(&self) -> Option<Duration> {
        Some(self.cfg.pg_ctl_timeout + Duration::from_secs(10))
    }

    async fn remove_pgdata(&self) -> Result<(), PgError> {
        let dir = self.pgdata().to_path_buf();
        tokio::task::spawn_blocking(move || files::remove_dir_all_if_exists(&dir))
            .await
            .map_err(|e| PgError::io("remove directory", self.pgdata(), std::io::Error::other(e)))?
    }

    /// Removes PGDATA after a failed init/clone, logging (not returning) a removal error.
    async fn cleanup_after_failure(&self, what: &str) {
        if let Err(e) = self.remove_pgdata().await {
            tracing::warn!(error = %e, "cannot remove data dir after failed {what}");
        }
    }

    /// The cached local superuser connection, (re)connecting (bounded by `connect_timeout`)
    /// when there is none or it was closed. The lock is held while connecting so concurrent
    /// callers share one new connection.
    async fn local_client(&self) -> Result<Arc<Client>, PgError> {
        let mut cached = self.local.lock().await;
        if let Some(c) = cached.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        *cached = None;
        let c = Arc::new(self.connect().await?);
        *cached = Some(c.clone());
        Ok(c)
    }

    /// Runs `f` on the cached connection; forgets that connection when `f` failed and the
    /// connection is closed or may be broken, so the next call reconnects.
    async fn with_local<T, F, Fut>(&self, f: F) -> Result<T, PgError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, PgError>>,
    {
        let c = self.local_client().await?;
        // Bounded: a frozen or wedged backend must not hang the keeper's loop forever (a new
        // connection per call was bounded by the connect timeout; a cached one is not).
        let bound = (self.cfg.connect_timeout * 2).max(Duration::from_secs(5));
        let res = match tokio::time::timeout(bound, f(c.clone())).await {
            Ok(r) => r,
            Err(_) => Err(PgError::QueryTimeout { timeout: bound }),
        };
        if let Err(e) = &res
            && (c.is_closed() || connection_suspect(e))
        {
            let mut cached = self.local.lock().await;
            if cached.as_ref().is_some_and(|k| Arc::ptr_eq(k, &c)) {
                tracing::debug!(error = %e, "dropping the cached local postgres connection");
                *cached = None;
            }
        }
        res
    }

    /// Drops the cached connection: before postgres is stopped (a smart shutdown waits for
    /// every client) and whenever the instance is started, replaced or rewound, so no
    /// connection to an old postmaster survives.
    async fn drop_local(&self) {
        *self.local.lock().await = None;
    }

    /// IDENTIFY_SYSTEM over a local replication connection (as the replication role, through
    /// [`crate::replication`]), whatever the server's role. [`PgCtl::identify_system`] uses it
    /// on a standby only; a primary's values come over the cached SQL connection. Bounded like
    /// a query on the cached connection.
    pub async fn identify_system_replication(&self) -> Result<SystemIdentity, PgError> {
        let socket = self
            .cfg
            .socket_dir
            .join(format!(".s.PGSQL.{}", self.cfg.port));
        let target = format!("{}:{}", self.cfg.socket_dir.display(), self.cfg.port);
        let bound = (self.cfg.connect_timeout * 2).max(Duration::from_secs(5));
        let call = replication::identify_system(
            &socket,
            &self.cfg.replication.user,
            self.cfg.replication.password.as_deref(),
        );
        match tokio::time::timeout(bound, call).await {
            Ok(r) => r.map_err(|source| PgError::Replication { target, source }),
            Err(_) => Err(PgError::ConnectTimeout {
                target,
                timeout: bound,
            }),
        }
    }

    fn temp_merged_content(&self, extra: &str) -> String {
        let mut s = String::new();
        if self.pgdata().join("postgresql.conf").exists() {
            s.push_str("include 'postgresql.conf'\n");
        }
        s.push_str(extra);
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s
    }
}

impl Drop for ProcessPg {
    fn drop(&mut self) {
        if !self.cfg.kill_on_drop {
            return;
        }
        let Some(pm) = self.current() else { return };
        if pm.exit_status().is_some() {
            return;
        }
        pm.stop_expected
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let Ok(raw) = i32::try_from(pm.pid) else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(raw);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT).is_err() {
            return;
        }
        // Bounded wait (5 s) for the postmaster to exit, seen as its pid file going away.
        for _ in 0..100 {
            if files::postmaster_pid(&self.cfg.data_dir) != Some(pm.pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(
            pid = pm.pid,
            "postgres still running 5s after SIGQUIT on drop; killing"
        );
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

#[async_trait::async_trait]
impl PgCtl for ProcessPg {
    fn data_dir(&self) -> &Path {
        self.pgdata()
    }

    async fn binary_version(&self) -> Result<PgVersion, PgError> {
        let mut cmd = self.tool("postgres")?;
        cmd.arg("-V");
        let out = run_ok(cmd, Some(Duration::from_secs(30))).await?;
        PgVersion::parse_postgres_v(&String::from_utf8_lossy(&out.stdout))
    }

    async fn data_version(&self) -> Result<Option<PgVersion>, PgError> {
        files::read_data_version(self.pgdata())
    }

    async fn is_initialized(&self) -> Result<bool, PgError> {
        Ok(files::is_initialized(self.pgdata()))
    }

    async fn system_id(&self) -> Result<Option<u64>, PgError> {
        files::read_system_id(self.pgdata())
    }

    async fn shutdown_checkpoint(&self) -> Result<Option<u64>, PgError> {
        files::read_shutdown_checkpoint(self.pgdata())
    }

    async fn recovery_mode(&self) -> Result<RecoveryMode, PgError> {
        Ok(files::recovery_mode(self.pgdata()))
    }

    async fn oldest_wal_file(&self) -> Result<Option<WalFile>, PgError> {
        files::oldest_wal_file(self.pgdata())
    }

    async fn timeline_history(&self, timeline: u32) -> Result<Vec<TimelineHistoryEntry>, PgError> {
        files::read_timeline_history(self.pgdata(), timeline)
    }

    async fn remove_data_dir(&self) -> Result<(), PgError> {
        self.drop_local().await;
        self.remove_pgdata().await
    }

    async fn write_postgresql_conf(&self, content: &str) -> Result<(), PgError> {
        files::write_file_atomic(
            &self.pgdata().join("postgresql.conf"),
            content.as_bytes(),
            0o600,
            self.owner(),
        )
    }

    async fn write_pg_hba_conf(&self, content: &str) -> Result<(), PgError> {
        files::write_file_atomic(
            &self.pgdata().join("pg_hba.conf"),
            content.as_bytes(),
            0o600,
            self.owner(),
        )
    }

    async fn set_recovery_mode(&self, mode: RecoveryMode) -> Result<(), PgError> {
        files::set_recovery_mode(self.pgdata(), mode, self.owner())
    }

    async fn block_alter_system(&self) -> Result<(), PgError> {
        files::block_alter_system(self.pgdata(), self.owner())
    }

    async fn init_db(&self, opts: &InitDbOptions) -> Result<(), PgError> {
        self.drop_local().await;
        let mut cmd = self.tool("initdb")?;
        cmd.arg("-D")
            .arg(self.pgdata())
            .arg("-U")
            .arg(&self.cfg.superuser.user);
        // Kept alive until initdb has finished.
        let pwfile = match &opts.superuser_password {
            Some(pw) => Some(self.env.secret_file("stolon-pwfile-", &format!("{pw}\n"))?),
            None => None,
        };
        if let Some(f) = &pwfile {
            cmd.arg("--pwfile").arg(f.path());
        }
        if let Some(l) = &opts.locale {
            cmd.arg("--locale").arg(l);
        }
        if let Some(e) = &opts.encoding {
            cmd.arg("--encoding").arg(e);
        }
        if opts.data_checksums {
            cmd.arg("--data-checksums");
        }
        tracing::info!(data_dir = %self.pgdata().display(), "running initdb");
        match run_ok(cmd, opts.timeout).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.cleanup_after_failure("initdb").await;
                Err(e)
            }
        }
    }

    async fn restore_data(&self, command: &str, timeout: Option<Duration>) -> Result<(), PgError> {
        self.drop_local().await;
        let pgdata = self.pgdata();
        std::fs::create_dir_all(pgdata).map_err(|e| PgError::io("create", pgdata, e))?;
        std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| PgError::io("set mode of", pgdata, e))?;
        chown_to(self.owner(), pgdata)?;
        let expanded = files::expand_restore_command(command, pgdata);
        let mut cmd = self.env.command(Path::new("/bin/sh"));
        cmd.arg("-c").arg(expanded);
        tracing::info!(data_dir = %pgdata.display(), "running data restore command");
        match run_ok(cmd, timeout).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.cleanup_after_failure("restore").await;
                Err(e)
            }
        }
    }

    async fn base_backup(&self, opts: &BaseBackupOptions) -> Result<(), PgError> {
        if self.is_running().await? {
            return Err(PgError::InvalidInput {
                what: "base backup target",
                reason: format!("postgres is running on {}", self.pgdata().display()),
            });
        }
        self.drop_local().await;
        self.remove_pgdata().await?;
        let pgpass = match opts.source.pgpass_line() {
            Some(line) => Some(self.env.secret_file("stolon-pgpass-", &line)?),
            None => None,
        };
        let mut cmd = self.tool("pg_basebackup")?;
        cmd.arg("-Xs")
            .arg("-D")
            .arg(self.pgdata())
            .arg("-d")
            .arg(opts.source.to_conninfo(Some(SOURCE_CONN_OPTIONS), None));
        if let Some(slot) = &opts.slot {
            cmd.arg("--slot").arg(slot);
        }
        if opts.fast_checkpoint {
            cmd.arg("--checkpoint=fast");
        }
        cmd.arg("-w");
        if let Some(f) = &pgpass {
            cmd.env("PGPASSFILE", f.path());
        }
        tracing::info!(
            source = %format!("{}:{}", opts.source.host, opts.source.port),
            slot = ?opts.slot,
            "running pg_basebackup"
        );
        match run_ok(cmd, opts.timeout).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.cleanup_after_failure("pg_basebackup").await;
                Err(e)
            }
        }
    }

    async fn rewind(&self, opts: &RewindOptions) -> Result<RewindOutcome, PgError> {
        self.drop_local().await;
        if opts.checkpoint_source {
            let c = sql::connect_remote(&opts.source, self.cfg.connect_timeout).await?;
            sql::checkpoint(&c).await?;
        }
        files::remove_file_if_exists(&self.pgdata().join(files::AUTO_CONF))?;
        let pgpass = match opts.source.pgpass_line() {
            Some(line) => Some(self.env.secret_file("stolon-pgpass-", &line)?),
            None => None,
        };
        let mut cmd = self.tool("pg_rewind")?;
        let mut source = std::ffi::OsString::from("--source-server=");
        source.push(opts.source.to_conninfo(Some(SOURCE_CONN_OPTIONS), None));
        cmd.arg("-D").arg(self.pgdata()).arg(source);
        if let Some(f) = &pgpass {
            cmd.env("PGPASSFILE", f.path());
        }
        tracing::info!(
            source = %format!("{}:{}", opts.source.host, opts.source.port),
            "running pg_rewind"
        );
        let out = run_any_status(cmd, opts.timeout).await?;
        if !out.status.success() {
            return Err(failed("pg_rewind", &out));
        }
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        let rewound = !output.contains("no rewind required");
        Ok(RewindOutcome { rewound, output })
    }

    async fn start(&self, opts: &StartOptions) -> Result<(), PgError> {
        if let Some(pid) = self.child_pid() {
            return Err(PgError::AlreadyRunning(pid));
        }
        self.drop_local().await;
        files::block_alter_system(self.pgdata(), self.owner())?;
        let mut cmd = self.tool("postgres")?;
        cmd.arg("-D").arg(self.pgdata());
        let mut sockets = OsString::from("unix_socket_directories=");
        sockets.push(&self.cfg.socket_dir);
        cmd.arg("-c").arg(sockets);
        cmd.arg("-c").arg(format!("port={}", self.cfg.port));
        if let Some(extra) = &opts.temp_merged_config {
            let path = self.pgdata().join(files::TEMP_MERGED_CONF);
            let content = self.temp_merged_content(extra);
            files::write_file_atomic(&path, content.as_bytes(), 0o600, self.owner())?;
            let mut arg = OsString::from("config_file=");
            arg.push(&path);
            cmd.arg("-c").arg(arg);
        }
        tracing::info!(data_dir = %self.pgdata().display(), port = self.cfg.port, "starting postgres");
        let pm = Postmaster::spawn(cmd, &self.cfg.output, self.events.clone())?;
        let pid = pm.pid;
        *self.postmaster.lock().unwrap_or_else(|p| p.into_inner()) = Some(pm.clone());
        let deadline = Instant::now() + opts.timeout;
        loop {
            if let Some(status) = pm.exit_status() {
                return Err(pm.exited_error(status));
            }
            if files::postmaster_pid(self.pgdata()) == Some(pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(PgError::StillStarting(opts.timeout));
            }
            if let Some(status) = pm.wait_exit(POLL).await {
                return Err(pm.exited_error(status));
            }
        }
    }

    async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        // Before pg_ctl: a smart shutdown would wait for our idle connection.
        self.drop_local().await;
        let current = self.current().filter(|p| p.exit_status().is_none());
        if let Some(pm) = &current {
            pm.stop_expected
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let mut cmd = self.pg_ctl("stop")?;
        cmd.arg("-w")
            .arg("-m")
            .arg(mode.as_arg())
            .arg("-t")
            .arg(self.cfg.pg_ctl_timeout.as_secs().max(1).to_string());
        tracing::info!(data_dir = %self.pgdata().display(), mode = mode.as_arg(), "stopping postgres");
        match run_ok(cmd, self.pg_ctl_bound()).await {
            Ok(_) => {
                if let Some(pm) = current {
                    // The pid file is gone; reaping follows within moments.
                    pm.wait_exit(Duration::from_secs(10)).await;
                }
                Ok(())
            }
            Err(e) => {
                if let Some(pm) = current
                    && pm.exit_status().is_none()
                {
                    pm.stop_expected
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                }
                Err(e)
            }
        }
    }

    async fn stop_if_started(&self, mode: StopMode) -> Result<(), PgError> {
        if self.is_running().await? {
            self.stop(mode).await?;
        }
        Ok(())
    }

    async fn is_running(&self) -> Result<bool, PgError> {
        let cmd = self.pg_ctl("status")?;
        let out = run_any_status(cmd, Some(Duration::from_secs(30))).await?;
        match out.status.code() {
            Some(0) => Ok(true),
            // 3: not running; 4: no accessible data directory (treated as stopped, as Stolon).
            Some(3) | Some(4) => Ok(false),
            _ => Err(failed("pg_ctl", &out)),
        }
    }

    async fn reload(&self) -> Result<(), PgError> {
        tracing::info!(data_dir = %self.pgdata().display(), "reloading postgres");
        run_ok(self.pg_ctl("reload")?, self.pg_ctl_bound()).await?;
        Ok(())
    }

    async fn promote(&self) -> Result<(), PgError> {
        let mut cmd = self.pg_ctl("promote")?;
        cmd.arg("-w")
            .arg("-t")
            .arg(self.cfg.pg_ctl_timeout.as_secs().max(1).to_string());
        tracing::info!(data_dir = %self.pgdata().display(), "promoting postgres");
        run_ok(cmd, self.pg_ctl_bound()).await?;
        Ok(())
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + timeout;
        let mut last_error;
        loop {
            if let Some(pm) = self.current()
                && let Some(status) = pm.exit_status()
                && !pm.stop_expected.load(std::sync::atomic::Ordering::SeqCst)
            {
                // Our child died on its own: no point waiting for it.
                return Err(pm.exited_error(status));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let bound = remaining.clamp(Duration::from_millis(100), self.cfg.connect_timeout);
            let attempt = async {
                let c = sql::connect_local(
                    &self.cfg.socket_dir,
                    self.cfg.port,
                    &self.cfg.superuser.user,
                    self.cfg.superuser.password.as_deref(),
                    bound,
                )
                .await?;
                sql::select_one(&c).await.map(|()| c)
            };
            match attempt.await {
                Ok(c) => {
                    // The next local SQL call reuses this connection.
                    *self.local.lock().await = Some(Arc::new(c));
                    return Ok(());
                }
                Err(e) => last_error = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(PgError::NotReady {
                    timeout,
                    last_error,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn exits(&self) -> watch::Receiver<Option<PostgresExit>> {
        self.events.tx.subscribe()
    }

    async fn ping(&self) -> Result<(), PgError> {
        self.with_local(|c| async move { sql::select_one(&c).await })
            .await
    }

    async fn alter_role(&self, role: &RoleDef) -> Result<(), PgError> {
        // A transaction needs a client of its own: a fresh connection (rare calls).
        let mut c = self.connect().await?;
        sql::apply_role(&mut c, role, false).await
    }

    async fn create_role(&self, role: &RoleDef) -> Result<(), PgError> {
        let mut c = self.connect().await?;
        sql::apply_role(&mut c, role, true).await
    }

    async fn file_settings(&self) -> Result<BTreeMap<String, String>, PgError> {
        self.with_local(|c| async move { sql::file_settings(&c).await })
            .await
    }

    async fn in_sync_standbys(&self) -> Result<Vec<String>, PgError> {
        self.with_local(|c| async move { sql::in_sync_standbys(&c).await })
            .await
    }

    async fn pending_restart(&self) -> Result<bool, PgError> {
        self.with_local(|c| async move { sql::pending_restart(&c).await })
            .await
    }

    async fn replication_slots(&self) -> Result<Vec<String>, PgError> {
        self.with_local(|c| async move { sql::replication_slots(&c).await })
            .await
    }

    async fn create_replication_slot(&self, name: &str) -> Result<(), PgError> {
        self.with_local(|c| async move { sql::create_slot(&c, name).await })
            .await
    }

    async fn drop_replication_slot(&self, name: &str) -> Result<(), PgError> {
        self.with_local(|c| async move { sql::drop_slot(&c, name).await })
            .await
    }

    async fn checkpoint(&self) -> Result<(), PgError> {
        self.with_local(|c| async move { sql::checkpoint(&c).await })
            .await
    }

    async fn is_in_recovery(&self) -> Result<bool, PgError> {
        self.with_local(|c| async move { sql::is_in_recovery(&c).await })
            .await
    }

    async fn wal_position(&self) -> Result<WalPosition, PgError> {
        self.with_local(|c| async move { sql::wal_position(&c).await })
            .await
    }

    async fn identify_system(&self) -> Result<SystemIdentity, PgError> {
        match self
            .with_local(|c| async move { sql::primary_identity(&c).await })
            .await
        {
            Ok(Some(id)) => return Ok(id),
            // In recovery: only IDENTIFY_SYSTEM tells the replay timeline.
            Ok(None) => {}
            // Cannot reach the server: a replication connection would not either.
            Err(e @ (PgError::Connect { .. } | PgError::ConnectTimeout { .. })) => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the system identity over SQL; using IDENTIFY_SYSTEM");
            }
        }
        self.identify_system_replication().await
    }
}

/// Whether a failed SQL call may have left its connection unusable: anything but an
/// ERROR-level report from the server (FATAL and PANIC end the session; a client-side error
/// may be an IO or protocol failure).
fn connection_suspect(e: &PgError) -> bool {
    match e {
        PgError::QueryTimeout { .. } => true,
        PgError::Sql { source, .. } => source
            .as_db_error()
            .is_none_or(|db| db.parsed_severity() != Some(Severity::Error)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_redacts() {
        let c = Credentials::new("su", Some("hunter2".into()));
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
