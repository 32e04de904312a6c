"""The atomic checkpoint writer over orbax: committed or invisible, corrupt ones skipped, strict restore, readable
by orbax alone."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxmask.training import _checkpoint as ckpt


def test_roundtrip_prune_and_tmp_cleanup(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path / "run", max_to_keep=2)
    assert manager.restore_latest() is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".tmp-e000009_b000000000").mkdir()  # left by a writer killed mid-save
    for i in range(3):
        manager.save(f"e{i:06d}_b000000000", {"w.0": np.full((2, 3), i, np.float32)}, {"i": i, "nan": float("nan")})
    assert manager.names() == ["e000001_b000000000", "e000002_b000000000"]
    assert not any(n.startswith(".tmp-") for n in os.listdir(tmp_path / "run"))
    checkpoint, meta = manager.restore_latest()
    np.testing.assert_array_equal(checkpoint["w.0"], np.full((2, 3), 2, np.float32))
    assert meta["i"] == 2 and np.isnan(meta["nan"])
    manager.save("e000002_b000000000", {"w.0": np.zeros(1)}, {})  # already committed: kept as it is
    assert manager.restore_latest()[1]["i"] == 2


def test_corrupt_newest_is_skipped_for_the_previous(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path, max_to_keep=3)
    manager.save("a", {"x": np.arange(3)}, {"v": 1})
    manager.save("b", {"x": np.arange(3) + 1}, {"v": 2})
    manager.save("c", {"x": np.arange(3) + 2}, {"v": 3})
    with open(tmp_path / "c" / "meta.json", "r+b") as f:
        f.write(b" ")  # changed after commit: hash mismatch
    (tmp_path / "b" / "x" / "stray").write_text("")  # a file COMMIT does not list
    with pytest.warns(RuntimeWarning, match=r"Skipping incomplete or corrupt checkpoint") as record:
        checkpoint, meta = manager.restore_latest()
    assert len(record) == 2 and meta == {"v": 1}
    np.testing.assert_array_equal(checkpoint["x"], np.arange(3))
    with pytest.raises(ValueError, match=r"is not a complete checkpoint"):
        ckpt.read_checkpoint(str(tmp_path / "c"))
    data = [os.path.join(b, f) for b, _, fs in os.walk(tmp_path / "a" / "x") for f in fs]
    with open(max(data, key=os.path.getsize), "r+b") as f:  # flip one bit in an orbax data file
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 1]))
    assert not ckpt.is_committed(str(tmp_path / "a"))
    with pytest.warns(RuntimeWarning, match=r"Skipping incomplete or corrupt checkpoint"):
        assert manager.restore_latest() is None


def test_restore_places_like_the_template_and_checks_structure_shapes_and_dtypes(tmp_path):
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    replicated = NamedSharding(mesh, PartitionSpec())
    a = jax.device_put(jnp.arange(4.0, dtype=jnp.float32).reshape(2, 2), replicated)
    tree = {"a": a, "b": np.ones(3, np.int32)}
    ckpt.save_tree(tmp_path / "w", tree)
    ckpt.save_tree(tmp_path / "w", {"a": np.full((2, 2), 7, np.float32), "b": np.ones(3, np.int32)})  # replaced
    back = ckpt.load_tree(tmp_path / "w", tree)
    assert isinstance(back["a"], jax.Array) and back["a"].sharding == replicated and back["a"][0, 0] == 7
    assert isinstance(back["b"], np.ndarray) and back["b"].dtype == np.int32
    assert [n for n in os.listdir(tmp_path) if n != "w"] == []
    with pytest.raises(ValueError, match=r"has shape \(2, 2\) and dtype float32; the template expects \(4,\)"):
        ckpt.load_tree(tmp_path / "w", {"a": np.zeros(4, np.float32), "b": np.ones(3, np.int32)})
    with pytest.raises(ValueError, match=r"and dtype int32; the template expects \(3,\) and float32"):
        ckpt.load_tree(tmp_path / "w", {"a": np.zeros((2, 2), np.float32), "b": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match=r"does not fit the model/optimizer it is restored into"):
        ckpt.load_tree(tmp_path / "w", {"a": tree["a"]})
    with pytest.raises(FileExistsError, match=r"never overwritten"):
        ckpt.write_checkpoint(str(tmp_path / "w"), {}, {})
    with pytest.raises(ValueError, match=r"must use letters, digits"):
        ckpt.write_checkpoint(str(tmp_path / "z"), {"../x": np.zeros(1)}, {})
    with pytest.raises(TypeError, match=r"must be a numeric or bool array; received ndarray of dtype object"):
        ckpt.write_checkpoint(str(tmp_path / "z"), {"x": {"y": np.array([{"evil": 1}], dtype=object)}}, {})
    assert not (tmp_path / "z").exists()


def test_orbax_alone_reads_the_items_and_pre_orbax_checkpoints_are_refused(tmp_path):
    import orbax.checkpoint as ocp

    state = {"params": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "step": np.int32(5)}
    ckpt.CheckpointManager(tmp_path / "run").save("e000000_b000000001", {"state": state}, {"epoch": 0})
    restored = ocp.PyTreeCheckpointer().restore(str(tmp_path / "run" / "e000000_b000000001" / "state"))
    np.testing.assert_array_equal(np.asarray(restored["params"]["kernel"]), state["params"]["kernel"])
    assert int(restored["step"]) == 5
    old = tmp_path / "old"  # the layout before orbax: arrays.npz + meta.json + COMMIT
    old.mkdir()
    np.savez(old / "arrays.npz", **{"tree.0": np.zeros(2)})
    (old / "meta.json").write_text(json.dumps({"paths": ["['a']"]}))
    (old / "COMMIT").write_text(json.dumps({n: ckpt._sha256(str(old / n)) for n in ("arrays.npz", "meta.json")}))
    assert ckpt.is_committed(str(old))
    with pytest.raises(ValueError, match=r"committed checkpoint of another format"):
        ckpt.load_tree(old, {"a": np.zeros(2)})
