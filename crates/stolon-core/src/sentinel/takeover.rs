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

use crate::model::{Keeper, KeeperInfo, ProxyInfo};

use crate::keeper::MIN_INFO_TTL;

use super::memory::{InfoHistory, MonoInstant, SentinelMemory};

/// What a sentinel read from the store as it gained leadership, for [`takeover_memory`].
#[derive(Debug, Clone, Copy)]
pub struct TakeoverRead<'a> {
    /// The keepers listed in the clusterdata, when there is one.
    pub cluster_keepers: Option<&'a BTreeMap<String, Keeper>>,
    /// The keepers' infos as read.
    pub keepers_info: &'a BTreeMap<String, KeeperInfo>,
    /// The proxies' infos as read.
    pub proxies_info: &'a BTreeMap<String, ProxyInfo>,
    /// Lower bounds of how long ago the keepers' infos were written, read after the infos;
    /// empty where the store cannot tell (it does not expire infos by leases).
    pub keeper_ages: &'a BTreeMap<String, Duration>,
    /// The same for the proxies' infos, read after the keepers' ages.
    pub proxy_ages: &'a BTreeMap<String, Duration>,
}

/// The memory a leader starts with when it takes over at `now`, from what it read
/// ([`TakeoverRead`]) and what it saw itself while it followed (`sightings`). All the takeover
/// rules of this module in one place:
///
/// - the keepers' failure clocks start at their info ages ([`memory_at_takeover`]);
/// - keepers of the clusterdata without an info are credited with an expired lease
///   ([`remember_expired_keepers_at_takeover`]), but only where the store reports ages: only
///   there does a missing info mean an expired lease;
/// - proxies start their activity windows at their info ages ([`remember_proxies_at_takeover`]);
/// - the follower's own sightings replace any of these that they reach further back than
///   ([`Sightings::credit`]).
///
/// `None` when there is nothing to go by (no ages, no sightings): the first decision then starts
/// every clock afresh, as a leader without history does.
pub fn takeover_memory(
    read: &TakeoverRead<'_>,
    sightings: &Sightings,
    now: MonoInstant,
) -> Option<SentinelMemory> {
    if read.keeper_ages.is_empty() && sightings.is_empty() {
        return None;
    }
    let mut mem = memory_at_takeover(read.keepers_info, read.keeper_ages, now);
    if !read.keeper_ages.is_empty()
        && let Some(cluster_keepers) = read.cluster_keepers
    {
        remember_expired_keepers_at_takeover(
            &mut mem,
            cluster_keepers.keys(),
            read.keepers_info,
            now,
        );
    }
    remember_proxies_at_takeover(&mut mem, read.proxies_info, read.proxy_ages, now);
    sightings.credit(&mut mem, read.keepers_info, read.proxies_info);
    Some(mem)
}

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

/// What a sentinel that does not lead saw of the keepers' and proxies' infos, on its own clock:
/// for each, the current `infoUID` and when it was first seen (an instant taken after the read
/// that returned it). At a takeover these sightings start the new leader's memory where they say
/// more than the store's info ages ([`Sightings::credit`]). Unlike the ages they survive the
/// store's own leader changes, which restart every lease.
///
/// A keeper's info counts as proof of life (`seen`) only once it was seen to change: the first
/// info a follower reads may be older than the follower. A proxy's first sighting is as good as
/// any: it only has to come after the start of the check that published the info.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sightings {
    keepers: BTreeMap<String, InfoHistory>,
    proxies: BTreeMap<String, InfoHistory>,
}

impl Sightings {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether nothing was seen.
    pub fn is_empty(&self) -> bool {
        self.keepers.is_empty() && self.proxies.is_empty()
    }

    /// Records the infos as read; `now` is taken after the read returned. Infos gone from the
    /// store are forgotten.
    pub fn observe(
        &mut self,
        keepers_info: &BTreeMap<String, KeeperInfo>,
        proxies_info: &BTreeMap<String, ProxyInfo>,
        now: MonoInstant,
    ) {
        let keepers = keepers_info
            .iter()
            .map(|(uid, info)| (uid, info.info_uid.as_str()));
        observe(&mut self.keepers, keepers, now);
        let proxies = proxies_info
            .iter()
            .map(|(uid, info)| (uid, info.info_uid.as_str()));
        observe(&mut self.proxies, proxies, now);
    }

    /// Starts the memory of a leader taking over (built by [`memory_at_takeover`] and the other
    /// takeover rules) with these sightings where they reach further back, for the infos still
    /// current in `keepers_info` and `proxies_info`. Every sighting bounds its info from the
    /// safe side: a keeper's info seen changing at `t` was written by `t` (its silence is at
    /// least `now − t`); a proxy's info first seen at `t` was written by `t`, after the check
    /// that fences it started. The earlier of two such bounds is still one.
    pub fn credit(
        &self,
        mem: &mut SentinelMemory,
        keepers_info: &BTreeMap<String, KeeperInfo>,
        proxies_info: &BTreeMap<String, ProxyInfo>,
    ) {
        for (uid, info) in keepers_info {
            let Some(s) = self
                .keepers
                .get(uid)
                .filter(|s| s.seen && s.info_uid == info.info_uid)
            else {
                continue;
            };
            let better = mem
                .keeper_infos
                .get(uid)
                .is_none_or(|h| !h.seen || h.info_uid != s.info_uid || h.first_seen > s.first_seen);
            if better {
                mem.keeper_infos.insert(uid.clone(), s.clone());
            }
        }
        for (uid, info) in proxies_info {
            let Some(s) = self
                .proxies
                .get(uid)
                .filter(|s| s.info_uid == info.info_uid)
            else {
                continue;
            };
            let better = mem
                .proxy_infos
                .get(uid)
                .is_none_or(|h| h.info_uid != s.info_uid || h.first_seen > s.first_seen);
            if better {
                mem.proxy_infos.insert(
                    uid.clone(),
                    InfoHistory {
                        seen: true,
                        ..s.clone()
                    },
                );
            }
        }
    }
}

fn observe<'a>(
    seen: &mut BTreeMap<String, InfoHistory>,
    current: impl Iterator<Item = (&'a String, &'a str)>,
    now: MonoInstant,
) {
    let mut next = BTreeMap::new();
    for (uid, info_uid) in current {
        let h = match seen.remove(uid) {
            Some(h) if h.info_uid == info_uid => h,
            // Seen changing: written between the previous read and this one.
            Some(_) => InfoHistory {
                info_uid: info_uid.to_string(),
                seen: true,
                first_seen: now,
            },
            // The first sighting: written at some time before now.
            None => InfoHistory {
                info_uid: info_uid.to_string(),
                seen: false,
                first_seen: now,
            },
        };
        next.insert(uid.clone(), h);
    }
    *seen = next;
}
