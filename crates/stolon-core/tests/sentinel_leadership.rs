//! Named scenarios for leadership held by heartbeats, deposing a silent leader, and the
//! sightings a follower hands to its own takeover (stolon_core::sentinel::leadership,
//! stolon_core::sentinel::Sightings).

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use stolon_core::model::{KeeperInfo, ProxyInfo};
use stolon_core::sentinel::leadership::{
    Beat, Deposal, DeposalWatch, LEADER_REACTION, LeaderBeat, LeaderHold, deposal_wait,
};
use stolon_core::sentinel::{Sightings, memory_at_takeover};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const HOLD: Duration = Duration::from_secs(3);

fn beat(started: u64, completed: u64) -> Beat {
    Beat {
        started: ms(started),
        completed: ms(completed),
        hold: HOLD,
    }
}

fn leader(key: &str, revision: i64) -> Option<LeaderBeat> {
    Some(LeaderBeat {
        key: key.into(),
        revision,
        hold: Some(HOLD),
    })
}

#[test]
fn a_leader_without_a_counted_publish_does_not_act() {
    let mut h = LeaderHold::new();
    assert!(!h.may_act(ms(0)));
    // Its first publish waits for a read of the election started after it completed.
    h.published(beat(100, 200));
    assert!(!h.may_act(ms(250)));
    h.key_seen(ms(150));
    assert!(
        !h.may_act(ms(250)),
        "a read started before the publish completed proves nothing"
    );
    h.key_seen(ms(200));
    assert!(h.may_act(ms(250)));
    assert_eq!(
        h.deadline(),
        Some(ms(3100)),
        "the hold counts from the publish's start"
    );
}

#[test]
fn a_publish_completed_before_the_deadline_extends_it_at_once() {
    let mut h = LeaderHold::new();
    h.published(beat(0, 50));
    h.key_seen(ms(60));
    h.published(beat(1000, 2990));
    assert_eq!(h.deadline(), Some(ms(4000)));
    assert!(!h.waits_for_key());
}

#[test]
fn a_publish_completed_after_the_deadline_waits_for_the_key() {
    let mut h = LeaderHold::new();
    h.published(beat(0, 50));
    h.key_seen(ms(60));
    // It stalled past the deadline: the leader stops at 3 s, and resumes only once a read
    // started after the publish completed still finds its key.
    h.published(beat(1000, 3500));
    assert_eq!(h.deadline(), Some(ms(3000)));
    assert!(!h.may_act(ms(3600)));
    assert!(h.waits_for_key());
    h.key_seen(ms(3600));
    assert!(h.may_act(ms(3700)));
    assert_eq!(h.deadline(), Some(ms(4000)));
}

#[test]
fn an_older_publish_never_shortens_the_deadline() {
    let mut h = LeaderHold::new();
    h.published(beat(2000, 2100));
    h.key_seen(ms(2100));
    h.published(beat(1000, 2200));
    assert_eq!(h.deadline(), Some(ms(5000)));
}

#[test]
fn a_candidate_deposes_a_leader_whose_info_stayed_the_same_for_the_stretched_hold() {
    let mut w = DeposalWatch::new();
    let wait = deposal_wait(HOLD);
    assert!(
        wait > HOLD + LEADER_REACTION,
        "stretched for drift: {wait:?}"
    );
    assert!(wait < HOLD + LEADER_REACTION + ms(100), "{wait:?}");
    assert_eq!(
        w.observe(leader("k1", 7), ms(1000)),
        Deposal::WaitUntil(ms(1000) + wait)
    );
    assert_eq!(
        w.observe(leader("k1", 7), ms(3000)),
        Deposal::WaitUntil(ms(1000) + wait)
    );
    assert_eq!(
        w.observe(leader("k1", 7), ms(1000) + wait),
        Deposal::Depose {
            key: "k1".into(),
            revision: 7
        }
    );
}

#[test]
fn a_new_publish_or_a_new_leader_starts_the_wait_again() {
    let mut w = DeposalWatch::new();
    let wait = deposal_wait(HOLD);
    w.observe(leader("k1", 7), ms(0));
    assert_eq!(
        w.observe(leader("k1", 8), ms(3000)),
        Deposal::WaitUntil(ms(3000) + wait)
    );
    assert_eq!(
        w.observe(leader("k2", 8), ms(4000)),
        Deposal::WaitUntil(ms(4000) + wait)
    );
    // This candidate leads now; then the same leader is seen again: a fresh start.
    assert_eq!(w.observe(None, ms(5000)), Deposal::Never);
    assert_eq!(
        w.observe(leader("k2", 8), ms(6000)),
        Deposal::WaitUntil(ms(6000) + wait)
    );
}

#[test]
fn a_leader_that_announces_no_hold_or_has_no_info_is_never_deposed() {
    let mut w = DeposalWatch::new();
    let stolon = Some(LeaderBeat {
        key: "k1".into(),
        revision: 7,
        hold: None,
    });
    assert_eq!(w.observe(stolon.clone(), ms(0)), Deposal::Never);
    assert_eq!(w.observe(stolon, ms(600_000)), Deposal::Never);
    let no_info = Some(LeaderBeat {
        key: "k1".into(),
        revision: 0,
        hold: Some(HOLD),
    });
    assert_eq!(w.observe(no_info.clone(), ms(0)), Deposal::Never);
    assert_eq!(w.observe(no_info, ms(600_000)), Deposal::Never);
}

/// The core of the argument, over random schedules on one time line: the leader's publishes
/// (start, commit, completion), the candidate's reads, and a deposal that succeeds only while the
/// info still has the revision it was judged on. At the deposal the leader may no longer act,
/// with its clock and the candidate's drifting apart by up to the bound.
#[derive(Debug, Clone)]
struct Publish {
    started: u64,
    commit_after: u64,
    answer_after: u64,
}

fn publishes() -> impl Strategy<Value = Vec<Publish>> {
    proptest::collection::vec(
        (200u64..2500, 1u64..3000, 1u64..3000).prop_map(|(gap, c, a)| Publish {
            started: gap,
            commit_after: c,
            answer_after: a,
        }),
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn a_deposed_leader_no_longer_acts(
        plan in publishes(),
        read_every in 100u64..1500,
        leader_fast in any::<bool>(),
    ) {
        // The leader's clock runs 1 % fast or slow against real time (the drift bound), the
        // candidate's at real time; times in ms of real time.
        let rho = 0.01;
        let leader_clock = |real: u64| -> Duration {
            let f = if leader_fast { 1.0 + rho * 0.999 } else { 1.0 - rho * 0.999 };
            Duration::from_secs_f64(real as f64 * f / 1000.0)
        };
        let mut t = 0u64;
        // (start, commit, completion) in real ms; publishes go out one after another.
        let mut sched = Vec::new();
        for p in &plan {
            t += p.started;
            let commit = t + p.commit_after;
            let done = commit + p.answer_after;
            sched.push((t, commit, done));
            t = done;
        }
        let end = t + 20_000;
        // The candidate reads every `read_every` ms: the revision is the number of commits by
        // then; it deposes as soon as its watch says so.
        let mut w = DeposalWatch::new();
        let mut deposed_at = None;
        let mut r = 0;
        while r < end {
            let rev = sched.iter().filter(|(_, c, _)| *c <= r).count() as i64;
            let seen_at = Duration::from_millis(r + 1);
            match w.observe(leader("k", rev), seen_at) {
                Deposal::Depose { revision, .. } => {
                    // The transaction commits a little later, if the revision still holds.
                    let d = r + 2;
                    let now_rev = sched.iter().filter(|(_, c, _)| *c <= d).count() as i64;
                    if now_rev == revision {
                        deposed_at = Some(d);
                        break;
                    }
                }
                Deposal::WaitUntil(_) | Deposal::Never => {}
            }
            r += read_every;
        }
        let Some(d) = deposed_at else { return Ok(()); };
        // The leader: its publishes as it learns of them, in completion order; it reads the
        // election every 50 ms and finds its key while the deposal has not happened.
        let mut h = LeaderHold::new();
        let mut events: Vec<(u64, u8, usize)> = Vec::new();
        for (i, (_, _, done)) in sched.iter().enumerate() {
            events.push((*done, 0, i));
        }
        let mut q = 0;
        while q <= end {
            events.push((q, 1, 0));
            q += 50;
        }
        events.sort();
        for (at, kind, i) in events {
            match kind {
                0 => {
                    let (s, _, c) = sched[i];
                    h.published(Beat {
                        started: leader_clock(s),
                        completed: leader_clock(c),
                        hold: HOLD,
                    });
                }
                _ if at < d => h.key_seen(leader_clock(at)),
                _ => {}
            }
        }
        // At the deposal (and after it) the leader does not act, with the reaction bound
        // to spare.
        let at_deposal = leader_clock(d.saturating_sub(LEADER_REACTION.as_millis() as u64));
        prop_assert!(!h.may_act(at_deposal), "leader acts at {at_deposal:?}, deposed at {d} ms, deadline {:?}", h.deadline());
    }
}

fn keeper(info_uid: &str) -> KeeperInfo {
    KeeperInfo {
        info_uid: info_uid.into(),
        ..Default::default()
    }
}

fn proxy(info_uid: &str) -> ProxyInfo {
    ProxyInfo {
        info_uid: info_uid.into(),
        ..Default::default()
    }
}

#[test]
fn a_follower_that_saw_the_masters_info_stop_changing_credits_that_silence_at_takeover() {
    let mut s = Sightings::new();
    let k = |u: &str| BTreeMap::from([("k1".to_string(), keeper(u))]);
    let none = BTreeMap::new();
    s.observe(&k("a"), &none, ms(1000));
    s.observe(&k("b"), &none, ms(2000));
    s.observe(&k("b"), &none, ms(5000));
    // Takeover at 6 s; the store's ages were restarted (its own leader changed): age 0.
    let ages = BTreeMap::from([("k1".to_string(), Duration::ZERO)]);
    let mut mem = memory_at_takeover(&k("b"), &ages, ms(6000));
    s.credit(&mut mem, &k("b"), &none);
    let h = &mem.keeper_infos["k1"];
    assert!(h.seen);
    assert_eq!(
        h.first_seen,
        ms(2000),
        "seen changing at 2 s: silent for 4 s"
    );
}

#[test]
fn a_first_sighting_is_no_proof_of_life_for_a_keeper() {
    let mut s = Sightings::new();
    let k = BTreeMap::from([("k1".to_string(), keeper("a"))]);
    s.observe(&k, &BTreeMap::new(), ms(1000));
    let mut mem = memory_at_takeover(&k, &BTreeMap::new(), ms(6000));
    s.credit(&mut mem, &k, &BTreeMap::new());
    assert!(
        !mem.keeper_infos["k1"].seen,
        "never seen changing: judged from the takeover"
    );
}

#[test]
fn a_store_age_that_reaches_further_back_is_kept() {
    let mut s = Sightings::new();
    let k = |u: &str| BTreeMap::from([("k1".to_string(), keeper(u))]);
    s.observe(&k("a"), &BTreeMap::new(), ms(1000));
    s.observe(&k("b"), &BTreeMap::new(), ms(4000));
    let ages = BTreeMap::from([("k1".to_string(), ms(3000))]);
    let mut mem = memory_at_takeover(&k("b"), &ages, ms(6000));
    s.credit(&mut mem, &k("b"), &BTreeMap::new());
    assert_eq!(mem.keeper_infos["k1"].first_seen, ms(3000));
}

#[test]
fn a_sighting_of_an_info_replaced_since_is_not_credited() {
    let mut s = Sightings::new();
    let k = |u: &str| BTreeMap::from([("k1".to_string(), keeper(u))]);
    s.observe(&k("a"), &BTreeMap::new(), ms(1000));
    s.observe(&k("b"), &BTreeMap::new(), ms(2000));
    // The leader-to-be reads a newer info at takeover than its last sighting.
    let mut mem = memory_at_takeover(&k("c"), &BTreeMap::new(), ms(6000));
    s.credit(&mut mem, &k("c"), &BTreeMap::new());
    assert_eq!(mem.keeper_infos["k1"].info_uid, "c");
    assert!(!mem.keeper_infos["k1"].seen);
    assert_eq!(mem.keeper_infos["k1"].first_seen, ms(6000));
}

#[test]
fn a_proxys_first_sighting_starts_its_window_at_takeover() {
    let mut s = Sightings::new();
    let p = BTreeMap::from([("p1".to_string(), proxy("x"))]);
    s.observe(&BTreeMap::new(), &p, ms(1500));
    let mut mem = memory_at_takeover(&BTreeMap::new(), &BTreeMap::new(), ms(6000));
    s.credit(&mut mem, &BTreeMap::new(), &p);
    let h = &mem.proxy_infos["p1"];
    assert_eq!(h.first_seen, ms(1500));
    assert_eq!(h.info_uid, "x");
    // Gone from the store: forgotten.
    s.observe(&BTreeMap::new(), &BTreeMap::new(), ms(7000));
    assert!(s.is_empty());
}
