"""The safe loader's vocabulary: JSON parsing with caps, the scan that refuses foreign objects anywhere in a
config, and the field validators that registry entries (``_registry``) use to state each layer's schema.

Nothing named in a config is imported, resolved or called: class names select one of our own builders,
activation names select one of our own functions, and everything else is refused with ``UnsafeFileError``:
Lambda layers, classes outside the allow-list, any ``module`` that is not Keras' own, any
``registered_name`` of a custom object, any function-valued field, and values of the wrong type.
"""

from __future__ import annotations

import json
import math

from jaxmask.functional.rnn import ACTIVATIONS
from jaxmask.keras_io._limits import Limits, human_bytes, refuse

# Modules Keras itself writes into configs. Only their *names* are compared here; nothing is imported.
KERAS_MODULES = frozenset({
    "keras", "keras.layers", "keras.models", "keras.initializers", "keras.regularizers", "keras.constraints",
    "keras.optimizers", "keras.optimizers.schedules", "keras.losses", "keras.metrics", "keras.activations",
    "keras.src.models.functional", "keras.src.models.sequential", "keras.src.models.model", "keras.src.ops.numpy",
    "keras.src.ops.core",
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
ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}
ACTIVATION_NAMES = frozenset({
    "linear", "tanh", "sigmoid", "hard_sigmoid", "relu", "relu6", "elu", "selu", "softplus", "softsign", "silu",
    "swish", "gelu", "exponential", "softmax", "log_softmax", "hard_silu", "hard_swish", "mish",
}) & (frozenset(ACTIVATIONS) | frozenset(ALIASES))
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
MODEL_CLASSES = {"Sequential", "Functional", "Model"}
WHY_REFUSED = {
    "Lambda": "Lambda layers carry Python bytecode that Keras executes on load (CVE-2024-3660 class)",
    "TFOpLambda": "TFOpLambda layers call arbitrary TensorFlow functions by name",
    "StringLookup": "StringLookup may name a vocabulary file to read (CVE-2025-12058 class)",
    "__lambda__": "a serialised Python lambda is bytecode",
}
NUMBER = (int, float)
MAX_UNITS = 2**24


def member(value, names) -> bool:
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
        if cls in WHY_REFUSED:
            refuse(f"{where}: class {cls!r} is refused: {WHY_REFUSED[cls]}.")
        if cls == "function":
            name = v.get("config")
            if module not in ("builtins", "keras.losses", "keras.metrics", "keras.activations") or reg not in (
                None, "function") or not member(name, KERAS_FUNCTIONS | ACTIVATION_NAMES):
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


def boolean(v, where):
    if not isinstance(v, bool):
        refuse(f"{where} must be true or false; received {v!r}.")
    return v


def integer(lo, hi=2**24):
    def check(v, where):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            refuse(f"{where} must be an integer in [{lo}, {hi}]; received {v!r}.")
        return v
    return check


def rate(v, where):
    if isinstance(v, bool) or not isinstance(v, NUMBER) or not 0.0 <= v < 1.0:
        refuse(f"{where} must be a number in [0, 1); received {v!r}.")
    return float(v)


def number(v, where):
    if isinstance(v, bool) or not isinstance(v, NUMBER):
        refuse(f"{where} must be a number; received {v!r}.")
    return float(v)


def string(v, where):
    if not isinstance(v, str) or len(v) > 256:
        refuse(f"{where} must be a string of at most 256 characters; received {v!r:.80}.")
    return v


def one_of(*allowed):
    def check(v, where):
        if not any(v is a or (type(v) is type(a) and v == a) for a in allowed):
            refuse(f"{where} must be one of {list(allowed)} to be loaded by jaxmask; received {v!r:.80}.")
        return v
    return check


def scalar(v, where):
    """Fields that do not change inference (seed, unroll, implementation, input_length): scalars only."""
    if isinstance(v, (dict, list)):
        refuse(f"{where} must be a plain value; received a {type(v).__name__}.")
    return v


def dtype_policy(v, where):
    """Compute dtype: "float32" as a string or as a DTypePolicy object. Other policies change the numbers."""
    if v is None or v == "float32":
        return v
    if isinstance(v, dict) and v.get("class_name") in ("DTypePolicy", "FloatDTypePolicy", "Policy"):
        cfg = v.get("config")
        if isinstance(cfg, dict) and cfg.get("name") == "float32" and v.get("module") in (None, "keras"):
            return v
    refuse(f"{where} must be float32 (jaxmask computes in float32); received {v!r:.120}.")


def keras_object(kind):
    module, classes = _OBJECT_KINDS[kind]

    def check(v, where):
        if v is None:
            return v
        if isinstance(v, str):
            if len(v) > 64 or not v.replace("_", "").isalnum():
                refuse(f"{where} must name a Keras {kind}; received {v!r:.80}.")
            return v
        if not isinstance(v, dict) or not member(v.get("class_name"), classes) or v.get("module") not in (None, module):
            refuse(f"{where} must be a built-in Keras {kind} ({sorted(classes)}); received {v!r:.120}.")
        extra = set(v) - {"module", "class_name", "config", "registered_name", "shared_object_id"}
        cfg = v.get("config", {})
        if extra or not isinstance(cfg, dict) or any(isinstance(x, (dict, list)) and x for x in cfg.values()):
            refuse(f"{where}: a Keras {kind} holds plain numbers and strings only; received {v!r:.120}.")
        return v

    return check


def activation(v, where):
    """A Keras activation named by string (or Keras' ``{"class_name": "function", ...}`` form of one); returns the
    Keras name (``Context.activation`` maps it to jaxmask's, which depends on the Keras version)."""
    if v is None:
        return "linear"
    if isinstance(v, dict):
        if v.get("class_name") == "function" and v.get("module") == "keras.activations":
            v = v.get("config")
        else:
            refuse(f"{where} is a function-valued field ({v!r:.120}); activations must be named by string.")
    if not member(v, ACTIVATION_NAMES):
        refuse(f"{where}: activation {v!r:.80} is not one of {sorted(ACTIVATION_NAMES)}.")
    return ALIASES.get(v, v)


def shape(value, where: str):
    """A shape without the batch axis from ``[null, T, F]`` (or Keras' ``__tuple__`` wrapper)."""
    if isinstance(value, dict) and value.get("class_name") == "__tuple__":
        value = value["config"].get("value") if isinstance(value.get("config"), dict) else None
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 8:
        refuse(f"{where} must be a list [batch, ...] of at most 8 dimensions; received {value!r:.80}.")
    for d in value:
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or not 0 < d <= 2**31):
            refuse(f"{where}: dimension {d!r:.40} must be a positive integer or null.")
    return tuple(value)


def batch_shape(v, where):
    return shape(v, where)


def input_dtype(v, where):
    names = {f"{k}{n}" for k, ns in (("float", (16, 32, 64)), ("int", (8, 16, 32, 64)), ("uint", (8, 16, 32, 64)))
             for n in ns}
    if v is not None and not member(v, names | {"bool", "bfloat16"}):
        refuse(f"{where} must name a numeric dtype; received {v!r:.80}.")
    return v


COMMON = {"name": string, "trainable": boolean, "dtype": dtype_policy, "batch_input_shape": batch_shape,
           "batch_shape": batch_shape}
INITIALIZER, REGULARIZER, CONSTRAINT = keras_object("initializer"), keras_object("regularizer"), keras_object("constraint")
NONE = one_of(None)
UNITS = integer(1, MAX_UNITS)


def int_tuple(lo, hi, length=1):
    """An int or a list of ``length`` ints in [lo, hi] (Keras writes ``kernel_size`` as ``[3]``); returns a tuple."""
    check = integer(lo, hi)

    def tuple_check(v, where):
        if isinstance(v, dict) and v.get("class_name") == "__tuple__":
            v = v["config"].get("value") if isinstance(v.get("config"), dict) else None
        items = v if isinstance(v, list) else [v]
        if len(items) != length:
            refuse(f"{where} must be {length} integer(s); received {v!r:.80}.")
        return tuple(check(x, where) for x in items)

    return tuple_check
