"""``jm.Trainer``: Keras' ``fit`` / ``evaluate`` / ``predict`` / ``train_on_batch`` over one jit-compiled
pure training step, with resumable checkpoints, length bucketing and data parallelism."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxmask import metrics as jm_metrics
from jaxmask import optimizers as jm_optimizers
from jaxmask._checks import check_choice
from jaxmask.perf import configure_cpu_allocator
from jaxmask.functional.reduction import SEMANTICS
from jaxmask.training import _checkpoint as ckpt
from jaxmask.training._callbacks import BackupAndRestore, Callback, CallbackList, History, ModelCheckpoint, ProgressBar
from jaxmask.training._data import (
    ArrayData,
    Buckets,
    Layout,
    Prefetch,
    Stream,
    batch_mesh,
    check_batch_size,
    check_boundaries,
    check_steps,
    default_boundaries,
    epoch_plan,
    epoch_rng,
    is_stream,
    pad_time,
    padding_report,
    place_batch,
    prepare,
    split_validation,
    unpack_batch,
    unpack_x,
    valid_lengths,
)
from jaxmask.training._outputs import OutputLosses, build_losses, output_losses, output_metrics
from jaxmask.training._step import Logs, TrainStep, _call_model, host_logs, make_train_step


def _verbose(verbose) -> int:
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"`verbose` must be 'auto', 0, 1 or 2; received {verbose!r}.")
    return int(verbose)


class Trainer:
    """Train, evaluate and run a masked sequence model with Keras' ``fit`` API and Keras' numbers.

    The loss sees the model's output mask (``Masking`` / ``Embedding(mask_zero=True)`` make one, as in
    Keras), AND-ed with a mask you pass yourself, either as ``x=(x, mask)`` or ``mask=`` (bool [N, T],
    True = valid step); your mask also goes into the model. The loss is normalised as the chosen Keras
    version does (``semantics``, see :func:`jaxmask.masked_loss`); metrics count valid steps only.

    One ``fit`` step is one jit-compiled pure function (:func:`jaxmask.training.make_train_step`) with
    donated optimizer state; the model is split once and the loop passes arrays only. Arrays given to
    ``fit`` / ``evaluate`` / ``predict`` go to the device once per call and each step gathers its batch there;
    logs stay on the device until read (:class:`jaxmask.training.Logs`). The model object holds the trained
    weights (the Trainer's own arrays, no copy) after every epoch, at the end of every call and whenever
    ``trainer.model`` is read, so ``model(x)`` and ``jm.nn`` code keep working. Weights you assign to the
    model between calls are picked up by the next call (the optimizer state is kept, as in Keras).

    Data parallel: the batch is split over ``mesh`` (default: all devices along one ``"batch"`` axis),
    parameters are replicated; the same code runs on 1 or many devices. For several hosts, call
    ``jax.distributed.initialize()`` in every process before building the Trainer and run the same script
    everywhere: arrays are the same in every process (each one hands only its own devices' rows of every
    batch to ``jax.make_array_from_process_local_data``); a stream of batches yields this process's share of
    every global batch (the shares of processes 0, 1, ... in order make the global batch; same shapes in every
    process). Only process 0 writes files and progress bars; checkpoints need a directory all processes see.

    Args:
      model: a :class:`jaxmask.nn.Sequential` (or any NNX module with ``model(x, mask) -> (y, mask)``).
      optimizer: an optax ``GradientTransformation``.
      loss: a Keras loss name, a ``jm.losses`` function or ``Loss`` object, or a callable.
      metrics: Keras names ("accuracy" is resolved from the shapes as Keras does) or ``jm.metrics``
        objects; masked, not weighted by ``sample_weight``.
      weighted_metrics: like ``metrics``, also weighted by ``sample_weight``.
      semantics: "keras3" (default), "tf_keras", "tf_keras_pre212" or "keras_legacy".
      seed: root of dropout randomness (every layer's RNG stream is re-seeded from (seed, step) inside the
        step, so the layers' own ``nnx.Rngs`` seeds do not matter in training) and of the per-epoch shuffles.
      mesh: a ``jax.sharding.Mesh`` with a ``"batch"`` axis; default :func:`jaxmask.training.batch_mesh`.
      loss_kwargs: extra arguments of the loss function (``from_logits=True``, ``label_smoothing``...).
      debug_nans: check every training batch on the host before its step runs (``fit``, ``train_on_batch``)
        and raise ``ValueError`` naming the batch and the (sample, step) positions where ``x`` holds NaN or
        Inf at a step the model treats as valid (its first layer's mask: ``Masking``, which counts a NaN step
        as valid, or ``Embedding(mask_zero=True)``; else the mask you pass; else every step), or where ``y`` /
        ``sample_weight`` do at a valid step. Padded steps are not checked: they may hold anything. Off by
        default: such a step is then skipped and counted in ``nonfinite_steps``. Costs a host pass per batch.
      steps_per_execution: steps per compiled call (Keras' name): ``fit`` runs groups of this many batches
        of arrays as one ``lax.scan`` over batches gathered on the device (``evaluate`` and ``predict`` too),
        with the same numbers, bit for bit, as single steps. Batch callbacks are called for every step, after
        the group ran, with that step's logs (Keras calls them once per group); a group ends at every step
        where a ``ModelCheckpoint`` or ``BackupAndRestore`` with an int ``save_freq`` saves, and
        ``stop_training`` takes effect at the end of the group. Groups that would be shorter (the end of an
        epoch) run as single steps; streams of batches and bucketed arrays run one step per call.

    Example::

        model = jm.nn.Sequential([jm.nn.Masking(0.0), jm.nn.LSTM(8, 100, return_sequences=True, rngs=rngs),
                                  jm.nn.Dropout(0.5, rngs=rngs), jm.nn.Dense(100, 1, activation="sigmoid", rngs=rngs)])
        trainer = jm.Trainer(model, optax.adam(1e-3), "binary_crossentropy", metrics=["accuracy"])
        history = trainer.fit(x, y, batch_size=64, epochs=10, validation_split=0.2)
        per_sequence = trainer.predict(x_test, ragged=True)

    Keras equivalent: ``model.compile(optimizer, loss, metrics)`` then ``model.fit`` etc.
    """

    def __init__(
        self,
        model,
        optimizer,
        loss,
        *,
        metrics=(),
        weighted_metrics=(),
        semantics: str = "keras3",
        seed: int = 0,
        mesh: Mesh | None = None,
        loss_kwargs: dict | None = None,
        debug_nans: bool = False,
        steps_per_execution: int = 1,
        loss_weights=None,
    ):
        if not isinstance(model, nnx.Module):
            raise TypeError(f"`model` must be a Flax NNX module such as jm.nn.Sequential; received {type(model).__name__}.")
        optimizer = jm_optimizers.get(optimizer)  # Keras names ('adam', ...) with Keras' defaults
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(
                f"`optimizer` must be an optax GradientTransformation such as optax.adam(1e-3); received "
                f"{type(optimizer).__name__}."
            )
        check_choice("semantics", semantics, SEMANTICS)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"`seed` must be an int; received {type(seed).__name__}.")
        if isinstance(metrics, str) or isinstance(weighted_metrics, str):
            raise TypeError("`metrics` and `weighted_metrics` must be lists, e.g. metrics=['accuracy'].")
        if isinstance(steps_per_execution, bool) or not isinstance(steps_per_execution, (int, np.integer)) or steps_per_execution < 1:
            raise ValueError(f"`steps_per_execution` must be a positive int; received {steps_per_execution!r}.")
        if jax.default_backend() == "cpu":
            configure_cpu_allocator()
        self._model = model
        self.optimizer = optimizer
        self.loss = loss
        self.loss_weights = loss_weights
        self.layout = Layout.of(model)
        self._loss = build_losses(loss, loss_weights, self.layout.output_names)
        self.metrics = metrics if isinstance(metrics, dict) else tuple(metrics)
        self.weighted_metrics = weighted_metrics if isinstance(weighted_metrics, dict) else tuple(weighted_metrics)
        self.semantics = semantics
        self.seed = int(seed)
        self.mesh = batch_mesh() if mesh is None else mesh
        self.loss_kwargs = dict(loss_kwargs or {})
        self.debug_nans = bool(debug_nans)
        self.steps_per_execution = int(steps_per_execution)
        self.state = None
        self.stop_training = False
        self.global_step = 0
        self.start_epoch = 0
        self.start_batch = 0
        self.resumed = False
        self.history = None
        self._steps: dict = {}
        self._resolved = None
        self._y_has_time = False
        self._vars = None
        self._pushed = None
        self._stale = False
        self._placed = None
        self._fit = None
        self._valid_steps = None
        self._checked: dict = {}
        self._predictor = make_train_step(
            model, optimizer, self._loss, semantics=semantics, loss_kwargs=self.loss_kwargs, mesh=self.mesh, donate=False
        )

    # ---------------------------------------------------------------------------------- model <-> state

    @property
    def model(self):
        """The model being trained. Read here, it holds the trained weights: the Trainer keeps the weights as
        arrays of its own during ``fit`` and gives them to the model (no copy) when an epoch or a call ends, and
        whenever this property is read."""
        if self._stale:
            self._push()
        return self._model

    def _model_vars(self) -> list:
        """The model's variables, RNG streams aside, in the order of the leaves of ``(state.params, state.other)``."""
        params, _, other = nnx.state(self._model, nnx.Param, nnx.RngState, ...)
        is_var = lambda v: isinstance(v, nnx.Variable)  # noqa: E731
        return jax.tree_util.tree_leaves(params, is_leaf=is_var) + jax.tree_util.tree_leaves(other, is_leaf=is_var)

    def _pull(self, rescan: bool = True) -> None:
        """Adopt weights assigned to the model since the Trainer last gave it its own (optimizer state kept):
        every variable whose array is not the one last given. ``rescan`` also finds replaced variables or layers
        (a walk over the model, ~1 ms; ``train_on_batch`` checks the variables it knows, ~1 µs each)."""
        if self.state is None or self._vars is None:
            return
        if rescan:
            found = self._model_vars()
            if len(found) != len(self._vars) or any(a is not b for a, b in zip(found, self._vars)):
                self._vars, self._pushed = found, [None] * len(found)
        values = [v.get_raw_value() for v in self._vars]
        changed = [i for i, (a, b) in enumerate(zip(values, self._pushed)) if a is not b]
        if not changed:
            return
        leaves, treedef = jax.tree_util.tree_flatten((self.state.params, self.state.other))
        for i in changed:
            leaves[i] = values[i]
        params, other = self._base.replicate(jax.tree_util.tree_unflatten(treedef, leaves))
        self.state = self.state._replace(params=params, other=other)
        self._pushed = values

    def _push(self) -> None:
        """Give the model the trained variables: the state's own arrays (the steps never donate them)."""
        self._stale = False
        if self.state is None or self._vars is None:
            return
        leaves = jax.tree_util.tree_leaves((self.state.params, self.state.other))
        for var, leaf in zip(self._vars, leaves):
            var.set_raw_value(leaf)
        self._pushed = leaves

    def get_weights(self):
        """Host copy of ``(params, other)`` (``nnx.State`` pytrees of NumPy arrays)."""
        return jax.device_get((self.state.params, self.state.other))

    def set_weights(self, weights) -> None:
        """Set ``(params, other)`` as returned by :meth:`get_weights`; the model is updated too."""
        params, other = weights
        as_jax = lambda t: self._base.replicate(jax.tree_util.tree_map(jnp.asarray, t))  # noqa: E731
        self.state = self.state._replace(params=as_jax(params), other=as_jax(other))
        self._push()

    def save_weights(self, path) -> str:
        """Write the model variables to an atomic checkpoint directory ``path`` (replaced if it exists);
        load with :func:`jaxmask.training.load_weights`."""
        return ckpt.save_tree(path, {"params": self.state.params, "other": self.state.other})

    # ------------------------------------------------------------------------------------------ build

    @property
    def _base(self) -> TrainStep:
        return self._steps[None]

    def _output_spec(self, data: ArrayData):
        rows = np.arange(min(data.n, 2))
        batch = data.batch(rows)
        graphdef, state = nnx.split(self.model)

        def forward(state, x, mask):
            return _call_model(nnx.merge(graphdef, state), x, mask)

        spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
        tree_spec = lambda t: jax.tree_util.tree_map(spec, t)  # noqa: E731
        return jax.eval_shape(forward, state, tree_spec(batch["x"]), tree_spec(batch["mask"]))

    def _loss_of(self, j: int):
        """The loss of output ``j`` (None when that output is not trained)."""
        if isinstance(self._loss, OutputLosses) and self._loss.several:
            return self._loss.losses[j]
        return self._loss

    def _check_labels(self, data: ArrayData, prefix: str = "") -> tuple:
        """Raise unless ``data.y`` fits the model's output and the loss; return the output's shape specs.

        Traces the model and the loss once per input layout (no compilation), so shape errors surface
        before training starts, with the loss' own message where the loss refuses the labels.
        """
        leaves, structure = jax.tree_util.tree_flatten((data.x, data.y, data.mask, data.sample_weight))
        key = (structure, tuple((a.shape[1:], a.dtype.str) for a in leaves))
        if key in self._checked:
            return self._checked[key]
        y_pred, out_mask = self._output_spec(data)
        several = isinstance(y_pred, (list, tuple))
        if several != (self.layout.output_names is not None):
            raise ValueError(
                f"The model returns {len(y_pred) if several else 'one output'}{' outputs' if several else ''} but declares "
                f"output_names={getattr(self._model, 'output_names', None)!r}. The Trainer needs one name per output of a "
                "multi-output model: give it an `output_names` attribute (jm.nn.Model has one)."
            )
        preds, labels = (list(y_pred), list(data.y)) if several else ([y_pred], [data.y])
        for j, (pred, y) in enumerate(zip(preds, labels)):
            name = self.layout.output_label("y", j)
            if y is None:
                if self._loss_of(j) is not None:
                    raise ValueError(f"{prefix}`{name}` is missing; that output has a loss, so it needs labels.")
                continue
            out = tuple(pred.shape[1:])
            allowed = [out]
            if out:
                allowed += [out[:-1], out[:-1] + (1,)]
            if tuple(y.shape[1:]) not in allowed:
                alts = " or ".join(str((data.n,) + a) for a in allowed[1:2])
                raise ValueError(
                    f"{prefix}`{name}` has shape {y.shape}, which does not fit the model's output of per-sample shape "
                    f"{out}: labels must be [N] + {out} = {(data.n,) + out} (or {alts} for integer class ids). "
                    "Per-step binary labels of a Dense(1) output are [N, T, 1]: use y[..., None]."
                )
        if several and isinstance(self._loss, OutputLosses):
            self._check_output_losses(data, preds, out_mask, prefix)
        batch = jax.tree_util.tree_map(
            _two_rows, {"x": data.x, "y": data.y, "mask": data.mask, "sample_weight": data.sample_weight}
        )
        probe = self._predictor
        params, other = nnx.split(self.model, nnx.Param, nnx.RngState, ...)[1::2]
        jax.eval_shape(probe._evaluate, params, other, jax.eval_shape(probe._zero_accumulators), batch)
        self._checked[key] = (y_pred, out_mask)
        return y_pred, out_mask

    def _check_output_losses(self, data: ArrayData, preds, masks, prefix: str) -> None:
        """Trace each output's loss alone, so that a loss refusing its labels names the output."""
        two = lambda a: None if a is None else _two_rows(a)  # noqa: E731
        n = len(preds)
        for j, name in enumerate(self.layout.output_names):
            if self._loss.losses[j] is None or data.y[j] is None:
                continue
            at = lambda v, j=j: [v if k == j else None for k in range(n)]  # noqa: E731
            w = data.sample_weight[j] if isinstance(data.sample_weight, list) else data.sample_weight

            def one(y, p, m, w, j=j, at=at):
                return self._loss.value(j, at(y), at(p), at(m), w, semantics=self.semantics, loss_kwargs=self.loss_kwargs)

            try:
                jax.eval_shape(one, two(data.y[j]), two(preds[j]), two(masks[j]), two(w))
            except (ValueError, TypeError) as e:
                raise type(e)(f"{prefix}output {name!r} (labels `y[{name!r}]`): {e}") from None

    def _build(self, data: ArrayData) -> None:
        y_pred, out_mask = self._check_labels(data)
        has_time = lambda p, m: m is not None and p.ndim >= 3 and p.shape[1] == data.t  # noqa: E731
        several = isinstance(y_pred, (list, tuple))
        self._y_has_time = tuple(map(has_time, y_pred, out_mask)) if several else has_time(y_pred, out_mask)
        if self._resolved is not None:
            return
        preds, labels = (list(y_pred), list(data.y)) if several else ([y_pred], [data.y])

        def resolve_at(m, j):
            loss = self._loss_of(j)
            loss = getattr(loss, "__name__", None) if not isinstance(loss, str) else loss
            y_shape = (preds[j].shape[0],) + tuple(labels[j].shape[1:])
            return jm_metrics.resolve(m, y_shape, preds[j].shape, loss=loss, semantics=self.semantics)

        if several:
            names = self.layout.output_names
            self._resolved = (
                output_metrics(self.metrics, names, resolve_at),
                output_losses(self._loss, self.semantics, self.loss_kwargs)
                + output_metrics(self.weighted_metrics, names, resolve_at),
            )
        else:
            if isinstance(self.metrics, dict) or isinstance(self.weighted_metrics, dict):
                raise TypeError("`metrics` and `weighted_metrics` must be lists, e.g. metrics=['accuracy'] (dicts by "
                                "output name are for models with several outputs).")
            self._resolved = (tuple(resolve_at(m, 0) for m in self.metrics),
                              tuple(resolve_at(m, 0) for m in self.weighted_metrics))
        base = self._train_step(None)
        self.state = base.init_state(self.model, seed=self.seed)
        self._vars = self._model_vars()
        self._pushed = [v.get_raw_value() for v in self._vars]

    def _train_step(self, class_weight) -> TrainStep:
        if class_weight is not None and not isinstance(class_weight, dict):
            raise TypeError(f"`class_weight` must be a dict {{class: weight}}; received {type(class_weight).__name__}.")
        if class_weight is not None and self.layout.output_names is not None:
            raise ValueError("`class_weight` is only supported for models with a single output (as in Keras); use "
                             "sample_weight, one array per output.")
        key = None if class_weight is None else tuple(sorted((int(k), float(v)) for k, v in class_weight.items()))
        if key not in self._steps:
            self._steps[key] = make_train_step(
                self.model,
                self.optimizer,
                self._loss,
                metrics=self._resolved[0],
                weighted_metrics=self._resolved[1],
                semantics=self.semantics,
                class_weight=None if key is None else dict(key),
                loss_kwargs=self.loss_kwargs,
                mesh=self.mesh,
            )
        return self._steps[key]

    @property
    def trace_counts(self) -> dict:
        """How often each compiled function was traced, summed over the class_weight variants."""
        total = {"train": 0, "evaluate": 0, "predict": self._predictor.trace_counts["predict"]}
        for ts in self._steps.values():
            total["train"] += ts.trace_counts["train"]
            total["evaluate"] += ts.trace_counts["evaluate"]
        return total

    # ------------------------------------------------------------------------------------------ fit

    def _input_mask(self, x: np.ndarray) -> np.ndarray:
        """The mask the model's first layer derives from x (Masking, Embedding(mask_zero=True)), host side."""
        layers = getattr(self.model, "layers", None)
        first = layers[0] if layers is not None and len(layers) else None
        mask = None
        if first is not None and hasattr(first, "compute_output_mask"):
            chunks = [first.compute_output_mask(x[i : i + 4096], None) for i in range(0, len(x), 4096)]
            if all(c is not None for c in chunks):
                mask = np.concatenate([np.asarray(c) for c in chunks])
        if mask is None:
            raise ValueError(
                "bucket_by_length needs each sequence's length: pass mask= (or x=(x, mask)), or start the model "
                "with jm.nn.Masking or jm.nn.Embedding(mask_zero=True)."
            )
        return mask

    def _buckets(self, data: ArrayData, bucket_by_length) -> Buckets | None:
        if bucket_by_length is False or bucket_by_length is None:
            return None
        if self.layout.input_names is not None or self.layout.output_names is not None:
            raise ValueError(
                "bucket_by_length on arrays needs a model with one input and one output; for several, pass batches "
                "(a generator or PyDataset-like object): their time axes are padded to a few lengths (see jm.Trainer.fit)."
            )
        if self.semantics in ("tf_keras_pre212", "keras_legacy"):
            raise ValueError(
                f"bucket_by_length would change the loss under semantics={self.semantics!r}, which divides by the "
                "padded size (B·T); use semantics='keras3' or 'tf_keras', or bucket_by_length=False."
            )
        for i, layer in enumerate(getattr(self.model, "layers", ())):
            if getattr(layer, "go_backwards", False) and getattr(layer, "return_sequences", False):
                raise ValueError(
                    f"bucket_by_length cannot be used with layers[{i}] ({type(layer).__name__}, go_backwards=True, "
                    "return_sequences=True): its outputs are in reversed time order, so trimming the padding moves "
                    "them relative to the labels."
                )
        mask = data.mask if data.mask is not None else self._input_mask(data.x)
        lengths = valid_lengths(mask)
        if bucket_by_length is True:
            bounds = default_boundaries(lengths, data.t)
        else:
            bounds = check_boundaries(bucket_by_length, lengths, data.t)
        buckets = Buckets.build(lengths, bounds)
        self._valid_steps = mask.sum(axis=1)
        return buckets

    def _validation(self, validation_data) -> ArrayData:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError(
                "`validation_data` must be (x_val, y_val) or (x_val, y_val, sample_weight_val), where x_val may be "
                f"(x_val, mask_val); received {type(validation_data).__name__}"
                f"{' of length ' + str(len(validation_data)) if isinstance(validation_data, (tuple, list)) else ''}."
            )
        x_val, y_val = validation_data[0], validation_data[1]
        sw = validation_data[2] if len(validation_data) == 3 else None
        return prepare(x_val, y_val, sample_weight=sw, prefix="validation_data ", layout=self.layout)

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        validation_split=0.0,
        validation_data=None,
        shuffle=True,
        class_weight=None,
        sample_weight=None,
        initial_epoch=0,
        steps_per_epoch=None,
        validation_steps=None,
        validation_batch_size=None,
        *,
        mask=None,
        bucket_by_length=False,
    ) -> History:
        """Train for ``epochs`` epochs; return a :class:`History` (``history.history["loss"]``...), as Keras.

        ``x`` comes in any of the forms Keras users have:

        * arrays: [N, T, F] float (or int token ids [N, T]), or ``(x, mask)``; fewer than ``batch_size``
          samples make one batch of all of them (Keras);
        * a ragged list of [T_i, F] (or [T_i] token) sequences: padded at the end (with the ``mask_value`` of
          the model's ``Masking`` layer, else 0) to :func:`jaxmask.training.padded_length` of the longest, and
          masked from the lengths; ``y`` and ``sample_weight`` may be lists of [T_i, ...] arrays too;
        * several inputs (``jm.nn.Model``): a list in input order or a dict by input name, all with the same N;
        * a stream of batches: any iterable (a generator, a grain or torch DataLoader, tf.data's
          ``as_numpy_iterator()``) or an object with ``__len__`` and ``__getitem__`` (Keras' ``PyDataset``
          protocol) giving tuples ``(x, y)``, ``(x, y, sample_weight)`` or ``(x, y, sample_weight, mask)``.
          ``y``, ``sample_weight``, ``mask``, ``batch_size`` and ``validation_split`` then come from the batches
          (passing them is an error, as in Keras). Each batch's time axis is padded up to
          :func:`jaxmask.training.padded_length` (8, 10, 12, 14, 16, 20, ..., at most four lengths per doubling;
          ``bucket_by_length=[...]`` gives the lengths instead), with a mask for the padding, so batches of
          varying T compile a bounded number of times. Batches are loaded, checked and put on the devices in a
          background thread one batch ahead of the step, so a slow loader overlaps with training.

        The mask is the model's (``Masking``, ``Embedding(mask_zero=True)``), AND-ed with one you give
        (``x=(x, mask)``, ``mask=``, the 4th element of a batch, or the lengths of a ragged list).

        Args:
          x: see above.
          y: labels [N, T, C] for per-step outputs ([N, T] / [N, T, 1] integer ids for sparse losses), [N, C]
            for per-sample outputs; for several outputs a list in output order or a dict by output name.
          batch_size: samples per step (default 32); N when there are fewer samples. Arrays only.
          epochs: index of the last epoch + 1 (Keras' meaning, with ``initial_epoch``).
          verbose: 0 silent, 1 (and "auto") a tqdm bar with the running loss and metrics, 2 one line per epoch.
          callbacks: :class:`Callback` instances (History is added for you).
          validation_split: in (0, 1): hold out the last samples (before shuffling): N - floor(N·(1 - split)),
            as Keras. Arrays only.
          validation_data: ``(x_val, y_val)`` or ``(x_val, y_val, sample_weight_val)``, or a stream of batches;
            overrides the split.
          shuffle: reshuffle every epoch; the order is a pure function of (seed, epoch). For a PyDataset-like
            ``x`` the order of its batches is shuffled (as Keras); other iterables are read as they come.
          class_weight: ``{class id: weight}`` for the loss (one output only, as Keras).
          sample_weight: [N], [N, 1] or [N, T] weights for the loss (and weighted metrics); for several outputs
            one array for all or a list / dict per output.
          initial_epoch: epoch to start at.
          steps_per_epoch: streams only: batches per epoch; the next epoch goes on where this one stopped (as
            Keras). Default: one pass over the stream per epoch. A one-shot iterator (a generator) that gives no
            batch for an epoch is an error naming ``x``; one that runs out during an epoch ends that epoch with
            Keras' warning.
          validation_steps: batches per validation (streams: as ``steps_per_epoch``; arrays: the first ones).
          validation_batch_size: batch size of validation (default ``batch_size``).
          mask: bool [N, T] (True = valid step), instead of ``x=(x, mask)``.
          bucket_by_length: arrays: False; True to sort sequences into up to 4 buckets of valid length
            (quantiles, multiples of 8); or a list of bucket lengths. Each batch is cut to its bucket's length
            (right-trim: saves work for post-padded data), compiled once per bucket shape. The loss and metrics do
            not change (padded steps carry no weight); epoch logs gain ``padding_saved`` (share of the N·T steps
            not computed) and ``padding_waste`` (share of the computed steps that are padding). Streams: a list
            of the lengths batches are padded up to (longer batches use the default lengths).

        Returns:
          The :class:`History`; also ``trainer.history``.

        Raises:
          ValueError: x and y (or mask, sample_weight) sample counts differ; labels that do not fit the output;
            ``validation_split`` outside (0, 1); a backup from another run; a stream with arguments that come from
            its batches, or that gives no batch for an epoch; a batch that is not a tuple of 1 to 4 items.
        """
        streaming = is_stream(x)
        steps_per_epoch = check_steps("steps_per_epoch", steps_per_epoch)
        validation_steps = check_steps("validation_steps", validation_steps)
        source = pending = data = None
        if streaming:
            _no_stream_args(x, y=y, sample_weight=sample_weight, mask=mask, batch_size=batch_size)
            if validation_split:
                raise ValueError(
                    "`validation_split` needs arrays, it cannot split a stream of batches; pass validation_data."
                )
            source = Stream(x, "x", steps=steps_per_epoch, shuffle=shuffle)
        else:
            if steps_per_epoch is not None:
                raise ValueError(
                    "`steps_per_epoch` is for streams of batches (generators, PyDataset-like objects); with arrays an "
                    "epoch is ceil(N / batch_size) steps. Slice the arrays, or pass a generator."
                )
            data = prepare(x, y, mask=mask, sample_weight=sample_weight, layout=self.layout)
        val = val_source = None
        if validation_split:
            if validation_data is None:
                data, val = split_validation(data, validation_split)
            else:
                split_validation(data, validation_split)
        if validation_data is not None:
            if is_stream(validation_data):
                val_source = Stream(validation_data, "validation_data", steps=validation_steps)
            else:
                val = self._validation(validation_data)
        for name, value in (("epochs", epochs), ("initial_epoch", initial_epoch)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int; received {value!r}.")
        verbose = _verbose(verbose)
        layout = self.layout
        if streaming:
            if bucket_by_length not in (True, False, None):
                lengths = check_boundaries(bucket_by_length, np.zeros(1, np.int64), 2**31)
                self.layout = dataclasses.replace(layout, bucket_lengths=tuple(lengths))
            start_step = 0 if self.state is None else int(self.state.step)
            rng = epoch_rng(self.seed, start_step, initial_epoch) if shuffle else None
            pending = self._stream_start(source, initial_epoch, rng)
            batch_size = None
            buckets = None
        else:
            batch_size = check_batch_size(32 if batch_size is None else batch_size, data.n)
            self._build(data)
        val_batch_size = validation_batch_size or batch_size or 32
        if val is not None:
            self._check_labels(val, prefix="validation_data ")
        step = self._train_step(class_weight)
        if not streaming:
            buckets = self._buckets(data, bucket_by_length)
        placed = None if streaming or buckets is not None else self._place(_arrays(data))
        self._pull()

        history = History()
        user = list(callbacks or [])
        for cb in user:
            if not isinstance(cb, Callback):
                raise TypeError(f"`callbacks` must hold jm.training.Callback objects; received {type(cb).__name__}.")
        backups = [cb for cb in user if isinstance(cb, BackupAndRestore)]
        bars = [ProgressBar(per_step=verbose == 1)] if verbose and jax.process_index() == 0 else []
        cbs = [cb for cb in user if cb not in backups] + [history] + bars + backups  # Keras' order: History sees logs others add
        self.global_step = int(self.state.step)
        self.start_epoch, self.start_batch, self.resumed = int(initial_epoch), 0, False
        self.stop_training = False
        if streaming:
            fingerprint = {"stream": type(x).__name__, "steps_per_epoch": steps_per_epoch, "seed": self.seed,
                           "shuffle": bool(shuffle), "buckets": self.layout.bucket_lengths}
        else:
            fingerprint = {"n": data.n, "t": data.t, "batch_size": batch_size, "seed": self.seed, "shuffle": bool(shuffle),
                           "buckets": None if buckets is None else list(buckets.boundaries)}
        self._fit = {"fingerprint": fingerprint, "start_step": self.global_step, "callbacks": cbs}
        steps = source.known_length() if streaming else len(epoch_plan(data.n, batch_size, rng=None, buckets=buckets))
        callback_list = CallbackList(cbs, self, {"epochs": epochs, "steps": steps, "verbose": verbose})
        for cb in backups:
            if cb.restore():
                break
        history.bucketing = None if buckets is None else {
            "boundaries": list(buckets.boundaries),
            "samples_per_bucket": np.bincount(buckets.assignment, minlength=len(buckets.boundaries)).tolist(),
        }
        self.history = history
        try:
            callback_list.on_train_begin()
            for epoch in range(self.start_epoch, epochs):
                first = self.start_batch if epoch == self.start_epoch else 0
                if first == 0:
                    self.state = self.state._replace(acc=step.init_accumulators())
                callback_list.on_epoch_begin(epoch)
                rng = epoch_rng(self.seed, self._fit["start_step"], epoch) if shuffle else None
                if streaming:
                    if pending is None or self.resumed or epoch != initial_epoch:
                        pending = source.epoch(epoch, rng, skip=first)
                    items = self._stream_items(pending, first, "x", epoch, require_y=True)
                    pending = None
                else:
                    plan = epoch_plan(data.n, batch_size, rng=rng, buckets=buckets)
                    items = self._array_items(data, plan, first, epoch, placed, _save_points(cbs), self.global_step)
                with Prefetch(items) as batches:
                    for i, checked, batch in batches:
                        if checked is not None:
                            self._check_labels(checked, prefix=f"batch {i} of `x`: ")
                        self._train_work(step, i, batch, callback_list)
                        if self.stop_training:
                            break
                if streaming:
                    source.end_epoch()
                epoch_logs = host_logs(step.results(self.state.acc))
                if buckets is not None:
                    epoch_logs.update(padding_report(plan, data.t, self._valid_steps))
                if val is not None:
                    val_logs = self._evaluate_data(val, val_batch_size, validation_steps, keep=True)
                    epoch_logs.update({"val_" + k: v for k, v in val_logs.items()})
                elif val_source is not None:
                    val_logs = self._evaluate_stream(val_source, epoch)
                    epoch_logs.update({"val_" + k: v for k, v in val_logs.items()})
                self._push()
                callback_list.on_epoch_end(epoch, epoch_logs)
                if self.stop_training:
                    break
            # Keras' fit ends with optimizer.finalize_variable_values: the EMA weights with use_ema=True
            self.state = self.state._replace(params=jm_optimizers.finalize_variable_values(self.state.params, self.state.opt_state))
            callback_list.on_train_end()
        finally:
            self._push()
            self._placed = None
            self.layout = layout
        return history

    # ------------------------------------------------------------------------------------------ streams

    def _array_items(self, data: ArrayData, plan, first: int, epoch: int, placed=None, save_points=(), step=0):
        """``(index, None, work)`` for the batches ``plan[first:]`` (run in the prefetch thread): a placed batch, or,
        with the arrays ``placed`` on the device, a :class:`_Work` of ``steps_per_execution`` steps gathered there
        (``step``: the global step before batch ``first``, for :func:`_groups`). Without ``placed``, full batches
        of one device are stacked by ``steps_per_execution`` on the host; bucketed batches run one by one."""
        base = self._base
        size = len(plan[0][0])
        n_full = sum(len(rows) == size and length is None for rows, length in plan)  # 0 when bucketed
        if placed is None:
            def host_batch(i):
                rows, length = plan[i]
                batch = data.batch(rows, length, y_has_time=self._y_has_time)
                if self.debug_nans:
                    self._check_finite(batch, rows, f"batch {i} of epoch {epoch}")
                return batch

            stack = self.steps_per_execution if self.mesh.size == 1 and jax.process_count() == 1 else 1
            for pos, steps in _groups(n_full, stack, first, step, save_points):
                if steps == 1:
                    yield pos, None, place_batch(host_batch(pos), self.mesh)
                else:
                    stacked = jax.tree_util.tree_map(lambda *a: np.stack(a), *[host_batch(i) for i in range(pos, pos + steps)])
                    yield pos, None, _Work(stacked, None, None, steps)
            for i in range(max(first, n_full), len(plan)):
                yield i, None, place_batch(host_batch(i), self.mesh)
            return
        full = base.place(np.stack([rows for rows, _ in plan[:n_full]]).astype(np.int32))
        last = base.place(plan[-1][0][None].astype(np.int32)) if n_full < len(plan) else None
        for pos, steps in _groups(n_full, self.steps_per_execution, first, step, save_points):
            if self.debug_nans:
                for i in range(pos, pos + steps):
                    self._check_finite(data.batch(plan[i][0]), plan[i][0], f"batch {i} of epoch {epoch}")
            yield pos, None, _Work(placed, full, pos, steps)
        if last is not None and first <= n_full:
            if self.debug_nans:
                self._check_finite(data.batch(plan[-1][0]), plan[-1][0], f"batch {n_full} of epoch {epoch}")
            yield n_full, None, _Work(placed, last, 0, 1)

    def _train_work(self, step: TrainStep, i: int, work, callbacks) -> None:
        """Run the steps of one work item, batches ``i, i + 1, ...``, and call the batch hooks for each: around
        the step for one step, after the compiled call (with each step's own logs) for several."""
        if not isinstance(work, _Work):
            work = _Work(work, None, None, 1)
        if work.steps == 1:
            callbacks.on_train_batch_begin(i)
            self.state, logs, _ = step.run(self.state, work.data, work.rows, work.pos)
            self._stale = True
            self.global_step += 1
            callbacks.on_train_batch_end(i, Logs(logs))
            return
        self.state, stacked, _ = step.run(self.state, work.data, work.rows, work.pos, steps=work.steps)
        self._stale = True
        for j, logs in enumerate(Logs.per_step(stacked, work.steps)):
            self.global_step += 1
            callbacks.on_train_batch_begin(i + j)
            callbacks.on_train_batch_end(i + j, logs)

    def _place(self, arrays: dict, keep: bool = False):
        """``arrays`` on the device (replicated over the mesh) for the steps to gather batches from, or None when
        they hold more than ``DEVICE_DATA_BYTES`` (then batches are placed one by one). With ``keep``, the last
        placed arrays are kept for the next call with the same host arrays (validation data, every epoch)."""
        leaves = jax.tree_util.tree_leaves(arrays)
        if self._placed is not None and len(self._placed[0]) == len(leaves) and all(
            a is b for a, b in zip(self._placed[0], leaves)
        ):
            return self._placed[1]
        if sum(a.nbytes for a in leaves) > DEVICE_DATA_BYTES:
            return None
        placed = (self._base if self._steps else self._predictor).place(arrays)
        self._placed = (leaves, placed) if keep else None
        return placed

    def _stream_batch(self, raw, where: str, *, require_y: bool, build: bool = False) -> ArrayData:
        """One batch of a stream, validated (and the Trainer built on it), its time axes padded up to a
        :func:`padded_length`."""
        x, y, sw, mask = unpack_batch(raw, where, require_y=require_y)
        if not require_y:
            y = sw = None
        data = prepare(x, y, mask=mask, sample_weight=sw, require_y=require_y, prefix=f"{where}: ", layout=self.layout)
        if build:
            self._build(data)
        return pad_time(data, self.layout, self._y_has_time)

    def _stream_items(self, raws, first: int, name: str, epoch: int, *, require_y: bool):
        """``(index, padded host data, placed batch)`` for the raw batches ``raws`` (run in the prefetch thread;
        the consumer checks the labels of each new shape)."""
        for i, raw in enumerate(raws, start=first):
            data = self._stream_batch(raw, f"batch {i} of `{name}`", require_y=require_y)
            batch = data.batch(np.arange(data.n))
            if self.debug_nans and require_y:
                self._check_finite(batch, np.arange(data.n), f"batch {i} of epoch {epoch}")
            yield i, data, place_batch(batch, self.mesh, process_local=True)  # per process: its share

    def _stream_start(self, source: Stream, epoch: int = 0, rng=None, *, require_y: bool = True):
        """The raw batches of ``source``'s epoch ``epoch`` (order from ``rng``), the Trainer built on the first one."""
        raws = source.epoch(epoch, rng)
        first = next(raws)
        self._stream_batch(first, f"batch 0 of `{source.name}`", require_y=require_y, build=require_y)
        return itertools.chain([first], raws)

    def _evaluate_stream(self, source: Stream, epoch: int = 0, raws=None) -> dict:
        base = self._base
        acc = base.init_accumulators()
        raws = source.epoch(epoch) if raws is None else raws
        with Prefetch(self._stream_items(raws, 0, source.name, epoch, require_y=True)) as batches:
            for i, checked, batch in batches:
                self._check_labels(checked, prefix=f"batch {i} of `{source.name}`: ")
                acc, _ = base.evaluate(self.state.params, self.state.other, acc, batch)
        source.end_epoch()
        logs = host_logs(base.results(acc))
        logs.pop("nonfinite_steps")
        return logs

    # ------------------------------------------------------------------------------------ debug_nans

    def _valid_steps_of(self, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """bool [B, T]: the steps the model treats as valid (its first layer's mask, else ``mask``, else all)."""
        layers = getattr(self._model, "layers", None)
        first = layers[0] if layers is not None and len(layers) else None
        if first is not None and hasattr(first, "compute_output_mask"):
            out = first.compute_output_mask(x, mask)
            if out is not None and np.shape(out) == x.shape[:2]:
                return np.asarray(out, bool)
        return np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask, bool)

    def _check_finite(self, batch: dict, rows: np.ndarray, where: str) -> None:
        """``debug_nans``: raise if ``x``, ``y`` or ``sample_weight`` of a host batch hold NaN/Inf at valid steps
        (several inputs or outputs: at any step of a sample)."""
        if any(isinstance(batch[k], list) for k in ("x", "y", "sample_weight")):
            found = []
            for key in ("x", "y", "sample_weight"):
                entries = batch[key] if isinstance(batch[key], list) else [batch[key]]
                for j, a in enumerate(entries):
                    if a is None or not np.issubdtype(a.dtype, np.inexact):
                        continue
                    bad = np.flatnonzero(~np.isfinite(a).reshape(a.shape[0], -1).all(-1))
                    if len(bad):
                        found.append(f"`{key}[{j}]` at sample {', '.join(str(int(rows[b])) for b in bad[:10])}")
            if found:
                raise ValueError(f"debug_nans: {where} holds NaN or Inf: {'; '.join(found)}. Samples are rows of the "
                                 "arrays given to fit/train_on_batch (0-based).")
            return
        x = batch["x"]
        valid = self._valid_steps_of(x, batch["mask"])
        label_valid = valid if batch["mask"] is None else valid & batch["mask"]
        found = []
        for name, a in (("x", x), ("y", batch["y"]), ("sample_weight", batch["sample_weight"])):
            if a is None or not np.issubdtype(a.dtype, np.inexact):
                continue
            per_step = a.ndim >= 2 and a.shape[1] == x.shape[1] and (name == "x" or self._y_has_time)
            if per_step:
                bad = ~np.isfinite(a).reshape(a.shape[:2] + (-1,)).all(-1) & (valid if name == "x" else label_valid)
            else:
                bad = ~np.isfinite(a).reshape(a.shape[0], -1).all(-1)
            if bad.any():
                at = np.argwhere(bad)
                shown = [(int(rows[p[0]]), int(p[1])) if per_step else int(rows[p[0]]) for p in at[:10]]
                kind = "(sample, step)" if per_step else "sample"
                more = f", ... ({len(at)} in all)" if len(at) > 10 else ""
                found.append(f"`{name}` at {kind} {', '.join(map(str, shown))}{more}")
        if found:
            raise ValueError(
                f"debug_nans: {where} holds NaN or Inf at valid positions, so its loss or gradients would be "
                f"non-finite: {'; '.join(found)}. Samples are rows of the arrays given to fit/train_on_batch, batches "
                "and epochs are 0-based. Padded steps may hold anything; fix or mask these steps (a jm.nn.Masking layer "
                "counts a step with a NaN feature as valid: NaN != mask_value)."
            )

    # -------------------------------------------------------------------------------------- backups

    def write_backup(self, manager: ckpt.CheckpointManager, position: tuple[int, int]) -> str:
        """Save everything a resumed ``fit`` needs at ``position`` = (epoch, next batch index): the orbax item
        ``state`` (the whole :class:`TrainState`, sharded as it is), one item per callback pytree, and JSON metadata
        (position, step, run fingerprint, callbacks' state). Every process calls it."""
        items, entries, seen = {"state": self.state}, [], {}
        for i, cb in enumerate(self._fit["callbacks"]):
            name = type(cb).__name__
            occurrence = seen.get(name, 0)
            seen[name] = occurrence + 1
            meta, trees = cb.get_state()
            stored = {}
            for tree_name, tree in trees.items():
                stored[tree_name] = f"cb{i}-{tree_name}"
                items[stored[tree_name]] = tree
            entries.append({"class": name, "occurrence": occurrence, "state": meta, "trees": stored})
        meta = {
            "format": 2,
            "position": [int(position[0]), int(position[1])],
            "global_step": self.global_step,
            "start_step": self._fit["start_step"],
            "fingerprint": self._fit["fingerprint"],
            "callbacks": entries,
        }
        return manager.save(f"e{position[0]:06d}_b{position[1]:09d}", items, meta)

    def load_backup(self, checkpoint: ckpt.Checkpoint, meta: dict) -> None:
        """Restore a backup written by :meth:`write_backup` into this ``fit`` call (arrays straight onto the mesh)."""
        expected = self._fit["fingerprint"]
        if meta.get("format") != 2 or meta["fingerprint"] != expected:
            raise ValueError(
                f"The backup was written by a different run: it has {meta.get('fingerprint')}, this fit call has "
                f"{expected}. Resume with the same data, batch_size, seed, shuffle and bucketing, or delete the backup "
                "directory to start over."
            )
        self.state = checkpoint.restore("state", self.state)
        self.global_step = int(meta["global_step"])
        self._fit["start_step"] = int(meta["start_step"])
        self.start_epoch, self.start_batch = (int(v) for v in meta["position"])
        self.resumed = True
        by_key = {(e["class"], e["occurrence"]): e for e in meta["callbacks"]}
        seen = {}
        for cb in self._fit["callbacks"]:
            name = type(cb).__name__
            occurrence = seen.get(name, 0)
            seen[name] = occurrence + 1
            entry = by_key.get((name, occurrence))
            if entry is None:
                continue

            def load(tree_name, template, entry=entry):
                item = entry["trees"].get(tree_name)
                return None if item is None else checkpoint.restore(item, template)

            cb.set_state(entry["state"], load)
        self._push()

    # ------------------------------------------------------------------------------- single batches

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, *, mask=None) -> Logs:
        """One optimizer step on exactly this batch; returns its ``loss``, metrics and ``nonfinite_steps``
        (1 if the step was skipped), computed before the update, as Keras' ``train_on_batch``.

        The logs are a :class:`jaxmask.training.Logs` mapping that stays on the device until a value is read (then
        Python floats, ints for counters), so a loop that does not read them every step never waits for the
        device. The model holds the updated weights on return.
        """
        data = prepare(x, y, mask=mask, sample_weight=sample_weight, layout=self.layout)
        self._build(data)
        step = self._train_step(class_weight)
        self._pull(rescan=False)
        batch = data.batch(slice(None))  # views: the arrays go to the device once, inside the compiled call
        if self.debug_nans:
            self._check_finite(batch, np.arange(data.n), "train_on_batch")
        self.state, logs, _ = step.run(self.state, step.to_device(batch), reset=True)
        self.global_step += 1
        self._push()
        return Logs(logs)

    def test_on_batch(self, x, y=None, sample_weight=None, *, mask=None) -> dict:
        """Loss and metrics of one batch in inference mode (Keras' ``test_on_batch``)."""
        data = prepare(x, y, mask=mask, sample_weight=sample_weight, layout=self.layout)
        return self._evaluate_checked(data, data.n)

    # ------------------------------------------------------------------------------ evaluate/predict

    def _evaluate_data(self, data: ArrayData, batch_size: int, steps: int | None = None, *, keep: bool = False) -> dict:
        base = self._base
        acc = base.init_accumulators()
        n = data.n if steps is None else min(data.n, steps * batch_size)
        placed = self._place(_arrays(data), keep=keep)
        n_full = n // batch_size
        calls = []
        if placed is None:
            for start in range(0, n, batch_size):
                batch = data.batch(np.arange(start, min(start + batch_size, n)))
                calls.append((place_batch(batch, self.mesh), None, None, 1))
        else:
            full = base.place(np.arange(n_full * batch_size, dtype=np.int32).reshape(n_full, batch_size))
            calls = [(placed, full, pos, k) for pos, k in _groups(n_full, self.steps_per_execution)]
            if n > n_full * batch_size:
                calls.append((placed, base.place(np.arange(n_full * batch_size, n, dtype=np.int32)[None]), 0, 1))
        for arrays, rows, pos, k in calls:
            acc, _ = base.run_evaluate(self.state.params, self.state.other, acc, arrays, rows, pos, steps=k)
        logs = host_logs(base.results(acc))
        logs.pop("nonfinite_steps")
        return logs

    def _evaluate_checked(self, data: ArrayData, batch_size: int) -> dict:
        self._build(data)
        self._pull()
        return self._evaluate_data(data, batch_size)

    def evaluate(self, x=None, y=None, batch_size=None, verbose=0, sample_weight=None, steps=None, *, mask=None) -> dict:
        """``{"loss": ..., <metric>: ...}`` over the whole data in inference mode (dropout off).

        Always a dict (Keras' ``return_dict=True``); ``verbose`` is accepted and prints nothing. ``x`` takes the
        forms of :meth:`fit` (arrays, with fewer samples than ``batch_size`` making one batch; ragged lists;
        several inputs; a stream of batches, read for one pass or ``steps`` batches).

        The loss is the mean of the batch losses weighted by batch size, and metrics accumulate over all
        valid steps, as Keras' ``evaluate(return_dict=True)``.
        """
        _verbose(verbose)
        steps = check_steps("steps", steps)
        if is_stream(x):
            _no_stream_args(x, y=y, sample_weight=sample_weight, mask=mask, batch_size=batch_size)
            source = Stream(x, "x", steps=steps)
            raws = self._stream_start(source)
            self._pull()
            return self._evaluate_stream(source, 0, raws)
        data = prepare(x, y, mask=mask, sample_weight=sample_weight, layout=self.layout)
        batch_size = check_batch_size(32 if batch_size is None else batch_size, data.n, "evaluation")
        self._build(data)
        self._pull()
        return self._evaluate_data(data, batch_size, steps)

    def predict(self, x, batch_size=None, verbose=0, steps=None, *, mask=None, padded_value=0.0, ragged=False):
        """Model outputs in inference mode, with a defined value at masked steps.

        At a masked step a Keras RNN repeats the previous output, so Keras' predictions at padding are
        not 0 (the seed's question). Here:

        * ``padded_value=0.0`` (default) or ``float("nan")``: masked steps are set to that value;
        * ``padded_value=None``: the model's own outputs are kept (Keras' numbers);
        * ``ragged=True``: a list of N arrays, each holding only that sequence's valid steps
          ([L_i, C]; holes mid-sequence are dropped too).

        The mask is the model's output mask AND-ed with ``mask`` / ``x=(x, mask)``. Per-sample outputs
        ([N, C], no time axis) are returned as they are; ``ragged=True`` needs per-step outputs. ``x`` given
        as a ragged list of sequences gives back a list of [T_i, ...] arrays (the first T_i steps of each output,
        masked steps filled as above). A stream of batches gives its outputs concatenated (padded at the end to
        the longest batch when their T differ). A model with several outputs gives a list, one entry per output.

        Args:
          x: [N, T, F] (or int [N, T]), or ``(x, mask)``; a ragged list; a list/dict per input; or a stream of
            batches ``(x,)``, ``(x, y, ...)`` (labels are ignored) or bare arrays.
          batch_size: rows per call (default 32). Calls are padded to ``batch_size``, or to the next power of two
            for fewer rows, so that predictions on many inputs of the same T compile at most log2(batch_size) + 1 times.
          verbose: accepted for Keras compatibility (prints nothing).
          steps: batches to predict (default: all; a stream: one pass).
          mask: optional bool [N, T].

        Returns:
          NumPy [N, T, C] (or [N, C]), or a list of N arrays when ``ragged`` or when ``x`` was a ragged list; a
          list of those for several outputs.
        """
        _verbose(verbose)
        steps = check_steps("steps", steps)
        if self.state is not None:
            self._pull()
            params, other = self.state.params, self.state.other
        else:
            _, params, _, other = nnx.split(self.model, nnx.Param, nnx.RngState, ...)
        if is_stream(x):
            _no_stream_args(x, mask=mask, batch_size=batch_size)
            y_pred, out_mask, t = self._predict_stream(Stream(x, "x", steps=steps), params, other)
            lengths = None
        else:
            x, mask = unpack_x(x, mask)
            data = prepare(x, None, mask=mask, require_y=False, layout=self.layout)
            y_pred, out_mask = self._predict_arrays(data, batch_size, steps, params, other)
            t, lengths = data.t, data.lengths
            lengths = None if lengths is None else lengths[: jax.tree_util.tree_leaves(y_pred)[0].shape[0]]
        if isinstance(y_pred, list):
            return [_predicted(p, m, t, lengths, padded_value, ragged) for p, m in zip(y_pred, out_mask)]
        return _predicted(y_pred, out_mask, t, lengths, padded_value, ragged)

    def _predict_arrays(self, data: ArrayData, batch_size, steps, params, other):
        limit = 32 if batch_size is None else check_batch_size(batch_size, 2**62)
        size = min(limit, 1 << (data.n - 1).bit_length())  # powers of two below batch_size: few compilations
        n = data.n if steps is None else min(data.n, steps * size)
        calls = -(-n // size)
        rows = np.arange(calls * size, dtype=np.int32)
        rows[n:] = (calls - 1) * size  # the last call is padded with its own first row
        rows = rows.reshape(calls, size)
        ts = self._predictor
        placed = self._place({"x": data.x, "mask": data.mask})
        outs = []
        if placed is None:
            for r in rows:
                batch = place_batch(data.batch(r), self.mesh)
                outs.append((ts.predict(params, other, batch["x"], batch["mask"]), 1))
        else:
            on_device = ts.place(rows)
            for pos, k in _groups(calls, self.steps_per_execution):
                outs.append((ts.run_predict(params, other, placed, on_device, pos, steps=k)[:2], k))
        host = jax.device_get([out for out, _ in outs])  # one wait, at the end
        flat = [jax.tree_util.tree_map(lambda a, k=k: np.asarray(a).reshape((k * size,) + a.shape[1 + (k > 1):]), out)
                for out, (_, k) in zip(host, outs)]
        return jax.tree_util.tree_map(lambda *a: np.concatenate(a)[:n], *flat)

    def _predict_stream(self, source: Stream, params, other):
        """Outputs of one pass over a stream, each batch's per-step outputs cut back to its own T, then
        concatenated (padded at the end to the longest T, with masks marking the padding)."""
        chunks = []
        with Prefetch(self._stream_items(source.epoch(0), 0, "x", 0, require_y=False)) as batches:
            for _, data, batch in batches:
                y_pred, out_mask = jax.device_get(self._predictor.predict(params, other, batch["x"], batch.get("mask")))
                several = isinstance(y_pred, list)
                preds, masks = (list(y_pred), list(out_mask)) if several else ([y_pred], [out_mask])
                cut_p, cut_m = [], []
                for p, m in zip(preds, masks):
                    p, m = np.asarray(p), None if m is None else np.asarray(m)
                    if m is not None or (p.ndim >= 3 and p.shape[1] == data.t):
                        t0 = data.source_t or data.t
                        p = p[:, :t0]
                        m = np.ones(p.shape[:2], bool) if m is None else m[:, :t0]
                    cut_p.append(p)
                    cut_m.append(m)
                chunks.append((cut_p, cut_m, several))
        source.end_epoch()
        several = chunks[0][2]
        preds, masks = [], []
        for j in range(len(chunks[0][0])):
            ps = [c[0][j] for c in chunks]
            ms = [c[1][j] for c in chunks]
            if ms[0] is not None and len({p.shape[1] for p in ps}) > 1:
                t = max(p.shape[1] for p in ps)
                grow = lambda a, t=t: np.pad(a, [(0, 0), (0, t - a.shape[1])] + [(0, 0)] * (a.ndim - 2))  # noqa: E731
                ps, ms = [grow(p) for p in ps], [grow(m) for m in ms]
            preds.append(np.concatenate(ps))
            masks.append(None if ms[0] is None else np.concatenate(ms))
        t = max(p.shape[1] if p.ndim >= 3 else 0 for p in preds)
        return (preds, masks, t) if several else (preds[0], masks[0], t)


DEVICE_DATA_BYTES = 1 << 30
"""Arrays up to this size (per device) go to the device once per ``fit`` / ``evaluate`` / ``predict`` call, and
every step gathers its batch there; larger ones are placed batch by batch."""


class _Work(NamedTuple):
    """One compiled call of ``steps`` training steps: the arguments of :meth:`TrainStep.run`."""

    data: Any
    rows: Any
    pos: Any
    steps: int


def _two_rows(a) -> jax.ShapeDtypeStruct:
    """The shape of ``a`` with a batch of 2: what the label checks trace the model and the loss on."""
    return jax.ShapeDtypeStruct((2,) + tuple(a.shape[1:]), a.dtype)


def _arrays(data: ArrayData) -> dict:
    return {"x": data.x, "y": data.y, "mask": data.mask, "sample_weight": data.sample_weight}


def _save_points(callbacks) -> tuple:
    """The ``save_freq`` step counts of the callbacks that save the training state during an epoch."""
    return tuple(cb.save_freq for cb in callbacks
                 if isinstance(cb, (BackupAndRestore, ModelCheckpoint)) and cb.save_freq != "epoch")


def _groups(n: int, k: int, first: int = 0, step: int = 0, save_points=()):
    """``(position, steps)`` over batches ``first .. n - 1``: groups of ``k`` consecutive batches (one compiled call
    each) and single batches for the rest. A group never runs past a global step that is a multiple of one of
    ``save_points`` (``step`` = the global step before batch ``first``), so a callback saving the state there
    sees the state after exactly that step."""
    i = first
    while i < n:
        count = 1
        while count < k and i + count < n and not any((step + count) % f == 0 for f in save_points):
            count += 1
        if count == k:
            yield i, k
        else:
            yield from ((j, 1) for j in range(i, i + count))
        i += count
        step += count


def _no_stream_args(x, **values) -> None:
    """Keras' rule: with a stream of batches, labels, weights, masks and batch sizes come from the batches."""
    for name, value in values.items():
        if value is not None:
            raise ValueError(
                f"`{name}` cannot be passed when `x` is a stream of batches ({type(x).__name__}): the batches carry it, "
                "as (x, y), (x, y, sample_weight) or (x, y, sample_weight, mask)."
            )


def _predicted(y_pred, out_mask, t: int, lengths, padded_value, ragged: bool):
    """One output of ``predict``: masked steps filled, or cut into a list per sample (``ragged``, or ``lengths``
    of a ragged input)."""
    per_step = out_mask is not None or (y_pred.ndim >= 3 and y_pred.shape[1] == t)
    if ragged:
        if not per_step:
            raise ValueError(
                f"ragged=True needs per-step outputs [N, T, ...]; the model returns shape {y_pred.shape} with no "
                "time axis. Use return_sequences=True, or ragged=False."
            )
        if out_mask is None:
            return list(y_pred)
        return [y_pred[i][out_mask[i]] for i in range(len(y_pred))]
    if padded_value is not None and out_mask is not None:
        keep = out_mask.reshape(out_mask.shape + (1,) * (y_pred.ndim - 2))
        y_pred = np.where(keep, y_pred, np.asarray(padded_value, dtype=y_pred.dtype))
    if lengths is not None and per_step:
        return [y_pred[i, : lengths[i]] for i in range(len(y_pred))]
    return y_pred


def load_weights(model, path) -> None:
    """Load weights written by ``Trainer.save_weights`` / ``ModelCheckpoint`` into ``model`` (same architecture).

    Raises:
      ValueError: the checkpoint is incomplete/corrupt or does not fit the model.
    """
    _, params, _, other = nnx.split(model, nnx.Param, nnx.RngState, ...)
    tree = ckpt.load_tree(path, jax.device_get({"params": params, "other": other}))
    nnx.update(model, jax.tree_util.tree_map(jnp.asarray, tree["params"]), jax.tree_util.tree_map(jnp.asarray, tree["other"]))
