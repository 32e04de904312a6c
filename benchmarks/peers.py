"""One peer, one shape, one process: ``python benchmarks/peers.py PEER SHAPE REPS`` prints a JSON line.

Every peer trains the seed's model (Masking -> LSTM(H, return_sequences=True) -> Dropout(0.5) ->
Dense(1, sigmoid)) on the same post-padded data with Adam and a masked binary cross-entropy, and runs
inference on it. Times are wall-clock medians after a warm-up; ``first_call_s`` is the first train
step including compilation/tracing.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import numpy as np

SHAPES = {"seed": (64, 100, 8, 100), "large": (128, 400, 32, 256)}


def make_data(b, t, f, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(t // 5, t + 1, b)
    mask = np.arange(t)[None, :] < lengths[:, None]
    x = (rng.normal(size=(b, t, f)) * mask[:, :, None]).astype(np.float32)
    x[mask & (np.abs(x).sum(-1) == 0)] = 1.0  # no accidental all-zero valid step
    y = (rng.random((b, t, 1)) > 0.5).astype(np.float32)
    return x, y, mask


def lstm_flops(b, t, f, h, train):
    """Multiply-adds x2 of the recurrent and input matmuls (forward), x3 for a train step."""
    fwd = 2 * b * t * 4 * h * (f + h)
    return fwd * (3 if train else 1)


def median_time(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def nnx_steps(model, optimizer, loss_fn, x, y):
    """Functional train/predict steps for an NNX model: split once, ``jax.jit`` pure functions of the state
    (``nnx.jit`` re-walks the object graph on every call, which costs milliseconds per step on CPU)."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split((model, optimizer))

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    @jax.jit
    def predict(state, x):
        model, _ = nnx.merge(graphdef, state)
        model.eval()
        return model(x)

    holder = {"state": state}

    def train(block=True):
        holder["state"], loss = train_step(holder["state"], x, y)
        if block:
            jax.block_until_ready(loss)
        return loss

    def infer():
        jax.block_until_ready(predict(holder["state"], x))

    return train, infer


def time_steps(train, infer, reps):
    t0 = time.perf_counter()
    train()
    first = time.perf_counter() - t0
    for _ in range(2):
        train()
    train_s = median_time(train, reps)
    infer()
    return first, train_s, median_time(infer, reps)


def bench_jaxmask(x, y, mask, h, reps, remat=False):
    train, infer = bench_jaxmask_steps(x, y, h, remat)
    return time_steps(train, infer, reps)


def bench_jaxmask_steps(x, y, h=100, remat=False, unroll=1):
    """The seed model's raw jitted train and inference steps (``train(block=True)``, ``infer()``)."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import jaxmask as jm

    jm.perf.configure_cpu_allocator()
    f = x.shape[-1]
    rngs = nnx.Rngs(0)
    model = jm.nn.Sequential([
        jm.nn.Masking(0.0),
        jm.nn.LSTM(f, h, return_sequences=True, remat=remat, unroll=unroll, rngs=rngs),
        jm.nn.Dropout(0.5, rngs=rngs),
        jm.nn.Dense(h, 1, activation="sigmoid", rngs=rngs),
    ])
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    def loss_fn(model, x, y):
        y_pred, out_mask = model(x)
        return jm.masked_loss("binary_crossentropy", y, y_pred, mask=out_mask)

    return nnx_steps(model, optimizer, loss_fn, jnp.asarray(x), jnp.asarray(y))


def _keras_model(lib, t, f, h):
    layers = lib.layers
    model = lib.Sequential([
        lib.Input((t, f)),
        layers.Masking(0.0),
        layers.LSTM(h, return_sequences=True),
        layers.Dropout(0.5),
        layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=lib.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return model


def bench_keras(lib, x, y, mask, h, reps):
    _, t, f = x.shape
    model = _keras_model(lib, t, f, h)
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - t0
    for _ in range(2):
        model.train_on_batch(x, y)
    train = median_time(lambda: model.train_on_batch(x, y), reps)
    model.predict_on_batch(x)
    infer = median_time(lambda: model.predict_on_batch(x), reps)
    return first, train, infer


def bench_flax(x, y, mask, h, reps):
    """Flax NNX's own RNN with seq_lengths (post-padding only; padded outputs left as they are)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    f = x.shape[-1]
    lengths = jnp.asarray(mask.sum(1), jnp.int32)
    mask_j = jnp.asarray(mask)

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(f, h, rngs=rngs))
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.dense = nnx.Linear(h, 1, rngs=rngs)

        def __call__(self, x):
            return jax.nn.sigmoid(self.dense(self.drop(self.rnn(x, seq_lengths=lengths))))

    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    def loss_fn(model, x, y):
        p = jnp.clip(model(x)[..., 0], 1e-7, 1 - 1e-7)
        l = -(y[..., 0] * jnp.log(p) + (1 - y[..., 0]) * jnp.log(1 - p))
        return jnp.sum(jnp.where(mask_j, l, 0.0)) / jnp.maximum(jnp.sum(mask_j), 1)

    train, infer = nnx_steps(model, optimizer, loss_fn, jnp.asarray(x), jnp.asarray(y))
    return time_steps(train, infer, reps)


def bench_torch(x, y, mask, h, reps):
    import torch

    torch.manual_seed(0)
    f = x.shape[-1]
    lstm, drop, dense = torch.nn.LSTM(f, h, batch_first=True), torch.nn.Dropout(0.5), torch.nn.Linear(h, 1)
    params = list(lstm.parameters()) + list(dense.parameters())
    opt = torch.optim.Adam(params, 1e-3)
    xt, yt, mt = torch.from_numpy(x), torch.from_numpy(y)[..., 0], torch.from_numpy(mask)
    lengths = mt.sum(1)

    def forward(train):
        drop.train(train)
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, lengths, batch_first=True, enforce_sorted=False)
        out, _ = lstm(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return torch.sigmoid(dense(drop(out)))[..., 0]

    def step():
        opt.zero_grad()
        p = forward(True).clamp(1e-7, 1 - 1e-7)
        l = -(yt * torch.log(p) + (1 - yt) * torch.log(1 - p))
        loss = (l * mt).sum() / mt.sum()
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    train = median_time(step, reps)
    with torch.no_grad():
        infer = median_time(lambda: forward(False), reps)
    return first, train, infer


def matmul_peak(reps=10, n=2048):
    """GFLOP/s of one large float32 matmul under XLA:CPU: the machine's practical peak."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    mm = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(mm(a, a))
    return 2 * n**3 / median_time(lambda: jax.block_until_ready(mm(a, a)), reps) / 1e9


def main(peer, shape, reps):
    b, t, f, h = SHAPES[shape]
    x, y, mask = make_data(b, t, f)
    if peer == "matmul":
        result = {"gflops": matmul_peak()}
    else:
        if peer == "jaxmask":
            first, train, infer = bench_jaxmask(x, y, mask, h, reps)
        elif peer == "keras3-tf" or peer == "keras3-jax":
            import keras

            first, train, infer = bench_keras(keras, x, y, mask, h, reps)
        elif peer == "tf_keras":
            import tf_keras

            first, train, infer = bench_keras(tf_keras, x, y, mask, h, reps)
        elif peer == "flax-nnx-rnn":
            first, train, infer = bench_flax(x, y, mask, h, reps)
        elif peer == "torch-packed":
            first, train, infer = bench_torch(x, y, mask, h, reps)
        else:
            raise SystemExit(f"unknown peer {peer!r}")
        result = {
            "first_call_s": first,
            "train_ms": train * 1e3,
            "infer_ms": infer * 1e3,
            "train_gflops": lstm_flops(b, t, f, h, True) / train / 1e9,
        }
    print(json.dumps({"peer": peer, "shape": shape, **result}))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
