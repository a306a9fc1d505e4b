# shellcheck shell=bash
# How the suites reach into a node: the only way they do. Sourced by lib.sh.
#
# E2E_PROVIDER chooses the provider:
#   local  the harness's own cluster (tests/e2e/cluster/): every node's files are on this host, its
#          containerd has a socket here, and the control plane and kubelets are host processes.
#   kind   a kind cluster: each node is a container; everything goes through `docker exec`, the API
#          server stops as a kubeadm operator would stop it (its static pod manifest moved out),
#          and a kubelet restarts with systemctl.
#
# The node's directories, by kind: manifests (its staticPodPath), resources (the agent's
# configuration files) and state (the agent's last-known state, one <node>.json per node).
#
#   node_run NODE CMD...             run CMD on NODE (local: on this host)
#   node_path NODE KIND [REL]        the path of KIND's directory (or of REL in it) on NODE
#   node_has NODE KIND REL           REL exists there
#   node_cat NODE KIND REL           print REL
#   node_put NODE KIND REL           write stdin to REL
#   node_rm NODE KIND REL...         remove REL (and more), quietly when absent
#   node_ls NODE KIND [GLOB]         the names in KIND's directory matching GLOB (default *), sorted
#   node_sha256 NODE KIND GLOB       sha256sum of the matching files (names relative to the directory)
#   crictl_on NODE ARGS...           crictl against NODE's container runtime
#   apiserver_kill / apiserver_start stop the API server abruptly / start it again and wait for it
#   kubelet_stop NODE / kubelet_start NODE / kubelet_restart NODE
#   kubelet_url_mode NODE on|off     restart NODE's kubelet reading its static pods from its agent's
#                                    URL (on) or from its staticPodPath (off)
#   node_address NODE                where this host reaches NODE's host-network ports
#   node_listen_address              the address a hostNetwork test server listens on, for that
#   node_static_pod_url NODE         the static pod URL NODE's kubelet asks in URL mode (from NODE)
#   node_cni_conflist NODE           print NODE's CNI configuration

E2E_PROVIDER=${E2E_PROVIDER:-local}
case $E2E_PROVIDER in
  local) ;;
  kind)
    # The suites' two nodes are the kind cluster's workers (tests/kind/cluster.yaml); the
    # control-plane node runs the control plane's static pods, which the suites leave alone.
    KIND_CLUSTER=${KIND_CLUSTER:-staticpodset}
    NODES=("$KIND_CLUSTER-worker" "$KIND_CLUSTER-worker2")
    mkdir -p "$RUN_DIR"
    ;;
  *) die "E2E_PROVIDER=$E2E_PROVIDER: use local or kind" ;;
esac

# KIND's directory on NODE.
_node_dir() {
  case $E2E_PROVIDER/$2 in
    local/manifests) echo "$MANIFESTS_ROOT/$1" ;;
    local/resources) echo "$RESOURCES_ROOT/$1" ;;
    local/state) echo "$AGENT_STATE_DIR" ;;
    # The chart's defaults, as README installs it.
    kind/manifests) echo /etc/kubernetes/manifests ;;
    kind/resources) echo /etc/kubernetes/static-pod-resources ;;
    kind/state) echo /var/lib/staticpodset-agent ;;
    *) die "node_path: unknown directory '$2' (manifests, resources, state)" ;;
  esac
}

node_run() {
  local n=$1; shift
  if [[ $E2E_PROVIDER == kind ]]; then docker exec -i "$n" "$@"; else "$@"; fi
}
node_path() {
  local dir; dir=$(_node_dir "$1" "$2")
  echo "$dir${3:+/$3}"
}
node_has() { node_run "$1" test -e "$(node_path "$1" "$2" "$3")"; }
node_cat() { node_run "$1" cat "$(node_path "$1" "$2" "$3")"; }
# The scripts below run on the node with their arguments as $1, $2: single quotes on purpose.
# shellcheck disable=SC2016
node_put() { node_run "$1" sh -c 'cat >"$1"' sh "$(node_path "$1" "$2" "$3")"; }
node_rm() {
  local n=$1 kind=$2 rel paths=(); shift 2
  for rel in "$@"; do paths+=("$(node_path "$n" "$kind" "$rel")"); done
  node_run "$n" rm -f -- "${paths[@]}"
}
# shellcheck disable=SC2016
node_ls() {
  # The glob is expanded on the node; no match prints nothing.
  node_run "$1" sh -c 'cd "$1" 2>/dev/null || exit 0; for f in $2; do [ -e "$f" ] && echo "$f"; done; true' \
    sh "$(node_path "$1" "$2")" "${3:-*}" | LC_ALL=C sort
}
# shellcheck disable=SC2016
node_sha256() {
  node_run "$1" sh -c 'cd "$1" && for f in $2; do [ -e "$f" ] && sha256sum "$f"; done; true' \
    sh "$(node_path "$1" "$2")" "$3"
}

crictl_on() {
  local n=$1; shift
  if [[ $E2E_PROVIDER == kind ]]; then
    docker exec -i "$n" crictl "$@"
  else
    crictl --runtime-endpoint "unix://$(containerd_sock "$n")" "$@"
  fi
}

# Local nodes share this host's network namespace (each test server gets its own port); a kind
# node has its own, reached at its address on kind's docker network.
node_address() {
  if [[ $E2E_PROVIDER == kind ]]; then
    docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"
  else
    echo 127.0.0.1
  fi
}
node_listen_address() { if [[ $E2E_PROVIDER == kind ]]; then echo 0.0.0.0; else echo 127.0.0.1; fi; }

node_static_pod_url() {
  if [[ $E2E_PROVIDER == kind ]]; then
    echo "http://127.0.0.1:$STATIC_POD_URL_PORT/static-pods"
  else
    static_pod_url "$1"
  fi
}

node_cni_conflist() {
  if [[ $E2E_PROVIDER == kind ]]; then
    docker exec "$1" sh -c 'cat /etc/cni/net.d/*.conflist'
  else
    cat "$(node_dir "$1")/cni/net.d/10-sps.conflist"
  fi
}

# --- the API server -------------------------------------------------------------------------------
# kind's control-plane node: the one whose name ends in -control-plane.
_kind_control_plane() { kubectl get nodes -l node-role.kubernetes.io/control-plane -o jsonpath='{.items[0].metadata.name}'; }
KIND_APISERVER_PARKED=/etc/kubernetes/kube-apiserver.yaml.stopped

# Killed, not stopped: an API server that vanishes mid-request is the harder case for clients.
apiserver_kill() {
  if [[ $E2E_PROVIDER == kind ]]; then
    local cp; cp=$(_kind_control_plane)
    echo "$cp" >"${TMPDIR:-/tmp}/sps-e2e-kind-control-plane"
    docker exec "$cp" mv /etc/kubernetes/manifests/kube-apiserver.yaml "$KIND_APISERVER_PARKED"
    # The kubelet stops the pod gracefully; kill its container at once instead.
    docker exec "$cp" sh -c 'for c in $(crictl ps -q --name "^kube-apiserver$"); do crictl stop --timeout 0 "$c"; done' >/dev/null
    wait_for "kube-apiserver to exit" 60 bash -c "! kubectl --request-timeout=2s get --raw /readyz >/dev/null 2>&1"
  else
    local pid; pid=$(cat "$PID_DIR/kube-apiserver.pid")
    kill -KILL "$pid"
    wait_for "kube-apiserver to exit" 30 bash -c "! kill -0 $pid"
    rm -f "$PID_DIR/kube-apiserver.pid"
  fi
}
apiserver_start() {
  if [[ $E2E_PROVIDER == kind ]]; then
    local cp; cp=$(cat "${TMPDIR:-/tmp}/sps-e2e-kind-control-plane" 2>/dev/null || true)
    [[ -n $cp ]] || cp=$(docker ps --format '{{.Names}}' | grep -m1 -- '-control-plane$')
    docker exec "$cp" sh -c "[ ! -e $KIND_APISERVER_PARKED ] || mv $KIND_APISERVER_PARKED /etc/kubernetes/manifests/kube-apiserver.yaml"
  else
    # shellcheck source=cluster/lib/control-plane.sh
    (source "$HARNESS_DIR/lib/control-plane.sh" && restore_control_plane)
  fi
  wait_for "kube-apiserver ready" 120 kubectl --request-timeout=5s get --raw /readyz
}

# --- kubelets -------------------------------------------------------------------------------------
kubelet_stop() {
  if [[ $E2E_PROVIDER == kind ]]; then
    docker exec "$1" systemctl stop kubelet
  else
    local pid; pid=$(cat "$PID_DIR/kubelet-$1.pid")
    kill -TERM "$pid"
    wait_for "kubelet of $1 to exit" 60 bash -c "! kill -0 $pid"
  fi
}
kubelet_start() {
  if [[ $E2E_PROVIDER == kind ]]; then
    docker exec "$1" systemctl start kubelet
  else
    # shellcheck source=cluster/lib/node.sh
    (source "$HARNESS_DIR/lib/node.sh" && { daemon_running "kubelet-$1" || start_kubelet "$1"; })
  fi
}
kubelet_restart() {
  if [[ $E2E_PROVIDER == kind ]]; then
    docker exec "$1" systemctl restart kubelet
  else
    # shellcheck source=cluster/lib/node.sh
    (source "$HARNESS_DIR/lib/node.sh" && STATIC_POD_URL_NODE=${STATIC_POD_URL_NODE:-} restart_kubelet "$1")
  fi
}
# The kubelet configuration's staticPodURL (and its header) on, or its staticPodPath again.
kubelet_url_mode() {
  local n=$1 mode=$2
  if [[ $E2E_PROVIDER == kind ]]; then
    local config=/var/lib/kubelet/config.yaml
    docker exec "$n" sh -c "sed -i '/^staticPodURL:/d; /^staticPodURLHeader:/,/^[^ ]/{/^staticPodURLHeader:/d; /^  /d}' $config"
    if [[ $mode == on ]]; then
      docker exec -i "$n" sh -c "cat >>$config" <<EOF
staticPodURL: $(node_static_pod_url "$n")
staticPodURLHeader:
  $STATIC_POD_URL_HEADER: ["$(static_pod_url_token)"]
httpCheckFrequency: 5s
EOF
    fi
    docker exec "$n" systemctl restart kubelet
  else
    local url_node=''
    [[ $mode == on ]] && url_node=$n
    STATIC_POD_URL_NODE=$url_node kubelet_restart "$n"
  fi
}
