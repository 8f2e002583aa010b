#!/usr/bin/env bash
# Switchover benchmark: a two-keeper stolon-rs cluster (real etcd, real PostgreSQL on loopback),
# synchronous replication off and on; a client writes through the proxy (a new connection per
# write) while `stolonctl switchover` moves the primary back and forth. Prints, per configuration
# (the default spec timings and `sleepInterval 1s`), the median and max write pause (last
# acknowledgement by the old primary to the first by the new one), refused connections, inserts
# that failed on an established connection, and acknowledged writes lost.
#
#   bench/switchover-bench.sh                     5 switchovers per configuration
#   RUNS=2 bench/switchover-bench.sh              shorter
#   CONFIGS=fast-async,fast-sync bench/...        only these (default-async default-sync fast-async fast-sync)
#
# Started as root, keepers run as the `postgres` OS user.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/etcd ] || bash scripts/install-deps.sh
echo "building release binaries..."
cargo build --release --quiet -p stolon-keeper -p stolon-sentinel -p stolon-proxy -p stolonctl -p stolon-it --bins
exec target/release/switchover-bench
