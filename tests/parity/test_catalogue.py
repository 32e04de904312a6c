"""The parity catalogue: its shape, the quick subset against Keras 3 and tf_keras (in the suite), and the
full catalogue against every reference (slow)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("keras")

from parity import cases as catalogue  # noqa: E402
from parity import runner  # noqa: E402
from parity._keras import is_available  # noqa: E402

QUICK = catalogue.select(quick=True)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_catalogue_covers_the_axes():
    cases = catalogue.CASES
    assert len(cases) >= 120
    assert len({c.name for c in cases}) == len(cases)
    kinds = {spec[0] for c in cases for spec in c.full_arch}
    assert {"masking", "embedding", "lstm", "gru", "simple_rnn", "bidirectional", "dense", "dropout", "activation",
            "time_distributed", "gap"} <= kinds
    assert {c.pattern for c in cases} >= {"post", "pre", "holes", "full_row", "none", "all_masked", "square"}
    assert {c.semantics for c in cases} >= {None, "tf_keras_pre212", "keras_legacy"}
    assert {c.reduction for c in cases} >= {"sum_over_batch_size", "sum", "mean_with_sample_weight", "none"}
    assert {c.weights for c in cases} >= {None, "per_sample", "temporal"}
    assert {c.optimizer for c in cases if c.steps} >= {"sgd", "adam", "rmsprop", "adamw", "lion", "ftrl"}
    assert any(c.steps == 20 for c in cases)
    assert {c.kind for c in cases} == {"model", "layer", "graph"}
    graphs = {c.arch[0] for c in cases if c.kind == "graph"}
    assert {f"model/{m}" for m in ("bilstm_classifier", "encoder_decoder", "transformer_classifier",
                                   "gru_with_static_features", "conv_lstm", "batchnorm_between_rnns",
                                   "bigru_attention")} <= graphs
    assert len(graphs) >= 30
    assert all(set(c.references) <= set(runner.REFERENCE_FLAVOR) for c in cases)
    assert 5 <= len(QUICK) <= 25


def _params(reference):
    marks = []
    if reference == "tf_keras" and not is_available("tf_keras"):
        marks = [pytest.mark.skip(reason="tf_keras not installed")]
    return [pytest.param(c, reference, id=f"{reference}:{c.name}", marks=marks) for c in QUICK
            if reference in c.references]


@pytest.mark.keras
@pytest.mark.parametrize("case,reference", _params("keras3") + _params("tf_keras"))
def test_quick_case(case, reference):
    report = runner.run_case(case, reference)
    assert report.ok, str(report)
    if report.deviation is None:
        assert report.status == "pass"
        assert report.valid_diff <= 1e-5 and report.grad_diff <= 1e-4


@pytest.mark.keras
@pytest.mark.slow  # `python -m parity --reference all` runs the same cases
def test_keras3_jax_backend_in_one_subprocess(tmp_path):
    """Keras 3 on JAX: a model case, a layer case with initial_state (documented deviation) and a trajectory,
    all in one child process; plus from_keras / to_keras there."""
    out = tmp_path / "jax.json"
    cmd = [sys.executable, "-m", "parity", "--no-cache", "--reference", "keras3-jax", "-k", "*initial_state/pre",
           "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = json.loads(out.read_text())["reports"]
    assert {r["reference"] for r in reports} == {"keras3-jax"}
    by_name = {r["case"]: r for r in reports}
    assert by_name["lstm/initial_state/pre"]["status"] == "deviation"
    assert by_name["lstm/initial_state/pre"]["deviation"]["name"] == "keras-jax-leading-masked-initial-h"

    code = """
import numpy as np, keras, parity
assert keras.backend.backend() == "jax"
from parity import cases as c, runner
case = c.Case("t", (c.L("bidirectional", layer=c.rnn("gru")), c.L("dense", units=2)), "mixed")
data = c.make_data(case)
model = runner.build_model(keras, case, data["x"])
ours = parity.from_keras(model)
np.testing.assert_allclose(np.asarray(ours(data["x"])[0]), np.asarray(model(data["x"])), atol=1e-5, rtol=1e-5)
back = parity.to_keras(ours)
np.testing.assert_array_equal(np.asarray(back(data["x"])), np.asarray(model(data["x"])))
print("ok")
"""
    env = dict(os.environ, KERAS_BACKEND="jax")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.keras
def test_full_catalogue_every_reference(tmp_path):
    out = tmp_path / "all.json"
    cmd = [sys.executable, "-m", "parity", "--no-cache", "--reference", "all", "--json", str(out),
           "--plot", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["summary"]["checks"] >= 300
    assert {r["reference"] for r in payload["reports"]} == {"keras3", "keras3-jax", "tf_keras"}
    assert list(tmp_path.glob("trajectories_*.png")) and list(tmp_path.glob("outputs_*.png"))
