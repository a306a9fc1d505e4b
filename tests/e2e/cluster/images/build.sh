#!/usr/bin/env bash
# Builds the test images as OCI archives in $IMAGES_DIR (see lib/oci.sh for the format):
#   pause    our sandbox image, from images/pause.c (containerd's pinned sandbox image)
#   busybox  a test workload: Debian's busybox-static with its applet links
#   web      busybox plus images/web.go, an HTTP server that listens with SO_REUSEPORT (two
#            hostNetwork pods of a set sharing a port during a surge update)
# Rebuilt only when missing or older than their inputs.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
# shellcheck source=../lib/oci.sh
source "$HARNESS_DIR/lib/oci.sh"

build_pause() {
  local out=$IMAGES_DIR/pause.tar src=$HARNESS_DIR/images/pause.c
  [[ -f $out && $out -nt $src ]] && return
  local root; root=$(mktemp -d)
  gcc -static -O2 -Wall -Werror -o "$root/pause" "$src"
  strip "$root/pause"
  oci_image_archive "$root" "$PAUSE_IMAGE" "$out" '["/pause"]'
  rm -rf "$root"
  log "built $PAUSE_IMAGE -> $out"
}

build_busybox() {
  local out=$IMAGES_DIR/busybox.tar bb=/bin/busybox
  [[ -f $out && $out -nt $bb ]] && return
  local root; root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/var/www"
  cp "$bb" "$root/bin/busybox"
  local applet
  for applet in $("$bb" --list); do
    [[ -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
  done
  chmod 1777 "$root/tmp"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
  echo 'nobody:x:65534:' >>"$root/etc/group"
  oci_image_archive "$root" "$BUSYBOX_IMAGE" "$out" '["/bin/sh"]' '["PATH=/bin"]'
  rm -rf "$root"
  log "built $BUSYBOX_IMAGE -> $out"
}

build_web() {
  local out=$IMAGES_DIR/web.tar src=$HARNESS_DIR/images/web.go bb=/bin/busybox
  [[ -f $out && $out -nt $src && $out -nt $bb ]] && return
  local root work; root=$(mktemp -d) work=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp "$bb" "$root/bin/busybox"
  local applet
  for applet in sh wget cat echo; do ln -s busybox "$root/bin/$applet"; done
  cp "$src" "$work/main.go"
  printf 'module staticpodset.local/e2e/web\n\ngo 1.26.0\n' >"$work/go.mod"
  ( cd "$work" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="" go build -trimpath -ldflags "-s -w" -o "$root/bin/web" . )
  oci_image_archive "$root" "$WEB_IMAGE" "$out" '["/bin/sh"]' '["PATH=/bin"]'
  rm -rf "$root" "$work"
  log "built $WEB_IMAGE -> $out"
}

main() {
  mkdir -p "$IMAGES_DIR"
  build_pause
  build_busybox
  build_web
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
