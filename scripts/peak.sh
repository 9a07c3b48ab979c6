#!/usr/bin/env bash
# This machine's FP32 peak (FMA throughput, per core and on 2 cores) and memory bandwidth.
#
#   scripts/peak.sh [MAX_THREADS]     (default 2; about 1 minute)
#
# Compiles ../shared/bench/peak.c (or $PEAK_C) with gcc -O2 -march=native -pthread into /tmp
# and runs it. Each line reports the median and max over 7 repetitions and the CPU share that
# *other* processes used meanwhile: on this shared machine, a low number with non-zero
# other-procs / steal is noise, not the hardware. Prefer the max for "peak".
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${PEAK_C:-$here/../../shared/bench/peak.c}"
[ -f "$src" ] || src="/work/shared/bench/peak.c"
if [ ! -f "$src" ]; then
    echo "peak.c not found (set PEAK_C=/path/to/peak.c)" >&2
    exit 1
fi
bin="${TMPDIR:-/tmp}/cnnrt-peak"
gcc -O2 -march=native -pthread -o "$bin" "$src"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs, loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16)$' | tr '\n' ' ')"
if grep -qw avx512f /proc/cpuinfo; then
    "$bin" "${1:-2}"
else
    # peak.c runs AVX-512 code unconditionally; without it, measure the AVX2 FMA peak.
    echo "# no AVX-512 on this CPU: AVX2 FMA peak from scripts/peak_fma.c"
    gcc -O2 -mavx2 -mfma -pthread -o "$bin-fma" "$here/peak_fma.c"
    "$bin-fma" "${1:-2}"
fi
