#!/usr/bin/env bash
# Builds the node binaries the host harness does not: kubeadm (from the same pinned Kubernetes source
# as tests/e2e/cluster/build/components.sh) and the CNI plugins (from the Go module proxy). Cached.
#   kubeadm      -> $BIN_DIR (next to the harness's kubelet/kubectl)
#   CNI plugins  -> $KIND_CACHE/cni-$CNI_PLUGINS_VERSION/bin
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=../e2e/cluster/build/go-wrapper.sh
source "$HARNESS_DIR/build/go-wrapper.sh"

CNI_BIN_DIR=$KIND_CACHE/cni-$CNI_PLUGINS_VERSION/bin
CNI_PLUGINS=(bridge host-local loopback portmap)

# The same wrapper module (staging replaces, version -X flags) as components.sh's build_kubernetes.
build_kubeadm() {
  if [[ -x $KUBEADM ]]; then log "kubeadm $K8S_VERSION: cached"; return; fi
  local body ld
  body=$(k8s_wrapper_body)
  ld=$(k8s_version_ldflags)
  go_wrapper_build kubeadm "$BIN_DIR" "$body" "$ld" k8s.io/kubernetes/cmd/kubeadm
}

build_cni() {
  local p missing=0
  for p in "${CNI_PLUGINS[@]}"; do [[ -x $CNI_BIN_DIR/$p ]] || missing=1; done
  if ((!missing)); then log "CNI plugins $CNI_PLUGINS_VERSION: cached"; return; fi
  local m=github.com/containernetworking/plugins pkgs=()
  for p in bridge host-local loopback portmap; do
    case $p in
      bridge | loopback) pkgs+=("$m/plugins/main/$p") ;;
      host-local) pkgs+=("$m/plugins/ipam/$p") ;;
      portmap) pkgs+=("$m/plugins/meta/$p") ;;
    esac
  done
  go_wrapper_build cni-plugins "$CNI_BIN_DIR" "require $m $CNI_PLUGINS_VERSION" \
    "-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" "${pkgs[@]}"
}

main() {
  timed "CNI plugins build" build_cni
  timed "kubeadm build" build_kubeadm
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
