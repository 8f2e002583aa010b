#!/usr/bin/env bash
# proxy-bench.sh: what does the proxy cost per query, next to HAProxy?
#
# Starts a throwaway PostgreSQL (fresh data dir under /tmp, loopback only, removed on exit), runs
# pgbench select-only (-S) directly against it and through one or more proxies in interleaved
# rounds, and prints for each proxy its TPS, the ratio to direct, the latency it adds per query
# (from pgbench's latency average) and the CPU it uses per query (user and system time of the
# proxy process, from /proc/PID/stat, divided by the queries of its runs). With HAProxy measured
# too, it prints stolon-proxy's CPU per query relative to HAProxy's, per round and overall.
#
# Environment (all optional):
#   BENCH_SECONDS   duration of each pgbench run              (default 30)
#   BENCH_CLIENTS   pgbench clients (-c)                       (default 16)
#   BENCH_JOBS      pgbench threads (-j)                       (default 2)
#   BENCH_SCALE     pgbench scale factor for -i                (default 10)
#   BENCH_ROUNDS    rounds; each runs direct and every proxy once, the order rotating from round
#                   to round so warm-up and drift favour no one (default 1)
#   BENCH_PROTOCOL  pgbench -M: simple|extended|prepared      (default simple)
#   PG_BIN          PostgreSQL binaries                        (default /usr/lib/postgresql/15/bin)
#   PROXY_THREADS   worker threads of the bench forwarder, 0 = single-threaded runtime (default 0)
#   BENCH_PROXY     which proxies to measure, a comma-separated list of:
#                     engine   the forwarding engine alone (example fixed-forward, fixed
#                              destination) (the default)
#                     stolon   the real stolon-proxy binary with a throwaway etcd holding
#                              clusterdata that names PostgreSQL as master and enables this proxy
#                              (store checks and ProxyInfo publishing run during the measurement,
#                              as in production); STPROXY_* variables in the environment reach it
#                     haproxy  HAProxy in TCP mode with a minimal configuration written by this
#                              script (installed from Debian with apt-get when missing)
#                   or "side-by-side", short for "stolon,haproxy".
#   HAPROXY_BIN     HAProxy binary                             (default: haproxy on PATH)
#   HAPROXY_THREADS HAProxy nbthread; empty = HAProxy's default (one per CPU it may run on)
#   BENCH_PIN       1 = give the proxy its own CPU, as in production where it runs in its own pod
#                   or host: PostgreSQL and pgbench are pinned (taskset) to every CPU but the last,
#                   every proxy (and etcd) to the last one, for the direct and the proxied runs.
#                   Needs at least 2 CPUs. 0 (default) = everything shares every CPU.
#   PROXY_CMD       command that runs the proxy instead of the bench forwarder (BENCH_PROXY=engine
#                   only); the words {listen} and {to} are replaced by host:port of the proxy and
#                   of PostgreSQL. Example: PROXY_CMD='/path/other-proxy --listen {listen} --to {to}'
#
# Runs as root (PostgreSQL itself runs as the `postgres` OS user through setpriv) or as any user
# that can run initdb. Only 127.0.0.1 is used. Everything started is stopped by pid on exit, also
# on failure or interruption; every pgbench run is bounded by BENCH_SECONDS.
set -euo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-30}
BENCH_CLIENTS=${BENCH_CLIENTS:-16}
BENCH_JOBS=${BENCH_JOBS:-2}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_ROUNDS=${BENCH_ROUNDS:-1}
BENCH_PROTOCOL=${BENCH_PROTOCOL:-simple}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PROXY_THREADS=${PROXY_THREADS:-0}
PROXY_CMD=${PROXY_CMD:-}
BENCH_PROXY=${BENCH_PROXY:-engine}
BENCH_PIN=${BENCH_PIN:-0}
ETCD_BIN=${ETCD_BIN:-/usr/bin/etcd}
ETCDCTL_BIN=${ETCDCTL_BIN:-/usr/bin/etcdctl}
HAPROXY_BIN=${HAPROXY_BIN:-}
HAPROXY_THREADS=${HAPROXY_THREADS:-}

die() { echo "proxy-bench: $*" >&2; exit 1; }

for n in BENCH_SECONDS BENCH_CLIENTS BENCH_JOBS BENCH_SCALE BENCH_ROUNDS PROXY_THREADS; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a non-negative integer, got '${!n}'"
done
((BENCH_SECONDS > 0 && BENCH_CLIENTS > 0 && BENCH_JOBS > 0 && BENCH_ROUNDS > 0)) ||
    die "BENCH_SECONDS, BENCH_CLIENTS, BENCH_JOBS and BENCH_ROUNDS must be > 0"
[[ -z $HAPROXY_THREADS || $HAPROXY_THREADS =~ ^[1-9][0-9]*$ ]] ||
    die "HAPROXY_THREADS must be empty or a positive integer, got '$HAPROXY_THREADS'"
for b in initdb pg_ctl pgbench; do
    [[ -x $PG_BIN/$b ]] || die "$PG_BIN/$b not found (set PG_BIN)"
done
command -v python3 >/dev/null || die "python3 is needed to find free ports"
case $BENCH_PIN in
0) PIN_DB=() PIN_PROXY=() ;;
1)
    command -v taskset >/dev/null || die "BENCH_PIN=1 needs taskset (util-linux)"
    ncpu=$(nproc)
    ((ncpu >= 2)) || die "BENCH_PIN=1 needs at least 2 CPUs, this machine has $ncpu"
    PIN_DB=(taskset -c "0-$((ncpu - 2))")
    PIN_PROXY=(taskset -c "$((ncpu - 1))")
    ;;
*) die "BENCH_PIN must be 0 or 1, got '$BENCH_PIN'" ;;
esac

# The proxies to measure, in the order given.
[[ $BENCH_PROXY != side-by-side ]] || BENCH_PROXY=stolon,haproxy
IFS=, read -r -a PROXIES <<<"$BENCH_PROXY"
((${#PROXIES[@]} > 0)) || die "BENCH_PROXY is empty"
declare -A SEEN=()
for p in "${PROXIES[@]}"; do
    case $p in
    engine | stolon | haproxy) ;;
    *) die "BENCH_PROXY: unknown proxy '$p' (expected engine, stolon, haproxy or side-by-side)" ;;
    esac
    [[ -z ${SEEN[$p]:-} ]] || die "BENCH_PROXY names '$p' twice"
    SEEN[$p]=1
done
if [[ -n $PROXY_CMD ]]; then
    [[ $BENCH_PROXY == engine ]] || die "PROXY_CMD replaces the engine forwarder: it needs BENCH_PROXY=engine"
fi
if [[ -n ${SEEN[stolon]:-} ]]; then
    [[ -x $ETCD_BIN && -x $ETCDCTL_BIN ]] || die "$ETCD_BIN / $ETCDCTL_BIN not found (scripts/install-deps.sh)"
fi
if [[ -n ${SEEN[haproxy]:-} ]]; then
    if [[ -z $HAPROXY_BIN ]]; then
        if ! command -v haproxy >/dev/null; then
            [[ $(id -u) -eq 0 ]] || die "haproxy is not installed and installing it needs root (apt-get install haproxy)"
            echo "== installing haproxy from Debian"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy >/dev/null 2>&1 ||
                { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy >/dev/null; } ||
                die "cannot install haproxy with apt-get"
        fi
        HAPROXY_BIN=$(command -v haproxy) || die "haproxy not found after installing it"
    fi
    [[ -x $HAPROXY_BIN ]] || die "HAPROXY_BIN $HAPROXY_BIN is not executable"
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/proxy-bench.XXXXXX)
declare -A PID=() PORT=()
ETCD_PID=""
PG_STARTED=0

# Run a command as the PostgreSQL OS user when we are root.
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        setpriv --reuid=postgres --regid=postgres --init-groups env HOME="$WORK" "$@"
    else
        "$@"
    fi
}

# stop_pid PID: SIGTERM, a bounded wait, then SIGKILL (a process that ignores SIGTERM must not
# hang the bench).
stop_pid() {
    local pid=$1 i
    kill "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

cleanup() {
    set +e
    local p
    for p in "${!PID[@]}"; do stop_pid "${PID[$p]}"; done
    [[ -z $ETCD_PID ]] || stop_pid "$ETCD_PID"
    if ((PG_STARTED)); then
        as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Wait (bounded) until something accepts TCP connections on 127.0.0.1:$1.
wait_port() {
    local port=$1 i
    for ((i = 0; i < 200; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

PG_PORT=$(free_port)
declare -A USED=([$PG_PORT]=1)
for p in "${PROXIES[@]}"; do
    port=$(free_port)
    while [[ -n ${USED[$port]:-} ]]; do port=$(free_port); done
    USED[$port]=1
    PORT[$p]=$port
done

build=()
[[ -z ${SEEN[stolon]:-} ]] || build+=(--bin stolon-proxy --example bench-clusterdata)
[[ -z ${SEEN[engine]:-} || -n $PROXY_CMD ]] || build+=(--example fixed-forward)
if ((${#build[@]})); then
    echo "== building ${build[*]} (release)"
    (cd "$REPO" && cargo build --release --quiet -p stolon-proxy "${build[@]}")
fi

echo "== starting PostgreSQL on 127.0.0.1:$PG_PORT (data in $WORK)"
if [[ $(id -u) -eq 0 ]]; then chown postgres: "$WORK"; fi
chmod 0755 "$WORK"
as_pg "$PG_BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-sync >"$WORK/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -5 "$WORK/initdb.log")"
cat >>"$WORK/data/postgresql.conf" <<EOC
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = $((BENCH_CLIENTS * ${#PROXIES[@]} + 20))
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOC
as_pg "${PIN_DB[@]}" "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w -t 60 start >/dev/null ||
    die "PostgreSQL did not start: $(tail -5 "$WORK/pg.log")"
PG_STARTED=1

echo "== pgbench -i -s $BENCH_SCALE"
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -s "$BENCH_SCALE" -q postgres \
    >"$WORK/init.log" 2>&1 || die "pgbench -i failed: $(tail -5 "$WORK/init.log")"

# start_proxy NAME COMMAND...: starts a proxy in the background, waits until it listens.
start_proxy() {
    local name=$1
    shift
    echo "== starting $name: $*"
    "${PIN_PROXY[@]}" "$@" >"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
    wait_port "${PORT[$name]}" || die "$name did not listen on ${PORT[$name]}: $(tail -5 "$WORK/$name.log")"
}

start_engine() {
    local cmd
    if [[ -n $PROXY_CMD ]]; then
        cmd=${PROXY_CMD//\{listen\}/127.0.0.1:${PORT[engine]}}
        cmd=${cmd//\{to\}/127.0.0.1:$PG_PORT}
    else
        cmd="$REPO/target/release/examples/fixed-forward --listen 127.0.0.1:${PORT[engine]} --to 127.0.0.1:$PG_PORT --threads $PROXY_THREADS"
    fi
    # shellcheck disable=SC2086 # the command is split into words on purpose
    start_proxy engine $cmd
}

start_haproxy() {
    local cfg=$WORK/haproxy.cfg
    {
        echo "global"
        echo "    maxconn $((BENCH_CLIENTS + 100))"
        [[ -z $HAPROXY_THREADS ]] || echo "    nbthread $HAPROXY_THREADS"
        echo "defaults"
        echo "    mode tcp"
        echo "    timeout connect 10s"
        echo "    timeout client 1h"
        echo "    timeout server 1h"
        echo "frontend bench"
        echo "    bind 127.0.0.1:${PORT[haproxy]}"
        echo "    default_backend postgres"
        echo "backend postgres"
        echo "    server pg 127.0.0.1:$PG_PORT"
    } >"$cfg"
    "$HAPROXY_BIN" -c -q -f "$cfg" >"$WORK/haproxy-check.log" 2>&1 ||
        die "haproxy rejects its configuration: $(tail -5 "$WORK/haproxy-check.log")"
    # -db: stay in the foreground, so the pid is HAProxy's own and it stops with SIGTERM.
    start_proxy haproxy "$HAPROXY_BIN" -db -f "$cfg"
}

etcdctl() { ETCDCTL_API=3 "$ETCDCTL_BIN" --endpoints "$ENDPOINT" "$@"; }

start_stolon() {
    local port=${PORT[stolon]} etcd_port etcd_peer_port cd_key uid i routed
    etcd_port=$(free_port)
    etcd_peer_port=$(free_port)
    ENDPOINT="http://127.0.0.1:$etcd_port"
    echo "== starting etcd on $ENDPOINT"
    "${PIN_PROXY[@]}" "$ETCD_BIN" --name bench --data-dir "$WORK/etcd" \
        --listen-client-urls "$ENDPOINT" --advertise-client-urls "$ENDPOINT" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
        --initial-cluster "bench=http://127.0.0.1:$etcd_peer_port" >"$WORK/etcd.log" 2>&1 &
    ETCD_PID=$!
    wait_port "$etcd_port" || die "etcd did not start: $(tail -5 "$WORK/etcd.log")"
    cd_key=stolon/cluster/bench/clusterdata
    # Clusterdata naming PostgreSQL as master, no proxy enabled yet: the proxy reads it and
    # publishes its ProxyInfo, which tells us its random UID.
    "$REPO/target/release/examples/bench-clusterdata" --master "127.0.0.1:$PG_PORT" >"$WORK/cd.json"
    etcdctl put "$cd_key" "$(cat "$WORK/cd.json")" >/dev/null || die "cannot write clusterdata to etcd"
    start_proxy stolon "$REPO/target/release/stolon-proxy" --cluster-name bench --store-backend etcdv3 \
        --store-endpoints "$ENDPOINT" --listen-address 127.0.0.1 --port "$port"
    uid=""
    for ((i = 0; i < 100; i++)); do
        uid=$(etcdctl get --prefix --keys-only stolon/cluster/bench/proxies/info/ | sed -n 's|.*/||p' | head -1)
        [[ -z $uid ]] || break
        sleep 0.1
    done
    [[ -n $uid ]] || die "stolon-proxy published no ProxyInfo: $(tail -5 "$WORK/stolon.log")"
    echo "== enabling proxy $uid"
    "$REPO/target/release/examples/bench-clusterdata" --master "127.0.0.1:$PG_PORT" --enable "$uid" >"$WORK/cd.json"
    etcdctl put "$cd_key" "$(cat "$WORK/cd.json")" >/dev/null || die "cannot write clusterdata to etcd"
    routed=0
    for ((i = 0; i < 100; i++)); do
        if "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
            routed=1
            break
        fi
        sleep 0.1
    done
    ((routed)) || die "stolon-proxy does not route to PostgreSQL: $(tail -5 "$WORK/stolon.log")"
}

for p in "${PROXIES[@]}"; do "start_$p"; done

CLK_TCK=$(getconf CLK_TCK)
# User and system CPU time (in clock ticks) used so far by process $1 and all its threads.
proc_ticks() {
    [[ -r /proc/$1/stat ]] || die "process $1 is gone: $(tail -5 "$WORK"/*.log 2>/dev/null)"
    # Fields 14 and 15 (utime, stime) count every thread of the process; the command name (field
    # 2) of the proxies measured here has no spaces.
    awk '{ print $14, $15 }' "/proc/$1/stat"
}

# run_pgbench PORT LABEL: prints "tps latency_ms transactions"
run_pgbench() {
    local port=$1 label=$2 out
    out="$WORK/pgbench-$label.log"
    "${PIN_DB[@]}" "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -S -M "$BENCH_PROTOCOL" \
        -c "$BENCH_CLIENTS" -j "$BENCH_JOBS" -T "$BENCH_SECONDS" postgres >"$out" 2>&1 ||
        die "pgbench ($label) failed: $(tail -5 "$out")"
    local tps lat txns
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$out")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$out")
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
    [[ -n $tps && -n $lat && -n $txns ]] || die "cannot parse pgbench ($label) output: $(cat "$out")"
    echo "$tps $lat $txns"
}

((BENCH_PIN == 0)) || echo "== pinned: PostgreSQL and pgbench on ${PIN_DB[*]:2}, the proxies on ${PIN_PROXY[*]:2}"
SIDES=(direct "${PROXIES[@]}")
echo "== pgbench -S -M $BENCH_PROTOCOL -c $BENCH_CLIENTS -j $BENCH_JOBS -T $BENCH_SECONDS, $BENCH_ROUNDS round(s) of: ${SIDES[*]}"
RESULTS=$WORK/results.txt
: >"$RESULTS"
for ((r = 1; r <= BENCH_ROUNDS; r++)); do
    # Rotate the order so warm-up and drift do not favour one side.
    order=()
    for ((i = 0; i < ${#SIDES[@]}; i++)); do order+=("${SIDES[(i + r - 1) % ${#SIDES[@]}]}"); done
    for side in "${order[@]}"; do
        u0=0 s0=0 u1=0 s1=0
        if [[ $side == direct ]]; then
            run_pgbench "$PG_PORT" "$side-$r" >"$WORK/run.txt"
        else
            proc_ticks "${PID[$side]}" >"$WORK/ticks.txt"
            read -r u0 s0 <"$WORK/ticks.txt"
            run_pgbench "${PORT[$side]}" "$side-$r" >"$WORK/run.txt"
            proc_ticks "${PID[$side]}" >"$WORK/ticks.txt"
            read -r u1 s1 <"$WORK/ticks.txt"
        fi
        read -r tps lat txns <"$WORK/run.txt"
        echo "$r $side $tps $lat $txns $((u1 - u0)) $((s1 - s0))" >>"$RESULTS"
        python3 -c '
import sys
r, side, tps, lat, txns, u, s, tck = sys.argv[1:]
line = f"   round {r} {side:<7} tps {float(tps):10.1f}  latency {float(lat):.3f} ms"
if side != "direct":
    n = max(int(txns), 1)
    cu, cs = int(u) / int(tck) * 1e6 / n, int(s) / int(tck) * 1e6 / n
    line += f"  cpu/query {cu + cs:5.1f} us (user {cu:.1f}, system {cs:.1f})"
print(line)
' "$r" "$side" "$tps" "$lat" "$txns" "$((u1 - u0))" "$((s1 - s0))" "$CLK_TCK"
    done
done

python3 - "$RESULTS" "$CLK_TCK" <<'EOP'
import sys
from collections import defaultdict
path, tck = sys.argv[1], int(sys.argv[2])
rows = defaultdict(list)  # side -> [(round, tps, lat_ms, txns, user_ticks, sys_ticks)]
for line in open(path):
    r, side, tps, lat, txns, u, s = line.split()
    rows[side].append((int(r), float(tps), float(lat), int(txns), int(u), int(s)))

def mean(xs):
    return sum(xs) / len(xs)

def cpu(rs):
    """(user, system) CPU per query in microseconds over the runs rs."""
    n = max(sum(x[3] for x in rs), 1)
    return (sum(x[4] for x in rs) / tck * 1e6 / n, sum(x[5] for x in rs) / tck * 1e6 / n)

def spread(xs, fmt):
    return f"{fmt.format(min(xs))}-{fmt.format(max(xs))}" if len(xs) > 1 else "-"

direct = rows["direct"]
dt, dl = mean([x[1] for x in direct]), mean([x[2] for x in direct])
print(f"{'':<8} {'TPS':>9} {'/direct':>7} {'added latency':>14} {'CPU/query (user+system)':>25}  spread over rounds: TPS, CPU/query")
print(f"{'direct':<8} {dt:9.1f} {1:7.3f} {'-':>14} {'-':>25}  {spread([x[1] for x in direct], '{:.0f}')}")
per_round_cpu = {}
for side, rs in rows.items():
    if side == "direct":
        continue
    pt, pl = mean([x[1] for x in rs]), mean([x[2] for x in rs])
    cu, cs = cpu(rs)
    per_round_cpu[side] = {x[0]: sum(cpu([x])) for x in rs}
    cpus = list(per_round_cpu[side].values())
    print(f"{side:<8} {pt:9.1f} {pt / dt:7.3f} {(pl - dl) * 1000:11.1f} us {cu + cs:8.1f} us ({cu:.1f} + {cs:.1f})  "
          f"{spread([x[1] for x in rs], '{:.0f}')}, {spread(cpus, '{:.1f}')} us")
if "stolon" in rows and "haproxy" in rows:
    cs, ch = sum(cpu(rows["stolon"])), sum(cpu(rows["haproxy"]))
    ratios = [per_round_cpu["stolon"][r] / per_round_cpu["haproxy"][r]
              for r in per_round_cpu["stolon"] if per_round_cpu["haproxy"].get(r)]
    ts, th = mean([x[1] for x in rows["stolon"]]), mean([x[1] for x in rows["haproxy"]])
    print(f"stolon-proxy CPU per query / HAProxy's: {cs / max(ch, 1e-9):.3f} (per round: {spread(ratios, '{:.3f}')})")
    print(f"stolon-proxy TPS / HAProxy's:           {ts / th:.3f}")
EOP
