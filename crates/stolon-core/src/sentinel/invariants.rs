//! The safety invariants of docs/invariants.md that one decision step can break, as checks over
//! the clusterdata before and after the step. Used by tests, the simulation and (cheaply) by the
//! runtime before writing.
//!
//! Pure. Checked: 1 (one master-type DB; proxies route only to the named master), 2 (a new target
//! is named only from the cleared state, after every active proxy acknowledged it), 3 and 6 (a
//! failover elects only a standby in both synchronous sets, or with quorum commit a synchronous
//! standby through the final-positions phase or a switchover, or within `maxStandbyLag`), 5
//! (generations only grow, and grow with every DB spec change).

use std::collections::BTreeMap;

use crate::model::{ClusterData, ProxyInfo};

use super::classify::{DbKind, db_kind};

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    /// Invariant 1.
    #[error("invariant 1: {0}")]
    OneMaster(String),
    /// Invariant 2.
    #[error("invariant 2: {0}")]
    ProxyHandshake(String),
    /// Invariant 3.
    #[error("invariant 3: {0}")]
    SyncElection(String),
    /// Invariant 5.
    #[error("invariant 5: {0}")]
    Generation(String),
    /// Invariant 6.
    #[error("invariant 6: {0}")]
    Lag(String),
}

fn master_of(cd: &ClusterData) -> &str {
    cd.cluster
        .as_ref()
        .map(|c| c.status.master.as_str())
        .unwrap_or("")
}

fn proxy_target(cd: &ClusterData) -> &str {
    cd.proxy
        .as_ref()
        .map(|p| p.spec.master_db_uid.as_str())
        .unwrap_or("")
}

fn proxy_generation(cd: &ClusterData) -> i64 {
    cd.proxy.as_ref().map(|p| p.generation).unwrap_or(0)
}

/// Checks invariants 1, 3, 5, 6 and the structural part of 2 for the step `prev` -> `next`.
pub fn validate_invariants(
    prev: Option<&ClusterData>,
    next: &ClusterData,
) -> Result<(), InvariantViolation> {
    // 1.
    let masters: Vec<&String> = next
        .dbs
        .values()
        .filter(|db| db_kind(db) == DbKind::Master)
        .map(|db| &db.uid)
        .collect();
    if masters.len() > 1 {
        return Err(InvariantViolation::OneMaster(format!(
            "{} master-type dbs: {masters:?}",
            masters.len()
        )));
    }
    let master = master_of(next);
    if let Some(m) = masters.first()
        && m.as_str() != master
    {
        return Err(InvariantViolation::OneMaster(format!(
            "master-type db {m} is not the cluster master {master:?}"
        )));
    }
    let target = proxy_target(next);
    if !target.is_empty() && target != master {
        return Err(InvariantViolation::OneMaster(format!(
            "proxies route to {target}, the master is {master:?}"
        )));
    }
    next.validate()
        .map_err(|e| InvariantViolation::OneMaster(e.to_string()))?;

    let Some(prev) = prev else {
        return Ok(());
    };

    // 2 (structural): a new target only from the cleared state, with a generation bump.
    let prev_target = proxy_target(prev);
    if !target.is_empty() && target != prev_target {
        if !prev_target.is_empty() {
            return Err(InvariantViolation::ProxyHandshake(format!(
                "target moved from {prev_target} to {target} without clearing it first"
            )));
        }
        if proxy_generation(next) <= proxy_generation(prev) {
            return Err(InvariantViolation::ProxyHandshake(
                "target named without a generation bump".into(),
            ));
        }
    }
    if target.is_empty()
        && !prev_target.is_empty()
        && proxy_generation(next) <= proxy_generation(prev)
    {
        return Err(InvariantViolation::ProxyHandshake(
            "target cleared without a generation bump".into(),
        ));
    }

    // 5.
    if proxy_generation(next) < proxy_generation(prev) {
        return Err(InvariantViolation::Generation(
            "proxy generation went down".into(),
        ));
    }
    if let (Some(a), Some(b)) = (&prev.cluster, &next.cluster)
        && b.generation < a.generation
    {
        return Err(InvariantViolation::Generation(
            "cluster generation went down".into(),
        ));
    }
    for (uid, db) in &next.dbs {
        if let Some(old) = prev.dbs.get(uid) {
            if db.generation < old.generation {
                return Err(InvariantViolation::Generation(format!(
                    "db {uid} generation {} -> {}",
                    old.generation, db.generation
                )));
            }
            if db.spec != old.spec && db.generation == old.generation {
                return Err(InvariantViolation::Generation(format!(
                    "db {uid} spec changed without a generation bump"
                )));
            }
        }
    }

    // 3 and 6: a failover.
    let prev_master = master_of(prev);
    if !prev_master.is_empty() && !master.is_empty() && master != prev_master {
        let Some(old) = prev.dbs.get(prev_master) else {
            return Ok(());
        };
        let Some(new) = next.dbs.get(master) else {
            return Err(InvariantViolation::OneMaster(format!(
                "new master {master} does not exist"
            )));
        };
        let old_now = next.dbs.get(prev_master).unwrap_or(old);
        let old_spec = old.spec.clone().unwrap_or_default();
        let quorum = old_spec.synchronous_quorum.is_some()
            || old.status.synchronous_quorum.is_some()
            || old.status.quorum_catch_up.is_some();
        if old_spec.synchronous_replication && quorum {
            // Quorum commit (docs/synchronous-replication.md): a member of either set, elected
            // from the final positions of a quorum failover, or the target of a switchover
            // (whose clean stop it caught up with).
            let member = old_spec
                .synchronous_standbys
                .iter()
                .chain(old.status.synchronous_standbys.iter())
                .flatten()
                .any(|u| *u == new.uid);
            let from_positions = prev.quorum_failover.as_ref().is_some_and(|r| {
                r.master_db_uid == old.uid
                    && r.phase == crate::model::QuorumFailoverPhase::Positions
                    && r.generations.contains_key(&new.uid)
            });
            let switchover = prev
                .switchover
                .as_ref()
                .is_some_and(|s| s.target_db == new.uid && s.old_master_db == old.uid);
            if !member || !(from_positions || switchover) {
                return Err(InvariantViolation::SyncElection(format!(
                    "elected {} outside a quorum failover's final positions of {} (spec {:?}, \
                     status {:?})",
                    new.uid,
                    old.uid,
                    old_spec.synchronous_standbys,
                    old.status.synchronous_standbys
                )));
            }
        } else if old_spec.synchronous_replication {
            let in_spec = old_spec
                .synchronous_standbys
                .as_ref()
                .is_some_and(|v| v.contains(&new.uid));
            let in_status = old
                .status
                .synchronous_standbys
                .as_ref()
                .is_some_and(|v| v.contains(&new.uid));
            if !(in_spec && in_status) {
                return Err(InvariantViolation::SyncElection(format!(
                    "elected {} not in both sync sets of {} (spec {:?}, status {:?})",
                    new.uid,
                    old.uid,
                    old_spec.synchronous_standbys,
                    old.status.synchronous_standbys
                )));
            }
        } else {
            let max_lag = next
                .cluster
                .as_ref()
                .and_then(|c| c.spec.as_ref())
                .map(|s| s.effective().max_standby_lag)
                .unwrap_or_default();
            let lag = i128::from(old_now.status.xlog_pos) - i128::from(new.status.xlog_pos);
            if lag > i128::from(max_lag) {
                return Err(InvariantViolation::Lag(format!(
                    "elected {} lagging {lag} bytes behind {} (max {max_lag})",
                    new.uid, old.uid
                )));
            }
        }
    }
    Ok(())
}

/// Invariant 2 in full: when `next` names a new proxy target, every proxy in `active` reported
/// the generation of the cleared target in `prev`.
pub fn validate_handshake(
    prev: &ClusterData,
    next: &ClusterData,
    proxies_info: &BTreeMap<String, ProxyInfo>,
    active: &[String],
) -> Result<(), InvariantViolation> {
    let target = proxy_target(next);
    if target.is_empty() || target == proxy_target(prev) {
        return Ok(());
    }
    let expected = proxy_generation(prev);
    for uid in active {
        let reported = proxies_info.get(uid).map(|i| i.generation);
        if reported != Some(expected) {
            return Err(InvariantViolation::ProxyHandshake(format!(
                "named {target} while proxy {uid} reports generation {reported:?}, not {expected}"
            )));
        }
    }
    Ok(())
}
