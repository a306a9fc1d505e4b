#!/usr/bin/env bash
# Builds kind ($KIND_VERSION) from the Go module proxy into $STATICPODSET_CACHE/kind/bin; cached.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_kind() {
  if [[ -x $KIND ]] && "$KIND" version | grep -q "kind $KIND_VERSION "; then
    log "kind $KIND_VERSION: cached"; return
  fi
  mkdir -p "$KIND_BIN_DIR"
  GOBIN=$KIND_BIN_DIR CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
    go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION"
  log "built $("$KIND" version)"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then timed "kind build" build_kind; fi
