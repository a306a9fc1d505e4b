#!/usr/bin/env bash
# Node-bound agents, on the real cluster, with exactly what node A's agent holds: a token bound to
# its pod, used alone (the cluster's server and CA, no client certificate):
#   the token is the agent's ServiceAccount, bound to node A (authentication.kubernetes.io/node-name)
#   -> the status of A's NodeStaticPods may be patched, B's not (the ValidatingAdmissionPolicy's
#      message names both nodes); an admin may still patch B's; an unbound token of the same
#      ServiceAccount may patch no status at all
#   -> no NodeStaticPods spec write (own node or other), no pod creation anywhere
#   -> no Secret of the release namespace (the static pod URL header, helm's release), while a set's
#      bundle is in the configuration namespace, alone there, and readable by name but not listable
#   -> the real agents still report and still read bundles (a set's pods run on both nodes with
#      their ConfigMap file).
# Every write is a server-side dry run: it goes through authentication, RBAC and admission exactly
# like a real one, and changes nothing the agents and the operator own.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

A=${NODES[0]} B=${NODES[1]}
WORK=$(mktemp -d)

cleanup() {
  kubectl delete sps bound -n "$E2E_NS" --wait=true --timeout=120s >/dev/null 2>&1 || true
  kubectl delete configmap bound-data -n "$E2E_NS" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

install_product
ensure_e2e_namespace
t0=$(date +%s)

# --- the policy, and what the agent's token is -----------------------------------------------------
policy=$(kubectl get validatingadmissionpolicies -l "app.kubernetes.io/instance=$RELEASE" -o name)
binding=$(kubectl get validatingadmissionpolicybindings -l "app.kubernetes.io/instance=$RELEASE" -o name)
[[ -n $policy && -n $binding ]] || fail "the chart installed no ValidatingAdmissionPolicy and binding: '$policy' '$binding'"
ok "the chart installed ${policy#*/} and its binding"

# agent_pod NODE: "name uid serviceAccount" of NODE's agent pod that is not being deleted.
agent_pod() {
  kubectl get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=node-agent --field-selector "spec.nodeName=$1" \
    -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.uid} {.spec.serviceAccountName} {.metadata.deletionTimestamp}{"\n"}{end}' |
    awk 'NF == 3 {print; exit}'
}
read -r pod_a uid_a agent_sa <<<"$(agent_pod "$A")"
[[ -n ${agent_sa:-} ]] || fail "no agent pod on $A"

# token_kubeconfig FILE TOKEN: a kubeconfig with the cluster's server and CA and only TOKEN (also
# kept in FILE.token for api_patch).
server=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
ca=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
if [[ -z $ca ]]; then
  ca_file=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority}')
  ca=$(base64 -w0 "$ca_file")
fi
base64 -d <<<"$ca" >"$WORK/ca.crt"
token_kubeconfig() {
  (umask 077 && printf '%s' "$2" >"$1.token" && cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: u, user: {token: "$2"}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
EOF
  )
}
token_kubeconfig "$WORK/bound" "$(kubectl create token "$agent_sa" -n "$RELEASE_NS" --duration=10m \
  --bound-object-kind Pod --bound-object-name "$pod_a" --bound-object-uid "$uid_a")"
token_kubeconfig "$WORK/unbound" "$(kubectl create token "$agent_sa" -n "$RELEASE_NS" --duration=10m)"
as_agent() { kubectl --kubeconfig "$WORK/bound" "$@"; }
as_unbound() { kubectl --kubeconfig "$WORK/unbound" "$@"; }
# api_patch WHO PATH BODY: a merge PATCH of PATH as WHO's token (bound, unbound), server-side dry
# run, sent as the agent sends its status: straight to the API, with no GET first (kubectl patch
# reads the object first, which the agent's RBAC does not allow). Prints the API server's message
# when refused.
api_patch() {
  local out code
  out=$(curl -sS --max-time 10 --cacert "$WORK/ca.crt" -H "Authorization: Bearer $(cat "$WORK/$1.token")" \
    -X PATCH -H 'Content-Type: application/merge-patch+json' --data "$3" -w '\n%{http_code}' "$server$2?dryRun=All")
  code=${out##*$'\n'} out=${out%$'\n'*}
  [[ $code == 2?? ]] && return 0
  echo "HTTP $code: $(jq -r '.message // .' <<<"$out" 2>/dev/null || echo "$out")"
  return 1
}
NSP_API=/apis/staticpods.dev/v1alpha1/nodestaticpods

user=$(as_agent auth whoami -o jsonpath='{.status.userInfo.username}') || fail "the bound token does not authenticate: $user"
bound_to=$(as_agent auth whoami -o jsonpath='{.status.userInfo.extra.authentication\.kubernetes\.io/node-name[0]}')
[[ $user == "system:serviceaccount:$RELEASE_NS:$agent_sa" && $bound_to == "$A" ]] ||
  fail "the bound token is '$user', node '$bound_to'"
[[ -z $(as_unbound auth whoami -o jsonpath='{.status.userInfo.extra.authentication\.kubernetes\.io/node-name}') ]] ||
  fail "the unbound token carries a node name"
ok "a token bound to $pod_a authenticates (token only) as $user, bound to node $A; the unbound one carries no node"

# --- checks -----------------------------------------------------------------------------------------
# allowed WHAT COMMAND...: COMMAND succeeds.
allowed() {
  local what=$1 out; shift
  out=$("$@" 2>&1) || fail "$what was refused: $out"
  ok "$what: allowed"
}
# refused WHAT TEXT COMMAND...: COMMAND fails with a message that contains TEXT.
refused() {
  local what=$1 text=$2 out; shift 2
  if out=$("$@" 2>&1); then fail "$what was allowed: $out"; fi
  [[ $out == *"$text"* ]] || fail "$what failed, but without '$text': $out"
  ok "$what: refused ($out)"
}
# cannot CAN-I-ARGS...: `kubectl auth can-i` with the bound token says no (its stderr, a warning
# for cluster-scoped resources, is left out).
cannot() {
  local out
  out=$(as_agent auth can-i "$@" 2>/dev/null) && fail "the bound token can $*"
  [[ $out == no* ]] || fail "auth can-i $*: '$out'"
}

now=$(date -u +%FT%TZ)
status_patch="{\"status\":{\"lastSyncTime\":\"$now\"}}"
# The API server loads new policies asynchronously: right after a first install, wait for it.
in_force() { ! api_patch bound "$NSP_API/$B/status" "$status_patch"; }
wait_for "the own-node policy is in force" 30 in_force || fail "the bound token may still patch $B's status"
allowed "the bound token patching $A's own NodeStaticPods status" api_patch bound "$NSP_API/$A/status" "$status_patch"
refused "the bound token patching $B's NodeStaticPods status" \
  "node agents may write only their own node's NodeStaticPods status: this token is bound to node $A, so it may not write the status of NodeStaticPods $B" \
  api_patch bound "$NSP_API/$B/status" "$status_patch"
allowed "an admin patching $B's NodeStaticPods status (the policy matches only the agent)" \
  kubectl patch nodestaticpods "$B" --subresource=status --type=merge -p "$status_patch" --dry-run=server
refused "the unbound token patching $A's NodeStaticPods status" \
  "this token is bound to no node (it has no authentication.kubernetes.io/node-name" \
  api_patch unbound "$NSP_API/$A/status" "$status_patch"

spec_patch='{"spec":{"pods":[]}}'
for n in "$A" "$B"; do
  refused "the bound token patching $n's NodeStaticPods (not its status)" 'cannot patch resource "nodestaticpods"' \
    api_patch bound "$NSP_API/$n" "$spec_patch"
done
for verb in create update delete; do cannot "$verb" nodestaticpods.staticpods.dev; done
ok "the bound token cannot create, update or delete NodeStaticPods"

for ns in "$E2E_NS" "$RELEASE_NS"; do
  refused "the bound token creating a pod in $ns" 'cannot create resource "pods"' \
    as_agent run agent-made -n "$ns" --image="$BUSYBOX_IMAGE" --restart=Never --dry-run=server
done
cannot create pods --all-namespaces
ok "the bound token cannot create pods in any namespace"

# --- Secrets: none in the release namespace, bundles by name in their own --------------------------
helm_secret=$(kubectl get secrets -n "$RELEASE_NS" -l owner=helm -o jsonpath='{.items[0].metadata.name}')
[[ -n $helm_secret ]] || fail "no helm release Secret in $RELEASE_NS"
for s in sps-static-pod-url "$helm_secret"; do
  refused "the bound token reading Secret $RELEASE_NS/$s" 'cannot get resource "secrets"' \
    as_agent get secret "$s" -n "$RELEASE_NS" -o name
done
for verb in get list watch; do cannot "$verb" secrets -n "$RELEASE_NS"; done
ok "the bound token can get, list and watch no Secret in the release namespace $RELEASE_NS"

kubectl create configmap bound-data -n "$E2E_NS" --from-literal=greeting=hello \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# Ready only once it has read its ConfigMap's file: the agent must have read the bundle.
kubectl apply -f - >/dev/null <<YAML
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: bound, namespace: $E2E_NS}
spec:
  updateStrategy: {rollingUpdate: {maxUnavailable: "100%"}}
  template:
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: $BUSYBOX_IMAGE
        imagePullPolicy: Never
        command: [sh, -c, "cat /conf/greeting && exec sleep 100000"]
        readinessProbe: {exec: {command: [cat, /conf/greeting]}, periodSeconds: 1}
        volumeMounts: [{name: conf, mountPath: /conf, readOnly: true}]
      volumes:
      - {name: conf, configMap: {name: bound-data}}
YAML
wait_for "the set's pods run on both nodes with their configuration file" 180 all_mirrors_ready "$E2E_NS" bound ||
  fail "the set's pods are not Ready: $(kubectl get pods -n "$E2E_NS" -o wide 2>&1)"
bundles=$(kubectl get secrets -n "$CONFIG_NS" -l "staticpods.dev/set-namespace=$E2E_NS,staticpods.dev/set-name=bound" \
  -o jsonpath='{.items[*].metadata.name}')
[[ $bundles == "staticpodset.$E2E_NS.bound."* && $bundles != *" "* ]] || fail "the set's bundles in $CONFIG_NS: '$bundles'"
[[ -z $(kubectl get secrets -n "$RELEASE_NS" -l "staticpods.dev/set-namespace=$E2E_NS" -o name) ]] ||
  fail "bundles in the release namespace: $(kubectl get secrets -n "$RELEASE_NS" -o name)"
others=$(kubectl get secrets -n "$CONFIG_NS" -l '!staticpods.dev/set-name' -o name)
[[ -z $others ]] || fail "Secrets other than bundles in $CONFIG_NS: $others"
ok "the pods run on both nodes from bundle $bundles, which is in $CONFIG_NS (holding only bundles), none in $RELEASE_NS"
allowed "the bound token reading bundle $CONFIG_NS/$bundles by name" as_agent get secret "$bundles" -n "$CONFIG_NS" -o name
refused "the bound token listing Secrets in $CONFIG_NS" 'cannot list resource "secrets"' \
  as_agent get secrets -n "$CONFIG_NS" -o name

# What stays cluster-wide (docs/security.md): reading NodeStaticPods and pods.
allowed "the bound token listing every node's NodeStaticPods (one ServiceAccount for all nodes: RBAC cannot narrow reads to one)" as_agent get nodestaticpods -o name

# --- the real agents still report through the policy -------------------------------------------------
# An agent writes its status only when its report changes, as set bound's arrival did.
reported_since() { # node epoch
  local t names
  t=$(kubectl get nodestaticpods "$1" -o jsonpath='{.status.lastSyncTime}')
  names=$(kubectl get nodestaticpods "$1" -o jsonpath='{.status.pods[*].setName}')
  [[ -n $t && " $names " == *" bound "* ]] && (($(date -d "$t" +%s) > $2))
}
for n in "$A" "$B"; do
  wait_for "$n's agent reports set bound" 60 reported_since "$n" "$t0" ||
    fail "$n's status was not written since the install: $(kubectl get nodestaticpods "$n" -o jsonpath='{.status}')"
done
ok "both agents wrote their own node's status after the install (reports of set bound on $A and $B)"

echo "80-node-bound-agents: $passed passed, 0 failed"
