//! What the proxy's daemon tests share: probing what a new connection to the proxy sees.

use std::time::Duration;

use anyhow::{Result, bail};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What a connection attempt to the proxy saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Refused: the proxy does not listen.
    Refused,
    /// Accepted, then closed without data.
    Closed,
    /// Reached the upstream with this tag (its one-byte greeting).
    Tag(u8),
}

/// Connects to the proxy at `port` and waits at most `limit` for a greeting or a close.
pub async fn probe(port: u16, limit: Duration) -> Result<Seen> {
    let mut s = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(Seen::Refused),
        Err(e) => return Err(e.into()),
    };
    let mut b = [0u8; 1];
    match tokio::time::timeout(limit, s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(Seen::Closed),
        Ok(Ok(_)) => Ok(Seen::Tag(b[0])),
        Err(_) => bail!("no greeting and no close within {limit:?}"),
    }
}

/// Polls every 100 ms until [`probe`] sees `want`, for at most `limit`.
pub async fn wait_seen(port: u16, want: Seen, limit: Duration) -> Result<()> {
    let start = tokio::time::Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        let seen = probe(port, limit).await?;
        if seen == want {
            return Ok(());
        }
        last = Some(seen);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("wanted {want:?} within {limit:?}, last saw {last:?}")
}
