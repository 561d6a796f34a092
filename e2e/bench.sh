#!/usr/bin/env bash
# `make bench`: the planning benchmark (the controller's decision for a fleet under
# scoped incidents, no cluster), the fleet benchmark and the RCPT latency benchmark (real
# Postfix and Exim with their agents) against a local control plane (its own ports and state, stopped
# at the end), or E2E_KUBECONFIG's cluster. Sizes: BENCH_SIZES (default "10 100 1000
# 5000"); latency rounds: BENCH_LATENCY_ROUNDS (default 20); BENCH_LATENCY=0 runs the
# fleet benchmark alone. Arguments go to the fleet benchmark.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
use_cluster /tmp/mail-incident-operator-bench 48443
cd "$here/.."
cargo bench --locked --bench planning
cargo bench --locked --bench fleet -- "$@"
if [ "${BENCH_LATENCY:-1}" != 0 ]; then
  cargo bench --locked --bench latency
fi
if [ "${BENCH_QUEUE_SCAN:-1}" != 0 ]; then
  cargo bench --locked --bench queue_scan
fi
