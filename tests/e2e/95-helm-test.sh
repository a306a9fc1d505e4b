#!/usr/bin/env bash
# `helm test` on the real cluster, as README tells users to run it: the chart's test pod resolves
# the operator's Service and the agents' headless Service through the cluster DNS and asks each
# /readyz.
#   1. with the operator and every agent running: `helm test` succeeds and names each of them
#   2. with the operator scaled to 0: `helm test` fails, naming the operator
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OPERATOR=deploy/$RELEASE-staticpodset-operator
cleanup() {
  kubectl scale -n "$RELEASE_NS" "$OPERATOR" --replicas=1 >/dev/null 2>&1 || true
  kubectl rollout status -n "$RELEASE_NS" "$OPERATOR" --timeout=3m >/dev/null 2>&1 || true
}
trap cleanup EXIT

install_product
# The test pod's image: the busybox every node has (the chart's default is pulled from Docker Hub).
helm upgrade "$RELEASE" "$REPO_ROOT/charts/staticpodset" -n "$RELEASE_NS" --reuse-values --wait --timeout 5m \
  --set helmTest.enabled=true --set helmTest.image.repository="${BUSYBOX_IMAGE%:*}" \
  --set helmTest.image.tag="${BUSYBOX_IMAGE##*:}" --set helmTest.image.pullPolicy=Never >/dev/null ||
  fail "helm upgrade with helmTest.enabled=true failed"

# --- 1. everything ready ---------------------------------------------------------------------------
out=$(helm test "$RELEASE" -n "$RELEASE_NS" --timeout 3m --logs 2>&1) || fail "helm test failed: $out"
grep -q "Phase:.*Succeeded" <<<"$out" || fail "helm test did not report Succeeded: $out"
grep -q "ready: operator" <<<"$out" || fail "the test did not check the operator: $out"
agents=$(grep -c "ready: agent" <<<"$out" || true)
# An agent on every node of the cluster (a kind cluster's control plane has one too).
want=$(kubectl get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=node-agent --no-headers | grep -c .)
((agents == want && want >= ${#NODES[@]})) || fail "the test checked $agents agents, not $want: $out"
ok "helm test succeeded: the operator and $agents agents answer /readyz through the cluster DNS"

# --- 2. the operator gone --------------------------------------------------------------------------
kubectl scale -n "$RELEASE_NS" "$OPERATOR" --replicas=0 >/dev/null
no_operator_pods() { [[ -z $(kubectl get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=operator -o name) ]]; }
wait_for "operator pods gone" 120 no_operator_pods || fail "the operator pods did not go"
if out=$(helm test "$RELEASE" -n "$RELEASE_NS" --timeout 3m --logs 2>&1); then
  fail "helm test succeeded without an operator: $out"
fi
grep -q "NOT READY: operator" <<<"$out" || fail "the failed test does not name the operator: $out"
ok "with the operator scaled to 0, helm test fails and names it"

echo "95-helm-test: $passed passed, 0 failed"
