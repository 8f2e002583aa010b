//! The proxy daemon with real PostgreSQL 15 and a real etcd (clusterdata written by the test,
//! no keeper or sentinel): a session through the proxy is closed when the master changes and
//! the next connection reaches the new master; the read-only port lands only on standbys
//! (`pg_is_in_recovery()`), on both of them, and falls back to the master when none is left; a
//! proxy dropped from `enabledProxies` routes nothing. Then the forwarding engine alone between
//! two SCRAM servers and a real client, whose traffic a relay stops at chosen points of its
//! startup: a startup the old server has not answered is replayed to the new one while the
//! engine holds; one in the middle of its SCRAM exchange finishes on the old server and is then
//! closed.

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
/// The password of the SCRAM servers (a test value).
const PASSWORD: &str = "switch-test-pw";

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

    /// A primary whose `postgres` user authenticates with SCRAM and [`PASSWORD`].
    fn scram_primary(dir: &TestDir, name: &str) -> Result<Pg> {
        let data = dir.path().join(name);
        let pwfile = dir.path().join(format!("{name}.pw"));
        std::fs::write(&pwfile, PASSWORD)?;
        std::fs::set_permissions(&pwfile, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        let mut c = pg_cmd("initdb");
        c.arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()));
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

/// A relay between a real client and the proxy that stops the client's startup at a chosen
/// point: it passes at most `client_bytes` bytes of the client's (then waits for `release`), and
/// the server's bytes up to the end of its first message only, with the client's first answer
/// (then waits for `release`). `reached` fires when the relay has stopped.
async fn gate_relay(
    proxy: SocketAddr,
    client_bytes: Option<usize>,
    stop_after_first_answer: bool,
) -> Result<(
    u16,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Sender<()>,
)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (reached_tx, reached) = tokio::sync::oneshot::channel::<()>();
    let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let relay = async {
            let (client, _) = listener.accept().await?;
            let upstream = tokio::net::TcpStream::connect(proxy).await?;
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            let mut buf = vec![0u8; 16 * 1024];
            if let Some(n) = client_bytes {
                // The first `n` bytes of the client, then nothing until released.
                let mut first = vec![0u8; n];
                cr.read_exact(&mut first).await?;
                uw.write_all(&first).await?;
                let _ = reached_tx.send(());
                let _ = release_rx.await;
            } else if stop_after_first_answer {
                // The StartupMessage, the server's first message, the client's answer to it;
                // then nothing more from the server until released.
                let mut len = [0u8; 4];
                cr.read_exact(&mut len).await?;
                let mut startup = len.to_vec();
                startup.resize(u32::from_be_bytes(len) as usize, 0);
                cr.read_exact(&mut startup[4..]).await?;
                uw.write_all(&startup).await?;
                let mut head = [0u8; 5];
                ur.read_exact(&mut head).await?;
                let mut first = head.to_vec();
                first.resize(
                    1 + u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize,
                    0,
                );
                ur.read_exact(&mut first[5..]).await?;
                cw.write_all(&first).await?;
                let n = cr.read(&mut buf).await?;
                uw.write_all(&buf[..n]).await?;
                let _ = reached_tx.send(());
                let _ = release_rx.await;
            }
            // Either side ending ends the relay (both sockets closed).
            tokio::select! {
                _ = tokio::io::copy(&mut cr, &mut uw) => {}
                _ = tokio::io::copy(&mut ur, &mut cw) => {}
            }
            anyhow::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(60), relay).await;
    });
    Ok((port, reached, release))
}

/// A SCRAM client of `port`, connecting in the background; the connection's result.
fn scram_connect(
    port: u16,
) -> tokio::task::JoinHandle<Result<tokio_postgres::Client, tokio_postgres::Error>> {
    tokio::spawn(async move {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(port)
            .user("postgres")
            .dbname("postgres")
            .password(PASSWORD)
            .ssl_mode(tokio_postgres::config::SslMode::Disable)
            .connect_timeout(Duration::from_secs(30));
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    })
}

async fn server_port(c: &tokio_postgres::Client) -> Result<u16> {
    let row = c
        .query_one("select current_setting('port')::int", &[])
        .await?;
    Ok(u16::try_from(row.get::<_, i32>(0))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_holds_an_unanswered_startup_and_finishes_an_authenticating_one() -> Result<()> {
    use stolon_proxy::engine::{EngineConfig, Forwarder};
    let dir = TestDir::new("stolon-proxy-realpg-hold");
    let old = Pg::scram_primary(&dir, "old")?;
    let new = Pg::scram_primary(&dir, "new")?;
    let fwd = Forwarder::new("primary", EngineConfig::default());
    fwd.set_destination(Some(old.addr()));
    let proxy = fwd
        .start_listening(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await?;
    let wait = Duration::from_secs(30);

    // A: 5 bytes of the StartupMessage went to the old server, which waits for the rest.
    let (relay, reached, release) = gate_relay(proxy, Some(5), false).await?;
    let a = scram_connect(relay);
    tokio::time::timeout(wait, reached)
        .await
        .context("A: relay never stopped")??;
    // Give the proxy a moment to pass those bytes on (the test holds either way).
    tokio::time::sleep(Duration::from_millis(200)).await;
    fwd.set_hold(Some(wait));
    fwd.set_destination(None);
    for _ in 0..200 {
        if fwd.stats().held_now == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fwd.stats().held_now, 1, "the connection was not held");
    fwd.set_destination(Some(new.addr()));
    fwd.set_hold(None);
    let _ = release.send(());
    let a = tokio::time::timeout(wait, a)
        .await
        .context("A: connect timed out")???;
    assert_eq!(
        server_port(&a).await?,
        new.port,
        "replayed to the new server"
    );
    assert_eq!(fwd.stats().startups_replayed, 1);
    assert_eq!(fwd.stats().closed_by_route_change, 0);

    // B: in the middle of SCRAM with the (now) old server `new`; the switch goes to `old`.
    let (relay, reached, release) = gate_relay(proxy, None, true).await?;
    let b = scram_connect(relay);
    tokio::time::timeout(wait, reached)
        .await
        .context("B: relay never stopped")??;
    fwd.set_hold(Some(wait));
    fwd.set_destination(None);
    fwd.set_destination(Some(old.addr()));
    fwd.set_hold(None);
    let _ = release.send(());
    // The connection attempt succeeds (authenticated by the server it started with)...
    let b = tokio::time::timeout(wait, b)
        .await
        .context("B: connect timed out")???;
    // ...and the connection is then closed: its first query fails.
    assert!(
        tokio::time::timeout(wait, b.simple_query("select 1"))
            .await?
            .is_err(),
        "the connection to the withdrawn server stayed open"
    );
    let st = fwd.stats();
    assert_eq!(
        st.startups_replayed, 1,
        "an authenticating startup was replayed"
    );
    // `a` (established on `new`) and `b`. `b`'s failed query proves only its own close: `a`'s
    // is counted by its own task, which may not have run yet.
    let deadline = tokio::time::Instant::now() + wait;
    while fwd.stats().closed_by_route_change < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(fwd.stats().closed_by_route_change, 2);
    // New connections go to the new destination.
    let c = tokio::time::timeout(wait, scram_connect(proxy.port())).await???;
    assert_eq!(server_port(&c).await?, old.port);
    fwd.shutdown().await;
    Ok(())
}
