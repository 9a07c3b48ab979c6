#!/usr/bin/env python3
"""cnnrt against its peers, paired in time: the runtimes take turns on the same machine.

Why: on this project's shared VMs the speed of a core changes by up to 1.6x every few seconds,
so two fresh processes measured a minute apart (scripts/compare_peers.py's round-robin sweeps)
can differ by 2x from one repeat to the next, and a ratio of their medians cannot settle a target
of 0.8x or 0.9x. Here, for each (model, threads, batch), cnnrt (`cnnrt bench --turns`) and each
peer (a compare_peers.py worker with --turns) are loaded, warmed up and kept alive side by side;
the script then asks each in turn for a short burst of runs (--burst-secs), round after round
(--rounds, the order rotated each round). Each round gives one median per runtime, taken within
about a second of the others, and the ratio cnnrt / peer of that round; the table shows the median
of those per-round ratios and their quartiles. Only one process runs at a time (the others wait on
their standard input, their threads parked); --gap-secs between bursts lets a previous runtime's
spinning workers go idle first.

Run (about 6 min for the default set, after the conversions; cnnrt's binary is copied first):

    cp target/release/cnnrt /tmp/cnnrt-paired
    ~/.cache/cnnrt-venv/bin/python scripts/paired_peers.py --cnnrt-bin /tmp/cnnrt-paired \\
        --models ~/.cache/cnnrt-models --threads 1 2 --extra-batch 8

cnnrt's files are converted with `--tune` (the algorithms chosen for this machine's measured GEMM
and memory rates, as a service converting where it serves would; `--no-tune` for the defaults).
Peers run exactly as in compare_peers.py (same options, fp32 everywhere, thread counts pinned, see
its docstring); correctness, peak RSS and open times are compare_peers.py's job, not this one's.
Targets (compare_peers.TARGETS): met = "yes" when the upper quartile of the per-round ratios to the
fastest counted peer is within the bound, "no" when the lower quartile is above it, "~" otherwise.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare_peers as cp  # noqa: E402  (the peers' workers, conversions, targets)

TURN_PREFIX = '{"times_ms"'


class Turner:
    """One runtime's process, loaded and warmed up, timing bursts on request."""

    def __init__(self, name, cmd, env, log):
        self.name = name
        self.log = log
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                  text=True, bufsize=1)

    def burst(self, n):
        """Times of n runs (ms)."""
        self.p.stdin.write(f"{n}\n")
        self.p.stdin.flush()
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} exited (rc {self.p.poll()}); see {self.log.name}")
            if line.startswith(TURN_PREFIX):
                return json.loads(line)["times_ms"]

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=60)
        except Exception:
            self.p.kill()


def quartiles(v):
    if len(v) == 1:
        return v[0], v[0], v[0]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], statistics.median(v), q[2]


def run_config(a, cfg, runtimes, tmp):
    env = cp.env_for(cfg["threads"])
    turners = {}
    log = open(os.path.join(tmp, f"{cfg['model']}-t{cfg['threads']}-b{cfg['batch']}.log"), "w")
    try:
        for r in runtimes:
            if r == "cnnrt":
                cmd = [a.cnnrt_bin, "bench", cfg["cnnrt"], "--threads", str(cfg["threads"]), "--batch",
                       str(cfg["batch"]), "--turns", "--no-verify"]
            else:
                model = cfg["onnx"]
                extra = []
                if r == "ncnn":
                    if not cfg.get("ncnn"):
                        continue
                    model, extra = cfg["ncnn"][0], ["--ncnn-bin", cfg["ncnn"][1]]
                cmd = [sys.executable, cp.__file__, "--worker", "--turns", "--runtime", r, "--model", model,
                       "--shape", json.dumps(cfg["shape"]), "--threads", str(cfg["threads"]),
                       "--warmup-secs", str(a.warmup_secs)] + extra
            turners[r] = Turner(r, cmd, env, log)
        # A first burst of 2 runs each: the process has loaded and warmed up; sizes the bursts.
        sizes = {}
        for r, t in turners.items():
            est = statistics.median(t.burst(2))
            sizes[r] = int(min(a.max_burst_runs, max(3, a.burst_secs * 1e3 / max(est, 1e-3))))
        rounds = {r: [] for r in turners}
        order = list(turners)
        for i in range(a.rounds):
            k = i % len(order)
            for r in order[k:] + order[:k]:
                time.sleep(a.gap_secs)
                rounds[r].append(statistics.median(turners[r].burst(sizes[r])))
        return rounds, sizes
    finally:
        for t in turners.values():
            t.close()
        log.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cnnrt-bin", default=os.path.join(cp.REPO, "target", "release", "cnnrt"))
    ap.add_argument("--models", default=os.path.expanduser("~/.cache/cnnrt-models"),
                    help="folder with resnet18.onnx, mobilenet_v2.onnx, conv3x3_stress.onnx")
    ap.add_argument("--only", default="", help="comma-separated subset of lenet5,resnet18,mobilenet_v2,conv3x3_stress")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--extra-batch", type=int, default=8, help="also run resnet18 at this batch (0: off)")
    ap.add_argument("--runtimes", default="cnnrt,onnxruntime,openvino,ncnn")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--burst-secs", type=float, default=0.25, help="length of one runtime's burst")
    ap.add_argument("--max-burst-runs", type=int, default=400)
    ap.add_argument("--gap-secs", type=float, default=0.05, help="pause before each burst")
    ap.add_argument("--warmup-secs", type=float, default=0.5, help="python runtimes' warm-up")
    ap.add_argument("--out", default="", help="JSON results (default /tmp/cnnrt-paired-<time>.json)")
    ap.add_argument("--no-tune", action="store_true",
                    help="convert with the cost model's default rates, not this machine's (cnnrt convert --tune)")
    a = ap.parse_args()
    runtimes = [cp.ALIASES[r.strip()] for r in a.runtimes.split(",") if r.strip()]
    if "cnnrt" not in runtimes:
        sys.exit("--runtimes must include cnnrt")
    runtimes = ["cnnrt"] + [r for r in cp.COUNTED if r in runtimes]
    a.models = os.path.abspath(os.path.expanduser(a.models))
    a.out = a.out or f"/tmp/cnnrt-paired-{time.strftime('%Y%m%d-%H%M%S')}.json"
    tmp = tempfile.mkdtemp(prefix="cnnrt-paired-")
    st = os.stat(a.cnnrt_bin)
    src = f"{os.path.abspath(a.cnnrt_bin)} ({st.st_size} bytes, mtime {time.ctime(st.st_mtime)})"
    a.cnnrt_bin = shutil.copy2(a.cnnrt_bin, os.path.join(tmp, "cnnrt"))
    print(f"# cnnrt: {src}; logs in {tmp}", flush=True)

    names = ["lenet5"] + cp.DIR_MODELS
    if a.only:
        names = [n for n in names if n in a.only.split(",")]
    configs = []
    for name in names:
        onnx_path = (os.path.join(cp.REPO, "models", "lenet5.onnx") if name == "lenet5"
                     else os.path.join(a.models, name + ".onnx"))
        if not os.path.exists(onnx_path):
            print(f"# {name}: {onnx_path} missing (scripts/export_torchvision.py) -- skipped", flush=True)
            continue
        flops1, _, shape1 = cp.onnx_info(onnx_path, 1)
        out = os.path.join(tmp, name + ".cnnrt")
        err = cp.convert(a, onnx_path, out)
        if err:
            print(f"# {name}: cnnrt convert failed: {err}", flush=True)
            continue
        ncnn = None
        if "ncnn" in runtimes:
            param, binf, err = cp.ncnn_convert(onnx_path, shape1, cp.ncnn_cache_dir(a, onnx_path))
            ncnn = (param, binf) if not err else None
            if err:
                print(f"# {name}: ncnn conversion: {err}", flush=True)
        batches = [1] + ([a.extra_batch] if a.extra_batch > 1 and name == "resnet18" else [])
        for b in batches:
            cnnrt_file = out
            if b != 1:
                # The file converted for this batch (`cnnrt convert --batch`), as a service
                # that runs batches would.
                cnnrt_file = os.path.join(tmp, f"{name}.b{b}.cnnrt")
                err = cp.convert(a, onnx_path, cnnrt_file, b)
                if err:
                    print(f"# {name}: cnnrt convert --batch {b} failed: {err}", flush=True)
                    continue
            for t in a.threads:
                configs.append(dict(model=name, threads=t, batch=b, onnx=onnx_path, cnnrt=cnnrt_file, ncnn=ncnn,
                                    shape=[b] + list(shape1[1:]), flops=flops1 * b))

    results = []
    for cfg in configs:
        t0 = time.time()
        try:
            rounds, sizes = run_config(a, cfg, runtimes, tmp)
        except Exception as e:
            print(f"# {cfg['model']} t{cfg['threads']} b{cfg['batch']}: {e}", flush=True)
            continue
        peers = [r for r in rounds if r != "cnnrt"]
        row = dict(model=cfg["model"], threads=cfg["threads"], batch=cfg["batch"], burst_runs=sizes,
                   rounds=rounds, median_ms={r: statistics.median(v) for r, v in rounds.items()}, ratio={})
        for p in peers:
            row["ratio"][p] = quartiles([c / x for c, x in zip(rounds["cnnrt"], rounds[p])])
        limit, against = cp.TARGETS.get((cfg["model"], cfg["batch"]), (None, cp.COUNTED))
        refs = [p for p in peers if p in against]
        if refs:
            fastest = [min(rounds[p][i] for p in refs) for i in range(len(rounds["cnnrt"]))]
            row["ratio_fastest"] = quartiles([c / f for c, f in zip(rounds["cnnrt"], fastest)])
            row["against"] = refs
            if limit is not None:
                q1, _, q3 = row["ratio_fastest"]
                row["limit"] = limit
                row["met"] = "yes" if q3 <= limit else "no" if q1 > limit else "~"
        results.append(row)
        print(f"# {cfg['model']} t{cfg['threads']} b{cfg['batch']}: {time.time() - t0:.0f}s, "
              + ", ".join(f"{cp.SHORT[r]} {m:.3f}" for r, m in row["median_ms"].items()), flush=True)

    peers = [r for r in runtimes if r != "cnnrt"]
    print(f"\n## cnnrt vs peers, paired in time ({time.strftime('%Y-%m-%d %H:%M')}; {a.rounds} rounds of "
          f"~{a.burst_secs}s bursts; ms = median over rounds of each burst's median; ratio = median over rounds "
          f"of cnnrt / peer in the same round, [lower, upper quartile])\n")
    head = ["model", "threads", "batch", "cnnrt ms"] + [f"{cp.SHORT[p]} ms" for p in peers] + \
           [f"cnnrt/{cp.SHORT[p]}" for p in peers] + ["cnnrt/fastest", "target", "met"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in results:
        cells = [row["model"], str(row["threads"]), str(row["batch"]), f"{row['median_ms']['cnnrt']:.3f}"]
        cells += [f"{row['median_ms'][p]:.3f}" if p in row["median_ms"] else "n/a" for p in peers]
        cells += [f"{row['ratio'][p][1]:.2f} [{row['ratio'][p][0]:.2f}, {row['ratio'][p][2]:.2f}]"
                  if p in row["ratio"] else "n/a" for p in peers]
        rf = row.get("ratio_fastest")
        cells.append(f"{rf[1]:.2f} [{rf[0]:.2f}, {rf[2]:.2f}]" if rf else "n/a")
        cells.append(f"<= {row['limit']} x {'/'.join(cp.SHORT[p] for p in row['against'])}" if "limit" in row else "")
        cells.append(row.get("met", ""))
        print("| " + " | ".join(cells) + " |")
    with open(a.out, "w") as f:
        json.dump(dict(cnnrt=src, args=vars(a), results=results), f, indent=1)
    print(f"\nraw: {a.out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
