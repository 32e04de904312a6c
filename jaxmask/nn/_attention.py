"""Attention layers with Keras' weights and mask semantics: MultiHeadAttention, Attention (Luong, dot or
"concat" scores) and AdditiveAttention (Bahdanau).

How masks become an attention mask (verified on Keras 3.15.1, TF and JAX backends, and tf_keras 2.21):

- ``MultiHeadAttention``: the boolean [B, T, S] mask is the AND of the query mask as [B, T, 1], the value mask as
  [B, 1, S], the key mask as [B, 1, S], the causal mask [1, T, S] (key ``s`` allowed for query ``t`` iff ``s <= t``)
  and the explicit ``attention_mask``. A padded *query* therefore gets a row with no allowed key. Keras passes the
  query mask on as the output mask; the attention scores carry no mask.
- ``Attention`` / ``AdditiveAttention``: only the value mask (and the causal mask) enters the scores; a padded query
  step's output is set to 0 afterwards. The output mask is the query mask.

What a row with no allowed key gets, in the softmax over ``S`` (the libraries differ; ``semantics`` picks one):

==============================  =======================================================================
Keras 3 MHA, dropout == 0 and   ``softmax(where(m, s, -big))``: uniform weights 1/S over *every* key, padded
no scores returned (its fused   ones included (the output there is the mean of the projected values).
``dot_product_attention``)
Keras 3 MHA, dropout > 0 or     the same, then ``where(m, p, 0)``: all weights 0 (the output there is the
``return_attention_scores``     output projection's bias), even in inference.
tf_keras MHA                    ``softmax(s + (1 - m)(-1e9))`` (float32): uniform for |s| < 32; with
                                ``softmax_robust_masking=True`` ``softmax(where(m, s, -1e9))``, uniform.
Attention, AdditiveAttention    ``softmax(where(m, s, s - 1e9))`` in both libraries (uniform for |s| < 32).
==============================  =======================================================================

jaxmask reproduces each rule, values and gradients to float32 rounding (``semantics="keras3"`` or
``"tf_keras"``); none of them gives NaN, so neither does jaxmask. Rows with at least one allowed key agree in every
variant: masked keys get weight exactly 0. Values at padded steps do enter the uniform rows, as in Keras; a
non-finite value there therefore propagates (``0 · NaN``), again as in Keras.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmask._checks import check_mask
from jaxmask.nn._core import Layer, dropout_keep_mask, rng_stream

NEG = -1e9  # Keras' "large negative" logit for masked keys (Softmax layer, Attention layers, tf_keras)
SEMANTICS = ("keras3", "tf_keras")


# ------------------------------------------------------------------------------------------------ pure functions


def masked_softmax(logits, valid=None, *, masked_logits: str = "replace", fully_masked: str = "uniform"):
    """Softmax over the last axis of ``logits`` with keys excluded where ``valid`` is False, as Keras computes it.

    .. math::
        \\text{replace: } p = \\operatorname{softmax}(\\text{where}(m, s, -10^9)) \\qquad
        \\text{subtract: } p = \\operatorname{softmax}(\\text{where}(m, s, s - 10^9))

    and with ``fully_masked="zeros"`` then ``p = where(m, p, 0)``. Excluded keys get weight exactly 0 in any row with
    an allowed key (``exp(-1e9)`` underflows in float32); a row with no allowed key gets 1/S everywhere
    ("replace"), ``softmax(s - 1e9)`` ("subtract": uniform for |s| < 32, float32 rounding beyond) or 0 ("zeros").
    Never NaN. Gradients flow into excluded logits with "subtract" only, as in Keras.

    Args:
      logits: float [..., T, S].
      valid: bool, broadcastable to ``logits`` with the same rank, True = allowed key; None = no mask.
      masked_logits: "replace" (Keras 3 MultiHeadAttention, tf_keras with softmax_robust_masking) or "subtract"
        (tf_keras MultiHeadAttention, Keras' Attention and AdditiveAttention).
      fully_masked: "uniform" (leave the softmax as it is) or "zeros" (Keras 3 MHA's non-fused path).

    Returns:
      float [..., T, S], the attention weights.
    """
    if valid is None:
        return jax.nn.softmax(logits, axis=-1)
    neg = jnp.asarray(NEG, logits.dtype)
    filled = jnp.where(valid, logits, neg if masked_logits == "replace" else logits + neg)
    p = jax.nn.softmax(filled, axis=-1)
    return jnp.where(valid, p, jnp.zeros((), p.dtype)) if fully_masked == "zeros" else p


def causal_mask(t: int, s: int) -> jax.Array:
    """bool [1, t, s]: key ``j`` allowed for query ``i`` iff ``j <= i`` (Keras' ``use_causal_mask``)."""
    return jnp.tril(jnp.ones((t, s), bool))[None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def attend(q, k, v, valid, scale: float, subtract: bool):
    """Softmax attention over [B, N, T, H] heads with Keras' masked logits and a hand-written gradient.

    .. math:: o = \frac{e\,v}{\sum_s e}, \quad e = \exp(z - \max_s z), \quad
        z = \text{where}(m, s q k^\top, \cdot)

    with the masked logit ``-1e9`` (``subtract=False``: Keras 3, tf_keras with softmax_robust_masking) or
    ``z - 1e9`` (``subtract=True``: tf_keras' default): the numbers of :func:`masked_softmax` followed by the
    weighted sum, normalised after the sum (over H values instead of S weights). The backward pass is the softmax
    gradient written out, ``ds = p (dp - Σ do·o)``, zero at masked logits unless ``subtract``, from the saved
    ``e`` and ``Σ e``: on XLA:CPU the train step of B=64, T=128, d=128, 4 heads is ~25% faster than autodiff of
    ``jax.nn.dot_product_attention`` (alternated in one process, benchmarks/attention.py).

    Args:
      q: [B, N, T, H] queries; k: [B, N, S, H] keys; v: [B, N, S, H_v] values.
      valid: bool broadcastable to [B, N, T, S], True = allowed key.
      scale: the logit scale (1 / sqrt(H) for MultiHeadAttention).
      subtract: the masked-logit rule (see above).

    Returns:
      [B, N, T, H_v].
    """
    return _attend_fwd(q, k, v, valid, scale, subtract)[0]


def _attend_fwd(q, k, v, valid, scale, subtract):
    qs = q * jnp.asarray(scale, q.dtype)
    z = jnp.einsum("bnth,bnsh->bnts", qs, k)
    neg = jnp.asarray(NEG, z.dtype)
    z = jnp.where(valid, z, z + neg if subtract else neg)
    e = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))
    total = jnp.sum(e, axis=-1, keepdims=True)
    o = jnp.einsum("bnts,bnsh->bnth", e, v) / total
    return o, (qs, k, v, valid, e, total, o)


def _attend_bwd(scale, subtract, residuals, do):
    qs, k, v, valid, e, total, o = residuals
    p = e / total
    dv = jnp.einsum("bnts,bnth->bnsh", p, do)
    dp = jnp.einsum("bnth,bnsh->bnts", do, v)
    ds = p * (dp - jnp.sum(do * o, axis=-1, keepdims=True))
    if not subtract:
        ds = jnp.where(valid, ds, jnp.zeros((), ds.dtype))
    dq = jnp.einsum("bnts,bnsh->bnth", ds, k) * jnp.asarray(scale, ds.dtype)
    dk = jnp.einsum("bnts,bnth->bnsh", ds, qs)
    return dq, dk, dv, None


attend.defvjp(_attend_fwd, _attend_bwd)


def _and(a, b):
    return b if a is None else (a if b is None else jnp.logical_and(a, b))


# ------------------------------------------------------------------------------------------------ input checks


def _sequence(x, name: str, layer: str, features: int | None = None):
    if not hasattr(x, "shape"):
        raise TypeError(f"{layer}: `{name}` must be an array [B, T, F]; received {type(x).__name__}.")
    x = jnp.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"{layer}: `{name}` must have rank 3 with layout [B, T, F]; received shape {x.shape}. "
                         "Only attention over the time axis of [B, T, F] sequences is supported.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{layer}: `{name}` must hold floating-point values (float32); received dtype {x.dtype}. Feed "
                        "token ids through jm.nn.Embedding first.")
    if features is not None and x.shape[-1] != features:
        raise ValueError(f"{layer}: `{name}` must have {features} features (its last axis, fixed when the layer was "
                         f"built); received shape {x.shape}.")
    return x


def _optional_mask(mask, batch_time, name):
    return None if mask is None else check_mask(mask, batch_time, name)


def _glorot_uniform(key, shape):
    """Keras' glorot_uniform with Keras' fans for kernels of any rank (``compute_fans``: the leading axes are the
    receptive field), U(-l, l) with l = sqrt(6 / (fan_in + fan_out))."""
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in = shape[-2] * receptive if len(shape) > 1 else shape[0]
    fan_out = shape[-1] * receptive
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    if isinstance(key, jax.core.Tracer):
        return jax.random.uniform(key, shape, jnp.float32, -limit, limit)
    # concrete key: draw on the host, as keras_init does (no compilation per new kernel shape)
    bits = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    rng = np.random.default_rng(np.asarray(bits, np.uint32).ravel())
    return jnp.asarray(rng.uniform(-limit, limit, shape), jnp.float32)


_INIT = {"glorot_uniform": _glorot_uniform, "zeros": lambda key, shape: jnp.zeros(shape, jnp.float32),
         "ones": lambda key, shape: jnp.ones(shape, jnp.float32)}


def _initializer(name, what):
    if name not in _INIT:
        raise ValueError(f"`{what}` must be one of {sorted(_INIT)}; received {name!r}. (Weights loaded from Keras "
                         "files or copied with parity.from_keras do not depend on it.)")
    return _INIT[name]


class EinsumDense(nnx.Module):
    """The projection of Keras' ``EinsumDense`` as MultiHeadAttention builds it: ``kernel`` of shape
    ``kernel_shape`` and ``bias`` of shape ``kernel_shape[n_in:]`` (the output axes).

    Both directions run as one 2-D matmul on reshaped operands (``[B·T, F] @ [F, N·H]``) plus an explicit transpose:
    on XLA:CPU that is ~1.5x faster in the train step than ``jnp.einsum`` with the 3-D kernel (measured with
    benchmarks/attention.py's shape, alternated in one process).
    """

    def __init__(self, kernel_shape, n_in: int, *, use_bias: bool, kernel_initializer, bias_initializer, rngs):
        self.kernel = nnx.Param(kernel_initializer(rngs.params(), tuple(kernel_shape)))
        self.bias = nnx.Param(bias_initializer(rngs.params(), tuple(kernel_shape[n_in:]))) if use_bias \
            else nnx.data(None)

    def _matmul(self, x2, k2):
        y = x2 @ k2
        return y if self.bias is None else y + self.bias[...].reshape(1, -1)

    def split_heads(self, x):
        """[B, T, F] -> [B, N, T, H]: ``einsum("btf,fnh->bnth", x, kernel) + bias``."""
        f, n, h = self.kernel.shape
        b, t, _ = x.shape
        y = self._matmul(x.reshape(b * t, f), self.kernel[...].reshape(f, n * h))
        return y.reshape(b, t, n, h).transpose(0, 2, 1, 3)

    def merge_heads(self, x):
        """[B, N, T, H] -> [B, T, F]: ``einsum("bnth,nhf->btf", x, kernel) + bias``."""
        n, h, f = self.kernel.shape
        b, _, t, _ = x.shape
        y = self._matmul(x.transpose(0, 2, 1, 3).reshape(b * t, n * h), self.kernel[...].reshape(n * h, f))
        return y.reshape(b, t, f)


# ------------------------------------------------------------------------------------------------ layers


class MultiHeadAttention(Layer):
    """Multi-head scaled dot-product attention with Keras' weights, masks and fully-masked-row rules.

    .. math::
        Q = x_q W_q + b_q,\\; K = x_k W_k + b_k,\\; V = x_v W_v + b_v \\quad ([B, T|S, N, H]) \\\\
        P_{b,n} = \\operatorname{softmax}_m(Q_{b,n} K_{b,n}^\\top / \\sqrt{H}), \\qquad
        y = (P V) W_o + b_o

    with ``m`` the [B, T, S] attention mask: the AND of the query mask (rows), the value and key masks (columns),
    the causal mask and ``attention_mask`` (module docstring). Rows with no allowed key (padded query steps, an
    all-padded value sequence) follow ``semantics``: with "keras3", uniform weights over every key when
    ``dropout == 0`` and no scores are returned (Keras' fused ``dot_product_attention``), zero weights otherwise
    (Keras' explicit softmax path, even in inference); with "tf_keras", ``softmax(s + (1 - m)(-1e9))``, or the
    uniform rule with ``softmax_robust_masking=True``. Never NaN. Padded query steps are not zeroed: their output is
    whatever the rule gives, as in Keras; the output mask is the query mask.

    In training (``deterministic=False``) dropout at rate ``dropout`` drops attention weights (after the softmax,
    before the weighted sum), as Keras does.

    Named deviations (``parity.deviations``): Keras 3 deletes the Keras masks of the query, value and key tensors,
    so layers that read those tensors after the MHA in a Keras 3 graph see no mask; jaxmask keeps them, as tf_keras
    ("keras3-mha-clears-input-masks"). Both Keras libraries attach the [B, 1, T, S] attention mask to returned
    scores; jaxmask attaches none ("keras-mha-scores-mask").

    Args:
      query_features: F, the query's feature size (Keras infers it when built).
      num_heads: N.
      key_dim: H, the size of each query and key head.
      value_dim: the size of each value head; default ``key_dim``.
      dropout: rate of dropout on the attention weights in training.
      use_bias: add biases to the four projections.
      output_shape: the output feature size (an int or a 1-tuple); default ``query_features``.
      attention_axes: None, or the time axis (1 or -2, or a 1-tuple of it): attention over the time axis of
        [B, T, F] sequences is the only form supported.
      kernel_initializer, bias_initializer: "glorot_uniform", "zeros" or "ones" (Keras' defaults: glorot_uniform,
        zeros).
      value_features: the value's feature size; default ``query_features``.
      key_features: the key's feature size; default ``value_features``.
      semantics: "keras3" or "tf_keras": whose rule for rows with no allowed key (see above).
      softmax_robust_masking: tf_keras' option (``semantics="tf_keras"`` only): ``where(m, s, -1e9)``.
      rngs: ``nnx.Rngs`` for the weights and the dropout stream.

    Weights (Keras' names and layouts): ``query.kernel`` [F, N, H], ``query.bias`` [N, H], ``key.kernel``
    [F_k, N, H], ``key.bias`` [N, H], ``value.kernel`` [F_v, N, H_v], ``value.bias`` [N, H_v],
    ``attention_output.kernel`` [N, H_v, F_out], ``attention_output.bias`` [F_out].

    Call: ``layer(query, value, key=None, *, mask=None, value_mask=None, key_mask=None, attention_mask=None,
    return_attention_scores=False, use_causal_mask=False)`` with ``query`` [B, T, F], ``value`` [B, S, F_v],
    ``key`` [B, S, F_k] (default ``value``), ``mask`` the query mask [B, T], ``value_mask`` / ``key_mask`` [B, S],
    ``attention_mask`` bool (or 0/1) broadcastable to [B, T, S] with True = may attend.

    Returns:
      [B, T, F_out]; with ``return_attention_scores`` also the weights [B, N, T, S] (before dropout).

    Raises:
      ValueError: unsupported ``attention_axes`` / ``output_shape`` / ``semantics``, inputs of the wrong rank,
        feature size, batch or length, masks of the wrong shape.
      TypeError: non-float inputs.

    Keras equivalent: ``keras.layers.MultiHeadAttention(num_heads, key_dim, value_dim=None, dropout=0.0,
    use_bias=True, output_shape=None, attention_axes=None)``.

    Example::

        mha = jm.nn.MultiHeadAttention(32, num_heads=4, key_dim=8, rngs=nnx.Rngs(0))
        y = mha(x, x, mask=m, value_mask=m)   # self-attention over padded x [B, T, 32]
    """

    def __init__(self, query_features: int, num_heads: int, key_dim: int, value_dim: int | None = None,
                 dropout: float = 0.0, use_bias: bool = True, output_shape=None, attention_axes=None,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros", *,
                 value_features: int | None = None, key_features: int | None = None, semantics: str = "keras3",
                 softmax_robust_masking: bool = False, rngs: nnx.Rngs):
        for name, v in (("query_features", query_features), ("num_heads", num_heads), ("key_dim", key_dim),
                        ("value_dim", value_dim), ("value_features", value_features),
                        ("key_features", key_features)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"`{name}` must be a positive integer; received {v!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); received {dropout!r}.")
        if attention_axes not in (None, 1, -2, (1,), (-2,), [1], [-2]):
            raise ValueError(f"`attention_axes` must be None or the time axis (1 or -2) of [B, T, F] inputs; received "
                             f"{attention_axes!r}. Attention over other axes is not supported.")
        if isinstance(output_shape, (tuple, list)):
            if len(output_shape) != 1:
                raise ValueError(f"`output_shape` must be an int or a 1-tuple (the output feature size); received "
                                 f"{output_shape!r}.")
            output_shape = output_shape[0]
        bad_output = isinstance(output_shape, bool) or not isinstance(output_shape, (int, np.integer))
        if output_shape is not None and (bad_output or output_shape < 1):
            raise ValueError(f"`output_shape` must be a positive int or None; received {output_shape!r}.")
        if semantics not in SEMANTICS:
            raise ValueError(f"`semantics` must be one of {list(SEMANTICS)}; received {semantics!r}.")
        if softmax_robust_masking and semantics != "tf_keras":
            raise ValueError("`softmax_robust_masking=True` is a tf_keras option; pass semantics='tf_keras' with it.")
        self.query_features = int(query_features)
        self.value_features = int(value_features or query_features)
        self.key_features = int(key_features or self.value_features)
        self.num_heads, self.key_dim = int(num_heads), int(key_dim)
        self.value_dim = int(value_dim or key_dim)
        self.output_features = int(output_shape or query_features)
        self.dropout = float(dropout)
        self.use_bias = bool(use_bias)
        self.semantics = semantics
        self.softmax_robust_masking = bool(softmax_robust_masking)
        self.deterministic = False
        kinit = _initializer(kernel_initializer, "kernel_initializer")
        binit = _initializer(bias_initializer, "bias_initializer")
        n, h, hv = self.num_heads, self.key_dim, self.value_dim
        common = dict(use_bias=self.use_bias, kernel_initializer=kinit, bias_initializer=binit, rngs=rngs)
        self.query = EinsumDense((self.query_features, n, h), 1, **common)
        self.key = EinsumDense((self.key_features, n, h), 1, **common)
        self.value = EinsumDense((self.value_features, n, hv), 1, **common)
        self.attention_output = EinsumDense((n, hv, self.output_features), 2, **common)
        self.rngs = rng_stream(rngs) if self.dropout > 0 else nnx.data(None)

    def __call__(self, query, value, key=None, *, mask=None, value_mask=None, key_mask=None, attention_mask=None,
                 return_attention_scores: bool = False, use_causal_mask: bool = False):
        layer = "MultiHeadAttention"
        query = _sequence(query, "query", layer, self.query_features)
        value = _sequence(value, "value", layer, self.value_features)
        key = value if key is None else _sequence(key, "key", layer, self.key_features)
        (b, t, _), s = query.shape, value.shape[1]
        if value.shape[0] != b or key.shape[:2] != value.shape[:2]:
            raise ValueError(f"{layer}: `query` [B, T, F], `value` [B, S, F_v] and `key` [B, S, F_k] must share B, and "
                             f"`value` and `key` S; received shapes {query.shape}, {value.shape}, {key.shape}.")
        valid = self._attention_mask(b, t, s, mask, value_mask, key_mask, attention_mask, use_causal_mask)
        q, k, v = self.query.split_heads(query), self.key.split_heads(key), self.value.split_heads(value)
        zero_rows = self.semantics == "keras3" and (self.dropout > 0 or return_attention_scores)
        drop = self.dropout > 0 and not self.deterministic
        subtract = self.semantics == "tf_keras" and not self.softmax_robust_masking
        scale = 1.0 / math.sqrt(self.key_dim)
        heads_valid = jnp.ones((1, 1, 1, 1), bool) if valid is None else valid[:, None]
        scores = None
        if not (drop or return_attention_scores):
            context = attend(q, k, v, heads_valid, scale, subtract)
            if zero_rows and valid is not None:
                row = jnp.any(valid, axis=-1)[:, None, :, None]
                context = jnp.where(row, context, jnp.zeros((), context.dtype))
        else:
            logits = jnp.einsum("bnth,bnsh->bnts", q * jnp.asarray(scale, q.dtype), k)
            probs = masked_softmax(logits, None if valid is None else heads_valid,
                                   masked_logits="subtract" if subtract else "replace",
                                   fully_masked="zeros" if zero_rows else "uniform")
            scores = probs
            if drop:
                if self.rngs is None:
                    raise ValueError("MultiHeadAttention with dropout in training needs its dropout stream; build it "
                                     "with rngs=nnx.Rngs(0).")
                keep = dropout_keep_mask(self.rngs(), self.dropout, probs.shape)
                probs = jnp.where(keep, probs / jnp.asarray(1.0 - self.dropout, probs.dtype),
                                  jnp.zeros((), probs.dtype))
            context = jnp.einsum("bnts,bnsh->bnth", probs, v)
        y = self.attention_output.merge_heads(context)
        return (y, scores) if return_attention_scores else y

    def _attention_mask(self, b, t, s, mask, value_mask, key_mask, attention_mask, causal):
        valid = None
        if mask is not None:
            valid = check_mask(mask, (b, t), "mask")[:, :, None]
        for name, m in (("value_mask", value_mask), ("key_mask", key_mask)):
            if m is not None:
                valid = _and(valid, check_mask(m, (b, s), name)[:, None, :])
        if causal:
            valid = _and(valid, causal_mask(t, s))
        if attention_mask is not None:
            am = jnp.asarray(attention_mask)
            if am.ndim != 3 or any(d not in (1, e) for d, e in zip(am.shape, (b, t, s))):
                raise ValueError(f"MultiHeadAttention: `attention_mask` must be broadcastable to [B, T, S] = "
                                 f"{(b, t, s)} (rank 3, each axis that size or 1); received shape {am.shape}.")
            valid = _and(valid, am if am.dtype == jnp.bool_ else am != 0)
        return valid


class Attention(Layer):
    """Dot-product (Luong) attention over a list ``[query, value]`` or ``[query, value, key]``, with Keras' masks.

    .. math::
        s_{b,i,j} = \\begin{cases} c\\,q_i \\cdot k_j & \\text{dot} \\\\
        c' \\sum_f \\tanh(c (q_{i,f} + k_{j,f})) & \\text{concat} \\end{cases} \\qquad
        p = \\operatorname{softmax}_j(\\text{where}(m_j, s, s - 10^9)), \\qquad
        y_i = \\text{where}(m^q_i, \\textstyle\\sum_j p_{ij} v_j, 0)

    ``c`` is the weight ``scale`` (``use_scale=True``; else 1) and ``c'`` the weight ``concat_score_weight``
    (``score_mode="concat"``); ``m`` the value mask AND the causal mask. A row with no allowed key gets
    ``softmax(s - 1e9)`` (uniform for |s| < 32) as in Keras 3 and tf_keras; never NaN. Padded query steps output 0.
    Dropout on the weights in training. The output mask is the query mask.

    Args:
      use_scale: learn the scalar ``scale`` (initialised to 1).
      score_mode: "dot" or "concat".
      dropout: rate of dropout on the attention weights in training.
      rngs: ``nnx.Rngs`` for the dropout stream (needed when ``dropout > 0``).

    Call: ``layer([query, value(, key)], mask=None, *, return_attention_scores=False, use_causal_mask=False)`` with
    query [B, Tq, F], value [B, Tv, F_v], key [B, Tv, F] (default value), ``mask`` a list ``[query_mask,
    value_mask]`` ([B, Tq], [B, Tv]; entries may be None; a third entry is ignored, as in Keras).

    Returns:
      [B, Tq, F_v]; with ``return_attention_scores`` also the weights [B, Tq, Tv] (after dropout, as Keras).

    Raises:
      ValueError: a bad ``score_mode`` or ``dropout``, inputs that are not a list of 2 or 3 [B, T, F] arrays with
        matching sizes, masks of the wrong length or shape.

    Keras equivalent: ``keras.layers.Attention(use_scale=False, score_mode="dot", dropout=0.0)``.
    """

    def __init__(self, use_scale: bool = False, score_mode: str = "dot", dropout: float = 0.0, *,
                 rngs: nnx.Rngs | None = None):
        if score_mode not in ("dot", "concat"):
            raise ValueError(f"`score_mode` must be 'dot' or 'concat'; received {score_mode!r}.")
        self._common(dropout, rngs)
        self.use_scale = bool(use_scale)
        self.score_mode = score_mode
        self.scale = nnx.Param(jnp.ones((), jnp.float32)) if use_scale else nnx.data(None)
        self.concat_score_weight = nnx.Param(jnp.ones((), jnp.float32)) if score_mode == "concat" else nnx.data(None)

    def _common(self, dropout, rngs):
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); received {dropout!r}.")
        self.dropout = float(dropout)
        self.deterministic = False
        self.rngs = rng_stream(rngs) if rngs is not None and self.dropout > 0 else nnx.data(None)

    def _scores(self, q, k):
        if self.score_mode == "dot":
            s = jnp.einsum("bif,bjf->bij", q, k)
            return s * self.scale[...] if self.scale is not None else s
        x = q[:, :, None, :] + k[:, None, :, :]
        if self.scale is not None:
            x = self.scale[...] * x
        return self.concat_score_weight[...] * jnp.sum(jnp.tanh(x), axis=-1)

    def _inputs(self, inputs, mask):
        name = type(self).__name__
        if not isinstance(inputs, (list, tuple)) or not 2 <= len(inputs) <= 3:
            got = f"a list of length {len(inputs)}" if isinstance(inputs, (list, tuple)) else type(inputs).__name__
            raise ValueError(f"{name} must be called on a list [query, value] or [query, value, key]; received {got}.")
        q = _sequence(inputs[0], "inputs[0] (query)", name)
        v = _sequence(inputs[1], "inputs[1] (value)", name)
        k = _sequence(inputs[2], "inputs[2] (key)", name) if len(inputs) == 3 else v
        if v.shape[0] != q.shape[0] or k.shape[:2] != v.shape[:2] or k.shape[-1] != q.shape[-1]:
            raise ValueError(f"{name}: query [B, Tq, F], value [B, Tv, F_v] and key [B, Tv, F] must share B, value and "
                             f"key Tv, query and key F; received shapes {q.shape}, {v.shape}, {k.shape}.")
        if mask is None:
            return q, v, k, None, None
        if not isinstance(mask, (list, tuple)) or not 2 <= len(mask) <= len(inputs):
            got = f"a list of length {len(mask)}" if isinstance(mask, (list, tuple)) else type(mask).__name__
            raise ValueError(f"{name}: `mask` must be a list [query_mask, value_mask] (entries may be None); received "
                             f"{got}.")
        return (q, v, k, _optional_mask(mask[0], q.shape[:2], "mask[0] (query_mask)"),
                _optional_mask(mask[1], v.shape[:2], "mask[1] (value_mask)"))

    def __call__(self, inputs, mask=None, *, return_attention_scores: bool = False, use_causal_mask: bool = False):
        q, v, k, q_mask, v_mask = self._inputs(inputs, mask)
        scores = self._scores(q, k)
        valid = None if v_mask is None else v_mask[:, None, :]
        if use_causal_mask:
            valid = _and(valid, causal_mask(q.shape[1], v.shape[1]))
        weights = masked_softmax(scores, valid, masked_logits="subtract")
        if self.dropout > 0 and not self.deterministic:
            if self.rngs is None:
                raise ValueError(f"{type(self).__name__} with dropout in training needs a dropout stream; build it "
                                 "with rngs=nnx.Rngs(0).")
            keep = dropout_keep_mask(self.rngs(), self.dropout, weights.shape)
            weights = jnp.where(keep, weights / jnp.asarray(1.0 - self.dropout, weights.dtype),
                                jnp.zeros((), weights.dtype))
        y = jnp.einsum("bij,bjf->bif", weights, v)
        if q_mask is not None:
            y = jnp.where(q_mask[:, :, None], y, jnp.zeros((), y.dtype))
        return (y, weights) if return_attention_scores else y

    def compute_output_mask(self, x, mask):
        if mask is None or not isinstance(mask, (list, tuple)) or mask[0] is None:
            return None
        return check_mask(mask[0], jnp.shape(x[0])[:2], "mask[0] (query_mask)")


class AdditiveAttention(Attention):
    """Additive (Bahdanau) attention over ``[query, value]`` or ``[query, value, key]``, with Keras' masks.

    .. math:: s_{b,i,j} = \\sum_f c_f \\tanh(q_{i,f} + k_{j,f})

    with ``c`` the weight ``scale`` [F] (``use_scale=True``, glorot_uniform as Keras) or 1; masks, the row with no
    allowed key, dropout, the call and the output mask exactly as :class:`Attention`.

    Args:
      query_features: F, the query's (and key's) feature size (Keras infers it when built); needed for
        ``use_scale=True``.
      use_scale: learn the per-feature ``scale``.
      dropout: rate of dropout on the attention weights in training.
      rngs: ``nnx.Rngs`` for ``scale`` and the dropout stream.

    Raises:
      ValueError: ``use_scale=True`` without ``query_features`` or ``rngs``; a query of another feature size; the
        input errors of :class:`Attention`.

    Keras equivalent: ``keras.layers.AdditiveAttention(use_scale=True, dropout=0.0)``.
    """

    def __init__(self, query_features: int | None = None, use_scale: bool = True, dropout: float = 0.0, *,
                 rngs: nnx.Rngs | None = None):
        if use_scale and (query_features is None or rngs is None):
            raise ValueError("AdditiveAttention(use_scale=True) learns a scale per query feature: pass query_features "
                             "(the query's last axis) and rngs, e.g. AdditiveAttention(16, rngs=nnx.Rngs(0)).")
        self._common(dropout, rngs)
        self.use_scale = bool(use_scale)
        self.query_features = None if query_features is None else int(query_features)
        self.score_mode = "additive"
        self.scale = nnx.Param(_glorot_uniform(rngs.params(), (self.query_features,))) if use_scale \
            else nnx.data(None)
        self.concat_score_weight = nnx.data(None)

    def _scores(self, q, k):
        if self.query_features is not None and q.shape[-1] != self.query_features:
            raise ValueError(f"AdditiveAttention: the query must have {self.query_features} features (fixed when the "
                             f"layer was built); received shape {q.shape}.")
        t = jnp.tanh(q[:, :, None, :] + k[:, None, :, :])
        if self.scale is not None:
            t = t * self.scale[...].reshape(1, 1, 1, -1)
        return jnp.sum(t, axis=-1)
