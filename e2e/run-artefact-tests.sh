#!/usr/bin/env bash
# Tests what SREs' own tools read, each with that tool, no cluster needed: the Helm chart
# with Helm's engine (render, strict lint, values schema, and no drift from deploy/), the
# alert rules with promtool, the Grafana dashboard's structure, Argo CD's health and
# action scripts on Lua 5.1 with the libraries Argo opens, and the docs (every relative
# link and `make` target they name resolves; the multi-cluster manifests are valid). (The
# chart installed on a real node, and the dashboard's queries against a real Prometheus,
# are in `make e2e-node`.)
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
set -euo pipefail
# Installs the packages and the Python environment (rebuilt when e2e/requirements.txt
# changed, also on a machine that already has kubectl), then builds kubectl if missing.
"$here/install-deps.sh"
"$here/build-kubernetes.sh"
export E2E_KUBECTL="${E2E_KUBECTL:-$KUBE_BIN/kubectl}"
python="$E2E_CACHE/python/bin/python"
[ -x "$python" ] || die "$python not found: e2e/install-deps.sh creates it (apt-get install python3-venv)"
command -v lua5.1 >/dev/null || die "lua5.1 not found: apt-get install lua5.1"

for suite in chart dashboard argocd docs; do
  log "artefact tests: $suite"
  "$python" -m unittest discover -s "$here/$suite" -t "$here/$suite"
done
log "artefact tests: alert rules"
"$here/prometheus/test-rules.sh"
