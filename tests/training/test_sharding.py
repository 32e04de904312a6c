"""Data parallelism on 8 simulated CPU devices, in a subprocess (the device count is fixed at JAX start-up):
the sharded run equals the single-device run within float32 tolerance, and the batch really is split."""

import json
import os
import subprocess
import sys

import numpy as np

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sharding_worker.py")


def test_sharded_training_equals_single_device_and_splits_the_batch():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, WORKER], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8 and out["mesh_devices"] == 8
    assert out["batch_spec_ok"], out["batch_spec"]
    assert out["shard_shapes"] == [[4, 10, 3]] and out["shard_devices"] == 8  # 32 rows over 8 devices
    assert out["small_batch_replicated"]  # 4 rows do not split over 8 devices: replicated
    assert out["params_replicated"] and out["step_on_devices"] == 8
    # float32: the gradient all-reduce sums in another order; after 4 Adam steps parameters agree to ~1e-7
    assert out["max_param_diff"] <= 1e-5 * max(1.0, out["max_param_abs"]), out
    single, sharded = out["history_single"], out["history_sharded"]
    assert single.keys() == sharded.keys()
    for key in single:
        np.testing.assert_allclose(sharded[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)
