"""load_model / load_weights / save_weights: Keras files <-> jaxmask models, without TensorFlow or Keras."""

from __future__ import annotations

import contextlib
import os
import re

import h5py
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmask import nn
from jaxmask.keras_io import _archive, _config, _h5
from jaxmask.keras_io._layout import RNN_GATES, build, describe_model, keras3_paths, param, slots, snake_case
from jaxmask.keras_io._limits import DEFAULT_LIMITS, Limits, refuse


@contextlib.contextmanager
def _opened(data: bytes, what: str, limits: Limits):
    """An HDF5 file opened from ``data`` in memory, after every link and dataset in it was vetted."""
    f = _h5.open_image(data, what)
    try:
        _h5.Walker(limits).walk(f)
        yield f
    finally:
        f.close()


def _major(version, default: int, what: str) -> int:
    """The major Keras version from ``"3.15.1"``-like text (``default`` when absent)."""
    if version is None:
        return default
    pattern = r"(\d{1,3})\.\d{1,4}(\.\d{1,4})?([.\-+a-zA-Z0-9]{0,32})"
    m = re.fullmatch(pattern, version) if isinstance(version, str) else None
    if not m:
        refuse(f"{what}: keras_version {version!r:.80} is not a version number.")
    major = int(m.group(1))
    if major < 2:
        refuse(f"{what}: files written by Keras {version} use Keras 1 weight layouts, which are not supported.")
    return major


def _dataset_paths(group: h5py.Group, prefix: str, limits: Limits, depth: int = 0) -> list[str]:
    """Paths of every dataset under ``group`` (links were vetted by the Walker; bounded by depth)."""
    out = []
    for name in group:
        obj = _h5.resolve(group, name, prefix)
        if isinstance(obj, h5py.Dataset):
            out.append(f"{prefix}/{name}")
        elif isinstance(obj, h5py.Group) and depth < limits.max_h5_depth:
            out.extend(_dataset_paths(obj, f"{prefix}/{name}", limits, depth + 1))
    return out


def _read_keras3(f: h5py.File, specs, limits: Limits, what: str) -> list[list[np.ndarray]]:
    """Weights in Keras 3 layout: ``layers/<name>/<sub>/vars/<i>`` (see ``_layout``)."""
    layers = _h5.resolve(f, "layers")
    if not isinstance(layers, h5py.Group):
        refuse(f"{what} has no 'layers' group: it is not a Keras 3 weights file.")
    expected = set()
    arrays = []
    for spec, path in zip(specs, keras3_paths(specs)):
        values = []
        for s in slots(spec):
            where = f"{path}/{s.sub}/vars/{s.index}" if s.sub else f"{path}/vars/{s.index}"
            expected.add("/" + where)
            ds = _h5.resolve(f, where)
            if ds is None:
                refuse(f"{what} has no weight {where!r} ({spec.kind} {spec.name!r}, shape {s.shape}): the file "
                       "does not match the architecture.")
            values.append(_h5.read_weight(ds, where, s.shape, limits))
        arrays.append(values)
    extra = sorted(set(_dataset_paths(layers, "/layers", limits)) - expected)
    if extra:
        refuse(f"{what} holds weights the architecture does not have: {extra[:5]}.")
    return arrays


def _read_legacy(group: h5py.Group, specs, limits: Limits, what: str, image: bytes) -> list[list[np.ndarray]]:
    """Weights in legacy (tf_keras / Keras 2, Keras 3 ``legacy_h5_format``) layout: ``layer_names`` lists the
    layers, each layer group's ``weight_names`` lists its weights in Keras order; layers are matched by order,
    as Keras' ``load_weights_from_hdf5_group`` does."""
    names = _h5.read_str_list_attr(group, "layer_names", group.name, limits, image)
    if names is None:
        refuse(f"{what}: the group {group.name!r} has no 'layer_names' attribute: not a legacy Keras weights file.")
    in_file = []
    for name in names:
        g = _h5.resolve(group, name, group.name)
        if not isinstance(g, h5py.Group):
            refuse(f"{what}: layer {name!r:.80} is listed in layer_names but has no group.")
        weight_names = _h5.read_str_list_attr(g, "weight_names", g.name, limits, image)
        if weight_names is None:
            refuse(f"{what}: layer group {g.name!r} has no 'weight_names' attribute.")
        if weight_names:
            in_file.append((name, g, weight_names))
    in_model = [(i, spec) for i, spec in enumerate(specs) if slots(spec)]
    if len(in_file) != len(in_model):
        refuse(f"{what} has weights for {len(in_file)} layers ({[n for n, _, _ in in_file][:8]}) but the "
               f"architecture has {len(in_model)} layers with weights ({[s.kind for _, s in in_model][:8]}).")
    arrays = [[] for _ in specs]
    for (name, g, weight_names), (i, spec) in zip(in_file, in_model):
        expected = slots(spec)
        if len(weight_names) != len(expected):
            refuse(f"{what}: layer {name!r:.80} has {len(weight_names)} weights; {spec.kind} expects "
                   f"{len(expected)} ({[s.attrs[-1] for s in expected]}).")
        for weight_name, s in zip(weight_names, expected):
            where = f"{g.name}/{weight_name}"
            arrays[i].append(_h5.read_weight(_h5.resolve(g, weight_name, g.name), where, s.shape, limits))
    return arrays


def _read_weights(f: h5py.File, specs, limits: Limits, what: str, image: bytes) -> list[list[np.ndarray]]:
    """Weights from any Keras weights layout, chosen by the file's contents."""
    if "layer_names" in f.attrs:
        return _read_legacy(f, specs, limits, what, image)
    model_weights = _h5.resolve(f, "model_weights")
    if isinstance(model_weights, h5py.Group):
        return _read_legacy(model_weights, specs, limits, what, image)
    return _read_keras3(f, specs, limits, what)


def _assign(model: nn.Sequential, specs, arrays) -> None:
    for layer, spec, values in zip(model.layers, specs, arrays):
        for s, value in zip(slots(spec), values):
            p = param(layer, s.attrs)
            if tuple(p.shape) != s.shape:
                raise AssertionError(f"{spec.kind} {s.attrs}: parameter {p.shape} vs slot {s.shape}")
            p[...] = jnp.asarray(value)


def _model_from_bytes(data: bytes, origin: str, limits: Limits) -> nn.Sequential:
    if _archive.kind_of(data) == "zip":
        members = _archive.read_keras_archive(data, limits)
        if _archive.CONFIG_MEMBER not in members:
            refuse(f"{origin}: the archive has no config.json, so it holds no architecture (use load_weights).")
        version = None
        if _archive.METADATA_MEMBER in members:
            meta = _config.parse_json(members[_archive.METADATA_MEMBER], f"{origin}:metadata.json", limits,
                                      limits.max_metadata_bytes)
            _config.scan_objects(meta, "metadata.json")
            version = meta.get("keras_version") if isinstance(meta, dict) else None
        major = _major(version, 3, f"{origin}:metadata.json")
        cfg = _config.parse_json(members[_archive.CONFIG_MEMBER], f"{origin}:config.json", limits,
                                 limits.max_config_bytes)
        specs = _config.model_specs(cfg, major, limits, "config.json")
        what = f"{origin}:{_archive.WEIGHTS_MEMBER}"
        with _opened(members[_archive.WEIGHTS_MEMBER], what, limits) as f:
            arrays = _read_keras3(f, specs, limits, what)
    else:
        with _opened(data, origin, limits) as f:
            text = _h5.read_str_attr(f, "model_config", "/", limits, data)
            if text is None:
                refuse(f"{origin} has no 'model_config' attribute: it holds weights only (use load_weights).")
            major = _major(_h5.read_str_attr(f, "keras_version", "/", limits, data), 2, origin)
            training = _h5.read_str_attr(f, "training_config", "/", limits, data)
            if training is not None:
                _config.scan_objects(
                    _config.parse_json(training, "training_config", limits, limits.max_config_bytes), "training_config"
                )
            cfg = _config.parse_json(text, f"{origin}:model_config", limits, limits.max_config_bytes)
            specs = _config.model_specs(cfg, major, limits, "model_config")
            model_weights = _h5.resolve(f, "model_weights")
            if not isinstance(model_weights, h5py.Group):
                refuse(f"{origin} has a model_config but no 'model_weights' group.")
            arrays = _read_legacy(model_weights, specs, limits, origin, data)
    model = _materialize(specs, arrays)
    model.eval()
    return model


def _materialize(specs, arrays) -> nn.Sequential:
    """The jaxmask model for ``specs`` holding ``arrays``, built without running any initializer: the layers are
    traced abstractly (``nnx.eval_shape``), their parameters set from the file, and their dropout RNG streams
    seeded from ``jax.random.key(0)``. (Initialising and then overwriting would compile an initializer per
    weight shape, seconds per model on a small CPU.)"""
    abstract = nnx.eval_shape(lambda: nn.Sequential([build(spec, nnx.Rngs(0)) for spec in specs]))
    for layer, spec, values in zip(abstract.layers, specs, arrays):
        for s, value in zip(slots(spec), values):
            p = param(layer, s.attrs)
            if tuple(p.shape) != s.shape:
                raise AssertionError(f"{spec.kind} {s.attrs}: parameter {p.shape} vs slot {s.shape}")
            p.set_value(jnp.asarray(value))
    graphdef, state = nnx.split(abstract)
    variables = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    keys = [v for v in variables if isinstance(v, nnx.RngKey)]
    for v, key in zip(keys, jax.random.split(jax.random.key(0), len(keys)) if keys else ()):
        v.set_value(key)
    for v in variables:
        if isinstance(v, nnx.RngCount):
            v.set_value(jnp.zeros((), jnp.uint32))
        elif isinstance(v.get_value(), jax.ShapeDtypeStruct):
            raise AssertionError(f"{type(v).__name__} of shape {v.get_value().shape} was not loaded")
    return nnx.merge(graphdef, state)


def load_model(path, *, limits: Limits | None = None) -> nn.Sequential:
    """Load a Keras model file as a jaxmask ``Sequential`` in eval mode, without TensorFlow or Keras.

    Reads ``.keras`` archives (Keras 3, ``model.save("m.keras")``) and legacy ``.h5`` full-model files
    (tf_keras / Keras 2 ``model.save("m.h5")``, Keras 3 legacy format); the format is taken from the content,
    not the suffix. Supported: ``Sequential`` models and functional models that are one chain from one Input to
    one output, built from InputLayer, Masking, Embedding, Dense, Dropout, Activation, GlobalAveragePooling1D,
    TimeDistributed(Dense), LSTM, GRU, SimpleRNN and Bidirectional with float32 weights.

    The config is read as data through allow-lists and nothing named in it is imported or called; HDF5 is
    opened from memory and vetted link by link; every weight's declared shape is checked against the
    architecture before any data is read. See SECURITY.md.

    Args:
      path: a ``.keras`` or ``.h5`` file.
      limits: size and count caps (``jaxmask.keras_io.Limits``); the defaults suit models up to 2 GiB.

    Returns:
      ``jm.nn.Sequential`` with Keras' weights, in eval mode (dropout off); ``model(x) -> (y, mask)``.

    Raises:
      UnsafeFileError: the file is refused (unsafe, malformed, over the limits, or an unsupported model); the
        message says what and why.
      OSError: ``path`` cannot be opened.

    Keras equivalent: ``keras.saving.load_model(path, safe_mode=True)``.

    Example::

        model = jm.keras_io.load_model("m.keras")
        y, mask = model(x)
    """
    limits = limits or DEFAULT_LIMITS
    data = _archive.read_file(path, limits)
    return _model_from_bytes(data, os.fspath(path), limits)


def _weights_from_bytes(model, data: bytes, origin: str, limits: Limits) -> None:
    specs = describe_model(model)
    if _archive.kind_of(data) == "zip":
        data = _archive.read_keras_archive(data, limits)[_archive.WEIGHTS_MEMBER]
        origin = f"{origin}:{_archive.WEIGHTS_MEMBER}"
    with _opened(data, origin, limits) as f:
        arrays = _read_weights(f, specs, limits, origin, data)
    _assign(model, specs, arrays)


def load_weights(model: nn.Sequential, path, *, limits: Limits | None = None) -> None:
    """Load Keras weights into an existing jaxmask ``Sequential`` with the same architecture, in place.

    Reads Keras 3 ``.weights.h5``, the weights of a ``.keras`` archive, and legacy ``.h5`` files (full model
    or ``save_weights``), chosen by content. Keras 3 files are matched by position and class as Keras does
    (``layers/lstm``, ``layers/dense_1``...); legacy files by the order of layers with weights. Every shape is
    checked before reading; nothing is assigned unless every weight loads.

    Args:
      model: ``jm.nn.Sequential`` of layers that have Keras equivalents.
      path: the weights file.
      limits: size and count caps.

    Raises:
      UnsafeFileError: the file is refused or does not match the model's architecture.
      TypeError: ``model`` is not a ``jm.nn.Sequential`` or has a layer without a Keras equivalent.

    Keras equivalent: ``model.load_weights(path)``.
    """
    limits = limits or DEFAULT_LIMITS
    describe_model(model)
    data = _archive.read_file(path, limits)
    _weights_from_bytes(model, data, os.fspath(path), limits)


def _vars_groups(spec, path: str) -> dict[str, str]:
    """The ``vars`` groups Keras writes for one layer, each with the ``name`` attribute Keras gives it."""
    snake = path.rsplit("/", 1)[-1]
    groups = {f"{path}/vars": spec.name or snake}
    if spec.kind in RNN_GATES:
        groups[f"{path}/cell/vars"] = f"{snake_case(spec.kind)}_cell"
    if spec.kind == "Bidirectional":
        for direction, inner in zip(("forward", "backward"), spec.inner):
            groups[f"{path}/{direction}_layer/vars"] = f"{direction}_{snake_case(inner.kind)}"
            groups[f"{path}/{direction}_layer/cell/vars"] = f"{snake_case(inner.kind)}_cell"
    if spec.kind == "TimeDistributed":
        groups[f"{path}/layer/vars"] = "dense"
    return groups


def _write_image(model: nn.Sequential) -> bytes:
    """The bytes of a Keras 3 ``.weights.h5`` holding ``model``'s weights, built in memory."""
    specs = describe_model(model)
    with h5py.File(_h5.IMAGE_NAME, "w", driver="core", backing_store=False) as f:
        f.create_group("vars").attrs["name"] = "sequential"
        for layer, spec, path in zip(model.layers, specs, keras3_paths(specs)):
            for group, name in _vars_groups(spec, path).items():
                f.create_group(group).attrs["name"] = name
            for s in slots(spec):
                group = f[f"{path}/{s.sub}/vars" if s.sub else f"{path}/vars"]
                group.create_dataset(str(s.index), data=np.asarray(param(layer, s.attrs)[...], dtype=np.float32))
        f.flush()
        return f.id.get_file_image()


def save_weights(model: nn.Sequential, path) -> None:
    """Write the weights of a jaxmask ``Sequential`` as a Keras 3 ``.weights.h5`` file.

    Keras 3's ``model.load_weights(path)`` reads it into the Keras model with the same layers (Sequential or
    functional). The file is written atomically (temporary file, then rename).

    Args:
      model: ``jm.nn.Sequential`` of layers that have Keras equivalents.
      path: destination; must end with ``.weights.h5`` (Keras 3 reads that suffix as this format).

    Raises:
      ValueError: ``path`` does not end with ``.weights.h5``.
      TypeError: ``model`` is not a ``jm.nn.Sequential`` or has a layer without a Keras equivalent.

    Keras equivalent: ``model.save_weights(path)``.
    """
    path = os.fspath(path)
    if not str(path).endswith(".weights.h5"):
        raise ValueError(
            f"`path` must end with '.weights.h5' (Keras 3's load_weights reads that suffix as this format); "
            f"received {path!r}. Use e.g. {os.path.splitext(str(path))[0] + '.weights.h5'!r}."
        )
    image = _write_image(model)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as out:
            out.write(image)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
