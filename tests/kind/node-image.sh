#!/usr/bin/env bash
# Builds the kind node image $NODE_IMAGE without pulling anything (our dockerd must be running:
# tests/kind/dockerd.sh start). Skipped when an image built from the same inputs exists.
#
#   base       the debootstrap bookworm rootfs (rootfs.sh), `docker import`ed
#   binaries   containerd, ctr, containerd-shim-runc-v2, crictl, runc ($TOOLS_BIN, the harness's
#              builds); kubelet, kubectl, kubeadm ($BIN_DIR); CNI plugins (build-node-bins.sh)
#   kind files entrypoint, systemd units, /kind/bin helpers: from kind's module source
#              (images/base/files of sigs.k8s.io/kind@$KIND_VERSION in the Go module cache)
#   our files  files/containerd-config.toml, files/runc-wrapper (drops CAP_SYS_RESOURCE),
#              files/default-storage.yaml (a StorageClass only), /kind/version
#   images     every image `kubeadm config images list` names, as OCI archives (lib/oci.sh) built
#              from our binaries, preloaded into the node's containerd (k8s.io namespace)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=../e2e/cluster/lib/oci.sh
source "$HARNESS_DIR/lib/oci.sh"
# shellcheck source=rootfs.sh
source "$KIND_DIR/rootfs.sh"

KIND_IMAGES_DIR=$KIND_CACHE/images
STAGE=$KIND_CACHE/stage
STAMP=$KIND_CACHE/node-image.inputs

# Builds one control-plane image archive from static binaries, unless it is newer than them.
# image_from_bins OUT REF ENTRYPOINT_JSON BIN...
image_from_bins() {
  local out=$1 ref=$2 ep=$3; shift 3
  local b stale=0
  [[ -f $out ]] || stale=1
  for b in "$@"; do [[ $out -nt $b ]] || stale=1; done
  ((stale)) || return 0
  local root; root=$(mktemp -d "$KIND_CACHE/img.XXXXXX")
  mkdir -p "$root/usr/local/bin" "$root/tmp"
  chmod 1777 "$root/tmp"
  for b in "$@"; do cp "$b" "$root/usr/local/bin/"; done
  oci_image_archive "$root" "$ref" "$out" "$ep"
  rm -rf "$root"
  log "built $ref -> $out"
}

# kube-proxy needs iptables and friends: our rootfs plus the binary.
image_kube_proxy() {
  local out=$1 ref=$2 bin=$BIN_DIR/kube-proxy
  [[ -f $out && $out -nt $bin && $out -nt $ROOTFS_TAR ]] && return 0
  local root; root=$(mktemp -d "$KIND_CACHE/img.XXXXXX")
  tar -C "$root" -xf "$ROOTFS_TAR"
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/locale"
  cp "$bin" "$root/usr/local/bin/kube-proxy"
  oci_image_archive "$root" "$ref" "$out" '["/usr/local/bin/kube-proxy"]' \
    '["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'
  rm -rf "$root"
  log "built $ref -> $out"
}

# Writes $STAGE/image-tags ("SRC DST" lines the node setup tags) and builds every archive.
build_images() {
  mkdir -p "$KIND_IMAGES_DIR"
  [[ -f $IMAGES_DIR/pause.tar ]] || "$HARNESS_DIR/images/build.sh"
  local ref name tags=""
  while read -r ref; do
    name=${ref##*/}; name=${name%%:*}
    case $name in
      kube-apiserver | kube-controller-manager | kube-scheduler)
        image_from_bins "$KIND_IMAGES_DIR/$name.tar" "$ref" "[\"/usr/local/bin/$name\"]" "$BIN_DIR/$name" ;;
      kube-proxy) image_kube_proxy "$KIND_IMAGES_DIR/$name.tar" "$ref" ;;
      etcd) image_from_bins "$KIND_IMAGES_DIR/etcd.tar" "$ref" '["/usr/local/bin/etcd"]' "$TOOLS_BIN/etcd" "$TOOLS_BIN/etcdctl" ;;
      coredns) image_from_bins "$KIND_IMAGES_DIR/coredns.tar" "$ref" '["/usr/local/bin/coredns"]' "$TOOLS_BIN/coredns" ;;
      pause) PAUSE_REF=$ref; tags+="$PAUSE_IMAGE $ref"$'\n' ;;
      *) die "no recipe for image $ref" ;;
    esac
  done < <("$KUBEADM" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null)
  [[ -n ${PAUSE_REF:-} ]] || die "kubeadm names no pause image"
  printf '%s' "$tags" >"$STAGE/image-tags"
}

kind_base_files() {
  local dir
  dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir)
  [[ -d $dir/images/base/files ]] || die "kind $KIND_VERSION's images/base/files not found in the module cache"
  echo "$dir/images/base/files"
}

# Everything the image is made from, hashed (files by content where small, by size+mtime where big).
inputs_hash() {
  {
    echo "$K8S_VERSION $KIND_VERSION $CNI_PLUGINS_VERSION $NODE_IMAGE"
    cat "${BASH_SOURCE[0]}" "$KIND_DIR/rootfs.sh" "$KIND_DIR"/files/*
    stat -c '%n %s %Y' "$ROOTFS_TAR" "$TOOLS_BIN"/{containerd,containerd-shim-runc-v2,ctr,crictl,runc,etcd,etcdctl,coredns} \
      "$BIN_DIR"/{kubelet,kubectl,kubeadm,kube-apiserver,kube-controller-manager,kube-scheduler,kube-proxy} \
      "$IMAGES_DIR/pause.tar" "$KIND_CACHE/cni-$CNI_PLUGINS_VERSION"/bin/*
  } | sha256sum | cut -c1-16
}

build_node_image() {
  "$KIND_DIR/build-node-bins.sh"
  mkdir -p "$KIND_CACHE"
  build_rootfs
  local hash; hash=$(inputs_hash)
  if [[ -f $STAMP && $(cat "$STAMP") == "$hash" ]] && docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
    log "node image $NODE_IMAGE: cached (inputs $hash)"; return
  fi
  rm -rf "$STAGE"; mkdir -p "$STAGE/bin" "$STAGE/cni" "$STAGE/images"
  timed "control-plane images" build_images
  local b
  for b in containerd containerd-shim-runc-v2 ctr crictl runc; do cp -l "$TOOLS_BIN/$b" "$STAGE/bin/"; done
  for b in kubelet kubectl kubeadm; do cp -l "$BIN_DIR/$b" "$STAGE/bin/"; done
  cp -l "$KIND_CACHE/cni-$CNI_PLUGINS_VERSION"/bin/* "$STAGE/cni/"
  cp -l "$KIND_IMAGES_DIR"/*.tar "$STAGE/images/"
  cp -l "$IMAGES_DIR/pause.tar" "$STAGE/images/"
  cp -r "$(kind_base_files)" "$STAGE/kind-base-files"
  cp "$KIND_DIR/files/runc-wrapper" "$KIND_DIR/files/node-setup.sh" "$KIND_DIR/files/default-storage.yaml" "$STAGE/"
  sed "s|@PAUSE_IMAGE@|$PAUSE_REF|" "$KIND_DIR/files/containerd-config.toml" >"$STAGE/containerd-config.toml"
  echo "$K8S_VERSION" >"$STAGE/version"

  # The base: the rootfs as an image, named after its content.
  local base rootfs_id
  rootfs_id=$(stat -c '%s-%Y' "$ROOTFS_TAR")
  base=staticpodset.local/kind-rootfs:$rootfs_id
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    timed "docker import rootfs" docker import "$ROOTFS_TAR" "$base" >/dev/null
  fi

  local c=sps-kind-build-$$
  docker rm -f "$c" >/dev/null 2>&1 || true
  docker run -d --name "$c" --entrypoint sleep --security-opt seccomp=unconfined \
    -v "$STAGE:/stage:ro" "$base" infinity >/dev/null
  # shellcheck disable=SC2064
  trap "docker rm -f '$c' >/dev/null 2>&1 || true" EXIT
  # (Docker 20.10's commit cannot set STOPSIGNAL; kind removes nodes with `docker rm -f` anyway.)
  timed "node setup" docker exec "$c" bash /stage/node-setup.sh
  docker commit \
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
    --change 'CMD []' \
    --change 'ENV container=docker' \
    "$c" "$NODE_IMAGE" >/dev/null
  docker rm -f "$c" >/dev/null
  trap - EXIT
  echo "$hash" >"$STAMP"
  rm -rf "$STAGE"
  # Keep the data-root small: drop older rootfs bases and the node image this one replaced.
  local img
  for img in $(docker images --format '{{.Repository}}:{{.Tag}}' staticpodset.local/kind-rootfs); do
    [[ $img == "$base" ]] || docker rmi "$img" >/dev/null || true
  done
  docker image prune -f >/dev/null
  log "built node image $NODE_IMAGE (inputs $hash)"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then timed "node image" build_node_image; fi
