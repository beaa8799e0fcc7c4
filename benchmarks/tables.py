"""Markdown tables for the README from ``benchmarks/results/*.json``.

  python -m benchmarks.tables          # prints every table whose JSON exists

The README's benchmark section is this script's output, pasted: rerun it after
a benchmark to keep the two in step.
"""

from __future__ import annotations

import json
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
  if d is None or "adamw_best" not in d:
    return None
  c, b = d["config"], d["adamw_best"]
  rows = [["adamw (best)", f"{b['lr']:.3g}", b["steps"], f"{b['val_loss']:.4f}", b["steps"],
           "1.00"]]
  for label, r in d["to_target"].items():
    s = r["steps_to_target"]
    rows.append([label, f"{r['lr']:.3g}", r["steps"], f"{r['final_val_loss']:.4f}",
                 "not reached" if s is None else f"{s:.0f}",
                 "-" if s is None else f"{r['ratio_to_adamw']:.2f}"])
  head = (f"Steps to AdamW's best final validation loss ({len(b['lrs_tried'])} AdamW learning "
          f"rates), GPT width {c['width']}, depth {c['depth']}, {c['batch']}x{c['seq']} tokens "
          f"per step on {os.path.basename(c['data'])}, evaluated every {c['eval_every']} steps "
          f"(crossings interpolated); {d['machine']['device']}; `{d['command']}`.\n\n")
  table = _table(["run", "lr", "steps", "final val loss", "steps to target", "x AdamW"], rows)
  t = d["targets"]

  def mark(key):
    return "not run" if t.get(key) is None else _mark(t[key])

  foot = (f"\n\nTarget: Scion reaches it in <= 0.67x AdamW's steps: on its full-length curve "
          f"{mark('scion_curve_reaches_target_within_0_67x')}; with a 0.67x schedule "
          f"{mark('scion_0_67x_schedule_beats_target')}")
  if "scion_any_lr_curve_within_0_67x" in t:
    foot += (f"; at any Scion lr tried, curve {mark('scion_any_lr_curve_within_0_67x')}, "
             f"0.67x schedule {mark('scion_any_lr_0_67x_schedule_beats_target')}")
  foot += "."
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
  head = (f"Full training step (forward, backward, update in one jit) of the example GPT, "
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
  return (f"Constrained `scion` on the demo GPT (width {c['width']}, depth {c['depth']}) for "
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
  cost = _table(
      ["what", "full", "dropped", "ratio"],
      [[f"`ol.scion` update, width {u['width']}, depth {u['depth']}, keep_prob 0.5 vs 1",
        f"{u['seconds_per_update']['keep_prob=1']:.3f} s",
        f"{u['seconds_per_update']['keep_prob=0.5']:.3f} s", f"{u['ratio']:.2f}"],
       [f"example step, width {s['width']}, depth {s['depth']}, batch {s['batch']}x{s['seq']},"
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
  head = (f"`scion` on the example GPT, width {c['width']}, depth {c['depth']}, micro-batch "
          f"{c['micro']}x{c['seq']} tokens, budget {c['micro_batches']} micro-batches for every "
          f"run, at most {c['max_micro_batches']} per step; target: the worst final validation "
          f"loss, {d['target']:.4f}; {d['device']}; `{d['command']}`.\n\n")
  return head + _table(["run", "tokens to target", "optimizer steps to target",
                        "final val loss", "optimizer steps", "mean batch (micro-batches)"], rows)
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
          f"`ol.init_params`, AdamW from the Flax init; {d['device']}; `{d['command']}`.\n\n")
  table = _table(["model", "optimizer", "best lr", "test acc", "test acc per lr"], rows)
  gaps = d["adamw_minus_scion_points"]
  foot = "\n\nTarget: Scion within 0.5 points of AdamW: " + "; ".join(
      f"{m} AdamW minus Scion {g:+.2f}, {_mark(g <= 0.5)}" for m, g in gaps.items()) + "."
  return head + table + foot


SECTIONS = {"orthogonalize": orthogonalize, "step_overhead": step_overhead,
            "sharding": sharding, "lr_transfer": lr_transfer, "convergence": convergence,
            "stability": stability, "digits": digits, "drop": drop,
            "adaptive_batch": adaptive_batch}


def main() -> None:
  for name, fn in SECTIONS.items():
    text = fn()
    if text is not None:
      print(f"### {name}\n\n{text}\n")


if __name__ == "__main__":
  main()
