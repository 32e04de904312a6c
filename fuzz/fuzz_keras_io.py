"""Atheris fuzz harness for ``jaxmask.keras_io``: whatever the bytes, only ``jaxmask.UnsafeFileError`` may
escape a load (any other exception, a crash, a hang or a memory blow-up is a finding).

Usage::

    python fuzz/fuzz_keras_io.py -max_total_time=600            # seeds in a temporary corpus
    python fuzz/fuzz_keras_io.py -max_total_time=600 CORPUS_DIR  # your own corpus (seeded if empty)

The first byte of each input picks a target; the rest drives it:
  0  raw bytes as a file: load_model (the format is sniffed: zip, HDF5, or refused);
  1  raw bytes as an HDF5 image: load_weights into the benign model;
  2  the benign .keras with config.json rewritten by structure-aware JSON mutations;
  3  the benign .keras with model.weights.h5 byte-edited (HDF5 parsed from memory, core driver);
  4  a zip built member by member from fuzzed names, attributes, methods, sizes and contents;
  5  the benign legacy .h5 byte-edited (model_config/layer_names attributes, legacy layout).
Seeds: the benign files and the crafted attack files of tests/adversarial/make.py (except the two largest).
Crashes are written to fuzz/artifacts/ unless -artifact_prefix is given.
"""

from __future__ import annotations

import copy
import io
import json
import os
import sys
import tempfile
import warnings
import zipfile

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402,F401  (imported before instrumentation: not a target)
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

with atheris.instrument_imports(include=["jaxmask", "h5py", "zipfile", "json"]):
    import h5py  # noqa: F401
    import jaxmask as jm
    from jaxmask.keras_io import _api

from tests.adversarial import make  # noqa: E402

LIMITS = jm.keras_io.Limits()
ALLOWED = (jm.UnsafeFileError,)
_BENIGN_KERAS = make.keras_archive()
_BENIGN_WEIGHTS = make.h5_image(make.write_keras3_weights)
_BENIGN_LEGACY = make.legacy_h5()
_INTERESTING = [None, True, False, 0, 1, -1, 2**31, 2**63, 10**30, 1e308, float("nan"), float("inf"), -0.0, "",
                "x" * 300, "keras.layers", "os", "builtins", "function", "Lambda", "__lambda__", "LSTM", "Dense",
                "InputLayer", "__keras_tensor__", "__tuple__", "NotEqual", "Any", "hard_sigmoid", [], {}, [None, 4, 3],
                {"module": "os", "class_name": "system", "config": {}, "registered_name": "system"},
                {"class_name": "__keras_tensor__", "config": {"keras_history": ["lstm", 0, 0]}}]


def _model():
    rngs = nnx.Rngs(0)
    return jm.nn.Sequential([jm.nn.Masking(0.0), jm.nn.LSTM(make.F, make.H, rngs=rngs),
                             jm.nn.Dense(make.H, 1, activation="sigmoid", rngs=rngs)])


MODEL = _model()


def _byte_edits(fdp, blob: bytes) -> bytes:
    blob = bytearray(blob)
    for _ in range(fdp.ConsumeIntInRange(1, 16)):
        op = fdp.ConsumeIntInRange(0, 3)
        pos = fdp.ConsumeIntInRange(0, max(len(blob) - 1, 0))
        if op == 0 and blob:
            blob[pos] = fdp.ConsumeInt(1) & 0xFF
        elif op == 1:
            blob[pos:pos] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))
        elif op == 2:
            del blob[pos : pos + fdp.ConsumeIntInRange(1, 64)]
        else:  # overwrite a 4- or 8-byte field with an extreme value (sizes, offsets, dimensions)
            width = fdp.PickValueInList([4, 8])
            value = fdp.PickValueInList([0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1, 2**40])
            blob[pos : pos + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    return bytes(blob)


def _fuzz_value(fdp, depth=0):
    kind = fdp.ConsumeIntInRange(0, 6 if depth < 3 else 4)
    if kind == 0:
        return copy.deepcopy(fdp.PickValueInList(_INTERESTING))
    if kind == 1:
        return fdp.ConsumeInt(8)
    if kind == 2:
        return fdp.ConsumeFloat()
    if kind == 3:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 40))
    if kind == 4:
        return fdp.ConsumeBool()
    if kind == 5:
        return [_fuzz_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return {fdp.ConsumeUnicode(12): _fuzz_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))}


def _mutate_json(fdp, obj):
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        node, key = None, None
        cur = obj
        for _ in range(fdp.ConsumeIntInRange(0, 8)):  # walk down to a random container
            if isinstance(cur, dict) and cur:
                key = fdp.PickValueInList(sorted(cur))
            elif isinstance(cur, list) and cur:
                key = fdp.ConsumeIntInRange(0, len(cur) - 1)
            else:
                break
            node, cur = cur, cur[key]
        if node is None:
            return _fuzz_value(fdp)
        op = fdp.ConsumeIntInRange(0, 3)
        if op == 0:
            node[key] = _fuzz_value(fdp)
        elif op == 1:
            del node[key]
        elif op == 2 and isinstance(node, list):
            node.insert(key, json.loads(json.dumps(node[key])))
        else:
            if isinstance(node, dict):
                node[fdp.ConsumeUnicode(16)] = _fuzz_value(fdp)
    return obj


def _replace_member(archive: bytes, name: str, blob: bytes) -> bytes:
    """``archive`` with member ``name`` replaced by ``blob`` (raw bytes, any encoding)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, blob if info.filename == name else src.read(info))
    return buf.getvalue()


def _fuzzed_zip(fdp) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for _ in range(fdp.ConsumeIntInRange(0, 6)):
            name = fdp.PickValueInList(["config.json", "model.weights.h5", "metadata.json", "assets/x",
                                        fdp.ConsumeUnicode(30)])
            if not name:
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = fdp.PickValueInList([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                                      zipfile.ZIP_LZMA])
            info.external_attr = fdp.ConsumeInt(4) & 0xFFFFFFFF
            content = fdp.PickValueInList([_BENIGN_WEIGHTS, json.dumps(make.benign_config()).encode(), b"{}",
                                           fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))])
            try:
                z.writestr(info, content)
            except (ValueError, OSError):  # names zipfile itself cannot write
                continue
    return buf.getvalue()


def _target(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 5)
    if mode == 0:
        _api._model_from_bytes(fdp.ConsumeBytes(fdp.remaining_bytes()), "fuzz", LIMITS)
    elif mode == 1:
        _api._weights_from_bytes(MODEL, fdp.ConsumeBytes(fdp.remaining_bytes()), "fuzz", LIMITS)
    elif mode == 2:
        config = _mutate_json(fdp, copy.deepcopy(make.benign_config()))
        text = json.dumps(config) if fdp.ConsumeBool() else fdp.ConsumeUnicode(fdp.remaining_bytes())
        archive = _BENIGN_KERAS
        _api._model_from_bytes(_replace_member(archive, "config.json", text.encode("utf-8", "surrogatepass")),
                               "fuzz", LIMITS)
    elif mode == 3:
        weights = _byte_edits(fdp, _BENIGN_WEIGHTS)
        _api._model_from_bytes(make.keras_archive(weights_h5=weights), "fuzz", LIMITS)
    elif mode == 4:
        _api._model_from_bytes(_fuzzed_zip(fdp), "fuzz", LIMITS)
    else:
        _api._model_from_bytes(_byte_edits(fdp, _BENIGN_LEGACY), "fuzz", LIMITS)


def TestOneInput(data: bytes) -> None:
    try:
        _target(data)
    except ALLOWED:
        pass


def _seed_corpus(directory: str) -> None:
    """Benign files and crafted attacks, each behind a mode byte: 0 (load_model) or 1 (load_weights)."""
    src = tempfile.mkdtemp(prefix="jaxmask-fuzz-files-")
    files = make.write_all(src)
    seeds = {"benign.keras": 0, "benign_legacy.h5": 0, "benign.weights.h5": 1}
    seeds.update({n: 0 if a.entry == "model" else 1 for n, a in files.items()
                  if n not in ("zip_bomb.keras", "zip_too_many_members.keras")})
    for name, mode in seeds.items():
        with open(os.path.join(src, name), "rb") as f:
            blob = f.read()
        with open(os.path.join(directory, f"seed-{name}"), "wb") as f:
            f.write(bytes([mode]) + blob)
    for mode in (2, 3, 4, 5):
        with open(os.path.join(directory, f"seed-mode-{mode}"), "wb") as f:
            f.write(bytes([mode]) + np.random.default_rng(mode).bytes(256))


def main() -> None:
    argv = list(sys.argv)
    corpus = [a for a in argv[1:] if not a.startswith("-")]
    if not corpus:
        corpus_dir = tempfile.mkdtemp(prefix="jaxmask-fuzz-corpus-")
        argv.append(corpus_dir)
        corpus = [corpus_dir]
    os.makedirs(corpus[0], exist_ok=True)
    if not os.listdir(corpus[0]):
        _seed_corpus(corpus[0])
    if not any(a.startswith("-artifact_prefix=") for a in argv):
        artifacts = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts") + os.sep
        os.makedirs(artifacts, exist_ok=True)
        argv.append(f"-artifact_prefix={artifacts}")
    for flag, default in (("-timeout=", "20"), ("-rss_limit_mb=", "4096"), ("-max_len=", "65536")):
        if not any(a.startswith(flag) for a in argv):
            argv.append(flag + default)
    warnings.simplefilter("ignore")  # zipfile's "Duplicate name" while building inputs
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
