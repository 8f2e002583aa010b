//! The network edge of failsafe mode (docs/failsafe.md): reading the cluster's shared secret from
//! its file, and one authenticated request to a keeper's failsafe endpoint.
//!
//! The rule itself, the messages and their authentication are pure and live in
//! `stolon_core::failsafe`; this crate only moves them. A request is a plain HTTP/1.1 `POST` of a
//! sealed [`Envelope`] to the keeper's HTTP listener, answered with a sealed envelope; the answer
//! is believed only if it carries the request's nonce and the secret's tag. Everything is bounded:
//! one deadline for the whole exchange, and answers of at most [`MAX_ANSWER_BYTES`].

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use stolon_core::failsafe::wire::{
    self, AckRequestMsg, AnswerMsg, AuthError, ConfirmRequestMsg, Envelope, Kind, NONCE_LEN, Secret,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where a keeper answers acknowledgement requests (from the master's keeper).
pub const ACK_PATH: &str = "/failsafe/ack";
/// Where a keeper answers confirmation requests (from proxies).
pub const CONFIRM_PATH: &str = "/failsafe/confirm";
/// The largest request or answer body accepted, in bytes: the messages are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// The largest answer (status line, headers and body) a caller reads.
pub const MAX_ANSWER_BYTES: usize = MAX_BODY_BYTES + 4096;

/// Reads the shared secret from `path`. The error is one line naming the file and the problem,
/// never any of its contents.
pub fn load_secret(path: &Path) -> Result<Secret, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("failsafe secret file {}: {e}", path.display()))?;
    Secret::from_file_contents(&bytes)
        .map_err(|e| format!("failsafe secret file {}: {e}", path.display()))
}

/// A fresh nonce: 128 bits from the operating system's random source, in hexadecimal.
pub fn new_nonce() -> String {
    let bytes: [u8; NONCE_LEN / 2] = rand::random();
    hex::encode(bytes)
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The keeper could not be reached, or the exchange broke off.
    #[error("failsafe request to {addr}: {reason}")]
    Io {
        /// The keeper's address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// No complete answer within the deadline.
    #[error("failsafe request to {0}: no answer in time")]
    Timeout(String),
    /// The keeper answered with an HTTP error status (for example 401 when it refused the
    /// request's authentication).
    #[error("failsafe request to {addr}: status {status}")]
    Status {
        /// The keeper's address.
        addr: String,
        /// The HTTP status.
        status: u16,
    },
    /// The answer was malformed or not authenticated, or answered another request.
    #[error("failsafe answer from {addr}: {err}")]
    Auth {
        /// The keeper's address.
        addr: String,
        /// Why it was refused.
        err: AuthError,
    },
}

/// Sends `msg` sealed as `req_kind` to `path` at `addr` (`host:port`) and opens the answer as
/// `ans_kind`, all within `deadline`.
pub async fn call<Req: Serialize, Ans: DeserializeOwned>(
    addr: &str,
    path: &str,
    secret: &Secret,
    req_kind: Kind,
    ans_kind: Kind,
    msg: &Req,
    deadline: Duration,
) -> Result<Ans, CallError> {
    let nonce = new_nonce();
    let auth = |err| CallError::Auth {
        addr: addr.to_string(),
        err,
    };
    let env = wire::seal(secret, req_kind, &nonce, msg).map_err(auth)?;
    let body = serde_json::to_vec(&env).map_err(|e| auth(AuthError::Malformed(e.to_string())))?;
    let (status, answer) = tokio::time::timeout(deadline, post(addr, path, &body))
        .await
        .map_err(|_| CallError::Timeout(addr.to_string()))??;
    if status != 200 {
        return Err(CallError::Status {
            addr: addr.to_string(),
            status,
        });
    }
    let env = wire::decode_envelope(&answer).map_err(auth)?;
    wire::open(secret, ans_kind, Some(&nonce), &env).map_err(auth)
}

/// One HTTP/1.1 POST with `Connection: close`; the status and the body of the answer.
async fn post(addr: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), CallError> {
    let io = |e: std::io::Error| CallError::Io {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    let bad = |reason: &str| CallError::Io {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    let _ = stream.set_nodelay(true);
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.map_err(io)?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER_BYTES as u64 + 1)
        .read_to_end(&mut answer)
        .await
        .map_err(io)?;
    if answer.len() > MAX_ANSWER_BYTES {
        return Err(bad("answer too long"));
    }
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("answer without a complete header"))?;
    let head = std::str::from_utf8(&answer[..split]).map_err(|_| bad("answer header not UTF-8"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("answer without a status line"))?;
    if head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:"))
    {
        return Err(bad("chunked answers are not expected"));
    }
    Ok((status, answer[split + 4..].to_vec()))
}

/// Answers one request body on the keeper's side: opens it as `req_kind`, lets `decide` answer
/// the message, and seals the answer as `ans_kind` with the request's nonce. `Err` means the
/// request is refused before `decide` sees it (malformed or not authenticated).
pub fn answer<Req: DeserializeOwned, Ans: Serialize>(
    secret: &Secret,
    req_kind: Kind,
    ans_kind: Kind,
    body: &[u8],
    decide: impl FnOnce(Req) -> Ans,
) -> Result<Envelope, AuthError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(AuthError::Malformed("request too long".to_string()));
    }
    let env = wire::decode_envelope(body)?;
    let req: Req = wire::open(secret, req_kind, None, &env)?;
    let ans = decide(req);
    wire::seal(secret, ans_kind, &env.nonce, &ans)
}

/// How a keeper answers failsafe requests once they are authenticated: the keeper's HTTP routes
/// call it, and so does an in-process [`Transport`] (the simulation). Each answer is decided by
/// the pure rule on the keeper's own clock.
pub trait Responder: Send + Sync {
    /// Answers the master's keeper asking for an acknowledgement.
    fn ack(&self, req: &AckRequestMsg) -> AnswerMsg;
    /// Answers a proxy asking for a confirmation.
    fn confirm(&self, req: &ConfirmRequestMsg) -> AnswerMsg;
}

/// How failsafe requests reach a keeper at an address (a [`Responder`] there).
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// Asks the keeper at `addr` to acknowledge, within `deadline`.
    async fn ack(
        &self,
        addr: &str,
        req: &AckRequestMsg,
        deadline: Duration,
    ) -> Result<AnswerMsg, CallError>;
    /// Asks the keeper at `addr` to confirm, within `deadline`.
    async fn confirm(
        &self,
        addr: &str,
        req: &ConfirmRequestMsg,
        deadline: Duration,
    ) -> Result<AnswerMsg, CallError>;
}

/// The daemons' transport: authenticated HTTP requests to the keepers' listeners.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    secret: Secret,
}

impl HttpTransport {
    /// A transport sealing every request with `secret`.
    pub fn new(secret: Secret) -> HttpTransport {
        HttpTransport { secret }
    }
}

#[async_trait::async_trait]
impl Transport for HttpTransport {
    async fn ack(
        &self,
        addr: &str,
        req: &AckRequestMsg,
        deadline: Duration,
    ) -> Result<AnswerMsg, CallError> {
        call(
            addr,
            ACK_PATH,
            &self.secret,
            Kind::AckRequest,
            Kind::AckAnswer,
            req,
            deadline,
        )
        .await
    }

    async fn confirm(
        &self,
        addr: &str,
        req: &ConfirmRequestMsg,
        deadline: Duration,
    ) -> Result<AnswerMsg, CallError> {
        call(
            addr,
            CONFIRM_PATH,
            &self.secret,
            Kind::ConfirmRequest,
            Kind::ConfirmAnswer,
            req,
            deadline,
        )
        .await
    }
}

#[cfg(test)]
mod tests;
