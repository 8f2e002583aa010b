#!/usr/bin/env bash
# proxy-bench.sh: what does the proxy cost per query?
#
# Starts a throwaway PostgreSQL (fresh data dir under /tmp, loopback only, removed on exit), runs
# pgbench select-only (-S) directly against it and then through the proxy, and prints both TPS
# figures, their ratio, and the latency the proxy adds per query (from pgbench's latency average).
#
# Environment (all optional):
#   BENCH_SECONDS   duration of each pgbench run              (default 30)
#   BENCH_CLIENTS   pgbench clients (-c)                       (default 16)
#   BENCH_JOBS      pgbench threads (-j)                       (default 2)
#   BENCH_SCALE     pgbench scale factor for -i                (default 10)
#   BENCH_ROUNDS    direct/proxy pairs, order alternating      (default 1)
#   BENCH_PROTOCOL  pgbench -M: simple|extended|prepared      (default simple)
#   PG_BIN          PostgreSQL binaries                        (default /usr/lib/postgresql/15/bin)
#   PROXY_THREADS   worker threads of the bench forwarder, 0 = single-threaded runtime (default 0)
#   BENCH_PROXY     which proxy to measure: "engine" (default) = the forwarding engine alone
#                   (example fixed-forward, fixed destination); "stolon" = the real stolon-proxy
#                   binary with a throwaway etcd holding clusterdata that names PostgreSQL as
#                   master and enables this proxy (store checks and ProxyInfo publishing run
#                   during the measurement, as in production)
#   BENCH_PIN       1 = give the proxy its own CPU, as in production where it runs in its own pod
#                   or host: PostgreSQL and pgbench are pinned (taskset) to every CPU but the last,
#                   the proxy (and etcd) to the last one, for both the direct and the proxied run.
#                   Needs at least 2 CPUs. 0 (default) = everything shares every CPU.
#   PROXY_CMD       command that runs the proxy instead of the bench forwarder; the words
#                   {listen} and {to} are replaced by host:port of the proxy and of PostgreSQL.
#                   Example: PROXY_CMD='/path/stolon-proxy --listen {listen} --to {to}'
#
# Runs as root (PostgreSQL itself runs as the `postgres` OS user through setpriv) or as any user
# that can run initdb. Only 127.0.0.1 is used.
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

die() { echo "proxy-bench: $*" >&2; exit 1; }

for n in BENCH_SECONDS BENCH_CLIENTS BENCH_JOBS BENCH_SCALE BENCH_ROUNDS PROXY_THREADS; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a non-negative integer, got '${!n}'"
done
((BENCH_SECONDS > 0 && BENCH_CLIENTS > 0 && BENCH_JOBS > 0 && BENCH_ROUNDS > 0)) ||
    die "BENCH_SECONDS, BENCH_CLIENTS, BENCH_JOBS and BENCH_ROUNDS must be > 0"
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
case $BENCH_PROXY in
engine) ;;
stolon)
    [[ -z $PROXY_CMD ]] || die "PROXY_CMD and BENCH_PROXY=stolon exclude each other"
    [[ -x $ETCD_BIN && -x $ETCDCTL_BIN ]] || die "$ETCD_BIN / $ETCDCTL_BIN not found (scripts/install-deps.sh)"
    ;;
*) die "BENCH_PROXY must be engine or stolon, got '$BENCH_PROXY'" ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/proxy-bench.XXXXXX)
PROXY_PID=""
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

cleanup() {
    set +e
    if [[ -n $PROXY_PID ]]; then
        kill "$PROXY_PID" 2>/dev/null
        # Bounded wait, then SIGKILL: a proxy that ignores SIGTERM must not hang the bench.
        for ((i = 0; i < 50; i++)); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PROXY_PID" 2>/dev/null
        wait "$PROXY_PID" 2>/dev/null
    fi
    if [[ -n $ETCD_PID ]]; then
        kill "$ETCD_PID" 2>/dev/null
        for ((i = 0; i < 50; i++)); do kill -0 "$ETCD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$ETCD_PID" 2>/dev/null
        wait "$ETCD_PID" 2>/dev/null
    fi
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
PROXY_PORT=$(free_port)
[[ $PG_PORT != "$PROXY_PORT" ]] || PROXY_PORT=$(free_port)

if [[ $BENCH_PROXY == stolon ]]; then
    echo "== building stolon-proxy (release)"
    (cd "$REPO" && cargo build --release --quiet -p stolon-proxy --bin stolon-proxy --example bench-clusterdata)
    ETCD_PORT=$(free_port)
    ETCD_PEER_PORT=$(free_port)
    ENDPOINT="http://127.0.0.1:$ETCD_PORT"
    PROXY_CMD="$REPO/target/release/stolon-proxy --cluster-name bench --store-backend etcdv3 --store-endpoints $ENDPOINT --listen-address 127.0.0.1 --port {port}"
elif [[ -z $PROXY_CMD ]]; then
    echo "== building the bench forwarder (release)"
    (cd "$REPO" && cargo build --release --quiet -p stolon-proxy --example fixed-forward)
    PROXY_CMD="$REPO/target/release/examples/fixed-forward --listen {listen} --to {to} --threads $PROXY_THREADS"
fi

echo "== starting PostgreSQL on 127.0.0.1:$PG_PORT (data in $WORK)"
if [[ $(id -u) -eq 0 ]]; then chown postgres: "$WORK"; fi
chmod 0755 "$WORK"
as_pg "$PG_BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-sync >"$WORK/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -5 "$WORK/initdb.log")"
cat >>"$WORK/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = $((BENCH_CLIENTS + 20))
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
as_pg "${PIN_DB[@]}" "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w -t 60 start >/dev/null ||
    die "PostgreSQL did not start: $(tail -5 "$WORK/pg.log")"
PG_STARTED=1

echo "== pgbench -i -s $BENCH_SCALE"
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -s "$BENCH_SCALE" -q postgres \
    >"$WORK/init.log" 2>&1 || die "pgbench -i failed: $(tail -5 "$WORK/init.log")"

etcdctl() { ETCDCTL_API=3 "$ETCDCTL_BIN" --endpoints "$ENDPOINT" "$@"; }

if [[ $BENCH_PROXY == stolon ]]; then
    echo "== starting etcd on $ENDPOINT"
    "${PIN_PROXY[@]}" "$ETCD_BIN" --name bench --data-dir "$WORK/etcd" \
        --listen-client-urls "$ENDPOINT" --advertise-client-urls "$ENDPOINT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER_PORT" >"$WORK/etcd.log" 2>&1 &
    ETCD_PID=$!
    wait_port "$ETCD_PORT" || die "etcd did not start: $(tail -5 "$WORK/etcd.log")"
    CD_KEY=stolon/cluster/bench/clusterdata
    # Clusterdata naming PostgreSQL as master, no proxy enabled yet: the proxy reads it and
    # publishes its ProxyInfo, which tells us its random UID.
    "$REPO/target/release/examples/bench-clusterdata" --master "127.0.0.1:$PG_PORT" >"$WORK/cd.json"
    etcdctl put "$CD_KEY" "$(cat "$WORK/cd.json")" >/dev/null || die "cannot write clusterdata to etcd"
fi

cmd=${PROXY_CMD//\{listen\}/127.0.0.1:$PROXY_PORT}
cmd=${cmd//\{to\}/127.0.0.1:$PG_PORT}
cmd=${cmd//\{port\}/$PROXY_PORT}
echo "== starting the proxy: $cmd"
# shellcheck disable=SC2086 # the command is split into words on purpose
"${PIN_PROXY[@]}" $cmd >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
wait_port "$PROXY_PORT" || die "the proxy did not listen on $PROXY_PORT: $(tail -5 "$WORK/proxy.log")"

if [[ $BENCH_PROXY == stolon ]]; then
    uid=""
    for ((i = 0; i < 100; i++)); do
        uid=$(etcdctl get --prefix --keys-only stolon/cluster/bench/proxies/info/ | sed -n 's|.*/||p' | head -1)
        [[ -z $uid ]] || break
        sleep 0.1
    done
    [[ -n $uid ]] || die "stolon-proxy published no ProxyInfo: $(tail -5 "$WORK/proxy.log")"
    echo "== enabling proxy $uid"
    "$REPO/target/release/examples/bench-clusterdata" --master "127.0.0.1:$PG_PORT" --enable "$uid" >"$WORK/cd.json"
    etcdctl put "$CD_KEY" "$(cat "$WORK/cd.json")" >/dev/null || die "cannot write clusterdata to etcd"
    routed=0
    for ((i = 0; i < 100; i++)); do
        if "$PG_BIN/psql" -h 127.0.0.1 -p "$PROXY_PORT" -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
            routed=1
            break
        fi
        sleep 0.1
    done
    ((routed)) || die "stolon-proxy does not route to PostgreSQL: $(tail -5 "$WORK/proxy.log")"
fi

CLK_TCK=$(getconf CLK_TCK)
# CPU time (user + system, in clock ticks) used so far by process $1 and its threads.
proc_cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
# System (kernel) part of it.
proc_sys_ticks() {
    awk '{ print $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# run_pgbench PORT LABEL: prints "tps latency_ms"
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

((BENCH_PIN == 0)) || echo "== pinned: PostgreSQL and pgbench on ${PIN_DB[*]:2}, the proxy on ${PIN_PROXY[*]:2}"
echo "== pgbench -S -M $BENCH_PROTOCOL -c $BENCH_CLIENTS -j $BENCH_JOBS -T $BENCH_SECONDS, $BENCH_ROUNDS round(s)"
direct_tps=0 direct_lat=0 proxy_tps=0 proxy_lat=0 proxy_cpu=0 proxy_txns=0
for ((r = 1; r <= BENCH_ROUNDS; r++)); do
    # Alternate the order so warm-up and drift do not favour one side.
    if ((r % 2)); then order="direct proxy"; else order="proxy direct"; fi
    for side in $order; do
        if [[ $side == direct ]]; then port=$PG_PORT; else port=$PROXY_PORT; fi
        cpu0=$(proc_cpu_ticks "$PROXY_PID")
        sys0=$(proc_sys_ticks "$PROXY_PID")
        read -r tps lat txns < <(run_pgbench "$port" "$side-$r")
        cpu1=$(proc_cpu_ticks "$PROXY_PID")
        sys1=$(proc_sys_ticks "$PROXY_PID")
        cpu=$(python3 -c "print(($cpu1 - $cpu0) / $CLK_TCK)")
        sys=$(python3 -c "print(($sys1 - $sys0) / $CLK_TCK)")
        printf '   round %d %-6s tps %10.1f  latency %.3f ms  proxy cpu %.2f s (kernel %.2f s)\n' \
            "$r" "$side" "$tps" "$lat" "$cpu" "$sys"
        if [[ $side == proxy ]]; then
            proxy_cpu=$(python3 -c "print($proxy_cpu + $cpu)")
            proxy_txns=$((proxy_txns + txns))
        fi
        if [[ $side == direct ]]; then
            direct_tps=$(python3 -c "print($direct_tps + $tps)")
            direct_lat=$(python3 -c "print($direct_lat + $lat)")
        else
            proxy_tps=$(python3 -c "print($proxy_tps + $tps)")
            proxy_lat=$(python3 -c "print($proxy_lat + $lat)")
        fi
    done
done

python3 - "$direct_tps" "$direct_lat" "$proxy_tps" "$proxy_lat" "$BENCH_ROUNDS" "$proxy_cpu" "$proxy_txns" <<'EOF'
import sys
dt, dl, pt, pl, n, cpu, txns = (float(x) for x in sys.argv[1:])
dt, dl, pt, pl = dt / n, dl / n, pt / n, pl / n
print(f"TPS direct:        {dt:.1f}")
print(f"TPS via proxy:     {pt:.1f}")
print(f"ratio proxy/direct: {pt / dt:.3f}")
print(f"latency direct:    {dl * 1000:.1f} us/query")
print(f"latency via proxy: {pl * 1000:.1f} us/query")
print(f"added latency:     {(pl - dl) * 1000:.1f} us/query")
print(f"proxy CPU:         {cpu * 1e6 / max(txns, 1):.1f} us/query (user+system)")
EOF
