#!/usr/bin/env bash
# The kubectl plugin (`kubectl staticpodset`, the binary images/build.sh leaves beside the images)
# on the real two-node cluster, with the chart installed by helm, run through kubectl's own
# plugin lookup on the PATH:
#   1. a new set: `rollout status` waits, then exits 0 once Progressing=RolloutComplete for the
#      current generation; `nodes` shows both nodes at its revision
#   2. a new template: `rollout status` waits for the new generation (not the old complete
#      status) and exits 0 only once both nodes run the new revision
#   3. `rollout pause` sets spec.paused (a second pause is refused), a new template is held, and
#      `rollout status --timeout=1s` exits 1; `--watch=false` prints one line and exits 0;
#      `rollout resume` clears spec.paused and the rollout finishes
#   4. a revision that cannot start, progressDeadlineSeconds 20: `rollout status` exits 1 with
#      the deadline message; `nodes` shows the failure on the node that tried it
#   5. `rollout history`: every revision with its number and hash, as a table and as JSON;
#      `--revision N` prints that revision's template
#   6. `rollout undo`: back to the revision before the failed one (staticpods.dev/rollback-to);
#      the status asks for it again and the nodes run it
#   7. `rollout restart`: a new revision, rolled out to both nodes
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

A=${NODES[0]} B=${NODES[1]}
SET=plugin
PLUGIN_DIR=$(mktemp -d)

cleanup() {
  kubectl delete sps -n "$E2E_NS" "$SET" --wait=true --timeout=120s >/dev/null 2>&1 || true
  rm -rf "$PLUGIN_DIR"
}
trap cleanup EXIT

install_product
ensure_e2e_namespace
kubectl delete sps -n "$E2E_NS" "$SET" --ignore-not-found --wait=true --timeout=120s >/dev/null

# kubectl finds plugins as kubectl-<name> on the PATH: the one built with the images, alone in a
# directory of its own (the images directory holds other files).
ln -s "$PRODUCT_IMAGES/kubectl-staticpodset" "$PLUGIN_DIR/kubectl-staticpodset"
export PATH="$PLUGIN_DIR:$PATH"
plugins=$(kubectl plugin list 2>&1 || true)
grep -q "$PLUGIN_DIR/kubectl-staticpodset" <<<"$plugins" || fail "kubectl plugin list does not show the plugin: $plugins"
ok "kubectl plugin list finds kubectl-staticpodset"

sps() { kubectl staticpodset -n "$E2E_NS" "$@"; }
# run_sps ARGS...: runs the plugin, output (stdout and stderr) in $out, exit code in $rc.
run_sps() { rc=0; out=$(sps "$@" 2>&1) || rc=$?; log "kubectl staticpodset $* -> $rc"; }

set_yaml() { web_set_yaml "$SET" "{}" "$1" "${2:-}"; }
# A template whose image cannot start (not on the node, and pulling is not allowed): never Ready.
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
revision() { jp '{.status.updateRevision}'; }
new_revision() { local r; r=$(revision); [[ -n $r && $r != "$1" ]]; }
mirror_rev() { kubectl get pod -n "$E2E_NS" "$SET-$1" -o jsonpath='{.metadata.annotations.staticpods\.dev/revision}' 2>/dev/null; }
runs() { [[ $(mirror_rev "$1") == "$2" ]] && mirror_ready "$E2E_NS" "$SET-$1"; }
entry() { kubectl get nodestaticpods "$1" -o "jsonpath={.spec.pods[?(@.setName==\"$SET\")].$2}"; }
# complete: what `rollout status` must have seen when it exits 0.
complete() {
  [[ $(cond Progressing reason) == RolloutComplete && $(jp '{.status.observedGeneration}') == "$(jp '{.metadata.generation}')" ]]
}
# "<number>:<hash>" of every revision of the set, by number, one per line.
history() {
  kubectl get staticpodrevisions -n "$E2E_NS" -l "staticpods.dev/set-name=$SET" \
    -o jsonpath='{range .items[*]}{.spec.revision}:{.spec.hash}{"\n"}{end}' | sort -n
}
hash_of() { history | awk -F: -v n="$1" '$1 == n {print $2}'; }
waited() { grep -Eq "^Waiting for StaticPodSet $E2E_NS/$SET (spec update to be observed|rollout to finish)" <<<"$out"; }

# --- 1. a new set: rollout status waits, then exits 0 ----------------------------------------------
set_yaml v1 | kubectl apply -f - >/dev/null
run_sps rollout status "$SET" --timeout=180s
((rc == 0)) || fail "rollout status of a new set exited $rc: $out"
grep -q "^StaticPodSet $E2E_NS/$SET successfully rolled out$" <<<"$out" || fail "no success line: $out"
waited || fail "rollout status of a new set returned without waiting: $out"
complete || fail "rollout status exited 0 before RolloutComplete: $(jp '{.status}')"
rev1=$(revision)
{ runs "$A" "$rev1" && runs "$B" "$rev1"; } || fail "rollout status exited 0 but the nodes run $(mirror_rev "$A") and $(mirror_rev "$B"), not $rev1"
run_sps nodes "$SET"
((rc == 0)) || fail "nodes exited $rc: $out"
grep -Eq '^NODE +TARGET +RUNNING +FAILED +SOURCE +READY +MESSAGE$' <<<"$out" || fail "nodes header: $out"
for n in "$A" "$B"; do
  grep -Eq "^$n +$rev1 +$rev1 +<none> +(File|URL) +true" <<<"$out" || fail "nodes does not show $n at $rev1: $out"
done
run_sps nodes "$SET" -o json
python3 - "$out" "$rev1" "$A" "$B" <<'PY' || fail "nodes -o json: $out"
import json, sys
rows, rev, nodes = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:]
assert [r["node"] for r in rows] == nodes, rows
assert all(r["target"] == rev and r["running"] == rev and r["ready"] for r in rows), rows
PY
ok "new set: rollout status waited and exited 0 at $rev1 (RolloutComplete); nodes shows $A and $B at $rev1"

# --- 2. a new template: the old complete status is not taken for the new one ------------------------
set_yaml v2 | kubectl apply -f - >/dev/null
run_sps rollout status "$SET" --timeout=180s
((rc == 0)) || fail "rollout status of v2 exited $rc: $out"
waited || fail "rollout status of v2 returned without waiting: $out"
complete || fail "rollout status of v2 exited 0 before RolloutComplete: $(jp '{.status}')"
rev2=$(revision)
[[ $rev2 != "$rev1" ]] || fail "rollout status exited 0 before the new revision existed: $out"
{ runs "$A" "$rev2" && runs "$B" "$rev2"; } || fail "rollout status exited 0 but the nodes run $(mirror_rev "$A") and $(mirror_rev "$B"), not $rev2"
ok "v2: rollout status followed the update ($(grep -c '^' <<<"$out") lines) and exited 0 once both nodes ran $rev2"

# --- 3. pause, a held template, --timeout, --watch=false, resume ----------------------------------
run_sps rollout pause "$SET"
{ ((rc == 0)) && [[ $out == "staticpodset.staticpods.dev/$SET paused" ]]; } || fail "rollout pause: $rc $out"
[[ $(jp '{.spec.paused}') == true ]] || fail "spec.paused after rollout pause: $(jp '{.spec.paused}')"
run_sps rollout pause "$SET"
{ ((rc == 1)) && grep -q 'is already paused' <<<"$out"; } || fail "a second pause: $rc $out"
# The template as it is now plus paused, so that apply keeps the pause.
set_yaml v3 'paused: true' | kubectl apply -f - >/dev/null
wait_for "new revision" 30 new_revision "$rev2" || fail "no new revision for v3"
rev3=$(revision)
t0=$SECONDS
run_sps rollout status "$SET" --timeout=1s
((rc == 1)) || fail "rollout status --timeout=1s of a paused rollout exited $rc: $out"
grep -q '^error: timed out after 1s waiting for StaticPodSet' <<<"$out" || fail "no timeout message: $out"
((SECONDS - t0 < 15)) || fail "rollout status --timeout=1s took $((SECONDS - t0))s"
run_sps rollout status "$SET" --watch=false
{ ((rc == 0)) && [[ $(grep -c '^' <<<"$out") == 1 ]] && grep -q 'rollout is paused' <<<"$out"; } ||
  fail "rollout status --watch=false while paused: $rc $out"
[[ $(entry "$A" revision) == "$rev2" && $(entry "$B" revision) == "$rev2" ]] || fail "a node was handed $rev3 while paused"
run_sps rollout resume "$SET"
{ ((rc == 0)) && [[ $out == "staticpodset.staticpods.dev/$SET resumed" ]]; } || fail "rollout resume: $rc $out"
[[ $(jp '{.spec.paused}') != true ]] || fail "spec.paused after rollout resume: $(jp '{.spec.paused}')"
run_sps rollout status "$SET" --timeout=180s
{ ((rc == 0)) && complete; } || fail "rollout status after resume exited $rc: $out"
{ runs "$A" "$rev3" && runs "$B" "$rev3"; } || fail "after resume the nodes run $(mirror_rev "$A") and $(mirror_rev "$B"), not $rev3"
ok "pause set spec.paused (twice refused), held $rev3, --timeout=1s exited 1, --watch=false printed once; resume rolled it out"

# --- 4. a failing revision: rollout status exits 1 at the progress deadline -----------------------
broken_yaml | kubectl apply -f - >/dev/null
t0=$SECONDS
run_sps rollout status "$SET" --timeout=180s
((rc == 1)) || fail "rollout status of a failing revision exited $rc: $out"
bad=$(revision)
[[ $bad != "$rev3" ]] || fail "no new revision for the broken template"
grep -q "^error: StaticPodSet $E2E_NS/$SET exceeded its progress deadline: revision $bad failed on " <<<"$out" ||
  fail "no deadline message: $out"
grep -qF "$(cond Progressing message)" <<<"$out" || fail "the message is not the condition's ($(cond Progressing message)): $out"
((SECONDS - t0 >= 20)) || fail "rollout status failed after $((SECONDS - t0))s, before the 20s deadline"
failed_node=$(entry "$A" lastFailure.revision)
[[ $failed_node == "$bad" ]] || fail "failure not recorded on $A: $(entry "$A" lastFailure)"
run_sps nodes "$SET"
grep -Eq "^$A +$bad +[^ ]+ +$bad \(ProgressDeadlineExceeded\) " <<<"$out" || fail "nodes does not show $A's failure: $out"
grep -Eq "^$B +$rev3 +$rev3 +<none> " <<<"$out" || fail "nodes does not show $B still at $rev3: $out"
ok "failing revision $bad: rollout status exited 1 after $((SECONDS - t0))s with the deadline message; nodes shows the failure on $A"

# --- 5. history -------------------------------------------------------------------------------------
run_sps rollout history "$SET"
((rc == 0)) || fail "rollout history exited $rc: $out"
[[ $(head -n 1 <<<"$out") == "staticpodset.staticpods.dev/$SET" ]] || fail "history title: $out"
grep -Eq '^REVISION +HASH +AGE +CHANGE-CAUSE$' <<<"$out" || fail "history header: $out"
for n in 1 2 3 4; do
  grep -Eq "^$n +$(hash_of "$n") +[0-9]+[smhd]" <<<"$out" || fail "history does not list revision $n ($(hash_of "$n")): $out"
done
[[ $(hash_of 4) == "$bad" && $(hash_of 3) == "$rev3" ]] || fail "revision numbers: $(history | tr '\n' ' ')"
run_sps rollout history "$SET" -o json
python3 - "$out" "$(history | tr '\n' ' ')" <<'PY' || fail "history -o json: $out"
import json, sys
rows = json.loads(sys.argv[1])
want = [tuple(p.split(":")) for p in sys.argv[2].split()]
assert [(str(r["revision"]), r["hash"]) for r in rows] == want, (rows, want)
PY
run_sps rollout history "$SET" --revision 3
{ ((rc == 0)) && grep -q "^staticpodset.staticpods.dev/$SET with revision #3 (hash $rev3)$" <<<"$out" && grep -q 'value: v3' <<<"$out"; } ||
  fail "history --revision 3: $rc $out"
run_sps rollout history "$SET" --revision 99
((rc == 1)) || fail "history --revision 99 exited $rc: $out"
ok "history lists revisions 1-4 with their hashes (table and JSON); --revision 3 shows the v3 template"

# --- 6. undo: back to the revision before the failed one -------------------------------------------
# The halt holds until the template changes; the roll back is that change. A longer deadline than
# the broken template's 20s, so a slow node does not fail the good revision.
kubectl patch sps -n "$E2E_NS" "$SET" --type=merge -p '{"spec":{"progressDeadlineSeconds":180}}' >/dev/null
run_sps rollout undo "$SET"
{ ((rc == 0)) && [[ $out == "staticpodset.staticpods.dev/$SET rolled back" ]]; } || fail "rollout undo: $rc $out"
back() { [[ $(revision) == "$rev3" && $(jp '{.status.updateRevisionNumber}') == 5 ]]; }
wait_for "the set asks for $rev3 again, as revision 5" 60 back ||
  fail "after undo: updateRevision $(revision), number $(jp '{.status.updateRevisionNumber}')"
[[ -z $(jp '{.metadata.annotations.staticpods\.dev/rollback-to}') ]] || fail "the rollback-to annotation was not consumed"
run_sps rollout status "$SET" --timeout=180s
{ ((rc == 0)) && complete; } || fail "rollout status after undo exited $rc: $out"
{ runs "$A" "$rev3" && runs "$B" "$rev3"; } || fail "after undo the nodes run $(mirror_rev "$A") and $(mirror_rev "$B"), not $rev3"
run_sps rollout undo "$SET" --to-revision=42
{ ((rc == 1)) && grep -q 'unable to find revision 42' <<<"$out"; } || fail "undo to an unknown revision: $rc $out"
ok "undo: back to $rev3 (revision 3, now 5), rolled out on both nodes; an unknown revision is refused"

# --- 7. restart -------------------------------------------------------------------------------------
run_sps rollout restart "$SET"
{ ((rc == 0)) && [[ $out == "staticpodset.staticpods.dev/$SET restarted" ]]; } || fail "rollout restart: $rc $out"
[[ -n $(jp '{.spec.template.metadata.annotations.staticpods\.dev/restartedAt}') ]] || fail "no restartedAt on the template"
wait_for "new revision" 30 new_revision "$rev3" || fail "restart made no new revision"
rev6=$(revision)
run_sps rollout status "$SET" --timeout=180s
{ ((rc == 0)) && complete; } || fail "rollout status after restart exited $rc: $out"
{ runs "$A" "$rev6" && runs "$B" "$rev6"; } || fail "after restart the nodes run $(mirror_rev "$A") and $(mirror_rev "$B"), not $rev6"
run_sps nodes "$SET"
for n in "$A" "$B"; do
  grep -Eq "^$n +$rev6 +$rev6 +.* (File|URL) +true" <<<"$out" || fail "nodes does not show $n at $rev6: $out"
done
ok "restart: new revision $rev6 (restartedAt on the template), rolled out; nodes shows both nodes at it"

echo "90-kubectl-plugin: $passed passed, 0 failed"
