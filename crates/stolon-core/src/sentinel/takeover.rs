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
//! A keeper listed in the clusterdata whose info is gone from the store at the takeover
//! ([`remember_expired_keepers_at_takeover`]) is older still: the store deletes an info when its
//! lease expires, every publish takes a fresh lease of at least [`MIN_INFO_TTL`], and the store
//! only ever extends a lease's life (never shortens it, e.g. across its own leader changes). So
//! the keeper has not published for at least that TTL, by the store's clock; the memory starts
//! its failure clock that long before the takeover, shortened by [`EXPIRED_INFO_DRIFT`] for the
//! drift between the store's clock and ours. This applies only where the store expires infos
//! by leases and reports their ages (etcd): the runtime calls it only when it could read ages.
//! A keeper that withdrew its info on a clean stop stopped its PostgreSQL first, so it is not
//! failed wrongly either.
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

use crate::keeper::MIN_INFO_TTL;

use super::memory::{InfoHistory, MonoInstant, SentinelMemory};

/// How much of [`MIN_INFO_TTL`] a keeper whose info expired is credited with, in twentieths:
/// 19/20 of it, a 5 % allowance for the store's clock running faster than ours.
pub const EXPIRED_INFO_DRIFT: u32 = 20;

/// The silence credited to a keeper whose info expired before a takeover.
pub fn expired_info_silence() -> Duration {
    MIN_INFO_TTL * (EXPIRED_INFO_DRIFT - 1) / EXPIRED_INFO_DRIFT
}

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

/// Records, in the memory of a leader that takes over at `now`, the keepers of the clusterdata
/// (`cd_keepers`) that have no info in the store at all (`keepers_info` as read): their failure
/// clocks start [`expired_info_silence`] before `now`, since their infos expired (see the module
/// docs). Keepers with an info are left to [`memory_at_takeover`].
pub fn remember_expired_keepers_at_takeover<'a>(
    mem: &mut SentinelMemory,
    cd_keepers: impl IntoIterator<Item = &'a String>,
    keepers_info: &BTreeMap<String, KeeperInfo>,
    now: MonoInstant,
) {
    for uid in cd_keepers {
        if !keepers_info.contains_key(uid) {
            mem.keeper_error_since
                .insert(uid.clone(), now.saturating_sub(expired_info_silence()));
        }
    }
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
