#!/usr/bin/env bash
# System and JavaScript packages the test tiers need, installed only when missing:
#   - Debian's chromium: the browser tier (WebRTC peers driven by playwright-core);
#   - openssl, Go: build and PKI prerequisites of the local cluster;
#   - npm packages for the tracker's real-client tests (tests/tracker/js), from
#     its lockfile, with install scripts off: the clients' native WebRTC module
#     cannot be built here, and the tests use a pure-JS WebRTC instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v openssl >/dev/null || need+=(openssl)
command -v go >/dev/null || need+=(golang-go)
command -v node >/dev/null || need+=(nodejs npm)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "[install-deps] missing: ${need[*]} (run as root, or install them yourself)" >&2
    exit 1
  fi
  echo "[install-deps] apt-get install ${need[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

js=tests/tracker/js
if [ -f "$js/package-lock.json" ]; then
  stamp="$js/node_modules/.edgefill-lock.sha256"
  want="$(sha256sum "$js/package-lock.json" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[install-deps] npm ci in $js" >&2
    (cd "$js" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
  fi
fi
