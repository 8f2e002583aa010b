//! The keeper loop: wait for a store change, a postgres exit or the `sleepInterval` tick; read
//! clusterdata; observe the local instance; `stolon_core::keeper::plan`; execute the actions in
//! order through [`PgCtl`] (stopping at the first failure); refresh and publish the `KeeperInfo`.
//! Errors are logged and retried on the next wake-up; only cancellation ends the loop (postgres
//! is then stopped in fast mode).

use std::sync::Arc;
use std::time::Duration;

use stolon_core::keeper::{
    self, KeeperAction, KeeperIdentity, KeeperLocalState, LocalDbState, Observed, PgConfig,
    ResyncPlan, RolesPlan,
};
use stolon_core::model::{
    ClusterData, DbRole, KeeperInfo, PostgresBinaryVersion, PostgresState, TimelineHistory,
};
use stolon_core::pgconf::{self, RecoveryMode as CoreRecoveryMode};
use stolon_pg::{
    BaseBackupOptions, ConnParams, InitDbOptions, PgCtl, RecoveryMode, RewindOptions, RoleDef,
    StartOptions, StopMode,
};
use stolon_store::{Revision, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::KeeperConfig;
use crate::health::{self, HealthSnapshot};
use crate::metrics::{Metrics, unix_now};
use crate::publisher::Publisher;
use crate::state;

/// Re-plans in a row after an init/resync finished.
const MAX_REPLANS: usize = 3;
/// "No bound" for PostgreSQL waits: a day.
const FOREVER: Duration = Duration::from_secs(24 * 3600);

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A PostgreSQL operation failed.
    #[error("{what}: {source}")]
    Pg {
        /// Verb + object.
        what: &'static str,
        /// Cause.
        #[source]
        source: stolon_pg::PgError,
    },
    /// Writing a local state file failed.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The plan said it cannot proceed.
    #[error(transparent)]
    Plan(#[from] keeper::PlanError),
    /// Waiting for something timed out.
    #[error("{0}")]
    Timeout(String),
}

fn pg(what: &'static str) -> impl FnOnce(stolon_pg::PgError) -> ExecError {
    move |source| ExecError::Pg { what, source }
}

/// The running keeper.
pub struct Keeper {
    cfg: KeeperConfig,
    store: Arc<dyn Store>,
    pg: Arc<dyn PgCtl>,
    metrics: Metrics,
    boot_uuid: String,
    keeper_state: KeeperLocalState,
    db_state: LocalDbState,
    /// Config the running instance was started/reloaded with.
    applied: Option<PgConfig>,
    /// Config last written to disk (becomes `applied` on start/reload/restart).
    written: Option<PgConfig>,
    wait_sync: bool,
    version: Option<PostgresBinaryVersion>,
    sleep_interval: Duration,
    pg_state: PostgresState,
    last_revision: Option<Revision>,
    /// Failed clusterdata reads (logged once per change, retried with a bounded backoff).
    cd_errors: stolon_store::repeat::Repeated,
    last_cd: Option<ClusterData>,
    /// Publishes our KeeperInfo (started by `run`).
    publisher: Option<Publisher>,
    /// The last pass's observation, for the HTTP health checks.
    health: watch::Sender<HealthSnapshot>,
}

impl Keeper {
    /// A keeper for `cfg` with its UID resolved (`keeper_state.uid`) and its process boot UUID.
    pub fn new(
        cfg: KeeperConfig,
        store: Arc<dyn Store>,
        pg: Arc<dyn PgCtl>,
        metrics: Metrics,
        keeper_state: KeeperLocalState,
        boot_uuid: String,
    ) -> Result<Self, state::StateError> {
        let db_state = state::load_db_state(&cfg.data_dir)?;
        let sleep_interval = stolon_core::model::defaults::SLEEP_INTERVAL.to_std();
        let (health, _) = health::channel(&keeper_state.uid, sleep_interval);
        Ok(Keeper {
            cfg,
            store,
            pg,
            metrics,
            boot_uuid,
            keeper_state,
            db_state,
            applied: None,
            written: None,
            wait_sync: false,
            version: None,
            sleep_interval,
            pg_state: PostgresState::default(),
            last_revision: None,
            cd_errors: Default::default(),
            last_cd: None,
            publisher: None,
            health,
        })
    }

    /// The snapshots the HTTP health checks answer from, refreshed after every pass.
    pub fn health(&self) -> watch::Receiver<HealthSnapshot> {
        self.health.subscribe()
    }

    fn identity(&self) -> KeeperIdentity {
        KeeperIdentity {
            uid: self.keeper_state.uid.clone(),
            boot_uuid: self.boot_uuid.clone(),
            pg_listen_address: self.cfg.pg_listen_address.clone(),
            pg_port: self.cfg.pg_port,
            su_username: self.cfg.su.username.clone(),
            su_auth: self.cfg.su.auth,
            su_has_password: self.cfg.su.password.is_some(),
            repl_username: self.cfg.repl.username.clone(),
            repl_auth: self.cfg.repl.auth,
            repl_passfile: self
                .cfg
                .repl
                .password
                .as_ref()
                .map(|_| self.repl_passfile().display().to_string()),
        }
    }

    fn repl_passfile(&self) -> std::path::PathBuf {
        self.cfg.data_dir.join("replpass")
    }

    /// Runs until `cancel`: stops any running instance first (as Stolon does), then loops.
    pub async fn run(mut self, cancel: CancellationToken) {
        if let Some(pw) = &self.cfg.repl.password {
            let line = format!(
                "*:*:*:{}:{}\n",
                pgpass_escape(&self.cfg.repl.username),
                pgpass_escape(pw)
            );
            if let Err(e) = state::write_atomic(&self.repl_passfile(), line.as_bytes()) {
                error!("cannot write replication password file: {e}");
            }
        }
        match self.pg.binary_version().await {
            Ok(v) => {
                self.version = Some(PostgresBinaryVersion {
                    maj: i64::from(v.major),
                    min: i64::from(v.minor),
                })
            }
            Err(e) => warn!("failed to get postgres binary version: {e}"),
        }
        if let Err(e) = self.pg.stop_if_started(StopMode::Fast).await {
            error!("failed to stop postgres at startup: {e}");
        }
        self.publisher = Some(Publisher::spawn(self.store.clone(), self.sleep_interval));
        let mut changes = self.store.changes();
        let mut exits = self.pg.exits();
        let mut tick = true;
        let mut next_tick = tokio::time::Instant::now();
        loop {
            self.iteration(tick).await;
            // The tick comes sleepInterval after the last ticked iteration, however many store
            // changes (infos published every second or so) wake the loop in between: restarting
            // the timer on each wake-up would starve the tick, and with it every retry.
            if tick {
                next_tick = tokio::time::Instant::now() + self.sleep_interval;
            }
            let sleep = tokio::time::sleep_until(next_tick);
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = changes.changed() => {
                    if r.is_err() {
                        // The store dropped its sender; fall back to ticking.
                        changes = self.store.changes();
                    }
                    tick = false;
                }
                r = exits.changed() => {
                    if r.is_ok() {
                        let ev = exits.borrow_and_update().clone();
                        if let Some(ev) = ev.filter(|e| !e.expected) {
                            warn!(pid = ev.pid, status = %ev.status, "postgres exited unexpectedly");
                        }
                    }
                    tick = true;
                }
                _ = sleep => tick = true,
            }
        }
        self.metrics.shutdown_seconds.set(unix_now());
        info!("stopping stolon keeper");
        if let Err(e) = self.pg.stop_if_started(StopMode::Fast).await {
            error!("failed to stop postgres: {e}");
        } else {
            info!("postgres stopped");
        }
        // Gone on purpose: withdraw our info now rather than let it linger for its TTL (a
        // `stolonctl removekeeper` right after would otherwise see us re-added from it).
        if let Some(p) = self.publisher.as_mut() {
            p.stop().await;
        }
        if let Err(e) = self.store.delete_keeper_info(&self.keeper_state.uid).await {
            warn!("cannot withdraw keeper info: {e}");
        }
    }

    /// One wake-up. `tick`: a timer/postgres wake-up (always act); otherwise a store change
    /// (act only when clusterdata changed, so our own info writes do not spin the loop).
    async fn iteration(&mut self, tick: bool) {
        let read = match stolon_store::repeat::read_cluster_data(
            self.store.as_ref(),
            &mut self.cd_errors,
            "error retrieving cluster data",
        )
        .await
        {
            Ok(r) => r,
            Err(_) => return,
        };
        if !tick
            && read.revision == self.last_revision
            && self.last_cd.is_some() == read.data.is_some()
        {
            return;
        }
        self.last_revision = read.revision.clone();
        self.last_cd = read.data.clone();
        let cd = read.data;
        if let Some(cd) = &cd {
            if cd.check_usable().is_ok() {
                self.metrics.clusterdata_last_valid_update.set(unix_now());
                if let Some(spec) = cd.cluster.as_ref().and_then(|c| c.spec.as_ref()) {
                    let si = spec.effective().sleep_interval.to_std();
                    if !si.is_zero() {
                        self.sleep_interval = si;
                        self.metrics.sleep_interval.set(si.as_secs_f64());
                    }
                }
                let cluster_uid = cd
                    .cluster
                    .as_ref()
                    .map(|c| c.uid.clone())
                    .unwrap_or_default();
                if !cluster_uid.is_empty() && cluster_uid != self.keeper_state.cluster_uid {
                    self.keeper_state.cluster_uid = cluster_uid;
                    if let Err(e) = state::save_keeper_state(&self.cfg.data_dir, &self.keeper_state)
                    {
                        error!("failed to save keeper state: {e}");
                    }
                }
            }
        } else {
            info!("no cluster data available, waiting for it to appear");
        }
        for _ in 0..=MAX_REPLANS {
            match self.sync(cd.as_ref()).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    error!("keeper sync failed: {e}");
                    break;
                }
            }
        }
        self.update_pg_state().await;
        self.publish();
    }

    async fn observe(&mut self, cd: Option<&ClusterData>) -> Observed {
        let running = match self.pg.is_running().await {
            Ok(r) => r,
            Err(e) => {
                warn!("cannot check whether postgres runs: {e}");
                false
            }
        };
        if !running {
            self.applied = None;
        }
        let initialized = self.pg.is_initialized().await.unwrap_or(false);
        let standby_signal = matches!(self.pg.recovery_mode().await, Ok(RecoveryMode::Standby));
        let system_id = if initialized {
            self.pg.system_id().await.ok().flatten()
        } else {
            None
        };
        let mine = cd.and_then(|cd| cd.db_of_keeper(&self.keeper_state.uid));
        let want_sync = mine
            .and_then(|d| d.spec.as_ref())
            .is_some_and(|s| s.synchronous_replication && s.role == Some(DbRole::Master));
        let in_sync_standbys = if running && want_sync && self.wait_sync {
            self.pg.in_sync_standbys().await.ok()
        } else {
            None
        };
        let local_role = if !initialized {
            "undefined"
        } else if standby_signal {
            "standby"
        } else {
            "master"
        };
        Metrics::set_role(&self.metrics.local_role, local_role);
        if let Some(role) = mine.and_then(|d| d.spec.as_ref()).and_then(|s| s.role) {
            Metrics::set_role(
                &self.metrics.target_role,
                if role == DbRole::Master {
                    "master"
                } else {
                    "standby"
                },
            );
        }
        Observed {
            db_state: self.db_state.clone(),
            initialized,
            standby_signal,
            running,
            system_id,
            version: self.version,
            applied: self.applied.clone(),
            wait_sync_standbys_synced: self.wait_sync,
            in_sync_standbys,
        }
    }

    /// Observe, plan, execute. Ok(true) = re-plan now.
    async fn sync(&mut self, cd: Option<&ClusterData>) -> Result<bool, ExecError> {
        let observed = self.observe(cd).await;
        let actions = keeper::plan(cd, &self.identity(), &observed);
        debug!(?actions, "plan");
        let mut after_promote = false;
        for action in actions {
            let promote = matches!(action, KeeperAction::Promote);
            match self.execute(action, after_promote).await? {
                Flow::Continue => {}
                Flow::Stop => return Ok(false),
                Flow::Replan => return Ok(true),
            }
            after_promote = promote;
        }
        Ok(false)
    }

    fn save_db_state(&mut self) -> Result<(), ExecError> {
        state::save_db_state(&self.cfg.data_dir, &self.db_state)?;
        Ok(())
    }

    async fn write_config(&mut self, c: &PgConfig) -> Result<(), ExecError> {
        let conf = pgconf::render_postgresql_conf(&c.parameters, &c.recovery);
        self.pg
            .write_postgresql_conf(&conf)
            .await
            .map_err(pg("write postgresql.conf"))?;
        self.pg
            .write_pg_hba_conf(&pgconf::render_hba(&c.hba))
            .await
            .map_err(pg("write pg_hba.conf"))?;
        self.pg
            .set_recovery_mode(map_mode(c.recovery.mode))
            .await
            .map_err(pg("write recovery signal file"))?;
        self.pg
            .block_alter_system()
            .await
            .map_err(pg("block ALTER SYSTEM"))?;
        self.written = Some(c.clone());
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ExecError> {
        if let Err(e) = self.pg.start(&StartOptions::default()).await {
            error!("failed to start postgres: {e}");
            return Err(ExecError::Pg {
                what: "start postgres",
                source: e,
            });
        }
        self.applied = self.written.clone();
        Ok(())
    }

    async fn restart(&mut self) -> Result<(), ExecError> {
        info!("restarting postgres");
        self.pg
            .stop_if_started(StopMode::Fast)
            .await
            .map_err(pg("stop postgres"))?;
        self.applied = None;
        self.start().await
    }

    fn su_role(&self, login: bool, replication: bool) -> RoleDef {
        RoleDef {
            name: self.cfg.su.username.clone(),
            login,
            replication,
            password: self.cfg.su.password.clone(),
        }
    }

    async fn execute(
        &mut self,
        action: KeeperAction,
        after_promote: bool,
    ) -> Result<Flow, ExecError> {
        use KeeperAction as A;
        match action {
            A::Wait(r) => {
                info!("{r}");
                return Ok(Flow::Stop);
            }
            A::Fail(e) => {
                error!("{e}");
                return Err(e.into());
            }
            A::Note(n) => info!("{n}"),
            A::Stop => {
                self.pg
                    .stop_if_started(StopMode::Fast)
                    .await
                    .map_err(pg("stop postgres"))?;
                self.applied = None;
            }
            A::RemoveData => self
                .pg
                .remove_data_dir()
                .await
                .map_err(pg("remove data dir"))?,
            A::SaveDbState(s) => {
                self.db_state = s;
                self.save_db_state()?;
            }
            A::FinishInit => {
                self.db_state.initializing = false;
                self.save_db_state()?;
            }
            A::MarkConverged { generation } => {
                self.db_state.generation = generation;
                self.db_state.initializing = false;
                self.save_db_state()?;
                self.metrics.last_sync_success.set(unix_now());
            }
            A::SetWaitSyncStandbys(b) => self.wait_sync = b,
            A::InitDb(nc) => {
                info!("initializing the database cluster");
                let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
                self.pg
                    .init_db(&InitDbOptions {
                        superuser_password: self.cfg.su.password.clone(),
                        locale: opt(&nc.locale),
                        encoding: opt(&nc.encoding),
                        data_checksums: nc.data_checksums,
                        timeout: None,
                    })
                    .await
                    .map_err(pg("initdb"))?;
            }
            A::RestoreData { command } => {
                info!("executing the data restore command");
                self.pg
                    .restore_data(&command, None)
                    .await
                    .map_err(pg("run data restore command"))?;
            }
            A::StartTmpMerged(c) => {
                self.pg
                    .write_pg_hba_conf(&pgconf::render_hba(&c.hba))
                    .await
                    .map_err(pg("write pg_hba.conf"))?;
                self.pg
                    .set_recovery_mode(map_mode(c.recovery.mode))
                    .await
                    .map_err(pg("write recovery signal file"))?;
                let extra = pgconf::render_postgresql_conf(&c.parameters, &c.recovery);
                let opts = StartOptions {
                    temp_merged_config: Some(extra),
                    ..StartOptions::default()
                };
                if let Err(e) = self.pg.start(&opts).await {
                    error!("failed to start postgres: {e}");
                    return Err(ExecError::Pg {
                        what: "start postgres",
                        source: e,
                    });
                }
            }
            A::WaitRecoveryDone { timeout } => {
                let limit = timeout.unwrap_or(FOREVER);
                let start = tokio::time::Instant::now();
                loop {
                    let m = self
                        .pg
                        .recovery_mode()
                        .await
                        .map_err(pg("check recovery signal"))?;
                    if m != RecoveryMode::Recovery {
                        break;
                    }
                    if start.elapsed() >= limit {
                        return Err(ExecError::Timeout("recovery not finished in time".into()));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            A::WaitReady { timeout } => {
                self.pg
                    .wait_ready(timeout.unwrap_or(FOREVER))
                    .await
                    .map_err(pg("wait for postgres to be ready"))?;
            }
            A::SaveInitParameters => {
                let fs = self
                    .pg
                    .file_settings()
                    .await
                    .map_err(pg("read pg_file_settings"))?;
                self.db_state.init_pg_parameters = Some(pgconf::filter_managed(&fs));
                self.save_db_state()?;
            }
            A::CreateRoles(plan) => self.create_roles(plan).await?,
            A::Resync(plan) => self.resync(*plan).await?,
            A::WriteConfig(c) => {
                self.write_config(&c).await?;
                if after_promote {
                    self.applied = Some(*c);
                }
            }
            A::Start => self.start().await?,
            A::Promote => {
                info!("promoting to master");
                self.pg.promote().await.map_err(pg("promote"))?;
            }
            A::Reload => {
                self.metrics.needs_reload.set(1);
                self.pg.reload().await.map_err(pg("reload postgres"))?;
                self.metrics.needs_reload.set(0);
                self.applied = self.written.clone();
            }
            A::Restart => self.restart().await?,
            A::RefreshSlots { wanted } => self.refresh_slots(&wanted).await?,
            A::CheckRestart { automatic } => {
                if self.applied.is_some() {
                    let pending = self
                        .pg
                        .pending_restart()
                        .await
                        .map_err(pg("check pending restart"))?;
                    self.metrics.needs_restart.set(i64::from(pending));
                    if pending {
                        if automatic {
                            info!("postgres parameters requiring a restart changed, restarting");
                            self.restart().await?;
                            self.metrics.needs_restart.set(0);
                        } else {
                            info!(
                                "postgres parameters requiring a restart changed, automaticPgRestart is disabled: not restarting"
                            );
                        }
                    }
                }
            }
            A::Replan => return Ok(Flow::Replan),
        }
        Ok(Flow::Continue)
    }

    async fn create_roles(&mut self, plan: RolesPlan) -> Result<(), ExecError> {
        match plan {
            RolesPlan::SuIsRepl => {
                self.pg
                    .alter_role(&self.su_role(true, true))
                    .await
                    .map_err(pg("alter superuser role"))?;
                info!("replication role added to superuser");
            }
            RolesPlan::Separate { set_su_password } => {
                if set_su_password {
                    self.pg
                        .alter_role(&self.su_role(true, true))
                        .await
                        .map_err(pg("set superuser password"))?;
                    info!("superuser password set");
                }
                let repl = RoleDef {
                    name: self.cfg.repl.username.clone(),
                    login: true,
                    replication: true,
                    password: self.cfg.repl.password.clone(),
                };
                self.pg
                    .create_role(&repl)
                    .await
                    .map_err(pg("create replication role"))?;
                info!(role = %self.cfg.repl.username, "replication role created");
            }
        }
        Ok(())
    }

    fn conn(&self, host: &str, port: &str, su: bool, app: &str) -> ConnParams {
        let role = if su { &self.cfg.su } else { &self.cfg.repl };
        let mut c = ConnParams::new(host, port.parse().unwrap_or(5432), role.username.clone());
        c.password = role.password.clone();
        c.application_name = Some(app.to_string());
        c.connect_timeout = Some(Duration::from_secs(10));
        c
    }

    async fn base_backup(&mut self, plan: &ResyncPlan) -> Result<(), ExecError> {
        info!(
            host = %plan.clone_from.host,
            port = %plan.clone_from.port,
            slot = %plan.slot,
            "syncing from followed db using pg_basebackup"
        );
        let source = self.conn(
            &plan.clone_from.host,
            &plan.clone_from.port,
            false,
            &plan.application_name,
        );
        self.pg
            .base_backup(&BaseBackupOptions {
                source,
                slot: Some(plan.slot.clone()),
                fast_checkpoint: true,
                timeout: None,
            })
            .await
            .map_err(pg("pg_basebackup"))?;
        info!("sync succeeded");
        Ok(())
    }

    async fn resync(&mut self, plan: ResyncPlan) -> Result<(), ExecError> {
        let mut rewound = false;
        if let Some(from) = &plan.rewind_from {
            info!(host = %from.host, port = %from.port, "syncing using pg_rewind");
            let source = self.conn(&from.host, &from.port, true, &plan.application_name);
            match self
                .pg
                .rewind(&RewindOptions {
                    source,
                    checkpoint_source: true,
                    timeout: None,
                })
                .await
            {
                Ok(out) => {
                    info!(rewound = out.rewound, "pg_rewind succeeded");
                    rewound = true;
                }
                Err(e) => warn!("error syncing with pg_rewind, falling back to pg_basebackup: {e}"),
            }
        }
        if !rewound {
            self.base_backup(&plan).await?;
        }
        self.write_config(&plan.config).await?;
        self.start().await?;
        if rewound {
            let ready = self.pg.wait_ready(plan.wait_ready.unwrap_or(FOREVER)).await;
            let forked = match ready {
                Err(e) => {
                    warn!("rewound instance not ready, resyncing with pg_basebackup: {e}");
                    true
                }
                Ok(()) => {
                    let local = self.query_state().await;
                    let f = keeper::is_different_timeline_branch(&plan.followed_status, &local);
                    if f {
                        warn!(
                            "rewound instance is on a different timeline branch than the followed db, resyncing with pg_basebackup"
                        );
                    }
                    f
                }
            };
            if forked {
                self.pg
                    .stop_if_started(StopMode::Fast)
                    .await
                    .map_err(pg("stop postgres"))?;
                self.applied = None;
                self.base_backup(&plan).await?;
                self.write_config(&plan.config).await?;
                self.start().await?;
            }
        }
        Ok(())
    }

    async fn refresh_slots(&mut self, wanted: &[String]) -> Result<(), ExecError> {
        if self.applied.is_none() && !self.pg.is_running().await.unwrap_or(false) {
            return Ok(());
        }
        let current = self
            .pg
            .replication_slots()
            .await
            .map_err(pg("list replication slots"))?;
        for s in &current {
            if pgconf::strip_stolon_name(s).is_some() && !wanted.contains(s) {
                info!(slot = %s, "dropping replication slot");
                if let Err(e) = self.pg.drop_replication_slot(s).await {
                    warn!(slot = %s, "failed to drop replication slot: {e}");
                }
            }
        }
        for w in wanted {
            if !current.contains(w) {
                info!(slot = %w, "creating replication slot");
                self.pg
                    .create_replication_slot(w)
                    .await
                    .map_err(pg("create replication slot"))?;
            }
        }
        Ok(())
    }

    /// Queries the local instance (Stolon's `GetPGState`).
    async fn query_state(&self) -> PostgresState {
        let mut st = PostgresState {
            uid: self.db_state.uid.clone(),
            generation: self.db_state.generation,
            listen_address: self.cfg.pg_advertise_address.clone(),
            port: self.cfg.pg_advertise_port.clone(),
            ..Default::default()
        };
        if !self.pg.is_initialized().await.unwrap_or(false) {
            return st;
        }
        let params = match self.pg.file_settings().await {
            Ok(p) => p,
            Err(e) => {
                debug!("cannot read postgres parameters: {e}");
                return st;
            }
        };
        st.pg_parameters = pgconf::filter_managed(&params);
        match self.pg.in_sync_standbys().await {
            Ok(s) => st.synchronous_standbys = Some(s),
            Err(e) => {
                debug!("cannot read in-sync standbys: {e}");
                return st;
            }
        }
        let ident = match self.pg.identify_system().await {
            Ok(i) => i,
            Err(e) => {
                debug!("cannot identify system: {e}");
                return st;
            }
        };
        st.system_id = ident.system_id.to_string();
        st.timeline_id = u64::from(ident.timeline);
        st.xlog_pos = ident.xlog_pos.0;
        if ident.timeline > 1 {
            match self.pg.timeline_history(ident.timeline).await {
                Ok(h) => {
                    let n = h.len().saturating_sub(2);
                    st.timelines_history = h[n..]
                        .iter()
                        .map(|e| TimelineHistory {
                            timeline_id: u64::from(e.timeline),
                            switch_point: e.switch_point.0,
                            reason: e.reason.clone(),
                        })
                        .collect();
                }
                Err(e) => {
                    debug!("cannot read timeline history: {e}");
                    return st;
                }
            }
        }
        match self.pg.oldest_wal_file().await {
            Ok(Some(f)) => st.older_wal_file = f.name,
            Ok(None) => {}
            Err(e) => warn!("cannot find the oldest wal file: {e}"),
        }
        st.healthy = true;
        st
    }

    async fn update_pg_state(&mut self) {
        self.pg_state = self.query_state().await;
        // Only the HTTP health checks read the snapshot; without a listener there is none.
        if self.health.receiver_count() == 0 {
            return;
        }
        let in_recovery = if self.pg_state.healthy {
            self.pg.is_in_recovery().await.ok()
        } else {
            None
        };
        self.health.send_replace(HealthSnapshot {
            keeper_uid: self.keeper_state.uid.clone(),
            state: Some(self.pg_state.clone()),
            in_recovery,
            refreshed: tokio::time::Instant::now(),
            sleep_interval: self.sleep_interval,
            cd: self.last_cd.clone(),
        });
    }

    /// Hands the current info to the publishing task (which sets its `infoUID` per publish).
    fn publish(&self) {
        if self.keeper_state.cluster_uid.is_empty() {
            return;
        }
        let info = KeeperInfo {
            info_uid: String::new(),
            uid: self.keeper_state.uid.clone(),
            cluster_uid: self.keeper_state.cluster_uid.clone(),
            boot_uuid: self.boot_uuid.clone(),
            postgres_binary_version: self.version.unwrap_or_default(),
            priority: None,
            postgres_state: Some(self.pg_state.clone()),
            can_be_master: Some(self.cfg.can_be_master),
            can_be_synchronous_replica: Some(self.cfg.can_be_synchronous_replica),
        };
        if let Some(p) = &self.publisher {
            p.update(info, self.sleep_interval);
        }
    }
}

enum Flow {
    Continue,
    Stop,
    Replan,
}

fn map_mode(m: CoreRecoveryMode) -> RecoveryMode {
    match m {
        CoreRecoveryMode::None => RecoveryMode::None,
        CoreRecoveryMode::Standby => RecoveryMode::Standby,
        CoreRecoveryMode::Recovery => RecoveryMode::Recovery,
    }
}

fn pgpass_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}
