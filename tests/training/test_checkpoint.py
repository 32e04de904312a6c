"""The atomic checkpoint writer: committed or invisible, corrupt ones skipped, no pickles, strict restore."""

import io
import json
import os
import zipfile

import numpy as np
import pytest

from jaxmask.training import _checkpoint as ckpt


def test_roundtrip_prune_and_tmp_cleanup(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path / "run", max_to_keep=2)
    assert manager.restore_latest() is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".tmp-e000009_b000000000-1-abc").mkdir()  # left by a writer killed mid-save
    for i in range(3):
        manager.save(f"e{i:06d}_b000000000", {"w.0": np.full((2, 3), i, np.float32)}, {"i": i, "nan": float("nan")})
    assert manager.names() == ["e000001_b000000000", "e000002_b000000000"]
    assert not any(n.startswith(".tmp-") for n in os.listdir(tmp_path / "run"))
    arrays, meta = manager.restore_latest()
    np.testing.assert_array_equal(arrays["w.0"], np.full((2, 3), 2, np.float32))
    assert meta["i"] == 2 and np.isnan(meta["nan"])
    manager.save("e000002_b000000000", {"w.0": np.zeros(1)}, {})  # already committed: kept as it is
    assert manager.restore_latest()[1]["i"] == 2


def test_corrupt_newest_is_skipped_for_the_previous(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path, max_to_keep=3)
    manager.save("a", {"x.0": np.arange(3)}, {"v": 1})
    manager.save("b", {"x.0": np.arange(3) + 1}, {"v": 2})
    with open(tmp_path / "b" / "meta.json", "w") as f:
        f.write('{"v": 3}')  # changed after commit: hash mismatch
    with pytest.warns(RuntimeWarning, match=r"Skipping incomplete or corrupt checkpoint"):
        arrays, meta = manager.restore_latest()
    assert meta == {"v": 1}
    with pytest.raises(ValueError, match=r"is not a complete checkpoint"):
        ckpt.read_checkpoint(str(tmp_path / "b"))
    os.remove(tmp_path / "a" / "COMMIT")
    assert not ckpt.is_committed(str(tmp_path / "a"))


def test_pickled_arrays_are_refused(tmp_path):
    path = ckpt.write_checkpoint(str(tmp_path / "p"), {"x.0": np.zeros(2)}, {})
    buf = io.BytesIO()
    np.savez(buf, **{"x.0": np.array([{"evil": 1}], dtype=object)})
    with open(os.path.join(path, "arrays.npz"), "wb") as f:
        f.write(buf.getvalue())
    commit = {n: ckpt._sha256(os.path.join(path, n)) for n in ("arrays.npz", "meta.json")}
    with open(os.path.join(path, "COMMIT"), "w") as f:
        json.dump(commit, f)
    assert zipfile.is_zipfile(os.path.join(path, "arrays.npz"))
    with pytest.raises(ValueError, match=r"allow_pickle=False"):
        ckpt.read_checkpoint(path)


def test_restore_checks_structure_shapes_and_dtypes(tmp_path):
    tree = {"a": np.zeros((2, 2), np.float32), "b": np.ones(3, np.int32)}
    ckpt.save_tree(tmp_path / "w", tree)
    ckpt.save_tree(tmp_path / "w", {"a": np.full((2, 2), 7, np.float32), "b": np.ones(3, np.int32)})  # replaced
    assert ckpt.load_tree(tmp_path / "w", tree)["a"][0, 0] == 7
    assert [n for n in os.listdir(tmp_path) if n != "w"] == []
    with pytest.raises(ValueError, match=r"has shape \(2, 2\) and dtype float32; the template expects \(4,\)"):
        ckpt.load_tree(tmp_path / "w", {"a": np.zeros(4, np.float32), "b": np.ones(3, np.int32)})
    with pytest.raises(ValueError, match=r"does not fit the model/optimizer it is restored into"):
        ckpt.load_tree(tmp_path / "w", {"a": tree["a"]})
    with pytest.raises(FileExistsError, match=r"never overwritten"):
        ckpt.write_checkpoint(str(tmp_path / "w"), {}, {})
    with pytest.raises(ValueError, match=r"must use letters, digits"):
        ckpt.write_checkpoint(str(tmp_path / "z"), {"../x": np.zeros(1)}, {})
