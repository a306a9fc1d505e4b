#!/usr/bin/env bash
# The scale bench's small shape (300 nodes x 10 sets) as a correctness check: every entry written,
# all Ready, rollouts complete, the operator ready again after a restart, nothing left after
# deletion. Asserts no timing. A few minutes. Usage: bash tests/scale/small.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$(mktemp -d /tmp/sps-scale-small.XXXXXX)}
export OUT
CHECK=1 SHAPE=small STEADY=${STEADY:-10} bash "$HERE/bench-scale.sh"
rm -rf "$OUT"
