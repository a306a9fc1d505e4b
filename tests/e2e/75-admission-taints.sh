#!/usr/bin/env bash
# No back door, on the real cluster: a set runs only what a Pod in its namespace could, and only on
# the nodes a DaemonSet would reach.
#   Pod Security restricted: a privileged set is refused with Pod Security's message, no node gets a
#     file, the compliant set next to it runs
#   Pod Security baseline: a hostPath volume is refused
#   a ValidatingAdmissionPolicy that forbids hostNetwork: refused with that policy's message
#   the API server's Pod validation: a label value with a newline is refused before any node gets it
#   raising a namespace's level under a running set: reported (Valid=False + Event), the pods stay
#   a NoSchedule taint keeps a set off a node (NodesExcluded says so); a toleration lets it in; a
#     NoExecute taint added later takes it away from that node
#   the operator's token creates pods only as dry runs (the chart's ValidatingAdmissionPolicy)
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

A=${NODES[0]} B=${NODES[1]}
NS_RESTRICTED=sps-e2e-restricted
NS_BASELINE=sps-e2e-baseline
NS_VAP=sps-e2e-vap
NS_RAISE=sps-e2e-raise
VAP=sps-e2e-no-host-network
TAINT_KEY=e2e.staticpods.dev/dedicated
EVICT_KEY=e2e.staticpods.dev/evict

cleanup() {
  # One at a time: kubectl removes none of them when one is not there.
  kubectl taint node "$B" "$TAINT_KEY-" >/dev/null 2>&1 || true
  kubectl taint node "$B" "$EVICT_KEY-" >/dev/null 2>&1 || true
  for ns in "$NS_RESTRICTED" "$NS_BASELINE" "$NS_VAP" "$NS_RAISE" "$E2E_NS"; do
    kubectl delete sps --all -n "$ns" --wait=true --timeout=120s >/dev/null 2>&1 || true
  done
  kubectl delete namespace "$NS_RESTRICTED" "$NS_BASELINE" "$NS_VAP" "$NS_RAISE" --wait=false >/dev/null 2>&1 || true
  kubectl delete validatingadmissionpolicybinding "$VAP" >/dev/null 2>&1 || true
  kubectl delete validatingadmissionpolicy "$VAP" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# cond NS SET TYPE FIELD: a field (status, reason, message) of one of the set's conditions.
cond() {
  kubectl get sps -n "$1" "$2" -o "jsonpath={.status.conditions[?(@.type==\"$3\")].$4}" 2>/dev/null
}
denied() { [[ $(cond "$1" "$2" Valid reason) == AdmissionDenied ]]; }
# no_file_anywhere NS SET: no node has the set's manifest, and no node object names the set.
no_file_anywhere() {
  local n
  for n in "${NODES[@]}"; do
    ! node_has "$n" manifests "staticpodset_$1_$2.yaml" || return 1
    ! kubectl get nodestaticpods "$n" -o jsonpath='{.spec.pods[*].setName}' | grep -qw "$2" || return 1
  done
}
# entry_on NODE NS SET: the node object carries the set's entry.
entry_on() {
  kubectl get nodestaticpods "$1" -o jsonpath="{range .spec.pods[?(@.setNamespace==\"$2\")]}{.setName}{\"\\n\"}{end}" |
    grep -qx "$3"
}
# sleeper NS NAME [POD_SECURITY_CONTEXT] [CONTAINER_SECURITY_CONTEXT] [MORE_POD_SPEC]: a set of
# one container that sleeps, on every node.
sleeper() {
  local pod_sc=${3:-"{}"} container_sc=${4:-"{}"} more=${5:-}
  kubectl apply -f - >/dev/null <<YAML
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: $2, namespace: $1}
spec:
  template:
    metadata: {labels: {app: $2}}
    spec:
      terminationGracePeriodSeconds: 1
      securityContext: $pod_sc
      $more
      containers:
      - name: main
        image: $BUSYBOX_IMAGE
        imagePullPolicy: Never
        command: [sleep, "100000"]
        securityContext: $container_sc
YAML
}
RESTRICTED_POD='{runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}'
RESTRICTED_CONTAINER='{allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}'

install_product
ensure_e2e_namespace
for ns in "$NS_RESTRICTED" "$NS_BASELINE" "$NS_VAP" "$NS_RAISE"; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done
kubectl label namespace "$NS_RESTRICTED" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl label namespace "$NS_BASELINE" pod-security.kubernetes.io/enforce=baseline --overwrite >/dev/null

# --- 1. Pod Security restricted: privileged refused, compliant runs -------------------------------

sleeper "$NS_RESTRICTED" compliant "$RESTRICTED_POD" "$RESTRICTED_CONTAINER"
sleeper "$NS_RESTRICTED" privileged '{}' '{privileged: true}'
wait_for "the privileged set refused" 60 denied "$NS_RESTRICTED" privileged ||
  fail "privileged set in a restricted namespace not refused: $(kubectl get sps -n "$NS_RESTRICTED" privileged -o yaml)"
message=$(cond "$NS_RESTRICTED" privileged Valid message)
[[ $message == *PodSecurity*restricted* && $message == *privileged* ]] ||
  fail "the refusal is not Pod Security's message: $message"
ok "privileged set in a restricted namespace: Valid=False AdmissionDenied, \"${message:0:100}...\""
wait_for "compliant set Ready on both nodes" 120 all_mirrors_ready "$NS_RESTRICTED" compliant ||
  fail "the compliant set in the restricted namespace does not run"
no_file_anywhere "$NS_RESTRICTED" privileged || fail "a node got the refused set"
[[ -z $(kubectl get staticpodrevisions -n "$NS_RESTRICTED" -l staticpods.dev/set-name=privileged -o name) ]] ||
  fail "a revision object was created for the refused set"
kubectl get events -n "$NS_RESTRICTED" --field-selector reason=AdmissionDenied -o jsonpath='{.items[*].involvedObject.name}' |
  grep -qw privileged || fail "no AdmissionDenied Event on the refused set"
ok "no node, no revision for the refused set; the compliant set runs on both nodes; Warning Event"

# --- 2. Pod Security baseline: a hostPath volume is refused --------------------------------------

sleeper "$NS_BASELINE" host-path '{}' '{}' 'volumes: [{name: etc, hostPath: {path: /etc, type: Directory}}]'
wait_for "the hostPath set refused" 60 denied "$NS_BASELINE" host-path ||
  fail "hostPath set in a baseline namespace not refused"
message=$(cond "$NS_BASELINE" host-path Valid message)
[[ $message == *baseline* && $message == *hostPath* ]] || fail "not Pod Security's hostPath message: $message"
no_file_anywhere "$NS_BASELINE" host-path || fail "a node got the refused hostPath set"
ok "hostPath set in a baseline namespace refused: \"${message:0:100}...\""

# --- 3. a ValidatingAdmissionPolicy forbids hostNetwork ------------------------------------------

kubectl apply -f - >/dev/null <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: $VAP}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [pods]}
  validations:
  - expression: "!has(object.spec.hostNetwork) || !object.spec.hostNetwork"
    message: "$VAP: pods in this namespace may not use the host network"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: $VAP}
spec:
  policyName: $VAP
  validationActions: [Deny]
  matchResources:
    namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: $NS_VAP}}
YAML
# The API server loads a new policy asynchronously: wait until it refuses a plain pod.
vap_active() {
  ! kubectl run vap-probe -n "$NS_VAP" --image="$BUSYBOX_IMAGE" --dry-run=server \
    --overrides='{"spec":{"hostNetwork":true}}' >/dev/null 2>&1
}
wait_for "the policy in force" 60 vap_active || fail "the ValidatingAdmissionPolicy never took effect"
sleeper "$NS_VAP" host-network '{}' '{}' 'hostNetwork: true'
wait_for "the hostNetwork set refused" 60 denied "$NS_VAP" host-network || fail "hostNetwork set not refused"
message=$(cond "$NS_VAP" host-network Valid message)
[[ $message == *"$VAP"* ]] || fail "the refusal does not name the policy: $message"
no_file_anywhere "$NS_VAP" host-network || fail "a node got the refused hostNetwork set"
ok "hostNetwork set refused with the policy's message: \"${message:0:120}\""

# --- 4. the API server's Pod validation: a label value with a newline ------------------------------

kubectl apply -f - >/dev/null <<YAML
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: bad-label, namespace: $E2E_NS}
spec:
  template:
    metadata: {labels: {app: "bad\nlabel"}}
    spec:
      containers:
      - {name: main, image: $BUSYBOX_IMAGE, imagePullPolicy: Never, command: [sleep, "100000"]}
YAML
wait_for "the bad label refused" 60 denied "$E2E_NS" bad-label || fail "a label with a newline was not refused"
message=$(cond "$E2E_NS" bad-label Valid message)
[[ $message == *metadata.labels* ]] || fail "not the Pod validation's message: $message"
no_file_anywhere "$E2E_NS" bad-label || fail "a node got the set with the bad label"
kubectl delete sps -n "$E2E_NS" bad-label --wait=true --timeout=60s >/dev/null
ok "a label value with a newline refused with the server's message before any node: \"${message:0:100}\""

# --- 5. raising a namespace's level under a running set: reported, the pods stay -----------------

sleeper "$NS_RAISE" running
wait_for "the set Ready on both nodes" 120 all_mirrors_ready "$NS_RAISE" running || fail "set not Ready"
uids() { kubectl get pods -n "$NS_RAISE" -l app=running -o jsonpath='{.items[*].metadata.uid}'; }
before=$(uids)
kubectl label namespace "$NS_RAISE" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
wait_for "the running set reported non-compliant" 60 denied "$NS_RAISE" running ||
  fail "raising the namespace's level was not reported"
all_mirrors_ready "$NS_RAISE" running || fail "the running pods were touched"
[[ $(uids) == "$before" ]] || fail "mirror pods replaced: $before -> $(uids)"
for n in "${NODES[@]}"; do
  node_has "$n" manifests "staticpodset_${NS_RAISE}_running.yaml" || fail "manifest removed from $n"
done
kubectl get events -n "$NS_RAISE" --field-selector reason=AdmissionDenied -o jsonpath='{.items[*].involvedObject.name}' |
  grep -qw running || fail "no Warning Event for the running set"
ok "a running set made non-compliant is reported (Valid=False AdmissionDenied, Event); its pods stay"

# --- 6. taints and tolerations, as for a DaemonSet -------------------------------------------------

kubectl taint node "$B" "$TAINT_KEY=x:NoSchedule" --overwrite >/dev/null
apply_sleeper_set tainted "$(test_nodes_selector)"
wait_for "the set on $A" 120 mirror_ready "$E2E_NS" "tainted-$A" || fail "set not Ready on $A"
excluded() { [[ $(cond "$E2E_NS" tainted NodesExcluded reason) == UntoleratedTaints ]]; }
wait_for "NodesExcluded" 30 excluded || fail "no NodesExcluded condition"
message=$(cond "$E2E_NS" tainted NodesExcluded message)
[[ $message == *"$B ($TAINT_KEY=x:NoSchedule)"* ]] || fail "NodesExcluded does not name $B and its taint: $message"
[[ $(sps_status tainted numberExcludedByTaints) == 1 && $(sps_status tainted desiredNumberScheduled) == 1 ]] ||
  fail "counts: excluded $(sps_status tainted numberExcludedByTaints), desired $(sps_status tainted desiredNumberScheduled)"
! entry_on "$B" "$E2E_NS" tainted || fail "$B got the set despite its NoSchedule taint"
ok "a NoSchedule taint keeps the set off $B: \"$message\""

kubectl patch sps -n "$E2E_NS" tainted --type=json -p "[{\"op\":\"add\",\"path\":\"/spec/template/spec/tolerations\",
  \"value\":[{\"key\":\"$TAINT_KEY\",\"operator\":\"Exists\",\"effect\":\"NoSchedule\"}]}]" >/dev/null
wait_for "the set on $B once tolerated" 180 mirror_ready "$E2E_NS" "tainted-$B" || fail "toleration did not land the set on $B"
not_excluded() { [[ -z $(cond "$E2E_NS" tainted NodesExcluded reason) ]]; }
wait_for "NodesExcluded gone" 30 not_excluded || fail "NodesExcluded still there"
# The toleration is a new template: wait until both nodes run it, so that what follows sees the
# taint's effect and not the rollout's.
rolled_out() {
  [[ $(sps_status tainted updatedNumberScheduled) == 2 && $(sps_status tainted numberAvailable) == 2 ]] &&
    mirror_ready "$E2E_NS" "tainted-$A" && mirror_ready "$E2E_NS" "tainted-$B"
}
wait_for "the tolerating revision on both nodes" 180 rolled_out || fail "the tolerating revision did not roll out"
ok "with the toleration the set runs on $B"

kubectl taint node "$B" "$EVICT_KEY=x:NoExecute" --overwrite >/dev/null
gone_from_b() { ! entry_on "$B" "$E2E_NS" tainted && ! kubectl get pod -n "$E2E_NS" "tainted-$B" >/dev/null 2>&1; }
# The operator's own pod may be evicted from B by the taint: a new one must take the lease first.
wait_for "the set removed from $B" 180 gone_from_b || fail "a NoExecute taint did not take the set off $B"
mirror_ready "$E2E_NS" "tainted-$A" || fail "the set left $A too"
ok "a NoExecute taint added later takes the set off $B; $A keeps it"
kubectl taint node "$B" "$TAINT_KEY-" "$EVICT_KEY-" >/dev/null
operator_available() {
  [[ $(kubectl get deploy -n "$RELEASE_NS" -l app.kubernetes.io/component=operator \
    -o jsonpath='{.items[0].status.availableReplicas}') -ge 1 ]]
}
wait_for "the operator available again" 180 operator_available || fail "operator not available after the taints"

# --- 7. the operator's token creates pods only as dry runs --------------------------------------

operator_sa=$(kubectl get deploy -n "$RELEASE_NS" -l app.kubernetes.io/component=operator \
  -o jsonpath='{.items[0].spec.template.spec.serviceAccountName}')
server=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
ca_file=$(mktemp)
ca=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
if [[ -n $ca ]]; then base64 -d <<<"$ca" >"$ca_file"; else
  cp "$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority}')" "$ca_file"
fi
operator_token=$(kubectl create token "$operator_sa" -n "$RELEASE_NS" --duration=10m)
as_operator() {
  kubectl --kubeconfig=/dev/null --server="$server" --certificate-authority="$ca_file" \
    --token="$operator_token" "$@"
}
probe=(run dry-run-probe -n "$E2E_NS" --image="$BUSYBOX_IMAGE" --restart=Never)
as_operator "${probe[@]}" --dry-run=server --command -- sleep 1 >/dev/null ||
  fail "the operator's token cannot dry-run a pod"
if out=$(as_operator "${probe[@]}" --command -- sleep 1 2>&1); then
  kubectl delete pod -n "$E2E_NS" dry-run-probe --wait=false >/dev/null 2>&1 || true
  fail "the operator's token created a real pod"
fi
[[ $out == *"only as server-side dry runs"* ]] || fail "a real create was refused, but not by the dry-run-only policy: $out"
rm -f "$ca_file"
ok "the operator's token may dry-run pods and is refused a real create: \"${out:0:110}...\""

echo "75-admission-taints: $passed passed, 0 failed"
