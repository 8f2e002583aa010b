//! Named scenarios of the proxy check machine: every transition, with the whole action list of
//! each step, and a property test of the fencing rules over random runs.

use std::net::SocketAddr;
use std::time::Duration;

use pretty_assertions::assert_eq;

use super::machine::*;
use super::{ClosedReason, Destination};
use crate::model::*;
use crate::timestamp::Timestamp;

const M: &str = "10.0.0.1:5432";
const M2: &str = "10.0.0.9:5432";
const S1: &str = "10.0.0.2:5432";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn dest(s: &str) -> Destination {
    let a = addr(s);
    Destination {
        host: a.ip().to_string(),
        port: a.port().to_string(),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn db(uid: &str, role: DbRole, at: &str, master: &str) -> Db {
    let d = dest(at);
    Db {
        uid: uid.into(),
        generation: 1,
        spec: Some(DbSpec {
            keeper_uid: format!("k{uid}"),
            role: Some(role),
            follow_config: (role == DbRole::Standby).then(|| FollowConfig {
                kind: Some(FollowType::Internal),
                db_uid: master.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: DbStatus {
            healthy: true,
            listen_address: d.host,
            port: d.port,
            timeline_id: 1,
            xlog_pos: 1000,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Clusterdata at proxy `generation` naming `master` ("m" at M, "m2" at M2, "" for none), with
/// standby s1 at S1 following it, enabling `enabled`.
fn cd(generation: i64, master: &str, enabled: &[&str]) -> ClusterData {
    let cluster = Cluster {
        uid: "c".into(),
        generation: 1,
        spec: Some(ClusterSpec::new_init(ClusterInitMode::New)),
        status: ClusterStatus {
            phase: Some(ClusterPhase::Normal),
            master: master.into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut cd = ClusterData::new(cluster, Timestamp::zero());
    cd.dbs.insert("m".into(), db("m", DbRole::Master, M, ""));
    cd.dbs.insert("m2".into(), db("m2", DbRole::Master, M2, ""));
    let follows = if master.is_empty() { "m" } else { master };
    cd.dbs
        .insert("s1".into(), db("s1", DbRole::Standby, S1, follows));
    cd.proxy = Some(Proxy {
        generation,
        spec: ProxySpec {
            master_db_uid: master.into(),
            enabled_proxies: enabled.iter().map(|s| s.to_string()).collect(),
        },
        ..Default::default()
    });
    cd
}

fn read(cd: Option<ClusterData>, revision: &str) -> Observation {
    Observation::Read(Ok(ClusterRead {
        data: cd.map(Box::new),
        revision: Some(revision.into()),
    }))
}

fn publish(generation: i64) -> Option<Request> {
    Some(Request::Publish {
        generation,
        proxy_timeout: secs(15),
        ttl: secs(30),
    })
}

fn resolve(dests: &[&str]) -> Option<Request> {
    Some(Request::Resolve(dests.iter().map(|d| dest(d)).collect()))
}

fn resolved(addrs: &[&str]) -> Observation {
    Observation::Resolved(addrs.iter().map(|a| Ok(addr(a))).collect())
}

fn log(l: Log) -> Action {
    Action::Log(l)
}

/// One proxy "p1" driven step by step.
struct Run {
    cfg: Config,
    mem: Memory,
    now: Duration,
    wake_at: Option<Duration>,
}

impl Run {
    fn new(read_only: Option<Fallback>) -> Self {
        let mut cfg = Config::new("p1".into(), secs(5), secs(15));
        cfg.read_only = read_only;
        let mem = Memory::new(&cfg, Duration::ZERO);
        Run {
            cfg,
            mem,
            now: Duration::ZERO,
            wake_at: None,
        }
    }

    fn at(&mut self, t: Duration) -> &mut Self {
        self.now = t;
        self
    }

    /// Steps with `obs`; returns the actions and the request.
    fn step(&mut self, obs: Observation) -> (Vec<Action>, Option<Request>) {
        let d = step(&self.cfg, obs, self.mem.clone(), self.now);
        if let Some(w) = d.wake_at {
            assert!(w > self.now, "wake_at {w:?} not after now {:?}", self.now);
        }
        self.mem = d.memory;
        self.wake_at = d.wake_at;
        (d.actions, d.request)
    }

    /// The first check at 0 against `cd(7, "m", ["p1"])`: routed to M.
    fn routed() -> Self {
        let mut r = Run::new(None);
        r.step(Observation::Wake);
        r.step(read(Some(cd(7, "m", &["p1"])), "1"));
        r.step(Observation::Listened(Ok(())));
        r.step(resolved(&[M, S1]));
        let (actions, _) = r.step(Observation::Published(Ok(())));
        assert_eq!(actions[0], Action::SetDestination(Some(addr(M))));
        r
    }
}

#[test]
fn first_check_listens_resolves_publishes_then_routes() {
    let mut r = Run::new(None);
    assert_eq!(
        r.step(Observation::Wake),
        (vec![], Some(Request::ReadClusterData))
    );
    assert_eq!(r.wake_at, Some(secs(15)), "only the timeout while reading");
    assert_eq!(
        r.step(read(Some(cd(7, "m", &["p1"])), "1")),
        (vec![], Some(Request::Listen))
    );
    assert_eq!(
        r.step(Observation::Listened(Ok(()))),
        (vec![], resolve(&[M, S1]))
    );
    // Publish before routing: nothing is routed yet.
    assert_eq!(r.step(resolved(&[M, S1])), (vec![], publish(7)));
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (
            vec![
                Action::SetDestination(Some(addr(M))),
                Action::CheckSucceeded
            ],
            None
        )
    );
    assert_eq!(r.wake_at, Some(secs(5)), "the next periodic check");
    assert!(r.mem.listening);
}

#[test]
fn a_store_change_without_a_new_generation_does_not_publish() {
    let mut r = Run::routed();
    // Our own ProxyInfo write: clusterdata unchanged, nothing done.
    r.at(secs(1));
    assert_eq!(
        r.step(Observation::StoreChanged),
        (vec![], Some(Request::ReadClusterData))
    );
    assert_eq!(r.step(read(Some(cd(7, "m", &["p1"])), "1")), (vec![], None));
    // The sentinel rewrote clusterdata (a keeper's status): applied, not published.
    r.at(secs(2));
    r.step(Observation::StoreChanged);
    assert_eq!(
        r.step(read(Some(cd(7, "m", &["p1"])), "2")),
        (vec![], resolve(&[M, S1]))
    );
    assert_eq!(
        r.step(resolved(&[M, S1])),
        (vec![Action::CheckSucceeded], None)
    );
    assert_eq!(
        r.wake_at,
        Some(secs(5)),
        "the periodic check is not postponed"
    );
    // The periodic check always publishes.
    r.at(secs(5));
    assert_eq!(
        r.step(Observation::Wake),
        (vec![], Some(Request::ReadClusterData))
    );
    r.step(read(Some(cd(7, "m", &["p1"])), "2"));
    assert_eq!(r.step(resolved(&[M, S1])), (vec![], publish(7)));
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (vec![Action::CheckSucceeded], None)
    );
    assert_eq!(r.wake_at, Some(secs(10)));
}

#[test]
fn master_change_publishes_the_new_generation_before_switching() {
    let mut r = Run::routed();
    // The sentinel first names no master: close at once, then acknowledge.
    r.at(secs(1));
    r.step(Observation::StoreChanged);
    let reason = ClosedReason::NoMaster.to_string();
    assert_eq!(
        r.step(read(Some(cd(8, "", &["p1"])), "2")),
        (
            vec![Action::SetDestination(None), log(Log::NotProxying(reason))],
            publish(8)
        )
    );
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (vec![Action::CheckSucceeded], None)
    );
    // Then the new master: published before the switch.
    r.at(secs(2));
    r.step(Observation::StoreChanged);
    assert_eq!(
        r.step(read(Some(cd(9, "m2", &["p1"])), "3")),
        (vec![], resolve(&[M2, S1]))
    );
    assert_eq!(r.step(resolved(&[M2, S1])), (vec![], publish(9)));
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (
            vec![
                Action::SetDestination(Some(addr(M2))),
                log(Log::ProxyingTo(addr(M2))),
                Action::CheckSucceeded
            ],
            None
        )
    );
}

#[test]
fn a_new_master_address_in_the_same_generation_is_published_before_switching() {
    let mut r = Run::routed();
    let mut c = cd(7, "m", &["p1"]);
    c.dbs.get_mut("m").expect("m").status.port = "5433".into();
    r.at(secs(1));
    r.step(Observation::StoreChanged);
    let moved = "10.0.0.1:5433";
    assert_eq!(r.step(read(Some(c), "2")), (vec![], resolve(&[moved, S1])));
    assert_eq!(r.step(resolved(&[moved, S1])), (vec![], publish(7)));
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (
            vec![
                Action::SetDestination(Some(addr(moved))),
                Action::CheckSucceeded
            ],
            None
        )
    );
}

#[test]
fn a_store_error_then_recovery_before_the_timeout_keeps_the_route() {
    let mut r = Run::routed();
    r.at(secs(5));
    r.step(Observation::Wake);
    assert_eq!(
        r.step(Observation::Read(Err(ReadError::Unavailable(
            "down".into()
        )))),
        (
            vec![log(Log::CheckFailed(
                "cannot get cluster data: down".into()
            ))],
            None
        )
    );
    assert_eq!(r.wake_at, Some(secs(10)), "retried on the next period");
    assert_eq!(r.mem.primary, Some(addr(M)));
    r.at(secs(10));
    r.step(Observation::Wake);
    r.step(read(Some(cd(7, "m", &["p1"])), "1"));
    r.step(resolved(&[M, S1]));
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (vec![Action::CheckSucceeded], None)
    );
    assert_eq!(
        r.wake_at,
        Some(secs(15)),
        "next period; the timeout moved to 25 s"
    );
    assert_eq!(r.mem.deadline(), Some(secs(25)));
}

#[test]
fn a_repeating_check_error_is_logged_once_and_retried_with_a_growing_wait() {
    let ms = Duration::from_millis;
    let mut r = Run::routed();
    let down = |what: &str| Observation::Read(Err(ReadError::Unavailable(what.into())));
    r.at(secs(5));
    r.step(Observation::Wake);
    assert_eq!(
        r.step(down("down")),
        (
            vec![log(Log::CheckFailed(
                "cannot get cluster data: down".into()
            ))],
            None
        )
    );
    // A store change right after the failure waits for the first backoff.
    assert_eq!(r.step(Observation::StoreChanged), (vec![], None));
    assert_eq!(r.wake_at, Some(secs(5) + ms(200)));
    r.at(secs(5) + ms(200));
    assert_eq!(
        r.step(Observation::Wake),
        (vec![], Some(Request::ReadClusterData))
    );
    // The same error again is not logged again, and the next wait doubles.
    assert_eq!(r.step(down("down")), (vec![], None));
    r.step(Observation::StoreChanged);
    assert_eq!(r.wake_at, Some(secs(5) + ms(600)));
    // Another error is said once.
    r.at(secs(5) + ms(600));
    r.step(Observation::Wake);
    assert_eq!(
        r.step(down("other")).0,
        vec![log(Log::CheckFailed(
            "cannot get cluster data: other".into()
        ))]
    );
    assert_eq!(r.mem.primary, Some(addr(M)), "still routed: no timeout yet");
}

#[test]
fn the_retry_wait_is_bounded_by_three_seconds_and_the_check_interval() {
    let ms = Duration::from_millis;
    assert_eq!(retry_delay(1, secs(5)), ms(200));
    assert_eq!(retry_delay(2, secs(5)), ms(400));
    assert_eq!(retry_delay(5, secs(5)), secs(3));
    assert_eq!(retry_delay(u32::MAX, secs(5)), secs(3));
    assert_eq!(retry_delay(5, secs(1)), secs(1));
}

#[test]
fn the_timeout_closes_everything_stops_listening_and_recovers() {
    let mut r = Run::routed();
    let down = || Observation::Read(Err(ReadError::Unavailable("down".into())));
    for t in [5, 10] {
        r.at(secs(t));
        r.step(Observation::Wake);
        r.step(down());
    }
    assert_eq!(r.wake_at, Some(secs(15)));
    r.at(secs(15));
    assert_eq!(
        r.step(Observation::Wake),
        (
            vec![
                log(Log::TimedOut),
                Action::SetDestination(None),
                Action::StopListening
            ],
            Some(Request::ReadClusterData)
        )
    );
    assert_eq!(r.wake_at, None, "nothing to time out while the check runs");
    // Recovery: listen again, publish again (our info may have expired), route.
    r.at(secs(16));
    assert_eq!(
        r.step(read(Some(cd(7, "m", &["p1"])), "1")),
        (vec![], Some(Request::Listen))
    );
    r.step(Observation::Listened(Ok(())));
    assert_eq!(r.step(resolved(&[M, S1])), (vec![], publish(7)));
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (
            vec![
                Action::SetDestination(Some(addr(M))),
                log(Log::ProxyingTo(addr(M))),
                Action::CheckSucceeded
            ],
            None
        )
    );
}

#[test]
fn a_timeout_inside_a_check_drops_its_result_and_checks_again() {
    let mut r = Run::routed();
    r.at(secs(5));
    r.step(Observation::Wake);
    // The read hangs past the timeout.
    r.at(secs(15));
    assert_eq!(
        r.step(Observation::Wake),
        (
            vec![
                log(Log::TimedOut),
                Action::SetDestination(None),
                Action::StopListening
            ],
            None
        )
    );
    // Its late answer is stale: not applied, a new check at once.
    r.at(secs(20));
    assert_eq!(
        r.step(read(Some(cd(7, "m", &["p1"])), "1")),
        (vec![], Some(Request::ReadClusterData))
    );
    assert_eq!(r.mem.primary, None);
    assert_eq!(
        r.step(read(Some(cd(7, "m", &["p1"])), "1")),
        (vec![], Some(Request::Listen))
    );
}

#[test]
fn the_timeout_counts_from_the_start_of_the_check_that_published() {
    let mut r = Run::routed();
    assert_eq!(r.mem.deadline(), Some(secs(15)));
    // The periodic check starts at 5 s; its read, resolve and publish take until 12 s.
    r.at(secs(5));
    assert_eq!(
        r.step(Observation::Wake),
        (vec![], Some(Request::ReadClusterData))
    );
    r.at(secs(8));
    r.step(read(Some(cd(7, "m", &["p1"])), "1"));
    r.at(secs(9));
    assert_eq!(r.step(resolved(&[M, S1])), (vec![], publish(7)));
    r.at(secs(12));
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (vec![Action::CheckSucceeded], None)
    );
    // From the start of that check (5 s), not from its end (12 s).
    assert_eq!(r.mem.deadline(), Some(secs(20)));
    assert_eq!(
        r.wake_at,
        Some(secs(17)),
        "the next period is counted as before"
    );
    // Nothing else happens: fenced at 20 s.
    r.at(secs(17));
    r.step(Observation::Wake);
    r.at(secs(20));
    let (actions, _) = r.step(Observation::Wake);
    assert_eq!(
        actions,
        vec![
            log(Log::TimedOut),
            Action::SetDestination(None),
            Action::StopListening
        ]
    );
}

#[test]
fn a_check_whose_read_succeeds_but_publish_fails_does_not_extend_routing() {
    let mut r = Run::routed();
    for t in [5, 10] {
        r.at(secs(t));
        r.step(Observation::Wake);
        r.step(read(Some(cd(7, "m", &["p1"])), "1"));
        assert_eq!(r.step(resolved(&[M, S1])), (vec![], publish(7)));
        let (actions, _) = r.step(Observation::Published(Err("refused".into())));
        assert!(
            !actions.contains(&Action::CheckSucceeded),
            "a failed publish fails the check: {actions:?}"
        );
        assert_eq!(r.mem.primary, Some(addr(M)), "the unchanged route stays");
        assert_eq!(
            r.mem.deadline(),
            Some(secs(15)),
            "still counted from the first check"
        );
    }
    r.at(secs(15));
    let (actions, _) = r.step(Observation::Wake);
    assert_eq!(
        actions,
        vec![
            log(Log::TimedOut),
            Action::SetDestination(None),
            Action::StopListening
        ]
    );
}

#[test]
fn a_store_change_applied_without_publishing_does_not_extend_routing() {
    let mut r = Run::routed();
    // The sentinel rewrote clusterdata (a keeper's status): applied without a new info.
    r.at(secs(4));
    r.step(Observation::StoreChanged);
    r.step(read(Some(cd(7, "m", &["p1"])), "2"));
    assert_eq!(
        r.step(resolved(&[M, S1])),
        (vec![Action::CheckSucceeded], None)
    );
    assert_eq!(
        r.mem.deadline(),
        Some(secs(15)),
        "the sentinel saw no new info: the clock runs on from the last publish"
    );
    // The periodic checks fail from then on: fenced 15 s after the last publishing check.
    for t in [5, 10] {
        r.at(secs(t));
        r.step(Observation::Wake);
        r.step(Observation::Read(Err(ReadError::Unavailable(
            "down".into(),
        ))));
    }
    r.at(secs(15));
    let (actions, _) = r.step(Observation::Wake);
    assert_eq!(actions[0], log(Log::TimedOut));
    assert_eq!(r.mem.primary, None);
}

#[test]
fn a_check_taking_longer_than_the_timeout_after_a_timeout_is_dropped() {
    let mut r = Run::routed();
    for t in [5, 10] {
        r.at(secs(t));
        r.step(Observation::Wake);
        r.step(Observation::Read(Err(ReadError::Unavailable(
            "down".into(),
        ))));
    }
    r.at(secs(15));
    let (actions, request) = r.step(Observation::Wake);
    assert_eq!(actions[0], log(Log::TimedOut));
    assert_eq!(
        request,
        Some(Request::ReadClusterData),
        "a check starts at 15 s"
    );
    // Its read answers only at 31 s, more than proxyTimeout after the check started: routing
    // on it could not be fenced in time, so it is dropped and a new check starts.
    r.at(secs(31));
    assert_eq!(
        r.step(read(Some(cd(7, "m", &["p1"])), "1")),
        (vec![], Some(Request::ReadClusterData))
    );
    assert_eq!(r.mem.primary, None);
    // The new check, quick enough, routes again.
    assert_eq!(
        r.step(read(Some(cd(7, "m", &["p1"])), "1")),
        (vec![], Some(Request::Listen))
    );
    r.step(Observation::Listened(Ok(())));
    r.step(resolved(&[M, S1]));
    r.step(Observation::Published(Ok(())));
    assert_eq!(r.mem.primary, Some(addr(M)));
    assert_eq!(r.mem.deadline(), Some(secs(46)));
}

#[test]
fn an_unresolvable_master_routes_nothing_and_still_acknowledges() {
    let mut r = Run::routed();
    r.at(secs(1));
    r.step(Observation::StoreChanged);
    r.step(read(Some(cd(8, "m2", &["p1"])), "2"));
    assert_eq!(
        r.step(Observation::Resolved(vec![
            Err("no such host".into()),
            Ok(addr(S1))
        ])),
        (
            vec![
                Action::SetDestination(None),
                log(Log::NotProxying(
                    "cannot resolve master address: no such host".into()
                ))
            ],
            publish(8)
        )
    );
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (vec![Action::CheckSucceeded], None)
    );
}

#[test]
fn a_proxy_not_enabled_acknowledges_and_routes_nothing() {
    let mut r = Run::new(None);
    r.step(Observation::Wake);
    r.step(read(Some(cd(7, "m", &["p2"])), "1"));
    assert_eq!(r.step(Observation::Listened(Ok(()))), (vec![], publish(7)));
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (
            vec![
                log(Log::NotProxying(ClosedReason::NotEnabled.to_string())),
                Action::CheckSucceeded
            ],
            None
        )
    );
}

#[test]
fn null_clusterdata_listens_routes_nothing_and_publishes_nothing() {
    let mut r = Run::new(None);
    r.step(Observation::Wake);
    assert_eq!(r.step(read(None, "1")), (vec![], Some(Request::Listen)));
    assert_eq!(
        r.step(Observation::Listened(Ok(()))),
        (
            vec![
                log(Log::NotProxying(
                    "no clusterdata available, closing connections to master".into()
                )),
                Action::CheckSucceeded
            ],
            None
        )
    );
    // Undecodable clusterdata: closed at once, and a failed check.
    r.at(secs(5));
    r.step(Observation::Wake);
    assert_eq!(
        r.step(Observation::Read(Err(ReadError::Malformed(
            "bad json".into()
        )))),
        (
            vec![
                log(Log::NotProxying("unusable clusterdata: bad json".into())),
                log(Log::CheckFailed("unusable cluster data: bad json".into()))
            ],
            None
        )
    );
}

#[test]
fn a_listen_failure_fails_the_check_and_is_retried() {
    let mut r = Run::new(None);
    r.step(Observation::Wake);
    r.step(read(Some(cd(7, "m", &["p1"])), "1"));
    assert_eq!(
        r.step(Observation::Listened(Err(
            "cannot listen on x: in use".into()
        ))),
        (
            vec![log(Log::CheckFailed("cannot listen on x: in use".into()))],
            None
        )
    );
    r.at(secs(5));
    r.step(Observation::Wake);
    assert_eq!(
        r.step(read(Some(cd(7, "m", &["p1"])), "1")),
        (vec![], Some(Request::Listen))
    );
}

#[test]
fn read_only_destinations_follow_the_qualifying_standbys() {
    let mut r = Run::new(Some(Fallback::Master));
    r.step(Observation::Wake);
    r.step(read(Some(cd(7, "m", &["p1"])), "1"));
    r.step(Observation::Listened(Ok(())));
    r.step(resolved(&[M, S1]));
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (
            vec![
                Action::SetDestination(Some(addr(M))),
                Action::SetReadOnlyDestinations {
                    standbys: vec![addr(S1)],
                    fallback: Some(addr(M))
                },
                Action::CheckSucceeded
            ],
            None
        )
    );
    // s1 unhealthy: the fallback only.
    let mut c = cd(7, "m", &["p1"]);
    c.dbs.get_mut("s1").expect("s1").status.healthy = false;
    r.at(secs(1));
    r.step(Observation::StoreChanged);
    assert_eq!(r.step(read(Some(c), "2")), (vec![], resolve(&[M])));
    assert_eq!(
        r.step(resolved(&[M])),
        (
            vec![
                Action::SetReadOnlyDestinations {
                    standbys: vec![],
                    fallback: Some(addr(M))
                },
                Action::CheckSucceeded
            ],
            None
        )
    );
    // Healthy again but unresolvable: skipped, with a warning.
    r.at(secs(2));
    r.step(Observation::StoreChanged);
    r.step(read(Some(cd(7, "m", &["p1"])), "3"));
    assert_eq!(
        r.step(Observation::Resolved(vec![Ok(addr(M)), Err("nx".into())])),
        (
            vec![
                log(Log::SkippingStandby {
                    host: "10.0.0.2".into(),
                    error: "nx".into()
                }),
                Action::CheckSucceeded
            ],
            None
        )
    );
    // Routing nowhere closes the read-only side too.
    r.at(secs(3));
    r.step(Observation::StoreChanged);
    let (actions, _) = r.step(read(Some(cd(8, "", &["p1"])), "4"));
    assert_eq!(
        actions,
        vec![
            Action::SetDestination(None),
            Action::SetReadOnlyDestinations {
                standbys: vec![],
                fallback: None
            },
            log(Log::NotProxying(ClosedReason::NoMaster.to_string()))
        ]
    );
}

#[test]
fn a_failed_publish_never_switches_and_the_next_check_publishes_again() {
    let mut r = Run::routed();
    // New master, publish fails: not switched, and the old route is closed.
    r.at(secs(1));
    r.step(Observation::StoreChanged);
    r.step(read(Some(cd(8, "m2", &["p1"])), "2"));
    r.step(resolved(&[M2, S1]));
    assert_eq!(
        r.step(Observation::Published(Err("etcd down".into()))),
        (
            vec![
                log(Log::PublishFailed("etcd down".into())),
                Action::SetDestination(None),
                log(Log::NotProxying("cannot publish proxy info".into())),
                log(Log::CheckFailed(
                    "failed to update proxyInfo: etcd down".into()
                ))
            ],
            None
        )
    );
    // Resync: the same revision on a store change is applied again, and published.
    r.at(secs(2));
    r.step(Observation::StoreChanged);
    assert_eq!(
        r.step(read(Some(cd(8, "m2", &["p1"])), "2")),
        (vec![], resolve(&[M2, S1]))
    );
    assert_eq!(r.step(resolved(&[M2, S1])), (vec![], publish(8)));
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (
            vec![
                Action::SetDestination(Some(addr(M2))),
                log(Log::ProxyingTo(addr(M2))),
                Action::CheckSucceeded
            ],
            None
        )
    );
    // A failed periodic publish with an unchanged route keeps the route (the timeout fences).
    r.at(secs(7));
    r.step(Observation::Wake);
    r.step(read(Some(cd(8, "m2", &["p1"])), "2"));
    r.step(resolved(&[M2, S1]));
    assert_eq!(
        r.step(Observation::Published(Err("etcd down".into()))),
        (
            vec![
                log(Log::PublishFailed("etcd down".into())),
                log(Log::CheckFailed(
                    "failed to update proxyInfo: etcd down".into()
                ))
            ],
            None
        )
    );
    assert_eq!(r.mem.primary, Some(addr(M2)));
}

#[test]
fn a_spec_timing_change_is_published_then_adopted() {
    let mut r = Run::routed();
    let mut c = cd(7, "m", &["p1"]);
    let spec = c
        .cluster
        .as_mut()
        .and_then(|c| c.spec.as_mut())
        .expect("spec");
    spec.proxy_timeout = Some(crate::GoDuration::from_std(secs(20)));
    spec.proxy_check_interval = Some(crate::GoDuration::from_std(secs(2)));
    r.at(secs(1));
    r.step(Observation::StoreChanged);
    r.step(read(Some(c), "2"));
    assert_eq!(
        r.step(resolved(&[M, S1])),
        (
            vec![],
            Some(Request::Publish {
                generation: 7,
                proxy_timeout: secs(20),
                ttl: secs(40)
            })
        )
    );
    r.step(Observation::Published(Ok(())));
    assert_eq!(
        (r.mem.proxy_timeout, r.mem.check_interval),
        (secs(20), secs(2))
    );
    assert_eq!(r.wake_at, Some(secs(3)));
}

mod property {
    use super::*;
    use proptest::prelude::*;

    /// Clusterdata versions in the order a sentinel writes them during a failover.
    fn version(i: usize) -> (ClusterData, i64) {
        match i {
            0 => (cd(1, "m", &["p1"]), 1),
            1 => (cd(2, "", &["p1"]), 2),
            _ => (cd(3, "m2", &["p1"]), 3),
        }
    }

    proptest! {
        /// Over random runs (store errors, hangs past the timeout, failed publishes, store
        /// changes): the machine never routes to a master before publishing the generation that
        /// names it, routes nowhere while timed out, asks for at most one IO at a time, and never
        /// asks to be woken in the past.
        #[test]
        fn fencing_holds_over_random_runs(choices in proptest::collection::vec((0u64..6000, 0u8..10), 1..200)) {
            let cfg = Config::new("p1".into(), secs(5), secs(15));
            let mut mem = Memory::new(&cfg, Duration::ZERO);
            let mut now = Duration::ZERO;
            let mut obs = Observation::Wake;
            let mut request: Option<Request> = None;
            let mut version_idx = 0usize;
            // Generation of the read being applied, and of the last successful publish.
            let mut applying: Option<i64> = None;
            let mut published_ok: Option<i64> = None;
            // When the running check started, and the start of the last check whose publish
            // succeeded: the proxy routes only within proxyTimeout of the latter.
            let mut check_start = Duration::ZERO;
            let mut published_start: Option<Duration> = None;
            for (dt, c) in choices {
                let d = step(&cfg, obs, mem, now);
                mem = d.memory;
                if let Some(w) = d.wake_at {
                    prop_assert!(w > now);
                }
                for a in &d.actions {
                    if let Action::SetDestination(Some(_)) = a {
                        prop_assert!(applying.is_some() && published_ok == applying,
                            "switched without publishing: applying {applying:?} published {published_ok:?}");
                    }
                }
                if mem.timed_out {
                    prop_assert_eq!(mem.primary, None);
                }
                if mem.primary.is_some() {
                    prop_assert!(published_start.is_some_and(|s| now < s + secs(15)),
                        "routes at {now:?}, last publishing check started {published_start:?}");
                }
                if d.request == Some(Request::ReadClusterData) {
                    check_start = now;
                }
                if d.request.is_some() {
                    prop_assert!(request.is_none(), "two requests at once");
                    request = d.request;
                }
                now += Duration::from_millis(dt);
                // Answer the request, or let time pass / the store change.
                obs = match (&request, c) {
                    (Some(_), 0) | (None, 0..=4) => Observation::Wake,
                    (_, 1) => Observation::StoreChanged,
                    (Some(Request::ReadClusterData), c) => {
                        request = None;
                        if c == 2 {
                            Observation::Read(Err(ReadError::Unavailable("x".into())))
                        } else {
                            version_idx = (version_idx + usize::from(c % 2)).min(2);
                            let (data, generation) = version(version_idx);
                            applying = Some(generation);
                            // A switch must publish after the read it applies.
                            published_ok = None;
                            Observation::Read(Ok(ClusterRead {
                                data: Some(Box::new(data)),
                                revision: Some(version_idx.to_string()),
                            }))
                        }
                    }
                    (Some(Request::Listen), _) => {
                        request = None;
                        Observation::Listened(Ok(()))
                    }
                    (Some(Request::Resolve(dests)), c) => {
                        let out = dests
                            .iter()
                            .map(|d| if c == 9 { Err("nx".to_string()) } else {
                                Ok(SocketAddr::new(d.host.parse().expect("ip"), 5432))
                            })
                            .collect();
                        request = None;
                        Observation::Resolved(out)
                    }
                    (Some(Request::Publish { generation, .. }), c) => {
                        let generation = *generation;
                        request = None;
                        if c == 2 {
                            Observation::Published(Err("x".into()))
                        } else {
                            published_ok = Some(generation);
                            published_start = Some(check_start);
                            Observation::Published(Ok(()))
                        }
                    }
                    (None, _) => Observation::Wake,
                };
            }
        }
    }
}

/// Over random runs with failsafe mode on (the store mostly down, a keeper answering late,
/// granting, refusing or failing): the proxy routes past `proxyTimeout` only to the master it
/// routed to, and only while one of the keeper's grants, counted from its request's send instant
/// and shrunk for drift, covers the present.
mod failsafe_property {
    use super::*;
    use proptest::prelude::*;

    /// Runs the machine; `Ok` counts the steps that routed past the timeout, `Err` describes
    /// the first one that did without a valid grant.
    pub(super) fn run(bug: Bug, choices: &[(u64, u8)]) -> Result<usize, String> {
        let mut routed_past_timeout = 0;
        let mut cfg = Config::new("p1".into(), secs(5), secs(15));
        cfg.confirmations = true;
        cfg.bug = bug;
        let mut mem = Memory::new(&cfg, Duration::ZERO);
        let mut now = Duration::ZERO;
        let mut obs = Observation::Wake;
        let mut request: Option<Request> = None;
        let mut asks: Vec<Duration> = Vec::new();
        let mut grants: Vec<(Duration, Duration)> = Vec::new();
        for &(dt, c) in choices {
            let d = step(&cfg, obs, mem, now);
            mem = d.memory;
            if let Some(w) = d.wake_at
                && w <= now
            {
                return Err(format!("wake_at {w:?} not after {now:?}"));
            }
            for a in &d.actions {
                if let Action::AskConfirmation { master_db, .. } = a {
                    if master_db != "m" {
                        return Err(format!("asked about {master_db}"));
                    }
                    asks.push(now);
                }
            }
            if mem.timed_out
                && let Some(p) = mem.primary
            {
                let covered = grants
                    .iter()
                    .any(|(sent, l)| now < *sent + crate::failsafe::Timers::shrink(*l));
                if p != addr(M) || !covered {
                    return Err(format!(
                        "routes to {p} at {now:?} past the timeout; grants {grants:?}"
                    ));
                }
                routed_past_timeout += 1;
            }
            if d.request.is_some() {
                request = d.request;
            }
            now += Duration::from_millis(dt);
            obs = match (&request, c) {
                // The keeper answers the oldest open request, late.
                (_, 5..=9) if !asks.is_empty() => {
                    let sent = asks.remove(0);
                    let answer = match c {
                        5..=7 => {
                            let lifetime = Duration::from_millis(7500 - u64::from(c) * 500);
                            grants.push((sent, lifetime));
                            ConfirmAnswer::Granted(lifetime)
                        }
                        8 if dt % 2 == 0 => ConfirmAnswer::Refused("no".into()),
                        _ => ConfirmAnswer::Failed("timeout".into()),
                    };
                    Observation::Confirmation {
                        master_db: "m".into(),
                        sent_at: sent,
                        answer,
                    }
                }
                (Some(Request::ReadClusterData), 0) => {
                    request = None;
                    Observation::Read(Ok(ClusterRead {
                        data: Some(Box::new(fs_cd(7, "m", &["p1"]))),
                        revision: Some("1".into()),
                    }))
                }
                (Some(Request::ReadClusterData), 1..=4) => {
                    request = None;
                    Observation::Read(Err(ReadError::Unavailable("down".into())))
                }
                (Some(Request::Listen), _) => {
                    request = None;
                    Observation::Listened(Ok(()))
                }
                (Some(Request::Resolve(_)), _) => {
                    request = None;
                    resolved(&[M, S1])
                }
                (Some(Request::Publish { .. }), _) => {
                    request = None;
                    Observation::Published(if c < 3 { Ok(()) } else { Err("x".into()) })
                }
                _ => Observation::Wake,
            };
        }
        Ok(routed_past_timeout)
    }

    proptest! {
        #[test]
        fn routing_past_the_timeout_always_rests_on_a_valid_grant(
            choices in proptest::collection::vec((0u64..4000, 0u8..10), 1..300)
        ) {
            let r = run(Bug::None, &choices);
            prop_assert!(r.is_ok(), "{:?}", r);
        }
    }
}

#[test]
fn the_failsafe_property_catches_a_proxy_counting_from_the_answer() {
    // The same 300 pseudo-random runs (a fixed xorshift seed) with and without the bug.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut routed, mut caught) = (0, 0);
    for _ in 0..300 {
        let choices: Vec<(u64, u8)> = (0..200)
            .map(|_| (next() % 4000, (next() % 10) as u8))
            .collect();
        match run_failsafe(Bug::None, &choices) {
            Ok(n) => routed += n,
            Err(e) => panic!("the correct machine broke the property: {e}"),
        }
        if run_failsafe(Bug::ConfirmFromArrival, &choices).is_err() {
            caught += 1;
        }
    }
    assert!(
        routed > 0,
        "no run routed on a confirmation past the timeout"
    );
    assert!(caught > 0, "the property never caught the broken variant");
    eprintln!("steps routed on a confirmation: {routed}; runs catching the bug: {caught}/300");
}

use failsafe_property::run as run_failsafe;

// ---------------------------------------------------------------------------------------------
// Holding connections during a planned switchover (docs/switchover.md)

fn holding(generation: i64, master: &str, phase: SwitchoverPhase) -> ClusterData {
    let mut c = cd(generation, master, &["p1"]);
    let mut sw = Switchover::request(
        "sw1".into(),
        String::new(),
        crate::duration::GoDuration::from_secs(20),
        Timestamp::zero(),
    );
    sw.phase = phase;
    c.switchover = Some(sw);
    c
}

#[test]
fn a_switchover_holds_new_connections_until_the_new_master_is_named() {
    let mut r = Run::routed();
    r.at(secs(1));
    r.step(Observation::StoreChanged);
    let reason = ClosedReason::NoMaster.to_string();
    assert_eq!(
        r.step(read(Some(holding(8, "", SwitchoverPhase::Holding)), "2")),
        (
            vec![
                Action::SetHold(Some(secs(20))),
                Action::SetDestination(None),
                log(Log::NotProxying(reason))
            ],
            publish(8)
        )
    );
    r.step(Observation::Published(Ok(())));
    // Later phases with the target still cleared keep holding: no action.
    r.at(secs(2));
    r.step(Observation::StoreChanged);
    assert_eq!(
        r.step(read(Some(holding(8, "", SwitchoverPhase::Stopping)), "3")),
        (vec![Action::CheckSucceeded], None)
    );
    // The new master: held connections go to it.
    r.at(secs(3));
    r.step(Observation::StoreChanged);
    r.step(read(Some(holding(9, "m2", SwitchoverPhase::Promoted)), "4"));
    assert_eq!(r.step(resolved(&[M2, S1])), (vec![], publish(9)));
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (
            vec![
                Action::SetDestination(Some(addr(M2))),
                Action::SetHold(None),
                log(Log::ProxyingTo(addr(M2))),
                Action::CheckSucceeded
            ],
            None
        )
    );
}

#[test]
fn a_failed_switchover_or_a_failover_does_not_hold() {
    // Rolled back: routing nowhere refuses as usual.
    let mut r = Run::routed();
    r.at(secs(1));
    r.step(Observation::StoreChanged);
    let (actions, _) = r.step(read(Some(holding(8, "", SwitchoverPhase::Failed)), "2"));
    assert!(
        !actions.iter().any(|a| matches!(a, Action::SetHold(_))),
        "{actions:?}"
    );
    // An ordinary failover (no switchover record): the same.
    let mut r = Run::routed();
    r.at(secs(1));
    r.step(Observation::StoreChanged);
    let (actions, _) = r.step(read(Some(cd(8, "", &["p1"])), "2"));
    assert!(
        !actions.iter().any(|a| matches!(a, Action::SetHold(_))),
        "{actions:?}"
    );
}

#[test]
fn held_connections_are_closed_when_the_proxy_fails_closed() {
    let mut r = Run::routed();
    r.at(secs(1));
    r.step(Observation::StoreChanged);
    r.step(read(Some(holding(8, "", SwitchoverPhase::Holding)), "2"));
    r.step(Observation::Published(Ok(())));
    // The store goes away: proxyTimeout after the last good check everything is closed,
    // held connections included.
    let down = || Observation::Read(Err(ReadError::Unavailable("down".into())));
    for t in [5, 10] {
        r.at(secs(t));
        r.step(Observation::Wake);
        r.step(down());
    }
    r.at(secs(16));
    let (actions, _) = r.step(Observation::Wake);
    assert_eq!(
        actions,
        vec![
            log(Log::TimedOut),
            Action::SetHold(None),
            Action::StopListening
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Failsafe mode (docs/failsafe.md): routing on the master keeper's confirmation while the store
// cannot be read. Timers for proxyTimeout 15 s: confirmations of at most 7.5 s, renewed every
// 1.875 s, each request bounded by 3.75 s.

const KEEPER_M: &str = "10.0.0.1:8100";
const KEEPER_M2: &str = "10.0.0.9:8100";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `cd(..)` with failsafe mode on and each master's keeper advertising its failsafe address.
fn fs_cd(generation: i64, master: &str, enabled: &[&str]) -> ClusterData {
    let mut c = cd(generation, master, enabled);
    if let Some(spec) = c.cluster.as_mut().and_then(|cl| cl.spec.as_mut()) {
        spec.failsafe_mode = Some(true);
    }
    for (uid, addr) in [("m", KEEPER_M), ("m2", KEEPER_M2)] {
        if let Some(db) = c.dbs.get_mut(uid) {
            db.status.failsafe_address = addr.into();
        }
    }
    c
}

fn down() -> Observation {
    Observation::Read(Err(ReadError::Unavailable("down".into())))
}

fn ask(address: &str, master_db: &str) -> Action {
    Action::AskConfirmation {
        address: address.into(),
        master_db: master_db.into(),
        deadline: ms(3750),
    }
}

fn answer(master_db: &str, sent_at: Duration, answer: ConfirmAnswer) -> Observation {
    Observation::Confirmation {
        master_db: master_db.into(),
        sent_at,
        answer,
    }
}

fn granted() -> ConfirmAnswer {
    ConfirmAnswer::Granted(ms(7500))
}

/// What a confirmation granted for 7.5 s counts for on the proxy's clock.
fn counted() -> Duration {
    crate::failsafe::Timers::shrink(ms(7500))
}

/// How the in-test keeper answers a request sent at an instant.
type Keeper<'a> = &'a dyn Fn(Duration) -> Option<ConfirmAnswer>;

impl Run {
    /// A proxy able to ask for confirmations, routed to M by a failsafe clusterdata at 0.
    fn routed_failsafe() -> Self {
        let mut r = Run::new(None);
        r.cfg.confirmations = true;
        r.step(Observation::Wake);
        r.step(read(Some(fs_cd(7, "m", &["p1"])), "1"));
        r.step(Observation::Listened(Ok(())));
        r.step(resolved(&[M, S1]));
        let (actions, _) = r.step(Observation::Published(Ok(())));
        assert_eq!(actions[0], Action::SetDestination(Some(addr(M))));
        r
    }

    /// Steps at every wake-up until `until` with the store down (every read fails at once) and
    /// `keeper` answering every confirmation request at once (`None`: no answer). Returns each
    /// step's instant and actions.
    fn store_down_until(&mut self, until: Duration, keeper: Keeper<'_>) -> Vec<(Duration, Action)> {
        let mut seen = Vec::new();
        let mut pending = std::collections::VecDeque::from([Observation::Wake]);
        for _ in 0..10_000 {
            let Some(obs) = pending.pop_front() else {
                break;
            };
            let (actions, request) = self.step(obs);
            for a in actions {
                if let Action::AskConfirmation { master_db, .. } = &a
                    && let Some(ans) = keeper(self.now)
                {
                    pending.push_back(answer(master_db, self.now, ans));
                }
                seen.push((self.now, a));
            }
            if request == Some(Request::ReadClusterData) {
                pending.push_back(down());
            }
            if pending.is_empty() {
                match self.wake_at {
                    Some(w) if w <= until => {
                        self.at(w);
                        pending.push_back(Observation::Wake);
                    }
                    _ => return seen,
                }
            }
        }
        panic!("no end in 10000 steps");
    }
}

fn fenced(seen: &[(Duration, Action)]) -> Option<Duration> {
    seen.iter()
        .find(|(_, a)| *a == Action::SetDestination(None))
        .map(|(t, _)| *t)
}

#[test]
fn failsafe_asks_the_master_keeper_as_soon_as_a_store_read_fails_then_every_renewal() {
    let mut r = Run::routed_failsafe();
    r.at(secs(5));
    r.step(Observation::Wake);
    assert_eq!(
        r.step(down()),
        (
            vec![
                log(Log::CheckFailed("cannot get cluster data: down".into())),
                ask(KEEPER_M, "m"),
            ],
            None
        )
    );
    assert_eq!(r.wake_at, Some(ms(6875)), "the next confirmation is due");
    r.at(ms(6875));
    assert_eq!(r.step(Observation::Wake), (vec![ask(KEEPER_M, "m")], None));
    assert_eq!(r.wake_at, Some(ms(8750)));
    // Not asked again before the renewal is due.
    r.at(ms(7000));
    assert_eq!(r.step(Observation::Wake), (vec![], None));
}

#[test]
fn with_a_valid_confirmation_the_timeout_keeps_routing_to_the_same_master() {
    let mut r = Run::routed_failsafe();
    r.at(secs(5));
    let seen = r.store_down_until(secs(60), &|_| Some(granted()));
    assert_eq!(fenced(&seen), None, "{seen:?}");
    assert!(
        seen.iter().all(|(_, a)| !matches!(
            a,
            Action::SetDestination(_) | Action::StopListening | Action::Log(Log::TimedOut)
        )),
        "{seen:?}"
    );
    let start = seen
        .iter()
        .position(|(_, a)| *a == Action::RoutingOnConfirmation(true))
        .expect("routes on the confirmation");
    assert_eq!(
        seen[start].0,
        secs(15),
        "from the moment proxyTimeout expires"
    );
    assert_eq!(
        seen[start - 1].1,
        log(Log::RoutingOnConfirmation {
            master_db: "m".into(),
            master: addr(M)
        })
    );
    assert_eq!(r.mem.primary, Some(addr(M)));
    assert!(r.mem.listening);
    // Requests keep going out every renewal period, never faster.
    let asks: Vec<Duration> = seen
        .iter()
        .filter(|(_, a)| matches!(a, Action::AskConfirmation { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert!(asks.len() > 20, "{asks:?}");
    assert!(asks.windows(2).all(|w| w[1] - w[0] >= ms(1875)), "{asks:?}");
}

#[test]
fn without_a_confirmation_the_timeout_fences_exactly_as_without_failsafe() {
    let failed = |_| Some(ConfirmAnswer::Failed("connection refused".into()));
    let refused = |_| Some(ConfirmAnswer::Refused("no valid acknowledgement".into()));
    let silent = |_| None;
    let keepers: [Keeper<'_>; 3] = [&failed, &refused, &silent];
    for keeper in keepers {
        let mut r = Run::routed_failsafe();
        r.at(secs(5));
        let seen = r.store_down_until(secs(15), keeper);
        let at_15: Vec<Action> = seen
            .iter()
            .filter(|(t, _)| *t == secs(15))
            .map(|(_, a)| a.clone())
            .collect();
        assert_eq!(
            at_15[..3],
            [
                log(Log::TimedOut),
                Action::SetDestination(None),
                Action::StopListening
            ],
            "{seen:?}"
        );
        assert_eq!(r.mem.failsafe, None);
        // Fenced, it asks for nothing any more.
        let later = r.store_down_until(secs(40), keeper);
        assert!(
            later
                .iter()
                .all(|(_, a)| !matches!(a, Action::AskConfirmation { .. })),
            "{later:?}"
        );
    }
}

#[test]
fn a_failed_request_is_logged_once_while_it_repeats() {
    let mut r = Run::routed_failsafe();
    r.at(secs(5));
    let seen = r.store_down_until(secs(14), &|_| {
        Some(ConfirmAnswer::Failed("no answer in time".into()))
    });
    let logged = seen
        .iter()
        .filter(|(_, a)| *a == log(Log::ConfirmationFailed("no answer in time".into())))
        .count();
    assert_eq!(logged, 1, "{seen:?}");
}

#[test]
fn a_refusal_while_routing_on_a_confirmation_fences_at_once() {
    let mut r = Run::routed_failsafe();
    r.at(secs(5));
    r.store_down_until(secs(20), &|_| Some(granted()));
    assert_eq!(r.mem.primary, Some(addr(M)));
    let held_until = r
        .mem
        .failsafe
        .as_ref()
        .and_then(|f| f.confirmed)
        .map(|c| c.1);
    assert!(held_until > Some(ms(21_000)), "{held_until:?}");
    r.at(ms(20_500));
    let (actions, _) = r.step(answer(
        "m",
        ms(20_400),
        ConfirmAnswer::Refused("this keeper's db was elected master".into()),
    ));
    assert_eq!(
        actions,
        vec![
            log(Log::ConfirmationFailed(
                "the keeper refused to confirm master db m: this keeper's db was elected master"
                    .into()
            )),
            log(Log::StoppedRoutingOnConfirmation(
                "no valid failsafe confirmation".into()
            )),
            Action::RoutingOnConfirmation(false),
            log(Log::TimedOut),
            Action::SetDestination(None),
            Action::StopListening,
        ]
    );
}

#[test]
fn a_refusal_older_than_the_confirmation_held_does_not_end_it() {
    let mut r = Run::routed_failsafe();
    r.at(secs(5));
    r.store_down_until(secs(20), &|_| Some(granted()));
    let held = r.mem.failsafe.as_ref().and_then(|f| f.confirmed);
    let (sent, _) = held.expect("a confirmation is held");
    r.at(ms(20_100));
    let (actions, _) = r.step(answer(
        "m",
        sent - ms(100),
        ConfirmAnswer::Refused("late".into()),
    ));
    assert!(
        !actions.contains(&Action::SetDestination(None)),
        "{actions:?}"
    );
    assert_eq!(r.mem.failsafe.as_ref().and_then(|f| f.confirmed), held);
}

#[test]
fn a_keeper_that_stops_answering_lets_the_confirmation_lapse_then_the_proxy_fences() {
    let mut r = Run::routed_failsafe();
    r.at(secs(5));
    // The keeper answers requests sent before 20 s, then nothing.
    let keeper = |t: Duration| (t < secs(20)).then(granted);
    let seen = r.store_down_until(secs(60), &keeper);
    let last_grant = seen
        .iter()
        .filter(|(t, a)| matches!(a, Action::AskConfirmation { .. }) && *t < secs(20))
        .map(|(t, _)| *t)
        .max()
        .expect("asked before 20 s");
    let end = last_grant + counted();
    assert_eq!(fenced(&seen), Some(end), "{seen:?}");
    let at_end: Vec<Action> = seen
        .iter()
        .filter(|(t, _)| *t == end)
        .map(|(_, a)| a.clone())
        .collect();
    assert_eq!(
        at_end[..5],
        [
            log(Log::StoppedRoutingOnConfirmation(
                "no valid failsafe confirmation".into()
            )),
            Action::RoutingOnConfirmation(false),
            log(Log::TimedOut),
            Action::SetDestination(None),
            Action::StopListening,
        ],
        "{seen:?}"
    );
    // Within proxyTimeout plus one confirmation lifetime of the last successful check.
    assert!(end < secs(20) + secs(15) + ms(7500));
}

#[test]
fn a_paused_proxy_finds_its_confirmation_expired_and_fences() {
    let mut r = Run::routed_failsafe();
    r.at(secs(5));
    r.store_down_until(secs(16), &|_| Some(granted()));
    assert_eq!(r.mem.primary, Some(addr(M)));
    // The process stops for a minute; the answer to a request it sent just before arrives.
    r.at(secs(76));
    let (actions, _) = r.step(answer("m", secs(16), granted()));
    assert_eq!(
        actions,
        vec![
            log(Log::StoppedRoutingOnConfirmation(
                "no valid failsafe confirmation".into()
            )),
            Action::RoutingOnConfirmation(false),
            log(Log::TimedOut),
            Action::SetDestination(None),
            Action::StopListening,
        ]
    );
    assert_eq!(r.mem.primary, None);
}

#[test]
fn a_confirmation_of_another_master_db_is_ignored() {
    let mut r = Run::routed_failsafe();
    r.at(secs(5));
    r.step(Observation::Wake);
    r.step(down());
    r.step(answer("m2", secs(5), granted()));
    assert_eq!(r.mem.failsafe.as_ref().and_then(|f| f.confirmed), None);
    // Only answers about m2 from now on: the timeout fences as without failsafe mode.
    let seen = r.store_down_until(secs(20), &|_| None);
    assert_eq!(fenced(&seen), Some(secs(15)), "{seen:?}");
}

#[test]
fn an_answer_to_a_request_sent_before_the_last_successful_check_is_ignored() {
    let mut r = Run::routed_failsafe();
    // The periodic check at 5 s succeeds.
    r.at(secs(5));
    r.step(Observation::Wake);
    r.step(read(Some(fs_cd(7, "m", &["p1"])), "1"));
    r.step(resolved(&[M, S1]));
    r.step(Observation::Published(Ok(())));
    assert_eq!(r.mem.fresh_since, secs(5));
    r.at(ms(5100));
    r.step(answer("m", ms(4900), granted()));
    assert_eq!(r.mem.failsafe.as_ref().and_then(|f| f.confirmed), None);
    // One asked after it counts.
    r.step(answer("m", ms(5050), granted()));
    assert_eq!(
        r.mem.failsafe.as_ref().and_then(|f| f.confirmed),
        Some((ms(5050), ms(5050) + counted()))
    );
}

#[test]
fn a_successful_check_ends_routing_on_confirmations_and_drops_them() {
    let mut r = Run::routed_failsafe();
    r.at(secs(5));
    r.store_down_until(secs(20), &|_| Some(granted()));
    assert!(r.mem.failsafe.as_ref().is_some_and(|f| f.routing));
    // The store answers again: the check re-publishes (timed out since) and keeps the route.
    let t = r.wake_at.expect("a wake-up");
    r.at(t);
    let (_, request) = r.step(Observation::Wake);
    let mut request = request;
    while request.as_ref() != Some(&Request::ReadClusterData) {
        let w = r.wake_at.expect("a wake-up");
        r.at(w);
        request = r.step(Observation::Wake).1;
    }
    assert_eq!(
        r.step(read(Some(fs_cd(7, "m", &["p1"])), "1")),
        (vec![], resolve(&[M, S1]))
    );
    assert_eq!(r.step(resolved(&[M, S1])), (vec![], publish(7)));
    assert_eq!(
        r.step(Observation::Published(Ok(()))),
        (
            vec![
                log(Log::StoppedRoutingOnConfirmation(
                    "the store can be read again".into()
                )),
                Action::RoutingOnConfirmation(false),
                Action::CheckSucceeded,
            ],
            None
        )
    );
    let f = r.mem.failsafe.clone().expect("still in failsafe mode");
    assert_eq!((f.asking, f.confirmed, f.routing), (false, None, false));
    assert!(!r.mem.timed_out);
    // The store fails again: a fresh start, the old confirmations count for nothing.
    let now = r.now;
    let (actions, _) = r.step(answer("m", now - ms(500), granted()));
    assert_eq!(actions, vec![]);
    assert_eq!(r.mem.failsafe.as_ref().and_then(|f| f.confirmed), None);
}

#[test]
fn a_new_master_read_while_routing_on_a_confirmation_switches_as_usual() {
    let mut r = Run::routed_failsafe();
    r.at(secs(5));
    r.store_down_until(secs(20), &|_| Some(granted()));
    let mut request = None;
    for _ in 0..10 {
        let w = r.wake_at.expect("a wake-up");
        r.at(w);
        request = r.step(Observation::Wake).1;
        if request.is_some() {
            break;
        }
    }
    assert_eq!(request, Some(Request::ReadClusterData));
    r.step(read(Some(fs_cd(9, "m2", &["p1"])), "3"));
    r.step(resolved(&[M2, S1]));
    let (actions, _) = r.step(Observation::Published(Ok(())));
    assert_eq!(
        actions[..3],
        [
            log(Log::StoppedRoutingOnConfirmation(
                "the store can be read again".into()
            )),
            Action::RoutingOnConfirmation(false),
            Action::SetDestination(Some(addr(M2))),
        ]
    );
    let f = r.mem.failsafe.clone().expect("failsafe mode");
    assert_eq!((f.basis.master_db.as_str(), f.routed), ("m2", addr(M2)));
    assert_eq!(f.basis.keeper_address, KEEPER_M2);
}

#[test]
fn a_read_that_hangs_still_asks_in_time() {
    let mut r = Run::routed_failsafe();
    r.at(secs(5));
    assert_eq!(
        r.step(Observation::Wake),
        (vec![], Some(Request::ReadClusterData))
    );
    // The read never answers: the proxy asks once half of a confirmation's span is left.
    assert_eq!(r.wake_at, Some(ms(7500)));
    r.at(ms(7500));
    assert_eq!(r.step(Observation::Wake), (vec![ask(KEEPER_M, "m")], None));
    r.at(ms(7600));
    r.step(answer("m", ms(7500), granted()));
    r.at(ms(9375));
    r.step(Observation::Wake);
    r.step(answer("m", ms(9375), granted()));
    for t in [11_250, 13_125] {
        r.at(ms(t));
        assert_eq!(r.step(Observation::Wake), (vec![ask(KEEPER_M, "m")], None));
        r.step(answer("m", ms(t), granted()));
    }
    r.at(secs(15));
    let (actions, _) = r.step(Observation::Wake);
    assert_eq!(
        actions,
        vec![
            log(Log::RoutingOnConfirmation {
                master_db: "m".into(),
                master: addr(M)
            }),
            Action::RoutingOnConfirmation(true),
            ask(KEEPER_M, "m"),
        ]
    );
}

#[test]
fn failsafe_off_in_the_clusterdata_asks_nothing_and_fences_as_before() {
    let mut r = Run::new(None);
    r.cfg.confirmations = true;
    r.step(Observation::Wake);
    r.step(read(Some(cd(7, "m", &["p1"])), "1"));
    r.step(Observation::Listened(Ok(())));
    r.step(resolved(&[M, S1]));
    r.step(Observation::Published(Ok(())));
    r.at(secs(5));
    let seen = r.store_down_until(secs(15), &|_| Some(granted()));
    assert!(
        seen.iter()
            .all(|(_, a)| !matches!(a, Action::AskConfirmation { .. })),
        "{seen:?}"
    );
    assert_eq!(fenced(&seen), Some(secs(15)));
}

#[test]
fn a_proxy_without_the_secret_or_a_keeper_without_an_address_says_so_once_and_fences() {
    let no_secret = {
        let mut r = Run::routed_failsafe();
        r.cfg.confirmations = false;
        r
    };
    let no_address = {
        let mut r = Run::new(None);
        r.cfg.confirmations = true;
        let mut c = fs_cd(7, "m", &["p1"]);
        c.dbs
            .get_mut("m")
            .expect("m")
            .status
            .failsafe_address
            .clear();
        r.step(Observation::Wake);
        r.step(read(Some(c), "1"));
        r.step(Observation::Listened(Ok(())));
        r.step(resolved(&[M, S1]));
        r.step(Observation::Published(Ok(())));
        r
    };
    for (mut r, said) in [
        (
            no_secret,
            "failsafeMode is on but this proxy has no failsafe secret",
        ),
        (
            no_address,
            "the keeper of master db m has no failsafe address",
        ),
    ] {
        r.at(secs(5));
        let seen = r.store_down_until(secs(20), &|_| Some(granted()));
        let lines: Vec<_> = seen
            .iter()
            .filter(|(_, a)| matches!(a, Action::Log(Log::ConfirmationFailed(_))))
            .collect();
        assert_eq!(
            lines,
            [&(secs(5), log(Log::ConfirmationFailed(said.into())))]
        );
        assert!(
            seen.iter()
                .all(|(_, a)| !matches!(a, Action::AskConfirmation { .. })),
            "{seen:?}"
        );
        assert_eq!(fenced(&seen), Some(secs(15)));
    }
}

#[test]
fn the_injected_bugs_still_work() {
    // NoFailClosed: the timeout does not fence (failsafe off).
    let mut r = Run::routed();
    r.cfg.bug = Bug::NoFailClosed;
    r.at(secs(5));
    let seen = r.store_down_until(secs(30), &|_| None);
    assert_eq!(fenced(&seen), None, "{seen:?}");
    assert!(seen.contains(&(secs(15), log(Log::TimedOut))));
    assert_eq!(r.mem.primary, Some(addr(M)));

    // ConfirmFromArrival: an answer that took 0.9 s counts 0.9 s too long.
    let run = |bug| {
        let mut r = Run::routed_failsafe();
        r.cfg.bug = bug;
        r.at(secs(5));
        r.store_down_until(ms(14_000), &|_| None);
        r.at(ms(14_900));
        r.step(answer("m", ms(14_000), granted()));
        r.at(ms(14_000) + counted() + ms(500));
        let (actions, _) = r.step(Observation::Wake);
        (
            actions.contains(&Action::SetDestination(None)),
            r.mem.primary,
        )
    };
    assert_eq!(run(Bug::None), (true, None));
    let buggy = run(Bug::ConfirmFromArrival);
    assert_eq!(buggy, (false, Some(addr(M))));
}
