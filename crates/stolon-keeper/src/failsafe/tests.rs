//! The keeper's failsafe state: what it answers from what it last read and observed, what it
//! remembers, and the master keeper's acknowledgement rounds over an in-test transport.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use stolon_core::failsafe::wire::{AckRequestMsg, AnswerMsg, ConfirmRequestMsg};
use stolon_core::failsafe::{Promise, Timers};
use stolon_core::keeper::promise_left;
use stolon_core::model::{ClusterData, Db, DbRole, DbSpec, Keeper, Proxy};
use stolon_failsafe::{CallError, Responder, Transport};
use tokio_util::sync::CancellationToken;

use super::*;

const LIFETIME: Duration = Duration::from_secs(4);

/// Keepers k0..k{n-1} running db0..db{n-1}, db0 the master, failsafe mode on with a
/// `proxyTimeout` of 4 s; each DB serves the failsafe address `addr-<keeper>`.
fn cd(n: usize, failsafe: bool) -> ClusterData {
    let spec = format!(
        r#"{{"formatVersion":1,"cluster":{{"uid":"c1","spec":{{"initMode":"new","failsafeMode":{failsafe},"proxyTimeout":"4s","proxyCheckInterval":"1s"}}}}}}"#
    );
    let mut cd: ClusterData = serde_json::from_str(&spec).expect("valid clusterdata");
    for i in 0..n {
        let k = format!("k{i}");
        cd.keepers.insert(
            k.clone(),
            Keeper {
                uid: k.clone(),
                ..Default::default()
            },
        );
        let mut db = Db {
            uid: format!("db{i}"),
            spec: Some(DbSpec {
                keeper_uid: k.clone(),
                role: Some(if i == 0 {
                    DbRole::Master
                } else {
                    DbRole::Standby
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        db.status.failsafe_address = format!("addr-{k}");
        cd.dbs.insert(format!("db{i}"), db);
    }
    set_master(&mut cd, "db0");
    cd
}

fn set_master(cd: &mut ClusterData, db: &str) {
    if let Some(c) = cd.cluster.as_mut() {
        c.status.master = db.into();
    }
    let mut p = Proxy::default();
    p.spec.master_db_uid = db.into();
    cd.proxy = Some(p);
}

fn ack_req() -> AckRequestMsg {
    AckRequestMsg {
        master_db: "db0".into(),
        master_keeper: "k0".into(),
    }
}

fn confirm_req() -> ConfirmRequestMsg {
    ConfirmRequestMsg {
        master_db: "db0".into(),
    }
}

fn state(uid: &str) -> FailsafeState {
    FailsafeState::new(uid, tokio::time::Instant::now())
}

#[tokio::test(start_paused = true)]
async fn a_standby_acknowledges_its_master_and_its_promise_then_holds_back_a_promotion() {
    let s = state("k1");
    s.set_clusterdata(Some(cd(2, true)));
    // What the keeper saw of its PostgreSQL decides: unknown may be a primary.
    let refused = s.ack(&ack_req());
    assert_eq!(
        refused.refused.as_deref(),
        Some("the local postgres may be a primary")
    );
    s.set_local(LocalPg::Standby);
    tokio::time::advance(Duration::from_secs(10)).await;
    let a = s.ack(&ack_req());
    assert_eq!(a.granted(), Some(LIFETIME));
    let promise = s.promise().expect("a promise");
    assert_eq!(promise.until, s.now() + LIFETIME);
    // Elected: no acknowledgement any more, and no promotion before the promise is over.
    let mut elected = cd(2, true);
    spec_role(&mut elected, "db0", DbRole::Standby);
    spec_role(&mut elected, "db1", DbRole::Master);
    set_master(&mut elected, "db1");
    s.set_clusterdata(Some(elected));
    assert_eq!(
        s.ack(&ack_req()).refused.as_deref(),
        Some("this keeper's db was elected master")
    );
    assert_eq!(s.promise(), Some(promise));
    assert_eq!(promise_left(s.promise(), s.now()), LIFETIME);
    tokio::time::advance(LIFETIME).await;
    assert_eq!(promise_left(s.promise(), s.now()), Duration::ZERO);
}

fn spec_role(cd: &mut ClusterData, db: &str, role: DbRole) {
    if let Some(s) = cd.dbs.get_mut(db).and_then(|d| d.spec.as_mut()) {
        s.role = Some(role);
    }
}

#[tokio::test(start_paused = true)]
async fn a_started_keeper_promises_one_lifetime_once_failsafe_timers_are_known() {
    let s = state("k1");
    s.set_clusterdata(Some(cd(2, false)));
    assert_eq!(s.promise(), None);
    assert_eq!(
        s.ack(&ack_req()).refused.as_deref(),
        Some("failsafe mode is not enabled")
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    s.set_clusterdata(Some(cd(2, true)));
    // Counted from the keeper's start, not from when the timers became known.
    assert_eq!(
        s.promise(),
        Some(Promise {
            until: Duration::ZERO + LIFETIME
        })
    );
    assert_eq!(
        promise_left(s.promise(), s.now()),
        LIFETIME - Duration::from_secs(1)
    );
}

#[tokio::test(start_paused = true)]
async fn the_master_confirms_only_with_every_acknowledgement_and_only_as_a_primary() {
    let s = state("k0");
    s.set_clusterdata(Some(cd(3, true)));
    s.set_local(LocalPg::Primary);
    let missing = s.confirm(&confirm_req());
    assert_eq!(
        missing.refused.as_deref(),
        Some("no valid acknowledgement from keepers k1, k2")
    );
    let sent = s.now();
    s.record_ack("k1", sent, Some(LIFETIME));
    assert_eq!(
        s.confirm(&confirm_req()).refused.as_deref(),
        Some("no valid acknowledgement from keepers k2")
    );
    s.record_ack("k2", sent, Some(LIFETIME));
    let granted = s.confirm(&confirm_req()).granted().expect("confirmed");
    assert!(
        granted > Duration::ZERO && granted <= Timers::with_ack_lifetime(LIFETIME).confirm_lifetime
    );
    // A refusal removes the acknowledgement held.
    s.record_ack("k2", s.now(), None);
    assert!(s.confirm(&confirm_req()).granted().is_none());
    s.record_ack("k2", s.now(), Some(LIFETIME));
    // Not known to run as a primary: no confirmation.
    s.set_local(LocalPg::Unknown);
    assert_eq!(
        s.confirm(&confirm_req()).refused.as_deref(),
        Some("postgres is not known to run as a primary")
    );
    s.set_local(LocalPg::Primary);
    // Acknowledgements lapse on the keeper's clock.
    tokio::time::advance(LIFETIME).await;
    assert!(s.confirm(&confirm_req()).granted().is_none());
}

#[tokio::test(start_paused = true)]
async fn only_the_master_runs_acknowledgement_rounds_and_a_new_master_drops_what_it_held() {
    let master = state("k0");
    master.set_clusterdata(Some(cd(3, false)));
    assert_eq!(master.ack_round(), None);
    let mut c = cd(3, true);
    c.dbs
        .get_mut("db2")
        .expect("db2")
        .status
        .failsafe_address
        .clear();
    master.set_clusterdata(Some(c.clone()));
    let round = master.ack_round().expect("a round");
    assert_eq!(round.request, ack_req());
    assert_eq!(
        round.peers,
        vec![
            ("k1".to_string(), Some("addr-k1".to_string())),
            ("k2".to_string(), None)
        ]
    );
    assert_eq!(round.timers, Timers::with_ack_lifetime(LIFETIME));
    assert_eq!(state("k1").ack_round(), None);
    master.record_ack("k1", master.now(), Some(LIFETIME));
    assert_eq!(master.acks().len(), 1);
    spec_role(&mut c, "db0", DbRole::Standby);
    spec_role(&mut c, "db1", DbRole::Master);
    set_master(&mut c, "db1");
    master.set_clusterdata(Some(c));
    assert!(master.acks().is_empty());
    assert_eq!(master.ack_round(), None);
    // A late answer to a round of the former master is not kept.
    master.record_ack("k1", master.now(), Some(LIFETIME));
    assert!(master.acks().is_empty());
}

/// Requests reach the in-process keepers registered at an address; an unknown one never answers.
struct InProcess {
    keepers: BTreeMap<String, Arc<FailsafeState>>,
}

#[async_trait::async_trait]
impl Transport for InProcess {
    async fn ack(
        &self,
        addr: &str,
        req: &AckRequestMsg,
        deadline: Duration,
    ) -> Result<AnswerMsg, CallError> {
        match self.keepers.get(addr) {
            Some(k) => Ok(k.ack(req)),
            None => {
                tokio::time::sleep(deadline * 10).await;
                Err(CallError::Timeout(addr.to_string()))
            }
        }
    }

    async fn confirm(
        &self,
        addr: &str,
        req: &ConfirmRequestMsg,
        _deadline: Duration,
    ) -> Result<AnswerMsg, CallError> {
        self.keepers
            .get(addr)
            .map(|k| k.confirm(req))
            .ok_or_else(|| CallError::Timeout(addr.to_string()))
    }
}

#[tokio::test(start_paused = true)]
async fn the_master_gathers_every_acknowledgement_and_then_confirms() {
    let c = cd(3, true);
    let epoch = tokio::time::Instant::now();
    let keepers: Vec<Arc<FailsafeState>> = (0..3)
        .map(|i| Arc::new(FailsafeState::new(&format!("k{i}"), epoch)))
        .collect();
    for (i, k) in keepers.iter().enumerate() {
        k.set_clusterdata(Some(c.clone()));
        k.set_local(if i == 0 {
            LocalPg::Primary
        } else {
            LocalPg::Standby
        });
    }
    // k2 is not reachable yet.
    let transport = Arc::new(InProcess {
        keepers: [("addr-k1".to_string(), keepers[1].clone())].into(),
    });
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_acks(keepers[0].clone(), transport, cancel.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        keepers[0].confirm(&confirm_req()).refused.as_deref(),
        Some("no valid acknowledgement from keepers k2")
    );
    assert!(
        keepers[1]
            .promise()
            .is_some_and(|p| p.until > keepers[1].now())
    );
    cancel.cancel();
    task.await.expect("the loop ends when cancelled");

    let transport = Arc::new(InProcess {
        keepers: [
            ("addr-k1".to_string(), keepers[1].clone()),
            ("addr-k2".to_string(), keepers[2].clone()),
        ]
        .into(),
    });
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_acks(keepers[0].clone(), transport, cancel.clone()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let granted = keepers[0].confirm(&confirm_req()).granted();
    assert!(granted.is_some_and(|g| g > Duration::ZERO), "{granted:?}");
    // Renewed every quarter lifetime: still confirmed long after one lifetime.
    tokio::time::sleep(LIFETIME * 3).await;
    assert!(keepers[0].confirm(&confirm_req()).granted().is_some());
    cancel.cancel();
    task.await.expect("the loop ends when cancelled");
}

#[test]
fn the_local_state_is_read_from_the_observation() {
    use stolon_core::keeper::Probe;
    let obs = |init, standby, running| Observed {
        initialized: init,
        standby_signal: standby,
        running,
        ..Default::default()
    };
    let k = Probe::Known;
    assert_eq!(
        LocalPg::of(&obs(k(true), k(true), k(false))),
        LocalPg::Standby
    );
    assert_eq!(
        LocalPg::of(&obs(k(true), k(true), k(true))),
        LocalPg::Standby
    );
    assert_eq!(
        LocalPg::of(&obs(k(true), k(false), k(true))),
        LocalPg::Primary
    );
    assert_eq!(
        LocalPg::of(&obs(k(true), k(false), k(false))),
        LocalPg::Unknown
    );
    assert_eq!(
        LocalPg::of(&obs(k(false), k(false), k(false))),
        LocalPg::Unknown
    );
    assert_eq!(
        LocalPg::of(&obs(k(true), Probe::Unknown, k(true))),
        LocalPg::Unknown
    );
}
