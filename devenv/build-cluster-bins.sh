#!/usr/bin/env bash
# Build the local cluster's binaries once and cache them by version.
#
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl come from
# the k8s.io/kubernetes Go module. That module lists its staging modules
# (k8s.io/api, client-go, ...) at v0.0.0, so a throw-away wrapper module
# requires it and adds one `replace` per staging module pointing at the
# published v0.X.Y (the pattern projects that embed the API server use). The
# replace list is read from the kubernetes go.mod itself, so it stays right
# when the version changes.
#
# etcd comes from go.etcd.io/etcd/server/v3 through a three-line wrapper main
# (Debian's etcd-server 3.4.23 lacks the health endpoints Kubernetes >= 1.31
# needs). kwok comes from `go install`.
#
# Output: $EDGEFILL_CACHE/bin/<component-version>/..., printed at the end.
# A second run finds everything present and returns at once.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-0.7.0}"
CACHE="${EDGEFILL_CACHE:-$HOME/.cache/edgefill}"
K8S_BIN="$CACHE/bin/kubernetes-v$K8S_VERSION"
ETCD_BIN="$CACHE/bin/etcd-v$ETCD_VERSION"
KWOK_BIN="$CACHE/bin/kwok-v$KWOK_VERSION"
export GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0

log() { printf '[build-cluster-bins] %s\n' "$*" >&2; }

# One build at a time: a second caller waits for the first and then finds
# everything cached.
mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock"
if ! flock -n 9; then
  log "another build is running; waiting for it"
  flock 9
fi

build_kubernetes() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl) missing=0 c
  for c in "${want[@]}"; do [ -x "$K8S_BIN/$c" ] || missing=1; done
  [ "$missing" = 0 ] && { log "kubernetes v$K8S_VERSION: cached in $K8S_BIN"; return; }
  log "kubernetes v$K8S_VERSION: building (cold: several minutes on 2 cores)"
  local work="$CACHE/build/kubernetes-v$K8S_VERSION" minor
  minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
  mkdir -p "$work" "$K8S_BIN"
  go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" >/dev/null
  local kmod
  kmod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$K8S_VERSION.mod"
  {
    echo "module edgefill.local/k8sbins"
    echo
    echo "go $(awk '/^go /{print $2; exit}' "$kmod")"
    echo
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    echo
    echo "replace ("
    sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\t\1 => \1 v0.'"${K8S_VERSION#*.}"'#p' "$kmod"
    echo ")"
    echo
    for c in "${want[@]}"; do echo "tool k8s.io/kubernetes/cmd/$c"; done
  } > "$work/go.mod"
  (cd "$work" && go mod tidy)
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  for c in "${want[@]}"; do
    log "  go build $c"
    (cd "$work" && go build -trimpath -ldflags "$ld" -o "$K8S_BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c")
    mv "$K8S_BIN/$c.tmp" "$K8S_BIN/$c"
  done
}

build_etcd() {
  [ -x "$ETCD_BIN/etcd" ] && { log "etcd v$ETCD_VERSION: cached in $ETCD_BIN"; return; }
  log "etcd v$ETCD_VERSION: building"
  local work="$CACHE/build/etcd-v$ETCD_VERSION"
  mkdir -p "$work" "$ETCD_BIN"
  cat > "$work/go.mod" <<MOD
module edgefill.local/etcdbin

go 1.24

require go.etcd.io/etcd/server/v3 v$ETCD_VERSION
MOD
  cat > "$work/main.go" <<'GO'
// Command etcd runs etcd's own entry point (go.etcd.io/etcd/server/v3/etcdmain).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$work" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "$ETCD_BIN/etcd.tmp" .)
  mv "$ETCD_BIN/etcd.tmp" "$ETCD_BIN/etcd"
}

build_kwok() {
  [ -x "$KWOK_BIN/kwok" ] && { log "kwok v$KWOK_VERSION: cached in $KWOK_BIN"; return; }
  log "kwok v$KWOK_VERSION: building"
  mkdir -p "$KWOK_BIN"
  GOBIN="$KWOK_BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
}

build_etcd
build_kwok
build_kubernetes
echo "$K8S_BIN"
echo "$ETCD_BIN"
echo "$KWOK_BIN"
