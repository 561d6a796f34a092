#!/usr/bin/env bash
# `make demo`: a local control plane with a real node (kubelet, containerd, runc); the
# images built from the repository's Dockerfiles; the operator installed from deploy/ as
# its two pods; a small real fleet in namespace `mail` (two Postfix Deployments and an Exim
# StatefulSet from examples/, each with its agent as a sidecar); then an AcceptAndQueue
# incident holding mail and its release, a scoped TempFail, a window declared for
# tomorrow, an outage run with the kubectl plugin from declare to resolve, and who may
# make an MTA bounce mail (users oncall and lead of the control plane's token file): what
# kubectl and the plugin show and what each MTA answers over SMTP from the host.
# Everything keeps running afterwards; `make cluster-down` stops it all, and the next
# `make demo` starts from a clean cluster.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
repo="$(cd "$here/.." && pwd)"
demo_started=$SECONDS

"$here/cluster.sh" down
log "building the images (operator, example Postfix and Exim) with buildah; cached once built"
archives="$("$here/images.sh" build)"
kubeconfig="$("$here/cluster.sh" up --with-node)"
eval "$("$here/cluster.sh" env)"
eval "$("$here/node.sh" env)"
state="$(dirname "$kubeconfig")"
# shellcheck disable=SC2086 # one archive path per word
"$here/node.sh" import $archives
k() { "$E2E_KUBECTL" --kubeconfig "$kubeconfig" "$@"; }
log "building the kubectl plugin (kubectl mail-incident)"
(cd "$repo" && cargo build --locked --quiet --bin kubectl-mail_incident) || die "the plugin did not build"
plugin_bin="${CARGO_TARGET_DIR:-$repo/target}/debug/kubectl-mail_incident"
# The plugin as an SRE runs it, the command shown before its output.
mi() {
  local shown="" word
  for word in "$@"; do
    case "$word" in *" "*) shown+=" \"$word\"" ;; *) shown+=" $word" ;; esac
  done
  echo
  echo "\$ kubectl mail-incident$shown"
  "$plugin_bin" --kubeconfig "$kubeconfig" "$@"
}

# What the one-machine node forces on a manifest: images imported rather than pulled, and
# pods reaching the API server through the node's bridge (no kube-proxy here).
node_forced() {
  sed -e 's/^\( *\)image: \(.*\)$/\1image: \2\n\1imagePullPolicy: Never/' \
    -e "s/^\( *\)env:$/\1env:\n\1- {name: KUBERNETES_SERVICE_HOST, value: \"$E2E_NODE_API_HOST\"}\n\1- {name: KUBERNETES_SERVICE_PORT, value: \"$E2E_NODE_API_PORT\"}/"
}

log "installing deploy/ through e2e/real-node: CRD, RBAC, the operator's two replicas"
k kustomize "$here/real-node" \
  | sed -e "s/@API_HOST@/$E2E_NODE_API_HOST/" -e "s/@API_PORT@/$E2E_NODE_API_PORT/" \
  | k apply --validate=false -f - >/dev/null
k wait --for=condition=Established --timeout=30s crd/mailincidents.mailops.dev >/dev/null
k -n mail-incident-operator rollout status deploy/mail-incident-operator --timeout=120s >/dev/null
for _ in $(seq 100); do
  leader=$(k -n mail-incident-operator get lease mail-incident-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  [ -n "$leader" ] && break
  sleep 0.2
done
echo
echo "\$ kubectl get pods -n mail-incident-operator   (leader: $leader)"
k -n mail-incident-operator get pods -o wide

# A hostPath PersistentVolume bound in advance to a claim of namespace mail.
queue_volume() { # claim, mode
  local path="$state/volumes/mail-$1"
  mkdir -p "$path" && chmod "$2" "$path"
  k apply -f - >/dev/null <<PV
apiVersion: v1
kind: PersistentVolume
metadata: {name: mail-$1}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: $path, type: Directory}
  claimRef: {namespace: mail, name: $1}
PV
}

log "the fleet in namespace mail: Postfix postfix-inbound and postfix-relay, Exim exim-inbound"
k create namespace mail >/dev/null
# Postfix wants its queue root-owned and closed to others; Exim's spool is Debian-exim's.
queue_volume postfix-inbound-queue 0755
queue_volume postfix-relay-queue 0755
queue_volume spool-exim-inbound-0 0777
k -n mail apply -k "$repo/deploy/agent" >/dev/null
node_forced <"$repo/examples/postfix-with-agent.yaml" | k -n mail apply -f - >/dev/null
# A second Postfix workload: a copy of the example and of its agent's identity, renamed
# (deploy/agent's header says so).
k kustomize "$repo/deploy/agent" | sed 's/postfix-inbound/postfix-relay/g' | k -n mail apply -f - >/dev/null
node_forced <"$repo/examples/postfix-with-agent.yaml" | sed 's/postfix-inbound/postfix-relay/g' \
  | k -n mail apply -f - >/dev/null
node_forced <"$repo/examples/exim-with-agent.yaml" | k -n mail apply -f - >/dev/null
for _ in $(seq 300); do
  [ "$(k -n mail get pods -l app.kubernetes.io/component=mta -o name 2>/dev/null | wc -l)" = 3 ] && break
  sleep 0.2
done
k -n mail wait --for=condition=Ready pod -l app.kubernetes.io/component=mta --timeout=180s >/dev/null \
  || { k -n mail get pods >&2; die "the MTA pods did not turn Ready"; }
echo
echo "\$ kubectl get pods -n mail -o wide   (each pod: the MTA and its agent)"
k -n mail get pods -o wide

# name ip recipient, one line per MTA.
mtas=()
for pod in $(k -n mail get pods -l app.kubernetes.io/component=mta -o jsonpath='{.items[*].metadata.name}'); do
  recipient=user@e2e.test
  case "$pod" in exim-*) recipient=user@local.test ;; esac
  mtas+=("$pod $(k -n mail get pod "$pod" -o jsonpath='{.status.podIP}') $recipient")
done

rcpt_answer() { # ip recipient: the RCPT answer of one SMTP session
  exec 3<>"/dev/tcp/$1/25"
  printf 'EHLO demo.example\r\nMAIL FROM:<sender@example.net>\r\nRCPT TO:<%s>\r\nQUIT\r\n' "$2" >&3
  timeout 3 cat <&3 | tr -d '\r' | grep -E '^(250 2\.1\.5|250 Accepted|[45][0-9][0-9] [45]\.)' | head -n 1
  exec 3<&-
}
answers() { # what
  echo
  echo "$1:"
  local m
  for m in "${mtas[@]}"; do
    set -- $m
    printf '  %-34s %-15s %s\n' "$1" "$2" "$(rcpt_answer "$2" "$3")"
  done
}
# Messages in a pod's Maildir, read through its MTA's daemon (Postfix's master, Exim's
# -bd), found by the pod name the kubelet puts in each container's /etc/hostname.
delivered() { # pod
  local proc
  for proc in /proc/[0-9]*; do
    [ "$(cat "$proc/root/etc/hostname" 2>/dev/null)" = "$1" ] || continue
    tr '\0' ' ' <"$proc/cmdline" 2>/dev/null | grep -qE '/master |exim4 -bd' || continue
    find "$proc/root/var/mail/vhosts" -path '*/new/*' -type f 2>/dev/null | wc -l
    return
  done
  die "no MTA daemon found for pod $1"
}

postfix_ip=$(k -n mail get pods -l app.kubernetes.io/instance=postfix-inbound -o jsonpath='{.items[0].status.podIP}')

answers "Before any incident, each MTA answers RCPT with"

log "applying examples/accept-and-queue-incident.yaml: storage is down, hold the mail"
k -n mail apply -f "$repo/examples/accept-and-queue-incident.yaml"
k -n mail wait --for=condition=Ready --timeout=60s mailinc/storage-outage-queue >/dev/null \
  || die "the AcceptAndQueue incident did not turn Ready"
for m in "${mtas[@]}"; do
  set -- $m
  for n in 1 2 3; do
    swaks --server "$2:25" --from sender@example.net --to "$3" --header "Subject: held $n" \
      >/dev/null 2>&1 || die "$1 refused message $n"
  done
done
sleep 2
echo
echo "AcceptAndQueue: 3 messages sent to each MTA and answered 250; delivered to mailbox storage:"
for m in "${mtas[@]}"; do set -- $m; echo "  $1: $(delivered "$1")"; done
echo
echo "\$ kubectl get mailinc -n mail"
k -n mail get mailinc

log "resolving it: each agent releases its held mail, then restores its MTA's own configuration"
k -n mail patch mailinc storage-outage-queue --type merge -p '{"spec":{"resolved":true}}' >/dev/null
total=0
for _ in $(seq 60); do
  total=0
  for m in "${mtas[@]}"; do set -- $m; total=$((total + $(delivered "$1"))); done
  [ "$total" -ge 9 ] && break
  sleep 0.5
done
[ "$total" -ge 9 ] || die "only $total of the 9 held messages were delivered after the release"
echo
echo "Resolved: delivered to mailbox storage:"
for m in "${mtas[@]}"; do set -- $m; echo "  $1: $(delivered "$1")"; done
k -n mail delete mailinc storage-outage-queue >/dev/null

log "a TempFail scoped to the pec. domains: their storage is down, every other mailbox is fine"
k -n mail apply -f - <<'YAML'
apiVersion: mailops.dev/v1alpha1
kind: MailIncident
metadata:
  name: pec-storage-outage
spec:
  mode: TempFail
  reason: "INC-2052: PEC mailbox storage down; other mailboxes fine"
  targets: {matchLabels: {app.kubernetes.io/component: mta}}
  scope: {recipientDomains: [pec.e2e.test, pec.local.test]}
YAML
k -n mail wait --for=condition=Ready --timeout=60s mailinc/pec-storage-outage >/dev/null \
  || die "the scoped incident did not turn Ready"
echo
echo "During the scoped TempFail, each MTA answers RCPT, by recipient:"
for m in "${mtas[@]}"; do
  set -- $m
  printf '  %-34s %-24s %s\n' "$1" "user@pec.${3#*@}" "$(rcpt_answer "$2" "user@pec.${3#*@}")"
  printf '  %-34s %-24s %s\n' "$1" "$3" "$(rcpt_answer "$2" "$3")"
done
k -n mail delete mailinc pec-storage-outage >/dev/null

log "a maintenance window declared for tomorrow: nothing changes until it starts"
k -n mail apply -f - <<YAML
apiVersion: mailops.dev/v1alpha1
kind: MailIncident
metadata:
  name: firmware-window
spec:
  mode: TempFail
  reason: "CHG-311: storage firmware upgrade"
  targets: {matchLabels: {app.kubernetes.io/component: mta}}
  startsAt: "$(date -u -d tomorrow +%Y-%m-%dT22:00:00Z)"
  duration: 4h
YAML
k -n mail wait --for=condition=Ready --timeout=60s mailinc/firmware-window >/dev/null \
  || die "the scheduled window did not turn Ready"
echo
echo "\$ kubectl get mailinc -n mail   (Ready, reason Scheduled: GitOps syncs pass today)"
k -n mail get mailinc
answers "With tomorrow's window declared, each MTA still answers RCPT with"
k -n mail delete mailinc firmware-window >/dev/null

log "an outage run with the plugin: hold the mail, extend, escalate to TempFail, resolve"
mi declare storage-outage -n mail --mode AcceptAndQueue --targets app.kubernetes.io/component=mta \
  --reason "INC-2041: mailbox storage cluster unreachable" --for 12h --dry-run --recipient user@e2e.test \
  || die "the dry run failed"
applied=$(date +%s%N)
mi declare storage-outage -n mail --mode AcceptAndQueue --targets app.kubernetes.io/component=mta \
  --reason "INC-2041: mailbox storage cluster unreachable" --for 12h --wait --timeout 60s \
  || die "the AcceptAndQueue incident did not turn Ready"
echo "Ready 3/3 $((($(date +%s%N) - applied) / 1000000)) ms after the declare"
before=0
for m in "${mtas[@]}"; do
  set -- $m
  before=$((before + $(delivered "$1")))
  for n in 1 2; do
    swaks --server "$2:25" --from sender@example.net --to "$3" --header "Subject: INC-2041 held $n" \
      >/dev/null 2>&1 || die "$1 refused message $n"
  done
done
echo
echo "2 messages sent to each MTA, answered 250 and held; each agent reports its queue"
echo "every 30 s (--report-seconds), so the held mail shows within half a minute:"
for _ in $(seq 80); do
  [ "$("$plugin_bin" --kubeconfig "$kubeconfig" status storage-outage -n mail -o json \
    | grep -cE '"queuedMessages": [1-9]')" = 3 ] && break
  sleep 0.5
done
mi status storage-outage -n mail || die "status failed"
mi extend storage-outage -n mail --by 6h || die "extend failed"
# Off a terminal nobody can confirm: the plugin says what HardReject would do, and stops.
if mi escalate storage-outage -n mail --to HardReject --acknowledge-bounces </dev/null; then
  die "HardReject was applied without a confirmation"
fi
mi escalate storage-outage -n mail --to TempFail || die "escalate failed"
k -n mail wait --for=condition=Ready --timeout=60s mailinc/storage-outage >/dev/null \
  || die "the TempFail did not turn Ready"
answers "After the escalation to TempFail, each MTA answers RCPT with"
mi history storage-outage -n mail || die "history failed"
mi list -n mail -o wide || die "list failed"
resolved=$(date +%s%N)
mi resolve storage-outage -n mail --wait --timeout 120s || die "the release did not finish"
after=0
for m in "${mtas[@]}"; do set -- $m; after=$((after + $(delivered "$1"))); done
echo "resolve --wait returned $((($(date +%s%N) - resolved) / 1000000)) ms after the command;" \
  "$((after - before)) of the 6 held messages were in mailbox storage by then"
[ $((after - before)) -eq 6 ] || die "resolve --wait returned before the held mail was delivered"
log "who may bounce mail: oncall (edit) is refused a HardReject; lead (edit and the bounce role) may"
k -n mail create rolebinding oncall-edit --clusterrole=edit --group=mail-oncall >/dev/null
k -n mail create rolebinding lead-edit --clusterrole=edit --user=lead >/dev/null
k -n mail create rolebinding lead-bounce --clusterrole=mail-incident-operator-bounce --user=lead >/dev/null
k -n mail label deployment postfix-relay mail.example/tier=relay >/dev/null
purge='apiVersion: mailops.dev/v1alpha1
kind: MailIncident
metadata:
  name: relay-purge
spec:
  mode: HardReject
  hardReject: {acknowledgeBounces: true}
  reason: "INC-2050: relay spool lost; refuse until rebuilt"
  targets: {matchLabels: {mail.example/tier: relay}}
  duration: 1h'
echo
echo "\$ kubectl --context oncall -n mail apply -f relay-purge.yaml   (mode HardReject)"
if k --context oncall -n mail apply -f - <<<"$purge"; then
  die "oncall was allowed to make an MTA bounce mail"
fi
echo
echo "\$ kubectl --context lead -n mail apply -f relay-purge.yaml"
k --context lead -n mail apply -f - <<<"$purge" || die "lead was refused"
k -n mail wait --for=condition=Ready --timeout=60s mailinc/relay-purge >/dev/null \
  || die "lead's HardReject did not turn Ready"
answers "With lead's HardReject on postfix-relay, each MTA answers RCPT with"
mi --context oncall resolve relay-purge -n mail --wait --timeout 60s || die "oncall could not resolve it"
mi history relay-purge -n mail || die "history failed"
echo
echo "\$ kubectl get mailinc -n mail -o wide"
k -n mail get mailinc -o wide
echo
echo "\$ kubectl get configmaps -n mail -l mailops.dev/role=mode-document   (one mode document per MTA workload)"
k -n mail get configmaps -l mailops.dev/role=mode-document
echo
echo "make demo took $((SECONDS - demo_started)) s (the first run on a machine also builds"
echo "Kubernetes and the images: about 25 minutes more)."
cat <<DONE

The cluster, the node and the pods keep running. Try it:
  export KUBECONFIG=$kubeconfig PATH=$(dirname "$E2E_KUBECTL"):\$PATH
  $plugin_bin status -A --watch   # or: kubectl mail-incident, with it on the PATH
  kubectl -n mail get mailinc,pods
  swaks --server $postfix_ip --to user@e2e.test     # talk to Postfix by hand
Container logs: /var/log/pods/. Stop everything: make cluster-down
DONE
