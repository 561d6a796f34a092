#!/usr/bin/env bash
# `make bench`: the planning benchmark (the controller's decision for a fleet under
# scoped incidents, no cluster), then against a local control plane (its own ports and
# state, stopped at the end) or E2E_KUBECONFIG's cluster: the fleet benchmark, the RCPT
# latency benchmark (real Postfix and Exim with their agents), the release benchmark (a
# large held queue released on real Postfix and Exim) and the queue-scan benchmark (a
# million queued messages in each MTA's spool format).
# Knobs: BENCH_SIZES (default "10 100 1000 5000"); BENCH_LATENCY_ROUNDS (default 20);
# BENCH_RELEASE_MESSAGES (default 20000); BENCH_SCAN_MESSAGES (default 1000000);
# BENCH_LATENCY=0, BENCH_RELEASE=0, BENCH_QUEUE_SCAN=0 skip one. Arguments go to the
# fleet benchmark.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
use_cluster /tmp/mail-incident-operator-bench 48443
cd "$here/.."

# Each benchmark's world installs deploy/ afresh; the one before left the webhook reached
# by URL (its operator ran in-process), which deploy/'s Service reference cannot merge
# with.
next_world() {
  "$E2E_KUBECTL" --kubeconfig "$E2E_KUBECONFIG" delete mutatingwebhookconfiguration \
    mail-incident-operator --ignore-not-found >/dev/null
}

cargo bench --locked --bench planning
cargo bench --locked --bench fleet -- "$@"
if [ "${BENCH_LATENCY:-1}" != 0 ]; then
  next_world
  cargo bench --locked --bench latency
fi
if [ "${BENCH_RELEASE:-1}" != 0 ]; then
  next_world
  # Exim's daemon runs its queue as often as Debian's default: see e2e/bench/release.rs.
  EXIM_QUEUE_INTERVAL="${EXIM_QUEUE_INTERVAL:-30m}" cargo bench --locked --bench release
fi
if [ "${BENCH_QUEUE_SCAN:-1}" != 0 ]; then
  next_world
  cargo bench --locked --bench queue_scan
fi
