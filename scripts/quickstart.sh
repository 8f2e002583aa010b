#!/usr/bin/env bash
# Quick start: a local stolon-rs cluster on loopback (one etcd, two sentinels, three keepers, one
# proxy), all state under one directory.
#
#   scripts/quickstart.sh          set up, build, start, wait for a primary with two standbys
#   scripts/quickstart.sh status   stolonctl status
#   scripts/quickstart.sh stop     stop everything and remove the state directory
#
# Idempotent: running it again while the cluster runs only prints the status. Environment:
#   STOLON_QUICKSTART_DIR  state directory (default /tmp/stolon-quickstart)
#   STOLON_QUICKSTART_PORT base port (default 25430: proxy 25430, keepers 25431-25433, keepers'
#                          metrics and health checks 25441-25443, etcd 25479/25480)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE=${STOLON_QUICKSTART_DIR:-/tmp/stolon-quickstart}
BASE=${STOLON_QUICKSTART_PORT:-25430}
CLUSTER=stolon-local
PROXY_PORT=$BASE
ETCD_CLIENT=$((BASE + 49))
ETCD_PEER=$((BASE + 50))
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
ENDPOINTS="http://127.0.0.1:$ETCD_CLIENT"
COMMON=(--cluster-name "$CLUSTER" --store-backend etcdv3 --store-endpoints "$ENDPOINTS")

# PostgreSQL refuses to run as root: when we are root, keepers run as the `postgres` OS user.
if [ "$(id -u)" -eq 0 ]; then
  RUN_AS=(setpriv --reuid=postgres --regid=postgres --init-groups)
  PG_USER=postgres
else
  RUN_AS=()
  PG_USER=$(id -un)
fi

ctl() { "$STATE/bin/stolonctl" "${COMMON[@]}" "$@"; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_all() {
  [ -d "$STATE" ] || { echo "nothing to stop ($STATE does not exist)"; return 0; }
  for f in "$STATE"/run/proxy.pid "$STATE"/run/sentinel*.pid "$STATE"/run/keeper*.pid; do
    [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true
  done
  for _ in $(seq 1 100); do
    busy=0
    for f in "$STATE"/run/*.pid; do [ -f "$f" ] && alive "$f" && [ "$(basename "$f")" != etcd.pid ] && busy=1; done
    [ $busy -eq 0 ] && break
    sleep 0.1
  done
  for f in "$STATE"/run/*.pid; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null || true; done
  # postgres instances orphaned by a killed keeper
  for d in "$STATE"/keeper*/postgres; do
    [ -f "$d/postmaster.pid" ] && kill -QUIT "$(head -1 "$d/postmaster.pid")" 2>/dev/null || true
  done
  rm -rf "$STATE"
  echo "stopped and removed $STATE"
}

start_bg() { # name, command...
  local name=$1; shift
  nohup "$@" >"$STATE/log/$name.log" 2>&1 &
  echo $! >"$STATE/run/$name.pid"
}

case "${1:-start}" in
  stop) stop_all; exit 0 ;;
  status) ctl status; exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|status|stop]" >&2; exit 1 ;;
esac

if alive "$STATE/run/etcd.pid" && alive "$STATE/run/proxy.pid"; then
  echo "the local cluster is already running (state in $STATE)"
  ctl status
  exit 0
fi
if [ -d "$STATE" ]; then
  echo "found a stopped or partial cluster in $STATE: removing it first"
  stop_all
fi

bash scripts/install-deps.sh
echo "building release binaries (a first build takes several minutes; cargo shows its progress)..."
cargo build --release --bin stolon-keeper --bin stolon-sentinel --bin stolon-proxy --bin stolonctl

mkdir -p "$STATE"/{bin,log,run,secrets}
chmod 755 "$STATE"
for b in stolon-keeper stolon-sentinel stolon-proxy stolonctl; do
  install -m 0755 "target/release/$b" "$STATE/bin/$b"
done
# Passwords live in files only (never in arguments or logs).
head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/secrets/su-password"
head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/secrets/repl-password"
# Failsafe mode's shared secret (docs/failsafe.md): keepers and the proxy read it from this file.
head -c 32 /dev/urandom | base64 | tr -d '/+=' >"$STATE/secrets/failsafe"
chmod 600 "$STATE"/secrets/*
printf '*:*:*:stolon:%s\n' "$(cat "$STATE/secrets/su-password")" >"$STATE/secrets/pgpass"
chmod 600 "$STATE/secrets/pgpass"
chown -R "$PG_USER" "$STATE/secrets" 2>/dev/null || true

echo "starting etcd on 127.0.0.1:$ETCD_CLIENT"
start_bg etcd etcd --name local --data-dir "$STATE/etcd" \
  --listen-client-urls "$ENDPOINTS" --advertise-client-urls "$ENDPOINTS" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "local=http://127.0.0.1:$ETCD_PEER"
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done

# Failsafe mode on: the proxy keeps serving through an etcd outage while every keeper can reach
# the master's (docs/failsafe.md); it needs proxyTimeout <= failInterval.
echo '{"initMode":"new","sleepInterval":"2s","failInterval":"5s","proxyCheckInterval":"2s","proxyTimeout":"5s","convergenceTimeout":"30s","usePgrewind":true,"failsafeMode":true}' >"$STATE/cluster-spec.json"
ctl init -y -f "$STATE/cluster-spec.json"

for i in 1 2; do
  start_bg "sentinel$i" "$STATE/bin/stolon-sentinel" "${COMMON[@]}"
done
for i in 0 1 2; do
  mkdir -p "$STATE/keeper$i"
  chown "$PG_USER" "$STATE/keeper$i" 2>/dev/null || true
  start_bg "keeper$i" "${RUN_AS[@]}" env HOME="$STATE/keeper$i" "$STATE/bin/stolon-keeper" "${COMMON[@]}" \
    --uid "keeper$i" --data-dir "$STATE/keeper$i" \
    --pg-listen-address 127.0.0.1 --pg-port $((BASE + 1 + i)) --pg-bin-path "$PG_BIN" \
    --metrics-listen-address "127.0.0.1:$((BASE + 11 + i))" \
    --pg-su-username stolon --pg-su-passwordfile "$STATE/secrets/su-password" \
    --pg-repl-username repluser --pg-repl-passwordfile "$STATE/secrets/repl-password" \
    --failsafe-secret-file "$STATE/secrets/failsafe"
done
start_bg proxy "$STATE/bin/stolon-proxy" "${COMMON[@]}" --listen-address 127.0.0.1 --port "$PROXY_PORT" \
  --failsafe-secret-file "$STATE/secrets/failsafe"

echo "waiting for a primary with two streaming standbys (up to 180 s)..."
ok=0
for _ in $(seq 1 180); do
  n=$(PGPASSFILE="$STATE/secrets/pgpass" PGCONNECT_TIMEOUT=2 psql -h 127.0.0.1 -p "$PROXY_PORT" -U stolon -d postgres -Atc \
      "select count(*) from pg_stat_replication where state = 'streaming'" 2>/dev/null || true)
  if [ "$n" = "2" ]; then ok=1; break; fi
  sleep 1
done
if [ $ok -ne 1 ]; then
  echo "the cluster did not become ready in time; logs are in $STATE/log" >&2
  ctl status >&2 || true
  exit 1
fi

ctl status
cat <<MSG

stolon-rs is running (state and logs in $STATE).
Connect through the proxy:

  PGPASSFILE=$STATE/secrets/pgpass psql -h 127.0.0.1 -p $PROXY_PORT -U stolon postgres

Health checks (see README):  curl http://127.0.0.1:$((BASE + 11))/primary   (keepers 0-2: ports $((BASE + 11))-$((BASE + 13)))
Cluster status:  $0 status
Stop and clean:  $0 stop
MSG
