#!/usr/bin/env bash
# Smoke test of the local cluster (KUBECONFIG must point at it):
#  1. a plain static pod manifest dropped into node A's staticPodPath yields the mirror pod
#     `<name>-<node A>`, which becomes Ready and carries kubernetes.io/config.mirror, and which
#     disappears when the file is removed;
#  2. a Deployment's pod is scheduled onto a node and becomes Ready (controller-manager + scheduler).
# Runs before the product is installed; lib.sh only defines things (and checks KUBECONFIG).
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

node=${NODES[0]}
name=smoke-static
mirror=$name-$node
manifest=$name.yaml
ns=default

cleanup() { node_rm "$node" manifests "$manifest" || true; kubectl delete deployment smoke-deploy -n "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true; }
trap cleanup EXIT

server_version=$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')
[[ $server_version == "$K8S_VERSION" ]] || fail "kubectl version reports server $server_version, want $K8S_VERSION"
for n in "${NODES[@]}"; do
  [[ $(kubectl get node "$n" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]] || fail "node $n not Ready"
done
ok "server $server_version, nodes ${NODES[*]} Ready"

log "static pod: writing $(node_path "$node" manifests "$manifest") on $node"
# Written beside it and renamed, as a manifest must appear: whole (the kubelet ignores dot files).
tmp=.$name.yaml.tmp
node_put "$node" manifests "$tmp" <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $name
  namespace: $ns
  labels: {app: smoke}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["sh", "-c", "exec sleep 100000"]
YAML
node_run "$node" mv "$(node_path "$node" manifests "$tmp")" "$(node_path "$node" manifests "$manifest")"

wait_for "mirror pod $mirror" 120 kubectl get pod -n "$ns" "$mirror" || fail "mirror pod $mirror never appeared"
kubectl wait -n "$ns" --for=condition=Ready "pod/$mirror" --timeout=120s >/dev/null || fail "$mirror not Ready"
mirror_ann=$(kubectl get pod -n "$ns" "$mirror" -o jsonpath='{.metadata.annotations.kubernetes\.io/config\.mirror}')
[[ -n $mirror_ann ]] || fail "$mirror lacks kubernetes.io/config.mirror"
[[ $(kubectl get pod -n "$ns" "$mirror" -o jsonpath='{.spec.nodeName}') == "$node" ]] || fail "$mirror not on $node"
ok "$mirror Ready with config.mirror=$mirror_ann"

node_rm "$node" manifests "$manifest"
kubectl wait -n "$ns" --for=delete "pod/$mirror" --timeout=120s >/dev/null || fail "$mirror still present after the manifest was removed"
ok "$mirror gone after the manifest was removed"

log "deployment through the scheduler"
kubectl create deployment smoke-deploy -n "$ns" --image="$BUSYBOX_IMAGE" -- sh -c 'exec sleep 100000' >/dev/null
kubectl patch deployment smoke-deploy -n "$ns" --type=json \
  -p '[{"op":"add","path":"/spec/template/spec/containers/0/imagePullPolicy","value":"Never"}]' >/dev/null
kubectl rollout status deployment/smoke-deploy -n "$ns" --timeout=180s >/dev/null || fail "deployment did not become available"
pod_node=$(kubectl get pods -n "$ns" -l app=smoke-deploy -o jsonpath='{.items[0].spec.nodeName}')
[[ " ${NODES[*]} " == *" $pod_node "* ]] || fail "deployment pod on unexpected node '$pod_node'"
ok "deployment pod Ready on $pod_node"
kubectl delete deployment smoke-deploy -n "$ns" --wait=true --timeout=120s >/dev/null
echo "smoke: $passed passed, 0 failed"
