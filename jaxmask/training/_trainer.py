"""``jm.Trainer``: Keras' ``fit`` / ``evaluate`` / ``predict`` / ``train_on_batch`` over one jit-compiled
pure training step, with resumable checkpoints, length bucketing and data parallelism."""

from __future__ import annotations

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
from jaxmask.training._callbacks import BackupAndRestore, Callback, CallbackList, History, ProgressBar
from jaxmask.training._data import (
    ArrayData,
    Buckets,
    batch_mesh,
    check_batch_size,
    check_boundaries,
    default_boundaries,
    epoch_plan,
    epoch_rng,
    padding_report,
    place_batch,
    prepare,
    split_validation,
    unpack_x,
    valid_lengths,
)
from jaxmask.training._step import TrainStep, _call_model, host_logs, make_train_step


def _copy(tree):
    return jax.tree_util.tree_map(jnp.array, tree)


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
    donated buffers; the model is split once and the loop passes arrays only. The model object is updated
    after every epoch and at the end of every call, so ``model(x)`` and ``jm.nn`` code keep working.
    Weights you assign to the model between calls are picked up by the next call (the optimizer state is
    kept, as in Keras).

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
        if isinstance(metrics, (str, dict)) or isinstance(weighted_metrics, (str, dict)):
            raise TypeError("`metrics` and `weighted_metrics` must be lists, e.g. metrics=['accuracy'].")
        if jax.default_backend() == "cpu":
            configure_cpu_allocator()
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.metrics = tuple(metrics)
        self.weighted_metrics = tuple(weighted_metrics)
        self.semantics = semantics
        self.seed = int(seed)
        self.mesh = batch_mesh() if mesh is None else mesh
        self.loss_kwargs = dict(loss_kwargs or {})
        self.debug_nans = bool(debug_nans)
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
        self._pushed = None
        self._fit = None
        self._valid_steps = None
        self._checked: dict = {}
        self._predictor = make_train_step(
            model, optimizer, loss, semantics=semantics, loss_kwargs=self.loss_kwargs, mesh=self.mesh, donate=False
        )

    # ---------------------------------------------------------------------------------- model <-> state

    def _model_leaves(self):
        return jax.tree_util.tree_leaves(nnx.state(self.model, nnx.Not(nnx.RngState)))

    def _pull(self) -> None:
        """Adopt weights assigned to the model since the last call (optimizer state kept)."""
        if self.state is None or self._pushed is None:
            return
        leaves = self._model_leaves()
        if len(leaves) == len(self._pushed) and all(a is b for a, b in zip(leaves, self._pushed)):
            return
        _, params, _, other = nnx.split(self.model, nnx.Param, nnx.RngState, ...)
        self.state = self.state._replace(params=self._base.replicate(_copy(params)), other=self._base.replicate(_copy(other)))
        self._pushed = self._model_leaves()

    def _push(self) -> None:
        """Give the model a copy of the trained variables (the state's own buffers are donated each step)."""
        if self.state is None:
            return
        nnx.update(self.model, _copy(self.state.params), _copy(self.state.other))
        self._pushed = self._model_leaves()

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

        spec = lambda a: None if a is None else jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
        return jax.eval_shape(forward, state, spec(batch["x"]), spec(batch["mask"]))

    def _check_labels(self, data: ArrayData, prefix: str = "") -> tuple:
        """Raise unless ``data.y`` fits the model's output and the loss; return the output's shape specs.

        Traces the model and the loss once per input layout (no compilation), so shape errors surface
        before training starts, with the loss' own message where the loss refuses the labels.
        """
        spec = lambda a: None if a is None else jax.ShapeDtypeStruct((2,) + a.shape[1:], a.dtype)  # noqa: E731
        key = tuple(None if a is None else (a.shape[1:], a.dtype.str) for a in (data.x, data.y, data.mask, data.sample_weight))
        if key in self._checked:
            return self._checked[key]
        y_pred, out_mask = self._output_spec(data)
        out = tuple(y_pred.shape[1:])
        allowed = [out]
        if out:
            allowed += [out[:-1], out[:-1] + (1,)]
        got = tuple(data.y.shape[1:])
        if got not in allowed:
            alts = " or ".join(str((data.n,) + a) for a in allowed[1:2])
            raise ValueError(
                f"{prefix}`y` has shape {data.y.shape}, which does not fit the model's output of per-sample shape "
                f"{out}: labels must be [N] + {out} = {(data.n,) + out} (or {alts} for integer class ids). "
                "Per-step binary labels of a Dense(1) output are [N, T, 1]: use y[..., None]."
            )
        batch = {"x": spec(data.x), "y": spec(data.y), "mask": spec(data.mask), "sample_weight": spec(data.sample_weight)}
        probe = self._predictor
        params, other = nnx.split(self.model, nnx.Param, nnx.RngState, ...)[1::2]
        jax.eval_shape(probe._evaluate, params, other, probe.init_accumulators(), batch)
        self._checked[key] = (y_pred, out_mask)
        return y_pred, out_mask

    def _build(self, data: ArrayData) -> None:
        y_pred, out_mask = self._check_labels(data)
        self._y_has_time = out_mask is not None and y_pred.ndim >= 3 and y_pred.shape[1] == data.t
        if self._resolved is not None:
            return
        y_shape = (y_pred.shape[0],) + tuple(data.y.shape[1:])
        loss_name = self.loss if isinstance(self.loss, str) else getattr(self.loss, "__name__", None)

        def resolve(ms):
            return tuple(jm_metrics.resolve(m, y_shape, y_pred.shape, loss=loss_name, semantics=self.semantics) for m in ms)

        self._resolved = (resolve(self.metrics), resolve(self.weighted_metrics))
        base = self._train_step(None)
        self.state = base.init_state(self.model, seed=self.seed)
        self._pushed = self._model_leaves()

    def _train_step(self, class_weight) -> TrainStep:
        if class_weight is not None and not isinstance(class_weight, dict):
            raise TypeError(f"`class_weight` must be a dict {{class: weight}}; received {type(class_weight).__name__}.")
        key = None if class_weight is None else tuple(sorted((int(k), float(v)) for k, v in class_weight.items()))
        if key not in self._steps:
            self._steps[key] = make_train_step(
                self.model,
                self.optimizer,
                self.loss,
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
        return prepare(x_val, y_val, sample_weight=sw, prefix="validation_data ")

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
        validation_batch_size=None,
        *,
        mask=None,
        bucket_by_length=False,
    ) -> History:
        """Train for ``epochs`` epochs; return a :class:`History` (``history.history["loss"]``...), as Keras.

        Args:
          x: [N, T, F] float (or int token ids [N, T]), or ``(x, mask)``.
          y: labels [N, T, C] for per-step outputs ([N, T] / [N, T, 1] integer ids for sparse losses), [N, C]
            for per-sample outputs.
          batch_size: samples per step (default 32); at most N.
          epochs: index of the last epoch + 1 (Keras' meaning, with ``initial_epoch``).
          verbose: 0 silent, 1 (and "auto") a tqdm bar with the running loss and metrics, 2 one line per epoch.
          callbacks: :class:`Callback` instances (History is added for you).
          validation_split: in (0, 1): hold out the last fraction of the samples (before shuffling).
          validation_data: ``(x_val, y_val)`` or ``(x_val, y_val, sample_weight_val)``; overrides the split.
          shuffle: reshuffle every epoch; the order is a pure function of (seed, epoch).
          class_weight: ``{class id: weight}`` for the loss.
          sample_weight: [N], [N, 1] or [N, T] weights for the loss (and weighted metrics).
          initial_epoch: epoch to start at.
          validation_batch_size: batch size of validation (default ``batch_size``).
          mask: bool [N, T] (True = valid step), instead of ``x=(x, mask)``.
          bucket_by_length: False; True to sort sequences into up to 4 buckets of valid length (quantiles,
            multiples of 8); or a list of bucket lengths. Each batch is cut to its bucket's length (right-trim:
            saves work for post-padded data), compiled once per bucket shape. The loss and metrics do not
            change (padded steps carry no weight); epoch logs gain ``padding_saved`` (share of the N·T steps
            not computed) and ``padding_waste`` (share of the computed steps that are padding).

        Returns:
          The :class:`History`; also ``trainer.history``.

        Raises:
          ValueError: x and y (or mask, sample_weight) sample counts differ; labels that do not fit the output;
            ``batch_size`` larger than the data; ``validation_split`` outside (0, 1); a backup from another run.
        """
        data = prepare(x, y, mask=mask, sample_weight=sample_weight)
        val = None
        if validation_split:
            if validation_data is None:
                data, val = split_validation(data, validation_split)
            else:
                split_validation(data, validation_split)
        if validation_data is not None:
            val = self._validation(validation_data)
        batch_size = check_batch_size(32 if batch_size is None else batch_size, data.n)
        val_batch_size = validation_batch_size or batch_size
        for name, value in (("epochs", epochs), ("initial_epoch", initial_epoch)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int; received {value!r}.")
        verbose = _verbose(verbose)
        self._build(data)
        if val is not None:
            self._check_labels(val, prefix="validation_data ")
        step = self._train_step(class_weight)
        buckets = self._buckets(data, bucket_by_length)
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
        self._fit = {
            "fingerprint": {
                "n": data.n,
                "t": data.t,
                "batch_size": batch_size,
                "seed": self.seed,
                "shuffle": bool(shuffle),
                "buckets": None if buckets is None else list(buckets.boundaries),
            },
            "start_step": self.global_step,
            "callbacks": cbs,
        }
        steps = len(epoch_plan(data.n, batch_size, rng=None, buckets=buckets))
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
                plan = epoch_plan(data.n, batch_size, rng=rng, buckets=buckets)
                for i in range(first, len(plan)):
                    rows, length = plan[i]
                    callback_list.on_train_batch_begin(i)
                    batch = data.batch(rows, length, y_has_time=self._y_has_time)
                    if self.debug_nans:
                        self._check_finite(batch, rows, f"batch {i} of epoch {epoch}")
                    batch = place_batch(batch, self.mesh)
                    self.state, logs = step.step(self.state, batch)
                    self.global_step += 1
                    callback_list.on_train_batch_end(i, logs)
                    if self.stop_training:
                        break
                epoch_logs = host_logs(step.results(self.state.acc))
                if buckets is not None:
                    epoch_logs.update(padding_report(plan, data.t, self._valid_steps))
                if val is not None:
                    val_logs = self._evaluate_data(val, val_batch_size)
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
        return history

    # ------------------------------------------------------------------------------------ debug_nans

    def _valid_steps_of(self, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """bool [B, T]: the steps the model treats as valid (its first layer's mask, else ``mask``, else all)."""
        layers = getattr(self.model, "layers", None)
        first = layers[0] if layers is not None and len(layers) else None
        if first is not None and hasattr(first, "compute_output_mask"):
            out = first.compute_output_mask(x, mask)
            if out is not None and np.shape(out) == x.shape[:2]:
                return np.asarray(out, bool)
        return np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask, bool)

    def _check_finite(self, batch: dict, rows: np.ndarray, where: str) -> None:
        """``debug_nans``: raise if ``x``, ``y`` or ``sample_weight`` of a host batch hold NaN/Inf at valid steps."""
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

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, *, mask=None) -> dict:
        """One optimizer step on exactly this batch; returns its ``loss``, metrics and ``nonfinite_steps``
        (1 if the step was skipped), computed before the update, as Keras' ``train_on_batch``."""
        data = prepare(x, y, mask=mask, sample_weight=sample_weight)
        self._build(data)
        step = self._train_step(class_weight)
        self._pull()
        self.state = self.state._replace(acc=step.init_accumulators())
        batch = data.batch(np.arange(data.n))
        if self.debug_nans:
            self._check_finite(batch, np.arange(data.n), "train_on_batch")
        batch = place_batch(batch, self.mesh)
        self.state, logs = step.step(self.state, batch)
        self.global_step = int(self.state.step)
        self._push()
        return host_logs(logs)

    def test_on_batch(self, x, y=None, sample_weight=None, *, mask=None) -> dict:
        """Loss and metrics of one batch in inference mode (Keras' ``test_on_batch``)."""
        data = prepare(x, y, mask=mask, sample_weight=sample_weight)
        return self._evaluate_checked(data, data.n)

    # ------------------------------------------------------------------------------ evaluate/predict

    def _evaluate_data(self, data: ArrayData, batch_size: int) -> dict:
        base = self._base
        acc = base.init_accumulators()
        for start in range(0, data.n, batch_size):
            batch = place_batch(data.batch(np.arange(start, min(start + batch_size, data.n))), self.mesh)
            acc, _ = base.evaluate(self.state.params, self.state.other, acc, batch)
        logs = host_logs(base.results(acc))
        logs.pop("nonfinite_steps")
        return logs

    def _evaluate_checked(self, data: ArrayData, batch_size: int) -> dict:
        self._build(data)
        self._pull()
        return self._evaluate_data(data, batch_size)

    def evaluate(self, x=None, y=None, batch_size=None, verbose=0, sample_weight=None, *, mask=None) -> dict:
        """``{"loss": ..., <metric>: ...}`` over the whole data in inference mode (dropout off).

        Always a dict (Keras' ``return_dict=True``); ``verbose`` is accepted and prints nothing.

        The loss is the mean of the batch losses weighted by batch size, and metrics accumulate over all
        valid steps, as Keras' ``evaluate(return_dict=True)``.
        """
        _verbose(verbose)
        data = prepare(x, y, mask=mask, sample_weight=sample_weight)
        batch_size = check_batch_size(32 if batch_size is None else min(batch_size, data.n), data.n, "evaluation")
        return self._evaluate_checked(data, batch_size)

    def predict(self, x, batch_size=None, verbose=0, *, mask=None, padded_value=0.0, ragged=False):
        """Model outputs in inference mode, with a defined value at masked steps.

        At a masked step a Keras RNN repeats the previous output, so Keras' predictions at padding are
        not 0 (the seed's question). Here:

        * ``padded_value=0.0`` (default) or ``float("nan")``: masked steps are set to that value;
        * ``padded_value=None``: the model's own outputs are kept (Keras' numbers);
        * ``ragged=True``: a list of N arrays, each holding only that sequence's valid steps
          ([L_i, C]; holes mid-sequence are dropped too).

        The mask is the model's output mask AND-ed with ``mask`` / ``x=(x, mask)``. Per-sample outputs
        ([N, C], no time axis) are returned as they are; ``ragged=True`` needs per-step outputs.

        Args:
          x: [N, T, F] (or int [N, T]), or ``(x, mask)``.
          batch_size: rows per call (default 32). Calls are padded to ``batch_size``, or to the next power of two
            for fewer rows, so that predictions on many inputs of the same T compile at most log2(batch_size) + 1 times.
          verbose: accepted for Keras compatibility (prints nothing).
          mask: optional bool [N, T].

        Returns:
          NumPy [N, T, C] (or [N, C]), or a list of N arrays when ``ragged``.
        """
        _verbose(verbose)
        x, mask = unpack_x(x, mask)
        data = prepare(x, None, mask=mask, require_y=False)
        if self.state is not None:
            self._pull()
            params, other = self.state.params, self.state.other
        else:
            _, params, _, other = nnx.split(self.model, nnx.Param, nnx.RngState, ...)
        limit = 32 if batch_size is None else check_batch_size(batch_size, 2**62)
        size = min(limit, 1 << (data.n - 1).bit_length())  # powers of two below batch_size: few compilations
        outputs, masks = [], []
        for start in range(0, data.n, size):
            rows = np.arange(start, min(start + size, data.n))
            padded = np.concatenate([rows, np.full(size - len(rows), rows[0])])
            batch = place_batch(data.batch(padded), self.mesh)
            y_pred, out_mask = self._predictor.predict(params, other, batch["x"], batch["mask"])
            outputs.append(np.asarray(jax.device_get(y_pred))[: len(rows)])
            masks.append(None if out_mask is None else np.asarray(jax.device_get(out_mask))[: len(rows)])
        y_pred = np.concatenate(outputs)
        out_mask = None if masks[0] is None else np.concatenate(masks)
        per_step = out_mask is not None or (y_pred.ndim >= 3 and y_pred.shape[1] == data.t)
        if ragged:
            if not per_step:
                raise ValueError(
                    f"ragged=True needs per-step outputs [N, T, ...]; the model returns shape {y_pred.shape} with no "
                    "time axis. Use return_sequences=True, or ragged=False."
                )
            if out_mask is None:
                return list(y_pred)
            return [y_pred[i][out_mask[i]] for i in range(data.n)]
        if padded_value is None or out_mask is None:
            return y_pred
        keep = out_mask.reshape(out_mask.shape + (1,) * (y_pred.ndim - 2))
        return np.where(keep, y_pred, np.asarray(padded_value, dtype=y_pred.dtype))


def load_weights(model, path) -> None:
    """Load weights written by ``Trainer.save_weights`` / ``ModelCheckpoint`` into ``model`` (same architecture).

    Raises:
      ValueError: the checkpoint is incomplete/corrupt or does not fit the model.
    """
    _, params, _, other = nnx.split(model, nnx.Param, nnx.RngState, ...)
    tree = ckpt.load_tree(path, jax.device_get({"params": params, "other": other}))
    nnx.update(model, jax.tree_util.tree_map(jnp.asarray, tree["params"]), jax.tree_util.tree_map(jnp.asarray, tree["other"]))
