#!/usr/bin/env bash
# The GPU benchmark on a machine with a real GPU (native wgpu over Vulkan), with the same
# DPO step in plain PyTorch eager beside it when python3 has torch.
#
#   bash scripts/gpu-bench.sh prepare   # here: build the binary, fetch the Vulkan loader into .gl/
#   bash scripts/gpu-bench.sh run       # there: tiny and medium, ours then PyTorch; a JSON file each
#                                       # in $OUT, one summary line each (steps/s, parity ok)
#
# `run` benches the step the lab runs (the reference's log-probs cached, one submission a
# step; see `alignlab bench --help`), then any other build put in .gl/bin/alignlab-NAME,
# then PyTorch. The bench also checks its kernels on this GPU against the CPU engine
# (`--parity`: the JSON's parity.ok), so a figure never comes from an engine that computes
# something else.
#
# `prepare` is for a machine like ours (Debian, cargo); `run` for a GPU machine that has the
# NVIDIA Vulkan driver but maybe no loader and no Rust (carry .gl/ and target/release/alignlab).
# The carried libraries are unpacked into .gl/root and found through LD_LIBRARY_PATH: nothing
# outside the tree is written (rehearsed on lavapipe with the loader taken from .gl/root).
# CONFIGS and STEPS (default "tiny medium", 200) shorten a rehearsal here on lavapipe:
#   CONFIGS=tiny STEPS=2 bash scripts/gpu-bench.sh run
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
  prepare)
    # .gl/ is in .gitignore
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    # the Vulkan loader and the GL dispatch libraries the NVIDIA ICD links against
    apt-get $o update -qq && (cd .gl && apt-get $o download libvulkan1 libglvnd0 libegl1 libopengl0 libgl1 libglx0 libgles2)
    cargo build --release --locked -p lab-cli
    strip target/release/alignlab
    ;;
  run)
    # the carried libraries stay inside the tree (.gl/root), found through LD_LIBRARY_PATH;
    # unpacked even where a loader exists: the NVIDIA ICD also needs libGLdispatch (glvnd)
    if ls .gl/*.deb >/dev/null 2>&1; then
      mkdir -p .gl/root
      for f in .gl/*.deb; do dpkg -x "$f" .gl/root; done
      export LD_LIBRARY_PATH="$PWD/.gl/root/usr/lib/x86_64-linux-gnu:$PWD/.gl/root/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg}; mkdir -p "$XDG_RUNTIME_DIR"; chmod 700 "$XDG_RUNTIME_DIR"
    nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nvidia_icd" ] && export VK_DRIVER_FILES=$nvidia_icd
    out_dir=${OUT:-/tmp}
    summary=$out_dir/summary.txt
    : > "$summary"
    # one line per run: what it was, steps/s, and whether its kernels matched the CPU engine
    note() { echo "$*" | tee -a "$summary"; }
    figures() { echo "$(grep -o '"steps_per_s": *[0-9.e+-]*' "$1" | head -1) $(grep -o '"ok": *[a-z]*' "$1" | head -1 | sed 's/"ok"/parity_ok/')"; }
    for config in ${CONFIGS:-tiny medium}; do
      name=$config
      # the JSON line and every launch's time into $OUT (the device tool brings that folder
      # back whole; its reply keeps only the output's tail); a config that fails says so and
      # the run goes on: the device time is spent either way
      if ./target/release/alignlab bench --engine gpu --config "$config" --steps "${STEPS:-200}" \
        --profile-out "$out_dir/profile-$name.json" --parity > "$out_dir/bench-$name.json"; then
        note "$config $(figures "$out_dir/bench-$name.json")"
      else
        rc=$?; note "$config failed with status $rc"
      fi
      # other builds carried in .gl/bin/ (e.g. an older commit, to attribute a change): as they are
      for other in .gl/bin/alignlab-*; do
        [ -x "$other" ] || continue
        out="$out_dir/other-$config-$(basename "$other").json"
        if "$other" bench --engine gpu --config "$config" --steps "${STEPS:-200}" > "$out"; then
          note "$config $(basename "$other") $(figures "$out")"
        else
          rc=$?; note "$config $(basename "$other") failed with status $rc"
        fi
      done
      if python3 -c 'import torch' 2>/dev/null; then
        device=$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
        if python3 scripts/bench_torch.py --config "$config" --device "$device" --steps "${STEPS:-200}" > "$out_dir/torch-$config.json"; then
          note "$config pytorch-eager $(figures "$out_dir/torch-$config.json")"
        else
          rc=$?; note "$config pytorch-eager failed with status $rc"
        fi
      fi
    done
    echo "== summary ($summary)"; cat "$summary"
    ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
