"""Run catalogue cases against a reference: build the Keras model (once per architecture), give its weights
deterministic random values, and check jaxmask against it.

"keras3" and "tf_keras" run in this process (Keras 3 on TensorFlow); "keras3-jax" needs Keras 3 on the JAX
backend, which a process chooses once at import, so all its cases run in ONE subprocess
(``KERAS_BACKEND=jax python -m parity --child ...``) to pay the import cost once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

from parity import cases as catalogue
from parity._keras import keras3_backend, keras_module
from parity._losses import LossSpec
from parity.compare import ERROR, Report, run_layer_check, run_model_check

REFERENCE_FLAVOR = {"keras3": "keras3", "keras3-jax": "keras3", "tf_keras": "tf_keras"}
REFERENCE_BACKEND = {"keras3": "tensorflow", "keras3-jax": "jax", "tf_keras": "tensorflow"}


def in_process(reference: str) -> bool:
    """Whether ``reference`` can run in this process (Keras 3's backend is fixed per process)."""
    if reference == "tf_keras":
        return True
    return keras3_backend() == REFERENCE_BACKEND[reference]


# ---------------------------------------------------------------------------------------------- building


def make_layer(K, spec):
    kind, kw = spec[0], dict(spec[1])
    layers = K.layers
    if kind == "masking":
        return layers.Masking(kw.get("mask_value", 0.0))
    if kind == "embedding":
        return layers.Embedding(kw["input_dim"], kw["output_dim"], mask_zero=kw.get("mask_zero", False))
    if kind in ("lstm", "gru", "simple_rnn"):
        cls = {"lstm": layers.LSTM, "gru": layers.GRU, "simple_rnn": layers.SimpleRNN}[kind]
        return cls(kw.pop("units"), **kw)
    if kind == "bidirectional":
        return layers.Bidirectional(make_layer(K, kw["layer"]), merge_mode=kw.get("merge_mode", "concat"))
    if kind == "dense":
        return layers.Dense(kw["units"], activation=kw.get("activation"))
    if kind == "time_distributed":
        return layers.TimeDistributed(layers.Dense(kw["units"], activation=kw.get("activation")))
    if kind == "dropout":
        return layers.Dropout(kw["rate"])
    if kind == "activation":
        return layers.Activation(kw["activation"])
    if kind == "gap":
        return layers.GlobalAveragePooling1D()
    raise ValueError(f"unknown layer spec {spec!r}")


def _randomize(obj, seed: int) -> None:
    """Deterministic N(0, 0.5²) weights (biases included, so that bias paths are exercised); variances
    (BatchNormalization's ``moving_variance``) get |N(0, 0.5²)| + 0.5 so that they stay variances."""
    rng = np.random.default_rng(seed)
    values = []
    for w in obj.weights:
        v = rng.normal(0.0, 0.5, tuple(w.shape)).astype(np.float32)
        values.append(np.abs(v) + np.float32(0.5) if "variance" in (getattr(w, "path", None) or w.name) else v)
    obj.set_weights(values)


_MODELS: dict = {}


def build_model(K, case: catalogue.Case, x):
    """The Keras model of ``case`` (cached per library, architecture and input shape; weights reset)."""
    key = (K.__name__, case.full_arch, case.functional, x.shape[1:], str(x.dtype))
    model = _MODELS.get(key)
    if model is None:
        inp = K.Input(x.shape[1:], dtype="int32" if case.uses_embedding else "float32")
        layers = [make_layer(K, spec) for spec in case.full_arch]
        if case.functional:
            h = inp
            for layer in layers:
                h = layer(h)
            model = K.Model(inp, h)
        else:
            model = K.Sequential([inp] + layers)
        _MODELS[key] = model
    _randomize(model, case.seed)
    return model


def build_layer(K, case: catalogue.Case, data):
    layer = make_layer(K, case.arch[0])
    kwargs = {"mask": data["mask"]}
    if "initial_state" in data:
        kwargs["initial_state"] = data["initial_state"]
    if K.__name__ == "tf_keras":  # tf_keras wants tensors, not arrays, for initial_state
        import tensorflow as tf

        kwargs = {k: [tf.constant(s) for s in v] if isinstance(v, list) else tf.constant(v) for k, v in kwargs.items()}
    layer(data["x"], **kwargs)  # build
    _randomize(layer, case.seed)
    return layer


# ---------------------------------------------------------------------------------------------- running


def run_case(case: catalogue.Case, reference: str, *, perturb: float = 0.0) -> Report:
    """Check one case against one in-process reference; exceptions become an ``error`` report."""
    started = time.perf_counter()
    try:
        K = keras_module(REFERENCE_FLAVOR[reference])
        if case.kind == "graph":
            from parity.graph_cases import GRAPHS

            K.utils.set_random_seed(case.seed % 2**31)
            model, x = GRAPHS[case.arch[0]][0](K, case.pattern)
            _randomize(model, case.seed)
            return run_model_check(model, x, steps=case.steps, optimizer=case.optimizer,
                                   learning_rate=case.learning_rate, name=case.name, tags=case.tags, perturb=perturb)
        data = catalogue.make_data(case)
        if case.kind == "layer":
            layer = build_layer(K, case, data)
            return run_layer_check(layer, data["x"], data["mask"], data.get("initial_state"), name=case.name,
                                   tags=case.tags, perturb=perturb)
        model = build_model(K, case, data["x"])
        spec = None
        if case.loss is not None:
            spec = LossSpec(case.loss, case.loss_kwargs, case.reduction, case.semantics_for(reference))
        return run_model_check(
            model, data["x"], data.get("y"), data.get("sample_weight"), spec, steps=case.steps,
            optimizer=case.optimizer, learning_rate=case.learning_rate, name=case.name, tags=case.tags,
            perturb=perturb,
        )
    except Exception as e:  # noqa: BLE001 - reported, never swallowed silently
        report = Report(case=case.name, reference=reference, status=ERROR, tags=case.tags)
        report.failures.append(f"{type(e).__name__}: {e}")
        frame = traceback.extract_tb(e.__traceback__)[-1]
        report.notes.append(f"raised at {frame.filename}:{frame.lineno} in {frame.name}")
        report.seconds = time.perf_counter() - started
        return report


def run_reference(cases, reference: str, *, perturb: float = 0.0, progress=None) -> list[Report]:
    """Run ``cases`` (those applicable) against ``reference``, in process or in one subprocess."""
    cases = [c for c in cases if reference in c.references]
    if not cases:
        return []
    if not in_process(reference):
        return run_in_subprocess(cases, reference, perturb=perturb)
    reports = []
    for case in cases:
        report = run_case(case, reference, perturb=perturb)
        reports.append(report)
        if progress is not None:
            progress(report)
    return reports


class SubprocessRun:
    """``cases`` against ``reference`` in one child process with the right ``KERAS_BACKEND``, started at once so
    that it runs alongside the in-process references; :meth:`reports` waits for it."""

    def __init__(self, cases, reference: str, *, perturb: float = 0.0, plot_dir: str | None = None,
                 cache_dir: str | None = None):
        self.cases, self.reference = list(cases), reference
        env = dict(os.environ, KERAS_BACKEND=REFERENCE_BACKEND[reference])
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self._tmp = tempfile.TemporaryDirectory()
        self._out = os.path.join(self._tmp.name, "reports.json")
        names = os.path.join(self._tmp.name, "cases.txt")
        with open(names, "w") as f:
            f.write("\n".join(c.name for c in self.cases))
        cmd = [sys.executable, "-m", "parity", "--child", names, "--reference", reference, "--json", self._out]
        if perturb:
            cmd += ["--perturb", repr(perturb)]
        if plot_dir:
            cmd += ["--plot", plot_dir]
        cmd += ["--cache-dir", cache_dir] if cache_dir else ["--no-cache"]
        self._log = open(os.path.join(self._tmp.name, "log.txt"), "w+")
        self._proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """Stop the child (the caller was interrupted)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._log.close()
        self._tmp.cleanup()

    def reports(self) -> list[Report]:
        try:
            code = self._proc.wait()
            if not os.path.exists(self._out):
                self._log.seek(0)
                tail = self._log.read().strip().splitlines()[-5:]
                return [_child_error(c, self.reference, code, tail) for c in self.cases]
            with open(self._out) as f:
                payload = json.load(f)
            return [report_from_dict(d) for d in payload["reports"]]
        finally:
            self._log.close()
            self._tmp.cleanup()


def run_in_subprocess(cases, reference: str, **kwargs) -> list[Report]:
    """Run ``cases`` against ``reference`` in one child process and wait for its reports."""
    return SubprocessRun(cases, reference, **kwargs).reports()


def _child_error(case, reference, code, tail) -> Report:
    report = Report(case=case.name, reference=reference, status=ERROR, tags=case.tags)
    report.failures.append(f"the {reference} subprocess exited with {code}: " + " | ".join(tail))
    return report


def report_from_dict(d: dict) -> Report:
    from parity.deviations import DEVIATIONS

    d = dict(d)
    dev = d.pop("deviation", None)
    d["tags"] = tuple(d.get("tags", ()))
    for key, value in list(d.items()):
        if isinstance(value, str) and value in ("nan", "inf", "-inf"):
            d[key] = float(value)
    report = Report(**{k: v for k, v in d.items() if k in Report.__dataclass_fields__})
    report.deviation = None if dev is None else DEVIATIONS.get(dev["name"])
    return report
