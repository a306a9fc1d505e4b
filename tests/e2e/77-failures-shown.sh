#!/usr/bin/env bash
# A failure that stops a set is shown on the set, on the real cluster: a template so large that its
# StaticPodRevision (template + manifest) exceeds what etcd stores is accepted as a set, but the
# revision cannot be created. The set must say so — condition ReconcileFailure with the reason and
# the API server's message, and one Warning Event however often the operator retries — and no
# node may get anything.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cleanup() {
  kubectl delete sps -n "$E2E_NS" huge --wait=true --timeout=120s >/dev/null 2>&1 || true
}
trap cleanup EXIT

install_product
ensure_e2e_namespace

# 1.2 MiB of environment: the set fits in etcd, its revision (the template twice) does not. Created,
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
ok "a set with a 1.2 MiB template is accepted"

cond() { kubectl get sps -n "$E2E_NS" huge -o "jsonpath={.status.conditions[?(@.type==\"ReconcileFailure\")].$1}"; }
shown() { [[ $(cond reason) == RevisionWriteFailed ]]; }
wait_for "ReconcileFailure on the set" 90 shown ||
  fail "the failed revision is not shown: $(kubectl get sps -n "$E2E_NS" huge -o jsonpath='{.status.conditions}' | head -c 2000)"
message=$(cond message)
[[ $message == *StaticPodRevision* && $message == *huge* ]] || fail "the message does not say what failed: $message"
ok "ReconcileFailure=RevisionWriteFailed: \"${message:0:160}...\""

# The operator retries with backoff (1 s, 2 s, 4 s, ...): after several retries, still one Event.
retries() {
  kubectl get sps -n "$E2E_NS" huge >/dev/null &&
    (($(curl -s --max-time 5 "http://$(operator_ip):9101/metrics" |
      awk '$1 ~ /^staticpodset_operator_reconcile_errors_total\{kind="revision_write"\}/ {print $2}' | head -n1 | cut -d. -f1) >= 4))
}
operator_ip() {
  kubectl get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=operator -o jsonpath='{.items[0].status.podIP}'
}
wait_for "four failed retries" 90 retries || fail "the operator did not retry the revision"
events=$(kubectl get events -n "$E2E_NS" --field-selector reason=RevisionWriteFailed,involvedObject.name=huge \
  -o jsonpath='{range .items[*]}{.type}{"\n"}{end}')
[[ $events == Warning ]] || fail "expected one Warning Event RevisionWriteFailed, got: '$events'"
ok "one Warning Event RevisionWriteFailed after four retries"

[[ -z $(kubectl get staticpodrevisions -n "$E2E_NS" -l staticpods.dev/set-name=huge -o name) ]] ||
  fail "a revision exists for the set"
for n in "${NODES[@]}"; do
  ! kubectl get nodestaticpods "$n" -o jsonpath='{.spec.pods[*].setName}' | grep -qw huge || fail "$n got the set"
done
ok "no revision, no node entry"

echo "77-failures-shown: $passed passed, 0 failed"
