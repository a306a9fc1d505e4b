#!/usr/bin/env bash
# `make demo`: a running StaticPodSet in one command. Brings the local cluster up (building it on
# first use), installs the chart with helm, applies examples/static-web.yaml and shows the mirror pods.
# The cluster is left running; `make cluster-down` removes it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
up_out=$("$ROOT/tests/e2e/cluster/up")
export_line=$(tail -n 1 <<<"$up_out")
eval "$export_line"
# shellcheck source=lib.sh
source "$ROOT/tests/e2e/lib.sh"
install_product
kubectl apply -f "$ROOT/examples/static-web.yaml"
ready() { for n in "${NODES[@]}"; do mirror_ready default "static-web-$n" || return 1; done; }
wait_for "static-web mirror pods Ready" 180 ready || fail "static-web mirror pods not Ready"
kubectl wait sps/static-web --for=jsonpath='{.status.numberReady}'="${#NODES[@]}" --timeout=60s >/dev/null
kubectl get sps static-web
kubectl get pods -l app=static-web -o wide
echo
echo "The cluster keeps running. To use it:"
echo "$export_line"
