"""Crash-safety campaign: SIGKILL a training process at many seeded random points and check every restart.

    python -m tests.training.crash_harness --kills 200 --seed 0 [--workdir DIR] [--json FILE]

Runs ``_crash_worker.py`` (a tiny model, a ``BackupAndRestore`` save after every step) once uninterrupted as
the reference, then in episodes: start the worker in a fresh directory, kill it, restart it, kill it again ...
until a run finishes, and compare that run's final parameters, optimizer state, step and History with the
reference, bit for bit. Each kill is one of (drawn with a seeded ``numpy.random.Generator``):

* ``timed``: SIGKILL from this process after a random delay, uniform in [0, D] with D the time the reference
  run takes from its first step to its end, counted from the worker's first step (compilation, loaded from
  the persistent cache, comes before it); where it landed is read from the worker's events;
* ``save:STAGE:K``: the worker kills itself at a stage of its K-th backup save (half-written files, written but
  not renamed, renamed but the directory not fsync'ed, an old checkpoint half pruned ...);
* ``step:N`` / ``epoch-end:N``: the worker kills itself after its N-th step or at its N-th epoch end;
* ``delete:N``: while the finished run deletes its backups, after N files (the newest checkpoint first).

Before every restart the expected resume point is computed here, independently of jaxmask: the newest
checkpoint directory whose files are exactly those its COMMIT file lists, with matching SHA-256 digests. The restarted
worker must report that it restored exactly that checkpoint (or started fresh when there is none), and, unless
a ``delete`` kill removed files, that checkpoint must be the last one whose rename the events showed.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from tests.training._crash_worker import SAVE_STAGES

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_crash_worker.py")

# what a kill plan draws: kind -> probability
KINDS = {"timed": 0.4, "save": 0.45, "step": 0.05, "epoch-end": 0.05, "delete": 0.05}
# stages strictly inside a save: something of the new checkpoint (or of a pruned old one) is on disk
MID_SAVE = set(SAVE_STAGES) - {"begin", "end"}


@dataclasses.dataclass
class Attempt:
    episode: int
    plan: str
    outcome: str  # "killed" or "finished"
    landed: str  # where the kill landed (the last event before it), "" when finished
    resumed_from: str  # checkpoint name, or "fresh"
    seconds: float


class CampaignError(AssertionError):
    pass


def worker_env(cache_dir: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env.pop("XLA_FLAGS", None)
    return env


def read_events(path: str) -> list[tuple[float, str]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line.rstrip("\n").split(" ", 1) for line in f if line.strip()]
    return [(float(t), rest) for t, rest in lines]


def committed(directory: str) -> bool:
    """The checkpoint format's own rule, re-implemented: COMMIT maps the relative path of every other file in the
    directory (meta.json and the orbax items' files) to its SHA-256 digest, and every digest matches."""
    try:
        with open(os.path.join(directory, "COMMIT"), "rb") as f:
            digests = json.loads(f.read())
        on_disk = sorted(
            os.path.relpath(os.path.join(base, name), directory) for base, _, names in os.walk(directory) for name in names
        )
        if "meta.json" not in digests or sorted(digests) != [p for p in on_disk if p != "COMMIT"]:
            return False
        for name, digest in digests.items():
            with open(os.path.join(directory, name), "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != digest:
                    return False
        return True
    except (OSError, ValueError, AttributeError):
        return False


def newest_committed(backup: str) -> str | None:
    if not os.path.isdir(backup):
        return None
    names = sorted(n for n in os.listdir(backup) if not n.startswith("."))
    for name in reversed(names):
        if committed(os.path.join(backup, name)):
            return name
    return None


def landing(events: list[tuple[float, str]]) -> str:
    """Where a kill landed: the stage after the last event the worker reported."""
    if not events:
        return "startup"
    last = events[-1][1].split()
    if last[0] == "save":
        return f"save:{last[2]}"
    if last[0] in ("start", "restored"):
        return "startup"
    if last[0] in ("fresh", "resumed", "step"):
        return "training"
    return last[0] if last[0] != "delete" else f"delete-{last[1]}"


def draw_plan(rng: np.random.Generator) -> str:
    kind = rng.choice(list(KINDS), p=list(KINDS.values()))
    if kind == "timed":
        return f"timed:{rng.random():.6f}"
    if kind == "save":
        return f"save:{rng.choice(SAVE_STAGES)}:{rng.integers(1, 5)}"
    if kind == "step":
        return f"step:{rng.integers(1, 7)}"
    if kind == "epoch-end":
        return "epoch-end:1"
    return f"delete:{rng.integers(1, 5)}"


def run_attempt(workdir, events_path, plan, env, fit_seconds, timeout=300):
    """Run the worker once under ``plan``; return (returncode, stderr)."""
    timed = plan.startswith("timed:")
    argv = [sys.executable, WORKER, workdir, events_path] + ([] if timed or plan == "none" else [plan])
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if timed:
            delay = float(plan.split(":")[1]) * fit_seconds
            deadline = time.monotonic() + timeout
            while proc.poll() is None and not any(e[1].startswith("step ") for e in read_events(events_path)):
                if time.monotonic() > deadline:
                    raise CampaignError("the worker never started fitting")
                time.sleep(0.002)
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


def read_final(workdir):
    with np.load(os.path.join(workdir, "final.npz")) as z:
        arrays = {k: z[k] for k in z.files}
    with open(os.path.join(workdir, "history.json")) as f:
        return arrays, json.load(f)


def run_reference(root, env):
    """Two uninterrupted runs: the first fills the compilation cache, the second (timed) is the reference;
    they must agree bit for bit. Returns (final, seconds from the first step to the end, share in saves)."""
    finals = []
    for name in ("cold", "reference"):
        ref = os.path.join(root, name)
        os.makedirs(ref)
        events_path = os.path.join(ref, "events.log")
        rc, stderr = run_attempt(ref, events_path, "none", env, 0.0)
        if rc != 0:
            raise CampaignError(f"{name} run failed ({rc}):\n{stderr[-3000:]}")
        finals.append(read_final(ref))
    if not same_final(*finals):
        raise CampaignError("two uninterrupted runs (cold and warm compilation cache) differ")
    events = read_events(events_path)
    start = next(t for t, e in events if e.startswith("step "))
    end = next(t for t, e in events if e == "delete end")
    in_save, opened = 0.0, None
    for t, e in events:
        if e.startswith("save ") and e.split()[2] == "begin":
            opened = t
        elif e.startswith("save ") and e.split()[2] == "end":
            in_save += t - opened
    return finals[1], end - start, in_save / (end - start)


def same_final(a, b) -> bool:
    (arrays_a, history_a), (arrays_b, history_b) = a, b
    if sorted(arrays_a) != sorted(arrays_b) or history_a != history_b:
        return False
    return all(arrays_a[k].dtype == arrays_b[k].dtype and np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)


def campaign(kills: int, seed: int, root: str, plans: list[str] | None = None, log=print) -> dict:
    """Kill ``kills`` times; raise CampaignError on the first wrong resume or final state; return a summary.

    ``plans`` fixes the first attempts' kill plans (in order) before drawing the rest.
    """
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    env = worker_env(os.path.join(root, "jax_cache"))
    reference, fit_seconds, save_share = run_reference(root, env)
    log(f"reference: {fit_seconds:.2f} s from the first step to the end, {100 * save_share:.0f}% of it in saves")
    plans = list(plans or [])
    attempts: list[Attempt] = []
    episode, killed = 0, 0
    while killed < kills:
        workdir = os.path.join(root, f"episode{episode:03d}")
        os.makedirs(workdir)
        backup = os.path.join(workdir, "backup")
        last_renamed, damaged = None, False
        for attempt in range(10 * kills + 10):
            if killed < kills:
                plan = plans.pop(0) if plans else draw_plan(rng)
            else:
                plan = "none"
            expected = newest_committed(backup)
            if not damaged and expected != last_renamed:
                raise CampaignError(
                    f"episode {episode}: the newest intact checkpoint is {expected}, but the last save that was "
                    f"renamed into place was {last_renamed}: a committed checkpoint was lost"
                )
            events_path = os.path.join(workdir, f"events{attempt:03d}.log")
            t0 = time.monotonic()
            rc, stderr = run_attempt(workdir, events_path, plan, env, fit_seconds)
            seconds = time.monotonic() - t0
            events = [e for _, e in read_events(events_path)]
            restored = [e.split()[1] for e in events if e.startswith("restored ")]
            started_as = "fresh" if "fresh" in events else (restored[-1] if restored else "?")
            want = expected or "fresh"
            if any(e.startswith(("fresh", "resumed")) for e in events) and started_as != want:
                raise CampaignError(
                    f"episode {episode} attempt {attempt}: resumed from {started_as}, expected {want} "
                    f"(newest intact checkpoint)"
                )
            pending = None
            for e in events:
                parts = e.split()
                if parts[0] == "save" and parts[2] == "begin":
                    pending = parts[3]
                elif parts[0] == "save" and parts[2] == "renamed":
                    last_renamed, damaged = pending, False
            if "delete begin" in events and rc == -signal.SIGKILL:
                damaged = True  # killed while deleting the backups: the newest may be gone
            if rc == -signal.SIGKILL:
                killed += 1
                attempts.append(Attempt(episode, plan, "killed", landing(read_events(events_path)), started_as, seconds))
                continue
            if rc != 0:
                raise CampaignError(f"episode {episode} attempt {attempt} ({plan}) exited {rc}:\n{stderr[-3000:]}")
            attempts.append(Attempt(episode, plan, "finished", "", started_as, seconds))
            break
        else:
            raise CampaignError(f"episode {episode} never finished")
        if not same_final(read_final(workdir), reference):
            raise CampaignError(f"episode {episode}: parameters, optimizer state, step or History differ from the "
                                "uninterrupted run")
        if os.path.exists(backup):
            raise CampaignError(f"episode {episode}: the backup directory was not deleted after the finished run")
        n_killed = sum(a.episode == episode and a.outcome == "killed" for a in attempts)
        log(f"episode {episode}: {n_killed} kills, finished bit-identical to the reference ({killed}/{kills} kills)")
        episode += 1

    kill_rows = [a for a in attempts if a.outcome == "killed"]
    where = collections.Counter(a.landed for a in kill_rows)
    return {
        "kills": len(kill_rows),
        "episodes": episode,
        "restarts": len(attempts),
        "kills_mid_save": sum(a.landed.startswith("save:") and a.landed[5:] in MID_SAVE for a in kill_rows),
        "kills_by_kind": dict(collections.Counter(a.plan.split(":")[0] for a in kill_rows)),
        "timed_kills_by_landing": dict(collections.Counter(a.landed for a in kill_rows if a.plan.startswith("timed"))),
        "kills_by_landing": dict(sorted(where.items())),
        "resumed_from_checkpoint": sum(a.resumed_from not in ("fresh", "?") for a in attempts),
        "reference_fit_seconds": round(fit_seconds, 3),
        "reference_share_in_saves": round(save_share, 3),
        "seconds": round(time.monotonic() - started, 1),
        "seed": seed,
        "outcome": "every restart resumed from the newest intact checkpoint; every episode ended bit-identical",
        "attempts": [dataclasses.asdict(a) for a in attempts],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="kept afterwards (default: a temporary directory)")
    parser.add_argument("--json", default=None, help="write the summary (and every attempt) here")
    args = parser.parse_args(argv)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=False)
        summary = campaign(args.kills, args.seed, args.workdir)
    else:
        with tempfile.TemporaryDirectory() as root:
            summary = campaign(args.kills, args.seed, root)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "attempts"}, indent=1))


if __name__ == "__main__":
    main()
