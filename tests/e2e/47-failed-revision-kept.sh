#!/usr/bin/env bash
# A failed revision never takes a serving pod down, on the real cluster: a rollout to an image
# that cannot be pulled, progressDeadlineSeconds 30, the chart's default 2-minute pre-pull timeout.
# The first node is handed the revision, its agent holds the write while it tries to pull, the
# rollout declares the revision failed on that node at its deadline (halting it), and at the
# pre-pull timeout the agent keeps the pod that serves instead of writing the failed revision.
# For 3 minutes after the handout the first node's pod is the same Ready pod of the old revision,
# and the second node is never touched.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

A=${NODES[0]} B=${NODES[1]}
SET=kept

cleanup() {
  kubectl delete sps -n "$E2E_NS" "$SET" --wait=true --timeout=120s >/dev/null 2>&1 || true
}
trap cleanup EXIT

install_product
ensure_e2e_namespace

jp() { kubectl get sps -n "$E2E_NS" "$SET" -o "jsonpath=$1" 2>/dev/null; }
mirror() { kubectl get pod -n "$E2E_NS" "$SET-$1" -o "jsonpath=$2" 2>/dev/null; }
entry() { kubectl get nodestaticpods "$1" -o "jsonpath={.spec.pods[?(@.setName==\"$SET\")].$2}"; }
revision() { jp '{.status.updateRevision}'; }
file_revision() { manifest_revision "$1" "staticpodset_${E2E_NS}_${SET}.yaml"; }
runs() { [[ $(mirror "$1" '{.metadata.annotations.staticpods\.dev/revision}') == "$2" ]] && mirror_ready "$E2E_NS" "$SET-$1"; }

web_set_yaml "$SET" "{}" v1 "progressDeadlineSeconds: 30" | kubectl apply -f - >/dev/null
wait_for "the set Ready on both nodes" 180 all_mirrors_ready "$E2E_NS" "$SET" || fail "set not Ready"
rev1=$(revision)
both_at() { runs "$A" "$1" && runs "$B" "$1"; }
wait_for "both at revision 1" 60 both_at "$rev1" || fail "not both at $rev1"
uid_a=$(mirror "$A" '{.metadata.uid}') uid_b=$(mirror "$B" '{.metadata.uid}')
ok "set Ready on both nodes at $rev1"

# An image no registry has: the pull fails, the pre-pull gate holds the write.
WEB_IMAGE=$REGISTRY/sps-e2e/no-such-image:1 WEB_PULL_POLICY=IfNotPresent \
  web_set_yaml "$SET" "{}" v2 "progressDeadlineSeconds: 30" | kubectl apply -f - >/dev/null
new_revision() { local r; r=$(revision); [[ -n $r && $r != "$rev1" ]]; }
wait_for "a new revision" 30 new_revision || fail "no new revision"
rev2=$(revision)
handed() { [[ $(entry "$A" revision) == "$rev2" ]]; }
wait_for "$A handed $rev2" 30 handed || fail "$A was not handed $rev2"
t0=$SECONDS
failed() { [[ $(entry "$A" lastFailure.revision) == "$rev2" ]]; }

# For 3 minutes from the handout (past the 30 s deadline and the 2 min pre-pull timeout), node A's
# pod must be the same Ready pod of revision 1 and its file must stay at revision 1; B untouched.
declared=""
while ((SECONDS - t0 < 180)); do
  { [[ $(mirror "$A" '{.metadata.uid}') == "$uid_a" ]] && runs "$A" "$rev1"; } ||
    fail "$A's serving pod was taken down after $((SECONDS - t0))s: $(kubectl get nodestaticpods "$A" -o jsonpath='{.status.pods}')"
  [[ $(file_revision "$A") == "$rev1" ]] || fail "$A's manifest was replaced by $(file_revision "$A") after $((SECONDS - t0))s"
  [[ $(entry "$B" revision) == "$rev1" && $(mirror "$B" '{.metadata.uid}') == "$uid_b" ]] ||
    fail "$B was touched after $((SECONDS - t0))s"
  if [[ -z $declared ]] && failed; then declared=$((SECONDS - t0)); fi
  sleep 2
done
[[ -n $declared ]] || fail "the rollout never declared $rev2 failed on $A"
message=$(kubectl get nodestaticpods "$A" -o "jsonpath={.status.pods[?(@.setName==\"$SET\")].message}")
[[ $message == *"failed on this node"* && $message == *kept* ]] || fail "$A's report does not say why: $message"
ok "$rev2 declared failed on $A after ${declared}s; for 180s $A kept serving $rev1 (report: \"${message:0:120}...\"); $B untouched"

echo "47-failed-revision-kept: $passed passed, 0 failed"
