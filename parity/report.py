"""Rendering parity reports: the readable table, the one-line summary, JSON, and PNG plots."""

from __future__ import annotations

import collections
import json
import os

import numpy as np

from parity._keras import versions
from parity.compare import DEVIATION, ERROR, MISMATCH, PASS, Report
from parity.deviations import DEVIATIONS
from parity.tolerances import TOLERANCES

COLUMNS = (("case", 44), ("reference", 12), ("valid", 9), ("masked", 9), ("loss", 9), ("grad", 9), ("traj", 9),
           ("status", 0))


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.1e}" if v == v else "nan"


def header() -> str:
    cells = ["case", "reference", "valid", "masked", "loss", "grad", "traj", "status"]
    line = "".join(f"{c:<{w}}" if w else c for c, (_, w) in zip(cells, COLUMNS))
    return ("max|jaxmask - Keras| of the outputs at valid and at masked steps, of the loss and of the gradients; "
            "traj: max relative diff of the loss trajectory\n" + line + "\n" + "-" * 118)


def row(r: Report) -> str:
    status = r.status + (f": {r.deviation.name}" if r.deviation and r.status == DEVIATION else "")
    cells = [r.case, r.reference, _num(r.valid_diff), _num(r.masked_diff), _num(r.loss_diff), _num(r.grad_diff),
             _num(r.trajectory_diff), status]
    out = ""
    for cell, (_, width) in zip(cells, COLUMNS):
        if width:
            cell = cell if len(cell) < width else cell[: width - 2] + "…"
            out += f"{cell:<{width}}"
        else:
            out += cell
    return out


def counts(reports) -> collections.Counter:
    return collections.Counter(r.status for r in reports)


def summary_line(reports, seconds: float) -> str:
    c = counts(reports)
    refs = collections.Counter(r.reference for r in reports)
    per_ref = ", ".join(f"{k} {v}" for k, v in refs.items())
    verdict = "OK" if c[MISMATCH] + c[ERROR] == 0 else "FAILED"
    return (f"parity {verdict}: {len(reports)} checks ({per_ref}): {c[PASS]} pass, {c[DEVIATION]} documented "
            f"deviation, {c[MISMATCH]} mismatch, {c[ERROR]} error in {seconds:.1f} s")


def details(reports) -> str:
    """Failures in full, then each documented deviation seen, once, with its upstream reference."""
    lines = []
    bad = [r for r in reports if not r.ok]
    if bad:
        lines.append("\nUnexpected mismatches and errors:")
        for r in bad:
            lines.append(f"  {r.case} [{r.reference}] {r.status}:")
            lines += [f"      {f}" for f in r.failures] + [f"      note: {n}" for n in r.notes]
    seen = collections.Counter(r.deviation.name for r in reports if r.deviation and r.status == DEVIATION)
    if seen:
        lines.append("\nDocumented reference deviations (not failures; jaxmask's behaviour is the documented one):")
        for name, n in seen.items():
            d = DEVIATIONS[name]
            lines.append(f"  {name} ({n} checks): {d.summary}")
            lines.append(f"      jaxmask: {d.jaxmask}\n      upstream: {d.upstream}")
    tol = ", ".join(f"{k} atol {t.atol:g} rtol {t.rtol:g}" for k, t in TOLERANCES.items())
    lines.append(f"\nTolerances: {tol}.")
    return "\n".join(lines)


def write_json(path: str, reports, seconds: float) -> None:
    payload = {
        "summary": {"line": summary_line(reports, seconds), "seconds": seconds, **dict(counts(reports)),
                    "checks": len(reports)},
        "versions": versions(),
        "tolerances": {k: {"atol": t.atol, "rtol": t.rtol} for k, t in TOLERANCES.items()},
        "deviations": {k: d.to_dict() for k, d in DEVIATIONS.items()},
        "reports": [r.to_dict() for r in reports],
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)


# ---------------------------------------------------------------------------------------------- plots


def _pick_row(mask) -> int:
    """A batch row that has valid and masked steps (the most mixed one)."""
    if mask is None:
        return 0
    mask = np.asarray(mask)
    score = [min(m.sum(), (~m).sum()) + 0.5 * (np.diff(m.astype(int)) != 0).sum() for m in mask]
    return int(np.argmax(score))


def plot_outputs(report: Report, directory: str) -> str | None:
    """jaxmask vs Keras outputs over time for one masked sequence; masked steps shaded."""
    arrays = report.arrays
    keras, ours = arrays.get("keras"), arrays.get("jaxmask")
    if keras is None or np.ndim(keras) != 3:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = arrays.get("mask")
    b = _pick_row(mask)
    t = np.arange(keras.shape[1])
    units = min(keras.shape[2], 3)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for u in range(units):
        line, = ax.plot(t, keras[b, :, u], "-", lw=2, alpha=0.5, label=f"Keras ({report.reference}) unit {u}")
        ax.plot(t, ours[b, :, u], "o", ms=5, color=line.get_color(), label=f"jaxmask unit {u}")
    if mask is not None:
        for step in np.flatnonzero(~np.asarray(mask)[b]):
            for a in (ax, ax2):
                a.axvspan(step - 0.5, step + 0.5, color="0.85", zorder=0)
    diff = np.abs(ours[b] - keras[b]).max(axis=-1)
    ax2.semilogy(t, np.maximum(diff, 1e-12), "k.-")
    ax2.axhline(TOLERANCES["outputs"].atol, color="r", ls="--", lw=1)
    ax2.set_ylabel("max|diff|")
    ax2.set_xlabel("time step (grey: masked)")
    ax.set_title(f"{report.case} vs {report.reference}: sequence {b} ({report.status})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = os.path.join(directory, f"outputs_{_slug(report.case)}_{report.reference}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_trajectories(reports, directory: str, reference: str) -> str | None:
    """Training-loss trajectories, Keras and jaxmask side by side, one panel per trajectory case."""
    reports = [r for r in reports if r.trajectory_keras is not None and r.reference == reference]
    if not reports:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(reports))
    rows = (len(reports) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, r in zip(axes.flat, reports):
        steps = np.arange(len(r.trajectory_keras))
        ax.plot(steps, r.trajectory_keras, "-", lw=3, alpha=0.5, label=f"Keras ({r.reference})")
        ax.plot(steps, r.trajectory_jax, "k.--", lw=1, label="jaxmask")
        ax.set_title(f"{r.case}\nmax rel diff {_num(r.trajectory_diff)}", fontsize=8)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(reports):]:
        ax.axis("off")
    fig.tight_layout()
    path = os.path.join(directory, f"trajectories_{reference}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
