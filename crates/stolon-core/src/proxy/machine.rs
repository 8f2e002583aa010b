//! The proxy's check loop as a pure state machine: `step(config, observation, memory, now)`
//! returns what the proxy does next (routing changes, log lines), at most one IO request whose
//! result is the next observation, the new memory and when to wake up if nothing else happens.
//!
//! A check is: read clusterdata; listen if not listening yet; resolve the master's (and the
//! standbys') advertised addresses; publish this proxy's `ProxyInfo` when due; route. Publishing
//! comes before routing to a new master (the fencing handshake: the sentinel waits until every
//! enabled proxy has acknowledged the generation that names the master before it relies on it).
//! The machine routes nowhere, and stops listening when so configured, once `proxyTimeout` has
//! passed since the *start* of its last check that read clusterdata and published a new
//! `ProxyInfo` (or that left it routing nowhere, when there is nothing to fence). A check that
//! routes on without publishing (a store change that needs no new info) does not extend that
//! clock, and a check's result is dropped when `proxyTimeout` has passed since it started. So the
//! proxy has fenced itself `proxyTimeout` (on its own clock) after the start of the check that
//! wrote the last info the sentinel saw, a start that precedes the write; the sentinel relies on
//! it when the info carries the mark [`crate::model::ProxyInfo::fences_from_check_start`]
//! (docs/invariants.md, invariant 2).
//!
//! Checks run every `proxyCheckInterval` (a full check: it always publishes, as Stolon does) and
//! at once on any store change (it does nothing when the clusterdata revision is the one already
//! applied, and publishes only when the generation, the published timeout or the master address
//! changes, or after a missed publish). Time is a monotonic instant passed in by the caller.
//!
//! Failsafe mode (docs/failsafe.md): when the last successful check read a clusterdata with
//! `failsafeMode` on and routed to its master, and store reads start failing, the machine asks
//! (an [`Action::AskConfirmation`], executed beside the check loop) the keeper of that master DB
//! to confirm it, every `confirm_renew`. While a granted confirmation, counted from when its
//! request was sent, is valid, the expiry of `proxyTimeout` does not fence the proxy: it keeps
//! routing to that same master, and to nothing else. It fences once no confirmation is valid, and
//! returns to normal operation at the next successful check.

use std::net::SocketAddr;
use std::time::Duration;

use super::{
    ClosedReason, Destination, Route, SpecTimings, Target, proxy_info_ttl, publish_timeout, route,
};
use crate::failsafe::{self, Timers};
use crate::model::ClusterData;

/// A monotonic instant: time since an origin the caller picks.
pub type MonoInstant = Duration;

/// Where the read-only listener sends connections when no standby qualifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// To the master (when the proxy routes to one).
    Master,
    /// Nowhere: connections are closed.
    Refuse,
}

/// A deliberately wrong behaviour, to show that the simulation's checker catches a bug in this
/// machine.
#[cfg(feature = "testing")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bug {
    /// No bug.
    #[default]
    None,
    /// Keep routing when `proxyTimeout` expires (no fail-closed).
    NoFailClosed,
    /// Count a failsafe confirmation from the moment its answer arrived instead of the moment
    /// its request was sent (it then may outlive the keeper's grant).
    ConfirmFromArrival,
}

/// What does not change while the proxy runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// This proxy's UID.
    pub uid: String,
    /// The read-only listener, when configured, with its fallback.
    pub read_only: Option<Fallback>,
    /// Stop listening when `proxyTimeout` expires (Stolon's `--stop-listening`).
    pub stop_listening: bool,
    /// `proxyCheckInterval` until clusterdata says otherwise.
    pub initial_check_interval: Duration,
    /// `proxyTimeout` until clusterdata says otherwise.
    pub initial_proxy_timeout: Duration,
    /// This proxy can ask keepers for failsafe confirmations (it has the cluster's failsafe
    /// secret and a way to send requests). Without it, failsafe mode changes nothing here.
    pub confirmations: bool,
    /// Injected bug (tests only).
    #[cfg(feature = "testing")]
    pub bug: Bug,
}

impl Config {
    /// A proxy `uid` without a read-only listener, that stops listening on timeout.
    pub fn new(
        uid: String,
        initial_check_interval: Duration,
        initial_proxy_timeout: Duration,
    ) -> Self {
        Config {
            uid,
            read_only: None,
            stop_listening: true,
            initial_check_interval,
            initial_proxy_timeout,
            confirmations: false,
            #[cfg(feature = "testing")]
            bug: Bug::None,
        }
    }

    fn fails_closed(&self) -> bool {
        #[cfg(feature = "testing")]
        if self.bug == Bug::NoFailClosed {
            return false;
        }
        true
    }

    /// The instant a confirmation counts from: when its request was sent.
    fn confirmation_start(&self, sent_at: MonoInstant, _arrived: MonoInstant) -> MonoInstant {
        #[cfg(feature = "testing")]
        if self.bug == Bug::ConfirmFromArrival {
            return _arrived;
        }
        sent_at
    }
}

/// One clusterdata read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRead {
    /// The document; `None` when the key is absent or holds JSON `null`.
    pub data: Option<Box<ClusterData>>,
    /// The key's revision (opaque); `None` when the key is absent.
    pub revision: Option<String>,
}

/// Why clusterdata could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The store did not answer (error or timeout).
    Unavailable(String),
    /// The key holds something that is not clusterdata.
    Malformed(String),
}

/// What happened since the last step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Time passed (the proxy started, or `wake_at` was reached).
    Wake,
    /// Something in the store changed.
    StoreChanged,
    /// The result of [`Request::ReadClusterData`].
    Read(Result<ClusterRead, ReadError>),
    /// The result of [`Request::Listen`].
    Listened(Result<(), String>),
    /// The result of [`Request::Resolve`], one entry per destination, in order.
    Resolved(Vec<Result<SocketAddr, String>>),
    /// The result of [`Request::Publish`].
    Published(Result<(), String>),
    /// The answer to an [`Action::AskConfirmation`].
    Confirmation {
        /// The master DB the request asked about.
        master_db: String,
        /// When the request was sent (the instant passed to the step that asked, or later).
        sent_at: MonoInstant,
        /// The keeper's answer.
        answer: ConfirmAnswer,
    },
}

/// What came back from a failsafe confirmation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmAnswer {
    /// The keeper confirmed its DB as master for this lifetime (on its own clock).
    Granted(Duration),
    /// The keeper refused, and why.
    Refused(String),
    /// No usable answer (unreachable, timed out, not authenticated).
    Failed(String),
}

/// IO whose result the machine waits for (at most one at a time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read clusterdata.
    ReadClusterData,
    /// Start listening (the primary listener, and the read-only one when configured).
    Listen,
    /// Resolve these advertised addresses (the master first, then the standbys).
    Resolve(Vec<Destination>),
    /// Publish this proxy's ProxyInfo (with a fresh info UID) under `ttl`.
    Publish {
        /// The proxy generation acknowledged.
        generation: i64,
        /// The timeout the proxy runs on.
        proxy_timeout: Duration,
        /// The TTL of the info.
        ttl: Duration,
    },
}

/// A log line, with its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Log {
    /// A check failed (error); it is retried.
    CheckFailed(String),
    /// Routing nowhere, and why (info; logged when the reason changes).
    NotProxying(String),
    /// Routing to the master again after routing nowhere (info).
    ProxyingTo(SocketAddr),
    /// `proxyTimeout` expired (warning).
    TimedOut,
    /// Publishing the ProxyInfo failed (warning).
    PublishFailed(String),
    /// A standby's address did not resolve; it gets no read-only connections (warning).
    SkippingStandby {
        /// Its advertised host.
        host: String,
        /// Why.
        error: String,
    },
    /// `proxyTimeout` expired, but a failsafe confirmation from the master's keeper is held: the
    /// proxy keeps routing to that master (warning).
    RoutingOnConfirmation {
        /// The master DB confirmed.
        master_db: String,
        /// Its address, where connections keep going.
        master: SocketAddr,
    },
    /// The proxy no longer routes on a failsafe confirmation, and why (info).
    StoppedRoutingOnConfirmation(String),
    /// A failsafe confirmation could not be obtained (warning; logged when the reason changes).
    ConfirmationFailed(String),
}

/// What the proxy does, in order, before starting the step's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// New read-write connections go here (`None`: refuse them). A change closes every
    /// connection proxied so far.
    SetDestination(Option<SocketAddr>),
    /// Read-only routing: spread over `standbys`, else `fallback`, else refuse.
    SetReadOnlyDestinations {
        /// Qualifying standbys.
        standbys: Vec<SocketAddr>,
        /// Where to go when there is none.
        fallback: Option<SocketAddr>,
    },
    /// Hold new read-write connections that have no destination (accept them and let them
    /// wait, at most this long, for the next destination) during a planned switchover; `None`:
    /// stop holding, and close the held ones unless a destination is set (then they go there).
    SetHold(Option<Duration>),
    /// Close the listening sockets.
    StopListening,
    /// A check succeeded (for the last-success metric).
    CheckSucceeded,
    /// Ask the keeper at `address` to confirm `master_db` as master, within `deadline`, beside
    /// the check loop; the answer is an [`Observation::Confirmation`] carrying the instant the
    /// request was sent.
    AskConfirmation {
        /// The keeper's failsafe address (`host:port`).
        address: String,
        /// The master DB to confirm.
        master_db: String,
        /// How long to wait for the answer.
        deadline: Duration,
    },
    /// The proxy starts (`true`) or stops routing on a failsafe confirmation (for a metric).
    RoutingOnConfirmation(bool),
    /// Write a log line.
    Log(Log),
}

/// Why a check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckKind {
    /// A store change: nothing to do when clusterdata did not change.
    Changed,
    /// The periodic check: always applies and publishes.
    Full,
}

/// The last ProxyInfo published successfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Its generation.
    pub generation: i64,
    /// Its timeout.
    pub proxy_timeout: Duration,
}

/// What is left to do once the publish (or the decision not to publish) is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterPublish {
    /// Nothing: routing is already closed; a failed publish does not fail the check.
    Acknowledge,
    /// Route nowhere (this proxy is not enabled); a failed publish fails the check.
    NotEnabled,
    /// Route to the master; a failed publish fails the check and never switches.
    Master {
        /// The master's address.
        master: SocketAddr,
        /// The resolved standbys.
        standbys: Vec<SocketAddr>,
        /// Failsafe mode's view of that master, when the clusterdata enables it.
        failsafe: Option<FailsafeBasis>,
    },
}

/// What a clusterdata with failsafe mode on says about the master a proxy routes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailsafeBasis {
    /// The failsafe timers of its spec.
    pub timers: Timers,
    /// The master DB the proxies route to.
    pub master_db: String,
    /// Where its keeper answers failsafe requests (empty: it does not).
    pub keeper_address: String,
}

impl FailsafeBasis {
    /// The basis in `cd`: `None` when failsafe mode is off (or its timers are invalid) or the
    /// clusterdata names no master DB for the proxies.
    pub fn of(cd: &ClusterData) -> Option<FailsafeBasis> {
        let timers = failsafe::timers_of(cd)?;
        let master_db = &cd.proxy.as_ref()?.spec.master_db_uid;
        let db = cd.dbs.get(master_db)?;
        Some(FailsafeBasis {
            timers,
            master_db: master_db.clone(),
            keeper_address: db.status.failsafe_address.clone(),
        })
    }
}

/// Failsafe mode's state while the proxy routes to a master named by a clusterdata that enables
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failsafe {
    /// The master, from the last successful check.
    pub basis: FailsafeBasis,
    /// Its address, where the proxy routes.
    pub routed: SocketAddr,
    /// The store has become unreadable since: confirmations are asked for.
    pub asking: bool,
    /// No confirmation is asked for before this.
    pub next_ask: MonoInstant,
    /// The latest valid confirmation: when its request was sent, and until when it counts.
    pub confirmed: Option<(MonoInstant, MonoInstant)>,
    /// `proxyTimeout` expired and the proxy routes on the confirmation.
    pub routing: bool,
    /// The last reason no confirmation could be had, logged once while it repeats.
    pub last_error: Option<String>,
}

/// What a check in progress waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The clusterdata read.
    Reading,
    /// Listening, to apply this read afterwards.
    Listening(ClusterRead),
    /// Resolving the master and `standbys`.
    Resolving {
        /// Revision being applied.
        revision: Option<String>,
        /// Generation to acknowledge.
        generation: i64,
        /// The spec's timings.
        timings: SpecTimings,
        /// The standbys being resolved (after the master).
        standbys: Vec<Destination>,
        /// Failsafe mode's view of the master being resolved.
        failsafe: Option<FailsafeBasis>,
    },
    /// Publishing.
    Publishing {
        /// Revision being applied.
        revision: Option<String>,
        /// What is published.
        published: Published,
        /// The spec's timings, adopted after a successful publish.
        timings: SpecTimings,
        /// What comes next.
        then: AfterPublish,
    },
}

/// A check in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Why it runs.
    pub kind: CheckKind,
    /// `proxyTimeout` expired while it ran: its result is stale and is dropped.
    pub stale: bool,
    /// When it started, before its clusterdata read was sent.
    pub started: MonoInstant,
    /// What it waits for.
    pub phase: Phase,
}

/// What the machine remembers between steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// `proxyCheckInterval` in force.
    pub check_interval: Duration,
    /// `proxyTimeout` in force.
    pub proxy_timeout: Duration,
    /// Start of the last check that published (or that ended routing nowhere); the proxy's
    /// start before the first. `proxyTimeout` is counted from here.
    pub fresh_since: MonoInstant,
    /// `proxyTimeout` expired since `fresh_since`.
    pub timed_out: bool,
    /// Clusterdata revision applied by the last successful check (`Some(None)`: key absent);
    /// `None` when the last check did not succeed or the proxy timed out since.
    pub applied_revision: Option<Option<String>>,
    /// Where read-write connections go.
    pub primary: Option<SocketAddr>,
    /// Read-only routing in force (standbys, fallback).
    pub read_only: (Vec<SocketAddr>, Option<SocketAddr>),
    /// The last reason logged for routing nowhere (`None` while routing to the master).
    pub closed_reason: Option<String>,
    /// The last successful publish.
    pub published: Option<Published>,
    /// The next check must publish (never published, a publish failed, or timed out since).
    pub resync: bool,
    /// Listening.
    pub listening: bool,
    /// Holding new connections (a planned switchover), and for how long each may wait.
    pub hold: Option<Duration>,
    /// When the next periodic check is due.
    pub next_full_check: MonoInstant,
    /// The check in progress.
    pub check: Option<Check>,
    /// A check asked for while another runs.
    pub queued: Option<CheckKind>,
    /// Checks failed in a row since the last successful one.
    pub failures: u32,
    /// The error of the last failed check, logged once while it repeats.
    pub last_failure: Option<String>,
    /// No new check starts before this, after a failed one (bounded backoff).
    pub retry_at: MonoInstant,
    /// Failsafe mode, while the proxy routes to a master whose clusterdata enables it.
    pub failsafe: Option<Failsafe>,
}

impl Memory {
    /// The memory of a proxy starting at `now`: its first step runs a full check.
    pub fn new(cfg: &Config, now: MonoInstant) -> Self {
        Memory {
            check_interval: cfg.initial_check_interval,
            proxy_timeout: cfg.initial_proxy_timeout,
            fresh_since: now,
            timed_out: false,
            applied_revision: None,
            primary: None,
            read_only: (Vec::new(), None),
            closed_reason: None,
            published: None,
            resync: true,
            listening: false,
            hold: None,
            next_full_check: now,
            check: None,
            queued: None,
            failures: 0,
            last_failure: None,
            retry_at: now,
            failsafe: None,
        }
    }

    /// When `proxyTimeout` expires, if it has not yet.
    pub fn deadline(&self) -> Option<MonoInstant> {
        (!self.timed_out).then(|| self.fresh_since.saturating_add(self.proxy_timeout))
    }
}

/// The outcome of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// IO to start after the actions; its result is the next observation.
    pub request: Option<Request>,
    /// Memory for the next step.
    pub memory: Memory,
    /// Step again with [`Observation::Wake`] at this instant if nothing else happened first.
    pub wake_at: Option<MonoInstant>,
}

/// One step of the check loop.
pub fn step(cfg: &Config, obs: Observation, memory: Memory, now: MonoInstant) -> Decision {
    let mut m = Machine {
        cfg,
        mem: memory,
        now,
        actions: Vec::new(),
        request: None,
    };
    // The timeout first: a result arriving after it is stale.
    m.check_timeout();
    match obs {
        Observation::Wake => {}
        Observation::StoreChanged => m.queue(CheckKind::Changed),
        Observation::Read(r) => {
            if m.current(|p| matches!(p, Phase::Reading)) {
                m.on_read(r);
            }
        }
        Observation::Listened(r) => {
            if m.current(|p| matches!(p, Phase::Listening(_))) {
                m.on_listened(r);
            }
        }
        Observation::Resolved(r) => {
            if m.current(|p| matches!(p, Phase::Resolving { .. })) {
                m.on_resolved(r);
            }
        }
        Observation::Published(r) => {
            if m.current(|p| matches!(p, Phase::Publishing { .. })) {
                m.on_published(r);
            }
        }
        Observation::Confirmation {
            master_db,
            sent_at,
            answer,
        } => {
            m.on_confirmation(&master_db, sent_at, answer);
            // A refusal may have withdrawn the confirmation routed on.
            m.check_confirmation();
        }
    }
    if m.mem.check.is_none() {
        if now >= m.mem.next_full_check {
            m.queue(CheckKind::Full);
        }
        if now >= m.mem.retry_at
            && let Some(kind) = m.mem.queued.take()
        {
            m.begin(kind);
        }
    }
    m.ask_confirmation();
    let mut wake_at = m.mem.deadline();
    if let Some(w) = m.failsafe_wake() {
        wake_at = Some(wake_at.map_or(w, |d| d.min(w)));
    }
    if m.mem.check.is_none() {
        // A check still queued here waits for the backoff after a failure (`retry_at` is then
        // in the future; a due periodic check is queued too).
        let next = if m.mem.queued.is_some() {
            m.mem.retry_at
        } else {
            m.mem.next_full_check
        };
        wake_at = Some(wake_at.map_or(next, |w| w.min(next)));
    }
    Decision {
        actions: m.actions,
        request: m.request,
        memory: m.mem,
        wake_at,
    }
}

/// The wait before the next check after `failures` failed checks in a row: 200 ms, doubling,
/// at most the smaller of 3 s and the check interval.
pub fn retry_delay(failures: u32, check_interval: Duration) -> Duration {
    let cap = Duration::from_secs(3).min(check_interval);
    let shift = failures.saturating_sub(1).min(16);
    Duration::from_millis(200)
        .saturating_mul(1 << shift)
        .min(cap)
}

struct Machine<'a> {
    cfg: &'a Config,
    mem: Memory,
    now: MonoInstant,
    actions: Vec<Action>,
    request: Option<Request>,
}

impl Machine<'_> {
    fn log(&mut self, l: Log) {
        self.actions.push(Action::Log(l));
    }

    /// Whether a check is in progress in a phase matching `f`. The result of a stale check is
    /// dropped here, and a full check is queued instead. A check is stale when `proxyTimeout`
    /// expired while it ran, or (while timed out already) when `proxyTimeout` has passed since
    /// it started: routing on its result could outlive its own fencing deadline.
    fn current(&mut self, f: impl Fn(&Phase) -> bool) -> bool {
        let timeout = self.mem.proxy_timeout;
        match &self.mem.check {
            Some(c) if f(&c.phase) => {
                if c.stale || self.now >= c.started.saturating_add(timeout) {
                    self.mem.check = None;
                    self.queue(CheckKind::Full);
                    false
                } else {
                    true
                }
            }
            // A result nobody asked for (an executor bug): ignored.
            _ => false,
        }
    }

    fn queue(&mut self, kind: CheckKind) {
        self.mem.queued = self.mem.queued.max(Some(kind));
    }

    fn begin(&mut self, kind: CheckKind) {
        self.mem.check = Some(Check {
            kind,
            stale: false,
            started: self.now,
            phase: Phase::Reading,
        });
        self.request = Some(Request::ReadClusterData);
    }

    fn kind(&self) -> CheckKind {
        self.mem.check.as_ref().map_or(CheckKind::Full, |c| c.kind)
    }

    fn set_phase(&mut self, phase: Phase, request: Request) {
        if let Some(c) = &mut self.mem.check {
            c.phase = phase;
        }
        self.request = Some(request);
    }

    /// Fences a proxy routing on a confirmation that has lapsed (or was withdrawn).
    fn check_confirmation(&mut self) {
        if self.mem.failsafe.as_ref().is_some_and(|f| f.routing) && !self.confirmed() {
            self.stop_routing_on_confirmation("no valid failsafe confirmation");
            self.log(Log::TimedOut);
            self.fence();
        }
    }

    fn check_timeout(&mut self) {
        match self.mem.deadline() {
            Some(deadline) if self.now >= deadline => {}
            _ => return self.check_confirmation(),
        }
        self.mem.timed_out = true;
        self.mem.applied_revision = None;
        self.mem.resync = true;
        if let Some(c) = &mut self.mem.check {
            c.stale = true;
        }
        if self.confirmed()
            && let Some(f) = &mut self.mem.failsafe
        {
            // The master's keeper confirmed its DB: keep routing there, and only there.
            f.routing = true;
            let line = Log::RoutingOnConfirmation {
                master_db: f.basis.master_db.clone(),
                master: f.routed,
            };
            self.log(line);
            self.actions.push(Action::RoutingOnConfirmation(true));
            return;
        }
        self.log(Log::TimedOut);
        self.fence();
    }

    /// Routes nowhere (the fail-closed rule) and stops listening when so configured.
    fn fence(&mut self) {
        if self.cfg.fails_closed() {
            self.close("proxy check timed out".into(), false);
        }
        if self.cfg.stop_listening && self.mem.listening {
            self.mem.listening = false;
            self.actions.push(Action::StopListening);
        }
    }

    /// Whether a valid failsafe confirmation is held, now, for the master the proxy routes to.
    fn confirmed(&self) -> bool {
        self.mem.failsafe.as_ref().is_some_and(|f| {
            self.mem.primary == Some(f.routed)
                && f.confirmed.is_some_and(|(_, until)| self.now < until)
        })
    }

    /// Ends routing on a confirmation (if it was), saying why.
    fn stop_routing_on_confirmation(&mut self, why: &str) {
        if let Some(f) = &mut self.mem.failsafe
            && f.routing
        {
            f.routing = false;
            self.log(Log::StoppedRoutingOnConfirmation(why.to_string()));
            self.actions.push(Action::RoutingOnConfirmation(false));
        }
    }

    /// Forgets every confirmation: the store could be read again.
    fn reset_confirmations(&mut self) {
        self.stop_routing_on_confirmation("the store can be read again");
        if let Some(f) = &mut self.mem.failsafe {
            f.asking = false;
            f.confirmed = None;
            f.next_ask = self.now;
            f.last_error = None;
        }
    }

    /// Starts asking for confirmations: the store could not be read.
    fn start_asking(&mut self) {
        if let Some(f) = &mut self.mem.failsafe
            && self.mem.primary == Some(f.routed)
        {
            f.asking = true;
        }
    }

    /// Asks the master's keeper for a confirmation when one is due.
    fn ask_confirmation(&mut self) {
        let now = self.now;
        // A read that hangs fails no check: ask anyway once no more than a confirmation's
        // lifetime is left before `proxyTimeout` expires.
        let hanging = self.mem.fresh_since.saturating_add(self.mem.proxy_timeout);
        let Some(f) = &mut self.mem.failsafe else {
            return;
        };
        if self.mem.primary != Some(f.routed) {
            return;
        }
        if !f.asking && now >= hanging.saturating_sub(f.basis.timers.confirm_lifetime) {
            f.asking = true;
        }
        if !f.asking || now < f.next_ask {
            return;
        }
        f.next_ask = now + f.basis.timers.confirm_renew;
        let problem = if !self.cfg.confirmations {
            Some("failsafeMode is on but this proxy has no failsafe secret".to_string())
        } else if f.basis.keeper_address.is_empty() {
            Some(format!(
                "the keeper of master db {} has no failsafe address",
                f.basis.master_db
            ))
        } else {
            None
        };
        match problem {
            Some(p) => {
                if f.last_error.as_deref() != Some(p.as_str()) {
                    f.last_error = Some(p.clone());
                    self.log(Log::ConfirmationFailed(p));
                }
            }
            None => {
                let ask = Action::AskConfirmation {
                    address: f.basis.keeper_address.clone(),
                    master_db: f.basis.master_db.clone(),
                    deadline: f.basis.timers.request_timeout,
                };
                self.actions.push(ask);
            }
        }
    }

    /// When failsafe mode next needs a step: the next confirmation request, the end of the
    /// confirmation routed on, or the moment a hanging read makes the proxy ask.
    fn failsafe_wake(&self) -> Option<MonoInstant> {
        let f = self.mem.failsafe.as_ref()?;
        if self.mem.primary != Some(f.routed) {
            return None;
        }
        let mut wake = Vec::with_capacity(2);
        if f.asking {
            if self.cfg.confirmations && !f.basis.keeper_address.is_empty() {
                wake.push(f.next_ask);
            }
        } else if !self.mem.timed_out {
            let hanging = self.mem.fresh_since.saturating_add(self.mem.proxy_timeout);
            wake.push(hanging.saturating_sub(f.basis.timers.confirm_lifetime));
        }
        if f.routing
            && let Some((_, until)) = f.confirmed
        {
            wake.push(until);
        }
        wake.into_iter().filter(|w| *w > self.now).min()
    }

    fn on_confirmation(&mut self, master_db: &str, sent_at: MonoInstant, answer: ConfirmAnswer) {
        let start = self.cfg.confirmation_start(sent_at, self.now);
        let fresh_since = self.mem.fresh_since;
        let Some(f) = &mut self.mem.failsafe else {
            return;
        };
        // Another master's confirmation, or one asked before the last successful check or
        // (an executor bug) in the future: not about what the proxy routes to now.
        if master_db != f.basis.master_db || sent_at < fresh_since || sent_at > self.now {
            return;
        }
        let problem = match answer {
            ConfirmAnswer::Granted(lifetime) => {
                let until = failsafe::confirmed_until(start, lifetime);
                if f.confirmed.is_none_or(|(_, held)| until > held) {
                    f.confirmed = Some((sent_at, until));
                }
                f.last_error = None;
                return;
            }
            ConfirmAnswer::Refused(why) => {
                // A refusal newer than the confirmation held ends it.
                if f.confirmed
                    .is_some_and(|(held_sent, _)| held_sent <= sent_at)
                {
                    f.confirmed = None;
                }
                format!("the keeper refused to confirm master db {master_db}: {why}")
            }
            ConfirmAnswer::Failed(why) => why,
        };
        if f.last_error.as_deref() != Some(problem.as_str()) {
            f.last_error = Some(problem.clone());
            self.log(Log::ConfirmationFailed(problem));
        }
    }

    /// Routes nowhere; logs `reason` when it changed (and `log` is set). Held connections are
    /// closed too.
    fn close(&mut self, reason: String, log: bool) {
        self.close_holding(reason, log, None);
    }

    /// Routes nowhere, holding new connections for `hold` (or closing the held ones: `None`).
    fn close_holding(&mut self, reason: String, log: bool, hold: Option<Duration>) {
        // Holding starts before the destination goes, so no client falls in between.
        if hold.is_some() {
            self.set_hold(hold);
        }
        if self.mem.primary.is_some() {
            self.mem.primary = None;
            self.actions.push(Action::SetDestination(None));
        }
        if self.mem.failsafe.is_some() {
            self.stop_routing_on_confirmation(&reason);
            self.mem.failsafe = None;
        }
        self.set_hold(hold);
        self.set_read_only(Vec::new(), None);
        if self.mem.closed_reason.as_deref() != Some(reason.as_str()) {
            if log {
                self.log(Log::NotProxying(reason.clone()));
            }
            self.mem.closed_reason = Some(reason);
        }
    }

    fn set_hold(&mut self, hold: Option<Duration>) {
        if self.mem.hold != hold {
            self.mem.hold = hold;
            self.actions.push(Action::SetHold(hold));
        }
    }

    fn set_read_only(&mut self, standbys: Vec<SocketAddr>, fallback: Option<SocketAddr>) {
        if self.cfg.read_only.is_none() {
            return;
        }
        let next = (standbys, fallback);
        if self.mem.read_only != next {
            self.actions.push(Action::SetReadOnlyDestinations {
                standbys: next.0.clone(),
                fallback: next.1,
            });
            self.mem.read_only = next;
        }
    }

    fn fail(&mut self, error: String) {
        // A failure that repeats (undecodable clusterdata, an unreachable store) is said once,
        // and each retry waits a little longer, up to the smaller of 3 s and the check interval.
        if self.mem.last_failure.as_deref() != Some(error.as_str()) {
            self.mem.last_failure = Some(error.clone());
            self.log(Log::CheckFailed(error));
        }
        self.start_asking();
        self.mem.failures = self.mem.failures.saturating_add(1);
        self.mem.retry_at = self.now + retry_delay(self.mem.failures, self.mem.check_interval);
        if self.kind() == CheckKind::Full {
            self.mem.next_full_check = self.now + self.mem.check_interval;
        }
        self.mem.check = None;
    }

    fn succeed(&mut self, revision: Option<String>, published: bool) {
        self.reset_confirmations();
        self.actions.push(Action::CheckSucceeded);
        self.mem.failures = 0;
        self.mem.last_failure = None;
        // The fencing clock restarts, from this check's start, only when this check published a
        // new info (the sentinel saw, or will see, something no older than that start), or when
        // it leaves nothing routed (routing again then needs a check that publishes).
        if published || self.mem.primary.is_none() {
            if let Some(c) = &self.mem.check {
                self.mem.fresh_since = c.started;
            }
            self.mem.timed_out = false;
        }
        self.mem.applied_revision = Some(revision);
        if published || self.kind() == CheckKind::Full {
            self.mem.next_full_check = self.now + self.mem.check_interval;
        }
        self.mem.check = None;
    }

    fn on_read(&mut self, r: Result<ClusterRead, ReadError>) {
        let read = match r {
            Ok(read) => read,
            Err(ReadError::Malformed(e)) => {
                // We do not know the master any more: fail closed now.
                self.close(format!("unusable clusterdata: {e}"), true);
                self.mem.applied_revision = None;
                return self.fail(format!("unusable cluster data: {e}"));
            }
            Err(ReadError::Unavailable(e)) => {
                return self.fail(format!("cannot get cluster data: {e}"));
            }
        };
        if self.kind() == CheckKind::Changed
            && self.mem.applied_revision.as_ref() == Some(&read.revision)
        {
            // Clusterdata did not change (our own ProxyInfo write wakes us up too).
            self.mem.check = None;
            return;
        }
        self.mem.applied_revision = None;
        if !self.mem.listening {
            return self.set_phase(Phase::Listening(read), Request::Listen);
        }
        self.apply(read);
    }

    fn on_listened(&mut self, r: Result<(), String>) {
        let Some(Check {
            phase: Phase::Listening(read),
            ..
        }) = self.mem.check.clone()
        else {
            return;
        };
        match r {
            Ok(()) => {
                self.mem.listening = true;
                self.apply(read);
            }
            Err(e) => self.fail(e),
        }
    }

    fn apply(&mut self, read: ClusterRead) {
        let revision = read.revision;
        // A planned switchover has cleared the target: new connections wait for the new master
        // instead of being refused (docs/switchover.md), for at most the switchover's timeout.
        let hold = read
            .data
            .as_deref()
            .and_then(|cd| cd.switchover.as_ref())
            .filter(|sw| sw.holds_connections())
            .map(|sw| sw.timeout.to_std());
        let failsafe = read.data.as_deref().and_then(FailsafeBasis::of);
        match route(read.data.as_deref(), &self.cfg.uid) {
            Route::NoClusterData => {
                self.close(
                    "no clusterdata available, closing connections to master".into(),
                    true,
                );
                self.succeed(revision, false);
            }
            Route::Unusable(e) => {
                self.close(format!("unusable clusterdata: {e}"), true);
                self.fail(format!("unusable cluster data: {e}"));
            }
            Route::Usable {
                generation,
                timings,
                target,
            } => match target {
                Target::Closed(ClosedReason::NotEnabled) => {
                    self.publish(revision, generation, timings, AfterPublish::NotEnabled);
                }
                Target::Closed(reason) => {
                    let hold = hold.filter(|_| reason == ClosedReason::NoMaster);
                    self.close_holding(reason.to_string(), true, hold);
                    self.publish(revision, generation, timings, AfterPublish::Acknowledge);
                }
                Target::Master { master, standbys } => {
                    let mut all = Vec::with_capacity(standbys.len() + 1);
                    all.push(master);
                    all.extend(standbys.iter().cloned());
                    self.set_phase(
                        Phase::Resolving {
                            revision,
                            generation,
                            timings,
                            standbys,
                            failsafe,
                        },
                        Request::Resolve(all),
                    );
                }
            },
        }
    }

    fn on_resolved(&mut self, results: Vec<Result<SocketAddr, String>>) {
        let Some(Check {
            phase:
                Phase::Resolving {
                    revision,
                    generation,
                    timings,
                    standbys,
                    failsafe,
                },
            ..
        }) = self.mem.check.clone()
        else {
            return;
        };
        let mut results = results.into_iter();
        match results.next() {
            Some(Ok(master)) => {
                let mut resolved = Vec::with_capacity(standbys.len());
                for (dest, r) in standbys.into_iter().zip(results) {
                    match r {
                        Ok(addr) => resolved.push(addr),
                        Err(error) => self.log(Log::SkippingStandby {
                            host: dest.host,
                            error,
                        }),
                    }
                }
                let then = AfterPublish::Master {
                    master,
                    standbys: resolved,
                    failsafe,
                };
                self.publish(revision, generation, timings, then);
            }
            other => {
                // An unresolvable master routes nothing, and is not a check failure.
                let e = match other {
                    Some(Err(e)) => e,
                    _ => "no address".into(),
                };
                self.close(format!("cannot resolve master address: {e}"), true);
                self.publish(revision, generation, timings, AfterPublish::Acknowledge);
            }
        }
    }

    /// Publishes `generation` when due, then finishes the check with `then`.
    fn publish(
        &mut self,
        revision: Option<String>,
        generation: i64,
        timings: SpecTimings,
        then: AfterPublish,
    ) {
        let published = Published {
            generation,
            proxy_timeout: publish_timeout(&timings, self.mem.proxy_timeout),
        };
        let switching = matches!(&then, AfterPublish::Master { master, .. } if self.mem.primary != Some(*master));
        let due = self.mem.resync
            || self.kind() == CheckKind::Full
            || self.mem.published != Some(published)
            || switching;
        if due {
            let request = Request::Publish {
                generation,
                proxy_timeout: published.proxy_timeout,
                ttl: proxy_info_ttl(published.proxy_timeout),
            };
            self.set_phase(
                Phase::Publishing {
                    revision,
                    published,
                    timings,
                    then,
                },
                request,
            );
        } else {
            self.finish(revision, timings, then, false);
        }
    }

    fn on_published(&mut self, r: Result<(), String>) {
        let Some(Check {
            phase:
                Phase::Publishing {
                    revision,
                    published,
                    timings,
                    then,
                },
            ..
        }) = self.mem.check.clone()
        else {
            return;
        };
        match r {
            Ok(()) => {
                self.mem.published = Some(published);
                self.mem.resync = false;
                self.finish(revision, timings, then, true);
            }
            Err(e) => {
                self.log(Log::PublishFailed(e.clone()));
                self.mem.resync = true;
                let keep = match &then {
                    // Routing is closed already: nothing is unsafe.
                    AfterPublish::Acknowledge => return self.succeed(revision, false),
                    AfterPublish::NotEnabled => None,
                    AfterPublish::Master { master, .. } => Some(*master),
                };
                if self.mem.primary != keep {
                    // Never switch unannounced; an unchanged route stays (the timeout closes
                    // it if the store stays unreachable).
                    self.close("cannot publish proxy info".into(), true);
                }
                self.fail(format!("failed to update proxyInfo: {e}"));
            }
        }
    }

    fn finish(
        &mut self,
        revision: Option<String>,
        timings: SpecTimings,
        then: AfterPublish,
        published: bool,
    ) {
        if let Some(t) = timings.proxy_timeout {
            self.mem.proxy_timeout = t;
        }
        if let Some(i) = timings.check_interval {
            self.mem.check_interval = i;
        }
        match then {
            AfterPublish::Acknowledge => {}
            AfterPublish::NotEnabled => self.close(ClosedReason::NotEnabled.to_string(), true),
            AfterPublish::Master {
                master,
                standbys,
                failsafe,
            } => {
                // The store was read: confirmations asked for before are over, and failsafe
                // mode follows this clusterdata.
                self.reset_confirmations();
                self.mem.failsafe = failsafe.map(|basis| Failsafe {
                    basis,
                    routed: master,
                    asking: false,
                    next_ask: self.now,
                    confirmed: None,
                    routing: false,
                    last_error: None,
                });
                if self.mem.primary != Some(master) {
                    self.mem.primary = Some(master);
                    self.actions.push(Action::SetDestination(Some(master)));
                }
                // Held connections go to the new master.
                self.set_hold(None);
                if self.mem.closed_reason.take().is_some() {
                    self.log(Log::ProxyingTo(master));
                }
                if let Some(fallback) = self.cfg.read_only {
                    let fallback = match fallback {
                        Fallback::Master => Some(master),
                        Fallback::Refuse => None,
                    };
                    self.set_read_only(standbys, fallback);
                }
            }
        }
        self.succeed(revision, published);
    }
}
