# shellcheck shell=bash
# Builds Go programs from the Go module proxy through a throw-away "wrapper" module.
#
# Why a wrapper: `go install pkg@version` refuses modules whose go.mod has replace/exclude directives
# (k8s.io/kubernetes, etcd's server module, containerd). A wrapper module of our own may carry
# replace directives, requires the upstream module at the pinned version, and builds its commands.
# Nothing from the wrapper is kept but the binaries.

# go_wrapper_build NAME OUT_DIR GO_MOD_BODY LDFLAGS PKG[=OUTNAME]...
#   GO_MOD_BODY: the require/replace lines of the wrapper's go.mod.
#   Each PKG is built to OUT_DIR/<last path element> unless =OUTNAME is given.
go_wrapper_build() {
  local name=$1 out=$2 body=$3 ldflags=$4; shift 4
  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/sps-build-$name.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  printf 'module staticpodset.local/build/%s\n\ngo 1.26.0\n\n%s\n' "$name" "$body" >"$work/go.mod"
  mkdir -p "$out"
  (
    cd "$work" || exit 1
    # -mod=mod lets `go build` record go.sum entries for the pinned graph; nothing is upgraded.
    export CGO_ENABLED=${CGO_ENABLED:-0} GOFLAGS=-mod=mod GOTOOLCHAIN=local
    local spec pkg outname
    for spec in "$@"; do
      pkg=${spec%%=*}
      outname=${pkg##*/}
      [[ $spec == *=* ]] && outname=${spec#*=}
      log "go build $pkg -> $out/$outname"
      go build -trimpath -tags "${GO_BUILD_TAGS:-}" -ldflags "-s -w $ldflags" -o "$out/$outname.tmp" "$pkg"
      mv "$out/$outname.tmp" "$out/$outname"
    done
  )
}

# k8s_wrapper_body: the wrapper go.mod body for commands of k8s.io/kubernetes@$K8S_VERSION: its
# staging modules (v0.0.0 in its go.mod) replaced by their published v0.<minor> releases, and its
# godebug line.
k8s_wrapper_body() {
  local staging_ver="v0.${K8S_VERSION#v1.}" gomod replaces godebug
  gomod=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f $gomod ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION's go.mod"
  replaces=$(awk -v v="$staging_ver" '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { printf "\t%s => %s %s\n", $1, $1, v }' "$gomod" | sort -u)
  godebug=$(grep -E '^godebug ' "$gomod" || true)
  printf '%s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n%s\n)\n' "$godebug" "$K8S_VERSION" "$replaces"
}

# k8s_version_ldflags: the same -X flags as upstream's hack/lib/version.sh, so /version reports the
# real release (helm's kubeVersion checks and feature gating read it).
k8s_version_ldflags() {
  local minor=${K8S_VERSION#v1.} date ld="" pkg
  minor=${minor%%.*}
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X '$pkg.gitVersion=$K8S_VERSION' -X '$pkg.gitMajor=1' -X '$pkg.gitMinor=$minor'"
    ld+=" -X '$pkg.gitTreeState=clean' -X '$pkg.buildDate=$date' -X '$pkg.gitCommit=$K8S_VERSION'"
  done
  echo "$ld"
}
