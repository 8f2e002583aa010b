#!/usr/bin/env bash
# Failover benchmark: a three-keeper stolon-rs cluster (real etcd, real PostgreSQL on loopback)
# with synchronous replication off and on; the primary's keeper and postgres are SIGKILLed
# together while a client writes through the proxy. Prints, per configuration (spec timings
# `sleepInterval 1s, failInterval 3s` and the defaults), the median and max time from the kill to
# the first successful write through the proxy, and acknowledged writes lost.
#
#   bench/failover-bench.sh                  5 runs per configuration (about 15 minutes)
#   RUNS=1 bench/failover-bench.sh           smoke run
#   CONFIGS=fast-async,fast-sync bench/...   only these (fast-async fast-sync default-async default-sync)
#
# Started as root, keepers run as the `postgres` OS user.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/etcd ] || bash scripts/install-deps.sh
echo "building release binaries..."
cargo build --release --quiet -p stolon-keeper -p stolon-sentinel -p stolon-proxy -p stolonctl -p stolon-it --bins
exec target/release/failover-bench
