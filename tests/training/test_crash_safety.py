"""SIGKILL a training process at many points, mid-save included: every restart resumes from the newest
complete checkpoint, never a partial one, and the run ends bit-identical to an uninterrupted one (parameters,
optimizer state, step, History); also with two processes, one of them killed and both restarted. The campaign
itself is tests/training/crash_harness.py; the 200-kill run is also a script (``python -m
tests.training.crash_harness --kills 200 [--processes 2]``), results in tests/PROPERTIES.md."""

import numpy as np
import pytest

from jaxmask.training import _checkpoint as ckpt
from tests.training.crash_harness import MID_SAVE, campaign

# One kill at each of the most dangerous moments: a torn orbax item, a timed kill from outside, a
# complete but unrenamed checkpoint, an old checkpoint half pruned, the newest checkpoint losing its COMMIT
# while the finished run deletes its backups.
FIXED_PLANS = ["save:state-partial:2", "timed:0.5", "save:fsync-tmp:3", "save:prune-partial:3", "delete:1"]


@pytest.mark.slow  # test_resume.py's SIGKILL case runs by default
def test_five_kills_resume_bit_exact(tmp_path):
    summary = campaign(5, seed=0, root=str(tmp_path), plans=FIXED_PLANS, log=lambda *_: None)
    assert summary["kills"] == 5
    staged = [a["landed"] for a in summary["attempts"] if a["plan"].startswith(("save:", "delete:"))]
    assert staged == ["save:state-partial", "save:fsync-tmp", "save:prune-partial", "delete-begin"]
    assert summary["kills_mid_save"] >= 3
    assert summary["attempts"][-1]["resumed_from"] != "fresh"  # resumed from the previous, intact checkpoint


@pytest.mark.slow
def test_two_hundred_seeded_kills(tmp_path):
    summary = campaign(200, seed=0, root=str(tmp_path), log=lambda *_: None)
    assert summary["kills"] == 200
    assert summary["kills_mid_save"] >= 50
    assert {a["landed"][5:] for a in summary["attempts"] if a["landed"].startswith("save:")} >= MID_SAVE


# The 2-process setup (2 processes x 2 CPU devices, jax.distributed on 127.0.0.1): one process killed, both
# restarted. Process 1 killed from outside, at the start of a save (process 0 waits at the barrier) and after a
# step; process 0 killed with a torn orbax item and with a complete, unrenamed checkpoint.
TWO_PROCESS_PLANS = ["1/timed:0.5", "0/save:state-partial:2", "1/save:begin:3", "0/save:fsync-tmp:2", "1/step:3"]


@pytest.mark.slow
def test_two_processes_one_killed_both_restarted_resume_bit_exact(tmp_path):
    summary = campaign(5, seed=0, root=str(tmp_path), plans=TWO_PROCESS_PLANS, log=lambda *_: None, processes=2)
    assert summary["kills"] == 5 and summary["kills_by_victim"] == {0: 2, 1: 3}
    staged = [a["landed"] for a in summary["attempts"] if "/save:" in a["plan"]]
    assert staged == ["save:state-partial", "save:begin", "save:fsync-tmp"]
    assert summary["resumed_from_checkpoint"] >= 4


def test_pruning_keeps_new_checkpoints_below_stale_broken_ones(tmp_path):
    """Regression (found by the campaign): a run killed while deleting its backups leaves broken directories with
    the run's last names; a restarted run saves under lower names, and pruning by name used to delete each new
    checkpoint right after committing it, keeping the broken ones: the next kill had nothing to resume from."""
    manager = ckpt.CheckpointManager(tmp_path, max_to_keep=2)
    (tmp_path / "e000002_b000000006").mkdir()  # everything deleted but the directory
    (tmp_path / "e000002_b000000005").mkdir()
    (tmp_path / "e000002_b000000005" / "meta.json").write_text("{}")  # COMMIT and the orbax item deleted
    for step in range(1, 4):
        manager.save(f"e000000_b{step:09d}", {"w.0": np.full(2, step)}, {"step": step})
    assert manager.names()[:2] == ["e000000_b000000002", "e000000_b000000003"]
    with pytest.warns(RuntimeWarning, match="Skipping incomplete or corrupt checkpoint"):
        arrays, meta = manager.restore_latest()
    assert meta == {"step": 3}
    np.testing.assert_array_equal(arrays["w.0"], [3, 3])
    manager.save("e000002_b000000005", {"w.0": np.zeros(2)}, {"step": 17})  # reaching a broken name replaces it
    assert manager.names() == ["e000000_b000000003", "e000002_b000000005", "e000002_b000000006"]
    with pytest.warns(RuntimeWarning, match="Skipping incomplete or corrupt checkpoint"):
        assert manager.restore_latest()[1] == {"step": 17}
