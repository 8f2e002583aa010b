//! The checker: a pure function of one fault cycle's recorded history.
//!
//! The workload records, for every acknowledged insert, which server acknowledged it (its address
//! and the timeline it wrote on, read in the same statement) and when the request was sent and
//! acknowledged (milliseconds since the start of the run, one monotonic clock). After the heal the
//! harness reads every id back from the primary. From that the checker reports:
//!
//! - **lost**: acknowledged ids absent from the final read;
//! - **split brain**: a write acknowledged by server A that was *sent after* a write acknowledged
//!   by another server B had already been acknowledged, where B is on a higher timeline than A (a
//!   new primary had been named and the old one still took writes), or A and B are different
//!   servers on the same timeline (two promotions from the same history). Only orderings that are
//!   certain from the client's clock count: request windows that merely overlap do not;
//! - the **longest write gap** from the fault on (between consecutive acknowledgements of all
//!   clients, and from the last one to the end of the cycle);
//! - **failover**: from the fault to the first acknowledgement by a server (or timeline) other than
//!   the one that acknowledged the last write before the fault; `None` when the primary did not
//!   change;
//! - **recovery**: from the heal to the moment the harness saw the cluster converged.

use std::collections::{BTreeMap, BTreeSet};

/// One acknowledged insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The unique id inserted.
    pub id: i64,
    /// Which client sent it.
    pub client: usize,
    /// When the request was sent (ms since the run's start).
    pub sent_ms: u64,
    /// When the acknowledgement arrived (ms since the run's start).
    pub acked_ms: u64,
    /// Address of the server that acknowledged it (`inet_server_addr()`).
    pub server: String,
    /// Timeline it was written on.
    pub timeline: u32,
}

/// One fault cycle's recorded history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Every acknowledged insert.
    pub acks: Vec<Ack>,
    /// Inserts sent (acknowledged or not).
    pub attempts: u64,
    /// When the fault was injected.
    pub fault_ms: u64,
    /// When it was healed.
    pub heal_ms: u64,
    /// When the cluster was seen converged after the heal (`None`: it did not converge).
    pub recovered_ms: Option<u64>,
    /// When the workload stopped.
    pub end_ms: u64,
    /// The ids read back from the primary after recovery.
    pub present: BTreeSet<i64>,
}

/// Writes of two servers that were both taking writes once a newer primary existed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitBrain {
    /// The older server (address, timeline) that acknowledged a write...
    pub old: (String, u32),
    /// ...sent after this newer server had acknowledged one.
    pub new: (String, u32),
    /// The older server's write.
    pub old_id: i64,
    /// The newer server's write acknowledged before it was sent.
    pub new_id: i64,
}

/// What the checker found in one cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Acknowledged inserts.
    pub acknowledged: usize,
    /// Inserts sent.
    pub attempts: u64,
    /// Acknowledged ids missing from the final read (sorted).
    pub lost: Vec<i64>,
    /// Split-brain evidence, one per pair of servers.
    pub split_brain: Vec<SplitBrain>,
    /// Longest time without any acknowledgement from the fault on (ms).
    pub longest_gap_ms: u64,
    /// Fault to first acknowledgement on another primary (ms), if the primary changed.
    pub failover_ms: Option<u64>,
    /// Heal to converged (ms), if it converged.
    pub recovery_ms: Option<u64>,
    /// Writes acknowledged by the pre-fault primary after the fault was injected.
    pub old_primary_acks_after_fault: usize,
    /// Fault to the last acknowledgement by the pre-fault primary after the fault (ms) when the
    /// primary changed: how long the old primary kept acknowledging.
    pub old_primary_tail_ms: Option<u64>,
    /// When the lost writes were acknowledged, relative to the fault (ms; earliest, latest).
    pub lost_window_ms: Option<(i64, i64)>,
}

impl Verdict {
    /// No acknowledged write lost, no split brain, converged.
    pub fn safe(&self) -> bool {
        self.lost.is_empty() && self.split_brain.is_empty() && self.recovery_ms.is_some()
    }
}

type Key = (String, u32);

struct Group {
    first_acked: (u64, i64),
    last_sent: (u64, i64),
}

/// Checks one cycle's history (see the module docs).
pub fn check(h: &History) -> Verdict {
    let lost: Vec<i64> = h
        .acks
        .iter()
        .map(|a| a.id)
        .filter(|id| !h.present.contains(id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    for a in &h.acks {
        let g = groups
            .entry((a.server.clone(), a.timeline))
            .or_insert(Group {
                first_acked: (a.acked_ms, a.id),
                last_sent: (a.sent_ms, a.id),
            });
        if a.acked_ms < g.first_acked.0 {
            g.first_acked = (a.acked_ms, a.id);
        }
        if a.sent_ms > g.last_sent.0 {
            g.last_sent = (a.sent_ms, a.id);
        }
    }
    let mut split_brain = Vec::new();
    for (ka, a) in &groups {
        for (kb, b) in &groups {
            let conflicting = ka.0 != kb.0 && (ka.1 < kb.1 || (ka.1 == kb.1 && ka < kb));
            if conflicting && a.last_sent.0 > b.first_acked.0 {
                split_brain.push(SplitBrain {
                    old: ka.clone(),
                    new: kb.clone(),
                    old_id: a.last_sent.1,
                    new_id: b.first_acked.1,
                });
            } else if ka.0 != kb.0 && ka.1 == kb.1 && ka < kb && b.last_sent.0 > a.first_acked.0 {
                // Same timeline on two servers: either interleaving order is a split brain.
                split_brain.push(SplitBrain {
                    old: kb.clone(),
                    new: ka.clone(),
                    old_id: b.last_sent.1,
                    new_id: a.first_acked.1,
                });
            }
        }
    }

    let mut by_ack: Vec<&Ack> = h.acks.iter().collect();
    by_ack.sort_by_key(|a| (a.acked_ms, a.id));
    let before: Option<&Ack> = by_ack.iter().copied().rfind(|a| a.acked_ms <= h.fault_ms);
    let after: Vec<&Ack> = by_ack
        .iter()
        .copied()
        .filter(|a| a.acked_ms > h.fault_ms)
        .collect();
    let mut longest_gap_ms = 0;
    let mut prev = before.map_or(h.fault_ms, |a| a.acked_ms);
    for a in &after {
        longest_gap_ms = longest_gap_ms.max(a.acked_ms - prev);
        prev = a.acked_ms;
    }
    longest_gap_ms = longest_gap_ms.max(h.end_ms.saturating_sub(prev));

    let old_key = before.map(|a| (a.server.clone(), a.timeline));
    let is_old = |a: &Ack| {
        old_key
            .as_ref()
            .is_some_and(|k| k.0 == a.server && k.1 == a.timeline)
    };
    let failover_ms = after
        .iter()
        .find(|a| old_key.is_some() && !is_old(a))
        .map(|a| a.acked_ms - h.fault_ms);
    let old_after: Vec<&&Ack> = after.iter().filter(|a| is_old(a)).collect();
    let old_primary_tail_ms = failover_ms.and(
        old_after
            .iter()
            .map(|a| a.acked_ms - h.fault_ms)
            .max()
            .or(Some(0)),
    );

    let lost_set: BTreeSet<i64> = lost.iter().copied().collect();
    let rel: Vec<i64> = h
        .acks
        .iter()
        .filter(|a| lost_set.contains(&a.id))
        .map(|a| a.acked_ms as i64 - h.fault_ms as i64)
        .collect();
    let lost_window_ms = rel
        .iter()
        .min()
        .zip(rel.iter().max())
        .map(|(a, b)| (*a, *b));

    Verdict {
        lost_window_ms,
        acknowledged: h.acks.len(),
        attempts: h.attempts,
        lost,
        split_brain,
        longest_gap_ms,
        failover_ms,
        recovery_ms: h.recovered_ms.map(|r| r.saturating_sub(h.heal_ms)),
        old_primary_acks_after_fault: old_after.len(),
        old_primary_tail_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: i64, sent: u64, acked: u64, server: &str, tl: u32) -> Ack {
        Ack {
            id,
            client: 0,
            sent_ms: sent,
            acked_ms: acked,
            server: server.into(),
            timeline: tl,
        }
    }

    /// A clean failover from A (tl 1) to B (tl 2) at 1000 ms, every row read back.
    fn clean() -> History {
        let acks = vec![
            ack(1, 0, 10, "a", 1),
            ack(2, 500, 510, "a", 1),
            ack(3, 990, 995, "a", 1),
            ack(4, 1100, 4000, "b", 2),
            ack(5, 4010, 4020, "b", 2),
        ];
        History {
            present: acks.iter().map(|a| a.id).collect(),
            attempts: 6,
            acks,
            fault_ms: 1000,
            heal_ms: 3000,
            recovered_ms: Some(6000),
            end_ms: 7000,
        }
    }

    #[test]
    fn clean_failover_is_safe_and_measured() {
        let v = check(&clean());
        assert!(v.safe(), "{v:?}");
        assert_eq!(v.acknowledged, 5);
        assert_eq!(v.attempts, 6);
        assert_eq!(v.failover_ms, Some(3000));
        assert_eq!(v.recovery_ms, Some(3000));
        // 995 -> 4000, then 4020 -> end (7000).
        assert_eq!(v.longest_gap_ms, 3005);
        assert_eq!(v.old_primary_acks_after_fault, 0);
        assert_eq!(v.old_primary_tail_ms, Some(0));
        assert_eq!(v.lost_window_ms, None);
    }

    #[test]
    fn an_acknowledged_row_missing_from_the_read_is_lost() {
        let mut h = clean();
        h.present.remove(&3);
        let v = check(&h);
        assert_eq!(v.lost, vec![3]);
        assert_eq!(v.lost_window_ms, Some((-5, -5)));
        assert!(!v.safe());
    }

    #[test]
    fn old_primary_acknowledging_after_the_new_one_is_split_brain() {
        let mut h = clean();
        // Sent to A after B had acknowledged id 4 (at 4000).
        h.acks.push(ack(6, 4100, 4150, "a", 1));
        h.present.insert(6);
        let v = check(&h);
        assert_eq!(v.split_brain.len(), 1, "{v:?}");
        let sb = &v.split_brain[0];
        assert_eq!(sb.old, ("a".into(), 1));
        assert_eq!(sb.new, ("b".into(), 2));
        assert_eq!((sb.old_id, sb.new_id), (6, 4));
        assert_eq!(v.old_primary_acks_after_fault, 1);
        assert_eq!(v.old_primary_tail_ms, Some(3150));
        assert!(!v.safe());
    }

    #[test]
    fn overlapping_request_windows_alone_are_not_split_brain() {
        let mut h = clean();
        // Sent to A before B's first ack, acknowledged after it: the order is not certain.
        h.acks.push(ack(6, 1050, 4500, "a", 1));
        h.present.insert(6);
        let v = check(&h);
        assert!(v.split_brain.is_empty(), "{v:?}");
    }

    #[test]
    fn two_servers_on_the_same_timeline_interleaving_is_split_brain() {
        let acks = vec![
            ack(1, 0, 10, "b", 2),
            ack(2, 20, 30, "c", 2),
            ack(3, 40, 50, "b", 2),
        ];
        let h = History {
            present: acks.iter().map(|a| a.id).collect(),
            attempts: 3,
            acks,
            fault_ms: 0,
            heal_ms: 0,
            recovered_ms: Some(100),
            end_ms: 100,
        };
        let v = check(&h);
        assert!(!v.split_brain.is_empty(), "{v:?}");
    }

    #[test]
    fn no_change_of_primary_has_no_failover_time() {
        let acks = vec![ack(1, 0, 10, "a", 1), ack(2, 2000, 2010, "a", 1)];
        let h = History {
            present: acks.iter().map(|a| a.id).collect(),
            attempts: 2,
            acks,
            fault_ms: 1000,
            heal_ms: 1500,
            recovered_ms: None,
            end_ms: 2500,
        };
        let v = check(&h);
        assert_eq!(v.failover_ms, None);
        assert_eq!(v.old_primary_tail_ms, None);
        assert_eq!(v.longest_gap_ms, 2000);
        assert!(!v.safe(), "not converged is not safe");
    }
}
