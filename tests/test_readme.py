"""The README's example runs as written and says what it claims."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_masks_the_padding():
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    assert len(code.strip().splitlines()) <= 20
    scope = {}
    exec(compile(code, str(README), "exec"), scope)
    probs, mask, per_seq = np.asarray(scope["probs"]), np.asarray(scope["mask"]), scope["per_seq"]
    assert probs.shape == (3, 9, 1) and int(mask.sum()) == 17
    np.testing.assert_array_equal(mask.sum(1), [5, 9, 3])
    assert [p.shape for p in per_seq] == [(5, 1), (9, 1), (3, 1)]


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    install = re.search(r'pip install -e "\.\[dev,parity\]" && (python -m pytest)', text)
    assert install, "README must show the test command"
    assert 'pip install -q -e ".[dev,parity]"' in ci and "\npython -m pytest" in ci
    assert "python -m parity" in text


def test_readme_take_over_example_runs(tmp_path, monkeypatch):
    """The "take over your Keras model" example: from_keras equals Keras, and to_keras round-trips."""
    import pytest

    keras = pytest.importorskip("keras")
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[2]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, str(README), "exec"), scope)
    x = [scope["ids"], np.zeros((2, 3), "float32")]
    want = np.asarray(scope["model"](x))
    np.testing.assert_allclose(np.asarray(scope["y"]), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scope["back"](x)), want, atol=1e-6)
    loaded, _ = __import__("jaxmask").keras_io.load_model(tmp_path / "m.keras")(x)
    np.testing.assert_allclose(np.asarray(loaded), want, atol=1e-5)
    assert isinstance(scope["back"], keras.Model)


def test_readme_streaming_example_runs():
    """The streaming example (after the seed's): a PyDataset-like object with a different T per batch trains, and
    a generator evaluates to what the same batches give padded by hand into one array (Keras weights batch
    losses by batch size; these are all 16 rows)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    scope = {}
    exec(compile(blocks[0], str(README), "exec"), scope)
    exec(compile(blocks[1], str(README), "exec"), scope)
    history, logs, shards, trainer = scope["history"], scope["logs"], scope["Shards"](), scope["trainer"]
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    batches = [shards[i] for i in range(3)]
    t = max(x.shape[1] for x, _ in batches)
    x, y = (np.concatenate([np.pad(a[k], ((0, 0), (0, t - a[k].shape[1]), (0, 0))) for a in batches]) for k in (0, 1))
    np.testing.assert_allclose(logs["loss"], trainer.evaluate(x, y, batch_size=16)["loss"], rtol=1e-5)
