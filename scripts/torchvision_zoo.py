#!/usr/bin/env python3
"""Which torchvision classifiers cnnrt converts and runs, how close, and how fast next to
ONNX Runtime (both at one thread, alternating in time).

For each model: torchvision architecture with seeded random weights and BatchNorm
statistics calibrated on random data (scripts/onnx_export_util.py), exported to ONNX
(opset 13, BatchNorm kept), run by ONNX Runtime (optimisations off) for the expected
output; then `cnnrt convert --tune` and `cnnrt run`, and the relative error
max|cnnrt - ORT| / max|ORT|. With --bench, `cnnrt bench` and an ORT session (1 thread,
default optimisations) take turns for --rounds rounds; the medians and the ratio of
medians are printed. Random-weight nets can be badly conditioned in f32 (EfficientNet-B0's
outputs reach 2e3): compare the error with torch's own f32 against f64 before suspecting
a kernel.

    ~/.cache/cnnrt-venv/bin/python scripts/torchvision_zoo.py --bench \\
        --cnnrt target/release/cnnrt [MODEL ...]

Files go to --out (default /tmp/cnnrt-zoo); nothing is committed.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_export_util import export_onnx, op_list, ort_run, randomize_bn, rel_err, save  # noqa: E402

DEFAULT = ["mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "mnasnet1_0",
           "regnet_y_400mf", "squeezenet1_1", "densenet121", "googlenet", "resnext50_32x4d",
           "shufflenet_v2_x1_0", "convnext_tiny"]


def export(name, out):
    torch.manual_seed(0)
    kw = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    m = getattr(torchvision.models, name)(weights=None, **kw).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    randomize_bn(m, g, calib_input=torch.randn(4, 3, 224, 224, generator=g))
    model = export_onnx(m, x, 13)
    base = os.path.join(out, name)
    save(model, base + ".onnx")
    np.save(base + ".input.npy", x.numpy())
    return model, x.numpy(), ort_run(model, x.numpy())


def ort_median(path, x, runs):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x}
    for _ in range(5):
        s.run(None, feed)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feed)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def cnnrt_median(cnnrt, path, iters):
    r = subprocess.run([cnnrt, "bench", path, "--threads", "1", "--iters", str(iters), "--json",
                        "--no-verify"], capture_output=True, text=True, check=True)
    last = [ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1]
    return float(json.loads(last)["median_ms"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=DEFAULT)
    ap.add_argument("--cnnrt", default="target/release/cnnrt")
    ap.add_argument("--out", default="/tmp/cnnrt-zoo")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name in a.models:
        try:
            model, x, ref = export(name, a.out)
        except Exception as e:  # an exporter failure is the model's, not cnnrt's
            print(f"{name}: export failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
            continue
        base = os.path.join(a.out, name)
        r = subprocess.run([a.cnnrt, "convert", base + ".onnx", "-o", base + ".cnnrt", "--tune"],
                           capture_output=True, text=True)
        if r.returncode:
            print(f"{name}: not converted: {r.stderr.strip()[:300]} (ops {op_list(model)})", flush=True)
            continue
        r = subprocess.run([a.cnnrt, "run", base + ".cnnrt", base + ".input.npy", "-o", base + ".out.npy"],
                           capture_output=True, text=True)
        if r.returncode:
            print(f"{name}: run failed: {r.stderr.strip()[:300]}", flush=True)
            continue
        out = np.load(base + ".out.npy").reshape(ref.shape)
        line = f"{name}: rel err {rel_err(out, ref):.1e}"
        if a.bench:
            ours, theirs = [], []
            for _ in range(a.rounds):
                ours.append(cnnrt_median(a.cnnrt, base + ".cnnrt", 40))
                theirs.append(ort_median(base + ".onnx", x, 40))
            c, o = float(np.median(ours)), float(np.median(theirs))
            line += f", 1 thread: cnnrt {c:.2f} ms, ONNX Runtime {o:.2f} ms, ratio {c / o:.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
