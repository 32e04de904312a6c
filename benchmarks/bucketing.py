"""End to end: a bucketed jaxmask epoch against Keras ``fit`` on the same data padded to the global maximum.

    python benchmarks/bucketing.py [--n 2048] [--epochs 3]

Skewed, log-normal sequence lengths (median 40 steps, long tail capped at 600) with per-step binary labels;
the seed's model (Masking -> LSTM(64) -> Dropout(0.5) -> Dense(1, sigmoid)), Adam, batch 64. Each side runs in
its own subprocess; the figure is the median epoch time after the first (compiling) epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

H, F, BATCH = 64, 8, 64


def make_data(n, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(40), 1.0, n).astype(int), 2, 600)
    t = int(lengths.max())
    mask = np.arange(t)[None] < lengths[:, None]
    x = rng.normal(size=(n, t, F)).astype(np.float32) * mask[:, :, None]
    y = ((np.cumsum(x[..., 0], axis=1) > 0) & mask).astype(np.float32)[..., None]
    return x, y, lengths


def run_jaxmask(x, y, epochs):
    import optax
    from flax import nnx

    import jaxmask as jm

    rngs = nnx.Rngs(0)
    model = jm.nn.Sequential([
        jm.nn.Masking(0.0),
        jm.nn.LSTM(F, H, return_sequences=True, rngs=rngs),
        jm.nn.Dropout(0.5, rngs=rngs),
        jm.nn.Dense(H, 1, activation="sigmoid", rngs=rngs),
    ])
    trainer = jm.Trainer(model, optax.adam(1e-3), "binary_crossentropy")
    times, logs = [], {}
    for _ in range(epochs):
        t0 = time.perf_counter()
        logs = trainer.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, bucket_by_length=True).history
        times.append(time.perf_counter() - t0)
    return times, {k: float(v[-1]) for k, v in logs.items()}


def run_keras(x, y, epochs):
    import keras

    model = keras.Sequential([
        keras.Input(x.shape[1:]),
        keras.layers.Masking(0.0),
        keras.layers.LSTM(H, return_sequences=True),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    times, logs = [], {}
    for _ in range(epochs):
        t0 = time.perf_counter()
        logs = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0).history
        times.append(time.perf_counter() - t0)
    return times, {k: float(v[-1]) for k, v in logs.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--side", choices=["jaxmask", "keras"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    x, y, lengths = make_data(args.n)
    if args.side:
        times, logs = (run_jaxmask if args.side == "jaxmask" else run_keras)(x, y, args.epochs)
        print(json.dumps({"epoch_s": times, "logs": logs}))
        return
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    out = {"n": args.n, "global_T": int(lengths.max()), "median_length": float(np.median(lengths)),
           "padding_fraction_global": float(1 - lengths.sum() / (args.n * lengths.max()))}
    for side in ("jaxmask", "keras"):
        proc = subprocess.run([sys.executable, __file__, "--side", side, "--n", str(args.n), "--epochs",
                               str(args.epochs)], env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        out[side] = json.loads(lines[-1]) if lines else {"error": proc.stderr.strip().splitlines()[-3:]}
    if "epoch_s" in out["jaxmask"] and "epoch_s" in out["keras"]:
        jm_epoch = float(np.median(out["jaxmask"]["epoch_s"][1:]))
        k_epoch = float(np.median(out["keras"]["epoch_s"][1:]))
        out["median_epoch_s"] = {"jaxmask_bucketed": jm_epoch, "keras_global_padding": k_epoch}
        out["speedup"] = k_epoch / jm_epoch
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
