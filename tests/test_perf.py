"""``jm.perf``: process settings that change speed, never numbers."""

import subprocess
import sys

import numpy as np

import jaxmask as jm

PROGRAM = """
import sys, jax, jax.numpy as jnp, jaxmask as jm
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None)
print(jm.perf.enable_compilation_cache(sys.argv[1]))
y = jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.arange(12.0).reshape(3, 4))
print(len(hits), float(y.sum()))
"""


def test_compilation_cache_serves_a_fresh_process_the_same_program(tmp_path):
    """The first process compiles and stores; a second fresh process loads it (a cache hit) and computes the
    same numbers. The directory is the one asked for."""
    runs = [subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path / "xla")], capture_output=True, text=True,
                           timeout=300)
            for _ in range(2)]
    outs = [r.stdout.split() for r in runs]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    assert outs[0][0] == outs[1][0] == str(tmp_path / "xla")
    assert int(outs[0][1]) == 0 and int(outs[1][1]) >= 1  # the jitted function and the small ops before it
    assert outs[0][2] == outs[1][2]
    assert any((tmp_path / "xla").iterdir())


def test_cpu_allocator_setting_is_idempotent_and_changes_no_number():
    import jax.numpy as jnp

    x = jnp.arange(6.0).reshape(2, 3)
    before = np.asarray(x @ x.T)
    first = jm.perf.configure_cpu_allocator()
    assert jm.perf.configure_cpu_allocator() == first
    np.testing.assert_array_equal(np.asarray(x @ x.T), before)
