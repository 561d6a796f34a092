#!/usr/bin/env bash
# `make demo`: a local control plane, deploy/ installed, the operator running as its
# ServiceAccount, a sample MTA fleet and a TempFail incident, then what kubectl shows.
# The control plane and the operator keep running afterwards; `make cluster-down` stops both.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
repo="$(cd "$here/.." && pwd)"

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

log "applying examples/mta-fleet.yaml and examples/tempfail-incident.yaml in namespace mail"
k create namespace mail --dry-run=client -o yaml | k apply -f - >/dev/null
k -n mail apply -f "$repo/examples/mta-fleet.yaml"
k -n mail apply --validate=false -f "$repo/examples/tempfail-incident.yaml"
for _ in $(seq 50); do
  [ "$(k -n mail get mailinc storage-outage -o jsonpath='{.status.targets.summary}')" = "0/3" ] \
    && [ "$(k -n mail get configmaps -l mailops.dev/role=mode-document -o name | wc -l)" = 3 ] && break
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
echo "No agent runs in this demo, so no MTA acknowledges the mode: Applied stays 0/3."
cat <<DONE
The control plane and the operator keep running. Try it:
  export KUBECONFIG=$kubeconfig PATH=$(dirname "$E2E_KUBECTL"):\$PATH
  kubectl -n mail patch mailinc storage-outage --type merge -p '{"spec":{"resolved":true}}'
  kubectl -n mail get mailinc
Operator log: $state/operator.log. Stop everything: make cluster-down
DONE
