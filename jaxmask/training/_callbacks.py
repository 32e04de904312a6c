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
