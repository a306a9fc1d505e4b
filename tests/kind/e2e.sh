#!/usr/bin/env bash
# The end-to-end suites on kind (`make e2e-kind`): a kind cluster from tests/kind/cluster.yaml
# (tests/kind/up.sh: our own dockerd and node image), or with KIND_USE_EXISTING=1 the machine's
# docker and an existing cluster named $KIND_CLUSTER_NAME (hosted CI, .github/workflows), then the cluster smoke test and the suites with E2E_PROVIDER=kind (the
# node-access layer in tests/e2e/node-access.sh), each installing the chart as README tells users
# after `kind load image-archive`; then `kind delete cluster`, on failure too (KEEP_CLUSTER=1 keeps it).
#
# KIND_SUITES: the suites to run (names without .sh), default every tests/e2e/NN-*.sh, as on the
# local cluster.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ -n ${KIND_SUITES:-} ]]; then
  read -r -a suites <<<"$KIND_SUITES"
else
  suites=()
  for t in "$REPO_ROOT"/tests/e2e/[0-9][0-9]-*.sh; do
    t=${t##*/}
    suites+=("${t%.sh}")
  done
fi

teardown() {
  local rc=$?
  if [[ ${KEEP_CLUSTER:-0} == 1 || ${KIND_USE_EXISTING:-0} == 1 ]]; then
    log "KEEP_CLUSTER=1: the kind cluster stays (KUBECONFIG=$KUBECONFIG_KIND)"
  else
    "$KIND_DIR/down.sh" || rc=1
  fi
  exit "$rc"
}
trap teardown EXIT

# The suites' test images (busybox, the web server) come from the harness's image build.
[[ -f $IMAGES_DIR/busybox.tar && -f $IMAGES_DIR/web.tar ]] || bash "$HARNESS_DIR/images/build.sh"
if [[ ${KIND_USE_EXISTING:-0} == 1 ]]; then
  mkdir -p "$KIND_CACHE"
  kind get kubeconfig --name "$CLUSTER_NAME" >"$KUBECONFIG_KIND"
else
  "$KIND_DIR/up.sh" >/dev/null
fi
export KUBECONFIG=$KUBECONFIG_KIND E2E_PROVIDER=kind KIND_CLUSTER=$CLUSTER_NAME REGISTRY=$KIND_REGISTRY
# The suites' scratch files (watch logs, the static pod URL token) stay out of the local harness's
# run folder.
export STATICPODSET_RUN=$KIND_CACHE/run
for archive in "$IMAGES_DIR/busybox.tar" "$IMAGES_DIR/web.tar"; do
  timed "kind load ${archive##*/}" kind load image-archive --name "$CLUSTER_NAME" "$archive" >/dev/null
done

failed=()
run() {
  local name=$1 start=$SECONDS
  log "=== kind: $name"
  if "$REPO_ROOT/tests/e2e/$name.sh"; then
    log "=== kind: $name passed in $((SECONDS - start))s"
  else
    log "=== kind: $name FAILED after $((SECONDS - start))s"
    failed+=("$name")
  fi
}
run smoke
for s in "${suites[@]}"; do run "$s"; done
((${#failed[@]} == 0)) || die "kind: failed suites: ${failed[*]}"
log "kind: smoke and ${#suites[@]} suites passed"
