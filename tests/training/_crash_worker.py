"""A tiny training run for the crash-safety campaign, meant to be killed with SIGKILL at any moment.

    python tests/training/_crash_worker.py WORKDIR EVENTS [KILL]

Trains the seed model in miniature (Masking -> LSTM(4) -> Dropout -> Dense(1)) with ``BackupAndRestore``
saving after every step, so that much of the run is spent inside checkpoint saves. Every stage of a save is
reported as one line appended to the file EVENTS before the next stage starts (``TIME save K STAGE``; the
first is ``save K begin NAME``), so that a kill from outside can be located afterwards; ``restored NAME`` and
``resumed STEP EPOCH BATCH`` or ``fresh`` say where the run started; ``done`` is written last.

KILL (optional) makes the worker SIGKILL itself at a chosen point:
  ``save:STAGE:K``  at STAGE of the K-th backup save of this process; STAGE is one of ``SAVE_STAGES``
                    (``*-partial`` stages write half of the file, or delete part of a directory, then die);
  ``delete:N``      while deleting the backup directory after training (delete_checkpoint=True), after
                    removing N files, newest checkpoint first (N=1: the newest loses its COMMIT);
  ``step:N``        after the N-th step of this process, before its backup;
  ``epoch-end:N``   at the N-th epoch end of this process, after History recorded it, before any save.
On success it writes WORKDIR/final.npz (parameters, optimizer state, step) and WORKDIR/history.json, each
atomically.

With JAXMASK_CRASH_PROCESSES=2 (and JAXMASK_CRASH_PROCESS, JAXMASK_CRASH_PORT) it is one process of a
two-process run on 127.0.0.1 (see :func:`join_processes`); its outputs are final-pP.npz and history-pP.json.
Process 0 does the file work of every save; process 1 reports ``begin`` and ``end`` of each.
"""

import io
import json
import os
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint  # noqa: E402, F401  (imported before the first step, so timed kills see steady saves)

import jaxmask as jm  # noqa: E402
from jaxmask.training import _checkpoint  # noqa: E402
from tests.training.helpers import flat_host_arrays, running_sum_data, seed_model  # noqa: E402

SAVE_STAGES = (
    "begin",  # before anything (stale .tmp-* directories not yet cleaned)
    "mkdir",  # tmp directory created, empty
    "state-partial",  # orbax wrote the state item in its own tmp dir, one file torn to half, not renamed
    "state",  # the orbax item complete (renamed into our tmp dir)
    "meta-partial",
    "meta",
    "commit-partial",
    "commit",
    "fsync-tmp",  # everything written and fsync'ed, not renamed
    "renamed",  # renamed into place, root not fsync'ed
    "fsync-root",
    "prune-partial",  # the oldest checkpoint half deleted
    "end",
)

# the run: 48 training samples (64, a quarter held out), batch 12 -> 4 steps per epoch, 3 epochs, a backup after
# every step (12 saves: an orbax save costs ~0.15 s here, ~5x the former npz writer). 12 rows split over the 4
# devices of the 2-process setup.
N_SAMPLES, BATCH_SIZE, EPOCHS = 64, 12, 3


class Events:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def __call__(self, line):
        os.write(self.fd, f"{time.monotonic():.6f} {line}\n".encode())


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def atomic_save(path, data: bytes):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Proxy:
    """Stands in for a module inside jaxmask.training._checkpoint, overriding some functions."""

    def __init__(self, module, **overrides):
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._module, name)


def instrument(events, kill_stage, kill_save, kill_delete, backup):
    """Report each stage of each save and delete, and die where asked (patches _checkpoint, and orbax's final
    rename of an item)."""
    from orbax.checkpoint._src.path import atomicity

    count = {"save": 0, "in_save": False}
    write_file, fsync_dir, rename, rmtree = _checkpoint._write_file, _checkpoint._fsync_dir, os.rename, shutil.rmtree
    manager_save, manager_delete = _checkpoint.CheckpointManager.save, _checkpoint.CheckpointManager.delete_all
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    def stage(name):
        events(f"save {count['save']} {name}")
        if count["save"] == kill_save and name == kill_stage:
            die()

    def partial(name, action):
        if count["save"] == kill_save and kill_stage == f"{name}-partial":
            events(f"save {count['save']} {name}-partial")
            action()
            die()

    def patched_write(path, data):
        name = {"meta.json": "meta", "COMMIT": "commit"}[os.path.basename(path)]

        def half():
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())

        partial(name, half)
        write_file(path, data)
        stage(name)

    def patched_mkdir(path, *args, **kwargs):
        os.mkdir(path, *args, **kwargs)
        if os.path.basename(path).startswith(".tmp-"):
            stage("mkdir")

    def patched_fsync_dir(path):
        fsync_dir(path)
        if os.path.basename(path).startswith(".tmp-"):
            stage("fsync-tmp")
        elif os.path.abspath(path) == backup:
            stage("fsync-root")

    def patched_rename(src, dst):
        rename(src, dst)
        stage("renamed")

    def patched_rmtree(path, *args, **kwargs):
        base = os.path.basename(os.path.normpath(path))
        if count["in_save"] and not base.startswith(".tmp-") and os.path.isdir(path):
            # pruning an old checkpoint: remove one file first, so a kill leaves it half deleted
            partial("prune", lambda: os.remove(os.path.join(path, sorted(os.listdir(path))[0])))
        rmtree(path, *args, **kwargs)

    async def patched_finalize(self):
        tmp = str(self.get())
        if count["in_save"]:

            def tear():  # orbax's tmp dir complete but not renamed, its largest file torn to half
                files = [os.path.join(b, f) for b, _, fs in os.walk(tmp) for f in fs]
                biggest = max(files, key=os.path.getsize)
                with open(biggest, "r+b") as f:
                    f.truncate(os.path.getsize(biggest) // 2)

            partial("state", tear)
        await finalize(self)
        if count["in_save"]:
            stage("state")

    def save(self, name, items, meta):
        count["save"] += 1
        count["in_save"] = True
        events(f"save {count['save']} begin {name}")
        if count["save"] == kill_save and kill_stage == "begin":
            die()
        out = manager_save(self, name, items, meta)
        count["in_save"] = False
        stage("end")
        return out

    def delete_all(self):
        events("delete begin")
        if kill_delete:  # remove the first kill_delete files, newest checkpoint first, then die
            removed = 0
            for name in sorted(os.listdir(self.directory), reverse=True):
                for base, _, files in sorted(os.walk(os.path.join(self.directory, name))):
                    for file in sorted(files):
                        if removed == kill_delete:
                            die()
                        os.remove(os.path.join(base, file))
                        removed += 1
            die()
        manager_delete(self)
        events("delete end")

    _checkpoint._write_file = patched_write
    _checkpoint._fsync_dir = patched_fsync_dir
    _checkpoint.os = _Proxy(os, mkdir=patched_mkdir, rename=patched_rename)
    _checkpoint.shutil = _Proxy(shutil, rmtree=patched_rmtree)
    _checkpoint.CheckpointManager.save = save
    _checkpoint.CheckpointManager.delete_all = delete_all
    atomicity.AtomicRenameTemporaryPath.finalize = patched_finalize
    read_checkpoint = _checkpoint.read_checkpoint

    def patched_read(directory):
        out = read_checkpoint(directory)
        events(f"restored {os.path.basename(directory)}")
        return out

    _checkpoint.read_checkpoint = patched_read


def join_processes():
    """With JAXMASK_CRASH_PROCESSES=N > 1: join a ``jax.distributed`` run of N processes on 127.0.0.1
    (JAXMASK_CRASH_PROCESS = this one's index, JAXMASK_CRASH_PORT = the coordinator's port); returns the suffix
    of this process's output files ("" for a one-process run)."""
    processes = int(os.environ.get("JAXMASK_CRASH_PROCESSES", "1"))
    if processes == 1:
        return ""
    import jax

    process = int(os.environ["JAXMASK_CRASH_PROCESS"])
    address = f"127.0.0.1:{os.environ['JAXMASK_CRASH_PORT']}"
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, num_processes=processes, process_id=process, coordinator_bind_address=address,
                               initialization_timeout=60, heartbeat_timeout_seconds=10)
    return f"-p{process}"


def main(workdir, events_path, kill="none"):
    events = Events(events_path)
    suffix = join_processes()
    events("start")
    mode, _, arg = kill.partition(":")
    kill_stage, kill_save = None, None
    if mode == "save":
        kill_stage, _, k = arg.partition(":")
        if kill_stage not in SAVE_STAGES:
            raise ValueError(f"unknown save stage {kill_stage!r}; one of {SAVE_STAGES}")
        kill_save = int(k)
    backup = os.path.abspath(os.path.join(workdir, "backup"))
    instrument(events, kill_stage, kill_save, int(arg) if mode == "delete" else 0, backup)

    class Report(jm.training.Callback):
        def on_train_begin(self, logs=None):
            t = self.trainer
            events(f"resumed {t.global_step} {t.start_epoch} {t.start_batch}" if t.resumed else "fresh")

        steps = epoch_ends = 0

        def on_train_batch_end(self, batch, logs=None):
            events(f"step {self.trainer.global_step}")
            self.steps += 1
            if mode == "step" and self.steps == int(arg):
                die()

        def on_epoch_end(self, epoch, logs=None):
            events(f"epoch-end {epoch}")
            self.epoch_ends += 1
            if mode == "epoch-end" and self.epoch_ends == int(arg):
                die()

    x, y, mask, _ = running_sum_data(N_SAMPLES, t_max=6, features=3, seed=3)
    trainer = jm.Trainer(seed_model(3, units=4, dropout=0.3), optax.adam(1e-2), "binary_crossentropy",
                         metrics=["accuracy"], seed=11)
    callbacks = [Report(), jm.training.BackupAndRestore(backup, save_freq=1)]
    history = trainer.fit((x, mask), y, batch_size=BATCH_SIZE, epochs=EPOCHS, validation_split=0.25,
                          callbacks=callbacks, verbose=0)
    s = trainer.state
    arrays = flat_host_arrays({"params": s.params, "opt_state": s.opt_state, "step": s.step})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_save(os.path.join(workdir, f"final{suffix}.npz"), buf.getvalue())
    text = json.dumps({"history": history.history, "epoch": history.epoch}, sort_keys=True)
    atomic_save(os.path.join(workdir, f"history{suffix}.json"), text.encode())
    events("done")


if __name__ == "__main__":
    main(*sys.argv[1:])
