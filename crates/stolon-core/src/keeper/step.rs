//! The keeper's pure step: `(observed, memory, now) -> (actions, memory', wake_at)`, and
//! [`record`], which folds each executed action's [`Outcome`] into the memory and decides the
//! follow-up steps (the restart after `pending_restart`, the configuration a promoted instance
//! runs with, the clone after a failed or forked pg_rewind).
//!
//! The runtime holds the [`KeeperMemory`], observes, calls [`step`], executes the actions in
//! order and hands every outcome to [`record`], running the follow-ups it returns before the
//! rest of the plan; it stops at the first failed action (the next pass re-plans from a fresh
//! observation).

use std::time::Duration;

use crate::failsafe::{Promise, may_promote};
use crate::model::ClusterData;
use crate::sentinel::MonoInstant;

use super::plan::{is_different_timeline_branch, plan};
use super::types::*;

/// What one pass decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The actions to execute, in order.
    pub actions: Vec<KeeperAction>,
    /// The memory to keep (and to pass to [`record`] as the actions run).
    pub memory: KeeperMemory,
    /// When the next pass is due at the latest (store changes and postgres exits may wake the
    /// keeper earlier).
    pub wake_at: MonoInstant,
}

/// Why the keeper woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The `sleepInterval` timer, or postgres exited: always a full pass.
    Tick,
    /// The store changed: a pass only when the clusterdata changed.
    StoreChange {
        /// The clusterdata read differs from the last one (revision or presence).
        clusterdata_changed: bool,
    },
    /// A re-plan right after an init/resync finished.
    Replan,
}

/// Whether a wake-up calls for a pass at all (our own info writes also change the store: they
/// must not spin the loop).
pub fn pass_wanted(wake: Wake) -> bool {
    match wake {
        Wake::Tick | Wake::Replan => true,
        Wake::StoreChange {
            clusterdata_changed,
        } => clusterdata_changed,
    }
}

/// The `sleepInterval` a usable clusterdata asks for (`None`: keep the current one).
pub fn sleep_interval_of(cd: Option<&ClusterData>) -> Option<Duration> {
    let cd = cd.filter(|cd| cd.check_usable().is_ok())?;
    let spec = cd.cluster.as_ref()?.spec.as_ref()?;
    let si = spec.effective().sleep_interval.to_std();
    (!si.is_zero()).then_some(si)
}

/// The `keeperstate` to save when a usable clusterdata names a cluster other than the one this
/// keeper last saw (`None`: nothing to save).
pub fn keeper_state_update(
    cd: Option<&ClusterData>,
    current: &KeeperLocalState,
) -> Option<KeeperLocalState> {
    let cd = cd.filter(|cd| cd.check_usable().is_ok())?;
    let uid = cd.cluster.as_ref().map(|c| c.uid.as_str()).unwrap_or("");
    (!uid.is_empty() && uid != current.cluster_uid).then(|| KeeperLocalState {
        cluster_uid: uid.to_string(),
        ..current.clone()
    })
}

/// One pass: the memory brought up to date with the observation (a stopped instance runs no
/// configuration of ours any more), the plan, and when the next timer pass is due (one
/// `sleep_interval` after the last timer pass, however many store changes come in between, or
/// earlier: when a promotion waits for the failsafe `promise`, the moment it is over).
/// `promise` is the keeper's failsafe promise not to promote (docs/failsafe.md; `None` when
/// it has none), on the same clock as `now`.
#[allow(clippy::too_many_arguments)]
pub fn step(
    cd: Option<&ClusterData>,
    id: &KeeperIdentity,
    observed: &Observed,
    mut memory: KeeperMemory,
    wake: Wake,
    now: MonoInstant,
    sleep_interval: Duration,
    promise: Option<Promise>,
) -> Step {
    if observed.running == Probe::Known(false) {
        memory.applied = None;
    }
    memory.just_promoted = false;
    let left = promise_left(promise, now);
    let actions = plan(cd, id, observed, &memory, left);
    let mut wake_at = memory.woke(wake, now, sleep_interval);
    if actions
        .iter()
        .any(|a| matches!(a, KeeperAction::Wait(WaitReason::FailsafePromise { .. })))
    {
        wake_at = wake_at.min(now.saturating_add(left));
        memory.next_tick = Some(wake_at);
    }
    Step {
        actions,
        memory,
        wake_at,
    }
}

/// What is left at `now` of a failsafe promise not to promote (zero once it is over, or without
/// one): a promotion waits while it is not zero ([`may_promote`]).
pub fn promise_left(promise: Option<Promise>, now: MonoInstant) -> Duration {
    match promise.map(|p| may_promote(p, now)) {
        Some(Err(at)) => at.saturating_sub(now),
        Some(Ok(())) | None => Duration::ZERO,
    }
}

impl KeeperMemory {
    /// Records a wake-up and returns when the next timer pass is due: one `sleep_interval`
    /// after a timer pass (or the first wake-up), unchanged otherwise. Also called when a
    /// wake-up could not run a pass (the clusterdata could not be read), so the timer still
    /// moves on.
    pub fn woke(&mut self, wake: Wake, now: MonoInstant, sleep_interval: Duration) -> MonoInstant {
        let at = match (wake, self.next_tick) {
            (Wake::Tick, _) | (_, None) => now.saturating_add(sleep_interval),
            (_, Some(t)) => t,
        };
        self.next_tick = Some(at);
        at
    }
}

/// Whether to ask the running primary which standbys are in sync: only a synchronous master
/// waiting for its synchronous standbys needs it.
pub fn wants_in_sync_standbys(
    cd: Option<&ClusterData>,
    keeper_uid: &str,
    memory: &KeeperMemory,
    running: Probe<bool>,
) -> bool {
    let sync_master = cd
        .and_then(|cd| cd.db_of_keeper(keeper_uid))
        .and_then(|d| d.spec.as_ref())
        .is_some_and(|s| s.synchronous_replication && s.role == Some(crate::model::DbRole::Master));
    running == Probe::Known(true) && sync_master && memory.wait_sync_standbys_synced
}

/// The target role label of the DB the clusterdata assigns to `keeper_uid`, if any.
pub fn target_role(cd: Option<&ClusterData>, keeper_uid: &str) -> Option<LocalRole> {
    let role = cd?.db_of_keeper(keeper_uid)?.spec.as_ref()?.role?;
    Some(match role {
        crate::model::DbRole::Master => LocalRole::Master,
        crate::model::DbRole::Standby => LocalRole::Standby,
    })
}

/// Folds the outcome of an executed `action` into `memory` and returns the follow-up actions,
/// to be executed next (before the rest of the plan).
pub fn record(
    memory: &mut KeeperMemory,
    action: &KeeperAction,
    outcome: Outcome,
) -> Vec<KeeperAction> {
    use KeeperAction as A;
    let promoted = std::mem::take(&mut memory.just_promoted);
    match (action, outcome) {
        (A::Stop, _) => memory.applied = None,
        (A::SaveDbState(s), _) => memory.db_state = s.clone(),
        (A::FinishInit, _) => {
            return vec![A::SaveDbState(LocalDbState {
                initializing: false,
                ..memory.db_state.clone()
            })];
        }
        (A::MarkConverged { generation }, _) => {
            return vec![A::SaveDbState(LocalDbState {
                generation: *generation,
                initializing: false,
                ..memory.db_state.clone()
            })];
        }
        (A::SaveInitParameters, Outcome::InitParameters(p)) => {
            return vec![A::SaveDbState(LocalDbState {
                init_pg_parameters: Some(p),
                ..memory.db_state.clone()
            })];
        }
        (A::SetWaitSyncStandbys(b), _) => memory.wait_sync_standbys_synced = *b,
        (A::WriteConfig(c), _) => {
            memory.written = Some((**c).clone());
            // A promoted instance drops its recovery settings itself: it runs with the
            // configuration written right after the promotion without a reload.
            if promoted {
                memory.applied = Some((**c).clone());
            }
        }
        (A::Start | A::Reload | A::Restart, _) => memory.applied = memory.written.clone(),
        (A::Promote, _) => memory.just_promoted = true,
        // Only an instance running with a configuration of ours can be waiting for a restart
        // to apply it.
        (A::CheckRestart { automatic }, _) if memory.applied.is_some() => {
            return vec![A::QueryPendingRestart {
                automatic: *automatic,
            }];
        }
        (A::QueryPendingRestart { automatic }, Outcome::PendingRestart(pending)) => {
            let mut next = vec![A::ReportNeedsRestart(pending)];
            if pending && *automatic {
                next.extend([
                    A::Note(Note::RestartingForParameters),
                    A::Restart,
                    A::ReportNeedsRestart(false),
                ]);
            } else if pending {
                next.push(A::Note(Note::RestartDisabled));
            }
            return next;
        }
        (A::Resync(plan), _) => {
            return match plan.rewind_from {
                Some(_) => vec![A::Rewind(plan.clone())],
                None => clone(plan),
            };
        }
        (A::Rewind(plan), Outcome::Rewind(Ok(()))) => {
            return vec![
                A::WriteConfig(Box::new(plan.config.clone())),
                A::Start,
                A::CheckRewound(plan.clone()),
            ];
        }
        (A::Rewind(plan), Outcome::Rewind(Err(e))) => {
            let mut next = vec![A::Note(Note::RewindFailed(e))];
            next.extend(clone(plan));
            return next;
        }
        (A::CheckRewound(plan), Outcome::Rewound(r)) => {
            let why = match r {
                Err(e) => Note::RewoundNotReady(e),
                Ok(local) if is_different_timeline_branch(&plan.followed_status, &local) => {
                    Note::RewoundForked
                }
                Ok(_) => return vec![],
            };
            let mut next = vec![A::Note(why), A::Stop];
            next.extend(clone(plan));
            return next;
        }
        _ => {}
    }
    vec![]
}

/// A clone from the followed DB, then the start as a standby.
fn clone(plan: &ResyncPlan) -> Vec<KeeperAction> {
    vec![
        KeeperAction::BaseBackup(Box::new(plan.clone())),
        KeeperAction::WriteConfig(Box::new(plan.config.clone())),
        KeeperAction::Start,
    ]
}

/// True while a planned switchover keeps our DB `db_uid` stopped.
pub fn switchover_stops(cd: Option<&ClusterData>, db_uid: &str) -> bool {
    cd.and_then(|cd| cd.switchover.as_ref())
        .is_some_and(|sw| sw.stops(db_uid))
}

/// What the keeper reports while a planned switchover keeps its primary stopped: the
/// switchover's UID and the shutdown checkpoint `pg_control` records. `None` unless the
/// clusterdata says the switchover stops our DB, PostgreSQL is not running and `pg_control`
/// records a clean shutdown of a primary (docs/switchover.md §3).
pub fn switchover_stop_report(
    cd: Option<&ClusterData>,
    db_uid: &str,
    running: Option<bool>,
    shutdown_checkpoint: Option<u64>,
) -> Option<(String, u64)> {
    let sw = cd?.switchover.as_ref().filter(|sw| sw.stops(db_uid))?;
    if running != Some(false) {
        return None;
    }
    let pos = shutdown_checkpoint.filter(|p| *p > 0)?;
    Some((sw.uid.clone(), pos))
}

/// What the keeper reports about itself, besides its PostgreSQL state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperReport<'a> {
    /// Our keeper state (UID, and the cluster UID last seen).
    pub keeper_state: &'a KeeperLocalState,
    /// This process's boot UUID.
    pub boot_uuid: &'a str,
    /// `postgres -V` (`0.0` when unknown).
    pub version: Option<crate::model::PostgresBinaryVersion>,
    /// `--can-be-master`.
    pub can_be_master: bool,
    /// `--can-be-synchronous-replica`.
    pub can_be_synchronous_replica: bool,
    /// `--priority`.
    pub priority: u32,
}

/// The `KeeperInfo` to hand to the publisher (its `infoUID` is drawn per write), or `None`
/// while the cluster UID is not known yet (Stolon publishes nothing until then).
pub fn keeper_info(
    report: &KeeperReport<'_>,
    pg_state: &crate::model::PostgresState,
) -> Option<crate::model::KeeperInfo> {
    let ks = report.keeper_state;
    if ks.cluster_uid.is_empty() {
        return None;
    }
    Some(crate::model::KeeperInfo {
        info_uid: String::new(),
        uid: ks.uid.clone(),
        cluster_uid: ks.cluster_uid.clone(),
        boot_uuid: report.boot_uuid.to_string(),
        postgres_binary_version: report.version.unwrap_or_default(),
        priority: Some(i64::from(report.priority)),
        postgres_state: Some(pg_state.clone()),
        can_be_master: Some(report.can_be_master),
        can_be_synchronous_replica: Some(report.can_be_synchronous_replica),
    })
}
