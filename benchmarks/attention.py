"""MultiHeadAttention with a padding mask: jaxmask against Keras 3 (TF backend), train step and inference.

``python benchmarks/attention.py [--rounds 5] [--reps 10]`` builds the same model on both sides: Input [B, T, d]
-> Masking -> MultiHeadAttention(num_heads=4, key_dim=32)(x, x) (query mask and value mask from Masking), trained
with Adam on the masked mean squared error (Keras: ``compile(Adam(1e-3), "mse")`` + ``train_on_batch``, which
masks the loss with the output mask; jaxmask: a jitted step of ``jm.masked_loss("mse", ...)`` and Adam). B=64,
T=128, d=128, lengths drawn in [T/4, T], post-padding. Both run in this one process, alternating: each round times
``--reps`` steps of one side, then of the other (order swapped every round); a side's figure is the median over
rounds of its per-round median. Prints one line per side, the ratio (jaxmask / Keras; < 1: jaxmask faster) and a
JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers import median_time, nnx_steps  # noqa: E402

B, T, D, HEADS, KEY_DIM = 64, 128, 128, 4, 32


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(T // 4, T + 1, B)
    mask = np.arange(T)[None, :] < lengths[:, None]
    x = np.where(mask[:, :, None], rng.normal(size=(B, T, D)), 0.0).astype(np.float32)
    x[mask & (np.abs(x).sum(-1) == 0)] = 1.0  # no accidental all-zero valid step
    y = rng.normal(size=(B, T, D)).astype(np.float32)
    return x, y, mask


def jaxmask_steps(x, y):
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import jaxmask as jm

    jm.perf.configure_cpu_allocator()
    rngs = nnx.Rngs(0)
    inp = jm.nn.Input((T, D))
    m = jm.nn.Masking(0.0)(inp)
    model = jm.nn.Model(inp, jm.nn.MultiHeadAttention(D, HEADS, KEY_DIM, rngs=rngs)(m, m))
    adam = jm.optimizers.Adam(1e-3) if hasattr(jm, "optimizers") and hasattr(jm.optimizers, "Adam") else None
    optimizer = nnx.Optimizer(model, adam if isinstance(adam, optax.GradientTransformation) else optax.adam(1e-3),
                              wrt=nnx.Param)

    def loss_fn(model, x, y):
        y_pred, out_mask = model(x)
        return jm.masked_loss("mean_squared_error", y, y_pred, mask=out_mask)

    train, infer = nnx_steps(model, optimizer, loss_fn, jnp.asarray(x), jnp.asarray(y))
    return train, infer


def keras_steps(x, y):
    import keras

    inp = keras.Input((T, D))
    m = keras.layers.Masking(0.0)(inp)
    model = keras.Model(inp, keras.layers.MultiHeadAttention(HEADS, KEY_DIM)(m, m))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return (lambda: model.train_on_batch(x, y)), (lambda: model.predict_on_batch(x))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    x, y, _ = make_data()
    sides = {}
    for name, make in (("jaxmask", jaxmask_steps), ("keras3-tf", keras_steps)):
        train, infer = make(x, y)
        t0 = time.perf_counter()
        train()
        first = time.perf_counter() - t0
        for _ in range(2):
            train()
        infer()
        sides[name] = {"train": train, "infer": infer, "first_call_s": first, "train_ms": [], "infer_ms": []}
    order = list(sides)
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            s = sides[name]
            s["train_ms"].append(median_time(s["train"], args.reps) * 1e3)
            s["infer_ms"].append(median_time(s["infer"], args.reps) * 1e3)
    result = {"shape": {"B": B, "T": T, "d": D, "num_heads": HEADS, "key_dim": KEY_DIM}, "rounds": args.rounds,
              "reps": args.reps}
    for name, s in sides.items():
        result[name] = {"train_ms": float(np.median(s["train_ms"])), "infer_ms": float(np.median(s["infer_ms"])),
                        "first_call_s": s["first_call_s"], "train_ms_rounds": [round(v, 2) for v in s["train_ms"]]}
    ours, theirs = result["jaxmask"], result["keras3-tf"]
    result["ratio_train"] = ours["train_ms"] / theirs["train_ms"]
    result["ratio_infer"] = ours["infer_ms"] / theirs["infer_ms"]
    for name in sides:
        r = result[name]
        print(f"{name:10s} train step {r['train_ms']:8.2f} ms   inference {r['infer_ms']:7.2f} ms   first call "
              f"{r['first_call_s']:.2f} s   (per-round train medians {r['train_ms_rounds']})")
    print(f"ratio jaxmask / keras3-tf: train {result['ratio_train']:.2f}, inference {result['ratio_infer']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
