//! Named tests of the keeper's `plan`: every init mode and role transition, with exact action
//! lists.

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
