#!/usr/bin/env bash
# Thread scaling past 2 cores, for a session lent the 16-core device machine.
#
#   scripts/device_scaling.sh prepare   # here: fills target/device (about 5 MB)
#   scripts/device_scaling.sh run       # there, with `carry: ["target/device"]`
#
# `prepare` copies a stripped release binary and ResNet-18 / MobileNetV2 ONNX files whose
# weights are all set to constants (timing does not depend on the values; gzip then makes
# them tiny, as the device's carry limit is 64 MiB with the working tree) plus
# conv3x3_stress. `run` converts them there and times 1–16 threads, a fresh process per
# point (`cnnrt bench --json`, medians), with the shipped LeNet-5 too, ResNet-18 at batch
# 8, and writes per-layer profiles at 4 and 16 threads under $OUT. Needs the venv and the
# exported models of the README's performance section for `prepare`.
set -euo pipefail
cd "$(dirname "$0")/.."
D=target/device
case "${1:-}" in
prepare)
    cargo build --release
    mkdir -p $D
    cp target/release/cnnrt $D/cnnrt
    strip $D/cnnrt
    MODELS="${MODELS:-$HOME/.cache/cnnrt-models}"
    PY="${PY:-$HOME/.cache/cnnrt-venv/bin/python}"
    "$PY" - "$MODELS" "$D" <<'EOF'
import sys, numpy as np, onnx
from onnx import numpy_helper
models, out = sys.argv[1], sys.argv[2]
for name in ["resnet18", "mobilenet_v2"]:
    m = onnx.load(f"{models}/{name}.onnx")
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32:
            b = np.full(a.shape, 1.0 if t.name.endswith("var") else 0.01, dtype=np.float32)
            t.CopyFrom(numpy_helper.from_array(b, t.name))
    onnx.save(m, f"{out}/{name}.onnx")
EOF
    gzip -9f $D/resnet18.onnx $D/mobilenet_v2.onnx
    cp "$MODELS/conv3x3_stress.onnx" $D/
    ls -la $D
    ;;
run)
    B=$D/cnnrt
    W=/tmp/cnnrt-scale
    mkdir -p $W
    echo "== machine"
    nproc
    lscpu | grep -E "Model name|Thread|Core|Socket|L1d|L2|L3|NUMA node" || true
    gunzip -c $D/resnet18.onnx.gz >$W/resnet18.onnx
    gunzip -c $D/mobilenet_v2.onnx.gz >$W/mobilenet_v2.onnx
    cp $D/conv3x3_stress.onnx $W/
    for m in resnet18 mobilenet_v2 conv3x3_stress; do
        $B convert $W/$m.onnx -o $W/$m.cnnrt >/dev/null
    done
    cp models/lenet5.cnnrt $W/
    for m in resnet18 mobilenet_v2 conv3x3_stress lenet5; do
        for t in 1 2 4 8 12 16; do
            it=60
            [ $m = resnet18 ] && it=30
            [ $m = lenet5 ] && it=2000
            echo "$m t=$t $($B bench $W/$m.cnnrt --threads $t --iters $it --no-verify --json | tail -1)"
        done
    done
    for t in 1 4 16; do
        echo "resnet18 b=8 t=$t $($B bench $W/resnet18.cnnrt --threads $t --batch 8 --iters 8 --no-verify --json | tail -1)"
    done
    # Per-layer profiles at 4 and 16 threads, into $OUT when the device tool sets it.
    P=${OUT:-$W}
    for m in resnet18 mobilenet_v2 lenet5; do
        for t in 4 16; do
            $B bench $W/$m.cnnrt --threads $t --iters 200 --no-verify --profile >"$P/profile_${m}_t$t.txt" 2>&1 || true
        done
    done
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
