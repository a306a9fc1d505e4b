#!/usr/bin/env bash
# Builds every cluster component at its pinned version into the cache folder, skipping what is there.
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl, kube-proxy -> $BIN_DIR
#   etcd, etcdctl, containerd, containerd-shim-runc-v2, ctr, runc, helm, crictl, registry -> $TOOLS_BIN
#
# Everything comes from the Go module proxy; the CNI plugins come from Debian (host-deps.sh).
# Each step prints its duration so the cold-build budget (CI has 90 minutes on 2 cores) stays visible.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
# shellcheck source=go-wrapper.sh
source "$HARNESS_DIR/build/go-wrapper.sh"

have_all() {
  local dir=$1; shift
  local b
  for b in "$@"; do [[ -x $dir/$b ]] || return 1; done
}

# Kubernetes: the release's go.mod requires every staging module (k8s.io/api, client-go, …) at v0.0.0
# and points them at ./staging. We generate one replace per such module to its published v0.N.P tag,
# straight from the release's own go.mod, so the list never drifts from the pinned version.
build_kubernetes() {
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy)
  if have_all "$BIN_DIR" "${cmds[@]}"; then log "kubernetes $K8S_VERSION: cached"; return; fi
  local body ld pkg
  body=$(k8s_wrapper_body)
  ld=$(k8s_version_ldflags)
  local pkgs=()
  for pkg in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$pkg"); done
  go_wrapper_build kubernetes "$BIN_DIR" "$body" "$ld" "${pkgs[@]}"
}

# etcd's server module replaces its sibling modules with ../ paths; we require them all at one tag.
build_etcd() {
  if have_all "$TOOLS_BIN" etcd etcdctl; then log "etcd $ETCD_VERSION: cached"; return; fi
  local body m
  body="require ("
  for m in server/v3 etcdctl/v3 api/v3 client/pkg/v3 client/v3 pkg/v3; do
    body+=$'\n\t'"go.etcd.io/etcd/$m $ETCD_VERSION"
  done
  body+=$'\n)'
  go_wrapper_build etcd "$TOOLS_BIN" "$body" "" \
    "go.etcd.io/etcd/server/v3=etcd" "go.etcd.io/etcd/etcdctl/v3=etcdctl"
}

# containerd 2.x with its runc shim and ctr. The tags drop snapshotters that need cgo headers.
build_containerd() {
  if have_all "$TOOLS_BIN" containerd containerd-shim-runc-v2 ctr; then log "containerd $CONTAINERD_VERSION: cached"; return; fi
  local m=github.com/containerd/containerd/v2
  GO_BUILD_TAGS="no_btrfs no_devmapper no_zfs no_aufs" go_wrapper_build containerd "$TOOLS_BIN" \
    "require $m $CONTAINERD_VERSION" "-X $m/version.Version=$CONTAINERD_VERSION" \
    "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr"
}

build_helm() {
  if have_all "$TOOLS_BIN" helm; then log "helm $HELM_VERSION: cached"; return; fi
  go_wrapper_build helm "$TOOLS_BIN" "require helm.sh/helm/v3 $HELM_VERSION" \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" helm.sh/helm/v3/cmd/helm
}

# runc: Debian's 1.1.5 fails to start containers for containerd 2.x on current kernels ("can't get
# final child's PID from pipe"), so we build a current one. It needs cgo (its nsenter is C) and
# libseccomp for seccomp profiles (RuntimeDefault).
build_runc() {
  if have_all "$TOOLS_BIN" runc; then log "runc $RUNC_VERSION: cached"; return; fi
  CGO_ENABLED=1 GO_BUILD_TAGS="seccomp" go_wrapper_build runc "$TOOLS_BIN" \
    "require github.com/opencontainers/runc $RUNC_VERSION" "-X main.version=${RUNC_VERSION#v}" \
    github.com/opencontainers/runc
}

# crictl lets tests kill a static pod's container the way an operator would on a node.
build_crictl() {
  if have_all "$TOOLS_BIN" crictl; then log "crictl $CRICTL_VERSION: cached"; return; fi
  go_wrapper_build crictl "$TOOLS_BIN" "require sigs.k8s.io/cri-tools $CRICTL_VERSION" \
    "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl
}

# The distribution registry (what Docker Hub and most registries run): a plain-HTTP registry on
# loopback gives the cluster something real to pull from, for the agent's image pre-pull.
build_registry() {
  if have_all "$TOOLS_BIN" registry; then log "registry $REGISTRY_VERSION: cached"; return; fi
  local m=github.com/distribution/distribution/v3
  go_wrapper_build registry "$TOOLS_BIN" "require $m $REGISTRY_VERSION" \
    "-X $m/version.version=$REGISTRY_VERSION" "$m/cmd/registry"
}

# CoreDNS serves cluster.local from the API server, so pods (helm test's) resolve Services.
build_coredns() {
  if have_all "$TOOLS_BIN" coredns; then log "coredns $COREDNS_VERSION: cached"; return; fi
  go_wrapper_build coredns "$TOOLS_BIN" "require github.com/coredns/coredns $COREDNS_VERSION" \
    "" github.com/coredns/coredns
}

main() {
  command -v go >/dev/null || die "Go is required to build the cluster components"
  timed "etcd build" build_etcd
  timed "containerd build" build_containerd
  timed "runc build" build_runc
  timed "helm build" build_helm
  timed "crictl build" build_crictl
  timed "registry build" build_registry
  timed "coredns build" build_coredns
  timed "kubernetes build" build_kubernetes
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
