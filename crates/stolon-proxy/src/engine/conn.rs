//! One proxied connection: socket options, the upstream connect, the PostgreSQL startup
//! followed (`stolon_core::proxy::startup`), and the byte copy in both directions until either
//! side ends or the connection's route is withdrawn.
//!
//! The connection runs as one task (no thread). Its startup (the first packets, authentication,
//! up to the server's first ReadyForQuery, usually a few hundred bytes each way) is forwarded
//! through two small buffers and looked at message by message; after that the copy uses one
//! fixed buffer per direction allocated once when it starts and looks at nothing: no
//! allocation and no extra copy per read, and at most `2 * buffer_size` bytes of buffer per
//! connection.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use socket2::{SockRef, TcpKeepalive};
use stolon_core::proxy::startup::{Startup, StartupError, Withdrawal, on_withdrawn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// The route was withdrawn while new connections are held, before the server answered the
    /// client's startup: the client is to be held, then sent to the next destination with its
    /// unanswered startup bytes ([`Startup::replay`]).
    Held(TcpStream, Box<Startup>),
    /// The client's first packet had a length PostgreSQL refuses.
    InvalidStartup(StartupError),
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

/// The connections of one listener whose startup is not over yet (from the upstream connect to
/// the server's first ReadyForQuery, or to the end of the connection).
#[derive(Debug, Default)]
pub(crate) struct InStartup {
    count: AtomicUsize,
    none_left: tokio::sync::Notify,
}

impl InStartup {
    /// Counts one more connection until the slot is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> StartupSlot {
        self.count.fetch_add(1, Ordering::AcqRel);
        StartupSlot(Arc::clone(self))
    }

    /// Waits until no connection is in its startup.
    pub(crate) async fn none_left(&self) {
        loop {
            let notified = self.none_left.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One connection counted in [`InStartup`] while it lives.
#[derive(Debug)]
pub(crate) struct StartupSlot(Arc<InStartup>);

impl Drop for StartupSlot {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// Size of each of the two buffers used while the startup is followed (its messages are small;
/// a longer one is simply read in several pieces).
const STARTUP_BUFFER: usize = 4096;

/// Proxies `client` to the upstream chosen in `pick` until one side closes or the route is
/// withdrawn. `startup` is how far the client's startup went (fresh for a new client; for a
/// held one, its unanswered bytes are sent to the upstream first, and `on_replayed` is called
/// once they are). The startup is followed until the session is ready or the stream is opaque,
/// then bytes are copied without looking at them; `slot` counts the connection as in its startup
/// until then. Dropping both sockets on return closes them, except for [`Ended::Held`], which
/// hands the client back.
pub(crate) async fn proxy(
    client: TcpStream,
    pick: Pick,
    params: CopyParams,
    mut startup: Box<Startup>,
    on_replayed: Option<&(dyn Fn() + Sync)>,
    slot: StartupSlot,
) -> Ended {
    let connect = tokio::time::timeout(params.connect_timeout, TcpStream::connect(pick.addr));
    let mut upstream = tokio::select! {
        biased;
        hold = pick.closed.withdrawn() => return withdrawn_before_answer(client, startup, hold),
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
    let mut client = client;
    if let Some(replayed) = on_replayed {
        let bytes = startup.replay().unwrap_or_default();
        if let Err(e) = upstream.write_all(bytes).await {
            return Ended::Io(e);
        }
        replayed();
    }
    let (mut to_upstream, mut to_client) = (0, 0);
    if !startup.is_done() {
        match follow_startup(&mut client, &mut upstream, &pick, &mut startup).await {
            Followed::Ready {
                to_upstream: u,
                to_client: c,
            } => (to_upstream, to_client) = (u, c),
            Followed::Hold => return Ended::Held(client, startup),
            Followed::End(ended) => return ended,
        }
    }
    drop((startup, slot));
    tokio::select! {
        biased;
        _ = pick.closed.withdrawn() => Ended::RouteWithdrawn,
        res = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            params.buffer_size,
            params.buffer_size,
        ) => match res {
            Ok((u, c)) => Ended::Done { to_upstream: to_upstream + u, to_client: to_client + c },
            Err(e) => Ended::Io(e),
        },
    }
}

/// The route went before the server said anything: hold the client when the decision says so.
fn withdrawn_before_answer(
    client: TcpStream,
    startup: Box<Startup>,
    hold: Option<Duration>,
) -> Ended {
    match on_withdrawn(&startup, hold.is_some()) {
        Withdrawal::Hold => Ended::Held(client, startup),
        Withdrawal::Close | Withdrawal::FinishThenClose => Ended::RouteWithdrawn,
    }
}

/// How following the startup ended.
enum Followed {
    /// The session is ready (or the stream opaque): copy the rest blindly.
    Ready { to_upstream: u64, to_client: u64 },
    /// Hold the client (see [`Ended::Held`]).
    Hold,
    /// The connection ended.
    End(Ended),
}

/// Forwards the startup both ways, feeding `startup`, until it is done. When the route is
/// withdrawn meanwhile, does what [`on_withdrawn`] decides.
async fn follow_startup(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    pick: &Pick,
    startup: &mut Startup,
) -> Followed {
    let mut from_client = vec![0u8; STARTUP_BUFFER];
    let mut from_upstream = vec![0u8; STARTUP_BUFFER];
    let (mut to_upstream, mut to_client) = (0u64, 0u64);
    // Set once the route is withdrawn and the startup may finish: the limit for that.
    let mut finishing: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            biased;
            hold = pick.closed.withdrawn(), if finishing.is_none() => {
                match on_withdrawn(startup, hold.is_some()) {
                    Withdrawal::Close => return Followed::End(Ended::RouteWithdrawn),
                    Withdrawal::Hold => return Followed::Hold,
                    Withdrawal::FinishThenClose => {
                        let limit = hold.unwrap_or_default();
                        finishing = Some(Box::pin(tokio::time::sleep(limit)));
                    }
                }
            }
            () = async {
                match finishing.as_mut() {
                    Some(limit) => limit.await,
                    None => std::future::pending().await,
                }
            }, if finishing.is_some() => return Followed::End(Ended::RouteWithdrawn),
            res = client.read(&mut from_client) => {
                let n = match res {
                    Ok(0) => return Followed::End(Ended::Done { to_upstream, to_client }),
                    Ok(n) => n,
                    Err(e) => return Followed::End(Ended::Io(e)),
                };
                let chunk = &from_client[..n];
                if let Err(e) = startup.client_bytes(chunk) {
                    return Followed::End(Ended::InvalidStartup(e));
                }
                if finishing.is_some() && !startup.only_authentication() {
                    // Nothing but authentication goes to a withdrawn upstream.
                    return Followed::End(Ended::RouteWithdrawn);
                }
                if let Err(e) = upstream.write_all(chunk).await {
                    return Followed::End(Ended::Io(e));
                }
                to_upstream += n as u64;
            }
            res = upstream.read(&mut from_upstream) => {
                let n = match res {
                    Ok(0) => return Followed::End(Ended::Done { to_upstream, to_client }),
                    Ok(n) => n,
                    Err(e) => return Followed::End(Ended::Io(e)),
                };
                let chunk = &from_upstream[..n];
                startup.server_bytes(chunk);
                if let Err(e) = client.write_all(chunk).await {
                    return Followed::End(Ended::Io(e));
                }
                to_client += n as u64;
                if startup.is_done() && finishing.is_some() {
                    // Its ReadyForQuery reached the client: closed like every other
                    // connection to the withdrawn upstream.
                    return Followed::End(Ended::RouteWithdrawn);
                }
            }
        }
        if startup.is_done() {
            return Followed::Ready {
                to_upstream,
                to_client,
            };
        }
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
        Ended::Held(..) => {
            tracing::debug!(%peer, %upstream, "destination changed before the server answered: holding the client")
        }
        Ended::InvalidStartup(e) => {
            tracing::debug!(%peer, %upstream, error = %e, "closing client")
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
