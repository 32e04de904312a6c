"""The one tolerance table of the parity suite (float32 everywhere).

A value ``a`` (jaxmask) matches a reference value ``b`` (Keras) when ``|a - b| <= atol + rtol * |b|``
element-wise, NaN matching NaN only where a documented deviation says so (see :mod:`parity.deviations`).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def close(self, got, want) -> np.ndarray:
        """Element-wise match of ``got`` against the reference ``want`` (NaN never matches)."""
        got = np.asarray(got, np.float64)
        want = np.asarray(want, np.float64)
        return np.abs(got - want) <= self.atol + self.rtol * np.abs(want)


TOLERANCES = {
    "outputs": Tolerance(atol=1e-5, rtol=1e-5),
    "loss": Tolerance(atol=1e-5, rtol=1e-5),
    "gradients": Tolerance(atol=1e-4, rtol=1e-4),
    "trajectory": Tolerance(atol=1e-8, rtol=1e-4),
}
"""outputs (and output masks, exactly), the scalar loss, gradients of the loss w.r.t. every weight, and
loss trajectories of N optimizer steps (relative)."""

# bfloat16 rows: jaxmask's dtype_policy="mixed_bfloat16" against Keras 3's (TF backend), measured with
# `python -m tests.test_mixed_precision` (2026-12; LSTM/GRU/SimpleRNN x post/pre/holes, T=20, H=16, 3 seeds;
# the Masking-LSTM-Dense model's masked BCE and its gradients): max |diff| of outputs 1.1e-2 / 1.6e-2 / 1.9e-2,
# of the loss 5.6e-4, of gradients 2.5e-2 of the largest gradient (gradients_bf16's atol is in those units).
# Not a loosened float32 row: the two sides round differently (Keras carries the state in bfloat16).
TOLERANCES["outputs_bf16"] = Tolerance(atol=2e-2, rtol=2e-2)
TOLERANCES["loss_bf16"] = Tolerance(atol=2e-3, rtol=2e-3)
TOLERANCES["gradients_bf16"] = Tolerance(atol=5e-2, rtol=5e-2)


def max_abs_diff(got, want, where=None) -> float:
    """max |got - want| over ``where`` (all positions by default); NaN if either side is NaN there, 0 if empty."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if where is not None:
        where = np.broadcast_to(where, np.broadcast_shapes(got.shape, want.shape))
        got, want = np.broadcast_to(got, where.shape)[where], np.broadcast_to(want, where.shape)[where]
    if got.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want)))
