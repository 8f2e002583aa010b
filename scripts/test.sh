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

echo "== multi-host fault campaign"
# crates/stolon-net: three network namespaces running etcd, PostgreSQL and the four binaries,
# each of the eight faults once. It is #[ignore]d in the run above and runs here alone, so its
# timings do not compete with the other integration tests for the two cores.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p stolon-net --all-features --profile ci --run-ignored only --no-capture
else
  cargo test -p stolon-net --all-features -- --ignored --nocapture
fi
