//! The keeper loop: wait for a store change, a postgres exit or the `sleepInterval` tick; read
//! clusterdata; observe the local instance; `stolon_core::keeper::step`; execute the actions in
//! order through [`PgCtl`] (stopping at the first failure), handing every outcome to
//! `stolon_core::keeper::record` and running the follow-ups it returns; refresh and hand the
//! `KeeperInfo` to the publisher. The runtime decides nothing: the keeper's memory
//! ([`KeeperMemory`]) and every decision are in the core; here IO results become observations
//! and outcomes, and actions are executed. Errors are logged and retried on the next wake-up;
//! only cancellation ends the loop (postgres is then stopped in fast mode).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use stolon_core::keeper::{
    self, KeeperAction, KeeperIdentity, KeeperLocalState, KeeperMemory, MonoInstant, Observed,
    Outcome, PgConfig, Probe, ResyncPlan, RolesPlan, WaitReason, Wake,
};
use stolon_core::model::{ClusterData, PostgresBinaryVersion, PostgresState, TimelineHistory};
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
use crate::failsafe::{FailsafeState, LocalPg};
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
    /// An action lacks what its execution needs.
    #[error("malformed action: {0}")]
    Malformed(&'static str),
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
    /// The core's memory, handed back to it on every step and outcome.
    memory: KeeperMemory,
    /// Origin of the monotonic times the core works with.
    epoch: tokio::time::Instant,
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
    /// Failsafe mode's keeper side, when the keeper takes part in it.
    failsafe: Option<Failsafe>,
    /// The wait for the failsafe promise before a promotion was logged (once per wait).
    promise_wait_logged: bool,
}

/// The keeper's part in failsafe mode: its state, how its requests reach the other keepers, and
/// the address it reports.
struct Failsafe {
    state: Arc<FailsafeState>,
    transport: Arc<dyn stolon_failsafe::Transport>,
    address: String,
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
            memory: KeeperMemory {
                db_state,
                ..KeeperMemory::default()
            },
            epoch: tokio::time::Instant::now(),
            version: None,
            sleep_interval,
            pg_state: PostgresState::default(),
            last_revision: None,
            cd_errors: Default::default(),
            last_cd: None,
            publisher: None,
            health,
            failsafe: None,
            promise_wait_logged: false,
        })
    }

    /// Makes this keeper take part in failsafe mode (docs/failsafe.md): it keeps its promise
    /// not to promote, answers through [`Keeper::failsafe_responder`], asks the other keepers
    /// for acknowledgements through `transport` while it runs the master, and reports `address`
    /// (`host:port`, where its responder is reached) in its PostgreSQL state.
    pub fn with_failsafe(
        mut self,
        transport: Arc<dyn stolon_failsafe::Transport>,
        address: String,
    ) -> Self {
        self.failsafe = Some(Failsafe {
            state: Arc::new(FailsafeState::new(&self.keeper_state.uid, self.epoch)),
            transport,
            address,
        });
        self
    }

    /// The keeper's answers to authenticated failsafe requests (`None` unless
    /// [`Keeper::with_failsafe`]): the HTTP routes call it, and so may an in-process transport.
    pub fn failsafe_responder(&self) -> Option<Arc<dyn stolon_failsafe::Responder>> {
        self.failsafe
            .as_ref()
            .map(|f| f.state.clone() as Arc<dyn stolon_failsafe::Responder>)
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
        let acks = self.failsafe.as_ref().map(|f| {
            tokio::spawn(crate::failsafe::run_acks(
                f.state.clone(),
                f.transport.clone(),
                cancel.clone(),
            ))
        });
        let mut changes = self.store.changes();
        let mut exits = self.pg.exits();
        let mut wake = Wake::Tick;
        loop {
            // The core says when the next timer pass is due: sleepInterval after the last timer
            // pass, however many store changes (infos published every second or so) wake the
            // loop in between.
            let next_tick = self.epoch + self.iteration(wake).await;
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = changes.changed() => {
                    if r.is_err() {
                        // The store dropped its sender; fall back to ticking.
                        changes = self.store.changes();
                    }
                    wake = Wake::StoreChange { clusterdata_changed: false };
                }
                r = exits.changed() => {
                    if r.is_ok() {
                        let ev = exits.borrow_and_update().clone();
                        if let Some(ev) = ev.filter(|e| !e.expected) {
                            warn!(pid = ev.pid, status = %ev.status, "postgres exited unexpectedly");
                        }
                    }
                    wake = Wake::Tick;
                }
                _ = tokio::time::sleep_until(next_tick) => wake = Wake::Tick,
            }
        }
        if let Some(acks) = acks
            && let Err(e) = acks.await
        {
            warn!("failsafe acknowledgement task ended abnormally: {e}");
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

    fn now(&self) -> MonoInstant {
        self.epoch.elapsed()
    }

    /// One wake-up; returns when the next timer pass is due. A store change runs a pass only
    /// when the clusterdata changed ([`keeper::pass_wanted`]), so our own info writes do not
    /// spin the loop.
    async fn iteration(&mut self, wake: Wake) -> MonoInstant {
        let read = match stolon_store::repeat::read_cluster_data(
            self.store.as_ref(),
            &mut self.cd_errors,
            "error retrieving cluster data",
        )
        .await
        {
            Ok(r) => r,
            Err(_) => {
                let (now, si) = (self.now(), self.sleep_interval);
                return self.memory.woke(wake, now, si);
            }
        };
        let wake = match wake {
            Wake::StoreChange { .. } => Wake::StoreChange {
                clusterdata_changed: read.revision != self.last_revision
                    || self.last_cd.is_some() != read.data.is_some(),
            },
            w => w,
        };
        if !keeper::pass_wanted(wake) {
            let (now, si) = (self.now(), self.sleep_interval);
            return self.memory.woke(wake, now, si);
        }
        self.last_revision = read.revision.clone();
        self.last_cd = read.data.clone();
        // Before any step: from now on an acknowledgement is answered from this clusterdata
        // (an elected keeper refuses them), and the step reads the promise as it stands then.
        if let Some(f) = &self.failsafe {
            f.state.set_clusterdata(read.data.clone());
        }
        let cd = read.data;
        match &cd {
            Some(cd) if cd.check_usable().is_ok() => {
                self.metrics.clusterdata_last_valid_update.set(unix_now());
            }
            Some(_) => {}
            None => info!("no cluster data available, waiting for it to appear"),
        }
        if let Some(si) = keeper::sleep_interval_of(cd.as_ref()) {
            self.sleep_interval = si;
            self.metrics.sleep_interval.set(si.as_secs_f64());
        }
        if let Some(ks) = keeper::keeper_state_update(cd.as_ref(), &self.keeper_state) {
            self.keeper_state = ks;
            if let Err(e) = state::save_keeper_state(&self.cfg.data_dir, &self.keeper_state) {
                error!("failed to save keeper state: {e}");
            }
        }
        let mut pass_wake = wake;
        for _ in 0..=MAX_REPLANS {
            match self.sync(cd.as_ref(), pass_wake).await {
                Ok(Flow::Replan) => pass_wake = Wake::Replan,
                Ok(Flow::Continue) => {
                    // The whole plan ran: a successful keeper loop (Stolon sets the metric at
                    // the end of every one, converged or not).
                    self.metrics.last_sync_success.set(unix_now());
                    break;
                }
                Ok(Flow::Stop) => break,
                Err(e) => {
                    error!("keeper sync failed: {e}");
                    break;
                }
            }
        }
        if self.failsafe.is_some() {
            // The pass may have changed what runs; the next one is up to a sleep interval away.
            let observed = self.observe_role().await;
            if let Some(f) = &self.failsafe {
                f.state.set_local(LocalPg::of(&observed));
            }
        }
        self.update_pg_state().await;
        self.publish();
        let (now, si) = (self.now(), self.sleep_interval);
        self.memory.woke(Wake::Replan, now, si)
    }

    /// The checks that tell the local role: initialised, standby signal, running.
    async fn observe_role(&self) -> Observed {
        Observed {
            initialized: Probe::from_result(self.pg.is_initialized().await),
            standby_signal: Probe::from_result(
                self.pg
                    .recovery_mode()
                    .await
                    .map(|m| m == RecoveryMode::Standby),
            ),
            running: Probe::from_result(self.pg.is_running().await),
            ..Observed::default()
        }
    }

    async fn observe(&mut self, cd: Option<&ClusterData>) -> Observed {
        let running = Probe::from_result(self.pg.is_running().await.inspect_err(|e| {
            warn!("cannot check whether postgres runs: {e}");
        }));
        let initialized = Probe::from_result(self.pg.is_initialized().await.inspect_err(|e| {
            warn!("cannot check whether the data directory is initialized: {e}");
        }));
        let standby_signal = Probe::from_result(
            self.pg
                .recovery_mode()
                .await
                .map(|m| m == RecoveryMode::Standby)
                .inspect_err(|e| warn!("cannot read the recovery signal files: {e}")),
        );
        // pg_control exists only in initialised data.
        let system_id = match initialized {
            Probe::Known(true) => self.pg.system_id().await.ok().flatten(),
            _ => None,
        };
        let shutdown_checkpoint = match (initialized, running) {
            (Probe::Known(true), Probe::Known(false)) => {
                self.pg.shutdown_checkpoint().await.ok().flatten()
            }
            _ => None,
        };
        let uid = &self.keeper_state.uid;
        let in_sync_standbys = if keeper::wants_in_sync_standbys(cd, uid, &self.memory, running) {
            self.pg.in_sync_standbys().await.ok()
        } else {
            None
        };
        let observed = Observed {
            initialized,
            standby_signal,
            running,
            system_id,
            version: self.version,
            in_sync_standbys,
            shutdown_checkpoint,
        };
        if let Ok(k) = observed.known() {
            Metrics::set_role(&self.metrics.local_role, k.role().as_str());
        }
        if let Some(f) = &self.failsafe {
            f.state.set_local(LocalPg::of(&observed));
        }
        if let Some(role) = keeper::target_role(cd, uid) {
            Metrics::set_role(&self.metrics.target_role, role.as_str());
        }
        observed
    }

    /// Observe, step, execute: `Continue` = the whole plan ran, `Stop` = it ended waiting,
    /// `Replan` = observe and plan again now.
    async fn sync(&mut self, cd: Option<&ClusterData>, wake: Wake) -> Result<Flow, ExecError> {
        let observed = self.observe(cd).await;
        let step = keeper::step(
            cd,
            &self.identity(),
            &observed,
            std::mem::take(&mut self.memory),
            wake,
            self.now(),
            self.sleep_interval,
            self.failsafe.as_ref().and_then(|f| f.state.promise()),
        );
        self.memory = step.memory;
        if !step
            .actions
            .iter()
            .any(|a| matches!(a, KeeperAction::Wait(WaitReason::FailsafePromise { .. })))
        {
            self.promise_wait_logged = false;
        }
        debug!(actions = ?step.actions, "plan");
        let mut queue = VecDeque::from(step.actions);
        while let Some(action) = queue.pop_front() {
            let (flow, outcome) = self.execute(&action).await?;
            let follow_ups = keeper::record(&mut self.memory, &action, outcome);
            for a in follow_ups.into_iter().rev() {
                queue.push_front(a);
            }
            if !matches!(flow, Flow::Continue) {
                return Ok(flow);
            }
        }
        Ok(Flow::Continue)
    }

    async fn write_config(&self, c: &PgConfig) -> Result<(), ExecError> {
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
        Ok(())
    }

    async fn start(&self, opts: &StartOptions) -> Result<(), ExecError> {
        self.pg.start(opts).await.map_err(|e| {
            error!("failed to start postgres: {e}");
            ExecError::Pg {
                what: "start postgres",
                source: e,
            }
        })
    }

    async fn stop(&self) -> Result<(), ExecError> {
        self.pg
            .stop_if_started(StopMode::Fast)
            .await
            .map_err(pg("stop postgres"))
    }

    fn su_role(&self, login: bool, replication: bool) -> RoleDef {
        RoleDef {
            name: self.cfg.su.username.clone(),
            login,
            replication,
            password: self.cfg.su.password.clone(),
        }
    }

    /// Executes one action and reports what it yielded. Actions whose only effect is on the
    /// core's memory or on the follow-ups [`keeper::record`] decides (`FinishInit`,
    /// `MarkConverged`, `SetWaitSyncStandbys`, `CheckRestart`, `Resync`) do no IO here.
    async fn execute(&mut self, action: &KeeperAction) -> Result<(Flow, Outcome), ExecError> {
        use KeeperAction as A;
        let done = Ok((Flow::Continue, Outcome::Done));
        if let Some(f) = &self.failsafe
            && changes_the_local_role(action)
        {
            // Until observed again, the local PostgreSQL may be a primary, or no longer run as
            // one.
            f.state.set_local(LocalPg::Unknown);
        }
        match action {
            A::Wait(r @ WaitReason::FailsafePromise { .. }) => {
                if !std::mem::replace(&mut self.promise_wait_logged, true) {
                    info!("{r}");
                }
                return Ok((Flow::Stop, Outcome::Done));
            }
            A::Wait(r) => {
                info!("{r}");
                return Ok((Flow::Stop, Outcome::Done));
            }
            A::Fail(e) => {
                error!("{e}");
                return Err(e.clone().into());
            }
            A::Note(n) if n.is_warning() => warn!("{n}"),
            A::Note(n) => info!("{n}"),
            A::Stop => self.stop().await?,
            A::RemoveData => self
                .pg
                .remove_data_dir()
                .await
                .map_err(pg("remove data dir"))?,
            A::SaveDbState(s) => state::save_db_state(&self.cfg.data_dir, s)?,
            A::FinishInit
            | A::MarkConverged { .. }
            | A::SetWaitSyncStandbys(_)
            | A::CheckRestart { .. }
            | A::Resync(_) => {}
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
                    .restore_data(command, None)
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
                self.start(&StartOptions {
                    temp_merged_config: Some(extra),
                    ..StartOptions::default()
                })
                .await?;
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
                return Ok((
                    Flow::Continue,
                    Outcome::InitParameters(pgconf::filter_managed(&fs)),
                ));
            }
            A::CreateRoles(plan) => self.create_roles(*plan).await?,
            A::WriteConfig(c) => self.write_config(c).await?,
            A::Start => self.start(&StartOptions::default()).await?,
            A::Promote => {
                info!("promoting to master");
                self.pg.promote().await.map_err(pg("promote"))?;
            }
            A::Reload => {
                self.metrics.needs_reload.set(1);
                self.pg.reload().await.map_err(pg("reload postgres"))?;
                self.metrics.needs_reload.set(0);
            }
            A::Restart => {
                info!("restarting postgres");
                self.stop().await?;
                self.start(&StartOptions::default()).await?;
            }
            A::RefreshSlots { wanted } => self.refresh_slots(wanted).await?,
            A::QueryPendingRestart { .. } => {
                let pending = self
                    .pg
                    .pending_restart()
                    .await
                    .map_err(pg("check pending restart"))?;
                return Ok((Flow::Continue, Outcome::PendingRestart(pending)));
            }
            A::ReportNeedsRestart(b) => {
                self.metrics.needs_restart.set(i64::from(*b));
            }
            A::Rewind(plan) => {
                let Some(from) = &plan.rewind_from else {
                    return Err(ExecError::Malformed("pg_rewind without a source"));
                };
                info!(host = %from.host, port = %from.port, "syncing using pg_rewind");
                let source = self.conn(&from.host, &from.port, true, &plan.application_name);
                let r = self
                    .pg
                    .rewind(&RewindOptions {
                        source,
                        checkpoint_source: true,
                        timeout: None,
                    })
                    .await;
                let outcome = match r {
                    Ok(out) => {
                        info!(rewound = out.rewound, "pg_rewind succeeded");
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                };
                return Ok((Flow::Continue, Outcome::Rewind(outcome)));
            }
            A::BaseBackup(plan) => self.base_backup(plan).await?,
            A::CheckRewound(plan) => {
                let ready = self.pg.wait_ready(plan.wait_ready.unwrap_or(FOREVER)).await;
                let outcome = match ready {
                    Ok(()) => Ok(Box::new(self.query_state().await)),
                    Err(e) => Err(e.to_string()),
                };
                return Ok((Flow::Continue, Outcome::Rewound(outcome)));
            }
            A::Replan => return Ok((Flow::Replan, Outcome::Done)),
        }
        done
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

    async fn base_backup(&self, plan: &ResyncPlan) -> Result<(), ExecError> {
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

    /// Makes the `stolon_*` slots exactly `wanted` (other slots untouched).
    async fn refresh_slots(&self, wanted: &[String]) -> Result<(), ExecError> {
        let current = self
            .pg
            .replication_slots()
            .await
            .map_err(pg("list replication slots"))?;
        let changes = keeper::slot_changes(&current, wanted);
        for s in &changes.drop {
            info!(slot = %s, "dropping replication slot");
            if let Err(e) = self.pg.drop_replication_slot(s).await {
                warn!(slot = %s, "failed to drop replication slot: {e}");
            }
        }
        for w in &changes.create {
            info!(slot = %w, "creating replication slot");
            self.pg
                .create_replication_slot(w)
                .await
                .map_err(pg("create replication slot"))?;
        }
        Ok(())
    }

    /// Queries the local instance (Stolon's `GetPGState`).
    async fn query_state(&self) -> PostgresState {
        let mut st = PostgresState {
            uid: self.memory.db_state.uid.clone(),
            generation: self.memory.db_state.generation,
            listen_address: self.cfg.pg_advertise_address.clone(),
            port: self.cfg.pg_advertise_port.clone(),
            failsafe_address: self
                .failsafe
                .as_ref()
                .map(|f| f.address.clone())
                .unwrap_or_default(),
            ..Default::default()
        };
        // Not initialised, or unknown: reported unhealthy, with no position.
        match self.pg.is_initialized().await {
            Ok(true) => {}
            Ok(false) => return st,
            Err(e) => {
                debug!("cannot check whether the data directory is initialized: {e}");
                return st;
            }
        }
        // A planned switchover stopping our primary: report its shutdown checkpoint.
        if keeper::switchover_stops(self.last_cd.as_ref(), &st.uid) {
            let running = self.pg.is_running().await.ok();
            let checkpoint = self.pg.shutdown_checkpoint().await.ok().flatten();
            if let Some((uid, pos)) =
                keeper::switchover_stop_report(self.last_cd.as_ref(), &st.uid, running, checkpoint)
            {
                st.stopped_for_switchover = uid;
                st.shutdown_checkpoint = pos;
                return st;
            }
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

    /// Hands the current info to the publishing task (which decides when to write it and sets
    /// its `infoUID` per write).
    fn publish(&self) {
        let report = keeper::KeeperReport {
            keeper_state: &self.keeper_state,
            boot_uuid: &self.boot_uuid,
            version: self.version,
            can_be_master: self.cfg.can_be_master,
            can_be_synchronous_replica: self.cfg.can_be_synchronous_replica,
            priority: self.cfg.priority,
        };
        if let (Some(info), Some(p)) = (
            keeper::keeper_info(&report, &self.pg_state),
            &self.publisher,
        ) {
            p.update(info, self.sleep_interval);
        }
    }
}

enum Flow {
    Continue,
    Stop,
    Replan,
}

/// Whether an action may change what the local PostgreSQL is, as failsafe mode sees it: leave a
/// primary behind (a standby promoted, data without a standby signal written or started, new
/// data) or stop a primary.
fn changes_the_local_role(action: &KeeperAction) -> bool {
    use KeeperAction as A;
    match action {
        A::Promote
        | A::InitDb(_)
        | A::RestoreData { .. }
        | A::Rewind(_)
        | A::BaseBackup(_)
        | A::Stop
        | A::Restart
        | A::RemoveData => true,
        A::WriteConfig(c) => c.recovery.mode != CoreRecoveryMode::Standby,
        A::StartTmpMerged(c) => c.recovery.mode != CoreRecoveryMode::Standby,
        _ => false,
    }
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
