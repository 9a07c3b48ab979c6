#!/usr/bin/env python3
"""Export larger benchmark/test models (not committed: too big).

Writes to DIR (default ~/.cache/cnnrt-models):
  resnet18.onnx, mobilenet_v2.onnx   torchvision architectures, random
                                     weights (seeded), eval mode, BatchNorm
                                     kept with non-trivial running stats,
                                     opset 13, input [1,3,224,224]
  conv3x3_stress.onnx                4 x [Conv 3x3 64->64 pad 1, bias, ReLU]
                                     on [1,64,56,56]
and for each <name>: <name>.input.npy (float32, fixed seeded random input)
and <name>.expected.npy (ONNX Runtime CPU output, optimisations off).

Input name "input", output name "output", dynamic batch axis 0.
BatchNorm running stats are estimated on random data (train-mode forward)
and then perturbed, and BN weight/bias are random, so activations stay
well scaled through the deep nets while every BN is non-trivial.

Usage:
    ~/.cache/cnnrt-venv/bin/python scripts/export_torchvision.py [--out DIR]
"""

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_export_util import (export_onnx, op_list, ort_run, randomize_bn,  # noqa: E402
                              rel_err, save)


def conv3x3_stress():
    layers = []
    for _ in range(4):
        layers += [nn.Conv2d(64, 64, 3, 1, 1, bias=True), nn.ReLU()]
    return nn.Sequential(*layers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/cnnrt-models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="subset of model names")
    args = ap.parse_args()
    torch.set_num_threads(2)
    import torchvision

    specs = [
        ("resnet18", lambda: torchvision.models.resnet18(weights=None), (1, 3, 224, 224)),
        ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(weights=None), (1, 3, 224, 224)),
        ("conv3x3_stress", conv3x3_stress, (1, 64, 56, 56)),
    ]
    os.makedirs(args.out, exist_ok=True)
    for i, (name, factory, shape) in enumerate(specs):
        if args.only and name not in args.only:
            continue
        torch.manual_seed(args.seed + i)
        gen = torch.Generator().manual_seed(args.seed + 100 + i)
        module = factory()
        calib = torch.randn(8, *shape[1:], generator=gen)
        randomize_bn(module, gen, calib_input=calib)
        module.eval()
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            ref = module(x).numpy()
        model = export_onnx(module, x, 13)
        path = os.path.join(args.out, f"{name}.onnx")
        save(model, path)
        xn = x.numpy().astype(np.float32)
        expected = ort_run(model, xn).astype(np.float32)
        np.save(os.path.join(args.out, f"{name}.input.npy"), xn)
        np.save(os.path.join(args.out, f"{name}.expected.npy"), expected)
        nbn = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
        print(f"{name}: {path} ({os.path.getsize(path) / 1e6:.1f} MB) input {list(xn.shape)} -> "
              f"output {list(expected.shape)}, |out|max {np.abs(expected).max():.3g}, "
              f"torch vs ORT rel err {rel_err(ref, expected):.1e}, "
              f"{len(model.graph.node)} nodes ({nbn} BatchNormalization), ops={','.join(op_list(model))}",
              flush=True)


if __name__ == "__main__":
    main()
