"""The cuDNN LSTM path (jaxmask/functional/cudnn.py), tested on CPU with ``jax.experimental.rnn.lstm_ref``
standing in for the kernel: its roll logic against the NumPy reference (Keras' TF-backend rules) and
against the scan, its gradients against the scan's, and its dispatch (which masks take it, where)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmask.functional import cudnn
from jaxmask.functional import rnn as F
from tests import reference as ref

B, T, FEAT, H = 6, 7, 3, 4
REF = cudnn.reference_lstm_kernel


def _lengths_mask(lengths, padding="post", t=T):
    post = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
    return post if padding == "post" else post[:, ::-1].copy()


def _patterns():
    post = _lengths_mask([7, 3, 0, 5, 1, 7])
    pre = _lengths_mask([7, 3, 0, 5, 1, 7], "pre")
    mixed = post.copy()
    mixed[1] = pre[1]  # one pre-padded row among post-padded ones
    window = np.zeros((B, T), bool)
    window[:, 2:5] = True  # leading and trailing padding: still one run per row
    window[3] = False
    holes = post.copy()
    holes[0, 3] = False
    return {
        "post": post,
        "pre": pre,
        "mixed_post_pre": mixed,
        "window": window,
        "holes": holes,
        "all_masked": np.zeros((B, T), bool),
        "all_valid": np.ones((B, T), bool),
        "none": None,
    }


PATTERNS = _patterns()
ONE_RUN = ["post", "pre", "mixed_post_pre", "window", "all_masked", "all_valid"]


def _setup(seed=0, b=B, t=T):
    rng = np.random.default_rng(seed)
    params = {
        "kernel": jnp.asarray(rng.normal(0, 0.5, (FEAT, 4 * H)), jnp.float32),
        "recurrent_kernel": jnp.asarray(rng.normal(0, 0.5, (H, 4 * H)), jnp.float32),
        "bias": jnp.asarray(rng.normal(0, 0.5, (4 * H,)), jnp.float32),
    }
    x = jnp.asarray(rng.normal(size=(b, t, FEAT)), jnp.float32)
    init = tuple(jnp.asarray(rng.normal(size=(b, H)), jnp.float32) for _ in range(2))
    return params, x, init


@functools.lru_cache(maxsize=None)
def _compiled(use_cudnn, kernel, masked, kw):
    """One jit per setting, the mask an argument: every pattern of one shape shares a compilation."""

    def f(params, x, mask, init):
        return F.masked_scan(F.lstm_cell(), params, x, mask if masked else None, init, use_cudnn=use_cudnn,
                             cudnn_kernel=kernel, **dict(kw))

    return jax.jit(f)


def _run(params, x, mask, init, use_cudnn, kernel=REF, **kw):
    m = jnp.zeros((), bool) if mask is None else jnp.asarray(mask)
    return _compiled(use_cudnn, kernel, mask is not None, tuple(sorted(kw.items())))(params, x, m, init)


def _spy(x, h0, c0, kernel, recurrent_kernel, bias, lengths):
    """The reference kernel plus 100 everywhere: a result that shows whether the kernel ran."""
    y, h, c = REF(x, h0, c0, kernel, recurrent_kernel, bias, lengths)
    return y + 100.0, h + 100.0, c + 100.0


def _close(a, b, tol="float32"):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **ref.TOL[tol])


# ------------------------------------------------------------------------------------------------------
# The device check
# ------------------------------------------------------------------------------------------------------


def _one_run_numpy(mask):
    for row in np.asarray(mask, bool):
        idx = np.flatnonzero(row)
        if idx.size and idx[-1] - idx[0] + 1 != idx.size:
            return False
    return True


def test_one_run_matches_numpy_on_named_and_random_masks():
    masks = [m for m in PATTERNS.values() if m is not None]
    rng = np.random.default_rng(3)
    masks += [rng.random((4, 5)) < p for p in (0.2, 0.5, 0.8) for _ in range(30)]
    masks += [np.array([[True]]), np.array([[False]]), np.array([[True, False, True]])]
    for m in masks:
        assert bool(jax.jit(cudnn.one_run)(jnp.asarray(m))) == _one_run_numpy(m), m


# ------------------------------------------------------------------------------------------------------
# Values: the path against the NumPy reference (Keras TF backend rules) and the scan
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("zero_output_for_mask", [False, True])
def test_path_equals_numpy_reference(pattern, go_backwards, zero_output_for_mask):
    params, x, init = _setup()
    mask = PATTERNS[pattern]
    outputs, last, final = _run(params, x, mask, init, True, go_backwards=go_backwards,
                                zero_output_for_mask=zero_output_for_mask)
    r_out, r_last, r_final = ref.rnn("lstm", params, x, mask, [np.asarray(s) for s in init], go_backwards,
                                     zero_output_for_mask)
    _close((outputs, last, final), (r_out, r_last, tuple(r_final)))


@pytest.mark.parametrize("pattern", ["post", "pre", "window", "all_masked", "holes"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_path_equals_scan_with_initial_output_initial_state(pattern, go_backwards):
    """Keras' JAX-backend rule (the initial h before the first valid step), which the reference lacks."""
    params, x, init = _setup(1)
    mask = PATTERNS[pattern]
    kw = dict(go_backwards=go_backwards, initial_output="initial_state")
    _close(_run(params, x, mask, init, True, **kw), _run(params, x, mask, init, False, **kw))


def test_path_with_b_equal_t_and_input_dropout():
    """B == T catches a [B] / [T] mix-up in the roll; input dropout is applied before the kernel."""
    params, x, init = _setup(2, b=T, t=T)
    mask = jnp.asarray(_lengths_mask([7, 0, 2, 5, 1, 6, 3], "pre"))
    dp = jnp.asarray(np.random.default_rng(2).integers(0, 2, (T, FEAT)) * 2.0, jnp.float32)
    for gb in (False, True):
        runs = [F.masked_scan(F.lstm_cell(), params, x, mask, init, go_backwards=gb, input_dropout=dp,
                              use_cudnn=u, cudnn_kernel=REF) for u in (True, False)]
        _close(*runs)


def test_path_without_bias_and_with_nan_in_padding():
    params, x, init = _setup(3)
    params = {k: v for k, v in params.items() if k != "bias"}
    mask = PATTERNS["pre"]
    x = jnp.where(jnp.asarray(mask)[:, :, None], x, jnp.nan)
    got = _run(params, x, mask, init, True)
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(got))
    _close(got, _run(params, x, mask, init, False))


# ------------------------------------------------------------------------------------------------------
# Gradients equal the scan's (the fused VJP and plain autodiff)
# ------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _grad(use_cudnn, fused, go_backwards, zero_output_for_mask, masked):
    weights = jnp.asarray(np.random.default_rng(4).normal(size=(B, T, H)), jnp.float32)

    def loss(params, x, init, mask):
        outputs, last, (h, c) = F.masked_scan(F.lstm_cell(), params, x, mask if masked else None, init,
                                              go_backwards=go_backwards, zero_output_for_mask=zero_output_for_mask,
                                              use_cudnn=use_cudnn, cudnn_kernel=REF, fused=fused)
        return jnp.sum(outputs * weights) + jnp.sum(jnp.sin(last)) + jnp.sum(h * c) + jnp.sum(c)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


@pytest.mark.parametrize(
    "go_backwards, zero_output_for_mask, fused_only",
    [(True, False, True)]
    + [pytest.param(g, z, False, marks=pytest.mark.slow) for g in (False, True) for z in (False, True)],
)
def test_path_gradients_equal_scan(go_backwards, zero_output_for_mask, fused_only):
    """Against the fused scan's VJP (and, in the slow cases, autodiff of the plain scan too)."""
    params, x, init = _setup(4)
    for pattern in ["post", "pre", "mixed_post_pre", "all_masked", "none"]:
        masked = PATTERNS[pattern] is not None
        mask = jnp.asarray(PATTERNS[pattern]) if masked else jnp.zeros((), bool)
        got = _grad(True, True, go_backwards, zero_output_for_mask, masked)(params, x, init, mask)
        for fused in (True,) if fused_only else (True, False):
            want = _grad(False, fused, go_backwards, zero_output_for_mask, masked)(params, x, init, mask)
            _close(got, want, "grad32")
        if masked:  # padded inputs get exactly zero gradient
            assert np.all(np.asarray(got[1][1])[~np.asarray(mask)] == 0.0), pattern


# ------------------------------------------------------------------------------------------------------
# Dispatch: which masks take the kernel, on which platform, with which setting
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_kernel_runs_only_for_one_run_masks(pattern):
    params, x, init = _setup(5)
    mask = PATTERNS[pattern]
    spied = _run(params, x, mask, init, True, kernel=_spy)
    scanned = _run(params, x, mask, init, False)
    took_kernel = not np.allclose(np.asarray(spied[2][1]), np.asarray(scanned[2][1]))
    # all_masked runs the kernel too, but every row's result is discarded (the initial state is kept)
    assert took_kernel == (pattern in ONE_RUN + ["none"] and pattern != "all_masked")
    if pattern in ("holes", "all_masked"):
        _close(spied, scanned)


def test_auto_never_takes_the_path_on_cpu():
    params, x, init = _setup(6)
    mask = PATTERNS["post"]
    assert jax.default_backend() == "cpu"
    _close(_run(params, x, mask, init, "auto", kernel=_spy), _run(params, x, mask, init, False))
    jaxpr = str(jax.make_jaxpr(lambda x: F.masked_scan(F.lstm_cell(), params, x, jnp.asarray(mask), init))(x))
    assert "platform_index" not in jaxpr and "cond" not in jaxpr


@pytest.mark.parametrize("platform, takes", [("cpu", True), ("cuda", False)])
def test_platform_dispatch_is_decided_at_lowering_and_differentiates(platform, takes):
    """``lax.platform_dependent`` as "auto" uses it, with CPU standing in for CUDA: values and gradients."""
    params, x, init = _setup(7)
    mask = jnp.asarray(PATTERNS["pre"])

    def loss(params, x, init, kernel, platforms):
        def scan():
            return F.masked_scan(F.lstm_cell(), params, x, mask, init, use_cudnn=False)

        out, _, (h, c) = cudnn.masked_lstm(kernel, params, x, mask, init, scan=scan, platforms=platforms)
        return jnp.sum(out**2) + jnp.sum(h * c)

    def scan_loss(params, x, init):
        out, _, (h, c) = F.masked_scan(F.lstm_cell(), params, x, mask, init, use_cudnn=False)
        return jnp.sum(out**2) + jnp.sum(h * c)

    spied = jax.jit(loss, static_argnums=(3, 4))(params, x, init, _spy, (platform,))
    assert (not np.isclose(spied, scan_loss(params, x, init))) == takes
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=(3, 4))
    _close(grad(params, x, init, REF, (platform,)), jax.grad(scan_loss, argnums=(0, 1, 2))(params, x, init), "grad32")


@pytest.mark.slow
def test_path_under_vmap_of_a_batch_of_masks():
    params, x, init = _setup(8)
    masks = jnp.asarray(np.stack([PATTERNS["post"], PATTERNS["holes"], PATTERNS["pre"]]))

    def f(mask, use_cudnn):
        return F.masked_scan(F.lstm_cell(), params, x, mask, init, use_cudnn=use_cudnn, cudnn_kernel=REF)

    _close(jax.vmap(lambda m: f(m, True))(masks), jax.vmap(lambda m: f(m, False))(masks))


# ------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------


def test_bad_use_cudnn_value():
    params, x, init = _setup()
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=r"`use_cudnn` must be 'auto', True or False .*received"):
            F.masked_scan(F.lstm_cell(), params, x, None, init, use_cudnn=bad)


def test_use_cudnn_true_raises_where_the_path_cannot_run():
    params, x, init = _setup()
    with pytest.raises(ValueError, match=r"use_cudnn=True was given, but no CUDA GPU .*use_cudnn='auto'"):
        F.masked_scan(F.lstm_cell(), params, x, None, init, use_cudnn=True)
    with pytest.raises(ValueError, match=r"only the LSTM with activation='tanh'.*received the 'lstm' cell"):
        F.masked_scan(F.lstm_cell("relu"), params, x, None, init, use_cudnn=True, cudnn_kernel=REF)
    with pytest.raises(ValueError, match=r"only the LSTM .*received the 'gru' cell"):
        gru = {"kernel": params["kernel"][:, : 3 * H], "recurrent_kernel": params["recurrent_kernel"][:, : 3 * H]}
        F.masked_scan(F.gru_cell(), gru, x, None, init[:1], use_cudnn=True, cudnn_kernel=REF)
    with pytest.raises(ValueError, match=r"no recurrent dropout"):
        F.masked_scan(F.lstm_cell(), params, x, None, init, use_cudnn=True, cudnn_kernel=REF,
                      recurrent_dropout=jnp.ones((B, H)))
    with pytest.raises(ValueError, match=r"float32 only; received x of dtype bfloat16"):
        F.masked_scan(F.lstm_cell(), params, x.astype(jnp.bfloat16), None, init, use_cudnn=True, cudnn_kernel=REF)


def test_auto_falls_back_silently_where_the_path_cannot_run():
    params, x, init = _setup()
    mask = jnp.asarray(PATTERNS["post"])
    got = F.masked_scan(F.lstm_cell(), params, x, mask, init, recurrent_dropout=jnp.ones((B, H)),
                        use_cudnn="auto", cudnn_kernel=_spy)
    _close(got, F.masked_scan(F.lstm_cell(), params, x, mask, init, use_cudnn=False))


def test_layer_use_cudnn_argument():
    from flax import nnx

    import jaxmask as jm

    with pytest.raises(ValueError, match=r"`use_cudnn` must be 'auto', True or False .*received 'yes'"):
        jm.nn.LSTM(FEAT, H, use_cudnn="yes", rngs=nnx.Rngs(0))
    layer = jm.nn.LSTM(FEAT, H, use_cudnn=True, rngs=nnx.Rngs(0))
    assert jm.nn.Bidirectional(layer).backward_layer.use_cudnn is True
    with pytest.raises(ValueError, match=r"use_cudnn=True was given, but no CUDA GPU"):
        layer(jnp.ones((2, 5, FEAT)))


def _custom_vjp_kernel():
    """The reference kernel behind a ``jax.custom_vjp`` with integer lengths, as ``jax.experimental.rnn.lstm``
    is built: checks that its VJP survives the ``lax.cond`` / ``platform_dependent`` the path wraps it in."""

    @jax.custom_vjp
    def kernel(x, h0, c0, w, u, b, lengths):
        return REF(x, h0, c0, w, u, b, lengths)

    def fwd(x, h0, c0, w, u, b, lengths):
        out, pullback = jax.vjp(lambda *a: REF(*a, lengths), x, h0, c0, w, u, b)
        return out, (pullback, lengths)

    def bwd(res, cotangents):
        pullback, lengths = res
        return (*pullback(cotangents), np.zeros(lengths.shape, jax.dtypes.float0))

    kernel.defvjp(fwd, bwd)
    return kernel


def test_custom_vjp_kernel_gradients_through_cond_and_platform_dispatch():
    params, x, init = _setup(9)
    mask = jnp.asarray(PATTERNS["mixed_post_pre"])
    kernel = _custom_vjp_kernel()

    def loss(params, x, init, use_path):
        def scan():
            return F.masked_scan(F.lstm_cell(), params, x, mask, init, use_cudnn=False)

        if use_path:
            out, last, (h, c) = cudnn.masked_lstm(kernel, params, x, mask, init, scan=scan, platforms=("cpu",))
        else:
            out, last, (h, c) = scan()
        return jnp.sum(out**2) + jnp.sum(last) + jnp.sum(h * c)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    _close(grad(params, x, init, True), grad(params, x, init, False), "grad32")


@pytest.mark.slow
def test_gpu_benchmark_dry_run(tmp_path):
    """``benchmarks/gpu.py --dry-run`` runs end to end on CPU and writes its JSON and markdown."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    out = subprocess.run([sys.executable, str(script), "--dry-run", "--out", str(tmp_path), "--budget-s", "900",
                          "--peers", "jaxmask-scan", "jaxmask-cudnn-pre", "keras3-jax"],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    report = json.loads((tmp_path / "gpu-dry-run.json").read_text())
    assert (tmp_path / "gpu-dry-run.md").read_text().startswith("# GPU benchmark (DRY RUN")
    eq = [r for r in report["records"] if r["kind"] == "equality"]
    assert {r["mask"] for r in eq if r["cell"] == "lstm-cudnn"} == {"post", "pre", "holes", "window", "none"}
    assert all(r["ok"] for r in eq)
    (dispatch,) = [r for r in report["records"] if r["kind"] == "dispatch"]
    assert not dispatch["auto_calls_cudnn_on_cpu"] and not dispatch["auto_calls_cudnn_on_test_device"]
    timed = {r["peer"] for r in report["records"] if r["kind"] == "timing" and "train_ms" in r}
    assert {"jaxmask-scan", "jaxmask-cudnn-pre"} <= timed
