//! The memory a sentinel starts with when it gains leadership (docs/architecture.md §6.1).
//!
//! A new leader has no history of the keepers' infos. Starting every failure clock afresh would
//! make a keeper that was already silent before the takeover (typically: the master's host was
//! lost together with the old leader) wait a whole new `failInterval` after the election. Instead
//! the runtime asks the store how long ago each keeper's info was written (the age of the info's
//! lease, measured by the store's own clock, rounded down: a lower bound, no clock synchronisation
//! involved) and the memory starts as if the leader had seen each info that long ago. A keeper
//! whose age is not known starts its clock at the takeover, as before.
//!
//! Safe because the age only ever under-estimates the silence: every publish writes the info
//! under a fresh lease, a refreshed or re-granted lease only looks younger, so a keeper is
//! never judged silent for longer than it was, and the rule applied is the usual one (failed
//! after `failInterval` without a new info).
//!
//! Proxies likewise ([`remember_proxies_at_takeover`]): a proxy that fenced itself because it
//! lost the store together with the old leader need not be waited for a whole new activity
//! window after the election. Here an earlier first sighting makes the proxy inactive sooner,
//! so the age must never exceed the time since the proxy started the check that published the
//! info: the lease is granted after that start and before the write, the store measures the
//! age on its own clock and rounds it down, and the ages are read after the infos (an info
//! replaced in between only has a younger lease). The activity window itself is stretched for
//! clock drift ([`super::proxy_active_window`]), which covers the store's clock as well.
//!
//! Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::{KeeperInfo, ProxyInfo};

use super::memory::{InfoHistory, MonoInstant, SentinelMemory};

/// The memory of a leader that takes over at `now`, having read `keepers_info` and, for some of
/// those keepers, a lower bound of how long ago their info was written (`info_ages`).
pub fn memory_at_takeover(
    keepers_info: &BTreeMap<String, KeeperInfo>,
    info_ages: &BTreeMap<String, Duration>,
    now: MonoInstant,
) -> SentinelMemory {
    let mut mem = SentinelMemory {
        initialized: true,
        ..Default::default()
    };
    for (uid, info) in keepers_info {
        let history = match info_ages.get(uid) {
            // The origin of monotonic time may be later than the write: then the earliest
            // instant there is, which still under-estimates the silence.
            Some(age) => InfoHistory {
                info_uid: info.info_uid.clone(),
                seen: true,
                first_seen: now.saturating_sub(*age),
            },
            None => InfoHistory {
                info_uid: info.info_uid.clone(),
                seen: false,
                first_seen: now,
            },
        };
        mem.keeper_infos.insert(uid.clone(), history);
    }
    mem
}

/// Records, in the memory of a leader that takes over at `now`, the proxies of `proxies_info`
/// whose info age is known (a lower bound of how long ago the info was written, read after
/// `proxies_info`), as first seen that long ago. A proxy whose age is not known is left out: the
/// first decision then starts its window at `now`.
pub fn remember_proxies_at_takeover(
    mem: &mut SentinelMemory,
    proxies_info: &BTreeMap<String, ProxyInfo>,
    info_ages: &BTreeMap<String, Duration>,
    now: MonoInstant,
) {
    for (uid, info) in proxies_info {
        if let Some(age) = info_ages.get(uid) {
            mem.proxy_infos.insert(
                uid.clone(),
                InfoHistory {
                    info_uid: info.info_uid.clone(),
                    seen: true,
                    // As for keepers: at worst the origin of monotonic time, later than the write.
                    first_seen: now.saturating_sub(*age),
                },
            );
        }
    }
}
