//! Failsafe mode: who may keep routing to the master while the store cannot be read.
//!
//! Without failsafe mode a proxy that has not read the store for `proxyTimeout` routes nowhere,
//! although PostgreSQL is fine and nobody can have failed over (a failover needs a store write).
//! With `failsafeMode` on, such a proxy may keep routing to the master it last saw while it holds
//! a fresh *confirmation* from that master's keeper; the master's keeper gives confirmations only
//! while it holds a fresh *acknowledgement* from every other keeper listed in the last clusterdata
//! it saw; and a keeper that acknowledged promises not to promote its database until that
//! acknowledgement has lapsed on its own clock. A keeper whose database the sentinel elects stops
//! acknowledging at once, and promotes only once its last promise is over, by which time every
//! confirmation built on it has lapsed too. The argument, the timers and the limits are written
//! out in docs/failsafe.md.
//!
//! Everything here is pure: each party's time is its own monotonic clock, passed in. No two
//! clocks are compared; the only assumption is that each runs at a rate within
//! [`MAX_DRIFT_PPM`] of real time. A lifetime granted by one party is counted by the party that
//! asked from the moment it *sent* the request (which is before the grant) and shortened by
//! [`Timers::shrink`], so it ends, in real time, no later than the grant does.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::ClusterData;
use crate::model::spec::{EffectiveSpec, SpecError};

/// A party's own monotonic clock reading (time since an arbitrary origin of that party).
pub type LocalInstant = Duration;

/// The largest rate, in parts per million, at which any party's monotonic clock may run faster
/// or slower than real time. Clocks of real machines stay within 100 ppm; 1% leaves room for
/// virtual machines whose clocks are stepped or slewed.
pub const MAX_DRIFT_PPM: u64 = 10_000;

/// The shortest `proxyTimeout` failsafe mode accepts: below it the renewal periods derived from
/// it (a quarter and an eighth of it) leave no room for a round trip on a loaded network.
pub const MIN_PROXY_TIMEOUT: Duration = Duration::from_secs(1);

/// The timers of failsafe mode, all derived from the cluster specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// How long (on its own clock) a keeper promises not to promote after acknowledging:
    /// `proxyTimeout`. It bounds the extra wait of a failover that must let a promise lapse.
    pub ack_lifetime: Duration,
    /// How often the master's keeper renews its acknowledgements: a quarter of their lifetime, so
    /// two lost rounds in a row still leave a valid acknowledgement.
    pub ack_renew: Duration,
    /// The longest confirmation the master's keeper gives a proxy: half the acknowledgement
    /// lifetime (and never more than what is left of the oldest acknowledgement it holds).
    pub confirm_lifetime: Duration,
    /// How often a proxy that cannot read the store renews its confirmation: a quarter of the
    /// confirmation lifetime.
    pub confirm_renew: Duration,
    /// The deadline of one acknowledgement or confirmation request: a quarter of the
    /// acknowledgement lifetime, so a slow acknowledgement is abandoned when the next round is
    /// due (a proxy's confirmation requests may overlap: each counts from its own sending). A
    /// shorter deadline made a loaded machine's scheduling delays drop whole rounds.
    pub request_timeout: Duration,
}

impl Timers {
    /// The timers for a specification; failsafe mode's own validation rules are checked here.
    pub fn from_spec(spec: &EffectiveSpec) -> Result<Timers, SpecError> {
        let proxy_timeout = spec.proxy_timeout.to_std();
        let fail_interval = spec.fail_interval.to_std();
        if proxy_timeout < MIN_PROXY_TIMEOUT {
            return Err(SpecError(format!(
                "proxyTimeout must be at least {}s when failsafeMode is enabled",
                MIN_PROXY_TIMEOUT.as_secs()
            )));
        }
        if proxy_timeout > fail_interval {
            return Err(SpecError(
                "proxyTimeout must not be greater than failInterval when failsafeMode is enabled"
                    .to_string(),
            ));
        }
        Ok(Timers::with_ack_lifetime(proxy_timeout))
    }

    /// The timers derived from an acknowledgement lifetime (see [`Timers::from_spec`]).
    pub fn with_ack_lifetime(ack_lifetime: Duration) -> Timers {
        let confirm_lifetime = ack_lifetime / 2;
        Timers {
            ack_lifetime,
            ack_renew: ack_lifetime / 4,
            confirm_lifetime,
            confirm_renew: confirm_lifetime / 4,
            request_timeout: ack_lifetime / 4,
        }
    }

    /// What the party that asked may count on its own clock of a `lifetime` that another party
    /// granted on its clock: `lifetime × (1 − ρ) / (1 + ρ)`, rounded down. Counted from the
    /// moment the request was sent, it ends in real time no later than the grant does.
    pub fn shrink(lifetime: Duration) -> Duration {
        let num = u128::from(1_000_000 - MAX_DRIFT_PPM);
        let den = u128::from(1_000_000 + MAX_DRIFT_PPM);
        let nanos = lifetime.as_nanos() * num / den;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// Whether failsafe mode is on, and its timers, from a clusterdata: `None` when it is off, when
/// the clusterdata has no spec, or when the spec breaks a failsafe rule (validation refuses such
/// a spec; a component that meets one anyway behaves as without failsafe mode).
pub fn timers_of(cd: &ClusterData) -> Option<Timers> {
    let spec = cd.cluster.as_ref()?.spec.as_ref()?;
    let eff = spec.effective();
    if !eff.failsafe_mode {
        return None;
    }
    Timers::from_spec(&eff).ok()
}

// ---------------------------------------------------------------------------------------------
// A keeper answering an acknowledgement request.

/// What the master's keeper asks of every other keeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRequest {
    /// The DB the asking keeper runs as master.
    pub master_db: String,
    /// The asking keeper.
    pub master_keeper: String,
}

/// What an acknowledging keeper knows when a request arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckView {
    /// This keeper's uid.
    pub keeper_uid: String,
    /// Failsafe timers from the last clusterdata this keeper read (`None`: off or none read).
    pub timers: Option<Timers>,
    /// The master DB that clusterdata names, with the keeper that runs it.
    pub master: Option<(String, String)>,
    /// This keeper's own PostgreSQL is, or may be, a primary (out of recovery, or unknown).
    pub local_may_be_primary: bool,
}

impl AckView {
    /// The view from a clusterdata and what the keeper observed of its own PostgreSQL.
    pub fn from_clusterdata(
        keeper_uid: &str,
        cd: Option<&ClusterData>,
        local_may_be_primary: bool,
    ) -> AckView {
        AckView {
            keeper_uid: keeper_uid.to_string(),
            timers: cd.and_then(timers_of),
            master: cd.and_then(master_of),
            local_may_be_primary,
        }
    }
}

/// The master DB a clusterdata names and the keeper that runs it.
pub fn master_of(cd: &ClusterData) -> Option<(String, String)> {
    let master = &cd.cluster.as_ref()?.status.master;
    let keeper = &cd.dbs.get(master)?.spec.as_ref()?.keeper_uid;
    Some((master.clone(), keeper.clone()))
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Failsafe mode is off in the last clusterdata read (or none was read).
    Disabled,
    /// The last clusterdata read names another master (or none).
    NotTheMaster {
        /// The master DB that clusterdata names, if any.
        named: Option<String>,
    },
    /// The request asks this keeper to acknowledge itself.
    SelfRequest,
    /// This keeper's own PostgreSQL may be a primary: it cannot promise anything about it.
    LocalPrimary,
    /// This keeper's DB has been elected: it acknowledges nothing any more.
    Elected,
    /// (Master side) PostgreSQL is not known to run as a primary here.
    NotPrimary,
    /// (Master side) the proxies' target is not this DB in the last clusterdata.
    NotRouted,
    /// (Master side) no valid acknowledgement from these keepers.
    MissingAcks(Vec<String>),
}

impl Refusal {
    /// A stable, machine-readable name for the kind of refusal, sent next to the text so that
    /// nothing has to recognise a refusal by its wording.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Disabled => "disabled",
            Refusal::NotTheMaster { .. } => "not-the-master",
            Refusal::SelfRequest => "self-request",
            Refusal::LocalPrimary => "local-primary",
            Refusal::Elected => "elected",
            Refusal::NotPrimary => "not-primary",
            Refusal::NotRouted => "not-routed",
            Refusal::MissingAcks(_) => "missing-acks",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Disabled => write!(f, "failsafe mode is not enabled"),
            Refusal::NotTheMaster { named: Some(db) } => {
                write!(f, "the clusterdata names db {db} as master")
            }
            Refusal::NotTheMaster { named: None } => write!(f, "the clusterdata names no master"),
            Refusal::SelfRequest => write!(f, "a keeper does not acknowledge itself"),
            Refusal::LocalPrimary => write!(f, "the local postgres may be a primary"),
            Refusal::Elected => write!(f, "this keeper's db was elected master"),
            Refusal::NotPrimary => write!(f, "postgres is not known to run as a primary"),
            Refusal::NotRouted => write!(f, "the proxies' target is not this db"),
            Refusal::MissingAcks(k) => {
                write!(f, "no valid acknowledgement from keepers {}", k.join(", "))
            }
        }
    }
}

/// What an acknowledging keeper remembers: until when, on its own clock, it promised not to
/// promote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promise {
    /// No promotion before this instant of the keeper's own clock.
    pub until: LocalInstant,
}

impl Promise {
    /// The promise of a keeper process started at `started`: it may have acknowledged in an
    /// earlier life right before it stopped, and remembers nothing of it, so it keeps a promise of
    /// one full lifetime from its start.
    pub fn at_start(started: LocalInstant, timers: Option<Timers>) -> Promise {
        Promise {
            until: started + timers.map_or(Duration::ZERO, |t| t.ack_lifetime),
        }
    }

    /// What is left of the promise at `now` (zero once it is over).
    pub fn remaining(&self, now: LocalInstant) -> Duration {
        self.until.saturating_sub(now)
    }
}

/// The answer to an acknowledgement request, and the promise afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckDecision {
    /// `Ok(lifetime)`: acknowledged for `lifetime` on this keeper's clock.
    pub answer: Result<Duration, Refusal>,
    /// The promise to remember.
    pub promise: Promise,
}

/// Answers an acknowledgement request at `now` (this keeper's clock).
pub fn answer_ack(
    view: &AckView,
    req: &AckRequest,
    promise: Promise,
    now: LocalInstant,
) -> AckDecision {
    let refuse = |r| AckDecision {
        answer: Err(r),
        promise,
    };
    let Some(timers) = view.timers else {
        return refuse(Refusal::Disabled);
    };
    if req.master_keeper == view.keeper_uid {
        return refuse(Refusal::SelfRequest);
    }
    match &view.master {
        Some((_, keeper)) if *keeper == view.keeper_uid => return refuse(Refusal::Elected),
        Some((db, _)) if *db == req.master_db => {}
        other => {
            return refuse(Refusal::NotTheMaster {
                named: other.as_ref().map(|(db, _)| db.clone()),
            });
        }
    }
    if view.local_may_be_primary {
        return refuse(Refusal::LocalPrimary);
    }
    AckDecision {
        answer: Ok(timers.ack_lifetime),
        promise: Promise {
            until: promise.until.max(now + timers.ack_lifetime),
        },
    }
}

/// May a keeper whose DB was elected promote it at `now`? `Err(at)` names the instant of its own
/// clock from which it may.
pub fn may_promote(promise: Promise, now: LocalInstant) -> Result<(), LocalInstant> {
    if now >= promise.until {
        Ok(())
    } else {
        Err(promise.until)
    }
}

// ---------------------------------------------------------------------------------------------
// The master's keeper: holding acknowledgements, answering confirmation requests.

/// Until when (on the master keeper's clock) an acknowledgement counts: from when the request was
/// sent, the granted lifetime shrunk for drift.
pub fn ack_valid_until(sent_at: LocalInstant, granted: Duration) -> LocalInstant {
    sent_at + Timers::shrink(granted)
}

/// What the master's keeper knows when a proxy asks for a confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmView {
    /// This keeper's uid.
    pub keeper_uid: String,
    /// Failsafe timers from the last clusterdata read.
    pub timers: Option<Timers>,
    /// The master DB that clusterdata names, with its keeper.
    pub master: Option<(String, String)>,
    /// The DB the proxies' target names in that clusterdata (empty: none).
    pub proxy_target: String,
    /// Every other keeper that clusterdata lists.
    pub peers: Vec<String>,
    /// PostgreSQL was last observed running as a primary.
    pub local_is_primary: bool,
}

impl ConfirmView {
    /// The view from a clusterdata and what the keeper observed of its own PostgreSQL.
    pub fn from_clusterdata(
        keeper_uid: &str,
        cd: Option<&ClusterData>,
        local_is_primary: bool,
    ) -> ConfirmView {
        ConfirmView {
            keeper_uid: keeper_uid.to_string(),
            timers: cd.and_then(timers_of),
            master: cd.and_then(master_of),
            proxy_target: cd
                .and_then(|cd| cd.proxy.as_ref())
                .map(|p| p.spec.master_db_uid.clone())
                .unwrap_or_default(),
            peers: cd
                .map(|cd| {
                    cd.keepers
                        .keys()
                        .filter(|k| **k != keeper_uid)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            local_is_primary,
        }
    }
}

/// Answers a proxy that asks whether `master_db` still is the master, at `now` (the master
/// keeper's clock), given the acknowledgements it holds (keeper uid -> valid until). `Ok` carries
/// the confirmation's lifetime.
pub fn answer_confirm(
    view: &ConfirmView,
    master_db: &str,
    acks: &BTreeMap<String, LocalInstant>,
    now: LocalInstant,
) -> Result<Duration, Refusal> {
    let timers = view.timers.ok_or(Refusal::Disabled)?;
    match &view.master {
        Some((db, keeper)) if db == master_db && *keeper == view.keeper_uid => {}
        other => {
            return Err(Refusal::NotTheMaster {
                named: other.as_ref().map(|(db, _)| db.clone()),
            });
        }
    }
    if view.proxy_target != master_db {
        return Err(Refusal::NotRouted);
    }
    if !view.local_is_primary {
        return Err(Refusal::NotPrimary);
    }
    let mut lifetime = timers.confirm_lifetime;
    let mut missing = Vec::new();
    for peer in &view.peers {
        match acks.get(peer) {
            Some(until) if *until > now => lifetime = lifetime.min(*until - now),
            _ => missing.push(peer.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(Refusal::MissingAcks(missing));
    }
    Ok(lifetime)
}

/// Until when (on the proxy's clock) a proxy may route on a confirmation: from when it sent the
/// request, the granted lifetime shrunk for drift.
pub fn confirmed_until(sent_at: LocalInstant, granted: Duration) -> LocalInstant {
    sent_at + Timers::shrink(granted)
}

pub mod wire;

#[cfg(test)]
mod tests;
