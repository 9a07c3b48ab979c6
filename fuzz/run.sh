#!/usr/bin/env bash
# Fuzzes every target for FUZZ_SECONDS (default 60) each, on the stable toolchain, and
# exits non-zero if any target crashed (panic, abort, fatal signal), hit the per-input
# timeout or the RSS limit. Works from a clean checkout: installs cargo-fuzz if missing.
#
# Stable, no nightly: `cargo fuzz build -s none` (cargo-fuzz 0.13.2) passes only stable
# rustc options (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*, --cfg fuzzing,
# -Ccodegen-units) and no -Z flag; the sanitizer flags are what would need nightly, and
# `-s none` leaves them out. libfuzzer-sys compiles libFuzzer itself (needs a C++
# compiler). The binaries are then run directly rather than through `cargo fuzz run`, so
# the exit status and the statistics are libFuzzer's own (by hand, `cargo fuzz run -s none
# --codegen-units 16 <target>` reuses this build). Without a sanitizer, a bug is caught
# when it panics (bounds checks, unwrap, assertions; libfuzzer-sys turns a panic into an
# abort), faults, or runs past the timeout / RSS limit; release builds wrap on integer
# overflow (`cargo fuzz build -s none -a` adds overflow checks and debug assertions), and
# unsafe code reading out of bounds without faulting goes unnoticed (that is what
# tests/safety_comments.rs and review cover).
#
# Layout (all under fuzz/):
#   seeds/<target>/        small committed seeds (regenerate: cargo test --test
#                          fuzz_regressions -- --ignored write_seeds), plus real files this
#                          script copies in from models/ and tests/data/models/
#   regressions/<target>/  every input that ever crashed, kept after its fix; replayed here
#                          and by `cargo test --test fuzz_regressions` (no cargo-fuzz needed)
#   corpus/<target>/       the growing working corpus (not committed)
#   artifacts/<target>/    crash-*, timeout-*, oom-* inputs (not committed)
#   logs/<target>.log      libFuzzer's full output (not committed)
# Reproduce a crash: fuzz/target/<host triple>/release/<target> fuzz/artifacts/<target>/crash-...
# Minimize it:       ... <target> -minimize_crash=1 -runs=10000 <crash file>
#
# Build time (CI has 2 cores and no cache, so this step is mostly compiling): cargo-fuzz is
# installed as a debug build (it only drives cargo; saves about 45 CPU-seconds), and the
# targets are built with 16 codegen units instead of cargo-fuzz's 1, so that the big cnnrt
# crate compiles on both cores: measured on the corpus, that costs 0-35% executions per
# second. For long local campaigns use FUZZ_CODEGEN_UNITS=1.
#
# Environment: FUZZ_SECONDS (per target, default 60), FUZZ_TARGETS (space-separated subset),
# FUZZ_NICE (nice level for the fuzzing processes, default 0), FUZZ_CODEGEN_UNITS (default
# 16), FUZZ_JOBS (targets fuzzed at once, default: the number of CPUs; each target still
# gets FUZZ_SECONDS of its own, single-threaded, so on CI's 2 cores the 4 targets take
# 2 × FUZZ_SECONDS).
set -euo pipefail
cd "$(dirname "$0")"
secs="${FUZZ_SECONDS:-60}"
targets=(${FUZZ_TARGETS:-model_open onnx_import input_decode session_run})
nice_level="${FUZZ_NICE:-0}"
jobs="${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz 0.13.2"
  cargo install cargo-fuzz --locked --version 0.13.2 --debug
fi

echo "== seeds"
root=..
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" logs
  for f in seeds/"$t"/*; do
    [ -f "$f" ] && cp -f "$f" "corpus/$t/"
  done
done
copy_real() { # TARGET FILE...: real files as seeds, named after their path
  local t="$1"
  shift
  [ -d "corpus/$t" ] || return 0
  for f in "$@"; do
    [ -f "$f" ] && cp -f "$f" "corpus/$t/$(echo "${f#../}" | tr '/' '_')"
  done
  return 0
}
copy_real onnx_import $root/tests/data/models/*/model.onnx
copy_real input_decode $root/models/samples/*.png $root/tests/data/models/*/input.npy

build_args=(-s none --release --codegen-units "${FUZZ_CODEGEN_UNITS:-16}")
echo "== build (cargo fuzz build ${build_args[*]})"
cargo fuzz build "${build_args[@]}"
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"

fuzz_one() { # TARGET: runs it, leaves logs/TARGET.log and logs/TARGET.rc
  local t="$1" rc=0
  local dirs=("corpus/$t")
  [ -d "regressions/$t" ] && dirs+=("regressions/$t")
  # First directory: the corpus libFuzzer adds to; the others are read (and so replayed).
  nice -n "$nice_level" "$bin/$t" "${dirs[@]}" \
    -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -max_len=262144 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"logs/$t.log" 2>&1 || rc=$?
  echo "$rc" >"logs/$t.rc"
}

# Each target runs single-threaded for $secs; up to $jobs of them at once.
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  rm -f "logs/$t.rc"
  echo "== fuzz $t for ${secs}s"
  fuzz_one "$t" &
  running=$((running + 1))
done
wait

failed=()
summary=()
for t in "${targets[@]}"; do
  rc=$(cat "logs/$t.rc" 2>/dev/null || echo "?")
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "logs/$t.log" | tail -1)
  line="$t: ${runs:-?} executions, peak RSS ${rss:-?} MB, corpus $(ls "corpus/$t" | wc -l) files"
  if [ "$rc" != 0 ]; then
    failed+=("$t")
    line="$line, FAILED (exit $rc)"
    echo "-- $t failed (exit $rc); end of logs/$t.log:"
    tail -n 80 "logs/$t.log"
    ls -l "artifacts/$t/"
  fi
  summary+=("$line")
done

echo "== fuzz summary (${secs}s per target, $jobs at a time)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
  echo "FUZZ FAILURE in: ${failed[*]} (inputs in fuzz/artifacts/<target>/; fix, then add them to fuzz/regressions/<target>/)"
  exit 1
fi
