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
