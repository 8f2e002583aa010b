//! A whole cluster over the [`Topology`]: on every host one etcd member (of a 3-member cluster),
//! a fault proxy in front of it, one keeper with its PostgreSQL, one sentinel and one proxy, each a
//! real binary started inside the host's namespace (PostgreSQL as the `postgres` OS user). Every
//! component's store endpoints are the three fault proxies. The harness itself (store client,
//! clients, checks) runs in the root namespace and reaches the hosts over the bridge.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use stolon_core::model::{ClusterData, ClusterPhase};
use stolon_it::bins::{self, BinPaths};
use stolon_it::pg::{REPL_PASSWORD, REPL_USER, SU_PASSWORD, SU_USER};
use stolon_it::process::{self, ProcSpec, Process};
use stolon_pg::testing::{TestDir, test_os_user};
use stolon_store::{Election, Store, StoreConfig};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::faultproxy::FaultProxy;
use crate::net::{Host, Topology};

/// etcd client port on every host.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd peer port.
pub const ETCD_PEER_PORT: u16 = 2380;
/// The failsafe shared secret of the test clusters (a file readable only by the keepers' and
/// proxies' users).
const FAILSAFE_SECRET: &str = "stolon-net-failsafe-secret\n";
/// The keeper's HTTP listener (metrics, and failsafe requests) on every host.
pub const KEEPER_HTTP_PORT: u16 = 8089;
/// The fault proxy in front of the host's etcd member.
pub const ETCD_PROXY_PORT: u16 = 2389;
/// PostgreSQL ports start here. The hosts have their own network stacks but share `/tmp`, where
/// PostgreSQL puts its Unix socket and lock file named after the port, so every host of every
/// run gets its own port: `PG_PORT_BASE + 8 * <the run's subnet number> + <host>`.
pub const PG_PORT_BASE: u16 = 14000;

fn pg_port_of(h: &Host) -> u16 {
    PG_PORT_BASE + 8 * u16::from(h.addr.octets()[2]) + h.index as u16
}
/// stolon-proxy port.
pub const PROXY_PORT: u16 = 25432;
/// `--cluster-name`.
pub const CLUSTER_NAME: &str = "stolon-net";

/// Bound on connecting plus one statement from the harness.
const SQL_TIMEOUT: Duration = Duration::from_secs(5);

/// Timings and mode of a run.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Synchronous replication.
    pub synchronous: bool,
    /// `sleepInterval` (s).
    pub sleep_interval_s: u64,
    /// `failInterval` (s).
    pub fail_interval_s: u64,
    /// `proxyTimeout` (s).
    pub proxy_timeout_s: u64,
    /// `requestTimeout` (s).
    pub request_timeout_s: u64,
    /// `proxyCheckInterval` (s).
    pub proxy_check_interval_s: u64,
    /// `--store-timeout` of every component (s).
    pub store_timeout_s: u64,
    /// PostgreSQL's `wal_sender_timeout` (s), in the spec's `pgParameters`: how soon the master
    /// notices a synchronous standby cut off by the network (docs/deployment.md).
    pub wal_sender_timeout_s: u64,
    /// Failsafe mode (docs/failsafe.md): the spec's `failsafeMode`, and the shared secret given
    /// to every keeper and proxy.
    pub failsafe: bool,
    /// Quorum commit: the spec's `quorumCommit` with one to two synchronous standbys (commits
    /// wait for any one of them) instead of exactly one.
    pub quorum: bool,
    /// Where a master fault's cycle puts etcd's raft leader before the fault.
    pub etcd_leader: EtcdLeader,
}

/// Where a master fault's cycle puts etcd's raft leader before the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EtcdLeader {
    /// Wherever etcd elected it (not moved).
    #[default]
    Anywhere,
    /// On the master's host, which the fault then takes.
    OnMaster,
    /// On a host the fault does not touch.
    Away,
}

impl EtcdLeader {
    /// The placement named `anywhere`, `on-master` or `away`.
    pub fn by_name(name: &str) -> Option<EtcdLeader> {
        match name {
            "anywhere" => Some(EtcdLeader::Anywhere),
            "on-master" => Some(EtcdLeader::OnMaster),
            "away" => Some(EtcdLeader::Away),
            _ => None,
        }
    }
}

impl NetConfig {
    /// The fast timings of the CI campaign: `sleepInterval 1s, failInterval 3s,
    /// proxyTimeout 3s, requestTimeout 3s, proxyCheckInterval 1s`, `--store-timeout 2s`,
    /// `wal_sender_timeout 2s`.
    pub fn fast(synchronous: bool) -> NetConfig {
        NetConfig {
            synchronous,
            sleep_interval_s: 1,
            fail_interval_s: 3,
            proxy_timeout_s: 3,
            request_timeout_s: 3,
            proxy_check_interval_s: 1,
            store_timeout_s: 2,
            wal_sender_timeout_s: 2,
            failsafe: false,
            quorum: false,
            etcd_leader: EtcdLeader::Anywhere,
        }
    }

    /// The defaults a deployment gets without tuning: the spec's default `sleepInterval`,
    /// `failInterval`, `proxyTimeout`, `requestTimeout` and `proxyCheckInterval`, and the
    /// default `--store-timeout`. PostgreSQL's own default `wal_sender_timeout` (60 s) is replaced
    /// by the 5 s that docs/deployment.md recommends for synchronous replication.
    pub fn defaults(synchronous: bool) -> NetConfig {
        use stolon_core::model::spec::defaults as d;
        let secs = |g: stolon_core::duration::GoDuration| g.to_std().as_secs();
        NetConfig {
            synchronous,
            sleep_interval_s: secs(d::SLEEP_INTERVAL),
            fail_interval_s: secs(d::FAIL_INTERVAL),
            proxy_timeout_s: secs(d::PROXY_TIMEOUT),
            request_timeout_s: secs(d::REQUEST_TIMEOUT),
            proxy_check_interval_s: secs(d::PROXY_CHECK_INTERVAL),
            store_timeout_s: stolon_store::config::DEFAULT_STORE_TIMEOUT.as_secs(),
            wal_sender_timeout_s: 5,
            failsafe: false,
            quorum: false,
            etcd_leader: EtcdLeader::Anywhere,
        }
    }

    /// The timing set named `fast` or `defaults`.
    pub fn by_timings(name: &str, synchronous: bool) -> Option<NetConfig> {
        match name {
            "fast" => Some(NetConfig::fast(synchronous)),
            "defaults" => Some(NetConfig::defaults(synchronous)),
            _ => None,
        }
    }

    /// The initial cluster spec.
    pub fn spec(&self) -> Value {
        let max_sync = if self.quorum { 2 } else { 1 };
        let mut spec = json!({
            "initMode": "new",
            "sleepInterval": format!("{}s", self.sleep_interval_s),
            "failInterval": format!("{}s", self.fail_interval_s),
            "proxyTimeout": format!("{}s", self.proxy_timeout_s),
            "proxyCheckInterval": format!("{}s", self.proxy_check_interval_s),
            "requestTimeout": format!("{}s", self.request_timeout_s),
            "convergenceTimeout": "30s",
            "synchronousReplication": self.synchronous,
            "failsafeMode": self.failsafe,
            "minSynchronousStandbys": 1,
            "maxSynchronousStandbys": max_sync,
            "usePgrewind": true,
            "pgParameters": {
                "log_destination": "stderr",
                "logging_collector": "false",
                "wal_keep_size": "256MB",
                // The master notices a cut-off synchronous standby within this (docs/deployment.md).
                "wal_sender_timeout": format!("{}s", self.wal_sender_timeout_s),
            },
        });
        if self.quorum {
            spec["quorumCommit"] = json!(true);
        }
        spec
    }
}

/// One host's processes.
pub struct Node {
    /// The host.
    pub host: Host,
    /// Its etcd member.
    pub etcd: Process,
    /// Its keeper (uid `keeper<i>`).
    pub keeper: Process,
    /// Its sentinel.
    pub sentinel: Process,
    /// Its proxy.
    pub proxy: Process,
    /// The fault proxy in front of its etcd member.
    pub etcd_proxy: FaultProxy,
    /// Keeper data dir.
    pub data_dir: PathBuf,
    /// PostgreSQL port.
    pub pg_port: u16,
}

impl Node {
    /// PGDATA.
    pub fn pgdata(&self) -> PathBuf {
        self.data_dir.join("postgres")
    }

    /// The keeper's uid.
    pub fn keeper_uid(&self) -> String {
        format!("keeper{}", self.host.index)
    }

    /// The proxy's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        SocketAddr::from((self.host.addr, PROXY_PORT))
    }

    /// The sentinel's uid, from its current run's log.
    pub fn sentinel_uid(&self) -> Option<String> {
        let text = self.sentinel.log_text();
        let line = text.lines().find(|l| l.contains("sentinel uid"))?;
        // The console layout puts the fields as JSON after the message (`{"uid": "..."}`); the
        // JSON layout has `"uid":"..."`.
        let (_, rest) = line
            .split_once("\"uid\": \"")
            .or_else(|| line.split_once("\"uid\":\""))?;
        let uid: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        (!uid.is_empty()).then_some(uid)
    }

    /// SIGKILL of the keeper and its postgres (postmaster and every backend).
    pub fn kill_keeper_and_postgres(&mut self) -> Result<()> {
        let _ = self.keeper.signal(Signal::SIGKILL);
        if process::postmaster_pid(&self.pgdata()).is_some() {
            let _ = process::signal_postgres(&self.pgdata(), Signal::SIGKILL);
        }
        self.keeper.kill()?;
        if process::postmaster_pid(&self.pgdata()).is_some() {
            process::kill_postgres(&self.pgdata())?;
        }
        Ok(())
    }
}

/// The running cluster. Field order is drop order: processes, then the network, then files.
pub struct NetCluster {
    /// The hosts' processes.
    pub nodes: Vec<Node>,
    store: Arc<dyn Store>,
    election: Arc<dyn Election>,
    /// The network.
    pub topo: Topology,
    /// Configuration.
    pub cfg: NetConfig,
    logs: PathBuf,
    passed: bool,
    dir: TestDir,
}

impl std::fmt::Debug for NetCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetCluster")
            .field("tag", &self.topo.tag)
            .field("dir", &self.dir.path())
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

fn in_ns(ns: &str, program: &Path, args: Vec<String>, as_postgres: bool) -> ProcSpec {
    let mut a: Vec<std::ffi::OsString> = vec!["netns".into(), "exec".into(), ns.into()];
    if as_postgres && let Some(u) = test_os_user() {
        a.extend([
            "setpriv".into(),
            format!("--reuid={}", u.uid).into(),
            format!("--regid={}", u.gid).into(),
            "--init-groups".into(),
        ]);
    }
    a.push(program.into());
    a.extend(args.into_iter().map(Into::into));
    ProcSpec {
        program: PathBuf::from("ip"),
        args: a,
        envs: Vec::new(),
        run_as: None,
        cwd: None,
        pgdata: None,
    }
}

/// Connects to `addr:port` as the test superuser (bounded).
pub async fn connect(addr: Ipv4Addr, port: u16) -> Result<Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(addr.to_string())
        .port(port)
        .user(SU_USER)
        .password(SU_PASSWORD)
        .dbname("postgres")
        .application_name("stolon-net")
        .connect_timeout(Duration::from_secs(3));
    let (client, conn) = tokio::time::timeout(SQL_TIMEOUT, cfg.connect(NoTls))
        .await
        .map_err(|_| anyhow!("connect to {addr}:{port}: timed out"))?
        .with_context(|| format!("connect to {addr}:{port}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Runs `sql` on `client` (simple protocol, bounded); rows of the last result as text.
pub async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    let msgs = tokio::time::timeout(SQL_TIMEOUT, client.simple_query(sql))
        .await
        .map_err(|_| anyhow!("{sql:?}: timed out"))?
        .with_context(|| format!("{sql:?}"))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// First value of `sql` on a fresh connection to `addr:port`.
pub async fn value(addr: Ipv4Addr, port: u16, sql: &str) -> Result<String> {
    let c = connect(addr, port).await?;
    rows(&c, sql)
        .await?
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .with_context(|| format!("{sql:?} returned no value"))
}

/// Retries `f` every 500 ms until it succeeds or `limit` passes.
pub async fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                bail!("timed out after {limit:?} waiting for {what}: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

impl NetCluster {
    /// Builds the network and starts everything on `hosts` hosts; returns once a primary with
    /// every other keeper streaming is up and every proxy routes to it.
    pub async fn start(hosts: usize, cfg: NetConfig) -> Result<NetCluster> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the multi-host harness needs root (network namespaces, iptables)");
        }
        let found = bins::locate()?;
        let dir = TestDir::new(crate::net::DIR_PREFIX);
        std::fs::write(
            dir.path().join(crate::net::OWNER_FILE),
            std::process::id().to_string(),
        )?;
        let topo = tokio::task::spawn_blocking(move || Topology::create(hosts)).await??;
        let bins = BinPaths {
            keeper: dir.install_binary(&found.keeper),
            ..found
        };
        let logs = dir.subdir("logs", 0o755);
        let secrets = dir.subdir("secrets", 0o700);
        let su_file = secrets.join("su-password");
        let repl_file = secrets.join("repl-password");
        write_secret(&su_file, SU_PASSWORD)?;
        write_secret(&repl_file, REPL_PASSWORD)?;
        let failsafe_file = secrets.join("failsafe");
        write_secret(&failsafe_file, FAILSAFE_SECRET)?;
        let failsafe_flags: Vec<String> = if cfg.failsafe {
            vec![format!(
                "--failsafe-secret-file={}",
                failsafe_file.display()
            )]
        } else {
            Vec::new()
        };
        let spec_file = dir.path().join("initial-cluster-spec.json");
        std::fs::write(&spec_file, serde_json::to_vec_pretty(&cfg.spec())?)?;

        let initial_cluster = topo
            .hosts
            .iter()
            .map(|h| format!("m{}=http://{}:{ETCD_PEER_PORT}", h.index, h.addr))
            .collect::<Vec<_>>()
            .join(",");
        let endpoints = topo
            .hosts
            .iter()
            .map(|h| format!("http://{}:{ETCD_PROXY_PORT}", h.addr))
            .collect::<Vec<_>>()
            .join(",");
        let common = vec![
            "--cluster-name".to_string(),
            CLUSTER_NAME.into(),
            "--store-backend".into(),
            "etcdv3".into(),
            "--store-endpoints".into(),
            endpoints,
            "--store-timeout".into(),
            format!("{}s", cfg.store_timeout_s),
        ];
        let etcd_bin = PathBuf::from(
            std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".to_string()),
        );
        let mut nodes = Vec::new();
        for h in &topo.hosts {
            let i = h.index;
            let a = h.addr;
            let etcd_dir = dir.subdir(&format!("etcd{i}"), 0o700);
            let etcd_args = vec![
                "--name".to_string(),
                format!("m{i}"),
                "--data-dir".into(),
                etcd_dir.join("data").display().to_string(),
                "--listen-client-urls".into(),
                format!("http://{a}:{ETCD_CLIENT_PORT}"),
                "--advertise-client-urls".into(),
                format!("http://{a}:{ETCD_CLIENT_PORT}"),
                "--listen-peer-urls".into(),
                format!("http://{a}:{ETCD_PEER_PORT}"),
                "--initial-advertise-peer-urls".into(),
                format!("http://{a}:{ETCD_PEER_PORT}"),
                "--initial-cluster".into(),
                initial_cluster.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                format!("stolon-net-{}", topo.tag),
                "--logger".into(),
                "zap".into(),
                "--log-outputs".into(),
                "stderr".into(),
                // As docs/deployment.md recommends (etcd 3.4 defaults to false): without it, a
                // vote refused under the leader lease can split the election after a leader dies.
                "--pre-vote".into(),
            ];
            let mut etcd = Process::new(
                &format!("etcd{i}"),
                in_ns(&h.ns, &etcd_bin, etcd_args, false),
                logs.join(format!("etcd{i}.log")),
            );
            etcd.start()?;
            let etcd_proxy = FaultProxy::start(
                &h.ns,
                SocketAddr::from((a, ETCD_PROXY_PORT)),
                SocketAddr::from((a, ETCD_CLIENT_PORT)),
            )?;

            let data_dir = dir.subdir(&format!("keeper{i}"), 0o700);
            let mut kargs = common.clone();
            kargs.extend([
                "--uid".into(),
                format!("keeper{i}"),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--pg-listen-address".into(),
                a.to_string(),
                "--pg-port".into(),
                pg_port_of(h).to_string(),
                "--pg-bin-path".into(),
                stolon_pg::testing::pg_bin_dir().display().to_string(),
                "--pg-su-username".into(),
                SU_USER.into(),
                "--pg-su-passwordfile".into(),
                su_file.display().to_string(),
                "--pg-repl-username".into(),
                REPL_USER.into(),
                "--pg-repl-passwordfile".into(),
                repl_file.display().to_string(),
                "--metrics-listen-address".into(),
                format!("{a}:{KEEPER_HTTP_PORT}"),
            ]);
            kargs.extend(failsafe_flags.iter().cloned());
            let mut kspec = in_ns(&h.ns, &bins.keeper, kargs, true);
            kspec.cwd = Some(data_dir.clone());
            kspec.pgdata = Some(data_dir.join("postgres"));
            let keeper = Process::new(
                &format!("keeper{i}"),
                kspec,
                logs.join(format!("keeper{i}.log")),
            );

            let mut sargs = common.clone();
            sargs.extend([
                "--initial-cluster-spec".into(),
                spec_file.display().to_string(),
            ]);
            let mut sspec = in_ns(&h.ns, &bins.sentinel, sargs, false);
            sspec.cwd = Some(dir.path().to_path_buf());
            let sentinel = Process::new(
                &format!("sentinel{i}"),
                sspec,
                logs.join(format!("sentinel{i}.log")),
            );

            let mut pargs = common.clone();
            pargs.extend([
                "--listen-address".into(),
                a.to_string(),
                "--port".into(),
                PROXY_PORT.to_string(),
            ]);
            pargs.extend(failsafe_flags.iter().cloned());
            let mut pspec = in_ns(&h.ns, &bins.proxy, pargs, false);
            pspec.cwd = Some(dir.path().to_path_buf());
            let proxy = Process::new(
                &format!("proxy{i}"),
                pspec,
                logs.join(format!("proxy{i}.log")),
            );
            nodes.push(Node {
                host: h.clone(),
                etcd,
                keeper,
                sentinel,
                proxy,
                etcd_proxy,
                data_dir,
                pg_port: pg_port_of(h),
            });
        }
        let store_cfg = StoreConfig {
            endpoints: topo
                .hosts
                .iter()
                .map(|h| format!("http://{}:{ETCD_CLIENT_PORT}", h.addr))
                .collect(),
            timeout: Duration::from_secs(2),
            ..StoreConfig::in_memory(CLUSTER_NAME)
        };
        let (store, election) = wait_for("the etcd cluster", Duration::from_secs(60), async || {
            let (s, e) = stolon_store::connect(&store_cfg)
                .await
                .map_err(|e| anyhow!("connect: {e}"))?;
            s.get_cluster_data()
                .await
                .map_err(|e| anyhow!("read: {e}"))?;
            Ok((s, e))
        })
        .await?;
        let mut c = NetCluster {
            nodes,
            store,
            election,
            topo,
            cfg,
            logs,
            passed: false,
            dir,
        };
        for n in &mut c.nodes {
            n.sentinel.start()?;
        }
        for n in &mut c.nodes {
            n.keeper.start()?;
        }
        for n in &mut c.nodes {
            n.proxy.start()?;
        }
        c.wait_converged(Duration::from_secs(180)).await?;
        let m = c.master().await?;
        let a = c.nodes[m].host.addr;
        let cl = connect(a, c.nodes[m].pg_port).await?;
        rows(
            &cl,
            "create table if not exists acks (id bigint primary key, client int not null)",
        )
        .await?;
        Ok(c)
    }

    /// Marks the run as passed: logs are not copied on drop.
    pub fn pass(mut self) {
        self.passed = true;
    }

    /// The clusterdata now.
    pub async fn cd(&self) -> Result<ClusterData> {
        self.store
            .get_cluster_data()
            .await
            .map_err(|e| anyhow!("read clusterdata: {e}"))?
            .data
            .context("no clusterdata yet")
    }

    /// The host index of the master keeper in clusterdata (phase normal).
    pub async fn master(&self) -> Result<usize> {
        let cd = self.cd().await?;
        let cluster = cd.cluster.as_ref().context("no cluster")?;
        if cluster.status.phase != Some(ClusterPhase::Normal) {
            bail!("cluster phase is {:?}", cluster.status.phase);
        }
        let db = cd.dbs.get(&cluster.status.master).context("no master db")?;
        let uid = db
            .spec
            .as_ref()
            .map(|s| s.keeper_uid.clone())
            .unwrap_or_default();
        self.nodes
            .iter()
            .position(|n| n.keeper_uid() == uid)
            .with_context(|| format!("master on unknown keeper {uid:?}"))
    }

    /// The hosts of the master's synchronous standbys, in the clusterdata's order.
    pub async fn sync_standbys(&self) -> Result<Vec<usize>> {
        let cd = self.cd().await?;
        let listed = cd
            .master_db()
            .and_then(|m| m.spec.as_ref())
            .and_then(|s| s.synchronous_standbys.clone())
            .unwrap_or_default();
        Ok(listed
            .iter()
            .filter_map(|db| {
                let uid = cd.dbs.get(db)?.spec.as_ref()?.keeper_uid.clone();
                self.nodes.iter().position(|n| n.keeper_uid() == uid)
            })
            .collect())
    }

    /// A client of the etcd member on host `i`, connected within 2 s.
    async fn etcd_client(&self, i: usize) -> Result<etcd_client::Client> {
        let ep = format!("http://{}:{ETCD_CLIENT_PORT}", self.nodes[i].host.addr);
        tokio::time::timeout(
            Duration::from_secs(2),
            etcd_client::Client::connect([ep], None),
        )
        .await
        .context("connect timed out")?
        .context("connect")
    }

    /// The member id of each etcd member answering its status within a second, by host, and the
    /// raft leader's member id as they report it.
    async fn etcd_members(&self) -> (Vec<(usize, u64)>, Option<u64>) {
        let mut ids = Vec::new();
        let mut leader = None;
        for i in 0..self.nodes.len() {
            let status = tokio::time::timeout(Duration::from_secs(1), async {
                self.etcd_client(i).await.ok()?.status().await.ok()
            })
            .await
            .ok()
            .flatten();
            if let Some(st) = status {
                if let Some(h) = st.header() {
                    ids.push((i, h.member_id()));
                }
                if st.leader() != 0 {
                    leader = Some(st.leader());
                }
            }
        }
        (ids, leader)
    }

    /// The host index of etcd's raft leader, as the members answering within a second report it
    /// (`None` when none answers or the leader is none of them).
    pub async fn etcd_leader(&self) -> Option<usize> {
        let (ids, leader) = self.etcd_members().await;
        let leader = leader?;
        ids.into_iter()
            .find(|(_, id)| *id == leader)
            .map(|(i, _)| i)
    }

    /// Moves etcd's raft leader to host `h` (etcd's leadership transfer) and waits until the
    /// answering members report it there (at most 30 s).
    pub async fn move_etcd_leader_to(&self, h: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ids, leader) = self.etcd_members().await;
            let host_of = |id: u64| ids.iter().find(|(_, m)| *m == id).map(|(i, _)| *i);
            let from = leader.and_then(host_of);
            if from == Some(h) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd's leader did not move to host {h}");
            }
            let target = ids.iter().find(|(i, _)| *i == h).map(|(_, id)| *id);
            if let (Some(from), Some(target)) = (from, target) {
                // The transfer must be asked of the current leader.
                let moved = async {
                    let mut c = self.etcd_client(from).await?;
                    tokio::time::timeout(Duration::from_secs(5), c.move_leader(target))
                        .await
                        .context("move-leader timed out")?
                        .context("move-leader")
                };
                if let Err(e) = moved.await {
                    eprintln!("moving etcd's leader to host {h}: {e:#}");
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The host index of the leader sentinel.
    pub async fn leader_sentinel(&self) -> Result<usize> {
        let uid = self
            .election
            .leader()
            .await
            .map_err(|e| anyhow!("read leader: {e}"))?
            .context("no leader sentinel")?;
        self.nodes
            .iter()
            .position(|n| n.sentinel.is_running() && n.sentinel_uid().as_deref() == Some(&uid))
            .with_context(|| format!("leader {uid} is not a running sentinel"))
    }

    /// One check of convergence: one master in clusterdata, its instance a primary with every
    /// other keeper streaming from it, every other instance in recovery, every proxy routing to
    /// it, every process running. Returns the master's host index.
    pub async fn converged(&self) -> Result<usize> {
        for n in &self.nodes {
            for p in [&n.etcd, &n.keeper, &n.sentinel, &n.proxy] {
                if !p.is_running() {
                    bail!("{} is not running", p.name());
                }
            }
        }
        let m = self.master().await?;
        let ma = self.nodes[m].host.addr;
        let c = connect(ma, self.nodes[m].pg_port).await?;
        let r = rows(
            &c,
            "select pg_is_in_recovery()::text, \
             (select count(*) from pg_stat_replication where state = 'streaming')::text",
        )
        .await?;
        let r = r.first().context("no row")?;
        if r[0].as_deref() != Some("false") {
            bail!("master keeper{m} is in recovery");
        }
        let want = (self.nodes.len() - 1).to_string();
        if r[1].as_deref() != Some(want.as_str()) {
            bail!("master keeper{m} has {:?} streaming standbys", r[1]);
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if i == m {
                continue;
            }
            let v = value(
                n.host.addr,
                n.pg_port,
                "select (pg_is_in_recovery() and exists (select 1 from pg_stat_wal_receiver \
                 where status = 'streaming'))::text",
            )
            .await?;
            if v != "true" {
                bail!("keeper{i} is not a streaming standby");
            }
        }
        for n in &self.nodes {
            let v = value(
                n.host.addr,
                PROXY_PORT,
                "select host(inet_server_addr()) || ' ' || pg_is_in_recovery()::text",
            )
            .await
            .with_context(|| format!("through proxy{}", n.host.index))?;
            if v != format!("{ma} false") {
                bail!("proxy{} routes to {v}, want {ma}", n.host.index);
            }
        }
        Ok(m)
    }

    /// Waits for [`NetCluster::converged`].
    pub async fn wait_converged(&self, limit: Duration) -> Result<usize> {
        wait_for(
            "one primary, every other keeper streaming",
            limit,
            async || self.converged().await,
        )
        .await
    }

    /// Every id in `acks`, read from the master's instance.
    pub async fn read_ids(&self, master: usize) -> Result<std::collections::BTreeSet<i64>> {
        let c = connect(self.nodes[master].host.addr, self.nodes[master].pg_port).await?;
        let msgs = tokio::time::timeout(
            Duration::from_secs(30),
            c.simple_query("select id from acks"),
        )
        .await
        .map_err(|_| anyhow!("read back: timed out"))??;
        let mut out = std::collections::BTreeSet::new();
        for m in msgs {
            if let SimpleQueryMessage::Row(r) = m
                && let Some(v) = r.get(0)
            {
                out.insert(v.parse()?);
            }
        }
        Ok(out)
    }

    fn copy_logs(&self) {
        let Some(dest) = bins::target_profile_dir().and_then(|d| d.parent().map(Path::to_path_buf))
        else {
            return;
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let dest = dest
            .join("stolon-net-logs")
            .join(format!("{}-{stamp}", self.topo.tag));
        if std::fs::create_dir_all(&dest).is_ok()
            && let Ok(entries) = std::fs::read_dir(&self.logs)
        {
            for e in entries.flatten() {
                let _ = std::fs::copy(e.path(), dest.join(e.file_name()));
            }
            eprintln!("stolon-net: logs copied to {}", dest.display());
        }
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        if !self.passed || std::env::var_os("STOLON_NET_KEEP_LOGS").is_some() {
            self.copy_logs();
        }
        for n in &mut self.nodes {
            n.proxy = Process::new("gone", n.proxy.spec().clone(), n.proxy.log_path().into());
            n.sentinel = Process::new(
                "gone",
                n.sentinel.spec().clone(),
                n.sentinel.log_path().into(),
            );
        }
        for n in &mut self.nodes {
            n.keeper = Process::new("gone", n.keeper.spec().clone(), n.keeper.log_path().into());
        }
        self.nodes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stolon_core::model::{ClusterSpec, decode_spec_value};

    /// The `defaults` timings are what a spec without them decodes to, and the spec decodes.
    #[test]
    fn default_timings_are_the_spec_defaults() {
        let cfg = NetConfig::defaults(true);
        let spec = decode_spec_value(cfg.spec()).expect("the spec decodes");
        let want = ClusterSpec::default().with_defaults();
        assert_eq!(spec.sleep_interval, want.sleep_interval);
        assert_eq!(spec.fail_interval, want.fail_interval);
        assert_eq!(spec.proxy_timeout, want.proxy_timeout);
        assert_eq!(spec.request_timeout, want.request_timeout);
        assert_eq!(spec.proxy_check_interval, want.proxy_check_interval);
        assert_eq!(
            Duration::from_secs(cfg.store_timeout_s),
            stolon_store::config::DEFAULT_STORE_TIMEOUT
        );
        assert_eq!(spec.synchronous_replication, Some(true));
        assert_eq!(
            cfg.spec()["pgParameters"]["wal_sender_timeout"],
            json!("5s")
        );
    }

    #[test]
    fn timings_by_name() {
        assert_eq!(
            NetConfig::by_timings("fast", false).map(|c| c.fail_interval_s),
            Some(3)
        );
        assert_eq!(
            NetConfig::by_timings("defaults", true).map(|c| c.fail_interval_s),
            Some(20)
        );
        assert!(NetConfig::by_timings("slow", true).is_none());
    }

    #[test]
    fn etcd_leader_placements_by_name() {
        assert_eq!(EtcdLeader::by_name("anywhere"), Some(EtcdLeader::Anywhere));
        assert_eq!(EtcdLeader::by_name("on-master"), Some(EtcdLeader::OnMaster));
        assert_eq!(EtcdLeader::by_name("away"), Some(EtcdLeader::Away));
        assert_eq!(EtcdLeader::by_name("on_master"), None);
        assert_eq!(NetConfig::fast(true).etcd_leader, EtcdLeader::Anywhere);
        assert_eq!(NetConfig::defaults(true).etcd_leader, EtcdLeader::Anywhere);
    }

    #[test]
    fn quorum_spec() {
        let plain = NetConfig::fast(true).spec();
        assert!(plain.get("quorumCommit").is_none());
        assert_eq!(plain["maxSynchronousStandbys"], json!(1));
        let q = NetConfig {
            quorum: true,
            ..NetConfig::fast(true)
        }
        .spec();
        assert_eq!(q["quorumCommit"], json!(true));
        assert_eq!(q["minSynchronousStandbys"], json!(1));
        assert_eq!(q["maxSynchronousStandbys"], json!(2));
    }
}
