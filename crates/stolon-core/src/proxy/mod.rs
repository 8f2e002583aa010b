//! The proxy's decisions: where new client connections go ([`route`]), the small publishing
//! policy around it (which timeout to publish, the ProxyInfo and its TTL), and the check loop
//! itself as a pure state machine ([`machine`]) that the proxy daemon and the simulation both run,
//! and what becomes of a connection still in its startup when its destination goes ([`startup`]).
//!
//! Pure. Fail-closed: whenever clusterdata is missing, unusable, names no master, or does not enable
//! this proxy, the answer is "route nowhere" (and the proxy closes every connection).

use std::time::Duration;

use crate::GoDuration;
use crate::model::{ClusterData, DbRole, FollowType, ProxyInfo};

pub mod machine;
#[cfg(test)]
mod scenarios;
pub mod startup;

/// Why nothing is routed although clusterdata is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedReason {
    /// Clusterdata has no proxy object.
    NoProxy,
    /// `proxy.spec.masterDbUid` is empty or names no DB (failover handshake in progress).
    NoMaster,
    /// The master DB has no advertised address yet.
    NoMasterAddress,
    /// This proxy is not in `enabledProxies`.
    NotEnabled,
}

impl std::fmt::Display for ClosedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClosedReason::NoProxy => "no proxy object available, closing connections to master",
            ClosedReason::NoMaster => "no db object available, closing connections to master",
            ClosedReason::NoMasterAddress => "master db has no address",
            ClosedReason::NotEnabled => {
                "not proxying to master address since we aren't in the enabled proxies list"
            }
        })
    }
}

/// A `host:port` destination as advertised in clusterdata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Advertised address (IP or hostname).
    pub host: String,
    /// Advertised port.
    pub port: String,
}

/// The proxy timings of the spec, each when it is positive. The proxy adopts them after a
/// successful check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecTimings {
    /// `proxyTimeout`.
    pub proxy_timeout: Option<Duration>,
    /// `proxyCheckInterval`.
    pub check_interval: Option<Duration>,
}

/// Where new connections go, given usable clusterdata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// To the master; the read-only listener spreads over `standbys` (healthy standbys following
    /// it, within `maxStandbyLag`; possibly empty).
    Master {
        /// The master's advertised address.
        master: Destination,
        /// The qualifying standbys' advertised addresses.
        standbys: Vec<Destination>,
    },
    /// Nowhere (close everything).
    Closed(ClosedReason),
}

/// The routing decision for one store read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// No clusterdata in the store (or JSON `null`): route nowhere, publish nothing.
    NoClusterData,
    /// Clusterdata has the wrong format version or an invalid spec: route nowhere, publish
    /// nothing.
    Unusable(String),
    /// Usable clusterdata.
    Usable {
        /// The proxy generation to acknowledge in ProxyInfo (0 when there is no proxy object, as
        /// in Stolon).
        generation: i64,
        /// The spec's proxy timings.
        timings: SpecTimings,
        /// Where connections go.
        target: Target,
    },
}

/// The timeout to publish while running on `current` when the spec says `spec`: the larger of
/// the two, so the sentinel does not declare the proxy inactive while it still runs on an older,
/// longer timeout.
pub fn publish_timeout(spec: &SpecTimings, current: Duration) -> Duration {
    spec.proxy_timeout.map_or(current, |t| t.max(current))
}

/// The ProxyInfo a proxy publishes: its generation and the timeout it runs on. `info_uid` is a
/// fresh random UID per publish (the sentinel tells a live proxy from a stale info by it). It
/// carries the mark that this proxy counts its timeout from the start of its last published
/// check ([`machine`]), which lets the sentinel stop waiting for it sooner.
pub fn proxy_info(uid: &str, info_uid: String, generation: i64, timeout: Duration) -> ProxyInfo {
    ProxyInfo {
        info_uid,
        uid: uid.to_string(),
        generation,
        proxy_timeout: GoDuration::from_std(timeout).as_nanos(),
        fences_from_check_start: true,
    }
}

/// The TTL of a published ProxyInfo: twice the timeout it carries.
pub fn proxy_info_ttl(timeout: Duration) -> Duration {
    timeout.saturating_mul(2)
}

/// A positive spec duration.
fn positive(d: GoDuration) -> Option<Duration> {
    Some(d.to_std()).filter(|d| !d.is_zero())
}

/// Decides the routing for proxy `proxy_uid` from clusterdata `cd`.
pub fn route(cd: Option<&ClusterData>, proxy_uid: &str) -> Route {
    let Some(cd) = cd else {
        return Route::NoClusterData;
    };
    let spec = match cd.check_usable() {
        Ok(spec) => spec.effective(),
        Err(e) => return Route::Unusable(e.to_string()),
    };
    let timings = SpecTimings {
        proxy_timeout: positive(spec.proxy_timeout),
        check_interval: positive(spec.proxy_check_interval),
    };
    let usable = |generation, target| Route::Usable {
        generation,
        timings,
        target,
    };
    let Some(proxy) = &cd.proxy else {
        return usable(0, Target::Closed(ClosedReason::NoProxy));
    };
    let closed = |reason| usable(proxy.generation, Target::Closed(reason));
    let Some(master) = cd.dbs.get(&proxy.spec.master_db_uid) else {
        return closed(ClosedReason::NoMaster);
    };
    if !proxy.spec.enabled_proxies.iter().any(|p| p == proxy_uid) {
        return closed(ClosedReason::NotEnabled);
    }
    if master.status.listen_address.is_empty() || master.status.port.is_empty() {
        return closed(ClosedReason::NoMasterAddress);
    }
    let max_lag = u64::from(spec.max_standby_lag);
    let standbys = cd
        .dbs
        .values()
        .filter(|db| db.uid != master.uid)
        .filter(|db| {
            db.spec.as_ref().is_some_and(|s| {
                // Only standbys following the current master: one still attached to a previous
                // master may be on a dead timeline branch.
                s.role == Some(DbRole::Standby)
                    && s.follow_config.as_ref().is_some_and(|f| {
                        f.kind == Some(FollowType::Internal) && f.db_uid == master.uid
                    })
            })
        })
        .filter(|db| {
            db.status.healthy && !db.status.listen_address.is_empty() && !db.status.port.is_empty()
        })
        .filter(|db| db.status.timeline_id == master.status.timeline_id)
        .filter(|db| crate::wal::within_lag(master.status.xlog_pos, db.status.xlog_pos, max_lag))
        .map(|db| Destination {
            host: db.status.listen_address.clone(),
            port: db.status.port.clone(),
        })
        .collect();
    usable(
        proxy.generation,
        Target::Master {
            master: Destination {
                host: master.status.listen_address.clone(),
                port: master.status.port.clone(),
            },
            standbys,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::timestamp::Timestamp;

    fn db(uid: &str, role: DbRole, addr: &str, xlog: u64) -> Db {
        Db {
            uid: uid.into(),
            generation: 1,
            spec: Some(DbSpec {
                keeper_uid: format!("k{uid}"),
                role: Some(role),
                follow_config: (role == DbRole::Standby).then(|| FollowConfig {
                    kind: Some(FollowType::Internal),
                    db_uid: "m".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: DbStatus {
                healthy: true,
                listen_address: addr.into(),
                port: "5432".into(),
                timeline_id: 1,
                xlog_pos: xlog,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn cd() -> ClusterData {
        let cluster = Cluster {
            uid: "c".into(),
            generation: 1,
            spec: Some(ClusterSpec::new_init(ClusterInitMode::New)),
            status: ClusterStatus {
                phase: Some(ClusterPhase::Normal),
                master: "m".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut cd = ClusterData::new(cluster, Timestamp::zero());
        cd.dbs
            .insert("m".into(), db("m", DbRole::Master, "10.0.0.1", 10_000_000));
        cd.dbs.insert(
            "s1".into(),
            db("s1", DbRole::Standby, "10.0.0.2", 9_999_000),
        );
        cd.dbs
            .insert("s2".into(), db("s2", DbRole::Standby, "10.0.0.3", 1_000));
        let mut s3 = db("s3", DbRole::Standby, "10.0.0.4", 10_000_000);
        s3.spec
            .as_mut()
            .unwrap()
            .follow_config
            .as_mut()
            .unwrap()
            .db_uid = "old".into();
        cd.dbs.insert("s3".into(), s3);
        cd.proxy = Some(Proxy {
            generation: 7,
            spec: ProxySpec {
                master_db_uid: "m".into(),
                enabled_proxies: vec!["p1".into()],
            },
            ..Default::default()
        });
        cd
    }

    fn target(r: Route) -> Target {
        match r {
            Route::Usable { target, .. } => target,
            other => panic!("not usable: {other:?}"),
        }
    }

    #[test]
    fn routes_enabled_proxy_to_master_and_lagging_standbys_are_excluded() {
        let Route::Usable {
            generation,
            target: Target::Master { master, standbys },
            ..
        } = route(Some(&cd()), "p1")
        else {
            panic!("not routed to the master");
        };
        assert_eq!(
            master,
            Destination {
                host: "10.0.0.1".into(),
                port: "5432".into()
            }
        );
        assert_eq!(generation, 7);
        let hosts: Vec<_> = standbys.iter().map(|d| d.host.as_str()).collect();
        assert_eq!(
            hosts,
            vec!["10.0.0.2"],
            "s2 is ~10MB behind, beyond the 1MiB default lag"
        );
    }

    #[test]
    fn spec_timings_and_the_timeout_to_publish() {
        let secs = Duration::from_secs;
        let mut data = cd();
        let spec = data
            .cluster
            .as_mut()
            .and_then(|c| c.spec.as_mut())
            .expect("spec");
        spec.proxy_timeout = Some(GoDuration::from_std(secs(20)));
        spec.proxy_check_interval = Some(GoDuration::from_std(secs(4)));
        let Route::Usable { timings, .. } = route(Some(&data), "p1") else {
            panic!("not usable");
        };
        assert_eq!(timings.proxy_timeout, Some(secs(20)));
        assert_eq!(timings.check_interval, Some(secs(4)));
        // The larger of the current and the spec's timeout.
        assert_eq!(publish_timeout(&timings, secs(15)), secs(20));
        assert_eq!(publish_timeout(&timings, secs(30)), secs(30));
        // Without spec timings: the current one.
        assert_eq!(publish_timeout(&SpecTimings::default(), secs(15)), secs(15));

        let info = proxy_info("p1", "abcd".into(), 7, secs(20));
        assert_eq!(
            (info.uid.as_str(), info.info_uid.as_str(), info.generation),
            ("p1", "abcd", 7)
        );
        assert_eq!(info.proxy_timeout, 20_000_000_000);
        assert!(info.fences_from_check_start);
        assert_eq!(proxy_info_ttl(secs(20)), secs(40));
    }

    #[test]
    fn fails_closed() {
        assert_eq!(route(None, "p1"), Route::NoClusterData);
        assert_eq!(
            target(route(Some(&cd()), "p2")),
            Target::Closed(ClosedReason::NotEnabled)
        );

        let mut c = cd();
        c.proxy.as_mut().unwrap().spec.master_db_uid.clear();
        let r = route(Some(&c), "p1");
        assert!(
            matches!(
                r,
                Route::Usable {
                    generation: 7,
                    target: Target::Closed(ClosedReason::NoMaster),
                    ..
                }
            ),
            "still acknowledges the generation: {r:?}"
        );

        let mut c = cd();
        c.proxy = None;
        let r = route(Some(&c), "p1");
        assert!(
            matches!(
                r,
                Route::Usable {
                    generation: 0,
                    target: Target::Closed(ClosedReason::NoProxy),
                    ..
                }
            ),
            "{r:?}"
        );

        let mut c = cd();
        c.format_version = 2;
        assert!(matches!(route(Some(&c), "p1"), Route::Unusable(_)));

        let mut c = cd();
        c.dbs.get_mut("m").unwrap().status.listen_address.clear();
        assert_eq!(
            target(route(Some(&c), "p1")),
            Target::Closed(ClosedReason::NoMasterAddress)
        );
    }
}
