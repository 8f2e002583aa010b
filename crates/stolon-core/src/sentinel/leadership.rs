//! Leadership held by heartbeats, and deposing a leader whose heartbeats stopped
//! (docs/architecture.md §4.2; the argument is invariant 7 in docs/invariants.md).
//!
//! The election's lease alone makes a lost leader's successor wait for the store to expire that
//! lease, and etcd restarts every lease's TTL when its own raft leader changes: when the lost host
//! also held etcd's leader, the old leader's key stays an etcd election plus a whole TTL. These
//! two rules let the other candidates remove it sooner, from what they observe themselves.
//!
//! **The heartbeat** is the sentinel's info, which every sentinel already publishes once per
//! `sleepInterval`. Each publish carries the *hold* its publisher honours. A leader acts only
//! until the hold after the start of its last publish that counts ([`LeaderHold`]):
//!
//! - a publish counts at once if it completed before the current deadline;
//! - otherwise (the first one, or one after the deadline passed) it counts once a read of the
//!   election, started after the publish completed, still finds the leader's key.
//!
//! **Deposing.** A candidate that sees the same leader key with the same info revision, first seen
//! at instant `f` taken after its read returned, for [`deposal_wait`]`(hold)` on its own clock,
//! deletes the leader's key in one transaction that compares the info's revision
//! ([`DeposalWatch`]). The transaction succeeds only if no publish committed since the one it saw.
//! That publish started before `f`, so on any clock within the drift bound the leader's deadline
//! from it ends before the deposal; a later publish that completed before that deadline committed
//! before it too (and would have failed the comparison); and a publish counted through a read
//! that found the key committed before that read, so before any deposal. So a deposed leader has
//! stopped acting, whatever the store's lease still says. [`LEADER_REACTION`] more covers the
//! leader's own timer firing late.
//!
//! A leader whose info carries no hold (Stolon's sentinels, or a store whose election keeps its
//! own lock) is never deposed this way: only its lease ends it.
//!
//! Pure: instants are passed in.

use std::time::Duration;

use super::decide::stretch_for_drift;
use super::memory::MonoInstant;

/// How late, after its deadline, a leader may still be acting: its timer firing late on a busy
/// host. Local to the leader's host, as the proxy's [`super::PROXY_REACTION`].
pub const LEADER_REACTION: Duration = Duration::from_millis(500);

/// How long a candidate waits, on its own clock, after it first saw a leader's info revision,
/// before it may depose that leader if the revision has not changed: the leader's `hold`
/// stretched for clock drift, plus [`LEADER_REACTION`].
pub fn deposal_wait(hold: Duration) -> Duration {
    stretch_for_drift(hold).saturating_add(LEADER_REACTION)
}

/// A publish of the heartbeat that succeeded, on the publisher's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// Taken before the publish was sent.
    pub started: MonoInstant,
    /// Taken after its success was received.
    pub completed: MonoInstant,
    /// The hold the published info announced.
    pub hold: Duration,
}

/// The leader's side: until when it may act (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderHold {
    deadline: Option<MonoInstant>,
    /// A publish that did not count at once, waiting for a read that finds our key.
    pending: Option<Beat>,
}

impl LeaderHold {
    /// No publish counted yet: may not act.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a successful publish.
    pub fn published(&mut self, beat: Beat) {
        match self.deadline {
            Some(d) if beat.completed < d => {
                self.extend(beat.started.saturating_add(beat.hold));
                // A pending publish is older than this one, and this one now counts.
                if self.pending.is_some_and(|p| p.started <= beat.started) {
                    self.pending = None;
                }
            }
            _ => {
                if self.pending.is_none_or(|p| p.started <= beat.started) {
                    self.pending = Some(beat);
                }
            }
        }
    }

    /// A read of the election that started at `read_started` found our key: a pending publish
    /// that had completed by then counts.
    pub fn key_seen(&mut self, read_started: MonoInstant) {
        if let Some(p) = self.pending
            && read_started >= p.completed
        {
            self.pending = None;
            self.extend(p.started.saturating_add(p.hold));
        }
    }

    /// Whether the leader may act at `now`.
    pub fn may_act(&self, now: MonoInstant) -> bool {
        self.deadline.is_some_and(|d| now < d)
    }

    /// The instant acting ends (`None`: it has not started).
    pub fn deadline(&self) -> Option<MonoInstant> {
        self.deadline
    }

    /// Whether a publish waits for a read of the election to count.
    pub fn waits_for_key(&self) -> bool {
        self.pending.is_some()
    }

    fn extend(&mut self, until: MonoInstant) {
        // Never shortened: an older publish with a longer hold still bounds the deposal.
        self.deadline = Some(self.deadline.map_or(until, |d| d.max(until)));
    }
}

/// The leader as a candidate observed it: its election key, the revision of its info (`0`:
/// no info) and the hold that info announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderBeat {
    /// The leader's election key.
    pub key: String,
    /// Mod revision of the leader's info.
    pub revision: i64,
    /// The hold its info announced (`None`: no info, or one without a hold).
    pub hold: Option<Duration>,
}

/// What a candidate should do about the leader it observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deposal {
    /// Nothing to do (no leader, or one that does not announce a hold).
    Never,
    /// Look again at this instant if nothing changes before.
    WaitUntil(MonoInstant),
    /// Delete this key if the info still has this revision.
    Depose {
        /// The leader's election key.
        key: String,
        /// The info revision the deletion compares.
        revision: i64,
    },
}

/// The candidate's side: since when it has seen the leader's heartbeat unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeposalWatch {
    seen: Option<(LeaderBeat, MonoInstant)>,
}

impl DeposalWatch {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records what a read returning at `seen_at` showed of the leader (`None`: this candidate
    /// leads, or there is no leader) and says what to do.
    pub fn observe(&mut self, leader: Option<LeaderBeat>, seen_at: MonoInstant) -> Deposal {
        let Some(leader) = leader else {
            self.seen = None;
            return Deposal::Never;
        };
        let first_seen = match &self.seen {
            Some((prev, at)) if *prev == leader => *at,
            _ => {
                self.seen = Some((leader.clone(), seen_at));
                seen_at
            }
        };
        let Some(hold) = leader.hold.filter(|_| leader.revision > 0) else {
            return Deposal::Never;
        };
        let at = first_seen.saturating_add(deposal_wait(hold));
        if seen_at >= at {
            Deposal::Depose {
                key: leader.key,
                revision: leader.revision,
            }
        } else {
            Deposal::WaitUntil(at)
        }
    }
}
