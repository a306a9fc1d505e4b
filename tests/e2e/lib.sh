# shellcheck shell=bash
# Helpers for the product's end-to-end suites: the cluster harness's settings plus installing
# StaticPodSet into the running cluster with helm, from images we build and import ourselves.
# Every suite's checks are the ok/fail below and wait_for (cluster/lib/common.sh). Sourcing this file
# touches no cluster (operator/tests/apiserver.sh sources it too, with its own API server).
# shellcheck source=cluster/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib/common.sh"
# shellcheck source=node-access.sh
source "$(dirname "${BASH_SOURCE[0]}")/node-access.sh"
: "${KUBECONFIG:?KUBECONFIG must point at the test cluster (tests/e2e/cluster/up prints it)}"

RELEASE=${RELEASE:-sps}
RELEASE_NS=${RELEASE_NS:-staticpodset-system}
# The configuration bundles' namespace (the chart's configNamespace; holds nothing else).
CONFIG_NS=${CONFIG_NS:-$RELEASE_NS-config}
PRODUCT_IMAGES=$CACHE_DIR/product-images
E2E_NS=${E2E_NS:-sps-e2e}
# The chart's agent.httpPort: the agents' /metrics.
AGENT_HTTP_PORT=9102

# --- checks ---------------------------------------------------------------------------------------
# ok MESSAGE: one check passed. fail MESSAGE: one failed; shows what the cluster looks like
# (fail_diagnostics, which a suite may redefine) and ends the suite, running its EXIT trap.
# A suite ends with `echo "<suite>: $passed passed, 0 failed"`.
passed=0
failed=0
ok() { passed=$((passed + 1)); log "ok: $*"; }
fail() {
  failed=$((failed + 1))
  log "FAIL: $*"
  fail_diagnostics >&2 || true
  exit 1
}
# Bounded: a failure while the API server is stopped must not hang the suite.
fail_diagnostics() {
  kubectl --request-timeout=10s get pods -A -o wide || true
  kubectl --request-timeout=10s get sps -A -o wide 2>/dev/null || true
  kubectl --request-timeout=10s get nodestaticpods -o yaml 2>/dev/null || true
}

# agent_ip NODE: the pod IP of NODE's agent (asks the API server; the IP stays while the pod does).
agent_ip() {
  kubectl get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=node-agent \
    --field-selector "spec.nodeName=$1" -o jsonpath='{.items[0].status.podIP}'
}
# agent_metric IP SERIES: the value of one series of the agent at IP, written as the agent prints
# it (e.g. 'staticpodset_agent_url_requests_total{code="200"}'); 0 when absent or unreachable.
# Asked from a node, which reaches every pod IP.
agent_metric() {
  { node_run "${NODES[0]}" curl -s --max-time 5 "http://$1:$AGENT_HTTP_PORT/metrics" || true; } |
    awk -v m="$2" '$1 == m {print $2; found=1} END {if (!found) print 0}'
}

# Builds both images, imports them into every node, and installs/upgrades the chart. Idempotent.
# The agents also serve the static pod URL (mode file unless a Node label says otherwise), with
# the header the URL node's kubelet sends; see tests/e2e/60-static-pod-url.sh.
install_product() {
  timed "product images" bash "$REPO_ROOT/images/build.sh" "$PRODUCT_IMAGES"
  if [[ $E2E_PROVIDER == kind ]]; then
    install_product_kind
    return
  fi
  timed "image load" bash "$HARNESS_DIR/load-image" "$PRODUCT_IMAGES/operator.tar" "$PRODUCT_IMAGES/node-agent.tar"
  install_prerequisites
  # shellcheck disable=SC2016  # '$(NODE_NAME)' is for Kubernetes (subPathExpr), not for the shell
  timed "helm install" helm upgrade --install "$RELEASE" "$REPO_ROOT/charts/staticpodset" \
    --namespace "$RELEASE_NS" --create-namespace --wait --timeout 5m \
    --set agent.staticPodURL.enabled=true --set agent.staticPodURL.port="$STATIC_POD_URL_PORT" \
    --set agent.staticPodURL.hostIP= --set agent.staticPodURL.requiredHeader.name="$STATIC_POD_URL_HEADER" \
    --set agent.staticPodURL.requiredHeader.secretName=sps-static-pod-url \
    --set configNamespace.name="$CONFIG_NS" \
    --set image.tag=dev --set image.pullPolicy=Never \
    --set agent.manifestDir="$MANIFESTS_ROOT" --set agent.manifestSubPathExpr='$(NODE_NAME)' \
    --set agent.resourcesDir="$RESOURCES_ROOT" --set agent.resourcesSubPathExpr='$(NODE_NAME)' \
    --set agent.stateDir="$AGENT_STATE_DIR" \
    --set agent.manifestDirType=DirectoryOrCreate --set agent.resyncInterval=10s \
    --set agent.criSocket="$RUN_DIR/nodes/containerd.sock" \
    --set agent.criSocketSubPathExpr='$(NODE_NAME)/containerd' \
    --set operator.logFormat=text --set agent.logFormat=text
  restart_on_new_images
}

# What the chart needs before helm runs: the release namespace, the CRDs (helm installs them on
# the first install only; an upgrade needs them applied, as README says) and the static pod URL's
# header Secret.
install_prerequisites() {
  kubectl create namespace "$RELEASE_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # helm installs CRDs on the first install only; an upgrade needs them applied, as README says.
  kubectl apply --server-side --force-conflicts -f "$REPO_ROOT/crds/" >/dev/null
  kubectl create secret generic -n "$RELEASE_NS" sps-static-pod-url --from-literal=token="$(static_pod_url_token)" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

# The images keep their tag (dev) when rebuilt, so helm sees no change in the pod templates:
# restart the components when the archives changed since the last install on this cluster.
restart_on_new_images() {
  local stamp=$RUN_DIR/product-images-$E2E_PROVIDER.sha256 images
  images=$(cat "$PRODUCT_IMAGES/operator.tar" "$PRODUCT_IMAGES/node-agent.tar" | sha256sum)
  if [[ -f $stamp && $(cat "$stamp") != "$images" ]]; then
    log "product images changed since the last install: restarting the operator and the agents"
    kubectl rollout restart -n "$RELEASE_NS" "deploy/$RELEASE-staticpodset-operator" "ds/$RELEASE-staticpodset-agent" >/dev/null
    kubectl rollout status -n "$RELEASE_NS" "deploy/$RELEASE-staticpodset-operator" --timeout=5m >/dev/null
    kubectl rollout status -n "$RELEASE_NS" "ds/$RELEASE-staticpodset-agent" --timeout=5m >/dev/null
  fi
  echo "$images" >"$stamp"
}

# On kind, as README tells users: the archives loaded with `kind load image-archive`, the chart's
# defaults for every node path (kind's nodes are kubeadm nodes). tests/kind/e2e.sh loads the test
# images.
install_product_kind() {
  local archive
  for archive in "$PRODUCT_IMAGES/operator.tar" "$PRODUCT_IMAGES/node-agent.tar"; do
    timed "kind load ${archive##*/}" kind load image-archive --name "$KIND_CLUSTER" "$archive" >/dev/null
  done
  install_prerequisites
  timed "helm install" helm upgrade --install "$RELEASE" "$REPO_ROOT/charts/staticpodset" \
    --namespace "$RELEASE_NS" --create-namespace --wait --timeout 5m \
    --set agent.staticPodURL.enabled=true --set agent.staticPodURL.port="$STATIC_POD_URL_PORT" \
    --set agent.staticPodURL.requiredHeader.name="$STATIC_POD_URL_HEADER" \
    --set agent.staticPodURL.requiredHeader.secretName=sps-static-pod-url \
    --set configNamespace.name="$CONFIG_NS" \
    --set image.tag=dev --set image.pullPolicy=Never --set agent.resyncInterval=10s \
    --set operator.logFormat=text --set agent.logFormat=text
  restart_on_new_images
}

# registry_image TAG [PAD_MB]: builds an image that only the local registry has (no node imported
# it), pushes it and prints its reference $REGISTRY/sps-e2e/web:TAG. The root filesystem is busybox
# with the applets web_set_yaml and the benchmarks use (sh, httpd, wget, cat) plus PAD_MB (default
# 8) of random data, so every image has a layer of its own that a node must really download.
registry_image() {
  local reference=$REGISTRY/sps-e2e/web:$1 pad=${2:-8} root archive applet
  root=$(mktemp -d) archive=$(mktemp --suffix=.tar)
  mkdir -p "$root/bin" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in sh httpd wget cat; do ln -s busybox "$root/bin/$applet"; done
  head -c "${pad}M" /dev/urandom >"$root/pad"
  # shellcheck source=cluster/lib/oci.sh
  ( source "$HARNESS_DIR/lib/oci.sh" && oci_image_archive "$root" "$reference" "$archive" '["/bin/sh"]' '["PATH=/bin"]' )
  bash "$HARNESS_DIR/push-image" "$archive" >&2
  rm -rf "$root" "$archive"
  echo "$reference"
}

# manifest_revision NODE FILE: the staticpods.dev/revision annotation of FILE in NODE's
# staticPodPath; empty when there is no such file. (awk reads all its input: no early exit for
# pipefail to trip on.)
manifest_revision() {
  { node_cat "$1" manifests "$2" 2>/dev/null || true; } |
    awk '/staticpods.dev\/revision:/ && !done {sub(/.*revision: */, ""); gsub(/["'"'"' ]/, ""); print; done = 1}'
}

# jsonpath of a set's status field, empty when absent.
sps_status() { kubectl get sps -n "$E2E_NS" "$1" -o "jsonpath={.status.$2}" 2>/dev/null; }

mirror_ready() { # ns pod
  [[ $(kubectl get pod -n "$1" "$2" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

ensure_e2e_namespace() {
  kubectl create namespace "$E2E_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

# apply_sleeper_set NAME [SELECTOR]: a set of one busybox container that sleeps, on every node (or
# those SELECTOR, a nodeSelector in flow style, selects).
apply_sleeper_set() {
  kubectl apply -f - >/dev/null <<YAML
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: $1, namespace: $E2E_NS}
spec:
  nodeSelector: ${2:-"{}"}
  template:
    metadata: {labels: {app: $1}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: $BUSYBOX_IMAGE, imagePullPolicy: Never, command: [sleep, "100000"]}
YAML
}

# test_nodes_selector: a nodeSelector for exactly the suites' nodes (a cluster may have others, such
# as kind's control plane with its taint).
test_nodes_selector() {
  local IFS=,
  echo "{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [${NODES[*]}]}]}"
}

# all_mirrors_ready NS SET: the set's mirror pod is Ready on every node.
all_mirrors_ready() {
  local n
  for n in "${NODES[@]}"; do mirror_ready "$1" "$2-$n" || return 1; done
}

# web_set_yaml NAME SELECTOR MESSAGE [SPEC]: a set whose pod serves MESSAGE over HTTP on 8080 and is
# Ready once it does; changing MESSAGE changes the template (a new revision). SPEC: more fields of
# the set's spec, one per line, e.g. $'paused: true\nminReadySeconds: 2'.
# WEB_IMAGE / WEB_PULL_POLICY override the image (default $BUSYBOX_IMAGE, Never).
web_set_yaml() {
  local spec=${4:-}
  spec="  ${spec//$'\n'/$'\n'  }"   # indented under spec:, every line
  cat <<YAML
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: $1, namespace: $E2E_NS}
spec:
  nodeSelector: $2
$spec
  template:
    metadata:
      labels: {app: $1}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: ${WEB_IMAGE:-$BUSYBOX_IMAGE}
        imagePullPolicy: ${WEB_PULL_POLICY:-Never}
        env: [{name: MESSAGE, value: "$3"}]
        command: ["sh", "-c", "echo \$MESSAGE > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"]
        readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 1}
YAML
}
