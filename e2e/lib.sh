# Shared helpers for the e2e shell scripts. Sourced, not executed.
set -euo pipefail

E2E_CACHE="${E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mail-incident-operator}"
KUBE_VERSION=1.20.2
KUBE_BIN="$E2E_CACHE/kubernetes-$KUBE_VERSION/bin"

log() { printf '[e2e] %s\n' "$*" >&2; }
die() { printf '[e2e] error: %s\n' "$*" >&2; exit 1; }

# Run as root when we are root, else through sudo: apt needs it.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Points E2E_KUBECONFIG and E2E_KUBECTL at a cluster: E2E_KUBECONFIG's when set, else a
# local control plane on its own state directory and port base ($1, $2), stopped when the
# calling script exits.
use_cluster() {
  local here
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  "$here/build-kubernetes.sh"
  export E2E_KUBECTL="${E2E_KUBECTL:-$KUBE_BIN/kubectl}"
  if [ -z "${E2E_KUBECONFIG:-}" ]; then
    export E2E_STATE="${E2E_STATE:-$1}"
    export E2E_PORT_BASE="${E2E_PORT_BASE:-$2}"
    "$here/cluster.sh" down
    trap '"'"$here"'/cluster.sh" down' EXIT
    E2E_KUBECONFIG="$("$here/cluster.sh" up)"
    export E2E_KUBECONFIG
  fi
}
