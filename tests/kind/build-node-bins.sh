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
  local staging_ver="v0.${K8S_VERSION#v1.}" gomod
  gomod=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f $gomod ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION's go.mod"
  local replaces godebug body
  replaces=$(awk -v v="$staging_ver" '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { printf "\t%s => %s %s\n", $1, $1, v }' "$gomod" | sort -u)
  godebug=$(grep -E '^godebug ' "$gomod" || true)
  body=$(printf '%s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n%s\n)\n' "$godebug" "$K8S_VERSION" "$replaces")
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X '$pkg.gitVersion=$K8S_VERSION' -X '$pkg.gitMajor=1' -X '$pkg.gitMinor=$minor'"
    ld+=" -X '$pkg.gitTreeState=clean' -X '$pkg.buildDate=$date' -X '$pkg.gitCommit=$K8S_VERSION'"
  done
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
