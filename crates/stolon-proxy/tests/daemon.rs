//! The proxy daemon against the in-memory store and tagged TCP echo servers on 127.0.0.1:
//! listening after the first read, routing only when enabled, re-routing on a master change,
//! failing closed on store loss, `null` clusterdata, read-only routing.

mod common;

use common::Seen;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use stolon_core::GoDuration;
use stolon_core::Timestamp;
use stolon_core::model::*;
use stolon_proxy::config::{ListenAddr, ProxyConfig, ReadOnlyConfig, ReadOnlyFallback};
use stolon_proxy::daemon::{RunOptions, run};
use stolon_proxy::engine::Keepalive;
use stolon_store::{MemStore, Store, StoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
const UID: &str = "proxy01";

async fn tagged_echo(tag: u8) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                if sock.write_all(&[tag]).await.is_err() {
                    return;
                }
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// A port free right now (the proxy must be able to re-bind the same port after closing it).
async fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

fn config(port: u16, read_only: Option<(u16, ReadOnlyFallback)>) -> ProxyConfig {
    let listen = |port| ListenAddr {
        host: "127.0.0.1".into(),
        port,
    };
    ProxyConfig {
        store: StoreConfig::in_memory("test"),
        listen: listen(port),
        stop_listening: true,
        keepalive: Keepalive::default(),
        read_only: read_only.map(|(port, fallback)| ReadOnlyConfig {
            listen: listen(port),
            fallback,
        }),
        log_level: "debug".into(),
        log_color: Some(false),
        metrics_listen: None,
    }
}

fn db(uid: &str, role: DbRole, addr: SocketAddr, xlog: u64) -> Db {
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
            xlog_pos: xlog,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Clusterdata naming `master` (db uid "m" or "m2") with the given standbys; short proxy timings.
fn cluster_data(
    master_uid: &str,
    master: SocketAddr,
    standbys: &[SocketAddr],
    enabled: &[&str],
    generation: i64,
) -> ClusterData {
    let mut spec = ClusterSpec::new_init(ClusterInitMode::New);
    spec.proxy_check_interval = Some(GoDuration::from_std(Duration::from_millis(200)));
    spec.proxy_timeout = Some(GoDuration::from_std(Duration::from_secs(1)));
    let cluster = Cluster {
        uid: "c".into(),
        generation: 1,
        spec: Some(spec),
        status: ClusterStatus {
            phase: Some(ClusterPhase::Normal),
            master: master_uid.into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut cd = ClusterData::new(cluster, Timestamp::zero());
    cd.dbs.insert(
        master_uid.into(),
        db(master_uid, DbRole::Master, master, 1_000_000),
    );
    for (i, s) in standbys.iter().enumerate() {
        let uid = format!("s{i}");
        cd.dbs
            .insert(uid.clone(), db(&uid, DbRole::Standby, *s, 1_000_000));
    }
    cd.proxy = Some(Proxy {
        generation,
        spec: ProxySpec {
            master_db_uid: master_uid.into(),
            enabled_proxies: enabled.iter().map(|s| s.to_string()).collect(),
        },
        ..Default::default()
    });
    cd
}

struct Running {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), stolon_proxy::daemon::RunError>>,
}

impl Running {
    async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .context("daemon did not stop")???;
        Ok(())
    }
}

fn start(cfg: ProxyConfig, store: Arc<MemStore>) -> Running {
    let cancel = CancellationToken::new();
    let opts = RunOptions {
        uid: UID.into(),
        initial_check_interval: Duration::from_millis(200),
        initial_proxy_timeout: Duration::from_secs(1),
        failsafe: None,
    };
    let task = tokio::spawn(run(cfg, store, opts, cancel.clone()));
    Running { cancel, task }
}

async fn probe(port: u16) -> Result<Seen> {
    common::probe(port, WAIT).await
}

/// Polls until `probe(port)` sees `want`, for at most [`WAIT`].
async fn wait_seen(port: u16, want: Seen) -> Result<()> {
    common::wait_seen(port, want, WAIT).await
}

/// Asserts `probe(port)` never sees `Refused` over about a second.
async fn stays_listening(port: u16) -> Result<()> {
    for _ in 0..10 {
        if probe(port).await? == Seen::Refused {
            bail!("stopped listening");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn proxy_generation(store: &MemStore) -> Result<Option<i64>> {
    Ok(store
        .get_proxies_info()
        .await?
        .get(UID)
        .map(|i| i.generation))
}

#[tokio::test]
async fn listens_after_first_read_and_routes_only_when_enabled() -> Result<()> {
    let a = tagged_echo(b'A').await?;
    let port = free_port().await?;
    let store = Arc::new(MemStore::new("test"));
    store.kv().set_unavailable(true);
    let p = start(config(port, None), store.clone());

    // Store down: never listens.
    for _ in 0..5 {
        assert_eq!(probe(port).await?, Seen::Refused);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Store up, no clusterdata: listens, routes nothing.
    store.kv().set_unavailable(false);
    wait_seen(port, Seen::Closed).await?;

    // Not enabled: routes nothing but publishes its generation (so the sentinel can enable it).
    store
        .force_put_cluster_data(&cluster_data("m", a, &[], &[], 3))
        .await?;
    wait_seen(port, Seen::Closed).await?;
    for _ in 0..100 {
        if proxy_generation(&store).await? == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(proxy_generation(&store).await?, Some(3));
    let info = store.get_proxies_info().await?;
    assert_eq!(info[UID].proxy_timeout, 1_000_000_000);

    // Enabled: routes to the master.
    store
        .force_put_cluster_data(&cluster_data("m", a, &[], &[UID], 3))
        .await?;
    wait_seen(port, Seen::Tag(b'A')).await?;

    // Our own ProxyInfo writes wake the watch; they must not cause a write loop. At a 200 ms
    // check interval a second costs about a dozen operations; a loop would cost thousands.
    let before = store.kv().op_count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ops = store.kv().op_count() - before;
    assert!(
        ops < 200,
        "{ops} store operations in one second: check loop spinning"
    );

    p.stop().await?;
    assert_eq!(
        probe(port).await?,
        Seen::Refused,
        "listener left open after stop"
    );
    Ok(())
}

#[tokio::test]
async fn master_change_closes_sessions_and_reroutes() -> Result<()> {
    let a = tagged_echo(b'A').await?;
    let b = tagged_echo(b'B').await?;
    let port = free_port().await?;
    let store = Arc::new(MemStore::new("test"));
    store
        .force_put_cluster_data(&cluster_data("m", a, &[], &[UID], 1))
        .await?;
    let p = start(config(port, None), store.clone());
    wait_seen(port, Seen::Tag(b'A')).await?;

    let mut session = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut tag = [0u8; 1];
    tokio::time::timeout(WAIT, session.read_exact(&mut tag)).await??;
    assert_eq!(tag[0], b'A');

    // Failover handshake step 1: master cleared, generation bumped.
    let mut cleared = cluster_data("m", a, &[], &[UID], 2);
    cleared
        .proxy
        .as_mut()
        .expect("proxy object")
        .spec
        .master_db_uid
        .clear();
    store.force_put_cluster_data(&cleared).await?;
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(WAIT, session.read(&mut buf))
        .await
        .context("session not closed")?
        .unwrap_or(0);
    assert_eq!(n, 0, "session still open after the master was cleared");
    wait_seen(port, Seen::Closed).await?;
    for _ in 0..100 {
        if proxy_generation(&store).await? == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        proxy_generation(&store).await?,
        Some(2),
        "generation acknowledged"
    );

    // Step 2: the new master.
    store
        .force_put_cluster_data(&cluster_data("m2", b, &[], &[UID], 3))
        .await?;
    wait_seen(port, Seen::Tag(b'B')).await?;
    p.stop().await
}

#[tokio::test]
async fn store_loss_closes_everything_and_stops_listening() -> Result<()> {
    let a = tagged_echo(b'A').await?;
    let port = free_port().await?;
    let store = Arc::new(MemStore::new("test"));
    store
        .force_put_cluster_data(&cluster_data("m", a, &[], &[UID], 1))
        .await?;
    let p = start(config(port, None), store.clone());
    wait_seen(port, Seen::Tag(b'A')).await?;
    let mut session = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut tag = [0u8; 1];
    tokio::time::timeout(WAIT, session.read_exact(&mut tag)).await??;

    store.kv().set_unavailable(true);
    // proxyTimeout is 1 s here: the session is closed and the port freed well within WAIT.
    let n = tokio::time::timeout(WAIT, session.read(&mut tag))
        .await
        .context("session not closed on timeout")?
        .unwrap_or(0);
    assert_eq!(n, 0);
    wait_seen(port, Seen::Refused).await?;

    store.kv().set_unavailable(false);
    wait_seen(port, Seen::Tag(b'A')).await?;
    p.stop().await
}

#[tokio::test]
async fn null_clusterdata_keeps_listening_and_routes_nothing() -> Result<()> {
    let a = tagged_echo(b'A').await?;
    let port = free_port().await?;
    let store = Arc::new(MemStore::new("test"));
    store
        .force_put_cluster_data(&cluster_data("m", a, &[], &[UID], 1))
        .await?;
    let p = start(config(port, None), store.clone());
    wait_seen(port, Seen::Tag(b'A')).await?;

    let key = store.layout().cluster_data();
    store.kv().raw_put(&key, b"null");
    wait_seen(port, Seen::Closed).await?;
    // Longer than the 1 s proxyTimeout of the last usable spec: reads keep succeeding.
    for _ in 0..2 {
        stays_listening(port).await?;
    }

    // Undecodable clusterdata fails closed at once (and the timeout then stops listening).
    store
        .force_put_cluster_data(&cluster_data("m", a, &[], &[UID], 1))
        .await?;
    wait_seen(port, Seen::Tag(b'A')).await?;
    store.kv().raw_put(&key, b"{not json");
    wait_seen(port, Seen::Refused).await?;
    p.stop().await
}

#[tokio::test]
async fn read_only_port_spreads_over_standbys_with_fallback() -> Result<()> {
    let m = tagged_echo(b'M').await?;
    let s1 = tagged_echo(b'1').await?;
    let s2 = tagged_echo(b'2').await?;
    let port = free_port().await?;
    let ro_port = free_port().await?;
    let store = Arc::new(MemStore::new("test"));
    store
        .force_put_cluster_data(&cluster_data("m", m, &[s1, s2], &[UID], 1))
        .await?;
    let p = start(
        config(port, Some((ro_port, ReadOnlyFallback::Primary))),
        store.clone(),
    );
    wait_seen(port, Seen::Tag(b'M')).await?;

    let (mut n1, mut n2) = (0, 0);
    for _ in 0..20 {
        match probe(ro_port).await? {
            Seen::Tag(b'1') => n1 += 1,
            Seen::Tag(b'2') => n2 += 1,
            other => bail!("read-only connection went to {other:?}"),
        }
    }
    assert!(n1 > 0 && n2 > 0, "not spread: {n1} / {n2}");

    // No standby left: falls back to the primary.
    store
        .force_put_cluster_data(&cluster_data("m", m, &[], &[UID], 1))
        .await?;
    wait_seen(ro_port, Seen::Tag(b'M')).await?;
    p.stop().await?;

    // With the refuse policy, nothing is served.
    let store = Arc::new(MemStore::new("test"));
    store
        .force_put_cluster_data(&cluster_data("m", m, &[], &[UID], 1))
        .await?;
    let p = start(
        config(port, Some((ro_port, ReadOnlyFallback::Refuse))),
        store.clone(),
    );
    wait_seen(port, Seen::Tag(b'M')).await?;
    wait_seen(ro_port, Seen::Closed).await?;
    p.stop().await
}

#[tokio::test]
async fn frequent_unrelated_changes_do_not_starve_the_resync() -> Result<()> {
    let a = tagged_echo(b'A').await?;
    let port = free_port().await?;
    let store = Arc::new(MemStore::new("test"));
    store
        .force_put_cluster_data(&cluster_data("m", a, &[], &[UID], 1))
        .await?;
    let p = start(config(port, None), store.clone());
    wait_seen(port, Seen::Tag(b'A')).await?;

    // A keeper publishing every 50 ms for 3 s, three times the 1 s proxyTimeout: every
    // wake-up finds clusterdata unchanged, and the periodic resync must still reset the timeout.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let info = KeeperInfo {
                uid: "k1".into(),
                ..Default::default()
            };
            for _ in 0..60 {
                let _ = store.put_keeper_info(&info, Duration::from_secs(20)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    for _ in 0..3 {
        stays_listening(port).await?;
    }
    writer.await?;
    assert_eq!(probe(port).await?, Seen::Tag(b'A'));
    p.stop().await
}
