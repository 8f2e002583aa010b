//! Runs a fault campaign on the multi-host harness:
//! `fault-campaign [--cycles N] [--async] [--failsafe] [--quorum] [--timings fast|defaults]
//! [--etcd-leader anywhere|on-master|away] [--faults NAME,NAME...]`.
//! A cycle is one fault (the eight faults in turn, or those named, by their table names);
//! `--timings` picks the spec timings (`fast`, the CI campaign's, by default; `defaults`, the
//! spec's and the store client's defaults); `--quorum` starts the cluster with quorum commit
//! (one to two synchronous standbys); `--etcd-leader` moves etcd's raft leader, before each
//! fault of the master, onto the master's host or onto another one (by default it stays where
//! etcd elected it). Prints a table row per cycle, the per-fault
//! summary table and one summary line. Exits non-zero if a cycle lost an acknowledged write
//! with synchronous replication, saw a split brain, or did not converge.

use std::process::ExitCode;

use stolon_net::campaign::{self, ALL, Fault, TABLE_HEADER};
use stolon_net::cluster::{EtcdLeader, NetCluster, NetConfig};

fn usage() -> ExitCode {
    eprintln!(
        "usage: fault-campaign [--cycles N] [--async] [--failsafe] [--quorum] \
         [--timings fast|defaults] [--etcd-leader anywhere|on-master|away] \
         [--faults NAME,NAME...]"
    );
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut cycles = None;
    let mut synchronous = true;
    let mut failsafe = false;
    let mut quorum = false;
    let mut timings = "fast".to_string();
    let mut etcd_leader = EtcdLeader::Anywhere;
    let mut faults: Vec<Fault> = ALL.to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cycles" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => cycles = Some(n),
                _ => {
                    eprintln!("fault-campaign: --cycles needs a positive number");
                    return usage();
                }
            },
            "--async" => synchronous = false,
            "--failsafe" => failsafe = true,
            "--quorum" => quorum = true,
            "--timings" => match args.next() {
                Some(t) if NetConfig::by_timings(&t, true).is_some() => timings = t,
                other => {
                    eprintln!(
                        "fault-campaign: --timings must be fast or defaults, not {:?}",
                        other.unwrap_or_default()
                    );
                    return usage();
                }
            },
            "--etcd-leader" => {
                let v = args.next().unwrap_or_default();
                match EtcdLeader::by_name(&v) {
                    Some(p) => etcd_leader = p,
                    None => {
                        eprintln!(
                            "fault-campaign: --etcd-leader must be anywhere, on-master or away, not {v:?}"
                        );
                        return usage();
                    }
                }
            }
            "--faults" => {
                let names = args.next().unwrap_or_default();
                let mut chosen = Vec::new();
                for name in names.split(',').filter(|n| !n.is_empty()) {
                    match Fault::by_name(name) {
                        Some(f) => chosen.push(f),
                        None => {
                            eprintln!("fault-campaign: unknown fault {name:?}");
                            return usage();
                        }
                    }
                }
                if chosen.is_empty() {
                    eprintln!("fault-campaign: --faults needs at least one fault name");
                    return usage();
                }
                faults = chosen;
            }
            "-h" | "--help" => return usage(),
            other => {
                eprintln!("fault-campaign: unknown argument {other:?}");
                return usage();
            }
        }
    }
    let cycles = cycles.unwrap_or(faults.len());
    let Some(base_cfg) = NetConfig::by_timings(&timings, synchronous) else {
        return usage();
    };
    let cfg = NetConfig {
        failsafe,
        quorum,
        etcd_leader,
        ..base_cfg
    };
    println!(
        "campaign: {cycles} cycles, {}{}{}{}, {timings} timings (sleepInterval {}s, failInterval {}s, \
         proxyTimeout {}s, --store-timeout {}s, wal_sender_timeout {}s)",
        if synchronous {
            "synchronous"
        } else {
            "asynchronous"
        },
        if quorum { ", quorum commit" } else { "" },
        if failsafe { ", failsafe mode" } else { "" },
        match etcd_leader {
            EtcdLeader::Anywhere => "",
            EtcdLeader::OnMaster => ", etcd's leader moved to the master's host",
            EtcdLeader::Away => ", etcd's leader moved off the master's host",
        },
        cfg.sleep_interval_s,
        cfg.fail_interval_s,
        cfg.proxy_timeout_s,
        cfg.store_timeout_s,
        cfg.wal_sender_timeout_s,
    );
    let mut c = match NetCluster::start(3, cfg).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fault-campaign: cannot start the cluster: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("{TABLE_HEADER}");
    let mut reports = Vec::new();
    let mut failed = false;
    // SIGINT/SIGTERM end the campaign between two steps, so the cluster is torn down (and its
    // namespaces removed) by its drop.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fault-campaign: cannot handle SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    for i in 0..cycles {
        let fault = faults[i % faults.len()];
        let base = (i as i64 + 1) * 100_000_000_000;
        let r = tokio::select! {
            r = campaign::run_cycle(&mut c, fault, base) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        };
        match r {
            Ok(r) => {
                println!("{}", campaign::table_row(i + 1, &r));
                let v = &r.verdict;
                if !v.split_brain.is_empty()
                    || v.recovery_ms.is_none()
                    || (synchronous && !v.lost.is_empty())
                {
                    failed = true;
                    eprintln!("cycle {}: {v:?}", i + 1);
                }
                reports.push(r);
            }
            Err(e) => {
                eprintln!("cycle {} ({}): {e:#}", i + 1, fault.name());
                failed = true;
                break;
            }
        }
    }
    println!();
    print!("{}", campaign::summary_table(&reports));
    println!("{}", campaign::summary_line(&reports, synchronous));
    if failed {
        ExitCode::FAILURE
    } else {
        c.pass();
        ExitCode::SUCCESS
    }
}
