"""Crash-safety campaign: SIGKILL a training process at many seeded random points and check every restart.

    python -m tests.training.crash_harness --kills 200 --seed 0 [--processes 2] [--minutes M] [--workdir DIR]
        [--json FILE]

Runs ``_crash_worker.py`` (a tiny model, a ``BackupAndRestore`` save after every step) once uninterrupted as
the reference, then in episodes: start the worker in a fresh directory, kill it, restart it, kill it again ...
until a run finishes, and compare that run's final parameters, optimizer state, step and History with the
reference, bit for bit. Each kill is one of (drawn with a seeded ``numpy.random.Generator``):

* ``timed``: SIGKILL from this process after a random delay, uniform in [0, D] with D the time the reference
  run takes from its first step to its end, counted from the worker's first step (compilation, loaded from
  the persistent cache, comes before it); where it landed is read from the worker's events;
* ``save:STAGE:K``: the worker kills itself at a stage of its K-th backup save (torn orbax item, half-written
  files, written but not renamed, renamed but the directory not fsync'ed, an old checkpoint half pruned ...);
* ``step:N`` / ``epoch-end:N``: the worker kills itself after its N-th step or at its N-th epoch end;
* ``delete:N``: while the finished run deletes its backups, after N files (the newest checkpoint first).

With ``--processes 2`` every run is two worker processes joined by ``jax.distributed`` on 127.0.0.1 (2 CPU
devices each), and a plan ``P/PLAN`` kills process P only: the moment it is dead the harness SIGKILLs the
other (which would otherwise wait at the next barrier or collective), and restarts both. Process 0 does the
file work of every save, so process 1's save stages are ``begin`` and ``end``; ``delete`` kills process 0.

Before every restart the expected resume point is computed here, independently of jaxmask: the newest
checkpoint directory whose files are exactly those its COMMIT file lists, with matching SHA-256 digests. Every
restarted process must report that it restored exactly that checkpoint (or started fresh when there is none),
and, unless a ``delete`` kill removed files, that checkpoint must be the last one whose rename the events showed.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import signal
import socket
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


def worker_env(cache_dir: str, processes: int = 1) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env.pop("XLA_FLAGS", None)
    if processes > 1:
        env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAXMASK_CRASH_PROCESSES=str(processes))
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            os.path.relpath(os.path.join(base, name), directory)
            for base, _, names in os.walk(directory)
            for name in names
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


def draw_plan(rng: np.random.Generator, processes: int = 1) -> str:
    victim = int(rng.integers(processes))
    kind = rng.choice(list(KINDS), p=list(KINDS.values()))
    if kind == "timed":
        plan = f"timed:{rng.random():.6f}"
    elif kind == "save":
        plan = f"save:{rng.choice(SAVE_STAGES if victim == 0 else ('begin', 'end'))}:{rng.integers(1, 5)}"
    elif kind == "step":
        plan = f"step:{rng.integers(1, 7)}"
    elif kind == "epoch-end":
        plan = "epoch-end:1"
    else:
        victim, plan = 0, f"delete:{rng.integers(1, 5)}"
    return plan if processes == 1 else f"{victim}/{plan}"


def split_plan(plan: str, processes: int) -> tuple[int, str]:
    """``(victim process, plan)`` of a plan, ``P/PLAN`` in a multi-process campaign."""
    if processes == 1 or plan == "none":
        return 0, plan
    victim, _, rest = plan.partition("/")
    return int(victim), rest


def events_of(workdir: str, attempt, processes: int) -> list[str]:
    """The events file of every process of one attempt."""
    if processes == 1:
        return [os.path.join(workdir, f"events{attempt}.log")]
    return [os.path.join(workdir, f"events{attempt}.p{p}.log") for p in range(processes)]


def run_attempt(workdir, events_paths, plan, env, fit_seconds, timeout=300):
    """Run the worker once under ``plan`` (one process per events file); return (return codes, stderr)."""
    processes = len(events_paths)
    victim, plan = split_plan(plan, processes)
    timed = plan.startswith("timed:")
    port = str(free_port()) if processes > 1 else ""
    procs, errs = [], [f"{path}.stderr" for path in events_paths]  # files: a full pipe would block a worker
    for p, events_path in enumerate(events_paths):
        own = [] if timed or plan == "none" or p != victim else [plan]
        penv = dict(env, JAXMASK_CRASH_PROCESS=str(p), JAXMASK_CRASH_PORT=port) if processes > 1 else env
        with open(errs[p], "w") as err:
            procs.append(subprocess.Popen([sys.executable, WORKER, workdir, events_path] + own, env=penv,
                                          stdout=subprocess.DEVNULL, stderr=err))
    deadline = time.monotonic() + timeout
    try:
        if timed:
            delay = float(plan.split(":")[1]) * fit_seconds
            while procs[victim].poll() is None and not any(
                e[1].startswith("step ") for e in read_events(events_paths[victim])
            ):
                if time.monotonic() > deadline:
                    raise CampaignError("the worker never started fitting")
                time.sleep(0.002)
            time.sleep(delay)
            if procs[victim].poll() is None:
                os.kill(procs[victim].pid, signal.SIGKILL)
        # the moment one process is killed (or fails), kill the others (they would wait at the next barrier)
        while any(proc.poll() is None for proc in procs):
            if any(proc.poll() not in (None, 0) for proc in procs):
                for proc in procs:
                    if proc.poll() is None:
                        os.kill(proc.pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise CampaignError(f"attempt ran past {timeout} s")
            time.sleep(0.002)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = ""
    for path in errs:
        with open(path) as f:
            stderr += f.read()
    return [proc.returncode for proc in procs], stderr


def read_final(workdir, processes: int = 1):
    """Every process's (final arrays, History) of a finished run."""
    out = []
    for suffix in [""] if processes == 1 else [f"-p{p}" for p in range(processes)]:
        with np.load(os.path.join(workdir, f"final{suffix}.npz")) as z:
            arrays = {k: z[k] for k in z.files}
        with open(os.path.join(workdir, f"history{suffix}.json")) as f:
            out.append((arrays, json.load(f)))
    return out


def run_reference(root, env, processes: int = 1):
    """Two uninterrupted runs: the first fills the compilation cache, the second (timed) is the reference;
    they must agree bit for bit (and so must the processes of a run). Returns (final, seconds from the first
    step to the end, share in saves)."""
    finals = []
    for name in ("cold", "reference"):
        ref = os.path.join(root, name)
        os.makedirs(ref)
        paths = events_of(ref, "", processes)
        rcs, stderr = run_attempt(ref, paths, "none", env, 0.0, timeout=300 * processes**2)
        if any(rcs):
            raise CampaignError(f"{name} run failed ({rcs}):\n{stderr[-3000:]}")
        finals.append(read_final(ref, processes))
    if not same_finals(finals[0], finals[1]) or not all(same_final(f, finals[1][0]) for f in finals[1]):
        raise CampaignError("two uninterrupted runs (cold and warm compilation cache), or their processes, differ")
    events = read_events(paths[0])
    start = next(t for t, e in events if e.startswith("step "))
    end = next(t for t, e in events if e == "delete end")
    in_save, opened = 0.0, None
    for t, e in events:
        if e.startswith("save ") and e.split()[2] == "begin":
            opened = t
        elif e.startswith("save ") and e.split()[2] == "end":
            in_save += t - opened
    return finals[1], end - start, in_save / (end - start)


def same_finals(a, b) -> bool:
    return len(a) == len(b) and all(same_final(x, y) for x, y in zip(a, b))


def same_final(a, b) -> bool:
    (arrays_a, history_a), (arrays_b, history_b) = a, b
    if sorted(arrays_a) != sorted(arrays_b) or history_a != history_b:
        return False
    return all(arrays_a[k].dtype == arrays_b[k].dtype and np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)


def campaign(kills: int, seed: int, root: str, plans: list[str] | None = None, log=print, processes: int = 1,
             minutes: float | None = None) -> dict:
    """Kill ``kills`` times; raise CampaignError on the first wrong resume or final state; return a summary.

    ``plans`` fixes the first attempts' kill plans (in order) before drawing the rest; with ``processes`` > 1 every
    run is that many processes and a plan names its victim (``P/PLAN``). With ``minutes``, no kill is drawn after
    that long: the episode under way is finished and the summary says how many kills were made.
    """
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    env = worker_env(os.path.join(root, "jax_cache"), processes)
    reference, fit_seconds, save_share = run_reference(root, env, processes)
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
            if minutes is not None and time.monotonic() - started > 60 * minutes:
                kills = killed
            if killed < kills:
                plan = plans.pop(0) if plans else draw_plan(rng, processes)
            else:
                plan = "none"
            expected = newest_committed(backup)
            if not damaged and expected != last_renamed:
                raise CampaignError(
                    f"episode {episode}: the newest intact checkpoint is {expected}, but the last save that was "
                    f"renamed into place was {last_renamed}: a committed checkpoint was lost"
                )
            paths = events_of(workdir, f"{attempt:03d}", processes)
            t0 = time.monotonic()
            rcs, stderr = run_attempt(workdir, paths, plan, env, fit_seconds, timeout=300 * processes**2)
            seconds = time.monotonic() - t0
            want = expected or "fresh"
            started_as = []
            for path in paths:
                events = [e for _, e in read_events(path)]
                restored = [e.split()[1] for e in events if e.startswith("restored ")]
                started_as.append("fresh" if "fresh" in events else (restored[-1] if restored else "?"))
                if any(e.startswith(("fresh", "resumed")) for e in events) and started_as[-1] != want:
                    raise CampaignError(
                        f"episode {episode} attempt {attempt} ({os.path.basename(path)}): resumed from "
                        f"{started_as[-1]}, expected {want} (newest intact checkpoint)"
                    )
            events = [e for _, e in read_events(paths[0])]  # process 0 does the file work of every save
            pending = None
            for e in events:
                parts = e.split()
                if parts[0] == "save" and parts[2] == "begin":
                    pending = parts[3]
                elif parts[0] == "save" and parts[2] == "renamed":
                    last_renamed, damaged = pending, False
            if -signal.SIGKILL in rcs:
                if "delete begin" in events:
                    damaged = True  # killed while deleting the backups: the newest may be gone
                killed += 1
                victim = split_plan(plan, processes)[0]
                landed = landing(read_events(paths[victim]))
                attempts.append(Attempt(episode, plan, "killed", landed, started_as[0], seconds))
                continue
            if any(rcs):
                raise CampaignError(f"episode {episode} attempt {attempt} ({plan}) exited {rcs}:\n{stderr[-3000:]}")
            attempts.append(Attempt(episode, plan, "finished", "", started_as[0], seconds))
            break
        else:
            raise CampaignError(f"episode {episode} never finished")
        if not same_finals(read_final(workdir, processes), reference):
            raise CampaignError(f"episode {episode}: parameters, optimizer state, step or History differ from the "
                                "uninterrupted run")
        if os.path.exists(backup):
            raise CampaignError(f"episode {episode}: the backup directory was not deleted after the finished run")
        n_killed = sum(a.episode == episode and a.outcome == "killed" for a in attempts)
        log(f"episode {episode}: {n_killed} kills, finished bit-identical to the reference ({killed}/{kills} kills)")
        episode += 1

    kill_rows = [a for a in attempts if a.outcome == "killed"]
    where = collections.Counter(a.landed for a in kill_rows)
    kind = lambda a: split_plan(a.plan, processes)[1].split(":")[0]  # noqa: E731
    summary = {
        "processes": processes,
        "kills": len(kill_rows),
        "episodes": episode,
        "restarts": len(attempts),
        "kills_mid_save": sum(a.landed.startswith("save:") and a.landed[5:] in MID_SAVE for a in kill_rows),
        "kills_by_kind": dict(collections.Counter(kind(a) for a in kill_rows)),
        "timed_kills_by_landing": dict(collections.Counter(a.landed for a in kill_rows if kind(a) == "timed")),
        "kills_by_landing": dict(sorted(where.items())),
        "resumed_from_checkpoint": sum(a.resumed_from not in ("fresh", "?") for a in attempts),
        "reference_fit_seconds": round(fit_seconds, 3),
        "reference_share_in_saves": round(save_share, 3),
        "seconds": round(time.monotonic() - started, 1),
        "seed": seed,
        "outcome": "every restart resumed from the newest intact checkpoint; every episode ended bit-identical",
        "attempts": [dataclasses.asdict(a) for a in attempts],
    }
    if processes > 1:
        summary["kills_by_victim"] = dict(collections.Counter(split_plan(a.plan, processes)[0] for a in kill_rows))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1, help="processes per run (2: jax.distributed on 127.0.0.1)")
    parser.add_argument("--minutes", type=float, default=None, help="draw no kill after this long (then finish)")
    parser.add_argument("--workdir", default=None, help="kept afterwards (default: a temporary directory)")
    parser.add_argument("--json", default=None, help="write the summary (and every attempt) here")
    args = parser.parse_args(argv)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=False)
        summary = campaign(args.kills, args.seed, args.workdir, processes=args.processes, minutes=args.minutes)
    else:
        with tempfile.TemporaryDirectory() as root:
            summary = campaign(args.kills, args.seed, root, processes=args.processes, minutes=args.minutes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "attempts"}, indent=1))


if __name__ == "__main__":
    main()
