"""Shared helpers for the export scripts: torch -> ONNX export that keeps
BatchNormalization nodes, a small constant-folding pass for the shape
arithmetic the legacy exporter emits (e.g. for nn.ZeroPad2d), BatchNorm
randomisation, and ONNX Runtime execution."""

import io
import os

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper


def randomize_bn(module, gen, calib_input=None):
    """Give every BatchNorm non-trivial statistics and affine parameters.

    If `calib_input` is given, running stats are first estimated from it in
    training mode (so activations stay well scaled in deep nets), then
    perturbed; otherwise they are drawn at random."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if calib_input is not None:
        saved = [(m.momentum,) for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        module.train()
        with torch.no_grad():
            module(calib_input)
        for m, (mom,) in zip(bns, saved):
            m.momentum = mom
    with torch.no_grad():
        for m in bns:
            c = m.num_features

            def u(lo, hi):
                return torch.rand(c, generator=gen) * (hi - lo) + lo
            if calib_input is None:
                m.running_mean.copy_(u(-0.5, 0.5))
                m.running_var.copy_(u(0.5, 2.0))
            else:
                m.running_mean.add_(u(-0.1, 0.1) * m.running_var.sqrt())
                m.running_var.mul_(u(0.8, 1.25))
            m.weight.copy_(u(0.5, 1.5))
            m.bias.copy_(u(-0.3, 0.3))
    module.eval()


def export_onnx(module, example, opset, input_name="input",
                output_name="output", dynamic_batch=True):
    """Legacy (TorchScript) exporter, no constant folding (keeps BN nodes,
    which torch otherwise fuses into the conv), then `fold_constants`."""
    module.eval()
    buf = io.BytesIO()
    kw = {}
    if dynamic_batch:
        kw["dynamic_axes"] = {input_name: {0: "batch"}, output_name: {0: "batch"}}
    torch.onnx.export(module, (example,), buf, opset_version=opset,
                      dynamo=False, do_constant_folding=False,
                      input_names=[input_name], output_names=[output_name], **kw)
    model = onnx.load_from_string(buf.getvalue())
    model = fold_constants(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def _const_value(node):
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, np.float32)
        if a.name == "value_int":
            return np.array(a.i, np.int64)
        if a.name == "value_floats":
            return np.array(list(a.floats), np.float32)
        if a.name == "value_ints":
            return np.array(list(a.ints), np.int64)
    raise ValueError(f"unsupported Constant {node.name}")


def fold_constants(model):
    """Evaluate every non-Constant node whose inputs are all constants
    (initializers or Constant outputs) and replace it by an initializer;
    then drop dead nodes and unused initializers. Constant nodes that are
    still used (e.g. Clip min/max, Pad value) are kept as they are."""
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    graph_inputs = {i.name for i in g.input}
    kept, new_inits = [], []
    for node in g.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = _const_value(node)
            kept.append(node)
            continue
        ins = [i for i in node.input if i]
        if ins and all(i in consts and i not in graph_inputs for i in ins):
            feeds = {i: consts[i] for i in ins}
            outs = ReferenceEvaluator(node).run(None, feeds)
            for name, val in zip(node.output, outs):
                val = np.asarray(val)
                consts[name] = val
                new_inits.append(numpy_helper.from_array(val, name))
            continue
        kept.append(node)

    # dead-code elimination, backwards from the graph outputs
    needed = {o.name for o in g.output}
    live = []
    for node in reversed(kept):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    live.reverse()

    inits = [i for i in list(g.initializer) + new_inits if i.name in needed]
    vis = [v for v in g.value_info if v.name in needed]
    del g.node[:]
    g.node.extend(live)
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]
    g.value_info.extend(vis)
    return model


def ort_run(model, x, disable_opt=True):
    import onnxruntime as ort
    so = ort.SessionOptions()
    if disable_opt:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x})[0]


def rel_err(a, b):
    """max |a - b| / max |b|, the acceptance metric of the Rust tests."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()
                 / max(np.abs(b).max(), 1e-30))


def op_list(model):
    seen = []
    for n in model.graph.node:
        if n.op_type not in seen:
            seen.append(n.op_type)
    return seen


def opset_of(model):
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def save(model, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    onnx.save(model, path)
