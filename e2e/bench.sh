#!/usr/bin/env bash
# `make bench`: the fleet benchmark against a local control plane (its own ports and
# state, stopped at the end), or E2E_KUBECONFIG's cluster. Sizes: BENCH_SIZES (default
# "10 100 1000").
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

"$here/build-kubernetes.sh"
export E2E_KUBECTL="${E2E_KUBECTL:-$KUBE_BIN/kubectl}"
if [ -z "${E2E_KUBECONFIG:-}" ]; then
  export E2E_STATE="${E2E_STATE:-/tmp/mail-incident-operator-bench}"
  export E2E_PORT_BASE="${E2E_PORT_BASE:-48443}"
  "$here/cluster.sh" down
  trap '"$here/cluster.sh" down' EXIT
  E2E_KUBECONFIG="$("$here/cluster.sh" up)"
  export E2E_KUBECONFIG
fi
cd "$here/.."
cargo bench --locked --bench fleet -- "$@"
