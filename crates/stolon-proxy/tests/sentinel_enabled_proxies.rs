//! Stolon's TestSentinelEnabledProxies (docs/architecture.md §11) with the real `stolon-sentinel`
//! and `stolon-proxy` binaries against a real etcd started by the test, without PostgreSQL: the
//! one keeper is simulated by the test, which publishes KeeperInfo through the store reporting
//! the DB the sentinel assigned to it as healthy and converged.
//!
//! Checked: a sentinel restart rewrites clusterdata but keeps `enabledProxies`; a new proxy is
//! enabled; a hung (SIGSTOPped) proxy is disabled once its info stops changing; a resumed one is
//! enabled again. `proxyCheckInterval`/`proxyTimeout` are shortened to 1 s / 5 s to keep the
//! test quick; every bound below is generous.
//!
//! The sentinel binary is not a target of this crate: it is looked up next to the proxy binary
//! (`cargo build --workspace --bins`, or `cargo nextest run --workspace`, builds it there).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use stolon_core::model::{
    ClusterData, ClusterPhase, KeeperInfo, PostgresBinaryVersion, PostgresState, Proxy,
};
use stolon_store::Store;
use stolon_store::testing::etcd::EtcdServer;
use tokio_util::sync::{CancellationToken, DropGuard};

const CLUSTER: &str = "enabledproxies";
/// Stolon's test timings (sleepInterval 2s, failInterval 5s), with short proxy timings.
const SPEC: &str = r#"{"initMode":"new","sleepInterval":"2s","failInterval":"5s","convergenceTimeout":"30s","proxyCheckInterval":"1s","proxyTimeout":"5s"}"#;
/// The simulated keeper's UID.
const KEEPER: &str = "keeper0";
/// Poll period of every wait.
const POLL: Duration = Duration::from_millis(250);

/// A child process logging to a file; SIGKILLed (also when stopped) and reaped on drop.
struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let file = std::fs::File::create(log).with_context(|| format!("create {log:?}"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env_remove("RUST_LOG")
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
        })
    }

    fn pid(&self) -> Result<Pid> {
        let child = self
            .child
            .as_ref()
            .with_context(|| format!("{} is not running", self.name))?;
        Ok(Pid::from_raw(i32::try_from(child.id())?))
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        kill(self.pid()?, sig).with_context(|| format!("send {sig} to {}", self.name))
    }

    /// SIGTERM, then waits at most `limit` for the exit.
    async fn terminate(&mut self, limit: Duration) -> Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        let name = self.name.clone();
        let child = self.child.as_mut().context("not running")?;
        let status = wait_for(
            limit,
            &format!("{name} to exit after SIGTERM"),
            async || child.try_wait().ok().flatten(),
        )
        .await?;
        self.child = None;
        Ok(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` every [`POLL`] until it yields a value; fails after `limit` (and a bounded number
/// of polls).
async fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let start = Instant::now();
    let max_polls = limit.as_millis() / POLL.as_millis() + 2;
    for _ in 0..max_polls {
        if let Some(v) = f().await {
            eprintln!("{what}: after {:?}", start.elapsed());
            return Ok(v);
        }
        if start.elapsed() >= limit {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

/// Checks `f` holds on every poll over `period`.
async fn holds_for(period: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    let max_polls = period.as_millis() / POLL.as_millis() + 2;
    for _ in 0..max_polls {
        ensure!(
            f().await,
            "{what} stopped holding after {:?}",
            start.elapsed()
        );
        if start.elapsed() >= period {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The stolon-sentinel binary next to the stolon-proxy one.
fn sentinel_bin() -> Result<PathBuf> {
    let proxy = Path::new(env!("CARGO_BIN_EXE_stolon-proxy"));
    let bin = proxy
        .parent()
        .context("the stolon-proxy binary has no parent directory")?
        .join("stolon-sentinel");
    ensure!(
        bin.is_file(),
        "{} does not exist: build every workspace binary first \
         (`cargo build --workspace --bins`, or run the tests with `cargo nextest run --workspace`)",
        bin.display()
    );
    Ok(bin)
}

fn start_sentinel(
    etcd: &EtcdServer,
    bin: &Path,
    spec: &Path,
    dir: &Path,
    name: &str,
) -> Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.args(etcd.store_flags(CLUSTER))
        .args(["--log-level", "debug"])
        .arg("--initial-cluster-spec")
        .arg(spec);
    Proc::spawn(name, cmd, &dir.join(format!("{name}.log")))
}

fn start_proxy(etcd: &EtcdServer, port: u16, dir: &Path, name: &str) -> Result<Proc> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stolon-proxy"));
    cmd.args(etcd.store_flags(CLUSTER))
        // Stolon's test harness uses a 1 s store client timeout.
        .args(["--store-timeout", "1s", "--log-level", "debug"])
        .args(["--listen-address", "127.0.0.1", "--port", &port.to_string()]);
    Proc::spawn(name, cmd, &dir.join(format!("{name}.log")))
}

async fn cluster_data(store: &dyn Store) -> Option<ClusterData> {
    store.get_cluster_data().await.ok().and_then(|r| r.data)
}

fn enabled_proxies(cd: &ClusterData) -> Option<&[String]> {
    cd.proxy.as_ref().map(|p| p.spec.enabled_proxies.as_slice())
}

/// The simulated keeper: every second publishes a KeeperInfo (new infoUID each time) reporting
/// the DB clusterdata assigns to it as healthy and converged, until the guard is dropped.
fn fake_keeper(store: Arc<dyn Store>) -> DropGuard {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        for n in 1u64.. {
            if let Some(cd) = cluster_data(store.as_ref()).await {
                let cluster_uid = cd
                    .cluster
                    .as_ref()
                    .map(|c| c.uid.clone())
                    .unwrap_or_default();
                let postgres_state = cd.db_of_keeper(KEEPER).map(|db| PostgresState {
                    uid: db.uid.clone(),
                    generation: db.generation,
                    listen_address: "127.0.0.1".into(),
                    port: "5432".into(),
                    healthy: true,
                    system_id: "7000000000000000001".into(),
                    timeline_id: 1,
                    xlog_pos: 0x300_0000,
                    synchronous_standbys: Some(Vec::new()),
                    ..Default::default()
                });
                let info = KeeperInfo {
                    info_uid: format!("{KEEPER}-{n}"),
                    uid: KEEPER.into(),
                    cluster_uid,
                    boot_uuid: format!("boot-{KEEPER}"),
                    postgres_binary_version: PostgresBinaryVersion { maj: 15, min: 0 },
                    postgres_state,
                    ..Default::default()
                };
                if let Err(e) = store.put_keeper_info(&info, Duration::from_secs(20)).await {
                    eprintln!("fake keeper: publish failed: {e}");
                }
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    stop.drop_guard()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_sentinel_enabled_proxies() -> Result<()> {
    let sentinel = sentinel_bin()?;
    let etcd = EtcdServer::start_async().await.context("start etcd")?;
    let dir = etcd.dir().join("enabled-proxies");
    std::fs::create_dir_all(&dir)?;
    let result = steps(&etcd, &sentinel, &dir).await;
    if result.is_err() {
        for name in ["sentinel1", "sentinel2", "proxy1", "proxy2"] {
            let log = dir.join(format!("{name}.log"));
            if let Ok(text) = std::fs::read_to_string(&log) {
                eprintln!("--- {name} log:\n{text}");
            }
        }
    }
    result
}

async fn steps(etcd: &EtcdServer, sentinel_bin: &Path, dir: &Path) -> Result<()> {
    let (store, _election) = stolon_store::connect(&etcd.store_config(CLUSTER))
        .await
        .context("connect to etcd")?;
    let store: Arc<dyn Store> = store;
    let spec = dir.join("spec.json");
    std::fs::write(&spec, SPEC)?;

    // 1 sentinel, 1 (simulated) keeper, 1 proxy.
    let mut sentinel1 = start_sentinel(etcd, sentinel_bin, &spec, dir, "sentinel1")?;
    let _keeper = fake_keeper(store.clone());
    let port1 = free_port()?;
    let _proxy1 = start_proxy(etcd, port1, dir, "proxy1")?;

    // The cluster is initialised, the master handed to the proxies, and proxy 1 enabled.
    let cd = wait_for(
        Duration::from_secs(60),
        "a master routed by the proxies and one enabled proxy",
        async || {
            cluster_data(store.as_ref()).await.filter(|cd| {
                let Some(c) = cd.cluster.as_ref() else {
                    return false;
                };
                c.status.phase == Some(ClusterPhase::Normal)
                    && cd.master_db().is_some()
                    && cd
                        .proxy
                        .as_ref()
                        .is_some_and(|p| p.spec.master_db_uid == c.status.master)
                    && enabled_proxies(cd).is_some_and(|e| e.len() == 1)
            })
        },
    )
    .await?;
    let uid1 = enabled_proxies(&cd).context("proxy")?[0].clone();
    let published: Vec<String> = store.get_proxies_info().await?.into_keys().collect();
    ensure!(
        published == [uid1.clone()],
        "enabledProxies is [{uid1}] but the published proxy infos are {published:?}"
    );

    // Stop the sentinel (SIGTERM) and start another one: it rewrites clusterdata, and
    // `enabledProxies` is unchanged (proxies it has not seen yet are active).
    let status = sentinel1.terminate(Duration::from_secs(30)).await?;
    ensure!(status.success(), "sentinel 1 exited with {status:?}");
    let before = store
        .get_cluster_data()
        .await?
        .data
        .context("clusterdata")?;
    let proxy_before: Proxy = before.proxy.clone().context("proxy")?;
    let _sentinel2 = start_sentinel(etcd, sentinel_bin, &spec, dir, "sentinel2")?;
    // Only the sentinel writes clusterdata: a change proves the new one is at work.
    let after = wait_for(
        Duration::from_secs(30),
        "clusterdata rewritten by the restarted sentinel",
        async || {
            cluster_data(store.as_ref())
                .await
                .filter(|cd| *cd != before)
        },
    )
    .await?;
    ensure!(
        after.proxy.as_ref().map(|p| &p.spec) == Some(&proxy_before.spec),
        "the proxy spec changed across the sentinel restart: {:?} -> {:?}",
        proxy_before.spec,
        after.proxy.as_ref().map(|p| &p.spec)
    );
    holds_for(
        Duration::from_secs(6),
        "enabledProxies == [proxy 1] after the sentinel restart",
        async || {
            cluster_data(store.as_ref())
                .await
                .is_some_and(|cd| enabled_proxies(&cd) == Some(std::slice::from_ref(&uid1)))
        },
    )
    .await?;

    // A second proxy is enabled (Stolon: within 3 * sleepInterval).
    let port2 = free_port()?;
    ensure!(port2 != port1, "the two proxies got the same port");
    let proxy2 = start_proxy(etcd, port2, dir, "proxy2")?;
    let cd = wait_for(Duration::from_secs(20), "two enabled proxies", async || {
        cluster_data(store.as_ref())
            .await
            .filter(|cd| enabled_proxies(cd).is_some_and(|e| e.len() == 2))
    })
    .await?;
    let both = enabled_proxies(&cd).context("proxy")?.to_vec();
    ensure!(
        both.contains(&uid1),
        "proxy 1 ({uid1}) is no longer enabled: {both:?}"
    );
    let mut sorted = both.clone();
    sorted.sort();
    ensure!(sorted == both, "enabledProxies is not sorted: {both:?}");

    // A hung proxy 2 (SIGSTOP) stops refreshing its info: disabled (Stolon: within
    // 3 * proxyTimeout; here proxyTimeout is 5 s and the info key lives 20 s).
    proxy2.signal(Signal::SIGSTOP)?;
    let stopped = wait_for(
        Duration::from_secs(45),
        "proxy 2 disabled while stopped",
        async || {
            cluster_data(store.as_ref())
                .await
                .filter(|cd| enabled_proxies(cd) == Some(std::slice::from_ref(&uid1)))
        },
    )
    .await;
    // Resume it before reporting anything, so the drop does not fight a stopped process.
    proxy2.signal(Signal::SIGCONT)?;
    stopped?;

    // Resumed: enabled again (Stolon: within 12 s).
    wait_for(
        Duration::from_secs(20),
        "proxy 2 enabled again after SIGCONT",
        async || {
            cluster_data(store.as_ref())
                .await
                .filter(|cd| enabled_proxies(cd) == Some(both.as_slice()))
        },
    )
    .await?;
    Ok(())
}
