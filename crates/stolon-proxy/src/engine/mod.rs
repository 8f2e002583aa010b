//! The proxy's IO engine: a TCP forwarder whose destination is controlled from outside.
//!
//! A [`Forwarder`] owns one listening socket (opened and closed on demand), a routing table and
//! every connection it proxies. It knows nothing about the store or PostgreSQL: the daemon
//! decides (through the pure `route()`), the forwarder only does.
//!
//! Semantics (those of Stolon's pollon library, extended for read-only routing):
//! - a change of destination closes every connection proxied to an address no longer routed to,
//!   at once; new connections go to the current destination;
//! - with no destination, accepted client connections are closed immediately, unless the
//!   forwarder holds them ([`Forwarder::set_hold`], during a planned switchover): then they wait,
//!   at most [`MAX_HELD`] of them and each for the hold's time, for the next destination;
//! - while the forwarder holds, a connection whose destination is withdrawn before the server
//!   answered its startup is not closed but held too, and its unanswered startup bytes are sent
//!   to the next destination; one in the middle of its authentication finishes it, then is
//!   closed (`stolon_core::proxy::startup::on_withdrawn`);
//! - the listening socket exists only between [`Forwarder::start_listening`] and
//!   [`Forwarder::stop_listening`]; after the latter the port is really free.

mod conn;
mod routing;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use conn::Keepalive;
use conn::{CopyParams, Ended};
use routing::Routing;

/// Default size of each of the two copy buffers of a connection.
pub const DEFAULT_BUFFER_SIZE: usize = 16 * 1024;

/// Default time allowed for the upstream TCP connect.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most client connections held at once while there is no destination; more are closed.
pub const MAX_HELD: usize = 1000;

/// Longest a planned switchover's acknowledgement waits for connections finishing their startup
/// with the withdrawn destination ([`Forwarder::withdrawn_startups_finished`]).
pub const MAX_STARTUP_FINISH: Duration = Duration::from_secs(2);

/// Pause after an accept error (e.g. out of file descriptors) before accepting again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Settings of a forwarder, fixed at creation.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Keepalive applied to accepted client sockets and to upstream sockets.
    pub keepalive: Keepalive,
    /// Size in bytes of each copy buffer; a connection holds two.
    pub buffer_size: usize,
    /// Time allowed for the upstream TCP connect before the client is closed.
    pub connect_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            keepalive: Keepalive::default(),
            buffer_size: DEFAULT_BUFFER_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// Errors of the forwarder.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

/// Counters of one forwarder, for logs, metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Client connections accepted.
    pub accepted: u64,
    /// Client connections closed at once because there was no destination.
    pub refused: u64,
    /// Proxied connections closed because their destination was withdrawn.
    pub closed_by_route_change: u64,
    /// Client connections that were held (waiting for a destination) at some point.
    pub held: u64,
    /// Held connections closed because no destination came in time (or holding stopped).
    pub hold_expired: u64,
    /// Client connections waiting for a destination now.
    pub held_now: usize,
    /// Connections whose destination was withdrawn before the server answered their startup,
    /// then sent, with their startup bytes, to the next destination.
    pub startups_replayed: u64,
    /// Proxied connections currently open (including those still connecting upstream).
    pub active: usize,
    /// Times the routed destinations changed.
    pub route_changes: u64,
    /// Whether the listening socket is open.
    pub listening: bool,
}

/// A TCP forwarder with a controllable destination. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    /// Name of this listener in logs ("primary", "read-only").
    name: &'static str,
    params: CopyParams,
    routing: Mutex<Routing>,
    /// The accept loop, when listening.
    listening: tokio::sync::Mutex<Option<Accepting>>,
    /// Every proxied connection task.
    connections: TaskTracker,
    accepted: AtomicU64,
    refused: AtomicU64,
    closed_by_route_change: AtomicU64,
    active: AtomicUsize,
    route_changes: AtomicU64,
    listening_now: AtomicBool,
    /// While `Some(limit)`, clients without a destination wait up to `limit` for one.
    hold: tokio::sync::watch::Sender<Option<Duration>>,
    /// Clients waiting now.
    waiting: AtomicUsize,
    held: AtomicU64,
    hold_expired: AtomicU64,
    startups_replayed: AtomicU64,
    /// Connections whose startup is not over yet.
    in_startup: Arc<conn::InStartup>,
}

/// A running accept loop.
struct Accepting {
    local: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("name", &self.inner.name)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder named `name` in logs, not listening, with no destination.
    pub fn new(name: &'static str, config: EngineConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                name,
                params: CopyParams {
                    keepalive: config.keepalive,
                    buffer_size: config.buffer_size.max(1),
                    connect_timeout: config.connect_timeout,
                },
                routing: Mutex::new(Routing::default()),
                listening: tokio::sync::Mutex::new(None),
                connections: TaskTracker::new(),
                accepted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                closed_by_route_change: AtomicU64::new(0),
                active: AtomicUsize::new(0),
                route_changes: AtomicU64::new(0),
                listening_now: AtomicBool::new(false),
                hold: tokio::sync::watch::Sender::new(None),
                waiting: AtomicUsize::new(0),
                held: AtomicU64::new(0),
                hold_expired: AtomicU64::new(0),
                startups_replayed: AtomicU64::new(0),
                in_startup: Arc::default(),
            }),
        }
    }

    /// Sets the single destination of every new connection (`None`: refuse them). A change,
    /// including to or from `None`, closes every connection proxied so far, at once.
    /// Returns true when the destination changed.
    pub fn set_destination(&self, dest: Option<SocketAddr>) -> bool {
        let targets: &[SocketAddr] = match &dest {
            Some(addr) => std::slice::from_ref(addr),
            None => &[],
        };
        let changed = self
            .inner
            .routing()
            .replace(targets, None, self.inner.holding());
        if changed {
            self.inner.route_changes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(listener = self.inner.name, destination = ?dest, "destination changed");
        }
        changed
    }

    /// Holds new connections that have no destination for at most `limit` each (`Some`), or
    /// stops holding (`None`): every waiting client then goes to the destination in force, or
    /// is closed when there is none.
    pub fn set_hold(&self, limit: Option<Duration>) {
        let changed = self.inner.hold.send_if_modified(|h| {
            let changed = *h != limit;
            *h = limit;
            changed
        });
        if changed {
            tracing::info!(listener = self.inner.name, hold = ?limit, "holding new connections changed");
        }
    }

    /// Read-only routing: new connections are spread round-robin over `standbys`; when the list
    /// is empty they go to `fallback`, or are refused when it is `None`. Connections to an
    /// address that is neither in `standbys` nor the `fallback` any more are closed at once;
    /// the others are kept. Returns true when the routed set changed.
    pub fn set_read_only_destinations(
        &self,
        standbys: Vec<SocketAddr>,
        fallback: Option<SocketAddr>,
    ) -> bool {
        let changed = self
            .inner
            .routing()
            .replace(&standbys, fallback, self.inner.holding());
        if changed {
            self.inner.route_changes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                listener = self.inner.name,
                ?standbys,
                ?fallback,
                "read-only destinations changed"
            );
        }
        changed
    }

    /// The current destinations: round-robin targets and fallback.
    pub fn destinations(&self) -> (Vec<SocketAddr>, Option<SocketAddr>) {
        self.inner.routing().addresses()
    }

    /// Opens the listening socket on `addr` and starts accepting, if not already listening.
    /// Returns the bound address (useful with port 0). When already listening, returns the
    /// current address, even if it differs from `addr`.
    pub async fn start_listening(&self, addr: SocketAddr) -> Result<SocketAddr, EngineError> {
        let mut listening = self.inner.listening.lock().await;
        if let Some(acc) = listening.as_ref()
            && !acc.task.is_finished()
        {
            return Ok(acc.local);
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| EngineError::Listen { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| EngineError::Listen { addr, source })?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(self.inner.clone(), listener, stop.clone()));
        *listening = Some(Accepting { local, stop, task });
        self.inner.listening_now.store(true, Ordering::Relaxed);
        tracing::info!(listener = self.inner.name, address = %local, "listening");
        Ok(local)
    }

    /// Closes the listening socket (connections already proxied are not touched). Returns once
    /// the socket is closed, so the port is free when this returns.
    pub async fn stop_listening(&self) {
        let mut listening = self.inner.listening.lock().await;
        if let Some(acc) = listening.take() {
            self.inner.listening_now.store(false, Ordering::Relaxed);
            acc.stop.cancel();
            if let Err(e) = acc.task.await {
                tracing::warn!(listener = self.inner.name, error = %e, "accept loop failed");
            }
            tracing::info!(listener = self.inner.name, address = %acc.local, "stopped listening");
        }
    }

    /// The address listened on, if listening.
    pub async fn listening_addr(&self) -> Option<SocketAddr> {
        self.inner.listening.lock().await.as_ref().map(|a| a.local)
    }

    /// The name given at creation ("primary", "read-only").
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Counters of this forwarder.
    pub fn stats(&self) -> Stats {
        Stats {
            accepted: self.inner.accepted.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
            closed_by_route_change: self.inner.closed_by_route_change.load(Ordering::Relaxed),
            held: self.inner.held.load(Ordering::Relaxed),
            hold_expired: self.inner.hold_expired.load(Ordering::Relaxed),
            held_now: self.inner.waiting.load(Ordering::Relaxed).min(MAX_HELD),
            startups_replayed: self.inner.startups_replayed.load(Ordering::Relaxed),
            active: self.inner.active.load(Ordering::Relaxed),
            route_changes: self.inner.route_changes.load(Ordering::Relaxed),
            listening: self.inner.listening_now.load(Ordering::Relaxed),
        }
    }

    /// While new connections are held and no destination is set (a planned switchover), waits
    /// until no connection is still in its startup, at most `limit`: those the old destination
    /// was authenticating when it was withdrawn finish and are closed, the others are held. So
    /// once this returns, no new session can start on the old destination through this
    /// forwarder, and its server may be stopped without failing a connection attempt. Returns
    /// at once otherwise; false when `limit` passed first.
    pub async fn withdrawn_startups_finished(&self, limit: Duration) -> bool {
        let switching = self.inner.holding().is_some() && {
            let (targets, fallback) = self.inner.routing().addresses();
            targets.is_empty() && fallback.is_none()
        };
        if !switching {
            return true;
        }
        tokio::time::timeout(limit, self.inner.in_startup.none_left())
            .await
            .is_ok()
    }

    /// Stops listening, closes every connection and waits until all connection tasks ended.
    pub async fn shutdown(&self) {
        self.stop_listening().await;
        self.set_hold(None);
        self.inner.routing().clear();
        self.inner.connections.close();
        self.inner.connections.wait().await;
        self.inner.connections.reopen();
    }
}

impl Inner {
    fn routing(&self) -> MutexGuard<'_, Routing> {
        // The table stays consistent even if a holder panicked: every update is one assignment.
        self.routing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The hold in force.
    fn holding(&self) -> Option<Duration> {
        *self.hold.borrow()
    }

    /// Sends a freshly accepted client to the current destination, holds it while the
    /// forwarder holds, or closes it.
    fn dispatch(self: &Arc<Self>, client: TcpStream, peer: SocketAddr) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = conn::configure_socket(&client, &self.params.keepalive) {
            tracing::debug!(listener = self.name, %peer, error = %e, "cannot set client socket options");
        }
        let pick = self.routing().pick();
        if pick.is_none() && !self.try_hold() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = self.name, %peer, "no destination: closing client");
            drop(client);
            return;
        }
        let inner = Arc::clone(self);
        self.connections.spawn(async move {
            inner.serve(client, peer, pick).await;
        });
    }

    /// Takes one of the [`MAX_HELD`] places of held clients, while holding. True when taken:
    /// the caller then waits with [`Inner::wait_held`].
    fn try_hold(&self) -> bool {
        if self.holding().is_none() {
            return false;
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) < MAX_HELD {
            self.held.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// Waits, holding one place taken by [`Inner::try_hold`], for a destination (at most the
    /// hold's time); gives the place back.
    async fn wait_held(&self, peer: SocketAddr) -> Option<routing::Pick> {
        let pick = match self.holding() {
            Some(limit) => self.wait_for_destination(limit).await,
            None => self.routing().pick(),
        };
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        if pick.is_none() {
            self.hold_expired.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = self.name, %peer, "held client got no destination: closing it");
        }
        pick
    }

    /// Serves one client: waits for a destination when it has none (it was held), proxies it,
    /// and holds it again, to send its startup to the next destination, when its destination
    /// is withdrawn before the server answered (during a planned switchover).
    async fn serve(
        self: Arc<Self>,
        mut client: TcpStream,
        peer: SocketAddr,
        mut pick: Option<routing::Pick>,
    ) {
        let mut startup = Box::default();
        let mut replay = false;
        let on_replayed = || {
            self.startups_replayed.fetch_add(1, Ordering::Relaxed);
        };
        // Each round either ends the connection or held it once more; holding is bounded by the
        // hold's time and only happens when a destination was withdrawn, so this ends.
        loop {
            let chosen = match pick.take() {
                Some(p) => p,
                None => match self.wait_held(peer).await {
                    Some(p) => p,
                    None => return,
                },
            };
            let upstream = chosen.addr;
            self.active.fetch_add(1, Ordering::Relaxed);
            let slot = self.in_startup.enter();
            let ended = conn::proxy(
                client,
                chosen,
                self.params,
                startup,
                replay.then_some(&on_replayed as &(dyn Fn() + Sync)),
                slot,
            )
            .await;
            self.active.fetch_sub(1, Ordering::Relaxed);
            conn::log_end(peer, upstream, &ended);
            match ended {
                Ended::Held(c, s) if self.try_hold() => {
                    (client, startup, replay) = (c, s, true);
                }
                Ended::Held(..) | Ended::RouteWithdrawn => {
                    self.closed_by_route_change.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                _ => return,
            }
        }
    }

    /// Waits (at most `limit`) until a destination is set or holding stops; the destination
    /// then in force, if any.
    async fn wait_for_destination(&self, limit: Duration) -> Option<routing::Pick> {
        let mut rx = self.hold.subscribe();
        let wait = async {
            loop {
                if let Some(pick) = self.routing().pick() {
                    return Some(pick);
                }
                if rx.borrow_and_update().is_none() {
                    return None;
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(pick) => pick.or_else(|| self.routing().pick()),
            Err(_) => self.routing().pick(),
        }
    }
}

/// Accepts clients until `stop` is cancelled; the listener is dropped (port freed) on return.
async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            res = listener.accept() => res,
        };
        match accepted {
            Ok((client, peer)) => inner.dispatch(client, peer),
            Err(e) => {
                // Typically EMFILE/ENFILE or a connection reset before accept: back off briefly
                // instead of spinning, then keep accepting.
                tracing::warn!(listener = inner.name, error = %e, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                }
            }
        }
    }
}
