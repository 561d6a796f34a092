#!/usr/bin/env bash
# `make bench`: the planning benchmark (the controller's decision for a fleet under
# scoped incidents, no cluster), the fleet benchmark and the RCPT latency benchmark (real
# Postfix and Exim with their agents) against a local control plane (its own ports and state, stopped
# at the end), or E2E_KUBECONFIG's cluster. Sizes: BENCH_SIZES (default "10 100 1000
# 5000"); latency rounds: BENCH_LATENCY_ROUNDS (default 20); BENCH_LATENCY=0 runs the
# fleet benchmark alone. Then the release benchmark (a large held queue released on real
# Postfix and Exim; BENCH_RELEASE_MESSAGES, default 20000; BENCH_RELEASE=0 skips it).
# Arguments go to the fleet benchmark.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
use_cluster /tmp/mail-incident-operator-bench 48443
cd "$here/.."
cargo bench --locked --bench planning
cargo bench --locked --bench fleet -- "$@"
if [ "${BENCH_LATENCY:-1}" != 0 ]; then
  cargo bench --locked --bench latency
fi
if [ "${BENCH_RELEASE:-1}" != 0 ]; then
  # The latency benchmark's world left the webhook reached by URL, which applying
  # deploy/ again cannot merge with its Service reference: the next world installs it afresh.
  "$E2E_KUBECTL" --kubeconfig "$E2E_KUBECONFIG" delete mutatingwebhookconfiguration \
    mail-incident-operator --ignore-not-found >/dev/null
  cargo bench --locked --bench release
fi
