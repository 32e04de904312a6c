"""Run the Hypothesis properties of tests/test_properties.py with a wall-clock budget per property and count
the examples each one really ran (the numbers recorded in tests/PROPERTIES.md).

    HYPOTHESIS_PROFILE=slow nice python tools/run_properties.py --seed 7 --budget 360 --json props.json

Each property runs under the profile's settings (``slow``: 10,000 examples) with a fixed seed, until it has
run its examples, fails, or its budget is spent (then it stops after the example in progress; the count is
exact). ``python -m pytest tests/test_properties.py`` with the same profile runs the same tests without
budgets. Exit status 1 if a property failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hypothesis  # noqa: E402

import tests.conftest  # noqa: E402,F401  (registers and loads the profiles)
from tests import test_properties  # noqa: E402


class OutOfBudget(BaseException):
    """Raised inside a property when its budget is spent; Hypothesis lets BaseExceptions through unshrunk."""


def run(name: str, seed: int, budget: float) -> dict:
    test = getattr(test_properties, name)
    inner = test.hypothesis.inner_test
    state = {"examples": 0, "deadline": time.monotonic() + budget}

    def counted(*args, **kwargs):
        if time.monotonic() > state["deadline"]:
            raise OutOfBudget
        inner(*args, **kwargs)
        state["examples"] += 1

    test.hypothesis.inner_test = counted
    started = time.monotonic()
    try:
        hypothesis.seed(seed)(test)()
        outcome = "passed: max_examples reached"
    except OutOfBudget:
        outcome = "passed: stopped by the time budget"
    except Exception:  # noqa: BLE001 - report whatever the property raised
        outcome = "FAILED\n" + traceback.format_exc()
    finally:
        test.hypothesis.inner_test = inner
    return {"property": name, "examples": state["examples"], "seconds": round(time.monotonic() - started, 1),
            "outcome": outcome}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--budget", type=float, default=360.0, help="seconds per property")
    parser.add_argument("-k", default="", help="run only properties whose name contains this")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    names = [n for n in dir(test_properties) if n.startswith("test_") and args.k in n
             and hasattr(getattr(test_properties, n), "hypothesis")]
    profile = hypothesis.settings.default
    print(f"profile max_examples={profile.max_examples} derandomize={profile.derandomize} seed={args.seed}", flush=True)
    results = []
    for name in names:
        result = run(name, args.seed, args.budget)
        results.append(result)
        print(f"{name}: {result['examples']} examples in {result['seconds']} s, {result['outcome']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"max_examples": profile.max_examples, "seed": args.seed, "budget": args.budget,
                       "results": results}, f, indent=1)
    return 1 if any(r["outcome"].startswith("FAILED") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
