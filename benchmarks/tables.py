"""Markdown tables for ``docs/benchmarks.md`` from ``benchmarks/results/*.json``.

  python -m benchmarks.tables          # prints every table whose JSON exists

``docs/benchmarks.md`` is this script's output, pasted: rerun it after
a benchmark to keep the two in step.
"""

from __future__ import annotations

import json
import math
import os

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _load(name: str) -> dict | None:
  path = os.path.join(RESULTS, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _mark(ok: bool) -> str:
  return "met" if ok else "**missed**"


def orthogonalize() -> str | None:
  d = _load("orthogonalize.json")
  if d is None:
    return None
  by = {(r["width"], r["method"]): r for r in d["trees"]["rows"]}
  rows = []
  for w in sorted({r["width"] for r in d["trees"]["rows"]}):
    peer, ns = by[(w, "optax_contrib_muon_ns")], by[(w, "ours_jordan_ns")]
    ours = by[(w, "ours_default")]
    rows.append([
        w, f"{peer['median_s']:.3f}", f"{ns['median_s']:.3f}", f"{ours['median_s']:.3f}",
        f"{ours['speedup_vs_optax']:.2f}x",
        f"{peer['rel_fro_to_UVt']:.3f} / {ours['rel_fro_to_UVt']:.3f}",
        f"{peer['fraction_of_matmul']:.0%} / {ns['fraction_of_matmul']:.0%}",
    ])
  t = d["targets"]
  speed_ok = t["default_speedup_vs_optax"] >= t["default_speedup_target"]
  share_ok = t["standard_ns_fraction_of_matmul"] >= t["standard_ns_fraction_target"]
  head = (f"Orthogonalizing a 4-layer GPT tree (qkv, attention-out, mlp-in, mlp-out), "
          f"{d['device']}, jax {d['jax']}, optax {d['optax']}, medians of "
          f"`{d['command']}`; plain matmul {d['matmul']['flop_per_s'] / 1e9:.0f} GFLOP/s.\n\n")
  table = _table(
      ["width", "optax.contrib.muon NS (s)", "ours, same coeffs (s)", "ours, default (s)",
       "speedup (default)", "rel. Frobenius error to UV^T (optax / ours)",
       "share of matmul FLOP/s (optax / ours NS)"], rows)
  foot = (f"\n\nTargets: width-{t['width']} speedup >= {t['default_speedup_target']}x: "
          f"{t['default_speedup_vs_optax']:.2f}x, {_mark(speed_ok)} (error not worse: "
          f"{t['default_error_not_worse']}); standard Newton–Schulz >= "
          f"{t['standard_ns_fraction_target']:.0%} of matmul FLOP/s: "
          f"{t['standard_ns_fraction_of_matmul']:.0%}, {_mark(share_ok)}.")
  return head + table + foot


def sharding() -> str | None:
  d = _load("sharding.json")
  if d is None:
    return None
  by = {(r["optimizer"], r["width"], r["depth"], r["mesh"]): r for r in d["rows"]}
  rows = []
  for (opt, w, depth, mesh), ours in by.items():
    if opt != "ours":
      continue
    peer, scan = by.get(("optax", w, depth, mesh)), by.get(("optax-scan", w, depth, mesh))
    if peer is None or peer.get("error"):
      why = (peer or {}).get("error", "not run").split(":")[0]
      peer_cells = [why, "", "", ""]
    else:
      peer_cells = [peer["collectives"], scan["in_loop"] if scan else "",
                    f"{peer['bytes_over_matrices']:.2f}", f"{peer['flops_over_ideal']:.2f}"]
    x = ours["exchange"]
    rows.append([w, depth, mesh, ours["collectives"], ours["in_loop"],
                 f"{ours['bytes_over_matrices']:.2f}", f"{ours['flops_over_ideal']:.2f}",
                 f"{ours['plan_imbalance']:.3f}",
                 f"{x['bfloat16']['bytes_over_matrices']:.3f}",
                 f"{x['float32']['rel_err']:.1e} / {x['bfloat16']['rel_err']:.1e}", *peer_cells])
  m = d["meta"]
  head = (f"One update on {m['devices']} simulated CPU devices, {m['sharding']}, from the "
          f"compiled HLO (exact). Bytes: summed per-device collective output over the "
          f"matrices' bytes. Flops: per-device flops over single-device flops / 8, by XLA's "
          f"cost analysis, which counts a loop body once: on CPU ours orthogonalizes a "
          f"stack's matrices one at a time in a loop, so its single-device figure sees one "
          f"matrix per shape and its HLO flops read about depth times too high. optax's "
          f"in-loop count is with its Newton–Schulz loop kept rolled. Plan: the busiest "
          f"device's planned flops over the ideal share; at depth 4 the HLO figure counts "
          f"both branches of the `lax.cond` that lets devices holding only padding skip "
          f"the work, so the plan is what runs. Bytes (bf16): ours with `exchange_dtype="
          f"jnp.bfloat16`. Error: ours run once, with the float32 / bfloat16 exchange, "
          f"against the single-device update: {m['exchange_error']}. `{m['command']}`.\n\n")
  return head + _table(["width", "depth", "mesh", "ours: collectives", "in loop", "bytes",
                        "flops (HLO)", "flops (plan)", "bytes (bf16)", "error (f32 / bf16)",
                        "optax: collectives", "in loop", "bytes", "flops"], rows)


def _best_rows(section: dict) -> list[list]:
  return [[opt, n, f"2^{b['log2_lr']:.0f}", f"{b['val_loss']:.4f}", f"{b['output_norm']:.3g}",
           f"{b['log2_output_norm']:.2f}"]
          for opt, by_size in section["best"].items() for n, b in by_size.items()]


def lr_transfer() -> str | None:
  d = _load("lr_transfer.json")
  if d is None:
    return None
  if "runs" in d:  # written before the depth sweep: the width sweep alone
    d = {"width": d}
  parts = []
  if "width" in d:
    w = d["width"]
    c, t = w["config"], w["targets"]
    spread = ", ".join(
        f"{o} {t[o]['best_lr_spread_log2']:.0f} / {t[o]['output_norm_spread_log2']:.2f}"
        for o in t if o != "summary")
    s = t["summary"]
    parts.append(
        f"Best learning rate per width, {c['depth']}-layer char GPT on "
        f"{os.path.basename(c['data'])}, {c['steps']} steps of {c['batch']}x{c['seq']} "
        f"tokens, grid of powers of 2 ({c['points']} points centred on each default, "
        f"extended past an edge holding the best); {w['machine']['device']}; "
        f"`{w['command']}`.\n\n"
        + _table(["optimizer", "width", "best lr", "val loss", "output norm RMS->inf", "log2"],
                 _best_rows(w))
        + f"\n\nSpread across widths of log2 best lr / log2 output norm: {spread}. Targets: "
        f"Scion's best lr within one power of 2 at every width: "
        f"{_mark(s['scion_best_lr_within_one_power_of_2'])}; AdamW's moves: "
        f"{_mark(s['adamw_best_lr_moves'])}; Scion's output norm within 0.5 in log2: "
        f"{_mark(s['scion_output_norm_within_half_log2'])}.")
  if "depth" in d:
    p = d["depth"]
    c, t = p["config"], p["targets"]
    spread = ", ".join(
        f"{o} {t[o]['best_lr_spread_log2']:.0f} / {t[o]['output_norm_spread_log2']:.2f}"
        for o in t if o != "summary")
    edge = "; ".join(f"{o} at depth {', '.join(t[o]['best_at_grid_edge'])}"
                     for o in t if o != "summary" and t[o]["best_at_grid_edge"])
    s = t["summary"]
    parts.append(
        f"Best learning rate per depth, width-{c['width']} char GPT on "
        f"{os.path.basename(c['data'])}, {c['steps']} steps of {c['batch']}x{c['seq']} "
        f"tokens, the same grids; {p['machine']['device']}; `{p['command']}`.\n\n"
        + _table(["optimizer", "depth", "best lr", "val loss", "output norm RMS->inf", "log2"],
                 _best_rows(p))
        + f"\n\nSpread across depths of log2 best lr / log2 output norm: {spread}"
        + (f" (best at the edge of what was tried: {edge})" if edge else "")
        + ". Targets: Scion's best lr within one power of 2 at every depth: "
        f"{_mark(s['scion_best_lr_within_one_power_of_2'])}; Scion's output norm within 0.5 "
        f"in log2: {_mark(s['scion_output_norm_within_half_log2'])}; AdamW's spread is "
        f"reported, not a target.")
  return "\n\n".join(parts) or None


def convergence() -> str | None:
  d = _load("convergence.json")
  if d is None or "goal" not in d:
    return None
  c, t, g = d["config"], d["target"], d["goal"]
  times = {k: v["median_s"] for k, v in d["step_time"].items()}

  def cells(x):
    s = x["steps_to_target"]
    return ["not reached" if s is None else f"{s:.0f}",
            "-" if s is None else f"{x['step_ratio']:.2f}",
            "-" if s is None else f"{x['wall_ratio']:.2f}"]

  rows = []
  for opt in c["optimizers"]:
    mine = [x for x in d["to_target"] if x["label"] == opt]
    if not mine:
      continue
    top = min(mine, key=lambda x: x["val_loss"])
    lrs = ", ".join(f"{x['lr']:.3g}: {x['val_loss']:.3f}" for x in sorted(mine,
                                                                           key=lambda x: x["lr"]))
    rows.append([opt, f"{top['lr']:.3g}", f"{top['val_loss']:.4f}", *cells(top),
                 f"{1e3 * times[opt]:.0f}", lrs])
  head = (f"GPT width {c['width']}, depth {c['depth']}, {c['heads']} heads, "
          f"{c['batch']}x{c['seq']} tokens per step, {c['steps']} steps ({c['schedule']}), on "
          f"{os.path.basename(c['data'])}, evaluated every {c['eval_every']} steps (crossings "
          f"interpolated). Each optimizer: {c['points']} learning rates, powers of 2 around "
          f"the example's default before this sweep, extended past a winning edge (up to "
          f"{c['extend']}); hidden radius 3, output radius 10; init: "
          + ", ".join(f"{k} {v}" for k, v in c["init"].items()) + ". Target: AdamW's "
          f"best final validation loss, {t['val_loss']:.4f} (lr {t['lr']:.3g}). Wall-clock = "
          f"steps x each optimizer's median step time, timed interleaved in one process; "
          f"{d['machine']['device']}; `{d['command']}`.\n\n")
  table = _table(["optimizer", "best lr", "final val loss", "steps to target", "x AdamW steps",
                  "x AdamW wall-clock", "step (ms)", "final val loss per lr"], rows)
  variants = [(r, x) for r, x in zip(d["runs"], d["to_target"], strict=True)
              if x["label"] not in c["optimizers"]]
  if variants:
    table += ("\n\nScion's variants, then follow-ups from its best run so far, then our Muon "
              "from Flax's init (in the order run):\n\n") + _table(
        ["run", "lr", "beta", "hidden radius", "output radius", "decay", "init", "steps",
         "final val loss", "steps to target", "x AdamW steps", "x AdamW wall-clock"],
        [[x["label"], f"{x['lr']:.3g}",
          r["beta"] or (0.95 if r["optimizer"] in ("muon", "optax_muon") else 0.9),
          f"{r['hidden_radius']:g}",
          f"{r['output_radius']:g}", f"{r['decay_frac']:.0%}",
          r.get("init") or c["init"][r["optimizer"]], x["steps"], f"{x['val_loss']:.4f}",
          *cells(x)] for r, x in variants])
  sr, wr = g["scion_steps_ratio"], g["scion_wall_ratio"]
  foot = (f"\n\nGoal: Scion (its fastest run) reaches the target in <= 0.67x AdamW's steps: "
          f"{'not reached' if sr is None else f'{sr:.2f}'}, {_mark(g['scion_steps_met'])}; in "
          f"<= 0.75x its wall-clock: {'not reached' if wr is None else f'{wr:.2f}'}, "
          f"{_mark(g['scion_wall_met'])}.")
  return head + table + foot


def step_overhead() -> str | None:
  d = _load("step_overhead.json")
  if d is None:
    return None
  c = d["config"]
  rows = []
  for name, r in d["optimizers"].items():
    rows.append([name, f"{r['step_s']:.2f}", f"{r['step_over_adamw']:.3f}",
                 f"{r['step_cpu_over_adamw']:.3f}", f"{r['update_s']:.3f}"])
  head = (f"Full training step (forward, backward, update in one jit) of the GPT trainer, "
          f"width {c['width']}, depth {c['depth']}, seq {c['seq']}, batch {c['batch']} "
          f"({c['n_params'] / 1e6:.1f}M params), medians of {c['reps']} interleaved rounds, "
          f"{d['device']} ({d['cpu_count']} cores, load average {d['load_average_1m']:.1f}); "
          f"`{d['command']}`.\n\n")
  table = _table(["optimizer", "step (s)", "step / adamw", "CPU time / adamw",
                  "update alone (s)"], rows)
  t, f, b = d["targets"], d["flops"], d["bounds"]
  foot = "\n\nTargets: " + "; ".join(
      f"{k.replace('_over_', ' / ')} <= {v['target']}: {v['value']:.3f}, {_mark(v['met'])}"
      for k, v in t.items())
  foot += (f". Newton–Schulz is {f['lmo_ours_over_fwd_bwd']:.1%} of a step's flops for ours "
           f"and {f['lmo_optax_over_fwd_bwd']:.1%} for optax, so even an update as cheap as "
           f"AdamW's gives scion / optax_muon = "
           f"{b['scion_over_optax_muon_if_scion_cost_as_adamw']:.3f}: 0.85 would need the "
           f"forward and backward pass in {b['fwd_bwd_s_at_most_for_0.85']:.1f} s "
           f"(measured {b['fwd_bwd_s_measured']:.1f} s).")
  return head + table + foot


def stability() -> str | None:
  d = _load("stability.json")
  if d is None:
    return None
  c = d["config"]
  return (f"Constrained `scion` on the demo GPT (width {c['width']}, depth {c['depth']}; radii "
          f"{c['hidden_radius']:g} and {c['output_radius']:g}, lr {c['lr']:.3g}, the decay over "
          f"{c['decay_frac']:.0%} of the steps; `{d['command']}`) for "
          f"{d['steps']} steps, checked at {d['n_evals']} evaluations: no NaN or Inf "
          f"({d['n_train_losses_checked']} train losses and every parameter), every leaf's "
          f"norm at most its radius x (1 + {d['tol']:g}): largest norm / radius "
          f"{d['max_ratio']:.7f} (at initialization, on the sphere), "
          f"{len(d['violations'])} violations, final validation loss "
          f"{d['final_val_loss']:.4f} (unigram {d['unigram']:.4f}); "
          f"{'passed' if d['ok'] else '**failed**'}.")


def drop() -> str | None:
  d = _load("drop.json")
  if d is None:
    return None
  u, s, t = d["update"], d["step"], d["to_target"]
  head = (f"Drop-Muon on {d['device']} (load average {d['load_average_at_start'][0]:.0f} at "
          f"the start), medians of interleaved rounds in one process; `{d['command']}`.\n\n")
  m = d.get("mesh_update", {"by_axis_type": {}})  # files written before it have none
  later = [(what, part["command"]) for what, part in (("update", u), ("simulated-device", m))
           if "command" in part]  # measured again in a later run of that part alone
  if later:
    head = head[:-3] + "".join(f"; the {w} rows: `{c}`" for w, c in later) + ".\n\n"
  mesh = [[f"... on {m['devices']} simulated devices (`{m['mesh']}`, {at}), process CPU time",
           f"{r['cpu_s_per_update']['keep_prob=1']:.3f} s",
           f"{r['cpu_s_per_update']['keep_prob=0.5']:.3f} s", f"{r['ratio']:.2f}"]
          for at, r in m["by_axis_type"].items()]
  cost = _table(
      ["what", "full", "dropped", "ratio"],
      [[f"`ol.scion` update, width {u['width']}, depth {u['depth']}, keep_prob 0.5 vs 1",
        f"{u['seconds_per_update']['keep_prob=1']:.3f} s",
        f"{u['seconds_per_update']['keep_prob=0.5']:.3f} s", f"{u['ratio']:.2f}"]]
      + mesh
      + [[f"example step, width {s['width']}, depth {s['depth']}, batch {s['batch']}x{s['seq']},"
        f" `--drop` (mean over the cutoffs)", f"{s['median_s']['full']:.3f} s",
        f"{s['drop_mean_s']:.3f} s", f"{s['ratio']:.2f}"]]
      + [[f"... cutoff {c}", "", f"{s['median_s'][f'cut={c}']:.3f} s", f"{r:.2f}"]
         for c, r in s["ratio_by_cut"].items()])
  c = t["config"]
  rows = []
  for name, r in t["runs"].items():
    rows.append([name, "not reached" if r["steps_to_target"] is None
                 else f"{r['steps_to_target']:.0f}",
                 "-" if r["train_s_to_target"] is None else f"{r['train_s_to_target']:.1f}",
                 f"{r['val_loss']:.4f}", f"{r['train_s_total']:.1f}"])
  mid = (f"\n\nTo the full run's validation loss at {t['target']['full_run_step']} of "
         f"{c['steps']} steps ({t['target']['val_loss']:.4f}), `scion`, width {c['width']}, "
         f"depth {c['depth']}, batch {c['batch']}x{c['seq']} (training seconds: logged "
         f"throughput, compiles and evaluations left out):\n\n")
  target = _table(["run", "steps to target", "training s to target", "final val loss",
                   "training s (all steps)"], rows)
  return head + cost + mid + target


def adaptive_batch() -> str | None:
  d = _load("adaptive_batch.json")
  if d is None:
    return None
  c = d["config"]
  rows = []
  for label, r in d["rows"].items():
    rows.append([label, "not reached" if r["tokens_to_target"] is None
                 else f"{r['tokens_to_target']:,.0f}",
                 "-" if r["opt_steps_to_target"] is None else f"{r['opt_steps_to_target']:.0f}",
                 f"{r['final_val_loss']:.4f}", r["opt_steps_total"],
                 f"{r['mean_batch_micro']:.2f}"])
  head = (f"`scion` on the GPT trainer, width {c['width']}, depth {c['depth']}, micro-batch "
          f"{c['micro']}x{c['seq']} tokens, budget {c['micro_batches']} micro-batches for every "
          f"run, at most {c['max_micro_batches']} per step; target: the worst final validation "
          f"loss, {d['target']:.4f}; {d['device']}; `{d['command']}`.\n\n")
  return head + _table(["run", "tokens to target", "optimizer steps to target",
                        "final val loss", "optimizer steps", "mean batch (micro-batches)"], rows)
def _digits_init(init: str) -> str:
  return {"flax": "the Flax init", "rms": "`ol.init_params`",
          "radius": "`ol.init_params(..., scale=\"radius\")`"}.get(
              init, "`ol.init_params` (on each norm sphere)")  # recorded before 0.2.0: "scion"


def digits() -> str | None:
  d = _load("digits.json")
  if d is None:
    return None
  rows = []
  for r in d["results"].values():
    per = ", ".join(f"{lr:g}: {100 * a:.1f}" for lr, a in zip(r["lrs"], r["test_acc_mean"],
                                                               strict=True))
    edge = " (grid edge)" if r["best_lr"] in (r["lrs"][0], r["lrs"][-1]) else ""
    rows.append([r["model"], r["optimizer"], f"{r['best_lr']:g}{edge}",
                 f"{100 * r['best_test_acc']:.2f}", per])
  radii = "its default radii" if isinstance(d["radii"], str) else ", ".join(
      f"{k}={v:g}" for k, v in d["radii"].items())
  head = (f"Test accuracy (%) on scikit-learn's 8x8 digits (20% held out), {d['steps']} steps "
          f"of batch {d['batch']}, mean of {d['seeds']} seeds, each optimizer at the best of "
          f"its own learning-rate grid; Scion with `ol.infer_rules` at {radii} from "
          f"{_digits_init(d['scion_init'])}, AdamW from the Flax init; {d['device']};"
          f" `{d['command']}`.\n\n")
  table = _table(["model", "optimizer", "best lr", "test acc", "test acc per lr"], rows)
  gaps = d["adamw_minus_scion_points"]
  foot = "\n\nTarget: Scion within 0.5 points of AdamW: " + "; ".join(
      f"{m} AdamW minus Scion {g:+.2f}, {_mark(g <= 0.5)}" for m, g in gaps.items()) + "."
  return head + table + foot


GPU_MISSING = ("No GPU figures yet: no accelerator has run `benchmarks/gpu.sh`. On a machine "
               "with a GPU, `bash benchmarks/gpu.sh` (about 8 minutes on one H200; `PYTHON=...` "
               "picks the interpreter, `DATA=...` a text file for the convergence part) writes "
               "`benchmarks/results/gpu/*.json`; then rerun `python -m benchmarks.tables`.")


def _gpu_polar(d: dict) -> str:
  rows = d["rows"]
  configs = list(dict.fromkeys((r["impl"], r["method"], r["setting"]) for r in rows))
  conds = sorted({r["cond"] for r in rows})
  shapes = list(dict.fromkeys("x".join(map(str, r["shape"])) for r in rows))

  def worst(cfg, key, **match):
    sel = [r for r in rows if (r["impl"], r["method"], r["setting"]) == cfg
           and all(r[k] == v for k, v in match.items())]
    if any(not r["finite"] for r in sel):
      return None
    return max(r[key] for r in sel)

  def err(cfg, cond):
    e, rnd = worst(cfg, "rel_fro", cond=cond), worst(cfg, "rounding_rel_fro", cond=cond)
    return "**NaN/Inf**" if e is None else f"{e:.3f} ({rnd:.0e})"

  def speed(cfg, shape):
    sel = [r for r in rows if (r["impl"], r["method"], r["setting"]) == cfg
           and "x".join(map(str, r["shape"])) == shape]
    t = sorted(r["median_s"] for r in sel)[len(sel) // 2]
    f = sel[0]["flops"] / t
    return f"{t * 1e6:.0f} ({f / 1e12:.1f})"

  def name(cfg):
    impl, method, setting = cfg
    who = "optax.contrib" if impl == "optax_contrib" else "ours"
    return f"{who} {method.replace('_newton_schulz', '').replace('newton_schulz', 'standard')}"

  acc = _table(["polar", "setting"] + [f"cond {c:.0e}".replace("e+0", "e") for c in conds],
               [[name(c), c[2]] + [err(c, k) for k in conds] for c in configs])
  ex = {impl: {r["cond"]: r["exact_arith_rel_fro"] for r in rows if r["impl"] == impl}
        for impl in ("ours", "optax_contrib")}
  exact = "; ".join(
      f"{'ours (polar_express x 5)' if i == 'ours' else 'optax (jordan x 5)'} "
      + ", ".join(f"{v:.3f}" for _, v in sorted(ex[i].items())) for i in ex if ex[i])
  speed_t = _table(["polar", "setting"] + shapes,
                   [[name(c), c[2]] + [speed(c, s) for s in shapes] for c in configs])
  mm = ", ".join(f"{k} {v / 1e12:.1f}" for k, v in d["matmul"]["flop_per_s"].items())
  bad = d.get("nonfinite", [])

  def seconds(cfg, shape):
    sel = sorted(r["median_s"] for r in rows if (r["impl"], r["method"], r["setting"]) == cfg
                 and "x".join(map(str, r["shape"])) == shape)
    return sel[len(sel) // 2]

  def gram_over_standard(setting, shape):
    return (seconds(("ours", "gram_newton_schulz", setting), shape)
            / seconds(("ours", "newton_schulz", setting), shape))

  gram = "; ".join(
      f"{setting}: " + ", ".join(f"{sh} {gram_over_standard(setting, sh):.1f}x" for sh in shapes)
      for setting in d["settings"] if ("ours", "gram_newton_schulz", setting) in configs)
  return (f"Polar factor of float32 `U diag(s) V^T` (singular values log-spaced over the "
          f"condition number), shapes {', '.join(shapes)}; {d['precision_note']}. "
          f"`{d['command']}`.\n\nRelative Frobenius error to the exact polar factor (float64 "
          f"SVD), worst over the shapes, and in brackets the part rounding adds to the same "
          f"iteration in exact arithmetic:\n\n{acc}\n\nExact-arithmetic error per condition "
          f"number: {exact}. Non-finite results: {len(bad)}.\n\nMedian microseconds per call "
          f"(TFLOP/s executed) per shape; a {d['matmul']['size']}^2 matmul runs at {mm} "
          f"TFLOP/s:\n\n{speed_t}\n\nOurs, Gram Newton–Schulz's time over the standard "
          f"iteration's: {gram}.")


def _gpu_step(d: dict) -> str:
  c, f = d["config"], d["flops"]
  chained = "chain" in c  # files written before the chained update timing have no "chain"
  fb = d["fwd_bwd_s"]
  rows = [[n, f"{r['step_s'] * 1e3:.1f}", "-" if r["step_over_adamw"] is None
           else f"{r['step_over_adamw']:.2f}", f"{(r['step_s'] - fb) * 1e3:.1f}"]
          + ([f"{r['update_s'] * 1e3:.2f}"] if chained else [])
          for n, r in d["optimizers"].items()]
  header = ["optimizer", "step (ms)", "step / adamw", "step - fwd_bwd (ms)"]
  if chained:
    header.append(f"update alone (ms, {c['chain']} chained in one jit)")
    rate = (f"{f['fwd_bwd_fraction_of_matmul']:.0%} of a 1024^2 matmul's "
            f"{f['matmul_flop_per_s'] / 1e12:.1f} TFLOP/s")
    update = ""
  else:
    rate = f"{f['fwd_bwd_flop_per_s'] / 1e12:.1f} TFLOP/s"
    adam = d["optimizers"].get("adamw")
    update = (" Not shown: this file's `update_s`, one separately jitted call per update, "
              "measured dispatch and transfer rather than the update"
              + (f" (AdamW's read {adam['update_s'] * 1e3:.1f} ms, against "
                 f"{(adam['step_s'] - fb) * 1e3:.1f} ms for its whole share of the step)"
                 if adam else "") + "; the script now chains updates inside one jit.")
  return (f"Training step of the GPT trainer, width {c['width']}, depth {c['depth']}, heads "
          f"{c['heads']}, context {c['seq']}, batch {c['batch']} ({c['n_params'] / 1e6:.1f}M "
          f"params, float32, {c['batch'] * c['seq']} tokens), medians of {c['reps']} "
          f"interleaved rounds; forward and backward alone {fb * 1e3:.1f} ms ({rate}). "
          f"Newton–Schulz FLOPs over a step's: ours {f['lmo_ours_over_fwd_bwd']:.1%}, optax "
          f"{f['lmo_optax_over_fwd_bwd']:.1%}.{update} `{d['command']}`.\n\n"
          + _table(header, rows))


def _gpu_convergence(d: dict) -> str:
  c = d["config"]
  rows = []
  for x in d.get("to_target", []):
    s = x["steps_to_target"]
    rows.append([x["label"], _lr(x["lr"]), x["steps"], f"{x['val_loss']:.4f}",
                 "not reached" if s is None else f"{s:.0f}",
                 "-" if s is None else f"{x['step_ratio']:.2f}",
                 "-" if s is None else f"{x['wall_ratio']:.2f}"])
  times = ", ".join(f"{k} {v['median_s'] * 1e3:.1f} ms" for k, v in d["step_time"].items())
  if "tuned" in c:
    settings = "; ".join(
        f"{o} from the {c['init'][o]} init, radii {g['hidden_radius']:g} / "
        f"{g['output_radius']:g}, decay over {g['decay_frac']:.0%}" if o == "scion"
        else f"{o} from the {c['init'][o]} init, decay over {g['decay_frac']:.0%}"
        for o, g in c["tuned"].items() if o in c["optimizers"])
  else:
    settings = ("hidden radius 3, output radius 10, the decay over 30% of the steps; init: "
                + ", ".join(f"{o} {c['init'][o]}" for o in c["optimizers"]))
  edge = [o for o, g in d.get("goal", {}).get("per_optimizer", {}).items()
          if g["best_lr_at_grid_edge"]]
  if d.get("goal", {}).get("adamw_best_lr_at_grid_edge"):
    edge.insert(0, "adamw")
  done = {(r["optimizer"], r["lr"]) for r in d["runs"]}
  centers = c["grid_center"]
  missing = [f"{o} {_lr(centers[o] * 2.0**k)}" for o in c["optimizers"]
             for k in range(-2, c["points"] - 2) if (o, centers[o] * 2.0**k) not in done]
  cut = "" if d.get("complete") else (
      " Cut at the time limit: the runs done so far" + (f" (not run: {', '.join(missing)})"
                                                        if missing else "") + ".")
  edge_s = f" Best at the edge of the runs done: {', '.join(edge)}." if edge else ""
  return (f"{', '.join(c['optimizers'])}; GPT width {c['width']}, depth {c['depth']}, heads "
          f"{c['heads']}, {c['batch']}x{c['seq']} tokens per step, {c['steps']} steps on "
          f"{os.path.basename(c['data'])}, {c['points']} learning rates each; {settings}. The "
          f"target is AdamW's best final validation loss; median step time: {times}.{cut}"
          f"{edge_s} `{d['command']}`.\n\n"
          + _table(["run", "lr", "steps", "final val loss", "steps to target", "x AdamW steps",
                    "x AdamW wall-clock"], rows))


def _lr(lr: float) -> str:
  """A learning rate: ``2^k`` when it is a power of 2, else 3 significant digits."""
  k = math.log2(lr)
  return f"2^{k:.0f}" if k == round(k) else f"{lr:.3g}"


def gpu() -> str:
  """The accelerator run of ``benchmarks/gpu.sh`` (``results/gpu/``), or why there is none."""
  found = {n: _load(f"gpu/{n}.json") for n in ("gpu_summary", "polar_accuracy",
                                                "step_overhead", "convergence")}
  if not any(found.values()):
    return GPU_MISSING
  s = found["gpu_summary"] or {}
  parts = ", ".join(f"{p['name']} {p['seconds']:.0f} s ({p['status']})" for p in s.get("parts", []))
  device = s.get("device") or next(d.get("device") or d["machine"]["device"]
                                   for d in found.values() if d)
  head = f"{device}, `bash benchmarks/gpu.sh`"
  if s:
    head += f" in {s['total_s']} s: {parts}"
  if s.get("toy"):
    head += ". Toy sizes: a check of the script, not figures"
  out = [head + "."]
  for key, render in (("polar_accuracy", _gpu_polar), ("step_overhead", _gpu_step),
                      ("convergence", _gpu_convergence)):
    if found[key] is not None:
      out.append(f"**{key}.** " + render(found[key]))
  return "\n\n".join(out)


def ablation() -> str | None:
  """``benchmarks/ablation.py``'s table (it writes ``results/ablation.md`` beside its JSON)."""
  d = _load("ablation.json")
  path = os.path.join(RESULTS, "ablation.md")
  if d is None or not os.path.exists(path):
    return None
  with open(path) as f:
    table = f.read().strip()
  c = d["config"]
  return (f"Constrained Scion, one change at a time from the RMS-preserving init on the cpu shape "
          f"(width {c['width']}, depth {c['depth']}, {c['batch']}x{c['seq']} tokens per step, "
          f"{c['steps']} steps on {os.path.basename(c['data'] or 'pydoc_data')}); each stage "
          f"starts from the best run before it; steps to AdamW's best final loss as a multiple "
          f"of AdamW's; {d['machine']['device']}; `{d['command']}`.\n\n{table}")


SECTIONS = {"orthogonalize": orthogonalize, "step_overhead": step_overhead,
            "sharding": sharding, "lr_transfer": lr_transfer, "convergence": convergence,
            "stability": stability, "digits": digits, "drop": drop, "ablation": ablation,
            "adaptive_batch": adaptive_batch, "gpu": gpu}


def main() -> None:
  for name, fn in SECTIONS.items():
    text = fn()
    if text is not None:
      print(f"### {name}\n\n{text}\n")


if __name__ == "__main__":
  main()
