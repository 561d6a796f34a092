#!/usr/bin/env bash
# Runs the e2e tests. With E2E_KUBECONFIG set, against that cluster; otherwise against a
# local control plane started here (on its own ports and state directory, so a running
# `make demo` is left alone) and stopped when the tests end, pass or fail.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
use_cluster /tmp/mail-incident-operator-e2e-test 47443
cd "$here/.."
cargo test --locked --test e2e -- --test-threads "${E2E_THREADS:-4}" "$@"
