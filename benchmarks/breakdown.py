"""Where the seed's LSTM train step spends its time on XLA:CPU, and what loop unrolling does to it.

    python benchmarks/breakdown.py                       # seed shape, 7 rounds
    python benchmarks/breakdown.py --shape large --rounds 5 --reps 3 --json out/breakdown.json

Every figure is a median over rounds of the median of ``reps`` calls; the variants alternate inside each round
(order rotating), in one process. Parts, for the fused LSTM of ``jaxmask.functional.fused`` on the shape's
post-padded batch (h = H units, z = 4H gates):

* ``train step (unroll=u)``: the README benchmark's raw step (``benchmarks/peers.py``) with ``LSTM(unroll=u)``;
* ``forward scan``: the masked fused LSTM forward alone (inference of the recurrence);
* ``backward scan``: its VJP alone, given the forward's residuals (the reverse loop and the two large matmuls);
* ``matmuls, sequential``: a scan doing only each step's ``[x_t, h] @ W`` (forward) and ``dz @ Uᵀ`` (backward)
  with a single tanh to keep the dependency: the floor for any per-step recurrence on this library;
* ``matmuls, batched``: the same matmul FLOPs as one [T·B, ·] matmul each: what they cost without a loop;
* ``empty loop``: a ``lax.scan`` of T steps carrying [B, H] with one add: XLA:CPU's per-iteration overhead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from peers import SHAPES, bench_jaxmask_steps, make_data, median_time  # noqa: E402


def _timer(fn):
    import jax

    def run():
        jax.block_until_ready(fn())

    run()
    run()
    return run


def parts(b, t, f, h, unrolls):
    """{name: a warm, blocking function}."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from jaxmask.functional import fused

    x, y, mask = make_data(b, t, f)
    out = {}
    for u in unrolls:
        train, _ = bench_jaxmask_steps(x, y, h, unroll=u)
        out[f"train step (unroll={u})"] = _timer(train)

    rng = np.random.default_rng(0)
    W = jnp.asarray(rng.normal(size=(f + h, 4 * h)).astype("float32") * 0.1)
    bias = jnp.zeros(4 * h, "float32")
    xt = jnp.asarray(np.swapaxes(x, 0, 1))
    mt = jnp.asarray(mask.T)
    h0 = jnp.zeros((b, h), "float32")
    r = jnp.ones((b, h), "float32")
    scan = fused.lstm_scan(True, False, 1, False)
    forward = jax.jit(lambda W, bias, xt: scan(W, bias, xt, mt, h0, h0, r)[0])
    out["forward scan"] = _timer(lambda: forward(W, bias, xt))
    _, vjp = jax.vjp(lambda W, bias, xt: scan(W, bias, xt, mt, h0, h0, r)[0], W, bias, xt)
    backward = jax.jit(lambda ct: vjp(ct))
    ct = jnp.ones((t, b, h), "float32")
    out["backward scan"] = _timer(lambda: backward(ct))

    u_t = W[f:].T

    @jax.jit
    def matmuls_sequential(xt):
        def fwd(hc, x_t):
            z = jnp.concatenate([x_t, hc], axis=-1) @ W
            return jnp.tanh(z[:, :h]), None

        def bwd(dh, _):
            return jnp.tanh(jnp.tile(dh, (1, 4)) @ u_t), None

        h_t, _ = lax.scan(fwd, h0, xt)
        d_t, _ = lax.scan(bwd, h_t, None, length=t)
        return d_t

    out["matmuls, sequential"] = _timer(lambda: matmuls_sequential(xt))

    @jax.jit
    def matmuls_batched(xt):
        inputs = jnp.concatenate([xt, jnp.zeros((t, b, h), "float32")], axis=-1).reshape(t * b, -1)
        return (inputs @ W) @ u_t

    out["matmuls, batched"] = _timer(lambda: matmuls_batched(xt))

    @jax.jit
    def empty_loop(h0):
        return lax.scan(lambda c, _: (c + 1.0, None), h0, None, length=t)[0]

    out["empty loop"] = _timer(lambda: empty_loop(h0))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="seed")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--unroll", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    b, t, f, h = SHAPES[args.shape]
    fns = parts(b, t, f, h, args.unroll)
    names = list(fns)
    per_round = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            per_round[n].append(median_time(fns[n], args.reps))
    result = {n: 1e3 * float(np.median(v)) for n, v in per_round.items()}
    print(f"{args.shape} (B, T, F, H) = {(b, t, f, h)}: median ms over {args.rounds} rounds of {args.reps}")
    for n, ms in result.items():
        print(f"  {n:28s} {ms:9.2f} ms   {1e3 * ms / t:8.1f} us/step")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"shape": [b, t, f, h], "ms": result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
