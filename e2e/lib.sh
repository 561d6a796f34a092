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
