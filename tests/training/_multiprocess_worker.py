"""One process of a data-parallel run for tests/training/test_multiprocess.py.

    python tests/training/_multiprocess_worker.py OUT_JSON WORKDIR PROCESS_ID NUM_PROCESSES PORT MODEL

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=D`` (D CPU devices in this process). With
NUM_PROCESSES > 1 it joins a ``jax.distributed`` run whose coordinator (process 0) listens on 127.0.0.1:PORT;
the CPU collectives (gloo) run over 127.0.0.1 too. MODEL is ``lstm`` (the seed model in miniature), ``dense``
(Masking -> Dense: the same run, compiled in a fraction of the time) or ``dense-light`` (``dense`` without
``resumed`` and ``local``). Every layout (1 x 4 devices, 2 x 2 ...) does the same work and writes OUT_JSON:

* ``fit``: ``Trainer.fit`` on the same arrays in every process (each process hands its rows of every global
  batch to ``make_array_from_process_local_data``): 2 epochs, shuffled, dropout, a validation split, a last
  batch too small to split (replicated), CSV/JSON loggers named after the process, a progress bar, and
  ``BackupAndRestore`` every 3 steps into WORKDIR/backup (kept);
* ``resumed``: a fresh Trainer whose ``fit`` resumes from the newest of those orbax backups and ends where
  ``fit`` ended;
* ``local``: a custom loop over ``make_train_step`` in which each process feeds only its own share of every
  global batch (``place_batch(..., process_local=True)``);
* ``stream``: ``Trainer.fit`` on a list of batches, each process's list holding its shares;
* ``errors`` (2 processes): the messages for a share that does not split and for shares of different shapes;
* ``layout``: which rows of a placed batch this process holds.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402


def _gloo_on_loopback():
    """Make jax's gloo collectives bind to 127.0.0.1 (by default gloo uses the address the host name resolves to)."""
    from jax._src import xla_bridge

    real = xla_bridge._jax

    class Loopback:
        def __getattr__(self, name):
            return getattr(real, name)

        def make_gloo_tcp_collectives(self, distributed_client, **kwargs):
            return real.make_gloo_tcp_collectives(distributed_client=distributed_client, hostname="127.0.0.1")

    xla_bridge._jax = Loopback()


def main(out_path, workdir, process_id, num_processes, port, model_kind):
    process_id, num_processes = int(process_id), int(num_processes)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if num_processes > 1:
        _gloo_on_loopback()
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=num_processes,
            process_id=process_id,
            coordinator_bind_address=f"127.0.0.1:{port}",
            initialization_timeout=60,
            heartbeat_timeout_seconds=10,
        )
    import numpy as np
    import optax
    from flax import nnx

    import jaxmask as jm
    from tests.training.helpers import flat_host_arrays, params_of, running_sum_data, seed_model

    def model():
        if model_kind == "lstm":
            return seed_model(3, units=8, dropout=0.3)
        if model_kind not in ("dense", "dense-light"):
            raise ValueError(f"MODEL must be lstm, dense or dense-light; received {model_kind!r}")
        rngs = nnx.Rngs(0)
        return jm.nn.Sequential([jm.nn.Masking(0.0), jm.nn.Dropout(0.3, rngs=rngs),
                                 jm.nn.Dense(3, 1, activation="sigmoid", rngs=rngs)])

    out = {"process_index": jax.process_index(), "process_count": jax.process_count(), "devices": jax.device_count()}
    x, y, mask, _ = running_sum_data(82, t_max=8, features=3, seed=4)  # 66 train (16 x 4 + 2) + 16 validation
    workdir = os.path.abspath(workdir)

    def run(**extra):
        trainer = jm.Trainer(model(), optax.adam(1e-2), "binary_crossentropy",
                             metrics=["accuracy"], seed=5)
        backup = jm.training.BackupAndRestore(os.path.join(workdir, "backup"), save_freq=3, delete_checkpoint=False)
        history = trainer.fit((x, mask), y, batch_size=16, epochs=2, validation_split=0.2,
                              callbacks=[backup, *extra.get("callbacks", [])], verbose=extra.get("verbose", 0))
        return trainer, history

    class Clock(jm.training.Callback):  # when each batch of the last epoch ended (compiled programs only by then)
        stamps = []

        def on_epoch_begin(self, epoch, logs=None):
            self.stamps.clear()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the step
            self.stamps.append(time.perf_counter())

    logs = [jm.training.CSVLogger(os.path.join(workdir, f"log-{jax.process_index()}.csv")),
            jm.training.JSONLogger(os.path.join(workdir, f"log-{jax.process_index()}.jsonl")), Clock()]
    trainer, history = run(callbacks=logs, verbose=1)
    out["fit"] = {"history": history.history, "params": {k: v.tolist() for k, v in params_of(trainer).items()},
                  "global_step": trainer.global_step,
                  "step_seconds_median": float(np.median(np.diff(Clock.stamps)))}
    final = flat_host_arrays((trainer.state.params, trainer.state.opt_state, trainer.state.step))
    out["backups"] = sorted(os.listdir(os.path.join(workdir, "backup")))

    if model_kind != "dense-light":  # "dense-light" (the default test) leaves out the resumed run and the loop
        resumed, history = run()
        again = flat_host_arrays((resumed.state.params, resumed.state.opt_state, resumed.state.step))
        out["resumed"] = {
            "resumed": resumed.resumed,
            "start": [resumed.start_epoch, resumed.start_batch],
            "bit_identical": sorted(again) == sorted(final) and all(np.array_equal(again[k], final[k]) for k in final),
            "history_equal": history.history == out["fit"]["history"],
        }
    else:
        out["resumed"] = None

    # each process feeds only its share of every global batch: a custom loop, and fit on a stream
    def shares(sizes):
        start = 0
        for size in sizes:
            rows = np.arange(start, start + size)
            start += size
            share = rows[np.array_split(np.arange(size), jax.process_count())[jax.process_index()]]
            yield x[share], y[share], mask[share]

    mesh = jm.training.batch_mesh()
    if model_kind != "dense-light":
        ts = jm.training.make_train_step(model(), optax.adam(1e-2), "binary_crossentropy")
        state = ts.init_state(model(), seed=2)
        losses = []
        for xs, ys, ms in shares((16, 16, 8)):
            batch = {"x": xs, "y": ys, "mask": ms, "sample_weight": None}
            state, step_logs = ts.step(state, jm.training.place_batch(batch, mesh, process_local=True))
            losses.append(float(step_logs["loss"]))
        params = {k: np.asarray(v).tolist() for k, v in flat_host_arrays(state.params).items()}
        out["local"] = {"losses": losses, "params": params}
    trainer = jm.Trainer(model(), optax.adam(1e-2), "binary_crossentropy", metrics=["accuracy"], seed=5)

    class Shares:  # Keras' PyDataset protocol: __len__ and __getitem__ returning batches
        batches = [((xs, ms), ys) for xs, ys, ms in shares((16, 16, 16, 16))]

        def __len__(self):
            return len(self.batches)

        def __getitem__(self, i):
            return self.batches[i]

    history = trainer.fit(Shares(), epochs=2, verbose=0)
    out["stream"] = {"history": history.history, "params": {k: v.tolist() for k, v in params_of(trainer).items()}}
    if jax.process_count() > 1:
        errors = {}
        for name, rows in (("odd", 3), ("uneven", 8 if jax.process_index() == 0 else 4)):
            try:
                jm.training.place_batch({"x": x[:rows]}, mesh, process_local=True)
            except ValueError as e:
                errors[name] = str(e)
        out["errors"] = errors

    placed = jm.training.place_batch({"x": x[:16]}, mesh)["x"]
    out["layout"] = {
        "process_rows": [jm.training.process_rows(16, mesh).start, jm.training.process_rows(16, mesh).stop],
        "shards": sorted([s.index[0].start, s.index[0].stop] for s in placed.addressable_shards),
        "spec": str(placed.sharding.spec),
        "small_replicated": jm.training.place_batch({"x": x[:6]}, mesh)["x"].sharding.is_fully_replicated,
    }
    with open(f"{out_path}.tmp", "w") as f:
        json.dump(out, f)
    os.replace(f"{out_path}.tmp", out_path)
    if num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
