"""Keras-exact masked recurrence: activations, the LSTM / GRU / SimpleRNN cells and the one scan driver.

Every function here is pure (arrays and param dicts in, arrays out), jit-able, vmap-able and
differentiable. Weights use Keras names and layouts (H = units, F = input features):

====================  ==================  ==========================  ==========================
cell                  ``kernel``          ``recurrent_kernel``        ``bias``
====================  ==================  ==========================  ==========================
LSTM (gates i,f,c,o)  [F, 4H]             [H, 4H]                     [4H]
GRU  (gates z,r,h)    [F, 3H]             [H, 3H]                     [2, 3H] (reset_after) / [3H]
SimpleRNN             [F, H]              [H, H]                      [H]
====================  ==================  ==========================  ==========================

What a masked step does (Keras semantics, TF backend): every state is held, and the output is the
previous step's output (``zero_output_for_mask=False``; 0 before the first valid step) or zeros
(``zero_output_for_mask=True``). Padded inputs are replaced by 0 before they reach a cell, so NaN or
Inf written into padding changes neither the outputs at valid steps nor any gradient.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxmask.functional import cudnn
from jaxmask.functional import fused as fused_lstm

Array = jax.Array

# --------------------------------------------------------------------------------------------------
# Activations by Keras name
# --------------------------------------------------------------------------------------------------


def _hard_sigmoid(x):
    """Keras 3: relu6(x + 3) / 6."""
    return jnp.clip(x / 6.0 + 0.5, 0.0, 1.0)


def _hard_sigmoid_legacy(x):
    """Keras <= 2.2 (the seed's era): clip(0.2 x + 0.5, 0, 1)."""
    return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "linear": lambda x: x,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "hard_sigmoid_legacy": _hard_sigmoid_legacy,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "exponential": jnp.exp,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "log_softmax": lambda x: jax.nn.log_softmax(x, axis=-1),
    "hard_silu": jax.nn.hard_silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
}


def get_activation(name: str | None, argument: str = "activation") -> Callable[[Array], Array]:
    """Return the Keras activation called ``name`` (``None`` means linear).

    ``"hard_sigmoid"`` is Keras 3's ``relu6(x + 3) / 6``; ``"hard_sigmoid_legacy"`` is Keras <= 2.2's
    ``clip(0.2 x + 0.5, 0, 1)``.

    Raises:
      ValueError: ``name`` is not a known activation; the message names ``argument``.
    """
    if name is None:
        return ACTIVATIONS["linear"]
    if callable(name):
        return name
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"`{argument}` must be one of {sorted(ACTIVATIONS)} or a callable; received {name!r}."
        ) from None


# --------------------------------------------------------------------------------------------------
# Cells. A cell is an input projection `project(params, x_t[B, F]) -> [B, G]` and a recurrence
# `step(params, carry, xp_t[B, G], h_dropout[B, H] | None) -> (carry, output[B, H])`. The projection runs
# inside the loop: hoisting it out as one [T·B, F] x [F, G] matmul was 1.6x slower per GRU train step on
# XLA:CPU (small F makes that matmul slow, and its [T, B, G] result must be stored; benchmarks A/B).
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cell:
    """A recurrent cell: its state names, its input projection and its step function."""

    name: str
    state_names: tuple[str, ...]
    project: Callable
    step: Callable


def _bias(params, index=None):
    b = params.get("bias")
    if b is None:
        return None
    return b if index is None else b[index]


def _matmul(a, w):
    """a @ w. With half-precision weights and a wider ``a`` (a bfloat16 compute policy, a float32 state),
    ``a`` is cast to the weights' dtype and the product accumulates in a's: bfloat16 operands, float32 sums."""
    if a.dtype == w.dtype or jnp.finfo(w.dtype).bits > 16:
        return a @ w
    return jnp.matmul(a.astype(w.dtype), w, preferred_element_type=jnp.promote_types(a.dtype, w.dtype))


def _project(params, x, index=None):
    """One step's input projection x @ kernel (+ input bias): [B, F] -> [B, G]."""
    z = _matmul(x, params["kernel"])
    bias = _bias(params, index)
    return z if bias is None else z + bias[None, :]


def _recurrent_input(h, h_dropout):
    return h if h_dropout is None else h * h_dropout


def lstm_cell(activation="tanh", recurrent_activation="sigmoid") -> Cell:
    """Keras LSTM cell: z = x W + h U + b; i, f, o = σ(z_i, z_f, z_o); c' = f c + i tanh(z_c); h' = o tanh(c')."""
    act = get_activation(activation, "activation")
    rec = get_activation(recurrent_activation, "recurrent_activation")

    def step(params, carry, xp, h_dropout):
        h, c = carry
        z = xp + _matmul(_recurrent_input(h, h_dropout), params["recurrent_kernel"])
        zi, zf, zc, zo = jnp.split(z, 4, axis=-1)
        c = rec(zf) * c + rec(zi) * act(zc)
        h = rec(zo) * act(c)
        return (h, c), h

    standard = activation == "tanh" and recurrent_activation == "sigmoid"
    return Cell("lstm_standard" if standard else "lstm", ("h", "c"), _project, step)


def gru_cell(activation="tanh", recurrent_activation="sigmoid", reset_after=True) -> Cell:
    """Keras GRU cell (gates z, r, h). reset_after=True (Keras default, bias [2, 3H]):
    ĥ = tanh(x W_h + b_h + r ⊙ (h U_h + b'_h)); reset_after=False (bias [3H]): ĥ = tanh(x W_h + b_h + (r ⊙ h) U_h).
    Both: h' = z ⊙ h + (1 - z) ⊙ ĥ."""
    act = get_activation(activation, "activation")
    rec = get_activation(recurrent_activation, "recurrent_activation")

    def project(params, x):
        return _project(params, x, 0 if reset_after else None)

    def step(params, carry, xp, h_dropout):
        (h,) = carry
        hd = _recurrent_input(h, h_dropout)
        xz, xr, xh = jnp.split(xp, 3, axis=-1)
        u = params["recurrent_kernel"]
        if reset_after:
            inner = _matmul(hd, u)
            b = _bias(params, 1)
            if b is not None:
                inner = inner + b[None, :]
            iz, ir, ih = jnp.split(inner, 3, axis=-1)
            z = rec(xz + iz)
            r = rec(xr + ir)
            hh = act(xh + r * ih)
        else:
            n = u.shape[0]
            inner = _matmul(hd, u[:, : 2 * n])
            iz, ir = jnp.split(inner, 2, axis=-1)
            z = rec(xz + iz)
            r = rec(xr + ir)
            hh = act(xh + _matmul(r * hd, u[:, 2 * n :]))
        h = z * h + (1.0 - z) * hh
        return (h,), h

    return Cell("gru", ("h",), project, step)


def simple_rnn_cell(activation="tanh") -> Cell:
    """Keras SimpleRNN cell: h' = tanh(x W + b + h U)."""
    act = get_activation(activation, "activation")

    def step(params, carry, xp, h_dropout):
        (h,) = carry
        h = act(xp + _matmul(_recurrent_input(h, h_dropout), params["recurrent_kernel"]))
        return (h,), h

    return Cell("simple_rnn", ("h",), _project, step)


# --------------------------------------------------------------------------------------------------
# The one masked scan driver
# --------------------------------------------------------------------------------------------------


def masked_scan(
    cell: Cell,
    params: dict,
    x: Array,
    mask: Array | None,
    initial_state: tuple[Array, ...],
    *,
    go_backwards: bool = False,
    zero_output_for_mask: bool = False,
    initial_output: str = "zeros",
    input_dropout: Array | None = None,
    recurrent_dropout: Array | None = None,
    unroll: int | bool = 1,
    fused: bool = True,
    remat: bool = False,
    use_cudnn: bool | str = "auto",
    cudnn_kernel: Callable | None = None,
) -> tuple[Array, Array, tuple[Array, ...]]:
    """Run ``cell`` over time under a mask, exactly as Keras' ``backend.rnn`` does.

    .. math::
        s_t = \\text{cell}(s_{t-1}, x_t) \\text{ if } m_t \\text{ else } s_{t-1}, \\qquad
        y_t = h_t \\text{ if } m_t \\text{ else } (0 \\text{ if zero\\_output\\_for\\_mask else } y_{t-1})

    with y_{-1} = 0. Because every cell's output is its h and h is held at masked steps, the masked
    outputs are derived after the scan from the held states: y_t = h_t once any step up to t was valid.

    Args:
      cell: from :func:`lstm_cell`, :func:`gru_cell` or :func:`simple_rnn_cell`.
      params: ``{"kernel", "recurrent_kernel", "bias"?}`` in Keras layout.
      x: [B, T, F] inputs.
      mask: bool [B, T] (True = valid step) or None.
      initial_state: one [B, H] array per ``cell.state_names``.
      go_backwards: process the whole padded sequence reversed (padding included) and return the
        outputs in processed, i.e. reversed, order (Keras' behaviour).
      zero_output_for_mask: output 0 at masked steps instead of the previous output.
      initial_output: what a masked step outputs before any valid step when
        ``zero_output_for_mask=False``: ``"zeros"`` (Keras TF backend) or ``"initial_state"`` (the
        initial h, as Keras' JAX backend does).
      input_dropout: [B, F] mask, already scaled by 1 / (1 - rate), multiplied into every step's input.
      recurrent_dropout: [B, H] scaled mask multiplied into h before the recurrent matmul.
      unroll: passed to ``lax.scan``.
      fused: use the hand-written VJP of :mod:`jaxmask.functional.fused` for the standard LSTM
        (same numbers, faster gradients); ``False`` differentiates the plain scan.
      remat: recompute gates in the backward pass instead of storing them (fused LSTM only; for
        very long sequences).
      use_cudnn: ``"auto"`` (Keras' default) runs the standard LSTM through cuDNN when lowered for a CUDA
        GPU and the mask has one contiguous run of valid steps per row (post- or pre-padding; holes run
        the scan); never on CPU. ``True`` requires the path (``ValueError`` where it cannot run),
        ``False`` never takes it. Same numbers either way: see :mod:`jaxmask.functional.cudnn`.
      cudnn_kernel: stand-in for the cuDNN kernel (tests: ``cudnn.reference_lstm_kernel`` on CPU).

    Returns:
      ``(outputs [B, T, H], last_output [B, H], final_state)`` where ``last_output = outputs[:, -1]``
      (0 under post-padding with ``zero_output_for_mask=True``, as Keras) and ``final_state`` holds the
      state of the last valid step.

    Raises:
      ValueError: ``use_cudnn`` is not ``"auto"``, True or False, or is True where cuDNN cannot run.
    """
    path = cudnn.plan(use_cudnn, cell.name, params, x, initial_state, recurrent_dropout, cudnn_kernel)
    if path is not None:
        options = dict(go_backwards=go_backwards, zero_output_for_mask=zero_output_for_mask,
                       initial_output=initial_output, input_dropout=input_dropout)
        scan = functools.partial(masked_scan, cell, params, x, mask, initial_state, **options, unroll=unroll,
                                 fused=fused, remat=remat, use_cudnn=False)
        return cudnn.masked_lstm(path[0], params, x, mask, tuple(initial_state), scan=scan, platforms=path[1],
                                 **options)
    if mask is not None:
        x = jnp.where(mask[:, :, None], x, jnp.zeros((), x.dtype))
    if input_dropout is not None:
        x = x * input_dropout[:, None, :]
    x = jnp.swapaxes(x, 0, 1)  # [T, B, F]
    mask_t = None if mask is None else jnp.swapaxes(mask, 0, 1)  # [T, B]
    if go_backwards:
        x = jnp.flip(x, axis=0)
        mask_t = None if mask_t is None else jnp.flip(mask_t, axis=0)
    carry0 = tuple(initial_state)

    same_dtype = x.dtype == params["kernel"].dtype == carry0[0].dtype  # mixed precision runs the generic scan
    if fused and cell.name == "lstm_standard" and same_dtype:
        scan = fused_lstm.lstm_scan(mask_t is not None, recurrent_dropout is not None, unroll, remat)
        w = jnp.concatenate([params["kernel"], params["recurrent_kernel"]], axis=0)
        b = params.get("bias")
        b = jnp.zeros((w.shape[1],), w.dtype) if b is None else b
        unused = jnp.zeros((), bool)
        hs, h_t, c_t = scan(
            w, b, x, unused if mask_t is None else mask_t, carry0[0], carry0[1],
            unused if recurrent_dropout is None else recurrent_dropout,
        )
        final = (h_t, c_t)
    else:

        def body(carry, inputs):
            x_t, m_t = inputs
            new_carry, _ = cell.step(params, carry, cell.project(params, x_t), recurrent_dropout)
            if m_t is not None:
                keep = m_t[:, None]
                new_carry = tuple(jnp.where(keep, n, o) for n, o in zip(new_carry, carry))
            return new_carry, new_carry[0]

        final, hs = lax.scan(body, carry0, (x, mask_t), unroll=unroll)

    if mask_t is not None:
        if zero_output_for_mask:
            hs = jnp.where(mask_t[:, :, None], hs, jnp.zeros((), hs.dtype))
        elif initial_output == "zeros":
            seen = jnp.cumsum(mask_t, axis=0, dtype=jnp.int32) > 0
            hs = jnp.where(seen[:, :, None], hs, jnp.zeros((), hs.dtype))
    return jnp.swapaxes(hs, 0, 1), hs[-1], final
