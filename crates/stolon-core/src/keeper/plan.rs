//! `plan`: clusterdata + local observation -> ordered actions (stolon-behaviour.md §4.8 steps
//! 1-15). Pure.

use std::time::Duration;

use crate::duration::GoDuration;
use crate::model::{
    ClusterData, Db, DbInitMode, DbRole, DbSpec, DbStatus, EffectiveSpec, FollowType, PostgresState,
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

/// Stolon's `isDifferentTimelineBranch`: is the local instance (just rewound) on a timeline
/// branch the followed DB is not on?
pub fn is_different_timeline_branch(followed: &DbStatus, local: &PostgresState) -> bool {
    let find = |h: &[crate::model::TimelineHistory], tl: u64| {
        h.iter()
            .find(|e| e.timeline_id == tl)
            .map(|e| e.switch_point)
    };
    if followed.timeline_id < local.timeline_id {
        return true;
    }
    if followed.timeline_id == local.timeline_id {
        if local.timeline_id <= 1 {
            return false;
        }
        let tl = local.timeline_id - 1;
        return match (
            find(&followed.timelines_history, tl),
            find(&local.timelines_history, tl),
        ) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        };
    }
    // followed is on a newer timeline: it must have branched from ours after our position.
    match find(&followed.timelines_history, local.timeline_id) {
        Some(sp) => sp < local.xlog_pos,
        None => false,
    }
}

struct Ctx<'a> {
    cd: &'a ClusterData,
    id: &'a KeeperIdentity,
    db: &'a Db,
    spec: &'a DbSpec,
    eff: EffectiveSpec,
}

impl Ctx<'_> {
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

    fn parameters(&self, o: &Observed) -> crate::model::PgParameters {
        let empty = crate::model::PgParameters::new();
        postgresql_parameters(&ParamsInput {
            spec: self.spec,
            init_parameters: o.db_state.init_pg_parameters.as_ref().unwrap_or(&empty),
            listen_address: &self.id.pg_listen_address,
            port: self.id.pg_port,
            version: o.version,
        })
    }

    fn config(&self, o: &Observed, only_internal: bool, recovery: RecoveryOptions) -> PgConfig {
        PgConfig {
            parameters: self.parameters(o),
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
}

/// The ordered actions that converge the local instance to the DB the clusterdata assigns to
/// this keeper. `cd` is `None` when the store holds no clusterdata.
pub fn plan(
    cd: Option<&ClusterData>,
    id: &KeeperIdentity,
    observed: &Observed,
) -> Vec<KeeperAction> {
    let mut a = Vec::new();
    // 1. clusterdata.
    let Some(cd) = cd else {
        a.push(KeeperAction::Wait(WaitReason::NoClusterData));
        return a;
    };
    if let Err(e) = cd.check_usable() {
        a.push(KeeperAction::Fail(PlanError::InvalidClusterData(
            e.to_string(),
        )));
        return a;
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
        return a;
    };
    // 3. our DB.
    let Some(db) = cd.db_of_keeper(&id.uid) else {
        if observed.running {
            a.push(KeeperAction::Stop);
        }
        a.push(KeeperAction::Wait(WaitReason::NoDbAssigned));
        return a;
    };
    // 4. boot id: act only on decisions made about this process.
    if keeper.status.boot_uuid != id.boot_uuid {
        if observed.running {
            a.push(KeeperAction::Stop);
        }
        a.push(KeeperAction::Wait(WaitReason::BootUuidMismatch));
        return a;
    }
    let Some(spec) = db.spec.as_ref() else {
        a.push(KeeperAction::Fail(PlanError::NoRole(db.uid.clone())));
        return a;
    };
    let Some(role) = spec.role else {
        a.push(KeeperAction::Fail(PlanError::NoRole(db.uid.clone())));
        return a;
    };
    let ctx = Ctx {
        cd,
        id,
        db,
        spec,
        eff,
    };
    let mut o = observed.clone();

    // 6. an interrupted init/resync: throw its data away.
    if o.db_state.initializing {
        a.push(KeeperAction::Note(Note::RemovingInterruptedInit));
        a.push(KeeperAction::Stop);
        a.push(KeeperAction::RemoveData);
        let fresh = LocalDbState::default();
        a.push(KeeperAction::SaveDbState(fresh.clone()));
        o.db_state = fresh;
        o.initialized = false;
        o.running = false;
        o.standby_signal = false;
        o.system_id = None;
        o.applied = None;
    }

    // 7. a different DB is assigned: initialise it by its init mode.
    if o.db_state.uid != db.uid {
        a.push(KeeperAction::Note(Note::DbUidChanged {
            local: o.db_state.uid.clone(),
            assigned: db.uid.clone(),
        }));
        a.push(KeeperAction::SetWaitSyncStandbys(false));
        let begin = LocalDbState {
            uid: db.uid.clone(),
            generation: 0,
            initializing: true,
            init_pg_parameters: None,
        };
        let mut init_o = o.clone();
        init_o.db_state = begin.clone();
        match spec.init_mode.unwrap_or(DbInitMode::None) {
            DbInitMode::New => {
                a.push(KeeperAction::Note(Note::Initializing));
                a.push(KeeperAction::SaveDbState(begin));
                a.push(KeeperAction::Stop);
                a.push(KeeperAction::RemoveData);
                a.push(KeeperAction::InitDb(
                    spec.new_config.clone().unwrap_or_default(),
                ));
                a.push(KeeperAction::StartTmpMerged(Box::new(ctx.config(
                    &init_o,
                    false,
                    RecoveryOptions::none(),
                ))));
                a.push(KeeperAction::WaitReady {
                    timeout: bound(ctx.eff.db_wait_ready_timeout),
                });
                if spec.include_previous_config {
                    a.push(KeeperAction::SaveInitParameters);
                }
                a.push(KeeperAction::CreateRoles(ctx.roles()));
                a.push(KeeperAction::Stop);
            }
            DbInitMode::Pitr => {
                let Some(pitr) = &spec.pitr_config else {
                    a.push(KeeperAction::Fail(PlanError::NoPitrConfig(db.uid.clone())));
                    return a;
                };
                let external = if ctx.is_external() {
                    spec.follow_config
                        .as_ref()
                        .and_then(|f| f.standby_settings.as_ref())
                } else {
                    None
                };
                // A standby cluster's master stays in standby mode even without standby
                // settings (fed by restore_command only): plain recovery would end the archive
                // and promote it onto a new timeline.
                let mode = if ctx.is_external() {
                    RecoveryMode::Standby
                } else {
                    RecoveryMode::Recovery
                };
                let recovery = RecoveryOptions::new(
                    mode,
                    external,
                    pitr.archive_recovery_settings.as_ref(),
                    pitr.recovery_target_settings.as_ref(),
                );
                a.push(KeeperAction::Note(Note::Initializing));
                a.push(KeeperAction::SaveDbState(begin));
                a.push(KeeperAction::Stop);
                a.push(KeeperAction::RemoveData);
                a.push(KeeperAction::RestoreData {
                    command: pitr.data_restore_command.clone(),
                });
                a.push(KeeperAction::StartTmpMerged(Box::new(
                    ctx.config(&init_o, false, recovery),
                )));
                if mode == RecoveryMode::Recovery {
                    a.push(KeeperAction::WaitRecoveryDone {
                        timeout: bound(ctx.eff.sync_timeout),
                    });
                }
                a.push(KeeperAction::WaitReady {
                    timeout: bound(ctx.eff.sync_timeout),
                });
                if spec.include_previous_config {
                    a.push(KeeperAction::SaveInitParameters);
                }
                a.push(KeeperAction::Stop);
            }
            DbInitMode::Existing => {
                let existing = LocalDbState {
                    initializing: false,
                    ..begin
                };
                init_o.db_state = existing.clone();
                a.push(KeeperAction::SaveDbState(existing));
                a.push(KeeperAction::Stop);
                a.push(KeeperAction::StartTmpMerged(Box::new(ctx.config(
                    &init_o,
                    false,
                    RecoveryOptions::none(),
                ))));
                a.push(KeeperAction::WaitReady {
                    timeout: bound(ctx.eff.db_wait_ready_timeout),
                });
                if spec.include_previous_config {
                    a.push(KeeperAction::SaveInitParameters);
                }
                a.push(KeeperAction::Stop);
            }
            DbInitMode::Resync => {
                let followed = match ctx.followed() {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        a.push(KeeperAction::Fail(PlanError::FollowedDbMissing(
                            spec.follow_config
                                .as_ref()
                                .map(|f| f.db_uid.clone())
                                .unwrap_or_default(),
                        )));
                        return a;
                    }
                    Err(e) => {
                        a.push(KeeperAction::Fail(e));
                        return a;
                    }
                };
                let recovery = match ctx.standby_recovery() {
                    Ok(r) => r,
                    Err(e) => {
                        a.push(KeeperAction::Fail(e));
                        return a;
                    }
                };
                let master = cd.master_db();
                let same_system = o.initialized
                    && o.system_id.is_some()
                    && o.system_id.map(|s| s.to_string())
                        == Some(followed.status.system_id.clone());
                let rewind_from = match master {
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
                a.push(KeeperAction::Note(Note::Resyncing));
                a.push(KeeperAction::SaveDbState(begin));
                a.push(KeeperAction::Stop);
                a.push(KeeperAction::Resync(Box::new(ResyncPlan {
                    rewind_from,
                    clone_from: PgEndpoint {
                        host: followed.status.listen_address.clone(),
                        port: followed.status.port.clone(),
                    },
                    slot: stolon_name(&db.uid),
                    application_name: stolon_name(&db.uid),
                    config: ctx.config(&init_o, false, recovery),
                    wait_ready: bound(ctx.eff.db_wait_ready_timeout),
                    followed_status: followed.status.clone(),
                })));
            }
            DbInitMode::None => {
                a.push(KeeperAction::Fail(PlanError::InitModeNone));
                return a;
            }
        }
        a.push(KeeperAction::FinishInit);
        a.push(KeeperAction::Replan);
        return a;
    }

    // 8. local role.
    let local = o.local_role();
    let only_internal = o.wait_sync_standbys_synced;
    let params = ctx.parameters(&o);

    match role {
        // 9. master.
        DbRole::Master => {
            a.push(KeeperAction::Note(Note::RequestedRole("master")));
            if local == LocalRole::Undefined {
                a.push(KeeperAction::Fail(PlanError::NotInitialized));
                return a;
            }
            let mut only_internal = only_internal;
            if !o.running {
                if spec.synchronous_replication {
                    a.push(KeeperAction::SetWaitSyncStandbys(true));
                    only_internal = true;
                    o.wait_sync_standbys_synced = true;
                }
                // A standby that must become master starts as a standby first and is promoted,
                // so it switches to a new timeline (starting it as a primary would not).
                let recovery = if local == LocalRole::Standby {
                    RecoveryOptions::new(RecoveryMode::Standby, None, None, None)
                } else {
                    RecoveryOptions::none()
                };
                let cfg = PgConfig {
                    parameters: params.clone(),
                    hba: ctx.hba(only_internal),
                    recovery,
                };
                a.push(KeeperAction::WriteConfig(Box::new(cfg.clone())));
                a.push(KeeperAction::Start);
                a.push(KeeperAction::WaitReady {
                    timeout: bound(ctx.eff.db_wait_ready_timeout),
                });
                o.running = true;
                o.applied = Some(cfg);
            }
            if local == LocalRole::Standby {
                a.push(KeeperAction::Promote);
                let cfg = PgConfig {
                    parameters: o
                        .applied
                        .as_ref()
                        .map(|c| c.parameters.clone())
                        .unwrap_or_else(|| params.clone()),
                    hba: o
                        .applied
                        .as_ref()
                        .map(|c| c.hba.clone())
                        .unwrap_or_else(|| ctx.hba(only_internal)),
                    recovery: RecoveryOptions::none(),
                };
                a.push(KeeperAction::WriteConfig(Box::new(cfg.clone())));
                o.applied = Some(cfg);
            } else {
                a.push(KeeperAction::Note(Note::AlreadyMaster));
            }
            a.push(KeeperAction::RefreshSlots {
                wanted: wanted_slots(spec),
            });
        }
        // 10a. fenced former master.
        DbRole::Standby if spec.follow_config.is_none() => {
            // The sentinel fences a replaced master by making its DB a standby that follows
            // nothing (so clusterdata never names two masters). It runs read-only: in recovery
            // with no WAL source, after replaying all the WAL it has. It takes no write, yet
            // reports its true position, so the sentinel can elect it again if the failover
            // fails, until the DB is removed and this keeper resynced.
            a.push(KeeperAction::Note(Note::Fenced));
            if local == LocalRole::Undefined {
                a.push(KeeperAction::Wait(WaitReason::LocalRoleNone));
                return a;
            }
            let cfg = PgConfig {
                parameters: params.clone(),
                hba: ctx.hba(only_internal),
                recovery: RecoveryOptions::new(RecoveryMode::Standby, None, None, None),
            };
            if local == LocalRole::Master && o.running {
                a.push(KeeperAction::Stop);
                o.running = false;
            }
            if !o.running {
                a.push(KeeperAction::WriteConfig(Box::new(cfg.clone())));
                a.push(KeeperAction::Start);
                o.running = true;
                o.applied = Some(cfg);
            } else if o.applied.as_ref().map(|c| &c.recovery) != Some(&cfg.recovery) {
                apply_recovery_change(&mut a, &mut o, cfg);
            }
            a.push(KeeperAction::RefreshSlots { wanted: vec![] });
        }
        // 10. standby.
        DbRole::Standby => {
            a.push(KeeperAction::Note(Note::RequestedRole("standby")));
            match local {
                LocalRole::Master => {
                    a.push(KeeperAction::Fail(PlanError::MasterToStandby));
                    return a;
                }
                LocalRole::Undefined => {
                    a.push(KeeperAction::Wait(WaitReason::LocalRoleNone));
                    return a;
                }
                LocalRole::Standby => {}
            }
            let recovery = match ctx.standby_recovery() {
                Ok(r) => r,
                Err(e) => {
                    a.push(KeeperAction::Fail(e));
                    return a;
                }
            };
            if !o.running {
                let cfg = PgConfig {
                    parameters: params.clone(),
                    hba: ctx.hba(only_internal),
                    recovery,
                };
                a.push(KeeperAction::WriteConfig(Box::new(cfg.clone())));
                a.push(KeeperAction::Start);
                o.running = true;
                o.applied = Some(cfg);
            } else {
                a.push(KeeperAction::Note(Note::AlreadyStandby));
                let cur = o.applied.as_ref().map(|c| &c.recovery);
                if cur != Some(&recovery) {
                    a.push(KeeperAction::Note(Note::RecoveryChanged));
                    let cfg = PgConfig {
                        parameters: params.clone(),
                        hba: ctx.hba(only_internal),
                        recovery,
                    };
                    apply_recovery_change(&mut a, &mut o, cfg);
                }
            }
            // A standby cluster's master (following an external primary) serves the cluster's
            // other keepers: it keeps their slots. An internal standby has no followers.
            let wanted = if ctx.is_external() {
                wanted_slots(spec)
            } else {
                vec![]
            };
            a.push(KeeperAction::RefreshSlots { wanted });
        }
    }

    // 11. parameters.
    let applied = o.applied.clone().unwrap_or_default();
    let mut needs_reload = false;
    let old_names = applied
        .parameters
        .get("synchronous_standby_names")
        .cloned()
        .unwrap_or_default();
    let new_names = params
        .get("synchronous_standby_names")
        .cloned()
        .unwrap_or_default();
    if o.applied.is_some() && old_names != new_names {
        a.push(KeeperAction::Note(Note::SyncStandbyNamesChanged(
            old_names, new_names,
        )));
    }
    if o.applied.is_none() || applied.parameters != params {
        a.push(KeeperAction::Note(Note::ParametersChanged));
        needs_reload = true;
    } else {
        a.push(KeeperAction::Note(Note::ParametersNotChanged));
    }

    // 12. synchronous standbys back in sync? then pg_hba.
    let mut only_internal = o.wait_sync_standbys_synced;
    if o.wait_sync_standbys_synced {
        let synced = if spec.synchronous_replication {
            let mut want: Vec<String> = spec.synchronous_standbys.clone().unwrap_or_default();
            want.sort();
            let mut have = o.in_sync_standbys.clone().unwrap_or_default();
            have.sort();
            o.in_sync_standbys.is_some() && want == have
        } else {
            true
        };
        if synced {
            a.push(KeeperAction::Note(Note::SyncStandbysSynced));
            a.push(KeeperAction::SetWaitSyncStandbys(false));
            only_internal = false;
        }
    }
    let hba = ctx.hba(only_internal);
    if o.applied.is_none() || applied.hba != hba {
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
    // 14. restart-needing changes.
    a.push(KeeperAction::CheckRestart {
        automatic: ctx.eff.automatic_pg_restart,
    });
    // 15. converged.
    if o.db_state.generation != db.generation || o.db_state.initializing {
        a.push(KeeperAction::MarkConverged {
            generation: db.generation,
        });
    }
    a
}

/// Writes `cfg` (new recovery settings for a running standby) and applies it: PostgreSQL 13+
/// re-reads `primary_conninfo` / `primary_slot_name` on reload and restarts its WAL receiver, so
/// a standby re-pointed at a new primary keeps serving reads and re-attaches sooner than after a
/// restart; any other recovery change needs a restart.
fn apply_recovery_change(a: &mut Vec<KeeperAction>, o: &mut Observed, cfg: PgConfig) {
    let reload = o
        .applied
        .as_ref()
        .is_some_and(|c| reloadable_recovery_change(&c.recovery, &cfg.recovery, o));
    a.push(KeeperAction::WriteConfig(Box::new(cfg.clone())));
    a.push(if reload {
        KeeperAction::Reload
    } else {
        KeeperAction::Restart
    });
    o.applied = Some(cfg);
}

/// A standby's recovery settings changed only in what PostgreSQL 13 and later apply on reload
/// (`primary_conninfo`, `primary_slot_name`), with the same recovery mode.
fn reloadable_recovery_change(old: &RecoveryOptions, new: &RecoveryOptions, o: &Observed) -> bool {
    const RELOADABLE: [&str; 2] = ["primary_conninfo", "primary_slot_name"];
    let version_ok = o.version.as_ref().is_some_and(|v| v.maj >= 13);
    let rest = |r: &RecoveryOptions| {
        r.parameters
            .iter()
            .filter(|(k, _)| !RELOADABLE.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    version_ok && old.mode == new.mode && rest(old) == rest(new)
}
