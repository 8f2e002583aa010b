//! Failsafe mode in the proxy daemon (docs/failsafe.md), against the in-memory store, a tagged
//! TCP echo server standing for the master and an in-test keeper answering authenticated
//! confirmation requests over loopback HTTP: with failsafe mode on and the keeper confirming,
//! a store outage does not fence the proxy; once the keeper refuses or goes silent, the proxy
//! fences; with failsafe mode off (or without the secret) it fences at `proxyTimeout` as always.
//! Also: a bad `--failsafe-secret-file` is one line and exit status 1, without the secret.

mod common;

use common::Seen;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use stolon_core::GoDuration;
use stolon_core::Timestamp;
use stolon_core::failsafe::wire::{AnswerMsg, ConfirmRequestMsg, Kind, Secret};
use stolon_core::failsafe::{Refusal, Timers};
use stolon_core::model::*;
use stolon_failsafe::{HttpTransport, Transport};
use stolon_proxy::config::{ListenAddr, ProxyConfig};
use stolon_proxy::daemon::{RunOptions, run};
use stolon_proxy::engine::Keepalive;
use stolon_store::{MemStore, Store, StoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const UID: &str = "proxy01";
/// The spec's `proxyTimeout`: confirmations of at most 2 s, asked for every 0.5 s.
const PROXY_TIMEOUT: Duration = Duration::from_secs(4);
/// Generous bound on anything expected to happen.
const LIMIT: Duration = Duration::from_secs(30);

fn secret() -> Secret {
    Secret::from_file_contents(b"the cluster's failsafe secret\n").expect("a valid secret")
}

/// How the in-test keeper answers.
const GRANT: u8 = 0;
const REFUSE: u8 = 1;
const SILENT: u8 = 2;

/// A keeper's failsafe endpoint: answers confirmation requests for DB "m" according to `mode`.
struct Keeper {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    asked: Arc<AtomicU64>,
}

impl Keeper {
    async fn start() -> Result<Keeper> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(AtomicU8::new(GRANT));
        let asked = Arc::new(AtomicU64::new(0));
        let (m, a) = (mode.clone(), asked.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (m, a) = (m.clone(), a.clone());
                tokio::spawn(async move {
                    let _ = answer_one(sock, &m, &a).await;
                });
            }
        });
        Ok(Keeper { addr, mode, asked })
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn asked(&self) -> u64 {
        self.asked.load(Ordering::SeqCst)
    }
}

/// Reads one HTTP request, answers it as the keeper would (or not at all when silent).
async fn answer_one(mut sock: TcpStream, mode: &AtomicU8, asked: &AtomicU64) -> Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let n = tokio::time::timeout(LIMIT, sock.read(&mut chunk)).await??;
        if n == 0 || buf.len() > 64 * 1024 {
            bail!("request cut short");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .context("no content-length")?;
            break (i + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = tokio::time::timeout(LIMIT, sock.read(&mut chunk)).await??;
        if n == 0 {
            bail!("body cut short");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..head_end + length];
    let mode = mode.load(Ordering::SeqCst);
    if mode == SILENT {
        // Hold the connection open without answering; the proxy's deadline ends it.
        tokio::time::sleep(LIMIT).await;
        return Ok(());
    }
    let env = stolon_failsafe::answer(
        &secret(),
        Kind::ConfirmRequest,
        Kind::ConfirmAnswer,
        body,
        |req: ConfirmRequestMsg| {
            asked.fetch_add(1, Ordering::SeqCst);
            if mode == GRANT && req.master_db == "m" {
                AnswerMsg {
                    granted_ms: Some(
                        Timers::with_ack_lifetime(PROXY_TIMEOUT)
                            .confirm_lifetime
                            .as_millis() as u64,
                    ),
                    refused: None,
                    refusal: None,
                }
            } else {
                AnswerMsg::from_decision(&Err(Refusal::Elected))
            }
        },
    )?;
    let json = serde_json::to_vec(&env)?;
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        json.len()
    )
    .into_bytes();
    out.extend_from_slice(&json);
    sock.write_all(&out).await?;
    sock.shutdown().await?;
    Ok(())
}

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

async fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

fn config(port: u16, metrics_port: u16) -> ProxyConfig {
    ProxyConfig {
        store: StoreConfig::in_memory("test"),
        listen: ListenAddr {
            host: "127.0.0.1".into(),
            port,
        },
        stop_listening: true,
        keepalive: Keepalive::default(),
        read_only: None,
        log_level: "debug".into(),
        log_color: Some(false),
        metrics_listen: Some(format!("127.0.0.1:{metrics_port}")),
    }
}

/// Clusterdata naming DB "m" at `master` as master, its keeper answering failsafe requests at
/// `keeper`, this proxy enabled; failsafe mode as given.
fn cluster_data(master: SocketAddr, keeper: SocketAddr, failsafe: bool) -> ClusterData {
    let mut spec = ClusterSpec::new_init(ClusterInitMode::New);
    spec.proxy_check_interval = Some(GoDuration::from_std(Duration::from_millis(200)));
    spec.proxy_timeout = Some(GoDuration::from_std(PROXY_TIMEOUT));
    spec.failsafe_mode = Some(failsafe);
    let cluster = Cluster {
        uid: "c".into(),
        generation: 1,
        spec: Some(spec),
        status: ClusterStatus {
            phase: Some(ClusterPhase::Normal),
            master: "m".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut cd = ClusterData::new(cluster, Timestamp::zero());
    cd.dbs.insert(
        "m".into(),
        Db {
            uid: "m".into(),
            generation: 1,
            spec: Some(DbSpec {
                keeper_uid: "km".into(),
                role: Some(DbRole::Master),
                ..Default::default()
            }),
            status: DbStatus {
                healthy: true,
                listen_address: master.ip().to_string(),
                port: master.port().to_string(),
                failsafe_address: keeper.to_string(),
                timeline_id: 1,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    cd.proxy = Some(Proxy {
        generation: 1,
        spec: ProxySpec {
            master_db_uid: "m".into(),
            enabled_proxies: vec![UID.into()],
        },
        ..Default::default()
    });
    cd
}

struct Running {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), stolon_proxy::daemon::RunError>>,
    port: u16,
    metrics_port: u16,
}

impl Running {
    async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        tokio::time::timeout(LIMIT, self.task)
            .await
            .context("daemon did not stop")???;
        Ok(())
    }

    async fn metrics(&self) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut out = String::new();
        tokio::time::timeout(LIMIT, s.read_to_string(&mut out)).await??;
        Ok(out)
    }
}

/// Starts the daemon on `store`, able to ask for confirmations when `with_secret`.
async fn start(store: Arc<MemStore>, with_secret: bool) -> Result<Running> {
    let (port, metrics_port) = (free_port().await?, free_port().await?);
    let cancel = CancellationToken::new();
    let failsafe: Option<Arc<dyn Transport>> =
        with_secret.then(|| Arc::new(HttpTransport::new(secret())) as Arc<dyn Transport>);
    let opts = RunOptions {
        initial_check_interval: Duration::from_millis(200),
        initial_proxy_timeout: PROXY_TIMEOUT,
        failsafe,
        ..RunOptions::new(UID.into())
    };
    let task = tokio::spawn(run(config(port, metrics_port), store, opts, cancel.clone()));
    Ok(Running {
        cancel,
        task,
        port,
        metrics_port,
    })
}

async fn probe(port: u16) -> Result<Seen> {
    common::probe(port, LIMIT).await
}

/// Polls until `probe(port)` sees `want`, for at most [`LIMIT`].
async fn wait_seen(port: u16, want: Seen) -> Result<()> {
    common::wait_seen(port, want, LIMIT).await
}

/// A client session through the proxy to the master "A".
async fn session(port: u16) -> Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut tag = [0u8; 1];
    tokio::time::timeout(LIMIT, s.read_exact(&mut tag)).await??;
    if tag[0] != b'A' {
        bail!("session reached {:?}", tag[0] as char);
    }
    Ok(s)
}

/// Whether `s` still carries data both ways (one echo round trip).
async fn alive(s: &mut TcpStream) -> bool {
    if s.write_all(b"x").await.is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(tokio::time::timeout(LIMIT, s.read(&mut b)).await, Ok(Ok(1)))
}

/// Waits until `s` is closed by the proxy, for at most [`LIMIT`].
async fn closed(s: &mut TcpStream) -> Result<()> {
    let mut b = [0u8; 16];
    let start = tokio::time::Instant::now();
    while start.elapsed() < LIMIT {
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    bail!("session still open after {LIMIT:?}")
}

/// Checks, over `period`, that the session stays alive and new connections reach the master.
async fn keeps_routing(port: u16, s: &mut TcpStream, period: Duration) -> Result<()> {
    let start = tokio::time::Instant::now();
    while start.elapsed() < period {
        if !alive(s).await {
            bail!("session closed after {:?}", start.elapsed());
        }
        let seen = probe(port).await?;
        if seen != Seen::Tag(b'A') {
            bail!("a new connection saw {seen:?} after {:?}", start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Routed to the master with the store up, a session open.
async fn routed(failsafe: bool, with_secret: bool) -> Result<(Arc<MemStore>, Keeper, Running)> {
    let master = tagged_echo(b'A').await?;
    let keeper = Keeper::start().await?;
    let store = Arc::new(MemStore::new("test"));
    store
        .force_put_cluster_data(&cluster_data(master, keeper.addr, failsafe))
        .await?;
    let p = start(store.clone(), with_secret).await?;
    wait_seen(p.port, Seen::Tag(b'A')).await?;
    Ok((store, keeper, p))
}

#[tokio::test]
async fn with_confirmations_a_store_outage_keeps_sessions_and_routes_new_ones() -> Result<()> {
    let (store, keeper, p) = routed(true, true).await?;
    let mut s = session(p.port).await?;
    store.kv().set_unavailable(true);
    // Three times proxyTimeout: without failsafe mode it would have fenced twice over.
    keeps_routing(p.port, &mut s, PROXY_TIMEOUT * 3).await?;
    assert!(keeper.asked() > 0, "the keeper was never asked");
    eprintln!(
        "confirmation requests over {:?} of store outage: {}",
        PROXY_TIMEOUT * 3,
        keeper.asked()
    );
    let metrics = p.metrics().await?;
    assert!(
        metrics.contains("stolon_proxy_failsafe_routing 1\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("stolon_proxy_failsafe_confirmations_total{result=\"granted\"} 0\n"),
        "{metrics}"
    );
    // The store comes back: normal operation, the session is untouched.
    store.kv().set_unavailable(false);
    let start = tokio::time::Instant::now();
    while p
        .metrics()
        .await?
        .contains("stolon_proxy_failsafe_routing 1\n")
    {
        if start.elapsed() > LIMIT {
            bail!("still routing on confirmations with the store back");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        alive(&mut s).await,
        "session closed when the store came back"
    );
    p.stop().await
}

/// Routes on confirmations through a store outage, then the keeper answers `mode`: the proxy
/// fences (sessions closed, listener closed).
async fn fences_once_the_keeper(mode: u8) -> Result<()> {
    let (store, keeper, p) = routed(true, true).await?;
    let mut s = session(p.port).await?;
    store.kv().set_unavailable(true);
    keeps_routing(p.port, &mut s, PROXY_TIMEOUT + Duration::from_secs(2)).await?;
    keeper.set(mode);
    let since = tokio::time::Instant::now();
    // Within proxyTimeout plus one confirmation lifetime, with a generous margin.
    closed(&mut s).await?;
    eprintln!(
        "keeper mode {mode}: session closed {:?} after the change",
        since.elapsed()
    );
    wait_seen(p.port, Seen::Refused).await?;
    assert!(
        p.metrics()
            .await?
            .contains("stolon_proxy_failsafe_routing 0\n")
    );
    p.stop().await
}

#[tokio::test]
async fn a_refusing_keeper_makes_the_proxy_fence() -> Result<()> {
    fences_once_the_keeper(REFUSE).await
}

#[tokio::test]
async fn a_silent_keeper_makes_the_proxy_fence() -> Result<()> {
    fences_once_the_keeper(SILENT).await
}

/// With failsafe mode off in the clusterdata, or without the secret, the proxy fences at
/// `proxyTimeout` as always, and never asks the keeper.
async fn fences_as_without_failsafe(failsafe: bool, with_secret: bool) -> Result<()> {
    let (store, keeper, p) = routed(failsafe, with_secret).await?;
    let mut s = session(p.port).await?;
    store.kv().set_unavailable(true);
    let since = tokio::time::Instant::now();
    closed(&mut s).await?;
    eprintln!(
        "failsafe {failsafe}, secret {with_secret}: session closed {:?} after the store went down",
        since.elapsed()
    );
    wait_seen(p.port, Seen::Refused).await?;
    assert_eq!(keeper.asked(), 0, "the keeper was asked");
    p.stop().await
}

#[tokio::test]
async fn failsafe_off_fences_at_proxy_timeout() -> Result<()> {
    fences_as_without_failsafe(false, true).await
}

#[tokio::test]
async fn without_the_secret_the_proxy_fences_at_proxy_timeout() -> Result<()> {
    fences_as_without_failsafe(true, false).await
}

#[test]
fn a_bad_failsafe_secret_file_is_one_line_and_exit_status_1() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("stolon-proxy-failsafe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let short = dir.join("short");
    std::fs::write(&short, "tooshort-secret\n")?;
    let missing = dir.join("missing");
    for (file, says) in [
        (&short, "must be at least 16"),
        (&missing, "No such file or directory"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stolon-proxy"))
            .args(["--cluster-name", "c", "--store-backend", "etcdv3"])
            .arg("--failsafe-secret-file")
            .arg(file)
            .env_remove("STPROXY_FAILSAFE_SECRET_FILE")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let text = format!("{stdout}{stderr}");
        assert_eq!(text.trim_end().lines().count(), 1, "{text}");
        assert!(text.contains(says), "{text}");
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(
            !text.contains("tooshort-secret"),
            "the secret leaked: {text}"
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
