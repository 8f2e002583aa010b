//! Harness for the keeper's integration tests: a real etcd, the real `stolon-keeper` binary run
//! as the `postgres` OS user (setpriv), real PostgreSQL 15, and the test itself writing
//! clusterdata the way a sentinel would. Every process is killed on drop; every wait is bounded.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stolon_core::model::{
    Cluster, ClusterData, ClusterPhase, ClusterSpec, ClusterStatus, Db, DbInitMode, DbRole, DbSpec,
    FollowConfig, FollowType, Keeper, KeeperInfo, KeeperStatus, Proxy,
};
use stolon_pg::testing::{TestDir, free_port};
use stolon_store::Store;
use stolon_store::testing::etcd::EtcdServer;

pub const SU: &str = "stolon_superuser";
pub const SU_PW: &str = "stolon_superuserpassword";
pub const REPL: &str = "stolon_repluser";
pub const REPL_PW: &str = "stolon_replpassword";
pub const CLUSTER: &str = "kt";

/// One test's world: etcd, a postgres-owned temp dir, the installed keeper binary, a store client.
pub struct World {
    pub etcd: EtcdServer,
    pub dir: TestDir,
    pub bin: PathBuf,
    pub store: Arc<dyn Store>,
    pub cluster: String,
}

impl World {
    pub async fn new(name: &str) -> World {
        let etcd = EtcdServer::start_async().await.expect("start etcd");
        let dir = TestDir::new(&format!("stk-{name}-"));
        let bin = dir.install_binary(Path::new(env!("CARGO_BIN_EXE_stolon-keeper")));
        let cluster = format!("{CLUSTER}{name}");
        let (store, _) = stolon_store::connect(&etcd.store_config(&cluster))
            .await
            .expect("connect store");
        // Password files, readable only by postgres.
        let secrets = dir.subdir("secrets", 0o700);
        for (f, pw) in [("su", SU_PW), ("repl", REPL_PW)] {
            write_owned(&secrets.join(f), pw, &dir);
        }
        World {
            etcd,
            dir,
            bin,
            store,
            cluster,
        }
    }

    pub fn secret(&self, name: &str) -> PathBuf {
        self.dir.path().join("secrets").join(name)
    }

    /// Standard flags of a keeper `uid` with data in `<dir>/<uid>`.
    pub fn keeper_args(&self, uid: &str, port: u16) -> Vec<String> {
        let mut a = self.etcd.store_flags(&self.cluster);
        a.extend([
            format!("--uid={uid}"),
            format!("--data-dir={}", self.data_dir(uid).display()),
            "--pg-listen-address=127.0.0.1".into(),
            format!("--pg-port={port}"),
            format!(
                "--pg-bin-path={}",
                stolon_pg::testing::pg_bin_dir().display()
            ),
            format!("--pg-su-username={SU}"),
            format!("--pg-su-passwordfile={}", self.secret("su").display()),
            format!("--pg-repl-username={REPL}"),
            format!("--pg-repl-passwordfile={}", self.secret("repl").display()),
        ]);
        a
    }

    pub fn data_dir(&self, uid: &str) -> PathBuf {
        self.dir.path().join(uid)
    }

    pub fn pgdata(&self, uid: &str) -> PathBuf {
        self.data_dir(uid).join("postgres")
    }

    /// Starts the keeper binary as the postgres OS user with `args`; output goes to a log file.
    pub fn spawn_keeper(&self, name: &str, args: &[String]) -> KeeperProc {
        self.spawn_keeper_env(name, args, &[])
    }

    /// [`World::spawn_keeper`] with extra environment variables.
    pub fn spawn_keeper_env(
        &self,
        name: &str,
        args: &[String],
        envs: &[(&str, &str)],
    ) -> KeeperProc {
        let log = self.dir.path().join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open keeper log");
        let err = out.try_clone().expect("clone log handle");
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                .arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("RUST_LOG", "info,postgres=warn")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().expect("spawn keeper");
        KeeperProc {
            child: Some(child),
            log,
            pgdata: args
                .iter()
                .find_map(|a| a.strip_prefix("--data-dir="))
                .map(|d| Path::new(d).join("postgres")),
        }
    }

    pub async fn keeper_info(&self, uid: &str) -> Option<KeeperInfo> {
        self.store.get_keepers_info().await.ok()?.remove(uid)
    }

    /// Waits for a keeper info for `uid` satisfying `f`.
    pub async fn wait_keeper_info(
        &self,
        uid: &str,
        limit: Duration,
        f: impl Fn(&KeeperInfo) -> bool,
    ) -> KeeperInfo {
        let start = Instant::now();
        loop {
            if let Some(i) = self.keeper_info(uid).await
                && f(&i)
            {
                return i;
            }
            assert!(
                start.elapsed() < limit,
                "keeper info of {uid} not as expected within {limit:?}: {:?}",
                self.keeper_info(uid).await
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn write_cd(&self, cd: &ClusterData) {
        self.store
            .force_put_cluster_data(cd)
            .await
            .expect("write clusterdata");
    }

    pub async fn read_cd(&self) -> ClusterData {
        self.store
            .get_cluster_data()
            .await
            .expect("read clusterdata")
            .data
            .expect("clusterdata present")
    }

    /// Starts keeper `uid` on a free port and registers it in `cd` as a sentinel would: the keeper
    /// appears in clusterdata (written), its first info is awaited and its boot UUID recorded.
    /// Returns the process and its PostgreSQL port; no DB is assigned yet.
    pub async fn join_keeper(&self, cd: &mut ClusterData, uid: &str) -> (KeeperProc, u16) {
        self.join_keeper_with(cd, uid, &[]).await
    }

    /// [`World::join_keeper`] with extra flags.
    pub async fn join_keeper_with(
        &self,
        cd: &mut ClusterData,
        uid: &str,
        extra_args: &[String],
    ) -> (KeeperProc, u16) {
        let port = free();
        let mut args = self.keeper_args(uid, port);
        args.extend(extra_args.iter().cloned());
        let k = self.spawn_keeper(uid, &args);
        cd.keepers.insert(
            uid.into(),
            stolon_core::model::Keeper {
                uid: uid.into(),
                generation: 1,
                ..Default::default()
            },
        );
        self.write_cd(cd).await;
        self.wait_keeper_info(uid, Duration::from_secs(60), |_| true)
            .await;
        self.sentinel_sync(cd).await;
        (k, port)
    }

    /// Copies every keeper's reported state into its DB status and the keepers' boot UUIDs into
    /// their keeper status, as the sentinel does.
    pub async fn sentinel_sync(&self, cd: &mut ClusterData) {
        let infos = self.store.get_keepers_info().await.expect("keepers info");
        for (uid, info) in &infos {
            if let Some(k) = cd.keepers.get_mut(uid) {
                k.status.boot_uuid = info.boot_uuid.clone();
                k.status.healthy = true;
            }
            let Some(ps) = &info.postgres_state else {
                continue;
            };
            if let Some(db) = cd.dbs.get_mut(&ps.uid) {
                if db.spec.as_ref().map(|s| s.keeper_uid.as_str()) != Some(uid.as_str()) {
                    continue;
                }
                db.status.healthy = ps.healthy;
                db.status.current_generation = ps.generation;
                db.status.listen_address = ps.listen_address.clone();
                db.status.port = ps.port.clone();
                db.status.failsafe_address = ps.failsafe_address.clone();
                db.status.system_id = ps.system_id.clone();
                db.status.timeline_id = ps.timeline_id;
                db.status.xlog_pos = ps.xlog_pos;
                db.status.timelines_history = ps.timelines_history.clone();
                db.status.pg_parameters = ps.pg_parameters.clone();
                db.status.synchronous_standbys = ps.synchronous_standbys.clone();
            }
        }
    }
}

fn write_owned(path: &Path, content: &str, dir: &TestDir) {
    std::fs::write(path, content).expect("write file");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    if let Some(u) = dir.os_user() {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).expect("chown");
    }
}

/// Writes a postgres-owned 0600 file in the world's secrets dir.
pub fn write_secret(w: &World, name: &str, content: &str) -> PathBuf {
    let p = w.secret(name);
    write_owned(&p, content, &w.dir);
    p
}

/// A running keeper process; SIGKILLed on drop, together with its postmaster.
pub struct KeeperProc {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub pgdata: Option<PathBuf>,
}

impl KeeperProc {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            if self.log_text().contains(needle) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "log {} lacks {needle:?} after {limit:?}; tail:\n{}",
                self.log.display(),
                tail(&self.log_text(), 40)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return st.code();
            }
            assert!(
                start.elapsed() < limit,
                "keeper did not exit within {limit:?}; tail:\n{}",
                tail(&self.log_text(), 40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// SIGKILL the keeper only (its postmaster survives, as after a crash).
    pub fn kill_keeper_only(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn postmaster_pid(pgdata: &Path) -> Option<i32> {
    let t = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    t.lines().next()?.trim().parse().ok()
}

pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Kills a leftover postmaster (immediate shutdown, then SIGKILL).
pub fn kill_postmaster(pgdata: &Path) {
    if let Some(pid) = postmaster_pid(pgdata)
        && alive(pid)
    {
        let p = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGQUIT);
        for _ in 0..50 {
            if !alive(pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    }
}

impl Drop for KeeperProc {
    fn drop(&mut self) {
        self.kill_keeper_only();
        if let Some(p) = &self.pgdata {
            kill_postmaster(p);
        }
        if std::env::var_os("STOLON_TEST_SHOW_LOGS").is_some() {
            eprintln!("==== {}\n{}", self.log.display(), self.log_text());
        }
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A cluster spec like Stolon's integration tests use (sleepInterval 1s here).
pub fn cluster_spec() -> ClusterSpec {
    let mut s: ClusterSpec = serde_json::from_str(
        r#"{"initMode":"new","sleepInterval":"1s","failInterval":"5s","convergenceTimeout":"30s","pgParameters":{"log_destination":"stderr","logging_collector":"false"}}"#,
    )
    .expect("spec");
    s.max_standbys = Some(5);
    s
}

/// Clusterdata with the given keepers (no DBs yet).
pub fn base_cd(spec: ClusterSpec, keepers: &[&str]) -> ClusterData {
    let mut cd = ClusterData::new(
        Cluster {
            uid: "cluster1".into(),
            generation: 1,
            change_time: Default::default(),
            spec: Some(spec),
            status: ClusterStatus {
                current_generation: 0,
                phase: Some(ClusterPhase::Initializing),
                master: String::new(),
            },
        },
        Default::default(),
    );
    for k in keepers {
        cd.keepers.insert(
            k.to_string(),
            Keeper {
                uid: k.to_string(),
                generation: 1,
                status: KeeperStatus::default(),
                ..Default::default()
            },
        );
    }
    cd.proxy = Some(Proxy::default());
    cd
}

/// A DB spec derived from the cluster spec, as the sentinel builds it.
pub fn db_spec(cd: &ClusterData, keeper: &str, role: DbRole, mode: DbInitMode) -> DbSpec {
    let spec = cd
        .cluster
        .as_ref()
        .and_then(|c| c.spec.clone())
        .unwrap_or_default();
    let e = spec.effective();
    DbSpec {
        keeper_uid: keeper.into(),
        request_timeout: e.request_timeout,
        max_standbys: e.max_standbys,
        synchronous_replication: e.sync_repl(),
        use_pgrewind: e.use_pgrewind,
        additional_wal_senders: e.additional_wal_senders,
        additional_replication_slots: Some(vec![]),
        init_mode: Some(mode),
        new_config: None,
        pitr_config: None,
        pg_parameters: spec.pg_parameters.clone().unwrap_or_default(),
        pg_hba: spec.pg_hba.clone(),
        role: Some(role),
        follow_config: None,
        followers: Some(vec![]),
        include_previous_config: false,
        synchronous_standbys: Some(vec![]),
        external_synchronous_standbys: Some(vec![]),
        synchronous_quorum: None,
    }
}

pub fn set_db(cd: &mut ClusterData, uid: &str, spec: DbSpec) {
    let gen_ = cd.dbs.get(uid).map(|d| d.generation + 1).unwrap_or(1);
    let status = cd
        .dbs
        .get(uid)
        .map(|d| d.status.clone())
        .unwrap_or_default();
    cd.dbs.insert(
        uid.into(),
        Db {
            uid: uid.into(),
            generation: gen_,
            change_time: Default::default(),
            spec: Some(spec),
            status,
        },
    );
}

pub fn follow(db: &str) -> Option<FollowConfig> {
    Some(FollowConfig {
        kind: Some(FollowType::Internal),
        db_uid: db.into(),
        standby_settings: None,
        archive_recovery_settings: None,
    })
}

pub fn set_master(cd: &mut ClusterData, db: &str) {
    let c = cd.cluster.as_mut().expect("cluster");
    c.status.master = db.into();
    c.status.phase = Some(ClusterPhase::Normal);
    if let Some(p) = cd.proxy.as_mut() {
        p.spec.master_db_uid = db.into();
        p.generation += 1;
    }
}

/// Bumps a DB's generation after its spec changed.
pub fn bump(cd: &mut ClusterData, uid: &str) {
    if let Some(d) = cd.dbs.get_mut(uid) {
        d.generation += 1;
    }
}

pub async fn connect(
    port: u16,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5))
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub async fn su(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect(port, SU, SU_PW).await
}

/// Waits for `select 1` as the superuser.
pub async fn wait_db_up(port: u16, limit: Duration) -> tokio_postgres::Client {
    let start = Instant::now();
    loop {
        if let Ok(c) = su(port).await
            && c.simple_query("select 1").await.is_ok()
        {
            return c;
        }
        assert!(
            start.elapsed() < limit,
            "postgres on {port} not up within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn wait_db_down(port: u16, limit: Duration) {
    let start = Instant::now();
    loop {
        if su(port).await.is_err() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "postgres on {port} still up after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Polls `f` until it returns Some, bounded.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn query_one_string(port: u16, sql: &str) -> Option<String> {
    let c = su(port).await.ok()?;
    let rows = c.simple_query(sql).await.ok()?;
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

pub fn free() -> u16 {
    free_port()
}

/// GET /metrics from a keeper.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A fresh master keeper `k` with db `db` (initMode new): spawns the keeper, lets it publish
/// its info, assigns the DB and waits until postgres answers.
pub async fn start_master(
    w: &World,
    k: &str,
    db: &str,
    spec: ClusterSpec,
    extra_args: &[String],
) -> (KeeperProc, u16, ClusterData) {
    let port = free();
    let mut args = w.keeper_args(k, port);
    args.extend(extra_args.iter().cloned());
    let kp = w.spawn_keeper(k, &args);
    let mut cd = base_cd(spec, &[k]);
    w.write_cd(&cd).await;
    w.wait_keeper_info(k, Duration::from_secs(30), |_| true)
        .await;
    w.sentinel_sync(&mut cd).await;
    let s = db_spec(&cd, k, DbRole::Master, DbInitMode::New);
    set_db(&mut cd, db, s);
    set_master(&mut cd, db);
    w.write_cd(&cd).await;
    wait_db_up(port, Duration::from_secs(90)).await;
    (kp, port, cd)
}

pub fn keeper_states(infos: &BTreeMap<String, KeeperInfo>) -> String {
    format!("{infos:?}")
}
