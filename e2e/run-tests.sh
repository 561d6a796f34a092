#!/usr/bin/env bash
# Runs the e2e tests. With E2E_KUBECONFIG set, against that cluster; otherwise against a
# local control plane started here (on its own ports and state directory, so a running
# `make demo` is left alone) and stopped when the tests end, pass or fail.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

"$here/build-kubernetes.sh"
export E2E_KUBECTL="${E2E_KUBECTL:-$KUBE_BIN/kubectl}"

if [ -z "${E2E_KUBECONFIG:-}" ]; then
  export E2E_STATE="${E2E_STATE:-/tmp/mail-incident-operator-e2e-test}"
  export E2E_PORT_BASE="${E2E_PORT_BASE:-47443}"
  "$here/cluster.sh" down
  trap '"$here/cluster.sh" down' EXIT
  E2E_KUBECONFIG="$("$here/cluster.sh" up)"
  export E2E_KUBECONFIG
fi

cd "$here/.."
cargo test --locked --test e2e -- --test-threads "${E2E_THREADS:-4}" "$@"
