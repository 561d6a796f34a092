#!/usr/bin/env bash
# Runs the real-node e2e tests (e2e/node/): a control plane with a real node of its own
# (kubelet, containerd, runc; on its own ports and state directory, so the simulated
# suite's world and a running `make demo` are left alone), the images built from the
# repository's Dockerfiles and imported into the node, the operator and the example MTAs
# as real pods. Everything is stopped when the tests end, pass or fail.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
export E2E_STATE=/tmp/mail-incident-operator-e2e-node E2E_PORT_BASE=42443
# Helm's engine renders the chart for the chart test (e2e/install-deps.sh creates it).
export E2E_PYTHON="$E2E_CACHE/python/bin/python"
"$here/cluster.sh" down
trap '"'"$here"'/cluster.sh" down' EXIT
archives="$("$here/images.sh" build)"
E2E_KUBECONFIG="$("$here/cluster.sh" up --with-node)"
export E2E_KUBECONFIG
eval "$("$here/cluster.sh" env)"
eval "$("$here/node.sh" env)"
# shellcheck disable=SC2086 # one archive path per word
"$here/node.sh" import $archives
cd "$here/.."
# One node, one operator installation: the tests take turns.
cargo test --locked --test node -- --test-threads 1 "$@"
