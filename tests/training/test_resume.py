"""Kill a training process with SIGKILL mid-epoch and in the middle of saving a backup, resume, and get
exactly the uninterrupted run: parameters, optimizer state, step, History, CSV and JSON logs, bit for bit."""

import json
import os
import signal
import subprocess
import sys

import numpy as np

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_resume_worker.py")


def run_worker(workdir, kill, cache_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, WORKER, str(workdir), kill], env=env, capture_output=True, text=True, timeout=300)


def read_run(workdir):
    with np.load(workdir / "final.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return (
        arrays,
        json.loads((workdir / "history.json").read_text()),
        (workdir / "log.csv").read_text(),
        (workdir / "log.jsonl").read_text(),
    )


def test_sigkill_mid_epoch_and_mid_save_then_resume_is_bit_exact(tmp_path):
    cache = tmp_path / "jax_cache"
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    reference.mkdir()
    resumed.mkdir()
    done = run_worker(reference, "none", cache)
    assert done.returncode == 0, done.stderr[-3000:]

    backup = resumed / "backup"
    # 18 steps (3 epochs x 6), a backup every 4 steps: positions (epoch, batch) (0, 4), (1, 2), (1, 6), (2, 4).
    killed = run_worker(resumed, "step:7", cache)  # mid-epoch 1; newest backup: step 4
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(os.listdir(backup)) == ["e000000_b000000004"]
    killed = run_worker(resumed, "save-partial:2", cache)  # resumes at step 4, dies writing the step-12 backup
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    names = sorted(os.listdir(backup))
    committed = [n for n in names if not n.startswith(".")]
    assert committed == ["e000000_b000000004", "e000001_b000000002"]
    assert [n for n in names if n.startswith(".")] == [".tmp-e000001_b000000006"]
    killed = run_worker(resumed, "save-rename:1", cache)  # resumes at step 8, dies after fsync, before rename
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [n for n in sorted(os.listdir(backup)) if not n.startswith(".")] == committed
    done = run_worker(resumed, "none", cache)  # resumes at step 8 again and finishes
    assert done.returncode == 0, done.stderr[-3000:]
    assert not backup.exists()  # delete_checkpoint=True after a normal finish

    ref_arrays, ref_history, ref_csv, ref_json = read_run(reference)
    got_arrays, got_history, got_csv, got_json = read_run(resumed)
    assert sorted(got_arrays) == sorted(ref_arrays)
    for k in ref_arrays:
        np.testing.assert_array_equal(got_arrays[k], ref_arrays[k], err_msg=k)
    assert got_history == ref_history and len(got_history["epoch"]) == 3
    assert got_csv == ref_csv and got_json == ref_json
