#!/usr/bin/env bash
# Builds (once) the Debian bookworm root filesystem the kind node image and the kube-proxy image
# start from: debootstrap minbase plus the packages kind's images/base/Dockerfile installs (minus
# nfs-common, open-iscsi and fuse-overlayfs, which no suite needs). Output: $KIND_CACHE/rootfs.tar
# (a tar of the tree, owner-preserving). Rebuilt only when this script changes.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOTFS_TAR=$KIND_CACHE/rootfs.tar
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS_PACKAGES=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps,socat,ebtables,ipset

build_rootfs() {
  if [[ -f $ROOTFS_TAR && $ROOTFS_TAR -nt ${BASH_SOURCE[0]} ]]; then log "rootfs: cached ($ROOTFS_TAR)"; return; fi
  command -v debootstrap >/dev/null || die "debootstrap is required: apt-get install -y debootstrap"
  local work; work=$(mktemp -d "$KIND_CACHE/rootfs.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" bookworm "$work/root" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
  tar --numeric-owner --xattrs -C "$work/root" -cf "$ROOTFS_TAR.tmp" .
  mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
  log "built $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1))"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then mkdir -p "$KIND_CACHE"; timed "rootfs build" build_rootfs; fi
