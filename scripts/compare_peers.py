#!/usr/bin/env python3
"""cnnrt against its peers, side by side, on this machine, in one run.

    ~/.cache/cnnrt-venv/bin/python scripts/compare_peers.py --models ~/.cache/cnnrt-models \
        --threads 1 2 --batch 1 [--repeat 3] [--runtimes cnnrt,onnxruntime,openvino,tract] [--out FILE]

Models: lenet5 (models/lenet5.onnx in this repo) and resnet18, mobilenet_v2, conv3x3_stress
from --models (written by scripts/export_torchvision.py, with <name>.input.npy), plus
resnet18 at batch 8 (--extra-batch; the exported ONNX has a dynamic batch axis) at
--extra-batch-threads. Each model is converted with `target/release/cnnrt convert` (cnnrt is
built in release first unless --no-build); the .cnnrt files go to --convert-dir (default: next
to the ONNX files in --models, where benches/models.rs looks for them).

Every (model, threads, batch, runtime) runs in a fresh subprocess with its thread count pinned:
  cnnrt        `cnnrt bench MODEL.cnnrt --threads N --batch B --iters I --json` (1 first run +
               3 warm-up runs inside; I is sized so the timed loop lasts >= --min-secs)
  onnxruntime  CPUExecutionProvider, ORT_ENABLE_ALL, intra_op_num_threads=N, inter_op=1,
               ORT_SEQUENTIAL
  openvino     CPU, LATENCY hint, 1 stream, INFERENCE_NUM_THREADS=N, INFERENCE_PRECISION_HINT
               forced to f32 (it picks bf16 on this CPU by default), batch reshaped to static
  tract        tools/tract-peer (tract-onnx 0.23.9; --threads N uses tract's multithreaded
               matmul executor), skipped with a note if not built
and OMP/MKL/OPENBLAS/RAYON_NUM_THREADS=N in every environment. Python runtimes warm up for
--warmup-secs, then time single inferences until >= --min-runs AND >= --min-secs. The sweep is
repeated --repeat times round-robin (runtime order rotated each time) so that machine noise
is spread over all configs; the table shows the median over repeats of each repeat's median.

Each worker also records the CPU share used by *other* processes while it ran ("other %"):
the machine is shared, so numbers taken with other % high are noisy (2-thread ones most).

Correctness: each model's fixed input (<name>.input.npy; for lenet5, held-out digit 0
normalised) is run through ORT and through cnnrt (`cnnrt run ... -o`), OpenVINO and tract;
reported as max |y - y_ort| / max |y_ort|.

Output: markdown tables on stdout; raw results as JSON to --out (default /tmp/...).
"""
import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ALIASES = {"ort": "onnxruntime", "onnxruntime": "onnxruntime", "ov": "openvino", "openvino": "openvino",
           "tract": "tract", "cnnrt": "cnnrt"}
PEERS_ORDER = ["onnxruntime", "openvino", "tract"]
SHORT = {"onnxruntime": "ORT", "openvino": "OpenVINO", "tract": "tract", "cnnrt": "cnnrt"}
DIR_MODELS = ["resnet18", "mobilenet_v2", "conv3x3_stress"]


# =========================================================================== helpers
def cpu_jiffies():
    """(busy, total) jiffies over all CPUs from /proc/stat (busy excludes idle + iowait)."""
    try:
        with open("/proc/stat") as f:
            p = [int(v) for v in f.readline().split()[1:9]]
        return sum(p) - p[3] - p[4], sum(p)
    except Exception:
        return 0, 0


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def other_pct(j0, j1, own_s):
    """% of the whole machine used by processes other than ours between two cpu_jiffies()."""
    hz = os.sysconf("SC_CLK_TCK")
    busy, total = j1[0] - j0[0], j1[1] - j0[1]
    if total <= 0:
        return None
    return round(max(0.0, (busy - own_s * hz) / total * 100.0), 1)


def machine_busy_pct(interval=0.5):
    j0 = cpu_jiffies()
    time.sleep(interval)
    return other_pct(j0, cpu_jiffies(), 0.0)


def onnx_info(path, batch):
    """(flops at this batch, input name, input shape at this batch) from ONNX shape inference.
    FLOPs = 2 x multiply-adds of Conv / Gemm / MatMul (the convention of cnnrt and the anchors)."""
    import onnx
    from onnx import shape_inference

    m = onnx.load(path)
    inits = {i.name for i in m.graph.initializer}
    inp = next(i for i in m.graph.input if i.name not in inits)
    dims = inp.type.tensor_type.shape.dim
    shape = [batch] + [d.dim_value for d in dims[1:]]
    dims[0].Clear()
    dims[0].dim_value = batch  # fix the batch so every shape is concrete
    m = shape_inference.infer_shapes(m)
    g = m.graph
    shapes = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)

    def attr(node, name, default=0):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    macs = 0
    for n in g.node:
        y = shapes.get(n.output[0])
        if n.op_type == "Conv":
            w = shapes.get(n.input[1])
            if w and y and None not in y:
                macs += math.prod(y) * math.prod(w[1:])
        elif n.op_type == "Gemm":
            a, b = shapes.get(n.input[0]), shapes.get(n.input[1])
            if a and b:
                M, K = (a[1], a[0]) if attr(n, "transA") else (a[0], a[1])
                N = b[0] if attr(n, "transB") else b[1]
                macs += M * N * K
        elif n.op_type == "MatMul":
            a = shapes.get(n.input[0])
            if a and y and None not in y:
                macs += math.prod(y) * a[-1]
    return 2 * macs, inp.name, shape


def rel_diff(y, ref):
    import numpy as np
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    if y.shape != ref.shape:
        return None
    return float(np.max(np.abs(y - ref)) / (np.max(np.abs(ref)) + 1e-30))


# =========================================================================== worker side (python runtimes)
def time_loop(fn, min_runs, min_secs, warmup_secs, max_runs=3000, max_secs=30.0):
    """Warm up for warmup_secs (>= 3 runs), then time runs until >= min_runs and >= min_secs
    (or max_runs / max_secs)."""
    t0 = time.perf_counter()
    w = 0
    while w < 3 or time.perf_counter() - t0 < warmup_secs:
        fn()
        w += 1
        if w > 2000:
            break
    times = []
    tb = time.perf_counter()
    while True:
        t = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t) * 1e-6)
        el = time.perf_counter() - tb
        if (len(times) >= min_runs and el >= min_secs) or len(times) >= max_runs or el >= max_secs:
            break
    times.sort()

    def q(p):
        return times[min(len(times) - 1, int(round(p * (len(times) - 1))))]

    return dict(runs=len(times), warmup_runs=w, median_ms=q(0.5), p90_ms=q(0.9), p99_ms=q(0.99), min_ms=times[0])


def w_onnxruntime(a, x, xcheck):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t = time.perf_counter()
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    info = {"version": ort.__version__, "open_ms": (time.perf_counter() - t) * 1e3}
    name = sess.get_inputs()[0].name
    if xcheck is not None:
        import numpy as np
        np.save(a.check_out, sess.run(None, {name: xcheck})[0].astype(np.float32))
    feed = {name: x}
    t = time.perf_counter()
    sess.run(None, feed)
    info["first_run_ms"] = (time.perf_counter() - t) * 1e3
    info.update(time_loop(lambda: sess.run(None, feed), a.min_runs, a.min_secs, a.warmup_secs, a.max_runs, a.max_secs))
    return info


def w_openvino(a, x, xcheck):
    import openvino as ov
    core = ov.Core()
    cfg = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(a.threads),
           "INFERENCE_PRECISION_HINT": "f32"}
    t = time.perf_counter()
    model = core.read_model(a.model)
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape(list(x.shape))})  # static batch
    cm = core.compile_model(model, "CPU", cfg)
    req = cm.create_infer_request()
    info = {"version": ov.__version__.split("-")[0], "open_ms": (time.perf_counter() - t) * 1e3,
            "ov_threads": str(cm.get_property("INFERENCE_NUM_THREADS")),
            "ov_precision": str(cm.get_property("INFERENCE_PRECISION_HINT"))}
    if xcheck is not None:
        import numpy as np
        if xcheck.shape == x.shape:
            req.infer({0: xcheck})
            np.save(a.check_out, np.array(req.get_output_tensor(0).data, dtype=np.float32))
    req.set_input_tensor(ov.Tensor(x))
    t = time.perf_counter()
    req.infer()
    info["first_run_ms"] = (time.perf_counter() - t) * 1e3
    info.update(time_loop(req.infer, a.min_runs, a.min_secs, a.warmup_secs, a.max_runs, a.max_secs))
    return info


WORKERS = {"onnxruntime": w_onnxruntime, "openvino": w_openvino}


def worker_main(a):
    import warnings
    import numpy as np
    warnings.filterwarnings("ignore")
    shape = json.loads(a.shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    xcheck = np.load(a.check_in).astype(np.float32) if a.check_in else None
    try:
        info = WORKERS[a.runtime](a, x, xcheck)
    except ImportError as e:
        info = {"skip": f"not installed: {e}"}
    except Exception as e:  # report, don't crash the sweep
        info = {"error": f"{type(e).__name__}: {e}"[-500:]}
    sys.stdout.flush()
    print("@@RESULT@@" + json.dumps(info))


# =========================================================================== parent side
def env_for(threads):
    env = dict(os.environ)
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[v] = str(threads)
    env.setdefault("OPENVINO_TELEMETRY", "0")
    return env


def run_measured(cmd, env, timeout):
    """Run cmd, return (CompletedProcess or error string, other-procs %)."""
    j0, c0 = cpu_jiffies(), children_cpu_s()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timeout {timeout}s", None
    return p, other_pct(j0, cpu_jiffies(), children_cpu_s() - c0)


def last_json(stdout):
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line")


def iters_for(est_ms, a):
    """Timed runs for cnnrt / tract (they take a count): >= --min-runs and >= --min-secs of runs,
    like the python loop, but no more than --max-secs of runs (at least 3) for very slow configs."""
    if not est_ms or est_ms <= 0:
        return a.min_runs
    n = max(a.min_runs, math.ceil(a.min_secs * 1e3 / est_ms))
    n = min(n, a.max_runs, max(3, int(a.max_secs * 1e3 / est_ms)))
    return int(n)


def run_one(a, cfg, runtime, est_ms, check_in=None, check_out=None):
    """One fresh-process measurement. Returns a result dict."""
    env = env_for(cfg["threads"])
    iters = iters_for(est_ms, a)
    if runtime == "cnnrt":
        cmd = [a.cnnrt_bin, "bench", cfg["cnnrt"], "--threads", str(cfg["threads"]), "--batch", str(cfg["batch"]),
               "--iters", str(iters), "--json"]
    elif runtime == "tract":
        if not os.path.exists(a.tract_bin):
            return {"skip": f"{a.tract_bin} not built (cd tools/tract-peer && cargo build --release)"}
        cmd = [a.tract_bin, cfg["onnx"], "--threads", str(cfg["threads"]), "--batch", str(cfg["batch"]),
               "--iters", str(iters)]
        if check_in:
            cmd += ["--input", check_in, "--output", check_out]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--runtime", runtime, "--model", cfg["onnx"],
               "--shape", json.dumps(cfg["shape"]), "--threads", str(cfg["threads"]),
               "--min-runs", str(a.min_runs), "--min-secs", str(a.min_secs), "--warmup-secs", str(a.warmup_secs),
               "--max-runs", str(a.max_runs), "--max-secs", str(a.max_secs)]
        if check_in:
            cmd += ["--check-in", check_in, "--check-out", check_out]
    p, bg = run_measured(cmd, env, a.timeout)
    if isinstance(p, str):
        return {"error": p, "other_pct": bg}
    if p.returncode != 0:
        return {"error": f"rc={p.returncode}: " + (p.stderr or p.stdout).strip()[-400:], "other_pct": bg}
    try:
        if runtime in ("cnnrt", "tract"):
            info = last_json(p.stdout)
        else:
            line = next(ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("@@RESULT@@"))
            info = json.loads(line[len("@@RESULT@@"):])
    except Exception as e:
        return {"error": f"unparsable output ({e}): {p.stdout.strip()[-300:]}", "other_pct": bg}
    info["other_pct"] = bg
    if runtime == "cnnrt":
        info.setdefault("runs", iters)
    return info


def build_cnnrt(a):
    if a.no_build:
        return
    print("# cargo build --release --bin cnnrt", flush=True)
    r = subprocess.run(["cargo", "build", "--release", "--bin", "cnnrt"], cwd=REPO)
    if r.returncode != 0:
        sys.exit("cnnrt release build failed")


def convert(a, onnx_path, out_path):
    r = subprocess.run([a.cnnrt_bin, "convert", onnx_path, "-o", out_path], capture_output=True, text=True)
    if r.returncode != 0:
        return (r.stderr or r.stdout).strip()[-300:]
    return None


def lenet5_input(path):
    """Held-out digit 0 (index 0), normalised like the model expects, as [1,1,28,28] f32."""
    import numpy as np
    imgs = np.load(os.path.join(REPO, "models", "mnist_heldout_images.npy"))
    x = ((imgs[0].astype(np.float32) / 255.0 - 0.1307) / 0.3081).reshape(1, 1, 28, 28).astype(np.float32)
    np.save(path, x)
    return path


def ort_reference(onnx_path, x_path):
    import numpy as np
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.load(x_path).astype(np.float32)})[0]


def check_outputs(a, models, runtimes, tmp):
    """Correctness on each model's fixed input: each runtime vs ORT (optimisations off).
    Also returns rough single-run latencies {(model, runtime): ms} (1 thread, batch 1) used to
    size the timed loops of cnnrt and tract, which take a run count."""
    import numpy as np
    out, est = {}, {}
    for name, m in models.items():
        x_path = m["check_input"]
        if not x_path:
            continue
        ref = ort_reference(m["onnx"], x_path)
        row = {"ort_max_abs": float(np.max(np.abs(ref)))}
        cfg = {"onnx": m["onnx"], "cnnrt": m["cnnrt"], "threads": 1, "batch": 1, "shape": m["shape1"]}
        for rt in runtimes:
            y_path = os.path.join(tmp, f"{name}.{rt}.out.npy")
            if rt == "cnnrt":
                if not m["cnnrt"]:
                    continue
                t0 = time.perf_counter()
                r = subprocess.run([a.cnnrt_bin, "run", m["cnnrt"], x_path, "-o", y_path, "--top", "1"],
                                   capture_output=True, text=True, env=env_for(1))
                est[(name, rt)] = (time.perf_counter() - t0) * 1e3  # open + plan + 1 run: an upper bound
                if r.returncode != 0:
                    row[rt] = "error: " + (r.stderr or r.stdout).strip()[-200:]
                    continue
            else:
                res = run_one(argparse.Namespace(**{**vars(a), "min_runs": 1, "min_secs": 0.0, "warmup_secs": 0.0}),
                              cfg, rt, 1.0, check_in=x_path, check_out=y_path)
                if "median_ms" not in res:
                    row[rt] = res.get("skip") or res.get("error")
                    continue
                est[(name, rt)] = res["median_ms"]
            if os.path.exists(y_path):
                row[rt] = rel_diff(np.load(y_path), ref)
        out[name] = row
    return out, est


def fmt_ms(v):
    if v is None:
        return "n/a"
    return f"{v:.3f}" if v < 1 else (f"{v:.2f}" if v < 100 else f"{v:.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=os.path.expanduser("~/.cache/cnnrt-models"),
                    help="folder with resnet18.onnx, mobilenet_v2.onnx, conv3x3_stress.onnx (+ .input.npy)")
    ap.add_argument("--only", default="", help="comma-separated subset of model names (lenet5,resnet18,...)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes run for every model")
    ap.add_argument("--extra-batch", type=int, default=8, help="also run --extra-batch-models at this batch (0: off)")
    ap.add_argument("--extra-batch-models", default="resnet18")
    ap.add_argument("--extra-batch-threads", type=int, nargs="+", default=[2])
    ap.add_argument("--runtimes", default="cnnrt,onnxruntime,openvino,tract")
    ap.add_argument("--repeat", type=int, default=3, help="round-robin sweeps over all configs")
    ap.add_argument("--min-runs", type=int, default=30)
    ap.add_argument("--max-runs", type=int, default=3000)
    ap.add_argument("--min-secs", type=float, default=2.0, help="length of each timed loop")
    ap.add_argument("--max-secs", type=float, default=30.0, help="cap on a timed loop (at least 3 runs)")
    ap.add_argument("--warmup-secs", type=float, default=0.5, help="python runtimes' warm-up")
    ap.add_argument("--timeout", type=int, default=600, help="per subprocess, seconds")
    ap.add_argument("--quiet-wait", type=float, default=10.0,
                    help="before each measurement wait up to this many s for other processes to use <= --quiet-busy %%")
    ap.add_argument("--quiet-busy", type=float, default=15.0)
    ap.add_argument("--cnnrt-bin", default=os.path.join(REPO, "target", "release", "cnnrt"))
    ap.add_argument("--tract-bin", default=os.path.join(REPO, "tools", "tract-peer", "target", "release", "tract-peer"))
    ap.add_argument("--convert-dir", default="", help="where .cnnrt files go (default: --models; lenet5 too)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release first")
    ap.add_argument("--no-check", action="store_true", help="skip the output check against ORT")
    ap.add_argument("--out", default="", help="raw results JSON (default /tmp/cnnrt-peers-<time>.json)")
    # worker mode
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--runtime", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--check-in", default="", help=argparse.SUPPRESS)
    ap.add_argument("--check-out", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        a.threads = a.threads[0]
        return worker_main(a)

    runtimes = []
    for r in a.runtimes.split(","):
        r = r.strip()
        if not r:
            continue
        if r not in ALIASES:
            sys.exit(f"unknown runtime {r!r} (cnnrt, onnxruntime|ort, openvino|ov, tract)")
        if ALIASES[r] not in runtimes:
            runtimes.append(ALIASES[r])
    peers = [r for r in PEERS_ORDER if r in runtimes]
    a.out = a.out or f"/tmp/cnnrt-peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    conv_dir = a.convert_dir or a.models
    os.makedirs(conv_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="cnnrt-peers-")

    if "cnnrt" in runtimes:
        build_cnnrt(a)
        if not os.path.exists(a.cnnrt_bin):
            sys.exit(f"{a.cnnrt_bin} missing")
    if "tract" in runtimes and not os.path.exists(a.tract_bin):
        print(f"# tract: {a.tract_bin} not built; tract columns will be n/a", flush=True)

    # ---- models
    wanted = ["lenet5"] + DIR_MODELS
    if a.only:
        keep = set(a.only.split(","))
        wanted = [w for w in wanted if w in keep]
    models = {}
    for name in wanted:
        onnx_path = os.path.join(REPO, "models", "lenet5.onnx") if name == "lenet5" else os.path.join(a.models, name + ".onnx")
        if not os.path.exists(onnx_path):
            print(f"# {name}: {onnx_path} missing (run scripts/export_torchvision.py) -- skipped", flush=True)
            continue
        m = {"onnx": onnx_path, "cnnrt": None}
        if "cnnrt" in runtimes:
            out = os.path.join(conv_dir, name + ".cnnrt")
            err = convert(a, onnx_path, out)
            if err:
                print(f"# {name}: cnnrt convert failed: {err}", flush=True)
            else:
                m["cnnrt"] = out
        fl1, in_name, shape1 = onnx_info(onnx_path, 1)
        m.update(flops1=fl1, shape1=shape1, input_name=in_name)
        if name == "lenet5":
            m["check_input"] = lenet5_input(os.path.join(tmp, "lenet5.input.npy"))
        else:
            p = os.path.join(a.models, name + ".input.npy")
            m["check_input"] = p if os.path.exists(p) else None
        models[name] = m
        print(f"# {name}: input {shape1}, {fl1 / 1e9:.4f} GFLOP at batch 1, {onnx_path}", flush=True)

    # ---- configs
    configs = []
    for name, m in models.items():
        batches = [(b, a.threads) for b in a.batch]
        if a.extra_batch and name in a.extra_batch_models.split(",") and a.extra_batch not in a.batch:
            batches.append((a.extra_batch, a.extra_batch_threads))
        for b, ths in batches:
            if b != 1:
                import onnx
                d0 = next(i for i in onnx.load(m["onnx"], load_external_data=False).graph.input).type.tensor_type.shape.dim[0]
                if d0.HasField("dim_value") and d0.dim_value != b:
                    print(f"# {name}: batch fixed to {d0.dim_value} in the ONNX, batch {b} skipped", flush=True)
                    continue
            for t in ths:
                configs.append(dict(model=name, threads=t, batch=b, onnx=m["onnx"], cnnrt=m["cnnrt"],
                                    shape=[b] + m["shape1"][1:], flops=m["flops1"] * b))

    t_start = time.time()
    checks, est0 = {}, {}
    if not a.no_check:
        print("# checking outputs against ORT (and estimating latencies)", flush=True)
        checks, est0 = check_outputs(a, models, runtimes, tmp)
    results = {(c["model"], c["threads"], c["batch"], r): [] for c in configs for r in runtimes}
    for rep in range(a.repeat):
        la = os.getloadavg()
        print(f"# sweep {rep + 1}/{a.repeat}  loadavg {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}  "
              f"elapsed {time.time() - t_start:.0f}s", flush=True)
        for c in configs:
            order = runtimes[rep % len(runtimes):] + runtimes[:rep % len(runtimes)]
            for r in order:
                key = (c["model"], c["threads"], c["batch"], r)
                prev = results[key]
                if prev and ("skip" in prev[0] or "error" in prev[0]):
                    continue
                if r == "cnnrt" and not c["cnnrt"]:
                    results[key].append({"skip": "convert failed"})
                    continue
                # estimate of the latency to size cnnrt's / tract's --iters
                # (own earlier repeat, else own check run, else a peer's, else a guess)
                def last_median(rr):
                    ok = [x["median_ms"] for x in results.get((c["model"], c["threads"], c["batch"], rr), [])
                          if "median_ms" in x]
                    return ok[-1] if ok else None

                est = last_median(r)
                if est is None and (c["model"], r) in est0:
                    est = est0[(c["model"], r)] * c["batch"]
                for rr in ("onnxruntime", "openvino"):
                    est = est if est is not None else last_median(rr)
                if est is None:
                    est = c["flops"] / 20e9 * 1e3 / max(1, c["threads"])  # guess: 20 GFLOP/s per thread
                busy, t_w = None, time.time()
                while a.quiet_wait > 0:
                    busy = machine_busy_pct()
                    if busy is None or busy <= a.quiet_busy or time.time() - t_w > a.quiet_wait:
                        break
                    time.sleep(1.0)
                res = run_one(a, c, r, est)
                res["pre_busy_pct"] = busy
                results[key].append(res)
                if "median_ms" in res:
                    print(f"  {c['model']:15s} t={c['threads']} b={c['batch']} {r:12s} median {res['median_ms']:9.3f} ms "
                          f"p90 {res.get('p90_ms', float('nan')):9.3f} runs {res.get('runs')} other {res.get('other_pct')}%",
                          flush=True)
                else:
                    print(f"  {c['model']:15s} t={c['threads']} b={c['batch']} {r:12s} "
                          f"{res.get('skip') or res.get('error')}", flush=True)

    # ---- summary
    summary = []
    for c in configs:
        row = dict(model=c["model"], threads=c["threads"], batch=c["batch"], gflop=c["flops"] / 1e9, ms={}, spread={},
                   other_max=0.0, notes={})
        for r in runtimes:
            rs = results[(c["model"], c["threads"], c["batch"], r)]
            ok = [x for x in rs if "median_ms" in x]
            if ok:
                meds = [x["median_ms"] for x in ok]
                row["ms"][r] = statistics.median(meds)
                row["spread"][r] = (max(meds) - min(meds)) / statistics.median(meds) * 100 if len(meds) > 1 else 0.0
                row["other_max"] = max(row["other_max"], max((x.get("other_pct") or 0.0) for x in ok))
            elif rs:
                row["notes"][r] = rs[0].get("skip") or rs[0].get("error")
        summary.append(row)

    date = time.strftime("%Y-%m-%d %H:%M %Z")
    print(f"\n## cnnrt vs peers ({date}; median ms over {a.repeat} repeat(s) of each fresh-process median; "
          f"ratio = cnnrt / peer, < 1 means cnnrt is faster)\n")
    hdr = ["model", "GFLOP", "threads", "batch"] + [f"{SHORT[r]} ms" for r in runtimes] + \
          [f"cnnrt/{SHORT[p]}" for p in peers] + (["cnnrt/best peer"] if peers else []) + ["cnnrt GFLOP/s", "other % max"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
    for row in summary:
        ms = row["ms"]
        cn = ms.get("cnnrt")
        cells = [row["model"], f"{row['gflop']:.3f}", str(row["threads"]), str(row["batch"])]
        cells += [fmt_ms(ms.get(r)) for r in runtimes]
        for p in peers:
            cells.append(f"{cn / ms[p]:.2f}" if cn and ms.get(p) else "n/a")
        if peers:
            best = min(((ms[p], p) for p in peers if ms.get(p)), default=None)
            cells.append(f"{cn / best[0]:.2f} ({SHORT[best[1]]})" if cn and best else "n/a")
            row["best_peer"] = best[1] if best else None
            row["ratio_best"] = cn / best[0] if cn and best else None
        cells.append(f"{row['gflop'] / (cn * 1e-3):.1f}" if cn else "n/a")
        cells.append(f"{row['other_max']:.0f}")
        print("| " + " | ".join(cells) + " |")
    notes = {(r, n) for row in summary for r, n in row["notes"].items()}
    for r, n in sorted(notes, key=str):
        print(f"\nn/a {r}: {n}")

    if checks:
        print("\n## Outputs vs ONNX Runtime (optimisations off) on each model's fixed input: "
              "max |y - y_ort| / max |y_ort|\n")
        rts = [r for r in runtimes if r != "onnxruntime"] + (["onnxruntime"] if "onnxruntime" in runtimes else [])
        print("| model | max abs ORT | " + " | ".join(SHORT[r] + (" (optimised)" if r == "onnxruntime" else "") for r in rts) + " |")
        print("|---|---:|" + "---:|" * len(rts))
        for name, row in checks.items():
            cells = []
            for r in rts:
                v = row.get(r)
                cells.append(f"{v:.1e}" if isinstance(v, float) else "n/a")
            print(f"| {name} | {row['ort_max_abs']:.3g} | " + " | ".join(cells) + " |")

    with open(a.out, "w") as f:
        json.dump({"date": date, "args": {k: v for k, v in vars(a).items() if k not in ("worker",)},
                   "loadavg_end": os.getloadavg(), "models": models, "configs": configs,
                   "results": [dict(model=k[0], threads=k[1], batch=k[2], runtime=k[3], runs=v) for k, v in results.items()],
                   "summary": summary, "checks": checks}, f, indent=1, default=str)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n# raw results: {a.out}; total wall {time.time() - t_start:.0f}s; loadavg now "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
