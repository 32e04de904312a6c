"""Keras model configs (``config.json`` of a ``.keras`` archive, ``model_config`` of a legacy ``.h5``) read as
pure data and turned into ``LayerSpec`` lists through allow-lists.

Nothing named in a config is imported, resolved or called: class names select one of our own builders,
activation names select one of our own functions, and everything else is refused with ``UnsafeFileError``:
Lambda layers, classes outside the allow-list, any ``module`` that is not Keras' own, any
``registered_name`` of a custom object, any function-valued field, and values of the wrong type.
"""

from __future__ import annotations

import json
import math

from jaxmask.functional.rnn import ACTIVATIONS
from jaxmask.keras_io._layout import RNN_GATES, LayerSpec, slots
from jaxmask.keras_io._limits import Limits, human_bytes, refuse

# Modules Keras itself writes into configs. Only their *names* are compared here; nothing is imported.
KERAS_MODULES = frozenset({
    "keras", "keras.layers", "keras.models", "keras.initializers", "keras.regularizers", "keras.constraints",
    "keras.optimizers", "keras.optimizers.schedules", "keras.losses", "keras.metrics", "keras.activations",
    "keras.src.models.functional", "keras.src.models.sequential", "keras.src.models.model", "keras.src.ops.numpy",
})
# Keras serialises a built-in loss/metric passed as a function as {"module": "builtins", "class_name":
# "function", "config": "<name>", "registered_name": "function"}; only these names are accepted there.
KERAS_FUNCTIONS = frozenset({
    "mean_squared_error", "mse", "mean_absolute_error", "mae", "mean_absolute_percentage_error", "mape",
    "mean_squared_logarithmic_error", "msle", "binary_crossentropy", "categorical_crossentropy",
    "sparse_categorical_crossentropy", "binary_focal_crossentropy", "categorical_focal_crossentropy",
    "kl_divergence", "kld", "kullback_leibler_divergence", "poisson", "hinge", "squared_hinge",
    "categorical_hinge", "huber", "log_cosh", "logcosh", "cosine_similarity", "accuracy", "acc",
    "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy", "top_k_categorical_accuracy",
    "sparse_top_k_categorical_accuracy",
})
# Activation names a config may use: Keras' names whose jaxmask function was checked against Keras 3.15
# (tests/test_keras_io.py). "hard_sigmoid" means clip(0.2 x + 0.5) in Keras <= 2 and relu6(x + 3) / 6 in Keras 3:
# the file's Keras version picks jaxmask's "hard_sigmoid_legacy" or "hard_sigmoid".
_ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}
ACTIVATION_NAMES = frozenset({
    "linear", "tanh", "sigmoid", "hard_sigmoid", "relu", "relu6", "elu", "selu", "softplus", "softsign", "silu",
    "swish", "gelu", "exponential", "softmax", "log_softmax", "hard_silu", "hard_swish", "mish",
}) & (frozenset(ACTIVATIONS) | frozenset(_ALIASES))
_INITIALIZERS = frozenset({
    "GlorotUniform", "GlorotNormal", "Orthogonal", "OrthogonalInitializer", "Zeros", "Ones", "Constant",
    "RandomUniform", "RandomNormal", "TruncatedNormal", "HeUniform", "HeNormal", "LecunUniform", "LecunNormal",
    "VarianceScaling", "Identity", "IdentityInitializer",
})
_REGULARIZERS = frozenset({"L1", "L2", "L1L2", "OrthogonalRegularizer", "l1", "l2", "l1_l2"})
_CONSTRAINTS = frozenset({"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm", "RadialConstraint"})
_OBJECT_KINDS = {
    "initializer": ("keras.initializers", _INITIALIZERS),
    "regularizer": ("keras.regularizers", _REGULARIZERS),
    "constraint": ("keras.constraints", _CONSTRAINTS),
}
_MODEL_CLASSES = {"Sequential", "Functional", "Model"}
LAYER_CLASSES = frozenset({
    "InputLayer", "Masking", "Embedding", "Dense", "Dropout", "Activation", "GlobalAveragePooling1D",
    "TimeDistributed", "LSTM", "GRU", "SimpleRNN", "Bidirectional",
})
_MASK_OPS = {"NotEqual", "Any"}
_WHY_REFUSED = {
    "Lambda": "Lambda layers carry Python bytecode that Keras executes on load (CVE-2024-3660 class)",
    "TFOpLambda": "TFOpLambda layers call arbitrary TensorFlow functions by name",
    "StringLookup": "StringLookup may name a vocabulary file to read (CVE-2025-12058 class)",
    "__lambda__": "a serialised Python lambda is bytecode",
}
_NUMBER = (int, float)
_MAX_UNITS = 2**24


def _member(value, names) -> bool:
    """``value in names`` for a JSON value of any type (lists and dicts are unhashable: never members)."""
    return isinstance(value, str) and value in names


def parse_json(blob: bytes | str, what: str, limits: Limits, max_bytes: int):
    """Parse ``blob`` as JSON: size-capped, UTF-8 only, no duplicate keys, nesting depth capped."""
    if len(blob) > max_bytes:
        refuse(f"{what} is {human_bytes(len(blob))}, over the limit of {human_bytes(max_bytes)}.")
    if isinstance(blob, bytes):
        try:
            blob = blob.decode("utf-8")
        except UnicodeDecodeError as e:
            refuse(f"{what} is not UTF-8 text: {e}")

    containers = blob.count("{") + blob.count("[")  # counts brackets inside strings too: an upper bound
    if containers > limits.max_json_containers:
        refuse(f"{what} holds up to {containers} objects and arrays, over the limit of {limits.max_json_containers}.")

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            refuse(f"{what} repeats the key {dup!r} in one object; parsers disagree on which value counts.")
        return dict(pairs)

    try:
        value = json.loads(blob, object_pairs_hook=no_duplicates)
    except RecursionError:
        refuse(f"{what} is nested too deeply to parse.")
    except ValueError as e:
        refuse(f"{what} is not valid JSON: {e}")
    _check_depth(value, what, limits.max_json_depth)
    return value


def _check_depth(value, what: str, max_depth: int) -> None:
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if d > max_depth:
            refuse(f"{what} nests objects deeper than {max_depth} levels.")
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)


def scan_objects(value, what: str) -> None:
    """Refuse any serialised object (a dict with ``module``/``class_name``/``registered_name``) that is not
    Keras' own, anywhere in ``value`` (architecture, compile_config, training_config alike)."""
    stack = [(value, what)]
    while stack:
        v, where = stack.pop()
        if isinstance(v, list):
            stack.extend((x, f"{where}[{i}]") for i, x in enumerate(v))
            continue
        if not isinstance(v, dict):
            continue
        stack.extend((x, f"{where}.{k}") for k, x in v.items())
        if not {"module", "class_name", "registered_name"} & v.keys():
            continue
        module, cls, reg = v.get("module"), v.get("class_name"), v.get("registered_name")
        optional_str = (str, type(None))
        if not isinstance(cls, str) or not isinstance(module, optional_str) or not isinstance(reg, optional_str):
            refuse(f"{where}: 'module', 'class_name' and 'registered_name' must be strings; received "
                   f"module={module!r}, class_name={cls!r}, registered_name={reg!r}.")
        if cls in _WHY_REFUSED:
            refuse(f"{where}: class {cls!r} is refused: {_WHY_REFUSED[cls]}.")
        if cls == "function":
            name = v.get("config")
            if module not in ("builtins", "keras.losses", "keras.metrics", "keras.activations") or reg not in (
                None, "function") or not _member(name, KERAS_FUNCTIONS | ACTIVATION_NAMES):
                refuse(f"{where}: function-valued field naming {module!r}.{name!r} (registered_name={reg!r}); "
                       "only Keras' built-in losses, metrics and activations may be named.")
            continue
        if module is not None and module not in KERAS_MODULES:
            refuse(f"{where}: module {module!r} (class {cls!r}) is not one of Keras' own; configs that name "
                   "other modules can import and call arbitrary code (CVE-2025-1550 class).")
        if reg is not None and reg != cls:
            refuse(f"{where}: registered_name {reg!r} names a custom object registered outside Keras "
                   f"(class {cls!r}); custom objects are code and are not loaded.")


# ----------------------------------------------------------------------------------------------------------
# Field validators. Each takes (value, where) and returns the checked value or refuses.
# ----------------------------------------------------------------------------------------------------------


def _bool(v, where):
    if not isinstance(v, bool):
        refuse(f"{where} must be true or false; received {v!r}.")
    return v


def _int(lo, hi):
    def check(v, where):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            refuse(f"{where} must be an integer in [{lo}, {hi}]; received {v!r}.")
        return v
    return check


def _rate(v, where):
    if isinstance(v, bool) or not isinstance(v, _NUMBER) or not 0.0 <= v < 1.0:
        refuse(f"{where} must be a number in [0, 1); received {v!r}.")
    return float(v)


def _number(v, where):
    if isinstance(v, bool) or not isinstance(v, _NUMBER):
        refuse(f"{where} must be a number; received {v!r}.")
    return float(v)


def _name(v, where):
    if not isinstance(v, str) or len(v) > 256:
        refuse(f"{where} must be a string of at most 256 characters; received {v!r:.80}.")
    return v


def _equals(*allowed):
    def check(v, where):
        if not any(v is a or (type(v) is type(a) and v == a) for a in allowed):
            refuse(f"{where} must be one of {list(allowed)} to be loaded by jaxmask; received {v!r:.80}.")
        return v
    return check


def _anything_scalar(v, where):
    """Fields that do not change inference (seed, unroll, implementation, input_length): scalars only."""
    if isinstance(v, (dict, list)):
        refuse(f"{where} must be a plain value; received a {type(v).__name__}.")
    return v


def _dtype(v, where):
    """Compute dtype: "float32" as a string or as a DTypePolicy object. Other policies change the numbers."""
    if v is None or v == "float32":
        return v
    if isinstance(v, dict) and v.get("class_name") in ("DTypePolicy", "FloatDTypePolicy", "Policy"):
        cfg = v.get("config")
        if isinstance(cfg, dict) and cfg.get("name") == "float32" and v.get("module") in (None, "keras"):
            return v
    refuse(f"{where} must be float32 (jaxmask computes in float32); received {v!r:.120}.")


def _object(kind):
    module, classes = _OBJECT_KINDS[kind]

    def check(v, where):
        if v is None:
            return v
        if isinstance(v, str):
            if len(v) > 64 or not v.replace("_", "").isalnum():
                refuse(f"{where} must name a Keras {kind}; received {v!r:.80}.")
            return v
        if not isinstance(v, dict) or not _member(v.get("class_name"), classes) or v.get("module") not in (None, module):
            refuse(f"{where} must be a built-in Keras {kind} ({sorted(classes)}); received {v!r:.120}.")
        extra = set(v) - {"module", "class_name", "config", "registered_name", "shared_object_id"}
        cfg = v.get("config", {})
        if extra or not isinstance(cfg, dict) or any(isinstance(x, (dict, list)) and x for x in cfg.values()):
            refuse(f"{where}: a Keras {kind} holds plain numbers and strings only; received {v!r:.120}.")
        return v

    return check


def _activation(keras_major: int):
    def check(v, where):
        if v is None:
            return "linear"
        if isinstance(v, dict):
            if v.get("class_name") == "function" and v.get("module") == "keras.activations":
                v = v.get("config")
            else:
                refuse(f"{where} is a function-valued field ({v!r:.120}); activations must be named by string.")
        if not _member(v, ACTIVATION_NAMES):
            refuse(f"{where}: activation {v!r:.80} is not one of {sorted(ACTIVATION_NAMES)}.")
        if v == "hard_sigmoid" and keras_major < 3:
            return "hard_sigmoid_legacy"  # Keras <= 2: clip(0.2 x + 0.5); Keras 3: relu6(x + 3) / 6
        return _ALIASES.get(v, v)
    return check


def _batch_shape(v, where):
    _shape(v, where)
    return v


def _input_dtype(v, where):
    names = {f"{k}{n}" for k, ns in (("float", (16, 32, 64)), ("int", (8, 16, 32, 64)), ("uint", (8, 16, 32, 64)))
             for n in ns}
    if v is not None and not _member(v, names | {"bool", "bfloat16"}):
        refuse(f"{where} must name a numeric dtype; received {v!r:.80}.")
    return v


_COMMON = {"name": _name, "trainable": _bool, "dtype": _dtype, "batch_input_shape": _batch_shape,
           "batch_shape": _batch_shape}
_INIT, _REG, _CON = _object("initializer"), _object("regularizer"), _object("constraint")
_NONE = _equals(None)


def _fields(kind: str, keras_major: int) -> dict:
    act = _activation(keras_major)
    units = _int(1, _MAX_UNITS)
    if kind == "Masking":
        return {"mask_value": _number}
    if kind == "Embedding":
        return {"input_dim": units, "output_dim": units, "mask_zero": _bool, "input_length": _anything_scalar,
                "embeddings_initializer": _INIT, "embeddings_regularizer": _REG, "activity_regularizer": _REG,
                "embeddings_constraint": _CON, "sparse": _equals(False), "lora_rank": _equals(None, 0),
                "lora_alpha": _anything_scalar, "quantization_config": _NONE}
    if kind == "Dense":
        return {"units": units, "activation": act, "use_bias": _bool, "kernel_initializer": _INIT,
                "bias_initializer": _INIT, "kernel_regularizer": _REG, "bias_regularizer": _REG,
                "activity_regularizer": _REG, "kernel_constraint": _CON, "bias_constraint": _CON,
                "lora_rank": _equals(None, 0), "lora_alpha": _anything_scalar, "quantization_config": _NONE}
    if kind == "Dropout":
        return {"rate": _rate, "noise_shape": _NONE, "seed": _anything_scalar}
    if kind == "Activation":
        return {"activation": act}
    if kind == "GlobalAveragePooling1D":
        return {"data_format": _equals("channels_last"), "keepdims": _equals(False)}
    if kind == "TimeDistributed":
        return {"layer": None}
    if kind == "Bidirectional":
        return {"layer": None, "backward_layer": None, "merge_mode": _equals("concat", "sum", "mul", "ave")}
    if kind in RNN_GATES:
        f = {"units": units, "activation": act, "use_bias": _bool, "kernel_initializer": _INIT,
             "recurrent_initializer": _INIT, "bias_initializer": _INIT, "kernel_regularizer": _REG,
             "recurrent_regularizer": _REG, "bias_regularizer": _REG, "activity_regularizer": _REG,
             "kernel_constraint": _CON, "recurrent_constraint": _CON, "bias_constraint": _CON, "dropout": _rate,
             "recurrent_dropout": _rate, "return_sequences": _bool, "return_state": _equals(False),
             "go_backwards": _bool, "stateful": _equals(False), "unroll": _bool, "time_major": _equals(False),
             "implementation": _anything_scalar, "zero_output_for_mask": _bool, "seed": _anything_scalar,
             "use_cudnn": _anything_scalar}
        if kind != "SimpleRNN":
            f["recurrent_activation"] = act
        if kind == "LSTM":
            f["unit_forget_bias"] = _bool
        if kind == "GRU":
            f["reset_after"] = _bool
        return f
    if kind == "InputLayer":
        return {"sparse": _equals(False), "ragged": _equals(False), "optional": _equals(False),
                "input_tensor": _NONE, "dtype": _input_dtype}
    raise AssertionError(kind)


_RNN_DEFAULTS = {"activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True, "dropout": 0.0,
            "recurrent_dropout": 0.0, "return_sequences": False, "go_backwards": False, "zero_output_for_mask": False,
            "unit_forget_bias": True}


def _layer_config(entry, where: str, keras_major: int, allowed_modules=(None, "keras.layers")) -> tuple[str, dict]:
    """Check one serialised layer ``{"class_name", "config", ...}``; return its class and checked fields."""
    if not isinstance(entry, dict):
        refuse(f"{where} must be a serialised layer object; received {type(entry).__name__}.")
    cls = entry.get("class_name")
    if _member(cls, _WHY_REFUSED):
        refuse(f"{where}: class {cls!r} is refused: {_WHY_REFUSED[cls]}.")
    if not _member(cls, LAYER_CLASSES):
        refuse(f"{where}: layer class {cls!r:.80} is not in the allow-list {sorted(LAYER_CLASSES)}.")
    if entry.get("module") not in allowed_modules:
        refuse(f"{where}: layer {cls!r} from module {entry.get('module')!r:.80}; only Keras' own layers are read.")
    if entry.get("registered_name") not in (None, cls):
        refuse(f"{where}: layer {cls!r} registered as {entry.get('registered_name')!r:.80} is a custom object.")
    extra = set(entry) - {"module", "class_name", "config", "registered_name", "build_config", "name",
                          "inbound_nodes", "shared_object_id"}
    if extra:
        refuse(f"{where}: unexpected keys {sorted(extra)} in the layer entry.")
    cfg = entry.get("config")
    if not isinstance(cfg, dict):
        refuse(f"{where}.config must be an object; received {type(cfg).__name__}.")
    fields = _COMMON | _fields(cls, keras_major)
    out = {}
    for key, value in cfg.items():
        if key not in fields:
            if value is None:
                continue
            refuse(f"{where}.config: field {key!r} of {cls} is not understood by jaxmask (value {value!r:.80}).")
        check = fields[key]
        out[key] = value if check is None else check(value, f"{where}.config.{key}")
    return cls, out


def _shape(value, where: str):
    """A shape without the batch axis from ``[null, T, F]`` (or Keras' ``__tuple__`` wrapper)."""
    if isinstance(value, dict) and value.get("class_name") == "__tuple__":
        value = value["config"].get("value") if isinstance(value.get("config"), dict) else None
    if not isinstance(value, list) or not 1 <= len(value) <= 8:
        refuse(f"{where} must be a list [batch, ...] of at most 8 dimensions; received {value!r:.80}.")
    for d in value:
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or not 0 < d <= 2**31):
            refuse(f"{where}: dimension {d!r:.40} must be a positive integer or null.")
    return tuple(value[1:])


def _feature(shape, kind: str, rank: int, where: str) -> int:
    """The feature size (last axis) of ``shape`` for a layer that needs input rank ``rank`` (without batch)."""
    if len(shape) != rank:
        refuse(f"{where}: {kind} receives inputs of shape [batch, {', '.join(map(str, shape))}] but jaxmask's {kind} "
               f"needs rank {rank + 1}.")
    if rank and shape[-1] is None:
        refuse(f"{where}: {kind} receives inputs whose last dimension is unknown; the model was never built.")
    return shape[-1] if rank else 0


def _rnn_spec(kind, fields, name, in_features, where) -> LayerSpec:
    d = _RNN_DEFAULTS
    args = {"in_features": in_features, "units": fields.get("units")}
    if args["units"] is None:
        refuse(f"{where}: {kind} has no 'units'.")
    for key in ("activation", "use_bias", "dropout", "recurrent_dropout", "return_sequences", "go_backwards",
                "zero_output_for_mask"):
        args[key] = fields.get(key, d[key])
    if kind != "SimpleRNN":
        args["recurrent_activation"] = fields.get("recurrent_activation", d["recurrent_activation"])
    if kind == "LSTM":
        args["unit_forget_bias"] = fields.get("unit_forget_bias", True)
    if kind == "GRU":
        args["reset_after"] = fields.get("reset_after", True)
    return LayerSpec(kind, name, args)


def layer_spec(entry, where: str, shape: tuple, keras_major: int) -> tuple[LayerSpec, tuple]:
    """The ``LayerSpec`` of one serialised layer receiving inputs of ``shape`` (no batch axis), and its output
    shape."""
    kind, f = _layer_config(entry, where, keras_major)
    name = f.get("name", "")
    if kind == "Masking":
        _feature(shape, kind, 2, where)
        return LayerSpec(kind, name, {"mask_value": f.get("mask_value", 0.0)}), shape
    if kind == "Embedding":
        _feature(shape, kind, 1, where)
        for key in ("input_dim", "output_dim"):
            if key not in f:
                refuse(f"{where}: Embedding has no {key!r}.")
        args = {"input_dim": f["input_dim"], "output_dim": f["output_dim"], "mask_zero": f.get("mask_zero", False)}
        return LayerSpec(kind, name, args), shape + (f["output_dim"],)
    if kind == "Dense":
        if not shape:
            refuse(f"{where}: Dense receives inputs without a feature axis.")
        in_features = _feature(shape, kind, len(shape), where)
        if "units" not in f:
            refuse(f"{where}: Dense has no 'units'.")
        args = {"in_features": in_features, "units": f["units"], "activation": f.get("activation", "linear"),
                "use_bias": f.get("use_bias", True)}
        return LayerSpec(kind, name, args), shape[:-1] + (f["units"],)
    if kind == "Dropout":
        if "rate" not in f:
            refuse(f"{where}: Dropout has no 'rate'.")
        return LayerSpec(kind, name, {"rate": f["rate"]}), shape
    if kind == "Activation":
        if "activation" not in f:
            refuse(f"{where}: Activation has no 'activation'.")
        return LayerSpec(kind, name, {"activation": f["activation"]}), shape
    if kind == "GlobalAveragePooling1D":
        _feature(shape, kind, 2, where)
        return LayerSpec(kind, name, {}), shape[1:]
    if kind == "TimeDistributed":
        if len(shape) < 2:
            refuse(f"{where}: TimeDistributed needs inputs [batch, time, ...]; received rank {len(shape) + 1}.")
        inner_entry = f.get("layer")
        if not isinstance(inner_entry, dict) or inner_entry.get("class_name") != "Dense":
            refuse(f"{where}.config.layer: jaxmask loads TimeDistributed(Dense) only; received "
                   f"{(inner_entry or {}).get('class_name') if isinstance(inner_entry, dict) else inner_entry!r:.80}.")
        inner, out = layer_spec(inner_entry, f"{where}.config.layer", shape[1:], keras_major)
        return LayerSpec(kind, name, {}, (inner,)), shape[:1] + out
    if kind in RNN_GATES:
        in_features = _feature(shape, kind, 2, where)
        spec = _rnn_spec(kind, f, name, in_features, where)
        h = spec.args["units"]
        return spec, (shape[0], h) if spec.args["return_sequences"] else (h,)
    if kind == "Bidirectional":
        return _bidirectional_spec(f, name, shape, where, keras_major)
    refuse(f"{where}: {kind} cannot appear here.")


def _bidirectional_spec(f, name, shape, where, keras_major):
    in_features = _feature(shape, "Bidirectional", 2, where)
    merge = f.get("merge_mode", "concat")
    specs = []
    for key in ("layer", "backward_layer"):
        sub = f.get(key)
        if sub is None and key == "backward_layer":
            fw = specs[0]
            specs.append(LayerSpec(fw.kind, "", fw.args | {"go_backwards": not fw.args["go_backwards"]}))
            continue
        kind, sf = _layer_config(sub, f"{where}.config.{key}", keras_major)
        if kind not in RNN_GATES:
            refuse(f"{where}.config.{key}: Bidirectional wraps LSTM, GRU or SimpleRNN; received {kind}.")
        specs.append(_rnn_spec(kind, sf, sf.get("name", ""), in_features, f"{where}.config.{key}"))
    fw, bw = specs
    for attr in ("return_sequences",):
        if fw.args[attr] != bw.args[attr]:
            refuse(f"{where}: forward and backward layers disagree on {attr}.")
    if fw.args["go_backwards"] == bw.args["go_backwards"]:
        refuse(f"{where}: the backward layer must run in the opposite direction of the forward layer.")
    if merge != "concat" and fw.args["units"] != bw.args["units"]:
        refuse(f"{where}: merge_mode {merge!r} needs equal units in both directions.")
    seq = fw.args["return_sequences"]
    # Keras' Bidirectional forces zero_output_for_mask = return_sequences on both directions.
    fw = LayerSpec(fw.kind, fw.name, fw.args | {"zero_output_for_mask": seq})
    bw = LayerSpec(bw.kind, bw.name, bw.args | {"zero_output_for_mask": seq})
    h = fw.args["units"] + bw.args["units"] if merge == "concat" else fw.args["units"]
    return LayerSpec("Bidirectional", name, {"merge_mode": merge}, (fw, bw)), (shape[0], h) if seq else (h,)


# ----------------------------------------------------------------------------------------------------------
# Whole models: Sequential, and functional models that are a single chain.
# ----------------------------------------------------------------------------------------------------------


def model_specs(cfg, keras_major: int, limits: Limits, what: str) -> list[LayerSpec]:
    """The layers of the model described by ``cfg`` (already parsed JSON), in call order."""
    scan_objects(cfg, what)
    if not isinstance(cfg, dict):
        refuse(f"{what} must be a JSON object; received {type(cfg).__name__}.")
    cls = cfg.get("class_name")
    if not _member(cls, _MODEL_CLASSES):
        why = _WHY_REFUSED.get(cls, "") if isinstance(cls, str) else ""
        refuse(f"{what}: the model class {cls!r:.80} is not Sequential or a functional Model"
               + (f" ({why})" if why else "") + ".")
    extra = set(cfg) - {"module", "class_name", "config", "registered_name", "build_config", "compile_config",
                        "keras_version", "backend", "shared_object_id"}
    if extra:
        refuse(f"{what}: unexpected top-level keys {sorted(extra)}.")
    inner = cfg.get("config")
    if not isinstance(inner, dict) or not isinstance(inner.get("layers"), list):
        refuse(f"{what}.config must be an object with a 'layers' list.")
    layers = inner["layers"]
    if len(layers) > limits.max_layers:
        refuse(f"{what}: {len(layers)} layers, over the limit of {limits.max_layers}.")
    extra = set(inner) - {"name", "trainable", "dtype", "layers", "input_layers", "output_layers",
                          "build_input_shape"}
    if any(inner[k] is not None for k in extra):
        refuse(f"{what}.config: unexpected keys {sorted(extra)}.")
    for i, entry in enumerate(layers):  # every class and field is checked before any graph or shape reasoning
        if not _is_mask_op(entry):
            _layer_config(entry, f"{what}.config.layers[{i}]", keras_major)
    if "input_layers" in inner or "output_layers" in inner:
        chain, input_entry = _linear_chain(inner, what)
    else:
        chain, input_entry = _sequential_chain(layers, what)
    shape = _input_shape(cfg, inner, input_entry, chain, what)
    specs = []
    for where, entry in chain:
        spec, shape = layer_spec(entry, where, shape, keras_major)
        specs.append(spec)
    total = sum(math.prod(s.shape) for spec in specs for s in slots(spec))
    if total > limits.max_params:
        refuse(f"{what}: the architecture declares {total} weights, over the limit of {limits.max_params}.")
    return specs


def _sequential_chain(layers, what):
    chain = [(f"{what}.config.layers[{i}]", e) for i, e in enumerate(layers)]
    input_entry = None
    if chain and isinstance(chain[0][1], dict) and chain[0][1].get("class_name") == "InputLayer":
        input_entry = chain.pop(0)
    for where, e in chain:
        if isinstance(e, dict) and e.get("class_name") == "InputLayer":
            refuse(f"{where}: an InputLayer in the middle of a Sequential model.")
    return chain, input_entry


def _input_shape(cfg, inner, input_entry, chain, what):
    """The input shape without the batch axis: from the InputLayer, a first layer's batch_input_shape, or a
    build_config (Keras 3)."""
    if input_entry is not None:
        where, entry = input_entry
        _, f = _layer_config(entry, where, 3)
        for key in ("batch_shape", "batch_input_shape"):
            if f.get(key) is not None:
                return _shape(f[key], f"{where}.config.{key}")
        refuse(f"{where}: the InputLayer has no batch_shape.")
    if chain:
        where, entry = chain[0]
        first = entry.get("config") if isinstance(entry, dict) else None
        for key in ("batch_shape", "batch_input_shape"):
            if isinstance(first, dict) and first.get(key) is not None:
                return _shape(first[key], f"{where}.config.{key}")
    for where, holder, key in ((f"{what}.config", inner, "build_input_shape"),
                               (f"{what}.build_config", cfg.get("build_config"), "input_shape"),
                               (f"{chain[0][0] if chain else what}.build_config",
                                chain[0][1].get("build_config") if chain and isinstance(chain[0][1], dict) else None,
                                "input_shape")):
        if isinstance(holder, dict) and holder.get(key) is not None:
            return _shape(holder[key], f"{where}.{key}")
    refuse(f"{what}: the input shape is unknown (the model was never built, so it has no weights).")


def _ref(x, where):
    """``(layer_name, node_index, tensor_index)`` of a tensor reference in either Keras 3 or tf_keras format,
    or None if ``x`` is not a tensor reference."""
    if isinstance(x, dict) and x.get("class_name") == "__keras_tensor__":
        hist = (x.get("config") or {}).get("keras_history") if isinstance(x.get("config"), dict) else None
    elif isinstance(x, list) and len(x) in (3, 4) and isinstance(x[0], str):
        hist = x[:3]
    else:
        return None
    if (not isinstance(hist, list) or len(hist) != 3 or not isinstance(hist[0], str)
            or any(isinstance(h, bool) or not isinstance(h, int) for h in hist[1:])):
        refuse(f"{where}: malformed tensor reference {x!r:.120}.")
    if hist[1:] != [0, 0]:
        refuse(f"{where}: reference to {hist!r:.80} (a shared layer or a second output); only linear models load.")
    return hist[0]


def _node(entry, where):
    """(tensor inputs, other positional args, kwargs) of the single call of a functional layer."""
    nodes = entry.get("inbound_nodes")
    if not isinstance(nodes, list) or len(nodes) != 1:
        refuse(f"{where}: a layer called {len(nodes) if isinstance(nodes, list) else '?'} times; only layers "
               "called once load.")
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        args, kwargs = node.get("args"), node.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict) or set(node) - {"args", "kwargs"}:
            refuse(f"{where}.inbound_nodes: malformed node {node!r:.120}.")
    elif isinstance(node, list) and len(node) == 1 and isinstance(node[0], list):  # tf_keras: [[name, 0, 0, {}]]
        args = [node[0]]
        kwargs = node[0][3] if len(node[0]) == 4 else {}
        if not isinstance(kwargs, dict):
            refuse(f"{where}.inbound_nodes: malformed call arguments {kwargs!r:.80}.")
    else:
        refuse(f"{where}.inbound_nodes: a node with several inputs {node!r:.120}; only linear models load.")
    tensors = [r for r in (_ref(a, f"{where}.inbound_nodes") for a in args) if r is not None]
    others = [a for a in args if _ref(a, where) is None]
    return tensors, others, kwargs


def _single_ref(value, where):
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    name = _ref(value, where) if isinstance(value, list) else None
    if name is None:
        refuse(f"{where} must name exactly one tensor; received {value!r:.120}.")
    return name


def _linear_chain(inner, what):
    """The layers of a functional model, in call order, if they form a single chain from one input to one
    output; Keras 3's auto-generated mask ops (NotEqual, Any) are accepted where they only compute the mask of
    a Masking layer or an Embedding(mask_zero=True)."""
    entries = {}
    for i, e in enumerate(inner["layers"]):
        where = f"{what}.config.layers[{i}]"
        if not isinstance(e, dict):
            refuse(f"{where} must be an object.")
        name = e.get("name", (e.get("config") or {}).get("name") if isinstance(e.get("config"), dict) else None)
        if not isinstance(name, str) or name in entries:
            refuse(f"{where}: missing or repeated layer name {name!r:.80}.")
        entries[name] = (where, e)
    input_name = _single_ref(inner.get("input_layers"), f"{what}.config.input_layers")
    output_name = _single_ref(inner.get("output_layers"), f"{what}.config.output_layers")
    if input_name not in entries or entries[input_name][1].get("class_name") != "InputLayer":
        refuse(f"{what}.config.input_layers: {input_name!r:.80} is not an InputLayer of the model.")
    ops, main_input, mask_refs = {}, {}, []
    for name, (where, e) in entries.items():
        cls = e.get("class_name")
        if name == input_name:
            continue
        if cls == "InputLayer":
            refuse(f"{where}: a second InputLayer; only single-input models load.")
        if _is_mask_op(e):
            ops[name] = _mask_op(e, where)
            continue
        tensors, others, kwargs = _node(e, where)
        if len(tensors) != 1 or others:
            refuse(f"{where}: layer {name!r:.80} takes {len(tensors)} tensors and {len(others)} other arguments; "
                   "only linear models load.")
        for key, value in kwargs.items():
            if key == "training" and (value is None or isinstance(value, bool)):
                continue
            if key == "mask":
                if value is not None:
                    mask_refs.append((where, _ref(value, f"{where}.kwargs.mask")))
                continue
            refuse(f"{where}: call argument {key!r:.80} is not supported.")
        main_input[name] = tensors[0]
    chain, cur, seen = [], output_name, set()
    while cur != input_name:
        if cur not in main_input or cur in seen:
            refuse(f"{what}: the path from the output back to the input passes {cur!r:.80}, which is not a layer "
                   "of a single chain.")
        seen.add(cur)
        chain.append(entries[cur])
        cur = main_input[cur]
    chain.reverse()
    if seen != set(main_input):
        refuse(f"{what}: layers {sorted(set(main_input) - seen)[:5]} are not on the input-output chain; only "
               "linear models load.")
    _check_mask_ops(ops, mask_refs, entries, main_input, what)
    return chain, entries[input_name]


def _is_mask_op(e) -> bool:
    """Keras 3's auto-generated mask computations in functional graphs (module omitted in legacy .h5)."""
    return isinstance(e, dict) and _member(e.get("class_name"), _MASK_OPS) and e.get("module") in (
        None, "keras.src.ops.numpy")


def _mask_op(e, where):
    cls = e.get("class_name")
    if e.get("registered_name") not in (None, cls):
        refuse(f"{where}: op {cls} registered as {e.get('registered_name')!r:.80}.")
    cfg = e.get("config")
    expected = {"name"} if cls == "NotEqual" else {"name", "axis", "keepdims"}
    if not isinstance(cfg, dict) or set(cfg) - expected:
        refuse(f"{where}: unexpected config for the mask op {cls}: {cfg!r:.120}.")
    if cls == "Any" and (cfg.get("axis", -1) != -1 or cfg.get("keepdims", False) is not False):
        refuse(f"{where}: the Any mask op must reduce the last axis.")
    tensors, others, kwargs = _node(e, where)
    if len(tensors) != 1 or kwargs or len(others) != (1 if cls == "NotEqual" else 0):
        refuse(f"{where}: unexpected arguments to the mask op {cls}.")
    if others and (isinstance(others[0], bool) or not isinstance(others[0], _NUMBER)):
        refuse(f"{where}: NotEqual compares against {others[0]!r:.80}; expected a number.")
    return cls, tensors[0], (float(others[0]) if others else None)


def _check_mask_ops(ops, mask_refs, entries, main_input, what):
    """Each mask op must compute what a Masking layer or Embedding(mask_zero=True) on the chain computes."""
    producers = {}
    for name, target in main_input.items():
        e = entries[name][1]
        cfg = e.get("config") if isinstance(e.get("config"), dict) else {}
        if e.get("class_name") == "Masking":
            producers[(target, float(cfg.get("mask_value", 0.0)), "Masking")] = name
        if e.get("class_name") == "Embedding" and cfg.get("mask_zero") is True:
            producers[(target, 0.0, "Embedding")] = name
    for name, (cls, src, value) in ops.items():
        where = entries[name][0]
        if cls == "NotEqual" and not any(k[:2] == (src, value) for k in producers):
            refuse(f"{where}: mask op NotEqual({src!r:.40}, {value}) matches no Masking or Embedding(mask_zero) "
                   "layer; only Keras' own mask computations load.")
        if cls == "Any" and (src not in ops or ops[src][0] != "NotEqual"
                             or (ops[src][1], ops[src][2], "Masking") not in producers):
            refuse(f"{where}: mask op Any({src!r:.40}) does not reduce a Masking layer's NotEqual.")
    for where, ref in mask_refs:
        if ref is None or ref not in ops:
            refuse(f"{where}: the mask argument refers to {ref!r:.80}, which is not a mask op of the model.")
