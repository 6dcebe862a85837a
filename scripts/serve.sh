#!/usr/bin/env bash
# Builds and serves the lab. The browser app (crates/lab-web) is not built yet; until it
# lands this builds the headless `alignlab` CLI and says how to use it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustup build-essential
  rustup default stable
fi
cargo build --release --locked -p lab-cli
echo
echo "The browser lab is coming (see the issues); the CLI is ready:"
echo "  target/release/alignlab --help"
