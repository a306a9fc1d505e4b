#!/usr/bin/env bash
# Deletes the StaticPodSet kind cluster and stops our dockerd (tests/kind/dockerd.sh).
# KIND_KEEP_DOCKERD=1 keeps dockerd running (the node image stays cached in its data-root either way).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ -S $DOCKER_SOCK ]] && docker version >/dev/null 2>&1; then
  if [[ -x $KIND ]] && "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
    timed "kind delete cluster" "$KIND" delete cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_KIND"
  fi
  "$KIND_DIR/registry.sh" stop
  # kind leaves its docker network (a bridge on the host); remove it when no container uses it.
  if docker network inspect kind >/dev/null 2>&1 &&
    [[ -z $(docker network inspect kind -f '{{range .Containers}}x{{end}}') ]]; then
    docker network rm kind >/dev/null && log "removed docker network kind"
  fi
fi
rm -f "$KUBECONFIG_KIND"
# The node image a rebuild replaced stays until no node uses it; drop it now.
if docker version >/dev/null 2>&1; then docker image prune -f >/dev/null; fi
[[ ${KIND_KEEP_DOCKERD:-} == 1 ]] || "$KIND_DIR/dockerd.sh" stop
