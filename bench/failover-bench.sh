#!/usr/bin/env bash
# Failover benchmark, two parts, both on release builds:
#
# - crash: a three-keeper cluster on loopback (real etcd, real PostgreSQL), synchronous
#   replication off and on; the primary's keeper and postgres are SIGKILLed together while a
#   client writes through the proxy (target/release/failover-bench). Measures the time from the
#   kill to the first successful write through the proxy, and acknowledged writes lost.
# - network: the multi-host harness (crates/stolon-net: three network namespaces, each with an
#   etcd member, a keeper and its PostgreSQL, a sentinel and a proxy; three clients writing
#   through the proxies), synchronous replication, one fault-campaign run of RUNS cycles per case:
#     master-cut-leader-away  the master's host cut off from its peers, leader sentinel elsewhere
#     master-cut-leader-on    the same with the leader sentinel on the cut host
#     master-host-dies        every process of the master's host killed, leader sentinel on it
#     standby-cut             the synchronous standby's host cut off (the commit stall)
#     standby-cut-quorum      the same with quorum commit (quorumCommit, one of two standbys)
#     etcd-member-down        the etcd member on the master's host killed for 20 s
#   failover = fault to the first write acknowledged by the new primary; longest gap = the
#   longest time without an acknowledged write from the fault on (for standby-cut, the commit
#   stall); failed = writes sent and not acknowledged (a connection closed or a write timed out).
#
# Each part runs at the fast timings (sleepInterval 1s, failInterval 3s) and at the defaults
# (sleepInterval 5s, failInterval 20s, proxyTimeout 15s, --store-timeout 5s; the network part
# sets wal_sender_timeout 5s, see docs/deployment.md). At the end one table: per case and timing,
# median and max failover and longest gap, failed and lost writes, and the goal.
#
#   bench/failover-bench.sh                          everything, 5 runs per case (about 70 minutes)
#   CASES=network TIMINGS=fast bench/failover-bench.sh
#   RUNS=1 CASES=crash bench/failover-bench.sh       smoke run of the crash part
#   NET_FAULTS=standby-cut,etcd-member-down ...      only these network cases
#   ETCD_LEADER=on-master CASES=network ...          move etcd's raft leader onto the master's
#                                                    host before each master fault (or away; by
#                                                    default it stays where etcd elected it)
#   CONFIGS=fast-sync CASES=crash ...                crash configurations by name (fast-async
#                                                    fast-sync default-async default-sync);
#                                                    by default those of TIMINGS
#
# Raw output goes to LOG_DIR (default target/failover-bench). Needs root (the network part makes
# network namespaces; keepers run as the `postgres` OS user).
set -euo pipefail
cd "$(dirname "$0")/.."

CASES=${CASES:-crash,network}
TIMINGS=${TIMINGS:-fast,defaults}
RUNS=${RUNS:-5}
NET_FAULTS=${NET_FAULTS:-master-cut-leader-away,master-cut-leader-on,master-host-dies,standby-cut,standby-cut-quorum,etcd-member-down}
LOG_DIR=${LOG_DIR:-target/failover-bench}
ETCD_LEADER=${ETCD_LEADER:-anywhere}

die() {
    echo "failover-bench.sh: $*" >&2
    exit 2
}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive number, not '$RUNS'"
for c in ${CASES//,/ }; do
    [[ $c == crash || $c == network ]] || die "CASES takes crash and network, not '$c'"
done
for t in ${TIMINGS//,/ }; do
    [[ $t == fast || $t == defaults ]] || die "TIMINGS takes fast and defaults, not '$t'"
done
for f in ${NET_FAULTS//,/ }; do
    case $f in
    master-cut-leader-away | master-cut-leader-on | master-host-dies | standby-cut | standby-cut-quorum | etcd-member-down) ;;
    *) die "NET_FAULTS takes master-cut-leader-away, master-cut-leader-on, master-host-dies, standby-cut, standby-cut-quorum and etcd-member-down, not '$f'" ;;
    esac
done
[[ $ETCD_LEADER == anywhere || $ETCD_LEADER == on-master || $ETCD_LEADER == away ]] ||
    die "ETCD_LEADER takes anywhere, on-master and away, not '$ETCD_LEADER'"
has() { [[ ,$1, == *,$2,* ]]; }

[ -x /usr/bin/etcd ] || bash scripts/install-deps.sh
echo "building release binaries..."
pkgs=(-p stolon-keeper -p stolon-sentinel -p stolon-proxy -p stolonctl)
has "$CASES" crash && pkgs+=(-p stolon-it)
has "$CASES" network && pkgs+=(-p stolon-net)
cargo build --release --quiet "${pkgs[@]}" --bins
mkdir -p "$LOG_DIR"

fail_interval() { if [[ $1 == fast ]]; then echo 3; else echo 20; fi; }

# Rows of the final table, as tab-separated fields:
# case, timings, replication, runs ok/asked, failover median, failover max, gap median, gap max,
# failed, lost, goal, goal value, measure (failover, gap or failed).
rows=()

if has "$CASES" crash; then
    configs=${CONFIGS:-}
    if [[ -z $configs ]]; then
        has "$TIMINGS" fast && configs+=fast-async,fast-sync,
        has "$TIMINGS" defaults && configs+=default-async,default-sync,
    fi
    log=$LOG_DIR/crash.log
    echo "== crash: CONFIGS=$configs RUNS=$RUNS (log: $log)"
    CONFIGS=$configs RUNS=$RUNS target/release/failover-bench 2>&1 | tee "$log" || true
    # "<name> runs N ok N failed N  median X s  max X s  acknowledged N  lost acknowledged N"
    while read -r name _ runs _ ok _ _ _ med _ _ max _ _ _ _ _ lost; do
        t=fast
        [[ $name == default-* ]] && t=defaults
        rows+=("$(printf 'crash (keeper + postgres killed)\t%s\t%s\t%s/%s\t%s\t%s\t-\t-\t-\t%s\tfailover <= %s s (failInterval + 1 s)\t%s\tfailover' \
            "$t" "${name#*-}" "$ok" "$runs" "$med" "$max" "$lost" "$(($(fail_interval "$t") + 1))" "$(($(fail_interval "$t") + 1))")")
    done < <(grep -E '^(fast|default)-(a?sync) +runs ' "$log" || true)
fi

if has "$CASES" network; then
    for t in ${TIMINGS//,/ }; do
        fi_s=$(fail_interval "$t")
        for f in ${NET_FAULTS//,/ }; do
            log=$LOG_DIR/network-$t-$f.log
            echo "== network: $f, $t timings, $RUNS cycles (log: $log)"
            fault=$f repl=sync extra=()
            if [[ $f == standby-cut-quorum ]]; then
                fault=standby-cut repl="sync, quorum" extra=(--quorum)
            fi
            target/release/fault-campaign --timings "$t" --etcd-leader "$ETCD_LEADER" --faults "$fault" \
                --cycles "$RUNS" "${extra[@]}" 2>&1 |
                tee "$log" || true
            case $f in
            master-cut-leader-away) v=$((fi_s + 2)) goal="failover <= $v s (failInterval + 2 s)" m=failover ;;
            master-cut-leader-on | master-host-dies) v=$((fi_s + 3)) goal="failover <= $v s (failInterval + 3 s)" m=failover ;;
            standby-cut | standby-cut-quorum) v=2 goal="longest gap <= 2 s (commits resume within 2 s)" m=gap ;;
            etcd-member-down) v=0 goal="0 failed writes (no proxy closes a connection)" m=failed ;;
            esac
            # The campaign's per-fault summary row: | fault | cycles | acked | failed | lost |
            # split brain | failed over | failover median | failover max | gap median | gap max |
            # recovery median | recovery max | not converged |
            line=$(grep -E "^\| $fault \| [0-9]+ \|" "$log" | tail -n 1 || true)
            if [[ -z $line ]]; then
                rows+=("$(printf '%s\t%s\t%s\t0/%s\t-\t-\t-\t-\t-\t-\t%s\t%s\t%s' "$f" "$t" "$repl" "$RUNS" "$goal" "$v" "$m")")
                continue
            fi
            IFS='|' read -r _ _ cycles _ failed lost split _ fmed fmax gmed gmax _ _ nc _ <<<"${line// /}"
            ok=$((cycles - nc))
            note=""
            ((split > 0)) && note=" split brain $split"
            rows+=("$(printf '%s%s\t%s\t%s\t%s/%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' \
                "$f" "$note" "$t" "$repl" "$ok" "$RUNS" "$fmed" "$fmax" "$gmed" "$gmax" "$failed" "$lost" "$goal" "$v" "$m")")
        done
    done
fi

echo
echo "== failover benchmark, $RUNS runs per case (runs = converged cycles / asked; times in s)"
echo "| case | timings | replication | runs | failover median | failover max | longest gap median | longest gap max | failed writes | lost writes | goal | goal met (max / median) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for r in "${rows[@]}"; do
    IFS=$'\t' read -r c t repl runs fmed fmax gmed gmax failed lost goal v m <<<"$r"
    case $m in
    failover) med=$fmed max=$fmax ;;
    gap) med=$gmed max=$gmax ;;
    failed) med=$failed max=$failed ;;
    esac
    if [[ $med == - || -z $med ]]; then
        met="no data"
    elif [[ $m == failed ]]; then
        met=$([[ $failed == 0 ]] && echo yes || echo "no ($failed in all runs)")
    else
        met=$(awk -v a="$max" -v b="$med" -v g="$v" 'BEGIN {
            printf "%s / %s", (a + 0 <= g + 0 ? "yes" : "no"), (b + 0 <= g + 0 ? "yes" : "no") }')
    fi
    echo "| $c | $t | $repl | $runs | $fmed | $fmax | $gmed | $gmax | $failed | $lost | $goal | $met |"
done
