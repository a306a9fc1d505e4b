#!/usr/bin/env bash
# Configuration as revisioned files, on the real cluster:
#   a set with a configMap and a secret volume -> the pods on both nodes serve the ConfigMap's value
#   from their mounted files -> on each node the files sit under the node's resources directory at
#   the config hash, Secret files 0600 and owned by root -> files edited or deleted on a node are put
#   back, the pod sees it -> change the ConfigMap -> a new revision
#   rolls out and the pods serve the new value, the old hash directory is pruned on both nodes
#   -> delete the set -> its resource directories and its bundles are gone.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

A=${NODES[0]} B=${NODES[1]}

cleanup() {
  kubectl delete sps conf -n "$E2E_NS" --wait=true --timeout=120s >/dev/null 2>&1 || true
  kubectl delete configmap conf-data -n "$E2E_NS" >/dev/null 2>&1 || true
  kubectl delete secret conf-secret -n "$E2E_NS" >/dev/null 2>&1 || true
}
trap cleanup EXIT

install_product
ensure_e2e_namespace

config_map() { # greeting
  kubectl create configmap conf-data -n "$E2E_NS" --from-literal=greeting="$1" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}
config_map hello
kubectl create secret generic conf-secret -n "$E2E_NS" --from-literal=token=s3cret \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null

# The pod reads the Secret's file before it serves (so it cannot start without it) and serves the
# ConfigMap's directory over HTTP.
kubectl apply -f - >/dev/null <<YAML
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: conf, namespace: $E2E_NS}
spec:
  updateStrategy: {rollingUpdate: {maxUnavailable: 1}}
  template:
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: $BUSYBOX_IMAGE
        imagePullPolicy: Never
        command: ["sh", "-c", "cat /secret/token >/dev/null && exec httpd -f -p 8080 -h /conf"]
        readinessProbe: {httpGet: {path: /greeting, port: 8080}, periodSeconds: 1}
        volumeMounts:
        - {name: conf, mountPath: /conf, readOnly: true}
        - {name: secret, mountPath: /secret, readOnly: true}
      volumes:
      - {name: conf, configMap: {name: conf-data}}
      - {name: secret, secret: {secretName: conf-secret}}
YAML

pod_ip() { kubectl get pod -n "$E2E_NS" "conf-$1" -o jsonpath='{.status.podIP}' 2>/dev/null; }
serves() { # node value
  local ip; ip=$(pod_ip "$1")
  [[ -n $ip && $(node_run "$1" curl -sf --max-time 2 "http://$ip:8080/greeting") == "$2" ]]
}
both_serve() { serves "$A" "$1" && serves "$B" "$1"; }
wait_for "both pods serve the ConfigMap's value from their files" 180 both_serve hello ||
  fail "the pods do not serve 'hello': $(kubectl get pods -n "$E2E_NS" -o wide 2>&1)"
ok "the static pods on both nodes read the ConfigMap value through their mounted files"

mirror_hash() { kubectl get pod -n "$E2E_NS" "conf-$1" -o 'jsonpath={.metadata.annotations.staticpods\.dev/config-hash}' 2>/dev/null; }
h1=$(mirror_hash "$A")
[[ -n $h1 && $(mirror_hash "$B") == "$h1" ]] || fail "config hash on the mirror pods: '$h1' / '$(mirror_hash "$B")'"
# The set's files on a node: resources/<namespace>/<set>/<config hash>.
hash_dir() { echo "$E2E_NS/conf/$1"; }
has_dir() { node_run "$1" test -d "$(node_path "$1" resources "$2")"; }
for n in "$A" "$B"; do
  d=$(hash_dir "$h1")
  [[ $(node_cat "$n" resources "$d/conf/greeting") == hello ]] || fail "$n: $d/conf/greeting"
  got=$(node_run "$n" stat -c '%a %U %G' "$(node_path "$n" resources "$d/secret/token")" \
    "$(node_path "$n" resources "$d/secret")" "$(node_path "$n" resources "$d/conf/greeting")" | tr '\n' ',')
  [[ $got == "600 root root,700 root root,644 root root," ]] ||
    fail "modes and owners on $n (token, its directory, greeting): $got"
done
ok "on both nodes: files under <resources>/<node>/$E2E_NS/conf/$h1/, Secret file 0600 root:root in a 0700 directory, ConfigMap file 0644"
bundle() { kubectl get secret -n "$CONFIG_NS" "staticpodset.$E2E_NS.conf.$1" -o name 2>/dev/null; }
[[ -n $(bundle "$h1") ]] || fail "no bundle staticpodset.$E2E_NS.conf.$h1 in $CONFIG_NS"
kubectl get pod -n "$E2E_NS" "conf-$A" -o json | grep -Eq '"(configMap|secret)":' &&
  fail "the mirror pod references a ConfigMap or Secret"
ok "the mirror pod references no ConfigMap or Secret; the data is in bundle staticpodset.$E2E_NS.conf.$h1"

# Drift on the node: an edited ConfigMap file and a deleted Secret file are put back in place (the
# running pod's mount holds the directory, so it sees the repair without a restart).
d=$(hash_dir "$h1")
echo tampered | node_put "$A" resources "$d/conf/greeting"
node_rm "$A" resources "$d/secret/token"
token_mode() { node_run "$A" stat -c '%a %U' "$(node_path "$A" resources "$d/secret/token")" 2>&1; }
repaired() { [[ $(node_cat "$A" resources "$d/conf/greeting") == hello && $(token_mode) == "600 root" ]] && serves "$A" hello; }
wait_for "the agent puts the files back" 60 repaired ||
  fail "after tampering on $A: greeting '$(node_cat "$A" resources "$d/conf/greeting")', token $(token_mode)"
restored=$(agent_metric "$(agent_ip "$A")" 'staticpodset_agent_config_files_total{action="restored"}')
((restored >= 2)) || fail "staticpodset_agent_config_files_total{action=\"restored\"} is '${restored}'"
ok "an edited and a deleted file on $A were put back (the pod serves 'hello' again); metric restored=$restored"

rev1=$(sps_status conf updateRevisionNumber)
t0=$(date +%s.%N)
config_map bonjour
wait_for "both pods serve the new value" 180 both_serve bonjour ||
  fail "after the ConfigMap change: $(node_run "$A" curl -s "http://$(pod_ip "$A"):8080/greeting") / $(node_run "$B" curl -s "http://$(pod_ip "$B"):8080/greeting")"
t1=$(date +%s.%N)
h2=$(mirror_hash "$A")
[[ $h2 != "$h1" && $(mirror_hash "$B") == "$h2" && $(sps_status conf updateRevisionNumber) -gt $rev1 ]] ||
  fail "new revision: hash $h1 -> $h2, number $rev1 -> $(sps_status conf updateRevisionNumber)"
ok "changing the ConfigMap rolled out revision $(sps_status conf updateRevisionNumber) (config hash $h2) to both nodes in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')s"
old_pruned() {
  ! node_has "$A" resources "$(hash_dir "$h1")" && ! node_has "$B" resources "$(hash_dir "$h1")" &&
    has_dir "$A" "$(hash_dir "$h2")" && has_dir "$B" "$(hash_dir "$h2")"
}
wait_for "the old hash directories are pruned" 60 old_pruned ||
  fail "hash directories: $(node_ls "$A" resources "$E2E_NS/conf/*") / $(node_ls "$B" resources "$E2E_NS/conf/*")"
ok "the old config hash's directories were pruned on both nodes; the running one's kept"

kubectl delete sps conf -n "$E2E_NS" --wait=true --timeout=120s >/dev/null || fail "deleting the set"
set_dirs_gone() { ! node_has "$A" resources "$E2E_NS/conf" && ! node_has "$B" resources "$E2E_NS/conf"; }
wait_for "the set's resource directories are removed" 60 set_dirs_gone ||
  fail "left behind: $(node_run "$A" find "$(node_path "$A" resources)" 2>&1) $(node_run "$B" find "$(node_path "$B" resources)" 2>&1)"
no_bundles() { [[ -z $(kubectl get secrets -n "$CONFIG_NS" -l "staticpods.dev/set-namespace=$E2E_NS,staticpods.dev/set-name=conf" -o name) ]]; }
wait_for "the set's bundles are deleted" 30 no_bundles || fail "bundles left: $(kubectl get secrets -n "$CONFIG_NS" -o name)"
ok "deleting the set removed its resource directories on both nodes and its bundles"

echo "70-config-files: $passed passed, 0 failed"
