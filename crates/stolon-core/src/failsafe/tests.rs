//! Named scenarios of the failsafe rule, and a model with drifting clocks and delayed or lost
//! messages that checks the rule's promise: no proxy routes to the old master once the elected
//! keeper may promote.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::GoDuration;
use crate::model::{ClusterInitMode, ClusterSpec};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn timers() -> Timers {
    Timers::with_ack_lifetime(secs(8))
}

fn ack_view(keeper: &str, master: Option<(&str, &str)>) -> AckView {
    AckView {
        keeper_uid: keeper.into(),
        timers: Some(timers()),
        master: master.map(|(d, k)| (d.into(), k.into())),
        local_may_be_primary: false,
    }
}

fn req() -> AckRequest {
    AckRequest {
        master_db: "db0".into(),
        master_keeper: "keeper0".into(),
    }
}

fn no_promise() -> Promise {
    Promise { until: secs(0) }
}

fn confirm_view() -> ConfirmView {
    ConfirmView {
        keeper_uid: "keeper0".into(),
        timers: Some(timers()),
        master: Some(("db0".into(), "keeper0".into())),
        proxy_target: "db0".into(),
        peers: vec!["keeper1".into(), "keeper2".into()],
        local_is_primary: true,
    }
}

#[test]
fn a_standby_acknowledges_the_master_it_knows_and_promises_the_lifetime() {
    let d = answer_ack(
        &ack_view("keeper1", Some(("db0", "keeper0"))),
        &req(),
        no_promise(),
        secs(100),
    );
    assert_eq!(d.answer, Ok(secs(8)));
    assert_eq!(d.promise, Promise { until: secs(108) });
    assert_eq!(may_promote(d.promise, secs(107)), Err(secs(108)));
    assert_eq!(may_promote(d.promise, secs(108)), Ok(()));
}

#[test]
fn a_later_acknowledgement_never_shortens_the_promise() {
    let earlier = Promise { until: secs(120) };
    let d = answer_ack(
        &ack_view("keeper1", Some(("db0", "keeper0"))),
        &req(),
        earlier,
        secs(100),
    );
    assert_eq!(d.answer, Ok(secs(8)));
    assert_eq!(d.promise, earlier);
}

#[test]
fn an_elected_keeper_refuses_and_keeps_the_promise_it_gave() {
    let given = Promise { until: secs(105) };
    let d = answer_ack(
        &ack_view("keeper1", Some(("db1", "keeper1"))),
        &req(),
        given,
        secs(100),
    );
    assert_eq!(d.answer, Err(Refusal::Elected));
    assert_eq!(d.promise, given);
    assert_eq!(may_promote(d.promise, secs(100)), Err(secs(105)));
}

#[test]
fn a_keeper_that_knows_another_master_refuses() {
    let d = answer_ack(
        &ack_view("keeper1", Some(("db2", "keeper2"))),
        &req(),
        no_promise(),
        secs(100),
    );
    assert_eq!(
        d.answer,
        Err(Refusal::NotTheMaster {
            named: Some("db2".into())
        })
    );
    let d = answer_ack(&ack_view("keeper1", None), &req(), no_promise(), secs(100));
    assert_eq!(d.answer, Err(Refusal::NotTheMaster { named: None }));
    assert_eq!(d.promise, no_promise());
}

#[test]
fn a_keeper_whose_postgres_may_be_a_primary_refuses() {
    let mut v = ack_view("keeper1", Some(("db0", "keeper0")));
    v.local_may_be_primary = true;
    let d = answer_ack(&v, &req(), no_promise(), secs(100));
    assert_eq!(d.answer, Err(Refusal::LocalPrimary));
}

#[test]
fn a_keeper_does_not_acknowledge_itself() {
    let d = answer_ack(
        &ack_view("keeper0", Some(("db0", "keeper0"))),
        &req(),
        no_promise(),
        secs(100),
    );
    assert_eq!(d.answer, Err(Refusal::SelfRequest));
}

#[test]
fn failsafe_off_refuses_acknowledgements_and_confirmations() {
    let mut v = ack_view("keeper1", Some(("db0", "keeper0")));
    v.timers = None;
    assert_eq!(
        answer_ack(&v, &req(), no_promise(), secs(1)).answer,
        Err(Refusal::Disabled)
    );
    let mut c = confirm_view();
    c.timers = None;
    assert_eq!(
        answer_confirm(&c, "db0", &BTreeMap::new(), secs(1)),
        Err(Refusal::Disabled)
    );
}

#[test]
fn a_restarted_keeper_keeps_a_full_promise_from_its_start() {
    let p = Promise::at_start(secs(50), Some(timers()));
    assert_eq!(may_promote(p, secs(57)), Err(secs(58)));
    assert_eq!(may_promote(p, secs(58)), Ok(()));
    assert_eq!(
        may_promote(Promise::at_start(secs(50), None), secs(50)),
        Ok(())
    );
}

#[test]
fn the_master_confirms_only_while_it_holds_every_peers_acknowledgement() {
    let v = confirm_view();
    let mut acks = BTreeMap::new();
    acks.insert("keeper1".to_string(), secs(110));
    assert_eq!(
        answer_confirm(&v, "db0", &acks, secs(100)),
        Err(Refusal::MissingAcks(vec!["keeper2".into()]))
    );
    // An expired acknowledgement counts as none.
    acks.insert("keeper2".to_string(), secs(100));
    assert_eq!(
        answer_confirm(&v, "db0", &acks, secs(100)),
        Err(Refusal::MissingAcks(vec!["keeper2".into()]))
    );
    // Both valid: the confirmation is the shorter of its own lifetime and the oldest
    // acknowledgement's remainder.
    acks.insert("keeper2".to_string(), secs(102));
    assert_eq!(answer_confirm(&v, "db0", &acks, secs(100)), Ok(secs(2)));
    acks.insert("keeper2".to_string(), secs(130));
    assert_eq!(answer_confirm(&v, "db0", &acks, secs(100)), Ok(secs(4)));
}

#[test]
fn the_master_refuses_when_it_is_not_routed_not_primary_or_not_the_named_master() {
    let mut acks = BTreeMap::new();
    acks.insert("keeper1".to_string(), secs(200));
    acks.insert("keeper2".to_string(), secs(200));
    let mut v = confirm_view();
    v.proxy_target = String::new();
    assert_eq!(
        answer_confirm(&v, "db0", &acks, secs(100)),
        Err(Refusal::NotRouted)
    );
    let mut v = confirm_view();
    v.local_is_primary = false;
    assert_eq!(
        answer_confirm(&v, "db0", &acks, secs(100)),
        Err(Refusal::NotPrimary)
    );
    let v = confirm_view();
    assert_eq!(
        answer_confirm(&v, "db9", &acks, secs(100)),
        Err(Refusal::NotTheMaster {
            named: Some("db0".into())
        })
    );
    let mut v = confirm_view();
    v.master = Some(("db1".into(), "keeper1".into()));
    assert_eq!(
        answer_confirm(&v, "db0", &acks, secs(100)),
        Err(Refusal::NotTheMaster {
            named: Some("db1".into())
        })
    );
}

#[test]
fn timers_derive_from_proxy_timeout() {
    let spec = ClusterSpec::new_init(ClusterInitMode::New).effective();
    let t = Timers::from_spec(&spec).expect("defaults are valid");
    assert_eq!(
        t,
        Timers {
            ack_lifetime: secs(15),
            ack_renew: ms(3750),
            confirm_lifetime: ms(7500),
            confirm_renew: ms(1875),
            request_timeout: ms(3750),
        }
    );
}

#[test]
fn failsafe_rules_are_validated_only_when_it_is_on() {
    let mut spec = ClusterSpec::new_init(ClusterInitMode::New);
    spec.fail_interval = Some(GoDuration::from_secs(3));
    assert_eq!(spec.validate(), Ok(()));
    spec.failsafe_mode = Some(true);
    assert_eq!(
        spec.validate().map_err(|e| e.0),
        Err(
            "proxyTimeout must not be greater than failInterval when failsafeMode is enabled"
                .to_string()
        )
    );
    spec.proxy_timeout = Some(GoDuration::from_millis(800));
    spec.proxy_check_interval = Some(GoDuration::from_millis(200));
    assert_eq!(
        spec.validate().map_err(|e| e.0),
        Err("proxyTimeout must be at least 1s when failsafeMode is enabled".to_string())
    );
    spec.proxy_timeout = Some(GoDuration::from_secs(3));
    spec.proxy_check_interval = Some(GoDuration::from_secs(1));
    assert_eq!(spec.validate(), Ok(()));
    spec.failsafe_mode = Some(false);
    assert_eq!(spec.validate(), Ok(()));
}

#[test]
fn failsafe_mode_is_off_unless_set_and_round_trips_in_json() {
    let spec: ClusterSpec = serde_json::from_str(r#"{"initMode":"new"}"#).expect("valid spec json");
    assert!(!spec.effective().failsafe_mode);
    let spec: ClusterSpec =
        serde_json::from_str(r#"{"initMode":"new","failsafeMode":true}"#).expect("valid json");
    assert!(spec.effective().failsafe_mode);
    assert_eq!(
        serde_json::to_string(&spec).expect("serialises"),
        r#"{"initMode":"new","failsafeMode":true}"#
    );
}

#[test]
fn a_shrunk_lifetime_ends_before_the_grant_at_the_worst_drift() {
    // The asker's clock runs as slow as allowed (its lifetime lasts longest in real time), the
    // granter's as fast as allowed (its promise lasts shortest).
    let granted = secs(10);
    let shrunk = Timers::shrink(granted);
    let rho = MAX_DRIFT_PPM as f64 / 1e6;
    let asker_real = shrunk.as_secs_f64() / (1.0 - rho);
    let granter_real = granted.as_secs_f64() / (1.0 + rho);
    assert!(asker_real <= granter_real, "{asker_real} > {granter_real}");
    assert!(shrunk < granted);
}

// ---------------------------------------------------------------------------------------------
// The model: a master's keeper, up to three other keepers (the first is elected at some point),
// one proxy; every clock drifts within the bound, every message is delayed or lost at random.

/// A broken variant of the rule, to show the model's check can fail.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rule {
    AsDesigned,
    /// The master's keeper confirms without holding every acknowledgement.
    ConfirmWithoutAcks,
    /// The proxy counts a confirmation from when the answer arrived, not from when it asked.
    CountFromReceipt,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A party's clock: local = offset + real × (1 + ppm / 10⁶), in nanoseconds.
#[derive(Clone, Copy)]
struct Clock {
    offset: u128,
    ppm: i64,
}

impl Clock {
    fn random(rng: &mut Rng) -> Clock {
        let bound = MAX_DRIFT_PPM as i64 - 1;
        Clock {
            offset: u128::from(rng.below(1_000_000_000_000)),
            ppm: rng.below(2 * bound as u64 + 1) as i64 - bound,
        }
    }
    fn rate(&self) -> u128 {
        (1_000_000 + self.ppm) as u128
    }
    fn local(&self, real: u128) -> Duration {
        let nanos = self.offset + real * self.rate() / 1_000_000;
        Duration::from_nanos(nanos as u64)
    }
    /// The earliest real time at which this clock reads at least `local`.
    fn real_at(&self, local: Duration) -> u128 {
        let l = local.as_nanos();
        if l <= self.offset {
            return 0;
        }
        ((l - self.offset) * 1_000_000).div_ceil(self.rate())
    }
}

#[derive(Clone, Debug)]
enum Msg {
    AckRequest {
        peer: usize,
        sent: Duration,
    },
    AckReply {
        peer: usize,
        sent: Duration,
        granted: Duration,
    },
    ConfirmRequest {
        sent: Duration,
    },
    ConfirmReply {
        sent: Duration,
        granted: Duration,
    },
}

/// What one random history showed.
struct Outcome {
    /// The first violation, described.
    violation: Option<String>,
    /// How many confirmations let the proxy route.
    routed: usize,
}

/// Runs one random history.
fn run(seed: u64, rule: Rule) -> Outcome {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let t = Timers::with_ack_lifetime(ms(1000 + rng.below(14_000)));
    let peers = 1 + rng.below(3) as usize;
    let master_clock = Clock::random(&mut rng);
    let proxy_clock = Clock::random(&mut rng);
    let peer_clocks: Vec<Clock> = (0..peers).map(|_| Clock::random(&mut rng)).collect();
    let horizon: u128 = 60_000_000_000;
    // Peer 0 reads the clusterdata that elects it at this real time.
    let elected_at: u128 = u128::from(rng.below(40_000_000_000));
    let max_delay = u128::from(rng.below(3_000_000_000) + 1);
    let loss = rng.below(4); // in quarters: 0 = no loss ... 3 = 75% lost

    let mut queue: Vec<(u128, Msg)> = Vec::new();
    let delay = |rng: &mut Rng| u128::from(rng.next()) % max_delay;
    // The master's keeper asks every peer each renewal period.
    let mut at: u128 = 0;
    while at < horizon {
        let sent = master_clock.local(at);
        for peer in 0..peers {
            queue.push((at + delay(&mut rng), Msg::AckRequest { peer, sent }));
        }
        at += t.ack_renew.as_nanos();
    }
    // The proxy asks for a confirmation every renewal period, from a random start.
    let mut at = u128::from(rng.below(5_000_000_000));
    while at < horizon {
        let sent = proxy_clock.local(at);
        queue.push((at + delay(&mut rng), Msg::ConfirmRequest { sent }));
        at += t.confirm_renew.as_nanos().max(1);
    }

    let mut promises = vec![
        Promise {
            until: Duration::ZERO
        };
        peers
    ];
    let mut acks: BTreeMap<String, Duration> = BTreeMap::new();
    let mut routes: Vec<(u128, u128)> = Vec::new(); // real [from, until) the proxy may route
    let peer_name = |i: usize| format!("keeper{}", i + 1);
    let confirm = ConfirmView {
        keeper_uid: "keeper0".into(),
        timers: Some(t),
        master: Some(("db0".into(), "keeper0".into())),
        proxy_target: "db0".into(),
        peers: (0..peers).map(peer_name).collect(),
        local_is_primary: true,
    };
    while !queue.is_empty() {
        // Earliest first.
        let i = (0..queue.len()).min_by_key(|&i| queue[i].0).unwrap_or(0);
        let (now, msg) = queue.swap_remove(i);
        match msg {
            Msg::AckRequest { peer, sent } => {
                let elected = peer == 0 && now >= elected_at;
                let view = AckView {
                    keeper_uid: peer_name(peer),
                    timers: Some(t),
                    master: Some(if elected {
                        ("db1".into(), "keeper1".into())
                    } else {
                        ("db0".into(), "keeper0".into())
                    }),
                    local_may_be_primary: false,
                };
                let local = peer_clocks[peer].local(now);
                let d = answer_ack(&view, &req(), promises[peer], local);
                promises[peer] = d.promise;
                if let Ok(granted) = d.answer
                    && rng.below(4) >= loss
                {
                    let arrive = now + delay(&mut rng);
                    queue.push((
                        arrive,
                        Msg::AckReply {
                            peer,
                            sent,
                            granted,
                        },
                    ));
                }
            }
            Msg::AckReply {
                peer,
                sent,
                granted,
            } => {
                let until = ack_valid_until(sent, granted);
                let e = acks.entry(peer_name(peer)).or_insert(until);
                *e = (*e).max(until);
            }
            Msg::ConfirmRequest { sent } => {
                let local = master_clock.local(now);
                let answer = match rule {
                    Rule::AsDesigned | Rule::CountFromReceipt => {
                        answer_confirm(&confirm, "db0", &acks, local)
                    }
                    Rule::ConfirmWithoutAcks => Ok(t.confirm_lifetime),
                };
                if let Ok(granted) = answer
                    && rng.below(4) >= loss
                {
                    queue.push((now + delay(&mut rng), Msg::ConfirmReply { sent, granted }));
                }
            }
            Msg::ConfirmReply { sent, granted } => {
                let from = match rule {
                    Rule::CountFromReceipt => proxy_clock.local(now),
                    _ => sent,
                };
                let until = proxy_clock.real_at(confirmed_until(from, granted));
                if until > now {
                    routes.push((now, until));
                }
            }
        }
    }
    // The elected keeper promotes once it has read the election and its promise is over.
    let promoted_at = elected_at.max(peer_clocks[0].real_at(promises[0].until));
    let violation = routes
        .iter()
        .find(|(from, until)| *until > promoted_at && *from < horizon)
        .map(|(from, until)| {
            format!(
                "seed {seed}: the proxy routes to the old master in [{from}, {until}) ns while \
                 the elected keeper may promote from {promoted_at} ns"
            )
        });
    Outcome {
        violation,
        routed: routes.len(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn no_proxy_routes_to_the_old_master_once_the_elected_keeper_may_promote(seed in any::<u64>()) {
        if let Some(v) = run(seed, Rule::AsDesigned).violation {
            prop_assert!(false, "{}", v);
        }
    }
}

#[test]
fn the_rule_as_designed_does_confirm_in_most_histories() {
    // Without this the property above could hold because nothing is ever confirmed.
    let routing = (0..200u64)
        .filter(|s| run(*s, Rule::AsDesigned).routed > 0)
        .count();
    assert!(
        routing >= 100,
        "only {routing} of 200 histories ever routed"
    );
}

#[test]
fn a_master_confirming_without_every_acknowledgement_is_caught() {
    let caught = (0..200u64).find_map(|s| run(s, Rule::ConfirmWithoutAcks).violation);
    assert!(
        caught.is_some(),
        "the model never noticed a master that confirms without acknowledgements"
    );
}

#[test]
fn a_proxy_counting_its_confirmation_from_the_answer_is_caught() {
    let caught = (0..500u64).find_map(|s| run(s, Rule::CountFromReceipt).violation);
    assert!(
        caught.is_some(),
        "the model never noticed a proxy that counts from the answer"
    );
}

#[test]
fn a_refusal_travels_with_its_kind() {
    let a = wire::AnswerMsg::from_decision(&Err(Refusal::MissingAcks(vec!["keeper1".into()])));
    assert_eq!(a.granted(), None);
    assert_eq!(a.refusal.as_deref(), Some("missing-acks"));
    assert_eq!(
        a.refused.as_deref(),
        Some("no valid acknowledgement from keepers keeper1")
    );
    let g = wire::AnswerMsg::from_decision(&Ok(Duration::from_millis(1500)));
    assert_eq!(g.refusal, None);
    // Every kind has its own code.
    let all = [
        Refusal::Disabled,
        Refusal::NotTheMaster { named: None },
        Refusal::SelfRequest,
        Refusal::LocalPrimary,
        Refusal::Elected,
        Refusal::NotPrimary,
        Refusal::NotRouted,
        Refusal::MissingAcks(Vec::new()),
    ];
    let codes: std::collections::BTreeSet<&str> = all.iter().map(Refusal::code).collect();
    assert_eq!(codes.len(), all.len());
}
