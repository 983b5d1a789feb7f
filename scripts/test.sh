#!/usr/bin/env bash
# The test command: formatting, lints, then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
# The end-to-end tests start a Kubernetes API emulator that runs in its own Python environment.
# Without it they skip, except under CI=true, where they fail.
if ! scripts/kube-emulator-env.sh; then
  if [ "${CI:-}" = true ]; then exit 1; fi
  echo "warning: no Kubernetes API emulator environment; the end-to-end tests will skip" >&2
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
