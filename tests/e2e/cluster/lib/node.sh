# shellcheck shell=bash
# Starts one node: its own containerd and its own kubelet. Two nodes share this host, so everything a
# node writes or listens on is its own: containerd root/state/socket/runc root/shim sockets, CNI config
# and bridge and subnet, the kubelet's root dir, ports, cgroupRoot (a kubelet kills pod cgroups under
# its root that it does not know), pod log dir and staticPodPath.

write_containerd_config() {
  local n=$1 d; d=$(node_dir "$n")
  mkdir -p "$d/containerd" "$d/cni/net.d"
  cat >"$d/containerd/config.toml" <<CFG
version = 3
root = '$d/containerd/root'
state = '$d/containerd/state'

[grpc]
  address = '$d/containerd/containerd.sock'
[ttrpc]
  address = '$d/containerd/containerd.sock.ttrpc'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    # Images come from our own archives and the local registry; the sandbox image is the pause
    # image we import.
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '$PAUSE_IMAGE'
    # Per-registry hosts.toml files: the local registry ($REGISTRY) is plain HTTP.
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '$d/containerd/certs.d'
  [plugins.'io.containerd.cri.v1.runtime']
    netns_mounts_under_state_dir = true
    # Our machines withhold CAP_SYS_RESOURCE, so no process may lower its oom_score_adj (the kubelet
    # asks -998 for sandboxes and critical pods). Clamp requests to containerd's own score instead.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '$TOOLS_BIN/runc'
        Root = '$d/containerd/runc'
        SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['/usr/lib/cni']
      conf_dir = '$d/cni/net.d'
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = '$SOCK_DIR/$n'
CFG
  write_registry_hosts "$d/containerd/certs.d"
  cat >"$d/cni/net.d/10-sps.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "sps-$n",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${NODE_BRIDGE[$n]}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "${NODE_POD_CIDR[$n]}"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$d/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}, "conditionsV4": ["-d", "$(node_gateway "$n")"]}
  ]
}
CNI
}

start_containerd() {
  local n=$1
  daemon_running "containerd-$n" && return
  write_containerd_config "$n"
  start_daemon "containerd-$n" containerd --config "$(node_dir "$n")/containerd/config.toml"
  wait_daemon "containerd-$n" 60 ctr --address "$(containerd_sock "$n")" version
}

# Imports every archive in $IMAGES_DIR into the node's k8s.io namespace (where the CRI looks).
import_images() {
  local n=$1 img
  for img in "$IMAGES_DIR"/*.tar; do
    # ctr warns about cgroup v1 on every call; keep real errors visible.
    ctr --address "$(containerd_sock "$n")" -n k8s.io images import "$img" 2>&1 >/dev/null | { grep -v DEPRECATION >&2 || true; }
  done
}

# STATIC_POD_URL_NODE=<node>: that node's kubelet also polls its agent's static pod URL. Off by
# default: until the URL answers 200 once, the kubelet deletes no pod on the node (it waits for all
# its sources), so only tests/e2e/60-static-pod-url.sh turns it on, with the product installed.
kubelet_url_config() {
  local n=$1
  [[ ${STATIC_POD_URL_NODE:-} == "$n" ]] || return 0
  cat <<CFG
staticPodURL: $(static_pod_url "$n")
staticPodURLHeader: {$STATIC_POD_URL_HEADER: ["$(static_pod_url_token)"]}
httpCheckFrequency: 5s
CFG
}

write_kubelet_config() {
  local n=$1 d; d=$(node_dir "$n")
  mkdir -p "$d/kubelet" "$(static_pod_dir "$n")" "$d/pod-logs"
  cat >"$d/kubelet-config.yaml" <<CFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $API_ADDRESS
port: ${NODE_KUBELET_PORT[$n]}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${NODE_HEALTHZ_PORT[$n]}
tlsCertFile: $CERT_DIR/kubelet-$n-serving.crt
tlsPrivateKeyFile: $CERT_DIR/kubelet-$n-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $CERT_DIR/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$(containerd_sock "$n")
staticPodPath: $(static_pod_dir "$n")
$(kubelet_url_config "$n")
podLogsDir: $d/pod-logs
cgroupRoot: /$n
cgroupsPerQOS: true
cgroupDriver: cgroupfs
# This host mounts cgroup v1; kubelet >= 1.35 refuses it unless told otherwise.
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [$CLUSTER_DNS]
resolvConf: /etc/resolv.conf
rotateCertificates: false
# Our images are imported, not pulled: never garbage-collect them, and keep eviction thresholds low
# enough that a test machine with a busy disk does not evict the test pods.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
CFG
}

# The kubelet requires its cgroupRoot to exist in every v1 hierarchy. A new cpuset cgroup starts with
# no CPUs or memory nodes, so it inherits the host's.
make_cgroup_root() {
  local n=$1 ctl
  for ctl in /sys/fs/cgroup/*/; do
    [[ -e ${ctl}cgroup.procs ]] || continue
    mkdir -p "$ctl$n"
    if [[ -f ${ctl}cpuset.cpus ]]; then
      cat "${ctl}cpuset.cpus" >"$ctl$n/cpuset.cpus"
      cat "${ctl}cpuset.mems" >"$ctl$n/cpuset.mems"
    fi
  done
}

start_kubelet() {
  local n=$1 d; d=$(node_dir "$n")
  daemon_running "kubelet-$n" && return
  make_cgroup_root "$n"
  write_kubelet_config "$n"
  start_daemon "kubelet-$n" kubelet --config "$d/kubelet-config.yaml" \
    --kubeconfig "$RUN_DIR/kubelet-$n.kubeconfig" --root-dir "$d/kubelet" \
    --hostname-override "$n" --node-ip "$API_ADDRESS" \
    --node-labels "e2e.staticpods.dev/node=${n#spsnode-}"
  wait_daemon "kubelet-$n" 120 curl -sf "http://127.0.0.1:${NODE_HEALTHZ_PORT[$n]}/healthz"
}

# Restarts a node's kubelet with a freshly written config; it adopts the running pods.
restart_kubelet() {
  local n=$1 pid
  if daemon_running "kubelet-$n"; then
    pid=$(cat "$PID_DIR/kubelet-$n.pid")
    kill -TERM "$pid"
    wait_for "kubelet-$n to exit" 30 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_DIR/kubelet-$n.pid"
  start_kubelet "$n"
}

start_node() {
  local n=$1
  timed "containerd $n start" start_containerd "$n"
  timed "image import on $n" import_images "$n"
  timed "kubelet $n start" start_kubelet "$n"
}
