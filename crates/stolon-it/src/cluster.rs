//! A whole test cluster (the style of Stolon's `tests/integration/utils.go`): a real etcd, an
//! initial cluster spec file, N sentinels, M keepers (each with its own data dir, pg port and
//! 0600 password files owned by the `postgres` OS user, run as that user), P proxies; plus the
//! waits the scenarios need (master elected, DB roles, standbys streaming, the proxy reaching the
//! right master, rows replicated, synchronous standbys). Everything is killed on drop; unless the
//! test called [`Cluster::pass`], every log's tail is printed and the logs are copied to
//! `target/stolon-it-logs/`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use stolon_core::model::{ClusterData, ClusterPhase, Db};
use stolon_pg::testing::{TestDir, free_port, test_os_user};
use stolon_store::testing::etcd::EtcdServer;
use stolon_store::{Election, Store};

use crate::bins::{self, BinPaths};
use crate::pg::{self, REPL_PASSWORD, REPL_USER, SU_PASSWORD, SU_USER};
use crate::process::{self, ProcSpec, Process};

/// Poll period of the waits.
pub const POLL: Duration = Duration::from_millis(500);

/// Retries `f` every [`POLL`] until it returns `Ok` or `limit` passes; the error then names
/// `what` and carries the last failure.
pub async fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut tries = 0u32;
    loop {
        tries += 1;
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                if Instant::now() >= deadline {
                    bail!("timed out after {limit:?} ({tries} tries) waiting for {what}: {e:#}");
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

fn insert_sql(id: i64) -> String {
    format!("insert into table01 values ({id}, 'value{id}') on conflict (id) do nothing")
}

/// What a test cluster starts with.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Initial cluster spec (`--initial-cluster-spec`); `pgParameters` gets Stolon's test
    /// defaults (`log_destination=stderr`, `logging_collector=false`) merged in.
    pub spec: Value,
    /// Sentinels started.
    pub sentinels: usize,
    /// Keepers started (uids `keeper0`, `keeper1`, ...).
    pub keepers: usize,
    /// Proxies started.
    pub proxies: usize,
}

impl ClusterConfig {
    /// `spec` with the given counts.
    pub fn new(spec: Value, sentinels: usize, keepers: usize, proxies: usize) -> Self {
        ClusterConfig {
            spec,
            sentinels,
            keepers,
            proxies,
        }
    }
}

/// The spec Stolon's HA tests use, with faster timings: `initMode new`, `sleepInterval 1s`,
/// `failInterval 5s`, `convergenceTimeout 30s`, `maxStandbyLag 50 KiB`, plus `extra` merged on
/// top.
pub fn test_spec(extra: Value) -> Value {
    let mut spec = json!({
        "initMode": "new",
        "sleepInterval": "1s",
        "failInterval": "5s",
        "convergenceTimeout": "30s",
        "maxStandbyLag": 51200,
    });
    merge(&mut spec, extra);
    spec
}

/// Shallow-merges the keys of `extra` (an object) into `base`.
pub fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}

/// Options of one keeper beyond the standard ones.
#[derive(Debug, Clone, Default)]
pub struct KeeperOpts {
    /// Extra flags (e.g. `--can-be-master=false`).
    pub extra_args: Vec<String>,
    /// Superuser name and password file content (default: the test superuser).
    pub su: Option<(String, String)>,
    /// Replication user name and password file content (default: the test replication user).
    pub repl: Option<(String, String)>,
    /// Reuse this uid and data dir (a second keeper on the same data dir).
    pub same_as: Option<usize>,
    /// Do not start it.
    pub no_start: bool,
}

/// A keeper process and its instance.
#[derive(Debug)]
pub struct Keeper {
    /// Keeper UID.
    pub uid: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--pg-port`.
    pub pg_port: u16,
    /// The process.
    pub proc: Process,
    base_args: Vec<String>,
    extra_args: Vec<String>,
}

impl Keeper {
    /// PGDATA (`<data-dir>/postgres`).
    pub fn pgdata(&self) -> PathBuf {
        self.data_dir.join("postgres")
    }

    fn args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<String> = self.base_args.clone();
        a.extend([
            "--uid".into(),
            self.uid.clone(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--pg-port".into(),
            self.pg_port.to_string(),
        ]);
        a.extend(self.extra_args.iter().cloned());
        a.into_iter().map(Into::into).collect()
    }

    /// Replaces the extra flags (e.g. `--priority=5`) used from the next [`Keeper::start`] on.
    pub fn set_extra_args(&mut self, args: Vec<String>) {
        self.extra_args = args;
    }

    /// Starts the keeper process.
    pub fn start(&mut self) -> Result<()> {
        let args = self.args();
        self.proc.spec_mut().args = args;
        self.proc.start()
    }

    /// Graceful stop (SIGTERM: the keeper stops its postgres), as Stolon's tests' `Stop`.
    pub async fn stop(&mut self) -> Result<()> {
        self.proc.stop().await
    }

    /// SIGKILL of the keeper only (its postgres keeps running).
    pub fn kill(&mut self) -> Result<()> {
        self.proc.kill()
    }

    /// PID of the running postmaster, if any.
    pub fn postmaster_pid(&self) -> Option<i32> {
        process::postmaster_pid(&self.pgdata())
    }

    /// SIGKILL of the postgres instance (postmaster and backends).
    pub fn kill_postgres(&self) -> Result<i32> {
        process::kill_postgres(&self.pgdata())
    }

    /// SIGKILL of the keeper AND its postgres (postmaster and every backend) back to back, keeper
    /// first so it cannot restart postgres. Returns the instant right after both signals were
    /// sent. If the keeper happens to be restarting postgres, waits (up to 5 s) for the
    /// postmaster to show up first.
    pub fn kill_with_postgres(&mut self) -> Result<Instant> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.postmaster_pid().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc.signal(Signal::SIGKILL)?;
        if self.postmaster_pid().is_some() {
            process::signal_postgres(&self.pgdata(), Signal::SIGKILL)?;
        }
        let at = Instant::now();
        self.proc.kill()?;
        if self.postmaster_pid().is_some() {
            self.kill_postgres()?;
        }
        Ok(at)
    }

    /// SIGSTOP of the keeper and its whole postgres (a frozen node).
    pub fn pause_with_postgres(&self) -> Result<()> {
        self.proc.pause()?;
        process::signal_postgres(&self.pgdata(), Signal::SIGSTOP)?;
        Ok(())
    }

    /// SIGCONT of the keeper and its postgres.
    pub fn resume_with_postgres(&self) -> Result<()> {
        let pg = process::signal_postgres(&self.pgdata(), Signal::SIGCONT);
        self.proc.resume()?;
        pg.map(|_| ())
    }

    /// Changes the pg port used from the next start on.
    pub fn set_pg_port(&mut self, port: u16) {
        self.pg_port = port;
    }
}

/// A proxy process and its port.
#[derive(Debug)]
pub struct Proxy {
    /// Listening port on 127.0.0.1.
    pub port: u16,
    /// The process.
    pub proc: Process,
}

/// A running test cluster. Field order is drop order: processes first, then the store client,
/// etcd, and the directory.
pub struct Cluster {
    /// Sentinels.
    pub sentinels: Vec<Process>,
    /// Keepers.
    pub keepers: Vec<Keeper>,
    /// Proxies.
    pub proxies: Vec<Proxy>,
    store: Arc<dyn Store>,
    election: Arc<dyn Election>,
    /// The cluster's etcd.
    pub etcd: EtcdServer,
    /// `--cluster-name`.
    pub name: String,
    bins: BinPaths,
    spec_file: PathBuf,
    su_pass_file: PathBuf,
    repl_pass_file: PathBuf,
    logs: PathBuf,
    passed: bool,
    dir: TestDir,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("dir", &self.dir.path())
            .field("etcd", &self.etcd)
            .finish()
    }
}

fn write_secret(path: &Path, content: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some(u) = test_os_user() {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))?;
    }
    Ok(())
}

fn with_default_pg_parameters(mut spec: Value) -> Value {
    if let Some(obj) = spec.as_object_mut() {
        let params = obj.entry("pgParameters").or_insert_with(|| json!({}));
        if let Some(p) = params.as_object_mut() {
            p.entry("log_destination").or_insert(json!("stderr"));
            p.entry("logging_collector").or_insert(json!("false"));
        }
    }
    spec
}

impl Cluster {
    /// Starts etcd, writes the spec, starts the sentinels, keepers and proxies (does not wait for
    /// anything beyond etcd).
    pub async fn start(cfg: ClusterConfig) -> Result<Cluster> {
        let mut c = Cluster::empty(cfg.spec).await?;
        for _ in 0..cfg.sentinels {
            c.add_sentinel()?;
        }
        for _ in 0..cfg.keepers {
            c.add_keeper()?;
        }
        for _ in 0..cfg.proxies {
            c.add_proxy()?;
        }
        Ok(c)
    }

    /// etcd, directories, secrets and the spec file, but no process yet.
    pub async fn empty(spec: Value) -> Result<Cluster> {
        let found = bins::locate()?;
        let dir = TestDir::new("stolon-it-");
        let etcd = EtcdServer::start_async()
            .await
            .map_err(|e| anyhow!("start etcd: {e}"))?;
        let name = "stolon-it".to_string();
        // Only the keeper runs as the postgres user; it needs a copy it can execute.
        let bins = BinPaths {
            keeper: dir.install_binary(&found.keeper),
            ..found
        };
        let logs = dir.subdir("logs", 0o755);
        let secrets = dir.subdir("secrets", 0o700);
        let su_pass_file = secrets.join("su-password");
        let repl_pass_file = secrets.join("repl-password");
        write_secret(&su_pass_file, SU_PASSWORD)?;
        write_secret(&repl_pass_file, REPL_PASSWORD)?;
        let spec_file = dir.path().join("initial-cluster-spec.json");
        std::fs::write(
            &spec_file,
            serde_json::to_vec_pretty(&with_default_pg_parameters(spec))?,
        )?;
        let (store, election) = stolon_store::connect(&etcd.store_config(&name))
            .await
            .map_err(|e| anyhow!("connect to the test etcd: {e}"))?;
        Ok(Cluster {
            sentinels: Vec::new(),
            keepers: Vec::new(),
            proxies: Vec::new(),
            store,
            election,
            etcd,
            name,
            bins,
            spec_file,
            su_pass_file,
            repl_pass_file,
            logs,
            passed: false,
            dir,
        })
    }

    /// Marks the scenario as passed: logs are not dumped on drop. A cluster dropped without this
    /// (a panic, or an error returned by the test) prints every log's tail and keeps a copy.
    pub fn pass(mut self) {
        self.passed = true;
    }

    /// Writes `content` to `<dir>/secrets/<name>` (0600, owned by the postgres user); returns
    /// the path.
    pub fn write_secret(&self, name: &str, content: &str) -> Result<PathBuf> {
        let f = self.dir.path().join("secrets").join(name);
        write_secret(&f, content)?;
        Ok(f)
    }

    /// Runs `program args` as the postgres OS user (when root) with extra env, bounded by
    /// `limit`; fails unless it exits 0. For PostgreSQL tools (pg_basebackup, ...).
    pub async fn run_as_postgres(
        &self,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        limit: Duration,
    ) -> Result<String> {
        let mut cmd = match test_os_user() {
            Some(u) => {
                let mut c = tokio::process::Command::new("setpriv");
                c.arg(format!("--reuid={}", u.uid))
                    .arg(format!("--regid={}", u.gid))
                    .arg("--init-groups")
                    .arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        };
        cmd.args(args)
            .envs(envs.iter().copied())
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(limit, cmd.output())
            .await
            .map_err(|_| anyhow!("{} timed out", program.display()))?
            .with_context(|| format!("run {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{} {args:?} failed ({}): {}",
                program.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The test directory (owned by the postgres user).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh subdirectory of the test directory owned by the postgres user.
    pub fn subdir(&self, name: &str) -> PathBuf {
        self.dir.subdir(name, 0o755)
    }

    /// The store client.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// `--cluster-name --store-backend --store-endpoints` (+ a short store timeout).
    pub fn common_flags(&self) -> Vec<String> {
        let mut f = self.etcd.store_flags(&self.name);
        if std::env::var_os("STOLON_IT_DEBUG").is_some() {
            f.extend(["--log-level".into(), "debug".into()]);
        }
        f
    }

    fn proc_spec(&self, program: &Path, args: Vec<String>) -> ProcSpec {
        ProcSpec {
            program: program.to_path_buf(),
            args: args.into_iter().map(Into::into).collect(),
            envs: Vec::new(),
            run_as: None,
            cwd: Some(self.dir.path().to_path_buf()),
            pgdata: None,
        }
    }

    /// Starts one more sentinel (with `--initial-cluster-spec`); returns its index.
    pub fn add_sentinel(&mut self) -> Result<usize> {
        let i = self.sentinels.len();
        let mut args = self.common_flags();
        args.extend([
            "--initial-cluster-spec".into(),
            self.spec_file.display().to_string(),
        ]);
        let spec = self.proc_spec(&self.bins.sentinel, args);
        let mut p = Process::new(
            &format!("sentinel{i}"),
            spec,
            self.logs.join(format!("sentinel{i}.log")),
        );
        p.start()?;
        self.sentinels.push(p);
        Ok(i)
    }

    /// Starts one more proxy on a free port; returns its index.
    pub fn add_proxy(&mut self) -> Result<usize> {
        self.add_proxy_with(Vec::new())
    }

    /// Starts one more proxy on a free port with extra flags; returns its index.
    pub fn add_proxy_with(&mut self, extra_args: Vec<String>) -> Result<usize> {
        let i = self.proxies.len();
        let port = free_port();
        let mut args = self.common_flags();
        args.extend([
            "--listen-address".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
        ]);
        args.extend(extra_args);
        let spec = self.proc_spec(&self.bins.proxy, args);
        let mut p = Process::new(
            &format!("proxy{i}"),
            spec,
            self.logs.join(format!("proxy{i}.log")),
        );
        p.start()?;
        self.proxies.push(Proxy { port, proc: p });
        Ok(i)
    }

    /// Starts one more standard keeper; returns its index.
    pub fn add_keeper(&mut self) -> Result<usize> {
        self.add_keeper_with(KeeperOpts::default())
    }

    /// Adds (and unless `no_start`, starts) a keeper; returns its index.
    pub fn add_keeper_with(&mut self, opts: KeeperOpts) -> Result<usize> {
        let i = self.keepers.len();
        let (uid, data_dir) = match opts.same_as {
            Some(j) => (
                self.keepers[j].uid.clone(),
                self.keepers[j].data_dir.clone(),
            ),
            None => (
                format!("keeper{i}"),
                self.dir.subdir(&format!("keeper{i}"), 0o700),
            ),
        };
        let (su_user, su_file) = match &opts.su {
            None => (SU_USER.to_string(), self.su_pass_file.clone()),
            Some((u, p)) => {
                let f = self.dir.path().join(format!("secrets/su-password-{i}"));
                write_secret(&f, p)?;
                (u.clone(), f)
            }
        };
        let (repl_user, repl_file) = match &opts.repl {
            None => (REPL_USER.to_string(), self.repl_pass_file.clone()),
            Some((u, p)) => {
                let f = self.dir.path().join(format!("secrets/repl-password-{i}"));
                write_secret(&f, p)?;
                (u.clone(), f)
            }
        };
        let mut base_args = self.common_flags();
        base_args.extend([
            "--pg-listen-address".into(),
            "127.0.0.1".into(),
            "--pg-bin-path".into(),
            stolon_pg::testing::pg_bin_dir().display().to_string(),
            "--pg-su-username".into(),
            su_user,
            "--pg-su-passwordfile".into(),
            su_file.display().to_string(),
            "--pg-repl-username".into(),
            repl_user,
            "--pg-repl-passwordfile".into(),
            repl_file.display().to_string(),
        ]);
        let mut spec = self.proc_spec(&self.bins.keeper, Vec::new());
        spec.run_as = test_os_user();
        spec.cwd = Some(data_dir.clone());
        spec.pgdata = Some(data_dir.join("postgres"));
        let proc = Process::new(
            &format!("keeper{i}"),
            spec,
            self.logs.join(format!("keeper{i}.log")),
        );
        let mut k = Keeper {
            uid,
            data_dir,
            pg_port: free_port(),
            proc,
            base_args,
            extra_args: opts.extra_args,
        };
        if !opts.no_start {
            k.start()?;
        }
        self.keepers.push(k);
        Ok(i)
    }

    /// Runs `stolonctl <common flags> <args>` (bounded: 60 s).
    pub async fn stolonctl(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = tokio::process::Command::new(&self.bins.stolonctl);
        cmd.args(self.etcd.store_flags(&self.name))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .map_err(|_| anyhow!("stolonctl {args:?} timed out"))?
            .with_context(|| format!("run stolonctl {args:?}"))
    }

    /// Runs stolonctl and fails unless it exits 0; returns stdout.
    pub async fn stolonctl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.stolonctl(args).await?;
        if !out.status.success() {
            bail!(
                "stolonctl {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `stolonctl update --patch <json>`.
    pub async fn patch_spec(&self, patch: &Value) -> Result<()> {
        self.stolonctl_ok(&["update", "--patch", &patch.to_string()])
            .await
            .map(|_| ())
    }

    // ---------------------------------------------------------------- clusterdata

    /// Clusterdata as stored now (`None` before the first sentinel wrote it).
    pub async fn cluster_data(&self) -> Result<Option<ClusterData>> {
        Ok(self
            .store
            .get_cluster_data()
            .await
            .map_err(|e| anyhow!("read clusterdata: {e}"))?
            .data)
    }

    async fn cd(&self) -> Result<ClusterData> {
        self.cluster_data()
            .await?
            .context("no clusterdata in the store yet")
    }

    /// Index of the keeper with this uid.
    pub fn keeper_index(&self, uid: &str) -> Option<usize> {
        self.keepers.iter().position(|k| k.uid == uid)
    }

    /// The DB assigned to keeper `i` in `cd`.
    pub fn keeper_db<'a>(&self, cd: &'a ClusterData, i: usize) -> Option<&'a Db> {
        let uid = &self.keepers[i].uid;
        cd.dbs
            .values()
            .find(|db| db.spec.as_ref().is_some_and(|s| &s.keeper_uid == uid))
    }

    /// The master keeper's index in `cd` (phase normal, master DB present).
    pub fn master_of(&self, cd: &ClusterData) -> Result<usize> {
        let cluster = cd.cluster.as_ref().context("clusterdata has no cluster")?;
        if cluster.status.phase != Some(ClusterPhase::Normal) {
            bail!("cluster phase is {:?}", cluster.status.phase);
        }
        let m = &cluster.status.master;
        if m.is_empty() {
            bail!("no master db yet");
        }
        let db = cd
            .dbs
            .get(m)
            .with_context(|| format!("master db {m} missing"))?;
        let kuid = db
            .spec
            .as_ref()
            .map(|s| s.keeper_uid.as_str())
            .unwrap_or("");
        self.keeper_index(kuid)
            .with_context(|| format!("master db {m} is on unknown keeper {kuid:?}"))
    }

    /// Waits for the cluster phase.
    pub async fn wait_phase(&self, phase: ClusterPhase, limit: Duration) -> Result<()> {
        wait_for(&format!("cluster phase {phase:?}"), limit, async || {
            let cd = self.cd().await?;
            let got = cd.cluster.as_ref().and_then(|c| c.status.phase);
            if got == Some(phase) {
                Ok(())
            } else {
                bail!("phase is {got:?}")
            }
        })
        .await
    }

    /// Waits for a master DB in phase normal; returns its keeper's index.
    pub async fn wait_master(&self, limit: Duration) -> Result<usize> {
        wait_for("a master db (phase normal)", limit, async || {
            let cd = self.cd().await?;
            self.master_of(&cd)
        })
        .await
    }

    /// Waits until clusterdata's master is keeper `i`.
    pub async fn wait_master_is(&self, i: usize, limit: Duration) -> Result<()> {
        wait_for(
            &format!("keeper{i} as master in clusterdata"),
            limit,
            async || {
                let cd = self.cd().await?;
                let m = self.master_of(&cd)?;
                if m == i {
                    Ok(())
                } else {
                    bail!("master is keeper {}", self.keepers[m].uid)
                }
            },
        )
        .await
    }

    /// Waits until clusterdata's master is some keeper other than `old`; returns it.
    pub async fn wait_master_changed(&self, old: usize, limit: Duration) -> Result<usize> {
        wait_for("a new master in clusterdata", limit, async || {
            let cd = self.cd().await?;
            let m = self.master_of(&cd)?;
            if m != old {
                Ok(m)
            } else {
                bail!("master is still keeper {}", self.keepers[m].uid)
            }
        })
        .await
    }

    /// Waits until keeper `i`'s postgres answers `select 1`.
    pub async fn wait_db_up(&self, i: usize, limit: Duration) -> Result<()> {
        let port = self.keepers[i].pg_port;
        wait_for(&format!("keeper{i}'s postgres up"), limit, async || {
            pg::exec(port, "select 1").await
        })
        .await
    }

    /// Waits until keeper `i`'s postgres is a primary (`master`) or standby
    /// (`pg_is_in_recovery()`), as Stolon's `WaitDBRole`.
    pub async fn wait_db_role(&self, i: usize, master: bool, limit: Duration) -> Result<()> {
        let port = self.keepers[i].pg_port;
        let want = if master { "f" } else { "t" };
        let role = if master { "primary" } else { "standby" };
        wait_for(&format!("keeper{i} to be a {role}"), limit, async || {
            let v = pg::query_value(port, "select pg_is_in_recovery()").await?;
            if v == want {
                Ok(())
            } else {
                bail!("pg_is_in_recovery() = {v}")
            }
        })
        .await
    }

    /// `waitMasterStandbysReady`: a master in phase normal, every keeper's DB at
    /// `currentGeneration >= 1`, every keeper's postgres answering. Returns the master index.
    pub async fn wait_ready(&self, limit: Duration) -> Result<usize> {
        let deadline = Instant::now() + limit;
        let left = || deadline.saturating_duration_since(Instant::now());
        let m = self.wait_master(left()).await?;
        for i in 0..self.keepers.len() {
            if !self.keepers[i].proc.is_running() {
                continue;
            }
            wait_for(&format!("keeper{i}'s db converged"), left(), async || {
                let cd = self.cd().await?;
                let db = self.keeper_db(&cd, i).context("no db assigned")?;
                if db.status.current_generation >= 1 {
                    Ok(())
                } else {
                    bail!("currentGeneration {}", db.status.current_generation)
                }
            })
            .await?;
            self.wait_db_up(i, left()).await?;
        }
        Ok(m)
    }

    /// Waits until the primary on keeper `master` has `n` streaming standbys
    /// (`pg_stat_replication`).
    pub async fn wait_standbys_streaming(
        &self,
        master: usize,
        n: usize,
        limit: Duration,
    ) -> Result<()> {
        let port = self.keepers[master].pg_port;
        wait_for(&format!("{n} streaming standbys"), limit, async || {
            let v = pg::query_value(
                port,
                "select count(*) from pg_stat_replication where state = 'streaming'",
            )
            .await?;
            if v.parse::<usize>().unwrap_or(0) >= n {
                Ok(())
            } else {
                bail!("{v} streaming")
            }
        })
        .await
    }

    /// Port of proxy 0.
    pub fn proxy_port(&self) -> u16 {
        self.proxies.first().map(|p| p.port).unwrap_or(0)
    }

    /// Runs `sql` through proxy 0, retrying until it succeeds (bounded by `limit`).
    pub async fn proxy_exec(&self, sql: &str, limit: Duration) -> Result<()> {
        let port = self.proxy_port();
        wait_for(&format!("{sql:?} through the proxy"), limit, async || {
            pg::exec(port, sql).await
        })
        .await
    }

    /// First value of `sql` through proxy 0, retrying until it succeeds.
    pub async fn proxy_value(&self, sql: &str, limit: Duration) -> Result<String> {
        let port = self.proxy_port();
        wait_for(&format!("{sql:?} through the proxy"), limit, async || {
            pg::query_value(port, sql).await
        })
        .await
    }

    /// Creates `table01 (id int primary key, value text)` through proxy 0 (idempotent).
    pub async fn create_table(&self, limit: Duration) -> Result<()> {
        self.proxy_exec(
            "create table if not exists table01 (id int primary key, value text)",
            limit,
        )
        .await
    }

    /// Inserts row `id` into `table01` through proxy 0, retrying until acknowledged
    /// (idempotent: a retry after a lost acknowledgement does not fail).
    pub async fn write_row(&self, id: i64, limit: Duration) -> Result<()> {
        self.proxy_exec(&insert_sql(id), limit).await
    }

    /// Inserts row `id` into `table01` directly on keeper `i`'s instance.
    pub async fn write_row_on(&self, i: usize, id: i64) -> Result<()> {
        pg::exec(self.keepers[i].pg_port, &insert_sql(id)).await
    }

    /// Waits until proxy 0 routes to keeper `i` (`inet_server_port()` through the proxy is
    /// its pg port) and that instance is a writable primary.
    pub async fn wait_right_master(&self, i: usize, limit: Duration) -> Result<()> {
        let port = self.proxy_port();
        let want = self.keepers[i].pg_port.to_string();
        wait_for(
            &format!("the proxy to route to keeper{i}"),
            limit,
            async || {
                let rows = pg::query_rows(
                    port,
                    "select inet_server_port()::text, pg_is_in_recovery()::text",
                )
                .await?;
                let r = rows.first().context("no row")?;
                let got_port = r.first().cloned().flatten().unwrap_or_default();
                let recovery = r.get(1).cloned().flatten().unwrap_or_default();
                if got_port == want && recovery == "false" {
                    Ok(())
                } else {
                    bail!("proxy reached port {got_port} (in recovery: {recovery}), want {want}")
                }
            },
        )
        .await
    }

    /// Waits until `select count(*) from <table>` on `port` is `n`.
    pub async fn wait_rows_on(
        &self,
        port: u16,
        table: &str,
        n: i64,
        limit: Duration,
    ) -> Result<()> {
        let sql = format!("select count(*) from {table}");
        wait_for(
            &format!("{n} rows in {table} on port {port}"),
            limit,
            async || {
                let v: i64 = pg::query_value(port, &sql).await?.parse()?;
                if v == n { Ok(()) } else { bail!("{v} rows") }
            },
        )
        .await
    }

    /// [`Cluster::wait_rows_on`] on keeper `i`'s instance.
    pub async fn wait_rows(&self, i: usize, table: &str, n: i64, limit: Duration) -> Result<()> {
        self.wait_rows_on(self.keepers[i].pg_port, table, n, limit)
            .await
    }

    /// `WaitClusterSyncedXLogPos`: the DBs of `keepers` all report the same, non-zero xLogPos.
    pub async fn wait_synced_xlogpos(&self, keepers: &[usize], limit: Duration) -> Result<()> {
        wait_for("synced xLogPos", limit, async || {
            let cd = self.cd().await?;
            let mut pos = Vec::new();
            for &i in keepers {
                let db = self
                    .keeper_db(&cd, i)
                    .with_context(|| format!("keeper{i} has no db"))?;
                pos.push(db.status.xlog_pos);
            }
            if pos.iter().all(|p| *p == pos[0] && *p > 0) {
                Ok(())
            } else {
                bail!("xLogPos {pos:?}")
            }
        })
        .await
    }

    /// `WaitClusterDataSynchronousStandbys`: the master DB's spec and status synchronous
    /// standbys are exactly the DBs of `keepers`.
    pub async fn wait_sync_standbys(&self, keepers: &[usize], limit: Duration) -> Result<()> {
        wait_for("synchronous standbys", limit, async || {
            let cd = self.cd().await?;
            let m = self.master_of(&cd)?;
            let master = self.keeper_db(&cd, m).context("master db")?;
            let mut want: Vec<String> = keepers
                .iter()
                .map(|&i| {
                    self.keeper_db(&cd, i)
                        .map(|d| d.uid.clone())
                        .context("no db")
                })
                .collect::<Result<_>>()?;
            want.sort();
            let sorted = |v: &Option<Vec<String>>| {
                let mut v = v.clone().unwrap_or_default();
                v.sort();
                v
            };
            let spec = sorted(
                &master
                    .spec
                    .as_ref()
                    .and_then(|s| s.synchronous_standbys.clone()),
            );
            let status = sorted(&master.status.synchronous_standbys);
            if spec == want && status == want {
                Ok(())
            } else {
                bail!("spec {spec:?} status {status:?}, want {want:?}")
            }
        })
        .await
    }

    /// Waits until clusterdata has exactly `n` DBs.
    pub async fn wait_db_count(&self, n: usize, limit: Duration) -> Result<()> {
        wait_for(&format!("{n} dbs"), limit, async || {
            let got = self.cd().await?.dbs.len();
            if got == n { Ok(()) } else { bail!("{got} dbs") }
        })
        .await
    }

    /// Waits until clusterdata has exactly `n` keepers.
    pub async fn wait_keeper_count(&self, n: usize, limit: Duration) -> Result<()> {
        wait_for(&format!("{n} keepers"), limit, async || {
            let got = self.cd().await?.keepers.len();
            if got == n {
                Ok(())
            } else {
                bail!("{got} keepers")
            }
        })
        .await
    }

    /// The current leader sentinel's UID.
    pub async fn leader_sentinel_uid(&self) -> Result<Option<String>> {
        self.election
            .leader()
            .await
            .map_err(|e| anyhow!("read sentinel leader: {e}"))
    }

    /// Index of the first sentinel whose current run logged `text`.
    pub fn sentinel_logging(&self, text: &str) -> Option<usize> {
        self.sentinels.iter().position(|s| s.log_contains(text))
    }

    /// Waits until some sentinel logged `text`; returns its index.
    pub async fn wait_sentinel_log(&self, text: &str, limit: Duration) -> Result<usize> {
        wait_for(&format!("a sentinel logging {text:?}"), limit, async || {
            self.sentinel_logging(text).context("not logged yet")
        })
        .await
    }

    fn dump_logs(&self) {
        let mut all: Vec<&Process> = self.sentinels.iter().collect();
        all.extend(self.keepers.iter().map(|k| &k.proc));
        all.extend(self.proxies.iter().map(|p| &p.proc));
        for p in &all {
            eprintln!(
                "----- {} ({}), last lines:\n{}",
                p.name(),
                p.log_path().display(),
                p.log_tail(60)
            );
        }
        let test = std::thread::current()
            .name()
            .unwrap_or("unknown")
            .replace("::", "-");
        if let Some(dir) =
            bins::target_profile_dir().and_then(|d| d.parent().map(Path::to_path_buf))
        {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let tmp = self
                .dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dest = dir
                .join("stolon-it-logs")
                .join(format!("{test}-{stamp}-{tmp}"));
            if std::fs::create_dir_all(&dest).is_ok() {
                for p in &all {
                    if let Some(f) = p.log_path().file_name() {
                        let _ = std::fs::copy(p.log_path(), dest.join(f));
                    }
                }
                let _ = std::fs::copy(self.etcd.member_log(0), dest.join("etcd.log"));
                eprintln!("----- full logs copied to {}", dest.display());
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.passed || std::env::var_os("STOLON_IT_DUMP_LOGS").is_some() {
            self.dump_logs();
        }
        // Proxies and sentinels first, then keepers (and their postgres), then etcd.
        self.proxies.clear();
        self.sentinels.clear();
        self.keepers.clear();
    }
}
