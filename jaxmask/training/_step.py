"""The training step: one jit-compiled pure function, plus the evaluation and prediction functions that
share its forward pass.

The model is split once with ``nnx.split`` into a static ``graphdef`` and array states; the loop only
passes arrays around:

    step(TrainState, batch) -> (TrainState, logs)

``TrainState`` holds the parameters, the model's other (non-parameter) state, the optax state, the root
PRNG key, the step counter and the epoch accumulators (loss and metric states). Its buffers are donated.
Dropout randomness is a pure function of ``(rng, step)``: every RNG stream of the model (each layer's
``self.rngs``) is re-seeded inside the step with ``fold_in(fold_in(key(rng), step), stream index)``, so
a run resumed from a checkpoint draws exactly the masks the uninterrupted run drew, whatever the device
count or batch sharding (JAX's partitionable threefry).

A step whose loss, gradients or updates contain NaN or Inf is skipped: parameters, optimizer state,
metric and loss accumulators are left unchanged (a ``where`` over each leaf), the step counter still
advances, and ``nonfinite_steps`` counts it.

``Trainer`` drives the same step through :meth:`TrainStep.run`: ``steps`` steps in one compiled call (a
``lax.scan`` over stacked batches, or over batches gathered on the device from a dataset placed there once),
parameters not donated (so the user's model can hold the trained arrays without a copy), and logs kept on
the device until something reads them (:class:`Logs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmask import losses as jm_losses
from jaxmask import metrics as jm_metrics
from jaxmask.training._outputs import OutputLosses
from jaxmask.training._data import BATCH_AXIS

Array = jax.Array


class Accumulators(NamedTuple):
    """Running sums over an epoch (or an evaluation): loss · batch size, batch sizes, metric states,
    and the number of skipped non-finite steps. Keras' loss tracker weighs each batch's loss by its
    number of samples; so does this."""

    loss_total: Array
    loss_count: Array
    metrics: tuple
    nonfinite: Array


class TrainState(NamedTuple):
    """Everything a training step reads and writes; all leaves are arrays (checkpointable as is).

    Attributes:
      params: ``nnx.State`` of the model's ``nnx.Param`` variables.
      other: ``nnx.State`` of the model's other variables except RNG streams (e.g. batch statistics).
      opt_state: the optax state.
      rng: uint32 [2], raw threefry key data: the root of every random draw in training.
      step: int32 scalar, steps taken (skipped non-finite steps included).
      acc: :class:`Accumulators` of the current epoch.
    """

    params: Any
    other: Any
    opt_state: Any
    rng: Array
    step: Array
    acc: Accumulators


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def _tree_where(cond, new, old):
    return jax.tree_util.tree_map(lambda n, o: jnp.where(cond, n, o), new, old)


def _seeded_streams(template, key):
    """A copy of the RNG-stream state ``template`` whose stream ``i`` has key ``fold_in(key, i)`` and count 0."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    out = []
    for i, leaf in enumerate(leaves):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            k = jax.random.fold_in(key, i)
            impl = jax.random.key_impl(leaf)
            if impl != jax.random.key_impl(k):
                k = jax.random.key(jax.random.bits(k, dtype=jnp.uint32), impl=impl)
            out.append(jnp.broadcast_to(k, leaf.shape))
        else:
            out.append(jnp.zeros_like(leaf))
    return jax.tree_util.tree_unflatten(treedef, out)


def _split(model):
    """``(graphdef, params, rng streams, other)``: the one split of the model."""
    return nnx.split(model, nnx.Param, nnx.RngState, ...)


def _graphdef(model, training: bool):
    """The graphdef of ``model`` in training (dropout on) or inference mode, leaving ``model`` as it is."""
    twin = nnx.clone(model)
    if training:
        twin.train()
    else:
        twin.eval()
    return _split(twin)[0]


def loss_mask(out_mask, user_mask):
    """The mask the loss and metrics use: the model's output mask (Keras' ``_keras_mask``), AND-ed with
    the mask the user passed when the model still has a time axis at its output (``out_mask`` not None).

    A ``Masking`` layer replaces an incoming mask with its own, so the user's mask would otherwise be lost
    from the loss; a model that drops the time axis (``return_sequences=False``) returns ``out_mask=None``
    and the loss is per sample. With several inputs or outputs (lists), each output's loss uses its own
    output mask: the model carries the input masks to its outputs itself.
    """
    if out_mask is None or user_mask is None or isinstance(out_mask, list) or isinstance(user_mask, list):
        return out_mask
    return jnp.logical_and(out_mask, user_mask)


def _call_model(model, x, mask):
    out = model(x, mask=mask)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            "The Trainer needs a model whose call returns (outputs, output_mask), like jm.nn.Sequential; "
            f"{type(model).__name__} returned {type(out).__name__}. Wrap the layers in jm.nn.Sequential([...])."
        )
    return out


@dataclasses.dataclass(eq=False)
class TrainStep:
    """The compiled functions of one (model architecture, optimizer, loss, metrics) combination.

    Attributes:
      step: jitted ``(TrainState, batch) -> (TrainState, logs)``; ``state`` is donated. ``batch`` is a
        dict with ``x`` [B, T, F] (or int [B, T]), ``y``, ``mask`` (bool [B, T] or None) and
        ``sample_weight`` ([B], [B, T] or None). ``logs`` are running results over ``state.acc``:
        ``loss``, one entry per metric, ``nonfinite_steps``.
      evaluate: jitted ``(params, other, acc, batch) -> (acc, logs)`` in inference mode.
      predict: jitted ``(params, other, x, mask) -> (y_pred, mask)`` in inference mode; the mask is
        :func:`loss_mask` of the model's output mask and ``mask``. Outputs are replicated over the mesh.
      run_jit: jitted ``(weights, rest, data, rows, pos, *, steps, reset) -> (weights, rest, logs, pos)``, the
        Trainer's path, called through :meth:`run`.
      run_evaluate: jitted ``(params, other, acc, data, rows, pos, *, steps) -> (acc, pos)``.
      run_predict: jitted ``(params, other, data, rows, pos, *, steps) -> (y_pred, mask, pos)``.
      trace_counts: how many times each function was traced (compiled), for tests and diagnostics.
    """

    graphdef: Any
    eval_graphdef: Any
    rng_template: Any
    optimizer: optax.GradientTransformation
    loss: Any
    metrics: tuple
    weighted_metrics: tuple
    semantics: str
    class_weight: dict | None
    loss_kwargs: dict
    mesh: Mesh | None
    step: Any = None
    evaluate: Any = None
    predict: Any = None
    run_jit: Any = None
    init_jit: Any = None
    zeros_jit: Any = None
    run_evaluate: Any = None
    run_predict: Any = None
    trace_counts: dict = dataclasses.field(default_factory=lambda: {"train": 0, "evaluate": 0, "predict": 0})

    def __call__(self, state: TrainState, batch: dict):
        return self.step(state, batch)

    @property
    def all_metrics(self) -> tuple:
        return self.metrics + self.weighted_metrics

    @property
    def log_names(self) -> tuple:
        """The keys of the logs in :meth:`results`' order (Keras': the loss, then the metrics)."""
        return ("loss",) + tuple(m.name for m in self.all_metrics) + ("nonfinite_steps",)

    def init_accumulators(self) -> Accumulators:
        """Empty accumulators (replicated over the mesh when there is one), made by one compiled call."""
        return self.replicate(self.zeros_jit())

    def init_state(self, model, *, seed: int = 0) -> TrainState:
        """A fresh ``TrainState`` from ``model``'s current variables (copied: donation never deletes the
        model's own arrays) and ``optimizer.init``; ``seed`` is the root of dropout and shuffling. One compiled
        call (a dozen small eager ones would each compile on the first call of a process)."""
        _, params, _, other = _split(model)
        return self.replicate(self.init_jit(params, other, seed=seed))

    def _init(self, params, other, *, seed: int) -> TrainState:
        copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)  # noqa: E731
        return TrainState(
            params=copy(params),
            other=copy(other),
            opt_state=self.optimizer.init(params),
            rng=jax.random.key_data(jax.random.key(seed)),
            step=jnp.zeros((), jnp.int32),
            acc=self._zero_accumulators(),
        )

    def replicate(self, tree):
        """Place ``tree`` replicated on every device of the mesh (no-op without a mesh); no device collective in a
        multi-process run (see :func:`jaxmask.training._data.replicate`), so it is safe from the prefetch thread."""
        if self.mesh is None:
            return tree
        from jaxmask.training._data import replicate  # noqa: PLC0415

        return replicate(tree, self.mesh)

    def results(self, acc: Accumulators) -> dict:
        """``{"loss": Σ loss·B / Σ B, <metric>: result, ..., "nonfinite_steps": n}`` as jax scalars."""
        count = acc.loss_count
        logs = {"loss": jnp.where(count > 0, acc.loss_total / jnp.where(count > 0, count, 1.0), 0.0)}
        for metric, state in zip(self.all_metrics, acc.metrics):
            logs[metric.name] = metric.result(state)
        logs["nonfinite_steps"] = acc.nonfinite
        return logs

    # ------------------------------------------------------------------------------------ pure core

    def _forward(self, graphdef, params, rngs, other, batch):
        model = nnx.merge(graphdef, params, rngs, other, copy=True)  # layers may write state (BatchNorm stats)
        y_pred, out_mask = _call_model(model, batch["x"], batch["mask"])
        mask = loss_mask(out_mask, batch["mask"])
        if isinstance(self.loss, OutputLosses):  # several outputs, or weighted: Σ w_i · loss_i
            loss = self.loss.total(batch["y"], y_pred, mask, batch["sample_weight"], semantics=self.semantics,
                                   class_weight=self.class_weight, loss_kwargs=self.loss_kwargs)
            return loss, (y_pred, mask, _split(model)[3])
        loss = jm_losses.masked_loss(
            self.loss,
            batch["y"],
            y_pred,
            mask=mask,
            sample_weight=batch["sample_weight"],
            class_weight=self.class_weight,
            reduction=getattr(self.loss, "reduction", "sum_over_batch_size"),
            semantics=self.semantics,
            **self.loss_kwargs,
        )
        new_other = _split(model)[3]
        return loss, (y_pred, mask, new_other)

    def _accumulate(self, acc: Accumulators, loss, y_pred, mask, batch) -> Accumulators:
        y_pred = jax.lax.stop_gradient(y_pred)
        size = jnp.asarray(jax.tree_util.tree_leaves(batch["x"])[0].shape[0], jnp.float32)
        states = tuple(
            m.update(s, batch["y"], y_pred, mask=mask) for m, s in zip(self.metrics, acc.metrics[: len(self.metrics)])
        ) + tuple(
            m.update(s, batch["y"], y_pred, mask=mask, sample_weight=batch["sample_weight"])
            for m, s in zip(self.weighted_metrics, acc.metrics[len(self.metrics) :])
        )
        return Accumulators(acc.loss_total + loss.astype(jnp.float32) * size, acc.loss_count + size, states, acc.nonfinite)

    def _train(self, state: TrainState, batch: dict):
        self.trace_counts["train"] += 1
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def objective(params):
            rngs = _seeded_streams(self.rng_template, key)  # created in this trace: the layers advance them
            return self._forward(self.graphdef, params, rngs, state.other, batch)

        (loss, (y_pred, mask, other)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(updates)
        acc = self._accumulate(state.acc, loss, y_pred, mask, batch)
        acc = _tree_where(finite, acc, state.acc)._replace(nonfinite=state.acc.nonfinite + (~finite).astype(jnp.int32))
        new = TrainState(
            params=_tree_where(finite, params, state.params),
            other=_tree_where(finite, other, state.other),
            opt_state=_tree_where(finite, opt_state, state.opt_state),
            rng=state.rng,
            step=state.step + 1,
            acc=acc,
        )
        return new, self.results(acc)

    def _evaluate(self, params, other, acc: Accumulators, batch: dict):
        self.trace_counts["evaluate"] += 1
        rngs = _seeded_streams(self.rng_template, jax.random.key(0))
        loss, (y_pred, mask, _) = self._forward(self.eval_graphdef, params, rngs, other, batch)
        acc = self._accumulate(acc, loss, y_pred, mask, batch)
        return acc, self.results(acc)

    def _predict(self, params, other, x, mask):
        self.trace_counts["predict"] += 1
        rngs = _seeded_streams(self.rng_template, jax.random.key(0))
        model = nnx.merge(self.eval_graphdef, params, rngs, other)
        y_pred, out_mask = _call_model(model, x, mask)
        return y_pred, loss_mask(out_mask, mask)

    # ---------------------------------------------------------------------- the Trainer's fast path

    def _zero_accumulators(self) -> Accumulators:
        return Accumulators(
            jnp.zeros((), jnp.float32),
            jnp.zeros((), jnp.float32),
            tuple(m.init() for m in self.all_metrics),
            jnp.zeros((), jnp.int32),
        )

    def _constrain(self, batch):
        """Shard a batch gathered inside the step along ``"batch"`` (replicated when the size does not divide)."""
        if self.mesh is None or self.mesh.size == 1:
            return batch

        def put(a):
            split = a.shape[0] % self.mesh.shape[BATCH_AXIS] == 0
            spec = PartitionSpec(BATCH_AXIS) if split else PartitionSpec()
            return jax.lax.with_sharding_constraint(a, NamedSharding(self.mesh, spec))

        return jax.tree_util.tree_map(put, batch)

    def _scan(self, one, carry, data, rows, pos, steps: int):
        """Apply ``one(carry, batch) -> (carry, out)`` to ``steps`` batches: ``data`` itself (``rows`` None,
        ``steps`` 1), the leading axis of stacked ``data`` (``rows`` None), or rows ``rows[pos + j]`` of ``data``
        gathered on the device. Outputs of several steps are stacked along a new leading axis."""
        if rows is None and steps == 1:
            return one(carry, data)

        def gathered(j):
            r = jax.lax.dynamic_index_in_dim(rows, pos + j, keepdims=False)
            return self._constrain(jax.tree_util.tree_map(lambda a: jnp.take(a, r, axis=0, mode="clip"), data))

        if steps == 1:
            return one(carry, gathered(0))
        if rows is None:
            return jax.lax.scan(one, carry, data)
        return jax.lax.scan(lambda c, j: one(c, gathered(j)), carry, jnp.arange(steps, dtype=jnp.int32))

    def _run(self, weights, rest, data, rows, pos, *, steps: int, reset: bool):
        (params, other), (opt_state, rng, step, acc) = weights, rest
        if reset:
            acc = self._zero_accumulators()
        state = TrainState(params, other, opt_state, rng, step, acc)
        state, logs = self._scan(self._train, state, data, rows, pos, steps)
        next_pos = None if pos is None else pos + steps
        return (state.params, state.other), (state.opt_state, state.rng, state.step, state.acc), logs, next_pos

    def run(self, state: TrainState, data, rows=None, pos=None, *, steps: int = 1, reset: bool = False):
        """``steps`` training steps in one compiled call; ``(new state, logs, pos + steps)``.

        Args:
          state: the ``TrainState``; its optimizer state, step and accumulators are donated, its parameters and
            other variables are not (the caller's model may hold them).
          data: one batch dict (``rows`` None, ``steps`` 1), ``steps`` batches stacked along a new leading axis
            (``rows`` None), or a whole dataset dict [N, ...] placed on the device (see :meth:`place`).
          rows: int32 [S, B] device array: batch ``j`` of this call is ``data[rows[pos + j]]``.
          pos: int32 scalar device array, the first row of ``rows`` to use; the returned ``pos + steps`` feeds the
            next call, so a loop over an epoch sends nothing to the device but the step's own inputs.
          steps: steps in this call (static: one compilation per value); several steps run as a ``lax.scan``
            whose body is the single step, so the result is the same as ``steps`` single calls, bit for bit.
          reset: start from empty accumulators (``train_on_batch``: logs of this batch only).

        Returns:
          ``(state, logs, pos)``: logs of the last step (a dict of scalars) for ``steps == 1``, else every
          step's logs stacked along a leading axis of length ``steps``.
        """
        weights, rest, logs, pos = self.run_jit(
            (state.params, state.other), (state.opt_state, state.rng, state.step, state.acc), data, rows, pos,
            steps=steps, reset=reset,
        )
        return TrainState(weights[0], weights[1], *rest), {k: logs[k] for k in self.log_names}, pos

    def _run_evaluate(self, params, other, acc, data, rows, pos, *, steps: int):
        acc, _ = self._scan(lambda a, b: self._evaluate(params, other, a, b), acc, data, rows, pos, steps)
        return acc, None if pos is None else pos + steps

    def _run_predict(self, params, other, data, rows, pos, *, steps: int):
        def one(carry, batch):
            return carry, self._predict(params, other, batch["x"], batch.get("mask"))

        _, (y_pred, mask) = self._scan(one, 0, data, rows, pos, steps)
        return y_pred, mask, None if pos is None else pos + steps

    def place(self, tree):
        """Host arrays as device arrays, replicated over the mesh: a dataset that the step gathers from."""
        if self.mesh is None:
            return jax.device_put(tree)
        return self.replicate(tree)

    def to_device(self, batch):
        """A host batch ready for the step. On one device of one process the NumPy arrays are returned as
        they are: the compiled call copies them in (cheaper than a separate ``device_put``); over a mesh of
        several devices they are split along ``"batch"``."""
        if self.mesh is None or (self.mesh.size == 1 and jax.process_count() == 1):
            return batch
        from jaxmask.training._data import place_batch  # noqa: PLC0415

        return place_batch(batch, self.mesh)


class _Fetched:
    """Device values fetched to the host once, on first use, for every :class:`Logs` view sharing them."""

    __slots__ = ("device", "host")

    def __init__(self, device):
        self.device, self.host = device, None

    def get(self) -> dict:
        if self.host is None:
            self.host = jax.device_get(self.device)
            self.device = None
        return self.host


def _number(v):
    v = np.asarray(v)
    return int(v) if np.issubdtype(v.dtype, np.integer) else float(v)


class Logs(Mapping):
    """The logs of one step, ``{"loss": ..., <metric>: ..., "nonfinite_steps": n}``, left on the device until
    read: the first access to a value fetches all of them at once (one wait for the step, one transfer) and
    gives Python numbers, floats and ints for counters; keys and ``len`` need no fetch.

    A read-only ``Mapping``: ``logs["loss"]``, ``dict(logs)``, ``logs == {...}`` work; use ``dict(logs)``
    where a real ``dict`` is needed (``json.dumps``, mutation).

    Keras equivalent: the dict ``train_on_batch(..., return_dict=True)`` returns (floats, read at once).
    """

    __slots__ = ("_keys", "_source", "_index", "_values")

    def __init__(self, device_logs: dict, *, index: int | None = None, _source: _Fetched | None = None):
        self._keys = tuple(device_logs)
        self._source = _Fetched(device_logs) if _source is None else _source
        self._index = index
        self._values = None

    @classmethod
    def per_step(cls, stacked: dict, steps: int) -> list["Logs"]:
        """One view per step of logs stacked along a leading axis of length ``steps``; one shared fetch."""
        source = _Fetched(stacked)
        return [cls(stacked, index=j, _source=source) for j in range(steps)]

    def _host(self) -> dict:
        if self._values is None:
            host = self._source.get()
            pick = (lambda v: v) if self._index is None else (lambda v: v[self._index])  # noqa: E731
            self._values = {k: _number(pick(host[k])) for k in self._keys}
        return self._values

    def __getitem__(self, key):
        return self._host()[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key) -> bool:
        return key in self._keys

    def __repr__(self) -> str:
        return repr(self._host())


def _unique_names(metrics: tuple, weighted: tuple) -> tuple[tuple, tuple]:
    """Metrics with distinct log keys: a weighted metric whose name is taken gets the prefix ``weighted_``."""
    names = {"loss", "nonfinite_steps"}

    def claim(metric, prefix):
        name = prefix + metric.name if prefix and metric.name in names else metric.name
        if name in names:
            raise ValueError(
                f"Two metrics (or a metric and a built-in log) are named {name!r}; give one another name, e.g. "
                f"jm.metrics.get({metric.name!r}, name='other_name')."
            )
        names.add(name)
        return metric if name == metric.name else dataclasses.replace(metric, name=name)

    return tuple(claim(m, "") for m in metrics), tuple(claim(m, "weighted_") for m in weighted)


def make_train_step(
    model,
    optimizer: optax.GradientTransformation,
    loss,
    *,
    metrics=(),
    weighted_metrics=(),
    semantics: str = "keras3",
    class_weight: dict | None = None,
    loss_kwargs: dict | None = None,
    mesh: Mesh | None = None,
    donate: bool = True,
) -> TrainStep:
    """Build the jit-compiled pure training step (and evaluation/prediction functions) for ``model``.

    The model is split once (``nnx.split``) in training mode and once in inference mode; its arrays are
    not touched. Use the result in a custom loop::

        ts = jm.training.make_train_step(model, optax.adam(1e-3), "binary_crossentropy",
                                         metrics=[jm.metrics.BinaryAccuracy(name="acc")])
        state = ts.init_state(model, seed=0)
        for batch in batches:                  # dicts: x, y, mask (or None), sample_weight (or None)
            state, logs = ts.step(state, batch)
        nnx.update(model, state.params, state.other)

    Args:
      model: an NNX module whose call is ``model(x, mask=None) -> (outputs, output_mask)``
        (:class:`jaxmask.nn.Sequential`).
      optimizer: an optax ``GradientTransformation``.
      loss: anything :func:`jaxmask.masked_loss` accepts (a Keras name, a ``jm.losses`` function or
        ``Loss`` object, a callable). A ``Loss`` object's ``reduction`` is used; ``semantics`` below
        replaces its own.
      metrics: metric objects (or names for :func:`jaxmask.metrics.get`); they see the mask, not the
        sample weights (Keras' ``metrics=``). Keras' shape-dependent ``"accuracy"`` needs shapes: pass
        ``jm.metrics.resolve("accuracy", y_true_shape, y_pred_shape)`` (``Trainer`` does this for you).
      weighted_metrics: like ``metrics`` but also weighted by ``sample_weight`` (Keras' ``weighted_metrics=``);
        a name already used gets the prefix ``weighted_``.
      semantics: the Keras version whose loss normalisation to reproduce (see :func:`jaxmask.masked_loss`).
      class_weight: optional ``{class: weight}`` applied in the loss (static: one compilation per dict).
      loss_kwargs: extra keyword arguments of the loss function (``from_logits``, ``label_smoothing``...).
      mesh: optional ``jax.sharding.Mesh`` with a ``"batch"`` axis; outputs (state, logs) are replicated
        over it. Put batches sharded along ``"batch"`` (see :func:`jaxmask.training.place_batch`).
      donate: donate the ``TrainState`` buffers to the step (in-place updates; the old state is invalid).

    Returns:
      A :class:`TrainStep`.
    """
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`optimizer` must be an optax GradientTransformation such as optax.adam(1e-3); received "
            f"{type(optimizer).__name__}."
        )
    metric_objs = tuple(jm_metrics.get(m) for m in metrics)
    weighted_objs = tuple(jm_metrics.get(m) for m in weighted_metrics)
    metric_objs, weighted_objs = _unique_names(metric_objs, weighted_objs)
    ts = TrainStep(
        graphdef=_graphdef(model, training=True),
        eval_graphdef=_graphdef(model, training=False),
        rng_template=_split(model)[2],
        optimizer=optimizer,
        loss=jm_losses.get(loss) if isinstance(loss, (str, dict)) else loss,
        metrics=metric_objs,
        weighted_metrics=weighted_objs,
        semantics=semantics,
        class_weight=dict(class_weight) if class_weight is not None else None,
        loss_kwargs=dict(loss_kwargs or {}),
        mesh=mesh,
    )
    replicated = {} if mesh is None else {"out_shardings": NamedSharding(mesh, PartitionSpec())}
    ts.step = jax.jit(ts._train, donate_argnums=(0,) if donate else (), **replicated)
    ts.evaluate = jax.jit(ts._evaluate, **replicated)
    ts.predict = jax.jit(ts._predict, **replicated)  # replicated: readable by every process of a multi-host run
    ts.init_jit = jax.jit(ts._init, static_argnames=("seed",))
    ts.zeros_jit = jax.jit(ts._zero_accumulators)
    ts.run_jit = jax.jit(ts._run, donate_argnums=(1,) if donate else (), static_argnames=("steps", "reset"), **replicated)
    ts.run_evaluate = jax.jit(ts._run_evaluate, static_argnames=("steps",), **replicated)
    ts.run_predict = jax.jit(ts._run_predict, static_argnames=("steps",), **replicated)
    return ts


def host_logs(logs: dict) -> dict:
    """Logs as Python numbers (floats; ints for counters)."""
    out = {}
    for k, v in logs.items():
        v = np.asarray(jax.device_get(v))
        out[k] = int(v) if np.issubdtype(v.dtype, np.integer) else float(v)
    return out
