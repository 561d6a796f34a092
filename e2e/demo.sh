#!/usr/bin/env bash
# `make demo`: a local control plane, deploy/ installed, the operator running as its
# ServiceAccount, a sample MTA fleet plus a real Postfix with its agent; an
# AcceptAndQueue incident holding mail and its release, then a TempFail incident, what
# kubectl shows and what Postfix now answers.
# Everything keeps running afterwards; `make cluster-down` stops it all, and the next
# `make demo` starts from a clean control plane.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
repo="$(cd "$here/.." && pwd)"

"$here/cluster.sh" down
kubeconfig="$("$here/cluster.sh" up)"
eval "$("$here/cluster.sh" env)"
state="$(dirname "$kubeconfig")"
k() { "$E2E_KUBECTL" --kubeconfig "$kubeconfig" "$@"; }

log "building the operator"
(cd "$repo" && cargo build --locked --quiet)

log "installing deploy/ (CRD, namespace, ServiceAccount, RBAC, Deployment)"
# kubectl 1.20 validates client-side against a schema without x-kubernetes-validations.
k apply --validate=false -k "$repo/deploy" >/dev/null
k wait --for=condition=Established --timeout=30s crd/mailincidents.mailops.dev >/dev/null

log "running the operator as ServiceAccount mail-incident-operator/mail-incident-operator"
if [ -f "$state/operator.pid" ]; then kill "$(cat "$state/operator.pid")" 2>/dev/null || true; fi
token=$(echo '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":86400}}' \
  | k create --raw /api/v1/namespaces/mail-incident-operator/serviceaccounts/mail-incident-operator/token -f - \
  | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
[ -n "$token" ] || die "no token for the operator's ServiceAccount"
sed "s/^    token: .*/    token: $token/" "$kubeconfig" >"$state/operator.kubeconfig"
KUBECONFIG="$state/operator.kubeconfig" NO_COLOR=1 \
  "$repo/target/debug/mail-incident-operator" run --listen 127.0.0.1:18080 \
  >"$state/operator.log" 2>&1 &
echo $! >"$state/operator.pid"
for _ in $(seq 100); do
  curl -fs http://127.0.0.1:18080/readyz >/dev/null && break
  sleep 0.2
done
curl -fs http://127.0.0.1:18080/readyz >/dev/null || { cat "$state/operator.log" >&2; die "operator not ready"; }

log "applying deploy/agent, examples/mta-fleet.yaml and examples/postfix-with-agent.yaml in namespace mail"
k create namespace mail --dry-run=client -o yaml | k apply -f - >/dev/null
k -n mail apply -k "$repo/deploy/agent"
k -n mail apply -f "$repo/examples/mta-fleet.yaml" -f "$repo/examples/postfix-with-agent.yaml"

# No kubelet runs here: the Postfix pod stays Pending, and its MTA and agent run as local
# processes instead, the agent with the example's ServiceAccount and the pod's name.
smtp_port=42525
policy_port=42526
log "starting a real Postfix on 127.0.0.1:$smtp_port and its agent (policy service on :$policy_port)"
"$here/postfix-instance.sh" stop demo
postfix_conf=$("$here/postfix-instance.sh" start demo "$smtp_port" "$policy_port")
echo demo >"$state/postfix-instance"
pod=""
for _ in $(seq 100); do
  pod=$(k -n mail get pods -l app.kubernetes.io/instance=postfix-inbound -o jsonpath='{.items[0].metadata.name}' 2>/dev/null) && [ -n "$pod" ] && break
  sleep 0.2
done
[ -n "$pod" ] || die "kube-controller-manager created no pod for postfix-inbound"
agent_token=$(echo '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":86400}}' \
  | k create --raw /api/v1/namespaces/mail/serviceaccounts/postfix-inbound-agent/token -f - \
  | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
sed "s/^    token: .*/    token: $agent_token/" "$kubeconfig" >"$state/agent.kubeconfig"
if [ -f "$state/agent.pid" ]; then kill "$(cat "$state/agent.pid")" 2>/dev/null || true; fi
KUBECONFIG="$state/agent.kubeconfig" NO_COLOR=1 "$repo/target/debug/mail-incident-operator" agent \
  --workload Deployment/postfix-inbound --namespace mail --pod "$pod" --postfix-config "$postfix_conf" \
  --mailbox-transport virtual --postfix-policy-listen "127.0.0.1:$policy_port" \
  --state-dir "$state/agent" --report-seconds 2 --listen 127.0.0.1:18081 \
  >"$state/agent.log" 2>&1 &
echo $! >"$state/agent.pid"

# The RCPT answer of one SMTP session.
rcpt_answer() {
  exec 3<>"/dev/tcp/127.0.0.1/$smtp_port"
  printf 'EHLO demo.example\r\nMAIL FROM:<sender@example.net>\r\nRCPT TO:<user@e2e.test>\r\nQUIT\r\n' >&3
  timeout 3 cat <&3 | tr -d '\r' | grep -E '^(250 2\.1\.5|[45][0-9][0-9] [45]\.)' | head -n 1
  exec 3<&-
}
echo
echo "Before the incident, Postfix answers RCPT with: $(rcpt_answer)"

# Storage goes down: hold the mail, then release it when the incident is resolved.
queued() { postqueue -c "$postfix_conf" -j | wc -l; }
delivered() { find "$(dirname "$postfix_conf")/mailboxes/user/new" -type f 2>/dev/null | wc -l; }
log "applying examples/accept-and-queue-incident.yaml: storage is down, hold the mail"
k -n mail apply -f "$repo/examples/accept-and-queue-incident.yaml"
# Applied: the agent has reconfigured and reloaded Postfix (the other three workloads of
# the fleet have no MTA to acknowledge).
for _ in $(seq 100); do
  [ "$(k -n mail get mailinc storage-outage-queue -o jsonpath='{.status.targets.applied}')" = "1" ] && break
  sleep 0.1
done
sleep 1 # the queue manager restarts with the new configuration after the reload
for n in 1 2 3 4 5; do
  swaks --server "127.0.0.1:$smtp_port" --from sender@example.net --to user@e2e.test \
    --header "Subject: held $n" >/dev/null 2>&1 || die "Postfix refused message $n"
done
sleep 1
echo "AcceptAndQueue: 5 messages answered 250; queued $(queued), delivered $(delivered)"
echo "  maximal_queue_lifetime = $(postconf -c "$postfix_conf" -h maximal_queue_lifetime)"
log "resolving it: the agent releases the held mail"
k -n mail patch mailinc storage-outage-queue --type merge -p '{"spec":{"resolved":true}}' >/dev/null
for _ in $(seq 30); do
  echo "  queued $(queued), delivered $(delivered)"
  [ "$(queued)" -eq 0 ] && break
  sleep 0.5
done
k -n mail delete mailinc storage-outage-queue >/dev/null

log "applying examples/tempfail-incident.yaml"
started=$(date +%s%N)
k -n mail apply -f "$repo/examples/tempfail-incident.yaml"
answer=""
for _ in $(seq 100); do
  answer=$(rcpt_answer)
  case "$answer" in 452*) break ;; esac
  sleep 0.1
done
elapsed_ms=$((($(date +%s%N) - started) / 1000000))
echo "After the incident, Postfix answers RCPT with: $answer  (${elapsed_ms} ms after kubectl apply)"
for _ in $(seq 50); do
  [ "$(k -n mail get mailinc storage-outage -o jsonpath='{.status.targets.summary}')" = "1/4" ] && break
  sleep 0.2
done

echo
echo "\$ kubectl get mailinc -n mail -o wide"
k -n mail get mailinc -o wide
echo
echo "\$ kubectl describe mailinc storage-outage -n mail   (status and events)"
k -n mail describe mailinc storage-outage | sed -n '/^Status:/,$p'
echo
echo "\$ kubectl get configmaps -n mail -l mailops.dev/role=mode-document   (one mode document per MTA workload)"
k -n mail get configmaps -l mailops.dev/role=mode-document
echo
echo "\$ kubectl get configmap mail-mode-deployment-postfix-inbound-a -n mail -o jsonpath='{.data.mode\.json}'"
k -n mail get configmap mail-mode-deployment-postfix-inbound-a -o jsonpath='{.data.mode\.json}'
echo
echo
echo "Only postfix-inbound runs an agent here, so Applied shows 1/4: the other three"
echo "workloads of examples/mta-fleet.yaml have no MTA to acknowledge their mode."
cat <<DONE
The control plane and the operator keep running. Try it:
  export KUBECONFIG=$kubeconfig PATH=$(dirname "$E2E_KUBECTL"):\$PATH
  kubectl -n mail patch mailinc storage-outage --type merge -p '{"spec":{"resolved":true}}'
  kubectl -n mail get mailinc
  swaks --server 127.0.0.1:$smtp_port --to user@e2e.test     # talk to Postfix by hand
Logs: $state/operator.log, $state/agent.log. Stop everything: make cluster-down
DONE
