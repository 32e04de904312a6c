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


from jaxmask.keras_io import _archive, _graph, _h5, _schema
from jaxmask.keras_io._limits import DEFAULT_LIMITS, Limits, refuse
from jaxmask.keras_io._registry import variable, weights_of


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


def _read_keras3(f: h5py.File, layers, limits: Limits, what: str) -> list[list[np.ndarray]]:
    """Weights in Keras 3 layout: ``layers/<name>/<sub>/vars/<i>`` (see ``_registry``), every shape checked
    against the architecture before its data is read."""
    group = _h5.resolve(f, "layers")
    if not isinstance(group, h5py.Group):
        refuse(f"{what} has no 'layers' group: it is not a Keras 3 weights file.")
    expected = set()
    arrays = []
    for name, path, module in layers:
        values = []
        for w in weights_of(module):
            where = f"{path}/{w.path}"
            expected.add("/" + where)
            ds = _h5.resolve(f, where)
            shape = tuple(variable(module, w.attrs).shape)
            if ds is None:
                refuse(f"{what} has no weight {where!r} ({type(module).__name__} {name!r}, shape {shape}): the file "
                       "does not match the architecture.")
            values.append(_h5.read_weight(ds, where, shape, limits))
        arrays.append(values)
    extra = sorted(set(_dataset_paths(group, "/layers", limits)) - expected)
    if extra:
        refuse(f"{what} holds weights the architecture does not have: {extra[:5]}.")
    return arrays


def _read_legacy(group: h5py.Group, built: _graph.Built, limits: Limits, what: str, image: bytes):
    """Weights in legacy (tf_keras / Keras 2, Keras 3 ``legacy_h5_format``) layout: ``layer_names`` lists the
    top-level layers, each layer group's ``weight_names`` lists its weights in Keras order (a nested model's
    group lists all of its layers' weights); layers are matched by order, as Keras'
    ``load_weights_from_hdf5_group`` does."""
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
    by_top = _graph.group_by_top(built)
    in_model = [(top_name, slots) for top_name, slots in by_top if slots]
    if len(in_file) != len(in_model):
        refuse(f"{what} has weights for {len(in_file)} layers ({[n for n, _, _ in in_file][:8]}) but the "
               f"architecture has {len(in_model)} layers with weights ({[n for n, _ in in_model][:8]}).")
    values = {}
    for (name, g, weight_names), (top_name, slots) in zip(in_file, in_model):
        if len(weight_names) != len(slots):
            refuse(f"{what}: layer {name!r:.80} has {len(weight_names)} weights; {top_name!r} expects "
                   f"{len(slots)} ({[w.attrs[-1] for _, w in slots]}).")
        for weight_name, (index, w) in zip(weight_names, slots):
            where = f"{g.name}/{weight_name}"
            shape = tuple(variable(built.layers[index][2], w.attrs).shape)
            values.setdefault(index, []).append(_h5.read_weight(_h5.resolve(g, weight_name, g.name), where, shape,
                                                                limits))
    return [values.get(i, []) for i in range(len(built.layers))]


def _read_weights(f: h5py.File, built, limits: Limits, what: str, image: bytes) -> list[list[np.ndarray]]:
    """Weights from any Keras weights layout, chosen by the file's contents."""
    if "layer_names" in f.attrs:
        return _read_legacy(f, built, limits, what, image)
    model_weights = _h5.resolve(f, "model_weights")
    if isinstance(model_weights, h5py.Group):
        return _read_legacy(model_weights, built, limits, what, image)
    return _read_keras3(f, built.layers, limits, what)


def _model_from_bytes(data: bytes, origin: str, limits: Limits):
    if _archive.kind_of(data) == "zip":
        members = _archive.read_keras_archive(data, limits)
        if _archive.CONFIG_MEMBER not in members:
            refuse(f"{origin}: the archive has no config.json, so it holds no architecture (use load_weights).")
        version = None
        if _archive.METADATA_MEMBER in members:
            meta = _schema.parse_json(members[_archive.METADATA_MEMBER], f"{origin}:metadata.json", limits,
                                      limits.max_metadata_bytes)
            _schema.scan_objects(meta, "metadata.json")
            version = meta.get("keras_version") if isinstance(meta, dict) else None
        major = _major(version, 3, f"{origin}:metadata.json")
        cfg = _schema.parse_json(members[_archive.CONFIG_MEMBER], f"{origin}:config.json", limits,
                                 limits.max_config_bytes)
        built = _graph.build_model(cfg, flavor="keras3" if major >= 3 else "tf_keras", backend="tensorflow",
                                   limits=limits, what="config.json")
        what = f"{origin}:{_archive.WEIGHTS_MEMBER}"
        with _opened(members[_archive.WEIGHTS_MEMBER], what, limits) as f:
            arrays = _read_keras3(f, built.layers, limits, what)
    else:
        with _opened(data, origin, limits) as f:
            text = _h5.read_str_attr(f, "model_config", "/", limits, data)
            if text is None:
                refuse(f"{origin} has no 'model_config' attribute: it holds weights only (use load_weights).")
            major = _major(_h5.read_str_attr(f, "keras_version", "/", limits, data), 2, origin)
            training = _h5.read_str_attr(f, "training_config", "/", limits, data)
            if training is not None:
                _schema.scan_objects(
                    _schema.parse_json(training, "training_config", limits, limits.max_config_bytes), "training_config"
                )
            cfg = _schema.parse_json(text, f"{origin}:model_config", limits, limits.max_config_bytes)
            built = _graph.build_model(cfg, flavor="keras3" if major >= 3 else "tf_keras", backend="tensorflow",
                                       limits=limits, what="model_config")
            model_weights = _h5.resolve(f, "model_weights")
            if not isinstance(model_weights, h5py.Group):
                refuse(f"{origin} has a model_config but no 'model_weights' group.")
            arrays = _read_legacy(model_weights, built, limits, origin, data)
    _graph.fill(built, arrays)
    return _graph.finish(built.model)


def load_model(path, *, limits: Limits | None = None):
    """Load a Keras model file as a jaxmask ``Sequential`` or ``Model`` in eval mode, without TensorFlow or Keras.

    Reads ``.keras`` archives (Keras 3, ``model.save("m.keras")``) and legacy ``.h5`` full-model files
    (tf_keras / Keras 2 ``model.save("m.h5")``, Keras 3 legacy format); the format is taken from the content,
    not the suffix. Supported: ``Sequential`` models and functional graphs (several inputs and outputs, shared
    layers, nested models, RNN ``initial_state`` wiring, stateful RNNs with a fixed batch size) of the layers in
    the registry (``jaxmask.keras_io.SUPPORTED``) with float32 weights. Unknown time and batch sizes are fine.

    The config is read as data through allow-lists and nothing named in it is imported or called; HDF5 is
    opened from memory and vetted link by link; every weight's declared shape is checked against the
    architecture before any data is read. See SECURITY.md.

    Args:
      path: a ``.keras`` or ``.h5`` file.
      limits: size and count caps (``jaxmask.keras_io.Limits``); the defaults suit models up to 2 GiB.

    Returns:
      ``jm.nn.Sequential`` (Keras Sequential) or ``jm.nn.Model`` (functional) with Keras' weights, in eval mode
      (dropout off); ``model(x) -> (y, mask)``.

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
    built = _graph.Built(model, _graph.layers_of(model), _graph.top_of(model))
    if _archive.kind_of(data) == "zip":
        data = _archive.read_keras_archive(data, limits)[_archive.WEIGHTS_MEMBER]
        origin = f"{origin}:{_archive.WEIGHTS_MEMBER}"
    with _opened(data, origin, limits) as f:
        arrays = _read_weights(f, built, limits, origin, data)
    _graph.fill(built, arrays)


def load_weights(model, path, *, limits: Limits | None = None) -> None:
    """Load Keras weights into an existing jaxmask ``Sequential`` or ``Model`` with the same architecture, in place.

    Reads Keras 3 ``.weights.h5``, the weights of a ``.keras`` archive, and legacy ``.h5`` files (full model
    or ``save_weights``), chosen by content. Keras 3 files are matched by position and class as Keras does
    (``layers/lstm``, ``layers/dense_1``...); legacy files by the order of layers with weights. Every shape is
    checked before reading; nothing is assigned unless every weight loads.

    Args:
      model: ``jm.nn.Sequential`` or ``jm.nn.Model`` of layers that have Keras equivalents.
      path: the weights file.
      limits: size and count caps.

    Raises:
      UnsafeFileError: the file is refused or does not match the model's architecture.
      TypeError: ``model`` is not a Sequential / Model or has a layer without a Keras equivalent.

    Keras equivalent: ``model.load_weights(path)``.
    """
    limits = limits or DEFAULT_LIMITS
    _graph.layers_of(model)
    data = _archive.read_file(path, limits)
    _weights_from_bytes(model, data, os.fspath(path), limits)


def _write_image(model) -> bytes:
    """The bytes of a Keras 3 ``.weights.h5`` holding ``model``'s weights, built in memory."""
    layers = _graph.layers_of(model)
    with h5py.File(_h5.IMAGE_NAME, "w", driver="core", backing_store=False) as f:
        f.create_group("vars").attrs["name"] = getattr(model, "name", None) or "model"
        for name, path, module in layers:
            f.require_group(f"{path}/vars").attrs["name"] = name or path.rsplit("/", 1)[-1]
            for w in weights_of(module):
                group_path, index = w.path.rsplit("/", 1)
                group = f.require_group(f"{path}/{group_path}")
                group.create_dataset(index, data=np.asarray(variable(module, w.attrs)[...], dtype=np.float32))
        f.flush()
        return f.id.get_file_image()


def save_weights(model, path) -> None:
    """Write the weights of a jaxmask ``Sequential`` or ``Model`` as a Keras 3 ``.weights.h5`` file.

    Keras 3's ``model.load_weights(path)`` reads it into the Keras model with the same layers (Sequential or
    functional). The file is written atomically (temporary file, then rename).

    Args:
      model: ``jm.nn.Sequential`` or ``jm.nn.Model`` of layers that have Keras equivalents.
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
