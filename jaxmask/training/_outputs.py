"""Models with several outputs: one loss per output, weighted, and metrics per output, as Keras'
``compile(loss=[...], loss_weights=[...], metrics=[[...], [...]])``.

With outputs ``y_pred_i``, their masks ``m_i`` (each output's own output mask) and weights ``w_i``, the
training objective is

.. math:: L = \\sum_i w_i \\, \\ell_i(y_i, \\hat y_i; m_i, s_i)

where ``ell_i`` is output i's masked loss reduced as one loss is (``jm.masked_loss`` with the Trainer's
``semantics``) and ``s_i`` its sample weights. Logs hold ``loss`` (L) and, per output with a loss,
``<output_name>_loss`` (the unweighted ``ell_i``), both averaged over batches weighted by batch size, as
Keras 3 logs them; metrics are named ``<output_name>_<metric>``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxmask import losses as jm_losses
from jaxmask import metrics as jm_metrics


def _pick(value, i: int):
    """Output ``i``'s entry of a per-output list; one array (or None) serves every output."""
    return value[i] if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass(frozen=True, eq=False)
class OutputLosses:
    """The losses of a model's outputs and their weights (static under jit).

    Attributes:
      names: output names, in output order.
      losses: per output, a loss (anything :func:`jaxmask.masked_loss` accepts) or None (not trained).
      weights: per output, the float weight of its loss.
      several: whether the model returns a list of outputs (False: one output whose loss is scaled).
    """

    names: tuple
    losses: tuple
    weights: tuple
    several: bool = True

    def value(self, i: int, y_true, y_pred, mask, sample_weight, *, semantics: str, loss_kwargs: dict,
              class_weight=None):
        """Output ``i``'s unweighted masked loss (a scalar)."""
        if not self.several:
            y_t, y_p, m, sw = y_true, y_pred, mask, sample_weight
        else:
            y_t, y_p, m, sw = y_true[i], y_pred[i], mask[i], _pick(sample_weight, i)
        loss = self.losses[i]
        return jm_losses.masked_loss(
            loss, y_t, y_p, mask=m, sample_weight=sw, class_weight=class_weight,
            reduction=getattr(loss, "reduction", "sum_over_batch_size"), semantics=semantics, **loss_kwargs,
        )

    def total(self, y_true, y_pred, mask, sample_weight, *, semantics: str, loss_kwargs: dict, class_weight=None):
        """``Σ w_i · loss_i`` over the outputs that have a loss."""
        parts = [
            jnp.asarray(w, jnp.float32) * self.value(i, y_true, y_pred, mask, sample_weight, semantics=semantics,
                                                     loss_kwargs=loss_kwargs, class_weight=class_weight).astype(jnp.float32)
            for i, w in enumerate(self.weights)
            if self.losses[i] is not None
        ]
        return sum(parts[1:], parts[0])


def _per_output(spec, names: tuple, what: str, *, allow_missing: bool) -> list:
    """``spec`` (one value for all, a list in output order, or a dict by output name) as a list per output."""
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(names))
        missing = [n for n in names if n not in spec]
        if unknown or (missing and not allow_missing):
            raise ValueError(
                f"`{what}` is a dict with keys {sorted(spec)}; the model's outputs are {list(names)}. Give one entry per "
                f"output name{' (None for an output without a loss)' if what == 'loss' else ''}."
            )
        return [spec.get(n) for n in names]
    if isinstance(spec, (list, tuple)):
        if len(spec) != len(names):
            raise ValueError(
                f"`{what}` must have one entry per model output ({len(names)}: {list(names)}); received {len(spec)} "
                "entries. Use a dict by output name to leave some out."
            )
        return list(spec)
    return [spec] * len(names)


def build_losses(loss, loss_weights, names: tuple | None):
    """The Trainer's loss: ``loss`` itself for one output without weights, else :class:`OutputLosses`.

    Args:
      loss: one loss (for every output), a list in output order or a dict by output name (None entries: no loss).
      loss_weights: None (all 1), one number (one output), a list in output order or a dict by output name
        (missing names weigh 1).
      names: the model's output names when it returns several outputs, else None.

    Raises:
      ValueError: lists or dicts that do not match the outputs, weights that are not numbers, no loss at all.
    """
    several = names is not None
    if not several:
        if isinstance(loss, (list, tuple)):
            raise ValueError(
                f"`loss` is a list of {len(loss)} losses but the model has one output; pass one loss (or give the "
                "model several outputs, e.g. jm.nn.Model(inputs, [out1, out2]))."
            )
        if loss_weights is None:
            return loss
        weights = loss_weights
        if isinstance(weights, (list, tuple)) and len(weights) == 1:
            weights = weights[0]
        if isinstance(weights, dict) and len(weights) == 1:
            weights = next(iter(weights.values()))
        return OutputLosses(("output",), (_resolve(loss),), (_weight(weights, "loss_weights"),), several=False)
    losses = [_resolve(v) for v in _per_output(loss, names, "loss", allow_missing=False)]
    if all(v is None for v in losses):
        raise ValueError("`loss` gives no output a loss; at least one output needs one.")
    if loss_weights is None:
        weights = [1.0] * len(names)
    elif isinstance(loss_weights, (list, tuple, dict)):
        raw = _per_output(loss_weights, names, "loss_weights", allow_missing=True)
        weights = [1.0 if w is None else _weight(w, f"loss_weights[{names[i]!r}]") for i, w in enumerate(raw)]
    else:
        raise ValueError(
            f"`loss_weights` for a model with {len(names)} outputs must be a list in output order or a dict by output "
            f"name ({list(names)}); received {loss_weights!r}."
        )
    return OutputLosses(tuple(names), tuple(losses), tuple(weights))


def _resolve(loss):
    return jm_losses.get(loss) if isinstance(loss, (str, dict)) else loss


def _weight(w, what: str) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) and not hasattr(w, "__float__"):
        raise ValueError(f"`{what}` must be a number; received {w!r}.")
    return float(w)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputMetric(jm_metrics.MeanMetricWrapper):
    """A metric of one output of a multi-output model: ``inner`` sees that output's labels, predictions, mask
    and sample weights only. Subclasses ``MeanMetricWrapper`` only to pass through ``jm.metrics.get``; every
    method delegates to ``inner``.

    Keras equivalent: ``compile(metrics={"out": [...]})``, logged as ``out_<metric>``.
    """

    fn: Any = None
    inner: Any = None
    index: int = 0

    def init(self):
        return self.inner.init()

    def update(self, state, y_true, y_pred, *, mask=None, sample_weight=None):
        i = self.index
        kwargs = {} if sample_weight is None else {"sample_weight": _pick(sample_weight, i)}
        return self.inner.update(state, y_true[i], y_pred[i], mask=mask[i], **kwargs)

    def merge(self, state_a, state_b):
        return self.inner.merge(state_a, state_b)

    def result(self, state):
        return self.inner.result(state)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputLoss(jm_metrics.MeanMetricWrapper):
    """``<output>_loss`` in the logs: output ``index``'s unweighted loss, averaged over batches weighted by batch
    size (Keras 3's per-output loss trackers). Used as a weighted metric, so it sees the sample weights."""

    fn: Any = None
    losses: Any = None
    index: int = 0
    semantics: str = "keras3"
    loss_kwargs: tuple = ()

    def update(self, state, y_true, y_pred, *, mask=None, sample_weight=None):
        value = self.losses.value(self.index, y_true, y_pred, mask, sample_weight, semantics=self.semantics,
                                  loss_kwargs=dict(self.loss_kwargs))
        size = jnp.asarray(jax.tree_util.tree_leaves(y_pred)[0].shape[0], jnp.float32)
        return jm_metrics.MeanState(state.total + value.astype(jnp.float32) * size, state.count + size)


def output_metrics(spec, names: tuple, resolve) -> tuple:
    """Per-output metrics from Keras' forms: a list in output order (each entry a metric, a list of them, or
    None) or a dict by output name. ``resolve(metric, i)`` builds output ``i``'s metric object.

    Raises:
      ValueError: a flat list whose length is not the number of outputs (Keras refuses it too).
    """
    if isinstance(spec, (list, tuple)) and not spec:
        return ()
    if not isinstance(spec, dict) and len(spec) != len(names):
        raise ValueError(
            f"For a model with {len(names)} outputs {list(names)}, metrics must be a list with one entry per output "
            f"(a metric, a list of metrics or None) or a dict by output name, as Keras requires; received {spec!r}."
        )
    per = _per_output(spec, names, "metrics", allow_missing=True)
    out = []
    for i, entry in enumerate(per):
        for m in ([] if entry is None else entry if isinstance(entry, (list, tuple)) else [entry]):
            inner = resolve(m, i)
            out.append(OutputMetric(name=f"{names[i]}_{inner.name}", inner=inner, index=i))
    return tuple(out)


def output_losses(losses: OutputLosses, semantics: str, loss_kwargs: dict) -> tuple:
    """The ``<output>_loss`` log entries of a multi-output loss (none for one output)."""
    if not losses.several:
        return ()
    kwargs = tuple(sorted(loss_kwargs.items()))
    return tuple(
        OutputLoss(name=f"{name}_loss", losses=losses, index=i, semantics=semantics, loss_kwargs=kwargs)
        for i, name in enumerate(losses.names)
        if losses.losses[i] is not None
    )
