"""The public API against the raw compiled step, in one process and one run, on the seed shape.

    python benchmarks/api.py                               # 7 rounds, 32 steps per measurement
    python benchmarks/api.py --rounds 7 --steps 32 --json out/api.json --readme README.md

The seed's model (Masking -> LSTM(100, return_sequences=True) -> Dropout(0.5) -> Dense(1, sigmoid), Adam,
masked binary cross-entropy; B=64, T=100, F=8) is timed per step through

* ``raw step``: the Trainer's own compiled train step (``TrainStep.run``) on a batch already on the device,
  state carried by hand: what the API costs with no wrapper at all;
* ``raw nnx step``: the README benchmark's step (``benchmarks/peers.py``: ``nnx.Optimizer``, no finite-step
  check, no loss accumulators), for reference;
* ``train_on_batch``: ``trainer.train_on_batch(x, y)`` on NumPy arrays, logs read after the last call; and
  ``train_on_batch, logs read``: ``float(logs["loss"])`` after every call (what Keras' train_on_batch does);
* ``fit``: ``trainer.fit(x, y, batch_size=64, epochs=1, verbose=0)`` on ``steps`` batches, time / steps; also with
  ``steps_per_execution=8`` and with the progress bar (``verbose=1``, to /dev/null);
* ``evaluate`` / ``predict`` on ``steps`` batches, against their raw compiled functions on a device batch;
* ``keras3-tf train_on_batch`` (and ``fit``, ``evaluate``, ``predict_on_batch``): Keras 3 on TensorFlow in its own
  subprocess, started once per round between the rounds of this process.

Every measurement is ``steps`` consecutive calls timed together (``block_until_ready`` at the end); the variants
alternate inside each round, their order rotating between rounds, and a figure is the median over rounds.
``first call s``: the first ``train_on_batch`` of a fresh process (compilation included, imports excluded), one
subprocess per round for jaxmask and for Keras; and for jaxmask with ``jm.perf.enable_compilation_cache`` in a
fresh process after another one filled the cache.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from peers import make_data  # noqa: E402

B, T, F, H = 64, 100, 8, 100
BEGIN, END = "<!-- api-table:begin -->", "<!-- api-table:end -->"


def seed_model(seed=0):
    from flax import nnx

    import jaxmask as jm

    rngs = nnx.Rngs(seed)
    return jm.nn.Sequential([
        jm.nn.Masking(0.0),
        jm.nn.LSTM(F, H, return_sequences=True, rngs=rngs),
        jm.nn.Dropout(0.5, rngs=rngs),
        jm.nn.Dense(H, 1, activation="sigmoid", rngs=rngs),
    ])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_both(fn) -> tuple[float, float]:
    """(wall seconds, seconds of CPU time of this thread: the Python side, the compiled steps run on XLA's threads)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def jaxmask_variants(steps: int) -> dict:
    """{name: a function running ``steps`` steps of that variant}, all compiled and warm."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxmask as jm
    from peers import bench_jaxmask_steps

    x, y, _ = make_data(B, T, F)
    xs, ys = np.concatenate([x] * steps), np.concatenate([y] * steps)
    trainer = jm.Trainer(seed_model(), optax.adam(1e-3), "binary_crossentropy")
    grouped = jm.Trainer(seed_model(), optax.adam(1e-3), "binary_crossentropy", steps_per_execution=8)

    def tob():
        for _ in range(steps):
            logs = trainer.train_on_batch(x, y)
        logs["loss"]

    def tob_read():
        for _ in range(steps):
            float(trainer.train_on_batch(x, y)["loss"])

    def fit():
        trainer.fit(xs, ys, batch_size=B, epochs=1, verbose=0)

    def fit_grouped():
        grouped.fit(xs, ys, batch_size=B, epochs=1, verbose=0)

    def fit_bar():
        stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115
        try:
            trainer.fit(xs, ys, batch_size=B, epochs=1, verbose=1)
        finally:
            sys.stderr.close()
            sys.stderr = stderr

    def evaluate():
        trainer.evaluate(xs, ys, batch_size=B)

    def predict():
        trainer.predict(xs, batch_size=B)

    for fn in (tob, fit, fit_grouped, evaluate, predict):
        fn()
    ts = trainer._base
    state = ts.init_state(seed_model())
    batch = jax.device_put({"x": x, "y": y, "mask": None, "sample_weight": None})
    holder = {"state": state}

    def raw():
        for _ in range(steps):
            holder["state"], logs, _ = ts.run(holder["state"], batch)
        jax.block_until_ready(logs)

    params, other = trainer.state.params, trainer.state.other
    acc = ts.init_accumulators()

    def raw_evaluate():
        a = acc
        for _ in range(steps):
            a, _ = ts.evaluate(params, other, a, batch)
        jax.block_until_ready(a)

    pts = trainer._predictor
    xd = jnp.asarray(x)

    def raw_predict():
        for _ in range(steps):
            out = pts.predict(params, other, xd, None)
        jax.block_until_ready(out)

    nnx_train, _ = bench_jaxmask_steps(x, y, H)

    def raw_nnx():
        for _ in range(steps):
            loss = nnx_train(block=False)
        jax.block_until_ready(loss)

    variants = {
        "raw step": raw,
        "raw nnx step": raw_nnx,
        "train_on_batch": tob,
        "train_on_batch, logs read": tob_read,
        "fit": fit,
        "fit, steps_per_execution=8": fit_grouped,
        "fit, progress bar": fit_bar,
        "raw evaluate step": raw_evaluate,
        "evaluate": evaluate,
        "raw predict step": raw_predict,
        "predict": predict,
    }
    for fn in variants.values():
        fn()
    return variants


def child_jaxmask_first(cache_dir: str | None = None) -> dict:
    import optax

    import jaxmask as jm

    if cache_dir:
        jm.perf.enable_compilation_cache(cache_dir)

    x, y, _ = make_data(B, T, F)
    trainer = jm.Trainer(seed_model(), optax.adam(1e-3), "binary_crossentropy")
    start = time.perf_counter()
    trainer.train_on_batch(x, y)["loss"]
    return {"first_call_s": time.perf_counter() - start}


def child_keras(steps: int) -> dict:
    """Keras 3 (TF backend) on the same model and data: train_on_batch, fit, evaluate, predict_on_batch."""
    import keras

    from peers import _keras_model

    x, y, _ = make_data(B, T, F)
    xs, ys = np.concatenate([x] * steps), np.concatenate([y] * steps)
    model = _keras_model(keras, T, F, H)
    start = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - start
    model.fit(xs, ys, batch_size=B, epochs=1, verbose=0)
    model.evaluate(xs, ys, batch_size=B, verbose=0)
    model.predict_on_batch(x)

    def tob():
        for _ in range(steps):
            model.train_on_batch(x, y)

    def fit():
        model.fit(xs, ys, batch_size=B, epochs=1, verbose=0, shuffle=True)

    def evaluate():
        model.evaluate(xs, ys, batch_size=B, verbose=0)

    def predict():
        for _ in range(steps):
            model.predict_on_batch(x)

    out = {"first_call_s": first}
    for name, fn in (("train_on_batch", tob), ("fit", fit), ("evaluate", evaluate), ("predict_on_batch", predict)):
        fn()
        out[name] = min(timed(fn) for _ in range(2)) / steps * 1e3
    return out


def run_child(kind: str, steps: int, cache_dir: str | None = None) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    extra = ["--cache-dir", cache_dir] if cache_dir else []
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--steps", str(steps), *extra], env=env,
                          capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1])


ROWS = [  # (variant, the raw step it is compared with, the Keras 3 TF figure it is compared with)
    ("raw step", None, "train_on_batch"),
    ("raw nnx step", "raw step", "train_on_batch"),
    ("train_on_batch", "raw step", "train_on_batch"),
    ("train_on_batch, logs read", "raw step", "train_on_batch"),
    ("fit", "raw step", "fit"),
    ("fit, steps_per_execution=8", "raw step", "fit"),
    ("fit, progress bar", "raw step", "fit"),
    ("raw evaluate step", None, "evaluate"),
    ("evaluate", "raw evaluate step", "evaluate"),
    ("raw predict step", None, "predict_on_batch"),
    ("predict", "raw predict step", "predict_on_batch"),
]


def markdown(summary: dict, meta: dict) -> str:
    rows = [
        f"Measured {meta['date']} on {meta['machine']} ({meta['cores']} cores), commit {meta['commit']}, "
        f"`{meta['command']}` (matmul peak {meta['matmul_gflops']:.0f} GFLOP/s at the start): seed shape "
        f"(64, 100, 8, 100), one process, {meta['rounds']} rounds of "
        f"{meta['steps']} steps per measurement, medians over rounds. `/ raw step`: median over rounds of the variant's "
        "time over its raw compiled step's, measured next to it (order alternating); `host ms`: CPU time of the "
        "Python thread per step (the compiled steps run on XLA's threads); Keras 3 TF in a subprocess between the "
        "rounds, `/ Keras 3 TF` a ratio of medians (< 1: jaxmask faster).",
        "",
        "| variant | ms / step | / raw step | host ms / step | Keras 3 TF ms / step | / Keras 3 TF |",
        "|---|---|---|---|---|---|",
    ]
    for name, base, keras in ROWS:
        if name not in summary:
            continue
        ms = summary[name]
        k = summary.get(f"keras3-tf {keras}")
        r_raw = f"{summary[f'{name} / raw']:.3f}" if f"{name} / raw" in summary else ""
        rows.append(f"| {name} | {ms:.2f} | {r_raw} | {summary.get(f'{name} host ms', float('nan')):.2f} | "
                    f"{'' if k is None else f'{k:.2f} ({keras})'} | {'' if k is None else f'{ms / k:.2f}'} |")
    keras_first = summary.get("keras3-tf first call s")
    for key, label in (("jaxmask first call s", "first train_on_batch, fresh process (s)"),
                       ("jaxmask-cached first call s", "the same, `jm.perf.enable_compilation_cache()` warm (s)")):
        first = summary.get(key)
        if first is not None:
            ratio = f"{first / keras_first:.2f}" if keras_first else ""
            rows.append(f"| {label} | {first:.2f} | | | {'' if keras_first is None else f'{keras_first:.2f}'} | {ratio} |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=32, help="steps per measurement")
    ap.add_argument("--no-keras", action="store_true")
    ap.add_argument("--json", type=Path, default=Path("out/api.json"))
    ap.add_argument("--readme", type=Path, help="rewrite the table between the api-table markers in this file")
    ap.add_argument("--child", choices=["keras3-tf", "jaxmask-first"], help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        out = child_keras(args.steps) if args.child == "keras3-tf" else child_jaxmask_first(args.cache_dir)
        print(json.dumps(out))
        return

    import jax

    import jaxmask as jm

    jm.perf.configure_cpu_allocator()
    from peers import matmul_peak

    peak = matmul_peak()
    variants = jaxmask_variants(args.steps)
    names = list(variants)
    times = {name: [] for name in names}
    host = {name: [] for name in names}
    ratios = {name: [] for name, base, _ in ROWS if base is not None}
    children = []
    per_step = lambda seconds: seconds / args.steps * 1e3  # noqa: E731
    for rnd in range(args.rounds):
        # each variant next to a fresh measurement of its raw step, in alternating order: a ratio from one pair
        pairs = [(name, base) for name, base, _ in ROWS if base is not None]
        pairs = pairs[rnd % len(pairs):] + pairs[: rnd % len(pairs)]
        done = set()
        for name, base in pairs:
            order = (base, name) if rnd % 2 == 0 else (name, base)
            got = {}
            for which in order:
                wall, cpu = timed_both(variants[which])
                got[which] = wall
                if which not in done or which == base:
                    times[which].append(per_step(wall))
                    host[which].append(per_step(cpu))
                done.add(which)
            ratios[name].append(got[name] / got[base])
        for name in names:
            if name not in done:
                wall, cpu = timed_both(variants[name])
                times[name].append(per_step(wall))
                host[name].append(per_step(cpu))
        first = run_child("jaxmask-first", args.steps)
        with tempfile.TemporaryDirectory() as cache:  # the first process fills the cache, the second is timed
            run_child("jaxmask-first", args.steps, cache)
            cached = run_child("jaxmask-first", args.steps, cache)
        peer = {} if args.no_keras else run_child("keras3-tf", args.steps)
        children.append({"jaxmask": first, "jaxmask-cached": cached, "keras3-tf": peer})
        print(f"round {rnd + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f}" for n in names) + f"; {first}; {peer}",
              file=sys.stderr)
    summary = {name: float(np.median(v)) for name, v in times.items()}
    summary.update({f"{name} / raw": float(np.median(v)) for name, v in ratios.items()})
    summary.update({f"{name} host ms": float(np.median(v)) for name, v in host.items()})
    for key in ("train_on_batch", "fit", "evaluate", "predict_on_batch"):
        vals = [c["keras3-tf"][key] for c in children if key in c["keras3-tf"]]
        if vals:
            summary[f"keras3-tf {key}"] = float(np.median(vals))
    for side in ("jaxmask", "jaxmask-cached", "keras3-tf"):
        vals = [c[side]["first_call_s"] for c in children if "first_call_s" in c[side]]
        if vals:
            summary[f"{side} first call s"] = float(np.median(vals))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout
    with open("/proc/cpuinfo") as f:
        machine = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "unknown CPU")
    meta = {"date": datetime.date.today().isoformat(), "machine": machine, "cores": os.cpu_count(),
            "commit": commit.strip() or "unknown", "rounds": args.rounds, "steps": args.steps,
            "command": f"python benchmarks/api.py --rounds {args.rounds} --steps {args.steps}",
            "jax": jax.__version__, "matmul_gflops": peak}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "summary": summary, "times": times, "host": host, "ratios": ratios,
                                     "children": children}, indent=1))
    table = markdown(summary, meta)
    print(table)
    if args.readme:
        text = args.readme.read_text()
        new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{table}\n{END}", text, flags=re.S)
        args.readme.write_text(new)


if __name__ == "__main__":
    main()
