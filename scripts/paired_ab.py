#!/usr/bin/env python3
"""Two (or more) cnnrt builds or settings, paired in time: each is loaded once with
`cnnrt bench --turns` and they take turns in short bursts, round after round (order
rotated), so that every round compares runs made within about a second of each other on a
machine whose speed drifts. Prints each config's median over rounds of its burst medians
and the median [quartiles] of the per-round ratio to the first config.

    python3 scripts/paired_ab.py MODEL "BIN=/tmp/cnnrt-old" "BIN=/tmp/cnnrt-new" \\
        [--threads 2] [--batch 8] [--rounds 20] [--burst-secs 0.3]

A config is `;`-separated KEY=VALUE pairs: BIN (default target/release/cnnrt), MODEL (a
model file instead of the MODEL argument: two plans of one network, say), ARGS (extra
`cnnrt bench` arguments, comma-separated) and ENV (comma-separated K=V for its environment).
"""
import argparse
import json
import os
import statistics
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(model, cfg, threads, batch):
    d = dict(kv.split("=", 1) for kv in cfg.split(";") if kv)
    env = dict(os.environ)
    for kv in filter(None, d.get("ENV", "").split(",")):
        k, v = kv.split("=", 1)
        env[k] = v
    cmd = [d.get("BIN", os.path.join(REPO, "target", "release", "cnnrt")), "bench", d.get("MODEL", model), "--threads",
           str(threads), "--batch", str(batch), "--turns", "--no-verify"]
    cmd += [a for a in d.get("ARGS", "").split(",") if a]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)


def burst(p, n):
    p.stdin.write(f"{n}\n")
    p.stdin.flush()
    while True:
        line = p.stdout.readline()
        if not line:
            raise SystemExit(f"a cnnrt process exited (rc {p.poll()})")
        if line.startswith('{"times_ms"'):
            return json.loads(line)["times_ms"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--burst-secs", type=float, default=0.3)
    ap.add_argument("--gap-secs", type=float, default=0.02)
    a = ap.parse_args()
    procs = [start(a.model, c, a.threads, a.batch) for c in a.configs]
    try:
        sizes = [max(3, int(a.burst_secs * 1e3 / max(statistics.median(burst(p, 2)), 1e-3))) for p in procs]
        med = [[] for _ in procs]
        for r in range(a.rounds):
            k = r % len(procs)
            for i in list(range(k, len(procs))) + list(range(k)):
                time.sleep(a.gap_secs)
                med[i].append(statistics.median(burst(procs[i], sizes[i])))
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()
    for i, c in enumerate(a.configs):
        ratios = [x / y for x, y in zip(med[i], med[0])]
        q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
        print(f"{statistics.median(med[i]):9.3f} ms  ratio {statistics.median(ratios):.3f} [{q[0]:.3f}, {q[2]:.3f}]  {c}")


if __name__ == "__main__":
    main()
