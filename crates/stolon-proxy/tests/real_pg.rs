//! The proxy daemon with real PostgreSQL 15 and a real etcd (clusterdata written by the test,
//! no keeper or sentinel): a session through the proxy is closed when the master changes and
//! the next connection reaches the new master; the read-only port lands only on standbys
//! (`pg_is_in_recovery()`), on both of them, and falls back to the master when none is left; a
//! proxy dropped from `enabledProxies` routes nothing.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use stolon_core::Timestamp;
use stolon_core::model::*;
use stolon_pg::testing::{TestDir, free_port, pg_bin_dir};
use stolon_proxy::config::{ListenAddr, ProxyConfig, ReadOnlyConfig, ReadOnlyFallback};
use stolon_proxy::daemon::{RunOptions, run};
use stolon_proxy::engine::Keepalive;
use stolon_store::Store;
use stolon_store::testing::etcd::EtcdServer;
use tokio_util::sync::CancellationToken;

const UID: &str = "realpgproxy";

/// Runs a PostgreSQL tool as the `postgres` OS user (when root).
fn pg_cmd(tool: &str) -> Command {
    let bin = pg_bin_dir().join(tool);
    if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(bin)
            .env("HOME", "/tmp")
            .current_dir("/tmp");
        c
    } else {
        Command::new(bin)
    }
}

fn run_ok(mut c: Command, what: &str) -> Result<()> {
    let out = c.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// One running PostgreSQL instance, stopped (immediate) on drop.
struct Pg {
    data: PathBuf,
    port: u16,
}

impl Drop for Pg {
    fn drop(&mut self) {
        let mut c = pg_cmd("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = c.output();
    }
}

impl Pg {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn configure_and_start(data: PathBuf, port: u16, sockets: &Path) -> Result<Pg> {
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 150\n",
            sockets.display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut f, conf.as_bytes())?;
        let pg = Pg { data, port };
        let mut c = pg_cmd("pg_ctl");
        c.arg("-D")
            .arg(&pg.data)
            .arg("-l")
            .arg(pg.data.join("log"))
            .args(["-w", "-t", "60", "start"]);
        run_ok(c, "pg_ctl start")?;
        Ok(pg)
    }

    fn primary(dir: &TestDir, name: &str) -> Result<Pg> {
        let data = dir.path().join(name);
        let mut c = pg_cmd("initdb");
        c.arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync"]);
        run_ok(c, "initdb")?;
        Pg::configure_and_start(data, free_port(), dir.path())
    }

    fn standby_of(dir: &TestDir, name: &str, primary: &Pg) -> Result<Pg> {
        let data = dir.path().join(name);
        let mut c = pg_cmd("pg_basebackup");
        c.arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-U", "postgres", "-R", "-X", "stream", "-c", "fast"]);
        run_ok(c, "pg_basebackup")?;
        Pg::configure_and_start(data, free_port(), dir.path())
    }
}

fn db(uid: &str, role: DbRole, addr: SocketAddr) -> Db {
    Db {
        uid: uid.into(),
        generation: 1,
        spec: Some(DbSpec {
            keeper_uid: format!("k{uid}"),
            role: Some(role),
            follow_config: (role == DbRole::Standby).then(|| FollowConfig {
                kind: Some(FollowType::Internal),
                db_uid: "m".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: DbStatus {
            healthy: true,
            listen_address: addr.ip().to_string(),
            port: addr.port().to_string(),
            timeline_id: 1,
            xlog_pos: 1000,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn cluster_data(
    master: Option<(&str, SocketAddr)>,
    standbys: &[SocketAddr],
    gen_: i64,
) -> ClusterData {
    let cluster = Cluster {
        uid: "c".into(),
        generation: 1,
        spec: Some(ClusterSpec::new_init(ClusterInitMode::New)),
        status: ClusterStatus {
            phase: Some(ClusterPhase::Normal),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut cd = ClusterData::new(cluster, Timestamp::zero());
    if let Some((uid, addr)) = master {
        cd.dbs.insert(uid.into(), db(uid, DbRole::Master, addr));
    }
    for (i, s) in standbys.iter().enumerate() {
        let uid = format!("s{i}");
        cd.dbs.insert(uid.clone(), db(&uid, DbRole::Standby, *s));
    }
    cd.proxy = Some(Proxy {
        generation: gen_,
        spec: ProxySpec {
            master_db_uid: master.map(|(uid, _)| uid.to_string()).unwrap_or_default(),
            enabled_proxies: vec![UID.into()],
        },
        ..Default::default()
    });
    cd
}

async fn connect(port: u16) -> Result<tokio_postgres::Client> {
    let conn_str =
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=10");
    let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// (server port, in recovery) of a fresh connection through `port`.
async fn whoami(port: u16) -> Result<(u16, bool)> {
    let c = connect(port).await?;
    let row = c
        .query_one(
            "select current_setting('port')::int, pg_is_in_recovery()",
            &[],
        )
        .await?;
    let server_port: i32 = row.get(0);
    Ok((u16::try_from(server_port)?, row.get(1)))
}

/// Polls (bounded) until a fresh connection through `port` reaches `want_port`.
async fn wait_reaches(port: u16, want_port: u16) -> Result<()> {
    let mut last = None;
    for _ in 0..100 {
        match whoami(port).await {
            Ok((p, _)) if p == want_port => return Ok(()),
            other => last = Some(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("never reached port {want_port}; last: {last:?}")
}

/// Waits (up to 10 s) until the proxy's readiness check answers `want`: the status code, a
/// space, and the JSON body.
async fn wait_health(metrics_port: u16, want: &str) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut last = String::new();
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port)).await?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        let code = out.split_whitespace().nth(1).unwrap_or("");
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b.trim());
        last = format!("{code} {body}");
        if last == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("/health: want {want:?}, last {last:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_real_postgres_and_read_only_to_standbys() -> Result<()> {
    let dir = TestDir::new("stolon-proxy-realpg");
    let a = Pg::primary(&dir, "a")?;
    let s1 = Pg::standby_of(&dir, "s1", &a)?;
    let s2 = Pg::standby_of(&dir, "s2", &a)?;
    let b = Pg::primary(&dir, "b")?;

    let etcd = EtcdServer::start_async().await?;
    let (store, _election) = stolon_store::connect(&etcd.store_config("realpg")).await?;
    let store: Arc<dyn Store> = store;
    store
        .force_put_cluster_data(&cluster_data(
            Some(("m", a.addr())),
            &[s1.addr(), s2.addr()],
            1,
        ))
        .await?;

    let (port, ro_port, metrics_port) = (free_port(), free_port(), free_port());
    let listen = |port| ListenAddr {
        host: "127.0.0.1".into(),
        port,
    };
    let cfg = ProxyConfig {
        store: etcd.store_config("realpg"),
        listen: listen(port),
        stop_listening: true,
        keepalive: Keepalive::from_flags(30, 3, 5),
        read_only: Some(ReadOnlyConfig {
            listen: listen(ro_port),
            fallback: ReadOnlyFallback::Primary,
        }),
        log_level: "info".into(),
        log_color: Some(false),
        metrics_listen: Some(format!("127.0.0.1:{metrics_port}")),
    };
    let cancel = CancellationToken::new();
    let daemon = tokio::spawn(run(
        cfg,
        store.clone(),
        RunOptions::new(UID.into()),
        cancel.clone(),
    ));

    // Read-write port: the master.
    wait_reaches(port, a.port).await?;
    let session = connect(port).await?;
    let (p, in_recovery) = {
        let row = session
            .query_one(
                "select current_setting('port')::int, pg_is_in_recovery()",
                &[],
            )
            .await?;
        (row.get::<_, i32>(0), row.get::<_, bool>(1))
    };
    assert_eq!((p, in_recovery), (i32::from(a.port), false));
    wait_health(
        metrics_port,
        &format!("200 {{\"ok\":true,\"primary\":\"{}\"}}", a.addr()),
    )
    .await?;

    // Read-only port: 100 new connections, all on standbys, on both.
    let mut seen = BTreeSet::new();
    for _ in 0..100 {
        let (p, in_recovery) = whoami(ro_port).await?;
        assert!(
            in_recovery,
            "read-only connection landed on port {p}, not a standby"
        );
        seen.insert(p);
    }
    assert_eq!(seen, BTreeSet::from([s1.port, s2.port]));

    // Failover handshake: master cleared (the session is closed), then the new master.
    store
        .force_put_cluster_data(&cluster_data(None, &[], 2))
        .await?;
    let mut closed = false;
    for _ in 0..100 {
        if session.simple_query("select 1").await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "session to the old master still open");
    wait_health(metrics_port, "503 {\"ok\":false,\"primary\":null}").await?;
    store
        .force_put_cluster_data(&cluster_data(Some(("m2", b.addr())), &[], 3))
        .await?;
    wait_reaches(port, b.port).await?;
    wait_health(
        metrics_port,
        &format!("200 {{\"ok\":true,\"primary\":\"{}\"}}", b.addr()),
    )
    .await?;

    // No standby left: the read-only port falls back to the master.
    let (p, in_recovery) = whoami(ro_port).await?;
    assert_eq!((p, in_recovery), (b.port, false));

    // This proxy dropped from enabledProxies: it routes nothing, not even to a live master.
    let mut cd = cluster_data(Some(("m2", b.addr())), &[], 4);
    if let Some(p) = cd.proxy.as_mut() {
        p.spec.enabled_proxies = vec!["another-proxy".into()];
    }
    store.force_put_cluster_data(&cd).await?;
    let mut refused = false;
    for _ in 0..100 {
        if connect(port).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "a proxy not in enabledProxies still routes to the master"
    );
    for _ in 0..5 {
        assert!(
            connect(port).await.is_err(),
            "a proxy not in enabledProxies routed a new connection"
        );
    }
    wait_health(metrics_port, "503 {\"ok\":false,\"primary\":null}").await?;

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), daemon).await???;
    Ok(())
}
