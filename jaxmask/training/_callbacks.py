"""Keras-style callbacks for :class:`jaxmask.Trainer`: History, EarlyStopping, ModelCheckpoint,
BackupAndRestore (automatic resume), CSVLogger, JSONLogger and a tqdm progress bar.

A callback sees the trainer as ``self.trainer`` (and its model as ``self.model``) and gets the Keras
hooks ``on_train_begin/end``, ``on_epoch_begin/end(epoch, logs)``, ``on_train_batch_begin/end(batch,
logs)``. Batch logs are running values over the epoch as jax scalars (convert with ``float``); epoch logs
are Python numbers. Set ``trainer.stop_training = True`` to stop after the current batch.

Callbacks with state that a resumed run needs (History, EarlyStopping, ModelCheckpoint) implement
``get_state() -> (json_dict, {name: pytree})`` and ``set_state(json_dict, load)``;
:class:`BackupAndRestore` stores them next to the training state, so a resumed run continues exactly
where the interrupted one stopped, logs included.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np

from jaxmask.training._checkpoint import CheckpointManager

_MAX_WORDS = ("acc", "auc", "precision", "recall")


class Callback:
    """Base class: override the hooks you need. ``self.params`` holds ``epochs``, ``steps``, ``verbose``."""

    def __init__(self):
        self.trainer = None
        self.params = {}

    @property
    def model(self):
        return None if self.trainer is None else self.trainer.model

    def set_trainer(self, trainer) -> None:
        self.trainer = trainer

    def set_params(self, params: dict) -> None:
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

    def get_state(self) -> tuple[dict, dict]:
        """``(JSON-serialisable dict, {name: pytree of arrays})`` to store in a backup."""
        return {}, {}

    def set_state(self, state: dict, load) -> None:
        """Restore from ``get_state``'s dict; ``load(name, template)`` returns a stored pytree."""


class CallbackList:
    """Calls every callback's hook in order."""

    def __init__(self, callbacks, trainer, params: dict):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.set_trainer(trainer)
            cb.set_params(params)

    def __iter__(self):
        return iter(self.callbacks)

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args, **kwargs):
            for cb in self.callbacks:
                getattr(cb, hook)(*args, **kwargs)

        return call


class History(Callback):
    """Records epoch logs: ``history.history["loss"]`` is a list with one value per epoch, as in Keras.

    Attributes:
      history: ``{key: [value per epoch]}``.
      epoch: the epoch indices recorded.
      bucketing: with ``fit(bucket_by_length=...)``, the bucket lengths and batches per bucket.
    """

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []
        self.bucketing = None

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def get_state(self):
        return {"history": self.history, "epoch": self.epoch}, {}

    def set_state(self, state, load):
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.epoch = list(state["epoch"])


def _monitor_op(monitor: str, mode: str, owner: str):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"`mode` of {owner} must be 'auto', 'min' or 'max'; received {mode!r}.")
    if mode == "auto":
        name = monitor.removeprefix("val_")
        if name == "loss" or name.endswith(("error", "mse", "mae", "loss")):
            mode = "min"
        elif any(w in name for w in _MAX_WORDS):
            mode = "max"
        else:
            raise ValueError(
                f"{owner} cannot tell whether {monitor!r} should go up or down; pass mode='max' or mode='min'."
            )
    return mode


class _Monitor(Callback):
    def __init__(self, monitor, mode, min_delta, owner):
        super().__init__()
        self.monitor = monitor
        self.mode = _monitor_op(monitor, mode, owner)
        self.min_delta = abs(min_delta)

    def _improved(self, current, reference) -> bool:
        if reference is None:
            return True
        if self.mode == "min":
            return current + self.min_delta < reference
        return current - self.min_delta > reference

    def _value(self, logs):
        value = (logs or {}).get(self.monitor)
        return None if value is None else float(value)


class EarlyStopping(_Monitor):
    """Stop training when ``monitor`` has stopped improving for ``patience`` epochs (Keras 3 semantics).

    Args:
      monitor: the log key, e.g. "val_loss" or "val_accuracy".
      min_delta: the smallest change that counts as an improvement.
      patience: epochs without improvement before stopping.
      verbose: print when stopping / restoring.
      mode: "auto" (from the name), "min" or "max".
      baseline: a value to beat; until it is beaten, ``wait`` keeps counting.
      restore_best_weights: at the end of training, put back the weights of the best epoch.
      start_from_epoch: epochs of warm-up before monitoring starts.

    Keras equivalent: ``keras.callbacks.EarlyStopping``.
    """

    def __init__(
        self,
        monitor="val_loss",
        min_delta=0,
        patience=0,
        verbose=0,
        mode="auto",
        baseline=None,
        restore_best_weights=False,
        start_from_epoch=0,
    ):
        super().__init__(monitor, mode, min_delta, "EarlyStopping")
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self._restored = False
        self._reset()

    def _reset(self):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = self.baseline
        self.best_weights = None
        self.best_epoch = 0

    def on_train_begin(self, logs=None):
        if not self._restored:
            self._reset()
        self._restored = False

    def on_epoch_end(self, epoch, logs=None):
        current = self._value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.trainer.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._improved(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.trainer.get_weights()
            if self.baseline is None or self._improved(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.trainer.set_weights(self.best_weights)

    def get_state(self):
        state = {k: getattr(self, k) for k in ("wait", "stopped_epoch", "best", "best_epoch")}
        trees = {} if self.best_weights is None else {"best_weights": self.best_weights}
        return state, trees

    def set_state(self, state, load):
        for k, v in state.items():
            setattr(self, k, v)
        self.best_weights = load("best_weights", self.trainer.get_weights())
        self._restored = True


class ModelCheckpoint(_Monitor):
    """Save the weights after every epoch (or every ``save_freq`` steps), optionally only the best.

    ``filepath`` may hold ``{epoch}`` (1-based, as Keras) and any log key, e.g.
    ``"ckpt/weights-{epoch:02d}-{val_loss:.3f}"``. Each save is an atomic checkpoint directory
    (see :mod:`jaxmask.training._checkpoint`); load it with :func:`jaxmask.training.load_weights`.

    Args:
      filepath: the directory to write, a format string.
      monitor, mode: what "best" means (with ``save_best_only``).
      save_best_only: skip saves that do not improve ``monitor``.
      save_freq: "epoch" or an int number of steps.
      initial_value_threshold: a first "best" value to beat.
      verbose: print each save.

    Keras equivalent: ``keras.callbacks.ModelCheckpoint(save_weights_only=True)``.
    """

    def __init__(
        self,
        filepath,
        monitor="val_loss",
        verbose=0,
        save_best_only=False,
        mode="auto",
        save_freq="epoch",
        initial_value_threshold=None,
    ):
        super().__init__(monitor, mode, 0, "ModelCheckpoint")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"`save_freq` must be 'epoch' or a positive int (steps); received {save_freq!r}.")
        self.filepath = os.fspath(filepath)
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_freq = save_freq
        self.best = initial_value_threshold
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch" and self.trainer.global_step % self.save_freq == 0:
            self._save(self._epoch, {k: float(v) for k, v in (logs or {}).items()}, batch=batch)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, logs or {})

    def _save(self, epoch, logs, batch=None):
        if self.save_best_only:
            current = self._value(logs)
            if current is None or not self._improved(current, self.best):
                return
            self.best = current
        path = self.filepath.format(epoch=epoch + 1, batch=batch, **logs)
        self.trainer.save_weights(path)
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: saved weights to {path}")

    def get_state(self):
        return {"best": self.best}, {}

    def set_state(self, state, load):
        self.best = state["best"]


class BackupAndRestore(Callback):
    """Back up the whole training state regularly; a later ``fit`` with the same arguments resumes from
    the newest backup and reproduces the uninterrupted run bit for bit (on the same platform).

    The backup holds parameters, optimizer state, RNG root, step, the epoch and position inside it (the
    shuffle of an epoch is derived from (seed, epoch), so the position is a batch index), the epoch's
    running loss/metric accumulators, History and the state of the other callbacks. Each backup is an
    atomic checkpoint: a process killed at any moment, in the middle of a save included, resumes from the
    newest complete one.

    Args:
      backup_dir: directory of the backups (one per run).
      save_freq: "epoch" (at every epoch end) or an int: every that many steps.
      delete_checkpoint: delete ``backup_dir`` when training finishes normally.
      max_to_keep: backups kept (the newest ones).

    Keras equivalent: ``keras.callbacks.BackupAndRestore`` (which restores only at epoch boundaries and
    not the callbacks' state).
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True, max_to_keep=2):
        super().__init__()
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"`save_freq` must be 'epoch' or a positive int (steps); received {save_freq!r}.")
        self.manager = CheckpointManager(os.fspath(backup_dir), max_to_keep=max_to_keep)
        self.save_freq = save_freq
        self.delete_checkpoint = delete_checkpoint
        self._epoch = 0

    def restore(self) -> bool:
        """Load the newest backup into the trainer; False when there is none."""
        self.manager.clean_tmp()
        found = self.manager.restore_latest()
        if found is None:
            return False
        self.trainer.load_backup(*found)
        return True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch" and self.trainer.global_step % self.save_freq == 0:
            self.trainer.write_backup(self.manager, (self._epoch, batch + 1))

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self.trainer.write_backup(self.manager, (epoch + 1, 0))

    def on_train_end(self, logs=None):
        if self.delete_checkpoint:
            self.manager.delete_all()


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _FileLogger(Callback):
    """Keeps one record per epoch and rewrites the file atomically after each epoch. On a resumed run (or
    with ``append=True``) the records of epochs before the start epoch are kept, later ones dropped, so an
    interrupted and resumed run leaves the file an uninterrupted run leaves."""

    def __init__(self, filename, append=False):
        super().__init__()
        self.filename = os.fspath(filename)
        self.append = append
        self.records = []

    def _read(self) -> list[dict]:
        raise NotImplementedError

    def _render(self) -> str:
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        self.records = []
        if (self.append or self.trainer.resumed) and os.path.exists(self.filename):
            self.records = [r for r in self._read() if int(r["epoch"]) < self.trainer.start_epoch]
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(self.filename)), exist_ok=True)
            _atomic_write_text(self.filename, self._render())

    def on_epoch_end(self, epoch, logs=None):
        self.records.append({"epoch": epoch, **(logs or {})})
        if jax.process_index() == 0:
            _atomic_write_text(self.filename, self._render())


class CSVLogger(_FileLogger):
    """Write epoch logs to a CSV file: columns ``epoch`` then the log keys, sorted (as Keras).

    Keras equivalent: ``keras.callbacks.CSVLogger(filename, separator=",", append=False)``.
    """

    def __init__(self, filename, separator=",", append=False):
        super().__init__(filename, append)
        self.sep = separator

    def _read(self):
        with open(self.filename) as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
        if not lines:
            return []
        keys = lines[0].split(self.sep)
        return [dict(zip(keys, line.split(self.sep))) for line in lines[1:]]

    def _render(self):
        if not self.records:
            return ""
        keys = ["epoch"] + sorted({k for r in self.records for k in r} - {"epoch"})
        rows = [self.sep.join(keys)]
        for r in self.records:
            rows.append(self.sep.join(str(r.get(k, "")) for k in keys))
        return "\n".join(rows) + "\n"


class JSONLogger(_FileLogger):
    """Write epoch logs as JSON Lines: one ``{"epoch": e, "loss": ..., ...}`` object per epoch."""

    def _read(self):
        with open(self.filename) as f:
            return [json.loads(line) for line in f if line.strip()]

    def _render(self):
        return "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records)


def _format_logs(logs: dict) -> dict:
    """Counters as ints, values with 4 decimals (reads device scalars back to the host)."""
    out = {}
    for k, v in logs.items():
        v = np.asarray(v)
        if np.issubdtype(v.dtype, np.integer):
            out[k] = int(v)
        else:
            out[k] = f"{float(v):.4f}" if math.isfinite(float(v)) else str(float(v))
    return out


class ProgressBar(Callback):
    """A tqdm bar per epoch with the running loss and metrics (``verbose=1``), or one line per epoch
    (``per_step=False``, ``verbose=2``).

    Args:
      per_step: a live bar (True) or a line per epoch (False).
      refresh_seconds: how often the bar reads the running logs back from the device.
      file: the stream (default stderr for the bar, stdout for lines).
    """

    def __init__(self, per_step=True, refresh_seconds=0.2, file=None):
        super().__init__()
        self.per_step = per_step
        self.refresh_seconds = refresh_seconds
        self.file = file
        self._bar = None
        self._last = 0.0
        self._start = 0.0

    def _epochs(self):
        return self.params.get("epochs", "?")

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        if self.per_step:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.params.get("steps"),
                initial=self.trainer.start_batch if epoch == self.trainer.start_epoch else 0,
                desc=f"Epoch {epoch + 1}/{self._epochs()}",
                unit="step",
                file=self.file or sys.stderr,
                dynamic_ncols=True,
                leave=True,
            )

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is None:
            return
        self._bar.update(1)
        now = time.perf_counter()
        if logs and now - self._last >= self.refresh_seconds:
            self._last = now
            self._bar.set_postfix(_format_logs(logs), refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        logs = _format_logs(logs or {})
        if self._bar is not None:
            self._bar.set_postfix(logs)
            self._bar.close()
            self._bar = None
        else:
            seconds = time.perf_counter() - self._start
            text = " - ".join(f"{k}: {v}" for k, v in logs.items())
            print(f"Epoch {epoch + 1}/{self._epochs()} - {seconds:.1f}s - {text}", file=self.file or sys.stdout)

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ------------------------------------------------------------------------------ learning rate and NaN


def _learning_rate(trainer) -> float:
    """The learning rate the next step of ``trainer`` uses (see :func:`jaxmask.optimizers.get_learning_rate`)."""
    from jaxmask import optimizers

    return optimizers.get_learning_rate(trainer.state.opt_state, trainer.optimizer)


def _set_learning_rate(trainer, value) -> None:
    """Set the learning rate in the trainer's optimizer state: same dtype and placement, so no recompilation."""
    from jaxmask import optimizers

    trainer.state = trainer.state._replace(opt_state=optimizers.set_learning_rate(trainer.state.opt_state, value))


def _readable_learning_rate(trainer):
    try:
        return _learning_rate(trainer)
    except ValueError:
        return None


class ReduceLROnPlateau(_Monitor):
    """Reduce the learning rate when ``monitor`` has stopped improving (Keras 3 semantics).

    At every epoch end the callback writes ``logs["learning_rate"]`` (the rate this epoch used, so History and
    the loggers record it, as in Keras), then compares ``monitor`` with the best value so far: an improvement
    by more than ``min_delta`` resets the wait; after ``patience`` epochs without one the rate becomes
    ``max(lr · factor, min_lr)`` (only while ``lr > min_lr``) and ``cooldown`` epochs pass before waiting starts
    again. The rate is changed in the optimizer state between compiled steps (no recompilation) and is part of
    every backup, so a resumed run continues with the reduced rate and this callback's counters.

    Args:
      monitor: the log key, e.g. "val_loss".
      factor: the multiplier, < 1.
      patience: epochs without improvement before a reduction.
      verbose: print each reduction.
      mode: "auto" (from the name), "min" or "max".
      min_delta: the smallest change that counts as an improvement (1e-4).
      cooldown: epochs after a reduction during which no waiting is counted.
      min_lr: lower bound of the learning rate.

    Raises:
      ValueError: ``factor >= 1``; at the first reduction, an optimizer whose learning rate is not in its state
        (plain optax transformations: use ``jm.optimizers`` or ``optax.inject_hyperparams``).
      TypeError: at the first reduction, an optimizer built with a schedule (not settable, as in Keras).

    Keras equivalent: ``keras.callbacks.ReduceLROnPlateau``.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__(monitor, mode, min_delta, "ReduceLROnPlateau")
        if not factor < 1.0:
            raise ValueError(f"`factor` of ReduceLROnPlateau must be < 1.0; received factor={factor}.")
        self.factor = float(factor)
        self.patience = patience
        self.verbose = verbose
        self.cooldown = cooldown
        self.min_lr = float(min_lr)
        self._restored = False
        self._reset()

    def _reset(self):
        self.best = None
        self.wait = 0
        self.cooldown_counter = 0

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def on_train_begin(self, logs=None):
        if not self._restored:
            self._reset()
        self._restored = False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = _learning_rate(self.trainer)
        current = self._value(logs)
        if current is None:
            import warnings

            warnings.warn(
                f"ReduceLROnPlateau is conditioned on {self.monitor!r}, which is not in the logs; available: "
                f"{', '.join(logs)}.",
                stacklevel=2,
            )
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current, self.best):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old = _learning_rate(self.trainer)
                if old > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    _set_learning_rate(self.trainer, new)
                    if self.verbose > 0:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0

    def get_state(self):
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}, {}

    def set_state(self, state, load):
        self.best, self.wait, self.cooldown_counter = state["best"], state["wait"], state["cooldown_counter"]
        self._restored = True


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of every epoch to ``schedule(epoch, lr)`` (or ``schedule(epoch)``).

    ``epoch`` is 0-based and ``lr`` the current rate (a float). The epoch logs get ``learning_rate``, as in
    Keras. The rate lives in the optimizer state (no recompilation), and the callback remembers the last epoch
    it scheduled, so a run resumed mid-epoch does not apply ``schedule`` to that epoch twice.

    Args:
      schedule: ``(epoch, lr) -> lr`` or ``epoch -> lr``, returning a finite number >= 0.
      verbose: print each change.

    Raises:
      ValueError: the schedule returned something that is not a finite number >= 0; the optimizer's learning
        rate is not in its state. TypeError: the optimizer was built with a schedule.

    Keras equivalent: ``keras.callbacks.LearningRateScheduler``.
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"`schedule` must be a callable (epoch, lr) -> lr; received {type(schedule).__name__}.")
        self.schedule = schedule
        self.verbose = verbose
        self.last_epoch = None

    def on_train_begin(self, logs=None):
        if not self.trainer.resumed:
            self.last_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.last_epoch is not None and epoch <= self.last_epoch:
            return  # resumed inside an epoch that was already scheduled: its rate is in the restored state
        lr = _learning_rate(self.trainer)
        try:
            new = self.schedule(epoch, lr)
        except TypeError:
            new = self.schedule(epoch)
        try:
            value = float(np.asarray(new))
        except (TypeError, ValueError):
            value = None
        if value is None or not math.isfinite(value) or value < 0:
            raise ValueError(f"The output of the `schedule` function should be a finite float >= 0; received {new!r}.")
        _set_learning_rate(self.trainer, value)
        self.last_epoch = epoch
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {value}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _learning_rate(self.trainer)

    def get_state(self):
        return {"last_epoch": self.last_epoch}, {}

    def set_state(self, state, load):
        self.last_epoch = state["last_epoch"]


class TerminateOnNaN(Callback):
    """Stop training at the first batch whose loss or gradients were NaN or Inf.

    The Trainer skips such a step (weights, optimizer state and running logs unchanged) and counts it in
    ``nonfinite_steps``; this callback stops after the first counted one (or a non-finite ``loss`` log).
    Unlike Keras, the bad step's update was never applied, so the weights stay finite. It reads the logs back
    every batch, which waits for each step to finish.

    Args:
      raise_error: raise ``RuntimeError`` at once instead of stopping gracefully (``on_train_end`` of the other
        callbacks then does not run, as in Keras).

    Keras equivalent: ``keras.callbacks.TerminateOnNaN``.
    """

    def __init__(self, raise_error: bool = False):
        super().__init__()
        self.raise_error = bool(raise_error)
        self._seen = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._seen = int(jax.device_get(self.trainer.state.acc.nonfinite))

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        count = int(np.asarray(logs.get("nonfinite_steps", self._seen)))
        loss = logs.get("loss")
        bad = count > self._seen or (loss is not None and not math.isfinite(float(loss)))
        self._seen = count
        if not bad:
            return
        if self.raise_error:
            raise RuntimeError(f"NaN or Inf loss or gradients at batch {batch}; terminating training immediately.")
        print(f"Batch {batch}: Invalid loss, terminating training")
        self.trainer.stop_training = True


class TensorBoard(Callback):
    """Write the logs as TensorBoard event files, without TensorFlow.

    As Keras 3: ``log_dir/train`` gets ``epoch_<name>`` scalars of the training logs (plus
    ``epoch_learning_rate`` when the optimizer's rate is readable, and ``epoch_steps_per_second`` with
    ``write_steps_per_second``), ``log_dir/validation`` the ``val_`` logs without the prefix, at step = epoch;
    with ``update_freq="batch"`` or an int N, ``batch_<name>`` scalars every N batches at the global batch count.
    Only process 0 writes. The files are TensorBoard's ``tfevents`` record format (see
    :mod:`jaxmask.training._tfevents`), readable by ``tensorboard --logdir`` and by
    :func:`jaxmask.training.read_tensorboard_scalars`.

    Args:
      log_dir: the directory (created).
      update_freq: "epoch", "batch" or an int number of batches.
      write_steps_per_second: also log steps per second.
      histogram_freq, write_graph, write_images, profile_batch, embeddings_freq, embeddings_metadata: Keras'
        arguments; only their "off" values are accepted (``write_graph`` is accepted and ignored: there is no
        TensorFlow graph to write).

    Keras equivalent: ``keras.callbacks.TensorBoard``.
    """

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, write_images=False,
                 write_steps_per_second=False, update_freq="epoch", profile_batch=0, embeddings_freq=0,
                 embeddings_metadata=None):
        super().__init__()
        for name, value in (("histogram_freq", histogram_freq), ("write_images", write_images),
                            ("profile_batch", profile_batch), ("embeddings_freq", embeddings_freq),
                            ("embeddings_metadata", embeddings_metadata)):
            if value:
                raise ValueError(
                    f"TensorBoard(`{name}`={value!r}) is not supported by jaxmask's TensorBoard callback, which writes "
                    "scalars only; leave it at its default."
                )
        update_freq = 1 if update_freq == "batch" else update_freq
        if update_freq != "epoch" and (isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1):
            raise ValueError(f"`update_freq` must be 'epoch', 'batch' or a positive int; received {update_freq!r}.")
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self.write_steps_per_second = bool(write_steps_per_second)
        self._writers = {}
        self._global_batch = 0
        self._epoch_start = 0.0
        self._epoch_step = 0
        self._batch_start = 0.0

    def _writer(self, which):
        from jaxmask.training._tfevents import EventFileWriter

        if which not in self._writers:
            self._writers[which] = EventFileWriter(os.path.join(self.log_dir, which))
        return self._writers[which]

    def on_train_begin(self, logs=None):
        self._global_batch = self.trainer.global_step

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._epoch_step = self.trainer.global_step

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._global_batch += 1
        if self.update_freq == "epoch" or jax.process_index() != 0 or self._global_batch % self.update_freq:
            return
        values = {f"batch_{k}": float(np.asarray(v)) for k, v in (logs or {}).items()}
        if self.write_steps_per_second:
            values["batch_steps_per_second"] = 1.0 / max(time.perf_counter() - self._batch_start, 1e-9)
        self._writer("train").add_scalars(values, self._global_batch)

    def on_epoch_end(self, epoch, logs=None):
        if jax.process_index() != 0:
            return
        logs = dict(logs or {})
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        if "learning_rate" not in train:
            lr = _readable_learning_rate(self.trainer)
            if lr is not None:
                train["learning_rate"] = lr
        if self.write_steps_per_second:
            seconds = max(time.perf_counter() - self._epoch_start, 1e-9)
            train["steps_per_second"] = (self.trainer.global_step - self._epoch_step) / seconds
        for which, values in (("train", train), ("validation", val)):
            if values:
                self._writer(which).add_scalars({f"epoch_{k}": float(v) for k, v in values.items()}, epoch)
                self._writer(which).flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
