#!/usr/bin/env python3
"""Write small ONNX test models with fixed inputs and ONNX Runtime outputs.

For each model this writes `tests/data/models/<name>/`:
  model.onnx     exported from a seeded PyTorch module (legacy exporter,
                 do_constant_folding=False so BatchNormalization stays, then
                 only pure-constant shape arithmetic folded), dynamic batch
                 axis 0, input "input", output "output"
  input.npy      float32, batch 2
  expected.npy   float32, ONNX Runtime (CPU EP, graph optimisations off)

plus `tests/data/models/manifest.json` (opset, ops, shapes, description).

All weights are random (seeded); every BatchNorm gets random running_mean,
running_var, weight and bias. The Rust test compares against expected.npy
with max|diff| / max|expected| <= 1e-4, at batch 2 and at batch 1 (first
sample), so every model is batch-independent.

Usage:
    ~/.cache/cnnrt-venv/bin/python scripts/make_test_models.py [--out tests/data/models]
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_export_util import (export_onnx, ort_run, op_list, opset_of,  # noqa: E402
                              randomize_bn, rel_err, save)

MAX_BYTES = 300 * 1024


def bn2d(c):
    return nn.BatchNorm2d(c)


# --------------------------------------------------------------------------
# (a) tiny ResNet
# --------------------------------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = bn2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = bn2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn2d(cout))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + idt)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), bn2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.gap(x), 1))


# --------------------------------------------------------------------------
# (b) tiny MobileNetV2
# --------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hid = cin * t
        layers = []
        if t != 1:
            layers += [nn.Conv2d(cin, hid, 1, bias=False), bn2d(hid), nn.ReLU6()]
        layers += [nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), bn2d(hid), nn.ReLU6(),
                   nn.Conv2d(hid, cout, 1, bias=False), bn2d(cout)]
        self.body = nn.Sequential(*layers)
        self.res = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.res else y


class TinyMobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), bn2d(16), nn.ReLU6())
        cfg = [(16, 8, 1, 1), (8, 16, 2, 4), (16, 16, 1, 4), (16, 24, 2, 4), (24, 24, 1, 4)]
        self.blocks = nn.Sequential(*[InvertedResidual(*c) for c in cfg])
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), bn2d(64), nn.ReLU6())
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


# --------------------------------------------------------------------------
# (c) activations
# --------------------------------------------------------------------------

class Activations(nn.Module):
    """Seven activations applied in parallel to one conv output, concatenated
    on channels, mixed by a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1)
        self.acts = nn.ModuleList([nn.LeakyReLU(0.1), nn.PReLU(8), nn.Sigmoid(), nn.Hardsigmoid(),
                                   nn.Hardswish(), nn.SiLU(), nn.Tanh()])
        with torch.no_grad():
            self.acts[1].weight.copy_(torch.linspace(-0.5, 0.8, 8))
        self.mix = nn.Conv2d(8 * 7, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.mix(torch.cat([a(y) for a in self.acts], 1))


class ActChain(nn.Module):
    """One activation after a conv (for per-op debugging)."""

    def __init__(self, act, cin=3, cout=4):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1)
        self.act = act

    def forward(self, x):
        return self.act(self.conv(x))


# --------------------------------------------------------------------------
# (d) pools
# --------------------------------------------------------------------------

class GlobalMaxPoolFn(torch.autograd.Function):
    """Exports as the ONNX GlobalMaxPool op (torch's adaptive_max_pool2d(1)
    would export as a MaxPool with a full-size kernel)."""
    @staticmethod
    def forward(ctx, x):
        return x.amax(dim=(2, 3), keepdim=True)

    @staticmethod
    def symbolic(g, x):
        return g.op("GlobalMaxPool", x)


class GlobalMaxPool(nn.Module):
    def forward(self, x):
        return GlobalMaxPoolFn.apply(x)


class PoolsCombined(nn.Module):
    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 2, 0, 1))
        self.conv = nn.Conv2d(3, 8, 3)
        self.mp = nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True)
        self.ap1 = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
        self.ap2 = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=True)
        self.gmp = GlobalMaxPool()
        self.fc = nn.Linear(8 * 3, 6)

    def forward(self, x):                       # [N,3,15,15]
        y = F.relu(self.conv(self.pad(x)))      # [N,8,14,16]
        a = self.gmp(self.mp(y))                # maxpool -> [N,8,6,7]
        b = self.gmp(self.ap1(y))               # [N,8,8,9]
        c = self.gmp(self.ap2(y))
        z = torch.cat([a, b, c], 1)             # [N,24,1,1]
        return self.fc(torch.flatten(z, 1))


# --------------------------------------------------------------------------
# (e) norms and heads
# --------------------------------------------------------------------------

class NormsHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.b1 = nn.Conv2d(8, 8, 3, 1, 1)
        self.b2 = nn.Conv2d(8, 4, 1)
        self.ln = nn.LayerNorm([12, 8, 8])
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 10)
        with torch.no_grad():
            for p in (self.inorm.weight, self.ln.weight):
                p.uniform_(0.5, 1.5)
            for p in (self.inorm.bias, self.ln.bias):
                p.uniform_(-0.5, 0.5)
            self.fc.weight.mul_(4.0)  # a less flat softmax

    def forward(self, x):                       # [N,3,8,8]
        y = F.relu(self.inorm(self.conv(x)))
        y = torch.cat([self.b1(y), self.b2(y)], 1)   # [N,12,8,8]
        y = self.ln(y)
        y = torch.flatten(self.gap(y), 1)
        return torch.softmax(self.fc(y), dim=1)


class Affine(nn.Module):
    """Random affine after a norm, so the test is sensitive to scale/bias."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.norm(x)


# --------------------------------------------------------------------------
# (f) conv variety
# --------------------------------------------------------------------------

class ConvVariety(nn.Module):
    def __init__(self):
        super().__init__()
        self.dil = nn.Conv2d(4, 8, 3, 1, 2, dilation=2)          # bias + BN
        self.bn_dil = bn2d(8)
        self.grp = nn.Conv2d(8, 8, 3, 1, 1, groups=2, bias=False)  # no bias + BN
        self.bn_grp = bn2d(8)
        self.s2 = nn.Conv2d(8, 8, 3, 2, 0)                        # 15 -> 7
        self.k5 = nn.Conv2d(8, 8, 5, 1, 2)
        self.k17 = nn.Conv2d(8, 8, (1, 7), 1, (0, 3))
        self.k71 = nn.Conv2d(8, 8, (7, 1), 1, (3, 0))

    def forward(self, x):                       # [N,4,15,15]
        y = F.relu(self.bn_dil(self.dil(x)))
        y = F.relu(self.bn_grp(self.grp(y)))
        y = F.relu(self.s2(y))                  # [N,8,7,7]
        y = F.relu(self.k5(y))
        return self.k71(F.relu(self.k17(y)))


# --------------------------------------------------------------------------
# (g) linear + BN1d, Gemm
# --------------------------------------------------------------------------

class LinearBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.bn = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):                       # [N,16]
        return self.fc2(F.relu(self.bn(self.fc1(x))))


# --------------------------------------------------------------------------

def cases():
    """(name, factory, input shape (batch 2), opset, description, input scale)"""
    C = []

    def add(name, f, shape, opset, desc, scale=1.0):
        C.append((name, f, shape, opset, desc, scale))

    add("resnet_tiny", TinyResNet, (2, 3, 32, 32), 13,
        "conv3x3 s2 + BN + ReLU stem, maxpool 3x3 s2 p1, BasicBlock(16), "
        "BasicBlock(16->32, s2, 1x1 s2 conv+BN downsample), GAP, flatten, linear")
    add("mobilenetv2_tiny", TinyMobileNetV2, (2, 3, 32, 32), 13,
        "MobileNetV2-style: stem conv s2+BN+ReLU6, inverted residuals (t=1 and t=4; "
        "1x1 expand+BN+ReLU6, dw3x3 s1/s2+BN+ReLU6, 1x1 project+BN, residual add), "
        "1x1 head conv, GAP, linear")
    add("activations", Activations, (2, 3, 8, 8), 13,
        "conv, then LeakyReLU(0.1), PReLU(8 per-channel), Sigmoid, Hardsigmoid, "
        "Hardswish (HardSigmoid*x at opset 13), SiLU (Sigmoid*x), Tanh in parallel, "
        "concat, 1x1 conv", 3.0)
    add("activations_opset17", Activations, (2, 3, 8, 8), 17,
        "same module as activations, opset 17 (native HardSwish op)", 3.0)
    for aname, act in (("leakyrelu", lambda: nn.LeakyReLU(0.1)),
                       ("prelu", lambda: _prelu(4)),
                       ("sigmoid", nn.Sigmoid), ("hardsigmoid", nn.Hardsigmoid),
                       ("hardswish", nn.Hardswish), ("silu", nn.SiLU),
                       ("tanh", nn.Tanh), ("relu6", nn.ReLU6)):
        add(f"act_{aname}", (lambda a=act: ActChain(a())), (2, 3, 6, 6), 13,
            f"conv3x3 then {aname}", 3.0)
    add("pools", PoolsCombined, (2, 3, 15, 15), 13,
        "ZeroPad2d((1,2,0,1)) + conv, MaxPool(3,s2,p1,dilation 2,ceil), "
        "AvgPool(3,s2,p1,ceil,count_include_pad False/True), GlobalMaxPool, concat, linear")
    add("pool_avg_ceil_exclude_pad", lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        (2, 4, 10, 10), 13, "AvgPool k3 s2 p1 ceil_mode count_include_pad=False, 10x10 -> 6x6 "
        "(last window extends past the padding)")
    add("pool_avg_ceil_include_pad", lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=True),
        (2, 4, 10, 10), 13, "AvgPool k3 s2 p1 ceil_mode count_include_pad=True, 10x10 -> 6x6 "
        "(last window extends past the padding: divisor counts padding, not the overhang)")
    add("pool_avg_include_pad", lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=True),
        (2, 4, 11, 11), 13, "AvgPool k3 s2 p1 count_include_pad=True, floor mode, 11x11 -> 6x6")
    add("pool_max_dilated_ceil", lambda: nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True),
        (2, 4, 10, 10), 13, "MaxPool k3 s2 p1 dilation 2 ceil_mode, 10x10 -> 5x5")
    add("pool_max_k2_ceil_odd", lambda: nn.MaxPool2d(2, 2, ceil_mode=True),
        (2, 4, 7, 7), 13, "MaxPool k2 s2 ceil_mode on 7x7 -> 4x4")
    add("pad_asym_conv", lambda: nn.Sequential(nn.ZeroPad2d((1, 2, 0, 1)), nn.Conv2d(4, 6, 3)),
        (2, 4, 9, 9), 13, "Pad (left 1, right 2, top 0, bottom 1) then conv3x3 no pad, 9x9 -> 8x10")
    add("global_max_pool", lambda: nn.Sequential(nn.Conv2d(4, 6, 3), GlobalMaxPool()),
        (2, 4, 7, 9), 13, "conv3x3 then GlobalMaxPool -> [N,6,1,1]")
    add("global_avg_pool", lambda: nn.Sequential(nn.Conv2d(4, 6, 3), nn.AdaptiveAvgPool2d(1)),
        (2, 4, 7, 9), 13, "conv3x3 then GlobalAveragePool -> [N,6,1,1]")
    add("norms_heads", NormsHeads, (2, 3, 8, 8), 17,
        "conv, InstanceNorm2d(affine), ReLU, two conv branches concatenated on channels, "
        "LayerNorm over [C,H,W], GAP, linear, softmax")
    add("instancenorm", lambda: Affine(nn.InstanceNorm2d(4, affine=True)), (2, 4, 5, 6), 13,
        "InstanceNormalization alone, random scale/bias")
    add("layernorm_chw_opset17", lambda: Affine(nn.LayerNorm([4, 5, 6])), (2, 4, 5, 6), 17,
        "LayerNormalization over [C,H,W] (axis -3)")
    add("layernorm_chw_opset18", lambda: Affine(nn.LayerNorm([4, 5, 6])), (2, 4, 5, 6), 18,
        "LayerNormalization over [C,H,W] (axis -3), opset 18")
    add("softmax_channels", lambda: nn.Softmax(dim=1), (2, 5, 3, 3), 13,
        "Softmax over axis 1 of a 4-D tensor (opset 13 semantics: one axis)", 3.0)
    add("concat_branches", lambda: _Concat(), (2, 3, 6, 6), 13,
        "two convs (5 and 3 channels) concatenated on channels")
    add("conv_variety", ConvVariety, (2, 4, 15, 15), 13,
        "conv dilation 2 with bias + BN, grouped conv (groups 2) without bias + BN, "
        "conv s2 no pad on odd 15x15 -> 7x7, conv 5x5, conv 1x7 then 7x1")
    add("conv_dilated", lambda: nn.Conv2d(4, 6, 3, 1, 2, dilation=2), (2, 4, 9, 9), 13,
        "conv3x3 dilation 2 pad 2")
    add("conv_grouped", lambda: nn.Conv2d(4, 6, 3, 1, 1, groups=2), (2, 4, 9, 9), 13,
        "conv3x3 groups 2")
    add("conv_depthwise", lambda: nn.Conv2d(6, 6, 3, 2, 1, groups=6), (2, 6, 9, 9), 13,
        "depthwise conv3x3 s2 p1")
    add("conv_stride2_odd", lambda: nn.Conv2d(4, 6, 3, 2, 0), (2, 4, 15, 13), 13,
        "conv3x3 s2 no pad, 15x13 -> 7x6")
    add("conv_5x5", lambda: nn.Conv2d(4, 6, 5, 1, 2), (2, 4, 9, 9), 13, "conv5x5 pad 2")
    add("conv_1x7_7x1", lambda: nn.Sequential(nn.Conv2d(4, 6, (1, 7), 1, (0, 3)),
                                              nn.Conv2d(6, 6, (7, 1), 1, (3, 0))),
        (2, 4, 9, 9), 13, "conv 1x7 pad (0,3) then 7x1 pad (3,0)")
    add("conv_nobias_bn", lambda: nn.Sequential(nn.Conv2d(4, 6, 3, 1, 1, bias=False), bn2d(6)),
        (2, 4, 9, 9), 13, "conv without bias then BatchNorm")
    add("conv_bias_bn", lambda: nn.Sequential(nn.Conv2d(4, 6, 3, 1, 1), bn2d(6), nn.ReLU()),
        (2, 4, 9, 9), 13, "conv with bias then BatchNorm then ReLU")
    add("bn_standalone", lambda: nn.Sequential(bn2d(4)), (2, 4, 5, 5), 13,
        "BatchNormalization directly on the input (not foldable into a conv)")
    add("linear_bn", LinearBN, (2, 16), 13,
        "Gemm(transB=1) + BatchNorm1d (BatchNormalization on [N,C]) + ReLU + Gemm")
    return C


def _prelu(c):
    p = nn.PReLU(c)
    with torch.no_grad():
        p.weight.copy_(torch.linspace(-0.5, 0.8, c))
    return p


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 5, 3, 1, 1)
        self.b = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return torch.cat([self.a(x), F.relu(self.b(x))], 1)


def gemm_handmade(alpha, beta, trans_b):
    """A Gemm written with onnx.helper: y = alpha * x @ W^T + beta * C."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)
    k, n = 12, 5
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    c = rng.standard_normal((n,)).astype(np.float32)
    node = helper.make_node("Gemm", ["input", "W", "C"], ["output"], alpha=alpha, beta=beta,
                            transB=int(trans_b))
    g = helper.make_graph(
        [node], "gemm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", n])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(c, "C")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)],
                          producer_name="cnnrt make_test_models.py")
    m.ir_version = 7
    onnx.checker.check_model(m, full_check=True)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/data/models")
    ap.add_argument("--seed", type=int, default=20240611)
    args = ap.parse_args()
    torch.set_num_threads(2)

    os.makedirs(args.out, exist_ok=True)
    manifest = {}
    ok = True
    all_cases = [(c, None) for c in cases()]
    all_cases.append((("gemm_transb", None, (2, 12), 13,
                       "hand-written Gemm transB=1 alpha=1 beta=1, bias C [N]", 1.0),
                      lambda: gemm_handmade(1.0, 1.0, True)))
    all_cases.append((("gemm_alpha_beta", None, (2, 12), 13,
                       "hand-written Gemm transB=0 alpha=0.5 beta=2, bias C [N]", 1.0),
                      lambda: gemm_handmade(0.5, 2.0, False)))
    for i, ((name, factory, shape, opset, desc, scale), handmade) in enumerate(all_cases):
        torch.manual_seed(args.seed + i)
        gen = torch.Generator().manual_seed(args.seed + 1000 + i)
        x = (torch.randn(*shape, generator=gen) * scale).float()
        if handmade is None:
            module = factory()
            randomize_bn(module, gen)
            module.eval()
            with torch.no_grad():
                ref = module(x).numpy()
            model = export_onnx(module, x, opset)
        else:
            model = handmade()
            ref = None
        xn = x.numpy()
        expected = ort_run(model, xn).astype(np.float32)
        expected_opt = ort_run(model, xn, disable_opt=False)
        e_opt = rel_err(expected_opt, expected)
        e_pt = rel_err(ref, expected) if ref is not None else 0.0
        # batch independence: first sample alone gives the first row
        one = ort_run(model, xn[:1])
        e_b1 = rel_err(one, expected[:1])

        d = os.path.join(args.out, name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        save(model, os.path.join(d, "model.onnx"))
        np.save(os.path.join(d, "input.npy"), xn.astype(np.float32))
        np.save(os.path.join(d, "expected.npy"), expected)
        size = os.path.getsize(os.path.join(d, "model.onnx"))
        ops = op_list(model)
        bad = []
        if size > MAX_BYTES:
            bad.append(f"size {size} > {MAX_BYTES}")
        if max(e_pt, e_opt, e_b1) > 1e-5:
            bad.append(f"disagreement torch={e_pt:.1e} ort-opt={e_opt:.1e} batch1={e_b1:.1e}")
        if not np.isfinite(expected).all():
            bad.append("non-finite output")
        has_bn = handmade is None and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
        if has_bn and "BatchNormalization" not in ops:
            bad.append("BatchNormalization folded away")
        ok &= not bad
        manifest[name] = dict(opset=opset_of(model), ops=ops, input_shape=list(xn.shape),
                              output_shape=list(expected.shape), bytes=size,
                              description=desc,
                              rel_err_torch_vs_ort=e_pt)
        print(f"{name:28s} opset {opset_of(model):2d} {str(list(xn.shape)):18s} -> "
              f"{str(list(expected.shape)):16s} {size:7d} B  torch/ort {e_pt:.1e}  "
              f"ops={','.join(ops)}" + (f"  !! {'; '.join(bad)}" if bad else ""))
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(manifest)} models written to {args.out}")
    if not ok:
        sys.exit("some models failed their checks (see !! above)")


if __name__ == "__main__":
    main()
