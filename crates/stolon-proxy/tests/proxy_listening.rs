//! Stolon's TestProxyListening (docs/architecture.md §11), all eight steps, against a real etcd
//! started by the test and the real `stolon-proxy` binary: the proxy listens only after a
//! successful store read, stops listening when the store is down or hung for `proxyTimeout`,
//! and keeps listening through short outages, a cleared master and `null` clusterdata.

use std::net::TcpStream as StdTcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use stolon_core::Timestamp;
use stolon_core::model::*;
use stolon_store::Store;
use stolon_store::testing::etcd::EtcdServer;

const CLUSTER: &str = "proxylistening";

/// The proxy process, killed on drop.
struct ProxyProc {
    child: Child,
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(
    etcd: &EtcdServer,
    port: u16,
    metrics_port: u16,
    log: &std::path::Path,
) -> Result<ProxyProc> {
    let log = std::fs::File::create(log)?;
    let child = Command::new(env!("CARGO_BIN_EXE_stolon-proxy"))
        .args(etcd.store_flags(CLUSTER))
        // Stolon's test harness uses a 1 s store client timeout.
        .args(["--store-timeout", "1s", "--log-level", "debug"])
        .args(["--listen-address", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--metrics-listen-address",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start stolon-proxy")?;
    Ok(ProxyProc { child })
}

fn listening(port: u16) -> bool {
    StdTcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Polls every 500 ms until `listening(port) == want`, for at most `limit`.
async fn wait_listening(port: u16, want: bool, limit: Duration) -> Result<()> {
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if listening(port) == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("listening != {want} after {limit:?}")
}

/// Checks `listening(port) == want` over the whole of `period`.
async fn keeps_listening(port: u16, want: bool, period: Duration) -> Result<()> {
    let start = tokio::time::Instant::now();
    loop {
        if listening(port) != want {
            bail!("listening changed to {} after {:?}", !want, start.elapsed());
        }
        if start.elapsed() >= period {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Clusterdata with master DB "01" (unhealthy, no address) and `proxy.spec.masterDbUid`.
fn cluster_data(master_db_uid: &str) -> ClusterData {
    let cluster = Cluster {
        uid: "c".into(),
        generation: 1,
        spec: Some(ClusterSpec::new_init(ClusterInitMode::New)),
        status: ClusterStatus {
            phase: Some(ClusterPhase::Normal),
            master: "01".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut cd = ClusterData::new(cluster, Timestamp::zero());
    cd.dbs.insert(
        "01".into(),
        Db {
            uid: "01".into(),
            generation: 1,
            spec: Some(DbSpec {
                keeper_uid: "k1".into(),
                role: Some(DbRole::Master),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    cd.proxy = Some(Proxy {
        generation: 1,
        spec: ProxySpec {
            master_db_uid: master_db_uid.into(),
            enabled_proxies: Vec::new(),
        },
        ..Default::default()
    });
    cd
}

fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = StdTcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_proxy_listening() -> Result<()> {
    let mut etcd = EtcdServer::start_async().await.context("start etcd")?;
    let (store, _election) = stolon_store::connect(&etcd.store_config(CLUSTER)).await?;
    let store: Arc<dyn Store> = store;
    let port = free_port()?;
    let log = etcd.dir().join("proxy.log");
    let result = steps(&mut etcd, store.as_ref(), port, &log).await;
    if result.is_err() {
        eprintln!(
            "--- proxy log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    result
}

async fn steps(
    etcd: &mut EtcdServer,
    store: &dyn Store,
    port: u16,
    log: &std::path::Path,
) -> Result<()> {
    // 1. Store down: the proxy must not listen.
    etcd.stop_async().await;
    let metrics_port = free_port()?;
    let _proxy = start_proxy(etcd, port, metrics_port, log)?;
    keeps_listening(port, false, Duration::from_secs(10))
        .await
        .context("step 1: listening with the store down")?;

    // 2. Store up with clusterdata naming master "01": listens.
    etcd.restart_async().await?;
    store.force_put_cluster_data(&cluster_data("01")).await?;
    wait_listening(port, true, Duration::from_secs(10))
        .await
        .context("step 2: not listening with the store up")?;
    let metrics = http_get(metrics_port, "/metrics")?;
    if !metrics.contains(&format!(
        "stolon_cluster_identifier{{cluster_name=\"{CLUSTER}\",component=\"proxy\"}} 1"
    )) || !metrics.contains("stolon_proxy_listening{listener=\"primary\"} 1")
    {
        bail!("unexpected metrics:\n{metrics}");
    }

    // 3. Store down: stops listening within 2 * proxyTimeout.
    etcd.stop_async().await;
    wait_listening(port, false, Duration::from_secs(30))
        .await
        .context("step 3: still listening with the store down")?;

    // 4. Store back: listens again.
    etcd.restart_async().await?;
    wait_listening(port, true, Duration::from_secs(10))
        .await
        .context("step 4: not listening after the store came back")?;

    // 5. A store outage shorter than proxyTimeout: keeps listening throughout.
    etcd.stop_async().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    etcd.restart_async().await?;
    if !listening(port) {
        bail!("step 5: stopped listening during a short store outage");
    }
    keeps_listening(port, true, Duration::from_secs(10))
        .await
        .context("step 5: stopped listening after a short store outage")?;

    // 6. Master cleared (CAS), then restored: keeps listening.
    let read = store.get_cluster_data().await?;
    store
        .put_cluster_data(&cluster_data(""), read.revision.as_ref())
        .await?;
    keeps_listening(port, true, Duration::from_secs(10))
        .await
        .context("step 6: stopped listening with masterDbUid empty")?;
    let read = store.get_cluster_data().await?;
    store
        .put_cluster_data(&cluster_data("01"), read.revision.as_ref())
        .await?;
    keeps_listening(port, true, Duration::from_secs(2))
        .await
        .context("step 6: stopped listening with masterDbUid restored")?;

    // 7. Clusterdata `null`: still a successful read, keeps listening.
    let null_put = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoints_flag()])
        .args([
            "put",
            &format!("stolon/cluster/{CLUSTER}/clusterdata"),
            "null",
        ])
        .output()
        .context("run etcdctl")?;
    if !null_put.status.success() {
        bail!(
            "etcdctl put null failed: {}",
            String::from_utf8_lossy(&null_put.stderr)
        );
    }
    assert_eq!(store.get_cluster_data().await?.data, None);
    keeps_listening(port, true, Duration::from_secs(10))
        .await
        .context("step 7: stopped listening with null clusterdata")?;

    // 8. A hung store (SIGSTOP): stops listening; SIGCONT: listens again.
    etcd.pause()?;
    let hung = wait_listening(port, false, Duration::from_secs(30)).await;
    etcd.resume()?;
    hung.context("step 8: still listening with the store hung")?;
    wait_listening(port, true, Duration::from_secs(10))
        .await
        .context("step 8: not listening after the store resumed")?;
    Ok(())
}
