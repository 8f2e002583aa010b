#!/usr/bin/env bash
# Store-write benchmark: the quick-start cluster (3 keepers with real PostgreSQL, 2 sentinels,
# 1 proxy, spec sleepInterval 2s) of the binaries built from this checkout, on loopback, first on
# a real etcd, then on the fake Kubernetes API server (`fake-apiserver`, the in-test one as a
# process). Once the cluster is up, it counts store writes per component for IDLE seconds at idle
# and for LOAD seconds while pgbench writes through the proxy, and prints writes per sleepInterval
# (2 s) per component beside Stolon's rate.
#
#   bench/store-writes.sh                        both backends, 60 s idle + 60 s load each (~8 min)
#   IDLE=20 LOAD=20 bench/store-writes.sh        shorter windows
#   BACKENDS=etcd bench/store-writes.sh          one backend (etcd, kubernetes)
#   LOAD=0 bench/store-writes.sh                 idle windows only
#   SETTLE=60 bench/store-writes.sh              wait longer before the idle window (default 30 s)
#   KEEP_LOGS=DIR bench/store-writes.sh          copy the components' logs (and on etcd the watched
#                                                events) to DIR at exit
#
# etcd: every event of `etcdctl watch --prefix` on the cluster's keys, by key (clusterdata and
# sentinels/info and sentinel-leader: sentinel; keepers/info: keeper; proxies/info: proxy), plus
# the store revisions. Kubernetes: every write request the API server served, by object and
# annotation (clusterdata and the leader record on the ConfigMap, pod status annotations by pod,
# Events). Started as root, keepers run as the `postgres` OS user. Everything is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${IDLE:-60}
LOAD=${LOAD:-60}
SETTLE=${SETTLE:-30}
BACKENDS=${BACKENDS:-etcd,kubernetes}
BASE=${BASE:-26430}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
CLUSTER=bench
NS=bench
SLEEP=2

[ -x /usr/bin/etcd ] || bash scripts/install-deps.sh
echo "building binaries (debug profile)..."
cargo build --quiet -p stolon-keeper -p stolon-sentinel -p stolon-proxy -p stolonctl --bins
cargo build --quiet -p stolon-kube --features testing --bin fake-apiserver

STATE=$(mktemp -d /tmp/stolon-store-writes.XXXXXX)
chmod 755 "$STATE"
mkdir -p "$STATE"/{bin,log,run,secrets}
for b in stolon-keeper stolon-sentinel stolon-proxy stolonctl fake-apiserver; do
  install -m 0755 "target/debug/$b" "$STATE/bin/$b"
done
if [ "$(id -u)" -eq 0 ]; then
  RUN_AS=(setpriv --reuid=postgres --regid=postgres --init-groups)
  PG_USER=postgres
else
  RUN_AS=()
  PG_USER=$(id -un)
fi
head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/secrets/su-password"
head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/secrets/repl-password"
chmod 600 "$STATE"/secrets/*
printf '*:*:*:stolon:%s\n' "$(cat "$STATE/secrets/su-password")" >"$STATE/secrets/pgpass"
chmod 600 "$STATE/secrets/pgpass"
chown -R "$PG_USER" "$STATE/secrets" 2>/dev/null || true
export PGPASSFILE="$STATE/secrets/pgpass"
echo '{"initMode":"new","sleepInterval":"2s","failInterval":"5s","convergenceTimeout":"30s","usePgrewind":true}' >"$STATE/spec.json"

start_bg() { # name, command...
  local name=$1; shift
  nohup "$@" >"$STATE/log/$name.log" 2>&1 &
  echo $! >"$STATE/run/$name.pid"
}

stop_all() { # stops what start_bg started, by pid, then orphaned postmasters
  local f
  for f in "$STATE"/run/*.pid; do [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true; done
  sleep 3
  for f in "$STATE"/run/*.pid; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; done
  for f in "$STATE"/*/keeper*/postgres/postmaster.pid; do
    [ -f "$f" ] && kill -QUIT "$(head -1 "$f")" 2>/dev/null || true
  done
}
cleanup() {
  stop_all
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp -r "$STATE/log/." "$KEEP_LOGS/" || true; fi
  rm -rf "$STATE"
}
trap cleanup EXIT

wait_ready() { # proxy port
  for _ in $(seq 1 240); do
    n=$(PGCONNECT_TIMEOUT=2 psql -h 127.0.0.1 -p "$1" -U stolon -d postgres -Atc \
        "select count(*) from pg_stat_replication where state = 'streaming'" 2>/dev/null || true)
    [ "$n" = "2" ] && return 0
    sleep 1
  done
  echo "the cluster did not become ready in 240 s; logs in $STATE/log" >&2
  return 1
}

start_cluster() { # dir, proxy port, env assignments for component N (function name)
  local dir=$1 port=$2 envfn=$3 i
  mkdir -p "$dir"
  chmod 755 "$dir"
  for i in 0 1; do
    start_bg "$(basename "$dir")-sentinel$i" env $($envfn sentinel "$i") "$STATE/bin/stolon-sentinel" "${COMMON[@]}"
  done
  for i in 0 1 2; do
    mkdir -p "$dir/keeper$i"
    chown "$PG_USER" "$dir/keeper$i" 2>/dev/null || true
    start_bg "$(basename "$dir")-keeper$i" "${RUN_AS[@]}" env HOME="$dir/keeper$i" $($envfn keeper "$i") \
      "$STATE/bin/stolon-keeper" "${COMMON[@]}" \
      --uid "keeper$i" --data-dir "$dir/keeper$i" \
      --pg-listen-address 127.0.0.1 --pg-port $((port + 1 + i)) --pg-bin-path "$PG_BIN" \
      --pg-su-username stolon --pg-su-passwordfile "$STATE/secrets/su-password" \
      --pg-repl-username repluser --pg-repl-passwordfile "$STATE/secrets/repl-password"
  done
  start_bg "$(basename "$dir")-proxy" env $($envfn proxy 0) "$STATE/bin/stolon-proxy" "${COMMON[@]}" \
    --listen-address 127.0.0.1 --port "$port"
  wait_ready "$port"
  psql -h 127.0.0.1 -p "$port" -U stolon -d postgres -qc "create database bench" >/dev/null
  "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U stolon -i -s 1 -q bench >/dev/null 2>&1
  # Let the initialisation's own writes pass before measuring: vacuum and analyse the new tables
  # now (autovacuum would do it during the idle window, moving WAL), checkpoint, and wait.
  psql -h 127.0.0.1 -p "$port" -U stolon -d bench -qc "vacuum analyze" -c "checkpoint" >/dev/null
  sleep "$SETTLE"
}

load() { # proxy port, seconds: pgbench through the proxy, bounded in time
  "$PG_BIN/pgbench" -h 127.0.0.1 -p "$1" -U stolon -c 4 -j 2 -T "$2" -n bench >"$STATE/log/pgbench.log" 2>&1 ||
    echo "pgbench failed (see above); counting anyway" >&2
  grep -E '^tps' "$STATE/log/pgbench.log" | head -1 >&2 || true
}

RESULTS="$STATE/results"
: >"$RESULTS"
report() { # backend, window, seconds, component, writes
  awk -v b="$1" -v w="$2" -v s="$3" -v c="$4" -v n="$5" -v sl="$SLEEP" \
    'BEGIN { printf "%-10s %-5s %-22s %6d %8.2f\n", b, w, c, n, n / (s / sl) }' >>"$RESULTS"
}

# ---- etcd ----
etcd_env() { :; }
run_etcd() {
  local dir="$STATE/etcd-cluster" port=$BASE client=$((BASE + 49)) peer=$((BASE + 50))
  local ep="http://127.0.0.1:$client"
  COMMON=(--cluster-name "$CLUSTER" --store-backend etcdv3 --store-endpoints "$ep")
  echo "etcd: starting etcd and the cluster..."
  start_bg etcd etcd --name bench --data-dir "$STATE/etcd-data" \
    --listen-client-urls "$ep" --advertise-client-urls "$ep" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "bench=http://127.0.0.1:$peer"
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$ep" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$STATE/bin/stolonctl" "${COMMON[@]}" init -y -f "$STATE/spec.json" >/dev/null
  start_cluster "$dir" "$port" etcd_env
  local prefix
  prefix=$(ETCDCTL_API=3 etcdctl --endpoints "$ep" get --prefix "" --keys-only | grep -m1 '/clusterdata$' | sed 's/clusterdata$//')
  for window in idle load; do
    local secs=$IDLE
    [ "$window" = load ] && secs=$LOAD
    [ "$secs" -gt 0 ] || continue
    local rev0 rev1
    rev0=$(ETCDCTL_API=3 etcdctl --endpoints "$ep" endpoint status -w json | grep -o '"revision":[0-9]*' | cut -d: -f2)
    ETCDCTL_API=3 timeout "$secs" etcdctl --endpoints "$ep" watch --prefix "$prefix" >"$STATE/watch-$window" 2>/dev/null &
    local w=$!
    if [ "$window" = load ]; then load "$port" "$secs"; fi
    wait "$w" || true
    rev1=$(ETCDCTL_API=3 etcdctl --endpoints "$ep" endpoint status -w json | grep -o '"revision":[0-9]*' | cut -d: -f2)
    # Event lines: PUT|DELETE, then the key (then the value for PUT).
    awk '$0 == "PUT" || $0 == "DELETE" { getline k; print k }' "$STATE/watch-$window" >"$STATE/keys-$window"
    cp "$STATE/watch-$window" "$STATE/log/etcd-watch-$window" 2>/dev/null || true
    count() { grep -c -- "$1" "$STATE/keys-$window" || true; }
    report etcd "$window" "$secs" "sentinel clusterdata" "$(count '/clusterdata$')"
    report etcd "$window" "$secs" "sentinels info (2)" "$(count '/sentinels/info/')"
    report etcd "$window" "$secs" "sentinel election" "$(count '/sentinel-leader/')"
    report etcd "$window" "$secs" "keepers info (3)" "$(count '/keepers/info/')"
    report etcd "$window" "$secs" "proxy info (1)" "$(count '/proxies/info/')"
    report etcd "$window" "$secs" "all (store revisions)" "$((rev1 - rev0))"
  done
  stop_all
}

# ---- Kubernetes (fake API server) ----
kube_env() { echo "KUBECONFIG=$STATE/kubeconfig POD_NAME=$1-$2"; }
run_kube() {
  local dir="$STATE/kube-cluster" port=$((BASE + 20)) api=$((BASE + 48))
  COMMON=(--cluster-name "$CLUSTER" --store-backend kubernetes --kube-resource-kind configmap)
  echo "kubernetes: starting the fake API server and the cluster..."
  start_bg apiserver "$STATE/bin/fake-apiserver" "$api" "$NS" "$CLUSTER" "$STATE/kube-counts" \
    sentinel-0=stolon-sentinel sentinel-1=stolon-sentinel keeper-0=stolon-keeper \
    keeper-1=stolon-keeper keeper-2=stolon-keeper proxy-0=stolon-proxy
  cat >"$STATE/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://127.0.0.1:$api
users:
- name: fake
  user: {}
contexts:
- name: bench
  context:
    cluster: fake
    user: fake
    namespace: $NS
current-context: bench
KC
  chmod 644 "$STATE/kubeconfig"
  for _ in $(seq 1 100); do [ -s "$STATE/kube-counts" ] && break; sleep 0.1; done
  KUBECONFIG="$STATE/kubeconfig" "$STATE/bin/stolonctl" "${COMMON[@]}" init -y -f "$STATE/spec.json" >/dev/null
  start_cluster "$dir" "$port" kube_env
  for window in idle load; do
    local secs=$IDLE
    [ "$window" = load ] && secs=$LOAD
    [ "$secs" -gt 0 ] || continue
    cp "$STATE/kube-counts" "$STATE/kc0"
    if [ "$window" = load ]; then load "$port" "$secs"; else sleep "$secs"; fi
    sleep 0.6
    cp "$STATE/kube-counts" "$STATE/kc1"
    # Writes in the window for lines matching a pattern.
    delta() {
      awk -v pat="$1" 'NR == FNR { a[$1" "$2" "$3" "$4] = $5; next }
        { k = $1" "$2" "$3" "$4; if (k ~ pat) s += $5 - a[k] } END { print s + 0 }' "$STATE/kc0" "$STATE/kc1"
    }
    report kubernetes "$window" "$secs" "sentinel clusterdata" "$(delta 'configmaps .* stolon-clusterdata')"
    report kubernetes "$window" "$secs" "sentinels info (2)" "$(delta 'pods sentinel-')"
    report kubernetes "$window" "$secs" "sentinel election" "$(delta 'configmaps .*control-plane')"
    report kubernetes "$window" "$secs" "sentinel events" "$(delta 'POST events')"
    report kubernetes "$window" "$secs" "keepers info (3)" "$(delta 'pods keeper-')"
    report kubernetes "$window" "$secs" "proxy info (1)" "$(delta 'pods proxy-')"
    report kubernetes "$window" "$secs" "all writes" "$(delta '.')"
  done
  stop_all
}

IFS=, read -r -a WANT <<<"$BACKENDS"
for b in "${WANT[@]}"; do
  case "$b" in
    etcd) run_etcd ;;
    kubernetes) run_kube ;;
    *) echo "unknown backend $b (etcd, kubernetes)" >&2; exit 2 ;;
  esac
done

echo
echo "store writes per sleepInterval (2 s); idle ${IDLE} s, load ${LOAD} s (pgbench -c 4 through the proxy)"
printf '%-10s %-5s %-22s %6s %8s\n' backend phase component writes per-2s
cat "$RESULTS"
cat <<'STOLON'

Stolon's rate, from its source loops (sleepInterval 2 s, proxyCheckInterval 5 s; docs/benchmarks.md):
  sentinel clusterdata  1    per sleepInterval (the leader writes clusterdata on every check)
  sentinels info (2)    2    per sleepInterval (each sentinel once per check)
  keepers info (3)      3    per sleepInterval (each keeper once per sleepInterval)
  proxy info (1)        0.4  per sleepInterval (once per proxyCheckInterval, 5 s)
  kubernetes election   1    per sleepInterval (client-go renews the ConfigMap lock every RetryPeriod, 2 s)
STOLON
