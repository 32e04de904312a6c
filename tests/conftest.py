"""Strict JAX for the whole suite: implicit rank promotion is an error (a [B, T] mask silently broadcast
against [B, T, H] fails loudly). Float64 is enabled per test with ``jax.enable_x64(True)`` where needed.

Hypothesis profiles: "ci" (the default: derandomized, few examples, no example database) and "slow"
(``HYPOTHESIS_PROFILE=slow``: 10,000 examples per property, random; see tests/PROPERTIES.md). Tests that
pin ``max_examples`` in their own ``@settings`` keep it under both profiles."""

import os

import jax
from hypothesis import HealthCheck, settings

jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile("ci", max_examples=12, derandomize=True, deadline=None, database=None, print_blob=True)
settings.register_profile(
    "slow",
    max_examples=10_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    """One XLA compilation cache for the run, shared by the xdist workers (started after this hook, they inherit
    the environment): the many tests that compile the same small models compile each program once. A fresh
    directory per run, so a run costs what it costs on a clean machine; ``JAXMASK_TEST_XLA_CACHE`` picks one
    (``off``: no cache)."""
    if os.environ.get("JAXMASK_TEST_XLA_CACHE") == "off":
        return
    if not os.environ.get("JAXMASK_TEST_XLA_CACHE"):
        import tempfile

        os.environ["JAXMASK_TEST_XLA_CACHE"] = config._jaxmask_xla_cache = tempfile.mkdtemp(prefix="jaxmask-xla-cache-")
    import jaxmask as jm

    jm.perf.enable_compilation_cache(os.environ["JAXMASK_TEST_XLA_CACHE"])


def pytest_unconfigure(config):
    """Remove the run's cache directory (in the process that made it, after the workers are done)."""
    made = getattr(config, "_jaxmask_xla_cache", None)
    if made:
        import shutil

        shutil.rmtree(made, ignore_errors=True)
