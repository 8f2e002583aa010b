//! Failsafe mode on real keepers (docs/failsafe.md), over real HTTP on their listeners: the
//! routes refuse requests not made with the cluster's secret; the master's keeper confirms only
//! once every other keeper acknowledged it; a standby that acknowledged and is then elected
//! waits for its promise before it promotes. The tests play the sentinel (they write the
//! clusterdata) and, where needed, the master's keeper or a peer keeper.

mod common;

use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use common::*;
use stolon_core::GoDuration;
use stolon_core::failsafe::wire::{AckRequestMsg, AnswerMsg, ConfirmRequestMsg, Kind, Secret};
use stolon_core::model::{ClusterSpec, DbInitMode, DbRole};
use stolon_failsafe::{CallError, HttpTransport, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(60);
const SECRET: &str = "the failsafe secret of this test cluster";
const REQUEST: Duration = Duration::from_secs(10);
/// The acknowledgement lifetime of [`failsafe_spec`]: its `proxyTimeout`.
const LIFETIME: Duration = Duration::from_secs(LIFETIME_SECS as u64);
const LIFETIME_SECS: i64 = 20;

fn secret(s: &str) -> Secret {
    Secret::from_file_contents(s.as_bytes()).expect("a valid secret")
}

/// The tests' cluster spec with failsafe mode on and a 20 s acknowledgement lifetime.
fn failsafe_spec() -> ClusterSpec {
    let mut s = cluster_spec();
    s.failsafe_mode = Some(true);
    s.proxy_timeout = Some(GoDuration::from_secs(LIFETIME_SECS));
    s.proxy_check_interval = Some(GoDuration::from_secs(2));
    s.fail_interval = Some(GoDuration::from_secs(LIFETIME_SECS));
    s
}

fn failsafe_args(w: &World, http_port: u16) -> Vec<String> {
    let file = write_secret(w, "failsafe", SECRET);
    vec![
        format!("--failsafe-secret-file={}", file.display()),
        format!("--metrics-listen-address=127.0.0.1:{http_port}"),
    ]
}

/// One raw HTTP POST; the status.
async fn raw_post(addr: &str, path: &str, body: &[u8]) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).await.ok()?;
    let mut answer = Vec::new();
    s.take(64 * 1024).read_to_end(&mut answer).await.ok()?;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn ack_req(master_db: &str, master_keeper: &str) -> AckRequestMsg {
    AckRequestMsg {
        master_db: master_db.into(),
        master_keeper: master_keeper.into(),
    }
}

fn confirm_req(master_db: &str) -> ConfirmRequestMsg {
    ConfirmRequestMsg {
        master_db: master_db.into(),
    }
}

fn status(r: &Result<AnswerMsg, CallError>) -> Option<u16> {
    match r {
        Err(CallError::Status { status, .. }) => Some(*status),
        Ok(_) => Some(200),
        Err(_) => None,
    }
}

/// Without the cluster's secret a keeper answers neither route (401, and a warning that shows
/// nothing of the request); with it, it answers; a keeper without a secret has no such routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_routes_refuse_requests_without_the_secret() {
    let w = World::new("fsauth").await;
    let http = free();
    let mut args = w.keeper_args("k0", free());
    args.extend(failsafe_args(&w, http));
    let kp = w.spawn_keeper("k0", &args);
    let addr = format!("127.0.0.1:{http}");
    wait_for("the keeper's HTTP listener", T, || async {
        tokio::net::TcpStream::connect(&addr).await.ok()
    })
    .await;

    let wrong = HttpTransport::new(secret("another secret, not the cluster's"));
    let ack = wrong.ack(&addr, &ack_req("db0", "k9"), REQUEST).await;
    assert_eq!(status(&ack), Some(401), "{ack:?}");
    let confirm = wrong.confirm(&addr, &confirm_req("db0"), REQUEST).await;
    assert_eq!(status(&confirm), Some(401), "{confirm:?}");
    let canary = "CANARY-no-such-request-body";
    assert_eq!(
        raw_post(&addr, "/failsafe/confirm", canary.as_bytes()).await,
        Some(401)
    );
    kp.wait_log(
        "failsafe acknowledgement request refused: not authenticated",
        T,
    )
    .await;
    kp.wait_log(
        "failsafe confirmation request refused: not authenticated",
        T,
    )
    .await;
    kp.wait_log("failsafe confirmation request refused: malformed", T)
        .await;
    let log = kp.log_text();
    assert!(!log.contains(canary), "a request body was logged");
    assert!(!log.contains(SECRET), "the secret was logged");
    assert!(
        raw_post(&addr, "/failsafe/ack", &vec![b'x'; 64 * 1024]).await != Some(200),
        "an oversized body must be refused"
    );

    // The same requests with the cluster's secret are answered (refused by the rule: there is
    // no clusterdata yet).
    let right = HttpTransport::new(secret(SECRET));
    let ack = right
        .ack(&addr, &ack_req("db0", "k9"), REQUEST)
        .await
        .expect("an authenticated answer");
    assert_eq!(ack.granted(), None);
    assert_eq!(ack.refused.as_deref(), Some("failsafe mode is not enabled"));
    let confirm = right
        .confirm(&addr, &confirm_req("db0"), REQUEST)
        .await
        .expect("an authenticated answer");
    assert_eq!(confirm.granted(), None);

    // A keeper without a secret does not serve the routes.
    let http2 = free();
    let mut args = w.keeper_args("k1", free());
    args.push(format!("--metrics-listen-address=127.0.0.1:{http2}"));
    let _k1 = w.spawn_keeper("k1", &args);
    let addr2 = format!("127.0.0.1:{http2}");
    wait_for("the second keeper's HTTP listener", T, || async {
        tokio::net::TcpStream::connect(&addr2).await.ok()
    })
    .await;
    let ack = right.ack(&addr2, &ack_req("db0", "k9"), REQUEST).await;
    assert_eq!(status(&ack), Some(404), "{ack:?}");
    let confirm = right.confirm(&addr2, &confirm_req("db0"), REQUEST).await;
    assert_eq!(status(&confirm), Some(404), "{confirm:?}");
}

/// A bad secret file stops the keeper with one line naming the file; a secret without the
/// HTTP listener too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_failsafe_secret_file_stops_the_keeper() {
    let w = World::new("fsbad").await;
    let short = write_secret(&w, "short", "too short\n");
    let mut args = w.keeper_args("k0", free());
    args.extend([
        format!("--failsafe-secret-file={}", short.display()),
        format!("--metrics-listen-address=127.0.0.1:{}", free()),
    ]);
    let mut kp = w.spawn_keeper("k0", &args);
    assert_eq!(kp.wait_exit(T).await, Some(1));
    let log = kp.log_text();
    assert!(
        log.contains(&format!(
            "failsafe secret file {}: the secret is 9 bytes long; it must be at least 16",
            short.display()
        )),
        "{log}"
    );
    assert!(!log.contains("too short\n"));

    let good = write_secret(&w, "good", SECRET);
    let mut args = w.keeper_args("k1", free());
    args.push(format!("--failsafe-secret-file={}", good.display()));
    let mut kp = w.spawn_keeper("k1", &args);
    assert_eq!(kp.wait_exit(T).await, Some(1));
    assert!(
        kp.log_text()
            .contains("--failsafe-secret-file needs --metrics-listen-address"),
        "{}",
        kp.log_text()
    );
}

/// A peer keeper played by the test: an HTTP server that acknowledges every authenticated
/// request for one lifetime, built on `stolon_failsafe::answer`.
async fn always_acknowledging_peer(secret: Secret) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the peer's listener");
    let addr = listener
        .local_addr()
        .expect("the peer's address")
        .to_string();
    let app = axum::Router::new().route(
        stolon_failsafe::ACK_PATH,
        post(move |body: Bytes| {
            let secret = secret.clone();
            async move {
                match stolon_failsafe::answer(
                    &secret,
                    Kind::AckRequest,
                    Kind::AckAnswer,
                    &body,
                    |_: AckRequestMsg| AnswerMsg::from_decision(&Ok(LIFETIME)),
                ) {
                    Ok(env) => (
                        axum::http::StatusCode::OK,
                        serde_json::to_vec(&env).unwrap_or_default(),
                    ),
                    Err(_) => (axum::http::StatusCode::UNAUTHORIZED, Vec::new()),
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// The master's keeper refuses confirmations while a peer's acknowledgement is missing and
/// confirms once every peer acknowledged; a standby that acknowledged and is then elected
/// starts promoting only when its promise is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_confirmations_and_the_promotion_gate() {
    let w = World::new("fsflow").await;
    let http0 = free();
    let (k0, _port0, mut cd) =
        start_master(&w, "k0", "db0", failsafe_spec(), &failsafe_args(&w, http0)).await;
    let addr0 = format!("127.0.0.1:{http0}");
    let info = w
        .wait_keeper_info("k0", T, |i| {
            i.postgres_state
                .as_ref()
                .is_some_and(|p| p.healthy && !p.failsafe_address.is_empty())
        })
        .await;
    assert_eq!(
        info.postgres_state.expect("a state").failsafe_address,
        addr0
    );

    // k1: a standby of db0, with the secret.
    let http1 = free();
    let addr1 = format!("127.0.0.1:{http1}");
    let (k1, port1) = w
        .join_keeper_with(&mut cd, "k1", &failsafe_args(&w, http1))
        .await;
    let mut s1 = db_spec(&cd, "k1", DbRole::Standby, DbInitMode::Resync);
    s1.follow_config = follow("db0");
    set_db(&mut cd, "db1", s1);
    if let Some(s) = cd.dbs.get_mut("db0").and_then(|d| d.spec.as_mut()) {
        s.followers = Some(vec!["db1".into()]);
    }
    bump(&mut cd, "db0");
    // k2: a third keeper, with a DB but no failsafe address yet (it cannot acknowledge).
    cd.keepers.insert(
        "k2".into(),
        stolon_core::model::Keeper {
            uid: "k2".into(),
            generation: 1,
            ..Default::default()
        },
    );
    let mut s2 = db_spec(&cd, "k2", DbRole::Standby, DbInitMode::Resync);
    s2.follow_config = follow("db0");
    set_db(&mut cd, "db2", s2);
    w.write_cd(&cd).await;
    wait_db_up(port1, Duration::from_secs(120)).await;
    w.wait_keeper_info("k1", T, |i| {
        i.postgres_state
            .as_ref()
            .is_some_and(|p| p.healthy && p.failsafe_address == addr1)
    })
    .await;
    w.sentinel_sync(&mut cd).await;
    assert_eq!(cd.dbs["db1"].status.failsafe_address, addr1);
    w.write_cd(&cd).await;

    // k1 acknowledges k0, k2 cannot: no confirmation, and the refusal names k2 only.
    let transport = HttpTransport::new(secret(SECRET));
    let refused = wait_for("a refusal naming only k2", T, || async {
        let a = transport
            .confirm(&addr0, &confirm_req("db0"), REQUEST)
            .await
            .ok()?;
        assert_eq!(a.granted(), None, "confirmed without k2's acknowledgement");
        a.refused
            .filter(|r| r == "no valid acknowledgement from keepers k2")
    })
    .await;
    eprintln!("[fsflow] k0 refuses: {refused}");

    // k2 serves an address now and acknowledges: k0 confirms.
    let addr2 = always_acknowledging_peer(secret(SECRET)).await;
    cd.dbs
        .get_mut("db2")
        .expect("db2 in clusterdata")
        .status
        .failsafe_address = addr2;
    w.write_cd(&cd).await;
    let granted = wait_for("a confirmation from k0", T, || async {
        transport
            .confirm(&addr0, &confirm_req("db0"), REQUEST)
            .await
            .ok()?
            .granted()
    })
    .await;
    assert!(
        granted > Duration::ZERO && granted <= LIFETIME / 2,
        "{granted:?}"
    );
    k0.wait_log("failsafe acknowledgement granted", T).await;

    // k1 acknowledges the master it knows (here asked by the test), and so promises not to
    // promote for one lifetime.
    let acked_at = std::time::Instant::now();
    let ack = transport
        .ack(&addr1, &ack_req("db0", "k0"), REQUEST)
        .await
        .expect("k1 answers");
    assert_eq!(ack.granted(), Some(LIFETIME), "{ack:?}");

    // Fail over to db1: k1 starts promoting only once its promise is over.
    w.sentinel_sync(&mut cd).await;
    cd.dbs.remove("db0");
    if let Some(s) = cd.dbs.get_mut("db1").and_then(|d| d.spec.as_mut()) {
        s.role = Some(DbRole::Master);
        s.follow_config = None;
        s.followers = Some(vec![]);
    }
    if let Some(s) = cd.dbs.get_mut("db2").and_then(|d| d.spec.as_mut()) {
        s.follow_config = follow("db1");
    }
    bump(&mut cd, "db1");
    set_master(&mut cd, "db1");
    let elected_at = std::time::Instant::now();
    w.write_cd(&cd).await;
    k1.wait_log("our db was elected master; not promoting for another", T)
        .await;
    assert_eq!(
        query_one_string(port1, "select pg_is_in_recovery()::text")
            .await
            .as_deref(),
        Some("true"),
        "promoted while its promise ran"
    );
    // The elected keeper acknowledges nothing any more.
    let after = transport
        .ack(&addr1, &ack_req("db0", "k0"), REQUEST)
        .await
        .expect("k1 answers");
    assert_eq!(after.granted(), None);
    wait_for("k1 promoted", Duration::from_secs(120), || async {
        query_one_string(port1, "select pg_is_in_recovery()::text")
            .await
            .filter(|r| r == "false")
    })
    .await;
    eprintln!(
        "[fsflow] out of recovery {:?} after the election was written, {:?} after k1 acknowledged (lifetime {LIFETIME:?})",
        elected_at.elapsed(),
        acked_at.elapsed()
    );
    let log = k1.log_text();
    let waited = log
        .find("not promoting for another")
        .expect("the wait is logged");
    let promoted = log
        .find("promoting to master")
        .expect("the promotion is logged");
    assert!(
        waited < promoted,
        "promoted before waiting:\n{}",
        tail(&log, 40)
    );
    assert_eq!(
        log.matches("not promoting for another").count(),
        1,
        "the wait is logged once:\n{}",
        tail(&log, 40)
    );
    drop((k0, k1));
}
