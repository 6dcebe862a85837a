#!/usr/bin/env bash
# Runs every alignlab test, installing what is missing. Works from a fresh Debian machine
# with nothing but this checkout: `bash scripts/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v curl >/dev/null 2>&1 || need_apt+=(curl ca-certificates)
# The GPU engine's parity tests run on Mesa's lavapipe (Vulkan on the CPU) where no GPU is.
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || [ -e /usr/share/vulkan/icd.d/lvp_icd.json ] || need_apt+=(mesa-vulkan-drivers)
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || need_apt+=(libvulkan1)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  # Debian's rustup package brings a current stable toolchain from the Rust registry.
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustup
  rustup default stable
fi

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/alignlab-xdg}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

echo "== cargo fmt --check, cargo clippy (every warning an error)"
# rustup's toolchains need the components added; a distribution's cargo brings its own.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo fmt --all --check
cargo clippy --workspace --all-targets --release --locked -- -D warnings 2>&1

echo "== cargo test (workspace, release: the burn gradient oracle, parity and golden tests)"
cargo test --workspace --release --locked 2>&1

echo "== browser tests (web/tests: the app in Debian's Chromium, WebGPU on SwiftShader)"
need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
bash scripts/build-web.sh
node web/tests/browser.test.mjs
# The data panel: annotate with the keyboard, reload/restart, import/export, the on-policy loop.
node web/tests/data.test.mjs
# A diverging run pauses with its cause and keeps its last good step; continue and reset.
node web/tests/divergence.test.mjs
