//! Small keeper policies that used to sit in the IO crates: how often and with which health the
//! publisher task republishes the keeper's info, for how long it lives in the store, and which
//! `pending_restart` parameters really ask for a restart.
//!
//! Pure: durations (how long since the keeper loop last refreshed its observation, the
//! `sleepInterval`) are passed in; the caller owns the clock, the random `infoUID` and the store.

use std::time::Duration;

use crate::model::KeeperInfo;
pub use crate::sentinel::MonoInstant;

/// After this many `sleepInterval`s without a refresh from the keeper loop, the published
/// PostgreSQL state says unhealthy.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// Minimum TTL of the published keeper info.
pub const MIN_INFO_TTL: Duration = Duration::from_secs(20);

/// The shortest republish period [`republish_period`] returns, so a zero or near-zero
/// `sleepInterval` cannot turn the publisher into a busy loop (the timer it feeds has a
/// resolution of one millisecond anyway).
pub const MIN_REPUBLISH_PERIOD: Duration = Duration::from_millis(1);

/// How often the keeper republishes an info that did not change in substance: once per
/// `sleepInterval`, as Stolon does. The sentinel counts an info as fresh for 1.5 ×
/// `sleepInterval` after it first sees it, so one publish per interval keeps a live keeper
/// fresh with half an interval to spare. The info's lease must never lapse: when
/// `sleepInterval` comes close to the TTL ([`info_ttl`], at least 20 s) the period is three
/// quarters of the TTL instead. Never below [`MIN_REPUBLISH_PERIOD`].
pub fn republish_period(sleep_interval: Duration) -> Duration {
    let lease_safe = info_ttl(sleep_interval) * 3 / 4;
    sleep_interval.min(lease_safe).max(MIN_REPUBLISH_PERIOD)
}

/// TTL of a published keeper info: `sleepInterval`, but at least [`MIN_INFO_TTL`].
pub fn info_ttl(sleep_interval: Duration) -> Duration {
    sleep_interval.max(MIN_INFO_TTL)
}

/// Whether the keeper loop's last observation is too old to vouch for the database: more than
/// [`STALE_AFTER_INTERVALS`] `sleepInterval`s have passed since it was refreshed (exactly that
/// many is still fresh). With a zero `sleepInterval` any positive age is stale; an interval so
/// large that the threshold overflows never makes anything stale.
pub fn observation_is_stale(since_refresh: Duration, sleep_interval: Duration) -> bool {
    match sleep_interval.checked_mul(STALE_AFTER_INTERVALS) {
        Some(threshold) => since_refresh > threshold,
        None => false,
    }
}

/// The info to publish, given the latest one from the keeper loop and how long ago the loop
/// refreshed it: unchanged while fresh; once [`observation_is_stale`], its PostgreSQL state (if
/// any) is marked unhealthy. The keeper is alive but nobody is looking after its database, so
/// the sentinel must not rely on it. The `infoUID` is left to the caller.
pub fn info_to_publish(
    mut info: KeeperInfo,
    since_refresh: Duration,
    sleep_interval: Duration,
) -> KeeperInfo {
    if observation_is_stale(since_refresh, sleep_interval)
        && let Some(ps) = info.postgres_state.as_mut()
    {
        ps.healthy = false;
    }
    info
}

/// The keeper info as last written to the store, and when (monotonic time, as the sentinel's
/// [`MonoInstant`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedInfo {
    /// What was written (its `infoUID` included; it is ignored when comparing).
    pub info: KeeperInfo,
    /// When it was written.
    pub at: MonoInstant,
}

/// Why an info is written now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishReason {
    /// Nothing was published yet.
    First,
    /// The report changed in substance: role, health, timeline, a WAL position that moved,
    /// parameters, the listen address, or any other field but the `infoUID`.
    Changed,
    /// The last publish is [`republish_period`] old: republish so the sentinel keeps seeing a
    /// fresh `infoUID` and the lease never lapses.
    Due,
}

/// Whether two infos report the same thing: equal in every field but the `infoUID`.
pub fn same_report(a: &KeeperInfo, b: &KeeperInfo) -> bool {
    let strip = |i: &KeeperInfo| KeeperInfo {
        info_uid: String::new(),
        ..i.clone()
    };
    strip(a) == strip(b)
}

/// Publish `next` now, and why; `None` = not yet (see [`next_publish_at`]). At most one write
/// per [`republish_period`] unless the report changed in substance.
pub fn publish_decision(
    last: Option<&PublishedInfo>,
    next: &KeeperInfo,
    now: MonoInstant,
    sleep_interval: Duration,
) -> Option<PublishReason> {
    let Some(last) = last else {
        return Some(PublishReason::First);
    };
    if !same_report(&last.info, next) {
        return Some(PublishReason::Changed);
    }
    (now >= next_publish_at(last, sleep_interval)).then_some(PublishReason::Due)
}

/// When the last published info must be republished at the latest.
pub fn next_publish_at(last: &PublishedInfo, sleep_interval: Duration) -> MonoInstant {
    last.at.saturating_add(republish_period(sleep_interval))
}

/// Parameters that never count as waiting for a restart, besides every `recovery_*` one.
const RESTART_IRRELEVANT: [&str; 3] = ["primary_conninfo", "primary_slot_name", "restore_command"];

/// Whether a parameter reported by `pg_settings.pending_restart` really asks for a restart.
/// Recovery parameters (`recovery_*`, `primary_conninfo`, `primary_slot_name`,
/// `restore_command`) do not: they matter only while in recovery, and the keeper's plan restarts
/// a standby itself when they change; a just-promoted primary (its recovery settings dropped
/// from `postgresql.conf`) must not look as if it needed a restart. Names are compared exactly
/// (`pg_settings` reports them in lower case).
pub fn restart_relevant(name: &str) -> bool {
    !name.starts_with("recovery_") && !RESTART_IRRELEVANT.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PostgresState;

    const SECOND: Duration = Duration::from_secs(1);
    const NANO: Duration = Duration::from_nanos(1);

    fn info(healthy: bool) -> KeeperInfo {
        KeeperInfo {
            uid: "k1".into(),
            info_uid: "u1".into(),
            postgres_state: Some(PostgresState {
                healthy,
                uid: "db1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn republish_period_is_the_interval() {
        assert_eq!(republish_period(SECOND), SECOND);
        assert_eq!(
            republish_period(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(
            republish_period(Duration::from_millis(4)),
            Duration::from_millis(4)
        );
        assert_eq!(
            republish_period(Duration::from_secs(15)),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn republish_period_stays_inside_the_lease() {
        // TTL 20 s (the floor): republish after 15 s at the latest.
        assert_eq!(
            republish_period(Duration::from_secs(16)),
            Duration::from_secs(15)
        );
        // TTL = sleepInterval: three quarters of it.
        assert_eq!(
            republish_period(Duration::from_secs(60)),
            Duration::from_secs(45)
        );
        for s in [1, 5, 10, 15, 16, 20, 30, 60, 3600] {
            let si = Duration::from_secs(s);
            assert!(republish_period(si) < info_ttl(si), "{si:?}");
            assert!(republish_period(si) <= si, "{si:?}");
        }
    }

    #[test]
    fn republish_period_never_zero() {
        assert_eq!(republish_period(Duration::ZERO), MIN_REPUBLISH_PERIOD);
        assert_eq!(republish_period(NANO), MIN_REPUBLISH_PERIOD);
        assert_eq!(
            republish_period(Duration::from_micros(999)),
            MIN_REPUBLISH_PERIOD
        );
    }

    #[test]
    fn republish_period_of_a_huge_interval_does_not_panic() {
        // The largest interval a GoDuration can carry.
        let max = Duration::from_nanos(i64::MAX as u64);
        assert_eq!(republish_period(max), max * 3 / 4);
    }

    fn published(info: KeeperInfo, at: Duration) -> PublishedInfo {
        PublishedInfo { info, at }
    }

    #[test]
    fn first_info_is_published_at_once() {
        assert_eq!(
            publish_decision(None, &info(true), Duration::ZERO, SECOND),
            Some(PublishReason::First)
        );
    }

    #[test]
    fn unchanged_report_waits_for_the_interval() {
        let last = published(info(true), SECOND * 10);
        let mut next = info(true);
        next.info_uid = "u2".into();
        for at in [SECOND * 10, SECOND * 10 + Duration::from_millis(999)] {
            assert_eq!(publish_decision(Some(&last), &next, at, SECOND), None);
        }
        assert_eq!(
            publish_decision(Some(&last), &next, SECOND * 11, SECOND),
            Some(PublishReason::Due)
        );
        assert_eq!(next_publish_at(&last, SECOND), SECOND * 11);
    }

    #[test]
    fn a_change_in_substance_is_published_at_once() {
        let last = published(info(true), SECOND * 10);
        let now = SECOND * 10 + Duration::from_millis(1);
        let changes: Vec<fn(&mut KeeperInfo)> = vec![
            |i| i.postgres_state.as_mut().unwrap().healthy = false,
            |i| i.postgres_state.as_mut().unwrap().timeline_id = 2,
            |i| i.postgres_state.as_mut().unwrap().xlog_pos = 42,
            |i| i.postgres_state.as_mut().unwrap().listen_address = "10.0.0.9".into(),
            |i| i.postgres_state.as_mut().unwrap().generation = 2,
            |i| {
                i.postgres_state
                    .as_mut()
                    .unwrap()
                    .pg_parameters
                    .insert("work_mem".into(), "8MB".into());
            },
            |i| i.postgres_state = None,
            |i| i.can_be_master = Some(false),
        ];
        for change in changes {
            let mut next = info(true);
            change(&mut next);
            assert_eq!(
                publish_decision(Some(&last), &next, now, SECOND),
                Some(PublishReason::Changed),
                "{next:?}"
            );
        }
    }

    #[test]
    fn the_info_uid_alone_is_no_change() {
        let mut other = info(true);
        other.info_uid = "another".into();
        assert!(same_report(&info(true), &other));
        assert!(!same_report(&info(true), &info(false)));
    }

    #[test]
    fn the_lease_never_lapses_and_the_sentinel_keeps_seeing_fresh_infos() {
        // An idle keeper republishing only when due: the gap between two writes stays below
        // the TTL and inside the sentinel's freshness window (1.5 sleepInterval).
        for s in [1, 2, 5, 15, 20, 60] {
            let si = Duration::from_secs(s);
            let mut last = published(info(true), Duration::ZERO);
            let mut now = Duration::ZERO;
            let step = Duration::from_millis(100);
            let mut writes = 0;
            while now < si * 20 {
                now += step;
                if publish_decision(Some(&last), &info(true), now, si).is_some() {
                    let gap = now - last.at;
                    assert!(gap < info_ttl(si), "{si:?}: gap {gap:?}");
                    assert!(gap * 2 < si * 3 + step * 2, "{si:?}: gap {gap:?}");
                    last = published(info(true), now);
                    writes += 1;
                }
            }
            if s <= 15 {
                // One write per sleepInterval: 20 intervals, 20 writes.
                assert_eq!(writes, 20, "{si:?}");
            } else {
                // Lease-bound: one write per three quarters of the TTL.
                assert!(writes > 20, "{si:?}: {writes} writes");
            }
        }
    }

    #[test]
    fn info_ttl_has_a_floor() {
        assert_eq!(info_ttl(Duration::ZERO), MIN_INFO_TTL);
        assert_eq!(info_ttl(Duration::from_secs(5)), MIN_INFO_TTL);
        assert_eq!(info_ttl(MIN_INFO_TTL), MIN_INFO_TTL);
        assert_eq!(info_ttl(Duration::from_secs(60)), Duration::from_secs(60));
    }

    #[test]
    fn exactly_three_intervals_is_still_fresh() {
        assert!(!observation_is_stale(SECOND * 3, SECOND));
        assert!(!observation_is_stale(
            Duration::from_secs(15),
            Duration::from_secs(5)
        ));
        assert!(!observation_is_stale(Duration::ZERO, SECOND));
        assert!(!observation_is_stale(SECOND * 3 - NANO, SECOND));
    }

    #[test]
    fn just_over_three_intervals_is_stale() {
        assert!(observation_is_stale(SECOND * 3 + NANO, SECOND));
        assert!(observation_is_stale(
            Duration::from_secs(16),
            Duration::from_secs(5)
        ));
        assert!(observation_is_stale(Duration::from_secs(3600), SECOND));
    }

    #[test]
    fn zero_interval_makes_any_positive_age_stale() {
        assert!(!observation_is_stale(Duration::ZERO, Duration::ZERO));
        assert!(observation_is_stale(NANO, Duration::ZERO));
        assert!(observation_is_stale(SECOND, Duration::ZERO));
    }

    #[test]
    fn overflowing_threshold_is_never_stale() {
        assert!(!observation_is_stale(Duration::MAX, Duration::MAX));
        assert!(!observation_is_stale(Duration::MAX, Duration::MAX / 2));
    }

    #[test]
    fn fresh_info_is_published_as_is() {
        for healthy in [true, false] {
            let i = info(healthy);
            assert_eq!(info_to_publish(i.clone(), SECOND * 3, SECOND), i);
            assert_eq!(info_to_publish(i.clone(), Duration::ZERO, SECOND), i);
        }
    }

    #[test]
    fn stale_info_is_published_unhealthy_and_otherwise_unchanged() {
        let got = info_to_publish(info(true), SECOND * 3 + NANO, SECOND);
        assert_eq!(got, info(false));
        // Already unhealthy stays so.
        let got = info_to_publish(info(false), SECOND * 10, SECOND);
        assert_eq!(got, info(false));
        // A zero interval: fresh only at age zero.
        assert_eq!(
            info_to_publish(info(true), NANO, Duration::ZERO),
            info(false)
        );
        assert_eq!(
            info_to_publish(info(true), Duration::ZERO, Duration::ZERO),
            info(true)
        );
    }

    #[test]
    fn stale_info_without_postgres_state_is_unchanged() {
        let i = KeeperInfo {
            uid: "k1".into(),
            ..Default::default()
        };
        assert_eq!(info_to_publish(i.clone(), SECOND * 100, SECOND), i);
    }

    #[test]
    fn recovery_parameters_do_not_count_for_restart() {
        for name in [
            "primary_conninfo",
            "primary_slot_name",
            "restore_command",
            "recovery_target",
            "recovery_target_timeline",
            "recovery_target_lsn",
            "recovery_min_apply_delay",
            "recovery_end_command",
            "recovery_init_sync_method",
            "recovery_prefetch",
            "recovery_",
        ] {
            assert!(!restart_relevant(name), "{name} should not count");
        }
    }

    #[test]
    fn other_parameters_count_for_restart() {
        for name in [
            "shared_buffers",
            "max_connections",
            "wal_level",
            "max_wal_senders",
            "port",
            "shared_preload_libraries",
            "hot_standby",
            // Only the exact names and the `recovery_` prefix are excluded.
            "recovery",
            "recoveryx_target",
            "primary_conninfo_extra",
            "xprimary_slot_name",
            "restore_command2",
            "archive_command",
            "archive_cleanup_command",
            "promote_trigger_file",
            "",
        ] {
            assert!(restart_relevant(name), "{name} should count");
        }
    }

    #[test]
    fn restart_relevance_is_case_sensitive_like_the_sql_it_replaces() {
        // `pg_settings` names are lower case; the former SQL (`like` / `in`) compared exactly.
        assert!(restart_relevant("RECOVERY_TARGET"));
        assert!(restart_relevant("Primary_Conninfo"));
    }
}
