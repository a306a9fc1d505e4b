#!/usr/bin/env bash
# Revisions, history and rollback on the real cluster, with the chart installed by helm:
#   apply a set, change its template twice -> three StaticPodRevisions numbered 1 2 3, owned by the set
#   -> apply the first template again -> no new object: revision 1 is renumbered 4 and the nodes run it
#   -> annotate staticpods.dev/rollback-to=3 -> template restored, annotation gone, RolledBack Event,
#      mirror pods at that revision (renumbered 5)
#   -> kubelet of node B stopped, three more templates -> B's mirror pod still shows the old revision
#      -> revisionHistoryLimit=2 prunes the old revisions but keeps the one B still runs
#      -> kubelet back -> B catches up and that revision goes too
#   -> delete the set -> the garbage collector removes its revisions.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

A=${NODES[0]} B=${NODES[1]}
SET=hist

cleanup() {
  kubelet_start "$B" >/dev/null 2>&1 || log "could not restart the kubelet of $B"
  kubectl delete sps -n "$E2E_NS" "$SET" --wait=true --timeout=120s >/dev/null 2>&1 || true
}
trap cleanup EXIT

install_product
ensure_e2e_namespace

# Every node at once: this suite is about history, and with B's kubelet stopped (section 4) B stays
# unavailable, which with the default maxUnavailable of 1 would rightly hold A back.
set_yaml() { web_set_yaml "$SET" "{}" "$1" 'updateStrategy: {rollingUpdate: {maxUnavailable: "100%"}}'; }

# "<number>:<hash> ..." of the set's revisions, by number; and the numbers alone.
history() {
  kubectl get staticpodrevisions -n "$E2E_NS" -l "staticpods.dev/set-name=$SET" \
    -o jsonpath='{range .items[*]}{.spec.revision}:{.spec.hash}{"\n"}{end}' | sort -n | tr '\n' ' ' | sed 's/ $//'
}
numbers() { history | tr ' ' '\n' | cut -d: -f1 | tr '\n' ' ' | sed 's/ $//'; }
numbers_are() { [[ $(numbers) == "$1" ]]; }
hash_of() { history | tr ' ' '\n' | awk -F: -v n="$1" '$1 == n {print $2}'; }
mirror_revision() { # node
  kubectl get pod -n "$E2E_NS" "$SET-$1" -o jsonpath='{.metadata.annotations.staticpods\.dev/revision}' 2>/dev/null
}
runs() { # node hash: the mirror pod shows the revision and is Ready
  [[ $(mirror_revision "$1") == "$2" ]] && mirror_ready "$E2E_NS" "$SET-$1"
}
both_run() { runs "$A" "$1" && runs "$B" "$1"; }
asks_for() { # number: the status names that revision as the one asked for
  [[ $(sps_status "$SET" updateRevisionNumber) == "$1" && $(sps_status "$SET" updateRevision) == "$(hash_of "$1")" ]]
}
rolled_out() { # number
  asks_for "$1" && both_run "$(hash_of "$1")" && [[ $(sps_status "$SET" currentRevision) == "$(hash_of "$1")" ]]
}
message() { kubectl get sps -n "$E2E_NS" "$SET" -o jsonpath='{.spec.template.spec.containers[0].env[0].value}'; }

# --- 1. three templates, three numbered revisions owned by the set -----------------------------
set_yaml v1 | kubectl apply -f - >/dev/null
wait_for "revision 1 on both nodes" 180 rolled_out 1 || fail "revision 1 not rolled out: $(kubectl get sps -n "$E2E_NS" "$SET" -o jsonpath='{.status}')"
# One change at a time: changes closer together than the operator's debounce could be one revision.
set_yaml v2 | kubectl apply -f - >/dev/null
wait_for "revision 2" 60 numbers_are "1 2" || fail "revisions after a template change: $(history)"
set_yaml v3 | kubectl apply -f - >/dev/null
wait_for "three revisions" 60 numbers_are "1 2 3" || fail "revisions after two template changes: $(history)"
wait_for "revision 3 on both nodes" 180 rolled_out 3 || fail "revision 3 not rolled out"
uid=$(kubectl get sps -n "$E2E_NS" "$SET" -o jsonpath='{.metadata.uid}')
owners=$(kubectl get staticpodrevisions -n "$E2E_NS" -l "staticpods.dev/set-name=$SET" \
  -o jsonpath='{range .items[*]}{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].uid}/{.metadata.ownerReferences[0].controller}{"\n"}{end}' | sort -u)
[[ $owners == "StaticPodSet/$uid/true" ]] || fail "revisions not all controlled by the set: $owners"
listing=$(kubectl get spr -n "$E2E_NS" -l "staticpods.dev/set-name=$SET")
grep -Eq '^NAME +SET +REVISION +HASH +AGE' <<<"$listing" || fail "kubectl get spr columns: $listing"
for n in 1 2 3; do
  grep -Eq "^$SET-$(hash_of "$n") +$SET +$n +$(hash_of "$n") " <<<"$listing" || fail "revision $n not listed as expected: $listing"
done
ok "two template changes: revisions 1 2 3, named <set>-<hash>, controlled by the set"
explain=$(kubectl explain staticpodrevision.spec)
for want in template manifest hash Immutable rollback-to; do
  grep -q "$want" <<<"$explain" || fail "kubectl explain staticpodrevision.spec lacks '$want'"
done
ok "kubectl explain staticpodrevision documents the fields"

# --- 2. the first template again: its revision is reused, renumbered 4 --------------------------
hash1=$(hash_of 1)
uid1=$(kubectl get spr -n "$E2E_NS" "$SET-$hash1" -o jsonpath='{.metadata.uid}')
set_yaml v1 | kubectl apply -f - >/dev/null
wait_for "revision 1 renumbered 4" 60 numbers_are "2 3 4" || fail "history after re-applying v1: $(history)"
[[ $(hash_of 4) == "$hash1" ]] || fail "revision 4 is not the first template's ($(history))"
[[ $(kubectl get spr -n "$E2E_NS" "$SET-$hash1" -o jsonpath='{.metadata.uid}') == "$uid1" ]] || fail "revision 1 was replaced, not reused"
wait_for "nodes run revision 4" 180 rolled_out 4 || fail "revision 4 not rolled out"
ok "the first template again: no new object, revision $hash1 renumbered 4 and running on both nodes"

# --- 3. rollback by annotation -------------------------------------------------------------------
hash3=$(hash_of 3)
kubectl annotate sps -n "$E2E_NS" "$SET" staticpods.dev/rollback-to=3 >/dev/null
rolled_back() {
  [[ $(message) == v3 ]] &&
    [[ -z $(kubectl get sps -n "$E2E_NS" "$SET" -o jsonpath='{.metadata.annotations.staticpods\.dev/rollback-to}') ]]
}
wait_for "template restored, annotation removed" 60 rolled_back || fail "rollback-to 3 not done: message $(message)"
wait_for "revision 3 renumbered 5" 60 numbers_are "2 4 5" || fail "history after the rollback: $(history)"
[[ $(hash_of 5) == "$hash3" ]] || fail "revision 5 is not revision 3's ($(history))"
wait_for "nodes run the rolled-back revision" 180 rolled_out 5 || fail "rolled-back revision not running"
kubectl get events.events.k8s.io -n "$E2E_NS" -o jsonpath='{.items[?(@.reason=="RolledBack")].note}' | grep -q "revision 3 ($hash3)" ||
  fail "no RolledBack Event naming revision 3"
ok "rollback-to=3: template restored, mirror pods at $hash3 (now revision 5), RolledBack Event"

# --- 4. pruning keeps what a node still runs ----------------------------------------------------
# With B's kubelet stopped, B's agent writes every new manifest but B's mirror pod keeps showing
# the revision its kubelet last ran: $hash3.
log "stopping the kubelet of $B"
kubelet_stop "$B" || fail "kubelet of $B did not stop"
expected="2 4 5"
for msg in v4 v5 v6; do
  set_yaml "$msg" | kubectl apply -f - >/dev/null
  expected="$expected $(( ${expected##* } + 1 ))"
  wait_for "template $msg as a new revision" 60 numbers_are "$expected" || fail "history after template $msg: $(history)"
done
[[ $expected == "2 4 5 6 7 8" ]] || fail "expected numbers: $expected"
hash8=$(hash_of 8)
wait_for "$A runs revision 8" 180 runs "$A" "$hash8" || fail "$A does not run revision 8"
b_report() { kubectl get nodestaticpods "$B" -o jsonpath="{.status.pods[?(@.setName==\"$SET\")].$1}"; }
b_behind() { [[ $(b_report writtenRevision) == "$hash8" && $(b_report mirrorPod.revision) == "$hash3" ]]; }
wait_for "$B wrote revision 8 but its mirror pod shows $hash3" 60 b_behind ||
  fail "report of $B: written $(b_report writtenRevision), mirror $(b_report mirrorPod.revision)"
kubectl patch sps -n "$E2E_NS" "$SET" --type=merge -p '{"spec":{"revisionHistoryLimit":2}}' >/dev/null
# Old and unused: 2, 4, 6, 7; the two newest stay. 5 is what B still runs, 8 is asked for.
wait_for "history pruned to the limit, in-use revision kept" 60 numbers_are "5 6 7 8" ||
  fail "history with revisionHistoryLimit=2 while $B runs revision 5: $(history)"
ok "revisionHistoryLimit=2: revisions 2 and 4 deleted, 6 and 7 kept, 5 kept while $B runs it"

log "starting the kubelet of $B again"
kubelet_start "$B"
wait_for "both nodes run revision 8" 180 rolled_out 8 || fail "revision 8 not rolled out after $B came back"
wait_for "revision 5 pruned once no node runs it" 60 numbers_are "6 7 8" || fail "history after $B caught up: $(history)"
ok "once $B runs revision 8, revision 5 is pruned too"

# --- 5. deleting the set deletes its history -----------------------------------------------------
kubectl delete sps -n "$E2E_NS" "$SET" --wait=true --timeout=120s >/dev/null || fail "set deletion did not finish"
no_history() { [[ -z $(kubectl get spr -n "$E2E_NS" -l "staticpods.dev/set-name=$SET" -o name) ]]; }
wait_for "revisions garbage-collected" 120 no_history || fail "revisions left after the set was deleted: $(history)"
ok "deleting the set removed its revisions (garbage collector)"

echo "30-revisions: $passed passed, 0 failed"
