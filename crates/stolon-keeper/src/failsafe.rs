//! The keeper's side of failsafe mode (docs/failsafe.md): what it remembers between the
//! requests it answers and its own loop, its answers ([`Responder`]), and the master keeper's
//! acknowledgement rounds.
//!
//! Every decision is `stolon_core::failsafe`'s; this module only holds the inputs those
//! decisions need (the last clusterdata read, what the keeper last observed of its PostgreSQL, its
//! promise not to promote, the acknowledgements it holds) and moves messages through an injected
//! [`Transport`]. Time is the keeper's own monotonic clock: a `tokio::time::Instant` measured from
//! the keeper's start, so a paused virtual clock (the simulation) drives it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use stolon_core::failsafe::wire::{AckRequestMsg, AnswerMsg, ConfirmRequestMsg};
use stolon_core::failsafe::{
    AckRequest, AckView, ConfirmView, LocalInstant, Promise, Timers, ack_valid_until, answer_ack,
    answer_confirm, master_of, timers_of,
};
use stolon_core::keeper::{LocalRole, Observed};
use stolon_core::model::ClusterData;
use stolon_failsafe::{Responder, Transport};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the acknowledgement loop looks again while this keeper is not the master or
/// failsafe mode is off (a clusterdata change wakes it at once anyway).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// What the keeper last observed of its own PostgreSQL, as failsafe mode needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalPg {
    /// Not known, or about to change (an action that may make it a primary is running).
    Unknown,
    /// Its data is a standby's (`standby.signal`), running or not: it cannot take writes.
    Standby,
    /// It runs as a primary.
    Primary,
}

impl LocalPg {
    /// The failsafe view of an observation: data with `standby.signal` is a standby, running
    /// data without it a primary; anything else (not initialised, stopped primary data, a check
    /// that failed) is unknown, which refuses both acknowledgements and confirmations.
    pub fn of(observed: &Observed) -> LocalPg {
        match observed.known() {
            Ok(k) if k.role() == LocalRole::Standby => LocalPg::Standby,
            Ok(k) if k.role() == LocalRole::Master && k.running => LocalPg::Primary,
            _ => LocalPg::Unknown,
        }
    }
}

#[derive(Debug)]
struct Inner {
    cd: Option<ClusterData>,
    local: LocalPg,
    promise: Option<Promise>,
    acks: BTreeMap<String, LocalInstant>,
}

/// A keeper's failsafe state, shared by its HTTP routes (or an in-process transport), its loop
/// and its acknowledgement rounds.
#[derive(Debug)]
pub struct FailsafeState {
    uid: String,
    epoch: tokio::time::Instant,
    started: LocalInstant,
    inner: Mutex<Inner>,
    changed: Notify,
}

/// One acknowledgement round of the master's keeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRound {
    /// The failsafe timers in force.
    pub timers: Timers,
    /// What to ask.
    pub request: AckRequestMsg,
    /// Every other keeper of the clusterdata, with the failsafe address of its DB (`None`: it
    /// has no DB or serves no address, so it gives no acknowledgement).
    pub peers: Vec<(String, Option<String>)>,
}

impl FailsafeState {
    /// The state of keeper `uid`, whose clock counts from `epoch`; the keeper starts now.
    pub fn new(uid: &str, epoch: tokio::time::Instant) -> FailsafeState {
        FailsafeState {
            uid: uid.to_string(),
            epoch,
            started: epoch.elapsed(),
            inner: Mutex::new(Inner {
                cd: None,
                local: LocalPg::Unknown,
                promise: None,
                acks: BTreeMap::new(),
            }),
            changed: Notify::new(),
        }
    }

    /// The keeper's clock.
    pub fn now(&self) -> LocalInstant {
        self.epoch.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the clusterdata just read. The first one with failsafe timers starts the promise
    /// of a keeper that may have acknowledged in an earlier life ([`Promise::at_start`]); one
    /// that does not name this keeper's DB as master drops the acknowledgements it held.
    pub fn set_clusterdata(&self, cd: Option<ClusterData>) {
        let mut g = self.lock();
        let timers = cd.as_ref().and_then(timers_of);
        if g.promise.is_none() && timers.is_some() {
            g.promise = Some(Promise::at_start(self.started, timers));
        }
        if !self.names_us_master(cd.as_ref()) {
            g.acks.clear();
        }
        g.cd = cd;
        drop(g);
        self.changed.notify_one();
    }

    /// Records what the keeper observed of its PostgreSQL.
    pub fn set_local(&self, local: LocalPg) {
        self.lock().local = local;
    }

    /// The promise not to promote (`None`: failsafe mode never was on since the keeper started).
    pub fn promise(&self) -> Option<Promise> {
        self.lock().promise
    }

    /// The acknowledgements held: keeper uid -> valid until (the keeper's clock).
    pub fn acks(&self) -> BTreeMap<String, LocalInstant> {
        self.lock().acks.clone()
    }

    fn names_us_master(&self, cd: Option<&ClusterData>) -> bool {
        cd.and_then(master_of).is_some_and(|(_, k)| k == self.uid)
    }

    /// The acknowledgement round due now: `None` unless the last clusterdata names this keeper's
    /// DB as master and failsafe mode is on.
    pub fn ack_round(&self) -> Option<AckRound> {
        let g = self.lock();
        let cd = g.cd.as_ref()?;
        let timers = timers_of(cd)?;
        let (master_db, keeper) = master_of(cd)?;
        if keeper != self.uid {
            return None;
        }
        let peers = cd
            .keepers
            .keys()
            .filter(|k| **k != self.uid)
            .map(|k| {
                let addr = cd
                    .db_of_keeper(k)
                    .map(|db| db.status.failsafe_address.clone())
                    .filter(|a| !a.is_empty());
                (k.clone(), addr)
            })
            .collect();
        Some(AckRound {
            timers,
            request: AckRequestMsg {
                master_db,
                master_keeper: self.uid.clone(),
            },
            peers,
        })
    }

    /// Records the answer of `peer` to a request sent at `sent_at`: a granted lifetime becomes an
    /// acknowledgement valid until [`ack_valid_until`]; anything else removes the one held. Kept
    /// only while the clusterdata still names this keeper's DB as master.
    pub fn record_ack(&self, peer: &str, sent_at: LocalInstant, granted: Option<Duration>) {
        let mut g = self.lock();
        match granted {
            Some(l) if self.names_us_master(g.cd.as_ref()) => {
                g.acks.insert(peer.to_string(), ack_valid_until(sent_at, l));
            }
            _ => {
                g.acks.remove(peer);
            }
        }
    }
}

impl Responder for FailsafeState {
    fn ack(&self, req: &AckRequestMsg) -> AnswerMsg {
        let mut g = self.lock();
        let now = self.now();
        let view = AckView::from_clusterdata(&self.uid, g.cd.as_ref(), g.local != LocalPg::Standby);
        let promise = g
            .promise
            .unwrap_or_else(|| Promise::at_start(self.started, view.timers));
        let d = answer_ack(
            &view,
            &AckRequest {
                master_db: req.master_db.clone(),
                master_keeper: req.master_keeper.clone(),
            },
            promise,
            now,
        );
        // Without timers nothing was promised; the promise of a started keeper is set once
        // they are known (`set_clusterdata`).
        if view.timers.is_some() {
            g.promise = Some(d.promise);
        }
        AnswerMsg::from_decision(&d.answer)
    }

    fn confirm(&self, req: &ConfirmRequestMsg) -> AnswerMsg {
        let g = self.lock();
        let now = self.now();
        let view =
            ConfirmView::from_clusterdata(&self.uid, g.cd.as_ref(), g.local == LocalPg::Primary);
        AnswerMsg::from_decision(&answer_confirm(&view, &req.master_db, &g.acks, now))
    }
}

/// The master keeper's acknowledgement rounds, until `cancel`: while the last clusterdata names
/// this keeper's DB as master and failsafe mode is on, every `ack_renew` it asks every other
/// keeper concurrently, each request bounded by `request_timeout`. A change of acknowledgement
/// from a peer (granted or lost) is logged once.
pub async fn run_acks(
    state: Arc<FailsafeState>,
    transport: Arc<dyn Transport>,
    cancel: CancellationToken,
) {
    let mut held: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        let round = state.ack_round();
        let period = round.as_ref().map_or(IDLE_POLL, |r| r.timers.ack_renew);
        match round {
            Some(round) => {
                let results = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = ask_all(&state, &transport, round) => r,
                };
                for (peer, outcome) in results {
                    let ok = outcome.is_ok();
                    if held.insert(peer.clone(), ok) != Some(ok) {
                        match outcome {
                            Ok(()) => info!(keeper = %peer, "failsafe acknowledgement granted"),
                            Err(why) => {
                                warn!(keeper = %peer, "no failsafe acknowledgement: {why}")
                            }
                        }
                    }
                }
            }
            None => held.clear(),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
            _ = state.changed.notified() => {}
        }
    }
}

/// Asks every peer of `round` at once and records each answer; returns each peer's outcome.
async fn ask_all(
    state: &Arc<FailsafeState>,
    transport: &Arc<dyn Transport>,
    round: AckRound,
) -> Vec<(String, Result<(), String>)> {
    let deadline = round.timers.request_timeout;
    let mut set = tokio::task::JoinSet::new();
    for (peer, addr) in round.peers {
        let (state, transport, req) = (state.clone(), transport.clone(), round.request.clone());
        set.spawn(async move {
            let sent_at = state.now();
            let outcome = match addr {
                None => Err("it serves no failsafe address".to_string()),
                Some(addr) => {
                    match tokio::time::timeout(deadline, transport.ack(&addr, &req, deadline)).await
                    {
                        Err(_) => Err(format!("no answer from {addr} in time")),
                        Ok(Err(e)) => Err(e.to_string()),
                        Ok(Ok(a)) => match (a.granted(), a.refused) {
                            (Some(l), _) => Ok(l),
                            (None, Some(why)) => Err(format!("refused: {why}")),
                            (None, None) => Err("refused".to_string()),
                        },
                    }
                }
            };
            state.record_ack(&peer, sent_at, outcome.as_ref().ok().copied());
            (peer, outcome.map(|_| ()))
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests;
