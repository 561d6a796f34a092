#!/usr/bin/env bash
# A real node for the local control plane of the same state directory and port base
# (e2e/cluster.sh): containerd + runc, kubelet and kube-scheduler, all on this machine.
#
#   e2e/node.sh up            start it (the control plane must be up), wait until the node
#                             is Ready and schedulable; prints nothing on stdout
#   e2e/node.sh down          stop it and leave nothing behind (processes, mounts, bridge,
#                             cgroups, pod logs), then delete its state; idempotent
#   e2e/node.sh import TAR... import docker-archive tars into its containerd (k8s.io)
#   e2e/node.sh env           print `export` lines: E2E_NODE_API_HOST and E2E_NODE_API_PORT
#                             (the API server as pods off the host network reach it)
#
# Pods with `hostNetwork: true` share the host's loopback. Other pods get a network
# namespace of their own on bridge mio<port base>, subnet 10.<base / 256>.<base % 256>.0/24
# (CNI bridge + host-local); the host is .1 there, and socat forwards .1:<API port> to the
# API server on loopback (its certificate names .1). No masquerading, no route beyond the
# subnet: pods reach the host's .1 and each other, nothing else.
#
# State lives in $E2E_STATE/node (default /tmp/mail-incident-operator-e2e/node); ports come
# from $E2E_PORT_BASE (default 46443; cluster.sh takes +0..+2): +3 kubelet, +4 kubelet
# healthz. containerd listens on unix sockets only, kube-scheduler serves nothing.
# The sandbox image k8s.gcr.io/pause:3.2 is built once (gcc, buildah) into $E2E_CACHE.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

world_settings
kubelet_port=$((port_base + 3))
kubelet_healthz_port=$((port_base + 4))
node_state="$state/node"
daemon_dir="$node_state"
node_name=e2e-node
sock="$node_state/containerd.sock"
ctd="$node_state/containerd"
kubelet_root="$node_state/kubelet"
cni_conf_dir="$node_state/cni/net.d"
node_net "$port_base"
pause_image=k8s.gcr.io/pause:3.2
images="$E2E_CACHE/node-images"

kubectl() { "$KUBE_BIN/kubectl" --kubeconfig "$kubeconfig" "$@"; }
ctr_() { ctr --address "$sock" --namespace k8s.io "$@"; }
# The sandbox image, from the kubernetes tree's pause.c (no registry to pull it from), as a
# docker-archive (trap: an oci-archive imports nothing into containerd, it has no ref
# name); built once, cached under a key of its inputs; prints its path.
pause_tar() {
  local key tar
  key=$({ sha256sum <"$KUBE_PAUSE_SRC"; gcc --version | head -n1
          echo "gcc -Os -Wall -static -DVERSION=3.2; $pause_image; entrypoint /pause"; } \
        | sha256sum | cut -c1-16)
  tar="$images/pause-3.2-$key.tar"
  mkdir -p "$images"
  (
    flock 9 # two worlds coming up at once share the cache
    [ -s "$tar" ] && exit 0
    log "building the sandbox image $pause_image into $tar (once)"
    local tmp wc
    tmp=$(mktemp -d)
    gcc -Os -Wall -static -DVERSION=3.2 -o "$tmp/pause" "$KUBE_PAUSE_SRC"
    strip "$tmp/pause"
    wc=$(buildah_e2e from scratch)
    buildah_e2e copy -q "$wc" "$tmp/pause" /pause >/dev/null
    buildah_e2e config --entrypoint '["/pause"]' "$wc"
    buildah_e2e commit -q --rm "$wc" "$pause_image" >/dev/null
    rm -f "$tar.tmp"
    buildah_e2e push -q "$pause_image" "docker-archive:$tar.tmp:$pause_image"
    buildah_e2e rmi -f "$pause_image" >/dev/null
    mv "$tar.tmp" "$tar"
    rm -rf "$tmp"
  ) 9>"$images/.lock" >&2
  echo "$tar"
}

import() { # tar...
  running containerd || die "no node runs in $state (e2e/node.sh up)"
  local t
  for t in "$@"; do
    [ -s "$t" ] || die "$t: no such image archive"
    ctr_ images import "$t" >/dev/null || die "ctr images import $t failed"
    log "imported $t into the node's containerd"
  done
}

containerd_config() {
  local cfg="$node_state/containerd.toml"
  # Everything of containerd's under the state dir: root, state, socket, runc's state
  # (its default /run/containerd/runc is fixed, not derived from state), the CRI's netns
  # mounts (else /run/netns) and the "opt" plugin's dir (else /opt/containerd).
  containerd config default | sed \
    -e "s#^root = .*#root = \"$ctd/root\"#" \
    -e "s#^state = .*#state = \"$ctd/state\"#" \
    -e "s#^  address = \"/run/containerd/containerd.sock\"#  address = \"$sock\"#" \
    -e "s#^\( *\)netns_mounts_under_state_dir = .*#\1netns_mounts_under_state_dir = true#" \
    -e "s#^\( *\)sandbox_image = .*#\1sandbox_image = \"$pause_image\"#" \
    -e "s#^\( *\)SystemdCgroup = .*#\1SystemdCgroup = false#" \
    -e "s#^\( *\)restrict_oom_score_adj = .*#\1restrict_oom_score_adj = true#" \
    -e "s#^\( *\)bin_dir = .*#\1bin_dir = \"/usr/lib/cni\"#" \
    -e "s#^\( *\)conf_dir = .*#\1conf_dir = \"$cni_conf_dir\"#" \
    -e "s#^\( *\)Root = \"\"#\1Root = \"$ctd/runc\"#" \
    -e "s#^\( *\)path = \"/opt/containerd\"#\1path = \"$ctd/opt\"#" \
    >"$cfg"
  # Trap: without restrict_oom_score_adj every sandbox fails ("can't get final child's
  # PID from pipe"): runc may not set the -998 kubelet asks for. No systemd: cgroupfs.
  local want
  for want in "root = \"$ctd/root\"" "address = \"$sock\"" "netns_mounts_under_state_dir = true" \
    "sandbox_image = \"$pause_image\"" "restrict_oom_score_adj = true" "bin_dir = \"/usr/lib/cni\"" \
    "conf_dir = \"$cni_conf_dir\"" "Root = \"$ctd/runc\"" "path = \"$ctd/opt\""; do
    grep -qF "$want" "$cfg" || die "containerd's default config changed: could not set $want in $cfg"
  done
  echo "$cfg"
}

# The bridge and its gateway address exist before any pod (socat binds the address, the
# CNI bridge plugin then only attaches veths). The plugin's isGateway stays off: it would
# turn on the host's ip_forward, which nothing here needs.
bridge_up() {
  local other
  other=$(ip -4 -o addr show to "$NODE_SUBNET" | awk -v br="$NODE_BRIDGE" '$2 != br {print $2}')
  [ -z "$other" ] || die "$NODE_SUBNET is already on $other; set E2E_PORT_BASE to another base"
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || ip link add "$NODE_BRIDGE" type bridge
  ip addr replace "$NODE_GATEWAY/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  mkdir -p "$cni_conf_dir"
  # Trap: with no CNI config the node stays NotReady ("cni config uninitialized"), even
  # if every pod used hostNetwork. containerd's CRI adds the pods' loopback itself.
  cat >"$cni_conf_dir/10-$NODE_BRIDGE.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "$NODE_BRIDGE",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE_SUBNET", "gateway": "$NODE_GATEWAY"}]],
        "dataDir": "$node_state/cni/networks"
      }
    }
  ]
}
CNI
}

node_ready() {
  [ "$(kubectl get node "$node_name" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

up() {
  "$here/build-kubernetes.sh" --with-node
  "$here/install-deps.sh"
  # The node's cgroupfs set-up and its clean-up are for cgroup v1 (or hybrid) hosts, as
  # the machines it was made on; on a unified (v2-only) host kubelet 1.20 would need more.
  [ -d /sys/fs/cgroup/memory ] || die "this host has no cgroup v1 hierarchy (/sys/fs/cgroup/memory): the real node needs cgroup v1 or hybrid"
  [ -f "$state/kube-apiserver.pid" ] && alive "$(cat "$state/kube-apiserver.pid")" \
    || die "no control plane runs in $state: e2e/cluster.sh up first (same E2E_STATE, E2E_PORT_BASE)"
  if running kubelet; then
    log "node $node_name already running ($node_state)"
    return
  fi
  for p in "$kubelet_port" "$kubelet_healthz_port"; do
    port_in_use "$p" && die "port $p on 127.0.0.1 is taken; set E2E_PORT_BASE to another base"
  done
  # Leftovers of an earlier node of this state dir (a crash, a killed script) go first.
  if [ -d "$node_state" ]; then down; fi
  mkdir -p "$node_state" "$kubelet_root"
  local tar
  tar=$(pause_tar)

  bridge_up
  log "forwarding $NODE_GATEWAY:$api_port (the bridge) to the API server on 127.0.0.1:$api_port"
  # Own session: down kills socat's forked children (one per open connection) with it.
  start_daemon socat setsid socat "TCP-LISTEN:$api_port,bind=$NODE_GATEWAY,fork,reuseaddr" \
    "TCP:127.0.0.1:$api_port"
  wait_for "the API server through $NODE_GATEWAY:$api_port (is $NODE_GATEWAY in its certificate? restart the control plane)" \
    curl -fsS --cacert "$state/pki/ca.crt" "https://$NODE_GATEWAY:$api_port/readyz"

  log "starting containerd on $sock"
  start_daemon containerd containerd --config "$(containerd_config)"
  wait_for containerd ctr --address "$sock" version
  ctr_ images import "$tar" >/dev/null

  log "starting kubelet ($node_name, ports $kubelet_port and $kubelet_healthz_port)"
  # Loopback only, hence no authentication of callers and AlwaysAllow; no QoS cgroups, no
  # node allocatable, no eviction and no image GC: a test node, not a production one.
  cat >"$node_state/kubelet.yaml" <<KUBELET
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $kubelet_port
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
readOnlyPort: 0
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
evictionHard: {}
imageGCHighThresholdPercent: 100
# Else it adds KUBE-FIREWALL, KUBE-MARK-* and KUBE-POSTROUTING chains to the host's
# iptables, machine-wide and left behind (and re-adds them if removed while it runs).
makeIPTablesUtilChains: false
# Ready one second after registering, not ten; pods' status without client-side throttling.
nodeStatusUpdateFrequency: 1s
kubeAPIQPS: 50
kubeAPIBurst: 100
featureGates:
  # Else the device manager serves /var/lib/kubelet/device-plugins/kubelet.sock, a fixed
  # path shared by every kubelet of the machine.
  DevicePlugins: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
KUBELET
  # --containerd: cAdvisor's socket too, else it looks at the system-wide default.
  # --node-ip=127.0.0.1: "nodeIP can't be loopback address" every 10 s is harmless; the
  # node then has no address, and hostNetwork pods no podIP.
  start_daemon kubelet "$KUBE_BIN/kubelet" --config "$node_state/kubelet.yaml" \
    --container-runtime=remote --container-runtime-endpoint="unix://$sock" \
    --containerd="$sock" --volume-plugin-dir="$node_state/volume-plugins" \
    --hostname-override="$node_name" --node-ip=127.0.0.1 \
    --root-dir="$kubelet_root" --cert-dir="$node_state/pki" --kubeconfig="$kubeconfig"

  log "starting kube-scheduler"
  start_daemon kube-scheduler "$KUBE_BIN/kube-scheduler" --kubeconfig "$kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --port=0 --secure-port=0 --profiling=false

  wait_for "node $node_name Ready" node_ready
  # Trap: the node registers with node.kubernetes.io/not-ready:NoSchedule, and nothing
  # removes it (the controller manager runs without the node-lifecycle controller).
  kubectl taint node "$node_name" node.kubernetes.io/not-ready- >/dev/null 2>&1 || true
  running kube-scheduler || die "kube-scheduler exited: $node_state/kube-scheduler.log"
  log "node $node_name Ready ($node_state)"
}

# Every container and sandbox id this node's containerd knows, running or not, from the
# daemon when it answers and from its directories either way.
container_ids() {
  {
    ctr_ containers ls -q 2>/dev/null || true
    ls "$ctd/root/io.containerd.grpc.v1.cri/sandboxes" "$ctd/root/io.containerd.grpc.v1.cri/containers" \
      "$ctd/state/io.containerd.runtime.v2.task/k8s.io" 2>/dev/null || true
  } | { grep -E '^[0-9a-f]{64}$' || true; } | sort -u
}

# Pods this node ran: the kubelet's pod dirs, and what the API server (when it answers)
# still knows, events included: the kubelet removes a deleted pod's dir before its log
# dir (container GC, every minute).
pod_uids() {
  {
    ls "$kubelet_root/pods" 2>/dev/null || true
    if [ -f "$kubeconfig" ]; then
      kubectl get pods -A --request-timeout=5s --field-selector "spec.nodeName=$node_name" \
        -o jsonpath='{range .items[*]}{.metadata.uid}{"\n"}{end}' 2>/dev/null || true
      kubectl get events -A --request-timeout=5s --field-selector involvedObject.kind=Pod \
        -o jsonpath='{range .items[*]}{.involvedObject.uid}{"\n"}{end}' 2>/dev/null || true
    fi
  } | { grep -E '^[0-9a-f-]{36}$' || true; } | sort -u
}

# Unmounts everything mounted under $1, deepest first (the kubelet's root dir is bound
# onto itself, secrets and projected volumes are tmpfs in it, containerd has rootfs
# overlays, sandbox shm and netns mounts); lazily when a mount stays busy.
unmount_under() {
  local dir=$1 m round
  for round in 1 2 3 4 5; do
    mapfile -t mounts < <(findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0 "/", d) == 1' | sort -r)
    [ "${#mounts[@]}" -eq 0 ] && return 0
    for m in "${mounts[@]}"; do
      if [ "$round" -lt 3 ]; then umount "$m" 2>/dev/null || true; else umount -l "$m" 2>/dev/null || true; fi
    done
  done
  findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0 "/", d) == 1' | grep -q . \
    && die "still mounted under $dir: $(findmnt -rn -o TARGET | grep -F "$dir/" | tr '\n' ' ')"
  return 0
}

kill_pids() { # pids...: SIGKILL, then wait (5 s at most) until they are gone
  [ "$#" -gt 0 ] || return 0
  kill -9 "$@" 2>/dev/null || true
  local p left
  for _ in $(seq 50); do
    left=0
    for p in "$@"; do alive "$p" && left=1; done
    [ "$left" = 0 ] && return 0
    sleep 0.1
  done
}

any_alive() { # process name: whether one runs on this machine, any world's
  local p
  for p in $(pgrep -x "$1" || true); do alive "$p" && return 0; done
  return 1
}

down() {
  local ids uids id uid pids
  # Trap: the order that leaves nothing behind is kubelet (else it restarts what is
  # killed), the scheduler, tasks, containerd, then unmounting, then the state dir.
  stop_daemon kubelet
  stop_daemon kube-scheduler
  running containerd || ctr_() { return 1; } # no socket: no waiting for one either
  ids=$(container_ids)
  uids=$(pod_uids)

  # Tasks (pause sandboxes and app containers alike) and containers, through containerd:
  # deleting a task lets runc remove its cgroups and containerd unmount its rootfs and
  # end its shim.
  if running containerd; then
    for id in $(ctr_ tasks ls -q 2>/dev/null || true); do
      ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr_ containers ls -q 2>/dev/null || true); do
      ctr_ containers delete "$id" >/dev/null 2>&1 || true
    done
  fi
  stop_daemon containerd
  # What survived (containerd gone first, a task that would not die): shims of this
  # containerd by its address, processes still in our containers' cgroups.
  mapfile -t pids < <(pgrep -f -- "-address $sock( |\$)" || true)
  kill_pids "${pids[@]}"
  for id in $ids; do
    mapfile -t pids < <(cat /sys/fs/cgroup/*/k8s.io/"$id"/cgroup.procs 2>/dev/null | sort -u)
    kill_pids "${pids[@]}"
  done

  # socat and the connections it forked, as one session.
  if [ -f "$node_state/socat.pid" ]; then
    kill -9 -- "-$(cat "$node_state/socat.pid")" 2>/dev/null || true
    stop_daemon socat
  fi
  mapfile -t pids < <(pgrep -f "TCP-LISTEN:$api_port,bind=$NODE_GATEWAY," || true)
  kill_pids "${pids[@]}"

  unmount_under "$node_state"

  # The bridge and veths still attached (a netns kept alive by a mount that was busy).
  for id in $(ip -o link show master "$NODE_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$id" 2>/dev/null || true
  done
  ip link del "$NODE_BRIDGE" 2>/dev/null || true

  # With cgroupsPerQOS=false the kubelet gives no cgroup parent, so containerd puts each
  # container at /k8s.io/<id> in every hierarchy (k8s.io: its namespace, shared by every
  # node of this machine, hence removed only when empty); a killed task leaves its own.
  for id in $ids; do
    for d in /sys/fs/cgroup/*/k8s.io/"$id"; do [ -d "$d" ] && rmdir "$d" 2>/dev/null || true; done
  done
  for d in /sys/fs/cgroup/*/k8s.io; do [ -d "$d" ] && rmdir "$d" 2>/dev/null || true; done
  # Shim sockets, named by a hash of containerd's address, namespace and id, in the fixed
  # /run/containerd/s; a shim that was killed leaves its socket.
  for id in $ids; do
    rm -f "/run/containerd/s/$(printf '%s' "$sock/k8s.io/$id" | sha256sum | cut -d' ' -f1)"
  done
  # CNI's cache of results, /var/lib/cni/results/<network>-<id>-<ifname>: fixed too, and a
  # sandbox killed rather than stopped keeps its files.
  for id in $ids; do rm -f /var/lib/cni/results/*-"$id"-*; done

  # Pod logs: /var/log/pods is the kubelet's fixed directory, shared by every node of this
  # machine; only this node's pods go.
  for uid in $uids; do
    for l in /var/log/containers/*.log; do
      [ -L "$l" ] && case "$(readlink "$l")" in *_"$uid"/*) rm -f "$l" ;; esac
    done
    rm -rf /var/log/pods/*_"$uid"
  done

  # The machine-wide directories these fixed paths needed go with the last node.
  if ! any_alive containerd; then
    rmdir /run/containerd/s /run/containerd /var/lib/cni/results /var/lib/cni 2>/dev/null || true
  fi
  if ! any_alive kubelet; then
    rmdir /var/log/containers /var/log/pods 2>/dev/null || true
  fi

  rm -rf "$node_state"
  log "node stopped ($node_state)"
}

env_lines() {
  echo "export E2E_NODE_API_HOST=$NODE_GATEWAY"
  echo "export E2E_NODE_API_PORT=$api_port"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  import) shift; [ "$#" -gt 0 ] || die "usage: $0 import TAR..."; import "$@" ;;
  env) env_lines ;;
  *) die "usage: $0 up|down|import TAR...|env" ;;
esac
