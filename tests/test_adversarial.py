"""Every crafted Keras file of tests/adversarial/make.py is refused with ``UnsafeFileError``: quickly, in little
memory, without opening any other file, importing, compiling or running anything.

The files are working models with one attack each; the benign controls built the same way load, so each
refusal is caused by its attack.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxmask as jm
from tests.adversarial import make

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = {a.file: a for a in make.catalogue()}
MAX_SECONDS = 1.0
MAX_BYTES = 100 * 2**20
BENIGN = {"benign.keras": "model", "benign_legacy.h5": "model", "benign.weights.h5": "weights"}


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> Path:
    # Two levels deep, so that "../../x" from a careless extractor would still land inside the tmp dir.
    out = tmp_path_factory.mktemp("crafted") / "a" / "b"
    make.write_all(str(out))
    return out


def benign_model():
    rngs = nnx.Rngs(0)
    return jm.nn.Sequential([jm.nn.Masking(0.0), jm.nn.LSTM(make.F, make.H, rngs=rngs),
                             jm.nn.Dense(make.H, 1, activation="sigmoid", rngs=rngs)])


def load(path: Path, kind: str):
    if kind == "model":
        return jm.keras_io.load_model(path)
    model = benign_model()
    jm.keras_io.load_weights(model, path)
    return model


def loaded_weights(model):
    lstm, dense = model.layers[1], model.layers[2]
    return [np.asarray(p[...]) for p in (lstm.kernel, lstm.recurrent_kernel, lstm.bias, dense.kernel, dense.bias)]


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_benign_controls_load_the_generators_weights(crafted, name):
    model = load(crafted / name, BENIGN[name])
    for got, want in zip(loaded_weights(model), make.benign_weights()):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_crafted_file_is_refused_fast_and_small(crafted, name):
    attack = CATALOGUE[name]
    if attack.hangs_unguarded:
        pytest.skip("would hang this process if the guard regressed; checked in a subprocess with a timeout")
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(jm.UnsafeFileError, match=attack.match):
            load(crafted / name, attack.entry)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < MAX_SECONDS, f"{name}: refused in {seconds:.2f} s"
    assert peak < MAX_BYTES, f"{name}: {peak / 2**20:.1f} MiB traced while refusing"


def test_unsafe_file_error_is_a_value_error():
    assert issubclass(jm.UnsafeFileError, ValueError)


def _run_probe(crafted: Path, tmp_path: Path, prefix=(), env=None):
    names = sorted(CATALOGUE) + sorted(BENIGN)
    manifest = {
        "files": [[str(crafted / n), CATALOGUE[n].entry if n in CATALOGUE else BENIGN[n]] for n in names],
        "warmup": [[str(crafted / n), kind] for n, kind in BENIGN.items()],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    cmd = [*prefix, sys.executable, "-m", "tests.adversarial.probe", str(tmp_path / "manifest.json"),
           str(tmp_path / "result.json")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "result.json").read_text())


def test_clean_process_audit_hook_sees_no_open_import_exec_or_subprocess(crafted, tmp_path):
    """In a fresh process where TensorFlow/Keras cannot be imported, with sys.addaudithook recording: each
    crafted file is refused in < 1 s and < 100 MiB, and no load opens another path, opens for writing,
    imports, compiles, execs, spawns, or touches the network."""
    results = _run_probe(crafted, tmp_path)
    assert results.pop("__modules__") == []
    problems = []
    for path, r in results.items():
        name = Path(path).name
        expected = "loaded" if name in BENIGN else "refused"
        if r["outcome"] != expected:
            problems.append(f"{name}: {r['outcome']} {r['message'][:200]}")
        if name in CATALOGUE and not re.search(CATALOGUE[name].match, r["message"]):
            problems.append(f"{name}: message {r['message'][:200]!r} lacks {CATALOGUE[name].match!r}")
        if r["events"]:
            problems.append(f"{name}: audit events {r['events'][:5]}")
        if r["seconds"] >= MAX_SECONDS:
            problems.append(f"{name}: {r['seconds']:.2f} s")
        if max(r["traced_peak_bytes"], r["maxrss_growth_bytes"]) >= MAX_BYTES:
            problems.append(f"{name}: {r['traced_peak_bytes']} B traced, RSS +{r['maxrss_growth_bytes']} B")
    assert not problems, "\n".join(problems)


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    proc = subprocess.run(["strace", "-qq", "-e", "trace=none", "true"], capture_output=True)
    return proc.returncode == 0


@pytest.mark.skipif(not _strace_works(), reason="strace is not available or ptrace is not permitted")
@pytest.mark.slow  # the audit-hook test below runs by default
def test_system_calls_during_loads_touch_only_the_loaded_file(crafted, tmp_path):
    """The audit hook cannot see the HDF5 C library; strace can. Between the markers that bracket each load,
    the only file system, network or process calls are: opening the loaded file, fstat on it, and HDF5's
    probe of the in-memory image name under /dev/null (which can never exist)."""
    marker = "/nonexistent-jaxmask-probe-marker"
    log = tmp_path / "strace.log"
    _run_probe(crafted, tmp_path, prefix=["strace", "-f", "-qq", "-e", "trace=%file,%network,%process,%desc",
                                          "-o", str(log)], env={"JAXMASK_PROBE_MARKER": marker})
    allowed_generic = re.compile(
        r'^(read|pread64|close|fstat|newfstatat\(\d+, "", |lseek|fcntl|ioctl|mmap|munmap|futex|poll|epoll|'
        r'dup|pipe|write\(2,|sched|madvise|mprotect|brk|getrandom)')
    image = jm.keras_io._h5.IMAGE_NAME.decode()
    order = iter(json.loads((tmp_path / "manifest.json").read_text())["files"])
    inside, current, problems = False, None, []
    for line in log.read_text().splitlines():
        call = re.sub(r"^\d+\s+", "", line)
        if f"{marker}/begin" in call:
            inside, current = True, next(order)[0]
            continue
        if f"{marker}/end" in call:
            inside = False
            continue
        if not inside or allowed_generic.match(call) or call.startswith(("+++", "---", "<...")):
            continue
        named = re.match(r'^\w+\((AT_FDCWD, )?"([^"]*)"', call)
        if named and named.group(2) == current and "O_WRONLY" not in call and "O_RDWR" not in call:
            continue
        if named and named.group(2) == image and "ENOTDIR" in call:
            continue
        problems.append(call[:200])
    assert not problems, "\n".join(problems[:20])


def test_no_side_effects_on_disk(crafted):
    targets = (Path("/tmp/jaxmask_absolute.txt"), crafted.parent.parent / "jaxmask_traversal.txt")
    before = {p: p.exists() for p in targets}
    for name, attack in CATALOGUE.items():
        if attack.hangs_unguarded:
            continue
        with pytest.raises(jm.UnsafeFileError):
            load(crafted / name, attack.entry)
    assert not (crafted / make.PWNED_MARKER).exists()
    assert {p: p.exists() for p in before} == before
    assert sorted(os.listdir(crafted)) == sorted([*CATALOGUE, *BENIGN, "secret.txt", "secret_target.h5"])


def test_limits_are_configurable(crafted):
    small = jm.keras_io.Limits(max_file_bytes=1024)
    with pytest.raises(jm.UnsafeFileError, match="over the limit of 1 KiB"):
        jm.keras_io.load_model(crafted / "benign.keras", limits=small)
    few = jm.keras_io.Limits(max_params=10)
    with pytest.raises(jm.UnsafeFileError, match="declares 51 weights, over the limit of 10"):
        jm.keras_io.load_model(crafted / "benign.keras", limits=few)


def test_not_a_regular_file_is_refused(tmp_path):
    with pytest.raises(jm.UnsafeFileError, match="not a regular file"):
        jm.keras_io.load_model(tmp_path)
    fifo = tmp_path / "fifo.keras"
    os.mkfifo(fifo)  # a blocking open() would hang here
    with pytest.raises(jm.UnsafeFileError, match="not a regular file"):
        jm.keras_io.load_model(fifo)
    with pytest.raises(FileNotFoundError):
        jm.keras_io.load_model(tmp_path / "missing.keras")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_bytes_only_ever_raise_unsafe_file_error(crafted, tmp_path, data):
    """Random byte edits of the benign files either load or raise UnsafeFileError, never anything else."""
    name = data.draw(st.sampled_from(sorted(BENIGN)))
    blob = bytearray((crafted / name).read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / name
    path.write_bytes(bytes(blob))
    try:
        load(path, BENIGN[name])
    except jm.UnsafeFileError:
        pass
