#!/usr/bin/env bash
# Benchmark (prints numbers; asserts nothing about speed): each node's outage when a StaticPodSet's
# pod moves to an image the node does not have, with the agent's image pre-pull on and off.
#
# The kubelet stops a static pod before it starts the pod of the changed manifest, so without
# pre-pull the outage includes the image pull. The set's pod serves its revision's message over
# HTTP on the node's loopback (hostNetwork, one port per node); http-outage.py polls every node
# every 50 ms and reports, per node, the time from the last answer of the old pod to the first
# answer of the new one.
#
# Each run: roll to image A (imported on every node), then to a fresh image B that exists only in the
# cluster's local registry (registry_image in tests/e2e/lib.sh: busybox plus PAD_MB of random data,
# so each run's layer is new to every node), maxUnavailable 1. Modes: pre-pull on (the chart's agent.criSocket, as install_product sets
# it) and off (agent.criSocket=""), RUNS runs each.
#
# Needs the local cluster (tests/e2e/cluster/up) and KUBECONFIG; installs the chart itself.
# env: RUNS (default 3), PAD_MB (default 100), MODES (default "on off").
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"

RUNS=${RUNS:-3}
PAD_MB=${PAD_MB:-100}
MODES=${MODES:-on off}
NS=sps-bench-prepull
E2E_NS=$NS
SET=outage
declare -A PORT
i=0
for n in "${NODES[@]}"; do i=$((i + 1)); PORT[$n]=$((18080 + i)); done

ports_case() {
  local n out=""
  for n in "${NODES[@]}"; do out+="$n) P=${PORT[$n]};; "; done
  echo "$out"
}

# set_yaml MESSAGE IMAGE: the pod serves MESSAGE on 127.0.0.1:<its node's port>.
set_yaml() {
  cat <<YAML
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: $SET, namespace: $NS}
spec:
  updateStrategy: {rollingUpdate: {maxUnavailable: 1}}
  progressDeadlineSeconds: 300
  template:
    metadata: {labels: {app: $SET}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: $2
        imagePullPolicy: IfNotPresent
        env:
        - {name: MESSAGE, value: "$1"}
        - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
        command: ["sh", "-c", "case \$NODE in $(ports_case) esac; echo \$P > /tmp/port; echo \$MESSAGE > /tmp/index.html && exec httpd -f -p 127.0.0.1:\$P -h /tmp"]
        readinessProbe:
          exec: {command: ["sh", "-c", "wget -q -O /dev/null http://127.0.0.1:\$(cat /tmp/port)/index.html"]}
          periodSeconds: 1
YAML
}

serves() { # message: every node answers with it
  local n
  for n in "${NODES[@]}"; do
    [[ $(curl -s --max-time 1 "http://127.0.0.1:${PORT[$n]}/index.html") == "$1" ]] || return 1
  done
}

set_mode() {
  local socket=""
  [[ $1 == on ]] && socket=$RUN_DIR/nodes/containerd.sock
  helm upgrade "$RELEASE" "$REPO_ROOT/charts/staticpodset" -n "$RELEASE_NS" --reuse-values \
    --set agent.criSocket="$socket" --wait --timeout 3m >/dev/null || die "helm upgrade (pre-pull $1) failed"
  kubectl rollout status ds -n "$RELEASE_NS" "$RELEASE-staticpodset-agent" --timeout 120s >/dev/null 2>&1 || true
}

install_product >/dev/null 2>&1 || die "installing the chart failed"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
trap 'kubectl delete sps -n "$NS" "$SET" --wait=true --timeout=120s >/dev/null 2>&1 || true' EXIT

declare -A results
for mode in $MODES; do
  set_mode "$mode"
  for run in $(seq 1 "$RUNS"); do
    old="a-$mode-$run-$RANDOM"
    set_yaml "$old" "$BUSYBOX_IMAGE" | kubectl apply -f - >/dev/null
    wait_for "every node serving image A" 300 serves "$old" || die "the pod on image A does not serve on every node"
    tag="$mode-$run-$(date +%s)"
    image=$(registry_image "$tag" "$PAD_MB")
    for n in "${NODES[@]}"; do
      ! crictl_on "$n" inspecti "$image" >/dev/null 2>&1 || die "$image is already on $n"
    done
    new="b-$mode-$run-$RANDOM"
    out=$(mktemp)
    targets=()
    for n in "${NODES[@]}"; do targets+=("$n=http://127.0.0.1:${PORT[$n]}/index.html"); done
    python3 "$REPO_ROOT/tests/bench/http-outage.py" "$old" "$new" 300 "${targets[@]}" >"$out" &
    poller=$!
    # It prints `polling` once every node answered with the old pod: the change starts after that.
    wait_for "the poller to see every node serve image A" 30 grep -qx polling "$out" ||
      die "http-outage.py did not see every node serve the old pod"
    t0=$(date +%s.%N)
    set_yaml "$new" "$image" | kubectl apply -f - >/dev/null
    wait "$poller" || { cat "$out" >&2; die "a node did not serve the new pod (pre-pull $mode, run $run)"; }
    total=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
    line="pre-pull $mode run $run: apply->all new ${total}s;"
    for n in "${NODES[@]}"; do
      o=$(awk -v n="$n" '$1 == n {sub("outage=", "", $2); print $2}' "$out")
      results[$mode]+=" $o"
      line+=" $n outage ${o}s"
    done
    rm -f "$out"
    echo "$line"
    # Back to A, then drop B from the nodes: every run pulls a new image anyway.
    set_yaml "$old" "$BUSYBOX_IMAGE" | kubectl apply -f - >/dev/null
    wait_for "every node back on image A" 300 serves "$old" || die "rolling back to image A failed"
    for n in "${NODES[@]}"; do crictl_on "$n" rmi "$image" >/dev/null 2>&1 || true; done
  done
done
set_mode on

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
echo "nodes: ${#NODES[@]}, runs per mode: $RUNS, image B layer: ${PAD_MB} MB from the local registry"
for mode in $MODES; do
  # shellcheck disable=SC2086
  echo "pre-pull $mode: per-node outage median $(median ${results[$mode]})s (all:${results[$mode]})"
done
