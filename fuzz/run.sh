#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 60) on stable (no sanitizer: `-s none`),
# seeded from real files, then replays the regression corpus. Installs cargo-fuzz if needed.
set -euo pipefail
cd "$(dirname "$0")"
secs="${FUZZ_SECONDS:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
root=..
mkdir -p corpus/model_open corpus/onnx_import corpus/input_decode corpus/session_run
cp -f $root/models/*.cnnrt corpus/model_open/ 2>/dev/null || true
for f in $root/models/*.onnx $root/tests/data/models/*/model.onnx; do
  [ -f "$f" ] && cp -f "$f" "corpus/onnx_import/$(echo "$f" | tr '/' '_')"
done
cp -f $root/models/samples/*.png corpus/input_decode/ 2>/dev/null || true
for f in $root/tests/data/models/*/input.npy; do
  [ -f "$f" ] && cp -f "$f" "corpus/input_decode/$(echo "$f" | tr '/' '_')"
done
cargo fuzz build -s none --release
for t in model_open onnx_import input_decode session_run; do
  echo "== fuzz $t for ${secs}s"
  seeds=()
  [ -d "regressions/$t" ] && seeds+=("regressions/$t")
  cargo fuzz run -s none --release "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=1 2>&1 \
    | grep -E "^(#[0-9]+ *DONE|stat::number_of_executed_units|stat::peak_rss|==|INFO: seed corpus)" || true
  # grep hides libFuzzer's chatter; a crash makes cargo fuzz exit non-zero:
  test "${PIPESTATUS[0]}" -eq 0
done
