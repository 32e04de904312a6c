"""Boundary validation shared by every public function.

Errors name the argument, state what was expected, show what was received and suggest a fix,
so that bad input never surfaces as a traceback from inside ``lax.scan`` or as a silent broadcast.
"""

from __future__ import annotations

import numpy as np


def shape_of(x) -> tuple:
    return tuple(np.shape(x))


def check_rank(name: str, x, rank: int, layout: str, hint: str = "") -> None:
    """Raise ``ValueError`` unless ``x`` has ``rank`` dimensions (``layout`` names them, e.g. "[B, T, F]")."""
    shape = shape_of(x)
    if len(shape) != rank:
        msg = f"`{name}` must have rank {rank} with layout {layout}; received shape {shape} (rank {len(shape)})."
        raise ValueError(msg + (f" {hint}" if hint else ""))


def check_mask(mask, batch_time: tuple, name: str = "mask"):
    """Validate a [B, T] mask against the (B, T) of its input; return it as a bool array.

    Accepts bool and integer/float 0/1 masks (Keras accepts both); anything else is a ``TypeError``.
    """
    import jax.numpy as jnp

    shape = shape_of(mask)
    if shape != tuple(batch_time):
        raise ValueError(
            f"`{name}` must be a [B, T] array matching the input's (B, T) = {tuple(batch_time)}; "
            f"received shape {shape}. Build one with jm.lengths_to_mask(lengths, T) or jm.compute_mask(x)."
        )
    dtype = np.dtype(mask.dtype) if hasattr(mask, "dtype") else np.asarray(mask).dtype
    if dtype.kind not in "biuf":
        raise TypeError(f"`{name}` must be bool (True = valid step) or 0/1 numbers; received dtype {dtype}.")
    if dtype.kind == "b":
        return jnp.asarray(mask)
    return jnp.asarray(mask) != 0


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {sorted(choices)}; received {value!r}.")
