"""Load Keras files in a fresh process that cannot import TensorFlow or Keras, under ``sys.addaudithook``,
and report per file: the outcome, time, memory, and every audit event that a safe load must not cause.

Audit hooks cannot be removed, so tests/test_adversarial.py runs this as its own process::

    python -m tests.adversarial.probe MANIFEST_JSON RESULT_JSON

MANIFEST_JSON is ``{"files": [[path, "model" | "weights"], ...], "warmup": [[path, kind], ...]}``. Warm-up
files are loaded before the hook is installed (so the one-time lazy imports of jax/flax/h5py internals are
not counted); every other file is loaded with the hook active. Recorded events: opening any path other than
the file being loaded (or opening it for writing), and any import, exec, compile, subprocess, os.system,
exec/spawn/fork, ctypes, socket, urllib, marshal or pickle event.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import tracemalloc

for _name in ("tensorflow", "keras", "tf_keras"):
    sys.modules[_name] = None  # any attempt to import them now raises ImportError

import jaxmask as jm  # noqa: E402
from flax import nnx  # noqa: E402

_FORBIDDEN = ("import", "exec", "compile", "subprocess", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
              "os.fork", "os.forkpty", "os.startfile", "ctypes", "socket", "urllib", "marshal.load", "pickle",
              "shutil", "os.remove", "os.rename", "os.symlink", "os.link", "os.mkdir", "os.truncate", "os.chmod",
              "os.chown", "os.putenv", "os.unsetenv", "webbrowser", "http.client", "ftplib", "smtplib", "glob")
_state = {"file": None, "events": []}
# Under strace, these failed opens bracket each load in the system-call log (the test sets the variable).
_MARKER = os.environ.get("JAXMASK_PROBE_MARKER")


def _mark(label: str) -> None:
    if _MARKER:
        try:
            os.stat(f"{_MARKER}/{label}")
        except OSError:
            pass


def _hook(event, args):
    current = _state["file"]
    if current is None:
        return
    if event == "open":
        path, mode = args[0], args[1] if len(args) > 1 else None
        writing = isinstance(mode, str) and any(c in mode for c in "wax+")
        if isinstance(path, int):  # os.fdopen of a descriptor: fine if it is the file being loaded
            same = os.path.samestat(os.fstat(path), os.stat(current))
        else:
            same = os.fspath(path) == current
        if not same or writing:
            _state["events"].append(f"open({path!r}, {mode!r})")
    elif event.startswith(_FORBIDDEN):
        _state["events"].append(f"{event}{tuple(repr(a)[:120] for a in args)}")


def benign_model():
    """The jaxmask twin of tests/adversarial/make.py's benign model (target of load_weights)."""
    rngs = nnx.Rngs(0)
    return jm.nn.Sequential([jm.nn.Masking(0.0), jm.nn.LSTM(3, 2, rngs=rngs),
                             jm.nn.Dense(2, 1, activation="sigmoid", rngs=rngs)])


def _load(path, kind, model):
    if kind == "model":
        jm.keras_io.load_model(path)
    else:
        jm.keras_io.load_weights(model, path)


def main(manifest_path, result_path):
    with open(manifest_path) as f:
        manifest = json.load(f)
    for path, kind in manifest.get("warmup", []):
        _load(path, kind, benign_model())
    tracemalloc.start()
    sys.addaudithook(_hook)
    results = {}
    for path, kind in manifest["files"]:
        model = benign_model()
        tracemalloc.reset_peak()
        base_traced = tracemalloc.get_traced_memory()[0]
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _state["events"] = []
        _mark("begin")
        start = time.perf_counter()
        _state["file"] = path
        try:
            _load(path, kind, model)
            outcome, message = "loaded", ""
        except jm.UnsafeFileError as e:
            outcome, message = "refused", str(e)
        except BaseException as e:  # reported, not raised: the test names the file and the exception
            outcome, message = f"raised {type(e).__name__}", str(e)
        finally:
            _state["file"] = None
        seconds = time.perf_counter() - start
        _mark("end")
        results[path] = {
            "outcome": outcome, "message": message, "seconds": seconds,
            "traced_peak_bytes": tracemalloc.get_traced_memory()[1] - base_traced,
            "maxrss_growth_bytes": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) * 1024,
            "events": list(_state["events"]),
        }
    results["__modules__"] = sorted(m for m in ("tensorflow", "keras", "tf_keras") if sys.modules.get(m) is not None)
    with open(result_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
