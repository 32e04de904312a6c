"""The seed question, end to end: "Does Keras ignore the labels of masked values?"

A model that has to remember: variable-length multivariate sequences whose label at each step is
whether the running sum of feature 0 is positive so far. The sequences are scaled, padded and trained
with the seed's architecture

    Masking(0.0) -> LSTM(100, return_sequences=True) -> Dropout(0.5) -> Dense(1, sigmoid)

and the three pains of the seed thread are shown and removed:

1. which labels count: the loss and the accuracy use valid steps only (the model's mask, as Keras);
2. scaling breaks zero padding: a plain StandardScaler turns the padding into non-zero steps, so
   Masking(0.0) no longer finds it; jm.MaskedStandardScaler scales valid steps only;
3. predictions at padded steps are not zero: Keras repeats the last valid output there;
   ``predict(ragged=True)`` returns only the valid steps, ``padded_value=`` picks a fill value.

Then the same run in Keras 3 (when installed) for comparison.

Run:  python examples/seed_model.py [--epochs 10] [--n 2000] [--no-keras] [--bucket]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import optax  # noqa: E402
from flax import nnx  # noqa: E402

import jaxmask as jm  # noqa: E402

FEATURES = 4


def make_data(n: int, t_max: int, seed: int):
    """Ragged sequences [L_i, 4] and per-step labels [L_i, 1]: label_t = (x_0 + ... + x_t)[feature 0] > 0.

    Feature 1 is on another scale (mean 20, std 5) so that scaling matters; features 2, 3 are noise.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(2, t_max // 6), t_max + 1, n)
    seqs, labels = [], []
    for length in lengths:
        x = rng.normal(size=(length, FEATURES)).astype(np.float32)
        x[:, 1] = 20.0 + 5.0 * x[:, 1]
        x[:, 0] += 0.3 * x[:, 2]  # a distractor correlated with the signal
        seqs.append(x)
        labels.append((np.cumsum(x[:, 0]) > 0).astype(np.float32)[:, None])
    return seqs, labels


def build_model(units: int, dropout: float, seed: int):
    rngs = nnx.Rngs(seed)
    return jm.nn.Sequential(
        [
            jm.nn.Masking(mask_value=0.0),
            jm.nn.LSTM(FEATURES, units, return_sequences=True, rngs=rngs),
            jm.nn.Dropout(dropout, rngs=rngs),
            jm.nn.Dense(units, 1, activation="sigmoid", rngs=rngs),
        ]
    )


def prepare(seqs, labels, t_max, scaler=None):
    """Pad (post), build the mask from the lengths, scale valid steps only."""
    x = jm.pad_sequences(seqs, maxlen=t_max, dtype="float32", padding="post")
    y = jm.pad_sequences(labels, maxlen=t_max, dtype="float32", padding="post")
    mask = np.asarray(jm.lengths_to_mask([len(s) for s in seqs], t_max))
    if scaler is None:
        scaler = jm.MaskedStandardScaler().fit(x, mask)
    return np.asarray(scaler.transform(x, mask), np.float32), y, mask, scaler


def majority_baseline(y, mask) -> float:
    p = float(y[..., 0][mask].mean())
    return max(p, 1.0 - p)


def masked_accuracy(p, y, mask) -> float:
    return float(((p[..., 0] > 0.5) == (y[..., 0] > 0.5))[mask].mean())


def run_keras(model, x, y, mask, x_test, y_test, mask_test, args):
    """The same architecture, initial weights, data and schedule in Keras 3; returns (seconds, test accuracy)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    t_max = x.shape[1]
    k_model = keras.Sequential(
        [
            keras.Input((t_max, FEATURES)),
            keras.layers.Masking(mask_value=0.0),
            keras.layers.LSTM(args.units, return_sequences=True),
            keras.layers.Dropout(args.dropout),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    lstm, dense = model.layers[1], model.layers[3]
    k_model.layers[1].set_weights([np.asarray(lstm.params()[k]) for k in ("kernel", "recurrent_kernel", "bias")])
    k_model.layers[3].set_weights([np.asarray(dense.kernel[...]), np.asarray(dense.bias[...])])
    k_model.compile(optimizer=keras.optimizers.Adam(args.lr), loss="binary_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = k_model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, validation_split=0.2, verbose=0)
    seconds = time.perf_counter() - start
    p = k_model.predict(x_test, verbose=0)
    return seconds, masked_accuracy(p, y_test, mask_test), history.history["val_accuracy"][-1], p


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="training sequences (20%% of them validate)")
    parser.add_argument("--t-max", type=int, default=60)
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bucket", action="store_true", help="bucket_by_length=True")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras comparison")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    say = (lambda *a: None) if args.quiet else print

    seqs, labels = make_data(args.n + args.n // 4, args.t_max, args.seed)
    x, y, mask, scaler = prepare(seqs[: args.n], labels[: args.n], args.t_max)
    x_test, y_test, mask_test, _ = prepare(seqs[args.n :], labels[args.n :], args.t_max, scaler)

    raw = jm.pad_sequences(seqs[: args.n], maxlen=args.t_max, dtype="float32", padding="post")
    flat = raw.reshape(-1, FEATURES)
    plain = ((flat - flat.mean(0)) / flat.std(0)).reshape(raw.shape)  # sklearn StandardScaler on padded data
    say(f"Padded steps: {int((~mask).sum())} of {mask.size}. Masking(0.0) finds "
        f"{int((~np.asarray(jm.compute_mask(plain))).sum())} of them after a plain StandardScaler, "
        f"{int((~np.asarray(jm.compute_mask(x))).sum())} after jm.MaskedStandardScaler.")

    model = build_model(args.units, args.dropout, args.seed)
    trainer = jm.Trainer(model, optax.adam(args.lr), "binary_crossentropy", metrics=["accuracy"], seed=args.seed)
    val = slice(args.n - int(args.n * 0.2), args.n)  # validation_split takes the last 20%
    baseline_val = majority_baseline(y[val], mask[val])
    keras_init = None if args.no_keras else build_model(args.units, args.dropout, args.seed)  # same initial weights

    start = time.perf_counter()
    history = trainer.fit(
        (x, mask), y, batch_size=args.batch_size, epochs=args.epochs, validation_split=0.2,
        bucket_by_length=args.bucket, verbose=0 if args.quiet else 2,
    )
    seconds = time.perf_counter() - start
    test = trainer.evaluate((x_test, mask_test), y_test, batch_size=256)
    val_acc = history.history["val_accuracy"][-1]
    say(f"\njaxmask: {seconds:.1f}s for {args.epochs} epochs (compilation included)")
    say(f"  validation masked accuracy {val_acc:.3f} vs majority baseline {baseline_val:.3f}")
    say(f"  test masked accuracy {test['accuracy']:.3f} (loss {test['loss']:.4f}) vs baseline "
        f"{majority_baseline(y_test, mask_test):.3f}")
    if args.bucket:
        say(f"  bucketing: lengths {history.bucketing['boundaries']}, "
            f"{100 * history.history['padding_saved'][-1]:.0f}% of the padded steps not computed")

    # A test sequence whose running sum changes sign and which ends positive, so Keras' carried value shows.
    lengths_test = mask_test.sum(1)
    flips = [i for i in range(len(lengths_test)) if lengths_test[i] < args.t_max and y_test[i, lengths_test[i] - 1, 0] == 1
             and 0 < y_test[i, : lengths_test[i], 0].mean() < 1]
    i = flips[0] if flips else 0
    length = int(lengths_test[i])
    ragged = trainer.predict((x_test[i : i + 3], mask_test[i : i + 3]), ragged=True)
    carried = trainer.predict((x_test[i : i + 3], mask_test[i : i + 3]), padded_value=None)[0, :, 0]
    filled = trainer.predict((x_test[i : i + 3], mask_test[i : i + 3]))[0, :, 0]
    cum = np.cumsum(seqs[args.n + i][:, 0])
    change = int(np.argmax(np.diff(y_test[i, :length, 0]) != 0)) if flips else 0
    say(f"\nWhat it learned (test sequence {i}, {length} steps): is the running sum of feature 0 positive?")
    for t in range(max(0, change - 4), min(length, change + 6)):
        say(f"  t={t:2d}  running sum {cum[t]:+6.2f}  label {int(y_test[i, t, 0])}  p={ragged[0][t, 0]:.3f}")
    say(f"predict(ragged=True) lengths {[len(r) for r in ragged]} = sequence lengths "
        f"{[int(n) for n in lengths_test[i : i + 3]]}")
    say(f"At the padded steps after t={length - 1}: Keras' own output (padded_value=None) is {carried[length]:.4f} "
        f"(the last valid output {carried[length - 1]:.4f}, carried), predict() returns {filled[length]:.1f}.")

    result = {"val_accuracy": val_acc, "baseline": baseline_val, "test_accuracy": test["accuracy"], "seconds": seconds}
    if keras_init is not None:
        try:
            k_seconds, k_test, k_val, k_pred = run_keras(keras_init, x, y, mask, x_test, y_test, mask_test, args)
        except ImportError:
            say("\nKeras is not installed: comparison skipped.")
        else:
            say(f"\nKeras 3 ({os.environ.get('KERAS_BACKEND')} backend), same initial weights and data: {k_seconds:.1f}s, "
                f"validation masked accuracy {k_val:.3f}, test masked accuracy {k_test:.3f}")
            say(f"Keras at the padded steps of test sequence {i}: {np.round(k_pred[i, length:length + 3, 0], 4)} "
                "(carried, not 0)")
            result.update(keras_test_accuracy=k_test, keras_seconds=k_seconds)
    return result


if __name__ == "__main__":
    main()
