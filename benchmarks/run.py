"""Time jaxmask against its peers in one run and write the README's benchmark table.

    python benchmarks/run.py                       # seed + large shapes, all installed peers
    python benchmarks/run.py --shapes seed --rounds 3 --json out/bench.json --readme README.md

Each peer runs in its own subprocess (so TensorFlow and JAX never share a process or thread pool), in
``--rounds`` interleaved rounds; a peer's figure is the median over rounds of its per-round median.
Ratios are jaxmask / peer, so < 1 means jaxmask is faster. A matmul peak is measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEERS = ["jaxmask", "keras3-tf", "keras3-jax", "tf_keras", "flax-nnx-rnn", "torch-packed"]
REQUIRES = {"keras3-tf": "keras", "keras3-jax": "keras", "tf_keras": "tf_keras", "torch-packed": "torch",
            "flax-nnx-rnn": "flax", "jaxmask": "jaxmask"}
BEGIN, END = "<!-- benchmark-table:begin -->", "<!-- benchmark-table:end -->"


def run_peer(peer, shape, reps):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["KERAS_BACKEND"] = "jax" if peer == "keras3-jax" else "tensorflow"
    out = subprocess.run([sys.executable, str(HERE / "peers.py"), peer, shape, str(reps)], env=env,
                         capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        return {"peer": peer, "shape": shape, "error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def summarize(results):
    """{shape: {peer: {metric: median over rounds}}}."""
    table = {}
    for r in results:
        if "error" in r:
            table.setdefault(r["shape"], {}).setdefault(r["peer"], {"error": r["error"]})
            continue
        cell = table.setdefault(r["shape"], {}).setdefault(r["peer"], {})
        for k, v in r.items():
            if isinstance(v, float):
                cell.setdefault(k, []).append(v)
    for shape in table.values():
        for peer, cell in shape.items():
            shape[peer] = {k: (float(np.median(v)) if isinstance(v, list) else v) for k, v in cell.items()}
    return table


def markdown(summary, meta):
    rows = [
        f"Measured {meta['date']} on {meta['machine']} ({meta['cores']} cores), commit {meta['commit']}, "
        f"`python benchmarks/run.py --rounds {meta['rounds']} --reps {meta['reps']}`. Wall-clock medians; "
        "ratio = jaxmask / peer (< 1: jaxmask faster).",
        "",
        "| shape (B, T, F, H) | peer | train step ms | ratio | inference ms | ratio | first call s | train GFLOP/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    from peers import SHAPES  # noqa: PLC0415

    for shape, peers in summary.items():
        ours = peers.get("jaxmask", {})
        peak = peers.get("matmul", {}).get("gflops")
        for peer in PEERS:
            r = peers.get(peer)
            if r is None:
                continue
            if "error" in r:
                rows.append(f"| {shape} {SHAPES[shape]} | {peer} | failed: {' '.join(r['error'])[:60]} | | | | | |")
                continue
            tr = ours.get("train_ms", np.nan) / r["train_ms"]
            ir = ours.get("infer_ms", np.nan) / r["infer_ms"]
            gf = f"{r['train_gflops']:.0f}" + (f" ({100 * r['train_gflops'] / peak:.0f}% of peak)" if peak else "")
            rows.append(
                f"| {shape} {SHAPES[shape]} | {peer} | {r['train_ms']:.1f} | {tr:.2f} | {r['infer_ms']:.1f} | {ir:.2f} "
                f"| {r['first_call_s']:.2f} | {gf} |"
            )
        if peak:
            rows.append(f"| {shape} {SHAPES[shape]} | matmul peak (2048², XLA:CPU) | | | | | | {peak:.0f} |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["seed", "large"], choices=["seed", "large"])
    ap.add_argument("--peers", nargs="+", default=PEERS, choices=PEERS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=15, help="timed steps per round (large shape: a third)")
    ap.add_argument("--json", type=Path, default=Path("out/bench.json"))
    ap.add_argument("--readme", type=Path, help="rewrite the table between the benchmark markers in this file")
    args = ap.parse_args(argv)

    peers = [p for p in args.peers if importlib.util.find_spec(REQUIRES[p]) is not None]
    skipped = sorted(set(args.peers) - set(peers))
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)}", file=sys.stderr)
    results = []
    for rnd in range(args.rounds):
        for shape in args.shapes:
            reps = args.reps if shape == "seed" else max(3, args.reps // 3)
            for peer in ["matmul", *peers]:
                r = run_peer(peer, shape, reps)
                print(f"round {rnd + 1} {shape:5s} {peer:13s} {json.dumps(r)}", file=sys.stderr)
                results.append(r)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout
    meta = {"date": datetime.date.today().isoformat(), "machine": cpu_name(), "cores": os.cpu_count(),
            "commit": commit.strip() or "unknown", "rounds": args.rounds, "reps": args.reps,
            "python": platform.python_version()}
    summary = summarize(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "summary": summary, "runs": results}, indent=1))
    table = markdown(summary, meta)
    print(table)
    if args.readme:
        text = args.readme.read_text()
        new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), f"{BEGIN}\n{table}\n{END}", text, flags=re.S)
        args.readme.write_text(new)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
