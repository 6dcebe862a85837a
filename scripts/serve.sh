#!/usr/bin/env bash
# Builds the browser lab (scripts/build-web.sh: wasm32, wasm-bindgen, wasm-opt) into dist/
# and serves it on http://127.0.0.1:8080. dist/ is a plain static site: copy it to any
# static host. Installs what is missing on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-web.sh
command -v python3 >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3; }
echo "== serving dist/ on http://127.0.0.1:8080 (Ctrl-C to stop)"
exec python3 -m http.server --bind 127.0.0.1 8080 -d dist
