#!/usr/bin/env bash
# A set that cannot be stored is refused, visibly, on the real cluster: a template so large that
# its StaticPodRevision (template + manifest) would exceed what etcd stores is accepted as a set
# (no CRD rule can bound an object's total size), and the operator refuses it before writing
# anything: condition Valid=False TemplateTooLarge with both sizes in the message, one Warning
# Event however often the set is reconciled, no revision and no node entry. (When the API server
# refuses a revision for any other reason, ReconcileFailure=RevisionWriteFailed says so; its unit
# tests cover that path.)
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cleanup() {
  kubectl delete sps -n "$E2E_NS" huge --wait=true --timeout=120s >/dev/null 2>&1 || true
}
trap cleanup EXIT

install_product
ensure_e2e_namespace

# 1.2 MiB of environment: the set fits in etcd, its revision (the template twice) would not. Created,
# not applied: kubectl apply would keep a second copy in an annotation.
python3 - "$E2E_NS" "$BUSYBOX_IMAGE" <<'PY' | kubectl create -f - >/dev/null
import json, sys
namespace, image = sys.argv[1], sys.argv[2]
print(json.dumps({
    "apiVersion": "staticpods.dev/v1alpha1", "kind": "StaticPodSet",
    "metadata": {"name": "huge", "namespace": namespace},
    "spec": {"template": {"metadata": {"labels": {"app": "huge"}}, "spec": {"containers": [{
        "name": "main", "image": image, "imagePullPolicy": "Never", "command": ["sleep", "100000"],
        "env": [{"name": "PAD", "value": "x" * (1200 * 1024)}]}]}}},
}))
PY
ok "a set with a 1.2 MiB template is accepted by the API server"

cond() { kubectl get sps -n "$E2E_NS" huge -o "jsonpath={.status.conditions[?(@.type==\"$1\")].$2}"; }
shown() { [[ $(cond Valid status) == False && $(cond Valid reason) == TemplateTooLarge ]]; }
wait_for "Valid=False TemplateTooLarge on the set" 90 shown ||
  fail "the refusal is not shown: $(kubectl get sps -n "$E2E_NS" huge -o jsonpath='{.status.conditions}' | head -c 2000)"
message=$(cond Valid message)
[[ $message == *bytes* && $message == *524288* ]] || fail "the message does not give the sizes: $message"
[[ -z $(cond ReconcileFailure reason) ]] || fail "a refused spec is no failed reconcile: $(cond ReconcileFailure message)"
ok "Valid=False TemplateTooLarge: \"${message:0:160}...\""

# Nothing fails, so nothing is retried: reconciles come from changes and the resync. Three changes
# (an annotation) make three reconciles of the same spec; still one Event.
reconciles() {
  node_run "${NODES[0]}" curl -s --max-time 5 "http://$(operator_ip):9101/metrics" |
    awk '$1 ~ /^staticpodset_operator_reconciles_total\{result="success"\}/ {printf "%d", $2}' | head -n1
}
operator_ip() {
  kubectl get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=operator -o jsonpath='{.items[0].status.podIP}'
}
before=$(reconciles)
[[ -n $before ]] || fail "no reconcile count from the operator's /metrics"
# One change at a time, each waited for, so the debounce cannot fold them into one reconcile.
reconciled() { (($(reconciles) >= $1)); }
for i in 1 2 3; do
  kubectl annotate sps -n "$E2E_NS" huge "e2e.staticpods.dev/poke=$i" --overwrite >/dev/null
  wait_for "reconcile $i after the change" 60 reconciled $((before + i)) || fail "the operator did not reconcile the set after change $i"
done
events=$(kubectl get events -n "$E2E_NS" --field-selector reason=TemplateTooLarge,involvedObject.name=huge \
  -o jsonpath='{range .items[*]}{.type} {.series.count}{"\n"}{end}')
# One Event object, not repeated as a series (a second publication would count 2).
[[ $events == "Warning " ]] || fail "expected one Warning Event TemplateTooLarge, got: '$events'"
ok "one Warning Event TemplateTooLarge after three more reconciles"

[[ -z $(kubectl get staticpodrevisions -n "$E2E_NS" -l staticpods.dev/set-name=huge -o name) ]] ||
  fail "a revision exists for the set"
for n in "${NODES[@]}"; do
  ! kubectl get nodestaticpods "$n" -o jsonpath='{.spec.pods[*].setName}' | grep -qw huge || fail "$n got the set"
done
ok "no revision, no node entry"

echo "77-failures-shown: $passed passed, 0 failed"
