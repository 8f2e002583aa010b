#!/usr/bin/env bash
# Runs a fault campaign on the multi-host harness (crates/stolon-net): three network namespaces,
# each with an etcd member, a keeper and its PostgreSQL, a sentinel and a proxy; clients in the
# root namespace. Each cycle injects one fault (the eight faults in turn), heals it, waits for the
# cluster to converge and checks every acknowledged write. Prints a table row per cycle, a
# per-fault summary and one SUMMARY line.
#
#   scripts/fault-campaign.sh [--cycles N] [--async]
#
# Needs root. Everything it makes (namespaces, links, rules, processes) is removed at the end,
# and leftovers of a killed run are removed by the next one.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo build --workspace --bins --all-features
exec target/debug/fault-campaign "$@"
