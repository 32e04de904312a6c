"""Data-parallel check on 8 simulated CPU devices (run with XLA_FLAGS=--xla_force_host_platform_device_count=8).

Trains the same model from the same weights on a 1-device mesh and on the 8-device mesh, and prints JSON:
the largest parameter and History differences, and how a batch and the parameters are laid out.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import PartitionSpec  # noqa: E402

import jaxmask as jm  # noqa: E402
from tests.training.helpers import params_of, running_sum_data, seed_model  # noqa: E402


def main():
    x, y, mask, _ = running_sum_data(64, t_max=10, features=3, seed=3)
    runs = {}
    for name, mesh in (("single", jm.training.batch_mesh(jax.devices()[:1])), ("sharded", None)):
        trainer = jm.Trainer(seed_model(3, units=8, dropout=0.5), optax.adam(1e-2), "binary_crossentropy",
                             metrics=["accuracy"], seed=1, mesh=mesh)
        history = trainer.fit((x, mask), y, batch_size=32, epochs=2, verbose=0)
        runs[name] = (trainer, params_of(trainer), history.history)
    trainer = runs["sharded"][0]
    batch = jm.training.place_batch({"x": x[:32], "mask": mask[:32], "y": y[:32], "sample_weight": None}, trainer.mesh)
    small = jm.training.place_batch({"x": x[:4]}, trainer.mesh)
    leaf = jax.tree_util.tree_leaves(trainer.state.params)[0]
    out = {
        "devices": jax.device_count(),
        "mesh_devices": int(trainer.mesh.devices.size),
        "max_param_diff": max(float(np.max(np.abs(runs["single"][1][k] - v))) for k, v in runs["sharded"][1].items()),
        "max_param_abs": max(float(np.max(np.abs(v))) for v in runs["single"][1].values()),
        "history_single": runs["single"][2],
        "history_sharded": runs["sharded"][2],
        "batch_spec": str(batch["x"].sharding.spec),
        "batch_spec_ok": batch["x"].sharding.spec == PartitionSpec("batch"),
        "shard_shapes": sorted({tuple(s.data.shape) for s in batch["x"].addressable_shards}),
        "shard_devices": len({s.device for s in batch["x"].addressable_shards}),
        "small_batch_replicated": small["x"].sharding.is_fully_replicated,
        "params_replicated": leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8,
        "step_on_devices": len(trainer.state.step.sharding.device_set),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
