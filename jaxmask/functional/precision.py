"""Keras dtype policies for layers: ``"float32"`` and ``"mixed_bfloat16"``.

A policy names a variable dtype (what parameters are stored and trained in) and a compute dtype (what a
layer's inputs, weights and outputs are cast to when it runs). ``"mixed_bfloat16"`` stores float32 and
computes in bfloat16; the loss is reduced in float32 (``jm.masked_loss`` casts half-precision
predictions up, as Keras' float32 loss dtype does).

Recurrent layers under ``"mixed_bfloat16"`` run their matmuls with bfloat16 operands and float32
accumulation (``preferred_element_type``) and keep the recurrent state (h, and c for the LSTM) and the
gate arithmetic in float32; outputs and returned states are cast to bfloat16. Keras carries the state
itself in bfloat16, so over long sequences jaxmask drifts less from the float32 answer than Keras does.

Keras equivalent: ``keras.layers.LSTM(..., dtype="mixed_bfloat16")`` (``layer.dtype_policy``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

POLICIES = {"float32": ("float32", "float32"), "mixed_bfloat16": ("bfloat16", "float32")}


@dataclasses.dataclass(frozen=True)
class DTypePolicy:
    """A Keras dtype policy. ``name=None`` is the default: nothing is cast (float64 inputs stay float64)."""

    name: str | None
    compute_dtype: str | None
    variable_dtype: str = "float32"

    @property
    def mixed(self) -> bool:
        return self.compute_dtype is not None and self.compute_dtype != self.variable_dtype

    def cast(self, tree):
        """Floating leaves of ``tree`` in the compute dtype (unchanged under the default policy)."""
        if self.compute_dtype is None:
            return tree
        dtype = jnp.dtype(self.compute_dtype)
        return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)

    def state_dtype(self, input_dtype):
        """The dtype a recurrent state is carried in: float32 under a mixed policy, else the inputs'."""
        return jnp.dtype(self.variable_dtype) if self.mixed else jnp.dtype(input_dtype)


def get_policy(policy) -> DTypePolicy:
    """The :class:`DTypePolicy` for ``policy``: None, ``"float32"``, ``"mixed_bfloat16"`` or a policy.

    Raises:
      ValueError: an unknown name (the message lists the supported ones).
    """
    if isinstance(policy, DTypePolicy):
        return policy
    if policy is None:
        return DTypePolicy(None, None)
    if isinstance(policy, str) and policy in POLICIES:
        return DTypePolicy(policy, *POLICIES[policy])
    raise ValueError(
        f"`dtype_policy` must be None, 'float32' or 'mixed_bfloat16' (Keras' names); received {policy!r}. "
        "Other Keras policies (float16, mixed_float16, bfloat16) are not supported."
    )
