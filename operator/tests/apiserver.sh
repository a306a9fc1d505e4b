#!/usr/bin/env bash
# The operator against a real, throw-away kube-apiserver (no kubelet, no controller-manager):
# nodes are plain Node objects, and a fake agent writes NodeStaticPods status with kubectl.
#
#   node objects created and owned by their Node
#   -> two sets sharing nodes -> entries, status counts, conditions, Events
#   -> StaticPodRevisions: numbered, owned by the set, immutable; entries name them
#   -> template change -> new revision written; hand edit of an entry -> taken back
#   -> rollback by annotation (restored template, reused revision renumbered), refused rollback
#   -> history pruned to revisionHistoryLimit, never a revision a node still runs
#   -> node relabelled -> entry removed; one field manager (the operator's) for every set's entries
#   -> a node object the API server refuses to change: shown on the set, retried until it lands
#   -> set deleted -> finalizer waits for the live agent, skips the NotReady node, releases
#   -> finalizer removed by hand -> orphaned entry removed by the node-objects loop
#   -> API server paused -> the leader steps down before its Lease expires, and leads again
#
# The operator runs as a user bound to exactly the rules of operator/RBAC.md (tests/rbac.yaml).
# Uses etcd and kube-apiserver from $STATICPODSET_CACHE (tests/e2e/cluster/build/components.sh fills
# it; `make test` builds them before this runs). Missing, they are a failure, not a skip: set
# SPS_ALLOW_SKIP=1 to skip instead on a machine without them. Usage: bash operator/tests/apiserver.sh
# (about 2.5 minutes, most of it waiting for the orphan grace period). KEEP=1 keeps the work directory.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../tests/e2e/cluster/versions.sh
source "$ROOT/tests/e2e/cluster/versions.sh"
CACHE=${STATICPODSET_CACHE:-$HOME/.cache/staticpodset}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
APISERVER=${APISERVER:-$CACHE/k8s-$K8S_VERSION/bin/kube-apiserver}
ETCD=${ETCD:-$CACHE/tools/bin/etcd}
KUBECTL=$(command -v kubectl || echo "$CACHE/k8s-$K8S_VERSION/bin/kubectl")
missing=()
for bin in "$APISERVER" "$ETCD" "$KUBECTL"; do
  [[ -x $bin ]] || missing+=("$bin")
done
for tool in openssl python3 curl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  if [[ ${SPS_ALLOW_SKIP:-0} == 1 ]]; then
    echo "SKIP (SPS_ALLOW_SKIP=1): not found: ${missing[*]}"
    exit 0
  fi
  echo "FAIL: not found: ${missing[*]}" >&2
  echo "  build the Kubernetes $K8S_VERSION binaries and etcd $ETCD_VERSION into $CACHE with" >&2
  echo "  bash tests/e2e/cluster/build/components.sh (or set APISERVER, ETCD); SPS_ALLOW_SKIP=1 skips" >&2
  exit 1
fi

WORK=$(mktemp -d /tmp/sps-operator-test.XXXXXX)
# Everything this suite runs with kubectl, lib.sh's failure diagnostics included, talks to the
# throw-away API server only, never to a cluster KUBECONFIG pointed at before.
export KUBECONFIG=$WORK/admin.kubeconfig
# ok/fail/wait_for/log, shared with the e2e suites; sourcing it touches no cluster.
# shellcheck source=../../tests/e2e/lib.sh
source "$ROOT/tests/e2e/lib.sh"
PIDS=()
cleanup() {
  local rc=$?
  if [[ $rc != 0 || $failed != 0 ]]; then
    echo "--- operator log (tail)"; tail -n 30 "$WORK/operator.log" 2>/dev/null || true
  fi
  # Stop everything we started, by PID. The operator gets SIGTERM (it releases its Lease); the
  # throw-away API server and etcd are killed outright (a graceful API server drains for a minute).
  if [[ -n ${OPERATOR_PID:-} ]]; then kill "$OPERATOR_PID" 2>/dev/null || true; fi
  local end=$((SECONDS + 25))
  while [[ -n ${OPERATOR_PID:-} ]] && kill -0 "$OPERATOR_PID" 2>/dev/null && ((SECONDS < end)); do sleep 0.2; done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ ${KEEP:-0} == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
  echo "$passed passed, $failed failed"
}
trap cleanup EXIT
# eventually SECONDS DESCRIPTION COMMAND...: waits for COMMAND to succeed, then counts the check.
eventually() {
  local limit=$1 what=$2; shift 2
  wait_for "$what" "$limit" "$@" || fail "$what (not within ${limit}s)"
  ok "$what"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- a throw-away API server -------------------------------------------------------------------
cd "$WORK"
mkdir pki
openssl req -x509 -newkey rsa:2048 -nodes -keyout pki/ca.key -out pki/ca.crt -days 1 -subj /CN=test-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout pki/server.key -out pki/server.csr -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >pki/ext.cnf
openssl x509 -req -in pki/server.csr -CA pki/ca.crt -CAkey pki/ca.key -CAcreateserial -days 1 \
  -extfile pki/ext.cnf -out pki/server.crt 2>/dev/null
openssl genrsa -out pki/sa.key 2048 2>/dev/null
openssl rsa -in pki/sa.key -pubout -out pki/sa.pub 2>/dev/null
printf 'admin-token,admin,1,"system:masters"\noperator-token,sps-operator,2\n' >pki/tokens.csv

ETCD_PORT=$(free_port) PEER_PORT=$(free_port) API_PORT=$(free_port) HTTP_PORT=$(free_port)
"$ETCD" --name t --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-cluster "t=http://127.0.0.1:$PEER_PORT" \
  >etcd.log 2>&1 &
PIDS+=($!)
"$APISERVER" --etcd-servers "http://127.0.0.1:$ETCD_PORT" --bind-address 127.0.0.1 --secure-port "$API_PORT" \
  --advertise-address 127.0.0.1 --tls-cert-file pki/server.crt --tls-private-key-file pki/server.key \
  --token-auth-file pki/tokens.csv --authorization-mode RBAC --service-account-issuer "https://127.0.0.1:$API_PORT" \
  --service-account-key-file pki/sa.pub --service-account-signing-key-file pki/sa.key \
  --service-cluster-ip-range 10.252.0.0/24 --disable-admission-plugins ServiceAccount >apiserver.log 2>&1 &
APISERVER_PID=$!
PIDS+=("$APISERVER_PID")
for user in admin operator; do
  cat >"$user.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: t, cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: $WORK/pki/ca.crt}}]
users: [{name: u, user: {token: $user-token}}]
contexts: [{name: c, context: {cluster: t, user: u}}]
current-context: c
EOF
done
export KUBECONFIG=$WORK/admin.kubeconfig
k() { "$KUBECTL" "$@"; }
eventually 120 "API server ready" k get --raw /readyz

# --- CRDs, RBAC, nodes -------------------------------------------------------------------------
# First an upgrade: reports an agent applied while status.pods was a list-map keyed by set (as
# before it became atomic) are taken over whole by its next apply under today's CRD.
sed 's/^\( *\)x-kubernetes-list-type: atomic$/\1x-kubernetes-list-map-keys: [setNamespace, setName]\n\1x-kubernetes-list-type: map/' \
  "$ROOT/crds/nodestaticpods.staticpods.dev.yaml" >"$WORK/nsp-keyed-reports.yaml"
! grep -q 'x-kubernetes-list-type: atomic' "$WORK/nsp-keyed-reports.yaml" || fail "the keyed CRD still has an atomic list"
k apply --server-side -f "$WORK/nsp-keyed-reports.yaml" >/dev/null
eventually 30 "the keyed CRD established" k wait --for condition=Established --timeout=5s crd/nodestaticpods.staticpods.dev
k apply --server-side --field-manager=staticpodset-operator -f - >/dev/null <<EOF
apiVersion: staticpods.dev/v1alpha1
kind: NodeStaticPods
metadata: {name: upgrade-probe}
spec: {}
EOF
agent_apply() { # phase of the second report
  k apply --server-side --force-conflicts --field-manager=staticpodset-node-agent --subresource=status -f - >/dev/null <<EOF
apiVersion: staticpods.dev/v1alpha1
kind: NodeStaticPods
metadata: {name: upgrade-probe}
status:
  pods:
    - {setNamespace: apps, setName: one, phase: Written}
    - {setNamespace: apps, setName: two, phase: $1}
EOF
}
agent_fields() { k get nsp upgrade-probe --show-managed-fields -o jsonpath='{.metadata.managedFields[?(@.manager=="staticpodset-node-agent")].fieldsV1.f:status.f:pods}'; }
keyed_reports() { agent_apply Pending && [[ $(agent_fields) == *'k:{'* ]]; }
eventually 30 "reports applied under the keyed CRD are owned per set" keyed_reports
k apply --server-side --force-conflicts -f "$ROOT/crds/" >/dev/null
whole_reports() { local fields; agent_apply Written && fields=$(agent_fields) && [[ -n $fields && $fields != *'k:{'* ]]; }
eventually 30 "after the CRD upgrade the agent's next apply owns the reports whole" whole_reports
[[ $(k get nsp upgrade-probe -o jsonpath='{range .status.pods[*]}{.setName}={.phase} {end}') == "one=Written two=Written " ]] \
  || fail "reports after the upgrade: $(k get nsp upgrade-probe -o jsonpath='{.status.pods}')"
ok "the reports are exactly those last applied"
k delete nsp upgrade-probe >/dev/null
eventually 30 "CRDs established" k wait --for condition=Established --timeout=5s \
  crd/staticpodsets.staticpods.dev crd/nodestaticpods.staticpods.dev crd/staticpodrevisions.staticpods.dev
k create namespace sps-system >/dev/null
k create namespace sps-config >/dev/null
k create namespace apps >/dev/null
k apply -f "$ROOT/operator/tests/rbac.yaml" >/dev/null

add_node() { # name zone
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata: {name: $1, labels: {zone: "$2"}}
EOF
  set_ready "$1" True
  # The API server taints new Nodes not-ready:NoSchedule (TaintNodesByCondition); with no
  # controller-manager here to lift it once the Node is Ready, lift it as that controller would:
  # sets respect taints as a DaemonSet does.
  k taint node "$1" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
}
set_ready() {
  local now; now=$(date -u +%FT%TZ)
  k patch node "$1" --subresource=status --type=merge -p "{\"status\":{\"conditions\":[{\"type\":\"Ready\",\"status\":\"$2\",\"reason\":\"Test\",\"message\":\"test\",\"lastHeartbeatTime\":\"$now\",\"lastTransitionTime\":\"$now\"}]}}" >/dev/null
}
add_node node-a x
add_node node-b x
add_node node-c y

# The fake agent: reports every entry of its node object as written, mirror pod at that revision.
agent() { # node [notready]
  python3 - "$1" "${2:-ready}" "$KUBECTL" <<'PY'
import datetime, json, subprocess, sys
node, mode, kubectl = sys.argv[1:4]
obj = json.loads(subprocess.check_output([kubectl, "get", "nsp", node, "-o", "json"]))
reports = [{"setNamespace": e["setNamespace"], "setName": e["setName"], "phase": "Written",
            "writtenRevision": e["revision"],
            "mirrorPod": {"name": f'{e["setName"]}-{node}', "uid": "u", "revision": e["revision"],
                          "upToDate": True, "ready": mode == "ready", "restartCount": 0}}
           for e in obj["spec"].get("pods", [])]
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
status = {"lastSyncTime": now, "pods": reports,
          "summary": {"assigned": len(reports), "ready": 0, "problems": 0}}
subprocess.check_call([kubectl, "patch", "nsp", node, "--subresource=status", "--type=merge",
                       "-p", json.dumps({"status": status})], stdout=subprocess.DEVNULL)
PY
}

# --- the operator ------------------------------------------------------------------------------
(cd "$ROOT" && cargo build -q -p staticpodset-operator)
KUBECONFIG=$WORK/operator.kubeconfig POD_NAME=op-test RUST_LOG=info,staticpodset_operator=debug \
  "$CARGO_TARGET_DIR/debug/staticpodset-operator" --lease-namespace sps-system --config-namespace sps-config \
  --http-addr "127.0.0.1:$HTTP_PORT" --lease-duration 6 >operator.log 2>&1 &
OPERATOR_PID=$!
PIDS+=("$OPERATOR_PID")
eventually 30 "operator ready (leader, caches synced)" curl -sf "http://127.0.0.1:$HTTP_PORT/readyz"
# metric SERIES: its value on the operator's /metrics (e.g. 'name{label="v"}'), 0 when the series is
# absent, nothing when /metrics does not answer.
metric() {
  local text
  text=$(curl -sf --max-time 2 "http://127.0.0.1:$HTTP_PORT/metrics") || return 0
  awk -v m="$1" '$1 == m {print $2; found=1} END {if (!found) print 0}' <<<"$text"
}
owned_by_node() { [[ $(k get nsp "$1" -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}') == "Node/$1" ]]; }
all_owned() { owned_by_node node-a && owned_by_node node-b && owned_by_node node-c; }
eventually 20 "a NodeStaticPods per node, owned by its Node" all_owned

entries() { k get nsp "$1" -o jsonpath='{.spec.pods[*].setName}' | tr ' ' '\n' | sort | tr '\n' ' ' | sed 's/ $//'; }
has_entries() { [[ $(entries "$1") == "$2" ]]; }
jp() { k -n apps get sps "$1" -o jsonpath="$2"; }
is() { [[ $(jp "$1" "$2") == "$3" ]]; }

k apply -f - >/dev/null <<'EOF'
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: vip, namespace: apps}
spec:
  nodeSelector: {matchLabels: {zone: x}}
  # Every node at once: the fake agent reports only when told to, and this suite is about
  # distribution and history; the rollout's pacing is the planner's unit tests and 50-rollout.
  updateStrategy: {rollingUpdate: {maxUnavailable: "100%"}}
  template:
    metadata: {labels: {app: vip}}
    spec:
      hostNetwork: true
      containers: [{name: vip, image: "busybox:1.36", command: [sleep, "3600"]}]
---
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: everywhere, namespace: apps}
spec:
  template:
    spec:
      containers: [{name: c, image: "busybox:1.36", command: [sleep, "3600"]}]
EOF
shared() { has_entries node-a 'everywhere vip' && has_entries node-b 'everywhere vip' && has_entries node-c everywhere; }
eventually 20 "both sets share node-a and node-b; node-c has only 'everywhere'" shared
desired() { is vip '{.status.desiredNumberScheduled}' 2 && is everywhere '{.status.desiredNumberScheduled}' 3; }
eventually 10 "status: desired 2 and 3" desired
[[ $(jp vip '{.metadata.finalizers[0]}') == staticpods.dev/manifests ]] || fail "finalizer set"
ok "finalizer set"

agent node-a && agent node-b && agent node-c notready
eventually 10 "vip Available once its nodes report ready" is vip '{.status.conditions[?(@.type=="Available")].status}' True
not_available() {
  is everywhere '{.status.numberReady}' 2 &&
    jp everywhere '{.status.conditions[?(@.type=="Available")].message}' | grep -q node-c
}
eventually 10 "everywhere counts 2 ready and names node-c as unavailable" not_available
k -n apps get events.events.k8s.io -o jsonpath='{.items[*].reason}' | grep -q RolloutStarted \
  || fail "RolloutStarted Event published"
ok "RolloutStarted Event published"

# --- revisions ---------------------------------------------------------------------------------
rev=$(jp vip '{.status.updateRevision}')
spr() { k -n apps get staticpodrevisions -l staticpods.dev/set-name="$1" -o json; }
# "<number>:<hash>" of every revision of a set, by number.
history() {
  spr "$1" | python3 -c '
import json, sys
items = sorted(json.load(sys.stdin)["items"], key=lambda r: r["spec"]["revision"])
print(" ".join("%d:%s" % (r["spec"]["revision"], r["spec"]["hash"]) for r in items))'
}
# Both zone-x nodes carry vip's entry at the revision its status asks for.
entries_at_update() {
  local want n; want=$(jp vip '{.status.updateRevision}')
  for n in node-a node-b; do
    [[ $(k get nsp "$n" -o jsonpath='{.spec.pods[?(@.setName=="vip")].revision}') == "$want" ]] || return 1
  done
}
history_is() { [[ $(history "$1") == "$2" ]]; }
eventually 10 "revision 1 of vip exists" history_is vip "1:$rev"
owner=$(k -n apps get spr "vip-$rev" -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].uid}/{.metadata.ownerReferences[0].controller}')
[[ $owner == "StaticPodSet/vip/$(jp vip '{.metadata.uid}')/true" ]] || fail "revision owner: $owner"
ok "the revision is controlled by its set"
[[ $(k get nsp node-a -o jsonpath='{.spec.pods[?(@.setName=="vip")].revisionName}') == "vip-$rev" ]] \
  || fail "entries name the revision object"
ok "entries name the revision object"
[[ $(k get nsp node-a -o json | grep -c '"manifest"') == 0 ]] || fail "entries carry no manifest"
ok "entries carry no manifest"
{ is vip '{.status.updateRevisionNumber}' 1 && is vip '{.status.currentRevision}' "$rev"; } \
  || fail "status revision fields: $(jp vip '{.status}')"
ok "status: updateRevisionNumber 1, currentRevision $rev"
for change in '{"spec":{"hash":"0000000000"}}' '{"spec":{"manifest":{"kind":"Deployment"}}}' \
  '{"spec":{"template":{"metadata":{"labels":{"edited":"yes"}}}}}' '{"spec":{"template":null}}' '{"spec":{"setName":"other"}}'; do
  out=$(k -n apps patch spr "vip-$rev" --type=merge -p "$change" 2>&1) && fail "revision changed by $change"
  grep -Eq "immutable|Required value" <<<"$out" || fail "unexpected error for $change: $out"
done
ok "a revision's hash, manifest, template and set name cannot be changed or removed"

k -n apps patch sps vip --type=json -p '[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"busybox:1.37"}]' >/dev/null
new_revision() { r=$(k get nsp node-a -o jsonpath='{.spec.pods[?(@.setName=="vip")].revision}'); [[ -n $r && $r != "$1" ]]; }
eventually 10 "template change writes a new revision" new_revision "$rev"
rev2=$(k get nsp node-a -o jsonpath='{.spec.pods[?(@.setName=="vip")].revision}')
eventually 10 "revision 2 of vip exists" history_is vip "1:$rev 2:$rev2"
current_is() { is vip '{.status.currentRevision}' "$1" && is vip '{.status.updateRevision}' "$2"; }
eventually 10 "currentRevision stays $rev while the nodes run it" current_is "$rev" "$rev2"
eventually 10 "both nodes assigned $rev2" entries_at_update
agent node-a && agent node-b
eventually 10 "currentRevision moves to $rev2 once every node runs it" current_is "$rev2" "$rev2"

i=$(k get nsp node-a -o json | python3 -c 'import json,sys; print([p["setName"] for p in json.load(sys.stdin)["spec"]["pods"]].index("vip"))')
k patch nsp node-a --field-manager=human --type=json \
  -p "[{\"op\":\"replace\",\"path\":\"/spec/pods/$i/revisionName\",\"value\":\"by-hand\"}]" >/dev/null
not_edited() { ! k get nsp node-a -o json | grep -q by-hand; }
eventually 15 "an entry edited by hand is taken back" not_edited

# Rollback to revision 1: its template comes back whole; its object is reused as number 3.
k -n apps annotate sps vip staticpods.dev/rollback-to=1 >/dev/null
rolled_back() {
  [[ $(jp vip '{.spec.template.spec.containers[0].image}') == busybox:1.36 ]] &&
    [[ -z $(jp vip '{.metadata.annotations.staticpods\.dev/rollback-to}') ]] && history_is vip "2:$rev2 3:$rev"
}
eventually 15 "rollback-to 1 restores the template, removes the annotation, renumbers revision 1 as 3" rolled_back
eventually 10 "status: updateRevisionNumber 3" is vip '{.status.updateRevisionNumber}' 3
eventually 10 "nodes are assigned the rolled-back revision" entries_at_update
k -n apps get events.events.k8s.io -o jsonpath='{.items[?(@.reason=="RolledBack")].note}' | grep -q "revision 1 ($rev)" \
  || fail "RolledBack Event names revision 1"
ok "RolledBack Event names revision 1"
k -n apps annotate sps vip staticpods.dev/rollback-to=99 >/dev/null
refused() {
  [[ -z $(jp vip '{.metadata.annotations.staticpods\.dev/rollback-to}') ]] &&
    jp vip '{.status.conditions[?(@.type=="RollbackFailed")].message}' | grep -q "revision 99"
}
eventually 15 "rollback-to 99 is refused: annotation removed, RollbackFailed condition" refused
k -n apps get events.events.k8s.io -o jsonpath='{.items[?(@.reason=="RollbackRevisionNotFound")].type}' | grep -q Warning \
  || fail "Warning Event RollbackRevisionNotFound"
ok "a Warning Event says the revision does not exist"
history_is vip "2:$rev2 3:$rev" || fail "history after a refused rollback: $(history vip)"
ok "a refused rollback changes nothing"

# Pruning: the nodes report revision 3 ($rev); two more templates are written but not yet run.
agent node-a && agent node-b
eventually 10 "currentRevision is $rev again" current_is "$rev" "$rev"
image() { k -n apps patch sps vip --type=json -p "[{\"op\":\"replace\",\"path\":\"/spec/template/spec/containers/0/image\",\"value\":\"busybox:$1\"}]" >/dev/null; }
numbers() { history vip | tr ' ' '\n' | cut -d: -f1 | tr '\n' ' ' | sed 's/ $//'; }
numbers_are() { [[ $(numbers) == "$1" ]]; }
image 1.38
eventually 10 "revision 4" numbers_are "2 3 4"
image 1.39
eventually 10 "revision 5" numbers_are "2 3 4 5"
eventually 10 "status: updateRevisionNumber 5" is vip '{.status.updateRevisionNumber}' 5
eventually 10 "both nodes assigned revision 5" entries_at_update
k -n apps patch sps vip --type=merge -p '{"spec":{"revisionHistoryLimit":1}}' >/dev/null
# Old and unused: 2 and 4; the newest of them stays. 3 is run by the nodes, 5 is asked for.
eventually 10 "revisionHistoryLimit 1 keeps the newest old revision and every one in use" numbers_are "3 4 5"
k -n apps patch sps vip --type=merge -p '{"spec":{"revisionHistoryLimit":0}}' >/dev/null
eventually 10 "revisionHistoryLimit 0 still keeps the revision the nodes run" numbers_are "3 5"
agent node-a && agent node-b
eventually 10 "once no node runs it, it goes too" numbers_are "5"
out=$(k -n apps patch sps vip --type=merge -p '{"spec":{"revisionHistoryLimit":-1}}' 2>&1) && fail "revisionHistoryLimit -1 accepted"
ok "revisionHistoryLimit below 0 is rejected"

k label node node-b zone=y --overwrite >/dev/null
eventually 10 "relabelled node loses the entry" has_entries node-b everywhere
spec_managers() { # node: "manager operation" of every managedFields record touching spec
  k get nsp "$1" -o json --show-managed-fields |
    jq -r '.metadata.managedFields[] | select(.fieldsV1."f:spec"."f:pods" != null) | "\(.manager) \(.operation)"' | sort -u
}
[[ $(spec_managers node-a) == "staticpodset-operator Update" ]] \
  || fail "node-a's entries of two sets are not all the operator's: $(spec_managers node-a | tr '\n' ';')"
ok "node-a's entries, two sets' and a hand edit taken back, have one field manager: the operator's"

# A node object the API server refuses to change: the set shows it (condition and Warning Event with
# the server's message), its other node is written all the same, and the refused write is retried
# (with back-off) until it lands once the refusal is lifted.
k apply -f - >/dev/null <<'EOF'
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: freeze-node-c}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {apiGroups: [staticpods.dev], apiVersions: ["*"], operations: [UPDATE], resources: [nodestaticpods]}
  validations:
  - {expression: "object.metadata.name != 'node-c'", message: "node-c is frozen by the test"}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: freeze-node-c}
spec: {policyName: freeze-node-c, validationActions: [Deny]}
EOF
frozen() { # (output captured first: grep -q would cut the pipe short, and pipefail is on)
  local out; out=$(k patch nsp node-c --dry-run=server --type=merge -p '{"metadata":{"labels":{"probe":"x"}}}' 2>&1) || true
  grep -q "frozen by the test" <<<"$out"
}
eventually 30 "the policy refuses changes to node-c" frozen
k apply -f - >/dev/null <<'EOF'
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: zone-y, namespace: apps}
spec:
  nodeSelector: {matchLabels: {zone: "y"}}
  template:
    spec:
      containers: [{name: c, image: "busybox:1.36", command: [sleep, "3600"]}]
EOF
refused_shown() {
  is zone-y '{.status.conditions[?(@.type=="ReconcileFailure")].reason}' NodeWriteFailed &&
    [[ $(jp zone-y '{.status.conditions[?(@.type=="ReconcileFailure")].message}') == *node-c*"frozen by the test"* ]]
}
eventually 30 "the refused write shows on the set: ReconcileFailure NodeWriteFailed, naming node-c and the server's message" refused_shown
k -n apps get events.events.k8s.io \
  -o jsonpath='{range .items[?(@.reason=="NodeWriteFailed")]}{.type}/{.regarding.name}{"\n"}{end}' | grep -qx Warning/zone-y \
  || fail "a Warning Event NodeWriteFailed on zone-y"
ok "a Warning Event NodeWriteFailed on zone-y"
has_entries node-b 'everywhere zone-y' || fail "node-b written despite node-c's refusal: $(entries node-b)"
ok "node-b is written all the same"
k delete validatingadmissionpolicybinding freeze-node-c >/dev/null
k delete validatingadmissionpolicy freeze-node-c >/dev/null
landed() { has_entries node-c 'everywhere zone-y' && ! is zone-y '{.status.conditions[?(@.type=="ReconcileFailure")].status}' True; }
eventually 60 "once the refusal is lifted, the retried write lands and the failure is cleared" landed
k -n apps delete sps zone-y --wait=false >/dev/null
zone_y_withdrawn() { has_entries node-b everywhere && has_entries node-c everywhere; }
eventually 20 "zone-y deleted: its entries are withdrawn" zone_y_withdrawn
agent node-b && agent node-c notready
zone_y_gone() { ! k -n apps get sps zone-y >/dev/null 2>&1; }
eventually 20 "zone-y released once its agents let go" zone_y_gone

agent node-a && agent node-b
set_ready node-c False   # its agent still reports 'everywhere', but the node is down
k -n apps delete sps everywhere --wait=false >/dev/null
withdrawn() { has_entries node-a vip && has_entries node-b '' && has_entries node-c ''; }
eventually 10 "deleting a set removes its entries" withdrawn
# The finalizer looked at the deleted set again after that (each look that finds nodes still to wait
# for counts as a reconcile with result "waiting") and kept it.
waiting_reconciles() { metric 'staticpodset_operator_reconciles_total{result="waiting"}'; }
waits_before=$(waiting_reconciles)
[[ -n $waits_before ]] || fail "the operator's /metrics does not answer"
waited_again() { local n; n=$(waiting_reconciles); [[ -n $n ]] && ((n > waits_before)); }
eventually 10 "the finalizer decides again that it must wait (reconciles with result waiting: > $waits_before)" waited_again
k -n apps get sps everywhere >/dev/null 2>&1 || fail "finalizer waits while live agents still report the set"
ok "finalizer waits while live agents still report the set"
agent node-a && agent node-b   # the live agents drop the reports; node-c is NotReady and skipped
gone() { ! k -n apps get sps "$1" >/dev/null 2>&1; }
eventually 15 "set released once live agents are done" gone everywhere
k -n apps get events.events.k8s.io -o jsonpath='{.items[?(@.reason=="SkippedNodes")].note}' | grep -q "node-c (node not ready)" \
  || fail "SkippedNodes Event names node-c"
ok "SkippedNodes Event names node-c"

k -n apps patch sps vip --type=json -p '[{"op":"remove","path":"/metadata/finalizers"}]' >/dev/null
k -n apps delete sps vip >/dev/null
eventually 150 "the orphaned entry of a set deleted without finalizer is removed" has_entries node-a ''

# --- configuration files: configMap and secret volumes ----------------------------------------
k -n apps create configmap web-conf --from-literal=greeting=hello >/dev/null
k -n apps create secret generic web-tls --from-literal=tls.key=s3cret >/dev/null
conf_set() { # name configmap
  k apply -f - >/dev/null <<EOF
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: $1, namespace: apps}
spec:
  nodeSelector: {matchLabels: {zone: x}}
  revisionHistoryLimit: 0
  updateStrategy: {rollingUpdate: {maxUnavailable: "100%"}}
  template:
    spec:
      containers: [{name: c, image: "busybox:1.36", command: [sleep, "3600"]}]
      volumes:
      - {name: conf, configMap: {name: $2}}
      - {name: tls, secret: {secretName: web-tls}}
      - {name: extra, configMap: {name: not-there, optional: true}}
EOF
}
conf_set conf web-conf
# The config hash of the revision the set asks for, from the revision object's label.
config_hash() { k -n apps get spr "$1-$(jp "$1" '{.status.updateRevision}')" -o jsonpath='{.metadata.labels.staticpods\.dev/config-hash}' 2>/dev/null; }
bundle_value() { k -n sps-config get secret "staticpodset.apps.$1.$2" -o jsonpath="{.data.$3}" 2>/dev/null | base64 -d; }
has_bundle() { [[ -n $(config_hash conf) && $(bundle_value conf "$(config_hash conf)" 'conf\.greeting') == "$1" ]]; }
eventually 15 "a set with configMap and secret volumes gets a bundle with the data" has_bundle hello
h1=$(config_hash conf)
manifest=$(k -n apps get spr "conf-$(jp conf '{.status.updateRevision}')" -o json)
check_volumes='
import json, sys
h = sys.argv[1]
spec = json.load(sys.stdin)["spec"]["manifest"]["spec"]
vols = {v["name"]: v for v in spec["volumes"]}
assert all(set(v) == {"name", "hostPath"} for v in vols.values()), vols
for name in ("conf", "tls", "extra"):
    want = {"path": f"/etc/kubernetes/static-pod-resources/apps/conf/{h}/{name}", "type": "Directory"}
    assert vols[name]["hostPath"] == want, vols[name]
'
python3 -c "$check_volumes" "$h1" <<<"$manifest" \
  || fail "rendered config volumes: $manifest"
ok "the manifest mounts hostPath directories at the config hash and references no object"
bundle=$(k -n sps-config get secret "staticpodset.apps.conf.$h1" -o jsonpath='{.immutable}/{.metadata.labels.staticpods\.dev/set-namespace}/{.data.tls\.tls\.key}')
[[ $bundle == "true/apps/$(printf s3cret | base64)" ]] \
  || fail "bundle: $bundle"
ok "the bundle is immutable, labelled with its set, and holds the Secret's key too"
k -n apps create configmap web-conf --from-literal=greeting=bonjour --dry-run=client -o yaml | k apply -f - >/dev/null 2>&1
eventually 15 "a changed ConfigMap becomes a new revision with a new bundle" has_bundle bonjour
{ [[ $(config_hash conf) != "$h1" ]] && is conf '{.status.updateRevisionNumber}' 2; } \
  || fail "after the ConfigMap change: hash $(config_hash conf), revision $(jp conf '{.status.updateRevisionNumber}')"
ok "new config hash, revision 2"
agent node-a && agent node-b
old_bundle_gone() { ! k -n sps-config get secret "staticpodset.apps.conf.$h1" >/dev/null 2>&1; }
eventually 15 "once no revision names the old config hash, its bundle is deleted" old_bundle_gone
conf_set late missing-conf
reason_is() { is late '{.status.conditions[?(@.type=="Valid")].reason}' "$1"; }
eventually 15 "a missing ConfigMap is Valid=False ConfigNotFound" reason_is ConfigNotFound
jp late '{.status.conditions[?(@.type=="Valid")].message}' | grep -q 'ConfigMap apps/missing-conf not found' \
  || fail "message: $(jp late '{.status.conditions[?(@.type=="Valid")].message}')"
ok "the condition names the missing ConfigMap"
k -n apps create configmap missing-conf --from-literal=greeting=late >/dev/null
late_ok() { is late '{.status.conditions[?(@.type=="Valid")].status}' True && [[ -n $(config_hash late) ]]; }
eventually 15 "creating the ConfigMap lets the set through (watched, not polled)" late_ok
agent node-a && agent node-b
k -n apps delete sps conf late --wait=false >/dev/null
eventually 10 "deleting the sets removes their entries" has_entries node-a ''
agent node-a
no_bundles() { [[ -z $(k -n sps-config get secrets -l staticpods.dev/set-namespace=apps -o name) ]]; }
eventually 20 "deleting the sets deletes their bundles" no_bundles
config_reads() { metric "staticpodset_operator_config_reads_total{source=\"$1\"}"; }
api_reads=$(config_reads api) cache_reads=$(config_reads cache)
(( ${cache_reads:-0} > 0 && ${api_reads:-0} > 0 )) \
  || fail "config reads: api=$api_reads cache=$cache_reads"
ok "ConfigMap/Secret data is read again only after a change: $api_reads API reads, $cache_reads reused"

# --- API server down: the leader steps down before its Lease (6 s) expires, then leads again ----
[[ $(metric staticpodset_operator_leader) == 1 ]] || fail "leading before the outage"
ok "leading before the outage"
# Polled while the API server is stopped, for 8 to 9 s (wait_for counts whole seconds; the 6 s Lease
# has run out by then, whenever it was last renewed); judged once the API server runs again, so a
# failure leaves none stopped.
stepped_down() { [[ $(metric staticpodset_operator_leader) == 0 ]]; }
kill -STOP "$APISERVER_PID"
stop_start=$SECONDS
if wait_for "the leader to step down" 9 stepped_down; then stepped_after=$((SECONDS - stop_start)); else stepped_after=; fi
leader_during=$(metric staticpodset_operator_leader)
kill -CONT "$APISERVER_PID"
[[ -n $stepped_after ]] || fail "stepped down while the API server was unreachable (leader=$leader_during after 9s)"
ok "stepped down while the API server was unreachable (after ${stepped_after}s)"
leading() { [[ $(metric staticpodset_operator_leader) == 1 ]]; }
eventually 30 "leads again once the API server is back" leading
! grep -q Forbidden operator.log || fail "no Forbidden in the operator log: $(grep -m 3 Forbidden operator.log)"
ok "no Forbidden in the operator log (RBAC.md is enough)"
