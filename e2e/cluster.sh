#!/usr/bin/env bash
# A real, local Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver (RBAC, token
# file, service-account keys) and kube-controller-manager, with no kubelet unless asked
# for one (e2e/node.sh).
#
#   e2e/cluster.sh up               start it (building the binaries once) and print the
#                                   kubeconfig path
#   e2e/cluster.sh up --with-node   the same, then a real node (e2e/node.sh up: kubelet,
#                                   kube-scheduler, containerd), Ready before this returns
#   e2e/cluster.sh down             stop it, and its node if it has one, and delete its state
#   e2e/cluster.sh stop-apiserver   stop only its kube-apiserver (etcd, its data and the
#                                   controller manager stay)
#   e2e/cluster.sh start-apiserver  start that kube-apiserver again, as it was, and wait
#                                   until it answers /readyz
#   e2e/cluster.sh env              print `export` lines for E2E_KUBECONFIG and E2E_KUBECTL
#
# State lives in $E2E_STATE (default /tmp/mail-incident-operator-e2e); ports come from
# $E2E_PORT_BASE (default 46443: API server, +1 etcd client, +2 etcd peer; the node takes
# +3 and +4, see e2e/node.sh).
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

world_settings
etcd_port=$((port_base + 1))
etcd_peer_port=$((port_base + 2))
daemon_dir="$state"
node_net "$port_base"

# --enable-aggregator-routing: the API server calls webhooks (the operator's, by Service)
# at their endpoints' pod IPs, since no kube-proxy here routes a Service's cluster IP.
start_apiserver() {
  local pki="$state/pki"
  log "starting kube-apiserver on https://127.0.0.1:$api_port"
  start_daemon kube-apiserver "$KUBE_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --insecure-port 0 \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --authorization-mode RBAC --token-auth-file "$state/tokens.csv" \
    --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --api-audiences https://kubernetes.default.svc \
    --service-cluster-ip-range 10.96.0.0/16 \
    --enable-priority-and-fairness=false \
    --enable-aggregator-routing=true \
    --profiling=false
}

# The API server alone, for tests of what clients do while it is away: etcd keeps the data.
# On SIGTERM a 1.20 kube-apiserver stops listening at once, then lingers for many seconds
# trying to remove itself from the `kubernetes` Endpoints through its own closed port: it
# gets 1 s, then SIGKILL.
stop_apiserver() {
  running etcd || die "no control plane runs in $state"
  running kube-apiserver || die "kube-apiserver of $state is not running"
  stop_daemon kube-apiserver 10
  log "kube-apiserver stopped ($state)"
}

restart_apiserver() {
  running etcd || die "no control plane runs in $state"
  running kube-apiserver && die "kube-apiserver of $state is already running"
  for _ in $(seq 50); do port_in_use "$api_port" || break; sleep 0.1; done
  start_apiserver
  wait_for kube-apiserver "$KUBE_BIN/kubectl" --kubeconfig "$kubeconfig" get --raw /readyz
  log "kube-apiserver answers /readyz again ($state)"
}

up() {
  "$here/build-kubernetes.sh"
  "$here/install-deps.sh"
  command -v etcd >/dev/null || die "etcd not found: apt-get install etcd-server"
  if [ -f "$state/kube-apiserver.pid" ] && kill -0 "$(cat "$state/kube-apiserver.pid")" 2>/dev/null; then
    log "control plane already running ($kubeconfig)"
    echo "$kubeconfig"
    return
  fi
  for p in "$api_port" "$etcd_port" "$etcd_peer_port"; do
    port_in_use "$p" && die "port $p on 127.0.0.1 is taken; set E2E_PORT_BASE to another base"
  done
  rm -rf "$state" && mkdir -p "$state/pki"
  local pki="$state/pki"

  # A CA, the API server's serving certificate signed by it (rustls refuses a self-signed
  # CA certificate used as a server certificate), and the service-account key pair.
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=e2e-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  # It also names the node's bridge gateway, where pods off the host network reach it
  # (through e2e/node.sh's forward), inert without a node.
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:$NODE_GATEWAY" "basicConstraints=CA:FALSE" \
    "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$pki/apiserver.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 30 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  local token oncall_token lead_token
  token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  oncall_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  lead_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  # Two people besides the administrator, for the tests of who may bounce mail: contexts
  # oncall and lead of the same kubeconfig.
  {
    echo "$token,admin,admin-uid,system:masters"
    echo "$oncall_token,oncall,oncall-uid,mail-oncall"
    echo "$lead_token,lead,lead-uid,mail-leads"
  } >"$state/tokens.csv"

  log "starting etcd on 127.0.0.1:$etcd_port"
  start_daemon etcd etcd --name e2e --data-dir "$state/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "e2e=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync
  wait_for etcd curl -fsS "http://127.0.0.1:$etcd_port/health"

  start_apiserver
  cat >"$kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    token: $token
- name: oncall
  user:
    token: $oncall_token
- name: lead
  user:
    token: $lead_token
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
- name: oncall
  context: {cluster: e2e, user: oncall}
- name: lead
  context: {cluster: e2e, user: lead}
current-context: e2e
KUBECONFIG
  wait_for kube-apiserver "$KUBE_BIN/kubectl" --kubeconfig "$kubeconfig" get --raw /readyz

  log "starting kube-controller-manager"
  start_daemon kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
    --kubeconfig "$kubeconfig" \
    --controllers '*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle' \
    --service-account-private-key-file "$pki/sa.key" \
    --root-ca-file "$pki/ca.crt" \
    --leader-elect=false --port 0 --secure-port 0 \
    --use-service-account-credentials=false \
    --kube-api-qps 200 --kube-api-burst 400 \
    --concurrent-deployment-syncs 10 --concurrent-replicaset-syncs 10 \
    --profiling=false
  wait_for "the default service account" \
    "$KUBE_BIN/kubectl" --kubeconfig "$kubeconfig" -n default get serviceaccount default
  log "control plane ready: $kubeconfig"
  echo "$kubeconfig"
}

down() {
  # The node first: its kubelet and pods talk to this API server, and its mounts live
  # under $state.
  if [ -d "$state/node" ]; then "$here/node.sh" down; fi
  if [ -f "$state/postfix-instance" ]; then
    "$here/postfix-instance.sh" stop "$(cat "$state/postfix-instance")"
  fi
  for name in agent operator kube-controller-manager kube-apiserver etcd; do
    stop_daemon "$name"
  done
  rm -rf "$state"
}

case "${1:-}" in
  up)
    case "${2:-}" in
      "") up ;;
      --with-node)
        "$here/build-kubernetes.sh" --with-node
        up
        "$here/node.sh" up
        ;;
      *) die "usage: $0 up [--with-node]" ;;
    esac
    ;;
  down) down ;;
  stop-apiserver) stop_apiserver ;;
  start-apiserver) restart_apiserver ;;
  env)
    echo "export E2E_KUBECONFIG=$kubeconfig"
    echo "export E2E_KUBECTL=$KUBE_BIN/kubectl"
    ;;
  *) die "usage: $0 up [--with-node]|down|stop-apiserver|start-apiserver|env" ;;
esac
