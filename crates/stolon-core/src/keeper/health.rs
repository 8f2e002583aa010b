//! The keeper's HTTP health checks, in the style of Patroni's REST API, for load balancers and
//! Kubernetes probes: `/health`, `/primary` (also `/master`, `/read-write`), `/replica` (also
//! `/standby`), `/read-only`, with an optional `?lag=<size>` limit on the replica checks.
//!
//! Pure: the keeper hands in its last observation, how long ago it was refreshed and the last
//! clusterdata it read; [`answer`] returns the status code and a one-object JSON body. A check
//! passes only on positive evidence (fail closed): an old or missing observation, an instance
//! the clusterdata does not assign to this keeper, or a primary the clusterdata no longer names
//! all answer 503.

use std::time::Duration;

use serde::Serialize;

use crate::model::{ClusterData, DbRole, PostgresState};

use super::policy::observation_is_stale;

/// One health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// PostgreSQL runs and answers the keeper's state queries.
    Health,
    /// Healthy, not in recovery, and the clusterdata names this keeper's DB as the master.
    Primary,
    /// Healthy, in recovery, assigned a DB that follows something (a standby, or a standby
    /// cluster's master), and within `max_lag` bytes of the master when given.
    Replica {
        /// Largest accepted lag behind the master's last reported position, in bytes.
        max_lag: Option<u64>,
    },
    /// [`Check::Primary`] or [`Check::Replica`] passes.
    ReadOnly {
        /// As for [`Check::Replica`].
        max_lag: Option<u64>,
    },
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::Health => "health",
            Check::Primary => "primary",
            Check::Replica { .. } => "replica",
            Check::ReadOnly { .. } => "read-only",
        }
    }
}

/// Parses a request target (`/replica?lag=16MB`). `Ok(None)`: not a health check path.
/// `Err`: a health check path with a malformed query (one line, for a 400 answer).
pub fn parse_check(target: &str) -> Result<Option<Check>, String> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let lag = || -> Result<Option<u64>, String> {
        let mut lag = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("lag", v)) => lag = Some(parse_size(v)?),
                _ => {
                    return Err(format!(
                        "unknown query parameter {pair:?} (only lag=<size>)"
                    ));
                }
            }
        }
        Ok(lag)
    };
    let no_query = || -> Result<(), String> {
        if query.is_empty() {
            Ok(())
        } else {
            Err(format!("{path} takes no query parameters"))
        }
    };
    Ok(Some(match path {
        "/health" => {
            no_query()?;
            Check::Health
        }
        "/primary" | "/master" | "/read-write" => {
            no_query()?;
            Check::Primary
        }
        "/replica" | "/standby" => Check::Replica { max_lag: lag()? },
        "/read-only" => Check::ReadOnly { max_lag: lag()? },
        _ => return Ok(None),
    }))
}

/// A size in bytes: digits with an optional unit `B`, `kB`, `MB`, `GB`, `TB` (1024-based, as
/// PostgreSQL's memory units).
fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("lag {s:?} is not a size (bytes, or a number with kB, MB, GB or TB)");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// What the keeper knows when a check arrives.
#[derive(Debug, Clone, Copy)]
pub struct LocalView<'a> {
    /// This keeper's UID.
    pub keeper_uid: &'a str,
    /// The keeper loop's last observation of its PostgreSQL (`None`: none yet).
    pub state: Option<&'a PostgresState>,
    /// Whether the instance was in recovery at that observation (`None`: unknown).
    pub in_recovery: Option<bool>,
    /// How long ago the keeper loop refreshed the observation.
    pub since_refresh: Duration,
    /// The cluster's `sleepInterval` (the observation goes stale after three).
    pub sleep_interval: Duration,
    /// The last clusterdata the keeper read.
    pub cd: Option<&'a ClusterData>,
}

/// The answer to a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status: 200 when the check passes, 503 when it does not.
    pub status: u16,
    /// One JSON object describing the instance and, on 503, why.
    pub body: String,
}

#[derive(Serialize)]
struct Body<'a> {
    check: &'a str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    role: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    assigned_role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeline: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    xlog_pos: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lag: Option<u64>,
}

/// Answers `check` from `view`.
pub fn answer(check: Check, view: &LocalView<'_>) -> Answer {
    let facts = Facts::of(view);
    let verdict = match check {
        Check::Health => facts.healthy(),
        Check::Primary => facts.primary(),
        Check::Replica { max_lag } => facts.replica(max_lag),
        Check::ReadOnly { max_lag } => match facts.primary() {
            Ok(()) => Ok(()),
            Err(not_primary) => facts
                .replica(max_lag)
                .map_err(|not_replica| format!("{not_primary}; {not_replica}")),
        },
    };
    let ok = verdict.is_ok();
    let healthy = facts.healthy().is_ok();
    let body = Body {
        check: check.name(),
        ok,
        reason: verdict.err(),
        role: match (healthy, view.in_recovery) {
            (true, Some(false)) => "primary",
            (true, Some(true)) => "standby",
            _ => "unknown",
        },
        assigned_role: facts.assigned.map(|r| match r {
            DbRole::Master => "master",
            DbRole::Standby => "standby",
        }),
        timeline: facts.state.map(|s| s.timeline_id).filter(|t| *t > 0),
        xlog_pos: facts.state.map(|s| s.xlog_pos).filter(|p| *p > 0),
        lag: facts.lag(),
    };
    Answer {
        status: if ok { 200 } else { 503 },
        // Serializing plain strings and integers cannot fail.
        body: serde_json::to_string(&body).unwrap_or_default(),
    }
}

/// The pieces every check is built from.
struct Facts<'a> {
    view: &'a LocalView<'a>,
    state: Option<&'a PostgresState>,
    /// The role the clusterdata assigns to the DB of this keeper, when that DB is the local
    /// instance.
    assigned: Option<DbRole>,
    /// That DB has something to follow (a DB of the cluster, or the remote cluster of a
    /// standby cluster's master). A fenced old master follows nothing.
    follows: bool,
    /// The clusterdata names this keeper's local DB as the master.
    is_cluster_master: bool,
    /// The master's last reported WAL position, when it is another keeper's DB.
    master_xlog_pos: Option<u64>,
}

impl<'a> Facts<'a> {
    fn of(view: &'a LocalView<'a>) -> Self {
        let state = view.state;
        let local_uid = state.map(|s| s.uid.as_str()).unwrap_or("");
        let mine = view
            .cd
            .and_then(|cd| cd.db_of_keeper(view.keeper_uid))
            .filter(|db| !local_uid.is_empty() && db.uid == local_uid);
        let master = view.cd.and_then(ClusterData::master_db);
        Facts {
            view,
            state,
            assigned: mine.and_then(|db| db.spec.as_ref()).and_then(|s| s.role),
            follows: mine
                .and_then(|db| db.spec.as_ref())
                .is_some_and(|s| s.follow_config.is_some()),
            is_cluster_master: mine.is_some_and(|db| master.is_some_and(|m| m.uid == db.uid)),
            master_xlog_pos: master
                .filter(|m| Some(m.uid.as_str()) != mine.map(|d| d.uid.as_str()))
                .map(|m| m.status.xlog_pos)
                .filter(|p| *p > 0),
        }
    }

    fn healthy(&self) -> Result<(), String> {
        let Some(state) = self.state else {
            return Err("no observation of postgres yet".into());
        };
        if observation_is_stale(self.view.since_refresh, self.view.sleep_interval) {
            return Err(format!(
                "the keeper's last observation of postgres is {:.1}s old",
                self.view.since_refresh.as_secs_f64()
            ));
        }
        if !state.healthy {
            return Err("postgres is not running or does not answer".into());
        }
        Ok(())
    }

    fn primary(&self) -> Result<(), String> {
        self.healthy()?;
        match self.view.in_recovery {
            Some(false) => {}
            Some(true) => return Err("postgres is in recovery".into()),
            None => return Err("unknown whether postgres is in recovery".into()),
        }
        if self.view.cd.is_none() {
            return Err("no clusterdata read yet".into());
        }
        if !self.is_cluster_master || self.assigned != Some(DbRole::Master) {
            return Err("the clusterdata does not name this keeper's db as the master".into());
        }
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        let own = self.state?.xlog_pos;
        Some(self.master_xlog_pos?.saturating_sub(own))
    }

    fn replica(&self, max_lag: Option<u64>) -> Result<(), String> {
        self.healthy()?;
        match self.view.in_recovery {
            Some(true) => {}
            Some(false) => return Err("postgres is not in recovery".into()),
            None => return Err("unknown whether postgres is in recovery".into()),
        }
        if self.assigned.is_none() {
            return Err("the clusterdata assigns this keeper no db, or another one".into());
        }
        if !self.follows {
            return Err("this keeper's db follows nothing (a fenced former master)".into());
        }
        if let Some(max) = max_lag {
            match self.lag() {
                None => return Err("lag unknown: no master position in the clusterdata".into()),
                Some(lag) if lag > max => {
                    return Err(format!("{lag} bytes behind the master (limit {max})"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    /// k1's db1 is the master at 0x5000; k2's db2 follows it at 0x4000; k3's db3 is a fenced
    /// former master (a standby following nothing).
    fn cd() -> ClusterData {
        serde_json::from_value(serde_json::json!({
            "formatVersion": 1,
            "cluster": {"uid": "c", "generation": 1, "spec": {},
                        "status": {"phase": "normal", "master": "db1"}},
            "keepers": {},
            "dbs": {
                "db1": {"uid": "db1", "generation": 1,
                        "spec": {"keeperUID": "k1", "role": "master"},
                        "status": {"xLogPos": 0x5000}},
                "db2": {"uid": "db2", "generation": 1,
                        "spec": {"keeperUID": "k2", "role": "standby",
                                 "followConfig": {"type": "internal", "dbuid": "db1"}},
                        "status": {"xLogPos": 0x4000}},
                "db3": {"uid": "db3", "generation": 1,
                        "spec": {"keeperUID": "k3", "role": "standby"}}
            },
            "proxy": {}
        }))
        .expect("test clusterdata")
    }

    fn state(uid: &str, xlog_pos: u64, healthy: bool) -> PostgresState {
        PostgresState {
            uid: uid.into(),
            healthy,
            timeline_id: 1,
            xlog_pos,
            ..Default::default()
        }
    }

    struct Case {
        keeper: &'static str,
        state: Option<PostgresState>,
        in_recovery: Option<bool>,
        since_refresh: Duration,
        cd: Option<ClusterData>,
    }

    impl Case {
        fn new(keeper: &'static str, state: PostgresState, in_recovery: bool) -> Self {
            Case {
                keeper,
                state: Some(state),
                in_recovery: Some(in_recovery),
                since_refresh: SEC,
                cd: Some(cd()),
            }
        }
        fn ask(&self, target: &str) -> (u16, serde_json::Value) {
            let check = parse_check(target).expect("valid").expect("a check");
            let a = answer(
                check,
                &LocalView {
                    keeper_uid: self.keeper,
                    state: self.state.as_ref(),
                    in_recovery: self.in_recovery,
                    since_refresh: self.since_refresh,
                    sleep_interval: 5 * SEC,
                    cd: self.cd.as_ref(),
                },
            );
            (a.status, serde_json::from_str(&a.body).expect("json body"))
        }
        fn codes(&self) -> [u16; 4] {
            ["/health", "/primary", "/replica", "/read-only"].map(|t| self.ask(t).0)
        }
    }

    #[test]
    fn the_master_passes_primary_and_read_only_only() {
        let c = Case::new("k1", state("db1", 0x5000, true), false);
        assert_eq!(c.codes(), [200, 200, 503, 200]);
        let (_, body) = c.ask("/primary");
        assert_eq!(
            body,
            serde_json::json!({"check": "primary", "ok": true, "role": "primary",
                               "assigned_role": "master", "timeline": 1, "xlog_pos": 0x5000})
        );
        for alias in ["/master", "/read-write"] {
            assert_eq!(c.ask(alias).0, 200);
        }
    }

    #[test]
    fn a_standby_passes_replica_and_read_only_with_its_lag() {
        let c = Case::new("k2", state("db2", 0x4000, true), true);
        assert_eq!(c.codes(), [200, 503, 200, 200]);
        assert_eq!(c.ask("/standby").0, 200);
        let (code, body) = c.ask("/replica?lag=4096");
        assert_eq!(code, 200);
        assert_eq!(body["lag"], 0x1000);
        let (code, body) = c.ask("/replica?lag=4095");
        assert_eq!(code, 503);
        assert_eq!(body["reason"], "4096 bytes behind the master (limit 4095)");
        assert_eq!(c.ask("/read-only?lag=1kB").0, 503);
        assert_eq!(c.ask("/read-only?lag=1MB").0, 200);
        let (_, body) = c.ask("/primary");
        assert_eq!(body["reason"], "postgres is in recovery");
    }

    #[test]
    fn an_old_primary_the_clusterdata_replaced_fails_primary() {
        // k1 still runs a primary, but the sentinel made db2 the master.
        let mut c = Case::new("k1", state("db1", 0x5000, true), false);
        let cd = c.cd.as_mut().expect("cd");
        cd.cluster.as_mut().expect("cluster").status.master = "db2".into();
        let (code, body) = c.ask("/primary");
        assert_eq!(code, 503);
        assert_eq!(
            body["reason"],
            "the clusterdata does not name this keeper's db as the master"
        );
        assert_eq!(c.codes(), [200, 503, 503, 503]);
    }

    #[test]
    fn a_fenced_former_master_is_no_replica() {
        let c = Case::new("k3", state("db3", 0x5000, true), true);
        assert_eq!(c.codes(), [200, 503, 503, 503]);
        assert_eq!(
            c.ask("/replica").1["reason"],
            "this keeper's db follows nothing (a fenced former master)"
        );
    }

    #[test]
    fn a_local_instance_the_clusterdata_no_longer_assigns_fails_role_checks() {
        // The sentinel replaced k2's db2 with db9 (to be resynced); the local instance is db2.
        let mut c = Case::new("k2", state("db2", 0x4000, true), true);
        let cd = c.cd.as_mut().expect("cd");
        let mut db = cd.dbs.remove("db2").expect("db2");
        db.uid = "db9".into();
        cd.dbs.insert("db9".into(), db);
        assert_eq!(c.codes(), [200, 503, 503, 503]);
    }

    #[test]
    fn unhealthy_stale_or_unknown_fails_every_check() {
        let unhealthy = Case::new("k1", state("db1", 0x5000, false), false);
        assert_eq!(unhealthy.codes(), [503; 4]);
        assert_eq!(
            unhealthy.ask("/health").1["reason"],
            "postgres is not running or does not answer"
        );
        assert_eq!(unhealthy.ask("/health").1["role"], "unknown");

        let mut stale = Case::new("k1", state("db1", 0x5000, true), false);
        stale.since_refresh = 15 * SEC;
        assert_eq!(
            stale.codes(),
            [200, 200, 503, 200],
            "3 intervals is still fresh"
        );
        stale.since_refresh = 16 * SEC;
        assert_eq!(stale.codes(), [503; 4]);
        assert_eq!(
            stale.ask("/health").1["reason"],
            "the keeper's last observation of postgres is 16.0s old"
        );

        let mut never = Case::new("k1", state("db1", 0x5000, true), false);
        never.state = None;
        assert_eq!(never.codes(), [503; 4]);

        let mut no_cd = Case::new("k1", state("db1", 0x5000, true), false);
        no_cd.cd = None;
        assert_eq!(no_cd.codes(), [200, 503, 503, 503]);

        let mut recovery_unknown = Case::new("k2", state("db2", 0x4000, true), true);
        recovery_unknown.in_recovery = None;
        assert_eq!(recovery_unknown.codes(), [200, 503, 503, 503]);
    }

    #[test]
    fn lag_needs_a_known_master_position() {
        let mut c = Case::new("k2", state("db2", 0x4000, true), true);
        let cd = c.cd.as_mut().expect("cd");
        cd.dbs.get_mut("db1").expect("db1").status.xlog_pos = 0;
        assert_eq!(c.ask("/replica").0, 200);
        let (code, body) = c.ask("/replica?lag=1GB");
        assert_eq!(code, 503);
        assert_eq!(
            body["reason"],
            "lag unknown: no master position in the clusterdata"
        );
    }

    #[test]
    fn request_targets() {
        assert_eq!(parse_check("/metrics"), Ok(None));
        assert_eq!(parse_check("/"), Ok(None));
        assert_eq!(parse_check("/health"), Ok(Some(Check::Health)));
        assert_eq!(
            parse_check("/replica?lag=16MB"),
            Ok(Some(Check::Replica {
                max_lag: Some(16 << 20)
            }))
        );
        assert_eq!(
            parse_check("/read-only?lag=100"),
            Ok(Some(Check::ReadOnly { max_lag: Some(100) }))
        );
        assert_eq!(
            parse_check("/replica?lag=1.5MB"),
            Err("lag \"1.5MB\" is not a size (bytes, or a number with kB, MB, GB or TB)".into())
        );
        assert_eq!(
            parse_check("/replica?lag=99999999999TB").map_err(|e| e.contains("is not a size")),
            Err(true)
        );
        assert_eq!(
            parse_check("/replica?max=1"),
            Err("unknown query parameter \"max=1\" (only lag=<size>)".into())
        );
        assert_eq!(
            parse_check("/primary?lag=1"),
            Err("/primary takes no query parameters".into())
        );
    }
}
