"""Data parallel over processes on JAX's own runtime: 2 processes x 2 CPU devices (``jax.distributed`` on
127.0.0.1, gloo collectives) train exactly as 1 process x 4 devices on the same global batches; only process 0
writes logs and progress bars; the orbax backups the two processes write together resume bit for bit.

The test starts its processes itself (free loopback port, bounded in time, all killed on failure); the worker is
tests/training/_multiprocess_worker.py."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_multiprocess_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, processes: int, devices: int, model: str):
    """Start ``processes`` workers with ``devices`` CPU devices each; return [(out json, Popen, stderr path)]."""
    os.makedirs(workdir)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    # the resumed run compiles the same programs again: a per-layout persistent cache makes that a read
    env.update(JAX_COMPILATION_CACHE_DIR=os.path.join(workdir, "jax_cache"))
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    port = free_port() if processes > 1 else 0
    runs = []
    for p in range(processes):
        out, err = os.path.join(workdir, f"out{p}.json"), os.path.join(workdir, f"stderr{p}.txt")
        argv = [sys.executable, WORKER, out, str(workdir), str(p), str(processes), str(port), model]
        with open(err, "w") as stderr:
            runs.append((out, subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr), err))
    return runs


def wait_all(runs, timeout: float):
    """Wait for every worker; on a failure or the deadline, kill all of them and fail with their stderr."""
    deadline = time.monotonic() + timeout
    try:
        pending = [proc for _, proc, _ in runs]
        while pending:
            pending = [proc for proc in pending if proc.poll() is None]
            failed = [proc for _, proc, _ in runs if proc.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for _, proc, _ in runs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    bad = [(proc.returncode, err) for _, proc, err in runs if proc.returncode != 0]
    if bad:
        tails = "\n".join(f"--- exit {rc}:\n{open(err).read()[-3000:]}" for rc, err in bad)
        pytest.fail(f"{len(bad)} worker(s) failed or ran past {timeout:.0f} s:\n{tails}")
    return [json.load(open(out)) for out, _, _ in runs], [open(err).read() for _, _, err in runs]


def run_layouts(tmp_path, model: str, timeout: float):
    """1 process x 4 devices and 2 processes x 2 devices side by side: (reference, [out0, out1], stderrs of 2)."""
    one = launch(tmp_path / "one", processes=1, devices=4, model=model)
    two = launch(tmp_path / "two", processes=2, devices=2, model=model)
    (reference,), _ = wait_all(one, timeout)
    outs, stderrs = wait_all(two, timeout)
    return reference, outs, stderrs


def check_same_training(tmp_path, model: str, timeout: float):
    reference, outs, stderrs = run_layouts(tmp_path, model, timeout)

    assert reference["devices"] == 4 and reference["process_count"] == 1
    assert [o["process_index"] for o in outs] == [0, 1] and all(o["devices"] == 4 for o in outs)
    # each process holds its own contiguous half of every split batch; a batch too small to split is replicated
    assert [o["layout"]["process_rows"] for o in outs] == [[0, 8], [8, 16]]
    assert [o["layout"]["shards"] for o in outs] == [[[0, 4], [4, 8]], [[8, 12], [12, 16]]]
    assert all(o["layout"]["spec"] == "P('batch',)" and o["layout"]["small_replicated"] for o in outs)
    for out in outs:
        # float32: the gradient all-reduce runs over gloo instead of in one process; agreement ~1e-7
        for key, values in reference["fit"]["history"].items():
            np.testing.assert_allclose(out["fit"]["history"][key], values, rtol=1e-5, atol=1e-6, err_msg=key)
        for key, value in reference["fit"]["params"].items():
            np.testing.assert_allclose(out["fit"]["params"][key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        assert out["fit"]["global_step"] == reference["fit"]["global_step"] == 10
        if "local" in reference:
            np.testing.assert_allclose(out["local"]["losses"], reference["local"]["losses"], rtol=1e-5, atol=1e-6)
            for key, value in reference["local"]["params"].items():
                np.testing.assert_allclose(out["local"]["params"][key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        for key, values in reference["stream"]["history"].items():
            np.testing.assert_allclose(out["stream"]["history"][key], values, rtol=1e-5, atol=1e-6, err_msg=key)
        for key, value in reference["stream"]["params"].items():
            np.testing.assert_allclose(out["stream"]["params"][key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        odd = "A per-process batch share of 3 rows does not split over this process's 2 devices"
        assert odd in out["errors"]["odd"]
        assert "every process must give shares of the same shapes" in out["errors"]["uneven"]
        # backups every 3 steps of 10, max_to_keep=2; a fresh run resumed from the newest, ended bit-identical
        assert out["backups"] == reference["backups"] == ["e000001_b000000001", "e000001_b000000004"]
        if reference["resumed"] is not None:
            assert out["resumed"] == reference["resumed"] == {
                "resumed": True, "start": [1, 4], "bit_identical": True, "history_equal": True
            }
    # only process 0 wrote the loggers' files and drew the progress bar
    written = sorted(n for n in os.listdir(tmp_path / "two") if n.startswith("log-"))
    assert written == ["log-0.csv", "log-0.jsonl"]
    assert "Epoch 2/2" in stderrs[0] and "Epoch" not in stderrs[1]


def test_two_processes_train_as_one_process_dense(tmp_path):
    """Default suite: fit on the same arrays, fit on per-process streamed shares, the batch layout, the share
    errors, logs and progress bar from process 0 only, the backups the two processes wrote."""
    check_same_training(tmp_path, "dense-light", timeout=300)


@pytest.mark.slow
def test_two_processes_train_as_one_process_dense_resume_and_custom_loop(tmp_path):
    check_same_training(tmp_path, "dense", timeout=540)


@pytest.mark.slow
def test_two_processes_train_as_one_process_lstm(tmp_path):
    check_same_training(tmp_path, "lstm", timeout=900)


def main(argv=None):
    """``python -m tests.training.test_multiprocess [--model lstm|dense]``: run both layouts once and print how far
    2 x 2 is from 1 x 4, and the median time per step of the last epoch of ``fit`` (compiled by then) in each."""
    import argparse
    import pathlib
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", default="lstm", choices=["lstm", "dense"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        started = time.monotonic()
        reference, outs, _ = run_layouts(pathlib.Path(root), args.model, timeout=1200)
        wall = time.monotonic() - started

    def gap(part, key):
        return max(
            float(np.max(np.abs(np.asarray(o[part][key][k]) - np.asarray(v))))
            for o in outs
            for k, v in reference[part][key].items()
        )

    summary = {
        "model": args.model,
        "max_abs_diff": {
            f"{part}.{key}": gap(part, key) for part in ("fit", "stream") for key in ("history", "params")
        },
        "local_loop_max_loss_diff": max(
            abs(a - b) for o in outs for a, b in zip(o["local"]["losses"], reference["local"]["losses"])
        ),
        "resumed_bit_identical": all(o["resumed"]["bit_identical"] for o in outs + [reference]),
        "median_ms_per_step_last_epoch": {
            "1 process x 4 devices": round(1000 * reference["fit"]["step_seconds_median"], 1),
            "2 processes x 2 devices": round(1000 * max(o["fit"]["step_seconds_median"] for o in outs), 1),
        },
        "wall_seconds_both_layouts": round(wall, 1),
        "load_average_1min": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
