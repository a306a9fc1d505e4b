#!/usr/bin/env bash
# Builds kwok (sigs.k8s.io/kwok, the fake-node controller the scale bench keeps its Nodes Ready with)
# into $STATICPODSET_CACHE/tools/bin from the Go module proxy, and copies kwok's own "fast" stages
# (node initialize, node heartbeat with a Lease, pod ready/complete/delete; kwok runs none without
# them) from its module to $STATICPODSET_CACHE/tools/kwok-stages.yaml. Skips what is already there.
# Usage: bash tests/scale/build-kwok.sh
set -euo pipefail
CACHE=${STATICPODSET_CACHE:-$HOME/.cache/staticpodset}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
BIN=$CACHE/tools/bin/kwok
STAGES=$CACHE/tools/kwok-stages.yaml
if [[ -x $BIN && -s $STAGES ]]; then
  echo "kwok present: $BIN, $STAGES"
  exit 0
fi
GO=$(command -v go || echo /usr/local/go/bin/go)
[[ -x $GO ]] || { echo "FAIL: go not found (needed to build kwok $KWOK_VERSION)" >&2; exit 1; }
mkdir -p "$CACHE/tools/bin"
GOBIN=$CACHE/tools/bin GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 \
  "$GO" install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
module=$("$GO" env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
  pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  echo ---
  cat "$module/$f"
done >"$STAGES.tmp"
mv "$STAGES.tmp" "$STAGES"
echo "built $BIN, $STAGES"
