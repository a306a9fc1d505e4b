#!/usr/bin/env bash
# Benchmark (prints numbers; asserts nothing about speed): the same pod rolled out to every node as
# a DaemonSet and as a StaticPodSet, on the same cluster, in one run.
#
#   create: apply -> every node runs the pod, Ready
#   update: change the template -> every node runs the new pod, Ready (maxUnavailable 1 for both)
#
# Needs the local cluster (tests/e2e/cluster/up) and KUBECONFIG; installs the chart itself.
# RUNS (default 3) repetitions; prints each run and the medians, and the ratio StaticPodSet/DaemonSet.
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"

RUNS=${RUNS:-3}
NS=sps-bench
E2E_NS=$NS
NODE_COUNT=${#NODES[@]}

install_product >/dev/null 2>&1 || die "installing the chart failed"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

container() { # message
  cat <<YAML
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: $BUSYBOX_IMAGE
        imagePullPolicy: Never
        env: [{name: MESSAGE, value: "$1"}]
        command: ["sh", "-c", "echo \$MESSAGE > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"]
        readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 1}
YAML
}

ds_yaml() {
  cat <<YAML
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: bench-ds, namespace: $NS}
spec:
  selector: {matchLabels: {app: bench-ds}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}
  template:
    metadata: {labels: {app: bench-ds}}
    spec:
      tolerations: [{operator: Exists}]
$(container "$1")
YAML
}

sps_yaml() {
  cat <<YAML
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: bench-sps, namespace: $NS}
spec:
  updateStrategy: {rollingUpdate: {maxUnavailable: 1}}
  template:
    metadata: {labels: {app: bench-sps}}
    spec:
$(container "$1")
YAML
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
# A tight poll, so the measurement is not coarser than 0.1 s.
export WAIT_FOR_INTERVAL=0.1

ds_done() { # generation: the DaemonSet controller saw it and every node runs it, Ready
  local s
  s=$(kubectl get ds -n "$NS" bench-ds -o jsonpath='{.status.observedGeneration} {.status.updatedNumberScheduled} {.status.numberAvailable} {.status.desiredNumberScheduled}')
  [[ $s == "$1 $NODE_COUNT $NODE_COUNT $NODE_COUNT" ]]
}
sps_done() { # message: every mirror pod serves this message's revision and is Ready; rollout complete
  local gen s
  gen=$(kubectl get sps -n "$NS" bench-sps -o jsonpath='{.metadata.generation}')
  s=$(kubectl get sps -n "$NS" bench-sps -o jsonpath='{.status.observedGeneration} {.status.updatedNumberScheduled} {.status.numberAvailable} {.status.conditions[?(@.type=="Progressing")].reason}')
  [[ $s == "$gen $NODE_COUNT $NODE_COUNT RolloutComplete" ]]
}

declare -a ds_create ds_update sps_create sps_update
for run in $(seq 1 "$RUNS"); do
  kubectl delete ds -n "$NS" bench-ds --wait=true --ignore-not-found >/dev/null
  kubectl delete sps -n "$NS" bench-sps --wait=true --ignore-not-found >/dev/null
  wait_for "pods of the previous run gone" 120 bash -c "[[ -z \$(kubectl get pods -n $NS -o name) ]]" || die "pods of the previous run still there"

  t=$(now); ds_yaml v1 | kubectl apply -f - >/dev/null
  wait_for "DaemonSet create" 300 ds_done 1 || die "DaemonSet create did not finish"
  ds_create+=("$(elapsed "$t")")
  t=$(now); ds_yaml v2 | kubectl apply -f - >/dev/null
  wait_for "DaemonSet update" 300 ds_done 2 || die "DaemonSet update did not finish"
  ds_update+=("$(elapsed "$t")")

  t=$(now); sps_yaml v1 | kubectl apply -f - >/dev/null
  wait_for "StaticPodSet create" 300 sps_done || die "StaticPodSet create did not finish"
  sps_create+=("$(elapsed "$t")")
  t=$(now); sps_yaml v2 | kubectl apply -f - >/dev/null
  # The status may still show the old revision complete: wait for the new generation first.
  wait_for "StaticPodSet update" 300 sps_done || die "StaticPodSet update did not finish"
  sps_update+=("$(elapsed "$t")")
  echo "run $run: DaemonSet create ${ds_create[-1]}s update ${ds_update[-1]}s | StaticPodSet create ${sps_create[-1]}s update ${sps_update[-1]}s"
done
kubectl delete ds -n "$NS" bench-ds --wait=true --ignore-not-found >/dev/null
kubectl delete sps -n "$NS" bench-sps --wait=true --ignore-not-found >/dev/null
kubectl delete namespace "$NS" --wait=false >/dev/null

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
dc=$(median "${ds_create[@]}") du=$(median "${ds_update[@]}")
sc=$(median "${sps_create[@]}") su=$(median "${sps_update[@]}")
echo "nodes: $NODE_COUNT, runs: $RUNS, medians:"
printf '%-8s %12s %14s %8s\n' phase DaemonSet StaticPodSet ratio
printf '%-8s %11ss %13ss %8s\n' create "$dc" "$sc" "$(ratio "$sc" "$dc")"
printf '%-8s %11ss %13ss %8s\n' update "$du" "$su" "$(ratio "$su" "$du")"
