#!/usr/bin/env bash
# The whole test suite: installs what it needs, then format, lint, unit, simulation and integration
# tests. Integration tests start their own etcd and PostgreSQL on loopback (as the `postgres` OS user
# where PostgreSQL needs it), so nothing has to be running beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

bash scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings

if [ -x scripts/validate-k8s.sh ]; then
  echo "== kubernetes manifests and helm chart"
  bash scripts/validate-k8s.sh
fi

echo "== tests"
# The end-to-end tests (crates/stolon-it) drive every binary of the workspace: build them all first,
# with the same features as the test build so the artifacts are shared.
cargo build --workspace --bins --all-features
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --profile ci --no-fail-fast
else
  cargo test --workspace --all-features --no-fail-fast
fi

# ---- container image and the container failover test --------------------------------------
# Builds the image from the Dockerfile on a Debian 12 base made here with debootstrap (there is
# no image registry), with the debug binaries built above (a release build costs minutes of the
# two cores; the story tested is the same), then fails a cluster of containers over. Needs the
# Docker engine: without it this step fails.
echo "== container image"
bash scripts/image.sh --binaries target/debug --tag stolon-rs:ci --etcd-tag stolon-rs-etcd:ci
echo "== container failover test"
export STOLON_IT_IMAGE=stolon-rs:ci STOLON_IT_ETCD_IMAGE=stolon-rs-etcd:ci
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p stolon-it --all-features --profile ci --test container --run-ignored only
else
  cargo test -p stolon-it --all-features --test container -- --ignored
fi

echo "== multi-host fault campaign"
# crates/stolon-net: three network namespaces running etcd, PostgreSQL and the four binaries,
# each of the eight faults once, then failsafe mode's campaign (docs/failsafe.md). It is #[ignore]d in the run above and runs here alone, so its
# timings do not compete with the other integration tests for the two cores.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p stolon-net --all-features --profile ci --run-ignored only --no-capture
else
  cargo test -p stolon-net --all-features -- --ignored --nocapture
fi
