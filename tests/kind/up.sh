#!/usr/bin/env bash
# Brings up the StaticPodSet kind cluster with only our own builds (no pulls):
#   our dockerd (dockerd.sh) -> kind (build-kind.sh) -> the node image (node-image.sh)
#   -> kind create cluster --config cluster.yaml (+ failCgroupV1: false on cgroup v1 hosts)
#   -> our CNI on every node -> all nodes Ready, CoreDNS Ready -> the local registry (registry.sh).
# Prints the kubeconfig path on stdout. Idempotent: an existing cluster is kept.
# KIND_KEEP_ON_FAILURE=1 keeps a half-made cluster for inspection (kind create --retain).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cgroup_v1() { [[ $(stat -fc %T /sys/fs/cgroup) != cgroup2fs ]]; }

# The config kind gets: cluster.yaml, plus the kubelet patch on cgroup v1 hosts.
cluster_config() {
  local out=$KIND_CACHE/cluster.yaml
  cp "$KIND_DIR/cluster.yaml" "$out"
  if cgroup_v1; then
    cat >>"$out" <<'CFG'
# Added by tests/kind/up.sh: this host mounts cgroup v1.
kubeadmConfigPatches:
  - |
    kind: KubeletConfiguration
    failCgroupV1: false
CFG
  fi
  echo "$out"
}

kind_nodes() { kind get nodes --name "$CLUSTER_NAME" 2>/dev/null; }

# Each node's CNI config: a bridge with host-local addresses from the node's podCIDR, and a route to
# every other node's podCIDR through that node's address on kind's docker network.
install_cni() {
  local n cidr ip other ocidr oip
  declare -A node_cidr node_ip
  for n in $(kind_nodes); do
    wait_for "podCIDR of $n" 120 kubectl get node "$n" -o jsonpath='{.spec.podCIDR}' || die "no podCIDR on $n"
    node_cidr[$n]=$(kubectl get node "$n" -o jsonpath='{.spec.podCIDR}')
    node_ip[$n]=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$n")
    [[ -n ${node_cidr[$n]} ]] || die "node $n has no podCIDR"
  done
  for n in "${!node_cidr[@]}"; do
    cidr=${node_cidr[$n]} ip=${node_ip[$n]}
    docker exec -i "$n" sh -c 'mkdir -p /etc/cni/net.d && cat >/etc/cni/net.d/10-sps.conflist' <<CNI
{
  "cniVersion": "1.0.0",
  "name": "sps",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "sps0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$cidr"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
    for other in "${!node_cidr[@]}"; do
      [[ $other == "$n" ]] && continue
      ocidr=${node_cidr[$other]} oip=${node_ip[$other]}
      docker exec "$n" ip route replace "$ocidr" via "$oip"
    done
    # This host reaches the pods (the suites' Prometheus scrapes them) through their node.
    ip route replace "$cidr" via "$ip"
    log "CNI on $n: $cidr (node address $ip, routed from this host)"
  done
}

nodes_ready() {
  local want; want=$(kind_nodes | wc -l)
  [[ $(kubectl get nodes --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l) -eq $want ]]
}

main() {
  "$KIND_DIR/dockerd.sh" start
  "$KIND_DIR/build-kind.sh"
  "$KIND_DIR/node-image.sh"
  export KUBECONFIG=$KUBECONFIG_KIND
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
    log "kind cluster $CLUSTER_NAME exists"
    local node_img want_img
    node_img=$(docker inspect -f '{{.Image}}' "$CLUSTER_NAME-control-plane" 2>/dev/null || true)
    want_img=$(docker image inspect -f '{{.Id}}' "$NODE_IMAGE")
    [[ $node_img == "$want_img" ]] ||
      log "WARNING: the cluster runs an older node image than $NODE_IMAGE: tests/kind/down.sh, then up.sh, to use the new one"
  else
    local cfg args=(); cfg=$(cluster_config)
    [[ ${KIND_KEEP_ON_FAILURE:-} == 1 ]] && args+=(--retain)
    timed "kind create cluster" kind create cluster --name "$CLUSTER_NAME" --image "$NODE_IMAGE" \
      --config "$cfg" --kubeconfig "$KUBECONFIG_KIND" --wait 0s "${args[@]}"
  fi
  timed "CNI install" install_cni
  timed "nodes Ready" wait_for "all nodes Ready" 300 nodes_ready || { kubectl get nodes -o wide >&2; die "nodes not Ready"; }
  timed "CoreDNS Ready" kubectl -n kube-system rollout status deployment/coredns --timeout=300s >&2
  timed "local registry" "$KIND_DIR/registry.sh" start
  kubectl get nodes -o wide >&2
  echo "$KUBECONFIG_KIND"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then timed "kind up" main "$@"; fi
