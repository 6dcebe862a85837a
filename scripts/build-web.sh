#!/usr/bin/env bash
# Builds the browser app into dist/: index.html, the wasm module (wasm-bindgen, then
# wasm-opt), the worker, the styles, uPlot and the assets (starter model, scenarios).
# dist/ uses relative paths only, so any static host serves it. Installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustup build-essential
  rustup default stable
fi
if ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

# wasm-bindgen's CLI must be the exact version of the wasm-bindgen crate in Cargo.lock.
want=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "== installing wasm-bindgen-cli $want (a few minutes, once)"
  cargo install wasm-bindgen-cli --version "$want"
fi

[ -x web/node_modules/.bin/wasm-opt ] && [ -d web/node_modules/uplot ] || (cd web && npm ci --no-audit --no-fund)

target_dir=${CARGO_TARGET_DIR:-target}
echo "== cargo build (wasm32 with SIMD, release)"
# simd128 lets LLVM vectorise the CPU engine's loops (every current browser has wasm SIMD);
# results stay bit-identical (no reassociation, no FMA contraction).
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="${CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS:--C target-feature=+simd128}"
cargo build --release --locked --target wasm32-unknown-unknown -p lab-web

out=dist
rm -rf "$out"
mkdir -p "$out/pkg" "$out/vendor" "$out/assets"
wasm-bindgen --target web --no-typescript --out-dir "$out/pkg" "$target_dir/wasm32-unknown-unknown/release/lab_web.wasm"
echo "== wasm-opt -O3"
web/node_modules/.bin/wasm-opt -O3 --enable-simd --enable-reference-types --enable-multivalue --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals \
  "$out/pkg/lab_web_bg.wasm" -o "$out/pkg/lab_web_bg.opt.wasm"
mv "$out/pkg/lab_web_bg.opt.wasm" "$out/pkg/lab_web_bg.wasm"

cp index.html "$out/"
cp web/style.css web/worker.js "$out/"
cp web/node_modules/uplot/dist/uPlot.iife.min.js web/node_modules/uplot/dist/uPlot.min.css "$out/vendor/"
[ -d assets/models ] && cp -r assets/models "$out/assets/"
[ -d assets/scenarios ] && cp -r assets/scenarios "$out/assets/"
# The project's reference pages, linked from the page's footer.
rm -rf "$out/docs" && cp -r docs "$out/docs"

raw=$(stat -c %s "$out/pkg/lab_web_bg.wasm")
gz=$(gzip -9 -c "$out/pkg/lab_web_bg.wasm" | wc -c)
echo "== dist/ ready: wasm $((raw / 1024)) KiB, $((gz / 1024)) KiB gzipped"
