#!/usr/bin/env bash
# Admission check of the StaticPodSet CRDs against a real API server (KUBECONFIG must point at it):
#  1. `kubectl apply -f crds/` (client-side apply, so the CRDs must fit the 256 KiB
#     last-applied-configuration annotation) succeeds and the CRDs become Established;
#  2. a valid StaticPodSet that uses everything a static pod may use is accepted;
#  3. every manifest under tests/e2e/invalid/ (one forbidden thing each) is rejected, and the error
#     names the field from the manifest's `# field:` comment: the error has a `<field>: ` line whose
#     message mentions the field's last segment, or the text of the `# message:` comment if any.
# It cleans up what it created: its namespace, and the CRDs if they did not exist before.
# The sets select no node (a label no node has), so a running operator renders nothing for them.
# lib.sh: the cache's kubectl first on PATH, REPO_ROOT, log/ok/fail/wait_for; it checks KUBECONFIG.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KUBECTL=${KUBECTL:-kubectl}
CRDS=(staticpodsets.staticpods.dev staticpodrevisions.staticpods.dev nodestaticpods.staticpods.dev)
ns=sps-crd-admission-$$

k() { "$KUBECTL" "$@"; }

created_crds=()
cleanup() {
  local rc=$?
  if k get namespace "$ns" >/dev/null 2>&1; then
    # The operator, if running, puts a finalizer on sets; it never acts on these (they select no
    # node), but drop it if it lingers so the namespace can go.
    if ! k delete staticpodsets --all -n "$ns" --timeout=30s >/dev/null 2>&1; then
      for s in $(k get staticpodsets -n "$ns" -o name 2>/dev/null); do
        k patch "$s" -n "$ns" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
      done
    fi
    # The namespace controller finishes this on its own; nothing waits on it.
    k delete namespace "$ns" --wait=false >/dev/null 2>&1 || log "could not delete namespace $ns"
  fi
  for crd in "${created_crds[@]}"; do
    k delete crd "$crd" --timeout=60s >/dev/null 2>&1 || log "could not delete CRD $crd"
  done
  exit "$rc"
}
trap cleanup EXIT

for crd in "${CRDS[@]}"; do
  k get crd "$crd" >/dev/null 2>&1 || created_crds+=("$crd")
done
log "applying $REPO_ROOT/crds/ (client-side)"
k apply -f "$REPO_ROOT/crds/"
established() {
  [[ $(k get crd "$1" -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}' 2>/dev/null) == True ]]
}
for crd in "${CRDS[@]}"; do
  # Polled: `kubectl wait` fails outright while a new CRD has no conditions yet.
  wait_for "CRD $crd Established" 60 established "$crd" || fail "CRD $crd not Established after 60s"
done
ok "CRDs applied client-side and Established"
k create namespace "$ns" >/dev/null

log "a valid set must be accepted"
k apply -n "$ns" -f - <<'YAML'
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata:
  name: valid-set-with-a-name-of-40-characters-x
spec:
  nodeSelector:
    matchLabels: {staticpods.dev/e2e: crd-admission-no-such-node}
  template:
    metadata:
      labels: {app: crd-admission}
    spec:
      automountServiceAccountToken: false
      serviceAccountName: ""
      imagePullSecrets: []
      hostNetwork: true
      initContainers:
      - name: init
        image: busybox
        env:
        - {name: PLAIN, value: "1"}
        - name: NODE
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
      containers:
      - name: main
        image: busybox
        command: [sleep, infinity]
        env:
        - name: CPU
          valueFrom: {resourceFieldRef: {resource: limits.cpu}}
        envFrom: []
        volumeMounts:
        - {name: config, mountPath: /etc/app}
      volumes:
      - name: config
        hostPath: {path: /etc/app, type: DirectoryOrCreate}
      - name: scratch
        emptyDir: {}
      - name: info
        downwardAPI:
          items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]
      - name: projected-info
        projected:
          sources:
          - downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}
      - name: ceph-without-secret
        cephfs: {monitors: ["10.0.0.1:6789"], user: admin}
      - name: nfs
        nfs: {server: 10.0.0.1, path: /export}
YAML
ok "a valid set using everything a static pod may use is accepted"

failures=0
checked=0
for f in "$HERE"/invalid/*.yaml; do
  name=$(basename "$f")
  field=$(sed -n 's/^# field: //p' "$f")
  message=$(sed -n 's/^# message: //p' "$f")
  [[ -n $field ]] || { log "FAIL $name: no '# field:' comment"; failures=$((failures + 1)); continue; }
  checked=$((checked + 1))
  if out=$(k apply -n "$ns" -f "$f" 2>&1); then
    log "FAIL $name: accepted, expected a rejection of $field"
    failures=$((failures + 1))
    continue
  fi
  # The line reporting the field: `<field>: <reason>: <message>` (possibly after `is invalid: ` or `* `).
  line=$(grep -F -- "$field: " <<<"$out" | head -n1 || true)
  rest=${line#*"$field: "}
  leaf=${field##*.}
  leaf=${leaf%%\[*}
  want=${message:-$leaf}
  if [[ -z $line || $rest != *"$want"* ]]; then
    log "FAIL $name: expected an error on '$field' mentioning '$want', got: $out"
    failures=$((failures + 1))
  else
    ok "$name: $field: $rest"
  fi
done

((checked > 0)) || fail "no manifests under $HERE/invalid"
((failures == 0)) || fail "$failures of $checked invalid manifests were not rejected as expected"
log "PASS: CRDs applied, valid set accepted, $checked invalid sets rejected with the field named"
echo "05-crd-admission: $passed passed, 0 failed"
