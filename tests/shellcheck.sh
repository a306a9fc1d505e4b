#!/usr/bin/env bash
# Runs shellcheck on every shell script of the repository, at every severity (`make lint`, tests/run-all.sh):
# every *.sh, and every other file whose first line is a bash or sh shebang (tests/e2e/cluster/up,
# down, load-image, push-image, .ci/run, …). Sourced files are followed (-x) and found relative to
# the script that sources them (-P SCRIPTDIR, with `# shellcheck source=` where the path is built
# from a variable). shellcheck is a Debian package: tests/e2e/cluster/build/host-deps.sh installs it.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v shellcheck >/dev/null ||
  { echo "shellcheck not found: apt-get install shellcheck (tests/e2e/cluster/build/host-deps.sh does)" >&2; exit 1; }

shebang='^#!.*[/ ](ba)?sh$'
scripts=()
while IFS= read -r -d '' f; do
  if [[ $f == *.sh ]]; then
    scripts+=("$f")
  else
    first=$(head -n 1 "$f" 2>/dev/null | tr -d '\0' || true)
    if [[ $first =~ $shebang ]]; then scripts+=("$f"); fi
  fi
done < <(find . \( -name .git -o -name target \) -prune -o -type f -print0 | sort -z)
((${#scripts[@]})) || { echo "no shell scripts found" >&2; exit 1; }

echo "shellcheck $(shellcheck --version | sed -n 's/^version: //p') on ${#scripts[@]} scripts"
shellcheck -x -P SCRIPTDIR "${scripts[@]}"
