"""A small version of examples/seed_model.py learns the history-dependent labels (beats the majority class)."""

import importlib.util
import os

import pytest

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "seed_model.py")


def load_example():
    spec = importlib.util.spec_from_file_location("seed_model_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_seed_example_beats_majority_baseline():
    example = load_example()
    args = ["--n", "400", "--t-max", "16", "--units", "16", "--epochs", "6", "--lr", "1e-2", "--no-keras", "--quiet"]
    result = example.main(args)
    assert result["val_accuracy"] > result["baseline"] + 0.15, result
    assert result["test_accuracy"] > 0.75, result


@pytest.mark.slow
def test_full_seed_example_with_bucketing():
    result = load_example().main(["--no-keras", "--quiet", "--bucket"])
    assert result["val_accuracy"] > result["baseline"] + 0.3, result
