# Shared helpers for the e2e shell scripts. Sourced, not executed.
set -euo pipefail

E2E_CACHE="${E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mail-incident-operator}"
KUBE_VERSION=1.20.2
KUBE_BIN="$E2E_CACHE/kubernetes-$KUBE_VERSION/bin"
# The pause (sandbox) image's source, kept from the tree by `build-kubernetes.sh --with-node`.
KUBE_PAUSE_SRC="$E2E_CACHE/kubernetes-$KUBE_VERSION/src/build/pause/linux/pause.c"

log() { printf '[e2e] %s\n' "$*" >&2; }
die() { printf '[e2e] error: %s\n' "$*" >&2; exit 1; }

# Run as root when we are root, else through sudo: apt needs it.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The world of $E2E_STATE and $E2E_PORT_BASE (as cluster.sh and node.sh read them): its
# state directory, port base, API server port and admin kubeconfig.
world_settings() {
  state="${E2E_STATE:-/tmp/mail-incident-operator-e2e}"
  port_base="${E2E_PORT_BASE:-46443}"
  api_port="$port_base"
  kubeconfig="$state/admin.kubeconfig"
}

# Daemons of a world: each logs to $daemon_dir/NAME.log and has its pid in NAME.pid
# ($daemon_dir is set by the script that sources this file).
startup_timeout=60

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_daemon() { # name, command...
  local name=$1; shift
  "$@" >>"$daemon_dir/$name.log" 2>&1 &
  echo $! >"$daemon_dir/$name.pid"
}

wait_for() { # what, command...
  local what=$1; shift
  local deadline=$((SECONDS + startup_timeout))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      # A Go daemon that died ends its log with a goroutine dump: its klog errors and
      # fatals (E/F lines) say why, so they come first.
      for f in "$daemon_dir"/*.log; do
        echo "--- $f" >&2
        grep -E '^[EF][0-9]{4} ' "$f" | grep -v 'nodeIP can.t be loopback' | tail -n 15 >&2 || true
        tail -n 10 "$f" >&2
      done
      die "$what did not come up within ${startup_timeout}s"
    fi
    sleep 0.3
  done
}

# Whether process $1 runs. One that exited but is not reaped yet counts as gone: a daemon
# outlives the script that started it, and this machine's pid 1 reaps orphans late.
alive() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

stop_daemon() { # name [grace in tenths of a second, default 50]: SIGTERM, then SIGKILL
  local pidfile="$daemon_dir/$1.pid"
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq "${2:-50}"); do alive "$pid" || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

running() { # name
  [ -f "$daemon_dir/$1.pid" ] && alive "$(cat "$daemon_dir/$1.pid")"
}

# The node's pod network for a port base ($1): a bridge and a /24 of 10.0.0.0/8, both
# derived from the port base so that worlds on different bases never share them. The
# gateway is the host's address on the bridge; the API server's certificate names it
# (cluster.sh) and e2e/node.sh forwards it to the API server on loopback.
node_net() {
  NODE_BRIDGE="mio$1"
  NODE_SUBNET="10.$(($1 >> 8)).$(($1 & 255)).0/24"
  NODE_GATEWAY="10.$(($1 >> 8)).$(($1 & 255)).1"
}

# buildah on an image store of the e2e world's own under $E2E_CACHE (vfs, so any file
# system does; never /var/lib/containers), chroot isolation (no container engine here).
# Its network config, short-name aliases and temporary files go there too, else it creates
# /etc/cni/net.d/cni.lock and /var/cache/containers; only containers/image's blob info
# cache (/var/lib/containers/cache) has no knob.
buildah_e2e() {
  local b="$E2E_CACHE/buildah"
  mkdir -p "$b/tmp"
  if [ ! -f "$b/containers.conf" ]; then
    printf '[network]\nnetwork_backend = "cni"\nnetwork_config_dir = "%s/cni"\n' "$b" >"$b/containers.conf"
  fi
  CONTAINERS_CONF="$b/containers.conf" TMPDIR="$b/tmp" BUILDAH_ISOLATION=chroot \
    buildah --root "$b/root" --runroot "$b/run" --storage-driver vfs \
    --short-name-alias-conf "$b/short-name-aliases.conf" "$@"
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
