#!/usr/bin/env bash
# The product on the kind cluster (tests/kind/up.sh first), as README tells users:
#   kind load image-archive  operator.tar, node-agent.tar ($PRODUCT_IMAGES, tag dev; built by
#                            images/build.sh, read here only) and the busybox test image
#   helm install             charts/staticpodset, image.tag=dev, image.pullPolicy=Never
#   kubectl apply            smoke-set.yaml: a StaticPodSet on every node
# then checks that every node runs the set's mirror pod, Ready.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PRODUCT_IMAGES=${PRODUCT_IMAGES:-$CACHE_DIR/product-images}
HELM=$TOOLS_BIN/helm
export KUBECONFIG=$KUBECONFIG_KIND
NS=staticpodset-system

ready_mirror_pods() {
  kubectl get pods -l app=kind-smoke -o jsonpath='{range .items[*]}{.spec.nodeName} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    awk '$2 == "True"' | wc -l
}
all_mirror_pods_ready() { [[ $(ready_mirror_pods) -eq $(kind get nodes --name "$CLUSTER_NAME" | wc -l) ]]; }

main() {
  [[ -f $KUBECONFIG_KIND ]] || die "no kind cluster: run tests/kind/up.sh first"
  [[ -f $IMAGES_DIR/busybox.tar ]] || "$HARNESS_DIR/images/build.sh"
  local a
  for a in "$PRODUCT_IMAGES/operator.tar" "$PRODUCT_IMAGES/node-agent.tar" "$IMAGES_DIR/busybox.tar"; do
    [[ -f $a ]] || die "$a is missing (images/build.sh builds the product images)"
    timed "kind load $(basename "$a")" kind load image-archive --name "$CLUSTER_NAME" "$a"
  done
  if "$HELM" status staticpodset -n "$NS" >/dev/null 2>&1; then
    log "chart already installed"
  else
    timed "helm install" "$HELM" install staticpodset "$REPO_ROOT/charts/staticpodset" -n "$NS" --create-namespace \
      --set agent.manifestDir=/etc/kubernetes/manifests --set image.tag=dev --set image.pullPolicy=Never \
      --wait --timeout 180s >/dev/null
  fi
  kubectl apply -f "$KIND_DIR/smoke-set.yaml" >&2
  timed "StaticPodSet Available" kubectl wait sps/kind-smoke --for=condition=Available --timeout=180s >&2
  wait_for "a Ready mirror pod on every node" 120 all_mirror_pods_ready ||
    { kubectl get pods -l app=kind-smoke -o wide >&2; die "mirror pods not Ready on every node"; }
  kubectl -n "$NS" get pods -o wide >&2
  kubectl get nodestaticpods >&2
  kubectl get pods -l app=kind-smoke -o wide >&2
  log "kind smoke passed: $(ready_mirror_pods) mirror pods Ready"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then timed "kind smoke" main "$@"; fi
