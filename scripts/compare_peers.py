#!/usr/bin/env python3
"""cnnrt against its peers, side by side, on this machine, in one run.

One invocation produces the evidence for the runtime issue's targets:
  latency, batch 1, 1 and 2 threads: cnnrt <= 0.8x the fastest of ONNX Runtime, OpenVINO and ncnn
  on ResNet-18, <= 0.9x on MobileNetV2, <= 0.6x on LeNet-5; ResNet-18 at batch 8 <= 0.8x;
  conv3x3_stress <= 1.0x ncnn;
  open + session creation of ResNet-18 <= 2 ms;
  peak RSS while running ResNet-18 below ONNX Runtime's on the same model.

Full run (about 10-15 min on the 2-core dev machine). Copy the binary first, so that a rebuild
by someone else cannot change what is measured mid-run; with --cnnrt-bin nothing is built:

    cp target/release/cnnrt /tmp/cnnrt-peer-bin
    ~/.cache/cnnrt-venv/bin/python scripts/compare_peers.py --cnnrt-bin /tmp/cnnrt-peer-bin \\
        --models ~/.cache/cnnrt-models --threads 1 2 --extra-batch 8 --repeat 3 --out /tmp/cnnrt-peers.json

Smoke test (seconds per config):  ... --only lenet5,conv3x3_stress --threads 1 --repeat 1 \\
        --min-secs 1 --min-runs 10 --extra-batch 0

Models: lenet5 (models/lenet5.onnx in this repo) and resnet18, mobilenet_v2, conv3x3_stress
from --models (written by scripts/export_torchvision.py, with <name>.input.npy), all at every
--batch (default 1) and --threads, plus --extra-batch-models (resnet18) at --extra-batch (8; the
exported ONNX has a dynamic batch axis; 0 turns it off) at --extra-batch-threads (default: the
--threads). --only picks a subset.

Conversions (done once, before anything is timed):
  cnnrt  `cnnrt convert` with the binary that is measured (--cnnrt-bin, else target/release/cnnrt,
         built first unless --no-build; either way copied into the run's temp folder first), always
         re-converted, into --convert-dir (default: the run's private temp folder, deleted at the end).
  ncnn   the `pnnx` executable of the pnnx python package: ONNX with its batch fixed to 1 ->
         <name>.ncnn.param/.bin, fp32 weights (fp16=0), inputshape = the batch-1 input shape.
         Cached in an ncnn/ folder next to the ONNX file (for the repo's lenet5: <--models>/ncnn/,
         to keep the git tree clean), valid while <name>.ncnn.json (ONNX size + mtime, input shape,
         pnnx version) matches; converted in a private temp folder and moved in place.

Every (model, threads, batch, runtime) runs in a fresh subprocess with its thread count pinned:
  cnnrt        `cnnrt bench MODEL.cnnrt --threads N --batch B --iters I --json` (1 first run +
               3 warm-up runs inside; I is sized so the timed loop lasts >= --min-secs)
  onnxruntime  CPUExecutionProvider, ORT_ENABLE_ALL, intra_op_num_threads=N, inter_op=1,
               ORT_SEQUENTIAL
  openvino     CPU, LATENCY hint, 1 stream, INFERENCE_NUM_THREADS=N, INFERENCE_PRECISION_HINT
               forced to f32 (it picks bf16 on this CPU by default), batch reshaped to static
  ncnn         python bindings, opt.num_threads=N, fp16/bf16/int8 storage, packing and arithmetic
               off (fp32 throughout), winograd + sgemm convolution and packing layout on,
               lightmode; ncnn has no batch dimension, so one inference at batch B is B
               single-image extractions (one extractor each)
  tract        tools/tract-peer (tract-onnx 0.23.9; --threads N uses tract's multithreaded
               matmul executor), skipped with a note if not built
and OMP/MKL/OPENBLAS/RAYON_NUM_THREADS=N in every environment. Python runtimes warm up for
--warmup-secs, then time single inferences until >= --min-runs AND >= --min-secs (but for at most
--max-secs, at least 3 runs; cnnrt and tract get an equivalent --iters count). The sweep is
repeated --repeat times round-robin (runtime order rotated each time) so that machine noise
is spread over all configs; tables show the median over repeats of each repeat's median.
Before each measurement the parent waits up to --quiet-wait s (5) for other processes to use
<= --quiet-busy % (15) of the machine. Each worker also records the CPU share used by *other*
processes while it ran ("other %"): the machine is shared, so numbers taken with other % high
are noisy (2-thread ones most).

Peak RSS: every worker is started through a small launcher (GNU time -f %M, else a minimal
python) that forks + execs it and reports the worker's own ru_maxrss: its peak resident set,
file-backed pages such as a mapped model included. (wait4() on a child of this script would
not do: the kernel carries the parent's peak over into the child, and this parent is large.)
The launcher's own size is a floor, printed. Python workers also record their VmHWM after
importing numpy and making the input, before the runtime is imported: the interpreter's share
("python base").

Open time: each sweep also runs --open-samples pairs of `cnnrt bench --iters 1 --threads 1 --json`
on --open-models (default resnet18, or every model of the run if resnet18 is not in it), one
with the weight checksum verified at open and one with --no-verify (structure still validated),
and reads open_ms + session_ms. Peers' model load times come from their batch-1 runs at the
lowest thread count: ORT InferenceSession(), OpenVINO read_model + reshape + compile_model +
create_infer_request, ncnn load_param + load_model, tract load + optimise + plan.

Correctness: each model's fixed input (<name>.input.npy; for lenet5, held-out digit 0
normalised) is run through ORT with optimisations off (the reference) and through cnnrt
(`cnnrt run ... -o`), optimised ORT, OpenVINO, ncnn and tract; reported as
max |y - y_ort| / max |y_ort|.

Tables (stdout, markdown):
  latency   <R> ms: median latency of one inference (B images) per runtime;
            cnnrt/<R>: cnnrt's latency over that peer's (< 1: cnnrt is faster);
            fastest peer, cnnrt/fastest: against the fastest of ORT, OpenVINO and ncnn (tract is
            shown but not counted); target: the issue's bound and what it is against
            (conv3x3_stress: ncnn alone; its met cell shows cnnrt/ncnn); met: yes / NO, '*' when not all of ORT, OpenVINO, ncnn were measured, '~' when the
            margin to the target is smaller than the spread over repeats;
            cnnrt GFLOP/s: FLOPs (2 x MACs of Conv/Gemm/MatMul) / cnnrt latency;
            spread %: max over runtimes of (max - min) / median of the per-repeat medians;
            other % max: the most CPU other processes used during any measurement of the row.
  peak RSS  per model at the lowest thread count, batch 1: each runtime process's peak RSS in MiB
            (median over repeats); python base: VmHWM of a python worker before importing its
            runtime; ORT - base: what ORT adds to the interpreter; cnnrt/ORT and
            cnnrt/(ORT - base); met (resnet18): cnnrt's peak < ORT's peak - python base (ORT is
            charged only for what it adds on top of python; cnnrt/ORT alone would favour cnnrt).
  open      ms to open (+ create a session for) the model: cnnrt open, session and open+session
            medians with and without checksum verification, target <= 2 ms on resnet18;
            the peers' load times for context.
  outputs   the correctness check above.
Raw results (every measurement, the summaries, the checks) go to --out as JSON (default
/tmp/cnnrt-peers-<time>.json).
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ALIASES = {"ort": "onnxruntime", "onnxruntime": "onnxruntime", "ov": "openvino", "openvino": "openvino",
           "ncnn": "ncnn", "tract": "tract", "cnnrt": "cnnrt"}
PEERS_ORDER = ["onnxruntime", "openvino", "ncnn", "tract"]
COUNTED = ["onnxruntime", "openvino", "ncnn"]  # "fastest peer" is the fastest of these (not tract)
SHORT = {"onnxruntime": "ORT", "openvino": "OpenVINO", "ncnn": "ncnn", "tract": "tract", "cnnrt": "cnnrt"}
DIR_MODELS = ["resnet18", "mobilenet_v2", "conv3x3_stress"]
# the latency targets: (model, batch) -> (max cnnrt / reference, reference = fastest of these)
TARGETS = {("resnet18", 1): (0.8, COUNTED), ("resnet18", 8): (0.8, COUNTED), ("mobilenet_v2", 1): (0.9, COUNTED),
           ("lenet5", 1): (0.6, COUNTED), ("conv3x3_stress", 1): (1.0, ["ncnn"])}
OPEN_TARGET_MS = {"resnet18": 2.0}  # open + session creation
RSS_TARGET_MODELS = ["resnet18"]  # peak RSS below ORT's
MIB = 1024.0  # ru_maxrss / VmHWM are KiB


# =========================================================================== helpers
def cpu_jiffies():
    """(busy, total) jiffies over all CPUs from /proc/stat (busy excludes idle + iowait)."""
    try:
        with open("/proc/stat") as f:
            p = [int(v) for v in f.readline().split()[1:9]]
        return sum(p) - p[3] - p[4], sum(p)
    except Exception:
        return 0, 0


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


def proc_status_kib(field, pid="self"):
    """A 'kB' field of /proc/<pid>/status (VmHWM, VmRSS), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except Exception:
        pass
    return None


# =========================================================================== worker side (python runtimes)
def warm_up(fn, warmup_secs):
    """Runs fn for warmup_secs (at least 3, at most about 2000 runs); returns the count."""
    t0 = time.perf_counter()
    w = 0
    while w < 3 or time.perf_counter() - t0 < warmup_secs:
        fn()
        w += 1
        if w > 2000:
            break
    return w


def time_loop(fn, min_runs, min_secs, warmup_secs, max_runs=3000, max_secs=30.0):
    """Warm up for warmup_secs (>= 3 runs), then time runs until >= min_runs and >= min_secs
    (or max_runs / max_secs)."""
    w = warm_up(fn, warmup_secs)
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


def turn_loop(fn, min_runs, min_secs, warmup_secs, max_runs=3000, max_secs=30.0):
    """Worker side of scripts/paired_peers.py: warm up like time_loop, then per line of stdin (a run
    count) time that many runs and print them as one line {"times_ms": [...]}; stop at EOF."""
    w = warm_up(fn, warmup_secs)
    turns = 0
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            t = time.perf_counter_ns()
            fn()
            times.append(round((time.perf_counter_ns() - t) * 1e-6, 4))
        print(json.dumps({"times_ms": times}), flush=True)
        turns += 1
    return dict(turns=turns, warmup_runs=w)


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
    info.update(a.timer(lambda: sess.run(None, feed), a.min_runs, a.min_secs, a.warmup_secs, a.max_runs, a.max_secs))
    return info


def w_openvino(a, x, xcheck):
    import openvino as ov
    core = ov.Core()
    cfg = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(a.threads),
           "INFERENCE_PRECISION_HINT": "f32"}
    t = time.perf_counter()
    model = core.read_model(a.model)
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape(list(x.shape))})  # static batch
    tc = time.perf_counter()
    cm = core.compile_model(model, "CPU", cfg)
    req = cm.create_infer_request()
    t1 = time.perf_counter()
    info = {"version": ov.__version__.split("-")[0], "open_ms": (t1 - t) * 1e3, "compile_ms": (t1 - tc) * 1e3,
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
    info.update(a.timer(req.infer, a.min_runs, a.min_secs, a.warmup_secs, a.max_runs, a.max_secs))
    return info


def w_ncnn(a, x, xcheck):
    """ncnn: a.model is the .ncnn.param, a.ncnn_bin the .ncnn.bin (converted by the parent).
    fp32 throughout; batch B = B single-image extractions."""
    import ncnn
    import numpy as np
    net = ncnn.Net()
    o = net.opt  # a reference into the Net: set before load_param
    o.num_threads = a.threads
    o.lightmode = True
    o.use_packing_layout = True
    o.use_winograd_convolution = True
    o.use_sgemm_convolution = True
    for flag in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed",
                 "use_int8_inference", "use_int8_storage", "use_int8_packed", "use_int8_arithmetic",
                 "use_vulkan_compute"):
        if hasattr(o, flag):
            setattr(o, flag, False)
    t = time.perf_counter()
    if net.load_param(a.model) != 0 or net.load_model(a.ncnn_bin) != 0:
        raise RuntimeError(f"ncnn could not load {a.model} / {a.ncnn_bin}")
    info = {"version": getattr(ncnn, "__version__", "?"), "open_ms": (time.perf_counter() - t) * 1e3}
    eff = net.opt  # what ncnn will actually use
    info["ncnn_opt"] = {k: getattr(eff, k) for k in ("num_threads", "use_packing_layout", "use_winograd_convolution",
                                                     "use_sgemm_convolution", "use_fp16_storage",
                                                     "use_fp16_arithmetic", "use_bf16_storage")
                        if hasattr(eff, k)}
    if eff.num_threads != a.threads or eff.use_fp16_storage or eff.use_fp16_arithmetic:
        raise RuntimeError(f"ncnn options did not take: {info['ncnn_opt']}")
    in_name, out_name = net.input_names()[0], net.output_names()[0]

    def infer(mats):
        outs = []
        for mat in mats:
            with net.create_extractor() as ex:
                ex.input(in_name, mat)
                ret, out = ex.extract(out_name)
                if ret != 0:
                    raise RuntimeError(f"ncnn extract returned {ret}")
                outs.append(out)
        return outs

    if xcheck is not None:
        ys = infer([ncnn.Mat(np.ascontiguousarray(xcheck[b])) for b in range(xcheck.shape[0])])
        np.save(a.check_out, np.stack([np.array(y) for y in ys]).astype(np.float32))
    mats = [ncnn.Mat(np.ascontiguousarray(x[b])) for b in range(x.shape[0])]
    if x.shape[0] > 1:
        info["note"] = f"{x.shape[0]} x batch-1 extractions"
    t = time.perf_counter()
    infer(mats)
    info["first_run_ms"] = (time.perf_counter() - t) * 1e3
    info.update(a.timer(lambda: infer(mats), a.min_runs, a.min_secs, a.warmup_secs, a.max_runs, a.max_secs))
    return info


WORKERS = {"onnxruntime": w_onnxruntime, "openvino": w_openvino, "ncnn": w_ncnn}


def worker_main(a):
    import warnings
    import numpy as np
    warnings.filterwarnings("ignore")
    shape = json.loads(a.shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    xcheck = np.load(a.check_in).astype(np.float32) if a.check_in else None
    a.timer = turn_loop if a.turns else time_loop
    base = proc_status_kib("VmHWM")  # the interpreter + numpy + input, before the runtime is imported
    try:
        info = WORKERS[a.runtime](a, x, xcheck)
    except ImportError as e:
        info = {"skip": f"not installed: {e}"}
    except Exception as e:  # report, don't crash the sweep
        info = {"error": f"{type(e).__name__}: {e}"[-500:]}
    info["py_base_kib"] = base
    info["vmhwm_kib"] = proc_status_kib("VmHWM")
    sys.stdout.flush()
    print("@@RESULT@@" + json.dumps(info))


# =========================================================================== parent side
def env_for(threads):
    env = dict(os.environ)
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[v] = str(threads)
    env.setdefault("OPENVINO_TELEMETRY", "0")
    return env


# Peak RSS of a worker: wait4()'s ru_maxrss of a process we fork ourselves is useless here, because
# the kernel carries the parent's peak over into the child (fork copies the counters; vfork/exec
# records the shared mm's peak), and this parent is large (onnx + ORT from the check). So every
# worker is started through a small launcher that forks + execs it and reports the worker's own
# ru_maxrss: GNU time (-f %M, ~1 MiB of its own) or, without it, a minimal python (~9 MiB).
# The launcher's own RSS is a floor below which nothing can be measured (reported).
RSS_LAUNCHER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, st, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(ru.ru_maxrss))
c = os.waitstatus_to_exitcode(st)
os._exit(c if c >= 0 else 128 - c)
"""


def rss_launcher():
    """(argv prefix taking the result file then the command, description)."""
    exe = shutil.which("time", path="/usr/bin:/bin")
    if exe:
        fd, f = tempfile.mkstemp()
        os.close(fd)
        try:
            r = subprocess.run([exe, "-f", "%M", "-o", f, "true"], capture_output=True, timeout=10)
            with open(f) as fh:
                if r.returncode == 0 and fh.read().strip().splitlines()[-1].isdigit():
                    return [exe, "-f", "%M", "-o"], "GNU time %M"
        except Exception:
            pass
        finally:
            os.remove(f)
    return [sys.executable, "-I", "-S", "-c", RSS_LAUNCHER], "a minimal python launcher's wait4 ru_maxrss"


def run_measured(cmd, env, timeout, launcher):
    """Run cmd in a fresh process (in its own session, started through `launcher`). Returns a dict:
    rc, out, err, other_pct (CPU % of the machine used by other processes meanwhile), peak_rss_kib
    (the worker's own peak RSS), cpu_s, timed_out."""
    j0 = cpu_jiffies()
    killed = []
    fd, rss_file = tempfile.mkstemp(suffix=".rss")
    os.close(fd)

    def kill(p):
        killed.append(True)
        try:
            os.killpg(p.pid, 9)
        except ProcessLookupError:
            pass

    try:
        with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
            p = subprocess.Popen(launcher + [rss_file] + cmd, stdout=fo, stderr=fe, env=env, start_new_session=True)
            timer = threading.Timer(timeout, kill, (p,))
            timer.start()
            try:
                _, status, ru = os.wait4(p.pid, 0)  # CPU: the launcher's and the worker's (reaped by it)
            except BaseException:
                kill(p)
                p.wait()
                raise
            finally:
                timer.cancel()
            p.returncode = os.waitstatus_to_exitcode(status)
            cpu = ru.ru_utime + ru.ru_stime
            j1 = cpu_jiffies()
            fo.seek(0)
            fe.seek(0)
            out = fo.read().decode(errors="replace")
            err = fe.read().decode(errors="replace")
        rss = None
        with open(rss_file) as f:
            lines = f.read().strip().splitlines()  # GNU time may put "Command exited with ..." first
            if lines and lines[-1].strip().isdigit():
                rss = int(lines[-1])
    finally:
        os.remove(rss_file)
    return dict(rc=p.returncode, out=out, err=err, other_pct=other_pct(j0, j1, cpu), peak_rss_kib=rss,
                cpu_s=round(cpu, 3), timed_out=bool(killed))


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
               "--iters", str(iters), "--json"] + (["--copy"] if a.cnnrt_copy else [])
    elif runtime == "tract":
        if not os.path.exists(a.tract_bin):
            return {"skip": f"{a.tract_bin} not built (cd tools/tract-peer && cargo build --release)"}
        cmd = [a.tract_bin, cfg["onnx"], "--threads", str(cfg["threads"]), "--batch", str(cfg["batch"]),
               "--iters", str(iters)]
        if check_in:
            cmd += ["--input", check_in, "--output", check_out]
    else:
        model = cfg["onnx"]
        if runtime == "ncnn":
            if not cfg.get("ncnn"):
                return {"skip": cfg.get("ncnn_error") or "no ncnn conversion"}
            model = cfg["ncnn"][0]
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--runtime", runtime, "--model", model,
               "--shape", json.dumps(cfg["shape"]), "--threads", str(cfg["threads"]),
               "--min-runs", str(a.min_runs), "--min-secs", str(a.min_secs), "--warmup-secs", str(a.warmup_secs),
               "--max-runs", str(a.max_runs), "--max-secs", str(a.max_secs)]
        if runtime == "ncnn":
            cmd += ["--ncnn-bin", cfg["ncnn"][1]]
        if check_in:
            cmd += ["--check-in", check_in, "--check-out", check_out]
    p = run_measured(cmd, env, a.timeout, a.launcher)
    meas = {"other_pct": p["other_pct"], "peak_rss_kib": p["peak_rss_kib"], "cpu_s": p["cpu_s"]}
    if p["timed_out"]:
        return {"error": f"timeout {a.timeout}s", **meas}
    if p["rc"] != 0:
        return {"error": f"rc={p['rc']}: " + (p["err"] or p["out"]).strip()[-400:], **meas}
    try:
        if runtime in ("cnnrt", "tract"):
            info = last_json(p["out"])
        else:
            line = next(ln for ln in reversed(p["out"].splitlines()) if ln.startswith("@@RESULT@@"))
            info = json.loads(line[len("@@RESULT@@"):])
    except Exception as e:
        return {"error": f"unparsable output ({e}): {p['out'].strip()[-300:]}", **meas}
    info.update(meas)
    if runtime == "cnnrt":
        info.setdefault("runs", iters)
    return info


def run_open(a, cnnrt_path, verify):
    """One fresh `cnnrt bench --iters 1` process: its open_ms and session_ms."""
    cmd = [a.cnnrt_bin, "bench", cnnrt_path, "--threads", "1", "--batch", "1", "--iters", "1", "--json"]
    if not verify:
        cmd.append("--no-verify")
    p = run_measured(cmd, env_for(1), a.timeout, a.launcher)
    if p["timed_out"] or p["rc"] != 0:
        return {"error": "timeout" if p["timed_out"] else f"rc={p['rc']}: " + (p["err"] or p["out"]).strip()[-300:]}
    try:
        j = last_json(p["out"])
    except Exception as e:
        return {"error": f"unparsable output ({e})"}
    return {"open_ms": j.get("open_ms"), "session_ms": j.get("session_ms"), "other_pct": p["other_pct"]}


def build_cnnrt(a):
    print("# cargo build --release --bin cnnrt", flush=True)
    r = subprocess.run(["cargo", "build", "--release", "--bin", "cnnrt"], cwd=REPO)
    if r.returncode != 0:
        sys.exit("cnnrt release build failed")


def convert(a, onnx_path, out_path, batch=1):
    """`cnnrt convert`, the layers' algorithms chosen for `batch` (`--batch`) and, unless
    --no-tune, for this machine's measured rates (`--tune`, as a service converting where it
    serves would); None or the error."""
    extra = ["--batch", str(batch)] if batch > 1 else []
    if not getattr(a, "no_tune", False):
        extra.append("--tune")
    r = subprocess.run([a.cnnrt_bin, "convert", onnx_path, "-o", out_path] + extra, capture_output=True, text=True)
    if r.returncode != 0:
        return (r.stderr or r.stdout).strip()[-300:]
    return None


def ncnn_cache_dir(a, onnx_path):
    """ncnn/ next to the ONNX file; for models inside this repo, <--models>/ncnn/ (keeps the git tree clean)."""
    d = os.path.dirname(os.path.abspath(onnx_path))
    if os.path.commonpath([d, REPO]) == REPO:
        d = os.path.abspath(a.models)
    return os.path.join(d, "ncnn")


def ncnn_convert(onnx_path, shape1, cache):
    """ONNX -> ncnn <stem>.ncnn.param/.bin in `cache` with the pnnx executable of the pnnx package:
    fp32 weights (fp16=0), batch fixed to 1 (ncnn has no batch dimension), inputshape=shape1.
    Reused while <stem>.ncnn.json matches (ONNX size + mtime, input shape, pnnx version).
    Converted in a private temp folder and moved in place (concurrent runs don't collide).
    Returns (param, bin, None) or (None, None, error)."""
    import importlib.metadata
    import importlib.util
    spec = importlib.util.find_spec("pnnx")  # not imported: `import pnnx` pulls in torch (seconds)
    if spec is None or not spec.submodule_search_locations:
        return None, None, "pnnx not installed (pip install pnnx)"
    exe = os.path.join(list(spec.submodule_search_locations)[0], "pnnx")
    stem = os.path.splitext(os.path.basename(onnx_path))[0]
    param, binf, meta_path = (os.path.join(cache, stem + s) for s in (".ncnn.param", ".ncnn.bin", ".ncnn.json"))
    st = os.stat(onnx_path)
    meta = {"onnx": os.path.abspath(onnx_path), "onnx_size": st.st_size, "onnx_mtime": st.st_mtime,
            "inputshape": [1] + list(shape1[1:]), "fp16": 0, "pnnx": importlib.metadata.version("pnnx")}
    try:
        with open(meta_path) as f:
            if json.load(f) == meta and os.path.exists(param) and os.path.exists(binf):
                return param, binf, None
    except Exception:
        pass
    if not os.path.exists(exe):
        return None, None, f"{exe} missing"
    import onnx
    os.makedirs(cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{stem}-pnnx-", dir=cache)
    try:
        m = onnx.load(onnx_path)
        inits = {i.name for i in m.graph.initializer}
        ios = [next(i for i in m.graph.input if i.name not in inits)] + list(m.graph.output)
        for vi in ios:
            dims = vi.type.tensor_type.shape.dim
            if len(dims):
                dims[0].dim_value = 1  # clears a dim_param
        del m.graph.value_info[:]
        src = os.path.join(work, stem + ".onnx")
        onnx.save(m, src)
        cmd = [exe, src, "inputshape=[%s]" % ",".join(map(str, meta["inputshape"])), "fp16=0",
               f"ncnnparam={work}/out.ncnn.param", f"ncnnbin={work}/out.ncnn.bin",
               f"pnnxparam={work}/out.pnnx.param", f"pnnxbin={work}/out.pnnx.bin", f"pnnxpy={work}/out_pnnx.py",
               f"pnnxonnx={work}/out.pnnx.onnx", f"ncnnpy={work}/out_ncnn.py"]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=900)
        if p.returncode != 0 or not os.path.exists(f"{work}/out.ncnn.param"):
            return None, None, "pnnx failed: " + (p.stderr or p.stdout).strip()[-300:]
        os.replace(f"{work}/out.ncnn.bin", binf)
        os.replace(f"{work}/out.ncnn.param", param)
        with open(f"{work}/meta.json", "w") as f:
            json.dump(meta, f)
        os.replace(f"{work}/meta.json", meta_path)
        return param, binf, None
    except Exception as e:
        return None, None, f"ncnn conversion failed: {type(e).__name__}: {e}"[-300:]
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
        cfg = {"onnx": m["onnx"], "cnnrt": m["cnnrt"], "ncnn": m["ncnn"], "ncnn_error": m.get("ncnn_error"),
               "threads": 1, "batch": 1, "shape": m["shape1"]}
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


def fmt_mib(kib):
    return "n/a" if kib is None else f"{kib / MIB:.1f}"


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def quiet_wait(a):
    busy, t_w = None, time.time()
    while a.quiet_wait > 0:
        busy = machine_busy_pct()
        if busy is None or busy <= a.quiet_busy or time.time() - t_w > a.quiet_wait:
            break
        time.sleep(1.0)
    return busy


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=os.path.expanduser("~/.cache/cnnrt-models"),
                    help="folder with resnet18.onnx, mobilenet_v2.onnx, conv3x3_stress.onnx (+ .input.npy)")
    ap.add_argument("--only", default="", help="comma-separated subset of model names (lenet5,resnet18,...)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes run for every model")
    ap.add_argument("--extra-batch", type=int, default=8, help="also run --extra-batch-models at this batch (0: off)")
    ap.add_argument("--extra-batch-models", default="resnet18")
    ap.add_argument("--extra-batch-threads", type=int, nargs="+", default=None, help="default: --threads")
    ap.add_argument("--runtimes", default="cnnrt,onnxruntime,openvino,ncnn,tract")
    ap.add_argument("--repeat", type=int, default=3, help="round-robin sweeps over all configs")
    ap.add_argument("--min-runs", type=int, default=30)
    ap.add_argument("--max-runs", type=int, default=3000)
    ap.add_argument("--min-secs", type=float, default=2.0, help="length of each timed loop")
    ap.add_argument("--max-secs", type=float, default=10.0,
                    help="cap on a timed loop (at least 3 runs); bounds the slow ResNet-18 batch-8 configs")
    ap.add_argument("--warmup-secs", type=float, default=0.5, help="python runtimes' warm-up")
    ap.add_argument("--timeout", type=int, default=600, help="per subprocess, seconds")
    ap.add_argument("--quiet-wait", type=float, default=5.0,
                    help="before each measurement wait up to this many s for other processes to use <= --quiet-busy %%")
    ap.add_argument("--quiet-busy", type=float, default=15.0)
    ap.add_argument("--open-models", default="",
                    help="models whose cnnrt open time is sampled (default: resnet18, else all of the run; 'none': off)")
    ap.add_argument("--open-samples", type=int, default=3,
                    help="per sweep and model: this many fresh processes with and as many without --no-verify")
    ap.add_argument("--cnnrt-bin", default="",
                    help="cnnrt binary to measure (then nothing is built); default target/release/cnnrt, built first")
    ap.add_argument("--cnnrt-copy", action="store_true",
                    help="time cnnrt with `bench --copy` (the model read into private memory, on huge pages "
                         "where the OS grants them) instead of mapped; open times are still measured mapped")
    ap.add_argument("--tract-bin", default=os.path.join(REPO, "tools", "tract-peer", "target", "release", "tract-peer"))
    ap.add_argument("--convert-dir", default="", help="where .cnnrt files go (default: the run's temp folder)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release first")
    ap.add_argument("--no-tune", action="store_true",
                    help="convert with the cost model's default rates, not this machine's (cnnrt convert --tune)")
    ap.add_argument("--no-check", action="store_true", help="skip the output check against ORT")
    ap.add_argument("--out", default="", help="raw results JSON (default /tmp/cnnrt-peers-<time>.json)")
    # worker mode
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--runtime", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--ncnn-bin", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--check-in", default="", help=argparse.SUPPRESS)
    ap.add_argument("--check-out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--turns", action="store_true", help=argparse.SUPPRESS)
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
            sys.exit(f"unknown runtime {r!r} (cnnrt, onnxruntime|ort, openvino|ov, ncnn, tract)")
        if ALIASES[r] not in runtimes:
            runtimes.append(ALIASES[r])
    peers = [r for r in PEERS_ORDER if r in runtimes]
    counted = [r for r in COUNTED if r in runtimes]
    a.out = a.out or f"/tmp/cnnrt-peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    a.models = os.path.abspath(os.path.expanduser(a.models))
    extra_threads = a.extra_batch_threads or a.threads
    a.launcher, a.rss_method = rss_launcher()
    a.rss_floor_kib = run_measured(["true"], dict(os.environ), 30, a.launcher)["peak_rss_kib"]
    tmp = tempfile.mkdtemp(prefix="cnnrt-peers-")
    conv_dir = a.convert_dir or os.path.join(tmp, "convert")
    os.makedirs(conv_dir, exist_ok=True)
    t_start = time.time()

    if "cnnrt" in runtimes:
        if not a.cnnrt_bin:
            a.cnnrt_bin = os.path.join(REPO, "target", "release", "cnnrt")
            if not a.no_build:
                build_cnnrt(a)
        if not os.path.exists(a.cnnrt_bin):
            sys.exit(f"{a.cnnrt_bin} missing")
        # measure a private copy: a rebuild during the run must not change the binary under test
        st = os.stat(a.cnnrt_bin)
        a.cnnrt_bin_src = f"{os.path.abspath(a.cnnrt_bin)} ({st.st_size} bytes, mtime {time.ctime(st.st_mtime)})"
        a.cnnrt_bin = shutil.copy2(a.cnnrt_bin, os.path.join(tmp, "cnnrt"))
        print(f"# cnnrt: {a.cnnrt_bin_src}", flush=True)
    if "tract" in runtimes and not os.path.exists(a.tract_bin):
        print(f"# tract: {a.tract_bin} not built; tract columns will be n/a", flush=True)

    # ---- models and conversions
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
        fl1, in_name, shape1 = onnx_info(onnx_path, 1)
        m = {"onnx": onnx_path, "cnnrt": None, "ncnn": None, "flops1": fl1, "shape1": shape1, "input_name": in_name}
        if "cnnrt" in runtimes:
            out = os.path.join(conv_dir, name + ".cnnrt")
            t = time.perf_counter()
            err = convert(a, onnx_path, out)
            if err:
                print(f"# {name}: cnnrt convert failed: {err}", flush=True)
            else:
                m["cnnrt"] = out
                print(f"# {name}: cnnrt convert {time.perf_counter() - t:.1f}s -> {out}", flush=True)
        if "ncnn" in runtimes:
            t = time.perf_counter()
            param, binf, err = ncnn_convert(onnx_path, shape1, ncnn_cache_dir(a, onnx_path))
            if err:
                m["ncnn_error"] = err
                print(f"# {name}: ncnn conversion: {err}", flush=True)
            else:
                m["ncnn"] = (param, binf)
                print(f"# {name}: ncnn {param} ({time.perf_counter() - t:.1f}s)", flush=True)
        if name == "lenet5":
            m["check_input"] = lenet5_input(os.path.join(tmp, "lenet5.input.npy"))
        else:
            p = os.path.join(a.models, name + ".input.npy")
            m["check_input"] = p if os.path.exists(p) else None
        models[name] = m
        print(f"# {name}: input {shape1}, {fl1 / 1e9:.4f} GFLOP at batch 1, {onnx_path}", flush=True)

    if a.open_models == "none" or "cnnrt" not in runtimes:
        open_models = []
    elif a.open_models:
        open_models = [n for n in a.open_models.split(",") if n in models]
    else:
        open_models = ["resnet18"] if "resnet18" in models else list(models)
    open_models = [n for n in open_models if models[n]["cnnrt"]]

    # ---- configs
    configs = []
    for name, m in models.items():
        batches = [(b, a.threads) for b in a.batch]
        if a.extra_batch and name in a.extra_batch_models.split(",") and a.extra_batch not in a.batch:
            batches.append((a.extra_batch, extra_threads))
        for b, ths in batches:
            if b != 1:
                import onnx
                d0 = next(i for i in onnx.load(m["onnx"], load_external_data=False).graph.input).type.tensor_type.shape.dim[0]
                if d0.HasField("dim_value") and d0.dim_value != b:
                    print(f"# {name}: batch fixed to {d0.dim_value} in the ONNX, batch {b} skipped", flush=True)
                    continue
            cnnrt_file = m["cnnrt"]
            if b != 1 and cnnrt_file:
                # The file converted for this batch (`cnnrt convert --batch`), as a service
                # that runs batches would.
                cnnrt_file = os.path.join(conv_dir, f"{name}.b{b}.cnnrt")
                err = convert(a, m["onnx"], cnnrt_file, b)
                if err:
                    print(f"# {name}: cnnrt convert --batch {b} failed: {err}", flush=True)
                    cnnrt_file = None
            for t in ths:
                configs.append(dict(model=name, threads=t, batch=b, onnx=m["onnx"], cnnrt=cnnrt_file, ncnn=m["ncnn"],
                                    ncnn_error=m.get("ncnn_error"), shape=[b] + m["shape1"][1:],
                                    flops=m["flops1"] * b))

    checks, est0 = {}, {}
    if not a.no_check:
        print("# checking outputs against ORT (and estimating latencies)", flush=True)
        checks, est0 = check_outputs(a, models, runtimes, tmp)
    results = {(c["model"], c["threads"], c["batch"], r): [] for c in configs for r in runtimes}
    opens = {(n, v): [] for n in open_models for v in ("verify", "no-verify")}
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
                for rr in ("onnxruntime", "openvino", "ncnn"):
                    est = est if est is not None else last_median(rr)
                if est is None:
                    est = c["flops"] / 20e9 * 1e3 / max(1, c["threads"])  # guess: 20 GFLOP/s per thread
                skipped = (r == "tract" and not os.path.exists(a.tract_bin)) or (r == "ncnn" and not c["ncnn"])
                busy = None if skipped else quiet_wait(a)
                res = run_one(a, c, r, est)
                res["pre_busy_pct"] = busy
                results[key].append(res)
                if "median_ms" in res:
                    print(f"  {c['model']:15s} t={c['threads']} b={c['batch']} {r:12s} median {res['median_ms']:9.3f} ms "
                          f"p90 {res.get('p90_ms', float('nan')):9.3f} runs {res.get('runs')} "
                          f"rss {fmt_mib(res.get('peak_rss_kib'))} MiB other {res.get('other_pct')}%", flush=True)
                else:
                    print(f"  {c['model']:15s} t={c['threads']} b={c['batch']} {r:12s} "
                          f"{res.get('skip') or res.get('error')}", flush=True)
        for n in open_models:
            quiet_wait(a)
            for s in range(a.open_samples):
                for v in (("verify", "no-verify") if s % 2 == 0 else ("no-verify", "verify")):
                    opens[(n, v)].append(run_open(a, models[n]["cnnrt"], v == "verify"))
            for v in ("verify", "no-verify"):
                ok = [x for x in opens[(n, v)][-a.open_samples:] if "open_ms" in x]
                errs = [x["error"] for x in opens[(n, v)][-a.open_samples:] if "error" in x]
                if ok:
                    print(f"  {n:15s} open {v:9s} open+session median "
                          f"{med([x['open_ms'] + x['session_ms'] for x in ok]):.3f} ms over {len(ok)}", flush=True)
                if errs:
                    print(f"  {n:15s} open {v:9s} {errs[0]}", flush=True)

    # ---- summary
    summary = []
    for c in configs:
        row = dict(model=c["model"], threads=c["threads"], batch=c["batch"], gflop=c["flops"] / 1e9, ms={}, spread={},
                   rss_kib={}, py_base_kib={}, open_ms={}, n={}, other_max=0.0, notes={})
        for r in runtimes:
            rs = results[(c["model"], c["threads"], c["batch"], r)]
            ok = [x for x in rs if "median_ms" in x]
            if ok:
                meds = [x["median_ms"] for x in ok]
                row["ms"][r] = statistics.median(meds)
                row["spread"][r] = (max(meds) - min(meds)) / statistics.median(meds) * 100 if len(meds) > 1 else 0.0
                row["other_max"] = max(row["other_max"], max((x.get("other_pct") or 0.0) for x in ok))
                row["rss_kib"][r] = med([x.get("peak_rss_kib") for x in ok])
                row["py_base_kib"][r] = med([x.get("py_base_kib") for x in ok])
                row["open_ms"][r] = med([x.get("open_ms") for x in ok])
                row["n"][r] = len(ok)
            elif rs:
                row["notes"][r] = rs[0].get("skip") or rs[0].get("error")
        ms = row["ms"]
        cn = ms.get("cnnrt")
        best = min(((ms[p], p) for p in counted if ms.get(p)), default=None)
        row["fastest_peer"] = best[1] if best else None
        row["ratio_fastest"] = cn / best[0] if cn and best else None
        tg = TARGETS.get((c["model"], c["batch"]))
        if tg:
            limit, refs = tg
            ref = min(((ms[p], p) for p in refs if p in runtimes and ms.get(p)), default=None)
            ratio = cn / ref[0] if cn and ref else None
            incomplete = any(p not in ms for p in refs)
            noise = max([row["spread"].get("cnnrt", 0.0)] + ([row["spread"].get(ref[1], 0.0)] if ref else []))
            row["target"] = dict(limit=limit, against=refs, ref_peer=ref[1] if ref else None, ratio=ratio,
                                 met=None if ratio is None else ratio <= limit, incomplete=incomplete,
                                 within_noise=ratio is not None and abs(ratio / limit - 1) * 100 < noise)
        summary.append(row)

    date = time.strftime("%Y-%m-%d %H:%M %Z")
    print(f"\n## cnnrt vs peers: latency ({date}; median ms over {a.repeat} repeat(s) of each fresh-process median; "
          f"ratio = cnnrt / peer, < 1 means cnnrt is faster; fastest = fastest of "
          f"{', '.join(SHORT[p] for p in COUNTED)}, tract not counted)\n")
    hdr = ["model", "GFLOP", "threads", "batch"] + [f"{SHORT[r]} ms" for r in runtimes] + \
          [f"cnnrt/{SHORT[p]}" for p in peers] + \
          (["fastest peer", "cnnrt/fastest", "target", "met"] if "cnnrt" in runtimes and counted else []) + \
          ["cnnrt GFLOP/s", "spread %", "other % max"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
    n_met = n_tg = 0
    for row in summary:
        ms = row["ms"]
        cn = ms.get("cnnrt")
        cells = [row["model"], f"{row['gflop']:.3f}", str(row["threads"]), str(row["batch"])]
        cells += [fmt_ms(ms.get(r)) for r in runtimes]
        for p in peers:
            cells.append(f"{cn / ms[p]:.2f}" if cn and ms.get(p) else "n/a")
        if "cnnrt" in runtimes and counted:
            cells.append(SHORT[row["fastest_peer"]] if row["fastest_peer"] else "n/a")
            cells.append(f"{row['ratio_fastest']:.2f}" if row["ratio_fastest"] else "n/a")
            tg = row.get("target")
            if tg:
                against = "fastest" if tg["against"] == COUNTED else " / ".join(SHORT[p] for p in tg["against"])
                cells.append(f"<= {tg['limit']:.1f}x {against}")
                if tg["met"] is None:
                    cells.append("n/a")
                else:
                    n_tg += 1
                    n_met += tg["met"]
                    mark = ("yes" if tg["met"] else "**NO**") + (f" ({tg['ratio']:.2f})" if tg["against"] != COUNTED else "")
                    cells.append(mark + ("*" if tg["incomplete"] else "") + ("~" if tg["within_noise"] else ""))
            else:
                cells += ["-", "-"]
        cells.append(f"{row['gflop'] / (cn * 1e-3):.1f}" if cn else "n/a")
        cells.append(f"{max(row['spread'].values()):.0f}" if row["spread"] else "n/a")
        cells.append(f"{row['other_max']:.0f}")
        print("| " + " | ".join(cells) + " |")
    if n_tg:
        print(f"\nlatency targets met: {n_met} of {n_tg} measured rows. *: not all of "
              f"{', '.join(SHORT[p] for p in COUNTED)} measured; ~: margin to the target below the spread "
              f"over repeats (noise could flip it).")
    notes = {(r, n) for row in summary for r, n in row["notes"].items()}
    for r, n in sorted(notes, key=str):
        print(f"\nn/a {r}: {n}")

    # peak RSS: each model at the lowest thread count, batch 1
    t_rss = min(a.threads)
    rss_rows = [row for row in summary if row["threads"] == t_rss and row["batch"] == 1 and row["rss_kib"]]
    rss_summary = []
    if rss_rows:
        print(f"\n## Peak RSS (MiB, median over repeats) of each runtime's process, {t_rss} thread(s), batch 1, "
              f"via {a.rss_method} (floor {fmt_mib(a.rss_floor_kib)} MiB); python base = VmHWM of a python worker "
              f"before importing its runtime\n")
        hdr = ["model"] + [SHORT[r] for r in runtimes] + ["python base", "ORT - base", "cnnrt/ORT", "cnnrt/(ORT - base)",
                                                           "target", "met"]
        print("| " + " | ".join(hdr) + " |")
        print("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
        for row in rss_rows:
            rk = row["rss_kib"]
            base = med(list(row["py_base_kib"].values()))
            cn, ort_ = rk.get("cnnrt"), rk.get("onnxruntime")
            ort_net = ort_ - base if ort_ and base else None
            cells = [row["model"]] + [fmt_mib(rk.get(r)) for r in runtimes]
            cells += [fmt_mib(base), fmt_mib(ort_net), f"{cn / ort_:.2f}" if cn and ort_ else "n/a",
                      f"{cn / ort_net:.2f}" if cn and ort_net else "n/a"]
            met = None
            if row["model"] in RSS_TARGET_MODELS:
                met = (cn < ort_net) if cn and ort_net else None
                cells += ["< ORT - base", "n/a" if met is None else ("yes" if met else "**NO**")]
            else:
                cells += ["-", "-"]
            rss_summary.append(dict(model=row["model"], threads=t_rss, rss_kib=rk, python_base_kib=base,
                                    ort_minus_base_kib=ort_net, met=met))
            print("| " + " | ".join(cells) + " |")

    # open time
    open_summary = []
    if open_models:
        print(f"\n## Open time (ms): cnnrt `bench --iters 1 --threads 1`, median over {a.repeat} x {a.open_samples} "
              f"fresh processes each; peers' model load at {t_rss} thread(s), batch 1, median over repeats (context)\n")
        print("| model | what | open ms | session ms | open + session ms | min ms | samples | target | met |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for n in open_models:
            tgt = OPEN_TARGET_MS.get(n)
            for v in ("verify", "no-verify"):
                ok = [x for x in opens[(n, v)] if "open_ms" in x]
                tot = [x["open_ms"] + x["session_ms"] for x in ok]
                mt = med(tot)
                met = None if (tgt is None or mt is None) else mt <= tgt
                what = "cnnrt, weight checksum verified" if v == "verify" else "cnnrt --no-verify"
                open_summary.append(dict(model=n, what=v, open_ms=med([x["open_ms"] for x in ok]),
                                         session_ms=med([x["session_ms"] for x in ok]), total_ms=mt,
                                         samples=len(ok), target_ms=tgt, met=met))
                print(f"| {n} | {what} | {fmt_ms(med([x['open_ms'] for x in ok]))} | "
                      f"{fmt_ms(med([x['session_ms'] for x in ok]))} | {fmt_ms(mt)} | "
                      f"{fmt_ms(min(tot) if tot else None)} | {len(ok)} | "
                      f"{f'<= {tgt:g}' if tgt else '-'} | {'-' if met is None else ('yes' if met else '**NO**')} |")
            row = next((r for r in summary if r["model"] == n and r["threads"] == t_rss and r["batch"] == 1), None)
            what = {"onnxruntime": "ORT InferenceSession()", "openvino": "OpenVINO read_model + compile_model",
                    "ncnn": "ncnn load_param + load_model", "tract": "tract load + optimise + plan"}
            for p in peers:
                v = row["open_ms"].get(p) if row else None
                if v is not None:
                    open_summary.append(dict(model=n, what=p, total_ms=v))
                    print(f"| {n} | {what[p]} | | | {fmt_ms(v)} | | {row['n'][p]} | - | - |")

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
                   "open": [dict(model=k[0], mode=k[1], samples=v) for k, v in opens.items()],
                   "summary": summary, "rss": rss_summary, "open_summary": open_summary, "checks": checks},
                  f, indent=1, default=str)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n# raw results: {a.out}; total wall {time.time() - t_start:.0f}s; loadavg now "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
