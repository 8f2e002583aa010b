//! `plan`: clusterdata + local observation + the keeper's memory -> ordered actions
//! (docs/architecture.md §7.1 steps 1-15), split along its phases: the assignment checks, the
//! init of a newly assigned DB (per init mode, sharing their common steps), then the role phase
//! (master, fenced, standby) and the converge phase (parameters, pg_hba, restart check,
//! generation). Pure.

use std::time::Duration;

use crate::duration::GoDuration;
use crate::model::{
    ClusterData, Db, DbInitMode, DbRole, DbSpec, DbStatus, EffectiveSpec, FollowType, NewConfig,
    PostgresBinaryVersion, PostgresState,
};
use crate::pgconf::{
    HbaInput, ParamsInput, RecoveryMode, RecoveryOptions, ReplConn, generate_hba,
    internal_primary_conninfo, postgresql_parameters, stolon_name,
};

use super::types::*;

fn bound(d: GoDuration) -> Option<Duration> {
    if d.0 <= 0 { None } else { Some(d.to_std()) }
}

/// The `stolon_*` slots a master must have: one per follower and one per additional slot.
pub fn wanted_slots(spec: &DbSpec) -> Vec<String> {
    let mut w: Vec<String> = spec
        .followers
        .iter()
        .flatten()
        .chain(spec.additional_replication_slots.iter().flatten())
        .map(|n| stolon_name(n))
        .collect();
    w.sort();
    w.dedup();
    w
}

/// What to do to the instance's replication slots so that its `stolon_*` slots are exactly
/// `wanted`: the `stolon_*` slots to drop (in `current`, not wanted) and the wanted slots to
/// create (not in `current`). Slots without the `stolon_` prefix are never touched.
pub fn slot_changes(current: &[String], wanted: &[String]) -> SlotChanges {
    SlotChanges {
        drop: current
            .iter()
            .filter(|s| crate::pgconf::strip_stolon_name(s).is_some() && !wanted.contains(s))
            .cloned()
            .collect(),
        create: wanted
            .iter()
            .filter(|w| !current.contains(w))
            .cloned()
            .collect(),
    }
}

/// The result of [`slot_changes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotChanges {
    /// `stolon_*` slots nobody needs any more.
    pub drop: Vec<String>,
    /// Wanted slots the instance does not have yet.
    pub create: Vec<String>,
}

/// Stolon's `isDifferentTimelineBranch`: is the local instance (just rewound) on a timeline
/// branch the followed DB is not on?
pub fn is_different_timeline_branch(followed: &DbStatus, local: &PostgresState) -> bool {
    use crate::wal::{WalPoint, forked};
    forked(
        WalPoint {
            timeline: followed.timeline_id,
            xlog_pos: followed.xlog_pos,
            history: &followed.timelines_history,
        },
        WalPoint {
            timeline: local.timeline_id,
            xlog_pos: local.xlog_pos,
            history: &local.timelines_history,
        },
    )
}

/// What the clusterdata assigns to this keeper, with the effective spec.
struct Assignment<'a> {
    cd: &'a ClusterData,
    id: &'a KeeperIdentity,
    db: &'a Db,
    spec: &'a DbSpec,
    eff: EffectiveSpec,
}

/// The plan's running view of the local instance: the observation and the memory, updated as
/// the planned actions would change them (so later phases plan on the state the earlier actions
/// leave behind).
#[derive(Debug, Clone)]
struct LocalView {
    db_state: LocalDbState,
    initialized: bool,
    standby_signal: bool,
    running: bool,
    system_id: Option<u64>,
    version: Option<PostgresBinaryVersion>,
    applied: Option<PgConfig>,
    wait_sync: bool,
    in_sync_standbys: Option<Vec<String>>,
    shutdown_checkpoint: Option<u64>,
}

impl LocalView {
    fn new(known: KnownLocal, observed: &Observed, memory: &KeeperMemory) -> Self {
        LocalView {
            db_state: memory.db_state.clone(),
            initialized: known.initialized,
            standby_signal: known.standby_signal,
            running: known.running,
            system_id: observed.system_id,
            version: observed.version,
            applied: memory.applied.clone(),
            wait_sync: memory.wait_sync_standbys_synced,
            in_sync_standbys: observed.in_sync_standbys.clone(),
            shutdown_checkpoint: observed.shutdown_checkpoint,
        }
    }

    fn role(&self) -> LocalRole {
        KnownLocal {
            initialized: self.initialized,
            standby_signal: self.standby_signal,
            running: self.running,
        }
        .role()
    }
}

/// The planned actions so far; a phase that cannot go on ends the plan with `Stop`.
type Actions = Vec<KeeperAction>;

/// A phase either lets the plan continue or ends it (its last action says why).
enum Phase {
    Continue,
    End,
}

impl Assignment<'_> {
    fn hba(&self, only_internal: bool) -> Vec<String> {
        generate_hba(&HbaInput {
            cd: self.cd,
            db_uid: &self.db.uid,
            spec: self.spec,
            access_mode: self.eff.default_su_repl_access_mode,
            su_username: &self.id.su_username,
            su_auth: self.id.su_auth,
            repl_username: &self.id.repl_username,
            repl_auth: self.id.repl_auth,
            only_internal,
        })
    }

    fn parameters(&self, v: &LocalView) -> crate::model::PgParameters {
        let empty = crate::model::PgParameters::new();
        postgresql_parameters(&ParamsInput {
            spec: self.spec,
            init_parameters: v.db_state.init_pg_parameters.as_ref().unwrap_or(&empty),
            listen_address: &self.id.pg_listen_address,
            port: self.id.pg_port,
            version: v.version,
        })
    }

    fn config(&self, v: &LocalView, only_internal: bool, recovery: RecoveryOptions) -> PgConfig {
        PgConfig {
            parameters: self.parameters(v),
            hba: self.hba(only_internal),
            recovery,
        }
    }

    fn followed(&self) -> Result<Option<&Db>, PlanError> {
        let Some(fc) = &self.spec.follow_config else {
            return Ok(None);
        };
        if fc.kind == Some(FollowType::External) {
            return Ok(None);
        }
        self.cd
            .dbs
            .get(&fc.db_uid)
            .map(Some)
            .ok_or_else(|| PlanError::FollowedDbMissing(fc.db_uid.clone()))
    }

    fn is_external(&self) -> bool {
        self.spec
            .follow_config
            .as_ref()
            .is_some_and(|fc| fc.kind == Some(FollowType::External))
    }

    /// Recovery options of a standby following its followed DB (internal) or the external primary.
    fn standby_recovery(&self) -> Result<RecoveryOptions, PlanError> {
        if self.is_external() {
            let fc = self.spec.follow_config.as_ref();
            return Ok(RecoveryOptions::new(
                RecoveryMode::Standby,
                fc.and_then(|f| f.standby_settings.as_ref()),
                fc.and_then(|f| f.archive_recovery_settings.as_ref()),
                None,
            ));
        }
        let followed = self
            .followed()?
            .ok_or_else(|| PlanError::FollowedDbMissing(String::new()))?;
        let conninfo = internal_primary_conninfo(&ReplConn {
            host: followed.status.listen_address.clone(),
            port: followed.status.port.clone(),
            user: self.id.repl_username.clone(),
            password: None,
            passfile: self.id.repl_passfile.clone(),
            application_name: stolon_name(&self.db.uid),
        });
        let ss = crate::model::StandbySettings {
            primary_conninfo: conninfo,
            primary_slot_name: stolon_name(&self.db.uid),
            recovery_min_apply_delay: String::new(),
        };
        Ok(RecoveryOptions::new(
            RecoveryMode::Standby,
            Some(&ss),
            None,
            None,
        ))
    }

    fn roles(&self) -> RolesPlan {
        if self.id.su_username == self.id.repl_username {
            RolesPlan::SuIsRepl
        } else {
            RolesPlan::Separate {
                set_su_password: self.id.su_auth != crate::pgconf::AuthMethod::Trust
                    && self.id.su_has_password,
            }
        }
    }

    fn wait_ready(&self) -> KeeperAction {
        KeeperAction::WaitReady {
            timeout: bound(self.eff.db_wait_ready_timeout),
        }
    }
}

/// The ordered actions that converge the local instance to the DB the clusterdata assigns to
/// this keeper. `cd` is `None` when the store holds no clusterdata. A failed check of the
/// local instance ([`Probe::Unknown`]) ends the plan before anything is started, written,
/// initialised or cloned. `promise_left` is what is left of this keeper's failsafe promise
/// (docs/failsafe.md, zero when there is none): while it is not zero, a standby assigned the
/// master role is not promoted, and the plan ends waiting for it
/// ([`WaitReason::FailsafePromise`]).
pub fn plan(
    cd: Option<&ClusterData>,
    id: &KeeperIdentity,
    observed: &Observed,
    memory: &KeeperMemory,
    promise_left: Duration,
) -> Vec<KeeperAction> {
    let mut a = Actions::new();
    let Some(asg) = assignment(&mut a, cd, id, observed) else {
        return a;
    };
    let known = match observed.known() {
        Ok(k) => k,
        Err(u) => {
            a.push(KeeperAction::Wait(WaitReason::Unknown(u)));
            return a;
        }
    };
    let mut v = LocalView::new(known, observed, memory);

    // 6. an interrupted init/resync: throw its data away.
    if v.db_state.initializing {
        discard_interrupted_init(&mut a, &mut v);
    }
    // 7. a different DB is assigned: initialise it by its init mode.
    if v.db_state.uid != asg.db.uid {
        init(&mut a, &asg, &v);
        return a;
    }
    // 8.-10. the role.
    let phase = match asg.spec.role {
        Some(DbRole::Master) => master(&mut a, &asg, &mut v, promise_left),
        Some(DbRole::Standby) if asg.spec.follow_config.is_none() => fenced(&mut a, &asg, &mut v),
        Some(DbRole::Standby) => standby(&mut a, &asg, &mut v),
        None => unreachable_role(&mut a, &asg),
    };
    if let Phase::Continue = phase {
        // 11.-15.
        converge(&mut a, &asg, &mut v);
    }
    a
}

fn unreachable_role(a: &mut Actions, asg: &Assignment<'_>) -> Phase {
    a.push(KeeperAction::Fail(PlanError::NoRole(asg.db.uid.clone())));
    Phase::End
}

/// Steps 1-5: usable clusterdata, our keeper, our DB, our boot id, a role. `None` ends the plan
/// (its last action says why).
fn assignment<'a>(
    a: &mut Actions,
    cd: Option<&'a ClusterData>,
    id: &'a KeeperIdentity,
    observed: &Observed,
) -> Option<Assignment<'a>> {
    // A postgres left running for a DB that is no longer ours (or for another incarnation of
    // this keeper) is stopped; when we cannot tell whether it runs, nothing is done.
    let stop_if_running = |a: &mut Actions| {
        if observed.running == Probe::Known(true) {
            a.push(KeeperAction::Stop);
        }
    };
    // 1. clusterdata.
    let Some(cd) = cd else {
        a.push(KeeperAction::Wait(WaitReason::NoClusterData));
        return None;
    };
    if let Err(e) = cd.check_usable() {
        a.push(KeeperAction::Fail(PlanError::InvalidClusterData(
            e.to_string(),
        )));
        return None;
    }
    let eff = cd
        .cluster
        .as_ref()
        .and_then(|c| c.spec.as_ref())
        .map(|s| s.effective())
        .unwrap_or_else(|| crate::model::ClusterSpec::default().effective());
    // 2. our keeper.
    let Some(keeper) = cd.keepers.get(&id.uid) else {
        a.push(KeeperAction::Wait(WaitReason::KeeperNotInClusterData));
        return None;
    };
    // 3. our DB.
    let Some(db) = cd.db_of_keeper(&id.uid) else {
        stop_if_running(a);
        a.push(KeeperAction::Wait(WaitReason::NoDbAssigned));
        return None;
    };
    // 4. boot id: act only on decisions made about this process.
    if keeper.status.boot_uuid != id.boot_uuid {
        stop_if_running(a);
        a.push(KeeperAction::Wait(WaitReason::BootUuidMismatch));
        return None;
    }
    // 5. a role.
    let Some(spec) = db.spec.as_ref().filter(|s| s.role.is_some()) else {
        a.push(KeeperAction::Fail(PlanError::NoRole(db.uid.clone())));
        return None;
    };
    Some(Assignment {
        cd,
        id,
        db,
        spec,
        eff,
    })
}

/// Step 6: the data of an interrupted init/resync is thrown away.
fn discard_interrupted_init(a: &mut Actions, v: &mut LocalView) {
    a.push(KeeperAction::Note(Note::RemovingInterruptedInit));
    a.push(KeeperAction::Stop);
    a.push(KeeperAction::RemoveData);
    let fresh = LocalDbState::default();
    a.push(KeeperAction::SaveDbState(fresh.clone()));
    v.db_state = fresh;
    v.initialized = false;
    v.running = false;
    v.standby_signal = false;
    v.system_id = None;
    v.applied = None;
}

/// How a newly assigned DB gets its data.
enum InitSource {
    /// `initdb`, then the roles.
    New(NewConfig),
    /// The data restore command, then recovery with these options.
    Pitr {
        command: String,
        recovery: RecoveryOptions,
        wait_recovery: bool,
    },
    /// The data already there.
    Existing,
    /// A clone (or rewind) from the followed DB.
    Resync(Box<ResyncPlan>),
}

/// Step 7: a different DB is assigned: record it, get its data by its init mode, finish the
/// init and plan again.
fn init(a: &mut Actions, asg: &Assignment<'_>, v: &LocalView) {
    a.push(KeeperAction::Note(Note::DbUidChanged {
        local: v.db_state.uid.clone(),
        assigned: asg.db.uid.clone(),
    }));
    a.push(KeeperAction::SetWaitSyncStandbys(false));
    let begin = LocalDbState {
        uid: asg.db.uid.clone(),
        generation: 0,
        initializing: true,
        init_pg_parameters: None,
    };
    let source = match init_source(asg, v, &begin) {
        Ok(s) => s,
        Err(e) => {
            a.push(KeeperAction::Fail(e));
            return;
        }
    };
    let mut init_v = v.clone();
    init_v.db_state = begin.clone();
    match source {
        InitSource::New(nc) => {
            a.push(KeeperAction::Note(Note::Initializing));
            a.push(KeeperAction::SaveDbState(begin));
            a.push(KeeperAction::Stop);
            a.push(KeeperAction::RemoveData);
            a.push(KeeperAction::InitDb(nc));
            start_and_capture(a, asg, &init_v, RecoveryOptions::none(), asg.wait_ready());
            a.push(KeeperAction::CreateRoles(asg.roles()));
            a.push(KeeperAction::Stop);
        }
        InitSource::Pitr {
            command,
            recovery,
            wait_recovery,
        } => {
            a.push(KeeperAction::Note(Note::Initializing));
            a.push(KeeperAction::SaveDbState(begin));
            a.push(KeeperAction::Stop);
            a.push(KeeperAction::RemoveData);
            a.push(KeeperAction::RestoreData { command });
            let timeout = bound(asg.eff.sync_timeout);
            a.push(KeeperAction::StartTmpMerged(Box::new(
                asg.config(&init_v, false, recovery),
            )));
            if wait_recovery {
                a.push(KeeperAction::WaitRecoveryDone { timeout });
            }
            a.push(KeeperAction::WaitReady { timeout });
            save_init_parameters(a, asg);
            a.push(KeeperAction::Stop);
        }
        InitSource::Existing => {
            let existing = LocalDbState {
                initializing: false,
                ..begin
            };
            init_v.db_state = existing.clone();
            a.push(KeeperAction::SaveDbState(existing));
            a.push(KeeperAction::Stop);
            start_and_capture(a, asg, &init_v, RecoveryOptions::none(), asg.wait_ready());
            a.push(KeeperAction::Stop);
        }
        InitSource::Resync(plan) => {
            a.push(KeeperAction::Note(Note::Resyncing));
            a.push(KeeperAction::SaveDbState(begin));
            a.push(KeeperAction::Stop);
            a.push(KeeperAction::Resync(plan));
        }
    }
    a.push(KeeperAction::FinishInit);
    a.push(KeeperAction::Replan);
}

/// Starts the new data with the temporary merged configuration, waits for it and (with
/// `includePreviousConfig`) records its own parameters: the steps `new` and `existing` share
/// (`pitr` shares the last two).
fn start_and_capture(
    a: &mut Actions,
    asg: &Assignment<'_>,
    v: &LocalView,
    recovery: RecoveryOptions,
    wait_ready: KeeperAction,
) {
    a.push(KeeperAction::StartTmpMerged(Box::new(
        asg.config(v, false, recovery),
    )));
    a.push(wait_ready);
    save_init_parameters(a, asg);
}

fn save_init_parameters(a: &mut Actions, asg: &Assignment<'_>) {
    if asg.spec.include_previous_config {
        a.push(KeeperAction::SaveInitParameters);
    }
}

/// Where the data of a newly assigned DB comes from, by its init mode.
fn init_source(
    asg: &Assignment<'_>,
    v: &LocalView,
    begin: &LocalDbState,
) -> Result<InitSource, PlanError> {
    let spec = asg.spec;
    match spec.init_mode.unwrap_or(DbInitMode::None) {
        DbInitMode::New => Ok(InitSource::New(spec.new_config.clone().unwrap_or_default())),
        DbInitMode::Existing => Ok(InitSource::Existing),
        DbInitMode::None => Err(PlanError::InitModeNone),
        DbInitMode::Pitr => {
            let pitr = spec
                .pitr_config
                .as_ref()
                .ok_or_else(|| PlanError::NoPitrConfig(asg.db.uid.clone()))?;
            // A standby cluster's master stays in standby mode even without standby settings
            // (fed by restore_command only): plain recovery would end the archive and promote
            // it onto a new timeline.
            let (mode, external) = if asg.is_external() {
                (
                    RecoveryMode::Standby,
                    spec.follow_config
                        .as_ref()
                        .and_then(|f| f.standby_settings.as_ref()),
                )
            } else {
                (RecoveryMode::Recovery, None)
            };
            Ok(InitSource::Pitr {
                command: pitr.data_restore_command.clone(),
                recovery: RecoveryOptions::new(
                    mode,
                    external,
                    pitr.archive_recovery_settings.as_ref(),
                    pitr.recovery_target_settings.as_ref(),
                ),
                wait_recovery: mode == RecoveryMode::Recovery,
            })
        }
        DbInitMode::Resync => {
            let followed = asg.followed()?.ok_or_else(|| {
                PlanError::FollowedDbMissing(
                    spec.follow_config
                        .as_ref()
                        .map(|f| f.db_uid.clone())
                        .unwrap_or_default(),
                )
            })?;
            let recovery = asg.standby_recovery()?;
            let same_system = v.initialized
                && v.system_id.is_some()
                && v.system_id.map(|s| s.to_string()) == Some(followed.status.system_id.clone());
            let id = asg.id;
            let rewind_from = match asg.cd.master_db() {
                Some(m)
                    if spec.use_pgrewind
                        && id.su_has_password
                        && id.su_auth != crate::pgconf::AuthMethod::Trust
                        && same_system =>
                {
                    Some(PgEndpoint {
                        host: m.status.listen_address.clone(),
                        port: m.status.port.clone(),
                    })
                }
                _ => None,
            };
            let mut init_v = v.clone();
            init_v.db_state = begin.clone();
            Ok(InitSource::Resync(Box::new(ResyncPlan {
                rewind_from,
                clone_from: PgEndpoint {
                    host: followed.status.listen_address.clone(),
                    port: followed.status.port.clone(),
                },
                slot: stolon_name(&asg.db.uid),
                application_name: stolon_name(&asg.db.uid),
                config: asg.config(&init_v, false, recovery),
                wait_ready: bound(asg.eff.db_wait_ready_timeout),
                followed_status: followed.status.clone(),
            })))
        }
    }
}

/// Step 9: the master role: start (as a standby first when the data is a standby's, so the
/// promotion switches timeline), promote, keep the followers' slots. In failsafe mode a
/// promotion waits until the keeper's last promise not to promote is over: the pass starts the
/// standby if needed and ends there, so nothing is recorded as converged before the promotion.
fn master(
    a: &mut Actions,
    asg: &Assignment<'_>,
    v: &mut LocalView,
    promise_left: Duration,
) -> Phase {
    a.push(KeeperAction::Note(Note::RequestedRole("master")));
    if asg
        .cd
        .switchover
        .as_ref()
        .is_some_and(|sw| sw.stops(&asg.db.uid))
    {
        return switchover_stop(a, v);
    }
    let local = v.role();
    if local == LocalRole::Undefined {
        a.push(KeeperAction::Fail(PlanError::NotInitialized));
        return Phase::End;
    }
    let params = asg.parameters(v);
    let mut only_internal = v.wait_sync;
    if !v.running {
        if asg.spec.synchronous_replication {
            a.push(KeeperAction::SetWaitSyncStandbys(true));
            only_internal = true;
            v.wait_sync = true;
        }
        let recovery = if local == LocalRole::Standby {
            RecoveryOptions::new(RecoveryMode::Standby, None, None, None)
        } else {
            RecoveryOptions::none()
        };
        let cfg = PgConfig {
            parameters: params.clone(),
            hba: asg.hba(only_internal),
            recovery,
        };
        a.push(KeeperAction::WriteConfig(Box::new(cfg.clone())));
        a.push(KeeperAction::Start);
        a.push(asg.wait_ready());
        v.running = true;
        v.applied = Some(cfg);
    }
    // A planned switchover promotes only after the old master stopped: a failsafe promise
    // guards against writes the old master could still take, and it can take none.
    let after_clean_stop = asg
        .cd
        .switchover
        .as_ref()
        .is_some_and(|sw| sw.promotes_after_clean_stop(&asg.db.uid));
    if local == LocalRole::Standby {
        if !promise_left.is_zero() && !after_clean_stop {
            a.push(KeeperAction::Wait(WaitReason::FailsafePromise {
                remaining: promise_left,
            }));
            return Phase::End;
        }
        a.push(KeeperAction::Promote);
        let applied = v.applied.as_ref();
        let cfg = PgConfig {
            parameters: applied.map_or_else(|| params.clone(), |c| c.parameters.clone()),
            hba: applied.map_or_else(|| asg.hba(only_internal), |c| c.hba.clone()),
            recovery: RecoveryOptions::none(),
        };
        a.push(KeeperAction::WriteConfig(Box::new(cfg.clone())));
        v.applied = Some(cfg);
    } else {
        a.push(KeeperAction::Note(Note::AlreadyMaster));
    }
    a.push(KeeperAction::RefreshSlots {
        wanted: wanted_slots(asg.spec),
    });
    Phase::Continue
}

/// Step 9a: a planned switchover stops our primary (docs/switchover.md): a clean shutdown in
/// fast mode, whose shutdown checkpoint the walsenders send to the standbys; it stays stopped
/// while the switchover says so (the runtime reports the checkpoint's location).
fn switchover_stop(a: &mut Actions, v: &mut LocalView) -> Phase {
    if v.running {
        a.push(KeeperAction::Note(Note::SwitchoverStopping));
        a.push(KeeperAction::Stop);
        v.running = false;
        v.applied = None;
    }
    a.push(KeeperAction::Wait(WaitReason::SwitchoverStopped));
    Phase::End
}

/// Whether our stopped primary may start as a standby of the followed DB without rewind or
/// base backup: a switchover promoted that DB after our clean shutdown, and `pg_control` still
/// records exactly the shutdown checkpoint the sentinel saw the target go beyond (so nothing
/// ran on this data since, and the target's new timeline branches off after our last record).
/// `Some(true)` once the switchover completed (the target has been promoted and has converged,
/// so its replication slot for us exists: attaching earlier fails and PostgreSQL retries only
/// after `wal_retrieve_retry_interval`); `Some(false)` while it is still being promoted (wait);
/// `None` when this is no such case.
fn switchover_rejoin(asg: &Assignment<'_>, v: &LocalView) -> Option<bool> {
    use crate::model::SwitchoverPhase as P;
    let sw = asg.cd.switchover.as_ref()?;
    let followed = asg
        .spec
        .follow_config
        .as_ref()
        .filter(|f| f.kind == Some(FollowType::Internal))
        .map(|f| f.db_uid.as_str());
    let ours = !v.running
        && matches!(sw.phase, P::Promoted | P::Completed)
        && sw.old_master_db == asg.db.uid
        && followed == Some(sw.target_db.as_str())
        && sw.final_xlog_pos > 0
        && v.shutdown_checkpoint == Some(sw.final_xlog_pos);
    ours.then_some(sw.phase == P::Completed)
}

/// Step 10a: a fenced former master.
///
/// The sentinel fences a replaced master by making its DB a standby that follows nothing (so
/// clusterdata never names two masters). It runs read-only: in recovery with no WAL source,
/// after replaying all the WAL it has. It takes no write, yet reports its true position, so the
/// sentinel can elect it again if the failover fails, until the DB is removed and this keeper
/// resynced.
fn fenced(a: &mut Actions, asg: &Assignment<'_>, v: &mut LocalView) -> Phase {
    a.push(KeeperAction::Note(Note::Fenced));
    let local = v.role();
    if local == LocalRole::Undefined {
        a.push(KeeperAction::Wait(WaitReason::LocalRoleNone));
        return Phase::End;
    }
    let cfg = PgConfig {
        parameters: asg.parameters(v),
        hba: asg.hba(v.wait_sync),
        recovery: RecoveryOptions::new(RecoveryMode::Standby, None, None, None),
    };
    if local == LocalRole::Master && v.running {
        a.push(KeeperAction::Stop);
        v.running = false;
    }
    if !v.running {
        a.push(KeeperAction::WriteConfig(Box::new(cfg.clone())));
        a.push(KeeperAction::Start);
        v.running = true;
        v.applied = Some(cfg);
    } else if v.applied.as_ref().map(|c| &c.recovery) != Some(&cfg.recovery) {
        apply_recovery_change(a, v, cfg);
    }
    a.push(KeeperAction::RefreshSlots { wanted: vec![] });
    Phase::Continue
}

/// Step 10: the standby role: start following, or re-point a running standby.
fn standby(a: &mut Actions, asg: &Assignment<'_>, v: &mut LocalView) -> Phase {
    a.push(KeeperAction::Note(Note::RequestedRole("standby")));
    match v.role() {
        LocalRole::Master => match switchover_rejoin(asg, v) {
            Some(true) => a.push(KeeperAction::Note(Note::SwitchoverRejoin)),
            Some(false) => {
                a.push(KeeperAction::Wait(WaitReason::SwitchoverStopped));
                return Phase::End;
            }
            None => {
                a.push(KeeperAction::Fail(PlanError::MasterToStandby));
                return Phase::End;
            }
        },
        LocalRole::Undefined => {
            a.push(KeeperAction::Wait(WaitReason::LocalRoleNone));
            return Phase::End;
        }
        LocalRole::Standby => {}
    }
    let recovery = match asg.standby_recovery() {
        Ok(r) => r,
        Err(e) => {
            a.push(KeeperAction::Fail(e));
            return Phase::End;
        }
    };
    let cfg = PgConfig {
        parameters: asg.parameters(v),
        hba: asg.hba(v.wait_sync),
        recovery,
    };
    if !v.running {
        a.push(KeeperAction::WriteConfig(Box::new(cfg.clone())));
        a.push(KeeperAction::Start);
        v.running = true;
        v.applied = Some(cfg);
    } else {
        a.push(KeeperAction::Note(Note::AlreadyStandby));
        if v.applied.as_ref().map(|c| &c.recovery) != Some(&cfg.recovery) {
            a.push(KeeperAction::Note(Note::RecoveryChanged));
            apply_recovery_change(a, v, cfg);
        }
    }
    // A standby cluster's master (following an external primary) serves the cluster's other
    // keepers: it keeps their slots. An internal standby has no followers.
    let wanted = if asg.is_external() {
        wanted_slots(asg.spec)
    } else {
        vec![]
    };
    a.push(KeeperAction::RefreshSlots { wanted });
    Phase::Continue
}

/// Steps 11-15: parameters, the synchronous standbys' sync, pg_hba, reload, the restart check
/// and the generation.
fn converge(a: &mut Actions, asg: &Assignment<'_>, v: &mut LocalView) {
    let params = asg.parameters(v);
    // 11. parameters.
    let applied = v.applied.clone().unwrap_or_default();
    let mut needs_reload = false;
    let names = |p: &crate::model::PgParameters| {
        p.get("synchronous_standby_names")
            .cloned()
            .unwrap_or_default()
    };
    let (old_names, new_names) = (names(&applied.parameters), names(&params));
    if v.applied.is_some() && old_names != new_names {
        a.push(KeeperAction::Note(Note::SyncStandbyNamesChanged(
            old_names, new_names,
        )));
    }
    if v.applied.is_none() || applied.parameters != params {
        a.push(KeeperAction::Note(Note::ParametersChanged));
        needs_reload = true;
    } else {
        a.push(KeeperAction::Note(Note::ParametersNotChanged));
    }

    // 12. synchronous standbys back in sync? then pg_hba.
    let mut only_internal = v.wait_sync;
    if v.wait_sync && sync_standbys_synced(asg.spec, v) {
        a.push(KeeperAction::Note(Note::SyncStandbysSynced));
        a.push(KeeperAction::SetWaitSyncStandbys(false));
        only_internal = false;
    }
    let hba = asg.hba(only_internal);
    if v.applied.is_none() || applied.hba != hba {
        a.push(KeeperAction::Note(Note::HbaChanged));
        needs_reload = true;
    } else {
        a.push(KeeperAction::Note(Note::HbaNotChanged));
    }

    // 13. reload.
    if needs_reload {
        a.push(KeeperAction::WriteConfig(Box::new(PgConfig {
            parameters: params,
            hba,
            recovery: applied.recovery,
        })));
        a.push(KeeperAction::Reload);
    }
    // 14. restart-needing changes (while the cluster is paused only reported, never acted on).
    a.push(KeeperAction::CheckRestart {
        automatic: asg.eff.automatic_pg_restart && !asg.eff.spec.is_paused(),
    });
    // 15. converged.
    if v.db_state.generation != asg.db.generation || v.db_state.initializing {
        a.push(KeeperAction::MarkConverged {
            generation: asg.db.generation,
        });
    }
}

/// The synchronous standbys the spec wants are exactly those the primary reports in sync (or
/// synchronous replication is off). With quorum commit (`synchronousQuorum` k), k of them
/// streaming is enough: commits then flow.
fn sync_standbys_synced(spec: &DbSpec, v: &LocalView) -> bool {
    if !spec.synchronous_replication {
        return true;
    }
    let mut want: Vec<String> = spec.synchronous_standbys.clone().unwrap_or_default();
    want.sort();
    if let Some(k) = spec.synchronous_quorum {
        let need = usize::from(k).clamp(1, want.len().max(1));
        return v.in_sync_standbys.as_ref().is_some_and(|have| {
            want.is_empty() || want.iter().filter(|u| have.contains(u)).count() >= need
        });
    }
    match &v.in_sync_standbys {
        Some(have) => {
            let mut have = have.clone();
            have.sort();
            want == have
        }
        None => false,
    }
}

/// Writes `cfg` (new recovery settings for a running standby) and applies it: PostgreSQL 13+
/// re-reads `primary_conninfo` / `primary_slot_name` on reload and restarts its WAL receiver, so
/// a standby re-pointed at a new primary keeps serving reads and re-attaches sooner than after a
/// restart; any other recovery change needs a restart.
fn apply_recovery_change(a: &mut Actions, v: &mut LocalView, cfg: PgConfig) {
    let reload = v
        .applied
        .as_ref()
        .is_some_and(|c| reloadable_recovery_change(&c.recovery, &cfg.recovery, v.version));
    a.push(KeeperAction::WriteConfig(Box::new(cfg.clone())));
    a.push(if reload {
        KeeperAction::Reload
    } else {
        KeeperAction::Restart
    });
    v.applied = Some(cfg);
}

/// A standby's recovery settings changed only in what PostgreSQL 13 and later apply on reload
/// (`primary_conninfo`, `primary_slot_name`), with the same recovery mode.
fn reloadable_recovery_change(
    old: &RecoveryOptions,
    new: &RecoveryOptions,
    version: Option<PostgresBinaryVersion>,
) -> bool {
    const RELOADABLE: [&str; 2] = ["primary_conninfo", "primary_slot_name"];
    let version_ok = version.as_ref().is_some_and(|v| v.maj >= 13);
    let rest = |r: &RecoveryOptions| {
        r.parameters
            .iter()
            .filter(|(k, _)| !RELOADABLE.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    version_ok && old.mode == new.mode && rest(old) == rest(new)
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_stolon_slots_are_dropped_and_only_missing_ones_created() {
        let c = slot_changes(
            &v(&["stolon_a", "stolon_old", "manual"]),
            &v(&["stolon_a", "stolon_b"]),
        );
        assert_eq!(
            c,
            SlotChanges {
                drop: v(&["stolon_old"]),
                create: v(&["stolon_b"]),
            }
        );
        assert_eq!(
            slot_changes(&v(&["stolon_a"]), &v(&["stolon_a"])),
            SlotChanges::default()
        );
    }
}
