"""One prepared accelerator run: CPU-vs-GPU equality, then jaxmask (scan and cuDNN) against its peers.

    python benchmarks/gpu.py                  # on a CUDA GPU; < 8 minutes; writes benchmarks/results/gpu.{json,md}
    python benchmarks/gpu.py --dry-run        # tiny shapes on CPU, < 60 s: checks the script itself

1. Equality (``jax.default_matmul_precision("highest")``): for every cell (LSTM through the scan, LSTM
   through cuDNN, GRU with reset_after True and False, SimpleRNN) x mask pattern (post- and pre-padding with
   fully masked rows, holes, a window of valid steps, no mask) x setting (go_backwards, zero_output_for_mask,
   initial_output="initial_state"), outputs, last output, final states and the gradients of a loss w.r.t.
   weights, inputs and initial state, GPU against CPU, at parity's tolerances (float32). It also checks
   that the compiled GPU program of ``use_cudnn="auto"`` calls cuDNN (``cudnn_rnn`` in the HLO) and that
   the same function placed on the CPU does not.
2. Timings (default precision, so TF32 where each library allows it): the seed model (Masking -> LSTM(H,
   return_sequences) -> Dropout(0.5) -> Dense(1, sigmoid), Adam, masked binary cross-entropy; the model of
   ``benchmarks/peers.py``) for a train step and an inference call, median after warm-up, on the seed
   (B=64, T=100, F=8, H=100), large (128, 400, 32, 256) and GPU-sized (256, 512, 64, 512) shapes, post-padded
   data: jaxmask scan (``use_cudnn=False``), jaxmask cuDNN (``use_cudnn=True``; also on pre-padded data,
   where rows are rolled), jaxmask ``dtype_policy="mixed_bfloat16"`` (the scan), PyTorch ``nn.LSTM`` (cuDNN,
   packed sequences), Flax NNX ``nnx.RNN`` with ``seq_lengths`` and Keras 3 on the JAX backend. A peer that
   cannot be imported is skipped with a note.

``python benchmarks/gpu.py --precision-ab [SHAPE ...]`` only times float32 against mixed_bfloat16 for the
jaxmask model, alternated in one process on the default backend (the CPU here), and writes
``precision-ab-<backend>.json``.

Each part runs in its own subprocess with a time limit taken from one overall budget (``--budget-s``), so
one slow or failing peer leaves the others' results. ``--dry-run`` runs on CPU with
``jax.experimental.rnn.lstm_ref`` standing in for the cuDNN kernel: the numbers check the script, not a GPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT = "@@result "
SHAPES = {"seed": (64, 100, 8, 100), "large": (128, 400, 32, 256), "gpu": (256, 512, 64, 512)}
DRY_SHAPES = {"tiny": (4, 6, 3, 5)}
REPS = {"seed": 30, "large": 15, "gpu": 10, "tiny": 3}
PEERS = ["jaxmask-scan", "jaxmask-cudnn", "jaxmask-cudnn-pre", "jaxmask-bf16", "torch-packed", "flax-nnx-rnn",
         "keras3-jax"]
REQUIRES = {"torch-packed": "torch", "flax-nnx-rnn": "flax", "keras3-jax": "keras"}
EQ_SHAPE, DRY_EQ_SHAPE = (16, 24, 8, 32), (5, 6, 3, 4)
CELLS = ["lstm-scan", "lstm-cudnn", "gru", "gru-v1", "simple-rnn"]
SETTINGS = {
    "default": dict(go_backwards=False, zero_output_for_mask=False, initial_output="zeros"),
    "backwards+initial_state": dict(go_backwards=True, zero_output_for_mask=False, initial_output="initial_state"),
    "zero_output_for_mask": dict(go_backwards=False, zero_output_for_mask=True, initial_output="zeros"),
}


def emit(record):
    print(RESULT + json.dumps(record), flush=True)


# --------------------------------------------------------------------------------------------------
# Worker: equality
# --------------------------------------------------------------------------------------------------


def mask_patterns(b, t):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, t + 1, b)
    lengths[0], lengths[1 % b] = 0, t  # a fully masked row and a full one
    post = np.arange(t)[None, :] < lengths[:, None]
    holes = post.copy()
    holes[:, t // 2] = False
    window = np.zeros((b, t), bool)
    window[:, t // 4 : (3 * t) // 4] = True
    return {"post": post, "pre": post[:, ::-1].copy(), "holes": holes, "window": window, "none": None}


def _cell_setup(cell, f, h, rng):
    from jaxmask.functional import rnn as F

    g = {"lstm-scan": 4, "lstm-cudnn": 4, "gru": 3, "gru-v1": 3, "simple-rnn": 1}[cell]
    params = {"kernel": rng.normal(0, 0.4, (f, g * h)), "recurrent_kernel": rng.normal(0, 0.4, (h, g * h)),
              "bias": rng.normal(0, 0.4, (2, g * h) if cell == "gru" else (g * h,))}
    factory = {"lstm-scan": F.lstm_cell, "lstm-cudnn": F.lstm_cell, "gru": F.gru_cell,
               "gru-v1": lambda: F.gru_cell(reset_after=False), "simple-rnn": F.simple_rnn_cell}[cell]
    n_states = 2 if cell.startswith("lstm") else 1
    return factory(), {k: v.astype(np.float32) for k, v in params.items()}, n_states


def equality_worker(dry_run):
    import jax
    import jax.numpy as jnp

    from jaxmask.functional import cudnn
    from jaxmask.functional import rnn as F
    from parity.tolerances import TOLERANCES

    jax.config.update("jax_default_matmul_precision", "highest")
    cpu = jax.devices("cpu")[0]
    test_dev = cpu if dry_run else jax.devices()[0]
    b, t, f, h = DRY_EQ_SHAPE if dry_run else EQ_SHAPE
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, t, f)).astype(np.float32)
    weights = rng.normal(size=(b, t, h)).astype(np.float32)
    patterns = mask_patterns(b, t)
    emit({"kind": "equality-meta", "test_device": str(test_dev), "reference_device": str(cpu), "shape": [b, t, f, h]})

    # which kernel the compiled programs call
    params = _cell_setup("lstm-scan", f, h, np.random.default_rng(2))[1]
    init = tuple(np.zeros((b, h), np.float32) for _ in range(2))

    def auto(params, x, init, mask):
        return F.masked_scan(F.lstm_cell(), params, x, mask, init, use_cudnn="auto")

    args = (params, x, init, patterns["post"])
    hlo = {}
    for name, dev in (("test_device", test_dev), ("cpu", cpu)):
        text = jax.jit(auto).lower(*jax.device_put(args, dev)).as_text()
        hlo[name] = "cudnn_rnn" in text
    emit({"kind": "dispatch", "auto_calls_cudnn_on_test_device": hlo["test_device"],
          "auto_calls_cudnn_on_cpu": hlo["cpu"], "expected_on_test_device": not dry_run})

    def build(cell_obj, setting, masked, use_cudnn, kernel):
        def loss(params, x, init, mask):
            out, last, final = F.masked_scan(cell_obj, params, x, mask if masked else None, init,
                                             use_cudnn=use_cudnn, cudnn_kernel=kernel, **setting)
            value = jnp.sum(out * weights) + jnp.sum(jnp.sin(last)) + sum(jnp.sum(s * s) for s in final)
            return value, (out, last, final)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))

    for cell in CELLS:
        cell_obj, params, n_states = _cell_setup(cell, f, h, rng)
        init = tuple(rng.normal(size=(b, h)).astype(np.float32) for _ in range(n_states))
        # a dry run compares CPU with CPU: only the cuDNN stand-in is worth every setting there
        settings = SETTINGS if (cell == "lstm-cudnn" or not dry_run) else {"default": SETTINGS["default"]}
        for sname, setting in settings.items():
            both = sname == "default" and (cell == "lstm-cudnn" or not dry_run)
            for masked in (True, False) if both else (True,):
                ref_fn = build(cell_obj, setting, masked, False, None)
                if cell == "lstm-cudnn":
                    test_fn = build(cell_obj, setting, masked, True, cudnn.reference_lstm_kernel if dry_run else None)
                else:
                    test_fn = ref_fn
                for pname, mask in patterns.items():
                    if (mask is None) == masked:
                        continue
                    m = np.zeros((), bool) if mask is None else mask
                    args = (params, x, init, m)
                    want = ref_fn(*jax.device_put(args, cpu))
                    got = test_fn(*jax.device_put(args, test_dev))
                    (v_got, aux_got), g_got = got
                    (v_want, aux_want), g_want = want
                    record = {"kind": "equality", "cell": cell, "setting": sname, "mask": pname}
                    ok = True
                    for part, a, w, tol in (("values", (v_got, aux_got), (v_want, aux_want), "outputs"),
                                            ("gradients", g_got, g_want, "gradients")):
                        la, lw = jax.tree.leaves(a), jax.tree.leaves(w)
                        errs = [float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
                                for u, v in zip(la, lw)]
                        close = all(bool(np.all(TOLERANCES[tol].close(u, v))) for u, v in zip(la, lw))
                        record[f"{part}_max_abs"] = max(errs)
                        ok = ok and close
                    record["ok"] = ok
                    emit(record)

# --------------------------------------------------------------------------------------------------
# Worker: timings of one peer over the shapes
# --------------------------------------------------------------------------------------------------


def pre_pad(x, mask):
    """Move each row's valid (post-padded) steps to the end."""
    t = x.shape[1]
    shift = t - mask.sum(1)
    idx = (np.arange(t)[None, :] - shift[:, None]) % t
    return np.take_along_axis(x, idx[:, :, None], axis=1), np.take_along_axis(mask, idx, axis=1)


def jaxmask_steps(x, y, h, use_cudnn, policy=None):
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import jaxmask as jm
    import peers

    f = x.shape[-1]
    rngs = nnx.Rngs(0)
    model = jm.nn.Sequential([
        jm.nn.Masking(0.0),
        jm.nn.LSTM(f, h, return_sequences=True, use_cudnn=use_cudnn, dtype_policy=policy, rngs=rngs),
        jm.nn.Dropout(0.5, rngs=rngs),
        jm.nn.Dense(h, 1, activation="sigmoid", dtype_policy=policy, rngs=rngs),
    ])
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    def loss_fn(model, x, y):
        y_pred, out_mask = model(x)
        return jm.masked_loss("binary_crossentropy", y, y_pred, mask=out_mask)

    return peers.nnx_steps(model, optimizer, loss_fn, jnp.asarray(x), jnp.asarray(y))


def bench_jaxmask(x, y, mask, h, reps, use_cudnn, policy=None):
    import peers

    return peers.time_steps(*jaxmask_steps(x, y, h, use_cudnn, policy), reps)


def precision_ab(shapes, rounds=5, reps=None):
    """float32 against mixed_bfloat16 for the jaxmask seed model (the scan: cuDNN takes float32 only),
    alternated in one process: per shape, the medians over rounds of each round's median, and the ratio."""
    sys.path.insert(0, str(HERE))
    import jax
    import peers

    out = []
    for shape in shapes:
        b, t, f, h = {**SHAPES, **DRY_SHAPES}[shape]
        x, y, mask = peers.make_data(b, t, f)
        n = reps or REPS[shape]
        steps = {p: jaxmask_steps(x, y, h, False, p) for p in ("float32", "mixed_bfloat16")}
        first = {}
        for p, (train, infer) in steps.items():
            t0 = time.perf_counter()
            train()
            first[p] = time.perf_counter() - t0
            infer()
        med = {p: {"train": [], "infer": []} for p in steps}
        for _ in range(rounds):
            for p, (train, infer) in steps.items():
                med[p]["train"].append(peers.median_time(train, n))
                med[p]["infer"].append(peers.median_time(infer, n))
        row = {"kind": "precision", "shape": shape, "backend": jax.default_backend()}
        for p in steps:
            row[p] = {"train_ms": float(np.median(med[p]["train"])) * 1e3,
                      "infer_ms": float(np.median(med[p]["infer"])) * 1e3, "first_call_s": first[p]}
        row["bf16_over_f32_train"] = row["mixed_bfloat16"]["train_ms"] / row["float32"]["train_ms"]
        row["bf16_over_f32_infer"] = row["mixed_bfloat16"]["infer_ms"] / row["float32"]["infer_ms"]
        emit(row)
        out.append(row)
    return out


def bench_torch(x, y, mask, h, reps, device):
    import torch

    import peers

    torch.manual_seed(0)
    f = x.shape[-1]
    lstm = torch.nn.LSTM(f, h, batch_first=True).to(device)
    drop, dense = torch.nn.Dropout(0.5), torch.nn.Linear(h, 1).to(device)
    opt = torch.optim.Adam(list(lstm.parameters()) + list(dense.parameters()), 1e-3)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y)[..., 0].to(device)
    mt = torch.from_numpy(mask).to(device)
    lengths = torch.from_numpy(mask.sum(1))  # pack_padded_sequence wants lengths on the CPU

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    def forward(train):
        drop.train(train)
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, lengths, batch_first=True, enforce_sorted=False)
        out, _ = lstm(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return torch.sigmoid(dense(drop(out)))[..., 0]

    def step():
        opt.zero_grad()
        p = forward(True).clamp(1e-7, 1 - 1e-7)
        loss = (-(yt * torch.log(p) + (1 - yt) * torch.log(1 - p)) * mt).sum() / mt.sum()
        loss.backward()
        opt.step()
        sync()

    def infer():
        with torch.no_grad():
            forward(False)
        sync()

    return peers.time_steps(step, infer, reps)


def timing_worker(peer, shapes, dry_run):
    sys.path.insert(0, str(HERE))
    import peers

    import jax

    if dry_run and peer.startswith("jaxmask-cudnn"):
        # no GPU: the reference LSTM stands in for cuDNN behind use_cudnn=True (same dispatch and roll)
        from jaxmask.functional import cudnn

        cudnn.cudnn_lstm_kernel = cudnn.reference_lstm_kernel
        cudnn._cuda_available = lambda: True
    meta = {"kind": "timing-meta", "peer": peer, "jax_backend": jax.default_backend(),
            "device": str(jax.devices()[0]), "device_kind": getattr(jax.devices()[0], "device_kind", "")}
    if peer == "torch-packed":
        import torch

        device = "cuda" if (torch.cuda.is_available() and not dry_run) else "cpu"
        meta.update(torch=torch.__version__, torch_device=device, cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    if peer == "keras3-jax":
        import keras

        meta.update(keras=keras.__version__, keras_backend=keras.backend.backend())
    emit(meta)
    table = DRY_SHAPES if dry_run else SHAPES
    for shape in shapes:
        b, t, f, h = table[shape]
        x, y, mask = peers.make_data(b, t, f)
        if peer == "jaxmask-cudnn-pre":
            y = pre_pad(y, mask)[0]
            x, mask = pre_pad(x, mask)
        reps = REPS[shape]
        t0 = time.perf_counter()
        try:
            if peer == "jaxmask-scan":
                first, train, infer = bench_jaxmask(x, y, mask, h, reps, False)
            elif peer.startswith("jaxmask-cudnn"):
                first, train, infer = bench_jaxmask(x, y, mask, h, reps, True)
            elif peer == "jaxmask-bf16":
                first, train, infer = bench_jaxmask(x, y, mask, h, reps, False, "mixed_bfloat16")
            elif peer == "torch-packed":
                first, train, infer = bench_torch(x, y, mask, h, reps, device)
            elif peer == "flax-nnx-rnn":
                first, train, infer = peers.bench_flax(x, y, mask, h, reps)
            elif peer == "keras3-jax":
                first, train, infer = peers.bench_keras(keras, x, y, mask, h, reps)
            else:
                raise SystemExit(f"unknown peer {peer!r}")
        except Exception as e:  # one shape's failure (e.g. out of memory) leaves the others
            emit({"kind": "timing", "peer": peer, "shape": shape, "error": f"{type(e).__name__}: {e}"[:500]})
            continue
        emit({"kind": "timing", "peer": peer, "shape": shape, "first_call_s": first, "train_ms": train * 1e3,
              "infer_ms": infer * 1e3, "train_gflops": peers.lstm_flops(b, t, f, h, True) / train / 1e9,
              "wall_s": time.perf_counter() - t0})


# --------------------------------------------------------------------------------------------------
# Parent: run the workers within the budget, write JSON and markdown
# --------------------------------------------------------------------------------------------------


def run_worker(args, timeout, env_extra=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    env.update(env_extra or {})
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(timeout, 1), cwd=ROOT)
        stdout, stderr, status = out.stdout, out.stderr, ("ok" if out.returncode == 0 else f"exit {out.returncode}")
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        status = f"timeout after {timeout:.0f} s"
    records = [json.loads(ln[len(RESULT):]) for ln in stdout.splitlines() if ln.startswith(RESULT)]
    tail = [ln for ln in (stderr or "").strip().splitlines() if ln.strip()][-3:]
    return records, {"args": args, "status": status, "wall_s": time.perf_counter() - t0,
                     **({"stderr_tail": tail} if status != "ok" else {})}


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def markdown(report):
    meta = report["meta"]
    title = "DRY RUN on CPU: checks the script, not a GPU" if meta["dry_run"] else meta["device"]
    lines = [f"# GPU benchmark ({title})",
             "", f"{meta['date']}, commit {meta['commit']}, `{meta['command']}`, {meta['wall_s']:.0f} s.", ""]
    eq = [r for r in report["records"] if r["kind"] == "equality"]
    bad = [r for r in eq if not r["ok"]]
    if eq:
        lines += [f"## Equality, {meta.get('test_device', '?')} vs {meta.get('reference_device', '?')} "
                  "(matmul precision highest, parity tolerances)", "",
                  f"{len(eq) - len(bad)} / {len(eq)} cases within tolerance; largest |diff| values "
                  f"{max(r['values_max_abs'] for r in eq):.2e}, "
                  f"gradients {max(r['gradients_max_abs'] for r in eq):.2e}.",
                  "", "| cell | cases | values max abs | gradients max abs | all ok |", "|---|---|---|---|---|"]
        for cell in CELLS:
            rs = [r for r in eq if r["cell"] == cell]
            if rs:
                lines.append(f"| {cell} | {len(rs)} | {max(r['values_max_abs'] for r in rs):.2e} | "
                             f"{max(r['gradients_max_abs'] for r in rs):.2e} | {all(r['ok'] for r in rs)} |")
        for r in bad:
            lines.append(f"- MISMATCH {r['cell']} / {r['setting']} / {r['mask']}: values {r['values_max_abs']:.2e}, "
                         f"gradients {r['gradients_max_abs']:.2e}")
        lines.append("")
    for r in report["records"]:
        if r["kind"] == "dispatch":
            lines += [f"Dispatch: `use_cudnn=\"auto\"` compiles to cuDNN on the test device: "
                      f"{r['auto_calls_cudnn_on_test_device']} (expected {r['expected_on_test_device']}); "
                      f"on the CPU: {r['auto_calls_cudnn_on_cpu']} (expected False).", ""]
    timings = [r for r in report["records"] if r["kind"] == "timing"]
    shapes = list(DRY_SHAPES if meta["dry_run"] else SHAPES)
    if timings:
        lines += ["## Timings (median ms; ratio = time / torch-packed's, < 1 is faster)", ""]
    for shape in shapes:
        rs = {r["peer"]: r for r in timings if r["shape"] == shape}
        if not rs:
            continue
        b, t, f, h = (DRY_SHAPES if meta["dry_run"] else SHAPES)[shape]
        torch_r = rs.get("torch-packed", {})
        lines += [f"### {shape}: B={b}, T={t}, F={f}, H={h}", "",
                  "| peer | train ms | vs torch | inference ms | vs torch | first call s | train GFLOP/s |",
                  "|---|---|---|---|---|---|---|"]
        for peer in PEERS:
            r = rs.get(peer)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {peer} | error: {r['error'][:80]} | | | | | |")
                continue

            def ratio(k, r=r):
                return f"{r[k] / torch_r[k]:.2f}" if k in torch_r else "-"

            lines.append(f"| {peer} | {r['train_ms']:.2f} | {ratio('train_ms')} | {r['infer_ms']:.2f} | "
                         f"{ratio('infer_ms')} | {r['first_call_s']:.2f} | {r['train_gflops']:.1f} |")
        lines.append("")
    notes = report["notes"]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU, reference kernel for cuDNN")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--budget-s", type=float, default=None, help="overall time limit (default 450, dry run 55)")
    ap.add_argument("--peers", nargs="+", default=PEERS, choices=PEERS)
    ap.add_argument("--skip-equality", action="store_true")
    ap.add_argument("--jobs", type=int, default=None, help="workers at once (default 1; dry run 2)")
    ap.add_argument("--precision-ab", nargs="*", metavar="SHAPE", choices=list(SHAPES) + list(DRY_SHAPES),
                    help="only time float32 against mixed_bfloat16 here, alternated (default shapes: seed large)")
    ap.add_argument("--ab-rounds", type=int, default=5, help="--precision-ab: alternated rounds")
    ap.add_argument("--ab-reps", type=int, default=None, help="--precision-ab: timed steps per round")
    ap.add_argument("--worker", choices=["equality", "timing"], help=argparse.SUPPRESS)
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"
    if args.precision_ab is not None:
        rows = precision_ab(args.precision_ab or ["seed", "large"], args.ab_rounds, args.ab_reps)
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"date": datetime.date.today().isoformat(), "commit": git_commit(), "command": " ".join(sys.argv)}
        path = args.out / f"precision-ab-{rows[0]['backend']}.json"
        path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        return 0
    if args.worker == "equality":
        return equality_worker(args.dry_run)
    if args.worker == "timing":
        return timing_worker(args.peer, list(DRY_SHAPES if args.dry_run else SHAPES), args.dry_run)

    args.jobs = args.jobs or (2 if args.dry_run else 1)
    start = time.perf_counter()
    budget = args.budget_s or (55.0 if args.dry_run else 450.0)
    dry = ["--dry-run"] if args.dry_run else []
    env = {"JAX_PLATFORMS": "cpu"} if args.dry_run else {}
    records, runs, notes = [], [], []
    if args.dry_run:
        notes.append("dry run: CPU only, tiny shapes, jax.experimental.rnn.lstm_ref stands in for cuDNN; "
                     "the figures check the script and say nothing about a GPU")
    jobs = [] if args.skip_equality else [("equality", ["--worker", "equality", *dry], 0.3)]
    peers = [p for p in args.peers if p not in REQUIRES or importlib.util.find_spec(REQUIRES[p]) is not None]
    for p in args.peers:
        if p not in peers:
            notes.append(f"{p} skipped: `{REQUIRES[p]}` is not importable here")
    share = 0.7 / max(len(peers), 1) if jobs else 1.0 / max(len(peers), 1)
    jobs += [(p, ["--worker", "timing", "--peer", p, *dry], share) for p in peers]
    def launch(job, timeout):
        name, wargs, _ = job
        extra = dict(env, KERAS_BACKEND="jax") if name == "keras3-jax" else env
        return name, *run_worker(wargs, timeout, extra)

    if args.jobs > 1:  # the dry run: CPU workers side by side (timings mean nothing there anyway)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(lambda j: launch(j, budget * j[2] * args.jobs), jobs))
    else:  # one worker at a time on the accelerator, each with its share of what is left
        done = []
        for i, job in enumerate(jobs):
            left = budget - (time.perf_counter() - start)
            done.append(launch(job, left * job[2] / sum(j[2] for j in jobs[i:])))
    for name, recs, run in done:
        records += recs
        runs.append(run)
        if run["status"] != "ok":
            tail = f" ({run['stderr_tail'][-1]})" if run.get("stderr_tail") else ""
            notes.append(f"{name}: {run['status']}{tail}")
    meta = {"dry_run": args.dry_run, "date": datetime.date.today().isoformat(), "commit": git_commit(),
            "command": "python benchmarks/gpu.py" + (" --dry-run" if args.dry_run else ""),
            "wall_s": time.perf_counter() - start, "python": sys.version.split()[0]}
    for r in records:
        if r["kind"] == "equality-meta":
            meta.update(test_device=r["test_device"], reference_device=r["reference_device"], eq_shape=r["shape"])
        if r["kind"] == "timing-meta":
            meta.setdefault("device", f"{r['device_kind'] or r['device']} ({r['jax_backend']})")
            meta.setdefault("peer_meta", {})[r["peer"]] = r
    meta.setdefault("device", "unknown")
    report = {"meta": meta, "records": [r for r in records if not r["kind"].endswith("-meta")], "runs": runs,
              "notes": notes}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu-dry-run" if args.dry_run else "gpu"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    eq = [r for r in report["records"] if r["kind"] == "equality"]
    dispatch = [r for r in report["records"] if r["kind"] == "dispatch"]
    dispatch_ok = all(r["auto_calls_cudnn_on_test_device"] == r["expected_on_test_device"]
                      and not r["auto_calls_cudnn_on_cpu"] for r in dispatch)
    complete = args.skip_equality or (runs and runs[0]["status"] == "ok" and dispatch)
    return 0 if complete and all(r["ok"] for r in eq) and dispatch_ok else 1


if __name__ == "__main__":
    sys.exit(main())
