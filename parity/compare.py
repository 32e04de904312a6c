"""Compare jaxmask with a Keras reference: outputs at valid and at masked steps separately, output masks,
the loss, gradients w.r.t. every weight, and optimizer-step loss trajectories; with documented reference
bugs reported as named deviations (:mod:`parity.deviations`) after checking they explain the difference.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

import numpy as np

import jaxmask as jm
from parity._keras import backend_of, flavor_of, reference_of
from parity._losses import LossSpec
from parity._sides import KerasTarget, Result, jm_evaluate, jm_trajectory
from parity.convert import convert
from parity.deviations import DEVIATIONS, Deviation
from parity.tolerances import TOLERANCES, max_abs_diff

PASS, DEVIATION, MISMATCH, ERROR = "pass", "deviation", "mismatch", "error"
OK_STATUSES = (PASS, DEVIATION)


@dataclasses.dataclass
class Report:
    """The outcome of one parity check. ``ok`` is False only for an unexpected mismatch or an error.

    Diffs are max |jaxmask - Keras|; ``None`` where not computed. ``valid_diff`` covers output positions at
    valid steps (and every position of outputs without a time axis, e.g. states), ``masked_diff`` output
    positions at masked steps.
    """

    case: str
    reference: str
    status: str = PASS
    valid_diff: float | None = None
    masked_diff: float | None = None
    mask_equal: bool | None = None
    loss_keras: float | None = None
    loss_jax: float | None = None
    loss_diff: float | None = None
    grad_diff: float | None = None
    grad_diffs: dict = dataclasses.field(default_factory=dict)
    trajectory_keras: list | None = None
    trajectory_jax: list | None = None
    trajectory_diff: float | None = None
    deviation: Deviation | None = None
    failures: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    tags: tuple = ()
    arrays: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "arrays"}
        d["deviation"] = None if self.deviation is None else self.deviation.to_dict()
        d["tags"] = list(self.tags)
        return _jsonable(d)

    def __str__(self) -> str:
        def fmt(v):
            return "-" if v is None else f"{v:.2e}"

        lines = [
            f"{self.case} vs {self.reference}: {self.status.upper()}"
            + (f" ({self.deviation.name})" if self.deviation else ""),
            f"  outputs  valid {fmt(self.valid_diff)}  masked {fmt(self.masked_diff)}  mask equal {self.mask_equal}",
            f"  loss     keras {self.loss_keras}  jaxmask {self.loss_jax}  diff {fmt(self.loss_diff)}",
            f"  grads    max {fmt(self.grad_diff)} over {len(self.grad_diffs)} weights",
        ]
        if self.trajectory_keras is not None:
            steps = len(self.trajectory_keras) - 1
            lines.append(f"  trajectory ({steps} steps) max rel diff {fmt(self.trajectory_diff)}")
        if self.deviation:
            lines.append(f"  deviation: {self.deviation.summary} jaxmask: {self.deviation.jaxmask} "
                         f"upstream: {self.deviation.upstream}")
        lines += [f"  FAIL {f}" for f in self.failures] + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else str(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


# ------------------------------------------------------------------------------------------ comparison


def compare_outputs(report: Report, keras: Result, ours: Result, position_mask, exclude_rows=None) -> None:
    """Fill output/mask fields; ``position_mask`` [B, T] marks valid positions of time-major outputs."""
    tol = TOLERANCES["outputs"]
    valid, masked = [], []
    for i, (k, j) in enumerate(zip(keras.outputs, ours.outputs)):
        if k.shape != j.shape:
            report.failures.append(f"output {i}: shape {j.shape} != Keras {k.shape}")
            continue
        keep = np.ones(k.shape, bool)
        if exclude_rows is not None:
            keep &= ~exclude_rows.reshape((-1,) + (1,) * (k.ndim - 1))
        if position_mask is not None and k.ndim >= 3 and k.shape[:2] == position_mask.shape:
            pm = np.broadcast_to(position_mask.reshape(position_mask.shape + (1,) * (k.ndim - 2)), k.shape)
        else:
            pm = np.ones(k.shape, bool)
        close = tol.close(j, k)
        for where, sink, label in ((keep & pm, valid, "valid"), (keep & ~pm, masked, "masked")):
            if where.any():
                sink.append(max_abs_diff(j, k, where))
                if not close[where].all():
                    report.failures.append(
                        f"output {i} at {label} steps: max|diff| {max_abs_diff(j, k, where):.3g} > tolerance "
                        f"(atol {tol.atol:g}, rtol {tol.rtol:g})"
                    )
    report.valid_diff = max(valid) if valid else 0.0
    report.masked_diff = max(masked) if masked else None
    report.mask_equal = (keras.mask is None and ours.mask is None) or (
        keras.mask is not None and ours.mask is not None and keras.mask.shape == ours.mask.shape
        and bool(np.array_equal(keras.mask, ours.mask))
    )
    if not report.mask_equal:
        report.failures.append("output masks differ (Keras _keras_mask vs jaxmask output_mask)")


def compare_loss_and_grads(report: Report, keras: Result, ours: Result) -> None:
    report.loss_keras, report.loss_jax = keras.loss, ours.loss
    kv = keras.loss if keras.loss_values is None else keras.loss_values
    jv = ours.loss if ours.loss_values is None else ours.loss_values
    if np.shape(kv) != np.shape(jv):
        report.failures.append(f"loss shape {np.shape(jv)} != Keras {np.shape(kv)}")
    else:
        report.loss_diff = max_abs_diff(jv, kv)
        if not TOLERANCES["loss"].close(jv, kv).all():
            report.failures.append(f"loss {ours.loss!r} != Keras {keras.loss!r} (max|diff| {report.loss_diff:.3g})")
    tol = TOLERANCES["gradients"]
    for name, k in keras.grads.items():
        j = ours.grads[name]
        report.grad_diffs[name] = max_abs_diff(j, k)
        if not tol.close(j, k).all():
            report.failures.append(f"gradient {name}: max|diff| {report.grad_diffs[name]:.3g} > tolerance")
    report.grad_diff = max(report.grad_diffs.values()) if report.grad_diffs else 0.0


def compare_trajectories(report: Report, keras_traj, jax_traj) -> None:
    report.trajectory_keras, report.trajectory_jax = list(map(float, keras_traj)), list(map(float, jax_traj))
    tol = TOLERANCES["trajectory"]
    want = np.asarray(keras_traj, np.float64)
    rel = np.abs(np.asarray(jax_traj, np.float64) - want) / np.maximum(np.abs(want), 1e-30)
    report.trajectory_diff = float(np.max(rel))
    if not tol.close(jax_traj, keras_traj).all():
        report.failures.append(f"loss trajectory: max relative diff {report.trajectory_diff:.3g} > {tol.rtol:g}")


def finish(report: Report, started: float) -> Report:
    if report.status != ERROR:
        if report.failures:
            report.status = MISMATCH
        elif report.deviation is not None:
            report.status = DEVIATION
    report.seconds = time.perf_counter() - started
    return report


# ------------------------------------------------------------------------------------------ model checks


def position_mask(jm_model, output_mask):
    """Valid output positions: the output mask, reversed when an odd number of ``go_backwards`` sequence
    layers reversed the time axis (Keras passes the *unreversed* mask on: see jm.nn.LSTM)."""
    if output_mask is None:
        return None
    flips = sum(
        1 for layer in jm_model.layers
        if getattr(layer, "go_backwards", False) and getattr(layer, "return_sequences", False)
    )
    return np.flip(output_mask, axis=1) if flips % 2 else output_mask


def input_mask(jm_model, x):
    """The mask the first masking layer creates (None without one); for a functional model, the rows of the
    first input that are not all padding (0)."""
    if isinstance(jm_model, jm.nn.Model):
        first = np.asarray(x[0] if isinstance(x, list) else x)
        return first.reshape(first.shape[0], first.shape[1], -1).any(axis=-1) if first.ndim >= 2 else None
    mask = None
    for layer in jm_model.layers:
        mask = layer.compute_output_mask(x, mask)
        if mask is not None or not isinstance(layer, (jm.nn.Dropout, jm.nn.Activation)):
            break
    return None if mask is None else np.asarray(mask)


def _per_step_loss(spec: LossSpec | None, keras: Result) -> bool:
    return spec is not None and keras.outputs[0].ndim >= 3


def run_model_check(
    keras_model,
    x,
    y=None,
    sample_weight=None,
    spec: LossSpec | None = None,
    *,
    steps: int = 0,
    optimizer: str = "sgd",
    learning_rate: float = 0.01,
    name: str = "model",
    tags: tuple = (),
    perturb: float = 0.0,
) -> Report:
    """The engine behind :func:`check_model` and the catalogue's model cases."""
    started = time.perf_counter()
    reference = reference_of(keras_model)
    report = Report(case=name, reference=reference, tags=tuple(tags))
    ours, bindings = convert(keras_model)
    if perturb:
        for b in bindings:
            param = _param(ours, b.path)
            param.set_value(param.get_value() + np.float32(perturb))
    target = KerasTarget(keras_model, bindings, flavor_of(keras_model), backend_of(keras_model))
    x = _arrays(x)
    y = None if y is None else _arrays(y)
    sw = None if sample_weight is None else np.asarray(sample_weight, np.float32)

    keras_sw = sw
    native_error = None
    if sw is not None and sw.ndim == 1 and isinstance(spec, LossSpec) and spec.semantics == "keras3" and y is not None \
            and _returns_sequences(ours):
        # Keras 3 cannot take [B] weights with a [B, T] loss (DEVIATIONS["keras3-per-sample-weight"]).
        try:
            native = target.evaluate(x, y, sw, spec)
        except Exception as e:  # noqa: BLE001 - any error the reference raises is the evidence
            native_error = f"{type(e).__name__}: " + re.sub(r"\{\{.*?\}\}\s*", "", str(e)).splitlines()[0][:120]
            native = None
        keras_sw = sw[:, None]
    keras = target.evaluate(x, y, keras_sw, spec)
    want_logits = keras.uses_logits
    mine = jm_evaluate(ours, bindings, x, y, sw, spec, want_logits)
    report.arrays = {"keras": keras.outputs[0], "jaxmask": mine.outputs[0], "mask": mine.mask}

    if keras_sw is not sw:
        if native_error is not None:
            report.deviation = DEVIATIONS["keras3-per-sample-weight"]
            report.notes.append(f"Keras with [B] weights raised {native_error}; compared with sw[:, None]")
        elif not TOLERANCES["loss"].close(native.loss, keras.loss):
            report.deviation = DEVIATIONS["keras3-per-sample-weight"]
            report.notes.append(f"Keras with [B] weights gave loss {native.loss!r} (weights along time); "
                                f"with sw[:, None] {keras.loss!r}")
        else:
            report.notes.append("Keras accepted [B] weights with a [B, T] loss (upstream fixed?)")

    pm = position_mask(ours, mine.mask)
    nan_rows = _gap_nan_rows(ours, x, keras)
    compare_outputs(report, keras, mine, pm, exclude_rows=nan_rows)
    if nan_rows is not None:
        report.deviation = DEVIATIONS["keras-gap-nan-fully-masked-row"]
        if not np.isfinite(mine.outputs[0][nan_rows]).all():
            report.failures.append("jaxmask is not finite on the fully masked rows")
        keep = ~nan_rows
        report.notes.append(f"rows {np.flatnonzero(nan_rows).tolist()} are NaN in Keras; loss and gradients "
                            "compared on the batch without them")
        if keep.any():
            sub = lambda a: None if a is None else a[keep]  # noqa: E731
            keras = target.evaluate(x[keep], sub(y), sub(keras_sw), spec)
            mine = jm_evaluate(ours, bindings, x[keep], sub(y), sub(sw), spec, want_logits)
            compare_loss_and_grads(report, keras, mine)
        return finish(report, started)

    if _nan_loss_deviation(report, keras, mine, spec, reference):
        return finish(report, started)
    compare_loss_and_grads(report, keras, mine)

    if steps:
        k_traj = target.trajectory(x, y, keras_sw, spec, steps, optimizer, learning_rate)
        j_traj = jm_trajectory(ours, x, y, sw, spec, steps, optimizer, learning_rate, want_logits)
        compare_trajectories(report, k_traj, j_traj)
    return finish(report, started)


def _arrays(v):
    return [np.asarray(a) for a in v] if isinstance(v, (list, tuple)) else np.asarray(v)


def _check_multi_output(keras_model, x, y, sample_weight, losses, loss_weights, reduction, semantics, loss_kwargs,
                        steps, optimizer, learning_rate, name):
    from parity._sides import MultiLoss

    if not isinstance(y, (list, tuple)) or len(y) != len(losses):
        raise ValueError(f"with {len(losses)} losses `y` must be a list of {len(losses)} targets (one per output); "
                         f"received {type(y).__name__}.")
    weights = [1.0] * len(losses) if loss_weights is None else [float(w) for w in loss_weights]
    if len(weights) != len(losses):
        raise ValueError(f"`loss_weights` must hold {len(losses)} numbers, one per loss; received {len(weights)}.")
    if semantics is None:
        semantics = "tf_keras" if flavor_of(keras_model) == "tf_keras" else "keras3"
    kw = tuple(sorted((loss_kwargs or {}).items()))
    spec = MultiLoss(tuple((LossSpec(loss, kw, reduction, semantics), w) for loss, w in zip(losses, weights)))
    return run_model_check(keras_model, x, y, sample_weight, spec, steps=steps, optimizer=optimizer,
                           learning_rate=learning_rate, name=name or getattr(keras_model, "name", "model"))


def _param(module, path):
    for key in path:
        module = module[key] if isinstance(key, int) else getattr(module, key)
    return module


def _returns_sequences(jm_model) -> bool:
    seq = True
    for layer in jm_model.layers:
        if isinstance(layer, jm.nn.GlobalAveragePooling1D):
            seq = False
        elif hasattr(layer, "return_sequences"):
            seq = layer.return_sequences
    return seq


def _gap_nan_rows(jm_model, x, keras: Result):
    """Rows NaN in Keras because a GlobalAveragePooling1D saw only masked steps, or None."""
    out = keras.outputs[0]
    if not any(isinstance(layer, jm.nn.GlobalAveragePooling1D) for layer in jm_model.layers):
        return None
    nan = np.isnan(out).reshape(out.shape[0], -1).any(axis=1)
    if not nan.any():
        return None
    m = input_mask(jm_model, x)
    fully_masked = None if m is None else ~m.any(axis=1)
    if fully_masked is None or not np.array_equal(nan, fully_masked):
        return None  # NaN elsewhere: not the documented bug, left to fail
    return fully_masked


def _nan_loss_deviation(report: Report, keras: Result, mine: Result, spec, reference) -> bool:
    """A fully masked batch: tf_keras (and Keras <= 2.2.4) give NaN, jaxmask 0 with zero gradients."""
    if not isinstance(spec, LossSpec) or np.isfinite(keras.loss) or mine.mask is None or mine.mask.any():
        return False
    name = {"tf_keras": "tf_keras-nan-fully-masked-batch", "tf_keras_pre212": None,
            "keras_legacy": "keras-legacy-nan-fully-masked-batch"}.get(spec.semantics)
    if name is None:
        return False
    report.loss_keras, report.loss_jax = keras.loss, mine.loss
    report.deviation = DEVIATIONS[name]
    if mine.loss != 0.0:
        report.failures.append(f"jaxmask loss on a fully masked batch is {mine.loss!r}, expected 0")
    nonzero = [n for n, g in mine.grads.items() if not (np.isfinite(g).all() and not g.any())]
    if nonzero:
        report.failures.append(f"jaxmask gradients not all 0 on a fully masked batch: {nonzero}")
    report.notes.append("Keras loss is NaN (fully masked batch); jaxmask loss 0, gradients 0")
    report.grad_diffs = {n: None for n in mine.grads}
    return True


def check_model(
    keras_model,
    x,
    y=None,
    sample_weight=None,
    loss=None,
    *,
    reduction: str = "sum_over_batch_size",
    semantics: str | None = None,
    loss_kwargs: dict | None = None,
    steps: int = 0,
    optimizer: str = "sgd",
    learning_rate: float = 0.01,
    name: str | None = None,
    loss_weights=None,
) -> Report:
    """Check that jaxmask reproduces ``keras_model`` number by number.

    The model is converted with :func:`parity.from_keras` and both sides are run with dropout off on the
    same batch. Compared (tolerances from :data:`parity.tolerances.TOLERANCES`): the outputs at valid and
    at masked steps separately, the output mask (exactly), the loss, the gradient of the loss w.r.t. every
    weight (``tf.GradientTape`` or ``jax.grad`` of ``stateless_call`` on the Keras side, ``jax.grad`` here)
    and, with ``steps > 0``, the loss trajectory of ``steps`` optimizer steps (Keras' own SGD/Adam vs the
    same update rule in optax). Documented Keras bugs become a ``"deviation"`` status, checked to explain the
    whole difference.

    Args:
      keras_model: a built Keras 3 (TF or JAX backend) or tf_keras model accepted by ``from_keras``.
      x: [B, T, F] float inputs (padding written as the Masking value) or [B, T] int token ids; a list of arrays
        for a model with several inputs (``keras_model.inputs`` order).
      y: targets for ``loss`` (a list, one per output, with a list of losses); None compares the probe loss
        ``Σ_k mean(output_k²)`` instead.
      sample_weight: None, [B] (per sample) or [B, T] weights.
      loss: a Keras loss name ("mse", "binary_crossentropy", ...); required with ``y``. A list of names (one per
        output) computes ``Σ_k loss_weights[k] · loss_k`` as Keras' ``compile(loss=[...], loss_weights=[...])``.
      loss_weights: with a list of losses, one weight per output (default 1 each).
      reduction: Keras reduction ("sum_over_batch_size", "sum", "mean_with_sample_weight", "none").
      semantics: jaxmask loss semantics; default "keras3" for Keras 3 models, "tf_keras" for tf_keras ones.
      loss_kwargs: extra loss arguments (``from_logits``, ``label_smoothing`` ...).
      steps: number of optimizer steps to compare (0: none).
      optimizer: a name of :data:`parity.optim.OPTIMIZERS` ("sgd", "adam", "rmsprop", "lion", ...).
      learning_rate: the optimizer's learning rate.
      name: the report's case name.

    Returns:
      :class:`Report`; ``print(report)`` for a summary, ``report.ok`` False on an unexpected mismatch.

    Raises:
      ValueError: unsupported model (see :func:`parity.from_keras`) or ``y`` without ``loss``.

    Example::

        report = parity.check_model(model, x, y, loss="binary_crossentropy", steps=20, optimizer="adam")
        assert report.ok, report
    """
    if (y is None) != (loss is None):
        raise ValueError("`y` and `loss` go together: pass both (e.g. loss='mse') or neither (probe loss).")
    if isinstance(loss, (list, tuple)):
        return _check_multi_output(keras_model, x, y, sample_weight, list(loss), loss_weights, reduction, semantics,
                                   loss_kwargs, steps, optimizer, learning_rate, name)
    from parity.optim import OPTIMIZERS

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {sorted(OPTIMIZERS)}; received {optimizer!r}.")
    spec = None
    if loss is not None:
        if semantics is None:
            semantics = "tf_keras" if flavor_of(keras_model) == "tf_keras" else "keras3"
        spec = LossSpec(loss, tuple(sorted((loss_kwargs or {}).items())), reduction, semantics)
    return run_model_check(keras_model, x, y, sample_weight, spec, steps=steps, optimizer=optimizer,
                           learning_rate=learning_rate, name=name or getattr(keras_model, "name", "model"))


# ------------------------------------------------------------------------------------------ layer checks


def _set_initial_output(layer, value: str) -> None:
    for inner in (layer, getattr(layer, "forward_layer", None), getattr(layer, "backward_layer", None)):
        if inner is not None and hasattr(inner, "initial_output"):
            inner.initial_output = value


def run_layer_check(keras_layer, x, mask=None, initial_state=None, *, name: str = "layer", tags: tuple = (),
                    perturb: float = 0.0) -> Report:
    """Check one recurrent (or Bidirectional) Keras layer called directly with ``mask`` and ``initial_state``.

    Compares every output (sequence or last output, then the states), their gradients w.r.t. every weight
    through the probe loss Σ mean(output²). jaxmask runs with its default ``initial_output="zeros"``;
    against Keras 3 on JAX a difference confined to leading masked outputs is re-checked with
    ``initial_output="initial_state"`` and reported as that backend's documented deviation.
    """
    from parity.convert import Binding, convert_layer

    started = time.perf_counter()
    reference = reference_of(keras_layer)
    report = Report(case=name, reference=reference, tags=tuple(tags))
    ours, weights = convert_layer(keras_layer)
    bindings = [Binding(n, v, p) for n, v, p in weights]
    if perturb:
        for b in bindings:
            param = _param(ours, b.path)
            param.set_value(param.get_value() + np.float32(perturb))
    _set_initial_output(ours, "zeros")
    kwargs = {}
    if mask is not None:
        kwargs["mask"] = np.asarray(mask, bool)
    if initial_state is not None:
        kwargs["initial_state"] = [np.asarray(s, np.float32) for s in initial_state]
    target = KerasTarget(keras_layer, bindings, flavor_of(keras_layer), backend_of(keras_layer), call_kwargs=kwargs)
    x = np.asarray(x)
    keras = target.evaluate(x)
    mine = jm_evaluate(ours, bindings, x, kwargs=kwargs)
    report.arrays = {"keras": keras.outputs[0], "jaxmask": mine.outputs[0], "mask": kwargs.get("mask")}
    reversed_outputs = getattr(ours, "go_backwards", False) and getattr(ours, "return_sequences", False)
    pm = None if mask is None else (np.flip(kwargs["mask"], axis=1) if reversed_outputs else kwargs["mask"])
    compare_outputs(report, keras, mine, pm)
    compare_loss_and_grads(report, keras, mine)
    confined = all("masked steps" in f or f.startswith("loss") for f in report.failures)
    if report.failures and confined and reference == "keras3-jax" and initial_state is not None:
        _set_initial_output(ours, "initial_state")
        again = Report(case=name, reference=reference)
        alt = jm_evaluate(ours, bindings, x, kwargs=kwargs)
        compare_outputs(again, keras, alt, pm)
        compare_loss_and_grads(again, keras, alt)
        if not again.failures:
            report.deviation = DEVIATIONS["keras-jax-leading-masked-initial-h"]
            report.notes.append(
                f"default jaxmask differs at leading masked steps only ({'; '.join(report.failures)}); with "
                f"initial_output='initial_state' everything matches (masked {again.masked_diff:.2e}, "
                f"loss {again.loss_diff:.2e}, grads {again.grad_diff:.2e})"
            )
            report.failures = []
    return finish(report, started)
