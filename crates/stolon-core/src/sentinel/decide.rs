//! `decide`: one sentinel leader check (docs/architecture.md §6.1-6.3) as a pure function.
//!
//! Observed state + leader memory + now -> next clusterdata (only when something changed), next
//! memory, events and the next instant a timer could change the outcome. No IO, no clock, no
//! randomness: UIDs and the initial keeper choice come from injected sources.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::model::{
    Cluster, ClusterData, ClusterPhase, ClusterSpec, INITIAL_GENERATION, Keeper, KeeperInfo,
    KeeperSpec, KeeperStatus, ProxyInfo,
};
use crate::timestamp::Timestamp;
use crate::uid::UidSource;

use super::classify::Ctx;
use super::event::Event;
use super::memory::{Convergence, InfoHistory, MonoInstant, SentinelMemory};
use super::update::update_cluster;

/// A source of uniform choices, injected so the initial keeper choice is testable.
pub trait Chooser {
    /// An index in `0..n` (`n >= 1`).
    fn choose(&mut self, n: usize) -> usize;
}

/// Always the first candidate.
#[derive(Debug, Clone, Copy, Default)]
pub struct FirstChoice;

impl Chooser for FirstChoice {
    fn choose(&mut self, _n: usize) -> usize {
        0
    }
}

impl<F: FnMut(usize) -> usize> Chooser for F {
    fn choose(&mut self, n: usize) -> usize {
        self(n) % n.max(1)
    }
}

/// Everything one decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct DecideInput<'a> {
    /// Clusterdata as read (None when absent).
    pub cluster_data: Option<&'a ClusterData>,
    /// Every live keeper info, by keeper UID.
    pub keepers_info: &'a BTreeMap<String, KeeperInfo>,
    /// Every live proxy info, by proxy UID.
    pub proxies_info: &'a BTreeMap<String, ProxyInfo>,
    /// The leader's memory (a fresh default right after gaining leadership).
    pub memory: &'a SentinelMemory,
    /// `--initial-cluster-spec`, used only when there is no clusterdata.
    pub initial_spec: Option<&'a ClusterSpec>,
    /// Monotonic now.
    pub now_mono: MonoInstant,
    /// The monotonic instant taken just before the proxy infos were requested (at most
    /// `now_mono`). Proxies are judged active at this instant: an info a proxy committed before
    /// it is in `proxies_info` (docs/invariants.md, "Why a proxy no longer active has fenced
    /// itself").
    pub proxies_read_at: MonoInstant,
    /// Wall-clock now, for changeTime and lastHealthyTime.
    pub now_wall: Timestamp,
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Clusterdata to write (compare-and-swap on the revision read); None = nothing changed.
    pub next: Option<ClusterData>,
    /// Memory for the next decision (keep it even if the write fails).
    pub memory: SentinelMemory,
    /// What was decided or noticed, in order.
    pub events: Vec<Event>,
    /// The earliest monotonic instant at which a timer may change the decision, if any.
    pub wake_at: Option<MonoInstant>,
    /// Proxies judged active in this decision, sorted.
    pub active_proxies: Vec<String>,
}

/// One leader check.
pub fn decide(
    input: &DecideInput<'_>,
    uids: &mut impl UidSource,
    chooser: &mut impl Chooser,
) -> Decision {
    let mut events = Vec::new();
    let now = input.now_mono;
    let Some(prev) = input.cluster_data else {
        let next = input.initial_spec.map(|spec| {
            let cluster = Cluster {
                uid: uids.new_uid(),
                generation: INITIAL_GENERATION,
                change_time: input.now_wall,
                spec: Some(spec.clone()),
                status: crate::model::ClusterStatus {
                    phase: Some(ClusterPhase::Initializing),
                    ..Default::default()
                },
            };
            events.push(Event::ClusterDataCreated {
                cluster_uid: cluster.uid.clone(),
            });
            ClusterData::new(cluster, input.now_wall)
        });
        if next.is_none() {
            events.push(Event::NoClusterData);
        }
        return Decision {
            next,
            memory: input.memory.clone(),
            events,
            wake_at: None,
            active_proxies: Vec::new(),
        };
    };
    let unchanged = |events: Vec<Event>| Decision {
        next: None,
        memory: input.memory.clone(),
        events,
        wake_at: None,
        active_proxies: Vec::new(),
    };
    let spec = match prev.check_usable() {
        Ok(spec) => spec.effective(),
        Err(e) => {
            return unchanged(vec![Event::InvalidClusterData {
                error: e.to_string(),
            }]);
        }
    };
    // Structural problems are not refused here: Stolon's own transitional state (the old master
    // still of role master during a failover) is repaired by fencing below, and anything that
    // stays broken is caught by `validate_invariants` before the runtime writes.

    let mut mem = input.memory.clone();
    let first_run = !mem.initialized;
    if first_run {
        mem = SentinelMemory {
            initialized: true,
            ..Default::default()
        };
        refresh_convergence(&mut mem, prev, now);
    }

    let mut cd = prev.clone();
    let fresh = update_keepers_status(&mut cd, input, &spec, &mut mem, first_run, &mut events);
    let active_proxies = active_proxies(
        input.proxies_info,
        &spec,
        &mut mem,
        input.proxies_read_at.min(now),
        now,
    );

    mem.last_decision = Some(now);
    let ctx_mem = mem.clone();
    let ctx = Ctx {
        spec: &spec,
        mem: &ctx_mem,
        now,
    };
    super::switchover::advance(
        &mut cd,
        &ctx,
        first_run,
        &active_proxies,
        input.proxies_info,
        input.keepers_info,
        input.now_wall,
        &mut events,
    );
    if let Err(e) = update_cluster(
        &mut cd,
        prev,
        &ctx,
        &active_proxies,
        input.proxies_info,
        &fresh,
        input.now_wall,
        uids,
        chooser,
        &mut events,
    ) {
        events.push(Event::CannotDecide { error: e });
        return Decision {
            next: None,
            memory: mem,
            events,
            wake_at: None,
            active_proxies,
        };
    }

    // An operator's `failkeeper` on the master's keeper is kept until it had its effect: if no
    // standby could replace the master this time (none eligible yet), the request stays for the
    // next decision instead of being silently lost (Stolon drops it after one check).
    let master_keeper = cd
        .master_db()
        .and_then(|db| db.spec.as_ref())
        .map(|s| s.keeper_uid.clone());
    for ev in &events {
        if let Event::KeeperForceFailed { keeper } = ev
            && master_keeper.as_deref() == Some(keeper.as_str())
            && let Some(k) = cd.keepers.get_mut(keeper)
        {
            k.status.force_fail = true;
        }
    }

    super::syncloss::remember_losses(&mut mem, prev, &cd, &spec, now);

    // Forget timers of objects that no longer exist.
    mem.keeper_error_since
        .retain(|k, _| cd.keepers.contains_key(k));
    mem.db_error_since.retain(|d, _| cd.dbs.contains_key(d));
    mem.db_not_increasing_xlog
        .retain(|d, _| cd.dbs.contains_key(d));
    refresh_convergence(&mut mem, &cd, now);

    let wake_at = next_wake(&mem, &cd, &spec, input.proxies_info, now);
    let next = finish(cd, prev, input.now_wall);
    Decision {
        next,
        memory: mem,
        events,
        wake_at,
        active_proxies,
    }
}

/// Sets change times of changed objects and returns the document to write, or None if nothing
/// but in-memory fields changed.
fn finish(mut cd: ClusterData, prev: &ClusterData, now: Timestamp) -> Option<ClusterData> {
    for db in cd.dbs.values_mut() {
        db.status.cur_synchronous_standbys.clear();
    }
    let mut prev_clean = prev.clone();
    for db in prev_clean.dbs.values_mut() {
        db.status.cur_synchronous_standbys.clear();
    }
    if cd == prev_clean {
        return None;
    }
    if cd.cluster != prev_clean.cluster
        && let Some(c) = cd.cluster.as_mut()
    {
        c.change_time = now;
    }
    for (uid, k) in cd.keepers.iter_mut() {
        if prev_clean.keepers.get(uid) != Some(k) {
            k.change_time = now;
        }
    }
    for (uid, db) in cd.dbs.iter_mut() {
        if prev_clean.dbs.get(uid) != Some(db) {
            db.change_time = now;
        }
    }
    if cd.proxy != prev_clean.proxy
        && let Some(p) = cd.proxy.as_mut()
    {
        p.change_time = now;
    }
    cd.change_time = now;
    Some(cd)
}

/// Tracks since when every unconverged DB has been at its generation.
fn refresh_convergence(mem: &mut SentinelMemory, cd: &ClusterData, now: MonoInstant) {
    let mut next = BTreeMap::new();
    for db in cd.dbs.values() {
        if db.status.current_generation == db.generation {
            continue;
        }
        let c = match mem.db_convergence.get(&db.uid) {
            Some(c) if c.generation == db.generation => *c,
            _ => Convergence {
                generation: db.generation,
                since: now,
            },
        };
        next.insert(db.uid.clone(), c);
    }
    mem.db_convergence = next;
}

/// Keeper infos judged fresh this round, and which of them are new publishes.
pub(crate) struct Fresh<'a> {
    pub(crate) infos: BTreeMap<String, &'a KeeperInfo>,
}

/// How long after it was first seen a keeper info still counts as fresh: 1.5 `sleepInterval`.
///
/// Stolon uses exactly `sleepInterval`. A live keeper republishes every three quarters of
/// `sleepInterval`, but publishes are jittered (its loop, the store round trip, when the
/// sentinel happens to look), so with the exact window one late publish made a live keeper's DB
/// flap to "no keeper info available". Half an interval of margin absorbs that jitter; a dead
/// keeper is still judged from its last report (the failure clock starts when its last info was
/// first seen), so failure detection is not delayed.
fn info_fresh_window(sleep_interval: Duration) -> Duration {
    sleep_interval + sleep_interval / 2
}

/// Keeper and DB health (docs/architecture.md §6.2).
fn update_keepers_status<'a>(
    cd: &mut ClusterData,
    input: &DecideInput<'a>,
    spec: &crate::model::EffectiveSpec,
    mem: &mut SentinelMemory,
    first_run: bool,
    events: &mut Vec<Event>,
) -> Fresh<'a> {
    let now = input.now_mono;
    let cluster_uid = cd
        .cluster
        .as_ref()
        .map(|c| c.uid.clone())
        .unwrap_or_default();
    let infos: BTreeMap<&String, &KeeperInfo> = input
        .keepers_info
        .iter()
        .filter(|(_, i)| i.cluster_uid == cluster_uid)
        .collect();
    let mut fresh = Fresh {
        infos: BTreeMap::new(),
    };
    if first_run {
        for (uid, info) in &infos {
            mem.keeper_infos.insert(
                (*uid).clone(),
                InfoHistory {
                    info_uid: info.info_uid.clone(),
                    seen: false,
                    first_seen: now,
                },
            );
        }
        return fresh;
    }

    // A sentinel that could not decide for longer than failInterval (the store unreachable or
    // too slow for it as well) did not see the keepers in that time: their silence then is its
    // own blindness, and a keeper still silent is judged from when it could look again.
    let blind = mem
        .last_decision
        .is_some_and(|t| now.saturating_sub(t) > spec.fail_interval.to_std());

    // The last proof of life of each keeper: when its latest info was first seen.
    let last_alive: BTreeMap<String, MonoInstant> = mem
        .keeper_infos
        .iter()
        .filter(|(_, h)| h.seen)
        .map(|(k, h)| (k.clone(), h.first_seen))
        .collect();

    // Freshness: a keeper info counts while its infoUID is new, and for 1.5 sleepInterval after
    // it was first seen (see `info_fresh_window`).
    let window = info_fresh_window(spec.sleep_interval.to_std());
    let mut histories = BTreeMap::new();
    let mut new_publish = BTreeSet::new();
    for (uid, info) in &infos {
        let h = match mem.keeper_infos.get(*uid) {
            Some(h) if h.info_uid == info.info_uid => {
                if h.seen && now.saturating_sub(h.first_seen) <= window {
                    fresh.infos.insert((*uid).clone(), *info);
                }
                h.clone()
            }
            _ => {
                fresh.infos.insert((*uid).clone(), *info);
                new_publish.insert((*uid).clone());
                InfoHistory {
                    info_uid: info.info_uid.clone(),
                    seen: true,
                    first_seen: now,
                }
            }
        };
        histories.insert((*uid).clone(), h);
    }
    mem.keeper_infos = histories;

    // New keepers.
    for (uid, info) in &fresh.infos {
        if !cd.keepers.contains_key(uid) {
            cd.keepers.insert(
                uid.clone(),
                Keeper {
                    uid: uid.clone(),
                    generation: INITIAL_GENERATION,
                    change_time: input.now_wall,
                    spec: Some(KeeperSpec {}),
                    status: KeeperStatus {
                        healthy: true,
                        last_healthy_time: input.now_wall,
                        boot_uuid: info.boot_uuid.clone(),
                        ..Default::default()
                    },
                },
            );
        }
    }

    let fail = spec.fail_interval.to_std();
    for (uid, keeper) in cd.keepers.iter_mut() {
        match fresh.infos.get(uid) {
            Some(info) => {
                keeper.status.can_be_master = info.can_be_master;
                keeper.status.can_be_synchronous_replica = info.can_be_synchronous_replica;
                keeper.status.priority = info.priority;
                keeper.status.boot_uuid = info.boot_uuid.clone();
                keeper.status.postgres_binary_version = info.postgres_binary_version;
                mem.keeper_error_since.remove(uid);
            }
            None => {
                // The failure clock starts at the last proof of life, not when the missing
                // update was noticed (up to 1.5 sleepInterval later): a dead keeper is declared
                // failed failInterval after its last report. Stolon starts it at the noticing.
                let since = if blind {
                    now
                } else {
                    last_alive.get(uid).copied().unwrap_or(now)
                };
                mem.keeper_error_since.entry(uid.clone()).or_insert(since);
            }
        }
        let was_healthy = keeper.status.healthy;
        let mut healthy = mem
            .keeper_error_since
            .get(uid)
            .is_none_or(|since| now.saturating_sub(*since) <= fail);
        if keeper.status.force_fail {
            healthy = false;
            keeper.status.force_fail = false;
            events.push(Event::KeeperForceFailed {
                keeper: uid.clone(),
            });
        }
        if was_healthy && !healthy {
            events.push(Event::KeeperUnhealthy {
                keeper: uid.clone(),
            });
        }
        keeper.status.healthy = healthy;
        if healthy {
            // Refresh lastHealthyTime at most once per sleepInterval, so an idle cluster does
            // not rewrite clusterdata (and wake every component) on every decision.
            let last = keeper.status.last_healthy_time;
            let age_ns = input.now_wall.unix_nanos() - last.unix_nanos();
            if !was_healthy
                || last.is_zero()
                || age_ns >= i128::from(spec.sleep_interval.as_nanos())
            {
                keeper.status.last_healthy_time = input.now_wall;
            }
        }
    }

    // DBs.
    for (db_uid, db) in cd.dbs.iter_mut() {
        let keeper_uid = db
            .spec
            .as_ref()
            .map(|s| s.keeper_uid.clone())
            .unwrap_or_default();
        let mut error = true;
        // Problems are reported when the DB's error timer starts, not on every decision.
        let already_failing = mem.db_error_since.contains_key(db_uid);
        let mut report = |e: Event| {
            if !already_failing {
                events.push(e);
            }
        };
        match fresh.infos.get(&keeper_uid) {
            None => report(Event::NoKeeperInfo {
                db: db_uid.clone(),
                keeper: keeper_uid.clone(),
            }),
            Some(info) => match &info.postgres_state {
                None => report(Event::NoDbState {
                    db: db_uid.clone(),
                    keeper: keeper_uid.clone(),
                }),
                Some(ps) if ps.uid != *db_uid => report(Event::UnexpectedDbUid {
                    db: db_uid.clone(),
                    keeper: keeper_uid.clone(),
                    reported: ps.uid.clone(),
                }),
                Some(ps) => {
                    if new_publish.contains(&keeper_uid) {
                        if db.status.xlog_pos == ps.xlog_pos {
                            *mem.db_not_increasing_xlog
                                .entry(db_uid.clone())
                                .or_insert(0) += 1;
                        } else {
                            mem.db_not_increasing_xlog.remove(db_uid);
                        }
                    }
                    db.status.listen_address = ps.listen_address.clone();
                    db.status.port = ps.port.clone();
                    db.status.failsafe_address = ps.failsafe_address.clone();
                    db.status.current_generation = ps.generation;
                    if ps.healthy {
                        error = false;
                        db.status.system_id = ps.system_id.clone();
                        db.status.timeline_id = ps.timeline_id;
                        db.status.xlog_pos = ps.xlog_pos;
                        db.status.timelines_history = ps.timelines_history.clone();
                        db.status.pg_parameters = ps.pg_parameters.clone();
                        db.status.cur_synchronous_standbys =
                            ps.synchronous_standbys.clone().unwrap_or_default();
                        db.status.older_wal_file = ps.older_wal_file.clone();
                    }
                }
            },
        }
        if error {
            mem.db_error_since.entry(db_uid.clone()).or_insert(now);
        } else {
            mem.db_error_since.remove(db_uid);
        }
    }
    for (db_uid, db) in cd.dbs.iter_mut() {
        let keeper_healthy = db
            .spec
            .as_ref()
            .and_then(|s| cd.keepers.get(&s.keeper_uid))
            .is_some_and(|k| k.status.healthy);
        let db_ok = mem
            .db_error_since
            .get(db_uid)
            .is_none_or(|since| now.saturating_sub(*since) <= fail);
        db.status.healthy = db_ok && keeper_healthy;
    }
    fresh
}

/// Proxies judged active (docs/architecture.md §6.3), sorted by UID: at `read_at`, the instant
/// before their infos were read. An info not seen before is first seen at `now`, after the read
/// returned.
fn active_proxies(
    infos: &BTreeMap<String, ProxyInfo>,
    spec: &crate::model::EffectiveSpec,
    mem: &mut SentinelMemory,
    read_at: MonoInstant,
    now: MonoInstant,
) -> Vec<String> {
    mem.proxy_infos.retain(|uid, _| infos.contains_key(uid));
    let mut active = Vec::new();
    for (uid, info) in infos {
        let window = proxy_active_window(info, spec);
        match mem.proxy_infos.get(uid) {
            Some(h) if h.info_uid == info.info_uid => {
                if read_at.saturating_sub(h.first_seen) <= window {
                    active.push(uid.clone());
                }
            }
            _ => {
                mem.proxy_infos.insert(
                    uid.clone(),
                    InfoHistory {
                        info_uid: info.info_uid.clone(),
                        seen: true,
                        first_seen: now,
                    },
                );
                active.push(uid.clone());
            }
        }
    }
    active
}

fn proxy_timeout(info: &ProxyInfo, spec: &crate::model::EffectiveSpec) -> Duration {
    if info.proxy_timeout > 0 {
        Duration::from_nanos(info.proxy_timeout.unsigned_abs())
    } else {
        spec.proxy_timeout.to_std()
    }
}

/// How long a proxy stays active after its current info was first seen (docs/architecture.md
/// §6.3, docs/invariants.md invariant 2).
///
/// A proxy whose info carries `fencesFromCheckStart` has fenced itself `proxyTimeout`, on its
/// own clock, after the start of the check that wrote that info, which is before the write and
/// so before the sentinel first saw it. On the sentinel's clock that is at most
/// `proxyTimeout × (1 + ρ) / (1 − ρ)` after the first sighting (ρ: the drift bound,
/// [`crate::failsafe::MAX_DRIFT_PPM`]); [`PROXY_REACTION`] more (or the `sleepInterval`, if
/// shorter) leaves the proxy time to act on its deadline (its timer firing, its sockets
/// closing). The sentinel judges at an instant taken before it requested the infos, so a later
/// info, which the proxy commits before its deadline, cannot be missed. Any other proxy
/// (Stolon's) counts its timeout from a successful check without publishing in it, so it keeps
/// Stolon's rule: twice its `proxyTimeout`.
pub fn proxy_active_window(info: &ProxyInfo, spec: &crate::model::EffectiveSpec) -> Duration {
    let timeout = proxy_timeout(info, spec);
    if info.fences_from_check_start {
        stretch_for_drift(timeout).saturating_add(spec.sleep_interval.to_std().min(PROXY_REACTION))
    } else {
        timeout.saturating_mul(2)
    }
}

/// How long a stolon-rs proxy may take, after its fencing deadline, to route nowhere: its timer
/// firing late on a busy host and its client sockets being shut. Both are local to the proxy's
/// host; a host stalled for longer breaks every timeout, this one included.
pub const PROXY_REACTION: Duration = Duration::from_millis(500);

/// `d × (1 + ρ) / (1 − ρ)`, rounded up: a span counted on one clock ends, on any other clock
/// within the drift bound, no later than this.
pub(crate) fn stretch_for_drift(d: Duration) -> Duration {
    let ppm = u128::from(crate::failsafe::MAX_DRIFT_PPM);
    let num = d.as_nanos() * (1_000_000 + ppm);
    let den = 1_000_000 - ppm;
    let nanos = num.div_ceil(den);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The earliest instant after `now` at which a timer expires.
fn next_wake(
    mem: &SentinelMemory,
    cd: &ClusterData,
    spec: &crate::model::EffectiveSpec,
    proxies: &BTreeMap<String, ProxyInfo>,
    now: MonoInstant,
) -> Option<MonoInstant> {
    let tiny = Duration::from_millis(1);
    // A keeper info goes stale just after its freshness window (same window as
    // `update_keepers_status`).
    let info_window = info_fresh_window(spec.sleep_interval.to_std());
    let fail = spec.fail_interval.to_std();
    let mut candidates: Vec<MonoInstant> = Vec::new();
    candidates.extend(
        mem.keeper_infos
            .values()
            .map(|h| h.first_seen + info_window + tiny),
    );
    candidates.extend(mem.keeper_error_since.values().map(|s| *s + fail + tiny));
    candidates.extend(mem.db_error_since.values().map(|s| *s + fail + tiny));
    for (uid, c) in &mem.db_convergence {
        if cd.dbs.contains_key(uid) {
            for t in [
                spec.convergence_timeout,
                spec.init_timeout,
                spec.sync_timeout,
            ] {
                if !t.to_std().is_zero() {
                    candidates.push(c.since + t.to_std() + tiny);
                }
            }
        }
    }
    for (uid, h) in &mem.proxy_infos {
        if let Some(info) = proxies.get(uid) {
            candidates.push(h.first_seen + proxy_active_window(info, spec) + tiny);
        }
    }
    candidates.into_iter().filter(|t| *t > now).min()
}
