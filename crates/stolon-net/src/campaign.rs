//! Faults and cycles: inject one fault under the workload, hold it (bounded), heal it, wait for
//! the cluster to converge back to one primary with every other keeper streaming, read every id
//! back and check the history.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::checker::{self, History, Verdict};
use crate::cluster::{EtcdLeader, KEEPER_HTTP_PORT, NetCluster, wait_for};
use crate::workload::{ID_STRIDE, Targets, Workload};

/// The faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The master's host cut off from the other hosts, still reachable by clients.
    MasterCutFromPeers,
    /// The master's host isolated completely.
    MasterIsolated,
    /// SIGKILL of the master's keeper and its postgres.
    MasterKeeperKilled,
    /// The master's host dies with the leader sentinel on it (every process killed).
    MasterHostDies,
    /// A standby's host cut off from the other hosts: with synchronous replication the master's
    /// synchronous standby (the commit stall case).
    StandbyCut,
    /// The master's packets to its peers dropped, theirs to it delivered.
    MasterOneWayCut,
    /// Every etcd request delayed beyond the store timeout.
    SlowStore,
    /// Two of the three etcd members down (quorum lost) for 30 s.
    QuorumLost,
    /// The master's host cut off from the store and from one standby, not from its clients:
    /// everything between it and the asynchronous standby's host is dropped, and between it and
    /// the synchronous standby's host everything but PostgreSQL and the keepers' HTTP listeners
    /// (so that standby keeps streaming from it and acknowledging it in failsafe mode). Not in
    /// [`ALL`]: it is the failsafe campaign's case.
    MasterStoreCut,
    /// [`Fault::MasterCutFromPeers`] with the leader sentinel first moved to another host.
    MasterCutLeaderAway,
    /// [`Fault::MasterCutFromPeers`] with the leader sentinel first moved to the master's host.
    MasterCutLeaderOn,
    /// The etcd member on the master's host killed for 20 s (the other two keep quorum): the
    /// store clients must move to another member without any proxy closing a connection.
    EtcdMemberDown,
}

/// Every fault, [`ALL`] and the others, for lookups by name.
pub const EVERY: [Fault; 12] = [
    Fault::MasterCutFromPeers,
    Fault::MasterIsolated,
    Fault::MasterKeeperKilled,
    Fault::MasterHostDies,
    Fault::StandbyCut,
    Fault::MasterOneWayCut,
    Fault::SlowStore,
    Fault::QuorumLost,
    Fault::MasterStoreCut,
    Fault::MasterCutLeaderAway,
    Fault::MasterCutLeaderOn,
    Fault::EtcdMemberDown,
];

/// The faults of the failsafe campaign: the master's partial cut, where failsafe mode must not
/// stop the failover, and the store outages, where it keeps the master serving.
pub const FAILSAFE: [Fault; 3] = [Fault::MasterStoreCut, Fault::QuorumLost, Fault::SlowStore];

/// All faults, in campaign order.
pub const ALL: [Fault; 8] = [
    Fault::MasterCutFromPeers,
    Fault::MasterIsolated,
    Fault::MasterKeeperKilled,
    Fault::MasterHostDies,
    Fault::StandbyCut,
    Fault::MasterOneWayCut,
    Fault::SlowStore,
    Fault::QuorumLost,
];

impl Fault {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Fault::MasterCutFromPeers => "master-cut",
            Fault::MasterIsolated => "master-isolated",
            Fault::MasterKeeperKilled => "master-kill",
            Fault::MasterHostDies => "master-host-dies",
            Fault::StandbyCut => "standby-cut",
            Fault::MasterOneWayCut => "master-one-way",
            Fault::SlowStore => "slow-store",
            Fault::QuorumLost => "quorum-lost",
            Fault::MasterStoreCut => "master-store-cut",
            Fault::MasterCutLeaderAway => "master-cut-leader-away",
            Fault::MasterCutLeaderOn => "master-cut-leader-on",
            Fault::EtcdMemberDown => "etcd-member-down",
        }
    }

    /// Whether the fault cuts off or kills the master (its host, or its keeper and PostgreSQL).
    pub fn cuts_or_kills_the_master(self) -> bool {
        matches!(
            self,
            Fault::MasterHostDies
                | Fault::MasterCutLeaderOn
                | Fault::MasterCutLeaderAway
                | Fault::MasterCutFromPeers
                | Fault::MasterIsolated
                | Fault::MasterOneWayCut
                | Fault::MasterKeeperKilled
        )
    }

    /// The fault with this table name.
    pub fn by_name(name: &str) -> Option<Fault> {
        EVERY.iter().copied().find(|f| f.name() == name)
    }
}

/// One cycle's result.
#[derive(Debug, Clone)]
pub struct CycleReport {
    /// The fault.
    pub fault: Fault,
    /// Master host before the fault.
    pub master_before: usize,
    /// Master host after recovery.
    pub master_after: Option<usize>,
    /// The host of etcd's raft leader just before the fault, if the members told.
    pub etcd_leader: Option<usize>,
    /// The checker's verdict.
    pub verdict: Verdict,
}

/// Workload clients per cycle.
pub const CLIENTS: usize = 3;
/// How long a killed master (keeper, or whole host) stays down at most: until a new master is
/// named (the sentinels may first have to elect a new leader when the old one died with it).
pub const KILL_HOLD: Duration = Duration::from_secs(60);
/// Converging after a heal is bounded by this.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(150);

fn ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// Makes the sentinel on host `m` the leader: stops the others until it holds the lease, then
/// starts them again.
async fn move_leader_to(c: &mut NetCluster, m: usize) -> Result<()> {
    if c.leader_sentinel().await.ok() == Some(m) {
        return Ok(());
    }
    for (i, n) in c.nodes.iter_mut().enumerate() {
        if i != m {
            n.sentinel.stop().await?;
        }
    }
    let r = wait_for(
        &format!("sentinel{m} to lead"),
        Duration::from_secs(60),
        async || {
            if c.leader_sentinel().await? == m {
                Ok(())
            } else {
                bail!("another leader")
            }
        },
    )
    .await;
    for (i, n) in c.nodes.iter_mut().enumerate() {
        if i != m {
            n.sentinel.start()?;
        }
    }
    r
}

/// Runs one cycle of `fault`. `base` makes this cycle's ids unique.
pub async fn run_cycle(c: &mut NetCluster, fault: Fault, base: i64) -> Result<CycleReport> {
    let m = c
        .wait_converged(RECOVERY_LIMIT)
        .await
        .context("converged before the fault")?;
    match fault {
        Fault::MasterHostDies | Fault::MasterCutLeaderOn => {
            move_leader_to(c, m).await?;
            c.wait_converged(RECOVERY_LIMIT).await?;
        }
        Fault::MasterCutLeaderAway => {
            move_leader_to(c, (m + 1) % c.nodes.len()).await?;
            c.wait_converged(RECOVERY_LIMIT).await?;
        }
        _ => {}
    }
    let etcd_target = match c.cfg.etcd_leader {
        EtcdLeader::OnMaster if fault.cuts_or_kills_the_master() => Some(m),
        EtcdLeader::Away if fault.cuts_or_kills_the_master() => Some((m + 1) % c.nodes.len()),
        _ => None,
    };
    if let Some(h) = etcd_target {
        c.move_etcd_leader_to(h).await?;
        c.wait_converged(RECOVERY_LIMIT).await?;
    }
    let standby = (m + 1) % c.nodes.len();
    // The standby `standby-cut` cuts: with synchronous replication the master's synchronous
    // standby (its loss stalls commits), which a converged cluster lists; otherwise any. With
    // quorum commit, once both standbys are listed again: after a cut the sentinel keeps the lost
    // one out for `failInterval`, and cutting the only listed one measures a second loss within
    // that time, not the loss of one of two.
    let want_listed = if c.cfg.quorum { c.nodes.len() - 1 } else { 1 };
    let cut_standby = if c.cfg.synchronous {
        wait_for(
            "the master's synchronous standbys in clusterdata",
            Duration::from_secs(30) + 2 * Duration::from_secs(c.cfg.fail_interval_s),
            async || {
                let listed = c.sync_standbys().await?;
                match listed.first() {
                    Some(&s) if s != m && listed.len() >= want_listed => Ok(s),
                    _ => bail!("synchronous standbys {listed:?}, want {want_listed}"),
                }
            },
        )
        .await?
    } else {
        standby
    };
    let fail = Duration::from_secs(c.cfg.fail_interval_s);
    let epoch = Instant::now();
    let targets = Targets(c.nodes.iter().map(|n| n.proxy_addr()).collect());
    let w = Workload::start(targets, CLIENTS, epoch, base);
    // Warm up: writes flowing before the fault (bounded; on a loaded machine connecting is slow).
    w.wait_more_acks(3 * CLIENTS as u64, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Where etcd's raft leader is matters to a fault of the master's host: when it is there, the
    // other members elect a new one first, and etcd restarts every lease's TTL then (the old
    // leader sentinel's included).
    let etcd_leader = c.etcd_leader().await;
    eprintln!(
        "{}: master on host {m}, etcd raft leader on host {}",
        fault.name(),
        etcd_leader.map_or_else(|| "unknown".to_string(), |h| h.to_string())
    );
    let fault_ms = ms(epoch);
    // Four `failInterval`s (12 s at the fast timings), at most `failInterval` + 10 s: with the
    // default timings a failover or a synchronous standby's replacement takes about one
    // `failInterval`, and a master fault is held until a new master is named anyway.
    let hold = (fail * 4).min(fail + Duration::from_secs(10));
    match fault {
        Fault::MasterCutFromPeers | Fault::MasterCutLeaderAway | Fault::MasterCutLeaderOn => {
            c.topo.cut_from_peers(m)?;
            hold_master_fault(c, m, hold).await;
            c.topo.heal()?;
        }
        Fault::MasterIsolated => {
            c.topo.isolate(m)?;
            hold_master_fault(c, m, hold).await;
            c.topo.heal()?;
        }
        Fault::MasterOneWayCut => {
            c.topo.cut_outgoing(m)?;
            hold_master_fault(c, m, hold).await;
            c.topo.heal()?;
        }
        Fault::MasterStoreCut => {
            let other = (0..c.nodes.len())
                .find(|i| *i != m && *i != cut_standby)
                .context("a third host")?;
            let other_addr = c.nodes[other].host.addr;
            c.topo.cut_pair(m, other_addr)?;
            let keep = [
                c.nodes[m].pg_port,
                c.nodes[cut_standby].pg_port,
                KEEPER_HTTP_PORT,
            ];
            let sync_addr = c.nodes[cut_standby].host.addr;
            c.topo.cut_pair_except(m, sync_addr, &keep)?;
            hold_master_fault(c, m, hold).await;
            c.topo.heal()?;
        }
        Fault::StandbyCut => {
            c.topo.cut_from_peers(cut_standby)?;
            tokio::time::sleep(hold).await;
            c.topo.heal()?;
        }
        Fault::MasterKeeperKilled => {
            c.nodes[m].kill_keeper_and_postgres()?;
            let _ = wait_new_master(c, m, KILL_HOLD).await;
            c.nodes[m].keeper.start()?;
        }
        Fault::MasterHostDies => {
            let n = &mut c.nodes[m];
            n.proxy.kill()?;
            n.sentinel.kill()?;
            n.kill_keeper_and_postgres()?;
            n.etcd.kill()?;
            let _ = wait_new_master(c, m, KILL_HOLD).await;
            let n = &mut c.nodes[m];
            n.etcd.start()?;
            n.sentinel.start()?;
            n.keeper.start()?;
            n.proxy.start()?;
        }
        Fault::SlowStore => {
            let delay = Duration::from_secs(c.cfg.store_timeout_s + 2);
            for n in &c.nodes {
                n.etcd_proxy.set_delay(delay);
            }
            tokio::time::sleep(hold).await;
            for n in &c.nodes {
                n.etcd_proxy.set_delay(Duration::ZERO);
            }
        }
        Fault::EtcdMemberDown => {
            c.nodes[m].etcd.kill()?;
            tokio::time::sleep(Duration::from_secs(20)).await;
            c.nodes[m].etcd.start()?;
        }
        Fault::QuorumLost => {
            for i in [standby, (m + 2) % c.nodes.len()] {
                c.nodes[i].etcd.kill()?;
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
            for i in [standby, (m + 2) % c.nodes.len()] {
                c.nodes[i].etcd.start()?;
            }
        }
    }
    let heal_ms = ms(epoch);
    let converged = c.wait_converged(RECOVERY_LIMIT).await;
    let recovered_ms = converged.is_ok().then(|| ms(epoch));
    // Writes flowing again after recovery (bounded), so the read-back follows them.
    w.wait_more_acks(3 * CLIENTS as u64, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acks, attempts) = w.finish().await;
    let end_ms = ms(epoch);
    let master_after = converged.as_ref().ok().copied();
    let read_from = match master_after {
        Some(x) => x,
        None => c.master().await.unwrap_or(m),
    };
    let present = c
        .read_ids(read_from)
        .await
        .context("read the ids back")?
        .into_iter()
        .filter(|id| (base..base + CLIENTS as i64 * ID_STRIDE).contains(id))
        .collect();
    let h = History {
        acks,
        attempts,
        fault_ms,
        heal_ms,
        recovered_ms,
        end_ms,
        present,
    };
    let verdict = checker::check(&h);
    if let Err(e) = converged {
        eprintln!("{}: did not converge: {e:#}", fault.name());
    }
    Ok(CycleReport {
        fault,
        master_before: m,
        master_after,
        etcd_leader,
        verdict,
    })
}

/// Holds a fault of the master for `hold`, and beyond it (up to [`KILL_HOLD`]) until a new
/// master is named, plus two seconds: the interesting window is the old primary still running
/// while a new one is named, and on a loaded machine detection can take longer than `hold`.
async fn hold_master_fault(c: &NetCluster, m: usize, hold: Duration) {
    let start = Instant::now();
    tokio::time::sleep(hold).await;
    let left = KILL_HOLD.saturating_sub(start.elapsed());
    if wait_new_master(c, m, left).await.is_ok() {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn wait_new_master(c: &NetCluster, old: usize, limit: Duration) -> Result<usize> {
    wait_for("a new master", limit, async || {
        let m = c.master().await?;
        if m != old {
            Ok(m)
        } else {
            bail!("still keeper{old}")
        }
    })
    .await
}

fn opt_s(v: Option<u64>) -> String {
    v.map_or("-".into(), |ms| format!("{:.1}", ms as f64 / 1000.0))
}

/// Header of the per-cycle table.
pub const TABLE_HEADER: &str = "| cycle | fault | master | acked | failed | lost | split brain | longest gap (s) | failover (s) | recovery (s) | old primary acks after fault | old primary tail (s) | lost acked at (s) | etcd leader |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// One row of the per-cycle table.
pub fn table_row(cycle: usize, r: &CycleReport) -> String {
    let v = &r.verdict;
    format!(
        "| {cycle} | {} | {}->{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        r.fault.name(),
        r.master_before,
        r.master_after.map_or("?".into(), |m| m.to_string()),
        v.acknowledged,
        v.attempts.saturating_sub(v.acknowledged as u64),
        v.lost.len(),
        v.split_brain.len(),
        opt_s(Some(v.longest_gap_ms)),
        opt_s(v.failover_ms),
        opt_s(v.recovery_ms),
        if v.failover_ms.is_some() {
            v.old_primary_acks_after_fault.to_string()
        } else {
            "-".into()
        },
        opt_s(v.old_primary_tail_ms),
        v.lost_window_ms.map_or("-".into(), |(a, b)| format!(
            "{:.1}..{:.1}",
            a as f64 / 1000.0,
            b as f64 / 1000.0
        )),
        r.etcd_leader.map_or("?".into(), |h| h.to_string()),
    )
}

/// Median (the mean of the two middle values for an even count) and maximum.
fn median_max(mut v: Vec<u64>) -> (Option<u64>, Option<u64>) {
    if v.is_empty() {
        return (None, None);
    }
    v.sort_unstable();
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    };
    (Some(median), v.last().copied())
}

/// Per-fault summary table: cycles, acknowledged, failed (sent, not acknowledged), lost, split brain, cycles that failed over,
/// failover median and max, longest write gap median and max, recovery median and max.
pub fn summary_table(reports: &[CycleReport]) -> String {
    let mut out = String::from(
        "| fault | cycles | acked | failed | lost | split brain | failed over | failover median (s) | failover max (s) | longest gap median (s) | longest gap max (s) | recovery median (s) | recovery max (s) | not converged |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in EVERY {
        let rs: Vec<&CycleReport> = reports.iter().filter(|r| r.fault == f).collect();
        if rs.is_empty() {
            continue;
        }
        let failovers: Vec<u64> = rs.iter().filter_map(|r| r.verdict.failover_ms).collect();
        let n_failovers = failovers.len();
        let (fm, fx) = median_max(failovers);
        let (gm, gx) = median_max(rs.iter().map(|r| r.verdict.longest_gap_ms).collect());
        let (rm, rx) = median_max(rs.iter().filter_map(|r| r.verdict.recovery_ms).collect());
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            f.name(),
            rs.len(),
            rs.iter().map(|r| r.verdict.acknowledged).sum::<usize>(),
            rs.iter()
                .map(|r| r
                    .verdict
                    .attempts
                    .saturating_sub(r.verdict.acknowledged as u64))
                .sum::<u64>(),
            rs.iter().map(|r| r.verdict.lost.len()).sum::<usize>(),
            rs.iter()
                .map(|r| r.verdict.split_brain.len())
                .sum::<usize>(),
            n_failovers,
            opt_s(fm),
            opt_s(fx),
            opt_s(gm),
            opt_s(gx),
            opt_s(rm),
            opt_s(rx),
            rs.iter()
                .filter(|r| r.verdict.recovery_ms.is_none())
                .count(),
        ));
    }
    out
}

/// The one summary line.
pub fn summary_line(reports: &[CycleReport], synchronous: bool) -> String {
    format!(
        "SUMMARY mode={} cycles={} acked={} lost={} split_brain={} not_converged={}",
        if synchronous { "sync" } else { "async" },
        reports.len(),
        reports
            .iter()
            .map(|r| r.verdict.acknowledged)
            .sum::<usize>(),
        reports.iter().map(|r| r.verdict.lost.len()).sum::<usize>(),
        reports
            .iter()
            .map(|r| r.verdict.split_brain.len())
            .sum::<usize>(),
        reports
            .iter()
            .filter(|r| r.verdict.recovery_ms.is_none())
            .count(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_max() {
        assert_eq!(median_max(vec![]), (None, None));
        assert_eq!(median_max(vec![5, 1, 3]), (Some(3), Some(5)));
        assert_eq!(median_max(vec![4, 1, 3, 10]), (Some(3), Some(10)));
    }
}
