//! Named tests of the keeper's `plan`: every init mode and role transition, with exact action
//! lists; of the refusal to act on a failed check; and of `step` and `record` (the follow-ups
//! the core decides from the executor's outcomes).

use std::time::Duration;

use pretty_assertions::assert_eq;

use super::*;
use crate::model::{
    ClusterData, Db, DbInitMode, DbRole, DbSpec, DbStatus, FollowConfig, FollowType, Keeper,
    KeeperStatus, NewConfig, PgParameters, PitrConfig, PostgresBinaryVersion, PostgresState,
    StandbySettings, TimelineHistory,
};
use crate::pgconf::{AuthMethod, RecoveryMode, RecoveryOptions};
use KeeperAction as A;

/// The scenarios describe the local instance as one record: what the keeper observes and what
/// it remembers. [`Observed::split`] hands them to the plan as an observation and a memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Observed {
    db_state: LocalDbState,
    initialized: bool,
    standby_signal: bool,
    running: bool,
    system_id: Option<u64>,
    version: Option<PostgresBinaryVersion>,
    applied: Option<PgConfig>,
    wait_sync_standbys_synced: bool,
    in_sync_standbys: Option<Vec<String>>,
    shutdown_checkpoint: Option<u64>,
}

impl Observed {
    fn split(&self) -> (super::Observed, KeeperMemory) {
        (
            super::Observed {
                initialized: Probe::Known(self.initialized),
                standby_signal: Probe::Known(self.standby_signal),
                running: Probe::Known(self.running),
                system_id: self.system_id,
                version: self.version,
                in_sync_standbys: self.in_sync_standbys.clone(),
                shutdown_checkpoint: self.shutdown_checkpoint,
            },
            KeeperMemory {
                db_state: self.db_state.clone(),
                applied: self.applied.clone(),
                wait_sync_standbys_synced: self.wait_sync_standbys_synced,
                ..Default::default()
            },
        )
    }
}

/// The plan for a scenario.
fn plan(cd: Option<&ClusterData>, id: &KeeperIdentity, o: &Observed) -> Vec<KeeperAction> {
    let (observed, memory) = o.split();
    super::plan(cd, id, &observed, &memory, Duration::ZERO)
}

const BOOT: &str = "boot-1";

fn id() -> KeeperIdentity {
    KeeperIdentity {
        uid: "k1".into(),
        boot_uuid: BOOT.into(),
        pg_listen_address: "127.0.0.1".into(),
        pg_port: 5432,
        su_username: "su".into(),
        su_auth: AuthMethod::Md5,
        su_has_password: true,
        repl_username: "repl".into(),
        repl_auth: AuthMethod::Md5,
        repl_passfile: Some("/data/replpass".into()),
    }
}

fn keeper(uid: &str, boot: &str) -> Keeper {
    Keeper {
        uid: uid.into(),
        generation: 1,
        status: KeeperStatus {
            boot_uuid: boot.into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn db(uid: &str, keeper: &str, role: DbRole, mode: DbInitMode) -> Db {
    Db {
        uid: uid.into(),
        generation: 3,
        spec: Some(DbSpec {
            keeper_uid: keeper.into(),
            max_standbys: 20,
            additional_wal_senders: 5,
            role: Some(role),
            init_mode: Some(mode),
            ..Default::default()
        }),
        status: DbStatus {
            listen_address: format!("10.0.0.{}", &keeper[1..]),
            port: "5432".into(),
            system_id: "7000".into(),
            timeline_id: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// k1 runs db1 (`role`, `mode`); k2 runs the master db2 when k1 is a standby.
fn cd(role: DbRole, mode: DbInitMode) -> ClusterData {
    let mut cd: ClusterData = serde_json::from_str(
        r#"{"formatVersion":1,"cluster":{"uid":"c1","spec":{"initMode":"new"}}}"#,
    )
    .unwrap();
    cd.keepers.insert("k1".into(), keeper("k1", BOOT));
    cd.keepers.insert("k2".into(), keeper("k2", "other"));
    let mut d1 = db("db1", "k1", role, mode);
    if role == DbRole::Standby {
        let mut d2 = db("db2", "k2", DbRole::Master, DbInitMode::None);
        d2.spec.as_mut().unwrap().followers = Some(vec!["db1".into()]);
        d1.spec.as_mut().unwrap().follow_config = Some(FollowConfig {
            kind: Some(FollowType::Internal),
            db_uid: "db2".into(),
            ..Default::default()
        });
        cd.dbs.insert("db2".into(), d2);
        cd.cluster.as_mut().unwrap().status.master = "db2".into();
    } else {
        cd.cluster.as_mut().unwrap().status.master = "db1".into();
    }
    cd.dbs.insert("db1".into(), d1);
    cd
}

fn spec_mut<'a>(cd: &'a mut ClusterData, uid: &str) -> &'a mut DbSpec {
    cd.dbs.get_mut(uid).unwrap().spec.as_mut().unwrap()
}

fn v15() -> Option<PostgresBinaryVersion> {
    Some(PostgresBinaryVersion { maj: 15, min: 4 })
}

/// A fresh keeper: nothing on disk.
fn empty() -> Observed {
    Observed {
        version: v15(),
        ..Default::default()
    }
}

fn ctx_params(cd: &ClusterData, o: &Observed) -> PgParameters {
    let spec = cd.dbs["db1"].spec.as_ref().unwrap();
    let empty = PgParameters::new();
    crate::pgconf::postgresql_parameters(&crate::pgconf::ParamsInput {
        spec,
        init_parameters: o.db_state.init_pg_parameters.as_ref().unwrap_or(&empty),
        listen_address: "127.0.0.1",
        port: 5432,
        version: o.version,
    })
}

fn hba(cd: &ClusterData, only_internal: bool) -> Vec<String> {
    let spec = cd.dbs["db1"].spec.as_ref().unwrap();
    crate::pgconf::generate_hba(&crate::pgconf::HbaInput {
        cd,
        db_uid: "db1",
        spec,
        access_mode: crate::model::SuReplAccessMode::All,
        su_username: "su",
        su_auth: AuthMethod::Md5,
        repl_username: "repl",
        repl_auth: AuthMethod::Md5,
        only_internal,
    })
}

fn standby_recovery() -> RecoveryOptions {
    let ss = StandbySettings {
        primary_conninfo: "application_name=stolon_db1 host=10.0.0.2 passfile=/data/replpass port=5432 sslmode=prefer user=repl".into(),
        primary_slot_name: "stolon_db1".into(),
        recovery_min_apply_delay: String::new(),
    };
    RecoveryOptions::new(RecoveryMode::Standby, Some(&ss), None, None)
}

fn cfg(cd: &ClusterData, o: &Observed, only_internal: bool, r: RecoveryOptions) -> PgConfig {
    PgConfig {
        parameters: ctx_params(cd, o),
        hba: hba(cd, only_internal),
        recovery: r,
    }
}

/// A running, converged instance of db1 in `role`.
fn converged(cd: &ClusterData, role: DbRole) -> Observed {
    let mut o = empty();
    o.db_state = LocalDbState {
        uid: "db1".into(),
        generation: 3,
        initializing: false,
        init_pg_parameters: None,
    };
    o.initialized = true;
    o.running = true;
    o.system_id = Some(7000);
    o.standby_signal = role == DbRole::Standby;
    let r = if role == DbRole::Standby {
        standby_recovery()
    } else {
        RecoveryOptions::none()
    };
    o.applied = Some(cfg(cd, &o, false, r));
    o
}

fn wait_ready() -> A {
    A::WaitReady {
        timeout: Some(Duration::from_secs(60)),
    }
}

fn begin(uid: &str) -> LocalDbState {
    LocalDbState {
        uid: uid.into(),
        generation: 0,
        initializing: true,
        init_pg_parameters: None,
    }
}

fn uid_changed(local: &str) -> Vec<A> {
    vec![
        A::Note(Note::DbUidChanged {
            local: local.into(),
            assigned: "db1".into(),
        }),
        A::SetWaitSyncStandbys(false),
    ]
}

#[test]
fn no_cluster_data_waits() {
    assert_eq!(
        plan(None, &id(), &empty()),
        vec![A::Wait(WaitReason::NoClusterData)]
    );
}

#[test]
fn unsupported_format_version_fails() {
    let mut c = cd(DbRole::Master, DbInitMode::New);
    c.format_version = 2;
    let p = plan(Some(&c), &id(), &empty());
    assert!(
        matches!(p.as_slice(), [A::Fail(PlanError::InvalidClusterData(_))]),
        "{p:?}"
    );
}

#[test]
fn keeper_not_in_cluster_data_leaves_postgres_alone() {
    let mut c = cd(DbRole::Master, DbInitMode::New);
    c.keepers.remove("k1");
    let mut o = empty();
    o.running = true;
    assert_eq!(
        plan(Some(&c), &id(), &o),
        vec![A::Wait(WaitReason::KeeperNotInClusterData)]
    );
}

#[test]
fn no_db_assigned_stops_postgres() {
    let mut c = cd(DbRole::Master, DbInitMode::New);
    c.dbs.clear();
    c.cluster.as_mut().unwrap().status.master.clear();
    let mut o = empty();
    o.running = true;
    assert_eq!(
        plan(Some(&c), &id(), &o),
        vec![A::Stop, A::Wait(WaitReason::NoDbAssigned)]
    );
    o.running = false;
    assert_eq!(
        plan(Some(&c), &id(), &o),
        vec![A::Wait(WaitReason::NoDbAssigned)]
    );
}

#[test]
fn stale_boot_uuid_stops_and_waits() {
    let mut c = cd(DbRole::Master, DbInitMode::New);
    c.keepers.get_mut("k1").unwrap().status.boot_uuid = "previous-process".into();
    let o = converged(&c, DbRole::Master);
    assert_eq!(
        plan(Some(&c), &id(), &o),
        vec![A::Stop, A::Wait(WaitReason::BootUuidMismatch)]
    );
}

#[test]
fn init_new_runs_initdb_roles_then_replans() {
    let c = cd(DbRole::Master, DbInitMode::New);
    let mut io = empty();
    io.db_state = begin("db1");
    let mut want = uid_changed("");
    want.extend([
        A::Note(Note::Initializing),
        A::SaveDbState(begin("db1")),
        A::Stop,
        A::RemoveData,
        A::InitDb(NewConfig::default()),
        A::StartTmpMerged(Box::new(cfg(&c, &io, false, RecoveryOptions::none()))),
        wait_ready(),
        A::CreateRoles(RolesPlan::Separate {
            set_su_password: true,
        }),
        A::Stop,
        A::FinishInit,
        A::Replan,
    ]);
    assert_eq!(plan(Some(&c), &id(), &empty()), want);
}

#[test]
fn init_new_with_previous_config_saves_init_parameters_and_su_is_repl() {
    let mut c = cd(DbRole::Master, DbInitMode::New);
    spec_mut(&mut c, "db1").include_previous_config = true;
    let mut ident = id();
    ident.repl_username = "su".into();
    let p = plan(Some(&c), &ident, &empty());
    let i = p
        .iter()
        .position(|a| *a == A::SaveInitParameters)
        .expect("saves init params");
    assert_eq!(p[i - 1], wait_ready());
    assert_eq!(p[i + 1], A::CreateRoles(RolesPlan::SuIsRepl));
}

#[test]
fn init_new_trust_superuser_sets_no_password() {
    let c = cd(DbRole::Master, DbInitMode::New);
    let mut ident = id();
    ident.su_auth = AuthMethod::Trust;
    ident.su_has_password = false;
    let p = plan(Some(&c), &ident, &empty());
    assert!(p.contains(&A::CreateRoles(RolesPlan::Separate {
        set_su_password: false
    })));
}

#[test]
fn init_existing_keeps_data() {
    let c = cd(DbRole::Master, DbInitMode::Existing);
    let mut o = empty();
    o.initialized = true;
    o.db_state.uid = "olddb".into();
    let st = LocalDbState {
        uid: "db1".into(),
        ..Default::default()
    };
    let mut io = o.clone();
    io.db_state = st.clone();
    let mut want = uid_changed("olddb");
    want.extend([
        A::SaveDbState(st),
        A::Stop,
        A::StartTmpMerged(Box::new(cfg(&c, &io, false, RecoveryOptions::none()))),
        wait_ready(),
        A::Stop,
        A::FinishInit,
        A::Replan,
    ]);
    assert_eq!(plan(Some(&c), &id(), &o), want);
}

#[test]
fn init_pitr_restores_and_waits_for_recovery() {
    let mut c = cd(DbRole::Master, DbInitMode::Pitr);
    spec_mut(&mut c, "db1").pitr_config = Some(PitrConfig {
        data_restore_command: "tar xf /b.tar -C %d".into(),
        archive_recovery_settings: Some(crate::model::ArchiveRecoverySettings {
            restore_command: "cp /a/%f %p".into(),
        }),
        recovery_target_settings: None,
    });
    c.cluster
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .sync_timeout = Some(crate::GoDuration::from_secs(0));
    let mut io = empty();
    io.db_state = begin("db1");
    let r = RecoveryOptions::new(
        RecoveryMode::Recovery,
        None,
        Some(&crate::model::ArchiveRecoverySettings {
            restore_command: "cp /a/%f %p".into(),
        }),
        None,
    );
    let mut want = uid_changed("");
    want.extend([
        A::Note(Note::Initializing),
        A::SaveDbState(begin("db1")),
        A::Stop,
        A::RemoveData,
        A::RestoreData {
            command: "tar xf /b.tar -C %d".into(),
        },
        A::StartTmpMerged(Box::new(cfg(&c, &io, false, r))),
        A::WaitRecoveryDone { timeout: None },
        A::WaitReady { timeout: None },
        A::Stop,
        A::FinishInit,
        A::Replan,
    ]);
    assert_eq!(plan(Some(&c), &id(), &empty()), want);
}

#[test]
fn init_pitr_of_a_standby_cluster_fed_by_the_archive_stays_in_standby_mode() {
    // Stolon's TestPromoteStandbyClusterArchiveRecovery: external follow config without standby
    // settings, only a restore_command. Recovery must not end (and promote) at the archive's end.
    let mut c = cd(DbRole::Master, DbInitMode::Pitr);
    let archive = crate::model::ArchiveRecoverySettings {
        restore_command: "cp /a/%f %p".into(),
    };
    {
        let s = spec_mut(&mut c, "db1");
        s.role = Some(DbRole::Standby);
        s.pitr_config = Some(PitrConfig {
            data_restore_command: "tar xf /b.tar -C %d".into(),
            archive_recovery_settings: Some(archive.clone()),
            recovery_target_settings: None,
        });
        s.follow_config = Some(FollowConfig {
            kind: Some(FollowType::External),
            archive_recovery_settings: Some(archive.clone()),
            ..Default::default()
        });
    }
    let p = plan(Some(&c), &id(), &empty());
    let started = p
        .iter()
        .find_map(|a| match a {
            A::StartTmpMerged(cfg) => Some(cfg.recovery.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no start in {p:?}"));
    assert_eq!(started.mode, RecoveryMode::Standby);
    assert_eq!(started.parameters["restore_command"], "cp /a/%f %p");
    assert!(!started.parameters.contains_key("primary_conninfo"));
    assert!(
        !p.iter().any(|a| matches!(a, A::WaitRecoveryDone { .. })),
        "{p:?}"
    );
}

#[test]
fn init_pitr_without_config_fails() {
    let c = cd(DbRole::Master, DbInitMode::Pitr);
    let p = plan(Some(&c), &id(), &empty());
    assert_eq!(
        p.last(),
        Some(&A::Fail(PlanError::NoPitrConfig("db1".into())))
    );
}

fn resync_plan(c: &ClusterData, rewind: bool) -> A {
    let mut io = empty();
    io.db_state = begin("db1");
    A::Resync(Box::new(ResyncPlan {
        rewind_from: rewind.then(|| PgEndpoint {
            host: "10.0.0.2".into(),
            port: "5432".into(),
        }),
        clone_from: PgEndpoint {
            host: "10.0.0.2".into(),
            port: "5432".into(),
        },
        slot: "stolon_db1".into(),
        application_name: "stolon_db1".into(),
        config: cfg(c, &io, false, standby_recovery()),
        wait_ready: Some(Duration::from_secs(60)),
        followed_status: c.dbs["db2"].status.clone(),
    }))
}

#[test]
fn init_resync_clones_an_empty_keeper() {
    let mut c = cd(DbRole::Standby, DbInitMode::Resync);
    spec_mut(&mut c, "db1").use_pgrewind = true;
    let mut want = uid_changed("");
    want.extend([
        A::Note(Note::Resyncing),
        A::SaveDbState(begin("db1")),
        A::Stop,
        resync_plan(&c, false),
        A::FinishInit,
        A::Replan,
    ]);
    assert_eq!(plan(Some(&c), &id(), &empty()), want);
}

#[test]
fn init_resync_rewinds_old_primary_with_same_system_id() {
    let mut c = cd(DbRole::Standby, DbInitMode::Resync);
    spec_mut(&mut c, "db1").use_pgrewind = true;
    // The old primary: initialised, running as master, same system id.
    let mut o = converged(&c, DbRole::Master);
    o.db_state.uid = "olddb".into();
    let mut want = uid_changed("olddb");
    want.extend([
        A::Note(Note::Resyncing),
        A::SaveDbState(begin("db1")),
        A::Stop,
        resync_plan(&c, true),
        A::FinishInit,
        A::Replan,
    ]);
    assert_eq!(plan(Some(&c), &id(), &o), want);
}

#[test]
fn resync_does_not_rewind_without_pgrewind_password_or_same_system() {
    let mut c = cd(DbRole::Standby, DbInitMode::Resync);
    let mut o = converged(&c, DbRole::Master);
    o.db_state.uid = "olddb".into();
    let rewinds = |c: &ClusterData, ident: &KeeperIdentity, o: &Observed| {
        plan(Some(c), ident, o)
            .iter()
            .any(|a| matches!(a, A::Resync(r) if r.rewind_from.is_some()))
    };
    assert!(!rewinds(&c, &id(), &o), "usePgrewind off");
    spec_mut(&mut c, "db1").use_pgrewind = true;
    assert!(rewinds(&c, &id(), &o));
    let mut ident = id();
    ident.su_has_password = false;
    assert!(!rewinds(&c, &ident, &o), "no superuser password");
    o.system_id = Some(1234);
    assert!(!rewinds(&c, &id(), &o), "different system id");
}

#[test]
fn resync_with_missing_followed_db_fails() {
    let mut c = cd(DbRole::Standby, DbInitMode::Resync);
    c.dbs.remove("db2");
    c.cluster.as_mut().unwrap().status.master.clear();
    let p = plan(Some(&c), &id(), &empty());
    assert_eq!(
        p.last(),
        Some(&A::Fail(PlanError::FollowedDbMissing("db2".into())))
    );
}

#[test]
fn init_mode_none_with_other_data_refuses() {
    let c = cd(DbRole::Master, DbInitMode::None);
    let p = plan(Some(&c), &id(), &empty());
    assert_eq!(p.last(), Some(&A::Fail(PlanError::InitModeNone)));
    assert!(!p.contains(&A::RemoveData));
    assert!(
        PlanError::InitModeNone
            .to_string()
            .contains("init mode is none")
    );
}

#[test]
fn interrupted_init_removes_data_before_anything_else() {
    let c = cd(DbRole::Master, DbInitMode::New);
    let mut o = empty();
    o.db_state = begin("db1");
    o.initialized = true;
    o.running = true;
    let p = plan(Some(&c), &id(), &o);
    assert_eq!(
        p[..4].to_vec(),
        vec![
            A::Note(Note::RemovingInterruptedInit),
            A::Stop,
            A::RemoveData,
            A::SaveDbState(LocalDbState::default()),
        ]
    );
    assert!(p.contains(&A::InitDb(NewConfig::default())));
}

#[test]
fn master_stopped_is_started() {
    let c = cd(DbRole::Master, DbInitMode::New);
    let mut o = converged(&c, DbRole::Master);
    o.running = false;
    o.applied = None;
    o.db_state.generation = 0;
    let conf = cfg(&c, &o, false, RecoveryOptions::none());
    assert_eq!(
        plan(Some(&c), &id(), &o),
        vec![
            A::Note(Note::RequestedRole("master")),
            A::WriteConfig(Box::new(conf)),
            A::Start,
            wait_ready(),
            A::Note(Note::AlreadyMaster),
            A::RefreshSlots { wanted: vec![] },
            A::Note(Note::ParametersNotChanged),
            A::Note(Note::HbaNotChanged),
            A::CheckRestart { automatic: false },
            A::MarkConverged { generation: 3 },
        ]
    );
}

#[test]
fn master_converged_only_checks() {
    let mut c = cd(DbRole::Master, DbInitMode::New);
    spec_mut(&mut c, "db1").followers = Some(vec!["db9".into()]);
    spec_mut(&mut c, "db1").additional_replication_slots = Some(vec!["extra".into()]);
    let o = converged(&c, DbRole::Master);
    assert_eq!(
        plan(Some(&c), &id(), &o),
        vec![
            A::Note(Note::RequestedRole("master")),
            A::Note(Note::AlreadyMaster),
            A::RefreshSlots {
                wanted: vec!["stolon_db9".into(), "stolon_extra".into()]
            },
            A::Note(Note::ParametersNotChanged),
            A::Note(Note::HbaNotChanged),
            A::CheckRestart { automatic: false },
        ]
    );
}

#[test]
fn paused_cluster_reports_a_needed_restart_without_restarting() {
    let mut c = cd(DbRole::Master, DbInitMode::New);
    let spec = c.cluster.as_mut().unwrap().spec.as_mut().unwrap();
    spec.automatic_pg_restart = Some(true);
    spec.paused = Some(true);
    let o = converged(&c, DbRole::Master);
    assert_eq!(
        plan(Some(&c), &id(), &o),
        vec![
            A::Note(Note::RequestedRole("master")),
            A::Note(Note::AlreadyMaster),
            A::RefreshSlots { wanted: vec![] },
            A::Note(Note::ParametersNotChanged),
            A::Note(Note::HbaNotChanged),
            A::CheckRestart { automatic: false },
        ]
    );
    // Resumed: the same check restarts again.
    c.cluster.as_mut().unwrap().spec.as_mut().unwrap().paused = None;
    assert!(plan(Some(&c), &id(), &o).contains(&A::CheckRestart { automatic: true }));
}

#[test]
fn running_standby_assigned_master_is_promoted() {
    let mut c = cd(DbRole::Master, DbInitMode::New);
    c.cluster
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .automatic_pg_restart = Some(true);
    let o = converged(&c, DbRole::Standby);
    let applied = o.applied.clone().unwrap();
    let promoted = PgConfig {
        recovery: RecoveryOptions::none(),
        ..applied
    };
    assert_eq!(
        plan(Some(&c), &id(), &o),
        vec![
            A::Note(Note::RequestedRole("master")),
            A::Promote,
            A::WriteConfig(Box::new(promoted)),
            A::RefreshSlots { wanted: vec![] },
            A::Note(Note::ParametersNotChanged),
            A::Note(Note::HbaNotChanged),
            A::CheckRestart { automatic: true },
        ]
    );
}

#[test]
fn stopped_standby_assigned_master_starts_as_standby_then_promotes() {
    let c = cd(DbRole::Master, DbInitMode::New);
    let mut o = converged(&c, DbRole::Standby);
    o.running = false;
    o.applied = None;
    let p = plan(Some(&c), &id(), &o);
    let A::WriteConfig(first) = &p[1] else {
        panic!("{p:?}")
    };
    assert_eq!(first.recovery.mode, RecoveryMode::Standby);
    assert!(!first.recovery.parameters.contains_key("primary_conninfo"));
    assert_eq!(p[2..5].to_vec(), vec![A::Start, wait_ready(), A::Promote]);
    let A::WriteConfig(after) = &p[5] else {
        panic!("{p:?}")
    };
    assert_eq!(after.recovery, RecoveryOptions::none());
}

/// Failsafe mode: a keeper whose DB is elected while its promise not to promote (given to the
/// former master's keeper) still runs keeps its standby as it is, says how long it waits, and
/// wakes when the promise is over.
#[test]
fn elected_with_a_live_failsafe_promise_waits_to_promote() {
    let c = cd(DbRole::Master, DbInitMode::New);
    let (observed, memory) = converged(&c, DbRole::Standby).split();
    let si = Duration::from_secs(5);
    let now = Duration::from_secs(100);
    let promise = crate::failsafe::Promise {
        until: Duration::from_secs(103),
    };
    let s = step(
        Some(&c),
        &id(),
        &observed,
        memory,
        Wake::Tick,
        now,
        si,
        Some(promise),
    );
    assert_eq!(
        s.actions,
        vec![
            A::Note(Note::RequestedRole("master")),
            A::Wait(WaitReason::FailsafePromise {
                remaining: Duration::from_secs(3),
            }),
        ]
    );
    assert!(!s.actions.contains(&A::Promote));
    // The next pass comes when the promise is over, not a whole sleep interval later.
    assert_eq!(s.wake_at, Duration::from_secs(103));
    assert_eq!(s.memory.next_tick, Some(Duration::from_secs(103)));
    assert!(
        WaitReason::FailsafePromise {
            remaining: Duration::from_millis(2500)
        }
        .to_string()
        .contains("2.500s"),
    );

    // A stopped standby is started as a standby, and still not promoted.
    let mut stopped = converged(&c, DbRole::Standby);
    stopped.running = false;
    stopped.applied = None;
    let (observed, memory) = stopped.split();
    let s = step(
        Some(&c),
        &id(),
        &observed,
        memory,
        Wake::Tick,
        now,
        si,
        Some(promise),
    );
    assert_eq!(s.actions[2..].to_vec()[..2], [A::Start, wait_ready()]);
    assert_eq!(
        s.actions.last(),
        Some(&A::Wait(WaitReason::FailsafePromise {
            remaining: Duration::from_secs(3),
        }))
    );
    assert!(!s.actions.contains(&A::Promote));
}

/// Failsafe mode: once the promise is over, the elected keeper promotes exactly as without it.
#[test]
fn elected_after_the_failsafe_promise_is_over_promotes() {
    let c = cd(DbRole::Master, DbInitMode::New);
    let o = converged(&c, DbRole::Standby);
    let (observed, memory) = o.split();
    let si = Duration::from_secs(5);
    let promise = crate::failsafe::Promise {
        until: Duration::from_secs(103),
    };
    for now in [Duration::from_secs(103), Duration::from_secs(200)] {
        let s = step(
            Some(&c),
            &id(),
            &observed,
            memory.clone(),
            Wake::Tick,
            now,
            si,
            Some(promise),
        );
        assert!(s.actions.contains(&A::Promote), "{now:?}: {:?}", s.actions);
        assert_eq!(s.actions, plan(Some(&c), &id(), &o));
        assert_eq!(s.wake_at, now + si);
    }
}

/// Without failsafe mode there is no promise: the elected keeper promotes at once, as always.
#[test]
fn elected_without_failsafe_promotes_at_once() {
    let c = cd(DbRole::Master, DbInitMode::New);
    let o = converged(&c, DbRole::Standby);
    let (observed, memory) = o.split();
    let now = Duration::from_secs(1);
    let s = step(
        Some(&c),
        &id(),
        &observed,
        memory,
        Wake::Tick,
        now,
        Duration::from_secs(5),
        None,
    );
    assert_eq!(
        s.actions[..2],
        [A::Note(Note::RequestedRole("master")), A::Promote]
    );
    assert_eq!(promise_left(None, now), Duration::ZERO);
}

/// The promise only holds back a promotion: a master already running as one, and a standby,
/// plan exactly as without it.
#[test]
fn a_failsafe_promise_changes_nothing_but_a_promotion() {
    let promise = Some(crate::failsafe::Promise {
        until: Duration::from_secs(1000),
    });
    let now = Duration::from_secs(1);
    for (c, role) in [
        (cd(DbRole::Master, DbInitMode::None), DbRole::Master),
        (cd(DbRole::Standby, DbInitMode::Resync), DbRole::Standby),
    ] {
        let o = converged(&c, role);
        let (observed, memory) = o.split();
        let s = step(
            Some(&c),
            &id(),
            &observed,
            memory,
            Wake::Tick,
            now,
            Duration::from_secs(5),
            promise,
        );
        assert_eq!(s.actions, plan(Some(&c), &id(), &o), "{role:?}");
    }
}

#[test]
fn master_never_demoted_in_place() {
    let c = cd(DbRole::Standby, DbInitMode::Resync);
    // The keeper still has db1 as an initialised primary, and db1 is now assigned standby.
    let o = converged(&c, DbRole::Master);
    let p = plan(Some(&c), &id(), &o);
    assert_eq!(
        p,
        vec![
            A::Note(Note::RequestedRole("standby")),
            A::Fail(PlanError::MasterToStandby)
        ]
    );
    assert_eq!(
        PlanError::MasterToStandby.to_string(),
        "cannot move from master role to standby role"
    );
}

fn fenced_recovery() -> RecoveryOptions {
    RecoveryOptions::new(RecoveryMode::Standby, None, None, None)
}

#[test]
fn fenced_old_master_runs_read_only_without_a_source() {
    // The sentinel replaced this master: its DB is now a standby that follows nothing.
    let mut c = cd(DbRole::Standby, DbInitMode::Resync);
    for db in c.dbs.values_mut() {
        db.spec.as_mut().unwrap().follow_config = None;
    }
    let o = converged(&c, DbRole::Master);
    assert!(o.running, "the old primary is still running");
    let fenced = cfg(&c, &o, false, fenced_recovery());
    assert!(!fenced.recovery.parameters.contains_key("primary_conninfo"));
    let p = plan(Some(&c), &id(), &o);
    assert_eq!(
        p[..5],
        [
            A::Note(Note::Fenced),
            A::Stop,
            A::WriteConfig(Box::new(fenced.clone())),
            A::Start,
            A::RefreshSlots { wanted: vec![] },
        ]
    );
    // The fencing bumped the DB's generation: the keeper converges to it (the sentinel only
    // elects converged DBs).
    let mut bumped = c.clone();
    bumped.dbs.get_mut("db1").unwrap().generation = 4;
    let p = plan(Some(&bumped), &id(), &o);
    assert_eq!(p.last(), Some(&A::MarkConverged { generation: 4 }), "{p:?}");

    // A stopped (crashed) former primary is started read-only too.
    let mut stopped = o.clone();
    stopped.running = false;
    let p = plan(Some(&c), &id(), &stopped);
    assert_eq!(
        p[..4],
        [
            A::Note(Note::Fenced),
            A::WriteConfig(Box::new(fenced.clone())),
            A::Start,
            A::RefreshSlots { wanted: vec![] },
        ]
    );

    // Already running fenced: nothing to do. Still following its old source: drop it.
    let mut running = converged(&c, DbRole::Standby);
    running.applied = Some(fenced.clone());
    let p = plan(Some(&c), &id(), &running);
    assert!(
        !p.iter()
            .any(|a| matches!(a, A::Stop | A::Start | A::Restart | A::WriteConfig(_))),
        "{p:?}"
    );
    let following = converged(&c, DbRole::Standby);
    let p = plan(Some(&c), &id(), &following);
    assert_eq!(p[1], A::WriteConfig(Box::new(fenced)));
    assert_eq!(p[2], A::Reload);
}

#[test]
fn master_without_data_fails() {
    let c = cd(DbRole::Master, DbInitMode::New);
    let mut o = converged(&c, DbRole::Master);
    o.initialized = false;
    o.running = false;
    let p = plan(Some(&c), &id(), &o);
    assert_eq!(p.last(), Some(&A::Fail(PlanError::NotInitialized)));
}

#[test]
fn stopped_standby_is_started_following_its_db() {
    let c = cd(DbRole::Standby, DbInitMode::Resync);
    let mut o = converged(&c, DbRole::Standby);
    o.running = false;
    o.applied = None;
    assert_eq!(
        plan(Some(&c), &id(), &o),
        vec![
            A::Note(Note::RequestedRole("standby")),
            A::WriteConfig(Box::new(cfg(&c, &o, false, standby_recovery()))),
            A::Start,
            A::RefreshSlots { wanted: vec![] },
            A::Note(Note::ParametersNotChanged),
            A::Note(Note::HbaNotChanged),
            A::CheckRestart { automatic: false },
        ]
    );
}

#[test]
fn standby_reloads_when_followed_db_moves() {
    // PostgreSQL 13+: a new primary_conninfo is applied by a reload.
    let mut c = cd(DbRole::Standby, DbInitMode::Resync);
    let o = converged(&c, DbRole::Standby);
    c.dbs.get_mut("db2").unwrap().status.port = "6000".into();
    let p = plan(Some(&c), &id(), &o);
    assert_eq!(p[1], A::Note(Note::AlreadyStandby));
    assert_eq!(p[2], A::Note(Note::RecoveryChanged));
    let A::WriteConfig(w) = &p[3] else {
        panic!("{p:?}")
    };
    assert!(w.recovery.parameters["primary_conninfo"].contains("port=6000"));
    assert_eq!(p[4], A::Reload);
    assert!(!p.contains(&A::Restart), "{p:?}");
    assert!(p.contains(&A::Note(Note::ParametersNotChanged)));
}

#[test]
fn standby_restarts_when_followed_db_moves_before_pg13() {
    let mut c = cd(DbRole::Standby, DbInitMode::Resync);
    let mut o = converged(&c, DbRole::Standby);
    o.version = Some(PostgresBinaryVersion { maj: 12, min: 9 });
    o.applied = Some(cfg(&c, &o, false, standby_recovery()));
    c.dbs.get_mut("db2").unwrap().status.port = "6000".into();
    let p = plan(Some(&c), &id(), &o);
    assert_eq!(p[2], A::Note(Note::RecoveryChanged));
    assert_eq!(p[4], A::Restart);
    assert!(!p.contains(&A::Reload), "{p:?}");
}

#[test]
fn standby_restarts_when_more_than_the_primary_changes() {
    // A recovery change beyond primary_conninfo / primary_slot_name (here the last applied
    // settings lacked the timeline target) still needs a restart, whatever the version.
    let mut c = cd(DbRole::Standby, DbInitMode::Resync);
    let mut o = converged(&c, DbRole::Standby);
    let mut old = standby_recovery();
    old.parameters.remove("recovery_target_timeline");
    o.applied = Some(cfg(&c, &o, false, old));
    c.dbs.get_mut("db2").unwrap().status.port = "6000".into();
    let p = plan(Some(&c), &id(), &o);
    assert_eq!(p[2], A::Note(Note::RecoveryChanged));
    assert_eq!(p[4], A::Restart);
    // Unknown version: restart too.
    let mut o = converged(&c, DbRole::Standby);
    o.version = None;
    o.applied = Some(cfg(&c, &o, false, standby_recovery()));
    let p = plan(Some(&c), &id(), &o);
    assert_eq!(p[4], A::Restart, "{p:?}");
}

#[test]
fn standby_without_data_waits() {
    let c = cd(DbRole::Standby, DbInitMode::Resync);
    let mut o = converged(&c, DbRole::Standby);
    o.initialized = false;
    o.running = false;
    let p = plan(Some(&c), &id(), &o);
    assert_eq!(p.last(), Some(&A::Wait(WaitReason::LocalRoleNone)));
}

#[test]
fn external_standby_uses_standby_settings() {
    let mut c = cd(DbRole::Standby, DbInitMode::Resync);
    let mut o = converged(&c, DbRole::Standby);
    spec_mut(&mut c, "db1").follow_config = Some(FollowConfig {
        kind: Some(FollowType::External),
        db_uid: String::new(),
        standby_settings: Some(StandbySettings {
            primary_conninfo: "host=remote port=5432".into(),
            ..Default::default()
        }),
        archive_recovery_settings: Some(crate::model::ArchiveRecoverySettings {
            restore_command: "cp /a/%f %p".into(),
        }),
    });
    o.applied = None;
    o.running = false;
    let p = plan(Some(&c), &id(), &o);
    let A::WriteConfig(w) = &p[1] else {
        panic!("{p:?}")
    };
    assert_eq!(
        w.recovery.parameters["primary_conninfo"],
        "host=remote port=5432"
    );
    assert_eq!(w.recovery.parameters["restore_command"], "cp /a/%f %p");
    assert!(!w.recovery.parameters.contains_key("primary_slot_name"));
    // A standby cluster's master keeps slots for the cluster's other keepers.
    spec_mut(&mut c, "db1").followers = Some(vec!["db9".into()]);
    let p = plan(Some(&c), &id(), &o);
    assert!(
        p.contains(&A::RefreshSlots {
            wanted: vec!["stolon_db9".into()]
        }),
        "{p:?}"
    );
}

#[test]
fn parameter_change_reloads() {
    let mut c = cd(DbRole::Master, DbInitMode::New);
    let o = converged(&c, DbRole::Master);
    spec_mut(&mut c, "db1")
        .pg_parameters
        .insert("work_mem".into(), "8MB".into());
    c.dbs.get_mut("db1").unwrap().generation = 4;
    let conf = cfg(&c, &o, false, RecoveryOptions::none());
    assert_eq!(conf.parameters["work_mem"], "8MB");
    assert_eq!(
        plan(Some(&c), &id(), &o),
        vec![
            A::Note(Note::RequestedRole("master")),
            A::Note(Note::AlreadyMaster),
            A::RefreshSlots { wanted: vec![] },
            A::Note(Note::ParametersChanged),
            A::Note(Note::HbaNotChanged),
            A::WriteConfig(Box::new(conf)),
            A::Reload,
            A::CheckRestart { automatic: false },
            A::MarkConverged { generation: 4 },
        ]
    );
}

#[test]
fn hba_change_reloads() {
    let mut c = cd(DbRole::Master, DbInitMode::New);
    let o = converged(&c, DbRole::Master);
    spec_mut(&mut c, "db1").pg_hba = Some(vec![]);
    let p = plan(Some(&c), &id(), &o);
    assert!(p.contains(&A::Note(Note::HbaChanged)));
    assert!(p.contains(&A::Note(Note::ParametersNotChanged)));
    assert!(p.contains(&A::Reload));
    let A::WriteConfig(w) = p.iter().find(|a| matches!(a, A::WriteConfig(_))).unwrap() else {
        unreachable!()
    };
    assert!(!w.hba.iter().any(|l| l.starts_with("host all all")));
}

#[test]
fn sync_master_restart_allows_only_internal_until_standbys_in_sync() {
    let mut c = cd(DbRole::Master, DbInitMode::New);
    {
        let s = spec_mut(&mut c, "db1");
        s.synchronous_replication = true;
        s.synchronous_standbys = Some(vec!["db7".into()]);
    }
    let mut o = converged(&c, DbRole::Master);
    o.running = false;
    o.applied = None;
    let p = plan(Some(&c), &id(), &o);
    assert_eq!(p[1], A::SetWaitSyncStandbys(true));
    let A::WriteConfig(w) = &p[2] else {
        panic!("{p:?}")
    };
    assert_eq!(w.hba, hba(&c, true));
    assert!(p.contains(&A::Note(Note::HbaNotChanged)));

    // Running, waiting, standby not yet in sync: still internal only.
    let mut o = converged(&c, DbRole::Master);
    o.wait_sync_standbys_synced = true;
    o.applied.as_mut().unwrap().hba = hba(&c, true);
    o.in_sync_standbys = Some(vec![]);
    let p = plan(Some(&c), &id(), &o);
    assert!(!p.contains(&A::SetWaitSyncStandbys(false)));
    assert!(p.contains(&A::Note(Note::HbaNotChanged)));

    // In sync: all rules again, reload.
    o.in_sync_standbys = Some(vec!["db7".into()]);
    let p = plan(Some(&c), &id(), &o);
    let i = p
        .iter()
        .position(|a| *a == A::SetWaitSyncStandbys(false))
        .unwrap();
    assert_eq!(p[i + 1], A::Note(Note::HbaChanged));
    assert!(p.contains(&A::Reload));
}

#[test]
fn quorum_master_restart_opens_once_k_of_the_listed_standbys_stream() {
    let mut c = cd(DbRole::Master, DbInitMode::New);
    {
        let s = spec_mut(&mut c, "db1");
        s.synchronous_replication = true;
        s.synchronous_standbys = Some(vec!["db7".into(), "db8".into()]);
        s.synchronous_quorum = Some(1);
    }
    let mut o = converged(&c, DbRole::Master);
    o.wait_sync_standbys_synced = true;
    o.applied.as_mut().unwrap().hba = hba(&c, true);
    o.in_sync_standbys = Some(vec![]);
    let p = plan(Some(&c), &id(), &o);
    assert!(!p.contains(&A::SetWaitSyncStandbys(false)), "{p:?}");
    // Any one of the two (k = 1) is enough: commits flow.
    o.in_sync_standbys = Some(vec!["db8".into()]);
    let p = plan(Some(&c), &id(), &o);
    assert!(p.contains(&A::SetWaitSyncStandbys(false)), "{p:?}");
    // In the all-acknowledge form both are needed.
    spec_mut(&mut c, "db1").synchronous_quorum = None;
    let p = plan(Some(&c), &id(), &o);
    assert!(!p.contains(&A::SetWaitSyncStandbys(false)), "{p:?}");
}

#[test]
fn sync_standby_names_change_is_noted_and_reloaded() {
    let mut c = cd(DbRole::Master, DbInitMode::New);
    let o = converged(&c, DbRole::Master);
    {
        let s = spec_mut(&mut c, "db1");
        s.synchronous_replication = true;
        s.synchronous_standbys = Some(vec!["db7".into(), "db8".into()]);
    }
    let p = plan(Some(&c), &id(), &o);
    assert!(p.contains(&A::Note(Note::SyncStandbyNamesChanged(
        String::new(),
        "2 (stolon_db7,stolon_db8)".into()
    ))));
    assert!(p.contains(&A::Reload));
}

#[test]
fn standby_drops_all_stolon_slots() {
    let c = cd(DbRole::Standby, DbInitMode::Resync);
    let o = converged(&c, DbRole::Standby);
    let p = plan(Some(&c), &id(), &o);
    assert!(p.contains(&A::RefreshSlots { wanted: vec![] }));
    assert!(!p.iter().any(|a| matches!(a, A::Restart | A::Reload)));
}

#[test]
fn state_files_use_stolon_keys() {
    let s = LocalDbState {
        uid: "db1".into(),
        generation: 2,
        initializing: false,
        init_pg_parameters: None,
    };
    assert_eq!(
        serde_json::to_string(&s).unwrap(),
        r#"{"UID":"db1","Generation":2,"Initializing":false,"InitPGParameters":null}"#
    );
    let k = KeeperLocalState {
        uid: "k1".into(),
        cluster_uid: "c1".into(),
    };
    assert_eq!(
        serde_json::to_string(&k).unwrap(),
        r#"{"UID":"k1","ClusterUID":"c1"}"#
    );
}

#[test]
fn timeline_branch_detection() {
    let th = |tl: u64, sp: u64| TimelineHistory {
        timeline_id: tl,
        switch_point: sp,
        reason: String::new(),
    };
    let followed = |tl: u64, h: Vec<TimelineHistory>| DbStatus {
        timeline_id: tl,
        timelines_history: h,
        ..Default::default()
    };
    let local = |tl: u64, pos: u64, h: Vec<TimelineHistory>| PostgresState {
        timeline_id: tl,
        xlog_pos: pos,
        timelines_history: h,
        ..Default::default()
    };
    // Followed behind us.
    assert!(is_different_timeline_branch(
        &followed(1, vec![]),
        &local(2, 0, vec![])
    ));
    // Same timeline 1.
    assert!(!is_different_timeline_branch(
        &followed(1, vec![]),
        &local(1, 5, vec![])
    ));
    // Same timeline, same switch point / different switch point.
    assert!(!is_different_timeline_branch(
        &followed(2, vec![th(1, 100)]),
        &local(2, 200, vec![th(1, 100)])
    ));
    assert!(is_different_timeline_branch(
        &followed(2, vec![th(1, 100)]),
        &local(2, 200, vec![th(1, 90)])
    ));
    // Followed ahead: branched after our position (fine) or before it (forked).
    assert!(!is_different_timeline_branch(
        &followed(2, vec![th(1, 100)]),
        &local(1, 100, vec![])
    ));
    assert!(is_different_timeline_branch(
        &followed(2, vec![th(1, 100)]),
        &local(1, 150, vec![])
    ));
}

// --- Failed checks: the plan refuses to act on what it does not know. ---

/// Actions that start, write, initialise or clone something.
fn acts(a: &A) -> bool {
    matches!(
        a,
        A::Start
            | A::StartTmpMerged(_)
            | A::Restart
            | A::Reload
            | A::Promote
            | A::WriteConfig(_)
            | A::SaveDbState(_)
            | A::FinishInit
            | A::MarkConverged { .. }
            | A::InitDb(_)
            | A::RestoreData { .. }
            | A::RemoveData
            | A::Resync(_)
            | A::BaseBackup(_)
            | A::Rewind(_)
            | A::CreateRoles(_)
            | A::RefreshSlots { .. }
            | A::Stop
    )
}

/// Scenarios in which a known observation makes the plan act: a fresh keeper to initialise in
/// each init mode, a stopped master and standby to start, a running standby to promote.
fn acting_scenarios() -> Vec<(&'static str, ClusterData, Observed)> {
    let mut out = Vec::new();
    for mode in [DbInitMode::New, DbInitMode::Existing, DbInitMode::Resync] {
        let role = if mode == DbInitMode::Resync {
            DbRole::Standby
        } else {
            DbRole::Master
        };
        out.push(("fresh keeper", cd(role, mode), empty()));
    }
    for role in [DbRole::Master, DbRole::Standby] {
        let c = cd(role, DbInitMode::None);
        let mut o = converged(&c, role);
        o.running = false;
        o.applied = None;
        out.push(("stopped instance", c, o));
    }
    let c = cd(DbRole::Master, DbInitMode::None);
    let o = converged(&cd(DbRole::Standby, DbInitMode::None), DbRole::Standby);
    out.push(("standby to promote", c, o));
    out
}

#[test]
fn a_failed_is_initialized_check_yields_no_start_write_or_init() {
    for (name, c, o) in acting_scenarios() {
        assert!(plan(Some(&c), &id(), &o).iter().any(acts), "{name} acts");
        let (mut observed, memory) = o.split();
        observed.initialized = Probe::Unknown;
        let p = super::plan(Some(&c), &id(), &observed, &memory, Duration::ZERO);
        assert!(!p.iter().any(acts), "{name}: {p:?}");
        assert_eq!(
            p,
            vec![A::Wait(WaitReason::Unknown(Unknown::Initialized))],
            "{name}"
        );
    }
}

#[test]
fn a_failed_is_running_check_yields_no_start_write_or_init() {
    for (name, c, o) in acting_scenarios() {
        let (mut observed, memory) = o.split();
        observed.running = Probe::Unknown;
        let p = super::plan(Some(&c), &id(), &observed, &memory, Duration::ZERO);
        assert!(!p.iter().any(acts), "{name}: {p:?}");
        assert_eq!(
            p,
            vec![A::Wait(WaitReason::Unknown(Unknown::Running))],
            "{name}"
        );
    }
}

#[test]
fn a_failed_standby_signal_check_on_initialised_data_yields_nothing() {
    // Read as "no signal file", a standby would look like a master (and a fenced one be
    // stopped); unknown, nothing is done.
    let c = cd(DbRole::Standby, DbInitMode::None);
    let (mut observed, memory) = converged(&c, DbRole::Standby).split();
    observed.standby_signal = Probe::Unknown;
    let p = super::plan(Some(&c), &id(), &observed, &memory, Duration::ZERO);
    assert_eq!(
        p,
        vec![A::Wait(WaitReason::Unknown(Unknown::StandbySignal))]
    );
    // Not initialised, there is no signal file to read: the init goes on.
    let (mut observed, memory) = empty().split();
    observed.standby_signal = Probe::Unknown;
    let c = cd(DbRole::Master, DbInitMode::New);
    assert_eq!(
        super::plan(Some(&c), &id(), &observed, &memory, Duration::ZERO),
        plan(Some(&c), &id(), &empty())
    );
}

#[test]
fn a_failed_is_running_check_does_not_stop_an_unassigned_keeper() {
    let mut c = cd(DbRole::Master, DbInitMode::None);
    c.dbs.clear();
    let (mut observed, memory) =
        converged(&cd(DbRole::Master, DbInitMode::None), DbRole::Master).split();
    observed.running = Probe::Unknown;
    assert_eq!(
        super::plan(Some(&c), &id(), &observed, &memory, Duration::ZERO),
        vec![A::Wait(WaitReason::NoDbAssigned)]
    );
}

// --- step: memory and wake-up. ---

#[test]
fn step_forgets_the_applied_config_of_a_stopped_instance_only() {
    let c = cd(DbRole::Master, DbInitMode::None);
    let o = converged(&c, DbRole::Master);
    let si = Duration::from_secs(5);
    let now = Duration::from_secs(100);
    let (observed, memory) = o.split();
    let s = step(
        Some(&c),
        &id(),
        &observed,
        memory.clone(),
        Wake::Tick,
        now,
        si,
        None,
    );
    assert_eq!(s.memory.applied, memory.applied);
    assert_eq!(s.actions, plan(Some(&c), &id(), &o));

    let mut stopped = observed.clone();
    stopped.running = Probe::Known(false);
    let s = step(
        Some(&c),
        &id(),
        &stopped,
        memory.clone(),
        Wake::Tick,
        now,
        si,
        None,
    );
    assert_eq!(s.memory.applied, None);
    assert!(s.actions.contains(&A::Start));

    let mut unknown = observed;
    unknown.running = Probe::Unknown;
    let s = step(
        Some(&c),
        &id(),
        &unknown,
        memory.clone(),
        Wake::Tick,
        now,
        si,
        None,
    );
    assert_eq!(s.memory.applied, memory.applied);
}

#[test]
fn step_wakes_one_interval_after_the_last_tick() {
    let c = cd(DbRole::Master, DbInitMode::None);
    let (observed, memory) = converged(&c, DbRole::Master).split();
    let si = Duration::from_secs(5);
    let at = |s: u64| Duration::from_secs(s);
    let run = |m: KeeperMemory, wake, now| step(Some(&c), &id(), &observed, m, wake, now, si, None);
    let first = run(memory, Wake::Tick, at(10));
    assert_eq!(first.wake_at, at(15));
    // Store changes in between do not push the tick back.
    let change = Wake::StoreChange {
        clusterdata_changed: true,
    };
    let second = run(first.memory, change, at(12));
    assert_eq!(second.wake_at, at(15));
    let third = run(second.memory, Wake::Replan, at(13));
    assert_eq!(third.wake_at, at(15));
    let fourth = run(third.memory, Wake::Tick, at(15));
    assert_eq!(fourth.wake_at, at(20));
    // The first pass of a process, even woken by the store, schedules a tick.
    let fresh = run(KeeperMemory::default(), change, at(1));
    assert_eq!(fresh.wake_at, at(6));
}

#[test]
fn only_a_clusterdata_change_among_store_changes_calls_for_a_pass() {
    assert!(pass_wanted(Wake::Tick));
    assert!(pass_wanted(Wake::Replan));
    assert!(pass_wanted(Wake::StoreChange {
        clusterdata_changed: true
    }));
    assert!(!pass_wanted(Wake::StoreChange {
        clusterdata_changed: false
    }));
}

#[test]
fn clusterdata_housekeeping() {
    let mut c = cd(DbRole::Master, DbInitMode::None);
    c.cluster.as_mut().unwrap().spec =
        Some(serde_json::from_str(r#"{"initMode":"new","sleepInterval":"2s"}"#).unwrap());
    assert_eq!(sleep_interval_of(Some(&c)), Some(Duration::from_secs(2)));
    assert_eq!(sleep_interval_of(None), None);
    let seen = KeeperLocalState {
        uid: "k1".into(),
        cluster_uid: String::new(),
    };
    let saved = keeper_state_update(Some(&c), &seen).expect("new cluster uid");
    assert_eq!(saved.cluster_uid, "c1");
    assert_eq!(saved.uid, "k1");
    assert_eq!(keeper_state_update(Some(&c), &saved), None);
    assert_eq!(keeper_state_update(None, &seen), None);
    let mut unusable = c.clone();
    unusable.format_version = 99;
    assert_eq!(sleep_interval_of(Some(&unusable)), None);
    assert_eq!(keeper_state_update(Some(&unusable), &seen), None);
}

// --- record: outcomes folded into memory, follow-ups decided in the core. ---

fn some_cfg() -> PgConfig {
    let c = cd(DbRole::Master, DbInitMode::None);
    cfg(&c, &empty(), false, RecoveryOptions::none())
}

#[test]
fn restart_check_queries_only_an_instance_running_our_config() {
    let mut m = KeeperMemory::default();
    assert_eq!(
        record(&mut m, &A::CheckRestart { automatic: true }, Outcome::Done),
        vec![]
    );
    m.applied = Some(some_cfg());
    assert_eq!(
        record(&mut m, &A::CheckRestart { automatic: false }, Outcome::Done),
        vec![A::QueryPendingRestart { automatic: false }]
    );
}

#[test]
fn pending_restart_is_reported_and_restarts_only_when_automatic() {
    let mut m = KeeperMemory {
        applied: Some(some_cfg()),
        ..Default::default()
    };
    let q = |automatic| A::QueryPendingRestart { automatic };
    assert_eq!(
        record(&mut m, &q(true), Outcome::PendingRestart(false)),
        vec![A::ReportNeedsRestart(false)]
    );
    assert_eq!(
        record(&mut m, &q(false), Outcome::PendingRestart(true)),
        vec![A::ReportNeedsRestart(true), A::Note(Note::RestartDisabled)]
    );
    assert_eq!(
        record(&mut m, &q(true), Outcome::PendingRestart(true)),
        vec![
            A::ReportNeedsRestart(true),
            A::Note(Note::RestartingForParameters),
            A::Restart,
            A::ReportNeedsRestart(false),
        ]
    );
}

#[test]
fn the_config_written_after_a_promotion_is_the_applied_one() {
    let written = some_cfg();
    let mut m = KeeperMemory::default();
    record(
        &mut m,
        &A::WriteConfig(Box::new(written.clone())),
        Outcome::Done,
    );
    assert_eq!(m.written.as_ref(), Some(&written));
    assert_eq!(m.applied, None, "a plain write applies nothing");
    record(&mut m, &A::Promote, Outcome::Done);
    record(
        &mut m,
        &A::WriteConfig(Box::new(written.clone())),
        Outcome::Done,
    );
    assert_eq!(m.applied.as_ref(), Some(&written));
    // Only right after the promotion.
    let mut other = written.clone();
    other.hba.push("host all all 0.0.0.0/0 md5".into());
    record(
        &mut m,
        &A::WriteConfig(Box::new(other.clone())),
        Outcome::Done,
    );
    assert_eq!(m.applied.as_ref(), Some(&written));
    assert_eq!(m.written.as_ref(), Some(&other));
    record(&mut m, &A::Reload, Outcome::Done);
    assert_eq!(m.applied.as_ref(), Some(&other));
    record(&mut m, &A::Stop, Outcome::Done);
    assert_eq!(m.applied, None);
    record(&mut m, &A::Start, Outcome::Done);
    assert_eq!(m.applied.as_ref(), Some(&other));
}

#[test]
fn db_state_changes_go_through_save_db_state() {
    let mut m = KeeperMemory::default();
    record(&mut m, &A::SaveDbState(begin("db1")), Outcome::Done);
    assert_eq!(m.db_state, begin("db1"));
    let finished = LocalDbState {
        initializing: false,
        ..begin("db1")
    };
    assert_eq!(
        record(&mut m, &A::FinishInit, Outcome::Done),
        vec![A::SaveDbState(finished.clone())]
    );
    assert_eq!(m.db_state, begin("db1"), "changed only once saved");
    let mut params = PgParameters::new();
    params.insert("work_mem".into(), "8MB".into());
    assert_eq!(
        record(
            &mut m,
            &A::SaveInitParameters,
            Outcome::InitParameters(params.clone())
        ),
        vec![A::SaveDbState(LocalDbState {
            init_pg_parameters: Some(params),
            ..begin("db1")
        })]
    );
    assert_eq!(
        record(&mut m, &A::MarkConverged { generation: 7 }, Outcome::Done),
        vec![A::SaveDbState(LocalDbState {
            generation: 7,
            ..finished
        })]
    );
    record(&mut m, &A::SetWaitSyncStandbys(true), Outcome::Done);
    assert!(m.wait_sync_standbys_synced);
}

fn resync_plan_box(c: &ClusterData, rewind: bool) -> Box<ResyncPlan> {
    match resync_plan(c, rewind) {
        A::Resync(p) => p,
        other => panic!("not a resync: {other:?}"),
    }
}

fn clone_steps(p: &ResyncPlan) -> Vec<A> {
    vec![
        A::BaseBackup(Box::new(p.clone())),
        A::WriteConfig(Box::new(p.config.clone())),
        A::Start,
    ]
}

#[test]
fn resync_without_rewind_clones() {
    let c = cd(DbRole::Standby, DbInitMode::Resync);
    let p = resync_plan_box(&c, false);
    let mut m = KeeperMemory::default();
    assert_eq!(
        record(&mut m, &A::Resync(p.clone()), Outcome::Done),
        clone_steps(&p)
    );
}

#[test]
fn resync_rewinds_then_checks_the_rewound_instance() {
    let c = cd(DbRole::Standby, DbInitMode::Resync);
    let p = resync_plan_box(&c, true);
    let mut m = KeeperMemory::default();
    assert_eq!(
        record(&mut m, &A::Resync(p.clone()), Outcome::Done),
        vec![A::Rewind(p.clone())]
    );
    assert_eq!(
        record(&mut m, &A::Rewind(p.clone()), Outcome::Rewind(Ok(()))),
        vec![
            A::WriteConfig(Box::new(p.config.clone())),
            A::Start,
            A::CheckRewound(p.clone()),
        ]
    );
    // On the followed DB's timeline: done.
    let on_branch = PostgresState {
        timeline_id: 1,
        ..Default::default()
    };
    assert_eq!(
        record(
            &mut m,
            &A::CheckRewound(p.clone()),
            Outcome::Rewound(Ok(Box::new(on_branch)))
        ),
        vec![]
    );
}

#[test]
fn a_failed_rewind_falls_back_to_a_clone() {
    let c = cd(DbRole::Standby, DbInitMode::Resync);
    let p = resync_plan_box(&c, true);
    let mut m = KeeperMemory::default();
    let mut want = vec![A::Note(Note::RewindFailed("no route".into()))];
    want.extend(clone_steps(&p));
    assert_eq!(
        record(
            &mut m,
            &A::Rewind(p.clone()),
            Outcome::Rewind(Err("no route".into()))
        ),
        want
    );
}

#[test]
fn a_rewound_instance_not_ready_or_forked_is_cloned_again() {
    let c = cd(DbRole::Standby, DbInitMode::Resync);
    let p = resync_plan_box(&c, true);
    let mut m = KeeperMemory::default();
    let mut want = vec![A::Note(Note::RewoundNotReady("timeout".into())), A::Stop];
    want.extend(clone_steps(&p));
    assert_eq!(
        record(
            &mut m,
            &A::CheckRewound(p.clone()),
            Outcome::Rewound(Err("timeout".into()))
        ),
        want
    );
    // A newer local timeline than the followed DB's: forked.
    let forked = PostgresState {
        timeline_id: 5,
        ..Default::default()
    };
    let mut want = vec![A::Note(Note::RewoundForked), A::Stop];
    want.extend(clone_steps(&p));
    assert_eq!(
        record(
            &mut m,
            &A::CheckRewound(p.clone()),
            Outcome::Rewound(Ok(Box::new(forked)))
        ),
        want
    );
}

#[test]
fn no_keeper_info_until_the_cluster_uid_is_known() {
    let mut ks = KeeperLocalState {
        uid: "k1".into(),
        cluster_uid: String::new(),
    };
    let state = PostgresState {
        healthy: true,
        ..Default::default()
    };
    let report = |ks: &KeeperLocalState| {
        keeper_info(
            &KeeperReport {
                keeper_state: ks,
                boot_uuid: BOOT,
                version: v15(),
                can_be_master: true,
                can_be_synchronous_replica: false,
                priority: 3,
            },
            &state,
        )
    };
    assert_eq!(report(&ks), None);
    ks.cluster_uid = "c1".into();
    let info = report(&ks).expect("cluster uid known");
    assert_eq!(info.uid, "k1");
    assert_eq!(info.cluster_uid, "c1");
    assert_eq!(info.boot_uuid, BOOT);
    assert_eq!(info.postgres_binary_version, v15().unwrap());
    assert_eq!(info.postgres_state, Some(state.clone()));
    assert_eq!(info.can_be_master, Some(true));
    assert_eq!(info.can_be_synchronous_replica, Some(false));
    assert_eq!(info.priority, Some(3));
    assert!(info.info_uid.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Planned switchover (docs/switchover.md)

fn switchover(phase: crate::model::SwitchoverPhase) -> crate::model::Switchover {
    let mut sw = crate::model::Switchover::request(
        "sw1".into(),
        "k2".into(),
        crate::duration::GoDuration::from_secs(30),
        crate::timestamp::Timestamp::zero(),
    );
    sw.phase = phase;
    sw.old_master_db = "db1".into();
    sw.target_db = "db2".into();
    sw
}

#[test]
fn switchover_stops_the_master_cleanly_and_keeps_it_stopped() {
    use crate::model::SwitchoverPhase as P;
    let mut c = cd(DbRole::Master, DbInitMode::None);
    c.switchover = Some(switchover(P::Stopping));
    let o = converged(&c, DbRole::Master);
    let p = plan(Some(&c), &id(), &o);
    assert_eq!(
        p,
        [
            A::Note(Note::RequestedRole("master")),
            A::Note(Note::SwitchoverStopping),
            A::Stop,
            A::Wait(WaitReason::SwitchoverStopped),
        ]
    );
    // Stopped: it is not started again while the switchover says so.
    let mut stopped = o.clone();
    stopped.running = false;
    let p = plan(Some(&c), &id(), &stopped);
    assert_eq!(
        p,
        [
            A::Note(Note::RequestedRole("master")),
            A::Wait(WaitReason::SwitchoverStopped),
        ]
    );
    // Rolled back: the master starts again as usual.
    c.switchover = Some(switchover(P::Failed));
    let p = plan(Some(&c), &id(), &stopped);
    assert!(p.contains(&A::Start), "{p:?}");
    // Another DB's switchover (or an earlier phase) leaves a running master alone.
    for phase in [P::Requested, P::Holding] {
        c.switchover = Some(switchover(phase));
        let p = plan(Some(&c), &id(), &o);
        assert!(!p.contains(&A::Stop), "{phase:?}: {p:?}");
    }
}

#[test]
fn switchover_old_master_rejoins_as_standby_without_rewind_only_at_its_recorded_checkpoint() {
    use crate::model::SwitchoverPhase as P;
    // After the promotion: db1 (ours) follows db2, the promoted target.
    let mut c = cd(DbRole::Standby, DbInitMode::Resync);
    let mut sw = switchover(P::Promoted);
    sw.final_xlog_pos = 0x3000028;
    c.switchover = Some(sw);
    let mut stopped = converged(&c, DbRole::Master);
    stopped.running = false;
    stopped.applied = None;
    stopped.shutdown_checkpoint = Some(0x3000028);
    // While the target is being promoted (its slot for us may not exist yet): wait.
    let p = plan(Some(&c), &id(), &stopped);
    assert_eq!(
        p,
        [
            A::Note(Note::RequestedRole("standby")),
            A::Wait(WaitReason::SwitchoverStopped),
        ]
    );
    c.switchover.as_mut().unwrap().phase = P::Completed;
    let standby = cfg(&c, &stopped, false, standby_recovery());
    let p = plan(Some(&c), &id(), &stopped);
    assert_eq!(
        p[..5],
        [
            A::Note(Note::RequestedRole("standby")),
            A::Note(Note::SwitchoverRejoin),
            A::WriteConfig(Box::new(standby)),
            A::Start,
            A::RefreshSlots { wanted: vec![] },
        ],
        "{p:?}"
    );
    assert!(
        !p.iter()
            .any(|a| matches!(a, A::Resync(_) | A::BaseBackup(_) | A::Fail(_))),
        "{p:?}"
    );

    // pg_control records another checkpoint (the data ran since): never followed in place.
    let mut moved = stopped.clone();
    moved.shutdown_checkpoint = Some(0x3000100);
    let p = plan(Some(&c), &id(), &moved);
    assert_eq!(
        p.last(),
        Some(&A::Fail(PlanError::MasterToStandby)),
        "{p:?}"
    );
    // Crashed rather than shut down cleanly: the same.
    moved.shutdown_checkpoint = None;
    let p = plan(Some(&c), &id(), &moved);
    assert_eq!(
        p.last(),
        Some(&A::Fail(PlanError::MasterToStandby)),
        "{p:?}"
    );
    // Still running as a primary: the same.
    let mut running = stopped.clone();
    running.running = true;
    let p = plan(Some(&c), &id(), &running);
    assert_eq!(
        p.last(),
        Some(&A::Fail(PlanError::MasterToStandby)),
        "{p:?}"
    );
    // Without a switchover record: the same.
    c.switchover = None;
    let p = plan(Some(&c), &id(), &stopped);
    assert_eq!(
        p.last(),
        Some(&A::Fail(PlanError::MasterToStandby)),
        "{p:?}"
    );
}

#[test]
fn switchover_stop_report_names_the_switchover_only_while_stopped_for_it() {
    use crate::model::SwitchoverPhase as P;
    let mut c = cd(DbRole::Master, DbInitMode::None);
    c.switchover = Some(switchover(P::Stopping));
    let report = |c: &ClusterData, running, ckpt| {
        super::switchover_stop_report(Some(c), "db1", running, ckpt)
    };
    assert_eq!(
        report(&c, Some(false), Some(0x5000)),
        Some(("sw1".into(), 0x5000))
    );
    assert_eq!(report(&c, Some(true), Some(0x5000)), None);
    assert_eq!(report(&c, None, Some(0x5000)), None);
    assert_eq!(report(&c, Some(false), None), None);
    assert_eq!(
        super::switchover_stop_report(Some(&c), "db2", Some(false), Some(0x5000)),
        None
    );
    c.switchover = Some(switchover(P::Holding));
    assert_eq!(report(&c, Some(false), Some(0x5000)), None);
}

/// Failsafe mode: a switchover's target promotes without waiting for its promise once the old
/// master's keeper reported its PostgreSQL stopped for the switchover (phase `promoted` with a
/// final position); before that, and for a failover, the promise holds.
#[test]
fn a_switchover_target_promotes_despite_a_promise_once_the_old_master_stopped() {
    use crate::model::SwitchoverPhase as P;
    let si = Duration::from_secs(5);
    let now = Duration::from_secs(100);
    let promise = Some(crate::failsafe::Promise {
        until: Duration::from_secs(110),
    });
    let run = |c: &ClusterData| {
        let (observed, memory) = converged(c, DbRole::Standby).split();
        step(
            Some(c),
            &id(),
            &observed,
            memory,
            Wake::Tick,
            now,
            si,
            promise,
        )
        .actions
    };
    let mut c = cd(DbRole::Master, DbInitMode::New);
    let mut sw = switchover(P::Promoted);
    sw.old_master_db = "db2".into();
    sw.target_db = "db1".into();
    sw.final_xlog_pos = 0x3000_0000;
    c.switchover = Some(sw.clone());
    assert!(run(&c).contains(&A::Promote), "{:?}", run(&c));

    // No final position recorded: the old master was not seen stopped.
    let mut unsure = sw.clone();
    unsure.final_xlog_pos = 0;
    c.switchover = Some(unsure);
    assert!(!run(&c).contains(&A::Promote));
    // Another DB's switchover, or a finished one: the promise holds.
    let mut other = sw.clone();
    other.target_db = "db9".into();
    c.switchover = Some(other);
    assert!(!run(&c).contains(&A::Promote));
    let mut done = sw;
    done.phase = P::Completed;
    c.switchover = Some(done);
    assert!(!run(&c).contains(&A::Promote));
}

#[test]
fn a_generation_only_bump_on_a_running_standby_only_marks_it_converged() {
    // A quorum-mode failover asks the synchronous standbys for their final positions by bumping
    // their generation without changing their spec (docs/synchronous-replication.md): the
    // keeper must neither restart nor reload PostgreSQL for it.
    let c = cd(DbRole::Standby, DbInitMode::None);
    let o = converged(&c, DbRole::Standby);
    let before = plan(Some(&c), &id(), &o);
    let mut bumped = c.clone();
    bumped.dbs.get_mut("db1").unwrap().generation = 4;
    let after = plan(Some(&bumped), &id(), &o);
    assert_eq!(
        after.last(),
        Some(&A::MarkConverged { generation: 4 }),
        "{after:?}"
    );
    let disruptive = |p: &[KeeperAction]| {
        p.iter()
            .filter(|a| {
                matches!(
                    a,
                    A::Stop | A::Start | A::Restart | A::Reload | A::WriteConfig(_) | A::Promote
                )
            })
            .count()
    };
    assert_eq!(disruptive(&after), 0, "{after:?}");
    // Everything but the convergence mark is what the keeper does without a bump.
    assert_eq!(
        after[..after.len() - 1],
        before[..before.len().min(after.len() - 1)],
        "{before:?} vs {after:?}"
    );
}
