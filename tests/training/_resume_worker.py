"""A training run for the resume tests, meant to be killed: ``python _resume_worker.py WORKDIR KILL``.

KILL is ``none``; ``step:N`` (SIGKILL itself after global step N, mid-epoch); ``save-partial:K`` (SIGKILL
while writing the K-th backup of this process: orbax's items written, half of meta.json on disk);
``save-rename:K`` (SIGKILL after the K-th backup is fully written and fsync'ed, just before its rename).
On success it writes WORKDIR/final.npz (parameters and optimizer state) and WORKDIR/history.json.
"""

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxmask as jm  # noqa: E402
from jaxmask.training import _checkpoint  # noqa: E402
from tests.training.helpers import flat_host_arrays, running_sum_data, seed_model  # noqa: E402


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def main(workdir, kill):
    mode, _, count = kill.partition(":")
    count = int(count or 0)
    callbacks = []
    if mode == "step":

        class Kill(jm.training.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if self.trainer.global_step == count:
                    die()

        callbacks.append(Kill())
    elif mode in ("save-partial", "save-rename"):
        saves = {"n": 0}
        write_file, rename = _checkpoint._write_file, os.rename

        def patched_write(path, data):
            if path.endswith("meta.json") and "/backup/" in path:
                saves["n"] += 1
                if mode == "save-partial" and saves["n"] == count:
                    with open(path, "wb") as f:
                        f.write(data[: len(data) // 2])
                        f.flush()
                        os.fsync(f.fileno())
                    die()
            write_file(path, data)

        def patched_rename(src, dst):
            if mode == "save-rename" and os.path.basename(src).startswith(".tmp-") and saves["n"] == count:
                die()
            rename(src, dst)

        _checkpoint._write_file = patched_write
        os.rename = patched_rename

    x, y, mask, _ = running_sum_data(120, t_max=10, features=3, seed=7)
    trainer = jm.Trainer(seed_model(3, units=8, dropout=0.3), optax.adam(1e-2), "binary_crossentropy", metrics=["accuracy"], seed=5)
    callbacks += [
        jm.training.EarlyStopping(monitor="val_loss", patience=100, restore_best_weights=True),
        jm.training.CSVLogger(os.path.join(workdir, "log.csv")),
        jm.training.JSONLogger(os.path.join(workdir, "log.jsonl")),
        jm.training.BackupAndRestore(os.path.join(workdir, "backup"), save_freq=4),
    ]
    history = trainer.fit(
        (x, mask), y, batch_size=16, epochs=3, validation_split=0.2, callbacks=callbacks, verbose=0
    )
    arrays = flat_host_arrays((trainer.state.params, trainer.state.opt_state, trainer.state.step))
    np.savez(os.path.join(workdir, "final.npz"), **arrays)
    with open(os.path.join(workdir, "history.json"), "w") as f:
        json.dump({"history": history.history, "epoch": history.epoch, "devices": jax.device_count()}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
