#!/usr/bin/env bash
# End to end on the real cluster, with the chart installed by helm and the agent running as a real
# DaemonSet pod:
#   apply a set -> mirror pods Ready on the selected nodes only -> status counts right
#   -> edit the template -> pods replaced, new revision and config hash observed
#   -> relabel a node -> the pod moves -> delete a mirror pod -> it comes back
#   -> kill the container with crictl -> the kubelet restarts it
#   -> a foreign manifest with the same pod name is a reported conflict and stays untouched
#   -> delete the set -> manifests and mirror pods gone, the kubeadm-style foreign manifest still there.
# Prints the time from `kubectl apply` to all mirror pods Ready on two nodes, and the agent's idle RSS.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

A=${NODES[0]} B=${NODES[1]}
LABEL=e2e.staticpods.dev/web
# A kubeadm-style manifest we do not own, on node A.
FOREIGN=kube-apiserver.yaml

cleanup() {
  kubectl delete sps --all -n "$E2E_NS" --wait=true --timeout=120s >/dev/null 2>&1 || true
  kubectl label node "$A" "$B" "$LABEL-" >/dev/null 2>&1 || true
  node_rm "$A" manifests "$FOREIGN" || true
  node_rm "$B" manifests conflict-owner.yaml || true
}
trap cleanup EXIT

install_product
explain=$(kubectl explain staticpodset.spec)
for want in "nodeSelector" "template" "Which nodes run the pod" "static pod"; do
  grep -q "$want" <<<"$explain" || fail "kubectl explain staticpodset.spec lacks '$want':
$explain"
done
ok "kubectl explain staticpodset.spec documents the fields"
ensure_e2e_namespace

# A kubeadm-style manifest we do not own, next to ours. It must stay byte-for-byte untouched.
node_put "$A" manifests "$FOREIGN" <<YAML
# written by "kubeadm" for this test; StaticPodSet must never touch it
apiVersion: v1
kind: Pod
metadata: {name: kube-apiserver-lookalike, namespace: kube-system, labels: {tier: control-plane}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: $BUSYBOX_IMAGE, imagePullPolicy: Never, command: [sleep, "100000"]}
YAML
foreign_sum=$(node_sha256 "$A" manifests "$FOREIGN")

# --- 1. apply a set for both nodes; time to all mirror pods Ready ------------------------------

both_ready() { mirror_ready "$E2E_NS" "web-$A" && mirror_ready "$E2E_NS" "web-$B"; }
t0=$(date +%s.%N)
web_set_yaml web '{}' v1 | kubectl apply -f - >/dev/null
wait_for "mirror pods Ready on both nodes" 180 both_ready || fail "web mirror pods not Ready on both nodes"
t1=$(date +%s.%N)
apply_to_ready=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
ok "kubectl apply -> both mirror pods Ready in ${apply_to_ready}s"

counts_are() { # desired ready updated
  [[ $(sps_status web desiredNumberScheduled) == "$1" && $(sps_status web numberReady) == "$2" &&
     $(sps_status web updatedNumberScheduled) == "$3" ]]
}
wait_for "status 2/2/2" 60 counts_are 2 2 2 || fail "status counts: $(kubectl get sps -n "$E2E_NS" web -o jsonpath='{.status}')"
kubectl get sps -n "$E2E_NS" web | grep -Eq '^web +2 +2 +2 ' || fail "kubectl get sps columns: $(kubectl get sps -n "$E2E_NS" web)"
for n in "$A" "$B"; do
  m=$(kubectl get pod -n "$E2E_NS" "web-$n" -o jsonpath='{.metadata.annotations.kubernetes\.io/config\.mirror}')
  [[ -n $m ]] || fail "web-$n is not a mirror pod"
  [[ $(kubectl get pod -n "$E2E_NS" "web-$n" -o jsonpath='{.metadata.labels.app}') == web ]] || fail "template label missing on web-$n"
done
kubectl get pods -n "$E2E_NS" -l app=web -o name | grep -c . | grep -qx 2 || fail "label selector app=web does not find both mirror pods"
ok "status desired=2 ready=2 up-to-date=2; mirror pods carry config.mirror and template labels"

# --- 2. edit the template: new revision, new config hash on both nodes ------------------------
rev1=$(sps_status web updateRevision)
hash_a1=$(kubectl get pod -n "$E2E_NS" "web-$A" -o jsonpath='{.metadata.annotations.kubernetes\.io/config\.hash}')
web_set_yaml web '{}' v2 | kubectl apply -f - >/dev/null
wait_for "new revision" 30 bash -c "[[ \$(kubectl get sps -n $E2E_NS web -o jsonpath='{.status.updateRevision}') != '$rev1' ]]" || fail "no new revision"
rev2=$(sps_status web updateRevision)
on_rev2() {
  local n
  for n in "$A" "$B"; do
    [[ $(kubectl get pod -n "$E2E_NS" "web-$n" -o jsonpath='{.metadata.annotations.staticpods\.dev/revision}' 2>/dev/null) == "$rev2" ]] || return 1
    mirror_ready "$E2E_NS" "web-$n" || return 1
  done
}
wait_for "both mirror pods at $rev2" 180 on_rev2 || fail "mirror pods did not reach revision $rev2"
hash_a2=$(kubectl get pod -n "$E2E_NS" "web-$A" -o jsonpath='{.metadata.annotations.kubernetes\.io/config\.hash}')
[[ $hash_a1 != "$hash_a2" ]] || fail "config hash unchanged after a template edit"
wait_for "status up to date" 60 counts_are 2 2 2 || fail "status after the edit: $(kubectl get sps -n "$E2E_NS" web -o jsonpath='{.status}')"
ok "template edit: revision $rev1 -> $rev2, config hash $hash_a1 -> $hash_a2 on $A"

# --- 3. node selector and relabel: the pod moves ----------------------------------------------
kubectl label node "$A" "$LABEL=yes" --overwrite >/dev/null
web_set_yaml web "{matchLabels: {$LABEL: \"yes\"}}" v2 | kubectl apply -f - >/dev/null
only_on() { # node-with node-without
  mirror_ready "$E2E_NS" "web-$1" && ! kubectl get pod -n "$E2E_NS" "web-$2" >/dev/null 2>&1 &&
    ! node_has "$2" manifests "staticpodset_${E2E_NS}_web.yaml"
}
wait_for "web only on $A" 120 only_on "$A" "$B" || fail "selector did not narrow web to $A"
[[ $(sps_status web desiredNumberScheduled) == 1 ]] || wait_for "desired=1" 30 bash -c "[[ \$(kubectl get sps -n $E2E_NS web -o jsonpath='{.status.desiredNumberScheduled}') == 1 ]]" || fail "desired count not 1"
kubectl label node "$A" "$LABEL-" >/dev/null
kubectl label node "$B" "$LABEL=yes" --overwrite >/dev/null
wait_for "web moved to $B" 180 only_on "$B" "$A" || fail "web did not move from $A to $B"
ok "relabel: web moved from $A to $B"

# --- 4. delete the mirror pod: the kubelet recreates it, the static pod keeps running -----------
uid_before=$(kubectl get pod -n "$E2E_NS" "web-$B" -o jsonpath='{.metadata.uid}')
kubectl delete pod -n "$E2E_NS" "web-$B" --wait=false >/dev/null
mirror_back() {
  local uid; uid=$(kubectl get pod -n "$E2E_NS" "web-$B" -o jsonpath='{.metadata.uid}' 2>/dev/null)
  [[ -n $uid && $uid != "$uid_before" ]] && mirror_ready "$E2E_NS" "web-$B"
}
wait_for "mirror pod recreated" 120 mirror_back || fail "deleted mirror pod did not come back"
ok "deleted mirror pod came back (uid $uid_before -> $(kubectl get pod -n "$E2E_NS" "web-$B" -o jsonpath='{.metadata.uid}'))"

# --- 5. kill the container with crictl: the kubelet restarts it --------------------------------
restarts() { kubectl get pod -n "$E2E_NS" "web-$B" -o jsonpath='{.status.containerStatuses[0].restartCount}'; }
r0=$(restarts)
cid=$(crictl_on "$B" ps -q --name web --label "io.kubernetes.pod.namespace=$E2E_NS" --state running | head -n1)
[[ -n $cid ]] || fail "no running web container on $B"
crictl_on "$B" stop --timeout 0 "$cid" >/dev/null
wait_for "restart count to grow" 120 bash -c "(( \$(kubectl get pod -n $E2E_NS web-$B -o jsonpath='{.status.containerStatuses[0].restartCount}') > $r0 ))" || fail "container was not restarted"
wait_for "Ready after restart" 60 mirror_ready "$E2E_NS" "web-$B" || fail "web-$B not Ready after restart"
ok "killed container restarted by the kubelet (restarts $r0 -> $(restarts))"

# --- 6. conflict: a foreign manifest on B defines the same pod; ours is not written ------------
node_put "$B" manifests conflict-owner.yaml <<YAML
apiVersion: v1
kind: Pod
metadata: {name: clash, namespace: $E2E_NS}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: $BUSYBOX_IMAGE, imagePullPolicy: Never, command: [sleep, "100000"]}
YAML
conflict_sum=$(node_sha256 "$B" manifests conflict-owner.yaml)
web_set_yaml clash '{}' c | kubectl apply -f - >/dev/null
wait_for "clash Ready on $A" 120 mirror_ready "$E2E_NS" "clash-$A" || fail "clash not running on $A"
conflict_reported() {
  kubectl get nodestaticpods "$B" -o jsonpath='{.status.pods[?(@.setName=="clash")].phase}' | grep -qx Conflict
}
wait_for "conflict reported on $B" 60 conflict_reported || fail "conflict on $B not reported: $(kubectl get nodestaticpods "$B" -o jsonpath='{.status}')"
! node_has "$B" manifests "staticpodset_${E2E_NS}_clash.yaml" || fail "agent wrote a manifest despite the conflict"
[[ $(node_sha256 "$B" manifests conflict-owner.yaml) == "$conflict_sum" ]] || fail "foreign conflicting manifest was modified"
wait_for "Degraded condition" 60 bash -c "kubectl get sps -n $E2E_NS clash -o jsonpath='{.status.conditions[?(@.type==\"Degraded\")].status}' | grep -qx True" || fail "set clash not Degraded"
ok "conflict with a foreign manifest on $B reported (Degraded), foreign file untouched"

# --- 7. delete the sets: manifests and mirror pods gone, foreign manifest intact ---------------
kubectl delete sps -n "$E2E_NS" web clash --wait=true --timeout=120s >/dev/null || fail "set deletion did not finish"
gone() {
  [[ -z $(node_ls "$A" manifests 'staticpodset_*') && -z $(node_ls "$B" manifests 'staticpodset_*') ]] &&
    [[ -z $(kubectl get pods -n "$E2E_NS" -l staticpods.dev/set-name -o name) ]]
}
wait_for "manifests and mirror pods gone" 120 gone || fail "manifests or mirror pods left after deletion"
[[ $(node_sha256 "$A" manifests "$FOREIGN") == "$foreign_sum" ]] || fail "foreign manifest $FOREIGN was modified"
ok "deleting the sets removed every manifest and mirror pod; foreign manifest intact"

# --- measurements -----------------------------------------------------------------------------
agent_pid=$(pgrep -f staticpodset-node-agent | head -n1 || true)
if [[ -n $agent_pid ]]; then
  rss=$(awk '/VmRSS/ {print $2 " " $3}' "/proc/$agent_pid/status")
  log "agent idle RSS: $rss"
fi
echo "measure: apply-to-ready-2-nodes=${apply_to_ready}s agent-rss=${rss:-unknown}"
echo "10-staticpodset: $passed passed, 0 failed"
