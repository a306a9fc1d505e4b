# shellcheck shell=bash
# Shared settings for the local cluster harness: pinned versions (versions.sh), where things live, and
# small helpers (log, die, timed, wait_for, daemons). Sourced by every script under tests/e2e/cluster/
# and, through tests/e2e/lib.sh, by every suite. Everything that must survive between runs (built
# binaries, images) lives in the cache folder outside the clone; everything a running cluster needs
# (certs, data dirs, sockets, logs) lives in the run folder and is removed by `down`.
# shellcheck disable=SC2034  # the settings below are read by the scripts that source this file

set -euo pipefail

# --- Pinned versions: tests/e2e/cluster/versions.sh ------------------------------------------------
# shellcheck source=../versions.sh
source "$(dirname "${BASH_SOURCE[0]}")/../versions.sh"

# --- Paths ----------------------------------------------------------------------------------------
HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_ROOT=$(cd "$HARNESS_DIR/../../.." && pwd)
CACHE_DIR=${STATICPODSET_CACHE:-$HOME/.cache/staticpodset}
BIN_DIR=$CACHE_DIR/k8s-$K8S_VERSION/bin
TOOLS_BIN=$CACHE_DIR/tools/bin            # etcd, containerd, helm, crictl, registry (own versions)
IMAGES_DIR=$CACHE_DIR/images             # OCI archives we assemble
# The run folder holds the live cluster. It is a fixed path so that `down` and a second `up` find it.
RUN_DIR=${STATICPODSET_RUN:-/var/lib/staticpodset-e2e}
# containerd limits its shim socket dir to 42 characters, so node sockets live under a short path.
SOCK_DIR=/run/staticpodset-e2e
CERT_DIR=$RUN_DIR/pki
LOG_DIR=$RUN_DIR/logs
PID_DIR=$RUN_DIR/pids
KUBECONFIG_ADMIN=$RUN_DIR/admin.kubeconfig

API_PORT=${API_PORT:-6443}
ETCD_CLIENT_PORT=${ETCD_CLIENT_PORT:-2379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-2380}
SERVICE_CIDR=10.0.0.0/24
SERVICE_API_IP=10.0.0.1
CLUSTER_DNS=10.0.0.10
# The API server advertises (and the nodes report) an address of our own that we add to the loopback
# link: the in-cluster `kubernetes` Service needs a non-127.0.0.0/8 endpoint, pods reach it through
# the host, and the machine's real interfaces are left alone. Traffic to it never leaves the machine.
API_ADDRESS=10.89.0.1

# The nodes: name, kubelet port, healthz port, pod subnet, bridge. Everything else is derived.
NODES=(spsnode-a spsnode-b)
declare -A NODE_KUBELET_PORT=([spsnode-a]=10250 [spsnode-b]=10260)
declare -A NODE_HEALTHZ_PORT=([spsnode-a]=10248 [spsnode-b]=10258)
declare -A NODE_POD_CIDR=([spsnode-a]=10.88.1.0/24 [spsnode-b]=10.88.2.0/24)
declare -A NODE_BRIDGE=([spsnode-a]=spsbr-a [spsnode-b]=spsbr-b)
# The local registry (lib/registry.sh): plain HTTP on loopback. Images named $REGISTRY/... are pulled
# from it by every node.
REGISTRY=${REGISTRY:-127.0.0.1:5055}
# The image containerd runs as every pod's sandbox; we build and import it ourselves.
PAUSE_IMAGE=registry.k8s.io/pause:3.10-sps
BUSYBOX_IMAGE=docker.io/library/busybox:1.35-sps
WEB_IMAGE=docker.io/library/sps-web:1

export PATH="$BIN_DIR:$TOOLS_BIN:$PATH"

# Web-hosted manifests: the agents publish their static pod URL endpoint as this hostPort. Both nodes
# share this host, so each node's host ports answer only at its own bridge address (its pod
# subnet's gateway; see the portmap conditions in lib/node.sh), as a real node's answer at its IP.
STATIC_POD_URL_PORT=10280
STATIC_POD_URL_HEADER=X-StaticPodSet-Token
node_gateway() { local net=${NODE_POD_CIDR[$1]%/*}; echo "${net%.*}.1"; }
static_pod_url() { echo "http://$(node_gateway "$1"):$STATIC_POD_URL_PORT/static-pods"; }
# The shared value of the header the kubelet sends and the agents require; made on first use.
static_pod_url_token() {
  local f=$RUN_DIR/static-pod-url-token
  [[ -s $f ]] || (umask 077 && openssl rand -hex 16 >"$f")
  cat "$f"
}

node_dir() { echo "$RUN_DIR/nodes/$1"; }
containerd_sock() { echo "$(node_dir "$1")/containerd/containerd.sock"; }
# All nodes' staticPodPaths share one parent, so one DaemonSet (hostPath = the parent, subPathExpr =
# the node name) gives each agent exactly its own node's directory, as on a real cluster.
MANIFESTS_ROOT=$RUN_DIR/manifests
static_pod_dir() { echo "$MANIFESTS_ROOT/$1"; }
# Each node's configuration files (the agent's --resources-host-dir): <root>/<node>.
RESOURCES_ROOT=$RUN_DIR/static-pod-resources
# The agents' last-known state (chart agent.stateDir): one file per node, <node>.json.
AGENT_STATE_DIR=$RUN_DIR/agent-state
resources_dir() { echo "$RESOURCES_ROOT/$1"; }

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Runs a step and prints how long it took, so slow steps are visible in CI logs.
timed() {
  local what=$1; shift
  local start=$SECONDS
  "$@"
  log "$what took $((SECONDS - start))s"
}

# wait_for WHAT DEADLINE COMMAND...: polls COMMAND (its output discarded, run in this shell) every
# WAIT_FOR_INTERVAL seconds (default 0.5) until it succeeds: 0; or until DEADLINE seconds passed:
# logs that it timed out, 1. The one wait of the harness and of every suite. Never a blind sleep.
wait_for() {
  local what=$1 deadline=$2; shift 2
  local end=$((SECONDS + deadline))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then
      log "timed out after ${deadline}s waiting for $what"
      return 1
    fi
    sleep "${WAIT_FOR_INTERVAL:-0.5}"
  done
}

# Starts a long-running process in its own session, records its pid, logs to LOG_DIR. The daemon
# gets no other open file of the caller: `flock LOCK cmd` hands its lock's descriptor to cmd, and a
# daemon that inherited it would hold the lock for as long as it runs.
start_daemon() {
  local name=$1; shift
  mkdir -p "$LOG_DIR" "$PID_DIR"
  (
    for fd in "/proc/$BASHPID/fd/"*; do
      fd=${fd##*/}
      ((fd > 2)) && eval "exec $fd>&-"
    done
    exec setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null
  ) &
  echo $! >"$PID_DIR/$name.pid"
}

# Waits for a daemon started with start_daemon to pass a health command; fails at once, showing the
# end of its log, if the process exits first.
wait_daemon() {
  local name=$1 deadline=$2; shift 2
  local end=$((SECONDS + deadline))
  until "$@" >/dev/null 2>&1; do
    if ! daemon_running "$name"; then
      log "$name exited; last lines of $LOG_DIR/$name.log:"
      tail -n 15 "$LOG_DIR/$name.log" >&2
      return 1
    fi
    if ((SECONDS >= end)); then
      log "timed out after ${deadline}s waiting for $name; last lines of its log:"
      tail -n 15 "$LOG_DIR/$name.log" >&2
      return 1
    fi
    sleep 0.5
  done
}

daemon_running() {
  local pidfile=$PID_DIR/$1.pid
  [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}
