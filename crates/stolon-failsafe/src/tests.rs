use std::time::Duration;

use stolon_core::failsafe::wire::{AckRequestMsg, AnswerMsg, Kind, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn secret(s: &str) -> Secret {
    Secret::from_file_contents(s.as_bytes()).expect("a valid secret")
}

fn req() -> AckRequestMsg {
    AckRequestMsg {
        master_db: "db0".into(),
        master_keeper: "keeper0".into(),
    }
}

/// What the in-test keeper does with a request.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers with its secret, granting 1500 ms.
    Answer,
    /// Answers a sealed envelope carrying another nonce (a replayed answer).
    WrongNonce,
    /// Reads the request and never answers.
    Silent,
}

/// Serves one request on loopback; the address.
async fn keeper(secret: Secret, behaviour: Behaviour) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read the header, then the body by its length.
        let body = loop {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "request cut short");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("content-length");
                while buf.len() < i + 4 + len {
                    let n = s.read(&mut chunk).await.expect("read body");
                    assert!(n > 0, "body cut short");
                    buf.extend_from_slice(&chunk[..n]);
                }
                break buf[i + 4..i + 4 + len].to_vec();
            }
        };
        let (status, out) = match behaviour {
            Behaviour::Silent => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            Behaviour::Answer => match answer(
                &secret,
                Kind::AckRequest,
                Kind::AckAnswer,
                &body,
                |_: AckRequestMsg| AnswerMsg {
                    granted_ms: Some(1500),
                    refused: None,
                    refusal: None,
                },
            ) {
                Ok(env) => (200, serde_json::to_vec(&env).expect("json")),
                Err(e) => (401, e.to_string().into_bytes()),
            },
            Behaviour::WrongNonce => {
                let env = wire::seal(
                    &secret,
                    Kind::AckAnswer,
                    "fedcba9876543210fedcba9876543210",
                    &AnswerMsg {
                        granted_ms: Some(1500),
                        refused: None,
                        refusal: None,
                    },
                )
                .expect("seal");
                (200, serde_json::to_vec(&env).expect("json"))
            }
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            out.len()
        );
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(&out).await.expect("write");
    });
    addr
}

async fn ask(addr: &str, s: &Secret, deadline: Duration) -> Result<AnswerMsg, CallError> {
    call(
        addr,
        ACK_PATH,
        s,
        Kind::AckRequest,
        Kind::AckAnswer,
        &req(),
        deadline,
    )
    .await
}

#[tokio::test]
async fn a_request_with_the_secret_gets_the_keepers_answer() {
    let s = secret("0123456789abcdef-shared");
    let addr = keeper(s.clone(), Behaviour::Answer).await;
    let a = ask(&addr, &s, Duration::from_secs(10))
        .await
        .expect("answered");
    assert_eq!(a.granted(), Some(Duration::from_millis(1500)));
}

#[tokio::test]
async fn a_request_without_the_secret_is_refused_by_the_keeper() {
    let addr = keeper(secret("0123456789abcdef-shared"), Behaviour::Answer).await;
    let e = ask(
        &addr,
        &secret("another secret of 16+ bytes"),
        Duration::from_secs(10),
    )
    .await
    .expect_err("refused");
    assert!(matches!(e, CallError::Status { status: 401, .. }), "{e}");
}

#[tokio::test]
async fn an_answer_to_another_request_is_not_believed() {
    let s = secret("0123456789abcdef-shared");
    let addr = keeper(s.clone(), Behaviour::WrongNonce).await;
    let e = ask(&addr, &s, Duration::from_secs(10))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            e,
            CallError::Auth {
                err: AuthError::NonceMismatch,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn a_silent_keeper_is_given_up_at_the_deadline() {
    let s = secret("0123456789abcdef-shared");
    let addr = keeper(s.clone(), Behaviour::Silent).await;
    let e = ask(&addr, &s, Duration::from_millis(200))
        .await
        .expect_err("no answer");
    assert!(matches!(e, CallError::Timeout(_)), "{e}");
}

#[tokio::test]
async fn an_unreachable_keeper_is_an_io_error() {
    // A port just bound and released: nothing listens there.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    let e = ask(
        &addr,
        &secret("0123456789abcdef-shared"),
        Duration::from_secs(5),
    )
    .await
    .expect_err("unreachable");
    assert!(matches!(e, CallError::Io { .. }), "{e}");
}

#[test]
fn a_malformed_request_never_reaches_the_decision() {
    let s = secret("0123456789abcdef-shared");
    let mut asked = false;
    let r = answer(
        &s,
        Kind::AckRequest,
        Kind::AckAnswer,
        b"{not json",
        |_: AckRequestMsg| {
            asked = true;
            AnswerMsg {
                granted_ms: None,
                refused: None,
                refusal: None,
            }
        },
    );
    assert!(matches!(r, Err(AuthError::Malformed(_))), "{r:?}");
    assert!(!asked);
}

#[test]
fn secret_files_give_one_line_errors_without_their_contents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let e = load_secret(&missing).expect_err("missing");
    assert!(
        e.starts_with("failsafe secret file ") && !e.contains('\n'),
        "{e}"
    );
    let short = dir.path().join("short");
    std::fs::write(&short, "tiny-secret\n").expect("write");
    let e = load_secret(&short).expect_err("short");
    assert!(
        e.contains("at least 16") && !e.contains("tiny-secret"),
        "{e}"
    );
    let good = dir.path().join("good");
    std::fs::write(&good, "0123456789abcdef-shared\n").expect("write");
    assert_eq!(load_secret(&good), Ok(secret("0123456789abcdef-shared")));
}

#[test]
fn nonces_are_fresh_and_well_formed() {
    let a = new_nonce();
    let b = new_nonce();
    assert_ne!(a, b);
    assert_eq!(a.len(), NONCE_LEN);
    assert!(
        a.bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
}
