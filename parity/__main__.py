"""``python -m parity``: run the parity catalogue against Keras and print a table.

Exit status: 0 when every check passes or is a documented deviation; 1 on any unexpected mismatch or
error; 2 on a usage error (bad option, ``-k`` matching no case) or when the reference library is not
installed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from parity._keras import INSTALL_HINT, REFERENCES

DESCRIPTION = """Check, number by number, that jaxmask computes what Keras computes: outputs at valid and at
masked steps, output masks, losses, gradients of the loss w.r.t. every weight, and optimizer-step
loss trajectories, over a catalogue of layer types x mask patterns x options x losses x weights x
reductions x semantics. Documented Keras bugs are reported as named deviations, not as failures."""

EPILOG = """references: keras3 = Keras 3 on TensorFlow (in process); keras3-jax = Keras 3 on JAX (one subprocess
with KERAS_BACKEND=jax); tf_keras = tf_keras 2.x. Exit status: 0 ok, 1 unexpected mismatch or error,
2 usage error or reference library missing."""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m parity", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--reference", default="keras3", choices=REFERENCES + ("all",),
                   help="reference to compare against (default: keras3)")
    p.add_argument("-k", dest="pattern", metavar="PATTERN",
                   help="only cases whose name contains PATTERN (fnmatch syntax if it has *?[)")
    p.add_argument("--quick", action="store_true", help="the quick subset (a few seconds per reference)")
    p.add_argument("--json", metavar="FILE", help="write every report, the summary and versions as JSON")
    p.add_argument("--plot", metavar="DIR", help="write PNG plots (outputs over time, loss trajectories)")
    p.add_argument("--list", action="store_true", help="list the selected cases and their references, then exit")
    p.add_argument("--perturb", type=float, default=0.0, metavar="X",
                   help="self-test: add X to every jaxmask weight after conversion; every case must then fail")
    p.add_argument("--cache-dir", metavar="DIR", default=default_cache_dir(),
                   help="JAX persistent compilation cache for jaxmask's compiled checks; reruns take seconds "
                        "(default: %(default)s)")
    p.add_argument("--no-cache", action="store_true", help="do not use the compilation cache")
    p.add_argument("--child", metavar="FILE", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxmask", "parity-xla")


def _enable_compilation_cache(directory: str) -> None:
    """Cache jaxmask's compiled executables on disk: the catalogue compiles ~100 small programs, which is most
    of a cold run; a rerun loads them instead. The cached executable is the one XLA built, so numbers do not
    change."""
    import jax

    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def _usage_error(message: str) -> int:
    print(f"python -m parity: error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = parse_args(argv)  # argparse exits with status 2 on usage errors
    from parity import cases as catalogue

    references = list(REFERENCES) if args.reference == "all" else [args.reference]
    if args.child:
        with open(args.child) as f:
            wanted = set(f.read().split())
        selected = [c for c in catalogue.CASES if c.name in wanted]
    else:
        selected = catalogue.select(args.pattern, quick=args.quick)
    runnable = [(ref, [c for c in selected if ref in c.references]) for ref in references]
    if not any(cs for _, cs in runnable):
        what = f"-k {args.pattern!r}" if args.pattern else "the selection"
        return _usage_error(f"{what} matches no case for reference(s) {', '.join(references)} "
                            f"(python -m parity --list shows the {len(catalogue.CASES)} cases).")
    if args.list:
        for case in selected:
            print(f"{case.name:50s} {','.join(r for r in case.references if r in references)}")
        print(f"{len(selected)} cases")
        return 0

    from parity._keras import is_available

    for ref, cases in runnable:
        if not cases:
            continue
        needed = {"keras3": ("keras", "tensorflow"), "keras3-jax": ("keras",),
                  "tf_keras": ("tf_keras", "tensorflow")}[ref]
        missing = [name for name in needed if not is_available(name)]
        if missing:
            return _usage_error(f"the {ref!r} reference needs {' and '.join(missing)}, which "
                                f"{'is' if len(missing) == 1 else 'are'} not installed. Install with: {INSTALL_HINT}")
    if not args.child and "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"  # the in-process Keras 3 reference; keras3-jax runs apart
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from parity import report as rp
    from parity import runner
    from parity._keras import KerasNotInstalled, preload

    try:
        preload(sorted({runner.REFERENCE_FLAVOR[ref] for ref, cases in runnable if cases and runner.in_process(ref)}))
    except KerasNotInstalled as e:
        return _usage_error(str(e))

    if not args.no_cache:
        _enable_compilation_cache(args.cache_dir)
    if args.plot:
        os.makedirs(args.plot, exist_ok=True)
    started = time.perf_counter()
    reports = []
    quiet = bool(args.child)
    if not quiet:
        print(rp.header(), flush=True)
    children = []
    for ref, cases in runnable:  # references that need their own process start first and run alongside
        if cases and not runner.in_process(ref):
            if not quiet:
                print(f"... {ref}: {len(cases)} cases running in one subprocess (KERAS_BACKEND="
                      f"{runner.REFERENCE_BACKEND[ref]}); its rows follow the in-process ones", flush=True)
            children.append(runner.SubprocessRun(cases, ref, perturb=args.perturb, plot_dir=args.plot,
                                                 cache_dir=None if args.no_cache else args.cache_dir))
    try:
        for ref, cases in runnable:
            if not cases or not runner.in_process(ref):
                continue
            done = runner.run_reference(cases, ref, perturb=args.perturb,
                                        progress=None if quiet else lambda r: print(rp.row(r), flush=True))
            reports += done
            if args.plot:
                for r in done:
                    if "plot" in r.tags:
                        rp.plot_outputs(r, args.plot)
                rp.plot_trajectories(done, args.plot, ref)
    except BaseException:
        for child in children:
            child.kill()
        raise
    for child in children:
        done = child.reports()
        if not quiet:
            for r in done:
                print(rp.row(r), flush=True)
        reports += done
    seconds = time.perf_counter() - started
    if args.json:
        rp.write_json(args.json, reports, seconds)
    if not quiet:
        print(rp.details(reports))
        print(rp.summary_line(reports, seconds))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
