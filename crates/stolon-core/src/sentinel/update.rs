//! The cluster update of one leader check (docs/architecture.md §6.5-6.7): initialisation,
//! failover, fencing of the old master, the proxy handshake, standby placement, synchronous
//! standbys, and spec propagation.
//!
//! Pure. Deliberate differences from Stolon (docs/differences.md, docs/invariants.md): the most advanced eligible
//! standby is elected; an async candidate must be within `maxStandbyLag` whatever the spec says;
//! at an election the old master stops being a master-type DB at once (it is fenced: role
//! standby without follow config) so clusterdata never names two masters; the proxies are told
//! the new master only once it has converged; keeper choices are sorted, never map order.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    ClusterData, ClusterInitMode, ClusterPhase, ClusterRole, Db, DbInitMode, DbRole, DbSpec,
    DbStatus, FollowConfig, FollowType, INITIAL_GENERATION, ProxyInfo,
};
use crate::timestamp::Timestamp;
use crate::uid::UidSource;

use super::classify::{
    ConvergenceState, Ctx, DbKind, DbStatusKind, FAKE_STANDBY_NAME, Validity, db_kind, keeper_of,
    most_advanced_first, validity,
};
use super::decide::{Chooser, Fresh};
use super::event::Event;

/// Updates `cd` (already carrying this round's health) in place.
#[allow(clippy::too_many_arguments)]
pub(crate) fn update_cluster(
    cd: &mut ClusterData,
    prev: &ClusterData,
    ctx: &Ctx<'_>,
    active_proxies: &[String],
    proxies_info: &BTreeMap<String, ProxyInfo>,
    fresh: &Fresh<'_>,
    now_wall: Timestamp,
    uids: &mut impl UidSource,
    chooser: &mut impl Chooser,
    events: &mut Vec<Event>,
) -> Result<(), String> {
    let phase = cd
        .cluster
        .as_ref()
        .and_then(|c| c.status.phase)
        .unwrap_or(ClusterPhase::Initializing);
    match phase {
        ClusterPhase::Initializing => initializing(cd, ctx, now_wall, uids, chooser, events)?,
        ClusterPhase::Normal => normal(
            cd,
            prev,
            ctx,
            active_proxies,
            proxies_info,
            fresh,
            now_wall,
            uids,
            events,
        )?,
    }

    // Spec propagation (from the cluster spec as updated above) and generation bumps.
    let spec = &cluster_spec(cd);
    let master_uid = master_uid(cd);
    for db in cd.dbs.values_mut() {
        let kind = db_kind(db);
        let s = db.spec.get_or_insert_with(DbSpec::default);
        s.request_timeout = ctx.spec.request_timeout;
        s.max_standbys = ctx.spec.max_standbys;
        s.use_pgrewind = ctx.spec.use_pgrewind;
        s.pg_parameters = spec.pg_parameters.clone().unwrap_or_default();
        s.pg_hba = spec.pg_hba.clone();
        s.additional_wal_senders = ctx.spec.additional_wal_senders;
        if let Some(fc) = s.follow_config.as_mut()
            && fc.kind == Some(FollowType::External)
        {
            let sc = spec.standby_config.clone().unwrap_or_default();
            fc.standby_settings = sc.standby_settings;
            fc.archive_recovery_settings = sc.archive_recovery_settings;
        }
        s.additional_replication_slots = if kind == DbKind::Master && db.uid == master_uid {
            spec.additional_master_replication_slots.clone()
        } else {
            None
        };
    }
    for (uid, db) in cd.dbs.iter_mut() {
        if let Some(old) = prev.dbs.get(uid)
            && old.spec != db.spec
        {
            db.generation = old.generation + 1;
        }
    }
    Ok(())
}

fn master_uid(cd: &ClusterData) -> String {
    cd.cluster
        .as_ref()
        .map(|c| c.status.master.clone())
        .unwrap_or_default()
}

fn set_master_uid(cd: &mut ClusterData, uid: &str) {
    if let Some(c) = cd.cluster.as_mut() {
        c.status.master = uid.to_string();
    }
}

fn cluster_spec(cd: &ClusterData) -> crate::model::ClusterSpec {
    cd.cluster
        .as_ref()
        .and_then(|c| c.spec.clone())
        .unwrap_or_default()
}

/// Initialising phase (§6.5).
fn initializing(
    cd: &mut ClusterData,
    ctx: &Ctx<'_>,
    now_wall: Timestamp,
    uids: &mut impl UidSource,
    chooser: &mut impl Chooser,
    events: &mut Vec<Event>,
) -> Result<(), String> {
    let e = ctx.spec;
    let Some(mode) = e.init_mode else {
        return Err("initMode undefined".into());
    };
    let master = master_uid(cd);
    if master.is_empty() {
        let keeper_uid = match mode {
            ClusterInitMode::Existing => {
                let k = e
                    .spec
                    .existing_config
                    .as_ref()
                    .map(|c| c.keeper_uid.clone())
                    .unwrap_or_default();
                if !cd.keepers.contains_key(&k) {
                    events.push(Event::ExistingKeeperNotAvailable { keeper: k });
                    return Ok(());
                }
                k
            }
            ClusterInitMode::New | ClusterInitMode::Pitr => {
                // Healthy keepers that may be master, of the highest priority, sorted by UID,
                // then the injected choice.
                let candidates = super::priority::initial_master_candidates(cd);
                if candidates.is_empty() {
                    events.push(Event::NoKeepersForInitialMaster);
                    return Ok(());
                }
                let i = chooser.choose(candidates.len()).min(candidates.len() - 1);
                candidates[i].clone()
            }
        };
        let mut spec = DbSpec {
            keeper_uid: keeper_uid.clone(),
            followers: Some(Vec::new()),
            include_previous_config: e.merge_pg_parameters,
            role: Some(DbRole::Master),
            ..Default::default()
        };
        match mode {
            ClusterInitMode::New => {
                spec.init_mode = Some(DbInitMode::New);
                spec.new_config = e.spec.new_config.clone();
            }
            ClusterInitMode::Existing => spec.init_mode = Some(DbInitMode::Existing),
            ClusterInitMode::Pitr => {
                spec.init_mode = Some(DbInitMode::Pitr);
                spec.pitr_config = e.spec.pitr_config.clone();
                if e.role == ClusterRole::Standby {
                    spec.role = Some(DbRole::Standby);
                    spec.follow_config = Some(external_follow(&e.spec));
                }
            }
        }
        let uid = uids.new_uid();
        cd.dbs.insert(
            uid.clone(),
            Db {
                uid: uid.clone(),
                generation: INITIAL_GENERATION,
                change_time: now_wall,
                spec: Some(spec),
                status: DbStatus::default(),
            },
        );
        set_master_uid(cd, &uid);
        events.push(Event::InitializingCluster {
            db: uid,
            keeper: keeper_uid,
        });
        return Ok(());
    }

    let Some(db) = cd.dbs.get(&master).cloned() else {
        return Err(format!("master db {master:?} does not exist"));
    };
    let timeout = match mode {
        ClusterInitMode::New => e.init_timeout.to_std(),
        ClusterInitMode::Existing => e.convergence_timeout.to_std(),
        ClusterInitMode::Pitr => std::time::Duration::ZERO,
    };
    let keeper = keeper_of(&db).to_string();
    match ctx.convergence(&db, timeout) {
        ConvergenceState::Converged if db.status.healthy => {
            if let Some(s) = cd.dbs.get_mut(&master).and_then(|d| d.spec.as_mut()) {
                s.init_mode = Some(DbInitMode::None);
                s.include_previous_config = false;
            }
            if let Some(c) = cd.cluster.as_mut() {
                if e.merge_pg_parameters
                    && let Some(cs) = c.spec.as_mut()
                {
                    cs.pg_parameters = if db.status.pg_parameters.is_empty() {
                        None
                    } else {
                        Some(db.status.pg_parameters.clone())
                    };
                }
                c.status.phase = Some(ClusterPhase::Normal);
            }
            events.push(Event::DbInitialized { db: master, keeper });
        }
        ConvergenceState::Failed => {
            cd.dbs.clear();
            set_master_uid(cd, "");
            events.push(Event::DbInitFailed { db: master, keeper });
        }
        _ => events.push(Event::WaitingForDb { db: master, keeper }),
    }
    Ok(())
}

fn external_follow(spec: &crate::model::ClusterSpec) -> FollowConfig {
    let sc = spec.standby_config.clone().unwrap_or_default();
    FollowConfig {
        kind: Some(FollowType::External),
        db_uid: String::new(),
        standby_settings: sc.standby_settings,
        archive_recovery_settings: sc.archive_recovery_settings,
    }
}

/// Normal phase (§6.6).
#[allow(clippy::too_many_arguments)]
fn normal(
    cd: &mut ClusterData,
    prev: &ClusterData,
    ctx: &Ctx<'_>,
    active_proxies: &[String],
    proxies_info: &BTreeMap<String, ProxyInfo>,
    fresh: &Fresh<'_>,
    now_wall: Timestamp,
    uids: &mut impl UidSource,
    events: &mut Vec<Event>,
) -> Result<(), String> {
    let e = ctx.spec;

    // 1. Dead keepers without a DB.
    let removal_ns = i128::from(e.dead_keeper_removal_interval.as_nanos());
    let dead: Vec<String> = cd
        .keepers
        .values()
        .filter(|k| !k.status.healthy && prev.db_of_keeper(&k.uid).is_none())
        .filter(|k| cd.db_of_keeper(&k.uid).is_none())
        .filter(|k| k.status.last_healthy_time.unix_nanos() + removal_ns < now_wall.unix_nanos())
        .map(|k| k.uid.clone())
        .collect();
    for k in dead {
        cd.keepers.remove(&k);
        events.push(Event::RemovingDeadKeeper { keeper: k });
    }

    // Clusterdata written by Stolon mid-failover keeps the old master at role master: fence
    // every master-type DB that is not the cluster master, so at most one is ever named.
    let cur_uid = master_uid(cd);
    let stray: Vec<String> = cd
        .dbs
        .values()
        .filter(|db| db.uid != cur_uid && db_kind(db) == DbKind::Master)
        .map(|db| db.uid.clone())
        .collect();
    for uid in stray {
        if let Some(s) = cd.dbs.get_mut(&uid).and_then(|d| d.spec.as_mut()) {
            fence(s);
        }
    }

    // 2. Master check.
    let Some(cur) = cd.dbs.get(&cur_uid).cloned() else {
        return Err(format!("master db {cur_uid:?} does not exist"));
    };
    let cur_keeper = keeper_of(&cur).to_string();
    let mut master_ok = true;
    if !cur.status.healthy {
        events.push(Event::MasterDbFailed {
            db: cur_uid.clone(),
            keeper: cur_keeper.clone(),
        });
        master_ok = false;
    }
    if ctx.convergence(&cur, e.convergence_timeout.to_std()) == ConvergenceState::Failed {
        events.push(Event::MasterDbNotConverged {
            db: cur_uid.clone(),
            keeper: cur_keeper.clone(),
        });
        master_ok = false;
    }

    // A quorum-mode failover recorded for another master, or for a master good again, is over.
    super::quorum::drop_stale_record(cd, &cur, ctx, fresh, events);

    // A master stopped by a planned switchover is not failed over (docs/switchover.md).
    if !master_ok && super::switchover::master_stop_planned(cd, &cur_uid, ctx, now_wall) {
        master_ok = true;
    }

    // 3. Failover (none while paused, unless an operator forced the master's keeper failed).
    let mut wanted = cur_uid.clone();
    if !master_ok && super::pause::hold_failover(ctx.spec, events, &cur_uid, &cur_keeper) {
        master_ok = true;
    }
    if !master_ok {
        events.push(Event::FindingNewMaster {
            db: cur_uid.clone(),
        });
        let sync = cur.spec.as_ref().is_some_and(|s| s.synchronous_replication);
        if sync && super::quorum::failover_governs(cd, &cur) {
            // Quorum commit: fence, collect final positions, then elect (quorum.rs).
            if let Some(w) =
                super::quorum::failover(cd, &cur, ctx, active_proxies, proxies_info, fresh, events)
            {
                wanted = w;
            }
        } else {
            stolon_failover(cd, &cur, ctx, sync, &mut wanted, events);
        }
    }

    if let Some(target) = super::switchover::ready_to_promote(cd, ctx, &cur) {
        wanted = target;
    }
    if wanted != cur_uid {
        elect(cd, &cur, &wanted, ctx, events);
        if !super::switchover::after_promotion(cd, &cur_uid, &wanted, events, now_wall) {
            super::history::record_failover(cd, &cur, &wanted, events, now_wall);
        }
    } else {
        same_master(
            cd,
            &cur_uid,
            ctx,
            active_proxies,
            proxies_info,
            now_wall,
            uids,
            events,
        );
    }

    // 6. Followers of the master: every internal standby. Right after an election they still
    // follow the old master and are re-pointed once the new one has converged; listing them now
    // has the new master create their replication slots as it is promoted, so a re-pointed
    // standby finds its slot (instead of failing and retrying after wal_retrieve_retry_interval,
    // 5 s, while synchronous commits wait for it).
    let master = master_uid(cd);
    let followers: Vec<String> = cd
        .dbs
        .values()
        .filter(|db| {
            db.uid != master
                && db
                    .spec
                    .as_ref()
                    .and_then(|s| s.follow_config.as_ref())
                    .is_some_and(|f| f.kind == Some(FollowType::Internal))
        })
        .map(|db| db.uid.clone())
        .collect();
    if let Some(s) = cd.dbs.get_mut(&master).and_then(|d| d.spec.as_mut()) {
        s.followers = Some(followers);
    }
    Ok(())
}

/// Stolon's failover choice (every mode but quorum commit): synchronous, only standbys listed in
/// both the spec and the reported sync sets (invariant 3); asynchronous, only within
/// maxStandbyLag (invariant 6).
fn stolon_failover(
    cd: &ClusterData,
    cur: &Db,
    ctx: &Ctx<'_>,
    sync: bool,
    wanted: &mut String,
    events: &mut Vec<Event>,
) {
    let cur_uid = cur.uid.clone();
    let candidates = ctx.best_new_masters(cd, cur, !sync);
    if candidates.is_empty() {
        events.push(Event::NoEligibleMasters {
            reasons: ctx.new_master_rejections(cd, cur, !sync),
        });
    } else if sync {
        let spec_set: BTreeSet<&String> = cur
            .spec
            .as_ref()
            .and_then(|s| s.synchronous_standbys.as_ref())
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        let status_set: BTreeSet<&String> = cur
            .status
            .synchronous_standbys
            .as_ref()
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        match candidates
            .iter()
            .find(|db| spec_set.contains(&db.uid) && status_set.contains(&db.uid))
        {
            Some(db) => *wanted = db.uid.clone(),
            None => events.push(Event::NoEligibleSyncMasters { db: cur_uid }),
        }
    } else {
        *wanted = candidates[0].uid.clone();
    }
}

/// Fences a former master: no longer master-type, follows nothing, no sync duties. Its keeper
/// must not run it as a primary; it stays electable until the new master has converged.
fn fence(s: &mut DbSpec) {
    s.role = Some(DbRole::Standby);
    s.follow_config = None;
    s.followers = Some(Vec::new());
    s.synchronous_replication = false;
    s.synchronous_standbys = None;
    s.external_synchronous_standbys = None;
    s.synchronous_quorum = None;
}

/// 4. A new master: fence the old one, clear the proxies' target, carry the sync set over.
fn elect(cd: &mut ClusterData, old: &Db, wanted: &str, ctx: &Ctx<'_>, events: &mut Vec<Event>) {
    let e = ctx.spec;
    let keeper = cd.dbs.get(wanted).map(keeper_of).unwrap_or("").to_string();
    events.push(Event::ElectingNewMaster {
        db: wanted.to_string(),
        keeper,
    });
    if let Some(s) = cd.dbs.get_mut(&old.uid).and_then(|d| d.spec.as_mut()) {
        fence(s);
    }
    set_master_uid(cd, wanted);
    let old_sync = old
        .spec
        .as_ref()
        .and_then(|s| s.synchronous_standbys.clone())
        .unwrap_or_default();
    let cluster_spec = cluster_spec(cd);
    // With synchronous replication the new master needs synchronous standbys at once. Stolon
    // puts the old (failed) master in the elected one's place, which blocks commits until later
    // checks replace it; here the other good standbys that may be synchronous take that place
    // directly (they must still re-attach and catch up before a commit is acknowledged, so no
    // acknowledged commit can be lost). Only when there is none does the old master stand in.
    let mut replacements: Vec<String> = Vec::new();
    if e.sync_repl()
        && let Some(new_master) = cd.dbs.get(wanted)
    {
        let keep = old_sync
            .iter()
            .filter(|u| *u != wanted && **u != old.uid)
            .count();
        let room = usize::from(e.max_synchronous_standbys).saturating_sub(keep);
        replacements = ctx
            .best_standbys(cd, new_master, false)
            .into_iter()
            .filter(|db| db.uid != old.uid && !old_sync.contains(&db.uid))
            .filter(|db| {
                cd.keepers
                    .get(keeper_of(db))
                    .is_some_and(|k| k.status.can_be_synchronous_replica != Some(false))
            })
            .take(room)
            .map(|db| db.uid.clone())
            .collect();
    }
    if let Some(s) = cd.dbs.get_mut(wanted).and_then(|d| d.spec.as_mut()) {
        if e.role == ClusterRole::Standby {
            s.role = Some(DbRole::Standby);
            s.follow_config = Some(external_follow(&cluster_spec));
        } else {
            s.role = Some(DbRole::Master);
            s.follow_config = None;
        }
        if e.sync_repl() {
            let mut list: Vec<String> = old_sync
                .iter()
                .flat_map(|u| {
                    if u != wanted {
                        vec![u.clone()]
                    } else if replacements.is_empty() {
                        vec![old.uid.clone()]
                    } else {
                        replacements.clone()
                    }
                })
                .collect();
            list.sort();
            list.dedup();
            let mut external = Vec::new();
            if list.is_empty() && e.min_synchronous_standbys > 0 {
                external.push(FAKE_STANDBY_NAME.to_string());
            }
            s.synchronous_replication = true;
            s.synchronous_standbys = Some(list);
            s.external_synchronous_standbys = Some(external);
        } else {
            s.synchronous_replication = false;
            s.synchronous_standbys = None;
            s.external_synchronous_standbys = None;
            s.synchronous_quorum = None;
        }
    }
    if e.sync_repl() && (e.quorum_commit || super::quorum::failover_governs(cd, old)) {
        super::quorum::on_election(cd, wanted, ctx);
    }
    if let Some(p) = cd.proxy.as_mut()
        && !p.spec.master_db_uid.is_empty()
    {
        p.spec.master_db_uid.clear();
        p.generation += 1;
    }
}

/// 5. The master stays: proxy handshake, fencing removal, standbys, sync standbys.
#[allow(clippy::too_many_arguments)]
fn same_master(
    cd: &mut ClusterData,
    master_uid: &str,
    ctx: &Ctx<'_>,
    active_proxies: &[String],
    proxies_info: &BTreeMap<String, ProxyInfo>,
    now_wall: Timestamp,
    uids: &mut impl UidSource,
    events: &mut Vec<Event>,
) {
    let e = ctx.spec;
    let Some(master) = cd.dbs.get(master_uid).cloned() else {
        return;
    };
    let master_good = master.status.healthy
        && ctx.convergence(&master, e.convergence_timeout.to_std()) == ConvergenceState::Converged;

    // Proxy handshake (invariant 2). Not while a quorum failover of this master is under way:
    // it is dropped first if the master really is back (quorum.rs).
    let quorum_failover = super::quorum::failover_pending(cd, master_uid);
    let snapshot = cd.switchover.clone();
    let proxy = cd.proxy.get_or_insert_with(Default::default);
    if proxy.spec.master_db_uid.is_empty() {
        let converged = active_proxies.iter().all(|uid| {
            proxies_info
                .get(uid)
                .is_some_and(|i| i.generation == proxy.generation)
        });
        if !converged {
            events.push(Event::WaitingForProxies);
        } else if master_good
            && !quorum_failover
            && !super::switchover::blocks_routing(snapshot.as_ref(), master_uid)
        {
            proxy.spec.master_db_uid = master_uid.to_string();
            proxy.spec.enabled_proxies = active_proxies.to_vec();
            proxy.generation += 1;
            events.push(Event::ProxiesRouteToMaster {
                db: master_uid.to_string(),
            });
        } else {
            events.push(Event::WaitingForMasterConvergence {
                db: master_uid.to_string(),
            });
        }
    } else if proxy.spec.enabled_proxies != active_proxies {
        proxy.spec.enabled_proxies = active_proxies.to_vec();
        proxy.generation += 1;
        events.push(Event::EnabledProxiesChanged {
            proxies: active_proxies.join(","),
        });
    }

    if e.role == ClusterRole::Master
        && let Some(s) = cd.dbs.get_mut(master_uid).and_then(|d| d.spec.as_mut())
    {
        s.role = Some(DbRole::Master);
        s.follow_config = None;
    }

    if !master_good || quorum_failover {
        return;
    }

    // a. Remove old masters (fencing from the cluster's point of view).
    let old: Vec<String> = cd
        .dbs
        .values()
        .filter(|db| db.uid != master_uid && db_kind(db) != DbKind::Standby)
        .map(|db| db.uid.clone())
        .collect();
    for uid in old {
        if let Some(db) = cd.dbs.remove(&uid) {
            events.push(Event::RemovingOldMasterDb {
                keeper: keeper_of(&db).to_string(),
                db: uid,
            });
        }
    }
    // b. Invalid DBs; c. DBs that cannot sync.
    let mut to_remove = Vec::new();
    for db in cd.dbs.values() {
        if db.uid == master_uid {
            continue;
        }
        if validity(&master, db) == Validity::Invalid {
            to_remove.push((db.uid.clone(), true));
        } else if !ctx.db_can_sync(&master, db) {
            to_remove.push((db.uid.clone(), false));
        }
    }
    for (uid, invalid) in to_remove {
        if let Some(db) = cd.dbs.remove(&uid) {
            let keeper = keeper_of(&db).to_string();
            events.push(if invalid {
                Event::RemovingInvalidDb { db: uid, keeper }
            } else {
                Event::RemovingDbCannotSync { db: uid, keeper }
            });
        }
    }

    // d. Bucket the standbys.
    let mut good = Vec::new();
    let mut converging = Vec::new();
    for db in cd.dbs.values() {
        if db.uid == master_uid || db_kind(db) != DbKind::Standby {
            continue;
        }
        // Unknown validity (a new DB not yet reported) still counts as converging, so no
        // extra standby is created while it initialises.
        if validity(&master, db) == Validity::Invalid {
            continue;
        }
        match ctx.db_status(cd, db) {
            DbStatusKind::Good => good.push(db.uid.clone()),
            DbStatusKind::Converging => converging.push(db.uid.clone()),
            DbStatusKind::Failed => {}
        }
    }
    for uid in &good {
        if let Some(s) = cd.dbs.get_mut(uid).and_then(|d| d.spec.as_mut()) {
            s.init_mode = Some(DbInitMode::None);
        }
    }

    // e. Synchronous standbys.
    if e.sync_repl() {
        sync_standbys(cd, master_uid, ctx, events);
    } else if let Some(db) = cd.dbs.get_mut(master_uid) {
        if let Some(s) = db.spec.as_mut() {
            s.synchronous_replication = false;
            s.synchronous_standbys = None;
            s.external_synchronous_standbys = None;
            s.synchronous_quorum = None;
        }
        db.status.synchronous_standbys = None;
        db.status.synchronous_quorum = None;
        db.status.quorum_catch_up = None;
    }

    // f. Standby count.
    let sync_list: BTreeSet<String> = cd
        .dbs
        .get(master_uid)
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.synchronous_standbys.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let max = usize::from(e.max_standbys_per_sender);
    if good.len() >= max {
        let standbys: Vec<String> = cd
            .dbs
            .values()
            .filter(|db| db.uid != master_uid && db_kind(db) == DbKind::Standby)
            .map(|db| db.uid.clone())
            .collect();
        for uid in standbys {
            if !good.contains(&uid) && !sync_list.contains(&uid) {
                remove_standby(cd, &uid, events);
            }
        }
        // Surplus good standbys: drop the least advanced non-synchronous ones.
        let mut surplus: Vec<Db> = good
            .iter()
            .filter(|u| !sync_list.contains(*u))
            .filter_map(|u| cd.dbs.get(u).cloned())
            .collect();
        surplus.sort_by(|a, b| most_advanced_first(b, a));
        for db in surplus.iter().take(good.len() - max) {
            remove_standby(cd, &db.uid, events);
        }
    } else {
        let nc = max - (good.len() + converging.len()).min(max);
        let free: Vec<String> = cd
            .keepers
            .values()
            .filter(|k| k.status.healthy && cd.db_of_keeper(&k.uid).is_none())
            .map(|k| k.uid.clone())
            .take(nc)
            .collect();
        for keeper in free {
            let uid = uids.new_uid();
            cd.dbs.insert(
                uid.clone(),
                Db {
                    uid: uid.clone(),
                    generation: INITIAL_GENERATION,
                    change_time: now_wall,
                    spec: Some(DbSpec {
                        keeper_uid: keeper.clone(),
                        init_mode: Some(DbInitMode::Resync),
                        role: Some(DbRole::Standby),
                        followers: Some(Vec::new()),
                        follow_config: Some(FollowConfig {
                            kind: Some(FollowType::Internal),
                            db_uid: master_uid.to_string(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    status: DbStatus::default(),
                },
            );
            events.push(Event::AddingStandby { db: uid, keeper });
        }
    }

    // g. Every standby follows the master, without sync duties.
    for db in cd.dbs.values_mut() {
        if db.uid == master_uid || db_kind(db) != DbKind::Standby {
            continue;
        }
        if let Some(s) = db.spec.as_mut() {
            s.role = Some(DbRole::Standby);
            s.followers = Some(Vec::new());
            s.follow_config = Some(FollowConfig {
                kind: Some(FollowType::Internal),
                db_uid: master_uid.to_string(),
                ..Default::default()
            });
            s.synchronous_replication = false;
            s.synchronous_standbys = None;
            s.external_synchronous_standbys = None;
            s.synchronous_quorum = None;
        }
    }
}

fn remove_standby(cd: &mut ClusterData, uid: &str, events: &mut Vec<Event>) {
    if let Some(db) = cd.dbs.remove(uid) {
        events.push(Event::RemovingStandby {
            keeper: keeper_of(&db).to_string(),
            db: uid.to_string(),
        });
    }
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

/// Keeps the `max` most advanced standbys of `set`, then adds the best other standbys of
/// `master` that may be synchronous (not in `lost`, not lost recently) until `set` holds
/// `fill_to` of them.
pub(super) fn trim_and_fill_sync_set(
    cd: &ClusterData,
    ctx: &Ctx<'_>,
    master: &Db,
    set: &mut Vec<String>,
    lost: &BTreeSet<String>,
    max: usize,
    fill_to: usize,
) {
    if set.len() > max {
        let mut dbs: Vec<&Db> = set.iter().filter_map(|u| cd.dbs.get(u)).collect();
        dbs.sort_by(|a, b| most_advanced_first(a, b));
        *set = dbs.into_iter().take(max).map(|d| d.uid.clone()).collect();
    }
    for db in ctx.best_standbys(cd, master, false) {
        if set.len() >= fill_to {
            break;
        }
        if lost.contains(&db.uid) || super::syncloss::recently_lost(ctx, &db.uid) {
            continue;
        }
        let can_sync = cd
            .keepers
            .get(keeper_of(db))
            .is_some_and(|k| k.status.can_be_synchronous_replica != Some(false));
        if can_sync && !set.contains(&db.uid) {
            set.push(db.uid.clone());
        }
    }
}

/// Synchronous standby management (§6.7), master healthy and converged.
fn sync_standbys(cd: &mut ClusterData, master_uid: &str, ctx: &Ctx<'_>, events: &mut Vec<Event>) {
    let e = ctx.spec;
    let Some(master) = cd.dbs.get(master_uid).cloned() else {
        return;
    };
    if super::quorum::governs(ctx, cd, &master) {
        super::quorum::sync_standbys(cd, master_uid, ctx, events);
        return;
    }
    let (mut min, mut max, mut merge) = (
        usize::from(e.min_synchronous_standbys),
        usize::from(e.max_synchronous_standbys),
        true,
    );
    let version = cd
        .keepers
        .get(keeper_of(&master))
        .map(|k| k.status.postgres_binary_version)
        .unwrap_or_default();
    if version.maj == 9 && version.min <= 5 {
        (min, max, merge) = (1, 1, false);
    }
    let mspec = master.spec.clone().unwrap_or_default();
    let mut spec_list = mspec.synchronous_standbys.clone().unwrap_or_default();
    let mut status = master
        .status
        .synchronous_standbys
        .clone()
        .unwrap_or_default();
    let prev_spec_list = spec_list.clone();
    let prev_external = mspec
        .external_synchronous_standbys
        .clone()
        .unwrap_or_default();

    // 2. Reconcile the reported state with the wanted one.
    if !same_set(&status, &spec_list) {
        status.retain(|u| spec_list.contains(u));
        for u in &master.status.cur_synchronous_standbys {
            if spec_list.contains(u) && !status.contains(u) {
                status.push(u.clone());
            }
        }
        let stale = spec_list.iter().filter(|u| !status.contains(u)).any(|u| {
            cd.dbs
                .get(u)
                .is_none_or(|db| ctx.db_status(cd, db) != DbStatusKind::Good)
        });
        if stale {
            spec_list = status.clone();
            spec_list.sort();
        }
    }

    let mut external = prev_external.clone();
    if !same_set(&status, &spec_list) {
        // 3. Two-step change in progress: wait.
        events.push(Event::WaitingForSyncStandbys {
            db: master_uid.to_string(),
        });
    } else {
        // 4. Compute the new set. Standbys the master reports as no longer in sync are
        // replaced at once, without waiting for their keepers to fail (syncloss.rs).
        let lost = super::syncloss::lost_sync_standbys(ctx, cd, &master, &status);
        let exists = |u: &String| cd.dbs.contains_key(u);
        let mut set: Vec<String> = spec_list
            .iter()
            .filter(|u| exists(u) && !lost.contains(*u))
            .filter(|u| {
                cd.dbs
                    .get(*u)
                    .is_some_and(|db| ctx.db_status(cd, db) == DbStatusKind::Good)
            })
            .cloned()
            .collect();
        // After a loss, enough standbys still known in sync: drop the lost ones first (commits
        // resume at once) and grow the set again in a later round.
        let shrink_only = !lost.is_empty() && set.len() >= min.max(1);
        let fill_to = if shrink_only { 0 } else { max };
        trim_and_fill_sync_set(cd, ctx, &master, &mut set, &lost, max, fill_to);
        if set.len() < min {
            for u in &spec_list {
                if set.len() >= min {
                    break;
                }
                if exists(u) && !set.contains(u) {
                    set.push(u.clone());
                }
            }
        }
        // Still short: keep the standbys the master was told to wait for before step 2 reset
        // the list, unless they failed or are gone, instead of falling back to the fake standby.
        // This is the window right after a failover: the new master has converged (promoted,
        // on a new timeline) and reports no synchronous standby yet, while the listed standby
        // is still on the old timeline (so not among the best standbys) or is converging while
        // its keeper re-points it to the new master (so not Good, which made step 2 reset the
        // list). Stolon drops it here, lists the fake standby for a round or two, then lists
        // it again ([x] -> [fake] -> [x]); commits block in both cases, but with x listed they
        // resume as soon as x re-attaches instead of after the sentinel's next rounds. Safe:
        // listing a standby only makes the master wait for it, only what the master reports in
        // sync (the status) makes a standby electable, and the merge below still keeps every
        // standby known in sync next to a newly listed one (two-step change).
        if set.len() < min {
            for u in &prev_spec_list {
                if set.len() >= min {
                    break;
                }
                let alive = cd
                    .dbs
                    .get(u)
                    .is_some_and(|db| ctx.db_status(cd, db) != DbStatusKind::Failed);
                if alive && !set.contains(u) {
                    set.push(u.clone());
                }
            }
        }
        if merge && set.iter().any(|u| !spec_list.contains(u)) {
            for u in &spec_list {
                if exists(u) && !set.contains(u) {
                    set.push(u.clone());
                }
            }
        }
        external = if set.len() < min {
            vec![FAKE_STANDBY_NAME.to_string()]
        } else {
            Vec::new()
        };
        set.sort();
        spec_list = set;
    }
    status.retain(|u| spec_list.contains(u));

    if spec_list != prev_spec_list || external != prev_external {
        let mut shown = spec_list.clone();
        shown.extend(external.iter().cloned());
        let mut before = prev_spec_list.clone();
        before.extend(prev_external.iter().cloned());
        events.push(Event::SyncStandbysChanged {
            db: master_uid.to_string(),
            previous: before.join(","),
            current: shown.join(","),
        });
    }
    if let Some(db) = cd.dbs.get_mut(master_uid) {
        if let Some(s) = db.spec.as_mut() {
            s.synchronous_replication = true;
            s.synchronous_standbys = Some(spec_list);
            s.external_synchronous_standbys = Some(external);
        }
        db.status.synchronous_standbys = Some(status);
    }
}
