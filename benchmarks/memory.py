"""Memory of one LSTM train step on a long sequence: ``python benchmarks/memory.py [--t 10000]``.

Compiles the seed model's train step (B=32, H=128, F=8, Adam, masked BCE) for T steps with the plain
autodiff scan, the fused VJP, and the fused VJP with ``remat=True``; prints XLA's own accounting of
the buffers each needs (``compiled.memory_analysis()``, deterministic) and runs one remat step to show
it trains, with the process' peak RSS.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxmask as jm
from jaxmask.functional import rnn as F


def build(t, b, f, h, *, remat, fused):
    rngs = nnx.Rngs(0)
    model = jm.nn.Sequential([
        jm.nn.Masking(0.0),
        jm.nn.LSTM(f, h, return_sequences=True, remat=remat, rngs=rngs),
        jm.nn.Dense(h, 1, activation="sigmoid", rngs=rngs),
    ])
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def loss_fn(model, x, y):
        y_pred, mask = model(x)
        return jm.masked_loss("binary_crossentropy", y, y_pred, mask=mask)

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        original = F.masked_scan
        F.masked_scan = functools.partial(original, fused=fused)  # trace-time switch for the comparison
        try:
            loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        finally:
            F.masked_scan = original
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    return step, state


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--t", type=int, default=10_000)
    ap.add_argument("--b", type=int, default=32)
    ap.add_argument("--h", type=int, default=128)
    ap.add_argument("--f", type=int, default=8)
    args = ap.parse_args(argv)
    jm.perf.configure_cpu_allocator()
    rng = np.random.default_rng(0)
    lengths = rng.integers(args.t // 2, args.t + 1, args.b)
    mask = np.arange(args.t)[None] < lengths[:, None]
    x = jnp.asarray(rng.normal(size=(args.b, args.t, args.f)).astype(np.float32) * mask[:, :, None])
    y = jnp.asarray((rng.random((args.b, args.t, 1)) > 0.5).astype(np.float32))
    report = {"shape": {"B": args.b, "T": args.t, "F": args.f, "H": args.h}}
    for name, kw in {"plain_autodiff": dict(remat=False, fused=False), "fused": dict(remat=False, fused=True),
                     "fused_remat": dict(remat=True, fused=True)}.items():
        step, state = build(args.t, args.b, args.f, args.h, **kw)
        mem = step.lower(state, x, y).compile().memory_analysis()
        report[name] = {"temp_GiB": mem.temp_size_in_bytes / 2**30,
                        "total_GiB": (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                      + mem.output_size_in_bytes - mem.alias_size_in_bytes) / 2**30}
    step, state = build(args.t, args.b, args.f, args.h, remat=True, fused=True)
    t0 = time.perf_counter()
    state, loss = step(state, x, y)
    report["fused_remat"]["first_step_s"] = time.perf_counter() - t0
    report["fused_remat"]["loss"] = float(loss)
    report["peak_rss_GiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
