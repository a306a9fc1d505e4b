#!/usr/bin/env bash
# Content-addressed revisions, on the real cluster: whoever can create StaticPodRevisions (or delete
# one and create another of the same name) cannot make a node run a pod the operator never rendered.
#   a set on both nodes, Available at revision R1; every node's entry carries R1's full digest
#   -> pause the set and change its template: the operator creates R2 and hands it to no node
#   -> replace R2's object (delete, then create the same name, labels, owner and spec with a forged
#   manifest, revision annotation and digest kept) -> the set asks for R2 and is unpaused: the
#   operator refuses the object (not the manifest it rendered) and hands R2 to no node; the R1 pods
#   keep running
#   -> replace R1's object the same way and restart node A's agent without its saved state, so that
#   it must read R1 again: it
#   refuses the manifest (its digest is not the one in A's NodeStaticPods entry), reports the set in
#   phase Error naming the revision and both digests, counts it in
#   staticpodset_agent_revision_digest_mismatches_total, and A's R1 pod keeps running untouched
#   -> delete the forged objects: the operator re-creates R2 and both nodes run it.
# Throughout, no manifest file and no mirror pod ever shows the forged pod.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

A=${NODES[0]} B=${NODES[1]}
SET=cas
# In the forged pod's command only: wherever it shows, the forgery got through.
FORGED_MARK=forged.by.e2e.85

cleanup() {
  kubectl delete sps "$SET" -n "$E2E_NS" --wait=true --timeout=120s >/dev/null 2>&1 || true
}
trap cleanup EXIT

# The CRDs of this tree first: helm installs CRDs only on a first install, and the digest fields
# are newer than a release installed before them (without them the API server drops the digests).
kubectl apply --server-side --force-conflicts -f "$REPO_ROOT/crds/" >/dev/null
install_product
ensure_e2e_namespace

apply_set() { # sleep-seconds paused
  kubectl apply -f - >/dev/null <<YAML
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: $SET, namespace: $E2E_NS}
spec:
  paused: $2
  template:
    metadata: {labels: {app: $SET}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: $BUSYBOX_IMAGE, imagePullPolicy: Never, command: [sleep, "$1"]}
YAML
}
# The set's entry in NODE's NodeStaticPods spec, and its report in the status: one field of each.
entry_of() { kubectl get nodestaticpods "$1" -o "jsonpath={.spec.pods[?(@.setName==\"$SET\")].$2}" 2>/dev/null; }
report_of() { kubectl get nodestaticpods "$1" -o "jsonpath={.status.pods[?(@.setName==\"$SET\")].$2}" 2>/dev/null; }
manifest_file() { echo "staticpodset_${E2E_NS}_$SET.yaml"; }
manifest_of() { node_cat "$1" manifests "$(manifest_file)" 2>/dev/null; }
mirror() { kubectl get pod -n "$E2E_NS" "$SET-$1" -o "jsonpath=$2" 2>/dev/null; }
running_id() { crictl_on "$1" ps -q --name main --state running --label "io.kubernetes.pod.name=$SET-$1" 2>/dev/null | head -n1; }

# --- forgery watch: every wait below also looks for the forged pod -------------------------------
forged_seen=
watch_forgery() {
  local n
  for n in "$A" "$B"; do
    if [[ $(manifest_of "$n") == *"$FORGED_MARK"* ]]; then forged_seen+=" $n's manifest file"; fi
    if [[ $(mirror "$n" '{.spec.containers[*].command}') == *"$FORGED_MARK"* ]]; then forged_seen+=" $n's mirror pod"; fi
  done
}
no_forgery() { [[ -z $forged_seen ]] || fail "the forged pod reached:$forged_seen"; }
# guarded CHECK...: for wait_for: CHECK holds, or the forged pod showed (no_forgery then fails).
guarded() { watch_forgery; [[ -n $forged_seen ]] || "$@"; }
# steady SECONDS CHECK...: CHECK keeps holding for SECONDS and the forged pod never shows.
steady() {
  local end=$((SECONDS + $1)); shift
  while ((SECONDS < end)); do
    watch_forgery
    no_forgery
    "$@" || return 1
    sleep 0.5
  done
}

# forge NAME: replaces StaticPodRevision NAME by an object of the same name, labels, owner and spec
# whose manifest runs another command; its revision annotation and spec.digest stay as they were.
# Only for a revision the set does not render right now: the operator re-creates the one it renders
# as soon as it is gone, which would race with the create.
is_forged() { [[ $(kubectl get spr -n "$E2E_NS" "$1" -o 'jsonpath={.spec.manifest.spec.containers[0].command}' 2>/dev/null) == *"$FORGED_MARK"* ]]; }
forge() {
  local name=$1 forged
  forged=$(kubectl get spr -n "$E2E_NS" "$name" -o json | python3 -c '
import json, sys
o = json.load(sys.stdin)
o["metadata"] = {k: v for k, v in o["metadata"].items() if k in ("name", "namespace", "labels", "ownerReferences")}
o["spec"]["manifest"]["spec"]["containers"][0]["command"] = ["sh", "-c", "echo " + sys.argv[1] + "; exec sleep 100000"]
json.dump(o, sys.stdout)' "$FORGED_MARK") || return 1
  kubectl delete spr -n "$E2E_NS" "$name" --wait=true >/dev/null || return 1
  kubectl create -f - >/dev/null <<<"$forged" || return 1
  is_forged "$name"
}

# --- 1. the set at R1 on both nodes, every entry with R1's full digest ---------------------------
apply_set 100000 false
kubectl wait -n "$E2E_NS" "sps/$SET" --for=condition=Available --timeout=180s >/dev/null ||
  fail "$SET not Available: $(kubectl get sps -n "$E2E_NS" "$SET" -o jsonpath='{.status}')"
wait_for "$SET Ready on both nodes" 120 all_mirrors_ready "$E2E_NS" "$SET" || fail "$SET not Ready on both nodes"
r1=$(sps_status "$SET" updateRevision)
d1=$(kubectl get spr -n "$E2E_NS" "$SET-$r1" -o jsonpath='{.spec.digest}')
[[ $d1 =~ ^[0-9a-f]{64}$ && $d1 == "$r1"* ]] || fail "StaticPodRevision $SET-$r1 has digest '$d1', not a SHA-256 beginning with $r1"
for n in "$A" "$B"; do
  [[ $(entry_of "$n" revision) == "$r1" && $(entry_of "$n" digest) == "$d1" ]] ||
    fail "$n's entry: revision '$(entry_of "$n" revision)' digest '$(entry_of "$n" digest)', want $r1 $d1"
done
ok "$SET Available at $r1; its StaticPodRevision and both nodes' entries carry the full digest $d1"

# --- 2. paused, a new template: R2 exists and no node has it -------------------------------------
apply_set 200000 true
new_revision() { r2=$(sps_status "$SET" updateRevision); [[ -n $r2 && $r2 != "$r1" ]] && kubectl get spr -n "$E2E_NS" "$SET-$r2" >/dev/null; }
wait_for "revision R2 of the new template" 60 new_revision || fail "no new revision after the template change"
at_r1() {
  local n
  for n in "$A" "$B"; do
    [[ $(entry_of "$n" revision) == "$r1" && $(mirror "$n" '{.metadata.annotations.staticpods\.dev/revision}') == "$r1" ]] || return 1
    mirror_ready "$E2E_NS" "$SET-$n" || return 1
  done
}
at_r1 || fail "a node left $r1 while the set is paused"
ok "paused: revision $r2 created, both nodes stay at $r1"

# --- 3. R2 replaced, the set asks for it and is unpaused: the operator hands it to no node --------
# Back to R1's template for the replacement, so that R2 is history the operator leaves alone.
apply_set 100000 true
asks_for_r1() { [[ $(sps_status "$SET" updateRevision) == "$r1" ]]; }
wait_for "the set to ask for $r1 again" 60 asks_for_r1 || fail "the set does not ask for $r1 again"
forge "$SET-$r2" || fail "could not replace StaticPodRevision $SET-$r2"
apply_set 200000 false
refused_by_operator() {
  kubectl logs -n "$RELEASE_NS" -l app.kubernetes.io/component=operator --tail=-1 --since=10m 2>/dev/null |
    grep "StaticPodRevision $SET-$r2 holds a different manifest or digest" >/dev/null
}
wait_for "the operator to refuse $SET-$r2" 60 guarded refused_by_operator || fail "the operator did not report the foreign $SET-$r2"
no_forgery
steady 20 at_r1 || fail "after unpausing: a node left $r1 (entries: $(entry_of "$A" revision) / $(entry_of "$B" revision))"
ok "unpaused with a forged $SET-$r2: the operator refuses it (\"holds a different manifest or digest\"), no node is handed $r2, both pods still run $r1"

# --- 4. R1 replaced, node A's agent must read it again: refused ----------------------------------
sum_a=$(manifest_of "$A" | sha256sum)
uid_a=$(mirror "$A" '{.metadata.uid}')
container_a=$(running_id "$A")
[[ -n $container_a ]] || fail "no running container of $SET on $A"
forge "$SET-$r1" || fail "could not replace StaticPodRevision $SET-$r1"
agent_pod() { kubectl get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=node-agent --field-selector "spec.nodeName=$1" -o jsonpath='{.items[0].metadata.name}'; }
old_agent=$(agent_pod "$A")
# Without its saved state: an agent restarted with it keeps R1's manifest it verified before and
# never reads the forged object; without it, it must read R1 again.
node_rm "$A" state "$A.json"
kubectl delete pod -n "$RELEASE_NS" "$old_agent" --wait=true >/dev/null
new_agent_ready() {
  local pod; pod=$(agent_pod "$A")
  [[ -n $pod && $pod != "$old_agent" ]] && mirror_ready "$RELEASE_NS" "$pod"
}
wait_for "a new agent on $A" 120 guarded new_agent_ready || fail "no new agent became Ready on $A"
no_forgery
refused_on_a() {
  [[ $(report_of "$A" phase) == Error && $(report_of "$A" message) == *"StaticPodRevision $E2E_NS/$SET-$r1"* ]]
}
wait_for "$A to report the refused revision" 120 guarded refused_on_a ||
  fail "$A reports phase '$(report_of "$A" phase)': $(report_of "$A" message)"
no_forgery
message=$(report_of "$A" message)
[[ $message =~ has\ digest\ ([0-9a-f]{64}),\ but\ the\ operator\ asked\ for\ ([0-9a-f]{64}) ]] ||
  fail "$A's message does not name both digests: $message"
[[ ${BASH_REMATCH[2]} == "$d1" && ${BASH_REMATCH[1]} != "$d1" ]] ||
  fail "$A's message: expected digest ${BASH_REMATCH[2]} (want $d1), actual ${BASH_REMATCH[1]}"
[[ $(report_of "$A" writtenRevision) == "$r1" ]] || fail "$A reports written revision '$(report_of "$A" writtenRevision)', want $r1"
ok "$A's restarted agent refuses the forged $SET-$r1: phase Error, \"$message\""

ip=$(agent_ip "$A")
mismatches() { (($(agent_metric "$ip" staticpodset_agent_revision_digest_mismatches_total) >= 1)); }
wait_for "the mismatch in $A's metrics" 30 mismatches ||
  fail "staticpodset_agent_revision_digest_mismatches_total on $A: $(agent_metric "$ip" staticpodset_agent_revision_digest_mismatches_total)"
node_run "$A" curl -s --max-time 5 "http://$ip:$AGENT_HTTP_PORT/metrics" | grep '^# HELP staticpodset_agent_revision_digest_mismatches_total ' >/dev/null ||
  fail "no # HELP for staticpodset_agent_revision_digest_mismatches_total"
ok "$A counts it: staticpodset_agent_revision_digest_mismatches_total $(agent_metric "$ip" staticpodset_agent_revision_digest_mismatches_total)"

steady 10 at_r1 || fail "a node left $r1 after the refusal"
[[ $(manifest_of "$A" | sha256sum) == "$sum_a" ]] || fail "$A's manifest file changed"
[[ $(mirror "$A" '{.metadata.uid}') == "$uid_a" && $(running_id "$A") == "$container_a" ]] ||
  fail "$A's pod was replaced (mirror uid $uid_a -> $(mirror "$A" '{.metadata.uid}'), container $container_a -> $(running_id "$A"))"
[[ $(report_of "$B" phase) == Written ]] || fail "$B reports phase '$(report_of "$B" phase)': $(report_of "$B" message)"
ok "$A's manifest file, mirror pod and container are untouched; $B, which had read $r1 before, still reports Written"

# --- 5. the forged objects deleted: the operator re-creates R2, both nodes run it ---------------
kubectl delete spr -n "$E2E_NS" "$SET-$r2" "$SET-$r1" --wait=true >/dev/null
at_r2() {
  local n
  for n in "$A" "$B"; do
    [[ $(mirror "$n" '{.metadata.annotations.staticpods\.dev/revision}') == "$r2" ]] || return 1
    mirror_ready "$E2E_NS" "$SET-$n" || return 1
    [[ $(report_of "$n" phase) == Written ]] || return 1
  done
}
wait_for "both nodes at $r2" 240 guarded at_r2 ||
  fail "not both at $r2: $A $(report_of "$A" phase) '$(report_of "$A" message)', $B $(report_of "$B" phase) '$(report_of "$B" message)'"
no_forgery
is_forged "$SET-$r2" && fail "$SET-$r2 is still the forged object"
[[ $(kubectl get spr -n "$E2E_NS" "$SET-$r2" -o jsonpath='{.spec.digest}') == "$r2"* ]] || fail "the re-created $SET-$r2 has no digest"
ok "forged objects deleted: the operator re-created $SET-$r2 and both nodes run it"

echo "85-content-addressed: $passed passed, 0 failed"
