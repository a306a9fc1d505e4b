# shellcheck shell=bash
# Shared settings of the kind scripts (tests/kind/*.sh). Builds on the host harness's common.sh
# (pinned versions, cache paths, log/die/timed/wait_for) and never touches its run folder.
# shellcheck disable=SC2034  # the settings below are read by the scripts that source this file
# shellcheck source=../e2e/cluster/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/cluster/lib/common.sh"

KIND_DIR=$REPO_ROOT/tests/kind
KIND_VERSION=${KIND_VERSION:-v0.33.0}
# The CNI plugins we build from the Go module proxy (bridge, host-local, loopback, portmap).
CNI_PLUGINS_VERSION=${CNI_PLUGINS_VERSION:-v1.9.0}
KIND_CACHE=$CACHE_DIR/kind
KIND_BIN_DIR=$KIND_CACHE/bin
KIND=$KIND_BIN_DIR/kind
KUBEADM=$BIN_DIR/kubeadm
CLUSTER_NAME=${KIND_CLUSTER_NAME:-staticpodset}
NODE_IMAGE=${KIND_NODE_IMAGE:-staticpodset.local/kind-node:$K8S_VERSION}

# Our own dockerd (dockerd.sh): everything it owns lives under these paths.
DOCKER_ROOT=$KIND_CACHE/docker
DOCKER_EXEC_ROOT=/run/sps-kind-docker
DOCKER_SOCK=$DOCKER_EXEC_ROOT/docker.sock
DOCKER_PIDFILE=$DOCKER_EXEC_ROOT/dockerd.pid
DOCKER_LOG=$KIND_CACHE/dockerd.log
# Our docker CLI is 28.x; Debian's daemon is 20.10 (API 1.41). KIND_USE_EXISTING=1 (hosted CI): the
# machine's own docker and an existing kind cluster instead.
if [[ ${KIND_USE_EXISTING:-0} != 1 ]]; then
  export DOCKER_HOST=unix://$DOCKER_SOCK DOCKER_API_VERSION=1.41
fi
export PATH="$KIND_BIN_DIR:$PATH"

KUBECONFIG_KIND=$KIND_CACHE/kubeconfig

# The local registry (registry.sh), kind's documented pattern: a container named kind-registry on
# kind's network; the host pushes to $KIND_REGISTRY (docker-proxy on loopback), the nodes' containerd
# resolve $KIND_REGISTRY/... to http://kind-registry:5000. Suites use REGISTRY=$KIND_REGISTRY.
KIND_REGISTRY_PORT=${KIND_REGISTRY_PORT:-5001}
KIND_REGISTRY=localhost:$KIND_REGISTRY_PORT
KIND_REGISTRY_NAME=kind-registry
KIND_REGISTRY_IMAGE=staticpodset.local/registry:$REGISTRY_VERSION
