#!/usr/bin/env bash
# Rolling updates on the real two-node cluster, with the chart installed by helm:
#   1. apply -> `kubectl wait --for=condition=Available` returns; both nodes at revision 1
#   2. new template, maxUnavailable 1: a watcher on the mirror pods sees each node go down once and
#      never both at once; both end at the new revision with a new kubernetes.io/config.hash
#   3. a template whose image cannot start, progressDeadlineSeconds 20: the first node fails,
#      the rollout halts (Progressing=False ProgressDeadlineExceeded) no sooner than the deadline,
#      the failure is recorded on the node's entry, the second node is never touched
#   4. autoRollback: the failed node returns to the last healthy revision and is Ready again
#   5. paused: a new template is not handed to any node; unpaused, it rolls out
#   6. partition 1: only the second node (by name) is updated; partition 0 finishes the rollout
#   7. restart (template annotation staticpods.dev/restartedAt): a new revision, new pods
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

A=${NODES[0]} B=${NODES[1]}
SET=roll
WATCH_OUT=$RUN_DIR/rollout-watch.json
watcher=""

cleanup() {
  [[ -n $watcher ]] && kill "$watcher" 2>/dev/null
  kubectl delete sps -n "$E2E_NS" "$SET" --wait=true --timeout=120s >/dev/null 2>&1 || true
}
trap cleanup EXIT

install_product
ensure_e2e_namespace

set_yaml() { web_set_yaml "$SET" "{}" "$1" "${2:-}"; }
# A template whose image cannot start (not on the node, and pulling is not allowed): never Ready.
# (A container that merely exits is Ready for an instant when it has no readiness probe, and a
# rollout with minReadySeconds 0 rightly counts that as available.)
broken_yaml() {
  cat <<YAML
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: $SET, namespace: $E2E_NS}
spec:
  nodeSelector: {}
  progressDeadlineSeconds: 20
  template:
    metadata: {labels: {app: $SET}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - {name: web, image: docker.io/library/staticpodset-no-such-image:1, imagePullPolicy: Never}
YAML
}

jp() { kubectl get sps -n "$E2E_NS" "$SET" -o "jsonpath=$1" 2>/dev/null; }
cond() { jp "{.status.conditions[?(@.type==\"$1\")].$2}"; }
mirror() { kubectl get pod -n "$E2E_NS" "$SET-$1" -o "jsonpath=$2" 2>/dev/null; }
mirror_rev() { mirror "$1" '{.metadata.annotations.staticpods\.dev/revision}'; }
runs() { [[ $(mirror_rev "$1") == "$2" ]] && mirror_ready "$E2E_NS" "$SET-$1"; }
entry() { kubectl get nodestaticpods "$1" -o "jsonpath={.spec.pods[?(@.setName==\"$SET\")].$2}"; }
revision() { jp '{.status.updateRevision}'; }
observed() { [[ $(jp '{.status.observedGeneration}') == "$(jp '{.metadata.generation}')" ]]; }
complete_at() { # hash: both nodes run it and the status says the rollout is complete
  runs "$A" "$1" && runs "$B" "$1" && [[ $(cond Progressing reason) == RolloutComplete ]] &&
    [[ $(jp '{.status.currentRevision}') == "$1" ]]
}
new_revision() { local r; r=$(revision); [[ -n $r && $r != "$1" ]]; }

# --- 1. a new set: kubectl wait --for=condition=Available ----------------------------------------
set_yaml v1 | kubectl apply -f - >/dev/null
kubectl wait -n "$E2E_NS" "sps/$SET" --for=condition=Available --timeout=180s >/dev/null ||
  fail "kubectl wait --for=condition=Available timed out: $(jp '{.status}')"
rev1=$(revision)
wait_for "revision 1 on both nodes" 180 complete_at "$rev1" || fail "revision $rev1 not rolled out: $(jp '{.status}')"
counts=$(jp '{.status.desiredNumberScheduled} {.status.currentNumberScheduled} {.status.numberReady} {.status.updatedNumberScheduled} {.status.numberAvailable} {.status.numberUnavailable}')
[[ $counts == "2 2 2 2 2 0" ]] || fail "desired current ready updated available unavailable: $counts"
[[ -n $(entry "$A" assignedTime) ]] || fail "entry of $A has no assignedTime"
ok "kubectl wait --for=condition=Available returned; counts $counts at revision $rev1"

# --- 2. maxUnavailable 1: never both nodes down ---------------------------------------------------
hash_a=$(mirror "$A" '{.metadata.annotations.kubernetes\.io/config\.hash}')
hash_b=$(mirror "$B" '{.metadata.annotations.kubernetes\.io/config\.hash}')
primed=$RUN_DIR/rollout-watch.primed
rm -f "$primed"
PRIMED_FILE=$primed KUBECTL=$(command -v kubectl) python3 "$REPO_ROOT/tests/e2e/rollout-watch.py" "$E2E_NS" "$SET" 1 "$A" "$B" >"$WATCH_OUT" &
watcher=$!
# The watcher must have seen both pods Ready before the update starts.
wait_for "watcher to see both pods Ready" 30 test -e "$primed" || fail "watcher did not start or did not see both pods Ready"
t0=$SECONDS
set_yaml v2 | kubectl apply -f - >/dev/null
wait_for "new revision" 30 new_revision "$rev1" || fail "no new revision after a template change"
rev2=$(revision)
wait_for "both nodes at revision 2" 240 complete_at "$rev2" || fail "revision $rev2 not rolled out: $(jp '{.status}')"
took=$((SECONDS - t0))
kill "$watcher"; wait "$watcher" 2>/dev/null || true; watcher=""
summary=$(cat "$WATCH_OUT")
log "watcher: $summary"
python3 - "$summary" "$A" "$B" <<'PY' || fail "maxUnavailable=1 violated or not observed: $summary"
import json, sys
s, nodes = json.loads(sys.argv[1]), sys.argv[2:]
assert not s["violations"], "both nodes unavailable at once"
assert s["max_unavailable_seen"] == 1, "the watcher never saw a node go down"
assert all(s["outages"][n] >= 1 for n in nodes), "a node was updated without an outage?"
PY
[[ $(mirror "$A" '{.metadata.annotations.kubernetes\.io/config\.hash}') != "$hash_a" ]] || fail "config hash of $A unchanged"
[[ $(mirror "$B" '{.metadata.annotations.kubernetes\.io/config\.hash}') != "$hash_b" ]] || fail "config hash of $B unchanged"
ok "maxUnavailable=1: one node down at a time (watcher: $summary), both at $rev2 with new config hashes in ${took}s"

# --- 3. a revision that cannot start halts the rollout at its deadline -----------------------------
uid_b=$(mirror "$B" '{.metadata.uid}')
assigned_b=$(entry "$B" assignedTime)
t0=$SECONDS
broken_yaml | kubectl apply -f - >/dev/null
wait_for "new revision" 30 new_revision "$rev2" || fail "no new revision for the broken template"
bad=$(revision)
halted() { [[ $(cond Progressing reason) == ProgressDeadlineExceeded && $(cond Progressing status) == False ]]; }
wait_for "rollout halted" 90 halted || fail "rollout of $bad not halted: $(jp '{.status.conditions}')"
halted_after=$((SECONDS - t0))
((halted_after >= 20)) || fail "halted after ${halted_after}s, before the 20s deadline"
[[ $(entry "$A" lastFailure.revision) == "$bad" && $(entry "$A" lastFailure.reason) == ProgressDeadlineExceeded ]] ||
  fail "failure not recorded on $A's entry: $(kubectl get nodestaticpods "$A" -o jsonpath='{.spec.pods}')"
[[ $(entry "$B" revision) == "$rev2" && $(entry "$B" assignedTime) == "$assigned_b" ]] || fail "$B was handed $(entry "$B" revision)"
{ [[ $(mirror "$B" '{.metadata.uid}') == "$uid_b" ]] && runs "$B" "$rev2"; } || fail "$B's pod was touched"
[[ $(cond Degraded status) == True && $(cond Degraded reason) == RevisionFailed ]] || fail "Degraded: $(cond Degraded reason)"
cond Progressing message | grep -q "$A" || fail "Progressing message does not name $A: $(cond Progressing message)"
kubectl get events.events.k8s.io -n "$E2E_NS" -o jsonpath='{.items[?(@.reason=="ProgressDeadlineExceeded")].type}' | grep -q Warning ||
  fail "no Warning Event ProgressDeadlineExceeded"
ok "revision $bad failed on $A; halted after ${halted_after}s (deadline 20s); $B untouched; Degraded=RevisionFailed; Warning Event"

# --- 4. autoRollback returns the failed node to the last healthy revision --------------------------
kubectl patch sps -n "$E2E_NS" "$SET" --type=merge -p '{"spec":{"updateStrategy":{"rollingUpdate":{"autoRollback":true}}}}' >/dev/null
wait_for "$A back at $rev2 and Ready" 120 runs "$A" "$rev2" || fail "$A not rolled back: entry $(entry "$A" revision), mirror $(mirror_rev "$A")"
[[ $(entry "$A" revision) == "$rev2" ]] || fail "entry of $A: $(entry "$A" revision)"
[[ $(mirror "$B" '{.metadata.uid}') == "$uid_b" ]] || fail "$B's pod was touched by the rollback"
cond Progressing message | grep -q "returned to revision $rev2" || fail "Progressing message: $(cond Progressing message)"
ok "autoRollback: $A returned to $rev2 and Ready; $B untouched throughout"

# --- 5. paused holds the rollout -----------------------------------------------------------------
set_yaml v3 'paused: true' | kubectl apply -f - >/dev/null
wait_for "paused generation observed" 30 observed || fail "paused spec not observed"
wait_for "Progressing=Unknown Paused" 30 bash -c "[[ \$(kubectl get sps -n $E2E_NS $SET -o jsonpath='{.status.conditions[?(@.type==\"Progressing\")].reason}') == Paused ]]" ||
  fail "Progressing: $(cond Progressing reason)"
rev3=$(revision)
[[ $rev3 != "$rev2" && $rev3 != "$bad" ]] || fail "no new revision for v3"
[[ $(entry "$A" revision) == "$rev2" && $(entry "$B" revision) == "$rev2" ]] || fail "a node was handed $rev3 while paused"
[[ $(cond Progressing status) == Unknown ]] || fail "Progressing status while paused: $(cond Progressing status)"
kubectl patch sps -n "$E2E_NS" "$SET" --type=merge -p '{"spec":{"paused":false}}' >/dev/null
wait_for "both nodes at $rev3" 240 complete_at "$rev3" || fail "revision $rev3 not rolled out after unpausing: $(jp '{.status}')"
ok "paused: $rev3 handed to no node (Progressing=Unknown/Paused); unpaused, rolled out"

# --- 6. partition: a one-node canary ---------------------------------------------------------------
set_yaml v4 'updateStrategy: {rollingUpdate: {partition: 1}}' | kubectl apply -f - >/dev/null
wait_for "new revision" 30 new_revision "$rev3" || fail "no new revision for v4"
rev4=$(revision)
canary() { runs "$B" "$rev4" && [[ $(cond Progressing reason) == PartitionRolledOut ]]; }
wait_for "$B (position 1) at $rev4" 120 canary || fail "canary: $B at $(mirror_rev "$B"), Progressing $(cond Progressing reason)"
{ runs "$A" "$rev3" && [[ $(entry "$A" revision) == "$rev3" ]]; } || fail "$A (below the partition) left $rev3"
kubectl patch sps -n "$E2E_NS" "$SET" --type=merge -p '{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}' >/dev/null
wait_for "both nodes at $rev4" 120 complete_at "$rev4" || fail "revision $rev4 not rolled out with partition 0"
ok "partition 1: only $B took $rev4 (PartitionRolledOut); partition 0 finished the rollout"

# --- 7. restart: same spec, new pods --------------------------------------------------------------
uid_a=$(mirror "$A" '{.metadata.uid}')
kubectl patch sps -n "$E2E_NS" "$SET" --type=merge -p \
  '{"spec":{"template":{"metadata":{"annotations":{"staticpods.dev/restartedAt":"'"$(date -Is)"'"}}}}}' >/dev/null
wait_for "new revision" 30 new_revision "$rev4" || fail "restart made no new revision"
rev5=$(revision)
wait_for "both nodes at $rev5" 120 complete_at "$rev5" || fail "restart revision $rev5 not rolled out"
[[ $(mirror "$A" '{.metadata.uid}') != "$uid_a" ]] || fail "mirror pod of $A not replaced by the restart"
ok "restart by annotation: revision $rev5, pods replaced on both nodes"

echo "50-rollout: $passed passed, 0 failed"
