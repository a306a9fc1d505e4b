#!/usr/bin/env bash
# The one test command (README: `make test`). Runs, in order, and stops at the first failure:
#   0. host packages                    tests/e2e/cluster/build/host-deps.sh (protoc for the build, …)
#   1. formatting and lints             cargo fmt --check, shellcheck (tests/shellcheck.sh),
#                                       cargo clippy -D warnings
#   2. unit and temp-directory tests    cargo test --workspace
#   3. the real cluster                 tests/e2e/cluster/up (builds what is missing, into the cache)
#   4. the chart                        tests/chart/check.sh (needs the helm that cluster up builds)
#   5. end-to-end suites                tests/e2e/*.sh against that cluster
#   6. the scale bench's small shape    tests/scale/small.sh (its own API server, kwok nodes)
#   7. the suites on kind               tests/kind/e2e.sh (`make e2e-kind`: own dockerd, node image
#                                       from our builds, kind cluster created and deleted), once the
#                                       local cluster is down
#   8. tear-down                        tests/e2e/cluster/down (also on failure)
# Caches (cargo target dir, Kubernetes binaries, images) live in ${STATICPODSET_CACHE:-~/.cache/staticpodset}.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# K8S_VERSION: where the cluster's Kubernetes binaries are cached.
# shellcheck source=e2e/cluster/versions.sh
source tests/e2e/cluster/versions.sh
export STATICPODSET_CACHE=${STATICPODSET_CACHE:-$HOME/.cache/staticpodset}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$STATICPODSET_CACHE/target}

passed=0
failed=0
suite() {
  local name=$1; shift
  local start=$SECONDS
  echo "=== $name"
  if "$@"; then
    passed=$((passed + 1))
    echo "=== $name: ok ($((SECONDS - start))s)"
  else
    failed=$((failed + 1))
    echo "=== $name: FAILED ($((SECONDS - start))s)"
    return 1
  fi
}

finish() {
  local rc=$?
  if [[ ${KEEP_CLUSTER:-0} != 1 ]]; then tests/e2e/cluster/down || rc=1; fi
  echo "$passed passed, $failed failed"
  exit "$rc"
}
trap finish EXIT

# The agent's CRI bindings are generated at build time by protoc, a Debian package; shellcheck is one too.
bash tests/e2e/cluster/build/host-deps.sh
suite "cargo fmt" cargo fmt --all -- --check
suite "shellcheck" bash tests/shellcheck.sh
suite "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
suite "cargo test" cargo test --workspace --locked

# Every run starts from a clean cluster: a previous run or session may have been cut off mid-way.
tests/e2e/cluster/down
up_out=$(tests/e2e/cluster/up)
eval "$(tail -n 1 <<<"$up_out")"
export PATH="$STATICPODSET_CACHE/k8s-$K8S_VERSION/bin:$STATICPODSET_CACHE/tools/bin:$PATH"

suite "chart: lint, render, schema, alert rules, server-side dry run" bash tests/chart/check.sh

suite "operator vs a throw-away API server" bash operator/tests/apiserver.sh
suite "e2e: cluster smoke" tests/e2e/smoke.sh
for t in tests/e2e/[0-9][0-9]-*.sh; do
  [[ -e $t ]] || continue
  suite "e2e: $(basename "$t" .sh)" "$t"
done
# Its own throw-away API server with kwok nodes, beside the cluster: correctness only, no timings.
suite "scale: small shape (300 kwok nodes x 10 sets)" bash tests/scale/small.sh
# The same suites on kind; the local cluster goes first, leaving the machine's two cores to kind.
tests/e2e/cluster/down
suite "e2e on kind (make e2e-kind)" bash tests/kind/e2e.sh
