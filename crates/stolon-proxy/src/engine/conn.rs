//! One proxied connection: socket options, the upstream connect, and the byte copy in both
//! directions until either side ends or the connection's route is withdrawn.
//!
//! The copy runs as one task per connection (no thread), with one fixed buffer per direction
//! allocated once when the copy starts: no allocation and no extra copy per read, and at most
//! `2 * buffer_size` bytes of buffer per connection.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use super::routing::Pick;

/// TCP keepalive settings applied to proxied sockets. `SO_KEEPALIVE` is always enabled; each
/// parameter is applied only when set (`None` keeps the operating system default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe (`TCP_KEEPIDLE`).
    pub idle: Option<Duration>,
    /// Number of unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub count: Option<u32>,
    /// Time between probes (`TCP_KEEPINTVL`).
    pub interval: Option<Duration>,
}

impl Keepalive {
    /// Builds the settings from Stolon's flag values in seconds / probes, where 0 means "OS default".
    pub fn from_flags(idle_secs: u64, count: u32, interval_secs: u64) -> Self {
        Self {
            idle: (idle_secs > 0).then(|| Duration::from_secs(idle_secs)),
            count: (count > 0).then_some(count),
            interval: (interval_secs > 0).then(|| Duration::from_secs(interval_secs)),
        }
    }
}

/// Enables `TCP_NODELAY` and `SO_KEEPALIVE` (with the configured parameters) on `stream`.
pub(crate) fn configure_socket(stream: &TcpStream, keepalive: &Keepalive) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut params = TcpKeepalive::new();
    if let Some(idle) = keepalive.idle {
        params = params.with_time(idle);
    }
    if let Some(interval) = keepalive.interval {
        params = params.with_interval(interval);
    }
    if let Some(count) = keepalive.count {
        params = params.with_retries(count);
    }
    // set_tcp_keepalive turns SO_KEEPALIVE on and applies only the parameters that were set.
    SockRef::from(stream).set_tcp_keepalive(&params)
}

/// Why a proxied connection ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Both directions finished normally; bytes copied client->upstream and upstream->client.
    Done { to_upstream: u64, to_client: u64 },
    /// The route to the upstream was withdrawn (destination changed or cleared).
    RouteWithdrawn,
    /// The upstream could not be reached.
    ConnectFailed(io::Error),
    /// The upstream did not accept the connection in time.
    ConnectTimedOut,
    /// A read or write failed on either side (reset, broken pipe, ...).
    Io(io::Error),
}

/// Parameters of the byte copy shared by every connection of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CopyParams {
    pub(crate) keepalive: Keepalive,
    pub(crate) buffer_size: usize,
    pub(crate) connect_timeout: Duration,
}

/// Proxies `client` to the upstream chosen in `pick` until one side closes or the route is
/// withdrawn. Dropping both sockets on return closes them.
pub(crate) async fn proxy(mut client: TcpStream, pick: Pick, params: CopyParams) -> Ended {
    let connect = tokio::time::timeout(params.connect_timeout, TcpStream::connect(pick.addr));
    let mut upstream = tokio::select! {
        biased;
        _ = pick.closed.cancelled() => return Ended::RouteWithdrawn,
        res = connect => match res {
            Err(_elapsed) => return Ended::ConnectTimedOut,
            Ok(Err(e)) => return Ended::ConnectFailed(e),
            Ok(Ok(stream)) => stream,
        },
    };
    if let Err(e) = configure_socket(&upstream, &params.keepalive) {
        // Not fatal: the connection works without the options.
        tracing::debug!(upstream = %pick.addr, error = %e, "cannot set upstream socket options");
    }
    tokio::select! {
        biased;
        _ = pick.closed.cancelled() => Ended::RouteWithdrawn,
        res = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            params.buffer_size,
            params.buffer_size,
        ) => match res {
            Ok((to_upstream, to_client)) => Ended::Done { to_upstream, to_client },
            Err(e) => Ended::Io(e),
        },
    }
}

/// Logs how a connection ended, at debug level (per-connection events are not news).
pub(crate) fn log_end(peer: SocketAddr, upstream: SocketAddr, ended: &Ended) {
    match ended {
        Ended::Done {
            to_upstream,
            to_client,
        } => tracing::debug!(%peer, %upstream, to_upstream, to_client, "connection closed"),
        Ended::RouteWithdrawn => {
            tracing::debug!(%peer, %upstream, "connection closed: destination changed")
        }
        Ended::ConnectFailed(e) => {
            tracing::info!(%peer, %upstream, error = %e, "cannot connect to destination")
        }
        Ended::ConnectTimedOut => {
            tracing::info!(%peer, %upstream, "timed out connecting to destination")
        }
        Ended::Io(e) => {
            tracing::debug!(%peer, %upstream, error = %e, "connection ended with error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    #[tokio::test]
    async fn keepalive_always_on_parameters_only_when_set() {
        let (a, b) = pair().await;
        configure_socket(&a, &Keepalive::default()).unwrap();
        let sa = SockRef::from(&a);
        assert!(sa.keepalive().unwrap());
        assert!(a.nodelay().unwrap());

        let ka = Keepalive::from_flags(7, 3, 2);
        configure_socket(&b, &ka).unwrap();
        let sb = SockRef::from(&b);
        assert!(sb.keepalive().unwrap());
        assert_eq!(sb.keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(sb.keepalive_retries().unwrap(), 3);
        assert_eq!(sb.keepalive_interval().unwrap(), Duration::from_secs(2));
        // The unset parameters of `a` kept the OS defaults, not the values set on `b`.
        assert_ne!(sa.keepalive_time().unwrap(), Duration::from_secs(7));
    }

    #[test]
    fn zero_flags_mean_os_default() {
        assert_eq!(Keepalive::from_flags(0, 0, 0), Keepalive::default());
    }
}
