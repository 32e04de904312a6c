"""cuDNN fast path for the masked standard LSTM on GPU, through ``jax.experimental.rnn``.

cuDNN runs an LSTM over variable-length, right-padded sequences: each row b runs its first ``L_b`` steps
and stops, and ``h_n, c_n`` are the states after step ``L_b - 1``. A Keras mask is more general, so the
path is taken only when every row's valid steps form **one contiguous run** (checked on device, the mask
being a traced array): post-padding (the run starts at 0), pre-padding (it ends at T - 1), a fully
valid or a fully masked row. In processed order (after ``go_backwards``'s flip), with ``s_b`` the first
valid step of row b and ``L_b`` its number of valid steps, each row is rolled left by ``s_b`` so its run
comes first, the kernel runs ``max(L_b, 1)`` steps, and the outputs are rolled back:

.. math::
    \\tilde x_{b,t} = x_{b,(t + s_b) \\bmod T},\\quad (Y, h_n, c_n) = \\text{cuDNN}(\\tilde x, h_0, c_0, L),
    \\quad h_{b,t} = \\begin{cases} Y_{b,t - s_b} & s_b \\le t < s_b + L_b \\\\
    h_{0,b} & t < s_b \\text{ or } L_b = 0 \\\\ h_{n,b} & t \\ge s_b + L_b \\end{cases}

``h_{b,t}`` is the held state :func:`jaxmask.functional.rnn.masked_scan` carries, and the outputs follow
from it by the same Keras rules (held previous output, 0 before the first valid step or the initial h
with ``initial_output="initial_state"``, or 0 at every masked step with ``zero_output_for_mask``). A fully
masked row (``L_b = 0``) keeps its initial state; the kernel's step on it is discarded, so no gradient
reaches it. A mask with holes (two runs or more) runs the scan instead, inside a ``lax.cond``: the
answer is the same on every mask, only the speed differs. Gradients go through the kernel's own VJP.

Not taken (the scan runs): GRU and SimpleRNN (``jax.experimental.rnn`` has only the LSTM), activations
other than tanh / sigmoid, recurrent dropout (cuDNN has no per-sample recurrent mask; input dropout is
applied to x first), inputs, parameters or states that are not float32 (the kernel's only dtype).

Keras equivalent: ``keras.layers.LSTM(..., use_cudnn="auto")``; Keras takes cuDNN only for right-padded
masks on the TF backend and never under a mask on the JAX backend, and its cuDNN path outputs zeros at
padded steps and fails on fully masked rows. This path keeps Keras' CPU answer on every mask.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# A kernel: (x [B, T, F], h0 [B, H], c0 [B, H], kernel [F, 4H], recurrent_kernel [H, 4H], bias [4H],
# lengths int32 [B] with 1 <= lengths <= T) -> (y [B, T, H], h_n [B, H], c_n [B, H]). Rows run their first
# ``lengths[b]`` steps; y past them is ignored; h_n, c_n are the states after step lengths[b] - 1.
Kernel = Callable[..., tuple[Array, Array, Array]]

USE_CUDNN_CHOICES = ("auto", True, False)


def cudnn_lstm_kernel(x, h0, c0, kernel, recurrent_kernel, bias, lengths):
    """The cuDNN LSTM of ``jax.experimental.rnn`` (CUDA only) with Keras weights.

    cuDNN's gate order (i, f, g, o) is Keras' (i, f, c, o); its weights are W_ih = kernelᵀ [4H, F] and
    W_hh = recurrent_kernelᵀ [4H, H], its two biases b_ih = bias and b_hh = 0. TF32 is allowed unless the
    default matmul precision is "highest" (``jax.default_matmul_precision("highest")``).
    """
    from jax.experimental import rnn as jrnn

    n_in, n_units = x.shape[-1], h0.shape[-1]
    w = jnp.concatenate([kernel.T.ravel(), recurrent_kernel.T.ravel(), bias, jnp.zeros_like(bias)])
    y, h_n, c_n = jrnn.lstm(
        x, h0[None], c0[None], w, lengths,
        input_size=n_in, hidden_size=n_units, num_layers=1, dropout=0.0, bidirectional=False,
    )
    return y, h_n[0], c_n[0]


def reference_lstm_kernel(x, h0, c0, kernel, recurrent_kernel, bias, lengths):
    """``jax.experimental.rnn.lstm_ref`` (a ``lax.scan``, any device) behind the kernel interface: the
    stand-in that tests the path's roll and dispatch logic on CPU."""
    from jax.experimental import rnn as jrnn

    n_in, n_units = x.shape[-1], h0.shape[-1]
    y, h_n, c_n = jrnn.lstm_ref(
        x, h0[None], c0[None], {0: kernel.T}, {0: recurrent_kernel.T}, {0: bias}, {0: jnp.zeros_like(bias)},
        lengths, n_in, n_units, 1, 0.0, False,
    )
    return y, h_n[0], c_n[0]


def check_use_cudnn(use_cudnn) -> None:
    """Raise ``ValueError`` unless ``use_cudnn`` is ``"auto"``, ``True`` or ``False`` (Keras' values)."""
    if not any(use_cudnn is c or (isinstance(c, str) and use_cudnn == c) for c in USE_CUDNN_CHOICES):
        raise ValueError(
            f"`use_cudnn` must be 'auto', True or False (Keras' values); received {use_cudnn!r}. "
            "Pass use_cudnn='auto' to take cuDNN on GPU where it applies."
        )


def unsupported(cell_name: str, params: dict, x, initial_state, recurrent_dropout) -> str | None:
    """Why the cuDNN path cannot run this configuration (a sentence), or ``None`` when it can.

    Only static properties are checked here (cell, dtypes, dropout); the mask is checked on device.
    """
    if cell_name != "lstm_standard":
        return (
            "cuDNN runs only the LSTM with activation='tanh' and recurrent_activation='sigmoid'; "
            f"received the {cell_name!r} cell"
        )
    if recurrent_dropout is not None:
        return "cuDNN has no recurrent dropout; received recurrent_dropout > 0"
    arrays = {"x": x, "kernel": params["kernel"], "recurrent_kernel": params["recurrent_kernel"]}
    if params.get("bias") is not None:
        arrays["bias"] = params["bias"]
    arrays.update({f"initial_state[{i}]": s for i, s in enumerate(initial_state)})
    for name, a in arrays.items():
        if jnp.dtype(a.dtype) != jnp.float32:
            return f"the cuDNN LSTM of jax.experimental.rnn takes float32 only; received {name} of dtype {a.dtype}"
    return None


def _cuda_available() -> bool:
    try:
        from jax._src.lib import gpu_rnn
    except ImportError:
        return False
    if gpu_rnn is None:
        return False
    for backend in ("cuda", "gpu"):  # the CUDA plugin's name, then the generic one (ROCm also answers "gpu")
        try:
            devices = jax.devices(backend)
        except RuntimeError:
            continue
        if devices and "rocm" not in str(getattr(devices[0].client, "platform_version", "")).lower():
            return True
    return False


def plan(use_cudnn, cell_name, params, x, initial_state, recurrent_dropout, kernel: Kernel | None):
    """Decide statically how :func:`masked_lstm` is used: returns ``(kernel, platforms)`` or ``None`` (scan).

    ``"auto"`` takes the path only where a CUDA backend exists, through ``lax.platform_dependent`` so the
    choice is made at lowering: a computation placed on the CPU of a GPU machine still runs the scan.
    ``True`` takes it on any backend with an injected ``kernel`` (tests), and otherwise needs a GPU.

    Raises:
      ValueError: ``use_cudnn`` is not a Keras value, or ``use_cudnn=True`` where the path cannot run.
    """
    check_use_cudnn(use_cudnn)
    if use_cudnn is False:
        return None
    reason = unsupported(cell_name, params, x, initial_state, recurrent_dropout)
    if use_cudnn is True:
        if reason is None and kernel is None and not _cuda_available():
            reason = f"no CUDA GPU with cuDNN is available (default backend {jax.default_backend()!r})"
        if reason is not None:
            raise ValueError(
                f"use_cudnn=True was given, but {reason}. Pass use_cudnn='auto' to fall back to the scan "
                "where cuDNN does not apply."
            )
        return (kernel or cudnn_lstm_kernel), None
    if reason is not None:
        return None
    if kernel is None:
        return (cudnn_lstm_kernel, ("cuda",)) if _cuda_available() else None
    return kernel, ("cuda",)


def one_run(mask: Array) -> Array:
    """bool scalar: every row of ``mask`` [B, T] has at most one contiguous run of valid steps."""
    m = mask.astype(bool)
    starts = m & ~jnp.pad(m[:, :-1], ((0, 0), (1, 0)))  # a valid step after a masked one (or at t = 0)
    return jnp.all(jnp.sum(starts, axis=1, dtype=jnp.int32) <= 1)


def masked_lstm(
    kernel: Kernel,
    params: dict,
    x: Array,
    mask: Array | None,
    initial_state: tuple[Array, Array],
    *,
    scan: Callable[[], tuple[Array, Array, tuple[Array, ...]]],
    go_backwards: bool = False,
    zero_output_for_mask: bool = False,
    initial_output: str = "zeros",
    input_dropout: Array | None = None,
    platforms: tuple[str, ...] | None = None,
) -> tuple[Array, Array, tuple[Array, Array]]:
    """The masked standard LSTM through ``kernel`` where the mask allows it, else ``scan()``.

    Args:
      kernel: :func:`cudnn_lstm_kernel`, :func:`reference_lstm_kernel` or another with their interface.
      params: ``{"kernel" [F, 4H], "recurrent_kernel" [H, 4H], "bias" [4H]?}``.
      x: [B, T, F]; mask: bool [B, T] or None; initial_state: (h0, c0), each [B, H].
      scan: the zero-argument fallback, :func:`jaxmask.functional.rnn.masked_scan` on the same
        arguments; it runs for masks with holes, and on platforms outside ``platforms``.
      go_backwards, zero_output_for_mask, initial_output, input_dropout: as in ``masked_scan``.
      platforms: lowering platforms on which to take the path (``lax.platform_dependent``), or None
        to take it wherever the computation runs.

    Returns:
      ``(outputs [B, T, H], last_output [B, H], (h, c))`` exactly as ``masked_scan`` returns them.
    """
    h0, c0 = initial_state
    if mask is not None:
        x = jnp.where(mask[:, :, None], x, jnp.zeros((), x.dtype))
    if input_dropout is not None:
        x = x * input_dropout[:, None, :]
    if go_backwards:
        x = jnp.flip(x, axis=1)
        mask = None if mask is None else jnp.flip(mask, axis=1)
    w, u = params["kernel"], params["recurrent_kernel"]
    bias = params.get("bias")
    bias = jnp.zeros((w.shape[1],), w.dtype) if bias is None else bias

    if mask is None:

        def run():
            lengths = jnp.full((x.shape[0],), x.shape[1], jnp.int32)
            y, h_n, c_n = kernel(x, h0, c0, w, u, bias, lengths)
            return y, y[:, -1], (h_n, c_n)

    else:

        def fast():
            return _rolled(kernel, x, mask, h0, c0, w, u, bias, zero_output_for_mask, initial_output)

        def run():
            return lax.cond(one_run(mask), fast, scan)

    if platforms is None:
        return run()
    return lax.platform_dependent(**{p: run for p in platforms}, default=scan)


def _rolled(kernel, x, mask, h0, c0, w, u, bias, zero_output_for_mask, initial_output):
    """The kernel on rows rolled so that their one run of valid steps comes first (processed order)."""
    t = x.shape[1]
    m = mask.astype(bool)
    lengths = jnp.sum(m, axis=1, dtype=jnp.int32)  # [B]
    start = jnp.argmax(m, axis=1).astype(jnp.int32)  # first valid step; 0 for a fully masked row
    steps = jnp.arange(t, dtype=jnp.int32)[None, :]  # [1, T]
    forward = (steps + start[:, None]) % t  # [B, T]
    x_r = jnp.take_along_axis(x, forward[:, :, None], axis=1)
    y, h_n, c_n = kernel(x_r, h0, c0, w, u, bias, jnp.maximum(lengths, 1))
    ran = (lengths > 0)[:, None]  # [B, 1]
    h_n = jnp.where(ran, h_n, h0)
    c_n = jnp.where(ran, c_n, c0)
    back = (steps - start[:, None]) % t
    y = jnp.take_along_axis(y, back[:, :, None], axis=1)  # [B, T, H], valid where m
    valid = m[:, :, None]
    zero = jnp.zeros((), y.dtype)
    if zero_output_for_mask:
        outputs = jnp.where(valid, y, zero)
    else:
        before = ((steps < start[:, None]) | ~ran)[:, :, None]  # no valid step yet
        held = jnp.where(before, h0[:, None, :], h_n[:, None, :])
        outputs = jnp.where(valid, y, held)
        if initial_output == "zeros":
            outputs = jnp.where(before, zero, outputs)
    return outputs, outputs[:, -1], (h_n, c_n)
