//! Integration tests of the real `stolon-keeper` binary with real PostgreSQL 15 and real etcd.
//! The tests play the sentinel: they write clusterdata themselves and read the KeeperInfo the
//! keeper publishes.

mod common;

use std::time::Duration;

use common::*;
use stolon_core::model::{DbInitMode, DbRole};

const T: Duration = Duration::from_secs(60);

/// 1. A keeper assigned a `new` master DB runs initdb, creates the roles, answers `select 1`,
/// and publishes a healthy KeeperInfo on timeline 1 with a growing WAL position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_master_initialises_and_reports() {
    let w = World::new("new").await;
    let (kp, port, _cd) = start_master(&w, "keeper1", "db1", cluster_spec(), &[]).await;
    let info = w
        .wait_keeper_info("keeper1", T, |i| {
            i.postgres_state
                .as_ref()
                .is_some_and(|p| p.healthy && p.uid == "db1" && p.generation == 1)
        })
        .await;
    kp.wait_log("superuser password set", T).await;
    kp.wait_log(
        "replication role created\t{\"role\": \"stolon_repluser\"}",
        T,
    )
    .await;
    wait_db_up(port, T).await;
    let repl = query_one_string(
        port,
        "select rolreplication::text from pg_roles where rolname = 'stolon_repluser'",
    )
    .await;
    assert_eq!(repl.as_deref(), Some("true"));
    // The replication user logs in with its password (default md5 rules).
    assert!(connect(port, REPL, REPL_PW).await.is_ok());
    assert!(connect(port, REPL, "wrong").await.is_err());
    let ps = info.postgres_state.clone().unwrap();
    assert_eq!(ps.timeline_id, 1);
    assert!(!ps.system_id.is_empty());
    assert_eq!(ps.port, port.to_string());
    assert_eq!(ps.listen_address, "127.0.0.1");
    assert!(ps.xlog_pos > 0);
    assert!(
        !ps.pg_parameters.contains_key("port"),
        "managed parameters are filtered"
    );
    assert_eq!(info.boot_uuid.len(), 36);
    let c = su(port).await.unwrap();
    c.batch_execute("create table t(i int); insert into t select generate_series(1,1000);")
        .await
        .unwrap();
    let first = ps.xlog_pos;
    let later = w
        .wait_keeper_info("keeper1", T, |i| {
            i.postgres_state
                .as_ref()
                .is_some_and(|p| p.xlog_pos > first)
        })
        .await;
    assert_ne!(later.info_uid, info.info_uid, "a new infoUID every publish");
    drop(kp);
}

/// 2 + 3. A resync standby clones with its slot and replicates; promoting it and turning the old
/// primary into a resync standby with usePgrewind rewinds it (the data dir is kept: not a
/// clone) and it follows the new primary with rows written after the promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_standby_then_promote_and_rewind_old_primary() {
    ha_flow("ha", true).await;
}

/// pg_rewind that cannot work (the old primary ran without wal_log_hints) falls back to a
/// pg_basebackup clone, and the old primary still ends up following the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rewind_falls_back_to_basebackup() {
    ha_flow("rwfail", false).await;
}

/// `rewind_works`: usePgrewind from the start (wal_log_hints on everywhere); otherwise only the
/// resync DB of the old primary asks for pg_rewind, which then fails.
async fn ha_flow(name: &str, rewind_works: bool) {
    let w = World::new(name).await;
    let mut spec = cluster_spec();
    spec.use_pgrewind = Some(rewind_works);
    let (k1, port1, mut cd) = start_master(&w, "keeper1", "db1", spec, &[]).await;
    w.wait_keeper_info("keeper1", T, |i| {
        i.postgres_state
            .as_ref()
            .is_some_and(|p| p.healthy && p.generation == 1)
    })
    .await;

    // Second keeper: resync standby of db1.
    let (k2, port2) = w.join_keeper(&mut cd, "keeper2").await;
    let mut s2 = db_spec(&cd, "keeper2", DbRole::Standby, DbInitMode::Resync);
    s2.follow_config = follow("db1");
    set_db(&mut cd, "db2", s2);
    cd.dbs
        .get_mut("db1")
        .expect("db1 in clusterdata")
        .spec
        .as_mut()
        .expect("db1 has a spec")
        .followers = Some(vec!["db2".into()]);
    bump(&mut cd, "db1");
    w.write_cd(&cd).await;
    wait_db_up(port2, Duration::from_secs(120)).await;
    assert_eq!(
        query_one_string(port2, "select pg_is_in_recovery()::text")
            .await
            .as_deref(),
        Some("true")
    );
    let slot = wait_for("active slot stolon_db2 on the primary", T, || async {
        query_one_string(
            port1,
            "select active::text from pg_replication_slots where slot_name = 'stolon_db2'",
        )
        .await
        .filter(|a| a == "true")
    })
    .await;
    assert_eq!(slot, "true");
    su(port1)
        .await
        .expect("connect as superuser")
        .batch_execute("create table t(i int); insert into t values (1);")
        .await
        .expect("create and fill t");
    wait_for("row replicated to the standby", T, || async {
        query_one_string(port2, "select count(*)::text from t")
            .await
            .filter(|c| c == "1")
    })
    .await;
    k2.wait_log("syncing from followed db using pg_basebackup", T)
        .await;

    // Fail over: db1 leaves keeper1 (old primary stopped), db2 becomes master.
    let base_ino = inode(&w.pgdata("keeper1").join("base"));
    w.sentinel_sync(&mut cd).await;
    cd.dbs.remove("db1");
    {
        let s = cd
            .dbs
            .get_mut("db2")
            .expect("db2 in clusterdata")
            .spec
            .as_mut()
            .expect("db2 has a spec");
        s.role = Some(DbRole::Master);
        s.follow_config = None;
        s.followers = Some(vec!["db3".into()]);
    }
    bump(&mut cd, "db2");
    set_master(&mut cd, "db2");
    let promote_start = std::time::Instant::now();
    w.write_cd(&cd).await;
    wait_for("standby promoted", T, || async {
        query_one_string(port2, "select pg_is_in_recovery()::text")
            .await
            .filter(|r| r == "false")
    })
    .await;
    eprintln!(
        "[{name}] clusterdata names db2 master -> db2 out of recovery: {:?}",
        promote_start.elapsed()
    );
    wait_db_down(port1, T).await;
    su(port2)
        .await
        .expect("connect as superuser")
        .batch_execute("insert into t values (2), (3);")
        .await
        .expect("insert into t");
    w.wait_keeper_info("keeper2", T, |i| {
        i.postgres_state.as_ref().is_some_and(|p| {
            p.healthy && p.timeline_id == 2 && p.generation == cd.dbs["db2"].generation
        })
    })
    .await;

    // The old primary gets a new resync standby DB following db2, with pg_rewind.
    w.sentinel_sync(&mut cd).await;
    let mut s3 = db_spec(&cd, "keeper1", DbRole::Standby, DbInitMode::Resync);
    s3.follow_config = follow("db2");
    s3.use_pgrewind = true;
    set_db(&mut cd, "db3", s3);
    w.write_cd(&cd).await;
    let long = Duration::from_secs(90);
    let resync_start = std::time::Instant::now();
    k1.wait_log("syncing using pg_rewind", long).await;
    if rewind_works {
        k1.wait_log("pg_rewind succeeded", long).await;
    } else {
        k1.wait_log(
            "error syncing with pg_rewind, falling back to pg_basebackup",
            long,
        )
        .await;
        k1.wait_log("syncing from followed db using pg_basebackup", long)
            .await;
    }
    wait_db_up(port1, Duration::from_secs(90)).await;
    wait_for(
        "rows written after the promotion on the old primary",
        Duration::from_secs(90),
        || async {
            query_one_string(port1, "select count(*)::text from t")
                .await
                .filter(|c| c == "3")
        },
    )
    .await;
    eprintln!(
        "[{name}] resync DB assigned -> old primary has the new rows: {:?}",
        resync_start.elapsed()
    );
    assert_eq!(
        query_one_string(port1, "select pg_is_in_recovery()::text")
            .await
            .as_deref(),
        Some("true")
    );
    if rewind_works {
        assert!(
            !k1.log_text()
                .contains("syncing from followed db using pg_basebackup"),
            "the old primary was cloned instead of rewound"
        );
        assert_eq!(
            inode(&w.pgdata("keeper1").join("base")),
            base_ino,
            "the data directory was recreated: not a rewind"
        );
    } else {
        assert_ne!(
            inode(&w.pgdata("keeper1").join("base")),
            base_ino,
            "a failed rewind must end in a fresh clone"
        );
    }
    let ps = w
        .wait_keeper_info("keeper1", T, |i| {
            i.postgres_state
                .as_ref()
                .is_some_and(|p| p.uid == "db3" && p.healthy && p.timeline_id == 2)
        })
        .await;
    assert!(
        !ps.postgres_state
            .expect("keeper3 reports its state")
            .timelines_history
            .is_empty()
    );
    drop((k1, k2));
}

fn inode(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.ino()).unwrap_or(0)
}

/// 4. Parameter change -> reload; restart-needing change -> needs_restart 1 without restart
/// unless automaticPgRestart; pgHBA null vs []; ALTER SYSTEM fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_hba_and_alter_system() {
    let w = World::new("params").await;
    let maddr = format!("127.0.0.1:{}", free());
    let (kp, port, mut cd) = start_master(
        &w,
        "keeper1",
        "db1",
        cluster_spec(),
        &[format!("--metrics-listen-address={maddr}")],
    )
    .await;
    w.wait_keeper_info("keeper1", T, |i| {
        i.postgres_state
            .as_ref()
            .is_some_and(|p| p.healthy && p.generation == 1)
    })
    .await;
    kp.wait_log("postgres parameters not changed", T).await;

    // ALTER SYSTEM is blocked.
    let c = su(port).await.unwrap();
    let e = c
        .batch_execute("alter system set archive_mode to on")
        .await
        .expect_err("ALTER SYSTEM must fail");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("postgresql.auto.conf"), "{msg}");

    // A reloadable parameter.
    let before = kp
        .log_text()
        .matches("postgres parameters changed, reloading postgres instance")
        .count();
    cd.dbs
        .get_mut("db1")
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .pg_parameters
        .insert("work_mem".into(), "7MB".into());
    bump(&mut cd, "db1");
    w.write_cd(&cd).await;
    wait_for("work_mem reloaded", T, || async {
        query_one_string(port, "show work_mem")
            .await
            .filter(|v| v == "7MB")
    })
    .await;
    assert!(
        kp.log_text()
            .matches("postgres parameters changed, reloading postgres instance")
            .count()
            > before
    );
    let pid = postmaster_pid(&w.pgdata("keeper1")).unwrap();

    // A restart-needing parameter without automaticPgRestart: flagged, not applied.
    cd.dbs
        .get_mut("db1")
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .pg_parameters
        .insert("max_connections".into(), "150".into());
    bump(&mut cd, "db1");
    w.write_cd(&cd).await;
    wait_for("stolon_keeper_needs_restart 1", T, || async {
        metric_value(&scrape(&maddr), "stolon_keeper_needs_restart").filter(|v| *v == 1.0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        query_one_string(port, "show max_connections")
            .await
            .as_deref(),
        Some("100")
    );
    assert_eq!(
        postmaster_pid(&w.pgdata("keeper1")),
        Some(pid),
        "restarted without automaticPgRestart"
    );
    let text = scrape(&maddr);
    assert_eq!(
        metric_value(&text, "stolon_keeper_local_role{role=\"master\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains("stolon_cluster_identifier{"), "{text}");

    // automaticPgRestart: restarted, applied, flag cleared.
    cd.cluster
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .automatic_pg_restart = Some(true);
    w.write_cd(&cd).await;
    wait_for("max_connections 150 after automatic restart", T, || async {
        query_one_string(port, "show max_connections")
            .await
            .filter(|v| v == "150")
    })
    .await;
    assert_ne!(postmaster_pid(&w.pgdata("keeper1")), Some(pid));
    wait_for("stolon_keeper_needs_restart 0", T, || async {
        metric_value(&scrape(&maddr), "stolon_keeper_needs_restart").filter(|v| *v == 0.0)
    })
    .await;

    // pgHBA null: md5 from everywhere; []: only the keeper's own rules.
    let c = wait_db_up(port, T).await;
    c.batch_execute("create role user01 login password 'password01'")
        .await
        .unwrap();
    assert!(connect(port, "user01", "password01").await.is_ok());
    cd.dbs.get_mut("db1").unwrap().spec.as_mut().unwrap().pg_hba = Some(vec![]);
    bump(&mut cd, "db1");
    w.write_cd(&cd).await;
    kp.wait_log(
        "postgres hba entries changed, reloading postgres instance",
        T,
    )
    .await;
    let e = wait_for("user01 refused", T, || async {
        connect(port, "user01", "password01").await.err()
    })
    .await;
    let m = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| format!("{e:?}"));
    assert!(m.contains("no pg_hba.conf entry"), "{m}");
    let hba = std::fs::read_to_string(w.pgdata("keeper1").join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("host all all"), "{hba}");
    assert!(
        hba.contains("host all stolon_superuser 0.0.0.0/0 md5"),
        "{hba}"
    );
    cd.dbs.get_mut("db1").unwrap().spec.as_mut().unwrap().pg_hba = None;
    bump(&mut cd, "db1");
    w.write_cd(&cd).await;
    wait_for("user01 allowed again", T, || async {
        connect(port, "user01", "password01").await.ok()
    })
    .await;
    let hba = std::fs::read_to_string(w.pgdata("keeper1").join("pg_hba.conf")).unwrap();
    assert!(
        hba.contains("host all all 0.0.0.0/0 md5\nhost all all ::0/0 md5"),
        "{hba}"
    );

    // Stolon's TestServerParameters: an unknown parameter is reloaded (postgres ignores it with
    // an error) but prevents a start; removing it lets postgres start again.
    let mut kp = kp;
    cd.dbs
        .get_mut("db1")
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .pg_parameters
        .insert("unexistent_parameter".into(), "value".into());
    bump(&mut cd, "db1");
    let before = kp
        .log_text()
        .matches("postgres parameters changed, reloading postgres instance")
        .count();
    w.write_cd(&cd).await;
    wait_for("reload with the unknown parameter", T, || async {
        let n = kp
            .log_text()
            .matches("postgres parameters changed, reloading postgres instance")
            .count();
        (n > before).then_some(())
    })
    .await;
    kp.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(kp.wait_exit(T).await, Some(0));
    let kp2 = w.spawn_keeper("keeper1-restarted", &w.keeper_args("keeper1", port));
    let old_boot = cd.keepers["keeper1"].status.boot_uuid.clone();
    w.wait_keeper_info("keeper1", T, |i| i.boot_uuid != old_boot)
        .await;
    w.sentinel_sync(&mut cd).await;
    w.write_cd(&cd).await;
    kp2.wait_log("failed to start postgres", T).await;
    cd.dbs
        .get_mut("db1")
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .pg_parameters
        .remove("unexistent_parameter");
    bump(&mut cd, "db1");
    w.write_cd(&cd).await;
    wait_db_up(port, T).await;
    drop((kp, kp2));
}

/// 5. Two keepers on one data dir; password-file and su/repl messages; root refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_startup_checks() {
    let w = World::new("lock").await;
    let args = w.keeper_args("keeper1", free());
    let a = w.spawn_keeper("a", &args);
    a.wait_log("exclusive lock on data dir taken", T).await;
    let mut b = w.spawn_keeper("b", &args);
    let code = b.wait_exit(T).await;
    assert_eq!(code, Some(1));
    assert!(
        b.log_text()
            .contains("cannot take exclusive lock on data dir"),
        "{}",
        b.log_text()
    );
    drop(a);

    // Trailing newlines are trimmed with a warning.
    let su_nl = write_secret(&w, "su_nl", &format!("{SU_PW}\n"));
    let repl_nl = write_secret(&w, "repl_nl", &format!("{REPL_PW}\r\n"));
    let mut args = w.keeper_args("keeper2", free());
    args.retain(|a| {
        !a.starts_with("--pg-su-passwordfile") && !a.starts_with("--pg-repl-passwordfile")
    });
    let mut a2 = args.clone();
    a2.push(format!("--pg-su-passwordfile={}", su_nl.display()));
    a2.push(format!("--pg-repl-passwordfile={}", repl_nl.display()));
    let k = w.spawn_keeper("nl", &a2);
    k.wait_log("superuser password contain trailing new line, removing", T)
        .await;
    k.wait_log(
        "replication user password contain trailing new line, removing",
        T,
    )
    .await;
    k.wait_log("exclusive lock on data dir taken", T).await;
    drop(k);

    // Empty after trimming: fatal.
    let empty = write_secret(&w, "empty", "\n");
    let mut a3 = args.clone();
    a3.push(format!("--pg-su-passwordfile={}", su_nl.display()));
    a3.push(format!("--pg-repl-passwordfile={}", empty.display()));
    let mut k = w.spawn_keeper("empty-repl", &a3);
    assert_eq!(k.wait_exit(T).await, Some(1));
    assert!(
        k.log_text()
            .contains("replication user password is empty after removing trailing new line")
    );
    let mut a4 = args.clone();
    a4.push(format!("--pg-su-passwordfile={}", empty.display()));
    a4.push(format!("--pg-repl-passwordfile={}", repl_nl.display()));
    let mut k = w.spawn_keeper("empty-su", &a4);
    assert_eq!(k.wait_exit(T).await, Some(1));
    assert!(
        k.log_text()
            .contains("superuser password is empty after removing trailing new line")
    );

    // Same superuser and replication user with different passwords.
    let mut a5: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--pg-su-username") && !a.starts_with("--pg-repl-username"))
        .cloned()
        .collect();
    a5.extend([
        "--pg-su-username=user01".into(),
        "--pg-repl-username=user01".into(),
        "--pg-su-password=password01".into(),
        "--pg-repl-password=password02".into(),
    ]);
    let mut k = w.spawn_keeper("same-user", &a5);
    assert_eq!(k.wait_exit(T).await, Some(1));
    assert!(k.log_text().contains(
        "provided superuser name and replication user name are the same but provided passwords are different"
    ));

    // Flags have STKEEPER_* env forms; the command line wins over env.
    let mut a6: Vec<String> = w
        .keeper_args("keeper3", free())
        .into_iter()
        .filter(|a| !a.starts_with("--pg-listen-address") && !a.starts_with("--pg-repl-username"))
        .collect();
    let mut k = w.spawn_keeper("env-missing", &a6);
    assert_eq!(k.wait_exit(T).await, Some(1));
    assert!(
        k.log_text().contains("--pg-listen-address is required"),
        "{}",
        k.log_text()
    );
    let k = w.spawn_keeper_env(
        "env",
        &a6,
        &[
            ("STKEEPER_PG_LISTEN_ADDRESS", "127.0.0.1"),
            ("STKEEPER_PG_REPL_USERNAME", REPL),
        ],
    );
    k.wait_log("exclusive lock on data dir taken", T).await;
    drop(k);
    a6.push("--pg-repl-username=".into());
    let mut k = w.spawn_keeper_env(
        "env-flag-wins",
        &a6,
        &[
            ("STKEEPER_PG_LISTEN_ADDRESS", "127.0.0.1"),
            ("STKEEPER_PG_REPL_USERNAME", REPL),
        ],
    );
    assert_eq!(k.wait_exit(T).await, Some(1));
    assert!(
        k.log_text().contains("--pg-repl-username is required"),
        "{}",
        k.log_text()
    );

    // Started as root: one clear line, exit 1.
    if nix::unistd::geteuid().is_root() {
        let out = std::process::Command::new(&w.bin)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("must not run as root"), "{err}");
    }
}

/// 6. A keeper killed with SIGKILL and restarted does not act on clusterdata made for its
/// previous process; SIGTERM stops postgres and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_honours_boot_uuid_and_sigterm_stops_postgres() {
    let w = World::new("boot").await;
    let (mut kp, port, mut cd) = start_master(&w, "keeper1", "db1", cluster_spec(), &[]).await;
    let info = w
        .wait_keeper_info("keeper1", T, |i| {
            i.postgres_state
                .as_ref()
                .is_some_and(|p| p.healthy && p.generation == 1)
        })
        .await;
    let old_boot = info.boot_uuid.clone();
    let pgdata = w.pgdata("keeper1");
    kp.kill_keeper_only();
    let orphan = postmaster_pid(&pgdata).expect("postmaster survives its keeper");
    assert!(alive(orphan));

    // Restart with the same uid and data dir; clusterdata still names the old boot UUID.
    let args = w.keeper_args("keeper1", port);
    let kp2 = w.spawn_keeper("keeper1-second", &args);
    let info2 = w
        .wait_keeper_info("keeper1", T, |i| i.boot_uuid != old_boot)
        .await;
    kp2.wait_log("waiting for it to be updated", T).await;
    wait_db_down(port, T).await;
    // A new spec change made for the old process must not be applied either.
    cd.dbs
        .get_mut("db1")
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .pg_parameters
        .insert("work_mem".into(), "9MB".into());
    bump(&mut cd, "db1");
    w.write_cd(&cd).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        su(port).await.is_err(),
        "postgres started for a stale boot UUID"
    );
    assert!(
        !alive(orphan),
        "the previous incarnation's postmaster must be stopped"
    );

    // The "sentinel" records the new boot UUID: the keeper converges.
    cd.keepers.get_mut("keeper1").unwrap().status.boot_uuid = info2.boot_uuid.clone();
    w.write_cd(&cd).await;
    wait_db_up(port, T).await;
    wait_for("work_mem 9MB", T, || async {
        query_one_string(port, "show work_mem")
            .await
            .filter(|v| v == "9MB")
    })
    .await;

    // SIGTERM: postgres stopped (fast), exit 0.
    let mut kp2 = kp2;
    let pm = postmaster_pid(&pgdata).expect("postmaster running");
    kp2.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(kp2.wait_exit(T).await, Some(0));
    assert!(!alive(pm), "postmaster still alive after SIGTERM");
    assert!(su(port).await.is_err());
    drop(kp);
}

/// Synchronous replication, keeper side (Stolon's TestSyncStandbyNotInSync): the primary lists
/// its synchronous standby in `synchronous_standby_names`; after the primary restarts while the
/// standby is down, only the keeper's own pg_hba rules are active until the standby is back in
/// sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_primary_restart_allows_only_internal_until_standby_in_sync() {
    let w = World::new("sync").await;
    let (k1, port1, mut cd) = start_master(&w, "keeper1", "db1", cluster_spec(), &[]).await;
    w.wait_keeper_info("keeper1", T, |i| {
        i.postgres_state
            .as_ref()
            .is_some_and(|p| p.healthy && p.generation == 1)
    })
    .await;
    let (k2, port2) = w.join_keeper(&mut cd, "keeper2").await;
    let mut s2 = db_spec(&cd, "keeper2", DbRole::Standby, DbInitMode::Resync);
    s2.follow_config = follow("db1");
    set_db(&mut cd, "db2", s2);
    {
        let s1 = cd.dbs.get_mut("db1").unwrap().spec.as_mut().unwrap();
        s1.followers = Some(vec!["db2".into()]);
        s1.synchronous_replication = true;
        s1.synchronous_standbys = Some(vec!["db2".into()]);
    }
    bump(&mut cd, "db1");
    w.write_cd(&cd).await;
    wait_db_up(port2, Duration::from_secs(120)).await;
    wait_for("synchronous_standby_names = stolon_db2", T, || async {
        query_one_string(port1, "show synchronous_standby_names")
            .await
            .filter(|v| v == "stolon_db2")
    })
    .await;
    w.wait_keeper_info("keeper1", T, |i| {
        i.postgres_state
            .as_ref()
            .is_some_and(|p| p.synchronous_standbys.as_deref() == Some(&["db2".to_string()][..]))
    })
    .await;
    su(port1)
        .await
        .unwrap()
        .batch_execute("create role user01 login password 'password01'")
        .await
        .unwrap();
    assert!(connect(port1, "user01", "password01").await.is_ok());

    // Standby down, then the primary's keeper restarts (postgres stopped and started again).
    let mut k2 = k2;
    k2.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(k2.wait_exit(T).await, Some(0));
    let mut k1 = k1;
    k1.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(k1.wait_exit(T).await, Some(0));
    let k1b = w.spawn_keeper("keeper1-restarted", &w.keeper_args("keeper1", port1));
    let old = cd.keepers["keeper1"].status.boot_uuid.clone();
    w.wait_keeper_info("keeper1", T, |i| i.boot_uuid != old)
        .await;
    w.sentinel_sync(&mut cd).await;
    w.write_cd(&cd).await;
    wait_db_up(port1, T).await;
    let e = connect(port1, "user01", "password01")
        .await
        .expect_err("only internal connections while the sync standby is not in sync");
    let m = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| format!("{e:?}"));
    assert!(m.contains("no pg_hba.conf entry"), "{m}");
    let hba = std::fs::read_to_string(w.pgdata("keeper1").join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("host all all"), "{hba}");

    // The standby comes back and syncs: all clients allowed again.
    let k2b = w.spawn_keeper("keeper2-restarted", &w.keeper_args("keeper2", port2));
    let old = cd.keepers["keeper2"].status.boot_uuid.clone();
    w.wait_keeper_info("keeper2", T, |i| i.boot_uuid != old)
        .await;
    w.sentinel_sync(&mut cd).await;
    w.write_cd(&cd).await;
    wait_for("user01 allowed once db2 is in sync", T, || async {
        connect(port1, "user01", "password01").await.ok()
    })
    .await;
    k1b.wait_log("synchronous standbys in sync, allowing all connections", T)
        .await;
    drop((k1, k2, k1b, k2b));
}

/// Init modes on the keeper side: `new` with includePreviousConfig keeps (and reports)
/// initdb's parameters; `existing` adopts the data already there (rows kept) under a new DB UID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_new_with_previous_config_then_existing() {
    let w = World::new("modes").await;
    let port = free();
    let kp = w.spawn_keeper("keeper1", &w.keeper_args("keeper1", port));
    let mut cd = base_cd(cluster_spec(), &["keeper1"]);
    w.write_cd(&cd).await;
    w.wait_keeper_info("keeper1", T, |_| true).await;
    w.sentinel_sync(&mut cd).await;
    let mut s = db_spec(&cd, "keeper1", DbRole::Master, DbInitMode::New);
    s.include_previous_config = true;
    set_db(&mut cd, "db1", s);
    set_master(&mut cd, "db1");
    w.write_cd(&cd).await;
    let info = w
        .wait_keeper_info("keeper1", Duration::from_secs(90), |i| {
            i.postgres_state
                .as_ref()
                .is_some_and(|p| p.healthy && p.uid == "db1" && p.generation == 1)
        })
        .await;
    let params = info.postgres_state.unwrap().pg_parameters;
    assert!(
        params.contains_key("max_connections"),
        "initdb's parameters kept and reported: {params:?}"
    );
    assert!(
        !params.contains_key("listen_addresses"),
        "managed ones filtered: {params:?}"
    );
    let dbstate = std::fs::read_to_string(w.data_dir("keeper1").join("dbstate")).unwrap();
    assert!(dbstate.contains("\"InitPGParameters\":{"), "{dbstate}");
    su(port)
        .await
        .unwrap()
        .batch_execute("create table kept(i int); insert into kept values (42);")
        .await
        .unwrap();

    // `existing`: a new DB UID on the same keeper keeps the data.
    cd.dbs.remove("db1");
    let s = db_spec(&cd, "keeper1", DbRole::Master, DbInitMode::Existing);
    set_db(&mut cd, "db9", s);
    set_master(&mut cd, "db9");
    w.write_cd(&cd).await;
    w.wait_keeper_info("keeper1", Duration::from_secs(90), |i| {
        i.postgres_state
            .as_ref()
            .is_some_and(|p| p.healthy && p.uid == "db9" && p.generation == 1)
    })
    .await;
    wait_for("row kept by init mode existing", T, || async {
        query_one_string(port, "select i::text from kept")
            .await
            .filter(|v| v == "42")
    })
    .await;
    assert!(
        !kp.log_text()
            .contains("different local dbUID but init mode is none")
    );

    // `none` with data of another DB: refused, data untouched (TestDisappearedKeeperData).
    cd.dbs.remove("db9");
    let s = db_spec(&cd, "keeper1", DbRole::Master, DbInitMode::None);
    set_db(&mut cd, "db10", s);
    set_master(&mut cd, "db10");
    w.write_cd(&cd).await;
    kp.wait_log("different local dbUID but init mode is none", T)
        .await;
    let dbstate = std::fs::read_to_string(w.data_dir("keeper1").join("dbstate")).unwrap();
    assert!(dbstate.contains("\"UID\":\"db9\""), "{dbstate}");
    assert!(w.pgdata("keeper1").join("PG_VERSION").exists());
    drop(kp);
}

/// Init mode `pitr` (Stolon's TestPITR, keeper side): restore a base backup with
/// `dataRestoreCommand`, replay archived WAL with `restore_command`, end recovery and run as the
/// master with the restored rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_pitr_restores_backup_and_archive() {
    let w = World::new("pitr").await;
    let archive = w.dir.subdir("archive", 0o700);
    let backup = w.dir.subdir("backup", 0o700);
    let mut spec = cluster_spec();
    let params = spec.pg_parameters.get_or_insert_with(Default::default);
    params.insert("archive_mode".into(), "on".into());
    params.insert(
        "archive_command".into(),
        format!("cp %p {}/%f", archive.display()),
    );
    let (k1, port1, mut cd) = start_master(&w, "keeper1", "db1", spec, &[]).await;
    w.wait_keeper_info("keeper1", T, |i| {
        i.postgres_state
            .as_ref()
            .is_some_and(|p| p.healthy && p.generation == 1)
    })
    .await;
    su(port1)
        .await
        .unwrap()
        .batch_execute("create table t(i int); insert into t values (7);")
        .await
        .unwrap();
    // Base backup (tar, no WAL: it comes from the archive), then one more WAL switch.
    let bb = stolon_pg::testing::pg_bin_dir().join("pg_basebackup");
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(&bb);
        c
    } else {
        std::process::Command::new(&bb)
    };
    let out = cmd
        .args(["-D"])
        .arg(backup.join("base"))
        .args([
            "-Ft",
            "-X",
            "none",
            "-h",
            "127.0.0.1",
            "-p",
            &port1.to_string(),
            "-U",
            REPL,
            "-w",
        ])
        .env("PGPASSWORD", REPL_PW)
        .current_dir(w.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    su(port1)
        .await
        .unwrap()
        .batch_execute("select pg_switch_wal()")
        .await
        .unwrap();
    drop(k1);

    // A fresh keeper restores it as the new cluster's master.
    cd.dbs.clear();
    cd.keepers.clear();
    cd.cluster.as_mut().unwrap().status.master.clear();
    let (k2, port2) = w.join_keeper(&mut cd, "keeper2").await;
    let mut s = db_spec(&cd, "keeper2", DbRole::Master, DbInitMode::Pitr);
    s.pitr_config = Some(stolon_core::model::PitrConfig {
        data_restore_command: format!("tar xf {}/base/base.tar -C %d", backup.display()),
        archive_recovery_settings: Some(stolon_core::model::ArchiveRecoverySettings {
            restore_command: format!("cp {}/%f %p", archive.display()),
        }),
        recovery_target_settings: None,
    });
    set_db(&mut cd, "dbp", s);
    set_master(&mut cd, "dbp");
    w.write_cd(&cd).await;
    k2.wait_log("executing the data restore command", T).await;
    wait_db_up(port2, Duration::from_secs(120)).await;
    wait_for(
        "restored row on the pitr master",
        Duration::from_secs(90),
        || async {
            query_one_string(port2, "select i::text from t")
                .await
                .filter(|v| v == "7")
        },
    )
    .await;
    wait_for("pitr master out of recovery", T, || async {
        query_one_string(port2, "select pg_is_in_recovery()::text")
            .await
            .filter(|v| v == "false")
    })
    .await;
    w.wait_keeper_info("keeper2", T, |i| {
        i.postgres_state
            .as_ref()
            .is_some_and(|p| p.healthy && p.uid == "dbp" && p.generation == 1 && p.timeline_id >= 2)
    })
    .await;
    drop(k2);
}
