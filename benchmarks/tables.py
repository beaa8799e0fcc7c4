"""Markdown tables for ``docs/benchmarks.md`` from ``benchmarks/results/*.json``, one renderer.

  python -m benchmarks.tables                          # prints every section whose JSON exists
  python -m benchmarks.tables --write docs/benchmarks.md   # refreshes the page's marked blocks

Every table is :func:`table` applied to rows and a tuple of :class:`Col`: a
header and how to read a row's cell. A section is a caption of computed facts
(configuration, device, command), its tables, and the targets met or missed.
What the numbers mean is written in the docs page itself, outside the blocks
this script writes: in ``docs/benchmarks.md`` each section sits between
``<!-- python -m benchmarks.tables: the "NAME" section -->`` and ``<!-- end of
the "NAME" section -->``, and ``--write`` replaces what is between them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

RESULTS = os.path.join(os.path.dirname(__file__), "results")


# -- the renderer ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Col:
  """One column: its header and its cell, ``fmt.format(value(row))`` (``none`` for None)."""

  header: str
  value: Callable[[Any], Any]
  fmt: str = "{}"
  none: str = "-"

  def cell(self, row) -> str:
    v = self.value(row)
    return self.none if v is None else self.fmt.format(v)


def table(rows: Iterable, cols: Sequence[Col]) -> str:
  """A markdown table: the columns' headers, then one line per row."""
  lines = ["| " + " | ".join(c.header for c in cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(c.cell(row) for c in cols) + " |" for row in rows]
  return "\n".join(lines)


def key(*path: str) -> Callable[[Any], Any]:
  """``row[path[0]][path[1]]...``, None where a step is missing."""
  def get(row):
    for k in path:
      if row is None:
        return None
      row = row.get(k)
    return row

  return get


def mark(ok: bool) -> str:
  return "met" if ok else "**missed**"


def lr(x: float) -> str:
  """A learning rate: ``2^k`` when it is a power of 2, else 3 significant digits."""
  k = math.log2(x)
  return f"2^{k:.0f}" if k == round(k) else f"{x:.3g}"


def _load(name: str) -> dict | None:
  path = os.path.join(RESULTS, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# -- orthogonalize -----------------------------------------------------------------------------

ORTHOGONALIZE = (
    Col("width", key("width")),
    Col("optax.contrib.muon NS (s)", key("optax", "median_s"), "{:.3f}"),
    Col("ours, same coeffs (s)", key("ns", "median_s"), "{:.3f}"),
    Col("ours, default (s)", key("ours", "median_s"), "{:.3f}"),
    Col("speedup (default)", key("ours", "speedup_vs_optax"), "{:.2f}x"),
    Col("rel. Frobenius error to UV^T (optax / ours)",
        lambda r: (r["optax"]["rel_fro_to_UVt"], r["ours"]["rel_fro_to_UVt"]),
        "{0[0]:.3f} / {0[1]:.3f}"),
    Col("share of matmul FLOP/s (optax / ours NS)",
        lambda r: (r["optax"]["fraction_of_matmul"], r["ns"]["fraction_of_matmul"]),
        "{0[0]:.0%} / {0[1]:.0%}"),
)


def orthogonalize() -> str | None:
  d = _load("orthogonalize.json")
  if d is None:
    return None
  by = {(r["width"], r["method"]): r for r in d["trees"]["rows"]}
  rows = [{"width": w, "optax": by[(w, "optax_contrib_muon_ns")], "ns": by[(w, "ours_jordan_ns")],
           "ours": by[(w, "ours_default")]} for w in sorted({w for w, _ in by})]
  t = d["targets"]
  speed_ok = t["default_speedup_vs_optax"] >= t["default_speedup_target"]
  share_ok = t["standard_ns_fraction_of_matmul"] >= t["standard_ns_fraction_target"]
  return (f"Orthogonalizing a 4-layer GPT tree (qkv, attention-out, mlp-in, mlp-out), "
          f"{d['device']}, jax {d['jax']}, optax {d['optax']}, medians of `{d['command']}`; "
          f"plain matmul {d['matmul']['flop_per_s'] / 1e9:.0f} GFLOP/s.\n\n"
          + table(rows, ORTHOGONALIZE)
          + f"\n\nTargets: width-{t['width']} speedup >= {t['default_speedup_target']}x: "
          f"{t['default_speedup_vs_optax']:.2f}x, {mark(speed_ok)} (error not worse: "
          f"{t['default_error_not_worse']}); standard Newton–Schulz >= "
          f"{t['standard_ns_fraction_target']:.0%} of matmul FLOP/s: "
          f"{t['standard_ns_fraction_of_matmul']:.0%}, {mark(share_ok)}.")


# -- sharding ----------------------------------------------------------------------------------


def _peer(r) -> list:
  """optax's cells: its counts, or why it has none (its error's first word) and blanks."""
  peer = r["optax"]
  if peer is None or peer.get("error"):
    return [(peer or {}).get("error", "not run").split(":")[0], "", "", ""]
  return [peer["collectives"], r["scan"]["in_loop"] if r["scan"] else "",
          f"{peer['bytes_over_matrices']:.2f}", f"{peer['flops_over_ideal']:.2f}"]


SHARDING = (
    Col("width", key("ours", "width")),
    Col("depth", key("ours", "depth")),
    Col("mesh", key("ours", "mesh")),
    Col("ours: collectives", key("ours", "collectives")),
    Col("in loop", key("ours", "in_loop")),
    Col("bytes", key("ours", "bytes_over_matrices"), "{:.2f}"),
    Col("flops (HLO)", key("ours", "flops_over_ideal"), "{:.2f}"),
    Col("bytes (bf16)", key("ours", "exchange", "bfloat16", "bytes_over_matrices"), "{:.3f}"),
    Col("error (f32 / bf16)", lambda r: (r["ours"]["exchange"]["float32"]["rel_err"],
                                         r["ours"]["exchange"]["bfloat16"]["rel_err"]),
        "{0[0]:.1e} / {0[1]:.1e}"),
    Col("optax: collectives", lambda r: _peer(r)[0]),
    Col("in loop", lambda r: _peer(r)[1]),
    Col("bytes", lambda r: _peer(r)[2]),
    Col("flops", lambda r: _peer(r)[3]),
)


def sharding() -> str | None:
  d = _load("sharding.json")
  if d is None:
    return None
  by = {(r["optimizer"], r["width"], r["depth"], r["mesh"]): r for r in d["rows"]}
  rows = [{"ours": r, "optax": by.get(("optax", *k)), "scan": by.get(("optax-scan", *k))}
          for (opt, *k), r in by.items() if opt == "ours"]
  m = d["meta"]
  return (f"One update on {m['devices']} simulated CPU devices, {m['sharding']}, from the "
          f"compiled HLO. Error: against the single-device update, {m['exchange_error']}. "
          f"`{m['command']}`.\n\n" + table(rows, SHARDING))


# -- lr_transfer -------------------------------------------------------------------------------


def _best_cols(size: str) -> tuple[Col, ...]:
  return (Col("optimizer", key("optimizer")), Col(size, key("n")),
          Col("best lr", key("log2_lr"), "2^{:.0f}"), Col("val loss", key("val_loss"), "{:.4f}"),
          Col("output norm RMS->inf", key("output_norm"), "{:.3g}"),
          Col("log2", key("log2_output_norm"), "{:.2f}"))


def _best_rows(section: dict) -> list[dict]:
  return [{"optimizer": opt, "n": n, **b} for opt, by_size in section["best"].items()
          for n, b in by_size.items()]


def _spread(t: dict) -> str:
  return ", ".join(f"{o} {t[o]['best_lr_spread_log2']:.0f} / {t[o]['output_norm_spread_log2']:.2f}"
                   for o in t if o != "summary")


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
    s = t["summary"]
    parts.append(
        f"Best learning rate per width, {c['depth']}-layer char GPT on "
        f"{os.path.basename(c['data'])}, {c['steps']} steps of {c['batch']}x{c['seq']} "
        f"tokens, grid of powers of 2 ({c['points']} points centred on each default, "
        f"extended past an edge holding the best); {w['machine']['device']}; "
        f"`{w['command']}`.\n\n" + table(_best_rows(w), _best_cols("width"))
        + f"\n\nSpread across widths of log2 best lr / log2 output norm: {_spread(t)}. "
        f"Targets: Scion's best lr within one power of 2 at every width: "
        f"{mark(s['scion_best_lr_within_one_power_of_2'])}; AdamW's moves: "
        f"{mark(s['adamw_best_lr_moves'])}; Scion's output norm within 0.5 in log2: "
        f"{mark(s['scion_output_norm_within_half_log2'])}.")
  if "depth" in d:
    p = d["depth"]
    c, t = p["config"], p["targets"]
    edge = "; ".join(f"{o} at depth {', '.join(t[o]['best_at_grid_edge'])}"
                     for o in t if o != "summary" and t[o]["best_at_grid_edge"])
    s = t["summary"]
    parts.append(
        f"Best learning rate per depth, width-{c['width']} char GPT on "
        f"{os.path.basename(c['data'])}, {c['steps']} steps of {c['batch']}x{c['seq']} "
        f"tokens, the same grids; {p['machine']['device']}; `{p['command']}`.\n\n"
        + table(_best_rows(p), _best_cols("depth"))
        + f"\n\nSpread across depths of log2 best lr / log2 output norm: {_spread(t)}"
        + (f" (best at the edge of what was tried: {edge})" if edge else "")
        + ". Targets: Scion's best lr within one power of 2 at every depth: "
        f"{mark(s['scion_best_lr_within_one_power_of_2'])}; Scion's output norm within 0.5 "
        f"in log2: {mark(s['scion_output_norm_within_half_log2'])}.")
  return "\n\n".join(parts) or None


# -- convergence -------------------------------------------------------------------------------

TO_TARGET = (  # a row of convergence.json's to_target
    Col("steps to target", key("steps_to_target"), "{:.0f}", "not reached"),
    Col("x AdamW steps", key("step_ratio"), "{:.2f}"),
    Col("x AdamW wall-clock", key("wall_ratio"), "{:.2f}"),
)
CONVERGENCE = (  # the best run of each optimizer's grid
    Col("optimizer", key("label")),
    Col("best lr", key("lr"), "{:.3g}"),
    Col("final val loss", key("val_loss"), "{:.4f}"),
    *TO_TARGET,
    Col("step (ms)", key("step_ms"), "{:.0f}"),
    Col("final val loss per lr", lambda x: ", ".join(f"{lr:.3g}: {v:.3f}" for lr, v in x["grid"])),
)
VARIANTS = (
    Col("run", key("label")),
    Col("lr", key("lr"), "{:.3g}"),
    Col("beta", key("beta")),
    Col("hidden radius", key("hidden_radius"), "{:g}"),
    Col("output radius", key("output_radius"), "{:g}"),
    Col("decay", key("decay_frac"), "{:.0%}"),
    Col("init", key("init")),
    Col("steps", key("steps")),
    Col("final val loss", key("val_loss"), "{:.4f}"),
    *TO_TARGET,
)
GPU_CONVERGENCE = (
    Col("run", key("label")),
    Col("lr", lambda x: lr(x["lr"])),
    Col("steps", key("steps")),
    Col("final val loss", key("val_loss"), "{:.4f}"),
    *TO_TARGET,
)


def convergence() -> str | None:
  d = _load("convergence.json")
  if d is None or "goal" not in d:
    return None
  c, t, g = d["config"], d["target"], d["goal"]
  rows = []
  for opt in c["optimizers"]:
    mine = sorted((x for x in d["to_target"] if x["label"] == opt), key=lambda x: x["lr"])
    if mine:
      rows.append({**min(mine, key=lambda x: x["val_loss"]),
                   "step_ms": 1e3 * d["step_time"][opt]["median_s"],
                   "grid": [(x["lr"], x["val_loss"]) for x in mine]})
  beta = {"muon": 0.95, "optax_muon": 0.95}  # the example's defaults when the sweep ran
  variants = [{**x, "beta": r["beta"] or beta.get(r["optimizer"], 0.9),
               **{k: r[k] for k in ("hidden_radius", "output_radius", "decay_frac")},
               "init": r.get("init") or c["init"][r["optimizer"]]}
              for r, x in zip(d["runs"], d["to_target"], strict=True)
              if x["label"] not in c["optimizers"]]
  sr, wr = g["scion_steps_ratio"], g["scion_wall_ratio"]
  return (f"GPT width {c['width']}, depth {c['depth']}, {c['heads']} heads, "
          f"{c['batch']}x{c['seq']} tokens per step, {c['steps']} steps ({c['schedule']}), on "
          f"{os.path.basename(c['data'])}, evaluated every {c['eval_every']} steps. Each "
          f"optimizer: {c['points']} learning rates, extended past a winning edge (up to "
          f"{c['extend']}); hidden radius 3, output radius 10; init: "
          + ", ".join(f"{k} {v}" for k, v in c["init"].items()) + ". Target: AdamW's "
          f"best final validation loss, {t['val_loss']:.4f} (lr {t['lr']:.3g}); "
          f"{d['machine']['device']}; `{d['command']}`.\n\n" + table(rows, CONVERGENCE)
          + ("\n\nThe other runs, in the order run:\n\n" + table(variants, VARIANTS)
             if variants else "")
          + f"\n\nGoal: Scion (its fastest run) reaches the target in <= 0.67x AdamW's steps: "
          f"{'not reached' if sr is None else f'{sr:.2f}'}, {mark(g['scion_steps_met'])}; in "
          f"<= 0.75x its wall-clock: {'not reached' if wr is None else f'{wr:.2f}'}, "
          f"{mark(g['scion_wall_met'])}.")


# -- step_overhead -----------------------------------------------------------------------------


STEP = (  # step_overhead.json on a CPU, seconds
    Col("optimizer", key("name")),
    Col("step (s)", key("step_s"), "{:.2f}"),
    Col("step / adamw", key("step_over_adamw"), "{:.3f}"),
    Col("CPU time / adamw", key("step_cpu_over_adamw"), "{:.3f}"),
    Col("update alone (s)", key("update_s"), "{:.3f}"),
)
GPU_STEP = (  # on an accelerator, milliseconds; the update alone only where chained
    Col("optimizer", key("name")),
    Col("step (ms)", lambda r: 1e3 * r["step_s"], "{:.1f}"),
    Col("step / adamw", key("step_over_adamw"), "{:.2f}"),
    Col("step - fwd_bwd (ms)", lambda r: 1e3 * r["step_minus_fwd_bwd_s"], "{:.1f}"),
)
GPU_UPDATE = Col("update alone (ms)", lambda r: 1e3 * r["update_s"], "{:.2f}")


def _update_note(d: dict) -> str:
  """How the file timed the update alone: chained in one jit, or one call per update."""
  if "chain" in d["config"]:
    return (f" Update alone: {d['config']['chain']} updates chained in one jitted call,"
            f" state donated.")
  if d["backend"] == "cpu":
    return " Update alone: one jitted call per update."
  adam = d["optimizers"].get("adamw")
  return (" Its `update_s` (one jitted call per update) measured dispatch and transfer more "
          "than the update" + (f": AdamW's read {adam['update_s'] * 1e3:.1f} ms against "
                               f"{adam['step_minus_fwd_bwd_s'] * 1e3:.1f} ms for its share of "
                               f"the step" if adam else "") + "; not shown.")


def step_overhead() -> str | None:
  d = _load("step_overhead.json")
  if d is None:
    return None
  c = d["config"]
  rows = [{"name": n, **r} for n, r in d["optimizers"].items()]
  t, f, b = d["targets"], d["flops"], d["bounds"]
  return (f"Full training step (forward, backward, update in one jit) of the GPT trainer, "
          f"width {c['width']}, depth {c['depth']}, seq {c['seq']}, batch {c['batch']} "
          f"({c['n_params'] / 1e6:.1f}M params), medians of {c['reps']} interleaved rounds, "
          f"{d['device']} ({d['cpu_count']} cores, load average {d['load_average_1m']:.1f}); "
          f"`{d['command']}`.{_update_note(d)}\n\n"
          + table(rows, STEP)
          + "\n\nTargets: " + "; ".join(
              f"{k.replace('_over_', ' / ')} <= {v['target']}: {v['value']:.3f}, {mark(v['met'])}"
              for k, v in t.items())
          + f". Newton–Schulz flops over a step's: ours {f['lmo_ours_over_fwd_bwd']:.1%}, "
          f"optax {f['lmo_optax_over_fwd_bwd']:.1%}; AdamW's step over optax_muon's: "
          f"{b['scion_over_optax_muon_if_scion_cost_as_adamw']:.3f}; scion / optax_muon <= "
          f"0.85 needs the forward and backward pass in at most "
          f"{b['fwd_bwd_s_at_most_for_0.85']:.1f} s (measured {b['fwd_bwd_s_measured']:.1f} s).")


# -- stability, drop, adaptive batch, digits, ablation -----------------------------------------


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


COST = (Col("what", key("what")), Col("full", key("full"), "{:.3f} s", ""),
        Col("dropped", key("dropped"), "{:.3f} s"), Col("ratio", key("ratio"), "{:.2f}"))
DROP_TARGET = (
    Col("run", key("name")),
    Col("steps to target", key("steps_to_target"), "{:.0f}", "not reached"),
    Col("training s to target", key("train_s_to_target"), "{:.1f}"),
    Col("final val loss", key("val_loss"), "{:.4f}"),
    Col("training s (all steps)", key("train_s_total"), "{:.1f}"),
)


def drop() -> str | None:
  d = _load("drop.json")
  if d is None:
    return None
  u, s, t = d["update"], d["step"], d["to_target"]
  head = (f"Drop-Muon on {d['device']} (load average {d['load_average_at_start'][0]:.0f} at "
          f"the start), medians of interleaved rounds in one process; `{d['command']}`")
  m = d.get("mesh_update", {"by_axis_type": {}})  # files written before it have none
  head += "".join(f"; the {what} rows: `{part['command']}`"  # parts measured again alone
                  for what, part in (("update", u), ("simulated-device", m)) if "command" in part)

  def full_dropped(sec: dict, key_full: str, key_drop: str) -> dict:
    return {"full": sec[key_full]["keep_prob=1"], "dropped": sec[key_drop]["keep_prob=0.5"]}

  cost = ([{"what": f"`ol.scion` update, width {u['width']}, depth {u['depth']}, keep_prob 0.5 "
            "vs 1", **full_dropped(u, "seconds_per_update", "seconds_per_update"),
            "ratio": u["ratio"]}]
          + [{"what": f"... on {m['devices']} simulated devices (`{m['mesh']}`, {at}), process "
              "CPU time", **full_dropped(r, "cpu_s_per_update", "cpu_s_per_update"),
              "ratio": r["ratio"]} for at, r in m["by_axis_type"].items()]
          + [{"what": f"example step, width {s['width']}, depth {s['depth']}, batch "
              f"{s['batch']}x{s['seq']}, `--drop` (mean over the cutoffs)",
              "full": s["median_s"]["full"], "dropped": s["drop_mean_s"], "ratio": s["ratio"]}]
          + [{"what": f"... cutoff {cut}", "full": None, "dropped": s["median_s"][f"cut={cut}"],
              "ratio": r} for cut, r in s["ratio_by_cut"].items()])
  c = t["config"]
  return (head + ".\n\n" + table(cost, COST)
          + f"\n\nTo the full run's validation loss at {t['target']['full_run_step']} of "
          f"{c['steps']} steps ({t['target']['val_loss']:.4f}), `scion`, width {c['width']}, "
          f"depth {c['depth']}, batch {c['batch']}x{c['seq']} (training seconds: logged "
          f"throughput, compiles and evaluations left out):\n\n"
          + table(({"name": n, **r} for n, r in t["runs"].items()), DROP_TARGET))


ADAPTIVE_BATCH = (
    Col("run", key("label")),
    Col("tokens to target", key("tokens_to_target"), "{:,.0f}", "not reached"),
    Col("optimizer steps to target", key("opt_steps_to_target"), "{:.0f}"),
    Col("final val loss", key("final_val_loss"), "{:.4f}"),
    Col("optimizer steps", key("opt_steps_total")),
    Col("mean batch (micro-batches)", key("mean_batch_micro"), "{:.2f}"),
)


def adaptive_batch() -> str | None:
  d = _load("adaptive_batch.json")
  if d is None:
    return None
  c = d["config"]
  return (f"`scion` on the GPT trainer, width {c['width']}, depth {c['depth']}, micro-batch "
          f"{c['micro']}x{c['seq']} tokens, budget {c['micro_batches']} micro-batches for every "
          f"run, at most {c['max_micro_batches']} per step; target: the worst final validation "
          f"loss, {d['target']:.4f}; {d['device']}; `{d['command']}`.\n\n"
          + table(({"label": k, **r} for k, r in d["rows"].items()), ADAPTIVE_BATCH))


DIGITS_INIT = {"flax": "the Flax init", "rms": "`ol.init_params`",
               "radius": "`ol.init_params(..., scale=\"radius\")`"}
DIGITS = (
    Col("model", key("model")),
    Col("optimizer", key("optimizer")),
    Col("best lr", lambda r: f"{r['best_lr']:g}"
        + (" (grid edge)" if r["best_lr"] in (r["lrs"][0], r["lrs"][-1]) else "")),
    Col("test acc", lambda r: 100 * r["best_test_acc"], "{:.2f}"),
    Col("test acc per lr", lambda r: ", ".join(
        f"{lr:g}: {100 * a:.1f}" for lr, a in zip(r["lrs"], r["test_acc_mean"], strict=True))),
)


def digits() -> str | None:
  d = _load("digits.json")
  if d is None:
    return None
  radii = "its default radii" if isinstance(d["radii"], str) else ", ".join(
      f"{k}={v:g}" for k, v in d["radii"].items())
  init = DIGITS_INIT.get(d["scion_init"], "`ol.init_params` (on each norm sphere)")  # pre-0.2.0
  return (f"Test accuracy (%) on scikit-learn's 8x8 digits (20% held out), {d['steps']} steps "
          f"of batch {d['batch']}, mean of {d['seeds']} seeds, each optimizer at the best of "
          f"its own learning-rate grid; Scion with `ol.infer_rules` at {radii} from {init}, "
          f"AdamW from the Flax init; {d['device']}; `{d['command']}`.\n\n"
          + table(d["results"].values(), DIGITS)
          + "\n\nTarget: Scion within 0.5 points of AdamW: " + "; ".join(
              f"{m} AdamW minus Scion {g:+.2f}, {mark(g <= 0.5)}"
              for m, g in d["adamw_minus_scion_points"].items()) + ".")


def _with_table(name: str) -> tuple[dict, str] | None:
  """``results/NAME.json`` and the Markdown table its script writes beside it, if both exist."""
  d, path = _load(f"{name}.json"), os.path.join(RESULTS, f"{name}.md")
  if d is None or not os.path.exists(path):
    return None
  with open(path) as f:
    return d, f.read().strip()


def ablation() -> str | None:
  """``benchmarks/ablation.py``'s table (it writes ``results/ablation.md`` beside its JSON)."""
  if (found := _with_table("ablation")) is None:
    return None
  d, ablation_table = found
  c = d["config"]
  return (f"Constrained Scion, one change at a time from the RMS-preserving init on the cpu shape "
          f"(width {c['width']}, depth {c['depth']}, {c['batch']}x{c['seq']} tokens per step, "
          f"{c['steps']} steps on {os.path.basename(c['data'] or 'pydoc_data')}); each stage "
          f"starts from the best run before it; steps to AdamW's best final loss as a multiple "
          f"of AdamW's; {d['machine']['device']}; `{d['command']}`.\n\n{ablation_table}")


def qk_clip() -> str | None:
  """``benchmarks/qk_clip.py``'s table (it writes ``results/qk_clip.md`` beside its JSON)."""
  if (found := _with_table("qk_clip")) is None:
    return None
  d, qk_table = found
  c = d["config"]
  return (f"Each optimizer at its best learning rate of the ablation and at {c['factor']:g}x it, "
          f"without and with QK-clip at `tau` = the largest attention logit the best-lr run "
          f"reached (cpu shape: width {c['width']}, depth {c['depth']}, {c['batch']}x{c['seq']} "
          f"tokens per step, {c['steps']} steps); the largest logit is measured at each "
          f"evaluation on the first validation batch; a spike is a logged training loss more "
          f"than {c['spike']:g} nats above the lowest of the {c['window']} logged before it; "
          f"{d['machine']['device']}; `{d['command']}`.\n\n{qk_table}\n\n"
          f"![largest attention logit and validation loss](../benchmarks/results/qk_clip.png)")


def transfer() -> str | None:
  """``benchmarks/transfer.py``'s tables and plot (it writes ``results/transfer.{md,png}``)."""
  if (found := _with_table("transfer")) is None:
    return None
  d, text = found
  b = d["base"]
  return (f"Constrained Scion at the library's defaults (radii 48 and 160 from `ol.init_params`, "
          f"the decay over the last half) against tuned AdamW, off the cpu base point (width "
          f"{b['width']}, depth {b['depth']}, {b['batch']}x{b['seq']} tokens per step, "
          f"{b['steps']} steps of {b['corpus']}), one axis at a time; each point's grid is "
          f"centred on the learning rate the [NT] law (`ol.contrib.transfer_lr`) predicts from "
          f"the base, spaced 2x, extended past a winning edge; {d['machine']['device']}; "
          f"`{d['command']}`.\n\n{text}\n\n"
          f"![final loss against the learning rate per point](../benchmarks/results/transfer.png)")


def newest() -> str | None:
  """``benchmarks/newest.py``'s table (it writes ``results/newest.md`` beside its JSON)."""
  if (found := _with_table("newest")) is None:
    return None
  d, text = found
  c = d["config"]
  return (f"The newest of the family at the cpu base point (width {c['width']}, depth "
          f"{c['depth']}, {c['batch']}x{c['seq']} tokens per step, {c['steps']} steps), each "
          f"row on its own learning-rate grid, its best again at seed 1; steps to AdamW's best "
          f"final loss as a multiple of AdamW's; {d['machine']['device']}; "
          f"`{d['command']}`.\n\n{text}")


def init_gpt2() -> str | None:
  """``benchmarks/init_gpt2.py``'s table (it writes ``results/init_gpt2.md`` beside its JSON)."""
  if (found := _with_table("init_gpt2")) is None:
    return None
  d, text = found
  sh = d["shape"]
  return (f"`ol.init_params` against the model's own init on transformers' Flax GPT-2 (random "
          f"config: {sh['layers']} layers, width {sh['width']}, {sh['heads']} heads, context "
          f"{sh['seq']}, batch {sh['batch']}; character-level text), each start on its own "
          f"learning-rate grid; {d['machine']['device']}, transformers "
          f"{d['machine'].get('transformers', '?')}; `{d['command']}`.\n\n{text}")


def polar_aol() -> str | None:
  """``benchmarks/polar_aol.py``'s table (it writes ``results/polar_aol.md`` beside its JSON)."""
  if (found := _with_table("polar_aol")) is None:
    return None
  d, text = found
  return (f"AOL-preconditioned Newton–Schulz against Polar Express and optax's "
          f"`preconditioning=\"aol\"`: relative Frobenius error to the SVD polar factor per "
          f"input spectrum, and the median time of one call; {d['device']}, jax {d['jax']}, "
          f"optax {d['optax']}; `{d['command']}`.\n\n{text}")


# -- gpu ---------------------------------------------------------------------------------------

GPU_MISSING = ("No GPU figures yet: no accelerator has run `benchmarks/gpu.sh`. On a machine "
               "with a GPU, `bash benchmarks/gpu.sh` (`PYTHON=...` picks the interpreter, "
               "`DATA=...` a text file for the convergence part) writes "
               "`benchmarks/results/gpu/*.json`; then rerun `python -m benchmarks.tables`.")


def _polar_rows(d: dict) -> tuple[list[dict], list[float], list[str]]:
  """One row per (impl, method, setting): its worst error per cond and median time per shape."""
  shapes = list(dict.fromkeys("x".join(map(str, r["shape"])) for r in d["rows"]))
  conds = sorted({r["cond"] for r in d["rows"]})
  out = {}
  for r in d["rows"]:
    cfg = (r["impl"], r["method"], r["setting"])
    who = "optax.contrib" if r["impl"] == "optax_contrib" else "ours"
    row = out.setdefault(cfg, {"name": f"{who} {r['method'].replace('_newton_schulz', '')}"
                               .replace("newton_schulz", "standard"), "setting": r["setting"],
                               "err": {}, "time": {}})
    row["err"].setdefault(r["cond"], []).append(r)
    row["time"].setdefault("x".join(map(str, r["shape"])), []).append(r)
  for row in out.values():
    row["err"] = {c: None if any(not r["finite"] for r in rs) else
                  (max(r["rel_fro"] for r in rs), max(r["rounding_rel_fro"] for r in rs))
                  for c, rs in row["err"].items()}
    row["time"] = {s: (sorted(r["median_s"] for r in rs)[len(rs) // 2], rs[0]["flops"])
                   for s, rs in row["time"].items()}
  return list(out.values()), conds, shapes


def _gpu_polar(d: dict) -> str:
  rows, conds, shapes = _polar_rows(d)
  name = (Col("polar", key("name")), Col("setting", key("setting")))
  acc = name + tuple(Col(f"cond {c:.0e}".replace("e+0", "e"), lambda r, c=c: r["err"][c],
                         "{0[0]:.3f} ({0[1]:.0e})", "**NaN/Inf**") for c in conds)
  speed = name + tuple(Col(s, lambda r, s=s: (r["time"][s][0] * 1e6,
                                              r["time"][s][1] / r["time"][s][0] / 1e12),
                           "{0[0]:.0f} ({0[1]:.1f})") for s in shapes)
  by = {(r["name"], r["setting"]): r for r in rows}

  def gram_over_standard(setting, shape):
    gram, standard = by["ours gram", setting], by["ours standard", setting]
    return gram["time"][shape][0] / standard["time"][shape][0]

  gram = "; ".join(f"{setting}: " + ", ".join(
      f"{s} {gram_over_standard(setting, s):.1f}x" for s in shapes)
      for setting in d["settings"] if ("ours gram", setting) in by)
  ex = {impl: {r["cond"]: r["exact_arith_rel_fro"] for r in d["rows"] if r["impl"] == impl}
        for impl in ("ours", "optax_contrib")}
  exact = "; ".join(
      f"{'ours (polar_express x 5)' if i == 'ours' else 'optax (jordan x 5)'} "
      + ", ".join(f"{v:.3f}" for _, v in sorted(ex[i].items())) for i in ex if ex[i])
  mm = ", ".join(f"{k} {v / 1e12:.1f}" for k, v in d["matmul"]["flop_per_s"].items())
  return (f"Polar factor of float32 `U diag(s) V^T`, shapes {', '.join(shapes)}; "
          f"{d['precision_note']}. `{d['command']}`.\n\nRelative Frobenius error to the exact "
          f"polar factor (float64 SVD), worst over the shapes, and in brackets the part rounding "
          f"adds to the same iteration in exact arithmetic:\n\n{table(rows, acc)}\n\n"
          f"Exact-arithmetic error per condition number: {exact}. Non-finite results: "
          f"{len(d.get('nonfinite', []))}.\n\nMedian microseconds per call (TFLOP/s executed) "
          f"per shape; a {d['matmul']['size']}^2 matmul runs at {mm} TFLOP/s:\n\n"
          f"{table(rows, speed)}\n\nOurs, Gram Newton–Schulz's time over the standard "
          f"iteration's: {gram}.")


def _gpu_step(d: dict) -> str:
  c, f = d["config"], d["flops"]
  chained = "chain" in c
  rate = (f"{f['fwd_bwd_fraction_of_matmul']:.0%} of a 1024^2 matmul's "
          f"{f['matmul_flop_per_s'] / 1e12:.1f} TFLOP/s" if chained
          else f"{f['fwd_bwd_flop_per_s'] / 1e12:.1f} TFLOP/s")
  cols = GPU_STEP + ((GPU_UPDATE,) if chained else ())
  rows = [{"name": n, **r} for n, r in d["optimizers"].items()]
  return (f"Training step of the GPT trainer, width {c['width']}, depth {c['depth']}, heads "
          f"{c['heads']}, context {c['seq']}, batch {c['batch']} ({c['n_params'] / 1e6:.1f}M "
          f"params, float32, {c['batch'] * c['seq']} tokens), medians of {c['reps']} "
          f"interleaved rounds; forward and backward alone {d['fwd_bwd_s'] * 1e3:.1f} ms "
          f"({rate}). Newton–Schulz FLOPs over a step's: ours {f['lmo_ours_over_fwd_bwd']:.1%}, "
          f"optax {f['lmo_optax_over_fwd_bwd']:.1%}.{_update_note(d)} `{d['command']}`.\n\n"
          + table(rows, cols))


def _gpu_convergence(d: dict) -> str:
  c = d["config"]
  times = ", ".join(f"{k} {v['median_s'] * 1e3:.1f} ms" for k, v in d["step_time"].items())
  if "tuned" in c:
    settings = "; ".join(
        f"{o} from the {c['init'][o]} init"
        + (f", radii {g['hidden_radius']:g} / {g['output_radius']:g}" if o == "scion" else "")
        + f", decay over {g['decay_frac']:.0%}"
        for o, g in c["tuned"].items() if o in c["optimizers"])
  else:
    settings = ("hidden radius 3, output radius 10, the decay over 30% of the steps; init: "
                + ", ".join(f"{o} {c['init'][o]}" for o in c["optimizers"]))
  goal = d.get("goal", {})
  edge = (["adamw"] if goal.get("adamw_best_lr_at_grid_edge") else []) + [
      o for o, g in goal.get("per_optimizer", {}).items() if g["best_lr_at_grid_edge"]]
  done = {(r["optimizer"], r["lr"]) for r in d["runs"]}
  centers = c["grid_center"]
  missing = [f"{o} {lr(centers[o] * 2.0**k)}" for o in c["optimizers"]
             for k in range(-2, c["points"] - 2) if (o, centers[o] * 2.0**k) not in done]
  cut = "" if d.get("complete") else (
      " Cut at the time limit: the runs done so far"
      + (f" (not run: {', '.join(missing)})" if missing else "") + ".")
  edge_s = f" Best at the edge of the runs done: {', '.join(edge)}." if edge else ""
  return (f"{', '.join(c['optimizers'])}; GPT width {c['width']}, depth {c['depth']}, heads "
          f"{c['heads']}, {c['batch']}x{c['seq']} tokens per step, {c['steps']} steps on "
          f"{os.path.basename(c['data'])}, {c['points']} learning rates each; {settings}. The "
          f"target is AdamW's best final validation loss; median step time: {times}.{cut}"
          f"{edge_s} `{d['command']}`.\n\n" + table(d.get("to_target", []), GPU_CONVERGENCE))


GPU_PARTS = {"polar_accuracy": _gpu_polar, "step_overhead": _gpu_step,
             "convergence": _gpu_convergence}


def gpu() -> str:
  """The accelerator run of ``benchmarks/gpu.sh`` (``results/gpu/``), or why there is none."""
  found = {n: _load(f"gpu/{n}.json") for n in ("gpu_summary", *GPU_PARTS)}
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
  return "\n\n".join([head + "."] + [f"**{k}.** " + render(found[k])
                                     for k, render in GPU_PARTS.items() if found[k] is not None])


# -- the page ----------------------------------------------------------------------------------

SECTIONS = {"orthogonalize": orthogonalize, "step_overhead": step_overhead,
            "sharding": sharding, "lr_transfer": lr_transfer, "convergence": convergence,
            "stability": stability, "digits": digits, "drop": drop, "ablation": ablation,
            "qk_clip": qk_clip, "adaptive_batch": adaptive_batch, "transfer": transfer,
            "newest": newest, "init_gpt2": init_gpt2, "polar_aol": polar_aol, "gpu": gpu}
BLOCK = re.compile(r'(<!-- python -m benchmarks\.tables: the "(\w+)" section -->\n)(?:(.*?)\n)?'
                   r'(<!-- end of the "\2" section -->)', re.S)


def refresh(page: str) -> str:
  """``page`` with every marked block rendered again from the JSON (left as is if it has none;
  an empty block is filled too)."""
  def one(m):
    text = SECTIONS[m.group(2)]()
    body = m.group(3) if text is None else text
    return m.group(1) + ("" if body is None else body + "\n") + m.group(4)

  return BLOCK.sub(one, page)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--write", metavar="PAGE", help="refresh the marked blocks of this markdown page")
  args = p.parse_args(argv)
  if args.write:
    with open(args.write, encoding="utf-8") as f:
      page = f.read()
    with open(args.write, "w", encoding="utf-8") as f:
      f.write(refresh(page))
    print(f"refreshed {len(BLOCK.findall(page))} sections of {args.write}")
    return
  for name, fn in SECTIONS.items():
    text = fn()
    if text is not None:
      print(f"### {name}\n\n{text}\n")


if __name__ == "__main__":
  main()
