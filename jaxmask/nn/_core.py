"""Flax NNX layers around the recurrent core: Masking, Embedding, Dense, Activation, Dropout,
GlobalAveragePooling1D, TimeDistributed, and the base class that carries Keras' mask propagation."""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmask._checks import check_mask, check_rank
from jaxmask.functional import precision
from jaxmask.functional.rnn import get_activation
from jaxmask.nn._graph import symbolic

_INITIALIZERS = {
    "glorot_uniform": jax.nn.initializers.glorot_uniform(),
    "orthogonal": jax.nn.initializers.orthogonal(),
    "zeros": jax.nn.initializers.zeros,
    "embedding_uniform": jax.nn.initializers.uniform(0.1),  # shifted to U(-0.05, 0.05) below
}


def _numpy_init(name, rng, shape):
    if name == "glorot_uniform":
        limit = np.sqrt(6.0 / (shape[0] + shape[-1]))
        return rng.uniform(-limit, limit, shape)
    if name == "orthogonal":
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        q, r = np.linalg.qr(rng.normal(size=(max(rows, cols), min(rows, cols))))
        q = q * np.sign(np.diag(r))
        return (q.T if rows < cols else q).reshape(shape)
    if name == "embedding_uniform":
        return rng.uniform(-0.05, 0.05, shape)
    return np.zeros(shape)


_ABSTRACT = contextvars.ContextVar("jaxmask_abstract_init", default=False)


@contextlib.contextmanager
def abstract_init():
    """Within this context ``keras_init`` returns ``jax.ShapeDtypeStruct`` placeholders instead of drawing values:
    loaders build modules this way and then set every weight from the file (drawing and discarding values would
    compile an initialiser per weight shape, seconds per model on a small CPU)."""
    token = _ABSTRACT.set(True)
    try:
        yield
    finally:
        _ABSTRACT.reset(token)


def keras_init(name: str, key, shape, dtype=jnp.float32):
    """Keras' default initialisers: glorot_uniform (kernels), orthogonal (recurrent kernels), zeros,
    and Embedding's U(-0.05, 0.05).

    With a concrete key the values are drawn on the host with NumPy (seeded from the key's bits), which
    avoids compiling a QR decomposition for every new layer shape (~1.5 s each on a 2-core CPU); under a
    JAX transformation (abstract key) the equivalent ``jax.nn.initializers`` run instead; under
    ``abstract_init()`` only the shape and dtype are returned.
    """
    if _ABSTRACT.get():
        return jax.ShapeDtypeStruct(tuple(shape), dtype)
    if isinstance(key, jax.core.Tracer):
        w = _INITIALIZERS[name](key, shape, dtype)
        return w - 0.05 if name == "embedding_uniform" else w
    bits = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    rng = np.random.default_rng(np.asarray(bits, np.uint32).ravel())
    return jnp.asarray(_numpy_init(name, rng, tuple(shape)), dtype)


def rng_stream(rngs: nnx.Rngs):
    """The dropout stream of ``rngs`` (falls back to its default stream), forked so layers draw independently."""
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"`rngs` must be an nnx.Rngs, e.g. nnx.Rngs(0); received {type(rngs).__name__}.")
    name = "dropout" if "dropout" in rngs else "default"
    return rngs[name].fork()


def _fmix32(x):
    """MurmurHash3's 32-bit finaliser: a bijection on uint32 with full avalanche."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def dropout_keep_mask(key, rate: float, shape) -> jax.Array:
    """Bool mask, True with probability 1 - rate (to 2⁻³²), for dropout.

    Counter-based: 64 bits drawn from ``key`` seed a hash of each element's index,
    ``fmix32(fmix32(i · φ + s₀) ⊕ s₁)``. On XLA:CPU ``jax.random.bernoulli`` costs ~17 ns per value (about
    a quarter of the large benchmark's train step for its [128, 400, 256] dropout), the hash ~0.2 ns. Good
    statistics for dropout, not a cryptographic or general-purpose generator.
    """
    n = int(np.prod(shape))
    if n >= 2**32:
        return jax.random.bernoulli(key, 1.0 - rate, shape)
    seed = jax.random.bits(key, (2,), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, n)
    bits = _fmix32(_fmix32(index * jnp.uint32(0x9E3779B9) + seed[0]) ^ seed[1])
    threshold = int(round((1.0 - rate) * 2.0**32))
    if threshold >= 2**32:
        return jnp.ones(shape, bool)
    return (bits < jnp.uint32(threshold)).reshape(shape)


def as_input(x, layer: str, rank: int = 3, layout: str = "[B, T, F]", dtype: str | None = None):
    """Turn ``x`` into an array of the given rank, with a clear error for ragged lists, wrong ranks and (with
    ``dtype="float"``) non-float inputs."""
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x, dtype=np.float32)
        except ValueError:
            raise ValueError(
                f"{layer} received a ragged list of sequences (different lengths) as `x`; pad them first with "
                "jm.pad_sequences(seqs, padding='post', dtype='float32') and pass the mask from jm.compute_mask or "
                "jm.lengths_to_mask."
            ) from None
    if not hasattr(x, "shape"):
        raise TypeError(f"{layer}: `x` must be an array of layout {layout}; received {type(x).__name__}.")
    check_rank("x", x, rank, layout, hint=f"({layer} input)")
    if dtype == "float" and not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{layer}: `x` must hold floating-point values (float32); received dtype {x.dtype}. Feed "
                        "token ids through jm.nn.Embedding first, or cast with x.astype('float32').")
    return jnp.asarray(x)


class Layer(nnx.Module):
    """Base: a layer maps ``(x, mask)`` to outputs and passes the mask on as Keras does.

    Called on symbolic tensors (``jm.nn.Input`` and what layers return for them) a layer records a node of a
    functional ``jm.nn.Model`` instead of computing: every subclass's ``__call__`` is wrapped for that.
    ``name`` is the layer's Keras name when it came from Keras (``None`` otherwise).
    """

    name: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:
            cls.__call__ = symbolic(cls.__dict__["__call__"])

    def compute_output_mask(self, x, mask):
        """The mask Keras passes to the next layer: unchanged by default (Dense, Dropout, Activation)."""
        return mask


class Masking(Layer):
    """Masks every step whose features all equal ``mask_value`` and zeroes it.

    .. math:: m_{b,t} = \\exists f: x_{b,t,f} \\ne v, \\qquad y = \\text{where}(m, x, 0)

    A NaN step is valid (NaN != v). Keras equivalent: ``keras.layers.Masking(mask_value)`` (Keras 3 outputs
    ``where(mask, x, 0)``; tf_keras multiplies, giving -0.0 at masked steps).
    """

    def __init__(self, mask_value: float = 0.0):
        self.mask_value = mask_value

    def compute_output_mask(self, x, mask=None):
        x = as_input(x, "Masking")
        return jnp.any(x != self.mask_value, axis=-1)

    def __call__(self, x, mask=None):
        x = as_input(x, "Masking", dtype="float")
        m = jnp.any(x != self.mask_value, axis=-1)
        return jnp.where(m[:, :, None], x, jnp.zeros((), x.dtype))


class Embedding(Layer):
    """Token embedding: int [B, T] -> [B, T, output_dim]; with ``mask_zero=True`` token 0 is masked.

    Keras equivalent: ``keras.layers.Embedding(input_dim, output_dim, mask_zero=...)`` (weight ``embeddings``).
    """

    def __init__(self, input_dim: int, output_dim: int, *, mask_zero: bool = False, rngs: nnx.Rngs):
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.mask_zero = mask_zero
        self.embeddings = nnx.Param(keras_init("embedding_uniform", rngs.params(), (self.input_dim, self.output_dim)))

    def _ids(self, x):
        x = as_input(x, "Embedding", rank=2, layout="[B, T] (integer token ids)")
        if jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(jnp.int32)  # Keras casts float ids too (an Input left at float32)
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"Embedding: `x` must hold integer token ids; received dtype {x.dtype}.")
        return x

    def __call__(self, x, mask=None):
        return jnp.take(self.embeddings[...], self._ids(x), axis=0)

    def compute_output_mask(self, x, mask=None):
        return self._ids(x) != 0 if self.mask_zero else mask


class Dense(Layer):
    """y = activation(x W + b) on the last axis; kernel [F, units], bias [units]. Passes the mask on.

    Keras equivalent: ``keras.layers.Dense(units, activation=...)`` (glorot_uniform kernel, zero bias).
    """

    def __init__(self, in_features: int, units: int, *, activation=None, use_bias: bool = True,
                 dtype_policy: str | None = None, rngs: nnx.Rngs):
        self.in_features = int(in_features)
        self.units = int(units)
        self.activation = activation
        self.dtype_policy = precision.get_policy(dtype_policy)  # "mixed_bfloat16": float32 weights, bf16 compute
        self._act = get_activation(activation)
        self.kernel = nnx.Param(keras_init("glorot_uniform", rngs.params(), (self.in_features, self.units)))
        self.bias = nnx.Param(jnp.zeros((self.units,), jnp.float32)) if use_bias else nnx.data(None)

    def __call__(self, x, mask=None):
        x = self.dtype_policy.cast(jnp.asarray(x))
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Dense(in_features={self.in_features}) received x.shape={x.shape}; the last axis must be "
                f"{self.in_features}."
            )
        y = x @ self.dtype_policy.cast(self.kernel[...])
        if self.bias is not None:
            y = y + self.dtype_policy.cast(self.bias[...]).reshape((1,) * (y.ndim - 1) + (-1,))
        return self._act(y)


class Activation(Layer):
    """Applies a Keras activation by name. Keras equivalent: ``keras.layers.Activation(name)``."""

    def __init__(self, activation):
        self.activation = activation
        self._act = get_activation(activation)

    def __call__(self, x, mask=None):
        return self._act(jnp.asarray(x))


class Dropout(Layer):
    """Inverted dropout: in training keeps each value with probability 1 - rate and scales it by 1/(1 - rate).

    Off after ``model.eval()`` (``deterministic=True``). Keras equivalent: ``keras.layers.Dropout(rate)``.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs | None = None):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"`rate` must be in [0, 1); received {rate!r}.")
        self.rate = rate
        self.deterministic = False
        self.rngs = rng_stream(rngs) if rngs is not None else nnx.data(None)

    def __call__(self, x, mask=None):
        x = jnp.asarray(x)
        if self.deterministic or self.rate == 0.0:
            return x
        if self.rngs is None:
            raise ValueError("Dropout in training mode needs `rngs`: build it with Dropout(rate, rngs=nnx.Rngs(0)).")
        keep = dropout_keep_mask(self.rngs(), self.rate, x.shape)
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros((), x.dtype))


class GlobalAveragePooling1D(Layer):
    """Masked mean over time: [B, T, F] -> [B, F] ([B, 1, F] with ``keepdims``), y = Σ_t m x / Σ_t m; consumes the
    mask.

    A fully masked row gives 0 (Keras gives NaN there: 0/0). Keras equivalent:
    ``keras.layers.GlobalAveragePooling1D(keepdims=False)``.
    """

    def __init__(self, keepdims: bool = False):
        self.keepdims = bool(keepdims)

    def __call__(self, x, mask=None):
        x = as_input(x, "GlobalAveragePooling1D", dtype="float")
        if mask is None:
            return jnp.mean(x, axis=1, keepdims=self.keepdims)
        m = check_mask(mask, x.shape[:2])[:, :, None]
        total = jnp.sum(jnp.where(m, x, jnp.zeros((), x.dtype)), axis=1, keepdims=self.keepdims)
        count = jnp.sum(m, axis=1, keepdims=self.keepdims).astype(x.dtype)
        return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.zeros((), x.dtype))

    def compute_output_mask(self, x, mask):
        return None


class TimeDistributed(Layer):
    """Applies ``layer`` to every step of [B, T, ...]; passes the mask on.

    Keras equivalent: ``keras.layers.TimeDistributed(layer)``.
    """

    def __init__(self, layer: Layer):
        self.layer = layer

    def __call__(self, x, mask=None):
        x = jnp.asarray(x)
        b, t = x.shape[:2]
        y = self.layer(x.reshape((b * t,) + x.shape[2:]))
        return y.reshape((b, t) + y.shape[1:])
