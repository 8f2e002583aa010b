//! The real `stolon-sentinel` binary against a real etcd, with keeper infos written by the test
//! (no PostgreSQL): leadership, failover of the leader, CAS refusal of stale writes, creation of
//! clusterdata from `--initial-cluster-spec`, initialisation of a `new` cluster and a failover
//! when the master's keeper stops publishing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use stolon_core::model::{
    ClusterData, ClusterPhase, KeeperInfo, PostgresBinaryVersion, PostgresState,
};
use stolon_store::testing::etcd::EtcdServer;
use stolon_store::{Election, Store, StoreBackend, StoreConfig, StoreError};
use tokio_util::sync::CancellationToken;

/// A sentinel process, SIGKILLed on drop, logging to a file.
struct Sentinel {
    child: Option<Child>,
    log: PathBuf,
    metrics_port: u16,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Sentinel {
    fn start(
        etcd: &EtcdServer,
        cluster: &str,
        dir: &Path,
        name: &str,
        spec: Option<&Path>,
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let metrics_port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stolon-sentinel"));
        cmd.arg("--cluster-name")
            .arg(cluster)
            .arg("--store-backend")
            .arg("etcdv3")
            .arg("--store-endpoints")
            .arg(etcd.endpoints_flag())
            .arg("--metrics-listen-address")
            .arg(format!("127.0.0.1:{metrics_port}"));
        if let Some(spec) = spec {
            cmd.arg("--initial-cluster-spec").arg(spec);
        }
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stdout(Stdio::null())
            .stderr(file)
            .env_remove("RUST_LOG");
        let child = cmd.spawn().expect("spawn stolon-sentinel");
        Sentinel {
            child: Some(child),
            log,
            metrics_port,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `stolon_sentinel_is_leader` from /metrics, None if unreachable.
    fn is_leader(&self) -> Option<bool> {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.lines()
            .find(|l| l.starts_with("stolon_sentinel_is_leader "))
            .map(|l| l.trim_end().ends_with(" 1"))
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 200 ms until it yields a value or `limit` passes.
async fn wait_for<T>(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn store_for(etcd: &EtcdServer, cluster: &str) -> (Arc<dyn Store>, Arc<dyn Election>) {
    let cfg = StoreConfig {
        backend: StoreBackend::EtcdV3,
        endpoints: etcd.endpoints(),
        timeout: Duration::from_secs(5),
        prefix: "stolon/cluster".into(),
        cluster_name: cluster.into(),
        cert_file: None,
        key_file: None,
        ca_file: None,
        skip_tls_verify: false,
        kube_resource_kind: None,
    };
    stolon_store::connect(&cfg).await.expect("connect to etcd")
}

async fn cluster_data(store: &Arc<dyn Store>) -> Option<ClusterData> {
    store.get_cluster_data().await.ok().and_then(|r| r.data)
}

fn write_spec(dir: &Path, json: &str) -> PathBuf {
    let p = dir.join("spec.json");
    std::fs::write(&p, json).expect("write spec");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sentinels_one_leads_and_a_killed_leader_is_replaced() {
    let etcd = EtcdServer::start_async().await.expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let spec = write_spec(dir.path(), r#"{"initMode":"new","sleepInterval":"1s"}"#);
    let mut s = [
        Sentinel::start(&etcd, "c1", dir.path(), "s0", Some(&spec)),
        Sentinel::start(&etcd, "c1", dir.path(), "s1", Some(&spec)),
    ];
    let leader = wait_for(Duration::from_secs(60), "a leader", async || {
        match (s[0].is_leader()?, s[1].is_leader()?) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            (true, true) => panic!(
                "two sentinels lead at once:\n--- s0\n{}\n--- s1\n{}",
                s[0].logs(),
                s[1].logs()
            ),
            (false, false) => None,
        }
    })
    .await;
    // Exactly one leads, for a while.
    for _ in 0..10 {
        let (a, b) = (s[0].is_leader(), s[1].is_leader());
        assert_eq!(a.zip(b).map(|(a, b)| u8::from(a) + u8::from(b)), Some(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, election) = store_for(&etcd, "c1").await;
    let leader_uid = election
        .leader()
        .await
        .expect("leader")
        .expect("a leader uid");
    assert!(
        s[leader].logs().contains(&leader_uid),
        "leader uid {leader_uid} not in its log"
    );

    // SIGKILL the leader: the other leads within the election lease (15 s at the default
    // sleepInterval) plus slack.
    s[leader].sigkill();
    let other = 1 - leader;
    wait_for(
        Duration::from_secs(45),
        "the other sentinel to lead",
        async || s[other].is_leader().filter(|l| *l),
    )
    .await;
    let new_uid = election
        .leader()
        .await
        .expect("leader")
        .expect("a leader uid");
    assert_ne!(new_uid, leader_uid);
    assert!(s[other].logs().contains("sentinel leadership acquired"));

    // SIGTERM: resigns and exits 0.
    kill(s[other].pid(), Signal::SIGTERM).expect("sigterm");
    let mut child = s[other].child.take().expect("child");
    let status = wait_for(Duration::from_secs(20), "exit after SIGTERM", async || {
        child.try_wait().expect("try_wait")
    })
    .await;
    assert!(status.success(), "exit status {status:?}");
    let after = election.leader().await.expect("leader");
    assert_ne!(
        after,
        Some(new_uid),
        "the stopped sentinel still holds the leadership"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_cluster_spec_creates_clusterdata_and_stale_writes_are_refused() {
    let etcd = EtcdServer::start_async().await.expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let spec = write_spec(
        dir.path(),
        r#"{"initMode":"new","sleepInterval":"1s","synchronousReplication":true}"#,
    );
    let _s = Sentinel::start(&etcd, "c2", dir.path(), "s0", Some(&spec));
    let (store, _) = store_for(&etcd, "c2").await;
    let cd = wait_for(Duration::from_secs(60), "clusterdata", async || {
        cluster_data(&store).await
    })
    .await;
    let cluster = cd.cluster.clone().expect("cluster");
    assert_eq!(cluster.status.phase, Some(ClusterPhase::Initializing));
    let stored_spec = cluster.spec.expect("spec");
    assert_eq!(stored_spec.synchronous_replication, Some(true));
    assert_eq!(
        stored_spec.sleep_interval.map(|d| d.to_string()),
        Some("1s".to_string())
    );

    // Read, let the sentinel change clusterdata (a keeper appears), then write back the stale read.
    let stale = store.get_cluster_data().await.expect("read");
    let info = KeeperInfo {
        info_uid: "i1".into(),
        uid: "k1".into(),
        cluster_uid: cluster.uid.clone(),
        boot_uuid: "b1".into(),
        ..Default::default()
    };
    store
        .put_keeper_info(&info, Duration::from_secs(20))
        .await
        .expect("keeper info");
    wait_for(
        Duration::from_secs(30),
        "the sentinel to register k1",
        async || {
            cluster_data(&store)
                .await
                .filter(|cd| cd.keepers.contains_key("k1"))
        },
    )
    .await;
    let stale_data = stale.data.clone().expect("data");
    match store
        .put_cluster_data(&stale_data, stale.revision.as_ref())
        .await
    {
        Err(StoreError::Conflict) => {}
        other => panic!("a write on a stale revision must be refused, got {other:?}"),
    }
    let now = cluster_data(&store).await.expect("cd");
    assert!(
        now.keepers.contains_key("k1"),
        "the stale write must not have landed"
    );
}

/// A fake keeper: publishes a KeeperInfo every 300 ms reporting the DB clusterdata assigns to
/// it as converged and healthy, until cancelled.
fn fake_keeper(store: Arc<dyn Store>, uid: &'static str, xlog: u64, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            if stop.is_cancelled() {
                return;
            }
            if let Some(cd) = cluster_data(&store).await {
                let cluster_uid = cd
                    .cluster
                    .as_ref()
                    .map(|c| c.uid.clone())
                    .unwrap_or_default();
                let ps = cd.db_of_keeper(uid).map(|db| PostgresState {
                    uid: db.uid.clone(),
                    generation: db.generation,
                    listen_address: "127.0.0.1".into(),
                    port: "5432".into(),
                    healthy: true,
                    system_id: "7000000000000000001".into(),
                    timeline_id: 1,
                    xlog_pos: xlog,
                    synchronous_standbys: Some(vec![]),
                    ..Default::default()
                });
                n += 1;
                let info = KeeperInfo {
                    info_uid: format!("{uid}-{n}"),
                    uid: uid.into(),
                    cluster_uid,
                    boot_uuid: format!("boot-{uid}"),
                    postgres_binary_version: PostgresBinaryVersion { maj: 15, min: 0 },
                    postgres_state: ps,
                    ..Default::default()
                };
                let _ = store.put_keeper_info(&info, Duration::from_secs(20)).await;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_cluster_initialises_then_fails_over_when_the_master_keeper_stops() {
    let etcd = EtcdServer::start_async().await.expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let spec = write_spec(
        dir.path(),
        r#"{"initMode":"new","sleepInterval":"1s","failInterval":"3s","convergenceTimeout":"30s"}"#,
    );
    let s = Sentinel::start(&etcd, "c3", dir.path(), "s0", Some(&spec));
    let (store, _) = store_for(&etcd, "c3").await;
    wait_for(Duration::from_secs(60), "clusterdata", async || {
        cluster_data(&store).await
    })
    .await;
    let stops = [CancellationToken::new(), CancellationToken::new()];
    fake_keeper(store.clone(), "k1", 0x300_0000, stops[0].clone());
    fake_keeper(store.clone(), "k2", 0x300_0000, stops[1].clone());

    // Initialised: normal phase, a master and a standby, proxies told the master.
    let cd = wait_for(
        Duration::from_secs(60),
        "a normal cluster with a standby",
        async || {
            cluster_data(&store).await.filter(|cd| {
                let c = cd.cluster.as_ref();
                c.and_then(|c| c.status.phase) == Some(ClusterPhase::Normal)
                    && cd.dbs.len() == 2
                    && cd.dbs.values().all(|db| {
                        db.status.healthy && db.status.current_generation == db.generation
                    })
                    && cd
                        .proxy
                        .as_ref()
                        .is_some_and(|p| !p.spec.master_db_uid.is_empty())
            })
        },
    )
    .await;
    let master = cd.master_db().expect("master").clone();
    let master_keeper = master.spec.as_ref().expect("spec").keeper_uid.clone();
    let (dead, survivor) = if master_keeper == "k1" {
        (0, "k2")
    } else {
        (1, "k1")
    };

    // Measured, not asserted: how often an idle healthy cluster rewrites clusterdata.
    let mut writes = std::collections::BTreeSet::new();
    for _ in 0..50 {
        if let Some(cd) = cluster_data(&store).await {
            writes.insert(cd.change_time.to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "idle: {} distinct clusterdata versions seen over 5 s",
        writes.len()
    );

    // The master's keeper stops publishing: the survivor's DB is elected.
    let stopped = Instant::now();
    stops[dead].cancel();
    let cd = wait_for(
        Duration::from_secs(60),
        "failover to the survivor",
        async || {
            cluster_data(&store).await.filter(|cd| {
                cd.master_db()
                    .and_then(|db| db.spec.as_ref())
                    .is_some_and(|s| s.keeper_uid == survivor)
            })
        },
    )
    .await;
    eprintln!(
        "failover decided {:?} after the master keeper's last publish",
        stopped.elapsed()
    );
    assert_ne!(cd.cluster.as_ref().expect("c").status.master, master.uid);
    let logs = s.logs();
    for line in [
        "master db is failed",
        "trying to find a new master to replace failed master",
        "electing db as the new master",
    ] {
        assert!(logs.contains(line), "sentinel log lacks {line:?}:\n{logs}");
    }
    // The old master is fenced then removed once the new one converged; proxies get the new one.
    wait_for(
        Duration::from_secs(60),
        "old master removed and proxies routed",
        async || {
            cluster_data(&store).await.filter(|cd| {
                !cd.dbs.contains_key(&master.uid)
                    && cd.proxy.as_ref().map(|p| p.spec.master_db_uid.clone())
                        == cd.cluster.as_ref().map(|c| c.status.master.clone())
            })
        },
    )
    .await;
    stops[1 - dead].cancel();
}

#[test]
fn invalid_initial_cluster_spec_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().expect("tmp");
    let spec = write_spec(dir.path(), r#"{"initMode":"existing"}"#);
    let out = Command::new(env!("CARGO_BIN_EXE_stolon-sentinel"))
        .args([
            "--cluster-name",
            "c",
            "--store-backend",
            "etcdv3",
            "--initial-cluster-spec",
        ])
        .arg(&spec)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("existingConfig"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_stolon-sentinel"))
        .args(["--cluster-name", "c", "--store-backend", "etcdv3"])
        .env(
            "STSENTINEL_INITIAL_CLUSTER_SPEC",
            dir.path().join("missing.json"),
        )
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot read initial cluster spec"), "{err}");
}
