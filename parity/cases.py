"""The parity catalogue: layer types x mask patterns x options x losses x weights x reductions x semantics,
plus short training trajectories.

A :class:`Case` is pure data (hashable, no Keras objects): an architecture written as layer specs, a mask
pattern, a loss description and what else to compare. :mod:`parity.runner` builds the Keras model for
each reference from it, gives every weight a deterministic random value, and checks jaxmask against it.

Shapes are small on purpose (B=4, T=6, F=3, H=4) so that the whole catalogue runs in minutes on two CPU
cores; cases with the same architecture and loss share one jaxmask compilation.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from parity._keras import REFERENCES
from parity._losses import SEMANTICS_REFERENCES

B, T, F, H, C, VOCAB = 4, 6, 3, 4, 3, 7

PATTERNS = {
    # row by row; 1 = valid step
    "post": [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]],
    "pre": [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1], [0, 1, 1, 1, 1, 1]],
    "holes": [[1, 0, 1, 1, 0, 1], [1, 1, 0, 0, 1, 1], [0, 1, 1, 1, 1, 0], [1, 1, 1, 0, 1, 1]],
    "full_row": [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]],
    "mixed": [[0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1]],
    "all_masked": [[0] * 6] * 4,
    "none": [[1] * 6] * 4,
    # B == T == 5: a [B] weight vector can silently broadcast along time
    "square": [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 0, 1], [0, 0, 0, 0, 0]],
    # T == 1
    "single_step": [[1], [0], [1], [0]],
    # T == 40: rounding accumulates over many steps; post, pre, holes and a short row
    "long": [[1] * 40, [1] * 31 + [0] * 9, [0] * 12 + [1] * 28, [1, 1, 0] * 13 + [1]],
}
"""Mask patterns: post-/pre-padding, holes mid-sequence, a fully masked row, all four mixed in one batch,
a fully masked batch, no mask (the model has no masking layer), B == T, a single step, 40 steps."""


def L(kind: str, **kwargs) -> tuple:
    """A layer spec: ``(kind, sorted kwargs)``; hashable."""
    return (kind, tuple(sorted(kwargs.items())))


@dataclasses.dataclass(frozen=True)
class Case:
    """One parity case. ``kind="model"``: ``arch`` is a stack of layer specs (a Masking layer is added in
    front unless the pattern is ``"none"`` or the stack starts with an Embedding). ``kind="layer"``: ``arch``
    holds one recurrent (or Bidirectional) spec called directly with ``mask=`` (and ``initial_state=``).
    ``kind="graph"``: ``arch`` names a builder of :mod:`parity.graph_cases` and ``pattern`` its padding."""

    name: str
    arch: tuple
    pattern: str = "mixed"
    loss: str | None = None  # None: probe loss Σ mean(output²)
    loss_kwargs: tuple = ()
    reduction: str = "sum_over_batch_size"
    semantics: str | None = None  # None: the reference's own ("keras3" / "tf_keras")
    weights: str | None = None  # None | "per_sample" ([B]) | "temporal" ([B, T])
    steps: int = 0
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    kind: str = "model"
    initial_state: bool = False
    functional: bool = False
    mask_value: float = 0.0  # what the Masking layer looks for (written into the padded steps)
    only: tuple = REFERENCES  # references the case applies to
    tags: tuple = ()

    @property
    def references(self) -> tuple:
        refs = self.only
        if self.semantics is not None:
            refs = tuple(r for r in refs if r in SEMANTICS_REFERENCES[self.semantics])
        if self.reduction == "mean_with_sample_weight":
            refs = tuple(r for r in refs if r != "tf_keras")
        return refs

    def semantics_for(self, reference: str) -> str:
        if self.semantics is not None:
            return self.semantics
        return "tf_keras" if reference == "tf_keras" else "keras3"

    @property
    def seed(self) -> int:
        return zlib.crc32(repr((self.arch, self.pattern)).encode())

    @property
    def mask(self) -> np.ndarray:
        return np.asarray(PATTERNS[self.pattern], bool)

    @property
    def uses_embedding(self) -> bool:
        return self.kind == "model" and self.arch[0][0] == "embedding"

    @property
    def full_arch(self) -> tuple:
        """The model's layers, with the Masking layer the pattern calls for."""
        if self.kind == "layer" or self.uses_embedding or self.pattern == "none":
            return self.arch
        return (L("masking", mask_value=self.mask_value),) + self.arch


# ---------------------------------------------------------------------------------------------- data


def make_data(case: Case) -> dict:
    """Deterministic inputs, targets, weights (and initial states) for ``case``."""
    rng = np.random.default_rng(case.seed)
    mask = case.mask
    b, t = mask.shape
    if case.uses_embedding:
        x = np.where(mask, rng.integers(1, VOCAB, (b, t)), 0).astype(np.int32)
    else:
        x = rng.normal(size=(b, t, F)).astype(np.float32)
        x = np.where(mask[:, :, None], x, case.mask_value).astype(np.float32)
    data = {"x": x, "mask": mask}
    if case.kind == "layer":
        if case.initial_state:
            n = _state_count(case.arch[0])
            data["initial_state"] = [rng.normal(0, 0.7, (b, H)).astype(np.float32) for _ in range(n)]
        return data
    if case.loss is not None:
        data["y"] = make_targets(case.loss, dict(case.loss_kwargs), output_shape(case.full_arch, b, t), rng)
    if case.weights == "per_sample":
        data["sample_weight"] = np.array([1.0, 2.0, 0.5, 0.0, 1.5][:b], np.float32)
    elif case.weights == "temporal":
        w = rng.uniform(0.0, 2.0, (b, t)).astype(np.float32)
        w[0, 1] = w[2, 3] = 0.0
        data["sample_weight"] = w
    return data


def _state_count(spec) -> int:
    kind, kw = spec[0], dict(spec[1])
    if kind == "bidirectional":
        return 2 * _state_count(kw["layer"])
    return 2 if kind == "lstm" else 1


def output_shape(arch, b, t) -> tuple:
    seq, width = True, F
    for kind, kw in arch:
        kw = dict(kw)
        if kind == "embedding":
            width = kw.get("output_dim", F)
        elif kind in ("lstm", "gru", "simple_rnn"):
            seq, width = kw.get("return_sequences", False), kw.get("units", H)
        elif kind == "bidirectional":
            inner = dict(kw["layer"][1])
            seq, width = inner.get("return_sequences", False), inner.get("units", H)
            width *= 2 if kw.get("merge_mode", "concat") == "concat" else 1
        elif kind in ("dense", "time_distributed"):
            width = kw["units"]
        elif kind == "gap":
            seq = False
    return (b, t, width) if seq else (b, width)


def make_targets(loss: str, kwargs: dict, shape: tuple, rng) -> np.ndarray:
    if loss in ("binary_crossentropy", "binary_focal_crossentropy"):
        return (rng.random(shape) > 0.5).astype(np.float32)
    if loss in ("categorical_crossentropy", "kl_divergence", "categorical_hinge"):
        if loss == "kl_divergence":
            return rng.dirichlet(np.ones(shape[-1]), shape[:-1]).astype(np.float32)
        return np.eye(shape[-1], dtype=np.float32)[rng.integers(0, shape[-1], shape[:-1])]
    if loss == "sparse_categorical_crossentropy":
        return rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)
    if loss in ("hinge", "squared_hinge"):
        return rng.choice([-1.0, 1.0], shape).astype(np.float32)
    if loss in ("poisson", "mean_squared_logarithmic_error", "mean_absolute_percentage_error"):
        return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    return rng.normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------- heads


def head(loss: str | None, loss_kwargs: dict | None = None) -> tuple:
    """The output layer that suits ``loss``."""
    kw = loss_kwargs or {}
    if loss in ("binary_crossentropy", "binary_focal_crossentropy"):
        spec = L("dense", units=1, activation="linear" if kw.get("from_logits") else "sigmoid")
    elif loss in ("categorical_crossentropy", "sparse_categorical_crossentropy", "kl_divergence"):
        spec = L("dense", units=C, activation="linear" if kw.get("from_logits") else "softmax")
    elif loss == "categorical_hinge":
        spec = L("dense", units=C, activation="linear")
    elif loss in ("poisson", "mean_squared_logarithmic_error"):
        spec = L("dense", units=1, activation="softplus")
    elif loss in ("hinge", "squared_hinge"):
        spec = L("dense", units=1, activation="tanh")
    else:
        spec = L("dense", units=1)
    return spec


def rnn(kind="lstm", **kw) -> tuple:
    kw.setdefault("units", H)
    kw.setdefault("return_sequences", True)
    return L(kind, **kw)


# ---------------------------------------------------------------------------------------------- catalogue

RNNS = {
    "lstm": rnn("lstm"),
    "gru": rnn("gru"),
    "gru_v1": rnn("gru", reset_after=False),
    "simple": rnn("simple_rnn"),
}


def _catalogue() -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    mse_head = head("mse")

    # 1. every recurrent layer x every mask pattern (per-step regression head, mse)
    for rname, spec in RNNS.items():
        for pattern in ("post", "pre", "holes", "full_row", "mixed", "none"):
            tags = ("quick",) if pattern == "mixed" else ()
            tags += ("plot",) if (rname, pattern) in (("lstm", "mixed"), ("gru", "holes")) else ()
            add(Case(f"{rname}/{pattern}/mse", (spec, mse_head), pattern, "mse", tags=tags))
        add(Case(f"{rname}/square/mse", (spec, mse_head), "square", "mse"))
        add(Case(f"{rname}/single_step/mse", (spec, mse_head), "single_step", "mse"))
        add(Case(f"{rname}/long/mse", (spec, mse_head), "long", "mse"))
        add(Case(f"{rname}/embedding_mask_zero/mse",
                 (L("embedding", input_dim=VOCAB, output_dim=F, mask_zero=True), spec, mse_head), "mixed", "mse",
                 tags=("quick",) if rname == "gru" else ()))

    # 2. recurrent options (mixed pattern: post, pre, holes and a fully masked row in one batch)
    for rname in ("lstm", "gru", "simple"):
        kind = dict(lstm="lstm", gru="gru", simple="simple_rnn")[rname]
        add(Case(f"{rname}/go_backwards", (rnn(kind, go_backwards=True), mse_head), "mixed", "mse",
                 tags=("quick",) if rname == "lstm" else ()))
        add(Case(f"{rname}/zero_output_for_mask", (rnn(kind, zero_output_for_mask=True), mse_head), "mixed", "mse"))
        add(Case(f"{rname}/go_backwards+zero_output", (rnn(kind, go_backwards=True, zero_output_for_mask=True),
                                                      mse_head), "mixed", "mse"))
        add(Case(f"{rname}/last_output", (rnn(kind, return_sequences=False), mse_head), "mixed", "mse"))
        add(Case(f"{rname}/last_output+zero_output/post", (rnn(kind, return_sequences=False,
                                                                zero_output_for_mask=True), mse_head), "post", "mse"))
        add(Case(f"{rname}/stacked", (rnn(kind), rnn(kind, units=3), mse_head), "mixed", "mse"))
        add(Case(f"{rname}/no_bias", (rnn(kind, use_bias=False), mse_head), "holes", "mse"))
    add(Case("lstm/mask_value=-1", (rnn("lstm"), mse_head), "mixed", "mse", mask_value=-1.0))
    add(Case("gru/mask_value=0.5/go_backwards", (rnn("gru", go_backwards=True), mse_head), "holes", "mse",
             mask_value=0.5))
    add(Case("lstm/relu+hard_sigmoid", (rnn("lstm", activation="relu", recurrent_activation="hard_sigmoid"),
                                        mse_head), "mixed", "mse"))
    add(Case("gru/hard_sigmoid", (rnn("gru", recurrent_activation="hard_sigmoid"), mse_head), "mixed", "mse"))
    add(Case("gru_v1/go_backwards", (rnn("gru", reset_after=False, go_backwards=True), mse_head), "mixed", "mse"))
    add(Case("lstm/stacked_backwards", (rnn("lstm", go_backwards=True), rnn("gru", go_backwards=True), mse_head),
             "mixed", "mse"))
    add(Case("lstm/dropout_off_in_eval", (rnn("lstm", dropout=0.3, recurrent_dropout=0.3), L("dropout", rate=0.5),
                                          mse_head), "mixed", "mse"))
    add(Case("lstm/time_distributed", (rnn("lstm"), L("time_distributed", units=2, activation="tanh")), "mixed",
             "mse", tags=("quick",)))
    add(Case("lstm/activation_layer", (rnn("lstm"), L("dense", units=2), L("activation", activation="tanh")),
             "mixed", "mse"))
    add(Case("lstm/dense_stack", (rnn("lstm"), L("dense", units=5, activation="relu"), mse_head), "holes", "mse"))
    add(Case("lstm/functional", (rnn("lstm"), mse_head), "mixed", "mse", functional=True, tags=("quick",)))
    add(Case("gru/functional_stacked", (rnn("gru"), rnn("lstm"), mse_head), "pre", "mse", functional=True))

    # 3. Bidirectional: merge modes x sequences / last output, each RNN type
    for merge in ("concat", "sum", "mul", "ave"):
        add(Case(f"bidirectional_lstm/{merge}", (L("bidirectional", layer=rnn("lstm"), merge_mode=merge), mse_head),
                 "mixed", "mse", tags=("quick",) if merge == "concat" else ()))
        add(Case(f"bidirectional_gru/{merge}/last_output",
                 (L("bidirectional", layer=rnn("gru", return_sequences=False), merge_mode=merge), mse_head), "mixed",
                 "mse"))
    add(Case("bidirectional_simple/concat", (L("bidirectional", layer=rnn("simple_rnn")), mse_head), "holes", "mse"))
    add(Case("bidirectional_gru_v1/concat", (L("bidirectional", layer=rnn("gru", reset_after=False)), mse_head),
             "pre", "mse"))
    add(Case("bidirectional_lstm/stacked", (L("bidirectional", layer=rnn("lstm")), L("bidirectional",
                                            layer=rnn("gru", return_sequences=False), merge_mode="sum"), mse_head),
             "mixed", "mse"))

    # 4. layers called directly: return_state and initial_state
    for rname, kind in (("lstm", "lstm"), ("gru", "gru"), ("simple", "simple_rnn")):
        add(Case(f"{rname}/return_state", (rnn(kind, return_state=True),), "mixed", kind="layer",
                 tags=("quick",) if rname == "lstm" else ()))
        add(Case(f"{rname}/return_state/last_output", (rnn(kind, return_sequences=False, return_state=True),),
                 "mixed", kind="layer"))
        add(Case(f"{rname}/initial_state/pre", (rnn(kind, return_state=True),), "pre", kind="layer",
                 initial_state=True, tags=("quick",) if rname == "lstm" else ()))
        add(Case(f"{rname}/initial_state/go_backwards", (rnn(kind, return_state=True, go_backwards=True),),
                 "mixed", kind="layer", initial_state=True))
        add(Case(f"{rname}/initial_state/zero_output", (rnn(kind, zero_output_for_mask=True),), "pre",
                 kind="layer", initial_state=True))
    add(Case("bidirectional_lstm/return_state", (L("bidirectional", layer=rnn("lstm", return_state=True)),),
             "mixed", kind="layer"))
    add(Case("bidirectional_gru/initial_state", (L("bidirectional", layer=rnn("gru", return_state=True),
                                                   merge_mode="ave"),), "pre", kind="layer", initial_state=True))
    add(Case("bidirectional_lstm/merge_none", (L("bidirectional", layer=rnn("lstm"), merge_mode=None),), "mixed",
             kind="layer"))

    # 5. losses (keras3 / tf_keras semantics) on the seed model: Masking -> LSTM -> Dense head
    lstm = rnn("lstm")
    losses = [
        ("mse", {}), ("mae", {}), ("huber", {}), ("log_cosh", {}), ("mean_squared_logarithmic_error", {}),
        ("mean_absolute_percentage_error", {}), ("binary_crossentropy", {}),
        ("binary_crossentropy", {"from_logits": True}), ("binary_crossentropy", {"label_smoothing": 0.1}),
        ("binary_focal_crossentropy", {}), ("categorical_crossentropy", {}),
        ("categorical_crossentropy", {"from_logits": True}), ("sparse_categorical_crossentropy", {}),
        ("kl_divergence", {}), ("poisson", {}), ("hinge", {}), ("squared_hinge", {}), ("categorical_hinge", {}),
        ("cosine_similarity", {}),
    ]
    for loss, kw in losses:
        suffix = "".join(f"+{k}" for k in kw)
        add(Case(f"loss/{loss}{suffix}", (lstm, head(loss, kw)), "mixed", loss, tuple(kw.items()),
                 tags=("quick",) if (loss, kw) == ("binary_crossentropy", {}) else ()))
    add(Case("loss/sparse_categorical/last_output", (rnn("lstm", return_sequences=False),
                                                     head("sparse_categorical_crossentropy")), "mixed",
             "sparse_categorical_crossentropy"))
    add(Case("loss/binary_crossentropy/gap", (lstm, L("gap"), head("binary_crossentropy")), "holes",
             "binary_crossentropy"))
    add(Case("loss/mse/gap/full_row", (lstm, L("gap"), mse_head), "full_row", "mse", tags=("quick",)))
    add(Case("loss/time_distributed_sigmoid", (lstm, L("time_distributed", units=1, activation="sigmoid")), "mixed",
             "binary_crossentropy"))
    add(Case("loss/activation_softmax", (lstm, L("dense", units=C), L("activation", activation="softmax")),
             "mixed", "categorical_crossentropy"))

    # 6. sample weights x reductions (keras3 / tf_keras semantics)
    bce = head("binary_crossentropy")
    for weights in ("per_sample", "temporal"):
        for reduction in ("sum_over_batch_size", "sum", "mean_with_sample_weight", "none"):
            add(Case(f"weights/{weights}/{reduction}", (lstm, bce), "mixed", "binary_crossentropy",
                     reduction=reduction, weights=weights,
                     tags=("quick",) if (weights, reduction) == ("per_sample", "sum_over_batch_size") else ()))
    for reduction in ("sum", "mean_with_sample_weight", "none"):
        add(Case(f"reduction/{reduction}", (lstm, mse_head), "mixed", "mse", reduction=reduction))
    add(Case("weights/per_sample/square", (rnn("lstm"), mse_head), "square", "mse", weights="per_sample"))
    add(Case("weights/per_sample/last_output", (rnn("lstm", return_sequences=False), bce), "mixed",
             "binary_crossentropy", weights="per_sample"))
    add(Case("weights/temporal/embedding", (L("embedding", input_dim=VOCAB, output_dim=F, mask_zero=True), lstm,
                                            mse_head), "mixed", "mse", weights="temporal"))
    add(Case("loss/all_masked", (lstm, mse_head), "all_masked", "mse", tags=("quick",)))
    add(Case("loss/all_masked/bce_weights", (lstm, bce), "all_masked", "binary_crossentropy", weights="temporal"))

    # 7. the other loss semantics
    for semantics in ("tf_keras_pre212", "keras_legacy"):
        for weights in (None, "per_sample", "temporal"):
            wname = weights or "unweighted"
            add(Case(f"semantics/{semantics}/{wname}", (lstm, bce), "mixed", "binary_crossentropy",
                     semantics=semantics, weights=weights,
                     tags=("quick",) if (semantics, weights) == ("keras_legacy", "per_sample") else ()))
        add(Case(f"semantics/{semantics}/mse/post", (rnn("gru"), mse_head), "post", "mse", semantics=semantics))
        add(Case(f"semantics/{semantics}/all_masked", (lstm, mse_head), "all_masked", "mse", semantics=semantics))
    add(Case("semantics/tf_keras_pre212/sum", (lstm, bce), "mixed", "binary_crossentropy", reduction="sum",
             semantics="tf_keras_pre212", weights="temporal"))
    add(Case("semantics/keras_legacy/embedding", (L("embedding", input_dim=VOCAB, output_dim=F, mask_zero=True),
                                                  rnn("gru"), mse_head), "mixed", "mse", semantics="keras_legacy",
             weights="temporal"))

    # 8. training trajectories (20 steps, dropout off): Keras' SGD/Adam vs the same rule in optax
    seed_model = (rnn("lstm"), L("dropout", rate=0.5), bce)
    for optimizer, lr in (("sgd", 0.5), ("adam", 0.02)):
        add(Case(f"train/seed_model/{optimizer}", seed_model, "mixed", "binary_crossentropy", steps=20,
                 optimizer=optimizer, learning_rate=lr, tags=("trajectory",)))
        add(Case(f"train/bidirectional_gru/{optimizer}", (L("bidirectional", layer=rnn("gru")), mse_head), "holes",
                 "mse", steps=20, optimizer=optimizer, learning_rate=lr / 5, tags=("trajectory",)))
        add(Case(f"train/embedding_classifier/{optimizer}",
                 (L("embedding", input_dim=VOCAB, output_dim=F, mask_zero=True), rnn("gru", return_sequences=False),
                  head("sparse_categorical_crossentropy")), "mixed", "sparse_categorical_crossentropy", steps=20,
                 optimizer=optimizer, learning_rate=lr, tags=("trajectory",)))
    add(Case("train/seed_model/adam/temporal_weights", seed_model, "mixed", "binary_crossentropy", steps=20,
             optimizer="adam", learning_rate=0.02, weights="temporal", tags=("trajectory",)))
    add(Case("train/quick/sgd", (rnn("simple_rnn"), mse_head), "mixed", "mse", steps=5, optimizer="sgd",
             learning_rate=0.1, tags=("trajectory", "quick")))

    # 9. every Keras optimizer (jm.optimizers, parity.optim.OPTIMIZERS) on a 20-step trajectory
    for name, lr in (("sgd_momentum", 0.1), ("sgd_nesterov", 0.1), ("adamw", 0.02), ("rmsprop", 0.01),
                     ("rmsprop_centered", 0.01), ("adagrad", 0.2), ("adadelta", 1.0), ("adamax", 0.02),
                     ("nadam", 0.02), ("lion", 0.005), ("ftrl", 0.2)):
        add(Case(f"train/optimizer/{name}", (rnn("simple_rnn"), mse_head), "mixed", "mse", steps=20, optimizer=name,
                 learning_rate=lr, tags=("trajectory",)))

    # 10. functional graphs (parity/graph_cases): the eight keras.io-style models and each layer family's graphs,
    # under each padding they accept; probe loss, gradients and a 3-step Adam trajectory
    from parity.graph_cases import GRAPHS

    for name, (_, paddings, references) in sorted(GRAPHS.items()):
        for padding in paddings:
            add(Case(f"graph/{name}/{padding}", (name,), padding, kind="graph", steps=3, optimizer="adam",
                     learning_rate=0.01, only=tuple(references or REFERENCES), tags=("graph",)))
    return cases


CASES: tuple[Case, ...] = tuple(_catalogue())
"""Every case of the catalogue, by unique name."""

assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"


def select(pattern: str | None = None, *, quick: bool = False, reference: str | None = None) -> list[Case]:
    """Cases whose name contains ``pattern`` (``fnmatch`` syntax when it has ``*?[``), the quick subset, and/or
    those applicable to ``reference``."""
    import fnmatch

    out = []
    for case in CASES:
        if quick and "quick" not in case.tags:
            continue
        if reference is not None and reference not in case.references:
            continue
        if pattern:
            if any(ch in pattern for ch in "*?["):
                if not fnmatch.fnmatch(case.name, pattern):
                    continue
            elif pattern not in case.name:
                continue
        out.append(case)
    return out
