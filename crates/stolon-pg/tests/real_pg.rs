//! Integration tests of stolon-pg against real PostgreSQL 15 (`/usr/lib/postgresql/15/bin`, or
//! `$STOLON_TEST_PG_BIN_DIR`). As root, every program runs as the `postgres` OS user in a fresh
//! `/tmp` dir it owns; every instance listens on a free loopback port and is killed on drop.
//! Each test is bounded by a timeout.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use stolon_pg::replication;
use stolon_pg::testing::TestDir;
use stolon_pg::{
    BaseBackupOptions, ConnParams, Credentials, InitDbOptions, PgCtl, PgError, ProcessPg,
    RecoveryMode, RewindOptions, RoleDef, StartOptions, StopMode, SystemIdentity, WalPosition,
};

const SU: &str = "stolon_su";
/// Quote, colon and backslash exercise every escaping layer (SQL literal, pgpass, pwfile).
const SU_PW: &str = "su'pa:ss\\1";
const REPL: &str = "stolon_repl";
const REPL_PW: &str = "repl:pw'2";
const TEST_TIMEOUT: Duration = Duration::from_secs(240);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn su() -> Credentials {
    Credentials::new(SU, Some(SU_PW.into()))
}

fn repl() -> Credentials {
    Credentials::new(REPL, Some(REPL_PW.into()))
}

fn node(dir: &TestDir, name: &str) -> Result<ProcessPg> {
    Ok(ProcessPg::new(dir.pg_config(name, su(), repl()))?)
}

/// Minimal postgresql.conf, rendered by the test (stolon-core renders the real one).
fn conf(pg: &ProcessPg, extra: &str) -> String {
    format!(
        "listen_addresses = '127.0.0.1'\n\
         port = {}\n\
         shared_buffers = '16MB'\n\
         wal_level = 'replica'\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         hot_standby = 'on'\n\
         wal_log_hints = 'on'\n\
         wal_keep_size = '128'\n\
         log_statement = 'all'\n\
         {extra}",
        pg.config().port
    )
}

fn hba() -> String {
    format!(
        "local postgres {SU} md5\n\
         local replication {REPL} md5\n\
         host all {SU} 127.0.0.1/32 md5\n\
         host replication {REPL} 127.0.0.1/32 md5\n"
    )
}

fn standby_conf(pg: &ProcessPg, primary_port: u16, slot: &str) -> String {
    let conninfo = format!(
        "host=127.0.0.1 port={primary_port} user={REPL} password='{}' application_name={slot}",
        REPL_PW.replace('\\', "\\\\").replace('\'', "\\'")
    );
    conf(
        pg,
        &format!(
            "primary_conninfo = '{}'\nprimary_slot_name = '{slot}'\n",
            conninfo.replace('\\', "\\\\").replace('\'', "''")
        ),
    )
}

fn source(pg: &ProcessPg, creds: &Credentials) -> ConnParams {
    let mut p = ConnParams::new("127.0.0.1", pg.config().port, &creds.user);
    p.password = creds.password.clone();
    p.connect_timeout = Some(Duration::from_secs(10));
    p
}

async fn bounded<F: Future<Output = Result<()>>>(f: F) -> Result<()> {
    init_tracing();
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .context("test timed out")?
}

/// Polls `check` every 200ms until it returns true, at most `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => last = "condition false".into(),
            Err(e) => last = format!("{e:#}"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not reached within {timeout:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// initdb (su password) + config + start + wait ready + roles.
async fn new_primary(pg: &ProcessPg, temp_merged: Option<String>) -> Result<()> {
    pg.init_db(&InitDbOptions {
        superuser_password: Some(SU_PW.into()),
        timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    })
    .await?;
    pg.write_postgresql_conf(&conf(pg, "")).await?;
    pg.write_pg_hba_conf(&hba()).await?;
    pg.set_recovery_mode(RecoveryMode::None).await?;
    pg.start(&StartOptions {
        temp_merged_config: temp_merged,
        ..Default::default()
    })
    .await?;
    pg.wait_ready(Duration::from_secs(60)).await?;
    pg.alter_role(&RoleDef {
        name: SU.into(),
        login: true,
        replication: false,
        password: Some(SU_PW.into()),
    })
    .await?;
    pg.create_role(&RoleDef {
        name: REPL.into(),
        login: true,
        replication: true,
        password: Some(REPL_PW.into()),
    })
    .await?;
    Ok(())
}

/// On a primary: `identify_system` (SQL on the cached connection) reports what psql's
/// IDENTIFY_SYSTEM does. The flush position may move between calls, so it is read around the
/// psql call until it stood still, and then must be equal.
async fn identity_matches_replication(pg: &ProcessPg) -> Result<SystemIdentity> {
    for _ in 0..20 {
        let before = pg.identify_system().await?;
        let repl = pg.identify_system_replication().await?;
        let after = pg.identify_system().await?;
        ensure!(
            before.system_id == repl.system_id && after.system_id == repl.system_id,
            "system ids differ: {before:?} {repl:?} {after:?}"
        );
        ensure!(
            before.timeline == repl.timeline && after.timeline == repl.timeline,
            "timelines differ: {before:?} {repl:?} {after:?}"
        );
        ensure!(
            before.xlog_pos <= repl.xlog_pos && repl.xlog_pos <= after.xlog_pos,
            "positions out of order: {before:?} {repl:?} {after:?}"
        );
        if before == after {
            ensure!(repl == before, "{repl:?} != {before:?}");
            return Ok(repl);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("WAL flush position never stood still over 20 tries");
}

/// IDENTIFY_SYSTEM through psql as the replication role: the reference that
/// `identify_system_replication` (stolon-pg's own replication-protocol client) must agree with.
async fn psql_identify_system(pg: &ProcessPg) -> Result<SystemIdentity> {
    let cfg = pg.config();
    let conninfo = format!(
        "host={} port={} user={REPL} replication=1 sslmode=disable",
        cfg.socket_dir.display(),
        cfg.port
    );
    let out = tokio::process::Command::new(cfg.binaries.program("psql")?)
        .args(["-X", "-w", "-A", "-t", "-F", "|", "-d", &conninfo])
        .args(["-c", "IDENTIFY_SYSTEM"])
        .env("PGPASSWORD", REPL_PW)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "psql IDENTIFY_SYSTEM: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let f: Vec<&str> = text.trim().split('|').collect();
    ensure!(f.len() >= 3, "psql IDENTIFY_SYSTEM printed {text:?}");
    Ok(SystemIdentity {
        system_id: f[0].parse()?,
        timeline: f[1].parse()?,
        xlog_pos: f[2].parse().map_err(|e: String| anyhow::anyhow!(e))?,
    })
}

/// Our replication client and psql agree on a node whose WAL position stands still.
async fn replication_client_matches_psql(pg: &ProcessPg) -> Result<SystemIdentity> {
    for _ in 0..20 {
        let ours = pg.identify_system_replication().await?;
        let theirs = psql_identify_system(pg).await?;
        ensure!(
            ours.system_id == theirs.system_id && ours.timeline == theirs.timeline,
            "{ours:?} != psql's {theirs:?}"
        );
        ensure!(
            ours.xlog_pos <= theirs.xlog_pos,
            "{ours:?} after psql's {theirs:?}"
        );
        if ours == theirs {
            return Ok(ours);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("WAL flush position never stood still over 20 tries");
}

/// The pids of the superuser's client backends other than the asking one.
/// The superuser client backends other than `observer`'s own. One long-lived observer is used
/// so that no short-lived connection of the test itself is still exiting when it looks.
async fn su_backends(observer: &tokio_postgres::Client) -> Result<Vec<i32>> {
    let rows = observer
        .query(
            "select pid from pg_stat_activity where usename = $1 \
             and backend_type = 'client backend' and pid <> pg_backend_pid() order by pid",
            &[&SU],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn rows(pg: &ProcessPg) -> Result<Vec<i32>> {
    let c = pg.connect().await?;
    let rows = c.query("select i from t order by i", &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn insert(pg: &ProcessPg, i: i32) -> Result<()> {
    pg.connect()
        .await?
        .execute("insert into t values ($1)", &[&i])
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initdb_start_sql_stop() -> Result<()> {
    bounded(async {
        let dir = TestDir::new("stolon-pg-it-");
        let pg = node(&dir, "n1")?;
        let mut exits = pg.exits();

        let v = pg.binary_version().await?;
        ensure!(v.major == 15, "binary version {v}");
        ensure!(!pg.is_initialized().await?);
        ensure!(pg.system_id().await?.is_none());

        new_primary(&pg, Some("max_connections = 42\n".into())).await?;
        ensure!(pg.is_initialized().await?);
        ensure!(pg.data_version().await?.map(|v| v.major) == Some(15));
        let sysid = pg.system_id().await?.context("no system id")?;
        ensure!(
            pg.config()
                .data_dir
                .join("stolon-temp-postgresql.conf")
                .exists()
        );

        // SQL over the socket as the superuser, with the password set by initdb --pwfile.
        pg.ping().await?;
        // Every statement is logged (log_statement = 'all'), except the role statements.
        let log_path = dir.path().join("n1/postgres.log");
        let log = std::fs::read_to_string(&log_path)?;
        ensure!(
            log.contains("statement: select 1"),
            "log_statement not effective"
        );
        ensure!(
            !log.contains(SU_PW) && !log.contains(REPL_PW) && !log.contains("password '"),
            "a password reached the postgres log"
        );
        let settings = pg.file_settings().await?;
        ensure!(
            settings.get("max_connections").map(String::as_str) == Some("42"),
            "temp merged setting missing: {settings:?}"
        );
        ensure!(settings.get("port") == Some(&pg.config().port.to_string()));
        ensure!(!pg.is_in_recovery().await?);
        ensure!(!pg.pending_restart().await?);
        ensure!(pg.in_sync_standbys().await?.is_empty());
        match pg.wal_position().await? {
            WalPosition::Primary { current } => ensure!(current.0 > 0),
            other => bail!("unexpected {other:?}"),
        }

        // The system identity over SQL equals IDENTIFY_SYSTEM through psql as the
        // replication role; it really went over SQL.
        let id = identity_matches_replication(&pg).await?;
        ensure!(id.system_id == sysid, "{} != {sysid}", id.system_id);
        ensure!(id.timeline == 1);
        ensure!(id.xlog_pos.0 > 0);
        let log = std::fs::read_to_string(&log_path)?;
        ensure!(
            log.contains("from pg_control_system()"),
            "no SQL identity query"
        );
        ensure!(pg.timeline_history(1).await?.is_empty());

        // Slots: create, list (only non-temporary), drop.
        ensure!(pg.replication_slots().await?.is_empty());
        pg.create_replication_slot("stolon_a").await?;
        pg.create_replication_slot("other").await?;
        ensure!(pg.replication_slots().await? == vec!["other".to_string(), "stolon_a".into()]);
        pg.drop_replication_slot("stolon_a").await?;
        ensure!(pg.replication_slots().await? == vec!["other".to_string()]);
        ensure!(pg.drop_replication_slot("missing").await.is_err());

        pg.checkpoint().await?;
        let wal = pg.oldest_wal_file().await?.context("no WAL file")?;
        ensure!(
            wal.size == 16 * 1024 * 1024 && wal.name.len() == 24,
            "{wal:?}"
        );

        // ALTER SYSTEM is blocked by the /dev/null symlink.
        let link = std::fs::read_link(pg.config().data_dir.join("postgresql.auto.conf"))?;
        ensure!(link == std::path::Path::new("/dev/null"));
        let err = pg
            .connect()
            .await?
            .batch_execute("alter system set work_mem = '8MB'")
            .await;
        ensure!(err.is_err(), "ALTER SYSTEM succeeded");

        // A restart-needing change is reported after reload; a reloadable one is applied.
        pg.write_postgresql_conf(&conf(&pg, "shared_buffers = '24MB'\nwork_mem = '7MB'\n"))
            .await?;
        pg.reload().await?;
        wait_until("pending restart", Duration::from_secs(20), || async {
            Ok(pg.pending_restart().await?)
        })
        .await?;
        let wm: String = pg
            .connect()
            .await?
            .query_one("show work_mem", &[])
            .await?
            .get(0);
        ensure!(wm == "7MB", "work_mem {wm}");

        // A second start while our child runs is refused.
        ensure!(matches!(
            pg.start(&StartOptions::default()).await,
            Err(PgError::AlreadyRunning(_))
        ));

        // Stop: an expected exit is published; stopping again is a no-op / an error.
        ensure!(pg.is_running().await?);
        pg.stop(StopMode::Fast).await?;
        ensure!(!pg.is_running().await?);
        let exit = exits.borrow_and_update().clone().context("no exit event")?;
        ensure!(exit.expected && exit.seq == 1, "{exit:?}");
        pg.stop_if_started(StopMode::Fast).await?;
        ensure!(pg.stop(StopMode::Fast).await.is_err());
        ensure!(pg.ping().await.is_err());

        // Restart, then the postmaster dies on its own: an unexpected exit is published.
        pg.start(&StartOptions::default()).await?;
        pg.wait_ready(Duration::from_secs(60)).await?;
        ensure!(
            !pg.pending_restart().await?,
            "restart applied shared_buffers"
        );
        let pid = pg.child_pid().context("no child")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGQUIT,
        )?;
        tokio::time::timeout(Duration::from_secs(30), exits.changed()).await??;
        let exit = exits.borrow().clone().context("no exit event")?;
        ensure!(
            !exit.expected && exit.pid == pid && exit.seq == 2,
            "{exit:?}"
        );
        let err = pg.wait_ready(Duration::from_secs(30)).await.unwrap_err();
        ensure!(matches!(err, PgError::ExitedUnexpectedly { .. }), "{err}");

        // Dropping the controller kills a running postmaster child.
        pg.start(&StartOptions::default()).await?;
        let pid = nix::unistd::Pid::from_raw(pg.child_pid().context("no child")? as i32);
        drop(pg);
        wait_until(
            "postmaster gone after drop",
            Duration::from_secs(20),
            || async { Ok(nix::sys::signal::kill(pid, None).is_err()) },
        )
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_restart_ignores_recovery_parameters() -> Result<()> {
    bounded(async {
        let dir = TestDir::new("stolon-pg-it-");
        let pg = node(&dir, "n1")?;
        new_primary(&pg, None).await?;
        ensure!(!pg.pending_restart().await?);
        pg.write_postgresql_conf(&conf(&pg, "recovery_target_timeline = 'current'\n"))
            .await?;
        pg.reload().await?;
        let raw = || async {
            let c = pg.connect().await?;
            let rows = c
                .query(
                    "select name::text from pg_settings where pending_restart",
                    &[],
                )
                .await?;
            Ok::<Vec<String>, anyhow::Error>(rows.iter().map(|r| r.get(0)).collect())
        };
        wait_until(
            "recovery_target_timeline pending",
            Duration::from_secs(20),
            || async { Ok(raw().await? == vec!["recovery_target_timeline".to_string()]) },
        )
        .await?;
        ensure!(!pg.pending_restart().await?, "a recovery parameter counted");
        pg.write_postgresql_conf(&conf(
            &pg,
            "recovery_target_timeline = 'current'\nshared_buffers = '24MB'\n",
        ))
        .await?;
        pg.reload().await?;
        wait_until("pending restart", Duration::from_secs(20), || async {
            Ok(pg.pending_restart().await?)
        })
        .await?;
        pg.stop(StopMode::Fast).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_reported_and_cleaned_up() -> Result<()> {
    bounded(async {
        let dir = TestDir::new("stolon-pg-it-");
        let pg = node(&dir, "n1")?;
        let pgdata = pg.config().data_dir.clone();

        // initdb with a bad locale fails and leaves no PGDATA behind.
        let err = pg
            .init_db(&InitDbOptions {
                locale: Some("xx_NOT_A_LOCALE".into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        ensure!(matches!(err, PgError::ToolFailed { .. }), "{err}");
        ensure!(!pgdata.exists());

        // postgres refusing its config: "postgres exited unexpectedly" with its own words.
        pg.init_db(&InitDbOptions::default()).await?;
        pg.write_postgresql_conf("port = 1\nno_such_parameter = 1\n")
            .await?;
        let err = pg.start(&StartOptions::default()).await.unwrap_err();
        let msg = err.to_string();
        ensure!(
            msg.starts_with("postgres exited unexpectedly") && msg.contains("no_such_parameter"),
            "{msg}"
        );

        // pg_basebackup from nowhere fails and removes PGDATA.
        let mut nowhere = ConnParams::new("127.0.0.1", stolon_pg::testing::free_port(), REPL);
        nowhere.connect_timeout = Some(Duration::from_secs(5));
        let err = pg
            .base_backup(&BaseBackupOptions {
                source: nowhere,
                slot: None,
                fast_checkpoint: true,
                timeout: Some(Duration::from_secs(60)),
            })
            .await
            .unwrap_err();
        ensure!(matches!(err, PgError::ToolFailed { .. }), "{err}");
        ensure!(!pgdata.exists());

        // Restore command: %d and %% expanded, PGDATA created first; failure removes it.
        pg.restore_data("echo 100%% > %d/marker", Some(Duration::from_secs(30)))
            .await?;
        ensure!(std::fs::read_to_string(pgdata.join("marker"))? == "100%\n");
        let err = pg
            .restore_data("exit 3", Some(Duration::from_secs(30)))
            .await
            .unwrap_err();
        ensure!(
            matches!(err, PgError::ToolFailed { code: Some(3), .. }),
            "{err}"
        );
        ensure!(!pgdata.exists());

        // A hanging tool is killed at its timeout, with what it spawned.
        let marker = dir.path().join("tmp/never");
        let cmd = format!("(sleep 3; touch {}) & sleep 30", marker.display());
        let err = pg
            .restore_data(&cmd, Some(Duration::from_millis(500)))
            .await
            .unwrap_err();
        ensure!(matches!(err, PgError::ToolTimeout { .. }), "{err}");
        tokio::time::sleep(Duration::from_secs(4)).await;
        ensure!(!marker.exists(), "a child of the killed tool survived");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_clone_promote_rewind_follow() -> Result<()> {
    bounded(async {
        let dir = TestDir::new("stolon-pg-it-");
        let n1 = node(&dir, "n1")?;
        let n2 = node(&dir, "n2")?;
        let (p1, p2) = (n1.config().port, n2.config().port);

        // Primary n1 with a slot for n2 and a first row.
        new_primary(&n1, None).await?;
        n1.create_replication_slot("stolon_n2").await?;
        n1.connect()
            .await?
            .batch_execute("create table t (i int primary key); insert into t values (1)")
            .await?;

        // n2: pg_basebackup through the slot, own recovery settings, start as standby.
        let mut src = source(&n1, &repl());
        src.application_name = Some("stolon_n2".into());
        n2.base_backup(&BaseBackupOptions {
            source: src,
            slot: Some("stolon_n2".into()),
            fast_checkpoint: true,
            timeout: Some(Duration::from_secs(120)),
        })
        .await?;
        ensure!(n2.is_initialized().await?);
        ensure!(n2.system_id().await? == n1.system_id().await?);
        n2.write_postgresql_conf(&standby_conf(&n2, p1, "stolon_n2"))
            .await?;
        n2.write_pg_hba_conf(&hba()).await?;
        n2.set_recovery_mode(RecoveryMode::Standby).await?;
        ensure!(n2.recovery_mode().await? == RecoveryMode::Standby);
        n2.start(&StartOptions::default()).await?;
        n2.wait_ready(Duration::from_secs(60)).await?;
        ensure!(n2.is_in_recovery().await?);
        ensure!(matches!(
            n2.wal_position().await?,
            WalPosition::Standby { .. }
        ));

        insert(&n1, 2).await?;
        wait_until("row 2 on standby", Duration::from_secs(60), || async {
            Ok(rows(&n2).await? == vec![1, 2])
        })
        .await?;
        let id2 = n2.identify_system().await?;
        ensure!(id2.timeline == 1 && id2.xlog_pos.0 > 0, "{id2:?}");
        // A standby's identity comes from IDENTIFY_SYSTEM (its replay timeline), the same as
        // psql's.
        let r2 = replication_client_matches_psql(&n2).await?;
        ensure!(
            r2.system_id == id2.system_id && r2.timeline == 1,
            "{r2:?} vs {id2:?}"
        );

        // Synchronous replication seen through pg_stat_replication, then back to async.
        n1.write_postgresql_conf(&conf(&n1, "synchronous_standby_names = 'stolon_n2'\n"))
            .await?;
        n1.reload().await?;
        wait_until("n2 in sync", Duration::from_secs(60), || async {
            Ok(n1.in_sync_standbys().await? == vec!["n2".to_string()])
        })
        .await?;
        n1.write_postgresql_conf(&conf(&n1, "")).await?;
        n1.reload().await?;
        wait_until("n2 async", Duration::from_secs(60), || async {
            Ok(n1.in_sync_standbys().await?.is_empty())
        })
        .await?;

        // Failover: promote n2; the old primary keeps writing (a forked timeline).
        n2.promote().await?;
        ensure!(!n2.is_in_recovery().await?);
        ensure!(n2.recovery_mode().await? == RecoveryMode::None);
        // The new primary's identity (over its connection cached since it was a standby)
        // reports the new timeline, as IDENTIFY_SYSTEM does.
        let id2 = identity_matches_replication(&n2).await?;
        let r = replication_client_matches_psql(&n2).await?;
        ensure!(
            r.system_id == id2.system_id && r.timeline == 2,
            "{r:?} vs {id2:?}"
        );
        ensure!(
            id2.timeline == 2 && id2.system_id == r2.system_id,
            "{id2:?}"
        );
        insert(&n2, 3).await?;
        insert(&n1, 99).await?;
        n2.create_replication_slot("stolon_n1").await?;
        n1.stop(StopMode::Fast).await?;

        // Rewind n1 onto n2's timeline (CHECKPOINT on n2 first), then follow n2.
        let out = n1
            .rewind(&RewindOptions {
                source: source(&n2, &su()),
                checkpoint_source: true,
                timeout: Some(Duration::from_secs(120)),
            })
            .await?;
        ensure!(out.rewound, "pg_rewind did not rewind: {}", out.output);
        tracing::info!(output = %out.output, "pg_rewind done");
        n1.write_postgresql_conf(&standby_conf(&n1, p2, "stolon_n1"))
            .await?;
        n1.write_pg_hba_conf(&hba()).await?;
        n1.set_recovery_mode(RecoveryMode::Standby).await?;
        n1.start(&StartOptions::default()).await?;
        n1.wait_ready(Duration::from_secs(60)).await?;
        ensure!(n1.is_in_recovery().await?);
        insert(&n2, 4).await?;
        wait_until("n1 follows n2", Duration::from_secs(60), || async {
            Ok(rows(&n1).await? == vec![1, 2, 3, 4])
        })
        .await?;

        // Both on timeline 2 with the same system; n2's history names the fork.
        let id1 = n1.identify_system().await?;
        let id2 = n2.identify_system().await?;
        ensure!(id1.timeline == 2 && id2.timeline == 2, "{id1:?} {id2:?}");
        ensure!(id1.system_id == id2.system_id);
        let hist = n2.timeline_history(2).await?;
        ensure!(hist.len() == 1 && hist[0].timeline == 1, "{hist:?}");
        let hist1 = n1.timeline_history(2).await?;
        ensure!(hist1 == hist, "{hist1:?} != {hist:?}");
        ensure!(n2.replication_slots().await? == vec!["stolon_n1".to_string()]);
        wait_until("n1 streaming from n2", Duration::from_secs(30), || async {
            let c = n2.connect().await?;
            let r = c
                .query_opt(
                    "select 1 from pg_stat_replication where application_name = 'stolon_n1'",
                    &[],
                )
                .await?;
            Ok(r.is_some())
        })
        .await?;

        n1.stop(StopMode::Fast).await?;
        n2.stop_if_started(StopMode::Fast).await?;
        ensure!(!n1.is_running().await? && !n2.is_running().await?);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_connection_reused_and_renewed() -> Result<()> {
    bounded(async {
        let dir = TestDir::new("stolon-pg-it-");
        let pg = node(&dir, "n1")?;
        new_primary(&pg, None).await?;

        // Every SQL call goes over one connection: one superuser backend, the same pid.
        let observer = pg.connect().await?;
        pg.file_settings().await?;
        pg.in_sync_standbys().await?;
        pg.identify_system().await?;
        // Connections of the setup may still be exiting.
        wait_until("one cached backend", Duration::from_secs(20), || async {
            Ok(su_backends(&observer).await?.len() == 1)
        })
        .await?;
        let first = su_backends(&observer).await?;
        for _ in 0..5 {
            pg.file_settings().await?;
            pg.in_sync_standbys().await?;
            pg.identify_system().await?;
            pg.replication_slots().await?;
            pg.ping().await?;
        }
        let after = su_backends(&observer).await?;
        ensure!(
            after == first,
            "the connection was not reused: {first:?} -> {after:?}"
        );

        // Its backend is terminated: the next calls reconnect.
        observer
            .execute("select pg_terminate_backend($1)", &[&first[0]])
            .await?;
        wait_until("reconnected", Duration::from_secs(20), || async {
            pg.file_settings().await?;
            Ok(true)
        })
        .await?;
        pg.in_sync_standbys().await?;
        // The terminated backend may take a moment to leave pg_stat_activity.
        wait_until("only the new backend", Duration::from_secs(20), || async {
            Ok(!su_backends(&observer).await?.contains(&first[0]))
        })
        .await?;
        let second = su_backends(&observer).await?;
        ensure!(
            second.len() == 1 && second != first,
            "{first:?} -> {second:?}"
        );
        drop(observer);

        // Restart: no call sees the old postmaster's connection.
        pg.stop(StopMode::Fast).await?;
        ensure!(pg.ping().await.is_err());
        pg.start(&StartOptions::default()).await?;
        pg.wait_ready(Duration::from_secs(60)).await?;
        pg.file_settings().await?;
        pg.in_sync_standbys().await?;
        identity_matches_replication(&pg).await?;

        // A smart shutdown is not held up by the cached connection (pg_ctl would time out).
        pg.stop(StopMode::Smart).await?;
        ensure!(!pg.is_running().await?);
        Ok(())
    })
    .await
}

/// The per-pass state queries of the keeper (`query_state`), `n` times; returns the mean per
/// pass and the mean of each call (in `query_state`'s order).
async fn time_state_queries(pg: &ProcessPg, n: u32) -> Result<(Duration, [Duration; 5])> {
    let mut each = [Duration::ZERO; 5];
    let start = std::time::Instant::now();
    for _ in 0..n {
        let t = std::time::Instant::now();
        pg.file_settings().await?;
        each[0] += t.elapsed();
        let t = std::time::Instant::now();
        pg.in_sync_standbys().await?;
        each[1] += t.elapsed();
        let t = std::time::Instant::now();
        let id = pg.identify_system().await?;
        each[2] += t.elapsed();
        let t = std::time::Instant::now();
        if id.timeline > 1 {
            pg.timeline_history(id.timeline).await?;
        }
        each[3] += t.elapsed();
        let t = std::time::Instant::now();
        pg.oldest_wal_file().await?;
        each[4] += t.elapsed();
    }
    Ok((start.elapsed() / n, each.map(|d| d / n)))
}

/// The same passes the way `ProcessPg` did them before the cached connection: a new
/// connection per SQL call and psql's IDENTIFY_SYSTEM; returns the mean per pass.
async fn time_state_queries_uncached(pg: &ProcessPg, n: u32) -> Result<Duration> {
    let start = std::time::Instant::now();
    for _ in 0..n {
        pg.connect()
            .await?
            .query(
                "select name, setting from pg_file_settings \
                 where name is not null and setting is not null order by seqno",
                &[],
            )
            .await?;
        pg.connect()
            .await?
            .query(
                "select application_name, sync_state from pg_stat_replication",
                &[],
            )
            .await?;
        let id = psql_identify_system(pg).await?;
        if id.timeline > 1 {
            pg.timeline_history(id.timeline).await?;
        }
        pg.oldest_wal_file().await?;
    }
    Ok(start.elapsed() / n)
}

/// Measures (prints, never asserts on time) the keeper's per-pass state queries on an idle
/// primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_queries_timing() -> Result<()> {
    bounded(async {
        let dir = TestDir::new("stolon-pg-it-");
        let pg = node(&dir, "n1")?;
        new_primary(&pg, None).await?;
        // Warm-up.
        time_state_queries(&pg, 2).await?;
        let (mean, each) = time_state_queries(&pg, 20).await?;
        eprintln!(
            "state queries, 20 passes on an idle primary: mean {mean:?} per pass; \
             file_settings {:?}, in_sync_standbys {:?}, identify_system {:?}, \
             timeline_history {:?}, oldest_wal_file {:?}",
            each[0], each[1], each[2], each[3], each[4]
        );
        let uncached = time_state_queries_uncached(&pg, 20).await?;
        eprintln!(
            "state queries, 20 passes the uncached way (a connection per SQL call, psql \
             IDENTIFY_SYSTEM): mean {uncached:?} per pass"
        );
        // A standby's identity: our replication client against the psql it replaced.
        let t = std::time::Instant::now();
        for _ in 0..20 {
            pg.identify_system_replication().await?;
        }
        let ours = t.elapsed() / 20;
        let t = std::time::Instant::now();
        for _ in 0..20 {
            psql_identify_system(&pg).await?;
        }
        let theirs = t.elapsed() / 20;
        eprintln!(
            "IDENTIFY_SYSTEM over a replication connection, mean of 20: {ours:?} with \
             stolon-pg's client, {theirs:?} with psql"
        );
        pg.stop(StopMode::Fast).await?;
        Ok(())
    })
    .await
}

/// The replication-protocol client against each password method PostgreSQL may ask for, and
/// the errors it gives: SCRAM (the replication role of every test), md5, cleartext, trust, a
/// wrong password, a missing password, a role without REPLICATION.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_client_auth_methods_and_errors() -> Result<()> {
    bounded(async {
        let dir = TestDir::new("stolon-pg-it-");
        let pg = node(&dir, "n1")?;
        new_primary(&pg, None).await?;
        let c = pg.connect().await?;
        c.batch_execute(
            "set password_encryption = 'md5'; \
             create role md5_repl login replication password 'md5-pw'; \
             create role plain_repl login replication password 'plain-pw'; \
             create role trust_repl login replication; \
             create role no_repl login password 'x'",
        )
        .await?;
        pg.write_pg_hba_conf(&format!(
            "{}local replication md5_repl md5\n\
             local replication plain_repl password\n\
             local replication trust_repl trust\n\
             local replication no_repl trust\n",
            hba()
        ))
        .await?;
        pg.reload().await?;

        let cfg = pg.config();
        let socket = cfg.socket_dir.join(format!(".s.PGSQL.{}", cfg.port));
        let sysid = pg.system_id().await?.context("no system id")?;
        let scram: String = c
            .query_one(
                "select rolpassword from pg_authid where rolname = $1",
                &[&REPL],
            )
            .await?
            .get(0);
        ensure!(
            scram.starts_with("SCRAM-SHA-256$"),
            "{REPL} is not a SCRAM role"
        );
        let id = |user: &'static str, pw: Option<&'static str>| {
            let socket = socket.clone();
            async move { replication::identify_system(&socket, user, pw).await }
        };
        for (user, pw) in [
            (REPL, Some(REPL_PW)),
            ("md5_repl", Some("md5-pw")),
            ("plain_repl", Some("plain-pw")),
            ("trust_repl", None),
        ] {
            let got = id(user, pw).await.with_context(|| user.to_string())?;
            ensure!(
                got.system_id == sysid && got.timeline == 1 && got.xlog_pos.0 > 0,
                "{user}: {got:?}"
            );
        }
        let err = |r: Result<SystemIdentity, replication::ReplicationError>| match r {
            Ok(v) => format!("unexpected success {v:?}"),
            Err(e) => e.to_string(),
        };
        let e = err(id("md5_repl", Some("wrong")).await);
        ensure!(
            e == "server error: FATAL: password authentication failed for user \"md5_repl\"",
            "{e}"
        );
        let e = err(id(REPL, Some("wrong")).await);
        ensure!(e.contains("password authentication failed"), "{e}");
        let e = err(id(REPL, None).await);
        ensure!(
            e == format!("the server asks for a password for {REPL:?} and none is configured"),
            "{e}"
        );
        let e = err(id("no_repl", None).await);
        ensure!(
            e.starts_with("server error: FATAL:") && e.contains("replication"),
            "{e}"
        );
        // Through ProcessPg, the error names the socket it used.
        let wrong = ProcessPg::new({
            let mut c = cfg.clone();
            c.replication = Credentials::new(REPL, Some("wrong".into()));
            c
        })?;
        let e = wrong
            .identify_system_replication()
            .await
            .unwrap_err()
            .to_string();
        ensure!(
            e.starts_with(&format!(
                "replication connection to postgres at {}:{}: server error: FATAL:",
                cfg.socket_dir.display(),
                cfg.port
            )) && !e.contains("wrong"),
            "{e}"
        );
        // A stopped server: a socket error, not a hang or a panic.
        pg.stop(StopMode::Fast).await?;
        let r = id(REPL, Some(REPL_PW)).await;
        ensure!(
            matches!(r, Err(replication::ReplicationError::Io(_))),
            "{}",
            err(r)
        );
        Ok(())
    })
    .await
}

/// The planned switchover's mechanics on real PostgreSQL: a clean (fast) shutdown of the
/// primary records its shutdown checkpoint in pg_control; the streaming standby receives WAL
/// beyond it before the primary exits; the standby is promoted with every committed row; the
/// old primary then starts with standby.signal and follows the new timeline without pg_rewind
/// or a base backup (same system id, its own data kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_clean_stop_promote_and_rejoin_without_rewind() -> Result<()> {
    bounded(async {
        let dir = TestDir::new("stolon-pg-it-");
        let n1 = node(&dir, "n1")?;
        let n2 = node(&dir, "n2")?;
        let (p1, p2) = (n1.config().port, n2.config().port);
        new_primary(&n1, None).await?;
        n1.create_replication_slot("stolon_n2").await?;
        n1.connect()
            .await?
            .batch_execute("create table t (i int primary key); insert into t values (1)")
            .await?;
        ensure!(
            n1.shutdown_checkpoint().await?.is_none(),
            "a running primary has no shutdown checkpoint"
        );
        let mut src = source(&n1, &repl());
        src.application_name = Some("stolon_n2".into());
        n2.base_backup(&BaseBackupOptions {
            source: src,
            slot: Some("stolon_n2".into()),
            fast_checkpoint: true,
            timeout: Some(Duration::from_secs(120)),
        })
        .await?;
        n2.write_postgresql_conf(&standby_conf(&n2, p1, "stolon_n2"))
            .await?;
        n2.write_pg_hba_conf(&hba()).await?;
        n2.set_recovery_mode(RecoveryMode::Standby).await?;
        n2.start(&StartOptions::default()).await?;
        n2.wait_ready(Duration::from_secs(60)).await?;
        for i in 2..=50 {
            insert(&n1, i).await?;
        }
        let system_id = n1.system_id().await?;

        // Clean stop of the primary: its shutdown checkpoint is its last record.
        n1.stop(StopMode::Fast).await?;
        let checkpoint = n1
            .shutdown_checkpoint()
            .await?
            .context("no shutdown checkpoint after a fast shutdown")?;
        wait_until(
            "standby beyond the shutdown checkpoint",
            Duration::from_secs(60),
            || async { Ok(n2.identify_system().await?.xlog_pos.0 > checkpoint) },
        )
        .await?;

        // Promote: every committed row is there.
        n2.promote().await?;
        ensure!(rows(&n2).await? == (1..=50).collect::<Vec<_>>());
        n2.create_replication_slot("stolon_n1").await?;
        insert(&n2, 51).await?;

        // The old primary follows the new timeline as it is: no rewind, no clone.
        n1.write_postgresql_conf(&standby_conf(&n1, p2, "stolon_n1"))
            .await?;
        n1.set_recovery_mode(RecoveryMode::Standby).await?;
        n1.start(&StartOptions::default()).await?;
        n1.wait_ready(Duration::from_secs(60)).await?;
        ensure!(n1.is_in_recovery().await?);
        ensure!(n1.system_id().await? == system_id);
        wait_until("n1 follows n2", Duration::from_secs(60), || async {
            Ok(rows(&n1).await? == (1..=51).collect::<Vec<_>>())
        })
        .await?;
        let id1 = n1.identify_system().await?;
        ensure!(id1.timeline == 2, "{id1:?}");
        wait_until("n1 streaming from n2", Duration::from_secs(30), || async {
            let c = n2.connect().await?;
            let r = c
                .query_opt(
                    "select 1 from pg_stat_replication where application_name = 'stolon_n1' \
                     and state = 'streaming'",
                    &[],
                )
                .await?;
            Ok(r.is_some())
        })
        .await?;
        n1.stop(StopMode::Fast).await?;
        n2.stop_if_started(StopMode::Fast).await?;
        Ok(())
    })
    .await
}
