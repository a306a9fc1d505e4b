#!/usr/bin/env bash
# Builds the StaticPodSet images as OCI archives, without Docker or a registry:
#   $OUT/operator.tar    ghcr.io/staticpodset/operator:$TAG     (/staticpodset-operator)
#   $OUT/node-agent.tar  ghcr.io/staticpodset/node-agent:$TAG   (/staticpodset-node-agent)
#   $OUT/kubectl-staticpodset                                    (the kubectl plugin; in no image)
# Each image holds one statically linked binary (glibc, +crt-static; TLS is rustls) and nothing else,
# so there is no shell or package to patch. Load an archive into a node with
# `ctr -n k8s.io images import <tar>` (or `kind load image-archive <tar>`).
# Usage: images/build.sh [OUT_DIR]   env: TAG (default dev), CARGO_TARGET_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/tests/e2e/cluster/lib/oci.sh"
OUT=${1:-${STATICPODSET_CACHE:-$HOME/.cache/staticpodset}/product-images}
TAG=${TAG:-dev}
TARGET=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${STATICPODSET_CACHE:-$HOME/.cache/staticpodset}/target}

# An explicit --target keeps proc-macro crates (built for the host) out of the static link.
# `-p staticpodset-operator` builds both binaries of that package: the operator and the plugin.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" \
  -p staticpodset-operator -p staticpodset-node-agent

image() {
  local bin=$1 name=$2 root
  root=$(mktemp -d)
  install -m 0755 "$CARGO_TARGET_DIR/$TARGET/release/$bin" "$root/$bin"
  mkdir -p "$root/tmp" "$root/etc"
  echo 'root:x:0:0:root:/:/sbin/nologin' >"$root/etc/passwd"
  echo 'nonroot:x:65532:65532:nonroot:/:/sbin/nologin' >>"$root/etc/passwd"
  oci_image_archive "$root" "ghcr.io/staticpodset/$name:$TAG" "$OUT/$name.tar" "[\"/$bin\"]" '[]'
  rm -rf "$root"
  echo "built ghcr.io/staticpodset/$name:$TAG -> $OUT/$name.tar" >&2
}

mkdir -p "$OUT"
image staticpodset-operator operator
image staticpodset-node-agent node-agent
# The kubectl plugin is a plain binary, not an image: copied beside the archives (docs/kubectl-plugin.md).
install -m 0755 "$CARGO_TARGET_DIR/$TARGET/release/kubectl-staticpodset" "$OUT/kubectl-staticpodset"
echo "built kubectl-staticpodset -> $OUT/kubectl-staticpodset" >&2
